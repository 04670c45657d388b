//! The index of uploaded agent releases (the binaries are files in the
//! data dir). A version and arch name one binary for good.

use edgefleet_protocol::AgentArtifact;
use rusqlite::{OptionalExtension, params};

use super::{AgentRelease, Store, StoreError, ms, sql_i64};

/// The version and arch already name another binary.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseConflict {
    pub existing: AgentRelease,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRelease> {
    Ok(AgentRelease {
        version: r.get(0)?,
        arch: r.get(1)?,
        sha256: r.get(2)?,
        size: ms(r.get(3)?),
        created_ms: ms(r.get(4)?),
    })
}

const COLUMNS: &str = "version, arch, sha256, size, created_ms";

impl Store {
    /// Records `rel`; the same binary again is kept as it was.
    pub fn put_agent_release(
        &self,
        rel: &AgentRelease,
    ) -> Result<Result<AgentRelease, ReleaseConflict>, StoreError> {
        let conn = self.lock();
        let existing = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM agent_releases WHERE version = ?1 AND arch = ?2"),
                params![rel.version, rel.arch],
                row,
            )
            .optional()?;
        match existing {
            Some(e) if e.sha256 == rel.sha256 => Ok(Ok(e)),
            Some(existing) => Ok(Err(ReleaseConflict { existing })),
            None => {
                conn.execute(
                    "INSERT INTO agent_releases(version, arch, sha256, size, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        rel.version,
                        rel.arch,
                        rel.sha256,
                        sql_i64(rel.size),
                        sql_i64(rel.created_ms)
                    ],
                )?;
                Ok(Ok(rel.clone()))
            }
        }
    }

    /// Every release, newest first.
    pub fn list_agent_releases(&self) -> Result<Vec<AgentRelease>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM agent_releases ORDER BY created_ms DESC, version, arch"
        ))?;
        let rows = stmt.query_map([], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The binaries of `version`, one per arch (none: no such release).
    pub fn agent_artifacts(&self, version: &str) -> Result<Vec<AgentArtifact>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT arch, sha256, size FROM agent_releases WHERE version = ?1 ORDER BY arch",
        )?;
        let rows = stmt.query_map([version], |r| {
            Ok(AgentArtifact {
                arch: r.get(0)?,
                sha256: r.get(1)?,
                size: ms(r.get(2)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether some release has this binary (devices may download it).
    pub fn is_agent_binary(&self, sha256: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT 1 FROM agent_releases WHERE sha256 = ?1 LIMIT 1",
                [sha256],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(version: &str, arch: &str, sha: char) -> AgentRelease {
        AgentRelease {
            version: version.into(),
            arch: arch.into(),
            sha256: sha.to_string().repeat(64),
            size: 10,
            created_ms: 1,
        }
    }

    #[test]
    fn releases_are_immutable_and_resolve_per_arch() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(
            s.put_agent_release(&rel("1.0", "arm64", 'a'))
                .unwrap()
                .is_ok()
        );
        assert!(
            s.put_agent_release(&rel("1.0", "armhf", 'b'))
                .unwrap()
                .is_ok()
        );
        // The same binary again: fine; another one under the same name: no.
        assert!(
            s.put_agent_release(&rel("1.0", "arm64", 'a'))
                .unwrap()
                .is_ok()
        );
        let c = s
            .put_agent_release(&rel("1.0", "arm64", 'c'))
            .unwrap()
            .unwrap_err();
        assert_eq!(c.existing.sha256, "a".repeat(64));
        let arts = s.agent_artifacts("1.0").unwrap();
        assert_eq!(
            arts.iter().map(|a| a.arch.as_str()).collect::<Vec<_>>(),
            ["arm64", "armhf"]
        );
        assert!(s.agent_artifacts("2.0").unwrap().is_empty());
        assert!(s.is_agent_binary(&"b".repeat(64)).unwrap());
        assert!(!s.is_agent_binary(&"c".repeat(64)).unwrap());
        assert_eq!(s.list_agent_releases().unwrap().len(), 2);
    }
}

//! Git sources: their manifests, where each one's sync is, and applying a
//! commit's deployments as one transaction.

use edgefleet_api::{GitRepo, GitRepoSpec, SourceFailure, SourceStatus};
use edgefleet_protocol::Deployment;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, StoreError, ms, sql_i64};

/// What applying a commit changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SourceApplied {
    /// Deployments given a new generation (created or changed).
    pub changed: Vec<String>,
    /// Deployments deleted (prune) or let go (no prune).
    pub removed: Vec<String>,
    /// Deployments that were made through the API and are now the source's.
    pub adopted: Vec<String>,
}

/// Why a commit's deployments were not applied (nothing was).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceRefused {
    #[error("no source {0:?}")]
    NoSource(String),
    #[error("deployment {deployment:?} is owned by source {owner:?}")]
    OwnedElsewhere { deployment: String, owner: String },
}

const COLUMNS: &str = "name, spec, fetched_commit, applied_commit, applied_ms, last_fetch_ms, \
     failure, failures, next_fetch_ms, refused_commits, created_ms, updated_ms";

impl Store {
    /// Stores a source's manifest. A changed spec is fetched at once.
    /// Returns the source and whether it is new.
    pub fn put_source(&self, r: &GitRepo) -> Result<(SourceStatus, bool), StoreError> {
        let spec = serde_json::to_string(&r.spec)?;
        let now = sql_i64(edgefleet_protocol::now_ms());
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let old: Option<String> = tx
            .query_row(
                "SELECT spec FROM sources WHERE name = ?1",
                params![r.metadata.name],
                |row| row.get(0),
            )
            .optional()?;
        let created = old.is_none();
        if old.as_deref() != Some(spec.as_str()) {
            tx.execute(
                "INSERT INTO sources(name, spec, next_fetch_ms, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?3, ?3)
                 ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, updated_ms = excluded.updated_ms,
                   next_fetch_ms = excluded.next_fetch_ms, failures = 0",
                params![r.metadata.name, spec, now],
            )?;
        }
        let out =
            Self::source_row(&tx, &r.metadata.name)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        tx.commit()?;
        Ok((out, created))
    }

    pub fn get_source(&self, name: &str) -> Result<Option<SourceStatus>, StoreError> {
        Self::source_row(&self.lock(), name)
    }

    pub fn list_sources(&self) -> Result<Vec<SourceStatus>, StoreError> {
        let conn = self.lock();
        let names: Vec<String> = conn
            .prepare("SELECT name FROM sources ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            out.extend(Self::source_row(&conn, &n)?);
        }
        Ok(out)
    }

    /// Deletes a source. Its deployments stay, owned by nobody (the API may
    /// change them again).
    pub fn delete_source(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM sources WHERE name = ?1", params![name])?;
        tx.execute(
            "UPDATE deployments SET source = NULL, source_commit = NULL WHERE source = ?1",
            params![name],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }

    /// The active source that owns deployment `name`, if any: a suspended
    /// source lets the API change its deployments.
    pub fn deployment_owner(&self, name: &str) -> Result<Option<String>, StoreError> {
        let conn = self.lock();
        let row: Option<(String, String)> = conn
            .query_row(
                "SELECT s.name, s.spec FROM deployments d JOIN sources s ON s.name = d.source
                 WHERE d.name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match row {
            Some((owner, spec)) => {
                let spec: GitRepoSpec = serde_json::from_str(&spec)?;
                (!spec.suspend).then_some(owner)
            }
            None => None,
        })
    }

    /// A fetch found `commit`; the next is due at `next_ms`.
    pub fn source_fetched(&self, name: &str, commit: &str, next_ms: u64) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE sources SET fetched_commit = ?2, last_fetch_ms = ?3, next_fetch_ms = ?4 WHERE name = ?1",
            params![
                name,
                commit,
                sql_i64(edgefleet_protocol::now_ms()),
                sql_i64(next_ms)
            ],
        )?;
        Ok(())
    }

    /// A fetch, or the commit it found, failed: the failure is shown, the
    /// applied commit stays in force, and the next try is at `next_ms`.
    /// Returns the failures in a row.
    pub fn source_failed(
        &self,
        name: &str,
        failure: &SourceFailure,
        refused_commit: bool,
        next_ms: u64,
    ) -> Result<u32, StoreError> {
        let conn = self.lock();
        conn.execute(
            "UPDATE sources SET failure = ?2, failures = failures + 1, next_fetch_ms = ?3,
               refused_commits = refused_commits + ?4,
               last_fetch_ms = CASE WHEN ?5 THEN ?6 ELSE last_fetch_ms END,
               fetched_commit = COALESCE(?7, fetched_commit)
             WHERE name = ?1",
            params![
                name,
                serde_json::to_string(failure)?,
                sql_i64(next_ms),
                i64::from(refused_commit),
                failure.stage != "fetch",
                sql_i64(failure.at_ms),
                failure.commit,
            ],
        )?;
        Ok(conn
            .query_row(
                "SELECT failures FROM sources WHERE name = ?1",
                params![name],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)))
    }

    /// Applies `commit`'s deployments as one transaction: each one becomes
    /// the source's at `commit` (a new generation where its spec changed);
    /// those of the source that `commit` no longer has are deleted
    /// (`prune`) or let go. `check` sees the deployments as they would be,
    /// before anything is written, and may refuse the whole commit.
    pub fn apply_source_commit<E>(
        &self,
        name: &str,
        commit: &str,
        deployments: &[Deployment],
        prune: bool,
        check: impl FnOnce(&[super::DeploymentRecord]) -> Result<(), E>,
    ) -> Result<Result<SourceApplied, Result<SourceRefused, E>>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if Self::source_row(&tx, name)?.is_none() {
            return Ok(Err(Ok(SourceRefused::NoSource(name.to_owned()))));
        }
        let mut out = SourceApplied::default();
        let current = {
            let mut stmt = tx.prepare("SELECT name, source FROM deployments")?;
            stmt.query_map([], |r| <(String, Option<String>)>::try_from(r))?
                .collect::<Result<Vec<_>, _>>()?
        };
        for d in deployments {
            match current.iter().find(|(n, _)| *n == d.metadata.name) {
                Some((_, Some(owner))) if owner != name => {
                    return Ok(Err(Ok(SourceRefused::OwnedElsewhere {
                        deployment: d.metadata.name.clone(),
                        owner: owner.clone(),
                    })));
                }
                Some((n, None)) => out.adopted.push(n.clone()),
                _ => {}
            }
        }
        let gone: Vec<String> = current
            .iter()
            .filter(|(n, owner)| {
                owner.as_deref() == Some(name) && !deployments.iter().any(|d| d.metadata.name == *n)
            })
            .map(|(n, _)| n.clone())
            .collect();
        // The fleet as it would be, for the caller's check.
        {
            let mut after = Vec::new();
            for (n, _) in &current {
                if prune && gone.contains(n) {
                    continue;
                }
                if deployments.iter().any(|d| d.metadata.name == *n) {
                    continue;
                }
                after.extend(Self::deployment_row(&tx, n)?);
            }
            for d in deployments {
                let generation =
                    Self::deployment_row(&tx, &d.metadata.name)?.map_or(1, |r| r.generation + 1);
                after.push(super::proposed(d, generation));
            }
            if let Err(e) = check(&after) {
                return Ok(Err(Err(e)));
            }
        }
        for d in deployments {
            let (rec, changed) = Self::put_deployment_in(&tx, d, None)?;
            tx.execute(
                "UPDATE deployments SET source = ?2, source_commit = ?3 WHERE name = ?1",
                params![rec.name, name, commit],
            )?;
            if changed {
                out.changed.push(rec.name);
            }
        }
        for n in &gone {
            if prune {
                tx.execute("DELETE FROM deployments WHERE name = ?1", params![n])?;
            } else {
                tx.execute(
                    "UPDATE deployments SET source = NULL, source_commit = NULL WHERE name = ?1",
                    params![n],
                )?;
            }
        }
        out.removed = gone;
        tx.execute(
            "UPDATE sources SET applied_commit = ?2, applied_ms = ?3, fetched_commit = ?2,
               failure = NULL, failures = 0 WHERE name = ?1",
            params![name, commit, sql_i64(edgefleet_protocol::now_ms())],
        )?;
        tx.commit()?;
        Ok(Ok(out))
    }

    fn source_row(conn: &Connection, name: &str) -> Result<Option<SourceStatus>, StoreError> {
        type Row = (
            String,
            String,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<String>,
            i64,
            Option<i64>,
            i64,
            i64,
            i64,
        );
        let row: Option<Row> = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM sources WHERE name = ?1"),
                params![name],
                |r| Row::try_from(r),
            )
            .optional()?;
        let Some((
            name,
            spec,
            fetched,
            applied,
            applied_ms,
            last_fetch,
            failure,
            failures,
            next,
            refused,
            c,
            u,
        )) = row
        else {
            return Ok(None);
        };
        let deployments: Vec<String> = conn
            .prepare("SELECT name FROM deployments WHERE source = ?1 ORDER BY name")?
            .query_map(params![name], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(Some(SourceStatus {
            spec: serde_json::from_str(&spec)?,
            name,
            fetched_commit: fetched,
            applied_commit: applied,
            applied_ms: applied_ms.map(ms),
            last_fetch_ms: last_fetch.map(ms),
            failure: failure.map(|f| serde_json::from_str(&f)).transpose()?,
            failures: u32::try_from(failures).unwrap_or(u32::MAX),
            next_fetch_ms: next.map(ms),
            refused_commits: ms(refused),
            deployments,
            created_ms: ms(c),
            updated_ms: ms(u),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str) -> GitRepo {
        serde_yaml::from_str(&format!(
            "apiVersion: edgefleet.io/v1\nkind: GitRepo\nmetadata: {{name: {name}}}\nspec: {{url: 'file:///r', ref: {{branch: main}}, prune: true}}\n"
        ))
        .unwrap()
    }

    fn dep(name: &str, image: &str) -> Deployment {
        Deployment::from_yaml(&format!(
            "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  workloads:\n    - name: w\n      kubernetes:\n        manifests: [{{apiVersion: v1, kind: ConfigMap, metadata: {{name: c}}, data: {{i: {image}}}}}]\n"
        ))
        .unwrap()
    }

    fn ok(_: &[super::super::DeploymentRecord]) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn a_commit_applies_whole_owns_prunes_and_refuses_what_another_owns() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(s.put_source(&source("a")).unwrap().1);
        assert!(!s.put_source(&source("a")).unwrap().1);
        s.put_source(&source("b")).unwrap();
        // One made through the API is adopted.
        s.put_deployment(&dep("x", "1")).unwrap();
        let r = s
            .apply_source_commit("a", "c1", &[dep("x", "2"), dep("y", "1")], true, ok)
            .unwrap()
            .unwrap();
        assert_eq!(r.changed, ["x", "y"]);
        assert_eq!(r.adopted, ["x"]);
        assert_eq!(s.deployment_owner("x").unwrap().as_deref(), Some("a"));
        let x = s.get_deployment("x").unwrap().unwrap();
        assert_eq!(x.source.unwrap().commit, "c1");
        // Unchanged specs keep their generation and take the new commit.
        let r = s
            .apply_source_commit("a", "c2", &[dep("x", "2")], true, ok)
            .unwrap()
            .unwrap();
        assert!(r.changed.is_empty());
        assert_eq!(r.removed, ["y"]);
        assert!(s.get_deployment("y").unwrap().is_none(), "pruned");
        let x = s.get_deployment("x").unwrap().unwrap();
        assert_eq!((x.generation, x.source.unwrap().commit.as_str()), (2, "c2"));
        // Another source cannot take it, and nothing of that commit lands.
        let e = s
            .apply_source_commit("b", "d1", &[dep("z", "1"), dep("x", "9")], true, ok)
            .unwrap()
            .unwrap_err()
            .unwrap();
        assert!(matches!(e, SourceRefused::OwnedElsewhere { .. }), "{e}");
        assert!(s.get_deployment("z").unwrap().is_none());
        // A refusing check leaves everything as it was.
        let e = s
            .apply_source_commit("a", "c3", &[dep("x", "3")], true, |_| Err("too big"))
            .unwrap()
            .unwrap_err()
            .unwrap_err();
        assert_eq!(e, "too big");
        assert_eq!(
            s.get_source("a")
                .unwrap()
                .unwrap()
                .applied_commit
                .as_deref(),
            Some("c2")
        );
        // Deleting the source lets its deployments go.
        assert!(s.delete_source("a").unwrap());
        assert!(s.deployment_owner("x").unwrap().is_none());
        assert!(s.get_deployment("x").unwrap().unwrap().source.is_none());
    }
}

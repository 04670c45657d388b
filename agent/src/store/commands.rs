//! Commands this device has run, by id: each id runs at most once, across
//! redeliveries and restarts. A row is claimed before the command runs and
//! kept until a day after the command expired (after which the hub's
//! signature check refuses it anyway).

use rusqlite::params;

use super::{Store, StoreError};

/// How long after its expiry a command's row is kept.
const KEEP_AFTER_EXPIRY_MS: u64 = 24 * 60 * 60 * 1000;

impl Store {
    /// Claims command `id`: true if it never ran here (it is recorded now),
    /// false if it already did. Drops rows long past their expiry.
    pub fn command_claim(
        &mut self,
        id: &str,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        tx.prepare_cached("DELETE FROM commands_run WHERE expires_at_ms < ?1")?
            .execute(params![
                i64::try_from(now_ms.saturating_sub(KEEP_AFTER_EXPIRY_MS)).unwrap_or(i64::MAX)
            ])?;
        let n = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO commands_run (id, expires_at_ms, run_at_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![
                id,
                i64::try_from(expires_at_ms).unwrap_or(i64::MAX),
                i64::try_from(now_ms).unwrap_or(i64::MAX)
            ])?;
        tx.commit()?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_claimed_once_even_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        let sync = crate::config::Synchronous::Full;
        {
            let (mut s, _) = Store::open(&path, sync).unwrap();
            assert!(s.command_claim("c1", 2_000, 1_000).unwrap());
            assert!(!s.command_claim("c1", 2_000, 1_500).unwrap());
        }
        let (mut s, _) = Store::open(&path, sync).unwrap();
        assert!(!s.command_claim("c1", 2_000, 1_600).unwrap());
        assert!(s.command_claim("c2", 2_000, 1_600).unwrap());
        // A day after c1 expired its row is gone (the signature check
        // refuses it by then).
        let later = 2_000 + KEEP_AFTER_EXPIRY_MS + 1;
        assert!(s.command_claim("c3", later + 10, later).unwrap());
        let left: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM commands_run", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1);
    }
}

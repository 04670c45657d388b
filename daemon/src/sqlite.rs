//! SQLite schema migrations, done the same way by the hub and the agent:
//! `PRAGMA user_version` counts the migrations applied, each migration and
//! its new version commit in one transaction (a crash leaves the schema at
//! one step or the next). A database from a newer version is refused rather
//! than guessed at ([`Newer::Refuse`], the hub), unless the caller's
//! migrations only ever add ([`Newer::Use`], the agent: an agent update
//! that migrated the store and was then reverted leaves the previous agent
//! a newer schema, which it must still open).

use rusqlite::Connection;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The schema is newer than the migrations this binary carries.
    #[error("database schema version {found} is newer than this version knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("SQLite error")]
    Sql(#[from] rusqlite::Error),
}

/// What to do with a schema newer than the migrations known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Newer {
    Refuse,
    /// Use it as it is: every migration only adds tables, or columns with
    /// defaults, so the tables and columns this version knows are there
    /// and mean what they meant.
    Use,
}

/// Applies `migrations[user_version..]` in order; entry `i` moves
/// `user_version` from `i` to `i + 1`. Each step is logged. A newer schema
/// is refused.
pub fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), MigrateError> {
    migrate_with(conn, migrations, Newer::Refuse)
}

/// [`migrate`], with a choice for a newer schema.
pub fn migrate_with(
    conn: &mut Connection,
    migrations: &[&str],
    newer: Newer,
) -> Result<(), MigrateError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = migrations.len() as i64;
    if found > known {
        if newer == Newer::Refuse {
            return Err(MigrateError::TooNew { found, known });
        }
        tracing::warn!(
            found,
            known,
            "store schema is newer than this version knows (a newer version ran here); using it as it is"
        );
        return Ok(());
    }
    for (i, sql) in migrations.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!(to = i + 1, "store schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[&str] = &[
        "CREATE TABLE a (x INTEGER);",
        "ALTER TABLE a ADD COLUMN y INTEGER;",
    ];

    fn version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn migrations_apply_once_in_order_and_a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, &STEPS[..1]).unwrap();
        assert_eq!(version(&conn), 1);
        migrate(&mut conn, STEPS).unwrap();
        migrate(&mut conn, STEPS).unwrap();
        assert_eq!(version(&conn), 2);
        conn.execute("INSERT INTO a (x, y) VALUES (1, 2)", [])
            .unwrap();
        assert!(matches!(
            migrate(&mut conn, &STEPS[..1]),
            Err(MigrateError::TooNew { found: 2, known: 1 })
        ));
    }

    #[test]
    fn an_additive_newer_schema_is_used_as_it_is() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, STEPS).unwrap();
        conn.execute("INSERT INTO a (x, y) VALUES (1, 2)", [])
            .unwrap();
        // The older version opens it and reads what it knows.
        migrate_with(&mut conn, &STEPS[..1], Newer::Use).unwrap();
        assert_eq!(version(&conn), 2, "the newer version is kept");
        let x: i64 = conn.query_row("SELECT x FROM a", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 1);
        conn.execute("INSERT INTO a (x) VALUES (3)", []).unwrap();
    }

    #[test]
    fn a_failed_step_leaves_the_previous_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        let broken = [STEPS[0], "ALTER TABLE nope ADD COLUMN y INTEGER;"];
        assert!(matches!(
            migrate(&mut conn, &broken),
            Err(MigrateError::Sql(_))
        ));
        assert_eq!(version(&conn), 1);
    }
}

//! Commands to devices and where each is: queued until the device is online,
//! delivered (sent, sent again on every reconnect until a result or the
//! expiry), then done or failed from the device's result event, or expired.
//! Bounded per device: at most [`MAX_OPEN_PER_DEVICE`] open commands, and
//! the newest [`KEEP_PER_DEVICE`] of all.

use edgefleet_api::{CommandRecord, CommandState};
use edgefleet_protocol::{CommandAction, CommandResult, DeviceId};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Store, StoreError, ms, sql_i64};

/// Open (queued or delivered) commands one device may have.
pub const MAX_OPEN_PER_DEVICE: u64 = 64;
/// Commands kept per device, finished ones trimmed oldest first.
pub const KEEP_PER_DEVICE: u64 = 256;

/// A new command for one device.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub device_id: DeviceId,
    pub id: String,
    pub action: CommandAction,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// Why a command was not created.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    UnknownDevice,
    TooManyOpen,
}

const SELECT: &str = "SELECT id, device_id, action, state, message, created_ms, expires_ms,
    delivered_ms, deliveries, finished_ms FROM commands";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<CommandRecord> {
    let action: String = r.get(2)?;
    let state: String = r.get(3)?;
    let bad = |i, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    };
    Ok(CommandRecord {
        id: r.get(0)?,
        device_id: r.get(1)?,
        action: serde_json::from_str(&action).map_err(|e| bad(2, e.to_string()))?,
        state: state.parse().map_err(|e| bad(3, e))?,
        message: r.get(4)?,
        created_ms: ms(r.get(5)?),
        expires_ms: ms(r.get(6)?),
        delivered_ms: r.get::<_, Option<i64>>(7)?.map(ms),
        deliveries: u32::try_from(r.get::<_, i64>(8)?).unwrap_or(u32::MAX),
        finished_ms: r.get::<_, Option<i64>>(9)?.map(ms),
    })
}

impl Store {
    /// Stores new commands in one transaction; each is refused alone if its
    /// device is unknown or already has [`MAX_OPEN_PER_DEVICE`] open ones.
    pub fn create_commands(
        &self,
        cmds: &[NewCommand],
    ) -> Result<Vec<Result<CommandRecord, Refused>>, StoreError> {
        self.transaction(|tx| {
            let mut out = Vec::with_capacity(cmds.len());
            for c in cmds {
                out.push(Self::create_command(tx, c)?);
            }
            Ok(out)
        })
    }

    fn create_command(
        tx: &Connection,
        c: &NewCommand,
    ) -> Result<Result<CommandRecord, Refused>, StoreError> {
        let dev = c.device_id.as_str();
        let known: Option<i64> = tx
            .prepare_cached("SELECT 1 FROM devices WHERE id = ?1")?
            .query_row(params![dev], |r| r.get(0))
            .optional()?;
        if known.is_none() {
            return Ok(Err(Refused::UnknownDevice));
        }
        let open: i64 = tx
            .prepare_cached(
                "SELECT COUNT(*) FROM commands WHERE device_id = ?1
                 AND state IN ('queued', 'delivered') AND expires_ms > ?2",
            )?
            .query_row(params![dev, sql_i64(c.created_ms)], |r| r.get(0))?;
        if ms(open) >= MAX_OPEN_PER_DEVICE {
            return Ok(Err(Refused::TooManyOpen));
        }
        tx.prepare_cached(
            "INSERT INTO commands (device_id, id, action, state, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, 'queued', ?4, ?5)",
        )?
        .execute(params![
            dev,
            c.id,
            serde_json::to_string(&c.action)?,
            sql_i64(c.created_ms),
            sql_i64(c.expires_ms)
        ])?;
        tx.prepare_cached(
            "DELETE FROM commands WHERE device_id = ?1 AND state NOT IN ('queued', 'delivered')
             AND rowid NOT IN (SELECT rowid FROM commands WHERE device_id = ?1
                               ORDER BY created_ms DESC LIMIT ?2)",
        )?
        .execute(params![dev, sql_i64(KEEP_PER_DEVICE)])?;
        Ok(Ok(CommandRecord {
            id: c.id.clone(),
            device_id: dev.to_owned(),
            action: c.action.clone(),
            state: CommandState::Queued,
            message: None,
            created_ms: c.created_ms,
            expires_ms: c.expires_ms,
            delivered_ms: None,
            deliveries: 0,
            finished_ms: None,
        }))
    }

    pub fn get_command(&self, device: &str, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        Ok(self
            .lock()
            .prepare_cached(&format!("{SELECT} WHERE device_id = ?1 AND id = ?2"))?
            .query_row(params![device, id], record)
            .optional()?)
    }

    /// A device's commands, newest first, at most `limit`.
    pub fn list_commands(
        &self,
        device: &str,
        limit: usize,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "{SELECT} WHERE device_id = ?1 ORDER BY created_ms DESC, id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![device, limit as i64], record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The commands to send `device` now, if it is online: queued ones, and
    /// with `resend` the delivered ones with no result yet; unexpired only.
    pub fn commands_to_send(
        &self,
        device: &str,
        resend: bool,
        now_ms: u64,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        let states = if resend {
            "('queued', 'delivered')"
        } else {
            "('queued')"
        };
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "{SELECT} WHERE device_id = ?1 AND state IN {states} AND expires_ms > ?2
             AND EXISTS (SELECT 1 FROM devices WHERE id = ?1 AND presence = 'online')
             ORDER BY created_ms, id"
        ))?;
        let rows = stmt.query_map(params![device, sql_i64(now_ms)], record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Online devices with commands waiting to be sent (a hub that starts).
    pub fn devices_with_open_commands(&self, now_ms: u64) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT DISTINCT c.device_id FROM commands c JOIN devices d ON d.id = c.device_id
             WHERE c.state IN ('queued', 'delivered') AND c.expires_ms > ?1 AND d.presence = 'online'",
        )?;
        let rows = stmt.query_map(params![sql_i64(now_ms)], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that `ids` of `device` were handed to the broker at `now_ms`.
    pub fn commands_delivered(
        &self,
        device: &str,
        ids: &[String],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.transaction(|tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE commands SET state = 'delivered', delivered_ms = ?3, deliveries = deliveries + 1
                 WHERE device_id = ?1 AND id = ?2 AND state IN ('queued', 'delivered')",
            )?;
            for id in ids {
                stmt.execute(params![device, id, sql_i64(now_ms)])?;
            }
            Ok(())
        })
    }

    /// Marks open commands past their expiry as expired; returns how many.
    pub fn expire_commands(&self, now_ms: u64) -> Result<u64, StoreError> {
        let n = self.lock().prepare_cached(
            "UPDATE commands SET state = 'expired', finished_ms = ?1,
               message = CASE state WHEN 'queued' THEN 'expired before the device was online; never sent'
                 ELSE 'sent, but no result came back before it expired' END
             WHERE state IN ('queued', 'delivered') AND expires_ms <= ?1",
        )?
        .execute(params![sql_i64(now_ms)])?;
        Ok(n as u64)
    }

    /// Applies a device's result (in ingest's transaction): the device's own
    /// command only, and a finished one is not changed again, except an
    /// expired one, which the late result corrects. True when it changed a
    /// command.
    pub fn ingest_command_result(
        tx: &Connection,
        device: &DeviceId,
        r: &CommandResult,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let n = tx
            .prepare_cached(
                "UPDATE commands SET state = ?3, message = ?4, finished_ms = ?5
                 WHERE device_id = ?1 AND id = ?2 AND state IN ('queued', 'delivered', 'expired')",
            )?
            .execute(params![
                device.as_str(),
                r.command_id,
                if r.ok { "done" } else { "failed" },
                (!r.message.is_empty()).then_some(&r.message),
                sql_i64(now_ms)
            ])?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(devices: &[&str]) -> Store {
        let s = crate::testing::store();
        for d in devices {
            crate::testing::enroll(&s, d, &[]);
            s.transaction(|tx| Store::ingest_presence(tx, &crate::testing::id(d), true, 1))
                .unwrap();
        }
        s
    }

    fn new(device: &str, id: &str, created: u64, expires: u64) -> NewCommand {
        NewCommand {
            device_id: crate::testing::id(device),
            id: id.into(),
            action: CommandAction::Resync,
            created_ms: created,
            expires_ms: expires,
        }
    }

    #[test]
    fn a_command_goes_queued_delivered_done_and_only_its_device_can_finish_it() {
        let s = store_with(&["pi-1", "pi-2"]);
        let r = s
            .create_commands(&[new("pi-1", "c1", 1_000, 10_000)])
            .unwrap();
        assert_eq!(r[0].as_ref().unwrap().state, CommandState::Queued);
        assert_eq!(s.commands_to_send("pi-1", false, 2_000).unwrap().len(), 1);
        s.commands_delivered("pi-1", &["c1".into()], 2_000).unwrap();
        assert!(s.commands_to_send("pi-1", false, 2_000).unwrap().is_empty());
        assert_eq!(s.commands_to_send("pi-1", true, 2_000).unwrap().len(), 1);
        let result = CommandResult {
            command_id: "c1".into(),
            ok: true,
            message: "ran".into(),
        };
        let (other, own) = (crate::testing::id("pi-2"), crate::testing::id("pi-1"));
        assert!(
            !s.transaction(|tx| Store::ingest_command_result(tx, &other, &result, 3_000))
                .unwrap()
        );
        assert!(
            s.transaction(|tx| Store::ingest_command_result(tx, &own, &result, 3_000))
                .unwrap()
        );
        let c = s.get_command("pi-1", "c1").unwrap().unwrap();
        assert_eq!(
            (c.state, c.message.as_deref(), c.deliveries),
            (CommandState::Done, Some("ran"), 1)
        );
        // Finished: a second result changes nothing.
        assert!(
            !s.transaction(|tx| Store::ingest_command_result(tx, &own, &result, 4_000))
                .unwrap()
        );
    }

    #[test]
    fn open_commands_expire_and_are_never_sent_after() {
        let s = store_with(&["pi-1"]);
        s.create_commands(&[
            new("pi-1", "a", 1_000, 5_000),
            new("pi-1", "b", 1_000, 5_000),
        ])
        .unwrap();
        s.commands_delivered("pi-1", &["b".into()], 2_000).unwrap();
        assert_eq!(s.expire_commands(5_000).unwrap(), 2);
        assert!(s.commands_to_send("pi-1", true, 5_000).unwrap().is_empty());
        let a = s.get_command("pi-1", "a").unwrap().unwrap();
        let b = s.get_command("pi-1", "b").unwrap().unwrap();
        assert_eq!(
            (a.state, b.state),
            (CommandState::Expired, CommandState::Expired)
        );
        assert!(a.message.unwrap().contains("never sent"));
        assert!(b.message.unwrap().contains("no result"));
    }

    #[test]
    fn open_commands_per_device_are_bounded_and_unknown_devices_refused() {
        let s = store_with(&["pi-1"]);
        let many: Vec<NewCommand> = (0..=MAX_OPEN_PER_DEVICE)
            .map(|i| new("pi-1", &format!("c{i}"), 1_000, 9_000))
            .collect();
        let r = s.create_commands(&many).unwrap();
        assert!(r[..MAX_OPEN_PER_DEVICE as usize].iter().all(Result::is_ok));
        assert_eq!(r.last().unwrap(), &Err(Refused::TooManyOpen));
        // Not sent to a device that is offline.
        s.transaction(|tx| Store::ingest_presence(tx, &crate::testing::id("pi-1"), false, 1))
            .unwrap();
        assert!(s.commands_to_send("pi-1", true, 2_000).unwrap().is_empty());
        let r = s
            .create_commands(&[new("pi-9", "x", 1_000, 9_000)])
            .unwrap();
        assert_eq!(r[0], Err(Refused::UnknownDevice));
    }
}

//! Staged rollouts: which wave each targeted device is in, where each
//! rollout is, and what happened to it. The whole engine state is here, so
//! a hub killed mid-rollout resumes where it was: no wave is started twice
//! (the wave index only grows, in the same transaction as its start), and
//! no revision is issued twice (the publisher derives each device's
//! document from this state, and issues one only when it changes).
//!
//! A device's generation of a deployment with a rollout:
//! - Progressing or Paused: the new one once its wave has started, else the
//!   last good one (`from_generation`; none for a new deployment);
//! - Complete: the new one; RolledBack or Aborted: the last good one.
//!
//! Devices that match after the rollout started are in its last wave.

use std::collections::HashMap;

use edgefleet_protocol::rollout::RolloutSpec;
use rusqlite::{OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{DeploymentRecord, Store, StoreError, ms, sql_i64};

mod waves;
use edgefleet_api::RolloutState;
pub use waves::RolloutStep;

/// Events kept per deployment.
const EVENTS_KEPT: i64 = 100;
/// Failed devices named per wave in the status.
const FAILURES_SHOWN: usize = 5;

/// Start and end of one wave, stored as JSON beside the rollout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WaveTimes {
    started_ms: Option<u64>,
    completed_ms: Option<u64>,
}

/// One stored rollout.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    name: String,
    generation: u64,
    from_generation: Option<u64>,
    state: RolloutState,
    paused_by_failure: bool,
    wave: usize,
    wave_healthy_ms: Option<u64>,
    waves: Vec<WaveTimes>,
    reason: Option<String>,
    started_ms: u64,
    updated_ms: u64,
}

impl Row {
    /// The last good generation: the one rolled out when Complete, else
    /// the one it started from.
    fn stable(&self) -> Option<u64> {
        match self.state {
            RolloutState::Complete => Some(self.generation),
            _ => self.from_generation,
        }
    }
}

/// What the publisher needs: each device's generation of each deployment
/// with a rollout that is not Complete.
#[derive(Debug, Default)]
pub struct ActiveRollouts {
    by_name: HashMap<String, Active>,
}

#[derive(Debug)]
struct Active {
    state: RolloutState,
    wave: usize,
    last_wave: usize,
    from: Option<DeploymentRecord>,
    members: HashMap<String, usize>,
}

impl ActiveRollouts {
    /// The record `device` runs for deployment `d` (`None`: nothing of it).
    pub fn effective<'a>(
        &'a self,
        d: &'a DeploymentRecord,
        device: &str,
    ) -> Option<&'a DeploymentRecord> {
        let Some(a) = self.by_name.get(&d.name) else {
            return Some(d);
        };
        let reached = match a.state {
            RolloutState::Progressing | RolloutState::Paused => {
                a.members.get(device).copied().unwrap_or(a.last_wave) <= a.wave
            }
            RolloutState::RolledBack | RolloutState::Aborted => false,
            RolloutState::Complete => true,
        };
        if reached { Some(d) } else { a.from.as_ref() }
    }
}

/// Devices in a stable order for `deployment`: the same on every hub start
/// and for every generation, so waves keep their devices.
fn order_key(deployment: &str, device: &str) -> [u8; 32] {
    Sha256::digest(format!("{deployment}/{device}").as_bytes()).into()
}

/// Splits `devices` (id, labels) into the waves of `spec`: each wave takes
/// from those not yet in one; the last takes every device left.
fn assign_waves(
    name: &str,
    spec: &RolloutSpec,
    mut devices: Vec<(String, super::Labels)>,
) -> Vec<(String, usize)> {
    devices.sort_by_cached_key(|(id, _)| order_key(name, id));
    let mut out = Vec::with_capacity(devices.len());
    let last = spec.waves.len().saturating_sub(1);
    for (i, w) in spec.waves.iter().enumerate() {
        if devices.is_empty() {
            break;
        }
        let take: Vec<usize> = if i == last {
            (0..devices.len()).collect()
        } else if let Some(sel) = &w.selector {
            (0..devices.len())
                .filter(|&k| sel.matches(&devices[k].1))
                .collect()
        } else {
            let n = match (w.percent, w.count) {
                (Some(p), _) => (devices.len() * p as usize).div_ceil(100),
                (_, Some(c)) => c as usize,
                _ => 0,
            };
            (0..n.min(devices.len())).collect()
        };
        for k in take.into_iter().rev() {
            out.push((devices.remove(k).0, i));
        }
    }
    out
}

impl Store {
    /// After a deployment's generation changed (in the same transaction):
    /// starts its rollout, supersedes a running one, or records it as
    /// applied at once. `undo_of`: an operator's rollback to that
    /// generation, which goes to every device at once.
    pub(super) fn begin_rollout(
        tx: &Transaction<'_>,
        rec: &DeploymentRecord,
        undo_of: Option<u64>,
    ) -> Result<(), StoreError> {
        let now = edgefleet_protocol::now_ms();
        let prev = Self::rollout_row(tx, &rec.name)?;
        let stable = match &prev {
            Some(p) => p.stable(),
            None => (rec.generation > 1).then(|| rec.generation - 1),
        };
        if let Some(p) = &prev
            && p.state.is_active()
        {
            Self::rollout_event(
                tx,
                &rec.name,
                now,
                format!(
                    "generation {} superseded by generation {}",
                    p.generation, rec.generation
                ),
            )?;
        }
        tx.execute("DELETE FROM rollouts WHERE name = ?1", params![rec.name])?;
        let spec = match (&rec.spec.spec.rollout, undo_of) {
            (Some(spec), None) => spec,
            (_, undo) => {
                if prev.is_none() && undo.is_none() {
                    return Ok(());
                }
                let reason = match undo {
                    Some(g) => format!("undo to generation {g}: applied to every device at once"),
                    None => "no rollout block: applied to every device at once".into(),
                };
                Self::insert_rollout(
                    tx,
                    rec,
                    stable,
                    RolloutState::Complete,
                    Vec::new(),
                    &reason,
                    now,
                )?;
                return Self::rollout_event(
                    tx,
                    &rec.name,
                    now,
                    format!("generation {}: {reason}", rec.generation),
                );
            }
        };
        let devices: Vec<(String, super::Labels)> = Self::all_device_labels(tx)?
            .into_iter()
            .filter(|(_, l)| rec.spec.spec.selector.matches(l))
            .map(|(id, l)| (id.as_str().to_owned(), l))
            .collect();
        let members = assign_waves(&rec.name, spec, devices);
        let mut times = vec![WaveTimes::default(); spec.waves.len()];
        times[0].started_ms = Some(now);
        Self::insert_rollout(tx, rec, stable, RolloutState::Progressing, times, "", now)?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO rollout_devices(name, device_id, wave) VALUES (?1, ?2, ?3)",
            )?;
            for (id, wave) in &members {
                stmt.execute(params![rec.name, id, *wave as i64])?;
            }
        }
        let sizes: Vec<String> = spec
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let n = members.iter().filter(|m| m.1 == i).count();
                format!("{} {n}", w.name)
            })
            .collect();
        Self::rollout_event(
            tx,
            &rec.name,
            now,
            format!(
                "generation {} rolling out from {} in {} waves ({}); wave {} started",
                rec.generation,
                stable.map_or("nothing".into(), |g| format!("generation {g}")),
                spec.waves.len(),
                sizes.join(", "),
                spec.waves[0].name
            ),
        )
    }

    fn insert_rollout(
        tx: &Transaction<'_>,
        rec: &DeploymentRecord,
        from: Option<u64>,
        state: RolloutState,
        waves: Vec<WaveTimes>,
        reason: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO rollouts(name, generation, from_generation, state, wave, waves, reason, started_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?7)",
            params![
                rec.name,
                sql_i64(rec.generation),
                from.map(sql_i64),
                state.as_str(),
                serde_json::to_string(&waves)?,
                (!reason.is_empty()).then_some(reason),
                sql_i64(now)
            ],
        )?;
        Ok(())
    }

    fn rollout_event(
        tx: &Transaction<'_>,
        name: &str,
        at: u64,
        message: String,
    ) -> Result<(), StoreError> {
        tracing::info!(deployment = name, "rollout: {message}");
        tx.execute(
            "INSERT INTO rollout_events(name, at_ms, message) VALUES (?1, ?2, ?3)",
            params![name, sql_i64(at), message],
        )?;
        tx.execute(
            "DELETE FROM rollout_events WHERE name = ?1 AND seq <=
               (SELECT seq FROM rollout_events WHERE name = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            params![name, EVENTS_KEPT],
        )?;
        Ok(())
    }

    fn rollout_row(tx: &rusqlite::Connection, name: &str) -> Result<Option<Row>, StoreError> {
        let row = tx
            .query_row(
                "SELECT name, generation, from_generation, state, paused_by_failure, wave,
                        wave_healthy_ms, waves, reason, started_ms, updated_ms
                 FROM rollouts WHERE name = ?1",
                params![name],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, bool>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, Option<i64>>(6)?,
                        r.get::<_, String>(7)?,
                        r.get::<_, Option<String>>(8)?,
                        r.get::<_, i64>(9)?,
                        r.get::<_, i64>(10)?,
                    ))
                },
            )
            .optional()?;
        row.map(
            |(name, g, from, state, pbf, wave, healthy, waves, reason, started, updated)| {
                Ok(Row {
                    state: RolloutState::parse(&state)
                        .ok_or_else(|| StoreError::Corrupt(format!("rollout state {state:?}")))?,
                    name,
                    generation: ms(g),
                    from_generation: from.map(ms),
                    paused_by_failure: pbf,
                    wave: ms(wave) as usize,
                    wave_healthy_ms: healthy.map(ms),
                    waves: serde_json::from_str(&waves)?,
                    reason,
                    started_ms: ms(started),
                    updated_ms: ms(updated),
                })
            },
        )
        .transpose()
    }

    /// Names of the rollouts whose state `keep` accepts.
    fn rollout_names(
        conn: &rusqlite::Connection,
        keep: impl Fn(RolloutState) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = conn.prepare("SELECT name, state FROM rollouts ORDER BY name")?;
        let rows = stmt.query_map([], |r| <(String, String)>::try_from(r))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, s) = row?;
            let state = RolloutState::parse(&s)
                .ok_or_else(|| StoreError::Corrupt(format!("rollout state {s:?}")))?;
            if keep(state) {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// The last good generation of `name` by its rollout ([`Row::stable`]).
    pub(super) fn rollout_stable(
        conn: &rusqlite::Connection,
        name: &str,
    ) -> Result<Option<u64>, StoreError> {
        Ok(Self::rollout_row(conn, name)?.and_then(|r| r.stable()))
    }

    /// The spec of `name` at `generation`, from its history.
    pub(super) fn generation_record(
        conn: &rusqlite::Connection,
        name: &str,
        generation: u64,
    ) -> Result<Option<DeploymentRecord>, StoreError> {
        let row: Option<(String, i64)> = conn
            .query_row(
                "SELECT spec, created_ms FROM deployment_generations WHERE name = ?1 AND generation = ?2",
                params![name, sql_i64(generation)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(spec, created)| {
            Ok(DeploymentRecord {
                name: name.to_owned(),
                generation,
                created_ms: ms(created),
                updated_ms: ms(created),
                spec: serde_json::from_str(&spec)?,
                source: None,
            })
        })
        .transpose()
    }

    /// Each device's generation of the deployments whose rollout is not
    /// Complete, for the publisher.
    pub fn active_rollouts(&self) -> Result<ActiveRollouts, StoreError> {
        let conn = self.lock();
        let mut out = ActiveRollouts::default();
        // Complete ones are left out before their rows are read: every
        // publisher pass comes here.
        for name in Self::rollout_names(&conn, |s| s != RolloutState::Complete)? {
            let Some(row) = Self::rollout_row(&conn, &name)? else {
                continue;
            };
            let from = match row.from_generation {
                Some(g) => Self::generation_record(&conn, &name, g)?,
                None => None,
            };
            let mut members = HashMap::new();
            if row.state.is_active() {
                let mut stmt =
                    conn.prepare("SELECT device_id, wave FROM rollout_devices WHERE name = ?1")?;
                for r in stmt.query_map(params![name], |r| <(String, i64)>::try_from(r))? {
                    let (d, w) = r?;
                    members.insert(d, ms(w) as usize);
                }
            }
            out.by_name.insert(
                name,
                Active {
                    state: row.state,
                    wave: row.wave,
                    last_wave: row.waves.len().saturating_sub(1),
                    from,
                    members,
                },
            );
        }
        Ok(out)
    }

    fn save_row(tx: &Transaction<'_>, row: &Row, now: u64) -> Result<(), StoreError> {
        tx.execute(
            "UPDATE rollouts SET state = ?2, paused_by_failure = ?3, wave = ?4, wave_healthy_ms = ?5,
                    waves = ?6, reason = ?7, updated_ms = ?8 WHERE name = ?1",
            params![
                row.name,
                row.state.as_str(),
                row.paused_by_failure,
                row.wave as i64,
                row.wave_healthy_ms.map(sql_i64),
                serde_json::to_string(&row.waves)?,
                row.reason,
                sql_i64(now)
            ],
        )?;
        Ok(())
    }

    /// Pause, resume or abort `name`'s rollout. `Ok(Err(why))`: not now
    /// (no rollout, or not in a state the action applies to).
    pub fn rollout_control(
        &self,
        name: &str,
        action: RolloutAction,
    ) -> Result<Result<bool, String>, StoreError> {
        let now = edgefleet_protocol::now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(mut row) = Self::rollout_row(&tx, name)? else {
            return Ok(Err(format!("deployment {name} has no rollout")));
        };
        let (publish, msg) = match (action, row.state) {
            (RolloutAction::Pause, RolloutState::Progressing) => {
                row.state = RolloutState::Paused;
                row.paused_by_failure = false;
                row.reason = Some("paused by an operator".into());
                (false, "paused by an operator".to_owned())
            }
            (RolloutAction::Resume, RolloutState::Paused) => {
                row.state = RolloutState::Progressing;
                let msg = if row.paused_by_failure {
                    // The operator accepts the failed wave: it counts as done.
                    row.wave_healthy_ms = Some(now);
                    if let Some(t) = row.waves.get_mut(row.wave) {
                        t.completed_ms = Some(now);
                    }
                    "resumed by an operator, accepting the failed wave".to_owned()
                } else {
                    "resumed by an operator".to_owned()
                };
                row.paused_by_failure = false;
                row.reason = None;
                (false, msg)
            }
            (RolloutAction::Abort, s) if s.is_active() => {
                row.state = RolloutState::Aborted;
                let to = row
                    .from_generation
                    .map_or("nothing".into(), |g| format!("generation {g}"));
                row.reason = Some(format!("aborted by an operator; every device back on {to}"));
                (
                    true,
                    format!("aborted by an operator; every device back on {to}"),
                )
            }
            (a, s) => {
                return Ok(Err(format!(
                    "the rollout of {name} is {}: it cannot be {}",
                    s.as_str(),
                    a.past()
                )));
            }
        };
        Self::rollout_event(&tx, name, now, msg)?;
        Self::save_row(&tx, &row, now)?;
        tx.commit()?;
        Ok(Ok(publish))
    }
}

/// What an operator does to a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    Abort,
}

impl RolloutAction {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pause" => Some(Self::Pause),
            "resume" => Some(Self::Resume),
            "abort" => Some(Self::Abort),
            _ => None,
        }
    }

    fn past(self) -> &'static str {
        match self {
            Self::Pause => "paused",
            Self::Resume => "resumed",
            Self::Abort => "aborted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{enroll, store};
    use edgefleet_protocol::Deployment;

    fn rolled(name: &str, value: &str) -> Deployment {
        let yaml = format!(
            "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{fleet: f}}}}\n  rollout:\n    waves:\n      - {{name: canary, selector: {{matchLabels: {{ring: canary}}}}}}\n      - {{name: early, percent: 10}}\n      - {{name: rest, percent: 100}}\n  workloads:\n    - name: app\n      kubernetes:\n        manifests: [{{apiVersion: v1, kind: ConfigMap, metadata: {{name: c}}, data: {{v: \"{value}\"}}}}]\n"
        );
        Deployment::from_yaml(&yaml).unwrap()
    }

    fn fleet(s: &Store, n: usize, canaries: usize) {
        for i in 0..n {
            let id = format!("pi-{i:03}");
            if i < canaries {
                enroll(s, &id, &[("fleet", "f"), ("ring", "canary")]);
            } else {
                enroll(s, &id, &[("fleet", "f")]);
            }
        }
    }

    /// The generation each device runs of `web`, by wave.
    fn generations(s: &Store) -> Vec<Option<u64>> {
        let d = s.get_deployment("web").unwrap().unwrap();
        let active = s.active_rollouts().unwrap();
        (0..100)
            .map(|i| {
                active
                    .effective(&d, &format!("pi-{i:03}"))
                    .map(|r| r.generation)
            })
            .collect()
    }

    #[test]
    fn waves_are_sized_as_asked_and_stable() {
        let s = store();
        fleet(&s, 100, 5);
        s.put_deployment(&rolled("web", "one")).unwrap();
        let sizes = |s: &Store| {
            s.rollout_status("web")
                .unwrap()
                .unwrap()
                .waves
                .iter()
                .map(|w| w.targeted)
                .collect::<Vec<_>>()
        };
        // 5 canaries; 10 % of the 95 left, rounded up; the rest.
        assert_eq!(sizes(&s), [5, 10, 85]);
        let first: HashMap<String, usize> = s
            .active_rollouts()
            .unwrap()
            .by_name
            .remove("web")
            .unwrap()
            .members;
        // A new generation keeps every device in its wave.
        s.put_deployment(&rolled("web", "two")).unwrap();
        let second = s.active_rollouts().unwrap().by_name.remove("web").unwrap();
        assert_eq!(first, second.members);
        assert_eq!(
            second.from.as_ref().map(|f| f.generation),
            None,
            "{second:?}"
        );
    }

    #[test]
    fn devices_run_the_new_generation_only_once_their_wave_started() {
        let s = store();
        fleet(&s, 100, 5);
        s.put_deployment(&rolled("web", "one")).unwrap();
        // A new deployment: only the canaries run it at first.
        let g = generations(&s);
        assert_eq!(g.iter().filter(|g| **g == Some(1)).count(), 5);
        assert_eq!(g[..5], [Some(1); 5]);
        assert_eq!(g.iter().filter(|g| g.is_none()).count(), 95);

        // Say generation 1 completed; generation 2 starts from it.
        s.lock()
            .execute("UPDATE rollouts SET state = 'Complete'", [])
            .unwrap();
        assert!(generations(&s).iter().all(|g| *g == Some(1)));
        s.put_deployment(&rolled("web", "two")).unwrap();
        let g = generations(&s);
        assert_eq!(g.iter().filter(|g| **g == Some(2)).count(), 5);
        assert_eq!(g.iter().filter(|g| **g == Some(1)).count(), 95);

        // Aborted: everyone back on generation 1; resume is refused then.
        assert_eq!(
            s.rollout_control("web", RolloutAction::Abort).unwrap(),
            Ok(true)
        );
        assert!(generations(&s).iter().all(|g| *g == Some(1)));
        assert!(
            s.rollout_control("web", RolloutAction::Resume)
                .unwrap()
                .is_err()
        );
        let status = s.rollout_status("web").unwrap().unwrap();
        assert_eq!(status.state, RolloutState::Aborted);
        assert!(status.events.last().unwrap().message.contains("aborted"));

        // The operator's undo: generation 3 = generation 1's spec, at once.
        let rec = s.undo_deployment("web", None).unwrap().unwrap();
        assert_eq!(rec.generation, 3);
        assert_eq!(rec.spec, rolled("web", "one"));
        assert!(generations(&s).iter().all(|g| *g == Some(3)));
        assert!(s.undo_deployment("web", Some(99)).unwrap().is_err());
    }

    #[test]
    fn the_last_good_generation_outlives_the_history_bound() {
        let s = store();
        fleet(&s, 3, 0);
        s.put_deployment(&rolled("web", "good")).unwrap();
        s.lock()
            .execute("UPDATE rollouts SET state = 'Complete'", [])
            .unwrap();
        // Twelve bad generations in a row, each superseding the last.
        for i in 0..12 {
            s.put_deployment(&rolled("web", &format!("bad-{i}")))
                .unwrap();
        }
        let active = s.active_rollouts().unwrap();
        let from = active.by_name["web"].from.as_ref().unwrap();
        assert_eq!(from.generation, 1);
        assert_eq!(from.spec, rolled("web", "good"));
    }
}

//! Judging waves: each device of the current wave by what it reported
//! (the new generation applied in this epoch, its workloads' sync and
//! health) and by the health timeout, then the wave by its failures; and
//! the rollout status operators read.

use std::collections::HashMap;

use edgefleet_api::{RolloutEvent, RolloutState, RolloutStatus, WaveStatus};
use edgefleet_protocol::rollout::{OnFailure, RolloutSpec};
use rusqlite::{Transaction, params};
use serde::Deserialize;

use super::{FAILURES_SHOWN, Row};
use crate::store::{Store, StoreError, ms, sql_i64};

/// A device's verdict in its wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Healthy,
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Healthy => "Healthy",
            Outcome::Failed => "Failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "Healthy" => Some(Outcome::Healthy),
            "Failed" => Some(Outcome::Failed),
            _ => None,
        }
    }
}

/// One device of a wave, as the engine judges it.
#[derive(Debug, Clone)]
struct Member {
    device: String,
    online_since: Option<u64>,
    outcome: Option<Outcome>,
    reason: Option<String>,
    online: bool,
    /// Applied (in this epoch) the document carrying the new generation.
    updated: bool,
    /// Its reported statuses of this deployment's workloads: (workload,
    /// sync, health, message).
    statuses: Vec<(String, String, String, Option<String>)>,
    /// How many workloads of this deployment its document holds.
    expected: usize,
}

impl Member {
    /// The verdict its reports give, if any (without the timeout).
    fn verdict(&self) -> Option<(Outcome, Option<String>)> {
        let why = |w: &str, m: &Option<String>| format!("{w}: {}", m.as_deref().unwrap_or("-"));
        // Only what it reported about the document with this generation
        // counts (a RolledBack left from an earlier rollout does not).
        if !self.updated {
            return None;
        }
        if let Some((w, _, _, m)) = self.statuses.iter().find(|s| s.1 == "RolledBack") {
            return Some((
                Outcome::Failed,
                Some(format!("rolled back on the device: {}", why(w, m))),
            ));
        }
        if let Some((w, s, h, m)) = self
            .statuses
            .iter()
            .find(|s| s.1 == "Failed" || s.2 == "Degraded")
        {
            return Some((Outcome::Failed, Some(format!("{s}/{h} {}", why(w, m)))));
        }
        let healthy = self.expected > 0
            && self.statuses.len() == self.expected
            && self
                .statuses
                .iter()
                .all(|s| s.1 == "Synced" && s.2 == "Healthy");
        healthy.then_some((Outcome::Healthy, None))
    }
}

/// What one engine step did.
#[derive(Debug, Default)]
pub struct RolloutStep {
    /// Some device's generation changed: the publisher must run.
    pub publish: bool,
    /// (deployment, transition kind, message), in order.
    pub events: Vec<(String, &'static str, String)>,
    /// Rollouts per state, after the step.
    pub states: Vec<(RolloutState, u64)>,
    /// Whether a rollout is still progressing (the engine steps fast).
    pub active: bool,
}

impl Store {
    /// The devices of `wave` of rollout `row`, with what they reported.
    fn wave_members(
        conn: &rusqlite::Connection,
        row: &Row,
        wave: usize,
    ) -> Result<Vec<Member>, StoreError> {
        #[derive(Deserialize)]
        struct Gen {
            deployment: String,
            generation: u64,
        }
        let mut stmt = conn.prepare(
            "SELECT rd.device_id, rd.online_since_ms, rd.outcome, rd.reason, d.presence,
                    CASE WHEN d.applied_epoch = (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'epoch')
                         THEN d.applied_revision END,
                    ds.revision, ds.workloads
             FROM rollout_devices rd JOIN devices d ON d.id = rd.device_id
             LEFT JOIN desired ds ON ds.device_id = rd.device_id
             WHERE rd.name = ?1 AND rd.wave = ?2",
        )?;
        type R = (
            String,
            Option<i64>,
            Option<String>,
            Option<String>,
            String,
            Option<i64>,
            Option<i64>,
            Option<String>,
        );
        let rows = stmt.query_map(params![row.name, wave as i64], |r| R::try_from(r))?;
        let mut members = Vec::new();
        for r in rows {
            let (device, since, outcome, reason, presence, applied, desired, workloads) = r?;
            let gens: Vec<Gen> = match &workloads {
                Some(w) => serde_json::from_str(w)?,
                None => Vec::new(),
            };
            let ours: Vec<&Gen> = gens.iter().filter(|g| g.deployment == row.name).collect();
            let updated = applied.is_some()
                && applied == desired
                && !ours.is_empty()
                && ours.iter().all(|g| g.generation == row.generation);
            members.push(Member {
                device,
                online_since: since.map(ms),
                outcome: outcome.as_deref().and_then(Outcome::parse),
                reason,
                online: presence == "online",
                updated,
                statuses: Vec::new(),
                expected: ours.len(),
            });
        }
        if members.is_empty() {
            return Ok(members);
        }
        let index: HashMap<String, usize> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.device.clone(), i))
            .collect();
        let mut stmt = conn.prepare(
            "SELECT device_id, name, sync, health, message FROM workload_status
             WHERE name > ?1 AND name < ?2",
        )?;
        let (lo, hi) = (format!("{}.", row.name), format!("{}/", row.name));
        let rows = stmt.query_map(params![lo, hi], |r| {
            <(String, String, String, String, Option<String>)>::try_from(r)
        })?;
        for r in rows {
            let (device, name, sync, health, message) = r?;
            if let Some(&i) = index.get(&device) {
                members[i].statuses.push((name, sync, health, message));
            }
        }
        Ok(members)
    }

    /// One step of every progressing rollout: judge the current wave's
    /// devices, then start the next wave, complete, roll back or pause.
    pub fn rollout_step(&self) -> Result<RolloutStep, StoreError> {
        let now = edgefleet_protocol::now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut step = RolloutStep::default();
        for name in Self::rollout_names(&tx, |s| s == RolloutState::Progressing)? {
            let Some(row) = Self::rollout_row(&tx, &name)? else {
                continue;
            };
            let Some(dep) = Self::deployment_row(&tx, &name)? else {
                continue;
            };
            let Some(spec) = dep.spec.spec.rollout.clone() else {
                continue;
            };
            Self::step_one(&tx, row, &spec, now, &mut step)?;
        }
        let mut stmt = tx.prepare("SELECT state, count(*) FROM rollouts GROUP BY state")?;
        for r in stmt.query_map([], |r| <(String, i64)>::try_from(r))? {
            let (s, n) = r?;
            if let Some(s) = RolloutState::parse(&s) {
                step.states.push((s, ms(n)));
            }
        }
        drop(stmt);
        tx.commit()?;
        step.active = step
            .states
            .iter()
            .any(|(s, n)| *s == RolloutState::Progressing && *n > 0);
        Ok(step)
    }

    fn step_one(
        tx: &Transaction<'_>,
        mut row: Row,
        spec: &RolloutSpec,
        now: u64,
        step: &mut RolloutStep,
    ) -> Result<(), StoreError> {
        let wave = row.wave;
        let unchanged = row.clone();
        let mut members = Self::wave_members(tx, &row, wave)?;
        let timeout_ms = spec.health_timeout.as_secs() * 1000;
        for m in members.iter_mut().filter(|m| m.outcome.is_none()) {
            let before = (m.online_since, m.outcome);
            let mut verdict = m.verdict();
            // The health clock runs while the device is online: one that
            // comes back gets the whole timeout to report.
            if !m.online {
                m.online_since = None;
            }
            if verdict.is_none() && m.online {
                let since = *m.online_since.get_or_insert(now);
                if now.saturating_sub(since) > timeout_ms {
                    verdict = Some((
                        Outcome::Failed,
                        Some(format!("not Healthy within {}", spec.health_timeout)),
                    ));
                }
            }
            if let Some((o, why)) = verdict {
                m.outcome = Some(o);
                m.reason = why;
            }
            // Written only when it changed: this runs every 100 ms.
            if (m.online_since, m.outcome) == before {
                continue;
            }
            tx.execute(
                "UPDATE rollout_devices SET online_since_ms = ?3, outcome = ?4, reason = ?5
                 WHERE name = ?1 AND device_id = ?2",
                params![
                    row.name,
                    m.device,
                    m.online_since.map(sql_i64),
                    m.outcome.map(Outcome::as_str),
                    m.reason
                ],
            )?;
        }
        let counts = WaveCounts::of(&members);
        let wave_name = &spec.waves[wave.min(spec.waves.len() - 1)].name;
        let allowed = spec.max_failures.allowed(counts.targeted);
        let sample = (spec.min_sample as usize).min(counts.targeted).max(1);
        let event = |tx: &Transaction<'_>, step: &mut RolloutStep, kind, msg: String| {
            step.events.push((row.name.clone(), kind, msg.clone()));
            Self::rollout_event(tx, &row.name, now, msg)
        };
        if counts.failed > allowed && counts.healthy + counts.failed >= sample {
            let why = format!(
                "wave {wave_name}: {} of {} devices failed (maxFailures {}): {}",
                counts.failed,
                counts.targeted,
                spec.max_failures,
                failures(&members).join("; ")
            );
            match spec.on_failure {
                OnFailure::Rollback => {
                    row.state = RolloutState::RolledBack;
                    step.publish = true;
                    let msg = format!(
                        "rolled back to {}: {why}",
                        row.from_generation
                            .map_or("nothing".into(), |g| format!("generation {g}"))
                    );
                    event(tx, step, "rolled_back", msg)?;
                }
                OnFailure::Pause => {
                    row.state = RolloutState::Paused;
                    row.paused_by_failure = true;
                    event(tx, step, "paused", format!("paused: {why}"))?;
                }
            }
            row.reason = Some(why);
        } else if counts.undecided_online == 0 && (counts.targeted == 0 || counts.healthy > 0) {
            // Done on evidence: every online device decided, and at least
            // one Healthy (a wave whose devices are all offline waits).
            if row.wave_healthy_ms.is_none() {
                row.wave_healthy_ms = Some(now);
                if let Some(t) = row.waves.get_mut(wave) {
                    t.completed_ms = Some(now);
                }
                event(
                    tx,
                    step,
                    "wave_healthy",
                    format!(
                        "wave {wave_name} healthy: {} of {} devices ({} failed, {} offline)",
                        counts.healthy, counts.targeted, counts.failed, counts.offline
                    ),
                )?;
            }
            let baked = row
                .wave_healthy_ms
                .is_some_and(|t| now >= t + spec.bake.as_secs() * 1000);
            if baked {
                Self::next_wave(tx, &mut row, spec, now, step)?;
            }
        }
        if row == unchanged {
            return Ok(());
        }
        Self::save_row(tx, &row, now)
    }

    /// Starts the wave after the current one, or completes the rollout.
    fn next_wave(
        tx: &Transaction<'_>,
        row: &mut Row,
        spec: &RolloutSpec,
        now: u64,
        step: &mut RolloutStep,
    ) -> Result<(), StoreError> {
        let (kind, msg) = if row.wave + 1 < spec.waves.len() {
            row.wave += 1;
            row.wave_healthy_ms = None;
            if let Some(t) = row.waves.get_mut(row.wave) {
                t.started_ms = Some(now);
            }
            step.publish = true;
            let n: i64 = tx.query_row(
                "SELECT count(*) FROM rollout_devices WHERE name = ?1 AND wave = ?2",
                params![row.name, row.wave as i64],
                |r| r.get(0),
            )?;
            (
                "wave_started",
                format!("wave {} started ({n} devices)", spec.waves[row.wave].name),
            )
        } else {
            row.state = RolloutState::Complete;
            (
                "complete",
                format!("generation {} complete", row.generation),
            )
        };
        step.events.push((row.name.clone(), kind, msg.clone()));
        Self::rollout_event(tx, &row.name, now, msg)
    }

    /// Names of the rollouts progressing or paused.
    pub fn open_rollouts(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT name FROM rollouts WHERE state IN (?1, ?2) ORDER BY name")?;
        let names = stmt
            .query_map(
                params![
                    RolloutState::Progressing.as_str(),
                    RolloutState::Paused.as_str()
                ],
                |r| r.get(0),
            )?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(names)
    }

    /// `GET /deployments/{name}/rollout` (`None`: it never had one).
    pub fn rollout_status(&self, name: &str) -> Result<Option<RolloutStatus>, StoreError> {
        let conn = self.lock();
        let Some(row) = Self::rollout_row(&conn, name)? else {
            return Ok(None);
        };
        let spec = Self::deployment_row(&conn, name)?
            .and_then(|d| (d.generation == row.generation).then_some(d))
            .or(Self::generation_record(&conn, name, row.generation)?)
            .and_then(|d| d.spec.spec.rollout);
        let mut waves = Vec::new();
        for (i, t) in row.waves.iter().enumerate() {
            let members = Self::wave_members(&conn, &row, i)?;
            let c = WaveCounts::of(&members);
            waves.push(WaveStatus {
                name: spec
                    .as_ref()
                    .and_then(|s| s.waves.get(i))
                    .map_or_else(|| format!("wave-{i}"), |w| w.name.clone()),
                targeted: c.targeted as u64,
                updated: c.updated as u64,
                healthy: c.healthy as u64,
                failed: c.failed as u64,
                offline: c.offline as u64,
                started_ms: t.started_ms,
                completed_ms: t.completed_ms,
                failures: failures(&members),
            });
        }
        let mut stmt = conn.prepare(
            "SELECT at_ms, message FROM (SELECT seq, at_ms, message FROM rollout_events
             WHERE name = ?1 ORDER BY seq DESC LIMIT 20) ORDER BY seq",
        )?;
        let events = stmt
            .query_map(params![name], |r| <(i64, String)>::try_from(r))?
            .map(|r| {
                r.map(|(at, message)| RolloutEvent {
                    at_ms: ms(at),
                    message,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(RolloutStatus {
            name: row.name,
            generation: row.generation,
            from_generation: row.from_generation,
            state: row.state,
            reason: row.reason,
            current_wave: row.wave,
            waves,
            started_ms: row.started_ms,
            updated_ms: row.updated_ms,
            events,
        }))
    }
}

#[derive(Debug, Default)]
struct WaveCounts {
    targeted: usize,
    updated: usize,
    healthy: usize,
    failed: usize,
    offline: usize,
    undecided_online: usize,
}

impl WaveCounts {
    fn of(members: &[Member]) -> Self {
        let mut c = WaveCounts {
            targeted: members.len(),
            ..Default::default()
        };
        for m in members {
            // A decided device had the generation, even if it is back on
            // the last good one now.
            c.updated += usize::from(m.updated || m.outcome.is_some());
            match m.outcome {
                Some(Outcome::Healthy) => c.healthy += 1,
                Some(Outcome::Failed) => c.failed += 1,
                None if m.online => c.undecided_online += 1,
                None => c.offline += 1,
            }
        }
        c
    }
}

/// `device: reason` of the first failed devices.
fn failures(members: &[Member]) -> Vec<String> {
    members
        .iter()
        .filter(|m| m.outcome == Some(Outcome::Failed))
        .take(FAILURES_SHOWN)
        .map(|m| format!("{}: {}", m.device, m.reason.as_deref().unwrap_or("failed")))
        .collect()
}

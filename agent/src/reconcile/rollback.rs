//! On-device rollback (`deviceRollback` in a deployment's rollout): the
//! agent remembers the last generation of each deployment that was Healthy
//! here, and when a new generation with `deviceRollback` is not Healthy
//! within its timeout, runs the remembered one again by itself, with or
//! without its uplink, and reports the new one's workloads `RolledBack`
//! with the reason. It stays there until the hub sends another generation
//! of that deployment.
//!
//! The plan is kept in the store (one JSON value), so a reboot neither
//! restarts a timeout nor forgets a rollback.

use std::collections::BTreeMap;

use edgefleet_protocol::{DesiredState, DesiredWorkload, Health, SyncState, WorkloadStatus};
use serde::{Deserialize, Serialize};

/// The store key the plan lives under.
pub const KEY: &str = "device_rollback";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Per deployment: the last generation all of whose workloads were
    /// Healthy on this device, and those workloads.
    good: BTreeMap<String, Good>,
    /// Per deployment: the newer generation being watched, or rolled back.
    watch: BTreeMap<String, Watch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Good {
    generation: u64,
    workloads: Vec<DesiredWorkload>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Watch {
    generation: u64,
    since_ms: u64,
    /// Set once rolled back: why.
    rolled_back: Option<String>,
}

/// `deployment -> (generation, device rollback timeout)` of `doc`.
fn generations(doc: &DesiredState) -> BTreeMap<&str, (u64, Option<u64>)> {
    let mut out = BTreeMap::new();
    for w in &doc.workloads {
        out.insert(
            w.deployment.as_str(),
            (
                w.generation,
                w.device_rollback.map(|r| r.health_timeout_secs),
            ),
        );
    }
    out
}

impl Plan {
    pub fn parse(stored: Option<&str>) -> Self {
        stored
            .and_then(|s| {
                serde_json::from_str(s)
                    .inspect_err(|e| {
                        tracing::warn!(error = %e, "stored device-rollback plan unreadable; starting afresh")
                    })
                    .ok()
            })
            .unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether deployment `d` at `generation` is rolled back here.
    fn rolled_back(&self, d: &str, generation: u64) -> Option<&str> {
        self.watch
            .get(d)
            .filter(|w| w.generation == generation)
            .and_then(|w| w.rolled_back.as_deref())
    }

    /// The workloads to run: `doc`'s, except that a rolled-back
    /// deployment's are replaced by its last good generation's. Starts the
    /// clock of every new generation that has a device rollback.
    pub fn effective(&mut self, doc: &DesiredState, now_ms: u64) -> Vec<DesiredWorkload> {
        let gens = generations(doc);
        // Watches of deployments gone, or of generations the hub replaced.
        self.watch.retain(|d, w| {
            gens.get(d.as_str())
                .is_some_and(|(g, _)| *g == w.generation)
        });
        self.good.retain(|d, _| gens.contains_key(d.as_str()));
        for (d, (g, timeout)) in &gens {
            let good = self.good.get(*d).is_some_and(|x| x.generation == *g);
            if timeout.is_some() && !good {
                self.watch.entry((*d).to_owned()).or_insert(Watch {
                    generation: *g,
                    since_ms: now_ms,
                    rolled_back: None,
                });
            }
        }
        // In the document's order; a rolled-back deployment's last good
        // workloads stand where its first workload was.
        let mut out = Vec::with_capacity(doc.workloads.len());
        let mut replaced = std::collections::BTreeSet::new();
        for w in &doc.workloads {
            if self.rolled_back(&w.deployment, w.generation).is_none() {
                out.push(w.clone());
            } else if replaced.insert(w.deployment.as_str())
                && let Some(good) = self.good.get(&w.deployment)
            {
                out.extend(good.workloads.iter().cloned());
            }
        }
        out
    }

    /// After a pass over `ran` (what [`Plan::effective`] gave): records the
    /// generations now Healthy as good and rolls back the ones out of time.
    /// Returns true when something was rolled back (run again now).
    pub fn observe(
        &mut self,
        doc: &DesiredState,
        statuses: &[WorkloadStatus],
        now_ms: u64,
    ) -> bool {
        let mut rolled = false;
        for (d, (g, timeout)) in generations(doc) {
            if self.rolled_back(d, g).is_some() {
                continue;
            }
            let ours: Vec<&DesiredWorkload> =
                doc.workloads.iter().filter(|w| w.deployment == d).collect();
            let st: Vec<&WorkloadStatus> = ours
                .iter()
                .filter_map(|w| statuses.iter().find(|s| s.name == w.workload.name))
                .collect();
            let healthy = st.len() == ours.len()
                && st
                    .iter()
                    .all(|s| s.sync == SyncState::Synced && s.health == Health::Healthy);
            if healthy {
                self.good.insert(
                    d.to_owned(),
                    Good {
                        generation: g,
                        workloads: ours.into_iter().cloned().collect(),
                    },
                );
                self.watch.remove(d);
                continue;
            }
            let (Some(secs), Some(w)) = (timeout, self.watch.get_mut(d)) else {
                continue;
            };
            if now_ms.saturating_sub(w.since_ms) < secs * 1000 {
                continue;
            }
            let worst = st
                .iter()
                .find(|s| s.sync != SyncState::Synced || s.health != Health::Healthy)
                .map(|s| {
                    format!(
                        "{} {}/{}: {}",
                        s.name,
                        s.sync.as_str(),
                        s.health.as_str(),
                        s.message.as_deref().unwrap_or("-")
                    )
                })
                .unwrap_or_else(|| "no status".into());
            let back_to = self.good.get(d).map_or(
                "nothing (no earlier generation was Healthy here)".into(),
                |x| format!("generation {}", x.generation),
            );
            let why =
                format!("generation {g} not Healthy within {secs}s ({worst}); back on {back_to}");
            tracing::warn!(deployment = d, "device rollback: {why}");
            w.rolled_back = Some(why);
            rolled = true;
        }
        rolled
    }

    /// The statuses to report: a rolled-back deployment's workloads (as the
    /// hub sent them) are `RolledBack` with the reason, with the health of
    /// what runs in their place; the last good generation's own statuses
    /// are reported only under names the new one does not have.
    pub fn report(&self, doc: &DesiredState, statuses: Vec<WorkloadStatus>) -> Vec<WorkloadStatus> {
        let gens = generations(doc);
        let mut out: Vec<WorkloadStatus> = Vec::new();
        let mut replaced = Vec::new();
        for w in &doc.workloads {
            let Some(why) = gens
                .get(w.deployment.as_str())
                .and_then(|(g, _)| self.rolled_back(&w.deployment, *g))
            else {
                continue;
            };
            let running = statuses.iter().find(|s| s.name == w.workload.name);
            replaced.push(w.workload.name.clone());
            out.push(WorkloadStatus {
                name: w.workload.name.clone(),
                sync: SyncState::RolledBack,
                health: running.map_or(Health::Unknown, |s| s.health),
                message: Some(edgefleet_protocol::status::truncate_message(why)),
            });
        }
        out.extend(statuses.into_iter().filter(|s| !replaced.contains(&s.name)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(generation: u64, rollback: bool) -> DesiredState {
        let rb = if rollback {
            serde_json::json!({"healthTimeoutSecs": 10})
        } else {
            serde_json::Value::Null
        };
        let mut w = serde_json::json!({"deployment": "web", "generation": generation, "name": "web.app",
            "kubernetes": {"manifests": [{"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "c"}, "data": {"g": generation.to_string()}}]}});
        if rollback {
            w["deviceRollback"] = rb;
        }
        serde_json::from_value(serde_json::json!({
            "deviceId": "pi-1", "revision": generation, "hubEpoch": 7, "issuedAtMs": 1,
            "workloads": [w]
        }))
        .unwrap()
    }

    fn st(health: Health) -> Vec<WorkloadStatus> {
        vec![WorkloadStatus {
            name: "web.app".into(),
            sync: SyncState::Synced,
            health,
            message: Some("Deployment not Available".into()),
        }]
    }

    #[test]
    fn a_generation_not_healthy_in_time_goes_back_to_the_last_good_one() {
        let mut p = Plan::default();
        let one = doc(1, false);
        assert_eq!(p.effective(&one, 0), one.workloads);
        assert!(!p.observe(&one, &st(Health::Healthy), 0));

        let two = doc(2, true);
        assert_eq!(p.effective(&two, 1_000), two.workloads);
        // Within its 10 s: nothing happens.
        assert!(!p.observe(&two, &st(Health::Progressing), 5_000));
        // The plan survives a restart, clock included.
        let mut p = Plan::parse(Some(&p.to_json()));
        assert!(p.observe(&two, &st(Health::Progressing), 11_500));
        // Generation 1 runs again; generation 2 reports RolledBack.
        assert_eq!(p.effective(&two, 12_000), one.workloads);
        let r = p.report(&two, st(Health::Healthy));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].sync, SyncState::RolledBack);
        let why = r[0].message.as_deref().unwrap();
        assert!(why.contains("generation 2 not Healthy within 10s"), "{why}");
        assert!(why.contains("back on generation 1"), "{why}");
        // It stays back, healthy or not, until the hub sends another generation.
        assert!(!p.observe(&two, &st(Health::Healthy), 20_000));
        assert_eq!(p.effective(&two, 20_000), one.workloads);
        let three = doc(3, true);
        assert_eq!(p.effective(&three, 21_000), three.workloads);
        assert!(!p.observe(&three, &st(Health::Healthy), 22_000));
        assert_eq!(
            p.report(&three, st(Health::Healthy))[0].sync,
            SyncState::Synced
        );
    }

    #[test]
    fn without_device_rollback_nothing_is_watched() {
        let mut p = Plan::default();
        let two = doc(2, false);
        p.effective(&two, 0);
        assert!(!p.observe(&two, &st(Health::Degraded), 1_000_000));
        assert_eq!(p.effective(&two, 1_000_000), two.workloads);
    }
}

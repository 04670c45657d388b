//! kubectl-style text views of API objects: the tables `edgectl get` and
//! `edgectl describe` print, and the pieces `cloudcore demo` reuses.

use crate::sources::{SourceRef, SourceStatus, short};
use crate::types::{
    AgentRelease, Counts, DeploymentGeneration, DeploymentStatus, DeploymentSummary, DeviceDetail,
    DeviceRecord, EventRecord, ModelRecord, RolloutStatus,
};

/// Left-aligned columns separated by three spaces, upper-case headers.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `5s`, `3m`, `2h`, `4d` since `ms`, as kubectl prints ages.
pub fn age(ms: Option<u64>) -> String {
    let Some(ms) = ms else { return "<none>".into() };
    let secs = edgefleet_protocol::now_ms().saturating_sub(ms) / 1000;
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |x| x.to_string())
}

fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

/// `applied/desired` revisions.
pub fn revisions(applied: Option<u64>, desired: Option<u64>) -> String {
    format!("{}/{}", opt(applied), opt(desired))
}

/// A device's labels as `k=v,k2=v2`, or `<none>`.
pub fn labels(d: &DeviceRecord) -> String {
    if d.labels.is_empty() {
        return "<none>".into();
    }
    d.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn devices(items: &[DeviceRecord], wide: bool) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            let mut r = vec![
                d.id.to_string(),
                d.presence.to_string(),
                revisions(d.applied_revision, d.desired_revision),
                age(d.last_seen_ms),
                age(Some(d.created_ms)),
            ];
            if wide {
                r.push(labels(d));
                r.push(d.arch.clone().unwrap_or_default());
                r.push(d.agent_version.clone().unwrap_or_default());
                r.push(or_dash(d.k3s_version.as_deref()));
            }
            r
        })
        .collect();
    let mut headers = vec!["NAME", "PRESENCE", "REVISION", "LAST-SEEN", "AGE"];
    if wide {
        headers.extend(["LABELS", "ARCH", "AGENT", "K3S"]);
    }
    render(&headers, &rows)
}

/// `READY` as `healthy/targeted`.
pub fn ready(c: &Counts) -> String {
    format!("{}/{}", c.healthy, c.targeted)
}

pub fn deployments(items: &[DeploymentSummary], wide: bool) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            let c = &d.counts;
            let mut r = vec![
                d.name.clone(),
                ready(c),
                c.in_sync.to_string(),
                c.failed.to_string(),
                c.status().to_owned(),
                age(Some(d.updated_ms)),
            ];
            if wide {
                r.push(d.generation.to_string());
                r.push(d.workloads.to_string());
                r.push(or_dash(d.source.as_ref().map(|s| s.name.as_str())));
                r.push(or_dash(
                    d.source.as_ref().map(|s| commit_on(s, c)).as_deref(),
                ));
            }
            r
        })
        .collect();
    let mut headers = vec!["NAME", "READY", "IN-SYNC", "FAILED", "STATUS", "AGE"];
    if wide {
        headers.extend(["GENERATION", "WORKLOADS", "SOURCE", "COMMIT"]);
    }
    render(&headers, &rows)
}

/// `commit 3f2a1c9 on 998/1000`: the deployment's commit, and how many of
/// its devices run it (in sync with the generation it made).
pub fn commit_on(s: &SourceRef, c: &Counts) -> String {
    format!(
        "commit {} on {}/{}",
        short(&s.commit),
        c.in_sync,
        c.targeted
    )
}

/// `edgectl get sources`: what was fetched, what is in force and since
/// when, and why not when they differ.
pub fn sources(items: &[SourceStatus], wide: bool) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let mut r = vec![
                s.name.clone(),
                s.ref_text(),
                or_dash(s.fetched_commit.as_deref().map(short)),
                or_dash(s.applied_commit.as_deref().map(short)),
                s.state().to_owned(),
                age(s.applied_ms),
            ];
            if wide {
                r.push(s.spec.url.clone());
                r.push(or_dash(
                    Some(s.spec.path.as_str()).filter(|p| !p.is_empty()),
                ));
                r.push(s.deployments.len().to_string());
            }
            r.push(s.failure.as_ref().map_or_else(|| "-".into(), failure_line));
            r
        })
        .collect();
    let mut headers = vec!["NAME", "REF", "FETCHED", "APPLIED", "STATUS", "APPLIED-AGO"];
    if wide {
        headers.extend(["URL", "PATH", "DEPLOYMENTS"]);
    }
    headers.push("MESSAGE");
    render(&headers, &rows)
}

/// `manifest deployments/a.yaml:6: not valid YAML…`: the stage, where, and
/// what.
fn failure_line(f: &crate::sources::SourceFailure) -> String {
    let at = match (&f.file, f.line) {
        (Some(file), Some(l)) => format!(" {file}:{l}"),
        (Some(file), None) => format!(" {file}"),
        _ => String::new(),
    };
    format!("{}{at}: {}", f.stage, f.message)
}

/// `edgectl describe source NAME`.
pub fn describe_source(s: &SourceStatus) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{:<16}{v}\n", format!("{k}:")));
    line("Name", s.name.clone());
    line("URL", s.spec.url.clone());
    line("Ref", s.ref_text());
    line("Path", format!("{}/", s.spec.path.trim_matches('/')));
    line(
        "Interval",
        s.spec
            .interval
            .unwrap_or(crate::sources::DEFAULT_INTERVAL)
            .to_string(),
    );
    line("Prune", s.spec.prune.to_string());
    line(
        "Verify",
        s.spec.verify.as_ref().map_or_else(
            || "no".into(),
            |v| format!("SSH signatures against {}", v.allowed_signers_file),
        ),
    );
    line("Status", s.state().to_owned());
    line(
        "Fetched",
        match &s.fetched_commit {
            Some(c) => format!("{c} ({} ago)", age(s.last_fetch_ms)),
            None => "<none>".into(),
        },
    );
    line(
        "Applied",
        match &s.applied_commit {
            Some(c) => format!("{c} ({} ago)", age(s.applied_ms)),
            None => "<none>".into(),
        },
    );
    if let Some(f) = &s.failure {
        let commit = f
            .commit
            .as_deref()
            .map_or_else(String::new, |c| format!("commit {}, ", short(c)));
        line(
            "Failed",
            format!("{commit}{} ({} ago)", failure_line(f), age(Some(f.at_ms))),
        );
        line("Failures", format!("{} in a row", s.failures));
    }
    if s.refused_commits > 0 {
        line(
            "Refused",
            format!("{} unverified commits", s.refused_commits),
        );
    }
    if let Some(n) = s.next_fetch_ms {
        let now = edgefleet_protocol::now_ms();
        line(
            "Next fetch",
            format!("in {}s", n.saturating_sub(now).div_ceil(1000)),
        );
    }
    line(
        "Deployments",
        if s.deployments.is_empty() {
            "<none>".into()
        } else {
            s.deployments.join(", ")
        },
    );
    out
}

/// `edgectl rollout history`: the generations the hub keeps, newest first.
pub fn history(items: &[DeploymentGeneration]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|g| {
            let names: Vec<&str> = g
                .spec
                .spec
                .workloads
                .iter()
                .map(|w| w.name.as_str())
                .collect();
            vec![
                g.generation.to_string(),
                age(Some(g.created_ms)),
                names.join(","),
            ]
        })
        .collect();
    render(&["GENERATION", "APPLIED", "WORKLOADS"], &rows)
}

/// `edgectl rollout status`: the state, then a row per wave, then why.
pub fn rollout(r: &RolloutStatus) -> String {
    let from = r
        .from_generation
        .map_or("nothing".into(), |g| format!("generation {g}"));
    let mut out = format!(
        "deployment/{}: generation {} from {from}: {} (wave {} of {}), started {} ago\n",
        r.name,
        r.generation,
        r.state.as_str(),
        (r.current_wave + 1).min(r.waves.len().max(1)),
        r.waves.len(),
        age(Some(r.started_ms)),
    );
    let rows: Vec<Vec<String>> = r
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let state = if w.completed_ms.is_some() {
                "done"
            } else if i == r.current_wave && r.state.is_failure() {
                "stopped"
            } else if w.started_ms.is_some() && i == r.current_wave {
                "running"
            } else if w.started_ms.is_some() {
                "started"
            } else {
                "waiting"
            };
            vec![
                w.name.clone(),
                state.into(),
                w.targeted.to_string(),
                w.updated.to_string(),
                w.healthy.to_string(),
                w.failed.to_string(),
                w.offline.to_string(),
            ]
        })
        .collect();
    out.push_str(&render(
        &[
            "WAVE", "STATE", "DEVICES", "UPDATED", "HEALTHY", "FAILED", "OFFLINE",
        ],
        &rows,
    ));
    if let Some(reason) = &r.reason {
        out.push_str(&format!("reason: {reason}\n"));
    }
    for w in &r.waves {
        for f in &w.failures {
            out.push_str(&format!("  failed in {}: {f}\n", w.name));
        }
    }
    out
}

pub fn models(items: &[ModelRecord], wide: bool) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                if wide {
                    m.sha256.clone()
                } else {
                    m.sha256.chars().take(12).collect()
                },
                format!("{:.1} KiB", m.size as f64 / 1024.0),
                age(Some(m.created_ms)),
            ]
        })
        .collect();
    render(&["NAME", "SHA256", "SIZE", "AGE"], &rows)
}

pub fn agent_releases(items: &[AgentRelease], wide: bool) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            vec![
                r.version.clone(),
                r.arch.clone(),
                if wide {
                    r.sha256.clone()
                } else {
                    r.sha256.chars().take(12).collect()
                },
                format!("{:.1} MiB", r.size as f64 / (1024.0 * 1024.0)),
                age(Some(r.created_ms)),
            ]
        })
        .collect();
    render(&["VERSION", "ARCH", "SHA256", "SIZE", "AGE"], &rows)
}

pub fn events(items: &[EventRecord]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            vec![
                age(Some(e.created_at_ms)),
                e.kind.clone(),
                or_dash(e.workload.as_deref()),
                e.payload.to_string(),
            ]
        })
        .collect();
    render(&["AGE", "KIND", "WORKLOAD", "PAYLOAD"], &rows)
}

/// What a command does, e.g. `resync`, `restartWorkload demo.web`.
pub fn command_action(a: &edgefleet_protocol::CommandAction) -> String {
    match a {
        edgefleet_protocol::CommandAction::RestartWorkload { name: w }
        | edgefleet_protocol::CommandAction::Logs { workload: w, .. } => {
            format!("{} {w}", a.name())
        }
        _ => a.name().to_owned(),
    }
}

pub fn commands(items: &[crate::types::CommandRecord]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                c.device_id.clone(),
                command_action(&c.action),
                c.state.as_str().to_owned(),
                age(Some(c.created_ms)),
                or_dash(c.message.as_deref()),
            ]
        })
        .collect();
    render(
        &["ID", "DEVICE", "ACTION", "STATE", "AGE", "MESSAGE"],
        &rows,
    )
}

pub fn describe_device(detail: &DeviceDetail) -> String {
    let d = &detail.device;
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: String| {
        out.push_str(&format!("{:<16}{v}\n", format!("{k}:")))
    };
    field(&mut out, "Name", d.id.to_string());
    field(&mut out, "Labels", labels(d));
    field(&mut out, "Presence", d.presence.to_string());
    field(&mut out, "Last seen", age(d.last_seen_ms));
    field(&mut out, "Desired rev", opt(d.desired_revision));
    field(&mut out, "Applied rev", opt(d.applied_revision));
    field(&mut out, "Hostname", d.hostname.clone().unwrap_or_default());
    field(&mut out, "Arch", d.arch.clone().unwrap_or_default());
    field(
        &mut out,
        "Agent",
        d.agent_version.clone().unwrap_or_default(),
    );
    field(&mut out, "K3s", or_dash(d.k3s_version.as_deref()));
    if let Some(m) = &d.message {
        field(&mut out, "Message", m.clone());
    }
    if let Some(hb) = d.heartbeat_summary() {
        let mib = |b: u64| b as f64 / 1_048_576.0;
        field(
            &mut out,
            "Resources",
            format!(
                "cpu {:.0}%, mem {:.0}/{:.0} MiB, agent rss {:.1} MiB, outbox {} queued / {} dropped",
                hb.cpu_percent,
                mib(hb.mem_used_bytes),
                mib(hb.mem_total_bytes),
                mib(hb.agent_rss_bytes),
                hb.outbox_depth,
                hb.outbox_dropped,
            ),
        );
    }
    if !d.conditions.is_empty() {
        out.push_str("Conditions:\n");
        for c in &d.conditions {
            out.push_str(&format!(
                "  {:<16} since {:<8} {}\n",
                c.kind.as_str(),
                age(Some(c.since_ms)),
                c.message
            ));
        }
    }
    out.push_str("Workloads:\n");
    let desired = &detail.desired_workloads;
    let mut names: Vec<&str> = desired.iter().map(String::as_str).collect();
    for r in &detail.workloads {
        if !names.contains(&r.name.as_str()) {
            names.push(&r.name);
        }
    }
    let rows: Vec<Vec<String>> = names
        .iter()
        .map(|n| {
            let r = detail.workloads.iter().find(|r| r.name == *n);
            vec![
                format!("  {n}"),
                r.map_or("-", |r| r.sync.as_str()).to_owned(),
                r.map_or("-", |r| r.health.as_str()).to_owned(),
                if desired.iter().any(|d| d == n) {
                    "yes"
                } else {
                    "no (pruning)"
                }
                .to_owned(),
                r.and_then(|r| r.message.clone()).unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&render(
        &["  NAME", "SYNC", "HEALTH", "DESIRED", "MESSAGE"],
        &rows,
    ));
    out
}

pub fn describe_deployment(d: &DeploymentStatus) -> String {
    let c = &d.counts;
    let mut out = String::new();
    out.push_str(&format!("Name:           {}\n", d.name));
    out.push_str(&format!("Generation:     {}\n", d.generation));
    if let Some(src) = &d.source {
        out.push_str(&format!(
            "Source:         {} ({})\n",
            src.name,
            commit_on(src, &d.counts)
        ));
    }
    out.push_str(&format!(
        "Devices:        {} targeted, {} in sync, {} healthy, {} failed ({})\n",
        c.targeted,
        c.in_sync,
        c.healthy,
        c.failed,
        c.status()
    ));
    out.push_str("Per device:\n");
    let mut rows = Vec::new();
    for dev in &d.devices {
        for w in &dev.workloads {
            rows.push(vec![
                format!("  {}", dev.device),
                dev.presence.to_string(),
                revisions(dev.applied_revision, dev.desired_revision),
                w.name.clone(),
                or_dash(w.sync.map(|s| s.as_str())),
                or_dash(w.health.map(|h| h.as_str())),
                w.message.clone().unwrap_or_default(),
            ]);
        }
    }
    out.push_str(&render(
        &[
            "  DEVICE", "PRESENCE", "REVISION", "WORKLOAD", "SYNC", "HEALTH", "MESSAGE",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_device_table_is_just_headers() {
        assert_eq!(
            devices(&[], false),
            "NAME   PRESENCE   REVISION   LAST-SEEN   AGE\n"
        );
    }

    #[test]
    fn deployment_rows_and_status() {
        let counts = |targeted, in_sync, healthy, failed| Counts {
            targeted,
            in_sync,
            healthy,
            failed,
        };
        let d = DeploymentSummary {
            name: "web".into(),
            generation: 1,
            workloads: 1,
            updated_ms: 0,
            counts: counts(1, 1, 1, 0),
            source: None,
        };
        let t = deployments(&[d], false);
        assert!(
            t.lines()
                .nth(1)
                .unwrap()
                .starts_with("web    1/1     1         0        Healthy"),
            "{t}"
        );
        assert_eq!(counts(2, 1, 1, 0).status(), "Progressing");
        assert_eq!(counts(2, 1, 1, 1).status(), "Degraded");
        assert_eq!(counts(0, 0, 0, 0).status(), "NoDevices");
    }
}

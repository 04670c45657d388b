//! kubectl-style text output for `edgectl`.

use serde_json::Value;

/// Renders list items as a table; `true` for `-o wide`.
pub type Renderer = fn(&[Value], bool) -> String;

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

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(|x| x.as_str()).unwrap_or("")
}

fn u(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(|x| x.as_u64())
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

/// A device's labels as `k=v,k2=v2`, or `<none>`.
pub fn labels(v: &Value) -> String {
    let l = v.get("labels").and_then(|l| l.as_object());
    match l {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

pub fn devices(items: &[Value], wide: bool) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            let mut r = vec![
                s(d, "id").to_owned(),
                s(d, "presence").to_owned(),
                format!(
                    "{}/{}",
                    opt(u(d, "appliedRevision")),
                    opt(u(d, "desiredRevision"))
                ),
                age(u(d, "lastSeenMs")),
                age(u(d, "createdMs")),
            ];
            if wide {
                r.push(labels(d));
                r.push(s(d, "arch").to_owned());
                r.push(s(d, "agentVersion").to_owned());
                r.push(
                    d.get("k3sVersion")
                        .and_then(|k| k.as_str())
                        .unwrap_or("-")
                        .to_owned(),
                );
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

/// `Healthy` when every targeted device is healthy, `Degraded` when any
/// failed, `Progressing` otherwise, `NoDevices` when nothing matches.
pub fn rollout_status(targeted: u64, healthy: u64, failed: u64) -> &'static str {
    if targeted == 0 {
        "NoDevices"
    } else if failed > 0 {
        "Degraded"
    } else if healthy == targeted {
        "Healthy"
    } else {
        "Progressing"
    }
}

pub fn deployments(items: &[Value], wide: bool) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            let (t, synced, h, f) = (
                u(d, "targeted").unwrap_or(0),
                u(d, "inSync").unwrap_or(0),
                u(d, "healthy").unwrap_or(0),
                u(d, "failed").unwrap_or(0),
            );
            let mut r = vec![
                s(d, "name").to_owned(),
                format!("{h}/{t}"),
                synced.to_string(),
                f.to_string(),
                rollout_status(t, h, f).to_owned(),
                age(u(d, "updatedMs")),
            ];
            if wide {
                r.push(opt(u(d, "generation")));
                r.push(opt(u(d, "workloads")));
            }
            r
        })
        .collect();
    let mut headers = vec!["NAME", "READY", "IN-SYNC", "FAILED", "STATUS", "AGE"];
    if wide {
        headers.extend(["GENERATION", "WORKLOADS"]);
    }
    render(&headers, &rows)
}

pub fn models(items: &[Value], wide: bool) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|m| {
            let sha = s(m, "sha256");
            vec![
                s(m, "name").to_owned(),
                if wide {
                    sha.to_owned()
                } else {
                    sha.chars().take(12).collect()
                },
                u(m, "size")
                    .map_or_else(|| "-".into(), |b| format!("{:.1} KiB", b as f64 / 1024.0)),
                age(u(m, "createdMs")),
            ]
        })
        .collect();
    render(&["NAME", "SHA256", "SIZE", "AGE"], &rows)
}

pub fn events(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            vec![
                age(u(e, "createdAtMs")),
                s(e, "kind").to_owned(),
                e.get("workload")
                    .and_then(|w| w.as_str())
                    .unwrap_or("-")
                    .to_owned(),
                e.get("payload").map(|p| p.to_string()).unwrap_or_default(),
            ]
        })
        .collect();
    render(&["AGE", "KIND", "WORKLOAD", "PAYLOAD"], &rows)
}

pub fn describe_device(d: &Value) -> String {
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: String| {
        out.push_str(&format!("{:<16}{v}\n", format!("{k}:")))
    };
    field(&mut out, "Name", s(d, "id").to_owned());
    field(&mut out, "Labels", labels(d));
    field(&mut out, "Presence", s(d, "presence").to_owned());
    field(&mut out, "Last seen", age(u(d, "lastSeenMs")));
    field(&mut out, "Desired rev", opt(u(d, "desiredRevision")));
    field(&mut out, "Applied rev", opt(u(d, "appliedRevision")));
    field(&mut out, "Hostname", s(d, "hostname").to_owned());
    field(&mut out, "Arch", s(d, "arch").to_owned());
    field(&mut out, "Agent", s(d, "agentVersion").to_owned());
    field(
        &mut out,
        "K3s",
        d.get("k3sVersion")
            .and_then(|k| k.as_str())
            .unwrap_or("-")
            .to_owned(),
    );
    if let Some(m) = d.get("message").and_then(|m| m.as_str()) {
        field(&mut out, "Message", m.to_owned());
    }
    if let Some(hb) = d.get("heartbeat").filter(|h| !h.is_null()) {
        let mem = |k| u(hb, k).map_or(0.0, |b| b as f64 / 1_048_576.0);
        field(
            &mut out,
            "Resources",
            format!(
                "cpu {:.0}%, mem {:.0}/{:.0} MiB, agent rss {:.1} MiB, outbox {} queued / {} dropped",
                hb.get("cpuPercent").and_then(|c| c.as_f64()).unwrap_or(0.0),
                mem("memUsedBytes"),
                mem("memTotalBytes"),
                mem("agentRssBytes"),
                u(hb, "outboxDepth").unwrap_or(0),
                u(hb, "outboxDropped").unwrap_or(0),
            ),
        );
    }
    if let Some(conds) = d
        .get("conditions")
        .and_then(|c| c.as_array())
        .filter(|c| !c.is_empty())
    {
        out.push_str("Conditions:\n");
        for c in conds {
            out.push_str(&format!(
                "  {:<16} since {:<8} {}\n",
                s(c, "type"),
                age(u(c, "sinceMs")),
                s(c, "message")
            ));
        }
    }
    out.push_str("Workloads:\n");
    let reported = d
        .get("workloads")
        .and_then(|w| w.as_array())
        .cloned()
        .unwrap_or_default();
    let desired: Vec<String> = d
        .get("desiredWorkloads")
        .and_then(|w| w.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut names: Vec<String> = desired.clone();
    for r in &reported {
        let n = s(r, "name").to_owned();
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let rows: Vec<Vec<String>> = names
        .iter()
        .map(|n| {
            let r = reported.iter().find(|r| s(r, "name") == n);
            vec![
                format!("  {n}"),
                r.map_or("-", |r| s(r, "sync")).to_owned(),
                r.map_or("-", |r| s(r, "health")).to_owned(),
                if desired.contains(n) {
                    "yes"
                } else {
                    "no (pruning)"
                }
                .to_owned(),
                r.and_then(|r| r.get("message").and_then(|m| m.as_str()))
                    .unwrap_or("")
                    .to_owned(),
            ]
        })
        .collect();
    out.push_str(&render(
        &["  NAME", "SYNC", "HEALTH", "DESIRED", "MESSAGE"],
        &rows,
    ));
    out
}

pub fn describe_deployment(d: &Value) -> String {
    let mut out = String::new();
    let (t, h, f) = (
        u(d, "targeted").unwrap_or(0),
        u(d, "healthy").unwrap_or(0),
        u(d, "failed").unwrap_or(0),
    );
    out.push_str(&format!("Name:           {}\n", s(d, "name")));
    out.push_str(&format!("Generation:     {}\n", opt(u(d, "generation"))));
    out.push_str(&format!(
        "Devices:        {t} targeted, {} in sync, {h} healthy, {f} failed ({})\n",
        u(d, "inSync").unwrap_or(0),
        rollout_status(t, h, f)
    ));
    out.push_str("Per device:\n");
    let mut rows = Vec::new();
    for dev in d
        .get("devices")
        .and_then(|x| x.as_array())
        .cloned()
        .unwrap_or_default()
    {
        for w in dev
            .get("workloads")
            .and_then(|x| x.as_array())
            .cloned()
            .unwrap_or_default()
        {
            rows.push(vec![
                format!("  {}", s(&dev, "device")),
                s(&dev, "presence").to_owned(),
                format!(
                    "{}/{}",
                    opt(u(&dev, "appliedRevision")),
                    opt(u(&dev, "desiredRevision"))
                ),
                s(&w, "name").to_owned(),
                w.get("sync")
                    .and_then(|x| x.as_str())
                    .unwrap_or("-")
                    .to_owned(),
                w.get("health")
                    .and_then(|x| x.as_str())
                    .unwrap_or("-")
                    .to_owned(),
                w.get("message")
                    .and_then(|x| x.as_str())
                    .unwrap_or("")
                    .to_owned(),
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
    fn deployment_rows() {
        let d = serde_json::json!({"name": "web", "targeted": 1, "inSync": 1, "healthy": 1, "failed": 0, "updatedMs": 0});
        let t = deployments(&[d], false);
        assert!(
            t.lines()
                .nth(1)
                .unwrap()
                .starts_with("web    1/1     1         0        Healthy"),
            "{t}"
        );
        assert_eq!(rollout_status(2, 1, 0), "Progressing");
        assert_eq!(rollout_status(2, 1, 1), "Degraded");
        assert_eq!(rollout_status(0, 0, 0), "NoDevices");
    }
}

//! The live status view: devices, deployments (ready N/M) and the anomaly
//! events that reached the hub, read from the REST API every two seconds.
//! On a terminal it redraws in place; otherwise (pipes, tests) it prints a
//! plain line for each change only.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use edgefleet_api::text;

use super::DEVICE_ID;
use super::DemoError;
use super::agent::Agent;
use super::hub::Hub;

const REFRESH: Duration = Duration::from_secs(2);
/// Anomaly events kept on screen.
const RECENT: usize = 8;

/// One anomaly event as the hub stored it.
#[derive(Debug, Clone, PartialEq)]
struct Anomaly {
    at_ms: u64,
    device: String,
    score: f64,
}

/// What the view shows; `devices`, `deployments` and the demo device's
/// `workloads` are one line each.
#[derive(Debug, Default)]
struct View {
    devices: Vec<[String; 4]>,
    deployments: Vec<[String; 3]>,
    workloads: Vec<[String; 4]>,
    recent: VecDeque<Anomaly>,
    total: u64,
    /// `continue` token of the events endpoint: the last sequence seen.
    after_seq: i64,
}

/// Refreshes until the hub or the agent fails; Ctrl-C ends it from outside.
pub async fn run(hub: &Hub, agent: &mut Agent) -> Result<(), DemoError> {
    let tty = std::io::stdout().is_terminal();
    println!(
        "\nlive status, every {} s; Ctrl-C to stop",
        REFRESH.as_secs()
    );
    if !tty {
        println!("(not a terminal: printing changes only)");
    }
    let mut view = View::default();
    let mut drawn = 0;
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        tick.tick().await;
        hub.check_running()?;
        agent.check_running()?;
        let before = (
            view.devices.clone(),
            view.deployments.clone(),
            view.workloads.clone(),
        );
        let new = match view.refresh(hub).await {
            Ok(new) => new,
            Err(e) => {
                tracing::warn!(error = %e, "status refresh failed");
                continue;
            }
        };
        if tty {
            // Move up over the previous frame and clear it, then draw.
            let frame = view.frame();
            print!("{}{frame}", clear(drawn));
            drawn = frame.lines().count();
        } else {
            if before.0 != view.devices {
                for [id, presence, labels, rev] in &view.devices {
                    println!("device {id}: {presence}, labels {labels}, revision {rev}");
                }
            }
            if before.1 != view.deployments {
                for [name, ready, status] in &view.deployments {
                    println!("deployment {name}: ready {ready} ({status})");
                }
            }
            if before.2 != view.workloads {
                for [name, sync, health, message] in &view.workloads {
                    println!("workload {name}: {sync}, {health} {message}");
                }
            }
            for a in &new {
                println!(
                    "anomaly event at the hub: {} UTC, device {}, score {:.3}",
                    clock(a.at_ms),
                    a.device,
                    a.score
                );
            }
        }
        let _ = std::io::stdout().flush();
    }
}

impl View {
    /// Reads devices, deployments, the demo device's workloads and new
    /// events; returns the new anomalies.
    async fn refresh(&mut self, hub: &Hub) -> Result<Vec<Anomaly>, DemoError> {
        let api = &hub.client;
        let err = |e: edgefleet_api::ClientError| DemoError::Hub(e.into());
        self.devices = api
            .devices()
            .await
            .map_err(err)?
            .iter()
            .map(|d| {
                [
                    d.id.to_string(),
                    d.presence.to_string(),
                    text::labels(d),
                    text::revisions(d.applied_revision, d.desired_revision),
                ]
            })
            .collect();
        self.deployments = api
            .deployments()
            .await
            .map_err(err)?
            .iter()
            .map(|d| {
                [
                    d.name.clone(),
                    text::ready(&d.counts),
                    d.counts.status().to_owned(),
                ]
            })
            .collect();
        self.workloads = api
            .device(DEVICE_ID)
            .await
            .map_err(err)?
            .workloads
            .iter()
            .map(|w| {
                [
                    w.name.clone(),
                    w.sync.to_string(),
                    w.health.to_string(),
                    w.message.clone().unwrap_or_default(),
                ]
            })
            .collect();

        let mut new = Vec::new();
        loop {
            let page = api
                .events(DEVICE_ID, self.after_seq, 1000)
                .await
                .map_err(err)?;
            for e in &page.items {
                self.after_seq = self.after_seq.max(e.seq);
                if e.kind != "inference.result" {
                    continue;
                }
                let Some(score) = e.payload["outputs"][0]["data"][0].as_f64() else {
                    continue;
                };
                new.push(Anomaly {
                    at_ms: e.created_at_ms,
                    device: e.device_id.clone(),
                    score,
                });
            }
            if page.continue_token.as_deref().is_none_or(str::is_empty) {
                break;
            }
        }
        self.total += new.len() as u64;
        self.recent.extend(new.iter().cloned());
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        Ok(new)
    }

    /// The whole screen for a terminal.
    fn frame(&self) -> String {
        let devices: Vec<Vec<String>> = self.devices.iter().map(|r| r.to_vec()).collect();
        let deployments: Vec<Vec<String>> = self.deployments.iter().map(|r| r.to_vec()).collect();
        let workloads: Vec<Vec<String>> = self.workloads.iter().map(|r| r.to_vec()).collect();
        let events: Vec<Vec<String>> = self
            .recent
            .iter()
            .rev()
            .map(|a| vec![clock(a.at_ms), a.device.clone(), format!("{:.3}", a.score)])
            .collect();
        let indent = |s: String| s.lines().map(|l| format!("  {l}\n")).collect::<String>();
        let mut out = format!(
            "\n[{} UTC]\ndevices\n{}deployments\n{}workloads on {DEVICE_ID}\n{}",
            clock(edgefleet_protocol::now_ms()),
            indent(text::render(
                &["NAME", "PRESENCE", "LABELS", "REVISION"],
                &devices
            )),
            indent(text::render(&["NAME", "READY", "STATUS"], &deployments)),
            indent(text::render(
                &["NAME", "SYNC", "HEALTH", "MESSAGE"],
                &workloads
            )),
        );
        out.push_str(&format!(
            "anomaly events at the hub (score > 0.8): {} so far\n",
            self.total
        ));
        if events.is_empty() {
            out.push_str(
                "  (none yet: the model loads, then the next anomalous reading shows here)\n",
            );
        } else {
            out.push_str(&indent(text::render(
                &["TIME (UTC)", "DEVICE", "SCORE"],
                &events,
            )));
        }
        out
    }
}

/// ANSI: cursor up `lines`, clear to the end of the screen.
fn clear(lines: usize) -> String {
    if lines == 0 {
        String::new()
    } else {
        format!("\x1b[{lines}A\x1b[J")
    }
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
fn clock(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00.000");
        assert_eq!(clock(86_400_000 + 3_723_045), "01:02:03.045");
    }
}

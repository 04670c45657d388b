//! The live status view: devices, deployments (ready N/M) and the anomaly
//! events that reached the hub, read from the REST API every two seconds.
//! On a terminal it redraws in place; otherwise (pipes, tests) it prints a
//! plain line for each change only.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::Value;

use super::DEVICE_ID;
use super::DemoError;
use super::agent::Agent;
use super::hub::Hub;
use crate::ctl::table;

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

/// What the view shows; `devices` and `deployments` are one line each.
#[derive(Debug, Default)]
struct View {
    devices: Vec<[String; 4]>,
    deployments: Vec<[String; 3]>,
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
        let before = (view.devices.clone(), view.deployments.clone());
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
    /// Reads devices, deployments and new events; returns the new anomalies.
    async fn refresh(&mut self, hub: &Hub) -> Result<Vec<Anomaly>, DemoError> {
        let items = |v: Value| v["items"].as_array().cloned().unwrap_or_default();
        self.devices = items(hub.get("/devices").await?)
            .iter()
            .map(|d| {
                [
                    text(&d["id"]),
                    text(&d["presence"]),
                    crate::ctl::table::labels(d),
                    format!(
                        "{}/{}",
                        number(&d["appliedRevision"]),
                        number(&d["desiredRevision"])
                    ),
                ]
            })
            .collect();
        self.deployments = items(hub.get("/deployments").await?)
            .iter()
            .map(|d| {
                let n = |k: &str| d[k].as_u64().unwrap_or(0);
                [
                    text(&d["name"]),
                    format!("{}/{}", n("healthy"), n("targeted")),
                    table::rollout_status(n("targeted"), n("healthy"), n("failed")).to_owned(),
                ]
            })
            .collect();

        let mut new = Vec::new();
        loop {
            let page = hub
                .get(&format!(
                    "/devices/{DEVICE_ID}/events?limit=1000&continue={}",
                    self.after_seq
                ))
                .await?;
            for e in items(page.clone()) {
                self.after_seq = self.after_seq.max(e["seq"].as_i64().unwrap_or(0));
                if e["kind"] != "inference.result" {
                    continue;
                }
                let Some(score) = e["payload"]["outputs"][0]["data"][0].as_f64() else {
                    continue;
                };
                new.push(Anomaly {
                    at_ms: e["createdAtMs"].as_u64().unwrap_or(0),
                    device: text(&e["deviceId"]),
                    score,
                });
            }
            if page["continue"].as_str().is_none_or(str::is_empty) {
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
        let events: Vec<Vec<String>> = self
            .recent
            .iter()
            .rev()
            .map(|a| vec![clock(a.at_ms), a.device.clone(), format!("{:.3}", a.score)])
            .collect();
        let indent = |s: String| s.lines().map(|l| format!("  {l}\n")).collect::<String>();
        let mut out = format!(
            "\n[{} UTC]\ndevices\n{}deployments\n{}",
            clock(edgefleet_protocol::now_ms()),
            indent(table::render(
                &["NAME", "PRESENCE", "LABELS", "REVISION"],
                &devices
            )),
            indent(table::render(&["NAME", "READY", "STATUS"], &deployments)),
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
            out.push_str(&indent(table::render(
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

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("-").to_owned()
}

fn number(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".into(), |n| n.to_string())
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

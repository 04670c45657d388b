//! A logs command: a workload's recent logs, read here and sent back in
//! [`LogChunk`] events straight over MQTT (not through the outbox: nobody
//! waits for logs across a reconnect, and they must not displace queued
//! events). Pods' logs come from the K3s API; an inference workload has no
//! pod, so its logs are the agent's own recent lines about it
//! ([`crate::worklog`]).

use std::sync::Arc;
use std::time::Duration;

use edgefleet_protocol::command::{LOG_CHUNK_BYTES, MAX_LOG_BYTES};
use edgefleet_protocol::{Event, LOG_CHUNK_KIND, LogChunk, WorkloadSpec};

use crate::runtime::kube::KubeRuntime;
use crate::shared::Shared;

/// Most pods whose logs one command reads.
const MAX_PODS: usize = 20;
/// How long a chunk may wait for room in the MQTT session's queue.
const SEND_WAIT: Duration = Duration::from_secs(5);

/// What the logs command asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub workload: String,
    pub container: Option<String>,
    pub tail: Option<u32>,
    pub since_secs: Option<u64>,
    pub limit: u32,
}

/// The workload's logs as text, or why they cannot be read.
pub async fn collect(shared: &Arc<Shared>, req: &Request) -> Result<String, String> {
    let limit = req.limit.min(MAX_LOG_BYTES);
    let (workload, objects) = super::workload_on_device(shared, &req.workload).await?;
    let spec = workload.spec().ok_or_else(|| {
        format!(
            "workload {:?} has no kind (kubernetes, inference or agent)",
            req.workload
        )
    })?;
    match spec {
        WorkloadSpec::Agent(_) => Err(format!(
            "{} is the agent itself; its log is the device's journal (journalctl -u edge-agent)",
            req.workload
        )),
        WorkloadSpec::Inference(_) => {
            let since_ms = req.since_secs.map_or(0, |s| {
                edgefleet_protocol::now_ms().saturating_sub(s.saturating_mul(1000))
            });
            let lines =
                crate::worklog::recent(&req.workload, since_ms, req.tail.map(|t| t as usize));
            let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            text.truncate(text.floor_char_boundary(limit as usize));
            Ok(text)
        }
        WorkloadSpec::Kubernetes(_) => {
            let keys: Vec<_> = objects.iter().map(crate::reconcile::key_of).collect();
            let timeout = Duration::from_millis(shared.cfg.kube.request_timeout_ms);
            let kube = KubeRuntime::connect(shared.cfg.kube.kubeconfig.as_deref(), timeout)
                .await
                .map_err(|e| {
                    format!("Kubernetes API not configured: {}", crate::error_chain(&e))
                })?;
            let pods = kube
                .workload_pods(&keys, MAX_PODS)
                .await
                .map_err(|e| crate::error_chain(&e))?;
            let streams: Vec<(String, String, String)> = pods
                .into_iter()
                .flat_map(|(ns, pod, containers)| {
                    containers
                        .into_iter()
                        .filter(|c| req.container.as_ref().is_none_or(|want| want == c))
                        .map(move |c| (ns.clone(), pod.clone(), c))
                })
                .collect();
            if streams.is_empty() {
                return Err(match &req.container {
                    Some(c) => format!("no container {c:?} in {}'s pods", req.workload),
                    None => format!("{} has no pods", req.workload),
                });
            }
            let prefix = streams.len() > 1;
            let mut text = String::new();
            for (ns, pod, c) in &streams {
                let room = (limit as usize).saturating_sub(text.len());
                if room == 0 {
                    break;
                }
                let log = kube
                    .pod_log(
                        (ns, pod, c),
                        req.tail,
                        req.since_secs,
                        u32::try_from(room).unwrap_or(u32::MAX),
                    )
                    .await
                    .map_err(|e| crate::error_chain(&e))?;
                for line in log.lines() {
                    if prefix {
                        text.push_str(&format!("[{pod}/{c}] "));
                    }
                    text.push_str(line);
                    text.push('\n');
                }
            }
            text.truncate(text.floor_char_boundary(limit as usize));
            Ok(text)
        }
    }
}

/// Sends `result` as numbered chunks, the last one marked (with the error,
/// if any). Returns how many chunks went out, or why they stopped.
pub async fn send(
    shared: &Arc<Shared>,
    command_id: &str,
    result: &Result<String, String>,
) -> Result<u32, String> {
    let (text, error) = match result {
        Ok(t) => (t.as_str(), None),
        Err(e) => ("", Some(edgefleet_protocol::status::truncate_message(e))),
    };
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.floor_char_boundary(LOG_CHUNK_BYTES);
        pieces.push(&rest[..end]);
        rest = &rest[end..];
    }
    if pieces.is_empty() {
        pieces.push("");
    }
    let n = pieces.len();
    for (seq, data) in pieces.into_iter().enumerate() {
        let last = seq + 1 == n;
        let chunk = LogChunk {
            command_id: command_id.to_owned(),
            seq: seq as u32,
            data: data.to_owned(),
            last,
            error: if last { error.clone() } else { None },
        };
        let event = Event {
            id: format!("{command_id}-l{seq}"),
            device_id: shared.device.clone(),
            kind: LOG_CHUNK_KIND.to_owned(),
            workload: None,
            created_at_ms: edgefleet_protocol::now_ms(),
            payload: serde_json::to_value(&chunk).unwrap_or_default(),
        };
        event
            .check()
            .map_err(|e| format!("a log chunk is not a valid event: {e}"))?;
        if !shared.connected.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("the uplink went down while sending logs".into());
        }
        let sealed = shared.identity.signer().seal(&event);
        shared
            .direct
            .tx
            .send_timeout(sealed, SEND_WAIT)
            .await
            .map_err(|_| "the MQTT session did not take the logs in time".to_owned())?;
    }
    Ok(n as u32)
}

//! Git sources: the hub keeps deployments in step with a path of a Git
//! repository. Each source is fetched on its interval (jittered), at once
//! on a webhook or `edgectl reconcile source`, and backs off while its
//! server fails. A fetched commit is applied whole or not at all: every
//! edgefleet Deployment under the path is read and checked first (and the
//! commit's SSH signature, when the source asks for it), then all of them
//! are written in one transaction. A commit that fails keeps the last good
//! one in force and says why (file and line) until a later commit applies:
//! a commit is never skipped without that being visible.

pub mod git;
pub mod verify;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgefleet_api::{GitRepo, SOURCE_KIND, SourceFailure, SourceMetadata, SourceStatus};
use edgefleet_protocol::{Deployment, now_ms};
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::Shared;
use crate::store::SourceRefused;

/// A fetch that takes longer is stopped and counted as failed.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Sources fetched at the same time.
const PARALLEL: usize = 4;
/// The longest wait after failed fetches.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Sources to fetch now (webhooks, `reconcile`, a changed manifest).
#[derive(Debug, Default)]
pub struct Triggers {
    names: Mutex<HashSet<String>>,
    wake: Notify,
}

impl Triggers {
    pub fn fetch_now(&self, name: &str) {
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned());
        self.wake.notify_one();
    }

    fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.names.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Where source `name` keeps its bare repository, under `dir` (the data
/// dir's `sources/`).
pub fn repo_dir(dir: &std::path::Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.git"))
}

/// Runs until `stop`: fetches each source when it is due or triggered.
pub async fn run(st: Shared, stop: CancellationToken) {
    let mut running: tokio::task::JoinSet<String> = tokio::task::JoinSet::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    // Triggered while its fetch ran: fetch again right after.
    let mut again: HashSet<String> = HashSet::new();
    loop {
        let mut triggered = st.sources.take();
        triggered.extend(again.drain());
        match st.store.run(|s| s.list_sources()).await {
            Ok(list) => {
                let now = now_ms();
                for s in list {
                    if s.spec.suspend {
                        continue;
                    }
                    let due =
                        triggered.contains(&s.name) || s.next_fetch_ms.is_none_or(|n| n <= now);
                    if !due {
                        continue;
                    }
                    // Busy, or no slot free: a trigger is kept for the
                    // next round (a due poll is due then anyway).
                    if in_flight.contains(&s.name) || in_flight.len() >= PARALLEL {
                        if triggered.contains(&s.name) {
                            again.insert(s.name.clone());
                        }
                        continue;
                    }
                    in_flight.insert(s.name.clone());
                    running.spawn(sync(st.clone(), s));
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list Git sources"),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = st.sources.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            Some(done) = running.join_next(), if !running.is_empty() => {
                match done {
                    Ok(name) => { in_flight.remove(&name); }
                    Err(e) => {
                        tracing::error!(error = %e, "a Git source sync panicked");
                        in_flight.clear();
                    }
                }
            }
        }
        while let Some(done) = running.try_join_next() {
            if let Ok(name) = done {
                in_flight.remove(&name);
            }
        }
    }
    running.abort_all();
}

/// The manifest a stored source came from.
fn manifest(s: &SourceStatus) -> GitRepo {
    GitRepo {
        api_version: edgefleet_protocol::deployment::API_VERSION.into(),
        kind: SOURCE_KIND.into(),
        metadata: SourceMetadata {
            name: s.name.clone(),
        },
        spec: s.spec.clone(),
    }
}

/// `d` give or take a tenth, so sources with one interval spread out.
fn jittered(d: Duration) -> Duration {
    let tenth = d.as_millis() as u64 / 10;
    let ms = d.as_millis() as u64 - tenth + rand::thread_rng().gen_range(0..=2 * tenth);
    Duration::from_millis(ms)
}

/// 1 s after the first failure, doubling, at most [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(9)).min(MAX_BACKOFF)
}

/// One fetch of one source, and the apply of what it found. Returns the
/// source's name.
async fn sync(st: Shared, s: SourceStatus) -> String {
    let name = s.name.clone();
    let repo = manifest(&s);
    let interval = Duration::from_secs(repo.interval().as_secs());
    let dir = repo_dir(&st.sources_dir, &name);
    let interrupt = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut work = {
        let (repo, interrupt) = (repo.clone(), interrupt.clone());
        tokio::task::spawn_blocking(move || git::fetch(&dir, &repo, &interrupt))
    };
    let fetched = match tokio::time::timeout(FETCH_TIMEOUT, &mut work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(git::FetchError::Fetch(format!("the fetch panicked: {e}"))),
        Err(_) => {
            interrupt.store(true, Ordering::Relaxed);
            // The source stays busy until the fetch has stopped: no second
            // one works in the same repository meanwhile.
            let _ = work.await;
            Err(git::FetchError::Fetch(format!(
                "the fetch took longer than {}s",
                FETCH_TIMEOUT.as_secs()
            )))
        }
    };
    st.metrics
        .source_fetch
        .observe(started.elapsed().as_secs_f64());
    let at_ms = now_ms();
    let outcome = match fetched {
        Err(git::FetchError::Fetch(message)) => Err((
            SourceFailure {
                stage: "fetch".into(),
                message,
                commit: None,
                file: None,
                line: None,
                at_ms,
            },
            "fetch_failed",
        )),
        Err(git::FetchError::Content {
            message,
            file,
            commit,
        }) => Err((
            SourceFailure {
                stage: "manifest".into(),
                message,
                commit: Some(commit),
                file,
                line: None,
                at_ms,
            },
            "invalid",
        )),
        Ok(f) => apply(&st, &s, &repo, f, at_ms).await,
    };
    let next_ok = at_ms + jittered(interval).as_millis() as u64;
    match outcome {
        Ok((commit, result)) => {
            st.metrics
                .source_syncs
                .get_or_create(&vec![("outcome", result.to_owned())])
                .inc();
            if let Err(e) = st
                .store
                .run({
                    let name = name.clone();
                    move |s| s.source_fetched(&name, &commit, next_ok)
                })
                .await
            {
                tracing::error!(source = %name, error = %e, "cannot record the fetch");
            }
        }
        Err((failure, result)) => {
            st.metrics
                .source_syncs
                .get_or_create(&vec![("outcome", result.to_owned())])
                .inc();
            // The same commit refused again is not news: counted once.
            let repeat = s.failure.as_ref().is_some_and(|f| {
                f.commit.is_some() && f.commit == failure.commit && f.stage == failure.stage
            });
            let next = if failure.stage == "fetch" {
                at_ms + backoff(s.failures).as_millis() as u64
            } else {
                next_ok
            };
            if repeat {
                tracing::debug!(source = %name, commit = ?failure.commit, "commit still refused");
            } else {
                tracing::warn!(
                    source = %name,
                    stage = %failure.stage,
                    commit = ?failure.commit,
                    file = ?failure.file,
                    line = ?failure.line,
                    error = %failure.message,
                    "Git source not applied; the last good commit stays in force"
                );
            }
            let refused = failure.stage == "verify" && !repeat;
            if let Err(e) = st
                .store
                .run({
                    let name = name.clone();
                    move |s| s.source_failed(&name, &failure, refused, next)
                })
                .await
            {
                tracing::error!(source = %name, error = %e, "cannot record the failure");
            }
        }
    }
    st.ui.changes.send(crate::ui::Change::Sources);
    name
}

type Outcome = Result<(String, &'static str), (SourceFailure, &'static str)>;

/// Checks and applies a fetched commit.
async fn apply(
    st: &Shared,
    s: &SourceStatus,
    repo: &GitRepo,
    f: git::Fetched,
    at_ms: u64,
) -> Outcome {
    let fail =
        |stage: &str, message: String, file: Option<String>, line: Option<u64>| SourceFailure {
            stage: stage.into(),
            message,
            commit: Some(f.commit.clone()),
            file,
            line,
            at_ms,
        };
    // Applied already, and the manifest has not changed since.
    if s.applied_commit.as_deref() == Some(f.commit.as_str())
        && s.applied_ms.is_some_and(|a| a >= s.updated_ms)
        && s.failure.is_none()
    {
        return Ok((f.commit, "unchanged"));
    }
    if let Some(v) = &repo.spec.verify {
        let signers = std::fs::read_to_string(&v.allowed_signers_file)
            .map_err(|e| format!("cannot read {}: {e}", v.allowed_signers_file))
            .and_then(|t| verify::parse_allowed_signers(&t))
            .map_err(|m| (fail("verify", m, None, None), "unverified"))?;
        match verify::verify_commit(&signers, f.signature.as_ref()) {
            Ok(signer) => {
                tracing::info!(source = %s.name, commit = %f.commit, %signer, "commit signature verified");
            }
            Err(m) => return Err((fail("verify", m, None, None), "unverified")),
        }
    }
    let mut deployments = parse(&f.files)
        .map_err(|(m, file, line)| (fail("manifest", m, Some(file), line), "invalid"))?;
    let _fleet = st.fleet_changes.lock().await;
    let (name, commit, prune, check) = (
        s.name.clone(),
        f.commit.clone(),
        repo.spec.prune,
        st.check_limits,
    );
    let epoch = st.epoch;
    let applied = st
        .store
        .run(move |store| {
            for d in &mut deployments {
                if let Err(e) = crate::api::releases::resolve(store, d)? {
                    return Ok(Err(format!("deployment {}: {e}", d.metadata.name)));
                }
            }
            let labels = store.device_labels()?;
            let r = store.apply_source_commit(&name, &commit, &deployments, prune, |after| {
                if !check {
                    return Ok(());
                }
                let v = crate::desired::violations(&labels, after, epoch);
                match v.first() {
                    None => Ok(()),
                    Some(_) => Err(crate::api::ApiError::limits(&v).message),
                }
            })?;
            Ok(match r {
                Ok(a) => Ok(a),
                Err(Ok(SourceRefused::OwnedElsewhere { deployment, owner })) => Err(format!(
                    "deployment {deployment} is owned by source {owner}; one source per deployment"
                )),
                Err(Ok(e)) => Err(e.to_string()),
                Err(Err(limits)) => Err(limits),
            })
        })
        .await;
    match applied {
        Ok(Ok(a)) => {
            tracing::info!(
                source = %s.name,
                commit = %f.commit,
                changed = ?a.changed,
                removed = ?a.removed,
                adopted = ?a.adopted,
                "Git source commit applied"
            );
            if !a.changed.is_empty() || !a.removed.is_empty() {
                st.publish.changed();
                st.rollout_wake.notify_one();
                st.ui.changes.send(crate::ui::Change::Deployments);
            }
            Ok((f.commit, "applied"))
        }
        Ok(Err(m)) => Err((fail("apply", m, None, None), "refused")),
        Err(e) => Err((
            fail("apply", format!("the hub's store: {e}"), None, None),
            "refused",
        )),
    }
}

/// Every edgefleet Deployment in the files: the first problem names its
/// file and line. Documents of other kinds are left alone (a repository
/// may hold Kubernetes manifests and anything else beside them).
fn parse(files: &[git::File]) -> Result<Vec<Deployment>, (String, String, Option<u64>)> {
    let mut out: Vec<Deployment> = Vec::new();
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    for file in files {
        for (start, doc) in documents(&file.text) {
            let at = |line: u64| (file.path.clone(), Some(line));
            let value: serde_yaml::Value = match serde_yaml::from_str(doc) {
                Ok(v) => v,
                Err(e) => {
                    let line = e.location().map_or(start, |l| start + l.line() as u64 - 1);
                    let (f, l) = at(line);
                    return Err((format!("not valid YAML: {e}"), f, l));
                }
            };
            if value.is_null() {
                continue;
            }
            let field = |k: &str| value.get(k).and_then(serde_yaml::Value::as_str);
            if field("apiVersion") != Some(edgefleet_protocol::deployment::API_VERSION)
                || field("kind") != Some("Deployment")
            {
                continue;
            }
            let d = Deployment::from_yaml(doc).map_err(|e| {
                let (f, l) = at(start);
                (e.to_string(), f, l)
            })?;
            if let Some(other) = seen.insert(d.metadata.name.clone(), file.path.clone()) {
                let (f, l) = at(start);
                return Err((
                    format!("deployment {} is in {other} already", d.metadata.name),
                    f,
                    l,
                ));
            }
            out.push(d);
        }
    }
    Ok(out)
}

/// The YAML documents of a file (split at `---` lines), each with the line
/// it starts on (1-based).
fn documents(text: &str) -> Vec<(u64, &str)> {
    let mut out = Vec::new();
    let (mut start, mut line_no, mut from) = (1u64, 1u64, 0usize);
    let mut pos = 0usize;
    for line in text.split_inclusive('\n') {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") || t == "..." {
            out.push((start, &text[from..pos]));
            from = pos + line.len();
            start = line_no + 1;
        }
        pos += line.len();
        line_no += 1;
    }
    out.push((start, &text[from..]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> git::File {
        git::File {
            path: path.into(),
            text: text.into(),
        }
    }

    const DEP: &str = "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {name: NAME}\nspec:\n  workloads:\n    - name: w\n      kubernetes:\n        manifests: [{apiVersion: v1, kind: ConfigMap, metadata: {name: c}}]\n";

    #[test]
    fn a_commit_parses_whole_or_names_the_file_and_line() {
        let two = format!(
            "{}---\n{}---\napiVersion: v1\nkind: ConfigMap\n",
            DEP.replace("NAME", "a"),
            DEP.replace("NAME", "b")
        );
        let deps = parse(&[file("d/ab.yaml", &two)]).unwrap();
        assert_eq!(deps.len(), 2);
        // A syntax error on line 11 of the file (line 2 of its second document).
        let broken = format!(
            "{}---\napiVersion: edgefleet.io/v1\nkind: Deployment: x\n",
            DEP.replace("NAME", "a")
        );
        let (msg, f, line) = parse(&[file("d/x.yaml", &broken)]).unwrap_err();
        assert_eq!((f.as_str(), line), ("d/x.yaml", Some(11)), "{msg}");
        // An invalid deployment: its document's first line.
        let bad = format!(
            "{}---\n{}",
            DEP.replace("NAME", "a"),
            DEP.replace("NAME", "Bad_Name")
        );
        let (msg, f, line) = parse(&[file("d/y.yaml", &bad)]).unwrap_err();
        assert_eq!((f.as_str(), line), ("d/y.yaml", Some(10)), "{msg}");
        assert!(msg.contains("metadata.name"), "{msg}");
        // The same name twice.
        let (msg, ..) = parse(&[
            file("a.yaml", &DEP.replace("NAME", "a")),
            file("b.yaml", &DEP.replace("NAME", "a")),
        ])
        .unwrap_err();
        assert!(msg.contains("in a.yaml already"), "{msg}");
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_jitter_stays_within_a_tenth() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(30), MAX_BACKOFF);
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(30)).as_millis();
            assert!((27_000..=33_000).contains(&j), "{j}");
        }
    }
}

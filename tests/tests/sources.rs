//! Git sources against a real Git server (Debian's `git http-backend` on
//! loopback over https, OpenSSH's sshd for `ssh://`, and `file://` through
//! `git upload-pack`), a real hub and a
//! simulated fleet: commits are made and pushed with the real `git`, and the
//! webhook is called as GitHub calls it (`X-Hub-Signature-256`).
//!
//! - a push plus a webhook reaches every device; the fleet view names the
//!   commit and how many devices run it;
//! - a commit with one broken file applies nothing, the previous commit
//!   stays in force on every device, `edgectl describe source` names the
//!   file and line; the next good commit applies;
//! - deployments owned by a source refuse API changes with 409;
//! - a stopped server: the source reports it and backs off, deployments
//!   stay, and it recovers by itself when the server returns;
//! - with `verify.allowedSignersFile`, unsigned commits and commits signed
//!   by an unlisted key are refused; one signed by a listed key applies;
//! - tags (annotated ones peeled), semver ranges over tags, pinned commits;
//! - an ssh remote with a key and known_hosts; a server whose host key is
//!   not the known one is refused.

use std::path::Path;
use std::time::{Duration, Instant};

use edgefleet_api::SourceStatus;
use edgefleet_tests::eventually;
use edgefleet_tests::fixtures::sim_deployment;
use edgefleet_tests::git::{self, GitServer, Repo};
use edgefleet_tests::hub::Hub;
use edgefleet_tests::sim::{Fleet, SimOptions};
use hmac::Mac as _;

const T: Duration = Duration::from_secs(60);
const SOURCE: &str = "fleet-config";
const NAME: &str = "sim-config";

fn have_git() -> bool {
    match git::available() {
        Ok(()) => true,
        Err(why) => {
            edgefleet_tests::skip("git", &why);
            false
        }
    }
}

fn source_yaml(url: &str, dir: &Path, interval: &str, extra: &str) -> String {
    format!(
        "apiVersion: edgefleet.io/v1\nkind: GitRepo\nmetadata: {{name: {SOURCE}}}\nspec:\n  \
         url: {url}\n  ref: {{branch: main}}\n  path: deployments/\n  interval: {interval}\n  \
         prune: true\n  webhook: {{secretFile: {}}}\n{extra}",
        dir.join("webhook-secret").display()
    )
}

/// `edgectl ARGS` off the runtime (the simulated fleet runs on it).
async fn edgectl(hub: &Hub, args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(edgefleet_tests::process::bin("edgectl"));
    cmd.args(args)
        .env("EDGECTL_SERVER", hub.api_url())
        .env("EDGECTL_TOKEN", hub.operator_token());
    tokio::task::spawn_blocking(move || edgefleet_tests::process::output(cmd))
        .await
        .expect("edgectl")
}

/// Calls the webhook as GitHub does: a push event, signed with `secret`.
async fn webhook(hub: &Hub, secret: &[u8], commit: &str) -> u16 {
    let body = serde_json::json!({
        "ref": "refs/heads/main",
        "after": commit,
        "repository": {"full_name": "ops/fleet"},
    })
    .to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    reqwest::Client::new()
        .post(format!("{}/api/v1/sources/{SOURCE}/webhook", hub.api_url()))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header("x-hub-signature-256", sig)
        .body(body)
        .send()
        .await
        .expect("webhook")
        .status()
        .as_u16()
}

/// Commits and pushes deployment `sim-config` with `value` in it.
fn commit_sim(repo: &Repo, value: &str, message: &str, extra: &[&str]) -> String {
    repo.commit(
        &[(
            "deployments/sim.yaml",
            Some(&sim_deployment(NAME, value, None)),
        )],
        message,
        extra,
    )
}

/// `edgectl apply -f` of `yaml`, which must succeed.
async fn apply_file(hub: &Hub, dir: &Path, yaml: &str) {
    let f = dir.join("source.yaml");
    std::fs::write(&f, yaml).unwrap();
    let (code, out, err) = edgectl(hub, &["apply", "-f", f.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
}

async fn source(hub: &Hub) -> SourceStatus {
    hub.client().source(SOURCE).await.expect("the source")
}

async fn applied(hub: &Hub, commit: &str) -> SourceStatus {
    eventually(&format!("commit {commit} applied"), T, || async {
        let s = source(hub).await;
        (s.applied_commit.as_deref() == Some(commit) && s.failure.is_none()).then_some(s)
    })
    .await
}

async fn failed_on(hub: &Hub, commit: &str) -> SourceStatus {
    eventually(&format!("commit {commit} refused"), T, || async {
        let s = source(hub).await;
        s.failure
            .as_ref()
            .is_some_and(|f| f.commit.as_deref() == Some(commit))
            .then_some(s)
    })
    .await
}

async fn generation(hub: &Hub, name: &str) -> Option<u64> {
    hub.client()
        .deployment(name)
        .await
        .ok()
        .map(|d| d.generation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_the_fleet_and_a_bad_commit_keeps_the_last_good_one() {
    if !have_git() {
        return;
    }
    const DEVICES: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::create(dir.path(), "fleet");
    let token = "s3cret-token";
    // https with a private CA: credentials are sent over TLS only.
    let pki = edgefleet_tests::pki::Pki::new();
    let server = GitServer::start(dir.path(), Some(token), Some(&pki.server)).await;
    std::fs::write(dir.path().join("git-token"), format!("{token}\n")).unwrap();
    let secret = b"hook-secret";
    std::fs::write(dir.path().join("webhook-secret"), secret).unwrap();

    let c1 = repo.commit(
        &[
            (
                "deployments/sim.yaml",
                Some(&sim_deployment(NAME, "1", None)),
            ),
            (
                "deployments/other.yaml",
                Some(&sim_deployment("other", "1", None)),
            ),
            ("README.md", Some("fleet config\n")),
        ],
        "first",
        &[],
    );
    let hub = Hub::start().await;
    let opts = SimOptions {
        devices: DEVICES,
        ..Default::default()
    };
    let fleet = Fleet::start_connected(hub.api_url(), &hub.bootstrap_token(), &opts, T)
        .await
        .expect("the simulated fleet connects");

    // Applied with edgectl, like a deployment; polled hourly: only the
    // first fetch and the webhooks bring commits in.
    let manifest = dir.path().join("source.yaml");
    let auth = format!(
        "  auth: {{tokenFile: {}}}\n  caFile: {}\n",
        dir.path().join("git-token").display(),
        pki.ca.display()
    );
    std::fs::write(
        &manifest,
        source_yaml(&server.url("fleet"), dir.path(), "1h", &auth),
    )
    .unwrap();
    let (code, out, err) = edgectl(&hub, &["apply", "-f", manifest.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("gitrepo/fleet-config created"), "{out}");
    let s = applied(&hub, &c1).await;
    assert_eq!(s.deployments, ["other", NAME]);
    fleet
        .wait_running(NAME, 1, T)
        .await
        .expect("generation 1 everywhere");

    // The fleet view: which commit, on how many devices.
    let short = &c1[..7];
    let want = format!("commit {short} on {DEVICES}/{DEVICES}");
    let out = eventually(
        "the fleet view shows the commit on every device",
        T,
        || async {
            let (_, out, _) = edgectl(&hub, &["get", "deployments", "-o", "wide"]).await;
            out.lines()
                .any(|l| l.starts_with(NAME) && l.contains(&want) && l.contains(SOURCE))
                .then_some(out)
        },
    )
    .await;
    eprintln!("{out}");
    let (_, out, _) = edgectl(&hub, &["get", "sources"]).await;
    assert!(
        out.contains(SOURCE) && out.contains("Ready") && out.contains(short),
        "{out}"
    );

    // Ownership: the API refuses changes to what Git owns.
    let local = dir.path().join("local.yaml");
    std::fs::write(&local, sim_deployment(NAME, "by-hand", None)).unwrap();
    let (code, out, err) = edgectl(&hub, &["apply", "-f", local.to_str().unwrap()]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("owned by source fleet-config; change it in Git") && err.contains("409"),
        "{err}"
    );
    let (code, _, err) = edgectl(&hub, &["delete", "deployment", NAME]).await;
    assert_eq!(code, 1);
    assert!(err.contains("owned by source fleet-config"), "{err}");
    let (status, _) = hub
        .put_deployment(NAME, &sim_deployment(NAME, "x", None))
        .await;
    assert_eq!(status, 409);

    // A push and a webhook: the change reaches every device.
    let c2 = commit_sim(&repo, "2", "second", &[]);
    let pushed = Instant::now();
    assert_eq!(webhook(&hub, secret, &c2).await, 202);
    fleet
        .wait_running(NAME, 2, T)
        .await
        .expect("generation 2 everywhere");
    eprintln!("push {c2} → {DEVICES} devices in {:?}", pushed.elapsed());
    applied(&hub, &c2).await;
    // A forged webhook is refused and counted, and fetches nothing.
    assert_eq!(webhook(&hub, b"not the secret", &c2).await, 401);
    assert_eq!(
        hub.metric("edgefleet_hub_source_webhooks_total{result=\"bad_signature\"}")
            .await,
        1.0
    );

    // One broken file: nothing of that commit applies, the previous commit
    // stays in force everywhere, and the source names the file and line.
    let broken = "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {name: broken}\nspec:\n  workloads: [\n";
    let c3 = repo.commit(
        &[
            (
                "deployments/sim.yaml",
                Some(&sim_deployment(NAME, "3", None)),
            ),
            ("deployments/team/broken.yaml", Some(broken)),
        ],
        "third, broken",
        &[],
    );
    assert_eq!(webhook(&hub, secret, &c3).await, 202);
    let s = failed_on(&hub, &c3).await;
    let f = s.failure.clone().unwrap();
    assert_eq!(f.stage, "manifest", "{f:?}");
    assert_eq!(
        f.file.as_deref(),
        Some("deployments/team/broken.yaml"),
        "{f:?}"
    );
    assert!(f.line.is_some_and(|l| (5..=6).contains(&l)), "{f:?}");
    assert_eq!(s.applied_commit.as_deref(), Some(c2.as_str()));
    assert_eq!(s.fetched_commit.as_deref(), Some(c3.as_str()));
    let (code, out, _) = edgectl(&hub, &["describe", "source", SOURCE]).await;
    assert_eq!(code, 0);
    eprintln!("{out}");
    assert!(
        out.contains(&format!("deployments/team/broken.yaml:{}", f.line.unwrap())),
        "{out}"
    );
    assert!(out.contains("Failed") && out.contains(&c2), "{out}");
    assert_eq!(
        generation(&hub, NAME).await,
        Some(2),
        "generation 3 was never made"
    );
    assert_eq!(fleet.received(NAME, 3), 0);
    assert_eq!(
        fleet.running(NAME, 2),
        DEVICES,
        "the previous commit stays in force"
    );

    // The next good commit applies; with prune, a file removed from Git
    // removes its deployment.
    let c4 = repo.commit(
        &[
            ("deployments/team/broken.yaml", None),
            ("deployments/other.yaml", None),
        ],
        "fix",
        &[],
    );
    assert_eq!(webhook(&hub, secret, &c4).await, 202);
    let s = applied(&hub, &c4).await;
    assert_eq!(s.deployments, [NAME]);
    fleet
        .wait_running(NAME, 3, T)
        .await
        .expect("generation 3 everywhere");
    assert_eq!(generation(&hub, "other").await, None, "pruned");

    // A force-pushed branch is followed.
    git::run(&repo.work, &["reset", "-q", "--hard", &c2]);
    repo.push(true);
    assert_eq!(webhook(&hub, secret, &c2).await, 202);
    applied(&hub, &c2).await;
    fleet
        .wait_running(NAME, 4, T)
        .await
        .expect("the force-pushed commit everywhere");
    let d = hub.client().deployment(NAME).await.unwrap();
    assert_eq!(d.source.unwrap().commit, c2);

    // Deleting the source lets its deployments go: the API may change them.
    let (code, ..) = edgectl(&hub, &["delete", "source", SOURCE]).await;
    assert_eq!(code, 0);
    let (status, _) = hub
        .put_deployment(NAME, &sim_deployment(NAME, "by-hand", None))
        .await;
    assert_eq!(status, 200);
    drop(server);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_reported_backed_off_and_recovered_from() {
    if !have_git() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::create(dir.path(), "fleet");
    let mut server = GitServer::start(dir.path(), None, None).await;
    std::fs::write(dir.path().join("webhook-secret"), "x").unwrap();
    let c1 = commit_sim(&repo, "1", "first", &[]);
    let hub = Hub::start().await;
    let yaml = source_yaml(&server.url("fleet"), dir.path(), "1s", "");
    apply_file(&hub, dir.path(), &yaml).await;
    applied(&hub, &c1).await;

    // Stopped: the error is reported, the waits grow, deployments stay.
    server.stop().await;
    let s = eventually("three failed fetches in a row", T, || async {
        let s = source(&hub).await;
        (s.failures >= 3).then_some(s)
    })
    .await;
    let f = s.failure.clone().unwrap();
    assert_eq!(f.stage, "fetch");
    eprintln!("while the server is down: {}", f.message);
    assert!(f.commit.is_none());
    assert_eq!(s.applied_commit.as_deref(), Some(c1.as_str()));
    // Backoff: after n failures the next try is 2^n s away, not the 1s
    // interval.
    let wait = s.next_fetch_ms.unwrap().saturating_sub(f.at_ms);
    assert!(
        wait >= 4_000,
        "next fetch {wait} ms after the failure: {s:?}"
    );
    let (code, out, _) = edgectl(&hub, &["describe", "source", SOURCE]).await;
    assert_eq!(code, 0);
    assert!(out.contains("Failed:") && out.contains("fetch"), "{out}");
    assert_eq!(generation(&hub, NAME).await, Some(1));
    assert!(
        hub.metric("edgefleet_hub_source_syncs_total{outcome=\"fetch_failed\"}")
            .await
            >= 3.0
    );

    // Back: a new commit is found without anyone asking.
    let c2 = commit_sim(&repo, "2", "second", &[]);
    server.start_again().await;
    let s = eventually("recovered by itself", Duration::from_secs(90), || async {
        let s = source(&hub).await;
        (s.applied_commit.as_deref() == Some(c2.as_str()) && s.failure.is_none()).then_some(s)
    })
    .await;
    assert_eq!(s.failures, 0);
    assert_eq!(generation(&hub, NAME).await, Some(2));
}

/// An ed25519 key made by ssh-keygen: (private key path, public key line).
fn ssh_key(dir: &Path, name: &str) -> (String, String) {
    let key = dir.join(name);
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key.to_str().unwrap().to_owned(), public.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_commits_signed_by_an_allowed_key_apply() {
    if !have_git() {
        return;
    }
    if std::process::Command::new("ssh-keygen")
        .arg("-?")
        .output()
        .is_err()
    {
        return edgefleet_tests::skip("git", "ssh-keygen (openssh-client) is not installed");
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::create(dir.path(), "fleet");
    std::fs::write(dir.path().join("webhook-secret"), "x").unwrap();
    let (alice, alice_pub) = ssh_key(dir.path(), "alice");
    let (mallory, _) = ssh_key(dir.path(), "mallory");
    let signers = dir.path().join("allowed_signers");
    std::fs::write(
        &signers,
        format!("# who may change the fleet\nalice@example.com namespaces=\"git\" {alice_pub}\n"),
    )
    .unwrap();
    let signed_by = |key: &str| {
        vec![
            "-c".to_owned(),
            "gpg.format=ssh".to_owned(),
            "-c".to_owned(),
            format!("user.signingkey={key}"),
            "-c".to_owned(),
            "commit.gpgsign=true".to_owned(),
        ]
    };

    let hub = Hub::start().await;
    // file://: the hub runs `git upload-pack` on the path.
    let url = format!("file://{}", repo.bare.display());
    let verify = format!("  verify: {{allowedSignersFile: {}}}\n", signers.display());

    // Unsigned: refused.
    let c1 = commit_sim(&repo, "1", "unsigned", &[]);
    apply_file(
        &hub,
        dir.path(),
        &source_yaml(&url, dir.path(), "1h", &verify),
    )
    .await;
    let s = failed_on(&hub, &c1).await;
    let fail = s.failure.unwrap();
    assert_eq!(fail.stage, "verify");
    assert!(fail.message.contains("not signed"), "{fail:?}");
    assert_eq!(generation(&hub, NAME).await, None);

    // Signed by a key not in the file: refused, with the key named.
    let args = signed_by(&mallory);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c2 = commit_sim(&repo, "2", "mallory", &args);
    let (code, out, err) = edgectl(&hub, &["reconcile", "source", SOURCE, "--wait"]).await;
    assert_eq!(code, 1, "{out}{err}");
    let s = failed_on(&hub, &c2).await;
    let fail = s.failure.unwrap();
    assert_eq!(fail.stage, "verify");
    assert!(
        fail.message.contains("not in allowedSignersFile"),
        "{fail:?}"
    );
    assert!(fail.message.contains("SHA256:"), "{fail:?}");
    assert_eq!(s.refused_commits, 2);
    assert_eq!(generation(&hub, NAME).await, None);
    assert!(out.contains("not in allowedSignersFile"), "{out}");

    // Signed by alice: applies.
    let args = signed_by(&alice);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c3 = commit_sim(&repo, "3", "alice", &args);
    let (code, out, err) = edgectl(&hub, &["reconcile", "source", SOURCE, "--wait"]).await;
    assert_eq!(code, 0, "{out}{err}");
    applied(&hub, &c3).await;
    assert_eq!(generation(&hub, NAME).await, Some(1));
    assert_eq!(
        hub.metric("edgefleet_hub_source_syncs_total{outcome=\"unverified\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_semver_ranges_and_pinned_commits_are_followed() {
    if !have_git() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::create(dir.path(), "fleet");
    std::fs::write(dir.path().join("webhook-secret"), "x").unwrap();
    let mut commits = Vec::new();
    for (value, tag, annotated) in [
        ("1", "v1.0.0", true),
        ("2", "v1.1.0", false),
        ("3", "v2.0.0", true),
    ] {
        let c = commit_sim(&repo, value, value, &[]);
        let mut args = vec!["tag"];
        if annotated {
            args.extend(["-a", "-m", tag]);
        }
        args.push(tag);
        git::run(&repo.work, &args);
        commits.push(c);
    }
    git::run(&repo.work, &["push", "-q", "origin", "--tags"]);
    let hub = Hub::start().await;
    let url = format!("file://{}", repo.bare.display());
    let apply = |reference: &str| {
        source_yaml(&url, dir.path(), "1h", "")
            .replace("ref: {branch: main}", &format!("ref: {reference}"))
    };
    // The newest tag in the range (an annotated v2.0.0 is outside it).
    apply_file(&hub, dir.path(), &apply("{semver: '>=1.0, <2'}")).await;
    applied(&hub, &commits[1]).await;
    // A new tag in range is found by the next fetch.
    let c4 = commit_sim(&repo, "4", "4", &[]);
    git::run(&repo.work, &["tag", "v1.2.0"]);
    git::run(&repo.work, &["push", "-q", "origin", "v1.2.0"]);
    let (code, ..) = edgectl(&hub, &["reconcile", "source", SOURCE, "--wait"]).await;
    assert_eq!(code, 0);
    applied(&hub, &c4).await;
    // An annotated tag, peeled to its commit.
    apply_file(&hub, dir.path(), &apply("{tag: v1.0.0}")).await;
    applied(&hub, &commits[0]).await;
    // A pinned commit.
    apply_file(
        &hub,
        dir.path(),
        &apply(&format!("{{commit: {}}}", commits[2])),
    )
    .await;
    let s = applied(&hub, &commits[2]).await;
    assert_eq!(s.ref_text(), format!("commit {}", &commits[2][..7]));
    // A tag that does not exist: reported, the commit in force stays.
    apply_file(&hub, dir.path(), &apply("{tag: v9.9.9}")).await;
    let s = eventually("the missing tag reported", T, || async {
        let s = source(&hub).await;
        s.failure.clone().map(|f| (s, f))
    })
    .await;
    assert_eq!(s.1.stage, "fetch");
    assert!(s.1.message.contains("v9.9.9"), "{:?}", s.1);
    assert_eq!(s.0.applied_commit.as_deref(), Some(commits[2].as_str()));

    // Every shallow fetch adds a pack to the hub's cache; past 16 it is
    // fetched afresh, and no fetch fails for it.
    apply_file(&hub, dir.path(), &apply("{branch: main}")).await;
    applied(&hub, &c4).await;
    for i in 0..20 {
        let c = commit_sim(&repo, &format!("many-{i}"), "many", &[]);
        let (code, out, err) = edgectl(&hub, &["reconcile", "source", SOURCE, "--wait"]).await;
        assert_eq!(code, 0, "fetch {i}: {out}{err}");
        applied(&hub, &c).await;
    }
    let packs = std::fs::read_dir(hub.data_dir().join("sources/fleet-config.git/objects/pack"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .count();
    assert!(packs <= 17, "{packs} packs in the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_remote_needs_the_key_and_the_known_host_key() {
    if !have_git() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::create(dir.path(), "fleet");
    std::fs::write(dir.path().join("webhook-secret"), "x").unwrap();
    let (key, key_pub) = ssh_key(dir.path(), "hub");
    let sshd = match git::Sshd::start(dir.path(), &key_pub) {
        Ok(s) => s,
        Err(why) => return edgefleet_tests::skip("git", &why),
    };
    let c1 = commit_sim(&repo, "1", "first", &[]);
    let hosts = dir.path().join("known_hosts");
    std::fs::write(&hosts, format!("{}\n", sshd.known_hosts)).unwrap();
    let auth = |hosts: &Path| {
        format!(
            "  auth: {{sshKeyFile: {key}, knownHostsFile: {}}}\n",
            hosts.display()
        )
    };
    let hub = Hub::start().await;
    let url = sshd.url(&repo.bare);
    apply_file(
        &hub,
        dir.path(),
        &source_yaml(&url, dir.path(), "1h", &auth(&hosts)),
    )
    .await;
    applied(&hub, &c1).await;
    assert_eq!(generation(&hub, NAME).await, Some(1));

    // A server whose host key is not the known one (a man in the middle,
    // or a server that lies about who it is) is refused, nothing applied.
    let (_, other_pub) = ssh_key(dir.path(), "impostor");
    let wrong = dir.path().join("wrong_known_hosts");
    let mut parts = other_pub.split_whitespace();
    std::fs::write(
        &wrong,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.port,
            parts.next().unwrap(),
            parts.next().unwrap()
        ),
    )
    .unwrap();
    let c2 = commit_sim(&repo, "2", "second", &[]);
    apply_file(
        &hub,
        dir.path(),
        &source_yaml(&url, dir.path(), "1h", &auth(&wrong)),
    )
    .await;
    let s = eventually("the unknown host key refused", T, || async {
        let s = source(&hub).await;
        s.failure.clone().map(|f| (s, f))
    })
    .await;
    eprintln!("wrong host key: {}", s.1.message);
    assert_eq!(s.1.stage, "fetch");
    assert!(s.1.message.contains("knownHostsFile"), "{:?}", s.1);
    assert_eq!(s.0.applied_commit.as_deref(), Some(c1.as_str()));
    assert_eq!(generation(&hub, NAME).await, Some(1));

    // The right one again: the new commit applies.
    apply_file(
        &hub,
        dir.path(),
        &source_yaml(&url, dir.path(), "1h", &auth(&hosts)),
    )
    .await;
    applied(&hub, &c2).await;
    assert_eq!(generation(&hub, NAME).await, Some(2));
}

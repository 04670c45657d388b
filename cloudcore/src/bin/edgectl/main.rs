//! `edgectl`, the operator CLI: a client of the hub's REST API
//! ([`edgefleet_api`]) with kubectl-like tables and `-o json|yaml`. It links
//! the API's types and client, never the hub itself.
//!
//! Exit codes: 0 success, 1 the hub refused the request, 2 usage (clap),
//! 3 the hub is unreachable, 4 the token is missing or wrong.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use edgefleet_api::{
    BulkCommandRequest, Client, ClientError, CommandRequest, CommandState, DevicePatch, text,
};
use edgefleet_protocol::CommandAction;
use serde_json::Value;

const EXIT_API: i32 = 1;
const EXIT_UNREACHABLE: i32 = 3;
const EXIT_UNAUTHORIZED: i32 = 4;

/// Token file of a hub started with default settings in this directory.
const LOCAL_TOKEN_FILE: &str = "cloudcore-data/operator-token";

#[derive(Debug, Parser)]
#[command(name = "edgectl", version, about = "Operate an edgefleet hub")]
struct Cli {
    /// Hub REST API URL.
    #[arg(
        long,
        global = true,
        env = "EDGECTL_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Operator token (default: ./cloudcore-data/operator-token if present).
    /// URL-safe base64, so it may start with `-`.
    #[arg(
        long,
        global = true,
        env = "EDGECTL_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    token: Option<String>,
    /// CA bundle (PEM) an https:// hub's certificate must chain to
    /// (default: the system's roots).
    #[arg(long, global = true, env = "EDGECTL_CERTIFICATE_AUTHORITY")]
    certificate_authority: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List devices, deployments or models.
    Get {
        resource: Resource,
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// Show one object in detail.
    Describe { resource: Single, name: String },
    /// Create or update deployments and Git sources (`kind: GitRepo`) from
    /// a YAML file (`-` for stdin).
    Apply {
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Delete a deployment, device or Git source.
    Delete { resource: Deletable, name: String },
    /// Fetch a Git source now (`reconcile source NAME`) instead of at its
    /// next interval.
    Reconcile {
        resource: Reconcilable,
        name: String,
        /// Wait until the source has fetched, then print where it is
        /// (exit 1 if that commit could not be applied).
        #[arg(long)]
        wait: bool,
    },
    /// Set (`k=v`) or remove (`k-`) labels on a device.
    Label {
        resource: Labelable,
        id: String,
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Recent events a device sent (inference results, app telemetry).
    Events {
        device: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// Model registry.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Agent releases, for self-update (a workload of kind `agent` names
    /// the version).
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// A deployment's rollouts.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Re-run a device's reconciler now (every workload, retries included)
    /// and send a status report: `resync device ID` or `resync device -l SELECTOR`.
    Resync {
        resource: Labelable,
        /// The device (omit with -l).
        id: Option<String>,
        #[command(flatten)]
        send: SendOpts,
    },
    /// Restart one workload on a device (`<deployment>.<workload>`):
    /// `restart device ID WORKLOAD` or `restart device -l SELECTOR WORKLOAD`.
    Restart {
        resource: Labelable,
        /// ID WORKLOAD, or WORKLOAD alone with -l.
        #[arg(required = true, num_args = 1..=2)]
        args: Vec<String>,
        #[command(flatten)]
        send: SendOpts,
    },
    /// A workload's recent logs, read on the device (which must be online)
    /// and streamed here. WORKLOAD is `<deployment>.<workload>`.
    Logs {
        device: String,
        workload: String,
        /// One container of the workload's pods (default: all).
        #[arg(short, long)]
        container: Option<String>,
        /// The last N lines of each container.
        #[arg(long)]
        tail: Option<u32>,
        /// Only lines newer than this (10m, 1h).
        #[arg(long)]
        since: Option<edgefleet_protocol::Duration>,
        /// At most this many bytes (default 1 MiB, at most 4 MiB).
        #[arg(long)]
        limit_bytes: Option<u32>,
    },
    /// A device's commands, newest first, or one of them.
    Commands {
        device: String,
        id: Option<String>,
        #[arg(short, long)]
        output: Option<Output>,
    },
}

/// How a command is sent.
#[derive(Debug, clap::Args)]
struct SendOpts {
    /// Every device matching this label selector (kubectl syntax:
    /// `site=plant-3,arch in (arm64)`).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// How long the command may wait for an offline device (at most 24h).
    #[arg(long, default_value = "10m")]
    expires_in: edgefleet_protocol::Duration,
    /// Wait until each command is done, failed or expired; exit 1 unless
    /// all are done.
    #[arg(short, long)]
    wait: bool,
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Where a deployment's staged rollout is: state, each wave's devices,
    /// why it stopped. Exits 1 when the rollout rolled back or was aborted.
    Status {
        name: String,
        /// Print again at each change until the rollout ends.
        #[arg(short, long)]
        watch: bool,
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// The generations of a deployment the hub keeps, newest first.
    History {
        name: String,
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// Hold the rollout at its current wave.
    Pause { name: String },
    /// Go on (after a failed wave with onFailure: pause, accepting it).
    Resume { name: String },
    /// Stop the rollout; every device goes back to the last good generation.
    Abort { name: String },
    /// A new generation with an earlier one's spec, to every device at once.
    Undo {
        name: String,
        /// The generation to go back to (default: the last good one).
        #[arg(long)]
        to_generation: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Resource {
    #[value(alias = "device")]
    Devices,
    #[value(alias = "deployment")]
    Deployments,
    #[value(alias = "model")]
    Models,
    #[value(alias = "source")]
    Sources,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Single {
    Device,
    Deployment,
    Source,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Deletable {
    Deployment,
    Device,
    Source,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Reconcilable {
    Source,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Labelable {
    Device,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Upload an ONNX model (content-addressed by SHA-256).
    Push {
        file: PathBuf,
        /// Model name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AgentsCommand {
    /// Upload an edge-agent binary as a release (content-addressed by
    /// SHA-256; a version and arch name one binary for good).
    Push {
        file: PathBuf,
        /// The release's version, as a workload of kind `agent` names it.
        #[arg(long)]
        version: String,
        /// amd64, arm64 or armhf (x86_64, aarch64 and armv7 are accepted).
        #[arg(long)]
        arch: String,
    },
    /// List the releases.
    List {
        #[arg(short, long)]
        output: Option<Output>,
    },
}

/// A failure with its exit code and a message for the user.
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
}

fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// The innermost cause: what `reqwest` says about a refused connection.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

/// Sorts a client error into edgectl's exit codes, with a hint.
fn failure(e: ClientError, has_token: bool) -> Failure {
    match &e {
        ClientError::Unreachable { server, .. } => fail(
            EXIT_UNREACHABLE,
            format!(
                "cannot reach the hub at {server}: {}\n(is `cloudcore serve` running? set --server or EDGECTL_SERVER)",
                root_cause(&e)
            ),
        ),
        ClientError::Unauthorized { message } => {
            let hint = if has_token {
                "check --token / EDGECTL_TOKEN against the hub's operator token"
            } else {
                "no token given: use --token, EDGECTL_TOKEN, or run edgectl where ./cloudcore-data/operator-token exists"
            };
            fail(
                EXIT_UNAUTHORIZED,
                format!("unauthorized: {message}\n({hint})"),
            )
        }
        ClientError::Api { .. } => fail(EXIT_API, format!("error: {e}")),
        ClientError::Ca { .. } => fail(EXIT_API, format!("error: {e}")),
        ClientError::Decode { .. } | ClientError::Build(_) => fail(
            EXIT_API,
            format!("error: {}", edgefleet_daemon::error_chain(&e)),
        ),
    }
}

fn print_structured<T: serde::Serialize + ?Sized>(v: &T, o: Output) -> Result<(), Failure> {
    let text = match o {
        Output::Yaml => serde_yaml::to_string(v).map_err(|e| fail(EXIT_API, e.to_string()))?,
        _ => serde_json::to_string_pretty(v).map_err(|e| fail(EXIT_API, e.to_string()))? + "\n",
    };
    print!("{text}");
    Ok(())
}

/// `value` as JSON or YAML when asked, else as the text `table` makes.
fn print_as<T: serde::Serialize + ?Sized>(
    value: &T,
    output: Option<Output>,
    table: fn(&T) -> String,
) -> Result<(), Failure> {
    match output {
        Some(o @ (Output::Json | Output::Yaml)) => print_structured(value, o),
        _ => {
            print!("{}", table(value));
            Ok(())
        }
    }
}

fn read_input(file: &Path) -> Result<String, Failure> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| fail(EXIT_API, format!("cannot read stdin: {e}")))?;
        Ok(s)
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| fail(EXIT_API, format!("cannot read {}: {e}", file.display())))
    }
}

/// Splits a multi-document YAML stream and returns each document's name
/// and the document as JSON.
fn split_documents(text: &str) -> Result<Vec<(String, String, String)>, Failure> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| fail(EXIT_API, format!("document {}: not valid YAML: {e}", i + 1)))?;
        if v.is_null() {
            continue;
        }
        let name = v
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| {
                fail(
                    EXIT_API,
                    format!("document {}: metadata.name is required", i + 1),
                )
            })?
            .to_owned();
        // The hub says what is wrong with any other kind.
        let kind = v
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let json = serde_json::to_string(&v).map_err(|e| fail(EXIT_API, e.to_string()))?;
        out.push((kind, name, json));
    }
    if out.is_empty() {
        return Err(fail(EXIT_API, "no documents in the input"));
    }
    Ok(out)
}

/// `k=v` sets a label, `k-` removes it.
fn label_patch(labels: &[String]) -> Result<DevicePatch, Failure> {
    let mut patch = DevicePatch::default();
    for l in labels {
        if let Some(k) = l.strip_suffix('-') {
            patch.labels.insert(k.to_owned(), None);
        } else if let Some((k, v)) = l.split_once('=') {
            patch.labels.insert(k.to_owned(), Some(v.to_owned()));
        } else {
            return Err(fail(
                EXIT_API,
                format!("label {l:?}: use key=value to set or key- to remove"),
            ));
        }
    }
    Ok(patch)
}

/// `file.onnx` → `file`; lower case, `_`, `.` and spaces as `-`.
fn model_name(file: &Path) -> String {
    file.file_stem()
        .map(|s| {
            s.to_string_lossy()
                .to_lowercase()
                .replace(['_', '.', ' '], "-")
        })
        .unwrap_or_default()
}

/// Runs one command; prints results on stdout.
async fn run(cli: Cli) -> Result<(), Failure> {
    let token = cli.token.clone().or_else(|| {
        std::fs::read_to_string(LOCAL_TOKEN_FILE)
            .ok()
            .map(|t| t.trim().to_owned())
    });
    let has_token = token.is_some();
    let client = Client::trusting(&cli.server, token, cli.certificate_authority.as_deref())
        .map_err(|e| failure(e, has_token))?;
    let err = |e| failure(e, has_token);
    match cli.command {
        Command::Get { resource, output } => {
            let path = match resource {
                Resource::Devices => "/devices",
                Resource::Deployments => "/deployments",
                Resource::Models => "/models",
                Resource::Sources => "/sources",
            };
            match output {
                // Exactly what the hub sent, fields this edgectl does not
                // know included.
                Some(o @ (Output::Json | Output::Yaml)) => {
                    let items: Vec<Value> = client.list_all(path).await.map_err(err)?;
                    print_structured(&items, o)?;
                }
                o => {
                    let wide = o == Some(Output::Wide);
                    let table = match resource {
                        Resource::Devices => {
                            text::devices(&client.devices().await.map_err(err)?, wide)
                        }
                        Resource::Deployments => {
                            text::deployments(&client.deployments().await.map_err(err)?, wide)
                        }
                        Resource::Models => {
                            text::models(&client.models().await.map_err(err)?, wide)
                        }
                        Resource::Sources => {
                            text::sources(&client.sources().await.map_err(err)?, wide)
                        }
                    };
                    print!("{table}");
                }
            }
        }
        Command::Describe { resource, name } => match resource {
            Single::Device => {
                print!(
                    "{}",
                    text::describe_device(&client.device(&name).await.map_err(err)?)
                );
            }
            Single::Deployment => {
                let d = client.deployment_status(&name).await.map_err(err)?;
                print!("{}", text::describe_deployment(&d));
            }
            Single::Source => {
                let s = client.source(&name).await.map_err(err)?;
                print!("{}", text::describe_source(&s));
            }
        },
        Command::Apply { file } => {
            for (kind, name, json) in split_documents(&read_input(&file)?)? {
                if kind == edgefleet_api::SOURCE_KIND {
                    let (_, created) = client.apply_source(&name, &json).await.map_err(err)?;
                    let result = if created { "created" } else { "configured" };
                    println!("gitrepo/{name} {result}");
                } else {
                    let applied = client.apply(&name, &json).await.map_err(err)?;
                    println!("deployment/{name} {}", applied.result.as_str());
                }
            }
        }
        Command::Reconcile {
            resource: Reconcilable::Source,
            name,
            wait,
        } => {
            let before = client.source(&name).await.map_err(err)?;
            client.reconcile_source(&name).await.map_err(err)?;
            if !wait {
                println!("gitrepo/{name} fetching");
                return Ok(());
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
            loop {
                let s = client.source(&name).await.map_err(err)?;
                let fetched = s.last_fetch_ms != before.last_fetch_ms
                    || s.applied_ms != before.applied_ms
                    || s.failure.as_ref().map(|f| f.at_ms)
                        != before.failure.as_ref().map(|f| f.at_ms);
                if fetched {
                    print!("{}", text::describe_source(&s));
                    if s.failure.is_some() {
                        return Err(fail(EXIT_API, format!("gitrepo/{name}: not applied")));
                    }
                    return Ok(());
                }
                if std::time::Instant::now() > deadline {
                    return Err(fail(
                        EXIT_API,
                        format!("gitrepo/{name}: no fetch within 180s"),
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        Command::Delete { resource, name } => {
            let kind = match resource {
                Deletable::Deployment => {
                    client.delete_deployment(&name).await.map_err(err)?;
                    "deployment"
                }
                Deletable::Device => {
                    client.delete_device(&name).await.map_err(err)?;
                    "device"
                }
                Deletable::Source => {
                    client.delete_source(&name).await.map_err(err)?;
                    "gitrepo"
                }
            };
            println!("{kind}/{name} deleted");
        }
        Command::Label {
            resource: Labelable::Device,
            id,
            labels,
        } => {
            client
                .patch_device(&id, &label_patch(&labels)?)
                .await
                .map_err(err)?;
            println!("device/{id} labeled");
        }
        Command::Events {
            device,
            limit,
            output,
        } => {
            // Walk to the newest page, keeping the last `limit` events.
            let mut all = Vec::new();
            let mut after = 0;
            loop {
                let page = client.events(&device, after, 1000).await.map_err(err)?;
                all.extend(page.items);
                let excess = all.len().saturating_sub(limit);
                all.drain(..excess);
                match page.continue_token.and_then(|c| c.parse().ok()) {
                    Some(next) => after = next,
                    None => break,
                }
            }
            print_as(all.as_slice(), output, text::events)?;
        }
        Command::Rollout { command } => rollout(&client, command).await?,
        Command::Resync { id, send, .. } => {
            let target = target(id, &send)?;
            send_command(&client, target, CommandAction::Resync, &send).await?;
        }
        Command::Restart { mut args, send, .. } => {
            let name = args.pop().unwrap_or_default();
            let target = target(args.pop(), &send)?;
            if !args.is_empty() {
                return Err(fail(
                    2,
                    "edgectl: restart takes DEVICE WORKLOAD, or WORKLOAD with -l",
                ));
            }
            send_command(
                &client,
                target,
                CommandAction::RestartWorkload { name },
                &send,
            )
            .await?;
        }
        Command::Logs {
            device,
            workload,
            container,
            tail,
            since,
            limit_bytes,
        } => {
            let mut query = Vec::new();
            if let Some(c) = container {
                query.push(("container", c));
            }
            if let Some(t) = tail {
                query.push(("tail", t.to_string()));
            }
            if let Some(s) = since {
                query.push(("since", s.to_string()));
            }
            if let Some(l) = limit_bytes {
                query.push(("limitBytes", l.to_string()));
            }
            let mut resp = client.logs(&device, &workload, &query).await.map_err(err)?;
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            loop {
                match resp.chunk().await {
                    Ok(Some(bytes)) => {
                        if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                            // A reader that hung up (| head) is done.
                            return Ok(());
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return Err(fail(
                            EXIT_UNREACHABLE,
                            format!("edgectl: the logs stream broke: {e}"),
                        ));
                    }
                }
            }
        }
        Command::Commands { device, id, output } => match id {
            Some(id) => {
                let c = client.command(&device, &id).await.map_err(err)?;
                print_as(std::slice::from_ref(&c), output, text::commands)?;
            }
            None => {
                let items = client.commands(&device).await.map_err(err)?;
                print_as(items.as_slice(), output, text::commands)?;
            }
        },
        Command::Models {
            command: ModelsCommand::Push { file, name },
        } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| fail(EXIT_API, format!("cannot read {}: {e}", file.display())))?;
            let name = name.unwrap_or_else(|| model_name(&file));
            let rec = client.push_model(&name, bytes).await.map_err(err)?;
            println!(
                "model/{name} pushed: sha256 {} ({} bytes)",
                rec.sha256, rec.size
            );
        }
        Command::Agents {
            command:
                AgentsCommand::Push {
                    file,
                    version,
                    arch,
                },
        } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| fail(EXIT_API, format!("cannot read {}: {e}", file.display())))?;
            let rec = client
                .push_agent_release(&version, &arch, bytes)
                .await
                .map_err(err)?;
            println!(
                "agent {} ({}) pushed: sha256 {} ({} bytes)",
                rec.version, rec.arch, rec.sha256, rec.size
            );
        }
        Command::Agents {
            command: AgentsCommand::List { output },
        } => {
            let items = client.agent_releases().await.map_err(err)?;
            if matches!(output, Some(Output::Wide)) {
                print!("{}", text::agent_releases(&items, true));
            } else {
                print_as(items.as_slice(), output, |i| text::agent_releases(i, false))?;
            }
        }
    }
    Ok(())
}

async fn rollout(client: &Client, command: RolloutCommand) -> Result<(), Failure> {
    let err = |e| failure(e, client.has_token());
    match command {
        RolloutCommand::Status {
            name,
            watch,
            output,
        } => {
            let mut last: Option<edgefleet_api::RolloutStatus> = None;
            loop {
                let r = client.rollout(&name).await.map_err(err)?;
                // Printed again only when something but the clock moved.
                let changed = last.as_ref().is_none_or(|l| {
                    (&l.state, &l.waves, &l.current_wave, &l.reason)
                        != (&r.state, &r.waves, &r.current_wave, &r.reason)
                });
                if changed {
                    print_as(&r, output, text::rollout)?;
                    if watch {
                        println!();
                    }
                }
                let ended = !r.state.is_active();
                if !watch || ended {
                    if r.state.is_failure() {
                        return Err(fail(
                            1,
                            format!("edgectl: rollout of {name} {}", r.state.as_str()),
                        ));
                    }
                    return Ok(());
                }
                last = Some(r);
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        RolloutCommand::History { name, output } => {
            let items = client.deployment_history(&name).await.map_err(err)?;
            print_as(items.as_slice(), output, text::history)?;
        }
        RolloutCommand::Pause { name } => act(client, &name, "pause", "paused").await?,
        RolloutCommand::Resume { name } => act(client, &name, "resume", "resumed").await?,
        RolloutCommand::Abort { name } => act(client, &name, "abort", "aborted").await?,
        RolloutCommand::Undo {
            name,
            to_generation,
        } => {
            let r = client.rollback(&name, to_generation).await.map_err(err)?;
            println!(
                "deployment/{name} rolled back: generation {} to every device",
                r.generation
            );
        }
    }
    Ok(())
}

/// One device, or the devices a selector matches.
enum Target {
    Device(String),
    Selector(edgefleet_protocol::LabelSelector),
}

fn target(id: Option<String>, send: &SendOpts) -> Result<Target, Failure> {
    match (id, &send.selector) {
        (Some(id), None) => Ok(Target::Device(id)),
        (None, Some(sel)) => sel
            .parse()
            .map(Target::Selector)
            .map_err(|e| fail(2, format!("edgectl: -l: {e}"))),
        _ => Err(fail(
            2,
            "edgectl: name one device, or a selector with -l (not both)",
        )),
    }
}

/// Sends `action` to the target and prints each command; with `--wait`,
/// waits for each to finish and fails unless all are done.
async fn send_command(
    client: &Client,
    target: Target,
    action: CommandAction,
    send: &SendOpts,
) -> Result<(), Failure> {
    let err = |e| failure(e, client.has_token());
    let expires_in = Some(send.expires_in);
    let items = match target {
        Target::Device(id) => vec![
            client
                .send_command(&id, &CommandRequest { action, expires_in })
                .await
                .map_err(err)?,
        ],
        Target::Selector(selector) => {
            let r = client
                .send_bulk_command(&BulkCommandRequest {
                    selector,
                    action,
                    expires_in,
                })
                .await
                .map_err(err)?;
            for d in &r.skipped {
                eprintln!("device/{d}: skipped, it has too many open commands");
            }
            if r.items.is_empty() && r.skipped.is_empty() {
                eprintln!("no device matches the selector");
            }
            r.items
        }
    };
    if !send.wait {
        for c in &items {
            println!(
                "command/{} to device/{}: {} ({})",
                c.id,
                c.device_id,
                c.state.as_str(),
                text::command_action(&c.action)
            );
        }
        return Ok(());
    }
    let mut failed = 0;
    for c in items {
        let mut c = c;
        while !c.state.is_final() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            c = client.command(&c.device_id, &c.id).await.map_err(err)?;
        }
        if c.state != CommandState::Done {
            failed += 1;
        }
        println!(
            "command/{} to device/{}: {}{}",
            c.id,
            c.device_id,
            c.state.as_str(),
            c.message.map(|m| format!(": {m}")).unwrap_or_default()
        );
    }
    if failed > 0 {
        return Err(fail(
            EXIT_API,
            format!("edgectl: {failed} command(s) not done"),
        ));
    }
    Ok(())
}

/// Pause, resume or abort, and say what the rollout is now.
async fn act(client: &Client, name: &str, action: &str, done: &str) -> Result<(), Failure> {
    let r = client
        .rollout_action(name, action)
        .await
        .map_err(|e| failure(e, client.has_token()))?;
    println!("deployment/{name} rollout {done}: now {}", r.state.as_str());
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgectl: cannot start: {e}");
            std::process::exit(EXIT_API);
        }
    };
    if let Err(f) = rt.block_on(run(cli)) {
        eprintln!("{}", f.message);
        std::process::exit(f.code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_is_split_by_name() {
        let docs = split_documents("metadata: {name: a}\n---\n---\nmetadata: {name: b}\n").unwrap();
        let names: Vec<_> = docs.iter().map(|(_, n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let docs = split_documents("kind: GitRepo\nmetadata: {name: s}\n").unwrap();
        assert_eq!(docs[0].0, "GitRepo");
        assert!(split_documents("kind: X\n").is_err());
        assert!(split_documents("").is_err());
    }

    #[test]
    fn labels_set_and_remove() {
        let p = label_patch(&["a=1".into(), "b-".into()]).unwrap();
        assert_eq!(p.labels["a"].as_deref(), Some("1"));
        assert_eq!(p.labels["b"], None);
        assert!(label_patch(&["nope".into()]).is_err());
        assert_eq!(
            model_name(Path::new("/m/Vibration_v2.onnx")),
            "vibration-v2"
        );
    }
}

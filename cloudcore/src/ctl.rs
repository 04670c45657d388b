//! `edgectl`, the operator CLI: a thin client of the REST API with
//! kubectl-like tables and `-o json|yaml`.
//!
//! Exit codes: 0 success, 1 the hub refused the request, 2 usage (clap),
//! 3 the hub is unreachable, 4 the token is missing or wrong.

pub mod table;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const EXIT_API: i32 = 1;
pub const EXIT_UNREACHABLE: i32 = 3;
pub const EXIT_UNAUTHORIZED: i32 = 4;

/// Token file of a hub started with default settings in this directory.
pub const LOCAL_TOKEN_FILE: &str = "cloudcore-data/operator-token";

#[derive(Debug, Parser)]
#[command(name = "edgectl", version, about = "Operate an edgefleet hub")]
pub struct Cli {
    /// Hub REST API URL.
    #[arg(
        long,
        global = true,
        env = "EDGECTL_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// Operator token (default: ./cloudcore-data/operator-token if present).
    /// URL-safe base64, so it may start with `-`.
    #[arg(
        long,
        global = true,
        env = "EDGECTL_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List devices, deployments or models.
    Get {
        resource: Resource,
        #[arg(short, long)]
        output: Option<Output>,
    },
    /// Show one object in detail.
    Describe { resource: Single, name: String },
    /// Create or update deployments from a YAML file (`-` for stdin).
    Apply {
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Delete a deployment.
    Delete { resource: Deletable, name: String },
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
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Resource {
    #[value(alias = "device")]
    Devices,
    #[value(alias = "deployment")]
    Deployments,
    #[value(alias = "model")]
    Models,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Single {
    Device,
    Deployment,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Deletable {
    Deployment,
    Device,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Labelable {
    Device,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Upload an ONNX model (content-addressed by SHA-256).
    Push {
        file: PathBuf,
        /// Model name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
    },
}

/// A failure with its exit code and a message for the user.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
}

impl Client {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(String, Vec<u8>)>,
    ) -> Result<Value, Failure> {
        let url = format!("{}/api/v1{path}", self.server.trim_end_matches('/'));
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some((ct, b)) = body {
            req = req.header(reqwest::header::CONTENT_TYPE, ct).body(b);
        }
        let resp = req.send().await.map_err(|e| {
            fail(
                EXIT_UNREACHABLE,
                format!(
                    "cannot reach the hub at {}: {}\n(is `cloudcore serve` running? set --server or EDGECTL_SERVER)",
                    self.server,
                    root_cause(&e)
                ),
            )
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            if text.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| {
                fail(
                    EXIT_API,
                    format!("the hub sent a response that is not JSON: {e}"),
                )
            });
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or(text);
        if status == StatusCode::UNAUTHORIZED {
            let hint = if self.token.is_none() {
                "no token given: use --token, EDGECTL_TOKEN, or run edgectl where ./cloudcore-data/operator-token exists"
            } else {
                "check --token / EDGECTL_TOKEN against the hub's operator token"
            };
            return Err(fail(
                EXIT_UNAUTHORIZED,
                format!("unauthorized: {message}\n({hint})"),
            ));
        }
        Err(fail(
            EXIT_API,
            format!("error: {message} (HTTP {})", status.as_u16()),
        ))
    }

    /// Follows `continue` tokens and returns every item.
    async fn list_all(&self, path: &str) -> Result<Vec<Value>, Failure> {
        let mut items = Vec::new();
        let mut cont: Option<String> = None;
        loop {
            let p = match &cont {
                Some(c) => format!("{path}?continue={c}"),
                None => path.to_owned(),
            };
            let page = self.call(Method::GET, &p, None).await?;
            if let Some(a) = page.get("items").and_then(|i| i.as_array()) {
                items.extend(a.iter().cloned());
            }
            match page.get("continue").and_then(|c| c.as_str()) {
                Some(c) if !c.is_empty() => cont = Some(c.to_owned()),
                _ => return Ok(items),
            }
        }
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

fn print_structured(v: &Value, o: Output) -> Result<(), Failure> {
    let text = match o {
        Output::Yaml => serde_yaml::to_string(v).map_err(|e| fail(EXIT_API, e.to_string()))?,
        _ => serde_json::to_string_pretty(v).map_err(|e| fail(EXIT_API, e.to_string()))? + "\n",
    };
    print!("{text}");
    Ok(())
}

fn read_input(file: &PathBuf) -> Result<String, Failure> {
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

/// Splits a multi-document YAML stream and returns each document's name.
fn split_documents(text: &str) -> Result<Vec<(String, String)>, Failure> {
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
        let json = serde_json::to_string(&v).map_err(|e| fail(EXIT_API, e.to_string()))?;
        out.push((name, json));
    }
    if out.is_empty() {
        return Err(fail(EXIT_API, "no documents in the input"));
    }
    Ok(out)
}

/// Runs one command; prints results on stdout.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let token = cli.token.clone().or_else(|| {
        std::fs::read_to_string(LOCAL_TOKEN_FILE)
            .ok()
            .map(|t| t.trim().to_owned())
    });
    let client = Client {
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| fail(EXIT_API, format!("cannot build the HTTP client: {e}")))?,
        server: cli.server.clone(),
        token,
    };
    match cli.command {
        Command::Get { resource, output } => {
            let (path, render): (&str, table::Renderer) = match resource {
                Resource::Devices => ("/devices", table::devices),
                Resource::Deployments => ("/deployments", table::deployments),
                Resource::Models => ("/models", table::models),
            };
            let items = client.list_all(path).await?;
            match output {
                Some(o @ (Output::Json | Output::Yaml)) => {
                    print_structured(&Value::Array(items), o)?
                }
                o => print!("{}", render(&items, o == Some(Output::Wide))),
            }
        }
        Command::Describe { resource, name } => match resource {
            Single::Device => {
                let d = client
                    .call(Method::GET, &format!("/devices/{name}"), None)
                    .await?;
                print!("{}", table::describe_device(&d));
            }
            Single::Deployment => {
                let d = client
                    .call(Method::GET, &format!("/deployments/{name}/status"), None)
                    .await?;
                print!("{}", table::describe_deployment(&d));
            }
        },
        Command::Apply { file } => {
            for (name, json) in split_documents(&read_input(&file)?)? {
                let before = client
                    .call(Method::GET, &format!("/deployments/{name}"), None)
                    .await
                    .ok()
                    .and_then(|v| v.get("generation").and_then(|g| g.as_u64()));
                let rec = client
                    .call(
                        Method::PUT,
                        &format!("/deployments/{name}"),
                        Some(("application/json".into(), json.into_bytes())),
                    )
                    .await?;
                let after = rec.get("generation").and_then(|g| g.as_u64());
                let verb = match (before, after) {
                    (None, _) => "created",
                    (Some(b), Some(a)) if a > b => "configured",
                    _ => "unchanged",
                };
                println!("deployment/{name} {verb}");
            }
        }
        Command::Delete { resource, name } => {
            let (path, kind) = match resource {
                Deletable::Deployment => (format!("/deployments/{name}"), "deployment"),
                Deletable::Device => (format!("/devices/{name}"), "device"),
            };
            client.call(Method::DELETE, &path, None).await?;
            println!("{kind}/{name} deleted");
        }
        Command::Label {
            resource: Labelable::Device,
            id,
            labels,
        } => {
            let mut patch = serde_json::Map::new();
            for l in &labels {
                if let Some(k) = l.strip_suffix('-') {
                    patch.insert(k.to_owned(), Value::Null);
                } else if let Some((k, v)) = l.split_once('=') {
                    patch.insert(k.to_owned(), Value::String(v.to_owned()));
                } else {
                    return Err(fail(
                        EXIT_API,
                        format!("label {l:?}: use key=value to set or key- to remove"),
                    ));
                }
            }
            let body = serde_json::json!({ "labels": patch });
            client
                .call(
                    Method::PATCH,
                    &format!("/devices/{id}"),
                    Some(("application/json".into(), body.to_string().into_bytes())),
                )
                .await?;
            println!("device/{id} labeled");
        }
        Command::Events {
            device,
            limit,
            output,
        } => {
            // Walk to the newest page, keeping the last `limit` events.
            let mut all = Vec::new();
            let mut cont = String::new();
            loop {
                let page = client
                    .call(
                        Method::GET,
                        &format!("/devices/{device}/events?limit=1000&continue={cont}"),
                        None,
                    )
                    .await?;
                if let Some(a) = page.get("items").and_then(|i| i.as_array()) {
                    all.extend(a.iter().cloned());
                    let excess = all.len().saturating_sub(limit);
                    all.drain(..excess);
                }
                match page.get("continue").and_then(|c| c.as_str()) {
                    Some(c) if !c.is_empty() => cont = c.to_owned(),
                    _ => break,
                }
            }
            match output {
                Some(o @ (Output::Json | Output::Yaml)) => print_structured(&Value::Array(all), o)?,
                _ => print!("{}", table::events(&all)),
            }
        }
        Command::Models {
            command: ModelsCommand::Push { file, name },
        } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| fail(EXIT_API, format!("cannot read {}: {e}", file.display())))?;
            let name = name.unwrap_or_else(|| {
                file.file_stem()
                    .map(|s| {
                        s.to_string_lossy()
                            .to_lowercase()
                            .replace(['_', '.', ' '], "-")
                    })
                    .unwrap_or_default()
            });
            let rec = client
                .call(
                    Method::POST,
                    &format!("/models?name={name}"),
                    Some(("application/octet-stream".into(), bytes)),
                )
                .await?;
            println!(
                "model/{name} pushed: sha256 {} ({} bytes)",
                rec.get("sha256").and_then(|s| s.as_str()).unwrap_or("?"),
                rec.get("size").and_then(|s| s.as_u64()).unwrap_or(0)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_is_split_by_name() {
        let docs = split_documents("metadata: {name: a}\n---\n---\nmetadata: {name: b}\n").unwrap();
        let names: Vec<_> = docs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(split_documents("kind: X\n").is_err());
        assert!(split_documents("").is_err());
    }
}

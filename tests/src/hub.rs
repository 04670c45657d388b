//! The hub (`cloudcore serve`) as a real process, with a small REST client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgefleet_protocol::{EnrollRequest, EnrollResponse, Signer};
use serde_json::Value;
use tokio::process::Command;

use crate::process::{Proc, bin};

/// How to start a hub.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// `mqtt://…` of an external broker; `None`: the embedded one.
    pub external_broker: Option<String>,
    /// Reuse a data dir (a restart); `None`: a fresh temp dir.
    pub data_dir: Option<PathBuf>,
    /// Extra environment (e.g. `CLOUDCORE_LOG`).
    pub env: Vec<(String, String)>,
    /// Address the REST API and the embedded broker listen on (e.g. the
    /// host end of a veth pair); `None`: 127.0.0.1.
    pub listen_ip: Option<std::net::IpAddr>,
    /// The (REST API, broker) ports of another hub, e.g. one restored in
    /// its place on the same address; `None`: free ones.
    pub ports: Option<(u16, u16)>,
    /// HTTPS on the REST API with this certificate and key; the test's
    /// clients (and agents it enrolls) trust `ca`.
    pub api_tls: Option<ApiTls>,
}

impl HubOptions {
    /// A hub that logs warnings only: benchmarks' fleets of thousands would
    /// spend their time on per-device info lines.
    pub fn quiet() -> Self {
        Self {
            env: vec![("CLOUDCORE_LOG".into(), "warn".into())],
            ..Default::default()
        }
    }
}

/// The REST API's certificate, key, and the CA clients trust for it.
#[derive(Debug, Clone)]
pub struct ApiTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A running hub.
#[derive(Debug)]
pub struct Hub {
    pub proc: Proc,
    opts: HubOptions,
    _tmp: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    api_port: u16,
    broker_port: u16,
    api_url: String,
    http: reqwest::Client,
}

impl Hub {
    pub async fn start() -> Self {
        Self::start_with(HubOptions::default()).await
    }

    pub async fn start_with(opts: HubOptions) -> Self {
        crate::install_crypto();
        let (tmp, data_dir) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                let d = t.path().join("cloudcore-data");
                (Some(t), d)
            }
        };
        let mut hub = Self {
            proc: Proc::placeholder("cloudcore"),
            _tmp: tmp,
            data_dir,
            api_port: opts.ports.map_or(0, |p| p.0),
            broker_port: opts.ports.map_or_else(crate::free_port, |p| p.1),
            api_url: String::new(),
            http: http_client(opts.api_tls.as_ref()),
            opts,
        };
        hub.launch().await;
        hub
    }

    async fn launch(&mut self) {
        let mut cmd = Command::new(bin("cloudcore"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--api-listen")
            .arg(format!("{}:{}", self.listen_ip(), self.api_port))
            .arg("--broker-listen")
            .arg(format!("{}:{}", self.listen_ip(), self.broker_port))
            .env("CLOUDCORE_LOG", "info,rumqttd=warn");
        if let Some(url) = &self.opts.external_broker {
            cmd.arg("--broker-url").arg(url);
        }
        if let Some(t) = &self.opts.api_tls {
            cmd.env("CLOUDCORE_API_TLS_CERT", &t.cert)
                .env("CLOUDCORE_API_TLS_KEY", &t.key);
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        self.proc = Proc::spawn("cloudcore", cmd);
        let line = self
            .proc
            .wait_for_line("REST API on ", Duration::from_secs(20))
            .await;
        let url = crate::word_after(&line, "REST API on ");
        self.api_port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("api port");
        self.api_url = url;
        self.proc
            .wait_for_line("cloudcore: ready", Duration::from_secs(20))
            .await;
        crate::eventually("hub /readyz", Duration::from_secs(20), || async {
            let url = format!("{}/readyz", self.api_url);
            let status = crate::http_status(&self.http, &url).await?;
            status.is_success().then_some(())
        })
        .await;
    }

    fn listen_ip(&self) -> std::net::IpAddr {
        self.opts
            .listen_ip
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The broker devices use.
    pub fn broker_url(&self) -> String {
        self.opts
            .external_broker
            .clone()
            .unwrap_or_else(|| format!("mqtt://{}:{}", self.listen_ip(), self.broker_port))
    }

    /// The (REST API, broker) ports, to start another hub in this one's place.
    pub fn ports(&self) -> (u16, u16) {
        (self.api_port, self.broker_port)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn secret(&self, name: &str) -> String {
        std::fs::read_to_string(self.data_dir.join(name))
            .unwrap_or_else(|e| panic!("read {name}: {e}"))
            .trim()
            .to_owned()
    }

    pub fn operator_token(&self) -> String {
        self.secret("operator-token")
    }

    /// The typed REST client edgectl uses, as the operator.
    pub fn client(&self) -> edgefleet_api::Client {
        edgefleet_api::Client::trusting(&self.api_url, Some(self.operator_token()), self.api_ca())
            .expect("REST client")
    }

    /// The CA the REST API's certificate chains to, when it speaks HTTPS.
    pub fn api_ca(&self) -> Option<&Path> {
        self.opts.api_tls.as_ref().map(|t| t.ca.as_path())
    }

    pub fn bootstrap_token(&self) -> String {
        self.secret("bootstrap-token")
    }

    /// SIGKILL.
    pub async fn kill(&mut self) {
        self.proc.kill().await;
    }

    /// SIGTERM; returns the exit code.
    pub async fn stop(&mut self) -> Option<i32> {
        self.proc.terminate(Duration::from_secs(15)).await
    }

    /// Starts again on the same ports and data dir (after kill or stop).
    pub async fn restart(&mut self) {
        self.proc.kill().await;
        self.launch().await;
    }

    /// Any API call with the operator token; returns status and JSON body
    /// (`Value::Null` when empty or not JSON).
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, String)>,
    ) -> (u16, Value) {
        self.api_as(method, path, body, Some(&self.operator_token()))
            .await
    }

    pub async fn api_as(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, String)>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.api_url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some((ct, b)) = body {
            req = req.header("content-type", ct).body(b);
        }
        let resp = req.send().await.expect("hub API reachable");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.api(reqwest::Method::GET, path, None).await
    }

    /// `PUT /deployments/{name}` with a YAML manifest.
    pub async fn put_deployment(&self, name: &str, yaml: &str) -> (u16, Value) {
        self.api(
            reqwest::Method::PUT,
            &format!("/deployments/{name}"),
            Some(("application/yaml", yaml.to_owned())),
        )
        .await
    }

    /// `PUT /deployments/{name}` that must succeed; the hub's answer.
    pub async fn deploy(&self, name: &str, yaml: &str) -> Value {
        let (code, body) = self.put_deployment(name, yaml).await;
        assert!(code < 300, "PUT /deployments/{name}: {code} {body}");
        body
    }

    /// `POST /models?name=NAME` with `bytes` that must succeed; the sha256.
    pub async fn push_model(&self, name: &str, bytes: Vec<u8>) -> String {
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v1/models?name={name}", self.api_url()))
            .bearer_auth(self.operator_token())
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .expect("hub reachable");
        assert!(resp.status().is_success(), "push model: {}", resp.status());
        let rec: Value = resp.json().await.expect("model record");
        rec["sha256"].as_str().expect("sha256").to_owned()
    }

    /// Every event id the hub stored for `device`, in order, duplicates kept
    /// (follows the `continue` pages of `GET /devices/{id}/events`).
    pub async fn event_ids(&self, device: &str) -> Vec<String> {
        let client = self.client();
        let mut ids = Vec::new();
        let mut after = 0;
        loop {
            let page = client
                .events(device, after, 1000)
                .await
                .unwrap_or_else(|e| panic!("events of {device}: {e}"));
            ids.extend(page.items.into_iter().map(|e| e.id));
            match page.continue_token {
                Some(t) => after = t.parse().expect("a sequence number"),
                None => return ids,
            }
        }
    }

    /// Runs `edgectl` against this hub with `token` (none: no token at
    /// all); returns exit code, stdout and stderr.
    pub fn edgectl_as(&self, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
        let mut c = std::process::Command::new(bin("edgectl"));
        c.args(args)
            .env("EDGECTL_SERVER", self.api_url())
            .env_remove("EDGECTL_TOKEN");
        if let Some(ca) = self.api_ca() {
            c.env("EDGECTL_CERTIFICATE_AUTHORITY", ca);
        }
        if let Some(t) = token {
            c.env("EDGECTL_TOKEN", t);
        }
        crate::process::output(c)
    }

    /// Runs `cloudcore ARGS` (backup, restore) to completion; returns exit
    /// code, stdout and stderr.
    pub fn cloudcore(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
        let mut c = std::process::Command::new(bin("cloudcore"));
        c.args(args);
        crate::process::output(c)
    }

    /// `edgectl` with the operator token.
    pub fn edgectl(&self, args: &[&str]) -> (i32, String, String) {
        self.edgectl_as(Some(&self.operator_token()), args)
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.api_url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default()
    }

    /// The value of one metric line (exact name with labels), or 0.
    pub async fn metric(&self, name_with_labels: &str) -> f64 {
        metric_value(&self.metrics().await, name_with_labels)
    }

    /// Enrolls a device key with labels through the REST API.
    pub async fn enroll(
        &self,
        key: &Signer,
        device_id: Option<&str>,
        labels: &[(&str, &str)],
    ) -> EnrollResponse {
        let req = EnrollRequest {
            token: self.bootstrap_token(),
            public_key: key.public().to_base64(),
            device_id: device_id.map(|d| d.parse().expect("device id")),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            hostname: Some("test".into()),
            arch: std::env::consts::ARCH.into(),
            agent_version: "test".into(),
        };
        let resp = self
            .http
            .post(format!("{}/api/v1/enroll", self.api_url))
            .json(&req)
            .send()
            .await
            .expect("enroll");
        assert!(
            resp.status().is_success(),
            "enroll failed: {}",
            resp.text().await.unwrap_or_default()
        );
        resp.json().await.expect("enroll response")
    }
}

/// The test's HTTP client for the hub: trusting only `tls.ca` when given.
fn http_client(tls: Option<&ApiTls>) -> reqwest::Client {
    let Some(t) = tls else {
        return reqwest::Client::new();
    };
    let pem = std::fs::read(&t.ca).expect("read the API CA");
    let certs = reqwest::Certificate::from_pem_bundle(&pem).expect("PEM CA");
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .build()
        .expect("HTTPS client")
}

/// Reads `name{labels} value` from a Prometheus exposition.
pub fn metric_value(text: &str, name_with_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name_with_labels)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or(0.0)
}

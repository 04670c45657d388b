//! A real Git server on loopback for the Git-source suites: Debian's
//! `git http-backend` (the smart HTTP protocol, v2 included) behind a small
//! CGI front end, with an optional token (HTTP basic auth, as GitHub takes
//! it), that can be stopped and started again on the same port. And a
//! working repository the tests commit to and push from with the real
//! `git` command.
//!
//! Without `git` the suites skip loudly, and fail under
//! `EDGEFLEET_REQUIRE_GIT=1`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use tokio::io::AsyncWriteExt as _;

/// Whether `git` and its `http-backend` are here.
pub fn available() -> Result<(), String> {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .map_err(|e| format!("git: {e}"))?;
    let exec = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !Path::new(&exec).join("git-http-backend").is_file() {
        return Err(format!("no git-http-backend in {exec}"));
    }
    Ok(())
}

/// `git` with no user or system configuration.
pub fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "ops")
        .env("GIT_AUTHOR_EMAIL", "ops@example.com")
        .env("GIT_COMMITTER_NAME", "ops")
        .env("GIT_COMMITTER_EMAIL", "ops@example.com")
        .env("GIT_TERMINAL_PROMPT", "0");
    c
}

/// Runs `git args…` in `dir`; panics with its stderr when it fails.
pub fn run(dir: &Path, args: &[&str]) -> String {
    let out = git(dir).args(args).output().expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare repository the server serves, and a clone the test commits in.
#[derive(Debug)]
pub struct Repo {
    pub bare: PathBuf,
    pub work: PathBuf,
}

impl Repo {
    /// `<root>/<name>.git` (bare, served) and `<root>/<name>` (the clone),
    /// on branch `main`.
    pub fn create(root: &Path, name: &str) -> Self {
        let bare = root.join(format!("{name}.git"));
        let work = root.join(name);
        run(
            root,
            &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
        );
        run(root, &["init", "-q", "-b", "main", work.to_str().unwrap()]);
        run(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Self { bare, work }
    }

    /// Writes (or, with `None`, removes) files, commits them with `message`
    /// and `extra` commit options (signing), pushes; returns the commit.
    pub fn commit(&self, files: &[(&str, Option<&str>)], message: &str, extra: &[&str]) -> String {
        for (path, text) in files {
            let p = self.work.join(path);
            match text {
                Some(t) => {
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(&p, t).unwrap();
                }
                None => {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        run(&self.work, &["add", "-A"]);
        let mut args = extra.to_vec();
        args.extend(["commit", "-q", "--allow-empty", "-m", message]);
        run(&self.work, &args);
        self.push(false);
        self.head()
    }

    pub fn head(&self) -> String {
        run(&self.work, &["rev-parse", "HEAD"])
    }

    /// Pushes `main`; `force` for a rewritten history.
    pub fn push(&self, force: bool) {
        let mut args = vec!["push", "-q", "origin", "main"];
        if force {
            args.insert(2, "--force");
        }
        run(&self.work, &args);
    }
}

/// The CGI front end's state.
#[derive(Debug)]
struct Backend {
    root: PathBuf,
    exec_path: PathBuf,
    /// `Authorization: Basic base64(git:token)` required when set.
    token: Option<String>,
}

/// A running `git http-backend` server.
#[derive(Debug)]
pub struct GitServer {
    pub addr: SocketAddr,
    backend: Arc<Backend>,
    /// https with this certificate when set.
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// TLS on accepted connections; a failed handshake is dropped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            if let Ok(Ok(tls)) =
                tokio::time::timeout(std::time::Duration::from_secs(5), handshake).await
            {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl GitServer {
    /// Serves every repository under `root` on a free loopback port, over
    /// https with `tls` (a certificate for 127.0.0.1) when given.
    pub async fn start(
        root: &Path,
        token: Option<&str>,
        tls: Option<&crate::mosquitto::TlsFiles>,
    ) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        let tls = tls.map(|f| {
            let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(&f.cert)
                .expect("server certificate")
                .collect::<Result<_, _>>()
                .expect("server certificate");
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&f.key).expect("server key");
            Arc::new(
                rustls::ServerConfig::builder()
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .expect("TLS config"),
            )
        });
        let exec = Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git --exec-path");
        let backend = Arc::new(Backend {
            root: root.to_owned(),
            exec_path: PathBuf::from(String::from_utf8_lossy(&exec.stdout).trim()),
            token: token.map(str::to_owned),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let mut s = Self {
            addr,
            backend,
            tls,
            stop: None,
            task: None,
        };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .fallback(cgi)
            .with_state(self.backend.clone());
        let tls = self.tls.clone();
        self.task = Some(tokio::spawn(async move {
            let stop = async move {
                let _ = rx.await;
            };
            let _ = match tls {
                Some(config) => {
                    let listener = TlsListener {
                        tcp: listener,
                        acceptor: tokio_rustls::TlsAcceptor::from(config),
                    };
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await
                }
                None => {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await
                }
            };
        }));
        self.stop = Some(tx);
    }

    /// `http(s)://127.0.0.1:PORT/<name>.git`.
    pub fn url(&self, name: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/{name}.git", self.addr)
    }

    /// Stops listening (connections are refused until `start_again`).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same port.
    pub async fn start_again(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind the same port again");
        self.serve(listener);
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// One request through `git http-backend`, as a CGI server runs it.
async fn cgi(State(b): State<Arc<Backend>>, req: Request) -> Response {
    if let Some(token) = &b.token {
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("git:{token}"))
        );
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given != Some(want.as_str()) {
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("www-authenticate", "Basic realm=\"git\"")
                .body(Body::empty())
                .unwrap();
        }
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut cmd = tokio::process::Command::new(b.exec_path.join("git-http-backend"));
    cmd.env_clear()
        .env("GIT_PROJECT_ROOT", &b.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn git-http-backend");
    let mut stdin = child.stdin.take().unwrap();
    let feed = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.expect("git-http-backend");
    let _ = feed.await;
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((at, sep)) = split else {
        return Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::from(out.stderr))
            .unwrap();
    };
    let mut resp = Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(&raw[..at]).lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v.split_whitespace().next().and_then(|c| c.parse().ok());
            resp = resp.status(code.unwrap_or(500));
        } else if let Ok(hv) = HeaderValue::from_str(v) {
            resp = resp.header(k, hv);
        }
    }
    resp.body(Body::from(raw[at + sep..].to_vec())).unwrap()
}

/// OpenSSH's server on a free loopback port, for `ssh://` remotes: it lets
/// in one key (as the user running the tests) and runs `git upload-pack`
/// as a Git host's ssh does. Killed on drop.
#[derive(Debug)]
pub struct Sshd {
    pub port: u16,
    /// A known_hosts line for this server's host key.
    pub known_hosts: String,
    child: std::process::Child,
}

/// Where Debian's sshd is.
pub const SSHD: &str = "/usr/sbin/sshd";

impl Sshd {
    /// Starts sshd in `dir` accepting `client_pub` (an OpenSSH public key
    /// line). `Err` when sshd is not installed or does not start.
    pub fn start(dir: &Path, client_pub: &str) -> Result<Self, String> {
        if !Path::new(SSHD).is_file() {
            return Err(format!("{SSHD} is not installed (openssh-server)"));
        }
        // sshd's privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let host_key = dir.join("ssh_host_ed25519_key");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .output()
            .map_err(|e| format!("ssh-keygen: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let auth = dir.join("authorized_keys");
        std::fs::write(&auth, format!("{client_pub}\n")).map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nLogLevel ERROR\n",
                host_key.display(),
                auth.display(),
                dir.join("sshd.pid").display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .spawn()
            .map_err(|e| format!("{SSHD}: {e}"))?;
        let host_pub =
            std::fs::read_to_string(host_key.with_extension("pub")).map_err(|e| e.to_string())?;
        let mut s = Self {
            port,
            known_hosts: format!(
                "[127.0.0.1]:{port} {}",
                host_pub
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            child,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(s);
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(format!("sshd exited: {status}"));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = s.child.kill();
        Err("sshd did not listen within 5 s".into())
    }

    /// `ssh://USER@127.0.0.1:PORT/<path>`, as the current user.
    pub fn url(&self, path: &Path) -> String {
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        format!("ssh://{user}@127.0.0.1:{}{}", self.port, path.display())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

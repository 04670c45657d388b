//! The web dashboard under `/ui/` on the API listener.
//!
//! Plain HTML, CSS and one script, embedded in the binary (`cloudcore/ui/`):
//! no build step, no Node at runtime, nothing fetched from elsewhere. The
//! script reads the REST API (`/api/v1`) like `edgectl` does, signed in by
//! a session cookie instead of the bearer token, and is told of changes by
//! one server-sent event stream (`/ui/events`).
//!
//! Sign-in takes the operator token once and gives an httpOnly, SameSite=
//! Strict session cookie (Secure when the API serves TLS). Sessions live in
//! memory (a hub restart signs everyone out), at most [`MAX_SESSIONS`], for
//! [`SESSION_TTL_MS`]. A request authenticated by the cookie that changes
//! anything must carry the session's CSRF token in `X-CSRF-Token` (the
//! sign-out form: a `csrf` field); the token is in the page the server
//! renders for that session.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edgefleet_protocol::DeviceId;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;

use crate::api::Shared;
use crate::metrics::Metrics;

/// The session cookie's name.
pub const COOKIE: &str = "edgefleet_session";
/// The header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts from sign-in.
pub const SESSION_TTL_MS: u64 = 12 * 60 * 60 * 1000;
/// Sessions kept at once; signing in beyond it ends the one closest to
/// expiry.
pub const MAX_SESSIONS: usize = 256;
/// Changes are gathered this long before one event carries them all.
const COALESCE: Duration = Duration::from_millis(250);
/// A comment on an idle stream this often (proxies close silent ones).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Device ids named in one event at most; beyond, the event says "many".
const MAX_IDS: usize = 100;
/// Change streams open at once (each holds a task and a queue of changes).
pub const MAX_STREAMS: i64 = 128;

const INDEX: &str = include_str!("../ui/index.html");
const LOGIN: &str = include_str!("../ui/login.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");

/// Something the dashboard may show changed.
#[derive(Debug, Clone)]
pub enum Change {
    /// These devices' status, presence, labels or events.
    Devices(Arc<[DeviceId]>),
    /// Any device (a change that touched many).
    AllDevices,
    Deployments,
    Rollouts,
    Sources,
    Models,
}

/// Where changes are announced; cheap to clone, never blocks (a stream
/// that falls behind is told to reload everything).
#[derive(Debug, Clone)]
pub struct Changes(broadcast::Sender<Change>);

impl Default for Changes {
    fn default() -> Self {
        Self(broadcast::channel(1024).0)
    }
}

impl Changes {
    pub fn send(&self, c: Change) {
        // No stream open: nobody to tell.
        let _ = self.0.send(c);
    }

    pub fn devices(&self, ids: Vec<DeviceId>) {
        if !ids.is_empty() {
            self.send(Change::Devices(ids.into()));
        }
    }
}

#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    expires_ms: u64,
}

/// The dashboard's state: sessions and the change feed.
#[derive(Debug)]
pub struct Ui {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    pub changes: Changes,
    secure_cookie: bool,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Sessions are kept by the hash of their cookie: the table never holds a
/// value that would sign anyone in.
fn key(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
}

impl Ui {
    pub fn new(changes: Changes, secure_cookie: bool) -> Self {
        Self {
            sessions: Mutex::default(),
            changes,
            secure_cookie,
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session: its cookie value and CSRF token.
    fn create(&self, metrics: &Metrics) -> (String, String) {
        let (cookie, csrf) = (random_hex(), random_hex());
        let now = edgefleet_protocol::now_ms();
        let mut s = self.sessions();
        s.retain(|_, v| v.expires_ms > now);
        if s.len() >= MAX_SESSIONS
            && let Some(k) = s.iter().min_by_key(|(_, v)| v.expires_ms).map(|(k, _)| *k)
        {
            s.remove(&k);
        }
        s.insert(
            key(&cookie),
            Session {
                csrf: csrf.clone(),
                expires_ms: now + SESSION_TTL_MS,
            },
        );
        metrics.ui_sessions.set(s.len() as i64);
        (cookie, csrf)
    }

    /// The request's live session: its key and CSRF token.
    fn session(&self, headers: &HeaderMap) -> Option<([u8; 32], String)> {
        let k = key(cookie_value(headers, COOKIE)?);
        let s = self.sessions();
        let v = s.get(&k)?;
        (v.expires_ms > edgefleet_protocol::now_ms()).then(|| (k, v.csrf.clone()))
    }

    fn alive(&self, k: &[u8; 32]) -> bool {
        self.sessions()
            .get(k)
            .is_some_and(|v| v.expires_ms > edgefleet_protocol::now_ms())
    }

    fn end(&self, k: &[u8; 32], metrics: &Metrics) {
        let mut s = self.sessions();
        s.remove(k);
        metrics.ui_sessions.set(s.len() as i64);
    }

    fn set_cookie(&self, value: &str, max_age_s: u64) -> HeaderValue {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
        ))
        .expect("cookie characters are hex")
    }
}

/// How a request to the operator API authenticated by cookie fares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieAuth {
    /// No session cookie, or not a live one.
    None,
    /// A live session; a change without its CSRF token.
    CsrfMissing,
    Ok,
}

/// Checks the session cookie of an API request (`safe`: a GET or HEAD,
/// which needs no CSRF token).
pub fn cookie_auth(st: &crate::api::AppState, headers: &HeaderMap, safe: bool) -> CookieAuth {
    let Some((_, csrf)) = st.ui.session(headers) else {
        return CookieAuth::None;
    };
    if safe
        || csrf_ok(
            headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()),
            &csrf,
        )
    {
        CookieAuth::Ok
    } else {
        st.metrics.ui_csrf_refused.inc();
        tracing::warn!("dashboard request without its CSRF token refused");
        CookieAuth::CsrfMissing
    }
}

fn csrf_ok(given: Option<&str>, expected: &str) -> bool {
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(expected.as_bytes())))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn login_page(status: StatusCode, message: &str) -> Response {
    let alert = if message.is_empty() {
        String::new()
    } else {
        format!(
            r#"<p class="alert" role="alert" id="login-error">{}</p>"#,
            escape(message)
        )
    };
    let invalid = if message.is_empty() {
        ""
    } else {
        r#" aria-invalid="true" aria-errormessage="login-error""#
    };
    html(
        status,
        LOGIN
            .replace("{{ALERT}}", &alert)
            .replace("{{INVALID}}", invalid),
    )
}

/// `/ui/`: the dashboard for a session, else the sign-in page.
async fn index(State(st): State<Shared>, headers: HeaderMap) -> Response {
    match st.ui.session(&headers) {
        Some((_, csrf)) => html(StatusCode::OK, INDEX.replace("{{CSRF}}", &csrf)),
        None => login_page(StatusCode::OK, ""),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// A form posted from another site's page: the browser's `Sec-Fetch-Site`
/// says so, or its `Origin` is not this host.
fn cross_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    origin_host != host
}

fn sign_in_counted(st: &crate::api::AppState, outcome: &str) {
    st.metrics
        .ui_sign_ins
        .get_or_create(&vec![("outcome", outcome.to_owned())])
        .inc();
}

async fn login(
    State(st): State<Shared>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if cross_origin(&headers) {
        sign_in_counted(&st, "cross_origin");
        tracing::warn!("dashboard sign-in posted from another origin refused");
        return login_page(StatusCode::FORBIDDEN, "Sign-in must come from this page.");
    }
    let token = form.map(|Form(f)| f.token).unwrap_or_default();
    if !crate::api::token_ok(token.trim(), &st.operator_token) {
        sign_in_counted(&st, "wrong_token");
        tracing::warn!("dashboard sign-in with a wrong operator token");
        // A guess costs the guesser a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        return login_page(
            StatusCode::UNAUTHORIZED,
            "That is not the operator token. It is in the hub's data directory \
             (operator-token), or CLOUDCORE_OPERATOR_TOKEN.",
        );
    }
    sign_in_counted(&st, "ok");
    let (cookie, _) = st.ui.create(&st.metrics);
    tracing::info!("dashboard session signed in");
    let mut resp = see_other("/ui/");
    resp.headers_mut().insert(
        header::SET_COOKIE,
        st.ui.set_cookie(&cookie, SESSION_TTL_MS / 1000),
    );
    resp
}

#[derive(Deserialize)]
struct LogoutForm {
    csrf: String,
}

async fn logout(
    State(st): State<Shared>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    let Some((k, csrf)) = st.ui.session(&headers) else {
        return see_other("/ui/");
    };
    let given = form.ok().map(|Form(f)| f.csrf);
    if !csrf_ok(given.as_deref(), &csrf) {
        st.metrics.ui_csrf_refused.inc();
        tracing::warn!("dashboard sign-out without its CSRF token refused");
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token\n").into_response();
    }
    st.ui.end(&k, &st.metrics);
    tracing::info!("dashboard session signed out");
    let mut resp = see_other("/ui/");
    resp.headers_mut()
        .insert(header::SET_COOKIE, st.ui.set_cookie("", 0));
    resp
}

fn see_other(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// What one event tells a page: which kinds of things changed.
#[derive(Default)]
struct Batch {
    devices: Vec<String>,
    all_devices: bool,
    deployments: bool,
    rollouts: bool,
    sources: bool,
    models: bool,
}

impl Batch {
    fn add(&mut self, c: Change) {
        match c {
            Change::Devices(ids) => {
                for id in ids.iter() {
                    if self.devices.len() >= MAX_IDS {
                        self.all_devices = true;
                        break;
                    }
                    self.devices.push(id.to_string());
                }
            }
            Change::AllDevices => self.all_devices = true,
            Change::Deployments => self.deployments = true,
            Change::Rollouts => self.rollouts = true,
            Change::Sources => self.sources = true,
            Change::Models => self.models = true,
        }
    }

    /// Everything: the stream fell behind.
    fn all(&mut self) {
        *self = Batch {
            all_devices: true,
            deployments: true,
            rollouts: true,
            sources: true,
            models: true,
            ..Batch::default()
        };
    }

    fn event(mut self) -> String {
        self.devices.sort();
        self.devices.dedup();
        let devices = if self.all_devices {
            serde_json::json!("many")
        } else {
            serde_json::json!(self.devices)
        };
        let data = serde_json::json!({
            "devices": devices,
            "deployments": self.deployments,
            "rollouts": self.rollouts,
            "sources": self.sources,
            "models": self.models,
        });
        format!("event: change\ndata: {data}\n\n")
    }
}

/// Open streams, counted while they live.
struct Stream {
    rx: broadcast::Receiver<Change>,
    key: [u8; 32],
    st: Shared,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.st.metrics.ui_streams.dec();
    }
}

impl Stream {
    /// The next thing to write: an event, a keep-alive comment, or `None`
    /// when the session ended (signed out, expired) or the hub stops.
    async fn next(&mut self) -> Option<String> {
        if !self.st.ui.alive(&self.key) {
            return None;
        }
        let mut batch = Batch::default();
        match tokio::time::timeout(KEEP_ALIVE, self.rx.recv()).await {
            Err(_) => return Some(": keep-alive\n\n".to_owned()),
            Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => batch.all(),
            Ok(Ok(c)) => batch.add(c),
        }
        let until = tokio::time::Instant::now() + COALESCE;
        loop {
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(Ok(c)) => batch.add(c),
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => batch.all(),
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => break,
            }
        }
        Some(batch.event())
    }
}

/// `/ui/events`: server-sent events, `change` with what changed
/// (`{"devices": [ids] | "many", "deployments": bool, …}`), for a session.
async fn events(State(st): State<Shared>, headers: HeaderMap) -> Response {
    let Some((key, _)) = st.ui.session(&headers) else {
        return (StatusCode::UNAUTHORIZED, "sign in first\n").into_response();
    };
    // `inc` answers the count before it: no two streams both take the last
    // place.
    if st.metrics.ui_streams.inc() >= MAX_STREAMS {
        st.metrics.ui_streams.dec();
        tracing::warn!(
            max = MAX_STREAMS,
            "dashboard change stream refused: too many open"
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "10")],
            "too many dashboard change streams open; retry later\n",
        )
            .into_response();
    }
    let stream = Stream {
        rx: st.ui.changes.0.subscribe(),
        key,
        st: st.clone(),
    };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let next = s.next().await?;
        Some((Ok::<_, Infallible>(next), s))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        // Sent at once: the browser knows the stream is open.
        Body::from_stream(futures_util::stream::StreamExt::chain(
            futures_util::stream::once(async { Ok::<_, Infallible>(": open\n\n".to_owned()) }),
            body,
        )),
    )
        .into_response()
}

/// Headers on every dashboard response: nothing but this origin's own
/// files may run, and no other site may frame it.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (k, v) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not no-referrer: with it a browser sends `Origin: null` on the
        // sign-in form's POST.
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    resp
}

/// The dashboard's routes.
pub fn router() -> Router<Shared> {
    Router::new()
        .route("/ui", get(|| async { see_other("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/events", get(events))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .layer(middleware::from_fn(security_headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; edgefleet_session=abc; b=2"),
        );
        assert_eq!(cookie_value(&h, COOKIE), Some("abc"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("edgefleet_sessionx=1"),
        );
        assert_eq!(cookie_value(&h, COOKIE), None);
    }

    #[test]
    fn sessions_are_bounded_expire_and_end() {
        let ui = Ui::new(Changes::default(), true);
        let m = Metrics::new();
        let mut first = None;
        for _ in 0..MAX_SESSIONS + 10 {
            let (c, _) = ui.create(&m);
            first.get_or_insert(c);
        }
        assert_eq!(ui.sessions().len(), MAX_SESSIONS);
        let (c, csrf) = ui.create(&m);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, format!("{COOKIE}={c}").parse().unwrap());
        let (k, got) = ui.session(&h).unwrap();
        assert_eq!(got, csrf);
        ui.end(&k, &m);
        assert!(ui.session(&h).is_none());
        ui.sessions().values_mut().for_each(|v| v.expires_ms = 1);
        h.insert(
            header::COOKIE,
            format!("{COOKIE}={}", first.unwrap()).parse().unwrap(),
        );
        assert!(ui.session(&h).is_none(), "expired");
        assert!(
            ui.set_cookie("x", 5)
                .to_str()
                .unwrap()
                .contains("HttpOnly; SameSite=Strict; Max-Age=5; Secure")
        );
    }

    #[test]
    fn a_batch_names_devices_once_and_many_beyond_its_limit() {
        let mut b = Batch::default();
        let id = |s: &str| DeviceId::new(s).unwrap();
        b.add(Change::Devices(vec![id("b"), id("a"), id("b")].into()));
        b.add(Change::Rollouts);
        let e = b.event();
        assert!(e.contains(r#""devices":["a","b"]"#), "{e}");
        assert!(e.contains(r#""rollouts":true"#), "{e}");
        let mut b = Batch::default();
        let many: Vec<DeviceId> = (0..MAX_IDS + 1).map(|i| id(&format!("d{i}"))).collect();
        b.add(Change::Devices(many.into()));
        assert!(b.event().contains(r#""devices":"many""#));
    }

    #[test]
    fn a_form_from_another_origin_is_told_apart() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("hub:8080"));
        assert!(!cross_origin(&h), "no Origin: a same-origin navigation");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://hub:8080"));
        assert!(!cross_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(cross_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(cross_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(!cross_origin(&h), "the browser's own word");
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_origin(&h));
    }
}

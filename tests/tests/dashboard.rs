//! The web dashboard (`/ui/`) against a real hub: sign-in and its refusals
//! (a wrong token counted, a form from another origin, a change without
//! the CSRF token, a signed-out session), the device list's filters, the
//! heartbeat history; and the browser test: `tests/ui/e2e.mjs` drives
//! Debian's Chromium through playwright-core against the hub and a real
//! `edge-agent`, checks each page with axe-core, and saves screenshots in
//! `target/ui-e2e/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgefleet_tests::agent::Agent;
use edgefleet_tests::eventually;
use edgefleet_tests::hub::Hub;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ui")
}

/// `application/x-www-form-urlencoded`, as a browser posts a form.
fn form(req: reqwest::RequestBuilder, pairs: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    req.header("content-type", "application/x-www-form-urlencoded")
        .body(body.join("&"))
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Signs in with `token`: the status and the session cookie (`name=value`).
async fn sign_in(hub: &Hub, token: &str, origin: Option<&str>) -> (StatusCode, Option<String>) {
    let mut req = form(
        no_redirects().post(format!("{}/ui/login", hub.api_url())),
        &[("token", token)],
    );
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let resp = req.send().await.expect("hub reachable");
    let cookie = resp
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_owned());
    (resp.status(), cookie)
}

/// The CSRF token in the dashboard page a session is served.
async fn csrf_of(hub: &Hub, cookie: &str) -> String {
    let page = no_redirects()
        .get(format!("{}/ui/", hub.api_url()))
        .header(COOKIE, cookie)
        .send()
        .await
        .expect("hub reachable")
        .text()
        .await
        .expect("page");
    let at = page
        .find(r#"name="csrf-token" content=""#)
        .expect("the dashboard, not the sign-in page");
    page[at + 27..at + 27 + 64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_sessions_and_csrf() {
    edgefleet_tests::install_crypto();
    let hub = Hub::start().await;
    let http = no_redirects();
    let api = |p: &str| format!("{}/api/v1{p}", hub.api_url());

    // Not signed in: the sign-in page, and the API refuses.
    let page = http
        .get(format!("{}/ui/", hub.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.text().await.unwrap().contains("Operator token"));
    assert_eq!(
        http.get(api("/overview")).send().await.unwrap().status(),
        401
    );

    // A wrong token: a clear message, counted; no cookie.
    let (status, cookie) = sign_in(&hub, "wrong", None).await;
    assert_eq!((status, cookie), (StatusCode::UNAUTHORIZED, None));
    assert_eq!(
        hub.metric("edgefleet_hub_ui_sign_ins_total{outcome=\"wrong_token\"}")
            .await,
        1.0
    );
    // The right token posted from another site's page.
    let (status, cookie) = sign_in(&hub, &hub.operator_token(), Some("https://evil.example")).await;
    assert_eq!((status, cookie), (StatusCode::FORBIDDEN, None));
    assert_eq!(
        hub.metric("edgefleet_hub_ui_sign_ins_total{outcome=\"cross_origin\"}")
            .await,
        1.0
    );

    // The right token: a session cookie, httpOnly and SameSite.
    let resp = form(
        http.post(format!("{}/ui/login", hub.api_url()))
            .header("origin", hub.api_url()),
        &[("token", &hub.operator_token())],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()[LOCATION], "/ui/");
    let set = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let csrf = csrf_of(&hub, &cookie).await;

    // Reads need only the cookie; a change needs the CSRF token too.
    let read = || http.get(api("/overview")).header(COOKIE, &cookie).send();
    let r = read().await.unwrap();
    assert_eq!(r.status(), 200);
    let overview: Value = r.json().await.unwrap();
    assert_eq!(overview["devices"]["total"], 0);
    let yaml = edgefleet_tests::fixtures::sim_deployment("csrf", "1", None);
    let put = |csrf: Option<&str>| {
        let mut r = http
            .put(api("/deployments/csrf"))
            .header(COOKIE, &cookie)
            .header("content-type", "application/yaml")
            .body(yaml.clone());
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        r.send()
    };
    let refused = put(None).await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "csrf");
    assert_eq!(put(Some(&"0".repeat(64))).await.unwrap().status(), 403);
    assert_eq!(hub.metric("edgefleet_hub_ui_csrf_refused_total").await, 2.0);
    let (code, _) = hub.get("/deployments/csrf").await;
    assert_eq!(code, 404, "a refused change changed nothing");
    assert_eq!(put(Some(&csrf)).await.unwrap().status(), 201);

    // Sign-out needs the token too; then the session is gone at the hub.
    let out = |csrf: &str| {
        form(
            http.post(format!("{}/ui/logout", hub.api_url()))
                .header(COOKIE, &cookie),
            &[("csrf", csrf)],
        )
        .send()
    };
    assert_eq!(out("nope").await.unwrap().status(), 403);
    let r = out(&csrf).await.unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let r = read().await.unwrap();
    assert_eq!(r.status(), 401, "the cookie no longer signs in");
    assert_eq!(
        hub.metric("edgefleet_hub_ui_sign_ins_total{outcome=\"ok\"}")
            .await,
        1.0
    );
}

/// Device ids of `GET /devices?query`, following every page.
async fn ids(hub: &Hub, query: &str) -> Result<Vec<String>, (u16, Value)> {
    let mut out = Vec::new();
    let mut cont = String::new();
    loop {
        let (code, body) = hub.get(&format!("/devices?limit=2&{query}{cont}")).await;
        if code != 200 {
            return Err((code, body));
        }
        for d in body["items"].as_array().unwrap() {
            out.push(d["id"].as_str().unwrap().to_owned());
        }
        match body["continue"].as_str() {
            Some(c) => cont = format!("&continue={c}"),
            None => return Ok(out),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_list_filters_and_the_history_of_a_real_agent() {
    edgefleet_tests::install_crypto();
    let hub = Hub::start().await;
    let sha = edgefleet_tests::fixtures::push_vibration(&hub).await;
    let agent =
        Agent::enroll_and_start(&hub, "pi-ui-1", &[("site", "plant-9"), ("ring", "canary")]).await;
    for (id, site) in [
        ("pi-ui-2", "plant-9"),
        ("pi-ui-3", "plant-4"),
        ("pi-ui-4", "plant-4"),
    ] {
        hub.enroll(
            &edgefleet_protocol::Signer::generate(),
            Some(id),
            &[("site", site)],
        )
        .await;
    }
    hub.deploy(
        "detector",
        &edgefleet_tests::fixtures::inference("detector", "vibration", &sha, "0.8"),
    )
    .await;
    eventually("pi-ui-1 runs detector generation 1", T, || async {
        let r = ids(&hub, "deployment=detector&generation=1").await.ok()?;
        (r == ["pi-ui-1"]).then_some(())
    })
    .await;

    let all = ["pi-ui-1", "pi-ui-2", "pi-ui-3", "pi-ui-4"];
    assert_eq!(ids(&hub, "").await.unwrap(), all, "every page, in order");
    assert_eq!(
        ids(&hub, "selector=site%3Dplant-4").await.unwrap(),
        ["pi-ui-3", "pi-ui-4"]
    );
    assert_eq!(
        ids(&hub, "selector=site%21%3Dplant-4,ring").await.unwrap(),
        ["pi-ui-1"]
    );
    assert_eq!(ids(&hub, "presence=online").await.unwrap(), ["pi-ui-1"]);
    assert_eq!(ids(&hub, "presence=unknown").await.unwrap(), all[1..]);
    assert_eq!(ids(&hub, "health=healthy").await.unwrap(), ["pi-ui-1"]);
    assert_eq!(ids(&hub, "health=none").await.unwrap(), all[1..]);
    assert!(
        ids(&hub, "deployment=detector&generation=2")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        ids(&hub, "commit=abcdef1").await.unwrap().is_empty(),
        "no deployment came from Git"
    );
    for (bad, why) in [
        ("presence=maybe", "presence"),
        ("health=fine", "health"),
        ("selector=a%20in", "selector"),
        ("generation=1", "generation needs deployment"),
        ("commit=xyz", "commit"),
    ] {
        let (code, body) = ids(&hub, bad).await.unwrap_err();
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(why),
            "{bad}: {body}"
        );
    }
    let (_, list) = hub.get("/devices?presence=online").await;
    assert_eq!(list["items"][0]["health"], "healthy");

    // The agent's heartbeats make a point of the history; the overview
    // counts the fleet.
    let h = eventually("a heartbeat in pi-ui-1's history", T, || async {
        let (_, h) = hub.get("/devices/pi-ui-1/history").await;
        (!h["points"].as_array()?.is_empty()).then_some(h)
    })
    .await;
    assert_eq!(h["intervalSecs"], 300);
    let p = &h["points"][0];
    assert!(p["samples"].as_u64().unwrap() >= 1);
    assert!(
        (0.0..=100.0).contains(&p["memPercent"].as_f64().unwrap()),
        "{p}"
    );
    assert_eq!(hub.get("/devices/nobody/history").await.0, 404);
    let (_, o) = hub.get("/overview").await;
    assert_eq!(o["devices"]["total"], 4);
    assert_eq!(o["devices"]["online"], 1);
    assert_eq!(o["devices"]["unknown"], 3);
    assert_eq!(o["deployments"][0]["healthy"], 1);
    let (_, ev) = hub.get("/devices/pi-ui-1/events?newest=true&limit=1").await;
    assert!(ev["items"].as_array().unwrap().len() <= 1);
    drop(agent);
}

/// Chromium, Node and `npm ci` in `tests/ui`; `None` after a loud skip.
fn browser() -> Option<PathBuf> {
    let chromium = std::env::var_os("EF_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let node = std::process::Command::new("node").arg("--version").output();
    let why = if !chromium.exists() {
        Some(format!(
            "{} not found (apt install chromium)",
            chromium.display()
        ))
    } else if node.is_err() {
        Some("node not found (apt install nodejs npm)".to_owned())
    } else if !ui_dir().join("node_modules/playwright-core").exists()
        || !ui_dir().join("node_modules/axe-core").exists()
    {
        Some("playwright-core and axe-core not installed (cd tests/ui && npm ci)".to_owned())
    } else {
        None
    };
    match why {
        Some(why) => {
            edgefleet_tests::skip("browser", &why);
            None
        }
        None => Some(chromium),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_sign_in_watch_a_deployment_pause_resume_relabel_sign_out() {
    let Some(chromium) = browser() else { return };
    edgefleet_tests::install_crypto();
    let hub = Hub::start().await;
    let sha = edgefleet_tests::fixtures::push_vibration(&hub).await;
    let _agent = Agent::enroll_and_start(
        &hub,
        "pi-browser",
        &[("site", "plant-9"), ("ring", "canary")],
    )
    .await;
    eventually("pi-browser online", T, || async {
        let (_, d) = hub.get("/devices/pi-browser").await;
        (d["presence"] == "online").then_some(())
    })
    .await;

    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-e2e");
    let run = tokio::process::Command::new("node")
        .arg(ui_dir().join("e2e.mjs"))
        .env("EF_HUB", hub.api_url())
        .env("EF_TOKEN", hub.operator_token())
        .env("EF_DEVICE", "pi-browser")
        .env("EF_MODEL", "vibration")
        .env("EF_MODEL_SHA", &sha)
        .env("EF_OUT", &out)
        .env("EF_CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the browser test finishes within 10 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}\n{stderr}\nscreenshots: {}", out.display());
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("e2e: passed"));
    for shot in [
        "overview",
        "devices",
        "deployments",
        "deployment-paused",
        "deployment",
        "device",
        "device-phone",
    ] {
        assert!(
            out.join(format!("{shot}.png")).exists(),
            "screenshot {shot}"
        );
    }
}

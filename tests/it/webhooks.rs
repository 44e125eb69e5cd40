//! Webhooks against real loopback receivers, a real PostgreSQL and real gateways (in-process and the binary).
//! Signatures are checked by an independent verifier: Python's standard library (`hmac`, `hashlib`, `base64`)
//! in a subprocess, sharing no code with the gateway's signer. No timed assertions: every wait is for an outcome,
//! with a generous deadline.

use crate::util::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use whatisup::pb;

const T: Duration = Duration::from_secs(60);

/// What a receiver does with one request.
#[derive(Clone, Debug)]
pub enum Act {
    Ok,
    Status(u16),
    /// Answers after this long (past the gateway's shortened timeout).
    Sleep(Duration),
    RetryAfter(u16, u64),
    Redirect(&'static str),
}

#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn h(&self, k: &str) -> &str {
        self.headers.get(k).map(String::as_str).unwrap_or("")
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

#[derive(Default)]
struct Script {
    queue: VecDeque<Act>,
    default: Option<Act>,
    log: Vec<Received>,
}

/// A scriptable HTTP receiver on 127.0.0.1.
#[derive(Clone)]
pub struct Receiver {
    pub port: u16,
    state: Arc<Mutex<Script>>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

async fn handle(
    State(s): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let act = {
        let mut s = s.lock().unwrap();
        s.log.push(Received {
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            body: body.to_vec(),
        });
        s.queue.pop_front().or(s.default.clone()).unwrap_or(Act::Ok)
    };
    match act {
        Act::Ok => (StatusCode::OK, "thanks").into_response(),
        Act::Status(c) => (StatusCode::from_u16(c).unwrap(), "nope").into_response(),
        Act::Sleep(d) => {
            tokio::time::sleep(d).await;
            (StatusCode::OK, "late").into_response()
        }
        Act::RetryAfter(c, secs) => (
            StatusCode::from_u16(c).unwrap(),
            [("retry-after", secs.to_string())],
            "slow down",
        )
            .into_response(),
        Act::Redirect(to) => (StatusCode::FOUND, [("location", to)], "").into_response(),
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            port: l.local_addr().unwrap().port(),
            state: Arc::new(Mutex::new(Script::default())),
            task: Arc::new(Mutex::new(None)),
        };
        r.serve(l);
        r
    }

    /// A port with nothing listening yet (`up` starts serving on it).
    pub async fn down() -> Receiver {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        Receiver {
            port,
            state: Arc::new(Mutex::new(Script::default())),
            task: Arc::new(Mutex::new(None)),
        }
    }

    pub async fn up(&self) {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.serve(l);
    }

    fn serve(&self, l: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(self.state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        *self.task.lock().unwrap() = Some(task);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn script(&self, acts: &[Act]) {
        self.state
            .lock()
            .unwrap()
            .queue
            .extend(acts.iter().cloned());
    }

    pub fn default(&self, act: Act) {
        self.state.lock().unwrap().default = Some(act);
    }

    pub fn log(&self) -> Vec<Received> {
        self.state.lock().unwrap().log.clone()
    }

    /// Waits until `f` holds on the log.
    pub async fn until(&self, what: &str, f: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let log = self.log();
            if f(&log) {
                return log;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "receiver: {what} did not happen; got {} requests",
                log.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1
            && let Some(t) = self.task.lock().unwrap().take()
        {
            t.abort();
        }
    }
}

/// The independent verifier: Python's standard library. For each secret, whether the Standard Webhooks
/// signature and the X-WhatIsUp-Signature carry a valid entry for it.
const VERIFY_PY: &str = r#"
import base64, hashlib, hmac, json, sys, time
req = json.load(sys.stdin)
body = base64.b64decode(req["body_b64"])
ts = req["timestamp"]
assert abs(time.time() - int(ts)) < 300, "timestamp outside tolerance"
out = []
for secret in req["secrets"]:
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_"):])
    signed = (req["id"] + "." + ts + ".").encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    entries = [e.split(",", 1) for e in req["signature"].split(" ")]
    standard = any(v == "v1" and hmac.compare_digest(s, expected) for v, s in entries)
    parts = req["compat"].split(",")
    t = parts[0][len("t="):]
    cexp = hmac.new(key, (t + ".").encode() + body, hashlib.sha256).hexdigest()
    compat = t == ts and any(p.startswith("v1=") and hmac.compare_digest(p[3:], cexp) for p in parts[1:])
    out.append({"standard": standard, "compat": compat, "entries": len(entries)})
print(json.dumps(out))
"#;

pub async fn verify(r: &Received, secrets: &[impl AsRef<str>]) -> Vec<(bool, bool, usize)> {
    use base64::Engine;
    use tokio::io::AsyncWriteExt;
    let secrets: Vec<&str> = secrets.iter().map(AsRef::as_ref).collect();
    let input = json!({
        "secrets": secrets,
        "id": r.h("webhook-id"),
        "timestamp": r.h("webhook-timestamp"),
        "signature": r.h("webhook-signature"),
        "compat": r.h("x-whatisup-signature"),
        "body_b64": base64::engine::general_purpose::STANDARD.encode(&r.body),
    });
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(VERIFY_PY)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "verifier failed: {:?}", out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["standard"].as_bool().unwrap(),
                e["compat"].as_bool().unwrap(),
                e["entries"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

pub fn webhook_config(db: &TestDb) -> whatisup::config::Config {
    let mut c = test_config(db);
    c.webhook_allow_cidrs = "127.0.0.0/8".into();
    c.webhook_retry_schedule = "1s,1s,1s,1s,1s,1s,1s,1s".into();
    c.webhook_poll_ms = 100;
    c.webhook_timeout_ms = 2_000;
    c
}

async fn create_endpoint(api: &Api, body: Value) -> (String, String) {
    let (s, e) = api.post("/v1/webhook-endpoints", body).await;
    assert_eq!(s, 201, "{e}");
    (
        e["id"].as_str().unwrap().to_string(),
        e["signing_secret"].as_str().unwrap().to_string(),
    )
}

async fn patch(api: &Api, path: &str, body: Value) -> (u16, Value) {
    api.call(reqwest::Method::PATCH, path, Some(body)).await
}

/// Waits until every delivery of `endpoint` is finished; returns them.
async fn deliveries_settled(api: &Api, endpoint: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (s, l) = api
            .get(&format!(
                "/v1/webhook-deliveries?endpoint_id={endpoint}&limit=100"
            ))
            .await;
        assert_eq!(s, 200, "{l}");
        let data = l["data"].as_array().unwrap().clone();
        if data.len() >= n
            && data
                .iter()
                .all(|d| d["status"] == "success" || d["status"] == "failed")
        {
            return data;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries did not settle: {data:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn inbound(api: &Api, ch: &str, text: &str) {
    let (s, r) = api
        .post(
            &format!("/v1/channels/{ch}/sandbox/inbound"),
            json!({"from": "+15550001111", "text": text}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_crud_validation_and_isolation() {
    let db = TestDb::new();
    let gw = Gw::start(webhook_config(&db)).await;
    let acme = gw.customer("acme").await;
    let other = gw.customer("other").await;
    let api = Api::new(&gw.base, &acme.test);
    let rx = Receiver::start().await;

    let (s, e) = api
        .post(
            "/v1/webhook-endpoints",
            json!({"url": rx.url(), "events": ["message.*", "channel.connected"], "description": "mine"}),
        )
        .await;
    assert_eq!(s, 201, "{e}");
    let id = e["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("we_"), "{e}");
    let secret = e["signing_secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() > 40, "{e}");
    assert_eq!(e["enabled"], true);
    assert_eq!(e["channel_id"], Value::Null);
    assert_eq!(e["events"], json!(["message.*", "channel.connected"]));

    // The secret is shown once.
    let (s, got) = api.get(&format!("/v1/webhook-endpoints/{id}")).await;
    assert_eq!(s, 200, "{got}");
    assert!(
        got.get("signing_secret").is_none_or(Value::is_null),
        "{got}"
    );
    let pg = db.client().await;
    let sealed: Vec<u8> = pg
        .query_one(
            "SELECT secret_sealed FROM webhook_endpoints WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    let raw = secret.trim_start_matches("whsec_");
    assert!(
        !String::from_utf8_lossy(&sealed).contains(raw),
        "the secret is sealed at rest"
    );

    // Validation names the field.
    for (body, field) in [
        (json!({"url": "not a url"}), "url"),
        (json!({"url": ""}), "url"),
        (json!({"url": "ftp://127.0.0.1/x"}), "url"),
        (json!({"url": rx.url(), "events": ["Message"]}), "events"),
        (json!({"url": rx.url(), "events": ["message*"]}), "events"),
        (
            json!({"url": rx.url(), "description": "x".repeat(501)}),
            "description",
        ),
        (
            json!({"url": rx.url(), "retry_schedule": ["soon"]}),
            "retry_schedule",
        ),
        (json!({"url": rx.url(), "colour": "red"}), "colour"),
        (
            json!({"url": rx.url(), "channel_id": "ch_nope"}),
            "channel_id",
        ),
        (
            json!({"url": format!("http://127.0.0.1/{}", "a".repeat(2100))}),
            "url",
        ),
    ] {
        let (s, err) = api.post("/v1/webhook-endpoints", body.clone()).await;
        assert_eq!(s, 400, "{body} -> {err}");
        assert_eq!(err["error"]["details"]["field"], field, "{body} -> {err}");
    }

    // PATCH: only what is given changes; null clears the channel filter.
    let ch = api.create_channel("c").await;
    let (s, p) = patch(
        &api,
        &format!("/v1/webhook-endpoints/{id}"),
        json!({"channel_id": ch, "enabled": false, "retry_schedule": ["2s", "1m"]}),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (p["channel_id"].as_str(), &p["enabled"]),
        (Some(ch.as_str()), &json!(false))
    );
    assert_eq!(p["retry_schedule"], json!(["2s", "1m"]));
    assert_eq!(p["description"], "mine");
    let (s, p) = patch(
        &api,
        &format!("/v1/webhook-endpoints/{id}"),
        json!({"channel_id": null, "enabled": true, "events": []}),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (&p["channel_id"], &p["enabled"], &p["events"]),
        (&Value::Null, &json!(true), &json!([]))
    );

    let (s, l) = api.get("/v1/webhook-endpoints").await;
    assert_eq!(s, 200);
    assert_eq!(l["data"].as_array().unwrap().len(), 1);

    // Another customer, and the live mode of the same customer, see nothing.
    for key in [&other.test, &acme.live] {
        let api2 = Api::new(&gw.base, key);
        let (s, err) = api2.get(&format!("/v1/webhook-endpoints/{id}")).await;
        assert_eq!(
            (s, err["error"]["code"].as_str()),
            (404, Some("webhook_endpoint_not_found"))
        );
        let (s, _) = patch(
            &api2,
            &format!("/v1/webhook-endpoints/{id}"),
            json!({"enabled": false}),
        )
        .await;
        assert_eq!(s, 404);
        let (s, _) = api2.delete(&format!("/v1/webhook-endpoints/{id}")).await;
        assert_eq!(s, 404);
        let (s, l) = api2.get("/v1/webhook-endpoints").await;
        assert_eq!((s, l["data"].as_array().unwrap().len()), (200, 0));
    }
    for path in [
        "/v1/webhook-deliveries/dlv_999999999",
        "/v1/webhook-deliveries/nope",
    ] {
        let (s, err) = api.get(path).await;
        assert_eq!(
            (s, err["error"]["code"].as_str()),
            (404, Some("delivery_not_found")),
            "{path}"
        );
    }

    // gRPC: the same core.
    let mut grpc = pb::webhook_service_client::WebhookServiceClient::connect(gw.base.clone())
        .await
        .unwrap();
    let e2 = grpc
        .create_webhook_endpoint(authed(
            pb::CreateWebhookEndpointRequest {
                url: rx.url(),
                events: vec!["qr.updated".into()],
                ..Default::default()
            },
            &acme.test,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        e2.signing_secret
            .as_deref()
            .unwrap_or("")
            .starts_with("whsec_")
    );
    let err = grpc
        .get_webhook_endpoint(authed(
            pb::GetWebhookEndpointRequest { id: e2.id.clone() },
            &other.test,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = grpc
        .create_webhook_endpoint(authed(
            pb::CreateWebhookEndpointRequest {
                url: "http://169.254.169.254/latest/meta-data".into(),
                ..Default::default()
            },
            &acme.test,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Update over gRPC: a list field set to empty returns to "all events" / the server's schedule.
    let up = grpc
        .update_webhook_endpoint(authed(
            pb::UpdateWebhookEndpointRequest {
                id: e2.id.clone(),
                events: Some(pb::StringList { values: vec![] }),
                retry_schedule: Some(pb::StringList {
                    values: vec!["5s".into()],
                }),
                description: Some("grpc".into()),
                ..Default::default()
            },
            &acme.test,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(up.events.is_empty() && up.signing_secret.is_none());
    assert_eq!(
        (up.retry_schedule, up.description),
        (vec!["5s".to_string()], "grpc".to_string())
    );
    let listed = grpc
        .list_webhook_endpoints(authed(pb::ListWebhookEndpointsRequest {}, &acme.test))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.data.len(), 2);

    let (s, _) = api.delete(&format!("/v1/webhook-endpoints/{id}")).await;
    assert_eq!(s, 200);
    let (s, _) = api.get(&format!("/v1/webhook-endpoints/{id}")).await;
    assert_eq!(s, 404);
    gw.stop().await;
    db.drop_db().await;
}

/// Every request is signed as contract §7 says (checked by Python's hmac), carries the envelope, and is
/// recorded as a successful delivery with its attempt. After a rotation both secrets sign; once the old one
/// expires only the new one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deliveries_verified_independently_and_rotation() {
    let db = TestDb::new();
    let mut cfg = webhook_config(&db);
    // Nothing here is retried: every delivery must come from the commit's NOTIFY waking the dispatcher, not
    // from its poll.
    cfg.webhook_poll_ms = 60_000;
    let gw = Gw::start(cfg).await;
    let k = gw.customer("acme").await;
    let api = Api::new(&gw.base, &k.test);
    let rx = Receiver::start().await;
    let (ep, secret) = create_endpoint(&api, json!({"url": rx.url()})).await;
    let msgs = Receiver::start().await;
    let (msg_ep, _) =
        create_endpoint(&api, json!({"url": msgs.url(), "events": ["message.*"]})).await;

    let ch = api.connected_channel("signed").await;
    let log = rx
        .until("channel.connected", |l| {
            l.iter()
                .any(|r| r.h("x-whatisup-event") == "channel.connected")
        })
        .await;
    let pg = db.client().await;
    for r in &log {
        assert_eq!(r.h("content-type"), "application/json");
        assert!(
            r.h("user-agent").starts_with("whatisup/"),
            "{:?}",
            r.headers
        );
        let body = r.json();
        assert_eq!(r.h("webhook-id"), body["event_id"].as_str().unwrap());
        assert_eq!(
            r.h("x-whatisup-event-id"),
            body["event_id"].as_str().unwrap()
        );
        assert_eq!(r.h("x-whatisup-event"), body["event"].as_str().unwrap());
        assert_eq!(body["channel_id"], ch.as_str());
        assert_eq!(body["api_version"], "2026-04");
        // The body is the event's envelope, as the log holds it.
        let row = pg
            .query_one(
                "SELECT sequence, event FROM events WHERE event_id = $1",
                &[&body["event_id"].as_str().unwrap()],
            )
            .await
            .unwrap();
        assert_eq!(body["sequence"], row.get::<_, i64>(0));
        assert_eq!(body["event"], row.get::<_, String>(1));
        assert_eq!(
            verify(r, &[&secret]).await,
            vec![(true, true, 1)],
            "{:?}",
            r.headers
        );
    }
    // A tampered body does not verify.
    let mut bad = log[0].clone();
    bad.body.push(b' ');
    assert_eq!(verify(&bad, &[&secret]).await, vec![(false, false, 1)]);
    // The filter: only message.* reached the second endpoint.
    assert!(msgs.log().is_empty(), "no message event yet");

    inbound(&api, &ch, "hello").await;
    let got = msgs.until("message.received", |l| !l.is_empty()).await;
    assert_eq!(got[0].h("x-whatisup-event"), "message.received");
    let settled = deliveries_settled(&api, &msg_ep, 1).await;
    assert_eq!(settled[0]["status"], "success");
    let did = settled[0]["id"].as_str().unwrap();
    let (s, d) = api.get(&format!("/v1/webhook-deliveries/{did}")).await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["attempts"][0]["http_status"], 200);
    assert_eq!(d["attempts"][0]["response_excerpt"], "thanks");
    assert_eq!(d["attempts"][0]["trigger"], "scheduled");
    let all = deliveries_settled(&api, &ep, log.len()).await;
    assert!(all.iter().all(|d| d["status"] == "success"), "{all:#?}");

    // Rotation: the new secret is shown once; both sign for 24 h.
    let (s, rot) = api
        .post(
            &format!("/v1/webhook-endpoints/{ep}/rotate-secret"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{rot}");
    let new_secret = rot["signing_secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    let before = rx.log().len();
    inbound(&api, &ch, "after rotation").await;
    let log = rx
        .until("a delivery after rotation", |l| l.len() > before)
        .await;
    let r = &log[before];
    assert_eq!(
        verify(r, &[&new_secret, &secret]).await,
        vec![(true, true, 2), (true, true, 2)],
        "both signatures: {:?}",
        r.headers
    );
    // The old secret's 24 h are over: only the new one signs.
    pg.execute(
        "UPDATE webhook_endpoints SET old_secret_expires_at = now() - interval '1 second' WHERE id = $1",
        &[&ep],
    )
    .await
    .unwrap();
    let before = rx.log().len();
    inbound(&api, &ch, "after expiry").await;
    let log = rx
        .until("a delivery after expiry", |l| l.len() > before)
        .await;
    let r = &log[before];
    assert_eq!(
        verify(r, &[&new_secret, &secret]).await,
        vec![(true, true, 1), (false, false, 1)],
        "{:?}",
        r.headers
    );

    // Redeliver: one more request with the same webhook-id, a manual attempt.
    let first_id = got[0].h("webhook-id").to_string();
    let (s, rd) = api
        .post(
            &format!("/v1/webhook-deliveries/{did}/redeliver"),
            json!({}),
        )
        .await;
    assert_eq!(s, 202, "{rd}");
    msgs.until("the redelivery", |l| {
        l.iter().filter(|r| r.h("webhook-id") == first_id).count() == 2
    })
    .await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (_, d) = api.get(&format!("/v1/webhook-deliveries/{did}")).await;
        if d["attempts"].as_array().unwrap().len() == 2 && d["status"] == "success" {
            assert_eq!(d["attempts"][1]["trigger"], "manual");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Metrics.
    let text = reqwest::get(format!("{}/metrics", gw.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("whatisup_webhook_attempts_total{outcome=\"success\"}"),
        "{text}"
    );
    assert!(text.contains("whatisup_webhook_queue_depth"), "{text}");
    assert!(
        text.contains("whatisup_webhook_delivery_latency_seconds"),
        "{text}"
    );
    gw.stop().await;
    db.drop_db().await;
}

/// 500, a timeout, 429 with Retry-After, then 200: the attempts follow the schedule and the delivery succeeds;
/// a redirect is a failed attempt (never followed); 410 disables the endpoint with an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_timeouts_retry_after_redirects_and_gone() {
    let db = TestDb::new();
    let gw = Gw::start(webhook_config(&db)).await;
    let k = gw.customer("acme").await;
    let api = Api::new(&gw.base, &k.test);
    let flaky = Receiver::start().await;
    flaky.script(&[
        Act::Status(500),
        Act::Sleep(Duration::from_secs(4)),
        Act::RetryAfter(429, 3),
        Act::Ok,
    ]);
    let (flaky_ep, _) = create_endpoint(
        &api,
        json!({"url": flaky.url(), "events": ["message.received"]}),
    )
    .await;
    let redirect = Receiver::start().await;
    redirect.default(Act::Redirect("http://10.0.0.1/steal"));
    let (redirect_ep, _) = create_endpoint(
        &api,
        json!({"url": redirect.url(), "events": ["message.received"], "retry_schedule": ["1s"]}),
    )
    .await;
    let gone = Receiver::start().await;
    gone.default(Act::Status(410));
    let (gone_ep, _) = create_endpoint(
        &api,
        json!({"url": gone.url(), "events": ["message.received"]}),
    )
    .await;
    // Receives the endpoint's disabled event.
    let ops = Receiver::start().await;
    let (_ops_ep, _) = create_endpoint(
        &api,
        json!({"url": ops.url(), "events": ["webhook_endpoint.*"]}),
    )
    .await;

    let ch = api.connected_channel("retries").await;
    inbound(&api, &ch, "one").await;

    let d = deliveries_settled(&api, &flaky_ep, 1).await;
    assert_eq!(d[0]["status"], "success", "{d:#?}");
    let (_, full) = api
        .get(&format!(
            "/v1/webhook-deliveries/{}",
            d[0]["id"].as_str().unwrap()
        ))
        .await;
    let attempts = full["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4, "{full:#}");
    assert_eq!(attempts[0]["http_status"], 500);
    assert_eq!(attempts[0]["error"], "HTTP 500");
    assert_eq!(attempts[1]["http_status"], Value::Null);
    assert!(
        attempts[1]["error"].as_str().unwrap().contains("timeout"),
        "{full:#}"
    );
    assert_eq!(attempts[2]["http_status"], 429);
    assert_eq!(attempts[3]["http_status"], 200);
    assert_eq!(full["attempt_count"], 4);
    // Every request of one delivery carries the same webhook-id.
    let ids: Vec<String> = flaky
        .log()
        .iter()
        .map(|r| r.h("webhook-id").to_string())
        .collect();
    assert!(
        ids.len() >= 4 && ids.iter().all(|i| *i == ids[0]),
        "{ids:?}"
    );
    // Retry-After: 3 (more than the 1 s schedule) was honoured, as the schedule written after that attempt shows.
    let pg = db.client().await;
    let gaps: Vec<f64> = pg
        .query(
            "SELECT extract(epoch FROM a.next_attempt_at - a.attempted_at)::float8 FROM webhook_attempts a
             JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1 AND a.next_attempt_at IS NOT NULL
             ORDER BY a.id",
            &[&flaky_ep],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(gaps.len(), 3, "{gaps:?}");
    assert!(gaps[0] >= 0.8 && gaps[0] <= 1.2, "1 s ±20 %: {gaps:?}");
    assert!(gaps[2] >= 3.0, "Retry-After honoured: {gaps:?}");

    // The redirect: two failed attempts (first try + one retry), both 302, never followed.
    let d = deliveries_settled(&api, &redirect_ep, 1).await;
    assert_eq!(d[0]["status"], "failed", "{d:#?}");
    let (_, full) = api
        .get(&format!(
            "/v1/webhook-deliveries/{}",
            d[0]["id"].as_str().unwrap()
        ))
        .await;
    let attempts = full["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{full:#}");
    for a in attempts {
        assert_eq!(a["http_status"], 302);
        assert!(a["error"].as_str().unwrap().contains("redirect"), "{a}");
    }

    // 410: the endpoint is disabled, with an event that reaches the other endpoint.
    let d = deliveries_settled(&api, &gone_ep, 1).await;
    assert_eq!(d[0]["status"], "failed");
    let (_, e) = api.get(&format!("/v1/webhook-endpoints/{gone_ep}")).await;
    assert_eq!(
        (&e["enabled"], &e["disabled_reason"]),
        (&json!(false), &json!("gone")),
        "{e}"
    );
    let log = ops
        .until("webhook_endpoint.disabled", |l| !l.is_empty())
        .await;
    let body = log[0].json();
    assert_eq!(body["event"], "webhook_endpoint.disabled");
    assert_eq!(body["data"]["endpoint_id"], gone_ep.as_str());
    assert_eq!(body["data"]["reason"], "gone");
    // A disabled endpoint gets no new deliveries.
    inbound(&api, &ch, "two").await;
    deliveries_settled(&api, &flaky_ep, 2).await;
    let (_, l) = api
        .get(&format!("/v1/webhook-deliveries?endpoint_id={gone_ep}"))
        .await;
    assert_eq!(l["data"].as_array().unwrap().len(), 1, "{l}");
    assert_eq!(gone.log().len(), 1, "no further request after 410");
    gw.stop().await;
    db.drop_db().await;
}

/// The receiver is down: attempts fail and are retried on the schedule; once it is up the delivery succeeds.
/// A delivery that exhausted its schedule is failed, and `recover` queues it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_then_up_and_recover() {
    let db = TestDb::new();
    let gw = Gw::start(webhook_config(&db)).await;
    let k = gw.customer("acme").await;
    let api = Api::new(&gw.base, &k.test);
    let rx = Receiver::down().await;
    let (ep, _) = create_endpoint(
        &api,
        json!({"url": rx.url(), "events": ["message.received"]}),
    )
    .await;
    let short = Receiver::down().await;
    let (short_ep, _) = create_endpoint(
        &api,
        json!({"url": short.url(), "events": ["message.received"], "retry_schedule": ["1s"]}),
    )
    .await;
    let ch = api.connected_channel("down").await;
    let since = chrono::Utc::now() - chrono::TimeDelta::minutes(1);
    inbound(&api, &ch, "while down").await;

    // At least two failed attempts are recorded while it is down.
    let pg = db.client().await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let n: i64 = pg
            .query_one(
                "SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
                 WHERE d.endpoint_id = $1 AND a.error LIKE 'connect error%'",
                &[&ep],
            )
            .await
            .unwrap()
            .get(0);
        if n >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed attempts recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, l) = api
        .get(&format!("/v1/webhook-deliveries?endpoint_id={ep}"))
        .await;
    assert_eq!(l["data"][0]["status"], "retrying", "{l}");
    rx.up().await;
    let log = rx.until("the delivery", |l| !l.is_empty()).await;
    assert_eq!(log[0].h("x-whatisup-event"), "message.received");
    let d = deliveries_settled(&api, &ep, 1).await;
    assert_eq!(d[0]["status"], "success");

    // The short schedule ran out: failed. Recover queues it again, and it is delivered.
    let d = deliveries_settled(&api, &short_ep, 1).await;
    assert_eq!(d[0]["status"], "failed", "{d:#?}");
    assert_eq!(d[0]["attempt_count"], 2);
    short.up().await;
    let (s, r) = api
        .post(
            &format!("/v1/webhook-endpoints/{short_ep}/recover"),
            json!({"since": whatisup::wkt::rfc3339(since)}),
        )
        .await;
    assert_eq!((s, &r["requeued"]), (202, &json!("1")), "{r}");
    short
        .until("the recovered delivery", |l| !l.is_empty())
        .await;
    let d = deliveries_settled(&api, &short_ep, 1).await;
    assert_eq!(d[0]["status"], "success", "{d:#?}");
    let (s, err) = api
        .post(
            &format!("/v1/webhook-endpoints/{short_ep}/recover"),
            json!({}),
        )
        .await;
    assert_eq!(
        (s, &err["error"]["details"]["field"]),
        (400, &json!("since"))
    );

    // Retention: finished deliveries older than the retention go, with their attempts; queued ones stay.
    let pg = db.client().await;
    pg.execute(
        "UPDATE webhook_deliveries SET updated_at = now() - interval '31 days' WHERE endpoint_id = $1",
        &[&ep],
    )
    .await
    .unwrap();
    let app = &gw.running.app;
    let dispatcher = whatisup::webhooks::dispatcher::Dispatcher::new(
        app.pool.clone(),
        app.webhooks.clone(),
        app.keys.clone(),
        app.metrics.clone(),
        "cleaner".into(),
        Arc::new(tokio::sync::Notify::new()),
    )
    .unwrap();
    assert_eq!(dispatcher.clean(30).await.unwrap(), 1);
    let left: i64 = pg
        .query_one(
            "SELECT (SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1)
                  + (SELECT count(*) FROM webhook_attempts a WHERE NOT EXISTS
                        (SELECT 1 FROM webhook_deliveries d WHERE d.id = a.delivery_id))",
            &[&ep],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the delivery and its attempts are gone");
    let (_, l) = api
        .get(&format!("/v1/webhook-deliveries?endpoint_id={short_ep}"))
        .await;
    assert_eq!(l["data"].as_array().unwrap().len(), 1, "recent ones stay");
    gw.stop().await;
    db.drop_db().await;
}

/// A slow receiver fills its host's share (per-host cap 1, so 4 held) and its host is saturated; the claims that
/// skip it (the per-endpoint claim) keep feeding the fast receiver, which gets everything while the slow one is
/// still working through its backlog; the slow one then gets every delivery too, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_does_not_hold_back_the_others() {
    let db = TestDb::new();
    let mut cfg = webhook_config(&db);
    cfg.webhook_per_host = 1;
    let gw = Gw::start(cfg).await;
    let k = gw.customer("acme").await;
    let api = Api::new(&gw.base, &k.test);
    let slow = Receiver::start().await;
    slow.default(Act::Sleep(Duration::from_millis(700)));
    let fast = Receiver::start().await;
    let (slow_ep, _) = create_endpoint(
        &api,
        json!({"url": slow.url(), "events": ["message.received"]}),
    )
    .await;
    let (fast_ep, _) = create_endpoint(
        &api,
        json!({"url": fast.url(), "events": ["message.received"]}),
    )
    .await;
    let ch = api.connected_channel("slow").await;
    const N: usize = 24;
    for i in 0..N {
        inbound(&api, &ch, &format!("m{i}")).await;
    }
    fast.until("every delivery at the fast receiver", |l| l.len() >= N)
        .await;
    // One request at a time, 0.7 s each: the slow receiver needs ≈17 s for its share.
    assert!(
        slow.log().len() < N,
        "the fast receiver finished only after the slow one"
    );
    let log = slow
        .until("every delivery at the slow receiver", |l| l.len() >= N)
        .await;
    let ids: std::collections::HashSet<String> = log
        .iter()
        .map(|r| r.json()["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), N, "each event once");
    for ep in [&slow_ep, &fast_ep] {
        let d = deliveries_settled(&api, ep, N).await;
        assert!(d.iter().all(|d| d["status"] == "success"), "{d:#?}");
    }
    gw.stop().await;
    db.drop_db().await;
}

/// An endpoint failing for longer than the window (shortened) is disabled with `webhook_endpoint.disabled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_is_disabled_after_the_window() {
    let db = TestDb::new();
    let mut cfg = webhook_config(&db);
    cfg.webhook_disable_after = "2s".into();
    let gw = Gw::start(cfg).await;
    let k = gw.customer("acme").await;
    let api = Api::new(&gw.base, &k.test);
    let rx = Receiver::start().await;
    rx.default(Act::Status(503));
    let (ep, _) = create_endpoint(
        &api,
        json!({"url": rx.url(), "events": ["message.received"]}),
    )
    .await;
    let ch = api.connected_channel("failing").await;
    let mut sse = Sse::open(&gw.base, "events=webhook_endpoint.*", &k.test, None).await;
    inbound(&api, &ch, "x").await;
    let got = sse
        .until(T, |f| f.event == "webhook_endpoint.disabled")
        .await;
    let ev = &got.last().unwrap().data;
    assert_eq!(ev["data"]["endpoint_id"], ep.as_str());
    assert_eq!(ev["data"]["reason"], "failing");
    let (_, e) = api.get(&format!("/v1/webhook-endpoints/{ep}")).await;
    assert_eq!(
        (&e["enabled"], &e["disabled_reason"]),
        (&json!(false), &json!("failing"))
    );
    let d = deliveries_settled(&api, &ep, 1).await;
    assert_eq!(d[0]["status"], "failed");
    // Enabled again by a person: the reason is cleared.
    let (s, e) = patch(
        &api,
        &format!("/v1/webhook-endpoints/{ep}"),
        json!({"enabled": true}),
    )
    .await;
    assert_eq!((s, &e["disabled_reason"]), (200, &Value::Null));
    gw.stop().await;
    db.drop_db().await;
}

/// SSRF: internal addresses are refused at creation unless allowed, and at every attempt (the check runs on
/// the resolved address the request would go to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_guard_at_create_and_at_attempt() {
    let db = TestDb::new();
    let mut cfg = webhook_config(&db);
    cfg.webhook_allow_cidrs = String::new();
    let gw = Gw::start(cfg).await;
    let k = gw.customer("acme").await;
    let api = Api::new(&gw.base, &k.test);
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://192.168.1.10/hook",
        "http://100.64.0.1/hook",
        "http://[::1]:9/hook",
        "http://[::ffff:127.0.0.1]:9/hook",
        "http://[fd00:ec2::254]/hook",
        "http://[fe80::1]/hook",
        "http://0.0.0.0:9/hook",
    ] {
        let (s, err) = api.post("/v1/webhook-endpoints", json!({"url": url})).await;
        assert_eq!(s, 400, "{url} must be refused: {err}");
        assert_eq!(err["error"]["code"], "invalid_request");
        assert_eq!(err["error"]["details"]["field"], "url", "{err}");
    }
    gw.stop().await;

    // Only 127.0.0.1 allowed: an endpoint whose address changes to another internal one is refused at the
    // attempt, and the refusal is recorded.
    let mut cfg = webhook_config(&db);
    cfg.webhook_allow_cidrs = "127.0.0.1/32".into();
    cfg.webhook_retry_schedule = "1s".into();
    let gw = Gw::start(cfg).await;
    let api = Api::new(&gw.base, &k.test);
    let rx = Receiver::start().await;
    let mut eps = Vec::new();
    let pg = db.client().await;
    for url in [
        format!("http://[::1]:{}/hook", rx.port),
        format!("http://[::ffff:127.0.0.2]:{}/hook", rx.port),
        format!("http://127.0.0.2:{}/hook", rx.port),
    ] {
        let (ep, _) = create_endpoint(
            &api,
            json!({"url": rx.url(), "events": ["message.received"]}),
        )
        .await;
        pg.execute(
            "UPDATE webhook_endpoints SET url = $2 WHERE id = $1",
            &[&ep, &url],
        )
        .await
        .unwrap();
        eps.push(ep);
    }
    let ch = api.connected_channel("ssrf").await;
    inbound(&api, &ch, "x").await;
    for ep in &eps {
        let d = deliveries_settled(&api, ep, 1).await;
        assert_eq!(d[0]["status"], "failed", "{d:#?}");
        let (_, full) = api
            .get(&format!(
                "/v1/webhook-deliveries/{}",
                d[0]["id"].as_str().unwrap()
            ))
            .await;
        for a in full["attempts"].as_array().unwrap() {
            assert_eq!(a["http_status"], Value::Null, "{a}");
            assert!(a["error"].as_str().unwrap().contains("refused"), "{a}");
        }
    }
    assert!(
        rx.log().is_empty(),
        "no request reached the receiver: {:?}",
        rx.log()
    );
    gw.stop().await;
    db.drop_db().await;
}

/// Two gateways on one database: every delivery is attempted exactly once (the receiver always answers 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_attempt_each_delivery_once() {
    let db = TestDb::new();
    let a = Gw::start(webhook_config(&db)).await;
    let b = Gw::start(webhook_config(&db)).await;
    let k = a.customer("acme").await;
    let api = Api::new(&a.base, &k.test);
    let rx = Receiver::start().await;
    let (ep, _) = create_endpoint(
        &api,
        json!({"url": rx.url(), "events": ["message.received"]}),
    )
    .await;
    let ch = api.connected_channel("two").await;
    let api_b = Api::new(&b.base, &k.test);
    const N: usize = 150;
    let mut tasks = Vec::new();
    for i in 0..N {
        let api = if i % 2 == 0 {
            api.clone()
        } else {
            api_b.clone()
        };
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            inbound(&api, &ch, &format!("m{i}")).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let d = deliveries_settled(&api, &ep, 100).await;
    assert!(d.iter().all(|d| d["status"] == "success"));
    let pg = db.client().await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let done: i64 = pg
            .query_one(
                "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'success'",
                &[&ep],
            )
            .await
            .unwrap()
            .get(0);
        if done == N as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{done} of {N} delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = rx.log();
    let mut ids: Vec<&str> = log.iter().map(|r| r.h("webhook-id")).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!((before, ids.len()), (N, N), "every event delivered once");
    let attempts: i64 = pg
        .query_one(
            "SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1",
            &[&ep],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, N as i64, "one attempt per delivery");
    a.stop().await;
    b.stop().await;
    db.drop_db().await;
}

/// kill -9 of the real binary while deliveries are due: a new process delivers every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_due_deliveries_loses_none() {
    let db = TestDb::new();
    let env = [
        ("WHATISUP_WEBHOOK_ALLOW_CIDRS", "127.0.0.0/8"),
        // Long enough that no delivery runs out of retries while the node is down.
        (
            "WHATISUP_WEBHOOK_RETRY_SCHEDULE",
            "1s,1s,1s,1s,1s,2s,2s,2s,5s,5s,5s,5s,5s,5s,5s,5s",
        ),
        // A claim left by the killed node is due again after the timeout plus a margin.
        ("WHATISUP_WEBHOOK_TIMEOUT_MS", "2000"),
        ("WHATISUP_WEBHOOK_POLL_MS", "100"),
    ];
    let mut a = Proc::spawn(&db, "node-a", &env).await;
    let (_, test) = a.bootstrap_keys().await;
    let api = Api::new(&a.base, &test);
    let rx = Receiver::down().await;
    let (ep, secret) = create_endpoint(&api, json!({"url": rx.url()})).await;
    let ch = api.connected_channel("k9").await;
    for i in 0..20 {
        inbound(&api, &ch, &format!("m{i}")).await;
    }
    let pg = db.client().await;
    // Some attempts failed (the receiver is down), so deliveries are retrying when the node dies.
    let deadline = tokio::time::Instant::now() + T;
    while pg
        .query_one("SELECT count(*) FROM webhook_attempts", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt before the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.kill9().await;
    rx.up().await;
    let b = Proc::spawn(&db, "node-b", &env).await;
    let expected: Vec<String> = pg
        .query(
            "SELECT event_id FROM events WHERE event <> 'webhook_endpoint.disabled' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(expected.len() >= 21, "{}", expected.len());
    let log = rx
        .until("every event delivered", |l| {
            expected
                .iter()
                .all(|id| l.iter().any(|r| r.h("webhook-id") == id))
        })
        .await;
    let api = Api::new(&b.base, &test);
    let d = deliveries_settled(&api, &ep, expected.len().min(100)).await;
    assert!(d.iter().all(|d| d["status"] == "success"), "{d:#?}");
    assert_eq!(verify(&log[0], &[&secret]).await, vec![(true, true, 1)]);
    b.terminate().await;
    db.drop_db().await;
}

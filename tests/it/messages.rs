//! Outbound messages: validation, the durable outbox, pacing, idempotency (client_ref and Idempotency-Key),
//! statuses from receipts, failures (revoke, logout, TTL), and exactly-once sends across kill -9.

use crate::util::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;
use whatisup::pb;

const T: Duration = Duration::from_secs(30);

/// Fast sends (pacing off) and a generous API bucket: the tests send hundreds of messages.
fn config(db: &TestDb) -> whatisup::config::Config {
    let mut c = test_config(db);
    c.send_rate_per_sec = 0.0;
    c.rate_limit_burst = 100_000;
    c.rate_limit_per_sec = 100_000;
    c.outbox_sweep_ms = 200;
    c
}

fn msgs(id: &str) -> String {
    format!("/v1/channels/{id}/messages")
}

fn text(to: &str, t: &str) -> Value {
    json!({"to": to, "type": "text", "text": t})
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client()
        .await
        .query_one(sql, &[])
        .await
        .expect("count")
        .get(0)
}

/// Polls the message until it has `status`.
async fn wait_message(api: &Api, ch: &str, mid: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (s, m) = api.get(&format!("{}/{mid}", msgs(ch))).await;
        assert_eq!(s, 200, "{m}");
        if m["status"] == status {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "message {mid} did not reach {status}: {m}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What the sandbox's simulated server accepted from the channel.
async fn accepted(api: &Api, ch: &str) -> Vec<Value> {
    let (s, r) = api
        .get(&format!("/v1/channels/{ch}/sandbox/outbound"))
        .await;
    assert_eq!(s, 200, "{r}");
    r["data"].as_array().cloned().unwrap_or_default()
}

fn history(m: &Value) -> Vec<String> {
    m["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| e["status"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_refused_sends_store_nothing() {
    let db = TestDb::new();
    let gw = Gw::start(config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.connected_channel("c").await;
    let to = "+15551230001";
    let cases: Vec<(Value, &str)> = vec![
        (json!({"type": "text", "text": "hi"}), "to"),
        (json!({"to": "hello", "type": "text", "text": "hi"}), "to"),
        (json!({"to": to, "text": "hi"}), "type"),
        (json!({"to": to, "type": "image", "text": "hi"}), "text"),
        (json!({"to": to, "type": "poll", "text": "hi"}), "type"),
        (json!({"to": to, "type": "text"}), "text"),
        (
            json!({"to": to, "type": "text", "text": "x".repeat(4097)}),
            "text",
        ),
        (json!({"to": to, "type": "text", "text": 5}), "text"),
        (
            json!({"to": to, "type": "text", "text": "hi", "colour": "red"}),
            "colour",
        ),
        (
            json!({"to": to, "type": "text", "text": "hi", "client_ref": "r".repeat(129)}),
            "client_ref",
        ),
        (
            json!({"to": to, "type": "text", "text": "hi", "reply_to": "msg_NOPE"}),
            "reply_to",
        ),
        (
            json!({"to": to, "type": "text", "text": "hi", "reply_to": "no spaces"}),
            "reply_to",
        ),
    ];
    for (body, field) in cases {
        let (s, r) = api.post(&msgs(&ch), body.clone()).await;
        assert_eq!(s, 400, "{body} → {r}");
        assert_eq!(r["error"]["code"], "invalid_request");
        assert_eq!(r["error"]["details"]["field"], field, "{body} → {r}");
    }
    let (s, r) = api.call(reqwest::Method::POST, &msgs(&ch), None).await;
    assert_eq!(s, 400, "an empty body: {r}");

    // Not connected: 409 in pending (and the other idle statuses), 404 for a channel that is not there.
    let idle = api.create_channel("idle").await;
    let (s, r) = api.post(&msgs(&idle), text(to, "hi")).await;
    assert_eq!(s, 409, "{r}");
    assert_eq!(r["error"]["code"], "not_connected");
    assert_eq!(r["error"]["details"]["status"], "pending");
    let (s, r) = api.post(&msgs("ch_01NOPE"), text(to, "hi")).await;
    assert_eq!(s, 404, "{r}");
    assert_eq!(r["error"]["code"], "channel_not_found");
    // Another customer's channel is not there either.
    let other = gw.customer("other").await;
    let (s, r) = Api::new(&gw.base, &other.test)
        .post(&msgs(&ch), text(to, "hi"))
        .await;
    assert_eq!(s, 404, "{r}");
    assert_eq!(count(&db, "SELECT count(*) FROM messages").await, 0);

    let (s, r) = api.get(&format!("{}/msg_01NOPE", msgs(&ch))).await;
    assert_eq!(s, 404, "{r}");
    assert_eq!(r["error"]["code"], "message_not_found");
    gw.stop().await;
    db.drop_db().await;
}

/// A text goes queued → sent, the sandbox receives it once, receipts move it to delivered and read (never
/// back), each as a `message.status` event, and GET shows the history. gRPC sees the same message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_is_sent_once_and_receipts_become_statuses() {
    let db = TestDb::new();
    let gw = Gw::start(config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.connected_channel("c").await;
    let mut sse = Sse::open(
        &gw.base,
        &format!("channel_id={ch}&events=message.*"),
        &keys.test,
        None,
    )
    .await;
    let (s, r) = api.post(&msgs(&ch), text("15551230002", "hello ✓")).await;
    assert_eq!(s, 202, "{r}");
    assert_eq!(r["status"], "queued");
    assert_eq!(r["client_ref"], Value::Null);
    let mid = r["message_id"].as_str().expect("id").to_string();
    assert!(mid.starts_with("msg_"), "{mid}");

    let frames = sse.until(T, |f| f.event == "message.sent").await;
    let sent = &frames.last().expect("sent").data["data"];
    assert_eq!(sent["message_id"], mid.as_str());
    assert_eq!(sent["to"], "+15551230002");
    let m = wait_message(&api, &ch, &mid, "sent").await;
    assert_eq!(history(&m), ["queued", "sent"]);
    assert_eq!(m["text"], "hello ✓");
    let wa_id = m["whatsapp_id"].as_str().expect("wa id").to_string();
    assert!(wa_id.starts_with("3EB0"), "{wa_id}");
    let got = accepted(&api, &ch).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["whatsapp_id"], wa_id.as_str());
    assert_eq!(got[0]["text"], "hello ✓");

    // Receipts name our id (the sandbox) or the WhatsApp id (the real engine); both find the message.
    for (id, status) in [(&mid, "delivered"), (&wa_id, "read"), (&mid, "delivered")] {
        let (s, r) = api
            .post(
                &format!("/v1/channels/{ch}/sandbox/receipt"),
                json!({"message_id": id, "status": status}),
            )
            .await;
        assert_eq!(s, 200, "{r}");
    }
    let frames = sse
        .until(T, |f| {
            f.event == "message.status" && f.data["data"]["status"] == "read"
        })
        .await;
    let statuses: Vec<&str> = frames
        .iter()
        .filter(|f| f.event == "message.status")
        .filter_map(|f| f.data["data"]["status"].as_str())
        .collect();
    assert_eq!(statuses, ["sent", "delivered", "read"]);
    let m = wait_message(&api, &ch, &mid, "read").await;
    assert_eq!(history(&m), ["queued", "sent", "delivered", "read"]);
    // The late "delivered" added nothing (and no event: the next one seen is the marker below).
    let (s, r) = api.post(&msgs(&ch), text("+15551230002", "marker")).await;
    assert_eq!(s, 202, "{r}");
    let next = sse.next(T).await.expect("an event");
    assert_eq!(next.event, "message.sent", "{next:?}");

    // A reply quoting our message.
    let (s, r) = api
        .post(
            &msgs(&ch),
            json!({"to": "+15551230002", "type": "text", "text": "re", "reply_to": mid}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let reply = r["message_id"].as_str().expect("id").to_string();
    let m = wait_message(&api, &ch, &reply, "sent").await;
    assert_eq!(m["reply_to"], mid.as_str());

    // gRPC: the same core.
    let mut grpc = pb::message_service_client::MessageServiceClient::connect(gw.base.clone())
        .await
        .expect("grpc");
    let sent = grpc
        .send_message(authed(
            pb::SendMessageRequest {
                channel_id: ch.clone(),
                to: "+15551230003".into(),
                r#type: "text".into(),
                text: "over gRPC".into(),
                client_ref: Some("g-1".into()),
                ..Default::default()
            },
            &keys.test,
        ))
        .await
        .expect("send")
        .into_inner();
    assert_eq!(sent.status, "queued");
    let got = grpc
        .get_message(authed(
            pb::GetMessageRequest {
                channel_id: ch.clone(),
                message_id: sent.message_id.clone(),
            },
            &keys.test,
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.text, "over gRPC");
    assert_eq!(got.client_ref.as_deref(), Some("g-1"));
    let err = grpc
        .send_message(authed(
            pb::SendMessageRequest {
                channel_id: ch.clone(),
                to: "nope".into(),
                r#type: "text".into(),
                text: "x".into(),
                ..Default::default()
            },
            &keys.test,
        ))
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    gw.stop().await;
    db.drop_db().await;
}

/// Sent while the channel is reconnecting: accepted as queued, and sent once the session is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_while_reconnecting_goes_out_after_resume() {
    let db = TestDb::new();
    let gw = Gw::start(config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.connected_channel("c").await;
    let (s, r) = api
        .post(
            &format!("/v1/channels/{ch}/sandbox/drop"),
            json!({"duration_ms": 2000}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    api.wait_status(&ch, "reconnecting", T).await;
    let mut ids = vec![];
    for i in 0..5 {
        let (s, r) = api
            .post(&msgs(&ch), text("+15551230004", &format!("while away {i}")))
            .await;
        assert_eq!(s, 202, "{r}");
        assert_eq!(r["status"], "queued");
        ids.push(r["message_id"].as_str().expect("id").to_string());
    }
    // Nothing reaches the network while the channel is away.
    let early = accepted(&api, &ch).await.len();
    if api.channel(&ch).await["status"] == "reconnecting" {
        assert_eq!(early, 0, "sent while reconnecting");
    }
    api.wait_status(&ch, "connected", T).await;
    for id in &ids {
        wait_message(&api, &ch, id, "sent").await;
    }
    let got: Vec<String> = accepted(&api, &ch)
        .await
        .iter()
        .map(|a| a["text"].as_str().unwrap_or_default().to_string())
        .collect();
    let want: Vec<String> = (0..5).map(|i| format!("while away {i}")).collect();
    assert_eq!(got, want, "each once, in order");
    gw.stop().await;
    db.drop_db().await;
}

/// The per-channel outbox cap holds under concurrent sends (they are committed in shared transactions): exactly
/// the cap is accepted while the channel is away, the rest get 429 `rate_limited`; the counter follows the queue
/// down as it drains, and sends are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_cap_holds_under_concurrent_sends() {
    let db = TestDb::new();
    let mut cfg = config(&db);
    cfg.outbox_max_per_channel = 7;
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.connected_channel("c").await;
    let (s, r) = api
        .post(
            &format!("/v1/channels/{ch}/sandbox/drop"),
            json!({"duration_ms": 4000}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    api.wait_status(&ch, "reconnecting", T).await;
    let results = futures::future::join_all((0..40).map(|i| {
        let (api, path) = (&api, msgs(&ch));
        async move {
            api.post(&path, text("+15551230009", &format!("cap {i}")))
                .await
        }
    }))
    .await;
    assert_eq!(
        api.channel(&ch).await["status"],
        "reconnecting",
        "the channel came back during the burst; the test needs a longer drop"
    );
    let mut ids = vec![];
    for (s, r) in &results {
        match s {
            202 => ids.push(r["message_id"].as_str().expect("id").to_string()),
            429 => assert_eq!(r["error"]["code"], "rate_limited", "{r}"),
            _ => panic!("unexpected answer {s}: {r}"),
        }
    }
    assert_eq!(ids.len(), 7, "exactly the cap is accepted");
    let c = db.client().await;
    let queued = || async {
        let counter: i64 = c
            .query_opt(
                "SELECT queued FROM outbox_counts WHERE channel_id = $1",
                &[&ch],
            )
            .await
            .expect("counter")
            .map(|r| r.get(0))
            .unwrap_or(0);
        let real: i64 = c
            .query_one(
                "SELECT count(*) FROM messages WHERE channel_id = $1 AND rank = 0",
                &[&ch],
            )
            .await
            .expect("count")
            .get(0);
        (counter, real)
    };
    assert_eq!(queued().await, (7, 7));
    api.wait_status(&ch, "connected", T).await;
    for id in &ids {
        wait_message(&api, &ch, id, "sent").await;
    }
    assert_eq!(queued().await, (0, 0));
    let (s, r) = api.post(&msgs(&ch), text("+15551230009", "after")).await;
    assert_eq!(s, 202, "{r}");
    wait_message(&api, &ch, r["message_id"].as_str().expect("id"), "sent").await;
    assert_eq!(
        accepted(&api, &ch).await.len(),
        8,
        "each accepted send once"
    );
    gw.stop().await;
    db.drop_db().await;
}

async fn post_with_key(api: &Api, path: &str, key: &str, body: &Value) -> (u16, Value, bool) {
    let resp = api
        .http
        .post(format!("{}{path}", api.base))
        .bearer_auth(&api.key)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("request");
    let s = resp.status().as_u16();
    let replayed = resp.headers().contains_key("idempotent-replayed");
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (s, v, replayed)
}

/// The same client_ref (whatever the body) answers the original message; Idempotency-Key replays the stored
/// answer for the same body, refuses another body, and lets only one of concurrent duplicates run. The header
/// works on any POST route (here: channel creation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ref_and_idempotency_key() {
    let db = TestDb::new();
    let gw = Gw::start(config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.connected_channel("c").await;
    let to = "+15551230005";

    let body = json!({"to": to, "type": "text", "text": "once", "client_ref": "order-1"});
    let (s, a) = api.post(&msgs(&ch), body).await;
    assert_eq!(s, 202, "{a}");
    assert_eq!(a["client_ref"], "order-1");
    let (s, b) = api
        .post(
            &msgs(&ch),
            json!({"to": to, "type": "text", "text": "twice?", "client_ref": "order-1"}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["message_id"], a["message_id"], "the original message");
    let mid = a["message_id"].as_str().expect("id");
    wait_message(&api, &ch, mid, "sent").await;
    let (_, c) = api
        .post(
            &msgs(&ch),
            json!({"to": to, "type": "text", "text": "once", "client_ref": "order-1"}),
        )
        .await;
    assert_eq!(c["message_id"], a["message_id"]);
    assert_eq!(c["status"], "sent", "a repeat shows where the original is");

    // Idempotency-Key: same body → the stored answer.
    let body = text(to, "keyed");
    let (s1, r1, rep1) = post_with_key(&api, &msgs(&ch), "k-1", &body).await;
    assert_eq!(s1, 202, "{r1}");
    assert!(!rep1);
    let (s2, r2, rep2) = post_with_key(&api, &msgs(&ch), "k-1", &body).await;
    assert_eq!((s2, &r2), (202, &r1));
    assert!(rep2, "marked as a replay");
    let (s3, r3, _) = post_with_key(&api, &msgs(&ch), "k-1", &text(to, "other")).await;
    assert_eq!(s3, 409, "{r3}");
    assert_eq!(r3["error"]["code"], "idempotency_conflict");
    // An error answer is stored too (the same request gives the same answer).
    let (s4, r4, _) = post_with_key(&api, &msgs(&ch), "k-bad", &text("nope", "x")).await;
    assert_eq!(s4, 400, "{r4}");
    let (s5, r5, rep5) = post_with_key(&api, &msgs(&ch), "k-bad", &text("nope", "x")).await;
    assert_eq!((s5, rep5), (400, true), "{r5}");

    // Concurrent duplicates: one runs, the others get its answer.
    let body = text(to, "concurrent");
    let mut tasks = vec![];
    for _ in 0..8 {
        let (api, body, path) = (api.clone(), body.clone(), msgs(&ch));
        tasks.push(tokio::spawn(async move {
            post_with_key(&api, &path, "k-2", &body).await
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        let (s, r, _) = t.await.expect("task");
        assert_eq!(s, 202, "{r}");
        ids.insert(r["message_id"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let n = count(
        &db,
        "SELECT count(*) FROM messages WHERE body->>'text' = 'concurrent'",
    )
    .await;
    assert_eq!(n, 1, "one message stored");

    // Any POST route: creating a channel twice with one key creates one channel.
    let (s, c1, _) = post_with_key(&api, "/v1/channels", "k-ch", &json!({"name": "keyed"})).await;
    assert_eq!(s, 201, "{c1}");
    let (s, c2, rep) = post_with_key(&api, "/v1/channels", "k-ch", &json!({"name": "keyed"})).await;
    assert_eq!((s, rep), (201, true));
    assert_eq!(c1["id"], c2["id"]);
    // Keys belong to the customer: another customer's identical key is its own.
    let other = gw.customer("other").await;
    let oapi = Api::new(&gw.base, &other.test);
    let (s, c3, rep) =
        post_with_key(&oapi, "/v1/channels", "k-ch", &json!({"name": "keyed"})).await;
    assert_eq!((s, rep), (201, false));
    assert_ne!(c3["id"], c1["id"]);
    let (s, r, _) = post_with_key(
        &api,
        "/v1/channels",
        &"k".repeat(300),
        &json!({"name": "x"}),
    )
    .await;
    assert_eq!(s, 400, "{r}");
    assert_eq!(r["error"]["details"]["field"], "Idempotency-Key");
    gw.stop().await;
    db.drop_db().await;
}

/// Queued sends fail when the phone revokes the device, or the channel is logged out or deleted; sent ones stay
/// sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_and_logout_fail_queued_sends() {
    let db = TestDb::new();
    let mut cfg = config(&db);
    // One message goes at once, the next would wait ~17 minutes: the rest stay queued.
    cfg.send_rate_per_sec = 0.001;
    cfg.send_burst = 1;
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    for how in ["revoke", "logout", "delete"] {
        let ch = api.connected_channel(how).await;
        let mut sse = Sse::open(
            &gw.base,
            &format!("channel_id={ch}&events=message.status"),
            &keys.test,
            None,
        )
        .await;
        let mut ids = vec![];
        for i in 0..3 {
            let (s, r) = api
                .post(&msgs(&ch), text("+15551230006", &format!("{how} {i}")))
                .await;
            assert_eq!(s, 202, "{r}");
            ids.push(r["message_id"].as_str().expect("id").to_string());
        }
        wait_message(&api, &ch, &ids[0], "sent").await;
        let (s, r) = match how {
            "revoke" => {
                api.post(&format!("/v1/channels/{ch}/sandbox/revoke"), json!({}))
                    .await
            }
            "logout" => {
                api.post(&format!("/v1/channels/{ch}/logout"), json!({}))
                    .await
            }
            _ => api.delete(&format!("/v1/channels/{ch}")).await,
        };
        assert!(s == 200 || s == 202, "{r}");
        let mut failed = HashSet::new();
        while failed.len() < 2 {
            let f = sse.next(T).await.expect("message.status failed");
            if f.data["data"]["status"] == "failed" {
                assert_eq!(f.data["data"]["error"]["code"], "channel_unlinked", "{f:?}");
                failed.insert(
                    f.data["data"]["message_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
        assert_eq!(failed, ids[1..].iter().cloned().collect::<HashSet<_>>());
        if how == "delete" {
            // A deleted channel is gone from the API; its messages too.
            let (s, _) = api.get(&format!("{}/{}", msgs(&ch), ids[1])).await;
            assert_eq!(s, 404);
            continue;
        }
        api.wait_status(&ch, "disconnected", T).await;
        let m = wait_message(&api, &ch, &ids[1], "failed").await;
        assert_eq!(m["error"]["code"], "channel_unlinked");
        assert_eq!(history(&m), ["queued", "failed"]);
        wait_message(&api, &ch, &ids[0], "sent").await;
        // A channel that is not connected takes no more sends.
        let (s, r) = api.post(&msgs(&ch), text("+15551230006", "late")).await;
        assert_eq!(s, 409, "{r}");
        assert_eq!(r["error"]["details"]["status"], "disconnected");
    }
    gw.stop().await;
    db.drop_db().await;
}

/// A message still queued when its TTL runs out fails with `expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_send_expires_after_its_ttl() {
    let db = TestDb::new();
    let mut cfg = config(&db);
    cfg.message_ttl_secs = 1;
    cfg.send_timeout_ms = 300;
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.connected_channel("c").await;
    let mut sse = Sse::open(
        &gw.base,
        &format!("channel_id={ch}&events=message.status"),
        &keys.test,
        None,
    )
    .await;
    let (s, r) = api
        .post(
            &format!("/v1/channels/{ch}/sandbox/drop"),
            json!({"duration_ms": 60000}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    api.wait_status(&ch, "reconnecting", T).await;
    let (s, r) = api.post(&msgs(&ch), text("+15551230007", "too late")).await;
    assert_eq!(s, 202, "{r}");
    let mid = r["message_id"].as_str().expect("id").to_string();
    let f = sse.next(T).await.expect("message.status");
    assert_eq!(f.data["data"]["message_id"], mid.as_str());
    assert_eq!(f.data["data"]["status"], "failed");
    assert_eq!(f.data["data"]["error"]["code"], "expired");
    let m = wait_message(&api, &ch, &mid, "failed").await;
    assert_eq!(history(&m), ["queued", "failed"]);
    assert!(accepted(&api, &ch).await.is_empty());
    gw.stop().await;
    db.drop_db().await;
}

/// Pacing: a burst goes at once, the rest at the configured rate, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_respects_the_rate_limit() {
    let db = TestDb::new();
    let mut cfg = config(&db);
    cfg.send_rate_per_sec = 5.0;
    cfg.send_burst = 2;
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.connected_channel("c").await;
    let n = 12;
    let mut last = String::new();
    for i in 0..n {
        let (s, r) = api
            .post(&msgs(&ch), text("+15551230008", &format!("p{i}")))
            .await;
        assert_eq!(s, 202, "{r}");
        last = r["message_id"].as_str().expect("id").to_string();
    }
    wait_message(&api, &ch, &last, "sent").await;
    let got = accepted(&api, &ch).await;
    let texts: Vec<&str> = got.iter().filter_map(|a| a["text"].as_str()).collect();
    let want: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    assert_eq!(texts, want, "in order, each once");
    let at = |a: &Value| {
        chrono::DateTime::parse_from_rfc3339(a["accepted_at"].as_str().unwrap_or_default())
            .expect("time")
    };
    // 12 sends, 2 at once, then 5/s: at least ~2 s from first to last (loosely: 1.5 s).
    let span = at(&got[n - 1]) - at(&got[0]);
    assert!(
        span >= chrono::Duration::milliseconds(1_500),
        "{n} sends took only {span:?}"
    );
    gw.stop().await;
    db.drop_db().await;
}

/// A channel's own pacing overrides the server's: here the server paces at one message per ~17 minutes, the
/// channel not at all. The override shows on the channel and is validated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_channel_pacing_overrides_the_default() {
    let db = TestDb::new();
    let mut cfg = config(&db);
    cfg.send_rate_per_sec = 0.001;
    cfg.send_burst = 1;
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    for (body, field) in [
        (
            json!({"name": "x", "send_rate_per_sec": -1}),
            "send_rate_per_sec",
        ),
        (json!({"name": "x", "send_burst": 0}), "send_burst"),
    ] {
        let (s, r) = api.post("/v1/channels", body).await;
        assert_eq!(s, 400, "{r}");
        assert_eq!(r["error"]["details"]["field"], field);
    }
    let (s, ch) = api
        .post(
            "/v1/channels",
            json!({"name": "fast", "send_rate_per_sec": 0, "send_burst": 1}),
        )
        .await;
    assert_eq!(s, 201, "{ch}");
    assert_eq!(ch["send_rate_per_sec"], 0.0);
    assert_eq!(ch["send_burst"], 1);
    let id = ch["id"].as_str().expect("id").to_string();
    let (s, r) = api.get(&format!("/v1/channels/{id}/qr?wait=10")).await;
    assert_eq!(s, 200, "{r}");
    let (s, r) = api
        .post(&format!("/v1/channels/{id}/sandbox/scan"), json!({}))
        .await;
    assert_eq!(s, 200, "{r}");
    api.wait_status(&id, "connected", T).await;
    let mut last = String::new();
    for i in 0..5 {
        let (s, r) = api
            .post(&msgs(&id), text("+15551230011", &format!("f{i}")))
            .await;
        assert_eq!(s, 202, "{r}");
        last = r["message_id"].as_str().expect("id").to_string();
    }
    wait_message(&api, &id, &last, "sent").await;
    assert_eq!(accepted(&api, &id).await.len(), 5);
    // A channel without an override gets the default.
    let (_, plain) = api.post("/v1/channels", json!({"name": "plain"})).await;
    assert_eq!(plain["send_rate_per_sec"], Value::Null);
    gw.stop().await;
    db.drop_db().await;
}

/// 1,000 sends queued while the simulated network is down; kill -9 with all of them queued, restart, kill -9
/// again in the middle of the drain, restart: every message reaches the simulated server exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_1000_queued_sends_delivers_each_once() {
    let db = TestDb::new();
    let env: &[(&str, &str)] = &[
        ("WHATISUP_SEND_RATE_PER_SEC", "0"),
        ("WHATISUP_RATE_LIMIT_BURST", "100000"),
        ("WHATISUP_RATE_LIMIT_PER_SEC", "100000"),
        ("WHATISUP_OUTBOX_SWEEP_MS", "500"),
        // The network stays down while the sends are queued: no giving up meanwhile.
        ("WHATISUP_RECONNECT_MAX_ATTEMPTS", "100000"),
    ];
    let mut a = Proc::spawn(&db, "node-a", env).await;
    let (_, test) = a.bootstrap_keys().await;
    let api = Api::new(&a.base, &test);
    let ch = api.connected_channel("bulk").await;
    let (s, r) = api
        .post(
            &format!("/v1/channels/{ch}/sandbox/drop"),
            json!({"duration_ms": 600000}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    api.wait_status(&ch, "reconnecting", T).await;
    let n = 1_000;
    let mut tasks = vec![];
    for w in 0..10 {
        let (api, path) = (api.clone(), msgs(&ch));
        tasks.push(tokio::spawn(async move {
            for i in 0..n / 10 {
                let body = json!({"to": "+15551230009", "type": "text", "text": format!("bulk {w}-{i}"),
                                  "client_ref": format!("{w}-{i}")});
                let (s, r) = api.post(&path, body).await;
                assert_eq!(s, 202, "{r}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender");
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM messages WHERE status = 'queued'").await,
        n as i64
    );
    a.kill9().await;

    // The restarted node takes the channel over (its network is fine again) and starts draining.
    let b = Proc::spawn(&db, "node-b", env).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sent = count(&db, "SELECT count(*) FROM sandbox_accepted").await;
        if sent >= 100 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "drain did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.kill9().await;
    let c = Proc::spawn(&db, "node-c", env).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let sent = count(&db, "SELECT count(*) FROM messages WHERE status = 'sent'").await;
        if sent == n as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {sent} of {n} sent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pg = db.client().await;
    let row = pg
        .query_one(
            "SELECT count(*), count(DISTINCT wa_id), coalesce(sum(duplicates), 0)::int8 FROM sandbox_accepted",
            &[],
        )
        .await
        .expect("accepted");
    let (rows, distinct, dups): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((rows, distinct), (n as i64, n as i64), "each message once");
    // Only what was in flight at the crash (at most one read batch) was offered twice, and dropped.
    assert!(dups <= 100, "{dups} repeats");
    eprintln!("kill -9 test: {rows} accepted, {dups} repeats dropped by the simulated server");
    let unmatched = count(
        &db,
        "SELECT count(*) FROM messages m LEFT JOIN sandbox_accepted s ON s.wa_id = m.wa_id WHERE s.wa_id IS NULL",
    )
    .await;
    assert_eq!(unmatched, 0);
    let sent_events = count(
        &db,
        "SELECT count(*) FROM events WHERE event = 'message.sent'",
    )
    .await;
    assert_eq!(sent_events, n as i64, "one message.sent per message");
    let api = Api::new(&c.base, &test);
    assert_eq!(api.channel(&ch).await["status"], "connected");
    let _ = c.terminate().await;
    db.drop_db().await;
}

/// The process dies after the send and before `sent` is committed: the restarted node sends it again under the
/// same WhatsApp id, the simulated server drops the repeat, and the message is sent once.
#[cfg(feature = "fake-whatsapp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_send_and_commit_sends_once() {
    let db = TestDb::new();
    let mut a = Proc::spawn(&db, "node-a", &[("WHATISUP_SEND_RATE_PER_SEC", "0")]).await;
    let (_, test) = a.bootstrap_keys().await;
    let api = Api::new(&a.base, &test);
    let ch = api.connected_channel("crash").await;
    let _ = a.terminate().await;
    let a = Proc::spawn(
        &db,
        "node-a2",
        &[
            ("WHATISUP_SEND_RATE_PER_SEC", "0"),
            ("WHATISUP_TEST_CRASH_AFTER_SEND", "1"),
        ],
    )
    .await;
    let api = Api::new(&a.base, &test);
    api.wait_status(&ch, "connected", T).await;
    let (s, r) = api
        .post(&msgs(&ch), text("+15551230010", "exactly once"))
        .await;
    assert_eq!(s, 202, "{r}");
    let mid = r["message_id"].as_str().expect("id").to_string();
    let status = a.exited(T).await;
    assert!(!status.success(), "the injected crash: {status:?}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM messages WHERE status = 'queued'").await,
        1,
        "not marked sent"
    );
    let b = Proc::spawn(&db, "node-b", &[("WHATISUP_SEND_RATE_PER_SEC", "0")]).await;
    let api = Api::new(&b.base, &test);
    let m = wait_message(&api, &ch, &mid, "sent").await;
    assert_eq!(history(&m), ["queued", "sent"]);
    let got = accepted(&api, &ch).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0]["duplicates"], 1,
        "the re-send was recognised: {got:?}"
    );
    let _ = b.terminate().await;
    db.drop_db().await;
}

/// Location and reaction sends: strict validation (the field named, nothing stored), GET shows each kind's
/// fields, the simulated server receives what WhatsApp would (a reaction names its target by the WhatsApp key),
/// replies work for locations, and gRPC takes the same fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_and_reaction_sends() {
    let db = TestDb::new();
    let gw = Gw::start(config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.connected_channel("c").await;
    let to = "+15551230101";
    let loc = |extra: Value| {
        let mut b = json!({"to": to, "type": "location", "latitude": 52.52, "longitude": 13.405});
        if let (Value::Object(b), Value::Object(e)) = (&mut b, extra) {
            for (k, v) in e {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    b.insert(k, v);
                }
            }
        }
        b
    };
    let cases: Vec<(Value, &str)> = vec![
        (loc(json!({"latitude": null})), "latitude"),
        (loc(json!({"longitude": null})), "longitude"),
        (loc(json!({"latitude": 90.5})), "latitude"),
        (loc(json!({"latitude": -91})), "latitude"),
        (loc(json!({"longitude": 180.01})), "longitude"),
        (loc(json!({"longitude": "east"})), "longitude"),
        (loc(json!({"name": "n".repeat(257)})), "name"),
        (loc(json!({"address": "a".repeat(257)})), "address"),
        (loc(json!({"text": "hi"})), "text"),
        (loc(json!({"emoji": "👍"})), "emoji"),
        (loc(json!({"reply_to": "msg_NOPE"})), "reply_to"),
        (
            json!({"to": to, "type": "reaction", "emoji": "👍"}),
            "message_id",
        ),
        (
            json!({"to": to, "type": "reaction", "message_id": "msg_NOPE", "emoji": "👍"}),
            "message_id",
        ),
        (
            json!({"to": to, "type": "reaction", "message_id": "a b", "emoji": "👍"}),
            "message_id",
        ),
        (
            json!({"to": to, "type": "reaction", "message_id": "3EB0AA"}),
            "emoji",
        ),
        (
            json!({"to": to, "type": "reaction", "message_id": "3EB0AA", "emoji": "ok"}),
            "emoji",
        ),
        (
            json!({"to": to, "type": "reaction", "message_id": "3EB0AA", "emoji": "👍👍"}),
            "emoji",
        ),
        (
            json!({"to": to, "type": "reaction", "message_id": "3EB0AA", "emoji": "👍", "reply_to": "3EB0AB"}),
            "reply_to",
        ),
        (
            json!({"to": to, "type": "reaction", "message_id": "3EB0AA", "emoji": "👍", "latitude": 1}),
            "latitude",
        ),
        (
            json!({"to": to, "type": "text", "text": "hi", "latitude": 1}),
            "latitude",
        ),
    ];
    for (body, field) in cases {
        let (s, r) = api.post(&msgs(&ch), body.clone()).await;
        assert_eq!(s, 400, "{body} → {r}");
        assert_eq!(r["error"]["code"], "invalid_request");
        assert_eq!(r["error"]["details"]["field"], field, "{body} → {r}");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM messages").await, 0);

    // A location, with name and address.
    let (s, r) = api
        .post(
            &msgs(&ch),
            loc(json!({"name": "Fernsehturm", "address": "Panoramastraße 1A, Berlin"})),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let lid = r["message_id"].as_str().expect("id").to_string();
    let m = wait_message(&api, &ch, &lid, "sent").await;
    assert_eq!(m["type"], "location");
    assert_eq!(
        m["location"],
        json!({"latitude": 52.52, "longitude": 13.405, "name": "Fernsehturm", "address": "Panoramastraße 1A, Berlin"}),
        "{m}"
    );
    let got = accepted(&api, &ch).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["type"], "location");
    assert_eq!(got[0]["location"]["latitude"], 52.52);
    assert_eq!(got[0]["whatsapp_id"], m["whatsapp_id"]);

    // Extremes are valid; a reply with a location quotes our message.
    let (s, r) = api
        .post(
            &msgs(&ch),
            loc(json!({"latitude": -90, "longitude": 180, "reply_to": lid})),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let m = wait_message(&api, &ch, r["message_id"].as_str().expect("id"), "sent").await;
    assert_eq!(m["reply_to"], lid.as_str());
    assert_eq!(m["location"]["name"], Value::Null);

    // A reaction to our own message, by our id and by its WhatsApp id; then its removal.
    let (s, r) = api.post(&msgs(&ch), text(to, "react to me")).await;
    assert_eq!(s, 202, "{r}");
    let tid = r["message_id"].as_str().expect("id").to_string();
    let t = wait_message(&api, &ch, &tid, "sent").await;
    let t_wa = t["whatsapp_id"].as_str().expect("wa").to_string();
    // Every kind's fields are shown; those of other kinds as null.
    for k in ["location", "reaction"] {
        assert_eq!(t.get(k), Some(&Value::Null), "{t}");
    }
    let mut reactions = vec![];
    for (target, emoji) in [(&tid, "👍"), (&t_wa, "❤️"), (&tid, "👍🏽"), (&tid, "")] {
        let (s, r) = api
            .post(
                &msgs(&ch),
                json!({"to": to, "type": "reaction", "message_id": target, "emoji": emoji}),
            )
            .await;
        assert_eq!(s, 202, "{emoji} → {r}");
        let m = wait_message(&api, &ch, r["message_id"].as_str().expect("id"), "sent").await;
        assert_eq!(m["type"], "reaction");
        assert_eq!(
            m["reaction"],
            json!({"message_id": tid, "whatsapp_id": t_wa, "emoji": emoji}),
            "{m}"
        );
        reactions.push(m["whatsapp_id"].as_str().expect("wa").to_string());
    }
    let got = accepted(&api, &ch).await;
    for (i, wa) in reactions.iter().enumerate() {
        let a = got
            .iter()
            .find(|a| a["whatsapp_id"] == wa.as_str())
            .expect("accepted");
        assert_eq!(a["type"], "reaction");
        assert_eq!(a["reaction"]["message_id"], t_wa.as_str(), "{a}");
        assert_eq!(a["reaction"]["from_me"], true, "{a}");
        assert_eq!(a["reaction"]["emoji"], ["👍", "❤️", "👍🏽", ""][i]);
    }
    // A reaction to our message must go to the chat the message went to.
    let (s, r) = api
        .post(
            &msgs(&ch),
            json!({"to": "+15551230199", "type": "reaction", "message_id": tid, "emoji": "👍"}),
        )
        .await;
    assert_eq!(s, 400, "{r}");
    assert_eq!(r["error"]["details"]["field"], "message_id");

    // A reaction to a received message: its WhatsApp id, not ours.
    let (s, r) = api
        .post(
            &format!("/v1/channels/{ch}/sandbox/inbound"),
            json!({"from": to, "text": "hi there"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let rid = r["message_id"].as_str().expect("inbound id").to_string();
    let (s, r) = api
        .post(
            &msgs(&ch),
            json!({"to": to, "type": "reaction", "message_id": rid, "emoji": "🇩🇪"}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let m = wait_message(&api, &ch, r["message_id"].as_str().expect("id"), "sent").await;
    assert_eq!(m["reaction"]["message_id"], rid.as_str());
    assert_eq!(m["reaction"]["whatsapp_id"], rid.as_str());
    let got = accepted(&api, &ch).await;
    let a = got
        .iter()
        .find(|a| a["whatsapp_id"] == m["whatsapp_id"])
        .expect("accepted");
    assert_eq!(a["reaction"]["from_me"], false, "{a}");
    assert_eq!(a["reaction"]["message_id"], rid.as_str());

    // gRPC: the same fields.
    let mut grpc = pb::message_service_client::MessageServiceClient::connect(gw.base.clone())
        .await
        .expect("grpc");
    let sent = grpc
        .send_message(authed(
            pb::SendMessageRequest {
                channel_id: ch.clone(),
                to: to.into(),
                r#type: "location".into(),
                latitude: Some(-33.8568),
                longitude: Some(151.2153),
                name: Some("Opera House".into()),
                ..Default::default()
            },
            &keys.test,
        ))
        .await
        .expect("send")
        .into_inner();
    let got = grpc
        .get_message(authed(
            pb::GetMessageRequest {
                channel_id: ch.clone(),
                message_id: sent.message_id.clone(),
            },
            &keys.test,
        ))
        .await
        .expect("get")
        .into_inner();
    let l = got.location.expect("location");
    assert_eq!((l.latitude, l.longitude), (-33.8568, 151.2153));
    assert_eq!(l.name.as_deref(), Some("Opera House"));
    assert!(got.reaction.is_none());
    let err = grpc
        .send_message(authed(
            pb::SendMessageRequest {
                channel_id: ch.clone(),
                to: to.into(),
                r#type: "reaction".into(),
                message_id: Some(tid.clone()),
                emoji: Some("not one".into()),
                ..Default::default()
            },
            &keys.test,
        ))
        .await
        .expect_err("invalid emoji");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    gw.stop().await;
    db.drop_db().await;
}

/// The simulated phone sends a location (`message.received`, type location) and reactions (`message.reaction`):
/// a reaction to one of our sends names our id and its WhatsApp id, any other names the WhatsApp id. Each is
/// committed before the action answers (as the real engine commits before it acknowledges).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_location_and_reactions() {
    let db = TestDb::new();
    let gw = Gw::start(config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.connected_channel("c").await;
    let inbound = format!("/v1/channels/{ch}/sandbox/inbound");
    let from = "+15551230201";
    let stored = |event: &'static str, id: String| {
        let db = &db;
        async move {
            db.client()
                .await
                .query(
                    "SELECT data FROM events WHERE event = $1 AND (data->>'message_id' = $2 OR data->>'reaction_id' = $2)",
                    &[&event, &id],
                )
                .await
                .expect("events")
                .iter()
                .map(|r| r.get::<_, Value>(0))
                .collect::<Vec<_>>()
        }
    };

    for (body, field) in [
        (json!({"from": from, "type": "poll"}), "type"),
        (
            json!({"from": from, "type": "location", "longitude": 1}),
            "latitude",
        ),
        (
            json!({"from": from, "type": "location", "latitude": 1, "longitude": 200}),
            "longitude",
        ),
        (
            json!({"from": from, "type": "reaction", "emoji": "👍"}),
            "message_id",
        ),
        (
            json!({"from": from, "type": "reaction", "message_id": "3EB0AA", "emoji": "yes"}),
            "emoji",
        ),
        (
            json!({"from": from, "type": "reaction", "message_id": "3EB0AA"}),
            "emoji",
        ),
    ] {
        let (s, r) = api.post(&inbound, body.clone()).await;
        assert_eq!(s, 400, "{body} → {r}");
        assert_eq!(r["error"]["details"]["field"], field, "{body} → {r}");
    }

    let (s, r) = api
        .post(
            &inbound,
            json!({"from": from, "type": "location", "latitude": 48.8584, "longitude": 2.2945, "name": "Tour Eiffel"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let lid = r["message_id"].as_str().expect("id").to_string();
    // Committed before the answer.
    let got = stored("message.received", lid.clone()).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["type"], "location");
    assert_eq!(got[0]["from"], from);
    assert_eq!(
        got[0]["location"],
        json!({"latitude": 48.8584, "longitude": 2.2945, "name": "Tour Eiffel", "address": null})
    );

    // Reactions to our message (by our id and by its WhatsApp id), to a received one, and a removal.
    let (s, r) = api.post(&msgs(&ch), text(from, "like this")).await;
    assert_eq!(s, 202, "{r}");
    let mid = r["message_id"].as_str().expect("id").to_string();
    let m = wait_message(&api, &ch, &mid, "sent").await;
    let wa = m["whatsapp_id"].as_str().expect("wa").to_string();
    let mut sse = Sse::open(
        &gw.base,
        &format!("channel_id={ch}&events=message.reaction"),
        &keys.test,
        Some("0"),
    )
    .await;
    let cases = [
        (mid.as_str(), "👍", mid.as_str(), wa.as_str()),
        (wa.as_str(), "😂", mid.as_str(), wa.as_str()),
        (lid.as_str(), "🔥", lid.as_str(), lid.as_str()),
        (wa.as_str(), "", mid.as_str(), wa.as_str()),
    ];
    for (target, emoji, want_id, want_wa) in cases {
        let (s, r) = api
            .post(
                &inbound,
                json!({"from": from, "type": "reaction", "message_id": target, "emoji": emoji}),
            )
            .await;
        assert_eq!(s, 200, "{r}");
        let rid = r["message_id"].as_str().expect("id").to_string();
        let got = stored("message.reaction", rid.clone()).await;
        assert_eq!(got.len(), 1, "committed before the answer: {got:?}");
        let e = &got[0];
        assert_eq!(e["message_id"], want_id, "{e}");
        assert_eq!(e["whatsapp_id"], want_wa, "{e}");
        assert_eq!(e["emoji"], emoji);
        assert_eq!(e["from"], from);
        assert_eq!(e["reaction_id"], rid.as_str());
        assert!(
            stored("message.received", rid).await.is_empty(),
            "not a message"
        );
    }
    let frames = sse
        .until(T, |f| {
            f.event == "message.reaction" && f.data["data"]["emoji"] == ""
        })
        .await;
    let emojis: Vec<&str> = frames
        .iter()
        .filter_map(|f| f.data["data"]["emoji"].as_str())
        .collect();
    assert_eq!(emojis, ["👍", "😂", "🔥", ""]);
    gw.stop().await;
    db.drop_db().await;
}

/// Retention with short limits: a sent message, what the sandbox accepted and expired Idempotency-Key answers
/// are deleted (a backlog larger than one batch included); a queued message, a young message and a live key stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_deletes_expired_rows_in_batches() {
    let db = TestDb::new();
    let mut cfg = config(&db);
    // One send per channel goes out at once; the next waits 100 s (stays queued).
    cfg.send_rate_per_sec = 0.01;
    cfg.send_burst = 1;
    cfg.message_retention_secs = 3;
    cfg.sandbox_retention_secs = 3;
    cfg.cleanup_interval_secs = 1;
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.connected_channel("c").await;
    let (_, r) = api.post(&msgs(&ch), text("+15551239101", "old")).await;
    let old = r["message_id"].as_str().expect("id").to_string();
    wait_message(&api, &ch, &old, "sent").await;
    let (_, r) = api.post(&msgs(&ch), text("+15551239101", "queued")).await;
    let queued = r["message_id"].as_str().expect("id").to_string();
    let c = db.client().await;
    c.execute(
        "INSERT INTO idempotency_keys (customer_id, key, request_hash, expires_at)
         SELECT $1, 'expired-' || i, '\\x00', now() - interval '1 minute' FROM generate_series(1, 2500) i",
        &[&keys.customer_id],
    )
    .await
    .expect("expired keys");
    c.execute(
        "INSERT INTO idempotency_keys (customer_id, key, request_hash, expires_at)
         VALUES ($1, 'live', '\\x00', now() + interval '1 hour')",
        &[&keys.customer_id],
    )
    .await
    .expect("live key");

    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (s, _) = api.get(&format!("{}/{old}", msgs(&ch))).await;
        let accepted = count(&db, "SELECT count(*) FROM sandbox_accepted").await;
        if s == 404 && accepted == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not cleaned up: GET {s}, {accepted} accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM idempotency_keys WHERE key LIKE 'expired-%'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM idempotency_keys WHERE key = 'live'"
        )
        .await,
        1
    );
    let m = wait_message(&api, &ch, &queued, "queued").await;
    assert_eq!(m["text"], "queued", "a queued message is kept however old");

    // A young message stays until it is past the retention.
    let ch2 = api.connected_channel("c2").await;
    let (_, r) = api.post(&msgs(&ch2), text("+15551239102", "young")).await;
    let young = r["message_id"].as_str().expect("id").to_string();
    wait_message(&api, &ch2, &young, "sent").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (s, _) = api.get(&format!("{}/{young}", msgs(&ch2))).await;
    assert_eq!(s, 200, "deleted before its retention");
    gw.stop().await;
    db.drop_db().await;
}

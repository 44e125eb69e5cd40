use crate::util::*;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// The whole lifecycle on the sandbox: every status, reason, event and sequence number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_on_the_sandbox() {
    let db = TestDb::new();
    let gw = Gw::start(test_config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);

    let (s, ch) = api
        .post(
            "/v1/channels",
            json!({"name": "support", "metadata": {"team": "eu"}}),
        )
        .await;
    assert_eq!(s, 201, "{ch}");
    let id = ch["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ch_") && id.len() == 29, "{id}");
    assert_eq!(ch["status"], "pending");
    assert_eq!(ch["engine"], "sandbox");
    assert_eq!(ch["metadata"], json!({"team": "eu"}));
    assert!(
        ch["phone_number"].is_null() && ch["status_reason"].is_null() && ch["deleted_at"].is_null()
    );
    assert!(ch["created_at"].as_str().unwrap().ends_with('Z'));

    let mut sse = Sse::open(&gw.base, &format!("channel_id={id}"), &keys.test, None).await;

    // The QR starts the session lazily from pending.
    let (s, qr) = api.get(&format!("/v1/channels/{id}/qr?wait=10")).await;
    assert_eq!(s, 200, "{qr}");
    assert!(qr["qr"].as_str().unwrap().starts_with("2@"));
    assert!(
        qr["png"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,iVBOR")
    );
    assert!(qr["expires_at"].as_str().unwrap().ends_with('Z'));
    let frames = sse.until(T, |f| f.event == "qr.updated").await;
    assert_eq!(
        transitions(&frames),
        vec![
            ("pending".into(), "connecting".into(), json!(null)),
            ("connecting".into(), "qr".into(), json!(null))
        ]
    );
    assert_eq!(frames.last().unwrap().data["data"]["qr"], qr["qr"]);

    // Scan with the simulated phone.
    let (s, r) = api
        .post(
            &format!("/v1/channels/{id}/sandbox/scan"),
            json!({"phone_number": "+15551234567"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let more = sse.until(T, |f| f.event == "channel.connected").await;
    assert_eq!(
        transitions(&more),
        vec![
            ("qr".into(), "connecting".into(), json!(null)),
            ("connecting".into(), "connected".into(), json!(null))
        ]
    );
    assert_eq!(
        more.last().unwrap().data["data"]["phone_number"],
        "+15551234567"
    );
    let ch = api.channel(&id).await;
    assert_eq!(ch["status"], "connected");
    assert_eq!(ch["phone_number"], "+15551234567");
    assert!(ch["last_connected_at"].is_string());
    let (s, e) = api.get(&format!("/v1/channels/{id}/qr")).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("no_qr")));
    let (s, e) = api
        .post(&format!("/v1/channels/{id}/connect"), json!({}))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("invalid_lifecycle_transition"))
    );

    // Sealed keys are stored, and not in clear.
    let pg = db.client().await;
    let sealed: Vec<u8> = pg
        .query_one(
            "SELECT sealed FROM session_state WHERE channel_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !String::from_utf8_lossy(&sealed).contains("+15551234567"),
        "session state is sealed"
    );

    // A network blip: reconnecting, then connected again by itself.
    let (s, _) = api
        .post(
            &format!("/v1/channels/{id}/sandbox/drop"),
            json!({"duration_ms": 300}),
        )
        .await;
    assert_eq!(s, 200);
    let blip = sse.until(T, |f| f.event == "channel.connected").await;
    assert_eq!(
        transitions(&blip),
        vec![
            ("connected".into(), "reconnecting".into(), json!("network")),
            ("reconnecting".into(), "connected".into(), json!(null))
        ]
    );
    let disc = blip
        .iter()
        .find(|f| f.event == "channel.disconnected")
        .expect("channel.disconnected on a blip");
    assert_eq!(disc.data["data"]["reason"], "network");

    // An inbound message, committed before the phone is told it arrived.
    let (s, r) = api
        .post(
            &format!("/v1/channels/{id}/sandbox/inbound"),
            json!({"from": "+15550001111", "text": "hello"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let mid = r["message_id"].as_str().unwrap().to_string();
    let got = sse.until(T, |f| f.event == "message.received").await;
    let m = &got.last().unwrap().data["data"];
    assert_eq!(
        (
            m["message_id"].as_str(),
            m["from"].as_str(),
            m["text"].as_str(),
            m["type"].as_str()
        ),
        (
            Some(mid.as_str()),
            Some("+15550001111"),
            Some("hello"),
            Some("text")
        )
    );
    let (s, _) = api
        .post(
            &format!("/v1/channels/{id}/sandbox/receipt"),
            json!({"message_id": mid, "status": "read"}),
        )
        .await;
    assert_eq!(s, 200);
    let got = sse.until(T, |f| f.event == "message.status").await;
    assert_eq!(got.last().unwrap().data["data"]["status"], "read");

    // Revoked on the phone: disconnected, keys wiped, a new QR available.
    let (s, _) = api
        .post(&format!("/v1/channels/{id}/sandbox/revoke"), json!({}))
        .await;
    assert_eq!(s, 200);
    let rv = sse.until(T, is_status("disconnected")).await;
    assert_eq!(
        transitions(&rv),
        vec![("connected".into(), "disconnected".into(), json!("logout"))]
    );
    let ch = api.wait_status(&id, "disconnected", T).await;
    assert_eq!(ch["status_reason"], "logout");
    let n: i64 = pg
        .query_one(
            "SELECT count(*) FROM session_state WHERE channel_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "keys wiped");
    let n: i64 = pg
        .query_one(
            "SELECT count(*) FROM session_leases WHERE channel_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "lease released");
    let (s, qr2) = api.get(&format!("/v1/channels/{id}/qr?wait=10")).await;
    assert_eq!(s, 200, "{qr2}");
    assert_ne!(qr2["qr"], qr["qr"]);

    // Every event of the channel, in order, sequence 1..n without a gap, in the log as on the stream.
    let rows = pg
        .query(
            "SELECT sequence, event FROM events WHERE channel_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .unwrap();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.get::<_, i64>(0), i as i64 + 1, "sequence without gaps");
    }
    let seen: Vec<i64> = [frames, more, blip, got, rv]
        .concat()
        .iter()
        .map(|f| f.data["sequence"].as_i64().unwrap())
        .collect();
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "ordered: {seen:?}");

    // Logout from the API, then delete.
    api.wait_status(&id, "qr", T).await;
    let (s, ch) = api
        .post(&format!("/v1/channels/{id}/logout"), json!({}))
        .await;
    assert_eq!(s, 202, "{ch}");
    assert_eq!(
        (ch["status"].as_str(), ch["status_reason"].as_str()),
        (Some("disconnected"), Some("logout"))
    );
    let (s, e) = api
        .post(&format!("/v1/channels/{id}/logout"), json!({}))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("invalid_lifecycle_transition"))
    );
    let (s, ch) = api.delete(&format!("/v1/channels/{id}")).await;
    assert_eq!(s, 200);
    assert!(ch["deleted_at"].is_string());
    let (s, e) = api.get(&format!("/v1/channels/{id}")).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("channel_not_found"))
    );
    let audit: i64 = pg
        .query_one("SELECT count(*) FROM audit_events WHERE channel_id = $1 AND action = 'channel.deleted'", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(audit, 1);

    drop(sse);
    gw.stop().await;
    db.drop_db().await;
}

/// Unscanned QR codes: back to pending with qr_timeout, not an endless loop. Ban: failed / banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_timeout_ban_and_retries_exhausted() {
    let db = TestDb::new();
    let mut cfg = test_config(&db);
    cfg.sandbox_qr_ttl_ms = 200;
    cfg.sandbox_qr_count = 2;
    cfg.reconnect_max_attempts = 3;
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);

    let id = api.create_channel("timeout").await;
    let mut sse = Sse::open(&gw.base, &format!("channel_id={id}"), &keys.test, None).await;
    let (s, c) = api
        .post(&format!("/v1/channels/{id}/connect"), json!({}))
        .await;
    assert_eq!((s, c["status"].as_str()), (202, Some("connecting")));
    let frames = sse.until(T, is_status("pending")).await;
    assert_eq!(
        frames.iter().filter(|f| f.event == "qr.updated").count(),
        2,
        "QR rotated once, then gave up"
    );
    assert_eq!(transitions(&frames).last().unwrap().2, json!("qr_timeout"));
    assert_eq!(api.channel(&id).await["status_reason"], "qr_timeout");

    // Ban: failed / banned, with the expiry in the event.
    let id = api.create_channel("banned").await;
    api.get(&format!("/v1/channels/{id}/qr")).await;
    api.post(&format!("/v1/channels/{id}/sandbox/scan"), json!({}))
        .await;
    api.wait_status(&id, "connected", T).await;
    let mut sse = Sse::open(&gw.base, &format!("channel_id={id}"), &keys.test, None).await;
    let (s, _) = api
        .post(&format!("/v1/channels/{id}/sandbox/ban"), json!({}))
        .await;
    assert_eq!(s, 200);
    let f = sse.until(T, is_status("failed")).await;
    let last = &f
        .iter()
        .rfind(|f| f.event == "channel.status_changed")
        .unwrap()
        .data["data"];
    assert_eq!(last["reason"], "banned");
    assert!(last["banned_until"].is_string());

    // A drop longer than the retries: failed / retries_exhausted; connect brings it back with its keys.
    let (s, c) = api
        .post(&format!("/v1/channels/{id}/connect"), json!({}))
        .await;
    assert_eq!(s, 202, "{c}");
    api.wait_status(&id, "connected", T).await;
    let (s, _) = api
        .post(
            &format!("/v1/channels/{id}/sandbox/drop"),
            json!({"duration_ms": 60000}),
        )
        .await;
    assert_eq!(s, 200);
    let f = sse.until(T, is_status("failed")).await;
    assert_eq!(
        transitions(&f).last().unwrap().2,
        json!("retries_exhausted")
    );

    gw.stop().await;
    db.drop_db().await;
}

/// A pair code instead of a QR scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_code_pairing() {
    let db = TestDb::new();
    let gw = Gw::start(test_config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let id = api.create_channel("pair").await;
    let (s, e) = api
        .post(
            &format!("/v1/channels/{id}/pair-code"),
            json!({"phone_number": "5551234"}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["details"]["field"].as_str()),
        (400, Some("phone_number"))
    );
    let (s, r) = api
        .post(
            &format!("/v1/channels/{id}/pair-code"),
            json!({"phone_number": "+15557654321"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let code = r["code"].as_str().unwrap();
    assert_eq!(code.len(), 9);
    assert_eq!(&code[4..5], "-");
    assert!(r["expires_at"].as_str().unwrap().ends_with('Z'));
    api.post(&format!("/v1/channels/{id}/sandbox/scan"), json!({}))
        .await;
    let ch = api.wait_status(&id, "connected", T).await;
    assert_eq!(
        ch["phone_number"], "+15557654321",
        "pairs as the number the code was requested for"
    );
    gw.stop().await;
    db.drop_db().await;
}

use crate::util::*;
use serde_json::json;

fn field(r: &(u16, serde_json::Value)) -> (u16, &str, &str) {
    (
        r.0,
        r.1["error"]["code"].as_str().unwrap_or(""),
        r.1["error"]["details"]["field"].as_str().unwrap_or(""),
    )
}

async fn raw_post(base: &str, key: &str, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_error_and_writes_nothing() {
    let db = TestDb::new();
    let gw = Gw::start(test_config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let pg = db.client().await;
    let count = || async {
        pg.query_one("SELECT count(*) FROM channels", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = count().await;

    let r = raw_post(
        &gw.base,
        &keys.test,
        "/v1/channels",
        b"{\"name\": ".to_vec(),
    )
    .await;
    assert_eq!(field(&r), (400, "invalid_request", "body"));
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
    assert_eq!(
        field(
            &api.post("/v1/channels", json!({"name": "a", "colour": "red"}))
                .await
        ),
        (400, "invalid_request", "colour")
    );
    assert_eq!(
        field(&api.post("/v1/channels", json!({"name": 5})).await),
        (400, "invalid_request", "name")
    );
    assert_eq!(
        field(
            &api.post("/v1/channels", json!({"name": "a", "metadata": "x"}))
                .await
        ),
        (400, "invalid_request", "metadata")
    );
    assert_eq!(
        field(&api.post("/v1/channels", json!({"metadata": {}})).await),
        (400, "invalid_request", "name")
    );
    assert_eq!(
        field(&api.post("/v1/channels", json!({"name": "   "})).await),
        (400, "invalid_request", "name")
    );
    assert_eq!(
        field(&api.post("/v1/channels", json!([1, 2])).await),
        (400, "invalid_request", "body")
    );
    assert_eq!(
        field(
            &api.post("/v1/channels", json!({"name": "x".repeat(201)}))
                .await
        ),
        (400, "invalid_request", "name")
    );
    let big = format!(
        "{{\"name\": \"a\", \"metadata\": {{\"k\": \"{}\"}}}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let r = raw_post(&gw.base, &keys.test, "/v1/channels", big.into_bytes()).await;
    assert_eq!(
        (r.0, r.1["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let r = api
        .post(
            "/v1/channels",
            json!({"name": "a", "metadata": {"k": "x".repeat(17 * 1024)}}),
        )
        .await;
    assert_eq!(field(&r), (400, "invalid_request", "metadata"));
    assert_eq!(count().await, before, "nothing half-written");

    for q in ["limit=0", "limit=101", "limit=abc"] {
        assert_eq!(
            field(&api.get(&format!("/v1/channels?{q}")).await),
            (400, "invalid_request", "limit"),
            "{q}"
        );
    }
    assert_eq!(
        field(&api.get("/v1/channels?status=sleeping").await),
        (400, "invalid_request", "status")
    );
    assert_eq!(
        field(&api.get("/v1/channels?cursor=zzz").await),
        (400, "invalid_request", "cursor")
    );
    let id = api.create_channel("one").await;
    assert_eq!(
        field(&api.get(&format!("/v1/channels/{id}/qr?wait=31")).await),
        (400, "invalid_request", "wait")
    );
    assert_eq!(
        field(
            &api.post(
                &format!("/v1/channels/{id}/sandbox/drop"),
                json!({"duration_ms": "long"})
            )
            .await
        )
        .2,
        "duration_ms"
    );
    assert_eq!(
        api.post(&format!("/v1/channels/{id}/sandbox/explode"), json!({}))
            .await
            .0,
        404
    );
    // Illegal transitions.
    let r = api
        .post(&format!("/v1/channels/{id}/logout"), json!({}))
        .await;
    assert_eq!(
        (r.0, r.1["error"]["code"].as_str()),
        (409, Some("invalid_lifecycle_transition"))
    );
    let r = api
        .post(&format!("/v1/channels/{id}/sandbox/drop"), json!({}))
        .await;
    assert_eq!(
        (r.0, r.1["error"]["code"].as_str()),
        (409, Some("invalid_lifecycle_transition"))
    );
    assert_eq!(
        api.channel(&id).await["status"],
        "pending",
        "a refused transition changes nothing"
    );

    // Unknown routes and methods keep the envelope.
    let r = api.get("/v1/nothing-here").await;
    assert_eq!(
        (r.0, r.1["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let r = api
        .call(reqwest::Method::PUT, "/v1/channels", Some(json!({})))
        .await;
    assert_eq!(r.0, 405);

    // Pagination: newest first, no duplicates, a cursor to the end.
    for i in 0..4 {
        api.create_channel(&format!("p{i}")).await;
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, page) = api
            .get(&format!("/v1/channels?limit=2&cursor={cursor}"))
            .await;
        assert_eq!(s, 200, "{page}");
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, vec!["p3", "p2", "p1", "p0", "one"]);
    gw.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_keepalive() {
    let db = TestDb::new();
    let mut cfg = test_config(&db);
    cfg.sse_keepalive_secs = 1;
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    api.connected_channel("m").await;
    assert_eq!(
        reqwest::get(format!("{}/healthz", gw.base))
            .await
            .unwrap()
            .status(),
        200
    );
    let r: serde_json::Value = reqwest::get(format!("{}/readyz", gw.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "ready");
    let m = reqwest::get(format!("{}/metrics", gw.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "whatisup_channels{status=\"connected\"} 1",
        "whatisup_status_transitions_total{from=\"connecting\",to=\"connected\"} 1",
        "whatisup_events_committed_total",
        "whatisup_stream_subscribers",
        "whatisup_request_duration_seconds_bucket",
        "whatisup_sessions_local 1",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    let sse = Sse::open(&gw.base, "", &keys.test, None).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(
        sse.comments.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "keep-alive comments on an idle stream"
    );
    let audit: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM audit_events WHERE customer_id = $1 AND action = 'channel.created'", &[&keys.customer_id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(audit, 1);
    gw.stop().await;
    db.drop_db().await;
}

use crate::util::*;
use serde_json::json;
use std::time::Duration;

fn code(r: &(u16, serde_json::Value)) -> (u16, &str) {
    (r.0, r.1["error"]["code"].as_str().unwrap_or(""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_tenancy_scope_and_modes() {
    let db = TestDb::new();
    let gw = Gw::start(test_config(&db)).await;
    let acme = gw.customer("acme").await;
    let other = gw.customer("other").await;
    let api = Api::new(&gw.base, &acme.test);

    // Missing, malformed, unknown.
    assert_eq!(
        code(&Api::new(&gw.base, "").get("/v1/channels").await),
        (401, "auth_missing")
    );
    let raw = reqwest::Client::new();
    let r = raw
        .get(format!("{}/v1/channels", gw.base))
        .header("authorization", "Token abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "auth_malformed"
    );
    assert_eq!(
        code(&Api::new(&gw.base, "not-a-key").get("/v1/channels").await),
        (401, "auth_malformed")
    );
    let forged = format!("zpk_test_{}", "A".repeat(43));
    assert_eq!(
        code(&Api::new(&gw.base, &forged).get("/v1/channels").await),
        (401, "auth_invalid")
    );

    // Expired and revoked keys.
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(1500))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (s, k) = api
        .post("/v1/api-keys", json!({"name": "short", "expires_at": soon}))
        .await;
    assert_eq!(s, 201, "{k}");
    let short = k["secret"].as_str().unwrap().to_string();
    assert!(
        short.starts_with("zpk_test_"),
        "a test key creates test keys"
    );
    assert_eq!(Api::new(&gw.base, &short).get("/v1/channels").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(
        code(&Api::new(&gw.base, &short).get("/v1/channels").await),
        (401, "auth_expired")
    );
    let (_, k) = api.post("/v1/api-keys", json!({"name": "to revoke"})).await;
    let doomed = k["secret"].as_str().unwrap().to_string();
    assert_eq!(Api::new(&gw.base, &doomed).get("/v1/channels").await.0, 200);
    let (s, _) = api
        .delete(&format!(
            "/v1/api-keys/{}",
            k["api_key"]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        code(&Api::new(&gw.base, &doomed).get("/v1/channels").await),
        (401, "auth_expired")
    );
    let (s, list) = api.get("/v1/api-keys").await;
    assert_eq!(s, 200);
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| !k.to_string().contains("zpk_test_")
                || k["prefix"].as_str().unwrap().len() < 20),
        "secrets are never listed"
    );
    let pg = db.client().await;
    let stored: i64 = pg
        .query_one(
            "SELECT count(*) FROM api_keys WHERE encode(key_hash, 'escape') LIKE '%zpk_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "keys are stored hashed");

    // Another customer's channel is not found, never forbidden.
    let id = api.create_channel("mine").await;
    let theirs = Api::new(&gw.base, &other.test);
    assert_eq!(
        code(&theirs.get(&format!("/v1/channels/{id}")).await),
        (404, "channel_not_found")
    );
    assert_eq!(
        code(
            &theirs
                .post(&format!("/v1/channels/{id}/connect"), json!({}))
                .await
        ),
        (404, "channel_not_found")
    );
    assert_eq!(
        code(&theirs.delete(&format!("/v1/channels/{id}")).await),
        (404, "channel_not_found")
    );
    assert_eq!(
        code(
            &theirs
                .post(&format!("/v1/channels/{id}/sandbox/scan"), json!({}))
                .await
        ),
        (404, "channel_not_found")
    );
    assert_eq!(
        theirs.get("/v1/channels").await.1["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let r = raw
        .get(format!("{}/v1/events?channel_id={id}", gw.base))
        .bearer_auth(&other.test)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A channel-bound key.
    let id2 = api.create_channel("second").await;
    let (s, k) = api
        .post("/v1/api-keys", json!({"name": "bound", "channel_id": id}))
        .await;
    assert_eq!(s, 201, "{k}");
    assert_eq!(k["api_key"]["channel_id"], id.as_str());
    let bound = Api::new(&gw.base, k["secret"].as_str().unwrap());
    assert_eq!(bound.get(&format!("/v1/channels/{id}")).await.0, 200);
    assert_eq!(
        code(&bound.get(&format!("/v1/channels/{id2}")).await),
        (403, "channel_access_denied")
    );
    assert_eq!(
        code(&bound.post("/v1/channels", json!({"name": "x"})).await),
        (403, "channel_scoped_key")
    );
    assert_eq!(
        code(&bound.get("/v1/api-keys").await),
        (403, "channel_scoped_key")
    );
    let listed = bound.get("/v1/channels").await.1;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert_eq!(listed["data"][0]["id"], id.as_str());

    // Test mode is separate: a test key never sees live channels, and live channels are not sandboxes.
    let live = Api::new(&gw.base, &acme.live);
    let (s, lc) = live
        .post("/v1/channels", json!({"name": "real phone"}))
        .await;
    assert_eq!(s, 201);
    assert_eq!(lc["engine"], "whatsapp");
    let lid = lc["id"].as_str().unwrap();
    assert_eq!(
        code(&api.get(&format!("/v1/channels/{lid}")).await),
        (404, "channel_not_found")
    );
    assert!(
        api.get("/v1/channels").await.1["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["id"] != lid)
    );
    assert!(
        live.get("/v1/channels").await.1["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["engine"] == "whatsapp")
    );
    assert_eq!(
        code(
            &live
                .post(&format!("/v1/channels/{lid}/sandbox/scan"), json!({}))
                .await
        ),
        (409, "not_sandbox")
    );
    assert_eq!(
        code(&live.get(&format!("/v1/channels/{id}")).await),
        (404, "channel_not_found")
    );

    gw.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_headers_and_429() {
    let db = TestDb::new();
    let mut cfg = test_config(&db);
    cfg.rate_limit_burst = 5;
    cfg.rate_limit_per_sec = 1;
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("acme").await;
    let http = reqwest::Client::new();
    let mut remaining = Vec::new();
    let mut last = None;
    for _ in 0..6 {
        let r = http
            .get(format!("{}/v1/channels", gw.base))
            .bearer_auth(&keys.test)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-ratelimit-limit"], "5");
        remaining.push(
            r.headers()["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .parse::<i64>()
                .unwrap(),
        );
        last = Some(r);
    }
    assert_eq!(&remaining[..5], &[4, 3, 2, 1, 0]);
    let r = last.unwrap();
    assert_eq!(r.status(), 429);
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "rate_limited"
    );
    // Another key has its own bucket.
    let r = http
        .get(format!("{}/v1/channels", gw.base))
        .bearer_auth(&keys.live)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await;
    db.drop_db().await;
}

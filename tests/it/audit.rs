//! The audit log over REST and gRPC (every customer-visible change, isolated by customer, mode and channel
//! binding, outliving what it refers to, never holding a secret) and `GET /v1/limits`.

use crate::util::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;
use tonic_types::StatusExt;
use whatisup::pb;

/// Every row of a REST listing, following `next_cursor` page by page.
async fn all_pages(api: &Api, query: &str, limit: u32) -> (Vec<Value>, usize) {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/v1/audit-events?limit={limit}{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (s, page) = api.get(&path).await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        let data = page["data"].as_array().expect("data").clone();
        assert!(data.len() <= limit as usize, "{page}");
        rows.extend(data);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => {
                assert!(page["next_cursor"].is_null(), "{page}");
                return (rows, pages);
            }
        }
        assert!(pages < 100, "pagination does not end");
    }
}

fn actions(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["action"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn list(api: &Api, query: &str) -> Vec<Value> {
    let (s, page) = api.get(&format!("/v1/audit-events?limit=200{query}")).await;
    assert_eq!(s, 200, "{page}");
    page["data"].as_array().expect("data").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_records_every_change_and_is_isolated() {
    let db = TestDb::new();
    let mut cfg = test_config(&db);
    cfg.webhook_allow_cidrs = "127.0.0.0/8".into();
    cfg.webhook_retry_schedule = "1h".into();
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("acme").await;
    let other = gw.customer("other").await;
    let api = Api::new(&gw.base, &keys.test);

    // Channel create: the row carries the request id the answer carried.
    let resp = api
        .http
        .post(format!("{}/v1/channels", gw.base))
        .bearer_auth(&keys.test)
        .json(&json!({"name": "a"}))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), 201);
    let create_request_id = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    let a: Value = resp.json().await.expect("json");
    let a = a["id"].as_str().expect("id").to_string();
    let b = api.create_channel("b").await;

    // A webhook endpoint (nothing listens there: deliveries stay queued) and everything done to it.
    let (s, ep) = api
        .post(
            "/v1/webhook-endpoints",
            json!({"url": "http://hook:pa55word@127.0.0.1:9/hook", "events": []}),
        )
        .await;
    assert_eq!(s, 201, "{ep}");
    let ep_id = ep["id"].as_str().expect("id").to_string();
    let mut secrets = vec![ep["signing_secret"].as_str().expect("secret").to_string()];
    let (s, r) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/webhook-endpoints/{ep_id}"),
            Some(json!({"description": "mine"})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let (s, r) = api
        .post(
            &format!("/v1/webhook-endpoints/{ep_id}/rotate-secret"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    secrets.push(r["signing_secret"].as_str().expect("secret").to_string());

    // Channel lifecycle: connect, logout, pair code (starts it again), and the events make deliveries.
    let (s, r) = api
        .post(&format!("/v1/channels/{a}/connect"), json!({}))
        .await;
    assert_eq!(s, 202, "{r}");
    let (s, r) = api
        .post(&format!("/v1/channels/{a}/logout"), json!({}))
        .await;
    assert_eq!(s, 202, "{r}");
    let (s, r) = api
        .post(
            &format!("/v1/channels/{a}/pair-code"),
            json!({"phone_number": "+15551234567"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let (s, r) = api
        .post(
            &format!("/v1/webhook-endpoints/{ep_id}/recover"),
            json!({"since": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert!(s == 200 || s == 202, "{s} {r}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let delivery = loop {
        let (s, l) = api
            .get(&format!("/v1/webhook-deliveries?endpoint_id={ep_id}"))
            .await;
        assert_eq!(s, 200, "{l}");
        if let Some(d) = l["data"].as_array().and_then(|d| d.first()) {
            break d["id"].as_str().expect("id").to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "no delivery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (s, r) = api
        .post(
            &format!("/v1/webhook-deliveries/{delivery}/redeliver"),
            json!({}),
        )
        .await;
    assert!(s == 200 || s == 202, "{s} {r}");

    // API keys: one bound to channel b, one plain that is revoked.
    let (s, scoped) = api
        .post("/v1/api-keys", json!({"name": "bound", "channel_id": b}))
        .await;
    assert_eq!(s, 201, "{scoped}");
    let scoped_secret = scoped["secret"].as_str().expect("secret").to_string();
    let (s, k) = api.post("/v1/api-keys", json!({"name": "temp"})).await;
    assert_eq!(s, 201, "{k}");
    let temp_secret = k["secret"].as_str().expect("secret").to_string();
    let temp_id = k["api_key"]["id"].as_str().expect("id").to_string();
    let (s, r) = api.delete(&format!("/v1/api-keys/{temp_id}")).await;
    assert_eq!(s, 200, "{r}");

    let (s, r) = api.delete(&format!("/v1/webhook-endpoints/{ep_id}")).await;
    assert_eq!(s, 200, "{r}");
    let (s, r) = api.delete(&format!("/v1/channels/{a}")).await;
    assert_eq!(s, 200, "{r}");

    // Everything is there, newest first.
    let rows = list(&api, "").await;
    let got = actions(&rows);
    for want in [
        "channel.created",
        "webhook_endpoint.created",
        "webhook_endpoint.updated",
        "webhook_endpoint.secret_rotated",
        "channel.connect",
        "channel.logout",
        "channel.pair_code_requested",
        "webhook_endpoint.recovered",
        "webhook_delivery.redelivered",
        "api_key.created",
        "api_key.revoked",
        "webhook_endpoint.deleted",
        "channel.deleted",
    ] {
        assert!(got.iter().any(|a| a == want), "{want} missing: {got:?}");
    }
    assert_eq!(got[0], "channel.deleted", "newest first: {got:?}");
    assert_eq!(got.last().map(String::as_str), Some("channel.created"));
    let times: Vec<&str> = rows
        .iter()
        .map(|r| r["created_at"].as_str().expect("created_at"))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    for r in &rows {
        assert!(
            r["id"].as_str().is_some_and(|i| i.starts_with("aud_")),
            "{r}"
        );
        assert!(
            r["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("key:key_")),
            "{r}"
        );
        assert_eq!(r["mode"], "test", "{r}");
        assert!(r["data"].is_object(), "{r}");
        assert!(r["resource"].is_string(), "{r}");
        assert!(
            r.get("channel_id").is_some(),
            "channel_id is shown, null or not: {r}"
        );
        assert!(
            r["request_id"]
                .as_str()
                .is_some_and(|i| i.starts_with("req_")),
            "{r}"
        );
    }
    let created = rows
        .iter()
        .find(|r| r["action"] == "channel.created" && r["resource"] == a.as_str())
        .expect("created row");
    assert_eq!(created["request_id"], create_request_id.as_str());
    assert_eq!(created["channel_id"], a.as_str());
    let redelivered = rows
        .iter()
        .find(|r| r["action"] == "webhook_delivery.redelivered")
        .expect("redelivered row");
    assert_eq!(redelivered["resource"], delivery.as_str());

    // Nothing secret: no key secret, no signing secret, no URL password.
    let text = serde_json::to_string(&rows).expect("json");
    for s in secrets.iter().chain([&scoped_secret, &temp_secret]) {
        assert!(!text.contains(s.as_str()), "a secret in the audit log");
        // Nor the part after the prefix that the log may show.
        assert!(
            !text.contains(&s[s.len() - 20..]),
            "part of a secret in the audit log"
        );
    }
    assert!(!text.contains("pa55word"), "the URL password: {text}");
    assert!(!text.contains("whsec_"), "{text}");

    // Rows outlive the channel: channel a is deleted, its rows stay and the filter still finds them.
    let (s, _) = api.get(&format!("/v1/channels/{a}")).await;
    assert_eq!(s, 404);
    let of_a = list(&api, &format!("&channel_id={a}")).await;
    let acts = actions(&of_a);
    assert!(
        acts.contains(&"channel.created".to_string())
            && acts.contains(&"channel.deleted".to_string()),
        "{acts:?}"
    );
    assert!(of_a.iter().all(|r| r["channel_id"] == a.as_str()));
    let only = list(&api, "&action=channel.created").await;
    assert_eq!(only.len(), 2, "{only:?}");
    let by_resource = list(&api, &format!("&resource={ep_id}")).await;
    assert_eq!(by_resource.len(), 5, "{by_resource:#?}");

    // Pagination: pages of 3 hold every row once, in the same order as one page.
    let (paged, pages) = all_pages(&api, "", 3).await;
    assert!(pages > 1, "{pages}");
    let ids = |rows: &[Value]| -> Vec<String> {
        rows.iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(ids(&paged), ids(&rows));
    assert_eq!(
        ids(&paged).into_iter().collect::<HashSet<_>>().len(),
        rows.len()
    );

    // Bad paging input names its field.
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=x", "limit"),
        ("cursor=nope", "cursor"),
        ("cursor=aud_%00", "cursor"),
        ("action=a%00b", "action"),
        ("channel_id=%01", "channel_id"),
        ("cursor=aud_01JZZZZZZZZZZZZZZZZZZZZZZZ", "cursor"),
    ] {
        let (s, e) = api.get(&format!("/v1/audit-events?{q}")).await;
        assert_eq!(s, 400, "{q}: {e}");
        assert_eq!(e["error"]["details"]["field"], field, "{q}: {e}");
    }

    // Another customer sees none of it: not the rows, not through a filter, not through a cursor.
    let other_api = Api::new(&gw.base, &other.test);
    assert!(list(&other_api, "").await.is_empty());
    assert!(
        list(&other_api, &format!("&channel_id={a}"))
            .await
            .is_empty()
    );
    assert!(
        list(&other_api, &format!("&resource={ep_id}"))
            .await
            .is_empty()
    );
    let (s, e) = other_api
        .get(&format!(
            "/v1/audit-events?cursor={}",
            rows[0]["id"].as_str().unwrap_or_default()
        ))
        .await;
    assert_eq!(
        (s, &e["error"]["details"]["field"]),
        (400, &json!("cursor"))
    );

    // Live and test are apart: the live key sees its own change only, the test key never sees it.
    let live = Api::new(&gw.base, &keys.live);
    let live_ch = live.create_channel("live one").await;
    let live_rows = list(&live, "").await;
    assert_eq!(actions(&live_rows), vec!["channel.created"]);
    assert_eq!(live_rows[0]["mode"], "live");
    assert_eq!(live_rows[0]["resource"], live_ch.as_str());
    assert!(
        !list(&api, "")
            .await
            .iter()
            .any(|r| r["resource"] == live_ch.as_str())
    );

    // A key bound to channel b sees b's rows only, and may not ask for another channel's.
    let bound = Api::new(&gw.base, &scoped_secret);
    let b_rows = list(&bound, "").await;
    assert!(!b_rows.is_empty());
    assert!(
        b_rows.iter().all(|r| r["channel_id"] == b.as_str()),
        "{b_rows:#?}"
    );
    assert!(actions(&b_rows).contains(&"channel.created".to_string()));
    let (s, e) = bound.get(&format!("/v1/audit-events?channel_id={a}")).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("channel_access_denied"))
    );

    // gRPC: the same rows, the same pages, the same errors.
    let mut grpc = pb::audit_service_client::AuditServiceClient::connect(gw.base.clone())
        .await
        .expect("grpc");
    let mut grpc_ids = Vec::new();
    let mut cursor = String::new();
    let mut grpc_pages = 0;
    loop {
        let page = grpc
            .list_audit_events(authed(
                pb::ListAuditEventsRequest {
                    limit: 4,
                    cursor: cursor.clone(),
                    ..Default::default()
                },
                &keys.test,
            ))
            .await
            .expect("list")
            .into_inner();
        grpc_pages += 1;
        grpc_ids.extend(page.data.iter().map(|e| e.id.clone()));
        match page.next_cursor {
            Some(c) => cursor = c,
            None => break,
        }
    }
    assert!(grpc_pages > 1);
    assert_eq!(grpc_ids, ids(&list(&api, "").await));
    let first = grpc
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                action: "channel.deleted".into(),
                ..Default::default()
            },
            &keys.test,
        ))
        .await
        .expect("filtered")
        .into_inner();
    assert_eq!(first.data.len(), 1);
    let e = &first.data[0];
    assert_eq!(
        (
            e.resource.as_str(),
            e.channel_id.as_deref(),
            e.mode.as_deref()
        ),
        (a.as_str(), Some(a.as_str()), Some("test"))
    );
    assert!(e.created_at.is_some() && e.request_id.is_some() && e.actor.starts_with("key:"));
    let err = grpc
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                limit: 500,
                ..Default::default()
            },
            &keys.test,
        ))
        .await
        .expect_err("limit too large");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let info = err
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(
        (
            info.reason.as_str(),
            info.metadata.get("field").map(String::as_str)
        ),
        ("invalid_request", Some("limit"))
    );
    let other_rows = grpc
        .list_audit_events(authed(pb::ListAuditEventsRequest::default(), &other.test))
        .await
        .expect("other")
        .into_inner();
    assert!(other_rows.data.is_empty());
    let err = grpc
        .list_audit_events(authed(
            pb::ListAuditEventsRequest {
                channel_id: a.clone(),
                ..Default::default()
            },
            &scoped_secret,
        ))
        .await
        .expect_err("bound key, other channel");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    gw.stop().await;
    db.drop_db().await;
}

/// An operator's `keys create` is in the audit log too (actor `cli`), in the key's mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_operator_key_creation() {
    let db = TestDb::new();
    let gw = Gw::start(test_config(&db)).await;
    let keys = gw.customer("acme").await;
    let (row, secret) = whatisup::store::keys::create_audited(
        &gw.running.app.pool,
        &gw.running.app.keys,
        &whatisup::store::keys::NewKey {
            customer_id: &keys.customer_id,
            name: "ops",
            mode: whatisup::model::Mode::Test,
            channel_id: None,
            expires_at: None,
        },
        "cli",
    )
    .await
    .expect("create");
    let rows = list(&Api::new(&gw.base, &keys.test), "").await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(
        (&rows[0]["action"], &rows[0]["actor"], &rows[0]["resource"]),
        (&json!("api_key.created"), &json!("cli"), &json!(row.id))
    );
    assert!(
        !serde_json::to_string(&rows)
            .expect("json")
            .contains(&secret)
    );
    assert!(list(&Api::new(&gw.base, &keys.live), "").await.is_empty());
    gw.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_show_the_configuration_and_the_bucket() {
    let db = TestDb::new();
    let mut cfg = test_config(&db);
    cfg.rate_limit_burst = 5_000;
    cfg.rate_limit_per_sec = 7;
    cfg.max_body_bytes = 200_000;
    cfg.media_max_bytes = 3_000_000;
    cfg.media_retention_secs = 7_200;
    cfg.send_rate_per_sec = 2.5;
    cfg.send_burst = 3;
    cfg.message_ttl_secs = 600;
    cfg.outbox_max_per_channel = 77;
    cfg.webhook_retry_schedule = "1s,2m,3h".into();
    cfg.webhook_timeout_ms = 4_000;
    cfg.webhook_disable_after = "2d".into();
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("acme").await;
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}/v1/limits", gw.base))
        .bearer_auth(&keys.test)
        .send()
        .await
        .expect("limits");
    assert_eq!(resp.status(), 200);
    let header = |n: &str| -> i64 {
        resp.headers()[n]
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("number")
    };
    let (h_limit, h_remaining, h_reset) = (
        header("x-ratelimit-limit"),
        header("x-ratelimit-remaining"),
        header("x-ratelimit-reset"),
    );
    let l: Value = resp.json().await.expect("json");
    let rate = &l["rate_limit"];
    assert_eq!(rate["limit"], 5_000);
    assert_eq!(h_limit, 5_000);
    assert_eq!(rate["refill_per_sec"], 7.0);
    let remaining = rate["remaining"].as_i64().expect("remaining");
    assert!(
        (remaining - h_remaining).abs() <= 1 && remaining < 5_000,
        "{remaining} vs header {h_remaining}"
    );
    let reset = rate["reset"].as_i64().expect("reset");
    assert!((reset - h_reset).abs() <= 1, "{reset} vs {h_reset}");
    assert_eq!(l["requests"]["max_body_bytes"], 200000);
    assert_eq!(l["requests"]["max_upload_bytes"], 3000000);
    assert_eq!(l["media"]["max_bytes"], 3000000);
    assert_eq!(l["media"]["retention_secs"], 7200);
    assert_eq!(
        l["messages"]["text_max_chars"],
        whatisup::api::messages::MAX_TEXT_CHARS
    );
    assert_eq!(l["messages"]["send_rate_per_sec"], 2.5);
    assert_eq!(l["messages"]["send_burst"], 3);
    assert_eq!(l["messages"]["ttl_secs"], 600);
    assert_eq!(l["messages"]["outbox_max_per_channel"], 77);
    assert_eq!(l["lists"]["audit_events"], 200);
    assert_eq!(l["lists"]["channels"], whatisup::api::channels::MAX_PAGE);
    assert_eq!(l["webhooks"]["retry_schedule"], json!(["1s", "2m", "3h"]));
    assert_eq!(l["webhooks"]["timeout_ms"], 4000);
    assert_eq!(l["webhooks"]["disable_after_secs"], 172800);
    assert_eq!(
        l["webhooks"]["max_endpoints"],
        whatisup::webhooks::endpoints::MAX_ENDPOINTS
    );

    // The bucket is the key's own: each call takes a token, and another key's calls do not.
    let mut grpc = pb::limits_service_client::LimitsServiceClient::connect(gw.base.clone())
        .await
        .expect("grpc");
    let g = grpc
        .get_limits(authed(pb::GetLimitsRequest {}, &keys.test))
        .await
        .expect("limits")
        .into_inner();
    let g_rate = g.rate_limit.expect("rate");
    assert_eq!((g_rate.limit, g_rate.refill_per_sec), (5_000, 7.0));
    assert!(g_rate.remaining < remaining as u32 + 1, "{g_rate:?}");
    assert_eq!(
        g.requests.map(|r| r.max_body_bytes),
        Some(200_000),
        "the same configuration over gRPC"
    );
    let live = grpc
        .get_limits(authed(pb::GetLimitsRequest {}, &keys.live))
        .await
        .expect("limits")
        .into_inner();
    assert_eq!(live.rate_limit.map(|r| r.remaining), Some(4_999));

    // Without a key: 401, like every other call.
    let r = http
        .get(format!("{}/v1/limits", gw.base))
        .send()
        .await
        .expect("limits");
    assert_eq!(r.status(), 401);
    gw.stop().await;
    db.drop_db().await;
}

//! The contract's error surface on every face: the rate limit on REST, gRPC, grpc-web and SSE alike, and
//! `google.rpc.ErrorInfo{reason: <contract code>, domain: "whatisup"}` on every gRPC error, tonic's own included.

use crate::util::*;
use http::HeaderMap;
use prost::Message;
use std::time::Duration;
use tonic_types::StatusExt;
use whatisup::pb;

const DOMAIN: &str = "whatisup";

/// (reason, domain) of a status's ErrorInfo; empty when there is none.
fn info(s: &tonic::Status) -> (String, String) {
    s.get_error_details()
        .error_info()
        .map(|i| (i.reason.clone(), i.domain.clone()))
        .unwrap_or_default()
}

fn field(s: &tonic::Status) -> Option<String> {
    s.get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get("field").cloned())
}

/// Asserts code and reason, and that the domain is ours.
#[track_caller]
fn assert_err(s: &tonic::Status, code: tonic::Code, reason: &str) {
    let (r, d) = info(s);
    assert_eq!(
        (s.code(), r.as_str(), d.as_str()),
        (code, reason, DOMAIN),
        "{s:?}"
    );
}

/// One grpc-web call over HTTP/1.1: the status from the headers (trailers-only) or the trailer frame.
async fn grpc_web(base: &str, path: &str, msg: &[u8], key: &str) -> (HeaderMap, tonic::Status) {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(msg);
    let r = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client")
        .post(format!("{base}{path}"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {key}"))
        .body(frame)
        .send()
        .await
        .expect("grpc-web");
    assert_eq!(r.status(), 200, "grpc-web answers 200 with a grpc-status");
    let headers = r.headers().clone();
    if headers.contains_key("grpc-status") {
        let s = tonic::Status::from_header_map(&headers).expect("status");
        return (headers, s);
    }
    let body = r.bytes().await.expect("body");
    let mut i = 0;
    while i + 5 <= body.len() {
        let flag = body[i];
        let len = u32::from_be_bytes([body[i + 1], body[i + 2], body[i + 3], body[i + 4]]) as usize;
        let payload = &body[i + 5..(i + 5 + len).min(body.len())];
        if flag & 0x80 != 0 {
            let mut trailers = HeaderMap::new();
            for line in String::from_utf8_lossy(payload).split("\r\n") {
                if let Some((k, v)) = line.split_once(':')
                    && let (Ok(k), Ok(v)) = (
                        http::HeaderName::from_bytes(k.trim().as_bytes()),
                        http::HeaderValue::from_str(v.trim()),
                    )
                {
                    trailers.insert(k, v);
                }
            }
            let s = tonic::Status::from_header_map(&trailers).expect("status in trailers");
            return (headers, s);
        }
        i += 5 + len;
    }
    panic!("no grpc-status in the grpc-web answer");
}

/// Calls `once` until it is refused (at most `burst + 5` times, so a token refilled on a slow machine does
/// not fail the test), and returns the refusal.
async fn until_refused<T, F, Fut>(burst: u32, mut once: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..burst + 5 {
        if let Some(refused) = once().await {
            return refused;
        }
    }
    panic!("never rate limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_applies_to_every_face() {
    let db = TestDb::new();
    let mut cfg = test_config(&db);
    cfg.rate_limit_burst = 3;
    cfg.rate_limit_per_sec = 1;
    let gw = Gw::start(cfg).await;
    // Four keys, four buckets: one per face.
    let (k1, k2) = (gw.customer("a").await, gw.customer("b").await);
    let http = reqwest::Client::new();

    // REST: 429 rate_limited with Retry-After and the X-RateLimit-* headers.
    let (client, base) = (&http, gw.base.as_str());
    let key = k1.test.as_str();
    let r = until_refused(3, || async move {
        let r = client
            .get(format!("{base}/v1/channels"))
            .bearer_auth(key)
            .send()
            .await
            .expect("rest");
        (r.status() == 429).then_some(r)
    })
    .await;
    let h = r.headers();
    assert!(
        h["retry-after"]
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            >= Some(1),
        "{h:?}"
    );
    assert_eq!(h["x-ratelimit-limit"], "3");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert!(h.contains_key("x-ratelimit-reset") && h.contains_key("x-request-id"));
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");

    // gRPC: RESOURCE_EXHAUSTED with ErrorInfo and RetryInfo; the rate-limit headers come as metadata.
    let mut ch = pb::channel_service_client::ChannelServiceClient::connect(gw.base.clone())
        .await
        .expect("grpc");
    let ok = ch
        .list_channels(authed(pb::ListChannelsRequest::default(), &k1.live))
        .await
        .expect("first call");
    assert_eq!(
        ok.metadata()
            .get("x-ratelimit-limit")
            .map(|v| v.to_str().unwrap_or("")),
        Some("3")
    );
    let e = until_refused(3, || {
        let mut ch = ch.clone();
        let key = k1.live.clone();
        async move {
            ch.list_channels(authed(pb::ListChannelsRequest::default(), &key))
                .await
                .err()
        }
    })
    .await;
    assert_err(&e, tonic::Code::ResourceExhausted, "rate_limited");
    let retry = e
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(retry >= Duration::from_secs(1), "{retry:?}");
    assert_eq!(
        e.metadata()
            .get("x-ratelimit-remaining")
            .map(|v| v.to_str().unwrap_or("")),
        Some("0")
    );

    // grpc-web: the same status in the grpc-web answer.
    let msg = pb::ListChannelsRequest::default().encode_to_vec();
    let (m, key) = (msg.as_slice(), k2.test.as_str());
    let (headers, s) = until_refused(3, || async move {
        let (h, s) = grpc_web(base, "/whatisup.v1.ChannelService/ListChannels", m, key).await;
        (s.code() != tonic::Code::Ok).then_some((h, s))
    })
    .await;
    assert_err(&s, tonic::Code::ResourceExhausted, "rate_limited");
    assert!(s.get_error_details().retry_info().is_some());
    assert_eq!(headers["x-ratelimit-limit"], "3");

    // SSE: opening a stream takes a token; past the burst the stream is refused with 429, by header or ?token=.
    let key = k2.live.as_str();
    let r = until_refused(3, || async move {
        let r = client
            .get(format!("{base}/v1/events"))
            .bearer_auth(key)
            .send()
            .await
            .expect("sse");
        (r.status() != 200).then_some(r)
    })
    .await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["x-ratelimit-limit"], "3");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
    let r = http
        .get(format!("{}/v1/events?token={}", gw.base, k2.live))
        .send()
        .await
        .expect("sse");
    assert_eq!(r.status(), 429);

    // The bucket refills: a second later the key is served again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = http
        .get(format!("{}/v1/channels", gw.base))
        .bearer_auth(&k1.test)
        .send()
        .await
        .expect("rest");
    assert_eq!(r.status(), 200);

    gw.stop().await;
    db.drop_db().await;
}

/// A raw gRPC call over h2c with any bytes as the message: the status tonic answers (trailers-only).
async fn raw_grpc(base: &str, path: &str, msg: &[u8], key: &str) -> tonic::Status {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(msg);
    let r = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client")
        .post(format!("{base}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {key}"))
        .body(frame)
        .send()
        .await
        .expect("h2c");
    assert_eq!(r.status(), 200, "gRPC answers 200: {:?}", r.headers());
    tonic::Status::from_header_map(r.headers()).expect("trailers-only status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_error_carries_error_info() {
    let db = TestDb::new();
    let mut cfg = test_config(&db);
    cfg.max_body_bytes = 16 * 1024;
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let mut ch = pb::channel_service_client::ChannelServiceClient::connect(gw.base.clone())
        .await
        .expect("grpc");
    let get = |id: &str| pb::GetChannelRequest { id: id.into() };
    let pending = api.create_channel("p").await;

    // auth_missing, auth_malformed, auth_invalid, auth_expired.
    let e = ch
        .get_channel(tonic::Request::new(get(&pending)))
        .await
        .unwrap_err();
    assert_err(&e, tonic::Code::Unauthenticated, "auth_missing");
    let mut r = tonic::Request::new(get(&pending));
    r.metadata_mut()
        .insert("authorization", "Token nope".parse().expect("ascii"));
    let e = ch.get_channel(r).await.unwrap_err();
    assert_err(&e, tonic::Code::Unauthenticated, "auth_malformed");
    let e = ch
        .get_channel(authed(
            get(&pending),
            &format!("zpk_test_{}", "x".repeat(43)),
        ))
        .await
        .unwrap_err();
    assert_err(&e, tonic::Code::Unauthenticated, "auth_invalid");
    let (s, k) = api
        .post("/v1/api-keys", serde_json::json!({"name": "short-lived"}))
        .await;
    assert_eq!(s, 201, "{k}");
    let (s, _) = api
        .delete(&format!(
            "/v1/api-keys/{}",
            k["api_key"]["id"].as_str().unwrap_or("")
        ))
        .await;
    assert_eq!(s, 200);
    let e = ch
        .get_channel(authed(get(&pending), k["secret"].as_str().unwrap_or("")))
        .await
        .unwrap_err();
    assert_err(&e, tonic::Code::Unauthenticated, "auth_expired");

    // invalid_request names the field.
    let e = ch
        .create_channel(authed(
            pb::CreateChannelRequest {
                name: " ".into(),
                ..Default::default()
            },
            &keys.test,
        ))
        .await
        .unwrap_err();
    assert_err(&e, tonic::Code::InvalidArgument, "invalid_request");
    assert_eq!(field(&e).as_deref(), Some("name"));

    // channel_not_found (and another customer's channel is the same).
    let e = ch
        .get_channel(authed(get("ch_nope"), &keys.test))
        .await
        .unwrap_err();
    assert_err(&e, tonic::Code::NotFound, "channel_not_found");
    let other = gw.customer("other").await;
    let e = ch
        .get_channel(authed(get(&pending), &other.test))
        .await
        .unwrap_err();
    assert_err(&e, tonic::Code::NotFound, "channel_not_found");

    // invalid_lifecycle_transition: a pending channel cannot log out.
    let e = ch
        .logout_channel(authed(
            pb::LogoutChannelRequest {
                id: pending.clone(),
            },
            &keys.test,
        ))
        .await
        .unwrap_err();
    assert_err(
        &e,
        tonic::Code::FailedPrecondition,
        "invalid_lifecycle_transition",
    );

    // idempotency_conflict: another request under the same key.
    let keyed = |name: &str| {
        let mut r = authed(
            pb::CreateChannelRequest {
                name: name.into(),
                ..Default::default()
            },
            &keys.test,
        );
        r.metadata_mut()
            .insert("idempotency-key", "faces-1".parse().expect("ascii"));
        r
    };
    ch.create_channel(keyed("first")).await.expect("first");
    let e = ch.create_channel(keyed("second")).await.unwrap_err();
    assert_err(&e, tonic::Code::AlreadyExists, "idempotency_conflict");

    // not_sandbox: sandbox actions on a live channel.
    let live = Api::new(&gw.base, &keys.live).create_channel("live").await;
    let mut sb = pb::sandbox_service_client::SandboxServiceClient::connect(gw.base.clone())
        .await
        .expect("grpc");
    let e = sb
        .scan(authed(
            pb::SandboxScanRequest {
                id: live.clone(),
                phone_number: String::new(),
            },
            &keys.live,
        ))
        .await
        .unwrap_err();
    assert_err(&e, tonic::Code::FailedPrecondition, "not_sandbox");

    // channel_scoped_key: a key bound to a channel cannot create channels.
    let (s, bound) = api
        .post(
            "/v1/api-keys",
            serde_json::json!({"name": "bound", "channel_id": pending}),
        )
        .await;
    assert_eq!(s, 201, "{bound}");
    let e = ch
        .create_channel(authed(
            pb::CreateChannelRequest {
                name: "x".into(),
                ..Default::default()
            },
            bound["secret"].as_str().unwrap_or(""),
        ))
        .await
        .unwrap_err();
    assert_err(&e, tonic::Code::PermissionDenied, "channel_scoped_key");

    // payload_too_large: a message over WHATISUP_MAX_BODY_BYTES, refused by tonic's decoder.
    let e = ch
        .create_channel(authed(
            pb::CreateChannelRequest {
                name: "x".repeat(20 * 1024),
                ..Default::default()
            },
            &keys.test,
        ))
        .await
        .unwrap_err();
    assert_err(&e, tonic::Code::InvalidArgument, "payload_too_large");

    // tonic's own errors: an unknown method of a known service, an unknown service, a message that does not
    // decode. None breaks the server.
    let e = raw_grpc(
        &gw.base,
        "/whatisup.v1.ChannelService/Nope",
        &[],
        &keys.test,
    )
    .await;
    assert_err(&e, tonic::Code::Unimplemented, "not_found");
    let e = raw_grpc(&gw.base, "/whatisup.v1.NoSuchService/Get", &[], &keys.test).await;
    assert_err(&e, tonic::Code::Unimplemented, "not_found");
    let e = raw_grpc(
        &gw.base,
        "/whatisup.v1.ChannelService/GetChannel",
        &[0x0a, 0xff, 0xff, 0xff],
        &keys.test,
    )
    .await;
    assert_err(&e, tonic::Code::InvalidArgument, "invalid_request");
    assert_eq!(field(&e).as_deref(), Some("body"));
    // The typed client sees an unknown method the same way.
    let channel = tonic::transport::Endpoint::from_shared(gw.base.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.expect("ready");
    let e = raw
        .unary::<_, pb::Channel, _>(
            authed(get(&pending), &keys.test),
            http::uri::PathAndQuery::from_static("/whatisup.v1.ChannelService/Missing"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_err(&e, tonic::Code::Unimplemented, "not_found");
    // grpc-web too.
    let (_, s) = grpc_web(
        &gw.base,
        "/whatisup.v1.ChannelService/Nope",
        &[],
        &keys.test,
    )
    .await;
    assert_err(&s, tonic::Code::Unimplemented, "not_found");

    // Still serving.
    let got = ch
        .get_channel(authed(get(&pending), &keys.test))
        .await
        .expect("served after all that")
        .into_inner();
    assert_eq!(got.id, pending);

    gw.stop().await;
    db.drop_db().await;
}

use crate::util::*;
use prost::Message;
use tonic_types::StatusExt;
use whatisup::pb;

fn reason(s: &tonic::Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_grpc_web_reflection_and_health() {
    let db = TestDb::new();
    let gw = Gw::start(test_config(&db)).await;
    let keys = gw.customer("acme").await;
    let mut ch = pb::channel_service_client::ChannelServiceClient::connect(gw.base.clone())
        .await
        .unwrap();

    let c = ch
        .create_channel(authed(
            pb::CreateChannelRequest {
                name: "grpc".into(),
                metadata: None,
                ..Default::default()
            },
            &keys.test,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (c.status.as_str(), c.engine.as_str()),
        ("pending", "sandbox")
    );
    let got = ch
        .get_channel(authed(
            pb::GetChannelRequest { id: c.id.clone() },
            &keys.test,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.id, c.id);
    let list = ch
        .list_channels(authed(pb::ListChannelsRequest::default(), &keys.test))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.data.len(), 1);

    let e = ch
        .get_channel(authed(
            pb::GetChannelRequest {
                id: "ch_nope".into(),
            },
            &keys.test,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e)),
        (tonic::Code::NotFound, "channel_not_found".to_string())
    );
    let e = ch
        .get_channel(tonic::Request::new(pb::GetChannelRequest {
            id: c.id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e)),
        (tonic::Code::Unauthenticated, "auth_missing".to_string())
    );
    let e = ch
        .create_channel(authed(
            pb::CreateChannelRequest {
                name: "".into(),
                metadata: None,
                ..Default::default()
            },
            &keys.test,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.get_error_details().error_info().unwrap().metadata["field"],
        "name"
    );

    // The sandbox over gRPC, and QR + connected.
    let qr = ch
        .get_qr(authed(
            pb::GetQrRequest {
                id: c.id.clone(),
                wait: Some(10),
            },
            &keys.test,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(qr.qr.starts_with("2@") && qr.png.starts_with("data:image/png;base64,"));
    let mut sb = pb::sandbox_service_client::SandboxServiceClient::connect(gw.base.clone())
        .await
        .unwrap();
    sb.scan(authed(
        pb::SandboxScanRequest {
            id: c.id.clone(),
            phone_number: "+15550009999".into(),
        },
        &keys.test,
    ))
    .await
    .unwrap();
    Api::new(&gw.base, &keys.test)
        .wait_status(&c.id, "connected", std::time::Duration::from_secs(10))
        .await;

    // grpc-web over HTTP/1.1 on the same port.
    let msg = pb::GetChannelRequest { id: c.id.clone() }.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let r = reqwest::Client::builder()
        .http1_only()
        .build()
        .unwrap()
        .post(format!("{}/whatisup.v1.ChannelService/GetChannel", gw.base))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {}", keys.test))
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(body[0], 0, "first frame is the message");
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let got = pb::Channel::decode(&body[5..5 + len]).unwrap();
    assert_eq!(
        (got.id.as_str(), got.status.as_str()),
        (c.id.as_str(), "connected")
    );
    assert!(String::from_utf8_lossy(&body[5 + len..]).contains("grpc-status:0"));

    // Health and reflection (v1 and v1alpha).
    let channel = tonic::transport::Endpoint::from_shared(gw.base.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let first = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("list services")
    };
    let names: Vec<String> = list.service.iter().map(|s| s.name.clone()).collect();
    for s in [
        "whatisup.v1.ChannelService",
        "whatisup.v1.EventService",
        "whatisup.v1.ApiKeyService",
        "whatisup.v1.SandboxService",
    ] {
        assert!(names.contains(&s.to_string()), "{names:?}");
    }
    let mut refl_alpha =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(
            channel,
        );
    let req = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    assert!(
        refl_alpha
            .server_reflection_info(futures::stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .is_some()
    );

    gw.stop().await;
    db.drop_db().await;
}

/// `idempotency-key` metadata on gRPC: the same request answers the stored response (one message stored), another
/// request under the key is refused with `idempotency_conflict`, an error answer is replayed as it was, concurrent
/// duplicates run once, and keys belong to their customer. CreateChannel takes it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_idempotency_key() {
    let db = TestDb::new();
    let mut cfg = test_config(&db);
    cfg.send_rate_per_sec = 0.0;
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let channel_id = api.connected_channel("c").await;
    let mut grpc = pb::message_service_client::MessageServiceClient::connect(gw.base.clone())
        .await
        .expect("grpc");
    let keyed = |m: pb::SendMessageRequest, key: &str| {
        let mut r = authed(m, &keys.test);
        r.metadata_mut()
            .insert("idempotency-key", key.parse().expect("ascii"));
        r
    };
    let text = |t: &str| pb::SendMessageRequest {
        channel_id: channel_id.clone(),
        to: "+15551239001".into(),
        r#type: "text".into(),
        text: t.into(),
        ..Default::default()
    };
    let stored = |t: &'static str| {
        let db = &db;
        async move {
            db.client()
                .await
                .query_one(
                    "SELECT count(*) FROM messages WHERE body->>'text' = $1",
                    &[&t],
                )
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };

    let a = grpc
        .send_message(keyed(text("once"), "g-k1"))
        .await
        .expect("first")
        .into_inner();
    let b = grpc
        .send_message(keyed(text("once"), "g-k1"))
        .await
        .expect("repeat")
        .into_inner();
    assert_eq!(a, b, "the stored answer");
    assert_eq!(stored("once").await, 1);
    let e = grpc
        .send_message(keyed(text("something else"), "g-k1"))
        .await
        .expect_err("another request under the key");
    assert_eq!(reason(&e), "idempotency_conflict");
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    assert_eq!(stored("something else").await, 0);
    // The REST header shares the store: the same key for a REST request is another request.
    let (s, r) = {
        let resp = api
            .http
            .post(format!("{}/v1/channels/{channel_id}/messages", api.base))
            .bearer_auth(&api.key)
            .header("Idempotency-Key", "g-k1")
            .json(&serde_json::json!({"to": "+15551239001", "type": "text", "text": "once"}))
            .send()
            .await
            .expect("rest");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    };
    assert_eq!(s, 409, "{r}");

    // An error is an answer too: replayed with its code and details.
    let bad = pb::SendMessageRequest {
        to: "nope".into(),
        ..text("x")
    };
    let e1 = grpc
        .send_message(keyed(bad.clone(), "g-bad"))
        .await
        .expect_err("invalid");
    let e2 = grpc
        .send_message(keyed(bad, "g-bad"))
        .await
        .expect_err("invalid again");
    assert_eq!(e1.code(), tonic::Code::InvalidArgument);
    assert_eq!((e2.code(), e2.message()), (e1.code(), e1.message()));
    assert_eq!(reason(&e2), "invalid_request");
    let e = grpc
        .send_message(keyed(text("x"), &"k".repeat(300)))
        .await
        .expect_err("key too long");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.get_error_details()
            .error_info()
            .map(|i| i.metadata.get("field").cloned()),
        Some(Some("idempotency-key".to_string()))
    );
    assert_eq!(stored("x").await, 0);

    // Concurrent duplicates: one runs, the others get its answer.
    let mut tasks = vec![];
    for _ in 0..6 {
        let mut c = grpc.clone();
        let r = keyed(text("concurrent"), "g-k2");
        tasks.push(tokio::spawn(async move { c.send_message(r).await }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.expect("task").expect("send").into_inner();
        ids.insert(r.message_id);
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(stored("concurrent").await, 1);

    // CreateChannel takes the key as well; another customer's identical key is its own.
    let mut chs = pb::channel_service_client::ChannelServiceClient::connect(gw.base.clone())
        .await
        .expect("grpc");
    let create = |key: &str, api_key: &str| {
        let mut r = authed(
            pb::CreateChannelRequest {
                name: "keyed".into(),
                ..Default::default()
            },
            api_key,
        );
        r.metadata_mut()
            .insert("idempotency-key", key.parse().expect("ascii"));
        r
    };
    let c1 = chs
        .create_channel(create("g-ch", &keys.test))
        .await
        .expect("c1")
        .into_inner();
    let c2 = chs
        .create_channel(create("g-ch", &keys.test))
        .await
        .expect("c2")
        .into_inner();
    assert_eq!(c1.id, c2.id);
    let other = gw.customer("other").await;
    let c3 = chs
        .create_channel(create("g-ch", &other.test))
        .await
        .expect("c3")
        .into_inner();
    assert_ne!(c3.id, c1.id);
    gw.stop().await;
    db.drop_db().await;
}

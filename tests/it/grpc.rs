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

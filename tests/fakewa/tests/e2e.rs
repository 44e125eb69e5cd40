//! The unmodified whatsapp-rust client against fakewa: pairing, login, lifecycle controls and
//! 1:1 text both ways. One test binary (linking the client is slow); scenarios run in parallel,
//! each against its own server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fakewa::{ControlError, FakeWa, ReceiptStatus};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use whatsapp_rust::TokioRuntime;
use whatsapp_rust::bot::{Bot, BotHandle, EventDelivery};
use whatsapp_rust::http::{HttpClient, HttpRequest, HttpResponse};
use whatsapp_rust::pair_code::PairCodeOptions;
use whatsapp_rust::transport::TokioWebSocketTransportFactory;
use whatsapp_rust::types::events::Event;
use whatsapp_rust::wacore::proto_helpers::MessageExt as _;
use whatsapp_rust::wacore::store::InMemoryBackend;
use whatsapp_rust::wacore::types::presence::ReceiptType;
use whatsapp_rust::{Client, Jid};

const WAIT: Duration = Duration::from_secs(30);

/// Media and `sw.js` are the only HTTP the client does; text needs neither (the version is pinned).
struct NoHttp;

#[async_trait::async_trait]
impl HttpClient for NoHttp {
    async fn execute(&self, request: HttpRequest) -> anyhow::Result<HttpResponse> {
        anyhow::bail!("no HTTP in these tests (asked for {})", request.url)
    }
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn fake() -> FakeWa {
    init_logging();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    FakeWa::start(listener).await.unwrap()
}

/// One run of the client over a store; a new `Device` on the same store is a restarted client.
struct Device {
    handle: Option<BotHandle>,
    client: Arc<Client>,
    events: mpsc::UnboundedReceiver<Arc<Event>>,
}

async fn client(
    fake: &FakeWa,
    store: &Arc<InMemoryBackend>,
    pair_code: Option<PairCodeOptions>,
) -> Device {
    client_at(&fake.ws_url(), store, pair_code).await
}

async fn client_at(
    url: &str,
    store: &Arc<InMemoryBackend>,
    pair_code: Option<PairCodeOptions>,
) -> Device {
    let (tx, events) = mpsc::unbounded_channel();
    let mut builder = Bot::builder()
        .with_backend_arc(store.clone())
        .with_transport_factory(TokioWebSocketTransportFactory::new().with_url(url))
        .with_http_client(NoHttp)
        .with_runtime(TokioRuntime)
        .with_version((2, 3000, 1_023_000_000))
        .skip_history_sync()
        .with_event_delivery(EventDelivery::Ordered { capacity: 4096 })
        .on_event(move |event, _client| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event);
            }
        });
    if let Some(options) = pair_code {
        builder = builder.with_pair_code(options);
    }
    if let Some(n) = std::env::var("FAKEWA_TEST_PREKEYS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.with_wanted_pre_key_count(n);
    }
    let bot = builder.build().await.unwrap();
    let client = bot.client();
    Device {
        handle: Some(bot.spawn()),
        client,
        events,
    }
}

impl Device {
    /// Waits for the first event `pick` accepts; panics after `WAIT` naming `what`.
    async fn wait<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    if let Some(found) = pick(&event) {
                        return found;
                    }
                }
                Ok(None) => panic!("event stream ended while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    async fn connected(&mut self) {
        self.wait("Connected", |e| {
            matches!(e, Event::Connected(_)).then_some(())
        })
        .await;
    }

    /// Whether an event `pick` accepts arrives within `within` (consuming events meanwhile).
    async fn sees(&mut self, within: Duration, mut pick: impl FnMut(&Event) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            if pick(&event) {
                return true;
            }
        }
        false
    }

    async fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await;
        }
    }

    /// The run loop ended on its own (logout, replace, ban…: no auto-reconnect).
    async fn run_loop_ends(&mut self) {
        let handle = self.handle.take().expect("client still running");
        tokio::time::timeout(WAIT, handle)
            .await
            .expect("the client kept running after a terminal event");
    }
}

/// Pairs a fresh store by QR and waits for `Connected`; returns the device and the seconds it
/// took from the first QR code to `Connected`.
async fn pair(fake: &FakeWa, phone: &str) -> (Arc<InMemoryBackend>, Device, f64) {
    let store = Arc::new(InMemoryBackend::new());
    let mut device = client(fake, &store, None).await;
    let qr = device
        .wait("a QR code", |e| match e {
            Event::PairingQrCode(qr) => Some(qr.code.clone()),
            _ => None,
        })
        .await;
    let started = Instant::now();
    let info = fake.scan(&qr, phone).await.unwrap();
    assert_eq!(info.phone_number, phone);
    let jid = device
        .wait("PairSuccess", |e| match e {
            Event::PairSuccess(p) => Some(p.id.clone()),
            _ => None,
        })
        .await;
    assert_eq!(jid.user, phone);
    assert_eq!(jid.device, info.device_id);
    // The first sync brings the push name the phone keeps in app state.
    let mut push_name = None;
    device
        .wait("Connected", |e| match e {
            Event::SelfPushNameUpdated(p) => {
                push_name = Some(p.new_name.clone());
                None
            }
            Event::Connected(_) => Some(()),
            _ => None,
        })
        .await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(push_name, Some(format!("fakewa {phone}")));
    (store, device, secs)
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_pairing_then_restart_resumes_over_ik() {
    let fake = fake().await;
    let phone = "15550001111";
    let (store, mut first, pair_secs) = pair(&fake, phone).await;
    let info = fake.device(phone).await.unwrap();
    assert!(info.connected);
    assert_eq!(info.logins, 1);
    assert_eq!(info.last_handshake.as_deref(), Some("XX"));
    println!("QR pairing: {pair_secs:.2}s from scan to Connected");
    assert_eq!(info.key_shares, 1);
    wait_until("the client uploads its pre-keys", async || {
        fake.device(phone).await.unwrap().prekeys > 0
    })
    .await;

    first.stop().await;
    wait_until("the server sees the client gone", async || {
        !fake.device(phone).await.unwrap().connected
    })
    .await;

    // A new client on the same store: no QR, IK handshake, logged in again.
    let started = Instant::now();
    let mut second = client(&fake, &store, None).await;
    let mut saw_qr = false;
    second
        .wait("Connected after restart", |e| match e {
            Event::PairingQrCode(_) => {
                saw_qr = true;
                None
            }
            Event::Connected(_) => Some(()),
            _ => None,
        })
        .await;
    println!(
        "resume: {:.2}s to Connected",
        started.elapsed().as_secs_f64()
    );
    assert!(!saw_qr, "a paired store must not be shown a QR code");
    let info = fake.device(phone).await.unwrap();
    assert!(info.connected);
    assert_eq!(info.logins, 2);
    assert_eq!(info.last_handshake.as_deref(), Some("IK"));
    assert!(
        info.last_edge_routed,
        "the restart should use the stored edge routing"
    );
    second.stop().await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_reconnects() {
    let fake = fake().await;
    let phone = "15550002222";
    let (_store, mut device, _) = pair(&fake, phone).await;
    fake.drop_connection(phone).await.unwrap();
    device
        .wait("Disconnected", |e| {
            matches!(e, Event::Disconnected(_)).then_some(())
        })
        .await;
    device.connected().await;
    let info = fake.device(phone).await.unwrap();
    assert!(info.connected);
    assert_eq!(info.logins, 2);
    assert_eq!(info.last_handshake.as_deref(), Some("IK"));
    device.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_unlinks_the_device_for_good() {
    let fake = fake().await;
    let phone = "15550003333";
    let (store, mut device, _) = pair(&fake, phone).await;
    fake.logout(phone).await.unwrap();
    let on_connect = device
        .wait("LoggedOut", |e| match e {
            Event::LoggedOut(l) => Some(l.on_connect),
            _ => None,
        })
        .await;
    assert!(!on_connect);
    device.run_loop_ends().await;
    assert_eq!(
        fake.device(phone).await,
        Err(ControlError::UnknownPhone(phone.into()))
    );
    assert_eq!(
        fake.drop_connection(phone).await,
        Err(ControlError::UnknownPhone(phone.into()))
    );

    // The old credentials are refused at login.
    let mut again = client(&fake, &store, None).await;
    let on_connect = again
        .wait("LoggedOut at login", |e| match e {
            Event::LoggedOut(l) => Some(l.on_connect),
            _ => None,
        })
        .await;
    assert!(on_connect);
    again.run_loop_ends().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_stops_the_client() {
    let fake = fake().await;
    let phone = "15550004444";
    let (_store, mut device, _) = pair(&fake, phone).await;
    fake.replace(phone).await.unwrap();
    device
        .wait("StreamReplaced", |e| {
            matches!(e, Event::StreamReplaced(_)).then_some(())
        })
        .await;
    device.run_loop_ends().await;
    wait_until("the server drops the replaced connection", async || {
        !fake.device(phone).await.unwrap().connected
    })
    .await;
    assert_eq!(
        fake.replace(phone).await,
        Err(ControlError::NotConnected(phone.into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_is_a_temporary_ban_until_it_expires() {
    let fake = fake().await;
    let phone = "15550005555";
    let (store, mut device, _) = pair(&fake, phone).await;
    fake.ban(phone, 3600).await.unwrap();
    let expire = device
        .wait("TemporaryBan", |e| match e {
            Event::TemporaryBan(b) => Some(b.expire.num_seconds()),
            _ => None,
        })
        .await;
    assert!((3590..=3600).contains(&expire), "expire {expire}");
    device.run_loop_ends().await;
    assert!(fake.device(phone).await.unwrap().banned_until.is_some());

    // Logins during the ban get the same answer.
    let mut again = client(&fake, &store, None).await;
    again
        .wait("TemporaryBan at login", |e| {
            matches!(e, Event::TemporaryBan(_)).then_some(())
        })
        .await;
    again.run_loop_ends().await;

    // A ban that has run out no longer stands in the way.
    fake.ban(phone, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut after = client(&fake, &store, None).await;
    after.connected().await;
    assert_eq!(fake.device(phone).await.unwrap().banned_until, None);
    after.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outdated_client_is_told_so() {
    let fake = fake().await;
    let phone = "15550006666";
    let (store, mut device, _) = pair(&fake, phone).await;
    fake.outdated(phone).await.unwrap();
    device
        .wait("ClientOutdated", |e| {
            matches!(e, Event::ClientOutdated(_)).then_some(())
        })
        .await;
    device.run_loop_ends().await;

    // One-shot: the same store logs in again afterwards.
    let mut again = client(&fake, &store, None).await;
    again.connected().await;
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_text_reaches_the_client_and_is_acked() {
    let fake = fake().await;
    let phone = "15550007777";
    let contact = "15559990001";
    let (_store, mut device, _) = pair(&fake, phone).await;

    for text in ["hello from a contact", "and a second one"] {
        let id = fake.inbound(phone, contact, text).await.unwrap();
        let (got_id, got_text, sender) = device
            .wait("the inbound message", |e| match e {
                Event::Messages(batch) => batch
                    .messages
                    .iter()
                    .find(|m| m.message.text_content().is_some())
                    .map(|m| {
                        (
                            m.info.id.clone(),
                            m.message.text_content().unwrap_or_default().to_string(),
                            m.info.source.sender.clone(),
                        )
                    }),
                _ => None,
            })
            .await;
        assert_eq!(got_id, id);
        assert_eq!(got_text, text);
        assert_eq!(sender.user, contact);
        assert!(
            fake.wait_inbound_acked(phone, &id, WAIT).await.unwrap(),
            "the client never acknowledged {id}"
        );
    }
    let list = fake.inbound_list(phone).await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(
        list.iter()
            .all(|m| m.acked_at_ms.is_some() && m.retries == 0)
    );

    // A delivery the client cannot decrypt: it asks again and the contact re-sends.
    let id = fake
        .inbound_corrupted(phone, contact, "damaged on the first try")
        .await
        .unwrap();
    let text = device
        .wait("the re-sent message", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .find(|m| m.info.id == id)
                .map(|m| m.message.text_content().unwrap_or_default().to_string()),
            _ => None,
        })
        .await;
    assert_eq!(text, "damaged on the first try");
    let status = fake.inbound_status(phone, &id).await.unwrap();
    assert_eq!(status.retries, 1);
    assert!(fake.wait_inbound_acked(phone, &id, WAIT).await.unwrap());
    device.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_while_offline_arrives_at_the_next_login() {
    let fake = fake().await;
    let phone = "15550007788";
    let contact = "15559990002";
    let (store, mut first, _) = pair(&fake, phone).await;
    first.stop().await;
    wait_until("the server sees the client gone", async || {
        !fake.device(phone).await.unwrap().connected
    })
    .await;

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            fake.inbound(phone, contact, &format!("queued {i}"))
                .await
                .unwrap(),
        );
    }
    assert!(
        fake.inbound_list(phone)
            .await
            .unwrap()
            .iter()
            .all(|m| m.acked_at_ms.is_none())
    );

    let mut second = client(&fake, &store, None).await;
    let mut got = Vec::new();
    while got.len() < ids.len() {
        let batch = second
            .wait("the queued messages", |e| match e {
                Event::Messages(batch) => Some(
                    batch
                        .messages
                        .iter()
                        .filter(|m| m.message.text_content().is_some())
                        .map(|m| m.info.id.clone())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .await;
        got.extend(batch);
    }
    assert_eq!(got, ids, "the offline queue is delivered in order");
    for id in &ids {
        assert!(fake.wait_inbound_acked(phone, id, WAIT).await.unwrap());
    }
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_text_is_decrypted_by_the_contact_and_receipts_flow_back() {
    let fake = fake().await;
    let phone = "15550008888";
    let contact = "15559990002";
    let (_store, mut device, _) = pair(&fake, phone).await;

    let sent = device
        .client
        .send_text(Jid::pn(contact), "hi contact, first message")
        .await
        .unwrap();
    let second = device
        .client
        .send_text(Jid::pn(contact), "second one")
        .await
        .unwrap();
    wait_until("both texts reach the contact", async || {
        fake.outbound(phone).await.unwrap().len() >= 2
    })
    .await;
    let out = fake.outbound(phone).await.unwrap();
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].to, contact);
    assert_eq!(out[0].text, "hi contact, first message");
    assert_eq!(out[0].message_id, sent.message_id);
    assert_eq!(out[1].text, "second one");
    assert_eq!(out[1].message_id, second.message_id);

    fake.receipt(phone, &sent.message_id, ReceiptStatus::Read)
        .await
        .unwrap();
    let (ids, kind) = device
        .wait("the read receipt", |e| match e {
            Event::Receipt(r) => Some((r.message_ids.clone(), r.r#type.clone())),
            _ => None,
        })
        .await;
    assert!(ids.contains(&sent.message_id), "{ids:?}");
    assert_eq!(kind, ReceiptType::Read);
    assert!(matches!(
        fake.receipt(phone, "NOPE", ReceiptStatus::Delivered).await,
        Err(ControlError::NotFound(_))
    ));

    // The contact answers on the session the client opened.
    let id = fake.inbound(phone, contact, "got it").await.unwrap();
    let got = device
        .wait("the reply", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .find(|m| m.info.id == id)
                .map(|m| m.message.text_content().unwrap_or_default().to_string()),
            _ => None,
        })
        .await;
    assert_eq!(got, "got it");
    device.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_code_links_the_device() {
    let fake = fake().await;
    let phone = "15550009999";
    let store = Arc::new(InMemoryBackend::new());
    let options = PairCodeOptions {
        phone_number: phone.into(),
        ..Default::default()
    };
    let mut device = client(&fake, &store, Some(options)).await;
    let code = device
        .wait("a pairing code", |e| match e {
            Event::PairingCode(c) => Some(c.code.clone()),
            _ => None,
        })
        .await;
    let wrong: String = code.chars().rev().collect();
    if wrong != code {
        assert!(matches!(
            fake.pair_code(phone, &wrong).await,
            Err(ControlError::Failed(_))
        ));
    }
    let info = fake.pair_code(phone, &code).await.unwrap();
    assert_eq!(info.phone_number, phone);
    device
        .wait("PairSuccess", |e| {
            matches!(e, Event::PairSuccess(_)).then_some(())
        })
        .await;
    device.connected().await;
    assert!(fake.device(phone).await.unwrap().connected);
    device.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_reject_unknown_phones() {
    let fake = fake().await;
    assert_eq!(
        fake.inbound("15550000000", "15559990003", "x").await,
        Err(ControlError::UnknownPhone("15550000000".into()))
    );
    assert!(matches!(
        fake.scan("ref,AAAA,BBBB,CCCC,WEB", "15550000000").await,
        Err(ControlError::BadRequest(_))
    ));
    assert!(fake.devices().await.is_empty());
    let silent = {
        let store = Arc::new(InMemoryBackend::new());
        let mut device = client(&fake, &store, None).await;
        let seen = device
            .sees(Duration::from_secs(2), |e| matches!(e, Event::Connected(_)))
            .await;
        device.stop().await;
        seen
    };
    assert!(!silent, "an unpaired client must not reach Connected");
}

/// A bare HTTP/1.1 exchange with the control API (JSON in, status and JSON out).
async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let request = {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
        let (_, payload) = raw.split_once("\r\n\r\n").unwrap();
        (status, serde_json::from_str(payload).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_over_http() {
    let fake = fake().await;
    let addr = fake.addr();
    let phone = "15550001234";
    let contact = "15559990004";

    assert_eq!(
        http(addr, "GET", "/control/devices", None).await,
        (200, json!([]))
    );
    let (status, body) = http(
        addr,
        "POST",
        &format!("/control/devices/{phone}/drop"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains(phone), "{body}");
    let (status, body) = http(addr, "POST", "/control/scan", Some(json!({ "qr": "x" }))).await;
    assert_eq!(status, 400);
    assert!(body["error"].is_string(), "{body}");

    // Pair through the API.
    let store = Arc::new(InMemoryBackend::new());
    let mut device = client(&fake, &store, None).await;
    let qr = device
        .wait("a QR code", |e| match e {
            Event::PairingQrCode(qr) => Some(qr.code.clone()),
            _ => None,
        })
        .await;
    let (status, info) = http(
        addr,
        "POST",
        "/control/scan",
        Some(json!({ "qr": qr, "phone_number": phone })),
    )
    .await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["phone_number"], phone);
    device.connected().await;
    let (status, list) = http(addr, "GET", "/control/devices", None).await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["phone_number"], phone);
    assert_eq!(list[0]["connected"], true);

    // Inbound, and its acknowledgement.
    let (status, body) = http(
        addr,
        "POST",
        &format!("/control/devices/{phone}/inbound"),
        Some(json!({ "from": contact, "text": "over http" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["message_id"].as_str().unwrap().to_string();
    let text = device
        .wait("the inbound message", |e| match e {
            Event::Messages(batch) => batch
                .messages
                .iter()
                .find(|m| m.info.id == id)
                .map(|m| m.message.text_content().unwrap_or_default().to_string()),
            _ => None,
        })
        .await;
    assert_eq!(text, "over http");
    wait_until("the API reports the ack", async || {
        let (_, status) = http(
            addr,
            "GET",
            &format!("/control/devices/{phone}/inbound/{id}"),
            None,
        )
        .await;
        status["acked_at_ms"].is_u64()
    })
    .await;

    // Outbound, and receipts.
    let sent = device
        .client
        .send_text(Jid::pn(contact), "reply over http")
        .await
        .unwrap();
    wait_until("the outbound text is listed", async || {
        let (_, out) = http(
            addr,
            "GET",
            &format!("/control/devices/{phone}/outbound"),
            None,
        )
        .await;
        out.as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let (_, out) = http(
        addr,
        "GET",
        &format!("/control/devices/{phone}/outbound"),
        None,
    )
    .await;
    assert_eq!(
        out,
        json!([{ "to": contact, "text": "reply over http", "message_id": sent.message_id, "type": "text", "media": null }])
    );
    let receipt = format!("/control/devices/{phone}/receipt");
    let (status, _) = http(
        addr,
        "POST",
        &receipt,
        Some(json!({ "message_id": sent.message_id, "status": "delivered" })),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = http(
        addr,
        "POST",
        &receipt,
        Some(json!({ "message_id": sent.message_id, "status": "bogus" })),
    )
    .await;
    assert_eq!(status, 400);

    // A ban without a body (one day by default) ends the session.
    let (status, _) = http(addr, "POST", &format!("/control/devices/{phone}/ban"), None).await;
    assert_eq!(status, 200);
    let expire = device
        .wait("TemporaryBan", |e| match e {
            Event::TemporaryBan(b) => Some(b.expire.num_seconds()),
            _ => None,
        })
        .await;
    assert!(expire > 86_000, "expire {expire}");
    device.run_loop_ends().await;
    wait_until("the device shows disconnected", async || {
        let (_, d) = http(addr, "GET", &format!("/control/devices/{phone}"), None).await;
        d["connected"] == false
    })
    .await;
    let (status, body) = http(
        addr,
        "POST",
        &format!("/control/devices/{phone}/outdated"),
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Resident memory of the `fakewa` process per paired, connected client. A measurement, not a
/// check: `FAKEWA_MEM_CLIENTS=200 cargo test -p fakewa --test e2e -- --ignored --nocapture memory`
/// (optionally with `FAKEWA_BIN=target/release/fakewa`).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement; run explicitly"]
async fn memory_per_connection() {
    use std::io::BufRead;
    init_logging();
    let n: usize = std::env::var("FAKEWA_MEM_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    // FAKEWA_BIN=target/release/fakewa measures an optimized server instead of the test build.
    let bin = std::env::var("FAKEWA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_fakewa").into());
    let mut server = std::process::Command::new(bin)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"));
    let url = format!("ws://{addr}/ws/chat");
    let heap = async || {
        let (_, stats) = http(addr, "GET", "/control/stats", None).await;
        stats["heap_bytes"].as_u64().unwrap_or(0)
    };
    let before = rss_kib(server.id());
    let heap_before = heap().await;

    let started = Instant::now();
    let mut devices = Vec::new();
    for batch in 0..n.div_ceil(25) {
        let mut joins = Vec::new();
        for i in batch * 25..((batch + 1) * 25).min(n) {
            let url = url.clone();
            joins.push(tokio::spawn(async move {
                let store = Arc::new(InMemoryBackend::new());
                let mut device = client_at(&url, &store, None).await;
                let qr = device
                    .wait("a QR code", |e| match e {
                        Event::PairingQrCode(qr) => Some(qr.code.clone()),
                        _ => None,
                    })
                    .await;
                let phone = format!("1666{i:07}");
                let (status, body) = http(
                    addr,
                    "POST",
                    "/control/scan",
                    Some(json!({ "qr": qr, "phone_number": phone })),
                )
                .await;
                assert_eq!(status, 200, "{body}");
                device.connected().await;
                device
            }));
        }
        for join in joins {
            devices.push(join.await.unwrap());
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(server.id());
    let heap_after = heap().await;
    println!(
        "{n} paired clients connected in {:.1}s; fakewa RSS {before} -> {after} KiB ({:.1} KiB \
         per connected device), live heap {:.1} KiB per connected device",
        started.elapsed().as_secs_f64(),
        after.saturating_sub(before) as f64 / n as f64,
        heap_after.saturating_sub(heap_before) as f64 / 1024.0 / n as f64,
    );
    for mut device in devices {
        device.stop().await;
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// A client that cached another server's static key (here: a second server, as after a restart)
/// gets XX-fallback instead of a failed IK, and then the 401 of an unknown device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ik_against_a_new_server_key_falls_back_to_xx() {
    let first = fake().await;
    let (store, mut device, _) = pair(&first, "15550004321").await;
    device.stop().await;
    first.shutdown().await;

    let second = fake().await;
    let mut again = client(&second, &store, None).await;
    let on_connect = again
        .wait("LoggedOut at login", |e| match e {
            Event::LoggedOut(l) => Some(l.on_connect),
            _ => None,
        })
        .await;
    assert!(on_connect);
    let stats = second.stats().await;
    assert_eq!(stats.handshakes_xx_fallback, 1, "{stats:?}");
    assert_eq!(stats.handshakes_ik, 0, "{stats:?}");
    again.run_loop_ends().await;
}

/// Opens a WebSocket by hand and sends `payload` as one masked binary message; returns whether
/// the server closed the connection (rather than waiting for more) within a few seconds.
fn raw_ws_session(addr: SocketAddr, payload: &[u8]) -> bool {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /ws/chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    let mut frame = vec![0x82, 0x80 | payload.len() as u8, 1, 2, 3, 4];
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
    );
    stream.write_all(&frame).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    // EOF (or a reset) ends the read; a timeout means the server kept the connection open.
    match stream.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => {
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_socket_closes_only_that_connection() {
    let fake = fake().await;
    let addr = fake.addr();
    // Not the WA preamble; then the preamble followed by a frame that is no handshake message.
    let mut bad_hello = b"WA\x06\x03".to_vec();
    bad_hello.extend_from_slice(&[0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]);
    for payload in [b"GET / HTTP/1.1".to_vec(), bad_hello] {
        let closed = tokio::task::spawn_blocking(move || raw_ws_session(addr, &payload))
            .await
            .unwrap();
        assert!(closed, "the server should hang up on a malformed stream");
    }
    wait_until("both bad connections are gone", async || {
        fake.stats().await.open_connections == 0
    })
    .await;
    // The server still pairs clients.
    let (_store, mut device, _) = pair(&fake, "15550004545").await;
    device.stop().await;
}

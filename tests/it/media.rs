//! Media: uploads, sends by media_id and by media_url (through the SSRF guard, with the size cap), validation,
//! inbound media on the sandbox, and signed, expiring download links.

use crate::util::*;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
/// A small cap, so oversize media are cheap to make.
const CAP: usize = 64 * 1024;

fn config(db: &TestDb) -> whatisup::config::Config {
    let mut c = test_config(db);
    c.send_rate_per_sec = 0.0;
    c.media_max_bytes = CAP;
    c.media_allow_cidrs = "127.0.0.0/8".into();
    c
}

/// Bytes that look like nothing in particular, distinct per seed.
fn blob(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[0] ^ seed)
        .collect()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client()
        .await
        .query_one(sql, &[])
        .await
        .expect("count")
        .get(0)
}

async fn events_of(db: &TestDb, channel_id: &str, event: &str) -> Vec<Value> {
    db.client()
        .await
        .query(
            "SELECT data FROM events WHERE channel_id = $1 AND event = $2 ORDER BY sequence",
            &[&channel_id, &event],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A media server on loopback: `/photo.jpg` (the JPEG), `/sticker.webp`, `/big` (over the cap, with a length),
/// `/big-chunked` (over the cap, no length), `/redirect` (302 to the photo), `/missing` (404). Counts requests.
struct MediaServer {
    base: String,
    hits: Arc<AtomicUsize>,
    jpeg: Vec<u8>,
}

async fn media_server() -> MediaServer {
    let jpeg = blob(7, 20_000);
    let hits = Arc::new(AtomicUsize::new(0));
    let (j, h) = (jpeg.clone(), hits.clone());
    let app = axum::Router::new()
        .route(
            "/photo.jpg",
            axum::routing::get(move || {
                let j = j.clone();
                async move { ([("content-type", "image/jpeg")], j).into_response() }
            }),
        )
        .route(
            "/sticker.webp",
            axum::routing::get(|| async { ([("content-type", "image/webp")], blob(3, 500)) }),
        )
        .route(
            "/big",
            axum::routing::get(|| async { ([("content-type", "image/jpeg")], blob(1, CAP + 1)) }),
        )
        .route(
            "/big-chunked",
            axum::routing::get(|| async {
                let chunks = (0..20).map(|i| Ok::<_, std::io::Error>(blob(i, 8 * 1024)));
                (
                    [("content-type", "image/jpeg")],
                    axum::body::Body::from_stream(futures::stream::iter(chunks)),
                )
            }),
        )
        .route(
            "/redirect",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::FOUND,
                    [("location", "/photo.jpg")],
                    "",
                )
            }),
        )
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    next.run(req).await
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    MediaServer { base, hits, jpeg }
}

/// Raw upload: (status, JSON).
async fn upload(
    api: &Api,
    ch: &str,
    content_type: Option<&str>,
    query: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut rb = api
        .http
        .post(format!("{}/v1/channels/{ch}/media{query}", api.base))
        .bearer_auth(&api.key)
        .body(body);
    if let Some(ct) = content_type {
        rb = rb.header("content-type", ct);
    }
    let resp = rb.send().await.expect("upload");
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

async fn wait_sent(api: &Api, ch: &str, mid: &str) -> Value {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (s, m) = api.get(&format!("/v1/channels/{ch}/messages/{mid}")).await;
        assert_eq!(s, 200, "{m}");
        if m["status"] == "sent" {
            return m;
        }
        assert_ne!(m["status"], "failed", "{m}");
        assert!(tokio::time::Instant::now() < deadline, "not sent: {m}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn accepted(api: &Api, ch: &str) -> Vec<Value> {
    let (s, r) = api
        .get(&format!("/v1/channels/{ch}/sandbox/outbound"))
        .await;
    assert_eq!(s, 200, "{r}");
    r["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_once_send_twice_by_media_id() {
    let db = TestDb::new();
    let gw = Gw::start(config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.connected_channel("c").await;
    let bytes = blob(9, 30_000);

    let (s, up) = upload(&api, &ch, Some("image/jpeg"), "", bytes.clone()).await;
    assert_eq!(s, 201, "{up}");
    let media_id = up["media_id"].as_str().expect("media_id").to_string();
    assert!(media_id.starts_with("med_"), "{up}");
    assert_eq!(up["mime_type"], "image/jpeg");
    assert_eq!(up["size"], 30_000);
    assert_eq!(up["sha256"], sha(&bytes));

    // Refused uploads store nothing.
    let (s, r) = upload(&api, &ch, Some("image/jpeg"), "", blob(1, CAP + 1)).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{r}"
    );
    let (s, r) = upload(&api, &ch, None, "", bytes.clone()).await;
    assert_eq!(
        (s, r["error"]["details"]["field"].as_str()),
        (400, Some("mime_type")),
        "{r}"
    );
    let (s, r) = upload(
        &api,
        &ch,
        Some("multipart/form-data; boundary=x"),
        "",
        bytes.clone(),
    )
    .await;
    assert_eq!(
        (s, r["error"]["details"]["field"].as_str()),
        (400, Some("mime_type")),
        "{r}"
    );
    let (s, r) = upload(
        &api,
        &ch,
        Some("image/jpeg"),
        "?filename=a/b",
        bytes.clone(),
    )
    .await;
    assert_eq!(
        (s, r["error"]["details"]["field"].as_str()),
        (400, Some("filename")),
        "{r}"
    );
    let (s, r) = upload(&api, &ch, Some("image/jpeg"), "", Vec::new()).await;
    assert_eq!(s, 400, "{r}");
    // Another customer's channel is not found, and its key cannot use this media.
    let other = gw.customer("other").await;
    let other_api = Api::new(&gw.base, &other.test);
    let (s, _) = upload(&other_api, &ch, Some("image/jpeg"), "", bytes.clone()).await;
    assert_eq!(s, 404);
    assert_eq!(count(&db, "SELECT count(*) FROM media").await, 1);

    let send =
        json!({"to": "+15551230001", "type": "image", "media_id": media_id, "caption": "look"});
    let (s, a) = api
        .post(&format!("/v1/channels/{ch}/messages"), send.clone())
        .await;
    assert_eq!(s, 202, "{a}");
    let (s, b) = api.post(&format!("/v1/channels/{ch}/messages"), send).await;
    assert_eq!(s, 202, "{b}");
    for r in [&a, &b] {
        let m = wait_sent(&api, &ch, r["message_id"].as_str().unwrap()).await;
        assert_eq!(m["type"], "image");
        assert_eq!(m["caption"], "look");
        assert_eq!(m["media"]["media_id"], media_id);
        assert_eq!(m["media"]["sha256"], sha(&bytes));
        assert_eq!(m["media"]["size"], 30_000);
    }
    let got = accepted(&api, &ch).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for g in &got {
        assert_eq!(g["type"], "image", "{g}");
        assert_eq!(g["caption"], "look", "{g}");
        // The simulated server hashed the bytes it was given.
        assert_eq!(g["media"]["sha256"], sha(&bytes), "{g}");
        assert_eq!(g["media"]["size"], 30_000, "{g}");
        assert_eq!(g["media"]["mime_type"], "image/jpeg", "{g}");
    }

    // A sticker must be webp; a document needs a filename (given at upload here).
    let (s, r) = api
        .post(
            &format!("/v1/channels/{ch}/messages"),
            json!({"to": "+15551230001", "type": "sticker", "media_id": media_id}),
        )
        .await;
    assert_eq!(
        (s, r["error"]["details"]["field"].as_str()),
        (400, Some("media_id")),
        "{r}"
    );
    let (s, r) = api
        .post(
            &format!("/v1/channels/{ch}/messages"),
            json!({"to": "+15551230001", "type": "document", "media_id": media_id}),
        )
        .await;
    assert_eq!(
        (s, r["error"]["details"]["field"].as_str()),
        (400, Some("filename")),
        "{r}"
    );
    let (s, doc) = upload(
        &api,
        &ch,
        Some("application/pdf"),
        "?filename=report.pdf",
        blob(4, 900),
    )
    .await;
    assert_eq!(
        (s, doc["filename"].as_str()),
        (201, Some("report.pdf")),
        "{doc}"
    );
    let (s, r) = api
        .post(
            &format!("/v1/channels/{ch}/messages"),
            json!({"to": "+15551230001", "type": "document", "media_id": doc["media_id"]}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let m = wait_sent(&api, &ch, r["message_id"].as_str().unwrap()).await;
    assert_eq!(m["media"]["filename"], "report.pdf");
    // Media of another channel is unknown here.
    let ch2 = api.connected_channel("c2").await;
    let (s, r) = api
        .post(
            &format!("/v1/channels/{ch2}/messages"),
            json!({"to": "+15551230001", "type": "image", "media_id": media_id}),
        )
        .await;
    assert_eq!(
        (s, r["error"]["details"]["field"].as_str()),
        (400, Some("media_id")),
        "{r}"
    );

    // gRPC upload: the same answer shape.
    let mut grpc = whatisup::pb::media_service_client::MediaServiceClient::connect(gw.base.clone())
        .await
        .expect("grpc");
    let up = grpc
        .upload_media(authed(
            whatisup::pb::UploadMediaRequest {
                channel_id: ch.clone(),
                mime_type: "image/webp".into(),
                data: blob(5, 2_000),
                filename: None,
            },
            &keys.test,
        ))
        .await
        .expect("grpc upload")
        .into_inner();
    assert_eq!(
        (up.size, up.sha256.as_str()),
        (2_000, sha(&blob(5, 2_000)).as_str())
    );
    let err = grpc
        .upload_media(authed(
            whatisup::pb::UploadMediaRequest {
                channel_id: ch.clone(),
                mime_type: "nonsense".into(),
                data: blob(5, 10),
                filename: None,
            },
            &keys.test,
        ))
        .await
        .expect_err("bad mime");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    gw.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_url_is_fetched_through_the_guard_with_the_cap() {
    let db = TestDb::new();
    let gw = Gw::start(config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.connected_channel("c").await;
    let srv = media_server().await;
    let path = format!("/v1/channels/{ch}/messages");
    let to = "+15551230002";

    let (s, r) = api
        .post(
            &path,
            json!({"to": to, "type": "image", "media_url": format!("{}/photo.jpg", srv.base), "caption": "from a URL"}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let m = wait_sent(&api, &ch, r["message_id"].as_str().unwrap()).await;
    assert_eq!(m["media"]["sha256"], sha(&srv.jpeg));
    let got = accepted(&api, &ch).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["media"]["sha256"], sha(&srv.jpeg));
    assert_eq!(got[0]["caption"], "from a URL");
    assert_eq!(count(&db, "SELECT count(*) FROM media").await, 1);

    // Refused fetches answer 400 naming media_url, and store nothing (no media, no message).
    let before = srv.hits.load(Ordering::SeqCst);
    for (url, says) in [
        (format!("{}/big", srv.base), "larger than"),
        (format!("{}/big-chunked", srv.base), "larger than"),
        (format!("{}/redirect", srv.base), "redirect"),
        (format!("{}/missing", srv.base), "404"),
        ("http://10.1.2.3/x.jpg".to_string(), "private"),
        ("http://169.254.169.254/latest".to_string(), "link-local"),
    ] {
        let (s, r) = api
            .post(&path, json!({"to": to, "type": "image", "media_url": url}))
            .await;
        assert_eq!(s, 400, "{url}: {r}");
        assert_eq!(r["error"]["details"]["field"], "media_url", "{url}: {r}");
        assert!(
            r["error"]["message"].as_str().unwrap_or("").contains(says),
            "{url}: {r}"
        );
    }
    // The private addresses were refused before any connection.
    assert_eq!(srv.hits.load(Ordering::SeqCst), before + 4);
    // A sticker URL serving webp goes; an image URL serving webp as a sticker's type is checked.
    let (s, r) = api
        .post(
            &path,
            json!({"to": to, "type": "sticker", "media_url": format!("{}/photo.jpg", srv.base)}),
        )
        .await;
    assert_eq!(
        (s, r["error"]["details"]["field"].as_str()),
        (400, Some("media_url")),
        "{r}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM media").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM messages").await, 1);
    let (s, r) = api
        .post(
            &path,
            json!({"to": to, "type": "sticker", "media_url": format!("{}/sticker.webp", srv.base)}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    wait_sent(&api, &ch, r["message_id"].as_str().unwrap()).await;
    gw.stop().await;

    // Without the allow-list, loopback is refused (a literal address, and a name resolving to it).
    let mut strict = config(&db);
    strict.media_allow_cidrs = String::new();
    let gw = Gw::start(strict).await;
    let api = Api::new(&gw.base, &keys.test);
    api.wait_status(&ch, "connected", T).await;
    let port = srv.base.rsplit(':').next().unwrap().to_string();
    let before = srv.hits.load(Ordering::SeqCst);
    for url in [
        format!("{}/photo.jpg", srv.base),
        format!("http://localhost:{port}/photo.jpg"),
    ] {
        let (s, r) = api
            .post(&path, json!({"to": to, "type": "image", "media_url": url}))
            .await;
        assert_eq!(s, 400, "{url}: {r}");
        assert_eq!(r["error"]["details"]["field"], "media_url", "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("loopback"),
            "{url}: {r}"
        );
    }
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        before,
        "nothing reached the server"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM media").await, 2);
    gw.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_media_sends_name_the_field() {
    let db = TestDb::new();
    let gw = Gw::start(config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.connected_channel("c").await;
    let to = "+15551230003";
    let url = "https://example.com/a.jpg";
    let med = "med_01JZZZZZZZZZZZZZZZZZZZZZZZ";
    let cases: Vec<(Value, &str)> = vec![
        (json!({"to": to, "type": "image"}), "media_url"),
        (
            json!({"to": to, "type": "image", "media_url": url, "media_id": med}),
            "media_url",
        ),
        (
            json!({"to": to, "type": "image", "media_url": "ftp://example.com/a.jpg"}),
            "media_url",
        ),
        (
            json!({"to": to, "type": "image", "media_url": "not a url"}),
            "media_url",
        ),
        (
            json!({"to": to, "type": "image", "media_url": 5}),
            "media_url",
        ),
        (
            json!({"to": to, "type": "image", "media_id": "nope"}),
            "media_id",
        ),
        (
            json!({"to": to, "type": "image", "media_id": med}),
            "media_id",
        ),
        (
            json!({"to": to, "type": "image", "media_url": url, "text": "hi"}),
            "text",
        ),
        (
            json!({"to": to, "type": "image", "media_url": url, "caption": "c".repeat(1025)}),
            "caption",
        ),
        (
            json!({"to": to, "type": "audio", "media_url": url, "caption": "no"}),
            "caption",
        ),
        (
            json!({"to": to, "type": "document", "media_url": url}),
            "filename",
        ),
        (
            json!({"to": to, "type": "document", "media_url": url, "filename": "a/b.pdf"}),
            "filename",
        ),
        (
            json!({"to": to, "type": "image", "media_url": url, "filename": "a.jpg"}),
            "filename",
        ),
        (
            json!({"to": to, "type": "sticker", "media_url": url, "mime_type": "image/png"}),
            "mime_type",
        ),
        (
            json!({"to": to, "type": "image", "media_url": url, "mime_type": "jpeg"}),
            "mime_type",
        ),
        (
            json!({"to": to, "type": "text", "text": "hi", "media_url": url}),
            "media_url",
        ),
        (
            json!({"to": to, "type": "text", "text": "hi", "caption": "x"}),
            "caption",
        ),
        (json!({"type": "image", "media_url": url}), "to"),
        (json!({"to": to, "type": "gif", "media_url": url}), "type"),
    ];
    for (body, field) in cases {
        let (s, r) = api
            .post(&format!("/v1/channels/{ch}/messages"), body.clone())
            .await;
        assert_eq!(s, 400, "{body} → {r}");
        assert_eq!(r["error"]["code"], "invalid_request", "{body} → {r}");
        assert_eq!(r["error"]["details"]["field"], field, "{body} → {r}");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM messages").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM media").await, 0);
    gw.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_media_is_served_by_signed_expiring_links() {
    let db = TestDb::new();
    let gw = Gw::start(config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.connected_channel("c").await;
    let srv = media_server().await;
    let bytes = blob(11, 12_345);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let inbound = format!("/v1/channels/{ch}/sandbox/inbound");

    let (s, r) = api
        .post(
            &inbound,
            json!({"from": "+15550001111", "type": "image", "media_base64": b64, "mime_type": "image/png", "caption": "hi there"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let mid = r["message_id"].as_str().expect("message_id").to_string();
    let (s, r) = api
        .post(
            &inbound,
            json!({"from": "+15550001111", "type": "document", "media_url": format!("{}/photo.jpg", srv.base), "filename": "p.jpg"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let got = events_of(&db, &ch, "message.received").await;
    assert_eq!(got.len(), 2, "{got:?}");
    let m = &got[0];
    assert_eq!(m["message_id"], mid.as_str());
    assert_eq!(m["type"], "image");
    assert_eq!(m["caption"], "hi there");
    assert_eq!(m["media"]["mime_type"], "image/png");
    assert_eq!(m["media"]["size"], 12_345);
    assert_eq!(m["media"]["sha256"], sha(&bytes));
    let url = m["media"]["url"].as_str().expect("url").to_string();
    assert!(url.starts_with("/v1/media/med_"), "{url}");
    assert_eq!(got[1]["type"], "document");
    assert_eq!(got[1]["media"]["sha256"], sha(&srv.jpeg));
    assert_eq!(got[1]["media"]["filename"], "p.jpg");

    // No API key needed; the bytes and their type come back.
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}{url}", gw.base))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/png")
    );
    assert_eq!(resp.bytes().await.expect("bytes").to_vec(), bytes);
    let doc_url = got[1]["media"]["url"].as_str().unwrap();
    let resp = http
        .get(format!("{}{doc_url}", gw.base))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("p.jpg"),
        "{:?}",
        resp.headers()
    );
    assert_eq!(resp.bytes().await.unwrap().to_vec(), srv.jpeg);

    // Tampered: 404. Expired (signed for the past): 404 too, saying it expired.
    let token = url.trim_start_matches("/v1/media/").to_string();
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let (id, rest) = token.split_once('.').unwrap();
    let (exp, sig) = rest.split_once('.').unwrap();
    let later = exp.parse::<i64>().unwrap() + 3600;
    for (t, status, code) in [
        (tampered.as_str(), 404, "not_found"),
        ("garbage", 404, "not_found"),
        (&format!("{id}.{later}.{sig}"), 404, "not_found"),
    ] {
        let (s, r) = Api::new(&gw.base, "").get(&format!("/v1/media/{t}")).await;
        assert_eq!(
            (s, r["error"]["code"].as_str()),
            (status, Some(code)),
            "{t}: {r}"
        );
    }
    let past = gw
        .running
        .app
        .media
        .url(id, chrono::Utc::now() - chrono::Duration::seconds(5));
    let (s, r) = Api::new(&gw.base, "").get(&past).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{r}"
    );

    // Past its retention, the cleanup deletes it and the (still signed) link answers 404 (expired).
    db.client()
        .await
        .execute(
            "UPDATE media SET expires_at = now() - interval '1 second' WHERE id = $1",
            &[&id],
        )
        .await
        .expect("age");
    let (s, r) = Api::new(&gw.base, "").get(&url).await;
    assert_eq!(s, 404, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{r}"
    );
    assert_eq!(gw.running.app.media.cleanup().await.expect("cleanup"), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM media").await, 1);

    // Malformed inbound media bodies name the field and store nothing.
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"from": "+15550001111", "type": "image", "mime_type": "image/png"}),
            "media_base64",
        ),
        (
            json!({"from": "+15550001111", "type": "image", "media_base64": "!!", "mime_type": "image/png"}),
            "media_base64",
        ),
        (
            json!({"from": "+15550001111", "type": "image", "media_base64": b64}),
            "mime_type",
        ),
        (
            json!({"from": "+15550001111", "type": "sticker", "media_base64": b64, "mime_type": "image/png"}),
            "mime_type",
        ),
        (
            json!({"from": "nobody", "type": "image", "media_base64": b64, "mime_type": "image/png"}),
            "from",
        ),
        (
            json!({"from": "+15550001111", "type": "gif", "media_base64": b64}),
            "type",
        ),
        (
            json!({"from": "+15550001111", "text": "hi", "media_base64": b64}),
            "media_base64",
        ),
        (
            json!({"from": "+15550001111", "type": "image", "media_url": "http://10.0.0.1/a.png", "mime_type": "image/png"}),
            "media_url",
        ),
    ];
    for (body, field) in cases {
        let (s, r) = api.post(&inbound, body.clone()).await;
        assert_eq!(s, 400, "{body} → {r}");
        assert_eq!(r["error"]["details"]["field"], field, "{body} → {r}");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM media").await, 1);
    assert_eq!(events_of(&db, &ch, "message.received").await.len(), 2);
    gw.stop().await;
    db.drop_db().await;
}

//! The HTTP side: the client WebSocket at `/ws/chat` and the JSON control API under `/control`.

use std::sync::Arc;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::state::Shared;
use crate::{ControlError, ReceiptStatus};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ws/chat", get(ws_chat))
        .route("/control/scan", post(scan))
        .route("/control/pair-code", post(pair_code))
        .route("/control/stats", get(stats))
        .route("/control/devices", get(devices))
        .route("/control/devices/{phone}", get(device))
        .route("/control/devices/{phone}/drop", post(drop_connection))
        .route("/control/devices/{phone}/logout", post(logout))
        .route("/control/devices/{phone}/replace", post(replace))
        .route("/control/devices/{phone}/ban", post(ban))
        .route("/control/devices/{phone}/outdated", post(outdated))
        .route(
            "/control/devices/{phone}/inbound",
            post(inbound)
                .get(inbound_list)
                // Media arrives base64-encoded in the body.
                .layer(axum::extract::DefaultBodyLimit::max(MAX_MEDIA * 2)),
        )
        .route("/control/devices/{phone}/inbound/{id}", get(inbound_status))
        .route("/control/devices/{phone}/receipt", post(receipt))
        .route("/control/devices/{phone}/outbound", get(outbound))
        // The media host (announced in media_conn): encrypted uploads and their downloads.
        .route(
            "/mms/{kind}/{token}",
            post(media_upload).layer(axum::extract::DefaultBodyLimit::max(MAX_MEDIA)),
        )
        .route("/v/t62.fake/{kind}/{id}", get(media_download))
        .with_state(shared)
}

/// Largest encrypted upload the fake media host takes.
const MAX_MEDIA: usize = 64 * 1024 * 1024;

/// `POST /mms/{kind}/{token}?auth=…`: keeps the encrypted blob, answers its URL and direct path.
async fn media_upload(
    State(s): State<Arc<Shared>>,
    Path((kind, _token)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let path = s.media_upload(&kind, body.to_vec()).await;
    let url = format!("https://{}{path}", s.media_host());
    Json(json!({"url": url, "direct_path": path})).into_response()
}

async fn media_download(
    State(s): State<Arc<Shared>>,
    Path((kind, id)): Path<(String, String)>,
) -> Response {
    match s.media_download(&format!("/v/t62.fake/{kind}/{id}")).await {
        Some(blob) => blob.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The WebSocket upgrade, by hand (see `wire`): answer 101 and hand the upgraded connection to a
/// connection task.
async fn ws_chat(State(shared): State<Arc<Shared>>, mut req: Request) -> Response {
    let headers = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, true, true, Some(key)) = (
        req.method() == Method::GET,
        has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket"),
        has(header::SEC_WEBSOCKET_VERSION, "13"),
        key,
    ) else {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade").into_response();
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "connection cannot be upgraded",
        )
            .into_response();
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                crate::conn::serve(shared, crate::wire::Wire::new(io)).await;
            }
            Err(e) => tracing::debug!("WebSocket upgrade failed: {e}"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&crate::wire::accept_key(key.as_bytes()))
                    .unwrap_or(HeaderValue::from_static("")),
            ),
        ],
    )
        .into_response()
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = match &self {
            ControlError::UnknownPhone(_) | ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::NotConnected(_) | ControlError::Failed(_) => StatusCode::CONFLICT,
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

type Reply = Result<Response, ControlError>;

/// `Json` whose rejections are JSON errors (400) like every other control error.
struct Body<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ControlError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state)
            .await
            .map_err(|e| ControlError::BadRequest(e.body_text()))?;
        Ok(Self(value))
    }
}

fn ok() -> Reply {
    Ok(Json(json!({ "ok": true })).into_response())
}

#[derive(Deserialize)]
struct ScanBody {
    qr: String,
    phone_number: String,
}

async fn scan(State(s): State<Arc<Shared>>, Body(b): Body<ScanBody>) -> Reply {
    Ok(Json(s.scan(&b.qr, &b.phone_number).await?).into_response())
}

#[derive(Deserialize)]
struct PairCodeBody {
    phone_number: String,
    code: String,
}

async fn pair_code(State(s): State<Arc<Shared>>, Body(b): Body<PairCodeBody>) -> Reply {
    Ok(Json(s.pair_code(&b.phone_number, &b.code).await?).into_response())
}

async fn stats(State(s): State<Arc<Shared>>) -> Reply {
    Ok(Json(s.stats()).into_response())
}

async fn devices(State(s): State<Arc<Shared>>) -> Reply {
    Ok(Json(s.devices()).into_response())
}

async fn device(State(s): State<Arc<Shared>>, Path(phone): Path<String>) -> Reply {
    Ok(Json(s.device(&phone)?).into_response())
}

async fn drop_connection(State(s): State<Arc<Shared>>, Path(phone): Path<String>) -> Reply {
    s.drop_connection(&phone).await?;
    ok()
}

async fn logout(State(s): State<Arc<Shared>>, Path(phone): Path<String>) -> Reply {
    s.logout(&phone).await?;
    ok()
}

async fn replace(State(s): State<Arc<Shared>>, Path(phone): Path<String>) -> Reply {
    s.replace(&phone).await?;
    ok()
}

#[derive(Deserialize, Default)]
struct BanBody {
    expire_secs: Option<u64>,
}

/// The body is optional: an empty request bans for a day.
async fn ban(
    State(s): State<Arc<Shared>>,
    Path(phone): Path<String>,
    body: axum::body::Bytes,
) -> Reply {
    let b: BanBody = if body.iter().all(u8::is_ascii_whitespace) {
        BanBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ControlError::BadRequest(e.to_string()))?
    };
    s.ban(&phone, b.expire_secs.unwrap_or(86_400)).await?;
    ok()
}

async fn outdated(State(s): State<Arc<Shared>>, Path(phone): Path<String>) -> Reply {
    s.outdated(&phone).await?;
    ok()
}

#[derive(Deserialize)]
struct InboundBody {
    from: String,
    /// text (default), location or reaction.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    text: Option<String>,
    /// Corrupt the first delivery, so the client must ask for a retry.
    #[serde(default)]
    corrupt: bool,
    latitude: Option<f64>,
    longitude: Option<f64>,
    name: Option<String>,
    address: Option<String>,
    /// Reaction: the message reacted to.
    message_id: Option<String>,
    emoji: Option<String>,
    /// Media: the plaintext bytes, their type, and what the message says of them.
    data_base64: Option<String>,
    mime_type: Option<String>,
    caption: Option<String>,
    filename: Option<String>,
    /// Media: corrupt the stored blob, so the recipient's verification fails.
    #[serde(default)]
    tamper: bool,
}

async fn inbound(
    State(s): State<Arc<Shared>>,
    Path(phone): Path<String>,
    Body(b): Body<InboundBody>,
) -> Reply {
    let missing = |f: &str| ControlError::BadRequest(format!("`{f}` is required"));
    let kind = match b.kind.as_deref() {
        None | Some("text") => {
            let text = b.text.ok_or_else(|| missing("text"))?;
            let id = s.inbound(&phone, &b.from, &text, b.corrupt).await?;
            return Ok(Json(json!({ "message_id": id })).into_response());
        }
        Some("location") => crate::InboundKind::Location {
            latitude: b.latitude.ok_or_else(|| missing("latitude"))?,
            longitude: b.longitude.ok_or_else(|| missing("longitude"))?,
            name: b.name,
            address: b.address,
        },
        Some("reaction") => crate::InboundKind::Reaction {
            message_id: b.message_id.ok_or_else(|| missing("message_id"))?,
            emoji: b.emoji.ok_or_else(|| missing("emoji"))?,
        },
        Some(kind @ ("image" | "video" | "audio" | "document" | "sticker")) => {
            use base64::Engine as _;
            let data = base64::engine::general_purpose::STANDARD
                .decode(b.data_base64.ok_or_else(|| missing("data_base64"))?)
                .map_err(|e| ControlError::BadRequest(format!("data_base64: {e}")))?;
            crate::InboundKind::Media {
                kind: kind.to_string(),
                data,
                mime_type: b.mime_type.ok_or_else(|| missing("mime_type"))?,
                caption: b.caption,
                filename: b.filename,
                tamper: b.tamper,
            }
        }
        Some(other) => {
            return Err(ControlError::BadRequest(format!(
                "unknown type `{other}`; try text, location, reaction, image, video, audio, document or sticker"
            )));
        }
    };
    let id = s.inbound_kind(&phone, &b.from, kind).await?;
    Ok(Json(json!({ "message_id": id })).into_response())
}

async fn inbound_list(State(s): State<Arc<Shared>>, Path(phone): Path<String>) -> Reply {
    Ok(Json(s.inbound_list(&phone)?).into_response())
}

async fn inbound_status(
    State(s): State<Arc<Shared>>,
    Path((phone, id)): Path<(String, String)>,
) -> Reply {
    Ok(Json(s.inbound_status(&phone, &id)?).into_response())
}

#[derive(Deserialize)]
struct ReceiptBody {
    message_id: String,
    status: ReceiptStatus,
}

async fn receipt(
    State(s): State<Arc<Shared>>,
    Path(phone): Path<String>,
    Body(b): Body<ReceiptBody>,
) -> Reply {
    s.receipt(&phone, &b.message_id, b.status).await?;
    ok()
}

async fn outbound(State(s): State<Arc<Shared>>, Path(phone): Path<String>) -> Reply {
    Ok(Json(s.outbound(&phone)?).into_response())
}

//! The REST/JSON face, SSE, health and metrics. Handlers are thin: authenticate, parse into the proto request,
//! call the same `App` method the gRPC face calls, serialise with pbjson (snake_case proto3 JSON).

use crate::api::{App, RateInfo};
use crate::engine::SandboxAction;
use crate::error::{ApiError, ApiResult, Code};
use crate::metrics::GaugeGuard;
use crate::model::Principal;
use crate::pb;
use axum::Json;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

mod audit;
mod dashboard;
pub(crate) mod idempotency;
pub mod openapi;
pub mod shape;
mod webhooks;

pub struct ReqCtx {
    request_id: String,
    rate: Mutex<Option<RateInfo>>,
}

tokio::task_local! {
    static CTX: Arc<ReqCtx>;
}

/// The id of the request being served (for error envelopes and audit records).
pub fn current_request_id() -> Option<String> {
    CTX.try_with(|c| c.request_id.clone()).ok()
}

pub fn set_rate(r: RateInfo) {
    let _ = CTX.try_with(|c| *c.rate.lock().unwrap_or_else(|e| e.into_inner()) = Some(r));
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = current_request_id().unwrap_or_else(|| crate::store::new_id("req"));
        let body = serde_json::json!({
            "error": {"code": self.code.as_str(), "message": self.message, "details": self.details},
            "request_id": request_id,
        });
        let mut resp = (self.code.http(), Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert("retry-after", v);
        }
        resp
    }
}

/// Metrics label for a path: ids folded, so the label set stays small.
fn route_label(path: &str) -> String {
    if !path.starts_with("/v1/") {
        return if path.starts_with("/whatisup.") || path.starts_with("/grpc.") {
            path.to_string()
        } else {
            "other".into()
        };
    }
    path.split('/')
        .map(|seg| {
            if ["ch_", "key_", "evt_", "msg_", "we_", "dlv_", "med_"]
                .iter()
                .any(|p| seg.starts_with(p))
            {
                "{id}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Request id, rate-limit headers and latency metrics for every request, gRPC included.
pub async fn context(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let grpc = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    let route = route_label(req.uri().path());
    let ctx = Arc::new(ReqCtx {
        request_id: crate::store::new_id("req"),
        rate: Mutex::new(None),
    });
    let mut resp = CTX.scope(ctx.clone(), next.run(req)).await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        h.insert("x-request-id", v);
    }
    // gRPC and grpc-web too: there they arrive as response metadata.
    let rate = ctx
        .rate
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_else(|| app.limiter.idle());
    h.insert("x-ratelimit-limit", HeaderValue::from(rate.limit));
    h.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(rate.remaining.max(0)),
    );
    h.insert("x-ratelimit-reset", HeaderValue::from(rate.reset));
    if grpc {
        grpc_error_details(h);
    }
    let status = resp.status().as_u16().to_string();
    app.metrics
        .http
        .with_label_values(&[if grpc { "grpc" } else { "http" }, &route, &status])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// tonic answers some errors itself, without ErrorInfo: an unknown method of a known service, a message it cannot
/// decode or that is over the size cap. Those come as trailers-only answers (the status in the headers); give them
/// the contract's details like every other error.
fn grpc_error_details(h: &mut HeaderMap) {
    let code = match h.get("grpc-status") {
        Some(v) if v.as_bytes() != b"0" => tonic::Code::from_bytes(v.as_bytes()),
        _ => return,
    };
    if h.contains_key("grpc-status-details-bin") {
        return;
    }
    let message = h
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    let (e, code) = ApiError::from_tonic(code, &message);
    h.remove("grpc-message");
    if e.to_status_as(code).add_header(h).is_err() {
        // Only a message that is not a valid header could fail; the original status stays.
        tracing::warn!("could not add error details to a gRPC status");
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2, "Status-Message").
fn percent_decode(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The authenticated caller; runs before the body is read, so a bad key is 401 whatever the body.
pub struct Auth(pub Principal);

/// A caller a layer already authenticated (the idempotency layer), so the key is checked and charged once.
#[derive(Clone)]
pub struct Authed(pub Principal);

impl FromRequestParts<Arc<App>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        if let Some(Authed(p)) = parts.extensions.get::<Authed>() {
            return Ok(Auth(p.clone()));
        }
        let value = parts
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap_or(""));
        Ok(Auth(app.authenticate(value).await?))
    }
}

/// A JSON body parsed into a proto request; errors name the field. An empty body is the empty request.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let bytes = read_body(req.into_body(), app.cfg.max_body_bytes).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(T::default()));
        }
        parse_json(&bytes).map(JsonBody)
    }
}

/// The whole body, up to `limit` bytes (413 beyond).
pub async fn read_body(body: axum::body::Body, limit: usize) -> ApiResult<axum::body::Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e).is_some_and(|s| {
            s.is::<http_body_util::LengthLimitError>() || s.to_string().contains("length limit")
        });
        if too_large {
            ApiError::new(
                Code::PayloadTooLarge,
                format!("the body is larger than {limit} bytes"),
            )
        } else {
            ApiError::invalid("body", "the request body could not be read")
        }
    })
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        // An unknown field may be reported at its parent: then name the field itself.
        let field = match msg
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
        {
            _ if inner.is_syntax() || inner.is_eof() => "body".to_string(),
            Some(f) if path == "." => f.to_string(),
            _ if path == "." => "body".to_string(),
            _ => path,
        };
        let msg = if inner.is_syntax() || inner.is_eof() {
            format!("malformed JSON: {msg}")
        } else {
            msg
        };
        ApiError::invalid(&field, msg)
    })
}

/// pbjson leaves unset optional fields out; the contract shows them as null.
const CHANNEL_NULLABLE: &[&str] = &[
    "status_reason",
    "phone_number",
    "last_connected_at",
    "deleted_at",
    "send_rate_per_sec",
    "send_burst",
];
const KEY_NULLABLE: &[&str] = &["channel_id", "expires_at", "last_used_at"];
const MESSAGE_NULLABLE: &[&str] = &[
    "client_ref",
    "reply_to",
    "error",
    "sent_at",
    "location",
    "reaction",
];

fn with_nulls(mut v: serde_json::Value, fields: &[&str]) -> serde_json::Value {
    if let serde_json::Value::Object(m) = &mut v {
        for f in fields {
            m.entry(f.to_string()).or_insert(serde_json::Value::Null);
        }
    }
    v
}

fn to_value<T: serde::Serialize>(msg: &T) -> serde_json::Value {
    serde_json::to_value(msg).unwrap_or(serde_json::Value::Null)
}

fn channel_json(c: &pb::Channel) -> serde_json::Value {
    with_nulls(to_value(c), CHANNEL_NULLABLE)
}

fn key_json(k: &pb::ApiKey) -> serde_json::Value {
    with_nulls(to_value(k), KEY_NULLABLE)
}

type Out = Json<serde_json::Value>;

type Q = Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;

fn query(q: Q) -> ApiResult<HashMap<String, String>> {
    q.map(|Query(m)| m)
        .map_err(|_| ApiError::invalid("query", "malformed query string"))
}

/// The REST routes, remembering the paths they were registered under: a test holds them against
/// `openapi::ROUTES`, so the document and the router cannot drift apart.
pub(crate) struct RestRoutes {
    router: Router<Arc<App>>,
    pub(crate) paths: Vec<&'static str>,
}

impl RestRoutes {
    fn route(mut self, path: &'static str, method: MethodRouter<Arc<App>>) -> Self {
        self.paths.push(path);
        self.router = self.router.route(path, method);
        self
    }
}

pub(crate) fn rest_routes() -> RestRoutes {
    RestRoutes {
        router: Router::new(),
        paths: Vec::new(),
    }
    .route("/v1/channels", post(create_channel).get(list_channels))
    .route("/v1/channels/{id}", get(get_channel).delete(delete_channel))
    .route("/v1/channels/{id}/connect", post(connect_channel))
    .route("/v1/channels/{id}/logout", post(logout_channel))
    .route("/v1/channels/{id}/qr", get(get_qr))
    .route("/v1/channels/{id}/pair-code", post(pair_code))
    .route("/v1/channels/{id}/sandbox/{action}", post(sandbox))
    .route("/v1/channels/{id}/sandbox/outbound", get(sandbox_outbound))
    .route("/v1/channels/{id}/messages", post(send_message))
    .route("/v1/channels/{id}/messages/{message_id}", get(get_message))
    .route("/v1/channels/{id}/media", post(upload_media))
    .route("/v1/media/{token}", get(get_media))
    .route("/v1/events", get(events))
    .route("/v1/api-keys", post(create_key).get(list_keys))
    .route("/v1/api-keys/{id}", axum::routing::delete(delete_key))
    .route(
        "/v1/webhook-endpoints",
        post(webhooks::create_endpoint).get(webhooks::list_endpoints),
    )
    .route(
        "/v1/webhook-endpoints/{id}",
        get(webhooks::get_endpoint)
            .patch(webhooks::update_endpoint)
            .delete(webhooks::delete_endpoint),
    )
    .route(
        "/v1/webhook-endpoints/{id}/rotate-secret",
        post(webhooks::rotate_secret),
    )
    .route(
        "/v1/webhook-endpoints/{id}/recover",
        post(webhooks::recover),
    )
    .route("/v1/webhook-deliveries", get(webhooks::list_deliveries))
    .route("/v1/webhook-deliveries/{id}", get(webhooks::get_delivery))
    .route(
        "/v1/webhook-deliveries/{id}/redeliver",
        post(webhooks::redeliver),
    )
    .route("/v1/audit-events", get(audit::list_audit_events))
    .route("/v1/limits", get(audit::get_limits))
    .route("/openapi.json", get(openapi::serve))
    .route("/healthz", get(|| async { "ok\n" }))
    .route("/readyz", get(readyz))
    .route("/metrics", get(metrics))
}

pub fn router(app: Arc<App>) -> Router {
    rest_routes()
        .router
        .merge(dashboard::router())
        .method_not_allowed_fallback(|| async {
            let mut e = ApiError::new(Code::InvalidRequest, "method not allowed on this path");
            e.details.insert("field".into(), "method".into());
            // The envelope's own answer (with its Content-Type), under 405.
            let mut resp = e.into_response();
            *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            resp
        })
        // Every POST route above, and any added later, honours Idempotency-Key.
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            idempotency::layer,
        ))
        .with_state(app)
}

async fn send_message(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    JsonBody(mut req): JsonBody<pb::SendMessageRequest>,
) -> ApiResult<(StatusCode, Out)> {
    req.channel_id = id;
    let r = app.send_message(&p, req).await?;
    Ok((StatusCode::ACCEPTED, Json(shape::send_response(&r))))
}

async fn get_message(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path((channel_id, message_id)): Path<(String, String)>,
) -> ApiResult<Out> {
    let m = app
        .get_message(
            &p,
            pb::GetMessageRequest {
                channel_id,
                message_id,
            },
        )
        .await?;
    Ok(Json(shape::message(&m)))
}

/// The raw body is the media, its Content-Type the media type (`?filename=` optional). Read as it streams in, and
/// never more than the cap.
async fn upload_media(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    q: Q,
    req: Request,
) -> ApiResult<(StatusCode, Out)> {
    let q = query(q)?;
    let ch = app.media_channel(&p, &id).await?;
    let content_type = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("?"))
        .unwrap_or("");
    if content_type.starts_with("multipart/") {
        return Err(ApiError::invalid(
            "mime_type",
            "send the raw bytes as the body with their own Content-Type (e.g. image/jpeg); multipart is not accepted",
        ));
    }
    let (mime, filename) =
        crate::api::media::check_upload(content_type, q.get("filename").map(String::as_str))?;
    let max = app.media.max_bytes;
    let too_large = || {
        ApiError::new(
            Code::PayloadTooLarge,
            format!("the media is larger than {max} bytes (WHATISUP_MEDIA_MAX_BYTES)"),
        )
        .detail("max_bytes", max as u64)
    };
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let data = read_body(req.into_body(), max).await.map_err(|e| {
        if e.code == Code::PayloadTooLarge {
            too_large()
        } else {
            e
        }
    })?;
    let r = app
        .upload_media(&ch, &mime, filename.as_deref(), &data)
        .await?;
    Ok((StatusCode::CREATED, Json(shape::uploaded_media(&r))))
}

/// A signed media link: no API key (the token is the credential).
async fn get_media(State(app): State<Arc<App>>, Path(token): Path<String>) -> ApiResult<Response> {
    let (mime, filename, data) = app.media.open(&token).await?;
    // Shown inline only where a browser cannot run it; anything else downloads.
    let inline = ["image/", "video/", "audio/"]
        .iter()
        .any(|p| mime.starts_with(p))
        && mime != "image/svg+xml";
    let name: String = filename
        .as_deref()
        .unwrap_or("media")
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = format!(
        "{}; filename=\"{name}\"",
        if inline { "inline" } else { "attachment" }
    );
    let mut resp = (StatusCode::OK, data).into_response();
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_str(&mime)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert("content-disposition", v);
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    h.insert(
        "cache-control",
        HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(resp)
}

/// Test mode: what the simulated WhatsApp server accepted from this channel (each WhatsApp id once, with the
/// number of repeats it dropped).
async fn sandbox_outbound(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Out> {
    let client = app.pool.get().await?;
    let ch = crate::store::channels::get_visible(&client, &p, &id).await?;
    if ch.engine != "sandbox" {
        return Err(ApiError::new(
            Code::NotSandbox,
            "sandbox read-outs work on test-mode channels only",
        ));
    }
    let rows = client
        .query(
            "SELECT wa_id, to_addr, body->>'text', duplicates, accepted_at, body FROM sandbox_accepted
             WHERE channel_id = $1 ORDER BY accepted_at, wa_id LIMIT 20000",
            &[&ch.id],
        )
        .await?;
    let data: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut v = serde_json::json!({
                "whatsapp_id": r.get::<_, String>(0),
                "to": r.get::<_, String>(1),
                "text": r.get::<_, Option<String>>(2),
                "duplicates": r.get::<_, i32>(3),
                "accepted_at": crate::wkt::rfc3339(r.get(4)),
                "type": "text",
            });
            // Every kind shows its type; the others also their own object (location, reaction, media and its
            // caption).
            let body: serde_json::Value = r.get(5);
            if let Some(kind) = body["type"].as_str().filter(|k| *k != "text") {
                v["type"] = kind.into();
                if let Some(own) = body.get(kind) {
                    v[kind] = own.clone();
                }
            }
            v["caption"] = body["caption"].clone();
            v["media"] = body["media"].clone();
            v
        })
        .collect();
    Ok(Json(serde_json::json!({"data": data})))
}

pub async fn not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such route")
}

/// No route: the REST envelope, or for a gRPC call an UNIMPLEMENTED status (a client of an unknown service
/// must not get an HTTP 404 it cannot read).
pub async fn fallback(headers: HeaderMap) -> Response {
    let grpc_ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .filter(|ct| ct.starts_with("application/grpc"))
        .map(str::to_string);
    match grpc_ct {
        Some(ct) => {
            let e = ApiError::new(Code::NotFound, "no such gRPC service or method");
            let mut resp: Response = e.to_status_as(tonic::Code::Unimplemented).into_http();
            if let Ok(v) = HeaderValue::from_str(&ct) {
                resp.headers_mut().insert("content-type", v);
            }
            resp
        }
        None => not_found().await.into_response(),
    }
}

async fn create_channel(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    JsonBody(req): JsonBody<pb::CreateChannelRequest>,
) -> ApiResult<(StatusCode, Out)> {
    Ok((
        StatusCode::CREATED,
        Json(channel_json(&app.create_channel(&p, req).await?)),
    ))
}

async fn list_channels(State(app): State<Arc<App>>, Auth(p): Auth, q: Q) -> ApiResult<Out> {
    let q = query(q)?;
    let limit = match q.get("limit") {
        None => 0,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::invalid("limit", "limit must be between 1 and 100"))?,
    };
    let req = pb::ListChannelsRequest {
        limit,
        cursor: q.get("cursor").cloned().unwrap_or_default(),
        status: q.get("status").cloned().unwrap_or_default(),
    };
    Ok(Json(shape::channels(&app.list_channels(&p, req).await?)))
}

async fn get_channel(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Out> {
    Ok(Json(channel_json(&app.get_channel(&p, &id).await?)))
}

async fn delete_channel(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Out> {
    Ok(Json(channel_json(&app.delete_channel(&p, &id).await?)))
}

async fn connect_channel(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Out)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(channel_json(&app.connect_channel(&p, &id).await?)),
    ))
}

async fn logout_channel(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Out)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(channel_json(&app.logout_channel(&p, &id).await?)),
    ))
}

async fn get_qr(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    q: Q,
) -> ApiResult<Json<pb::GetQrResponse>> {
    let q = query(q)?;
    let wait = match q.get("wait") {
        None => None,
        Some(w) => Some(
            w.parse::<u32>()
                .map_err(|_| ApiError::invalid("wait", "wait is a number of seconds (0 to 30)"))?,
        ),
    };
    Ok(Json(app.get_qr(&p, pb::GetQrRequest { id, wait }).await?))
}

async fn pair_code(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    JsonBody(mut req): JsonBody<pb::RequestPairCodeRequest>,
) -> ApiResult<Json<pb::PairCodeResponse>> {
    req.id = id;
    Ok(Json(app.request_pair_code(&p, req).await?))
}

async fn sandbox(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path((id, action)): Path<(String, String)>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult<Out> {
    use crate::api::sandbox as sb;
    let bytes = serde_json::to_vec(&body).map_err(ApiError::internal)?;
    let bytes: &[u8] = if body.is_null() { b"{}" } else { &bytes };
    let (_, action): (String, SandboxAction) = match action.as_str() {
        "scan" => sb::scan(parse_json(bytes)?)?,
        "drop" => sb::drop(parse_json(bytes)?)?,
        "revoke" => (id.clone(), {
            parse_json::<pb::SandboxRevokeRequest>(bytes)?;
            SandboxAction::Revoke
        }),
        "ban" => (id.clone(), {
            parse_json::<pb::SandboxBanRequest>(bytes)?;
            SandboxAction::Ban
        }),
        "inbound" => {
            let r: pb::SandboxInboundRequest = parse_json(bytes)?;
            if sb::is_media(&r) {
                let mut r = r;
                r.id = id.clone();
                let r = app.sandbox_inbound_media(&p, r).await?;
                return Ok(Json(serde_json::json!({
                    "channel": r.channel.as_ref().map(channel_json),
                    "message_id": r.message_id,
                })));
            }
            sb::inbound(r)?
        }
        "receipt" => sb::receipt(parse_json(bytes)?)?,
        other => {
            return Err(ApiError::new(
                Code::NotFound,
                format!(
                    "no sandbox action \"{other}\"; try scan, drop, revoke, ban, inbound or receipt"
                ),
            ));
        }
    };
    let r = app.sandbox_action(&p, &id, action).await?;
    Ok(Json(serde_json::json!({
        "channel": r.channel.as_ref().map(channel_json),
        "message_id": r.message_id,
    })))
}

async fn create_key(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    JsonBody(req): JsonBody<pb::CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, Out)> {
    let r = app.create_api_key(&p, req).await?;
    Ok((StatusCode::CREATED, Json(shape::created_api_key(&r))))
}

async fn list_keys(State(app): State<Arc<App>>, Auth(p): Auth) -> ApiResult<Out> {
    Ok(Json(shape::api_keys(&app.list_api_keys(&p).await?)))
}

async fn delete_key(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Out> {
    Ok(Json(key_json(&app.delete_api_key(&p, &id).await?)))
}

/// Ends every open stream at shutdown, so the server can drain.
#[derive(Clone)]
pub struct Stopping(pub CancellationToken);

async fn events(
    State(app): State<Arc<App>>,
    axum::Extension(stopping): axum::Extension<Stopping>,
    headers: HeaderMap,
    q: Q,
) -> ApiResult<Response> {
    let q = query(q)?;
    // EventSource cannot set headers: the key may come as ?token=.
    let p = match (headers.get("authorization"), q.get("token")) {
        (Some(h), _) => app.authenticate(Some(h.to_str().unwrap_or(""))).await?,
        (None, Some(t)) => app.authenticate_token(t).await?,
        (None, None) => app.authenticate(None).await?,
    };
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.get("last_event_id").cloned());
    let events: Vec<String> = q.get("events").map(|e| vec![e.clone()]).unwrap_or_default();
    let channel = q.get("channel_id").cloned().unwrap_or_default();
    let (sub, slot) = app
        .open_stream(&p, &channel, events, after.as_deref())
        .await?;
    let guard = GaugeGuard::new(app.metrics.subscribers.with_label_values(&["sse"]));
    let stop = stopping.0.clone();
    let every = Duration::from_secs(app.cfg.sse_keepalive_secs.max(1));
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Frames are written as the bytes each event carries, built once for all subscribers.
    let stream = futures::stream::unfold(
        (sub, slot, guard, keepalive, false),
        move |(mut sub, slot, guard, mut keepalive, done)| {
            let stop = stop.clone();
            async move {
                if done {
                    return None;
                }
                let (frame, done) = tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = keepalive.tick() => (axum::body::Bytes::from_static(b": keep-alive\n\n"), false),
                    item = sub.next() => match item? {
                        Ok(e) => {
                            keepalive.reset();
                            (e.sse.clone(), false)
                        }
                        Err(err) => {
                            let body = serde_json::json!({"error": {"code": err.code.as_str(), "message": err.message}});
                            (axum::body::Bytes::from(format!("event: error\ndata: {body}\n\n")), true)
                        }
                    },
                };
                Some((
                    Ok::<_, Infallible>(frame),
                    (sub, slot, guard, keepalive, done),
                ))
            }
        },
    );
    Ok((
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("x-accel-buffering", "no"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let ok = match app.pool.get().await {
        Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    if ok {
        (
            StatusCode::OK,
            Json(serde_json::json!({"status": "ready", "node_id": app.node.id})),
        )
            .into_response()
    } else {
        ApiError::unavailable("database unavailable").into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    if let Ok(c) = app.pool.get().await
        && let Ok(row) = c
            .query_one(
                "SELECT count(*) FROM webhook_deliveries WHERE status IN ('pending', 'retrying')",
                &[],
            )
            .await
    {
        app.metrics.webhook_queue.set(row.get(0));
    }
    if let Ok(c) = app.pool.get().await
        && let Ok(rows) = crate::store::channels::count_by_status(&c).await
    {
        app.metrics.channels.reset();
        for s in crate::model::Status::ALL {
            app.metrics.channels.with_label_values(&[s.as_str()]).set(0);
        }
        for (status, n) in rows {
            app.metrics.channels.with_label_values(&[&status]).set(n);
        }
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<pb::CreateChannelRequest>(br#"{"name": 5}"#).unwrap_err();
        assert_eq!(e.details["field"], "name");
        let e = parse_json::<pb::CreateChannelRequest>(br#"{"name": "a", "colour": "red"}"#)
            .unwrap_err();
        assert_eq!(e.details["field"], "colour");
        let e = parse_json::<pb::CreateChannelRequest>(br#"{"name": "a""#).unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        let e = parse_json::<pb::CreateChannelRequest>(b"[1]").unwrap_err();
        assert_eq!(e.details["field"], "body");
        let ok = parse_json::<pb::CreateChannelRequest>(
            br#"{"name": "a", "metadata": {"k": [1, "x"]}}"#,
        )
        .unwrap();
        assert_eq!(ok.name, "a");
    }

    #[test]
    fn route_labels_fold_ids() {
        assert_eq!(
            route_label("/v1/channels/ch_01ABC/qr"),
            "/v1/channels/{id}/qr"
        );
        assert_eq!(
            route_label("/whatisup.v1.ChannelService/GetChannel"),
            "/whatisup.v1.ChannelService/GetChannel"
        );
        assert_eq!(route_label("/favicon.ico"), "other");
    }
}

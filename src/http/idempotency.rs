//! `Idempotency-Key` on every REST POST: a generic layer, so each POST route gets it without code of its own.
//!
//! Keyed by customer (and mode) + key, kept 24 h. The first request claims the key (an INSERT that only one
//! request can win) and runs; its answer is stored. A repeat with the same method, path and body gets the stored
//! answer (`Idempotent-Replayed: true`); with anything else, 409 `idempotency_conflict`. A repeat that arrives
//! while the first still runs waits for its answer (up to `WAIT`), so concurrent duplicates never both run.
//! Answers that say "try again" (5xx, 429) are not kept: the key is free again.

use super::Authed;
use crate::api::App;
use crate::error::{ApiError, ApiResult, Code};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

pub const MAX_KEY: usize = 255;
const TTL_SECS: i64 = 24 * 3600;
/// How long a duplicate waits for the first request's answer.
const WAIT: Duration = Duration::from_secs(10);
/// A claim older than this without an answer belongs to a request that died (its node crashed): taken over.
const ABANDONED_SECS: i64 = 60;
/// Larger answers are not stored (the key is released); none of ours comes near.
const MAX_STORED: usize = 1024 * 1024;

pub async fn layer(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST || !req.headers().contains_key("idempotency-key") {
        return next.run(req).await;
    }
    match run(app, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn well_formed(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY && key.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

async fn run(app: Arc<App>, req: Request, next: Next) -> ApiResult<Response> {
    let (mut parts, body) = req.into_parts();
    let key = parts
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| well_formed(k))
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                format!("Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters"),
            )
        })?
        .to_string();
    // Authenticated here (once: the handler reuses it), since the key belongs to the customer.
    let auth = parts
        .headers
        .get("authorization")
        .map(|v| v.to_str().unwrap_or(""));
    let p = app.authenticate(auth).await?;
    parts.extensions.insert(Authed(p.clone()));
    // A media upload's body is the media: its own cap.
    let limit = if parts.uri.path().ends_with("/media") {
        app.media.max_bytes
    } else {
        app.cfg.max_body_bytes
    };
    let bytes = super::read_body(body, limit).await?;
    let mut h = Sha256::new();
    h.update(parts.method.as_str().as_bytes());
    h.update(b"\n");
    h.update(
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("")
            .as_bytes(),
    );
    h.update(b"\n");
    h.update(&bytes);
    let hash = h.finalize().to_vec();
    let scope = format!("{}:{key}", p.mode.as_str());
    match claim(&app, &p.customer_id, &scope, &hash).await? {
        Claim::Run => {
            let req = Request::from_parts(parts, Body::from(bytes));
            Ok(execute(&app, &p.customer_id, &scope, req, next).await)
        }
        Claim::Done {
            status,
            content_type,
            body,
        } => {
            if content_type
                .as_deref()
                .is_some_and(|c| c.starts_with(GRPC_ANSWER))
            {
                return Err(conflict());
            }
            Ok(replay(status, content_type, body))
        }
    }
}

fn conflict() -> ApiError {
    ApiError::new(
        Code::IdempotencyConflict,
        "this Idempotency-Key was used for a different request",
    )
}

/// What a claim found.
enum Claim {
    /// This request holds the key: run it, then store its answer (`finish`) or free the key (`release`).
    Run,
    /// The same request was answered: its stored answer.
    Done {
        status: i32,
        content_type: Option<String>,
        body: Vec<u8>,
    },
}

/// Claims `scope` for a request whose hash is `hash`: the first claim runs; a repeat of the same request gets
/// the stored answer (waiting up to `WAIT` while the first still runs); another request under the key is a
/// conflict. Shared by REST and gRPC.
async fn claim(app: &App, customer: &str, scope: &str, hash: &[u8]) -> ApiResult<Claim> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let client = app.pool.get().await?;
        let claimed = client
            .execute(
                "INSERT INTO idempotency_keys (customer_id, key, request_hash, expires_at)
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4::bigint))
                 ON CONFLICT (customer_id, key) DO NOTHING",
                &[&customer, &scope, &hash, &TTL_SECS],
            )
            .await?;
        if claimed == 1 {
            return Ok(Claim::Run);
        }
        let row = client
            .query_opt(
                "SELECT request_hash, state, status, content_type, body, expires_at < now(),
                        locked_at < now() - make_interval(secs => $3::bigint), locked_at
                 FROM idempotency_keys WHERE customer_id = $1 AND key = $2",
                &[&customer, &scope, &ABANDONED_SECS],
            )
            .await?;
        let Some(row) = row else { continue };
        let (stored_hash, state): (Vec<u8>, String) = (row.get(0), row.get(1));
        let (expired, abandoned): (bool, bool) = (row.get(5), row.get(6));
        if expired {
            client
                .execute(
                    "DELETE FROM idempotency_keys WHERE customer_id = $1 AND key = $2 AND expires_at < now()",
                    &[&customer, &scope],
                )
                .await?;
            continue;
        }
        if stored_hash != hash {
            return Err(conflict());
        }
        if state == "done" {
            return Ok(Claim::Done {
                status: row.get(2),
                content_type: row.get(3),
                body: row.get::<_, Option<Vec<u8>>>(4).unwrap_or_default(),
            });
        }
        if abandoned {
            let locked_at: chrono::DateTime<chrono::Utc> = row.get(7);
            let took = client
                .execute(
                    "UPDATE idempotency_keys SET locked_at = now()
                     WHERE customer_id = $1 AND key = $2 AND state = 'running' AND locked_at = $3",
                    &[&customer, &scope, &locked_at],
                )
                .await?;
            if took == 1 {
                return Ok(Claim::Run);
            }
            continue;
        }
        drop(client);
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                Code::IdempotencyConflict,
                "a request with this Idempotency-Key is still in progress; retry later",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stores the answer of a claimed request.
async fn finish(
    app: &App,
    customer: &str,
    scope: &str,
    status: i32,
    content_type: Option<&str>,
    body: &[u8],
) {
    let stored = match app.pool.get().await {
        Ok(c) => c
            .execute(
                "UPDATE idempotency_keys SET state = 'done', status = $3, content_type = $4, body = $5
                 WHERE customer_id = $1 AND key = $2",
                &[&customer, &scope, &status, &content_type, &body],
            )
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = stored {
        // The request ran; a repeat within ABANDONED_SECS waits, then runs it again. Say so loudly.
        tracing::error!(error = %e, "storing an idempotent answer failed");
    }
}

/// Stored gRPC answers carry this content type (`…+proto`: a response message; `…+status`: an error), so a
/// REST repeat never replays them.
const GRPC_ANSWER: &str = "application/grpc";
const GRPC_OK: &str = "application/grpc+proto";
const GRPC_ERROR: &str = "application/grpc+status";

/// `idempotency-key` metadata on a mutating gRPC call: the same semantics and store as the REST header. The hash
/// covers the method and the encoded request; the answer (the response message, or the error status with its
/// details) is replayed as it was. Errors that say "try again" are not kept.
pub async fn grpc<Q, A, F>(
    app: &App,
    p: &crate::model::Principal,
    metadata: &tonic::metadata::MetadataMap,
    method: &str,
    req: &Q,
    run: F,
) -> Result<A, tonic::Status>
where
    Q: prost::Message,
    A: prost::Message + Default,
    F: std::future::Future<Output = ApiResult<A>>,
{
    let Some(value) = metadata.get("idempotency-key") else {
        return Ok(run.await?);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| well_formed(k))
        .ok_or_else(|| {
            ApiError::invalid(
                "idempotency-key",
                format!("idempotency-key must be 1 to {MAX_KEY} printable ASCII characters"),
            )
        })?;
    let mut h = Sha256::new();
    h.update(b"grpc\n");
    h.update(method.as_bytes());
    h.update(b"\n");
    h.update(req.encode_to_vec());
    let hash = h.finalize().to_vec();
    let scope = format!("{}:{key}", p.mode.as_str());
    match claim(app, &p.customer_id, &scope, &hash).await? {
        Claim::Done {
            status,
            content_type,
            body,
        } => match content_type.as_deref() {
            Some(GRPC_OK) => A::decode(body.as_slice())
                .map_err(|e| ApiError::internal(format!("stored answer: {e}")).into()),
            Some(GRPC_ERROR) => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let details = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    v["details"].as_str().unwrap_or_default(),
                )
                .unwrap_or_default();
                Err(tonic::Status::with_details(
                    tonic::Code::from(status),
                    v["message"].as_str().unwrap_or_default(),
                    details.into(),
                ))
            }
            _ => Err(conflict().into()),
        },
        Claim::Run => match run.await {
            Ok(a) => {
                finish(
                    app,
                    &p.customer_id,
                    &scope,
                    0,
                    Some(GRPC_OK),
                    &a.encode_to_vec(),
                )
                .await;
                Ok(a)
            }
            Err(e) => {
                let status = e.to_status();
                let retry = matches!(
                    status.code(),
                    tonic::Code::Internal
                        | tonic::Code::Unavailable
                        | tonic::Code::ResourceExhausted
                );
                if retry {
                    release(app, &p.customer_id, &scope).await;
                } else {
                    let body = serde_json::json!({
                        "message": status.message(),
                        "details": base64::Engine::encode(
                            &base64::engine::general_purpose::STANDARD,
                            status.details(),
                        ),
                    });
                    finish(
                        app,
                        &p.customer_id,
                        &scope,
                        status.code() as i32,
                        Some(GRPC_ERROR),
                        body.to_string().as_bytes(),
                    )
                    .await;
                }
                Err(status)
            }
        },
    }
}

/// Runs the claimed request and stores its answer (or frees the key when the answer says "try again").
async fn execute(app: &App, customer: &str, scope: &str, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let keep = !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS);
    let (parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_STORED).await {
        Ok(b) if keep => b,
        other => {
            release(app, customer, scope).await;
            return match other {
                Ok(b) => Response::from_parts(parts, Body::from(b)),
                Err(e) => ApiError::internal(format!("reading the answer: {e}")).into_response(),
            };
        }
    };
    let content_type = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    finish(
        app,
        customer,
        scope,
        i32::from(status.as_u16()),
        content_type.as_deref(),
        &bytes,
    )
    .await;
    Response::from_parts(parts, Body::from(bytes))
}

async fn release(app: &App, customer: &str, scope: &str) {
    if let Ok(c) = app.pool.get().await {
        let _ = c
            .execute(
                "DELETE FROM idempotency_keys WHERE customer_id = $1 AND key = $2 AND state = 'running'",
                &[&customer, &scope],
            )
            .await;
    }
}

fn replay(status: i32, content_type: Option<String>, body: Vec<u8>) -> Response {
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut resp = (status, body).into_response();
    if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert("content-type", ct);
    }
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys() {
        assert!(super::well_formed("order-42"));
        assert!(!super::well_formed(""));
        assert!(!super::well_formed("a\nb"));
        assert!(!super::well_formed(&"k".repeat(256)));
    }
}

//! REST handlers for webhook endpoints and deliveries: parse, call the `App` method gRPC also calls, render.

use super::{Auth, JsonBody, Out, Q, query, to_value, with_nulls};
use crate::api::App;
use crate::error::{ApiError, ApiResult};
use crate::pb;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer};
use std::sync::Arc;

const ENDPOINT_NULLABLE: &[&str] = &["channel_id", "disabled_reason"];
const DELIVERY_NULLABLE: &[&str] = &["next_attempt_at", "last_http_status", "last_error"];
const ATTEMPT_NULLABLE: &[&str] = &["http_status", "error", "response_excerpt"];

pub(super) fn endpoint_json(e: &pb::WebhookEndpoint) -> serde_json::Value {
    with_nulls(to_value(e), ENDPOINT_NULLABLE)
}

pub(super) fn delivery_json(d: &pb::WebhookDelivery, with_attempts: bool) -> serde_json::Value {
    let mut v = with_nulls(to_value(d), DELIVERY_NULLABLE);
    if let serde_json::Value::Object(m) = &mut v {
        if with_attempts {
            m.insert(
                "attempts".into(),
                d.attempts
                    .iter()
                    .map(|a| with_nulls(to_value(a), ATTEMPT_NULLABLE))
                    .collect(),
            );
        } else {
            m.remove("attempts");
        }
    }
    v
}

pub async fn create_endpoint(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    JsonBody(req): JsonBody<pb::CreateWebhookEndpointRequest>,
) -> ApiResult<(StatusCode, Out)> {
    let e = app.create_webhook_endpoint(&p, req).await?;
    Ok((StatusCode::CREATED, Json(endpoint_json(&e))))
}

pub async fn list_endpoints(State(app): State<Arc<App>>, Auth(p): Auth) -> ApiResult<Out> {
    Ok(Json(super::shape::webhook_endpoints(
        &app.list_webhook_endpoints(&p).await?,
    )))
}

pub async fn get_endpoint(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Out> {
    Ok(Json(endpoint_json(
        &app.get_webhook_endpoint(&p, &id).await?,
    )))
}

/// `null` for `channel_id` clears it; a field left out keeps its value.
fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchEndpoint {
    url: Option<String>,
    events: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    channel_id: Option<Option<String>>,
    enabled: Option<bool>,
    description: Option<String>,
    retry_schedule: Option<Vec<String>>,
}

pub async fn update_endpoint(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<PatchEndpoint>,
) -> ApiResult<Out> {
    let req = pb::UpdateWebhookEndpointRequest {
        id,
        url: b.url,
        events: b.events.map(|values| pb::StringList { values }),
        channel_id: b.channel_id.map(Option::unwrap_or_default),
        enabled: b.enabled,
        description: b.description,
        retry_schedule: b.retry_schedule.map(|values| pb::StringList { values }),
    };
    Ok(Json(endpoint_json(
        &app.update_webhook_endpoint(&p, req).await?,
    )))
}

pub async fn delete_endpoint(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Out> {
    Ok(Json(endpoint_json(
        &app.delete_webhook_endpoint(&p, &id).await?,
    )))
}

pub async fn rotate_secret(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Out> {
    Ok(Json(endpoint_json(
        &app.rotate_webhook_secret(&p, &id).await?,
    )))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RecoverBody {
    since: Option<crate::wkt::Timestamp>,
}

pub async fn recover(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<RecoverBody>,
) -> ApiResult<(StatusCode, Out)> {
    let r = app
        .recover_webhook_endpoint(&p, pb::RecoverWebhookEndpointRequest { id, since: b.since })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        // pbjson: uint64 is a string in proto3 JSON, as the document and the gRPC face say.
        Json(to_value(&r)),
    ))
}

pub async fn list_deliveries(State(app): State<Arc<App>>, Auth(p): Auth, q: Q) -> ApiResult<Out> {
    let q = query(q)?;
    let limit = match q.get("limit") {
        None => 0,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::invalid("limit", "limit must be between 1 and 100"))?,
    };
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let req = pb::ListWebhookDeliveriesRequest {
        endpoint_id: get("endpoint_id"),
        channel_id: get("channel_id"),
        event: get("event"),
        status: get("status"),
        limit,
        cursor: get("cursor"),
    };
    Ok(Json(super::shape::webhook_deliveries(
        &app.list_webhook_deliveries(&p, req).await?,
    )))
}

pub async fn get_delivery(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Out> {
    Ok(Json(delivery_json(
        &app.get_webhook_delivery(&p, &id).await?,
        true,
    )))
}

pub async fn redeliver(
    State(app): State<Arc<App>>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Out)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(delivery_json(&app.redeliver_webhook(&p, &id).await?, false)),
    ))
}

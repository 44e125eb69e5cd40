//! REST handlers for the audit log and the limits: parse, call the `App` method gRPC also calls, render.

use super::{Auth, Out, Q, query, to_value, with_nulls};
use crate::api::App;
use crate::api::audit::MAX_PAGE;
use crate::error::{ApiError, ApiResult};
use crate::pb;
use axum::Json;
use axum::extract::State;
use std::sync::Arc;

const AUDIT_NULLABLE: &[&str] = &["channel_id", "request_id", "mode"];

pub async fn list_audit_events(State(app): State<Arc<App>>, Auth(p): Auth, q: Q) -> ApiResult<Out> {
    let q = query(q)?;
    let limit = match q.get("limit") {
        None => 0,
        Some(l) => l.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::invalid("limit", format!("limit must be between 1 and {MAX_PAGE}"))
        })?,
    };
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let req = pb::ListAuditEventsRequest {
        action: get("action"),
        resource: get("resource"),
        channel_id: get("channel_id"),
        limit,
        cursor: get("cursor"),
    };
    let r = app.list_audit_events(&p, req).await?;
    Ok(Json(serde_json::json!({
        "data": r.data.iter().map(|e| with_nulls(to_value(e), AUDIT_NULLABLE)).collect::<Vec<_>>(),
        "next_cursor": r.next_cursor,
    })))
}

pub async fn get_limits(State(app): State<Arc<App>>, Auth(p): Auth) -> Json<pb::Limits> {
    Json(app.get_limits(&p))
}

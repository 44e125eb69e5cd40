//! The audit log over the API (`ListAuditEvents`, `GET /v1/audit-events`) and what a key may do
//! (`GetLimits`, `GET /v1/limits`).

use super::App;
use crate::error::{ApiError, ApiResult, Code};
use crate::model::Principal;
use crate::pb;
use crate::store::audit as store;
use std::sync::Arc;
use tonic::{Request, Response, Status as GrpcStatus};

/// Page sizes of `ListAuditEvents`.
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 200;
/// Longest filter value: ids and action names are far shorter.
const MAX_FILTER: usize = 200;

/// Numbers in the limits are 32-bit (plain JSON numbers, not proto3's quoted 64-bit ones); a setting beyond
/// that shows as the largest value.
fn sat(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn to_pb(r: &store::AuditRow) -> pb::AuditEvent {
    pb::AuditEvent {
        id: r.id.clone(),
        actor: r.actor.clone(),
        action: r.action.clone(),
        resource: r.resource.clone(),
        channel_id: r.channel_id.clone(),
        data: Some(crate::store::channels::json_to_struct(&r.data)),
        request_id: r.request_id.clone(),
        created_at: Some(r.created_at.into()),
        mode: r.mode.clone(),
    }
}

impl App {
    /// The caller's customer's audit rows in the caller's mode, newest first. A channel-bound key sees its
    /// channel's rows only (as it sees only its channel in the channel list); naming another channel is denied.
    /// The channel filter is not checked against existing channels: rows outlive a deleted channel.
    pub async fn list_audit_events(
        &self,
        p: &Principal,
        req: pb::ListAuditEventsRequest,
    ) -> ApiResult<pb::ListAuditEventsResponse> {
        let limit = match req.limit {
            0 => DEFAULT_PAGE,
            n @ 1..=MAX_PAGE => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    format!("limit must be between 1 and {MAX_PAGE}"),
                ));
            }
        };
        for (field, v) in [
            ("action", &req.action),
            ("resource", &req.resource),
            ("channel_id", &req.channel_id),
        ] {
            if v.len() > MAX_FILTER {
                return Err(ApiError::invalid(field, format!("{field} is too long")));
            }
            // PostgreSQL refuses a NUL in text: a 400 here, not a 500 from the query.
            if v.chars().any(char::is_control) {
                return Err(ApiError::invalid(
                    field,
                    format!("{field} has control characters"),
                ));
            }
        }
        if let Some(bound) = &p.channel_id
            && !req.channel_id.is_empty()
            && req.channel_id != *bound
        {
            return Err(ApiError::new(
                Code::ChannelAccessDenied,
                "this key is bound to another channel",
            ));
        }
        let client = self.pool.get().await?;
        let mode = p.mode.as_str();
        // The cursor is the id of the previous page's last row; it must be one of the caller's own.
        let before = match req.cursor.as_str() {
            "" => None,
            c => {
                let bad = || ApiError::invalid("cursor", "not a cursor from a previous page");
                if !c.starts_with("aud_")
                    || c.len() > 64
                    || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(bad());
                }
                let row = client
                    .query_opt(
                        "SELECT id FROM audit_events WHERE audit_id = $1 AND customer_id = $2 AND mode = $3",
                        &[&c, &p.customer_id, &mode],
                    )
                    .await?
                    .ok_or_else(bad)?;
                Some(row.get::<_, i64>(0))
            }
        };
        let rows = store::list(
            &client,
            &store::Query {
                customer_id: &p.customer_id,
                mode,
                bound_channel: p.channel_id.as_deref(),
                action: &req.action,
                resource: &req.resource,
                channel_id: &req.channel_id,
                before,
                limit: limit as i64,
            },
        )
        .await?;
        let more = rows.len() > limit as usize;
        let data: Vec<pb::AuditEvent> = rows.iter().take(limit as usize).map(to_pb).collect();
        let next_cursor = if more {
            data.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok(pb::ListAuditEventsResponse { data, next_cursor })
    }

    /// What the calling key may do: its bucket right now (after this request's token) and the configured caps.
    pub fn get_limits(&self, p: &Principal) -> pb::Limits {
        use crate::api::messages as msg;
        use crate::webhooks::endpoints as we;
        let rate = self.limiter.peek(&p.key_id);
        let wh = &self.webhooks;
        pb::Limits {
            rate_limit: Some(pb::RateLimit {
                limit: rate.limit,
                refill_per_sec: self.limiter.per_sec(),
                remaining: u32::try_from(rate.remaining.max(0)).unwrap_or(u32::MAX),
                reset: sat(rate.reset.max(0) as u64),
            }),
            requests: Some(pb::RequestLimits {
                max_body_bytes: sat(self.cfg.max_body_bytes as u64),
                max_upload_bytes: sat(self.media.max_bytes as u64),
                idempotency_key_max_chars: crate::http::idempotency::MAX_KEY as u32,
            }),
            messages: Some(pb::MessageLimits {
                text_max_chars: msg::MAX_TEXT_CHARS as u32,
                caption_max_chars: msg::MAX_CAPTION_CHARS as u32,
                client_ref_max_chars: msg::MAX_CLIENT_REF as u32,
                send_rate_per_sec: self.cfg.send_rate_per_sec,
                send_burst: self.cfg.send_burst,
                ttl_secs: sat(self.cfg.message_ttl_secs),
                outbox_max_per_channel: sat(self.cfg.outbox_max_per_channel.max(0) as u64),
            }),
            media: Some(pb::MediaLimits {
                max_bytes: sat(self.media.max_bytes as u64),
                retention_secs: sat(self.media.retention.as_secs()),
            }),
            lists: Some(pb::ListLimits {
                channels: super::channels::MAX_PAGE,
                webhook_deliveries: crate::webhooks::deliveries::MAX_PAGE,
                audit_events: MAX_PAGE,
                webhook_endpoints: we::MAX_ENDPOINTS as u32,
            }),
            webhooks: Some(pb::WebhookLimits {
                max_endpoints: we::MAX_ENDPOINTS as u32,
                url_max_chars: we::MAX_URL as u32,
                max_event_filters: we::MAX_FILTERS as u32,
                description_max_chars: we::MAX_DESCRIPTION as u32,
                retry_schedule: wh
                    .schedule
                    .iter()
                    .map(|d| crate::webhooks::format_duration(*d))
                    .collect(),
                max_retry_schedule: crate::webhooks::MAX_SCHEDULE as u32,
                timeout_ms: sat(wh.timeout.as_millis() as u64),
                disable_after_secs: sat(wh.disable_after.as_secs()),
            }),
        }
    }
}

/// gRPC face of the audit log.
pub struct AuditGrpc(pub Arc<App>);

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditGrpc {
    async fn list_audit_events(
        &self,
        r: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.list_audit_events(&p, r.into_inner()).await?,
        ))
    }
}

/// gRPC face of the limits.
pub struct LimitsGrpc(pub Arc<App>);

#[tonic::async_trait]
impl pb::limits_service_server::LimitsService for LimitsGrpc {
    async fn get_limits(
        &self,
        r: Request<pb::GetLimitsRequest>,
    ) -> Result<Response<pb::Limits>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(self.0.get_limits(&p)))
    }
}

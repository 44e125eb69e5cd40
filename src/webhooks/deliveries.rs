//! Delivery rows: created by the journal in the event's transaction (`fanout_sql`), claimed and finished by the
//! dispatcher, listed and redelivered through the API.

use crate::api::App;
use crate::error::{ApiError, ApiResult, Code};
use crate::model::Principal;
use crate::pb;
use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Largest page of `ListWebhookDeliveries`.
pub const MAX_PAGE: u32 = 100;
pub const STATUSES: [&str; 4] = ["pending", "retrying", "success", "failed"];
/// Channel on which new due work is announced to every node's dispatcher.
pub const NOTIFY_CHANNEL: &str = "whatisup_webhooks";

/// `INSERT … SELECT` of one delivery per (event in `source`, matching enabled endpoint of the same customer
/// and mode). `source` is a relation with columns id, event_id, event, channel_id, customer_id, mode. Filters
/// match as `events::matches` does: empty = all, exact name, or `prefix*`.
/// Rows go in event by event: the rows of one batch share their `next_attempt_at`, and among equal keys the due
/// index returns them in table order, which is then the order claims see (endpoint by endpoint, a join's
/// natural output, gave one host a whole claim).
pub fn fanout_sql(source: &str) -> String {
    format!(
        "INSERT INTO webhook_deliveries (endpoint_id, event_row, event_id, event, channel_id, customer_id, mode)
        SELECT w.id, s.id, s.event_id, s.event, s.channel_id, s.customer_id, s.mode
        FROM {source} s JOIN webhook_endpoints w
          ON w.customer_id = s.customer_id AND w.mode = s.mode AND w.enabled
         AND (w.channel_id IS NULL OR w.channel_id = s.channel_id)
         AND (cardinality(w.events) = 0 OR s.event = ANY(w.events)
              OR EXISTS (SELECT 1 FROM unnest(w.events) p
                         WHERE right(p, 1) = '*' AND starts_with(s.event, left(p, -1))))
        ORDER BY s.id, w.id"
    )
}

const COLUMNS: &str = "id, endpoint_id, event_id, event, channel_id, status, attempts, next_attempt_at, \
    last_http_status, last_error, created_at, updated_at";

pub fn public_id(id: i64) -> String {
    format!("dlv_{id}")
}

fn parse_id(s: &str) -> Option<i64> {
    s.strip_prefix("dlv_")?.parse().ok().filter(|n| *n > 0)
}

pub fn not_found(id: &str) -> ApiError {
    ApiError::new(Code::DeliveryNotFound, "no such webhook delivery").detail("delivery_id", id)
}

fn to_pb(r: &Row) -> pb::WebhookDelivery {
    let attempts: i32 = r.get("attempts");
    let status: Option<i32> = r.get("last_http_status");
    let next: DateTime<Utc> = r.get("next_attempt_at");
    let st: String = r.get("status");
    pb::WebhookDelivery {
        id: public_id(r.get("id")),
        endpoint_id: r.get("endpoint_id"),
        event_id: r.get("event_id"),
        event: r.get("event"),
        channel_id: r.get("channel_id"),
        // A finished delivery has no next attempt.
        next_attempt_at: matches!(st.as_str(), "pending" | "retrying").then(|| next.into()),
        status: st,
        attempt_count: attempts.max(0) as u32,
        last_http_status: status.map(|s| s.max(0) as u32),
        last_error: r.get("last_error"),
        created_at: Some(r.get::<_, DateTime<Utc>>("created_at").into()),
        updated_at: Some(r.get::<_, DateTime<Utc>>("updated_at").into()),
        attempts: Vec::new(),
    }
}

fn unscoped(p: &Principal) -> ApiResult<()> {
    match p.channel_id {
        Some(_) => Err(ApiError::new(
            Code::ChannelScopedKey,
            "a channel-bound key cannot manage webhook deliveries",
        )),
        None => Ok(()),
    }
}

impl App {
    pub async fn list_webhook_deliveries(
        &self,
        p: &Principal,
        req: pb::ListWebhookDeliveriesRequest,
    ) -> ApiResult<pb::ListWebhookDeliveriesResponse> {
        unscoped(p)?;
        let limit: i64 = match req.limit {
            0 => 50,
            n @ 1..=MAX_PAGE => n as i64,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    format!("limit must be between 1 and {MAX_PAGE}"),
                ));
            }
        };
        let cursor =
            match req.cursor.as_str() {
                "" => None,
                c => Some(parse_id(c).ok_or_else(|| {
                    ApiError::invalid("cursor", "not a cursor from a previous page")
                })?),
            };
        if !req.status.is_empty() && !STATUSES.contains(&req.status.as_str()) {
            return Err(ApiError::invalid(
                "status",
                format!("status is one of {}", STATUSES.join(", ")),
            ));
        }
        for (field, v) in [
            ("endpoint_id", &req.endpoint_id),
            ("channel_id", &req.channel_id),
            ("event", &req.event),
        ] {
            if v.len() > 100 {
                return Err(ApiError::invalid(field, format!("{field} is too long")));
            }
        }
        let mode = p.mode.as_str();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&p.customer_id, &mode];
        let mut sql = format!(
            "SELECT {COLUMNS} FROM webhook_deliveries WHERE customer_id = $1 AND mode = $2"
        );
        if let Some(c) = &cursor {
            params.push(c);
            sql.push_str(&format!(" AND id < ${}", params.len()));
        }
        for (col, v) in [
            ("endpoint_id", &req.endpoint_id),
            ("channel_id", &req.channel_id),
            ("event", &req.event),
            ("status", &req.status),
        ] {
            if !v.is_empty() {
                params.push(v);
                sql.push_str(&format!(" AND {col} = ${}", params.len()));
            }
        }
        let fetch = limit + 1;
        params.push(&fetch);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        let client = self.pool.get().await?;
        let rows = client.query(&sql, &params).await?;
        let mut data: Vec<pb::WebhookDelivery> = rows.iter().map(to_pb).collect();
        let next_cursor = if data.len() as i64 > limit {
            data.truncate(limit as usize);
            data.last().map(|d| d.id.clone())
        } else {
            None
        };
        Ok(pb::ListWebhookDeliveriesResponse { data, next_cursor })
    }

    pub async fn get_webhook_delivery(
        &self,
        p: &Principal,
        id: &str,
    ) -> ApiResult<pb::WebhookDelivery> {
        unscoped(p)?;
        let n = parse_id(id).ok_or_else(|| not_found(id))?;
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_deliveries WHERE id = $1 AND customer_id = $2 AND mode = $3"
        );
        let row = client
            .query_opt(&sql, &[&n, &p.customer_id, &p.mode.as_str()])
            .await?
            .ok_or_else(|| not_found(id))?;
        let mut d = to_pb(&row);
        let attempts = client
            .query(
                "SELECT attempted_at, duration_ms, http_status, error, response_excerpt, trigger_type \
                 FROM webhook_attempts WHERE delivery_id = $1 ORDER BY id LIMIT 1000",
                &[&n],
            )
            .await?;
        d.attempts = attempts
            .iter()
            .map(|a| pb::WebhookAttempt {
                attempted_at: Some(a.get::<_, DateTime<Utc>>(0).into()),
                duration_ms: a.get::<_, i32>(1).max(0) as u32,
                http_status: a.get::<_, Option<i32>>(2).map(|s| s.max(0) as u32),
                error: a.get(3),
                response_excerpt: a.get(4),
                trigger: a.get(5),
            })
            .collect();
        Ok(d)
    }

    /// One more attempt, now; a manual attempt that fails is not rescheduled.
    pub async fn redeliver_webhook(
        &self,
        p: &Principal,
        id: &str,
    ) -> ApiResult<pb::WebhookDelivery> {
        unscoped(p)?;
        let n = parse_id(id).ok_or_else(|| not_found(id))?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let sql = format!(
            "UPDATE webhook_deliveries SET status = 'pending', manual = true, next_attempt_at = now(), \
             locked_until = NULL, locked_by = NULL, updated_at = now() \
             WHERE id = $1 AND customer_id = $2 AND mode = $3 RETURNING {COLUMNS}"
        );
        let row = tx
            .query_opt(&sql, &[&n, &p.customer_id, &p.mode.as_str()])
            .await?
            .ok_or_else(|| not_found(id))?;
        tx.execute("SELECT pg_notify('whatisup_webhooks', '')", &[])
            .await?;
        let d = to_pb(&row);
        crate::store::audit::insert(
            &tx,
            &crate::store::audit::Audit {
                customer_id: &p.customer_id,
                mode: Some(p.mode.as_str()),
                actor: &format!("key:{}", p.key_id),
                action: "webhook_delivery.redelivered",
                resource: &d.id,
                channel_id: Some(&d.channel_id),
                data: serde_json::json!({"endpoint_id": d.endpoint_id, "event_id": d.event_id, "event": d.event}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(d)
    }
}

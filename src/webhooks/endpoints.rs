//! Webhook endpoints: validation, storage (signing secrets sealed under the master key, AAD = endpoint id) and
//! the API methods on `App` that gRPC and REST share.

use super::signing;
use crate::api::App;
use crate::error::{ApiError, ApiResult, Code};
use crate::model::{Mode, Principal};
use crate::pb;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::time::Duration;
use tokio_postgres::Row;

pub const MAX_URL: usize = 2_048;
pub const MAX_DESCRIPTION: usize = 500;
pub const MAX_FILTERS: usize = 50;
const MAX_FILTER_LEN: usize = 100;
/// Endpoints per customer and mode.
pub const MAX_ENDPOINTS: i64 = 100;
/// How long the secret before a rotation keeps signing.
pub const OLD_SECRET_TTL: chrono::TimeDelta = chrono::TimeDelta::hours(24);

pub const COLUMNS: &str = "id, customer_id, mode, url, description, events, channel_id, enabled, \
    disabled_reason, retry_schedule, created_at, updated_at";

#[derive(Debug, Clone)]
pub struct EndpointRow {
    pub id: String,
    pub customer_id: String,
    pub mode: Mode,
    pub url: String,
    pub description: String,
    pub events: Vec<String>,
    pub channel_id: Option<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Milliseconds; None follows the server's schedule.
    pub retry_schedule: Option<Vec<i32>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl EndpointRow {
    pub fn from_row(r: &Row) -> EndpointRow {
        let mode: String = r.get("mode");
        EndpointRow {
            id: r.get("id"),
            customer_id: r.get("customer_id"),
            mode: Mode::parse(&mode).unwrap_or(Mode::Live),
            url: r.get("url"),
            description: r.get("description"),
            events: r.get("events"),
            channel_id: r.get("channel_id"),
            enabled: r.get("enabled"),
            disabled_reason: r.get("disabled_reason"),
            retry_schedule: r.get("retry_schedule"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        }
    }

    pub fn to_pb(&self) -> pb::WebhookEndpoint {
        pb::WebhookEndpoint {
            id: self.id.clone(),
            url: self.url.clone(),
            description: self.description.clone(),
            events: self.events.clone(),
            channel_id: self.channel_id.clone(),
            enabled: self.enabled,
            disabled_reason: self.disabled_reason.clone(),
            retry_schedule: self
                .retry_schedule
                .iter()
                .flatten()
                .map(|ms| super::format_duration(Duration::from_millis(*ms as u64)))
                .collect(),
            signing_secret: None,
            created_at: Some(self.created_at.into()),
            updated_at: Some(self.updated_at.into()),
        }
    }
}

pub fn not_found(id: &str) -> ApiError {
    ApiError::new(Code::WebhookEndpointNotFound, "no such webhook endpoint")
        .detail("endpoint_id", id)
}

/// The URL as the audit log keeps it: a password in it (`https://user:pass@host/…`) is left out.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// A channel filter naming a channel the caller cannot see is a bad field, not a missing resource.
fn channel_filter_error(e: ApiError) -> ApiError {
    match e.code {
        Code::ChannelNotFound | Code::ChannelAccessDenied => {
            ApiError::invalid("channel_id", "no such channel")
        }
        _ => e,
    }
}

/// Webhook endpoints are account-wide configuration: a channel-bound key cannot manage them.
fn unscoped(p: &Principal) -> ApiResult<()> {
    match p.channel_id {
        Some(_) => Err(ApiError::new(
            Code::ChannelScopedKey,
            "a channel-bound key cannot manage webhook endpoints",
        )),
        None => Ok(()),
    }
}

/// Event filters: exact names (`message.received`), `prefix.*` wildcards, or `*`.
pub fn validate_events(events: &[String]) -> ApiResult<Vec<String>> {
    if events.len() > MAX_FILTERS {
        return Err(ApiError::invalid(
            "events",
            format!("at most {MAX_FILTERS} event filters"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(events.len());
    for e in events {
        let e = e.trim();
        let body = e.strip_suffix(".*").unwrap_or(e);
        let ok = e == "*"
            || (!body.is_empty()
                && e.len() <= MAX_FILTER_LEN
                && body.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'
                })
                && !body.starts_with('.')
                && !body.ends_with('.'));
        if !ok {
            return Err(ApiError::invalid(
                "events",
                format!("{e:?} is not an event name or a `prefix.*` wildcard"),
            ));
        }
        if !out.iter().any(|x| x == e) {
            out.push(e.to_string());
        }
    }
    // `*` among others is the same as nothing but `*`: every event.
    if out.iter().any(|e| e == "*") {
        out.clear();
    }
    Ok(out)
}

fn validate_description(d: &str) -> ApiResult<String> {
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(ApiError::invalid(
            "description",
            format!("description is longer than {MAX_DESCRIPTION} characters"),
        ));
    }
    Ok(d.to_string())
}

fn validate_schedule(items: &[String]) -> ApiResult<Option<Vec<i32>>> {
    if items.is_empty() {
        return Ok(None);
    }
    let v = super::parse_schedule_items(items.iter().map(String::as_str))
        .map_err(|e| ApiError::invalid("retry_schedule", e))?;
    Ok(Some(v.iter().map(|d| d.as_millis() as i32).collect()))
}

impl App {
    async fn validate_url(&self, url: &str) -> ApiResult<String> {
        let url = url.trim();
        if url.is_empty() {
            return Err(ApiError::invalid("url", "url is required"));
        }
        if url.len() > MAX_URL {
            return Err(ApiError::invalid(
                "url",
                format!("url is longer than {MAX_URL} characters"),
            ));
        }
        self.webhooks
            .guard
            .check_url_resolved(url)
            .await
            .map_err(|e| ApiError::invalid("url", format!("url refused: {e}")))?;
        Ok(url.to_string())
    }

    async fn endpoint_visible(
        &self,
        db: &impl deadpool_postgres::GenericClient,
        p: &Principal,
        id: &str,
        lock: bool,
    ) -> ApiResult<EndpointRow> {
        unscoped(p)?;
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_endpoints WHERE id = $1 AND customer_id = $2 AND mode = $3{}",
            if lock { " FOR UPDATE" } else { "" }
        );
        db.query_opt(&sql, &[&id, &p.customer_id, &p.mode.as_str()])
            .await?
            .map(|r| EndpointRow::from_row(&r))
            .ok_or_else(|| not_found(id))
    }

    pub async fn create_webhook_endpoint(
        &self,
        p: &Principal,
        req: pb::CreateWebhookEndpointRequest,
    ) -> ApiResult<pb::WebhookEndpoint> {
        unscoped(p)?;
        let url = self.validate_url(&req.url).await?;
        let events = validate_events(&req.events)?;
        let description = validate_description(req.description.as_deref().unwrap_or(""))?;
        let schedule = validate_schedule(&req.retry_schedule)?;
        let mut client = self.pool.get().await?;
        let channel_id = match req.channel_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(ch) => {
                crate::store::channels::get_visible(&client, p, ch)
                    .await
                    .map_err(channel_filter_error)?;
                Some(ch.to_string())
            }
        };
        let tx = client.transaction().await?;
        let count: i64 = tx
            .query_one(
                "SELECT count(*) FROM webhook_endpoints WHERE customer_id = $1 AND mode = $2",
                &[&p.customer_id, &p.mode.as_str()],
            )
            .await?
            .get(0);
        if count >= MAX_ENDPOINTS {
            return Err(ApiError::invalid(
                "url",
                format!("at most {MAX_ENDPOINTS} webhook endpoints per account"),
            ));
        }
        let id = crate::store::new_id("we");
        let (key, shown) = signing::new_secret();
        let (kid, sealed) = self.keys.seal(id.as_bytes(), &key);
        let sql = format!(
            "INSERT INTO webhook_endpoints (id, customer_id, mode, url, description, events, channel_id, enabled, \
             retry_schedule, secret_kid, secret_sealed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             RETURNING {COLUMNS}"
        );
        let row = tx
            .query_one(
                &sql,
                &[
                    &id,
                    &p.customer_id,
                    &p.mode.as_str(),
                    &url,
                    &description,
                    &events,
                    &channel_id,
                    &req.enabled.unwrap_or(true),
                    &schedule,
                    &kid,
                    &sealed,
                ],
            )
            .await?;
        let row = EndpointRow::from_row(&row);
        self.audit_endpoint(&tx, p, "webhook_endpoint.created", &row)
            .await?;
        tx.commit().await?;
        let mut out = row.to_pb();
        out.signing_secret = Some(shown);
        Ok(out)
    }

    async fn audit_endpoint(
        &self,
        db: &impl deadpool_postgres::GenericClient,
        p: &Principal,
        action: &str,
        row: &EndpointRow,
    ) -> ApiResult<()> {
        crate::store::audit::insert(
            db,
            &crate::store::audit::Audit {
                customer_id: &p.customer_id,
                mode: Some(p.mode.as_str()),
                actor: &format!("key:{}", p.key_id),
                action,
                resource: &row.id,
                channel_id: row.channel_id.as_deref(),
                data: json!({"url": redact_url(&row.url), "events": row.events, "enabled": row.enabled}),
            },
        )
        .await?;
        Ok(())
    }

    pub async fn list_webhook_endpoints(
        &self,
        p: &Principal,
    ) -> ApiResult<pb::ListWebhookEndpointsResponse> {
        unscoped(p)?;
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_endpoints WHERE customer_id = $1 AND mode = $2 ORDER BY id DESC LIMIT $3"
        );
        let rows = client
            .query(&sql, &[&p.customer_id, &p.mode.as_str(), &MAX_ENDPOINTS])
            .await?;
        Ok(pb::ListWebhookEndpointsResponse {
            data: rows
                .iter()
                .map(|r| EndpointRow::from_row(r).to_pb())
                .collect(),
        })
    }

    pub async fn get_webhook_endpoint(
        &self,
        p: &Principal,
        id: &str,
    ) -> ApiResult<pb::WebhookEndpoint> {
        let client = self.pool.get().await?;
        Ok(self.endpoint_visible(&client, p, id, false).await?.to_pb())
    }

    pub async fn update_webhook_endpoint(
        &self,
        p: &Principal,
        req: pb::UpdateWebhookEndpointRequest,
    ) -> ApiResult<pb::WebhookEndpoint> {
        unscoped(p)?;
        let url = match &req.url {
            Some(u) => Some(self.validate_url(u).await?),
            None => None,
        };
        let events = match &req.events {
            Some(l) => Some(validate_events(&l.values)?),
            None => None,
        };
        let description = match &req.description {
            Some(d) => Some(validate_description(d)?),
            None => None,
        };
        let schedule = match &req.retry_schedule {
            Some(l) => Some(validate_schedule(&l.values)?),
            None => None,
        };
        let mut client = self.pool.get().await?;
        let channel_id = match req.channel_id.as_deref().map(str::trim) {
            None => None,
            Some("") => Some(None),
            Some(ch) => {
                crate::store::channels::get_visible(&client, p, ch)
                    .await
                    .map_err(channel_filter_error)?;
                Some(Some(ch.to_string()))
            }
        };
        let tx = client.transaction().await?;
        let mut row = self.endpoint_visible(&tx, p, &req.id, true).await?;
        if let Some(u) = url {
            row.url = u;
        }
        if let Some(e) = events {
            row.events = e;
        }
        if let Some(d) = description {
            row.description = d;
        }
        if let Some(s) = schedule {
            row.retry_schedule = s;
        }
        if let Some(c) = channel_id {
            row.channel_id = c;
        }
        if let Some(en) = req.enabled {
            if en && !row.enabled {
                // Enabled again by a person: the failure clock starts over.
                row.disabled_reason = None;
            }
            row.enabled = en;
        }
        let sql = format!(
            "UPDATE webhook_endpoints SET url = $2, events = $3, description = $4, retry_schedule = $5, \
             channel_id = $6, enabled = $7, disabled_reason = $8, \
             failing_since = CASE WHEN $7 AND NOT enabled THEN NULL ELSE failing_since END, updated_at = now() \
             WHERE id = $1 RETURNING {COLUMNS}"
        );
        let updated = tx
            .query_one(
                &sql,
                &[
                    &row.id,
                    &row.url,
                    &row.events,
                    &row.description,
                    &row.retry_schedule,
                    &row.channel_id,
                    &row.enabled,
                    &row.disabled_reason,
                ],
            )
            .await?;
        let row = EndpointRow::from_row(&updated);
        self.audit_endpoint(&tx, p, "webhook_endpoint.updated", &row)
            .await?;
        tx.commit().await?;
        Ok(row.to_pb())
    }

    /// Deletes the endpoint with its delivery log (its pending deliveries are never sent).
    pub async fn delete_webhook_endpoint(
        &self,
        p: &Principal,
        id: &str,
    ) -> ApiResult<pb::WebhookEndpoint> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = self.endpoint_visible(&tx, p, id, true).await?;
        tx.execute("DELETE FROM webhook_endpoints WHERE id = $1", &[&id])
            .await?;
        self.audit_endpoint(&tx, p, "webhook_endpoint.deleted", &row)
            .await?;
        tx.commit().await?;
        Ok(row.to_pb())
    }

    /// A new secret, shown once; the current one becomes the old one and keeps signing for 24 h (a secret
    /// older than that is dropped).
    pub async fn rotate_webhook_secret(
        &self,
        p: &Principal,
        id: &str,
    ) -> ApiResult<pb::WebhookEndpoint> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = self.endpoint_visible(&tx, p, id, true).await?;
        let (key, shown) = signing::new_secret();
        let (kid, sealed) = self.keys.seal(id.as_bytes(), &key);
        let expires = Utc::now() + OLD_SECRET_TTL;
        tx.execute(
            "UPDATE webhook_endpoints SET old_secret_kid = secret_kid, old_secret_sealed = secret_sealed, \
             old_secret_expires_at = $2, secret_kid = $3, secret_sealed = $4, updated_at = now() WHERE id = $1",
            &[&id, &expires, &kid, &sealed],
        )
        .await?;
        self.audit_endpoint(&tx, p, "webhook_endpoint.secret_rotated", &row)
            .await?;
        tx.commit().await?;
        let mut out = row.to_pb();
        out.signing_secret = Some(shown);
        Ok(out)
    }

    /// Queues the endpoint's failed deliveries created since `since` again (a new round of the schedule).
    /// A disabled endpoint's deliveries wait until it is enabled.
    pub async fn recover_webhook_endpoint(
        &self,
        p: &Principal,
        req: pb::RecoverWebhookEndpointRequest,
    ) -> ApiResult<pb::RecoverWebhookEndpointResponse> {
        let since = req
            .since
            .ok_or_else(|| ApiError::invalid("since", "since is required (RFC 3339 time)"))?
            .to_datetime()
            .ok_or_else(|| ApiError::invalid("since", "not a valid time"))?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = self.endpoint_visible(&tx, p, &req.id, false).await?;
        let n = tx
            .execute(
                "UPDATE webhook_deliveries SET status = 'pending', round_attempts = 0, manual = false, \
                 next_attempt_at = now(), locked_until = NULL, locked_by = NULL, updated_at = now() \
                 WHERE endpoint_id = $1 AND status = 'failed' AND created_at >= $2",
                &[&req.id, &since],
            )
            .await?;
        if n > 0 {
            tx.execute("SELECT pg_notify('whatisup_webhooks', '')", &[])
                .await?;
        }
        crate::store::audit::insert(
            &tx,
            &crate::store::audit::Audit {
                customer_id: &p.customer_id,
                mode: Some(p.mode.as_str()),
                actor: &format!("key:{}", p.key_id),
                action: "webhook_endpoint.recovered",
                resource: &row.id,
                channel_id: row.channel_id.as_deref(),
                data: json!({"since": crate::wkt::rfc3339(since), "requeued": n}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(pb::RecoverWebhookEndpointResponse { requeued: n })
    }
}

/// The active signing keys of an endpoint, newest first (the old one while it has not expired).
pub fn active_keys(
    keys: &crate::crypto::MasterKeys,
    endpoint_id: &str,
    current: (&str, &[u8]),
    old: Option<(&str, &[u8])>,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = vec![keys.open(current.0, endpoint_id.as_bytes(), current.1)?];
    if let Some((kid, sealed)) = old {
        // An old secret that no longer opens is skipped: the new one still signs.
        if let Ok(k) = keys.open(kid, endpoint_id.as_bytes(), sealed) {
            out.push(k);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_urls_keep_no_password() {
        assert_eq!(
            redact_url("https://bob:s3cret@hooks.example.com/x?y=1"),
            "https://bob:***@hooks.example.com/x?y=1"
        );
        assert_eq!(
            redact_url("https://hooks.example.com/a@b"),
            "https://hooks.example.com/a@b"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn event_filters() {
        let ok = |v: &[&str]| validate_events(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            ok(&["message.*", "channel.connected", "message.*"]).expect("valid"),
            vec!["message.*", "channel.connected"]
        );
        assert!(ok(&["*", "message.received"]).expect("valid").is_empty());
        for bad in [
            "",
            "Message.x",
            "message*",
            "*.received",
            "a b",
            ".x",
            "message.*.x",
        ] {
            assert!(ok(&[bad]).is_err(), "{bad:?}");
        }
        assert!(ok(&vec!["a"; MAX_FILTERS + 1]).is_err());
    }
}

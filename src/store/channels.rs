//! Channel rows.

use crate::error::{ApiError, ApiResult};
use crate::model::{Mode, Principal, Status};
use crate::pb;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

pub const COLUMNS: &str = "id, customer_id, mode, engine, name, status, status_reason, status_since, phone_number, \
     metadata, qr_code, qr_expires_at, pair_code, pair_code_expires_at, created_at, updated_at, last_connected_at, \
     deleted_at, send_rate_per_sec, send_burst";

#[derive(Debug, Clone)]
pub struct ChannelRow {
    pub id: String,
    pub customer_id: String,
    pub mode: Mode,
    pub engine: String,
    pub name: String,
    pub status: Status,
    pub status_reason: Option<String>,
    pub status_since: DateTime<Utc>,
    pub phone_number: Option<String>,
    pub metadata: Value,
    pub qr_code: Option<String>,
    pub qr_expires_at: Option<DateTime<Utc>>,
    pub pair_code: Option<String>,
    pub pair_code_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_connected_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub send_rate_per_sec: Option<f64>,
    pub send_burst: Option<i32>,
}

impl ChannelRow {
    pub fn from_row(r: &Row) -> ChannelRow {
        let status: String = r.get("status");
        let mode: String = r.get("mode");
        ChannelRow {
            id: r.get("id"),
            customer_id: r.get("customer_id"),
            // The CHECK constraints keep these parseable; fall back rather than panic on a hand-edited row.
            mode: Mode::parse(&mode).unwrap_or(Mode::Live),
            engine: r.get("engine"),
            name: r.get("name"),
            status: Status::parse(&status).unwrap_or(Status::Failed),
            status_reason: r.get("status_reason"),
            status_since: r.get("status_since"),
            phone_number: r.get("phone_number"),
            metadata: r.get("metadata"),
            qr_code: r.get("qr_code"),
            qr_expires_at: r.get("qr_expires_at"),
            pair_code: r.get("pair_code"),
            pair_code_expires_at: r.get("pair_code_expires_at"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
            last_connected_at: r.get("last_connected_at"),
            deleted_at: r.get("deleted_at"),
            send_rate_per_sec: r.get("send_rate_per_sec"),
            send_burst: r.get("send_burst"),
        }
    }

    pub fn to_pb(&self) -> pb::Channel {
        pb::Channel {
            id: self.id.clone(),
            name: self.name.clone(),
            status: self.status.as_str().to_string(),
            status_reason: self.status_reason.clone(),
            status_since: Some(self.status_since.into()),
            engine: self.engine.clone(),
            phone_number: self.phone_number.clone(),
            metadata: Some(json_to_struct(&self.metadata)),
            created_at: Some(self.created_at.into()),
            updated_at: Some(self.updated_at.into()),
            last_connected_at: self.last_connected_at.map(Into::into),
            deleted_at: self.deleted_at.map(Into::into),
            send_rate_per_sec: self.send_rate_per_sec,
            send_burst: self.send_burst.and_then(|b| u32::try_from(b).ok()),
        }
    }
}

pub fn json_to_struct(v: &Value) -> pbjson_types::Struct {
    match v {
        Value::Object(_) => serde_json::from_value(v.clone()).unwrap_or_default(),
        _ => pbjson_types::Struct::default(),
    }
}

pub fn struct_to_json(s: &pbjson_types::Struct) -> Value {
    serde_json::to_value(s).unwrap_or_else(|_| Value::Object(Default::default()))
}

/// The channel as the principal may see it: another customer's or another mode's channel is not found, a key
/// bound to another channel is denied.
pub async fn get_visible(
    db: &impl deadpool_postgres::GenericClient,
    p: &Principal,
    id: &str,
) -> ApiResult<ChannelRow> {
    if let Some(bound) = &p.channel_id
        && bound != id
    {
        return Err(ApiError::new(
            crate::error::Code::ChannelAccessDenied,
            "this key is bound to another channel",
        ));
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM channels WHERE id = $1 AND customer_id = $2 AND mode = $3 AND deleted_at IS NULL"
    );
    // Prepared once per connection: on every send (the accept path) a fresh parse and plan cost a round trip.
    let stmt = db.prepare_cached(&sql).await?;
    let row = db
        .query_opt(&stmt, &[&id, &p.customer_id, &p.mode.as_str()])
        .await?
        .ok_or_else(|| ApiError::channel_not_found(id))?;
    Ok(ChannelRow::from_row(&row))
}

pub async fn get_any(
    db: &impl deadpool_postgres::GenericClient,
    id: &str,
) -> ApiResult<Option<ChannelRow>> {
    let sql = format!("SELECT {COLUMNS} FROM channels WHERE id = $1");
    Ok(db
        .query_opt(&sql, &[&id])
        .await?
        .map(|r| ChannelRow::from_row(&r)))
}

pub async fn insert(
    db: &impl deadpool_postgres::GenericClient,
    p: &Principal,
    name: &str,
    metadata: &Value,
    pacing: (Option<f64>, Option<i32>),
) -> ApiResult<ChannelRow> {
    let id = super::new_id("ch");
    let sql = format!(
        "INSERT INTO channels (id, customer_id, mode, engine, name, metadata, send_rate_per_sec, send_burst) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
    );
    let row = db
        .query_one(
            &sql,
            &[
                &id,
                &p.customer_id,
                &p.mode.as_str(),
                &p.mode.engine(),
                &name,
                metadata,
                &pacing.0,
                &pacing.1,
            ],
        )
        .await?;
    Ok(ChannelRow::from_row(&row))
}

pub async fn list(
    db: &impl deadpool_postgres::GenericClient,
    p: &Principal,
    limit: i64,
    cursor: Option<&str>,
    status: Option<Status>,
) -> ApiResult<(Vec<ChannelRow>, Option<String>)> {
    let mut sql = format!(
        "SELECT {COLUMNS} FROM channels WHERE customer_id = $1 AND mode = $2 AND deleted_at IS NULL"
    );
    let status_s = status.map(|s| s.as_str());
    let mode = p.mode.as_str();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&p.customer_id, &mode];
    if let Some(c) = &cursor {
        params.push(c);
        sql.push_str(&format!(" AND id < ${}", params.len()));
    }
    if let Some(s) = &status_s {
        params.push(s);
        sql.push_str(&format!(" AND status = ${}", params.len()));
    }
    if let Some(bound) = &p.channel_id {
        params.push(bound);
        sql.push_str(&format!(" AND id = ${}", params.len()));
    }
    let fetch = limit + 1;
    params.push(&fetch);
    // ids are ULIDs: ordering by id is ordering by creation time.
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
    let rows = db.query(&sql, &params).await?;
    let mut out: Vec<ChannelRow> = rows.iter().map(ChannelRow::from_row).collect();
    let next = if out.len() as i64 > limit {
        out.truncate(limit as usize);
        out.last().map(|c| c.id.clone())
    } else {
        None
    };
    Ok((out, next))
}

/// The sealed engine state of a channel: (kid, sealed bytes).
pub async fn load_state(
    db: &impl deadpool_postgres::GenericClient,
    id: &str,
) -> ApiResult<Option<(String, Vec<u8>)>> {
    Ok(db
        .query_opt(
            "SELECT kid, sealed FROM session_state WHERE channel_id = $1",
            &[&id],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

pub async fn count_by_status(
    db: &impl deadpool_postgres::GenericClient,
) -> ApiResult<Vec<(String, i64)>> {
    Ok(db
        .query(
            "SELECT status, count(*) FROM channels WHERE deleted_at IS NULL GROUP BY status",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

//! The durable event log (rows are written by `events::journal`).

use crate::model::Mode;
use crate::wkt::rfc3339;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

pub const API_VERSION: &str = "2026-04";

/// One committed event. The envelope is serialised once (and the SSE frame and the gRPC message built at most
/// once) and shared by every subscriber.
#[derive(Debug)]
pub struct EventRecord {
    /// Global, commit-ordered cursor.
    pub id: i64,
    pub event_id: String,
    pub customer_id: String,
    pub mode: Mode,
    pub channel_id: String,
    pub sequence: i64,
    pub event: String,
    pub occurred_at: DateTime<Utc>,
    pub data: Value,
    /// `id: …\nevent: …\ndata: <envelope>\n\n`
    pub sse: axum::body::Bytes,
    grpc: std::sync::OnceLock<crate::pb::Event>,
}

impl EventRecord {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: i64,
        event_id: String,
        customer_id: String,
        mode: Mode,
        channel_id: String,
        sequence: i64,
        event: String,
        occurred_at: DateTime<Utc>,
        data: Value,
    ) -> EventRecord {
        let json =
            envelope(&event, &event_id, &channel_id, sequence, occurred_at, &data).to_string();
        // serde_json's compact output has no newline, so the envelope is one `data:` line.
        let sse = axum::body::Bytes::from(format!("id: {id}\nevent: {event}\ndata: {json}\n\n"));
        EventRecord {
            id,
            event_id,
            customer_id,
            mode,
            channel_id,
            sequence,
            event,
            occurred_at,
            data,
            sse,
            grpc: std::sync::OnceLock::new(),
        }
    }

    fn from_row(r: &Row) -> EventRecord {
        let mode: String = r.get("mode");
        EventRecord::new(
            r.get("id"),
            r.get("event_id"),
            r.get("customer_id"),
            Mode::parse(&mode).unwrap_or(Mode::Live),
            r.get("channel_id"),
            r.get("sequence"),
            r.get("event"),
            r.get("occurred_at"),
            r.get("data"),
        )
    }

    pub fn to_pb(&self) -> crate::pb::Event {
        self.grpc.get_or_init(|| self.build_pb()).clone()
    }

    fn build_pb(&self) -> crate::pb::Event {
        crate::pb::Event {
            event: self.event.clone(),
            event_id: self.event_id.clone(),
            api_version: API_VERSION.to_string(),
            channel_id: self.channel_id.clone(),
            sequence: self.sequence as u64,
            occurred_at: Some(self.occurred_at.into()),
            data: Some(crate::store::channels::json_to_struct(&self.data)),
        }
    }
}

/// The one envelope of webhooks, SSE and the gRPC stream (contract §5).
pub fn envelope(
    event: &str,
    event_id: &str,
    channel_id: &str,
    sequence: i64,
    at: DateTime<Utc>,
    data: &Value,
) -> Value {
    serde_json::json!({
        "event": event,
        "event_id": event_id,
        "api_version": API_VERSION,
        "channel_id": channel_id,
        "sequence": sequence,
        "occurred_at": rfc3339(at),
        "data": data,
    })
}

const COLUMNS: &str =
    "id, event_id, customer_id, mode, channel_id, sequence, event, occurred_at, data";

/// Every event after `after`, in cursor order (the hub's feed).
pub async fn all_after(
    db: &impl deadpool_postgres::GenericClient,
    after: i64,
    limit: i64,
) -> Result<Vec<EventRecord>, tokio_postgres::Error> {
    let sql = format!("SELECT {COLUMNS} FROM events WHERE id > $1 ORDER BY id LIMIT $2");
    Ok(db
        .query(&sql, &[&after, &limit])
        .await?
        .iter()
        .map(EventRecord::from_row)
        .collect())
}

/// One customer's events after `after` (replay for a stream).
pub async fn after_for(
    db: &impl deadpool_postgres::GenericClient,
    customer_id: &str,
    mode: Mode,
    channel_id: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<Vec<EventRecord>, tokio_postgres::Error> {
    let mode_s = mode.as_str();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&customer_id, &mode_s, &after, &limit];
    let mut sql =
        format!("SELECT {COLUMNS} FROM events WHERE customer_id = $1 AND mode = $2 AND id > $3");
    if let Some(c) = &channel_id {
        params.push(c);
        sql.push_str(" AND channel_id = $5");
    }
    sql.push_str(" ORDER BY id LIMIT $4");
    Ok(db
        .query(&sql, &params)
        .await?
        .iter()
        .map(EventRecord::from_row)
        .collect())
}

pub async fn max_id(
    db: &impl deadpool_postgres::GenericClient,
) -> Result<i64, tokio_postgres::Error> {
    Ok(db
        .query_one("SELECT coalesce(max(id), 0) FROM events", &[])
        .await?
        .get(0))
}

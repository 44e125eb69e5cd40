//! Append-only audit records of customer-visible changes.

use serde_json::Value;

pub struct Audit<'a> {
    pub customer_id: &'a str,
    pub mode: Option<&'a str>,
    /// "key:<id>" or "cli" or "system".
    pub actor: &'a str,
    pub action: &'a str,
    pub resource: &'a str,
    pub channel_id: Option<&'a str>,
    pub data: Value,
}

pub async fn insert(
    db: &impl deadpool_postgres::GenericClient,
    a: &Audit<'_>,
) -> Result<(), tokio_postgres::Error> {
    let id = super::new_id("aud");
    let request_id = crate::http::current_request_id();
    db.execute(
        "INSERT INTO audit_events (audit_id, customer_id, mode, actor, action, resource, channel_id, data, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[&id, &a.customer_id, &a.mode, &a.actor, &a.action, &a.resource, &a.channel_id, &a.data, &request_id],
    )
    .await?;
    Ok(())
}

/// One stored audit row.
pub struct AuditRow {
    /// The row's place in the log (insertion order); the page cursor.
    pub seq: i64,
    pub id: String,
    pub mode: Option<String>,
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub channel_id: Option<String>,
    pub data: Value,
    pub request_id: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// What a list may be narrowed to; empty strings are no filter.
pub struct Query<'a> {
    pub customer_id: &'a str,
    pub mode: &'a str,
    /// A channel-bound key's channel: nothing else is listed.
    pub bound_channel: Option<&'a str>,
    pub action: &'a str,
    pub resource: &'a str,
    pub channel_id: &'a str,
    /// Rows older than this place in the log (the previous page's last row).
    pub before: Option<i64>,
    pub limit: i64,
}

/// Newest first; one row more than `limit` is read to know whether there is a next page.
pub async fn list(
    db: &impl deadpool_postgres::GenericClient,
    q: &Query<'_>,
) -> Result<Vec<AuditRow>, tokio_postgres::Error> {
    use tokio_postgres::types::ToSql;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&q.customer_id, &q.mode];
    let mut sql = String::from(
        "SELECT id, audit_id, mode, actor, action, resource, channel_id, data, request_id, created_at \
         FROM audit_events WHERE customer_id = $1 AND mode = $2",
    );
    if let Some(b) = &q.before {
        params.push(b);
        sql.push_str(&format!(" AND id < ${}", params.len()));
    }
    if let Some(c) = &q.bound_channel {
        params.push(c);
        sql.push_str(&format!(" AND channel_id = ${}", params.len()));
    }
    for (col, v) in [
        ("action", &q.action),
        ("resource", &q.resource),
        ("channel_id", &q.channel_id),
    ] {
        if !v.is_empty() {
            params.push(v);
            sql.push_str(&format!(" AND {col} = ${}", params.len()));
        }
    }
    let fetch = q.limit + 1;
    params.push(&fetch);
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
    let rows = db.query(&sql, &params).await?;
    Ok(rows
        .iter()
        .map(|r| AuditRow {
            seq: r.get(0),
            id: r.get(1),
            mode: r.get(2),
            actor: r.get(3),
            action: r.get(4),
            resource: r.get(5),
            channel_id: r.get(6),
            data: r.get(7),
            request_id: r.get(8),
            created_at: r.get(9),
        })
        .collect())
}

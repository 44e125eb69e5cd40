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

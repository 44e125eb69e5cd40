//! API keys: stored as a keyed hash and a display prefix; the secret is returned once, at creation.

use crate::crypto::{self, MasterKeys};
use crate::model::{Mode, Principal};
use crate::pb;
use chrono::{DateTime, Utc};
use tokio_postgres::Row;

pub struct NewKey<'a> {
    pub customer_id: &'a str,
    pub name: &'a str,
    pub mode: Mode,
    pub channel_id: Option<&'a str>,
    pub expires_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, customer_id, name, mode, prefix, channel_id, expires_at, revoked_at, last_used_at, created_at";

pub struct KeyRow {
    pub id: String,
    pub customer_id: String,
    pub name: String,
    pub mode: Mode,
    pub prefix: String,
    pub channel_id: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl KeyRow {
    fn from_row(r: &Row) -> KeyRow {
        let mode: String = r.get("mode");
        KeyRow {
            id: r.get("id"),
            customer_id: r.get("customer_id"),
            name: r.get("name"),
            mode: Mode::parse(&mode).unwrap_or(Mode::Live),
            prefix: r.get("prefix"),
            channel_id: r.get("channel_id"),
            expires_at: r.get("expires_at"),
            revoked_at: r.get("revoked_at"),
            last_used_at: r.get("last_used_at"),
            created_at: r.get("created_at"),
        }
    }

    pub fn to_pb(&self) -> pb::ApiKey {
        pb::ApiKey {
            id: self.id.clone(),
            name: self.name.clone(),
            mode: self.mode.as_str().to_string(),
            prefix: self.prefix.clone(),
            channel_id: self.channel_id.clone(),
            created_at: Some(self.created_at.into()),
            expires_at: self.expires_at.map(Into::into),
            last_used_at: self.last_used_at.map(Into::into),
        }
    }

    pub fn principal(&self) -> Principal {
        Principal {
            key_id: self.id.clone(),
            customer_id: self.customer_id.clone(),
            mode: self.mode,
            channel_id: self.channel_id.clone(),
        }
    }
}

/// Inserts a key; returns the row and the secret.
pub async fn insert(
    db: &impl deadpool_postgres::GenericClient,
    keys: &MasterKeys,
    k: &NewKey<'_>,
) -> Result<(KeyRow, String), tokio_postgres::Error> {
    let secret = crypto::new_api_key(k.mode == Mode::Test);
    let (kid, hash) = keys.hash_api_key(&secret);
    // "zpk_live_" plus four characters: enough to recognise a key in a list, far too few to guess it.
    let prefix = format!("{}…", &secret[..13]);
    let id = super::new_id("key");
    let sql = format!(
        "INSERT INTO api_keys (id, customer_id, name, mode, key_hash, hash_kid, prefix, channel_id, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    );
    let row = db
        .query_one(
            &sql,
            &[
                &id,
                &k.customer_id,
                &k.name,
                &k.mode.as_str(),
                &hash,
                &kid,
                &prefix,
                &k.channel_id,
                &k.expires_at,
            ],
        )
        .await?;
    Ok((KeyRow::from_row(&row), secret))
}

pub async fn find_by_hashes(
    db: &impl deadpool_postgres::GenericClient,
    hashes: &[Vec<u8>],
) -> Result<Option<KeyRow>, tokio_postgres::Error> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE key_hash = ANY($1)");
    Ok(db
        .query_opt(&sql, &[&hashes])
        .await?
        .map(|r| KeyRow::from_row(&r)))
}

pub async fn touch(
    db: &impl deadpool_postgres::GenericClient,
    id: &str,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "UPDATE api_keys SET last_used_at = now() WHERE id = $1",
        &[&id],
    )
    .await?;
    Ok(())
}

pub async fn list(
    db: &impl deadpool_postgres::GenericClient,
    customer_id: &str,
    mode: Mode,
) -> Result<Vec<KeyRow>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM api_keys WHERE customer_id = $1 AND mode = $2 AND revoked_at IS NULL \
         ORDER BY created_at DESC LIMIT 1000"
    );
    Ok(db
        .query(&sql, &[&customer_id, &mode.as_str()])
        .await?
        .iter()
        .map(KeyRow::from_row)
        .collect())
}

pub async fn revoke(
    db: &impl deadpool_postgres::GenericClient,
    customer_id: &str,
    mode: Mode,
    id: &str,
) -> Result<Option<KeyRow>, tokio_postgres::Error> {
    let sql = format!(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND customer_id = $2 AND mode = $3 \
         AND revoked_at IS NULL RETURNING {COLUMNS}"
    );
    Ok(db
        .query_opt(&sql, &[&id, &customer_id, &mode.as_str()])
        .await?
        .map(|r| KeyRow::from_row(&r)))
}

/// A key made by an operator (`whatisup keys create`), recorded in the customer's audit log in the same
/// transaction. The secret is returned (shown once), never recorded.
pub async fn create_audited(
    pool: &deadpool_postgres::Pool,
    keys: &MasterKeys,
    k: &NewKey<'_>,
    actor: &str,
) -> anyhow::Result<(KeyRow, String)> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let (row, secret) = insert(&tx, keys, k).await?;
    super::audit::insert(
        &tx,
        &super::audit::Audit {
            customer_id: k.customer_id,
            mode: Some(k.mode.as_str()),
            actor,
            action: "api_key.created",
            resource: &row.id,
            channel_id: k.channel_id,
            data: serde_json::json!({"name": k.name, "prefix": row.prefix}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok((row, secret))
}

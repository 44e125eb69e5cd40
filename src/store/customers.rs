//! Customers and the first-start bootstrap.

use super::keys::{self, NewKey};
use crate::crypto::MasterKeys;
use crate::model::Mode;
use anyhow::Context;
use deadpool_postgres::Pool;

pub struct Bootstrap {
    pub customer_id: String,
    pub live_key: String,
    pub test_key: String,
}

/// Creates a customer with one live and one test key; returns the secrets (shown once).
pub async fn create(pool: &Pool, keys_: &MasterKeys, name: &str) -> anyhow::Result<Bootstrap> {
    let mut client = pool.get().await.context("database pool")?;
    let tx = client.transaction().await?;
    let b = create_in(&tx, keys_, name).await?;
    tx.commit().await?;
    Ok(b)
}

async fn create_in(
    tx: &deadpool_postgres::Transaction<'_>,
    keys_: &MasterKeys,
    name: &str,
) -> anyhow::Result<Bootstrap> {
    let id = super::new_id("cus");
    tx.execute(
        "INSERT INTO customers (id, name) VALUES ($1, $2)",
        &[&id, &name],
    )
    .await?;
    let live = keys::insert(
        tx,
        keys_,
        &NewKey {
            customer_id: &id,
            name: "default live key",
            mode: Mode::Live,
            channel_id: None,
            expires_at: None,
        },
    )
    .await?;
    let test = keys::insert(
        tx,
        keys_,
        &NewKey {
            customer_id: &id,
            name: "default test key",
            mode: Mode::Test,
            channel_id: None,
            expires_at: None,
        },
    )
    .await?;
    super::audit::insert(
        tx,
        &super::audit::Audit {
            customer_id: &id,
            mode: None,
            actor: "system",
            action: "customer.created",
            resource: &id,
            channel_id: None,
            data: serde_json::json!({"name": name}),
        },
    )
    .await?;
    Ok(Bootstrap {
        customer_id: id,
        live_key: live.1,
        test_key: test.1,
    })
}

/// On an empty database: customer `default` with a live and a test key. Runs under the migration lock so two
/// nodes starting together bootstrap once.
pub async fn bootstrap_if_empty(
    pool: &Pool,
    keys_: &MasterKeys,
) -> anyhow::Result<Option<Bootstrap>> {
    let mut client = pool.get().await.context("database pool")?;
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&0x7768_6174_6973_7571_i64],
    )
    .await?;
    let n: i64 = tx
        .query_one("SELECT count(*) FROM customers", &[])
        .await?
        .get(0);
    if n > 0 {
        return Ok(None);
    }
    let b = create_in(&tx, keys_, "default").await?;
    tx.commit().await?;
    Ok(Some(b))
}

/// The customer a CLI command acts for: the given id, else `default`, else the oldest.
pub async fn resolve(pool: &Pool, id: Option<&str>) -> anyhow::Result<String> {
    let client = pool.get().await.context("database pool")?;
    let row =
        match id {
            Some(id) => {
                client
                    .query_opt("SELECT id FROM customers WHERE id = $1", &[&id])
                    .await?
            }
            None => client
                .query_opt(
                    "SELECT id FROM customers ORDER BY (name = 'default') DESC, created_at LIMIT 1",
                    &[],
                )
                .await?,
        };
    row.map(|r| r.get(0))
        .context("no such customer (run `whatisup customers create NAME` or `whatisup serve` once)")
}

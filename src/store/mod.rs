//! PostgreSQL: pool, database creation, migrations, and one file per resource.

pub mod audit;
pub mod channels;
pub mod cleanup;
pub mod customers;
pub mod events;
pub mod keys;
pub mod leases;
pub mod messages;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

pub use deadpool_postgres::Pool as PgPool;

/// Migrations, applied in order at start; each runs once, recorded in `schema_migrations`.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "core", include_str!("../../migrations/0001_core.sql")),
    (
        2,
        "hot_updates",
        include_str!("../../migrations/0002_hot_updates.sql"),
    ),
    (
        3,
        "wa_store",
        include_str!("../../migrations/0003_wa_store.sql"),
    ),
    (
        4,
        "inbound_dedup",
        include_str!("../../migrations/0004_inbound_dedup.sql"),
    ),
    (
        5,
        "webhooks",
        include_str!("../../migrations/0005_webhooks.sql"),
    ),
    (
        6,
        "messages",
        include_str!("../../migrations/0006_messages.sql"),
    ),
    (7, "media", include_str!("../../migrations/0007_media.sql")),
    (
        8,
        "reactions_cleanup",
        include_str!("../../migrations/0008_reactions_cleanup.sql"),
    ),
    (
        10,
        "webhook_claims",
        include_str!("../../migrations/0010_webhook_claims.sql"),
    ),
    (
        11,
        "outbox_counts",
        include_str!("../../migrations/0011_outbox_counts.sql"),
    ),
    (
        13,
        "inbound_media_ref",
        include_str!("../../migrations/0013_inbound_media_ref.sql"),
    ),
    (
        14,
        "webhook_endpoint_due",
        include_str!("../../migrations/0014_webhook_endpoint_due.sql"),
    ),
    (
        15,
        "wa_device_linked",
        include_str!("../../migrations/0015_wa_device_linked.sql"),
    ),
];

/// Serialises migrations (and the first-start bootstrap) across nodes starting together.
const MIGRATION_LOCK: i64 = 0x7768_6174_6973_7570; // "whatisup"

pub async fn connect(url: &str, pool_size: usize) -> anyhow::Result<Pool> {
    let pg: tokio_postgres::Config = url
        .parse()
        .context("WHATISUP_DATABASE_URL is not a PostgreSQL URL")?;
    create_database_if_missing(&pg).await?;
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(mgr)
        .max_size(pool_size.max(2))
        .wait_timeout(Some(std::time::Duration::from_secs(10)))
        .create_timeout(Some(std::time::Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("building the database pool")?;
    Ok(pool)
}

async fn create_database_if_missing(pg: &tokio_postgres::Config) -> anyhow::Result<()> {
    let name = pg.get_dbname().unwrap_or("postgres").to_string();
    match pg.connect(NoTls).await {
        Ok(_) => return Ok(()),
        Err(e) => {
            let missing = e.as_db_error().is_some_and(|d| {
                d.code() == &tokio_postgres::error::SqlState::INVALID_CATALOG_NAME
            });
            if !missing {
                return Err(e).context("connecting to PostgreSQL");
            }
        }
    }
    let mut admin = pg.clone();
    admin.dbname("postgres");
    let (client, conn) = admin
        .connect(NoTls)
        .await
        .context("connecting to the postgres database")?;
    let task = tokio::spawn(conn);
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => tracing::info!(database = %name, "created database"),
        // Another node created it at the same moment.
        Err(e)
            if e.as_db_error().is_some_and(|d| {
                d.code() == &tokio_postgres::error::SqlState::DUPLICATE_DATABASE
            }) => {}
        Err(e) => return Err(e).context("creating the database"),
    }
    drop(client);
    let _ = task.await;
    Ok(())
}

pub async fn migrate(pool: &Pool) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("database pool")?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("migration {version} ({name})"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tracing::info!(version, name, "applied migration");
    }
    tx.commit().await?;
    Ok(())
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new())
}

#[cfg(test)]
mod tests {
    /// A migration file that is not in the list never runs (0002 once sat unlisted).
    #[test]
    fn every_migration_file_is_listed() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        for f in &files {
            let version: i32 = f[..4].parse().expect("NNNN_ prefix");
            assert!(
                super::MIGRATIONS.iter().any(|(v, ..)| *v == version),
                "{f} is not in MIGRATIONS"
            );
        }
        assert_eq!(files.len(), super::MIGRATIONS.len());
    }
}

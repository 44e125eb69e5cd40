//! Retention: every node periodically deletes what has outlived its use, in small batches (each a short
//! transaction of its own, so no long locks), until nothing more is due. Several nodes doing it at once is
//! harmless: a row is deleted once, and a batch that finds nothing ends the round.
//!
//! - `idempotency_keys` past their 24 h;
//! - `sandbox_accepted` (the sandbox's simulated server memory) older than `WHATISUP_SANDBOX_RETENTION_SECS`;
//! - `messages` no longer queued (sent, delivered, read, played or failed) and created more than
//!   `WHATISUP_MESSAGE_RETENTION_SECS` ago. Their events stay in the event log, which has its own retention.

use deadpool_postgres::Pool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows per DELETE.
pub const BATCH: i64 = 1_000;
/// Batches per table and round: a large backlog is worked off over several rounds, not in one burst.
const MAX_BATCHES: usize = 100;

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// 0 keeps messages.
    pub message_secs: u64,
    /// 0 keeps what the sandbox accepted.
    pub sandbox_secs: u64,
}

/// Rows deleted by one round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub idempotency_keys: u64,
    pub sandbox_accepted: u64,
    pub messages: u64,
}

/// The smallest message id (`msg_` + ULID) created at `at`: ULIDs sort by creation time, so "created before" is a
/// range of the primary key.
fn id_bound(at: chrono::DateTime<chrono::Utc>) -> String {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    format!("msg_{}", ulid::Ulid::from_parts(ms, 0))
}

/// Repeats `sql` (one bounded DELETE, `$1` its limit) until a batch deletes fewer than `BATCH` rows.
async fn drain(
    pool: &Pool,
    sql: &str,
    extra: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> anyhow::Result<u64> {
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&BATCH];
    params.extend_from_slice(extra);
    let mut total = 0;
    for _ in 0..MAX_BATCHES {
        let client = pool.get().await?;
        let n = client.execute(sql, &params).await?;
        total += n;
        if n < BATCH as u64 {
            break;
        }
    }
    Ok(total)
}

/// One round over every table.
pub async fn run_once(pool: &Pool, r: Retention) -> anyhow::Result<Removed> {
    let mut out = Removed {
        idempotency_keys: drain(
            pool,
            "DELETE FROM idempotency_keys WHERE ctid IN
               (SELECT ctid FROM idempotency_keys WHERE expires_at < now() LIMIT $1)",
            &[],
        )
        .await?,
        ..Default::default()
    };
    if r.sandbox_secs > 0 {
        let secs = i64::try_from(r.sandbox_secs).unwrap_or(i64::MAX / 2);
        out.sandbox_accepted = drain(
            pool,
            "DELETE FROM sandbox_accepted WHERE ctid IN
               (SELECT ctid FROM sandbox_accepted
                WHERE accepted_at < now() - make_interval(secs => $2::bigint) LIMIT $1)",
            &[&secs],
        )
        .await?;
    }
    if r.message_secs > 0 {
        let secs = i64::try_from(r.message_secs).unwrap_or(i64::MAX / 2);
        let bound = id_bound(chrono::Utc::now() - chrono::Duration::seconds(secs));
        // The id range walks the primary key; created_at guards ids not made by new_id.
        out.messages = drain(
            pool,
            "DELETE FROM messages WHERE id IN
               (SELECT id FROM messages WHERE id < $2 AND rank > 0
                  AND created_at < now() - make_interval(secs => $3::bigint) LIMIT $1)",
            &[&bound, &secs],
        )
        .await?;
    }
    Ok(out)
}

/// Runs a round every `every` until `stop`.
pub async fn run(pool: Pool, r: Retention, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match run_once(&pool, r).await {
            Ok(n) if n != Removed::default() => tracing::info!(?n, "retention cleanup"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention cleanup failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn id_bound_sorts_with_ids_of_that_time() {
        let at = chrono::Utc::now();
        let bound = super::id_bound(at);
        let later = format!(
            "msg_{}",
            ulid::Ulid::from_parts(at.timestamp_millis() as u64 + 1, 0)
        );
        let earlier = format!(
            "msg_{}",
            ulid::Ulid::from_parts(at.timestamp_millis() as u64 - 1, u128::MAX)
        );
        assert!(earlier < bound && bound < later);
    }
}

//! Session leases: which node runs which session, until when, under which fencing token.

use deadpool_postgres::GenericClient;
use std::time::Duration;

fn ttl_ms(ttl: Duration) -> i64 {
    ttl.as_millis() as i64
}

/// Claims the leases of `channel_ids` that are free, expired or already ours; returns (channel_id, token) for
/// each claimed. The token grows with every claim, so an old owner's writes are refused.
pub async fn claim(
    db: &impl GenericClient,
    node_id: &str,
    channel_ids: &[String],
    ttl: Duration,
) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
    if channel_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = db
        .query(
            "INSERT INTO session_leases (channel_id, node_id, token, expires_at)
             SELECT id, $2, 1, now() + make_interval(secs => $3::bigint / 1000.0)
               FROM unnest($1::text[]) AS id ORDER BY id
             ON CONFLICT (channel_id) DO UPDATE
                SET node_id = EXCLUDED.node_id, token = session_leases.token + 1, expires_at = EXCLUDED.expires_at
              WHERE session_leases.expires_at < now() OR session_leases.node_id = EXCLUDED.node_id
             RETURNING channel_id, token",
            &[&channel_ids, &node_id, &ttl_ms(ttl)],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Expires the leases left under `node_id` by an earlier process with the same node id (WHATISUP_NODE_ID kept
/// across a crash): nothing runs those sessions now, and `renew` would keep them alive for ever, so they would
/// never be resumed. Called at start, before this process runs any session; the scan then takes them back.
pub async fn expire_node(
    db: &impl GenericClient,
    node_id: &str,
) -> Result<u64, tokio_postgres::Error> {
    db.execute(
        // Locked in channel_id order, like every multi-row locker of leases.
        "UPDATE session_leases l SET expires_at = now() - interval '1 millisecond'
           FROM (SELECT channel_id FROM session_leases WHERE node_id = $1 ORDER BY channel_id FOR UPDATE) o
          WHERE l.channel_id = o.channel_id",
        &[&node_id],
    )
    .await
}

/// Extends every unexpired lease this node holds; returns what it still holds. An expired lease is not revived:
/// after a crash and a restart under the same node id, `expire_node` marks the dead process's leases expired and
/// the scan must be the one to take them back (reviving them here raced with the scan and left sessions orphaned).
pub async fn renew(
    db: &impl GenericClient,
    node_id: &str,
    ttl: Duration,
) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
    let rows = db
        .query(
            // Rows are locked in channel_id order, as every multi-row locker of leases does (the journal's
            // fence check included): no lock-order deadlock.
            "UPDATE session_leases l SET expires_at = now() + make_interval(secs => $2::bigint / 1000.0)
               FROM (SELECT channel_id FROM session_leases WHERE node_id = $1 AND expires_at > now()
                      ORDER BY channel_id FOR UPDATE) o
              WHERE l.channel_id = o.channel_id RETURNING l.channel_id, l.token",
            &[&node_id, &ttl_ms(ttl)],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub async fn release(
    db: &impl GenericClient,
    channel_id: &str,
    node_id: &str,
    token: i64,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "DELETE FROM session_leases WHERE channel_id = $1 AND node_id = $2 AND token = $3",
        &[&channel_id, &node_id, &token],
    )
    .await?;
    Ok(())
}

pub async fn release_all(
    db: &impl GenericClient,
    node_id: &str,
) -> Result<u64, tokio_postgres::Error> {
    db.execute("DELETE FROM session_leases WHERE node_id = $1", &[&node_id])
        .await
}

/// The live owner of a channel's session, if any.
pub async fn owner(
    db: &impl GenericClient,
    channel_id: &str,
) -> Result<Option<(String, i64)>, tokio_postgres::Error> {
    Ok(db
        .query_opt(
            "SELECT node_id, token FROM session_leases WHERE channel_id = $1 AND expires_at > now()",
            &[&channel_id],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// Channels that should be running (active status) but whose lease is missing or expired.
pub async fn orphans(
    db: &impl GenericClient,
    engines: &[&str],
    limit: i64,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT c.id FROM channels c LEFT JOIN session_leases l ON l.channel_id = c.id
              WHERE c.deleted_at IS NULL AND c.status IN ('qr', 'connecting', 'connected', 'reconnecting')
                AND c.engine = ANY($1) AND (l.channel_id IS NULL OR l.expires_at < now())
              ORDER BY c.id LIMIT $2",
            &[&engines, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

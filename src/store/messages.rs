//! Outbound messages: the durable outbox (rows in `queued`) and each message's status history.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct MessageRow {
    pub id: String,
    pub channel_id: String,
    pub wa_id: String,
    pub to: String,
    pub kind: String,
    pub body: Value,
    pub client_ref: Option<String>,
    pub status: String,
    pub error: Option<Value>,
    pub history: Value,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, channel_id, wa_id, to_addr, type, body, client_ref, status, error, history, \
    created_at, expires_at, sent_at";

impl MessageRow {
    fn from_row(r: &tokio_postgres::Row) -> MessageRow {
        MessageRow {
            id: r.get(0),
            channel_id: r.get(1),
            wa_id: r.get(2),
            to: r.get(3),
            kind: r.get(4),
            body: r.get(5),
            client_ref: r.get(6),
            status: r.get(7),
            error: r.get(8),
            history: r.get(9),
            created_at: r.get(10),
            expires_at: r.get(11),
            sent_at: r.get(12),
        }
    }
}

pub struct NewMessage<'a> {
    pub id: &'a str,
    pub customer_id: &'a str,
    pub mode: &'a str,
    pub channel_id: &'a str,
    pub wa_id: &'a str,
    pub to: &'a str,
    pub kind: &'a str,
    pub body: &'a Value,
    pub client_ref: Option<&'a str>,
    pub ttl_secs: i64,
}

pub enum Inserted {
    New,
    /// The client_ref was used within its window: the original message.
    Duplicate(Box<MessageRow>),
}

/// How long a client_ref stays taken.
const CLIENT_REF_WINDOW_SECS: i64 = 24 * 3600;

/// Inserts a queued message, unless its client_ref was used on the channel within 24 h (then the original is
/// returned and nothing is inserted). An older holder of the ref gives it up.
pub async fn insert(
    db: &impl GenericClient,
    m: &NewMessage<'_>,
) -> Result<Inserted, tokio_postgres::Error> {
    for _ in 0..3 {
        let stmt = db
            .prepare_cached(
                "INSERT INTO messages (id, customer_id, mode, channel_id, wa_id, to_addr, type, body, client_ref,
                    expires_at, history)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10::bigint),
                    jsonb_build_array(jsonb_build_object('status', 'queued', 'at',
                        to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))))
                 ON CONFLICT (channel_id, client_ref) WHERE client_ref IS NOT NULL DO NOTHING",
            )
            .await?;
        let n = db
            .execute(
                &stmt,
                &[
                    &m.id,
                    &m.customer_id,
                    &m.mode,
                    &m.channel_id,
                    &m.wa_id,
                    &m.to,
                    &m.kind,
                    &m.body,
                    &m.client_ref,
                    &m.ttl_secs,
                ],
            )
            .await?;
        if n == 1 {
            return Ok(Inserted::New);
        }
        let Some(client_ref) = m.client_ref else {
            return Ok(Inserted::New);
        };
        let sql = format!(
            "SELECT {COLUMNS}, created_at > now() - make_interval(secs => $3::bigint) FROM messages
             WHERE channel_id = $1 AND client_ref = $2"
        );
        if let Some(r) = db
            .query_opt(&sql, &[&m.channel_id, &client_ref, &CLIENT_REF_WINDOW_SECS])
            .await?
        {
            let fresh: bool = r.get(13);
            if fresh {
                return Ok(Inserted::Duplicate(Box::new(MessageRow::from_row(&r))));
            }
            // Past the window: the old message keeps its history, the ref is free again.
            db.execute(
                "UPDATE messages SET client_ref = NULL WHERE channel_id = $1 AND client_ref = $2
                   AND created_at <= now() - make_interval(secs => $3::bigint)",
                &[&m.channel_id, &client_ref, &CLIENT_REF_WINDOW_SECS],
            )
            .await?;
        }
    }
    // Three rounds of conflicting inserts: someone else is racing with the same ref; their row wins.
    let sql = format!("SELECT {COLUMNS} FROM messages WHERE channel_id = $1 AND client_ref = $2");
    match db.query_opt(&sql, &[&m.channel_id, &m.client_ref]).await? {
        Some(r) => Ok(Inserted::Duplicate(Box::new(MessageRow::from_row(&r)))),
        None => Ok(Inserted::New),
    }
}

/// Queued messages of a channel, up to `max` (stops counting there).
pub async fn queued_count(
    db: &impl GenericClient,
    channel_id: &str,
    max: i64,
) -> Result<i64, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "SELECT count(*) FROM (SELECT 1 FROM messages WHERE channel_id = $1 AND rank = 0 LIMIT $2) q",
        )
        .await?;
    Ok(db.query_one(&stmt, &[&channel_id, &max]).await?.get(0))
}

pub async fn get(
    db: &impl GenericClient,
    channel_id: &str,
    id: &str,
) -> Result<Option<MessageRow>, tokio_postgres::Error> {
    let sql = format!("SELECT {COLUMNS} FROM messages WHERE channel_id = $1 AND id = $2");
    Ok(db
        .query_opt(&sql, &[&channel_id, &id])
        .await?
        .map(|r| MessageRow::from_row(&r)))
}

/// The next queued messages of a channel, in the order they were accepted.
pub async fn next_queued(
    db: &impl GenericClient,
    channel_id: &str,
    limit: i64,
) -> Result<Vec<MessageRow>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM messages WHERE channel_id = $1 AND rank = 0 ORDER BY qseq LIMIT $2"
        ))
        .await?;
    Ok(db
        .query(&stmt, &[&channel_id, &limit])
        .await?
        .iter()
        .map(MessageRow::from_row)
        .collect())
}

/// Our message behind a WhatsApp id (receipts name it), or behind our own id (the sandbox's receipt action).
pub async fn by_any_id(
    db: &impl GenericClient,
    channel_id: &str,
    id: &str,
) -> Result<Option<MessageRow>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM messages WHERE channel_id = $1 AND (wa_id = $2 OR id = $2) LIMIT 1"
    );
    Ok(db
        .query_opt(&sql, &[&channel_id, &id])
        .await?
        .map(|r| MessageRow::from_row(&r)))
}

/// Queued messages that must fail: past their expiry (plus `grace`, so that no send still in flight is
/// overtaken), or on a channel that is logged out or deleted (a send accepted at the moment of the logout).
pub async fn doomed(
    db: &impl GenericClient,
    grace_ms: i64,
    limit: i64,
) -> Result<Vec<(MessageRow, &'static str)>, tokio_postgres::Error> {
    let cols: Vec<String> = COLUMNS
        .split(", ")
        .map(|c| format!("m.{}", c.trim()))
        .collect();
    let sql = format!(
        "SELECT {}, m.expires_at < now() - make_interval(secs => $1::bigint / 1000.0)
         FROM messages m JOIN channels c ON c.id = m.channel_id
         WHERE m.rank = 0 AND (m.expires_at < now() - make_interval(secs => $1::bigint / 1000.0)
                               OR c.status = 'disconnected' OR c.deleted_at IS NOT NULL)
         LIMIT $2",
        cols.join(", ")
    );
    Ok(db
        .query(&sql, &[&grace_ms, &limit])
        .await?
        .iter()
        .map(|r| {
            let expired: bool = r.get(13);
            (
                MessageRow::from_row(r),
                if expired {
                    "expired"
                } else {
                    "channel_unlinked"
                },
            )
        })
        .collect())
}

/// Which of these channels have queued messages.
pub async fn with_queued(
    db: &impl GenericClient,
    channel_ids: &[String],
) -> Result<Vec<String>, tokio_postgres::Error> {
    if channel_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(db
        .query(
            "SELECT u.id FROM unnest($1::text[]) AS u(id)
             WHERE EXISTS (SELECT 1 FROM messages m WHERE m.channel_id = u.id AND m.rank = 0)",
            &[&channel_ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Our message behind a WhatsApp id (a reaction or a reply may name it by that id).
pub async fn by_wa_id(
    db: &impl GenericClient,
    channel_id: &str,
    wa_id: &str,
) -> Result<Option<MessageRow>, tokio_postgres::Error> {
    let sql =
        format!("SELECT {COLUMNS} FROM messages WHERE channel_id = $1 AND wa_id = $2 LIMIT 1");
    Ok(db
        .query_opt(&sql, &[&channel_id, &wa_id])
        .await?
        .map(|r| MessageRow::from_row(&r)))
}

/// Our messages named by these ids, each our id or its WhatsApp id (inbound reactions name the message they
/// react to): (id, wa_id) pairs, one query.
pub async fn ids_of(
    db: &impl GenericClient,
    channel_id: &str,
    any_ids: &[&str],
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    if any_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(db
        .query(
            "SELECT id, wa_id FROM messages WHERE channel_id = $1 AND (wa_id = ANY($2) OR id = ANY($2))",
            &[&channel_id, &any_ids],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

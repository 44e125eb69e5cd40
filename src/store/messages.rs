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

/// What became of a send handed to the [`Accepter`].
#[derive(Debug)]
pub enum Accepted {
    /// Committed as a queued message.
    New,
    /// The client_ref was used within its window: the original message, nothing inserted.
    Duplicate(Box<MessageRow>),
    /// The channel already holds `max` queued messages: nothing inserted.
    Full,
}

/// A send to commit, owned (it waits in the accepter's queue).
#[derive(Debug, Clone)]
pub struct NewOwned {
    pub id: String,
    pub customer_id: String,
    pub mode: String,
    pub channel_id: String,
    pub wa_id: String,
    pub to: String,
    pub kind: String,
    pub body: Value,
    pub client_ref: Option<String>,
    pub ttl_secs: i64,
}

impl NewOwned {
    fn borrowed(&self) -> NewMessage<'_> {
        NewMessage {
            id: &self.id,
            customer_id: &self.customer_id,
            mode: &self.mode,
            channel_id: &self.channel_id,
            wa_id: &self.wa_id,
            to: &self.to,
            kind: &self.kind,
            body: &self.body,
            client_ref: self.client_ref.as_deref(),
            ttl_secs: self.ttl_secs,
        }
    }
}

type AcceptRequest = (
    NewOwned,
    tokio::sync::oneshot::Sender<anyhow::Result<Accepted>>,
);

/// Sends waiting for the accepter; a full queue makes callers wait (backpressure), it never grows.
const ACCEPT_QUEUE: usize = 4_096;
/// Most sends committed in one transaction.
const ACCEPT_BATCH: usize = 512;

/// Group commit of the outbox: concurrent sends are gathered into one transaction (one WAL flush for many 202s),
/// each answered only after that transaction committed. The per-channel cap (`WHATISUP_OUTBOX_MAX_PER_CHANNEL`)
/// is checked against `outbox_counts` (kept exact by triggers on `messages`, migration 0011), whose rows the
/// transaction locks first: exact under concurrency and across nodes, O(1) per send instead of counting the queue.
#[derive(Clone)]
pub struct Accepter {
    tx: tokio::sync::mpsc::Sender<AcceptRequest>,
}

impl Accepter {
    /// Starts the writer with connections of its own (as the journal does), so that it never waits for the API's
    /// pool, and API requests holding pool connections never starve it.
    pub fn spawn(database_url: &str, max_per_channel: i64) -> Accepter {
        let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_QUEUE);
        let url = database_url.to_string();
        tokio::spawn(async move {
            let pool = loop {
                match crate::store::connect(&url, 2).await {
                    Ok(p) => break p,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox: connecting to the database");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
            };
            accept_loop(pool, rx, max_per_channel).await;
        });
        Accepter { tx }
    }

    /// Commits the send (or finds its duplicate, or refuses it when the channel's queue is full).
    pub async fn accept(&self, m: NewOwned) -> anyhow::Result<Accepted> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send((m, reply))
            .await
            .map_err(|_| anyhow::anyhow!("the outbox writer has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the outbox writer has stopped"))?
    }
}

async fn accept_loop(
    pool: deadpool_postgres::Pool,
    mut rx: tokio::sync::mpsc::Receiver<AcceptRequest>,
    max: i64,
) {
    let mut batch: Vec<AcceptRequest> = Vec::with_capacity(ACCEPT_BATCH);
    while rx.recv_many(&mut batch, ACCEPT_BATCH).await > 0 {
        let sends: Vec<&NewOwned> = batch.iter().map(|(m, _)| m).collect();
        let mut result = accept_batch(&pool, &sends, max).await;
        for _ in 0..3 {
            match &result {
                Err(e) if retryable(e) => result = accept_batch(&pool, &sends, max).await,
                _ => break,
            }
        }
        match result {
            Ok(outcomes) => {
                for (outcome, (_, reply)) in outcomes.into_iter().zip(batch.drain(..)) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            // One bad send (say, its channel row vanished) must not fail the others: each alone.
            Err(e) if batch.len() > 1 => {
                tracing::warn!(error = %e, n = batch.len(), "outbox: batch failed; committing one by one");
                for (m, reply) in batch.drain(..) {
                    let r = accept_batch(&pool, &[&m], max).await;
                    let _ = reply.send(r.map(|mut o| o.pop().unwrap_or(Accepted::Full)));
                }
            }
            Err(e) => {
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(anyhow::anyhow!("{e:#}")));
                }
            }
        }
    }
}

fn retryable(e: &anyhow::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        .is_some_and(|c| {
            c == &SqlState::T_R_DEADLOCK_DETECTED || c == &SqlState::T_R_SERIALIZATION_FAILURE
        })
}

/// Which sends of a batch fit under the cap: `queued` is each channel's count before the batch; sends are
/// taken in arrival order. Returns one flag per send.
pub fn fit_under_cap(
    channels: &[&str],
    queued: &std::collections::HashMap<String, i64>,
    max: i64,
) -> Vec<bool> {
    let mut taken: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    channels
        .iter()
        .map(|ch| {
            let n = taken
                .entry(ch)
                .or_insert_with(|| queued.get(*ch).copied().unwrap_or(0));
            if *n < max {
                *n += 1;
                true
            } else {
                false
            }
        })
        .collect()
}

/// One transaction: lock the channels' counters (sorted: one lock order for every writer), insert what fits,
/// commit. A send whose client_ref collided goes through `insert` afterwards (duplicate or expired ref).
async fn accept_batch(
    pool: &deadpool_postgres::Pool,
    sends: &[&NewOwned],
    max: i64,
) -> anyhow::Result<Vec<Accepted>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut channels: Vec<&str> = sends.iter().map(|m| m.channel_id.as_str()).collect();
    channels.sort_unstable();
    channels.dedup();
    let lock = tx
        .prepare_cached(
            "INSERT INTO outbox_counts AS c (channel_id, queued) SELECT u.ch, 0 FROM unnest($1::text[]) AS u(ch)
             ON CONFLICT (channel_id) DO UPDATE SET queued = c.queued RETURNING channel_id, queued",
        )
        .await?;
    let queued: std::collections::HashMap<String, i64> = tx
        .query(&lock, &[&channels])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let fits = fit_under_cap(
        &sends
            .iter()
            .map(|m| m.channel_id.as_str())
            .collect::<Vec<_>>(),
        &queued,
        max,
    );
    let take: Vec<&NewOwned> = sends
        .iter()
        .zip(&fits)
        .filter(|(_, ok)| **ok)
        .map(|(m, _)| *m)
        .collect();
    let mut inserted = std::collections::HashSet::new();
    if !take.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO messages (id, customer_id, mode, channel_id, wa_id, to_addr, type, body, client_ref,
                    expires_at, history)
                 SELECT u.id, u.cust, u.mode, u.ch, u.wa, u.to_addr, u.kind, u.body, u.cref,
                    now() + make_interval(secs => u.ttl),
                    jsonb_build_array(jsonb_build_object('status', 'queued', 'at',
                        to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')))
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                             $8::jsonb[], $9::text[], $10::int8[]) WITH ORDINALITY
                      AS u(id, cust, mode, ch, wa, to_addr, kind, body, cref, ttl, ord)
                 ORDER BY u.ord
                 ON CONFLICT (channel_id, client_ref) WHERE client_ref IS NOT NULL DO NOTHING
                 RETURNING id",
            )
            .await?;
        let col = |f: fn(&NewOwned) -> &str| take.iter().map(|m| f(m)).collect::<Vec<&str>>();
        let ids = col(|m| &m.id);
        let custs = col(|m| &m.customer_id);
        let modes = col(|m| &m.mode);
        let chs = col(|m| &m.channel_id);
        let was = col(|m| &m.wa_id);
        let tos = col(|m| &m.to);
        let kinds = col(|m| &m.kind);
        let bodies: Vec<&Value> = take.iter().map(|m| &m.body).collect();
        let crefs: Vec<Option<&str>> = take.iter().map(|m| m.client_ref.as_deref()).collect();
        let ttls: Vec<i64> = take.iter().map(|m| m.ttl_secs).collect();
        for r in tx
            .query(
                &insert,
                &[
                    &ids, &custs, &modes, &chs, &was, &tos, &kinds, &bodies, &crefs, &ttls,
                ],
            )
            .await?
        {
            inserted.insert(r.get::<_, String>(0));
        }
    }
    tx.commit().await?;
    let mut out = Vec::with_capacity(sends.len());
    for (m, fit) in sends.iter().zip(fits) {
        out.push(if !fit {
            Accepted::Full
        } else if inserted.contains(&m.id) {
            Accepted::New
        } else {
            // The client_ref is taken (rare): the original within its window, or a ref freed past it. As
            // before, a full queue refuses first; the counter is not locked here (a re-used ref is rarer still).
            let queued: i64 = client
                .query_opt(
                    "SELECT queued FROM outbox_counts WHERE channel_id = $1",
                    &[&m.channel_id],
                )
                .await?
                .map(|r| r.get(0))
                .unwrap_or(0);
            if queued >= max {
                Accepted::Full
            } else {
                match insert(&client, &m.borrowed()).await? {
                    Inserted::Duplicate(orig) => Accepted::Duplicate(orig),
                    Inserted::New => Accepted::New,
                }
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::fit_under_cap;
    use std::collections::HashMap;

    #[test]
    fn the_cap_takes_sends_in_arrival_order_per_channel() {
        let queued: HashMap<String, i64> = [("a".to_string(), 8), ("b".to_string(), 0)].into();
        // a has room for 2 of its 3; b (unknown counts are 0) for all; c is unknown: 0.
        assert_eq!(
            fit_under_cap(&["a", "b", "a", "a", "c", "b"], &queued, 10),
            [true, true, true, false, true, true]
        );
        // A channel already at (or past) the cap takes nothing.
        let full: HashMap<String, i64> = [("a".to_string(), 12)].into();
        assert_eq!(fit_under_cap(&["a", "a"], &full, 10), [false, false]);
        assert!(fit_under_cap(&[], &full, 10).is_empty());
    }
}

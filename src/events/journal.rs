//! The journal: one writer task per node that commits channel changes and their events in batches.
//!
//! A status change, its events, a sealed-state write and a lease release are one `Op`, committed in one
//! transaction. Many ops share a transaction (group commit), which is what makes thousands of sessions cheap.
//! Event rows are inserted under a transaction-level advisory lock, so their ids (the global cursor) become
//! visible in commit order across all nodes: a reader that has seen id N has seen every id below N.

use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::model::{Reason, Status};
use crate::store::channels::{COLUMNS, ChannelRow};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

type Param<'a> = dyn ToSql + Sync + 'a;

pub const EVENTS_LOCK: i64 = 0x7768_6174_6576_6e74; // "whatevnt"
const MAX_BATCH: usize = 512;
const QUEUE: usize = 16_384;

#[derive(Debug, Clone)]
pub struct Fence {
    pub node_id: String,
    pub token: i64,
}

#[derive(Debug, Default)]
pub enum StateWrite {
    #[default]
    Keep,
    Put {
        kid: String,
        sealed: Vec<u8>,
    },
    Wipe,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub enum Release {
    #[default]
    No,
    /// Release the lease named by the fence.
    Ours,
    /// Remove whoever holds it (logout, delete from the API): the owner's next write is refused.
    Any,
}

#[derive(Debug, Default)]
pub struct Op {
    pub channel_id: String,
    /// Refuse unless this node still holds the lease with this token.
    pub fence: Option<Fence>,
    /// Refuse unless the channel is in one of these statuses.
    pub expect: Option<Vec<Status>>,
    pub transition: Option<(Status, Option<Reason>)>,
    /// Extra fields of the `channel.status_changed` data (e.g. a ban's expiry).
    pub transition_data: Option<Value>,
    pub phone_number: Option<String>,
    /// Some(None) clears.
    pub qr: Option<Option<(String, DateTime<Utc>)>>,
    pub pair_code: Option<Option<(String, DateTime<Utc>)>>,
    pub delete: bool,
    pub state: StateWrite,
    /// Events after those the transition implies.
    pub events: Vec<(&'static str, Value)>,
    pub release: Release,
    pub audit: Option<AuditEntry>,
    /// Status changes of outbound messages; each write's events are committed only if the write applies.
    pub messages: Vec<MessageWrite>,
    /// Inbound messages and reactions: drop each `message.received` (`message_id`, `from`) or `message.reaction`
    /// (`reaction_id`, `from`) event of the channel that is already in
    /// the log or earlier in the same batch (WhatsApp redelivers what it did not see acknowledged). Checked under
    /// the batch's lock, so two nodes racing on one redelivery cannot both commit it.
    pub skip_committed_inbound: bool,
}

/// The dedup key of an inbound event: a message's `message_id`, a reaction's own `reaction_id`, with `from`.
/// None for other events (they are never dropped).
fn inbound_key<'a>(name: &str, data: &'a Value) -> Option<(&'a str, &'a str)> {
    let id = match name {
        "message.received" => data.get("message_id")?,
        "message.reaction" => data.get("reaction_id")?,
        _ => return None,
    };
    Some((id.as_str()?, data.get("from")?.as_str()?))
}

/// What happened to an outbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageChange {
    /// WhatsApp's server accepted it.
    Sent,
    Receipt(crate::engine::ReceiptStatus),
    /// Only a message still queued can fail.
    Failed,
}

impl MessageChange {
    pub fn status(self) -> &'static str {
        match self {
            MessageChange::Sent => "sent",
            MessageChange::Receipt(r) => r.as_str(),
            MessageChange::Failed => "failed",
        }
    }

    /// Statuses only move forward: queued 0, sent 1, delivered 2, read 3, played 4, failed 9.
    pub fn rank(self) -> i16 {
        use crate::engine::ReceiptStatus::*;
        match self {
            MessageChange::Sent => 1,
            MessageChange::Receipt(Delivered) => 2,
            MessageChange::Receipt(Read) => 3,
            MessageChange::Receipt(Played) => 4,
            MessageChange::Failed => 9,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            MessageChange::Sent => "sent",
            MessageChange::Receipt(_) => "receipt",
            MessageChange::Failed => "failed",
        }
    }
}

#[derive(Debug)]
pub struct MessageWrite {
    /// Our id ("msg_...").
    pub message_id: String,
    pub change: MessageChange,
    /// `{"code", "message"}` for a failure.
    pub error: Option<Value>,
    pub at: DateTime<Utc>,
    /// Committed only if the change applies (a receipt for a status already passed adds nothing).
    pub events: Vec<(&'static str, Value)>,
}

/// Applies message writes in one statement. A write applies only as a forward move: `sent` once, a receipt past
/// the current status, `failed` only while queued; nothing changes a failed message.
const MESSAGE_UPDATE_SQL: &str = "UPDATE messages m SET
        status = CASE WHEN u.rank > m.rank THEN u.status ELSE m.status END,
        rank = greatest(m.rank, u.rank),
        sent_at = CASE WHEN u.kind = 'sent' THEN u.at ELSE m.sent_at END,
        error = CASE WHEN u.kind = 'failed' THEN u.error ELSE m.error END,
        history = m.history || jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
            'status', u.status, 'at', u.at_s, 'error', u.error))),
        updated_at = now()
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int2[], $5::timestamptz[], $6::text[], $7::jsonb[], $8::text[])
         AS u(id, kind, status, rank, at, at_s, error, ch)
    WHERE m.id = u.id AND m.channel_id = u.ch AND m.rank <> 9 AND (
        (u.kind = 'sent' AND m.sent_at IS NULL)
        OR (u.kind = 'receipt' AND m.rank < u.rank)
        OR (u.kind = 'failed' AND m.rank = 0))
    RETURNING m.id";

/// A channel that is logged out or deleted sends nothing more: its queued messages fail with it.
const FAIL_QUEUED_SQL: &str = "UPDATE messages m SET status = 'failed', rank = 9, error = $2::jsonb, updated_at = now(),
        history = m.history || jsonb_build_array(jsonb_build_object('status', 'failed', 'at', $3::text, 'error', $2::jsonb))
    WHERE m.channel_id = $1 AND m.rank = 0
    RETURNING m.id, m.client_ref, m.to_addr, m.wa_id";

#[derive(Debug)]
pub struct AuditEntry {
    pub actor: String,
    pub action: &'static str,
    pub data: Value,
    pub request_id: Option<String>,
}

/// An event as committed: its cursor, id and per-channel sequence.
#[derive(Debug, Clone)]
pub struct Committed {
    pub id: i64,
    pub event_id: String,
    pub sequence: i64,
    pub event: String,
}

#[derive(Debug)]
pub enum OpOutcome {
    Applied {
        channel: ChannelRow,
        from: Status,
        events: Vec<Committed>,
    },
    /// The fence no longer holds: another node owns the session now.
    Fenced,
    /// The channel is not in an expected status; carries the status it is in.
    Unexpected(ChannelRow),
    NotFound,
}

type Request = (Op, oneshot::Sender<ApiResult<OpOutcome>>);

#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Request>,
}

impl Journal {
    /// Starts the writer with connections of its own (a small pool), so that API traffic never waits behind it
    /// for a connection and it never waits behind API traffic.
    pub fn spawn(database_url: &str, metrics: Arc<Metrics>) -> anyhow::Result<Journal> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let url = database_url.to_string();
        tokio::spawn(async move {
            let pool = loop {
                match crate::store::connect(&url, 2).await {
                    Ok(p) => break p,
                    Err(e) => {
                        tracing::warn!(error = %e, "journal: connecting to the database");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
            };
            writer(pool, rx, metrics).await;
        });
        Ok(Journal { tx })
    }

    pub async fn submit(&self, op: Op) -> ApiResult<OpOutcome> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((op, reply))
            .await
            .map_err(|_| ApiError::unavailable("shutting down"))?;
        rx.await
            .map_err(|_| ApiError::unavailable("shutting down"))?
    }
}

async fn writer(pool: Pool, mut rx: mpsc::Receiver<Request>, metrics: Arc<Metrics>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    let mut cache = SeqCache::default();
    loop {
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let ops: Vec<&Op> = batch.iter().map(|(op, _)| op).collect();
        metrics.journal_batch.observe(ops.len() as f64);
        // A deadlock or serialization failure aborted the whole transaction: nothing was written, try again.
        let mut result = commit_batch(&pool, &ops, &mut cache).await;
        for _ in 0..3 {
            match &result {
                Err(e) if retryable(e) => {
                    tracing::warn!(error = ?e, "journal batch aborted by the database; retrying");
                    result = commit_batch(&pool, &ops, &mut cache).await;
                }
                _ => break,
            }
        }
        match result {
            Ok(outcomes) => {
                for (outcome, (_, reply)) in outcomes.into_iter().zip(batch.drain(..)) {
                    if let OpOutcome::Applied {
                        channel,
                        from,
                        events,
                    } = &outcome
                    {
                        metrics.events_committed.inc_by(events.len() as u64);
                        if *from != channel.status {
                            metrics
                                .transitions
                                .with_label_values(&[from.as_str(), channel.status.as_str()])
                                .inc();
                        }
                    }
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = ?e, ops = batch.len(), "journal batch failed; nothing of it was committed");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(ApiError::unavailable("database unavailable")));
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

struct PendingEvent {
    event_id: String,
    customer_id: String,
    mode: crate::model::Mode,
    channel_id: String,
    sequence: i64,
    name: String,
    at: DateTime<Utc>,
    data: Value,
}

static SELECT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    // No row locks needed: every writer of these columns and of events is a journal batch, and batches are
    // serialised by the advisory lock (on every node), so nothing changes the rows between this read and the
    // UPDATE. A join with unnest, not `id = ANY($1)`: ANY over hundreds of ids is a linear search per row.
    let cols: Vec<String> = COLUMNS.split(", ").map(|col| format!("c.{col}")).collect();
    format!(
        "SELECT {}, c.last_sequence FROM unnest($1::text[]) AS u(id) JOIN channels c ON c.id = u.id",
        cols.join(", ")
    )
});

/// The last sequence of channels the writer does not know yet: an index lookup each.
const SEQ_LOOKUP_SQL: &str =
    "SELECT u.id, coalesce((SELECT max(e.sequence) FROM events e WHERE e.channel_id = u.id), 0)
    FROM unnest($1::text[]) AS u(id)";

/// What other nodes committed since this writer's last batch (under the lock, so nothing is missed).
const SEQ_OTHERS_SQL: &str =
    "SELECT channel_id, max(sequence), max(id) FROM events WHERE id > $1 GROUP BY channel_id";

const LOG_END_SQL: &str = "SELECT coalesce(max(id), 0) FROM events";

/// Which of these inbound messages already have their `message.received` event (the partial index of migration
/// 0004 serves each probe).
const INBOUND_SEEN_SQL: &str = "SELECT u.ch, u.ev, u.mid, u.frm
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(ch, ev, mid, frm)
    WHERE (u.ev = 'message.received' AND EXISTS (SELECT 1 FROM events e WHERE e.channel_id = u.ch
               AND e.event = 'message.received' AND e.data->>'message_id' = u.mid AND e.data->>'from' = u.frm))
       OR (u.ev = 'message.reaction' AND EXISTS (SELECT 1 FROM events e WHERE e.channel_id = u.ch
               AND e.event = 'message.reaction' AND e.data->>'reaction_id' = u.mid AND e.data->>'from' = u.frm))";

/// The writer's knowledge of each channel's last sequence, so that a batch need not look every channel up.
/// Sequences come from the log itself (no counter written per event); `channels.last_sequence` is a floor written
/// whenever the row is written anyway, so a retention cleaner must raise it before deleting a channel's newest
/// event. Valid because every event insert happens under the advisory lock: what this writer did not insert
/// itself is exactly what has `id > last_id`.
#[derive(Default)]
pub struct SeqCache {
    /// None: unknown (first batch, or after a failed one); everything is looked up.
    last_id: Option<i64>,
    seqs: HashMap<String, i64>,
}

const SEQ_CACHE_MAX: usize = 200_000;

/// Leases of fenced ops, share-locked (in channel_id order, as every multi-row locker of leases does) so that
/// no claim can take one over before this batch commits.
const LEASES_SQL: &str = "SELECT l.channel_id, l.node_id, l.token FROM unnest($1::text[]) AS u(id)
    JOIN session_leases l ON l.channel_id = u.id WHERE l.expires_at > now() ORDER BY l.channel_id FOR SHARE OF l";

const UPDATE_SQL: &str = "UPDATE channels c SET status = u.status, status_reason = u.reason,
        status_since = u.since, phone_number = u.phone, qr_code = u.qr, qr_expires_at = u.qr_exp,
        pair_code = u.pc, pair_code_expires_at = u.pc_exp, last_connected_at = u.lc, deleted_at = u.del,
        last_sequence = u.seq, updated_at = u.upd
    FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
                $7::timestamptz[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[],
                $12::int8[], $13::timestamptz[])
         AS u(id, status, reason, since, phone, qr, qr_exp, pc, pc_exp, lc, del, seq, upd)
    WHERE c.id = u.id";

/// ORDER BY ord makes nextval() run in the order the events happened. The same statement writes one webhook
/// delivery per (event, matching endpoint), so a delivery exists exactly when its event does, and announces
/// new deliveries to the dispatchers (only when there are some: a customer without endpoints pays one join
/// against an empty index range).
static INSERT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH ins AS (
            INSERT INTO events (event_id, customer_id, mode, channel_id, sequence, event, occurred_at, data)
            SELECT e, c, m, ch, s, n, a, d FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[],
                $6::text[], $7::timestamptz[], $8::jsonb[]) WITH ORDINALITY AS t(e, c, m, ch, s, n, a, d, ord)
            ORDER BY ord RETURNING id, event_id, event, channel_id, customer_id, mode),
        dl AS ({} RETURNING 1),
        woke AS (SELECT pg_notify('{}', '') FROM (SELECT 1 FROM dl LIMIT 1) AS any_delivery)
        SELECT i.id, i.event_id, (SELECT count(*) FROM woke) FROM ins i",
        crate::webhooks::deliveries::fanout_sql("ins"),
        crate::webhooks::deliveries::NOTIFY_CHANNEL,
    )
});

type Stored = (
    Status,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// The columns an op may change.
fn stored(r: &ChannelRow) -> Stored {
    (
        r.status,
        r.status_reason.clone(),
        r.phone_number.clone(),
        r.qr_code.clone(),
        r.qr_expires_at,
        r.pair_code.clone(),
        r.pair_code_expires_at,
        r.last_connected_at,
        r.deleted_at,
    )
}

/// A write beside the channel row, done in op order after the batched UPDATE.
enum SideWrite<'a> {
    PutState(&'a str, &'a str, &'a [u8]),
    WipeState(&'a str),
    ReleaseOurs(&'a str, &'a Fence),
    ReleaseAny(&'a str),
    Audit(&'a str, &'a AuditEntry, String, &'static str),
}

/// An op that passed its checks, before its events are numbered.
struct Staged<'a> {
    outcome: usize,
    channel_id: &'a str,
    names: Vec<(String, Value)>,
    messages: &'a [MessageWrite],
    fail_queued: bool,
}

/// Runs the staged message writes; returns the (staged op, write) pairs that applied. A message written twice in
/// one batch is written in rounds, so that each write sees the previous one.
async fn apply_message_writes(
    tx: &tokio_postgres::Transaction<'_>,
    staged: &[Staged<'_>],
) -> anyhow::Result<std::collections::HashSet<(usize, usize)>> {
    let mut applied = std::collections::HashSet::new();
    let mut left: Vec<(usize, usize, &MessageWrite)> = staged
        .iter()
        .enumerate()
        .flat_map(|(si, st)| {
            st.messages
                .iter()
                .enumerate()
                .map(move |(wi, m)| (si, wi, m))
        })
        .collect();
    while !left.is_empty() {
        let mut seen = std::collections::HashSet::new();
        let (round, rest): (Vec<_>, Vec<_>) = left
            .into_iter()
            .partition(|(_, _, m)| seen.insert(m.message_id.as_str()));
        left = rest;
        let ids: Vec<&str> = round
            .iter()
            .map(|(_, _, m)| m.message_id.as_str())
            .collect();
        let kinds: Vec<&str> = round.iter().map(|(_, _, m)| m.change.kind()).collect();
        let statuses: Vec<&str> = round.iter().map(|(_, _, m)| m.change.status()).collect();
        let ranks: Vec<i16> = round.iter().map(|(_, _, m)| m.change.rank()).collect();
        let ats: Vec<DateTime<Utc>> = round.iter().map(|(_, _, m)| m.at).collect();
        let at_s: Vec<String> = round
            .iter()
            .map(|(_, _, m)| crate::wkt::rfc3339(m.at))
            .collect();
        let errors: Vec<Option<&Value>> = round.iter().map(|(_, _, m)| m.error.as_ref()).collect();
        let chs: Vec<&str> = round
            .iter()
            .map(|(si, _, _)| staged[*si].channel_id)
            .collect();
        let rows = tx
            .query(
                MESSAGE_UPDATE_SQL,
                &[&ids, &kinds, &statuses, &ranks, &ats, &at_s, &errors, &chs],
            )
            .await?;
        let done: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        for (si, wi, m) in round {
            if done.contains(&m.message_id) {
                applied.insert((si, wi));
            }
        }
    }
    Ok(applied)
}

/// A channel as the batch sees it: read once (locked), changed in memory op by op, written once.
struct Working {
    row: ChannelRow,
    seq: i64,
    dirty: bool,
}

/// Commits a batch in a constant number of statements: lock the channels, check fences, apply every op in
/// memory in order, then one UPDATE for all channels, the rare side writes, and one INSERT for all events.
async fn commit_batch(
    pool: &Pool,
    ops: &[&Op],
    cache: &mut SeqCache,
) -> anyhow::Result<Vec<OpOutcome>> {
    let result = commit_batch_inner(pool, ops, cache).await;
    if result.is_err() {
        // Whatever this batch learnt may not have been committed.
        *cache = SeqCache::default();
    }
    result
}

async fn commit_batch_inner(
    pool: &Pool,
    ops: &[&Op],
    cache: &mut SeqCache,
) -> anyhow::Result<Vec<OpOutcome>> {
    let mut client = pool.get().await?;
    // Prepared once per connection: these statements run for every batch.
    let lock = client
        .prepare_cached("SELECT pg_advisory_xact_lock($1)")
        .await?;
    let select = client.prepare_cached(&SELECT_SQL).await?;
    let lease_check = client.prepare_cached(LEASES_SQL).await?;
    let update = client.prepare_cached(UPDATE_SQL).await?;
    let insert = client.prepare_cached(&INSERT_SQL).await?;
    let seq_lookup = client.prepare_cached(SEQ_LOOKUP_SQL).await?;
    let seq_others = client.prepare_cached(SEQ_OTHERS_SQL).await?;
    let log_end = client.prepare_cached(LOG_END_SQL).await?;
    let inbound_seen = client.prepare_cached(INBOUND_SEEN_SQL).await?;
    let tx = client.transaction().await?;

    let mut ids: Vec<&str> = ops.iter().map(|o| o.channel_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let fenced_ids: Vec<&str> = ops
        .iter()
        .filter(|o| o.fence.is_some())
        .map(|o| o.channel_id.as_str())
        .collect();
    if cache.seqs.len() > SEQ_CACHE_MAX {
        *cache = SeqCache::default();
    }
    let misses: Vec<&str> = match cache.last_id {
        Some(_) => ids
            .iter()
            .copied()
            .filter(|id| !cache.seqs.contains_key(*id))
            .collect(),
        None => ids.clone(),
    };
    let since = cache.last_id.unwrap_or(i64::MAX);
    let (mut in_ch, mut in_ev, mut in_mid, mut in_from) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for op in ops.iter().filter(|o| o.skip_committed_inbound) {
        for (name, data) in &op.events {
            if let Some((mid, from)) = inbound_key(name, data) {
                in_ch.push(op.channel_id.as_str());
                in_ev.push(*name);
                in_mid.push(mid);
                in_from.push(from);
            }
        }
    }
    let inbound_args: [&Param<'_>; 4] = [&in_ch, &in_ev, &in_mid, &in_from];
    // Pipelined: one round trip. The server runs them in order, so the reads happen under the lock.
    let lock_args: [&Param<'_>; 1] = [&EVENTS_LOCK];
    let select_args: [&Param<'_>; 1] = [&ids];
    let lease_args: [&Param<'_>; 1] = [&fenced_ids];
    let miss_args: [&Param<'_>; 1] = [&misses];
    let since_args: [&Param<'_>; 1] = [&since];
    // Statements with nothing to do are not sent.
    let lookups = async {
        if misses.is_empty() {
            Ok(Vec::new())
        } else {
            tx.query(&seq_lookup, &miss_args).await
        }
    };
    let leases_read = async {
        if fenced_ids.is_empty() {
            Ok(Vec::new())
        } else {
            tx.query(&lease_check, &lease_args).await
        }
    };
    let end_read = async {
        match cache.last_id {
            Some(id) => Ok(id),
            None => tx
                .query_one(&log_end, &[])
                .await
                .map(|r| r.get::<_, i64>(0)),
        }
    };
    let inbound_read = async {
        if in_ch.is_empty() {
            Ok(Vec::new())
        } else {
            tx.query(&inbound_seen, &inbound_args).await
        }
    };
    let (_, rows, lease_rows, looked_up, others, end, seen_rows) = tokio::try_join!(
        tx.execute(&lock, &lock_args),
        tx.query(&select, &select_args),
        leases_read,
        lookups,
        tx.query(&seq_others, &since_args),
        end_read,
        inbound_read,
    )?;
    // Inbound messages committed already (before this batch, or by an earlier op of it).
    let mut inbound_seen: std::collections::HashSet<(String, String, String, String)> = seen_rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    if cache.last_id.is_none() {
        cache.seqs.clear();
    }
    let mut known: HashMap<&str, i64> = HashMap::new();
    for r in looked_up.iter().chain(others.iter()) {
        let (ch, seq): (&str, i64) = (r.get(0), r.get(1));
        let e = known.entry(ch).or_insert(0);
        *e = (*e).max(seq);
    }
    // The log's end as far as this writer knows: its own last insert, or later rows of other nodes.
    let log_end: i64 = others
        .iter()
        .map(|r| r.get::<_, i64>(2))
        .fold(end, i64::max);
    let mut work: HashMap<String, Working> = rows
        .iter()
        .map(|r| {
            let row = ChannelRow::from_row(r);
            let floor: i64 = r.get("last_sequence");
            let seq = floor
                .max(known.get(row.id.as_str()).copied().unwrap_or(0))
                .max(cache.seqs.get(&row.id).copied().unwrap_or(0));
            (
                row.id.clone(),
                Working {
                    seq,
                    row,
                    dirty: false,
                },
            )
        })
        .collect();
    // Channels other nodes wrote to and this batch does not touch: forget them (looked up when next needed).
    for r in others.iter() {
        let ch: &str = r.get(0);
        if !work.contains_key(ch) {
            cache.seqs.remove(ch);
        }
    }
    let mut leases: HashMap<String, (String, i64)> = lease_rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();

    let now = Utc::now();
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut pending: Vec<PendingEvent> = Vec::new();
    let mut spans: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    let mut side: Vec<SideWrite<'_>> = Vec::new();
    let mut staged: Vec<Staged<'_>> = Vec::new();
    for op in ops {
        let Some(w) = work.get_mut(&op.channel_id) else {
            outcomes.push(OpOutcome::NotFound);
            continue;
        };
        if let Some(f) = &op.fence
            && leases.get(&op.channel_id) != Some(&(f.node_id.clone(), f.token))
        {
            outcomes.push(OpOutcome::Fenced);
            continue;
        }
        // The sweep's failure of a message left queued on a deleted channel (accepted as it was deleted) is the
        // one write a deleted channel still takes: otherwise the message would stay queued for good.
        let late_failure = op.fence.is_none()
            && op.transition.is_none()
            && op.events.is_empty()
            && !op.messages.is_empty()
            && op
                .messages
                .iter()
                .all(|m| m.change == MessageChange::Failed);
        if w.row.deleted_at.is_some() && !op.delete && !late_failure {
            // A deleted channel takes no more changes; a session still running for it is stopped by the caller.
            outcomes.push(OpOutcome::Fenced);
            continue;
        }
        if let Some(expect) = &op.expect
            && !expect.contains(&w.row.status)
        {
            outcomes.push(OpOutcome::Unexpected(w.row.clone()));
            continue;
        }

        let row = &mut w.row;
        let before = stored(row);
        let from = row.status;
        let mut names: Vec<(String, Value)> = Vec::new();
        let mut changed_status = false;
        if let Some((to, why)) = op.transition {
            let reason_changed = row.status_reason.as_deref() != why.map(|r| r.as_str());
            if to != from {
                let mut data = json!({"from": from.as_str(), "to": to.as_str(), "reason": why.map(|r| r.as_str())});
                if let (Some(Value::Object(extra)), Value::Object(d)) =
                    (&op.transition_data, &mut data)
                {
                    d.extend(extra.clone());
                }
                names.push(("channel.status_changed".into(), data));
                if to == Status::Connected {
                    let phone = op.phone_number.clone().or(row.phone_number.clone());
                    names.push(("channel.connected".into(), json!({"phone_number": phone})));
                }
                if from == Status::Connected {
                    names.push((
                        "channel.disconnected".into(),
                        json!({"reason": why.map(|r| r.as_str()), "to": to.as_str()}),
                    ));
                }
            }
            if to != from || reason_changed {
                changed_status = to != from;
                row.status = to;
                row.status_reason = why.map(|r| r.as_str().to_string());
                if changed_status {
                    row.status_since = now;
                }
            }
        }
        for (n, d) in &op.events {
            if op.skip_committed_inbound
                && let Some((mid, from)) = inbound_key(n, d)
                && !inbound_seen.insert((
                    op.channel_id.clone(),
                    n.to_string(),
                    mid.to_string(),
                    from.to_string(),
                ))
            {
                continue;
            }
            names.push((n.to_string(), d.clone()));
        }

        if let Some(p) = &op.phone_number {
            row.phone_number = Some(p.clone());
        }
        if changed_status && row.status == Status::Connected {
            row.last_connected_at = Some(now);
        }
        // Leaving `qr` clears the QR and pair code.
        let leaving_qr = changed_status && from == Status::Qr;
        match &op.qr {
            Some(v) => {
                (row.qr_code, row.qr_expires_at) =
                    (v.as_ref().map(|x| x.0.clone()), v.as_ref().map(|x| x.1))
            }
            None if leaving_qr => (row.qr_code, row.qr_expires_at) = (None, None),
            None => {}
        }
        match &op.pair_code {
            Some(v) => {
                (row.pair_code, row.pair_code_expires_at) =
                    (v.as_ref().map(|x| x.0.clone()), v.as_ref().map(|x| x.1))
            }
            None if leaving_qr => (row.pair_code, row.pair_code_expires_at) = (None, None),
            None => {}
        }
        if op.delete && row.deleted_at.is_none() {
            row.deleted_at = Some(now);
        }
        // Events alone do not touch the channel row: its sequence comes from the log (see SELECT_SQL).
        if stored(row) != before {
            row.updated_at = now;
            w.dirty = true;
        }

        match &op.state {
            StateWrite::Keep => {}
            StateWrite::Put { kid, sealed } => {
                side.push(SideWrite::PutState(&op.channel_id, kid, sealed))
            }
            StateWrite::Wipe => side.push(SideWrite::WipeState(&op.channel_id)),
        }
        match (&op.release, &op.fence) {
            (Release::Ours, Some(f)) => {
                leases.remove(&op.channel_id);
                side.push(SideWrite::ReleaseOurs(&op.channel_id, f));
            }
            (Release::Any, _) => {
                leases.remove(&op.channel_id);
                side.push(SideWrite::ReleaseAny(&op.channel_id));
            }
            _ => {}
        }
        if let Some(a) = &op.audit {
            side.push(SideWrite::Audit(
                &op.channel_id,
                a,
                row.customer_id.clone(),
                row.mode.as_str(),
            ));
        }

        // The channel stops for good: its queued messages fail in this transaction (below).
        let fail_queued = (changed_status && row.status == Status::Disconnected)
            || (op.delete && before.8.is_none());
        staged.push(Staged {
            outcome: outcomes.len(),
            channel_id: &op.channel_id,
            names,
            messages: &op.messages,
            fail_queued,
        });
        outcomes.push(OpOutcome::Applied {
            channel: w.row.clone(),
            from,
            events: Vec::new(),
        });
    }

    // Message writes of the ops that passed their checks, batched; only the writes that apply add events.
    let applied = apply_message_writes(&tx, &staged).await?;
    for (si, st) in staged.iter_mut().enumerate() {
        for (wi, mw) in st.messages.iter().enumerate() {
            if applied.contains(&(si, wi)) {
                st.names
                    .extend(mw.events.iter().map(|(n, d)| (n.to_string(), d.clone())));
            }
        }
        if st.fail_queued {
            let at = crate::wkt::rfc3339(now);
            let error = json!({"code": "channel_unlinked", "message": "the channel was logged out or deleted before the message was sent"});
            let rows = tx
                .query(FAIL_QUEUED_SQL, &[&st.channel_id, &error, &at])
                .await?;
            for r in rows {
                let (id, client_ref, to, wa_id): (String, Option<String>, String, String) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                st.names.push((
                    "message.status".into(),
                    json!({"message_id": id, "client_ref": client_ref, "to": to, "whatsapp_id": wa_id,
                           "status": "failed", "error": error, "timestamp": at}),
                ));
            }
        }
    }
    // Sequences in op order.
    for st in staged {
        let Some(w) = work.get_mut(st.channel_id) else {
            continue;
        };
        let start = pending.len();
        for (name, data) in st.names {
            w.seq += 1;
            pending.push(PendingEvent {
                event_id: crate::store::new_id("evt"),
                customer_id: w.row.customer_id.clone(),
                mode: w.row.mode,
                channel_id: w.row.id.clone(),
                sequence: w.seq,
                name,
                at: now,
                data,
            });
        }
        spans.push((st.outcome, start..pending.len()));
    }

    let dirty: Vec<&Working> = work.values().filter(|w| w.dirty).collect();
    let mut update_args = None;
    if !dirty.is_empty() {
        let col = |f: fn(&Working) -> Option<String>| {
            dirty.iter().map(|w| f(w)).collect::<Vec<Option<String>>>()
        };
        let tcol = |f: fn(&Working) -> Option<DateTime<Utc>>| {
            dirty.iter().map(|w| f(w)).collect::<Vec<_>>()
        };
        let ids: Vec<&str> = dirty.iter().map(|w| w.row.id.as_str()).collect();
        let status = col(|w| Some(w.row.status.as_str().to_string()));
        let reason = col(|w| w.row.status_reason.clone());
        let since = tcol(|w| Some(w.row.status_since));
        let phone = col(|w| w.row.phone_number.clone());
        let qr = col(|w| w.row.qr_code.clone());
        let qr_exp = tcol(|w| w.row.qr_expires_at);
        let pc = col(|w| w.row.pair_code.clone());
        let pc_exp = tcol(|w| w.row.pair_code_expires_at);
        let lc = tcol(|w| w.row.last_connected_at);
        let del = tcol(|w| w.row.deleted_at);
        let upd = tcol(|w| Some(w.row.updated_at));
        let seq: Vec<i64> = dirty.iter().map(|w| w.seq).collect();
        update_args = Some((
            ids, status, reason, since, phone, qr, qr_exp, pc, pc_exp, lc, del, seq, upd,
        ));
    }

    for w in side {
        match w {
            SideWrite::PutState(ch, kid, sealed) => {
                tx.execute(
                    "INSERT INTO session_state (channel_id, kid, sealed) VALUES ($1, $2, $3)
                     ON CONFLICT (channel_id) DO UPDATE SET kid = $2, sealed = $3, updated_at = now()",
                    &[&ch, &kid, &sealed],
                )
                .await?;
            }
            SideWrite::WipeState(ch) => {
                tx.execute("DELETE FROM session_state WHERE channel_id = $1", &[&ch])
                    .await?;
            }
            SideWrite::ReleaseOurs(ch, f) => {
                tx.execute(
                    "DELETE FROM session_leases WHERE channel_id = $1 AND node_id = $2 AND token = $3",
                    &[&ch, &f.node_id, &f.token],
                )
                .await?;
            }
            SideWrite::ReleaseAny(ch) => {
                tx.execute("DELETE FROM session_leases WHERE channel_id = $1", &[&ch])
                    .await?;
            }
            SideWrite::Audit(ch, a, customer, mode) => {
                tx.execute(
                    "INSERT INTO audit_events (audit_id, customer_id, mode, actor, action, resource, channel_id, data, request_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8)",
                    &[&crate::store::new_id("aud"), &customer, &mode, &a.actor, &a.action, &ch, &a.data, &a.request_id],
                )
                .await?;
            }
        }
    }

    // The channel UPDATE, the event INSERT and the notification, pipelined: one round trip.
    let event_ids: Vec<&str> = pending.iter().map(|e| e.event_id.as_str()).collect();
    let customers: Vec<&str> = pending.iter().map(|e| e.customer_id.as_str()).collect();
    let modes: Vec<&str> = pending.iter().map(|e| e.mode.as_str()).collect();
    let channels: Vec<&str> = pending.iter().map(|e| e.channel_id.as_str()).collect();
    let seqs: Vec<i64> = pending.iter().map(|e| e.sequence).collect();
    let names: Vec<&str> = pending.iter().map(|e| e.name.as_str()).collect();
    let ats: Vec<DateTime<Utc>> = pending.iter().map(|e| e.at).collect();
    let datas: Vec<&Value> = pending.iter().map(|e| &e.data).collect();
    let do_update = async {
        match &update_args {
            Some((
                ids,
                status,
                reason,
                since,
                phone,
                qr,
                qr_exp,
                pc,
                pc_exp,
                lc,
                del,
                seq,
                upd,
            )) => {
                tx.execute(
                    &update,
                    &[
                        ids, status, reason, since, phone, qr, qr_exp, pc, pc_exp, lc, del, seq,
                        upd,
                    ],
                )
                .await
            }
            None => Ok(0),
        }
    };
    let do_insert = async {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        tx.query(
            &insert,
            &[
                &event_ids, &customers, &modes, &channels, &seqs, &names, &ats, &datas,
            ],
        )
        .await
    };
    // The payload is the log's end (the server runs this after the INSERT): a hub that has read that far
    // already skips the notification.
    let do_notify = async {
        if pending.is_empty() {
            return Ok(0);
        }
        tx.execute(
            "SELECT pg_notify('whatisup_events', (SELECT coalesce(max(id), 0) FROM events)::text)",
            &[],
        )
        .await
    };
    let (_, rows, _) = tokio::try_join!(do_update, do_insert, do_notify)?;
    let by_event: HashMap<String, i64> = rows
        .iter()
        .map(|r| (r.get::<_, String>(1), r.get::<_, i64>(0)))
        .collect();
    let ids: Vec<i64> = pending
        .iter()
        .map(|e| by_event.get(&e.event_id).copied().unwrap_or(0))
        .collect();
    tx.commit().await?;
    for w in work.values() {
        cache.seqs.insert(w.row.id.clone(), w.seq);
    }
    cache.last_id = Some(ids.iter().copied().max().unwrap_or(0).max(log_end));

    // Subscribers get events from the hub, which reads the committed rows; callers only need to know them.
    for (idx, span) in spans {
        if let OpOutcome::Applied { events, .. } = &mut outcomes[idx] {
            events.extend(span.map(|i| Committed {
                id: ids[i],
                event_id: std::mem::take(&mut pending[i].event_id),
                sequence: pending[i].sequence,
                event: std::mem::take(&mut pending[i].name),
            }));
        }
    }
    Ok(outcomes)
}

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

const EVENTS_LOCK: i64 = 0x7768_6174_6576_6e74; // "whatevnt"
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
}

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
    /// Starts the writer on a thread of its own, with its own connections: under load (thousands of session
    /// tasks) its database round trips do not wait in the shared runtime's queue, and every batch is one of them.
    pub fn spawn(database_url: &str, metrics: Arc<Metrics>) -> anyhow::Result<Journal> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let url = database_url.to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("whatisup-journal".into())
            .spawn(move || {
                rt.block_on(async move {
                    // Connections made here have their drivers on this runtime.
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
                })
            })?;
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
    loop {
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let ops: Vec<&Op> = batch.iter().map(|(op, _)| op).collect();
        metrics.journal_batch.observe(ops.len() as f64);
        // A deadlock or serialization failure aborted the whole transaction: nothing was written, try again.
        let mut result = commit_batch(&pool, &ops).await;
        for _ in 0..3 {
            match &result {
                Err(e) if retryable(e) => {
                    tracing::warn!(error = ?e, "journal batch aborted by the database; retrying");
                    result = commit_batch(&pool, &ops).await;
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

/// A write beside the channel row, done in op order after the batched UPDATE.
enum SideWrite<'a> {
    PutState(&'a str, &'a str, &'a [u8]),
    WipeState(&'a str),
    ReleaseOurs(&'a str, &'a Fence),
    ReleaseAny(&'a str),
    Audit(&'a str, &'a AuditEntry, String, &'static str),
}

/// A channel as the batch sees it: read once (locked), changed in memory op by op, written once.
struct Working {
    row: ChannelRow,
    seq: i64,
    dirty: bool,
}

/// Commits a batch in a constant number of statements: lock the channels, check fences, apply every op in
/// memory in order, then one UPDATE for all channels, the rare side writes, and one INSERT for all events.
async fn commit_batch(pool: &Pool, ops: &[&Op]) -> anyhow::Result<Vec<OpOutcome>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK])
        .await?;

    let mut ids: Vec<&str> = ops.iter().map(|o| o.channel_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    // No row locks needed: every writer of these columns is a journal batch, and batches are serialised by the
    // advisory lock above (on every node), so nothing changes the rows between this read and the UPDATE below.
    // A join with unnest, not `id = ANY($1)`: ANY over hundreds of ids is a linear search per row.
    let select_sql = format!(
        "SELECT {cols}, c.last_sequence FROM unnest($1::text[]) AS u(id) JOIN channels c ON c.id = u.id",
        cols = COLUMNS
            .split(", ")
            .map(|col| format!("c.{col}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Prepared once per connection: these statements run for every batch.
    let select = tx.prepare_cached(&select_sql).await?;
    let mut work: HashMap<String, Working> = tx
        .query(&select, &[&ids])
        .await?
        .iter()
        .map(|r| {
            let row = ChannelRow::from_row(r);
            (
                row.id.clone(),
                Working {
                    seq: r.get("last_sequence"),
                    row,
                    dirty: false,
                },
            )
        })
        .collect();
    let fenced_ids: Vec<&str> = ops
        .iter()
        .filter(|o| o.fence.is_some())
        .map(|o| o.channel_id.as_str())
        .collect();
    let mut leases: HashMap<String, (String, i64)> = if fenced_ids.is_empty() {
        HashMap::new()
    } else {
        tx.query(
            "SELECT l.channel_id, l.node_id, l.token FROM unnest($1::text[]) AS u(id) \
             JOIN session_leases l ON l.channel_id = u.id WHERE l.expires_at > now() ORDER BY l.channel_id FOR SHARE OF l",
            &[&fenced_ids],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
    };

    let now = Utc::now();
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut pending: Vec<PendingEvent> = Vec::new();
    let mut spans: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    let mut side: Vec<SideWrite<'_>> = Vec::new();
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
        if w.row.deleted_at.is_some() && !op.delete {
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
        names.extend(op.events.iter().map(|(n, d)| (n.to_string(), d.clone())));

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
        row.updated_at = now;
        w.dirty = true;

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

        let start = pending.len();
        for (name, data) in names {
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
        spans.push((outcomes.len(), start..pending.len()));
        outcomes.push(OpOutcome::Applied {
            channel: w.row.clone(),
            from,
            events: Vec::new(),
        });
    }

    let dirty: Vec<&Working> = work.values().filter(|w| w.dirty).collect();
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
        tx.execute(
            &tx.prepare_cached(
            "UPDATE channels c SET status = u.status, status_reason = u.reason, status_since = u.since,
                    phone_number = u.phone, qr_code = u.qr, qr_expires_at = u.qr_exp, pair_code = u.pc,
                    pair_code_expires_at = u.pc_exp, last_connected_at = u.lc, deleted_at = u.del,
                    last_sequence = u.seq, updated_at = u.upd
               FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
                           $7::timestamptz[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[],
                           $12::int8[], $13::timestamptz[])
                    AS u(id, status, reason, since, phone, qr, qr_exp, pc, pc_exp, lc, del, seq, upd)
              WHERE c.id = u.id").await?,
            &[&ids, &status, &reason, &since, &phone, &qr, &qr_exp, &pc, &pc_exp, &lc, &del, &seq, &upd],
        )
        .await?;
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

    let mut ids: Vec<i64> = Vec::new();
    if !pending.is_empty() {
        let event_ids: Vec<&str> = pending.iter().map(|e| e.event_id.as_str()).collect();
        let customers: Vec<&str> = pending.iter().map(|e| e.customer_id.as_str()).collect();
        let modes: Vec<&str> = pending.iter().map(|e| e.mode.as_str()).collect();
        let channels: Vec<&str> = pending.iter().map(|e| e.channel_id.as_str()).collect();
        let seqs: Vec<i64> = pending.iter().map(|e| e.sequence).collect();
        let names: Vec<&str> = pending.iter().map(|e| e.name.as_str()).collect();
        let ats: Vec<DateTime<Utc>> = pending.iter().map(|e| e.at).collect();
        let datas: Vec<&Value> = pending.iter().map(|e| &e.data).collect();
        // ORDER BY ord makes nextval() run in the order the events happened.
        let rows = tx
            .query(
                &tx.prepare_cached(
                "INSERT INTO events (event_id, customer_id, mode, channel_id, sequence, event, occurred_at, data)
                 SELECT e, c, m, ch, s, n, a, d FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                        $5::int8[], $6::text[], $7::timestamptz[], $8::jsonb[]) WITH ORDINALITY AS t(e, c, m, ch, s, n, a, d, ord)
                 ORDER BY ord RETURNING id, event_id").await?,
                &[&event_ids, &customers, &modes, &channels, &seqs, &names, &ats, &datas],
            )
            .await?;
        let by_event: std::collections::HashMap<String, i64> = rows
            .iter()
            .map(|r| (r.get::<_, String>(1), r.get::<_, i64>(0)))
            .collect();
        ids = pending
            .iter()
            .map(|e| by_event.get(&e.event_id).copied().unwrap_or(0))
            .collect();
        let max = ids.iter().copied().max().unwrap_or(0);
        tx.execute(
            "SELECT pg_notify('whatisup_events', $1)",
            &[&max.to_string()],
        )
        .await?;
    }
    tx.commit().await?;

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

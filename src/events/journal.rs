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
use crate::store::events::EventRecord;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::{Value, json};
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

#[derive(Debug)]
pub enum OpOutcome {
    Applied {
        channel: ChannelRow,
        from: Status,
        events: Vec<EventRecord>,
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
    pub fn spawn(pool: Pool, metrics: Arc<Metrics>) -> Journal {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(pool, rx, metrics));
        Journal { tx }
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
        match commit_batch(&pool, &ops).await {
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
                tracing::error!(error = %e, ops = batch.len(), "journal batch failed; nothing of it was committed");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(ApiError::unavailable("database unavailable")));
                }
            }
        }
    }
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

async fn commit_batch(pool: &Pool, ops: &[&Op]) -> anyhow::Result<Vec<OpOutcome>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK])
        .await?;
    let select_sql =
        format!("SELECT {COLUMNS}, last_sequence FROM channels WHERE id = $1 FOR UPDATE");
    let select = tx.prepare_cached(&select_sql).await?;
    let fence_check = tx
        .prepare_cached(
            "SELECT 1 FROM session_leases WHERE channel_id = $1 AND node_id = $2 AND token = $3 \
             AND expires_at > now() FOR SHARE",
        )
        .await?;
    let update_sql = format!(
        "UPDATE channels SET
            status = coalesce($2, status),
            status_reason = CASE WHEN $2::text IS NULL THEN status_reason ELSE $3 END,
            status_since = CASE WHEN $2::text IS NULL OR $2 = status THEN status_since ELSE now() END,
            phone_number = coalesce($4, phone_number),
            qr_code = CASE WHEN $5 THEN $6 ELSE qr_code END,
            qr_expires_at = CASE WHEN $5 THEN $7 ELSE qr_expires_at END,
            pair_code = CASE WHEN $8 THEN $9 ELSE pair_code END,
            pair_code_expires_at = CASE WHEN $8 THEN $10 ELSE pair_code_expires_at END,
            last_connected_at = CASE WHEN $2 = 'connected' THEN now() ELSE last_connected_at END,
            deleted_at = CASE WHEN $11 THEN now() ELSE deleted_at END,
            last_sequence = last_sequence + $12,
            updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    );
    let update = tx.prepare_cached(&update_sql).await?;

    let mut outcomes = Vec::with_capacity(ops.len());
    let mut pending: Vec<PendingEvent> = Vec::new();
    // (outcome index, range in `pending`)
    let mut spans: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    for op in ops {
        let Some(row) = tx.query_opt(&select, &[&op.channel_id]).await? else {
            outcomes.push(OpOutcome::NotFound);
            continue;
        };
        let current = ChannelRow::from_row(&row);
        let last_sequence: i64 = row.get("last_sequence");
        if let Some(f) = &op.fence
            && tx
                .query_opt(&fence_check, &[&op.channel_id, &f.node_id, &f.token])
                .await?
                .is_none()
        {
            outcomes.push(OpOutcome::Fenced);
            continue;
        }
        if current.deleted_at.is_some() && !op.delete {
            // A deleted channel takes no more changes; a session still running for it is stopped by the caller.
            outcomes.push(OpOutcome::Fenced);
            continue;
        }
        if let Some(expect) = &op.expect
            && !expect.contains(&current.status)
        {
            outcomes.push(OpOutcome::Unexpected(current));
            continue;
        }

        let from = current.status;
        let mut names: Vec<(String, Value)> = Vec::new();
        let mut to_status: Option<Status> = None;
        let mut reason: Option<Reason> = None;
        if let Some((to, why)) = op.transition {
            let reason_changed = current.status_reason.as_deref() != why.map(|r| r.as_str());
            if to != from || reason_changed {
                to_status = Some(to);
                reason = why;
            }
            if to != from {
                let mut data = json!({"from": from.as_str(), "to": to.as_str(), "reason": why.map(|r| r.as_str())});
                if let (Some(Value::Object(extra)), Value::Object(d)) =
                    (&op.transition_data, &mut data)
                {
                    d.extend(extra.clone());
                }
                names.push(("channel.status_changed".into(), data));
                if to == Status::Connected {
                    let phone = op.phone_number.clone().or(current.phone_number.clone());
                    names.push(("channel.connected".into(), json!({"phone_number": phone})));
                }
                if from == Status::Connected {
                    names.push((
                        "channel.disconnected".into(),
                        json!({"reason": why.map(|r| r.as_str()), "to": to.as_str()}),
                    ));
                }
            }
        }
        names.extend(op.events.iter().map(|(n, d)| (n.to_string(), d.clone())));

        // Leaving `qr` clears the QR and pair code.
        let leaving_qr = from == Status::Qr && to_status.is_some_and(|s| s != Status::Qr);
        let (set_qr, qr_code, qr_exp) = match &op.qr {
            Some(Some((c, e))) => (true, Some(c.clone()), Some(*e)),
            Some(None) => (true, None, None),
            None if leaving_qr => (true, None, None),
            None => (false, None, None),
        };
        let (set_pc, pc, pc_exp) = match &op.pair_code {
            Some(Some((c, e))) => (true, Some(c.clone()), Some(*e)),
            Some(None) => (true, None, None),
            None if leaving_qr => (true, None, None),
            None => (false, None, None),
        };
        let n = names.len() as i64;
        let to_s = to_status.map(|s| s.as_str());
        let reason_s = reason.map(|r| r.as_str());
        let updated = tx
            .query_one(
                &update,
                &[
                    &op.channel_id,
                    &to_s,
                    &reason_s,
                    &op.phone_number,
                    &set_qr,
                    &qr_code,
                    &qr_exp,
                    &set_pc,
                    &pc,
                    &pc_exp,
                    &op.delete,
                    &n,
                ],
            )
            .await?;
        let channel = ChannelRow::from_row(&updated);

        match &op.state {
            StateWrite::Keep => {}
            StateWrite::Put { kid, sealed } => {
                tx.execute(
                    "INSERT INTO session_state (channel_id, kid, sealed) VALUES ($1, $2, $3)
                     ON CONFLICT (channel_id) DO UPDATE SET kid = $2, sealed = $3, updated_at = now()",
                    &[&op.channel_id, kid, sealed],
                )
                .await?;
            }
            StateWrite::Wipe => {
                tx.execute(
                    "DELETE FROM session_state WHERE channel_id = $1",
                    &[&op.channel_id],
                )
                .await?;
            }
        }
        match (&op.release, &op.fence) {
            (Release::Ours, Some(f)) => {
                tx.execute(
                    "DELETE FROM session_leases WHERE channel_id = $1 AND node_id = $2 AND token = $3",
                    &[&op.channel_id, &f.node_id, &f.token],
                )
                .await?;
            }
            (Release::Any, _) => {
                tx.execute(
                    "DELETE FROM session_leases WHERE channel_id = $1",
                    &[&op.channel_id],
                )
                .await?;
            }
            _ => {}
        }
        if let Some(a) = &op.audit {
            tx.execute(
                "INSERT INTO audit_events (audit_id, customer_id, mode, actor, action, resource, channel_id, data, request_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8)",
                &[
                    &crate::store::new_id("aud"),
                    &channel.customer_id,
                    &channel.mode.as_str(),
                    &a.actor,
                    &a.action,
                    &op.channel_id,
                    &a.data,
                    &a.request_id,
                ],
            )
            .await?;
        }

        let start = pending.len();
        let at = Utc::now();
        for (i, (name, data)) in names.into_iter().enumerate() {
            pending.push(PendingEvent {
                event_id: crate::store::new_id("evt"),
                customer_id: channel.customer_id.clone(),
                mode: channel.mode,
                channel_id: channel.id.clone(),
                sequence: last_sequence + 1 + i as i64,
                name,
                at,
                data,
            });
        }
        spans.push((outcomes.len(), start..pending.len()));
        outcomes.push(OpOutcome::Applied {
            channel,
            from,
            events: Vec::new(),
        });
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
                "INSERT INTO events (event_id, customer_id, mode, channel_id, sequence, event, occurred_at, data)
                 SELECT e, c, m, ch, s, n, a, d FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                        $5::int8[], $6::text[], $7::timestamptz[], $8::jsonb[]) WITH ORDINALITY AS t(e, c, m, ch, s, n, a, d, ord)
                 ORDER BY ord RETURNING id, event_id",
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

    let mut pending: Vec<Option<PendingEvent>> = pending.into_iter().map(Some).collect();
    for (idx, span) in spans {
        if let OpOutcome::Applied { events, .. } = &mut outcomes[idx] {
            for i in span {
                if let Some(e) = pending[i].take() {
                    events.push(EventRecord::new(
                        ids[i],
                        e.event_id,
                        e.customer_id,
                        e.mode,
                        e.channel_id,
                        e.sequence,
                        e.name,
                        e.at,
                        e.data,
                    ));
                }
            }
        }
    }
    Ok(outcomes)
}

//! The dispatcher: one per node. Claims due deliveries (`FOR UPDATE SKIP LOCKED`, under a lease that a dead
//! node lets expire), sends them with bounded concurrency overall and per host, and hands each outcome to a
//! recorder that writes attempts and next states in batches (one transaction per batch: the attempt row and
//! the delivery's new state are committed together).

use super::Settings;
use super::deliveries::{NOTIFY_CHANNEL, fanout_sql};
use super::endpoints::active_keys;
use super::signing;
use crate::crypto::MasterKeys;
use crate::metrics::Metrics;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Most rows one claim takes.
const CLAIM_MAX: usize = 500;
/// The response body kept per attempt.
pub const EXCERPT_MAX: usize = 4 * 1024;
/// The longest wait a `Retry-After` may impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);
/// How long a claim outlives the attempt's timeout (time to record the outcome).
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// The longest a busy dispatcher waits for a batch's worth of free slots before claiming fewer.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// Outcomes written per recorder transaction.
const RECORD_BATCH: usize = 512;
/// A host may have this many times its concurrency cap held by this node (sending or waiting to); then it is
/// saturated: its endpoints' rows are left in the queue (for other nodes, or for later) until half of that
/// has drained. So a slow receiver holds at most this share of the node's capacity.
const HOST_BACKLOG: usize = 4;

struct Claimed {
    id: i64,
    endpoint_id: String,
    round_attempts: i32,
    manual: bool,
    url: String,
    schedule: Option<Vec<i32>>,
    secret: (String, Vec<u8>),
    old_secret: Option<(String, Vec<u8>)>,
    event_id: String,
    event: String,
    channel_id: String,
    sequence: i64,
    occurred_at: DateTime<Utc>,
    data: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Success,
    Failure,
    /// 410: the receiver asks us to stop; the endpoint is disabled.
    Gone,
}

struct Outcome {
    delivery_id: i64,
    token: Arc<str>,
    endpoint_id: String,
    kind: Kind,
    attempted_at: DateTime<Utc>,
    duration_ms: i32,
    http_status: Option<i32>,
    error: Option<String>,
    excerpt: Option<String>,
    manual: bool,
    status: &'static str,
    round_attempts: i32,
    next_attempt_at: Option<DateTime<Utc>>,
    occurred_at: DateTime<Utc>,
}

struct Host {
    /// Requests in progress (the per-host concurrency cap).
    sem: Arc<Semaphore>,
    /// Rows this node holds for the host: sending or waiting for `sem`.
    held: AtomicUsize,
    saturated: std::sync::atomic::AtomicBool,
    endpoints: Mutex<HashSet<String>>,
}

/// What the claims must respect: see [`Dispatcher::saturation`].
#[derive(Default)]
struct Saturation {
    excluded: Vec<String>,
    room: usize,
    open: usize,
    room_ids: Vec<String>,
    rooms: Vec<i64>,
}

pub struct Dispatcher {
    pool: Pool,
    settings: Arc<Settings>,
    keys: Arc<MasterKeys>,
    metrics: Arc<Metrics>,
    node_id: String,
    wake: Arc<Notify>,
    client: reqwest::Client,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    /// Notified when a saturated host has drained to half: its rows may be claimed again.
    freed: Notify,
}

/// The claim commits without waiting for its WAL flush (`synchronous_commit` off for this one statement's
/// transaction): a claim lost to a database crash only means the row is not leased, so it is claimed and sent
/// again (at-least-once, as the contract says). Under I/O load that flush took ~10 ms of every delivery's latency.
/// Attempts and outcomes (the recorder) stay synchronous.
///
/// `due` is the choice of rows; the rest (lease them, read what sending needs) is shared by both claims.
macro_rules! claim_sql {
    ($due:literal) => {
        concat!(
            "WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true) AS off), ",
            $due,
            ", claimed AS (
        UPDATE webhook_deliveries d SET locked_until = now() + $2::int8 * interval '1 millisecond', locked_by = $3
        FROM due WHERE d.id = due.id
        RETURNING d.id, d.endpoint_id, d.event_row, d.round_attempts, d.manual)
    SELECT c.id, c.endpoint_id, c.round_attempts, c.manual, w.url, w.retry_schedule, w.secret_kid, w.secret_sealed,
        CASE WHEN w.old_secret_expires_at > now() THEN w.old_secret_kid END,
        CASE WHEN w.old_secret_expires_at > now() THEN w.old_secret_sealed END,
        e.event_id, e.event, e.channel_id, e.sequence, e.occurred_at, e.data
    FROM claimed c JOIN webhook_endpoints w ON w.id = c.endpoint_id JOIN events e ON e.id = c.event_row
        CROSS JOIN lazy"
        )
    };
}

/// No host is saturated: the oldest due rows along the due index (O(batch + rows in flight)), at most what each
/// endpoint's host has room for ($4/$5: the endpoints this node knows and their host's room; others $6). Rows of
/// one journal batch share their `next_attempt_at`, and a plain `ORDER BY … LIMIT` took them in heap order, often a
/// run of one endpoint's rows: one host got the whole claim, most of it was handed back (deferred 200 ms) and the
/// host counted as saturated. So a window of 4× the batch is ranked per endpoint and taken round by round.
const CLAIM_SQL: &str = claim_sql!(
    "win AS (
        SELECT d.id, d.endpoint_id, d.next_attempt_at
        FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.enabled
        WHERE d.status IN ('pending', 'retrying') AND d.next_attempt_at <= now()
          AND (d.locked_until IS NULL OR d.locked_until < now())
        ORDER BY d.next_attempt_at LIMIT $1::int8 * 4),
    ranked AS (
        SELECT id, endpoint_id, next_attempt_at,
            row_number() OVER (PARTITION BY endpoint_id ORDER BY next_attempt_at, id) AS round
        FROM win),
    pick AS (
        SELECT k.id FROM ranked k LEFT JOIN unnest($4::text[], $5::int8[]) AS r(endpoint_id, room)
            ON r.endpoint_id = k.endpoint_id
        WHERE k.round <= coalesce(r.room, $6) ORDER BY k.round, k.next_attempt_at LIMIT $1),
    due AS (
        SELECT d.id FROM webhook_deliveries d
        WHERE d.id IN (SELECT id FROM pick) AND d.status IN ('pending', 'retrying')
          AND (d.locked_until IS NULL OR d.locked_until < now())
        FOR UPDATE OF d SKIP LOCKED)"
);

/// Some hosts are saturated ($7: their endpoints). Walking the due index past their rows made every claim
/// O(their backlog): a saturated host is one that falls behind, so its rows gather at the head of the index.
/// Instead each other enabled endpoint gives its oldest due rows (at most its host's room, as above) along
/// `webhook_deliveries_endpoint_due` (O(endpoints + batch)); they are taken round by round (every endpoint's
/// oldest first) so no endpoint starves the others, then locked and re-checked.
/// The candidates use `status NOT IN ('success', 'failed')`, the predicate of that index, and not `IN
/// ('pending', 'retrying')`: with the latter the planner prefers the due index, whose rows it believes spread
/// evenly over endpoints, and scans the very backlog this query exists to avoid. The lock re-checks the status.
const CLAIM_FAIR_SQL: &str = claim_sql!(
    "cand AS (
        SELECT c.id, c.next_attempt_at,
            row_number() OVER (PARTITION BY c.endpoint_id ORDER BY c.next_attempt_at, c.id) AS round
        FROM webhook_endpoints w
            LEFT JOIN unnest($4::text[], $5::int8[]) AS r(endpoint_id, room) ON r.endpoint_id = w.id
            CROSS JOIN LATERAL (
                SELECT d.id, d.endpoint_id, d.next_attempt_at FROM webhook_deliveries d
                WHERE d.endpoint_id = w.id AND d.status NOT IN ('success', 'failed') AND d.next_attempt_at <= now()
                  AND (d.locked_until IS NULL OR d.locked_until < now())
                ORDER BY d.next_attempt_at LIMIT coalesce(r.room, $6)) c
        WHERE w.enabled AND NOT (w.id = ANY($7::text[]))),
    pick AS (SELECT id FROM cand ORDER BY round, next_attempt_at LIMIT $1),
    due AS (
        SELECT d.id FROM webhook_deliveries d
        WHERE d.id IN (SELECT id FROM pick) AND d.status IN ('pending', 'retrying')
          AND (d.locked_until IS NULL OR d.locked_until < now())
        FOR UPDATE OF d SKIP LOCKED)"
);

impl Dispatcher {
    pub fn new(
        pool: Pool,
        settings: Arc<Settings>,
        keys: Arc<MasterKeys>,
        metrics: Arc<Metrics>,
        node_id: String,
        wake: Arc<Notify>,
    ) -> anyhow::Result<Arc<Dispatcher>> {
        let client = reqwest::Client::builder()
            // Only addresses the guard accepted are ever connected to.
            .dns_resolver(Arc::new(super::ssrf::GuardedResolver(Arc::new(
                settings.guard.clone(),
            ))))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(settings.per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("whatisup/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Arc::new(Dispatcher {
            pool,
            settings,
            keys,
            metrics,
            node_id,
            wake,
            client,
            hosts: Mutex::new(HashMap::new()),
            freed: Notify::new(),
        }))
    }

    /// Claims and sends until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let (out_tx, out_rx) = mpsc::channel::<Outcome>(RECORD_BATCH * 8);
        let recorder = tokio::spawn(self.clone().record_loop(out_rx));
        tokio::spawn(self.clone().retention_loop(stop.clone()));
        let in_flight = Arc::new(Semaphore::new(self.settings.max_in_flight));
        // New work may have come (a wake, the poll) since the last claim.
        let mut news = true;
        loop {
            if stop.is_cancelled() {
                break;
            }
            let mut free = in_flight.available_permits();
            if !worth_claiming(free, self.settings.max_in_flight) {
                // Busy: claiming the one or two rows whose slots just freed up costs one claim query per
                // delivery (what made 10 receivers slower than 1). Wait for a batch's worth of slots, or at most
                // BATCH_WAIT (slow receivers holding most slots must not hold back the others for long).
                let batch = min_batch(self.settings.max_in_flight) as u32;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    p = in_flight.clone().acquire_many_owned(batch) => drop(p),
                    _ = tokio::time::sleep(BATCH_WAIT) => {}
                }
                free = in_flight.available_permits();
                if free == 0 {
                    continue;
                }
            }
            let sat = self.saturation();
            let (room, open) = (sat.room, sat.open);
            // Every known host is saturated: a claim can only find rows of endpoints this node has not seen (a
            // probe of every enabled endpoint, for nothing as a rule). Such rows come with a wake (new work) or
            // the poll.
            let claim = open > 0 || sat.excluded.is_empty() || news;
            news = false;
            let n = free.min(CLAIM_MAX).min(room.max(1));
            let token: Arc<str> = format!("{}/{}", self.node_id, ulid::Ulid::new()).into();
            let claimed = if claim {
                self.claim(n, &token, &sat).await
            } else {
                Ok(Vec::new())
            };
            match claimed {
                Ok(rows) => {
                    let got = rows.len();
                    let mut deferred = Vec::new();
                    for row in rows {
                        let Some(host) = self.host_slot(&row.url, &row.endpoint_id) else {
                            deferred.push(row.id);
                            continue;
                        };
                        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                            host.held.fetch_sub(1, Ordering::AcqRel);
                            deferred.push(row.id);
                            continue;
                        };
                        let me = self.clone();
                        let out = out_tx.clone();
                        let token = token.clone();
                        tokio::spawn(async move {
                            let outcome = {
                                let _host = host.sem.clone().acquire_owned().await;
                                me.attempt(row, token).await
                            };
                            me.release(&host);
                            drop(permit);
                            // The recorder is gone only at shutdown: the claim then expires and the row is due again.
                            let _ = out.send(outcome).await;
                        });
                    }
                    if !deferred.is_empty() {
                        self.defer(&deferred, &token).await;
                    } else if got > 0 {
                        // Fewer than asked may still leave due rows: the claim takes at most each host's room
                        // from a window of the queue. Only an empty claim means nothing is due for now.
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: claiming due deliveries");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => news = true,
                _ = self.freed.notified() => {}
                _ = tokio::time::sleep(self.settings.poll) => news = true,
            }
        }
        drop(out_tx);
        let _ = tokio::time::timeout(Duration::from_secs(2), recorder).await;
    }

    fn cap(&self) -> usize {
        self.settings.per_host * HOST_BACKLOG
    }

    /// The endpoints of saturated hosts (not to be claimed now), how many rows the unsaturated hosts this node
    /// knows can still take (what a claim should not exceed, so that little is handed back), each such host's
    /// room by endpoint, and how many known hosts are open.
    fn saturation(&self) -> Saturation {
        let cap = self.cap();
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let mut sat = Saturation::default();
        for h in hosts.values() {
            let endpoints = h.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            if h.saturated.load(Ordering::Acquire) {
                sat.excluded.extend(endpoints.iter().cloned());
            } else {
                sat.open += 1;
                let room = cap.saturating_sub(h.held.load(Ordering::Acquire));
                sat.room += room;
                // An idle host's endpoints get the claim's default (the whole cap): only hosts holding rows are
                // named, so the arrays stay as small as the work in flight.
                if room < cap {
                    for ep in endpoints.iter() {
                        sat.room_ids.push(ep.clone());
                        sat.rooms.push(room as i64);
                    }
                }
            }
        }
        // No known host with room: a claim may still find endpoints this node has not seen yet.
        if sat.open == 0 {
            sat.room = cap;
        }
        sat
    }

    /// The host's slot, counted as held; None when the host is saturated.
    fn host_slot(&self, url: &str, endpoint_id: &str) -> Option<Arc<Host>> {
        let key = reqwest::Url::parse(url)
            .ok()
            .map(|u| {
                format!(
                    "{}:{}",
                    u.host_str().unwrap_or(""),
                    u.port_or_known_default().unwrap_or(0)
                )
            })
            .unwrap_or_default();
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if hosts.len() > 10_000 {
            hosts.retain(|_, h| h.held.load(Ordering::Acquire) > 0);
        }
        let per_host = self.settings.per_host;
        let h = hosts
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Host {
                    sem: Arc::new(Semaphore::new(per_host)),
                    held: AtomicUsize::new(0),
                    saturated: std::sync::atomic::AtomicBool::new(false),
                    endpoints: Mutex::new(HashSet::new()),
                })
            })
            .clone();
        {
            let mut eps = h.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            if eps.len() < 1_000 && !eps.contains(endpoint_id) {
                eps.insert(endpoint_id.to_string());
            }
        }
        let held = h.held.fetch_add(1, Ordering::AcqRel) + 1;
        if held > self.cap() {
            h.held.fetch_sub(1, Ordering::AcqRel);
            h.saturated.store(true, Ordering::Release);
            return None;
        }
        if held == self.cap() {
            h.saturated.store(true, Ordering::Release);
        }
        Some(h)
    }

    /// A held row of `host` is done; a saturated host that drained to half is open again.
    fn release(&self, host: &Host) {
        let held = host.held.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        if held <= self.cap() / 2 && host.saturated.swap(false, Ordering::AcqRel) {
            self.freed.notify_one();
        }
    }

    async fn claim(&self, n: usize, token: &str, sat: &Saturation) -> anyhow::Result<Vec<Claimed>> {
        let client = self.pool.get().await?;
        // Outlives the attempt and its recording; a claim of a node that died is due again after it.
        let lease_ms = (self.settings.timeout + LEASE_MARGIN).as_millis() as i64;
        // An endpoint of a host this node has not seen yet gives at most what a host may hold.
        let cap = self.cap() as i64;
        let (n, ids, rooms) = (n as i64, &sat.room_ids, &sat.rooms);
        let rows = if sat.excluded.is_empty() {
            let stmt = client.prepare_cached(CLAIM_SQL).await?;
            client
                .query(&stmt, &[&n, &lease_ms, &token, ids, rooms, &cap])
                .await?
        } else {
            let stmt = client.prepare_cached(CLAIM_FAIR_SQL).await?;
            client
                .query(
                    &stmt,
                    &[&n, &lease_ms, &token, ids, rooms, &cap, &sat.excluded],
                )
                .await?
        };
        Ok(rows
            .iter()
            .map(|r| {
                let old: (Option<String>, Option<Vec<u8>>) = (r.get(8), r.get(9));
                Claimed {
                    id: r.get(0),
                    endpoint_id: r.get(1),
                    round_attempts: r.get(2),
                    manual: r.get(3),
                    url: r.get(4),
                    schedule: r.get(5),
                    secret: (r.get(6), r.get(7)),
                    old_secret: match old {
                        (Some(k), Some(s)) => Some((k, s)),
                        _ => None,
                    },
                    event_id: r.get(10),
                    event: r.get(11),
                    channel_id: r.get(12),
                    sequence: r.get(13),
                    occurred_at: r.get(14),
                    data: r.get(15),
                }
            })
            .collect())
    }

    /// Rows of a saturated host go back to the queue shortly, unattempted.
    async fn defer(&self, ids: &[i64], token: &str) {
        let result = async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true) AS off) \
                     UPDATE webhook_deliveries SET locked_until = now() + interval '200 milliseconds', locked_by = NULL \
                     FROM lazy WHERE id = ANY($1) AND locked_by = $2 AND lazy.off IS NOT NULL",
                    &[&ids, &token],
                )
                .await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            // The claims expire by themselves.
            tracing::warn!(error = %e, "webhooks: returning deferred deliveries");
        }
    }

    async fn attempt(&self, c: Claimed, token: Arc<str>) -> Outcome {
        let attempted_at = Utc::now();
        let t0 = Instant::now();
        let body = crate::store::events::envelope(
            &c.event,
            &c.event_id,
            &c.channel_id,
            c.sequence,
            c.occurred_at,
            &c.data,
        )
        .to_string();
        let sent = self.send(&c, body).await;
        let elapsed = t0.elapsed();
        let (kind, http_status, error, excerpt, retry_after) = match sent {
            Ok((status, retry_after, excerpt)) => {
                let kind = if (200..300).contains(&status) {
                    Kind::Success
                } else if status == 410 {
                    Kind::Gone
                } else {
                    Kind::Failure
                };
                let error = match kind {
                    Kind::Success => None,
                    Kind::Gone => Some("410 Gone: the endpoint is disabled".to_string()),
                    Kind::Failure if (300..400).contains(&status) => {
                        Some(format!("HTTP {status}: redirects are not followed"))
                    }
                    Kind::Failure => Some(format!("HTTP {status}")),
                };
                (kind, Some(status as i32), error, Some(excerpt), retry_after)
            }
            Err(e) => (Kind::Failure, None, Some(e), None, None),
        };
        let schedule: Vec<Duration> = match &c.schedule {
            Some(ms) => ms
                .iter()
                .map(|m| Duration::from_millis((*m).max(1) as u64))
                .collect(),
            None => self.settings.schedule.clone(),
        };
        let k = c.round_attempts.max(0) as usize;
        let (status, next, round) = match kind {
            Kind::Success => ("success", None, c.round_attempts + 1),
            Kind::Gone => ("failed", None, c.round_attempts + 1),
            Kind::Failure if c.manual => ("failed", None, c.round_attempts),
            Kind::Failure if k < schedule.len() => {
                let mut delay = super::jitter(schedule[k]);
                if let Some(ra) = retry_after {
                    delay = delay.max(ra.min(MAX_RETRY_AFTER));
                }
                let next = attempted_at
                    + chrono::TimeDelta::from_std(delay).unwrap_or(chrono::TimeDelta::hours(1));
                ("retrying", Some(next), c.round_attempts + 1)
            }
            Kind::Failure => ("failed", None, c.round_attempts + 1),
        };
        let outcome_label = match kind {
            Kind::Success => "success",
            Kind::Gone => "gone",
            Kind::Failure if http_status.is_some() => "http_error",
            Kind::Failure => "network_error",
        };
        self.metrics
            .webhook_attempts
            .with_label_values(&[outcome_label])
            .inc();
        self.metrics
            .webhook_attempt_seconds
            .observe(elapsed.as_secs_f64());
        Outcome {
            delivery_id: c.id,
            token,
            endpoint_id: c.endpoint_id,
            kind,
            attempted_at,
            duration_ms: elapsed.as_millis().min(i32::MAX as u128) as i32,
            http_status,
            error,
            excerpt,
            manual: c.manual,
            status,
            round_attempts: round,
            next_attempt_at: next,
            occurred_at: c.occurred_at,
        }
    }

    /// One POST. Ok: (status, Retry-After, response excerpt); Err: why no answer came.
    async fn send(
        &self,
        c: &Claimed,
        body: String,
    ) -> Result<(u16, Option<Duration>, String), String> {
        // A literal address never reaches the resolver: check it here. Names are checked as they resolve.
        self.settings
            .guard
            .check_url(&c.url)
            .map_err(|e| format!("refused: {e}"))?;
        let keys = active_keys(
            &self.keys,
            &c.endpoint_id,
            (&c.secret.0, &c.secret.1),
            c.old_secret
                .as_ref()
                .map(|(k, s)| (k.as_str(), s.as_slice())),
        )
        .map_err(|e| format!("signing secret unavailable: {e}"))?;
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let ts = Utc::now().timestamp();
        let sig = signing::sign(&refs, &c.event_id, ts, body.as_bytes());
        let resp = self
            .client
            .post(&c.url)
            .header("content-type", "application/json")
            .header("webhook-id", &c.event_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig.webhook_signature)
            .header("x-whatisup-signature", sig.whatisup_signature)
            .header("x-whatisup-event", &c.event)
            .header("x-whatisup-event-id", &c.event_id)
            .body(body)
            .send()
            .await
            .map_err(|e| describe(&e, self.settings.timeout))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut resp = resp;
        let mut excerpt: Vec<u8> = Vec::new();
        // Read at most the excerpt; a longer body is cut (that connection is then not reused).
        while excerpt.len() < EXCERPT_MAX {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let take = chunk.len().min(EXCERPT_MAX - excerpt.len());
                    excerpt.extend_from_slice(&chunk[..take]);
                }
                _ => break,
            }
        }
        Ok((status, retry_after, excerpt_text(&excerpt)))
    }

    async fn record_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Outcome>) {
        let mut batch: Vec<Outcome> = Vec::with_capacity(RECORD_BATCH);
        loop {
            if rx.recv_many(&mut batch, RECORD_BATCH).await == 0 {
                return;
            }
            let mut result = self.record(&batch).await;
            for _ in 0..3 {
                if result.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                result = self.record(&batch).await;
            }
            match result {
                Ok(disable) => {
                    let now = Utc::now();
                    for o in batch.iter().filter(|o| o.kind == Kind::Success) {
                        let lat = (now - o.occurred_at).to_std().unwrap_or_default();
                        self.metrics
                            .webhook_delivery_latency
                            .observe(lat.as_secs_f64());
                    }
                    for (endpoint, reason) in disable {
                        if let Err(e) = self.disable(&endpoint, reason).await {
                            tracing::warn!(error = %e, endpoint_id = %endpoint, "webhooks: disabling an endpoint");
                        }
                    }
                }
                Err(e) => {
                    // The claims expire and the deliveries are attempted again: at least once, never lost.
                    tracing::error!(error = %e, n = batch.len(), "webhooks: recording attempts failed");
                }
            }
            batch.clear();
        }
    }

    /// Writes a batch of outcomes; returns the endpoints to disable.
    async fn record(&self, batch: &[Outcome]) -> anyhow::Result<Vec<(String, &'static str)>> {
        let mut sorted: Vec<&Outcome> = batch.iter().collect();
        // One lock order for every writer of many delivery rows.
        sorted.sort_by_key(|o| o.delivery_id);
        let ids: Vec<i64> = sorted.iter().map(|o| o.delivery_id).collect();
        let tokens: Vec<&str> = sorted.iter().map(|o| &*o.token).collect();
        let at: Vec<DateTime<Utc>> = sorted.iter().map(|o| o.attempted_at).collect();
        let dur: Vec<i32> = sorted.iter().map(|o| o.duration_ms).collect();
        let http: Vec<Option<i32>> = sorted.iter().map(|o| o.http_status).collect();
        let err: Vec<Option<&str>> = sorted.iter().map(|o| o.error.as_deref()).collect();
        let exc: Vec<Option<&str>> = sorted.iter().map(|o| o.excerpt.as_deref()).collect();
        let trig: Vec<&str> = sorted
            .iter()
            .map(|o| if o.manual { "manual" } else { "scheduled" })
            .collect();
        let status: Vec<&str> = sorted.iter().map(|o| o.status).collect();
        let round: Vec<i32> = sorted.iter().map(|o| o.round_attempts).collect();
        let next: Vec<Option<DateTime<Utc>>> = sorted.iter().map(|o| o.next_attempt_at).collect();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO webhook_attempts (delivery_id, attempted_at, duration_ms, http_status, error, \
             response_excerpt, trigger_type, node_id, next_attempt_at)
             SELECT u.id, u.at, u.dur, u.http, u.err, u.exc, u.trig, $9, u.next
             FROM unnest($1::int8[], $2::timestamptz[], $3::int4[], $4::int4[], $5::text[], $6::text[],
                         $7::text[], $8::timestamptz[]) AS u(id, at, dur, http, err, exc, trig, next)
             WHERE EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.id = u.id)",
            &[&ids, &at, &dur, &http, &err, &exc, &trig, &next, &self.node_id],
        )
        .await?;
        // Only while the claim is still ours: a claim that expired (and was taken by another node) or was reset
        // by a redelivery is not overwritten.
        tx.execute(
            "UPDATE webhook_deliveries d SET status = u.status, attempts = d.attempts + 1,
                 round_attempts = u.round, manual = false, next_attempt_at = coalesce(u.next, d.next_attempt_at),
                 last_http_status = u.http, last_error = u.err, locked_until = NULL, locked_by = NULL,
                 updated_at = now()
             FROM unnest($1::int8[], $2::text[], $3::text[], $4::int4[], $5::timestamptz[], $6::int4[], $7::text[])
                  AS u(id, token, status, round, next, http, err)
             WHERE d.id = u.id AND d.locked_by = u.token",
            &[&ids, &tokens, &status, &round, &next, &http, &err],
        )
        .await?;
        let succeeded: HashSet<&str> = batch
            .iter()
            .filter(|o| o.kind == Kind::Success)
            .map(|o| o.endpoint_id.as_str())
            .collect();
        let mut failing: Vec<&str> = batch
            .iter()
            .filter(|o| o.kind == Kind::Failure && !succeeded.contains(o.endpoint_id.as_str()))
            .map(|o| o.endpoint_id.as_str())
            .collect();
        failing.sort_unstable();
        failing.dedup();
        let mut disable: Vec<(String, &'static str)> = Vec::new();
        if !failing.is_empty() {
            let disable_ms = self.settings.disable_after.as_millis() as i64;
            let rows = tx
                .query(
                    "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, now())
                     WHERE id = ANY($1) AND enabled
                     RETURNING id, failing_since < now() - $2::int8 * interval '1 millisecond'",
                    &[&failing, &disable_ms],
                )
                .await?;
            disable.extend(
                rows.iter()
                    .filter(|r| r.get::<_, bool>(1))
                    .map(|r| (r.get::<_, String>(0), "failing")),
            );
        }
        if !succeeded.is_empty() {
            let ok: Vec<&str> = succeeded.iter().copied().collect();
            tx.execute(
                "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = ANY($1) AND failing_since IS NOT NULL",
                &[&ok],
            )
            .await?;
        }
        tx.commit().await?;
        let mut gone: Vec<String> = batch
            .iter()
            .filter(|o| o.kind == Kind::Gone)
            .map(|o| o.endpoint_id.clone())
            .collect();
        gone.sort_unstable();
        gone.dedup();
        disable.extend(gone.into_iter().map(|e| (e, "gone")));
        Ok(disable)
    }

    /// Disables an endpoint, fails its queued deliveries and emits `webhook_endpoint.disabled` (itself delivered
    /// to the customer's other endpoints and streams). The event's channel is the endpoint's channel filter, or
    /// the endpoint id for an account-wide endpoint (events always belong to a stream with its own sequence).
    async fn disable(&self, endpoint_id: &str, reason: &'static str) -> anyhow::Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Event rows are inserted under the journal's lock, so cursors stay in commit order.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&crate::events::journal::EVENTS_LOCK],
        )
        .await?;
        let Some(row) = tx
            .query_opt(
                "UPDATE webhook_endpoints SET enabled = false, disabled_reason = $2, updated_at = now()
                 WHERE id = $1 AND enabled RETURNING customer_id, mode, channel_id, url, failing_since",
                &[&endpoint_id, &reason],
            )
            .await?
        else {
            return Ok(());
        };
        let (customer, mode, channel, url): (String, String, Option<String>, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let failing_since: Option<DateTime<Utc>> = row.get(4);
        tx.execute(
            "UPDATE webhook_deliveries SET status = 'failed', last_error = 'endpoint disabled', locked_until = NULL,
                 locked_by = NULL, updated_at = now()
             WHERE endpoint_id = $1 AND status IN ('pending', 'retrying')",
            &[&endpoint_id],
        )
        .await?;
        let stream = channel.clone().unwrap_or_else(|| endpoint_id.to_string());
        let seq: i64 = tx
            .query_one(
                "SELECT greatest(coalesce((SELECT max(sequence) FROM events WHERE channel_id = $1), 0),
                                 coalesce((SELECT last_sequence FROM channels WHERE id = $1), 0)) + 1",
                &[&stream],
            )
            .await?
            .get(0);
        let data = serde_json::json!({
            "endpoint_id": endpoint_id,
            "url": url,
            "reason": reason,
            "failing_since": failing_since.map(crate::wkt::rfc3339),
        });
        let event_id = crate::store::new_id("evt");
        let sql = format!(
            "WITH ins AS (
                INSERT INTO events (event_id, customer_id, mode, channel_id, sequence, event, occurred_at, data)
                VALUES ($1, $2, $3, $4, $5, 'webhook_endpoint.disabled', now(), $6)
                RETURNING id, event_id, event, channel_id, customer_id, mode),
             dl AS ({} RETURNING 1)
             SELECT (SELECT id FROM ins), (SELECT count(*) FROM dl)",
            fanout_sql("ins")
        );
        let r = tx
            .query_one(&sql, &[&event_id, &customer, &mode, &stream, &seq, &data])
            .await?;
        let (id, deliveries): (i64, i64) = (r.get(0), r.get(1));
        tx.execute(
            "SELECT pg_notify('whatisup_events', $1)",
            &[&id.to_string()],
        )
        .await?;
        if deliveries > 0 {
            tx.execute("SELECT pg_notify($1, '')", &[&NOTIFY_CHANNEL])
                .await?;
        }
        tx.commit().await?;
        tracing::warn!(endpoint_id, reason, "webhooks: endpoint disabled");
        Ok(())
    }

    /// Deletes finished deliveries (and their attempts) older than the retention, in bounded batches.
    async fn retention_loop(self: Arc<Self>, stop: CancellationToken) {
        if self.settings.retention_days == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.clean(self.settings.retention_days).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    deleted = n,
                    "webhooks: retention removed finished deliveries"
                ),
                Err(e) => tracing::warn!(error = %e, "webhooks: retention cleaner"),
            }
        }
    }

    pub async fn clean(&self, days: u32) -> anyhow::Result<u64> {
        let client = self.pool.get().await?;
        let mut total = 0;
        loop {
            let n = client
                .execute(
                    "DELETE FROM webhook_deliveries WHERE id IN (
                        SELECT id FROM webhook_deliveries WHERE status IN ('success', 'failed')
                        AND updated_at < now() - $1::float8 * interval '1 day' LIMIT 5000)",
                    &[&(days as f64)],
                )
                .await?;
            total += n;
            if n < 5000 {
                return Ok(total);
            }
        }
    }
}

/// The fewest free slots worth a claim while attempts are in flight: a quarter of the node's capacity.
fn min_batch(max_in_flight: usize) -> usize {
    (max_in_flight / 4).clamp(1, CLAIM_MAX)
}

/// Whether `free` of `max_in_flight` slots are worth a claim query. With nothing in flight any claim is (new
/// work goes out at once: the latency path); while busy, only a batch's worth is.
fn worth_claiming(free: usize, max_in_flight: usize) -> bool {
    free > 0 && (free >= max_in_flight || free >= min_batch(max_in_flight))
}

/// The error and its causes (the guard's refusal is a cause of reqwest's connect error).
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!(
            "timeout: no answer within {}",
            super::format_duration(timeout)
        );
    }
    let mut s = if e.is_connect() {
        "connect error".to_string()
    } else {
        "request error".to_string()
    };
    let mut src = std::error::Error::source(e);
    let mut depth = 0;
    while let Some(cause) = src {
        let text = cause.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = cause.source();
        depth += 1;
        if depth > 6 {
            break;
        }
    }
    s.chars().take(500).collect()
}

/// The excerpt as text: lossy UTF-8, cut at a character boundary.
fn excerpt_text(bytes: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    if s.len() > EXCERPT_MAX {
        let mut cut = EXCERPT_MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    // PostgreSQL text cannot hold NUL.
    s.replace('\0', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_wait_for_a_batch_while_busy() {
        // Idle node: any free slot is worth a claim (a single new event goes out at once).
        assert!(worth_claiming(256, 256));
        assert!(worth_claiming(1, 1));
        // Busy node: one or a few freed slots are not (one claim query per delivery); a quarter is.
        assert!(!worth_claiming(0, 256));
        assert!(!worth_claiming(1, 256));
        assert!(!worth_claiming(63, 256));
        assert!(worth_claiming(64, 256));
        // The batch never exceeds what one claim takes.
        assert_eq!(min_batch(10_000), CLAIM_MAX);
        assert_eq!(min_batch(2), 1);
        assert!(worth_claiming(1, 2));
    }
}

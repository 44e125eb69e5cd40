//! The session supervisor: one task per live channel on this node, each held through a lease row.
//!
//! A session task runs the channel's status machine (contract §4.1): it starts an engine session from the sealed
//! state, turns engine events into journal ops (status, events and state in one transaction, fenced by the lease
//! token), reconnects with capped exponential backoff and jitter, and stops the moment its lease is lost.

mod backoff;
pub mod outbox;

use crate::config::Config;
use crate::crypto::MasterKeys;
use crate::engine::{
    Engine, EngineError, EngineEvent, EngineSession, FailReason, LogoutReason, SandboxAction,
    StartRequest,
};
use crate::error::{ApiError, ApiResult, Code};
use crate::events::journal::Release;
use crate::events::{Fence, Journal, Op, OpOutcome, StateWrite};
use crate::metrics::Metrics;
use crate::model::{Reason, Status};
use crate::store::{self, leases};
use crate::wkt::rfc3339;
use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;

/// Commands for a running session, from the API on this node or (as JSON over NOTIFY) on another.
#[derive(Debug)]
pub enum Command {
    PairCode {
        phone_number: String,
    },
    /// Boxed: a command queue's slots are sized by its largest command, and every session has one.
    Sandbox {
        action: Box<SandboxAction>,
        reply: Option<oneshot::Sender<ApiResult<Option<String>>>>,
    },
    /// The API already wrote the final status and removed the lease; stop without writing (and unlink first).
    Stop {
        logout: bool,
    },
    /// Messages were queued: send them if connected.
    Outbox,
}

/// A command as it travels to another node (the reply channel stays behind).
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire {
    PairCode { phone_number: String },
    Sandbox { action: SandboxAction },
    Stop { logout: bool },
    Outbox,
}

#[derive(Serialize, Deserialize)]
struct RemoteCommand {
    node_id: String,
    channel_id: String,
    cmd: Wire,
}

struct Handle {
    token: i64,
    /// When this node claimed the lease: a renewal that started earlier does not speak for it.
    claimed: Instant,
    cmd: mpsc::Sender<Command>,
    cancel: CancellationToken,
    lease_lost: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

pub struct Node {
    pub id: String,
    cfg: Arc<Config>,
    pool: Pool,
    journal: Journal,
    keys: Arc<MasterKeys>,
    engines: HashMap<&'static str, Arc<dyn Engine>>,
    sessions: Mutex<HashMap<String, Handle>>,
    metrics: Arc<Metrics>,
    stopping: CancellationToken,
    /// Permits for outbound media sends over all channels (`WHATISUP_MEDIA_TRANSFERS`): each holds the media's
    /// bytes in memory.
    media_sends: Arc<tokio::sync::Semaphore>,
}

/// Where a session task begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The API moved the channel to `connecting`.
    Connect,
    /// Taken over from a dead node or resumed after a restart.
    Resume,
}

impl Node {
    pub fn new(
        cfg: Arc<Config>,
        pool: Pool,
        journal: Journal,
        keys: Arc<MasterKeys>,
        engines: Vec<Arc<dyn Engine>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Node> {
        let media_sends = Arc::new(tokio::sync::Semaphore::new(usize::from(
            cfg.media_transfers.max(1),
        )));
        Arc::new(Node {
            id: cfg.node_id(),
            cfg,
            pool,
            journal,
            keys,
            engines: engines.into_iter().map(|e| (e.name(), e)).collect(),
            sessions: Mutex::new(HashMap::new()),
            metrics,
            stopping: CancellationToken::new(),
            media_sends,
        })
    }

    pub fn has_engine(&self, name: &str) -> bool {
        self.engines.contains_key(name)
    }

    /// Wipes the keys an engine keeps for a channel whose session runs nowhere (a running session does it
    /// itself when it stops).
    pub async fn forget_keys(&self, engine: &str, channel_id: &str) {
        let Some(engine) = self.engines.get(engine) else {
            return;
        };
        if let Err(e) = engine.forget(channel_id).await {
            tracing::error!(channel_id, error = %e, "wiping the engine's keys failed");
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handle>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn local_sessions(&self) -> usize {
        self.sessions().len()
    }

    /// Claims the lease of one channel for this node (before the API's `connecting` transition).
    pub async fn claim(&self, channel_id: &str) -> ApiResult<Fence> {
        if self.stopping.is_cancelled() {
            return Err(ApiError::unavailable("this node is shutting down"));
        }
        if self.local_sessions() >= self.cfg.max_sessions {
            return Err(ApiError::unavailable(
                "this node runs as many sessions as it may (WHATISUP_MAX_SESSIONS)",
            ));
        }
        let client = self.pool.get().await?;
        let claimed = leases::claim(
            &client,
            &self.id,
            &[channel_id.to_string()],
            self.cfg.lease_ttl(),
        )
        .await?;
        match claimed.first() {
            Some((_, token)) => Ok(Fence {
                node_id: self.id.clone(),
                token: *token,
            }),
            None => Err(ApiError::new(
                Code::ConcurrentModification,
                "another node is running this channel's session",
            )),
        }
    }

    pub async fn release(&self, fence: &Fence, channel_id: &str) {
        if let Ok(client) = self.pool.get().await {
            let _ = leases::release(&client, channel_id, &fence.node_id, fence.token).await;
        }
    }

    /// Starts the session task for a channel whose lease this node holds.
    pub fn spawn(self: &Arc<Self>, channel_id: String, engine: &str, fence: Fence, start: Start) {
        let Some(engine) = self.engines.get(engine).cloned() else {
            tracing::error!(channel_id, engine, "no such engine on this node");
            return;
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let cancel = self.stopping.child_token();
        let lease_lost = Arc::new(AtomicBool::new(false));
        let mut sessions = self.sessions();
        if let Some(old) = sessions.get(&channel_id) {
            if old.token >= fence.token {
                return;
            }
            // A newer claim by this very node supersedes the old task.
            old.lease_lost.store(true, Ordering::Release);
            old.cancel.cancel();
        }
        let task = Session {
            node: self.clone(),
            channel_id: channel_id.clone(),
            fence: fence.clone(),
            engine,
            cancel: cancel.clone(),
            lease_lost: lease_lost.clone(),
            status: Status::Connecting,
            backoff: Backoff::new(
                Duration::from_millis(self.cfg.reconnect_base_ms),
                Duration::from_millis(self.cfg.reconnect_max_ms),
            ),
            forget_on_exit: false,
            outbox: Arc::new(outbox::Shared::new(
                self.cfg.send_rate_per_sec,
                self.cfg.send_burst,
            )),
        };
        let handle = tokio::spawn(task.run(start, cmd_rx));
        sessions.insert(
            channel_id,
            Handle {
                token: fence.token,
                claimed: Instant::now(),
                cmd: cmd_tx,
                cancel,
                lease_lost,
                task: Some(handle),
            },
        );
        self.metrics.sessions.set(sessions.len() as i64);
    }

    fn forget(&self, channel_id: &str, token: i64) {
        let mut sessions = self.sessions();
        if sessions.get(channel_id).is_some_and(|h| h.token == token) {
            sessions.remove(channel_id);
        }
        self.metrics.sessions.set(sessions.len() as i64);
    }

    /// Delivers a command to the session wherever it runs. Ok(false): no node runs it.
    pub async fn command(&self, channel_id: &str, cmd: Command) -> ApiResult<bool> {
        let owner = self.owner(channel_id).await?;
        self.command_to(owner, channel_id, cmd).await
    }

    /// The node running a channel's session, if any.
    pub async fn owner(&self, channel_id: &str) -> ApiResult<Option<String>> {
        if self.sessions().contains_key(channel_id) {
            return Ok(Some(self.id.clone()));
        }
        let client = self.pool.get().await?;
        Ok(leases::owner(&client, channel_id)
            .await?
            .map(|(node, _)| node))
    }

    /// Delivers a command to the session on `owner` (looked up before a write that removes the lease).
    pub async fn command_to(
        &self,
        owner: Option<String>,
        channel_id: &str,
        cmd: Command,
    ) -> ApiResult<bool> {
        let Some(owner) = owner else { return Ok(false) };
        if owner == self.id {
            let local = self.sessions().get(channel_id).map(|h| h.cmd.clone());
            if let (Command::Outbox, Some(tx)) = (&cmd, &local) {
                // A full queue means the session is busy; the drain it runs (or the sweep) picks the row up.
                let _ = tx.try_send(Command::Outbox);
                return Ok(true);
            }
            return match local {
                Some(tx) => {
                    tx.send(cmd).await.map_err(|_| {
                        ApiError::new(Code::NotConnected, "the session has just ended")
                    })?;
                    Ok(true)
                }
                None => Ok(false),
            };
        }
        let client = self.pool.get().await?;
        let wire = match cmd {
            Command::PairCode { phone_number } => Wire::PairCode { phone_number },
            Command::Stop { logout } => Wire::Stop { logout },
            Command::Outbox => Wire::Outbox,
            Command::Sandbox { action, reply } => {
                // Remote actions are fire-and-forget; the result shows up as events.
                if let Some(r) = reply {
                    let _ = r.send(Ok(None));
                }
                Wire::Sandbox { action: *action }
            }
        };
        let payload = serde_json::to_string(&RemoteCommand {
            node_id: owner,
            channel_id: channel_id.to_string(),
            cmd: wire,
        })
        .map_err(ApiError::internal)?;
        client
            .execute("SELECT pg_notify('whatisup_commands', $1)", &[&payload])
            .await?;
        Ok(true)
    }

    /// A command from another node, received by the hub.
    pub async fn remote_command(&self, payload: &str) {
        let Ok(rc) = serde_json::from_str::<RemoteCommand>(payload) else {
            tracing::warn!("ignoring a malformed session command");
            return;
        };
        if rc.node_id != self.id {
            return;
        }
        let cmd = match rc.cmd {
            Wire::PairCode { phone_number } => Command::PairCode { phone_number },
            Wire::Stop { logout } => Command::Stop { logout },
            Wire::Outbox => Command::Outbox,
            Wire::Sandbox { action } => Command::Sandbox {
                action: Box::new(action),
                reply: None,
            },
        };
        let tx = self.sessions().get(&rc.channel_id).map(|h| h.cmd.clone());
        if let Some(tx) = tx {
            let _ = tx.send(cmd).await;
        }
    }

    /// Renews this node's leases; a session whose lease is gone (or cannot be renewed in time) stops at once.
    pub async fn renew_loop(self: Arc<Self>) {
        let ttl = self.cfg.lease_ttl();
        let mut last_ok = Instant::now();
        let mut tick = tokio::time::interval(ttl / 3);
        loop {
            tokio::select! {
                _ = self.stopping.cancelled() => return,
                _ = tick.tick() => {}
            }
            let started = Instant::now();
            let held = match self.pool.get().await {
                Ok(c) => leases::renew(&c, &self.id, ttl)
                    .await
                    .map_err(anyhow::Error::from),
                Err(e) => Err(e.into()),
            };
            match held {
                Ok(held) => {
                    last_ok = Instant::now();
                    let held: HashMap<String, i64> = held.into_iter().collect();
                    for (ch, h) in self.sessions().iter() {
                        if h.claimed < started && held.get(ch) != Some(&h.token) {
                            tracing::warn!(channel_id = %ch, "lease lost; stopping the session");
                            h.lease_lost.store(true, Ordering::Release);
                            h.cancel.cancel();
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing leases failed");
                    // Before the leases can have expired, stop: another node may take over after expiry.
                    if last_ok.elapsed() > ttl * 2 / 3 {
                        for h in self.sessions().values() {
                            h.lease_lost.store(true, Ordering::Release);
                            h.cancel.cancel();
                        }
                    }
                }
            }
        }
    }

    /// Resumes active channels that no live node holds: at start, and after another node died.
    pub async fn scan_loop(self: Arc<Self>) {
        let engines: Vec<&str> = self.engines.keys().copied().collect();
        loop {
            if let Err(e) = self.scan_once(&engines).await {
                tracing::warn!(error = %e, "scanning for orphaned sessions failed");
            }
            tokio::select! {
                _ = self.stopping.cancelled() => return,
                _ = tokio::time::sleep(self.cfg.lease_scan()) => {}
            }
        }
    }

    async fn scan_once(self: &Arc<Self>, engines: &[&str]) -> anyhow::Result<()> {
        loop {
            let room = self.cfg.max_sessions.saturating_sub(self.local_sessions());
            if room == 0 || self.stopping.is_cancelled() {
                return Ok(());
            }
            let client = self.pool.get().await?;
            let ids = leases::orphans(&client, engines, room.min(1_000) as i64).await?;
            if ids.is_empty() {
                return Ok(());
            }
            let claimed = leases::claim(&client, &self.id, &ids, self.cfg.lease_ttl()).await?;
            let engines_of: HashMap<String, String> = client
                .query(
                    "SELECT c.id, c.engine FROM unnest($1::text[]) AS u(id) JOIN channels c ON c.id = u.id",
                    &[&ids],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let n = claimed.len();
            for (ch, token) in claimed {
                let engine = engines_of.get(&ch).cloned().unwrap_or_default();
                self.spawn(
                    ch,
                    &engine,
                    Fence {
                        node_id: self.id.clone(),
                        token,
                    },
                    Start::Resume,
                );
            }
            if n > 0 {
                tracing::info!(sessions = n, "resumed sessions");
            }
            if n < ids.len() || ids.len() < 1_000 {
                return Ok(());
            }
        }
    }

    /// Every few seconds: fails queued messages past their TTL (or left on a channel that was unlinked as they
    /// were accepted), and wakes the sender of every local session with queued messages (a kick may have been
    /// lost, e.g. a NOTIFY while the owner changed).
    pub async fn outbox_loop(self: Arc<Self>) {
        let every = Duration::from_millis(self.cfg.outbox_sweep_ms.max(50));
        loop {
            tokio::select! {
                _ = self.stopping.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.outbox_sweep().await {
                tracing::warn!(error = %e, "outbox sweep failed");
            }
        }
    }

    async fn outbox_sweep(&self) -> anyhow::Result<()> {
        let client = self.pool.get().await?;
        // A sender checks the TTL before each send; the sweep waits out a send that may still be in flight.
        let grace = i64::try_from(self.cfg.send_timeout().as_millis() * 2).unwrap_or(i64::MAX);
        let doomed = store::messages::doomed(&client, grace, 500).await?;
        let mut commits = Vec::with_capacity(doomed.len());
        for (row, why) in &doomed {
            let message = if *why == "expired" {
                "the message was not sent before its TTL ran out"
            } else {
                "the channel was logged out or deleted before the message was sent"
            };
            // Unfenced: whichever node gets there first fails it; a failed message takes no second failure.
            let op = outbox::fail_op(row, None, why, message);
            let journal = self.journal.clone();
            commits.push(tokio::spawn(async move { journal.submit(op).await }));
        }
        for c in commits {
            let _ = c.await;
        }
        let local: Vec<String> = self.sessions().keys().cloned().collect();
        for ch in store::messages::with_queued(&client, &local).await? {
            let tx = self.sessions().get(&ch).map(|h| h.cmd.clone());
            if let Some(tx) = tx {
                let _ = tx.try_send(Command::Outbox);
            }
        }
        // Expired Idempotency-Key answers are deleted by the retention cleanup (store::cleanup).
        Ok(())
    }

    /// Graceful shutdown: every session stops (connected ones are marked reconnecting), leases are released.
    pub async fn shutdown(&self, deadline: Duration) {
        self.stopping.cancel();
        let tasks: Vec<JoinHandle<()>> = self
            .sessions()
            .values_mut()
            .filter_map(|h| h.task.take())
            .collect();
        let n = tasks.len();
        let _ = tokio::time::timeout(deadline, futures::future::join_all(tasks)).await;
        if let Ok(c) = self.pool.get().await {
            let _ = leases::release_all(&c, &self.id).await;
        }
        tracing::info!(sessions = n, "sessions stopped, leases released");
    }
}

enum Outcome {
    /// Transient loss: reconnect after backoff.
    Retry,
    /// The session reached a status where it is not run (the op released the lease).
    End,
    /// Someone else owns the channel now (or the API ended it): stop without writing.
    Fenced,
    /// Node shutdown.
    Shutdown,
}

struct Session {
    node: Arc<Node>,
    channel_id: String,
    fence: Fence,
    engine: Arc<dyn Engine>,
    cancel: CancellationToken,
    lease_lost: Arc<AtomicBool>,
    status: Status,
    backoff: Backoff,
    /// Stopped by a logout or a delete: the engine's keys go once the session is down.
    forget_on_exit: bool,
    /// The outbound sender's state (pacing carries over reconnects).
    outbox: Arc<outbox::Shared>,
}

impl Session {
    fn op(&self) -> Op {
        Op {
            channel_id: self.channel_id.clone(),
            fence: Some(self.fence.clone()),
            ..Default::default()
        }
    }

    /// Submits a fenced op; Err(outcome) says how the session must end.
    async fn write(&mut self, op: Op) -> Result<(), Outcome> {
        // Boxed here, so that no caller's future carries the op and the journal round trip inline.
        match Box::pin(self.node.journal.submit(op)).await {
            Ok(OpOutcome::Applied { channel, .. }) => {
                self.status = channel.status;
                Ok(())
            }
            Ok(OpOutcome::Fenced | OpOutcome::NotFound) => Err(Outcome::Fenced),
            Ok(OpOutcome::Unexpected(ch)) => {
                self.status = ch.status;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(channel_id = %self.channel_id, error = %e, "journal write failed; reconnecting later");
                Err(Outcome::Retry)
            }
        }
    }

    async fn transition(&mut self, to: Status, reason: Option<Reason>) -> Result<(), Outcome> {
        let mut op = self.op();
        op.transition = Some((to, reason));
        self.write(op).await
    }

    // Memory per session matters (thousands per node): a task's future is as large as its largest suspension
    // point, so the rare, heavy steps (database round trips, status writes) run in boxed futures of their own and
    // an idle session holds little more than its receive loop.
    async fn run(mut self, start: Start, mut cmds: mpsc::Receiver<Command>) {
        let outcome = self.lifecycle(start, &mut cmds).await;
        if let Outcome::Shutdown = outcome {
            Box::pin(self.leave()).await;
        }
        if self.forget_on_exit
            && let Err(e) = Box::pin(self.engine.forget(&self.channel_id)).await
        {
            tracing::error!(channel_id = %self.channel_id, error = %e, "wiping the engine's keys failed");
        }
        self.node.forget(&self.channel_id, self.fence.token);
    }

    /// Node shutdown: the connection is, for the outside world, a transient loss; the lease goes back.
    async fn leave(&mut self) {
        if matches!(self.status, Status::Connected) {
            let _ = self
                .transition(Status::Reconnecting, Some(Reason::Network))
                .await;
        }
        self.node.release(&self.fence, &self.channel_id).await;
    }

    /// Reads where the channel stands; a resumed `connected` channel is not connected at this moment.
    async fn begin(&mut self, start: Start) -> Option<Outcome> {
        match self.current().await {
            Some(ch) => {
                self.status = ch.status;
                // The channel's own pacing, where it has one.
                if ch.send_rate_per_sec.is_some() || ch.send_burst.is_some() {
                    let burst = ch
                        .send_burst
                        .and_then(|b| u32::try_from(b).ok())
                        .unwrap_or(self.node.cfg.send_burst);
                    let rate = ch
                        .send_rate_per_sec
                        .unwrap_or(self.node.cfg.send_rate_per_sec);
                    self.outbox = Arc::new(outbox::Shared::new(rate, burst));
                }
            }
            None => return Some(Outcome::Fenced),
        }
        if start == Start::Resume && self.status == Status::Connected {
            return self
                .transition(Status::Reconnecting, Some(Reason::Network))
                .await
                .err();
        }
        None
    }

    /// After a failed attempt: either give up (failed / retries_exhausted) or show `reconnecting`.
    async fn before_retry(&mut self) -> Option<Outcome> {
        if self.backoff.failures() + 1 > self.node.cfg.reconnect_max_attempts {
            let mut op = self.op();
            op.transition = Some((Status::Failed, Some(Reason::RetriesExhausted)));
            op.release = Release::Ours;
            return Some(match self.write(op).await {
                Ok(()) => Outcome::End,
                Err(o) => o,
            });
        }
        if self.status != Status::Reconnecting {
            return self
                .transition(Status::Reconnecting, Some(Reason::Network))
                .await
                .err();
        }
        None
    }

    async fn lifecycle(&mut self, start: Start, cmds: &mut mpsc::Receiver<Command>) -> Outcome {
        if let Some(o) = Box::pin(self.begin(start)).await {
            return o;
        }
        loop {
            match Box::pin(self.attempt(cmds)).await {
                Outcome::Retry => {}
                other => return other,
            }
            if self.cancel.is_cancelled() {
                return self.cancelled();
            }
            if let Some(o) = Box::pin(self.before_retry()).await {
                return o;
            }
            let sleep = tokio::time::sleep(self.backoff.next_delay());
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    _ = self.cancel.cancelled() => return self.cancelled(),
                    cmd = cmds.recv() => match cmd {
                        None => return Outcome::Fenced,
                        Some(Command::Stop { logout }) => {
                            self.forget_on_exit |= logout;
                            return Outcome::Fenced;
                        }
                        Some(Command::Sandbox { reply, .. }) => {
                            if let Some(r) = reply {
                                let _ = r.send(Err(ApiError::new(Code::NotConnected, "the session is reconnecting")));
                            }
                        }
                        Some(Command::PairCode { .. } | Command::Outbox) => {}
                    },
                }
            }
        }
    }

    fn cancelled(&self) -> Outcome {
        if self.lease_lost.load(Ordering::Acquire) {
            Outcome::Fenced
        } else {
            Outcome::Shutdown
        }
    }

    async fn current(&self) -> Option<store::channels::ChannelRow> {
        let client = self.node.pool.get().await.ok()?;
        store::channels::get_any(&client, &self.channel_id)
            .await
            .ok()?
            .filter(|c| c.deleted_at.is_none())
    }

    async fn load_state(&self) -> Result<Option<Vec<u8>>, Outcome> {
        let client = self.node.pool.get().await.map_err(|_| Outcome::Retry)?;
        let Some((kid, sealed)) = store::channels::load_state(&client, &self.channel_id)
            .await
            .map_err(|_| Outcome::Retry)?
        else {
            return Ok(None);
        };
        match self
            .node
            .keys
            .open(&kid, self.channel_id.as_bytes(), &sealed)
        {
            Ok(plain) => Ok(Some(plain)),
            Err(e) => {
                // Without its keys the device cannot log in again; a new pairing is the only way on.
                tracing::error!(channel_id = %self.channel_id, error = %e, "sealed session state does not open");
                Ok(None)
            }
        }
    }

    /// Our messages that these inbound reactions react to, by the id they name (ours or its WhatsApp id) →
    /// (our id, WhatsApp id). No query when the batch holds no reaction.
    async fn reaction_targets(
        &self,
        messages: &[crate::engine::InboundMessage],
    ) -> Result<std::collections::HashMap<String, (String, String)>, Outcome> {
        let ids: Vec<&str> = messages
            .iter()
            .filter_map(|m| reaction_target(&m.body))
            .collect();
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let client = self.node.pool.get().await.map_err(|_| Outcome::Retry)?;
        let rows = crate::store::messages::ids_of(&client, &self.channel_id, &ids)
            .await
            .map_err(|e| {
                tracing::warn!(channel_id = %self.channel_id, error = %e, "reaction target lookup failed");
                Outcome::Retry
            })?;
        let mut map = std::collections::HashMap::new();
        for (id, wa_id) in rows {
            map.insert(wa_id.clone(), (id.clone(), wa_id.clone()));
            map.insert(id.clone(), (id, wa_id));
        }
        Ok(map)
    }

    /// One engine session, from start to its end.
    async fn attempt(&mut self, cmds: &mut mpsc::Receiver<Command>) -> Outcome {
        let state = match Box::pin(self.load_state()).await {
            Ok(s) => s,
            Err(o) => return o,
        };
        let (ev_tx, mut events) = mpsc::channel(256);
        let req = StartRequest {
            channel_id: self.channel_id.clone(),
            state,
            events: ev_tx,
        };
        let started = tokio::select! {
            r = self.engine.start(req) => r,
            _ = self.cancel.cancelled() => return self.cancelled(),
        };
        let session: Arc<dyn EngineSession> = match started {
            Ok(s) => Arc::from(s),
            Err(EngineError::Network(detail)) => {
                tracing::debug!(channel_id = %self.channel_id, detail, "connect attempt failed");
                return Outcome::Retry;
            }
            Err(e) => {
                tracing::warn!(channel_id = %self.channel_id, error = %e, "engine failed to start");
                return Outcome::Retry;
            }
        };
        let outcome = self.drive(&session, &mut events, cmds).await;
        session.stop().await;
        outcome
    }

    async fn drive(
        &mut self,
        session: &Arc<dyn EngineSession>,
        events: &mut mpsc::Receiver<EngineEvent>,
        cmds: &mut mpsc::Receiver<Command>,
    ) -> Outcome {
        // Ends this attempt's sender with the attempt.
        let sending = self.cancel.child_token();
        let _sending = sending.clone().drop_guard();
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return self.cancelled(),
                ev = events.recv() => {
                    let Some(ev) = ev else { return Outcome::Retry };
                    let was = self.status;
                    if let Err(o) = Box::pin(self.on_event(ev)).await {
                        return o;
                    }
                    if self.status == Status::Connected && was != Status::Connected {
                        self.kick(session, &sending);
                    }
                    if matches!(self.status, Status::Pending | Status::Disconnected | Status::Failed) {
                        return Outcome::End;
                    }
                }
                cmd = cmds.recv() => match cmd {
                    None => return Outcome::Fenced,
                    Some(Command::Stop { logout }) => {
                        if logout && let Err(e) = session.logout().await {
                            tracing::warn!(channel_id = %self.channel_id, error = %e, "unlinking the device failed");
                        }
                        self.forget_on_exit |= logout;
                        return Outcome::Fenced;
                    }
                    Some(Command::Outbox) => {
                        if self.status == Status::Connected {
                            self.kick(session, &sending);
                        }
                    }
                    // Engine calls run beside the event loop: they may wait for events this loop must commit
                    // first (an inbound message is acknowledged only after its commit).
                    Some(Command::PairCode { phone_number }) => {
                        let (session, channel_id) = (session.clone(), self.channel_id.clone());
                        tokio::spawn(async move {
                            if let Err(e) = session.request_pair_code(&phone_number).await {
                                tracing::info!(channel_id, error = %e, "pair code request refused");
                            }
                        });
                    }
                    Some(Command::Sandbox { action, reply }) => {
                        let session = session.clone();
                        tokio::spawn(async move {
                            let r = session.sandbox(*action).await.map_err(|e| match e {
                                EngineError::NotSandbox => ApiError::new(Code::NotSandbox, "not a sandbox channel"),
                                EngineError::InvalidState(m) => ApiError::new(Code::InvalidLifecycleTransition, m),
                                other => ApiError::unavailable(other.to_string()),
                            });
                            if let Some(reply) = reply {
                                let _ = reply.send(r);
                            }
                        });
                    }
                },
            }
        }
    }

    /// Starts the outbound sender (or makes the running one look again).
    fn kick(&self, session: &Arc<dyn EngineSession>, cancel: &CancellationToken) {
        outbox::kick(outbox::Drain {
            node: self.node.clone(),
            channel_id: self.channel_id.clone(),
            fence: self.fence.clone(),
            session: session.clone(),
            cancel: cancel.clone(),
            shared: self.outbox.clone(),
        });
    }

    /// A receipt for one of our messages moves it forward (once per status); other ids (messages sent from the
    /// phone itself) are reported as they come.
    async fn on_receipt(
        &mut self,
        message_id: String,
        status: crate::engine::ReceiptStatus,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), Outcome> {
        let row = {
            let client = self.node.pool.get().await.map_err(|_| Outcome::Retry)?;
            store::messages::by_any_id(&client, &self.channel_id, &message_id)
                .await
                .map_err(|e| {
                    tracing::warn!(channel_id = %self.channel_id, error = %e, "receipt lookup failed");
                    Outcome::Retry
                })?
        };
        let mut op = self.op();
        match row {
            Some(row) => op.messages.push(crate::events::MessageWrite {
                message_id: row.id.clone(),
                change: crate::events::MessageChange::Receipt(status),
                error: None,
                at,
                events: vec![(
                    "message.status",
                    outbox::status_data(&row, status.as_str(), at),
                )],
            }),
            None => op.events.push((
                "message.status",
                json!({"message_id": message_id, "status": status.as_str(), "timestamp": rfc3339(at)}),
            )),
        }
        self.write(op).await
    }

    async fn on_event(&mut self, ev: EngineEvent) -> Result<(), Outcome> {
        match ev {
            EngineEvent::Qr { code, expires_at } => {
                let mut op = self.op();
                op.transition = Some((Status::Qr, None));
                op.qr = Some(Some((code.clone(), expires_at)));
                op.events.push((
                    "qr.updated",
                    json!({"qr": code, "expires_at": rfc3339(expires_at)}),
                ));
                self.write(op).await
            }
            EngineEvent::QrExhausted => {
                let mut op = self.op();
                op.transition = Some((Status::Pending, Some(Reason::QrTimeout)));
                op.release = Release::Ours;
                self.write(op).await
            }
            EngineEvent::PairCode { code, expires_at } => {
                let mut op = self.op();
                op.transition = Some((Status::Qr, None));
                op.pair_code = Some(Some((code.clone(), expires_at)));
                op.events.push((
                    "pair_code.updated",
                    json!({"code": code, "expires_at": rfc3339(expires_at)}),
                ));
                self.write(op).await
            }
            EngineEvent::Paired { phone_number } => {
                let mut op = self.op();
                op.transition = Some((Status::Connecting, None));
                op.phone_number = Some(phone_number);
                self.write(op).await
            }
            EngineEvent::StateChanged { state } => {
                let (kid, sealed) = self.node.keys.seal(self.channel_id.as_bytes(), &state);
                let mut op = self.op();
                op.state = StateWrite::Put { kid, sealed };
                self.write(op).await
            }
            EngineEvent::Connected { phone_number } => {
                let mut op = self.op();
                op.transition = Some((Status::Connected, None));
                op.phone_number = Some(phone_number);
                self.write(op).await?;
                self.backoff.reset();
                Ok(())
            }
            EngineEvent::Disconnected { detail } => {
                tracing::info!(channel_id = %self.channel_id, detail, "connection lost");
                Err(Outcome::Retry)
            }
            EngineEvent::LoggedOut { reason } => {
                let reason = match reason {
                    LogoutReason::Logout => Reason::Logout,
                    LogoutReason::SessionInvalidated => Reason::SessionInvalidated,
                    LogoutReason::KickedOtherDevice => Reason::KickedOtherDevice,
                };
                let mut op = self.op();
                op.transition = Some((Status::Disconnected, Some(reason)));
                op.state = StateWrite::Wipe;
                op.release = Release::Ours;
                self.write(op).await
            }
            EngineEvent::Failed { reason } => {
                let mut op = self.op();
                match reason {
                    FailReason::Banned { until } => {
                        op.transition = Some((Status::Failed, Some(Reason::Banned)));
                        op.transition_data = Some(json!({"banned_until": until.map(rfc3339)}));
                    }
                    FailReason::ClientOutdated => {
                        op.transition = Some((Status::Failed, Some(Reason::ClientOutdated)))
                    }
                }
                op.release = Release::Ours;
                self.write(op).await
            }
            EngineEvent::Inbound { messages, ack } => {
                // Redeliveries (our ack was lost) of what is already committed are acknowledged again and add
                // nothing; so are repeats within the batch. The journal checks that under its lock, in the
                // transaction that commits the rest (no round trip of its own per message).
                let targets = Box::pin(self.reaction_targets(&messages)).await?;
                let mut op = self.op();
                op.skip_committed_inbound = true;
                for message in messages {
                    if let Some(target) = reaction_target(&message.body) {
                        // Our own message is named by our id; anything else by its WhatsApp id.
                        let (id, wa_id) = targets
                            .get(target)
                            .cloned()
                            .unwrap_or_else(|| (target.to_string(), target.to_string()));
                        let data = json!({
                            "message_id": id,
                            "whatsapp_id": wa_id,
                            "emoji": message.body["emoji"],
                            "from": message.from,
                            "reaction_id": message.message_id,
                            "timestamp": rfc3339(message.timestamp),
                        });
                        op.events.push((crate::engine::REACTION_EVENT, data));
                        continue;
                    }
                    let mut data = json!({
                        "message_id": message.message_id,
                        "from": message.from,
                        "timestamp": rfc3339(message.timestamp),
                    });
                    if let (serde_json::Value::Object(d), serde_json::Value::Object(body)) =
                        (&mut data, message.body)
                    {
                        d.extend(body);
                    }
                    op.events.push(("message.received", data));
                }
                if op.events.is_empty() {
                    let _ = ack.send(());
                    return Ok(());
                }
                self.write(op).await?;
                // Test builds only: die between the commit and the ack, to prove that WhatsApp's redelivery
                // neither loses nor duplicates the message.
                #[cfg(feature = "fake-whatsapp")]
                if std::env::var_os("WHATISUP_TEST_CRASH_AFTER_INBOUND_COMMIT").is_some() {
                    tracing::error!(
                        "WHATISUP_TEST_CRASH_AFTER_INBOUND_COMMIT: aborting before the ack"
                    );
                    std::process::abort();
                }
                // Committed: now the engine may acknowledge them to WhatsApp.
                let _ = ack.send(());
                Ok(())
            }
            EngineEvent::Receipt {
                message_id,
                status,
                at,
            } => Box::pin(self.on_receipt(message_id, status, at)).await,
        }
    }
}

/// The message an inbound reaction reacts to (None: not a reaction).
fn reaction_target(body: &serde_json::Value) -> Option<&str> {
    if body["event"].as_str() != Some(crate::engine::REACTION_EVENT) {
        return None;
    }
    body["whatsapp_id"].as_str()
}

#[cfg(test)]
mod tests {
    /// Every session owns an event queue and a command queue whose blocks hold 32 messages each: their size is
    /// memory per session. Large payloads are boxed to keep them small.
    #[test]
    fn queue_messages_stay_small() {
        let ev = std::mem::size_of::<crate::engine::EngineEvent>();
        let cmd = std::mem::size_of::<super::Command>();
        assert!(ev <= 64, "EngineEvent is {ev} bytes");
        assert!(cmd <= 40, "Command is {cmd} bytes");
    }
}

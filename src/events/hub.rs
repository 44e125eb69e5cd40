//! The hub: one LISTEN connection per node. On every `whatisup_events` notification it reads the newly committed
//! rows in cursor order and broadcasts them to this node's subscribers; `whatisup_commands` notifications carry
//! commands for sessions that this node owns. Reconnects and catches up by cursor, so nothing is skipped.

use crate::metrics::Metrics;
use crate::store::events::{self, EventRecord};
use deadpool_postgres::Pool;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// Buffers are allocated whole when a topic is made; a subscriber that falls further behind is not lost, it
/// reads the rest from the log.
const TOPIC_CAPACITY: usize = 8_192;
const CHANNEL_TOPIC_CAPACITY: usize = 128;
const FETCH: i64 = 2_000;

pub type Shared = Arc<EventRecord>;

pub struct Hub {
    all: broadcast::Sender<Shared>,
    topics: Mutex<HashMap<String, broadcast::Sender<Shared>>>,
    last_id: AtomicI64,
    /// Woken when some node committed deliveries (or re-queued some): the webhook dispatcher waits on it.
    pub webhooks: Arc<tokio::sync::Notify>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            all: broadcast::channel(TOPIC_CAPACITY).0,
            topics: Mutex::new(HashMap::new()),
            last_id: AtomicI64::new(0),
            webhooks: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The last cursor broadcast; read it after subscribing to start "live from now" without a gap.
    pub fn last_id(&self) -> i64 {
        self.last_id.load(Ordering::Acquire)
    }

    /// Subscribers of one channel get their own topic, so they are not woken for everyone else's events.
    pub fn subscribe(&self, channel_id: Option<&str>) -> broadcast::Receiver<Shared> {
        match channel_id {
            None => self.all.subscribe(),
            Some(ch) => {
                let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
                topics
                    .entry(ch.to_string())
                    .or_insert_with(|| broadcast::channel(CHANNEL_TOPIC_CAPACITY).0)
                    .subscribe()
            }
        }
    }

    fn publish(&self, batch: Vec<EventRecord>) {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        for ev in batch {
            let id = ev.id;
            let ev = Arc::new(ev);
            if let Some(t) = topics.get(&ev.channel_id) {
                if t.receiver_count() == 0 {
                    topics.remove(&ev.channel_id);
                } else {
                    let _ = t.send(ev.clone());
                }
            }
            let _ = self.all.send(ev);
            self.last_id.store(id, Ordering::Release);
        }
    }

    /// Reads committed rows after the last broadcast one and publishes them.
    async fn catch_up(&self, pool: &Pool) -> anyhow::Result<()> {
        let client = pool.get().await?;
        loop {
            let batch = events::all_after(&client, self.last_id(), FETCH).await?;
            let n = batch.len();
            self.publish(batch);
            if (n as i64) < FETCH {
                return Ok(());
            }
        }
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

/// Runs the LISTEN loop until `stop`. Commands for sessions go to `commands` as raw JSON payloads.
pub async fn run(
    hub: Arc<Hub>,
    pool: Pool,
    database_url: String,
    commands: mpsc::Sender<String>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    // Start at the current end of the log: subscribers replay older events from the database themselves.
    loop {
        match pool.get().await {
            Ok(c) => match events::max_id(&c).await {
                Ok(max) => {
                    hub.last_id.store(max, Ordering::Release);
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "hub: reading the log end"),
            },
            Err(e) => tracing::warn!(error = %e, "hub: database pool"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    loop {
        if let Err(e) = listen_once(&hub, &pool, &database_url, &commands, &metrics, &stop).await {
            tracing::warn!(error = %e, "hub: LISTEN connection lost; reconnecting");
        }
        if stop.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn listen_once(
    hub: &Hub,
    pool: &Pool,
    url: &str,
    commands: &mpsc::Sender<String>,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let (note_tx, mut note_rx) = mpsc::unbounded_channel();
    let webhooks = hub.webhooks.clone();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                // Woken here, not behind the event reads queued in front of it (delivery latency).
                Ok(AsyncMessage::Notification(n))
                    if n.channel() == crate::webhooks::deliveries::NOTIFY_CHANNEL =>
                {
                    webhooks.notify_one();
                }
                Ok(AsyncMessage::Notification(n)) => {
                    if note_tx
                        .send((n.channel().to_string(), n.payload().to_string()))
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "hub: connection error");
                    break;
                }
            }
        }
    });
    client
        .batch_execute("LISTEN whatisup_events; LISTEN whatisup_commands; LISTEN whatisup_webhooks")
        .await?;
    // Whatever was announced while we were not listening.
    hub.webhooks.notify_one();
    // Anything committed while we were not listening.
    hub.catch_up(pool).await?;
    // A slow safety net: a notification is never the only way an event becomes visible.
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let result = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            note = note_rx.recv() => match note {
                None => break Err(anyhow::anyhow!("notification stream ended")),
                Some((channel, payload)) => {
                    if channel == "whatisup_events" {
                        let upto: i64 = payload.parse().unwrap_or(i64::MAX);
                        // Coalesce: notifications already covered by a previous read cost nothing.
                        if upto > hub.last_id() {
                            hub.catch_up(pool).await?;
                            metrics.hub_fetches.inc();
                        }
                    } else if commands.try_send(payload).is_err() {
                        tracing::warn!("hub: session command queue full; command dropped");
                    }
                }
            },
            _ = tick.tick() => hub.catch_up(pool).await?,
        }
    };
    driver.abort();
    result
}

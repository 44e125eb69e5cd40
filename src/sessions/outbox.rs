//! The outbound sender of one channel: drains the channel's queued messages, in the order they were accepted,
//! through the engine session while it is connected, paced by a per-channel token bucket.
//!
//! Exactly once towards WhatsApp: each message's WhatsApp id was fixed when the API stored it, so a message whose
//! send was interrupted (a crash between the send and the commit of `sent`) is sent again under the same id, and
//! WhatsApp's servers (the fake server and the sandbox likewise) drop the repeat. Nothing is marked before the
//! send: the id is the reconciliation.
//!
//! A drain runs only while there is work (a kick from the API, a (re)connect, or the node's sweep), so an idle
//! session holds no sender task.

use super::Node;
use crate::engine::{
    Content, EngineError, EngineSession, MediaContent, MediaKind, Outgoing, Quoted, Reaction,
};
use crate::events::{Fence, MessageChange, MessageWrite, Op, OpOutcome};
use crate::store::messages::{self, MessageRow};
use crate::wkt::rfc3339;
use chrono::Utc;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Rows read per round trip.
const BATCH: i64 = 100;

/// A token bucket: `burst` sends back to back, then `rate` per second. A rate of 0 turns pacing off.
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Pacer {
    pub fn new(rate: f64, burst: u32) -> Pacer {
        let burst = f64::from(burst.max(1));
        Pacer {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// How long to wait before the next send (and takes its token).
    pub fn take(&mut self) -> Duration {
        if self.rate <= 0.0 || !self.rate.is_finite() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Per session, across its connection attempts.
pub struct Shared {
    /// (a drain is running, more work arrived while it ran)
    state: Mutex<(bool, bool)>,
    pacer: Mutex<Pacer>,
}

impl Shared {
    pub fn new(rate: f64, burst: u32) -> Shared {
        Shared {
            state: Mutex::new((false, false)),
            pacer: Mutex::new(Pacer::new(rate, burst)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (bool, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pace(&self) -> Duration {
        self.pacer.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// What a drain needs.
pub struct Drain {
    pub node: Arc<Node>,
    pub channel_id: String,
    pub fence: Fence,
    pub session: Arc<dyn EngineSession>,
    /// Cancelled when the connection attempt ends.
    pub cancel: CancellationToken,
    pub shared: Arc<Shared>,
}

/// Starts a drain, or tells the running one to look again before it stops.
pub fn kick(d: Drain) {
    {
        let mut st = d.shared.state();
        if st.0 {
            st.1 = true;
            return;
        }
        *st = (true, false);
    }
    tokio::spawn(async move {
        // Whatever ends the drain (done, cancelled, an error), the next kick starts a new one.
        struct Idle(Arc<Shared>);
        impl Drop for Idle {
            fn drop(&mut self) {
                *self.0.state() = (false, false);
            }
        }
        let _idle = Idle(d.shared.clone());
        loop {
            match d.round().await {
                Round::More => {}
                Round::Stop => return,
                Round::Empty => {
                    let mut st = d.shared.state();
                    if st.1 {
                        st.1 = false;
                    } else {
                        return;
                    }
                }
            }
        }
    });
}

enum Round {
    /// A full batch went out: read again.
    More,
    /// Nothing (more) queued.
    Empty,
    /// The connection is gone, or the lease: stop; a reconnect or the sweep starts a new drain.
    Stop,
}

/// `message.sent` / `message.status` data.
pub fn status_data(row: &MessageRow, status: &str, at: chrono::DateTime<Utc>) -> Value {
    json!({
        "message_id": row.id,
        "client_ref": row.client_ref,
        "to": row.to,
        "whatsapp_id": row.wa_id,
        "status": status,
        "timestamp": rfc3339(at),
    })
}

/// The op that fails a queued message, with its `message.status` event.
pub fn fail_op(row: &MessageRow, fence: Option<Fence>, code: &str, message: &str) -> Op {
    let at = Utc::now();
    let error = json!({"code": code, "message": message});
    let mut data = status_data(row, "failed", at);
    data["error"] = error.clone();
    Op {
        channel_id: row.channel_id.clone(),
        fence,
        messages: vec![MessageWrite {
            message_id: row.id.clone(),
            change: MessageChange::Failed,
            error: Some(error),
            at,
            events: vec![("message.status", data)],
        }],
        ..Default::default()
    }
}

impl Drain {
    async fn round(&self) -> Round {
        let rows = {
            let client = match self.node.pool.get().await {
                Ok(c) => c,
                Err(_) => return Round::Stop,
            };
            match messages::next_queued(&client, &self.channel_id, BATCH).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(channel_id = %self.channel_id, error = %e, "reading the outbox failed");
                    return Round::Stop;
                }
            }
        };
        if rows.is_empty() {
            return Round::Empty;
        }
        let full = rows.len() as i64 == BATCH;
        // Commits run beside the sends; each is awaited before the next read, so a row is never read twice.
        let mut commits = Vec::with_capacity(rows.len());
        let mut stop = false;
        for row in &rows {
            if self.cancel.is_cancelled() {
                stop = true;
                break;
            }
            if row.expires_at <= Utc::now() {
                commits.push(self.submit(fail_op(
                    row,
                    Some(self.fence.clone()),
                    "expired",
                    "the message was not sent before its TTL ran out",
                )));
                continue;
            }
            let wait = self.shared.pace();
            if !wait.is_zero() {
                tokio::select! {
                    _ = self.cancel.cancelled() => { stop = true; break; }
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            match self.send(row).await {
                Ok(()) => {
                    // Test builds only: die between the send and the commit of `sent`, to prove that the re-send
                    // under the same id after the restart delivers nothing twice.
                    #[cfg(feature = "fake-whatsapp")]
                    if std::env::var_os("WHATISUP_TEST_CRASH_AFTER_SEND").is_some() {
                        // Time for the stanza to leave the socket and reach the server.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        tracing::error!(
                            "WHATISUP_TEST_CRASH_AFTER_SEND: aborting before the commit"
                        );
                        std::process::abort();
                    }
                    let at = Utc::now();
                    let mut sent = status_data(row, "sent", at);
                    if let Value::Object(m) = &mut sent {
                        m.remove("status");
                        m.insert("type".into(), row.kind.clone().into());
                    }
                    commits.push(self.submit(Op {
                        channel_id: self.channel_id.clone(),
                        fence: Some(self.fence.clone()),
                        messages: vec![MessageWrite {
                            message_id: row.id.clone(),
                            change: MessageChange::Sent,
                            error: None,
                            at,
                            events: vec![
                                ("message.sent", sent),
                                ("message.status", status_data(row, "sent", at)),
                            ],
                        }],
                        ..Default::default()
                    }));
                    self.node.metrics.messages_sent.inc();
                }
                Err(EngineError::Network(detail)) => {
                    tracing::info!(channel_id = %self.channel_id, message_id = %row.id, detail, "send interrupted; retried when the connection is back");
                    stop = true;
                    break;
                }
                Err(e) => {
                    // WhatsApp refused it (e.g. not a valid recipient): it will not go through on a retry.
                    commits.push(self.submit(fail_op(
                        row,
                        Some(self.fence.clone()),
                        "send_failed",
                        &e.to_string(),
                    )));
                }
            }
        }
        for c in commits {
            match c.await {
                Ok(Ok(OpOutcome::Applied { .. } | OpOutcome::Unexpected(_))) => {}
                Ok(Ok(OpOutcome::Fenced | OpOutcome::NotFound)) => stop = true,
                // Not committed: the message stays queued and is sent again under its id (a duplicate to drop).
                Ok(Err(_)) | Err(_) => stop = true,
            }
        }
        if stop {
            Round::Stop
        } else if full {
            Round::More
        } else {
            Round::Empty
        }
    }

    fn submit(&self, op: Op) -> tokio::task::JoinHandle<crate::error::ApiResult<OpOutcome>> {
        let journal = self.node.journal.clone();
        tokio::spawn(async move { journal.submit(op).await })
    }

    /// The bytes of a media message, from the media table (any node can send them).
    async fn media_bytes(&self, row: &MessageRow) -> Result<Vec<u8>, EngineError> {
        let id = row.body["media"]["id"].as_str().unwrap_or_default();
        let client = self
            .node
            .pool
            .get()
            .await
            .map_err(|e| EngineError::Network(format!("database: {e}")))?;
        match crate::media::load(&client, id).await {
            Ok(Some(data)) => Ok(data),
            // Kept as long as the message may wait; gone means deleted by hand: it can never go out.
            Ok(None) => Err(EngineError::Other(format!(
                "the media {id} is no longer stored"
            ))),
            Err(e) => Err(EngineError::Network(format!("database: {e}"))),
        }
    }

    async fn send(&self, row: &MessageRow) -> Result<(), EngineError> {
        // Media bytes live in their own table; loaded only for the send, under one of the node's permits (held
        // until the send returns) so that channels sending media together hold a bounded amount of it.
        let (media, _permit) =
            match MediaKind::parse(&row.kind) {
                Some(kind) => {
                    let permit =
                        self.node.media_sends.acquire().await.map_err(|_| {
                            EngineError::Network("the node is shutting down".into())
                        })?;
                    (Some((kind, self.media_bytes(row).await?)), Some(permit))
                }
                None => (None, None),
            };
        let reply_to = row.body["reply_to"]["whatsapp_id"]
            .as_str()
            .map(|id| Quoted {
                message_id: id,
                participant: row.body["reply_to"]["participant"].as_str(),
            });
        let m = Outgoing {
            to: &row.to,
            message_id: &row.wa_id,
            content: content(row, media.as_ref().map(|(k, d)| (*k, d.as_slice())))?,
            reply_to,
        };
        match tokio::time::timeout(self.node.cfg.send_timeout(), self.session.send(&m)).await {
            Ok(r) => r,
            Err(_) => Err(EngineError::Network("the send timed out".into())),
        }
    }
}

/// The content of a stored message, by its type and body (as the API stored them).
fn content<'a>(
    row: &'a MessageRow,
    media: Option<(MediaKind, &'a [u8])>,
) -> Result<Content<'a>, EngineError> {
    let b = &row.body;
    let bad = || EngineError::InvalidState(format!("malformed stored {} message", row.kind));
    Ok(match row.kind.as_str() {
        "text" => Content::Text(b["text"].as_str().unwrap_or_default()),
        "location" => {
            let l = &b["location"];
            Content::Location {
                latitude: l["latitude"].as_f64().ok_or_else(bad)?,
                longitude: l["longitude"].as_f64().ok_or_else(bad)?,
                name: l["name"].as_str(),
                address: l["address"].as_str(),
            }
        }
        "reaction" => {
            let r = &b["reaction"];
            let participant = r["participant"].as_str();
            Content::Reaction(Reaction {
                message_id: r["whatsapp_id"].as_str().ok_or_else(bad)?,
                // The API leaves the author out for our own messages only.
                from_me: participant.is_none(),
                participant,
                emoji: r["emoji"].as_str().unwrap_or_default(),
            })
        }
        _ if media.is_some() => {
            let (kind, data) = media.ok_or_else(bad)?;
            Content::Media(MediaContent {
                kind,
                mime_type: b["media"]["mime_type"]
                    .as_str()
                    .unwrap_or("application/octet-stream"),
                data,
                caption: b["caption"].as_str(),
                filename: b["media"]["filename"].as_str(),
            })
        }
        // The API stores only types it validated; a row of another type comes from a newer gateway version.
        other => {
            return Err(EngineError::Other(format!(
                "message type {other} is not supported by this gateway version"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::Pacer;
    use std::time::Duration;

    #[test]
    fn pacer_allows_a_burst_then_the_rate() {
        let mut p = Pacer::new(2.0, 3);
        for _ in 0..3 {
            assert_eq!(p.take(), Duration::ZERO);
        }
        let w = p.take();
        assert!(
            w > Duration::from_millis(400) && w <= Duration::from_millis(500),
            "{w:?}"
        );
        let mut off = Pacer::new(0.0, 1);
        for _ in 0..100 {
            assert_eq!(off.take(), Duration::ZERO);
        }
    }
}

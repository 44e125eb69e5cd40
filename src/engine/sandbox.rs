//! The sandbox engine: a simulated phone for test mode and load tests. No network and no cryptography per
//! message; it persists its own simulated device keys through the same sealed-state path as the real engine, so a
//! restart resumes without a scan exactly as a real session does.

use super::{
    Engine, EngineError, EngineEvent, EngineSession, FailReason, InboundMessage, LogoutReason,
    SandboxAction, StartRequest,
};
use crate::crypto::random_base62;
use async_trait::async_trait;
use chrono::Utc;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// How long a simulated handshake takes.
    pub connect: Duration,
    /// How long each QR code lives.
    pub qr_ttl: Duration,
    /// QR codes shown before giving up.
    pub qr_count: u32,
}

/// The simulated device keys: what a restart resumes from.
#[derive(Serialize, Deserialize)]
struct Device {
    v: u8,
    phone_number: String,
    device_id: String,
}

pub struct SandboxEngine {
    cfg: SandboxConfig,
    /// The simulated WhatsApp server's memory of accepted message ids (shared by every node, survives restarts).
    store: Option<deadpool_postgres::Pool>,
    /// Channels whose simulated network is down, until when (a `drop`).
    down: Arc<Mutex<HashMap<String, Instant>>>,
}

impl SandboxEngine {
    pub fn new(cfg: SandboxConfig) -> SandboxEngine {
        SandboxEngine {
            cfg,
            store: None,
            down: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Accepted sends are recorded in `sandbox_accepted`; a repeated id is counted as a duplicate, not accepted
    /// again (WhatsApp's servers drop a message id they already have).
    pub fn with_store(mut self, pool: deadpool_postgres::Pool) -> SandboxEngine {
        self.store = Some(pool);
        self
    }

    fn network_down(&self, channel_id: &str) -> bool {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        match down.get(channel_id) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                down.remove(channel_id);
                false
            }
            None => false,
        }
    }
}

#[async_trait]
impl Engine for SandboxEngine {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    async fn start(&self, req: StartRequest) -> Result<Box<dyn EngineSession>, EngineError> {
        if self.network_down(&req.channel_id) {
            tokio::time::sleep(self.cfg.connect).await;
            return Err(EngineError::Network("simulated network is down".into()));
        }
        let (ctl, rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let phone = Phone {
            cfg: self.cfg.clone(),
            channel_id: req.channel_id,
            events: req.events,
            down: self.down.clone(),
            stop: stop.clone(),
        };
        let channel_id = phone.channel_id.clone();
        tokio::spawn(phone.run(req.state, rx));
        Ok(Box::new(SandboxSession {
            ctl,
            stop,
            channel_id,
            store: self.store.clone(),
        }))
    }
}

enum Ctl {
    Action(Box<SandboxAction>),
    PairCode(String),
    /// A text for the simulated network: accepted once the phone is paired.
    Send,
    Logout,
}

type Reply = oneshot::Sender<Result<Option<String>, EngineError>>;

struct SandboxSession {
    ctl: mpsc::Sender<(Ctl, Reply)>,
    stop: CancellationToken,
    channel_id: String,
    store: Option<deadpool_postgres::Pool>,
}

impl SandboxSession {
    async fn call(&self, c: Ctl) -> Result<Option<String>, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.ctl
            .send((c, tx))
            .await
            .map_err(|_| EngineError::InvalidState("the session has ended".into()))?;
        rx.await
            .map_err(|_| EngineError::InvalidState("the session has ended".into()))?
    }
}

#[async_trait]
impl EngineSession for SandboxSession {
    async fn request_pair_code(&self, phone_number: &str) -> Result<(), EngineError> {
        self.call(Ctl::PairCode(phone_number.to_string()))
            .await
            .map(|_| ())
    }

    async fn send_text(&self, to: &str, text: &str, id: &str) -> Result<(), EngineError> {
        self.send(&super::Outgoing {
            to,
            message_id: id,
            content: super::Content::Text(text),
            reply_to: None,
        })
        .await
    }

    async fn send(&self, m: &super::Outgoing<'_>) -> Result<(), EngineError> {
        // The phone must be paired and online; a session that ended is a lost connection, retried later.
        self.call(Ctl::Send).await.map_err(|e| match e {
            EngineError::InvalidState(m) => EngineError::Network(m),
            other => other,
        })?;
        let Some(pool) = &self.store else {
            return Ok(());
        };
        let client = pool
            .get()
            .await
            .map_err(|e| EngineError::Network(format!("simulated server: {e}")))?;
        let reply_to = m.reply_to.map(|q| q.message_id);
        // What the simulated server saw, as the contact's phone would show it.
        let body = match m.content {
            super::Content::Text(text) => serde_json::json!({"text": text, "reply_to": reply_to}),
            super::Content::Location {
                latitude,
                longitude,
                name,
                address,
            } => serde_json::json!({
                "type": "location",
                "location": {"latitude": latitude, "longitude": longitude, "name": name, "address": address},
                "reply_to": reply_to,
            }),
            super::Content::Reaction(r) => serde_json::json!({
                "type": "reaction",
                "reaction": {
                    "message_id": r.message_id,
                    "from_me": r.from_me,
                    "participant": r.participant,
                    "emoji": r.emoji,
                },
            }),
            // The simulated server records what it received: the bytes' size and hash, not the bytes.
            super::Content::Media(md) => {
                use sha2::Digest;
                serde_json::json!({
                    "type": md.kind.as_str(),
                    "caption": md.caption,
                    "reply_to": reply_to,
                    "media": {
                        "mime_type": md.mime_type,
                        "size": md.data.len(),
                        "sha256": hex::encode(sha2::Sha256::digest(md.data)),
                        "filename": md.filename,
                    },
                })
            }
        };
        client
            .execute(
                "INSERT INTO sandbox_accepted (channel_id, wa_id, to_addr, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (channel_id, wa_id) DO UPDATE SET duplicates = sandbox_accepted.duplicates + 1",
                &[&self.channel_id, &m.message_id, &m.to, &body],
            )
            .await
            .map(|_| ())
            .map_err(|e| EngineError::Network(format!("simulated server: {e}")))
    }

    async fn logout(&self) -> Result<(), EngineError> {
        self.call(Ctl::Logout).await.map(|_| ())
    }

    async fn stop(&self) {
        self.stop.cancel();
    }

    async fn sandbox(&self, action: SandboxAction) -> Result<Option<String>, EngineError> {
        self.call(Ctl::Action(Box::new(action))).await
    }
}

struct Phone {
    cfg: SandboxConfig,
    channel_id: String,
    events: mpsc::Sender<EngineEvent>,
    down: Arc<Mutex<HashMap<String, Instant>>>,
    stop: CancellationToken,
}

enum Next {
    Connected(String),
    End,
}

fn random_phone() -> String {
    format!("+1555{:07}", rand::thread_rng().gen_range(0..10_000_000))
}

fn pair_code() -> String {
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTVWXYZ";
    let mut rng = rand::thread_rng();
    let mut s: String = (0..8)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    s.insert(4, '-');
    s
}

impl Phone {
    async fn emit(&self, ev: EngineEvent) -> bool {
        !self.stop.is_cancelled() && self.events.send(ev).await.is_ok()
    }

    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    async fn run(self, state: Option<Vec<u8>>, mut rx: mpsc::Receiver<(Ctl, Reply)>) {
        let next = match state {
            Some(blob) => match serde_json::from_slice::<Device>(&blob) {
                Ok(dev) => {
                    if !self.pause(self.cfg.connect).await {
                        return;
                    }
                    Next::Connected(dev.phone_number)
                }
                Err(_) => {
                    self.emit(EngineEvent::LoggedOut {
                        reason: LogoutReason::SessionInvalidated,
                    })
                    .await;
                    Next::End
                }
            },
            None => Box::pin(self.pair(&mut rx)).await,
        };
        if let Next::Connected(phone) = next
            && self
                .emit(EngineEvent::Connected {
                    phone_number: phone,
                })
                .await
        {
            self.connected(&mut rx).await;
        }
    }

    /// Shows rotating QR codes until the simulated phone scans one (or a pair code is entered).
    async fn pair(&self, rx: &mut mpsc::Receiver<(Ctl, Reply)>) -> Next {
        let mut pair_phone: Option<String> = None;
        for _ in 0..self.cfg.qr_count.max(1) {
            let code = format!(
                "2@{},{},{},{}",
                random_base62(32),
                random_base62(43),
                random_base62(43),
                random_base62(43)
            );
            let expires_at =
                Utc::now() + chrono::Duration::from_std(self.cfg.qr_ttl).unwrap_or_default();
            if !self.emit(EngineEvent::Qr { code, expires_at }).await {
                return Next::End;
            }
            let deadline = tokio::time::sleep(self.cfg.qr_ttl);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => return Next::End,
                    _ = &mut deadline => break,
                    msg = rx.recv() => {
                        let Some((ctl, reply)) = msg else { return Next::End };
                        match ctl {
                            Ctl::Action(a) if matches!(*a, SandboxAction::Scan { .. }) => {
                                let SandboxAction::Scan { phone_number } = *a else { unreachable!() };
                                let phone = phone_number.or(pair_phone.take()).unwrap_or_else(random_phone);
                                let _ = reply.send(Ok(None));
                                return Box::pin(self.complete_pairing(phone)).await;
                            }
                            Ctl::PairCode(phone) => {
                                pair_phone = Some(phone);
                                let expires_at = Utc::now() + chrono::Duration::from_std(self.cfg.qr_ttl).unwrap_or_default();
                                let ok = self.emit(EngineEvent::PairCode { code: pair_code(), expires_at }).await;
                                let _ = reply.send(Ok(None));
                                if !ok {
                                    return Next::End;
                                }
                            }
                            Ctl::Logout => {
                                let _ = reply.send(Ok(None));
                                return Next::End;
                            }
                            Ctl::Action(_) | Ctl::Send => {
                                let _ = reply.send(Err(EngineError::InvalidState(
                                    "the simulated phone is not paired yet: scan first".into(),
                                )));
                            }
                        }
                    }
                }
            }
        }
        self.emit(EngineEvent::QrExhausted).await;
        Next::End
    }

    async fn complete_pairing(&self, phone: String) -> Next {
        if !self
            .emit(EngineEvent::Paired {
                phone_number: phone.clone(),
            })
            .await
            || !self.pause(self.cfg.connect).await
        {
            return Next::End;
        }
        let device = Device {
            v: 1,
            phone_number: phone.clone(),
            device_id: random_base62(22),
        };
        let state = serde_json::to_vec(&device).unwrap_or_default();
        if !self.emit(EngineEvent::StateChanged { state }).await {
            return Next::End;
        }
        Next::Connected(phone)
    }

    async fn connected(&self, rx: &mut mpsc::Receiver<(Ctl, Reply)>) {
        loop {
            let (ctl, reply) = tokio::select! {
                _ = self.stop.cancelled() => return,
                msg = rx.recv() => match msg { Some(m) => m, None => return },
            };
            // Handled in its own (boxed) future: an idle session keeps only this small loop in memory.
            if !Box::pin(self.on_ctl(ctl, reply)).await {
                return;
            }
        }
    }

    /// An inbound message from the simulated contact; answered once the gateway committed it. False when the
    /// session has ended.
    async fn deliver(
        &self,
        message_id: String,
        from: String,
        body: serde_json::Value,
        reply: Reply,
    ) -> bool {
        let (ack, acked) = oneshot::channel();
        let messages = vec![InboundMessage {
            message_id: message_id.clone(),
            from,
            timestamp: Utc::now(),
            body,
        }];
        if !self.emit(EngineEvent::Inbound { messages, ack }).await {
            let _ = reply.send(Err(EngineError::InvalidState(
                "the session has ended".into(),
            )));
            return false;
        }
        // Like WhatsApp: the message counts as delivered only once the gateway committed it.
        let r = match tokio::time::timeout(Duration::from_secs(10), acked).await {
            Ok(Ok(())) => Ok(Some(message_id)),
            _ => Err(EngineError::Other(
                "the gateway did not commit the message".into(),
            )),
        };
        let _ = reply.send(r);
        true
    }

    /// One request to the paired phone; false when the session ends with it.
    async fn on_ctl(&self, ctl: Ctl, reply: Reply) -> bool {
        match ctl {
            Ctl::Logout => {
                let _ = reply.send(Ok(None));
                return false;
            }
            Ctl::PairCode(_) => {
                let _ = reply.send(Err(EngineError::InvalidState("already paired".into())));
            }
            Ctl::Send => {
                let _ = reply.send(Ok(None));
            }
            Ctl::Action(action) => match *action {
                SandboxAction::Scan { .. } => {
                    let _ = reply.send(Err(EngineError::InvalidState(
                        "already paired: nothing to scan".into(),
                    )));
                }
                SandboxAction::Drop { duration_ms } => {
                    let until = Instant::now() + Duration::from_millis(duration_ms);
                    self.down
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(self.channel_id.clone(), until);
                    let _ = reply.send(Ok(None));
                    self.emit(EngineEvent::Disconnected {
                        detail: "simulated network drop".into(),
                    })
                    .await;
                    return false;
                }
                SandboxAction::Revoke => {
                    let _ = reply.send(Ok(None));
                    self.emit(EngineEvent::LoggedOut {
                        reason: LogoutReason::Logout,
                    })
                    .await;
                    return false;
                }
                SandboxAction::Ban => {
                    let _ = reply.send(Ok(None));
                    let until = Some(Utc::now() + chrono::Duration::hours(24));
                    self.emit(EngineEvent::Failed {
                        reason: FailReason::Banned { until },
                    })
                    .await;
                    return false;
                }
                SandboxAction::Inbound {
                    message_id,
                    from,
                    text,
                } => {
                    let body = serde_json::json!({"type": "text", "text": text});
                    return self.deliver(message_id, from, body, reply).await;
                }
                SandboxAction::InboundLocation {
                    message_id,
                    from,
                    latitude,
                    longitude,
                    name,
                    address,
                } => {
                    let body = super::location_body(
                        latitude,
                        longitude,
                        name.as_deref(),
                        address.as_deref(),
                    );
                    return self.deliver(message_id, from, body, reply).await;
                }
                SandboxAction::InboundReaction {
                    message_id,
                    from,
                    target,
                    emoji,
                } => {
                    let body = super::reaction_body(&target, &emoji);
                    return self.deliver(message_id, from, body, reply).await;
                }
                SandboxAction::InboundMedia {
                    message_id,
                    from,
                    kind,
                    caption,
                    media,
                } => {
                    let body =
                        serde_json::json!({"type": kind, "media": media, "caption": caption});
                    if !self.deliver(message_id, from, body, reply).await {
                        return false;
                    }
                }
                SandboxAction::Receipt { message_id, status } => {
                    let ok = self
                        .emit(EngineEvent::Receipt {
                            message_id,
                            status,
                            at: Utc::now(),
                        })
                        .await;
                    let _ = reply.send(if ok {
                        Ok(None)
                    } else {
                        Err(EngineError::InvalidState("the session has ended".into()))
                    });
                }
            },
        }
        true
    }
}

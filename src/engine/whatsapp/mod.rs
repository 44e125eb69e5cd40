//! The WhatsApp engine on whatsapp-rust. The only module that may name the crate's types: everything leaves it
//! as our own `EngineEvent`s.
//!
//! One engine session is one logical connection attempt, driven by one task. The crate's own reconnect loop is
//! switched off (`enable_auto_reconnect = false`): the supervisor owns reconnect policy, and a lost connection
//! ends the session (`Disconnected`) so the supervisor can start a fresh client from the persisted store after
//! its backoff. The one reconnect the engine does itself is the 515 restart that follows a successful pairing,
//! which is part of logging in, not a failure. A client is always disconnected before another is built for the
//! same channel (no zombie clients).

mod media_in;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use deadpool_postgres::Pool;
use serde_json::json;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use whatsapp_rust::bot::{Bot, BotHandle};
use whatsapp_rust::client::Client;
use whatsapp_rust::pair_code::PairCodeOptions;
use whatsapp_rust::prelude::wa;
use whatsapp_rust::prelude::{
    Event, EventHandler, EventInterest, EventKind, MessageBuilderExt, MessageExt, SendOptions,
};
use whatsapp_rust::transport::TokioWebSocketTransportFactory;
use whatsapp_rust::types::durability_hook::{InboundDurabilityHook, InboundMessage as WaInbound};
use whatsapp_rust::types::events::ConnectFailureReason;
use whatsapp_rust::types::presence::ReceiptType;
use whatsapp_rust::{Jid, Server};

use super::{
    Engine, EngineError, EngineEvent, EngineSession, FailReason, InboundMessage, LogoutReason,
    ReceiptStatus, StartRequest,
};
use crate::crypto::MasterKeys;
use whatsapp_rust::store::traits::Backend;
use whatsapp_rust::wacore::store::traits::DeviceStore as _;

/// Lifecycle events the crate may emit between two polls of the driver; far more than one connection produces.
const RAW_QUEUE: usize = 1_024;
/// A pairing is followed by one server-requested restart; more than this in a row is a misbehaving server.
const MAX_LOGIN_RESTARTS: u32 = 3;
/// How long a graceful stop may take (the client flushes pending acks and state).
const STOP_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Clone)]
pub struct WhatsAppConfig {
    pub url: String,
    pub version: (u32, u32, u32),
    pub device_name: String,
    /// Share key-store write transactions across sessions (see `store::GroupCommit`).
    pub group_commit: bool,
    /// Inbound media downloads at once over all sessions (each holds up to the media cap in memory).
    pub media_downloads: usize,
}

pub struct WhatsAppEngine {
    pool: Pool,
    keys: Arc<MasterKeys>,
    cfg: WhatsAppConfig,
    http: Arc<http::ReqwestHttp>,
    /// Where inbound media is stored (and how its links are signed).
    media: Arc<crate::media::Media>,
    /// Deletes consumed pending-inbound rows of all channels in batches; started with the first session.
    sweeper: std::sync::OnceLock<store::Sweeper>,
    groups: std::sync::OnceLock<store::GroupCommit>,
    /// Permits for inbound media downloads, shared by all sessions.
    downloads: Arc<tokio::sync::Semaphore>,
}

impl WhatsAppEngine {
    /// Refuses an endpoint a build with `fake-whatsapp` must not talk to: that build does not verify WhatsApp's
    /// certificate chain, so it may only ever reach a local fake server.
    pub fn new(
        pool: Pool,
        keys: Arc<MasterKeys>,
        cfg: WhatsAppConfig,
        media: Arc<crate::media::Media>,
    ) -> anyhow::Result<WhatsAppEngine> {
        if cfg!(feature = "fake-whatsapp") {
            if !is_loopback_ws(&cfg.url) {
                anyhow::bail!(
                    "this binary was built with the `fake-whatsapp` feature (no certificate-chain verification) and \
                     refuses the non-loopback WhatsApp endpoint {}; build without the feature for real WhatsApp",
                    cfg.url
                );
            }
            tracing::warn!(
                url = %cfg.url,
                "BUILT WITH `fake-whatsapp`: WhatsApp server certificates are NOT verified; loopback endpoints only"
            );
        }
        let downloads = Arc::new(tokio::sync::Semaphore::new(cfg.media_downloads.max(1)));
        Ok(WhatsAppEngine {
            pool,
            keys,
            cfg,
            http: Arc::new(http::ReqwestHttp::new()?),
            media,
            sweeper: std::sync::OnceLock::new(),
            groups: std::sync::OnceLock::new(),
            downloads,
        })
    }
}

/// `ws://127.0.0.1…`, `ws://[::1]…` or `ws://localhost…` (any scheme, any port or path).
fn is_loopback_ws(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

#[async_trait]
impl Engine for WhatsAppEngine {
    fn name(&self) -> &'static str {
        "whatsapp"
    }

    async fn start(&self, req: StartRequest) -> Result<Box<dyn EngineSession>, EngineError> {
        let sweeper = self
            .sweeper
            .get_or_init(|| store::Sweeper::spawn(self.pool.clone()))
            .clone();
        let mut store = store::PgStore::with_sweeper(
            self.pool.clone(),
            self.keys.clone(),
            &req.channel_id,
            sweeper,
        );
        if self.cfg.group_commit {
            let groups = self
                .groups
                .get_or_init(|| store::GroupCommit::new(self.pool.clone()))
                .clone();
            store = store.with_group_commit(groups);
        }
        let store = Arc::new(store);
        if req.state.is_none() {
            // No persisted session: whatever the store still holds for this channel belongs to an unlinked device.
            store::wipe(&self.pool, &req.channel_id)
                .await
                .map_err(|e| EngineError::Network(format!("clearing old device keys: {e}")))?;
        }
        let shared = Arc::new(Shared {
            channel_id: req.channel_id.clone(),
            client: Mutex::new(None),
            stop: CancellationToken::new(),
            done: CancellationToken::new(),
        });
        let driver = Driver {
            shared: shared.clone(),
            store: store.clone(),
            cfg: self.cfg.clone(),
            http: self.http.clone(),
            inbound_media: Arc::new(media_in::InboundMedia::new(
                self.media.clone(),
                self.pool.clone(),
                req.channel_id.clone(),
                self.http.clone(),
                self.downloads.clone(),
            )),
            events: req.events,
        };
        tokio::spawn(async move {
            let done = driver.shared.done.clone();
            driver.run().await;
            done.cancel();
        });
        Ok(Box::new(WaSession { shared, store }))
    }

    async fn forget(&self, channel_id: &str) -> Result<(), EngineError> {
        store::wipe(&self.pool, channel_id)
            .await
            .map(|_| ())
            .map_err(|e| EngineError::Other(format!("wiping device keys: {e}")))
    }
}

struct Shared {
    channel_id: String,
    /// The live client, once built; None between restarts.
    client: Mutex<Option<Arc<Client>>>,
    /// The supervisor asked the session to end.
    stop: CancellationToken,
    /// The driver has finished (its client is disconnected).
    done: CancellationToken,
}

struct WaSession {
    shared: Arc<Shared>,
    store: Arc<store::PgStore>,
}

impl WaSession {
    async fn client(&self) -> Result<Arc<Client>, EngineError> {
        self.shared
            .client
            .lock()
            .await
            .clone()
            .ok_or_else(|| EngineError::InvalidState("the session is not connected".into()))
    }
}

#[async_trait]
impl EngineSession for WaSession {
    async fn request_pair_code(&self, phone_number: &str) -> Result<(), EngineError> {
        let client = self.client().await?;
        if client.is_logged_in() {
            return Err(EngineError::InvalidState(
                "the device is already paired".into(),
            ));
        }
        let options = PairCodeOptions {
            phone_number: digits(phone_number),
            ..Default::default()
        };
        // The code itself arrives as an event (`PairingCode`), like a QR code.
        client
            .pair_with_code(options)
            .await
            .map(|_| ())
            .map_err(|e| EngineError::InvalidState(format!("pair code refused: {e}")))
    }

    async fn send_text(&self, to: &str, text: &str, message_id: &str) -> Result<(), EngineError> {
        self.send(&super::Outgoing {
            to,
            message_id,
            content: super::Content::Text(text),
            reply_to: None,
        })
        .await
    }

    async fn send(&self, m: &super::Outgoing<'_>) -> Result<(), EngineError> {
        let client = self.client().await?;
        if !client.is_logged_in() {
            return Err(EngineError::Network("not logged in".into()));
        }
        use whatsapp_rust::prelude::MessageField;
        let jid = match m.to.strip_suffix("@g.us") {
            Some(group) if !group.is_empty() => Jid::group(group.to_string()),
            _ => {
                let number = digits(m.to);
                if number.is_empty() {
                    return Err(EngineError::InvalidState(format!(
                        "not a phone number: {}",
                        m.to
                    )));
                }
                Jid::pn(number)
            }
        };
        // A quote names the quoted message and, when someone else wrote it, its author.
        let context = m.reply_to.map(|q| {
            let participant = match q.participant {
                Some(p) => Jid::pn(digits(p)).to_string(),
                None => client
                    .pn()
                    .map(|j| j.to_non_ad().to_string())
                    .unwrap_or_default(),
            };
            wa::ContextInfo {
                stanza_id: Some(q.message_id.to_string()),
                participant: Some(participant),
                ..Default::default()
            }
        });
        let message = match m.content {
            super::Content::Text(text) => match context {
                None => wa::Message::text(text),
                Some(context) => wa::Message::text_with_context(text, context),
            },
            super::Content::Location {
                latitude,
                longitude,
                name,
                address,
            } => wa::Message {
                location_message: MessageField::some(wa::message::LocationMessage {
                    degrees_latitude: Some(latitude),
                    degrees_longitude: Some(longitude),
                    name: name.map(str::to_string),
                    address: address.map(str::to_string),
                    context_info: context.map(MessageField::some).unwrap_or_default(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            super::Content::Reaction(r) => {
                // The key of the message reacted to, as WhatsApp Web builds it: the chat, whether we wrote it,
                // and in a group its author.
                let key = wa::MessageKey {
                    remote_jid: Some(jid.to_string()),
                    from_me: Some(r.from_me),
                    id: Some(r.message_id.to_string()),
                    participant: match r.participant {
                        Some(p) if m.to.ends_with("@g.us") && !r.from_me => {
                            Some(Jid::pn(digits(p)).to_string())
                        }
                        _ => None,
                    },
                };
                whatsapp_rust::proto_helpers::build_reaction_message(
                    key,
                    r.emoji,
                    Utc::now().timestamp_millis(),
                )
            }
            super::Content::Media(md) => {
                // Encrypted with a fresh media key and uploaded to the media host media_conn names; the
                // message carries the key and the hashes.
                let uploaded = client
                    .upload(
                        md.data.to_vec(),
                        media::media_type(md.kind),
                        whatsapp_rust::UploadOptions::default(),
                    )
                    .await
                    .map_err(|e| EngineError::Network(format!("media upload failed: {e}")))?;
                media::message(&md, uploaded, context)
            }
        };
        let options = SendOptions::default().with_message_id(m.message_id);
        client
            .send_message_with_options(jid, message, options)
            .await
            .map(|_| ())
            .map_err(|e| EngineError::Network(format!("send failed: {e}")))
    }

    async fn logout(&self) -> Result<(), EngineError> {
        if let Ok(client) = self.client().await {
            // Sends the remove-companion request to the server (best effort), then disconnects.
            client.logout().await;
        }
        self.stop().await;
        // Unlinked: the keys go now, and nothing the old client still runs may write them back.
        self.store
            .retire_and_wipe()
            .await
            .map(|_| ())
            .map_err(|e| EngineError::Other(format!("wiping device keys: {e}")))
    }

    async fn stop(&self) {
        self.shared.stop.cancel();
        if tokio::time::timeout(
            STOP_TIMEOUT + Duration::from_secs(2),
            self.shared.done.cancelled(),
        )
        .await
        .is_err()
        {
            tracing::warn!(channel_id = %self.shared.channel_id, "whatsapp session did not stop in time");
        }
    }
}

/// How one client's run ended.
enum RunEnd {
    /// The server restarts the stream after pairing (515): log in with a fresh client.
    LoginRestart,
    /// A terminal event (logout, replaced, ban, outdated) was handed to the supervisor.
    Terminal,
    /// The connection was lost or could not be made; the supervisor retries.
    Lost(String),
    /// The supervisor stopped the session.
    Stopped,
}

struct Driver {
    shared: Arc<Shared>,
    store: Arc<store::PgStore>,
    cfg: WhatsAppConfig,
    http: Arc<http::ReqwestHttp>,
    inbound_media: Arc<media_in::InboundMedia>,
    events: mpsc::Sender<EngineEvent>,
}

impl Driver {
    async fn run(self) {
        let mut restarts = 0;
        loop {
            let end = Box::pin(self.run_client()).await;
            *self.shared.client.lock().await = None;
            match end {
                RunEnd::LoginRestart if restarts < MAX_LOGIN_RESTARTS => {
                    restarts += 1;
                    continue;
                }
                RunEnd::LoginRestart => {
                    self.emit(EngineEvent::Disconnected {
                        detail: "the server kept restarting the login stream".into(),
                    })
                    .await
                }
                RunEnd::Lost(detail) => self.emit(EngineEvent::Disconnected { detail }).await,
                RunEnd::Terminal | RunEnd::Stopped => {}
            }
            return;
        }
    }

    async fn emit(&self, ev: EngineEvent) {
        // The supervisor stopped listening: the session is over either way.
        let _ = self.events.send(ev).await;
    }

    async fn build(&self, raw_tx: mpsc::Sender<Arc<Event>>) -> anyhow::Result<Bot> {
        let transport = TokioWebSocketTransportFactory::new().with_url(self.cfg.url.clone());
        let bot = Bot::builder()
            .with_backend_arc(self.store.clone() as Arc<dyn Backend>)
            .with_transport_factory(transport)
            .with_http_client(self.http.as_ref().clone())
            .with_version(self.cfg.version)
            .with_push_name(self.cfg.device_name.clone())
            .skip_history_sync()
            .with_event_handler(Forwarder {
                tx: raw_tx,
                channel_id: self.shared.channel_id.clone(),
            })
            .with_inbound_durability_hook(CommitHook {
                events: self.events.clone(),
                media: self.inbound_media.clone(),
            })
            .build()
            .await?;
        Ok(bot)
    }

    /// The device is linked: make it durable, then tell the supervisor (phone number and the state marker).
    async fn announce_paired(&self, client: &Arc<Client>, jid: &Jid) {
        // Durable before we say so: a restart from here on resumes this device instead of pairing again.
        self.settle_device(client).await;
        self.emit(EngineEvent::Paired {
            phone_number: e164(jid),
        })
        .await;
        self.emit(EngineEvent::StateChanged { state: marker(jid) })
            .await;
    }

    /// Makes the stored device the one the client holds (its identity: phone number, LID, account signature).
    /// A flush alone is not enough: every device change wakes the crate's background saver, which takes the
    /// dirty flag and then writes; a flush that comes in between finds nothing dirty and returns before that
    /// write has landed, and a client built right after (the login that follows the 515) can load the device as
    /// it was before the pairing and show a QR code again (the suspected cause of 1–3 of 5 channels unpaired with
    /// release builds, whose 515 comes quickly). So: flush, read back, and write the client's device ourselves
    /// until the store holds it. (A late write of an older device is the store's to refuse: `PgStore::save`.)
    async fn settle_device(&self, client: &Arc<Client>) {
        let channel_id = &self.shared.channel_id;
        let pm = client.persistence_manager();
        for attempt in 0..20u32 {
            if let Err(e) = pm.flush().await {
                tracing::warn!(%channel_id, error = %e, "flushing the device failed");
            }
            let want = pm.get_device_snapshot();
            match self.store.load().await {
                Ok(Some(have))
                    if have.pn == want.pn
                        && have.lid == want.lid
                        && have.account.is_some() == want.account.is_some() =>
                {
                    tracing::debug!(%channel_id, attempt, has_pn = have.pn.is_some(), "stored device settled");
                    return;
                }
                Ok(_) if attempt > 0 => {
                    tracing::debug!(%channel_id, attempt, "the stored device lags the client's; writing it");
                    if let Err(e) = self.store.save(&want).await {
                        tracing::warn!(%channel_id, error = %e, "saving the device failed");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%channel_id, error = %e, "reading the device back failed"),
            }
            tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt + 1))).await;
        }
        tracing::warn!(%channel_id, "the stored device still differs from the client's");
    }

    async fn run_client(&self) -> RunEnd {
        if self.shared.stop.is_cancelled() {
            return RunEnd::Stopped;
        }
        let (raw_tx, mut raw_rx) = mpsc::channel(RAW_QUEUE);
        let bot = match self.build(raw_tx).await {
            Ok(b) => b,
            Err(e) => return RunEnd::Lost(format!("building the client: {e:#}")),
        };
        let client = bot.client();
        // Our supervisor decides about reconnects (with its own backoff and retry budget).
        client.enable_auto_reconnect.store(false, Ordering::Relaxed);
        *self.shared.client.lock().await = Some(client.clone());
        let started_unpaired = client.pn().is_none();
        tracing::debug!(channel_id = %self.shared.channel_id, started_unpaired, "whatsapp client starting");
        let mut handle = bot.spawn();
        let mut st = RunState::default();
        loop {
            tokio::select! {
                biased;
                _ = self.shared.stop.cancelled() => {
                    stop_client(&client, handle).await;
                    return RunEnd::Stopped;
                }
                ev = raw_rx.recv() => {
                    let Some(ev) = ev else { continue };
                    if let Some(end) = self.on_event(&client, &ev, &mut st).await {
                        stop_client(&client, handle).await;
                        self.finish(end).await;
                        return RunEnd::Terminal;
                    }
                }
                _ = &mut handle => {
                    tracing::debug!(
                        channel_id = %self.shared.channel_id,
                        paired = st.paired,
                        connected = st.connected,
                        has_pn = client.pn().is_some(),
                        queued = raw_rx.len(),
                        "whatsapp client run loop ended"
                    );
                    // Events dispatched before the run loop ended are already queued.
                    while let Ok(ev) = raw_rx.try_recv() {
                        if let Some(end) = self.on_event(&client, &ev, &mut st).await {
                            client.disconnect().await;
                            self.finish(end).await;
                            return RunEnd::Terminal;
                        }
                    }
                    // The crate announces PairSuccess only after answering the phone, so under load the server's
                    // 515 can end the run loop before the event is dispatched: a device id that appeared in the
                    // store of a client that started unpaired is the proof that the pairing happened.
                    if started_unpaired && !st.paired && !st.connected && let Some(jid) = client.pn() {
                        st.paired = true;
                        self.announce_paired(&client, &jid).await;
                    }
                    if st.paired && !st.connected {
                        // Make sure the new identity is on disk before the next client loads it.
                        client.disconnect().await;
                        self.settle_device(&client).await;
                        return RunEnd::LoginRestart;
                    }
                    return RunEnd::Lost(st.detail.take().unwrap_or_else(|| {
                        if st.connected { "connection closed".into() } else { "could not connect".into() }
                    }));
                }
            }
        }
    }

    /// After a terminal event: the client is stopped (it flushes its state on the way out), so a wipe now is
    /// final; then the supervisor hears of it.
    async fn finish(&self, end: Terminal) {
        if end.wipe {
            self.wipe().await;
        }
        self.emit(end.event).await;
    }

    /// Hands one crate event to the supervisor; Some when the session is over for good.
    async fn on_event(
        &self,
        client: &Arc<Client>,
        ev: &Event,
        st: &mut RunState,
    ) -> Option<Terminal> {
        let channel_id = &self.shared.channel_id;
        match ev {
            Event::PairingQrCode(qr) => {
                self.emit(EngineEvent::Qr {
                    code: qr.code.clone(),
                    expires_at: Utc::now() + qr.timeout,
                })
                .await;
            }
            Event::PairingQrCodesExhausted(_) => self.emit(EngineEvent::QrExhausted).await,
            Event::PairingCode(pc) => {
                self.emit(EngineEvent::PairCode {
                    code: format_pair_code(&pc.code),
                    expires_at: Utc::now() + pc.timeout,
                })
                .await;
            }
            // Already announced when the run loop's end found the device id first: nothing to add.
            Event::PairSuccess(ok) if !st.paired => {
                st.paired = true;
                self.announce_paired(client, &ok.id).await;
            }
            Event::PairError(e) => {
                st.detail = Some(format!("pairing failed: {}", e.error));
            }
            Event::Connected(_) => {
                st.connected = true;
                match client.pn() {
                    Some(pn) => {
                        self.emit(EngineEvent::Connected {
                            phone_number: e164(&pn),
                        })
                        .await
                    }
                    None => {
                        tracing::warn!(channel_id, "connected without a phone number in the store");
                        self.emit(EngineEvent::Connected {
                            phone_number: String::new(),
                        })
                        .await
                    }
                }
            }
            Event::Disconnected(d) => {
                st.detail = Some(d.reason.to_string());
            }
            Event::LoggedOut(lo) => {
                let reason = if lo.reason == ConnectFailureReason::AccountLocked {
                    None
                } else if lo.on_connect {
                    Some(LogoutReason::SessionInvalidated)
                } else {
                    Some(LogoutReason::Logout)
                };
                let event = match reason {
                    Some(reason) => EngineEvent::LoggedOut { reason },
                    // A locked account needs a person, like a ban; its keys are dead all the same.
                    None => EngineEvent::Failed {
                        reason: FailReason::Banned { until: None },
                    },
                };
                return Some(Terminal { event, wipe: true });
            }
            Event::StreamReplaced(_) => {
                return Some(Terminal {
                    event: EngineEvent::LoggedOut {
                        reason: LogoutReason::KickedOtherDevice,
                    },
                    wipe: true,
                });
            }
            Event::TemporaryBan(ban) => {
                let until = Utc::now().checked_add_signed(ban.expire);
                return Some(Terminal::keep(EngineEvent::Failed {
                    reason: FailReason::Banned { until },
                }));
            }
            Event::ClientOutdated(_) => {
                tracing::error!(
                    channel_id,
                    version = ?self.cfg.version,
                    "WhatsApp refuses this client version as outdated; set WHATISUP_WA_VERSION to a current one"
                );
                return Some(Terminal::keep(EngineEvent::Failed {
                    reason: FailReason::ClientOutdated,
                }));
            }
            Event::ConnectFailure(f) => match f.reason {
                ConnectFailureReason::ClientOutdated => {
                    return Some(Terminal::keep(EngineEvent::Failed {
                        reason: FailReason::ClientOutdated,
                    }));
                }
                ConnectFailureReason::TempBanned => {
                    return Some(Terminal::keep(EngineEvent::Failed {
                        reason: FailReason::Banned { until: None },
                    }));
                }
                other => st.detail = Some(format!("connect refused: {other:?}")),
            },
            Event::Receipt(r) => {
                let status = match r.r#type {
                    ReceiptType::Delivered => ReceiptStatus::Delivered,
                    ReceiptType::Read => ReceiptStatus::Read,
                    ReceiptType::Played => ReceiptStatus::Played,
                    _ => return None,
                };
                if r.source.is_from_me {
                    return None;
                }
                for id in &r.message_ids {
                    self.emit(EngineEvent::Receipt {
                        message_id: id.to_string(),
                        status,
                        at: r.timestamp,
                    })
                    .await;
                }
            }
            _ => {}
        }
        None
    }

    async fn wipe(&self) {
        if let Err(e) = self.store.retire_and_wipe().await {
            // The supervisor also wipes when the channel is next paired (a start without state clears the store).
            tracing::error!(channel_id = %self.shared.channel_id, error = %e, "wiping device keys failed");
        }
    }
}

/// The event that ends a session, and whether the device's keys die with it.
struct Terminal {
    event: EngineEvent,
    wipe: bool,
}

impl Terminal {
    /// Ends the session but keeps the keys (a ban or an outdated client: the device is still linked).
    fn keep(event: EngineEvent) -> Terminal {
        Terminal { event, wipe: false }
    }
}

#[derive(Default)]
struct RunState {
    paired: bool,
    connected: bool,
    detail: Option<String>,
}

async fn stop_client(client: &Arc<Client>, handle: BotHandle) {
    // disconnect() flushes pending acks, receipts and device state, then ends the run loop. Cut short by the
    // timeout, the dropped handle aborts the client's task.
    let graceful = async {
        client.disconnect().await;
        handle.await;
    };
    if tokio::time::timeout(STOP_TIMEOUT, graceful).await.is_err() {
        tracing::warn!("whatsapp client did not stop in time; aborted");
    }
}

/// What `session_state` holds for a WhatsApp channel: which account the store belongs to. The keys themselves
/// live in the sealed `wa_*` tables.
fn marker(jid: &Jid) -> Vec<u8> {
    json!({"engine": "whatsapp", "jid": jid.to_string()})
        .to_string()
        .into_bytes()
}

/// `+1 (555) 000-1111` → `15550001111`, the user part of a WhatsApp address.
fn digits(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

fn e164(jid: &Jid) -> String {
    format!("+{}", jid.user)
}

/// `ABCDEFGH` → `ABCD-EFGH`, as the phone shows it.
fn format_pair_code(code: &str) -> String {
    if code.len() == 8 && code.is_ascii() {
        format!("{}-{}", &code[..4], &code[4..])
    } else {
        code.to_string()
    }
}

/// The sender as an E.164 number where the stanza tells it (LID-addressed senders carry their phone number as
/// the alternate address), otherwise the address itself.
fn sender_of(info: &whatsapp_rust::prelude::MessageInfo) -> String {
    let src = &info.source;
    let pn = [Some(&src.sender), src.sender_alt.as_ref()]
        .into_iter()
        .flatten()
        .find(|j| j.server == Server::Pn);
    match pn {
        Some(j) => e164(j),
        None if src.is_group => src.chat.to_non_ad_string(),
        None => src.sender.to_non_ad_string(),
    }
}

/// Forwards the crate's lifecycle events, in dispatch order, to the session's driver. Dispatch is synchronous
/// inside the client, so this only queues.
struct Forwarder {
    tx: mpsc::Sender<Arc<Event>>,
    channel_id: String,
}

impl EventHandler for Forwarder {
    fn handle_event(&self, event: Arc<Event>) {
        if let Err(mpsc::error::TrySendError::Full(ev)) = self.tx.try_send(event) {
            tracing::warn!(channel_id = %self.channel_id, kind = ?ev.kind(), "engine event queue full; event dropped");
        }
    }

    fn interest(&self) -> EventInterest {
        EventInterest::of(&[
            EventKind::PairingQrCode,
            EventKind::PairingQrCodesExhausted,
            EventKind::PairingCode,
            EventKind::PairSuccess,
            EventKind::PairError,
            EventKind::Connected,
            EventKind::Disconnected,
            EventKind::LoggedOut,
            EventKind::StreamReplaced,
            EventKind::TemporaryBan,
            EventKind::ClientOutdated,
            EventKind::ConnectFailure,
            EventKind::Receipt,
        ])
    }
}

/// Media messages of one batch downloaded at once (each also needs one of the process's download permits).
const BATCH_DOWNLOADS: usize = 8;

/// Inbound durability: the client acknowledges messages to WhatsApp only after this returns Ok, and we return
/// Ok only once the supervisor has committed the `message.received` events. A crash in between means WhatsApp
/// redelivers; the supervisor drops what it already committed.
struct CommitHook {
    events: mpsc::Sender<EngineEvent>,
    media: Arc<media_in::InboundMedia>,
}

#[async_trait]
impl InboundDurabilityHook for CommitHook {
    async fn on_messages(
        &self,
        client: Arc<Client>,
        batch: &[WaInbound],
    ) -> whatsapp_rust::anyhow::Result<()> {
        use futures::StreamExt as _;
        // Media is downloaded and stored before the batch is committed (and so before the ack). An offline drain's
        // batch can hold many media messages: they download side by side (up to BATCH_DOWNLOADS, within the
        // process's permits), and the batch keeps WhatsApp's order.
        let media = &*self.media;
        let client = &*client;
        // Messages from the account itself (sent on the phone) are not inbound traffic. The futures are made before
        // the stream (they run only when it polls them): a closure held across the await trips rustc's
        // higher-ranked lifetime check of async_trait's Send bound.
        let pending: Vec<_> = batch
            .iter()
            .filter(|m| !m.info.source.is_from_me)
            .map(|m| inbound_message(media, client, m))
            .collect();
        let bodies: Vec<whatsapp_rust::anyhow::Result<Option<InboundMessage>>> =
            futures::stream::iter(pending)
                .buffered(BATCH_DOWNLOADS)
                .collect()
                .await;
        // Protocol traffic has no body.
        let mut messages = Vec::with_capacity(bodies.len());
        for body in bodies {
            if let Some(m) = body? {
                messages.push(m);
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
        // The whole batch (one live message, or an offline drain's lot) commits in one transaction.
        let (ack, committed) = oneshot::channel();
        self.events
            .send(EngineEvent::Inbound { messages, ack })
            .await
            .map_err(|_| whatsapp_rust::anyhow::anyhow!("session ended before the commit"))?;
        committed
            .await
            .map_err(|_| whatsapp_rust::anyhow::anyhow!("messages not committed"))?;
        Ok(())
    }
}

/// One message of a hook's batch as an inbound message (its media downloaded and stored); None for protocol
/// traffic. Err only when the database failed.
async fn inbound_message(
    media: &media_in::InboundMedia,
    client: &Client,
    m: &WaInbound,
) -> whatsapp_rust::anyhow::Result<Option<InboundMessage>> {
    let from = sender_of(&m.info);
    let body = match media_in::attachment(m.message.get_base_message()) {
        Some(att) => media
            .body(client, &from, &m.info.id, &att)
            .await
            .map_err(|e| whatsapp_rust::anyhow::anyhow!("{e:#}"))?,
        None => match body_of(&m.message) {
            Some(body) => body,
            None => return Ok(None),
        },
    };
    Ok(Some(InboundMessage {
        message_id: m.info.id.to_string(),
        from,
        timestamp: m.info.timestamp,
        body,
    }))
}

/// The `message.received` body of a message a person wrote; None for protocol traffic (app-state key shares,
/// revokes, history notices) and bare sender-key distributions, which reach the hook like messages.
fn body_of(message: &whatsapp_rust::prelude::wa::Message) -> Option<serde_json::Value> {
    use whatsapp_rust::prelude::MessageField;
    let base = message.get_base_message();
    if let Some(text) = base.text_content() {
        return Some(json!({"type": "text", "text": text}));
    }
    if let Some(l) = base.location_message.as_option()
        && let (Some(lat), Some(lon)) = (l.degrees_latitude, l.degrees_longitude)
    {
        return Some(super::location_body(
            lat,
            lon,
            l.name.as_deref(),
            l.address.as_deref(),
        ));
    }
    if let Some(r) = base.reaction_message.as_option()
        && let Some(target) = r.key.as_option().and_then(|k| k.id.as_deref())
    {
        // An empty text removes an earlier reaction.
        return Some(super::reaction_body(
            target,
            r.text.as_deref().unwrap_or_default(),
        ));
    }
    if base.protocol_message.is_set() {
        return None;
    }
    let mut rest = base.clone();
    rest.sender_key_distribution_message = MessageField::none();
    rest.message_context_info = MessageField::none();
    if rest == whatsapp_rust::prelude::wa::Message::default() {
        return None;
    }
    Some(json!({"type": "unsupported"}))
}

mod media {
    //! Our media kinds as WhatsApp's media messages.
    use super::super::{MediaContent, MediaKind};
    use whatsapp_rust::download::MediaType;
    use whatsapp_rust::prelude::{MessageField, wa};
    use whatsapp_rust::upload::UploadResponse;

    pub fn media_type(kind: MediaKind) -> MediaType {
        match kind {
            MediaKind::Image => MediaType::Image,
            MediaKind::Video => MediaType::Video,
            MediaKind::Audio => MediaType::Audio,
            MediaKind::Document => MediaType::Document,
            MediaKind::Sticker => MediaType::Sticker,
        }
    }

    pub fn message(
        md: &MediaContent<'_>,
        up: UploadResponse,
        context: Option<wa::ContextInfo>,
    ) -> wa::Message {
        let context = context.map(MessageField::some).unwrap_or_default();
        // The fields every media message shares.
        macro_rules! media {
            ($m:ident, $t:ty { $($extra:tt)* }) => {
                <$t>::default_with(|$m: &mut $t| {
                    let m = &mut *$m;
                    m.url = Some(up.url.clone());
                    m.direct_path = Some(up.direct_path.clone());
                    m.mimetype = Some(md.mime_type.to_string());
                    m.media_key = Some(up.media_key.to_vec());
                    m.file_sha256 = Some(up.file_sha256.to_vec());
                    m.file_enc_sha256 = Some(up.file_enc_sha256.to_vec());
                    m.file_length = Some(up.file_length);
                    m.media_key_timestamp = Some(up.media_key_timestamp);
                    m.context_info = context.clone();
                    $($extra)*
                })
            };
        }
        let caption = md.caption.map(str::to_string);
        match md.kind {
            MediaKind::Image => wa::Message {
                image_message: MessageField::some(media!(m, wa::message::ImageMessage {
                    m.caption = caption.clone();
                })),
                ..Default::default()
            },
            MediaKind::Video => wa::Message {
                video_message: MessageField::some(media!(m, wa::message::VideoMessage {
                    m.caption = caption.clone();
                })),
                ..Default::default()
            },
            MediaKind::Audio => wa::Message {
                audio_message: MessageField::some(media!(m, wa::message::AudioMessage {})),
                ..Default::default()
            },
            MediaKind::Document => wa::Message {
                document_message: MessageField::some(media!(m, wa::message::DocumentMessage {
                    m.caption = caption.clone();
                    m.file_name = md.filename.map(str::to_string);
                    m.title = md.filename.map(str::to_string);
                })),
                ..Default::default()
            },
            MediaKind::Sticker => wa::Message {
                sticker_message: MessageField::some(media!(m, wa::message::StickerMessage {})),
                ..Default::default()
            },
        }
    }

    /// `T::default()` changed by `f` (the generated structs are non-exhaustive).
    trait DefaultWith: Default {
        fn default_with(f: impl FnOnce(&mut Self)) -> Self {
            let mut v = Self::default();
            f(&mut v);
            v
        }
    }
    impl<T: Default> DefaultWith for T {}
}

mod http {
    //! The crate's HTTP needs (media, version lookup) on reqwest, with timeouts.
    use std::time::Duration;

    use async_trait::async_trait;
    use whatsapp_rust::http::{HttpClient, HttpRequest, HttpResponse};

    /// Largest body accepted from a media server.
    const MAX_BODY: usize = 128 * 1024 * 1024;

    #[derive(Clone)]
    pub struct ReqwestHttp {
        client: reqwest::Client,
    }

    impl ReqwestHttp {
        pub fn new() -> anyhow::Result<ReqwestHttp> {
            let client = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(120))
                .build()?;
            Ok(ReqwestHttp { client })
        }
    }

    /// Why [`ReqwestHttp::get_capped`] got no body.
    pub enum Fetch {
        /// The body is larger than the cap (reading stopped there).
        TooLarge,
        /// The server answered with this non-success status.
        Status(u16),
        Failed(String),
    }

    /// The URL to fetch. Test builds: the fake server announces a loopback media host and serves plain HTTP.
    fn target(url: &str) -> String {
        #[cfg(feature = "fake-whatsapp")]
        if let Some(rest) = url.strip_prefix("https://")
            && (rest.starts_with("127.0.0.1:")
                || rest.starts_with("localhost:")
                || rest.starts_with("[::1]:"))
        {
            return format!("http://{rest}");
        }
        url.to_string()
    }

    impl ReqwestHttp {
        /// GETs a media URL, never holding more than `max` bytes of its body. Errors never name the URL (it
        /// carries media credentials).
        pub async fn get_capped(&self, url: &str, max: usize) -> Result<Vec<u8>, Fetch> {
            let failed = |e: reqwest::Error| Fetch::Failed(e.without_url().to_string());
            let mut resp = self.client.get(target(url)).send().await.map_err(failed)?;
            let status = resp.status();
            if !status.is_success() {
                return Err(Fetch::Status(status.as_u16()));
            }
            if resp.content_length().is_some_and(|n| n > max as u64) {
                return Err(Fetch::TooLarge);
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(failed)? {
                if body.len() + chunk.len() > max {
                    return Err(Fetch::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        }
    }

    #[async_trait]
    impl HttpClient for ReqwestHttp {
        async fn execute(
            &self,
            request: HttpRequest,
        ) -> whatsapp_rust::anyhow::Result<HttpResponse> {
            let method = reqwest::Method::from_bytes(request.method.as_bytes())?;
            let url = target(&request.url);
            let mut req = self.client.request(method, &url);
            for (k, v) in &request.headers {
                req = req.header(k, v);
            }
            if let Some(body) = request.body {
                req = req.body(body);
            }
            let resp = req.send().await?;
            let status_code = resp.status().as_u16();
            if resp.content_length().is_some_and(|n| n as usize > MAX_BODY) {
                whatsapp_rust::anyhow::bail!("response body too large");
            }
            let body = resp.bytes().await?;
            if body.len() > MAX_BODY {
                whatsapp_rust::anyhow::bail!("response body too large");
            }
            Ok(HttpResponse {
                status_code,
                body: body.to_vec(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints() {
        assert!(is_loopback_ws("ws://127.0.0.1:5555/ws/chat"));
        assert!(is_loopback_ws("ws://localhost:1/ws/chat"));
        assert!(is_loopback_ws("ws://[::1]:80/ws/chat"));
        assert!(!is_loopback_ws("wss://web.whatsapp.com/ws/chat"));
        assert!(!is_loopback_ws("ws://127.0.0.1.evil.com/ws"));
        assert!(!is_loopback_ws("ws://10.0.0.1/ws"));
        assert!(!is_loopback_ws("garbage"));
    }

    #[test]
    fn pair_codes_shown_as_on_the_phone() {
        assert_eq!(format_pair_code("ABCDEFGH"), "ABCD-EFGH");
        assert_eq!(format_pair_code("ABC"), "ABC");
    }
}

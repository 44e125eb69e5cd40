//! `fakewa`: a fake WhatsApp Web server that the unmodified `whatsapp-rust` client talks to as if
//! it were WhatsApp. It serves the client WebSocket at `/ws/chat` and a JSON control API on the
//! same port, and plays every other party: the server, the user's phone (QR and pair-code linking,
//! the app-state key share) and any number of contacts with real Signal identities.
//!
//! Test and benchmark use only; the client must be built with `danger-skip-cert-chain-verify`,
//! because our certificate chain is not signed by WhatsApp's root key.
//!
//! What the client experiences:
//! - A fresh store gets six QR refs; [`FakeWa::scan`] (or [`FakeWa::pair_code`] for a client
//!   built `with_pair_code`) links it to a phone number, then the stream ends with 515 and the
//!   client logs in. One companion per phone number: pairing the number again unlinks the old
//!   one. Devices live in memory for the life of the server; a restarted client with the same
//!   store resumes over Noise IK without a QR code.
//! - After login the phone shares the app-state key and the first sync carries the account's
//!   push name (`fakewa <number>`), so `Connected` follows within a fraction of a second and
//!   restarts take the client's plain reconnection path. The key share reaches the client as an
//!   `Event::Messages` with a `protocolMessage` from its own number, as with a real phone.
//! - Contacts are any phone number, each with its own Signal identity. [`FakeWa::inbound`] sends
//!   at once to a connected device and queues for a paired one that is offline; a message the
//!   client has not acknowledged is delivered (again, marked `offline`) at its next login, before
//!   the `<offline count=N>` marker, as WhatsApp's offline queue does.
//! - A message id the client already sent is acknowledged again and dropped (WhatsApp's server-side dedupe), so a
//!   client re-sending after a crash delivers nothing twice ([`FakeWa::outbound_duplicates`] counts repeats).
//! - Receipts for the client's messages come only on command ([`FakeWa::receipt`]).
//! - A message the client cannot decrypt is answered like a real sender would: the contact
//!   re-sends it on a fresh session when the client's retry receipt arrives.
//!
//! The binary (`cargo run --release -p fakewa -- --listen 127.0.0.1:PORT`) prints
//! `fakewa listening on ADDR (client URL ws://ADDR/ws/chat)` on stdout and serves the control API
//! on the same port; errors are `{"error": "..."}` with 404 (unknown phone or object), 409 (not
//! connected, or the exchange failed) or 400 (bad request):
//!
//! | Request | Body | Answer |
//! |---|---|---|
//! | `POST /control/scan` | `{"qr","phone_number"}` | [`DeviceInfo`] |
//! | `POST /control/pair-code` | `{"phone_number","code"}` | [`DeviceInfo`] |
//! | `GET /control/devices` | | `[DeviceInfo]` |
//! | `GET /control/devices/{phone}` | | [`DeviceInfo`] |
//! | `POST /control/devices/{phone}/drop`, `…/logout`, `…/replace`, `…/outdated` | | `{"ok":true}` |
//! | `POST /control/devices/{phone}/ban` | optional `{"expire_secs"}` (default a day) | `{"ok":true}` |
//! | `POST /control/devices/{phone}/inbound` | `{"from","text"}` (+ `"corrupt":true`); `{"from","type":"location","latitude","longitude","name"?,"address"?}`; `{"from","type":"reaction","message_id","emoji"}`; `{"from","type":"image"\|"video"\|"audio"\|"document"\|"sticker","data_base64","mime_type","caption"?,"filename"?,"tamper"?}` | `{"message_id"}` |
//! | `GET /control/devices/{phone}/inbound` | | `[InboundStatus]` |
//! | `GET /control/devices/{phone}/inbound/{message_id}` | | [`InboundStatus`] |
//! | `POST /control/devices/{phone}/receipt` | `{"message_id","status":"delivered"\|"read"}` | `{"ok":true}` |
//! | `GET /control/devices/{phone}/outbound` | | `[{"to","text","message_id"}]` (+ `"type"` and `"location"` or `"reaction"` for those kinds, `"reply_to"` for a quote) |
//! | `GET /control/stats` | | [`Stats`] |

mod appstate;
mod conn;
mod http;
mod iq;
mod noise;
mod pairing;
mod signal;
mod state;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::state::Shared;

/// A running fake server. Dropping it stops the server (use [`FakeWa::shutdown`] to wait for it).
pub struct FakeWa {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A linked companion device, as the control API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub phone_number: String,
    /// The companion's device number (`phone:device@s.whatsapp.net`).
    pub device_id: u16,
    pub jid: String,
    pub lid: String,
    /// Logged in on a live connection right now.
    pub connected: bool,
    /// Unix seconds until which logins are refused with a temporary ban, if banned.
    pub banned_until: Option<u64>,
    /// Unix seconds of the pairing.
    pub paired_at: u64,
    /// Successful logins since pairing.
    pub logins: u64,
    /// The Noise pattern of the last login: `"XX"`, `"IK"` or `"XX-fallback"`.
    pub last_handshake: Option<String>,
    /// The last login opened with the edge-routing pre-intro the server handed out earlier.
    pub last_edge_routed: bool,
    /// One-time pre-keys the client uploaded and contacts have not consumed yet.
    pub prekeys: usize,
    /// How often the phone sent the app-state key share (until the client has the push name).
    pub key_shares: u32,
}

/// Server-wide counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// WebSocket connections open right now (paired or not).
    pub open_connections: u64,
    pub paired_devices: usize,
    pub connected_devices: usize,
    /// Completed Noise handshakes by pattern since start.
    pub handshakes_xx: u64,
    pub handshakes_ik: u64,
    pub handshakes_xx_fallback: u64,
    /// Live heap bytes of the process, when the embedding binary counts them (the `fakewa`
    /// binary does; see [`set_heap_meter`]).
    pub heap_bytes: Option<u64>,
    /// The most media downloads the media host answered at once since start.
    #[serde(default)]
    pub media_downloads_max: u64,
    /// The most media uploads the media host took at once since start.
    #[serde(default)]
    pub media_uploads_max: u64,
}

static HEAP_METER: std::sync::OnceLock<fn() -> u64> = std::sync::OnceLock::new();

/// Lets [`Stats::heap_bytes`] report the process's live heap, read through `meter` (typically a
/// counting global allocator in the binary). Only the first call has an effect.
pub fn set_heap_meter(meter: fn() -> u64) {
    let _ = HEAP_METER.set(meter);
}

pub(crate) fn heap_bytes() -> Option<u64> {
    HEAP_METER.get().map(|meter| meter())
}

/// A message the client sent to a fake contact, decrypted with the contact's Signal session. A text has
/// only `to`, `text` and `message_id` (and `reply_to` when it quotes); other kinds name their `type`, with
/// an empty `text`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound {
    /// The contact's phone number.
    pub to: String,
    /// The text, or a media message's caption (empty when it has none).
    pub text: String,
    pub message_id: String,
    /// text | image | video | audio | document | sticker | location | reaction
    #[serde(default = "text_kind")]
    pub r#type: String,
    /// Media: what the contact downloaded from the fake media host and decrypted with the message's key.
    #[serde(default)]
    pub media: Option<OutboundMedia>,
    /// `{"latitude","longitude","name","address"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<serde_json::Value>,
    /// `{"message_id","emoji","from_me","remote_jid","participant"}`: the key of the message reacted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction: Option<serde_json::Value>,
    /// The id of the message a reply quotes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

impl Outbound {
    /// What a contact sees of a decrypted message; None for kinds the fake does not read.
    pub(crate) fn of(
        to: String,
        message_id: String,
        m: &whatsapp_rust::waproto::whatsapp::Message,
    ) -> Option<Outbound> {
        use whatsapp_rust::wacore::proto_helpers::MessageExt as _;
        let base = m.get_base_message();
        let mut out = Outbound {
            to,
            text: String::new(),
            message_id,
            r#type: text_kind(),
            media: None,
            location: None,
            reaction: None,
            reply_to: None,
        };
        if let Some(text) = base.text_content() {
            out.text = text.to_string();
            out.reply_to = base
                .extended_text_message
                .as_option()
                .and_then(|e| e.context_info.as_option())
                .and_then(|c| c.stanza_id.clone());
        } else if let Some(l) = base.location_message.as_option() {
            out.r#type = "location".into();
            out.location = Some(serde_json::json!({
                "latitude": l.degrees_latitude,
                "longitude": l.degrees_longitude,
                "name": l.name,
                "address": l.address,
            }));
            out.reply_to = l.context_info.as_option().and_then(|c| c.stanza_id.clone());
        } else if let Some(r) = base.reaction_message.as_option() {
            let key = r.key.as_option();
            out.r#type = "reaction".into();
            out.reaction = Some(serde_json::json!({
                "message_id": key.and_then(|k| k.id.clone()),
                "from_me": key.and_then(|k| k.from_me),
                "remote_jid": key.and_then(|k| k.remote_jid.clone()),
                "participant": key.and_then(|k| k.participant.clone()),
                "emoji": r.text,
            }));
        } else {
            return None;
        }
        Some(out)
    }
}

fn text_kind() -> String {
    "text".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMedia {
    /// Hex SHA-256 of the decrypted bytes.
    pub sha256: String,
    pub size: u64,
    pub mime_type: String,
    pub filename: Option<String>,
}

/// A message injected with [`FakeWa::inbound`] and whether the client has acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundStatus {
    pub message_id: String,
    pub from: String,
    pub text: String,
    /// Unix milliseconds when the stanza was handed to the connection.
    pub sent_at_ms: u64,
    /// Unix milliseconds of the client's delivery receipt (or transport ack), if it came.
    pub acked_at_ms: Option<u64>,
    /// The receipt type the client sent (`"delivery"` for a plain receipt, else e.g. `"read"`).
    pub receipt: Option<String>,
    /// Retry receipts the contact answered by re-sending (the client could not decrypt).
    pub retries: u32,
    /// `"location"` or `"reaction"`; absent for a text (then `text` is the message).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The padded plaintext of a non-text message, re-encrypted for a retry.
    #[serde(skip)]
    pub(crate) payload: Option<Vec<u8>>,
}

/// A message a fake contact can send besides a text.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundKind {
    Location {
        latitude: f64,
        longitude: f64,
        name: Option<String>,
        address: Option<String>,
    },
    /// A reaction to the message with WhatsApp id `message_id` (one the device sent, or any other id);
    /// an empty emoji removes it.
    Reaction { message_id: String, emoji: String },
    /// An image, video, audio, document or sticker (`kind`): the bytes are encrypted with a fresh media key as a
    /// WhatsApp client does before uploading, kept on the fake media host, and the message carries the URL,
    /// direct path, media key and both hashes. `tamper` flips a byte of the stored blob after the hashes were
    /// taken, so the recipient's verification must fail.
    Media {
        kind: String,
        data: Vec<u8>,
        mime_type: String,
        caption: Option<String>,
        filename: Option<String>,
        tamper: bool,
    },
}

/// What a fake contact reports about a message the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptStatus {
    Delivered,
    Read,
}

/// Why a control request could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// No device is paired for this phone number.
    UnknownPhone(String),
    /// The device exists but has no live, logged-in connection.
    NotConnected(String),
    /// A referenced object (QR ref, message id…) does not exist.
    NotFound(String),
    /// The request itself is malformed.
    BadRequest(String),
    /// The request is valid but the protocol exchange it started failed.
    Failed(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownPhone(p) => write!(f, "no device is paired for phone number {p}"),
            Self::NotConnected(p) => write!(f, "the device of phone number {p} is not connected"),
            Self::NotFound(what) => write!(f, "{what}"),
            Self::BadRequest(what) => write!(f, "bad request: {what}"),
            Self::Failed(what) => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for ControlError {}

pub type ControlResult<T> = Result<T, ControlError>;

impl FakeWa {
    /// Serves `/ws/chat` and `/control/…` on `listener` until shut down.
    pub async fn start(listener: TcpListener) -> anyhow::Result<FakeWa> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new()?);
        // Media URLs are https://<this address>/...; the gateway's test build fetches them over plain HTTP.
        shared.set_media_host(addr.to_string());
        let app = http::router(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!("fakewa server stopped: {e}");
            }
        });
        tracing::info!("fakewa listening on {addr}");
        Ok(FakeWa {
            shared,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The client WebSocket URL, for `TokioWebSocketTransportFactory::with_url`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws/chat", self.addr)
    }

    /// The fake phone scans a QR code shown by a client (`Event::PairingQrCode::code`) and links
    /// it to `phone_number`. Returns once the client has countersigned the pairing (it then gets
    /// the 515 stream error and reconnects to log in).
    pub async fn scan(&self, qr: &str, phone_number: &str) -> ControlResult<DeviceInfo> {
        self.shared.scan(qr, phone_number).await
    }

    /// The fake phone enters the pairing code a client displays (`Event::PairingCode::code`)
    /// for `phone_number`. Returns once the pairing is countersigned; a wrong code is an error.
    pub async fn pair_code(&self, phone_number: &str, code: &str) -> ControlResult<DeviceInfo> {
        self.shared.pair_code(phone_number, code).await
    }

    /// Drops the device's connection without a word, like a network blip.
    pub async fn drop_connection(&self, phone_number: &str) -> ControlResult<()> {
        self.shared.drop_connection(phone_number).await
    }

    /// Unlinks the device from the phone: `stream:error` 401 with `device_removed` if connected,
    /// and the device is forgotten, so its credentials get `<failure reason=401>` from now on.
    pub async fn logout(&self, phone_number: &str) -> ControlResult<()> {
        self.shared.logout(phone_number).await
    }

    /// Tells the connection that another session replaced it (`conflict type=replaced`).
    pub async fn replace(&self, phone_number: &str) -> ControlResult<()> {
        self.shared.replace(phone_number).await
    }

    /// Temporarily bans the account: the live connection (if any) and every login until the ban
    /// expires get `<failure reason=402 code=101 expire=…>`.
    pub async fn ban(&self, phone_number: &str, expire_secs: u64) -> ControlResult<()> {
        self.shared.ban(phone_number, expire_secs).await
    }

    /// Rejects the live connection as an outdated client (`<failure reason=405>`). One-shot: a
    /// later login is accepted again.
    pub async fn outdated(&self, phone_number: &str) -> ControlResult<()> {
        self.shared.outdated(phone_number).await
    }

    /// Delivers a text from the fake contact `from` (a phone number) to the device, Signal-
    /// encrypted (`pkmsg` for a new session, `msg` afterwards), at once if it is connected, else
    /// at its next login (offline queue, at most 10,000 per device). Returns the message id.
    pub async fn inbound(
        &self,
        phone_number: &str,
        from: &str,
        text: &str,
    ) -> ControlResult<String> {
        self.shared.inbound(phone_number, from, text, false).await
    }

    /// A location, a reaction or a media message from the fake contact `from`, delivered like [`Self::inbound`].
    pub async fn inbound_kind(
        &self,
        phone_number: &str,
        from: &str,
        kind: InboundKind,
    ) -> ControlResult<String> {
        self.shared.inbound_kind(phone_number, from, kind).await
    }

    /// Like [`Self::inbound`], but the first delivery is corrupted in transit: the client cannot
    /// decrypt it, sends a retry receipt, and the contact re-sends on a fresh session (what
    /// WhatsApp senders do). Exercises the client's retry path.
    pub async fn inbound_corrupted(
        &self,
        phone_number: &str,
        from: &str,
        text: &str,
    ) -> ControlResult<String> {
        self.shared.inbound(phone_number, from, text, true).await
    }

    /// The state of a message injected with [`Self::inbound`].
    pub async fn inbound_status(
        &self,
        phone_number: &str,
        message_id: &str,
    ) -> ControlResult<InboundStatus> {
        self.shared.inbound_status(phone_number, message_id)
    }

    /// Every message injected for the device, oldest first.
    pub async fn inbound_list(&self, phone_number: &str) -> ControlResult<Vec<InboundStatus>> {
        self.shared.inbound_list(phone_number)
    }

    /// Waits until the client acknowledged the injected message; `Ok(false)` on timeout.
    pub async fn wait_inbound_acked(
        &self,
        phone_number: &str,
        message_id: &str,
        timeout: Duration,
    ) -> ControlResult<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self
                .shared
                .inbound_status(phone_number, message_id)?
                .acked_at_ms
                .is_some()
            {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The contact reports delivery or reading of a message the client sent it.
    pub async fn receipt(
        &self,
        phone_number: &str,
        message_id: &str,
        status: ReceiptStatus,
    ) -> ControlResult<()> {
        self.shared.receipt(phone_number, message_id, status).await
    }

    /// Message ids the device sent again after the server had accepted them (dropped, not delivered).
    pub fn outbound_duplicates(&self, phone_number: &str) -> ControlResult<u64> {
        self.shared.outbound_duplicates(phone_number)
    }

    /// The texts the client sent to fake contacts, in the order the server received them.
    pub async fn outbound(&self, phone_number: &str) -> ControlResult<Vec<Outbound>> {
        self.shared.outbound(phone_number)
    }

    /// Every paired device, ordered by phone number.
    pub async fn devices(&self) -> Vec<DeviceInfo> {
        self.shared.devices()
    }

    /// One paired device.
    pub async fn device(&self, phone_number: &str) -> ControlResult<DeviceInfo> {
        self.shared.device(phone_number)
    }

    pub async fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Makes the media host wait this long before answering each download or upload (a slow CDN).
    pub fn set_media_delay(&self, delay: std::time::Duration) {
        self.shared.set_media_delay(delay);
    }

    /// Closes every connection and stops the server.
    pub async fn shutdown(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        self.shared.close_all_connections();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for FakeWa {
    fn drop(&mut self) {
        self.shared.close_all_connections();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

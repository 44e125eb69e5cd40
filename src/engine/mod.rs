//! The `Engine` interface: what a WhatsApp implementation gives the session supervisor. Engines emit our own
//! typed events; no type of the WhatsApp crate crosses this boundary.
//!
//! The supervisor owns policy: it persists state, decides reconnects (with backoff), and maps events to channel
//! statuses. An engine session is one connection attempt; after `Disconnected` the supervisor stops it and, later,
//! starts a fresh one from the persisted state.

pub mod sandbox;
pub mod whatsapp;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Transient: the supervisor retries with backoff.
    #[error("network: {0}")]
    Network(String),
    /// The request does not fit the session's state (e.g. a scan with no QR showing).
    #[error("{0}")]
    InvalidState(String),
    #[error("not a sandbox channel")]
    NotSandbox,
    #[error("{0}")]
    Other(String),
}

pub struct StartRequest {
    pub channel_id: String,
    /// The state blob last emitted in `StateChanged`, unsealed. None: a new device (pairing follows).
    pub state: Option<Vec<u8>>,
    /// Where the session sends its events, in order.
    pub events: mpsc::Sender<EngineEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutReason {
    /// Unlinked on the phone.
    Logout,
    /// The server invalidated the session (device removed, bad keys).
    SessionInvalidated,
    /// Another client took over the session.
    KickedOtherDevice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    Banned { until: Option<DateTime<Utc>> },
    ClientOutdated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    Delivered,
    Read,
    Played,
}

impl ReceiptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Read => "read",
            ReceiptStatus::Played => "played",
        }
    }

    pub fn parse(s: &str) -> Option<ReceiptStatus> {
        match s {
            "delivered" => Some(ReceiptStatus::Delivered),
            "read" => Some(ReceiptStatus::Read),
            "played" => Some(ReceiptStatus::Played),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct InboundMessage {
    /// The WhatsApp message id.
    pub message_id: String,
    /// E.164 sender or "<id>@g.us".
    pub from: String,
    pub timestamp: DateTime<Utc>,
    /// `message.received` data: type, text, media, ... A body with `"event": "message.reaction"` is a reaction
    /// instead: `{"event", "whatsapp_id" (the message reacted to), "emoji"}`.
    pub body: Value,
}

/// The `event` key of an [`InboundMessage`] body that makes it a reaction.
pub const REACTION_EVENT: &str = "message.reaction";

/// The body of an inbound reaction to the message with WhatsApp id `target`.
pub fn reaction_body(target: &str, emoji: &str) -> Value {
    serde_json::json!({"event": REACTION_EVENT, "whatsapp_id": target, "emoji": emoji})
}

/// The `message.received` body of a location.
pub fn location_body(
    latitude: f64,
    longitude: f64,
    name: Option<&str>,
    address: Option<&str>,
) -> Value {
    serde_json::json!({
        "type": "location",
        "location": {"latitude": latitude, "longitude": longitude, "name": name, "address": address},
    })
}

#[derive(Debug)]
pub enum EngineEvent {
    /// A QR code to show; a new one replaces it on rotation.
    Qr {
        code: String,
        expires_at: DateTime<Utc>,
    },
    /// Every QR code went unscanned.
    QrExhausted,
    PairCode {
        code: String,
        expires_at: DateTime<Utc>,
    },
    /// The phone accepted the pairing; the login handshake follows.
    Paired {
        phone_number: String,
    },
    /// Persist this (sealed) before acting on later events; a restart starts from it.
    StateChanged {
        state: Vec<u8>,
    },
    Connected {
        phone_number: String,
    },
    /// Transient loss.
    Disconnected {
        detail: String,
    },
    /// The session is gone for good; keys must be wiped.
    LoggedOut {
        reason: LogoutReason,
    },
    /// A person must act.
    Failed {
        reason: FailReason,
    },
    /// Acknowledge only once committed: the engine acks to WhatsApp after `ack` fires. One message when live,
    /// a whole batch from an offline drain: they commit together (one transaction), all or none.
    Inbound {
        /// A Vec (not an array) keeps the event small: every session's event queue is sized by the largest event.
        messages: Vec<InboundMessage>,
        ack: oneshot::Sender<()>,
    },
    Receipt {
        message_id: String,
        status: ReceiptStatus,
        at: DateTime<Utc>,
    },
}

/// What the sandbox's simulated phone can be made to do (contract §4.3). Serialisable: it travels to the node
/// that runs the session.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SandboxAction {
    Scan {
        phone_number: Option<String>,
    },
    Drop {
        duration_ms: u64,
    },
    Revoke,
    Ban,
    /// `message_id` is chosen by the caller, so it is known wherever the simulated phone runs.
    Inbound {
        message_id: String,
        from: String,
        text: String,
    },
    Receipt {
        message_id: String,
        status: ReceiptStatus,
    },
    /// A location arrives (`message.received`, type location).
    InboundLocation {
        message_id: String,
        from: String,
        latitude: f64,
        longitude: f64,
        name: Option<String>,
        address: Option<String>,
    },
    /// A contact reacts to a message (`message.reaction`); `target` is our id (`msg_...`), our message's
    /// WhatsApp id, or any WhatsApp id. An empty emoji removes the reaction.
    InboundReaction {
        message_id: String,
        from: String,
        target: String,
        emoji: String,
    },
    /// A media message arrives. The bytes are stored already (the API stored them before the action, as the
    /// action may travel to another node through NOTIFY); `media` is the event's `media` object (signed URL, ...).
    InboundMedia {
        message_id: String,
        from: String,
        /// image | video | audio | document | sticker
        kind: String,
        caption: Option<String>,
        media: Value,
    },
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// "whatsapp" or "sandbox".
    fn name(&self) -> &'static str;
    /// Opens one connection attempt. An `Err(Network)` is retried by the supervisor with backoff.
    async fn start(&self, req: StartRequest) -> Result<Box<dyn EngineSession>, EngineError>;
    /// Deletes whatever the engine keeps for the channel outside `session_state` (the device's keys). Called
    /// once no session of the channel runs any more after a logout or a delete.
    async fn forget(&self, _channel_id: &str) -> Result<(), EngineError> {
        Ok(())
    }
}

/// An outbound message as the engine sends it.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// E.164 or "<id>@g.us".
    pub to: &'a str,
    /// The WhatsApp id, fixed before the first attempt; every attempt carries it.
    pub message_id: &'a str,
    pub content: Content<'a>,
    pub reply_to: Option<Quoted<'a>>,
}

/// What an outbound message carries: one variant per kind of message of contract §6 (the outbox builds it from
/// the row's `type` and `body`; each engine maps every variant).
#[derive(Debug, Clone, Copy)]
pub enum Content<'a> {
    Text(&'a str),
    Location {
        latitude: f64,
        longitude: f64,
        name: Option<&'a str>,
        address: Option<&'a str>,
    },
    Reaction(Reaction<'a>),
    /// image, video, audio, document, sticker: the bytes as stored (the engine encrypts and uploads them).
    Media(MediaContent<'a>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    Document,
    Sticker,
}

impl MediaKind {
    pub fn parse(s: &str) -> Option<MediaKind> {
        Some(match s {
            "image" => MediaKind::Image,
            "video" => MediaKind::Video,
            "audio" => MediaKind::Audio,
            "document" => MediaKind::Document,
            "sticker" => MediaKind::Sticker,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
            MediaKind::Document => "document",
            MediaKind::Sticker => "sticker",
        }
    }
}

#[derive(Clone, Copy)]
pub struct MediaContent<'a> {
    pub kind: MediaKind,
    pub mime_type: &'a str,
    pub data: &'a [u8],
    /// image, video, document.
    pub caption: Option<&'a str>,
    /// document.
    pub filename: Option<&'a str>,
}

/// Not the bytes (up to the media cap) in a debug line.
impl std::fmt::Debug for MediaContent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaContent")
            .field("kind", &self.kind)
            .field("mime_type", &self.mime_type)
            .field("len", &self.data.len())
            .finish_non_exhaustive()
    }
}

/// A reaction names the message it reacts to by its WhatsApp key.
#[derive(Debug, Clone, Copy)]
pub struct Reaction<'a> {
    /// The WhatsApp id of the message reacted to.
    pub message_id: &'a str,
    /// The message is ours (we sent it).
    pub from_me: bool,
    /// Its author (E.164) when someone else wrote it.
    pub participant: Option<&'a str>,
    /// One emoji; "" removes an earlier reaction.
    pub emoji: &'a str,
}

/// The message a reply quotes.
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a> {
    /// Its WhatsApp id.
    pub message_id: &'a str,
    /// Its author (E.164) when someone else wrote it; None for our own message.
    pub participant: Option<&'a str>,
}

#[async_trait]
pub trait EngineSession: Send + Sync {
    async fn request_pair_code(&self, phone_number: &str) -> Result<(), EngineError>;
    /// Sends a text to an E.164 number under `message_id`, fixed by the caller before the send (see
    /// [`new_message_id`]) so that a send interrupted by a crash can be recognised, not repeated.
    async fn send_text(&self, to: &str, text: &str, message_id: &str) -> Result<(), EngineError>;
    /// Sends an outbound message of any kind (see [`Content`]), possibly quoting another. A send repeated with
    /// the same id (after a crash) is dropped by WhatsApp's servers as a duplicate.
    async fn send(&self, m: &Outgoing<'_>) -> Result<(), EngineError>;
    /// Unlinks the device from the account.
    async fn logout(&self) -> Result<(), EngineError>;
    /// Closes the connection after flushing; emits nothing more.
    async fn stop(&self);
    /// Drives the simulated phone. Returns an id where the action creates one (an inbound message).
    async fn sandbox(&self, _action: SandboxAction) -> Result<Option<String>, EngineError> {
        Err(EngineError::NotSandbox)
    }
}

/// A WhatsApp-shaped message id (`3EB0` + 18 upper-case hex digits), as WhatsApp Web makes them.
pub fn new_message_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 9];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("3EB0{}", hex::encode_upper(b))
}

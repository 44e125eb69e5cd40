//! Outbound messages (contract §6): validated, stored durably in the outbox before the 202, sent by the session
//! that owns the channel (see `sessions::outbox`).

use super::App;
use crate::error::{ApiError, ApiResult, Code};
use crate::model::{Principal, Status};
use crate::pb;
use crate::sessions::Command;
use crate::store::channels::{self as channel_store, ChannelRow};
use crate::store::messages::{self as store, Accepted, MessageRow};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::sync::Arc;
use tonic::{Request, Response, Status as GrpcStatus};

/// WhatsApp's own limit for a text is far larger; the contract caps it at 4096 characters.
pub const MAX_TEXT_CHARS: usize = 4_096;
pub const MAX_CLIENT_REF: usize = 128;
const MAX_ID: usize = 128;

const MEDIA_TYPES: [&str; 5] = ["image", "video", "audio", "document", "sticker"];

/// "+15551234567" (the "+" may be left out) → "+15551234567"; "<id>@g.us" as it is.
pub fn normalize_to(to: &str) -> Option<String> {
    let to = to.trim();
    if let Some(group) = to.strip_suffix("@g.us") {
        let ok = !group.is_empty()
            && group.len() <= 64
            && group.bytes().all(|b| b.is_ascii_digit() || b == b'-');
        return ok.then(|| to.to_string());
    }
    let e164 = if to.starts_with('+') {
        to.to_string()
    } else {
        format!("+{to}")
    };
    crate::api::channels::valid_phone(&e164).then_some(e164)
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The checked request: what is stored.
struct Valid {
    to: String,
    kind: &'static str,
    content: Kind,
    client_ref: Option<String>,
    reply_to: Option<String>,
}

/// What each type carries.
enum Kind {
    Text(String),
    Location(Location),
    /// The target as the caller named it (resolved to a WhatsApp key before the insert), and the emoji.
    Reaction {
        target: String,
        emoji: String,
    },
    /// image, video, audio, document, sticker.
    Media(MediaReq),
}

struct Location {
    latitude: f64,
    longitude: f64,
    name: Option<String>,
    address: Option<String>,
}

/// A media send as asked; the media itself is resolved (looked up or fetched) when it is accepted.
struct MediaReq {
    source: MediaSource,
    caption: Option<String>,
    filename: Option<String>,
    mime_type: Option<String>,
}

enum MediaSource {
    Url(String),
    Id(String),
}

pub const MAX_CAPTION_CHARS: usize = 1_024;
const MAX_URL: usize = 2_048;

/// Name and address of a location.
pub const MAX_LOCATION_TEXT: usize = 256;

fn validate(req: &pb::SendMessageRequest) -> ApiResult<Valid> {
    let (kind, content) = match req.r#type.as_str() {
        "text" => ("text", Kind::Text(validate_text(req)?)),
        "location" => ("location", Kind::Location(validate_location(req)?)),
        "reaction" => ("reaction", validate_reaction(req)?),
        "" => {
            return Err(ApiError::invalid(
                "type",
                "type is required (text, image, video, audio, document, sticker, location or reaction)",
            ));
        }
        t if MEDIA_TYPES.contains(&t) => {
            let kind = MEDIA_TYPES.into_iter().find(|k| *k == t).unwrap_or("image");
            (kind, Kind::Media(validate_media(req, kind)?))
        }
        t => {
            return Err(ApiError::invalid(
                "type",
                format!("unknown message type \"{t}\""),
            ));
        }
    };
    if req.to.is_empty() {
        return Err(ApiError::invalid("to", "to is required"));
    }
    let to = normalize_to(&req.to).ok_or_else(|| {
        ApiError::invalid(
            "to",
            "to must be an E.164 number (+15551234567) or a group id (<id>@g.us)",
        )
    })?;
    let client_ref = match &req.client_ref {
        None => None,
        Some(r) if r.is_empty() || r.chars().count() > MAX_CLIENT_REF => {
            return Err(ApiError::invalid(
                "client_ref",
                format!("client_ref must be 1 to {MAX_CLIENT_REF} characters"),
            ));
        }
        Some(r) if r.chars().any(char::is_control) => {
            return Err(ApiError::invalid(
                "client_ref",
                "client_ref must not contain control characters",
            ));
        }
        Some(r) => Some(r.clone()),
    };
    let reply_to = match &req.reply_to {
        None => None,
        // WhatsApp has no quoted reactions: a reaction names its target itself.
        Some(_) if kind == "reaction" => {
            return Err(ApiError::invalid(
                "reply_to",
                "a reaction cannot be a reply; message_id names the message it reacts to",
            ));
        }
        Some(r) if valid_id(r) => Some(r.clone()),
        Some(_) => {
            return Err(ApiError::invalid(
                "reply_to",
                "reply_to must be a message id (msg_... or a WhatsApp id)",
            ));
        }
    };
    Ok(Valid {
        to,
        kind,
        content,
        client_ref,
        reply_to,
    })
}

/// Fields of other types must not ride along unnoticed.
fn refuse_foreign(req: &pb::SendMessageRequest, kind: &str) -> ApiResult<()> {
    let media = MEDIA_TYPES.contains(&kind);
    let foreign = [
        ("text", kind != "text" && !req.text.is_empty()),
        ("latitude", kind != "location" && req.latitude.is_some()),
        ("longitude", kind != "location" && req.longitude.is_some()),
        ("name", kind != "location" && req.name.is_some()),
        ("address", kind != "location" && req.address.is_some()),
        ("message_id", kind != "reaction" && req.message_id.is_some()),
        ("emoji", kind != "reaction" && req.emoji.is_some()),
        ("media_url", !media && req.media_url.is_some()),
        ("media_id", !media && req.media_id.is_some()),
        ("caption", !media && req.caption.is_some()),
        ("filename", !media && req.filename.is_some()),
        ("mime_type", !media && req.mime_type.is_some()),
    ];
    match foreign.iter().find(|(_, bad)| *bad) {
        Some((field, _)) => Err(ApiError::invalid(
            field,
            format!("{field} does not belong to a {kind} message"),
        )),
        None => Ok(()),
    }
}

fn validate_text(req: &pb::SendMessageRequest) -> ApiResult<String> {
    refuse_foreign(req, "text")?;
    if req.text.trim().is_empty() {
        return Err(ApiError::invalid("text", "text is required"));
    }
    if req.text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::invalid(
            "text",
            format!("text is longer than {MAX_TEXT_CHARS} characters"),
        ));
    }
    Ok(req.text.clone())
}

fn validate_location(req: &pb::SendMessageRequest) -> ApiResult<Location> {
    refuse_foreign(req, "location")?;
    let degrees = |field: &str, v: Option<f64>, max: f64| match v {
        None => Err(ApiError::invalid(field, format!("{field} is required"))),
        Some(x) if !x.is_finite() || x.abs() > max => Err(ApiError::invalid(
            field,
            format!("{field} must be between -{max} and {max}"),
        )),
        Some(x) => Ok(x),
    };
    let latitude = degrees("latitude", req.latitude, 90.0)?;
    let longitude = degrees("longitude", req.longitude, 180.0)?;
    let label = |field: &str, v: &Option<String>| match v {
        None => Ok(None),
        Some(s) if s.chars().count() > MAX_LOCATION_TEXT => Err(ApiError::invalid(
            field,
            format!("{field} is longer than {MAX_LOCATION_TEXT} characters"),
        )),
        Some(s) if s.chars().any(char::is_control) => Err(ApiError::invalid(
            field,
            format!("{field} must not contain control characters"),
        )),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => Ok(Some(s.clone())),
    };
    Ok(Location {
        latitude,
        longitude,
        name: label("name", &req.name)?,
        address: label("address", &req.address)?,
    })
}

fn validate_reaction(req: &pb::SendMessageRequest) -> ApiResult<Kind> {
    refuse_foreign(req, "reaction")?;
    let target = match &req.message_id {
        None => return Err(ApiError::invalid("message_id", "message_id is required")),
        Some(m) if valid_id(m) => m.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                "message_id",
                "message_id must be a message id (msg_... or a WhatsApp id)",
            ));
        }
    };
    let emoji = match &req.emoji {
        None => {
            return Err(ApiError::invalid(
                "emoji",
                "emoji is required (\"\" removes an earlier reaction)",
            ));
        }
        Some(e) if e.is_empty() || is_one_emoji(e) => e.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                "emoji",
                "emoji must be a single emoji, or \"\" to remove a reaction",
            ));
        }
    };
    Ok(Kind::Reaction { target, emoji })
}

/// Code points that start an emoji (a coarse table of the emoji blocks; WhatsApp itself decides what it shows).
fn emoji_base(c: char) -> bool {
    matches!(u32::from(c),
        0x00A9 | 0x00AE | 0x203C | 0x2049 | 0x2122 | 0x2139 | 0x3030 | 0x303D | 0x3297 | 0x3299
        | 0x2194..=0x21FF
        | 0x2300..=0x23FF
        | 0x24C2
        | 0x25A0..=0x27BF
        | 0x2934..=0x2935
        | 0x2B00..=0x2BFF
        | 0x1F000..=0x1FAFF)
}

/// One emoji grapheme: a base with its modifiers (skin tones, variation selector, tags), ZWJ sequences of such,
/// a flag (two regional indicators) or a keycap. Without a Unicode segmentation table, this follows the emoji
/// sequence grammar of UTS #51 closely enough to refuse text, several emoji and stray modifiers.
pub fn is_one_emoji(s: &str) -> bool {
    const ZWJ: u32 = 0x200D;
    let is_ri = |c: u32| (0x1F1E6..=0x1F1FF).contains(&c);
    let is_mod = |c: u32| {
        c == 0xFE0F
            || c == 0xFE0E
            || (0x1F3FB..=0x1F3FF).contains(&c)
            || (0xE0020..=0xE007F).contains(&c)
    };
    if s.is_empty() || s.len() > 64 {
        return false;
    }
    let cs: Vec<u32> = s.chars().map(u32::from).collect();
    // A flag: exactly two regional indicators.
    if cs.iter().all(|c| is_ri(*c)) {
        return cs.len() == 2;
    }
    // A keycap: 0-9, # or *, an optional VS16, then U+20E3.
    if let Some(&first) = cs.first()
        && (char::from_u32(first).is_some_and(|c| c.is_ascii_digit())
            || first == 0x23
            || first == 0x2A)
    {
        return matches!(&cs[1..], [0x20E3] | [0xFE0F, 0x20E3]);
    }
    let mut expect_base = true;
    for &c in &cs {
        if expect_base {
            if !char::from_u32(c).is_some_and(emoji_base) || is_ri(c) || is_mod(c) {
                return false;
            }
            expect_base = false;
        } else if c == ZWJ {
            expect_base = true;
        } else if !is_mod(c) {
            return false;
        }
    }
    !expect_base
}

/// image, video, audio, document, sticker: the form of the request (the media is checked when accepted).
fn validate_media(req: &pb::SendMessageRequest, kind: &str) -> ApiResult<MediaReq> {
    if !req.text.is_empty() {
        return Err(ApiError::invalid(
            "text",
            format!("text is not used by {kind} messages; use caption"),
        ));
    }
    refuse_foreign(req, kind)?;
    let source = match (&req.media_url, &req.media_id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "media_url",
                "give media_url or media_id, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "media_url",
                format!("{kind} messages need media_url or media_id"),
            ));
        }
        (Some(u), None) => {
            let ok = u.len() <= MAX_URL
                && reqwest::Url::parse(u).is_ok_and(|p| {
                    (p.scheme() == "https" || p.scheme() == "http")
                        && p.host_str().is_some_and(|h| !h.is_empty())
                });
            if !ok {
                return Err(ApiError::invalid(
                    "media_url",
                    format!(
                        "media_url must be an http or https URL of at most {MAX_URL} characters"
                    ),
                ));
            }
            MediaSource::Url(u.clone())
        }
        (None, Some(id)) => {
            if !crate::media::valid_media_id(id) {
                return Err(ApiError::invalid(
                    "media_id",
                    "media_id must be an id from POST /v1/channels/{id}/media (med_...)",
                ));
            }
            MediaSource::Id(id.clone())
        }
    };
    let caption = match req.caption.as_deref() {
        None | Some("") => None,
        Some(_) if kind == "audio" || kind == "sticker" => {
            return Err(ApiError::invalid(
                "caption",
                format!("{kind} messages have no caption"),
            ));
        }
        Some(c) if c.chars().count() > MAX_CAPTION_CHARS => {
            return Err(ApiError::invalid(
                "caption",
                format!("caption is longer than {MAX_CAPTION_CHARS} characters"),
            ));
        }
        Some(c) => Some(c.to_string()),
    };
    let filename = match req.filename.as_deref() {
        None => None,
        Some(_) if kind != "document" => {
            return Err(ApiError::invalid(
                "filename",
                "filename is used by document messages only",
            ));
        }
        Some(f) if crate::media::valid_filename(f) => Some(f.to_string()),
        Some(_) => {
            return Err(ApiError::invalid(
                "filename",
                format!(
                    "filename must be 1 to {} characters, without / \\ or control characters",
                    crate::media::MAX_FILENAME
                ),
            ));
        }
    };
    if kind == "document" && filename.is_none() && matches!(source, MediaSource::Url(_)) {
        return Err(ApiError::invalid(
            "filename",
            "document messages need a filename",
        ));
    }
    let mime_type = match req.mime_type.as_deref() {
        None => None,
        Some(m) => {
            let m = crate::media::normalize_mime(m).ok_or_else(|| {
                ApiError::invalid(
                    "mime_type",
                    "mime_type must be type/subtype, e.g. image/jpeg",
                )
            })?;
            crate::media::check_kind_mime(kind, &m)
                .map_err(|e| ApiError::invalid("mime_type", e))?;
            Some(m)
        }
    };
    Ok(MediaReq {
        source,
        caption,
        filename,
        mime_type,
    })
}

fn ts(s: Option<&str>) -> Option<crate::wkt::Timestamp> {
    s.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc).into())
}

fn error_pb(v: Option<&Value>) -> Option<pb::MessageError> {
    let v = v.filter(|v| v.is_object())?;
    Some(pb::MessageError {
        code: v["code"].as_str().unwrap_or_default().to_string(),
        message: v["message"].as_str().unwrap_or_default().to_string(),
    })
}

fn location_pb(l: &Value) -> Option<pb::Location> {
    Some(pb::Location {
        latitude: l["latitude"].as_f64()?,
        longitude: l["longitude"].as_f64()?,
        name: l["name"].as_str().map(str::to_string),
        address: l["address"].as_str().map(str::to_string),
    })
}

fn reaction_pb(r: &Value) -> Option<pb::Reaction> {
    Some(pb::Reaction {
        message_id: r["id"].as_str()?.to_string(),
        whatsapp_id: r["whatsapp_id"].as_str().unwrap_or_default().to_string(),
        emoji: r["emoji"].as_str().unwrap_or_default().to_string(),
    })
}

pub fn message_pb(m: &MessageRow) -> pb::Message {
    let history = m
        .history
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| pb::StatusChange {
                    status: h["status"].as_str().unwrap_or_default().to_string(),
                    at: ts(h["at"].as_str()),
                    error: error_pb(h.get("error")),
                })
                .collect()
        })
        .unwrap_or_default();
    pb::Message {
        message_id: m.id.clone(),
        channel_id: m.channel_id.clone(),
        client_ref: m.client_ref.clone(),
        to: m.to.clone(),
        r#type: m.kind.clone(),
        text: m.body["text"].as_str().unwrap_or_default().to_string(),
        reply_to: m.body["reply_to"]["id"].as_str().map(str::to_string),
        location: location_pb(&m.body["location"]),
        reaction: reaction_pb(&m.body["reaction"]),
        status: m.status.clone(),
        error: error_pb(m.error.as_ref()),
        whatsapp_id: m.wa_id.clone(),
        created_at: Some(m.created_at.into()),
        sent_at: m.sent_at.map(Into::into),
        expires_at: Some(m.expires_at.into()),
        history,
        media: media_pb(&m.body["media"]),
        caption: m.body["caption"].as_str().map(str::to_string),
    }
}

fn media_pb(v: &Value) -> Option<pb::MessageMedia> {
    let id = v["id"].as_str()?;
    Some(pb::MessageMedia {
        media_id: id.to_string(),
        mime_type: v["mime_type"].as_str().unwrap_or_default().to_string(),
        size: v["size"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        sha256: v["sha256"].as_str().unwrap_or_default().to_string(),
        filename: v["filename"].as_str().map(str::to_string),
    })
}

impl App {
    pub async fn send_message(
        &self,
        p: &Principal,
        req: pb::SendMessageRequest,
    ) -> ApiResult<pb::SendMessageResponse> {
        let v = validate(&req)?;
        let client = self.pool.get().await?;
        let ch = channel_store::get_visible(&client, p, &req.channel_id).await?;
        // Accepted while the session runs (or is coming back); refused where nothing would ever send it.
        if !matches!(
            ch.status,
            Status::Connecting | Status::Connected | Status::Reconnecting
        ) {
            return Err(ApiError::new(
                Code::NotConnected,
                format!("the channel is {}; connect it before sending", ch.status),
            )
            .detail("status", ch.status.as_str()));
        }
        let reply_to = match &v.reply_to {
            None => Value::Null,
            Some(r) => self.quoted(&client, &ch.id, r, &v.to, "reply_to").await?,
        };
        let body = match &v.content {
            Kind::Text(text) => json!({"text": text, "reply_to": reply_to.clone()}),
            Kind::Location(l) => json!({
                "location": {
                    "latitude": l.latitude,
                    "longitude": l.longitude,
                    "name": l.name,
                    "address": l.address,
                },
                "reply_to": reply_to.clone(),
            }),
            Kind::Reaction { target, emoji } => {
                let mut r = self
                    .quoted(&client, &ch.id, target, &v.to, "message_id")
                    .await?;
                r["emoji"] = emoji.as_str().into();
                json!({"reaction": r})
            }
            // Resolved below, once no connection is held: a fetch may take a while.
            Kind::Media(_) => Value::Null,
        };
        // Nothing below needs this connection; the accepter commits with its own.
        drop(client);
        let body = match &v.content {
            Kind::Media(m) => {
                let mut body = self.resolve_media(&ch, v.kind, m).await?;
                body["reply_to"] = reply_to;
                body
            }
            _ => body,
        };
        let id = crate::store::new_id("msg");
        let wa_id = crate::engine::new_message_id();
        let inserted = self
            .outbox
            .accept(store::NewOwned {
                id: id.clone(),
                customer_id: ch.customer_id.clone(),
                mode: ch.mode.as_str().to_string(),
                channel_id: ch.id.clone(),
                wa_id,
                to: v.to,
                kind: v.kind.to_string(),
                body,
                client_ref: v.client_ref.clone(),
                ttl_secs: i64::try_from(self.cfg.message_ttl_secs).unwrap_or(i64::MAX / 2),
            })
            .await?;
        match inserted {
            Accepted::Full => {
                let mut e = ApiError::new(
                    Code::RateLimited,
                    format!(
                        "the channel already has {} messages waiting to be sent (WHATISUP_OUTBOX_MAX_PER_CHANNEL)",
                        self.cfg.outbox_max_per_channel
                    ),
                );
                e.retry_after = Some(10);
                Err(e)
            }
            Accepted::Duplicate(orig) => Ok(pb::SendMessageResponse {
                message_id: orig.id,
                client_ref: orig.client_ref,
                status: orig.status,
            }),
            Accepted::New => {
                self.metrics.messages_accepted.inc();
                // Committed: wake the sender wherever the session runs (the node's sweep catches a lost kick).
                let node = self.node.clone();
                let channel_id = ch.id.clone();
                tokio::spawn(async move {
                    let _ = node.command(&channel_id, Command::Outbox).await;
                });
                Ok(pb::SendMessageResponse {
                    message_id: id,
                    client_ref: v.client_ref,
                    status: "queued".into(),
                })
            }
        }
    }

    /// The media of a send, ready to store in the message's body: looked up (media_id, kept at least as long as
    /// the message may wait) or fetched and stored (media_url). Every refusal names its field; a refused fetch
    /// stores nothing.
    async fn resolve_media(&self, ch: &ChannelRow, kind: &str, m: &MediaReq) -> ApiResult<Value> {
        let keep = std::time::Duration::from_secs(self.cfg.message_ttl_secs.saturating_add(3_600));
        let (stored, field) = match &m.source {
            MediaSource::Id(id) => {
                let client = self.pool.get().await?;
                let s = self
                    .media
                    .lookup(&client, &ch.id, id, keep)
                    .await?
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "media_id",
                            "no such media on this channel (unknown, or past its retention)",
                        )
                    })?;
                (s, "media_id")
            }
            MediaSource::Url(url) => {
                let (data, content_type) = self.media.fetch(url, "media_url").await?;
                if data.is_empty() {
                    return Err(ApiError::invalid(
                        "media_url",
                        "media_url answered an empty body",
                    ));
                }
                let mime = match (
                    &m.mime_type,
                    content_type
                        .as_deref()
                        .and_then(crate::media::normalize_mime),
                ) {
                    (Some(m), _) => m.clone(),
                    (None, Some(ct)) => ct,
                    (None, None) => {
                        return Err(ApiError::invalid(
                            "mime_type",
                            "media_url answered without a usable Content-Type: give mime_type",
                        ));
                    }
                };
                crate::media::check_kind_mime(kind, &mime)
                    .map_err(|e| ApiError::invalid("media_url", e))?;
                let s = self
                    .media
                    .store(
                        &ch.customer_id,
                        &ch.id,
                        "url",
                        &mime,
                        m.filename.as_deref(),
                        &data,
                        Some(keep),
                    )
                    .await?;
                (s, "media_url")
            }
        };
        let mime = m
            .mime_type
            .clone()
            .unwrap_or_else(|| stored.mime_type.clone());
        crate::media::check_kind_mime(kind, &mime).map_err(|e| ApiError::invalid(field, e))?;
        let filename = m.filename.clone().or_else(|| stored.filename.clone());
        if kind == "document" && filename.is_none() {
            return Err(ApiError::invalid(
                "filename",
                "document messages need a filename",
            ));
        }
        let mut media = stored.json();
        media["mime_type"] = mime.into();
        media["filename"] = filename.into();
        Ok(json!({"media": media, "caption": m.caption}))
    }

    /// What a reply quotes, or a reaction reacts to: one of ours (by our id or its WhatsApp id), or a received
    /// message (its author comes from the event log). `participant` is None for our own message.
    async fn quoted(
        &self,
        client: &deadpool_postgres::Client,
        channel_id: &str,
        target: &str,
        to: &str,
        field: &str,
    ) -> ApiResult<Value> {
        let ours = if target.starts_with("msg_") {
            let row = store::get(client, channel_id, target)
                .await?
                .ok_or_else(|| ApiError::invalid(field, "no such message on this channel"))?;
            Some(row)
        } else {
            store::by_wa_id(client, channel_id, target).await?
        };
        if let Some(row) = ours {
            if row.to != to {
                return Err(ApiError::invalid(
                    field,
                    format!("that message went to {}, not to {to}", row.to),
                ));
            }
            return Ok(json!({"id": row.id, "whatsapp_id": row.wa_id, "participant": null}));
        }
        let from: Option<String> = client
            .query_opt(
                "SELECT data->>'from' FROM events WHERE channel_id = $1 AND event = 'message.received'
                   AND data->>'message_id' = $2 LIMIT 1",
                &[&channel_id, &target],
            )
            .await?
            .and_then(|r| r.get(0));
        // A received message no longer in the log: in a chat with one person, they wrote it.
        let participant = from.or_else(|| (!to.ends_with("@g.us")).then(|| to.to_string()));
        Ok(json!({"id": target, "whatsapp_id": target, "participant": participant}))
    }

    pub async fn get_message(
        &self,
        p: &Principal,
        req: pb::GetMessageRequest,
    ) -> ApiResult<pb::Message> {
        let client = self.pool.get().await?;
        let ch = channel_store::get_visible(&client, p, &req.channel_id).await?;
        let not_found = || {
            ApiError::new(Code::MessageNotFound, "no such message")
                .detail("message_id", req.message_id.as_str())
        };
        if !req.message_id.starts_with("msg_") || req.message_id.len() > MAX_ID {
            return Err(not_found());
        }
        let row = store::get(&client, &ch.id, &req.message_id)
            .await?
            .ok_or_else(not_found)?;
        Ok(message_pb(&row))
    }
}

/// gRPC face.
pub struct MessageGrpc(pub Arc<App>);

#[tonic::async_trait]
impl pb::message_service_server::MessageService for MessageGrpc {
    async fn send_message(
        &self,
        r: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        let (meta, _, req) = r.into_parts();
        let run = self.0.send_message(&p, req.clone());
        Ok(Response::new(
            crate::http::idempotency::grpc(
                &self.0,
                &p,
                &meta,
                "/whatisup.v1.MessageService/SendMessage",
                &req,
                run,
            )
            .await?,
        ))
    }

    async fn get_message(
        &self,
        r: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::Message>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(self.0.get_message(&p, r.into_inner()).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients() {
        assert_eq!(
            normalize_to("+15551234567").as_deref(),
            Some("+15551234567")
        );
        assert_eq!(normalize_to("15551234567").as_deref(), Some("+15551234567"));
        assert_eq!(
            normalize_to("120363021234567890@g.us").as_deref(),
            Some("120363021234567890@g.us")
        );
        assert!(normalize_to("+1555").is_none());
        assert!(normalize_to("abc@g.us").is_none());
        assert!(normalize_to("@g.us").is_none());
    }

    #[test]
    fn one_emoji() {
        for ok in [
            "👍",
            "👍🏽",
            "❤️",
            "❤",
            "🇩🇪",
            "1️⃣",
            "#⃣",
            "👨‍👩‍👧‍👦",
            "🏳️‍🌈",
            "🧑🏿‍🚀",
            "©️",
            "🏴\u{e0067}\u{e0062}\u{e0065}\u{e006e}\u{e0067}\u{e007f}",
        ] {
            assert!(is_one_emoji(ok), "{ok} is one emoji");
        }
        for bad in [
            "",
            "a",
            "ok",
            "👍👍",
            "👍 ",
            " 👍",
            "🇩",
            "🇩🇪🇫🇷",
            "\u{1F3FD}",
            "\u{FE0F}",
            "👍\u{200D}",
            "1",
            "12⃣",
            "—",
            "👍a",
        ] {
            assert!(!is_one_emoji(bad), "{bad:?} is not one emoji");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let ok = pb::SendMessageRequest {
            channel_id: "ch_x".into(),
            to: "+15551234567".into(),
            r#type: "text".into(),
            text: "hi".into(),
            ..Default::default()
        };
        assert!(validate(&ok).is_ok());
        let field =
            |r: pb::SendMessageRequest| validate(&r).err().map(|e| e.details["field"].clone());
        assert_eq!(
            field(pb::SendMessageRequest {
                r#type: "image".into(),
                ..ok.clone()
            }),
            Some("text".into())
        );
        assert_eq!(
            field(pb::SendMessageRequest {
                r#type: "image".into(),
                text: String::new(),
                ..ok.clone()
            }),
            Some("media_url".into())
        );
        assert_eq!(
            field(pb::SendMessageRequest {
                r#type: "location".into(),
                ..ok.clone()
            }),
            Some("text".into())
        );
        assert_eq!(
            field(pb::SendMessageRequest {
                to: "x".into(),
                ..ok.clone()
            }),
            Some("to".into())
        );
        assert_eq!(
            field(pb::SendMessageRequest {
                text: " ".into(),
                ..ok.clone()
            }),
            Some("text".into())
        );
        assert_eq!(
            field(pb::SendMessageRequest {
                text: "é".repeat(MAX_TEXT_CHARS + 1),
                ..ok.clone()
            }),
            Some("text".into())
        );
        assert!(
            validate(&pb::SendMessageRequest {
                text: "é".repeat(MAX_TEXT_CHARS),
                ..ok.clone()
            })
            .is_ok()
        );
        assert_eq!(
            field(pb::SendMessageRequest {
                client_ref: Some("x".repeat(129)),
                ..ok.clone()
            }),
            Some("client_ref".into())
        );
        assert_eq!(
            field(pb::SendMessageRequest {
                reply_to: Some("a b".into()),
                ..ok.clone()
            }),
            Some("reply_to".into())
        );
    }
}

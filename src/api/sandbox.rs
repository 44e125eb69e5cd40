//! The simulated phone behind test-mode channels (contract §4.3).

use super::App;
use crate::api::channels::valid_phone;
use crate::engine::{ReceiptStatus, SandboxAction};
use crate::error::{ApiError, ApiResult, Code};
use crate::model::{Principal, Status};
use crate::pb;
use crate::sessions::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status as GrpcStatus};

// Commands reach a session on another node through NOTIFY, whose payload is limited to 8000 bytes.
const MAX_TEXT: usize = 4_096;

impl App {
    pub async fn sandbox_action(
        &self,
        p: &Principal,
        id: &str,
        action: SandboxAction,
    ) -> ApiResult<pb::SandboxActionResponse> {
        let ch = {
            let client = self.pool.get().await?;
            crate::store::channels::get_visible(&client, p, id).await?
        };
        if ch.engine != "sandbox" {
            return Err(ApiError::new(
                Code::NotSandbox,
                "sandbox actions work on test-mode channels only",
            ));
        }
        let needs = match &action {
            SandboxAction::Scan { .. } => Status::Qr,
            _ => Status::Connected,
        };
        if ch.status != needs {
            return Err(ApiError::new(
                Code::InvalidLifecycleTransition,
                format!(
                    "the simulated phone can do that only while the channel is {needs}; it is {}",
                    ch.status
                ),
            )
            .detail("status", ch.status.as_str()));
        }
        let action_id = match &action {
            SandboxAction::Inbound { message_id, .. }
            | SandboxAction::InboundLocation { message_id, .. }
            | SandboxAction::InboundReaction { message_id, .. }
            | SandboxAction::InboundMedia { message_id, .. } => Some(message_id.clone()),
            _ => None,
        };
        let (reply, rx) = oneshot::channel();
        let delivered = self
            .node
            .command(
                id,
                Command::Sandbox {
                    action: Box::new(action),
                    reply: Some(reply),
                },
            )
            .await?;
        if !delivered {
            return Err(ApiError::new(
                Code::NotConnected,
                "no session is running for this channel",
            ));
        }
        let message_id = match tokio::time::timeout(Duration::from_secs(15), rx).await {
            Ok(Ok(r)) => r?.or(action_id),
            Ok(Err(_)) => {
                return Err(ApiError::new(
                    Code::NotConnected,
                    "the session ended before it could act",
                ));
            }
            Err(_) => return Err(ApiError::unavailable("the session did not answer in time")),
        };
        let channel = {
            let client = self.pool.get().await?;
            crate::store::channels::get_visible(&client, p, id).await?
        };
        Ok(pb::SandboxActionResponse {
            channel: Some(channel.to_pb()),
            message_id,
        })
    }
}

/// Whether an inbound request is a media message (handled by `App::sandbox_inbound_media`).
pub fn is_media(r: &pb::SandboxInboundRequest) -> bool {
    crate::media::KINDS.contains(&r.r#type.as_str())
}

fn check_from(from: &str) -> ApiResult<()> {
    let group = from.strip_suffix("@g.us").is_some_and(|g| {
        !g.is_empty() && g.len() <= 64 && g.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !valid_phone(from) && !group {
        return Err(ApiError::invalid(
            "from",
            "from must be E.164 (+15551234567) or a group id (<id>@g.us)",
        ));
    }
    Ok(())
}

fn new_inbound_id() -> String {
    // WhatsApp-like id, chosen here so the answer carries it wherever the session runs.
    format!("3EB0{}", crate::crypto::random_base62(16).to_uppercase())
}

impl App {
    /// A media message from the simulated phone's contact: the media is stored (like any inbound media) before
    /// the action goes to the session, and the event carries its signed URL.
    pub async fn sandbox_inbound_media(
        &self,
        p: &Principal,
        r: pb::SandboxInboundRequest,
    ) -> ApiResult<pb::SandboxActionResponse> {
        use base64::Engine as _;
        let kind = r.r#type.as_str();
        check_from(&r.from)?;
        if !r.text.is_empty() {
            return Err(ApiError::invalid(
                "text",
                format!("text is not used by {kind} messages; use caption"),
            ));
        }
        let caption = match r.caption.as_deref() {
            None | Some("") => None,
            Some(c) if c.chars().count() > crate::api::messages::MAX_CAPTION_CHARS => {
                return Err(ApiError::invalid(
                    "caption",
                    "caption is longer than 1024 characters",
                ));
            }
            Some(c) => Some(c.to_string()),
        };
        let filename = match r.filename.as_deref() {
            None => None,
            Some(f) if crate::media::valid_filename(f) => Some(f.to_string()),
            Some(_) => {
                return Err(ApiError::invalid(
                    "filename",
                    "filename must be 1 to 255 characters, without / \\ or control characters",
                ));
            }
        };
        let mime = match r.mime_type.as_deref() {
            None => None,
            Some(m) => Some(crate::media::normalize_mime(m).ok_or_else(|| {
                ApiError::invalid(
                    "mime_type",
                    "mime_type must be type/subtype, e.g. image/jpeg",
                )
            })?),
        };
        let encoded = match (&r.media_base64, &r.media_url) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "media_base64",
                    "give media_base64 or media_url, not both",
                ));
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    "media_base64",
                    format!("{kind} messages need media_base64 or media_url"),
                ));
            }
            (Some(b), None) => {
                if mime.is_none() {
                    return Err(ApiError::invalid(
                        "mime_type",
                        "mime_type is required with media_base64",
                    ));
                }
                Some(b)
            }
            (None, Some(_)) => None,
        };
        if let Some(m) = &mime {
            crate::media::check_kind_mime(kind, m)
                .map_err(|e| ApiError::invalid("mime_type", e))?;
        }
        // The channel is checked before anything is stored.
        let ch = {
            let client = self.pool.get().await?;
            crate::store::channels::get_visible(&client, p, &r.id).await?
        };
        if ch.engine != "sandbox" {
            return Err(ApiError::new(
                Code::NotSandbox,
                "sandbox actions work on test-mode channels only",
            ));
        }
        if ch.status != Status::Connected {
            return Err(ApiError::new(
                Code::InvalidLifecycleTransition,
                format!(
                    "the simulated phone can do that only while the channel is connected; it is {}",
                    ch.status
                ),
            )
            .detail("status", ch.status.as_str()));
        }
        let (data, mime) = match (encoded, &r.media_url) {
            (Some(b), _) => {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map_err(|_| ApiError::invalid("media_base64", "media_base64 is not base64"))?;
                (data, mime.unwrap_or_default())
            }
            (None, Some(url)) => {
                let (data, ct) = self.media.fetch(url, "media_url").await?;
                let mime = mime
                    .or_else(|| ct.as_deref().and_then(crate::media::normalize_mime))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "mime_type",
                            "media_url answered without a usable Content-Type: give mime_type",
                        )
                    })?;
                crate::media::check_kind_mime(kind, &mime)
                    .map_err(|e| ApiError::invalid("media_url", e))?;
                (data, mime)
            }
            (None, None) => return Err(ApiError::invalid("media_base64", "no media")),
        };
        if data.is_empty() {
            return Err(ApiError::invalid("media_base64", "the media is empty"));
        }
        let stored = self
            .media
            .store(
                &ch.customer_id,
                &ch.id,
                "inbound",
                &mime,
                filename.as_deref(),
                &data,
                None,
            )
            .await?;
        let media = self.media.event_json(&stored);
        let action = SandboxAction::InboundMedia {
            message_id: new_inbound_id(),
            from: r.from,
            kind: kind.to_string(),
            caption,
            media,
        };
        self.sandbox_action(p, &ch.id, action).await
    }
}

pub fn scan(r: pb::SandboxScanRequest) -> ApiResult<(String, SandboxAction)> {
    let phone_number = match r.phone_number.as_str() {
        "" => None,
        p if valid_phone(p) => Some(p.to_string()),
        _ => {
            return Err(ApiError::invalid(
                "phone_number",
                "phone_number must be E.164, e.g. +15551234567",
            ));
        }
    };
    Ok((r.id, SandboxAction::Scan { phone_number }))
}

pub fn drop(r: pb::SandboxDropRequest) -> ApiResult<(String, SandboxAction)> {
    let duration_ms = r.duration_ms.unwrap_or(1_000);
    if duration_ms > 600_000 {
        return Err(ApiError::invalid(
            "duration_ms",
            "duration_ms is at most 600000",
        ));
    }
    Ok((
        r.id,
        SandboxAction::Drop {
            duration_ms: duration_ms as u64,
        },
    ))
}

pub fn inbound(r: pb::SandboxInboundRequest) -> ApiResult<(String, SandboxAction)> {
    check_from(&r.from)?;
    if !matches!(r.r#type.as_str(), "" | "text" | "location" | "reaction") {
        return Err(ApiError::invalid(
            "type",
            format!(
                "unknown inbound type \"{}\"; try text, image, video, audio, document, sticker, location or reaction",
                r.r#type
            ),
        ));
    }
    for (field, set) in [
        ("media_base64", r.media_base64.is_some()),
        ("media_url", r.media_url.is_some()),
        ("caption", r.caption.is_some()),
        ("mime_type", r.mime_type.is_some()),
        ("filename", r.filename.is_some()),
    ] {
        if set {
            return Err(ApiError::invalid(
                field,
                format!("{field} is for media messages (type image, video, ...)"),
            ));
        }
    }
    match r.r#type.as_str() {
        "location" => return inbound_location(r),
        "reaction" => return inbound_reaction(r),
        _ => {}
    }
    if r.text.is_empty() {
        return Err(ApiError::invalid("text", "text is required"));
    }
    if r.text.len() > MAX_TEXT {
        return Err(ApiError::invalid(
            "text",
            format!("text is longer than {MAX_TEXT} bytes"),
        ));
    }
    Ok((
        r.id,
        SandboxAction::Inbound {
            message_id: new_inbound_id(),
            from: r.from,
            text: r.text,
        },
    ))
}

/// WhatsApp-like id, chosen here so the answer carries it wherever the session runs.
fn inbound_location(r: pb::SandboxInboundRequest) -> ApiResult<(String, SandboxAction)> {
    let degrees = |field: &str, v: Option<f64>, max: f64| match v {
        None => Err(ApiError::invalid(field, format!("{field} is required"))),
        Some(x) if !x.is_finite() || x.abs() > max => Err(ApiError::invalid(
            field,
            format!("{field} must be between -{max} and {max}"),
        )),
        Some(x) => Ok(x),
    };
    let latitude = degrees("latitude", r.latitude, 90.0)?;
    let longitude = degrees("longitude", r.longitude, 180.0)?;
    let max = crate::api::messages::MAX_LOCATION_TEXT;
    for (field, v) in [("name", &r.name), ("address", &r.address)] {
        if v.as_ref().is_some_and(|s| s.chars().count() > max) {
            return Err(ApiError::invalid(
                field,
                format!("{field} is longer than {max} characters"),
            ));
        }
    }
    Ok((
        r.id,
        SandboxAction::InboundLocation {
            message_id: new_inbound_id(),
            from: r.from,
            latitude,
            longitude,
            name: r.name,
            address: r.address,
        },
    ))
}

fn inbound_reaction(r: pb::SandboxInboundRequest) -> ApiResult<(String, SandboxAction)> {
    let target = match r.message_id {
        Some(m) if !m.is_empty() && m.len() <= 128 => m,
        _ => {
            return Err(ApiError::invalid(
                "message_id",
                "message_id (the message reacted to) is required",
            ));
        }
    };
    let emoji = r
        .emoji
        .ok_or_else(|| ApiError::invalid("emoji", "emoji is required (\"\" removes a reaction)"))?;
    if !emoji.is_empty() && !crate::api::messages::is_one_emoji(&emoji) {
        return Err(ApiError::invalid("emoji", "emoji must be a single emoji"));
    }
    Ok((
        r.id,
        SandboxAction::InboundReaction {
            message_id: new_inbound_id(),
            from: r.from,
            target,
            emoji,
        },
    ))
}

pub fn receipt(r: pb::SandboxReceiptRequest) -> ApiResult<(String, SandboxAction)> {
    if r.message_id.is_empty() || r.message_id.len() > 128 {
        return Err(ApiError::invalid("message_id", "message_id is required"));
    }
    let status = ReceiptStatus::parse(&r.status)
        .ok_or_else(|| ApiError::invalid("status", "status must be delivered, read or played"))?;
    Ok((
        r.id,
        SandboxAction::Receipt {
            message_id: r.message_id,
            status,
        },
    ))
}

pub struct SandboxGrpc(pub Arc<App>);

impl SandboxGrpc {
    async fn run<T>(
        &self,
        r: Request<T>,
        parse: impl FnOnce(T) -> ApiResult<(String, SandboxAction)>,
    ) -> Result<Response<pb::SandboxActionResponse>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        let (id, action) = parse(r.into_inner())?;
        Ok(Response::new(self.0.sandbox_action(&p, &id, action).await?))
    }
}

#[tonic::async_trait]
impl pb::sandbox_service_server::SandboxService for SandboxGrpc {
    async fn scan(
        &self,
        r: Request<pb::SandboxScanRequest>,
    ) -> Result<Response<pb::SandboxActionResponse>, GrpcStatus> {
        self.run(r, scan).await
    }
    async fn drop(
        &self,
        r: Request<pb::SandboxDropRequest>,
    ) -> Result<Response<pb::SandboxActionResponse>, GrpcStatus> {
        self.run(r, drop).await
    }
    async fn revoke(
        &self,
        r: Request<pb::SandboxRevokeRequest>,
    ) -> Result<Response<pb::SandboxActionResponse>, GrpcStatus> {
        self.run(r, |r| Ok((r.id, SandboxAction::Revoke))).await
    }
    async fn ban(
        &self,
        r: Request<pb::SandboxBanRequest>,
    ) -> Result<Response<pb::SandboxActionResponse>, GrpcStatus> {
        self.run(r, |r| Ok((r.id, SandboxAction::Ban))).await
    }
    async fn inbound(
        &self,
        r: Request<pb::SandboxInboundRequest>,
    ) -> Result<Response<pb::SandboxActionResponse>, GrpcStatus> {
        if is_media(r.get_ref()) {
            let p = self.0.authenticate_grpc(&r).await?;
            return Ok(Response::new(
                self.0.sandbox_inbound_media(&p, r.into_inner()).await?,
            ));
        }
        self.run(r, inbound).await
    }
    async fn receipt(
        &self,
        r: Request<pb::SandboxReceiptRequest>,
    ) -> Result<Response<pb::SandboxActionResponse>, GrpcStatus> {
        self.run(r, receipt).await
    }
}

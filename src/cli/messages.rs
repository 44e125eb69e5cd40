//! `whatisup send` and `whatisup messages get`.

use super::out::say;
use super::{CliError, Ctx, out};
use clap::{ArgGroup, Args, Subcommand};
use std::path::{Path, PathBuf};
use whatisup::http::shape;
use whatisup::pb;
use whatisup::pb::media_service_client::MediaServiceClient;
use whatisup::pb::message_service_client::MessageServiceClient;

/// A file larger than this is refused before reading it (the gateway's own cap is usually far lower).
const MAX_UPLOAD: u64 = 100 * 1024 * 1024;

#[derive(Args, Debug)]
#[command(group(
    ArgGroup::new("kind")
        .required(true)
        .args(["text", "image", "video", "audio", "document", "sticker", "location", "react"])
))]
#[command(group(ArgGroup::new("source").args(["media_url", "media_file", "media_id"])))]
pub struct SendArgs {
    /// The channel to send from.
    channel_id: String,
    /// E.164 number (+15551234567) or a group (<id>@g.us).
    #[arg(long)]
    to: String,
    /// A text message.
    #[arg(long)]
    text: Option<String>,
    /// An image (with --media-url, --media-file or --media-id).
    #[arg(long)]
    image: bool,
    /// A video (with --media-url, --media-file or --media-id).
    #[arg(long)]
    video: bool,
    /// An audio message (with --media-url, --media-file or --media-id).
    #[arg(long)]
    audio: bool,
    /// A document (with --media-url, --media-file or --media-id).
    #[arg(long)]
    document: bool,
    /// A sticker (with --media-url, --media-file or --media-id).
    #[arg(long)]
    sticker: bool,
    /// Media the gateway fetches (http or https).
    #[arg(long, value_name = "URL")]
    media_url: Option<String>,
    /// A local file, uploaded first (MediaService.UploadMedia).
    #[arg(long, value_name = "PATH")]
    media_file: Option<PathBuf>,
    /// Media uploaded before (med_...).
    #[arg(long, value_name = "MEDIA_ID")]
    media_id: Option<String>,
    /// Caption of an image, video or document.
    #[arg(long)]
    caption: Option<String>,
    /// The file name the recipient sees (documents).
    #[arg(long)]
    filename: Option<String>,
    /// The media type, when the file name or the URL's answer does not say it right (image/jpeg, ...).
    #[arg(long)]
    mime_type: Option<String>,
    /// A location: latitude and longitude in degrees.
    #[arg(long, value_name = "LAT,LNG", allow_hyphen_values = true)]
    location: Option<String>,
    /// The location's name.
    #[arg(long, requires = "location")]
    name: Option<String>,
    /// The location's address.
    #[arg(long, requires = "location")]
    address: Option<String>,
    /// React to this message (msg_... or a WhatsApp id), with --emoji.
    #[arg(long, value_name = "MESSAGE_ID", requires = "emoji")]
    react: Option<String>,
    /// The reaction; "" removes an earlier one.
    #[arg(long, requires = "react")]
    emoji: Option<String>,
    /// Answer this message.
    #[arg(long, value_name = "MESSAGE_ID")]
    reply_to: Option<String>,
    /// Your reference: the same one within 24 h returns the original message instead of sending again.
    #[arg(long)]
    client_ref: Option<String>,
    /// Retrying with the same key within 24 h answers the first result.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Show a sent message with its status history.
    Get {
        channel_id: String,
        message_id: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> Result<(), CliError> {
    match cmd {
        Cmd::Get {
            channel_id,
            message_id,
        } => {
            let mut c = MessageServiceClient::new(ctx.channel.clone());
            let m = ctx
                .call(c.get_message(ctx.req(pb::GetMessageRequest {
                    channel_id,
                    message_id,
                })))
                .await?;
            if ctx.json {
                out::json(&shape::message(&m));
            } else {
                print_message(&m);
            }
            Ok(())
        }
    }
}

fn print_message(m: &pb::Message) {
    let mut f = vec![
        ("message_id", m.message_id.clone()),
        ("channel_id", m.channel_id.clone()),
        ("to", m.to.clone()),
        ("type", m.r#type.clone()),
        ("status", m.status.clone()),
    ];
    if !m.text.is_empty() {
        f.push(("text", m.text.clone()));
    }
    if let Some(c) = &m.caption {
        f.push(("caption", c.clone()));
    }
    if let Some(md) = &m.media {
        f.push((
            "media",
            format!("{} {} ({} bytes)", md.media_id, md.mime_type, md.size),
        ));
    }
    if let Some(l) = &m.location {
        f.push(("location", format!("{},{}", l.latitude, l.longitude)));
    }
    if let Some(r) = &m.reaction {
        f.push(("reaction", format!("{} on {}", r.emoji, r.message_id)));
    }
    if let Some(e) = &m.error {
        f.push(("error", format!("{}: {}", e.code, e.message)));
    }
    f.extend([
        ("client_ref", out::opt(&m.client_ref)),
        ("reply_to", out::opt(&m.reply_to)),
        ("whatsapp_id", out::or_dash(&m.whatsapp_id)),
        ("created_at", out::time(&m.created_at)),
        ("sent_at", out::time(&m.sent_at)),
    ]);
    out::fields(&f);
    for h in &m.history {
        let err = h
            .error
            .as_ref()
            .map(|e| format!(" {}: {}", e.code, e.message))
            .unwrap_or_default();
        say!(
            "  {} {}{}",
            out::time(&h.at),
            out::clean(&h.status),
            out::clean(&err)
        );
    }
}

pub async fn send(ctx: &Ctx, a: SendArgs) -> Result<(), CliError> {
    let mut req = pb::SendMessageRequest {
        channel_id: a.channel_id.clone(),
        to: a.to.clone(),
        client_ref: a.client_ref.clone(),
        reply_to: a.reply_to.clone(),
        ..Default::default()
    };
    let media_kind = [
        (a.image, "image"),
        (a.video, "video"),
        (a.audio, "audio"),
        (a.document, "document"),
        (a.sticker, "sticker"),
    ]
    .into_iter()
    .find_map(|(on, k)| on.then_some(k));
    let has_source = a.media_url.is_some() || a.media_file.is_some() || a.media_id.is_some();
    if media_kind.is_none() && has_source {
        return Err(CliError::Usage(
            "--media-url, --media-file and --media-id go with --image, --video, --audio, --document or --sticker"
                .into(),
        ));
    }
    if media_kind.is_none() && (a.caption.is_some() || a.filename.is_some()) {
        return Err(CliError::Usage(
            "--caption and --filename go with a media message".into(),
        ));
    }
    if let Some(text) = a.text {
        req.r#type = "text".into();
        req.text = text;
    } else if let Some(kind) = media_kind {
        req.r#type = kind.into();
        req.caption = a.caption;
        req.mime_type = a.mime_type.clone();
        req.filename = a.filename.clone();
        if let Some(url) = a.media_url {
            req.media_url = Some(url);
        } else if let Some(id) = a.media_id {
            req.media_id = Some(id);
        } else if let Some(path) = a.media_file {
            let up = upload(ctx, &a.channel_id, &path, a.mime_type.as_deref()).await?;
            if !ctx.json {
                eprintln!(
                    "uploaded {} ({} bytes) as {}",
                    path.display(),
                    up.size,
                    up.media_id
                );
            }
            req.media_id = Some(up.media_id);
        } else {
            return Err(CliError::Usage(format!(
                "--{kind} needs --media-url, --media-file or --media-id"
            )));
        }
    } else if let Some(loc) = a.location {
        let (lat, lng) = loc
            .split_once(',')
            .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--location {loc:?}: expected LAT,LNG in degrees (e.g. -33.92,18.42)"
                ))
            })?;
        req.r#type = "location".into();
        req.latitude = Some(lat);
        req.longitude = Some(lng);
        req.name = a.name;
        req.address = a.address;
    } else if let Some(target) = a.react {
        req.r#type = "reaction".into();
        req.message_id = Some(target);
        req.emoji = Some(a.emoji.unwrap_or_default());
    }
    let mut c = MessageServiceClient::new(ctx.channel.clone());
    let mut r = ctx.req(req);
    if let Some(k) = &a.idempotency_key {
        let v = k
            .parse()
            .map_err(|_| CliError::Usage("--idempotency-key must be printable ASCII".into()))?;
        r.metadata_mut().insert("idempotency-key", v);
    }
    let resp = ctx.call(c.send_message(r)).await?;
    if ctx.json {
        out::json(&shape::send_response(&resp));
    } else {
        say!(
            "{} {}",
            out::clean(&resp.message_id),
            out::clean(&resp.status)
        );
    }
    Ok(())
}

async fn upload(
    ctx: &Ctx,
    channel_id: &str,
    path: &Path,
    mime: Option<&str>,
) -> Result<pb::UploadMediaResponse, CliError> {
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|e| CliError::Usage(format!("--media-file {}: {e}", path.display())))?
        .len();
    if size > MAX_UPLOAD {
        return Err(CliError::Usage(format!(
            "--media-file {}: {size} bytes is more than this client sends ({MAX_UPLOAD})",
            path.display()
        )));
    }
    let data = tokio::fs::read(path)
        .await
        .map_err(|e| CliError::Usage(format!("--media-file {}: {e}", path.display())))?;
    let filename = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string);
    let mime_type = mime
        .map(str::to_string)
        .unwrap_or_else(|| guess_mime(path).to_string());
    let mut c = MediaServiceClient::new(ctx.channel.clone())
        .max_encoding_message_size(MAX_UPLOAD as usize + 4096);
    ctx.call(c.upload_media(ctx.req(pb::UploadMediaRequest {
        channel_id: channel_id.to_string(),
        mime_type,
        data,
        filename,
    })))
    .await
}

/// The media type by file extension; the gateway checks it against what each message type allows.
fn guess_mime(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "mp4" => "video/mp4",
        "3gp" => "video/3gpp",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "ogg" | "opus" => "audio/ogg",
        "m4a" => "audio/mp4",
        "aac" => "audio/aac",
        "wav" => "audio/wav",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "zip" => "application/zip",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        _ => "application/octet-stream",
    }
}

//! Inbound media: an image, video, audio, document or sticker a contact sent becomes a `message.received` with the
//! same `media` object the sandbox gives (a signed, expiring `/v1/media/{token}` link).
//!
//! Runs inside the durability hook, so the bytes are downloaded, verified and stored **before** the message is
//! committed and acknowledged. The download is ours (not `Client::download`) so that the cap is enforced while
//! reading and both hashes are checked: the encrypted body against `file_enc_sha256`, then the MAC and the
//! decryption (the crate's), then the plaintext against `file_sha256`.
//!
//! What can go wrong with the media does not lose the message: over `WHATISUP_MEDIA_MAX_BYTES` (declared or
//! actual) or a failed download/verification gives the event with the media's metadata, `url: null` and
//! `media.error` (`{"code": "too_large" | "download_failed", "message"}`). Only a database failure fails the hook;
//! the message is then not acknowledged and WhatsApp delivers it again.
//!
//! A redelivery (our ack was lost) finds the bytes stored the first time by the message they came with
//! (`media.source_ref`), so nothing is downloaded or stored twice; the journal then drops the repeated event.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use whatsapp_rust::client::Client;
use whatsapp_rust::download::{DownloadUtils, Downloadable, MediaDecryption, MediaRoute};
use whatsapp_rust::prelude::wa;

use super::http::{Fetch, ReqwestHttp};
use crate::media::Media;

/// The whole download (media_conn, every host, both attempts) at most; the hook holds the chat's later messages
/// meanwhile.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(90);
/// What encryption adds to the plaintext: CBC padding (at most a block) and the 10-byte MAC.
const ENCRYPTION_OVERHEAD: usize = 16 + 10;
/// A caption longer than this is cut (WhatsApp's own limit is far below).
const MAX_CAPTION_CHARS: usize = 65_536;

/// A media message as found in an inbound `wa::Message`.
pub(super) struct Attachment<'a> {
    kind: &'static str,
    src: &'a dyn Downloadable,
    mime: Option<&'a str>,
    caption: Option<&'a str>,
    filename: Option<&'a str>,
}

/// The media a message carries (its base message: wrappers such as ephemeral or view-once removed), if any.
pub(super) fn attachment<'a>(m: &'a wa::Message) -> Option<Attachment<'a>> {
    fn a<'a>(
        kind: &'static str,
        src: &'a dyn Downloadable,
        mime: Option<&'a str>,
        caption: Option<&'a str>,
        filename: Option<&'a str>,
    ) -> Attachment<'a> {
        Attachment {
            kind,
            src,
            mime,
            caption,
            filename,
        }
    }
    if let Some(i) = m.image_message.as_option() {
        return Some(a(
            "image",
            i,
            i.mimetype.as_deref(),
            i.caption.as_deref(),
            None,
        ));
    }
    if let Some(v) = m.video_message.as_option() {
        return Some(a(
            "video",
            v,
            v.mimetype.as_deref(),
            v.caption.as_deref(),
            None,
        ));
    }
    if let Some(au) = m.audio_message.as_option() {
        return Some(a("audio", au, au.mimetype.as_deref(), None, None));
    }
    // A document with a caption comes wrapped (`documentWithCaptionMessage`).
    let document = m.document_message.as_option().or_else(|| {
        m.document_with_caption_message
            .as_option()
            .and_then(|w| w.message.as_option())
            .and_then(|inner| inner.document_message.as_option())
    });
    if let Some(d) = document {
        let name = d.file_name.as_deref().or(d.title.as_deref());
        return Some(a(
            "document",
            d,
            d.mimetype.as_deref(),
            d.caption.as_deref(),
            name,
        ));
    }
    if let Some(s) = m.sticker_message.as_option() {
        return Some(a("sticker", s, s.mimetype.as_deref(), None, None));
    }
    None
}

/// Why the bytes did not make it.
enum Failure {
    TooLarge(String),
    Failed(String),
}

/// One channel's inbound media: where the bytes go, and how they are fetched.
pub(super) struct InboundMedia {
    media: Arc<Media>,
    pool: Pool,
    channel_id: String,
    http: Arc<ReqwestHttp>,
    /// The process's download permits (see `WhatsAppConfig::media_downloads`).
    downloads: Arc<tokio::sync::Semaphore>,
    customer_id: tokio::sync::OnceCell<String>,
}

impl InboundMedia {
    pub(super) fn new(
        media: Arc<Media>,
        pool: Pool,
        channel_id: String,
        http: Arc<ReqwestHttp>,
        downloads: Arc<tokio::sync::Semaphore>,
    ) -> InboundMedia {
        InboundMedia {
            media,
            pool,
            channel_id,
            http,
            downloads,
            customer_id: tokio::sync::OnceCell::new(),
        }
    }

    /// The `message.received` body of a media message from `from` with WhatsApp id `message_id`. Err only when
    /// the database failed.
    pub(super) async fn body(
        &self,
        client: &Client,
        from: &str,
        message_id: &str,
        att: &Attachment<'_>,
    ) -> anyhow::Result<Value> {
        let source_ref = format!("{from}/{message_id}");
        let caption = att
            .caption
            .filter(|c| !c.is_empty())
            .map(|c| c.chars().take(MAX_CAPTION_CHARS).collect::<String>());
        let mime = att
            .mime
            .and_then(crate::media::normalize_mime)
            .unwrap_or_else(|| "application/octet-stream".to_string());
        // A name the recipient may see: no path, no control characters; else none.
        let filename = att.filename.filter(|f| crate::media::valid_filename(f));
        let found = self
            .media
            .find_inbound(&self.channel_id, &source_ref)
            .await
            .map_err(|e| anyhow::anyhow!("looking up inbound media: {}", e.message))?;
        let stored = match found {
            Some(s) => s,
            None => {
                // Held until the bytes are stored: the permits bound the media held in memory. The timeout starts
                // once the download does.
                let _permit = self
                    .downloads
                    .acquire()
                    .await
                    .map_err(|_| anyhow::anyhow!("the engine is shutting down"))?;
                match tokio::time::timeout(DOWNLOAD_TIMEOUT, self.download(client, att)).await {
                    Ok(Ok(data)) => {
                        let customer_id = self.customer_id().await?;
                        self.media
                            .store_inbound(
                                &customer_id,
                                &self.channel_id,
                                &source_ref,
                                &mime,
                                filename,
                                &data,
                            )
                            .await
                            .map_err(|e| anyhow::anyhow!("storing inbound media: {}", e.message))?
                    }
                    Ok(Err(failure)) => {
                        return Ok(self.failed_body(att, &mime, filename, caption, failure));
                    }
                    Err(_) => {
                        let failure = Failure::Failed(format!(
                            "the download took longer than {} s",
                            DOWNLOAD_TIMEOUT.as_secs()
                        ));
                        return Ok(self.failed_body(att, &mime, filename, caption, failure));
                    }
                }
            }
        };
        Ok(json!({
            "type": att.kind,
            "media": self.media.event_json(&stored),
            "caption": caption,
        }))
    }

    /// The event of media that could not be stored: what the message says of it, and why.
    fn failed_body(
        &self,
        att: &Attachment<'_>,
        mime: &str,
        filename: Option<&str>,
        caption: Option<String>,
        failure: Failure,
    ) -> Value {
        let (code, message) = match failure {
            Failure::TooLarge(m) => ("too_large", m),
            Failure::Failed(m) => ("download_failed", m),
        };
        tracing::warn!(channel_id = %self.channel_id, kind = att.kind, code, error = %message, "inbound media not stored; the message is delivered without it");
        json!({
            "type": att.kind,
            "media": {
                "url": null,
                "mime_type": mime,
                "size": att.src.file_length(),
                "sha256": att.src.file_sha256().map(hex::encode),
                "filename": filename,
                "expires_at": null,
                "error": {"code": code, "message": message},
            },
            "caption": caption,
        })
    }

    async fn customer_id(&self) -> anyhow::Result<String> {
        self.customer_id
            .get_or_try_init(|| async {
                let client = self.pool.get().await?;
                let row = client
                    .query_opt(
                        "SELECT customer_id FROM channels WHERE id = $1",
                        &[&self.channel_id],
                    )
                    .await?;
                match row {
                    Some(r) => Ok(r.get::<_, String>(0)),
                    None => anyhow::bail!("channel {} not found", self.channel_id),
                }
            })
            .await
            .cloned()
    }

    /// Fetches the encrypted bytes from the media hosts WhatsApp names (once more with fresh media_conn
    /// credentials when the hosts refuse the reference), verifies and decrypts them.
    async fn download(&self, client: &Client, att: &Attachment<'_>) -> Result<Vec<u8>, Failure> {
        let max = self.media.max_bytes;
        let too_large = |n: Option<u64>| {
            Failure::TooLarge(match n {
                Some(n) => {
                    format!("the media has {n} bytes, more than {max} (WHATISUP_MEDIA_MAX_BYTES)")
                }
                None => format!("the media is larger than {max} bytes (WHATISUP_MEDIA_MAX_BYTES)"),
            })
        };
        if let Some(n) = att.src.file_length()
            && n > max as u64
        {
            return Err(too_large(Some(n)));
        }
        let mut last = String::from("no media host answered");
        for attempt in 0..2 {
            let conn = client
                .refresh_media_conn(attempt > 0)
                .await
                .map_err(|e| Failure::Failed(format!("asking for the media hosts: {e}")))?;
            let requests =
                DownloadUtils::prepare_download_requests(att.src, &MediaRoute::from(&conn))
                    .map_err(|e| Failure::Failed(format!("the message's media reference: {e}")))?;
            let mut rejected = false;
            for req in requests {
                match self
                    .http
                    .get_capped(&req.url, max + ENCRYPTION_OVERHEAD)
                    .await
                {
                    Ok(body) => return verify(att.src, body, &req.decryption, max),
                    Err(Fetch::TooLarge) => return Err(too_large(att.src.file_length())),
                    Err(Fetch::Status(s)) => {
                        // Expired credentials or reference: fresh media_conn credentials may help, another host not.
                        rejected |= matches!(s, 401 | 403 | 404 | 410);
                        last = format!("the media host answered HTTP {s}");
                    }
                    Err(Fetch::Failed(e)) => last = format!("fetching the media: {e}"),
                }
            }
            if !rejected {
                break;
            }
        }
        Err(Failure::Failed(last))
    }
}

/// The encrypted body's hash, then the MAC and decryption, then the plaintext's hash and size.
fn verify(
    src: &dyn Downloadable,
    body: Vec<u8>,
    decryption: &MediaDecryption,
    max: usize,
) -> Result<Vec<u8>, Failure> {
    let plain = match decryption {
        MediaDecryption::Encrypted {
            media_key,
            media_type,
        } => {
            let want = src.file_enc_sha256().ok_or_else(|| {
                Failure::Failed("the message names no hash of the encrypted media".into())
            })?;
            if Sha256::digest(&body).as_slice() != want {
                return Err(Failure::Failed(
                    "the encrypted media does not match its hash (file_enc_sha256)".into(),
                ));
            }
            DownloadUtils::verify_and_decrypt(&body, media_key, *media_type).map_err(|e| {
                Failure::Failed(format!(
                    "the media does not decrypt (bad MAC or key): {e:?}"
                ))
            })?
        }
        // Unencrypted media (channels): the plaintext hash below is the check.
        MediaDecryption::Plaintext { .. } => body,
    };
    if plain.len() > max {
        return Err(Failure::TooLarge(format!(
            "the media has {} bytes, more than {max} (WHATISUP_MEDIA_MAX_BYTES)",
            plain.len()
        )));
    }
    let want = src
        .file_sha256()
        .ok_or_else(|| Failure::Failed("the message names no hash of the media".into()))?;
    if Sha256::digest(&plain).as_slice() != want {
        return Err(Failure::Failed(
            "the decrypted media does not match its hash (file_sha256)".into(),
        ));
    }
    Ok(plain)
}

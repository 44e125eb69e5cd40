//! Media: uploads, bytes fetched from a send's `media_url`, and inbound media, stored in PostgreSQL (any node can
//! send or serve them) with a retention, plus signed, expiring download URLs (`GET /v1/media/{token}`).
//!
//! A token is `<media id>.<expiry, unix seconds>.<base64url HMAC-SHA256>` under a key derived from the master
//! key (`whatisup/v1/media-url`), so it needs no API key and no database row to be checked, and a master key
//! rotation keeps old URLs working (previous keys still verify).

use crate::config::Config;
use crate::crypto::MasterKeys;
use crate::error::{ApiError, ApiResult, Code};
use crate::webhooks::ssrf;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The kinds of message that carry media.
pub const KINDS: [&str; 5] = ["image", "video", "audio", "document", "sticker"];
pub const MAX_FILENAME: usize = 255;
const MAX_MIME: usize = 127;
/// Rows deleted per cleanup statement, so one round never holds a long lock.
const CLEANUP_BATCH: i64 = 500;

/// What is known of stored media (never the bytes).
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: String,
    pub mime_type: String,
    pub size: u32,
    pub sha256: String,
    pub filename: Option<String>,
    pub expires_at: DateTime<Utc>,
}

impl Stored {
    /// As kept in a message's body (`media`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "mime_type": self.mime_type,
            "size": self.size,
            "sha256": self.sha256,
            "filename": self.filename,
        })
    }
}

pub struct Media {
    pool: Pool,
    keys: Arc<MasterKeys>,
    pub max_bytes: usize,
    pub retention: Duration,
    public_url: String,
    guard: ssrf::Guard,
    client: reqwest::Client,
}

/// `type/subtype` (parameters such as `; charset=` dropped), lower-case; None when malformed.
pub fn normalize_mime(s: &str) -> Option<String> {
    let m = s
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (t, sub) = m.split_once('/')?;
    let token = |x: &str| {
        !x.is_empty()
            && x.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    (m.len() <= MAX_MIME && token(t) && token(sub)).then_some(m)
}

/// Whether a message of `kind` may carry `mime` (as WhatsApp shows them); else why not.
pub fn check_kind_mime(kind: &str, mime: &str) -> Result<(), String> {
    let ok = match kind {
        "image" => ["image/jpeg", "image/png", "image/webp"].contains(&mime),
        "video" => mime.starts_with("video/"),
        "audio" => mime.starts_with("audio/"),
        "sticker" => mime == "image/webp",
        "document" => true,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(match kind {
        "image" => format!("an image must be image/jpeg, image/png or image/webp, not {mime}"),
        "sticker" => format!("a sticker must be image/webp, not {mime}"),
        k => format!("{k} media must be {k}/*, not {mime}"),
    })
}

/// A file name the recipient may see: no path, no control characters.
pub fn valid_filename(f: &str) -> bool {
    !f.trim().is_empty()
        && f.chars().count() <= MAX_FILENAME
        && !f.chars().any(|c| c.is_control() || c == '/' || c == '\\')
}

pub fn valid_media_id(id: &str) -> bool {
    id.len() == 30 && id.starts_with("med_") && id[4..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Loads the bytes of stored media (the outbox, at send time).
pub async fn load(
    client: &deadpool_postgres::Client,
    id: &str,
) -> Result<Option<Vec<u8>>, tokio_postgres::Error> {
    Ok(client
        .query_opt("SELECT data FROM media WHERE id = $1", &[&id])
        .await?
        .map(|r| r.get(0)))
}

/// `id, mime_type, size, sha256, filename, expires_at` as [`Stored`].
fn stored_of(r: &tokio_postgres::Row) -> Stored {
    Stored {
        id: r.get(0),
        mime_type: r.get(1),
        size: u32::try_from(r.get::<_, i64>(2)).unwrap_or(u32::MAX),
        sha256: hex::encode(r.get::<_, Vec<u8>>(3)),
        filename: r.get(4),
        expires_at: r.get(5),
    }
}

/// Why a download token is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Invalid,
    Expired,
}

/// The text of an error and of its sources (reqwest hides the resolver's refusal in a source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

impl Media {
    pub fn new(cfg: &Config, pool: Pool, keys: Arc<MasterKeys>) -> anyhow::Result<Media> {
        use anyhow::Context;
        let guard = ssrf::Guard::new(
            ssrf::Cidr::parse_list(&cfg.media_allow_cidrs)
                .map_err(anyhow::Error::msg)
                .context("WHATISUP_MEDIA_ALLOW_CIDRS")?,
        )
        .for_setting("WHATISUP_MEDIA_ALLOW_CIDRS");
        let timeout = Duration::from_millis(cfg.media_fetch_timeout_ms.clamp(100, 600_000));
        let client = reqwest::Client::builder()
            // Only addresses the guard accepted are ever connected to (checked after resolution).
            .dns_resolver(Arc::new(ssrf::GuardedResolver(Arc::new(guard.clone()))))
            // A redirect could lead anywhere: not followed (the answer is an error naming it).
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("whatisup/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Media {
            pool,
            keys,
            // bytea holds at most 1 GiB; sizes travel as uint32.
            max_bytes: cfg.media_max_bytes.clamp(1, 1 << 30),
            retention: Duration::from_secs(cfg.media_retention_secs.max(60)),
            public_url: cfg.public_url.trim_end_matches('/').to_string(),
            guard,
            client,
        })
    }

    fn too_large(&self) -> ApiError {
        ApiError::new(
            Code::PayloadTooLarge,
            format!(
                "the media is larger than {} bytes (WHATISUP_MEDIA_MAX_BYTES)",
                self.max_bytes
            ),
        )
        .detail("max_bytes", self.max_bytes as u64)
    }

    /// A URL's media over the cap: the request names a bad URL (400), it is not itself too large.
    fn fetched_too_large(&self, field: &str) -> ApiError {
        ApiError::invalid(
            field,
            format!(
                "{field} is larger than {} bytes (WHATISUP_MEDIA_MAX_BYTES)",
                self.max_bytes
            ),
        )
        .detail("max_bytes", self.max_bytes as u64)
    }

    /// Stores bytes under the channel; kept for the retention, or `keep` when longer.
    #[allow(clippy::too_many_arguments)]
    pub async fn store(
        &self,
        customer_id: &str,
        channel_id: &str,
        origin: &str,
        mime_type: &str,
        filename: Option<&str>,
        data: &[u8],
        keep: Option<Duration>,
    ) -> ApiResult<Stored> {
        if data.len() > self.max_bytes {
            return Err(self.too_large());
        }
        let id = crate::store::new_id("med");
        let sha = Sha256::digest(data).to_vec();
        let secs = i64::try_from(keep.unwrap_or_default().max(self.retention).as_secs())
            .unwrap_or(i64::MAX / 4);
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "INSERT INTO media (id, customer_id, channel_id, origin, mime_type, filename, size, sha256, data,
                                    expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10::bigint))
                 RETURNING expires_at",
                &[
                    &id,
                    &customer_id,
                    &channel_id,
                    &origin,
                    &mime_type,
                    &filename,
                    &(data.len() as i64),
                    &sha,
                    &data,
                    &secs,
                ],
            )
            .await?;
        Ok(Stored {
            id,
            mime_type: mime_type.to_string(),
            size: data.len() as u32,
            sha256: hex::encode(sha),
            filename: filename.map(str::to_string),
            expires_at: row.get(0),
        })
    }

    /// Stores media that arrived with an inbound WhatsApp message, keyed by that message (`source_ref`): if the
    /// key is stored already (a redelivery racing the first delivery), the first row is kept and returned.
    #[allow(clippy::too_many_arguments)]
    pub async fn store_inbound(
        &self,
        customer_id: &str,
        channel_id: &str,
        source_ref: &str,
        mime_type: &str,
        filename: Option<&str>,
        data: &[u8],
    ) -> ApiResult<Stored> {
        if data.len() > self.max_bytes {
            return Err(self.too_large());
        }
        let id = crate::store::new_id("med");
        let sha = Sha256::digest(data).to_vec();
        let secs = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX / 4);
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "INSERT INTO media AS m (id, customer_id, channel_id, origin, mime_type, filename, size, sha256, data,
                                         expires_at, source_ref)
                 VALUES ($1, $2, $3, 'inbound', $4, $5, $6, $7, $8, now() + make_interval(secs => $9::bigint), $10)
                 ON CONFLICT (channel_id, source_ref) WHERE source_ref IS NOT NULL
                   DO UPDATE SET expires_at = greatest(m.expires_at, excluded.expires_at)
                 RETURNING id, mime_type, size, sha256, filename, expires_at",
                &[
                    &id,
                    &customer_id,
                    &channel_id,
                    &mime_type,
                    &filename,
                    &(data.len() as i64),
                    &sha,
                    &data,
                    &secs,
                    &source_ref,
                ],
            )
            .await?;
        Ok(stored_of(&row))
    }

    /// Inbound media stored earlier for the message `source_ref` (see [`Media::store_inbound`]), not expired.
    pub async fn find_inbound(
        &self,
        channel_id: &str,
        source_ref: &str,
    ) -> ApiResult<Option<Stored>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT id, mime_type, size, sha256, filename, expires_at FROM media
                 WHERE channel_id = $1 AND source_ref = $2 AND expires_at > now()",
                &[&channel_id, &source_ref],
            )
            .await?;
        Ok(row.as_ref().map(stored_of))
    }

    /// Media of the channel, not expired; its retention is extended to at least `keep` from now (a queued
    /// message that uses it must find it when it is sent).
    pub async fn lookup(
        &self,
        client: &deadpool_postgres::Client,
        channel_id: &str,
        id: &str,
        keep: Duration,
    ) -> ApiResult<Option<Stored>> {
        if !valid_media_id(id) {
            return Ok(None);
        }
        let secs = i64::try_from(keep.as_secs()).unwrap_or(i64::MAX / 4);
        let row = client
            .query_opt(
                "UPDATE media SET expires_at = greatest(expires_at, now() + make_interval(secs => $3::bigint))
                 WHERE id = $1 AND channel_id = $2 AND expires_at > now()
                 RETURNING mime_type, size, sha256, filename, expires_at",
                &[&id, &channel_id, &secs],
            )
            .await?;
        Ok(row.map(|r| Stored {
            id: id.to_string(),
            mime_type: r.get(0),
            size: u32::try_from(r.get::<_, i64>(1)).unwrap_or(u32::MAX),
            sha256: hex::encode(r.get::<_, Vec<u8>>(2)),
            filename: r.get(3),
            expires_at: r.get(4),
        }))
    }

    /// Fetches a user-supplied URL through the address guard, at most `max_bytes`, within the timeout. Errors
    /// are 400 invalid_request naming `field` (refused address, failure, redirect, too large). Returns the bytes and the Content-Type.
    pub async fn fetch(&self, url: &str, field: &str) -> ApiResult<(Vec<u8>, Option<String>)> {
        let u = self
            .guard
            .check_url(url)
            .map_err(|e| ApiError::invalid(field, format!("{field} is refused: {e}")))?;
        let mut resp = self.client.get(u).send().await.map_err(|e| {
            ApiError::invalid(
                field,
                format!("{field} could not be fetched: {}", chain(&e)),
            )
        })?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(ApiError::invalid(
                field,
                format!(
                    "{field} answered {status}: redirects are not followed; give the final URL"
                ),
            ));
        }
        if !status.is_success() {
            return Err(ApiError::invalid(
                field,
                format!("{field} answered {status}"),
            ));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(self.fetched_too_large(field));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut data = Vec::new();
        loop {
            let chunk = resp.chunk().await.map_err(|e| {
                ApiError::invalid(field, format!("{field} could not be read: {}", chain(&e)))
            })?;
            let Some(chunk) = chunk else { break };
            // Never more than the cap in memory, whatever the server claims.
            if data.len() + chunk.len() > self.max_bytes {
                return Err(self.fetched_too_large(field));
            }
            data.extend_from_slice(&chunk);
        }
        Ok((data, content_type))
    }

    pub fn token(&self, id: &str, expires_at: DateTime<Utc>) -> String {
        let payload = format!("{id}.{}", expires_at.timestamp());
        let sig = B64URL.encode(self.keys.sign_media(&payload));
        format!("{payload}.{sig}")
    }

    /// The signed download URL (absolute under WHATISUP_PUBLIC_URL when set).
    pub fn url(&self, id: &str, expires_at: DateTime<Utc>) -> String {
        format!(
            "{}/v1/media/{}",
            self.public_url,
            self.token(id, expires_at)
        )
    }

    /// The `media` object of a `message.received` event: the signed link and what is known of the bytes.
    pub fn event_json(&self, s: &Stored) -> serde_json::Value {
        serde_json::json!({
            "url": self.url(&s.id, s.expires_at),
            "mime_type": s.mime_type,
            "size": s.size,
            "sha256": s.sha256,
            "filename": s.filename,
            "expires_at": crate::wkt::rfc3339(s.expires_at),
        })
    }

    /// The media id a token grants, when its signature holds and it has not expired.
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        let mut parts = token.splitn(3, '.');
        let (Some(id), Some(exp), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Invalid);
        };
        let exp: i64 = exp.parse().map_err(|_| TokenError::Invalid)?;
        let sig = B64URL.decode(sig).map_err(|_| TokenError::Invalid)?;
        if !valid_media_id(id) || !self.keys.verify_media(&format!("{id}.{exp}"), &sig) {
            return Err(TokenError::Invalid);
        }
        if exp <= Utc::now().timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(id.to_string())
    }

    /// What `GET /v1/media/{token}` serves: (mime type, filename, bytes).
    pub async fn open(&self, token: &str) -> ApiResult<(String, Option<String>, Vec<u8>)> {
        let not_found =
            || ApiError::new(Code::NotFound, "no such media (unknown or tampered link)");
        // The contract has no "gone" code: an expired link is a `not_found` that says why.
        let gone = || ApiError::new(Code::NotFound, "this media link has expired");
        let id = match self.verify(token) {
            Ok(id) => id,
            Err(TokenError::Invalid) => return Err(not_found()),
            Err(TokenError::Expired) => return Err(gone()),
        };
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT mime_type, filename, data, expires_at > now() FROM media WHERE id = $1",
                &[&id],
            )
            .await?;
        match row {
            // Signed by us, so it existed: its retention ran out and the cleanup deleted it.
            None => Err(gone()),
            Some(r) if !r.get::<_, bool>(3) => Err(gone()),
            Some(r) => Ok((r.get(0), r.get(1), r.get(2))),
        }
    }

    /// Deletes expired media, in batches, every `every`, until `stop`.
    pub async fn cleanup_loop(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.cleanup().await {
                Ok(n) if n > 0 => tracing::debug!(deleted = n, "expired media deleted"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "media cleanup failed"),
            }
        }
    }

    /// One cleanup pass; the number of rows deleted.
    pub async fn cleanup(&self) -> anyhow::Result<u64> {
        let client = self.pool.get().await?;
        let mut total = 0;
        loop {
            let n = client
                .execute(
                    "DELETE FROM media WHERE id IN
                       (SELECT id FROM media WHERE expires_at < now() LIMIT $1 FOR UPDATE SKIP LOCKED)",
                    &[&CLEANUP_BATCH],
                )
                .await?;
            total += n;
            if (n as i64) < CLEANUP_BATCH {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_types_and_kinds() {
        assert_eq!(
            normalize_mime("Image/JPEG; charset=binary").as_deref(),
            Some("image/jpeg")
        );
        assert!(normalize_mime("nope").is_none());
        assert!(normalize_mime("a/").is_none());
        assert!(normalize_mime("a b/c").is_none());
        assert!(check_kind_mime("sticker", "image/webp").is_ok());
        assert!(check_kind_mime("sticker", "image/png").is_err());
        assert!(check_kind_mime("image", "image/png").is_ok());
        assert!(check_kind_mime("image", "video/mp4").is_err());
        assert!(check_kind_mime("audio", "audio/ogg").is_ok());
        assert!(check_kind_mime("document", "application/pdf").is_ok());
        assert!(valid_filename("report.pdf"));
        assert!(!valid_filename("../etc/passwd"));
        assert!(!valid_filename(" "));
        assert!(valid_media_id(&crate::store::new_id("med")));
        assert!(!valid_media_id("med_../x"));
    }
}

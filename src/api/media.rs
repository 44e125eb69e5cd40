//! Media uploads (`POST /v1/channels/{id}/media`, `MediaService.UploadMedia`): upload once, send many by
//! `media_id`. Storage, retention and signed download URLs are in `crate::media`.

use super::App;
use crate::error::{ApiError, ApiResult};
use crate::media::{self, Stored};
use crate::model::Principal;
use crate::pb;
use crate::store::channels::{self as channel_store, ChannelRow};
use std::sync::Arc;
use tonic::{Request, Response, Status as GrpcStatus};

pub fn upload_pb(s: &Stored) -> pb::UploadMediaResponse {
    pb::UploadMediaResponse {
        media_id: s.id.clone(),
        mime_type: s.mime_type.clone(),
        size: s.size,
        sha256: s.sha256.clone(),
        filename: s.filename.clone(),
        expires_at: Some(s.expires_at.into()),
    }
}

/// The checked (mime type, filename) of an upload.
pub fn check_upload(
    mime_type: &str,
    filename: Option<&str>,
) -> ApiResult<(String, Option<String>)> {
    let mime = match mime_type.trim() {
        "" => {
            return Err(ApiError::invalid(
                "mime_type",
                "the media type is required (REST: the Content-Type header, e.g. image/jpeg)",
            ));
        }
        m => media::normalize_mime(m).ok_or_else(|| {
            ApiError::invalid(
                "mime_type",
                "the media type must be type/subtype, e.g. image/jpeg",
            )
        })?,
    };
    let filename = match filename {
        None => None,
        Some(f) if media::valid_filename(f) => Some(f.to_string()),
        Some(_) => {
            return Err(ApiError::invalid(
                "filename",
                format!(
                    "filename must be 1 to {} characters, without / \\ or control characters",
                    media::MAX_FILENAME
                ),
            ));
        }
    };
    Ok((mime, filename))
}

impl App {
    /// The channel an upload goes to (checked before the body is read, so a wrong channel reads nothing).
    pub async fn media_channel(&self, p: &Principal, channel_id: &str) -> ApiResult<ChannelRow> {
        let client = self.pool.get().await?;
        channel_store::get_visible(&client, p, channel_id).await
    }

    pub async fn upload_media(
        &self,
        ch: &ChannelRow,
        mime_type: &str,
        filename: Option<&str>,
        data: &[u8],
    ) -> ApiResult<pb::UploadMediaResponse> {
        let (mime, filename) = check_upload(mime_type, filename)?;
        if data.is_empty() {
            return Err(ApiError::invalid("data", "the media is empty"));
        }
        let stored = self
            .media
            .store(
                &ch.customer_id,
                &ch.id,
                "upload",
                &mime,
                filename.as_deref(),
                data,
                None,
            )
            .await?;
        Ok(upload_pb(&stored))
    }
}

/// gRPC face.
pub struct MediaGrpc(pub Arc<App>);

#[tonic::async_trait]
impl pb::media_service_server::MediaService for MediaGrpc {
    async fn upload_media(
        &self,
        r: Request<pb::UploadMediaRequest>,
    ) -> Result<Response<pb::UploadMediaResponse>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        let req = r.into_inner();
        let ch = self.0.media_channel(&p, &req.channel_id).await?;
        Ok(Response::new(
            self.0
                .upload_media(&ch, &req.mime_type, req.filename.as_deref(), &req.data)
                .await?,
        ))
    }
}

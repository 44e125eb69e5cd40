//! API keys over the API: created with the caller's mode, listed, revoked.

use super::{App, actor};
use crate::error::{ApiError, ApiResult, Code};
use crate::model::Principal;
use crate::pb;
use crate::store::keys::{self as store, NewKey};
use chrono::Utc;
use serde_json::json;
use std::sync::Arc;
use tonic::{Request, Response, Status as GrpcStatus};

fn unscoped(p: &Principal) -> ApiResult<()> {
    match p.channel_id {
        Some(_) => Err(ApiError::new(
            Code::ChannelScopedKey,
            "a channel-bound key cannot manage API keys",
        )),
        None => Ok(()),
    }
}

impl App {
    pub async fn create_api_key(
        &self,
        p: &Principal,
        req: pb::CreateApiKeyRequest,
    ) -> ApiResult<pb::CreateApiKeyResponse> {
        unscoped(p)?;
        let name = req.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ApiError::invalid(
                "name",
                "name is required (at most 200 characters)",
            ));
        }
        let expires_at = match req.expires_at {
            None => None,
            Some(t) => {
                let t = t
                    .to_datetime()
                    .ok_or_else(|| ApiError::invalid("expires_at", "not a valid time"))?;
                if t <= Utc::now() {
                    return Err(ApiError::invalid(
                        "expires_at",
                        "expires_at must be in the future",
                    ));
                }
                Some(t)
            }
        };
        let mut client = self.pool.get().await?;
        if let Some(ch) = &req.channel_id {
            crate::store::channels::get_visible(&client, p, ch).await?;
        }
        let tx = client.transaction().await?;
        let (row, secret) = store::insert(
            &tx,
            &self.keys,
            &NewKey {
                customer_id: &p.customer_id,
                name,
                mode: p.mode,
                channel_id: req.channel_id.as_deref(),
                expires_at,
            },
        )
        .await?;
        crate::store::audit::insert(
            &tx,
            &crate::store::audit::Audit {
                customer_id: &p.customer_id,
                mode: Some(p.mode.as_str()),
                actor: &actor(p),
                action: "api_key.created",
                resource: &row.id,
                channel_id: req.channel_id.as_deref(),
                data: json!({"name": name, "prefix": row.prefix}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(pb::CreateApiKeyResponse {
            api_key: Some(row.to_pb()),
            secret,
        })
    }

    pub async fn list_api_keys(&self, p: &Principal) -> ApiResult<pb::ListApiKeysResponse> {
        unscoped(p)?;
        let client = self.pool.get().await?;
        let rows = store::list(&client, &p.customer_id, p.mode).await?;
        Ok(pb::ListApiKeysResponse {
            data: rows.iter().map(store::KeyRow::to_pb).collect(),
        })
    }

    pub async fn delete_api_key(&self, p: &Principal, id: &str) -> ApiResult<pb::ApiKey> {
        unscoped(p)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = store::revoke(&tx, &p.customer_id, p.mode, id)
            .await?
            .ok_or_else(|| {
                ApiError::new(Code::ApiKeyNotFound, "no such API key").detail("api_key_id", id)
            })?;
        crate::store::audit::insert(
            &tx,
            &crate::store::audit::Audit {
                customer_id: &p.customer_id,
                mode: Some(p.mode.as_str()),
                actor: &actor(p),
                action: "api_key.revoked",
                resource: id,
                channel_id: row.channel_id.as_deref(),
                data: json!({"prefix": row.prefix}),
            },
        )
        .await?;
        tx.commit().await?;
        self.forget_key(id);
        Ok(row.to_pb())
    }
}

pub struct ApiKeyGrpc(pub Arc<App>);

#[tonic::async_trait]
impl pb::api_key_service_server::ApiKeyService for ApiKeyGrpc {
    async fn create_api_key(
        &self,
        r: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        let (meta, _, req) = r.into_parts();
        let run = self.0.create_api_key(&p, req.clone());
        Ok(Response::new(
            crate::http::idempotency::grpc(
                &self.0,
                &p,
                &meta,
                "/whatisup.v1.ApiKeyService/CreateApiKey",
                &req,
                run,
            )
            .await?,
        ))
    }

    async fn list_api_keys(
        &self,
        r: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(self.0.list_api_keys(&p).await?))
    }

    async fn delete_api_key(
        &self,
        r: Request<pb::DeleteApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.delete_api_key(&p, &r.into_inner().id).await?,
        ))
    }
}

//! Channels: create, list, get, delete, connect, logout, QR and pair code.

use super::{App, actor};
use crate::error::{ApiError, ApiResult, Code};
use crate::events::journal::{AuditEntry, Release};
use crate::events::{Op, OpOutcome, StateWrite};
use crate::model::{Principal, Status};
use crate::pb;
use crate::sessions::{Command, Start};
use crate::store::channels::{self as store, ChannelRow};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status as GrpcStatus};

const MAX_NAME: usize = 200;
/// Largest page of `ListChannels`.
pub const MAX_PAGE: u32 = 100;
const MAX_METADATA_BYTES: usize = 16 * 1024;

fn audit(p: &Principal, action: &'static str, data: Value) -> Option<AuditEntry> {
    Some(AuditEntry {
        actor: actor(p),
        action,
        data,
        request_id: crate::http::current_request_id(),
    })
}

pub fn valid_phone(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or("");
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

impl App {
    async fn visible(&self, p: &Principal, id: &str) -> ApiResult<ChannelRow> {
        let client = self.pool.get().await?;
        store::get_visible(&client, p, id).await
    }

    pub async fn create_channel(
        &self,
        p: &Principal,
        req: pb::CreateChannelRequest,
    ) -> ApiResult<pb::Channel> {
        if p.channel_id.is_some() {
            return Err(ApiError::new(
                Code::ChannelScopedKey,
                "a channel-bound key cannot create channels",
            ));
        }
        let name = req.name.trim();
        if name.is_empty() {
            return Err(ApiError::invalid("name", "name is required"));
        }
        if name.chars().count() > MAX_NAME {
            return Err(ApiError::invalid(
                "name",
                format!("name is longer than {MAX_NAME} characters"),
            ));
        }
        let metadata = req
            .metadata
            .as_ref()
            .map(store::struct_to_json)
            .unwrap_or_else(|| json!({}));
        if metadata.to_string().len() > MAX_METADATA_BYTES {
            return Err(ApiError::invalid(
                "metadata",
                format!("metadata is larger than {MAX_METADATA_BYTES} bytes"),
            ));
        }
        if let Some(rate) = req.send_rate_per_sec
            && !(rate.is_finite() && (0.0..=1000.0).contains(&rate))
        {
            return Err(ApiError::invalid(
                "send_rate_per_sec",
                "send_rate_per_sec is 0 (no pacing) to 1000 messages per second",
            ));
        }
        let burst = match req.send_burst {
            None => None,
            Some(b @ 1..=1000) => Some(b as i32),
            Some(_) => {
                return Err(ApiError::invalid("send_burst", "send_burst is 1 to 1000"));
            }
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let ch = store::insert(&tx, p, name, &metadata, (req.send_rate_per_sec, burst)).await?;
        crate::store::audit::insert(
            &tx,
            &crate::store::audit::Audit {
                customer_id: &p.customer_id,
                mode: Some(p.mode.as_str()),
                actor: &actor(p),
                action: "channel.created",
                resource: &ch.id,
                channel_id: Some(&ch.id),
                data: json!({"name": name}),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(ch.to_pb())
    }

    pub async fn list_channels(
        &self,
        p: &Principal,
        req: pb::ListChannelsRequest,
    ) -> ApiResult<pb::ListChannelsResponse> {
        let limit = match req.limit {
            0 => 20,
            n @ 1..=MAX_PAGE => n as i64,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    format!("limit must be between 1 and {MAX_PAGE}"),
                ));
            }
        };
        let status =
            match req.status.as_str() {
                "" => None,
                s => Some(Status::parse(s).ok_or_else(|| {
                    ApiError::invalid("status", format!("unknown status \"{s}\""))
                })?),
            };
        let cursor = match req.cursor.as_str() {
            "" => None,
            c if c.starts_with("ch_") && c.len() < 64 => Some(c),
            _ => {
                return Err(ApiError::invalid(
                    "cursor",
                    "not a cursor from a previous page",
                ));
            }
        };
        let client = self.pool.get().await?;
        let (rows, next) = store::list(&client, p, limit, cursor, status).await?;
        Ok(pb::ListChannelsResponse {
            data: rows.iter().map(ChannelRow::to_pb).collect(),
            next_cursor: next,
        })
    }

    pub async fn get_channel(&self, p: &Principal, id: &str) -> ApiResult<pb::Channel> {
        Ok(self.visible(p, id).await?.to_pb())
    }

    /// After a logout or delete is committed: the session (wherever it runs) unlinks the device, stops and wipes
    /// the engine's keys; with no session running, the keys are wiped here.
    async fn unlink(&self, owner: Option<String>, engine: &str, id: &str) {
        match owner {
            Some(owner) => {
                let _ = self
                    .node
                    .command_to(Some(owner), id, Command::Stop { logout: true })
                    .await;
            }
            None => self.node.forget_keys(engine, id).await,
        }
    }

    pub async fn delete_channel(&self, p: &Principal, id: &str) -> ApiResult<pb::Channel> {
        let ch = self.visible(p, id).await?;
        let owner = self.node.owner(id).await?;
        let op = Op {
            channel_id: id.to_string(),
            delete: true,
            transition: ch.status.is_active().then_some((
                Status::Disconnected,
                Some(crate::model::Reason::UserRequest),
            )),
            state: StateWrite::Wipe,
            release: Release::Any,
            audit: audit(p, "channel.deleted", json!({})),
            ..Default::default()
        };
        let channel = match self.journal.submit(op).await? {
            OpOutcome::Applied { channel, .. } => channel,
            _ => return Err(ApiError::channel_not_found(id)),
        };
        // The session (wherever it runs) unlinks the device and stops; its own writes are refused from now on.
        self.unlink(owner, &ch.engine, id).await;
        Ok(channel.to_pb())
    }

    /// Starts the session of a channel in pending, disconnected or failed: claims the lease, moves the channel to
    /// `connecting`, and spawns the session task on this node.
    async fn start_session(&self, p: &Principal, ch: &ChannelRow) -> ApiResult<ChannelRow> {
        const STARTABLE: [Status; 3] = [Status::Pending, Status::Disconnected, Status::Failed];
        if !STARTABLE.contains(&ch.status) {
            return Err(ApiError::transition(ch.status.as_str(), "connect"));
        }
        if !self.node.has_engine(&ch.engine) {
            return Err(ApiError::unavailable(format!(
                "the {} engine is not available in this build; use a test key for sandbox channels",
                ch.engine
            )));
        }
        let fence = self.node.claim(&ch.id).await?;
        let op = Op {
            channel_id: ch.id.clone(),
            fence: Some(fence.clone()),
            expect: Some(STARTABLE.to_vec()),
            transition: Some((Status::Connecting, None)),
            audit: audit(p, "channel.connect", json!({"from": ch.status.as_str()})),
            ..Default::default()
        };
        match self.journal.submit(op).await {
            Ok(OpOutcome::Applied { channel, .. }) => {
                self.node
                    .spawn(ch.id.clone(), &ch.engine, fence, Start::Connect);
                Ok(channel)
            }
            Ok(OpOutcome::Unexpected(now)) => {
                self.node.release(&fence, &ch.id).await;
                Err(ApiError::transition(now.status.as_str(), "connect"))
            }
            Ok(_) => {
                self.node.release(&fence, &ch.id).await;
                Err(ApiError::channel_not_found(&ch.id))
            }
            Err(e) => {
                self.node.release(&fence, &ch.id).await;
                Err(e)
            }
        }
    }

    pub async fn connect_channel(&self, p: &Principal, id: &str) -> ApiResult<pb::Channel> {
        let ch = self.visible(p, id).await?;
        Ok(self.start_session(p, &ch).await?.to_pb())
    }

    pub async fn logout_channel(&self, p: &Principal, id: &str) -> ApiResult<pb::Channel> {
        const LOGGABLE: [Status; 5] = [
            Status::Qr,
            Status::Connecting,
            Status::Connected,
            Status::Reconnecting,
            Status::Failed,
        ];
        let ch = self.visible(p, id).await?;
        if !LOGGABLE.contains(&ch.status) {
            return Err(ApiError::transition(ch.status.as_str(), "log out"));
        }
        let owner = self.node.owner(id).await?;
        let op = Op {
            channel_id: id.to_string(),
            expect: Some(LOGGABLE.to_vec()),
            transition: Some((Status::Disconnected, Some(crate::model::Reason::Logout))),
            state: StateWrite::Wipe,
            release: Release::Any,
            audit: audit(p, "channel.logout", json!({"from": ch.status.as_str()})),
            ..Default::default()
        };
        let channel = match self.journal.submit(op).await? {
            OpOutcome::Applied { channel, .. } => channel,
            OpOutcome::Unexpected(now) => {
                return Err(ApiError::transition(now.status.as_str(), "log out"));
            }
            _ => return Err(ApiError::channel_not_found(id)),
        };
        self.unlink(owner, &ch.engine, id).await;
        Ok(channel.to_pb())
    }

    pub async fn get_qr(
        &self,
        p: &Principal,
        req: pb::GetQrRequest,
    ) -> ApiResult<pb::GetQrResponse> {
        let wait = match req.wait {
            None => 10,
            Some(w @ 0..=30) => w,
            Some(_) => return Err(ApiError::invalid("wait", "wait is at most 30 seconds")),
        };
        let mut ch = self.visible(p, &req.id).await?;
        if ch.status == Status::Connected {
            return Err(ApiError::new(
                Code::NoQr,
                "the channel is connected: no QR code",
            ));
        }
        // Subscribe before looking, so a QR published in between is not missed.
        let mut rx = self.hub.subscribe(Some(&ch.id));
        if matches!(ch.status, Status::Pending | Status::Disconnected) {
            match self.start_session(p, &ch).await {
                Ok(c) => ch = c,
                // Someone else started it at the same moment: fine, wait for its QR.
                Err(e) if e.code == Code::InvalidLifecycleTransition => {
                    ch = self.visible(p, &req.id).await?
                }
                Err(e) => return Err(e),
            }
        }
        if let (Status::Qr, Some(code), Some(exp)) = (ch.status, &ch.qr_code, ch.qr_expires_at)
            && exp > Utc::now()
        {
            return Ok(qr_response(code, exp));
        }
        if !matches!(ch.status, Status::Qr | Status::Connecting) {
            return Err(ApiError::new(
                Code::NoQr,
                format!("no QR code while the channel is {}", ch.status),
            ));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait as u64);
        loop {
            let ev = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return Err(ApiError::new(Code::NoQr, "no QR code yet; ask again")),
                Ok(Err(RecvError::Lagged(_))) => continue,
                Ok(Err(RecvError::Closed)) => return Err(ApiError::unavailable("shutting down")),
                Ok(Ok(ev)) => ev,
            };
            match ev.event.as_str() {
                "qr.updated" => {
                    let code = ev.data["qr"].as_str().unwrap_or_default();
                    let exp = ev.data["expires_at"]
                        .as_str()
                        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                        .map(|t| t.with_timezone(&Utc))
                        .unwrap_or_else(Utc::now);
                    return Ok(qr_response(code, exp));
                }
                "channel.status_changed" => {
                    let to = ev.data["to"].as_str().unwrap_or_default();
                    let from = ev.data["from"].as_str().unwrap_or_default();
                    if to != "qr" && (to != "connecting" || from == "qr") {
                        return Err(ApiError::new(
                            Code::NoQr,
                            format!("no QR code: the channel went {to}"),
                        ));
                    }
                }
                _ => {}
            }
        }
    }

    pub async fn request_pair_code(
        &self,
        p: &Principal,
        req: pb::RequestPairCodeRequest,
    ) -> ApiResult<pb::PairCodeResponse> {
        if !valid_phone(&req.phone_number) {
            return Err(ApiError::invalid(
                "phone_number",
                "phone_number must be E.164, e.g. +15551234567",
            ));
        }
        let ch = self.visible(p, &req.id).await?;
        let mut rx = self.hub.subscribe(Some(&ch.id));
        match ch.status {
            Status::Pending | Status::Disconnected => {
                self.start_session(p, &ch).await?;
            }
            Status::Qr | Status::Connecting => {}
            other => return Err(ApiError::transition(other.as_str(), "pair")),
        }
        let delivered = self
            .node
            .command(
                &ch.id,
                Command::PairCode {
                    phone_number: req.phone_number.clone(),
                },
            )
            .await?;
        if !delivered {
            return Err(ApiError::new(
                Code::NotConnected,
                "the session is not running; connect first",
            ));
        }
        // The request is the change (the session links by code instead of QR); the code itself is not recorded:
        // it is a credential until it expires. The number is masked to its last digits.
        let client = self.pool.get().await?;
        let masked = format!(
            "***{}",
            &req.phone_number[req.phone_number.len().saturating_sub(4)..]
        );
        crate::store::audit::insert(
            &client,
            &crate::store::audit::Audit {
                customer_id: &p.customer_id,
                mode: Some(p.mode.as_str()),
                actor: &actor(p),
                action: "channel.pair_code_requested",
                resource: &ch.id,
                channel_id: Some(&ch.id),
                data: json!({"phone_number": masked}),
            },
        )
        .await?;
        drop(client);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let ev = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => {
                    return Err(ApiError::unavailable(
                        "no pair code arrived in time; try again",
                    ));
                }
                Ok(Err(RecvError::Lagged(_))) => continue,
                Ok(Err(RecvError::Closed)) => return Err(ApiError::unavailable("shutting down")),
                Ok(Ok(ev)) => ev,
            };
            if ev.event == "pair_code.updated" {
                let exp = ev.data["expires_at"]
                    .as_str()
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|t| t.with_timezone(&Utc).into());
                return Ok(pb::PairCodeResponse {
                    code: ev.data["code"].as_str().unwrap_or_default().to_string(),
                    expires_at: exp,
                });
            }
        }
    }
}

fn qr_response(code: &str, expires_at: DateTime<Utc>) -> pb::GetQrResponse {
    pb::GetQrResponse {
        qr: code.to_string(),
        png: crate::qr::png_data_url(code),
        expires_at: Some(expires_at.into()),
    }
}

/// gRPC face.
pub struct ChannelGrpc(pub Arc<App>);

#[tonic::async_trait]
impl pb::channel_service_server::ChannelService for ChannelGrpc {
    async fn create_channel(
        &self,
        r: Request<pb::CreateChannelRequest>,
    ) -> Result<Response<pb::Channel>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        let (meta, _, req) = r.into_parts();
        let run = self.0.create_channel(&p, req.clone());
        Ok(Response::new(
            crate::http::idempotency::grpc(
                &self.0,
                &p,
                &meta,
                "/whatisup.v1.ChannelService/CreateChannel",
                &req,
                run,
            )
            .await?,
        ))
    }

    async fn list_channels(
        &self,
        r: Request<pb::ListChannelsRequest>,
    ) -> Result<Response<pb::ListChannelsResponse>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.list_channels(&p, r.into_inner()).await?,
        ))
    }

    async fn get_channel(
        &self,
        r: Request<pb::GetChannelRequest>,
    ) -> Result<Response<pb::Channel>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.get_channel(&p, &r.into_inner().id).await?,
        ))
    }

    async fn delete_channel(
        &self,
        r: Request<pb::DeleteChannelRequest>,
    ) -> Result<Response<pb::Channel>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.delete_channel(&p, &r.into_inner().id).await?,
        ))
    }

    async fn connect_channel(
        &self,
        r: Request<pb::ConnectChannelRequest>,
    ) -> Result<Response<pb::Channel>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.connect_channel(&p, &r.into_inner().id).await?,
        ))
    }

    async fn logout_channel(
        &self,
        r: Request<pb::LogoutChannelRequest>,
    ) -> Result<Response<pb::Channel>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.logout_channel(&p, &r.into_inner().id).await?,
        ))
    }

    async fn get_qr(
        &self,
        r: Request<pb::GetQrRequest>,
    ) -> Result<Response<pb::GetQrResponse>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(self.0.get_qr(&p, r.into_inner()).await?))
    }

    async fn request_pair_code(
        &self,
        r: Request<pb::RequestPairCodeRequest>,
    ) -> Result<Response<pb::PairCodeResponse>, GrpcStatus> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.request_pair_code(&p, r.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn phone_numbers() {
        assert!(super::valid_phone("+15551234567"));
        assert!(!super::valid_phone("15551234567"));
        assert!(!super::valid_phone("+0555123"));
        assert!(!super::valid_phone("+1555abc4567"));
        assert!(!super::valid_phone("+1234567890123456"));
    }
}

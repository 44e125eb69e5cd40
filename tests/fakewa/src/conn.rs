//! One task per client connection: preamble, Noise handshake, then encrypted stanzas both ways.
//! A malformed frame or stanza ends that connection (with a log line), never the server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use tokio::sync::{mpsc, oneshot, watch};
use whatsapp_rust::buffa::Message as _;
use whatsapp_rust::wacore::messages::decode_plaintext;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::marshal::{marshal, unmarshal_ref};
use whatsapp_rust::wacore_binary::util::unpack;
use whatsapp_rust::wacore_binary::{Jid, Node, NodeRef, Server};
use whatsapp_rust::waproto::whatsapp as wa;

use crate::iq::{self, attr, content_bytes, jid_attr, result};
use crate::noise::{Established, HelloOutcome, Transport, now_secs, respond_to_hello};
use crate::pairing::{self, AdvAccount, PrimaryHello, ScannedQr};
use crate::signal::DeviceKeys;
use crate::state::{
    Cmd, ConnRef, Login, NewDevice, PairCode, PairQr, Shared, device_address, lid_user,
    stream_error_conflict,
};
use crate::wire::Wire;
use crate::{ControlError, ControlResult, DeviceInfo, Outbound};

/// How long the client gets to complete the Noise handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a closing connection waits for the client to hang up.
const LINGER: Duration = Duration::from_secs(2);

/// A logged-in client pings every 15-30 s; one silent this long is gone without a goodbye.
const IDLE_LOGGED_IN: Duration = Duration::from_secs(120);

/// A client showing QR codes gives up after 160 s of refs, so this covers a whole pairing.
const IDLE_UNPAIRED: Duration = Duration::from_secs(300);

/// Number of QR refs offered per registration, as WhatsApp does (60 s for the first, 20 s each
/// for the rest, rotated by the client).
const QR_REFS: usize = 6;

pub(crate) async fn serve(shared: Arc<Shared>, mut wire: Wire) {
    let (me, cmds, shutdown) = shared.register_conn();
    let id = me.id;
    match run(&shared, &mut wire, me, cmds, shutdown).await {
        Ok(()) => tracing::debug!(conn = id, "connection closed"),
        Err(e) => tracing::info!(conn = id, "connection closed: {e:#}"),
    }
    shared.forget_conn(id);
}

async fn run(
    shared: &Arc<Shared>,
    wire: &mut Wire,
    me: ConnRef,
    cmds: mpsc::Receiver<Cmd>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let established = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(shared, wire))
        .await
        .map_err(|_| anyhow!("handshake timed out"))??;
    let Established {
        transport,
        client_static,
        payload,
        pattern,
    } = established;
    let payload =
        wa::ClientPayload::decode_from_slice(&payload).context("ClientPayload does not decode")?;
    let mut session = Session {
        shared: shared.clone(),
        wire,
        transport,
        me,
        client_static,
        role: Role::Connecting,
    };
    tracing::debug!(conn = session.me.id, pattern, "handshake complete");
    shared.count_handshake(pattern);
    let flow = match session.start(payload, pattern).await? {
        Flow::Continue => session.main_loop(cmds, shutdown).await?,
        other => other,
    };
    if flow == Flow::Close {
        // No longer this device's connection, even while the client takes its time hanging up.
        shared.forget_conn(session.me.id);
        session.wire.linger(LINGER).await;
    }
    Ok(())
}

async fn handshake(shared: &Shared, wire: &mut Wire) -> anyhow::Result<Established> {
    let hello = wire.recv_frame().await?;
    match respond_to_hello(&shared.identity, &hello)? {
        HelloOutcome::Done(established, server_hello) => {
            wire.send_frame(&server_hello).await?;
            Ok(*established)
        }
        HelloOutcome::NeedFinish(pending, server_hello) => {
            wire.send_frame(&server_hello).await?;
            let finish = wire.recv_frame().await?;
            pending.finish(&finish)
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Close after the last stanza has been read by the client.
    Close,
    /// The client is gone, or we mean to cut it off abruptly.
    Abort,
}

enum Role {
    Connecting,
    Registering(Box<Registration>),
    LoggedIn(LoggedIn),
}

struct LoggedIn {
    phone: String,
    device_id: u16,
}

/// A fresh client waiting to be linked, with the keys it registered with.
struct Registration {
    identity: [u8; 32],
    keys: DeviceKeys,
    /// `<pair-success>` sent, waiting for the client's `<pair-device-sign>`.
    awaiting_sign: Option<AwaitingSign>,
    /// The client asked for a pairing code (`companion_hello`).
    code: Option<CodeRequest>,
}

struct AwaitingSign {
    iq_id: String,
    phone: String,
    raw_id: u32,
    key_index: u32,
    reply: oneshot::Sender<ControlResult<DeviceInfo>>,
}

struct CodeRequest {
    phone: String,
    wrapped_companion: Vec<u8>,
    pairing_ref: Vec<u8>,
    /// The phone has answered with `primary_hello`; waiting for `companion_finish`.
    entered: Option<(PrimaryHello, oneshot::Sender<ControlResult<DeviceInfo>>)>,
}

struct Session<'w> {
    shared: Arc<Shared>,
    wire: &'w mut Wire,
    transport: Transport,
    me: ConnRef,
    client_static: [u8; 32],
    role: Role,
}

impl Session<'_> {
    async fn send(&mut self, node: &Node) -> anyhow::Result<()> {
        let plaintext = marshal(node)?;
        let ciphertext = self.transport.encrypt(&plaintext)?;
        self.wire.send_frame(&ciphertext).await
    }

    async fn start(
        &mut self,
        payload: wa::ClientPayload,
        pattern: &'static str,
    ) -> anyhow::Result<Flow> {
        if let Some(reg) = payload.device_pairing_data.as_option() {
            let keys = registration_keys(reg)?;
            let refs: Vec<String> = (0..QR_REFS)
                .map(|_| self.shared.new_id("2@fakewa"))
                .collect();
            self.shared.add_qr_refs(&refs, &self.me);
            self.role = Role::Registering(Box::new(Registration {
                identity: keys.identity,
                keys,
                awaiting_sign: None,
                code: None,
            }));
            let pair_device = NodeBuilder::new("iq")
                .attr("from", iq::server_jid())
                .attr("type", "set")
                .attr("id", self.shared.new_id("pd-"))
                .attr("xmlns", "md")
                .children([NodeBuilder::new("pair-device")
                    .children(
                        refs.into_iter()
                            .map(|r| NodeBuilder::new("ref").bytes(r.into_bytes()).build()),
                    )
                    .build()])
                .build();
            self.send(&pair_device).await?;
            return Ok(Flow::Continue);
        }

        let (Some(user), Some(device)) = (payload.username, payload.device) else {
            bail!("ClientPayload is neither a registration nor a login");
        };
        let phone = user.to_string();
        let device_id = u16::try_from(device).context("device number out of range")?;
        match self.shared.login(
            &phone,
            device_id,
            &self.client_static,
            pattern,
            self.wire.edge_routed,
            &self.me,
        ) {
            Login::Refused(failure) => {
                tracing::info!(conn = self.me.id, %phone, device_id, "login refused");
                self.send(&failure).await?;
                Ok(Flow::Close)
            }
            Login::Accepted {
                device_id,
                paired_at,
                replaced,
            } => {
                if let Some(old) = replaced
                    && old.id != self.me.id
                {
                    let _ = old
                        .tx
                        .try_send(Cmd::Close(Some(Box::new(stream_error_conflict(
                            "replaced",
                        )))));
                }
                let success = NodeBuilder::new("success")
                    .attr("t", iq::now())
                    .attr("lid", Jid::lid(lid_user(&phone)))
                    .attr("location", "fakewa")
                    .attr("creation", paired_at.to_string())
                    .attr("props", "1")
                    .build();
                self.send(&success).await?;
                tracing::debug!(conn = self.me.id, %phone, device_id, "logged in");
                self.role = Role::LoggedIn(LoggedIn { phone, device_id });
                Ok(Flow::Continue)
            }
        }
    }

    async fn main_loop(
        &mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Flow> {
        let mut heard_at = tokio::time::Instant::now();
        loop {
            while let Some(frame) = self.wire.buffered_frame() {
                let flow = self.on_frame(frame).await?;
                if flow != Flow::Continue {
                    return Ok(flow);
                }
            }
            if *shutdown.borrow() {
                return Ok(Flow::Abort);
            }
            let idle_limit = match self.role {
                Role::LoggedIn(_) => IDLE_LOGGED_IN,
                _ => IDLE_UNPAIRED,
            };
            tokio::select! {
                open = self.wire.read_some() => {
                    if !open? {
                        return Ok(Flow::Abort);
                    }
                    heard_at = tokio::time::Instant::now();
                }
                () = tokio::time::sleep_until(heard_at + idle_limit) => {
                    bail!("client silent for {idle_limit:?}");
                }
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return Ok(Flow::Abort) };
                    let flow = self.on_cmd(cmd).await?;
                    if flow != Flow::Continue {
                        return Ok(flow);
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return Ok(Flow::Abort);
                    }
                }
            }
        }
    }

    async fn on_frame(&mut self, frame: BytesMut) -> anyhow::Result<Flow> {
        let plaintext = self.transport.decrypt(frame)?;
        let unpacked = unpack(&plaintext).context("frame does not unpack")?;
        let node = unmarshal_ref(&unpacked).context("frame is not a binary stanza")?;
        if node.tag.as_ref() == "iq"
            && iq::ref_attr(&node, "xmlns").as_deref() == Some("encrypt")
            && iq::ref_attr(&node, "type").as_deref() == Some("set")
            && let Role::LoggedIn(me) = &self.role
        {
            // Pre-key upload or rotation, handled on the borrowed stanza (see parse_prekey_upload).
            let phone = me.phone.clone();
            let id = iq::ref_attr(&node, "id").unwrap_or_default().into_owned();
            let answer = self.on_encrypt_set(&id, &node, &phone);
            self.send(&answer).await?;
            return Ok(Flow::Continue);
        }
        let node = node.to_owned();
        self.on_node(&node).await
    }

    async fn on_node(&mut self, node: &Node) -> anyhow::Result<Flow> {
        match node.tag.as_ref() {
            "iq" => self.on_iq(node).await,
            "message" => {
                self.on_client_message(node).await?;
                Ok(Flow::Continue)
            }
            "receipt" => {
                self.on_client_receipt(node).await?;
                Ok(Flow::Continue)
            }
            "ack" => {
                if let (Role::LoggedIn(me), Some(id)) = (&self.role, attr(node, "id")) {
                    self.shared.mark_inbound_acked(&me.phone, &id, "ack");
                }
                Ok(Flow::Continue)
            }
            other => {
                tracing::trace!(conn = self.me.id, tag = other, "ignoring client stanza");
                Ok(Flow::Continue)
            }
        }
    }

    async fn on_cmd(&mut self, cmd: Cmd) -> anyhow::Result<Flow> {
        match cmd {
            Cmd::Send(node) => {
                self.send(&node).await?;
                Ok(Flow::Continue)
            }
            Cmd::Close(node) => {
                if let Some(node) = node {
                    self.send(&node).await?;
                }
                Ok(Flow::Close)
            }
            Cmd::Drop => Ok(Flow::Abort),
            Cmd::PairQr(pair) => {
                let PairQr { qr, phone, reply } = *pair;
                self.on_scan(qr, phone, reply).await?;
                Ok(Flow::Continue)
            }
            Cmd::PairCode(pair) => {
                let PairCode { phone, code, reply } = *pair;
                self.on_code_entered(phone, code, reply).await?;
                Ok(Flow::Continue)
            }
        }
    }

    // --- pairing -------------------------------------------------------------------------------

    fn registration(&mut self) -> ControlResult<&mut Registration> {
        match &mut self.role {
            Role::Registering(reg) => Ok(reg),
            _ => Err(ControlError::Failed(
                "this connection is not waiting to be paired".into(),
            )),
        }
    }

    async fn on_scan(
        &mut self,
        qr: ScannedQr,
        phone: String,
        reply: oneshot::Sender<ControlResult<DeviceInfo>>,
    ) -> anyhow::Result<()> {
        let client_static = self.client_static;
        let checked = self.registration().and_then(|reg| {
            if reg.awaiting_sign.is_some() {
                return Err(ControlError::Failed(
                    "a pairing is already in progress on this connection".into(),
                ));
            }
            if qr.noise_pub != client_static || qr.identity_pub != reg.identity {
                return Err(ControlError::BadRequest(
                    "the QR code's keys do not belong to the connection that showed its ref".into(),
                ));
            }
            Ok(())
        });
        match checked {
            Ok(()) => self.send_pair_success(phone, qr.adv_secret, reply).await,
            Err(e) => {
                let _ = reply.send(Err(e));
                Ok(())
            }
        }
    }

    /// The phone's verdict on a companion: `<pair-success>` with an ADV identity the companion
    /// can check against its ADV secret.
    async fn send_pair_success(
        &mut self,
        phone: String,
        adv_secret: [u8; 32],
        reply: oneshot::Sender<ControlResult<DeviceInfo>>,
    ) -> anyhow::Result<()> {
        let identity = match self.registration() {
            Ok(reg) => reg.identity,
            Err(e) => {
                let _ = reply.send(Err(e));
                return Ok(());
            }
        };
        let (raw_id, key_index) = self.shared.allocate_key_index(&phone);
        let primary = self.shared.party(&phone)?;
        let container = pairing::signed_device_identity_hmac(
            &AdvAccount {
                primary: &primary.identity,
                raw_id,
                key_index,
                timestamp: now_secs(),
            },
            &identity,
            &adv_secret,
        )?;
        let device_id = key_index as u16;
        let iq_id = self.shared.new_id("ps-");
        let node = NodeBuilder::new("iq")
            .attr("from", iq::server_jid())
            .attr("type", "set")
            .attr("id", iq_id.clone())
            .attr("xmlns", "md")
            .children([NodeBuilder::new("pair-success")
                .children([
                    NodeBuilder::new("device-identity").bytes(container).build(),
                    NodeBuilder::new("device")
                        .attr("jid", Jid::pn_device(&phone, device_id))
                        .attr("lid", Jid::lid_device(lid_user(&phone), device_id))
                        .build(),
                    NodeBuilder::new("platform").attr("name", "android").build(),
                ])
                .build()])
            .build();
        self.send(&node).await?;
        if let Ok(reg) = self.registration() {
            reg.awaiting_sign = Some(AwaitingSign {
                iq_id,
                phone,
                raw_id,
                key_index,
                reply,
            });
        }
        Ok(())
    }

    /// The client's answer to `<pair-success>`: a countersigned identity completes the pairing
    /// (then 515, so it reconnects and logs in); an error IQ means it rejected ours.
    async fn on_pair_answer(&mut self, node: &Node, sign: AwaitingSign) -> anyhow::Result<Flow> {
        let AwaitingSign {
            phone,
            raw_id,
            key_index,
            reply,
            ..
        } = sign;
        if attr(node, "type").as_deref() == Some("error") {
            let detail = node
                .get_optional_child("error")
                .map(|e| {
                    format!(
                        "{} {}",
                        attr(e, "code").unwrap_or_default(),
                        attr(e, "text").unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            let _ = reply.send(Err(ControlError::Failed(format!(
                "the client rejected the pairing: {detail}"
            ))));
            return Ok(Flow::Continue);
        }
        let Role::Registering(reg) = &self.role else {
            return Ok(Flow::Continue);
        };
        let signed = node
            .get_optional_child("pair-device-sign")
            .and_then(|s| s.get_optional_child("device-identity"))
            .and_then(content_bytes);
        let verified = match signed {
            Some(bytes) => pairing::verify_device_signature(bytes, &reg.identity),
            None => Err(anyhow!("pair-device-sign without device-identity")),
        };
        if let Err(e) = verified {
            let _ = reply.send(Err(ControlError::Failed(format!("{e:#}"))));
            return Ok(Flow::Continue);
        }
        let info = self.shared.complete_pairing(NewDevice {
            phone: phone.clone(),
            key_index,
            raw_id,
            noise_pub: self.client_static,
            keys: reg.keys.clone(),
        });
        tracing::info!(conn = self.me.id, %phone, device = info.device_id, "paired");
        let _ = reply.send(Ok(info));
        // As after a real pairing: the server ends the stream and the client logs in anew.
        self.send(&NodeBuilder::new("stream:error").attr("code", "515").build())
            .await?;
        Ok(Flow::Close)
    }

    /// `companion_hello`: the client asks for a pairing code for a phone number.
    async fn on_companion_hello(&mut self, id: &str, reg_node: &Node) -> anyhow::Result<()> {
        let client_static = self.client_static;
        let phone = jid_attr(reg_node, "jid").map(|j| j.user.to_string());
        let wrapped = reg_node
            .get_optional_child("link_code_pairing_wrapped_companion_ephemeral_pub")
            .and_then(content_bytes)
            .map(<[u8]>::to_vec);
        let auth_key = reg_node
            .get_optional_child("companion_server_auth_key_pub")
            .and_then(content_bytes);
        let (Some(phone), Some(wrapped), Some(auth_key)) = (phone, wrapped, auth_key) else {
            return self.send(&iq::error(id, 400, "bad-request")).await;
        };
        if auth_key != client_static || wrapped.len() != 80 {
            return self.send(&iq::error(id, 400, "bad-request")).await;
        }
        let pairing_ref = self.shared.new_id("2@code").into_bytes();
        let Ok(reg) = self.registration() else {
            return self.send(&iq::error(id, 400, "bad-request")).await;
        };
        reg.code = Some(CodeRequest {
            phone: phone.clone(),
            wrapped_companion: wrapped,
            pairing_ref: pairing_ref.clone(),
            entered: None,
        });
        self.shared.add_pair_code_request(&phone, &self.me);
        let answer = result(id)
            .children([NodeBuilder::new("link_code_companion_reg")
                .children([NodeBuilder::new("link_code_pairing_ref")
                    .bytes(pairing_ref)
                    .build()])
                .build()])
            .build();
        self.send(&answer).await
    }

    /// The user typed `code` on the phone: `primary_hello` to the companion.
    async fn on_code_entered(
        &mut self,
        phone: String,
        code: String,
        reply: oneshot::Sender<ControlResult<DeviceInfo>>,
    ) -> anyhow::Result<()> {
        let request = match self.registration() {
            Ok(Registration {
                code: Some(request),
                ..
            }) if request.phone == phone => Ok((
                request.wrapped_companion.clone(),
                request.pairing_ref.clone(),
            )),
            Ok(_) => Err(ControlError::NotFound(format!(
                "this connection did not ask for a pairing code for {phone}"
            ))),
            Err(e) => Err(e),
        };
        let (wrapped, pairing_ref) = match request {
            Ok(r) => r,
            Err(e) => {
                let _ = reply.send(Err(e));
                return Ok(());
            }
        };
        // PBKDF2 with 2^17 rounds, twice: keep it off the async workers.
        let hello = tokio::task::spawn_blocking(move || pairing::primary_hello(&wrapped, &code))
            .await
            .map_err(|e| anyhow!("pair-code task failed: {e}"))??;
        let primary = self.shared.party(&phone)?;
        let notification = NodeBuilder::new("notification")
            .attr("from", iq::server_jid())
            .attr("type", "link_code_companion_reg")
            .attr("id", self.shared.new_id("lc-"))
            .attr("t", iq::now())
            .children([NodeBuilder::new("link_code_companion_reg")
                .attr("stage", "primary_hello")
                .children([
                    NodeBuilder::new("link_code_pairing_wrapped_primary_ephemeral_pub")
                        .bytes(hello.wrapped_ephemeral.clone())
                        .build(),
                    NodeBuilder::new("primary_identity_pub")
                        .bytes(primary.identity.public_key.public_key_bytes().to_vec())
                        .build(),
                    NodeBuilder::new("link_code_pairing_ref")
                        .bytes(pairing_ref)
                        .build(),
                ])
                .build()])
            .build();
        self.send(&notification).await?;
        if let Ok(Registration {
            code: Some(request),
            ..
        }) = self.registration()
        {
            request.entered = Some((hello, reply));
        }
        Ok(())
    }

    /// `companion_finish`: the companion's key bundle, which opens only if the phone typed the
    /// code the companion displays.
    async fn on_companion_finish(&mut self, id: &str, reg_node: &Node) -> anyhow::Result<()> {
        self.send(&result(id).build()).await?;
        let bundle = reg_node
            .get_optional_child("link_code_pairing_wrapped_key_bundle")
            .and_then(content_bytes)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let companion_identity: Option<[u8; 32]> = reg_node
            .get_optional_child("companion_identity_public")
            .and_then(content_bytes)
            .and_then(|b| b.try_into().ok());
        let (phone, entered, identity) = match self.registration() {
            Ok(reg) => match reg.code.as_mut() {
                Some(request) => (request.phone.clone(), request.entered.take(), reg.identity),
                None => return Ok(()),
            },
            Err(_) => return Ok(()),
        };
        let Some((hello, reply)) = entered else {
            tracing::debug!(
                conn = self.me.id,
                "companion_finish before a code was entered"
            );
            return Ok(());
        };
        if companion_identity != Some(identity) {
            let _ = reply.send(Err(ControlError::Failed(
                "companion_finish names another identity than the registration".into(),
            )));
            return Ok(());
        }
        let primary = self.shared.party(&phone)?;
        match pairing::open_key_bundle(&hello, &primary.identity, &bundle, &identity) {
            Ok(adv_secret) => self.send_pair_success(phone, adv_secret, reply).await,
            Err(e) => {
                let _ = reply.send(Err(ControlError::Failed(format!("{e:#}"))));
                Ok(())
            }
        }
    }

    // --- IQs -----------------------------------------------------------------------------------

    async fn on_iq(&mut self, node: &Node) -> anyhow::Result<Flow> {
        let id = attr(node, "id").unwrap_or_default();
        let kind = attr(node, "type").unwrap_or_default();
        if kind == "result" || kind == "error" {
            // Answers to our own IQs; only the pairing one matters.
            if let Role::Registering(reg) = &mut self.role
                && reg.awaiting_sign.as_ref().is_some_and(|s| s.iq_id == id)
                && let Some(sign) = reg.awaiting_sign.take()
            {
                return self.on_pair_answer(node, sign).await;
            }
            return Ok(Flow::Continue);
        }
        let xmlns = attr(node, "xmlns").unwrap_or_default();
        tracing::trace!(
            conn = self.me.id,
            %xmlns,
            %kind,
            child = node.children().and_then(|c| c.first()).map(|c| c.tag.to_string()),
            "client IQ"
        );

        if xmlns == "md" {
            return self.on_md_iq(&id, node).await;
        }
        if xmlns == "w:p" || node.get_optional_child("ping").is_some() {
            self.send(&result(&id).build()).await?;
            return Ok(Flow::Continue);
        }
        let Role::LoggedIn(me) = &self.role else {
            // Nothing but pairing is served before login.
            self.send(&iq::error(&id, 401, "not-authorized")).await?;
            return Ok(Flow::Continue);
        };
        let phone = me.phone.clone();

        let answer = match (xmlns.as_str(), kind.as_str()) {
            ("passive", _) => {
                self.send(&result(&id).build()).await?;
                if node.get_optional_child("active").is_some() {
                    self.go_active(&phone).await?;
                }
                return Ok(Flow::Continue);
            }
            ("encrypt", "get") => {
                if let Some(key) = node.get_optional_child("key") {
                    iq::prekey_bundles(&self.shared, &id, key).await?
                } else if node.get_optional_child("count").is_some() {
                    result(&id)
                        .children([NodeBuilder::new("count")
                            .attr("value", self.shared.server_prekey_count(&phone).to_string())
                            .build()])
                        .build()
                } else {
                    // `<digest/>`: an empty answer makes the client skip validation.
                    result(&id).build()
                }
            }
            ("usync", _) => iq::usync(&self.shared, &id, node).await?,
            ("w:sync:app:state", _) => {
                let shared = &self.shared;
                iq::app_state(&id, node, || match shared.push_name_genesis(&phone) {
                    Ok(patch) => Some(patch),
                    Err(e) => {
                        tracing::warn!(%phone, "no push-name patch: {e:#}");
                        None
                    }
                })
            }
            ("w:m", _) if node.get_optional_child("media_conn").is_some() => {
                iq::media_conn(&id, &self.shared.media_host())
            }
            (other, _) => iq::simple(&id, other, node),
        };
        self.send(&answer).await?;
        Ok(Flow::Continue)
    }

    async fn on_md_iq(&mut self, id: &str, node: &Node) -> anyhow::Result<Flow> {
        if let Some(reg_node) = node.get_optional_child("link_code_companion_reg") {
            match attr(reg_node, "stage").as_deref() {
                Some("companion_hello") => self.on_companion_hello(id, reg_node).await?,
                Some("companion_finish") => self.on_companion_finish(id, reg_node).await?,
                _ => self.send(&iq::error(id, 400, "bad-request")).await?,
            }
            return Ok(Flow::Continue);
        }
        if node.get_optional_child("remove-companion-device").is_some() {
            // The client logs itself out.
            if let Role::LoggedIn(me) = &self.role {
                tracing::info!(conn = self.me.id, phone = %me.phone, "client unlinked itself");
                self.shared.forget_device(&me.phone);
            }
            self.send(&result(id).build()).await?;
            return Ok(Flow::Continue);
        }
        self.send(&result(id).build()).await?;
        Ok(Flow::Continue)
    }

    fn on_encrypt_set(&mut self, id: &str, node: &NodeRef<'_>, phone: &str) -> Node {
        if let Some(rotate) = node.get_optional_child("rotate") {
            match rotate.get_optional_child("skey").map(iq::parse_skey) {
                Some(Ok((key_id, public, signature))) => {
                    self.shared
                        .rotate_signed_prekey(phone, key_id, public, signature);
                    return result(id).build();
                }
                _ => return iq::error(id, 400, "bad-request"),
            }
        }
        match iq::parse_prekey_upload(node) {
            Ok((keys, one_time)) => {
                self.shared
                    .record_prekey_upload(phone, Some(keys), one_time);
                result(id).build()
            }
            Err(e) => {
                tracing::warn!(conn = self.me.id, "bad pre-key upload: {e:#}");
                iq::error(id, 400, "bad-request")
            }
        }
    }

    /// The client left passive mode: deliver its offline queue (messages it never acknowledged)
    /// and, until it has the push name, let the phone share the app-state key.
    async fn go_active(&mut self, phone: &str) -> anyhow::Result<()> {
        // What the device missed (injected but never acknowledged) comes first, then the end-of-queue marker.
        let offline = self.shared.offline_queue(phone);
        for node in &offline {
            self.send(node).await?;
        }
        // Edge routing info, as the real server hands out: the client stores it and opens its
        // next connection with the `ED` pre-intro.
        let ib = NodeBuilder::new("ib")
            .children([
                NodeBuilder::new("edge_routing")
                    .children([NodeBuilder::new("routing_info")
                        .bytes(format!("fakewa:{phone}").into_bytes())
                        .build()])
                    .build(),
                NodeBuilder::new("offline")
                    .attr("count", offline.len().to_string())
                    .build(),
            ])
            .build();
        self.send(&ib).await?;
        if self.shared.needs_key_share(phone) {
            match self.shared.key_share_stanza(phone).await {
                Ok(share) => self.send(&share).await?,
                Err(e) => {
                    tracing::warn!(conn = self.me.id, %phone, "no app-state key share: {e:#}")
                }
            }
        }
        Ok(())
    }

    // --- messages ------------------------------------------------------------------------------

    /// A message from the client: the copies addressed to fake contacts are decrypted with the
    /// contact's session and recorded; copies for the account's own phone are not needed.
    async fn on_client_message(&mut self, node: &Node) -> anyhow::Result<()> {
        let Role::LoggedIn(me) = &self.role else {
            return Ok(());
        };
        let (phone, device_id) = (me.phone.clone(), me.device_id);
        let id = attr(node, "id").ok_or_else(|| anyhow!("message without id"))?;
        let to = jid_attr(node, "to").ok_or_else(|| anyhow!("message without to"))?;
        let ack = NodeBuilder::new("ack")
            .attr("class", "message")
            .attr("id", id.clone())
            .attr("from", to.to_non_ad())
            .attr("t", iq::now())
            .build();
        // A message id the server already has: acknowledged again, delivered to nobody.
        if !self.shared.accept_outbound(&phone, &id) {
            tracing::info!(conn = self.me.id, %id, "duplicate message id dropped");
            return self.send(&ack).await;
        }

        let mut copies: Vec<(Jid, String, Vec<u8>, u8)> = Vec::new();
        let mut collect = |target: Jid, enc: &Node| {
            if let (Some(kind), Some(bytes)) = (attr(enc, "type"), content_bytes(enc)) {
                let version = attr(enc, "v").and_then(|v| v.parse().ok()).unwrap_or(2);
                copies.push((target, kind, bytes.to_vec(), version));
            }
        };
        if let Some(participants) = node.get_optional_child("participants") {
            for to_node in participants.get_children_by_tag("to") {
                if let (Some(target), Some(enc)) =
                    (jid_attr(to_node, "jid"), to_node.get_optional_child("enc"))
                {
                    collect(target, enc);
                }
            }
        }
        for enc in node.get_children_by_tag("enc") {
            collect(to.clone(), enc);
        }

        let sender = device_address(&phone, device_id);
        for (target, kind, ciphertext, version) in copies {
            let own = target.user == phone || target.user == lid_user(&phone);
            if own || target.server != Server::Pn || target.device != 0 {
                continue;
            }
            let contact = target.user.to_string();
            let decrypted = async {
                let party = self.shared.party(&contact)?;
                let plaintext = party
                    .inner
                    .lock()
                    .await
                    .decrypt(&sender, &kind, &ciphertext)
                    .await?;
                decode_plaintext(&plaintext, version)
            }
            .await;
            match decrypted {
                Ok(message) => match self.shared.open_media(&message) {
                    Some(Ok((kind, caption, media))) => self.shared.record_outbound(
                        &phone,
                        Outbound {
                            to: contact,
                            text: caption.unwrap_or_default(),
                            message_id: id.clone(),
                            r#type: kind.to_string(),
                            media: Some(media),
                            location: None,
                            reaction: None,
                            reply_to: None,
                        },
                    ),
                    Some(Err(e)) => {
                        tracing::warn!(conn = self.me.id, %id, "cannot open the media: {e:#}")
                    }
                    None => match Outbound::of(contact, id.clone(), &message) {
                        Some(out) => self.shared.record_outbound(&phone, out),
                        None => {
                            tracing::debug!(conn = self.me.id, %id, "unread message kind ignored")
                        }
                    },
                },
                Err(e) => {
                    tracing::warn!(conn = self.me.id, %id, %contact, "cannot decrypt: {e:#}")
                }
            }
        }

        self.send(&ack).await
    }

    /// The client's receipts for messages we delivered: the first one marks the message acked.
    async fn on_client_receipt(&mut self, node: &Node) -> anyhow::Result<()> {
        let Role::LoggedIn(me) = &self.role else {
            return Ok(());
        };
        let (phone, device_id) = (me.phone.clone(), me.device_id);
        let receipt = attr(node, "type").unwrap_or_else(|| "delivery".to_string());
        if receipt == "retry" {
            return self.on_retry_receipt(node, &phone, device_id).await;
        }
        let mut ids: Vec<String> = attr(node, "id").into_iter().collect();
        if let Some(list) = node.get_optional_child("list") {
            ids.extend(
                list.get_children_by_tag("item")
                    .filter_map(|i| attr(i, "id")),
            );
        }
        for id in ids {
            self.shared.mark_inbound_acked(&phone, &id, &receipt);
        }
        Ok(())
    }

    /// The client could not decrypt one of our messages: the contact re-sends it.
    async fn on_retry_receipt(
        &mut self,
        node: &Node,
        phone: &str,
        device_id: u16,
    ) -> anyhow::Result<()> {
        let Some(id) = attr(node, "id") else {
            return Ok(());
        };
        let count = node
            .get_optional_child("retry")
            .and_then(|r| attr(r, "count"))
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        tracing::info!(conn = self.me.id, %id, count, "retry receipt: re-sending");
        let bundle = iq::retry_bundle(node, device_id);
        match self.shared.retry_stanza(phone, &id, count, bundle).await {
            Ok(Some(resend)) => self.send(&resend).await,
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::warn!(conn = self.me.id, %id, "cannot answer the retry receipt: {e:#}");
                Ok(())
            }
        }
    }
}

fn registration_keys(
    reg: &wa::client_payload::DevicePairingRegistrationData,
) -> anyhow::Result<DeviceKeys> {
    fn be(bytes: Option<&Vec<u8>>, what: &str) -> anyhow::Result<u32> {
        let b = bytes.ok_or_else(|| anyhow!("registration lacks {what}"))?;
        if b.is_empty() || b.len() > 4 {
            bail!("registration {what} has {} bytes", b.len());
        }
        Ok(b.iter().fold(0u32, |acc, x| (acc << 8) | u32::from(*x)))
    }
    fn key(bytes: Option<&Vec<u8>>, what: &str) -> anyhow::Result<[u8; 32]> {
        bytes
            .and_then(|b| b.as_slice().try_into().ok())
            .ok_or_else(|| anyhow!("registration {what} missing or not 32 bytes"))
    }
    Ok(DeviceKeys {
        registration_id: be(reg.e_regid.as_ref(), "registration id")?,
        identity: key(reg.e_ident.as_ref(), "identity key")?,
        signed_id: be(reg.e_skey_id.as_ref(), "signed pre-key id")?,
        signed_public: key(reg.e_skey_val.as_ref(), "signed pre-key")?,
        signed_signature: reg
            .e_skey_sig
            .clone()
            .filter(|s| s.len() == 64)
            .ok_or_else(|| anyhow!("registration signed pre-key signature missing"))?,
    })
}

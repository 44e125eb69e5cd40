//! Server-wide state: paired devices (remembered by phone number for the life of the process),
//! the connections that are waiting to be paired, and every Signal party the server plays.
//!
//! One `std::sync::Mutex` guards the device table and is never held across an await; each
//! Signal party has its own async mutex, so contacts do not serialize on each other.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot, watch};
use whatsapp_rust::buffa::MessageField;
use whatsapp_rust::wacore::libsignal::protocol::{PreKeyBundle, ProtocolAddress};
use whatsapp_rust::wacore::messages::MessageUtils;
use whatsapp_rust::wacore::types::jid::JidExt as _;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::{Jid, Node};
use whatsapp_rust::waproto::whatsapp as wa;

use crate::noise::{ServerIdentity, now_secs};
use crate::pairing::{self, ScannedQr};
use crate::signal::{DeviceKeys, Party};
use crate::{
    ControlError, ControlResult, DeviceInfo, InboundStatus, Outbound, ReceiptStatus, Stats,
};

/// How many of a companion's uploaded one-time pre-keys the server keeps. The client uploads
/// hundreds; contacts only ever need a few, and this keeps a thousand devices small.
const KEPT_ONE_TIME_PREKEYS: usize = 16;

/// How often a contact answers retry receipts for one message before giving up.
const MAX_RETRIES: u32 = 5;

/// How long a control waits for the client to finish a pairing it started.
const PAIRING_TIMEOUT: Duration = Duration::from_secs(60);

/// A request to a connection task. Boxed payloads keep the per-connection channel small.
pub(crate) enum Cmd {
    Send(Box<Node>),
    /// Send the node (if any), then close the connection.
    Close(Option<Box<Node>>),
    /// Close without a word, like a network blip.
    Drop,
    PairQr(Box<PairQr>),
    PairCode(Box<PairCode>),
}

pub(crate) struct PairQr {
    pub(crate) qr: ScannedQr,
    pub(crate) phone: String,
    pub(crate) reply: oneshot::Sender<ControlResult<DeviceInfo>>,
}

pub(crate) struct PairCode {
    pub(crate) phone: String,
    pub(crate) code: String,
    pub(crate) reply: oneshot::Sender<ControlResult<DeviceInfo>>,
}

/// A handle on a connection task.
#[derive(Clone)]
pub(crate) struct ConnRef {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::Sender<Cmd>,
}

/// Per phone number, what outlives a logout: device numbers are never reused.
struct Account {
    raw_id: u32,
    last_key_index: u32,
}

pub(crate) struct DeviceRecord {
    pub(crate) phone: String,
    pub(crate) device_id: u16,
    pub(crate) key_index: u32,
    pub(crate) raw_id: u32,
    /// The Noise static key the device logs in with: its credential.
    noise_pub: [u8; 32],
    pub(crate) keys: DeviceKeys,
    one_time: VecDeque<(u32, [u8; 32])>,
    /// One-time pre-keys the client believes the server holds.
    server_prekeys: usize,
    app_state_key_id: Vec<u8>,
    app_state_key: [u8; 32],
    conn: Option<ConnRef>,
    banned_until: Option<u64>,
    paired_at: u64,
    logins: u64,
    last_handshake: Option<&'static str>,
    last_edge_routed: bool,
    /// The client was given the push-name genesis patch, so it needs no more key shares.
    genesis_served: bool,
    key_shares: u32,
    inbound: Journal<InboundStatus>,
    outbound: Journal<Outbound>,
    /// Ids of every message stanza the device sent that the server accepted: a repeat is acknowledged and
    /// dropped, as WhatsApp's servers do (a client re-sending after a crash must not deliver twice).
    accepted: Journal<()>,
    /// Repeats dropped.
    duplicates: u64,
    /// Injected messages the client has not acknowledged yet, oldest first: delivered again at the next login,
    /// as WhatsApp's offline queue does.
    unacked: VecDeque<(String, Node)>,
}

/// The most unacknowledged messages kept per device for redelivery.
const UNACKED_CAPACITY: usize = 10_000;

/// The most messages remembered per device and direction; the oldest are forgotten first, so a
/// long benchmark does not grow without bound.
const JOURNAL_CAPACITY: usize = 100_000;

/// An append-only, bounded, id-indexed message log.
struct Journal<T> {
    entries: VecDeque<(String, T)>,
    /// Sequence number of `entries[0]`.
    base: u64,
    index: HashMap<String, u64>,
}

impl<T: Clone> Journal<T> {
    fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            base: 0,
            index: HashMap::new(),
        }
    }

    /// Appends; an id already present keeps pointing at its first entry.
    fn push(&mut self, id: String, entry: T) {
        if self.entries.len() == JOURNAL_CAPACITY
            && let Some((old, _)) = self.entries.pop_front()
        {
            if self.index.get(&old) == Some(&self.base) {
                self.index.remove(&old);
            }
            self.base += 1;
        }
        let seq = self.base + self.entries.len() as u64;
        self.index.entry(id.clone()).or_insert(seq);
        self.entries.push_back((id, entry));
    }

    fn position(&self, id: &str) -> Option<usize> {
        let seq = *self.index.get(id)?;
        usize::try_from(seq.checked_sub(self.base)?).ok()
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        let i = self.position(id)?;
        self.entries.get_mut(i).map(|(_, e)| e)
    }

    fn get(&self, id: &str) -> Option<&T> {
        let i = self.position(id)?;
        self.entries.get(i).map(|(_, e)| e)
    }

    fn all(&self) -> Vec<T> {
        self.entries.iter().map(|(_, e)| e.clone()).collect()
    }
}

impl DeviceRecord {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            phone_number: self.phone.clone(),
            device_id: self.device_id,
            jid: format!("{}:{}@s.whatsapp.net", self.phone, self.device_id),
            lid: format!("{}:{}@lid", lid_user(&self.phone), self.device_id),
            connected: self.conn.is_some(),
            banned_until: self.banned_until.filter(|t| *t > now_secs()),
            paired_at: self.paired_at,
            logins: self.logins,
            last_handshake: self.last_handshake.map(str::to_string),
            last_edge_routed: self.last_edge_routed,
            prekeys: self.server_prekeys,
            key_shares: self.key_shares,
        }
    }
}

/// The fake LID of a phone number: deterministic, so it survives nothing but needs no table.
pub(crate) fn lid_user(phone: &str) -> String {
    format!("9{phone}")
}

/// The phone number behind a fake LID user, if it is one of ours.
fn phone_of_lid(lid: &str) -> Option<&str> {
    lid.strip_prefix('9')
}

#[derive(Default)]
struct ConnEntries {
    qr_refs: Vec<String>,
    pair_code_phone: Option<String>,
    logged_in_phone: Option<String>,
}

#[derive(Default)]
struct State {
    devices: HashMap<String, DeviceRecord>,
    accounts: HashMap<String, Account>,
    qr_refs: HashMap<String, ConnRef>,
    pair_codes: HashMap<String, ConnRef>,
    /// What each live connection has registered, so closing it touches only its own entries.
    conns: HashMap<u64, ConnEntries>,
}

pub(crate) struct Shared {
    pub(crate) identity: ServerIdentity,
    state: Mutex<State>,
    parties: Mutex<HashMap<String, Arc<PartyHandle>>>,
    next_conn: AtomicU64,
    next_id: AtomicU64,
    shutdown: watch::Sender<bool>,
    open_connections: AtomicU64,
    handshakes: [AtomicU64; 3],
    /// The media host announced in media_conn (this server's address).
    media_host: std::sync::OnceLock<String>,
    /// Uploaded (encrypted) media by direct path, oldest first; bounded.
    media: Mutex<VecDeque<(String, Vec<u8>)>>,
    /// How long the media host waits before answering a download or an upload (a slow CDN), in milliseconds.
    media_delay_ms: AtomicU64,
    /// Downloads being answered now, and the most ever at once; the same for uploads.
    media_downloads: AtomicU64,
    media_downloads_max: AtomicU64,
    media_uploads: AtomicU64,
    media_uploads_max: AtomicU64,
}

/// Most media blobs kept (the oldest go first).
const MEDIA_CAPACITY: usize = 64;

/// What a login attempt gets.
pub(crate) enum Login {
    Accepted {
        device_id: u16,
        paired_at: u64,
        /// The connection this login replaces, to be told so.
        replaced: Option<ConnRef>,
    },
    Refused(Node),
}

/// The parts of a finished pairing the device table needs.
pub(crate) struct NewDevice {
    pub(crate) phone: String,
    pub(crate) key_index: u32,
    pub(crate) raw_id: u32,
    pub(crate) noise_pub: [u8; 32],
    pub(crate) keys: DeviceKeys,
}

impl Shared {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            identity: ServerIdentity::generate()?,
            state: Mutex::new(State::default()),
            parties: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            next_id: AtomicU64::new(rand::random::<u32>() as u64),
            shutdown: watch::channel(false).0,
            open_connections: AtomicU64::new(0),
            handshakes: Default::default(),
            media_host: std::sync::OnceLock::new(),
            media: Mutex::new(VecDeque::new()),
            media_delay_ms: AtomicU64::new(0),
            media_downloads: AtomicU64::new(0),
            media_downloads_max: AtomicU64::new(0),
            media_uploads: AtomicU64::new(0),
            media_uploads_max: AtomicU64::new(0),
        })
    }

    pub(crate) fn set_media_delay(&self, delay: std::time::Duration) {
        self.media_delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Answers a download of `direct_path` after the configured delay, counting the downloads in flight.
    pub(crate) async fn media_download(&self, direct_path: &str) -> Option<Vec<u8>> {
        self.slow_media(&self.media_downloads, &self.media_downloads_max)
            .await;
        self.media_blob(direct_path)
    }

    /// Keeps an uploaded blob after the configured delay, counting the uploads in flight; its direct path.
    pub(crate) async fn media_upload(&self, kind: &str, blob: Vec<u8>) -> String {
        self.slow_media(&self.media_uploads, &self.media_uploads_max)
            .await;
        self.store_media(kind, blob)
    }

    /// Waits the media delay as one of `now` transfers in flight, raising `max` to the most at once.
    async fn slow_media(&self, now: &AtomicU64, max: &AtomicU64) {
        let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(at_once, Ordering::SeqCst);
        let delay = self.media_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        now.fetch_sub(1, Ordering::SeqCst);
    }

    pub(crate) fn set_media_host(&self, host: String) {
        let _ = self.media_host.set(host);
    }

    pub(crate) fn media_host(&self) -> String {
        self.media_host.get().cloned().unwrap_or_default()
    }

    /// Keeps an uploaded blob under a new direct path, which it returns.
    pub(crate) fn store_media(&self, kind: &str, blob: Vec<u8>) -> String {
        let path = format!("/v/t62.fake/{kind}/{}", self.new_id("M"));
        let mut media = self.media.lock().unwrap_or_else(|e| e.into_inner());
        if media.len() >= MEDIA_CAPACITY {
            media.pop_front();
        }
        media.push_back((path.clone(), blob));
        path
    }

    /// A media message as its recipient sees it: (kind, caption, what the bytes decrypt to). None when the
    /// message carries no media.
    pub(crate) fn open_media(
        &self,
        m: &wa::Message,
    ) -> Option<anyhow::Result<(&'static str, Option<String>, crate::OutboundMedia)>> {
        use whatsapp_rust::wacore::download::{DownloadUtils, MediaType};
        let (kind, media_type, path, key, mime, caption, filename) =
            if let Some(i) = m.image_message.as_option() {
                (
                    "image",
                    MediaType::Image,
                    &i.direct_path,
                    &i.media_key,
                    &i.mimetype,
                    i.caption.clone(),
                    None,
                )
            } else if let Some(v) = m.video_message.as_option() {
                (
                    "video",
                    MediaType::Video,
                    &v.direct_path,
                    &v.media_key,
                    &v.mimetype,
                    v.caption.clone(),
                    None,
                )
            } else if let Some(a) = m.audio_message.as_option() {
                (
                    "audio",
                    MediaType::Audio,
                    &a.direct_path,
                    &a.media_key,
                    &a.mimetype,
                    None,
                    None,
                )
            } else if let Some(d) = m.document_message.as_option() {
                (
                    "document",
                    MediaType::Document,
                    &d.direct_path,
                    &d.media_key,
                    &d.mimetype,
                    d.caption.clone(),
                    d.file_name.clone(),
                )
            } else if let Some(st) = m.sticker_message.as_option() {
                (
                    "sticker",
                    MediaType::Sticker,
                    &st.direct_path,
                    &st.media_key,
                    &st.mimetype,
                    None,
                    None,
                )
            } else {
                return None;
            };
        let opened = (|| {
            let path = path
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("no direct_path"))?;
            let key = key
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("no media_key"))?;
            let blob = self
                .media_blob(path)
                .ok_or_else(|| anyhow::anyhow!("nothing uploaded at {path}"))?;
            let plain = DownloadUtils::verify_and_decrypt(&blob, key, media_type)
                .map_err(|e| anyhow::anyhow!("decrypt: {e:?}"))?;
            use sha2::Digest;
            Ok(crate::OutboundMedia {
                sha256: hex::encode(sha2::Sha256::digest(&plain)),
                size: plain.len() as u64,
                mime_type: mime.clone().unwrap_or_default(),
                filename,
            })
        })();
        Some(opened.map(|media| (kind, caption, media)))
    }

    pub(crate) fn media_blob(&self, direct_path: &str) -> Option<Vec<u8>> {
        let path = direct_path.split('?').next().unwrap_or(direct_path);
        let media = self.media.lock().unwrap_or_else(|e| e.into_inner());
        media
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh stanza id (server-generated message and IQ ids).
    pub(crate) fn new_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}{n:016X}")
    }

    // --- connections -------------------------------------------------------------------------

    pub(crate) fn register_conn(&self) -> (ConnRef, mpsc::Receiver<Cmd>, watch::Receiver<bool>) {
        let (tx, rx) = mpsc::channel(32);
        let conn = ConnRef {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            tx,
        };
        self.state().conns.insert(conn.id, ConnEntries::default());
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        (conn, rx, self.shutdown.subscribe())
    }

    pub(crate) fn count_handshake(&self, pattern: &str) {
        let i = match pattern {
            "XX" => 0,
            "IK" => 1,
            _ => 2,
        };
        self.handshakes[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> Stats {
        let st = self.state();
        Stats {
            open_connections: self.open_connections.load(Ordering::Relaxed),
            paired_devices: st.devices.len(),
            connected_devices: st.devices.values().filter(|d| d.conn.is_some()).count(),
            handshakes_xx: self.handshakes[0].load(Ordering::Relaxed),
            handshakes_ik: self.handshakes[1].load(Ordering::Relaxed),
            handshakes_xx_fallback: self.handshakes[2].load(Ordering::Relaxed),
            heap_bytes: crate::heap_bytes(),
            media_downloads_max: self.media_downloads_max.load(Ordering::SeqCst),
            media_uploads_max: self.media_uploads_max.load(Ordering::SeqCst),
        }
    }

    /// Unregisters a connection (idempotent).
    pub(crate) fn forget_conn(&self, id: u64) {
        let mut st = self.state();
        let Some(entries) = st.conns.remove(&id) else {
            return;
        };
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
        for r in entries.qr_refs {
            st.qr_refs.remove(&r);
        }
        if let Some(phone) = entries.pair_code_phone
            && st.pair_codes.get(&phone).is_some_and(|c| c.id == id)
        {
            st.pair_codes.remove(&phone);
        }
        if let Some(phone) = entries.logged_in_phone
            && let Some(device) = st.devices.get_mut(&phone)
            && device.conn.as_ref().is_some_and(|c| c.id == id)
        {
            device.conn = None;
        }
    }

    /// Tells every connection task to close its socket.
    pub(crate) fn close_all_connections(&self) {
        self.shutdown.send_replace(true);
    }

    pub(crate) fn add_qr_refs(&self, refs: &[String], conn: &ConnRef) {
        let mut st = self.state();
        for r in refs {
            st.qr_refs.insert(r.clone(), conn.clone());
        }
        if let Some(entries) = st.conns.get_mut(&conn.id) {
            entries.qr_refs.extend(refs.iter().cloned());
        }
    }

    pub(crate) fn add_pair_code_request(&self, phone: &str, conn: &ConnRef) {
        let mut st = self.state();
        st.pair_codes.insert(phone.to_string(), conn.clone());
        if let Some(entries) = st.conns.get_mut(&conn.id) {
            entries.pair_code_phone = Some(phone.to_string());
        }
    }

    /// Decides a LOGIN handshake: the device must be paired with this very Noise key.
    pub(crate) fn login(
        &self,
        phone: &str,
        device_id: u16,
        noise_pub: &[u8; 32],
        pattern: &'static str,
        edge_routed: bool,
        conn: &ConnRef,
    ) -> Login {
        let mut st = self.state();
        let Some(device) = st.devices.get_mut(phone) else {
            return Login::Refused(failure(401, None));
        };
        if device.device_id != device_id || device.noise_pub != *noise_pub {
            return Login::Refused(failure(401, None));
        }
        if let Some(until) = device.banned_until {
            let now = now_secs();
            if until > now {
                return Login::Refused(failure(402, Some(until - now)));
            }
            device.banned_until = None;
        }
        device.logins += 1;
        device.last_handshake = Some(pattern);
        device.last_edge_routed = edge_routed;
        let replaced = device.conn.replace(conn.clone());
        let accepted = Login::Accepted {
            device_id: device.device_id,
            paired_at: device.paired_at,
            replaced,
        };
        if let Some(entries) = st.conns.get_mut(&conn.id) {
            entries.logged_in_phone = Some(phone.to_string());
        }
        accepted
    }

    /// Hands out the next companion number of a phone (never reused while the process lives).
    pub(crate) fn allocate_key_index(&self, phone: &str) -> (u32, u32) {
        let mut st = self.state();
        let account = st
            .accounts
            .entry(phone.to_string())
            .or_insert_with(|| Account {
                raw_id: rand::random::<u32>() >> 1,
                last_key_index: 0,
            });
        account.last_key_index += 1;
        (account.raw_id, account.last_key_index)
    }

    /// Records a countersigned pairing; a device previously paired to the number is unlinked.
    pub(crate) fn complete_pairing(&self, new: NewDevice) -> DeviceInfo {
        let mut key_id = vec![0u8, 0, 0, 0];
        key_id.extend_from_slice(&rand::random::<[u8; 2]>());
        let record = DeviceRecord {
            phone: new.phone.clone(),
            device_id: new.key_index as u16,
            key_index: new.key_index,
            raw_id: new.raw_id,
            noise_pub: new.noise_pub,
            keys: new.keys,
            one_time: VecDeque::new(),
            server_prekeys: 0,
            app_state_key_id: key_id,
            app_state_key: rand::random(),
            conn: None,
            banned_until: None,
            paired_at: now_secs(),
            logins: 0,
            last_handshake: None,
            last_edge_routed: false,
            genesis_served: false,
            key_shares: 0,
            inbound: Journal::new(),
            outbound: Journal::new(),
            accepted: Journal::new(),
            duplicates: 0,
            unacked: VecDeque::new(),
        };
        let info = record.info();
        let old = self.state().devices.insert(new.phone.clone(), record);
        if let Some(conn) = old.and_then(|d| d.conn) {
            let _ = conn
                .tx
                .try_send(Cmd::Close(Some(Box::new(stream_error_conflict(
                    "device_removed",
                )))));
        }
        info
    }

    fn with_device<T>(
        &self,
        phone: &str,
        f: impl FnOnce(&mut DeviceRecord) -> T,
    ) -> ControlResult<T> {
        let mut st = self.state();
        let device = st
            .devices
            .get_mut(phone)
            .ok_or_else(|| ControlError::UnknownPhone(phone.to_string()))?;
        Ok(f(device))
    }

    fn live_conn(&self, phone: &str) -> ControlResult<ConnRef> {
        self.with_device(phone, |d| d.conn.clone())?
            .ok_or_else(|| ControlError::NotConnected(phone.to_string()))
    }

    /// Whether a user (phone number or fake LID) is one of our paired accounts; returns its
    /// phone number, companion device number and ADV facts.
    pub(crate) fn account_of(&self, user: &str, is_lid: bool) -> Option<PairedAccount> {
        let phone = if is_lid { phone_of_lid(user)? } else { user };
        let st = self.state();
        let d = st.devices.get(phone)?;
        Some(PairedAccount {
            phone: d.phone.clone(),
            device_id: d.device_id,
            key_index: d.key_index,
            raw_id: d.raw_id,
            paired_at: d.paired_at,
        })
    }

    /// The companion's bundle for a party that starts a session with it (consumes a one-time
    /// pre-key when one is left; the signed pre-key alone is a valid X3DH bundle too).
    fn take_device_bundle(&self, phone: &str) -> anyhow::Result<PreKeyBundle> {
        let mut st = self.state();
        let d = st
            .devices
            .get_mut(phone)
            .ok_or_else(|| anyhow::anyhow!("phone {phone} is not paired"))?;
        let one_time = d.one_time.pop_front();
        if one_time.is_some() {
            d.server_prekeys = d.server_prekeys.saturating_sub(1);
        }
        d.keys.bundle(d.device_id, one_time)
    }

    pub(crate) fn record_prekey_upload(
        &self,
        phone: &str,
        keys: Option<DeviceKeys>,
        one_time: Vec<(u32, [u8; 32])>,
    ) {
        let mut st = self.state();
        if let Some(d) = st.devices.get_mut(phone) {
            if let Some(keys) = keys {
                d.keys = keys;
            }
            d.server_prekeys += one_time.len();
            // A fresh small deque: collecting `into_iter().take(n)` would reuse (and keep) the
            // allocation of all the uploaded keys.
            let mut kept = VecDeque::with_capacity(KEPT_ONE_TIME_PREKEYS);
            kept.extend(one_time.iter().take(KEPT_ONE_TIME_PREKEYS).copied());
            d.one_time = kept;
        }
    }

    pub(crate) fn rotate_signed_prekey(
        &self,
        phone: &str,
        id: u32,
        public: [u8; 32],
        signature: Vec<u8>,
    ) {
        let mut st = self.state();
        if let Some(d) = st.devices.get_mut(phone) {
            d.keys.signed_id = id;
            d.keys.signed_public = public;
            d.keys.signed_signature = signature;
        }
    }

    pub(crate) fn server_prekey_count(&self, phone: &str) -> usize {
        self.state()
            .devices
            .get(phone)
            .map_or(0, |d| d.server_prekeys)
    }

    /// The device logged itself out (`remove-companion-device`).
    pub(crate) fn forget_device(&self, phone: &str) {
        self.state().devices.remove(phone);
    }

    /// True the first time the device sends a message id; a repeat is counted and refused.
    pub(crate) fn accept_outbound(&self, phone: &str, message_id: &str) -> bool {
        let mut st = self.state();
        let Some(d) = st.devices.get_mut(phone) else {
            return true;
        };
        if d.accepted.get(message_id).is_some() {
            d.duplicates += 1;
            return false;
        }
        d.accepted.push(message_id.to_string(), ());
        true
    }

    pub(crate) fn outbound_duplicates(&self, phone: &str) -> ControlResult<u64> {
        self.with_device(phone, |d| d.duplicates)
    }

    pub(crate) fn record_outbound(&self, phone: &str, out: Outbound) {
        let mut st = self.state();
        if let Some(d) = st.devices.get_mut(phone) {
            let id = out.message_id.clone();
            d.outbound.push(id, out);
        }
    }

    /// Marks an injected message as acknowledged by the client (first receipt or ack wins).
    pub(crate) fn mark_inbound_acked(&self, phone: &str, message_id: &str, receipt: &str) {
        let mut st = self.state();
        let Some(d) = st.devices.get_mut(phone) else {
            return;
        };
        let Some(status) = d.inbound.get_mut(message_id) else {
            return;
        };
        if status.acked_at_ms.is_none() {
            status.acked_at_ms = Some(now_millis());
        }
        d.unacked.retain(|(id, _)| id != message_id);
        if status.receipt.is_none() || receipt != "ack" {
            status.receipt = Some(receipt.to_string());
        }
    }

    // --- Signal parties ----------------------------------------------------------------------

    /// The Signal party for a phone number: a fake contact, or the primary phone of a paired
    /// number. Created on first use.
    pub(crate) fn party(&self, phone: &str) -> anyhow::Result<Arc<PartyHandle>> {
        let mut parties = self.parties.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = parties.get(phone) {
            return Ok(p.clone());
        }
        let party = Party::generate()?;
        let handle = Arc::new(PartyHandle {
            identity: party.identity_key_pair(),
            inner: AsyncMutex::new(party),
        });
        parties.insert(phone.to_string(), handle.clone());
        Ok(handle)
    }

    /// Encrypts a message from `sender`'s party to the companion of `phone`.
    async fn encrypt_to_device(
        &self,
        sender: &str,
        phone: &str,
        message: &wa::Message,
    ) -> anyhow::Result<(&'static str, Vec<u8>)> {
        let device_id = self
            .with_device(phone, |d| d.device_id)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let address = device_address(phone, device_id);
        let party = self.party(sender)?;
        let mut party = party.inner.lock().await;
        if !party.has_session(&address) {
            let bundle = self.take_device_bundle(phone)?;
            party.start_session(&address, &bundle).await?;
        }
        party
            .encrypt(&address, &MessageUtils::encode_and_pad(message))
            .await
    }

    /// Whether the phone should (re)share the app-state key on this login: until the client
    /// has fetched the push name, it waits `KEY_SHARE_GRACE_SECS` (10 s) for the key before
    /// `Connected`; afterwards it never looks for one again.
    pub(crate) fn needs_key_share(&self, phone: &str) -> bool {
        self.with_device(phone, |d| !d.genesis_served)
            .unwrap_or(false)
    }

    /// The `critical_block` genesis patch carrying the push name, for a client that asks for
    /// the collection from scratch.
    pub(crate) fn push_name_genesis(&self, phone: &str) -> anyhow::Result<Vec<u8>> {
        let (key_id, key) = self
            .with_device(phone, |d| (d.app_state_key_id.clone(), d.app_state_key))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let patch = crate::appstate::push_name_genesis_patch(
            &key_id,
            &key,
            &format!("fakewa {phone}"),
            now_millis() as i64,
        )?;
        let _ = self.with_device(phone, |d| d.genesis_served = true);
        Ok(patch)
    }

    /// The phone shares the account's app-state sync key with its companion, as a real phone
    /// does right after linking.
    pub(crate) async fn key_share_stanza(&self, phone: &str) -> anyhow::Result<Node> {
        let (key_id, key, key_index) = self
            .with_device(phone, |d| {
                (d.app_state_key_id.clone(), d.app_state_key, d.key_index)
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (raw_id, _) = self
            .account_of(phone, false)
            .map(|a| (a.raw_id, a.key_index))
            .unwrap_or((0, 0));
        let share = wa::message::AppStateSyncKeyShare {
            keys: vec![wa::message::AppStateSyncKey {
                key_id: MessageField::some(wa::message::AppStateSyncKeyId {
                    key_id: Some(key_id),
                }),
                key_data: MessageField::some(wa::message::AppStateSyncKeyData {
                    key_data: Some(key.to_vec()),
                    fingerprint: MessageField::some(wa::message::AppStateSyncKeyFingerprint {
                        raw_id: Some(raw_id),
                        current_index: Some(key_index),
                        device_indexes: vec![0, key_index],
                    }),
                    timestamp: Some(now_millis() as i64),
                }),
            }],
        };
        let message = wa::Message {
            protocol_message: MessageField::some(wa::message::ProtocolMessage {
                r#type: Some(wa::message::protocol_message::Type::APP_STATE_SYNC_KEY_SHARE),
                app_state_sync_key_share: MessageField::some(share),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (kind, ciphertext) = self.encrypt_to_device(phone, phone, &message).await?;
        let _ = self.with_device(phone, |d| d.key_shares += 1);
        Ok(NodeBuilder::new("message")
            .attr("from", Jid::pn(phone))
            .attr("type", "text")
            .attr("id", self.new_id("3EB0"))
            .attr("t", now_secs().to_string())
            .attr("category", "peer")
            .children([enc_node(kind, ciphertext)])
            .build())
    }

    // --- controls ----------------------------------------------------------------------------

    pub(crate) async fn scan(&self, qr: &str, phone: &str) -> ControlResult<DeviceInfo> {
        check_phone(phone)?;
        let qr = pairing::parse_qr(qr).map_err(|e| ControlError::BadRequest(format!("{e:#}")))?;
        let conn = self
            .state()
            .qr_refs
            .get(&qr.pairing_ref)
            .cloned()
            .ok_or_else(|| {
                ControlError::NotFound(format!(
                    "no connection is showing a QR code with ref {}",
                    qr.pairing_ref
                ))
            })?;
        let (reply, answer) = oneshot::channel();
        let cmd = Cmd::PairQr(Box::new(PairQr {
            qr,
            phone: phone.to_string(),
            reply,
        }));
        self.ask(conn, cmd, answer).await
    }

    pub(crate) async fn pair_code(&self, phone: &str, code: &str) -> ControlResult<DeviceInfo> {
        check_phone(phone)?;
        let code = code.trim().replace('-', "").to_ascii_uppercase();
        if code.len() != 8 {
            return Err(ControlError::BadRequest(format!(
                "a pairing code has 8 characters, got {code:?}"
            )));
        }
        let conn = self.state().pair_codes.get(phone).cloned().ok_or_else(|| {
            ControlError::NotFound(format!(
                "no connection asked for a pairing code for phone number {phone}"
            ))
        })?;
        let (reply, answer) = oneshot::channel();
        let cmd = Cmd::PairCode(Box::new(PairCode {
            phone: phone.to_string(),
            code,
            reply,
        }));
        self.ask(conn, cmd, answer).await
    }

    async fn ask(
        &self,
        conn: ConnRef,
        cmd: Cmd,
        answer: oneshot::Receiver<ControlResult<DeviceInfo>>,
    ) -> ControlResult<DeviceInfo> {
        conn.tx
            .send(cmd)
            .await
            .map_err(|_| ControlError::Failed("the pairing connection has closed".into()))?;
        match tokio::time::timeout(PAIRING_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ControlError::Failed(
                "the pairing connection closed before the pairing completed".into(),
            )),
            Err(_) => Err(ControlError::Failed(
                "the client did not complete the pairing in time".into(),
            )),
        }
    }

    async fn send_cmd(&self, phone: &str, conn: ConnRef, cmd: Cmd) -> ControlResult<()> {
        conn.tx
            .send(cmd)
            .await
            .map_err(|_| ControlError::NotConnected(phone.to_string()))
    }

    pub(crate) async fn drop_connection(&self, phone: &str) -> ControlResult<()> {
        let conn = self.live_conn(phone)?;
        self.send_cmd(phone, conn, Cmd::Drop).await
    }

    pub(crate) async fn logout(&self, phone: &str) -> ControlResult<()> {
        let device = self
            .state()
            .devices
            .remove(phone)
            .ok_or_else(|| ControlError::UnknownPhone(phone.to_string()))?;
        if let Some(conn) = device.conn {
            let node = NodeBuilder::new("stream:error")
                .attr("code", "401")
                .children([NodeBuilder::new("conflict")
                    .attr("type", "device_removed")
                    .build()])
                .build();
            // The device is already forgotten; a connection that went away meanwhile is fine.
            let _ = conn.tx.send(Cmd::Close(Some(Box::new(node)))).await;
        }
        Ok(())
    }

    pub(crate) async fn replace(&self, phone: &str) -> ControlResult<()> {
        let conn = self.live_conn(phone)?;
        self.send_cmd(
            phone,
            conn,
            Cmd::Close(Some(Box::new(stream_error_conflict("replaced")))),
        )
        .await
    }

    pub(crate) async fn ban(&self, phone: &str, expire_secs: u64) -> ControlResult<()> {
        if expire_secs == 0 {
            return Err(ControlError::BadRequest(
                "expire_secs must be positive".into(),
            ));
        }
        let conn = self.with_device(phone, |d| {
            d.banned_until = Some(now_secs() + expire_secs);
            d.conn.clone()
        })?;
        if let Some(conn) = conn {
            let _ = conn
                .tx
                .send(Cmd::Close(Some(Box::new(failure(402, Some(expire_secs))))))
                .await;
        }
        Ok(())
    }

    pub(crate) async fn outdated(&self, phone: &str) -> ControlResult<()> {
        let conn = self.live_conn(phone)?;
        self.send_cmd(phone, conn, Cmd::Close(Some(Box::new(failure(405, None)))))
            .await
    }

    /// A text from contact `from` to the device. With `corrupt`, this first delivery carries a
    /// damaged ciphertext, so the client has to ask for it again with a retry receipt.
    pub(crate) async fn inbound(
        &self,
        phone: &str,
        from: &str,
        text: &str,
        corrupt: bool,
    ) -> ControlResult<String> {
        self.inbound_message(phone, from, &text_message(text), text, None, corrupt)
            .await
    }

    /// A location or a reaction from contact `from` to the device.
    pub(crate) async fn inbound_kind(
        &self,
        phone: &str,
        from: &str,
        kind: crate::InboundKind,
    ) -> ControlResult<String> {
        let mut text = String::new();
        let (name, message) = match kind {
            crate::InboundKind::Media {
                kind,
                data,
                mime_type,
                caption,
                filename,
                tamper,
            } => {
                text = caption.clone().unwrap_or_default();
                self.media_message(&kind, &data, mime_type, caption, filename, tamper)?
            }
            crate::InboundKind::Location {
                latitude,
                longitude,
                name,
                address,
            } => (
                "location",
                wa::Message {
                    location_message: MessageField::some(wa::message::LocationMessage {
                        degrees_latitude: Some(latitude),
                        degrees_longitude: Some(longitude),
                        name,
                        address,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            crate::InboundKind::Reaction { message_id, emoji } => {
                // The key names the reacted-to message as the contact sees it: one the device sent is
                // not the contact's own.
                let key = wa::MessageKey {
                    remote_jid: Some(Jid::pn(phone).to_string()),
                    from_me: Some(false),
                    id: Some(message_id),
                    participant: None,
                };
                (
                    "reaction",
                    wa::Message {
                        reaction_message: MessageField::some(wa::message::ReactionMessage {
                            key: MessageField::some(key),
                            text: Some(emoji),
                            sender_timestamp_ms: Some(now_millis() as i64),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )
            }
        };
        self.inbound_message(phone, from, &message, &text, Some(name), false)
            .await
    }

    /// A media message as a WhatsApp client sends it: the bytes encrypted with a fresh media key, the blob on the
    /// media host, and the message naming it.
    fn media_message(
        &self,
        kind: &str,
        data: &[u8],
        mime_type: String,
        caption: Option<String>,
        filename: Option<String>,
        tamper: bool,
    ) -> ControlResult<(&'static str, wa::Message)> {
        use whatsapp_rust::wacore::download::MediaType;
        let (name, media_type) = match kind {
            "image" => ("image", MediaType::Image),
            "video" => ("video", MediaType::Video),
            "audio" => ("audio", MediaType::Audio),
            "document" => ("document", MediaType::Document),
            "sticker" => ("sticker", MediaType::Sticker),
            other => {
                return Err(ControlError::BadRequest(format!(
                    "unknown media type `{other}`"
                )));
            }
        };
        let enc = whatsapp_rust::wacore::upload::encrypt_media(data, media_type)
            .map_err(|e| ControlError::Failed(format!("encrypting the media: {e:#}")))?;
        let mut blob = enc.data_to_upload;
        if tamper && let Some(b) = blob.get_mut(0) {
            *b ^= 0x5a;
        }
        let direct_path = self.store_media(name, blob);
        let url = format!("https://{}{direct_path}", self.media_host());
        let (url, direct_path) = (Some(url), Some(direct_path));
        let media_key = Some(enc.media_key.to_vec());
        let file_sha256 = Some(enc.file_sha256.to_vec());
        let file_enc_sha256 = Some(enc.file_enc_sha256.to_vec());
        let file_length = Some(data.len() as u64);
        let mimetype = Some(mime_type);
        let media_key_timestamp = Some(now_secs() as i64);
        let message = match name {
            "image" => wa::Message {
                image_message: MessageField::some(wa::message::ImageMessage {
                    url,
                    direct_path,
                    media_key,
                    file_sha256,
                    file_enc_sha256,
                    file_length,
                    mimetype,
                    media_key_timestamp,
                    caption,
                    ..Default::default()
                }),
                ..Default::default()
            },
            "video" => wa::Message {
                video_message: MessageField::some(wa::message::VideoMessage {
                    url,
                    direct_path,
                    media_key,
                    file_sha256,
                    file_enc_sha256,
                    file_length,
                    mimetype,
                    media_key_timestamp,
                    caption,
                    ..Default::default()
                }),
                ..Default::default()
            },
            "audio" => wa::Message {
                audio_message: MessageField::some(wa::message::AudioMessage {
                    url,
                    direct_path,
                    media_key,
                    file_sha256,
                    file_enc_sha256,
                    file_length,
                    mimetype,
                    media_key_timestamp,
                    ..Default::default()
                }),
                ..Default::default()
            },
            "document" => wa::Message {
                document_message: MessageField::some(wa::message::DocumentMessage {
                    url,
                    direct_path,
                    media_key,
                    file_sha256,
                    file_enc_sha256,
                    file_length,
                    mimetype,
                    media_key_timestamp,
                    caption,
                    title: filename.clone(),
                    file_name: filename,
                    ..Default::default()
                }),
                ..Default::default()
            },
            _ => wa::Message {
                sticker_message: MessageField::some(wa::message::StickerMessage {
                    url,
                    direct_path,
                    media_key,
                    file_sha256,
                    file_enc_sha256,
                    file_length,
                    mimetype,
                    media_key_timestamp,
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        Ok((name, message))
    }

    async fn inbound_message(
        &self,
        phone: &str,
        from: &str,
        message: &wa::Message,
        text: &str,
        label: Option<&str>,
        corrupt: bool,
    ) -> ControlResult<String> {
        check_phone(from)?;
        if from == phone {
            return Err(ControlError::BadRequest(
                "`from` must be a contact, not the paired number itself".into(),
            ));
        }
        // Fails early for an unknown phone; whether it is online is decided below, atomically with the queueing.
        self.with_device(phone, |_| ())?;
        let (kind, mut ciphertext) = self
            .encrypt_to_device(from, phone, message)
            .await
            .map_err(|e| ControlError::Failed(format!("encrypting for {phone}: {e:#}")))?;
        if corrupt {
            crate::signal::corrupt_mac(kind, &mut ciphertext)
                .map_err(|e| ControlError::Failed(format!("corrupting the message: {e:#}")))?;
        }
        let id = self.new_id("3A");
        let node = inbound_stanza(from, &id, kind, ciphertext, None);
        // Registered before sending, so an ack can never arrive for an unknown id. Read together with the queueing
        // (one lock): a device that is offline gets the message from its offline queue at the next login, as from
        // WhatsApp; one that logs in meanwhile sees it either live or in that queue.
        let conn = self.with_device(phone, |d| {
            d.inbound.push(
                id.clone(),
                InboundStatus {
                    message_id: id.clone(),
                    from: from.to_string(),
                    text: text.to_string(),
                    sent_at_ms: now_millis(),
                    acked_at_ms: None,
                    receipt: None,
                    retries: 0,
                    kind: label.map(str::to_string),
                    payload: label.map(|_| MessageUtils::encode_and_pad(message)),
                },
            );
            if d.unacked.len() == UNACKED_CAPACITY {
                d.unacked.pop_front();
            }
            d.unacked.push_back((id.clone(), node.clone()));
            d.conn.clone()
        })?;
        if let Some(conn) = conn {
            // A connection that has just closed keeps the message queued for the next login.
            let _ = self.send_cmd(phone, conn, Cmd::Send(Box::new(node))).await;
        }
        Ok(id)
    }

    /// The messages to deliver again at login (marked `offline`), oldest first; they leave the queue when the
    /// client acknowledges them.
    pub(crate) fn offline_queue(&self, phone: &str) -> Vec<Node> {
        let st = self.state();
        let Some(d) = st.devices.get(phone) else {
            return Vec::new();
        };
        d.unacked
            .iter()
            .map(|(_, node)| {
                let mut node = node.clone();
                node.attrs.insert("offline", "1");
                node
            })
            .collect()
    }

    /// The contact's answer to a retry receipt, as WhatsApp senders do it: a new session (from
    /// the keys in the receipt, else from the server's bundle) and the same message again.
    /// `None` when the message is unknown or was retried too often.
    pub(crate) async fn retry_stanza(
        &self,
        phone: &str,
        message_id: &str,
        count: u32,
        keys: Option<PreKeyBundle>,
    ) -> anyhow::Result<Option<Node>> {
        let found = self
            .with_device(phone, |d| {
                let status = d.inbound.get_mut(message_id)?;
                if status.retries >= MAX_RETRIES {
                    return None;
                }
                status.retries += 1;
                let payload = status
                    .payload
                    .clone()
                    .unwrap_or_else(|| MessageUtils::encode_and_pad(&text_message(&status.text)));
                Some((status.from.clone(), payload, d.device_id))
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let Some((from, payload, device_id)) = found else {
            return Ok(None);
        };
        let address = device_address(phone, device_id);
        let party = self.party(&from)?;
        let mut party = party.inner.lock().await;
        party.forget_session(&address);
        let bundle = match keys {
            Some(bundle) => bundle,
            None => self.take_device_bundle(phone)?,
        };
        party.start_session(&address, &bundle).await?;
        let (kind, ciphertext) = party.encrypt(&address, &payload).await?;
        Ok(Some(inbound_stanza(
            &from,
            message_id,
            kind,
            ciphertext,
            Some(count),
        )))
    }

    pub(crate) fn inbound_status(
        &self,
        phone: &str,
        message_id: &str,
    ) -> ControlResult<InboundStatus> {
        self.with_device(phone, |d| d.inbound.get(message_id).cloned())?
            .ok_or_else(|| {
                ControlError::NotFound(format!("no inbound message {message_id} for {phone}"))
            })
    }

    pub(crate) fn inbound_list(&self, phone: &str) -> ControlResult<Vec<InboundStatus>> {
        self.with_device(phone, |d| d.inbound.all())
    }

    pub(crate) async fn receipt(
        &self,
        phone: &str,
        message_id: &str,
        status: ReceiptStatus,
    ) -> ControlResult<()> {
        let to = self
            .with_device(phone, |d| d.outbound.get(message_id).map(|o| o.to.clone()))?
            .ok_or_else(|| {
                ControlError::NotFound(format!("{phone} sent no message with id {message_id}"))
            })?;
        let conn = self.live_conn(phone)?;
        let mut receipt = NodeBuilder::new("receipt")
            .attr("from", Jid::pn(&to))
            .attr("id", message_id.to_string())
            .attr("t", now_secs().to_string());
        if status == ReceiptStatus::Read {
            receipt = receipt.attr("type", "read");
        }
        self.send_cmd(phone, conn, Cmd::Send(Box::new(receipt.build())))
            .await
    }

    pub(crate) fn outbound(&self, phone: &str) -> ControlResult<Vec<Outbound>> {
        self.with_device(phone, |d| d.outbound.all())
    }

    pub(crate) fn devices(&self) -> Vec<DeviceInfo> {
        let mut all: Vec<DeviceInfo> = self
            .state()
            .devices
            .values()
            .map(DeviceRecord::info)
            .collect();
        all.sort_by(|a, b| a.phone_number.cmp(&b.phone_number));
        all
    }

    pub(crate) fn device(&self, phone: &str) -> ControlResult<DeviceInfo> {
        self.with_device(phone, |d| d.info())
    }
}

/// A Signal party and its identity key, readable without waiting for a session operation.
pub(crate) struct PartyHandle {
    pub(crate) identity: whatsapp_rust::wacore::libsignal::protocol::KeyPair,
    pub(crate) inner: AsyncMutex<Party>,
}

/// A paired account as usync and the pre-key service describe it.
pub(crate) struct PairedAccount {
    pub(crate) phone: String,
    pub(crate) device_id: u16,
    pub(crate) key_index: u32,
    pub(crate) raw_id: u32,
    pub(crate) paired_at: u64,
}

pub(crate) fn device_address(phone: &str, device_id: u16) -> ProtocolAddress {
    Jid::pn_device(phone, device_id).to_protocol_address()
}

fn text_message(text: &str) -> wa::Message {
    wa::Message {
        conversation: Some(text.to_string()),
        ..Default::default()
    }
}

/// A contact's 1:1 `<message>` to a companion; `retry` marks a resend (`count` on `<enc>`).
fn inbound_stanza(
    from: &str,
    id: &str,
    kind: &str,
    ciphertext: Vec<u8>,
    retry: Option<u32>,
) -> Node {
    let mut enc = NodeBuilder::new("enc")
        .attr("v", "2")
        .attr("type", kind.to_string());
    if let Some(count) = retry {
        enc = enc.attr("count", count.to_string());
    }
    NodeBuilder::new("message")
        .attr("from", Jid::pn(from))
        .attr("type", "text")
        .attr("id", id.to_string())
        .attr("t", now_secs().to_string())
        .attr("notify", format!("Contact {from}"))
        .children([enc.bytes(ciphertext).build()])
        .build()
}

pub(crate) fn enc_node(kind: &str, ciphertext: Vec<u8>) -> Node {
    NodeBuilder::new("enc")
        .attr("v", "2")
        .attr("type", kind.to_string())
        .bytes(ciphertext)
        .build()
}

/// `<failure reason=…>`: 401 logged out, 402 temporary ban (with its duration), 405 outdated.
pub(crate) fn failure(reason: u16, expire_secs: Option<u64>) -> Node {
    let mut node = NodeBuilder::new("failure")
        .attr("reason", reason.to_string())
        .attr("location", "fakewa");
    if let Some(expire) = expire_secs {
        node = node.attr("code", "101").attr("expire", expire.to_string());
    }
    node.build()
}

pub(crate) fn stream_error_conflict(kind: &str) -> Node {
    NodeBuilder::new("stream:error")
        .children([NodeBuilder::new("conflict")
            .attr("type", kind.to_string())
            .build()])
        .build()
}

fn check_phone(phone: &str) -> ControlResult<()> {
    if (5..=20).contains(&phone.len()) && phone.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(ControlError::BadRequest(format!(
            "{phone:?} is not a phone number (5-20 digits, no +)"
        )))
    }
}

pub(crate) fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_forgets_the_oldest_and_keeps_ids_straight() {
        let mut j = Journal::new();
        for i in 0..JOURNAL_CAPACITY + 3 {
            j.push(format!("id{i}"), i);
        }
        assert_eq!(j.entries.len(), JOURNAL_CAPACITY);
        assert_eq!(j.get("id0"), None);
        assert_eq!(j.get("id2"), None);
        assert_eq!(j.get("id3"), Some(&3));
        let last = format!("id{}", JOURNAL_CAPACITY + 2);
        *j.get_mut(&last).unwrap() += 1;
        assert_eq!(j.get(&last), Some(&(JOURNAL_CAPACITY + 3)));
        assert_eq!(j.index.len(), JOURNAL_CAPACITY);
    }
}

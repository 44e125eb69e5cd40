//! PostgreSQL backend for the whatsapp-rust store traits (sealed, keyed by channel).
//!
//! One [`PgStore`] per channel; together its five trait impls make it a whatsapp-rust `Backend`. The schema is
//! `migrations/0003_wa_store.sql`. Semantics follow the crate's `InMemoryBackend` (the reference the suite in
//! `tests/it/wa_store.rs` compares against), except where noted on the method.
//!
//! Every value is sealed with the master key (`MasterKeys::seal`), its `kid` stored beside it so that values
//! sealed under a previous master key still open. The AAD names the channel, the table and the row's natural
//! key, so a blob copied to another row or channel does not open.
//!
//! Batch writes are a single `INSERT … SELECT FROM unnest(…)` statement: one implicit transaction, all or
//! nothing, and (with PostgreSQL's default `synchronous_commit = on`) durable when the call returns, which the
//! client's signal durability protocol relies on.

mod app_sync;
mod group;
mod inbound;
mod msg_secret;
mod protocol;
mod signal;

use crate::crypto::MasterKeys;
use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, ToSql};
use wacore::store::Device;
use wacore::store::error::{Result, StoreError};
use wacore::store::traits::DeviceStore;
use whatsapp_rust::wacore;

pub use group::GroupCommit;
pub use inbound::Sweeper;

/// Every table of the store, for [`wipe`]. The conformance suite checks it against the database catalogue.
pub const TABLES: &[&str] = &[
    "wa_device",
    "wa_identities",
    "wa_sessions",
    "wa_prekeys",
    "wa_signed_prekeys",
    "wa_sender_keys",
    "wa_app_state_sync_keys",
    "wa_app_state_versions",
    "wa_app_state_mutation_macs",
    "wa_sender_key_devices",
    "wa_lid_pn_mappings",
    "wa_base_keys",
    "wa_device_lists",
    "wa_group_metadata",
    "wa_tc_tokens",
    "wa_sent_messages",
    "wa_pending_inbound",
    "wa_msg_secrets",
];

/// The whatsapp-rust store of one channel. Cheap to clone and to construct: it holds only handles.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    keys: Arc<MasterKeys>,
    channel_id: Arc<str>,
    gate: Arc<Gate>,
    /// Pending-inbound rows this store wrote and deleted (see `inbound`).
    ledger: Arc<inbound::Ledger>,
    /// None: pending-inbound deletes happen at once.
    sweeper: Option<Sweeper>,
    /// None: every write is a transaction of its own.
    groups: Option<GroupCommit>,
    /// Device saves run one at a time, in the order they were called: see `save`.
    device_saves: Arc<tokio::sync::Mutex<()>>,
}

/// Closes a store for good. The client keeps detached tasks (a pre-key upload, a write-behind flush) that can
/// outlive its disconnect; once the device is logged out, their writes must not bring keys back after the wipe.
#[derive(Default)]
struct Gate {
    retired: std::sync::atomic::AtomicBool,
    in_flight: std::sync::atomic::AtomicUsize,
}

/// One operation in flight on its store (see `retire_and_wipe`).
struct Entered {
    gate: Arc<Gate>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.gate
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A pooled connection that counts as one operation in flight on its store.
pub(crate) struct Conn {
    obj: Object,
    _entered: Entered,
}

impl std::ops::Deref for Conn {
    type Target = Object;
    fn deref(&self) -> &Object {
        &self.obj
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Object {
        &mut self.obj
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("channel_id", &self.channel_id)
            .finish_non_exhaustive()
    }
}

/// Deletes everything stored for a channel, in one transaction (logout, device removed). Call it once the
/// channel's client has stopped, or its next write-behind flush stores rows again. The `channels` row stays (its
/// foreign keys cascade only when that row itself is deleted). Returns the number of rows deleted.
pub async fn wipe(pool: &Pool, channel_id: &str) -> Result<u64> {
    const OP: &str = "wipe";
    let mut client = pool.get().await.map_err(conn_err(OP))?;
    let tx = client.transaction().await.map_err(db_err(OP))?;
    let mut deleted = 0;
    for table in TABLES {
        // Table names come from the constant above, never from input.
        let stmt = tx
            .prepare_cached(&format!("DELETE FROM {table} WHERE channel_id = $1"))
            .await
            .map_err(db_err(OP))?;
        deleted += tx
            .execute(&stmt, &[&channel_id])
            .await
            .map_err(db_err(OP))?;
    }
    tx.commit().await.map_err(db_err(OP))?;
    Ok(deleted)
}

impl PgStore {
    pub fn new(pool: Pool, keys: Arc<MasterKeys>, channel_id: &str) -> PgStore {
        PgStore {
            pool,
            keys,
            channel_id: Arc::from(channel_id),
            gate: Arc::default(),
            ledger: Arc::default(),
            sweeper: None,
            groups: None,
            device_saves: Arc::default(),
        }
    }

    /// Shares single-statement writes' transactions with other stores' through `groups` (see `group`).
    pub fn with_group_commit(mut self, groups: GroupCommit) -> PgStore {
        self.groups = Some(groups);
        self
    }

    /// A store whose consumed pending-inbound rows are deleted late by `sweeper` (the engine's; see `inbound`).
    pub fn with_sweeper(
        pool: Pool,
        keys: Arc<MasterKeys>,
        channel_id: &str,
        sweeper: Sweeper,
    ) -> PgStore {
        PgStore {
            sweeper: Some(sweeper),
            ..PgStore::new(pool, keys, channel_id)
        }
    }

    /// Refuses every later operation, waits (up to 5 s) for those in flight, then deletes everything stored for
    /// the channel. For a logged-out device whose client may still have detached tasks writing.
    pub async fn retire_and_wipe(&self) -> Result<u64> {
        use std::sync::atomic::Ordering::SeqCst;
        self.gate.retired.store(true, SeqCst);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.gate.in_flight.load(SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        self.ledger.clear();
        wipe(&self.pool, &self.channel_id).await
    }

    pub fn channel_id(&self) -> &str {
        &self.channel_id
    }

    /// [`wipe`] for this store's channel.
    pub async fn wipe(&self) -> Result<u64> {
        self.ledger.clear();
        wipe(&self.pool, &self.channel_id).await
    }

    /// Counts an operation in flight, then refuses it if the store is closed.
    fn enter(&self, op: &'static str) -> Result<Entered> {
        use std::sync::atomic::Ordering::SeqCst;
        // Counted before the check, so that retire_and_wipe either sees this operation or this one sees it.
        self.gate.in_flight.fetch_add(1, SeqCst);
        let entered = Entered {
            gate: self.gate.clone(),
        };
        if self.gate.retired.load(SeqCst) {
            return Err(invalid(
                op,
                "the device was logged out; its store is closed",
            ));
        }
        Ok(entered)
    }

    async fn client(&self, op: &'static str) -> Result<Conn> {
        let entered = self.enter(op)?;
        Ok(Conn {
            obj: self.pool.get().await.map_err(conn_err(op))?,
            _entered: entered,
        })
    }

    /// Runs one prepared statement and returns the affected row count; durable when it returns. With a group
    /// committer, in a transaction shared with the writes of other channels that overlap it (see `group`).
    async fn exec(
        &self,
        op: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        let entered = self.enter(op)?;
        if let Some(groups) = &self.groups
            && let Ok(n) = groups.execute(sql, params).await
        {
            return Ok(n);
        }
        // No group, or it was rolled back (nothing of this write landed): write it alone, and see its own error.
        let client = Conn {
            obj: self.pool.get().await.map_err(conn_err(op))?,
            _entered: entered,
        };
        let stmt = client.prepare_cached(sql).await.map_err(db_err(op))?;
        client.execute(&stmt, params).await.map_err(db_err(op))
    }

    async fn query(
        &self,
        op: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let client = self.client(op).await?;
        let stmt = client.prepare_cached(sql).await.map_err(db_err(op))?;
        client.query(&stmt, params).await.map_err(db_err(op))
    }

    async fn query_opt(
        &self,
        op: &'static str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        let client = self.client(op).await?;
        let stmt = client.prepare_cached(sql).await.map_err(db_err(op))?;
        client.query_opt(&stmt, params).await.map_err(db_err(op))
    }

    /// Seals `plaintext` for the row `key` of `table` in this channel. Returns (kid, sealed).
    fn seal(&self, table: &str, key: &[&[u8]], plaintext: &[u8]) -> (String, Vec<u8>) {
        self.keys
            .seal(&aad(&self.channel_id, table, key), plaintext)
    }

    /// Opens the `kid` (column 0) and `sealed` (column 1) of a row of `table` whose natural key is `key`.
    fn open(&self, op: &'static str, table: &str, key: &[&[u8]], row: &Row) -> Result<Vec<u8>> {
        let kid: &str = col(op, row, 0)?;
        let sealed: &[u8] = col(op, row, 1)?;
        self.keys
            .open(kid, &aad(&self.channel_id, table, key), sealed)
            .map_err(|e| {
                StoreError::Serialization(Box::new(OpError {
                    op,
                    source: e.into(),
                }))
            })
    }
}

/// Associated data binding a sealed value to its place: channel, table and natural key, each length-prefixed so
/// no two different places share an encoding.
fn aad(channel_id: &str, table: &str, key: &[&[u8]]) -> Vec<u8> {
    const DOMAIN: &[u8] = b"whatisup/wa-store/v1";
    let parts = [channel_id.as_bytes(), table.as_bytes()];
    let len = DOMAIN.len()
        + parts
            .iter()
            .chain(key.iter())
            .map(|p| 4 + p.len())
            .sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(DOMAIN);
    for part in parts.iter().chain(key.iter()) {
        // Natural keys are identifiers far below 4 GiB; saturating keeps this total rather than panicking.
        let n = u32::try_from(part.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// A store error with the operation it happened in; `StoreError`'s own message names only its category.
#[derive(Debug)]
struct OpError {
    op: &'static str,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "whatsapp store: {}", self.op)
    }
}

impl std::error::Error for OpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

fn db_err(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| {
        StoreError::Database(Box::new(OpError {
            op,
            source: Box::new(e),
        }))
    }
}

fn conn_err(op: &'static str) -> impl FnOnce(deadpool_postgres::PoolError) -> StoreError {
    move |e| {
        StoreError::Connection(Box::new(OpError {
            op,
            source: Box::new(e),
        }))
    }
}

fn invalid(op: &'static str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Validation(format!("whatsapp store: {op}: {what}"))
}

/// A column, without `Row::get`'s panic on a type mismatch.
fn col<'a, T: FromSql<'a>>(op: &'static str, row: &'a Row, idx: usize) -> Result<T> {
    row.try_get(idx).map_err(db_err(op))
}

fn to_json<T: Serialize>(op: &'static str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| {
        StoreError::Serialization(Box::new(OpError {
            op,
            source: Box::new(e),
        }))
    })
}

fn from_json<T: DeserializeOwned>(op: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        StoreError::Serialization(Box::new(OpError {
            op,
            source: Box::new(e),
        }))
    })
}

/// The rows of a batch that survive when it is applied in order: the last write of each key, in the order of
/// those last writes. One `INSERT … ON CONFLICT DO UPDATE` may not touch a row twice, while the in-memory
/// reference applies a batch row by row, so the earlier writes of a key are dropped here instead.
fn last_wins<'a, T, K: Hash + Eq>(items: &'a [T], key: impl Fn(&'a T) -> K) -> Vec<&'a T> {
    let mut seen = HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for item in items.iter().rev() {
        if seen.insert(key(item)) {
            out.push(item);
        }
    }
    out.reverse();
    out
}

fn count_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The `Device` fields marked `#[serde(skip)]` are runtime-only: deserialising leaves `device_props` an empty
/// message, so they are set back to what a new `Device` has, as the crate's SQLite store does on load. The
/// client applies its own device props and client profile after loading.
fn restore_runtime_fields(device: &mut Device) {
    device.device_props = Arc::new(wacore::store::device::DEVICE_PROPS.clone());
    device.client_profile = wacore::client_profile::ClientProfile::default();
    device.nct_salt_sync_seen = false;
}

#[async_trait]
impl DeviceStore for PgStore {
    /// The crate saves the whole device from two places at once: its background saver and every `flush` (ours
    /// after a pairing, its own after a pre-key upload). Each serialises a snapshot and then writes it, so an
    /// older snapshot's write can still be in flight when a newer one starts; with group commit the older
    /// statement can even reach PostgreSQL after the newer one has committed, on another connection. Two rules
    /// keep the stored device from going back in time:
    /// - saves of this store run one at a time, in call order (so the pre-key watermarks never regress);
    /// - an unlinked device (no phone number) never replaces a linked one, checked in the statement itself, so it
    ///   holds for any store instance or process; only a wipe (logout) unlinks. A pre-pairing write that landed
    ///   after the pairing's own made the client that logs in after the 515 show a QR code again.
    async fn save(&self, device: &Device) -> Result<()> {
        const OP: &str = "save device";
        let _one_at_a_time = self.device_saves.lock().await;
        let linked = device.pn.is_some();
        let json = to_json(OP, device)?;
        let (kid, sealed) = self.seal("wa_device", &[], &json);
        let written = self
            .exec(
                OP,
                "INSERT INTO wa_device (channel_id, kid, sealed, linked) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (channel_id) DO UPDATE
                 SET kid = excluded.kid, sealed = excluded.sealed, linked = excluded.linked, updated_at = now()
                 WHERE excluded.linked OR NOT wa_device.linked",
                &[&&*self.channel_id, &kid, &sealed, &linked],
            )
            .await?;
        if written == 0 {
            tracing::debug!(channel_id = %self.channel_id, "an unlinked device's save found a linked one stored; dropped");
        }
        Ok(())
    }

    async fn load(&self) -> Result<Option<Device>> {
        const OP: &str = "load device";
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed FROM wa_device WHERE channel_id = $1",
                &[&&*self.channel_id],
            )
            .await?
        else {
            return Ok(None);
        };
        let json = self.open(OP, "wa_device", &[], &row)?;
        let mut device: Device = from_json(OP, &json)?;
        restore_runtime_fields(&mut device);
        Ok(Some(device))
    }

    async fn exists(&self) -> Result<bool> {
        const OP: &str = "device exists";
        let row = self
            .query_opt(
                OP,
                "SELECT 1 FROM wa_device WHERE channel_id = $1",
                &[&&*self.channel_id],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Materialises a fresh `Device` unless one is stored, like the in-memory store. A channel has exactly one
    /// device, so the id is always 1 (the client only logs it).
    async fn create(&self) -> Result<i32> {
        const OP: &str = "create device";
        let json = to_json(OP, &Device::new())?;
        let (kid, sealed) = self.seal("wa_device", &[], &json);
        self.exec(
            OP,
            "INSERT INTO wa_device (channel_id, kid, sealed) VALUES ($1, $2, $3) ON CONFLICT (channel_id) DO NOTHING",
            &[&&*self.channel_id, &kid, &sealed],
        )
        .await?;
        Ok(1)
    }

    /// The data lives in PostgreSQL, not in this process.
    async fn resource_report(&self) -> wacore::stats::StorageResourceReport {
        wacore::stats::StorageResourceReport {
            memory_bytes: Some(0),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aad_is_unambiguous() {
        assert_ne!(
            aad("ch", "t", &[b"ab", b"c"]),
            aad("ch", "t", &[b"a", b"bc"])
        );
        assert_ne!(aad("ch1", "t", &[b"k"]), aad("ch", "1t", &[b"k"]));
        assert_ne!(aad("ch", "t", &[b"k"]), aad("ch", "t", &[b"k", b""]));
    }

    #[test]
    fn last_wins_keeps_the_last_write_of_each_key_in_order() {
        let items = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)];
        let kept: Vec<_> = last_wins(&items, |i| i.0).into_iter().copied().collect();
        assert_eq!(kept, vec![("a", 3), ("c", 4), ("b", 5)]);
    }
}

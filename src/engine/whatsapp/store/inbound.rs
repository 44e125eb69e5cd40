//! Deleting the crate's pending-inbound rows late, many at a time.
//!
//! The crate buffers every inbound message (`store_pending_inbound_batch`) before it runs the durability hook,
//! and deletes the row once the hook has committed (`delete_pending_inbound_batch`): on the live path that is
//! one DELETE transaction per message. Nothing depends on that delete being prompt or even durable: a row left
//! behind belongs to a message whose `message.received` is committed, so if WhatsApp redelivers it (its ack was
//! lost) the crate replays the row into the hook and the journal drops it as already committed; otherwise the
//! row expires (`delete_expired_pending_inbound`). So a delete of a row this store wrote is recorded in memory
//! at once (a tombstone: `get_pending_inbound` no longer sees the row) and handed to the [`Sweeper`], which
//! deletes the rows of all channels in one statement per batch. Each queued delete names the nonce of the row it
//! deletes, so a newer row stored under the same key meanwhile is never hit.
//!
//! The sweeper's transactions commit with `synchronous_commit = off`: a delete lost in a crash is the same
//! harmless leftover row as one never sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc;

/// Nonces of rows this store wrote, and tombstones, at most (a hook failing for long leaves rows unconsumed);
/// beyond, the maps start over and deletes fall back to immediate ones.
const MAX_TRACKED: usize = 10_000;
/// Queued deletes of the whole process, at most; a full queue means immediate deletes.
const QUEUE: usize = 65_536;
/// Deletes per statement, at most.
const BATCH: usize = 2_048;
/// How long the sweeper gathers before a statement (a delete is never urgent).
const GATHER: Duration = Duration::from_millis(20);

/// The natural key of a pending-inbound row: chat, sender, message id.
pub(super) type Key = (String, String, String);
pub(super) type Nonce = [u8; 12];

/// One store's view: which rows it wrote (by nonce), and which it deleted that the database still holds.
#[derive(Default)]
pub(super) struct Ledger {
    inner: Mutex<LedgerState>,
}

#[derive(Default)]
struct LedgerState {
    written: HashMap<Key, Nonce>,
    tombstones: HashMap<Key, Nonce>,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, LedgerState> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A row was stored (replacing any earlier one of the key, tombstoned or not).
    pub(super) fn stored(&self, key: Key, nonce: Nonce) {
        let mut st = self.lock();
        st.tombstones.remove(&key);
        if st.written.len() >= MAX_TRACKED {
            st.written.clear();
        }
        st.written.insert(key, nonce);
    }

    /// Whether the row of `key` is deleted as far as this store is concerned.
    pub(super) fn is_deleted(&self, key: &Key) -> bool {
        self.lock().tombstones.contains_key(key)
    }

    /// Tombstones the rows of `keys` this store wrote and returns them with their nonces (for the sweeper);
    /// the other keys (rows of an earlier process, or untracked) are returned for an immediate delete.
    pub(super) fn delete(&self, keys: Vec<Key>) -> (Vec<(Key, Nonce)>, Vec<Key>) {
        let mut st = self.lock();
        let (mut late, mut now) = (Vec::new(), Vec::new());
        for key in keys {
            match st.written.remove(&key) {
                Some(nonce) if st.tombstones.len() < MAX_TRACKED => {
                    st.tombstones.insert(key.clone(), nonce);
                    late.push((key, nonce));
                }
                _ => now.push(key),
            }
        }
        (late, now)
    }

    /// The sweeper is done with this delete (it happened, or it failed and the row stays as a harmless
    /// leftover): the database answers for the key again, unless a newer row was stored meanwhile.
    fn swept(&self, key: &Key, nonce: &Nonce) {
        let mut st = self.lock();
        if st.tombstones.get(key) == Some(nonce) {
            st.tombstones.remove(key);
        }
    }

    /// Undoes a tombstone whose delete could not be queued (the caller deletes at once instead).
    pub(super) fn untomb(&self, key: &Key, nonce: &Nonce) {
        self.swept(key, nonce);
    }

    /// Forgets everything (the store's rows were wiped).
    pub(super) fn clear(&self) {
        let mut st = self.lock();
        st.written.clear();
        st.tombstones.clear();
    }

    /// Tombstoned keys among these (their rows count as deleted already).
    pub(super) fn tombstoned(&self, keys: &[Key]) -> usize {
        let st = self.lock();
        keys.iter()
            .filter(|k| st.tombstones.contains_key(*k))
            .count()
    }
}

struct Late {
    ledger: Arc<Ledger>,
    channel_id: Arc<str>,
    key: Key,
    nonce: Nonce,
}

/// The process's deleter of pending-inbound rows; cheap to clone.
#[derive(Clone)]
pub struct Sweeper {
    tx: mpsc::Sender<Late>,
}

impl Sweeper {
    /// Starts the sweeper task (on the current Tokio runtime).
    pub fn spawn(pool: Pool) -> Sweeper {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, rx));
        Sweeper { tx }
    }

    /// Queues the deletes; returns those that did not fit (the caller deletes them at once).
    pub(super) fn queue(
        &self,
        ledger: &Arc<Ledger>,
        channel_id: &Arc<str>,
        rows: Vec<(Key, Nonce)>,
    ) -> Vec<(Key, Nonce)> {
        let mut refused = Vec::new();
        for (key, nonce) in rows {
            let late = Late {
                ledger: ledger.clone(),
                channel_id: channel_id.clone(),
                key,
                nonce,
            };
            if let Err(e) = self.tx.try_send(late) {
                let late = match e {
                    mpsc::error::TrySendError::Full(l) | mpsc::error::TrySendError::Closed(l) => l,
                };
                refused.push((late.key, late.nonce));
            }
        }
        refused
    }
}

async fn run(pool: Pool, mut rx: mpsc::Receiver<Late>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        // Let a burst gather: one statement for many messages.
        tokio::time::sleep(GATHER).await;
        // Whatever else is queued by now, without waiting for more.
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(late) => batch.push(late),
                Err(_) => break,
            }
        }
        if let Err(e) = sweep(&pool, &batch).await {
            tracing::warn!(error = %e, rows = batch.len(), "deleting consumed pending-inbound rows failed; they expire later");
        }
        for late in batch.drain(..) {
            late.ledger.swept(&late.key, &late.nonce);
        }
    }
}

async fn sweep(pool: &Pool, batch: &[Late]) -> anyhow::Result<()> {
    let mut client = pool.get().await?;
    let channels: Vec<&str> = batch.iter().map(|l| &*l.channel_id).collect();
    let chats: Vec<&str> = batch.iter().map(|l| l.key.0.as_str()).collect();
    let senders: Vec<&str> = batch.iter().map(|l| l.key.1.as_str()).collect();
    let ids: Vec<&str> = batch.iter().map(|l| l.key.2.as_str()).collect();
    let nonces: Vec<&[u8]> = batch.iter().map(|l| &l.nonce[..]).collect();
    let stmt = client
        .prepare_cached(
            "DELETE FROM wa_pending_inbound p
             USING unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[]) AS u(ch, c, s, i, n)
             WHERE p.channel_id = u.ch AND p.chat_jid = u.c AND p.sender_jid = u.s AND p.message_id = u.i
               AND substring(p.sealed from 1 for 12) = u.n",
        )
        .await?;
    let tx = client.transaction().await?;
    // Safe without waiting for the WAL flush: see the module comment.
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    tx.execute(&stmt, &[&channels, &chats, &senders, &ids, &nonces])
        .await?;
    tx.commit().await?;
    Ok(())
}

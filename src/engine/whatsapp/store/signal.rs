//! Signal protocol state: identities, sessions, prekeys, signed prekeys, sender keys.

use super::{PgStore, col, invalid, last_wins};
use async_trait::async_trait;
use std::sync::Arc;
use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::wacore::store::error::Result;
use whatsapp_rust::wacore::store::traits::SignalStore;

const IDENTITIES: &str = "wa_identities";
const SESSIONS: &str = "wa_sessions";
const PREKEYS: &str = "wa_prekeys";
const SIGNED_PREKEYS: &str = "wa_signed_prekeys";
const SENDER_KEYS: &str = "wa_sender_keys";

impl PgStore {
    /// Seals each (address, value) of a batch for `table`, last write per address winning.
    fn seal_by_address<'a, V: AsRef<[u8]> + 'a>(
        &self,
        table: &str,
        batch: &'a [(Arc<str>, V)],
    ) -> (Vec<&'a str>, Vec<String>, Vec<Vec<u8>>) {
        let rows = last_wins(batch, |(address, _)| address.clone());
        let mut addresses = Vec::with_capacity(rows.len());
        let mut kids = Vec::with_capacity(rows.len());
        let mut sealed = Vec::with_capacity(rows.len());
        for (address, value) in rows {
            let (kid, s) = self.seal(table, &[address.as_bytes()], value.as_ref());
            addresses.push(&**address);
            kids.push(kid);
            sealed.push(s);
        }
        (addresses, kids, sealed)
    }
}

#[async_trait]
impl SignalStore for PgStore {
    async fn put_identity(&self, address: &str, key: [u8; 32]) -> Result<()> {
        let (kid, sealed) = self.seal(IDENTITIES, &[address.as_bytes()], &key);
        self.exec(
            "put_identity",
            "INSERT INTO wa_identities (channel_id, address, kid, sealed) VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel_id, address) DO UPDATE SET kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &address, &kid, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn put_identities_batch(&self, identities: &[(Arc<str>, [u8; 32])]) -> Result<()> {
        if identities.is_empty() {
            return Ok(());
        }
        let (addresses, kids, sealed) = self.seal_by_address(IDENTITIES, identities);
        self.exec(
            "put_identities_batch",
            "INSERT INTO wa_identities (channel_id, address, kid, sealed)
             SELECT $1, a, k, s FROM unnest($2::text[], $3::text[], $4::bytea[]) AS u(a, k, s)
             ON CONFLICT (channel_id, address) DO UPDATE SET kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &addresses, &kids, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn load_identity(&self, address: &str) -> Result<Option<[u8; 32]>> {
        const OP: &str = "load_identity";
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed FROM wa_identities WHERE channel_id = $1 AND address = $2",
                &[&&*self.channel_id, &address],
            )
            .await?
        else {
            return Ok(None);
        };
        let key = self.open(OP, IDENTITIES, &[address.as_bytes()], &row)?;
        let key: [u8; 32] = key
            .as_slice()
            .try_into()
            .map_err(|_| invalid(OP, format!("identity key of {} bytes", key.len())))?;
        Ok(Some(key))
    }

    async fn delete_identity(&self, address: &str) -> Result<()> {
        self.exec(
            "delete_identity",
            "DELETE FROM wa_identities WHERE channel_id = $1 AND address = $2",
            &[&&*self.channel_id, &address],
        )
        .await?;
        Ok(())
    }

    async fn get_session(&self, address: &str) -> Result<Option<Bytes>> {
        const OP: &str = "get_session";
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed FROM wa_sessions WHERE channel_id = $1 AND address = $2",
                &[&&*self.channel_id, &address],
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Bytes::from(self.open(
            OP,
            SESSIONS,
            &[address.as_bytes()],
            &row,
        )?)))
    }

    async fn put_session(&self, address: &str, session: &[u8]) -> Result<()> {
        let (kid, sealed) = self.seal(SESSIONS, &[address.as_bytes()], session);
        self.exec(
            "put_session",
            "INSERT INTO wa_sessions (channel_id, address, kid, sealed) VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel_id, address) DO UPDATE SET kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &address, &kid, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn put_sessions_batch(&self, sessions: &[(Arc<str>, Bytes)]) -> Result<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        let (addresses, kids, sealed) = self.seal_by_address(SESSIONS, sessions);
        self.exec(
            "put_sessions_batch",
            "INSERT INTO wa_sessions (channel_id, address, kid, sealed)
             SELECT $1, a, k, s FROM unnest($2::text[], $3::text[], $4::bytea[]) AS u(a, k, s)
             ON CONFLICT (channel_id, address) DO UPDATE SET kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &addresses, &kids, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn delete_session(&self, address: &str) -> Result<()> {
        self.exec(
            "delete_session",
            "DELETE FROM wa_sessions WHERE channel_id = $1 AND address = $2",
            &[&&*self.channel_id, &address],
        )
        .await?;
        Ok(())
    }

    /// Existence only: nothing to open.
    async fn has_session(&self, address: &str) -> Result<bool> {
        let row = self
            .query_opt(
                "has_session",
                "SELECT 1 FROM wa_sessions WHERE channel_id = $1 AND address = $2",
                &[&&*self.channel_id, &address],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Addresses are `user@server` or `user:device@server`. In the C collation the ones starting with `user@`
    /// are exactly those in [`user@`, `userA`) ('A' follows '@'), and `user:` likewise up to `user;`: index
    /// range scans, and no LIKE pattern to escape.
    async fn has_signal_state_for_user(&self, user: &str) -> Result<bool> {
        const OP: &str = "has_signal_state_for_user";
        let (at_lo, at_hi) = (format!("{user}@"), format!("{user}A"));
        let (dev_lo, dev_hi) = (format!("{user}:"), format!("{user};"));
        let row = self
            .query_opt(
                OP,
                "SELECT EXISTS (SELECT 1 FROM wa_sessions WHERE channel_id = $1
                                AND ((address >= $2 AND address < $3) OR (address >= $4 AND address < $5)))
                     OR EXISTS (SELECT 1 FROM wa_identities WHERE channel_id = $1
                                AND ((address >= $2 AND address < $3) OR (address >= $4 AND address < $5)))",
                &[&&*self.channel_id, &at_lo, &at_hi, &dev_lo, &dev_hi],
            )
            .await?;
        match row {
            Some(row) => col(OP, &row, 0),
            None => Ok(false),
        }
    }

    /// The uploaded flag is kept (the in-memory store drops it) so that `mark_prekeys_uploaded` has a column to
    /// update; no trait method reads it back.
    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> Result<()> {
        let (kid, sealed) = self.seal(PREKEYS, &[&id.to_be_bytes()], record);
        self.exec(
            "store_prekey",
            "INSERT INTO wa_prekeys (channel_id, id, uploaded, kid, sealed) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (channel_id, id) DO UPDATE
             SET uploaded = excluded.uploaded, kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &i64::from(id), &uploaded, &kid, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn store_prekeys_batch(&self, keys: &[(u32, Bytes)], uploaded: bool) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let rows = last_wins(keys, |(id, _)| *id);
        let mut ids = Vec::with_capacity(rows.len());
        let mut kids = Vec::with_capacity(rows.len());
        let mut sealed = Vec::with_capacity(rows.len());
        for (id, record) in rows {
            let (kid, s) = self.seal(PREKEYS, &[&id.to_be_bytes()], record);
            ids.push(i64::from(*id));
            kids.push(kid);
            sealed.push(s);
        }
        self.exec(
            "store_prekeys_batch",
            "INSERT INTO wa_prekeys (channel_id, id, uploaded, kid, sealed)
             SELECT $1, i, $5, k, s FROM unnest($2::bigint[], $3::text[], $4::bytea[]) AS u(i, k, s)
             ON CONFLICT (channel_id, id) DO UPDATE
             SET uploaded = excluded.uploaded, kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &ids, &kids, &sealed, &uploaded],
        )
        .await?;
        Ok(())
    }

    async fn load_prekey(&self, id: u32) -> Result<Option<Bytes>> {
        const OP: &str = "load_prekey";
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed FROM wa_prekeys WHERE channel_id = $1 AND id = $2",
                &[&&*self.channel_id, &i64::from(id)],
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(Bytes::from(self.open(
            OP,
            PREKEYS,
            &[&id.to_be_bytes()],
            &row,
        )?)))
    }

    /// In the order asked, repeats included, absent ids left out: what the in-memory store returns.
    async fn load_prekeys_batch(&self, ids: &[u32]) -> Result<Vec<(u32, Bytes)>> {
        const OP: &str = "load_prekeys_batch";
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
        let rows = self
            .query(
                OP,
                "SELECT p.kid, p.sealed, p.id FROM unnest($2::bigint[]) WITH ORDINALITY AS u(id, ord)
                 JOIN wa_prekeys p ON p.channel_id = $1 AND p.id = u.id
                 ORDER BY u.ord",
                &[&&*self.channel_id, &wanted],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = u32::try_from(col::<i64>(OP, row, 2)?)
                .map_err(|_| invalid(OP, "prekey id out of range"))?;
            let record = self.open(OP, PREKEYS, &[&id.to_be_bytes()], row)?;
            out.push((id, Bytes::from(record)));
        }
        Ok(out)
    }

    /// UPDATE only: a key consumed since the upload snapshot stays deleted.
    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
        self.exec(
            "mark_prekeys_uploaded",
            "UPDATE wa_prekeys SET uploaded = true WHERE channel_id = $1 AND id = ANY($2::bigint[]) AND NOT uploaded",
            &[&&*self.channel_id, &ids],
        )
        .await?;
        Ok(())
    }

    async fn remove_prekey(&self, id: u32) -> Result<()> {
        self.exec(
            "remove_prekey",
            "DELETE FROM wa_prekeys WHERE channel_id = $1 AND id = $2",
            &[&&*self.channel_id, &i64::from(id)],
        )
        .await?;
        Ok(())
    }

    async fn get_max_prekey_id(&self) -> Result<u32> {
        const OP: &str = "get_max_prekey_id";
        let row = self
            .query_opt(
                OP,
                "SELECT max(id) FROM wa_prekeys WHERE channel_id = $1",
                &[&&*self.channel_id],
            )
            .await?;
        let max: Option<i64> = match row {
            Some(row) => col(OP, &row, 0)?,
            None => None,
        };
        match max {
            Some(max) => u32::try_from(max).map_err(|_| invalid(OP, "prekey id out of range")),
            None => Ok(0),
        }
    }

    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> Result<()> {
        let (kid, sealed) = self.seal(SIGNED_PREKEYS, &[&id.to_be_bytes()], record);
        self.exec(
            "store_signed_prekey",
            "INSERT INTO wa_signed_prekeys (channel_id, id, kid, sealed) VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel_id, id) DO UPDATE SET kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &i64::from(id), &kid, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn load_signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        const OP: &str = "load_signed_prekey";
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed FROM wa_signed_prekeys WHERE channel_id = $1 AND id = $2",
                &[&&*self.channel_id, &i64::from(id)],
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(self.open(
            OP,
            SIGNED_PREKEYS,
            &[&id.to_be_bytes()],
            &row,
        )?))
    }

    async fn load_all_signed_prekeys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        const OP: &str = "load_all_signed_prekeys";
        let rows = self
            .query(
                OP,
                "SELECT kid, sealed, id FROM wa_signed_prekeys WHERE channel_id = $1 ORDER BY id",
                &[&&*self.channel_id],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = u32::try_from(col::<i64>(OP, row, 2)?)
                .map_err(|_| invalid(OP, "signed prekey id out of range"))?;
            out.push((
                id,
                self.open(OP, SIGNED_PREKEYS, &[&id.to_be_bytes()], row)?,
            ));
        }
        Ok(out)
    }

    async fn remove_signed_prekey(&self, id: u32) -> Result<()> {
        self.exec(
            "remove_signed_prekey",
            "DELETE FROM wa_signed_prekeys WHERE channel_id = $1 AND id = $2",
            &[&&*self.channel_id, &i64::from(id)],
        )
        .await?;
        Ok(())
    }

    async fn put_sender_key(&self, address: &str, record: &[u8]) -> Result<()> {
        let (kid, sealed) = self.seal(SENDER_KEYS, &[address.as_bytes()], record);
        self.exec(
            "put_sender_key",
            "INSERT INTO wa_sender_keys (channel_id, address, kid, sealed) VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel_id, address) DO UPDATE SET kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &address, &kid, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn put_sender_keys_batch(&self, sender_keys: &[(Arc<str>, Bytes)]) -> Result<()> {
        if sender_keys.is_empty() {
            return Ok(());
        }
        let (addresses, kids, sealed) = self.seal_by_address(SENDER_KEYS, sender_keys);
        self.exec(
            "put_sender_keys_batch",
            "INSERT INTO wa_sender_keys (channel_id, address, kid, sealed)
             SELECT $1, a, k, s FROM unnest($2::text[], $3::text[], $4::bytea[]) AS u(a, k, s)
             ON CONFLICT (channel_id, address) DO UPDATE SET kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &addresses, &kids, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn get_sender_key(&self, address: &str) -> Result<Option<Vec<u8>>> {
        const OP: &str = "get_sender_key";
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed FROM wa_sender_keys WHERE channel_id = $1 AND address = $2",
                &[&&*self.channel_id, &address],
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(self.open(
            OP,
            SENDER_KEYS,
            &[address.as_bytes()],
            &row,
        )?))
    }

    async fn delete_sender_key(&self, address: &str) -> Result<()> {
        self.exec(
            "delete_sender_key",
            "DELETE FROM wa_sender_keys WHERE channel_id = $1 AND address = $2",
            &[&&*self.channel_id, &address],
        )
        .await?;
        Ok(())
    }
}

//! WhatsApp protocol state: sender-key distribution, LID↔PN mappings, base keys, device lists, group metadata,
//! trusted-contact tokens, sent messages for retries and the pending-inbound buffer.

use super::{PgStore, col, count_u32, from_json, inbound, invalid, last_wins, to_json};
use async_trait::async_trait;
use wacore::store::error::Result;
use wacore::store::traits::{
    DeviceListRecord, LidPnMappingEntry, PendingInboundKey, PendingInboundRow, ProtocolStore,
    TcTokenEntry,
};
use whatsapp_rust::wacore;

const SENDER_KEY_DEVICES: &str = "wa_sender_key_devices";
const LID_PN: &str = "wa_lid_pn_mappings";
const BASE_KEYS: &str = "wa_base_keys";
const DEVICE_LISTS: &str = "wa_device_lists";
const GROUP_METADATA: &str = "wa_group_metadata";
const TC_TOKENS: &str = "wa_tc_tokens";
const SENT_MESSAGES: &str = "wa_sent_messages";
const PENDING_INBOUND: &str = "wa_pending_inbound";

impl PgStore {
    /// A LID mapping is sealed under both its LID and its phone number, the column `get_pn_mapping` selects by.
    fn seal_lid_mapping(
        &self,
        op: &'static str,
        entry: &LidPnMappingEntry,
    ) -> Result<(String, Vec<u8>)> {
        let json = to_json(op, entry)?;
        Ok(self.seal(
            LID_PN,
            &[entry.lid.as_bytes(), entry.phone_number.as_bytes()],
            &json,
        ))
    }

    /// Opens a row `SELECT kid, sealed, lid, phone_number`.
    fn open_lid_mapping(
        &self,
        op: &'static str,
        row: &tokio_postgres::Row,
    ) -> Result<LidPnMappingEntry> {
        let lid: &str = col(op, row, 2)?;
        let phone: &str = col(op, row, 3)?;
        let json = self.open(op, LID_PN, &[lid.as_bytes(), phone.as_bytes()], row)?;
        from_json(op, &json)
    }
}

#[async_trait]
impl ProtocolStore for PgStore {
    // --- Sender-key distribution per device ---

    async fn get_sender_key_devices(&self, group_jid: &str) -> Result<Vec<(String, bool)>> {
        const OP: &str = "get_sender_key_devices";
        let rows = self
            .query(
                OP,
                "SELECT kid, sealed, device_jid FROM wa_sender_key_devices WHERE channel_id = $1 AND group_jid = $2",
                &[&&*self.channel_id, &group_jid],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let device: String = col(OP, row, 2)?;
            let flag = self.open(
                OP,
                SENDER_KEY_DEVICES,
                &[group_jid.as_bytes(), device.as_bytes()],
                row,
            )?;
            let has_key = match flag.as_slice() {
                [0] => false,
                [1] => true,
                _ => return Err(invalid(OP, "sender key status is not a flag")),
            };
            out.push((device, has_key));
        }
        Ok(out)
    }

    async fn set_sender_key_status(&self, group_jid: &str, entries: &[(&str, bool)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let rows = last_wins(entries, |(device, _)| *device);
        let mut devices = Vec::with_capacity(rows.len());
        let mut kids = Vec::with_capacity(rows.len());
        let mut sealed = Vec::with_capacity(rows.len());
        for (device, has_key) in rows {
            let (kid, s) = self.seal(
                SENDER_KEY_DEVICES,
                &[group_jid.as_bytes(), device.as_bytes()],
                &[u8::from(*has_key)],
            );
            devices.push(*device);
            kids.push(kid);
            sealed.push(s);
        }
        self.exec(
            "set_sender_key_status",
            "INSERT INTO wa_sender_key_devices (channel_id, group_jid, device_jid, kid, sealed)
             SELECT $1, $2, d, k, s FROM unnest($3::text[], $4::text[], $5::bytea[]) AS u(d, k, s)
             ON CONFLICT (channel_id, group_jid, device_jid) DO UPDATE SET kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &group_jid, &devices, &kids, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn clear_sender_key_devices(&self, group_jid: &str) -> Result<()> {
        self.exec(
            "clear_sender_key_devices",
            "DELETE FROM wa_sender_key_devices WHERE channel_id = $1 AND group_jid = $2",
            &[&&*self.channel_id, &group_jid],
        )
        .await?;
        Ok(())
    }

    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> Result<()> {
        if device_jids.is_empty() {
            return Ok(());
        }
        self.exec(
            "delete_sender_key_device_rows",
            "DELETE FROM wa_sender_key_devices WHERE channel_id = $1 AND device_jid = ANY($2::text[])",
            &[&&*self.channel_id, &device_jids],
        )
        .await?;
        Ok(())
    }

    async fn clear_all_sender_key_devices(&self) -> Result<()> {
        self.exec(
            "clear_all_sender_key_devices",
            "DELETE FROM wa_sender_key_devices WHERE channel_id = $1",
            &[&&*self.channel_id],
        )
        .await?;
        Ok(())
    }

    // --- LID ↔ phone number ---

    async fn get_lid_mapping(&self, lid: &str) -> Result<Option<LidPnMappingEntry>> {
        const OP: &str = "get_lid_mapping";
        let row = self
            .query_opt(
                OP,
                "SELECT kid, sealed, lid, phone_number FROM wa_lid_pn_mappings WHERE channel_id = $1 AND lid = $2",
                &[&&*self.channel_id, &lid],
            )
            .await?;
        row.map(|row| self.open_lid_mapping(OP, &row)).transpose()
    }

    /// The mapping put last among the LIDs currently mapped to `phone`. The in-memory store keeps a reverse
    /// index instead, which a LID moving to another number clears even when it points at a different LID;
    /// this answers what that index means to answer.
    async fn get_pn_mapping(&self, phone: &str) -> Result<Option<LidPnMappingEntry>> {
        const OP: &str = "get_pn_mapping";
        let row = self
            .query_opt(
                OP,
                "SELECT kid, sealed, lid, phone_number FROM wa_lid_pn_mappings
                 WHERE channel_id = $1 AND phone_number = $2 ORDER BY put_seq DESC LIMIT 1",
                &[&&*self.channel_id, &phone],
            )
            .await?;
        row.map(|row| self.open_lid_mapping(OP, &row)).transpose()
    }

    /// Replaces the whole entry, `created_at` included, as the in-memory store does.
    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> Result<()> {
        const OP: &str = "put_lid_mapping";
        let (kid, sealed) = self.seal_lid_mapping(OP, entry)?;
        self.exec(
            OP,
            "INSERT INTO wa_lid_pn_mappings (channel_id, lid, phone_number, kid, sealed) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (channel_id, lid) DO UPDATE SET phone_number = excluded.phone_number,
                 put_seq = excluded.put_seq, kid = excluded.kid, sealed = excluded.sealed",
            &[
                &&*self.channel_id,
                &entry.lid,
                &entry.phone_number,
                &kid,
                &sealed,
            ],
        )
        .await?;
        Ok(())
    }

    /// Rows are inserted in batch order, so `put_seq` (drawn per row) keeps "put last" meaning what it does for
    /// single puts.
    async fn put_lid_mappings(&self, entries: &[LidPnMappingEntry]) -> Result<()> {
        const OP: &str = "put_lid_mappings";
        if entries.is_empty() {
            return Ok(());
        }
        let rows = last_wins(entries, |e| e.lid.as_str());
        let mut lids = Vec::with_capacity(rows.len());
        let mut phones = Vec::with_capacity(rows.len());
        let mut kids = Vec::with_capacity(rows.len());
        let mut sealed = Vec::with_capacity(rows.len());
        for entry in rows {
            let (kid, s) = self.seal_lid_mapping(OP, entry)?;
            lids.push(entry.lid.as_str());
            phones.push(entry.phone_number.as_str());
            kids.push(kid);
            sealed.push(s);
        }
        self.exec(
            OP,
            "INSERT INTO wa_lid_pn_mappings (channel_id, lid, phone_number, kid, sealed)
             SELECT $1, l, p, k, s FROM unnest($2::text[], $3::text[], $4::text[], $5::bytea[])
                 WITH ORDINALITY AS u(l, p, k, s, ord) ORDER BY ord
             ON CONFLICT (channel_id, lid) DO UPDATE SET phone_number = excluded.phone_number,
                 put_seq = excluded.put_seq, kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &lids, &phones, &kids, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn get_all_lid_mappings(&self) -> Result<Vec<LidPnMappingEntry>> {
        const OP: &str = "get_all_lid_mappings";
        let rows = self
            .query(
                OP,
                "SELECT kid, sealed, lid, phone_number FROM wa_lid_pn_mappings WHERE channel_id = $1",
                &[&&*self.channel_id],
            )
            .await?;
        rows.iter()
            .map(|row| self.open_lid_mapping(OP, row))
            .collect()
    }

    // --- Base keys (retry collision detection) ---

    async fn save_base_key(&self, address: &str, message_id: &str, base_key: &[u8]) -> Result<()> {
        let (kid, sealed) = self.seal(
            BASE_KEYS,
            &[address.as_bytes(), message_id.as_bytes()],
            base_key,
        );
        self.exec(
            "save_base_key",
            "INSERT INTO wa_base_keys (channel_id, address, message_id, kid, sealed) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (channel_id, address, message_id) DO UPDATE SET kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &address, &message_id, &kid, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn has_same_base_key(
        &self,
        address: &str,
        message_id: &str,
        current_base_key: &[u8],
    ) -> Result<bool> {
        const OP: &str = "has_same_base_key";
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed FROM wa_base_keys WHERE channel_id = $1 AND address = $2 AND message_id = $3",
                &[&&*self.channel_id, &address, &message_id],
            )
            .await?
        else {
            return Ok(false);
        };
        let stored = self.open(
            OP,
            BASE_KEYS,
            &[address.as_bytes(), message_id.as_bytes()],
            &row,
        )?;
        Ok(stored == current_base_key)
    }

    async fn delete_base_key(&self, address: &str, message_id: &str) -> Result<()> {
        self.exec(
            "delete_base_key",
            "DELETE FROM wa_base_keys WHERE channel_id = $1 AND address = $2 AND message_id = $3",
            &[&&*self.channel_id, &address, &message_id],
        )
        .await?;
        Ok(())
    }

    // --- Device registry ---

    async fn update_device_list(&self, record: DeviceListRecord) -> Result<()> {
        const OP: &str = "update_device_list";
        let json = to_json(OP, &record)?;
        let (kid, sealed) = self.seal(DEVICE_LISTS, &[record.user.as_bytes()], &json);
        self.exec(
            OP,
            "INSERT INTO wa_device_lists (channel_id, jid_user, kid, sealed) VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel_id, jid_user) DO UPDATE SET kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &record.user, &kid, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn update_device_lists(&self, records: Vec<DeviceListRecord>) -> Result<()> {
        const OP: &str = "update_device_lists";
        if records.is_empty() {
            return Ok(());
        }
        let rows = last_wins(&records, |r| r.user.as_str());
        let mut users = Vec::with_capacity(rows.len());
        let mut kids = Vec::with_capacity(rows.len());
        let mut sealed = Vec::with_capacity(rows.len());
        for record in rows {
            let json = to_json(OP, record)?;
            let (kid, s) = self.seal(DEVICE_LISTS, &[record.user.as_bytes()], &json);
            users.push(record.user.as_str());
            kids.push(kid);
            sealed.push(s);
        }
        self.exec(
            OP,
            "INSERT INTO wa_device_lists (channel_id, jid_user, kid, sealed)
             SELECT $1, u, k, s FROM unnest($2::text[], $3::text[], $4::bytea[]) AS x(u, k, s)
             ON CONFLICT (channel_id, jid_user) DO UPDATE SET kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &users, &kids, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn get_devices(&self, user: &str) -> Result<Option<DeviceListRecord>> {
        const OP: &str = "get_devices";
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed FROM wa_device_lists WHERE channel_id = $1 AND jid_user = $2",
                &[&&*self.channel_id, &user],
            )
            .await?
        else {
            return Ok(None);
        };
        let json = self.open(OP, DEVICE_LISTS, &[user.as_bytes()], &row)?;
        Ok(Some(from_json(OP, &json)?))
    }

    async fn delete_devices(&self, user: &str) -> Result<()> {
        self.exec(
            "delete_devices",
            "DELETE FROM wa_device_lists WHERE channel_id = $1 AND jid_user = $2",
            &[&&*self.channel_id, &user],
        )
        .await?;
        Ok(())
    }

    // --- Group metadata ---

    async fn get_group_metadata(&self, group_jid: &str) -> Result<Option<Vec<u8>>> {
        const OP: &str = "get_group_metadata";
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed FROM wa_group_metadata WHERE channel_id = $1 AND group_jid = $2",
                &[&&*self.channel_id, &group_jid],
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(self.open(
            OP,
            GROUP_METADATA,
            &[group_jid.as_bytes()],
            &row,
        )?))
    }

    async fn put_group_metadata(&self, group_jid: &str, blob: &[u8]) -> Result<()> {
        let (kid, sealed) = self.seal(GROUP_METADATA, &[group_jid.as_bytes()], blob);
        self.exec(
            "put_group_metadata",
            "INSERT INTO wa_group_metadata (channel_id, group_jid, kid, sealed) VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel_id, group_jid) DO UPDATE SET kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &group_jid, &kid, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn delete_group_metadata(&self, group_jid: &str) -> Result<()> {
        self.exec(
            "delete_group_metadata",
            "DELETE FROM wa_group_metadata WHERE channel_id = $1 AND group_jid = $2",
            &[&&*self.channel_id, &group_jid],
        )
        .await?;
        Ok(())
    }

    // --- Trusted-contact tokens ---

    async fn get_tc_token(&self, jid: &str) -> Result<Option<TcTokenEntry>> {
        const OP: &str = "get_tc_token";
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed, token_timestamp, sender_timestamp FROM wa_tc_tokens
                 WHERE channel_id = $1 AND jid = $2",
                &[&&*self.channel_id, &jid],
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(TcTokenEntry {
            token: self.open(OP, TC_TOKENS, &[jid.as_bytes()], &row)?,
            token_timestamp: col(OP, &row, 2)?,
            sender_timestamp: col(OP, &row, 3)?,
        }))
    }

    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<()> {
        let (kid, sealed) = self.seal(TC_TOKENS, &[jid.as_bytes()], &entry.token);
        self.exec(
            "put_tc_token",
            "INSERT INTO wa_tc_tokens (channel_id, jid, has_token, token_timestamp, sender_timestamp, kid, sealed)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (channel_id, jid) DO UPDATE SET has_token = excluded.has_token,
                 token_timestamp = excluded.token_timestamp, sender_timestamp = excluded.sender_timestamp,
                 kid = excluded.kid, sealed = excluded.sealed",
            &[
                &&*self.channel_id,
                &jid,
                &!entry.token.is_empty(),
                &entry.token_timestamp,
                &entry.sender_timestamp,
                &kid,
                &sealed,
            ],
        )
        .await?;
        Ok(())
    }

    async fn delete_tc_token(&self, jid: &str) -> Result<()> {
        self.exec(
            "delete_tc_token",
            "DELETE FROM wa_tc_tokens WHERE channel_id = $1 AND jid = $2",
            &[&&*self.channel_id, &jid],
        )
        .await?;
        Ok(())
    }

    async fn get_all_tc_token_jids(&self) -> Result<Vec<String>> {
        const OP: &str = "get_all_tc_token_jids";
        let rows = self
            .query(
                OP,
                "SELECT jid FROM wa_tc_tokens WHERE channel_id = $1",
                &[&&*self.channel_id],
            )
            .await?;
        rows.iter().map(|row| col(OP, row, 0)).collect()
    }

    /// Kept while either the received token or the sender bucket is live.
    async fn delete_expired_tc_tokens(&self, token_cutoff: i64, sender_cutoff: i64) -> Result<u32> {
        let n = self
            .exec(
                "delete_expired_tc_tokens",
                "DELETE FROM wa_tc_tokens WHERE channel_id = $1
                   AND NOT (has_token AND token_timestamp >= $2)
                   AND (sender_timestamp IS NULL OR sender_timestamp < $3)",
                &[&&*self.channel_id, &token_cutoff, &sender_cutoff],
            )
            .await?;
        Ok(count_u32(n))
    }

    /// One upsert: a byte-less placeholder when absent, else only the sender bucket moves, forward (GREATEST
    /// skips a NULL bucket).
    async fn touch_tc_token_sender_timestamp(
        &self,
        jid: &str,
        sender_timestamp: i64,
    ) -> Result<()> {
        let (kid, sealed) = self.seal(TC_TOKENS, &[jid.as_bytes()], &[]);
        self.exec(
            "touch_tc_token_sender_timestamp",
            "INSERT INTO wa_tc_tokens (channel_id, jid, has_token, token_timestamp, sender_timestamp, kid, sealed)
             VALUES ($1, $2, false, $3, $3, $4, $5)
             ON CONFLICT (channel_id, jid) DO UPDATE
             SET sender_timestamp = GREATEST(wa_tc_tokens.sender_timestamp, excluded.sender_timestamp)",
            &[&&*self.channel_id, &jid, &sender_timestamp, &kid, &sealed],
        )
        .await?;
        Ok(())
    }

    /// One upsert, newer-wins: the stored token is replaced only when it is a placeholder or not newer; the
    /// sender bucket is never touched.
    async fn store_received_tc_token(
        &self,
        jid: &str,
        token: &[u8],
        token_timestamp: i64,
    ) -> Result<()> {
        let (kid, sealed) = self.seal(TC_TOKENS, &[jid.as_bytes()], token);
        self.exec(
            "store_received_tc_token",
            "INSERT INTO wa_tc_tokens (channel_id, jid, has_token, token_timestamp, sender_timestamp, kid, sealed)
             VALUES ($1, $2, $3, $4, NULL, $5, $6)
             ON CONFLICT (channel_id, jid) DO UPDATE
             SET has_token = excluded.has_token, token_timestamp = excluded.token_timestamp,
                 kid = excluded.kid, sealed = excluded.sealed
             WHERE NOT wa_tc_tokens.has_token OR excluded.token_timestamp >= wa_tc_tokens.token_timestamp",
            &[
                &&*self.channel_id,
                &jid,
                &!token.is_empty(),
                &token_timestamp,
                &kid,
                &sealed,
            ],
        )
        .await?;
        Ok(())
    }

    // --- Sent messages (retry receipts) ---

    /// No count cap: the in-memory store's 4096-entry cap bounds its RAM; here the client's TTL sweep
    /// (`delete_expired_sent_messages`) bounds the table, as in the crate's SQLite store.
    async fn store_sent_message(
        &self,
        chat_jid: &str,
        message_id: &str,
        payload: &[u8],
    ) -> Result<()> {
        let (kid, sealed) = self.seal(
            SENT_MESSAGES,
            &[chat_jid.as_bytes(), message_id.as_bytes()],
            payload,
        );
        self.exec(
            "store_sent_message",
            "INSERT INTO wa_sent_messages (channel_id, chat_jid, message_id, created_at, kid, sealed)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (channel_id, chat_jid, message_id) DO UPDATE
             SET created_at = excluded.created_at, kid = excluded.kid, sealed = excluded.sealed",
            &[
                &&*self.channel_id,
                &chat_jid,
                &message_id,
                &wacore::time::now_secs(),
                &kid,
                &sealed,
            ],
        )
        .await?;
        Ok(())
    }

    /// `DELETE … RETURNING`: of two concurrent takes, the second waits on the row lock and then finds nothing.
    async fn take_sent_message(&self, chat_jid: &str, message_id: &str) -> Result<Option<Vec<u8>>> {
        const OP: &str = "take_sent_message";
        let Some(row) = self
            .query_opt(
                OP,
                "DELETE FROM wa_sent_messages WHERE channel_id = $1 AND chat_jid = $2 AND message_id = $3
                 RETURNING kid, sealed",
                &[&&*self.channel_id, &chat_jid, &message_id],
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(self.open(
            OP,
            SENT_MESSAGES,
            &[chat_jid.as_bytes(), message_id.as_bytes()],
            &row,
        )?))
    }

    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> Result<u32> {
        let n = self
            .exec(
                "delete_expired_sent_messages",
                "DELETE FROM wa_sent_messages WHERE channel_id = $1 AND created_at < $2",
                &[&&*self.channel_id, &cutoff_timestamp],
            )
            .await?;
        Ok(count_u32(n))
    }

    // --- Pending inbound (durability hook) ---

    async fn store_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
        message: &[u8],
    ) -> Result<()> {
        self.store_pending_inbound_batch(&[PendingInboundRow {
            chat,
            sender,
            id,
            message,
        }])
        .await
    }

    async fn get_pending_inbound(
        &self,
        chat: &str,
        sender: &str,
        id: &str,
    ) -> Result<Option<Vec<u8>>> {
        const OP: &str = "get_pending_inbound";
        if self
            .ledger
            .is_deleted(&(chat.to_string(), sender.to_string(), id.to_string()))
        {
            return Ok(None);
        }
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed FROM wa_pending_inbound
                 WHERE channel_id = $1 AND chat_jid = $2 AND sender_jid = $3 AND message_id = $4",
                &[&&*self.channel_id, &chat, &sender, &id],
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(self.open(
            OP,
            PENDING_INBOUND,
            &[chat.as_bytes(), sender.as_bytes(), id.as_bytes()],
            &row,
        )?))
    }

    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<()> {
        self.delete_pending_inbound_batch(&[PendingInboundKey { chat, sender, id }])
            .await
    }

    /// Tombstoned rows (deleted, the sweeper not done yet) are not counted: they are gone already.
    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> Result<u32> {
        const OP: &str = "delete_expired_pending_inbound";
        let rows = self
            .query(
                OP,
                "DELETE FROM wa_pending_inbound WHERE channel_id = $1 AND created_at < $2
                 RETURNING chat_jid, sender_jid, message_id",
                &[&&*self.channel_id, &cutoff_timestamp],
            )
            .await?;
        let keys = rows
            .iter()
            .map(|r| Ok((col(OP, r, 0)?, col(OP, r, 1)?, col(OP, r, 2)?)))
            .collect::<Result<Vec<inbound::Key>>>()?;
        Ok(count_u32(
            (keys.len() - self.ledger.tombstoned(&keys)) as u64,
        ))
    }

    async fn store_pending_inbound_batch(&self, rows: &[PendingInboundRow<'_>]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows = last_wins(rows, |r| (r.chat, r.sender, r.id));
        let mut chats = Vec::with_capacity(rows.len());
        let mut senders = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        let mut kids = Vec::with_capacity(rows.len());
        let mut sealed = Vec::with_capacity(rows.len());
        for r in rows {
            let (kid, s) = self.seal(
                PENDING_INBOUND,
                &[r.chat.as_bytes(), r.sender.as_bytes(), r.id.as_bytes()],
                r.message,
            );
            chats.push(r.chat);
            senders.push(r.sender);
            ids.push(r.id);
            kids.push(kid);
            sealed.push(s);
        }
        self.exec(
            "store_pending_inbound_batch",
            "INSERT INTO wa_pending_inbound (channel_id, chat_jid, sender_jid, message_id, created_at, kid, sealed)
             SELECT $1, c, s, i, $2, k, x
             FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[]) AS u(c, s, i, k, x)
             ON CONFLICT (channel_id, chat_jid, sender_jid, message_id) DO UPDATE
             SET created_at = excluded.created_at, kid = excluded.kid, sealed = excluded.sealed",
            &[
                &&*self.channel_id,
                &wacore::time::now_secs(),
                &chats,
                &senders,
                &ids,
                &kids,
                &sealed,
            ],
        )
        .await?;
        for (((c, s), i), sealed) in chats.iter().zip(&senders).zip(&ids).zip(&sealed) {
            if let Some(nonce) = sealed.get(..12).and_then(|n| n.try_into().ok()) {
                self.ledger
                    .stored((c.to_string(), s.to_string(), i.to_string()), nonce);
            }
        }
        Ok(())
    }

    /// With a sweeper, the rows this store wrote are tombstoned now and deleted late (see `inbound`); the rest at
    /// once.
    async fn delete_pending_inbound_batch(&self, keys: &[PendingInboundKey<'_>]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<inbound::Key> = keys
            .iter()
            .map(|k| (k.chat.to_string(), k.sender.to_string(), k.id.to_string()))
            .collect();
        let now = match &self.sweeper {
            None => keys,
            Some(sweeper) => {
                let (late, mut now) = self.ledger.delete(keys);
                for (key, nonce) in sweeper.queue(&self.ledger, &self.channel_id, late) {
                    self.ledger.untomb(&key, &nonce);
                    now.push(key);
                }
                now
            }
        };
        if now.is_empty() {
            return Ok(());
        }
        let chats: Vec<&str> = now.iter().map(|k| k.0.as_str()).collect();
        let senders: Vec<&str> = now.iter().map(|k| k.1.as_str()).collect();
        let ids: Vec<&str> = now.iter().map(|k| k.2.as_str()).collect();
        self.exec(
            "delete_pending_inbound_batch",
            "DELETE FROM wa_pending_inbound p
             USING unnest($2::text[], $3::text[], $4::text[]) AS u(c, s, i)
             WHERE p.channel_id = $1 AND p.chat_jid = u.c AND p.sender_jid = u.s AND p.message_id = u.i",
            &[&&*self.channel_id, &chats, &senders, &ids],
        )
        .await?;
        Ok(())
    }
}

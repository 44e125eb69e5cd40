//! Per-message secrets (polls, reactions, edits), with retention deadlines.

use super::{PgStore, col, count_u32};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;
use whatsapp_rust::wacore::store::error::Result;
use whatsapp_rust::wacore::store::traits::{
    MsgSecretEntry, MsgSecretStore, merge_msg_secret_expiry, merge_msg_secret_message_ts,
};

const MSG_SECRETS: &str = "wa_msg_secrets";

#[async_trait]
impl MsgSecretStore for PgStore {
    /// One upsert for the batch. A key repeated within the batch is merged here first, with the same rules the
    /// upsert applies against the stored row (`merge_msg_secret_expiry`: 0 = never wins, else the later
    /// deadline; `merge_msg_secret_message_ts`: the later parent time; the secret: the last written). Both
    /// merges are associative and commutative, so folding the batch first gives the row-by-row result.
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> Result<usize> {
        let stored = entries.len();
        if entries.is_empty() {
            return Ok(0);
        }
        let mut merged: Vec<MsgSecretEntry> = Vec::with_capacity(entries.len());
        let mut index: HashMap<(Arc<str>, Arc<str>, Arc<str>), usize> =
            HashMap::with_capacity(entries.len());
        for entry in entries {
            let key = (
                entry.chat.clone(),
                entry.sender.clone(),
                entry.msg_id.clone(),
            );
            match index.get(&key) {
                Some(&i) => {
                    let row = &mut merged[i];
                    row.secret = entry.secret;
                    row.expires_at = merge_msg_secret_expiry(row.expires_at, entry.expires_at);
                    row.message_ts = merge_msg_secret_message_ts(row.message_ts, entry.message_ts);
                }
                None => {
                    index.insert(key, merged.len());
                    merged.push(entry);
                }
            }
        }
        let mut chats = Vec::with_capacity(merged.len());
        let mut senders = Vec::with_capacity(merged.len());
        let mut ids = Vec::with_capacity(merged.len());
        let mut expires = Vec::with_capacity(merged.len());
        let mut message_ts = Vec::with_capacity(merged.len());
        let mut kids = Vec::with_capacity(merged.len());
        let mut sealed = Vec::with_capacity(merged.len());
        for e in &merged {
            let (kid, s) = self.seal(
                MSG_SECRETS,
                &[e.chat.as_bytes(), e.sender.as_bytes(), e.msg_id.as_bytes()],
                &e.secret,
            );
            chats.push(&*e.chat);
            senders.push(&*e.sender);
            ids.push(&*e.msg_id);
            expires.push(e.expires_at);
            message_ts.push(e.message_ts);
            kids.push(kid);
            sealed.push(s);
        }
        self.exec(
            "put_msg_secrets",
            "INSERT INTO wa_msg_secrets (channel_id, chat_jid, sender_jid, message_id, expires_at, message_ts, kid, sealed)
             SELECT $1, c, s, m, e, t, k, x
             FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::bytea[])
                 AS u(c, s, m, e, t, k, x)
             ON CONFLICT (channel_id, chat_jid, sender_jid, message_id) DO UPDATE SET
                 expires_at = CASE WHEN wa_msg_secrets.expires_at = 0 OR excluded.expires_at = 0 THEN 0
                                   ELSE GREATEST(wa_msg_secrets.expires_at, excluded.expires_at) END,
                 message_ts = GREATEST(wa_msg_secrets.message_ts, excluded.message_ts),
                 kid = excluded.kid, sealed = excluded.sealed",
            &[
                &&*self.channel_id,
                &chats,
                &senders,
                &ids,
                &expires,
                &message_ts,
                &kids,
                &sealed,
            ],
        )
        .await?;
        Ok(stored)
    }

    async fn get_msg_secret(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_msg_secret_with_ts(chat, sender, msg_id)
            .await?
            .map(|(secret, _)| secret))
    }

    async fn get_msg_secret_with_ts(
        &self,
        chat: &str,
        sender: &str,
        msg_id: &str,
    ) -> Result<Option<(Vec<u8>, i64)>> {
        const OP: &str = "get_msg_secret";
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed, message_ts FROM wa_msg_secrets
                 WHERE channel_id = $1 AND chat_jid = $2 AND sender_jid = $3 AND message_id = $4",
                &[&&*self.channel_id, &chat, &sender, &msg_id],
            )
            .await?
        else {
            return Ok(None);
        };
        let secret = self.open(
            OP,
            MSG_SECRETS,
            &[chat.as_bytes(), sender.as_bytes(), msg_id.as_bytes()],
            &row,
        )?;
        Ok(Some((secret, col(OP, &row, 2)?)))
    }

    /// Rows without a deadline (0) are kept; the others go once the deadline is at or before the cutoff.
    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> Result<u32> {
        let n = self
            .exec(
                "delete_expired_msg_secrets",
                "DELETE FROM wa_msg_secrets WHERE channel_id = $1 AND expires_at <> 0 AND expires_at <= $2",
                &[&&*self.channel_id, &cutoff_timestamp],
            )
            .await?;
        Ok(count_u32(n))
    }
}

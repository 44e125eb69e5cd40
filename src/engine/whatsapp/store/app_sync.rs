//! App-state sync: sync keys, collection versions, mutation MACs.

use super::{PgStore, col, from_json, invalid, last_wins, to_json};
use async_trait::async_trait;
use std::collections::HashMap;
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::store::error::Result;
use whatsapp_rust::wacore::store::traits::{AppStateSyncKey, AppSyncStore};

const SYNC_KEYS: &str = "wa_app_state_sync_keys";
const VERSIONS: &str = "wa_app_state_versions";
const MUTATION_MACS: &str = "wa_app_state_mutation_macs";

#[async_trait]
impl AppSyncStore for PgStore {
    async fn get_sync_key(&self, key_id: &[u8]) -> Result<Option<AppStateSyncKey>> {
        const OP: &str = "get_sync_key";
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed FROM wa_app_state_sync_keys WHERE channel_id = $1 AND key_id = $2",
                &[&&*self.channel_id, &key_id],
            )
            .await?
        else {
            return Ok(None);
        };
        let json = self.open(OP, SYNC_KEYS, &[key_id], &row)?;
        Ok(Some(from_json(OP, &json)?))
    }

    /// Draws a new `set_seq` on every set, overwrite included: the latest key is the one set last.
    async fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> Result<()> {
        const OP: &str = "set_sync_key";
        let json = to_json(OP, &key)?;
        let (kid, sealed) = self.seal(SYNC_KEYS, &[key_id], &json);
        self.exec(
            OP,
            "INSERT INTO wa_app_state_sync_keys (channel_id, key_id, kid, sealed) VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel_id, key_id) DO UPDATE
             SET set_seq = excluded.set_seq, kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &key_id, &kid, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn get_version(&self, name: &str) -> Result<HashState> {
        const OP: &str = "get_version";
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed FROM wa_app_state_versions WHERE channel_id = $1 AND name = $2",
                &[&&*self.channel_id, &name],
            )
            .await?
        else {
            return Ok(HashState::default());
        };
        let json = self.open(OP, VERSIONS, &[name.as_bytes()], &row)?;
        from_json(OP, &json)
    }

    async fn set_version(&self, name: &str, state: HashState) -> Result<()> {
        const OP: &str = "set_version";
        let json = to_json(OP, &state)?;
        let (kid, sealed) = self.seal(VERSIONS, &[name.as_bytes()], &json);
        self.exec(
            OP,
            "INSERT INTO wa_app_state_versions (channel_id, name, kid, sealed) VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel_id, name) DO UPDATE SET kid = excluded.kid, sealed = excluded.sealed",
            &[&&*self.channel_id, &name, &kid, &sealed],
        )
        .await?;
        Ok(())
    }

    async fn put_mutation_macs(
        &self,
        name: &str,
        version: u64,
        mutations: &[AppStateMutationMAC],
    ) -> Result<()> {
        const OP: &str = "put_mutation_macs";
        if mutations.is_empty() {
            return Ok(());
        }
        let version =
            i64::try_from(version).map_err(|_| invalid(OP, "version beyond i64 range"))?;
        let rows = last_wins(mutations, |m| m.index_mac.as_slice());
        let mut index_macs = Vec::with_capacity(rows.len());
        let mut kids = Vec::with_capacity(rows.len());
        let mut sealed = Vec::with_capacity(rows.len());
        for m in rows {
            let (kid, s) = self.seal(
                MUTATION_MACS,
                &[name.as_bytes(), &m.index_mac],
                &m.value_mac,
            );
            index_macs.push(m.index_mac.as_slice());
            kids.push(kid);
            sealed.push(s);
        }
        self.exec(
            OP,
            "INSERT INTO wa_app_state_mutation_macs (channel_id, name, index_mac, version, kid, sealed)
             SELECT $1, $2, i, $3, k, s FROM unnest($4::bytea[], $5::text[], $6::bytea[]) AS u(i, k, s)
             ON CONFLICT (channel_id, name, index_mac) DO UPDATE
             SET version = excluded.version, kid = excluded.kid, sealed = excluded.sealed",
            &[
                &&*self.channel_id,
                &name,
                &version,
                &index_macs,
                &kids,
                &sealed,
            ],
        )
        .await?;
        Ok(())
    }

    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> Result<Option<Vec<u8>>> {
        const OP: &str = "get_mutation_mac";
        let Some(row) = self
            .query_opt(
                OP,
                "SELECT kid, sealed FROM wa_app_state_mutation_macs
                 WHERE channel_id = $1 AND name = $2 AND index_mac = $3",
                &[&&*self.channel_id, &name, &index_mac],
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(self.open(
            OP,
            MUTATION_MACS,
            &[name.as_bytes(), index_mac],
            &row,
        )?))
    }

    /// One round trip for the whole set (the default is one per MAC).
    async fn get_mutation_macs(
        &self,
        name: &str,
        index_macs: &[[u8; 32]],
    ) -> Result<HashMap<[u8; 32], Vec<u8>>> {
        const OP: &str = "get_mutation_macs";
        if index_macs.is_empty() {
            return Ok(HashMap::new());
        }
        let wanted: Vec<&[u8]> = index_macs.iter().map(|m| m.as_slice()).collect();
        let rows = self
            .query(
                OP,
                "SELECT m.kid, m.sealed, m.index_mac FROM wa_app_state_mutation_macs m
                 JOIN (SELECT DISTINCT i FROM unnest($3::bytea[]) AS u(i)) w ON m.index_mac = w.i
                 WHERE m.channel_id = $1 AND m.name = $2",
                &[&&*self.channel_id, &name, &wanted],
            )
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for row in &rows {
            let index_mac: &[u8] = col(OP, row, 2)?;
            let value = self.open(OP, MUTATION_MACS, &[name.as_bytes(), index_mac], row)?;
            // Matched against 32-byte inputs, so always 32 bytes.
            let key: [u8; 32] = index_mac
                .try_into()
                .map_err(|_| invalid(OP, "index MAC is not 32 bytes"))?;
            out.insert(key, value);
        }
        Ok(out)
    }

    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> Result<()> {
        if index_macs.is_empty() {
            return Ok(());
        }
        let macs: Vec<&[u8]> = index_macs.iter().map(Vec::as_slice).collect();
        self.exec(
            "delete_mutation_macs",
            "DELETE FROM wa_app_state_mutation_macs
             WHERE channel_id = $1 AND name = $2 AND index_mac = ANY($3::bytea[])",
            &[&&*self.channel_id, &name, &macs],
        )
        .await?;
        Ok(())
    }

    async fn clear_mutation_macs(&self, name: &str) -> Result<()> {
        self.exec(
            "clear_mutation_macs",
            "DELETE FROM wa_app_state_mutation_macs WHERE channel_id = $1 AND name = $2",
            &[&&*self.channel_id, &name],
        )
        .await?;
        Ok(())
    }

    async fn get_latest_sync_key_id(&self) -> Result<Option<Vec<u8>>> {
        const OP: &str = "get_latest_sync_key_id";
        let row = self
            .query_opt(
                OP,
                "SELECT key_id FROM wa_app_state_sync_keys WHERE channel_id = $1 ORDER BY set_seq DESC LIMIT 1",
                &[&&*self.channel_id],
            )
            .await?;
        match row {
            Some(row) => Ok(Some(col(OP, &row, 0)?)),
            None => Ok(None),
        }
    }
}

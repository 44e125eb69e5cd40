//! The one piece of app state the fake phone writes: the account's push name, as the genesis
//! patch of `critical_block`. With a push name stored, a restarted client takes the plain
//! reconnection path (no initial app-state sync, no wait for a key share) like a real one.

use anyhow::anyhow;
use whatsapp_rust::buffa::{Message as _, MessageField};
use whatsapp_rust::wacore::appstate::encode_record;
use whatsapp_rust::wacore::appstate::expand_app_state_keys;
use whatsapp_rust::wacore::appstate::hash::{HashState, generate_patch_mac};
use whatsapp_rust::waproto::whatsapp as wa;

pub(crate) const CRITICAL_BLOCK: &str = "critical_block";

/// `SyncdPatch` v1 of `critical_block` holding `setting_pushName`, encrypted and MACed with the
/// account's app-state sync key (the one the phone shared with the companion).
pub(crate) fn push_name_genesis_patch(
    key_id: &[u8],
    key: &[u8; 32],
    push_name: &str,
    timestamp_ms: i64,
) -> anyhow::Result<Vec<u8>> {
    let keys = expand_app_state_keys(key);
    let index = serde_json::to_vec(&["setting_pushName"])?;
    let value = wa::SyncActionValue {
        timestamp: Some(timestamp_ms),
        push_name_setting: MessageField::some(wa::sync_action_value::PushNameSetting {
            name: Some(push_name.to_string()),
        }),
        ..Default::default()
    };
    let iv: [u8; 16] = rand::random();
    // Schema version 1 of setting_pushName.
    let (mutation, _) = encode_record(
        wa::syncd_mutation::SyncdOperation::SET,
        &index,
        &value,
        &keys,
        key_id,
        &iv,
        1,
    );
    let mut state = HashState::default();
    let (_, hashed) = state.update_hash(std::slice::from_ref(&mutation), |_, _| Ok(None));
    hashed.map_err(|e| anyhow!("ltHash update failed: {e}"))?;
    state.version = 1;
    let mut patch = wa::SyncdPatch {
        version: MessageField::some(wa::SyncdVersion { version: Some(1) }),
        mutations: vec![mutation],
        snapshot_mac: Some(state.generate_snapshot_mac(CRITICAL_BLOCK, &keys.snapshot_mac)),
        key_id: MessageField::some(wa::KeyId {
            id: Some(key_id.to_vec()),
        }),
        ..Default::default()
    };
    patch.patch_mac = Some(generate_patch_mac(
        &patch,
        CRITICAL_BLOCK,
        &keys.patch_mac,
        1,
    ));
    Ok(patch.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use whatsapp_rust::wacore::appstate::processor::process_patch;

    /// The published client-side processor accepts the patch and yields the push name.
    #[test]
    fn genesis_patch_validates_and_decodes() {
        let key_id = [0, 0, 0, 0, 1, 2];
        let key = [7u8; 32];
        let bytes =
            push_name_genesis_patch(&key_id, &key, "fakewa 1555", 1_700_000_000_000).unwrap();
        let patch = wa::SyncdPatch::decode_from_slice(&bytes).unwrap();
        let expanded = Arc::new(expand_app_state_keys(&key));
        let mut state = HashState::default();
        let result = process_patch(
            &patch,
            &mut state,
            |_| Ok(expanded.clone()),
            |_| Ok(None),
            true,
            CRITICAL_BLOCK,
        )
        .unwrap();
        assert_eq!(result.state.version, 1);
        assert_eq!(result.mutations.len(), 1);
        let mutation = &result.mutations[0];
        assert_eq!(mutation.index, vec!["setting_pushName".to_string()]);
        let name = mutation
            .action_value
            .as_ref()
            .and_then(|v| v.push_name_setting.as_option())
            .and_then(|p| p.name.clone());
        assert_eq!(name.as_deref(), Some("fakewa 1555"));
    }
}

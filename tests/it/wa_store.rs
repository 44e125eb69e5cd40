//! Conformance of the PostgreSQL whatsapp-rust store (`PgStore`) against the crate's `InMemoryBackend`, on a real
//! PostgreSQL: the same scenario runs against both and every observable result must agree; then what only a
//! database has (channel isolation, sealing at rest, key rotation, wipe, concurrent atomicity).

use crate::util::TestDb;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use wacore::appstate::hash::HashState;
use wacore::appstate::processor::AppStateMutationMAC;
use wacore::store::traits::*;
use wacore::store::{CachedNoiseCert, CachedServerCertChain, Device, InMemoryBackend};
use whatisup::crypto::MasterKeys;
use whatisup::engine::whatsapp::store::{GroupCommit, PgStore, Sweeper, TABLES, wipe};
use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::wacore;

const KEY_A: [u8; 32] = [0x11; 32];
const KEY_B: [u8; 32] = [0x22; 32];

async fn setup() -> (TestDb, whatisup::store::PgPool) {
    let db = TestDb::new();
    let pool = whatisup::store::connect(&db.url, 8).await.expect("connect");
    whatisup::store::migrate(&pool).await.expect("migrate");
    (db, pool)
}

/// The channel row the store's foreign keys point at.
async fn channel(pool: &whatisup::store::PgPool, id: &str) {
    let client = pool.get().await.expect("pool");
    client
        .execute(
            "INSERT INTO customers (id, name) VALUES ('cus_wa_store', 'wa store') ON CONFLICT DO NOTHING",
            &[],
        )
        .await
        .expect("customer");
    client
        .execute(
            "INSERT INTO channels (id, customer_id, mode, engine, name)
             VALUES ($1, 'cus_wa_store', 'live', 'whatsapp', $1)",
            &[&id],
        )
        .await
        .expect("channel");
}

fn keys(current: [u8; 32], previous: &[[u8; 32]]) -> Arc<MasterKeys> {
    Arc::new(MasterKeys::from_bytes(current, previous))
}

/// Appends what the scenario observed, one line per call, to compare two backends line by line.
struct Log(Vec<String>);

impl Log {
    fn rec(&mut self, what: &str, value: impl std::fmt::Debug) {
        self.0.push(format!("{what} => {value:?}"));
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// HashState's map prints in hash order; this does not.
fn hash_state(h: &HashState) -> String {
    let map: BTreeMap<_, _> = h.index_value_map.iter().collect();
    format!(
        "v{} hash={} map={map:?} fatal={}",
        h.version,
        hex::encode(h.hash),
        h.mac_mismatch_fatal
    )
}

fn lid_entry(lid: &str, phone: &str, at: i64, source: &str) -> LidPnMappingEntry {
    LidPnMappingEntry {
        lid: lid.to_string(),
        phone_number: phone.to_string(),
        created_at: at,
        updated_at: at + 1,
        learning_source: source.to_string(),
    }
}

fn lid_line(e: &LidPnMappingEntry) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        e.lid, e.phone_number, e.created_at, e.updated_at, e.learning_source
    )
}

fn device_list(user: &str, devices: &[u32], ts: i64) -> DeviceListRecord {
    DeviceListRecord {
        user: user.to_string(),
        devices: devices
            .iter()
            .map(|&d| DeviceInfo::new(d, Some(d + 100)).with_hosting(d == 99))
            .collect(),
        timestamp: ts,
        phash: Some(format!("2:{ts}")),
        raw_id: Some(ts as u32),
    }
}

fn mac(index: u8, value: u8) -> AppStateMutationMAC {
    AppStateMutationMAC {
        index_mac: vec![index; 32],
        value_mac: vec![value; 32],
    }
}

fn secret(chat: &str, sender: &str, id: &str, s: u8, expires_at: i64, ts: i64) -> MsgSecretEntry {
    MsgSecretEntry {
        chat: chat.into(),
        sender: sender.into(),
        msg_id: id.into(),
        secret: [s; 32],
        expires_at,
        message_ts: ts,
    }
}

/// Every method of the five traits, with the cases where their semantics are subtle (batch duplicates, merge
/// and newer-wins rules, UPDATE-only marks, expiry boundaries). Unordered results are sorted first.
async fn scenario<B: Backend + ?Sized>(b: &B, log: &mut Log) {
    let now = wacore::time::now_secs();

    // --- Identities, sessions and the per-user probe ---
    let user = "5511999990000";
    let dev5 = "5511999990000:5@s.whatsapp.net";
    let dev0 = "5511999990000@s.whatsapp.net";
    let longer = "55119999900001@s.whatsapp.net";
    let lid_user = "100000012345678";
    log.rec(
        "has_state(empty)",
        b.has_signal_state_for_user(user).await.unwrap(),
    );
    b.put_identity(dev5, [7; 32]).await.unwrap();
    log.rec("load_identity", b.load_identity(dev5).await.unwrap());
    log.rec(
        "has_state(identity)",
        b.has_signal_state_for_user(user).await.unwrap(),
    );
    log.rec(
        "has_state(prefix user)",
        b.has_signal_state_for_user("551199999000").await.unwrap(),
    );
    b.put_identities_batch(&[
        (Arc::from(dev0), [1; 32]),
        (Arc::from(longer), [2; 32]),
        (Arc::from(dev0), [3; 32]),
    ])
    .await
    .unwrap();
    b.put_identities_batch(&[]).await.unwrap();
    log.rec(
        "identity dup in batch",
        b.load_identity(dev0).await.unwrap(),
    );
    log.rec("identity longer", b.load_identity(longer).await.unwrap());
    b.delete_identity(dev5).await.unwrap();
    b.delete_identity(dev0).await.unwrap();
    log.rec("identity deleted", b.load_identity(dev5).await.unwrap());
    log.rec(
        "has_state(only a longer user)",
        b.has_signal_state_for_user(user).await.unwrap(),
    );

    let lid_addr = "100000012345678:2@lid";
    log.rec(
        "get_session(absent)",
        b.get_session(lid_addr).await.unwrap(),
    );
    log.rec(
        "has_session(absent)",
        b.has_session(lid_addr).await.unwrap(),
    );
    b.put_session(lid_addr, b"session-one").await.unwrap();
    log.rec("get_session", b.get_session(lid_addr).await.unwrap());
    log.rec("has_session", b.has_session(lid_addr).await.unwrap());
    log.rec(
        "has_state(session)",
        b.has_signal_state_for_user(lid_user).await.unwrap(),
    );
    let lid0 = "100000012345678@lid";
    b.put_sessions_batch(&[
        (Arc::from(lid_addr), Bytes::from_static(b"session-updated")),
        (Arc::from(lid0), Bytes::from_static(b"zero")),
        (Arc::from(lid0), Bytes::from_static(b"zero-again")),
    ])
    .await
    .unwrap();
    b.put_sessions_batch(&[]).await.unwrap();
    log.rec("session updated", b.get_session(lid_addr).await.unwrap());
    log.rec("session dup in batch", b.get_session(lid0).await.unwrap());
    b.delete_session(lid_addr).await.unwrap();
    log.rec("session deleted", b.has_session(lid_addr).await.unwrap());
    log.rec(
        "has_state(device 0)",
        b.has_signal_state_for_user(lid_user).await.unwrap(),
    );
    b.delete_session(lid0).await.unwrap();
    log.rec(
        "has_state(none)",
        b.has_signal_state_for_user(lid_user).await.unwrap(),
    );

    // --- Prekeys ---
    log.rec("max prekey(empty)", b.get_max_prekey_id().await.unwrap());
    b.store_prekey(1, b"pk1", false).await.unwrap();
    b.store_prekeys_batch(
        &[
            (2, Bytes::from_static(b"pk2")),
            (3, Bytes::from_static(b"pk3")),
            (2, Bytes::from_static(b"pk2-again")),
        ],
        true,
    )
    .await
    .unwrap();
    b.store_prekeys_batch(&[], true).await.unwrap();
    log.rec("load_prekey", b.load_prekey(2).await.unwrap());
    log.rec("load_prekey(absent)", b.load_prekey(42).await.unwrap());
    log.rec(
        "load_prekeys_batch",
        b.load_prekeys_batch(&[3, 99, 1, 3]).await.unwrap(),
    );
    log.rec(
        "load_prekeys_batch(none)",
        b.load_prekeys_batch(&[]).await.unwrap(),
    );
    log.rec("max prekey", b.get_max_prekey_id().await.unwrap());
    b.remove_prekey(3).await.unwrap();
    b.mark_prekeys_uploaded(&[1, 3]).await.unwrap();
    b.mark_prekeys_uploaded(&[]).await.unwrap();
    log.rec(
        "consumed prekey stays gone",
        b.load_prekey(3).await.unwrap(),
    );
    log.rec("marked prekey", b.load_prekey(1).await.unwrap());
    log.rec(
        "max prekey after remove",
        b.get_max_prekey_id().await.unwrap(),
    );
    b.store_prekey(u32::MAX, b"top", false).await.unwrap();
    log.rec("max prekey u32::MAX", b.get_max_prekey_id().await.unwrap());
    b.remove_prekey(u32::MAX).await.unwrap();

    // --- Signed prekeys ---
    b.store_signed_prekey(1, b"spk1").await.unwrap();
    b.store_signed_prekey(2, b"spk2").await.unwrap();
    b.store_signed_prekey(2, b"spk2-rotated").await.unwrap();
    log.rec("load_signed_prekey", b.load_signed_prekey(2).await.unwrap());
    log.rec(
        "load_all_signed_prekeys",
        sorted(b.load_all_signed_prekeys().await.unwrap()),
    );
    b.remove_signed_prekey(1).await.unwrap();
    log.rec(
        "signed prekey removed",
        b.load_signed_prekey(1).await.unwrap(),
    );
    log.rec(
        "load_all_signed_prekeys after remove",
        sorted(b.load_all_signed_prekeys().await.unwrap()),
    );

    // --- Sender keys ---
    let skey = "120363021033254949@g.us::5511999990000::1";
    let skey2 = "120363021033254949@g.us::5511999990001::0";
    log.rec(
        "get_sender_key(absent)",
        b.get_sender_key(skey).await.unwrap(),
    );
    b.put_sender_key(skey, b"sk-1").await.unwrap();
    log.rec("get_sender_key", b.get_sender_key(skey).await.unwrap());
    b.put_sender_keys_batch(&[
        (Arc::from(skey), Bytes::from_static(b"sk-2")),
        (Arc::from(skey2), Bytes::from_static(b"other")),
        (Arc::from(skey2), Bytes::from_static(b"other-2")),
    ])
    .await
    .unwrap();
    b.put_sender_keys_batch(&[]).await.unwrap();
    log.rec("sender key batch", b.get_sender_key(skey).await.unwrap());
    log.rec(
        "sender key dup in batch",
        b.get_sender_key(skey2).await.unwrap(),
    );
    b.delete_sender_key(skey).await.unwrap();
    log.rec("sender key deleted", b.get_sender_key(skey).await.unwrap());

    // --- App-state sync ---
    log.rec(
        "latest sync key(empty)",
        b.get_latest_sync_key_id().await.unwrap(),
    );
    log.rec(
        "get_sync_key(absent)",
        b.get_sync_key(b"nope").await.unwrap(),
    );
    let sync_key = |n: u8| AppStateSyncKey {
        key_data: vec![n; 32],
        fingerprint: vec![n, n + 1],
        timestamp: 1_700_000_000 + i64::from(n),
    };
    b.set_sync_key(&[0, 0, 9], sync_key(9)).await.unwrap();
    b.set_sync_key(&[0, 0, 1], sync_key(1)).await.unwrap();
    log.rec(
        "latest = set last, not largest",
        b.get_latest_sync_key_id().await.unwrap(),
    );
    b.set_sync_key(&[0, 0, 9], sync_key(10)).await.unwrap();
    log.rec(
        "latest after overwrite",
        b.get_latest_sync_key_id().await.unwrap(),
    );
    log.rec("get_sync_key", b.get_sync_key(&[0, 0, 9]).await.unwrap());

    log.rec(
        "get_version(absent)",
        hash_state(&b.get_version("regular").await.unwrap()),
    );
    let state = HashState {
        version: 5,
        hash: [3; 128],
        index_value_map: HashMap::from([
            ("idx-a".to_string(), vec![1, 2]),
            ("idx-b".to_string(), vec![3]),
        ]),
        mac_mismatch_fatal: true,
    };
    b.set_version("regular", state).await.unwrap();
    log.rec(
        "get_version",
        hash_state(&b.get_version("regular").await.unwrap()),
    );

    b.put_mutation_macs("regular", 1, &[mac(1, 10), mac(2, 20), mac(1, 11)])
        .await
        .unwrap();
    b.put_mutation_macs("critical", 1, &[mac(1, 30), mac(3, 40)])
        .await
        .unwrap();
    b.put_mutation_macs("regular", 2, &[]).await.unwrap();
    log.rec(
        "get_mutation_mac dup in batch",
        b.get_mutation_mac("regular", &[1; 32]).await.unwrap(),
    );
    log.rec(
        "get_mutation_mac(absent)",
        b.get_mutation_mac("regular", &[3; 32]).await.unwrap(),
    );
    let batch = b
        .get_mutation_macs("regular", &[[1; 32], [2; 32], [3; 32], [1; 32]])
        .await
        .unwrap();
    log.rec("get_mutation_macs", sorted(batch.into_iter().collect()));
    log.rec(
        "get_mutation_macs(none)",
        b.get_mutation_macs("regular", &[]).await.unwrap(),
    );
    b.delete_mutation_macs("regular", &[vec![1; 32], vec![9; 32]])
        .await
        .unwrap();
    b.delete_mutation_macs("regular", &[]).await.unwrap();
    log.rec(
        "mutation mac deleted",
        b.get_mutation_mac("regular", &[1; 32]).await.unwrap(),
    );
    log.rec(
        "mutation mac kept",
        b.get_mutation_mac("regular", &[2; 32]).await.unwrap(),
    );
    b.clear_mutation_macs("critical").await.unwrap();
    log.rec(
        "cleared collection",
        b.get_mutation_mac("critical", &[3; 32]).await.unwrap(),
    );
    log.rec(
        "other collection survives clear",
        b.get_mutation_mac("regular", &[2; 32]).await.unwrap(),
    );

    // --- Sender-key distribution per device ---
    let (g1, g2) = ("120363000000000001@g.us", "120363000000000002@g.us");
    let (d1, d2, d3) = (
        "5511999990001:1@s.whatsapp.net",
        "5511999990002@s.whatsapp.net",
        "100000000000003:4@lid",
    );
    log.rec(
        "sk devices(empty)",
        b.get_sender_key_devices(g1).await.unwrap(),
    );
    b.set_sender_key_status(g1, &[(d1, true), (d2, false), (d1, false), (d3, true)])
        .await
        .unwrap();
    b.set_sender_key_status(g2, &[(d1, true), (d2, true)])
        .await
        .unwrap();
    b.set_sender_key_status(g2, &[]).await.unwrap();
    log.rec(
        "sk devices g1",
        sorted(b.get_sender_key_devices(g1).await.unwrap()),
    );
    log.rec(
        "sk devices g2",
        sorted(b.get_sender_key_devices(g2).await.unwrap()),
    );
    b.delete_sender_key_device_rows(&[d1]).await.unwrap();
    b.delete_sender_key_device_rows(&[]).await.unwrap();
    log.rec(
        "device rows gone g1",
        sorted(b.get_sender_key_devices(g1).await.unwrap()),
    );
    log.rec(
        "device rows gone g2",
        sorted(b.get_sender_key_devices(g2).await.unwrap()),
    );
    b.clear_sender_key_devices(g1).await.unwrap();
    log.rec("cleared g1", b.get_sender_key_devices(g1).await.unwrap());
    log.rec(
        "g2 untouched",
        sorted(b.get_sender_key_devices(g2).await.unwrap()),
    );
    b.clear_all_sender_key_devices().await.unwrap();
    log.rec("cleared all", b.get_sender_key_devices(g2).await.unwrap());

    // --- LID ↔ PN (the reverse index's edge cases are in `lid_pn_reverse_lookup`) ---
    log.rec("lid(absent)", b.get_lid_mapping("1001").await.unwrap());
    log.rec("pn(absent)", b.get_pn_mapping("551100").await.unwrap());
    b.put_lid_mapping(&lid_entry("1001", "551101", 100, "usync"))
        .await
        .unwrap();
    log.rec("get_lid_mapping", b.get_lid_mapping("1001").await.unwrap());
    log.rec("get_pn_mapping", b.get_pn_mapping("551101").await.unwrap());
    b.put_lid_mapping(&lid_entry("1004", "551101", 200, "peer_pn_message"))
        .await
        .unwrap();
    log.rec(
        "newer LID for a phone",
        b.get_pn_mapping("551101").await.unwrap(),
    );
    b.put_lid_mappings(&[
        lid_entry("1002", "551102", 300, "usync"),
        lid_entry("1003", "551103", 300, "usync"),
        lid_entry("1002", "551122", 400, "history"),
    ])
    .await
    .unwrap();
    b.put_lid_mappings(&[]).await.unwrap();
    log.rec(
        "moved LID, old phone",
        b.get_pn_mapping("551102").await.unwrap(),
    );
    log.rec(
        "moved LID, new phone",
        b.get_pn_mapping("551122").await.unwrap(),
    );
    b.put_lid_mapping(&lid_entry("1003", "551103", 500, "again"))
        .await
        .unwrap();
    log.rec(
        "put replaces the entry",
        b.get_lid_mapping("1003").await.unwrap(),
    );
    let all = b.get_all_lid_mappings().await.unwrap();
    log.rec(
        "get_all_lid_mappings",
        sorted(all.iter().map(lid_line).collect()),
    );

    // --- Base keys ---
    let addr = "5511999990001:1@s.whatsapp.net";
    log.rec(
        "base key(absent)",
        b.has_same_base_key(addr, "M1", b"bk").await.unwrap(),
    );
    b.save_base_key(addr, "M1", b"base-key-1").await.unwrap();
    log.rec(
        "same base key",
        b.has_same_base_key(addr, "M1", b"base-key-1")
            .await
            .unwrap(),
    );
    log.rec(
        "other base key",
        b.has_same_base_key(addr, "M1", b"base-key-2")
            .await
            .unwrap(),
    );
    log.rec(
        "other message",
        b.has_same_base_key(addr, "M2", b"base-key-1")
            .await
            .unwrap(),
    );
    b.save_base_key(addr, "M1", b"base-key-2").await.unwrap();
    log.rec(
        "base key overwritten",
        b.has_same_base_key(addr, "M1", b"base-key-2")
            .await
            .unwrap(),
    );
    b.delete_base_key(addr, "M1").await.unwrap();
    log.rec(
        "base key deleted",
        b.has_same_base_key(addr, "M1", b"base-key-2")
            .await
            .unwrap(),
    );

    // --- Device registry ---
    log.rec(
        "get_devices(absent)",
        b.get_devices("551101").await.unwrap(),
    );
    b.update_device_list(device_list("551101", &[0, 1], 10))
        .await
        .unwrap();
    b.update_device_lists(vec![
        device_list("551102", &[0], 11),
        device_list("1001", &[0, 99], 12),
        device_list("551102", &[0, 2, 3], 13),
    ])
    .await
    .unwrap();
    b.update_device_lists(Vec::new()).await.unwrap();
    log.rec("get_devices", b.get_devices("551101").await.unwrap());
    log.rec(
        "device list dup in batch",
        b.get_devices("551102").await.unwrap(),
    );
    log.rec("device list hosted", b.get_devices("1001").await.unwrap());
    b.update_device_list(device_list("551101", &[0], 20))
        .await
        .unwrap();
    log.rec(
        "device list replaced",
        b.get_devices("551101").await.unwrap(),
    );
    b.delete_devices("551101").await.unwrap();
    log.rec(
        "device list deleted",
        b.get_devices("551101").await.unwrap(),
    );

    // --- Group metadata ---
    log.rec(
        "group metadata(absent)",
        b.get_group_metadata(g1).await.unwrap(),
    );
    b.put_group_metadata(g1, b"blob-v1").await.unwrap();
    log.rec("group metadata", b.get_group_metadata(g1).await.unwrap());
    b.put_group_metadata(g1, b"blob-v2").await.unwrap();
    log.rec("group metadata v2", b.get_group_metadata(g1).await.unwrap());
    b.delete_group_metadata(g1).await.unwrap();
    log.rec(
        "group metadata deleted",
        b.get_group_metadata(g1).await.unwrap(),
    );

    // --- Trusted-contact tokens ---
    log.rec("tc(absent)", b.get_tc_token("u1@lid").await.unwrap());
    b.touch_tc_token_sender_timestamp("u1@lid", 1000)
        .await
        .unwrap();
    log.rec("tc placeholder", b.get_tc_token("u1@lid").await.unwrap());
    b.put_tc_token(
        "u1@lid",
        &TcTokenEntry {
            token: vec![7, 8, 9],
            token_timestamp: 2000,
            sender_timestamp: None,
        },
    )
    .await
    .unwrap();
    log.rec(
        "tc put overwrites all",
        b.get_tc_token("u1@lid").await.unwrap(),
    );
    b.touch_tc_token_sender_timestamp("u1@lid", 3000)
        .await
        .unwrap();
    b.touch_tc_token_sender_timestamp("u1@lid", 2500)
        .await
        .unwrap();
    log.rec(
        "tc touch keeps token, max",
        b.get_tc_token("u1@lid").await.unwrap(),
    );
    b.store_received_tc_token("u1@lid", &[1, 1], 1500)
        .await
        .unwrap();
    log.rec(
        "tc stale write ignored",
        b.get_tc_token("u1@lid").await.unwrap(),
    );
    b.store_received_tc_token("u1@lid", &[2, 2], 2000)
        .await
        .unwrap();
    log.rec(
        "tc same-age write wins",
        b.get_tc_token("u1@lid").await.unwrap(),
    );
    b.touch_tc_token_sender_timestamp("u2@lid", 9000)
        .await
        .unwrap();
    b.store_received_tc_token("u2@lid", &[4, 4], 6000)
        .await
        .unwrap();
    log.rec(
        "tc placeholder never blocks",
        b.get_tc_token("u2@lid").await.unwrap(),
    );
    b.store_received_tc_token("u3@lid", &[9], 4000)
        .await
        .unwrap();
    log.rec("tc fresh received", b.get_tc_token("u3@lid").await.unwrap());
    b.store_received_tc_token("u3@lid", &[], 5000)
        .await
        .unwrap();
    log.rec(
        "tc empty newer token",
        b.get_tc_token("u3@lid").await.unwrap(),
    );
    log.rec("tc jids", sorted(b.get_all_tc_token_jids().await.unwrap()));
    b.delete_tc_token("u3@lid").await.unwrap();
    log.rec("tc deleted", b.get_tc_token("u3@lid").await.unwrap());
    // The in-memory store's own prune case: token_cutoff 1000, sender_cutoff 2000.
    b.touch_tc_token_sender_timestamp("recent_ph", 2500)
        .await
        .unwrap();
    b.touch_tc_token_sender_timestamp("stale_ph", 100)
        .await
        .unwrap();
    let entry = |token: Vec<u8>, ts, sender| TcTokenEntry {
        token,
        token_timestamp: ts,
        sender_timestamp: sender,
    };
    b.put_tc_token("expired_live_sender", &entry(vec![1], 1, Some(2500)))
        .await
        .unwrap();
    b.put_tc_token("orphan_expired", &entry(vec![2], 1, None))
        .await
        .unwrap();
    b.put_tc_token("fresh", &entry(vec![3], 5000, None))
        .await
        .unwrap();
    b.put_tc_token("empty_fresh", &entry(vec![], 5000, Some(1999)))
        .await
        .unwrap();
    b.put_tc_token("boundary", &entry(vec![5], 1000, Some(1)))
        .await
        .unwrap();
    log.rec(
        "delete_expired_tc_tokens",
        b.delete_expired_tc_tokens(1000, 2000).await.unwrap(),
    );
    log.rec(
        "tc jids after prune",
        sorted(b.get_all_tc_token_jids().await.unwrap()),
    );

    // --- Sent messages ---
    let chat = "120363000000000001@g.us";
    log.rec(
        "take(absent)",
        b.take_sent_message(chat, "S1").await.unwrap(),
    );
    b.store_sent_message(chat, "S1", b"payload-1")
        .await
        .unwrap();
    b.store_sent_message(chat, "S2", b"payload-2")
        .await
        .unwrap();
    b.store_sent_message(chat, "S2", b"payload-2b")
        .await
        .unwrap();
    log.rec("take", b.take_sent_message(chat, "S1").await.unwrap());
    log.rec("take twice", b.take_sent_message(chat, "S1").await.unwrap());
    log.rec(
        "sent expired(none)",
        b.delete_expired_sent_messages(now - 3600).await.unwrap(),
    );
    log.rec(
        "sent expired(all)",
        b.delete_expired_sent_messages(now + 3600).await.unwrap(),
    );
    log.rec(
        "take expired",
        b.take_sent_message(chat, "S2").await.unwrap(),
    );

    // --- Pending inbound ---
    let (pc, ps) = ("100@g.us", "200@s.whatsapp.net");
    log.rec(
        "pending(absent)",
        b.get_pending_inbound(pc, ps, "P1").await.unwrap(),
    );
    b.store_pending_inbound(pc, ps, "P1", b"msg-1")
        .await
        .unwrap();
    log.rec(
        "pending",
        b.get_pending_inbound(pc, ps, "P1").await.unwrap(),
    );
    log.rec(
        "pending other sender",
        b.get_pending_inbound(pc, "300@s.whatsapp.net", "P1")
            .await
            .unwrap(),
    );
    let row = |id, message| PendingInboundRow {
        chat: pc,
        sender: ps,
        id,
        message,
    };
    b.store_pending_inbound_batch(&[
        row("P2", b"msg-2"),
        row("P3", b"msg-3"),
        row("P2", b"msg-2b"),
    ])
    .await
    .unwrap();
    b.store_pending_inbound_batch(&[]).await.unwrap();
    log.rec(
        "pending dup in batch",
        b.get_pending_inbound(pc, ps, "P2").await.unwrap(),
    );
    b.delete_pending_inbound(pc, ps, "P1").await.unwrap();
    log.rec(
        "pending deleted",
        b.get_pending_inbound(pc, ps, "P1").await.unwrap(),
    );
    let key = |id| PendingInboundKey {
        chat: pc,
        sender: ps,
        id,
    };
    b.delete_pending_inbound_batch(&[key("P2"), key("P9")])
        .await
        .unwrap();
    b.delete_pending_inbound_batch(&[]).await.unwrap();
    log.rec(
        "pending batch deleted",
        b.get_pending_inbound(pc, ps, "P2").await.unwrap(),
    );
    log.rec(
        "pending kept",
        b.get_pending_inbound(pc, ps, "P3").await.unwrap(),
    );
    log.rec(
        "pending expired(none)",
        b.delete_expired_pending_inbound(now - 3600).await.unwrap(),
    );
    log.rec(
        "pending expired(all)",
        b.delete_expired_pending_inbound(now + 3600).await.unwrap(),
    );
    log.rec(
        "pending after expiry",
        b.get_pending_inbound(pc, ps, "P3").await.unwrap(),
    );

    // --- Message secrets ---
    let (mc, msender) = (
        "5511999990001@s.whatsapp.net",
        "5511999990000@s.whatsapp.net",
    );
    log.rec(
        "secret(absent)",
        b.get_msg_secret(mc, msender, "M1").await.unwrap(),
    );
    b.put_msg_secret(mc, msender, "M1", &[1; 32]).await.unwrap();
    log.rec(
        "get_msg_secret",
        b.get_msg_secret(mc, msender, "M1").await.unwrap(),
    );
    log.rec(
        "get_msg_secret_with_ts",
        b.get_msg_secret_with_ts(mc, msender, "M1").await.unwrap(),
    );
    log.rec(
        "put_msg_secrets",
        b.put_msg_secrets(vec![
            secret(mc, msender, "M2", 2, now + 100, 50),
            secret(mc, msender, "M2", 3, now + 200, 0),
            secret(mc, msender, "M3", 4, 0, 10),
            secret(mc, msender, "M1", 9, now + 500, 70),
            secret(mc, msender, "M4", 5, now + 100, 0),
        ])
        .await
        .unwrap(),
    );
    log.rec(
        "put_msg_secrets(none)",
        b.put_msg_secrets(Vec::new()).await.unwrap(),
    );
    b.put_msg_secrets(vec![secret(mc, msender, "M4", 6, now + 50, 0)])
        .await
        .unwrap();
    log.rec(
        "secret merged in batch",
        b.get_msg_secret_with_ts(mc, msender, "M2").await.unwrap(),
    );
    log.rec(
        "secret merged with stored",
        b.get_msg_secret_with_ts(mc, msender, "M1").await.unwrap(),
    );
    log.rec(
        "secret other key",
        b.get_msg_secret(msender, mc, "M1").await.unwrap(),
    );
    log.rec(
        "secrets expired(none)",
        b.delete_expired_msg_secrets(now + 99).await.unwrap(),
    );
    // M4's deadline stayed now+100 (the later of the two); M2's is now+200.
    log.rec(
        "secrets expired(at deadline)",
        b.delete_expired_msg_secrets(now + 100).await.unwrap(),
    );
    log.rec(
        "secret M4 gone",
        b.get_msg_secret(mc, msender, "M4").await.unwrap(),
    );
    log.rec(
        "secrets expired(far)",
        b.delete_expired_msg_secrets(now + 10_000).await.unwrap(),
    );
    log.rec(
        "never-expiring M1",
        b.get_msg_secret(mc, msender, "M1").await.unwrap(),
    );
    log.rec(
        "never-expiring M3",
        b.get_msg_secret(mc, msender, "M3").await.unwrap(),
    );
    log.rec(
        "expired M2",
        b.get_msg_secret(mc, msender, "M2").await.unwrap(),
    );

    // --- Device ---
    log.rec("device exists(empty)", b.exists().await.unwrap());
    log.rec("device load(empty)", b.load().await.unwrap().is_some());
    log.rec("device create", b.create().await.unwrap());
    log.rec("device exists", b.exists().await.unwrap());
    log.rec("device created loads", b.load().await.unwrap().is_some());
    let mut device = b.load().await.unwrap().unwrap();
    device.push_name = "Acme Support".into();
    device.pn = Some("5511999990000:3@s.whatsapp.net".parse().unwrap());
    device.lid = Some("100000012345678:3@lid".parse().unwrap());
    device.login_counter = 7;
    device.server_cert_chain = Some(CachedServerCertChain {
        intermediate: CachedNoiseCert {
            key: [0xAA; 32],
            not_before: 1,
            not_after: 2,
        },
        leaf: CachedNoiseCert {
            key: [0xBB; 32],
            not_before: 3,
            not_after: 4,
        },
    });
    device.account = Some(Arc::new(
        whatsapp_rust::waproto::whatsapp::ADVSignedDeviceIdentity {
            details: Some(b"details".to_vec()),
            account_signature_key: Some(vec![1; 32]),
            account_signature: Some(vec![2; 64]),
            device_signature: Some(vec![3; 64]),
        },
    ));
    b.save(&device).await.unwrap();
    let json = |d: &Device| serde_json::to_string(d).unwrap();
    log.rec(
        "device saved",
        json(&b.load().await.unwrap().unwrap()) == json(&device),
    );
    b.create().await.unwrap();
    log.rec(
        "create keeps a stored device",
        b.load().await.unwrap().unwrap().push_name,
    );
    b.snapshot_db("conformance", Some(b"extra")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wa_store_matches_in_memory() {
    let (db, pool) = setup().await;
    channel(&pool, "ch_conf").await;
    let pg = PgStore::new(pool.clone(), keys(KEY_A, &[]), "ch_conf");
    let mem = InMemoryBackend::new();

    let mut expected = Log(Vec::new());
    scenario(&mem, &mut expected).await;
    let mut got = Log(Vec::new());
    scenario(&pg, &mut got).await;
    for (e, g) in expected.0.iter().zip(&got.0) {
        assert_eq!(g, e, "PgStore differs from InMemoryBackend");
    }
    assert_eq!(got.0.len(), expected.0.len());
    // The same with the engine's group committer (every single write through a shared transaction).
    channel(&pool, "ch_conf_group").await;
    let grouped = PgStore::new(pool.clone(), keys(KEY_A, &[]), "ch_conf_group")
        .with_group_commit(GroupCommit::new(pool.clone()));
    let mut got_grouped = Log(Vec::new());
    scenario(&grouped, &mut got_grouped).await;
    assert_eq!(
        got_grouped.0, expected.0,
        "grouped PgStore differs from InMemoryBackend"
    );

    // Spot checks that the shared answers are the right ones, not merely equal.
    let line = |prefix: &str| {
        got.0
            .iter()
            .find(|l| l.starts_with(&format!("{prefix} =>")))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        line("consumed prekey stays gone"),
        "consumed prekey stays gone => None"
    );
    assert_eq!(
        line("max prekey u32::MAX"),
        format!("max prekey u32::MAX => {}", u32::MAX)
    );
    assert_eq!(line("take twice"), "take twice => None");
    assert_eq!(
        line("delete_expired_tc_tokens"),
        "delete_expired_tc_tokens => 3"
    );
    assert_eq!(
        line("secrets expired(at deadline)"),
        "secrets expired(at deadline) => 1"
    );
    assert_eq!(line("device saved"), "device saved => true");

    // mark_prekeys_uploaded updated the surviving key and inserted nothing.
    let client = pool.get().await.unwrap();
    let rows = client
        .query(
            "SELECT id, uploaded FROM wa_prekeys WHERE channel_id = 'ch_conf' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let prekeys: Vec<(i64, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(prekeys, vec![(1, true), (2, true)]);

    // The runtime-only Device fields come back as a new Device has them, whatever was saved.
    let mut device = pg.load().await.unwrap().unwrap();
    device.nct_salt_sync_seen = true;
    device.set_device_props(wacore::store::DevicePropsOverride::new().with_os("Custom OS"));
    device.set_client_profile(wacore::client_profile::ClientProfile::android("14"));
    pg.save(&device).await.unwrap();
    let loaded = pg.load().await.unwrap().unwrap();
    let props = |d: &Device| whatsapp_rust::waproto::codec::device_props_to_vec(&d.device_props);
    assert_eq!(props(&loaded), props(&Device::new()));
    assert_eq!(
        format!("{:?}", loaded.client_profile),
        format!("{:?}", wacore::client_profile::ClientProfile::web())
    );
    assert!(!loaded.nct_salt_sync_seen);
    assert_eq!(loaded.login_counter, 7);
    assert_eq!(
        loaded.identity_key.public_key.public_key_bytes(),
        device.identity_key.public_key.public_key_bytes()
    );

    // The data is in PostgreSQL, not in this process.
    assert_eq!(pg.resource_report().await.memory_bytes, Some(0));

    db.drop_db().await;
}

/// With the engine's sweeper, deletes of pending-inbound rows land late: the store answers as if they had
/// happened at once (the same conformance log), the rows do leave the database, and a late delete never removes
/// a newer row stored under the same key meanwhile.
/// Writes of many channels at once share transactions: all land, each is readable once its call returns, a write
/// that fails (its channel row does not exist) fails alone without costing the others theirs, and a writer
/// cancelled mid-group leaves nobody waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_shares_transactions_and_isolates_failures() {
    let (db, pool) = setup().await;
    let groups = GroupCommit::new(pool.clone());
    let k = keys(KEY_A, &[]);
    const CHANNELS: usize = 40;
    const WRITES: usize = 10;
    for c in 0..CHANNELS {
        channel(&pool, &format!("ch_g{c}")).await;
    }
    let mut tasks = Vec::new();
    for c in 0..CHANNELS {
        let store = PgStore::new(pool.clone(), k.clone(), &format!("ch_g{c}"))
            .with_group_commit(groups.clone());
        tasks.push(tokio::spawn(async move {
            for w in 0..WRITES {
                let addr = format!("{w}@s.whatsapp.net");
                store.put_identity(&addr, [w as u8; 32]).await.unwrap();
                // Durable and visible as soon as the call returns.
                assert_eq!(
                    store.load_identity(&addr).await.unwrap(),
                    Some([w as u8; 32])
                );
            }
        }));
    }
    // A channel without its row: its writes violate the foreign key, in the middle of the others'.
    let orphan =
        PgStore::new(pool.clone(), k.clone(), "ch_missing").with_group_commit(groups.clone());
    let orphan_task = tokio::spawn(async move {
        let mut errors = 0;
        for w in 0..WRITES {
            if orphan
                .put_identity(&format!("{w}@s.whatsapp.net"), [9; 32])
                .await
                .is_err()
            {
                errors += 1;
            }
        }
        errors
    });
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        orphan_task.await.unwrap(),
        WRITES,
        "every orphan write fails"
    );
    let c = pool.get().await.unwrap();
    let rows: i64 = c
        .query_one(
            "SELECT count(*) FROM wa_identities WHERE channel_id LIKE 'ch_g%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, (CHANNELS * WRITES) as i64);

    // Cancelled writers: the groups they were in end anyway and later writes go through.
    let store =
        Arc::new(PgStore::new(pool.clone(), k.clone(), "ch_g0").with_group_commit(groups.clone()));
    for i in 0..20u8 {
        let s = store.clone();
        let t = tokio::spawn(async move { s.put_identity("cancel@s.whatsapp.net", [i; 32]).await });
        if i % 2 == 0 {
            t.abort();
        }
    }
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        store.put_identity("after@s.whatsapp.net", [1; 32]),
    )
    .await
    .expect("a write after cancelled ones does not hang")
    .unwrap();
    db.drop_db().await;
}

/// A grouped write cancelled at any point (while its group's BEGIN is in flight included) never sends a connection
/// back to the pool inside a transaction: the pool is shared by the whole gateway, and the next user's
/// "autocommitted" writes (a lease renewal, say) would sit uncommitted and hold their row locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_group_write_never_pools_a_connection_in_a_transaction() {
    let (db, pool) = setup().await;
    channel(&pool, "ch_cancel").await;
    let small = whatisup::store::connect(&db.url, 2).await.expect("connect");
    let groups = GroupCommit::new(small.clone());
    let store = Arc::new(
        PgStore::new(small.clone(), keys(KEY_A, &[]), "ch_cancel").with_group_commit(groups),
    );
    for i in 0..300u32 {
        let s = store.clone();
        let t = tokio::spawn(async move { s.put_identity("cancel@s.whatsapp.net", [1; 32]).await });
        // Cancel at a different moment each time: before, during and after the BEGIN round trip.
        for _ in 0..(i % 30) {
            tokio::task::yield_now().await;
        }
        if i % 2 == 1 {
            tokio::time::sleep(std::time::Duration::from_micros(u64::from(i % 7) * 50)).await;
        }
        t.abort();
        let _ = t.await;
        // Every pooled connection, held at once so that each is looked at.
        let a = small.get().await.expect("pool");
        let b = small.get().await.expect("pool");
        for c in [&a, &b] {
            // SAVEPOINT is refused outside a transaction block, and taken inside one.
            let in_tx = c.batch_execute("SAVEPOINT probe").await.is_ok();
            assert!(
                !in_tx,
                "iteration {i}: a pooled connection is inside a transaction"
            );
        }
    }
    db.drop_db().await;
}

/// The crate's background saver can write the device as it was before the pairing after the pairing's own save:
/// a device without a phone number never replaces a linked one, until the store is wiped (logout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlinked_device_never_replaces_a_linked_one() {
    let (db, pool) = setup().await;
    channel(&pool, "ch_link").await;
    let store = PgStore::new(pool.clone(), keys(KEY_A, &[]), "ch_link");
    let unlinked = Device::new();
    store.save(&unlinked).await.unwrap();
    assert!(store.load().await.unwrap().unwrap().pn.is_none());
    let mut linked = unlinked.clone();
    linked.pn = Some("5511999990000:3@s.whatsapp.net".parse().unwrap());
    store.save(&linked).await.unwrap();
    // The late write of the pre-pairing device is dropped.
    store.save(&unlinked).await.unwrap();
    assert_eq!(store.load().await.unwrap().unwrap().pn, linked.pn);
    // A new store (a restart) that loaded the linked device keeps the rule.
    let again = PgStore::new(pool.clone(), keys(KEY_A, &[]), "ch_link");
    assert_eq!(again.load().await.unwrap().unwrap().pn, linked.pn);
    again.save(&unlinked).await.unwrap();
    assert_eq!(again.load().await.unwrap().unwrap().pn, linked.pn);
    // A store that never saw the linked device (another instance, a write still in flight from before the
    // pairing) cannot unlink it either: the statement itself refuses.
    let unaware = PgStore::new(pool.clone(), keys(KEY_A, &[]), "ch_link");
    unaware.save(&unlinked).await.unwrap();
    assert_eq!(again.load().await.unwrap().unwrap().pn, linked.pn);
    // A linked device still replaces a linked one.
    let mut renamed = linked.clone();
    renamed.push_name = "after the pairing".into();
    unaware.save(&renamed).await.unwrap();
    assert_eq!(
        again.load().await.unwrap().unwrap().push_name,
        "after the pairing"
    );
    // After a wipe (logout) an unlinked device is stored again.
    again.wipe().await.unwrap();
    again.save(&unlinked).await.unwrap();
    assert!(again.load().await.unwrap().unwrap().pn.is_none());
    db.drop_db().await;
}

/// The background saver and a flush save the device at the same time; with group commit their statements go out
/// on different connections. The stored device is the one saved last, never an older snapshot that overtook it
/// (its pre-key watermarks would go back, and the next restart would hand out pre-key ids already in use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_saves_land_in_call_order() {
    let (db, pool) = setup().await;
    let groups = GroupCommit::new(pool.clone());
    let k = keys(KEY_A, &[]);
    const CHANNELS: usize = 8;
    const ROUNDS: u32 = 40;
    const SAVES: u32 = 6;
    let mut tasks = Vec::new();
    for c in 0..CHANNELS {
        let id = format!("ch_order{c}");
        channel(&pool, &id).await;
        let store = PgStore::new(pool.clone(), k.clone(), &id).with_group_commit(groups.clone());
        // Other channels' writes keep several groups open at once, as under load.
        let noise = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut base = Device::new();
            base.pn = Some(format!("55119999{c:04}:3@s.whatsapp.net").parse().unwrap());
            for round in 0..ROUNDS {
                // All started in call order (join_all polls them in sequence); none awaited before the next starts.
                let saves = (0..SAVES).map(|i| {
                    let mut d = base.clone();
                    d.next_pre_key_id = round * SAVES + i + 1;
                    let store = store.clone();
                    async move { store.save(&d).await }
                });
                let writes = async {
                    for w in 0..3u8 {
                        noise
                            .put_identity(&format!("{round}.{w}@s.whatsapp.net"), [w; 32])
                            .await
                            .unwrap();
                    }
                };
                let (results, ()) = tokio::join!(futures::future::join_all(saves), writes);
                for r in results {
                    r.unwrap();
                }
                assert_eq!(
                    store.load().await.unwrap().unwrap().next_pre_key_id,
                    (round + 1) * SAVES,
                    "channel {c}, round {round}: an older device save landed last"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_inbound_deletes_land_late() {
    let (db, pool) = setup().await;
    channel(&pool, "ch_sweep").await;
    let sweeper = Sweeper::spawn(pool.clone());
    let pg = PgStore::with_sweeper(pool.clone(), keys(KEY_A, &[]), "ch_sweep", sweeper.clone());
    let mem = InMemoryBackend::new();
    let mut expected = Log(Vec::new());
    scenario(&mem, &mut expected).await;
    let mut got = Log(Vec::new());
    scenario(&pg, &mut got).await;
    for (e, g) in expected.0.iter().zip(&got.0) {
        assert_eq!(g, e, "PgStore with a sweeper differs from InMemoryBackend");
    }
    assert_eq!(got.0.len(), expected.0.len());

    let client = pool.get().await.unwrap();
    let rows = |id: &'static str| {
        let client = &client;
        async move {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM wa_pending_inbound WHERE channel_id = 'ch_sweep' AND message_id = $1",
                    &[&id],
                )
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    let (pc, ps) = ("1@s.whatsapp.net", "1@s.whatsapp.net");
    let pg2 = PgStore::with_sweeper(pool.clone(), keys(KEY_A, &[]), "ch_sweep", sweeper);
    for i in 0..50 {
        pg2.store_pending_inbound(pc, ps, "S1", format!("v{i}").as_bytes())
            .await
            .unwrap();
        pg2.delete_pending_inbound(pc, ps, "S1").await.unwrap();
        assert_eq!(pg2.get_pending_inbound(pc, ps, "S1").await.unwrap(), None);
    }
    // Stored again right after a delete: the late delete of the old row leaves the new one alone.
    pg2.store_pending_inbound(pc, ps, "S1", b"kept")
        .await
        .unwrap();
    pg2.store_pending_inbound(pc, ps, "S2", b"gone")
        .await
        .unwrap();
    pg2.delete_pending_inbound(pc, ps, "S2").await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rows("S2").await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the late delete never landed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(rows("S1").await, 1);
    assert_eq!(
        pg2.get_pending_inbound(pc, ps, "S1")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"kept"[..])
    );
    // A row of an earlier process (this store never wrote it) is deleted at once.
    let fresh = PgStore::with_sweeper(
        pool.clone(),
        keys(KEY_A, &[]),
        "ch_sweep",
        Sweeper::spawn(pool.clone()),
    );
    fresh.delete_pending_inbound(pc, ps, "S1").await.unwrap();
    assert_eq!(rows("S1").await, 0);
    db.drop_db().await;
}

/// Where the in-memory reverse index loses a live mapping, PgStore answers with the LID put last among those
/// still mapped to the number (as the crate's SQLite store does, by time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lid_pn_reverse_lookup() {
    let (db, pool) = setup().await;
    channel(&pool, "ch_lid").await;
    let pg = PgStore::new(pool.clone(), keys(KEY_A, &[]), "ch_lid");
    let mem = InMemoryBackend::new();
    for b in [&pg as &dyn Backend, &mem as &dyn Backend] {
        b.put_lid_mapping(&lid_entry("2001", "5501", 1, "a"))
            .await
            .unwrap();
        b.put_lid_mapping(&lid_entry("2002", "5501", 2, "b"))
            .await
            .unwrap();
        // 2002 leaves 5501; 2001 still maps to it.
        b.put_lid_mapping(&lid_entry("2002", "5502", 3, "c"))
            .await
            .unwrap();
    }
    assert!(
        mem.get_pn_mapping("5501").await.unwrap().is_none(),
        "the in-memory reverse index forgets 2001"
    );
    assert_eq!(
        pg.get_pn_mapping("5501").await.unwrap().map(|e| e.lid),
        Some("2001".to_string())
    );
    assert_eq!(
        pg.get_pn_mapping("5502").await.unwrap().map(|e| e.lid),
        Some("2002".to_string())
    );
    // Batch order decides "put last" within a batch too.
    pg.put_lid_mappings(&[
        lid_entry("2003", "5503", 5, "x"),
        lid_entry("2004", "5503", 4, "y"),
    ])
    .await
    .unwrap();
    assert_eq!(
        pg.get_pn_mapping("5503").await.unwrap().map(|e| e.lid),
        Some("2004".to_string())
    );
    db.drop_db().await;
}

/// Writes at least one row into every table of the store for `store`'s channel.
async fn fill_every_table(store: &PgStore, tag: &str) {
    let tagged = |s: &str| format!("{s}-{tag}");
    store.save(&Device::new()).await.unwrap();
    store
        .put_identity("a@s.whatsapp.net", [1; 32])
        .await
        .unwrap();
    store
        .put_session("a@s.whatsapp.net", tagged("session").as_bytes())
        .await
        .unwrap();
    store.store_prekey(1, b"pk", false).await.unwrap();
    store.store_signed_prekey(1, b"spk").await.unwrap();
    store.put_sender_key("g@g.us::a::0", b"sk").await.unwrap();
    store
        .set_sync_key(
            b"kid1",
            AppStateSyncKey {
                key_data: vec![1],
                fingerprint: vec![2],
                timestamp: 3,
            },
        )
        .await
        .unwrap();
    store
        .set_version("regular", HashState::default())
        .await
        .unwrap();
    store
        .put_mutation_macs("regular", 1, &[mac(1, 1)])
        .await
        .unwrap();
    store
        .set_sender_key_status("g@g.us", &[("a@s.whatsapp.net", true)])
        .await
        .unwrap();
    store
        .put_lid_mapping(&lid_entry("1", "55", 1, "usync"))
        .await
        .unwrap();
    store
        .save_base_key("a@s.whatsapp.net", "M", b"bk")
        .await
        .unwrap();
    store
        .update_device_list(device_list("55", &[0], 1))
        .await
        .unwrap();
    store.put_group_metadata("g@g.us", b"meta").await.unwrap();
    store
        .store_received_tc_token("1@lid", b"tc", 1)
        .await
        .unwrap();
    store
        .store_sent_message("c@s.whatsapp.net", "S", b"sent")
        .await
        .unwrap();
    store
        .store_pending_inbound("c@s.whatsapp.net", "c@s.whatsapp.net", "P", b"in")
        .await
        .unwrap();
    store
        .put_msg_secret("c@s.whatsapp.net", "d@s.whatsapp.net", "M", &[1; 32])
        .await
        .unwrap();
}

async fn rows_per_table(pool: &whatisup::store::PgPool, channel_id: &str) -> BTreeMap<String, i64> {
    let client = pool.get().await.unwrap();
    let mut out = BTreeMap::new();
    for table in TABLES {
        let n: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE channel_id = $1"),
                &[&channel_id],
            )
            .await
            .unwrap()
            .get(0);
        out.insert(table.to_string(), n);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_isolated_and_wipe_removes_one() {
    let (db, pool) = setup().await;
    channel(&pool, "ch_a").await;
    channel(&pool, "ch_b").await;
    let k = keys(KEY_A, &[]);
    let a = PgStore::new(pool.clone(), k.clone(), "ch_a");
    let b = PgStore::new(pool.clone(), k, "ch_b");

    // TABLES (what wipe deletes) is every table the migration created.
    let client = pool.get().await.unwrap();
    let catalogue: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_name LIKE 'wa\\_%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut listed: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    listed.sort();
    assert_eq!(catalogue, listed);

    fill_every_table(&a, "a").await;
    fill_every_table(&b, "b").await;
    assert_eq!(
        a.get_session("a@s.whatsapp.net").await.unwrap().as_deref(),
        Some(&b"session-a"[..])
    );
    assert_eq!(
        b.get_session("a@s.whatsapp.net").await.unwrap().as_deref(),
        Some(&b"session-b"[..])
    );

    // Channel-wide operations stay inside their channel.
    a.clear_all_sender_key_devices().await.unwrap();
    assert_eq!(b.get_sender_key_devices("g@g.us").await.unwrap().len(), 1);
    a.delete_expired_sent_messages(i64::MAX).await.unwrap();
    assert!(
        b.take_sent_message("c@s.whatsapp.net", "S")
            .await
            .unwrap()
            .is_some()
    );
    for s in [&a, &b] {
        s.store_sent_message("c@s.whatsapp.net", "S", b"sent")
            .await
            .unwrap();
    }
    a.set_sender_key_status("g@g.us", &[("a@s.whatsapp.net", true)])
        .await
        .unwrap();
    let mut other = Device::new();
    other.push_name = "B only".into();
    b.save(&other).await.unwrap();
    assert_eq!(a.load().await.unwrap().unwrap().push_name, "");

    let before_a = rows_per_table(&pool, "ch_a").await;
    let before_b = rows_per_table(&pool, "ch_b").await;
    for (table, n) in before_a.iter().chain(&before_b) {
        assert!(*n > 0, "{table} has no row to wipe");
    }
    let deleted = wipe(&pool, "ch_a").await.unwrap();
    assert_eq!(deleted, before_a.values().map(|&n| n as u64).sum::<u64>());
    assert!(
        rows_per_table(&pool, "ch_a")
            .await
            .values()
            .all(|&n| n == 0)
    );
    assert_eq!(rows_per_table(&pool, "ch_b").await, before_b);
    assert!(!a.exists().await.unwrap());
    assert!(b.exists().await.unwrap());
    assert_eq!(
        b.wipe().await.unwrap(),
        before_b.values().map(|&n| n as u64).sum::<u64>()
    );

    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_sealed_and_bound_to_their_row() {
    let (db, pool) = setup().await;
    channel(&pool, "ch_a").await;
    channel(&pool, "ch_b").await;
    let k = keys(KEY_A, &[]);
    let a = PgStore::new(pool.clone(), k.clone(), "ch_a");
    let b = PgStore::new(pool.clone(), k, "ch_b");
    let marker = b"PLAINTEXT-MARKER-0123456789";
    let addr = "5511999990000:1@s.whatsapp.net";
    a.put_session(addr, marker).await.unwrap();
    a.put_session("other@s.whatsapp.net", b"x").await.unwrap();
    b.put_session(addr, b"b's own").await.unwrap();
    a.store_sent_message("c@g.us", "S", marker).await.unwrap();
    let mut device = Device::new();
    device.push_name = String::from_utf8(marker.to_vec()).unwrap();
    a.save(&device).await.unwrap();

    let client = pool.get().await.unwrap();
    for table in ["wa_sessions", "wa_sent_messages", "wa_device"] {
        let rows = client
            .query(
                &format!("SELECT sealed, kid FROM {table} WHERE channel_id = 'ch_a'"),
                &[],
            )
            .await
            .unwrap();
        assert!(!rows.is_empty());
        for row in rows {
            let sealed: Vec<u8> = row.get(0);
            let kid: String = row.get(1);
            assert_eq!(kid, keys(KEY_A, &[]).kid());
            assert!(
                !sealed.windows(marker.len()).any(|w| w == marker),
                "{table} stores plaintext"
            );
        }
    }

    // A's sealed session copied into B's row (same address) does not open in B.
    client
        .execute(
            "UPDATE wa_sessions b SET kid = a.kid, sealed = a.sealed FROM wa_sessions a
             WHERE a.channel_id = 'ch_a' AND b.channel_id = 'ch_b' AND a.address = $1 AND b.address = $1",
            &[&addr],
        )
        .await
        .unwrap();
    assert!(
        b.get_session(addr).await.is_err(),
        "opened under another channel"
    );
    // Nor under another address of the same channel.
    client
        .execute(
            "UPDATE wa_sessions o SET kid = s.kid, sealed = s.sealed FROM wa_sessions s
             WHERE s.channel_id = 'ch_a' AND o.channel_id = 'ch_a' AND s.address = $1
               AND o.address = 'other@s.whatsapp.net'",
            &[&addr],
        )
        .await
        .unwrap();
    assert!(a.get_session("other@s.whatsapp.net").await.is_err());
    // A tampered blob does not open either; the untouched one still does.
    client
        .execute(
            "UPDATE wa_sent_messages SET sealed = set_byte(sealed, 20, get_byte(sealed, 20) # 1)
             WHERE channel_id = 'ch_a'",
            &[],
        )
        .await
        .unwrap();
    assert!(a.take_sent_message("c@g.us", "S").await.is_err());
    assert_eq!(
        a.get_session(addr).await.unwrap().as_deref(),
        Some(&marker[..])
    );

    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_master_key_still_opens() {
    let (db, pool) = setup().await;
    channel(&pool, "ch_rot").await;
    let old = PgStore::new(pool.clone(), keys(KEY_A, &[]), "ch_rot");
    old.put_identity("a@s.whatsapp.net", [5; 32]).await.unwrap();
    old.put_msg_secret("c", "s", "M", &[6; 32]).await.unwrap();
    let mut device = Device::new();
    device.push_name = "before rotation".into();
    old.save(&device).await.unwrap();

    let rotated = PgStore::new(pool.clone(), keys(KEY_B, &[KEY_A]), "ch_rot");
    assert_eq!(
        rotated.load_identity("a@s.whatsapp.net").await.unwrap(),
        Some([5; 32])
    );
    assert_eq!(
        rotated.get_msg_secret("c", "s", "M").await.unwrap(),
        Some(vec![6; 32])
    );
    assert_eq!(
        rotated.load().await.unwrap().unwrap().push_name,
        "before rotation"
    );

    // Without the previous key the old values do not open.
    let forgotten = PgStore::new(pool.clone(), keys(KEY_B, &[]), "ch_rot");
    assert!(forgotten.load_identity("a@s.whatsapp.net").await.is_err());

    // A rewrite seals under the new key, which the old node cannot open.
    rotated
        .put_identity("a@s.whatsapp.net", [7; 32])
        .await
        .unwrap();
    let client = pool.get().await.unwrap();
    let kid: String = client
        .query_one(
            "SELECT kid FROM wa_identities WHERE channel_id = 'ch_rot'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kid, keys(KEY_B, &[]).kid());
    assert!(old.load_identity("a@s.whatsapp.net").await.is_err());
    assert_eq!(
        forgotten.load_identity("a@s.whatsapp.net").await.unwrap(),
        Some([7; 32])
    );

    db.drop_db().await;
}

/// Concurrent callers on separate connections: a take hands a payload to exactly one of them, and the tc-token
/// upserts converge without losing the token or regressing the sender bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_take_and_upserts_are_atomic() {
    let (db, pool) = setup().await;
    channel(&pool, "ch_conc").await;
    let store = PgStore::new(pool.clone(), keys(KEY_A, &[]), "ch_conc");
    for round in 0..25 {
        let id = format!("S{round}");
        store
            .store_sent_message("c@g.us", &id, b"payload")
            .await
            .unwrap();
        let takers: Vec<_> = (0..2)
            .map(|_| {
                let s = store.clone();
                let id = id.clone();
                tokio::spawn(async move { s.take_sent_message("c@g.us", &id).await.unwrap() })
            })
            .collect();
        let mut got = 0;
        for t in takers {
            if let Some(payload) = t.await.unwrap() {
                assert_eq!(payload, b"payload");
                got += 1;
            }
        }
        assert_eq!(got, 1, "round {round}: exactly one take gets the message");
    }

    let mut tasks = Vec::new();
    for ts in 1..=20i64 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.touch_tc_token_sender_timestamp("x@lid", ts * 10)
                .await
                .unwrap();
        }));
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.store_received_tc_token("x@lid", &[ts as u8], ts)
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let entry = store.get_tc_token("x@lid").await.unwrap().unwrap();
    assert_eq!(entry.sender_timestamp, Some(200));
    assert_eq!(entry.token_timestamp, 20);
    assert_eq!(entry.token, vec![20]);

    db.drop_db().await;
}

use crate::util::*;
use serde_json::json;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);

async fn owners(db: &TestDb) -> Vec<(String, String)> {
    let pg = db.client().await;
    pg.query(
        "SELECT channel_id, node_id FROM session_leases ORDER BY channel_id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn local_sessions(base: &str) -> i64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("whatisup_sessions_local "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The real binary: first start prints both keys; SIGTERM exits 0 within 10 s and releases the leases; the next
/// process resumes the channel without a scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_then_a_new_process_resumes() {
    let db = TestDb::new();
    let mut a = Proc::spawn(&db, "node-a", &[]).await;
    let (live, test) = a.bootstrap_keys().await;
    assert!(
        live.starts_with("zpk_live_") && test.starts_with("zpk_test_"),
        "{live} {test}"
    );
    let api = Api::new(&a.base, &test);
    let id = api.connected_channel("term").await;
    let status = a.terminate().await;
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}");
    assert!(owners(&db).await.is_empty(), "leases released on shutdown");

    let b = Proc::spawn(&db, "node-b", &[]).await;
    let api = Api::new(&b.base, &test);
    let ch = api.wait_status(&id, "connected", T).await;
    assert_eq!(ch["status_reason"], json!(null));
    let pg = db.client().await;
    let qrs: i64 = pg
        .query_one(
            "SELECT count(*) FROM events WHERE channel_id = $1 AND event = 'qr.updated'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(qrs, 1, "only the first pairing showed a QR");
    b.kill9().await;
    db.drop_db().await;
}

/// Two nodes on one database: every channel has exactly one owner; kill -9 one node and the other resumes its
/// channels within lease expiry + 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_one_owner_each_and_takeover_after_kill9() {
    let db = TestDb::new();
    let mut a = Proc::spawn(&db, "node-a", &[]).await;
    let (_, test) = a.bootstrap_keys().await;
    let b = Proc::spawn(&db, "node-b", &[]).await;
    let api_a = Api::new(&a.base, &test);
    let api_b = Api::new(&b.base, &test);

    // Channels started through either node; the scan goes through the other node (a cross-node command).
    let mut ids = Vec::new();
    for i in 0..6 {
        let (start, other) = if i % 2 == 0 {
            (&api_a, &api_b)
        } else {
            (&api_b, &api_a)
        };
        let id = start.create_channel(&format!("c{i}")).await;
        let (s, qr) = start.get(&format!("/v1/channels/{id}/qr?wait=10")).await;
        assert_eq!(s, 200, "{qr}");
        let (s, r) = other
            .post(&format!("/v1/channels/{id}/sandbox/scan"), json!({}))
            .await;
        assert_eq!(s, 200, "{r}");
        ids.push(id);
    }
    for id in &ids {
        api_a.wait_status(id, "connected", T).await;
    }
    let o = owners(&db).await;
    assert_eq!(o.len(), ids.len(), "one lease per channel: {o:?}");
    assert_eq!(o.iter().filter(|(_, n)| n == "node-a").count(), 3);
    // Each session runs on exactly one node.
    for _ in 0..5 {
        let (la, lb) = (local_sessions(&a.base).await, local_sessions(&b.base).await);
        assert_eq!(la + lb, ids.len() as i64, "never two owners: a={la} b={lb}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An inbound message sent through node B to a session that runs on node A: the id is known at once and the
    // message is committed by A.
    let (a_channel, _) = o.iter().find(|(_, n)| n == "node-a").unwrap().clone();
    let (s, r) = api_b
        .post(
            &format!("/v1/channels/{a_channel}/sandbox/inbound"),
            json!({"from": "+15550002222", "text": "via b"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let mid = r["message_id"]
        .as_str()
        .expect("message id across nodes")
        .to_string();
    let pg = db.client().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = pg
            .query_one(
                "SELECT count(*) FROM events WHERE channel_id = $1 AND event = 'message.received' AND data->>'message_id' = $2",
                &[&a_channel, &mid],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the remote inbound message was committed once"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let on_a: Vec<String> = o
        .iter()
        .filter(|(_, n)| n == "node-a")
        .map(|(c, _)| c.clone())
        .collect();
    a.kill9().await;
    let killed = Instant::now();
    let killed_at = chrono::Utc::now();
    // Taken over: node-b holds every lease and each channel connected again after the kill.
    let deadline = killed + Duration::from_secs(2 + 5);
    for id in &ids {
        loop {
            let ch = api_b.channel(id).await;
            let reconnected = ch["last_connected_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t > killed_at);
            if ch["status"] == "connected" && (reconnected || !on_a.contains(id)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} not resumed within lease expiry + 5 s: {ch}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        owners(&db).await.iter().all(|(_, n)| n == "node-b"),
        "node-b holds every lease"
    );
    assert_eq!(local_sessions(&b.base).await, ids.len() as i64);

    // Taken-over channels went connected → reconnecting → connected, with sequences still gapless.
    let pg = db.client().await;
    for id in &ids {
        let rows = pg
            .query(
                "SELECT sequence FROM events WHERE channel_id = $1 ORDER BY id",
                &[id],
            )
            .await
            .unwrap();
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.get::<_, i64>(0), i as i64 + 1);
        }
    }
    let (s, r) = api_b
        .post(
            &format!("/v1/channels/{}/sandbox/inbound", ids[0]),
            json!({"from": "+15550001111", "text": "hi"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    b.kill9().await;
    db.drop_db().await;
}

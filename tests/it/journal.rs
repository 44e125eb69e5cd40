use crate::util::*;
use std::sync::Arc;
use whatisup::events::{Journal, Op, OpOutcome};

/// Two journals (as on two nodes) write events for the same channels at once: every channel's sequence runs
/// 1..n without a gap or a duplicate, and the global cursor follows commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_keep_sequences_gapless() {
    let db = TestDb::new();
    let gw = Gw::start(test_config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let mut channels = Vec::new();
    for i in 0..5 {
        channels.push(api.create_channel(&format!("j{i}")).await);
    }
    // The gateway's own journal writes channel 0 first (and so knows its sequence)...
    let (s, _) = api
        .post(
            &format!("/v1/channels/{}/connect", channels[0]),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(s, 202);
    api.wait_status(&channels[0], "qr", std::time::Duration::from_secs(10))
        .await;
    let metrics = Arc::new(whatisup::metrics::Metrics::new());
    let a = Journal::spawn(&db.url, metrics.clone()).unwrap();
    let b = Journal::spawn(&db.url, metrics).unwrap();
    let mut tasks = Vec::new();
    for t in 0..40 {
        let journal = if t % 2 == 0 { a.clone() } else { b.clone() };
        let ch = channels[t % channels.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for k in 0..25 {
                let op = Op {
                    channel_id: ch.clone(),
                    events: vec![("message.received", serde_json::json!({"k": k}))],
                    ..Default::default()
                };
                if let Ok(OpOutcome::Applied { events, .. }) = journal.submit(op).await {
                    n += events.len();
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 40 * 25, "every op committed");
    let pg = db.client().await;
    for ch in &channels {
        let seqs: Vec<i64> = pg
            .query(
                "SELECT sequence FROM events WHERE channel_id = $1 ORDER BY id",
                &[ch],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "{ch}: in cursor order and gapless"
        );
        assert!(seqs.len() >= 200);
    }
    // ...and continues it after the others wrote: it learns what they committed.
    let (s, _) = api
        .post(
            &format!("/v1/channels/{}/logout", channels[0]),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(s, 202);
    let seqs: Vec<i64> = pg
        .query(
            "SELECT sequence FROM events WHERE channel_id = $1 ORDER BY id",
            &[&channels[0]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    assert!(seqs.len() > 203, "{}", seqs.len());
    gw.stop().await;
    db.drop_db().await;
}

/// Inbound messages committed with `skip_committed_inbound`: a redelivery (the same message id and sender) adds
/// no second `message.received`, whether it comes in a later batch, twice in one op, or from two journals (two
/// nodes) at once; a different sender with the same id is another message. Sequences stay gapless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_redeliveries_commit_once() {
    let db = TestDb::new();
    let gw = Gw::start(test_config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let ch = api.create_channel("dedup").await;
    let metrics = Arc::new(whatisup::metrics::Metrics::new());
    let a = Journal::spawn(&db.url, metrics.clone()).unwrap();
    let b = Journal::spawn(&db.url, metrics).unwrap();
    let msg = |id: &str, from: &str| {
        (
            "message.received",
            serde_json::json!({"message_id": id, "from": from, "text": "hi"}),
        )
    };
    let op = |events: Vec<(&'static str, serde_json::Value)>| Op {
        channel_id: ch.clone(),
        events,
        skip_committed_inbound: true,
        ..Default::default()
    };
    let committed = |o: whatisup::error::ApiResult<OpOutcome>| match o {
        Ok(OpOutcome::Applied { events, .. }) => events.len(),
        other => panic!("not applied: {other:?}"),
    };
    assert_eq!(
        committed(
            a.submit(op(vec![msg("M1", "+1"), msg("M1", "+1"), msg("M2", "+1")]))
                .await
        ),
        2,
        "a repeat within one op commits once"
    );
    assert_eq!(
        committed(b.submit(op(vec![msg("M1", "+1"), msg("M1", "+2")])).await),
        1,
        "M1 from +1 is in the log already; M1 from +2 is another message"
    );
    // Both nodes receive the same redeliveries at once, many times over.
    let mut tasks = Vec::new();
    for t in 0..20 {
        let journal = if t % 2 == 0 { a.clone() } else { b.clone() };
        let op = op(vec![msg(&format!("R{}", t % 5), "+3")]);
        tasks.push(tokio::spawn(async move { journal.submit(op).await }));
    }
    let mut total = 0;
    for t in tasks {
        total += committed(t.await.unwrap());
    }
    assert_eq!(total, 5, "each of R0..R4 once");
    // Without the flag the journal commits what it is given (other producers of the event).
    let plain = Op {
        channel_id: ch.clone(),
        events: vec![msg("M2", "+1")],
        ..Default::default()
    };
    assert_eq!(committed(a.submit(plain).await), 1);
    let pg = db.client().await;
    let seqs: Vec<i64> = pg
        .query(
            "SELECT sequence FROM events WHERE channel_id = $1 ORDER BY id",
            &[&ch],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let received: i64 = pg
        .query_one(
            "SELECT count(*) FROM events WHERE channel_id = $1 AND event = 'message.received'",
            &[&ch],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(received, 2 + 1 + 5 + 1);
    gw.stop().await;
    db.drop_db().await;
}

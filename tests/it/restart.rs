use crate::util::*;
use std::collections::BTreeSet;
use std::time::Duration;
use whatisup::pb;

const T: Duration = Duration::from_secs(15);

async fn db_ids(db: &TestDb, channel: &str) -> Vec<i64> {
    let pg = db.client().await;
    let rows = pg
        .query(
            "SELECT id, sequence FROM events WHERE channel_id = $1 ORDER BY id",
            &[&channel],
        )
        .await
        .unwrap();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(
            r.get::<_, i64>(1),
            i as i64 + 1,
            "sequences continue without a gap across restarts"
        );
    }
    rows.iter().map(|r| r.get(0)).collect()
}

/// Stop the gateway, start another on the same database: the channel comes back to connected without a scan,
/// and both SSE and the gRPC stream resume exactly where they left off (every event once, in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_without_a_scan_and_streams_resume() {
    let db = TestDb::new();
    let gw = Gw::start(test_config(&db)).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let id = api.connected_channel("resume").await;

    let mut sse1 = Sse::open(&gw.base, &format!("channel_id={id}"), &keys.test, Some("0")).await;
    let first = sse1.until(T, |f| f.event == "channel.connected").await;
    let mut grpc = pb::event_service_client::EventServiceClient::connect(gw.base.clone())
        .await
        .unwrap();
    let mut stream1 = grpc
        .stream_events(authed(
            pb::StreamEventsRequest {
                channel_id: id.clone(),
                events: vec![],
                after_cursor: "0".into(),
            },
            &keys.test,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut grpc_seen: Vec<i64> = Vec::new();
    loop {
        let m = tokio::time::timeout(T, stream1.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        grpc_seen.push(m.cursor.parse().unwrap());
        if m.event.as_ref().unwrap().event == "channel.connected" {
            break;
        }
    }

    gw.stop().await;
    // The server ended the streams on shutdown.
    let mut sse_seen: Vec<i64> = first
        .iter()
        .map(|f| f.id.as_ref().unwrap().parse().unwrap())
        .collect();
    while let Some(f) = sse1.next(Duration::from_secs(2)).await {
        sse_seen.push(f.id.unwrap().parse().unwrap());
    }
    while let Ok(Ok(Some(m))) =
        tokio::time::timeout(Duration::from_secs(2), stream1.message()).await
    {
        grpc_seen.push(m.cursor.parse().unwrap());
    }

    let gw2 = Gw::start(test_config(&db)).await;
    let api2 = Api::new(&gw2.base, &keys.test);
    let ch = api2.channel(&id).await;
    assert!(
        matches!(ch["status"].as_str(), Some("reconnecting" | "connected")),
        "{ch}"
    );
    let last = sse_seen.last().unwrap().to_string();
    let mut sse2 = Sse::open(
        &gw2.base,
        &format!("channel_id={id}"),
        &keys.test,
        Some(&last),
    )
    .await;
    let resumed = sse2.until(T, |f| f.event == "channel.connected").await;
    assert!(
        resumed.iter().all(|f| f.event != "qr.updated"),
        "no new QR after a restart"
    );
    let tr = transitions(&resumed);
    assert_eq!(tr.last().unwrap().1, "connected");
    assert!(
        tr.iter()
            .any(|t| t.0 == "connected" && t.1 == "reconnecting"),
        "{tr:?}"
    );
    sse_seen.extend(
        resumed
            .iter()
            .map(|f| f.id.as_ref().unwrap().parse::<i64>().unwrap()),
    );

    let mut grpc2 = pb::event_service_client::EventServiceClient::connect(gw2.base.clone())
        .await
        .unwrap();
    let mut stream2 = grpc2
        .stream_events(authed(
            pb::StreamEventsRequest {
                channel_id: id.clone(),
                events: vec![],
                after_cursor: grpc_seen.last().unwrap().to_string(),
            },
            &keys.test,
        ))
        .await
        .unwrap()
        .into_inner();
    let want = db_ids(&db, &id).await;
    while grpc_seen.len() < want.len() {
        let m = tokio::time::timeout(T, stream2.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        grpc_seen.push(m.cursor.parse().unwrap());
    }

    assert_eq!(
        sse_seen, want,
        "SSE across the restart: every event exactly once, in order"
    );
    assert_eq!(
        grpc_seen, want,
        "gRPC across the restart: every event exactly once, in order"
    );
    assert_eq!(
        sse_seen.iter().collect::<BTreeSet<_>>().len(),
        sse_seen.len()
    );

    // Still a working session: the simulated phone talks to the new gateway.
    let (s, _) = api2
        .post(
            &format!("/v1/channels/{id}/sandbox/inbound"),
            serde_json::json!({"from": "+15550001111", "text": "after restart"}),
        )
        .await;
    assert_eq!(s, 200);
    gw2.stop().await;
    db.drop_db().await;
}

//! whatisup-bench: the benchmarks behind BENCHMARKS.md. Each scenario runs against real gateway processes (the
//! `whatisup` binary next to this one) and the local PostgreSQL, in a fresh database it drops afterwards.
//!
//!   whatisup-bench sessions [--channels 10000]
//!   whatisup-bench fanout [--seconds 20] [--rate 1000]
//!   whatisup-bench fanout-scale [--seconds 10] [--rate 1000] [--steps 10,50,100,200,400]
//!   whatisup-bench journal [--seconds 10]
//!   whatisup-bench wa [--channels 100] [--messages 5000] [--idle-secs 30] [--contacts-per-channel 0]
//!       (0: 97 contacts shared by all channels, nearly every message a new Signal session; k: each channel
//!       hears from k contacts of its own, each writing in its session after its first message)
//!       (env WHATISUP_BENCH_LIVE_ONLY=1 stops after the live inbound phase; WHATISUP_BENCH_PERF=<prefix> samples
//!       the gateway and the fake server with `perf record` during it)
//!   whatisup-bench webhooks [--receivers 1,10] [--deliveries 20000] [--rate 1000] [--seconds 20]
//!                           [--backlog 100000] [--soak-secs 0]
//!   whatisup-bench messages [--messages 20000] [--conc 64] [--latency-messages 2000] [--latency-rate 200]
//!
//! `wa` runs the real WhatsApp engine against the fake WhatsApp server (the `fakewa` binary next to this one).
//! It needs both built for it: `cargo build --release --features fake-whatsapp --bins && cargo build --release
//! -p fakewa`. (The gateway built that way accepts only loopback WhatsApp endpoints.)
//!
//! Every scenario stops by itself; all traffic goes to 127.0.0.1. `WHATISUP_BENCH_LOG` sets `RUST_LOG` of the
//! gateway and fake server processes (default `warn`); their logs go to this program's stderr.

use anyhow::{Context, bail};
use futures::StreamExt;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn pg_base() -> String {
    std::env::var("WHATISUP_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

struct BenchDb {
    name: String,
    url: String,
}

impl BenchDb {
    fn new() -> BenchDb {
        let name = format!(
            "whatisup_bench_{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        BenchDb {
            url: format!("{}/{}", pg_base(), name),
            name,
        }
    }

    async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (c, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(c)
    }

    async fn drop_db(&self) {
        if let Ok((c, conn)) =
            tokio_postgres::connect(&format!("{}/postgres", pg_base()), tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            let _ = c
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                ))
                .await;
        }
    }
}

struct Gateway {
    child: tokio::process::Child,
    base: String,
    test_key: Option<String>,
    live_key: Option<String>,
}

/// The log filter of the gateway and fake server processes: `WHATISUP_BENCH_LOG`, or warnings only.
fn bench_log() -> String {
    std::env::var("WHATISUP_BENCH_LOG").unwrap_or_else(|_| "warn".into())
}

impl Gateway {
    async fn spawn(db: &BenchDb, extra: &[(&str, &str)]) -> anyhow::Result<Gateway> {
        let exe = std::env::current_exe()?.with_file_name("whatisup");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("serve")
            .env("WHATISUP_DATABASE_URL", &db.url)
            .env("WHATISUP_LISTEN", format!("127.0.0.1:{port}"))
            .env("WHATISUP_MASTER_KEY", MASTER_KEY)
            .env(
                "WHATISUP_DATA_DIR",
                std::env::temp_dir().join("whatisup-bench"),
            )
            .env("WHATISUP_NODE_ID", "bench-node")
            .env("WHATISUP_WA_URL", "ws://127.0.0.1:9/ws/chat")
            .env("WHATISUP_RATE_LIMIT_BURST", "100000000")
            .env("WHATISUP_RATE_LIMIT_PER_SEC", "100000000")
            .env("WHATISUP_SANDBOX_CONNECT_MS", "0")
            .env("WHATISUP_SANDBOX_QR_TTL_MS", "60000")
            .env("RUST_LOG", bench_log())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
                && r.status() == 200
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("gateway did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (mut test_key, mut live_key) = (None, None);
        while let Ok(l) = rx.try_recv() {
            if let Some(k) = l.trim().strip_prefix("test key: ") {
                test_key = k.split_whitespace().next().map(str::to_string);
            }
            if let Some(k) = l.trim().strip_prefix("live key: ") {
                live_key = k.split_whitespace().next().map(str::to_string);
            }
        }
        Ok(Gateway {
            child,
            base,
            test_key,
            live_key,
        })
    }

    /// CPU time (user + system) the process has used, in seconds.
    fn cpu_secs(&self) -> f64 {
        let Some(pid) = self.child.id() else {
            return 0.0;
        };
        cpu_secs_of(pid)
    }

    fn rss_kib(&self) -> u64 {
        let Some(pid) = self.child.id() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    async fn terminate(mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        if let Some(pid) = self.child.id() {
            std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()?;
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        Ok(t.elapsed())
    }
}

fn cpu_secs_of(pid: u32) -> f64 {
    // Fields 14 and 15 of /proc/PID/stat (after the parenthesised name) are utime and stime in clock ticks.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // The fields after ')' start at field 3 (state): utime is field 14 → index 11, stime index 12.
    (ticks(11) + ticks(12)) / 100.0
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("http client")
}

async fn post(
    c: &reqwest::Client,
    url: String,
    key: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let r = c.post(url).bearer_auth(key).json(&body).send().await?;
    let s = r.status();
    let v: serde_json::Value = r.json().await?;
    if !s.is_success() {
        bail!("{s}: {v}");
    }
    Ok(v)
}

async fn count_connected(pg: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(pg
        .query_one(
            "SELECT count(*) FROM channels WHERE status = 'connected'",
            &[],
        )
        .await?
        .get(0))
}

/// Creates `n` channels and pairs them (create, QR, scan), `conc` at a time. Returns their ids.
async fn connect_channels(
    gw: &Gateway,
    key: &str,
    n: usize,
    conc: usize,
) -> anyhow::Result<Vec<String>> {
    let c = http();
    let base = gw.base.clone();
    let ids: Vec<anyhow::Result<String>> = futures::stream::iter(0..n)
        .map(|i| {
            let (c, base, key) = (c.clone(), base.clone(), key.to_string());
            async move {
                let ch = post(
                    &c,
                    format!("{base}/v1/channels"),
                    &key,
                    serde_json::json!({"name": format!("bench-{i}")}),
                )
                .await?;
                let id = ch["id"].as_str().context("id")?.to_string();
                let qr = c
                    .get(format!("{base}/v1/channels/{id}/qr?wait=30"))
                    .bearer_auth(&key)
                    .send()
                    .await?;
                if !qr.status().is_success() {
                    bail!("qr: {}", qr.text().await?);
                }
                post(
                    &c,
                    format!("{base}/v1/channels/{id}/sandbox/scan"),
                    &key,
                    serde_json::json!({}),
                )
                .await?;
                Ok(id)
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    ids.into_iter().collect()
}

async fn wait_connected(
    pg: &tokio_postgres::Client,
    n: i64,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    while count_connected(pg).await? < n {
        if t.elapsed() > limit {
            bail!(
                "only {} of {n} connected after {limit:?}",
                count_connected(pg).await?
            );
        }
        // A channel that came to rest short of `connected` (QR timed out, failed, logged out) will not get
        // there by waiting: say which, instead of sitting out the limit.
        let stuck = pg
            .query(
                "SELECT id, status, coalesce(status_reason, '') FROM channels
                 WHERE deleted_at IS NULL AND status IN ('pending', 'failed', 'disconnected')
                   AND status_reason IS NOT NULL ORDER BY id",
                &[],
            )
            .await?;
        if !stuck.is_empty() {
            let named: Vec<String> = stuck
                .iter()
                .map(|r| {
                    format!(
                        "{} {}/{}",
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2)
                    )
                })
                .collect();
            bail!(
                "{} channel(s) will not connect: {}",
                stuck.len(),
                named.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(t.elapsed())
}

async fn sessions(args: &[String]) -> anyhow::Result<()> {
    let n: usize = arg(args, "--channels", "10000").parse()?;
    let db = BenchDb::new();
    let gw = Gateway::spawn(&db, &[]).await?;
    let key = gw.test_key.clone().context("bootstrap key")?;
    let pg = db.client().await?;
    // Warm up (pools, allocator) with a few channels, then take the baseline.
    connect_channels(&gw, &key, 50, 16).await?;
    wait_connected(&pg, 50, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = gw.rss_kib();

    let t = Instant::now();
    connect_channels(&gw, &key, n, 64).await?;
    wait_connected(&pg, (n + 50) as i64, Duration::from_secs(600)).await?;
    let connect_time = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = gw.rss_kib();
    let per = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / n as f64;
    println!(
        "sessions: {n} sandbox channels created, paired and connected through the API (64 concurrent clients) in {:.2} s ({:.0} channels/s)",
        connect_time.as_secs_f64(),
        n as f64 / connect_time.as_secs_f64()
    );
    println!(
        "sessions: gateway RSS {:.1} MiB with 50 channels, {:.1} MiB with {} connected: {:.1} KiB per connected channel",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        n + 50,
        per / 1024.0
    );

    let stop = gw.terminate().await?;
    println!(
        "sessions: graceful shutdown (SIGTERM → exit, leases released) took {:.2} s",
        stop.as_secs_f64()
    );
    let t = Instant::now();
    let gw2 = Gateway::spawn(&db, &[]).await?;
    let ready = t.elapsed();
    let all = ready + wait_connected(&pg, (n + 50) as i64, Duration::from_secs(600)).await?;
    println!(
        "sessions: restart → all {} connected again in {:.2} s (process start to ready {:.2} s), no new scan",
        n + 50,
        all.as_secs_f64(),
        ready.as_secs_f64()
    );
    let qr: i64 = pg
        .query_one(
            "SELECT count(*) FROM events WHERE event = 'qr.updated'",
            &[],
        )
        .await?
        .get(0);
    println!("sessions: qr.updated events in the whole run: {qr} (one per pairing)");
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "sessions: RSS after the restart with {} connected: {:.1} MiB",
        n + 50,
        gw2.rss_kib() as f64 / 1024.0
    );
    drop(gw2);
    drop(pg);
    db.drop_db().await;
    Ok(())
}

/// Latencies in microseconds.
#[derive(Default)]
struct Lat(Vec<u32>);

impl Lat {
    fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i] as f64 / 1000.0
    }
}

/// Reads `"occurred_at":"…"` out of an envelope without parsing the whole JSON.
fn latency_us(data: &str, now: chrono::DateTime<chrono::Utc>) -> Option<u32> {
    let i = data.find("\"occurred_at\":\"")? + 15;
    let t = chrono::DateTime::parse_from_rfc3339(data.get(i..i + 24)?).ok()?;
    Some(
        (now - t.with_timezone(&chrono::Utc))
            .num_microseconds()?
            .max(0) as u32,
    )
}

struct Counter {
    got: AtomicU64,
    lat: std::sync::Mutex<Lat>,
}

/// An SSE subscriber that counts message.received frames and records their latency.
async fn sse_subscriber(
    base: String,
    key: String,
    query: String,
    counter: Arc<Counter>,
) -> anyhow::Result<()> {
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/events?{query}"))
        .bearer_auth(&key)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("sse: {}", resp.status());
    }
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        let now = chrono::Utc::now();
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.contains("event: message.received") {
                // Recorded as it arrives: the task is aborted at the end, nothing may wait in a local buffer.
                if let Some(l) = latency_us(&block, now) {
                    counter
                        .lat
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                        .push(l);
                }
                counter.got.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

async fn grpc_subscriber(
    channel: tonic::transport::Channel,
    key: String,
    channel_id: String,
    counter: Arc<Counter>,
) -> anyhow::Result<()> {
    let mut client = whatisup::pb::event_service_client::EventServiceClient::new(channel);
    let mut req = tonic::Request::new(whatisup::pb::StreamEventsRequest {
        channel_id,
        events: vec![],
        after_cursor: String::new(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse()?);
    let mut stream = client.stream_events(req).await?.into_inner();
    while let Some(m) = stream.message().await? {
        let Some(e) = m.event else { continue };
        if e.event != "message.received" {
            continue;
        }
        let now = chrono::Utc::now();
        if let Some(t) = e.occurred_at.and_then(|t| t.to_datetime()) {
            let us = (now - t).num_microseconds().unwrap_or(0).max(0) as u32;
            counter
                .lat
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .push(us);
        }
        counter.got.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Produces `rate` inbound messages per second for `secs` seconds across `ids`; returns how many were committed.
async fn produce(
    base: &str,
    key: &str,
    ids: &[String],
    rate: u64,
    secs: u64,
) -> anyhow::Result<(u64, HashMap<String, u64>)> {
    let c = http();
    let total = rate * secs;
    let sem = Arc::new(tokio::sync::Semaphore::new(512));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut per: HashMap<String, u64> = HashMap::new();
    for i in 0..total {
        tokio::time::sleep_until(start + Duration::from_micros(i * 1_000_000 / rate)).await;
        let id = ids[(i as usize * 7919) % ids.len()].clone();
        *per.entry(id.clone()).or_default() += 1;
        let permit = sem.clone().acquire_owned().await?;
        let (c, url, key) = (
            c.clone(),
            format!("{base}/v1/channels/{id}/sandbox/inbound"),
            key.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let r = post(
                &c,
                url,
                &key,
                serde_json::json!({"from": "+15550001111", "text": "benchmark"}),
            )
            .await;
            drop(permit);
            r.is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap_or(false) {
            ok += 1;
        }
    }
    let took = start.elapsed();
    if took > Duration::from_secs(secs) + Duration::from_secs(2) {
        eprintln!(
            "note: the producer fell behind: {total} messages took {:.1} s",
            took.as_secs_f64()
        );
    }
    Ok((ok, per))
}

async fn fanout(args: &[String]) -> anyhow::Result<()> {
    let secs: u64 = arg(args, "--seconds", "20").parse()?;
    let rate: u64 = arg(args, "--rate", "1000").parse()?;
    let (n_sse, n_grpc, n_all) = (1000usize, 100usize, 10usize);
    let db = BenchDb::new();
    let gw = Gateway::spawn(&db, &[]).await?;
    let key = gw.test_key.clone().context("bootstrap key")?;
    let pg = db.client().await?;
    let ids = connect_channels(&gw, &key, n_sse + n_grpc, 64).await?;
    wait_connected(&pg, ids.len() as i64, Duration::from_secs(120)).await?;

    let mut per_sub: Vec<(Option<String>, Arc<Counter>)> = Vec::new();
    let mut tasks = Vec::new();
    let new_counter = || {
        Arc::new(Counter {
            got: AtomicU64::new(0),
            lat: std::sync::Mutex::new(Lat::default()),
        })
    };
    for id in &ids[..n_sse] {
        let c = new_counter();
        per_sub.push((Some(id.clone()), c.clone()));
        tasks.push(tokio::spawn(sse_subscriber(
            gw.base.clone(),
            key.clone(),
            format!("channel_id={id}"),
            c,
        )));
    }
    let mut grpc_channels = Vec::new();
    for _ in 0..10 {
        grpc_channels.push(
            tonic::transport::Endpoint::from_shared(gw.base.clone())?
                .connect()
                .await?,
        );
    }
    for (i, id) in ids[n_sse..].iter().enumerate() {
        let c = new_counter();
        per_sub.push((Some(id.clone()), c.clone()));
        tasks.push(tokio::spawn(grpc_subscriber(
            grpc_channels[i % 10].clone(),
            key.clone(),
            id.clone(),
            c,
        )));
    }
    for _ in 0..n_all {
        let c = new_counter();
        per_sub.push((None, c.clone()));
        tasks.push(tokio::spawn(sse_subscriber(
            gw.base.clone(),
            key.clone(),
            String::new(),
            c,
        )));
    }
    // Every subscriber connected before production starts.
    let want_subs = (n_sse + n_grpc + n_all) as f64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(format!("{}/metrics", gw.base))
            .await?
            .text()
            .await?;
        let open: f64 = text
            .lines()
            .filter(|l| l.starts_with("whatisup_stream_subscribers{"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .sum();
        if open >= want_subs {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {open} subscribers connected");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (ok, per) = produce(&gw.base, &key, &ids, rate, secs).await?;
    // Wait for the last deliveries.
    let expected_total: u64 = per_sub
        .iter()
        .map(|(ch, _)| match ch {
            Some(id) => per.get(id).copied().unwrap_or(0),
            None => ok,
        })
        .sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: u64 = per_sub
            .iter()
            .map(|(_, c)| c.got.load(Ordering::Relaxed))
            .sum();
        if got >= expected_total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in &tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut missing = 0u64;
    let (mut lat_sse, mut lat_grpc, mut lat_all) = (Lat::default(), Lat::default(), Lat::default());
    for (i, (ch, c)) in per_sub.iter().enumerate() {
        let want = match ch {
            Some(id) => per.get(id).copied().unwrap_or(0),
            None => ok,
        };
        missing += want.saturating_sub(c.got.load(Ordering::Relaxed));
        let mut l = std::mem::take(&mut c.lat.lock().unwrap_or_else(|e| e.into_inner()).0);
        if i < n_sse {
            lat_sse.0.append(&mut l);
        } else if i < n_sse + n_grpc {
            lat_grpc.0.append(&mut l);
        } else {
            lat_all.0.append(&mut l);
        }
    }
    println!(
        "fanout: {n_sse} SSE + {n_grpc} gRPC subscribers on one channel each, {n_all} SSE subscribers on all channels; {ok} of {} inbound messages committed at {rate}/s for {secs} s",
        rate * secs
    );
    let deliveries = lat_sse.0.len() + lat_grpc.0.len() + lat_all.0.len();
    println!(
        "fanout: {deliveries} deliveries, {missing} not delivered within 30 s after the last commit"
    );
    for (name, l) in [
        ("per-channel SSE", &mut lat_sse),
        ("per-channel gRPC", &mut lat_grpc),
        ("all-channel SSE", &mut lat_all),
    ] {
        let n = l.0.len();
        println!(
            "fanout: {name:16} commit→client p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({n} deliveries)",
            l.pct(0.5),
            l.pct(0.99),
            l.pct(1.0)
        );
    }
    drop(gw);
    drop(pg);
    db.drop_db().await;
    Ok(())
}

async fn fanout_scale(args: &[String]) -> anyhow::Result<()> {
    let secs: u64 = arg(args, "--seconds", "10").parse()?;
    let rate: u64 = arg(args, "--rate", "1000").parse()?;
    let steps: Vec<usize> = arg(args, "--steps", "10,50,100,200,400")
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let db = BenchDb::new();
    let gw = Gateway::spawn(&db, &[]).await?;
    let key = gw.test_key.clone().context("bootstrap key")?;
    let pg = db.client().await?;
    let ids = connect_channels(&gw, &key, 100, 32).await?;
    wait_connected(&pg, ids.len() as i64, Duration::from_secs(60)).await?;
    for n in steps {
        let counters: Vec<Arc<Counter>> = (0..n)
            .map(|_| {
                Arc::new(Counter {
                    got: AtomicU64::new(0),
                    lat: std::sync::Mutex::new(Lat::default()),
                })
            })
            .collect();
        let tasks: Vec<_> = counters
            .iter()
            .map(|c| {
                tokio::spawn(sse_subscriber(
                    gw.base.clone(),
                    key.clone(),
                    String::new(),
                    c.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (ok, _) = produce(&gw.base, &key, &ids, rate, secs).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while counters
            .iter()
            .map(|c| c.got.load(Ordering::Relaxed))
            .sum::<u64>()
            < ok * n as u64
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for t in &tasks {
            t.abort();
        }
        let got: u64 = counters.iter().map(|c| c.got.load(Ordering::Relaxed)).sum();
        let mut lat = Lat::default();
        for c in &counters {
            lat.0
                .append(&mut c.lat.lock().unwrap_or_else(|e| e.into_inner()).0);
        }
        println!(
            "fanout-scale: {n:5} all-channel SSE subscribers, {rate} events/s: {:.0} deliveries/s, p50 {:.1} ms, p99 {:.1} ms, {} not delivered within 20 s after the last commit",
            got as f64 / secs as f64,
            lat.pct(0.5),
            lat.pct(0.99),
            (ok * n as u64).saturating_sub(got)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(gw);
    drop(pg);
    db.drop_db().await;
    Ok(())
}

/// Events committed per second through the journal (status + event + fence in one transaction, batched), beside
/// a plain batched INSERT of the same rows into a copy of the events table, in the same database and run. The two
/// alternate in rounds (after a CHECKPOINT each), so that drift of the machine hits both alike.
async fn journal(args: &[String]) -> anyhow::Result<()> {
    use whatisup::events::{Journal, Op};
    let secs: u64 = arg(args, "--seconds", "5").parse()?;
    let rounds: usize = arg(args, "--rounds", "3").parse()?;
    let producers: usize = arg(args, "--producers", "1000").parse()?;
    let db = BenchDb::new();
    let pool = whatisup::store::connect(&db.url, 8).await?;
    let (_keys, customer_id, ids) = customer_with_channels(&pool, 1000, "j").await?;
    let metrics = Arc::new(whatisup::metrics::Metrics::new());
    let journal = Journal::spawn(&db.url, metrics.clone())?;
    let data = serde_json::json!({"message_id": "3EB0ABCDEF0123456789", "from": "+15550001111",
        "timestamp": "2026-11-26T12:00:00.000Z", "type": "text", "text": "benchmark"});
    let c = pool.get().await?;
    c.batch_execute("CREATE TABLE events_raw (LIKE events INCLUDING ALL)")
        .await?;
    // Prepared once, as the journal's statements are.
    let raw_insert = c
        .prepare(
            "INSERT INTO events_raw (event_id, customer_id, mode, channel_id, sequence, event, occurred_at, data)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[],
                                  $7::timestamptz[], $8::jsonb[])",
        )
        .await?;
    let mut seq = 0i64;
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        c.batch_execute("CHECKPOINT").await?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let before = (
            metrics.journal_batch.get_sample_count(),
            metrics.journal_batch.get_sample_sum(),
        );
        let t = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..producers {
            let (journal, id, data, stop, committed) = (
                journal.clone(),
                ids[i % ids.len()].clone(),
                data.clone(),
                stop.clone(),
                committed.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let op = Op {
                        channel_id: id.clone(),
                        events: vec![("message.received", data.clone())],
                        ..Default::default()
                    };
                    if journal.submit(op).await.is_ok() {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let journal_rate = committed.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
        let batches = metrics.journal_batch.get_sample_count() - before.0;
        let mean_batch =
            (metrics.journal_batch.get_sample_sum() - before.1) / batches.max(1) as f64;

        // The baseline: the same rows, 512 per INSERT, one transaction each, no channel read, no lock.
        c.batch_execute("CHECKPOINT").await?;
        let (customer, mode) = (customer_id.as_str(), "test");
        let t = Instant::now();
        let mut rows = 0u64;
        while t.elapsed() < Duration::from_secs(secs) {
            let n = 512;
            let event_ids: Vec<String> = (0..n).map(|_| whatisup::store::new_id("evt")).collect();
            let customers = vec![customer; n];
            let modes = vec![mode; n];
            let channels: Vec<&str> = (0..n).map(|i| ids[i % ids.len()].as_str()).collect();
            let seqs: Vec<i64> = (0..n as i64).map(|i| seq + 1 + i).collect();
            seq += n as i64;
            let names = vec!["message.received"; n];
            let ats = vec![chrono::Utc::now(); n];
            let datas = vec![&data; n];
            c.execute(
                &raw_insert,
                &[
                    &event_ids, &customers, &modes, &channels, &seqs, &names, &ats, &datas,
                ],
            )
            .await?;
            rows += n as u64;
        }
        let raw_rate = rows as f64 / t.elapsed().as_secs_f64();
        let ratio = 100.0 * journal_rate / raw_rate;
        ratios.push(ratio);
        println!(
            "journal: round {round}: journal {journal_rate:.0} events/s ({producers} producers, {batches} transactions of \
             {mean_batch:.0} ops); plain batched INSERT {raw_rate:.0} rows/s; ratio {ratio:.0} %"
        );
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    println!(
        "journal: median ratio {:.0} % over {rounds} rounds",
        ratios[ratios.len() / 2]
    );
    drop(c);
    pool.close();
    db.drop_db().await;
    Ok(())
}

/// The fake WhatsApp server as a child process.
struct Fake {
    /// Held so the server lives as long as this value (killed on drop).
    _child: tokio::process::Child,
    base: String,
}

impl Fake {
    async fn spawn() -> anyhow::Result<Fake> {
        let exe = std::env::current_exe()?.with_file_name("fakewa");
        if !exe.exists() {
            bail!(
                "{} is missing: build it with `cargo build --release -p fakewa`",
                exe.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = tokio::process::Command::new(&exe)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", bench_log())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{base}/control/stats")).await
                && r.status() == 200
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("fakewa did not answer");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Fake {
            _child: child,
            base,
        })
    }

    fn ws_url(&self) -> String {
        format!("{}/ws/chat", self.base.replacen("http://", "ws://", 1))
    }

    fn cpu_secs(&self) -> f64 {
        self._child.id().map(cpu_secs_of).unwrap_or(0.0)
    }
}

/// Creates `n` live channels and pairs each with its own fake phone (create, QR, the phone scans), `conc` at a
/// time. Returns (channel id, phone number).
async fn pair_wa_channels(
    gw: &Gateway,
    fake: &Fake,
    key: &str,
    from: usize,
    n: usize,
    conc: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let c = http();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let out: Vec<anyhow::Result<(String, String)>> = futures::stream::iter(from..from + n)
        .map(|i| {
            let (c, base, fbase, key) = (
                c.clone(),
                gw.base.clone(),
                fake.base.clone(),
                key.to_string(),
            );
            let (done, started) = (&done, started);
            async move {
                let ch = post(
                    &c,
                    format!("{base}/v1/channels"),
                    &key,
                    serde_json::json!({"name": format!("wa-{i}")}),
                )
                .await?;
                let id = ch["id"].as_str().context("id")?.to_string();
                let qr: serde_json::Value = c
                    .get(format!("{base}/v1/channels/{id}/qr?wait=30"))
                    .bearer_auth(&key)
                    .send()
                    .await?
                    .json()
                    .await?;
                let code = qr["qr"].as_str().with_context(|| format!("no qr: {qr}"))?;
                // The fake server names phones by their digits.
                let phone = format!("1555{i:07}");
                let r = c
                    .post(format!("{fbase}/control/scan"))
                    .json(&serde_json::json!({"qr": code, "phone_number": phone}))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("scan: {}", r.text().await?);
                }
                // Progress on stderr, so a slow large run shows where it is.
                let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if k % 100 == 0 {
                    eprintln!(
                        "  {k} of {n} scanned after {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                Ok((id, phone))
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    out.into_iter().collect()
}

/// Who writes the inbound texts of the `wa` scenario.
#[derive(Clone, Copy)]
enum Contacts {
    /// 97 contacts shared by all channels, message i from contact i % 97: nearly every message opens a new
    /// Signal session (X3DH on both sides), the costliest kind.
    Shared97,
    /// Each channel hears from these many contacts in turn: after its first message a contact writes in its
    /// existing session (the steady state of a chat).
    PerChannel(usize),
}

/// Fake contacts send `m` texts spread over the channels' phones (64 requests at a time).
async fn inject(
    fake: &Fake,
    chans: &[(String, String)],
    m: usize,
    tag: &str,
    contacts: Contacts,
) -> anyhow::Result<()> {
    let c = http();
    let sent: Vec<anyhow::Result<()>> = futures::stream::iter(0..m)
        .map(|i| {
            let (c, fbase) = (c.clone(), fake.base.clone());
            let phone = chans[i % chans.len()].1.clone();
            let from = match contacts {
                Contacts::Shared97 => i % 97,
                Contacts::PerChannel(k) => (i / chans.len()) % k.max(1),
            };
            async move {
                let r = c
                    .post(format!("{fbase}/control/devices/{phone}/inbound"))
                    .json(&serde_json::json!({"from": format!("1666{from:07}"), "text": format!("bench {tag} message {i}")}))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("inbound: {}", r.text().await?);
                }
                Ok(())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    sent.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(())
}

/// Counts `event` rows committed after `floor` (an `events.id`) incrementally, along the primary key: the phases
/// poll this every 20 ms, and a count over the whole log (a sequential scan of every event, 1,000 channels' QR
/// codes included) cost PostgreSQL a share of the 2 cores the measured pipeline runs on. Each poll reads only
/// the rows after the last one seen. A row committed later with a lower id (another writer than the journal)
/// would be missed: the count can only come out low, so a phase can only look slower; `exact` checks the end.
struct EventCount {
    event: &'static str,
    floor: i64,
    /// The last id read, and the matching rows up to it.
    seen: i64,
    n: i64,
}

impl EventCount {
    async fn start(pg: &tokio_postgres::Client, event: &'static str) -> anyhow::Result<EventCount> {
        let floor: i64 = pg
            .query_one("SELECT coalesce(max(id), 0) FROM events", &[])
            .await?
            .get(0);
        Ok(EventCount {
            event,
            floor,
            seen: floor,
            n: 0,
        })
    }

    async fn get(&mut self, pg: &tokio_postgres::Client) -> anyhow::Result<i64> {
        let r = pg
            .query_one(
                "SELECT count(*) FILTER (WHERE event = $2), coalesce(max(id), $1) FROM events WHERE id > $1",
                &[&self.seen, &self.event],
            )
            .await?;
        self.seen = r.get(1);
        self.n += r.get::<_, i64>(0);
        Ok(self.n)
    }

    /// The count from the floor, all rows considered.
    async fn exact(&self, pg: &tokio_postgres::Client) -> anyhow::Result<i64> {
        Ok(pg
            .query_one(
                "SELECT count(*) FROM events WHERE id > $1 AND event = $2",
                &[&self.floor, &self.event],
            )
            .await?
            .get(0))
    }
}

async fn count_events(pg: &tokio_postgres::Client, event: &str) -> anyhow::Result<i64> {
    Ok(pg
        .query_one("SELECT count(*) FROM events WHERE event = $1", &[&event])
        .await?
        .get(0))
}

async fn wa(args: &[String]) -> anyhow::Result<()> {
    let n: usize = arg(args, "--channels", "100").parse()?;
    let m: usize = arg(args, "--messages", "5000").parse()?;
    let idle: u64 = arg(args, "--idle-secs", "30").parse()?;
    let contacts = match arg(args, "--contacts-per-channel", "0").parse()? {
        0 => Contacts::Shared97,
        k => Contacts::PerChannel(k),
    };
    let fake = Fake::spawn().await?;
    let db = BenchDb::new();
    let env = [("WHATISUP_WA_URL", fake.ws_url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Gateway::spawn(&db, &env).await?;
    let key = gw.live_key.clone().context("bootstrap live key")?;
    let pg = db.client().await?;

    // Warm-up and baseline: a few channels, so pools and the allocator are in their steady state.
    const WARM: usize = 5;
    pair_wa_channels(&gw, &fake, &key, 0, WARM, WARM).await?;
    wait_connected(&pg, WARM as i64, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss0 = gw.rss_kib();

    let t = Instant::now();
    let chans = pair_wa_channels(&gw, &fake, &key, WARM, n, 32).await?;
    let total = (n + WARM) as i64;
    wait_connected(&pg, total, Duration::from_secs(900)).await?;
    let paired_in = t.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss1 = gw.rss_kib();
    println!(
        "wa: {n} live channels paired by QR (32 at a time) and connected in {:.1} s",
        paired_in.as_secs_f64()
    );
    println!(
        "wa: gateway RSS {:.1} MiB with {WARM} sessions, {:.1} MiB with {total}: {:.0} KiB per session",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        rss1.saturating_sub(rss0) as f64 / n as f64
    );

    let c0 = gw.cpu_secs();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let c1 = gw.cpu_secs();
    println!(
        "wa: idle (keep-alives only) for {idle} s with {total} sessions: {:.2} % of one core",
        (c1 - c0) / idle as f64 * 100.0
    );

    // Inbound: fake contacts send texts, the engine decrypts them, the gateway commits `message.received`.
    let mut received = EventCount::start(&pg, "message.received").await?;
    let stats0 = db_stats(&pg).await?;
    let perf = Perf::start(&gw, &fake)?;
    let pg_pids = backend_pids(&pg).await?;
    let (gc0, fc0) = (gw.cpu_secs(), fake.cpu_secs());
    let pc0: f64 = pg_pids.iter().map(|p| cpu_secs_of(*p)).sum();
    let t = Instant::now();
    inject(&fake, &chans, m, "live", contacts).await?;
    let injected = t.elapsed();
    while received.get(&pg).await? < m as i64 {
        if t.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {} of {m} inbound messages committed",
                received.get(&pg).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_in = t.elapsed();
    anyhow::ensure!(
        received.exact(&pg).await? == m as i64,
        "the incremental count disagrees with the log"
    );
    println!(
        "wa: {m} inbound texts over {} channels: injected in {:.2} s, all decrypted and committed in {:.2} s: {:.0} messages/s",
        chans.len(),
        injected.as_secs_f64(),
        all_in.as_secs_f64(),
        m as f64 / all_in.as_secs_f64()
    );
    let (gcpu, fcpu) = (gw.cpu_secs() - gc0, fake.cpu_secs() - fc0);
    // Connections opened during the phase count with all their CPU.
    let pcpu = backend_pids(&pg)
        .await?
        .iter()
        .chain(pg_pids.iter())
        .collect::<std::collections::HashSet<_>>()
        .into_iter()
        .map(|p| cpu_secs_of(*p))
        .sum::<f64>()
        - pc0;
    println!(
        "wa:   CPU meanwhile: gateway {gcpu:.1} s ({:.0} µs per message), fake server {fcpu:.1} s ({:.0} µs per message), \
         PostgreSQL backends of the bench database {pcpu:.1} s ({:.0} µs per message)",
        gcpu / m as f64 * 1e6,
        fcpu / m as f64 * 1e6,
        pcpu / m as f64 * 1e6,
    );
    perf.stop();
    // PostgreSQL publishes a backend's counters when it goes idle, at most every 10 s.
    tokio::time::sleep(Duration::from_secs(11)).await;
    print_db_stats(&stats0, &db_stats(&pg).await?, m);
    if std::env::var_os("WHATISUP_BENCH_LIVE_ONLY").is_some() {
        drop(gw);
        drop(fake);
        drop(pg);
        db.drop_db().await;
        return Ok(());
    }

    // Restart: every session resumes from the sealed store (no QR).
    let qr_before = count_events(&pg, "qr.updated").await?;
    let stop = gw.terminate().await?;
    let t = Instant::now();
    let gw2 = Gateway::spawn(&db, &env).await?;
    wait_connected(&pg, total, Duration::from_secs(600)).await?;
    let back = t.elapsed();
    println!(
        "wa: SIGTERM took {:.2} s; restart → all {total} connected again in {:.1} s, {} new QR codes",
        stop.as_secs_f64(),
        back.as_secs_f64(),
        count_events(&pg, "qr.updated").await? - qr_before
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!(
        "wa: RSS after the restart with {total} sessions: {:.1} MiB",
        gw2.rss_kib() as f64 / 1024.0
    );

    // Offline backlog: the gateway is down while contacts write; the fake server encrypts and queues every
    // message then, so the timed part is the gateway alone: resume, decrypt, commit, ack.
    gw2.terminate().await?;
    let mut received = EventCount::start(&pg, "message.received").await?;
    let t = Instant::now();
    inject(&fake, &chans, m, "offline", contacts).await?;
    let queued = t.elapsed();
    let gw3 = Gateway::spawn(&db, &env).await?;
    let (gc0, fc0) = (gw3.cpu_secs(), fake.cpu_secs());
    let t = Instant::now();
    while received.get(&pg).await? < m as i64 {
        if t.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {} of {m} offline messages committed",
                received.get(&pg).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = t.elapsed();
    anyhow::ensure!(
        received.exact(&pg).await? == m as i64,
        "the incremental count disagrees with the log"
    );
    println!(
        "wa: {m} texts queued while the gateway was down (encrypted by the fake in {:.2} s); start → all decrypted and committed in {:.2} s: {:.0} messages/s (gateway CPU {:.1} s, fake {:.1} s)",
        queued.as_secs_f64(),
        drained.as_secs_f64(),
        m as f64 / drained.as_secs_f64(),
        gw3.cpu_secs() - gc0,
        fake.cpu_secs() - fc0
    );
    drop(gw3);
    drop(fake);
    drop(pg);
    db.drop_db().await;
    Ok(())
}

/// The PostgreSQL server processes serving the bench database (the gateway's pools and this client): their CPU
/// is the database's share of a phase, as long as the pools neither open nor close connections meanwhile.
async fn backend_pids(pg: &tokio_postgres::Client) -> anyhow::Result<Vec<u32>> {
    Ok(pg
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get::<_, i32>(0) as u32)
        .collect())
}

/// Per-table row operations and the database's commits, from PostgreSQL's cumulative statistics.
type DbStats = HashMap<String, [i64; 4]>;

async fn db_stats(pg: &tokio_postgres::Client) -> anyhow::Result<DbStats> {
    pg.batch_execute("SELECT pg_stat_clear_snapshot()").await?;
    let mut out = DbStats::new();
    for r in pg
        .query(
            "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_del,
                    coalesce(idx_scan, 0) + coalesce(seq_scan, 0)
             FROM pg_stat_user_tables",
            &[],
        )
        .await?
    {
        out.insert(r.get(0), [r.get(1), r.get(2), r.get(3), r.get(4)]);
    }
    let commits: i64 = pg
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?
        .get(0);
    out.insert("(transactions committed)".into(), [commits, 0, 0, 0]);
    Ok(out)
}

/// What the inbound phase did to each table, per message (the bench's own polling included: a few scans of
/// `events`).
fn print_db_stats(before: &DbStats, after: &DbStats, m: usize) {
    let mut rows: Vec<(&String, [f64; 4])> = after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or_default();
            let d: [f64; 4] = std::array::from_fn(|i| (a[i] - b[i]) as f64 / m as f64);
            (k, d)
        })
        .filter(|(_, d)| d.iter().any(|v| *v >= 0.01))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    println!(
        "wa:   PostgreSQL per inbound message: table: inserted / updated / deleted rows, scans"
    );
    for (k, d) in rows {
        println!(
            "wa:     {k}: {:.2} / {:.2} / {:.2}, {:.2}",
            d[0], d[1], d[2], d[3]
        );
    }
}

/// `WHATISUP_BENCH_PERF=<prefix>`: samples the gateway and the fake server with `perf record` during the live
/// inbound phase, into `<prefix>.gateway.data` and `<prefix>.fake.data`.
struct Perf(Vec<std::process::Child>);

impl Perf {
    fn start(gw: &Gateway, fake: &Fake) -> anyhow::Result<Perf> {
        let Some(prefix) = std::env::var_os("WHATISUP_BENCH_PERF") else {
            return Ok(Perf(Vec::new()));
        };
        let prefix = prefix.to_string_lossy().into_owned();
        let mut out = Vec::new();
        for (name, pid) in [("gateway", gw.child.id()), ("fake", fake._child.id())] {
            let Some(pid) = pid else { continue };
            out.push(
                std::process::Command::new("perf")
                    .args(["record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "-p"])
                    .arg(pid.to_string())
                    .arg("-o")
                    .arg(format!("{prefix}.{name}.data"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting perf")?,
            );
        }
        // perf needs a moment to attach.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Perf(out))
    }

    fn stop(self) {
        for mut child in self.0 {
            let _ = std::process::Command::new("kill")
                .arg("-INT")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

/// Migrates a fresh bench database, creates a test-mode customer and `n` channels (named `prefix` + i) straight in
/// the store; returns the master keys, the customer id and the channel ids.
async fn customer_with_channels(
    pool: &deadpool_postgres::Pool,
    n: usize,
    prefix: &str,
) -> anyhow::Result<(Arc<whatisup::crypto::MasterKeys>, String, Vec<String>)> {
    whatisup::store::migrate(pool).await?;
    let keys = Arc::new(whatisup::crypto::MasterKeys::from_bytes([7; 32], &[]));
    let b = whatisup::store::customers::create(pool, &keys, "bench").await?;
    let p = whatisup::model::Principal {
        key_id: "k".into(),
        customer_id: b.customer_id.clone(),
        mode: whatisup::model::Mode::Test,
        channel_id: None,
    };
    let c = pool.get().await?;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(
            whatisup::store::channels::insert(
                &c,
                &p,
                &format!("{prefix}{i}"),
                &serde_json::json!({}),
                (None, None),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .id,
        );
    }
    Ok((keys, b.customer_id, ids))
}

/// A loopback webhook receiver for the benchmark: counts requests and, while `measure` is on, the latency from
/// the event's `occurred_at` to its arrival.
#[derive(Clone, Default)]
struct BenchSink {
    count: Arc<AtomicU64>,
    measure: Arc<std::sync::atomic::AtomicBool>,
    latencies: Arc<std::sync::Mutex<Vec<u32>>>,
}

async fn bench_sink(sink: BenchSink) -> anyhow::Result<String> {
    async fn handle(
        axum::extract::State(s): axum::extract::State<BenchSink>,
        body: axum::body::Bytes,
    ) -> &'static str {
        s.count.fetch_add(1, Ordering::Relaxed);
        if s.measure.load(Ordering::Relaxed)
            && let Ok(text) = std::str::from_utf8(&body)
            && let Some(us) = latency_us(text, chrono::Utc::now())
        {
            s.latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(us);
        }
        "ok"
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", l.local_addr()?);
    let app = axum::Router::new().fallback(handle).with_state(sink);
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok(url)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| {
            v.split_whitespace()
                .next()
                .and_then(|n| n.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Durable webhook delivery, in one process: the journal commits events (and their delivery rows), the real
/// dispatcher sends them to loopback receivers. Beside it, the raw rate of the same receivers (plain keep-alive
/// POSTs, same concurrency cap) as the baseline.
async fn webhooks(args: &[String]) -> anyhow::Result<()> {
    use whatisup::events::{Journal, Op};
    let receivers: Vec<usize> = arg(args, "--receivers", "1,10")
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let deliveries: u64 = arg(args, "--deliveries", "20000").parse()?;
    let rate: u64 = arg(args, "--rate", "1000").parse()?;
    let secs: u64 = arg(args, "--seconds", "20").parse()?;
    let backlog: u64 = arg(args, "--backlog", "100000").parse()?;
    let soak: u64 = arg(args, "--soak-secs", "0").parse()?;
    let db = BenchDb::new();
    let pool = whatisup::store::connect(&db.url, 16).await?;
    let (keys, customer_id, ids) = customer_with_channels(&pool, 100, "w").await?;
    let metrics = Arc::new(whatisup::metrics::Metrics::new());
    let journal = Journal::spawn(&db.url, metrics.clone())?;
    let hub = Arc::new(whatisup::events::Hub::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let (cmd_tx, _cmd_rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(whatisup::events::hub::run(
        hub.clone(),
        pool.clone(),
        db.url.clone(),
        cmd_tx,
        metrics.clone(),
        stop.clone(),
    ));
    let mut cfg = whatisup::config::Config::from_env();
    cfg.webhook_allow_cidrs = "127.0.0.0/8".into();
    let settings = Arc::new(whatisup::webhooks::Settings::from_config(&cfg)?);
    let data = serde_json::json!({"message_id": "3EB0ABCDEF0123456789", "from": "+15550001111",
        "timestamp": "2026-11-26T12:00:00.000Z", "type": "text", "text": "benchmark"});
    // Events through the journal at `rate` per second (0: as fast as it takes them) until `n` are committed.
    let produce = |n: u64, rate: u64| {
        let (journal, ids, data) = (journal.clone(), ids.clone(), data.clone());
        async move {
            let start = tokio::time::Instant::now();
            let sem = Arc::new(tokio::sync::Semaphore::new(1000));
            // No JoinHandle is kept per event: a finished task stays allocated while its handle lives, which
            // made the soak's RSS grow ≈2 KiB per event. The permits say when all are done.
            for i in 0..n {
                if let Some(us) = (i * 1_000_000).checked_div(rate) {
                    tokio::time::sleep_until(start + Duration::from_micros(us)).await;
                }
                let permit = sem.clone().acquire_owned().await?;
                let op = Op {
                    channel_id: ids[i as usize % ids.len()].clone(),
                    events: vec![("message.received", data.clone())],
                    ..Default::default()
                };
                let journal = journal.clone();
                tokio::spawn(async move {
                    let _ = journal.submit(op).await;
                    drop(permit);
                });
            }
            drop(sem.acquire_many(1000).await?);
            anyhow::Ok(())
        }
    };
    let sinks_for = |n: usize| async move {
        let mut out = Vec::new();
        for _ in 0..n {
            let s = BenchSink::default();
            let url = bench_sink(s.clone()).await?;
            out.push((s, url));
        }
        anyhow::Ok(out)
    };
    let total = |sinks: &[(BenchSink, String)]| -> u64 {
        sinks
            .iter()
            .map(|(s, _)| s.count.load(Ordering::Relaxed))
            .sum()
    };
    let add_endpoints = |sinks: Vec<(BenchSink, String)>| {
        let (pool, keys, customer) = (pool.clone(), keys.clone(), customer_id.clone());
        async move {
            let c = pool.get().await?;
            c.execute("UPDATE webhook_endpoints SET enabled = false", &[])
                .await?;
            for (_, url) in &sinks {
                let id = whatisup::store::new_id("we");
                let (key, _) = whatisup::webhooks::signing::new_secret();
                let (kid, sealed) = keys.seal(id.as_bytes(), &key);
                c.execute(
                    "INSERT INTO webhook_endpoints (id, customer_id, mode, url, secret_kid, secret_sealed)
                     VALUES ($1, $2, 'test', $3, $4, $5)",
                    &[&id, &customer, url, &kid, &sealed],
                )
                .await?;
            }
            anyhow::Ok(sinks)
        }
    };

    // The dispatcher starts paused (no claims until the backlog is written) by starting it later.
    let mut dispatcher_stop: Option<tokio_util::sync::CancellationToken> = None;
    let start_dispatcher = |stop: &tokio_util::sync::CancellationToken| -> anyhow::Result<()> {
        let d = whatisup::webhooks::dispatcher::Dispatcher::new(
            pool.clone(),
            settings.clone(),
            keys.clone(),
            metrics.clone(),
            "bench".into(),
            hub.webhooks.clone(),
        )?;
        tokio::spawn(d.run(stop.clone()));
        Ok(())
    };
    for &r in &receivers {
        if let Some(s) = dispatcher_stop.take() {
            s.cancel();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let sinks = sinks_for(r).await?;
        // Baseline: plain keep-alive POSTs of a same-sized body, `per_host` at a time per receiver.
        let client = http();
        let body = serde_json::json!({"event": "message.received", "event_id": whatisup::store::new_id("evt"),
            "api_version": "2026-04", "channel_id": ids[0], "sequence": 1, "occurred_at": "2026-11-26T12:00:00.000Z",
            "data": data}).to_string();
        let t = Instant::now();
        let per = settings.per_host;
        let mut tasks = Vec::new();
        for (_, url) in &sinks {
            for _ in 0..per {
                let (c, url, body) = (client.clone(), url.clone(), body.clone());
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    while t.elapsed() < Duration::from_secs(5) {
                        if c.post(&url).body(body.clone()).send().await.is_ok() {
                            n += 1;
                        }
                    }
                    n
                }));
            }
        }
        let mut raw = 0;
        for t in tasks {
            raw += t.await.unwrap_or(0);
        }
        let raw_rate = raw as f64 / t.elapsed().as_secs_f64();

        let sinks = add_endpoints(sinks).await?;
        let base = total(&sinks);
        produce(deliveries / r as u64, 0).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let t = Instant::now();
        start_dispatcher(&stop)?;
        let want = base + (deliveries / r as u64) * r as u64;
        while total(&sinks) < want {
            if t.elapsed() > Duration::from_secs(600) {
                bail!("deliveries did not finish: {} of {want}", total(&sinks));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = t.elapsed().as_secs_f64();
        println!(
            "webhooks: {r} receiver(s): {:.0} deliveries/s durable ({} deliveries in {took:.1} s); raw loopback HTTP \
             {raw_rate:.0} requests/s to the same receivers",
            (want - base) as f64 / took,
            want - base
        );
        dispatcher_stop = Some(stop);
    }

    // Latency at a steady rate, one receiver.
    if let Some(s) = dispatcher_stop.take() {
        s.cancel();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sinks = add_endpoints(sinks_for(1).await?).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    start_dispatcher(&stop)?;
    sinks[0].0.measure.store(true, Ordering::Relaxed);
    let base = total(&sinks);
    produce(rate * secs, rate).await?;
    let t = Instant::now();
    while total(&sinks) < base + rate * secs && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = sinks[0]
        .0
        .latencies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    lat.sort_unstable();
    let q = |f: f64| {
        lat.get(((lat.len() as f64 * f) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "webhooks: {rate} events/s for {secs} s: event commit → receiver p50 {:.1} ms, p99 {:.1} ms ({} samples)",
        q(0.5) as f64 / 1000.0,
        q(0.99) as f64 / 1000.0,
        lat.len()
    );
    sinks[0].0.measure.store(false, Ordering::Relaxed);

    // Memory over a soak at the same rate.
    if soak > 0 {
        let mut samples = Vec::new();
        let t = Instant::now();
        let producer = tokio::spawn(produce(rate * soak, rate));
        while t.elapsed() < Duration::from_secs(soak) {
            samples.push(rss_mib());
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let _ = producer.await;
        let max = samples.iter().copied().fold(0.0, f64::max);
        println!(
            "webhooks: soak {soak} s at {rate}/s: RSS first {:.0} MiB, last {:.0} MiB, max {max:.0} MiB",
            samples.first().copied().unwrap_or(0.0),
            samples.last().copied().unwrap_or(0.0)
        );
    }

    // Catch-up: a receiver outage leaves a backlog; how long it takes to drain once the dispatcher runs again.
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = total(&sinks);
    produce(backlog, 0).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let t = Instant::now();
    start_dispatcher(&stop)?;
    while total(&sinks) < base + backlog {
        if t.elapsed() > Duration::from_secs(1800) {
            bail!("backlog did not drain");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "webhooks: backlog of {backlog} deliveries drained in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    stop.cancel();
    drop(journal);
    pool.close();
    db.drop_db().await;
    Ok(())
}

/// The outbox on one node (sandbox, pacing off):
/// 1. durable sends accepted per second and the accept latency (p50/p99), while the channel is away (nothing
///    drains), beside the raw single-row INSERT rate of the same database at the same concurrency;
/// 2. the drain rate into the sandbox after a restart (every accepted message sent once);
/// 3. accept → `message.sent` latency on a connected channel at a steady rate.
async fn count_sent(pg: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(pg
        .query_one(
            "SELECT count(*) FROM messages WHERE status <> 'queued'",
            &[],
        )
        .await?
        .get(0))
}

async fn messages(args: &[String]) -> anyhow::Result<()> {
    let n: usize = arg(args, "--messages", "20000").parse()?;
    let conc: usize = arg(args, "--conc", "64").parse()?;
    let lat_n: usize = arg(args, "--latency-messages", "2000").parse()?;
    let lat_rate: u64 = arg(args, "--latency-rate", "200").parse()?;
    let db = BenchDb::new();
    let env: &[(&str, &str)] = &[
        ("WHATISUP_SEND_RATE_PER_SEC", "0"),
        ("WHATISUP_OUTBOX_MAX_PER_CHANNEL", "100000000"),
        ("WHATISUP_LEASE_TTL_MS", "2000"),
        ("WHATISUP_LEASE_SCAN_MS", "100"),
    ];
    let gw = Gateway::spawn(&db, env).await?;
    let key = gw.test_key.clone().context("bootstrap key")?;
    let pg = db.client().await?;
    let ids = connect_channels(&gw, &key, 1, 1).await?;
    wait_connected(&pg, 1, Duration::from_secs(30)).await?;
    let ch = ids[0].clone();
    let c = http();
    post(
        &c,
        format!("{}/v1/channels/{ch}/sandbox/drop", gw.base),
        &key,
        serde_json::json!({"duration_ms": 600000}),
    )
    .await?;

    // 1. Accepts.
    let url = format!("{}/v1/channels/{ch}/messages", gw.base);
    let t = Instant::now();
    let lats: Vec<anyhow::Result<u32>> = futures::stream::iter(0..n)
        .map(|i| {
            let (c, url, key) = (c.clone(), url.clone(), key.clone());
            async move {
                let t = Instant::now();
                post(
                    &c,
                    url,
                    &key,
                    serde_json::json!({"to": "+15551230000", "type": "text", "text": format!("bench {i}")}),
                )
                .await?;
                Ok(t.elapsed().as_micros() as u32)
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    let accept_secs = t.elapsed().as_secs_f64();
    let mut lat = Lat(lats.into_iter().collect::<anyhow::Result<Vec<_>>>()?);
    println!(
        "accept: {n} durable sends in {accept_secs:.2} s = {:.0}/s at concurrency {conc}; latency p50 {:.2} ms, p99 {:.2} ms",
        n as f64 / accept_secs,
        lat.pct(0.5),
        lat.pct(0.99)
    );
    // The same database, the same concurrency, one single-row INSERT per commit: the ceiling for comparison.
    pg.batch_execute(
        "CREATE TABLE bench_raw (id text PRIMARY KEY, channel_id text, body jsonb, created_at timestamptz DEFAULT now())",
    )
    .await?;
    let mut conns = Vec::new();
    for _ in 0..conc.min(64) {
        conns.push(Arc::new(db.client().await?));
    }
    let t = Instant::now();
    let done: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let conn = conns[i % conns.len()].clone();
            let ch = ch.clone();
            async move {
                conn.execute(
                    "INSERT INTO bench_raw (id, channel_id, body) VALUES ($1, $2, $3)",
                    &[
                        &format!("raw_{i}"),
                        &ch,
                        &serde_json::json!({"text": format!("bench {i}")}),
                    ],
                )
                .await?;
                Ok(())
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    done.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let raw_secs = t.elapsed().as_secs_f64();
    println!(
        "raw INSERT (same database, concurrency {}): {n} rows in {raw_secs:.2} s = {:.0}/s",
        conns.len(),
        n as f64 / raw_secs
    );

    // 2. Drain after a restart (the simulated network is up again in the new process).
    gw.terminate().await?;
    let t = Instant::now();
    let gw = Gateway::spawn(&db, env).await?;
    while count_sent(&pg).await? < n as i64 {
        if t.elapsed() > Duration::from_secs(600) {
            bail!("only {} of {n} sent after 600 s", count_sent(&pg).await?);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_secs = t.elapsed().as_secs_f64();
    let row = pg
        .query_one(
            "SELECT count(*), coalesce(sum(duplicates), 0)::int8 FROM sandbox_accepted",
            &[],
        )
        .await?;
    let (accepted, dups): (i64, i64) = (row.get(0), row.get(1));
    println!(
        "drain: {n} sent in {drain_secs:.2} s from the restart = {:.0}/s; the sandbox accepted {accepted} ({dups} repeats)",
        n as f64 / drain_secs
    );

    // 3. Accept → message.sent. The restarted gateway listens on a new port (posting to the old one was the
    // "error sending request" of the first run).
    let url = format!("{}/v1/channels/{ch}/messages", gw.base);
    let key = key.clone();
    let sent_at: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let lat3: Arc<std::sync::Mutex<Lat>> = Arc::default();
    let posted: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/v1/events?channel_id={ch}&events=message.sent",
            gw.base
        ))
        .bearer_auth(&key)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("sse: {}", resp.status());
    }
    let reader = {
        let (sent_at, posted, lat3) = (sent_at.clone(), posted.clone(), lat3.clone());
        tokio::spawn(async move {
            let mut stream = resp.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(chunk)) = stream.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let Some(i) = block.find("\"message_id\":\"") else {
                        continue;
                    };
                    let id: String = block[i + 14..].chars().take_while(|c| *c != '"').collect();
                    let now = Instant::now();
                    match posted.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
                        Some(t) => lat3
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                            .push(now.duration_since(*t).as_micros() as u32),
                        None => {
                            sent_at
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(id, now);
                        }
                    }
                }
            }
        })
    };
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / lat_rate.max(1)));
    let mut tasks = Vec::with_capacity(lat_n);
    for i in 0..lat_n {
        tick.tick().await;
        let (c, url, key, posted, sent_at, lat3) = (
            c.clone(),
            url.clone(),
            key.clone(),
            posted.clone(),
            sent_at.clone(),
            lat3.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = post(
                &c,
                url,
                &key,
                serde_json::json!({"to": "+15551230000", "type": "text", "text": format!("latency {i}")}),
            )
            .await?;
            let id = r["message_id"].as_str().unwrap_or_default().to_string();
            // The event may have come before the answer.
            let early = sent_at.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            match early {
                Some(at) => lat3
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .0
                    .push(at.saturating_duration_since(t).as_micros() as u32),
                None => {
                    posted.lock().unwrap_or_else(|e| e.into_inner()).insert(id, t);
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let t = Instant::now();
    while lat3.lock().unwrap_or_else(|e| e.into_inner()).0.len() < lat_n {
        if t.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    let mut l = std::mem::take(&mut *lat3.lock().unwrap_or_else(|e| e.into_inner()));
    println!(
        "accept → message.sent at {lat_rate}/s: {} of {lat_n} seen; p50 {:.2} ms, p99 {:.2} ms",
        l.0.len(),
        l.pct(0.5),
        l.pct(0.99)
    );
    gw.terminate().await?;
    db.drop_db().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("sessions") => sessions(&args).await,
        Some("fanout") => fanout(&args).await,
        Some("fanout-scale") => fanout_scale(&args).await,
        Some("journal") => journal(&args).await,
        Some("wa") => wa(&args).await,
        Some("webhooks") => webhooks(&args).await,
        Some("messages") => messages(&args).await,
        _ => {
            eprintln!(
                "usage: whatisup-bench sessions|fanout|fanout-scale|journal|wa|webhooks|messages [options] (see the file header)"
            );
            std::process::exit(2);
        }
    }
}

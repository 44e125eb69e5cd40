//! Test harness: a fresh PostgreSQL database per test, real gateways (in-process on port 0, or the real binary
//! as a child process), real HTTP, SSE and gRPC clients.

use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use whatisup::config::Config;

pub const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub fn pg_base() -> String {
    std::env::var("WHATISUP_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// A database of its own for one test; dropped by `drop_db` (a failed test leaves it for inspection).
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        let name = format!(
            "whatisup_t_{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        TestDb {
            url: format!("{}/{}", pg_base(), name),
            name,
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect test db");
        tokio::spawn(conn);
        c
    }

    pub async fn drop_db(self) {
        let (c, conn) =
            tokio_postgres::connect(&format!("{}/postgres", pg_base()), tokio_postgres::NoTls)
                .await
                .expect("connect postgres");
        tokio::spawn(conn);
        let _ = c
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

/// Fast timings so that tests take seconds.
pub fn test_config(db: &TestDb) -> Config {
    let mut c = Config::from_env();
    c.database_url = db.url.clone();
    c.database_pool = 8;
    c.master_key = Some(MASTER_KEY.to_string());
    c.data_dir = std::env::temp_dir().join("whatisup-tests");
    c.lease_ttl_ms = 2_000;
    c.lease_scan_ms = 200;
    c.reconnect_base_ms = 50;
    c.reconnect_max_ms = 400;
    c.reconnect_max_attempts = 50;
    c.sandbox_connect_ms = 20;
    c.sandbox_qr_ttl_ms = 3_000;
    c.sandbox_qr_count = 3;
    c.print_bootstrap_keys = false;
    c.wa_url = NO_WHATSAPP.to_string();
    c
}

/// A loopback endpoint nothing listens on (the discard port), for tests that use no WhatsApp server.
pub const NO_WHATSAPP: &str = "ws://127.0.0.1:9/ws/chat";

pub struct Keys {
    pub customer_id: String,
    pub live: String,
    pub test: String,
}

/// A gateway running in this process.
pub struct Gw {
    pub base: String,
    pub running: whatisup::Running,
}

impl Gw {
    pub async fn start(cfg: Config) -> Gw {
        // Logs only when asked for (RUST_LOG=...), to debug a failing test.
        if std::env::var_os("RUST_LOG").is_some() {
            whatisup::init_tracing(whatisup::config::LogFormat::Human);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let running = whatisup::start(cfg, listener)
            .await
            .expect("gateway starts");
        Gw {
            base: format!("http://{}", running.addr),
            running,
        }
    }

    /// A new customer with a live and a test key.
    pub async fn customer(&self, name: &str) -> Keys {
        let b = whatisup::store::customers::create(
            &self.running.app.pool,
            &self.running.app.keys,
            name,
        )
        .await
        .expect("create customer");
        Keys {
            customer_id: b.customer_id,
            live: b.live_key,
            test: b.test_key,
        }
    }

    pub async fn stop(self) {
        self.running.shutdown().await.expect("clean shutdown");
    }
}

/// A small REST client that returns (status, JSON body) and checks the envelope on errors.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, key: &str) -> Api {
        Api {
            base: base.to_string(),
            key: key.to_string(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if !self.key.is_empty() {
            rb = rb.bearer_auth(&self.key);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("request");
        let status = resp.status().as_u16();
        assert!(
            resp.headers().contains_key("x-request-id"),
            "every response has X-Request-Id"
        );
        assert!(
            resp.headers().contains_key("x-ratelimit-limit"),
            "every response has rate-limit headers"
        );
        let text = resp.text().await.expect("body");
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            assert!(json["error"]["code"].is_string(), "error envelope: {json}");
            assert!(
                json["error"]["message"].is_string(),
                "error envelope: {json}"
            );
            assert!(
                json["request_id"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("req_")),
                "request_id: {json}"
            );
        }
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    pub async fn create_channel(&self, name: &str) -> String {
        let (s, ch) = self
            .post("/v1/channels", serde_json::json!({"name": name}))
            .await;
        assert_eq!(s, 201, "{ch}");
        ch["id"].as_str().expect("id").to_string()
    }

    pub async fn channel(&self, id: &str) -> Value {
        let (s, ch) = self.get(&format!("/v1/channels/{id}")).await;
        assert_eq!(s, 200, "{ch}");
        ch
    }

    /// Polls until the channel has `status` (events are the real signal; this is for the final state).
    pub async fn wait_status(&self, id: &str, status: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (s, ch) = self.get(&format!("/v1/channels/{id}")).await;
            // A long wait on a loaded machine may spend the key's request burst: the gateway's rate limit is
            // real, so back off as a client would.
            if s == 429 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            assert_eq!(s, 200, "{ch}");
            if ch["status"] == status {
                return ch;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("channel {id} did not reach {status} within {within:?}: {ch}");
            }
            // At most 20 polls/s: the default limit refills 10/s from a burst of 600.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Create, show the QR, scan: a connected sandbox channel.
    pub async fn connected_channel(&self, name: &str) -> String {
        let id = self.create_channel(name).await;
        let (s, qr) = self.get(&format!("/v1/channels/{id}/qr?wait=10")).await;
        assert_eq!(s, 200, "{qr}");
        let (s, r) = self
            .post(
                &format!("/v1/channels/{id}/sandbox/scan"),
                serde_json::json!({}),
            )
            .await;
        assert_eq!(s, 200, "{r}");
        self.wait_status(&id, "connected", Duration::from_secs(10))
            .await;
        id
    }
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// An SSE client: frames arrive on a channel as they are parsed.
pub struct Sse {
    rx: mpsc::UnboundedReceiver<Frame>,
    pub comments: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sse {
    pub async fn open(base: &str, query: &str, key: &str, last_event_id: Option<&str>) -> Sse {
        let mut rb = reqwest::Client::new()
            .get(format!("{base}/v1/events?{query}"))
            .bearer_auth(key);
        if let Some(id) = last_event_id {
            rb = rb.header("Last-Event-ID", id);
        }
        let resp = rb.send().await.expect("sse connect");
        assert_eq!(resp.status(), 200, "sse status");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Sse::from_response(resp)
    }

    pub fn from_response(resp: reqwest::Response) -> Sse {
        let (tx, rx) = mpsc::unbounded_channel();
        let comments = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c2 = comments.clone();
        let task = tokio::spawn(async move {
            use futures::StreamExt;
            let mut stream = resp.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(chunk)) = stream.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let (mut id, mut event, mut data) =
                        (None, String::from("message"), String::new());
                    for line in block.lines() {
                        if line.starts_with(':') {
                            c2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        } else if let Some(v) = line.strip_prefix("id:") {
                            id = Some(v.trim().to_string());
                        } else if let Some(v) = line.strip_prefix("event:") {
                            event = v.trim().to_string();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim_start());
                        }
                    }
                    if !data.is_empty() {
                        let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                        if tx.send(Frame { id, event, data }).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Sse { rx, comments, task }
    }

    pub async fn next(&mut self, within: Duration) -> Option<Frame> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Frames until (and including) the first that satisfies `done`.
    pub async fn until(&mut self, within: Duration, done: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(f) => {
                    let stop = done(&f);
                    out.push(f);
                    if stop {
                        return out;
                    }
                }
                None => panic!(
                    "stream ended or timed out; got {:#?}",
                    out.iter().map(|f| (&f.event, &f.data)).collect::<Vec<_>>()
                ),
            }
        }
    }
}

/// The transitions (from, to, reason) in a list of frames.
pub fn transitions(frames: &[Frame]) -> Vec<(String, String, Value)> {
    frames
        .iter()
        .filter(|f| f.event == "channel.status_changed")
        .map(|f| {
            (
                f.data["data"]["from"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                f.data["data"]["to"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                f.data["data"]["reason"].clone(),
            )
        })
        .collect()
}

pub fn is_status(to: &'static str) -> impl Fn(&Frame) -> bool {
    move |f: &Frame| f.event == "channel.status_changed" && f.data["data"]["to"] == to
}

/// The gateway binary as a child process (for restarts, kill -9 and several nodes).
pub struct Proc {
    pub child: tokio::process::Child,
    pub base: String,
    pub stdout: mpsc::UnboundedReceiver<String>,
}

impl Proc {
    pub async fn spawn(db: &TestDb, node_id: &str, extra: &[(&str, &str)]) -> Proc {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        Proc::spawn_on(db, node_id, port, extra).await
    }

    /// On a given port (a restart that clients reconnect to).
    pub async fn spawn_on(db: &TestDb, node_id: &str, port: u16, extra: &[(&str, &str)]) -> Proc {
        let data_dir = std::env::temp_dir().join("whatisup-tests");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_whatisup"));
        cmd.arg("serve")
            .env("WHATISUP_DATABASE_URL", &db.url)
            .env("WHATISUP_LISTEN", format!("127.0.0.1:{port}"))
            .env("WHATISUP_MASTER_KEY", MASTER_KEY)
            .env("WHATISUP_DATA_DIR", &data_dir)
            .env("WHATISUP_NODE_ID", node_id)
            .env("WHATISUP_LEASE_TTL_MS", "2000")
            .env("WHATISUP_LEASE_SCAN_MS", "200")
            .env("WHATISUP_RECONNECT_BASE_MS", "50")
            .env("WHATISUP_RECONNECT_MAX_MS", "400")
            .env("WHATISUP_SANDBOX_CONNECT_MS", "20")
            .env("WHATISUP_SANDBOX_QR_TTL_MS", "5000")
            // Nothing listens there: a build with `fake-whatsapp` only accepts loopback endpoints.
            .env("WHATISUP_WA_URL", NO_WHATSAPP)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn whatisup");
        let (tx, stdout) = mpsc::unbounded_channel();
        let out = child.stdout.take().expect("stdout");
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
                && r.status() == 200
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Proc {
            child,
            base,
            stdout,
        }
    }

    /// The bootstrap keys printed on first start.
    pub async fn bootstrap_keys(&mut self) -> (String, String) {
        let (mut live, mut test) = (None, None);
        while live.is_none() || test.is_none() {
            let line = tokio::time::timeout(Duration::from_secs(5), self.stdout.recv())
                .await
                .expect("bootstrap keys printed")
                .expect("stdout open");
            if let Some(k) = line.trim().strip_prefix("live key: ") {
                live = Some(k.to_string());
            }
            if let Some(k) = line.trim().strip_prefix("test key: ") {
                test = Some(k.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
        (live.unwrap_or_default(), test.unwrap_or_default())
    }

    /// SIGTERM, and the exit status (the contract: exit 0 within 10 s).
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("pid") as i32;
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("exits within 10 s")
            .expect("wait")
    }

    /// Waits for the process to end by itself (e.g. an injected crash).
    pub async fn exited(mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the process ends in time")
            .expect("wait")
    }

    pub async fn kill9(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A gRPC request with `authorization: Bearer <key>`.
pub fn authed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ascii key"),
    );
    r
}

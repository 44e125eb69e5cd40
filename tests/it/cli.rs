use crate::util::*;
use std::process::Command;

const T: std::time::Duration = std::time::Duration::from_secs(30);

fn whatisup(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_whatisup"))
        .args(args)
        .env("WHATISUP_DATABASE_URL", &db.url)
        .env("WHATISUP_MASTER_KEY", MASTER_KEY)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run whatisup");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The contract's commands: migrate, customers create, keys create (test, bound to a channel), --help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_customers_and_keys_from_the_command_line() {
    let db = TestDb::new();
    let (ok, out, err) = whatisup(&db, &["migrate"]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = whatisup(&db, &["--help"]);
    assert!(ok && out.contains("serve") && out.contains("keys") && out.contains("customers"));

    let (ok, out, err) = whatisup(&db, &["customers", "create", "Shop Ltd"]);
    assert!(ok, "{err}");
    let field = |out: &str, name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let customer = field(&out, "customer:");
    let live = field(&out, "live key:");
    assert!(
        customer.starts_with("cus_") && live.starts_with("zpk_live_"),
        "{out}"
    );

    let (ok, secret, err) = whatisup(
        &db,
        &[
            "keys",
            "create",
            "--name",
            "ci",
            "--test",
            "--customer",
            &customer,
        ],
    );
    assert!(ok, "{err}");
    let secret = secret.trim().to_string();
    assert!(secret.starts_with("zpk_test_"), "{secret}");
    let (ok, _, err) = whatisup(
        &db,
        &["keys", "create", "--name", "x", "--customer", "cus_nope"],
    );
    assert!(!ok && err.contains("no such customer"), "{err}");

    let gw = Gw::start(test_config(&db)).await;
    let api = Api::new(&gw.base, &secret);
    let id = api.create_channel("from cli key").await;
    let (ok, bound, err) = whatisup(
        &db,
        &[
            "keys",
            "create",
            "--name",
            "bound",
            "--test",
            "--customer",
            &customer,
            "--channel",
            &id,
        ],
    );
    assert!(ok, "{err}");
    let bound = Api::new(&gw.base, bound.trim());
    assert_eq!(bound.get(&format!("/v1/channels/{id}")).await.0, 200);
    assert_eq!(
        bound
            .post("/v1/channels", serde_json::json!({"name": "no"}))
            .await
            .0,
        403
    );
    // A live key of the same customer does not see the test channel.
    assert_eq!(
        Api::new(&gw.base, &live)
            .get(&format!("/v1/channels/{id}"))
            .await
            .0,
        404
    );
    let (ok, _, err) = whatisup(
        &db,
        &[
            "keys",
            "create",
            "--name",
            "wrong mode",
            "--customer",
            &customer,
            "--channel",
            &id,
        ],
    );
    assert!(!ok, "a live key cannot be bound to a test channel: {err}");
    gw.stop().await;
    db.drop_db().await;
}

/// The client commands' result: exit code, stdout, stderr.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "not one JSON document ({e}): {}{}",
                self.stdout, self.stderr
            )
        })
    }
}

fn client_cmd(base: &str, key: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_whatisup"));
    cmd.args(args)
        .env("WHATISUP_SERVER", base)
        .env_remove("WHATISUP_API_KEY")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if !key.is_empty() {
        cmd.env("WHATISUP_API_KEY", key);
    }
    cmd
}

/// Runs a client command to its end (at most 60 s).
async fn cli(base: &str, key: &str, args: &[&str]) -> Out {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        client_cmd(base, key, args).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("whatisup {args:?} did not end"))
    .expect("run whatisup");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// A client command left running: its stdout and stderr lines arrive as they are printed.
struct Running {
    child: tokio::process::Child,
    stdout: tokio::sync::mpsc::UnboundedReceiver<String>,
    stderr: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Running {
    fn spawn(base: &str, key: &str, args: &[&str]) -> Running {
        use tokio::io::AsyncBufReadExt;
        let mut child = client_cmd(base, key, args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn whatisup");
        let lines = |r: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut l = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = l.next_line().await {
                    let _ = tx.send(line);
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().expect("stdout")));
        let stderr = lines(Box::new(child.stderr.take().expect("stderr")));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(std::time::Duration::from_secs(30), self.stdout.recv())
            .await
            .expect("a line within 30 s")
            .expect("stdout open")
    }

    /// Waits for a stderr line containing `what`.
    async fn note(&mut self, what: &str) -> String {
        loop {
            let l = tokio::time::timeout(std::time::Duration::from_secs(30), self.stderr.recv())
                .await
                .unwrap_or_else(|_| panic!("no stderr line with {what:?} within 30 s"))
                .expect("stderr open");
            if l.contains(what) {
                return l;
            }
        }
    }

    async fn exit_code(&mut self) -> i32 {
        tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait())
            .await
            .expect("ends within 30 s")
            .expect("wait")
            .code()
            .unwrap_or(-1)
    }
}

/// The modules of a QR code drawn with half blocks (every line made only of the four block characters), the
/// quiet zone left in.
fn drawn_modules(text: &str) -> Vec<Vec<bool>> {
    let mut rows = Vec::new();
    for l in text.lines() {
        if l.is_empty() || !l.chars().all(|c| matches!(c, '█' | '▀' | '▄' | ' ')) {
            continue;
        }
        let (mut top, mut bottom) = (Vec::new(), Vec::new());
        for c in l.chars() {
            top.push(matches!(c, '█' | '▀'));
            bottom.push(matches!(c, '█' | '▄'));
        }
        rows.push(top);
        rows.push(bottom);
    }
    rows
}

/// The modules of `data` as the qrcode crate encodes it, with a light quiet zone of `quiet` modules.
fn expected_modules(data: &str, quiet: usize) -> Vec<Vec<bool>> {
    let code = qrcode::QrCode::new(data.as_bytes()).expect("encodable");
    let w = code.width();
    let colors = code.to_colors();
    let side = w + 2 * quiet;
    (0..side)
        .map(|y| {
            (0..side)
                .map(|x| {
                    let inside = (quiet..quiet + w).contains(&x) && (quiet..quiet + w).contains(&y);
                    !inside || colors[(y - quiet) * w + (x - quiet)] == qrcode::Color::Light
                })
                .collect()
        })
        .collect()
}

/// The client commands against a real gateway: channels (JSON equal to REST), the QR drawn in the terminal and
/// watched until the sandbox scan connects the channel, send and messages get, events tail, webhooks, api-keys,
/// and the exit codes of errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_against_a_running_gateway() {
    let db = TestDb::new();
    let mut cfg = test_config(&db);
    // One QR code for the whole test: the drawn code is compared with the one REST shows.
    cfg.sandbox_qr_ttl_ms = 60_000;
    cfg.webhook_allow_cidrs = "127.0.0.0/8".into();
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("acme").await;
    let api = Api::new(&gw.base, &keys.test);
    let base = gw.base.as_str();
    let key = keys.test.as_str();

    // Errors: no key (usage), a wrong key (auth), an unknown channel (not found), a bad argument (usage).
    let o = cli(base, "", &["channels", "list"]).await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("WHATISUP_API_KEY"), "{}", o.stderr);
    // Well formed, unknown: the real key with its last character changed.
    let mut bad = key.to_string();
    let last = bad.pop().expect("a key");
    bad.push(if last == 'A' { 'B' } else { 'A' });
    let o = cli(base, &bad, &["channels", "list"]).await;
    assert_eq!(o.code, 4, "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("auth_invalid"), "{}", o.stderr);
    assert!(!o.stderr.contains(&bad), "the key is never printed");
    let o = cli(base, key, &["channels", "get", "ch_nope"]).await;
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("channel_not_found"), "{}", o.stderr);
    let o = cli(base, key, &["--json", "channels", "get", "ch_nope"]).await;
    assert_eq!(
        o.code, 2,
        "--json belongs to the client commands: {}",
        o.stderr
    );
    let o = cli(base, key, &["channels", "get", "ch_nope", "--json"]).await;
    assert_eq!(o.code, 3);
    let e: serde_json::Value = serde_json::from_str(o.stderr.trim()).expect("JSON error");
    assert_eq!(e["error"]["code"], "channel_not_found");
    let o = cli(base, key, &["send", "ch_x", "--to", "+15550001111"]).await;
    assert_eq!(o.code, 2, "no message kind: {}", o.stderr);
    let o = cli(base, key, &["channels", "create", ""]).await;
    assert_eq!(o.code, 2, "invalid_request: {}", o.stderr);
    assert!(o.stderr.contains("invalid_request"), "{}", o.stderr);
    let o = cli("http://127.0.0.1:9", key, &["channels", "list"]).await;
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("cannot reach the gateway"),
        "{}",
        o.stderr
    );

    // channels create / get / list: the JSON is the REST document.
    let o = cli(
        base,
        key,
        &[
            "channels",
            "create",
            "cli one",
            "--metadata",
            "team=ops",
            "--json",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let created = o.json();
    let id = created["id"].as_str().expect("id").to_string();
    assert_eq!(created["metadata"]["team"], "ops");
    assert_eq!(created, api.channel(&id).await);
    let o = cli(base, key, &["channels", "get", &id, "--json"]).await;
    assert_eq!(o.json(), api.channel(&id).await);
    let second = api.create_channel("cli two").await;
    let o = cli(base, key, &["channels", "list", "--json"]).await;
    assert_eq!(o.json(), api.get("/v1/channels").await.1);
    let o = cli(
        base,
        key,
        &["channels", "list", "--limit", "1", "--all", "--json"],
    )
    .await;
    let all = o.json();
    let ids: Vec<&str> = all["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec![second.as_str(), id.as_str()],
        "--all follows the pages"
    );
    let o = cli(base, key, &["channels", "list", "--status", "pending"]).await;
    assert_eq!(o.code, 0);
    let header = o.stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("ID") && header.contains("STATUS"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("pending")),
        "{}",
        o.stdout
    );

    // qr: a drawn code, the same code REST shows.
    let o = cli(base, key, &["channels", "qr", &id, "--wait", "10"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains('█') && o.stdout.contains("expires"),
        "{}",
        o.stdout
    );
    let (s, rest_qr) = api.get(&format!("/v1/channels/{id}/qr?wait=10")).await;
    assert_eq!(s, 200, "{rest_qr}");
    let raw = rest_qr["qr"].as_str().expect("qr");
    let (mut drawn, want) = (drawn_modules(&o.stdout), expected_modules(raw, 4));
    // An odd number of rows: the last line's lower half is blank.
    assert_eq!(drawn.len(), want.len() + want.len() % 2, "{}", o.stdout);
    drawn.truncate(want.len());
    assert!(
        drawn == want,
        "the drawn code is not the code REST shows:\n{}",
        o.stdout
    );
    let o = cli(base, key, &["channels", "qr", &id, "--json"]).await;
    let j = o.json();
    assert_eq!(j["qr"], raw);
    assert!(
        j["png"]
            .as_str()
            .is_some_and(|p| p.starts_with("data:image/png;base64,"))
    );

    // qr --watch ends when the simulated phone scans the code.
    let mut watch = Running::spawn(base, key, &["channels", "qr", &id, "--watch"]);
    loop {
        if watch.line().await.starts_with("expires") {
            break;
        }
    }
    let (s, r) = api
        .post(
            &format!("/v1/channels/{id}/sandbox/scan"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let code = watch.exit_code().await;
    let mut rest = Vec::new();
    while let Ok(l) = watch.stdout.try_recv() {
        rest.push(l);
    }
    assert_eq!(code, 0, "{rest:?}");
    assert!(rest.iter().any(|l| l == "connected"), "{rest:?}");
    api.wait_status(&id, "connected", std::time::Duration::from_secs(10))
        .await;

    // send → accepted, then sent; the tail started before it sees the message's events.
    let mut tail = Running::spawn(
        base,
        key,
        &[
            "events",
            "tail",
            "--channel",
            &id,
            "--events",
            "message.*",
            "--limit",
            "2",
            "--json",
        ],
    );
    tail.note("streaming").await;
    let o = cli(
        base,
        key,
        &[
            "send",
            &id,
            "--to",
            "+15550001111",
            "--text",
            "hello from the cli",
            "--json",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let accepted = o.json();
    let msg = accepted["message_id"]
        .as_str()
        .expect("message_id")
        .to_string();
    assert!(
        matches!(accepted["status"].as_str(), Some("queued" | "sent")),
        "{accepted}"
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let got = loop {
        let o = cli(base, key, &["messages", "get", &id, &msg, "--json"]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        let m = o.json();
        if m["status"] != "queued" {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "still queued: {m}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(got["status"], "sent", "{got}");
    assert_eq!(got["text"], "hello from the cli");
    assert_eq!(
        got,
        api.get(&format!("/v1/channels/{id}/messages/{msg}"))
            .await
            .1
    );
    let o = cli(base, key, &["messages", "get", &id, &msg]).await;
    assert!(
        o.stdout.contains("status") && o.stdout.contains("sent"),
        "{}",
        o.stdout
    );
    let o = cli(base, key, &["messages", "get", &id, "msg_nope"]).await;
    assert_eq!(o.code, 3, "{}", o.stderr);
    let mut tailed = Vec::new();
    for _ in 0..2 {
        let v: serde_json::Value = serde_json::from_str(&tail.line().await).expect("NDJSON");
        tailed.push(v);
    }
    assert_eq!(tail.exit_code().await, 0, "--limit 2 ends the tail");
    assert!(
        tailed.iter().all(|v| v["event"]["event"]
            .as_str()
            .is_some_and(|e| e.starts_with("message."))
            && v["event"]["data"]["message_id"] == msg.as_str()),
        "{tailed:?}"
    );
    assert!(
        tailed.iter().any(|v| v["event"]["event"] == "message.sent"),
        "{tailed:?}"
    );

    // --media-file uploads through MediaService.UploadMedia, then sends by media_id.
    let dir = tempfile::tempdir().expect("tempdir");
    let photo = dir.path().join("photo.jpg");
    let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&photo, &bytes).expect("write photo");
    let photo = photo.to_str().expect("utf-8 path");
    let o = cli(
        base,
        key,
        &[
            "send",
            &id,
            "--to",
            "+15550001111",
            "--image",
            "--media-file",
            photo,
            "--caption",
            "look",
            "--json",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let media_msg = o.json()["message_id"]
        .as_str()
        .expect("message_id")
        .to_string();
    let o = cli(base, key, &["messages", "get", &id, &media_msg, "--json"]).await;
    let m = o.json();
    assert_eq!(
        (m["type"].as_str(), m["caption"].as_str()),
        (Some("image"), Some("look")),
        "{m}"
    );
    assert_eq!(m["media"]["mime_type"], "image/jpeg");
    assert_eq!(m["media"]["size"], bytes.len());
    let o = cli(base, key, &["send", &id, "--to", "+15550001111", "--image"]).await;
    assert_eq!(o.code, 2, "an image needs a source: {}", o.stderr);

    let o = cli(
        base,
        key,
        &[
            "send",
            &id,
            "--to",
            "+15550001111",
            "--location",
            "-33.92,18.42",
            "--name",
            "Cape Town",
            "--json",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let loc = o.json()["message_id"]
        .as_str()
        .expect("message_id")
        .to_string();
    let m = cli(base, key, &["messages", "get", &id, &loc, "--json"])
        .await
        .json();
    assert_eq!(m["location"]["latitude"], -33.92, "{m}");
    let o = cli(
        base,
        key,
        &[
            "send",
            &id,
            "--to",
            "+15550001111",
            "--react",
            &msg,
            "--emoji",
            "👍",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("msg_"), "{}", o.stdout);

    // The whole log of the channel from cursor 0, in order, the same as SSE replays it.
    let mut sse = Sse::open(base, &format!("channel_id={id}"), key, Some("0")).await;
    let frames = sse.until(T, |f| f.event == "message.sent").await;
    let n = frames.len().to_string();
    let o = cli(
        base,
        key,
        &[
            "events",
            "tail",
            "--channel",
            &id,
            "--since",
            "0",
            "--limit",
            &n,
            "--json",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lines: Vec<serde_json::Value> = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert_eq!(lines.len(), frames.len());
    for (l, f) in lines.iter().zip(&frames) {
        assert_eq!(l["cursor"].as_str(), f.id.as_deref());
        assert_eq!(
            l["event"], f.data,
            "the stream's envelope is the SSE envelope"
        );
    }
    let o = cli(
        base,
        key,
        &[
            "events",
            "tail",
            "--channel",
            &id,
            "--since",
            "0",
            "--limit",
            "1",
        ],
    )
    .await;
    assert!(o.stdout.contains("channel.status_changed"), "{}", o.stdout);

    // Webhooks: create (the secret once), list, delete.
    let o = cli(
        base,
        key,
        &[
            "webhooks",
            "create",
            "http://127.0.0.1:9/hook",
            "--events",
            "message.*,channel.connected",
            "--json",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let ep = o.json();
    let ep_id = ep["id"].as_str().expect("id").to_string();
    assert!(
        ep["signing_secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_")),
        "{ep}"
    );
    assert_eq!(
        ep["events"],
        serde_json::json!(["message.*", "channel.connected"])
    );
    let o = cli(base, key, &["webhooks", "list", "--json"]).await;
    assert_eq!(o.json(), api.get("/v1/webhook-endpoints").await.1);
    let o = cli(base, key, &["webhooks", "list"]).await;
    assert!(
        o.stdout.contains(&ep_id) && !o.stdout.contains("whsec_"),
        "{}",
        o.stdout
    );
    let o = cli(base, key, &["webhooks", "get", &ep_id]).await;
    assert!(
        o.stdout.contains("127.0.0.1:9/hook") && !o.stdout.contains("whsec_"),
        "{}",
        o.stdout
    );
    let o = cli(
        base,
        key,
        &["webhooks", "update", &ep_id, "--disable", "--json"],
    )
    .await;
    assert_eq!(o.json()["enabled"], false);
    let o = cli(base, key, &["webhooks", "delete", &ep_id]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = cli(base, key, &["webhooks", "list", "--json"]).await;
    assert_eq!(o.json()["data"], serde_json::json!([]));
    let o = cli(base, key, &["webhooks", "get", &ep_id]).await;
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains("webhook_endpoint_not_found"),
        "{}",
        o.stderr
    );

    // API keys over the API: the secret once, a working key, deleted.
    let o = cli(base, key, &["api-keys", "create", "--name", "from cli"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let secret = o.stdout.trim().to_string();
    assert!(secret.starts_with("zpk_test_"), "{}", o.stdout);
    let o = cli(base, &secret, &["api-keys", "list", "--json"]).await;
    let listed = o.json();
    let new = listed["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|k| k["name"] == "from cli")
        .expect("listed")
        .clone();
    assert!(!o.stdout.contains(&secret));
    let o = cli(
        base,
        key,
        &["api-keys", "delete", new["id"].as_str().expect("id")],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = cli(base, &secret, &["channels", "list"]).await;
    assert_eq!(o.code, 4, "a deleted key: {}", o.stderr);

    gw.stop().await;
    db.drop_db().await;
}

/// `events tail` across a gateway restart (the binary, stopped with SIGTERM and started again on the same port and
/// database): every event comes out exactly once, both for a tail that had seen events and for one that had only
/// just started (it resumes from the cursor the stream's headers gave it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tail_resumes_across_a_gateway_restart() {
    let db = TestDb::new();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let mut gw = Proc::spawn_on(&db, "n1", port, &[]).await;
    let (_, key) = gw.bootstrap_keys().await;
    let base = gw.base.clone();
    let api = Api::new(&base, &key);
    let id = api.connected_channel("tail").await;
    let inbound = |api: Api, n: usize| {
        let id = id.clone();
        async move {
            let (s, r) = api
                .post(
                    &format!("/v1/channels/{id}/sandbox/inbound"),
                    serde_json::json!({"from": "+15550002222", "text": format!("m{n}")}),
                )
                .await;
            assert_eq!(s, 200, "{r}");
        }
    };
    let args = [
        "events",
        "tail",
        "--channel",
        &id,
        "--events",
        "message.received",
        "--json",
    ];
    let mut a = Running::spawn(&base, &key, &[&args[..], &["--limit", "6"]].concat());
    a.note("streaming").await;
    for n in 1..=3 {
        inbound(api.clone(), n).await;
    }
    let mut seen_a = Vec::new();
    for _ in 0..3 {
        seen_a.push(a.line().await);
    }
    // B starts live after those three: it has seen nothing when the gateway goes away.
    let mut b = Running::spawn(&base, &key, &[&args[..], &["--limit", "3"]].concat());
    b.note("streaming").await;

    assert!(gw.terminate().await.success());
    a.note("reconnecting").await;
    b.note("reconnecting").await;
    let gw = Proc::spawn_on(&db, "n1", port, &[]).await;
    api.wait_status(&id, "connected", std::time::Duration::from_secs(20))
        .await;
    for n in 4..=6 {
        inbound(api.clone(), n).await;
    }
    for _ in 0..3 {
        seen_a.push(a.line().await);
    }
    let mut seen_b = Vec::new();
    for _ in 0..3 {
        seen_b.push(b.line().await);
    }
    assert_eq!(a.exit_code().await, 0);
    assert_eq!(b.exit_code().await, 0);
    let texts = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("NDJSON");
                v["event"]["data"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(
        texts(&seen_a),
        ["m1", "m2", "m3", "m4", "m5", "m6"],
        "exactly once, in order"
    );
    assert_eq!(texts(&seen_b), ["m4", "m5", "m6"]);
    // Both ended at their limit, and no line was printed twice.
    assert!(a.stdout.try_recv().is_err() && b.stdout.try_recv().is_err());
    assert!(gw.terminate().await.success());
    db.drop_db().await;
}

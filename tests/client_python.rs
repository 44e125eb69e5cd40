//! The Python client (`clients/python`) against a real gateway in test mode.
//!
//! Starts the gateway binary on a fixed port with a fresh database, makes (or reuses) a virtualenv at
//! `target/pyenv-client` with pinned grpcio/grpcio-tools/protobuf/pytest, and runs `clients/python/tests` with
//! pytest. The Python suite drives the gateway through the client only; to prove that its event iterator resumes
//! across a dropped stream it asks this harness to restart the gateway: it writes `restart-N.request` (holding
//! `kill` or `term`) into the directory named by WHATISUP_TEST_CONTROL, this harness kills the process (SIGKILL
//! or SIGTERM), starts a new one on the same port and database, and answers with `restart-N.done`.
//!
//! Fails when any Python test fails, is skipped, or none ran; prints pytest's output.

#[path = "it/util.rs"]
#[allow(dead_code)]
mod util;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use util::{MASTER_KEY, NO_WHATSAPP, Proc, TestDb};

/// What the suite needs, pinned: the generated code requires grpcio >= the grpcio-tools that generated it, and
/// the committed `*_pb2.py` are compared with a fresh generation by exactly this grpcio-tools.
const PINS: &[&str] = &[
    "grpcio==1.85.3",
    "grpcio-tools==1.85.1",
    "protobuf==7.36.2",
    "pytest==9.2.0",
];

/// The whole Python suite must end within this (it takes well under a minute).
const SUITE_LIMIT: Duration = Duration::from_secs(420);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut std::process::Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `target/pyenv-client/bin/python`, with the pinned packages; made once, reused while the pins are unchanged.
fn venv() -> PathBuf {
    // The target directory is where cargo put the gateway binary (`<target>/debug/whatisup`).
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_whatisup"));
    let target = bin
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| repo().join("target"));
    let dir = target.join("pyenv-client");
    let python = dir.join("bin").join("python");
    let stamp = dir.join("whatisup-pins.txt");
    let want = PINS.join("\n");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return python;
    }
    // A half-made or outdated environment is made again from scratch; the stamp is written last.
    let _ = std::fs::remove_dir_all(&dir);
    let system_python = std::env::var("WHATISUP_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    run(
        std::process::Command::new(&system_python)
            .args(["-m", "venv"])
            .arg(&dir),
        "python3 -m venv target/pyenv-client (Debian: apt-get install python3-venv)",
    );
    run(
        std::process::Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
            ])
            .args(PINS),
        "pip install of the Python client's test requirements",
    );
    std::fs::write(&stamp, want).expect("write the venv stamp");
    python
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    l.local_addr().expect("addr").port()
}

/// The gateway binary on `port` (like `util::Proc::spawn`, whose port is random: a restarted gateway must answer
/// at the same target). The same node id lets the new process take its sessions back at once.
async fn spawn_gateway(db: &TestDb, port: u16) -> Proc {
    let data_dir = std::env::temp_dir().join("whatisup-tests");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_whatisup"))
        .arg("serve")
        .env("WHATISUP_DATABASE_URL", &db.url)
        .env("WHATISUP_LISTEN", format!("127.0.0.1:{port}"))
        .env("WHATISUP_MASTER_KEY", MASTER_KEY)
        .env("WHATISUP_DATA_DIR", &data_dir)
        .env("WHATISUP_NODE_ID", "py-client")
        .env("WHATISUP_LEASE_TTL_MS", "2000")
        .env("WHATISUP_LEASE_SCAN_MS", "200")
        .env("WHATISUP_RECONNECT_BASE_MS", "50")
        .env("WHATISUP_RECONNECT_MAX_MS", "400")
        .env("WHATISUP_SANDBOX_CONNECT_MS", "20")
        .env("WHATISUP_WA_URL", NO_WHATSAPP)
        // The webhook test's receiver listens on loopback; deliveries are picked up quickly.
        .env("WHATISUP_WEBHOOK_ALLOW_CIDRS", "127.0.0.0/8")
        .env("WHATISUP_WEBHOOK_POLL_MS", "100")
        // The suite makes a few hundred calls with one key, polling included: room for a slow machine.
        .env("WHATISUP_RATE_LIMIT_BURST", "5000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn whatisup");
    let (tx, stdout) = tokio::sync::mpsc::unbounded_channel();
    let out = child.stdout.take().expect("stdout");
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(out).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let _ = tx.send(l);
        }
    });
    let base = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
            && r.status() == 200
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway did not become ready on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Proc {
        child,
        base,
        stdout,
    }
}

/// Answers the suite's restart requests until aborted.
async fn control_loop(
    dir: PathBuf,
    db: Arc<TestDb>,
    port: u16,
    gw: Arc<tokio::sync::Mutex<Option<Proc>>>,
) {
    let mut n = 1u32;
    loop {
        let req = dir.join(format!("restart-{n}.request"));
        match std::fs::read_to_string(&req) {
            Ok(mode) => {
                let old = gw.lock().await.take();
                if let Some(old) = old {
                    match mode.trim() {
                        "term" => {
                            let status = old.terminate().await;
                            assert!(status.success(), "SIGTERM exit status: {status}");
                        }
                        _ => old.kill9().await,
                    }
                }
                let new = spawn_gateway(&db, port).await;
                *gw.lock().await = Some(new);
                std::fs::write(dir.join(format!("restart-{n}.done")), "ok")
                    .expect("write restart answer");
                n += 1;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn collect(
    mut r: impl AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_suite() {
    let python = tokio::task::spawn_blocking(venv).await.expect("venv");
    let db = Arc::new(TestDb::new());
    let port = free_port();
    let mut first = spawn_gateway(&db, port).await;
    let (_live, test_key) = first.bootstrap_keys().await;
    let gw = Arc::new(tokio::sync::Mutex::new(Some(first)));
    let control = tempfile::tempdir().expect("control dir");
    let controller = tokio::spawn(control_loop(
        control.path().to_path_buf(),
        db.clone(),
        port,
        gw.clone(),
    ));

    let client_dir = repo().join("clients").join("python");
    let mut child = tokio::process::Command::new(&python)
        .args(["-m", "pytest", "-ra", "-p", "no:cacheprovider", "tests"])
        .current_dir(&client_dir)
        .env("PYTHONPATH", client_dir.join("src"))
        // No __pycache__ in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("WHATISUP_TARGET", format!("127.0.0.1:{port}"))
        .env("WHATISUP_BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("WHATISUP_API_KEY", &test_key)
        .env("WHATISUP_TEST_CONTROL", control.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run pytest");
    let output = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        collect(child.stdout.take().expect("stdout"), output.clone()),
        collect(child.stderr.take().expect("stderr"), output.clone()),
    ];
    let status = tokio::time::timeout(SUITE_LIMIT, child.wait()).await;
    if status.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    // The readers finish once the pipes close (a grandchild holding them open cannot stall the test).
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
    }
    controller.abort();
    let controlled = controller.await;
    let text =
        String::from_utf8_lossy(&output.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    println!("---- pytest clients/python/tests ----\n{text}");

    if let Some(gw) = gw.lock().await.take() {
        gw.kill9().await;
    }
    if let Ok(db) = Arc::try_unwrap(db) {
        db.drop_db().await;
    }

    if let Err(e) = controlled
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
    let status = status.unwrap_or_else(|_| panic!("the Python suite ran over {SUITE_LIMIT:?}"));
    let status = status.expect("wait for pytest");
    assert!(
        status.success(),
        "the Python client's tests failed ({status}); output above"
    );
    let summary = text.lines().last().unwrap_or_default();
    assert!(
        summary.contains(" passed") && !summary.contains("skipped") && !summary.contains("failed"),
        "every Python test must run and pass: {summary}"
    );
}

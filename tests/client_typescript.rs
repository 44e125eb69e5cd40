//! The TypeScript client (clients/typescript) against a real gateway in test mode: this test installs its npm
//! dependencies when needed (`npm ci`), builds it (`buf generate` + `tsc`), and runs its node:test suite
//! (clients/typescript/test/) with the gateway's address and a test key. The suite asks for a gateway restart
//! through a file in WHATISUP_CONTROL_DIR (`restart-request`); this harness stops the gateway, starts it again on
//! the same port and database, and answers with `restart-done`, so the suite can prove its event stream resumes.

#[allow(dead_code)]
#[path = "it/util.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use util::{TestDb, test_config};
use whatisup::config::Config;

/// The whole suite, npm ci excluded, takes well under a minute; the cap is for a loaded machine.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

fn client_config(db: &TestDb) -> Config {
    let mut c = test_config(db);
    // The suite's webhook receiver listens on 127.0.0.1.
    c.webhook_allow_cidrs = "127.0.0.0/8".into();
    c.webhook_poll_ms = 100;
    c.sandbox_qr_ttl_ms = 10_000;
    c
}

async fn start_on(cfg: &Config, addr: std::net::SocketAddr) -> whatisup::Running {
    // The port was just released by the previous gateway; give the kernel a moment if it still holds it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    };
    whatisup::start(cfg.clone(), listener)
        .await
        .expect("gateway starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_client_against_a_real_gateway() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/typescript");
    require_tool("node");
    require_tool("npm");
    npm_ci_if_needed(&dir);
    build(&dir);

    if std::env::var_os("RUST_LOG").is_some() {
        whatisup::init_tracing(whatisup::config::LogFormat::Human);
    }
    let db = TestDb::new();
    let cfg = client_config(&db);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut running = whatisup::start(cfg.clone(), listener)
        .await
        .expect("gateway starts");
    let keys = whatisup::store::customers::create(&running.app.pool, &running.app.keys, "ts")
        .await
        .expect("customer");

    // Node 20 runs every file of a directory given to --test (helpers too), so name the suites.
    let mut suites: Vec<String> = std::fs::read_dir(dir.join("test"))
        .expect("clients/typescript/test")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".test.mjs"))
        .map(|n| format!("test/{n}"))
        .collect();
    suites.sort();
    let control = tempfile::tempdir().expect("control dir");
    let mut child = tokio::process::Command::new("node")
        .args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
        .args(&suites)
        .current_dir(&dir)
        .env("WHATISUP_URL", format!("http://{addr}"))
        .env("WHATISUP_API_KEY", &keys.test_key)
        .env("WHATISUP_LIVE_KEY", &keys.live_key)
        .env("WHATISUP_CONTROL_DIR", control.path())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let out = collect(child.stdout.take().expect("stdout"));
    let err = collect(child.stderr.take().expect("stderr"));

    let request = control.path().join("restart-request");
    let done = control.path().join("restart-done");
    let mut restarts = 0;
    let deadline = tokio::time::Instant::now() + SUITE_TIMEOUT;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s.expect("wait for node"),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if request.exists() {
            std::fs::remove_file(&request).expect("remove restart-request");
            running.shutdown().await.expect("clean shutdown");
            running = start_on(&cfg, addr).await;
            restarts += 1;
            std::fs::write(&done, restarts.to_string()).expect("write restart-done");
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let (o, e) = (out.await.unwrap_or_default(), err.await.unwrap_or_default());
            panic!("the TypeScript suite did not finish within {SUITE_TIMEOUT:?}:\n{o}\n{e}");
        }
    };
    let (stdout, stderr) = (out.await.unwrap_or_default(), err.await.unwrap_or_default());
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        status.success(),
        "the TypeScript client's tests failed ({status}):\n{stdout}\n{stderr}"
    );
    // The resume test really had the gateway restarted under its stream, and the README example ran.
    assert!(
        restarts >= 1,
        "the suite never asked for a restart:\n{stdout}"
    );
    assert!(stdout.contains("README example"), "{stdout}");
    let ran = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("ℹ tests "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(ran >= 5, "the suite ran {ran} tests:\n{stdout}");
    running.shutdown().await.expect("clean shutdown");
    db.drop_db().await;
}

fn collect(
    mut r: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn require_tool(tool: &str) {
    let ok = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`{tool}` was not found: the TypeScript client's tests need Node.js 20+ and npm \
         (Debian: apt-get install nodejs npm; .ci/run installs them)"
    );
}

/// `npm ci` when node_modules is missing or was installed from another package-lock.json (a stamp file records
/// which). The cache stays npm's own (~/.npm); node_modules is ignored by git.
fn npm_ci_if_needed(dir: &Path) {
    let lock =
        std::fs::read(dir.join("package-lock.json")).expect("clients/typescript/package-lock.json");
    let stamp = dir.join("node_modules/.whatisup-package-lock.json");
    if std::fs::read(&stamp).is_ok_and(|s| s == lock) && dir.join("node_modules/.bin/tsc").exists()
    {
        return;
    }
    run(
        std::process::Command::new("npm").current_dir(dir).args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]),
        "npm ci in clients/typescript (needs the npm registry once)",
    );
    std::fs::write(&stamp, &lock).expect("write the npm ci stamp");
}

/// TypeScript from proto/ (buf + the local protoc-gen-es), then tsc into dist/.
fn build(dir: &Path) {
    let bin = dir.join("node_modules/.bin");
    let mut path = vec![bin.clone()];
    if let Some(p) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&p));
    }
    let path = std::env::join_paths(path).expect("PATH");
    run(
        std::process::Command::new(bin.join("buf"))
            .current_dir(dir)
            .env("PATH", &path)
            .args(["generate", "--template", "buf.gen.yaml"]),
        "buf generate (clients/typescript/src/gen from proto/)",
    );
    run(
        std::process::Command::new(bin.join("tsc"))
            .current_dir(dir)
            .env("PATH", &path)
            .args(["-p", "tsconfig.json"]),
        "tsc (clients/typescript)",
    );
}

fn run(cmd: &mut std::process::Command, what: &str) {
    match cmd.output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "{what} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("{what} could not start: {e}"),
    }
}

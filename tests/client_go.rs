//! The Go client (clients/go): its generated code is current with proto/, and it vets, builds and passes its
//! tests offline against Debian's Go packages (clients/go/check-offline.sh: module mode with a vendor/ directory
//! made of /usr/share/gocode), including one test against a real gateway in test mode.

#[allow(dead_code)]
#[path = "it/util.rs"]
mod util;

use std::path::PathBuf;
use std::time::Duration;
use util::{TestDb, test_config};

const DEBIAN_PACKAGES: &str = "golang-go protobuf-compiler protoc-gen-go protoc-gen-go-grpc \
     golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_client_vets_builds_and_passes_against_a_real_gateway() {
    for tool in ["go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "`{tool}` was not found: the Go client's check needs Debian's Go toolchain and protobuf packages \
             (apt-get install {DEBIAN_PACKAGES}; .ci/run installs them)"
        );
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));

    let db = TestDb::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let running = whatisup::start(test_config(&db), listener)
        .await
        .expect("gateway starts");
    let keys = whatisup::store::customers::create(&running.app.pool, &running.app.keys, "go")
        .await
        .expect("customer");

    let run = tokio::process::Command::new("bash")
        .arg(root.join("clients/go/check-offline.sh"))
        .arg(target.join("go-client-check"))
        .env("WHATISUP_TARGET", running.addr.to_string())
        .env("WHATISUP_API_KEY", &keys.test_key)
        // Go's build cache stays under target/, like everything else this build makes.
        .env("GOCACHE", target.join("go-cache"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the Go check finishes within 10 minutes")
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "the Go client's check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for line in [
        "clients/go/whatisuppb is current",
        "--- PASS: TestVerifyWebhookAccepts",
        "--- PASS: TestVerifyWebhookRefuses",
        "--- PASS: TestAgainstGateway",
    ] {
        assert!(
            stdout.contains(line) || stderr.contains(line),
            "missing {line:?}:\n{stdout}\n{stderr}"
        );
    }
    running.shutdown().await.expect("clean shutdown");
    db.drop_db().await;
}

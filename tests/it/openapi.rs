//! The OpenAPI document: served, current (equal to the committed `openapi.json`), valid (openapi-spec-validator),
//! and in step with the router (every documented operation is served; every other method on a served path is
//! 405). Also the Python venv the OpenAPI tools run from (shared with fuzz.rs).

use crate::util::{Api, Gw, TestDb, test_config};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};
use whatisup::http::openapi::{self, Method};

const REGENERATE: &str = "cargo run -- openapi > openapi.json";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/pyenv-openapi`: a venv with tests/fuzz/requirements.txt installed, created on first use and reused while
/// the requirements stay the same. Python 3 with venv is required (CI installs it); its absence fails the test.
pub fn pyenv() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target"));
    let dir = target.join("pyenv-openapi");
    let requirements = manifest_dir().join("tests/fuzz/requirements.txt");
    let wanted = std::fs::read(&requirements).expect("tests/fuzz/requirements.txt");
    let stamp = dir.join(".whatisup-requirements.txt");
    let current = || std::fs::read(&stamp).is_ok_and(|s| s == wanted);
    if current() {
        return dir;
    }
    // Several tests (and test processes) may get here at once: one builds, the others wait.
    let _lock = DirLock::acquire(&target.join("pyenv-openapi.lock"));
    if current() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&dir),
        "python3 -m venv (install Python 3 with its venv module: Debian's python3-venv)",
    );
    run(
        Command::new(dir.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&requirements),
        "pip install -r tests/fuzz/requirements.txt (needs PyPI once)",
    );
    std::fs::write(&stamp, &wanted).expect("write the venv's stamp");
    dir
}

fn run(cmd: &mut Command, what: &str) {
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

/// A lock directory (mkdir is atomic); one left by a killed test is taken over after 15 minutes.
struct DirLock(PathBuf);

impl DirLock {
    fn acquire(path: &Path) -> DirLock {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => return DirLock(path.to_path_buf()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > Duration::from_secs(900));
                    if stale {
                        let _ = std::fs::remove_dir(path);
                    } else {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                Err(e) => panic!("cannot create {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

pub async fn pyenv_async() -> PathBuf {
    tokio::task::spawn_blocking(pyenv)
        .await
        .expect("venv setup")
}

#[tokio::test(flavor = "multi_thread")]
async fn served_document_is_current_and_valid() {
    let db = TestDb::new();
    let gw = Gw::start(test_config(&db)).await;
    let resp = reqwest::get(format!("{}/openapi.json", gw.base))
        .await
        .expect("GET /openapi.json");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let served = resp.text().await.expect("body");
    gw.stop().await;
    db.drop_db().await;

    let committed =
        std::fs::read_to_string(manifest_dir().join("openapi.json")).unwrap_or_default();
    assert!(
        served == committed,
        "openapi.json in the repository is not the document the server generates; regenerate it with \
         `{REGENERATE}` and commit it"
    );
    // The command prints the same document.
    assert_eq!(
        whatisup::http::openapi::document().expect("generates"),
        served
    );

    let env = pyenv_async().await;
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &served).expect("write");
    let out = tokio::process::Command::new(env.join("bin/python"))
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
        .await
        .expect("openapi-spec-validator runs");
    assert!(
        out.status.success(),
        "openapi-spec-validator rejects the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                "probe".to_string()
            } else {
                seg.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn reqwest_method(m: Method) -> reqwest::Method {
    match m {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
        Method::Patch => reqwest::Method::PATCH,
        Method::Delete => reqwest::Method::DELETE,
    }
}

/// The other direction is `router_and_table_have_the_same_paths` (a unit test): together, the router and
/// `openapi::ROUTES` cannot drift apart silently.
#[tokio::test(flavor = "multi_thread")]
async fn every_documented_operation_is_served_and_no_other() {
    let db = TestDb::new();
    let gw = Gw::start(test_config(&db)).await;
    let keys = gw.customer("openapi").await;
    let api = Api::new(&gw.base, &keys.test);
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: String| {
        let rb = http
            .request(method, format!("{}{path}", gw.base))
            .bearer_auth(&keys.test)
            .timeout(Duration::from_secs(30));
        async move {
            let resp = rb.send().await.expect("request");
            let status = resp.status().as_u16();
            // The body of a stream (SSE) never ends: read only what the answer is.
            let body = if resp
                .headers()
                .get("content-type")
                .is_some_and(|c| c.as_bytes().starts_with(b"application/json"))
            {
                resp.json::<serde_json::Value>().await.unwrap_or_default()
            } else {
                serde_json::Value::Null
            };
            (status, body)
        }
    };
    let route_missing = |status: u16, body: &serde_json::Value| {
        status == 405 || (status == 404 && body["error"]["message"] == "no such route")
    };
    for op in openapi::ROUTES {
        let path = concrete(op.path);
        let (status, body) = send(reqwest_method(op.method), path.clone()).await;
        assert!(
            !route_missing(status, &body),
            "{} {path} ({}) is documented but not served: {status} {body}",
            op.method.as_str(),
            op.operation_id
        );
    }
    let extra = [Method::Get, Method::Post, Method::Patch, Method::Delete];
    for route in openapi::route_paths() {
        let documented: Vec<Method> = openapi::ROUTES
            .iter()
            .filter(|op| op.route == route)
            .map(|op| op.method)
            .collect();
        for m in extra.iter().filter(|m| !documented.contains(m)) {
            let path = concrete(route);
            let (status, body) = send(reqwest_method(*m), path.clone()).await;
            assert_eq!(
                status,
                405,
                "{} {path} is served but not documented in openapi::ROUTES: {body}",
                m.as_str()
            );
        }
        let (status, _) = send(reqwest::Method::PUT, concrete(route)).await;
        assert_eq!(status, 405, "PUT {route} is not documented");
    }
    // An undocumented path is the router's 404.
    let (status, body) = api.get("/v1/no-such-thing").await;
    assert!(route_missing(status, &body), "{status} {body}");
    gw.stop().await;
    db.drop_db().await;
}

//! Fuzzing the REST surface from its OpenAPI document: schemathesis (PyPI, pinned in tests/fuzz/requirements.txt)
//! against a real gateway in test mode. Checks: no 5xx, every error answer is the contract's envelope with a
//! contract code (tests/fuzz/hooks.py), and successful answers match the document's schemas. Path parameters
//! point at real resources (a connected sandbox channel, a message, webhook endpoints, a delivery, a spare key),
//! so the handlers behind them run rather than answering 404.

use crate::openapi::pyenv_async;
use crate::util::{Api, Gw, TestDb, test_config};
use serde_json::json;
use std::time::Duration;
use whatisup::http::openapi;

/// The whole run stays within this (2 busy cores); schemathesis is killed beyond it and the test fails.
const HARD_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread")]
async fn rest_surface_survives_schemathesis() {
    let env = pyenv_async().await;
    let db = TestDb::new();
    let mut cfg = test_config(&db);
    // 429s would hide what the fuzzer finds.
    cfg.rate_limit_burst = 1_000_000;
    cfg.rate_limit_per_sec = 1_000_000;
    cfg.webhook_allow_cidrs = "127.0.0.0/8".into();
    let gw = Gw::start(cfg).await;
    let keys = gw.customer("fuzz").await;
    let api = Api::new(&gw.base, &keys.test);

    // Real resources for the path parameters.
    let channel = api.connected_channel("fuzz").await;
    let doomed_channel = api.create_channel("fuzz-delete").await;
    let endpoint = create_endpoint(&api).await;
    let doomed_endpoint = create_endpoint(&api).await;
    let (s, sent) = api
        .post(
            &format!("/v1/channels/{channel}/messages"),
            json!({"to": "+15551234567", "type": "text", "text": "fuzz"}),
        )
        .await;
    assert_eq!(s, 202, "{sent}");
    let message = sent["message_id"].as_str().expect("message_id").to_string();
    let (s, key) = api.post("/v1/api-keys", json!({"name": "spare"})).await;
    assert_eq!(s, 201, "{key}");
    let spare_key = key["api_key"]["id"].as_str().expect("key id").to_string();
    // The endpoint is subscribed to everything: the send above made deliveries for it.
    let delivery = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (s, list) = api
                .get(&format!("/v1/webhook-deliveries?endpoint_id={endpoint}"))
                .await;
            assert_eq!(s, 200, "{list}");
            if let Some(id) = list["data"][0]["id"].as_str() {
                break id.to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no webhook delivery"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };

    // One config block per operation that has path parameters.
    let mut config = String::new();
    for op in openapi::ROUTES {
        let bind = |param: &str| -> Option<&str> {
            let p = op.path;
            Some(match param {
                "message_id" => &message,
                "id" if p.starts_with("/v1/channels/") && op.operation_id == "DeleteChannel" => {
                    &doomed_channel
                }
                "id" if p.starts_with("/v1/channels/") => &channel,
                "id" if op.operation_id == "DeleteWebhookEndpoint" => &doomed_endpoint,
                "id" if p.starts_with("/v1/webhook-endpoints/") => &endpoint,
                "id" if p.starts_with("/v1/webhook-deliveries/") => &delivery,
                "id" if p.starts_with("/v1/api-keys/") => &spare_key,
                _ => return None,
            })
        };
        let params: Vec<String> = op
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .filter_map(|p| bind(p).map(|v| format!("\"path.{p}\" = \"{v}\"")))
            .collect();
        if !params.is_empty() {
            config.push_str(&format!(
                "[[operations]]\ninclude-operation-id = \"{}\"\nparameters = {{ {} }}\n\n",
                op.operation_id,
                params.join(", ")
            ));
        }
    }
    let work = tempfile::tempdir().expect("temp dir");
    let config_file = work.path().join("schemathesis.toml");
    std::fs::write(&config_file, &config).expect("write config");
    let hooks_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let seed = std::env::var("WHATISUP_FUZZ_SEED").unwrap_or_else(|_| "20261127".into());
    let mut cmd = tokio::process::Command::new(env.join("bin/python"));
    cmd.current_dir(work.path())
        .env("PYTHONPATH", &hooks_dir)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("NO_COLOR", "1")
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config_file)
        .arg("run")
        .arg(format!("{}/openapi.json", gw.base))
        .arg("--header")
        .arg(format!("Authorization: Bearer {}", keys.test))
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,error_envelope",
            // An event stream never ends; tests/it covers SSE.
            "--exclude-operation-id",
            "StreamEvents",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "12",
            "--request-timeout",
            "40",
            // One worker: schemathesis' coverage phase hit a CPython error ("AST constructor recursion depth
            // mismatch") with two on Python 3.11.
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--seed",
            &seed,
            "--no-color",
        ])
        .kill_on_drop(true);
    let out = tokio::time::timeout(HARD_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis did not finish within {HARD_TIMEOUT:?}"))
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems (seed {seed}; WHATISUP_FUZZ_SEED=<n> picks another):\n{stdout}\n{stderr}"
    );
    // It ran the operations (a run that tested nothing also exits 0).
    assert!(
        stdout.contains("passed") && !stdout.contains("No operations"),
        "schemathesis tested nothing:\n{stdout}\n{stderr}"
    );
    gw.stop().await;
    db.drop_db().await;
}

async fn create_endpoint(api: &Api) -> String {
    let (s, e) = api
        .post(
            "/v1/webhook-endpoints",
            json!({"url": "http://127.0.0.1:9/fuzz-hook"}),
        )
        .await;
    assert_eq!(s, 201, "{e}");
    e["id"].as_str().expect("endpoint id").to_string()
}

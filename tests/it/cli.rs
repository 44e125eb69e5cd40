use crate::util::*;
use std::process::Command;

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

//! The web dashboard: served at `/` from the binary, and driven in headless Debian Chromium (playwright-core)
//! against this real gateway in test mode (clients/dashboard/test/dashboard.test.mjs). Screenshots go to
//! target/dashboard-screenshots/.

use crate::util::{TestDb, test_config};
use crate::webhooks::Receiver;
use std::path::PathBuf;
use std::time::Duration;
use whatisup::config::Config;

const CHROMIUM: &str = "/usr/bin/chromium";
const BANNER_SECS: u64 = 2;

fn dashboard_config(db: &TestDb) -> Config {
    let mut c = test_config(db);
    c.dashboard_reconnecting_banner_secs = BANNER_SECS;
    c.webhook_allow_cidrs = "127.0.0.0/8".into();
    c.webhook_poll_ms = 100;
    // A QR code lives a few seconds, so the page sees it refreshed; enough of them to pair.
    c.sandbox_qr_ttl_ms = 2_000;
    c.sandbox_qr_count = 30;
    c
}

#[tokio::test]
async fn page_and_assets_are_served_from_the_binary() {
    let db = TestDb::new();
    let gw = crate::util::Gw::start(dashboard_config(&db)).await;
    let http = reqwest::Client::new();

    let page = http.get(format!("{}/", gw.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let etag = h["etag"].to_str().unwrap().to_string();
    let html = page.text().await.unwrap();
    assert!(html.contains("/dashboard/app.js") && html.contains("/dashboard/app.css"));
    // Nothing from another origin: no fonts, no CDN.
    for attr in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(!html.contains(attr), "{attr} in {html}");
    }

    let again = http
        .get(format!("{}/", gw.base))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    let js = http
        .get(format!("{}/dashboard/app.js", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let js = js.text().await.unwrap();
    // The bundle carries the grpc-web client and the generated services.
    assert!(js.contains("application/grpc-web+proto") && js.contains("streamEvents"));

    let css = http
        .get(format!("{}/dashboard/app.css", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");

    let cfg: serde_json::Value = http
        .get(format!("{}/dashboard/config.json", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg["reconnecting_banner_secs"], BANNER_SECS);
    assert!(cfg["server_time"].as_str().unwrap().ends_with('Z'), "{cfg}");

    // The API beside it is untouched: an unknown path is still the JSON 404.
    let nf = http
        .get(format!("{}/dashboard/nope.js", gw.base))
        .send()
        .await
        .unwrap();
    assert_eq!(nf.status(), 404);
    gw.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn browser_pairs_sees_the_reconnecting_banner_and_deliveries() {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "the dashboard's browser test needs Chromium at {CHROMIUM}: install Debian's package \
         (apt-get install chromium; .ci/run does it)"
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("clients/dashboard");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "clients/dashboard/node_modules is missing: `cargo build` installs it (npm ci)"
    );
    let shots = root.join("target/dashboard-screenshots");

    let db = TestDb::new();
    let gw = crate::util::Gw::start(dashboard_config(&db)).await;
    let keys = gw.customer("dashboard").await;
    let rx = Receiver::start().await;

    let run = tokio::process::Command::new("node")
        .arg("test/dashboard.test.mjs")
        .current_dir(&dir)
        .env("WHATISUP_URL", &gw.base)
        .env("WHATISUP_KEY", &keys.test)
        .env("WHATISUP_BANNER_SECS", BANNER_SECS.to_string())
        .env("WHATISUP_RECEIVER_URL", rx.url())
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", CHROMIUM)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser test finishes within 4 minutes")
        .expect("node runs (Node.js 20+ is needed to build the dashboard anyway)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "the browser test failed ({}); screenshots in {}:\n{stdout}\n{stderr}",
        out.status,
        shots.display()
    );
    assert!(stdout.contains("all steps passed"), "{stdout}");
    assert!(shots.join("04-reconnecting-banner.png").exists());
    assert!(shots.join("09-phone-390x844.png").exists());
    // The receiver really got the deliveries the page showed.
    assert!(!rx.log().is_empty());

    gw.stop().await;
    db.drop_db().await;
}

//! The web dashboard, embedded in the binary: the page at `/`, its script and stylesheet under `/dashboard/`,
//! and `/dashboard/config.json` (settings the page needs). The page talks to the gateway over grpc-web on the
//! same origin; it holds the API key itself, so nothing here needs auth.

use crate::api::App;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};

const INDEX_HTML: &str = include_str!("../../clients/dashboard/static/index.html");
const APP_CSS: &str = include_str!("../../clients/dashboard/static/app.css");
#[cfg(not(whatisup_no_dashboard))]
const APP_JS: Option<&str> = Some(include_str!(concat!(env!("OUT_DIR"), "/dashboard/app.js")));
#[cfg(whatisup_no_dashboard)]
const APP_JS: Option<&str> = None;

const UNAVAILABLE_HTML: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>whatisup</title>\
</head><body><h1>Dashboard not built</h1><p>This gateway was built with <code>WHATISUP_SKIP_DASHBOARD=1</code>, so \
it carries no dashboard. Build it with Node.js and npm installed (plain <code>cargo build</code>) to get one. The \
API on this port works as usual.</p></body></html>\n";

/// Everything the page loads comes from this origin; QR codes are data: URLs.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/dashboard/app.js", get(app_js))
        .route("/dashboard/app.css", get(app_css))
        .route("/dashboard/config.json", get(config))
}

/// Revalidated on every load (the binary may be replaced); an unchanged file costs a 304.
fn asset(
    headers: &HeaderMap,
    body: &'static str,
    content_type: &'static str,
    etag: &str,
) -> Response {
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn etag_of(body: &str) -> String {
    let d = Sha256::digest(body.as_bytes());
    format!("\"{}\"", hex::encode(&d[..12]))
}

macro_rules! etag {
    ($body:expr) => {{
        static TAG: OnceLock<String> = OnceLock::new();
        TAG.get_or_init(|| etag_of($body)).as_str()
    }};
}

async fn index(headers: HeaderMap) -> Response {
    if APP_JS.is_none() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            UNAVAILABLE_HTML,
        )
            .into_response();
    }
    let mut resp = asset(
        &headers,
        INDEX_HTML,
        "text/html; charset=utf-8",
        etag!(INDEX_HTML),
    );
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

async fn app_js(headers: HeaderMap) -> Response {
    match APP_JS {
        Some(js) => asset(&headers, js, "text/javascript; charset=utf-8", etag!(js)),
        None => super::not_found().await.into_response(),
    }
}

async fn app_css(headers: HeaderMap) -> Response {
    asset(&headers, APP_CSS, "text/css; charset=utf-8", etag!(APP_CSS))
}

/// Settings of this gateway the page needs, and its clock (the page measures durations against server times).
async fn config(State(app): State<Arc<App>>) -> Response {
    let body = serde_json::json!({
        "reconnecting_banner_secs": app.cfg.dashboard_reconnecting_banner_secs,
        "server_time": crate::wkt::rfc3339(chrono::Utc::now()),
        "version": env!("CARGO_PKG_VERSION"),
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}

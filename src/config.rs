//! Configuration: every setting is a `WHATISUP_*` environment variable (or the matching `--flag`).

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, clap::Args)]
pub struct Config {
    /// PostgreSQL URL; the database is created if missing.
    #[arg(
        long,
        env = "WHATISUP_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/whatisup"
    )]
    pub database_url: String,
    /// Connections in the database pool.
    #[arg(long, env = "WHATISUP_DATABASE_POOL", default_value_t = 16)]
    pub database_pool: usize,
    /// The one port: gRPC, grpc-web, REST, SSE, metrics.
    #[arg(long, env = "WHATISUP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Base64 of 32 bytes. Seals session keys and webhook secrets. Generated into the data dir when unset.
    #[arg(long, env = "WHATISUP_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// Comma-separated older master keys, still accepted for opening what they sealed (rotation).
    #[arg(long, env = "WHATISUP_MASTER_KEY_PREVIOUS", hide_env_values = true)]
    pub master_key_previous: Option<String>,
    #[arg(long, env = "WHATISUP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[arg(long, env = "WHATISUP_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// This node's name in session leases; random when unset.
    #[arg(long, env = "WHATISUP_NODE_ID")]
    pub node_id: Option<String>,
    /// How long a session lease lasts without renewal; another node resumes the session after it.
    #[arg(long, env = "WHATISUP_LEASE_TTL_MS", default_value_t = 15_000)]
    pub lease_ttl_ms: u64,
    /// How often a node looks for sessions whose owner died.
    #[arg(long, env = "WHATISUP_LEASE_SCAN_MS", default_value_t = 2_000)]
    pub lease_scan_ms: u64,
    /// Most sessions one node runs.
    #[arg(long, env = "WHATISUP_MAX_SESSIONS", default_value_t = 20_000)]
    pub max_sessions: usize,
    /// First reconnect delay; doubles per attempt (with jitter) up to the cap.
    #[arg(long, env = "WHATISUP_RECONNECT_BASE_MS", default_value_t = 1_000)]
    pub reconnect_base_ms: u64,
    #[arg(long, env = "WHATISUP_RECONNECT_MAX_MS", default_value_t = 60_000)]
    pub reconnect_max_ms: u64,
    /// Failed reconnect attempts before the channel goes to failed / retries_exhausted.
    #[arg(long, env = "WHATISUP_RECONNECT_MAX_ATTEMPTS", default_value_t = 12)]
    pub reconnect_max_attempts: u32,
    /// Sandbox: how long the simulated handshake takes.
    #[arg(long, env = "WHATISUP_SANDBOX_CONNECT_MS", default_value_t = 300)]
    pub sandbox_connect_ms: u64,
    /// Sandbox: how long each QR code lives before it rotates.
    #[arg(long, env = "WHATISUP_SANDBOX_QR_TTL_MS", default_value_t = 20_000)]
    pub sandbox_qr_ttl_ms: u64,
    /// Sandbox: QR codes shown before the channel falls back to pending / qr_timeout.
    #[arg(long, env = "WHATISUP_SANDBOX_QR_COUNT", default_value_t = 6)]
    pub sandbox_qr_count: u32,
    /// API rate limit per key: bucket size.
    #[arg(long, env = "WHATISUP_RATE_LIMIT_BURST", default_value_t = 600)]
    pub rate_limit_burst: u32,
    /// API rate limit per key: tokens added per second.
    #[arg(long, env = "WHATISUP_RATE_LIMIT_PER_SEC", default_value_t = 10)]
    pub rate_limit_per_sec: u32,
    /// Largest request body accepted.
    #[arg(long, env = "WHATISUP_MAX_BODY_BYTES", default_value_t = 1_048_576)]
    pub max_body_bytes: usize,
    /// Keep-alive comment interval on SSE streams.
    #[arg(long, env = "WHATISUP_SSE_KEEPALIVE_SECS", default_value_t = 25)]
    pub sse_keepalive_secs: u64,
    /// Concurrent event streams (SSE + gRPC) one node serves.
    #[arg(long, env = "WHATISUP_MAX_STREAMS", default_value_t = 20_000)]
    pub max_streams: usize,
    /// WhatsApp Web endpoint. Overridden by tests and benchmarks to point at a local fake server; a build with the
    /// `fake-whatsapp` feature accepts only loopback endpoints.
    #[arg(
        long,
        env = "WHATISUP_WA_URL",
        default_value = "wss://web.whatsapp.com/ws/chat"
    )]
    pub wa_url: String,
    /// WhatsApp Web client version announced at login (`2.3000.N`). A stale version is the first cause of
    /// pairing failures in the field: update it here, no release needed.
    #[arg(long, env = "WHATISUP_WA_VERSION", default_value = "2.3000.1042742319")]
    pub wa_version: String,
    /// Name shown on the phone's list of linked devices.
    #[arg(long, env = "WHATISUP_WA_DEVICE_NAME", default_value = "whatisup")]
    pub wa_device_name: String,
    /// Key-store writes of all sessions that overlap in time share one transaction (each still durable when it
    /// returns). Off: one transaction per write, as the crate's own stores do (the benchmark's baseline).
    #[arg(long, env = "WHATISUP_WA_GROUP_COMMIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub wa_group_commit: bool,
    /// Webhooks: delays between attempts after the first (each ±20 % jitter); an endpoint may set its own.
    #[arg(
        long,
        env = "WHATISUP_WEBHOOK_RETRY_SCHEDULE",
        default_value = "10s,60s,5m,30m,2h"
    )]
    pub webhook_retry_schedule: String,
    /// Webhooks: one attempt's timeout (connect, send, answer).
    #[arg(long, env = "WHATISUP_WEBHOOK_TIMEOUT_MS", default_value_t = 15_000)]
    pub webhook_timeout_ms: u64,
    /// Webhooks: concurrent requests to one host (host:port), so one slow receiver cannot stall the others.
    #[arg(long, env = "WHATISUP_WEBHOOK_PER_HOST", default_value_t = 16)]
    pub webhook_per_host: usize,
    /// Webhooks: concurrent requests of one node.
    #[arg(long, env = "WHATISUP_WEBHOOK_MAX_IN_FLIGHT", default_value_t = 256)]
    pub webhook_max_in_flight: usize,
    /// Webhooks: an endpoint failing continuously for this long is disabled (`webhook_endpoint.disabled`).
    #[arg(long, env = "WHATISUP_WEBHOOK_DISABLE_AFTER", default_value = "5d")]
    pub webhook_disable_after: String,
    /// Webhooks: address blocks receivers may be in although the SSRF guard refuses them by default
    /// (comma-separated CIDRs, e.g. `127.0.0.0/8`).
    #[arg(long, env = "WHATISUP_WEBHOOK_ALLOW_CIDRS", default_value = "")]
    pub webhook_allow_cidrs: String,
    /// Webhooks: finished deliveries and their attempts are deleted after this many days (0 keeps them).
    #[arg(long, env = "WHATISUP_WEBHOOK_RETENTION_DAYS", default_value_t = 30)]
    pub webhook_retention_days: u32,
    /// Webhooks: how often the dispatcher looks for due deliveries when no notification woke it.
    #[arg(long, env = "WHATISUP_WEBHOOK_POLL_MS", default_value_t = 1_000)]
    pub webhook_poll_ms: u64,
    /// Outbound pacing per channel (anti-ban): messages per second; 0 turns pacing off (benchmarks).
    #[arg(long, env = "WHATISUP_SEND_RATE_PER_SEC", default_value_t = 1.0)]
    pub send_rate_per_sec: f64,
    /// Outbound pacing per channel: messages that may go out back to back before the rate applies.
    #[arg(long, env = "WHATISUP_SEND_BURST", default_value_t = 5)]
    pub send_burst: u32,
    /// A queued message not sent within this time fails (`message.status` failed, error `expired`).
    #[arg(long, env = "WHATISUP_MESSAGE_TTL_SECS", default_value_t = 86_400)]
    pub message_ttl_secs: u64,
    /// Most queued (unsent) messages per channel; more answer 429.
    #[arg(
        long,
        env = "WHATISUP_OUTBOX_MAX_PER_CHANNEL",
        default_value_t = 10_000
    )]
    pub outbox_max_per_channel: i64,
    /// How long one send to WhatsApp may take before the connection is treated as lost.
    #[arg(long, env = "WHATISUP_SEND_TIMEOUT_MS", default_value_t = 30_000)]
    pub send_timeout_ms: u64,
    /// How often a node expires old queued messages and wakes the senders of its sessions.
    #[arg(long, env = "WHATISUP_OUTBOX_SWEEP_MS", default_value_t = 5_000)]
    pub outbox_sweep_ms: u64,
    /// Messages no longer queued are deleted this long after they were accepted (0 keeps them).
    #[arg(
        long,
        env = "WHATISUP_MESSAGE_RETENTION_SECS",
        default_value_t = 2_592_000
    )]
    pub message_retention_secs: u64,
    /// What the sandbox's simulated server accepted is forgotten after this (0 keeps it).
    #[arg(
        long,
        env = "WHATISUP_SANDBOX_RETENTION_SECS",
        default_value_t = 604_800
    )]
    pub sandbox_retention_secs: u64,
    /// How often a node deletes expired rows (messages past their retention, old sandbox sends, expired
    /// Idempotency-Key answers), in batches of 1000.
    #[arg(long, env = "WHATISUP_CLEANUP_INTERVAL_SECS", default_value_t = 600)]
    pub cleanup_interval_secs: u64,
    /// The dashboard shows its "reconnecting" banner for a channel that stays `reconnecting` this long.
    #[arg(
        long,
        env = "WHATISUP_DASHBOARD_RECONNECTING_BANNER_SECS",
        default_value_t = 30
    )]
    pub dashboard_reconnecting_banner_secs: u64,
    /// Media: largest upload, fetched media_url, or inbound media (bytes). Reading stops at the cap.
    #[arg(long, env = "WHATISUP_MEDIA_MAX_BYTES", default_value_t = 25 * 1024 * 1024)]
    pub media_max_bytes: usize,
    /// Media: how long uploads and inbound media are kept (and signed download URLs stay valid). 7 days.
    #[arg(long, env = "WHATISUP_MEDIA_RETENTION_SECS", default_value_t = 7 * 86_400)]
    pub media_retention_secs: u64,
    /// Media: transfers to or from WhatsApp at once over all channels, in each direction (inbound downloads;
    /// outbound media sends, from loading the stored bytes to WhatsApp's answer). Each holds up to
    /// WHATISUP_MEDIA_MAX_BYTES in memory, so this bounds the memory media in transit can take.
    #[arg(long, env = "WHATISUP_MEDIA_TRANSFERS", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub media_transfers: u16,
    /// Media: one media_url fetch's timeout (connect, answer, whole body).
    #[arg(
        long,
        env = "WHATISUP_MEDIA_FETCH_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub media_fetch_timeout_ms: u64,
    /// Media: address blocks a media_url may be in although the SSRF guard refuses them by default
    /// (comma-separated CIDRs, e.g. `127.0.0.0/8`).
    #[arg(long, env = "WHATISUP_MEDIA_ALLOW_CIDRS", default_value = "")]
    pub media_allow_cidrs: String,
    /// The gateway's public base URL (e.g. `https://wa.example.com`): signed media URLs in events are absolute
    /// under it. Unset: they are paths (`/v1/media/...`) relative to wherever the API is reached.
    #[arg(long, env = "WHATISUP_PUBLIC_URL", default_value = "")]
    pub public_url: String,
    /// Print the bootstrap keys on first start (tests turn it off).
    #[arg(skip = true)]
    pub print_bootstrap_keys: bool,
}

impl Config {
    /// The defaults, with the environment applied (as `whatisup serve` would see them).
    pub fn from_env() -> Config {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        <Wrapper as clap::Parser>::parse_from(["whatisup"]).config
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms.max(1_000))
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms.max(100))
    }

    pub fn lease_scan(&self) -> Duration {
        Duration::from_millis(self.lease_scan_ms.max(50))
    }

    /// `WHATISUP_WA_VERSION` as the three numbers the login payload carries.
    pub fn wa_version(&self) -> anyhow::Result<(u32, u32, u32)> {
        let parts: Vec<&str> = self.wa_version.trim().split('.').collect();
        let parse = |s: &str| s.parse::<u32>().ok();
        match parts.as_slice() {
            [a, b, c] => match (parse(a), parse(b), parse(c)) {
                (Some(a), Some(b), Some(c)) => Ok((a, b, c)),
                _ => anyhow::bail!(
                    "WHATISUP_WA_VERSION must be three numbers like 2.3000.1042742319"
                ),
            },
            _ => anyhow::bail!("WHATISUP_WA_VERSION must be three numbers like 2.3000.1042742319"),
        }
    }

    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".to_string());
            format!("{host}-{}", &ulid::Ulid::new().to_string()[16..])
        })
    }
}

/// Secrets never reach a log line, even through `{:?}`.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        // The URL may carry a password.
        let url = match self.database_url.split_once('@') {
            Some((creds, host)) if creds.contains(':') && creds.matches(':').count() > 1 => {
                format!(
                    "{}:<redacted>@{host}",
                    &creds[..creds.rfind(':').unwrap_or(0)]
                )
            }
            _ => self.database_url.clone(),
        };
        f.debug_struct("Config")
            .field("database_url", &url)
            .field("listen", &self.listen)
            .field("master_key", &redacted(&self.master_key))
            .field("master_key_previous", &redacted(&self.master_key_previous))
            .field("data_dir", &self.data_dir)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_redacts_secrets() {
        let mut c = super::Config::from_env();
        c.master_key = Some("c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk=".into());
        c.database_url = "postgres://app:hunter2@db:5432/whatisup".into();
        let s = format!("{c:?}");
        assert!(!s.contains("c2VjcmV0") && !s.contains("hunter2"), "{s}");
        assert!(
            s.contains("postgres://app:<redacted>@db:5432/whatisup"),
            "{s}"
        );
    }
}

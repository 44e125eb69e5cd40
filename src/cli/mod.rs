//! The command-line client: talks to a running gateway over gRPC (`whatisup channels ...`, `send`, `events tail`,
//! `webhooks ...`, `api-keys ...`). Output is compact text for people, or with `--json` one JSON document per
//! result (the same shapes the REST API answers; NDJSON for streams).

mod channels;
mod events;
mod keys;
mod messages;
mod out;
mod webhooks;

use clap::{Args, Subcommand};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

/// Options of every client command. Global: they may follow any subcommand.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// The gateway's address.
    #[arg(
        long,
        env = "WHATISUP_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    server: String,
    /// The API key (zpk_live_... or zpk_test_...).
    #[arg(long, env = "WHATISUP_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
    /// Machine output: one JSON document per result (NDJSON for streams).
    #[arg(long, global = true)]
    json: bool,
    /// Seconds each call may take (streams are not limited).
    #[arg(long, default_value_t = 30, global = true,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Channels (WhatsApp accounts) of a running gateway.
    Channels {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: channels::Cmd,
    },
    /// Send a message on a channel.
    Send {
        #[command(flatten)]
        conn: Conn,
        #[command(flatten)]
        args: Box<messages::SendArgs>,
    },
    /// Look up sent messages.
    Messages {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: messages::Cmd,
    },
    /// The event stream.
    Events {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: events::Cmd,
    },
    /// Webhook endpoints and their deliveries.
    Webhooks {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: webhooks::Cmd,
    },
    /// API keys, over the API (`whatisup keys create` works on the database directly).
    ApiKeys {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: keys::Cmd,
    },
}

/// Runs one client command; the process exit code.
pub async fn run(cmd: Command) -> i32 {
    let (conn, json) = match &cmd {
        Command::Channels { conn, .. }
        | Command::Send { conn, .. }
        | Command::Messages { conn, .. }
        | Command::Events { conn, .. }
        | Command::Webhooks { conn, .. }
        | Command::ApiKeys { conn, .. } => (conn.clone(), conn.json),
    };
    let result = match Ctx::new(&conn) {
        Ok(ctx) => match cmd {
            Command::Channels { cmd, .. } => channels::run(&ctx, cmd).await,
            Command::Send { args, .. } => messages::send(&ctx, *args).await,
            Command::Messages { cmd, .. } => messages::run(&ctx, cmd).await,
            Command::Events { cmd, .. } => events::run(&ctx, cmd).await,
            Command::Webhooks { cmd, .. } => webhooks::run(&ctx, cmd).await,
            Command::ApiKeys { cmd, .. } => keys::run(&ctx, cmd).await,
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            e.report(json, &conn.server);
            e.exit_code()
        }
    }
}

/// What a command needs: the connection, the key, the output mode.
pub struct Ctx {
    channel: Channel,
    auth: MetadataValue<Ascii>,
    json: bool,
    timeout: Duration,
}

impl Ctx {
    fn new(conn: &Conn) -> Result<Ctx, CliError> {
        let key = conn
            .api_key
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                CliError::Usage(
                    "an API key is required: pass --api-key or set WHATISUP_API_KEY".into(),
                )
            })?;
        // Never echo the key itself, not even in this error.
        let auth = format!("Bearer {key}")
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| CliError::Usage("the API key has characters a key never has".into()))?;
        let server = if conn.server.contains("://") {
            conn.server.clone()
        } else {
            format!("http://{}", conn.server)
        };
        let endpoint = Endpoint::from_shared(server)
            .map_err(|e| CliError::Usage(format!("--server {:?}: {e}", conn.server)))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            // A gateway that vanishes without closing the connection is noticed, so `events tail` reconnects.
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        Ok(Ctx {
            // Lazy: connection errors surface on the first call (with the server's address in the report), and
            // the channel reconnects by itself after a gateway restart.
            channel: endpoint.connect_lazy(),
            auth,
            json: conn.json,
            timeout: Duration::from_secs(conn.timeout),
        })
    }

    /// A request with the key in its metadata.
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("authorization", self.auth.clone());
        r.set_timeout(self.timeout);
        r
    }

    /// One unary call, bounded by `--timeout` on this side too.
    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CliError> {
        self.call_within(self.timeout, f).await
    }

    async fn call_within<T>(
        &self,
        limit: Duration,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CliError> {
        match tokio::time::timeout(limit, f).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(CliError::Status(s)),
            Err(_) => Err(CliError::Timeout(limit)),
        }
    }
}

#[derive(Debug)]
pub enum CliError {
    /// Bad arguments (exit 2).
    Usage(String),
    /// The gateway's answer.
    Status(tonic::Status),
    Timeout(Duration),
    Other(String),
}

impl CliError {
    /// 2 usage, 3 not found, 4 auth, 1 anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Status(s) => match s.code() {
                tonic::Code::InvalidArgument => 2,
                tonic::Code::NotFound => 3,
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => 4,
                _ => 1,
            },
            CliError::Timeout(_) | CliError::Other(_) => 1,
        }
    }

    /// The contract's error code: ErrorInfo.reason when the gateway sent one.
    fn code(&self) -> String {
        match self {
            CliError::Usage(_) => "usage".into(),
            CliError::Status(s) => {
                reason(s).unwrap_or_else(|| grpc_code_name(s.code()).to_string())
            }
            CliError::Timeout(_) => "timeout".into(),
            CliError::Other(_) => "error".into(),
        }
    }

    fn message(&self, server: &str) -> String {
        match self {
            CliError::Usage(m) | CliError::Other(m) => m.clone(),
            CliError::Timeout(d) => format!("no answer within {} s", d.as_secs()),
            CliError::Status(s) if reason(s).is_none() && is_transport(s) => {
                format!("cannot reach the gateway at {server}: {}", s.message())
            }
            CliError::Status(s) => s.message().to_string(),
        }
    }

    fn report(&self, json: bool, server: &str) {
        let (code, message) = (self.code(), self.message(server));
        if json {
            let mut details = serde_json::Map::new();
            if let CliError::Status(s) = self
                && let Some(info) = s.get_error_details().error_info()
            {
                for (k, v) in &info.metadata {
                    details.insert(k.clone(), v.clone().into());
                }
            }
            eprintln!(
                "{}",
                serde_json::json!({"error": {"code": code, "message": message, "details": details}})
            );
        } else {
            eprintln!("error: {code}: {}", out::clean(&message));
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Status(s)
    }
}

fn reason(s: &tonic::Status) -> Option<String> {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .filter(|r| !r.is_empty())
}

/// Transport trouble (not an answer of the gateway's API): worth a retry in a stream, and worth naming the server.
fn is_transport(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

fn grpc_code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

/// "30s", "15m", "2h", "7d" → a duration.
fn parse_duration(s: &str) -> Option<chrono::Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = num.parse().ok()?;
    match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => None,
    }
}

/// An RFC 3339 time, or a duration meaning that long ago ("2h").
fn parse_time(s: &str) -> Result<whatisup::wkt::Timestamp, CliError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.with_timezone(&chrono::Utc).into());
    }
    parse_duration(s)
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        .map(Into::into)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{s:?} is neither an RFC 3339 time (2026-11-26T12:00:00Z) nor a duration ago (30m, 2h, 7d)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration("90s"), chrono::Duration::try_seconds(90));
        assert_eq!(parse_duration("2h"), chrono::Duration::try_hours(2));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("5w"), None);
        assert_eq!(parse_duration(""), None);
        let t = parse_time("2026-11-26T12:00:00+01:00").unwrap();
        assert_eq!(t.seconds, 1_795_690_800);
        assert!(parse_time("1d").unwrap().seconds < chrono::Utc::now().timestamp() - 86_000);
        assert!(matches!(parse_time("yesterday"), Err(CliError::Usage(_))));
    }

    #[test]
    fn exit_codes() {
        let st = |c| CliError::Status(tonic::Status::new(c, "x"));
        assert_eq!(st(tonic::Code::NotFound).exit_code(), 3);
        assert_eq!(st(tonic::Code::Unauthenticated).exit_code(), 4);
        assert_eq!(st(tonic::Code::PermissionDenied).exit_code(), 4);
        assert_eq!(st(tonic::Code::Internal).exit_code(), 1);
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
    }
}

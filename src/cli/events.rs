//! `whatisup events tail`: the gRPC event stream, resumed from the last cursor after any interruption.

use super::{CliError, Ctx, out};
use clap::Subcommand;
use rand::Rng;
use std::time::Duration;
use whatisup::pb;
use whatisup::pb::event_service_client::EventServiceClient;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Print events as they happen; reconnects from the last event seen, so none is lost or repeated.
    Tail {
        /// Only this channel's events.
        #[arg(long = "channel", value_name = "CHANNEL_ID")]
        channel: Option<String>,
        /// Event names or patterns, comma separated (message.*,channel.status_changed).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Start after this cursor (printed with each event under --json; 0 replays the retained log). Default:
        /// from now on.
        #[arg(long, value_name = "CURSOR")]
        since: Option<String>,
        /// Exit after this many events.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> Result<(), CliError> {
    match cmd {
        Cmd::Tail {
            channel,
            events,
            since,
            limit,
        } => {
            let mut f = Follower::new(
                ctx,
                pb::StreamEventsRequest {
                    channel_id: channel.unwrap_or_default(),
                    events,
                    after_cursor: String::new(),
                },
                since,
            );
            let mut seen = 0u64;
            while limit.is_none_or(|l| seen < l) {
                let m = f.next().await?;
                seen += 1;
                let text = if ctx.json {
                    whatisup::http::shape::event(&m).to_string()
                } else {
                    line(&m)
                };
                // Nobody reads any more (`| head`): done.
                if !out::emit(&text) {
                    return Ok(());
                }
            }
            Ok(())
        }
    }
}

/// "2026-11-26T12:00:00.123Z ch_... #42 message.received {...}"
fn line(m: &pb::StreamEventsResponse) -> String {
    let Some(e) = &m.event else {
        return format!("(an event without a body, cursor {})", m.cursor);
    };
    let data = e
        .data
        .as_ref()
        .and_then(|d| serde_json::to_value(d).ok())
        .map(|v| v.to_string())
        .unwrap_or_else(|| "{}".into());
    out::clean(&format!(
        "{} {} #{} {} {data}",
        out::time(&e.occurred_at),
        out::or_dash(&e.channel_id),
        e.sequence,
        e.event
    ))
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A StreamEvents subscription that survives stream errors and gateway restarts: it reconnects with capped
/// exponential backoff and jitter, asking to resume after the last cursor it handed out, so every event comes out
/// once. Errors that a retry cannot fix (auth, not found, bad filter) end it.
pub struct Follower<'a> {
    ctx: &'a Ctx,
    req: pb::StreamEventsRequest,
    /// Resume point: the last event's cursor, else where the first stream started (from its response headers).
    cursor: Option<String>,
    stream: Option<tonic::Streaming<pb::StreamEventsResponse>>,
    backoff: Duration,
}

impl<'a> Follower<'a> {
    pub fn new(ctx: &'a Ctx, req: pb::StreamEventsRequest, since: Option<String>) -> Follower<'a> {
        Follower {
            ctx,
            req,
            cursor: since.filter(|s| !s.trim().is_empty()),
            stream: None,
            backoff: BACKOFF_MIN,
        }
    }

    /// Opens the stream now (otherwise the first `next` does): events from this moment on are kept for `next`.
    pub async fn open(&mut self) -> Result<(), CliError> {
        let s = self.connect().await?;
        self.stream = Some(s);
        Ok(())
    }

    async fn connect(&mut self) -> Result<tonic::Streaming<pb::StreamEventsResponse>, CliError> {
        let mut req = self.req.clone();
        req.after_cursor = self.cursor.clone().unwrap_or_default();
        let mut client = EventServiceClient::new(self.ctx.channel.clone());
        let mut r = tonic::Request::new(req);
        r.metadata_mut()
            .insert("authorization", self.ctx.auth.clone());
        let resp = tokio::time::timeout(self.ctx.timeout, client.stream_events(r))
            .await
            .map_err(|_| CliError::Timeout(self.ctx.timeout))??;
        if self.cursor.is_none() {
            self.cursor = resp
                .metadata()
                .get(whatisup::api::events::CURSOR_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.parse::<u64>().is_ok())
                .map(str::to_string);
        }
        eprintln!(
            "events: streaming{}",
            match &self.cursor {
                Some(c) => format!(" after cursor {c}"),
                None => String::new(),
            }
        );
        Ok(resp.into_inner())
    }

    pub async fn next(&mut self) -> Result<pb::StreamEventsResponse, CliError> {
        loop {
            let stream = match &mut self.stream {
                Some(s) => s,
                None => match self.connect().await {
                    Ok(s) => self.stream.insert(s),
                    Err(e) if retryable(&e) => {
                        self.pause(&e).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            match stream.message().await {
                Ok(Some(m)) => {
                    // A resumed stream never repeats an event; this guards against a server that would.
                    if let (Some(last), Ok(new)) = (
                        self.cursor.as_deref().and_then(|c| c.parse::<u64>().ok()),
                        m.cursor.parse::<u64>(),
                    ) && new <= last
                    {
                        continue;
                    }
                    if !m.cursor.is_empty() {
                        self.cursor = Some(m.cursor.clone());
                    }
                    self.backoff = BACKOFF_MIN;
                    return Ok(m);
                }
                // The gateway ended the stream (it is shutting down): resume from where we are.
                Ok(None) => {
                    self.stream = None;
                    self.pause(&CliError::Other("the gateway ended the stream".into()))
                        .await;
                }
                Err(s) => {
                    self.stream = None;
                    let e = CliError::Status(s);
                    if !retryable(&e) {
                        return Err(e);
                    }
                    self.pause(&e).await;
                }
            }
        }
    }

    async fn pause(&mut self, why: &CliError) {
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        let wait = self.backoff.mul_f64(jitter);
        eprintln!(
            "events: {}: {}; reconnecting in {} ms{}",
            why.code(),
            out::clean(&why.message("the gateway")),
            wait.as_millis(),
            match &self.cursor {
                Some(c) => format!(" (after cursor {c})"),
                None => String::new(),
            }
        );
        tokio::time::sleep(wait).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

/// Connection trouble, restarts, overload and timeouts are retried; answers about the request itself are not.
fn retryable(e: &CliError) -> bool {
    match e {
        CliError::Timeout(_) | CliError::Other(_) => true,
        CliError::Usage(_) => false,
        CliError::Status(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::Internal
                | tonic::Code::DeadlineExceeded
                | tonic::Code::ResourceExhausted
                | tonic::Code::Aborted
        ),
    }
}

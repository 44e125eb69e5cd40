//! `whatisup channels ...`

use super::events::Follower;
use super::out::{say, say_raw};
use super::{CliError, Ctx, out};
use clap::Subcommand;
use std::io::IsTerminal;
use std::time::Duration;
use whatisup::http::shape;
use whatisup::pb;
use whatisup::pb::channel_service_client::ChannelServiceClient;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a channel (status pending; a test key creates a sandbox channel).
    Create {
        name: String,
        /// A metadata entry; repeat for more.
        #[arg(long = "metadata", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        /// Outbound pacing: messages per second (0 turns it off).
        #[arg(long)]
        send_rate: Option<f64>,
        /// Outbound pacing: burst.
        #[arg(long)]
        send_burst: Option<u32>,
    },
    /// List channels, newest first.
    List {
        /// Only channels with this status (pending, qr, connecting, connected, ...).
        #[arg(long)]
        status: Option<String>,
        /// Channels per page (1..100; the server's default is 20).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: Option<u32>,
        /// Continue after this cursor (printed when there are more).
        #[arg(long)]
        cursor: Option<String>,
        /// Follow every page.
        #[arg(long)]
        all: bool,
    },
    /// Show one channel.
    Get { id: String },
    /// Start the session (from pending, disconnected or failed).
    Connect { id: String },
    /// Draw the QR code to scan with the phone (starts the session if it is pending).
    Qr {
        id: String,
        /// Seconds to wait for a code (0..30).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=30))]
        wait: u32,
        /// Keep redrawing as the code rotates, until the channel connects.
        #[arg(long)]
        watch: bool,
    },
    /// Ask for a pair code to type on the phone instead of scanning a QR code.
    PairCode {
        id: String,
        /// The phone's number, E.164 (+15551234567).
        phone: String,
    },
    /// Unlink the device and wipe its keys.
    Logout { id: String },
    /// Delete the channel (its row is kept for audit).
    Delete { id: String },
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> Result<(), CliError> {
    let mut c = ChannelServiceClient::new(ctx.channel.clone());
    match cmd {
        Cmd::Create {
            name,
            metadata,
            send_rate,
            send_burst,
        } => {
            let metadata = parse_metadata(&metadata)?;
            let ch = ctx
                .call(c.create_channel(ctx.req(pb::CreateChannelRequest {
                    name,
                    metadata,
                    send_rate_per_sec: send_rate,
                    send_burst,
                })))
                .await?;
            print_channel(ctx, &ch);
        }
        Cmd::List {
            status,
            limit,
            cursor,
            all,
        } => {
            let mut req = pb::ListChannelsRequest {
                limit: limit.unwrap_or(0),
                cursor: cursor.unwrap_or_default(),
                status: status.unwrap_or_default(),
            };
            let mut list = ctx.call(c.list_channels(ctx.req(req.clone()))).await?;
            if all {
                let mut pages = 1;
                while let Some(next) = list.next_cursor.take().filter(|n| !n.is_empty()) {
                    // A server that hands out the same cursor again would loop forever.
                    if next == req.cursor || pages >= MAX_PAGES {
                        return Err(CliError::Other(format!(
                            "stopped after {pages} pages: the server's cursors do not advance"
                        )));
                    }
                    req.cursor = next;
                    let page = ctx.call(c.list_channels(ctx.req(req.clone()))).await?;
                    list.data.extend(page.data);
                    list.next_cursor = page.next_cursor;
                    pages += 1;
                }
            }
            if ctx.json {
                out::json(&shape::channels(&list));
            } else {
                let rows: Vec<Vec<String>> = list
                    .data
                    .iter()
                    .map(|ch| {
                        vec![
                            ch.id.clone(),
                            ch.name.clone(),
                            status_text(ch),
                            ch.engine.clone(),
                            out::opt(&ch.phone_number),
                            out::time(&ch.created_at),
                        ]
                    })
                    .collect();
                out::table(
                    &["ID", "NAME", "STATUS", "ENGINE", "PHONE", "CREATED"],
                    &rows,
                );
                if let Some(n) = list.next_cursor.as_deref().filter(|n| !n.is_empty()) {
                    eprintln!("more: --cursor {} (or --all)", out::clean(n));
                }
            }
        }
        Cmd::Get { id } => {
            let ch = ctx
                .call(c.get_channel(ctx.req(pb::GetChannelRequest { id })))
                .await?;
            print_channel(ctx, &ch);
        }
        Cmd::Connect { id } => {
            let ch = ctx
                .call(c.connect_channel(ctx.req(pb::ConnectChannelRequest { id })))
                .await?;
            print_channel(ctx, &ch);
        }
        Cmd::Logout { id } => {
            let ch = ctx
                .call(c.logout_channel(ctx.req(pb::LogoutChannelRequest { id })))
                .await?;
            print_channel(ctx, &ch);
        }
        Cmd::Delete { id } => {
            let ch = ctx
                .call(c.delete_channel(ctx.req(pb::DeleteChannelRequest { id })))
                .await?;
            print_channel(ctx, &ch);
        }
        Cmd::PairCode { id, phone } => {
            let r = ctx
                .call(c.request_pair_code(ctx.req(pb::RequestPairCodeRequest {
                    id,
                    phone_number: phone,
                })))
                .await?;
            if ctx.json {
                out::json(&shape::pair_code(&r));
            } else {
                say!("pair code: {}", out::clean(&r.code));
                say!("expires:   {}", out::time(&r.expires_at));
                say!(
                    "On the phone: Linked devices → Link a device → Link with phone number instead."
                );
            }
        }
        Cmd::Qr { id, wait, watch } => qr(ctx, &mut c, id, wait, watch).await?,
    }
    Ok(())
}

const MAX_PAGES: usize = 10_000;

async fn qr(
    ctx: &Ctx,
    c: &mut ChannelServiceClient<tonic::transport::Channel>,
    id: String,
    wait: u32,
    watch: bool,
) -> Result<(), CliError> {
    // Subscribe before asking for the code, so a rotation or a scan right after it is not missed.
    let mut follower = if watch {
        let mut f = Follower::new(
            ctx,
            pb::StreamEventsRequest {
                channel_id: id.clone(),
                events: vec!["qr.updated".into(), "channel.status_changed".into()],
                after_cursor: String::new(),
            },
            None,
        );
        f.open().await?;
        Some(f)
    } else {
        None
    };
    // The server holds the call up to `wait` seconds.
    let limit = ctx.timeout + Duration::from_secs(u64::from(wait));
    let mut req = ctx.req(pb::GetQrRequest {
        id: id.clone(),
        wait: Some(wait),
    });
    req.set_timeout(limit);
    let first = ctx.call_within(limit, c.get_qr(req)).await?;
    show_qr(ctx, &first, false);
    let Some(mut f) = follower.take() else {
        return Ok(());
    };
    let mut current = first.qr;
    loop {
        let m = f.next().await?;
        let Some(e) = m.event else { continue };
        let data = e
            .data
            .as_ref()
            .and_then(|d| serde_json::to_value(d).ok())
            .unwrap_or_default();
        let text = |k: &str| data.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        match e.event.as_str() {
            "qr.updated" => {
                let raw = text("qr");
                if raw.is_empty() || raw == current {
                    continue;
                }
                current = raw.to_string();
                let expires_at = chrono::DateTime::parse_from_rfc3339(text("expires_at"))
                    .ok()
                    .map(|t| t.with_timezone(&chrono::Utc).into());
                let r = pb::GetQrResponse {
                    png: if ctx.json {
                        whatisup::qr::png_data_url(&current)
                    } else {
                        String::new()
                    },
                    qr: current.clone(),
                    expires_at,
                };
                show_qr(ctx, &r, true);
            }
            "channel.status_changed" => {
                let (to, reason) = (text("to"), text("reason"));
                match to {
                    "connected" => {
                        if !ctx.json {
                            say!("connected");
                        }
                        return Ok(());
                    }
                    "pending" | "disconnected" | "failed" => {
                        return Err(CliError::Other(format!(
                            "the channel went to {to}{} before the code was scanned",
                            if reason.is_empty() {
                                String::new()
                            } else {
                                format!(" ({reason})")
                            }
                        )));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

fn show_qr(ctx: &Ctx, r: &pb::GetQrResponse, redraw: bool) {
    if ctx.json {
        out::json(&shape::qr(r));
        return;
    }
    let tty = std::io::stdout().is_terminal();
    if redraw && tty {
        // Clear the screen so the new code replaces the old one.
        say_raw!("\x1b[2J\x1b[H");
    }
    match out::qr_text(&r.qr, tty) {
        Some(t) => say_raw!("{t}"),
        None => say!("(the code is too long to draw: {})", out::clean(&r.qr)),
    }
    say!("expires: {}", out::time(&r.expires_at));
    say!("Scan it on the phone: WhatsApp → Linked devices → Link a device.");
}

fn status_text(ch: &pb::Channel) -> String {
    match ch.status_reason.as_deref() {
        Some(r) if !r.is_empty() => format!("{} ({r})", ch.status),
        _ => ch.status.clone(),
    }
}

fn print_channel(ctx: &Ctx, ch: &pb::Channel) {
    if ctx.json {
        out::json(&shape::channel(ch));
        return;
    }
    let metadata = ch
        .metadata
        .as_ref()
        .filter(|m| !m.fields.is_empty())
        .and_then(|m| serde_json::to_value(m).ok())
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into());
    let mut f = vec![
        ("id", ch.id.clone()),
        ("name", ch.name.clone()),
        ("status", status_text(ch)),
        ("status_since", out::time(&ch.status_since)),
        ("engine", ch.engine.clone()),
        ("phone_number", out::opt(&ch.phone_number)),
        ("metadata", metadata),
        ("created_at", out::time(&ch.created_at)),
        ("last_connected", out::time(&ch.last_connected_at)),
    ];
    if ch.deleted_at.is_some() {
        f.push(("deleted_at", out::time(&ch.deleted_at)));
    }
    out::fields(&f);
}

/// `key=value` pairs → a Struct of strings.
fn parse_metadata(pairs: &[String]) -> Result<Option<pbjson_types::Struct>, CliError> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut m = serde_json::Map::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| CliError::Usage(format!("--metadata {p:?}: expected KEY=VALUE")))?;
        m.insert(k.to_string(), serde_json::Value::String(v.to_string()));
    }
    serde_json::from_value(serde_json::Value::Object(m))
        .map(Some)
        .map_err(|e| CliError::Usage(format!("--metadata: {e}")))
}

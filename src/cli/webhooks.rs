//! `whatisup webhooks ...`: endpoints and deliveries.

use super::out::say;
use super::{CliError, Ctx, out, parse_time};
use clap::Subcommand;
use whatisup::http::shape;
use whatisup::pb;
use whatisup::pb::webhook_service_client::WebhookServiceClient;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create an endpoint; prints its signing secret once.
    Create {
        url: String,
        /// Event names or patterns, comma separated (message.*,channel.connected); none: every event.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Only this channel's events.
        #[arg(long = "channel", value_name = "CHANNEL_ID")]
        channel: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        /// Delays between attempts, comma separated (10s,5m,2h); default: the server's schedule.
        #[arg(long, value_delimiter = ',')]
        retry_schedule: Vec<String>,
    },
    /// List endpoints.
    List,
    /// Show one endpoint.
    Get { id: String },
    /// Change an endpoint; options left out keep their value.
    Update {
        id: String,
        #[arg(long)]
        url: Option<String>,
        /// Replaces the event list (comma separated).
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// Only this channel's events; "" clears the filter.
        #[arg(long = "channel", value_name = "CHANNEL_ID")]
        channel: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        /// Replaces the retry schedule (comma separated); "" returns to the server's.
        #[arg(long, value_delimiter = ',')]
        retry_schedule: Option<Vec<String>>,
    },
    /// Delete an endpoint.
    Delete { id: String },
    /// A new signing secret (printed once); the old one keeps signing for 24 h.
    RotateSecret { id: String },
    /// Queue failed deliveries again.
    Recover {
        id: String,
        /// Deliveries created since: an RFC 3339 time or a duration ago (2h, 1d).
        #[arg(long)]
        since: String,
    },
    /// List deliveries, newest first.
    Deliveries {
        #[arg(long = "endpoint", value_name = "ENDPOINT_ID")]
        endpoint: Option<String>,
        #[arg(long = "channel", value_name = "CHANNEL_ID")]
        channel: Option<String>,
        #[arg(long)]
        event: Option<String>,
        /// pending, retrying, success or failed.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one delivery with every attempt.
    Delivery { id: String },
    /// Queue one more attempt of a delivery now.
    Redeliver { id: String },
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> Result<(), CliError> {
    let mut c = WebhookServiceClient::new(ctx.channel.clone());
    match cmd {
        Cmd::Create {
            url,
            events,
            channel,
            description,
            disabled,
            retry_schedule,
        } => {
            let e = ctx
                .call(
                    c.create_webhook_endpoint(ctx.req(pb::CreateWebhookEndpointRequest {
                        url,
                        events: clean_list(events),
                        channel_id: channel,
                        enabled: disabled.then_some(false),
                        description,
                        retry_schedule: clean_list(retry_schedule),
                    })),
                )
                .await?;
            print_endpoint(ctx, &e);
        }
        Cmd::List => {
            let l = ctx
                .call(c.list_webhook_endpoints(ctx.req(pb::ListWebhookEndpointsRequest {})))
                .await?;
            if ctx.json {
                out::json(&shape::webhook_endpoints(&l));
            } else {
                let rows: Vec<Vec<String>> = l
                    .data
                    .iter()
                    .map(|e| {
                        vec![
                            e.id.clone(),
                            enabled_text(e),
                            events_text(&e.events),
                            out::opt(&e.channel_id),
                            e.url.clone(),
                        ]
                    })
                    .collect();
                out::table(&["ID", "ENABLED", "EVENTS", "CHANNEL", "URL"], &rows);
            }
        }
        Cmd::Get { id } => {
            let e = ctx
                .call(c.get_webhook_endpoint(ctx.req(pb::GetWebhookEndpointRequest { id })))
                .await?;
            print_endpoint(ctx, &e);
        }
        Cmd::Update {
            id,
            url,
            events,
            channel,
            description,
            enable,
            disable,
            retry_schedule,
        } => {
            let e = ctx
                .call(
                    c.update_webhook_endpoint(ctx.req(pb::UpdateWebhookEndpointRequest {
                        id,
                        url,
                        events: events.map(|v| pb::StringList {
                            values: clean_list(v),
                        }),
                        channel_id: channel,
                        enabled: if enable {
                            Some(true)
                        } else if disable {
                            Some(false)
                        } else {
                            None
                        },
                        description,
                        retry_schedule: retry_schedule.map(|v| pb::StringList {
                            values: clean_list(v),
                        }),
                    })),
                )
                .await?;
            print_endpoint(ctx, &e);
        }
        Cmd::Delete { id } => {
            let e = ctx
                .call(c.delete_webhook_endpoint(ctx.req(pb::DeleteWebhookEndpointRequest { id })))
                .await?;
            if ctx.json {
                out::json(&shape::webhook_endpoint(&e));
            } else {
                say!("deleted {}", out::clean(&e.id));
            }
        }
        Cmd::RotateSecret { id } => {
            let e = ctx
                .call(c.rotate_webhook_secret(ctx.req(pb::RotateWebhookSecretRequest { id })))
                .await?;
            print_endpoint(ctx, &e);
        }
        Cmd::Recover { id, since } => {
            let since = parse_time(&since)?;
            let r = ctx
                .call(
                    c.recover_webhook_endpoint(ctx.req(pb::RecoverWebhookEndpointRequest {
                        id,
                        since: Some(since),
                    })),
                )
                .await?;
            if ctx.json {
                out::json(&shape::recovered(&r));
            } else {
                say!("requeued {} deliveries", r.requeued);
            }
        }
        Cmd::Deliveries {
            endpoint,
            channel,
            event,
            status,
            limit,
            cursor,
        } => {
            let l = ctx
                .call(
                    c.list_webhook_deliveries(ctx.req(pb::ListWebhookDeliveriesRequest {
                        endpoint_id: endpoint.unwrap_or_default(),
                        channel_id: channel.unwrap_or_default(),
                        event: event.unwrap_or_default(),
                        status: status.unwrap_or_default(),
                        limit: limit.unwrap_or(0),
                        cursor: cursor.unwrap_or_default(),
                    })),
                )
                .await?;
            if ctx.json {
                out::json(&shape::webhook_deliveries(&l));
            } else {
                let rows: Vec<Vec<String>> = l
                    .data
                    .iter()
                    .map(|d| {
                        vec![
                            d.id.clone(),
                            d.status.clone(),
                            d.attempt_count.to_string(),
                            d.last_http_status
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "-".into()),
                            d.event.clone(),
                            d.endpoint_id.clone(),
                            out::time(&d.created_at),
                        ]
                    })
                    .collect();
                out::table(
                    &[
                        "ID", "STATUS", "ATTEMPTS", "HTTP", "EVENT", "ENDPOINT", "CREATED",
                    ],
                    &rows,
                );
                if let Some(n) = l.next_cursor.as_deref().filter(|n| !n.is_empty()) {
                    eprintln!("more: --cursor {}", out::clean(n));
                }
            }
        }
        Cmd::Delivery { id } => {
            let d = ctx
                .call(c.get_webhook_delivery(ctx.req(pb::GetWebhookDeliveryRequest { id })))
                .await?;
            print_delivery(ctx, &d, true);
        }
        Cmd::Redeliver { id } => {
            let d = ctx
                .call(c.redeliver_webhook(ctx.req(pb::RedeliverWebhookRequest { id })))
                .await?;
            print_delivery(ctx, &d, false);
        }
    }
    Ok(())
}

fn clean_list(v: Vec<String>) -> Vec<String> {
    v.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn events_text(events: &[String]) -> String {
    if events.is_empty() {
        "*".into()
    } else {
        events.join(",")
    }
}

fn enabled_text(e: &pb::WebhookEndpoint) -> String {
    match (&e.enabled, &e.disabled_reason) {
        (true, _) => "yes".into(),
        (false, Some(r)) => format!("no ({r})"),
        (false, None) => "no".into(),
    }
}

fn print_endpoint(ctx: &Ctx, e: &pb::WebhookEndpoint) {
    if ctx.json {
        out::json(&shape::webhook_endpoint(e));
        return;
    }
    let mut f = vec![
        ("id", e.id.clone()),
        ("url", e.url.clone()),
        ("enabled", enabled_text(e)),
        ("events", events_text(&e.events)),
        ("channel_id", out::opt(&e.channel_id)),
        ("description", out::or_dash(&e.description)),
        (
            "retry_schedule",
            if e.retry_schedule.is_empty() {
                "server default".into()
            } else {
                e.retry_schedule.join(",")
            },
        ),
        ("created_at", out::time(&e.created_at)),
        ("updated_at", out::time(&e.updated_at)),
    ];
    // Only create and rotate-secret answer with it: the one time it can be shown.
    if let Some(s) = &e.signing_secret {
        f.push(("signing_secret", format!("{s}  (shown once: store it now)")));
    }
    out::fields(&f);
}

fn print_delivery(ctx: &Ctx, d: &pb::WebhookDelivery, with_attempts: bool) {
    if ctx.json {
        out::json(&shape::webhook_delivery(d, with_attempts));
        return;
    }
    out::fields(&[
        ("id", d.id.clone()),
        ("status", d.status.clone()),
        ("endpoint_id", d.endpoint_id.clone()),
        ("event", format!("{} ({})", d.event, d.event_id)),
        ("channel_id", out::or_dash(&d.channel_id)),
        ("attempts", d.attempt_count.to_string()),
        ("next_attempt_at", out::time(&d.next_attempt_at)),
        ("last_error", out::opt(&d.last_error)),
        ("created_at", out::time(&d.created_at)),
    ]);
    if with_attempts {
        for a in &d.attempts {
            let http = a
                .http_status
                .map(|s| format!("HTTP {s}"))
                .unwrap_or_else(|| "no answer".into());
            say!(
                "  {} {} {} ms {}{}",
                out::time(&a.attempted_at),
                http,
                a.duration_ms,
                out::clean(&a.trigger),
                a.error
                    .as_deref()
                    .map(|e| format!(" {}", out::clean(e)))
                    .unwrap_or_default()
            );
        }
    }
}

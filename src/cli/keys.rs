//! `whatisup api-keys ...` over ApiKeyService (keys get the mode of the key that creates them).

use super::out::say;
use super::{CliError, Ctx, out};
use clap::Subcommand;
use whatisup::http::shape;
use whatisup::pb;
use whatisup::pb::api_key_service_client::ApiKeyServiceClient;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a key; prints its secret once.
    Create {
        #[arg(long)]
        name: String,
        /// Bind the key to one channel.
        #[arg(long = "channel", value_name = "CHANNEL_ID")]
        channel: Option<String>,
        /// When the key stops working: an RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
    },
    /// List keys (never their secrets).
    List,
    /// Delete a key.
    Delete { id: String },
}

pub async fn run(ctx: &Ctx, cmd: Cmd) -> Result<(), CliError> {
    let mut c = ApiKeyServiceClient::new(ctx.channel.clone());
    match cmd {
        Cmd::Create {
            name,
            channel,
            expires_at,
        } => {
            let expires_at = match expires_at {
                Some(t) => Some(
                    chrono::DateTime::parse_from_rfc3339(t.trim())
                        .map_err(|e| CliError::Usage(format!("--expires-at {t:?}: {e}")))?
                        .with_timezone(&chrono::Utc)
                        .into(),
                ),
                None => None,
            };
            let r = ctx
                .call(c.create_api_key(ctx.req(pb::CreateApiKeyRequest {
                    name,
                    channel_id: channel,
                    expires_at,
                })))
                .await?;
            if ctx.json {
                out::json(&shape::created_api_key(&r));
            } else {
                if let Some(k) = &r.api_key {
                    eprintln!(
                        "created {} key {} (the secret is shown once):",
                        out::clean(&k.mode),
                        out::clean(&k.id)
                    );
                }
                say!("{}", out::clean(&r.secret));
            }
        }
        Cmd::List => {
            let l = ctx
                .call(c.list_api_keys(ctx.req(pb::ListApiKeysRequest {})))
                .await?;
            if ctx.json {
                out::json(&shape::api_keys(&l));
            } else {
                let rows: Vec<Vec<String>> = l
                    .data
                    .iter()
                    .map(|k| {
                        vec![
                            k.id.clone(),
                            k.name.clone(),
                            k.mode.clone(),
                            format!("{}…", k.prefix),
                            out::opt(&k.channel_id),
                            out::time(&k.expires_at),
                            out::time(&k.last_used_at),
                        ]
                    })
                    .collect();
                out::table(
                    &[
                        "ID",
                        "NAME",
                        "MODE",
                        "PREFIX",
                        "CHANNEL",
                        "EXPIRES",
                        "LAST USED",
                    ],
                    &rows,
                );
            }
        }
        Cmd::Delete { id } => {
            let k = ctx
                .call(c.delete_api_key(ctx.req(pb::DeleteApiKeyRequest { id })))
                .await?;
            if ctx.json {
                out::json(&shape::api_key(&k));
            } else {
                say!("deleted {}", out::clean(&k.id));
            }
        }
    }
    Ok(())
}

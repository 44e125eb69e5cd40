use anyhow::Context;
use clap::{Parser, Subcommand};
use whatisup::config::Config;
use whatisup::model::Mode;
use whatisup::store;

mod cli;

#[derive(Parser)]
#[command(
    name = "whatisup",
    version,
    about = "Self-hosted WhatsApp gateway: gRPC, REST, SSE and webhooks on one port"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway: API, session supervisor and event hub.
    Serve(#[command(flatten)] Box<Config>),
    /// Create the database if missing and apply migrations.
    Migrate(#[command(flatten)] Box<Config>),
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Manage customers (tenants).
    Customers {
        #[command(subcommand)]
        cmd: CustomersCmd,
    },
    /// Print the OpenAPI 3.1 document of the REST API (what GET /openapi.json serves); needs no database.
    Openapi,
    /// Client commands, talking to a running gateway over gRPC.
    #[command(flatten)]
    Client(cli::Command),
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create an API key and print its secret (shown once).
    Create {
        #[arg(long)]
        name: String,
        /// A test-mode key (its channels run on the simulated phone).
        #[arg(long)]
        test: bool,
        /// Bind the key to one channel.
        #[arg(long)]
        channel: Option<String>,
        /// The customer; default: the customer named "default".
        #[arg(long)]
        customer: Option<String>,
        #[command(flatten)]
        config: Box<Config>,
    },
}

#[derive(Subcommand)]
enum CustomersCmd {
    /// Create a customer and print its first keys (shown once).
    Create {
        name: String,
        #[command(flatten)]
        config: Box<Config>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli))
}

async fn open(
    config: &Config,
) -> anyhow::Result<(deadpool_postgres::Pool, whatisup::crypto::MasterKeys)> {
    let keys = whatisup::crypto::MasterKeys::load(
        config.master_key.as_deref(),
        config.master_key_previous.as_deref(),
        &config.data_dir,
    )?;
    let pool = store::connect(&config.database_url, 2).await?;
    store::migrate(&pool).await?;
    Ok((pool, keys))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Openapi => {
            let doc = whatisup::http::openapi::document().map_err(anyhow::Error::msg)?;
            print!("{doc}");
            Ok(())
        }
        Cmd::Client(cmd) => std::process::exit(cli::run(cmd).await),
        Cmd::Serve(config) => {
            whatisup::init_tracing(config.log_format);
            let listener = tokio::net::TcpListener::bind(&config.listen)
                .await
                .with_context(|| format!("binding {}", config.listen))?;
            whatisup::serve(*config, listener).await
        }
        Cmd::Migrate(config) => {
            whatisup::init_tracing(config.log_format);
            let pool = store::connect(&config.database_url, 2).await?;
            store::migrate(&pool).await?;
            println!("database is migrated");
            Ok(())
        }
        Cmd::Keys {
            cmd:
                KeysCmd::Create {
                    name,
                    test,
                    channel,
                    customer,
                    config,
                },
        } => {
            whatisup::init_tracing(config.log_format);
            let (pool, keys) = open(&config).await?;
            if store::customers::bootstrap_if_empty(&pool, &keys)
                .await?
                .is_some()
            {
                eprintln!(
                    "note: the database was empty; created customer \"default\" (its own keys were not printed)"
                );
            }
            let customer_id = store::customers::resolve(&pool, customer.as_deref()).await?;
            let mode = if test { Mode::Test } else { Mode::Live };
            let client = pool.get().await?;
            if let Some(ch) = &channel {
                let ok = client
                    .query_opt(
                        "SELECT 1 FROM channels WHERE id = $1 AND customer_id = $2 AND mode = $3 AND deleted_at IS NULL",
                        &[ch, &customer_id, &mode.as_str()],
                    )
                    .await?;
                anyhow::ensure!(
                    ok.is_some(),
                    "no {} channel {ch} for customer {customer_id}",
                    mode.as_str()
                );
            }
            drop(client);
            let (row, secret) = store::keys::create_audited(
                &pool,
                &keys,
                &store::keys::NewKey {
                    customer_id: &customer_id,
                    name: &name,
                    mode,
                    channel_id: channel.as_deref(),
                    expires_at: None,
                },
                "cli",
            )
            .await?;
            eprintln!(
                "created {} key {} for customer {customer_id} (the secret is shown once):",
                mode.as_str(),
                row.id
            );
            println!("{secret}");
            Ok(())
        }
        Cmd::Customers {
            cmd: CustomersCmd::Create { name, config },
        } => {
            whatisup::init_tracing(config.log_format);
            let (pool, keys) = open(&config).await?;
            let b = store::customers::create(&pool, &keys, &name).await?;
            println!("customer: {}", b.customer_id);
            println!("live key: {}", b.live_key);
            println!("test key: {}", b.test_key);
            Ok(())
        }
    }
}

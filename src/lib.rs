//! whatisup: a self-hosted WhatsApp gateway. `serve` runs the API (gRPC, grpc-web, REST, SSE), the session
//! supervisor and the event hub in one process on one port.

pub mod api;
pub mod config;
pub mod crypto;
pub mod engine;
pub mod error;
pub mod events;
pub mod http;
pub mod media;
pub mod metrics;
pub mod model;
pub mod pb;
pub mod qr;
pub mod sessions;
pub mod store;
pub mod webhooks;
pub mod wkt;

use crate::api::App;
use crate::config::{Config, LogFormat};
use crate::engine::Engine;
use crate::engine::sandbox::{SandboxConfig, SandboxEngine};
use crate::engine::whatsapp::{WhatsAppConfig, WhatsAppEngine};
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn,h2=warn,hyper=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// A running gateway.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    background: CancellationToken,
}

impl Running {
    /// Graceful shutdown: stop accepting, end streams, stop sessions (releasing their leases), exit.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let server = tokio::time::timeout(Duration::from_secs(3), self.server).await;
        self.app.node.shutdown(Duration::from_secs(6)).await;
        self.background.cancel();
        match server {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Ok(()),
        }
    }
}

/// Serves until SIGINT or SIGTERM.
pub async fn serve(config: Config, listener: TcpListener) -> anyhow::Result<()> {
    serve_until(config, listener, shutdown_signal()).await
}

pub async fn serve_until(
    config: Config,
    listener: TcpListener,
    until: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let running = start(config, listener).await?;
    tracing::info!(addr = %running.addr, node_id = %running.app.node.id, "whatisup is serving");
    until.await;
    tracing::info!("shutting down");
    running.shutdown().await
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// How often a node deletes expired media.
const MEDIA_CLEANUP_EVERY: Duration = Duration::from_secs(60);

/// Connects, migrates, bootstraps and starts serving on `listener`.
pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<Running> {
    let cfg = Arc::new(config);
    let webhook_settings = Arc::new(webhooks::Settings::from_config(&cfg)?);
    let keys = Arc::new(crypto::MasterKeys::load(
        cfg.master_key.as_deref(),
        cfg.master_key_previous.as_deref(),
        &cfg.data_dir,
    )?);
    let pool = store::connect(&cfg.database_url, cfg.database_pool).await?;
    store::migrate(&pool).await?;
    if let Some(b) = store::customers::bootstrap_if_empty(&pool, &keys).await? {
        tracing::info!(customer_id = %b.customer_id, "first start: created customer \"default\" with a live and a test key");
        if cfg.print_bootstrap_keys {
            println!(
                "\nFirst start: customer \"default\" ({}) was created. Its keys are shown once:",
                b.customer_id
            );
            println!("  live key: {}", b.live_key);
            println!(
                "  test key: {}   (test mode: channels run on the simulated phone)\n",
                b.test_key
            );
        }
    }

    let metrics = Arc::new(metrics::Metrics::new());
    let journal = events::Journal::spawn(&cfg.database_url, metrics.clone())?;
    let hub = Arc::new(events::Hub::new());
    let sandbox: Arc<dyn Engine> = Arc::new(
        SandboxEngine::new(SandboxConfig {
            connect: Duration::from_millis(cfg.sandbox_connect_ms),
            qr_ttl: Duration::from_millis(cfg.sandbox_qr_ttl_ms.max(100)),
            qr_count: cfg.sandbox_qr_count,
        })
        .with_store(pool.clone()),
    );
    let media = Arc::new(media::Media::new(&cfg, pool.clone(), keys.clone())?);
    let whatsapp: Arc<dyn Engine> = Arc::new(WhatsAppEngine::new(
        pool.clone(),
        keys.clone(),
        WhatsAppConfig {
            url: cfg.wa_url.clone(),
            version: cfg.wa_version()?,
            device_name: cfg.wa_device_name.clone(),
            group_commit: cfg.wa_group_commit,
            media_downloads: usize::from(cfg.media_transfers.max(1)),
        },
        media.clone(),
    )?);
    let node = sessions::Node::new(
        cfg.clone(),
        pool.clone(),
        journal.clone(),
        keys.clone(),
        vec![sandbox, whatsapp],
        metrics.clone(),
    );
    {
        let client = pool.get().await?;
        let stale = store::leases::expire_node(&client, &node.id).await?;
        if stale > 0 {
            tracing::info!(
                sessions = stale,
                "resuming the sessions a previous process with this node id left"
            );
        }
    }
    let app = Arc::new(App::new(
        cfg.clone(),
        pool.clone(),
        keys,
        journal,
        hub.clone(),
        node.clone(),
        metrics.clone(),
        webhook_settings.clone(),
        media.clone(),
    ));

    let background = CancellationToken::new();
    let dispatcher = webhooks::dispatcher::Dispatcher::new(
        pool.clone(),
        webhook_settings,
        app.keys.clone(),
        metrics.clone(),
        node.id.clone(),
        hub.webhooks.clone(),
    )?;
    tokio::spawn(dispatcher.run(background.clone()));
    tokio::spawn(store::cleanup::run(
        pool.clone(),
        store::cleanup::Retention {
            message_secs: cfg.message_retention_secs,
            sandbox_secs: cfg.sandbox_retention_secs,
        },
        Duration::from_secs(cfg.cleanup_interval_secs.max(1)),
        background.clone(),
    ));
    tokio::spawn(media.cleanup_loop(MEDIA_CLEANUP_EVERY, background.clone()));
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::channel::<String>(4_096);
    tokio::spawn(events::hub::run(
        hub,
        pool.clone(),
        cfg.database_url.clone(),
        cmd_tx,
        metrics,
        background.clone(),
    ));
    {
        let node = node.clone();
        tokio::spawn(async move {
            while let Some(payload) = cmd_rx.recv().await {
                node.remote_command(&payload).await;
            }
        });
    }
    tokio::spawn(node.clone().renew_loop());
    tokio::spawn(node.clone().scan_loop());
    tokio::spawn(node.clone().outbox_loop());

    let stop = CancellationToken::new();
    let router = build_router(app.clone(), stop.clone())?;
    let addr = listener.local_addr()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let shutdown = stop.clone();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .accept_http1(true)
            .http2_keepalive_interval(Some(Duration::from_secs(25)))
            .add_routes(tonic::service::Routes::from(router))
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
            .context("server")
    });
    Ok(Running {
        addr,
        app,
        stop,
        server,
        background,
    })
}

fn build_router(app: Arc<App>, stop: CancellationToken) -> anyhow::Result<axum::Router> {
    use crate::api::{
        audit::AuditGrpc, audit::LimitsGrpc, channels::ChannelGrpc, events::EventGrpc,
        keys::ApiKeyGrpc, messages::MessageGrpc, sandbox::SandboxGrpc, webhooks::WebhookGrpc,
    };
    use crate::pb::media_service_server::MediaServiceServer;
    use crate::pb::{
        api_key_service_server::ApiKeyServiceServer, channel_service_server::ChannelServiceServer,
        event_service_server::EventServiceServer, message_service_server::MessageServiceServer,
        sandbox_service_server::SandboxServiceServer, webhook_service_server::WebhookServiceServer,
    };
    use crate::pb::{
        audit_service_server::AuditServiceServer, limits_service_server::LimitsServiceServer,
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // Serving from the start: /readyz is the readiness check that also asks the database.
    tokio::spawn(async move {
        health_reporter
            .set_serving::<ChannelServiceServer<ChannelGrpc>>()
            .await;
    });
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    // A request message is held to the REST body cap (WHATISUP_MAX_BODY_BYTES), so both faces accept the same.
    let max = app.cfg.max_body_bytes;
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            ChannelServiceServer::new(ChannelGrpc(app.clone())).max_decoding_message_size(max),
        )
        .add_service(
            SandboxServiceServer::new(SandboxGrpc(app.clone())).max_decoding_message_size(max),
        )
        .add_service(EventServiceServer::new(EventGrpc(app.clone())).max_decoding_message_size(max))
        .add_service(
            ApiKeyServiceServer::new(ApiKeyGrpc(app.clone())).max_decoding_message_size(max),
        )
        .add_service(
            WebhookServiceServer::new(WebhookGrpc(app.clone())).max_decoding_message_size(max),
        )
        .add_service(
            MessageServiceServer::new(MessageGrpc(app.clone())).max_decoding_message_size(max),
        )
        .add_service(AuditServiceServer::new(AuditGrpc(app.clone())).max_decoding_message_size(max))
        .add_service(
            LimitsServiceServer::new(LimitsGrpc(app.clone())).max_decoding_message_size(max),
        )
        .add_service(
            // Uploads are one message: allow the media cap (plus the envelope).
            MediaServiceServer::new(api::media::MediaGrpc(app.clone()))
                .max_decoding_message_size(app.media.max_bytes.saturating_add(64 * 1024)),
        );
    let router = grpc
        .routes()
        .into_axum_router()
        // grpc-web only around the gRPC routes: it answers 400 to every other HTTP/1.1 request.
        .layer(tonic_web::GrpcWebLayer::new())
        .merge(http::router(app.clone()))
        .fallback(http::fallback)
        .layer(axum::Extension(http::Stopping(stop)))
        .layer(axum::middleware::from_fn_with_state(app, http::context));
    Ok(router)
}

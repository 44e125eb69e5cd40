//! `fakewa --listen 127.0.0.1:PORT`: the fake WhatsApp Web server as a process, for benchmarks
//! and manual runs. Serves `/ws/chat` and the JSON control API on the same port.

use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser)]
#[command(about = "A fake WhatsApp Web server for whatisup's tests and benchmarks")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8899")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "fakewa=info".into()),
        )
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let server = fakewa::FakeWa::start(listener).await?;
    println!(
        "fakewa listening on {} (client URL {})",
        server.addr(),
        server.ws_url()
    );
    // Serves until the process is killed: all state is in memory and meant to die with it.
    std::future::pending::<()>().await;
    drop(server);
    Ok(())
}

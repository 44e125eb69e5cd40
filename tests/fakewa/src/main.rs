//! `fakewa --listen 127.0.0.1:PORT`: the fake WhatsApp Web server as a process, for benchmarks
//! and manual runs. Serves `/ws/chat` and the JSON control API on the same port.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;

/// The system allocator, counting live bytes for `/control/stats` (`heap_bytes`): the honest
/// per-connection memory figure, which RSS blurs with allocator caching.
struct Counting;

static LIVE: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_add(new_size as u64, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Parser)]
#[command(about = "A fake WhatsApp Web server for whatisup's tests and benchmarks")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8899")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs on stderr: stdout carries only the banner, which scripts read for the address.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "fakewa=info".into()),
        )
        .init();
    fakewa::set_heap_meter(|| LIVE.load(Ordering::Relaxed));
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

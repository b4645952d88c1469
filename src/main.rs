//! The `likewise` command line: parses flags into a `Config` and runs the server.

use clap::{Parser, Subcommand};
use likewise::config::{Config, Upstream};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// A MongoDB wire-protocol proxy that gives any MongoDB deployment semantic
/// (vector) indexes. Point unmodified drivers and mongosh at it instead of
/// at mongod.
#[derive(Parser)]
#[command(name = "likewise", version)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the proxy. Prints `likewise listening on HOST:PORT` to stdout when
    /// ready; logs go to stderr.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to accept MongoDB clients on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:27018", value_name = "HOST:PORT")]
    listen: String,
    /// The MongoDB server to proxy, as a mongodb:// URI (first host is used).
    #[arg(long, value_name = "URI")]
    upstream: String,
    /// Directory for the proxy's own state (index files); created if missing.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Most client connections served at once; further clients wait.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    max_connections: usize,
    /// Milliseconds to wait for the upstream to accept a connection before a
    /// client's handshake is answered with a HostUnreachable error.
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    connect_timeout_ms: u64,
    /// Upstream database where the proxy stores its metadata (search index
    /// definitions), so restarts and other proxies on the same upstream
    /// share them.
    #[arg(long, default_value = "likewise", value_name = "DB")]
    metadata_db: String,
    /// When the upstream has no change streams (a standalone mongod), how
    /// often a full scan repairs what writes that bypass the proxy changed.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    reconcile_interval_ms: u64,
    /// Serve Prometheus metrics (`/metrics`) and a health check (`/health`)
    /// over HTTP here; port 0 picks a free port. Prints
    /// `likewise metrics on HOST:PORT` when ready.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// On SIGINT/SIGTERM: stop accepting, let requests in flight finish for
    /// up to this long, write index snapshots, exit.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    shutdown_timeout_ms: u64,
    /// Threads serving connections, each a single-threaded runtime that owns
    /// the connections it is given (default: one per CPU core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Log format on stderr: `human` or `json` (one object per line).
    #[arg(long, default_value = "human", value_name = "FORMAT", value_parser = ["human", "json"])]
    log_format: String,
    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    log_level: tracing::Level,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(args.log_level);
    if args.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let upstream = match Upstream::parse(&args.upstream) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("likewise: --upstream: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &args.data_dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("likewise: --data-dir {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    }
    let mut config = Config::new(upstream);
    config.data_dir = args.data_dir;
    config.max_connections = args.max_connections.max(1);
    config.connect_timeout = Duration::from_millis(args.connect_timeout_ms);
    config.metadata_db = args.metadata_db;
    config.reconcile_interval = Duration::from_millis(args.reconcile_interval_ms.max(1));
    config.shutdown_timeout = Duration::from_millis(args.shutdown_timeout_ms);

    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let started = likewise::server::Workers::start(threads, "likewise-worker").and_then(|w| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| (w, rt))
    });
    let (workers, runtime) = match started {
        Ok(started) => started,
        Err(e) => {
            eprintln!("likewise: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("likewise: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let local = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("likewise: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(upstream = %config.upstream.uri, threads, "proxying");
        let shared = std::sync::Arc::new(likewise::proxy::Shared::new(config));
        let mut stdout = std::io::stdout();
        if let Some(address) = &args.metrics_listen {
            let metrics_listener = match tokio::net::TcpListener::bind(address).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("likewise: cannot serve metrics on {address}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Ok(bound) = metrics_listener.local_addr() {
                let _ = writeln!(stdout, "likewise metrics on {bound}");
            }
            tokio::spawn(likewise::metrics::serve(
                metrics_listener,
                shared.metrics.clone(),
                shared.registry.clone(),
            ));
        }
        let _ = writeln!(stdout, "likewise listening on {local}");
        let _ = stdout.flush();
        likewise::server::run_shared(listener, shared, shutdown_signal(), workers.handles()).await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

//! The `likewise` command line: parses flags into a `Config` and runs the server.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use likewise::config::{Config, FileConfig, Upstream};
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
    /// ready; logs go to stderr. Every flag can also come from a `LIKEWISE_*`
    /// environment variable or a `--config` file; precedence: flags, then
    /// environment, then the file, then the built-in defaults.
    Serve(Box<ServeArgs>),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file: prints the settings it gives, or what is
    /// wrong and where (exit 1).
    Check {
        /// The TOML file to check.
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML file with any of these settings, named as the flags
    /// (`listen = "0.0.0.0:27018"`); see likewise.example.toml.
    #[arg(long, env = "LIKEWISE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to accept MongoDB clients on; port 0 picks a free port.
    #[arg(
        long,
        env = "LIKEWISE_LISTEN",
        default_value = "127.0.0.1:27018",
        value_name = "HOST:PORT"
    )]
    listen: String,
    /// The MongoDB deployment to proxy: a standard connection string
    /// (`mongodb://` with one or more hosts, or `mongodb+srv://`), every
    /// option as the official driver reads it. Clients are pinned to its
    /// primary, its mongos routers, or its standalone server.
    #[arg(long, env = "LIKEWISE_UPSTREAM", value_name = "URI")]
    upstream: String,
    /// Directory for the proxy's own state (index files); created if missing.
    #[arg(long, env = "LIKEWISE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Directory of the default `text` model (`createModel` with kind
    /// "text" and no path): a BERT-family sentence encoder with
    /// config.json, tokenizer.json and model.safetensors. scripts/fetch-model
    /// puts all-MiniLM-L6-v2 at the default location.
    #[arg(
        long,
        env = "LIKEWISE_DEFAULT_MODEL",
        default_value = ".cache/models/all-MiniLM-L6-v2",
        value_name = "DIR"
    )]
    default_model: PathBuf,
    /// Most client connections served at once; further clients wait.
    #[arg(
        long,
        env = "LIKEWISE_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_name = "N"
    )]
    max_connections: usize,
    /// Milliseconds to wait for the upstream to accept a connection before a
    /// client's handshake is answered with a HostUnreachable error.
    #[arg(
        long,
        env = "LIKEWISE_CONNECT_TIMEOUT_MS",
        default_value_t = 5_000,
        value_name = "MS"
    )]
    connect_timeout_ms: u64,
    /// Upstream database where the proxy stores its metadata (search index
    /// definitions), so restarts and other proxies on the same upstream
    /// share them.
    #[arg(
        long,
        env = "LIKEWISE_METADATA_DB",
        default_value = "likewise",
        value_name = "DB"
    )]
    metadata_db: String,
    /// When the upstream has no change streams (a standalone mongod), how
    /// often a full scan repairs what writes that bypass the proxy changed.
    #[arg(
        long,
        env = "LIKEWISE_RECONCILE_INTERVAL_MS",
        default_value_t = 60_000,
        value_name = "MS"
    )]
    reconcile_interval_ms: u64,
    /// Serve Prometheus metrics (`/metrics`), a health check (`/health`:
    /// 503 while no primary, router or standalone is reachable) and a
    /// readiness check (`/ready`: also 503 until the stored definitions are
    /// loaded) over HTTP here; port 0 picks a free port. Prints
    /// `likewise metrics on HOST:PORT` when ready.
    #[arg(long, env = "LIKEWISE_METRICS_LISTEN", value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// On SIGINT/SIGTERM: stop accepting, let requests in flight finish for
    /// up to this long, write index snapshots, exit.
    #[arg(
        long,
        env = "LIKEWISE_SHUTDOWN_TIMEOUT_MS",
        default_value_t = 10_000,
        value_name = "MS"
    )]
    shutdown_timeout_ms: u64,
    /// Most results one vector query may ask for (`$vectorSearch` `limit`,
    /// `$like` `n`; at most 10000, Atlas's bound). A query asking for more
    /// gets a BadValue error.
    #[arg(
        long,
        env = "LIKEWISE_MAX_VECTOR_RESULTS",
        default_value_t = 10_000,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..=10_000)
    )]
    max_vector_results: u64,
    /// When the upstream checks who clients are (the --upstream URI has
    /// credentials): megabytes that connections which have not yet
    /// authenticated may hold in partly received frames, all together. A
    /// connection that would need more is closed.
    #[arg(
        long,
        env = "LIKEWISE_MAX_UNAUTHENTICATED_BUFFER_MB",
        default_value_t = 256,
        value_name = "MB",
        value_parser = clap::value_parser!(u64).range(1..=1_000_000)
    )]
    max_unauthenticated_buffer_mb: u64,
    /// Most search indexes this proxy serves, all collections together
    /// (each holds one upstream connection for its change stream; budget
    /// the upstream's connections for clients plus these). More gets a
    /// CannotCreateIndex error. One collection may have at most 64.
    #[arg(
        long,
        env = "LIKEWISE_MAX_SEARCH_INDEXES",
        default_value_t = 256,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..=100_000)
    )]
    max_search_indexes: u64,
    /// Milliseconds a request may take, the proxy's own work and the
    /// upstream's answer together (plus any `maxAwaitTimeMS`, or `maxTimeMS`
    /// of a `getMore`, the client asked to wait). Past it the client gets a
    /// NetworkTimeout error (labelled for drivers' retries) and keeps its
    /// connection; the abandoned request's replies are dropped before the
    /// next one goes upstream. 0: no limit.
    #[arg(
        long,
        env = "LIKEWISE_REQUEST_TIMEOUT_MS",
        default_value_t = 0,
        value_name = "MS"
    )]
    request_timeout_ms: u64,
    /// PEM certificate chain served to clients: with --tls-key-file, clients
    /// connect with `tls=true` (and only so).
    #[arg(
        long,
        env = "LIKEWISE_TLS_CERT_FILE",
        value_name = "FILE",
        requires = "tls_key_file"
    )]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(
        long,
        env = "LIKEWISE_TLS_KEY_FILE",
        value_name = "FILE",
        requires = "tls_cert_file"
    )]
    tls_key_file: Option<PathBuf>,
    /// PEM certificate chain and key (one file) presented on the
    /// connections the proxy opens for clients, for an upstream that
    /// requires a client certificate on every connection. Give one whose
    /// subject is no database user: clients could authenticate as it with
    /// MONGODB-X509. (The URI's tlsCertificateKeyFile is the proxy's own
    /// identity and is never presented for clients.)
    #[arg(long, env = "LIKEWISE_UPSTREAM_CLIENT_CERT", value_name = "FILE")]
    upstream_client_cert: Option<PathBuf>,
    /// A file whose contents (16 bytes to 64 KiB, e.g. 32 random bytes) key
    /// the signatures on the definitions the proxy stores in the metadata
    /// database: proxies sharing an upstream share the file. Without it the
    /// key is derived from the --upstream credentials (the password), or is
    /// a fixed one when the URI has none (an upstream without access
    /// control, where no client has fewer rights than the proxy).
    /// Definitions signed under another key are ignored, with a warning.
    #[arg(long, env = "LIKEWISE_METADATA_KEY_FILE", value_name = "FILE")]
    metadata_key_file: Option<PathBuf>,
    /// Hosts `http` models may call, as `host` (any port) or `host:port`;
    /// repeat the flag or separate with commas. Without it no `http` model
    /// can be created: a client that may create models cannot point the
    /// proxy at anything the operator did not name.
    #[arg(
        long,
        env = "LIKEWISE_ALLOW_MODEL_HOST",
        value_name = "HOST[:PORT]",
        value_delimiter = ','
    )]
    allow_model_host: Vec<String>,
    /// Directories a `text` model's `path` and an `http` model's
    /// `tlsCAFile` may be under (the --default-model directory always is);
    /// repeat the flag or separate with commas.
    #[arg(
        long,
        env = "LIKEWISE_ALLOW_MODEL_DIR",
        value_name = "DIR",
        value_delimiter = ','
    )]
    allow_model_dir: Vec<PathBuf>,
    /// Threads serving connections, each a single-threaded runtime that owns
    /// the connections it is given (default: one per CPU core).
    #[arg(long, env = "LIKEWISE_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Log format on stderr: `human` or `json` (one object per line).
    #[arg(long, env = "LIKEWISE_LOG_FORMAT", default_value = "human", value_name = "FORMAT", value_parser = ["human", "json"])]
    log_format: String,
    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(
        long,
        env = "LIKEWISE_LOG_LEVEL",
        default_value = "info",
        value_name = "LEVEL"
    )]
    log_level: tracing::Level,
}

/// Allocations of this size and up get their own mapping, returned to the
/// system when freed (glibc's `M_MMAP_THRESHOLD`; see [`fix_mmap_threshold`]).
const MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`]. Left to itself,
/// glibc raises the threshold to the size of each large block freed (up to
/// 32 MiB), so after the first scan batch of a build every later batch
/// comes from the heap, and what they leave stays resident among the
/// index's own allocations. Measured with `benches/proxy_memory.py` (a
/// 40,000 × 384 float index built through the release proxy): anonymous
/// memory grew 1.75× the raw vectors with glibc's dynamic threshold, 1.20×
/// with it fixed. Setting it also turns the dynamic adjustment off
/// (mallopt(3)).
fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes the allocator's parameters; called
    // first thing in `main`, before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

fn main() -> ExitCode {
    fix_mmap_threshold();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut command = Cli::command();
    if let Some(path) = config_path(&args) {
        let file = match read_config(&path) {
            Ok(file) => file,
            Err(e) => {
                eprintln!("likewise: --config {}: {e}", path.display());
                return ExitCode::from(2);
            }
        };
        // The file's values become defaults: flags and environment win.
        command = command.mut_subcommand("serve", |mut serve| {
            for (name, value) in file.settings() {
                let id = name.replace('-', "_");
                serve = serve.mut_arg(id, |arg| arg.default_value(value).required(false));
            }
            serve
        });
    }
    let cli = match Cli::from_arg_matches(&command.get_matches_from(args)) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Commands::Serve(args) => serve(*args),
        Commands::Config(ConfigCommand::Check { file }) => match read_config(&file) {
            Ok(config) => {
                // Written without panicking when stdout closes early
                // (`| head`).
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}: ok", file.display());
                for (name, value) in config.settings() {
                    let shown = if name == "upstream" {
                        Upstream::parse(&value).map(|u| u.uri).unwrap_or(value)
                    } else {
                        value
                    };
                    if writeln!(out, "  {name} = {shown}").is_err() {
                        break;
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::FAILURE
            }
        },
    }
}

/// The operator's `--metadata-key-file`, hashed with SHA-256, as the
/// metadata key (otherwise `Config::new` derives it from the upstream
/// credentials).
fn metadata_key(file: &Option<PathBuf>) -> Result<Option<[u8; 32]>, String> {
    use sha2::Digest;
    use std::io::Read;
    let Some(path) = file else {
        return Ok(None);
    };
    let shown = path.display();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64 * 1024 + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("--metadata-key-file {shown}: {e}"))?;
    if !(16..=64 * 1024).contains(&bytes.len()) {
        return Err(format!(
            "--metadata-key-file {shown}: must hold 16 bytes to 64 KiB"
        ));
    }
    Ok(Some(sha2::Sha256::digest(&bytes).into()))
}

/// `--config FILE`, `--config=FILE` or `LIKEWISE_CONFIG`, found before the
/// full parse so the file can supply defaults.
fn config_path(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("LIKEWISE_CONFIG").map(PathBuf::from)
}

fn read_config(path: &std::path::Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let file = FileConfig::parse(&text)?;
    check_values(&file)?;
    Ok(file)
}

/// Checks the file's values as `serve` would read them (the flags'
/// parsers: possible values, ranges, numbers, levels; addresses as
/// `HOST:PORT`), so `config check` says "ok" only for a file `serve`
/// accepts. The upstream may come from elsewhere (a flag, the
/// environment): a placeholder stands in when the file has none.
fn check_values(file: &FileConfig) -> Result<(), String> {
    let mut argv: Vec<String> = vec!["serve".into()];
    for (name, value) in file.settings() {
        argv.push(format!("--{name}={value}"));
    }
    if file.upstream.is_none() {
        argv.push("--upstream=mongodb://127.0.0.1:27017".into());
    }
    let matches = <ServeArgs as clap::Args>::augment_args(clap::Command::new("likewise"))
        .try_get_matches_from(argv)
        .map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("");
            first.trim_start_matches("error: ").to_string()
        })?;
    let args = ServeArgs::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let address = |name: &str, value: &str| -> Result<(), String> {
        let port = value.rsplit_once(':').map(|(_, p)| p);
        match port.map(str::parse::<u16>) {
            Some(Ok(_)) => Ok(()),
            _ => Err(format!("{name}: {value:?} is not HOST:PORT")),
        }
    };
    address("listen", &args.listen)?;
    if let Some(metrics) = &args.metrics_listen {
        address("metrics-listen", metrics)?;
    }
    Ok(())
}

fn serve(args: ServeArgs) -> ExitCode {
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only for a terminal: logs redirected to a file stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        // Quantized indexes keep their full-precision vectors here.
        likewise::index::quantized::set_spill_dir(dir.clone());
    }
    let mut config = Config::new(upstream);
    config.data_dir = args.data_dir;
    config.default_model = args.default_model;
    match metadata_key(&args.metadata_key_file) {
        Ok(Some(key)) => config.metadata_key = key,
        Ok(None) => {
            // A mechanism without a password (X.509, AWS, OIDC) leaves no
            // secret to derive the key from.
            if let Some(c) = config
                .upstream
                .credentials
                .as_ref()
                .filter(|c| c.password.is_empty())
            {
                eprintln!(
                    "likewise: --upstream authenticates with {} (no password to derive the \
                     metadata key from): give --metadata-key-file",
                    c.mechanism.as_deref().unwrap_or("no password")
                );
                return ExitCode::from(2);
            }
        }
        Err(e) => {
            eprintln!("likewise: {e}");
            return ExitCode::from(2);
        }
    }
    config.model_access = likewise::config::ModelAccess {
        hosts: args.allow_model_host,
        dirs: args.allow_model_dir,
    };
    config.max_connections = args.max_connections.max(1);
    config.connect_timeout = Duration::from_millis(args.connect_timeout_ms);
    config.metadata_db = args.metadata_db;
    config.reconcile_interval = Duration::from_millis(args.reconcile_interval_ms.max(1));
    config.shutdown_timeout = Duration::from_millis(args.shutdown_timeout_ms);
    config.max_vector_results = args.max_vector_results as usize;
    config.max_search_indexes = args.max_search_indexes as usize;
    config.unauthenticated_buffer = (args.max_unauthenticated_buffer_mb as usize) << 20;
    if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
        match likewise::tls::server_config(cert, key) {
            Ok(tls) => config.client_tls = Some(tls),
            Err(e) => {
                eprintln!("likewise: --tls-cert-file / --tls-key-file: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if args.upstream_client_cert.is_some() && config.upstream.tls.is_none() {
        eprintln!(
            "likewise: --upstream-client-cert needs TLS to the upstream (tls=true in its URI)"
        );
        return ExitCode::from(2);
    }
    if let Some(mut tls) = config.upstream.tls.clone() {
        // Client connections never present the proxy's certificate (the
        // URI's tlsCertificateKeyFile): with it, a client could
        // authenticate as the proxy (MONGODB-X509). The driver alone uses
        // it, for the proxy's own connections; client connections present
        // --upstream-client-cert, if given.
        tls.cert_key_file = args.upstream_client_cert.clone();
        match likewise::tls::client_config(&tls) {
            Ok(tls) => config.upstream_tls = Some(tls),
            Err(e) => {
                eprintln!("likewise: --upstream TLS: {e}");
                return ExitCode::from(2);
            }
        }
    }
    config.request_timeout =
        (args.request_timeout_ms > 0).then(|| Duration::from_millis(args.request_timeout_ms));

    let threads = args.threads.map(usize::from).unwrap_or_else(|| {
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
    let code = runtime.block_on(async move {
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
                shared.restored.subscribe(),
                shared.config.deployment.topology().subscribe(),
            ));
        }
        let _ = writeln!(stdout, "likewise listening on {local}");
        let _ = stdout.flush();
        likewise::server::run_shared(listener, shared, shutdown_signal(), workers.handles()).await;
        ExitCode::SUCCESS
    });
    // Requests in flight finished and snapshots were written above; a
    // blocking task still running (an index build's encode batch, which can
    // take minutes) is abandoned, not waited for.
    runtime.shutdown_timeout(likewise::server::SHUTDOWN_GRACE);
    code
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

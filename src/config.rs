//! Typed settings with defaults. The CLI fills a `Config`; tests build one
//! directly, so nothing here reads the process environment.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::upstream::uri::{Credentials, Upstream};

pub use crate::tls::UpstreamTls;

/// `--max-vector-results`'s default: Atlas's ceiling on `numCandidates`
/// (and so on `limit`).
pub const DEFAULT_MAX_VECTOR_RESULTS: usize = crate::index::MAX_CANDIDATES;

/// What models may reach, chosen by the operator: a client that may create
/// models must not be able to point the proxy at anything else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelAccess {
    /// `--allow-model-host`: hosts `http` models may call, as `host` (any
    /// port) or `host:port` (`[v6]:port` for IPv6). Empty: no `http` model.
    pub hosts: Vec<String>,
    /// `--allow-model-dir`: directories a `text` model's `path` and an
    /// `http` model's `tlsCAFile` may be under (compared after resolving
    /// symbolic links). The default model's directory is always allowed.
    pub dirs: Vec<PathBuf>,
}

impl ModelAccess {
    /// Whether `host` (lower-case, no brackets) and `port` are allowed.
    pub fn allows_host(&self, host: &str, port: u16) -> bool {
        self.hosts.iter().any(|entry| {
            let entry = entry.trim().to_ascii_lowercase();
            let (name, entry_port) = if let Some(rest) = entry.strip_prefix('[') {
                match rest.split_once(']') {
                    Some((name, tail)) => (name.to_string(), tail.strip_prefix(':')),
                    None => return false,
                }
            } else if entry.matches(':').count() == 1 {
                let (name, p) = entry.split_once(':').unwrap_or((&entry, ""));
                (name.to_string(), Some(p))
            } else {
                // A bare name, or a bare IPv6 address: any port.
                (entry.clone(), None)
            };
            let port_ok = match entry_port {
                None => true,
                Some(p) => p.parse::<u16>().is_ok_and(|p| p == port),
            };
            name == host && port_ok
        })
    }

    /// `path` resolved, if it is under an allowed directory (or `also`,
    /// the default model's); `what` names the field in the error. The path
    /// is first compared as written (absolute, no `..`), so a refused path
    /// is never looked at and the error says nothing about whether it
    /// exists; then again after resolving symbolic links.
    pub fn path_under(
        &self,
        path: &str,
        also: Option<&std::path::Path>,
        what: &str,
    ) -> Result<PathBuf, String> {
        use std::path::{Component, Path};
        let refused = || {
            format!(
                "{what} {path:?} is not under a directory the operator allows (--allow-model-dir)"
            )
        };
        let given = Path::new(path);
        if !given.is_absolute() || given.components().any(|c| c == Component::ParentDir) {
            return Err(format!(
                "{what} {path:?} must be an absolute path without '..'"
            ));
        }
        let roots: Vec<PathBuf> = self
            .dirs
            .iter()
            .map(PathBuf::as_path)
            .chain(also)
            .filter_map(|d| std::path::absolute(d).ok())
            .collect();
        if !roots.iter().any(|root| given.starts_with(root)) {
            return Err(refused());
        }
        let resolved = given
            .canonicalize()
            .map_err(|e| format!("{what} {path:?}: {e}"))?;
        let still_under = roots
            .iter()
            .filter_map(|root| root.canonicalize().ok())
            .any(|root| resolved.starts_with(root));
        if still_under {
            Ok(resolved)
        } else {
            Err(refused())
        }
    }

    /// A regular file under an allowed directory (`tlsCAFile`).
    pub fn file(&self, path: &str, what: &str) -> Result<PathBuf, String> {
        let resolved = self.path_under(path, None, what)?;
        if !resolved.is_file() {
            return Err(format!("{what} {path:?} is not a regular file"));
        }
        Ok(resolved)
    }
}

/// Everything the proxy needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub upstream: Upstream,
    /// Where index state will live (created at start-up).
    pub data_dir: Option<PathBuf>,
    /// The default `text` model's directory.
    pub default_model: PathBuf,
    /// Hosts and directories models may reach (`--allow-model-host`,
    /// `--allow-model-dir`).
    pub model_access: ModelAccess,
    /// Client connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// How long to wait for the upstream to accept a connection.
    pub connect_timeout: Duration,
    /// Upstream database holding the proxy's metadata (index definitions).
    pub metadata_db: String,
    /// Without change streams, how often a full scan repairs index drift.
    pub reconcile_interval: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    pub shutdown_timeout: Duration,
    /// Bytes that client connections not yet authenticated may hold in
    /// frame buffers, all together (applies when the upstream URI has
    /// credentials); a connection that would need more is closed.
    pub unauthenticated_buffer: usize,
    /// Most search indexes the proxy serves (each holds one upstream
    /// connection for its change stream).
    pub max_search_indexes: usize,
    /// Most results (`limit`, `$like.n`) one vector query may ask for.
    pub max_vector_results: usize,
    /// TLS for clients (`--tls-cert-file`, `--tls-key-file`).
    pub client_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// TLS for the connections the proxy opens for clients, from the
    /// URI's `tls=true`, `tlsCAFile` and `tlsCertificateKeyFile` (the
    /// driver reads the same options for the proxy's own connections).
    pub upstream_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The deployment named by `upstream`: the driver client for the
    /// proxy's own traffic (started on first use) and the topology its
    /// monitors report. Clones of a `Config` share it.
    pub deployment: std::sync::Arc<crate::upstream::Deployment>,
    /// The key the proxy signs its stored definitions with (see
    /// `maintain::catalog`): from `--metadata-key-file`, else derived from
    /// the upstream credentials ([`metadata_key_from`]).
    pub metadata_key: [u8; 32],
    /// How long a request may take (beyond any wait the client asked for
    /// with `maxAwaitTimeMS`, or `maxTimeMS` on a `getMore`); `None`: no limit.
    pub request_timeout: Option<Duration>,
}

/// The metadata key a proxy derives from its upstream credentials:
/// HMAC-SHA-256 (RFC 2104) keyed by the password over
/// `"likewise metadata key\0" user "\0" authSource`, so every proxy of one
/// deployment with the same credentials trusts the others' definitions and
/// no client without the password can forge one. Without credentials
/// (an upstream without access control, where every client may already do
/// everything) a fixed key: definitions are then checked for integrity
/// only.
pub fn metadata_key_from(credentials: Option<&Credentials>) -> [u8; 32] {
    use hmac::Mac;
    let (password, user, source) = credentials.map_or(("", "", ""), |c| {
        (c.password.as_str(), c.user.as_str(), c.source.as_str())
    });
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(password.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(b"likewise metadata key\0");
    mac.update(user.as_bytes());
    mac.update(b"\0");
    mac.update(source.as_bytes());
    mac.finalize().into_bytes().into()
}

impl Config {
    pub fn new(upstream: Upstream) -> Config {
        let metadata_key = metadata_key_from(upstream.credentials.as_ref());
        Config {
            upstream,
            data_dir: None,
            default_model: PathBuf::from(".cache/models/all-MiniLM-L6-v2"),
            model_access: ModelAccess::default(),
            metadata_key,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(5),
            metadata_db: "likewise".to_string(),
            reconcile_interval: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            max_vector_results: DEFAULT_MAX_VECTOR_RESULTS,
            max_search_indexes: 256,
            unauthenticated_buffer: 256 * 1024 * 1024,
            request_timeout: None,
            client_tls: None,
            upstream_tls: None,
            deployment: std::sync::Arc::default(),
        }
    }
}

/// The settings a `--config` TOML file may hold: the `serve` flags, by the
/// same names. Unknown keys are errors, so a typo is never silently ignored.
#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub data_dir: Option<String>,
    pub default_model: Option<String>,
    pub metadata_key_file: Option<String>,
    pub allow_model_host: Option<Vec<String>>,
    pub allow_model_dir: Option<Vec<String>>,
    pub max_connections: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub metadata_db: Option<String>,
    pub reconcile_interval_ms: Option<u64>,
    pub metrics_listen: Option<String>,
    pub shutdown_timeout_ms: Option<u64>,
    pub max_vector_results: Option<u64>,
    pub max_search_indexes: Option<u64>,
    pub max_unauthenticated_buffer_mb: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub upstream_client_cert: Option<String>,
    pub threads: Option<u64>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

impl FileConfig {
    /// Parses a config file's text; the error says where and what.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(uri) = &file.upstream {
            Upstream::parse(uri).map_err(|e| format!("upstream: {e}"))?;
        }
        Ok(file)
    }

    /// (flag name, value) for every setting the file gives.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut put = |name: &'static str, value: Option<String>| {
            if let Some(v) = value {
                out.push((name, v));
            }
        };
        put("listen", self.listen.clone());
        put("upstream", self.upstream.clone());
        put("data-dir", self.data_dir.clone());
        put("default-model", self.default_model.clone());
        put("metadata-key-file", self.metadata_key_file.clone());
        put(
            "allow-model-host",
            self.allow_model_host.as_ref().map(|v| v.join(",")),
        );
        put(
            "allow-model-dir",
            self.allow_model_dir.as_ref().map(|v| v.join(",")),
        );
        put(
            "max-connections",
            self.max_connections.map(|v| v.to_string()),
        );
        put(
            "connect-timeout-ms",
            self.connect_timeout_ms.map(|v| v.to_string()),
        );
        put("metadata-db", self.metadata_db.clone());
        put(
            "reconcile-interval-ms",
            self.reconcile_interval_ms.map(|v| v.to_string()),
        );
        put("metrics-listen", self.metrics_listen.clone());
        put(
            "shutdown-timeout-ms",
            self.shutdown_timeout_ms.map(|v| v.to_string()),
        );
        put(
            "max-vector-results",
            self.max_vector_results.map(|v| v.to_string()),
        );
        put(
            "max-unauthenticated-buffer-mb",
            self.max_unauthenticated_buffer_mb.map(|v| v.to_string()),
        );
        put(
            "max-search-indexes",
            self.max_search_indexes.map(|v| v.to_string()),
        );
        put(
            "request-timeout-ms",
            self.request_timeout_ms.map(|v| v.to_string()),
        );
        put("tls-cert-file", self.tls_cert_file.clone());
        put("tls-key-file", self.tls_key_file.clone());
        put("upstream-client-cert", self.upstream_client_cert.clone());
        put("threads", self.threads.map(|v| v.to_string()));
        put("log-level", self.log_level.clone());
        put("log-format", self.log_format.clone());
        out
    }
}

impl crate::upstream::Settings for Config {
    fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    fn upstream_tls(&self) -> Option<&std::sync::Arc<rustls::ClientConfig>> {
        self.upstream_tls.as_ref()
    }

    fn max_search_indexes(&self) -> usize {
        self.max_search_indexes
    }

    fn metadata_db(&self) -> &str {
        &self.metadata_db
    }

    fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout
    }

    fn deployment(&self) -> &std::sync::Arc<crate::upstream::Deployment> {
        &self.deployment
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    #[test]
    fn files_use_the_flag_names_and_refuse_unknown_keys() {
        let file = FileConfig::parse(
            "listen = \"0.0.0.0:27018\"\nthreads = 4\nupstream = \"mongodb://db:27017\"\n",
        )
        .unwrap();
        assert_eq!(file.threads, Some(4));
        assert!(file
            .settings()
            .contains(&("listen", "0.0.0.0:27018".to_string())));
        let err = FileConfig::parse("listen = \"x\"\nthreds = 4\n").unwrap_err();
        assert!(err.contains("threds"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(FileConfig::parse("upstream = \"postgres://x\"")
            .unwrap_err()
            .contains("upstream"));
    }
}

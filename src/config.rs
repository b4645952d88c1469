//! Typed settings with defaults. The CLI fills a `Config`; tests build one
//! directly, so nothing here reads the process environment.

use std::path::PathBuf;
use std::time::Duration;

/// Where the upstream MongoDB server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    /// The URI for messages, password replaced by `***`.
    pub uri: String,
    /// Who the proxy's own connections (metadata, builds, change streams)
    /// authenticate as; clients always authenticate themselves.
    pub credentials: Option<Credentials>,
    /// `tls=true` (or `ssl=true`): every upstream connection is TLS,
    /// verified against this CA bundle (`tlsCAFile`; `None`: the system's).
    pub tls: Option<Option<PathBuf>>,
}

/// SCRAM-SHA-256 credentials from the URI's user info.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
    /// The database the user is defined in (`authSource`, default `admin`).
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, source: {:?}, password: *** }}",
            self.user, self.source
        )
    }
}

/// Decodes `%XX` escapes, as URIs carry user names and passwords.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .ok_or("bad % escape in upstream URI")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad % escape in upstream URI")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "upstream URI user info is not UTF-8".to_string())
}

impl Upstream {
    /// Parses `mongodb://[user:pass@]host[:port][,host...][/db][?options]`.
    /// The proxy pins each client to one upstream connection, so it uses the
    /// first host; SRV is refused until supported rather than silently
    /// ignored. TLS takes `tls`/`ssl` and `tlsCAFile`; options it cannot
    /// honour (`tlsCertificateKeyFile`, `tlsInsecure`, ...) are refused.
    pub fn parse(uri: &str) -> Result<Upstream, String> {
        let rest = uri
            .strip_prefix("mongodb://")
            .ok_or_else(|| format!("upstream URI must start with mongodb:// (got {uri:?})"))?;
        let (authority, options) = match rest.split_once('/') {
            Some((a, tail)) => (a, tail.split_once('?').map_or("", |(_, o)| o)),
            None => match rest.split_once('?') {
                Some((a, o)) => (a, o),
                None => (rest, ""),
            },
        };
        let mut auth_source = None;
        let (mut tls, mut ca_file) = (false, None);
        for option in options.split('&').filter(|o| !o.is_empty()) {
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            let key = key.to_ascii_lowercase();
            if key == "tls" || key == "ssl" {
                tls = value.eq_ignore_ascii_case("true");
            }
            if key == "tlscafile" {
                ca_file = Some(PathBuf::from(percent_decode(value)?));
            }
            if key.starts_with("tls") && !matches!(key.as_str(), "tls" | "tlscafile") {
                return Err(format!("upstream URI option {key} is not supported"));
            }
            if key == "authsource" {
                auth_source = Some(percent_decode(value)?);
            }
            if key == "authmechanism" && value != "SCRAM-SHA-256" {
                return Err(format!(
                    "authMechanism {value} is not supported; use SCRAM-SHA-256"
                ));
            }
        }
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((info, hosts)) => (Some(info), hosts),
            None => (None, authority),
        };
        let credentials = match userinfo {
            Some(info) => {
                let (user, password) = info
                    .split_once(':')
                    .ok_or("upstream URI user info needs user:password")?;
                Some(Credentials {
                    user: percent_decode(user)?,
                    password: percent_decode(password)?,
                    source: auth_source.unwrap_or_else(|| "admin".to_string()),
                })
            }
            None => None,
        };
        let redacted = match userinfo.and_then(|i| i.split_once(':')) {
            Some((user, _)) => {
                uri.replacen(userinfo.unwrap_or_default(), &format!("{user}:***"), 1)
            }
            None => uri.to_string(),
        };
        let first = hosts.split(',').next().unwrap_or("");
        if first.is_empty() {
            return Err(format!("upstream URI has no host (got {uri:?})"));
        }
        let (host, port) = split_host_port(first)?;
        if ca_file.is_some() && !tls {
            return Err("tlsCAFile needs tls=true".into());
        }
        Ok(Upstream {
            host,
            port,
            uri: redacted,
            credentials,
            tls: tls.then_some(ca_file),
        })
    }

    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn split_host_port(hostport: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("bad IPv6 host {hostport:?}"))?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("bad port {p:?} in upstream URI"))?,
        None => 27017,
    };
    Ok((host.to_string(), port))
}

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
    /// TLS to the upstream, from the URI's `tls=true` and `tlsCAFile`.
    pub upstream_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
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
            max_vector_results: crate::command::vector_query::MAX_CANDIDATES,
            max_search_indexes: 256,
            unauthenticated_buffer: 256 * 1024 * 1024,
            request_timeout: None,
            client_tls: None,
            upstream_tls: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_uri_forms_users_paste() {
        let u = Upstream::parse("mongodb://127.0.0.1:4000/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 4000));
        let u =
            Upstream::parse("mongodb://user:p%40ss@db.example:27019,other:1/admin?replicaSet=rs")
                .unwrap();
        assert_eq!((u.host.as_str(), u.port), ("db.example", 27019));
        let u = Upstream::parse("mongodb://localhost").unwrap();
        assert_eq!(u.port, 27017);
        let u = Upstream::parse("mongodb://[::1]:5000?directConnection=true").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 5000));
        assert_eq!(u.address(), "[::1]:5000");
    }

    #[test]
    fn credentials_are_decoded_and_redacted() {
        let u = Upstream::parse("mongodb://proxy:p%40ss%3Aw@db:27017/?authSource=ops").unwrap();
        let c = u.credentials.as_ref().unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str(), c.source.as_str()),
            ("proxy", "p@ss:w", "ops")
        );
        assert_eq!(u.uri, "mongodb://proxy:***@db:27017/?authSource=ops");
        assert!(!format!("{u:?}").contains("p@ss"));
        let plain = Upstream::parse("mongodb://u:pw@h").unwrap();
        assert_eq!(plain.credentials.unwrap().source, "admin");
        assert!(Upstream::parse("mongodb://h/?authMechanism=MONGODB-X509").is_err());
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert!(Upstream::parse("mongodb+srv://cluster.example").is_err());
        assert!(Upstream::parse("mongodb://h:1/?tlsCAFile=/ca.pem").is_err());
        assert!(Upstream::parse("mongodb://h:1/?tls=true&tlsInsecure=true").is_err());
        let u = Upstream::parse("mongodb://h:1/?tls=true&tlsCAFile=%2Fca.pem").unwrap();
        assert_eq!(u.tls, Some(Some(PathBuf::from("/ca.pem"))));
        assert_eq!(
            Upstream::parse("mongodb://h:1/?ssl=true").unwrap().tls,
            Some(None)
        );
        assert_eq!(
            Upstream::parse("mongodb://h:1/?tls=false").unwrap().tls,
            None
        );
        assert!(Upstream::parse("mongodb://h:99999").is_err());
        assert!(Upstream::parse("mongodb:///").is_err());
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
        put("threads", self.threads.map(|v| v.to_string()));
        put("log-level", self.log_level.clone());
        put("log-format", self.log_format.clone());
        out
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

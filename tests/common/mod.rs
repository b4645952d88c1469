//! Test harness: a real SecantusDB upstream on port 0 and the proxy on port 0,
//! both stopped when dropped.

#![allow(dead_code)]

pub mod load;

use likewise::config::{Config, Upstream as UpstreamAddr};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A SecantusDB server with in-memory storage.
pub struct Upstream {
    child: Child,
    pub port: u16,
}

impl Upstream {
    pub fn start() -> Upstream {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Upstream {
        let exe = std::env::var_os("LIKEWISE_SECANTUSD").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/secantusd-py"),
            PathBuf::from,
        );
        Self::spawn(Command::new(exe), extra)
    }

    /// A server that accepts `connections` client connections (SecantusDB
    /// caps them at 1,000 otherwise; see `benches/secantusd_wide.py`).
    pub fn start_wide(connections: usize) -> Upstream {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut command = Command::new(root.join(".venv/bin/python"));
        command
            .arg(root.join("benches/secantusd_wide.py"))
            .arg(connections.to_string());
        // Threads of closed connections may still hold their sessions while the
        // next phase connects.
        let sessions = (2 * connections + 200).to_string();
        Self::spawn(command, &["--session-max", &sessions])
    }

    fn spawn(mut command: Command, extra: &[&str]) -> Upstream {
        let mut child = command
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--storage-path",
                ":memory:",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start SecantusDB (run scripts/setup): {e}"));
        let (tx, rx) = mpsc::channel();
        // The announcement may come on either stream; both are drained for
        // the life of the server so its pipes never fill.
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let _ = tx.send(rest.trim().to_string());
                    }
                }
            });
        }
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("SecantusDB did not announce its port within 60 s");
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        Upstream { child, port }
    }

    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy running in this process.
pub struct Proxy {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Proxy {
    pub async fn start(upstream_uri: &str) -> Proxy {
        let config = Config::new(UpstreamAddr::parse(upstream_uri).unwrap());
        Self::start_with(config).await
    }

    pub async fn start_with(config: Config) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(likewise::server::run(listener, config, async move {
            let _ = rx.await;
        }));
        Proxy {
            addr,
            shutdown: Some(tx),
        }
    }

    pub fn uri(&self) -> String {
        format!("mongodb://{}/", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

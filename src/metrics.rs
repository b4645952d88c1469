//! Prometheus metrics and a health check, served over plain HTTP on
//! `--metrics-listen` (`GET /metrics`, `GET /health`).
//!
//! Counters are atomics bumped on the data path; label values come from
//! fixed lists (command names outside the list count as `other`), so a
//! client cannot grow the metric set. Index gauges are read from the
//! registry at scrape time.

use crate::registry::{Registry, Status};
use crate::upstream::topology::View;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Commands counted by name; everything else is `other`.
const COMMANDS: &[&str] = &[
    "hello",
    "isMaster",
    "ismaster",
    "ping",
    "find",
    "getMore",
    "killCursors",
    "aggregate",
    "count",
    "distinct",
    "insert",
    "update",
    "delete",
    "findAndModify",
    "bulkWrite",
    "createIndexes",
    "dropIndexes",
    "listIndexes",
    "listCollections",
    "listDatabases",
    "create",
    "drop",
    "dropDatabase",
    "explain",
    "commitTransaction",
    "abortTransaction",
    "endSessions",
    "saslStart",
    "saslContinue",
    "buildInfo",
    "serverStatus",
    "createSearchIndexes",
    "updateSearchIndex",
    "dropSearchIndex",
    "listSearchIndexes",
    "createNeighbourhood",
    "dropNeighbourhood",
    "listNeighbourhoods",
];

/// Upper bounds (µs) of the latency histogram buckets.
const BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 500_000, 1_000_000,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS_US) {
            if us <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS_US) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {}",
                bound as f64 / 1e6,
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Vector query strategies, as `explain` names them.
pub const STRATEGIES: &[&str] = &[
    "graph search",
    "filtered graph search",
    "filtered graph search, completed by exact scan",
    "exact scan",
    "exact scan of filter matches",
    "exact scan of filter matches (selective filter)",
    "full-text search",
];

pub struct Metrics {
    /// Requests read from a client and not yet answered.
    pub requests_in_flight: AtomicI64,
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    /// One counter per name in `COMMANDS`, then `other`.
    commands: Vec<AtomicU64>,
    /// Errors the proxy itself answered with, by side.
    pub client_errors: AtomicU64,
    pub upstream_errors: AtomicU64,
    /// The same errors by (side, code name).
    errors_by_code: std::sync::Mutex<std::collections::BTreeMap<(&'static str, String), u64>>,
    /// Time from forwarding a request to the upstream's first reply.
    pub upstream_latency: Histogram,
    pub vector_latency: Histogram,
    strategies: [AtomicU64; STRATEGIES.len()],
    /// Full-text top-k searches walked on the client's connection thread,
    /// then on the CPU pool (`proxy/query.rs::top`).
    full_text_threads: [AtomicU64; 2],
    /// Per upstream server (`host:port`): client connections pinned to it
    /// now, and the connections that ended because it failed under them.
    /// Keys come from the topology the operator's URI names.
    servers: std::sync::Mutex<std::collections::BTreeMap<String, ServerCounts>>,
}

/// What [`Metrics`] counts per upstream server.
#[derive(Default, Clone, Copy)]
struct ServerCounts {
    open: i64,
    failures: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests_in_flight: AtomicI64::new(0),
            connections_open: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            commands: (0..=COMMANDS.len()).map(|_| AtomicU64::new(0)).collect(),
            client_errors: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            errors_by_code: Default::default(),
            upstream_latency: Histogram::default(),
            vector_latency: Histogram::default(),
            strategies: Default::default(),
            full_text_threads: Default::default(),
            servers: Default::default(),
        }
    }
}

impl Metrics {
    pub fn command(&self, name: &str) {
        let slot = COMMANDS
            .iter()
            .position(|c| *c == name)
            .unwrap_or(COMMANDS.len());
        self.commands[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error reply the proxy made.
    pub fn error(&self, error: &crate::error::Error) {
        let side = match error.side {
            crate::error::Side::Client => {
                self.client_errors.fetch_add(1, Ordering::Relaxed);
                "client"
            }
            _ => {
                self.upstream_errors.fetch_add(1, Ordering::Relaxed);
                "upstream"
            }
        };
        let mut by_code = self
            .errors_by_code
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *by_code
            .entry((side, error.code.name.to_string()))
            .or_default() += 1;
    }

    /// A client connection was pinned to `server` (`opened`), or ended.
    pub fn pinned(&self, server: &str, opened: bool) {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let counts = servers.entry(server.to_string()).or_default();
        counts.open += if opened { 1 } else { -1 };
    }

    /// A client connection ended because `server` failed under it (gone,
    /// stepped down, not answering).
    pub fn server_failed(&self, server: &str) {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        servers.entry(server.to_string()).or_default().failures += 1;
    }

    pub fn strategy(&self, name: &str) {
        if let Some(slot) = STRATEGIES.iter().position(|s| *s == name) {
            self.strategies[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A full-text top-k search was walked on the client's connection
    /// thread (`true`: small, its cost known) or on the CPU pool.
    pub fn full_text_walked(&self, on_connection: bool) {
        self.full_text_threads[usize::from(!on_connection)].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, registry: &Registry, topology: &View) -> String {
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut e = Exposition::default();
        self.render_servers(&mut e, topology);
        e.family(
            "likewise_connections_open",
            "gauge",
            "Client connections open now.",
        );
        e.sample(
            "likewise_connections_open",
            "",
            self.connections_open.load(Ordering::Relaxed),
        );
        e.family(
            "likewise_requests_in_flight",
            "gauge",
            "Requests being answered now.",
        );
        e.sample(
            "likewise_requests_in_flight",
            "",
            self.requests_in_flight.load(Ordering::Relaxed),
        );
        e.family(
            "likewise_connections_total",
            "counter",
            "Client connections accepted.",
        );
        e.sample(
            "likewise_connections_total",
            "",
            load(&self.connections_total),
        );
        e.family(
            "likewise_commands_total",
            "counter",
            "Commands received, by name.",
        );
        for (i, counter) in self.commands.iter().enumerate() {
            let n = load(counter);
            if n > 0 {
                let name = COMMANDS.get(i).copied().unwrap_or("other");
                e.sample("likewise_commands_total", &format!("command=\"{name}\""), n);
            }
        }
        e.family(
            "likewise_errors_total",
            "counter",
            "Error replies the proxy made, by the side at fault.",
        );
        e.sample(
            "likewise_errors_total",
            "side=\"client\"",
            load(&self.client_errors),
        );
        e.sample(
            "likewise_errors_total",
            "side=\"upstream\"",
            load(&self.upstream_errors),
        );
        e.family(
            "likewise_errors_by_code_total",
            "counter",
            "Error replies the proxy made, by side and MongoDB code name.",
        );
        for ((side, code), n) in self
            .errors_by_code
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            e.sample(
                "likewise_errors_by_code_total",
                &format!("side=\"{side}\",code=\"{code}\""),
                *n,
            );
        }
        e.family(
            "likewise_upstream_latency_seconds",
            "histogram",
            "Forwarded request to first upstream reply.",
        );
        self.upstream_latency
            .render(&mut e.out, "likewise_upstream_latency_seconds", "");
        e.family(
            "likewise_vector_query_seconds",
            "histogram",
            "Answering the vector part of a query.",
        );
        self.vector_latency
            .render(&mut e.out, "likewise_vector_query_seconds", "");
        e.family(
            "likewise_vector_queries_total",
            "counter",
            "Vector queries, by strategy.",
        );
        for (strategy, counter) in STRATEGIES.iter().zip(&self.strategies) {
            e.sample(
                "likewise_vector_queries_total",
                &format!("strategy=\"{strategy}\""),
                load(counter),
            );
        }
        e.family(
            "likewise_full_text_top_k_total",
            "counter",
            "Full-text top-k searches, by the thread that walked them: the client's connection (a plain text query whose walk is known to be small) or the CPU pool.",
        );
        for (thread, counter) in ["connection", "pool"].iter().zip(&self.full_text_threads) {
            e.sample(
                "likewise_full_text_top_k_total",
                &format!("thread=\"{thread}\""),
                load(counter),
            );
        }
        let indexes = registry.all();
        e.family(
            "likewise_index_vectors",
            "gauge",
            "Vectors in each search index.",
        );
        for index in &indexes {
            let vectors = index.vector_count();
            e.sample("likewise_index_vectors", &labels(index), vectors);
        }
        e.family(
            "likewise_index_recall",
            "gauge",
            "Recall@10 measured against exact search on sampled queries, for indexes with targetRecall, at the numCandidates in use.",
        );
        for index in &indexes {
            if let Some((_, measured)) = index.tuned_recall() {
                e.sample("likewise_index_recall", &labels(index), measured);
            }
        }
        e.family(
            "likewise_index_ready",
            "gauge",
            "1 when a search index is READY.",
        );
        for index in &indexes {
            e.sample(
                "likewise_index_ready",
                &labels(index),
                u8::from(index.status().0 == Status::Ready),
            );
        }
        e.family(
            "likewise_index_stale",
            "gauge",
            "1 when a search index is STALE: queryable, but not following its collection's changes.",
        );
        for index in &indexes {
            e.sample(
                "likewise_index_stale",
                &labels(index),
                u8::from(index.status().0 == Status::Stale),
            );
        }
        e.family(
            "likewise_index_changes_applied_total",
            "counter",
            "Changes applied from change streams.",
        );
        for index in &indexes {
            e.sample(
                "likewise_index_changes_applied_total",
                &labels(index),
                load(&index.changes_applied),
            );
        }
        e.family(
            "likewise_index_pending_encodes",
            "gauge",
            "Documents waiting for a model to encode them (the model failed; retried).",
        );
        for index in &indexes {
            e.sample(
                "likewise_index_pending_encodes",
                &labels(index),
                index.pending_count(),
            );
        }
        e.family(
            "likewise_index_neighbourhood_pending",
            "gauge",
            "Documents whose vectors changed and whose neighbourhood lists are not yet refreshed.",
        );
        for index in &indexes {
            e.sample(
                "likewise_index_neighbourhood_pending",
                &labels(index),
                index.changed_count(),
            );
        }
        e.family(
            "likewise_index_training_epochs",
            "gauge",
            "Training epochs done, for indexes with a training objective.",
        );
        e.family(
            "likewise_index_training_planned_epochs",
            "gauge",
            "Training epochs planned.",
        );
        for index in indexes.iter().filter(|i| i.spec.train.is_some()) {
            let (done, planned) = {
                let t = index.training();
                (t.epochs.len(), t.planned_epochs)
            };
            e.sample("likewise_index_training_epochs", &labels(index), done);
            e.sample(
                "likewise_index_training_planned_epochs",
                &labels(index),
                planned,
            );
        }
        let fine_tuning: Vec<_> = indexes
            .iter()
            .filter_map(|i| Some((i, i.training().fine_tune.clone()?)))
            .collect();
        for (name, help, value) in [
            (
                "likewise_index_fine_tune_steps_done",
                "Fine-tuning steps taken (batches), over all epochs.",
                (|f: &crate::registry::FineTuneState| f.step as f64)
                    as fn(&crate::registry::FineTuneState) -> f64,
            ),
            (
                "likewise_index_fine_tune_steps",
                "Fine-tuning steps planned.",
                |f| f.steps as f64,
            ),
            (
                "likewise_index_fine_tune_loss",
                "The last fine-tuning step's loss.",
                |f| f64::from(f.loss),
            ),
            (
                "likewise_index_fine_tune_pairs_per_second",
                "Fine-tuning throughput so far, in training pairs per second.",
                |f| f.pairs_per_s,
            ),
        ] {
            e.family(name, "gauge", help);
            for (index, state) in &fine_tuning {
                e.sample(name, &labels(index), value(state));
            }
        }
        e.out
    }
}

/// Builds the text exposition: a family header, then its samples.
#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }
}

/// A label value with the characters the exposition format escapes
/// replaced.
fn clean(s: &str) -> String {
    s.replace(['\\', '"', '\n'], "_")
}

fn labels(index: &crate::registry::SearchIndex) -> String {
    format!(
        "namespace=\"{}\",index=\"{}\",path=\"{}\"",
        clean(&index.namespace()),
        clean(&index.name),
        clean(&index.spec.path)
    )
}

impl Metrics {
    /// `likewise_upstream_server` (1 per server the topology knows, by
    /// address and SDAM type), `likewise_upstream_connections` and
    /// `likewise_upstream_failures_total` (per server, as counted by
    /// [`Metrics::pinned`] and [`Metrics::server_failed`]).
    fn render_servers(&self, e: &mut Exposition, topology: &View) {
        e.family(
            "likewise_upstream_server",
            "gauge",
            "Servers of the upstream deployment as the driver's monitoring sees them (role: SDAM server type).",
        );
        for server in &topology.servers {
            let labels = format!(
                "address=\"{}\",role=\"{}\"",
                clean(&server.address.to_string()),
                role_name(server.kind)
            );
            e.sample("likewise_upstream_server", &labels, 1);
        }
        let servers = self
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        e.family(
            "likewise_upstream_connections",
            "gauge",
            "Client connections pinned to each upstream server now.",
        );
        for (address, counts) in &servers {
            let labels = format!("address=\"{}\"", clean(address));
            e.sample("likewise_upstream_connections", &labels, counts.open);
        }
        e.family(
            "likewise_upstream_failures_total",
            "counter",
            "Client connections ended because their upstream server failed, stepped down or stopped answering.",
        );
        for (address, counts) in &servers {
            let labels = format!("address=\"{}\"", clean(address));
            e.sample("likewise_upstream_failures_total", &labels, counts.failures);
        }
    }
}

/// The SDAM server type as the specification spells it.
fn role_name(kind: mongodb::ServerType) -> &'static str {
    use mongodb::ServerType as T;
    match kind {
        T::Standalone => "Standalone",
        T::Mongos => "Mongos",
        T::RsPrimary => "RSPrimary",
        T::RsSecondary => "RSSecondary",
        T::RsArbiter => "RSArbiter",
        T::RsOther => "RSOther",
        T::RsGhost => "RSGhost",
        T::LoadBalancer => "LoadBalancer",
        _ => "Unknown",
    }
}

/// Serves `/metrics`; `/health`, 200 while the upstream can take writes
/// (a primary, a `mongos` or the standalone is reachable) and 503 while
/// not; and `/ready`, 200 once the stored definitions are loaded and the
/// upstream can take writes, 503 before; until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    restored: tokio::sync::watch::Receiver<bool>,
    topology: tokio::sync::watch::Receiver<View>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, registry) = (metrics.clone(), registry.clone());
        let loaded = *restored.borrow();
        let view = topology.borrow().clone();
        let writable = view.writable();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&request);
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let (status, kind, body) = match path {
                "/metrics" => (
                    "200 OK",
                    "text/plain; version=0.0.4",
                    metrics.render(&registry, &view),
                ),
                "/health" | "/ready" if !writable => (
                    "503 Service Unavailable",
                    "text/plain",
                    format!(
                        "no primary of the upstream is reachable (topology {:?})\n",
                        view.kind
                    ),
                ),
                "/health" => ("200 OK", "text/plain", "ok\n".to_string()),
                "/ready" if loaded => ("200 OK", "text/plain", "ready\n".to_string()),
                "/ready" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "search index definitions not loaded yet\n".to_string(),
                ),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

//! Pass-through cost of the proxy: the same workload run directly against
//! the upstream, through a plain byte relay, and through likewise, in one
//! run, interleaved per workload. Prints ops/s and p50/p99 latency for each
//! and the proxy's ratios against the relay.
//!
//!     cargo bench --bench passthrough            # needs scripts/setup first
//!     LIKEWISE_BENCH_SECS=5 cargo bench --bench passthrough
//!     LIKEWISE_BENCH_ONLY=ping cargo bench --bench passthrough   # one workload
//!
//! The relay and the proxy each run on their own two-worker runtime in this
//! process; the load generator has its own. Everything shares the machine's
//! cores with the upstream, as it would in production on one host.

#[path = "../tests/common/mod.rs"]
mod common;

use bson::{rawdoc, RawDocumentBuf};
use likewise::conn::Connection;
use likewise::wire::{msg, OpMsg};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

const DEFAULT_SECS: f64 = 2.0;
const WARMUP: Duration = Duration::from_millis(300);
const CONCURRENCY: [usize; 2] = [1, 64];
const FIND_DOCS: i32 = 10_000;
const SEED: u64 = 0x5eed;
/// Each cell runs this many times, targets interleaved, and reports the
/// median ops/s and the latency percentiles of all rounds together.
const ROUNDS: usize = 3;
const RELAY_THREADS: &str = "bench-relay";
const PROXY_THREADS: &str = "bench-proxy";

/// Nanoseconds on CPU so far of this process's threads called `name`
/// (Linux schedstat): what forwarding costs, free of upstream noise.
fn cpu_ns(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[derive(Clone, Copy)]
enum Workload {
    Ping,
    FindById,
    Insert(usize),
}

impl Workload {
    fn name(self) -> String {
        match self {
            Workload::Ping => "ping".into(),
            Workload::FindById => "find by _id".into(),
            Workload::Insert(n) if n >= 1 << 20 => format!("insert {} MiB", n >> 20),
            Workload::Insert(n) => format!("insert {} KB", n >> 10),
        }
    }

    fn request(self, id: i32, rng: &mut u64, pad: &str) -> Vec<u8> {
        let body: RawDocumentBuf = match self {
            Workload::Ping => rawdoc! { "ping": 1, "$db": "admin" },
            Workload::FindById => {
                let key = i32::try_from(next(rng) % u64::try_from(FIND_DOCS).unwrap()).unwrap();
                rawdoc! { "find": "docs", "filter": { "_id": key }, "limit": 1, "singleBatch": true, "$db": "bench" }
            }
            Workload::Insert(_) => {
                rawdoc! { "insert": "ins", "documents": [{ "pad": pad }], "$db": "bench" }
            }
        };
        msg::encode_body(id, 0, &body)
    }
}

fn next(state: &mut u64) -> u64 {
    // xorshift64*: deterministic and cheap.
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

struct Stats {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU µs the forwarder (relay or proxy) spent per operation.
    cpu_us_per_op: f64,
}

impl Stats {
    fn from_rounds(rounds: Vec<(f64, Vec<f64>)>, cpu_ns: u64) -> Stats {
        let ops: usize = rounds.iter().map(|(_, l)| l.len()).sum();
        let mut rates: Vec<f64> = rounds.iter().map(|(r, _)| *r).collect();
        rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mut all: Vec<f64> = rounds.into_iter().flat_map(|(_, l)| l).collect();
        all.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pct = |p: f64| all[((all.len() as f64 - 1.0) * p) as usize];
        Stats {
            ops_per_sec: rates[rates.len() / 2],
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            cpu_us_per_op: cpu_ns as f64 / 1e3 / ops.max(1) as f64,
        }
    }
}

/// One timed run: (ops/s, latencies in µs).
async fn run_cell(
    addr: SocketAddr,
    workload: Workload,
    clients: usize,
    secs: f64,
) -> (f64, Vec<f64>) {
    let pad = match workload {
        Workload::Insert(n) => "x".repeat(n),
        _ => String::new(),
    };
    let deadline = Instant::now() + WARMUP + Duration::from_secs_f64(secs);
    let measure_from = Instant::now() + WARMUP;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let pad = pad.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::new(TcpStream::connect(addr).await.unwrap());
            let mut rng = SEED ^ (c as u64 + 1).wrapping_mul(0x9e37_79b9);
            let mut latencies = Vec::new();
            let mut id = 1;
            loop {
                let start = Instant::now();
                if start >= deadline {
                    break;
                }
                let request = workload.request(id, &mut rng, &pad);
                conn.write_frame(&request).await.unwrap();
                let reply = conn.read_frame().await.unwrap().unwrap();
                let parsed = OpMsg::parse(&reply).unwrap();
                let body = parsed.body();
                assert_eq!(
                    body.get_f64("ok").ok(),
                    Some(1.0),
                    "{}: {body:?}",
                    workload.name()
                );
                if start >= measure_from {
                    latencies.push(start.elapsed().as_secs_f64() * 1e6);
                }
                id += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all.len() as f64 / secs, all)
}

/// A plain byte relay: what any TCP proxy costs, the baseline to beat.
async fn relay(listener: TcpListener, upstream: SocketAddr) {
    loop {
        let (mut client, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            let mut server = TcpStream::connect(upstream).await.unwrap();
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}

fn server_runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

async fn command(addr: SocketAddr, body: RawDocumentBuf) {
    let mut conn = Connection::new(TcpStream::connect(addr).await.unwrap());
    conn.write_frame(&msg::encode_body(1, 0, &body))
        .await
        .unwrap();
    conn.read_frame().await.unwrap().unwrap();
}

fn main() {
    let secs = std::env::var("LIKEWISE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECS);
    // 1 MiB inserts at full speed outgrow SecantusDB's default 1 GB cache
    // (documents plus their oplog copies); it then answers InternalError.
    let upstream =
        common::Upstream::start_with(&["--cache-size", "8G", "--oplog-max-entries", "1000"]);
    let upstream_addr: SocketAddr = format!("127.0.0.1:{}", upstream.port).parse().unwrap();

    let relay_rt = server_runtime(RELAY_THREADS);
    let relay_addr = relay_rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(relay(l, upstream_addr));
        a
    });
    // The proxy as `likewise serve` runs it: connections on per-core
    // single-threaded workers, the accept loop on a runtime of its own.
    let proxy_workers = likewise::server::Workers::start(2, PROXY_THREADS).unwrap();
    let proxy_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let proxy_addr = {
        let listener = proxy_rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let config = likewise::config::Config::new(
            likewise::config::Upstream::parse(&upstream.uri()).unwrap(),
        );
        let handles = proxy_workers.handles().to_vec();
        std::thread::Builder::new()
            .name(PROXY_THREADS.into())
            .spawn(move || {
                proxy_rt.block_on(likewise::server::run_on(
                    listener,
                    config,
                    std::future::pending(),
                    &handles,
                ))
            })
            .unwrap();
        addr
    };

    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    load.block_on(async {
        let docs: Vec<_> = (0..FIND_DOCS)
            .map(|i| rawdoc! { "_id": i, "v": "y".repeat(200) })
            .collect();
        for chunk in docs.chunks(1000) {
            let seq = msg::DocumentSequence {
                identifier: "documents",
                documents: chunk.iter().map(|d| d.as_ref()).collect(),
            };
            let body = rawdoc! { "insert": "docs", "$db": "bench" };
            let mut conn = Connection::new(TcpStream::connect(upstream_addr).await.unwrap());
            conn.write_frame(&msg::encode(
                1,
                0,
                0,
                &[msg::Section::Body(&body), msg::Section::Sequence(seq)],
            ))
            .await
            .unwrap();
            conn.read_frame().await.unwrap().unwrap();
        }
    });

    println!("likewise pass-through benchmark: {ROUNDS} interleaved rounds of {secs} s per cell (after {WARMUP:?} warm-up); median ops/s");
    println!();
    println!("| workload | clients | direct ops/s | relay ops/s | likewise ops/s | likewise/relay | p50 µs direct / relay / likewise | p99 µs direct / relay / likewise | added p50 vs relay | CPU µs/op relay / likewise |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let workloads = [
        Workload::Ping,
        Workload::FindById,
        Workload::Insert(1 << 10),
        Workload::Insert(16 << 10),
        Workload::Insert(1 << 20),
    ];
    let mut worst_ratio = f64::MAX;
    let mut worst_added_single = f64::MIN;
    let only = std::env::var("LIKEWISE_BENCH_ONLY").unwrap_or_default();
    for workload in workloads.into_iter().filter(|w| w.name().contains(&only)) {
        for clients in CONCURRENCY {
            let cell = |addr| {
                let s = load.block_on(run_cell(addr, workload, clients, secs));
                if matches!(workload, Workload::Insert(_)) {
                    load.block_on(command(
                        upstream_addr,
                        rawdoc! { "drop": "ins", "$db": "bench" },
                    ));
                }
                s
            };
            let targets = [upstream_addr, relay_addr, proxy_addr];
            let threads = ["", RELAY_THREADS, PROXY_THREADS];
            let mut runs: [Vec<(f64, Vec<f64>)>; 3] = Default::default();
            let mut cpu = [0u64; 3];
            for round in 0..ROUNDS {
                // Rotate the order so no target always runs first.
                for k in 0..targets.len() {
                    let t = (k + round) % targets.len();
                    let before = cpu_ns(threads[t]);
                    runs[t].push(cell(targets[t]));
                    cpu[t] += cpu_ns(threads[t]) - before;
                }
            }
            let [direct, relayed, proxied] = runs;
            let direct = Stats::from_rounds(direct, 0);
            let relayed = Stats::from_rounds(relayed, cpu[1]);
            let proxied = Stats::from_rounds(proxied, cpu[2]);
            let ratio = proxied.ops_per_sec / relayed.ops_per_sec;
            let added = proxied.p50_us - relayed.p50_us;
            worst_ratio = worst_ratio.min(ratio);
            if clients == 1 {
                worst_added_single = worst_added_single.max(added);
            }
            println!(
                "| {} | {clients} | {:.0} | {:.0} | {:.0} | {ratio:.3} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {added:+.0} µs | {:.1} / {:.1} |",
                workload.name(),
                direct.ops_per_sec,
                relayed.ops_per_sec,
                proxied.ops_per_sec,
                direct.p50_us,
                relayed.p50_us,
                proxied.p50_us,
                direct.p99_us,
                relayed.p99_us,
                proxied.p99_us,
                relayed.cpu_us_per_op,
                proxied.cpu_us_per_op,
            );
        }
    }
    println!();
    println!("worst likewise/relay ops/s ratio: {worst_ratio:.3} (target >= 0.95)");
    println!(
        "worst added p50 over the relay, one client: {worst_added_single:+.0} µs (target <= 30 µs; \
         at 64 clients p50 is queueing at the upstream, see the table)"
    );
}

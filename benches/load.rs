//! The load test, run by hand: CONNECTIONS concurrent client connections
//! (default 1,000) of mixed reads, writes and vector queries for SECONDS
//! (default 60) through the release binary, against a SecantusDB upstream,
//! on loopback. Prints operations, errors (there must be none), latency
//! percentiles per kind, and the proxy's resident memory over the run.
//! The baseline runs first in the same run: the same connections and mix
//! straight at the upstream, vector queries replaced by the `_id $in` fetch
//! the proxy forwards for them; the ratios compare the two.
//!
//!     cargo build --release --bin likewise && cargo bench --bench load -- [CONNECTIONS] [SECONDS]

#[path = "../tests/common/mod.rs"]
mod common;

use common::load::{self, Op, Target};
use common::Upstream;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

const KINDS: [(Op, &str); 3] = [
    (Op::Read, "read"),
    (Op::Write, "write"),
    (Op::Vector, "vector"),
];

/// What one run measured, for the ratios.
struct Measured {
    rate: f64,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

/// Runs the workload against `addr` and prints its operations, errors and
/// latency percentiles. `seconds` is how long the workload runs; the run
/// lasts until its slowest connection is done.
async fn measure(
    label: &str,
    addr: &str,
    connections: usize,
    seconds: u64,
    target: Target,
) -> Measured {
    let started = Instant::now();
    let tallies = &load::run(addr, connections, Duration::from_secs(seconds), target).await;
    let seconds = started.elapsed().as_secs_f64();
    let ops: usize = tallies.iter().map(|t| t.latencies.len()).sum();
    let errors: usize = tallies.iter().map(|t| t.errors.len()).sum();
    let protocol: usize = tallies.iter().map(|t| t.protocol_errors.len()).sum();
    let rate = ops as f64 / seconds;
    println!(
        "{label}: {} connections, {seconds:.0} s: {ops} operations ({rate:.0}/s), {errors} error replies, {protocol} protocol errors",
        tallies.len()
    );
    let mut measured = Measured {
        rate,
        p50: Vec::new(),
        p99: Vec::new(),
    };
    for (op, name) in KINDS {
        let count = tallies
            .iter()
            .flat_map(|t| &t.latencies)
            .filter(|(o, _)| *o == op)
            .count();
        let (p50, p99) = (
            load::quantile(tallies, op, 0.50),
            load::quantile(tallies, op, 0.99),
        );
        println!(
            "  {name:>6}: {count:>8} ops  p50 {p50:.2} ms  p99 {p99:.2} ms  p99.9 {:.2} ms",
            load::quantile(tallies, op, 0.999)
        );
        measured.p50.push(p50);
        measured.p99.push(p99);
    }
    for e in tallies
        .iter()
        .flat_map(|t| t.errors.iter().chain(&t.protocol_errors))
        .take(5)
    {
        println!("  e.g. {e}");
    }
    measured
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let connections: usize = args.first().map_or(1_000, |a| a.parse().unwrap());
    let seconds: u64 = args.get(1).map_or(60, |a| a.parse().unwrap());
    // One pinned upstream connection per client, and the proxy's own.
    let upstream = Upstream::start_wide(connections + 100);
    let bin = std::env::var("LIKEWISE_BIN")
        .unwrap_or_else(|_| format!("{}/target/release/likewise", env!("CARGO_MANIFEST_DIR")));
    let mut proxy = Command::new(&bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream.uri(),
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e} (cargo build --release --bin likewise)"));
    let mut line = String::new();
    BufReader::new(proxy.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("likewise listening on ")
        .expect("ready line")
        .trim()
        .to_string();
    let pid = proxy.id();
    load::prepare(&addr).await;
    let rss_before = rss_of(pid);
    let peak = Arc::new(AtomicU64::new(rss_before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_of(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    // The baseline: the same connections and mix straight at the upstream.
    let direct = measure(
        "upstream directly",
        &upstream.addr(),
        connections,
        seconds,
        Target::Upstream,
    )
    .await;
    let proxied = measure(
        "through likewise",
        &addr,
        connections,
        seconds,
        Target::Proxy,
    )
    .await;
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let rss_after = rss_of(pid);
    println!(
        "through likewise / directly: throughput {:.2}x",
        proxied.rate / direct.rate
    );
    for (i, name) in KINDS.iter().map(|(_, n)| n).enumerate() {
        println!(
            "  {name:>6}: p50 {:.2}x  p99 {:.2}x",
            proxied.p50[i] / direct.p50[i],
            proxied.p99[i] / direct.p99[i]
        );
    }
    println!(
        "proxy resident memory: {:.1} MB before, {:.1} MB peak, {:.1} MB after",
        rss_before as f64 / 1e6,
        peak.load(Ordering::Relaxed) as f64 / 1e6,
        rss_after as f64 / 1e6
    );
    let _ = proxy.kill();
    let _ = proxy.wait();
}

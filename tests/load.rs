//! The small, CI-sized version of the load test (`cargo bench --bench
//! load` is the 1,000-connection one): 100 connections of mixed reads,
//! writes and vector queries for 3 s through the proxy.

mod common;

use common::{load, Proxy, Upstream};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_connections_of_mixed_work_see_no_errors() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let addr = proxy.addr.to_string();
    load::prepare(&addr).await;
    let tallies = load::run(&addr, 100, Duration::from_secs(3), load::Target::Proxy).await;
    let protocol: Vec<_> = tallies.iter().flat_map(|t| &t.protocol_errors).collect();
    assert!(protocol.is_empty(), "protocol errors: {protocol:?}");
    let errors: Vec<_> = tallies.iter().flat_map(|t| &t.errors).take(5).collect();
    assert!(errors.is_empty(), "error replies: {errors:?}");
    assert!(
        tallies.iter().all(|t| !t.latencies.is_empty()),
        "a connection did nothing"
    );
    for op in [load::Op::Read, load::Op::Write, load::Op::Vector] {
        let count = tallies
            .iter()
            .flat_map(|t| &t.latencies)
            .filter(|(o, _)| *o == op)
            .count();
        assert!(count > 0, "no {op:?} completed");
    }
}

//! Our index engines on a data set prepared by `benches/ann/harness.py`
//! (run through `scripts/bench ann`): builds the HNSW index single-threaded,
//! then answers the queries at each `ef`, and the exact scan once. Prints
//! one JSON object: build time, memory, and recall@k / QPS per `ef`.
//!
//!     cargo bench --bench ann -- DIR K M EF_CONSTRUCTION EF,EF,... l2|cosine

use likewise::index::exact::Flat;
use likewise::index::hnsw::{Hnsw, HnswParams};
use likewise::index::{Similarity, VectorIndex};
use std::time::Instant;

/// Reads `n × d` little-endian f32 (header: n, d as u32).
fn read_matrix(path: &std::path::Path) -> (usize, usize, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    let d = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    let data: Vec<f32> = bytes[8..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), n * d, "{}", path.display());
    (n, d, data)
}

fn read_ids(path: &std::path::Path) -> (usize, usize, Vec<u32>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    let k = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    let ids = bytes[8..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (n, k, ids)
}

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn recall(found: &[Vec<u32>], truth: &[u32], k: usize, gt_k: usize) -> f64 {
    let mut hits = 0;
    for (q, ids) in found.iter().enumerate() {
        let want = &truth[q * gt_k..q * gt_k + k];
        hits += ids.iter().filter(|id| want.contains(id)).count();
    }
    hits as f64 / (found.len() * k) as f64
}

fn run(index: &dyn VectorIndex, queries: &[Vec<f32>], k: usize, ef: usize) -> (Vec<Vec<u32>>, f64) {
    // One warm pass, then the timed one.
    for q in queries.iter().take(50) {
        index.search(q, k, ef, None);
    }
    let start = Instant::now();
    let found: Vec<Vec<u32>> = queries
        .iter()
        .map(|q| index.search(q, k, ef, None).iter().map(|h| h.key).collect())
        .collect();
    (found, queries.len() as f64 / start.elapsed().as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [dir, k, m, ef_construction, efs, metric] = &args[..] else {
        eprintln!("usage: cargo bench --bench ann -- DIR K M EF_CONSTRUCTION EF,EF,... l2|cosine");
        std::process::exit(2);
    };
    let dir = std::path::Path::new(dir);
    let k: usize = k.parse().unwrap();
    let similarity = match metric.as_str() {
        "cosine" => Similarity::Cosine,
        _ => Similarity::Euclidean,
    };
    let (n, d, base) = read_matrix(&dir.join("base.f32"));
    let (nq, _, queries) = read_matrix(&dir.join("queries.f32"));
    let (_, gt_k, truth) = read_ids(&dir.join("truth.u32"));
    let queries: Vec<Vec<f32>> = queries
        .chunks_exact(d)
        .map(|q| similarity.prepare(q.to_vec()).unwrap())
        .collect();
    let vectors: Vec<Vec<f32>> = base
        .chunks_exact(d)
        .map(|v| similarity.prepare(v.to_vec()).unwrap())
        .collect();
    drop(base);
    let params = HnswParams {
        max_edges: m.parse().unwrap(),
        num_edge_candidates: ef_construction.parse().unwrap(),
        ..HnswParams::default()
    };
    let before = rss();
    let start = Instant::now();
    let mut hnsw = Hnsw::new(d, similarity, params);
    for (i, v) in vectors.iter().enumerate() {
        hnsw.insert(i as u32, v);
    }
    let build_s = start.elapsed().as_secs_f64();
    let memory = rss().saturating_sub(before);
    let mut results = Vec::new();
    for ef in efs.split(',').map(|e| e.parse::<usize>().unwrap()) {
        let (found, qps) = run(&hnsw, &queries, k, ef.max(k));
        results.push(format!(
            "{{\"ef\":{ef},\"recall\":{:.5},\"qps\":{qps:.1}}}",
            recall(&found, &truth, k, gt_k)
        ));
    }
    let mut flat = Flat::new(d, similarity);
    for (i, v) in vectors.iter().enumerate() {
        flat.insert(i as u32, v);
    }
    let exact_queries = &queries[..nq.min(200)];
    let (found, exact_qps) = run(&flat, exact_queries, k, k);
    let exact_recall = recall(&found, &truth, k, gt_k);
    println!(
        "{{\"engine\":\"likewise-hnsw\",\"n\":{n},\"dims\":{d},\"build_s\":{build_s:.3},\"build_vps\":{:.1},\"memory_bytes\":{memory},\"raw_bytes\":{},\"results\":[{}],\"exact\":{{\"recall\":{exact_recall:.5},\"qps\":{exact_qps:.1}}}}}",
        n as f64 / build_s,
        n * d * 4,
        results.join(",")
    );
}

//! Our index engines on a data set prepared by `benches/ann/harness.py`
//! (run through `scripts/bench ann`): builds the HNSW index single-threaded,
//! then answers the queries at each `ef`, and the exact scan once. Prints
//! one JSON object: build time, memory, and recall@k / QPS per `ef`.
//!
//!     cargo bench --bench ann -- DIR K M EF_CONSTRUCTION EF,EF,... l2|cosine
//!
//! With a last argument `scale`, the scale mode instead (see `scale`).
//!
//! When DIR has a `filters.txt` (one `NAME EF` per line, with
//! `filter-NAME.u32` holding the allowed ids and `truth-NAME.u32` the exact
//! answers among them), each filter is also run three ways: the strategy the
//! proxy picks (`search_allowed`), filtered graph search alone, and an exact
//! scan of the allowed ids.

use likewise::index::exact::Flat;
use likewise::index::hnsw::{Hnsw, HnswParams};
use likewise::index::{
    exact_among, search_allowed, Engine, Hit, KeySet, Quantization, Similarity, VectorIndex,
    VectorRef,
};
use likewise::registry::recall::{smallest_breadth, Measured, SAMPLES};
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

/// Anonymous resident memory of this process (`RssAnon`), in bytes: what
/// the heap holds, not file pages such as a quantized index's mapped
/// full vectors.
fn rss_anon() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .unwrap_or(0)
        * 1024
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

/// The similarity a harness metric names (`cosine`, else L2).
fn similarity_of(metric: &str) -> Similarity {
    match metric {
        "cosine" => Similarity::Cosine,
        _ => Similarity::Euclidean,
    }
}

/// HNSW parameters from the harness's `M` and `EF_CONSTRUCTION`.
fn params_of(m: &str, ef_construction: &str) -> HnswParams {
    HnswParams {
        max_edges: m.parse().unwrap(),
        num_edge_candidates: ef_construction.parse().unwrap(),
        ..HnswParams::default()
    }
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

/// One way of answering a filtered query: its hits and its name.
type Strategy<'a> = dyn Fn(&[f32]) -> (Vec<Hit>, &'static str) + 'a;

/// Times `search` over the queries (after a warm pass) and scores it:
/// recall against `truth`, and how many queries came back with fewer than
/// `k` although at least `k` were allowed.
fn filtered_run(
    queries: &[Vec<f32>],
    truth: &[u32],
    gt_k: usize,
    k: usize,
    allowed: usize,
    search: &Strategy,
) -> String {
    for q in queries.iter().take(20) {
        search(q);
    }
    let start = Instant::now();
    let answers: Vec<(Vec<Hit>, &'static str)> = queries.iter().map(|q| search(q)).collect();
    let qps = queries.len() as f64 / start.elapsed().as_secs_f64();
    let want = k.min(allowed);
    let short = answers.iter().filter(|(h, _)| h.len() < want).count();
    let found: Vec<Vec<u32>> = answers
        .iter()
        .map(|(h, _)| h.iter().map(|h| h.key).collect())
        .collect();
    let mut strategies: Vec<&str> = answers.iter().map(|(_, s)| *s).collect();
    strategies.sort();
    strategies.dedup();
    format!(
        "{{\"recall\":{:.5},\"qps\":{qps:.1},\"short\":{short},\"strategy\":{:?}}}",
        recall(&found, truth, k, gt_k),
        strategies.join(" / ")
    )
}

fn filtered(dir: &std::path::Path, hnsw: &Hnsw, queries: &[Vec<f32>], k: usize) -> Vec<String> {
    let Ok(list) = std::fs::read_to_string(dir.join("filters.txt")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in list.lines() {
        let [name, ef] = line.split_whitespace().collect::<Vec<_>>()[..] else {
            continue;
        };
        let ef: usize = ef.parse().unwrap();
        let (_, _, ids) = read_ids(&dir.join(format!("filter-{name}.u32")));
        let (nq, gt_k, truth) = read_ids(&dir.join(format!("truth-{name}.u32")));
        let queries = &queries[..nq];
        let allowed = KeySet::from_keys(ids.iter().copied());
        let n = allowed.len();
        let auto = filtered_run(queries, &truth, gt_k, k, n, &|q| {
            let (hits, strategy, _) = search_allowed(hnsw, q, k, ef, &allowed);
            (hits, strategy)
        });
        let graph = filtered_run(queries, &truth, gt_k, k, n, &|q| {
            (hnsw.search(q, k, ef, Some(&allowed)), "graph")
        });
        let exact = filtered_run(queries, &truth, gt_k, k, n, &|q| {
            (exact_among(hnsw, q, k, allowed.keys()), "exact")
        });
        out.push(format!(
            "{{\"name\":{name:?},\"ef\":{ef},\"allowed\":{n},\"auto\":{auto},\"graph\":{graph},\"exact\":{exact}}}"
        ));
        eprintln!("  filter {name}: done");
    }
    out
}

/// Queries/s answering `queries` from `threads` threads that share
/// `index`, each taking an equal share.
fn parallel_qps(index: &Hnsw, queries: &[Vec<f32>], k: usize, ef: usize, threads: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for share in queries.chunks(queries.len().div_ceil(threads)) {
            scope.spawn(move || {
                for q in share {
                    std::hint::black_box(index.search(q, k, ef, None));
                }
            });
        }
    });
    queries.len() as f64 / start.elapsed().as_secs_f64()
}

/// `engine`'s recall@k and QPS at each breadth of `efs` (after a warm
/// pass of 50 queries), one JSON object per breadth.
fn curve(
    engine: &Engine,
    queries: &[Vec<f32>],
    (truth, gt_k): (&[u32], usize),
    k: usize,
    efs: &str,
) -> Vec<String> {
    let mut results = Vec::new();
    for ef in efs.split(',').map(|e| e.parse::<usize>().unwrap()) {
        let search = |q: &Vec<f32>| engine.search_counted(VectorRef::F32(q), k, ef.max(k)).0;
        for q in queries.iter().take(50) {
            search(q);
        }
        let start = Instant::now();
        let found: Vec<Vec<u32>> = queries
            .iter()
            .map(|q| search(q).iter().map(|h| h.key).collect())
            .collect();
        let qps = queries.len() as f64 / start.elapsed().as_secs_f64();
        results.push(format!(
            "{{\"ef\":{ef},\"recall\":{:.5},\"qps\":{qps:.1}}}",
            recall(&found, truth, k, gt_k)
        ));
    }
    results
}

/// A quantized engine (default oversampling) built from `vectors`: its
/// build rate, the resident memory it added (codes and graph; the full
/// vectors go to a file), and recall / QPS per `ef`, as one JSON object.
fn quantized_run(
    quantization: Quantization,
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    (truth, gt_k): (&[u32], usize),
    (similarity, params, k): (Similarity, HnswParams, usize),
    efs: &str,
) -> String {
    let d = vectors[0].len();
    let before = rss();
    let start = Instant::now();
    let mut engine = Engine::quantized(d, similarity, params, quantization, 0);
    for (i, v) in vectors.iter().enumerate() {
        engine.insert(i as u32, VectorRef::F32(v));
    }
    let build_s = start.elapsed().as_secs_f64();
    let memory = rss().saturating_sub(before);
    let results = curve(&engine, queries, (truth, gt_k), k, efs);
    let name = match quantization {
        Quantization::Scalar => "likewise-sq8",
        Quantization::Binary => "likewise-binary",
    };
    let oversampling = likewise::index::quantized::default_oversampling(quantization);
    format!(
        "{{\"engine\":\"{name}\",\"oversampling\":{oversampling},\"build_s\":{build_s:.3},\"build_vps\":{:.1},\"memory_bytes\":{memory},\"results\":[{}]}}",
        vectors.len() as f64 / build_s,
        results.join(",")
    )
}

/// `DIR M EF_CONSTRUCTION METRIC memory:scalar|binary`: builds that
/// quantized index alone in this fresh process and prints the anonymous
/// memory it added (its full vectors are in a mapped file).
fn quantized_memory(dir: &str, m: &str, ef_construction: &str, metric: &str, kind: &str) {
    let similarity = similarity_of(metric);
    let (_, d, base) = read_matrix(&std::path::Path::new(dir).join("base.f32"));
    let params = params_of(m, ef_construction);
    let quantization = match kind {
        "binary" => Quantization::Binary,
        _ => Quantization::Scalar,
    };
    let mut row = Vec::with_capacity(d);
    let before = rss_anon();
    let mut engine = Engine::quantized(d, similarity, params, quantization, 0);
    for (i, v) in base.chunks_exact(d).enumerate() {
        row.clear();
        row.extend_from_slice(v);
        if let Some(prepared) = similarity.prepare(row.clone()) {
            engine.insert(i as u32, VectorRef::F32(&prepared));
        }
    }
    println!("{}", rss_anon().saturating_sub(before));
    std::hint::black_box(&engine);
}

/// `targetRecall` as the proxy applies it (`registry::recall`): the
/// breadth is chosen on the first 64 queries (the "recent" sample, exact
/// answers the oracle), then the other queries run at it. Against it, the
/// hand-tuned breadth: the smallest `ef` at which those held-out queries
/// reach the recall the chosen breadth gave them. Both timed alternately,
/// best of three. A JSON object.
fn target_recall(
    hnsw: &Hnsw,
    queries: &[Vec<f32>],
    (truth, gt_k): (&[u32], usize),
    k: usize,
    target: f64,
) -> String {
    if queries.len() <= SAMPLES * 2 {
        return "null".into();
    }
    let sample_truth = &truth[..SAMPLES * gt_k];
    let held_truth = &truth[SAMPLES * gt_k..];
    let (samples, held) = queries.split_at(SAMPLES);
    // Each query's recall@k at breadth `ef`, as the proxy measures it.
    let recall_on = |qs: &[Vec<f32>], truth: &[u32], ef: usize| {
        let per_query: Vec<f64> = qs
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let found: Vec<u32> = hnsw
                    .search(q, k, ef.max(k), None)
                    .iter()
                    .map(|h| h.key)
                    .collect();
                recall(&[found], &truth[i * gt_k..(i + 1) * gt_k], k, gt_k)
            })
            .collect();
        Measured::of(&per_query)
    };
    let Some((breadth, sample_recall)) =
        smallest_breadth(target, |ef| recall_on(samples, sample_truth, ef))
    else {
        return "null".into();
    };
    let held_recall = recall_on(held, held_truth, breadth).mean;
    let (tuned, _) = smallest_breadth(held_recall, |ef| {
        Measured::exact(recall_on(held, held_truth, ef).mean)
    })
    .unwrap_or((breadth, held_recall));
    let (mut chosen_qps, mut tuned_qps) = (0f64, 0f64);
    for _ in 0..3 {
        chosen_qps = chosen_qps.max(run(hnsw, held, k, breadth.max(k)).1);
        tuned_qps = tuned_qps.max(run(hnsw, held, k, tuned.max(k)).1);
    }
    format!(
        "{{\"target\":{target},\"breadth\":{breadth},\"sample_recall\":{sample_recall:.5},\"held_out_recall\":{held_recall:.5},\"qps\":{chosen_qps:.1},\"hand_tuned_ef\":{tuned},\"hand_tuned_qps\":{tuned_qps:.1}}}"
    )
}

/// The index built again with two threads (`Hnsw::insert_many`): its
/// build rate, and recall@k at ef 64 beside the one-thread build's
/// (`recall_1`, the graph `main` built), as JSON.
fn parallel_build(
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    (truth, gt_k): (&[u32], usize),
    (d, similarity, params, k): (usize, Similarity, HnswParams, usize),
) -> String {
    let items: Vec<(u32, &[f32])> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u32, v.as_slice()))
        .collect();
    let start = Instant::now();
    let mut hnsw = Hnsw::new(d, similarity, params);
    hnsw.insert_many(&items, 2);
    let build_s = start.elapsed().as_secs_f64();
    let (found, _) = run(&hnsw, queries, k, 64);
    format!(
        "{{\"threads\":2,\"build_s\":{build_s:.3},\"build_vps\":{:.1},\"recall_at_ef64\":{:.5}}}",
        vectors.len() as f64 / build_s,
        recall(&found, truth, k, gt_k)
    )
}

/// `DIR K M EF_CONSTRUCTION EF,EF,... METRIC scale`: the scale mode. The
/// engine the proxy keeps (`Engine`, float32) is built with two threads
/// (`insert_many`, as the proxy's builds run), then saved as a snapshot
/// to `DIR/snapshot.bin` and loaded back from the file, as a restart
/// does, and the loaded index answers the queries at each `ef`. Prints
/// one JSON object: build, save and load times (seconds), the anonymous
/// memory the build added, and recall / QPS per `ef` of the loaded index.
fn scale(dir: &std::path::Path, k: usize, params: HnswParams, efs: &str, similarity: Similarity) {
    let (n, d, base) = read_matrix(&dir.join("base.f32"));
    let (_, _, queries) = read_matrix(&dir.join("queries.f32"));
    let (_, gt_k, truth) = read_ids(&dir.join("truth.u32"));
    let queries: Vec<Vec<f32>> = queries
        .chunks_exact(d)
        .map(|q| similarity.prepare(q.to_vec()).unwrap())
        .collect();
    let mut prepared: Vec<f32> = Vec::with_capacity(base.len());
    for v in base.chunks_exact(d) {
        prepared.extend(similarity.prepare(v.to_vec()).unwrap());
    }
    drop(base);
    let items: Vec<(u32, VectorRef<'_>)> = prepared
        .chunks_exact(d)
        .enumerate()
        .map(|(i, v)| (i as u32, VectorRef::F32(v)))
        .collect();
    let before = rss_anon();
    let start = Instant::now();
    let mut engine = Engine::hnsw(d, similarity, params);
    // In scan batches of 1,000, as a build hands them over.
    for batch in items.chunks(1_000) {
        engine.insert_many(batch, 2);
    }
    let build_s = start.elapsed().as_secs_f64();
    let memory = rss_anon().saturating_sub(before);
    eprintln!("  scale: built {n} in {build_s:.1} s");
    drop(items);
    drop(prepared);
    let path = dir.join("snapshot.bin");
    let start = Instant::now();
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    engine.save(&mut file).unwrap();
    std::io::Write::flush(&mut file).unwrap();
    file.get_ref().sync_all().unwrap();
    let save_s = start.elapsed().as_secs_f64();
    drop(file);
    drop(engine);
    let start = Instant::now();
    let bytes = std::fs::read(&path).unwrap();
    let loaded = likewise::index::persist::load(&bytes).unwrap();
    drop(bytes);
    let load_s = start.elapsed().as_secs_f64();
    let snapshot_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
    std::fs::remove_file(&path).ok();
    let results = curve(&loaded, &queries, (&truth, gt_k), k, efs);
    println!(
        "{{\"engine\":\"likewise-hnsw\",\"n\":{n},\"dims\":{d},\"threads\":2,\"build_s\":{build_s:.3},\"build_vps\":{:.1},\"memory_bytes\":{memory},\"raw_bytes\":{},\"save_s\":{save_s:.3},\"load_s\":{load_s:.3},\"snapshot_bytes\":{snapshot_bytes},\"results\":[{}]}}",
        n as f64 / build_s,
        n * d * 4,
        results.join(",")
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let [dir, m, ef_construction, metric, kind] = &args[..] {
        if let Some(kind) = kind.strip_prefix("memory:") {
            return quantized_memory(dir, m, ef_construction, metric, kind);
        }
    }
    if let [dir, k, m, ef_construction, efs, metric, mode] = &args[..] {
        if mode == "scale" {
            let params = params_of(m, ef_construction);
            let dir = std::path::Path::new(dir);
            return scale(dir, k.parse().unwrap(), params, efs, similarity_of(metric));
        }
    }
    let [dir, k, m, ef_construction, efs, metric] = &args[..] else {
        eprintln!("usage: cargo bench --bench ann -- DIR K M EF_CONSTRUCTION EF,EF,... l2|cosine");
        std::process::exit(2);
    };
    let dir = std::path::Path::new(dir);
    let k: usize = k.parse().unwrap();
    let similarity = similarity_of(metric);
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
    let params = params_of(m, ef_construction);
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
        let examined: usize = queries
            .iter()
            .map(|q| hnsw.search_counted(q.into(), k, ef.max(k), None).1)
            .sum();
        results.push(format!(
            "{{\"ef\":{ef},\"recall\":{:.5},\"qps\":{qps:.1},\"examined\":{:.0}}}",
            recall(&found, &truth, k, gt_k),
            examined as f64 / queries.len() as f64
        ));
    }
    let build_2 = parallel_build(
        &vectors,
        &queries,
        (&truth, gt_k),
        (d, similarity, params, k),
    );
    let filters = filtered(dir, &hnsw, &queries, k);
    let target = target_recall(&hnsw, &queries, (&truth, gt_k), k, 0.95);
    // Every core: the same queries from one thread and from two sharing
    // the index (best of three alternating runs each), at ef 64.
    let (mut one, mut two) = (0f64, 0f64);
    for _ in 0..3 {
        one = one.max(parallel_qps(&hnsw, &queries, k, 64, 1));
        two = two.max(parallel_qps(&hnsw, &queries, k, 64, 2));
    }
    let mut flat = Flat::new(d, similarity);
    for (i, v) in vectors.iter().enumerate() {
        flat.insert(i as u32, v);
    }
    let exact_queries = &queries[..nq.min(200)];
    let (found, exact_qps) = run(&flat, exact_queries, k, k);
    let exact_recall = recall(&found, &truth, k, gt_k);
    let quantized: Vec<String> = [Quantization::Scalar, Quantization::Binary]
        .into_iter()
        .map(|quantization| {
            quantized_run(
                quantization,
                &vectors,
                &queries,
                (&truth, gt_k),
                (similarity, params, k),
                efs,
            )
        })
        .collect();
    println!(
        "{{\"engine\":\"likewise-hnsw\",\"n\":{n},\"dims\":{d},\"build_s\":{build_s:.3},\"build_vps\":{:.1},\"memory_bytes\":{memory},\"raw_bytes\":{},\"results\":[{}],\"exact\":{{\"recall\":{exact_recall:.5},\"qps\":{exact_qps:.1}}},\"filtered\":[{}],\"quantized\":[{}],\"parallel\":{{\"ef\":64,\"qps_1\":{one:.1},\"qps_2\":{two:.1}}},\"build_2\":{build_2},\"target_recall\":{target}}}",
        n as f64 / build_s,
        n * d * 4,
        results.join(","),
        filters.join(","),
        quantized.join(",")
    );
}

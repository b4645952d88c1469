//! The full-text engine alone (`likewise::index::text::TextIndex`, the
//! engine behind `search` indexes) on a corpus prepared by
//! `benches/text/harness.py` (run through `scripts/bench text`): indexes
//! the documents single-threaded in batches, merges the segments as a
//! build does, then answers each query (a
//! `text` operator over `title` and `body`, best `K`) in timed rounds:
//! first on this thread alone, then inside a tokio runtime, as the proxy
//! searches (helpers on free cores claim documents beside it).
//! Prints one JSON object: build throughput, queries/s and latency of the
//! best round of each (`beside_*` for the second), the top `K` ids of
//! the first 100 queries (`top`, for the harness's overlap check against
//! SQLite FTS5) and, untimed, the top `K` ids of every query in `IDS.txt`
//! if given (`ids`: the documents the harness's end-to-end step fetches by
//! `_id` without asking the proxy first; `scores`: their BM25 scores, to
//! tell a tie ordered differently from a different answer).
//!
//!     cargo bench --bench text -- CORPUS.tsv QUERIES.txt K ROUNDS [IDS.txt]
//!
//! `CORPUS.tsv`: `id TAB title TAB body` per line; `QUERIES.txt` and
//! `IDS.txt`: one query per line.

use bson::{rawdoc, RawBsonRef};
use likewise::index::text::{
    Analyzer, DocumentMapping, Hits, Operator, SearchPath, TextChange, TextIndex, TextSpec,
};
use std::time::Instant;

/// Documents per `apply` (one commit each), as an index build batches.
const BATCH: usize = 10_000;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (corpus, queries, k, rounds, ids_of) = match &args[..] {
        [c, q, k, r] => (c, q, k, r, None),
        [c, q, k, r, i] => (c, q, k, r, Some(i)),
        _ => {
            eprintln!(
                "usage: cargo bench --bench text -- CORPUS.tsv QUERIES.txt K ROUNDS [IDS.txt]"
            );
            std::process::exit(2);
        }
    };
    let k: usize = k.parse().expect("K");
    let rounds: usize = rounds.parse().expect("ROUNDS");
    let docs: Vec<bson::RawDocumentBuf> = std::fs::read_to_string(corpus)
        .expect("corpus")
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, '\t');
            let id: i64 = parts.next().unwrap().parse().expect("id");
            let title = parts.next().unwrap_or("");
            let body = parts.next().unwrap_or("");
            rawdoc! { "_id": id, "title": title, "body": body }
        })
        .collect();
    let queries: Vec<String> = std::fs::read_to_string(queries)
        .expect("queries")
        .lines()
        .map(str::to_string)
        .collect();
    let spec = TextSpec {
        mappings: DocumentMapping {
            dynamic: true,
            fields: Default::default(),
        },
        analyzer: Analyzer::Standard,
        search_analyzer: Analyzer::Standard,
        stored_source: Default::default(),
        analyzers: Vec::new(),
        synonyms: Vec::new(),
    };
    let index = TextIndex::new(spec).expect("index");
    let started = Instant::now();
    for chunk in docs.chunks(BATCH) {
        let changes: Vec<TextChange<'_>> = chunk
            .iter()
            .map(|d| TextChange::Set(d.get("_id").unwrap().unwrap(), d))
            .collect();
        index.apply(&changes).expect("apply");
    }
    // As an index build ends.
    index.merge_segments().expect("merge");
    let build_s = started.elapsed().as_secs_f64();
    let operators = text_over_title_and_body(&queries);
    let mut top = Vec::new();
    let (total, latencies) = timed(&index, &operators, k, rounds, Some(&mut top));
    // As the proxy searches: inside a tokio runtime, where a query's
    // segments are searched beside each other when a core is free.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("runtime");
    let inside = runtime.enter();
    let (beside_total, beside_latencies) = timed(&index, &operators, k, rounds, None);
    drop(inside);
    let hits: Vec<Hits> = match ids_of {
        None => Vec::new(),
        Some(path) => {
            let queries: Vec<String> = std::fs::read_to_string(path)
                .expect("IDS.txt")
                .lines()
                .map(str::to_string)
                .collect();
            text_over_title_and_body(&queries)
                .iter()
                .map(|op| index.top(op, k).expect("search"))
                .collect()
        }
    };
    let ids: Vec<Vec<i64>> = hits.iter().map(|h| ids_of_hits(h)).collect();
    let scores: Vec<Vec<f64>> = hits
        .iter()
        .map(|h| h.iter().map(|(_, s)| *s).collect())
        .collect();
    println!(
        "{{\"documents\": {}, \"segments\": {}, \"build_s\": {:.3}, \"build_docs_per_s\": {:.1}, \"queries\": {}, \"qps\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"beside_qps\": {:.1}, \"beside_p50_ms\": {:.3}, \"beside_p99_ms\": {:.3}, \"top\": {}, \"ids\": {}, \"scores\": {}}}",
        docs.len(),
        index.segments(),
        build_s,
        docs.len() as f64 / build_s,
        operators.len(),
        operators.len() as f64 / total,
        at(&latencies, 0.50),
        at(&latencies, 0.99),
        operators.len() as f64 / beside_total,
        at(&beside_latencies, 0.50),
        at(&beside_latencies, 0.99),
        json_lists(&top),
        json_lists(&ids),
        json_lists(&scores)
    );
}

/// A `text` operator over `title` and `body` per query, as the harness's
/// `$search` stages ask.
fn text_over_title_and_body(queries: &[String]) -> Vec<Operator> {
    queries
        .iter()
        .map(|q| Operator::Text {
            query: vec![q.clone()],
            paths: vec![
                SearchPath::Field("title".into()),
                SearchPath::Field("body".into()),
            ],
            fuzzy: None,
            match_all: false,
            score: None,
            synonyms: None,
        })
        .collect()
}

/// The integer `_id`s of hits, best first (-1 for any other `_id`).
fn ids_of_hits(hits: &[(bson::RawBson, f64)]) -> Vec<i64> {
    hits.iter()
        .map(|(id, _)| match id.as_raw_bson_ref() {
            RawBsonRef::Int64(v) => v,
            RawBsonRef::Int32(v) => i64::from(v),
            _ => -1,
        })
        .collect()
}

/// Lists of numbers (ids, scores) as a JSON array of arrays.
fn json_lists<T: std::fmt::Display>(lists: &[Vec<T>]) -> String {
    let inner: Vec<String> = lists
        .iter()
        .map(|list| {
            let items: Vec<String> = list.iter().map(T::to_string).collect();
            format!("[{}]", items.join(","))
        })
        .collect();
    format!("[{}]", inner.join(","))
}

/// The best of `rounds` rounds of every query: its total seconds and the
/// latencies (seconds, sorted); the first round's first 100 results go
/// to `top`.
fn timed(
    index: &TextIndex,
    operators: &[Operator],
    k: usize,
    rounds: usize,
    mut top: Option<&mut Vec<Vec<i64>>>,
) -> (f64, Vec<f64>) {
    let mut best: Option<(f64, Vec<f64>)> = None;
    for round in 0..rounds {
        let mut latencies = Vec::with_capacity(operators.len());
        let started = Instant::now();
        for (i, op) in operators.iter().enumerate() {
            let t = Instant::now();
            let hits = index.top(op, k).expect("search");
            latencies.push(t.elapsed().as_secs_f64());
            if let Some(top) = top.as_mut().filter(|_| round == 0 && i < 100) {
                top.push(ids_of_hits(&hits));
            }
            std::hint::black_box(&hits);
        }
        let total = started.elapsed().as_secs_f64();
        if best.as_ref().is_none_or(|(t, _)| total < *t) {
            best = Some((total, latencies));
        }
    }
    let (total, mut latencies) = best.expect("a round");
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (total, latencies)
}

/// The `q` quantile of sorted `latencies`, in milliseconds.
fn at(latencies: &[f64], q: f64) -> f64 {
    latencies[((q * latencies.len() as f64) as usize).min(latencies.len() - 1)] * 1000.0
}

//! Encoding throughput of the built-in text model (all-MiniLM-L6-v2, batch
//! 32) against sentence-transformers on torch, on the same machine, the same
//! sentences (Debian package summaries from the pinned corpus in
//! `tests/fixtures/debian`) and in the same run, interleaved.
//!
//!     scripts/bench-encode            (sets up the baseline's venv, then runs this)
//!     LIKEWISE_BENCH_SENTENCES=4000 scripts/bench-encode

use likewise::models::bert::BertEncoder;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[path = "../tests/common/corpus.rs"]
mod corpus;

const ROUNDS: usize = 3;
const BATCH: usize = 32;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let count: usize = std::env::var("LIKEWISE_BENCH_SENTENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let texts = corpus::package_texts(count);
    let corpus = std::env::temp_dir().join(format!("likewise-encode-{}.txt", std::process::id()));
    std::fs::write(&corpus, texts.join("\n")).unwrap();
    let encoder = BertEncoder::load(&root.join(".cache/models/all-MiniLM-L6-v2"))
        .expect("model missing: run scripts/fetch-model");
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let python = root.join(".cache/bench-venv/bin/python");
    println!(
        "{} sentences, batch {BATCH}, {} rounds each, interleaved; threads: {} cores",
        refs.len(),
        ROUNDS,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    encoder.encode(&refs[..256.min(refs.len())], BATCH).unwrap();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        encoder.encode(&refs, BATCH).unwrap();
        ours.push(refs.len() as f64 / start.elapsed().as_secs_f64());
        theirs.push(baseline(&python, &root, &corpus));
    }
    let _ = std::fs::remove_file(&corpus);
    let (ours, theirs) = (median(ours), median(theirs));
    println!("likewise                     {ours:>8.1} sentences/s");
    println!("sentence-transformers/torch  {theirs:>8.1} sentences/s");
    println!("encode_ratio_vs_sentence_transformers={:.2}", ours / theirs);
}

/// One timed pass of the Python baseline (a fresh process per round, its
/// warm-up excluded from the timing).
fn baseline(python: &Path, root: &Path, corpus: &Path) -> f64 {
    assert!(
        python.exists(),
        "{} missing: run scripts/bench-encode",
        python.display()
    );
    let out = Command::new(python)
        .arg(root.join("benches/encode_baseline.py"))
        .arg(corpus)
        .arg("1")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("baseline");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("sentences_per_s="))
        .and_then(|v| v.parse().ok())
        .expect("baseline printed no rate")
}

//! Held-out retrieval quality and training throughput of the three ways
//! to train a semantic index, on pairs `benches/fine_tune/harness.py`
//! prepares from the pinned Debian corpus: the frozen model (untrained),
//! a linear adapter on its outputs (`train::train`), and the model's own
//! weights fine-tuned (`train::finetune`), evaluated through the fast
//! encoder after the fine-tuned weights are written and loaded back.
//!
//!     cargo bench --bench fine_tune -- MODEL_DIR PAIRS.tsv LAYERS EPOCHS BATCH LR [MAX_TOKENS]
//!
//! `PAIRS.tsv`: `fold TAB query TAB item` per line, fold `train` or
//! `valid`. Items are cut to `MAX_TOKENS` tokens for training (default:
//! the encoder's limit). Prints one JSON object: r@1, r@10 and MRR of
//! each, pairs/s of fine-tuning, its peak resident memory.

use likewise::models::bert::BertEncoder;
use likewise::train::finetune::{fine_tune, truncate, BertGraph, FineTuneSpec, Trainable};
use likewise::train::{self, Metric, Pairs, TrainSpec};
use std::path::PathBuf;
use std::time::Instant;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn encode(encoder: &BertEncoder, texts: &[&str]) -> Vec<Vec<f32>> {
    encoder
        .encode(texts, 32)
        .expect("encode")
        .into_iter()
        .map(|e| e.vector)
        .collect()
}

fn pairs_of(q: &[Vec<f32>], x: &[Vec<f32>]) -> Pairs {
    let mut pairs = Pairs::new(q[0].len());
    for (q, x) in q.iter().zip(x) {
        pairs.push(q, x);
    }
    pairs
}

fn show(metrics: &[(String, f64)]) -> String {
    let fields: Vec<String> = metrics
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v:.4}"))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// One side of each pair: the queries (`first`) or the items.
fn side<'a>(set: &[(&'a str, &'a str)], first: bool) -> Vec<&'a str> {
    set.iter().map(|p| if first { p.0 } else { p.1 }).collect()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [model, pairs, layers, epochs, batch, lr, rest @ ..] = &args[..] else {
        eprintln!("usage: cargo bench --bench fine_tune -- MODEL_DIR PAIRS.tsv LAYERS EPOCHS BATCH LR [MAX_TOKENS]");
        std::process::exit(2);
    };
    let model = PathBuf::from(model);
    let layers: usize = layers.parse().expect("LAYERS");
    let epochs: usize = epochs.parse().expect("EPOCHS");
    let batch: usize = batch.parse().expect("BATCH");
    let lr: f64 = lr.parse().expect("LR");
    let max_tokens: Option<usize> = rest.first().map(|m| m.parse().expect("MAX_TOKENS"));
    let lines = std::fs::read_to_string(pairs).expect("pairs");
    let (mut train_set, mut valid_set) = (Vec::new(), Vec::new());
    for line in lines.lines() {
        let mut parts = line.splitn(3, '\t');
        let (fold, q, x) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        if fold == "valid" {
            valid_set.push((q, x));
        } else {
            train_set.push((q, x));
        }
    }
    let metrics = [Metric::RecallAt(1), Metric::RecallAt(10), Metric::Mrr];
    let encoder = BertEncoder::load(&model).expect("model");
    let (vq, vx) = (side(&valid_set, true), side(&valid_set, false));
    let valid = pairs_of(&encode(&encoder, &vq), &encode(&encoder, &vx));
    let untrained = train::evaluate(
        &train::Adapter::identity(valid.dims, false),
        &valid,
        &metrics,
    );
    eprintln!("untrained {}", show(&untrained));

    let (tq, tx) = (side(&train_set, true), side(&train_set, false));
    let trained_pairs = pairs_of(&encode(&encoder, &tq), &encode(&encoder, &tx));
    let spec = TrainSpec {
        metrics: metrics.to_vec(),
        epochs: 12,
        batch_size: 128,
        learning_rate: 1e-3,
        temperature: 20.0,
        ..TrainSpec::default()
    };
    let adapter = train::train(&spec, &trained_pairs, &valid, |_| true).expect("adapter");
    let adapted = train::evaluate(&adapter, &valid, &metrics);
    eprintln!("adapter {}", show(&adapted));

    let graph = BertGraph::load(
        &model,
        Trainable {
            layers: Some(layers),
            embeddings: false,
        },
    )
    .expect("graph");
    let cut = |ids: Vec<u32>| match max_tokens {
        Some(m) => truncate(ids, m),
        None => ids,
    };
    let token_pairs: Vec<(Vec<u32>, Vec<u32>)> = encoder
        .tokenize(&tq)
        .expect("tokenize")
        .into_iter()
        .zip(encoder.tokenize(&tx).expect("tokenize"))
        .map(|(q, x)| (q, cut(x)))
        .collect();
    let fine_spec = FineTuneSpec {
        epochs,
        batch_size: batch,
        learning_rate: lr,
        weight_decay: 0.01,
        temperature: 20.0,
        seed: 42,
    };
    let started = Instant::now();
    let run = fine_tune(&graph, &token_pairs, &fine_spec, |p| {
        if p.step % 10 == 0 || p.step == p.steps {
            eprintln!(
                "  epoch {} step {}/{} loss {:.4} {:.1} pairs/s",
                p.epoch, p.step, p.steps, p.loss, p.pairs_per_s
            );
        }
        true
    })
    .expect("fine-tune");
    let seconds = started.elapsed().as_secs_f64();
    let trained_pairs_seen = token_pairs.len() / batch * batch * epochs;
    let out =
        std::env::temp_dir().join(format!("likewise-bench-fine-tuned-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(model.join(file), out.join(file)).unwrap();
    }
    graph.save(&out.join("model.safetensors")).unwrap();
    let tuned = BertEncoder::load(&out).expect("tuned model");
    std::fs::remove_dir_all(&out).unwrap();
    let valid = pairs_of(&encode(&tuned, &vq), &encode(&tuned, &vx));
    let fine_tuned = train::evaluate(
        &train::Adapter::identity(valid.dims, false),
        &valid,
        &metrics,
    );
    eprintln!("fine-tuned {}", show(&fine_tuned));
    println!(
        "{{\"train_pairs\": {}, \"valid_pairs\": {}, \"layers\": {layers}, \"epochs\": {epochs}, \"batch\": {batch}, \"lr\": {lr}, \"max_tokens\": {}, \"losses\": [{}], \"untrained\": {}, \"adapter\": {}, \"fine_tuned\": {}, \"fine_tune_s\": {seconds:.1}, \"pairs_per_s\": {:.2}, \"peak_rss_mib\": {:.0}}}",
        train_set.len(),
        valid_set.len(),
        max_tokens.map_or("null".to_string(), |m| m.to_string()),
        run.iter().map(|e| format!("{:.4}", e.loss)).collect::<Vec<_>>().join(", "),
        show(&untrained),
        show(&adapted),
        show(&fine_tuned),
        trained_pairs_seen as f64 / seconds,
        peak_rss_kib() as f64 / 1024.0,
    );
}

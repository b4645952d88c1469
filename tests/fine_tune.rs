//! Fine-tuning all-MiniLM-L6-v2's own weights (`train::finetune`) against
//! the fast encoder that serves queries (`models::bert::BertEncoder`): the
//! training graph's forward pass gives the encoder's vectors, and weights
//! it trained, written as `model.safetensors`, load into the encoder and
//! give the training graph's vectors, both to 1e-5.

use likewise::models::bert::BertEncoder;
use likewise::train::finetune::{fine_tune, BertGraph, FineTuneSpec, Trainable};

#[path = "common/model.rs"]
mod model;
use model::model_dir;

const SENTENCES: [&str; 5] = [
    "a",
    "Fast, small and secure web server",
    "utility library for parsing command-line options in C programs",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua.",
    "🦀 crab",
];

fn max_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn the_training_graph_and_the_fast_encoder_agree_before_and_after_fine_tuning() {
    let dir = model_dir();
    let encoder = BertEncoder::load(&dir).unwrap();
    let graph = BertGraph::load(
        &dir,
        Trainable {
            layers: Some(2),
            embeddings: false,
        },
    )
    .unwrap();
    assert_eq!(graph.trained().len(), 2 * 16);
    let ids = encoder.tokenize(&SENTENCES).unwrap();
    let fast = |encoder: &BertEncoder| -> Vec<Vec<f32>> {
        encoder
            .encode(&SENTENCES, 3)
            .unwrap()
            .into_iter()
            .map(|e| e.vector)
            .collect()
    };
    let before = fast(&encoder);
    let graph_before = graph.vectors(&ids).unwrap();
    let gap = max_difference(&before, &graph_before);
    assert!(
        gap <= 1e-5,
        "training graph vs encoder before training: {gap}"
    );
    // With the embeddings trained, the graph computes every layer itself
    // (the frozen bottom above ran in the fast encoder).
    let whole = BertGraph::load(
        &dir,
        Trainable {
            layers: None,
            embeddings: true,
        },
    )
    .unwrap();
    assert_eq!(whole.trained().len(), 5 + 6 * 16);
    let gap = max_difference(&before, &whole.vectors(&ids).unwrap());
    assert!(gap <= 1e-5, "whole training graph vs encoder: {gap}");
    drop(whole);

    // A few steps on package-like (summary, description) pairs.
    let texts: Vec<(String, String)> = (0..16)
        .map(|i| {
            (
                format!("tool number {i} for files"),
                format!(
                    "This package provides tool {i}, which reads and writes files of kind {}.",
                    i * 7
                ),
            )
        })
        .collect();
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = texts
        .iter()
        .map(|(q, x)| {
            let mut both = encoder.tokenize(&[q, x]).unwrap();
            let x = both.pop().unwrap();
            (both.pop().unwrap(), x)
        })
        .collect();
    let spec = FineTuneSpec {
        epochs: 1,
        batch_size: 8,
        learning_rate: 1e-4,
        weight_decay: 0.01,
        temperature: 20.0,
        seed: 3,
    };
    let epochs = fine_tune(&graph, &pairs, &spec, |_| true).unwrap();
    assert_eq!(epochs.len(), 1);
    assert!(epochs[0].loss.is_finite());

    let out = std::env::temp_dir().join(format!("likewise-fine-tuned-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(dir.join(file), out.join(file)).unwrap();
    }
    graph.save(&out.join("model.safetensors")).unwrap();
    let tuned = BertEncoder::load(&out).unwrap();
    let after = fast(&tuned);
    let graph_after = graph.vectors(&ids).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    let gap = max_difference(&after, &graph_after);
    assert!(
        gap <= 1e-5,
        "training graph vs encoder after training: {gap}"
    );
    // The weights moved: the vectors are not the ones before.
    let moved = max_difference(&before, &after);
    assert!(
        moved > 1e-4,
        "fine-tuning changed the vectors by only {moved}"
    );
}

//! The built-in text encoder against sentence-transformers' own output for
//! all-MiniLM-L6-v2 (fixture generated once with sentence-transformers and
//! torch; see `tests/fixtures/minilm_reference.json`).

use likewise::models::bert::BertEncoder;

#[path = "common/model.rs"]
mod model;
use model::model_dir;

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
}

#[derive(serde::Deserialize)]
struct Reference {
    max_seq_length: usize,
    cases: Vec<Case>,
}

#[test]
fn matches_sentence_transformers_to_1e_5() {
    let reference: Reference =
        serde_json::from_str(include_str!("fixtures/minilm_reference.json")).unwrap();
    let encoder = BertEncoder::load(&model_dir()).unwrap();
    assert_eq!(encoder.dimensions(), 384);
    assert_eq!(encoder.max_tokens(), reference.max_seq_length);
    let texts: Vec<&str> = reference.cases.iter().map(|c| c.text.as_str()).collect();
    // Odd batch sizes mix lengths within a batch, so padding must not leak.
    for batch in [1, 3, 32] {
        let got = encoder.encode(&texts, batch).unwrap();
        for (case, enc) in reference.cases.iter().zip(&got) {
            let worst = case
                .embedding
                .iter()
                .zip(&enc.vector)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-5,
                "batch {batch}: {:?} differs by {worst}",
                &case.text[..case.text.len().min(40)]
            );
            assert_eq!(
                enc.truncated,
                case.tokens > reference.max_seq_length,
                "{:?}",
                case.text
            );
        }
    }
}

#[test]
fn rejects_a_directory_without_a_model() {
    let dir = std::env::temp_dir().join(format!("likewise-empty-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = BertEncoder::load(&dir)
        .err()
        .expect("an empty directory is not a model");
    assert!(err.contains("config.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

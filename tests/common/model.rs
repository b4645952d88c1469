//! The default text model's directory, for tests that load it.

use std::path::PathBuf;

/// `.cache/models/all-MiniLM-L6-v2`, which `scripts/fetch-model` installs
/// (pinned by hash); panics, naming the script, when it is missing.
pub fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch-model",
        dir.display()
    );
    dir
}

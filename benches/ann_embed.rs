//! The real data set of the ANN benchmark: all-MiniLM-L6-v2 embeddings
//! (made by likewise's own encoder) of distinct Debian package summaries
//! spread over the pinned corpus (`tests/fixtures/debian`), written as a
//! `.npy` float32 matrix.
//!
//!     cargo bench --bench ann_embed -- LIMIT OUT.npy

use likewise::models::bert::BertEncoder;
use std::io::Write;

#[path = "../tests/common/corpus.rs"]
mod corpus;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [limit, out] = &args[..] else {
        eprintln!("usage: cargo bench --bench ann_embed -- LIMIT OUT.npy");
        std::process::exit(2);
    };
    let limit: usize = limit.parse().unwrap();
    let texts = corpus::package_texts(limit);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let encoder = BertEncoder::load(&root.join(".cache/models/all-MiniLM-L6-v2"))
        .expect("run scripts/fetch-model");
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let start = std::time::Instant::now();
    let encoded = encoder.encode(&refs, 32).expect("encode");
    eprintln!(
        "encoded {} texts in {:.1} s",
        refs.len(),
        start.elapsed().as_secs_f64()
    );
    let d = encoder.dimensions();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {d}), }}",
        encoded.len()
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut file = std::fs::File::create(out).unwrap();
    file.write_all(b"\x93NUMPY\x01\x00").unwrap();
    file.write_all(&(header.len() as u16).to_le_bytes())
        .unwrap();
    file.write_all(header.as_bytes()).unwrap();
    for e in &encoded {
        for x in &e.vector {
            file.write_all(&x.to_le_bytes()).unwrap();
        }
    }
}

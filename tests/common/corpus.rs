//! The pinned Debian 12 corpus of `tests/fixtures/debian`: real one-line
//! package summaries, the same bytes on every machine.

use flate2::read::GzDecoder;
use std::io::Read;
use std::path::PathBuf;

/// "name: summary" of `limit` packages spread evenly over the 59,912 of
/// `summaries.tsv.gz` (sorted by name, each with a summary no other has),
/// as a user would index a package. Panics if the fixture is missing, is
/// not `name TAB section TAB summary` lines, or holds fewer than `limit`.
pub fn package_texts(limit: usize) -> Vec<String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/debian/summaries.tsv.gz");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // The pinned bytes (tests/fixtures/debian/README.md).
    let digest: String = {
        use sha2::{Digest, Sha256};
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(
        digest,
        "81b9cc1989e968d88e9aa1a7e6da1a7873e4c1788f88d6ce0b150f3cd011507c",
        "{} is not the pinned corpus",
        path.display()
    );
    let mut text = String::new();
    GzDecoder::new(bytes.as_slice())
        .read_to_string(&mut text)
        .expect("summaries.tsv.gz is gzip'd UTF-8");
    let all: Vec<String> = text
        .lines()
        .map(|line| {
            let mut fields = line.splitn(3, '\t');
            let (Some(name), Some(_section), Some(summary)) =
                (fields.next(), fields.next(), fields.next())
            else {
                panic!("not name TAB section TAB summary: {line:?}");
            };
            format!("{name}: {summary}")
        })
        .collect();
    assert!(
        all.len() >= limit,
        "the corpus holds {} packages",
        all.len()
    );
    (0..limit)
        .map(|i| all[i * all.len() / limit].clone())
        .collect()
}

//! Index snapshots under `--data-dir`, so a restart does not rebuild from
//! scratch: `<data dir>/indexes/<index id>.snapshot` holds the definition it
//! was built from, the change-stream resume token, and the engine's section
//! (the `_id` ↔ key map and the vector index, or a full-text index's
//! segment files), with a CRC-32C over all of it. It is written to a
//! temporary file and renamed, so a crash leaves the old or the new one.
//!
//! The token is read before the data, so the data is at least as new as the
//! token: replaying the stream from it after a restart re-applies changes
//! the snapshot may already hold (idempotent), never skips one.

use crate::registry::vectors::{corrupt, Reader};
use crate::registry::SearchIndex;
use bson::{RawDocument, RawDocumentBuf};
use std::io;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"LWSN";
/// 2: custom analyzers' `length` filter counts characters (1 counted
/// bytes); a version 1 snapshot is loaded unless its definition has one.
const VERSION: u32 = 2;

/// Whether a definition names a custom analyzer with a `length` token
/// filter (whose terms changed between snapshot versions 1 and 2).
fn has_length_filter(definition: &RawDocument) -> bool {
    let Ok(analyzers) = definition.get_array("analyzers") else {
        return false;
    };
    analyzers
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_document())
        .filter_map(|a| a.get_array("tokenFilters").ok())
        .flat_map(|filters| filters.into_iter().flatten())
        .filter_map(|f| f.as_document())
        .any(|f| f.get_str("type") == Ok("length"))
}

/// `<data dir>/indexes/<id>.snapshot` for the first vector field of a
/// first definition, else `<id>.v<definition version>.<part>.snapshot`:
/// every part of every definition (a staged one beside the serving one)
/// has its own file.
pub fn path(data_dir: &Path, index: &SearchIndex) -> PathBuf {
    let name = match (index.definition_version.0, index.part) {
        (0, 0) => format!("{}.snapshot", index.id),
        (version, part) => format!("{}.v{version}.{part}.snapshot", index.id),
    };
    data_dir.join("indexes").join(name)
}

/// Removes every snapshot of index `id` (all its parts and definitions).
pub fn remove_all(data_dir: &Path, id: &str) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("indexes")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&format!("{id}.")) && name.ends_with(".snapshot") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn put_doc(out: &mut Vec<u8>, doc: &RawDocument) {
    out.extend_from_slice(doc.as_bytes());
}

/// Writes the snapshot of `index` (CPU and disk work: a blocking thread).
pub fn save(data_dir: &Path, index: &SearchIndex) -> io::Result<()> {
    let token = index.resume_token().unwrap_or_default();
    let generation = index.generation();
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    put_doc(&mut out, &index.definition);
    put_doc(&mut out, &token);
    index.save_engine(&mut out)?;
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());

    let target = path(data_dir, index);
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temp = target.with_extension("snapshot.tmp");
    std::fs::write(&temp, &out)?;
    std::fs::File::open(&temp)?.sync_all()?;
    std::fs::rename(&temp, &target)?;
    index.mark_saved(generation);
    Ok(())
}

/// Loads the snapshot of `index` into it and returns its resume token.
/// `Ok(None)` when there is none; an error when it is corrupt or was built
/// from another definition (the caller rebuilds and says so).
pub fn load(data_dir: &Path, index: &SearchIndex) -> io::Result<Option<RawDocumentBuf>> {
    let bytes = match std::fs::read(path(data_dir, index)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() < 12 || &bytes[..4] != MAGIC {
        return Err(corrupt("not a likewise snapshot"));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) {
        return Err(corrupt("checksum mismatch"));
    }
    let mut r = Reader::new(body, 4);
    let version = r.u32()?;
    if version != VERSION && version != 1 {
        return Err(corrupt("unknown version"));
    }
    let definition = r.doc()?;
    if definition.as_bytes() != index.definition.as_bytes() {
        return Err(corrupt("built from another definition"));
    }
    if version == 1 && has_length_filter(&definition) {
        return Err(corrupt("built with an older length filter"));
    }
    let token = r.doc()?;
    index.restore_engine(&mut r)?;
    Ok((!token.is_empty()).then_some(token))
}

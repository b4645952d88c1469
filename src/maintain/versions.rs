//! Model versions that fine-tuning makes (`train: {fineTune: true}`): a
//! `text` model's three files ([`ModelFiles`]) stored in the upstream, in
//! the GridFS bucket `<metadata db>.model_files` as `<version>/<file>`, so
//! a restarted proxy, or one started later on the same upstream, loads
//! the version without training again; cached under `--data-dir` in
//! `models/<version>/` when there is one. The version's catalog entry (`<metadata db>.models`, signed like
//! every metadata document) holds each file's SHA-256: files read back,
//! from the cache or the upstream, are used only when every hash matches.

use crate::config::Config;
use crate::error::{Code, Error};
use crate::models::bert::ModelFiles;
use crate::models::{Model, ModelDef, Models};
use crate::upstream;
use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use std::path::PathBuf;
use std::sync::Arc;

/// The GridFS bucket of model files, in the metadata database.
pub const BUCKET: &str = "model_files";

/// Largest file read back from the bucket (as for files on disk).
const MAX_FILE: u64 = crate::models::bert::MAX_MODEL_FILE;

/// Bytes a file is read from the bucket in at a time.
const READ_PIECE: usize = 1 << 20;

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Each file's name and the lowercase hex SHA-256 of its bytes.
pub fn hashes(files: &ModelFiles) -> Vec<(String, String)> {
    files
        .named()
        .iter()
        .map(|(name, bytes)| (name.to_string(), sha256_hex(bytes)))
        .collect()
}

/// The name of the `n`th version fine-tuning index `index` makes of
/// `parent`: `<parent>@<index>-v<n>`, every character but ASCII letters,
/// digits, `_`, `-` and `@` replaced by `_`, so the name is a model name
/// (`models::check_name`), one path component under the data directory
/// and one GridFS file-name prefix.
pub fn version_name(parent: &str, index: &str, n: u32) -> String {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '@') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("{}@{}-v{n}", safe(parent), safe(index))
}

/// Whether `name` is one [`version_name`] can make (so it is safe as a
/// path component).
fn is_version_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '@'))
}

fn cache_dir(config: &Config, name: &str) -> Option<PathBuf> {
    let dir = config.data_dir.as_ref()?;
    is_version_name(name).then(|| dir.join("models").join(name))
}

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::upstream(Code::OPERATION_FAILED, format!("likewise: {what}: {e}"))
}

/// Stores `files` as version `name` (a name the caller claimed in the
/// catalog, so no other version has it): in the bucket, after deleting
/// any files of that name a crashed run left, and in the data directory's
/// cache.
pub async fn store(config: &Config, name: &str, files: &ModelFiles) -> Result<(), Error> {
    let conn = upstream::connect(config).await?;
    let bucket = conn.gridfs(&config.metadata_db, BUCKET);
    delete_files(config, name).await?;
    for (file, bytes) in files.named() {
        let mut stream = bucket
            .open_upload_stream(format!("{name}/{file}"))
            .await
            .map_err(upstream::driver_error)?;
        stream
            .write_all(bytes)
            .await
            .map_err(|e| failed("storing a model file", e))?;
        stream
            .close()
            .await
            .map_err(|e| failed("storing a model file", e))?;
    }
    if let Some(dir) = cache_dir(config, name) {
        if let Err(e) = write_cache(&dir, files) {
            tracing::warn!(model = %name, error = %e, "cannot cache the model version's files");
        }
    }
    Ok(())
}

fn write_cache(dir: &std::path::Path, files: &ModelFiles) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (file, bytes) in files.named() {
        // Written whole, then renamed: a crash leaves the old file or none.
        let part = dir.join(format!("{file}.part"));
        std::fs::write(&part, bytes)?;
        std::fs::rename(&part, dir.join(file))?;
    }
    Ok(())
}

/// Deletes version `name`'s files from the bucket and the cache.
pub async fn delete_files(config: &Config, name: &str) -> Result<(), Error> {
    let conn = upstream::connect(config).await?;
    let bucket = conn.gridfs(&config.metadata_db, BUCKET);
    for file in ModelFiles::NAMES {
        match bucket.delete_by_name(format!("{name}/{file}")).await {
            Ok(()) => {}
            Err(e)
                if matches!(
                    *e.kind,
                    mongodb::error::ErrorKind::GridFs(
                        mongodb::error::GridFsErrorKind::FileNotFound { .. }
                    )
                ) => {}
            Err(e) => return Err(upstream::driver_error(e)),
        }
    }
    if let Some(dir) = cache_dir(config, name) {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// Version `def`'s files, checked against the hashes its entry holds:
/// from the cache when they match there, else from the bucket (then
/// cached). Hashing (a model's weights are tens of MB) and the cache's
/// file I/O run on blocking threads. Errors: a file missing from the
/// bucket, or one whose hash does not match.
pub async fn fetch(config: &Config, def: &ModelDef) -> Result<ModelFiles, Error> {
    let lineage = def
        .lineage
        .as_ref()
        .ok_or_else(|| Error::internal(format!("model '{}' is not a version", def.name)))?;
    let expected = lineage.files.clone();
    if let Some(dir) = cache_dir(config, &def.name) {
        let want = expected.clone();
        let cached = tokio::task::spawn_blocking(move || {
            ModelFiles::read(&dir).map(|files| {
                let matches = hashes(&files) == want;
                (files, matches)
            })
        })
        .await
        .map_err(|e| Error::internal(format!("reading cached model files: {e}")))?;
        match cached {
            Ok((files, true)) => return Ok(files),
            Ok((_, false)) => {
                tracing::warn!(model = %def.name, "cached model files do not match their hashes: reading them from the upstream")
            }
            Err(_) => {}
        }
    }
    let conn = upstream::connect(config).await?;
    let bucket = conn.gridfs(&config.metadata_db, BUCKET);
    let mut read = Vec::new();
    for file in ModelFiles::NAMES {
        let mut stream = bucket
            .open_download_stream_by_name(format!("{}/{file}", def.name))
            .await
            .map_err(upstream::driver_error)?;
        // Read a piece at a time rather than with `read_to_end`, which
        // zero-fills its buffer a byte at a time where unoptimised (tests'
        // builds): seconds for a model's weights.
        let mut bytes = Vec::new();
        let mut piece = vec![0u8; READ_PIECE];
        loop {
            let n = stream
                .read(&mut piece)
                .await
                .map_err(|e| failed("reading a model file", e))?;
            if n == 0 {
                break;
            }
            if (bytes.len() + n) as u64 > MAX_FILE {
                return Err(failed(
                    "reading a model file",
                    format!("{file} is larger than {MAX_FILE} bytes"),
                ));
            }
            bytes.extend_from_slice(&piece[..n]);
        }
        read.push(bytes);
    }
    let weights = read.pop().unwrap_or_default();
    let tokenizer = read.pop().unwrap_or_default();
    let config_json = read.pop().unwrap_or_default();
    let files = ModelFiles {
        config: config_json,
        tokenizer,
        weights,
    };
    let (cache, name) = (cache_dir(config, &def.name), def.name.clone());
    tokio::task::spawn_blocking(move || {
        if hashes(&files) != expected {
            return Err(Error::upstream(
                Code::OPERATION_FAILED,
                format!(
                    "likewise: the stored files of model version '{name}' do not match their \
                     hashes"
                ),
            ));
        }
        if let Some(dir) = cache {
            if let Err(e) = write_cache(&dir, &files) {
                tracing::warn!(model = %name, error = %e, "cannot cache the model version's files");
            }
        }
        Ok(files)
    })
    .await
    .map_err(|e| Error::internal(format!("checking model files: {e}")))?
}

/// Loads any stored or created model: a version from its files
/// ([`fetch`]), any other with [`Models::load`] (on a blocking thread:
/// weights, or a probe request).
pub async fn load(config: &Config, models: &Arc<Models>, def: ModelDef) -> Result<Model, Error> {
    let target = models.clone();
    let loaded = if def.lineage.is_some() {
        let files = fetch(config, &def).await?;
        tokio::task::spawn_blocking(move || target.load_version(def, &files)).await
    } else {
        let (dir, access) = (config.default_model.clone(), config.model_access.clone());
        tokio::task::spawn_blocking(move || target.load(def, &dir, &access)).await
    };
    loaded.map_err(|e| Error::internal(format!("model load failed: {e}")))?
}

/// The files of a `text` model, to fine-tune it: a version's from
/// [`fetch`], any other's from its directory.
pub async fn files_of(config: &Config, def: &ModelDef) -> Result<ModelFiles, Error> {
    if def.lineage.is_some() {
        return fetch(config, def).await;
    }
    let dir = match &def.path {
        Some(path) => config
            .model_access
            .path_under(path, Some(&config.default_model), "'path'")
            .map_err(|e| Error::client(Code::BAD_VALUE, e))?,
        None => config.default_model.clone(),
    };
    tokio::task::spawn_blocking(move || ModelFiles::read(&dir))
        .await
        .map_err(|e| Error::internal(format!("reading model files: {e}")))?
        .map_err(|e| Error::client(Code::OPERATION_FAILED, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_are_model_names() {
        let name = version_name("minilm", "docs.v2", 3);
        assert_eq!(name, "minilm@docs_v2-v3");
        crate::models::check_name(&name).unwrap();
        assert_eq!(version_name("m", "$x", 1), "m@_x-v1");
        // Never a path: no separators, no absolute names.
        let odd = version_name("/etc/m", "a/../b\\c", 2);
        assert_eq!(odd, "_etc_m@a____b_c-v2");
        assert!(is_version_name(&odd) && !is_version_name("a/b") && !is_version_name(""));
    }

    #[test]
    fn hashes_are_sha256_of_each_file() {
        let files = ModelFiles {
            config: b"abc".to_vec(),
            tokenizer: Vec::new(),
            weights: b"w".to_vec(),
        };
        let h = hashes(&files);
        assert_eq!(h[0].0, "config.json");
        // FIPS 180-2's test vector for "abc", and SHA-256 of the empty input.
        assert_eq!(
            h[0].1,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            h[1].1,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(h[2].0, "model.safetensors");
    }
}

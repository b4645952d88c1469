//! Models: what turns a document's key (or a query's content) into a
//! vector. Registered once per deployment with `createModel` and stored in
//! the metadata database, like index definitions. Three kinds:
//!
//! - `vector`: the key already holds the vector;
//! - `text`: a BERT-family sentence encoder run inside the proxy
//!   (`bert.rs`; all-MiniLM-L6-v2 by default);
//! - `http`: an OpenAI-compatible `/v1/embeddings` endpoint (`http.rs`).
//!
//! Encoding is blocking CPU or network work: callers run it on blocking
//! threads, never on the reactor.

pub use likewise_compute::bert;
pub mod http;

use crate::error::{Code, Error};
use bert::BertEncoder;
use bson::{rawdoc, RawBsonRef, RawDocument, RawDocumentBuf};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

/// Inputs a `text` model encodes at once.
pub const DEFAULT_BATCH: usize = 32;
/// Largest `dimensions` a model may declare.
use crate::index::MAX_DIMENSIONS;

fn bad(message: impl Into<String>) -> Error {
    Error::client(Code::BAD_VALUE, message)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Vector,
    Text,
    Http,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vector => "vector",
            Kind::Text => "text",
            Kind::Http => "http",
        }
    }
}

/// A model as registered: everything needed to load it again.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDef {
    pub name: String,
    pub kind: Kind,
    /// `text`: directory with `config.json`, `tokenizer.json` and
    /// `model.safetensors`; `None` means the default model.
    pub path: Option<String>,
    /// `http`: the embeddings endpoint, e.g. `http://127.0.0.1:11434/v1/embeddings`.
    pub url: Option<String>,
    /// `http`: the `model` field sent to the endpoint.
    pub remote_model: Option<String>,
    /// `http`: the environment variable holding the API key (the key itself
    /// is never stored).
    pub api_key_env: Option<String>,
    /// `http` over `https://`: a PEM bundle of the CAs to trust instead of
    /// the system's.
    pub tls_ca_file: Option<String>,
    /// Output size; 0 until known (probed when the model loads).
    pub dimensions: usize,
    pub batch_size: usize,
    pub timeout_ms: u64,
    pub retries: u32,
    /// A model version fine-tuning made (`text` only): where it came
    /// from. Its files live in the upstream ([`crate::maintain::versions`]),
    /// not at a `path`.
    pub lineage: Option<Lineage>,
}

/// Where a fine-tuned model version came from, as `listModels` shows it
/// (`parent`, `trainedBy`, `training`, `files`).
#[derive(Debug, Clone, PartialEq)]
pub struct Lineage {
    /// The model it was fine-tuned from.
    pub parent: String,
    /// The id of the search index whose training made it.
    pub index_id: String,
    /// That index as `db.collection.name`.
    pub index: String,
    /// The run: its settings, per-epoch losses, pairs and the held-out
    /// metrics before, with an adapter, and fine-tuned.
    pub training: RawDocumentBuf,
    /// Each file ([`bert::ModelFiles::NAMES`]) with the lowercase hex
    /// SHA-256 of its bytes, checked whenever the files are read back.
    pub files: Vec<(String, String)>,
}

impl Lineage {
    fn parse(doc: &RawDocument) -> Result<Option<Lineage>, Error> {
        let Ok(parent) = doc.get_str("parent") else {
            return Ok(None);
        };
        let stored = |what: &str| bad(format!("stored model version lacks '{what}'"));
        let by = doc
            .get_document("trainedBy")
            .map_err(|_| stored("trainedBy"))?;
        let files = doc
            .get_document("files")
            .map_err(|_| stored("files"))?
            .iter()
            .map(|f| {
                let (name, hash) = f.map_err(|_| stored("files"))?;
                let hash = hash.as_str().ok_or_else(|| stored("files"))?;
                Ok((name.to_string(), hash.to_string()))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Some(Lineage {
            parent: parent.to_string(),
            index_id: by
                .get_str("indexId")
                .map_err(|_| stored("trainedBy.indexId"))?
                .to_string(),
            index: by
                .get_str("index")
                .map_err(|_| stored("trainedBy.index"))?
                .to_string(),
            training: doc
                .get_document("training")
                .map_err(|_| stored("training"))?
                .to_owned(),
            files,
        }))
    }
}

fn positive(doc: &RawDocument, key: &str, max: i64) -> Result<Option<i64>, Error> {
    match doc.get(key).ok().flatten() {
        None => Ok(None),
        Some(v) => crate::wire::integer(Some(v))
            .filter(|n| (1..=max).contains(n))
            .map(Some)
            .ok_or_else(|| bad(format!("'{key}' must be an integer from 1 to {max}"))),
    }
}

fn string(doc: &RawDocument, key: &str) -> Result<Option<String>, Error> {
    match doc.get(key).ok().flatten() {
        None | Some(RawBsonRef::Null) => Ok(None),
        Some(RawBsonRef::String(s)) if !s.is_empty() => Ok(Some(s.to_string())),
        Some(_) => Err(bad(format!("'{key}' must be a non-empty string"))),
    }
}

/// A model name may not contain dots (it becomes a field name under
/// `_outputs.<key>`) or start with `$`.
pub fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.contains('.') || name.starts_with('$') || name.contains('\0') {
        return Err(bad(format!(
            "model name {name:?} must be non-empty, without '.', and not start with '$'"
        )));
    }
    Ok(())
}

impl ModelDef {
    /// Reads `{createModel: name, kind, path?, url?, model?, apiKeyEnv?,
    /// tlsCAFile?, dimensions?, batchSize?, timeoutMS?, retries?}` (also the stored form,
    /// whose name is under `_id`).
    pub fn parse(doc: &RawDocument, name_key: &str) -> Result<ModelDef, Error> {
        let name = doc
            .get_str(name_key)
            .map_err(|_| bad(format!("'{name_key}' must name the model")))?
            .to_string();
        check_name(&name)?;
        // Only fine-tuning makes model versions; a stored one says so.
        let lineage = if name_key == "_id" {
            Lineage::parse(doc)?
        } else {
            if let Some(k) = ["parent", "trainedBy", "training", "files"]
                .into_iter()
                .find(|k| doc.get(k).ok().flatten().is_some())
            {
                return Err(bad(format!(
                    "'{k}' is set by fine-tuning (train: {{fineTune: true}}), not by createModel"
                )));
            }
            None
        };
        let kind = match doc.get_str("kind") {
            Ok("vector") => Kind::Vector,
            Ok("text") => Kind::Text,
            Ok("http") => Kind::Http,
            Ok(other) => {
                return Err(bad(format!(
                    "unknown model kind '{other}': use 'vector', 'text' or 'http'"
                )))
            }
            Err(_) => return Err(bad("createModel needs 'kind': 'vector', 'text' or 'http'")),
        };
        let def = ModelDef {
            name,
            kind,
            path: string(doc, "path")?,
            url: string(doc, "url")?,
            remote_model: string(doc, "model")?,
            api_key_env: string(doc, "apiKeyEnv")?,
            tls_ca_file: string(doc, "tlsCAFile")?,
            dimensions: positive(doc, "dimensions", MAX_DIMENSIONS as i64)?.unwrap_or(0) as usize,
            batch_size: positive(doc, "batchSize", 2048)?.unwrap_or(DEFAULT_BATCH as i64) as usize,
            timeout_ms: positive(doc, "timeoutMS", 600_000)?.unwrap_or(30_000) as u64,
            retries: match doc.get("retries").ok().flatten() {
                None => 2,
                Some(v) => crate::wire::integer(Some(v))
                    .filter(|n| (0..=10).contains(n))
                    .ok_or_else(|| bad("'retries' must be an integer from 0 to 10"))?
                    as u32,
            },
            lineage,
        };
        if let Some(var) = &def.api_key_env {
            let suffix = var.strip_prefix(http::API_KEY_PREFIX).unwrap_or("");
            if suffix.is_empty()
                || !suffix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(bad(format!(
                    "'apiKeyEnv' must name a variable {}<NAME> (letters, digits, _): \
                     the operator puts model keys there, and nothing else of the proxy's \
                     environment can be sent",
                    http::API_KEY_PREFIX
                )));
            }
        }
        match def.kind {
            Kind::Vector if def.dimensions == 0 => Err(bad(
                "a 'vector' model needs 'dimensions' (the length of the stored vectors)",
            )),
            Kind::Http if def.url.is_none() => Err(bad("an 'http' model needs 'url'")),
            Kind::Http if def.remote_model.is_none() => Err(bad(
                "an 'http' model needs 'model' (the endpoint's model name)",
            )),
            Kind::Text if def.url.is_some() => Err(bad("'url' belongs to 'http' models")),
            Kind::Vector | Kind::Text if def.tls_ca_file.is_some() => {
                Err(bad("'tlsCAFile' belongs to 'http' models"))
            }
            Kind::Vector | Kind::Http if def.path.is_some() => {
                Err(bad("'path' belongs to 'text' models"))
            }
            Kind::Vector | Kind::Http if def.lineage.is_some() => {
                Err(bad("only 'text' models have fine-tuned versions"))
            }
            _ => Ok(def),
        }
    }

    /// The stored and listed form.
    pub fn to_doc(&self) -> RawDocumentBuf {
        let mut doc = rawdoc! { "_id": self.name.as_str(), "kind": self.kind.name() };
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                doc.append(k, v.as_str());
            }
        };
        put("path", &self.path);
        put("url", &self.url);
        put("model", &self.remote_model);
        put("apiKeyEnv", &self.api_key_env);
        put("tlsCAFile", &self.tls_ca_file);
        // All bounded well below i32::MAX by `parse`.
        doc.append("dimensions", self.dimensions as i32);
        if self.kind == Kind::Http {
            doc.append("batchSize", self.batch_size as i32);
            doc.append("timeoutMS", self.timeout_ms as i32);
            doc.append("retries", self.retries as i32);
        }
        if let Some(l) = &self.lineage {
            doc.append("parent", l.parent.as_str());
            doc.append(
                "trainedBy",
                rawdoc! { "indexId": l.index_id.as_str(), "index": l.index.as_str() },
            );
            doc.append("training", l.training.clone());
            let mut files = RawDocumentBuf::new();
            for (name, hash) in &l.files {
                files.append(name.as_str(), hash.as_str());
            }
            doc.append("files", files);
        }
        doc
    }
}

/// One encoded value.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub vector: Vec<f32>,
    /// The text was longer than the model reads and was cut.
    pub truncated: bool,
}

/// Why a model produced nothing for a whole call (the endpoint is down, the
/// weights are unreadable): the inputs are retried later, never dropped.
#[derive(Debug, Clone)]
pub struct ModelFailure(pub String);

impl std::fmt::Display for ModelFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

enum Backend {
    Vector,
    Text(Arc<BertEncoder>),
    Http(http::Client),
}

/// A loaded model.
pub struct Model {
    pub def: ModelDef,
    backend: Backend,
}

impl Model {
    pub fn name(&self) -> &str {
        &self.def.name
    }

    pub fn dimensions(&self) -> usize {
        self.def.dimensions
    }

    /// The BERT encoder of a `text` model.
    pub fn text_encoder(&self) -> Option<&Arc<BertEncoder>> {
        match &self.backend {
            Backend::Text(encoder) => Some(encoder),
            _ => None,
        }
    }

    /// Encodes values: per value, a vector or why this value cannot be
    /// encoded (not text, wrong length...). `Err` when the model itself
    /// failed and nothing was encoded.
    pub fn encode(
        &self,
        values: &[RawBsonRef<'_>],
    ) -> Result<Vec<Result<Encoded, String>>, ModelFailure> {
        let dims = self.def.dimensions;
        if let Backend::Vector = self.backend {
            return Ok(values
                .iter()
                .map(|v| {
                    crate::index::vector::read_vector(Some(*v), dims)
                        .map(|vector| Encoded {
                            vector,
                            truncated: false,
                        })
                        .map_err(|e| e.to_string())
                })
                .collect());
        }
        let mut out: Vec<Result<Encoded, String>> = Vec::with_capacity(values.len());
        let joined: Vec<Option<String>> = values
            .iter()
            .map(|v| match v {
                RawBsonRef::Array(a) => joined_text(a),
                _ => None,
            })
            .collect();
        let mut texts = Vec::new();
        let mut slots = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match v {
                RawBsonRef::String(s) => {
                    texts.push(*s);
                    slots.push(i);
                    out.push(Err(String::new()));
                }
                RawBsonRef::Array(_) if joined[i].is_some() => {
                    texts.push(joined[i].as_deref().unwrap_or(""));
                    slots.push(i);
                    out.push(Err(String::new()));
                }
                other => out.push(Err(format!(
                    "model '{}' encodes text, not {}",
                    self.def.name,
                    type_name(*other)
                ))),
            }
        }
        if texts.is_empty() {
            return Ok(out);
        }
        let encoded = match &self.backend {
            Backend::Text(encoder) => encoder
                .encode(&texts, self.def.batch_size.max(1))
                .map_err(ModelFailure)?
                .into_iter()
                .map(|e| Encoded {
                    vector: e.vector,
                    truncated: e.truncated,
                })
                .collect::<Vec<_>>(),
            Backend::Http(client) => client
                .embed(&texts)?
                .into_iter()
                .map(|vector| Encoded {
                    vector,
                    truncated: false,
                })
                .collect(),
            Backend::Vector => unreachable!("handled above"),
        };
        for (slot, e) in slots.into_iter().zip(encoded) {
            out[slot] = if e.vector.len() == dims {
                Ok(e)
            } else {
                Err(format!(
                    "model '{}' returned {} dimensions, expected {dims}",
                    self.def.name,
                    e.vector.len()
                ))
            };
        }
        Ok(out)
    }
}

/// An array of strings as the one text a `text` model reads: its
/// elements joined with spaces. `None` when it is empty or holds anything
/// but strings.
pub fn joined_text(array: &bson::RawArray) -> Option<String> {
    let parts: Option<Vec<&str>> = array
        .into_iter()
        .map(|e| e.ok().and_then(|e| e.as_str()))
        .collect();
    parts.filter(|p| !p.is_empty()).map(|p| p.join(" "))
}

fn type_name(v: RawBsonRef<'_>) -> &'static str {
    match v {
        RawBsonRef::Double(_) | RawBsonRef::Int32(_) | RawBsonRef::Int64(_) => "a number",
        RawBsonRef::Array(_) => "an array",
        RawBsonRef::Document(_) => "a document",
        RawBsonRef::Binary(_) => "binary data",
        RawBsonRef::Boolean(_) => "a boolean",
        RawBsonRef::Null => "null",
        _ => "a non-text value",
    }
}

/// Every model this proxy knows, by name, and the loaded encoders (shared
/// between models on the same directory).
#[derive(Default)]
pub struct Models {
    by_name: RwLock<HashMap<String, Arc<Model>>>,
    /// By canonical directory, or `version:<name>` for fine-tuned versions.
    encoders: Mutex<HashMap<String, Arc<BertEncoder>>>,
}

impl Models {
    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        self.by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Model>> {
        let mut all: Vec<_> = self
            .by_name
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        all
    }

    pub fn insert(&self, model: Arc<Model>) {
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(model.def.name.clone(), model);
    }

    /// Forgets model `name` (and, for a fine-tuned version, its cached
    /// encoder, so a later version of that name loads its own weights).
    pub fn remove(&self, name: &str) -> Option<Arc<Model>> {
        self.encoders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("version:{name}"));
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    /// Loads a model, probing its output size when the definition does not
    /// give it. Blocking (reads weights, may call the endpoint).
    ///
    /// What the definition may reach is checked against `access` (the
    /// operator's `--allow-model-host` and `--allow-model-dir`): a `path`
    /// outside the allowed directories (the default model's is always
    /// allowed), an `http` host not allowed. Errors are `BadValue`; so is a
    /// model whose output size exceeds [`MAX_DIMENSIONS`], whatever a probe
    /// or its weights say.
    pub fn load(
        &self,
        mut def: ModelDef,
        default_dir: &Path,
        access: &crate::config::ModelAccess,
    ) -> Result<Model, Error> {
        let backend = match def.kind {
            Kind::Vector => Backend::Vector,
            Kind::Text if def.lineage.is_some() => {
                return Err(Error::internal(format!(
                    "model '{}' is a fine-tuned version: load it from its files",
                    def.name
                )))
            }
            Kind::Text => {
                let dir = match &def.path {
                    Some(path) => access
                        .path_under(path, Some(default_dir), "'path'")
                        .map_err(bad)?,
                    None => default_dir.to_path_buf(),
                };
                let encoder = self.encoder(&dir).map_err(|e| {
                    let hint = if def.path.is_none() {
                        " (the default model: run scripts/fetch-model, or set --default-model)"
                    } else {
                        ""
                    };
                    bad(format!(
                        "cannot load text model '{}' from {}{hint}: {e}",
                        def.name,
                        dir.display()
                    ))
                })?;
                let dims = encoder.dimensions();
                if def.dimensions != 0 && def.dimensions != dims {
                    return Err(bad(format!(
                        "model '{}' outputs {dims} dimensions, not the {} given",
                        def.name, def.dimensions
                    )));
                }
                def.dimensions = dims;
                Backend::Text(encoder)
            }
            Kind::Http => {
                let client = http::Client::new(&def, access).map_err(bad)?;
                if def.dimensions == 0 {
                    let probe = client.embed(&["dimension probe"]).map_err(|e| {
                        bad(format!(
                            "model '{}': cannot reach {} to learn its output size ({e}); \
                             give 'dimensions' to register it while the endpoint is down",
                            def.name,
                            def.url.as_deref().unwrap_or("")
                        ))
                    })?;
                    def.dimensions = probe.first().map_or(0, Vec::len);
                    if def.dimensions == 0 {
                        return Err(bad(format!(
                            "model '{}' returned an empty embedding",
                            def.name
                        )));
                    }
                }
                Backend::Http(client)
            }
        };
        if def.dimensions > MAX_DIMENSIONS {
            return Err(bad(format!(
                "model '{}' outputs {} dimensions; at most {MAX_DIMENSIONS} are supported",
                def.name, def.dimensions
            )));
        }
        Ok(Model { def, backend })
    }

    /// Loads a fine-tuned model version (`def.lineage` set) from its
    /// files. Blocking. Errors: files that do not make a BERT model, or
    /// one whose output size is not the version's.
    pub fn load_version(
        &self,
        mut def: ModelDef,
        files: &bert::ModelFiles,
    ) -> Result<Model, Error> {
        let key = format!("version:{}", def.name);
        let encoder = self
            .cached(&key, || BertEncoder::from_files(files))
            .map_err(|e| bad(format!("cannot load model version '{}': {e}", def.name)))?;
        let dims = encoder.dimensions();
        if def.dimensions != 0 && def.dimensions != dims {
            return Err(bad(format!(
                "model version '{}' outputs {dims} dimensions, not the {} stored",
                def.name, def.dimensions
            )));
        }
        def.dimensions = dims;
        Ok(Model {
            def,
            backend: Backend::Text(encoder),
        })
    }

    fn encoder(&self, dir: &Path) -> Result<Arc<BertEncoder>, String> {
        let key = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        self.cached(&key.display().to_string(), || BertEncoder::load(dir))
    }

    /// The encoder cached under `key`, or the one `load` makes (then
    /// cached).
    fn cached(
        &self,
        key: &str,
        load: impl FnOnce() -> Result<BertEncoder, String>,
    ) -> Result<Arc<BertEncoder>, String> {
        if let Some(e) = self
            .encoders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
        {
            return Ok(e.clone());
        }
        let encoder = Arc::new(load()?);
        self.encoders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), encoder.clone());
        Ok(encoder)
    }
}

/// The name under which the proxy's default text model (`--default-model`)
/// is registered, on first use, for `autoEmbed` fields that name no model.
pub const DEFAULT_MODEL: &str = "default";

/// One (model, key) pair of a semantic index: `model` encodes `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelKey {
    pub model: String,
    pub key: String,
}

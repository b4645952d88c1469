//! The catalog of search indexes this proxy serves, by namespace: their
//! definitions (with the models that encode them), status, build progress,
//! upkeep state and vectors (`vectors::Vectors`: an engine from `index`
//! behind an `_id`-keyed layer; nothing outside this module takes its lock). Synchronous: callers
//! put CPU work on a blocking thread and I/O elsewhere.

use crate::error::{Code, Error};
use crate::index::hnsw::HnswParams;
use crate::index::ids::IdSet;
use crate::index::vector::OwnedVector;
use crate::index::{Similarity, VectorRef};
use bson::RawDocumentBuf;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub mod recall;
pub mod vectors;
pub use vectors::{Searched, Vectors};

use crate::index::text::{TextChange, TextIndex};

/// What a `vectorSearch` index definition asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    /// Dotted path of the vector field.
    pub path: String,
    pub dims: usize,
    pub similarity: Similarity,
    pub hnsw: HnswParams,
    /// Paths declared as `filter` fields (any MQL filter works; these are
    /// reported back as declared).
    pub filters: Vec<String>,
    /// Semantic indexes: `models[i]` encodes `keys[i]`; the index holds the
    /// first model's output on the first key (`path`). Empty for an Atlas
    /// index, whose documents carry the vector at `path`.
    pub models: Vec<crate::models::ModelKey>,
    /// Write each output back to the document at `_outputs.<key>.<model>`.
    pub write_outputs: bool,
    /// Train an adapter once the index is built (semantic indexes only).
    pub train: Option<crate::train::TrainSpec>,
    /// A full-text (`search`) index: what it indexes. The vector fields
    /// above are unused then.
    pub text: Option<crate::index::text::TextSpec>,
    /// `targetRecall`: queries that name no `numCandidates` search as
    /// broadly as measured recall@10 says this needs (see `recall`).
    pub target_recall: Option<f64>,
    /// Atlas's `quantization` (`scalar`, `binary`; `None` for `none`), with
    /// likewise's `oversampling` (candidates rescored per result; 0: the
    /// default).
    pub quantization: Option<(crate::index::Quantization, usize)>,
}

impl IndexSpec {
    /// An Atlas vector field's spec: `dims`-long vectors at `path`
    /// compared by `similarity` (no filters, models or training yet).
    pub fn vector(
        path: String,
        dims: usize,
        similarity: Similarity,
        hnsw: HnswParams,
    ) -> IndexSpec {
        IndexSpec {
            path,
            dims,
            similarity,
            hnsw,
            filters: Vec::new(),
            models: Vec::new(),
            write_outputs: false,
            train: None,
            text: None,
            target_recall: None,
            quantization: None,
        }
    }

    /// A full-text index's spec.
    pub fn full_text(text: crate::index::text::TextSpec) -> IndexSpec {
        IndexSpec {
            text: Some(text),
            ..IndexSpec::vector(String::new(), 0, Similarity::Cosine, HnswParams::default())
        }
    }

    /// The `projection` that reads what this index needs of a document,
    /// or `None` for whole documents.
    pub fn projection(&self) -> Option<RawDocumentBuf> {
        let mut out = RawDocumentBuf::new();
        out.append("_id", 1);
        match &self.text {
            None => out.append(self.path.as_str(), 1),
            Some(text) => {
                for path in text.projection()? {
                    out.append(path, 1);
                }
            }
        }
        Some(out)
    }

    /// Looks up the models a spec names and fixes its dimensions: every model
    /// of one index must output the same size (they share one vector space).
    pub fn resolve_models(
        &mut self,
        models: &crate::models::Models,
    ) -> Result<Vec<Arc<crate::models::Model>>, Error> {
        let spec = self;
        let mut out = Vec::with_capacity(spec.models.len());
        for mk in &spec.models {
            let model = models.get(&mk.model).ok_or_else(|| {
                Error::client(
                    Code::BAD_VALUE,
                    format!(
                        "unknown model '{}': register it with createModel first (an autoEmbed \
                         field without 'model' uses the default text model)",
                        mk.model
                    ),
                )
            })?;
            if let Some(first) = out.first() {
                let first: &Arc<crate::models::Model> = first;
                if first.dimensions() != model.dimensions() {
                    return Err(Error::client(Code::BAD_VALUE, format!(
                        "model '{}' outputs {} dimensions but '{}' outputs {}: one index's models must share a vector space",
                        model.name(),
                        model.dimensions(),
                        first.name(),
                        first.dimensions()
                    )));
                }
            }
            out.push(model);
        }
        if let Some(first) = out.first() {
            spec.dims = first.dimensions();
        }
        if let Some(t) = spec.train.as_ref().filter(|t| t.fine_tune.is_some()) {
            // One encoder is fine-tuned, for both sides of each pair.
            let query = match t.splitter {
                crate::train::Splitter::Fields { query } => query,
                crate::train::Splitter::ArrayElement => 0,
            };
            let (item, asked) = (&out[0], &out[query]);
            let Some(encoder) = item.text_encoder() else {
                return Err(Error::client(
                    Code::BAD_VALUE,
                    format!(
                        "'train.fineTune' needs a 'text' model; '{}' is a '{}' model",
                        item.name(),
                        item.def.kind.name()
                    ),
                ));
            };
            let layers = t.fine_tune.and_then(|f| f.layers).unwrap_or(0);
            if layers > encoder.layers() {
                return Err(Error::client(
                    Code::BAD_VALUE,
                    format!(
                        "'train.layers' is {layers} but model '{}' has {} layers",
                        item.name(),
                        encoder.layers()
                    ),
                ));
            }
            if item.name() != asked.name() {
                return Err(Error::client(
                    Code::BAD_VALUE,
                    format!(
                        "'train.fineTune' fine-tunes one 'text' model that encodes both queries \
                         and items: the item key's model '{}' and the query key's '{}' must be \
                         that model",
                        item.name(),
                        asked.name()
                    ),
                ));
            }
        }
        Ok(out)
    }
}

/// Atlas's index states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Building,
    Ready,
    /// Queryable (with the untrained or previous adapter) while an adapter
    /// is trained.
    Training,
    /// Queryable, but not following its collection's changes (Atlas's
    /// `STALE`): the change stream is down and being reopened; writes
    /// through the proxy still reach the index, others will once the
    /// stream resumes.
    Stale,
    Failed,
    Deleting,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Building => "BUILDING",
            Status::Ready => "READY",
            Status::Training => "TRAINING",
            Status::Stale => "STALE",
            Status::Failed => "FAILED",
            Status::Deleting => "DELETING",
        }
    }
}

/// One document's new state in an index ([`SearchIndex::apply_changes`]).
pub enum Change<'a> {
    /// `id` has this vector (`f32` prepared, see `Similarity::prepare`;
    /// int8 and packed bits as they came), encoded from content with this
    /// hash (model indexes).
    Set {
        id: bson::RawBsonRef<'a>,
        vector: OwnedVector,
        content: Option<u64>,
    },
    /// `id` has no usable vector (deleted, or its field missing or wrong),
    /// or, for a full-text index, no longer exists.
    Remove(bson::RawBsonRef<'a>),
    /// `id`'s whole document (or the paths a full-text index reads).
    Document(bson::RawBsonRef<'a>, &'a bson::RawDocument),
}

pub struct SearchIndex {
    pub id: String,
    pub db: String,
    pub collection: String,
    pub name: String,
    /// Which vector field of its definition this is (0 for the first): an
    /// index of several vector fields is served as one `SearchIndex` per
    /// field, sharing `id`, `name` and `definition` (see
    /// `search_index::parse_definition`).
    pub part: usize,
    /// The definition as the client gave it (`latestDefinition`).
    pub definition: RawDocumentBuf,
    pub spec: IndexSpec,
    status: Mutex<(Status, Option<String>)>,
    /// Why the index is not following its collection, while it is not
    /// (reported as [`Status::Stale`] over READY or TRAINING).
    stale: Mutex<Option<String>>,
    /// Documents scanned so far by the build, and the collection's size.
    pub scanned: AtomicU64,
    pub total: AtomicU64,
    /// Documents whose vector field was missing, malformed or the wrong size.
    pub skipped: AtomicU64,
    /// Changes applied from the upstream's change stream.
    pub changes_applied: AtomicU64,
    /// `targetRecall`'s measurements and the breadth in use.
    pub recall: Mutex<recall::RecallTuner>,
    /// Where the change stream has got to (for snapshots and resuming).
    resume_token: Mutex<Option<RawDocumentBuf>>,
    /// Bumped by every change to the data; compared with the last saved.
    generation: AtomicU64,
    saved_generation: AtomicU64,
    /// The data came from a snapshot rather than a scan.
    pub restored: AtomicBool,
    /// Held while changes are applied, by write-through and by the change
    /// stream alike, so that the stream's check of [`SearchIndex::written`]
    /// and its apply are one step against the proxy's own.
    pub apply_lock: Mutex<()>,
    /// Documents written through this proxy whose change events the
    /// stream has not passed yet: their canonical `_id` (see
    /// [`id_key`]) and the write's `operationTime`. A change event no
    /// newer than it would bring back a state the write replaced.
    written: Notes,
    /// Documents the change stream applied while a write through this
    /// proxy was in flight ([`SearchIndex::write_in_flight`]): their
    /// canonical `_id` and the event's cluster time. That write's state,
    /// read before the event, is older and must not replace it.
    streamed: Notes,
    /// Writes through this proxy from before they are sent until they are
    /// applied ([`InFlight`]).
    in_flight: AtomicU64,
    /// Ids whose vectors changed, kept only while something (a
    /// neighbourhood) listens, and drained by it.
    changed: Mutex<Option<IdSet>>,
    retired: AtomicBool,
    /// The vectors, by `_id`: reached only through the catalog methods
    /// below, the one place their lock is taken.
    data: RwLock<Vectors>,
    /// A full-text index's engine (`spec.text`); `None` for vector indexes
    /// (and for a full-text index whose engine failed to start: FAILED).
    text: Option<TextIndex>,
    /// Why writes were lost since the last rebuild (the full-text engine
    /// refused them): upkeep rebuilds the index when it sees this.
    lost_writes: Mutex<Option<String>>,
    /// The loaded models of `spec.models`, in order (empty for Atlas indexes).
    pub encoders: Vec<Arc<crate::models::Model>>,
    /// Documents whose encoding failed (a model was unavailable): retried
    /// until they are encoded; never dropped.
    pending: Mutex<Pending>,
    /// Model outputs waiting to be written back (`writeOutputs`).
    outputs: Mutex<Vec<(bson::RawBson, Vec<f32>)>>,
    /// Wakes the writer of `outputs` and the retrier of `pending`.
    pub work: tokio::sync::Notify,
    /// The trained adapter, once there is one.
    adapter: RwLock<Option<Arc<crate::train::Adapter>>>,
    /// Training progress and results, for the listing.
    pub training: Mutex<Training>,
    /// Run each time the index becomes READY, until cleared (a staged
    /// definition's promotion, which waits for every part).
    on_ready: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    /// `latestDefinitionVersion`: 0 when created, one more per
    /// `updateSearchIndex`, and when that version was made.
    pub definition_version: (i64, bson::DateTime),
}

/// Documents waiting for an encoding retry, and those being retried now:
/// a document counts as pending until its retry has put it in the index,
/// so a count of 0 means every write is searchable.
#[derive(Default)]
struct Pending {
    waiting: IdSet,
    retrying: IdSet,
}

/// What training has done so far.
#[derive(Debug, Clone, Default)]
pub struct Training {
    pub epochs: Vec<crate::train::Epoch>,
    pub planned_epochs: usize,
    pub train_pairs: usize,
    pub valid_pairs: usize,
    pub before: Option<Vec<(String, f64)>>,
    pub after: Option<Vec<(String, f64)>>,
    pub error: Option<String>,
    pub trained_at: Option<bson::DateTime>,
    /// Fine-tuning (`train.fineTune`): where a run stands, or what it made.
    pub fine_tune: Option<FineTuneState>,
}

/// Where fine-tuning an index's text model stands.
#[derive(Debug, Clone, Default)]
pub struct FineTuneState {
    /// `measuring` while the untrained model and the comparison adapter
    /// are measured, `fineTuning` while weights train, `reEncoding` while
    /// the new generation is built with the new version, `done` once it
    /// serves.
    pub phase: &'static str,
    /// The epoch under way (1-based; 0 before the first step).
    pub epoch: usize,
    /// Steps taken and planned, over all epochs.
    pub step: usize,
    pub steps: usize,
    /// The last step's loss while training; the last epoch's mean once
    /// done.
    pub loss: f32,
    /// Training pairs per second so far.
    pub pairs_per_s: f64,
    /// Seconds left at that rate.
    pub eta_s: f64,
    /// The model version the run made, once stored.
    pub version: Option<String>,
    /// Held-out metrics of an adapter trained on the untrained model's
    /// outputs, for comparison.
    pub adapter: Option<Vec<(String, f64)>>,
    /// An adapter on the fine-tuned outputs (`adapt` given too) has been
    /// started for this generation.
    pub adapter_started: bool,
}

impl SearchIndex {
    pub fn new(
        id: String,
        db: &str,
        collection: &str,
        name: &str,
        definition: RawDocumentBuf,
        spec: IndexSpec,
    ) -> SearchIndex {
        let data = Vectors::empty(&spec);
        let mut index = SearchIndex {
            id,
            db: db.to_string(),
            collection: collection.to_string(),
            name: name.to_string(),
            part: 0,
            definition,
            spec,
            status: Mutex::new((Status::Pending, None)),
            stale: Mutex::new(None),
            scanned: AtomicU64::new(0),
            total: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            changes_applied: AtomicU64::new(0),
            recall: Mutex::new(recall::RecallTuner::default()),
            resume_token: Mutex::new(None),
            generation: AtomicU64::new(0),
            saved_generation: AtomicU64::new(0),
            restored: AtomicBool::new(false),
            apply_lock: Mutex::new(()),
            written: Notes::default(),
            streamed: Notes::default(),
            in_flight: AtomicU64::new(0),
            changed: Mutex::new(None),
            retired: AtomicBool::new(false),
            data: RwLock::new(data),
            text: None,
            lost_writes: Mutex::new(None),
            encoders: Vec::new(),
            pending: Mutex::new(Pending::default()),
            outputs: Mutex::new(Vec::new()),
            work: tokio::sync::Notify::new(),
            adapter: RwLock::new(None),
            training: Mutex::new(Training::default()),
            on_ready: Mutex::new(None),
            definition_version: (0, bson::DateTime::now()),
        };
        if let Some(text) = &index.spec.text {
            match TextIndex::new(text.clone()) {
                Ok(engine) => index.text = Some(engine),
                Err(why) => index.set_status(Status::Failed, Some(why)),
            }
        }
        index
    }

    /// The parts of one index: one per vector field of `definition`, from
    /// its `specs` in order, each with its loaded models, all at definition
    /// version `version` (`latestDefinitionVersion`).
    pub fn parts(
        id: &str,
        db: &str,
        collection: &str,
        name: &str,
        definition: &RawDocumentBuf,
        specs: Vec<(IndexSpec, Vec<Arc<crate::models::Model>>)>,
        version: (i64, bson::DateTime),
    ) -> Vec<SearchIndex> {
        specs
            .into_iter()
            .enumerate()
            .map(|(part, (spec, encoders))| {
                SearchIndex::new(
                    id.to_string(),
                    db,
                    collection,
                    name,
                    definition.clone(),
                    spec,
                )
                .with_encoders(encoders)
                .with_part(part)
                .with_definition_version(version.0, version.1)
            })
            .collect()
    }

    /// Marks this as the `part`th vector field of its definition.
    pub fn with_part(mut self, part: usize) -> Self {
        self.part = part;
        self
    }

    /// Sets `latestDefinitionVersion`.
    pub fn with_definition_version(mut self, version: i64, created: bson::DateTime) -> Self {
        self.definition_version = (version, created);
        self
    }

    /// Runs `f` each time the index becomes READY (and at once if it is),
    /// until [`SearchIndex::clear_on_ready`].
    pub fn on_ready(&self, f: impl Fn() + Send + Sync + 'static) {
        *self.on_ready.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(f));
        if self.status().0 == Status::Ready {
            self.run_on_ready();
        }
    }

    /// Stops running the `on_ready` callback.
    pub fn clear_on_ready(&self) {
        *self.on_ready.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn run_on_ready(&self) {
        // Called without the lock held: the callback may clear itself.
        let f = self
            .on_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(f) = f {
            f();
        }
    }

    pub fn adapter(&self) -> Option<Arc<crate::train::Adapter>> {
        self.adapter
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_adapter(&self, adapter: Option<Arc<crate::train::Adapter>>) {
        *self.adapter.write().unwrap_or_else(|e| e.into_inner()) = adapter;
    }

    pub fn training(&self) -> std::sync::MutexGuard<'_, Training> {
        self.training.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches the loaded models the spec names (see `IndexSpec::resolve_models`).
    pub fn with_encoders(mut self, encoders: Vec<Arc<crate::models::Model>>) -> SearchIndex {
        self.encoders = encoders;
        self
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues documents whose encoding failed, for a retry.
    pub fn add_pending<'a>(&self, ids: impl IntoIterator<Item = bson::RawBsonRef<'a>>) {
        let mut pending = self.pending();
        for id in ids {
            pending.waiting.add(id);
        }
        drop(pending);
        self.work.notify_one();
    }

    /// The documents waiting for an encoding retry, taken to be retried:
    /// they still count as pending until `retried`.
    pub fn take_pending(&self) -> IdSet {
        let mut pending = self.pending();
        let taken = std::mem::take(&mut pending.waiting);
        pending.retrying = IdSet::from_ids(&taken);
        taken
    }

    /// The retry of what `take_pending` took is over: whatever failed
    /// again has been queued anew by then.
    pub fn retried(&self) {
        self.pending().retrying = IdSet::default();
    }

    /// How many documents wait for an encoding retry or are being retried.
    pub fn pending_count(&self) -> usize {
        let pending = self.pending();
        let again = pending
            .retrying
            .ids
            .iter()
            .filter(|id| !pending.waiting.contains(id.as_raw_bson_ref()))
            .count();
        pending.waiting.ids.len() + again
    }

    /// Queues model outputs to be written back into their documents.
    pub fn push_outputs(&self, outputs: Vec<(bson::RawBson, Vec<f32>)>) {
        if outputs.is_empty() {
            return;
        }
        self.outputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(outputs);
        self.work.notify_one();
    }

    /// The outputs waiting to be written back, taken.
    pub fn take_outputs(&self) -> Vec<(bson::RawBson, Vec<f32>)> {
        std::mem::take(&mut *self.outputs.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Empties the index for a rebuild from scratch.
    pub fn reset(&self) {
        *self.data.write().unwrap_or_else(|e| e.into_inner()) = Vectors::empty(&self.spec);
        if let Some(Err(why)) = self.text.as_ref().map(TextIndex::clear) {
            self.set_stale(Some(why));
        }
        for counter in [
            &self.scanned,
            &self.total,
            &self.skipped,
            &self.changes_applied,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.set_resume_token(None);
        self.restored.store(false, Ordering::Relaxed);
        self.touch();
    }

    /// The `_id`s of every indexed document, now.
    pub fn live_ids(&self) -> IdSet {
        match &self.text {
            Some(text) => text.ids(),
            None => self.read_vectors(Vectors::ids),
        }
    }

    // The `_id`-keyed catalog methods. Each takes the vectors' lock for
    // one call and returns owned values, so a remote engine could serve
    // the same calls (ARCHITECTURE.md, "Another engine"). CPU work: callers
    // run them on blocking threads.

    /// Applies documents' new states, in order, under one write lock;
    /// records each `_id` whose vector changed (`note_changed`). Returns
    /// how many changed.
    pub fn apply_changes(&self, changes: &[Change<'_>]) -> usize {
        self.touch();
        if self.spec.text.is_some() {
            return match &self.text {
                Some(text) => self.apply_text(text, changes),
                None => 0, // the engine failed to start: FAILED
            };
        }
        // A build uses every core the machine gives this process.
        let threads = crate::cores();
        let changed: Vec<bson::RawBsonRef<'_>> = self.write_vectors(|v| {
            let mut changed = Vec::new();
            // Runs of sets go in together (a scan batch: in parallel).
            for run in changes
                .chunk_by(|a, b| matches!(a, Change::Set { .. }) == matches!(b, Change::Set { .. }))
            {
                let sets: Vec<_> = run
                    .iter()
                    .filter_map(|change| match change {
                        Change::Set {
                            id,
                            vector,
                            content,
                        } => Some((*id, vector.as_ref(), *content)),
                        _ => None,
                    })
                    .collect();
                if !sets.is_empty() {
                    let done = v.upsert_many(&sets, threads);
                    changed.extend(sets.iter().zip(done).filter(|(_, c)| *c).map(|(s, _)| s.0));
                    continue;
                }
                for change in run {
                    match change {
                        Change::Remove(id) if v.remove(*id) => changed.push(*id),
                        // Only full-text indexes take whole documents.
                        _ => {}
                    }
                }
            }
            changed
        });
        for id in &changed {
            self.note_changed(*id);
        }
        changed.len()
    }

    fn apply_text(&self, text: &TextIndex, changes: &[Change<'_>]) -> usize {
        let changes: Vec<TextChange<'_>> = changes
            .iter()
            .filter_map(|change| match change {
                Change::Document(id, doc) => Some(TextChange::Set(*id, doc)),
                Change::Remove(id) => Some(TextChange::Remove(*id)),
                Change::Set { .. } => None,
            })
            .collect();
        match text.apply(&changes) {
            Ok(()) => changes.len(),
            Err(why) => {
                // The engine refused a write: the index no longer matches
                // its collection; upkeep rebuilds it from the upstream.
                tracing::warn!(index = %self.name, why, "a full-text write failed; rebuilding");
                *self.lost_writes.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                0
            }
        }
    }

    /// Why writes were lost since the last call, taken (see `lost_writes`).
    pub fn take_lost_writes(&self) -> Option<String> {
        self.lost_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Readies the engine for queries after a build: the full-text
    /// engine merges its segments into one part per core
    /// ([`TextIndex::merge_segments`]); vector engines need nothing. CPU
    /// and disk work: a blocking thread. Errors: the engine's, as text.
    pub fn merge_segments(&self) -> Result<(), String> {
        self.text.as_ref().map_or(Ok(()), TextIndex::merge_segments)
    }

    /// The full-text engine, for a `search` index.
    pub fn text(&self) -> Option<&TextIndex> {
        self.text.as_ref()
    }

    /// Compacts the vectors when dead slots outnumber live ones (see
    /// [`Vectors::compact_if_needed`]); the live count when it did.
    pub fn compact_if_needed(&self) -> Option<usize> {
        self.write_vectors(|v| v.compact_if_needed(&self.spec).then(|| v.len()))
    }

    /// Live vectors (documents, for a full-text index).
    pub fn vector_count(&self) -> usize {
        match &self.text {
            Some(text) => text.len(),
            None => self.read_vectors(Vectors::len),
        }
    }

    /// The breadth a query naming no `numCandidates` uses under
    /// `targetRecall` (the measured one, at least `limit`; `default` until
    /// the first measurement), and whether recording `query` made a
    /// measurement due (the caller runs [`SearchIndex::measure_recall`] on
    /// a blocking thread).
    pub fn auto_breadth(&self, query: &OwnedVector, limit: usize, default: usize) -> (usize, bool) {
        let mut tuner = self.recall.lock().unwrap_or_else(|e| e.into_inner());
        let due = tuner.record(query);
        let breadth = tuner.tuned.map_or(default, |(b, _)| b).max(limit);
        (breadth, due)
    }

    /// Measures recall@10 on the sampled queries and keeps the breadth
    /// meeting `targetRecall` (CPU work: a blocking thread).
    pub fn measure_recall(&self) {
        let Some(target) = self.spec.target_recall else {
            return;
        };
        let samples = self
            .recall
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .samples();
        let tuned = recall::measure(&samples, target, |q, k, breadth, exact| {
            self.read_vectors(|v| recall::search_in(v, q, k, breadth, exact))
        });
        if let Some((breadth, measured)) = tuned {
            tracing::info!(index = %self.name, breadth, measured, target, "targetRecall: breadth measured");
        }
        self.recall
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finish(tuned);
    }

    /// The breadth in use and its measured recall@10, once measured.
    pub fn tuned_recall(&self) -> Option<(usize, f64)> {
        self.recall.lock().unwrap_or_else(|e| e.into_inner()).tuned
    }

    /// Slots held, live and retired.
    pub fn slot_count(&self) -> usize {
        self.read_vectors(Vectors::slots)
    }

    /// Bytes the live vectors take as stored: 4 per dimension for `f32`,
    /// 1 for int8, an eighth for packed bits (graph links not counted).
    pub fn vector_bytes(&self) -> usize {
        self.read_vectors(|v| v.len() * v.row_bytes())
    }

    /// `id`'s stored (prepared) vector.
    pub fn stored_vector(&self, id: bson::RawBsonRef<'_>) -> Option<Vec<f32>> {
        self.stored_vectors([id]).pop().flatten()
    }

    /// The stored vector of each `_id`, in order (`None` where it has none).
    pub fn stored_vectors<'a>(
        &self,
        ids: impl IntoIterator<Item = bson::RawBsonRef<'a>>,
    ) -> Vec<Option<Vec<f32>>> {
        self.read_vectors(|v| {
            ids.into_iter()
                .map(|id| v.vector(id).map(|v| v.into_owned()))
                .collect()
        })
    }

    /// The content hash each `_id`'s vector was encoded from, in order.
    pub fn contents<'a>(
        &self,
        ids: impl IntoIterator<Item = bson::RawBsonRef<'a>>,
    ) -> Vec<Option<u64>> {
        self.read_vectors(|v| ids.into_iter().map(|id| v.content(id)).collect())
    }

    /// [`Vectors::nearest_to`] for each `_id`, in order.
    pub fn nearest_to<'a>(
        &self,
        ids: impl IntoIterator<Item = bson::RawBsonRef<'a>>,
        n: usize,
    ) -> Vec<Option<(Vec<bson::RawBson>, f32)>> {
        self.read_vectors(|v| ids.into_iter().map(|id| v.nearest_to(id, n)).collect())
    }

    /// [`Vectors::search`]: the `k` nearest `_id`s with their distances.
    pub fn search(
        &self,
        query: VectorRef<'_>,
        k: usize,
        num_candidates: usize,
        allowed: Option<&IdSet>,
        exact: bool,
    ) -> Searched {
        self.read_vectors(|v| v.search(query, k, num_candidates, allowed, exact))
    }

    /// Maps every stored vector through `f` into a fresh copy, swapped in
    /// at the end (queries keep the old vectors until then).
    pub fn remap(&self, f: impl Fn(&[f32]) -> Vec<f32>) {
        let fresh = self.read_vectors(|v| v.mapped(&self.spec, f));
        *self.data.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.touch();
    }

    /// Appends the engine's snapshot section to `out`: the vectors'
    /// (`Vectors::save`), or a `search` index's (`TextIndex::save`).
    pub fn save_engine(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        match (&self.spec.text, &self.text) {
            (Some(_), Some(text)) => text.save(out),
            (Some(_), None) => Err(std::io::Error::other("the full-text engine did not start")),
            (None, _) => self.read_vectors(|v| v.save(out)),
        }
    }

    /// Replaces the engine's contents with a snapshot section read from
    /// `r` (`Vectors::load`, `TextIndex::restore`); on error the vectors
    /// are left as they were, and a `search` index needs a `reset`.
    pub fn restore_engine(&self, r: &mut vectors::Reader<'_>) -> std::io::Result<()> {
        match (&self.spec.text, &self.text) {
            (Some(_), Some(text)) => text.restore(r),
            (Some(_), None) => Err(std::io::Error::other("the full-text engine did not start")),
            (None, _) => {
                let restored = Vectors::load(&self.spec, r)?;
                *self.data.write().unwrap_or_else(|e| e.into_inner()) = restored;
                Ok(())
            }
        }
    }

    /// Runs `f` over the vectors under the read lock, for reads that must
    /// see many vectors at once without copying them (neighbourhood
    /// repair). Prefer the owned methods above.
    pub fn read_vectors<R>(&self, f: impl FnOnce(&Vectors) -> R) -> R {
        f(&self.data.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn write_vectors<R>(&self, f: impl FnOnce(&mut Vectors) -> R) -> R {
        f(&mut self.data.write().unwrap_or_else(|e| e.into_inner()))
    }

    /// Starts keeping the ids whose vectors change.
    pub fn listen(&self) {
        let mut changed = self.changed.lock().unwrap_or_else(|e| e.into_inner());
        if changed.is_none() {
            *changed = Some(IdSet::default());
        }
    }

    /// Records that the vector of `id` changed (added, moved or removed).
    pub fn note_changed(&self, id: bson::RawBsonRef<'_>) {
        if let Some(set) = self
            .changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            set.add(id);
        }
    }

    /// Changed ids waiting for `take_changed` (0 when nothing listens).
    pub fn changed_count(&self) -> usize {
        self.changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |set| set.ids.len())
    }

    /// The ids changed since the last call.
    pub fn take_changed(&self) -> IdSet {
        match self
            .changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            Some(set) => std::mem::take(set),
            None => IdSet::default(),
        }
    }

    /// Records that the data changed.
    pub fn touch(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub fn mark_saved(&self, generation: u64) {
        self.saved_generation.store(generation, Ordering::Relaxed);
    }

    /// Changed since the last snapshot.
    pub fn is_dirty(&self) -> bool {
        self.generation() != self.saved_generation.load(Ordering::Relaxed)
    }

    pub fn resume_token(&self) -> Option<RawDocumentBuf> {
        self.resume_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_resume_token(&self, token: Option<RawDocumentBuf>) {
        *self.resume_token.lock().unwrap_or_else(|e| e.into_inner()) = token;
    }

    pub fn namespace(&self) -> String {
        format!("{}.{}", self.db, self.collection)
    }

    /// The status `$listSearchIndexes` reports, and its `statusDetail`:
    /// STALE while a queryable index is not following its collection.
    pub fn status(&self) -> (Status, Option<String>) {
        let status = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if matches!(status.0, Status::Ready | Status::Training) {
            if let Some(why) = self.stale.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                return (Status::Stale, Some(why));
            }
        }
        status
    }

    /// Marks the index as not following its collection (`Some(why)`), or
    /// following again (`None`).
    pub fn set_stale(&self, why: Option<String>) {
        *self.stale.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Notes that the documents `ids` (see [`id_key`]) were written
    /// through this proxy at `at` and applied, when the index follows a
    /// change stream (the notes protect against its late events, and it
    /// alone forgets them). At [`MAX_WRITTEN`] notes they are all
    /// dropped, and the protection with them.
    pub fn note_written(&self, ids: impl IntoIterator<Item = Vec<u8>>, at: bson::Timestamp) {
        if self.resume_token().is_none() {
            return;
        }
        self.written.note(ids.into_iter().map(|id| (id, at)));
    }

    /// Whether the document `id` was noted as written after `at` (another
    /// write through the proxy, applied first, is newer).
    pub fn written_after(&self, id: &[u8], at: bson::Timestamp) -> bool {
        self.written.get(id).is_some_and(|w| later(w, at))
    }

    /// Drops every note: a build's scan may have overwritten what a write
    /// through the proxy applied, and the stream, opened before the scan,
    /// replays that write's events, which must then apply.
    pub fn forget_all_written(&self) {
        self.written.clear();
    }

    /// Whether a change event at `at` for the document `id` (see
    /// [`id_key`]) is no newer than a write through this proxy, which
    /// applied a state at least as recent.
    pub fn written_since(&self, id: &[u8], at: bson::Timestamp) -> bool {
        self.written.get(id).is_some_and(|w| !later(at, w))
    }

    /// Counts a write through this proxy as in flight until the returned
    /// guard drops: take it before the write is sent, drop it once the
    /// write is applied. Meanwhile the change stream notes what it
    /// applies ([`SearchIndex::note_streamed`]).
    pub fn write_in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Notes the change events the stream applied (each document's
    /// canonical `_id` and the event's cluster time), under the index's
    /// `apply_lock`, while a write through this proxy is in flight; with
    /// none in flight every note is dropped: a write sent later is newer
    /// than every event applied before it. At [`MAX_WRITTEN`] notes they
    /// are all dropped, and the protection with them.
    pub fn note_streamed(&self, applied: impl IntoIterator<Item = (Vec<u8>, bson::Timestamp)>) {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            self.streamed.clear();
        } else {
            self.streamed.note(applied);
        }
    }

    /// Whether the change stream applied an event for the document `id`
    /// newer than `at` (a write through the proxy at `at` read an older
    /// state).
    pub fn streamed_after(&self, id: &[u8], at: bson::Timestamp) -> bool {
        self.streamed.get(id).is_some_and(|s| later(s, at))
    }

    /// Forgets the writes the change stream has passed (events up to
    /// `at` all read): no older event for them can come.
    pub fn forget_written_through(&self, at: bson::Timestamp) {
        self.written.keep_after(at);
    }

    pub fn set_status(&self, status: Status, detail: Option<String>) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = (status, detail);
        if status == Status::Ready {
            self.run_on_ready();
        }
    }

    pub fn queryable(&self) -> bool {
        matches!(
            self.status().0,
            Status::Ready | Status::Training | Status::Stale
        )
    }

    /// Marks the index dropped or replaced: its build stops.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.set_status(Status::Deleting, None);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }
}

/// A write through the proxy in flight on an index
/// ([`SearchIndex::write_in_flight`]), until dropped.
pub struct InFlight(Arc<SearchIndex>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A cluster time for each of some documents (by canonical `_id`, see
/// [`id_key`]), the newest noted; at [`MAX_WRITTEN`] documents every
/// note is dropped.
#[derive(Default)]
struct Notes(Mutex<HashMap<Vec<u8>, bson::Timestamp>>);

impl Notes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, bson::Timestamp>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes each document's time, keeping the newer of two.
    fn note(&self, times: impl IntoIterator<Item = (Vec<u8>, bson::Timestamp)>) {
        let mut notes = self.lock();
        if notes.len() >= MAX_WRITTEN {
            notes.clear();
        }
        for (id, at) in times {
            let slot = notes.entry(id).or_insert(at);
            if later(at, *slot) {
                *slot = at;
            }
        }
    }

    fn get(&self, id: &[u8]) -> Option<bson::Timestamp> {
        self.lock().get(id).copied()
    }

    fn clear(&self) {
        self.lock().clear();
    }

    /// Drops the notes no later than `at`.
    fn keep_after(&self, at: bson::Timestamp) {
        self.lock().retain(|_, &mut noted| later(noted, at));
    }
}

/// Most documents a [`Notes`] (write or stream notes) remembers at once.
pub const MAX_WRITTEN: usize = 1 << 20;

/// Whether cluster time `a` comes after `b`.
pub fn later(a: bson::Timestamp, b: bson::Timestamp) -> bool {
    (a.time, a.increment) > (b.time, b.increment)
}

/// A document's `_id` as bytes to compare: a one-field document holding
/// it, in BSON's encoding (the change stream's batches key documents so).
pub fn id_key(id: bson::RawBsonRef<'_>) -> Vec<u8> {
    let mut key = RawDocumentBuf::new();
    key.append("", id.to_raw_bson());
    key.into_bytes()
}

/// A namespace as a pair, never joined into one string: `("a.b", "c")` and
/// `("a", "b.c")` are different collections.
type Namespace = (String, String);

fn namespace(db: &str, collection: &str) -> Namespace {
    (db.to_string(), collection.to_string())
}

/// Why [`Registry::add_bounded`] refused an index.
pub enum Refused {
    /// The namespace already has an index of that name.
    Exists(Arc<SearchIndex>),
    /// The collection already has this many indexes.
    PerCollection(usize),
    /// The proxy already serves this many indexes.
    Total(usize),
}

/// Every search index, by namespace: those serving queries, and those
/// staged by `updateSearchIndex` (building a new definition while the one
/// they replace keeps serving, as Atlas does).
#[derive(Default)]
pub struct Registry {
    by_namespace: RwLock<Indexes>,
}

#[derive(Default)]
struct Indexes {
    serving: HashMap<Namespace, Vec<Arc<SearchIndex>>>,
    staged: HashMap<Namespace, Vec<Arc<SearchIndex>>>,
}

impl Registry {
    /// Every serving index.
    pub fn all(&self) -> Vec<Arc<SearchIndex>> {
        self.read().serving.values().flatten().cloned().collect()
    }

    /// Every index the proxy keeps up to date: serving and staged.
    pub fn all_maintained(&self) -> Vec<Arc<SearchIndex>> {
        let map = self.read();
        map.serving
            .values()
            .chain(map.staged.values())
            .flatten()
            .cloned()
            .collect()
    }

    /// The serving indexes of a collection, in creation order.
    pub fn list(&self, db: &str, collection: &str) -> Vec<Arc<SearchIndex>> {
        self.read()
            .serving
            .get(&namespace(db, collection))
            .cloned()
            .unwrap_or_default()
    }

    /// Every serving index on a collection of database `db`.
    pub fn in_database(&self, db: &str) -> Vec<Arc<SearchIndex>> {
        self.read()
            .serving
            .iter()
            .filter(|((d, _), _)| d == db)
            .flat_map(|(_, list)| list.iter().cloned())
            .collect()
    }

    /// The indexes a write to a collection must keep current: serving and
    /// staged.
    pub fn maintained(&self, db: &str, collection: &str) -> Vec<Arc<SearchIndex>> {
        let map = self.read();
        let key = namespace(db, collection);
        map.serving
            .get(&key)
            .into_iter()
            .chain(map.staged.get(&key))
            .flatten()
            .cloned()
            .collect()
    }

    /// The parts of the definition staged to replace the serving index
    /// `name` (empty when none is).
    pub fn staged(&self, db: &str, collection: &str, name: &str) -> Vec<Arc<SearchIndex>> {
        self.read()
            .staged
            .get(&namespace(db, collection))
            .into_iter()
            .flatten()
            .filter(|i| i.name == name)
            .cloned()
            .collect()
    }

    /// By name, or by id when `name` is `None`: the first vector field's
    /// part of that index.
    pub fn find(
        &self,
        db: &str,
        collection: &str,
        name: Option<&str>,
        id: Option<&str>,
    ) -> Option<Arc<SearchIndex>> {
        self.list(db, collection)
            .into_iter()
            .find(|i| name.is_none_or(|n| i.name == n) && id.is_none_or(|x| i.id == x))
    }

    /// The part of index `name` that indexes `path`.
    pub fn find_path(
        &self,
        db: &str,
        collection: &str,
        name: &str,
        path: &str,
    ) -> Option<Arc<SearchIndex>> {
        self.list(db, collection)
            .into_iter()
            .find(|i| i.name == name && i.spec.path == path)
    }

    /// Adds a part restored at start-up; refused when the namespace
    /// already has another index (another id) of that name.
    pub fn add(&self, index: Arc<SearchIndex>) -> Result<(), Arc<SearchIndex>> {
        self.add_bounded(vec![index], usize::MAX, usize::MAX)
            .map_err(|refused| match refused {
                Refused::Exists(existing) => existing,
                _ => unreachable!("no bound to exceed"),
            })
    }

    /// Adds the parts of one index unless another index (another id) has
    /// its name in its namespace, or they would take its collection past
    /// `per_collection` parts or the registry past `total` (staged ones
    /// count: each part holds a change stream): checked and added under one
    /// lock, so concurrent creations cannot pass a bound together.
    pub fn add_bounded(
        &self,
        parts: Vec<Arc<SearchIndex>>,
        per_collection: usize,
        total: usize,
    ) -> Result<(), Refused> {
        let Some(first) = parts.first().cloned() else {
            return Ok(());
        };
        let mut map = self.write();
        let count: usize = map
            .serving
            .values()
            .chain(map.staged.values())
            .map(Vec::len)
            .sum();
        let list = map
            .serving
            .entry(namespace(&first.db, &first.collection))
            .or_default();
        if let Some(existing) = list
            .iter()
            .find(|i| i.name == first.name && i.id != first.id)
        {
            return Err(Refused::Exists(existing.clone()));
        }
        if list.len() + parts.len() > per_collection {
            return Err(Refused::PerCollection(per_collection));
        }
        if count + parts.len() > total {
            return Err(Refused::Total(total));
        }
        list.extend(parts);
        Ok(())
    }

    /// Stages the parts of a new definition to replace the serving index of
    /// their name once every one is ready ([`Registry::promote`]); an
    /// earlier staged definition of that name is retired. `false` (nothing
    /// staged) when no index of their id serves any more (dropped), or,
    /// with `over`, when `over` no longer serves or another definition is
    /// already staged to replace it (a fine-tuning run's result never
    /// displaces a client's update).
    pub fn stage(&self, parts: Vec<Arc<SearchIndex>>, over: Option<&Arc<SearchIndex>>) -> bool {
        let Some(first) = parts.first().cloned() else {
            return false;
        };
        let mut map = self.write();
        let key = namespace(&first.db, &first.collection);
        let serves = map
            .serving
            .get(&key)
            .is_some_and(|list| list.iter().any(|i| i.id == first.id));
        if !serves {
            return false;
        }
        if let Some(over) = over {
            // Only as the next generation of `over`: still serving, and
            // nothing else staged to replace it.
            let still = map
                .serving
                .get(&key)
                .is_some_and(|list| list.iter().any(|i| Arc::ptr_eq(i, over)));
            let pending = map
                .staged
                .get(&key)
                .is_some_and(|list| list.iter().any(|i| i.name == first.name));
            if !still || pending {
                return false;
            }
        }
        let list = map
            .staged
            .entry(namespace(&first.db, &first.collection))
            .or_default();
        for old in list.iter().filter(|i| i.name == first.name) {
            old.retire();
        }
        list.retain(|i| i.name != first.name);
        list.extend(parts);
        true
    }

    /// Once every staged part of `index`'s definition is queryable, puts
    /// them in the place of the serving parts of their name, retiring
    /// those; `false` (and nothing changes) while some part is not ready,
    /// or when `index` is no longer staged (dropped, or replaced by a later
    /// update).
    pub fn promote(&self, index: &Arc<SearchIndex>) -> bool {
        let mut map = self.write();
        let key = namespace(&index.db, &index.collection);
        let Some(staged) = map.staged.get_mut(&key) else {
            return false;
        };
        if !staged.iter().any(|i| Arc::ptr_eq(i, index)) {
            return false;
        }
        let siblings: Vec<Arc<SearchIndex>> = staged
            .iter()
            .filter(|i| i.name == index.name)
            .cloned()
            .collect();
        if !siblings.iter().all(|i| i.queryable()) {
            return false;
        }
        staged.retain(|i| i.name != index.name);
        let list = map.serving.entry(key).or_default();
        let at = list
            .iter()
            .position(|i| i.name == index.name)
            .unwrap_or(list.len());
        for old in list.iter().filter(|i| i.name == index.name) {
            old.retire();
        }
        list.retain(|i| i.name != index.name);
        let at = at.min(list.len());
        list.splice(at..at, siblings);
        true
    }

    /// Removes every part of `index` and any definition staged to replace
    /// it, retiring them.
    pub fn remove(&self, index: &SearchIndex) {
        let mut map = self.write();
        let key = namespace(&index.db, &index.collection);
        if let Some(list) = map.serving.get_mut(&key) {
            for part in list.iter().filter(|i| i.id == index.id) {
                part.retire();
            }
            list.retain(|i| i.id != index.id);
        }
        if let Some(list) = map.staged.get_mut(&key) {
            // Staged parts share the id of the index they will replace.
            for staged in list.iter().filter(|i| i.id == index.id) {
                staged.retire();
            }
            list.retain(|i| i.id != index.id);
        }
        index.retire();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Indexes> {
        self.by_namespace.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Indexes> {
        self.by_namespace.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{rawdoc, RawBsonRef};

    fn index() -> SearchIndex {
        let spec = IndexSpec::vector("v".into(), 2, Similarity::Euclidean, HnswParams::default());
        SearchIndex::new("id".into(), "db", "c", "idx", rawdoc! {}, spec)
    }

    fn named(db: &str, collection: &str, name: &str) -> Arc<SearchIndex> {
        let mut index = index();
        index.db = db.into();
        index.collection = collection.into();
        index.name = name.into();
        Arc::new(index)
    }

    #[test]
    fn namespaces_are_pairs_and_bounds_hold_under_the_lock() {
        let registry = Registry::default();
        registry.add(named("a.b", "c", "i")).ok().unwrap();
        // `a` + `b.c` is another collection, whatever the joined string.
        assert!(registry.list("a", "b.c").is_empty());
        registry.add(named("a", "b.c", "i")).ok().unwrap();
        assert_eq!(registry.list("a.b", "c").len(), 1);
        let mut other = index();
        other.id = "other".into();
        other.db = "a".into();
        other.collection = "b.c".into();
        other.name = "i".into();
        assert!(matches!(
            registry.add_bounded(vec![Arc::new(other)], 10, 10),
            Err(Refused::Exists(_))
        ));
        assert!(matches!(
            registry.add_bounded(vec![named("a", "b.c", "j")], 1, 10),
            Err(Refused::PerCollection(1))
        ));
        assert!(matches!(
            registry.add_bounded(vec![named("x", "y", "k")], 10, 2),
            Err(Refused::Total(2))
        ));
        assert!(registry
            .add_bounded(vec![named("x", "y", "k")], 10, 3)
            .is_ok());
        assert_eq!(registry.all().len(), 3);
    }

    #[test]
    fn a_staged_definition_serves_only_once_every_part_is_ready() {
        let registry = Registry::default();
        let part = |n: usize, id: &str| {
            let mut index = index();
            index.id = id.into();
            Arc::new(index.with_part(n))
        };
        let old = [part(0, "id"), part(1, "id")];
        registry.add_bounded(old.to_vec(), 10, 10).ok().unwrap();
        assert_eq!(registry.list("db", "c").len(), 2);
        assert_eq!(registry.all_maintained().len(), 2);
        let new = [part(0, "id"), part(1, "id"), part(2, "id")];
        assert!(registry.stage(new.to_vec(), None));
        assert_eq!(registry.staged("db", "c", "idx").len(), 3);
        assert_eq!(registry.maintained("db", "c").len(), 5);
        new[0].set_status(Status::Ready, None);
        new[2].set_status(Status::Ready, None);
        assert!(!registry.promote(&new[0]), "a part is still building");
        assert!(Arc::ptr_eq(&registry.list("db", "c")[0], &old[0]));
        new[1].set_status(Status::Ready, None);
        assert!(registry.promote(&new[1]));
        let serving = registry.list("db", "c");
        assert_eq!(serving.len(), 3);
        assert!(serving.iter().zip(&new).all(|(a, b)| Arc::ptr_eq(a, b)));
        assert!(old.iter().all(|o| o.is_retired()));
        assert!(registry.staged("db", "c", "idx").is_empty());
        assert!(!registry.promote(&new[0]), "no longer staged");
        // Dropping removes every part, and anything staged; nothing can be
        // staged for it after.
        assert!(registry.stage(vec![part(0, "id")], None));
        registry.remove(&serving[0]);
        assert!(registry.all_maintained().is_empty());
        assert!(new.iter().all(|n| n.is_retired()));
        assert!(!registry.stage(vec![part(0, "id")], None));
        assert!(registry.all_maintained().is_empty());
    }

    #[test]
    fn documents_count_as_pending_until_their_retry_is_over() {
        let index = index();
        let ids = [
            RawBsonRef::Int32(1),
            RawBsonRef::Int32(2),
            RawBsonRef::Int32(3),
        ];
        index.add_pending(ids);
        assert_eq!(index.pending_count(), 3);
        // Taken for a retry: still pending while it runs.
        let taken = index.take_pending();
        assert_eq!(taken.ids.len(), 3);
        assert_eq!(index.pending_count(), 3);
        // One fails again and is queued anew (counted once), and a new
        // failure arrives meanwhile.
        index.add_pending([RawBsonRef::Int32(2), RawBsonRef::Int32(4)]);
        assert_eq!(index.pending_count(), 4);
        index.retried();
        assert_eq!(index.pending_count(), 2);
        assert_eq!(index.take_pending().ids.len(), 2);
        index.retried();
        assert_eq!(index.pending_count(), 0);
    }
}

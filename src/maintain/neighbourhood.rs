//! Neighbourhoods (the seed's `create_neighbourhood`): every document of a
//! collection caches, at `_like.<name>`, the `_id`s of its `n` nearest
//! neighbours under a semantic index, excluding itself.
//!
//! A worker per neighbourhood backfills all lists, then keeps them current
//! from the ids whose *vectors* changed (the index records them while a
//! neighbourhood listens). For a changed document X it recomputes X's own
//! list, the list of every document whose n-th neighbour is farther than X
//! now is (X enters it), and the list of every document that listed X (X
//! moved away or was deleted) — exact reverse-neighbour repair. Lists are
//! computed exactly up to `registry::vectors::NEAREST_EXACT_MAX` vectors, with a wide graph search
//! above. Lists are written to the upstream in batches on the proxy's own
//! connection, one batch at a time; they change no vector, so they never
//! trigger more maintenance.

use crate::config::Config;
use crate::error::Error;
use crate::index::ids::{canonical, IdSet};
use crate::registry::{Registry as Indexes, SearchIndex, Status};
use crate::upstream;
use bson::{rawdoc, RawArrayBuf, RawBson, RawBsonRef, RawDocumentBuf};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Documents per upstream update batch.
const WRITE_BATCH: usize = 500;
/// How often the worker looks for changed vectors.
const POLL: Duration = Duration::from_millis(50);

pub struct Neighbourhood {
    pub db: String,
    pub collection: String,
    pub name: String,
    pub index_name: String,
    pub n: usize,
    status: Mutex<(Status, Option<String>)>,
    pub done: AtomicU64,
    pub total: AtomicU64,
    /// Lists written to the upstream so far.
    pub writes: AtomicU64,
    /// Each document's list and the distance of its n-th neighbour.
    lists: Mutex<HashMap<Vec<u8>, Entry>>,
    retired: AtomicBool,
}

struct Entry {
    id: RawBson,
    list: Vec<RawBson>,
    radius: f32,
}

impl Neighbourhood {
    pub fn new(
        db: &str,
        collection: &str,
        name: &str,
        index_name: &str,
        n: usize,
    ) -> Neighbourhood {
        Neighbourhood {
            db: db.into(),
            collection: collection.into(),
            name: name.into(),
            index_name: index_name.into(),
            n,
            status: Mutex::new((Status::Pending, None)),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            lists: Mutex::new(HashMap::new()),
            retired: AtomicBool::new(false),
        }
    }

    pub fn field(&self) -> String {
        format!("_like.{}", self.name)
    }

    pub fn status(&self) -> (Status, Option<String>) {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_status(&self, status: Status, detail: Option<String>) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = (status, detail);
    }

    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Registry {
    all: RwLock<Vec<Arc<Neighbourhood>>>,
}

impl Registry {
    pub fn list(&self, db: &str, collection: &str) -> Vec<Arc<Neighbourhood>> {
        let all = self.all.read().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .filter(|n| n.db == db && n.collection == collection)
            .cloned()
            .collect()
    }

    pub fn find(&self, db: &str, collection: &str, name: &str) -> Option<Arc<Neighbourhood>> {
        self.list(db, collection)
            .into_iter()
            .find(|n| n.name == name)
    }

    pub fn add(&self, nb: Arc<Neighbourhood>) -> bool {
        let mut all = self.all.write().unwrap_or_else(|e| e.into_inner());
        if all
            .iter()
            .any(|n| n.db == nb.db && n.collection == nb.collection && n.name == nb.name)
        {
            return false;
        }
        all.push(nb);
        true
    }

    pub fn remove(&self, nb: &Neighbourhood) {
        nb.retire();
        let mut all = self.all.write().unwrap_or_else(|e| e.into_inner());
        all.retain(|n| !(n.db == nb.db && n.collection == nb.collection && n.name == nb.name));
    }
}

/// Recomputes the lists of `ids` (CPU work). Returns the lists that changed.
fn recompute(index: &SearchIndex, nb: &Neighbourhood, ids: &IdSet) -> Vec<(RawBson, Vec<RawBson>)> {
    let nearest = index.nearest_to(ids.ids.iter().map(RawBson::as_raw_bson_ref), nb.n);
    let mut lists = nb.lists.lock().unwrap_or_else(|e| e.into_inner());
    let mut changed = Vec::new();
    for (id, nearest) in ids.ids.iter().zip(nearest) {
        let slot = canonical(id.as_raw_bson_ref());
        let Some((list, radius)) = nearest else {
            lists.remove(&slot); // deleted, or no longer has a vector
            continue;
        };
        let differs = lists.get(&slot).is_none_or(|e| e.list != list);
        lists.insert(
            slot,
            Entry {
                id: id.clone(),
                list: list.clone(),
                radius,
            },
        );
        if differs {
            changed.push((id.clone(), list));
        }
    }
    changed
}

/// Which lists a set of changed vectors can affect: the changed documents
/// themselves, documents they now fall inside the radius of, and documents
/// that listed them.
fn affected(index: &SearchIndex, nb: &Neighbourhood, changed: &IdSet) -> IdSet {
    index.read_vectors(|vectors| {
        let lists = nb.lists.lock().unwrap_or_else(|e| e.into_inner());
        let sim = index.spec.similarity;
        let mut out = IdSet::default();
        let moved: Vec<std::borrow::Cow<'_, [f32]>> = changed
            .ids
            .iter()
            .filter_map(|id| vectors.vector(id.as_raw_bson_ref()))
            .collect();
        for id in &changed.ids {
            out.add(id.as_raw_bson_ref());
        }
        for entry in lists.values() {
            let referenced = entry
                .list
                .iter()
                .any(|x| changed.contains(x.as_raw_bson_ref()));
            let entered = vectors
                .vector(entry.id.as_raw_bson_ref())
                .is_some_and(|v| moved.iter().any(|m| sim.distance(&v, m) <= entry.radius));
            if referenced || entered {
                out.add(entry.id.as_raw_bson_ref());
            }
        }
        out
    })
}

/// Writes lists to the upstream, a batch at a time.
async fn write_lists(
    config: &Config,
    nb: &Neighbourhood,
    lists: Vec<(RawBson, Vec<RawBson>)>,
) -> Result<(), Error> {
    if lists.is_empty() {
        return Ok(());
    }
    let conn = upstream::connect(config).await?;
    let field = nb.field();
    for chunk in lists.chunks(WRITE_BATCH) {
        let mut updates = RawArrayBuf::new();
        for (id, list) in chunk {
            let mut ids = RawArrayBuf::new();
            for x in list {
                ids.push(x.clone());
            }
            let mut set = RawDocumentBuf::new();
            set.append(field.as_str(), ids);
            updates.push(rawdoc! { "q": { "_id": id.clone() }, "u": { "$set": set } });
        }
        let body = rawdoc! {
            "update": nb.collection.as_str(),
            "updates": updates,
            "ordered": false,
            "$db": nb.db.as_str(),
        };
        conn.command(&body).await?;
        nb.writes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Backfills, then maintains, a neighbourhood until it is dropped.
pub async fn run(config: Arc<Config>, indexes: Arc<Indexes>, nb: Arc<Neighbourhood>) {
    let index = loop {
        if nb.retired.load(Ordering::Relaxed) {
            return;
        }
        match indexes.find(&nb.db, &nb.collection, Some(&nb.index_name), None) {
            Some(index) if index.queryable() => break index,
            _ => tokio::time::sleep(POLL).await,
        }
    };
    nb.set_status(Status::Building, None);
    index.listen();
    let all = index.live_ids();
    nb.total.store(all.ids.len() as u64, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let mut next_report = 0.1;
    for chunk in all.ids.chunks(WRITE_BATCH) {
        if nb.retired.load(Ordering::Relaxed) {
            return;
        }
        let mut batch = IdSet::default();
        for id in chunk {
            batch.add(id.as_raw_bson_ref());
        }
        let (target, hood) = (index.clone(), nb.clone());
        let lists = tokio::task::spawn_blocking(move || recompute(&target, &hood, &batch))
            .await
            .unwrap_or_default();
        if let Err(e) = write_lists(&config, &nb, lists).await {
            nb.set_status(Status::Failed, Some(e.message.clone()));
            tracing::warn!(neighbourhood = %nb.name, error = %e, "neighbourhood backfill failed");
            return;
        }
        let done = nb.done.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
        let share = done as f64 / all.ids.len().max(1) as f64;
        if share >= next_report {
            let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let eta = (all.ids.len() as f64 - done as f64) / rate.max(1e-9);
            tracing::info!(neighbourhood = %nb.name, done, total = all.ids.len(), "building neighbourhood: {:.0}% ({rate:.0} documents/s, about {eta:.0} s left)", share * 100.0);
            next_report = (share * 10.0).floor() / 10.0 + 0.1;
        }
    }
    nb.set_status(Status::Ready, None);
    tracing::info!(neighbourhood = %nb.name, documents = all.ids.len(), "neighbourhood ready");

    while !nb.retired.load(Ordering::Relaxed) && !index.is_retired() {
        let changed = index.take_changed();
        if changed.is_empty() {
            tokio::time::sleep(POLL).await;
            continue;
        }
        let (target, hood) = (index.clone(), nb.clone());
        let lists = tokio::task::spawn_blocking(move || {
            let affected = affected(&target, &hood, &changed);
            recompute(&target, &hood, &affected)
        })
        .await
        .unwrap_or_default();
        if let Err(e) = write_lists(&config, &nb, lists).await {
            tracing::warn!(neighbourhood = %nb.name, error = %e, "neighbourhood update failed; retrying");
        }
    }
}

/// Documents whose stored list differs from a fresh computation.
pub async fn staleness(
    config: &Config,
    index: &Arc<SearchIndex>,
    nb: &Neighbourhood,
) -> Result<u64, Error> {
    let conn = upstream::connect(config).await?;
    let field = nb.field();
    let mut projection = RawDocumentBuf::new();
    projection.append(field.as_str(), 1);
    let body = rawdoc! { "find": nb.collection.as_str(), "filter": {}, "projection": projection, "batchSize": 10_000, "$db": nb.db.as_str() };
    let mut cursor = conn.cursor(&body).await?;
    let mut stored: Vec<(RawBson, Vec<RawBson>)> = Vec::new();
    while let Some(batch) = cursor.next_batch().await? {
        for doc in batch {
            let Some(id) = doc.get("_id").ok().flatten() else {
                continue;
            };
            let list = crate::index::vector::lookup(&doc, &field)
                .and_then(|v| match v {
                    RawBsonRef::Array(a) => {
                        Some(a.into_iter().flatten().map(|x| x.to_raw_bson()).collect())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            stored.push((id.to_raw_bson(), list));
        }
    }
    let (target, n) = (index.clone(), nb.n);
    let stale = tokio::task::spawn_blocking(move || {
        let nearest = target.nearest_to(stored.iter().map(|(id, _)| id.as_raw_bson_ref()), n);
        stored
            .iter()
            .zip(nearest)
            .filter(|((_, list), nearest)| match nearest {
                Some((fresh, _)) => fresh != list,
                None => false, // no vector: no list to keep
            })
            .count() as u64
    })
    .await
    .unwrap_or(u64::MAX);
    Ok(stale)
}

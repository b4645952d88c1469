//! Keeps indexes in step with the upstream: the catalog of definitions
//! (stored in the upstream, so restarts and other proxies see them) and
//! background builds that scan a collection into an index.

pub mod apply;
pub mod build;
pub mod catalog;
pub mod fine_tune;
pub mod fresh;
pub mod lease;
pub mod neighbourhood;
pub mod pairs;
pub mod snapshot;
pub mod stream;
pub mod train;
pub mod versions;

use crate::config::Config;
use crate::models::Models;
use crate::registry::{Registry, SearchIndex};
use std::sync::Arc;

/// Loads the stored definitions (models, then indexes, then
/// neighbourhoods) and builds each index in the background, retrying with
/// backoff (1 s doubling to 5 s) until the upstream answers: a proxy
/// started before its upstream loads its catalog when the upstream
/// appears. Returns once everything is loaded; until then `Shared::restored`
/// stays false and commands that need the catalog are refused.
pub async fn restore(
    config: Arc<Config>,
    registry: Arc<Registry>,
    neighbourhoods: Arc<neighbourhood::Registry>,
    models: Arc<Models>,
) {
    let mut pause = std::time::Duration::from_secs(1);
    let started = std::time::Instant::now();
    loop {
        match restore_once(&config, &registry, &neighbourhoods, &models).await {
            Ok(()) => {
                let elapsed_ms = started.elapsed().as_millis() as u64;
                tracing::info!(elapsed_ms, "stored definitions loaded");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "cannot load search index definitions");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

async fn restore_once(
    config: &Arc<Config>,
    registry: &Arc<Registry>,
    neighbourhoods: &Arc<neighbourhood::Registry>,
    models: &Arc<Models>,
) -> Result<(), crate::error::Error> {
    // Everything is read before anything is registered, so a failure half
    // way leaves nothing behind to be registered twice on the next try.
    let model_defs = catalog::load_models(config).await?;
    let stored_hoods = catalog::load_neighbourhoods(config).await?;
    load_models(config, models, model_defs).await;
    let indexes = catalog::load(config, models).await?;
    if !indexes.is_empty() {
        tracing::info!(count = indexes.len(), "restoring search index definitions");
    }
    for stored in indexes {
        let serving: Vec<Arc<SearchIndex>> = stored.serving.into_iter().map(Arc::new).collect();
        if registry
            .add_bounded(serving.clone(), usize::MAX, usize::MAX)
            .is_err()
        {
            continue;
        }
        for part in serving {
            tokio::spawn(build::build(
                config.clone(),
                registry.clone(),
                models.clone(),
                part,
            ));
        }
        let staged: Vec<Arc<SearchIndex>> = stored.staged.into_iter().map(Arc::new).collect();
        if !staged.is_empty() {
            stage_update(config, registry, models, staged, None);
        }
    }
    for nb in stored_hoods {
        let nb = Arc::new(nb);
        if neighbourhoods.add(nb.clone()) {
            tokio::spawn(neighbourhood::run(config.clone(), registry.clone(), nb));
        }
    }
    Ok(())
}

/// Deletes a search index: its stored definition and trained state in the
/// upstream, its parts in `registry` (their builds stop) and its
/// snapshots. What `dropSearchIndex` does, and what dropping the
/// collection (or its database) does to every index on it, as Atlas does.
pub async fn delete(
    config: &Config,
    registry: &Registry,
    index: &SearchIndex,
) -> Result<(), crate::error::Error> {
    catalog::delete(config, &index.id).await?;
    train::delete_stored(config, &index.id).await?;
    registry.remove(index);
    if let Some(dir) = &config.data_dir {
        snapshot::remove_all(dir, &index.id);
    }
    Ok(())
}

/// Stages the parts of a new definition of an index (`updateSearchIndex`,
/// or one restored half built) and builds them; once every part is ready
/// they replace the serving parts (`Registry::promote`), the stored entry
/// keeps only the new definition and the old parts' snapshots go. `false`
/// (nothing staged, nothing built) when the index is no longer served:
/// dropped meanwhile; with `over`, also when `over` was replaced or
/// another definition is staged ([`Registry::stage`]).
pub fn stage_update(
    config: &Arc<Config>,
    registry: &Arc<Registry>,
    models: &Arc<Models>,
    parts: Vec<Arc<SearchIndex>>,
    over: Option<&Arc<SearchIndex>>,
) -> bool {
    let Some(first) = parts.first().cloned() else {
        return false;
    };
    let old: Vec<Arc<SearchIndex>> = registry
        .list(&first.db, &first.collection)
        .into_iter()
        .filter(|i| i.id == first.id)
        .collect();
    if !registry.stage(parts.clone(), over) {
        return false;
    }
    for part in parts {
        let staged = Arc::downgrade(&part);
        let (promoting, settings, old) = (registry.clone(), config.clone(), old.clone());
        part.on_ready(move || {
            let registry = &promoting;
            let Some(index) = staged.upgrade() else {
                return;
            };
            if !registry.promote(&index) {
                return;
            }
            tracing::info!(index = %index.name, namespace = %index.namespace(), "updated search index definition now serving");
            let (config, old) = (settings.clone(), old.clone());
            let promoted: Vec<Arc<SearchIndex>> = registry
                .list(&index.db, &index.collection)
                .into_iter()
                .filter(|i| i.id == index.id)
                .collect();
            for part in &promoted {
                part.clear_on_ready();
            }
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = catalog::save(&config, &promoted[0]).await {
                        tracing::warn!(error = %e, "storing the promoted search index definition failed");
                    }
                    if let Some(dir) = &config.data_dir {
                        for part in &old {
                            let _ = std::fs::remove_file(snapshot::path(dir, part));
                        }
                    }
                });
            }
        });
        tokio::spawn(build::build(
            config.clone(),
            registry.clone(),
            models.clone(),
            part,
        ));
    }
    true
}

/// Makes sure the models `names` are loaded: one another proxy
/// registered (or a version another proxy's fine-tuning made) is read
/// from the catalog, its files from the upstream. Names the catalog does
/// not have are left for the caller to report. Errors: the upstream's,
/// and a stored model's that cannot load.
pub async fn ensure_models(
    config: &Config,
    models: &Arc<Models>,
    names: &[String],
) -> Result<(), crate::error::Error> {
    if names.iter().all(|n| models.get(n).is_some()) {
        return Ok(());
    }
    for def in catalog::load_models(config).await? {
        if names.contains(&def.name) && models.get(&def.name).is_none() {
            let model = versions::load(config, models, def).await?;
            models.insert(Arc::new(model));
        }
    }
    Ok(())
}

/// Loads every stored model (weights are read on a blocking thread;
/// fine-tuned versions' files come from the upstream).
async fn load_models(
    config: &Arc<Config>,
    models: &Arc<Models>,
    defs: Vec<crate::models::ModelDef>,
) {
    for def in defs {
        let name = def.name.clone();
        let started = std::time::Instant::now();
        match versions::load(config, models, def).await {
            Ok(model) => {
                let elapsed_ms = started.elapsed().as_millis() as u64;
                tracing::info!(model = %name, kind = model.def.kind.name(), dimensions = model.dimensions(), elapsed_ms, "model loaded");
                models.insert(Arc::new(model));
            }
            Err(e) => tracing::warn!(model = %name, error = %e.message, "cannot load model"),
        }
    }
}

/// How often changed indexes are snapshotted.
const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Snapshots changed, queryable indexes every few seconds, for as long as
/// the proxy runs (only with a data directory).
pub async fn keep_saving(config: Arc<Config>, registry: Arc<Registry>) {
    if config.data_dir.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(SAVE_EVERY);
    loop {
        tick.tick().await;
        save_changed(&config, &registry).await;
    }
}

/// Snapshots every changed, queryable index now.
pub async fn save_changed(config: &Config, registry: &Registry) {
    for index in registry.all() {
        if index.queryable() && index.is_dirty() {
            build::save_snapshot(config, &index).await;
        }
    }
}

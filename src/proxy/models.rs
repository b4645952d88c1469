//! `createModel`, `listModels` and `dropModel`, answered by the proxy.
//! Models belong to the deployment (not to a database): definitions live in
//! `<metadata db>.models`, loaded models in `Shared::models`.

use super::for_client::ForClient;
use crate::command::Admin;
use crate::error::{Code, Error};
use crate::maintain::catalog;
use crate::models::{Model, ModelDef};
use bson::{rawdoc, RawArrayBuf, RawDocument, RawDocumentBuf};
use std::sync::Arc;

impl ForClient<'_> {
    pub(super) async fn model_admin(
        &mut self,
        admin: Admin,
        body: &RawDocument,
    ) -> Result<RawDocumentBuf, Error> {
        let config = self.shared.config.clone();
        let models = self.shared.models.clone();
        match admin {
            Admin::CreateModel => {
                let def = ModelDef::parse(body, "createModel")?;
                if let Some(existing) = models.get(&def.name) {
                    let mut asked = def.clone();
                    asked.dimensions = existing.def.dimensions;
                    if asked == existing.def {
                        return Ok(
                            rawdoc! { "ok": 1.0, "model": existing.def.to_doc(), "note": "model already exists" },
                        );
                    }
                    return Err(Error::client(
                        Code::NAMESPACE_EXISTS,
                        format!(
                            "model '{}' already exists with a different definition; drop it first",
                            def.name
                        ),
                    ));
                }
                let model = self.load_model(def).await?;
                catalog::save_model(&config, &model.def).await?;
                tracing::info!(model = %model.name(), kind = model.def.kind.name(), dimensions = model.dimensions(), "model created");
                let reply = rawdoc! { "ok": 1.0, "model": model.def.to_doc() };
                models.insert(model);
                Ok(reply)
            }
            Admin::ListModels => {
                let indexes = self.shared.registry.all_maintained();
                let mut list = RawArrayBuf::new();
                for model in models.all() {
                    let mut doc = model.def.to_doc();
                    let mut used_by = RawArrayBuf::new();
                    for index in &indexes {
                        if index.spec.models.iter().any(|m| m.model == model.def.name) {
                            used_by.push(format!("{}.{}", index.namespace(), index.name));
                        }
                    }
                    doc.append("usedBy", used_by);
                    list.push(doc);
                }
                Ok(rawdoc! { "models": list, "ok": 1.0 })
            }
            Admin::DropModel => {
                let name = body.get_str("dropModel").map_err(|_| {
                    Error::client(Code::BAD_VALUE, "'dropModel' must name the model")
                })?;
                if models.get(name).is_none() {
                    return Err(Error::client(
                        Code::NAMESPACE_NOT_FOUND,
                        format!("model '{name}' not found"),
                    ));
                }
                if let Some(index) = self
                    .shared
                    .registry
                    .all_maintained()
                    .into_iter()
                    .find(|i| i.spec.models.iter().any(|m| m.model == name))
                {
                    return Err(Error::client(
                        Code::OBJECT_IS_BUSY,
                        format!(
                            "model '{name}' is used by search index '{}' on {}: drop the index first",
                            index.name,
                            index.namespace()
                        ),
                    ));
                }
                // A version's files first: an entry never names files
                // that are gone unless deleting it failed.
                let version = models.get(name).is_some_and(|m| m.def.lineage.is_some());
                if version {
                    crate::maintain::versions::delete_files(&config, name).await?;
                }
                catalog::delete_model(&config, name).await?;
                models.remove(name);
                tracing::info!(model = %name, "model dropped");
                Ok(rawdoc! { "ok": 1.0 })
            }
            _ => Err(Error::internal("not a model command")),
        }
    }

    /// Loads a model (`maintain::versions::load`).
    pub(super) async fn load_model(&self, def: ModelDef) -> Result<Arc<Model>, Error> {
        crate::maintain::versions::load(&self.shared.config, &self.shared.models, def)
            .await
            .map(Arc::new)
    }

    /// Makes sure the named models are loaded: a model another proxy
    /// registered is read from the catalog.
    pub(super) async fn ensure_models(&self, names: &[String]) -> Result<(), Error> {
        crate::maintain::ensure_models(&self.shared.config, &self.shared.models, names).await
    }
}

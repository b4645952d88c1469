//! `createNeighbourhood`, `dropNeighbourhood` and `listNeighbourhoods`,
//! answered by the proxy (see `maintain::neighbourhood`).

use super::for_client::ForClient;
use crate::command::search_index::cursor_reply;
use crate::command::Admin;
use crate::error::{Code, Error};
use crate::index::MAX_CANDIDATES;
use crate::maintain::{catalog, neighbourhood};
use crate::wire::integer;
use bson::{rawdoc, RawDocument, RawDocumentBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn bad(message: impl Into<String>) -> Error {
    Error::client(Code::BAD_VALUE, message)
}

impl ForClient<'_> {
    pub(super) async fn neighbourhood_admin(
        &mut self,
        admin: Admin,
        body: &RawDocument,
    ) -> Result<RawDocumentBuf, Error> {
        let db = body.get_str("$db").map_err(|_| bad("command has no $db"))?;
        let config = self.shared.config.clone();
        let hoods = self.shared.neighbourhoods.clone();
        let command = match admin {
            Admin::CreateNeighbourhood => "createNeighbourhood",
            Admin::DropNeighbourhood => "dropNeighbourhood",
            _ => "listNeighbourhoods",
        };
        let collection = body
            .get_str(command)
            .map_err(|_| bad(format!("'{command}' must name a collection")))?;
        match admin {
            Admin::CreateNeighbourhood => {
                let name = body
                    .get_str("name")
                    .map_err(|_| bad("createNeighbourhood needs a string 'name'"))?;
                if name.is_empty() || name.contains('.') || name.starts_with('$') {
                    return Err(bad("neighbourhood 'name' must be a plain field name"));
                }
                let n = integer(body.get("n").ok().flatten())
                    .unwrap_or(10)
                    .clamp(0, i64::MAX);
                let n = usize::try_from(n)
                    .ok()
                    .filter(|n| (1..=MAX_CANDIDATES).contains(n))
                    .ok_or_else(|| bad(format!("'n' must be from 1 to {MAX_CANDIDATES}")))?;
                let index_name = match body.get_str("semantic_index") {
                    Ok(name) => name.to_string(),
                    Err(_) => {
                        let all = self.shared.registry.list(db, collection);
                        match all.as_slice() {
                            [only] => only.name.clone(),
                            _ => return Err(bad("name the index with 'semantic_index'")),
                        }
                    }
                };
                match self
                    .shared
                    .registry
                    .find(db, collection, Some(&index_name), None)
                {
                    None => {
                        return Err(Error::client(
                            Code::INDEX_NOT_FOUND,
                            format!("search index '{index_name}' not found on {db}.{collection}"),
                        ))
                    }
                    Some(index) if index.text().is_some() => {
                        return Err(bad(format!(
                            "search index '{index_name}' is a full-text index: neighbourhoods \
                             need a vector index"
                        )))
                    }
                    Some(_) => {}
                }
                let nb = Arc::new(neighbourhood::Neighbourhood::new(
                    db,
                    collection,
                    name,
                    &index_name,
                    n,
                ));
                // Reserved before it is stored: of two concurrent creations
                // one wins, and only the winner is stored and run.
                if !hoods.add(nb.clone()) {
                    return Err(Error::client(
                        Code::INDEX_ALREADY_EXISTS,
                        format!("neighbourhood '{name}' already exists"),
                    ));
                }
                if let Err(e) = catalog::save_neighbourhood(&config, &nb).await {
                    hoods.remove(&nb);
                    return Err(e);
                }
                tokio::spawn(neighbourhood::run(
                    config.clone(),
                    self.shared.registry.clone(),
                    nb,
                ));
                Ok(rawdoc! { "ok": 1.0 })
            }
            Admin::DropNeighbourhood => {
                let name = body
                    .get_str("name")
                    .map_err(|_| bad("dropNeighbourhood needs a string 'name'"))?;
                let nb = hoods.find(db, collection, name).ok_or_else(|| {
                    Error::client(
                        Code::INDEX_NOT_FOUND,
                        format!("neighbourhood '{name}' not found"),
                    )
                })?;
                hoods.remove(&nb);
                catalog::delete_neighbourhood(&config, &nb).await?;
                let mut unset = RawDocumentBuf::new();
                unset.append(nb.field().as_str(), "");
                let clear = rawdoc! {
                    "update": collection,
                    "updates": [{ "q": {}, "u": { "$unset": unset }, "multi": true }],
                    "$db": db,
                };
                let conn = crate::upstream::connect(&config).await?;
                conn.command(&clear).await?;
                Ok(rawdoc! { "ok": 1.0 })
            }
            _ => {
                let mut docs = Vec::new();
                for nb in hoods.list(db, collection) {
                    let (status, detail) = nb.status();
                    let mut doc = rawdoc! {
                        "name": nb.name.as_str(),
                        "semantic_index": nb.index_name.as_str(),
                        "n": i64::try_from(nb.n).unwrap_or(i64::MAX),
                        "field": nb.field(),
                        "status": status.name(),
                        "progress": {
                            "documentsDone": i64::try_from(nb.done.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
                            "documentsTotal": i64::try_from(nb.total.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
                            "listsWritten": i64::try_from(nb.writes.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
                        },
                    };
                    if let Some(detail) = detail {
                        doc.append("statusDetail", detail);
                    }
                    if let Some(index) =
                        self.shared
                            .registry
                            .find(db, collection, Some(&nb.index_name), None)
                    {
                        if index.queryable() {
                            let stale = neighbourhood::staleness(&config, &index, &nb).await?;
                            doc.append("stale", i64::try_from(stale).unwrap_or(i64::MAX));
                        }
                    }
                    docs.push(doc);
                }
                Ok(cursor_reply(&format!("{db}.{collection}"), docs))
            }
        }
    }
}

//! `$rankFusion` and `$scoreFusion` answered: every input pipeline runs
//! (its owned first stage from an index, the rest by the upstream on the
//! client's connection and in its session, so only documents the client
//! may read are ranked), then `command::fusion` fuses the results into the
//! one ranked list the rewrite fetches, like a single vector stage's.

use super::for_client::*;
use super::query::Plan;
use crate::command::fusion::{self, Combination, InputResult, Method};
use crate::command::vector_query::VectorQuery;

type Fusion = fusion::Fusion<VectorQuery>;
type FusionInput = fusion::FusionInput<VectorQuery>;
use crate::command::VectorKind;
use crate::error::{Code, Error};
use crate::rewrite::{self, InSession, Ranked};
use crate::upstream::pinned::Cursor;
use bson::RawBson;
use std::collections::HashMap;

impl ForClient<'_> {
    /// The plan of one fusion stage run on `db.collection`.
    pub(super) async fn fuse(
        &mut self,
        kind: VectorKind,
        db: &str,
        collection: &str,
        fusion: Fusion,
        session: &mut InSession,
    ) -> Result<Plan, Error> {
        let started = std::time::Instant::now();
        // Each input contributes at most this many documents.
        let cap = self.shared.config.max_vector_results;
        let mut results = Vec::with_capacity(fusion.inputs.len());
        let mut examined = 0;
        for input in &fusion.inputs {
            let (result, seen) = self
                .run_input(kind, db, collection, input, cap, session)
                .await?;
            examined += seen;
            results.push(result);
        }
        let mut hits = fusion::fuse(&fusion, &results);
        if let Method::Score {
            combination: Combination::Expression(expression),
            ..
        } = &fusion.method
        {
            hits = self
                .evaluate(db, collection, &fusion, hits, expression, session)
                .await?;
        }
        hits.truncate(fusion.limit.min(cap));
        let details = if fusion.score_details {
            // Each input's own score of each document, for its details.
            let raw: Vec<HashMap<Vec<u8>, f64>> = results
                .iter()
                .map(|r| {
                    r.ids
                        .iter()
                        .zip(r.scores.iter().flatten())
                        .map(|(id, s)| (crate::index::ids::canonical(id.as_raw_bson_ref()), *s))
                        .collect()
                })
                .collect();
            hits.iter()
                .map(|hit| {
                    let key = crate::index::ids::canonical(hit.id.as_raw_bson_ref());
                    let own: Vec<Option<f64>> = raw.iter().map(|m| m.get(&key).copied()).collect();
                    fusion::score_details(&fusion, hit, &own)
                })
                .collect()
        } else {
            Vec::new()
        };
        let strategy = match fusion.method {
            Method::Rank => "rank fusion",
            Method::Score { .. } => "score fusion",
        };
        self.shared
            .metrics
            .vector_latency
            .observe(started.elapsed());
        self.shared.metrics.strategy(strategy);
        let (ids, scores) = hits.into_iter().map(|h| (h.id, h.score)).unzip();
        Ok(Plan {
            index: None,
            collection: collection.to_string(),
            strategy,
            examined,
            allowed: None,
            ranked: Ranked {
                ids,
                scores,
                details,
                search_meta: None,
                highlights: Vec::new(),
                stored_source: None,
            },
            exact_filter: None,
            encoding: None,
            score_details: fusion.score_details,
            highlighted: false,
        })
    }

    /// One input's documents in its order, with ranks (and scores), and
    /// how many documents its search examined. An input that is only an
    /// owned stage is answered from its index alone; any other runs on
    /// the upstream.
    async fn run_input(
        &mut self,
        kind: VectorKind,
        db: &str,
        collection: &str,
        input: &FusionInput,
        cap: usize,
        session: &mut InSession,
    ) -> Result<(InputResult, usize), Error> {
        let plan = match &input.owned {
            Some(query) => Some(
                self.plan(kind, db, collection, query.clone(), session)
                    .await?,
            ),
            None => None,
        };
        if let (Some(plan), 1) = (&plan, input.stages.len()) {
            let n = plan.ranked.ids.len().min(cap);
            let result = InputResult {
                ids: plan.ranked.ids[..n].to_vec(),
                ranks: (1..=n as u64).collect(),
                scores: Some(plan.ranked.scores[..n].to_vec()),
            };
            return Ok((result, plan.examined));
        }
        let opening = plan
            .as_ref()
            .map(|p| (&p.ranked, p.ranked.stages(p.exact_filter.as_deref())));
        let command = rewrite::fusion_input(collection, db, input, opening, cap, session);
        let mut cursor = Cursor::open(self.upstream, db, &command).await?;
        let (mut ids, mut keys, mut scores) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(batch) = cursor.next_batch().await? {
            for doc in &batch {
                let Some(id) = doc.get("_id").ok().flatten() else {
                    continue;
                };
                if ids.len() == cap {
                    break;
                }
                ids.push(id.to_raw_bson());
                keys.push(doc.get("k").ok().flatten().map(|k| k.to_raw_bson()));
                if input.score.is_some() {
                    scores.push(crate::wire::number(doc.get("s").ok().flatten()).ok_or_else(
                        || {
                            Error::client(
                                Code::relayed(14, "TypeMismatch"),
                                format!(
                                    "the score of input pipeline '{}' must be a number",
                                    input.name
                                ),
                            )
                        },
                    )?);
                }
            }
        }
        let scores = match (&plan, input.score.is_some()) {
            (_, true) => Some(scores),
            // The owned stage's score, looked up by `_id`.
            (Some(plan), false) => {
                let by_id: HashMap<Vec<u8>, f64> = plan
                    .ranked
                    .ids
                    .iter()
                    .zip(&plan.ranked.scores)
                    .map(|(id, s)| (crate::index::ids::canonical(id.as_raw_bson_ref()), *s))
                    .collect();
                Some(
                    ids.iter()
                        .map(|id| {
                            by_id
                                .get(&crate::index::ids::canonical(id.as_raw_bson_ref()))
                                .copied()
                                .unwrap_or(0.0)
                        })
                        .collect(),
                )
            }
            (None, false) => None,
        };
        let ranks = if input.sort.is_some() {
            fusion::ranks_with_ties(&keys)
        } else {
            (1..=ids.len() as u64).collect()
        };
        let examined = plan.map_or(ids.len(), |p| p.examined);
        Ok((InputResult { ids, ranks, scores }, examined))
    }

    /// `$scoreFusion`'s custom expression, evaluated by the upstream for
    /// every fused document; returns them ordered by it.
    async fn evaluate(
        &mut self,
        db: &str,
        collection: &str,
        fusion: &Fusion,
        hits: Vec<fusion::FusedHit>,
        expression: &RawBson,
        session: &mut InSession,
    ) -> Result<Vec<fusion::FusedHit>, Error> {
        let ids: Vec<RawBson> = hits.iter().map(|h| h.id.clone()).collect();
        let per_input: Vec<(&str, Vec<f64>)> = fusion
            .inputs
            .iter()
            .enumerate()
            .map(|(p, input)| {
                let values = hits
                    .iter()
                    .map(|h| h.per_input[p].map_or(0.0, |(_, v)| v))
                    .collect();
                (input.name.as_str(), values)
            })
            .collect();
        let command =
            rewrite::fusion_expression(collection, db, &ids, &per_input, expression, session);
        let mut values = HashMap::new();
        let mut cursor = Cursor::open(self.upstream, db, &command).await?;
        while let Some(batch) = cursor.next_batch().await? {
            for doc in &batch {
                let Some(id) = doc.get("_id").ok().flatten() else {
                    continue;
                };
                let score = crate::wire::number(doc.get("s").ok().flatten()).ok_or_else(|| {
                    Error::client(
                        Code::relayed(14, "TypeMismatch"),
                        "$scoreFusion's combination.expression must evaluate to a number",
                    )
                })?;
                values.insert(crate::index::ids::canonical(id), score);
            }
        }
        // Documents gone since their input read them drop out.
        let mut out: Vec<fusion::FusedHit> = hits
            .into_iter()
            .filter_map(|mut h| {
                let key = crate::index::ids::canonical(h.id.as_raw_bson_ref());
                values.get(&key).map(|s| {
                    h.score = *s;
                    h
                })
            })
            .collect();
        fusion::sort_hits(&mut out);
        Ok(out)
    }
}

//! What a semantic index definition asks of training: `loss`, `metrics`,
//! `splitter`, `validation` and `train: {epochs, batchSize, learningRate,
//! temperature, weightDecay, adapt, seed, maxPairs, fineTune, layers,
//! freezeEmbeddings, maxTokens}`.

use bson::{RawBsonRef, RawDocument, RawDocumentBuf};

/// A retrieval metric over the rank (0 = first) of each query's own item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    RecallAt(usize),
    Mrr,
    NdcgAt(usize),
}

impl Metric {
    pub fn parse(name: &str) -> Option<Metric> {
        let k = |rest: &str| {
            rest.parse::<usize>()
                .ok()
                .filter(|k| (1..=10_000).contains(k))
        };
        if name == "mrr" {
            Some(Metric::Mrr)
        } else if let Some(rest) = name.strip_prefix("r@") {
            k(rest).map(Metric::RecallAt)
        } else if let Some(rest) = name.strip_prefix("ndcg@") {
            k(rest).map(Metric::NdcgAt)
        } else {
            None
        }
    }

    pub fn name(&self) -> String {
        match self {
            Metric::RecallAt(k) => format!("r@{k}"),
            Metric::Mrr => "mrr".into(),
            Metric::NdcgAt(k) => format!("ndcg@{k}"),
        }
    }

    /// The mean over queries; one relevant item each.
    pub fn score(&self, ranks: &[usize]) -> f64 {
        if ranks.is_empty() {
            return 0.0;
        }
        let sum: f64 = ranks
            .iter()
            .map(|&r| match self {
                Metric::RecallAt(k) => f64::from(u8::from(r < *k)),
                Metric::Mrr => 1.0 / (r as f64 + 1.0),
                Metric::NdcgAt(k) if r < *k => 1.0 / (r as f64 + 2.0).log2(),
                Metric::NdcgAt(_) => 0.0,
            })
            .sum();
        sum / ranks.len() as f64
    }
}

/// How a document becomes a (query, item) pair. Items are always the
/// index's first key (what the index stores).
#[derive(Debug, Clone, PartialEq)]
pub enum Splitter {
    /// The query is the value of `keys[query]`, encoded by `models[query]`.
    Fields { query: usize },
    /// One element of the first key's array is the query, the remaining
    /// elements the item.
    ArrayElement,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Validation {
    /// A deterministic share of documents (by a hash of `_id`).
    Fraction(f64),
    /// The documents matching this filter (SuperDuperDB's `_fold: "valid"`).
    Filter(RawDocumentBuf),
}

/// Which side the adapter maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapt {
    /// Queries only: stored vectors stay as the model made them, so a
    /// trained index needs no rebuild.
    Query,
    /// Queries and items: the index is rebuilt with adapted vectors.
    Both,
}

/// Fine-tuning the text model's own weights (`train.fineTune: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FineTuning {
    /// `train.layers`: the top this many encoder layers train; `None`
    /// (the default) for all of them.
    pub layers: Option<usize>,
    /// `train.freezeEmbeddings` (default `true`): the embedding tables
    /// stay as they are.
    pub freeze_embeddings: bool,
    /// `train.maxTokens`: items are cut to this many tokens while
    /// training (queries and encoding afterwards are not); `None` for the
    /// model's own limit.
    pub max_tokens: Option<usize>,
    /// `train.adapt` was given too: an adapter is trained on the
    /// fine-tuned model's outputs afterwards.
    pub adapter: bool,
}

/// The defaults of a fine-tuning run where `train` leaves them out
/// (sentence-transformers' usual: one epoch, batches of 32, 5e-5).
pub const FINE_TUNE_EPOCHS: usize = 1;
pub const FINE_TUNE_BATCH: usize = 32;
pub const FINE_TUNE_LEARNING_RATE: f32 = 5e-5;

#[derive(Debug, Clone, PartialEq)]
pub struct TrainSpec {
    pub metrics: Vec<Metric>,
    pub splitter: Splitter,
    pub validation: Validation,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    pub temperature: f32,
    pub weight_decay: f32,
    pub adapt: Adapt,
    pub seed: u64,
    pub max_pairs: usize,
    /// `Some` when the text model itself is fine-tuned.
    pub fine_tune: Option<FineTuning>,
}

impl Default for TrainSpec {
    fn default() -> Self {
        TrainSpec {
            metrics: vec![Metric::RecallAt(1)],
            splitter: Splitter::Fields { query: 1 },
            validation: Validation::Fraction(0.1),
            epochs: 10,
            batch_size: 256,
            learning_rate: 1e-4,
            temperature: 20.0,
            weight_decay: 0.01,
            adapt: Adapt::Query,
            seed: 42,
            max_pairs: 50_000,
            fine_tune: None,
        }
    }
}

/// Fewest pairs worth training on (each side of the split).
pub const MIN_TRAIN_PAIRS: usize = 32;
pub const MIN_VALID_PAIRS: usize = 8;

fn number(value: Option<RawBsonRef<'_>>) -> Option<f64> {
    match value? {
        RawBsonRef::Double(x) => Some(x),
        RawBsonRef::Int32(x) => Some(f64::from(x)),
        RawBsonRef::Int64(x) => Some(x as f64),
        _ => None,
    }
}

impl TrainSpec {
    /// The settings an adapter trains with: these, or, when they fine-tune
    /// the model, the adapter's own defaults for `epochs`, `batchSize` and
    /// `learningRate` (those given apply to fine-tuning).
    pub fn adapter_settings(&self) -> TrainSpec {
        match self.fine_tune {
            None => self.clone(),
            Some(_) => {
                let adapter = TrainSpec::default();
                TrainSpec {
                    epochs: adapter.epochs,
                    batch_size: adapter.batch_size,
                    learning_rate: adapter.learning_rate,
                    fine_tune: None,
                    ..self.clone()
                }
            }
        }
    }

    /// Reads the training part of a semantic index definition whose keys
    /// are `keys`; `Ok(None)` when it asks for no training.
    pub fn parse(definition: &RawDocument, keys: &[String]) -> Result<Option<TrainSpec>, String> {
        let asked = ["loss", "metrics", "splitter", "validation", "train"]
            .iter()
            .any(|k| definition.get(k).ok().flatten().is_some());
        if !asked {
            return Ok(None);
        }
        match definition.get_str("loss") {
            Ok("ranking") => {}
            Ok(other) => return Err(format!("unknown loss '{other}': use 'ranking'")),
            Err(_) => return Err("training needs 'loss': 'ranking'".into()),
        }
        let mut spec = TrainSpec::default();
        if let Ok(metrics) = definition.get_array("metrics") {
            spec.metrics.clear();
            for m in metrics {
                let name = match m {
                    Ok(RawBsonRef::String(s)) => s,
                    _ => return Err("'metrics' must be an array of names such as \"r@1\"".into()),
                };
                spec.metrics.push(Metric::parse(name).ok_or_else(|| {
                    format!("unknown metric '{name}': use r@K, mrr or ndcg@K (K from 1 to 10000)")
                })?);
            }
            if spec.metrics.is_empty() {
                return Err("'metrics' is empty".into());
            }
        }
        spec.splitter = match definition.get_document("splitter") {
            Ok(s) => parse_splitter(s, keys)?,
            Err(_) if keys.len() >= 2 => Splitter::Fields { query: 1 },
            Err(_) => {
                return Err("training needs a 'splitter' (fields, identity or arrayElement) to make (query, item) pairs".into())
            }
        };
        if let Ok(v) = definition.get_document("validation") {
            spec.validation = if let Ok(filter) = v.get_document("filter") {
                Validation::Filter(filter.to_owned())
            } else {
                let f = number(v.get("fraction").ok().flatten())
                    .filter(|f| *f > 0.0 && *f < 1.0)
                    .ok_or("'validation' must be {fraction: 0..1} or {filter: {...}}")?;
                Validation::Fraction(f)
            };
        }
        if let Ok(t) = definition.get_document("train") {
            let int = |k: &str, lo: f64, hi: f64| -> Result<Option<usize>, String> {
                match t.get(k).ok().flatten() {
                    None => Ok(None),
                    v => number(v)
                        .filter(|x| x.fract() == 0.0 && *x >= lo && *x <= hi)
                        .map(|x| Some(x as usize))
                        .ok_or(format!("'train.{k}' must be an integer from {lo} to {hi}")),
                }
            };
            let real = |k: &str, lo: f64, hi: f64| -> Result<Option<f32>, String> {
                match t.get(k).ok().flatten() {
                    None => Ok(None),
                    v => number(v)
                        .filter(|x| *x >= lo && *x <= hi)
                        .map(|x| Some(x as f32))
                        .ok_or(format!("'train.{k}' must be a number from {lo} to {hi}")),
                }
            };
            let fine_tune = match t.get("fineTune").ok().flatten() {
                None | Some(RawBsonRef::Boolean(false)) => false,
                Some(RawBsonRef::Boolean(true)) => true,
                Some(_) => return Err("'train.fineTune' must be true or false".into()),
            };
            let (epochs, batch, rate) = if fine_tune {
                (FINE_TUNE_EPOCHS, FINE_TUNE_BATCH, FINE_TUNE_LEARNING_RATE)
            } else {
                (spec.epochs, spec.batch_size, spec.learning_rate)
            };
            spec.epochs = int("epochs", 1.0, 1000.0)?.unwrap_or(epochs);
            spec.batch_size = int("batchSize", 2.0, 4096.0)?.unwrap_or(batch);
            spec.max_pairs = int("maxPairs", 64.0, 1_000_000.0)?.unwrap_or(spec.max_pairs);
            spec.seed = int("seed", 0.0, 1e15)?.map_or(spec.seed, |s| s as u64);
            spec.learning_rate = real("learningRate", 1e-8, 10.0)?.unwrap_or(rate);
            spec.temperature = real("temperature", 1e-3, 1000.0)?.unwrap_or(spec.temperature);
            spec.weight_decay = real("weightDecay", 0.0, 10.0)?.unwrap_or(spec.weight_decay);
            spec.adapt = match t.get_str("adapt") {
                Ok("query") | Err(_) => Adapt::Query,
                Ok("both") => Adapt::Both,
                Ok(other) => {
                    return Err(format!(
                        "'train.adapt' must be 'query' or 'both', not '{other}'"
                    ))
                }
            };
            let layers = int("layers", 1.0, 1000.0)?;
            let max_tokens = int("maxTokens", 8.0, 100_000.0)?;
            let freeze = match t.get("freezeEmbeddings").ok().flatten() {
                None => true,
                Some(RawBsonRef::Boolean(b)) => b,
                Some(_) => return Err("'train.freezeEmbeddings' must be true or false".into()),
            };
            if fine_tune {
                spec.fine_tune = Some(FineTuning {
                    layers,
                    freeze_embeddings: freeze,
                    max_tokens,
                    adapter: t.get("adapt").ok().flatten().is_some(),
                });
            } else if let Some(k) = ["layers", "maxTokens", "freezeEmbeddings"]
                .into_iter()
                .find(|k| t.get(k).ok().flatten().is_some())
            {
                return Err(format!(
                    "'train.{k}' belongs to fine-tuning: add 'fineTune': true"
                ));
            }
        }
        Ok(Some(spec))
    }
}

fn parse_splitter(s: &RawDocument, keys: &[String]) -> Result<Splitter, String> {
    let index_of = |key: &str| keys.iter().position(|k| k == key);
    match s.get_str("kind") {
        Ok("fields") => {
            let query = s
                .get_str("query")
                .map_err(|_| "the 'fields' splitter needs 'query' (a key)")?;
            let item = s
                .get_str("item")
                .map_err(|_| "the 'fields' splitter needs 'item' (a key)")?;
            if item != keys[0] {
                return Err(format!(
                    "splitter item '{item}' must be the index's first key '{}' (the key whose vectors it stores)",
                    keys[0]
                ));
            }
            let query = index_of(query).ok_or_else(|| {
                format!("splitter query '{query}' is not one of the index's keys {keys:?}")
            })?;
            Ok(Splitter::Fields { query })
        }
        Ok("identity") => {
            if keys.len() < 2 {
                return Err("the 'identity' splitter needs two keys: the item (first) and the query (second)".into());
            }
            Ok(Splitter::Fields { query: 1 })
        }
        Ok("arrayElement") => {
            let key = s.get_str("key").unwrap_or(keys[0].as_str());
            if key != keys[0] {
                return Err(format!(
                    "the 'arrayElement' splitter works on the index's first key '{}'",
                    keys[0]
                ));
            }
            Ok(Splitter::ArrayElement)
        }
        Ok(other) => Err(format!(
            "unknown splitter '{other}': use fields, identity or arrayElement"
        )),
        Err(_) => Err("'splitter' needs a 'kind': fields, identity or arrayElement".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn parse(train: RawDocumentBuf) -> Result<Option<TrainSpec>, String> {
        let keys = vec!["text".to_string(), "title".to_string()];
        TrainSpec::parse(&rawdoc! { "loss": "ranking", "train": train }, &keys)
    }

    #[test]
    fn fine_tuning_has_its_own_defaults_and_options() {
        let spec = parse(rawdoc! { "fineTune": true }).unwrap().unwrap();
        let fine = spec.fine_tune.unwrap();
        assert_eq!(
            (spec.epochs, spec.batch_size, spec.learning_rate),
            (FINE_TUNE_EPOCHS, FINE_TUNE_BATCH, FINE_TUNE_LEARNING_RATE)
        );
        assert_eq!(
            fine,
            FineTuning {
                layers: None,
                freeze_embeddings: true,
                max_tokens: None,
                adapter: false
            }
        );
        let spec = parse(rawdoc! {
            "fineTune": true, "layers": 2, "freezeEmbeddings": false, "maxTokens": 64,
            "epochs": 3, "learningRate": 1e-4, "adapt": "query",
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            spec.fine_tune,
            Some(FineTuning {
                layers: Some(2),
                freeze_embeddings: false,
                max_tokens: Some(64),
                adapter: true
            })
        );
        assert_eq!((spec.epochs, spec.learning_rate), (3, 1e-4));
        // Its adapter trains with the adapter's defaults.
        let adapter = spec.adapter_settings();
        assert_eq!(
            (adapter.epochs, adapter.fine_tune, adapter.temperature),
            (TrainSpec::default().epochs, None, spec.temperature)
        );
        // An adapter alone keeps the adapter's defaults.
        let adapter = parse(rawdoc! { "epochs": 2 }).unwrap().unwrap();
        assert_eq!(
            (adapter.fine_tune, adapter.batch_size),
            (None, TrainSpec::default().batch_size)
        );
    }

    #[test]
    fn fine_tuning_options_are_checked() {
        for (train, needle) in [
            (rawdoc! { "fineTune": "yes" }, "'train.fineTune' must be"),
            (rawdoc! { "fineTune": true, "layers": 0 }, "'train.layers'"),
            (
                rawdoc! { "fineTune": true, "maxTokens": 2 },
                "'train.maxTokens'",
            ),
            (
                rawdoc! { "fineTune": true, "freezeEmbeddings": 1 },
                "'train.freezeEmbeddings' must be",
            ),
            (rawdoc! { "layers": 2 }, "add 'fineTune': true"),
        ] {
            let err = parse(train.clone()).unwrap_err();
            assert!(err.contains(needle), "{train:?}: {err}");
        }
    }
}

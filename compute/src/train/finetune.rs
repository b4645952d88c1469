//! Fine-tuning a BERT sentence encoder's own weights end to end (the
//! seed's last section): the encoder as a differentiable graph in candle,
//! whose autograd gives the gradient of the ranking objective with respect
//! to every trainable weight, and AdamW (candle-nn's) to follow it.
//!
//! The graph computes what [`crate::bert::BertEncoder`] computes —
//! embeddings (word + position + token type 0, LayerNorm), each layer's
//! self-attention and feed-forward block with their residual LayerNorms,
//! erf GELU, mean pooling over the tokens, L2 normalisation — over padded
//! batches (padding is masked out of attention and pooling), so weights
//! trained here load into the fast encoder and give the same vectors
//! (tested to 1e-5). Training uses the objective adapters use
//! (`train::loss_and_gradient`): for a batch of B (query, item) pairs,
//! `S = τ · Q̂ X̂ᵀ`, `loss = −mean_i log_softmax(S_i)_i` (sentence-
//! transformers' `MultipleNegativesRankingLoss`, whose `scale` is τ).
//!
//! Which weights move is [`Trainable`]: the top `layers` of the encoder
//! (or all), and the embeddings or not; the rest are constants, so no
//! gradient is kept for them.
//!
//! Sync, CPU only; no I/O but the model files a caller names.

use crate::bert::{BertEncoder, Config, ModelFiles};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

/// Errors as text (candle's, or a model file's problem).
fn failed(e: candle_core::Error) -> String {
    format!("fine-tuning: {e}")
}

/// Which weights a fine-tuning run changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trainable {
    /// The top this many encoder layers; `None` for all of them.
    pub layers: Option<usize>,
    /// The embedding tables and their LayerNorm too.
    pub embeddings: bool,
}

/// One weight: trained (a candle `Var`, which records gradients) or fixed.
enum Weight {
    Trained(Var),
    Fixed(Tensor),
}

impl Weight {
    fn tensor(&self) -> &Tensor {
        match self {
            Weight::Trained(v) => v.as_tensor(),
            Weight::Fixed(t) => t,
        }
    }
}

/// A BERT encoder's shape, as its `config.json` gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub layers: usize,
    pub max_positions: usize,
    pub layer_norm_eps: f64,
}

impl From<&Config> for Shape {
    fn from(c: &Config) -> Shape {
        Shape {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            layers: c.num_hidden_layers,
            max_positions: c.max_position_embeddings,
            layer_norm_eps: c.layer_norm_eps,
        }
    }
}

/// The tensors of the embeddings, by their Hugging Face names.
const EMBEDDINGS: [&str; 5] = [
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
];

/// The tensors of one encoder layer, after `encoder.layer.{i}.`.
const LAYER: [&str; 16] = [
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
];

/// The shape of one layer's tensor `name` (from [`LAYER`]).
fn layer_dims(name: &str, s: &Shape) -> Vec<usize> {
    let (h, i) = (s.hidden, s.intermediate);
    match name {
        "intermediate.dense.weight" => vec![i, h],
        "intermediate.dense.bias" => vec![i],
        "output.dense.weight" => vec![h, i],
        n if n.ends_with(".weight") && !n.ends_with("LayerNorm.weight") => vec![h, h],
        _ => vec![h],
    }
}

/// A BERT sentence encoder as a differentiable candle graph.
pub struct BertGraph {
    shape: Shape,
    weights: BTreeMap<String, Weight>,
    dtype: DType,
    /// The first layer the graph itself runs: 0 when the embeddings
    /// train, else the first layer with trained weights (`shape.layers`
    /// for none).
    first_trained: usize,
    /// The fast encoder over the same weights, which runs the frozen
    /// embeddings and layers below `first_trained` when set (measured
    /// faster than the graph; `load` sets it when the embeddings are
    /// frozen).
    prefix: Option<Arc<BertEncoder>>,
}

impl BertGraph {
    /// Reads `config.json` and `model.safetensors` from `dir`
    /// ([`BertGraph::from_files`]).
    pub fn load(dir: &Path, trainable: Trainable) -> Result<BertGraph, String> {
        BertGraph::from_files(&ModelFiles::read(dir)?, trainable)
    }

    /// The graph of a model's files (tensor names with or without the
    /// `bert.` prefix; weights in float32), the `trainable` weights
    /// marked. Errors: a file that does not parse, a missing tensor, a
    /// wrong shape.
    pub fn from_files(files: &ModelFiles, trainable: Trainable) -> Result<BertGraph, String> {
        let config = Config::parse(&files.config)?;
        let tensors = candle_core::safetensors::load_buffer(&files.weights, &Device::Cpu)
            .map_err(|e| format!("model.safetensors: {e}"))?;
        let mut graph = BertGraph::new(Shape::from(&config), tensors, trainable, DType::F32)?;
        if !trainable.embeddings && graph.first_trained > 0 {
            graph.prefix = Some(Arc::new(BertEncoder::from_files(files)?));
        }
        Ok(graph)
    }

    /// A graph over `tensors` (Hugging Face names, `bert.` prefix
    /// optional; extra tensors such as the pooler are ignored), computed
    /// in `dtype` (F32 to train, F64 to check gradients).
    pub fn new(
        shape: Shape,
        mut tensors: HashMap<String, Tensor>,
        trainable: Trainable,
        dtype: DType,
    ) -> Result<BertGraph, String> {
        if shape.heads == 0 || shape.hidden % shape.heads != 0 {
            return Err("hidden_size is not a multiple of num_attention_heads".into());
        }
        if let Some(n) = trainable.layers.filter(|&n| n == 0 || n > shape.layers) {
            return Err(format!(
                "cannot train the top {n} layers: the model has {}",
                shape.layers
            ));
        }
        let first_trained = trainable
            .layers
            .map_or(0, |n| shape.layers.saturating_sub(n));
        let mut names: Vec<(String, bool)> = EMBEDDINGS
            .iter()
            .map(|n| (n.to_string(), trainable.embeddings))
            .collect();
        for i in 0..shape.layers {
            for n in LAYER {
                names.push((format!("encoder.layer.{i}.{n}"), i >= first_trained));
            }
        }
        let mut weights = BTreeMap::new();
        for (name, trained) in names {
            let tensor = tensors
                .remove(&name)
                .or_else(|| tensors.remove(&format!("bert.{name}")))
                .ok_or_else(|| format!("model.safetensors: no tensor {name}"))?
                .to_dtype(dtype)
                .map_err(failed)?;
            let weight = if trained {
                Weight::Trained(Var::from_tensor(&tensor).map_err(failed)?)
            } else {
                Weight::Fixed(tensor)
            };
            weights.insert(name, weight);
        }
        let graph = BertGraph {
            shape,
            weights,
            dtype,
            first_trained: if trainable.embeddings {
                0
            } else {
                first_trained
            },
            prefix: None,
        };
        graph.check_shapes()?;
        Ok(graph)
    }

    fn check_shapes(&self) -> Result<(), String> {
        let s = self.shape;
        let h = s.hidden;
        let mut want: Vec<(String, Vec<usize>)> = vec![
            (EMBEDDINGS[1].into(), vec![s.max_positions, h]),
            (EMBEDDINGS[3].into(), vec![h]),
            (EMBEDDINGS[4].into(), vec![h]),
        ];
        for l in 0..s.layers {
            for n in LAYER {
                want.push((format!("encoder.layer.{l}.{n}"), layer_dims(n, &s)));
            }
        }
        for (name, dims) in want {
            let got = self.get(&name).dims().to_vec();
            if got != dims {
                return Err(format!("{name}: shape {got:?}, expected {dims:?}"));
            }
        }
        let words = self.get(EMBEDDINGS[0]).dims().to_vec();
        let types = self.get(EMBEDDINGS[2]).dims().to_vec();
        if words.len() != 2 || words[1] != h || types.len() != 2 || types[1] != h || types[0] == 0 {
            return Err(format!(
                "embedding tables of shapes {words:?} and {types:?} for hidden size {h}"
            ));
        }
        Ok(())
    }

    fn get(&self, name: &str) -> &Tensor {
        self.weights
            .get(name)
            .map(Weight::tensor)
            .unwrap_or_else(|| panic!("weight {name} checked at load"))
    }

    /// The trained weights (what the optimiser updates), in name order.
    pub fn trained(&self) -> Vec<(&str, &Var)> {
        self.weights
            .iter()
            .filter_map(|(n, w)| match w {
                Weight::Trained(v) => Some((n.as_str(), v)),
                Weight::Fixed(_) => None,
            })
            .collect()
    }

    /// The encoder's shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// `x·Wᵀ + b` over the last dimension of `x` (`[.., in]`), with `W`
    /// `out × in` (PyTorch's layout).
    fn linear(&self, x: &Tensor, name: &str) -> candle_core::Result<Tensor> {
        let w = self.get(&format!("{name}.weight"));
        let b = self.get(&format!("{name}.bias"));
        // One product over every token (`[rows, in]`), not one per
        // sequence: measured 1.17× the pairs/s of fine-tuning.
        let mut dims = x.dims().to_vec();
        let inp = dims.pop().unwrap_or(1);
        let rows: usize = dims.iter().product();
        let y = x.reshape((rows, inp))?.matmul(&w.t()?)?.broadcast_add(b)?;
        dims.push(w.dims()[0]);
        y.reshape(dims)
    }

    /// LayerNorm over the last dimension: `(x − mean) / √(var + ε) · g + b`
    /// with the biased variance, as PyTorch computes it.
    fn layer_norm(&self, x: &Tensor, name: &str) -> candle_core::Result<Tensor> {
        let (g, b) = (
            self.get(&format!("{name}.weight")),
            self.get(&format!("{name}.bias")),
        );
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.shape.layer_norm_eps)?.sqrt()?)?;
        normed.broadcast_mul(g)?.broadcast_add(b)
    }

    /// Unit sentence vectors (`[B, hidden]`) of token-id sequences (each
    /// at least one token, at most `max_positions`), as the fast encoder
    /// computes them. Errors: an empty or over-long sequence, an id
    /// outside the vocabulary, candle's.
    pub fn embed(&self, sequences: &[Vec<u32>]) -> Result<Tensor, String> {
        let vocab = self.get(EMBEDDINGS[0]).dims()[0];
        let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
        if sequences.iter().any(Vec::is_empty) || longest > self.shape.max_positions {
            return Err(format!(
                "sequences must have 1 to {} tokens",
                self.shape.max_positions
            ));
        }
        if let Some(bad) = sequences.iter().flatten().find(|&&id| id as usize >= vocab) {
            return Err(format!("token id {bad} is outside the model's vocabulary"));
        }
        self.forward(sequences, longest).map_err(failed)
    }

    /// [`Self::embed`] as float32 rows, one per sequence.
    pub fn vectors(&self, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, String> {
        self.embed(sequences)?
            .to_dtype(DType::F32)
            .and_then(|t| t.to_vec2())
            .map_err(failed)
    }

    fn forward(&self, sequences: &[Vec<u32>], t: usize) -> candle_core::Result<Tensor> {
        let s = self.shape;
        let (b, h) = (sequences.len(), s.hidden);
        let (heads, dh) = (s.heads, s.hidden / s.heads);
        let dev = Device::Cpu;
        let mut mask = Vec::with_capacity(b * t);
        for seq in sequences {
            mask.extend((0..t).map(|i| if i < seq.len() { 1.0f32 } else { 0.0 }));
        }
        let mask = Tensor::from_vec(mask, (b, t), &dev)?.to_dtype(self.dtype)?;
        let (mut x, first) = match &self.prefix {
            Some(encoder) => {
                // The frozen bottom, padded with zeros (masked below).
                let refs: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
                let mut padded = vec![0f32; b * t * h];
                for (i, states) in encoder
                    .hidden_states(&refs, self.first_trained)
                    .map_err(candle_core::Error::Msg)?
                    .into_iter()
                    .enumerate()
                {
                    padded[i * t * h..][..states.len()].copy_from_slice(&states);
                }
                let x = Tensor::from_vec(padded, (b, t, h), &dev)?.to_dtype(self.dtype)?;
                (x, self.first_trained)
            }
            None => {
                let ids: Vec<u32> = sequences
                    .iter()
                    .flat_map(|seq| seq.iter().copied().chain(std::iter::repeat(0)).take(t))
                    .collect();
                let ids = Tensor::from_vec(ids, b * t, &dev)?;
                let x = self
                    .get(EMBEDDINGS[0])
                    .index_select(&ids, 0)?
                    .reshape((b, t, h))?
                    .broadcast_add(&self.get(EMBEDDINGS[1]).narrow(0, 0, t)?)?
                    .broadcast_add(&self.get(EMBEDDINGS[2]).narrow(0, 0, 1)?)?;
                (self.layer_norm(&x, "embeddings.LayerNorm")?, 0)
            }
        };
        // 0 for tokens, a large negative number for padding: e^(−1e9) is 0.
        let bias = mask.affine(1e9, -1e9)?.reshape((b, 1, 1, t))?;
        let scale = 1.0 / (dh as f64).sqrt();
        for l in first..s.layers {
            let p = format!("encoder.layer.{l}");
            let split = |name: &str| -> candle_core::Result<Tensor> {
                self.linear(&x, &format!("{p}.attention.self.{name}"))?
                    .reshape((b, t, heads, dh))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = (split("query")?, split("key")?, split("value")?);
            let scores = q
                .matmul(&k.t()?.contiguous()?)?
                .affine(scale, 0.0)?
                .broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let context = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, h))?;
            let attended = (self.linear(&context, &format!("{p}.attention.output.dense"))? + &x)?;
            let attended =
                self.layer_norm(&attended, &format!("{p}.attention.output.LayerNorm"))?;
            let inner = self
                .linear(&attended, &format!("{p}.intermediate.dense"))?
                .gelu_erf()?;
            let out = (self.linear(&inner, &format!("{p}.output.dense"))? + &attended)?;
            x = self.layer_norm(&out, &format!("{p}.output.LayerNorm"))?;
        }
        let weights = mask.unsqueeze(2)?;
        let pooled = x
            .broadcast_mul(&weights)?
            .sum(1)?
            .broadcast_div(&mask.sum_keepdim(1)?)?;
        let norms = pooled.sqr()?.sum_keepdim(1)?.sqrt()?;
        pooled.broadcast_div(&norms)
    }

    /// Every weight in float32 under its Hugging Face name (no prefix), as
    /// `model.safetensors` holds them; [`crate::bert::BertEncoder::load`]
    /// reads the file this writes.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        std::fs::write(path, self.to_safetensors()?).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// What [`BertGraph::save`] writes, in memory.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, String> {
        let tensors: BTreeMap<String, Tensor> = self
            .weights
            .iter()
            .map(|(n, w)| Ok((n.clone(), w.tensor().to_dtype(DType::F32)?)))
            .collect::<candle_core::Result<_>>()
            .map_err(failed)?;
        safetensors::serialize(&tensors, None).map_err(|e| format!("model.safetensors: {e}"))
    }
}

/// The ranking loss of a batch: `S = τ · Q̂ X̂ᵀ` over unit rows `q` and
/// `x` (`[B, d]` each, pair `i` in row `i`), `−mean_i log_softmax(S_i)_i`.
pub fn ranking_loss(q: &Tensor, x: &Tensor, temperature: f64) -> Result<Tensor, String> {
    let run = || -> candle_core::Result<Tensor> {
        let b = q.dims()[0];
        let scores = q.matmul(&x.t()?)?.affine(temperature, 0.0)?;
        let log_p = candle_nn::ops::log_softmax(&scores, 1)?;
        let eye = Tensor::eye(b, q.dtype(), q.device())?;
        (log_p * eye)?.sum_all()?.affine(-1.0 / b as f64, 0.0)
    };
    run().map_err(failed)
}

/// `ids` cut to at most `max` tokens, keeping the last one (the `[SEP]`
/// the tokenizer ends every sequence with), as the tokenizer's own
/// truncation does; unchanged when shorter or when `max` is under 2.
pub fn truncate(mut ids: Vec<u32>, max: usize) -> Vec<u32> {
    if ids.len() > max && max >= 2 {
        let last = ids[ids.len() - 1];
        ids.truncate(max - 1);
        ids.push(last);
    }
    ids
}

/// How a fine-tuning run goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FineTuneSpec {
    pub epochs: usize,
    /// Pairs per step (each pair's item is the other queries' negative).
    pub batch_size: usize,
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// τ in the loss (sentence-transformers' `scale`, 20 by default).
    pub temperature: f64,
    /// Seeds the order pairs are visited in.
    pub seed: u64,
}

/// Where a run stands, reported after each step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// 1-based.
    pub epoch: usize,
    /// Steps taken so far, over all epochs.
    pub step: usize,
    pub steps: usize,
    /// This step's loss.
    pub loss: f32,
    /// Pairs per second so far.
    pub pairs_per_s: f64,
}

/// One finished epoch: its mean loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Epoch {
    pub loss: f32,
}

/// How far back towards chance the loss on the probe pairs (a fixed
/// sample of the training pairs) may rise after an epoch before the run
/// counts as diverged: half the way from its lowest value so far (the
/// untrained model's included) to chance level, and at least a tenth of
/// chance. Chance is `ln(batch)`, the in-batch softmax cross-entropy of a
/// model whose scores are all equal (InfoNCE's bound: van den Oord et al.,
/// 2018, "Representation Learning with Contrastive Predictive Coding").
pub const DIVERGED: f32 = 0.5;

/// Most probe pairs: four batches of 32.
const PROBE: usize = 128;

/// The lowest probe loss so far, when `after` (an epoch's) rose past the
/// [`DIVERGED`] line between it and `chance`, or is not a number.
fn diverged(best: f32, after: f32, chance: f32) -> Option<f32> {
    let margin = (DIVERGED * (chance - best)).max(0.1 * chance);
    (!after.is_finite() || after > best + margin).then_some(best)
}

/// The mean ranking loss of `graph` over `probe`, in batches of `batch`.
fn probe_loss(
    graph: &BertGraph,
    probe: &[&(Vec<u32>, Vec<u32>)],
    batch: usize,
    temperature: f64,
) -> Result<f32, String> {
    let (mut total, mut n) = (0.0f64, 0usize);
    for chunk in probe.chunks(batch).filter(|c| c.len() >= 2) {
        let queries: Vec<Vec<u32>> = chunk.iter().map(|p| p.0.clone()).collect();
        let items: Vec<Vec<u32>> = chunk.iter().map(|p| p.1.clone()).collect();
        let loss = ranking_loss(&graph.embed(&queries)?, &graph.embed(&items)?, temperature)?
            .to_dtype(DType::F32)
            .and_then(|l| l.to_scalar::<f32>())
            .map_err(failed)?;
        total += f64::from(loss);
        n += 1;
    }
    Ok((total / n.max(1) as f64) as f32)
}

/// Fine-tunes `graph`'s trainable weights on `(query, item)` token-id
/// pairs with the ranking loss and AdamW. `progress` is called after every
/// step and stops the run by returning `false` (the epochs finished so far
/// are returned). The run diverged, and errs (the graph's weights are
/// then not to be used), on a loss that is not a number, or when the loss
/// on the probe pairs (whole batches of training pairs drawn once with the
/// seed, up to 128) after an epoch rose back over half-way to chance from
/// its lowest value before ([`DIVERGED`]; the untrained model's included):
/// a loss that rose over a whole epoch.
/// Other errors: [`BertGraph::embed`]'s.
pub fn fine_tune(
    graph: &BertGraph,
    pairs: &[(Vec<u32>, Vec<u32>)],
    spec: &FineTuneSpec,
    mut progress: impl FnMut(&Progress) -> bool,
) -> Result<Vec<Epoch>, String> {
    let vars: Vec<Var> = graph
        .trained()
        .into_iter()
        .map(|(_, v)| v.clone())
        .collect();
    if vars.is_empty() {
        return Err("nothing to fine-tune: no layer is trainable".into());
    }
    let mut optimiser = AdamW::new(
        vars,
        ParamsAdamW {
            lr: spec.learning_rate,
            weight_decay: spec.weight_decay,
            ..ParamsAdamW::default()
        },
    )
    .map_err(failed)?;
    let batch = spec.batch_size.max(2);
    let per_epoch = pairs.len() / batch;
    if per_epoch == 0 {
        return Err(format!("fine-tuning needs at least {batch} pairs"));
    }
    let steps = per_epoch * spec.epochs;
    let started = std::time::Instant::now();
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    let mut rng = spec.seed | 1;
    super::shuffle(&mut order, &mut rng);
    let probe_batches = (PROBE / batch).clamp(1, per_epoch);
    let probe: Vec<&(Vec<u32>, Vec<u32>)> = order
        .iter()
        .take(probe_batches * batch)
        .map(|&i| &pairs[i])
        .collect();
    let chance = (batch as f32).ln();
    let mut best = probe_loss(graph, &probe, batch, spec.temperature)?;
    let mut epochs = Vec::new();
    let mut step = 0;
    for epoch in 1..=spec.epochs {
        super::shuffle(&mut order, &mut rng);
        let mut total = 0.0f64;
        for chunk in order.chunks_exact(batch) {
            let queries: Vec<Vec<u32>> = chunk.iter().map(|&i| pairs[i].0.clone()).collect();
            let items: Vec<Vec<u32>> = chunk.iter().map(|&i| pairs[i].1.clone()).collect();
            let loss = ranking_loss(
                &graph.embed(&queries)?,
                &graph.embed(&items)?,
                spec.temperature,
            )?;
            let value = loss
                .to_dtype(DType::F32)
                .and_then(|l| l.to_scalar::<f32>())
                .map_err(failed)?;
            if !value.is_finite() {
                return Err(format!(
                    "fine-tuning stopped at epoch {epoch}, step {}: the loss is not a number (try a lower learningRate)",
                    step + 1
                ));
            }
            optimiser.backward_step(&loss).map_err(failed)?;
            step += 1;
            total += f64::from(value);
            let report = Progress {
                epoch,
                step,
                steps,
                loss: value,
                pairs_per_s: (step * batch) as f64 / started.elapsed().as_secs_f64().max(1e-9),
            };
            if !progress(&report) {
                return Ok(epochs);
            }
        }
        let mean = (total / per_epoch as f64) as f32;
        // The same pairs before and after: batch-to-batch noise is not
        // divergence, a loss gone half-way back to chance is.
        let after = probe_loss(graph, &probe, batch, spec.temperature)?;
        if let Some(best) = diverged(best, after, chance) {
            return Err(format!(
                "fine-tuning stopped after epoch {epoch}: the loss on {} fixed training pairs rose from {best:.4} to {after:.4} over the epoch, towards chance ({chance:.4}) (try a lower learningRate)",
                probe.len()
            ));
        }
        best = best.min(after);
        epochs.push(Epoch { loss: mean });
    }
    Ok(epochs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small BERT with seeded random weights: vocabulary 30, hidden 8,
    /// two heads, two layers.
    fn tiny(trainable: Trainable, dtype: DType) -> BertGraph {
        let shape = Shape {
            hidden: 8,
            intermediate: 12,
            heads: 2,
            layers: 2,
            max_positions: 16,
            layer_norm_eps: 1e-12,
        };
        let mut seed = 0x5eedu64;
        let mut random = |dims: &[usize], around: f64| {
            let n: usize = dims.iter().product();
            let values: Vec<f64> = (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    around + ((seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5)
                })
                .collect();
            Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
        };
        let h = shape.hidden;
        let mut tensors = HashMap::new();
        tensors.insert(EMBEDDINGS[0].to_string(), random(&[30, h], 0.0));
        tensors.insert(EMBEDDINGS[1].to_string(), random(&[16, h], 0.0));
        tensors.insert(EMBEDDINGS[2].to_string(), random(&[2, h], 0.0));
        tensors.insert(EMBEDDINGS[3].to_string(), random(&[h], 1.0));
        tensors.insert(EMBEDDINGS[4].to_string(), random(&[h], 0.0));
        for l in 0..shape.layers {
            for n in LAYER {
                let dims = layer_dims(n, &shape);
                let around = if n.ends_with("LayerNorm.weight") {
                    1.0
                } else {
                    0.0
                };
                tensors.insert(format!("encoder.layer.{l}.{n}"), random(&dims, around));
            }
        }
        BertGraph::new(shape, tensors, trainable, dtype).unwrap()
    }

    fn batch() -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
        // Different lengths: padding must not change the loss.
        (
            vec![vec![1, 5, 7], vec![2, 9], vec![3, 4, 8, 11, 6]],
            vec![vec![1, 12, 7, 13], vec![2, 14], vec![3, 15, 16]],
        )
    }

    fn loss_of(graph: &BertGraph) -> Tensor {
        let (q, x) = batch();
        ranking_loss(&graph.embed(&q).unwrap(), &graph.embed(&x).unwrap(), 5.0).unwrap()
    }

    #[test]
    fn autograd_matches_finite_differences_through_the_whole_encoder() {
        let all = Trainable {
            layers: None,
            embeddings: true,
        };
        let graph = tiny(all, DType::F64);
        let loss = loss_of(&graph);
        let grads = loss.backward().unwrap();
        let (mut checked, mut moving) = (0, 0);
        for (name, var) in graph.trained() {
            let grad: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let values: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            // A few entries of every weight, those of used tokens for the
            // word table (unused rows have no gradient).
            let picks: Vec<usize> = if name == EMBEDDINGS[0] {
                vec![8 + 3, 9 * 8 + 1, 16 * 8 + 7]
            } else {
                vec![0, values.len() / 2, values.len() - 1]
            };
            for at in picks {
                let at_value = |delta: f64| {
                    let mut moved = values.clone();
                    moved[at] += delta;
                    let t = Tensor::from_vec(moved, var.as_tensor().dims(), &Device::Cpu).unwrap();
                    var.set(&t).unwrap();
                    loss_of(&graph).to_scalar::<f64>().unwrap()
                };
                let eps = 1e-6;
                let numeric = (at_value(eps) - at_value(-eps)) / (2.0 * eps);
                at_value(0.0);
                let analytic = grad[at];
                assert!(
                    (numeric - analytic).abs() <= 1e-6 + 1e-4 * numeric.abs(),
                    "{name}[{at}]: autograd {analytic}, finite differences {numeric}"
                );
                checked += 1;
                moving += usize::from(numeric.abs() > 1e-5);
            }
        }
        // Every tensor of the embeddings and of both layers, and the loss
        // moves with most entries (an all-zero gradient would pass above).
        assert_eq!(checked, 3 * (EMBEDDINGS.len() + 2 * LAYER.len()));
        assert!(
            moving * 4 >= checked * 3,
            "{moving} of {checked} move the loss"
        );
    }

    #[test]
    fn only_the_named_weights_are_trained_and_padding_changes_nothing() {
        let top = Trainable {
            layers: Some(1),
            embeddings: false,
        };
        let graph = tiny(top, DType::F64);
        let trained: Vec<&str> = graph.trained().into_iter().map(|(n, _)| n).collect();
        assert_eq!(trained.len(), LAYER.len());
        assert!(trained.iter().all(|n| n.starts_with("encoder.layer.1.")));
        // A sequence alone and padded in a batch with a longer one.
        let alone: Vec<f64> = graph
            .embed(&[vec![4, 5]])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let padded = graph.embed(&[vec![4, 5], vec![1, 2, 3, 4, 5, 6]]).unwrap();
        let first: Vec<f64> = padded.get(0).unwrap().to_vec1().unwrap();
        for (a, b) in alone.iter().zip(&first) {
            assert!((a - b).abs() < 1e-12, "{alone:?} {first:?}");
        }
        let norm: f64 = first.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-12);
        assert!(graph.embed(&[vec![]]).is_err());
        assert!(graph.embed(&[vec![30]]).is_err());
    }

    #[test]
    fn a_probe_loss_half_way_back_to_chance_is_divergence_and_noise_is_not() {
        // Batches of 8: chance ln 8 = 2.079.
        let chance = 8f32.ln();
        // Levelled off: rises well short of chance are noise.
        assert_eq!(diverged(0.28, 0.31, chance), None);
        assert_eq!(diverged(0.28, 1.10, chance), None);
        // Half-way back to chance from the best, or not a number.
        assert_eq!(diverged(0.28, 1.20, chance), Some(0.28));
        assert_eq!(diverged(0.28, f32::NAN, chance), Some(0.28));
        // A model that starts near chance: a tenth of chance is noise.
        assert_eq!(diverged(1.19, 1.30, 4f32.ln()), None);
        assert_eq!(diverged(1.19, 1.36, 4f32.ln()), Some(1.19));
        // A loss that has fallen far: a relative jump is not divergence.
        assert_eq!(diverged(0.01, 0.05, chance), None);
    }

    #[test]
    fn fine_tuning_lowers_the_loss_and_a_nan_stops_it() {
        let top = Trainable {
            layers: Some(2),
            embeddings: true,
        };
        let graph = tiny(top, DType::F32);
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..16u32)
            .map(|i| {
                (
                    vec![1 + i % 29, 2 + (i * 7) % 28],
                    vec![1 + i % 29, 5, 3 + i % 27],
                )
            })
            .collect();
        let spec = FineTuneSpec {
            epochs: 6,
            batch_size: 4,
            learning_rate: 0.01,
            weight_decay: 0.0,
            temperature: 5.0,
            seed: 7,
        };
        let mut seen = Vec::new();
        let epochs = fine_tune(&graph, &pairs, &spec, |p| {
            seen.push(*p);
            true
        })
        .unwrap();
        assert_eq!(epochs.len(), 6);
        assert!(epochs[5].loss < epochs[0].loss, "{epochs:?}");
        assert_eq!(seen.len(), 24);
        assert_eq!(seen.last().unwrap().step, 24);
        assert_eq!(seen.last().unwrap().steps, 24);
        // Stopped by the caller after two steps.
        let mut calls = 0;
        let stopped = fine_tune(&graph, &pairs, &spec, |_| {
            calls += 1;
            calls < 2
        })
        .unwrap();
        assert!(stopped.is_empty());
        assert_eq!(calls, 2);
        // One far too high, but finite, on the trained weights: the loss
        // on the probe pairs goes back towards chance over the epoch.
        let high = FineTuneSpec {
            learning_rate: 2.0,
            ..spec
        };
        let err = fine_tune(&graph, &pairs, &high, |_| true).unwrap_err();
        assert!(
            err.contains("after epoch 1") && err.contains("rose"),
            "{err}"
        );
        // A learning rate that blows the weights up.
        let wild = FineTuneSpec {
            learning_rate: f64::INFINITY,
            ..spec
        };
        let err = fine_tune(&graph, &pairs, &wild, |_| true).unwrap_err();
        assert!(
            err.contains("not a number") || err.contains("rose"),
            "{err}"
        );
    }
}

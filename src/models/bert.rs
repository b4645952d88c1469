//! A BERT-family sentence encoder run on the CPU: tokenizer, transformer
//! forward pass, mean pooling and L2 normalisation, the recipe of
//! sentence-transformers' all-MiniLM-L6-v2 (and any BERT safetensors
//! directory with `config.json` and `tokenizer.json`).
//!
//! Sync and blocking: callers run it on blocking threads.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

/// Tokens per input after truncation (sentence-transformers' `max_seq_length`
/// for all-MiniLM-L6-v2; `tokenizer.json` bakes in 128, which we override).
pub const MAX_TOKENS: usize = 256;

#[derive(Debug, Deserialize)]
struct Config {
    hidden_size: usize,
    intermediate_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    hidden_act: Option<String>,
    max_position_embeddings: usize,
}

fn default_eps() -> f64 {
    1e-12
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
}

/// A loaded encoder. `encode` is `&self` and may run on several threads.
pub struct BertEncoder {
    tokenizer: Tokenizer,
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    max_tokens: usize,
}

/// One encoded input: its vector and whether its text was truncated.
pub struct Encoded {
    pub vector: Vec<f32>,
    pub truncated: bool,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn linear(vb: &VarBuilder, name: &str, inp: usize, out: usize) -> candle_core::Result<Linear> {
    let w = vb.get((out, inp), &format!("{name}.weight"))?;
    let b = vb.get(out, &format!("{name}.bias"))?;
    Ok(Linear::new(w, Some(b)))
}

fn layer_norm(
    vb: &VarBuilder,
    name: &str,
    size: usize,
    eps: f64,
) -> candle_core::Result<LayerNorm> {
    let w = vb.get(size, &format!("{name}.weight"))?;
    let b = vb.get(size, &format!("{name}.bias"))?;
    Ok(LayerNorm::new(w, b, eps))
}

impl BertEncoder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| format!("config.json: {e}"))?;
        if let Some(t) = &config.model_type {
            if t != "bert" {
                return Err(format!(
                    "config.json: model_type {t:?} is not a BERT-family model"
                ));
            }
        }
        if let Some(act) = &config.hidden_act {
            if act != "gelu" {
                return Err(format!(
                    "config.json: hidden_act {act:?} is not supported (only gelu)"
                ));
            }
        }
        if config.hidden_size % config.num_attention_heads != 0 {
            return Err("config.json: hidden_size is not a multiple of num_attention_heads".into());
        }
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| format!("tokenizer.json: {e}"))?;
        let max_tokens = MAX_TOKENS.min(config.max_position_embeddings);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(err)?;
        // Batches are padded here, per length group.
        tokenizer.with_padding(None);

        let weights = read("model.safetensors")?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(err)?;
        // Some exports prefix every tensor with the architecture name.
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp("bert")
        };
        Self::from_weights(tokenizer, &config, &vb, max_tokens)
            .map_err(|e| format!("model.safetensors: {e}"))
    }

    fn from_weights(
        tokenizer: Tokenizer,
        c: &Config,
        vb: &VarBuilder,
        max_tokens: usize,
    ) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        let emb = |name: &str| -> candle_core::Result<Embedding> {
            let w = vb.get_unchecked(&format!("embeddings.{name}.weight"))?;
            let dims = w.dim(1)?;
            Ok(Embedding::new(w, dims))
        };
        let words = emb("word_embeddings")?;
        let positions = emb("position_embeddings")?;
        let token_types = emb("token_type_embeddings")?;
        let embed_norm = layer_norm(vb, "embeddings.LayerNorm", h, c.layer_norm_eps)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: linear(vb, &format!("{p}.attention.self.query"), h, h)?,
                key: linear(vb, &format!("{p}.attention.self.key"), h, h)?,
                value: linear(vb, &format!("{p}.attention.self.value"), h, h)?,
                attn_out: linear(vb, &format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: layer_norm(
                    vb,
                    &format!("{p}.attention.output.LayerNorm"),
                    h,
                    c.layer_norm_eps,
                )?,
                inter: linear(
                    vb,
                    &format!("{p}.intermediate.dense"),
                    h,
                    c.intermediate_size,
                )?,
                out: linear(vb, &format!("{p}.output.dense"), c.intermediate_size, h)?,
                out_norm: layer_norm(vb, &format!("{p}.output.LayerNorm"), h, c.layer_norm_eps)?,
            });
        }
        Ok(BertEncoder {
            tokenizer,
            words,
            positions,
            token_types,
            embed_norm,
            layers,
            heads: c.num_attention_heads,
            hidden: h,
            max_tokens,
        })
    }

    /// Output dimension.
    pub fn dimensions(&self) -> usize {
        self.hidden
    }

    /// Tokens an input may have before it is truncated.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Encodes `texts` into unit vectors, `batch` at a time. Inputs are
    /// grouped by length so a batch pads little; results come back in input
    /// order.
    pub fn encode(&self, texts: &[&str], batch: usize) -> Result<Vec<Encoded>, String> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(err)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len()));
        let mut out: Vec<Option<Encoded>> = (0..texts.len()).map(|_| None).collect();
        for chunk in order.chunks(batch.max(1)) {
            let longest = chunk
                .iter()
                .map(|&i| encodings[i].len())
                .max()
                .unwrap_or(0)
                .max(1);
            let mut ids = Vec::with_capacity(chunk.len() * longest);
            let mut mask = Vec::with_capacity(chunk.len() * longest);
            for &i in chunk {
                let e = &encodings[i];
                ids.extend_from_slice(e.get_ids());
                mask.extend(e.get_attention_mask().iter().map(|&m| m as f32));
                for _ in e.len()..longest {
                    ids.push(0);
                    mask.push(0.0);
                }
            }
            let vectors = self
                .forward(&ids, &mask, chunk.len(), longest)
                .map_err(err)?;
            for (row, &i) in chunk.iter().enumerate() {
                let truncated = !encodings[i].get_overflowing().is_empty();
                out[i] = Some(Encoded {
                    vector: vectors[row].clone(),
                    truncated,
                });
            }
        }
        Ok(out
            .into_iter()
            .map(|e| e.expect("every input encoded"))
            .collect())
    }

    fn forward(
        &self,
        ids: &[u32],
        mask: &[f32],
        batch: usize,
        len: usize,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let dev = Device::Cpu;
        let ids = Tensor::from_slice(ids, (batch, len), &dev)?;
        let mask = Tensor::from_slice(mask, (batch, len), &dev)?;
        let positions = Tensor::arange(0u32, len as u32, &dev)?;
        let types = Tensor::zeros((batch, len), DType::U32, &dev)?;
        let x = self
            .words
            .forward(&ids)?
            .broadcast_add(&self.positions.forward(&positions)?)?
            .add(&self.token_types.forward(&types)?)?;
        let mut x = self.embed_norm.forward(&x)?;
        // Additive attention mask: 0 where attended, a large negative where padded.
        let bias = ((mask.clone() - 1.0)? * 1e9)?.reshape((batch, 1, 1, len))?;
        let head = self.hidden / self.heads;
        let scale = 1.0 / (head as f64).sqrt();
        for l in &self.layers {
            let split = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((batch, len, self.heads, head))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = split(l.query.forward(&x)?)?;
            let k = split(l.key.forward(&x)?)?;
            let v = split(l.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((batch, len, self.hidden))?;
            let a = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + &x)?)?;
            let i = l.inter.forward(&a)?.gelu_erf()?;
            x = l.out_norm.forward(&(l.out.forward(&i)? + &a)?)?;
        }
        // Mean over attended tokens, then unit length.
        let m = mask.unsqueeze(2)?;
        let summed = x.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        mean.broadcast_div(&norm)?.to_vec2::<f32>()
    }
}

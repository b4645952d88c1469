//! A BERT-family sentence encoder run on the CPU: tokenizer, transformer
//! forward pass, mean pooling and L2 normalisation, the recipe of
//! sentence-transformers' all-MiniLM-L6-v2 (and of any BERT safetensors
//! directory with `config.json` and `tokenizer.json`).
//!
//! The forward pass is written out here over flat `f32` buffers, with the
//! `gemm` crate for the matrix products. Sequences are packed without
//! padding (linear layers work per token; attention runs per sequence over
//! its own tokens only), and batches run on separate threads, each
//! single-threaded, so encoding uses every core with no idle-spinning
//! worker pool inside the proxy. Sync and blocking: callers run it on
//! blocking threads.

use gemm::{gemm, Parallelism};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use std::path::Path;
use tokenizers::{Tokenizer, TruncationParams};

/// Tokens per input after truncation (sentence-transformers' `max_seq_length`
/// for all-MiniLM-L6-v2; `tokenizer.json` bakes in 128, which we override).
pub const MAX_TOKENS: usize = 256;

/// A BERT model's `config.json`, the fields the encoder reads.
#[derive(Debug, Deserialize)]
pub(crate) struct Config {
    pub(crate) hidden_size: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) num_attention_heads: usize,
    pub(crate) num_hidden_layers: usize,
    #[serde(default = "default_eps")]
    pub(crate) layer_norm_eps: f64,
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    hidden_act: Option<String>,
    pub(crate) max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
}

impl Config {
    /// Parses `config.json` and refuses what the encoder cannot run (not
    /// BERT, an activation other than erf GELU, heads that do not divide
    /// the hidden size).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Config, String> {
        let c: Config = serde_json::from_slice(bytes).map_err(|e| format!("config.json: {e}"))?;
        if let Some(t) = &c.model_type {
            if t != "bert" {
                return Err(format!("config.json: model_type {t:?} is not a BERT model"));
            }
        }
        if let Some(act) = &c.hidden_act {
            if act != "gelu" {
                return Err(format!(
                    "config.json: hidden_act {act:?} is not supported (only gelu)"
                ));
            }
        }
        if c.hidden_size == 0
            || c.num_attention_heads == 0
            || c.hidden_size % c.num_attention_heads != 0
        {
            return Err("config.json: hidden_size is not a multiple of num_attention_heads".into());
        }
        Ok(c)
    }
}

fn default_eps() -> f64 {
    1e-12
}

fn default_type_vocab() -> usize {
    2
}

/// `y = x·Wᵀ + b` with `W` stored `out × inp`, row-major (PyTorch's layout).
struct Linear {
    w: Vec<f32>,
    b: Vec<f32>,
    inp: usize,
    out: usize,
}

impl Linear {
    /// `x` is `rows × inp`; writes `rows × out` into `y`.
    fn forward(&self, x: &[f32], rows: usize, y: &mut Vec<f32>) {
        y.clear();
        y.reserve(rows * self.out);
        for _ in 0..rows {
            y.extend_from_slice(&self.b);
        }
        // W is out×inp: read as its transpose, accumulated onto the bias.
        crate::linalg::matmul(y, x, &self.w, (rows, self.out, self.inp), false, true, true);
    }
}

struct Norm {
    g: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

impl Norm {
    /// Normalises each row of `x` in place.
    fn forward(&self, x: &mut [f32]) {
        let n = self.g.len();
        for row in x.chunks_exact_mut(n) {
            let mean = row.iter().sum::<f32>() / n as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(&self.g).zip(&self.b) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    }
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    inter: Linear,
    out: Linear,
    out_norm: Norm,
}

/// A loaded encoder. `encode` is `&self` and may run on several threads.
pub struct BertEncoder {
    tokenizer: Tokenizer,
    words: Vec<f32>,
    positions: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    max_tokens: usize,
    threads: usize,
}

/// One encoded input: its vector and whether its text was truncated.
pub struct Encoded {
    pub vector: Vec<f32>,
    pub truncated: bool,
}

struct Weights<'a> {
    tensors: SafeTensors<'a>,
    prefix: &'static str,
}

impl Weights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let full = format!("{}{name}", self.prefix);
        let view = self
            .tensors
            .tensor(&full)
            .map_err(|e| format!("{full}: {e}"))?;
        if view.dtype() != Dtype::F32 {
            return Err(format!(
                "{full}: {:?} weights are not supported (only F32)",
                view.dtype()
            ));
        }
        if view.shape() != shape {
            return Err(format!(
                "{full}: shape {:?}, expected {shape:?}",
                view.shape()
            ));
        }
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn linear(&self, name: &str, inp: usize, out: usize) -> Result<Linear, String> {
        Ok(Linear {
            w: self.get(&format!("{name}.weight"), &[out, inp])?,
            b: self.get(&format!("{name}.bias"), &[out])?,
            inp,
            out,
        })
    }

    fn norm(&self, name: &str, size: usize, eps: f64) -> Result<Norm, String> {
        Ok(Norm {
            g: self.get(&format!("{name}.weight"), &[size])?,
            b: self.get(&format!("{name}.bias"), &[size])?,
            eps: eps as f32,
        })
    }
}

/// Query, key and value projections as one `3h × h` matrix: one product
/// instead of three.
fn fused_qkv(w: &Weights<'_>, p: &str, h: usize) -> Result<Linear, String> {
    let mut weight = Vec::with_capacity(3 * h * h);
    let mut bias = Vec::with_capacity(3 * h);
    for part in ["query", "key", "value"] {
        let l = w.linear(&format!("{p}.attention.self.{part}"), h, h)?;
        weight.extend(l.w);
        bias.extend(l.b);
    }
    Ok(Linear {
        w: weight,
        b: bias,
        inp: h,
        out: 3 * h,
    })
}

/// Largest model file read (BERT-large's weights are 1.3 GB in float32).
pub const MAX_MODEL_FILE: u64 = 4 << 30;

/// A BERT model directory's three files, in memory.
#[derive(Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// `config.json`.
    pub config: Vec<u8>,
    /// `tokenizer.json`.
    pub tokenizer: Vec<u8>,
    /// `model.safetensors`.
    pub weights: Vec<u8>,
}

impl ModelFiles {
    /// The file names, in the order of the fields.
    pub const NAMES: [&'static str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

    /// Reads the three files from `dir`. Each must be a regular file (a
    /// device or FIFO is refused before it is opened) of at most
    /// [`MAX_MODEL_FILE`] bytes.
    pub fn read(dir: &Path) -> Result<ModelFiles, String> {
        let read = |name: &str| {
            use std::io::Read;
            let path = dir.join(name);
            let shown = path.display();
            let meta = std::fs::metadata(&path).map_err(|e| format!("{shown}: {e}"))?;
            if !meta.is_file() {
                return Err(format!("{shown}: not a regular file"));
            }
            if meta.len() > MAX_MODEL_FILE {
                return Err(format!("{shown}: larger than {MAX_MODEL_FILE} bytes"));
            }
            let mut bytes = Vec::new();
            std::fs::File::open(&path)
                .and_then(|f| f.take(MAX_MODEL_FILE + 1).read_to_end(&mut bytes))
                .map_err(|e| format!("{shown}: {e}"))?;
            if bytes.len() as u64 > MAX_MODEL_FILE {
                return Err(format!("{shown}: larger than {MAX_MODEL_FILE} bytes"));
            }
            Ok(bytes)
        };
        Ok(ModelFiles {
            config: read(Self::NAMES[0])?,
            tokenizer: read(Self::NAMES[1])?,
            weights: read(Self::NAMES[2])?,
        })
    }

    /// The files with their names, in [`Self::NAMES`] order.
    pub fn named(&self) -> [(&'static str, &[u8]); 3] {
        [
            (Self::NAMES[0], &self.config),
            (Self::NAMES[1], &self.tokenizer),
            (Self::NAMES[2], &self.weights),
        ]
    }
}

impl BertEncoder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from
    /// `dir` ([`ModelFiles::read`]).
    pub fn load(dir: &Path) -> Result<Self, String> {
        Self::from_files(&ModelFiles::read(dir)?)
    }

    /// The encoder the three files' contents describe. Errors: a file that
    /// does not parse, a tensor missing or of the wrong shape.
    pub fn from_files(files: &ModelFiles) -> Result<Self, String> {
        let c = Config::parse(&files.config)?;
        let h = c.hidden_size;
        let mut tokenizer =
            Tokenizer::from_bytes(&files.tokenizer).map_err(|e| format!("tokenizer.json: {e}"))?;
        let max_tokens = MAX_TOKENS.min(c.max_position_embeddings);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| e.to_string())?;
        // Sequences are packed, never padded.
        tokenizer.with_padding(None);

        let tensors = SafeTensors::deserialize(&files.weights)
            .map_err(|e| format!("model.safetensors: {e}"))?;
        // Some exports prefix every tensor with the architecture name.
        let prefix = if tensors.tensor("embeddings.word_embeddings.weight").is_ok() {
            ""
        } else {
            "bert."
        };
        let w = Weights { tensors, prefix };
        let err = |e: String| format!("model.safetensors: {e}");
        let vocab = w
            .tensors
            .tensor(&format!("{prefix}embeddings.word_embeddings.weight"))
            .map_err(|e| err(e.to_string()))?
            .shape()
            .first()
            .copied()
            .unwrap_or(0);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                qkv: fused_qkv(&w, &p, h).map_err(err)?,
                attn_out: w
                    .linear(&format!("{p}.attention.output.dense"), h, h)
                    .map_err(err)?,
                attn_norm: w
                    .norm(
                        &format!("{p}.attention.output.LayerNorm"),
                        h,
                        c.layer_norm_eps,
                    )
                    .map_err(err)?,
                inter: w
                    .linear(&format!("{p}.intermediate.dense"), h, c.intermediate_size)
                    .map_err(err)?,
                out: w
                    .linear(&format!("{p}.output.dense"), c.intermediate_size, h)
                    .map_err(err)?,
                out_norm: w
                    .norm(&format!("{p}.output.LayerNorm"), h, c.layer_norm_eps)
                    .map_err(err)?,
            });
        }
        let token_types = w
            .get(
                "embeddings.token_type_embeddings.weight",
                &[c.type_vocab_size, h],
            )
            .map_err(err)?;
        Ok(BertEncoder {
            words: w
                .get("embeddings.word_embeddings.weight", &[vocab, h])
                .map_err(err)?,
            positions: w
                .get(
                    "embeddings.position_embeddings.weight",
                    &[c.max_position_embeddings, h],
                )
                .map_err(err)?,
            token_type: token_types[..h].to_vec(),
            embed_norm: w
                .norm("embeddings.LayerNorm", h, c.layer_norm_eps)
                .map_err(err)?,
            layers,
            heads: c.num_attention_heads,
            hidden: h,
            max_tokens,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tokenizer,
        })
    }

    /// Output dimension.
    pub fn dimensions(&self) -> usize {
        self.hidden
    }

    /// Encoder layers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Tokens an input may have before it is truncated.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The token ids of each text, as `encode` feeds them to the model
    /// (special tokens added, truncated to [`Self::max_tokens`]). Errors:
    /// the tokenizer's, or an id outside the vocabulary.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, String> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| e.to_string())?;
        let vocab = self.words.len() / self.hidden;
        encodings
            .iter()
            .map(
                |e| match e.get_ids().iter().find(|&&id| id as usize >= vocab) {
                    Some(bad) => Err(format!("token id {bad} is outside the model's vocabulary")),
                    None => Ok(e.get_ids().to_vec()),
                },
            )
            .collect()
    }

    /// Encodes `texts` into unit vectors, `batch` inputs per forward pass,
    /// batches spread over the cores; results come back in input order.
    pub fn encode(&self, texts: &[&str], batch: usize) -> Result<Vec<Encoded>, String> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| e.to_string())?;
        let vocab = self.words.len() / self.hidden;
        let mut sequences = Vec::with_capacity(texts.len());
        for e in &encodings {
            if let Some(bad) = e.get_ids().iter().find(|&&id| id as usize >= vocab) {
                return Err(format!("token id {bad} is outside the model's vocabulary"));
            }
            sequences.push(e.get_ids());
        }
        // Similar lengths together keep per-batch work even across threads.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sequences[i].len()));
        let batches: Vec<&[usize]> = order.chunks(batch.max(1)).collect();
        let workers = self.threads.min(batches.len()).max(1);
        let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let results: Vec<Vec<(usize, Vec<f32>)>> = if workers == 1 {
            vec![batches
                .iter()
                .flat_map(|b| self.forward_batch(b, &sequences))
                .collect()]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..workers)
                    .map(|w| {
                        let mine: Vec<&[usize]> =
                            batches.iter().skip(w).step_by(workers).copied().collect();
                        let sequences = &sequences;
                        scope.spawn(move || {
                            mine.iter()
                                .flat_map(|b| self.forward_batch(b, sequences))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        };
        for (i, v) in results.into_iter().flatten() {
            vectors[i] = v;
        }
        if vectors.iter().any(Vec::is_empty) {
            return Err("encoding failed".into());
        }
        Ok(vectors
            .into_iter()
            .zip(&encodings)
            .map(|(vector, e)| Encoded {
                vector,
                truncated: !e.get_overflowing().is_empty(),
            })
            .collect())
    }

    /// The forward pass over the sequences `members` picks, packed.
    fn forward_batch(&self, members: &[usize], sequences: &[&[u32]]) -> Vec<(usize, Vec<f32>)> {
        let h = self.hidden;
        let (x, lens) = self.run_layers(members, sequences, self.layers.len());
        // Mean over each sequence's tokens, then unit length.
        let mut out = Vec::with_capacity(members.len());
        let mut start = 0;
        for (&i, &len) in members.iter().zip(&lens) {
            let mut mean = vec![0f32; h];
            for row in x[start * h..(start + len) * h].chunks_exact(h) {
                for (m, v) in mean.iter_mut().zip(row) {
                    *m += v;
                }
            }
            let count = len.max(1) as f32;
            mean.iter_mut().for_each(|m| *m /= count);
            let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            mean.iter_mut().for_each(|m| *m /= norm);
            out.push((i, mean));
            start += len;
        }
        out
    }

    /// The hidden states after the embeddings and the first `layers`
    /// layers (at most all), per sequence: `len × hidden` floats, row
    /// major. Fine-tuning runs the frozen bottom of the model here, where
    /// it is faster than in the training graph (`train::finetune`).
    /// Sequences are split over the cores; ids must be in the vocabulary
    /// (as [`Self::tokenize`] gives them). Errors: a worker that failed.
    pub fn hidden_states(
        &self,
        sequences: &[&[u32]],
        layers: usize,
    ) -> Result<Vec<Vec<f32>>, String> {
        let layers = layers.min(self.layers.len());
        let order: Vec<usize> = (0..sequences.len()).collect();
        let share = order.len().div_ceil(self.threads.max(1)).max(1);
        let run = |members: &[usize]| {
            let (x, lens) = self.run_layers(members, sequences, layers);
            let mut out = Vec::with_capacity(members.len());
            let mut start = 0;
            for len in lens {
                out.push(x[start * self.hidden..(start + len) * self.hidden].to_vec());
                start += len;
            }
            out
        };
        let states: Vec<Vec<f32>> = std::thread::scope(|scope| {
            let handles: Vec<_> = order
                .chunks(share)
                .map(|members| scope.spawn(move || run(members)))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        if states.len() != sequences.len() {
            return Err("encoding failed".into());
        }
        Ok(states)
    }

    /// Embeddings and the first `layers` layers over the sequences
    /// `members` picks, packed: (`rows × hidden` states, each length).
    fn run_layers(
        &self,
        members: &[usize],
        sequences: &[&[u32]],
        layers: usize,
    ) -> (Vec<f32>, Vec<usize>) {
        let h = self.hidden;
        let lens: Vec<usize> = members.iter().map(|&i| sequences[i].len()).collect();
        let rows: usize = lens.iter().sum();
        let mut x = Vec::with_capacity(rows * h);
        for &i in members {
            for (pos, &id) in sequences[i].iter().enumerate() {
                let word = &self.words[id as usize * h..][..h];
                let position = &self.positions[pos * h..][..h];
                x.extend(
                    word.iter()
                        .zip(position)
                        .zip(&self.token_type)
                        .map(|((a, b), c)| a + b + c),
                );
            }
        }
        self.embed_norm.forward(&mut x);
        let (mut qkv, mut ctx, mut tmp, mut inter) =
            (Vec::new(), vec![0f32; rows * h], Vec::new(), Vec::new());
        let mut scores = Vec::new();
        for layer in &self.layers[..layers] {
            layer.qkv.forward(&x, rows, &mut qkv);
            self.attention(&qkv, &lens, &mut ctx, &mut scores);
            layer.attn_out.forward(&ctx, rows, &mut tmp);
            for (t, r) in tmp.iter_mut().zip(&x) {
                *t += r;
            }
            layer.attn_norm.forward(&mut tmp);
            std::mem::swap(&mut x, &mut tmp);
            layer.inter.forward(&x, rows, &mut inter);
            gelu_all(&mut inter);
            layer.out.forward(&inter, rows, &mut tmp);
            for (t, r) in tmp.iter_mut().zip(&x) {
                *t += r;
            }
            layer.out_norm.forward(&mut tmp);
            std::mem::swap(&mut x, &mut tmp);
        }
        (x, lens)
    }

    /// Self-attention of each packed sequence over its own tokens, all heads:
    /// `qkv` rows are `[q | k | v]`; writes `rows × hidden` into `ctx`.
    fn attention(&self, qkv: &[f32], lens: &[usize], ctx: &mut [f32], scores: &mut Vec<f32>) {
        let h = self.hidden;
        let d = h / self.heads;
        let stride = 3 * h;
        let scale = 1.0 / (d as f32).sqrt();
        let mut start = 0;
        for &len in lens {
            scores.clear();
            scores.resize(len * len, 0.0);
            for head in 0..self.heads {
                let q = qkv[start * stride + head * d..].as_ptr();
                let k = qkv[start * stride + h + head * d..].as_ptr();
                let v = qkv[start * stride + 2 * h + head * d..].as_ptr();
                // SAFETY: q, k and v address `len` rows of `d` values at row
                // stride `stride` inside `qkv`; `scores` is len×len; the
                // context block is `len` rows of `d` at row stride `h` in `ctx`.
                unsafe {
                    // scores = q·kᵀ × scale
                    gemm(
                        len,
                        len,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        len as isize,
                        false,
                        q,
                        1,
                        stride as isize,
                        k,
                        stride as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                for row in scores.chunks_exact_mut(len) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for s in row.iter_mut() {
                        *s = exp(*s - max);
                        sum += *s;
                    }
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|s| *s *= inv);
                }
                let out = ctx[start * h + head * d..].as_mut_ptr();
                unsafe {
                    // context = softmax(scores)·v
                    gemm(
                        len,
                        d,
                        len,
                        out,
                        1,
                        h as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        len as isize,
                        v,
                        1,
                        stride as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
            start += len;
        }
    }
}

/// GELU over a buffer, compiled for the widest vectors the CPU has.
fn gelu_all(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { gelu_avx512(xs) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { gelu_avx2(xs) };
        }
    }
    xs.iter_mut().for_each(|v| *v = gelu(*v));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(xs: &mut [f32]) {
    xs.iter_mut().for_each(|v| *v = gelu(*v));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(xs: &mut [f32]) {
    xs.iter_mut().for_each(|v| *v = gelu(*v));
}

/// GELU with the exact (erf) form BERT uses.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf to within ~2e-7 (Numerical Recipes' erfc Chebyshev fit): no
/// branches on the value and no library calls, so the GELU loop vectorises.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_77))))))));
    (1.0 - t * exp(poly)).copysign(x)
}

/// e^x for f32 to about one ulp (Cephes' expf), branch-free: range
/// reduction by powers of two, a degree-6 polynomial, and the exponent
/// written into the bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Round to nearest without a library call: adding 1.5 × 2^23 pushes the
    // fraction out of the mantissa.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_accurate() {
        // Reference values of erf.
        for (x, want) in [
            (0.0f32, 0.0f64),
            (0.1, 0.112_462_916_018_284_9),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (-1.5, -0.966_105_146_475_310_7),
            (2.5, 0.999_593_047_982_555),
            (4.0, 0.999_999_984_582_742_1),
        ] {
            assert!(
                (f64::from(erf(x)) - want).abs() < 3e-7,
                "erf({x}) = {}",
                erf(x)
            );
        }
    }

    #[test]
    fn exp_is_accurate() {
        let mut x = -80.0f32;
        while x < 80.0 {
            let (got, want) = (f64::from(exp(x)), f64::from(x).exp());
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.37;
        }
        assert_eq!(exp(0.0), 1.0);
    }
}

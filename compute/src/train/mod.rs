//! Training a semantic index (the seed's last section): a linear adapter on
//! top of frozen model outputs, fitted with the seed's ranking objective on
//! (query, item) pairs a splitter makes from documents, and the retrieval
//! metrics that say whether it helped.
//!
//! The adapter `W` (d×d, initialised to the identity) maps a query vector
//! `q` to `normalise(W q)`; with `adapt: "both"` items are mapped too. The
//! loss over a batch of B pairs: `S = τ · Q̂ X̂ᵀ`, `loss = −mean_i
//! log_softmax(S_i)_i` — each query must pick its own item out of the
//! batch. The gradient is written out by hand (checked against finite
//! differences in the tests) and AdamW updates `W`, with its decay pulling
//! towards the identity rather than zero.
//!
//! Sync, CPU only, no I/O: callers run it on a blocking thread.

pub mod finetune;
pub mod spec;

pub use crate::linalg::matmul;
pub use spec::{Adapt, FineTuning, Metric, Splitter, TrainSpec, Validation};

/// Metrics as a document, `{"r@1": 0.85, ...}`.
pub fn metrics_doc(metrics: &[(String, f64)]) -> bson::RawDocumentBuf {
    let mut d = bson::RawDocumentBuf::new();
    for (k, v) in metrics {
        d.append(k.as_str(), *v);
    }
    d
}

/// The numeric fields of a metrics document ([`metrics_doc`]'s shape),
/// in order; other fields are skipped.
pub fn metrics_of(doc: &bson::RawDocument) -> Vec<(String, f64)> {
    doc.iter()
        .flatten()
        .filter_map(|(k, v)| v.as_f64().map(|x| (k.to_string(), x)))
        .collect()
}

fn normalise_rows(x: &mut [f32], d: usize) -> Vec<f32> {
    x.chunks_exact_mut(d)
        .map(|row| {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= n);
            n
        })
        .collect()
}

/// The trained map applied to query (and, with `Adapt::Both`, item) vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    pub dims: usize,
    /// Row-major d×d: the adapted vector is `W v`.
    pub w: Vec<f32>,
    pub both: bool,
}

impl Adapter {
    pub fn identity(dims: usize, both: bool) -> Adapter {
        let mut w = vec![0.0; dims * dims];
        for i in 0..dims {
            w[i * dims + i] = 1.0;
        }
        Adapter { dims, w, both }
    }

    /// `normalise(W v)`.
    pub fn apply(&self, v: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; self.dims];
        matmul(
            &mut out,
            v,
            &self.w,
            (1, self.dims, self.dims),
            false,
            true,
            false,
        );
        normalise_rows(&mut out, self.dims);
        out
    }

    /// `normalise(V Wᵀ)` for the rows of `v`, or just normalised rows when
    /// this side is not adapted.
    fn map(&self, v: &[f32], adapted: bool) -> Vec<f32> {
        let d = self.dims;
        let mut out = if adapted {
            let mut out = vec![0.0; v.len()];
            matmul(
                &mut out,
                v,
                &self.w,
                (v.len() / d, d, d),
                false,
                true,
                false,
            );
            out
        } else {
            v.to_vec()
        };
        normalise_rows(&mut out, d);
        out
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.w.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    pub fn from_bytes(dims: usize, both: bool, bytes: &[u8]) -> Option<Adapter> {
        if bytes.len() != dims * dims * 4 {
            return None;
        }
        let w: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        w.iter()
            .all(|x| x.is_finite())
            .then_some(Adapter { dims, w, both })
    }
}

/// (query, item) vectors, row-major, one pair per row.
#[derive(Debug, Clone, Default)]
pub struct Pairs {
    pub dims: usize,
    pub queries: Vec<f32>,
    pub items: Vec<f32>,
}

impl Pairs {
    pub fn new(dims: usize) -> Pairs {
        Pairs {
            dims,
            ..Pairs::default()
        }
    }

    pub fn len(&self) -> usize {
        self.queries.len() / self.dims.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, query: &[f32], item: &[f32]) {
        self.queries.extend_from_slice(query);
        self.items.extend_from_slice(item);
    }
}

/// The ranking loss of one batch and its gradient with respect to `W`.
pub fn loss_and_gradient(
    adapter: &Adapter,
    q: &[f32],
    x: &[f32],
    temperature: f32,
) -> (f32, Vec<f32>) {
    let d = adapter.dims;
    let b = q.len() / d;
    // U = Q Wᵀ, Q̂ = U / |U|.
    let mut qh = vec![0.0; b * d];
    matmul(&mut qh, q, &adapter.w, (b, d, d), false, true, false);
    let q_norms = normalise_rows(&mut qh, d);
    let mut xh = if adapter.both {
        let mut v = vec![0.0; b * d];
        matmul(&mut v, x, &adapter.w, (b, d, d), false, true, false);
        v
    } else {
        x.to_vec()
    };
    let x_norms = normalise_rows(&mut xh, d);
    // S = τ Q̂ X̂ᵀ; G = (softmax(S) − I) / B.
    let mut g = vec![0.0; b * b];
    matmul(&mut g, &qh, &xh, (b, b, d), false, true, false);
    let mut loss = 0.0f64;
    for (i, row) in g.chunks_exact_mut(b).enumerate() {
        row.iter_mut().for_each(|s| *s *= temperature);
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|s| (s - max).exp()).sum();
        let log_z = max + sum.ln();
        loss += f64::from(log_z - row[i]);
        for (j, s) in row.iter_mut().enumerate() {
            *s = ((*s - log_z).exp() - if i == j { 1.0 } else { 0.0 }) / b as f32;
        }
    }
    let loss = (loss / b as f64) as f32;
    // dQ̂ = τ G X̂, then through the normalisation: dU = (dQ̂ − (dQ̂·q̂) q̂) / |u|.
    let mut dq = vec![0.0; b * d];
    matmul(&mut dq, &g, &xh, (b, d, b), false, false, false);
    through_norm(&mut dq, &qh, &q_norms, d, temperature);
    // dW = dUᵀ Q.
    let mut dw = vec![0.0; d * d];
    matmul(&mut dw, &dq, q, (d, d, b), true, false, false);
    if adapter.both {
        let mut dx = vec![0.0; b * d];
        matmul(&mut dx, &g, &qh, (b, d, b), true, false, false);
        through_norm(&mut dx, &xh, &x_norms, d, temperature);
        matmul(&mut dw, &dx, x, (d, d, b), true, false, true);
    }
    (loss, dw)
}

/// Scales by τ and back-propagates through `v̂ = u / |u|`.
fn through_norm(grad: &mut [f32], unit: &[f32], norms: &[f32], d: usize, temperature: f32) {
    for ((g, u), n) in grad
        .chunks_exact_mut(d)
        .zip(unit.chunks_exact(d))
        .zip(norms)
    {
        g.iter_mut().for_each(|v| *v *= temperature);
        let along: f32 = g.iter().zip(u).map(|(a, b)| a * b).sum();
        for (gv, uv) in g.iter_mut().zip(u) {
            *gv = (*gv - along * uv) / n;
        }
    }
}

/// Retrieval metrics of `adapter` on pairs: every query ranks every item of
/// the set; its own item is the one relevant result.
pub fn evaluate(adapter: &Adapter, pairs: &Pairs, metrics: &[Metric]) -> Vec<(String, f64)> {
    let d = pairs.dims;
    let n = pairs.len();
    if n == 0 {
        return metrics.iter().map(|m| (m.name(), 0.0)).collect();
    }
    let q = adapter.map(&pairs.queries, true);
    let x = adapter.map(&pairs.items, adapter.both);
    let mut ranks = Vec::with_capacity(n);
    let block = 256;
    let mut scores = vec![0.0; block * n];
    for start in (0..n).step_by(block) {
        let rows = block.min(n - start);
        matmul(
            &mut scores,
            &q[start * d..(start + rows) * d],
            &x,
            (rows, n, d),
            false,
            true,
            false,
        );
        for r in 0..rows {
            let row = &scores[r * n..(r + 1) * n];
            let own = row[start + r];
            ranks.push(row.iter().filter(|&&s| s > own).count());
        }
    }
    metrics
        .iter()
        .map(|m| (m.name(), m.score(&ranks)))
        .collect()
}

/// One epoch's report.
#[derive(Debug, Clone)]
pub struct Epoch {
    pub epoch: usize,
    pub loss: f32,
    pub metrics: Vec<(String, f64)>,
}

/// Fisher–Yates with xorshift64 (`rng` non-zero): a fixed seed gives a
/// fixed order, epoch after epoch.
pub(crate) fn shuffle(order: &mut [usize], rng: &mut u64) {
    for i in (1..order.len()).rev() {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        order.swap(i, (*rng % (i as u64 + 1)) as usize);
    }
}

/// Fits an adapter. `report` sees every epoch and may stop the run by
/// returning `false` (the index was dropped). A NaN or infinite loss stops
/// training with an error; the caller keeps its previous adapter.
pub fn train(
    spec: &TrainSpec,
    train: &Pairs,
    valid: &Pairs,
    mut report: impl FnMut(&Epoch) -> bool,
) -> Result<Adapter, String> {
    let d = train.dims;
    let mut adapter = Adapter::identity(d, spec.adapt == Adapt::Both);
    let identity = adapter.w.clone();
    let (mut m, mut v) = (vec![0.0f32; d * d], vec![0.0f32; d * d]);
    let (beta1, beta2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let mut step = 0i32;
    let mut rng = spec.seed | 1;
    let mut order: Vec<usize> = (0..train.len()).collect();
    let batch = spec.batch_size.min(train.len()).max(2);
    let (mut qb, mut xb) = (Vec::with_capacity(batch * d), Vec::with_capacity(batch * d));
    for epoch in 1..=spec.epochs {
        shuffle(&mut order, &mut rng);
        let mut total = 0.0f64;
        let mut batches = 0;
        for chunk in order.chunks(batch) {
            if chunk.len() < 2 {
                continue;
            }
            qb.clear();
            xb.clear();
            for &i in chunk {
                qb.extend_from_slice(&train.queries[i * d..(i + 1) * d]);
                xb.extend_from_slice(&train.items[i * d..(i + 1) * d]);
            }
            let (loss, grad) = loss_and_gradient(&adapter, &qb, &xb, spec.temperature);
            if !loss.is_finite() || grad.iter().any(|g| !g.is_finite()) {
                return Err(format!(
                    "training stopped at epoch {epoch}: the loss is not a number (try a lower learningRate)"
                ));
            }
            step += 1;
            let (c1, c2) = (1.0 - beta1.powi(step), 1.0 - beta2.powi(step));
            for k in 0..d * d {
                m[k] = beta1 * m[k] + (1.0 - beta1) * grad[k];
                v[k] = beta2 * v[k] + (1.0 - beta2) * grad[k] * grad[k];
                let update = (m[k] / c1) / ((v[k] / c2).sqrt() + eps);
                let decay = spec.weight_decay * (adapter.w[k] - identity[k]);
                adapter.w[k] -= spec.learning_rate * (update + decay);
            }
            total += f64::from(loss);
            batches += 1;
        }
        let report_epoch = Epoch {
            epoch,
            loss: (total / f64::from(batches.max(1))) as f32,
            metrics: evaluate(&adapter, valid, &spec.metrics),
        };
        if !report(&report_epoch) {
            return Err("training cancelled".into());
        }
    }
    Ok(adapter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// The hand-written gradient against central finite differences (in f64
    /// terms of the f32 loss, so the step is not too small).
    #[test]
    fn gradient_matches_finite_differences() {
        for both in [false, true] {
            let d = 5;
            let b = 4;
            let mut adapter = Adapter::identity(d, both);
            for (w, r) in adapter.w.iter_mut().zip(random(d * d, 3)) {
                *w += 0.3 * r;
            }
            let q = random(b * d, 7);
            let x = random(b * d, 11);
            let (_, grad) = loss_and_gradient(&adapter, &q, &x, 3.0);
            let h = 1e-2f32;
            for (k, analytic) in grad.iter().enumerate() {
                let mut plus = adapter.clone();
                plus.w[k] += h;
                let mut minus = adapter.clone();
                minus.w[k] -= h;
                let numeric = (loss_and_gradient(&plus, &q, &x, 3.0).0
                    - loss_and_gradient(&minus, &q, &x, 3.0).0)
                    / (2.0 * h);
                assert!(
                    (numeric - analytic).abs() < 2e-3 + 0.02 * numeric.abs(),
                    "both={both} w[{k}]: analytic {analytic} vs numeric {numeric}"
                );
            }
        }
    }

    /// Queries are items seen through a fixed rotation-and-noise: the
    /// identity ranks poorly, training recovers the map.
    #[test]
    fn training_learns_a_hidden_linear_map() {
        let d = 8;
        let n = 600;
        let items = random(n * d, 5);
        let mix = random(d * d, 9);
        let mut queries = vec![0.0; n * d];
        matmul(&mut queries, &items, &mix, (n, d, d), false, true, false);
        let split = |lo: usize, hi: usize| Pairs {
            dims: d,
            queries: queries[lo * d..hi * d].to_vec(),
            items: items[lo * d..hi * d].to_vec(),
        };
        let (train_set, valid) = (split(0, 500), split(500, n));
        let spec = TrainSpec {
            epochs: 40,
            batch_size: 50,
            learning_rate: 0.02,
            temperature: 10.0,
            ..TrainSpec::default()
        };
        let metrics = [Metric::RecallAt(1)];
        let before = evaluate(&Adapter::identity(d, false), &valid, &metrics)[0].1;
        let mut losses = Vec::new();
        let adapter = train(&spec, &train_set, &valid, |e| {
            losses.push(e.loss);
            true
        })
        .unwrap();
        let after = evaluate(&adapter, &valid, &metrics)[0].1;
        assert!(after > before + 0.3, "r@1 before {before}, after {after}");
        assert!(losses.last() < losses.first(), "{losses:?}");
    }

    #[test]
    fn a_nan_loss_stops_training_with_an_error() {
        let d = 4;
        let mut queries = random(64 * d, 1);
        queries[5] = f32::NAN;
        let pairs = Pairs {
            dims: d,
            queries,
            items: random(64 * d, 2),
        };
        let err = train(&TrainSpec::default(), &pairs, &pairs, |_| true).unwrap_err();
        assert!(err.contains("not a number"), "{err}");
    }

    #[test]
    fn metrics_follow_their_definitions() {
        // ranks 0, 1, 4: r@1 = 1/3, r@5 = 1, mrr = (1 + 1/2 + 1/5) / 3.
        let ranks = [0, 1, 4];
        assert!((Metric::RecallAt(1).score(&ranks) - 1.0 / 3.0).abs() < 1e-12);
        assert!((Metric::RecallAt(5).score(&ranks) - 1.0).abs() < 1e-12);
        assert!((Metric::Mrr.score(&ranks) - (1.0 + 0.5 + 0.2) / 3.0).abs() < 1e-12);
        let ndcg = (1.0 + 1.0 / 3f64.log2()) / 3.0;
        assert!((Metric::NdcgAt(3).score(&ranks) - ndcg).abs() < 1e-12);
    }

    #[test]
    fn adapters_round_trip_through_bytes() {
        let mut a = Adapter::identity(3, true);
        a.w[1] = 0.25;
        assert_eq!(Adapter::from_bytes(3, true, &a.to_bytes()), Some(a));
        assert_eq!(Adapter::from_bytes(3, true, &[0; 5]), None);
    }
}

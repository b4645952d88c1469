//! `targetRecall`: the search breadth (`numCandidates`) an index uses when
//! a query names none, chosen to meet a recall the definition asks for.
//! Recall is measured here, against the exact answer, on a sample of the
//! queries the index has recently been asked (so it follows the data and
//! the queries as they are): recall@10 of the graph search at growing
//! breadths, the smallest that reaches the target, with a margin of one
//! standard error of the sample's mean, kept.

use super::vectors::Vectors;
use crate::index::vector::OwnedVector;
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Recent queries kept for measuring. Recall varies far more between
/// queries than a binomial count over their neighbours suggests (a hard
/// query misses several at once), so the sample must be large for its
/// mean to stand for queries at large: at 64 queries one run chose a
/// breadth that gave 0.917 on held-out queries for a target of 0.95.
pub const SAMPLES: usize = 256;
/// Queries sampled before the first measurement: a full sample (at 64,
/// 16-d Gaussian data measured 0.958 where held-out queries gave 0.915:
/// until then the definition's default breadth serves).
const FIRST_AFTER: usize = SAMPLES;
/// New samples, and time, between measurements.
const AGAIN_AFTER: usize = 64;
const AGAIN_EVERY: Duration = Duration::from_secs(10);
/// The `k` recall is measured at.
const K: usize = 10;
/// The breadths tried, smallest first.
const BREADTHS: &[usize] = &[
    10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 10_000,
];

/// What the tuner knows and keeps.
#[derive(Debug, Default)]
pub struct RecallTuner {
    samples: VecDeque<OwnedVector>,
    since: usize,
    last: Option<Instant>,
    running: bool,
    /// The breadth in use and the recall@10 measured at it.
    pub tuned: Option<(usize, f64)>,
}

impl RecallTuner {
    /// Records a query vector; returns whether a measurement is due (the
    /// caller then runs [`measure`] and [`RecallTuner::finish`]).
    pub fn record(&mut self, query: &OwnedVector) -> bool {
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(query.clone());
        self.since += 1;
        let due = match self.last {
            None => self.samples.len() >= FIRST_AFTER,
            Some(at) => self.since >= AGAIN_AFTER && at.elapsed() >= AGAIN_EVERY,
        };
        if due && !self.running {
            self.running = true;
            return true;
        }
        false
    }

    /// The samples to measure with.
    pub fn samples(&self) -> Vec<OwnedVector> {
        self.samples.iter().cloned().collect()
    }

    /// Keeps a measurement's result.
    pub fn finish(&mut self, tuned: Option<(usize, f64)>) {
        self.running = false;
        self.since = 0;
        self.last = Some(Instant::now());
        if tuned.is_some() {
            self.tuned = tuned;
        }
    }
}

/// The smallest breadth whose recall@10 over `samples` reaches `target`
/// ([`Measured::reaches`]; exact search the oracle), with its mean recall;
/// the widest tried and its recall when none does. `None` without samples
/// or vectors. `search(query, k, breadth, exact)` answers one query (so
/// the caller holds its index's lock per query, never over the whole
/// measurement).
pub fn measure(
    samples: &[OwnedVector],
    target: f64,
    search: impl Fn(&OwnedVector, usize, usize, bool) -> Vec<bson::RawBson>,
) -> Option<(usize, f64)> {
    let truths: Vec<HashSet<Vec<u8>>> = samples
        .iter()
        .map(|q| search(q, K, 0, true).iter().map(key).collect())
        .collect();
    if truths.iter().all(HashSet::is_empty) {
        return None;
    }
    smallest_breadth(target, |breadth| {
        let per_query: Vec<f64> = samples
            .iter()
            .zip(&truths)
            .filter(|(_, truth)| !truth.is_empty())
            .map(|(q, truth)| {
                let hits = search(q, K, breadth, false)
                    .iter()
                    .filter(|id| truth.contains(&key(id)))
                    .count();
                hits as f64 / truth.len() as f64
            })
            .collect();
        Measured::of(&per_query)
    })
}

/// What [`measure`] asks of `vectors` for one query: the ids found.
pub fn search_in(
    vectors: &Vectors,
    query: &OwnedVector,
    k: usize,
    breadth: usize,
    exact: bool,
) -> Vec<bson::RawBson> {
    let found = vectors.search(query.as_ref(), k, breadth, None, exact);
    found.hits.into_iter().map(|(id, _)| id).collect()
}

/// A recall measured over a sample of queries: the mean of their recalls
/// and the standard error of that mean (the sample standard deviation
/// over √n; 0 for fewer than two queries).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    pub mean: f64,
    pub se: f64,
}

impl Measured {
    /// From each query's recall (a sample without queries recalls
    /// everything: there was nothing to find).
    pub fn of(per_query: &[f64]) -> Measured {
        let n = per_query.len();
        if n == 0 {
            return Measured { mean: 1.0, se: 0.0 };
        }
        let mean = per_query.iter().sum::<f64>() / n as f64;
        if n < 2 {
            return Measured { mean, se: 0.0 };
        }
        let var = per_query.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        Measured {
            mean,
            se: (var / n as f64).sqrt(),
        }
    }

    /// A recall known without sampling error.
    pub fn exact(mean: f64) -> Measured {
        Measured { mean, se: 0.0 }
    }

    /// Whether this sample shows `target` for queries at large: its mean
    /// reaches `target` plus one standard error (capped at 0.999, or the
    /// target if higher). The smallest breadth that passes on one sample
    /// tends to fall a little short on others (it was picked because this
    /// sample passed); the margin keeps held-out recall at the target.
    pub fn reaches(&self, target: f64) -> bool {
        self.mean >= (target + self.se).min(target.max(0.999))
    }
}

/// The smallest breadth at which `recall_at` reaches `target`
/// ([`Measured::reaches`]), with its mean recall: up the [`BREADTHS`]
/// ladder to the first that reaches it, then a binary search between it
/// and the one below (recall grows with the breadth, so the smallest is
/// found in a few more measurements rather than taking a step that may be
/// half again too wide); the widest and its recall when none reaches it.
pub fn smallest_breadth(
    target: f64,
    mut recall_at: impl FnMut(usize) -> Measured,
) -> Option<(usize, f64)> {
    // Never narrower than the first rung (the `k` measured at).
    let mut below = BREADTHS[0] - 1;
    let mut found = None;
    for &breadth in BREADTHS {
        let recall = recall_at(breadth);
        found = Some((breadth, recall));
        if recall.reaches(target) {
            break;
        }
        below = breadth;
    }
    let (mut high, mut at_high) = found?;
    if !at_high.reaches(target) {
        return Some((high, at_high.mean));
    }
    // Invariant: `below` misses the target (or is under the first rung),
    // `high` reaches it.
    while high - below > 1 {
        let mid = below + (high - below) / 2;
        let recall = recall_at(mid);
        if recall.reaches(target) {
            (high, at_high) = (mid, recall);
        } else {
            below = mid;
        }
    }
    Some((high, at_high.mean))
}

fn key(id: &bson::RawBson) -> Vec<u8> {
    let mut holder = bson::RawDocumentBuf::new();
    holder.append("", id.clone());
    holder.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::hnsw::HnswParams;
    use crate::index::{Similarity, VectorRef};
    use crate::registry::IndexSpec;
    use bson::RawBsonRef;

    #[test]
    fn measurements_come_when_due_and_meet_the_target() {
        let mut tuner = RecallTuner::default();
        let q = OwnedVector::F32(vec![0.5, 0.5]);
        let due: Vec<bool> = (0..FIRST_AFTER).map(|_| tuner.record(&q)).collect();
        assert_eq!(due.iter().filter(|d| **d).count(), 1);
        assert!(due[FIRST_AFTER - 1]);
        // While one runs, none other starts; after it, not before 64 more.
        assert!(!tuner.record(&q));
        tuner.finish(Some((24, 0.97)));
        assert_eq!(tuner.tuned, Some((24, 0.97)));
        assert!((0..AGAIN_AFTER).all(|_| !tuner.record(&q)));

        let spec = IndexSpec::vector("v".into(), 2, Similarity::Euclidean, HnswParams::default());
        let mut vectors = Vectors::empty(&spec);
        for i in 0..500 {
            let (x, y) = ((i % 23) as f32, (i / 23) as f32);
            vectors.upsert(RawBsonRef::Int32(i), VectorRef::F32(&[x, y]), None);
        }
        let samples: Vec<OwnedVector> = (0..20)
            .map(|i| OwnedVector::F32(vec![i as f32 * 1.1, 3.3]))
            .collect();
        let search = |q: &OwnedVector, k, b, exact| search_in(&vectors, q, k, b, exact);
        let (breadth, recall) = measure(&samples, 0.99, search).unwrap();
        assert!(recall >= 0.99 && breadth >= K, "{breadth} {recall}");
        assert!(measure(&[], 0.9, search).is_none());
        let empty = Vectors::empty(&spec);
        assert!(measure(&samples, 0.9, |q, k, b, e| search_in(&empty, q, k, b, e)).is_none());
    }

    #[test]
    fn a_sample_reaches_a_target_by_one_standard_error() {
        // Recalls 0.9 and 1.0 alternating: mean 0.95, sd 0.0501.
        let per_query: Vec<f64> = (0..100)
            .map(|i| if i % 2 == 0 { 0.9 } else { 1.0 })
            .collect();
        let m = Measured::of(&per_query);
        assert!((m.mean - 0.95).abs() < 1e-12);
        assert!((m.se - 0.0050252).abs() < 1e-6, "{m:?}");
        assert!(m.reaches(0.944) && !m.reaches(0.946));
        assert_eq!(Measured::of(&[]), Measured::exact(1.0));
        assert_eq!(Measured::of(&[0.7]), Measured::exact(0.7));
        // The margin never asks for more than 0.999 (or the target).
        assert!(Measured {
            mean: 0.999,
            se: 0.01
        }
        .reaches(0.995));
        assert!(!Measured {
            mean: 0.9995,
            se: 0.0
        }
        .reaches(1.0));
    }

    #[test]
    fn the_breadth_found_is_the_smallest_that_reaches_the_target() {
        // Recall rises with the breadth: 0.9 from 37 on, 0.97 from 301.
        let curve = |b: usize| match b {
            0..=36 => 0.5,
            37..=300 => 0.9,
            _ => 0.97,
        };
        let mut asked = Vec::new();
        let curve = |b: usize| Measured::exact(curve(b));
        let found = smallest_breadth(0.95, |b| {
            asked.push(b);
            curve(b)
        });
        assert_eq!(found, Some((301, 0.97)));
        // The ladder up to 384, then about log2(384 - 256) more.
        assert!(asked.len() <= 12 + 8, "{asked:?}");
        assert_eq!(smallest_breadth(0.85, curve), Some((37, 0.9)));
        // Never reached: the widest tried, with its recall.
        assert_eq!(smallest_breadth(0.99, curve), Some((10_000, 0.97)));
        // Reached at the first rung: never narrower than it.
        assert_eq!(smallest_breadth(0.4, curve), Some((10, 0.5)));
    }
}

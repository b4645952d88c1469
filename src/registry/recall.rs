//! `targetRecall`: the search breadth (`numCandidates`) an index uses when
//! a query names none, chosen to meet a recall the definition asks for.
//! Recall is measured here, against the exact answer, on a sample of the
//! queries the index has recently been asked (so it follows the data and
//! the queries as they are): recall@10 of the graph search at growing
//! breadths, the smallest that reaches the target kept.

use super::vectors::Vectors;
use crate::index::vector::OwnedVector;
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Recent queries kept for measuring.
const SAMPLES: usize = 64;
/// Queries sampled before the first measurement.
const FIRST_AFTER: usize = 16;
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

/// The smallest breadth whose mean recall@10 over `samples` reaches
/// `target` (exact search the oracle), with that recall; the widest tried
/// and its recall when none does. `None` without samples or vectors.
pub fn measure(vectors: &Vectors, samples: &[OwnedVector], target: f64) -> Option<(usize, f64)> {
    if samples.is_empty() || vectors.is_empty() {
        return None;
    }
    let truths: Vec<HashSet<Vec<u8>>> = samples
        .iter()
        .map(|q| {
            let found = vectors.search(q.as_ref(), K, 0, None, true);
            found.hits.iter().map(|(id, _)| key(id)).collect()
        })
        .collect();
    smallest_breadth(aim(target, samples.len()), |breadth| {
        let mut hits = 0usize;
        let mut wanted = 0usize;
        for (q, truth) in samples.iter().zip(&truths) {
            let found = vectors.search(q.as_ref(), K, breadth, None, false);
            hits += found
                .hits
                .iter()
                .filter(|(id, _)| truth.contains(&key(id)))
                .count();
            wanted += truth.len();
        }
        if wanted == 0 {
            1.0
        } else {
            hits as f64 / wanted as f64
        }
    })
}

/// The recall the sample must show for queries at large to reach
/// `target`: `target` plus one standard error of a recall@10 measured on
/// `samples` queries (`sqrt(t (1 − t) / (10 · samples))`, the binomial
/// error over their 10 · `samples` neighbours), capped below 1. The
/// smallest breadth that passes on one sample tends to fall a little short
/// on others (it was picked because this sample passed); the margin keeps
/// held-out recall at the target.
pub fn aim(target: f64, samples: usize) -> f64 {
    let n = (K * samples.max(1)) as f64;
    (target + (target * (1.0 - target) / n).sqrt()).min(0.999)
}

/// The smallest breadth at which `recall_at` reaches `target`, with its
/// recall: up the [`BREADTHS`] ladder to the first that reaches it, then a
/// binary search between it and the one below (recall grows with the
/// breadth, so the smallest is found in a few more measurements rather
/// than taking a step that may be half again too wide); the widest and
/// its recall when none reaches it.
pub fn smallest_breadth(
    target: f64,
    mut recall_at: impl FnMut(usize) -> f64,
) -> Option<(usize, f64)> {
    // Never narrower than the first rung (the `k` measured at).
    let mut below = BREADTHS[0] - 1;
    let mut found = None;
    for &breadth in BREADTHS {
        let recall = recall_at(breadth);
        if recall >= target {
            found = Some((breadth, recall));
            break;
        }
        below = breadth;
        found = Some((breadth, recall));
    }
    let (mut high, mut at_high) = found?;
    if at_high < target {
        return Some((high, at_high));
    }
    // Invariant: `below` misses the target (or is under the first rung),
    // `high` reaches it.
    while high - below > 1 {
        let mid = below + (high - below) / 2;
        let recall = recall_at(mid);
        if recall >= target {
            (high, at_high) = (mid, recall);
        } else {
            below = mid;
        }
    }
    Some((high, at_high))
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
        let (breadth, recall) = measure(&vectors, &samples, 0.99).unwrap();
        assert!(recall >= 0.99 && breadth >= K, "{breadth} {recall}");
        assert!(measure(&vectors, &[], 0.9).is_none());
    }

    #[test]
    fn the_aim_is_one_standard_error_over_the_target() {
        // 64 queries, 640 neighbours: sqrt(0.95 · 0.05 / 640) = 0.00862.
        assert!((aim(0.95, 64) - 0.95862).abs() < 1e-4, "{}", aim(0.95, 64));
        assert!(aim(0.95, 10_000) > 0.95 && aim(0.95, 10_000) < 0.951);
        assert_eq!(aim(0.999, 1), 0.999);
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

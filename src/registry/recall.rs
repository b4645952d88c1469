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
    let mut last = None;
    for &breadth in BREADTHS {
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
        let recall = if wanted == 0 {
            1.0
        } else {
            hits as f64 / wanted as f64
        };
        last = Some((breadth, recall));
        if recall >= target {
            break;
        }
    }
    last
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
        assert!(
            recall >= 0.99 && BREADTHS.contains(&breadth),
            "{breadth} {recall}"
        );
        assert!(measure(&vectors, &[], 0.9).is_none());
    }
}

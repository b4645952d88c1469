//! Similarity measures and the scores clients see.
//!
//! Internally every measure is a *distance* (smaller is nearer), so one
//! search routine serves all three. Scores are normalised to [0, 1] the way
//! Atlas Vector Search reports them:
//!
//! | similarity   | distance used       | score                 |
//! |--------------|---------------------|-----------------------|
//! | `cosine`     | `1 - cos(a, b)`     | `(1 + cos) / 2`       |
//! | `dotProduct` | `-(a · b)`          | `(1 + a · b) / 2`     |
//! | `euclidean`  | `‖a - b‖²`          | `1 / (1 + ‖a - b‖)`   |
//!
//! Cosine vectors are stored L2-normalised, so cosine is a dot product.
//! As in Atlas, `dotProduct` is meant for unit-length vectors: only for
//! them does its score lie in [0, 1], and the graph is tuned for them.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Similarity {
    Cosine,
    DotProduct,
    Euclidean,
}

impl Similarity {
    pub fn parse(name: &str) -> Option<Similarity> {
        match name {
            "cosine" => Some(Similarity::Cosine),
            "dotProduct" => Some(Similarity::DotProduct),
            "euclidean" => Some(Similarity::Euclidean),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Similarity::Cosine => "cosine",
            Similarity::DotProduct => "dotProduct",
            Similarity::Euclidean => "euclidean",
        }
    }

    /// Prepares a vector for storage or querying: cosine vectors are
    /// normalised. `None` for vectors that cannot be compared (a zero
    /// vector under cosine, or non-finite values).
    pub fn prepare(self, mut v: Vec<f32>) -> Option<Vec<f32>> {
        if v.iter().any(|x| !x.is_finite()) {
            return None;
        }
        if self == Similarity::Cosine {
            let norm = dot(&v, &v).sqrt();
            if norm == 0.0 || !norm.is_finite() {
                return None;
            }
            v.iter_mut().for_each(|x| *x /= norm);
        }
        Some(v)
    }

    /// Distance between two prepared vectors; smaller is nearer.
    #[inline]
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Similarity::Cosine => 1.0 - dot(a, b),
            Similarity::DotProduct => -dot(a, b),
            Similarity::Euclidean => l2_squared(a, b),
        }
    }

    /// The Atlas-normalised score for a distance.
    pub fn score(self, distance: f32) -> f64 {
        let d = f64::from(distance);
        match self {
            Similarity::Cosine => (1.0 + (1.0 - d)) / 2.0,
            Similarity::DotProduct => (1.0 - d) / 2.0,
            Similarity::Euclidean => 1.0 / (1.0 + d.max(0.0).sqrt()),
        }
    }
}

/// Dot product with eight independent accumulators, so the compiler can
/// vectorise it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for i in 0..8 {
            let d = ca[i] - cb[i];
            acc[i] += d * d;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks..a.len() {
        let d = a[i] - b[i];
        sum += d * d;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_atlas_normalisation() {
        let cos = Similarity::Cosine;
        let a = cos.prepare(vec![1.0, 0.0]).unwrap();
        let b = cos.prepare(vec![0.0, 3.0]).unwrap();
        let c = cos.prepare(vec![-2.0, 0.0]).unwrap();
        assert!((cos.score(cos.distance(&a, &a)) - 1.0).abs() < 1e-6);
        assert!((cos.score(cos.distance(&a, &b)) - 0.5).abs() < 1e-6);
        assert!(cos.score(cos.distance(&a, &c)).abs() < 1e-6);

        let l2 = Similarity::Euclidean;
        let d = l2.distance(&[0.0, 0.0], &[3.0, 4.0]);
        assert_eq!(d, 25.0);
        assert!((l2.score(d) - 1.0 / 6.0).abs() < 1e-9);

        let dp = Similarity::DotProduct;
        let d = dp.distance(&[0.6, 0.8], &[0.6, 0.8]);
        assert!((dp.score(d) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn unusable_vectors_are_refused() {
        assert!(Similarity::Cosine.prepare(vec![0.0, 0.0]).is_none());
        assert!(Similarity::Euclidean.prepare(vec![f32::NAN]).is_none());
        assert!(Similarity::Euclidean.prepare(vec![0.0, 0.0]).is_some());
    }

    #[test]
    fn kernels_match_the_naive_sums() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32).sin()).collect();
        let naive_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let naive_l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((dot(&a, &b) - naive_dot).abs() < 1e-3);
        assert!((l2_squared(&a, &b) - naive_l2).abs() < 1e-3);
    }
}

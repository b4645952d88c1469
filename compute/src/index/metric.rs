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
        (self.distance_fn())(a, b)
    }

    /// The distance as a plain function pointer, already specialised for
    /// this CPU and measure: hot loops fetch it once and call it directly.
    #[inline]
    pub fn distance_fn(self) -> DistanceFn {
        KERNELS.distance[self.kernel()]
    }

    fn kernel(self) -> usize {
        match self {
            Similarity::Cosine => COSINE,
            Similarity::DotProduct => DOT,
            Similarity::Euclidean => L2,
        }
    }

    /// The Atlas-normalised score for a distance.
    pub fn score(self, distance: f32) -> f64 {
        let d = f64::from(distance);
        match self {
            Similarity::Cosine => (1.0 + (1.0 - d)) / 2.0,
            // Never below 0, as Lucene (so Atlas) clamps it, for vectors
            // that are not unit-length.
            Similarity::DotProduct => ((1.0 - d) / 2.0).max(0.0),
            Similarity::Euclidean => 1.0 / (1.0 + d.max(0.0).sqrt()),
        }
    }
}

/// A distance between two vectors of the same length.
pub type DistanceFn = fn(&[f32], &[f32]) -> f32;

/// Kernel numbers (`Kernels::distance` positions).
const COSINE: usize = 0;
const DOT: usize = 1;
const L2: usize = 2;

/// The three distances, compiled for the widest vectors the CPU has
/// (AVX-512, AVX2+FMA, or the portable build), chosen once at first use.
struct Kernels {
    distance: [DistanceFn; 3],
}

static KERNELS: std::sync::LazyLock<Kernels> = std::sync::LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Kernels {
                distance: [x86::avx512::<COSINE>, x86::avx512::<DOT>, x86::avx512::<L2>],
            };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Kernels {
                distance: [x86::avx2::<COSINE>, x86::avx2::<DOT>, x86::avx2::<L2>],
            };
        }
    }
    Kernels {
        distance: [portable::<COSINE>, portable::<DOT>, portable::<L2>],
    }
});

#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    -(KERNELS.distance[DOT])(a, b)
}

#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    (KERNELS.distance[L2])(a, b)
}

/// Distance `KIND` over `W`-wide registers: the bulk in blocks of four
/// registers with an accumulator each (so four fused multiply-adds are in
/// flight instead of one chain waiting on the last), then single registers,
/// then the scalar tail.
#[inline(always)]
fn lanes<const KIND: usize, const W: usize, const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut acc = [[0.0f32; W]; 4];
    let step = |acc: &mut [f32; W], ca: &[f32], cb: &[f32]| {
        for i in 0..W {
            let (x, y) = if KIND == L2 {
                let d = ca[i] - cb[i];
                (d, d)
            } else {
                (ca[i], cb[i])
            };
            // `mul_add` is one instruction only where the CPU has FMA (and
            // a slow library call elsewhere), hence the switch.
            acc[i] = if FMA {
                x.mul_add(y, acc[i])
            } else {
                acc[i] + x * y
            };
        }
    };
    let wide = len / (4 * W) * (4 * W);
    for (ca, cb) in a[..wide]
        .chunks_exact(4 * W)
        .zip(b[..wide].chunks_exact(4 * W))
    {
        for (r, acc) in acc.iter_mut().enumerate() {
            step(acc, &ca[r * W..][..W], &cb[r * W..][..W]);
        }
    }
    let narrow = wide + (len - wide) / W * W;
    for (ca, cb) in a[wide..narrow]
        .chunks_exact(W)
        .zip(b[wide..narrow].chunks_exact(W))
    {
        step(&mut acc[0], ca, cb);
    }
    let [r0, r1, r2, r3] = acc;
    let mut sum = 0.0f32;
    for (((x0, x1), x2), x3) in r0.iter().zip(&r1).zip(&r2).zip(&r3) {
        sum += (x0 + x1) + (x2 + x3);
    }
    for i in narrow..len {
        if KIND == L2 {
            let d = a[i] - b[i];
            sum += d * d;
        } else {
            sum += a[i] * b[i];
        }
    }
    match KIND {
        COSINE => 1.0 - sum,
        DOT => -sum,
        _ => sum,
    }
}

fn portable<const KIND: usize>(a: &[f32], b: &[f32]) -> f32 {
    lanes::<KIND, 8, false>(a, b)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn lanes512<const KIND: usize>(a: &[f32], b: &[f32]) -> f32 {
        super::lanes::<KIND, 16, true>(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn lanes256<const KIND: usize>(a: &[f32], b: &[f32]) -> f32 {
        super::lanes::<KIND, 8, true>(a, b)
    }

    // SAFETY (both): only installed in `KERNELS` after the CPU was found
    // to have the features they are compiled for.
    pub fn avx512<const KIND: usize>(a: &[f32], b: &[f32]) -> f32 {
        unsafe { lanes512::<KIND>(a, b) }
    }

    pub fn avx2<const KIND: usize>(a: &[f32], b: &[f32]) -> f32 {
        unsafe { lanes256::<KIND>(a, b) }
    }
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
        // Lengths that end in every part of the kernels: four-register
        // blocks, single registers, the scalar tail.
        for len in [0usize, 1, 5, 37, 85, 128, 130, 384] {
            let a: Vec<f32> = (0..len).map(|i| i as f32 * 0.25 - 3.0).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32).sin()).collect();
            let naive_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let naive_l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            let close = |x: f32, y: f32| (x - y).abs() <= 1e-4 * (1.0 + y.abs());
            assert!(close(dot(&a, &b), naive_dot), "{len}");
            assert!(close(l2_squared(&a, &b), naive_l2), "{len}");
            assert!(close(-portable::<DOT>(&a, &b), naive_dot), "{len}");
            assert!(close(portable::<L2>(&a, &b), naive_l2), "{len}");
            assert!(close(portable::<COSINE>(&a, &b), 1.0 - naive_dot), "{len}");
            let cos = Similarity::Cosine.distance_fn();
            assert!(close(cos(&a, &b), 1.0 - naive_dot), "{len}");
        }
    }
}

//! What an engine stores a vector's dimensions as: `f32`, `i8`, or packed
//! bits (`u8` bytes, eight dimensions each, most significant bit first),
//! the three dtypes of the BSON binary vector format
//! (`specifications/source/bson-binary-vector`) that Atlas indexes.
//!
//! Each dtype holds the values of the one before it exactly (a bit is 0 or
//! 1, an `i8` is an integer in -128..=127, both are `f32`s), so an index
//! stores its vectors at the narrowest dtype that holds all of them and
//! widens (once, keeping its graph) when a wider vector arrives. Distances
//! are those of the widened `f32` vectors, computed on the stored dtype:
//! integer sums for `i8`, population counts for bits (the squared
//! euclidean distance of 0/1 vectors is their Hamming distance).
//!
//! `f32` rows are stored *prepared* (L2-normalised under cosine, see
//! `Similarity::prepare`); `i8` and bit rows are stored as they came, and
//! their cosine kernels divide by the norms.

use super::persist::{Reader, Writer};
use super::Similarity;
use std::io;

/// The dtypes, narrowest first: each holds every value of those before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dtype {
    /// Packed bits (Atlas's `int1`).
    Bits,
    /// Signed bytes (Atlas's `int8`).
    I8,
    /// 32-bit floats.
    F32,
}

impl Dtype {
    /// The snapshot byte.
    pub(crate) fn tag(self) -> u8 {
        match self {
            Dtype::F32 => 0,
            Dtype::I8 => 1,
            Dtype::Bits => 2,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Dtype> {
        match tag {
            0 => Some(Dtype::F32),
            1 => Some(Dtype::I8),
            2 => Some(Dtype::Bits),
            _ => None,
        }
    }

    /// Bytes a row of `dims` dimensions takes.
    pub fn row_bytes(self, dims: usize) -> usize {
        match self {
            Dtype::F32 => 4 * dims,
            Dtype::I8 => dims,
            Dtype::Bits => dims.div_ceil(8),
        }
    }
}

/// A distance between two stored rows (smaller is nearer).
pub type RowDistance<E> = fn(&[E], &[E]) -> f32;

/// An element type engines store rows of.
pub trait Element: Copy + Default + PartialEq + Send + Sync + std::fmt::Debug + 'static {
    const DTYPE: Dtype;

    /// Elements in a row of `dims` dimensions.
    fn row_len(dims: usize) -> usize;

    /// The distance of `similarity` between two rows, specialised for this
    /// CPU (chosen once at first use).
    fn distance_fn(similarity: Similarity) -> RowDistance<Self>;

    /// The row's values as `f32`s, `dims` long, as stored (prepared for
    /// `f32` rows, raw for the others).
    fn values(row: &[Self], dims: usize, out: &mut Vec<f32>);

    /// The row holding exactly `values` (raw, `dims` long), prepared for
    /// `similarity` where this dtype stores prepared rows; `None` when this
    /// dtype cannot hold them, or `similarity` cannot compare them.
    fn from_values(values: &[f32], similarity: Similarity) -> Option<Vec<Self>>;

    /// Writes rows (length-prefixed) into a snapshot.
    fn write(w: &mut Writer, rows: &[Self]);

    /// Reads what `write` wrote.
    fn read(r: &mut Reader<'_>) -> io::Result<Vec<Self>>;
}

/// The prepared `f32` form of a stored row (what an `f32` index would have
/// stored for the same vector): a zero row under cosine stays zeros.
pub fn prepared<E: Element>(row: &[E], dims: usize, similarity: Similarity, out: &mut Vec<f32>) {
    E::values(row, dims, out);
    if E::DTYPE != Dtype::F32 && similarity == Similarity::Cosine {
        let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            out.iter_mut().for_each(|x| *x /= norm);
        }
    }
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;

    fn row_len(dims: usize) -> usize {
        dims
    }

    fn distance_fn(similarity: Similarity) -> RowDistance<f32> {
        similarity.distance_fn()
    }

    fn values(row: &[f32], _dims: usize, out: &mut Vec<f32>) {
        out.clear();
        out.extend_from_slice(row);
    }

    fn from_values(values: &[f32], similarity: Similarity) -> Option<Vec<f32>> {
        similarity.prepare(values.to_vec())
    }

    fn write(w: &mut Writer, rows: &[f32]) {
        w.f32s(rows);
    }

    fn read(r: &mut Reader<'_>) -> io::Result<Vec<f32>> {
        r.f32s()
    }
}

impl Element for i8 {
    const DTYPE: Dtype = Dtype::I8;

    fn row_len(dims: usize) -> usize {
        dims
    }

    fn distance_fn(similarity: Similarity) -> RowDistance<i8> {
        I8_KERNELS[kernel(similarity)]
    }

    fn values(row: &[i8], _dims: usize, out: &mut Vec<f32>) {
        out.clear();
        out.extend(row.iter().map(|&x| f32::from(x)));
    }

    fn from_values(values: &[f32], similarity: Similarity) -> Option<Vec<i8>> {
        let row: Vec<i8> = values
            .iter()
            .map(|&x| (x.fract() == 0.0 && (-128.0..=127.0).contains(&x)).then_some(x as i8))
            .collect::<Option<_>>()?;
        comparable(&row, similarity, |&x| x != 0).then_some(row)
    }

    fn write(w: &mut Writer, rows: &[i8]) {
        w.bytes(&rows.iter().map(|&x| x as u8).collect::<Vec<u8>>());
    }

    fn read(r: &mut Reader<'_>) -> io::Result<Vec<i8>> {
        Ok(r.bytes()?.into_iter().map(|x| x as i8).collect())
    }
}

/// Packed bits: one `u8` holds eight dimensions, most significant bit
/// first; the last byte's unused low bits are zero.
impl Element for u8 {
    const DTYPE: Dtype = Dtype::Bits;

    fn row_len(dims: usize) -> usize {
        dims.div_ceil(8)
    }

    fn distance_fn(similarity: Similarity) -> RowDistance<u8> {
        BIT_KERNELS[kernel(similarity)]
    }

    fn values(row: &[u8], dims: usize, out: &mut Vec<f32>) {
        out.clear();
        out.extend((0..dims).map(|i| f32::from((row[i / 8] >> (7 - i % 8)) & 1)));
    }

    fn from_values(values: &[f32], similarity: Similarity) -> Option<Vec<u8>> {
        let mut row = vec![0u8; values.len().div_ceil(8)];
        for (i, &x) in values.iter().enumerate() {
            if x == 1.0 {
                row[i / 8] |= 0x80 >> (i % 8);
            } else if x != 0.0 {
                return None;
            }
        }
        comparable(&row, similarity, |&x| x != 0).then_some(row)
    }

    fn write(w: &mut Writer, rows: &[u8]) {
        w.bytes(rows);
    }

    fn read(r: &mut Reader<'_>) -> io::Result<Vec<u8>> {
        r.bytes()
    }
}

/// Cosine cannot compare a zero vector (as `Similarity::prepare` refuses
/// it for `f32`).
fn comparable<T>(row: &[T], similarity: Similarity, nonzero: impl Fn(&T) -> bool) -> bool {
    similarity != Similarity::Cosine || row.iter().any(nonzero)
}

const COSINE: usize = 0;
const DOT: usize = 1;
const L2: usize = 2;

fn kernel(similarity: Similarity) -> usize {
    match similarity {
        Similarity::Cosine => COSINE,
        Similarity::DotProduct => DOT,
        Similarity::Euclidean => L2,
    }
}

/// `1 - a·b / (‖a‖ ‖b‖)`, and 1 (orthogonal) when either is zero.
#[inline(always)]
fn cosine_of(ab: f64, aa: f64, bb: f64) -> f32 {
    if aa == 0.0 || bb == 0.0 {
        1.0
    } else {
        (1.0 - ab / (aa * bb).sqrt()) as f32
    }
}

/// The `i8` sums in `i32` (exact: 8,192 dimensions of 128² stay far
/// below `i32::MAX`), written so the compiler vectorises them for the
/// features of the function it is inlined into.
#[inline(always)]
fn i8_sums<const KIND: usize>(a: &[i8], b: &[i8]) -> f32 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    match KIND {
        L2 => {
            let mut sum = 0i32;
            for (&x, &y) in a.iter().zip(b) {
                let d = i32::from(x) - i32::from(y);
                sum += d * d;
            }
            sum as f32
        }
        DOT => {
            let mut sum = 0i32;
            for (&x, &y) in a.iter().zip(b) {
                sum += i32::from(x) * i32::from(y);
            }
            -(sum as f32)
        }
        _ => {
            let (mut ab, mut aa, mut bb) = (0i32, 0i32, 0i32);
            for (&x, &y) in a.iter().zip(b) {
                let (x, y) = (i32::from(x), i32::from(y));
                ab += x * y;
                aa += x * x;
                bb += y * y;
            }
            cosine_of(f64::from(ab), f64::from(aa), f64::from(bb))
        }
    }
}

/// Population counts over packed bits, eight bytes at a time.
#[inline(always)]
fn bit_sums<const KIND: usize>(a: &[u8], b: &[u8]) -> f32 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(w)
    };
    let (mut ab, mut aa, mut bb, mut differ) = (0u32, 0u32, 0u32, 0u32);
    for (ca, cb) in a.chunks(8).zip(b.chunks(8)) {
        let (x, y) = (word(ca), word(cb));
        match KIND {
            L2 => differ += (x ^ y).count_ones(),
            DOT => ab += (x & y).count_ones(),
            _ => {
                ab += (x & y).count_ones();
                aa += x.count_ones();
                bb += y.count_ones();
            }
        }
    }
    match KIND {
        L2 => differ as f32,
        DOT => -(ab as f32),
        _ => cosine_of(f64::from(ab), f64::from(aa), f64::from(bb)),
    }
}

fn i8_portable<const KIND: usize>(a: &[i8], b: &[i8]) -> f32 {
    i8_sums::<KIND>(a, b)
}

fn bit_portable<const KIND: usize>(a: &[u8], b: &[u8]) -> f32 {
    bit_sums::<KIND>(a, b)
}

static I8_KERNELS: std::sync::LazyLock<[RowDistance<i8>; 3]> = std::sync::LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512bw") {
            return [
                x86::i8_avx512::<COSINE>,
                x86::i8_avx512::<DOT>,
                x86::i8_avx512::<L2>,
            ];
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return [
                x86::i8_avx2::<COSINE>,
                x86::i8_avx2::<DOT>,
                x86::i8_avx2::<L2>,
            ];
        }
    }
    [i8_portable::<COSINE>, i8_portable::<DOT>, i8_portable::<L2>]
});

static BIT_KERNELS: std::sync::LazyLock<[RowDistance<u8>; 3]> = std::sync::LazyLock::new(|| {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("popcnt") {
            return [
                x86::bit_popcnt::<COSINE>,
                x86::bit_popcnt::<DOT>,
                x86::bit_popcnt::<L2>,
            ];
        }
    }
    [
        bit_portable::<COSINE>,
        bit_portable::<DOT>,
        bit_portable::<L2>,
    ]
});

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn i8_512<const KIND: usize>(a: &[i8], b: &[i8]) -> f32 {
        super::i8_sums::<KIND>(a, b)
    }

    #[target_feature(enable = "avx2")]
    unsafe fn i8_256<const KIND: usize>(a: &[i8], b: &[i8]) -> f32 {
        super::i8_sums::<KIND>(a, b)
    }

    #[target_feature(enable = "popcnt")]
    unsafe fn bits_popcnt<const KIND: usize>(a: &[u8], b: &[u8]) -> f32 {
        super::bit_sums::<KIND>(a, b)
    }

    // SAFETY (all three): only installed in the kernel tables after the
    // CPU was found to have the features they are compiled for.
    pub fn i8_avx512<const KIND: usize>(a: &[i8], b: &[i8]) -> f32 {
        unsafe { i8_512::<KIND>(a, b) }
    }

    pub fn i8_avx2<const KIND: usize>(a: &[i8], b: &[i8]) -> f32 {
        unsafe { i8_256::<KIND>(a, b) }
    }

    pub fn bit_popcnt<const KIND: usize>(a: &[u8], b: &[u8]) -> f32 {
        unsafe { bits_popcnt::<KIND>(a, b) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every dtype's kernels give the distance of the widened, prepared
    /// `f32` vectors.
    #[test]
    fn kernels_match_the_widened_f32_distances() {
        for dims in [1usize, 7, 8, 9, 63, 64, 65, 130, 384] {
            let a: Vec<f32> = (0..dims)
                .map(|i| ((i * 37 + 11) % 255) as f32 - 127.0)
                .collect();
            let b: Vec<f32> = (0..dims)
                .map(|i| ((i * 91 + 3) % 256) as f32 - 128.0)
                .collect();
            let bits_a: Vec<f32> = (0..dims)
                .map(|i| ((i * 7 + 1) % 3 == 0) as u8 as f32)
                .collect();
            let mut bits_b: Vec<f32> = (0..dims).map(|i| ((i * 5) % 4 == 1) as u8 as f32).collect();
            bits_b[0] = 1.0;
            for sim in [
                Similarity::Cosine,
                Similarity::DotProduct,
                Similarity::Euclidean,
            ] {
                let want = |x: &[f32], y: &[f32]| {
                    let (px, py) = (sim.prepare(x.to_vec()), sim.prepare(y.to_vec()));
                    match (px, py) {
                        (Some(px), Some(py)) => sim.distance(&px, &py),
                        _ => 1.0,
                    }
                };
                let close = |x: f32, y: f32| (x - y).abs() <= 1e-4 * (1.0 + y.abs());
                let (ia, ib) = (
                    i8::from_values(&a, sim).unwrap(),
                    i8::from_values(&b, sim).unwrap(),
                );
                let got = i8::distance_fn(sim)(&ia, &ib);
                assert!(
                    close(got, want(&a, &b)),
                    "i8 {sim:?} {dims}: {got} vs {}",
                    want(&a, &b)
                );
                assert_eq!(i8_portable::<0>(&ia, &ib), I8_KERNELS[0](&ia, &ib));
                if bits_a.iter().any(|&x| x != 0.0) {
                    let (ba, bb) = (
                        u8::from_values(&bits_a, sim).unwrap(),
                        u8::from_values(&bits_b, sim).unwrap(),
                    );
                    let got = u8::distance_fn(sim)(&ba, &bb);
                    assert!(close(got, want(&bits_a, &bits_b)), "bits {sim:?} {dims}");
                    let mut back = Vec::new();
                    u8::values(&ba, dims, &mut back);
                    assert_eq!(back, bits_a);
                }
            }
        }
    }

    #[test]
    fn each_dtype_holds_exactly_what_it_can() {
        let e = Similarity::Euclidean;
        assert_eq!(
            i8::from_values(&[1.0, -128.0, 127.0], e),
            Some(vec![1, -128, 127])
        );
        assert_eq!(i8::from_values(&[0.5], e), None);
        assert_eq!(i8::from_values(&[128.0], e), None);
        assert_eq!(
            u8::from_values(&[1.0, 0.0, 1.0], e),
            Some(vec![0b1010_0000])
        );
        assert_eq!(u8::from_values(&[2.0], e), None);
        // Cosine cannot compare zero vectors, whatever the dtype.
        assert_eq!(i8::from_values(&[0.0, 0.0], Similarity::Cosine), None);
        assert_eq!(u8::from_values(&[0.0], Similarity::Cosine), None);
        assert!(Dtype::Bits < Dtype::I8 && Dtype::I8 < Dtype::F32);
        assert_eq!(Dtype::Bits.row_bytes(9), 2);
    }
}

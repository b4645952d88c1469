//! Quantized indexes (Atlas's `quantization: "scalar" | "binary"`): the
//! graph is built and walked over small codes held in memory, and the
//! best candidates are rescored with the full-precision vectors, which
//! live in a file mapped into memory (so the kernel's page cache holds
//! them, not the process's heap).
//!
//! - `scalar`: each prepared `f32` value `x` becomes the int8 code
//!   `round(x · s)` clamped to ±127, one scale `s = 127 / q` for every
//!   dimension, `q` the 99.9th percentile of `|x|` over the first
//!   [`TRAIN_AT`] vectors (later values past it are clamped; rescoring
//!   restores their order). One scale, not one range per dimension,
//!   so codes compare with the int8 kernels directly (as Qdrant's scalar
//!   quantization does).
//! - `binary`: one bit per dimension, set when the value is above that
//!   dimension's mean over the first [`TRAIN_AT`] vectors (Atlas takes 0
//!   as the midpoint; for unit-length embeddings the means are close to
//!   0, and centring keeps bits informative for data that is not centred
//!   at the origin), compared by Hamming distance; the graph's beam is
//!   ranked again by the centred query against the bits before rescoring.
//!
//! Searches walk the codes with the asked breadth, keep the best
//! `k × oversampling` by code distance, and return the `k` best of those
//! by the exact distance of the full vectors (what an `f32` index would
//! report). Exact searches (`exact_among`), filters selective enough to
//! be scanned, and any search before the codes are trained (the first
//! [`TRAIN_AT`] live vectors) read the full vectors only.

use super::element::Dtype;
use super::engine::{Engine, VectorRef};
use super::hnsw::HnswParams;
use super::persist::{corrupt, Reader, Writer};
use super::{Hit, KeySet, Similarity, TopK};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// How an index quantizes its vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    Scalar,
    Binary,
}

/// Live vectors an index takes before it learns its codes (the scalar
/// scale, the binary midpoints).
pub const TRAIN_AT: usize = 1024;

/// Default rescoring oversampling (`k × this` candidates): what reached
/// recall@10 ≥ 0.95 (scalar) and ≥ 0.90 (binary) on 384-dimensional
/// MiniLM embeddings in `scripts/bench ann`.
pub fn default_oversampling(quantization: Quantization) -> usize {
    match quantization {
        Quantization::Scalar => 3,
        Quantization::Binary => 10,
    }
}

/// Where full-precision vector files are made (the proxy's data
/// directory, else the system's temporary directory). Set once, at start.
static SPILL_DIR: OnceLock<PathBuf> = OnceLock::new();
static FILES: AtomicU64 = AtomicU64::new(0);

/// Makes quantized indexes keep their full-precision vectors under `dir`
/// (the first call wins).
pub fn set_spill_dir(dir: PathBuf) {
    let _ = SPILL_DIR.set(dir);
}

/// Full-precision rows by key, in an unlinked file mapped into memory
/// (`key · dims · 4` bytes in; the mapping grows by doubling), or on the
/// heap for any row the file could not take. The kernel's page cache
/// holds the mapped rows: they count as file-backed, not anonymous,
/// memory, and can be paged out.
struct Rows {
    dims: usize,
    file: Option<File>,
    /// The mapping (null when none) and its length in bytes.
    map: *mut u8,
    mapped: usize,
    fallback: HashMap<u32, Vec<f32>>,
}

// SAFETY: the mapping is private to this value; it is written only
// through `&mut self` (so never while a `&self` reader holds a row) and
// unmapped on drop.
unsafe impl Send for Rows {}
unsafe impl Sync for Rows {}

impl Drop for Rows {
    fn drop(&mut self) {
        self.unmap();
    }
}

impl Rows {
    fn new(dims: usize) -> Rows {
        let dir = SPILL_DIR.get().cloned().unwrap_or_else(std::env::temp_dir);
        let name = format!(
            "likewise-{}-{}.f32",
            std::process::id(),
            FILES.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .ok();
        // Unlinked at once: it goes when the index does, even after a crash.
        let _ = std::fs::remove_file(&path);
        Rows {
            dims,
            file,
            map: std::ptr::null_mut(),
            mapped: 0,
            fallback: HashMap::new(),
        }
    }

    fn unmap(&mut self) {
        if !self.map.is_null() {
            // SAFETY: `map` is a live mapping of `mapped` bytes made below.
            unsafe { libc::munmap(self.map.cast(), self.mapped) };
            self.map = std::ptr::null_mut();
            self.mapped = 0;
        }
    }

    /// Grows the file and its mapping to hold `end` bytes. The new
    /// space is allocated on disk first (`posix_fallocate`), so a full
    /// disk is a `false` here rather than a SIGBUS on a later write, and
    /// the old mapping stays until the new one exists.
    fn reserve(&mut self, end: usize) -> bool {
        if end <= self.mapped {
            return true;
        }
        let Some(file) = &self.file else {
            return false;
        };
        let Some(len) = end
            .checked_next_power_of_two()
            .map(|n| n.max(1 << 20))
            .filter(|&n| n >= end && i64::try_from(n).is_ok())
        else {
            return false;
        };
        let fd = std::os::unix::io::AsRawFd::as_raw_fd(file);
        // SAFETY: plain system calls on our own descriptor, checked.
        let allocated = unsafe {
            libc::posix_fallocate(
                fd,
                self.mapped as libc::off_t,
                (len - self.mapped) as libc::off_t,
            )
        };
        if allocated != 0 {
            return false;
        }
        // SAFETY: a shared read-write mapping of `len` bytes of our own
        // file, which is now at least `len` bytes long; checked for failure.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return false;
        }
        self.unmap();
        self.map = map.cast();
        self.mapped = len;
        true
    }

    /// Where the row of `key` starts and ends in the file (`None` past
    /// what the address space can hold).
    fn span(&self, key: u32) -> Option<(usize, usize)> {
        let bytes = self.dims.checked_mul(4)?;
        let at = (key as usize).checked_mul(bytes)?;
        Some((at, at.checked_add(bytes)?))
    }

    fn put(&mut self, key: u32, row: &[f32]) {
        let span = self.span(key).filter(|_| row.len() == self.dims);
        if let Some((at, _)) = span.filter(|&(_, end)| self.reserve(end)) {
            // SAFETY: `at + dims · 4 <= mapped`, 4-aligned (the mapping is
            // page-aligned), and no `&self` borrow is alive.
            unsafe {
                std::ptr::copy_nonoverlapping(row.as_ptr(), self.map.add(at).cast(), self.dims)
            };
            self.fallback.remove(&key);
        } else {
            self.fallback.insert(key, row.to_vec());
        }
    }

    /// The row of `key`: what was put, zeros for a key never put inside
    /// the mapping, `None` past it.
    fn row(&self, key: u32) -> Option<&[f32]> {
        if let Some(row) = self.fallback.get(&key) {
            return Some(row);
        }
        let (at, end) = self.span(key)?;
        if end > self.mapped {
            return None;
        }
        // SAFETY: in bounds and 4-aligned as above; written only through
        // `&mut self`, which this borrow excludes.
        Some(unsafe { std::slice::from_raw_parts(self.map.add(at).cast::<f32>(), self.dims) })
    }

    /// The row of `key` into `out` (`false`: none could be read).
    fn get(&self, key: u32, out: &mut Vec<f32>) -> bool {
        match self.row(key) {
            Some(row) => {
                out.clear();
                out.extend_from_slice(row);
                true
            }
            None => false,
        }
    }

    fn forget(&mut self, key: u32) {
        self.fallback.remove(&key);
    }
}

/// A quantized index: codes in an HNSW [`Engine`], full vectors in
/// [`Rows`].
pub struct Quantized {
    quantization: Quantization,
    dims: usize,
    similarity: Similarity,
    oversampling: usize,
    /// The scalar scale, once learned.
    scale: Option<f32>,
    /// The binary midpoints (per-dimension means), once learned.
    means: Option<Vec<f32>>,
    codes: Engine,
    full: Rows,
    /// Live keys (a bit per slot) and how many.
    live: Vec<u64>,
    count: usize,
    slots: usize,
    /// Scalar keys stored before the scale was learned.
    pending: Vec<u32>,
}

impl Quantized {
    /// An empty quantized index; `oversampling` 0 takes the default.
    pub fn new(
        dims: usize,
        similarity: Similarity,
        params: HnswParams,
        quantization: Quantization,
        oversampling: usize,
    ) -> Quantized {
        Quantized {
            quantization,
            dims,
            similarity,
            oversampling: match oversampling {
                0 => default_oversampling(quantization),
                n => n,
            },
            scale: None,
            means: None,
            codes: Engine::hnsw(dims, code_similarity(quantization, similarity), params),
            full: Rows::new(dims),
            live: Vec::new(),
            count: 0,
            slots: 0,
            pending: Vec::new(),
        }
    }

    pub fn quantization(&self) -> Quantization {
        self.quantization
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    pub fn similarity(&self) -> Similarity {
        self.similarity
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The code dtype the graph holds.
    pub fn dtype(&self) -> Dtype {
        match self.quantization {
            Quantization::Scalar => Dtype::I8,
            Quantization::Binary => Dtype::Bits,
        }
    }

    /// Bytes of one code row (what the index keeps in memory per vector,
    /// besides its links).
    pub fn row_bytes(&self) -> usize {
        self.dtype().row_bytes(self.dims)
    }

    fn is_live(&self, key: u32) -> bool {
        self.live
            .get(key as usize / 64)
            .is_some_and(|w| w & (1 << (key % 64)) != 0)
    }

    fn set_live(&mut self, key: u32, on: bool) {
        let (word, bit) = (key as usize / 64, key % 64);
        if word >= self.live.len() {
            self.live.resize(word + 1, 0);
        }
        let was = self.live[word] & (1 << bit) != 0;
        match on {
            true => self.live[word] |= 1 << bit,
            false => self.live[word] &= !(1 << bit),
        }
        match (was, on) {
            (false, true) => self.count += 1,
            (true, false) => self.count -= 1,
            _ => {}
        }
    }

    /// `vector` as prepared `f32` values, `None` when the similarity
    /// cannot compare it.
    fn prepared(&self, vector: VectorRef<'_>) -> Option<Vec<f32>> {
        match vector {
            VectorRef::F32(v) => Some(v.to_vec()),
            other => {
                let mut values = Vec::with_capacity(self.dims);
                other.values(self.dims, &mut values);
                self.similarity.prepare(values)
            }
        }
    }

    /// The code of a prepared vector (scalar: once trained).
    fn code(&self, values: &[f32]) -> Option<Code> {
        match self.quantization {
            Quantization::Scalar => {
                let scale = self.scale?;
                Some(Code::I8(
                    values
                        .iter()
                        .map(|x| (x * scale).round().clamp(-127.0, 127.0) as i8)
                        .collect(),
                ))
            }
            Quantization::Binary => {
                let means = self.means.as_ref()?;
                let mut row = vec![0u8; self.dims.div_ceil(8)];
                for (i, (x, m)) in values.iter().zip(means).enumerate() {
                    if x > m {
                        row[i / 8] |= 0x80 >> (i % 8);
                    }
                }
                Some(Code::Bits(row))
            }
        }
    }

    fn insert_code(&mut self, key: u32, values: &[f32]) {
        match self.code(values) {
            Some(Code::I8(row)) => self.codes.insert(key, VectorRef::I8(&row)),
            Some(Code::Bits(row)) => self.codes.insert(key, VectorRef::Bits(&row)),
            None => {}
        }
    }

    /// Stores `vector` under a fresh key.
    pub fn insert(&mut self, key: u32, vector: VectorRef<'_>) {
        let Some(values) = self.prepared(vector) else {
            return;
        };
        self.full.put(key, &values);
        self.set_live(key, true);
        self.slots = self.slots.max(key as usize + 1);
        if !self.trained() {
            self.pending.push(key);
            if self.pending.len() >= TRAIN_AT {
                self.train();
            }
            return;
        }
        self.insert_code(key, &values);
    }

    fn trained(&self) -> bool {
        self.scale.is_some() || self.means.is_some()
    }

    /// Learns the scalar scale (or the binary midpoints) from the pending
    /// vectors and codes them.
    fn train(&mut self) {
        let keys = std::mem::take(&mut self.pending);
        let live: Vec<u32> = keys.iter().copied().filter(|&k| self.is_live(k)).collect();
        let mut row = Vec::with_capacity(self.dims);
        match self.quantization {
            Quantization::Scalar => {
                let mut magnitudes = Vec::with_capacity(live.len() * self.dims);
                for &key in &live {
                    if self.full.get(key, &mut row) {
                        magnitudes.extend(row.iter().map(|x| x.abs()));
                    }
                }
                let q = if magnitudes.is_empty() {
                    1.0
                } else {
                    let at = ((magnitudes.len() - 1) as f64 * 0.999) as usize;
                    *magnitudes.select_nth_unstable_by(at, f32::total_cmp).1
                };
                self.scale = Some(if q > 0.0 && q.is_finite() {
                    127.0 / q
                } else {
                    1.0
                });
            }
            Quantization::Binary => {
                let mut sums = vec![0f64; self.dims];
                for &key in &live {
                    if let Some(r) = self.full.row(key) {
                        sums.iter_mut()
                            .zip(r)
                            .for_each(|(s, x)| *s += f64::from(*x));
                    }
                }
                let n = live.len().max(1) as f64;
                self.means = Some(sums.iter().map(|s| (s / n) as f32).collect());
            }
        }
        for key in keys {
            if self.is_live(key) && self.full.get(key, &mut row) {
                let values = row.clone();
                self.insert_code(key, &values);
            }
        }
    }

    pub fn remove(&mut self, key: u32) -> bool {
        if !self.is_live(key) {
            return false;
        }
        self.set_live(key, false);
        self.full.forget(key);
        self.codes.remove(key);
        if !self.trained() {
            // Training counts live vectors only.
            self.pending.retain(|&k| k != key);
        }
        true
    }

    /// The full-precision (prepared) vector of a live key.
    pub fn vector(&self, key: u32) -> Option<Vec<f32>> {
        let mut out = Vec::with_capacity(self.dims);
        (self.is_live(key) && self.full.get(key, &mut out)).then_some(out)
    }

    /// Whether `key` holds exactly `vector`.
    pub fn holds(&self, key: u32, vector: VectorRef<'_>) -> bool {
        self.vector(key)
            .is_some_and(|v| self.prepared(vector) == Some(v))
    }

    /// The exact `k` nearest among `keys`, by the full vectors.
    pub fn exact_among(&self, query: VectorRef<'_>, k: usize, keys: &[u32]) -> Vec<Hit> {
        let Some(query) = self.prepared(query) else {
            return Vec::new();
        };
        self.rescore(&query, k, keys.iter().copied())
    }

    fn rescore(&self, query: &[f32], k: usize, keys: impl Iterator<Item = u32>) -> Vec<Hit> {
        let distance = self.similarity.distance_fn();
        let mut top = TopK::new(k);
        for key in keys {
            if let Some(row) = self.full.row(key).filter(|_| self.is_live(key)) {
                top.push(Hit {
                    key,
                    distance: distance(query, row),
                });
            }
        }
        top.into_sorted()
    }

    /// Every live key (for searches before training).
    fn live_keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.live.iter().enumerate().flat_map(|(w, bits)| {
            (0..64u32)
                .filter(move |b| bits & (1u64 << b) != 0)
                .map(move |b| w as u32 * 64 + b)
        })
    }

    /// Candidates from the codes, then the `k` best by full vectors; the
    /// strategy's name and the vectors compared.
    fn search(
        &self,
        query: VectorRef<'_>,
        k: usize,
        ef: usize,
        allowed: Option<&KeySet>,
    ) -> (Vec<Hit>, &'static str, usize) {
        let Some(values) = self.prepared(query) else {
            return (Vec::new(), "", 0);
        };
        let code = match self.code(&values) {
            Some(code) if !self.codes.is_empty() => code,
            _ => {
                // Not trained yet: every live vector, exactly.
                return match allowed {
                    Some(a) => (
                        self.rescore(&values, k, a.keys().iter().copied()),
                        "exact scan of filter matches (quantizer not trained yet)",
                        a.len(),
                    ),
                    None => (
                        self.rescore(&values, k, self.live_keys()),
                        "exact scan (quantizer not trained yet)",
                        self.count,
                    ),
                };
            }
        };
        let wanted = k
            .saturating_mul(self.oversampling)
            .min(self.count.max(k))
            .max(k);
        let ef = ef.max(wanted);
        let query_code = match &code {
            Code::I8(row) => VectorRef::I8(row),
            Code::Bits(row) => VectorRef::Bits(row),
        };
        // Bits rank coarsely (Hamming distances tie a lot): the whole
        // beam is ranked again by the query's own values against the bits
        // (asymmetric: `-Σ q·(2b − 1)`), then the best `wanted` rescored.
        let pool = match self.quantization {
            Quantization::Scalar => wanted,
            Quantization::Binary => ef,
        };
        let (mut candidates, strategy, examined) = match allowed {
            Some(a) => {
                let found = self.codes.search_allowed(query_code, pool, ef, a);
                if found.1.starts_with("exact scan") {
                    // A filter selective enough to scan is answered
                    // exactly, as an unquantized index answers it.
                    let hits = self.rescore(&values, k, a.keys().iter().copied());
                    return (hits, found.1, a.len());
                }
                found
            }
            None => {
                let (hits, examined) = self.codes.search_counted(query_code, pool, ef);
                (hits, "graph search", examined)
            }
        };
        if pool > wanted {
            // Σ (q − m)·(±1) = 2 Σ_{bit set} (q − m) − Σ (q − m).
            let means = self.means.as_deref().unwrap_or(&[]);
            let centred: Vec<f32> = values.iter().zip(means).map(|(q, m)| q - m).collect();
            let total: f32 = centred.iter().sum();
            let mut top = TopK::new(wanted);
            for hit in &candidates {
                if let Some(bits) = self.codes.bits_of(hit.key) {
                    let mut set = 0.0f32;
                    for (byte, chunk) in bits.iter().zip(centred.chunks(8)) {
                        for (i, x) in chunk.iter().enumerate() {
                            if byte & (0x80 >> i) != 0 {
                                set += x;
                            }
                        }
                    }
                    top.push(Hit {
                        key: hit.key,
                        distance: total - 2.0 * set,
                    });
                }
            }
            candidates = top.into_sorted();
        }
        let hits = self.rescore(&values, k, candidates.iter().map(|h| h.key));
        (hits, strategy, examined + candidates.len())
    }

    pub fn search_allowed(
        &self,
        query: VectorRef<'_>,
        k: usize,
        ef: usize,
        allowed: &KeySet,
    ) -> (Vec<Hit>, &'static str, usize) {
        self.search(query, k, ef, Some(allowed))
    }

    pub fn search_counted(&self, query: VectorRef<'_>, k: usize, ef: usize) -> (Vec<Hit>, usize) {
        let (hits, _, examined) = self.search(query, k, ef, None);
        (hits, examined)
    }

    /// Writes the snapshot: the header (`KIND_QUANTIZED`, the code
    /// dtype), the quantization, oversampling, scale, binary midpoints,
    /// slots, the live keys with their full vectors, the pending keys,
    /// then the codes' own snapshot.
    pub fn save(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let mut w = Writer::header(
            super::persist::KIND_QUANTIZED,
            self.dtype(),
            self.dims,
            self.similarity,
        );
        w.u8(match self.quantization {
            Quantization::Scalar => 0,
            Quantization::Binary => 1,
        });
        w.usize(self.oversampling);
        w.u8(u8::from(self.scale.is_some()));
        w.f32s(&[self.scale.unwrap_or(0.0)]);
        w.f32s(self.means.as_deref().unwrap_or(&[]));
        w.usize(self.slots);
        let keys: Vec<u32> = self.live_keys().collect();
        w.u32s(&keys);
        // The rows straight from the mapping (as `Writer::f32s` lays
        // them out), with no copy of them all on the heap.
        w.usize(keys.len() * self.dims);
        w.buf.reserve(keys.len() * self.dims * 4);
        for &key in &keys {
            let row = self
                .full
                .row(key)
                .ok_or_else(|| io::Error::other("a full-precision vector could not be read"))?;
            for x in row {
                w.buf.extend_from_slice(&x.to_le_bytes());
            }
        }
        w.u32s(&self.pending);
        let mut codes = Vec::new();
        self.codes.save(&mut codes)?;
        w.bytes(&codes);
        w.finish(out)
    }

    /// Reads what [`Quantized::save`] wrote (after the header).
    pub(crate) fn read(
        r: &mut Reader<'_>,
        dims: usize,
        similarity: Similarity,
    ) -> io::Result<Quantized> {
        let quantization = match r.u8()? {
            0 => Quantization::Scalar,
            1 => Quantization::Binary,
            _ => return Err(corrupt("quantization")),
        };
        let oversampling = r.usize()?.clamp(1, 1000);
        let trained = r.u8()? == 1;
        let scale = r.f32s()?.first().copied().ok_or_else(|| corrupt("scale"))?;
        let means = r.f32s()?;
        if !means.is_empty() && means.len() != dims {
            return Err(corrupt("binary midpoints"));
        }
        let slots = r.usize()?;
        let keys = r.u32s()?;
        let rows = r.f32s()?;
        if rows.len() != keys.len() * dims || keys.iter().any(|&k| k as usize >= slots) {
            return Err(corrupt("quantized rows"));
        }
        let pending = r.u32s()?;
        let codes = super::persist::load(&r.bytes()?)?;
        if matches!(codes, Engine::Quantized(_)) {
            return Err(corrupt("quantized codes inside quantized codes"));
        }
        if quantization == Quantization::Scalar
            && (!means.is_empty() || trained && !(scale.is_finite() && scale > 0.0))
        {
            return Err(corrupt("scalar quantizer"));
        }
        let mut index = Quantized::new(
            dims,
            similarity,
            HnswParams::default(),
            quantization,
            oversampling,
        );
        index.scale = (trained && quantization == Quantization::Scalar).then_some(scale);
        index.means = (!means.is_empty()).then_some(means);
        index.codes = codes;
        index.slots = slots;
        for (key, row) in keys.iter().zip(rows.chunks_exact(dims)) {
            index.full.put(*key, row);
            index.set_live(*key, true);
        }
        index.pending = pending;
        if index.codes.dims() != dims
            || index.codes.dtype() != index.dtype() && !index.codes.is_empty()
        {
            return Err(corrupt("quantized codes"));
        }
        Ok(index)
    }
}

/// A code row.
enum Code {
    I8(Vec<i8>),
    Bits(Vec<u8>),
}

/// How codes compare: int8 codes of cosine vectors (unit length) by dot
/// product (a zero code stays comparable), bits by Hamming distance.
fn code_similarity(quantization: Quantization, similarity: Similarity) -> Similarity {
    match (quantization, similarity) {
        (Quantization::Binary, _) => Similarity::Euclidean,
        (Quantization::Scalar, Similarity::Cosine) => Similarity::DotProduct,
        (Quantization::Scalar, other) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::exact::Flat;
    use crate::index::VectorIndex;

    /// Clustered unit vectors, deterministic.
    fn data(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..20)
            .map(|_| (0..dims).map(|_| next()).collect())
            .collect();
        (0..n)
            .map(|i| {
                let c = &centres[i % centres.len()];
                let v: Vec<f32> = c.iter().map(|x| x + 1.0 * next()).collect();
                Similarity::Cosine.prepare(v).unwrap()
            })
            .collect()
    }

    /// Recall@10 of the quantized index and of an f32 HNSW at breadth `ef`.
    fn recall_with(
        quantization: Quantization,
        oversampling: usize,
        dims: usize,
        ef: usize,
    ) -> (f64, f64) {
        // Queries from the same clusters as the data, not in it.
        let mut base = data(4050, dims, 7);
        let queries = base.split_off(4000);
        let mut index = Quantized::new(
            dims,
            Similarity::Cosine,
            HnswParams::default(),
            quantization,
            oversampling,
        );
        let mut flat = Flat::<f32>::new(dims, Similarity::Cosine);
        let mut plain = Engine::hnsw(dims, Similarity::Cosine, HnswParams::default());
        for (key, v) in base.iter().enumerate() {
            index.insert(key as u32, VectorRef::F32(v));
            flat.insert(key as u32, v);
            plain.insert(key as u32, VectorRef::F32(v));
        }
        assert_eq!(index.len(), 4000);
        let all: Vec<u32> = (0..4000).collect();
        let (mut found, mut found_plain) = (0, 0);
        for q in &queries {
            let want: Vec<u32> = crate::index::exact_among(&flat, q.as_slice(), 10, &all)
                .iter()
                .map(|h| h.key)
                .collect();
            let (got, _) = index.search_counted(VectorRef::F32(q), 10, ef);
            let (baseline, _) = plain.search_counted(VectorRef::F32(q), 10, ef);
            found_plain += baseline.iter().filter(|h| want.contains(&h.key)).count();
            // Distances are the full vectors' exact ones.
            for hit in &got {
                let exact = Similarity::Cosine.distance_fn()(q, &base[hit.key as usize]);
                assert!((hit.distance - exact).abs() < 1e-5);
            }
            found += got.iter().filter(|h| want.contains(&h.key)).count();
        }
        let n = (queries.len() * 10) as f64;
        (found as f64 / n, found_plain as f64 / n)
    }

    #[test]
    fn scalar_and_binary_codes_rescored_find_the_true_neighbours() {
        // At the default oversampling; the float graph at the same
        // breadth as the yardstick.
        let (scalar, plain) = recall_with(Quantization::Scalar, 0, 64, 100);
        let (binary, _) = recall_with(Quantization::Binary, 0, 64, 100);
        assert!(
            scalar >= 0.95 && scalar >= plain - 0.02,
            "scalar {scalar}, f32 {plain}"
        );
        assert!(binary >= 0.85, "binary recall {binary}");
        // Fewer candidates rescored, fewer found: oversampling is used.
        let (narrow, _) = recall_with(Quantization::Binary, 1, 64, 100);
        assert!(narrow < binary, "{narrow} {binary}");
    }

    #[test]
    fn training_waits_for_enough_live_vectors() {
        let dims = 8;
        let base = data(TRAIN_AT + 2, dims, 11);
        for quantization in [Quantization::Scalar, Quantization::Binary] {
            let mut index = Quantized::new(
                dims,
                Similarity::Cosine,
                HnswParams::default(),
                quantization,
                0,
            );
            for (key, v) in base.iter().take(TRAIN_AT - 1).enumerate() {
                index.insert(key as u32, VectorRef::F32(v));
            }
            // A removed vector does not count towards training.
            assert!(index.remove(0));
            index.insert(TRAIN_AT as u32 - 1, VectorRef::F32(&base[TRAIN_AT - 1]));
            assert!(!index.trained(), "{quantization:?}");
            index.insert(TRAIN_AT as u32, VectorRef::F32(&base[TRAIN_AT]));
            assert!(index.trained() && index.pending.is_empty());
            assert_eq!(index.len(), TRAIN_AT);
            // A selective filter is answered exactly.
            let allowed = KeySet::from_keys([5, 6, 7]);
            let (hits, strategy, examined) =
                index.search_allowed(VectorRef::F32(&base[6]), 2, 50, &allowed);
            assert_eq!((hits[0].key, examined), (6, 3), "{strategy}");
        }
    }

    #[test]
    fn untrained_searches_scan_and_a_snapshot_restores_everything() {
        let dims = 16;
        let base = data(TRAIN_AT + 300, dims, 3);
        let mut index = Quantized::new(
            dims,
            Similarity::Cosine,
            HnswParams::default(),
            Quantization::Scalar,
            0,
        );
        for (key, v) in base.iter().take(100).enumerate() {
            index.insert(key as u32, VectorRef::F32(v));
        }
        let (hits, strategy, _) = index.search(VectorRef::F32(&base[5]), 1, 10, None);
        assert_eq!(hits[0].key, 5);
        assert!(strategy.contains("not trained"));
        for (key, v) in base.iter().enumerate().skip(100) {
            index.insert(key as u32, VectorRef::F32(v));
        }
        assert!(index.trained() && index.pending.is_empty());
        assert!(index.remove(7));
        assert!(!index.remove(7));
        assert_eq!(index.len(), base.len() - 1);
        assert!(index.holds(8, VectorRef::F32(&base[8])));
        assert_eq!(index.vector(7), None);
        let mut bytes = Vec::new();
        index.save(&mut bytes).unwrap();
        let loaded = match crate::index::persist::load(&bytes).unwrap() {
            Engine::Quantized(q) => q,
            _ => panic!("not quantized"),
        };
        assert_eq!(loaded.len(), index.len());
        assert_eq!(loaded.vector(9), index.vector(9));
        let q = VectorRef::F32(&base[42]);
        assert_eq!(
            loaded.search_counted(q, 5, 50),
            index.search_counted(q, 5, 50)
        );
        // A filter keeps to its keys.
        let allowed = KeySet::from_keys([1, 2, 3, 400]);
        let (hits, _, _) = index.search_allowed(q, 10, 50, &allowed);
        let mut keys: Vec<u32> = hits.iter().map(|h| h.key).collect();
        keys.sort();
        assert_eq!(keys, vec![1, 2, 3, 400]);
    }
}

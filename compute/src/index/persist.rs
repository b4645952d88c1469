//! Index snapshots: `save` writes one, `load` reads any backend's back.
//!
//! Layout: magic `LWIX`, format version, backend kind, then the backend's
//! fields (little-endian), then a CRC-32C of everything before it. The
//! checksum is verified before anything is parsed, and every length is
//! checked against the bytes present, so a corrupt or truncated snapshot is
//! an error — the caller rebuilds from the upstream — never a wrong index.

use super::element::{Dtype, Element};
use super::engine::Engine;
use super::exact::Flat;
use super::hnsw::Hnsw;
use super::{Similarity, VectorIndex};
use std::io;

const MAGIC: &[u8; 4] = b"LWIX";
/// 2 added the element dtype after the kind (version 1 is read as `f32`).
const VERSION: u32 = 2;
pub(crate) const KIND_FLAT: u8 = 0;
pub(crate) const KIND_HNSW: u8 = 1;
/// A quantized index (`quantized::Quantized`): codes and full vectors.
pub(crate) const KIND_QUANTIZED: u8 = 2;

/// Appends little-endian fields to a buffer.
#[derive(Default)]
/// (Public only as the parameter of `Element`'s snapshot methods.)
pub struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn header(kind: u8, dtype: Dtype, dims: usize, similarity: Similarity) -> Writer {
        let mut w = Writer::default();
        w.buf.extend_from_slice(MAGIC);
        w.u32(VERSION);
        w.u8(kind);
        w.u8(dtype.tag());
        w.usize(dims);
        w.u8(match similarity {
            Similarity::Cosine => 0,
            Similarity::DotProduct => 1,
            Similarity::Euclidean => 2,
        });
        w
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn usize(&mut self, v: usize) {
        self.u64(v as u64);
    }
    pub(crate) fn f32s(&mut self, v: &[f32]) {
        self.usize(v.len());
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }
    pub(crate) fn u32s(&mut self, v: &[u32]) {
        self.usize(v.len());
        for x in v {
            self.u32(*x);
        }
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.usize(v.len());
        self.buf.extend_from_slice(v);
    }
    pub(crate) fn finish(mut self, out: &mut dyn io::Write) -> io::Result<()> {
        let crc = crc32c::crc32c(&self.buf);
        self.u32(crc);
        out.write_all(&self.buf)
    }
}

/// Reads fields back, every length checked against what is left.
/// (Public only as the parameter of `Element`'s snapshot methods.)
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

pub(crate) fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("index snapshot corrupt: {what}"),
    )
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| corrupt("truncated"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    pub(crate) fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> io::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> io::Result<u64> {
        let b = self.take(8)?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(b);
        Ok(u64::from_le_bytes(raw))
    }
    pub(crate) fn usize(&mut self) -> io::Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| corrupt("length"))
    }
    /// A length prefix for items of `size` bytes, checked against what is left.
    fn len(&mut self, size: usize) -> io::Result<usize> {
        let n = self.usize()?;
        if n.checked_mul(size)
            .is_none_or(|bytes| bytes > self.buf.len() - self.pos)
        {
            return Err(corrupt("length past the end"));
        }
        Ok(n)
    }
    pub(crate) fn f32s(&mut self) -> io::Result<Vec<f32>> {
        let n = self.len(4)?;
        Ok(self
            .take(n * 4)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    pub(crate) fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = self.len(1)?;
        Ok(self.take(n)?.to_vec())
    }
    pub(crate) fn u32s(&mut self) -> io::Result<Vec<u32>> {
        let n = self.len(4)?;
        Ok(self
            .take(n * 4)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    pub(crate) fn done(&self) -> io::Result<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(corrupt("trailing bytes"))
        }
    }
}

/// Loads a snapshot written by any backend's `save`, of any dtype.
pub fn load(bytes: &[u8]) -> io::Result<Engine> {
    if bytes.len() < MAGIC.len() + 4 + 4 || &bytes[..4] != MAGIC {
        return Err(corrupt("not an index snapshot"));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if crc32c::crc32c(body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let mut r = Reader { buf: body, pos: 4 };
    let version = r.u32()?;
    if version != VERSION && version != 1 {
        return Err(corrupt("unknown format version"));
    }
    let kind = r.u8()?;
    let dtype = match version {
        1 => Dtype::F32,
        _ => Dtype::from_tag(r.u8()?).ok_or_else(|| corrupt("unknown element dtype"))?,
    };
    let dims = r.usize()?;
    let similarity = match r.u8()? {
        0 => Similarity::Cosine,
        1 => Similarity::DotProduct,
        2 => Similarity::Euclidean,
        _ => return Err(corrupt("unknown similarity")),
    };
    if dims == 0 || dims > 65_536 {
        return Err(corrupt("dimensions"));
    }
    if kind == KIND_QUANTIZED {
        let index = super::quantized::Quantized::read(&mut r, dims, similarity)?;
        r.done()?;
        return Ok(Engine::Quantized(Box::new(index)));
    }
    let index = match dtype {
        Dtype::F32 => Engine::F32(read_kind::<f32>(&mut r, kind, dims, similarity)?),
        Dtype::I8 => Engine::I8(read_kind::<i8>(&mut r, kind, dims, similarity)?),
        Dtype::Bits => Engine::Bits(read_kind::<u8>(&mut r, kind, dims, similarity)?),
    };
    r.done()?;
    Ok(index)
}

fn read_kind<E: Element>(
    r: &mut Reader<'_>,
    kind: u8,
    dims: usize,
    similarity: Similarity,
) -> io::Result<Box<dyn VectorIndex<E>>> {
    Ok(match kind {
        KIND_FLAT => Box::new(Flat::<E>::read(r, dims, similarity)?),
        KIND_HNSW => Box::new(Hnsw::<E>::read(r, dims, similarity)?),
        _ => return Err(corrupt("unknown index kind")),
    })
}

//! Reading snapshot sections: little-endian fields and BSON documents in
//! order, every read past the end an `InvalidData` error, never a panic.

use bson::RawDocumentBuf;
use std::io;

/// An `InvalidData` error saying what of a snapshot is corrupt.
pub fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot corrupt: {what}"),
    )
}

/// Reads a snapshot's little-endian fields and BSON documents in order;
/// every read past the end is a `corrupt` error, never a panic.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads `buf` from byte `pos`.
    pub fn new(buf: &'a [u8], pos: usize) -> Reader<'a> {
        Reader { buf, pos }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or_else(|| corrupt("length"))?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| corrupt("truncated"))?;
        self.pos = end;
        Ok(out)
    }

    pub fn u32(&mut self) -> io::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A u64 length or count that must fit this machine's `usize`.
    pub fn size(&mut self) -> io::Result<usize> {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(self.take(8)?);
        usize::try_from(u64::from_le_bytes(raw)).map_err(|_| corrupt("size"))
    }

    /// A BSON document (its own length prefix says how long).
    pub fn doc(&mut self) -> io::Result<RawDocumentBuf> {
        let b = self
            .buf
            .get(self.pos..self.pos.saturating_add(4))
            .ok_or_else(|| corrupt("truncated"))?;
        let len = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let len = usize::try_from(len)
            .ok()
            .filter(|n| *n >= 5)
            .ok_or_else(|| corrupt("document length"))?;
        RawDocumentBuf::from_bytes(self.take(len)?.to_vec()).map_err(|_| corrupt("document"))
    }
}

//! The 16-byte message header and frame boundaries.
//!
//! Framing is two steps (as in mini-redis): `frame_len` says whether a whole
//! message is buffered — "need more bytes" is `Ok(None)`, not an error — and
//! only then is the message parsed. Lengths are checked before anything is
//! allocated.

use super::{read_i32, WireError};

/// Size of the standard message header.
pub const HEADER_LEN: usize = 16;
/// Largest message the server accepts (`maxMessageSizeBytes`).
pub const MAX_MESSAGE_LEN: usize = 48_000_000;

/// Wire opcodes the proxy understands; others are kept as their number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Reply,
    Query,
    Compressed,
    Msg,
    Other(i32),
}

impl OpCode {
    pub fn from_i32(value: i32) -> Self {
        match value {
            1 => OpCode::Reply,
            2004 => OpCode::Query,
            2012 => OpCode::Compressed,
            2013 => OpCode::Msg,
            other => OpCode::Other(other),
        }
    }

    pub fn as_i32(self) -> i32 {
        match self {
            OpCode::Reply => 1,
            OpCode::Query => 2004,
            OpCode::Compressed => 2012,
            OpCode::Msg => 2013,
            OpCode::Other(other) => other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Total message length, header included; validated to lie in
    /// `HEADER_LEN..=MAX_MESSAGE_LEN`.
    pub length: usize,
    pub request_id: i32,
    pub response_to: i32,
    pub op_code: OpCode,
}

impl Header {
    /// Parses and validates the header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Header, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated("message header"));
        }
        let length = checked_length(read_i32(buf, 0))?;
        Ok(Header {
            length,
            request_id: read_i32(buf, 4),
            response_to: read_i32(buf, 8),
            op_code: OpCode::from_i32(read_i32(buf, 12)),
        })
    }

    /// Appends the encoded header to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let length = i32::try_from(self.length).unwrap_or(i32::MAX);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&self.request_id.to_le_bytes());
        out.extend_from_slice(&self.response_to.to_le_bytes());
        out.extend_from_slice(&self.op_code.as_i32().to_le_bytes());
    }
}

fn checked_length(raw: i32) -> Result<usize, WireError> {
    let length = usize::try_from(raw).map_err(|_| WireError::BadLength(i64::from(raw)))?;
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&length) {
        return Err(WireError::BadLength(i64::from(raw)));
    }
    Ok(length)
}

/// Returns the length of the first whole message in `buf`, `Ok(None)` when
/// more bytes are needed, or an error when the declared length is impossible
/// (the stream can then not be resynchronised).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let length = checked_length(read_i32(buf, 0))?;
    Ok((buf.len() >= length).then_some(length))
}

/// Rewrites the length field of an encoded message in place.
pub(crate) fn set_length(out: &mut [u8], total: usize) {
    let length = i32::try_from(total).unwrap_or(i32::MAX);
    out[0..4].copy_from_slice(&length.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(length: i32, op: i32) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [length, 7, 0, op] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    #[test]
    fn needs_more_bytes_is_not_an_error() {
        assert_eq!(frame_len(&[]).unwrap(), None);
        assert_eq!(frame_len(&[20, 0]).unwrap(), None);
        assert_eq!(frame_len(&header_bytes(20, 2013)).unwrap(), None);
    }

    #[test]
    fn whole_frame_is_found() {
        let mut buf = header_bytes(20, 2013);
        buf.extend_from_slice(&[0; 8]);
        assert_eq!(frame_len(&buf).unwrap(), Some(20));
    }

    #[test]
    fn impossible_lengths_are_rejected_before_allocating() {
        for bad in [-1, 0, 15, 48_000_001, i32::MAX, i32::MIN] {
            assert!(frame_len(&header_bytes(bad, 2013)).is_err(), "{bad}");
        }
        assert_eq!(frame_len(&header_bytes(48_000_000, 2013)).unwrap(), None);
    }

    #[test]
    fn header_round_trips() {
        let header = Header::parse(&header_bytes(16, 2012)).unwrap();
        assert_eq!(header.op_code, OpCode::Compressed);
        assert_eq!(header.request_id, 7);
        let mut out = Vec::new();
        header.write(&mut out);
        assert_eq!(out, header_bytes(16, 2012));
    }
}

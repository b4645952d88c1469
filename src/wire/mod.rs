//! Sans-IO codec for the MongoDB wire protocol.
//!
//! Everything here works on byte slices and returns values; nothing here
//! touches a socket, a clock or a task. Parsers borrow from the buffer that
//! holds the message (`&RawDocument` views), and encoders build only what is
//! being rewritten. Untrusted lengths are checked before any allocation.

pub mod compressed;
pub mod header;
pub mod msg;
pub mod query;

pub use compressed::Compressor;
pub use header::{frame_len, Header, OpCode, HEADER_LEN, MAX_MESSAGE_LEN};
pub use msg::{DocumentSequence, OpMsg, Section};
pub use query::{OpQuery, OpReply};

use bson::RawDocument;
use std::fmt;

/// Why bytes could not be decoded. Every variant is the peer's fault; the
/// codec itself has no failure modes of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The message ended before the named part was complete.
    Truncated(&'static str),
    /// A declared message length outside 16..=48,000,000 bytes.
    BadLength(i64),
    /// OP_MSG flag bits in the required (low 16) range that we do not know.
    UnknownRequiredFlags(u32),
    /// A malformed section, document or field, with a description.
    Malformed(String),
    /// The CRC-32C in an OP_MSG does not match its contents.
    ChecksumMismatch { expected: u32, actual: u32 },
    /// OP_COMPRESSED with a compressor id we do not implement.
    UnknownCompressor(u8),
    /// The compressed payload could not be inflated to its declared size.
    Decompress(String),
    /// An opcode the proxy cannot process in this position.
    UnsupportedOpCode(i32),
    /// A document nested deeper than `MAX_BSON_DEPTH`; holds the name of
    /// the element where the limit was crossed.
    TooDeep(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated(what) => write!(f, "message truncated in {what}"),
            WireError::BadLength(n) => write!(f, "invalid message length {n}"),
            WireError::UnknownRequiredFlags(bits) => {
                write!(f, "OP_MSG has unknown required flag bits {bits:#x}")
            }
            WireError::Malformed(what) => write!(f, "malformed message: {what}"),
            WireError::ChecksumMismatch { expected, actual } => write!(
                f,
                "OP_MSG checksum mismatch: message says {expected:#010x}, contents give {actual:#010x}"
            ),
            WireError::UnknownCompressor(id) => write!(f, "unknown compressor id {id}"),
            WireError::Decompress(why) => write!(f, "cannot decompress message: {why}"),
            WireError::UnsupportedOpCode(op) => write!(f, "unsupported opcode {op}"),
            WireError::TooDeep(name) => write!(
                f,
                "BSONObj exceeds maximum nested object depth in element with field name '{name}'"
            ),
        }
    }
}

impl std::error::Error for WireError {}

/// The deepest nesting a request may have: mongod's `maxBSONDepth` default
/// (`BSONDepth::kDefaultMaxAllowableDepth`). The top-level document is level
/// 0 and each embedded document or array one more, so 200 levels below the
/// top are allowed and the 201st is refused, as mongod's BSON validation does
/// (`src/mongo/bson/bson_validate.cpp`: "A flat BSON has one frame").
pub const MAX_BSON_DEPTH: usize = 200;

/// Whether a reply says `ok: 1` (in any of the numeric types servers use).
pub fn reply_ok(reply: &bson::RawDocument) -> bool {
    match reply.get("ok") {
        Ok(Some(bson::RawBsonRef::Double(v))) => v == 1.0,
        Ok(Some(bson::RawBsonRef::Int32(v))) => v == 1,
        Ok(Some(bson::RawBsonRef::Int64(v))) => v == 1,
        Ok(Some(bson::RawBsonRef::Boolean(v))) => v,
        _ => false,
    }
}

/// An integral number in any BSON numeric type (`int`, `long`, or a
/// `double` with no fraction below 2^53, as drivers send numbers typed
/// by their language): `None` for anything else.
pub fn integer(value: Option<bson::RawBsonRef<'_>>) -> Option<i64> {
    match value? {
        bson::RawBsonRef::Int32(n) => Some(i64::from(n)),
        bson::RawBsonRef::Int64(n) => Some(n),
        bson::RawBsonRef::Double(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Some(x as i64),
        _ => None,
    }
}

/// A number in any BSON numeric type as a double (`decimal` through its
/// text): `None` for anything else.
pub fn number(value: Option<bson::RawBsonRef<'_>>) -> Option<f64> {
    match value? {
        bson::RawBsonRef::Double(x) => Some(x),
        bson::RawBsonRef::Int32(n) => Some(f64::from(n)),
        bson::RawBsonRef::Int64(n) => Some(n as f64),
        bson::RawBsonRef::Decimal128(d) => d.to_string().parse().ok(),
        _ => None,
    }
}

/// Checks that `doc` nests no deeper than `max` levels below itself, without
/// recursing (the walk keeps its own stack of at most `max` iterators), so
/// every recursive walk over a request that passed it is bounded.
///
/// # Errors
/// `WireError::TooDeep` naming the element that went one level too far (the
/// proxy answers it as mongod does: code 15, `Overflow`).
pub fn check_depth(doc: &RawDocument, max: usize) -> Result<(), WireError> {
    let mut stack = vec![doc.iter()];
    while let Some(top) = stack.last_mut() {
        let Some(element) = top.next() else {
            stack.pop();
            continue;
        };
        // Malformed elements are the parsers' to report, not this check's.
        let Ok((name, value)) = element else {
            continue;
        };
        let nested = match value {
            bson::RawBsonRef::Document(d) => d,
            // An array is a document keyed "0", "1", ...
            bson::RawBsonRef::Array(a) => match RawDocument::from_bytes(a.as_bytes()) {
                Ok(d) => d,
                Err(_) => continue,
            },
            bson::RawBsonRef::JavaScriptCodeWithScope(c) => c.scope,
            _ => continue,
        };
        if stack.len() > max {
            return Err(WireError::TooDeep(name.to_string()));
        }
        stack.push(nested.iter());
    }
    Ok(())
}

pub(crate) fn read_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

pub(crate) fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// A bounds-checked cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], pos: usize) -> Self {
        Reader { buf, pos }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated(what))?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or(WireError::Truncated(what))?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, WireError> {
        self.take(4, what).map(|b| read_i32(b, 0))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        self.take(4, what).map(|b| read_u32(b, 0))
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, WireError> {
        let b = self.take(8, what)?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(b);
        Ok(i64::from_le_bytes(raw))
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        self.take(1, what).map(|b| b[0])
    }

    pub(crate) fn cstring(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::Truncated(what))?;
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| WireError::Malformed(format!("{what} is not UTF-8")))?;
        self.pos += nul + 1;
        Ok(s)
    }

    /// Reads one BSON document whose length prefix must fit the remaining bytes.
    pub(crate) fn document(&mut self, what: &'static str) -> Result<&'a RawDocument, WireError> {
        if self.remaining() < 5 {
            return Err(WireError::Truncated(what));
        }
        let declared = read_i32(self.buf, self.pos);
        let len = usize::try_from(declared)
            .ok()
            .filter(|&n| n >= 5)
            .ok_or_else(|| WireError::Malformed(format!("{what} has length {declared}")))?;
        let bytes = self.take(len, what)?;
        RawDocument::from_bytes(bytes).map_err(|e| WireError::Malformed(format!("{what}: {e}")))
    }
}

/// A decoded message of any opcode the proxy handles.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    Msg(OpMsg<'a>),
    Query(OpQuery<'a>),
    Reply(OpReply<'a>),
}

/// Inflates `frame` if it is OP_COMPRESSED; otherwise returns it as it is.
/// The compressor is returned so a reply can be compressed the same way.
pub fn inflate(frame: bytes::Bytes) -> Result<(Option<Compressor>, bytes::Bytes), WireError> {
    if Header::parse(&frame)?.op_code != OpCode::Compressed {
        return Ok((None, frame));
    }
    let (compressor, inflated) = compressed::decompress(&frame)?;
    Ok((Some(compressor), bytes::Bytes::from(inflated)))
}

/// Parses an uncompressed message by its opcode.
pub fn decode(message: &[u8]) -> Result<Message<'_>, WireError> {
    match Header::parse(message)?.op_code {
        OpCode::Msg => OpMsg::parse(message).map(Message::Msg),
        OpCode::Query => OpQuery::parse(message).map(Message::Query),
        OpCode::Reply => OpReply::parse(message).map(Message::Reply),
        other => Err(WireError::UnsupportedOpCode(other.as_i32())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{rawdoc, RawDocumentBuf};

    /// `levels` documents (or one-element arrays, alternately) nested below
    /// the one returned.
    fn nested(levels: usize) -> RawDocumentBuf {
        let mut doc = rawdoc! {};
        for level in 0..levels {
            doc = if level % 2 == 0 {
                rawdoc! { "a": doc }
            } else {
                rawdoc! { "b": [doc] }
            };
        }
        doc
    }

    #[test]
    fn depth_is_held_to_mongods_limit_counting_documents_and_arrays() {
        // Each `[doc]` level adds two (the array and the document in it):
        // 133 levels reach 199, 134 reach 201, and the innermost document,
        // `a`'s value, is the one too deep.
        let at = |levels| check_depth(&nested(levels), MAX_BSON_DEPTH);
        assert_eq!(at(133), Ok(()));
        assert_eq!(at(134), Err(WireError::TooDeep("a".into())));
        // nested(132) reaches 198: two more levels are allowed, three not.
        let exactly = rawdoc! { "c": { "top": nested(132) }, "more": [1] };
        assert_eq!(check_depth(&exactly, MAX_BSON_DEPTH), Ok(()));
        let over = rawdoc! { "d": exactly };
        assert!(check_depth(&over, MAX_BSON_DEPTH).is_err());
        assert_eq!(check_depth(&rawdoc! {}, 0), Ok(()));
        assert_eq!(check_depth(&rawdoc! { "x": 1 }, 0), Ok(()));
        assert_eq!(
            check_depth(&rawdoc! { "x": {} }, 0),
            Err(WireError::TooDeep("x".into()))
        );
        assert_eq!(check_depth(&rawdoc! { "x": { "y": [] } }, 2), Ok(()));
        assert_eq!(
            check_depth(&rawdoc! { "x": { "y": [] } }, 1),
            Err(WireError::TooDeep("y".into()))
        );
        let scoped = bson::RawBson::JavaScriptCodeWithScope(bson::RawJavaScriptCodeWithScope {
            code: "f()".into(),
            scope: rawdoc! { "s": { "t": 1 } },
        });
        let mut doc = RawDocumentBuf::new();
        doc.append("js", scoped);
        assert_eq!(check_depth(&doc, 2), Ok(()));
        assert_eq!(check_depth(&doc, 1), Err(WireError::TooDeep("s".into())));
    }
}

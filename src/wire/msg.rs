//! OP_MSG (opcode 2013): flag bits, kind-0 body and kind-1 document
//! sequences in any order, and the optional CRC-32C checksum.

use super::header::{set_length, Header, OpCode, HEADER_LEN};
use super::{read_u32, Reader, WireError};
use bson::RawDocument;

/// The last four bytes are a CRC-32C of everything before them.
pub const CHECKSUM_PRESENT: u32 = 1;
/// The sender will not wait for (request) or will follow with (reply) another message.
pub const MORE_TO_COME: u32 = 1 << 1;
/// The client accepts multiple replies to this request (exhaust cursors).
pub const EXHAUST_ALLOWED: u32 = 1 << 16;
/// Bits 0-15 must be understood; these are the ones we know.
const KNOWN_REQUIRED: u32 = CHECKSUM_PRESENT | MORE_TO_COME;

/// A kind-1 section: a named run of documents (`documents`, `updates`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentSequence<'a> {
    pub identifier: &'a str,
    pub documents: Vec<&'a RawDocument>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Section<'a> {
    Body(&'a RawDocument),
    Sequence(DocumentSequence<'a>),
}

/// A parsed OP_MSG borrowing from the bytes of the whole message.
#[derive(Debug, Clone, PartialEq)]
pub struct OpMsg<'a> {
    pub header: Header,
    pub flags: u32,
    /// Sections in wire order; exactly one is a `Body`.
    pub sections: Vec<Section<'a>>,
}

impl<'a> OpMsg<'a> {
    /// Parses a whole OP_MSG (header included), verifying the checksum when
    /// one is present.
    pub fn parse(message: &'a [u8]) -> Result<OpMsg<'a>, WireError> {
        let header = Header::parse(message)?;
        if header.op_code != OpCode::Msg {
            return Err(WireError::UnsupportedOpCode(header.op_code.as_i32()));
        }
        if message.len() != header.length {
            return Err(WireError::Malformed(format!(
                "header says {} bytes, frame has {}",
                header.length,
                message.len()
            )));
        }
        let mut reader = Reader::new(message, HEADER_LEN);
        let flags = reader.u32("OP_MSG flags")?;
        let unknown = flags & 0xffff & !KNOWN_REQUIRED;
        if unknown != 0 {
            return Err(WireError::UnknownRequiredFlags(unknown));
        }
        let mut end = message.len();
        if flags & CHECKSUM_PRESENT != 0 {
            end = end
                .checked_sub(4)
                .filter(|&e| e >= HEADER_LEN + 4)
                .ok_or(WireError::Truncated("OP_MSG checksum"))?;
            let expected = read_u32(message, end);
            let actual = crc32c::crc32c(&message[..end]);
            if expected != actual {
                return Err(WireError::ChecksumMismatch { expected, actual });
            }
        }
        let mut sections = Vec::new();
        let mut bodies = 0;
        let mut reader = Reader::new(&message[..end], HEADER_LEN + 4);
        while reader.remaining() > 0 {
            match reader.u8("section kind")? {
                0 => {
                    bodies += 1;
                    sections.push(Section::Body(reader.document("OP_MSG body")?));
                }
                1 => sections.push(Section::Sequence(parse_sequence(&mut reader)?)),
                kind => {
                    return Err(WireError::Malformed(format!("unknown section kind {kind}")));
                }
            }
        }
        if bodies != 1 {
            return Err(WireError::Malformed(format!(
                "OP_MSG must have exactly one body section, found {bodies}"
            )));
        }
        Ok(OpMsg {
            header,
            flags,
            sections,
        })
    }

    /// The kind-0 body: the command or the reply document.
    pub fn body(&self) -> &'a RawDocument {
        self.sections
            .iter()
            .find_map(|s| match s {
                Section::Body(doc) => Some(*doc),
                Section::Sequence(_) => None,
            })
            .expect("parse guarantees one body")
    }

    /// The command name: the first key of the body.
    pub fn command_name(&self) -> Option<&'a str> {
        first_key(self.body())
    }

    pub fn more_to_come(&self) -> bool {
        self.flags & MORE_TO_COME != 0
    }

    pub fn sequences(&self) -> impl Iterator<Item = &DocumentSequence<'a>> {
        self.sections.iter().filter_map(|s| match s {
            Section::Sequence(seq) => Some(seq),
            Section::Body(_) => None,
        })
    }

    /// `wire::check_depth` on the body and on every document of every
    /// sequence, each one a BSON object of its own as mongod validates it.
    ///
    /// # Errors
    /// `WireError::TooDeep` for the first document nested deeper than `max`.
    pub fn check_depth(&self, max: usize) -> Result<(), WireError> {
        self.sections.iter().try_for_each(|section| match section {
            Section::Body(body) => super::check_depth(body, max),
            Section::Sequence(seq) => seq
                .documents
                .iter()
                .try_for_each(|doc| super::check_depth(doc, max)),
        })
    }
}

/// The first key of a document, if it has one and it decodes.
pub fn first_key(doc: &RawDocument) -> Option<&str> {
    doc.iter().next()?.ok().map(|(key, _)| key)
}

fn parse_sequence<'a>(reader: &mut Reader<'a>) -> Result<DocumentSequence<'a>, WireError> {
    let declared = reader.i32("document sequence size")?;
    let size = usize::try_from(declared)
        .ok()
        .filter(|&n| n >= 5)
        .ok_or_else(|| WireError::Malformed(format!("document sequence size {declared}")))?;
    let payload = reader.take(size - 4, "document sequence")?;
    let mut inner = Reader::new(payload, 0);
    let identifier = inner.cstring("document sequence identifier")?;
    let mut documents = Vec::new();
    while inner.remaining() > 0 {
        documents.push(inner.document("document sequence entry")?);
    }
    Ok(DocumentSequence {
        identifier,
        documents,
    })
}

/// Encodes an OP_MSG. The checksum bit in `flags` decides whether a fresh
/// CRC-32C is appended; rewritten messages never carry a stale one.
pub fn encode(request_id: i32, response_to: i32, flags: u32, sections: &[Section<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + encoded_sections_len(sections) + 4);
    Header {
        length: 0,
        request_id,
        response_to,
        op_code: OpCode::Msg,
    }
    .write(&mut out);
    out.extend_from_slice(&flags.to_le_bytes());
    for section in sections {
        match section {
            Section::Body(doc) => {
                out.push(0);
                out.extend_from_slice(doc.as_bytes());
            }
            Section::Sequence(seq) => {
                out.push(1);
                let size = sequence_len(seq);
                out.extend_from_slice(&i32::try_from(size).unwrap_or(i32::MAX).to_le_bytes());
                out.extend_from_slice(seq.identifier.as_bytes());
                out.push(0);
                for doc in &seq.documents {
                    out.extend_from_slice(doc.as_bytes());
                }
            }
        }
    }
    let checksum = flags & CHECKSUM_PRESENT != 0;
    let total = out.len() + if checksum { 4 } else { 0 };
    set_length(&mut out, total);
    if checksum {
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    out
}

/// Encodes a single-body OP_MSG with no flags: the shape of every reply the
/// proxy makes itself.
pub fn encode_body(request_id: i32, response_to: i32, body: &RawDocument) -> Vec<u8> {
    encode(request_id, response_to, 0, &[Section::Body(body)])
}

fn sequence_len(seq: &DocumentSequence<'_>) -> usize {
    4 + seq.identifier.len()
        + 1
        + seq
            .documents
            .iter()
            .map(|d| d.as_bytes().len())
            .sum::<usize>()
}

fn encoded_sections_len(sections: &[Section<'_>]) -> usize {
    sections
        .iter()
        .map(|s| {
            1 + match s {
                Section::Body(doc) => doc.as_bytes().len(),
                Section::Sequence(seq) => sequence_len(seq),
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn body_and_sequences_in_any_order_round_trip() {
        let body = rawdoc! { "insert": "c", "$db": "test" };
        let d1 = rawdoc! { "_id": 1 };
        let d2 = rawdoc! { "_id": 2, "x": "y" };
        let seq = DocumentSequence {
            identifier: "documents",
            documents: vec![&d1, &d2],
        };
        for sections in [
            vec![Section::Body(&body), Section::Sequence(seq.clone())],
            vec![Section::Sequence(seq.clone()), Section::Body(&body)],
        ] {
            for flags in [
                0,
                CHECKSUM_PRESENT,
                MORE_TO_COME | EXHAUST_ALLOWED | (1 << 20),
            ] {
                let bytes = encode(5, 0, flags, &sections);
                let parsed = OpMsg::parse(&bytes).unwrap();
                assert_eq!(parsed.flags, flags);
                assert_eq!(parsed.sections, sections);
                assert_eq!(parsed.command_name(), Some("insert"));
                assert_eq!(parsed.header.length, bytes.len());
            }
        }
    }

    #[test]
    fn checksum_is_verified() {
        let body = rawdoc! { "ping": 1, "$db": "admin" };
        let mut bytes = encode(1, 0, CHECKSUM_PRESENT, &[Section::Body(&body)]);
        assert!(OpMsg::parse(&bytes).is_ok());
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(matches!(
            OpMsg::parse(&bytes),
            Err(WireError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn checksum_matches_the_castagnoli_polynomial() {
        // The CRC-32C check value from RFC 3720 B.4: 32 bytes of zeroes.
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn unknown_required_flags_are_rejected_optional_ones_kept() {
        let body = rawdoc! { "ping": 1 };
        let bytes = encode(1, 0, 1 << 4, &[Section::Body(&body)]);
        assert_eq!(
            OpMsg::parse(&bytes),
            Err(WireError::UnknownRequiredFlags(1 << 4))
        );
        let bytes = encode(1, 0, 1 << 17, &[Section::Body(&body)]);
        assert_eq!(OpMsg::parse(&bytes).unwrap().flags, 1 << 17);
    }

    #[test]
    fn body_count_must_be_one() {
        let body = rawdoc! { "ping": 1 };
        let two = encode(1, 0, 0, &[Section::Body(&body), Section::Body(&body)]);
        assert!(OpMsg::parse(&two).is_err());
        let none = encode(1, 0, 0, &[]);
        assert!(OpMsg::parse(&none).is_err());
    }

    #[test]
    fn bad_section_lengths_are_errors_not_panics() {
        let body = rawdoc! { "ping": 1 };
        let good = encode(1, 0, 0, &[Section::Body(&body)]);
        for cut in 0..good.len() {
            let mut bytes = good[..cut].to_vec();
            if bytes.len() >= 4 {
                let len = bytes.len();
                set_length(&mut bytes, len);
            }
            assert!(OpMsg::parse(&bytes).is_err(), "cut at {cut}");
        }
        let mut bad_kind = good.clone();
        bad_kind[20] = 9;
        assert!(OpMsg::parse(&bad_kind).is_err());
        let mut bad_doc_len = good;
        bad_doc_len[21] = 0xff;
        assert!(OpMsg::parse(&bad_doc_len).is_err());
    }
}

//! OP_COMPRESSED (opcode 2012): snappy, zlib and zstd, both directions.
//!
//! Decoding yields the original message with its own header restored, so
//! everything downstream handles one kind of frame. The declared
//! uncompressed size is checked against the message limit before inflating,
//! and the inflated size must match it exactly.

use super::header::{set_length, Header, OpCode, HEADER_LEN, MAX_MESSAGE_LEN};
use super::{Reader, WireError};
use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    Noop,
    Snappy,
    Zlib,
    Zstd,
}

impl Compressor {
    /// Compressors the proxy can decode and encode, in the order it prefers them.
    pub const SUPPORTED: [Compressor; 3] = [Compressor::Zstd, Compressor::Snappy, Compressor::Zlib];

    pub fn from_id(id: u8) -> Result<Compressor, WireError> {
        match id {
            0 => Ok(Compressor::Noop),
            1 => Ok(Compressor::Snappy),
            2 => Ok(Compressor::Zlib),
            3 => Ok(Compressor::Zstd),
            other => Err(WireError::UnknownCompressor(other)),
        }
    }

    pub fn id(self) -> u8 {
        match self {
            Compressor::Noop => 0,
            Compressor::Snappy => 1,
            Compressor::Zlib => 2,
            Compressor::Zstd => 3,
        }
    }

    /// The name used in the `compression` field of hello.
    pub fn name(self) -> &'static str {
        match self {
            Compressor::Noop => "noop",
            Compressor::Snappy => "snappy",
            Compressor::Zlib => "zlib",
            Compressor::Zstd => "zstd",
        }
    }

    pub fn from_name(name: &str) -> Option<Compressor> {
        [
            Compressor::Noop,
            Compressor::Snappy,
            Compressor::Zlib,
            Compressor::Zstd,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }
}

/// Inflates an OP_COMPRESSED message into the original message (header
/// rebuilt with the original opcode and length). Returns the compressor so a
/// reply can be compressed the same way.
pub fn decompress(message: &[u8]) -> Result<(Compressor, Vec<u8>), WireError> {
    let header = Header::parse(message)?;
    if header.op_code != OpCode::Compressed {
        return Err(WireError::UnsupportedOpCode(header.op_code.as_i32()));
    }
    let mut reader = Reader::new(&message[..header.length.min(message.len())], HEADER_LEN);
    let original = reader.i32("original opcode")?;
    let declared = reader.i32("uncompressed size")?;
    let compressor = Compressor::from_id(reader.u8("compressor id")?)?;
    let size = usize::try_from(declared)
        .ok()
        .filter(|&n| n <= MAX_MESSAGE_LEN - HEADER_LEN)
        .ok_or_else(|| WireError::Decompress(format!("uncompressed size {declared}")))?;
    let payload = reader.take(reader.remaining(), "compressed payload")?;

    // Room for what the payload surely gives, not for what the header
    // claims: a few bytes must not reserve 48 MB. Decompression grows the
    // buffer with fallible reservations, so memory pressure is an error,
    // never an abort.
    let mut out = Vec::new();
    out.try_reserve_exact(HEADER_LEN + payload.len().min(size))
        .map_err(|e| WireError::Decompress(e.to_string()))?;
    Header {
        length: HEADER_LEN + size,
        request_id: header.request_id,
        response_to: header.response_to,
        op_code: OpCode::from_i32(original),
    }
    .write(&mut out);
    inflate(compressor, payload, size, &mut out)?;
    if out.len() != HEADER_LEN + size {
        return Err(WireError::Decompress(format!(
            "inflated to {} bytes, header said {size}",
            out.len() - HEADER_LEN
        )));
    }
    Ok((compressor, out))
}

fn inflate(
    compressor: Compressor,
    payload: &[u8],
    size: usize,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let err =
        |e: &dyn std::fmt::Display| WireError::Decompress(format!("{}: {e}", compressor.name()));
    match compressor {
        Compressor::Noop => out.extend_from_slice(payload),
        Compressor::Snappy => {
            let len = snap::raw::decompress_len(payload).map_err(|e| err(&e))?;
            if len != size {
                return Err(WireError::Decompress(format!(
                    "snappy payload inflates to {len} bytes, header said {size}"
                )));
            }
            let start = out.len();
            out.try_reserve_exact(len)
                .map_err(|e| WireError::Decompress(e.to_string()))?;
            out.resize(start + len, 0);
            snap::raw::Decoder::new()
                .decompress(payload, &mut out[start..])
                .map_err(|e| err(&e))?;
        }
        Compressor::Zlib => {
            // One byte past the limit tells "too big" apart from "exact".
            let limit = u64::try_from(size).unwrap_or(u64::MAX).saturating_add(1);
            flate2::read::ZlibDecoder::new(payload)
                .take(limit)
                .read_to_end(out)
                .map_err(|e| err(&e))?;
        }
        Compressor::Zstd => {
            let limit = u64::try_from(size).unwrap_or(u64::MAX).saturating_add(1);
            zstd::stream::read::Decoder::with_buffer(payload)
                .map_err(|e| err(&e))?
                .take(limit)
                .read_to_end(out)
                .map_err(|e| err(&e))?;
        }
    }
    Ok(())
}

/// Wraps a whole encoded message (header included) in OP_COMPRESSED, keeping
/// its request id and responseTo.
pub fn compress(message: &[u8], compressor: Compressor) -> Result<Vec<u8>, WireError> {
    let header = Header::parse(message)?;
    let body = &message[HEADER_LEN..];
    let mut out = Vec::with_capacity(HEADER_LEN + 9 + body.len() / 2);
    Header {
        length: 0,
        op_code: OpCode::Compressed,
        ..header
    }
    .write(&mut out);
    out.extend_from_slice(&header.op_code.as_i32().to_le_bytes());
    let size = i32::try_from(body.len()).map_err(|_| WireError::BadLength(i64::MAX))?;
    out.extend_from_slice(&size.to_le_bytes());
    out.push(compressor.id());
    let err =
        |e: &dyn std::fmt::Display| WireError::Decompress(format!("{}: {e}", compressor.name()));
    match compressor {
        Compressor::Noop => out.extend_from_slice(body),
        Compressor::Snappy => {
            let packed = snap::raw::Encoder::new()
                .compress_vec(body)
                .map_err(|e| err(&e))?;
            out.extend_from_slice(&packed);
        }
        Compressor::Zlib => {
            use std::io::Write;
            let mut encoder = flate2::write::ZlibEncoder::new(out, flate2::Compression::new(6));
            encoder.write_all(body).map_err(|e| err(&e))?;
            out = encoder.finish().map_err(|e| err(&e))?;
        }
        Compressor::Zstd => {
            let packed = zstd::bulk::compress(body, 3).map_err(|e| err(&e))?;
            out.extend_from_slice(&packed);
        }
    }
    let total = out.len();
    set_length(&mut out, total);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::msg::{encode_body, OpMsg};
    use bson::rawdoc;

    fn sample() -> Vec<u8> {
        let body = rawdoc! { "insert": "c", "documents": [{ "x": "a".repeat(500) }], "$db": "t" };
        encode_body(42, 7, &body)
    }

    #[test]
    fn every_compressor_round_trips() {
        let original = sample();
        for compressor in [
            Compressor::Noop,
            Compressor::Snappy,
            Compressor::Zlib,
            Compressor::Zstd,
        ] {
            let packed = compress(&original, compressor).unwrap();
            let header = Header::parse(&packed).unwrap();
            assert_eq!(header.op_code, OpCode::Compressed);
            assert_eq!(header.request_id, 42);
            assert_eq!(header.response_to, 7);
            assert_eq!(header.length, packed.len());
            let (used, inflated) = decompress(&packed).unwrap();
            assert_eq!(used, compressor);
            assert_eq!(inflated, original);
            OpMsg::parse(&inflated).unwrap();
        }
    }

    #[test]
    fn lying_sizes_are_rejected() {
        let original = sample();
        for compressor in [Compressor::Snappy, Compressor::Zlib, Compressor::Zstd] {
            let packed = compress(&original, compressor).unwrap();
            for delta in [-1i32, 1, 1_000_000] {
                let mut bad = packed.clone();
                let size = crate::wire::read_i32(&bad, 20) + delta;
                bad[20..24].copy_from_slice(&size.to_le_bytes());
                assert!(decompress(&bad).is_err(), "{compressor:?} {delta}");
            }
            let mut huge = packed.clone();
            huge[20..24].copy_from_slice(&i32::MAX.to_le_bytes());
            assert!(decompress(&huge).is_err());
        }
    }

    #[test]
    fn unknown_compressor_is_an_error() {
        let mut packed = compress(&sample(), Compressor::Snappy).unwrap();
        packed[24] = 9;
        assert_eq!(decompress(&packed), Err(WireError::UnknownCompressor(9)));
    }

    #[test]
    fn names_match_the_handshake_spelling() {
        for c in Compressor::SUPPORTED {
            assert_eq!(Compressor::from_name(c.name()), Some(c));
        }
        assert_eq!(Compressor::from_name("lz4"), None);
    }
}

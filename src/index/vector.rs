//! Reading vectors out of BSON: arrays of numbers, or BinData subtype 9
//! (the BSON vector format, `specifications/source/bson-binary-vector`) of
//! any of its three dtypes: packed little-endian float32, int8, and packed
//! bits (Atlas's `int1`).

use bson::spec::BinarySubtype;
use bson::RawBsonRef;
use likewise_compute::index::{Dtype, Element, Similarity, VectorRef};

/// BinData vector dtype bytes (BSON binary vector specification).
const FLOAT32: u8 = 0x27;
const INT8: u8 = 0x03;
const PACKED_BIT: u8 = 0x10;

/// Why a stored or given value is not a usable vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VectorError {
    Missing,
    NotAVector(&'static str),
    NotNumeric(usize),
    WrongDimensions { expected: usize, found: usize },
}

impl std::fmt::Display for VectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VectorError::Missing => write!(f, "vector field is missing"),
            VectorError::NotAVector(what) => write!(f, "value is {what}, not an array of numbers"),
            VectorError::NotNumeric(i) => write!(f, "element {i} of the vector is not a number"),
            VectorError::WrongDimensions { expected, found } => write!(
                f,
                "vector has {found} dimensions, the index expects {expected}"
            ),
        }
    }
}

/// Whether a value is a packed-bit BinData vector (Atlas's `int1`), which
/// Atlas indexes and compares only with `euclidean` similarity.
pub fn is_packed_bits(value: Option<RawBsonRef<'_>>) -> bool {
    matches!(value, Some(RawBsonRef::Binary(b))
        if b.subtype == BinarySubtype::from(9u8) && b.bytes.first() == Some(&PACKED_BIT))
}

/// Whether a value is an int8 BinData vector.
pub fn is_int8(value: Option<RawBsonRef<'_>>) -> bool {
    matches!(value, Some(RawBsonRef::Binary(b))
        if b.subtype == BinarySubtype::from(9u8) && b.bytes.first() == Some(&INT8))
}

/// Reads a vector of exactly `dims` numbers from a BSON value (see
/// [`read_any_vector`]).
pub fn read_vector(value: Option<RawBsonRef<'_>>, dims: usize) -> Result<Vec<f32>, VectorError> {
    let out = read_any_vector(value)?;
    if out.len() != dims {
        return Err(VectorError::WrongDimensions {
            expected: dims,
            found: out.len(),
        });
    }
    Ok(out)
}

/// Reads a vector of any length from a BSON value: an array of numbers,
/// or a BinData vector: float32 as it is, int8 elements as their values
/// (-128..=127), packed bits as 0.0 and 1.0, most significant bit first,
/// one dimension per bit but the last byte's padding. Packed-bit vectors
/// compared with euclidean distance then give Atlas's answer for `int1`
/// (the distance's square is the Hamming distance).
pub fn read_any_vector(value: Option<RawBsonRef<'_>>) -> Result<Vec<f32>, VectorError> {
    let value = value.ok_or(VectorError::Missing)?;
    match value {
        RawBsonRef::Array(array) => {
            let mut out = Vec::new();
            for (i, element) in array.into_iter().enumerate() {
                let number = match element.map_err(|_| VectorError::NotNumeric(i))? {
                    RawBsonRef::Double(x) => x as f32,
                    RawBsonRef::Int32(x) => x as f32,
                    RawBsonRef::Int64(x) => x as f32,
                    _ => return Err(VectorError::NotNumeric(i)),
                };
                out.push(number);
            }
            Ok(out)
        }
        RawBsonRef::Binary(bin) if bin.subtype == BinarySubtype::from(9u8) => {
            let bytes = bin.bytes;
            let malformed = VectorError::NotAVector("a malformed BinData vector");
            let (&dtype, rest) = bytes.split_first().ok_or(malformed.clone())?;
            let (&padding, data) = rest.split_first().ok_or(malformed.clone())?;
            match dtype {
                FLOAT32 if padding == 0 && data.len() % 4 == 0 => Ok(data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()),
                INT8 if padding == 0 => Ok(data.iter().map(|&b| f32::from(b as i8)).collect()),
                PACKED_BIT if padding < 8 && (padding == 0 || !data.is_empty()) => {
                    let bits = data.len() * 8 - usize::from(padding);
                    Ok((0..bits)
                        .map(|i| f32::from((data[i / 8] >> (7 - i % 8)) & 1))
                        .collect())
                }
                FLOAT32 | INT8 | PACKED_BIT => Err(malformed),
                _ => Err(VectorError::NotAVector(
                    "a BinData vector of an unknown dtype",
                )),
            }
        }
        RawBsonRef::Binary(_) => Err(VectorError::NotAVector("binary data")),
        RawBsonRef::Null => Err(VectorError::Missing),
        _ => Err(VectorError::NotAVector("not an array")),
    }
}

/// A vector as an index stores or queries it: `f32` values prepared
/// (`Similarity::prepare`), or `int8` / packed-bit values as they came,
/// at their own size (see `likewise_compute::index::element`).
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedVector {
    F32(Vec<f32>),
    I8(Vec<i8>),
    /// Most significant bit first, padding bits zero.
    Bits(Vec<u8>),
}

impl OwnedVector {
    pub fn as_ref(&self) -> VectorRef<'_> {
        match self {
            OwnedVector::F32(v) => VectorRef::F32(v),
            OwnedVector::I8(v) => VectorRef::I8(v),
            OwnedVector::Bits(v) => VectorRef::Bits(v),
        }
    }

    /// `values` (raw) in the dtype they came as: `int8` and packed-bit
    /// values (0 and 1) stay narrow when `dtype` says so, everything is
    /// prepared for `similarity`. `None` when `similarity` cannot compare
    /// them (a zero vector under cosine, values not finite).
    pub fn prepared(values: Vec<f32>, dtype: Dtype, similarity: Similarity) -> Option<OwnedVector> {
        let narrow = match dtype {
            Dtype::I8 => i8::from_values(&values, similarity).map(OwnedVector::I8),
            Dtype::Bits => u8::from_values(&values, similarity).map(OwnedVector::Bits),
            Dtype::F32 => None,
        };
        narrow.or_else(|| similarity.prepare(values).map(OwnedVector::F32))
    }
}

/// The dtype a value is stored as: `int8` and packed-bit BinData vectors
/// keep theirs; arrays and float32 BinData are `f32`.
pub fn dtype_of(value: Option<RawBsonRef<'_>>) -> Dtype {
    if is_int8(value) {
        Dtype::I8
    } else if is_packed_bits(value) {
        Dtype::Bits
    } else {
        Dtype::F32
    }
}

/// Reads a document's vector (exactly `dims` long) at its own dtype,
/// prepared for `similarity`; `None` when it is not a usable vector.
pub fn read_stored(
    value: Option<RawBsonRef<'_>>,
    dims: usize,
    similarity: Similarity,
) -> Option<OwnedVector> {
    let values = read_vector(value, dims).ok()?;
    OwnedVector::prepared(values, dtype_of(value), similarity)
}

/// Looks up a dotted path (`a.b.c`) in a document.
pub fn lookup<'a>(doc: &'a bson::RawDocument, path: &str) -> Option<RawBsonRef<'a>> {
    let mut current = doc;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let value = current.get(part).ok().flatten()?;
        if parts.peek().is_none() {
            return Some(value);
        }
        current = match value {
            RawBsonRef::Document(d) => d,
            _ => return None,
        };
    }
    None
}

/// Encodes float32 values as a BSON BinData vector (subtype 9).
pub fn to_bindata(values: &[f32]) -> bson::Binary {
    let mut bytes = Vec::with_capacity(2 + 4 * values.len());
    bytes.push(FLOAT32);
    bytes.push(0);
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bson::Binary {
        subtype: BinarySubtype::from(9u8),
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn every_bindata_dtype_reads_as_its_values() {
        let bin = |bytes: Vec<u8>| bson::Binary {
            subtype: BinarySubtype::from(9u8),
            bytes,
        };
        let doc = rawdoc! {
            "int8": bin(vec![INT8, 0, 0x7f, 0x80, 0xff, 0x00]),
            // 0b1010_0000 0b1100_0000 with 6 padding bits: 10 dimensions.
            "bits": bin(vec![PACKED_BIT, 6, 0b1010_0000, 0b1100_0000]),
            "bad_padding": bin(vec![PACKED_BIT, 8, 0xff]),
            "padded_empty": bin(vec![PACKED_BIT, 1]),
            "padded_int8": bin(vec![INT8, 1, 1]),
            "odd_float": bin(vec![FLOAT32, 0, 1, 2, 3]),
            "unknown": bin(vec![0x42, 0, 1]),
        };
        assert_eq!(
            read_vector(lookup(&doc, "int8"), 4).unwrap(),
            vec![127.0, -128.0, -1.0, 0.0]
        );
        assert_eq!(
            read_vector(lookup(&doc, "bits"), 10).unwrap(),
            vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
        );
        assert!(is_packed_bits(lookup(&doc, "bits")));
        assert!(!is_packed_bits(lookup(&doc, "int8")));
        for bad in [
            "bad_padding",
            "padded_empty",
            "padded_int8",
            "odd_float",
            "unknown",
        ] {
            assert!(
                matches!(
                    read_any_vector(lookup(&doc, bad)),
                    Err(VectorError::NotAVector(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn arrays_and_bindata_vectors_read_alike() {
        let doc = rawdoc! {
            "a": [1.5, 2_i32, 3_i64],
            "b": to_bindata(&[1.5, 2.0, 3.0]),
            "nested": { "v": [0.0, 1.0, 0.0] },
            "bad": [1.0, "x", 2.0],
            "short": [1.0],
        };
        assert_eq!(
            read_vector(lookup(&doc, "a"), 3).unwrap(),
            vec![1.5, 2.0, 3.0]
        );
        assert_eq!(
            read_vector(lookup(&doc, "b"), 3).unwrap(),
            vec![1.5, 2.0, 3.0]
        );
        assert_eq!(
            read_vector(lookup(&doc, "nested.v"), 3).unwrap(),
            vec![0.0, 1.0, 0.0]
        );
        assert_eq!(
            read_vector(lookup(&doc, "bad"), 3),
            Err(VectorError::NotNumeric(1))
        );
        assert_eq!(
            read_vector(lookup(&doc, "short"), 3),
            Err(VectorError::WrongDimensions {
                expected: 3,
                found: 1
            })
        );
        assert_eq!(
            read_vector(lookup(&doc, "missing"), 3),
            Err(VectorError::Missing)
        );
    }
}

//! Reading vectors out of BSON: arrays of numbers, or BinData subtype 9
//! (the BSON vector format) holding packed float32.

use bson::spec::BinarySubtype;
use bson::RawBsonRef;

/// BinData vector dtype byte for packed little-endian float32.
const FLOAT32: u8 = 0x27;

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

/// Reads a vector of exactly `dims` numbers from a BSON value.
pub fn read_vector(value: Option<RawBsonRef<'_>>, dims: usize) -> Result<Vec<f32>, VectorError> {
    let value = value.ok_or(VectorError::Missing)?;
    let out = match value {
        RawBsonRef::Array(array) => {
            let mut out = Vec::with_capacity(dims);
            for (i, element) in array.into_iter().enumerate() {
                let number = match element.map_err(|_| VectorError::NotNumeric(i))? {
                    RawBsonRef::Double(x) => x as f32,
                    RawBsonRef::Int32(x) => x as f32,
                    RawBsonRef::Int64(x) => x as f32,
                    _ => return Err(VectorError::NotNumeric(i)),
                };
                out.push(number);
            }
            out
        }
        RawBsonRef::Binary(bin) if bin.subtype == BinarySubtype::from(9u8) => {
            let bytes = bin.bytes;
            if bytes.len() < 2 || bytes[0] != FLOAT32 || bytes[1] != 0 || (bytes.len() - 2) % 4 != 0
            {
                return Err(VectorError::NotAVector(
                    "a BinData vector that is not float32",
                ));
            }
            bytes[2..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        RawBsonRef::Binary(_) => return Err(VectorError::NotAVector("binary data")),
        RawBsonRef::Null => return Err(VectorError::Missing),
        _ => return Err(VectorError::NotAVector("not an array")),
    };
    if out.len() != dims {
        return Err(VectorError::WrongDimensions {
            expected: dims,
            found: out.len(),
        });
    }
    Ok(out)
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

//! Legacy OP_QUERY (2004) and OP_REPLY (1).
//!
//! Modern servers accept OP_QUERY only for the connection handshake, which
//! drivers (Node, mongosh, Go) still open with. The proxy reads the query and
//! answers with an OP_REPLY.

use super::header::{set_length, Header, OpCode, HEADER_LEN};
use super::{Reader, WireError};
use bson::RawDocument;

#[derive(Debug, Clone, PartialEq)]
pub struct OpQuery<'a> {
    pub header: Header,
    pub flags: i32,
    /// Full collection name, e.g. `admin.$cmd`.
    pub namespace: &'a str,
    pub skip: i32,
    pub n_to_return: i32,
    pub query: &'a RawDocument,
    pub fields: Option<&'a RawDocument>,
}

impl<'a> OpQuery<'a> {
    pub fn parse(message: &'a [u8]) -> Result<OpQuery<'a>, WireError> {
        let header = Header::parse(message)?;
        if header.op_code != OpCode::Query {
            return Err(WireError::UnsupportedOpCode(header.op_code.as_i32()));
        }
        let mut reader = Reader::new(&message[..header.length.min(message.len())], HEADER_LEN);
        let flags = reader.i32("OP_QUERY flags")?;
        let namespace = reader.cstring("OP_QUERY namespace")?;
        let skip = reader.i32("OP_QUERY skip")?;
        let n_to_return = reader.i32("OP_QUERY numberToReturn")?;
        let query = reader.document("OP_QUERY query")?;
        let fields = if reader.remaining() > 0 {
            Some(reader.document("OP_QUERY fields")?)
        } else {
            None
        };
        if reader.remaining() > 0 {
            return Err(WireError::Malformed("trailing bytes after OP_QUERY".into()));
        }
        Ok(OpQuery {
            header,
            flags,
            namespace,
            skip,
            n_to_return,
            query,
            fields,
        })
    }

    /// The database part of the namespace.
    pub fn database(&self) -> &'a str {
        self.namespace
            .split_once('.')
            .map_or(self.namespace, |(db, _)| db)
    }

    /// The command document, unwrapped from `{$query: ...}` when the driver
    /// used that form to attach a read preference.
    pub fn command(&self) -> &'a RawDocument {
        match self.query.get_document("$query") {
            Ok(inner) => inner,
            Err(_) => self.query,
        }
    }
}

/// A parsed OP_REPLY.
#[derive(Debug, Clone, PartialEq)]
pub struct OpReply<'a> {
    pub header: Header,
    pub flags: i32,
    pub cursor_id: i64,
    pub starting_from: i32,
    pub documents: Vec<&'a RawDocument>,
}

impl<'a> OpReply<'a> {
    pub fn parse(message: &'a [u8]) -> Result<OpReply<'a>, WireError> {
        let header = Header::parse(message)?;
        if header.op_code != OpCode::Reply {
            return Err(WireError::UnsupportedOpCode(header.op_code.as_i32()));
        }
        let mut reader = Reader::new(&message[..header.length.min(message.len())], HEADER_LEN);
        let flags = reader.i32("OP_REPLY flags")?;
        let cursor_id = reader.i64("OP_REPLY cursorID")?;
        let starting_from = reader.i32("OP_REPLY startingFrom")?;
        let returned = reader.i32("OP_REPLY numberReturned")?;
        let mut documents = Vec::new();
        while reader.remaining() > 0 {
            documents.push(reader.document("OP_REPLY document")?);
        }
        if usize::try_from(returned).ok() != Some(documents.len()) {
            return Err(WireError::Malformed(format!(
                "OP_REPLY says {returned} documents, holds {}",
                documents.len()
            )));
        }
        Ok(OpReply {
            header,
            flags,
            cursor_id,
            starting_from,
            documents,
        })
    }
}

/// Encodes a one-document OP_REPLY answering `response_to`.
pub fn encode_reply(request_id: i32, response_to: i32, doc: &RawDocument) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 20 + doc.as_bytes().len());
    Header {
        length: 0,
        request_id,
        response_to,
        op_code: OpCode::Reply,
    }
    .write(&mut out);
    out.extend_from_slice(&0i32.to_le_bytes()); // responseFlags
    out.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    out.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    out.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    out.extend_from_slice(doc.as_bytes());
    let total = out.len();
    set_length(&mut out, total);
    out
}

/// Encodes an OP_QUERY (used by tests and the benchmark client).
pub fn encode_query(request_id: i32, namespace: &str, query: &RawDocument) -> Vec<u8> {
    let mut out = Vec::new();
    Header {
        length: 0,
        request_id,
        response_to: 0,
        op_code: OpCode::Query,
    }
    .write(&mut out);
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(namespace.as_bytes());
    out.push(0);
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&(-1i32).to_le_bytes());
    out.extend_from_slice(query.as_bytes());
    let total = out.len();
    set_length(&mut out, total);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn query_and_reply_round_trip() {
        let q = rawdoc! { "$query": { "isMaster": 1, "client": { "driver": { "name": "x" } } }, "$readPreference": { "mode": "primary" } };
        let bytes = encode_query(3, "admin.$cmd", &q);
        let parsed = OpQuery::parse(&bytes).unwrap();
        assert_eq!(parsed.database(), "admin");
        assert_eq!(parsed.n_to_return, -1);
        assert_eq!(parsed.command().get_i32("isMaster").unwrap(), 1);

        let doc = rawdoc! { "ismaster": true, "ok": 1.0 };
        let reply = encode_reply(9, 3, &doc);
        let parsed = OpReply::parse(&reply).unwrap();
        assert_eq!(parsed.header.response_to, 3);
        assert_eq!(parsed.documents, vec![doc.as_ref()]);
    }

    #[test]
    fn truncated_queries_are_errors() {
        let q = rawdoc! { "isMaster": 1 };
        let bytes = encode_query(3, "admin.$cmd", &q);
        for cut in 16..bytes.len() {
            let mut b = bytes[..cut].to_vec();
            let len = b.len();
            set_length(&mut b, len);
            assert!(OpQuery::parse(&b).is_err(), "cut {cut}");
        }
    }
}

//! One error type that knows which side failed, and how it reaches a client:
//! as a MongoDB-shaped reply `{ok: 0, errmsg, code, codeName}`.

use crate::wire::WireError;
use bson::{rawdoc, RawDocumentBuf};
use std::borrow::Cow;
use std::fmt;

/// Who is at fault: decides logging level and whether the connection lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we cannot accept.
    Client,
    /// The upstream is unreachable, closed, or answered nonsense.
    Upstream,
    /// A bug or resource problem inside the proxy.
    Internal,
}

/// A MongoDB error code with its stable name (from the server's error_codes.yml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub code: i32,
    pub name: Cow<'static, str>,
}

impl Code {
    pub const INTERNAL_ERROR: Code = Code::new(1, "InternalError");
    pub const BAD_VALUE: Code = Code::new(2, "BadValue");
    pub const HOST_UNREACHABLE: Code = Code::new(6, "HostUnreachable");
    pub const OVERFLOW: Code = Code::new(15, "Overflow");
    pub const PROTOCOL_ERROR: Code = Code::new(17, "ProtocolError");
    pub const INVALID_BSON: Code = Code::new(22, "InvalidBSON");
    pub const NAMESPACE_NOT_FOUND: Code = Code::new(26, "NamespaceNotFound");
    pub const INDEX_NOT_FOUND: Code = Code::new(27, "IndexNotFound");
    pub const NAMESPACE_EXISTS: Code = Code::new(48, "NamespaceExists");
    pub const CANNOT_CREATE_INDEX: Code = Code::new(67, "CannotCreateIndex");
    pub const INDEX_ALREADY_EXISTS: Code = Code::new(68, "IndexAlreadyExists");
    pub const INVALID_OPTIONS: Code = Code::new(72, "InvalidOptions");
    pub const INVALID_NAMESPACE: Code = Code::new(73, "InvalidNamespace");
    pub const NETWORK_TIMEOUT: Code = Code::new(89, "NetworkTimeout");
    pub const NOT_YET_INITIALIZED: Code = Code::new(94, "NotYetInitialized");
    pub const OPERATION_FAILED: Code = Code::new(96, "OperationFailed");
    pub const OBJECT_IS_BUSY: Code = Code::new(314, "ObjectIsBusy");
    /// `$vectorSearch` anywhere but first, as mongod reports stage placement.
    pub const STAGE_NOT_FIRST: Code = Code::new(40602, "Location40602");

    pub const UNSUPPORTED_OP_QUERY_COMMAND: Code = Code::new(352, "UnsupportedOpQueryCommand");

    const fn new(code: i32, name: &'static str) -> Code {
        Code {
            code,
            name: Cow::Borrowed(name),
        }
    }

    /// A code relayed from the upstream, with the name it gave.
    pub fn relayed(code: i32, name: &str) -> Code {
        Code {
            code,
            name: Cow::Owned(name.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Error {
    pub side: Side,
    pub code: Code,
    pub message: String,
    /// The `errorLabels` the upstream gave the error (drivers retry a
    /// transaction on `TransientTransactionError`, a write on
    /// `RetryableWriteError`): relayed as they came.
    pub labels: Vec<String>,
}

impl Error {
    pub fn client(code: Code, message: impl Into<String>) -> Error {
        Error {
            side: Side::Client,
            code,
            message: message.into(),
            labels: Vec::new(),
        }
    }

    pub fn upstream(code: Code, message: impl Into<String>) -> Error {
        Error {
            side: Side::Upstream,
            code,
            message: message.into(),
            labels: Vec::new(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Error {
        Error {
            side: Side::Internal,
            code: Code::INTERNAL_ERROR,
            message: message.into(),
            labels: Vec::new(),
        }
    }

    /// Whether the error is the upstream being away for a while rather
    /// than a verdict on the request: the network errors the proxy makes
    /// itself, and the codes the MongoDB retryable-reads specification
    /// lists as retryable (shutdown, step-down, not primary, timeouts).
    pub fn is_transient(&self) -> bool {
        const RETRYABLE: &[i32] = &[
            6, 7, 89, 91, 134, 150, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
        ];
        self.side == Side::Upstream && RETRYABLE.contains(&self.code.code)
    }

    /// The reply document a client receives for this error (with
    /// `errorLabels` when it has any).
    pub fn to_reply(&self) -> RawDocumentBuf {
        let mut reply = rawdoc! {
            "ok": 0.0,
            "errmsg": self.message.as_str(),
            "code": self.code.code,
            "codeName": &*self.code.name,
        };
        if !self.labels.is_empty() {
            let mut labels = bson::RawArrayBuf::new();
            for label in &self.labels {
                labels.push(label.as_str());
            }
            reply.append("errorLabels", labels);
        }
        reply
    }

    /// Adds a label unless it is there already.
    pub fn label(&mut self, label: &str) {
        if !self.labels.iter().any(|l| l == label) {
            self.labels.push(label.to_string());
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.side {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        };
        write!(
            f,
            "{side} error {} ({}): {}",
            self.code.code, self.code.name, self.message
        )
    }
}

impl std::error::Error for Error {}

impl From<WireError> for Error {
    /// Undecodable bytes always come from the peer that sent them; callers
    /// decoding upstream bytes re-side the error.
    fn from(err: WireError) -> Error {
        let code = match err {
            WireError::Malformed(_) => Code::INVALID_BSON,
            // mongod's own words for it, unprefixed.
            WireError::TooDeep(_) => return Error::client(Code::OVERFLOW, err.to_string()),
            _ => Code::PROTOCOL_ERROR,
        };
        Error::client(code, format!("likewise: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_have_the_mongodb_error_shape() {
        let reply = Error::client(Code::BAD_VALUE, "nope").to_reply();
        assert_eq!(reply.get_f64("ok").unwrap(), 0.0);
        assert_eq!(reply.get_str("errmsg").unwrap(), "nope");
        assert_eq!(reply.get_i32("code").unwrap(), 2);
        assert_eq!(reply.get_str("codeName").unwrap(), "BadValue");
    }
}

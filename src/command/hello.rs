//! `hello` / `isMaster`: the proxy presents itself as a router in front of
//! a replica set or a router, and as a standalone in front of a standalone.
//!
//! An upstream replica set advertises its members (`setName`, `hosts`, `me`
//! ...); drivers would then open connections to those members and bypass the
//! proxy. Presenting as a mongos (`msg: "isdbgrid"`, no replica-set fields)
//! keeps every connection on the proxy. `topologyVersion` is dropped because
//! it would announce streamed (awaitable) hello, whose every reply would need
//! this same rewrite. Compression is negotiated by the proxy itself: it
//! decodes what it advertises, whatever the upstream supports.

use crate::wire::Compressor;
use bson::{RawArrayBuf, RawBsonRef, RawDocument, RawDocumentBuf};

/// Fields of the upstream's reply that would reveal or describe a replica
/// set, or announce features the proxy does not provide.
const DROPPED: &[&str] = &[
    "setName",
    "setVersion",
    "hosts",
    "passives",
    "arbiters",
    "primary",
    "me",
    "electionId",
    "secondary",
    "arbiterOnly",
    "passive",
    "hidden",
    "tags",
    "lastWrite",
    "isreplicaset",
    "buildIndexes",
    "secondaryDelaySecs",
    "topologyVersion",
    "compression",
];

/// What the client asked for in its handshake.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hello {
    /// Compressors the client offered, in its order of preference.
    pub compression: Vec<String>,
    /// The client sent `helloOk: true`.
    pub hello_ok: bool,
}

impl Hello {
    pub fn is_hello(command_name: &str) -> bool {
        matches!(command_name, "hello" | "isMaster" | "ismaster")
    }

    pub fn parse(body: &RawDocument) -> Hello {
        let compression = body
            .get_array("compression")
            .map(|arr| {
                arr.into_iter()
                    .filter_map(|v| v.ok().and_then(|v| v.as_str()).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let hello_ok = matches!(body.get("helloOk"), Ok(Some(RawBsonRef::Boolean(true))));
        Hello {
            compression,
            hello_ok,
        }
    }

    /// Compressors both the client offered and the proxy implements, in the
    /// client's order (the first is what the client will use).
    pub fn negotiated(&self) -> Vec<Compressor> {
        self.compression
            .iter()
            .filter_map(|name| Compressor::from_name(name))
            .filter(|c| Compressor::SUPPORTED.contains(c))
            .collect()
    }

    /// Rewrites a successful upstream reply into a router's reply. Error
    /// replies are the upstream's business and stay as they are (`None`).
    pub fn handle_reply(&self, reply: &RawDocument) -> Option<RawDocumentBuf> {
        if !crate::wire::reply_ok(reply) {
            return None;
        }
        let mut out = RawDocumentBuf::new();
        let mut has_msg = false;
        let mut has_hello_ok = false;
        for entry in reply {
            let (key, value) = entry.ok()?;
            if DROPPED.contains(&key) {
                continue;
            }
            has_msg |= key == "msg";
            has_hello_ok |= key == "helloOk";
            out.append(key, value.to_raw_bson());
        }
        // A standalone is presented as one: drivers then attach no
        // `txnNumber` to writes, which a standalone mongod refuses (code 20).
        if !has_msg && !is_standalone(reply) {
            out.append("msg", "isdbgrid");
        }
        if self.hello_ok && !has_hello_ok {
            out.append("helloOk", true);
        }
        let negotiated = self.negotiated();
        if !negotiated.is_empty() {
            let mut names = RawArrayBuf::new();
            for c in negotiated {
                names.push(c.name());
            }
            out.append("compression", names);
        }
        Some(out)
    }
}

/// Whether a hello reply comes from a standalone server: neither a
/// replica-set member (`setName`, `isreplicaset`) nor a router
/// (`msg: "isdbgrid"`), as the server discovery and monitoring
/// specification classifies servers.
pub fn is_standalone(reply: &RawDocument) -> bool {
    let member = reply.get("setName").ok().flatten().is_some()
        || matches!(
            reply.get("isreplicaset"),
            Ok(Some(RawBsonRef::Boolean(true)))
        );
    let router = matches!(reply.get("msg"), Ok(Some(RawBsonRef::String("isdbgrid"))));
    !member && !router
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn replica_set_reply() -> RawDocumentBuf {
        rawdoc! {
            "isWritablePrimary": true,
            "topologyVersion": { "processId": 1, "counter": 0 },
            "maxBsonObjectSize": 16777216,
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": 7_i64,
            "maxWireVersion": 21,
            "saslSupportedMechs": ["SCRAM-SHA-256"],
            "ok": 1.0,
            "setName": "rs",
            "hosts": ["10.0.0.1:27017"],
            "me": "10.0.0.1:27017",
            "primary": "10.0.0.1:27017",
            "compression": ["snappy"],
            "$clusterTime": { "clusterTime": 1 },
        }
    }

    #[test]
    fn replica_set_reply_becomes_a_router_reply() {
        let hello = Hello::parse(
            &rawdoc! { "hello": 1, "helloOk": true, "compression": ["lz4", "zstd", "zlib"] },
        );
        let out = hello.handle_reply(&replica_set_reply()).unwrap();
        for gone in ["setName", "hosts", "me", "primary", "topologyVersion"] {
            assert!(out.get(gone).unwrap().is_none(), "{gone} kept");
        }
        assert_eq!(out.get_str("msg").unwrap(), "isdbgrid");
        assert!(out.get_bool("helloOk").unwrap());
        assert_eq!(out.get_i32("logicalSessionTimeoutMinutes").unwrap(), 30);
        assert_eq!(out.get_i64("connectionId").unwrap(), 7);
        assert!(out.get_document("$clusterTime").is_ok());
        assert!(out.get_array("saslSupportedMechs").is_ok());
        let compression: Vec<_> = out
            .get_array("compression")
            .unwrap()
            .into_iter()
            .map(|v| v.unwrap().as_str().unwrap().to_string())
            .collect();
        assert_eq!(compression, ["zstd", "zlib"]);
    }

    #[test]
    fn no_compression_is_advertised_unless_asked() {
        let hello = Hello::parse(&rawdoc! { "isMaster": 1 });
        let out = hello.handle_reply(&replica_set_reply()).unwrap();
        assert!(out.get("compression").unwrap().is_none());
        assert!(out.get("helloOk").unwrap().is_none());
    }

    #[test]
    fn a_standalone_is_presented_as_a_standalone() {
        let hello = Hello::default();
        let standalone = rawdoc! {
            "isWritablePrimary": true, "maxWireVersion": 21,
            "logicalSessionTimeoutMinutes": 30, "ok": 1.0,
        };
        let out = hello.handle_reply(&standalone).unwrap();
        assert!(out.get("msg").unwrap().is_none());
        assert!(is_standalone(&out));
        // A router stays a router; a replica set becomes one.
        let router = rawdoc! { "isWritablePrimary": true, "msg": "isdbgrid", "ok": 1.0 };
        assert_eq!(
            hello.handle_reply(&router).unwrap().get_str("msg").unwrap(),
            "isdbgrid"
        );
        let member = hello.handle_reply(&replica_set_reply()).unwrap();
        assert!(!is_standalone(&member));
    }

    #[test]
    fn error_replies_are_left_alone() {
        let hello = Hello::default();
        assert!(hello
            .handle_reply(&rawdoc! { "ok": 0.0, "errmsg": "x", "code": 2 })
            .is_none());
    }
}

//! Protocol-level behaviour of the proxy, driven with hand-built frames
//! against a real SecantusDB upstream: the legacy handshake, compression,
//! checksums, unacknowledged writes, malformed input and a dead upstream.

mod common;

use bson::{rawdoc, RawDocument, RawDocumentBuf};
use common::{Proxy, Upstream};
use likewise::config::{Config, Upstream as UpstreamAddr};
use likewise::conn::Connection;
use likewise::wire::{compressed, msg, query, Compressor, Header, OpCode, OpMsg, OpReply};
use tokio::net::TcpStream;

async fn connect(addr: &str) -> Connection {
    Connection::new(TcpStream::connect(addr).await.unwrap())
}

async fn read(conn: &mut Connection) -> bytes::Bytes {
    conn.read_frame().await.unwrap().expect("a reply")
}

fn body_of(reply: &[u8]) -> RawDocumentBuf {
    OpMsg::parse(reply).unwrap().body().to_owned()
}

async fn command(conn: &mut Connection, id: i32, body: &RawDocument) -> RawDocumentBuf {
    conn.write_frame(&msg::encode_body(id, 0, body))
        .await
        .unwrap();
    let reply = read(conn).await;
    assert_eq!(Header::parse(&reply).unwrap().response_to, id);
    body_of(&reply)
}

fn ok(doc: &RawDocument) -> bool {
    doc.get_f64("ok").ok() == Some(1.0)
}

#[tokio::test]
async fn legacy_handshake_is_answered_with_op_reply_as_a_router() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let mut conn = connect(&proxy.addr.to_string()).await;
    let hello = rawdoc! {
        "isMaster": 1,
        "helloOk": true,
        "client": { "driver": { "name": "test", "version": "0" } },
        "compression": ["lz4", "zstd", "snappy", "zlib"],
    };
    conn.write_frame(&query::encode_query(77, "admin.$cmd", &hello))
        .await
        .unwrap();
    let reply = read(&mut conn).await;
    let parsed = OpReply::parse(&reply).unwrap();
    assert_eq!(parsed.header.response_to, 77);
    let doc = parsed.documents[0];
    assert!(doc.get_bool("ismaster").unwrap());
    assert_eq!(doc.get_str("msg").unwrap(), "isdbgrid");
    assert!(doc.get_bool("helloOk").unwrap());
    assert!(doc.get_i32("logicalSessionTimeoutMinutes").is_ok());
    assert!(doc.get_i32("maxWireVersion").is_ok());
    for gone in [
        "setName",
        "hosts",
        "me",
        "primary",
        "topologyVersion",
        "lastWrite",
    ] {
        assert!(doc.get(gone).unwrap().is_none(), "{gone} leaked");
    }
    let compression: Vec<&str> = doc
        .get_array("compression")
        .unwrap()
        .into_iter()
        .map(|v| v.unwrap().as_str().unwrap())
        .collect();
    assert_eq!(compression, ["zstd", "snappy", "zlib"]);

    // Anything else over OP_QUERY is refused the way mongod refuses it, and
    // the connection lives on.
    let find = rawdoc! { "find": "c" };
    conn.write_frame(&query::encode_query(78, "test.$cmd", &find))
        .await
        .unwrap();
    let reply = read(&mut conn).await;
    let parsed = OpReply::parse(&reply).unwrap();
    assert_eq!(parsed.header.response_to, 78);
    assert_eq!(parsed.documents[0].get_i32("code").unwrap(), 352);
    assert!(ok(&command(
        &mut conn,
        79,
        &rawdoc! { "ping": 1, "$db": "admin" }
    )
    .await));
}

#[tokio::test]
async fn compressed_requests_get_replies_compressed_the_same_way() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let mut conn = connect(&proxy.addr.to_string()).await;
    for (i, compressor) in [
        Compressor::Snappy,
        Compressor::Zlib,
        Compressor::Zstd,
        Compressor::Noop,
    ]
    .into_iter()
    .enumerate()
    {
        let id = 100 + i32::try_from(i).unwrap();
        let insert = rawdoc! {
            "insert": "compressed",
            "documents": [{ "_id": id, "by": compressor.name(), "pad": "x".repeat(2000) }],
            "$db": "wire",
        };
        let request = compressed::compress(&msg::encode_body(id, 0, &insert), compressor).unwrap();
        conn.write_frame(&request).await.unwrap();
        let reply = read(&mut conn).await;
        let header = Header::parse(&reply).unwrap();
        assert_eq!(header.op_code, OpCode::Compressed);
        assert_eq!(header.response_to, id);
        let (used, inflated) = compressed::decompress(&reply).unwrap();
        assert_eq!(used, compressor);
        let body = body_of(&inflated);
        assert!(ok(&body), "{body:?}");
        assert_eq!(body.get_i32("n").unwrap(), 1);
    }
    let found = command(
        &mut conn,
        200,
        &rawdoc! { "count": "compressed", "$db": "wire" },
    )
    .await;
    assert_eq!(found.get_i32("n").unwrap(), 4);
}

#[tokio::test]
async fn checksums_are_verified() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let mut conn = connect(&proxy.addr.to_string()).await;
    let ping = rawdoc! { "ping": 1, "$db": "admin" };
    let good = msg::encode(5, 0, msg::CHECKSUM_PRESENT, &[msg::Section::Body(&ping)]);
    conn.write_frame(&good).await.unwrap();
    assert!(ok(&body_of(&read(&mut conn).await)));

    let mut bad = msg::encode(6, 0, msg::CHECKSUM_PRESENT, &[msg::Section::Body(&ping)]);
    let last = bad.len() - 1;
    bad[last] ^= 0x5a;
    conn.write_frame(&bad).await.unwrap();
    let reply = read(&mut conn).await;
    assert_eq!(Header::parse(&reply).unwrap().response_to, 6);
    let body = body_of(&reply);
    assert_eq!(body.get_f64("ok").unwrap(), 0.0);
    assert_eq!(body.get_str("codeName").unwrap(), "ProtocolError");
    assert!(ok(&command(&mut conn, 7, &ping).await));
}

#[tokio::test]
async fn unacknowledged_writes_get_no_reply() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let mut conn = connect(&proxy.addr.to_string()).await;
    let insert = rawdoc! {
        "insert": "w0",
        "documents": [{ "_id": 1 }, { "_id": 2 }],
        "writeConcern": { "w": 0 },
        "$db": "wire",
    };
    conn.write_frame(&msg::encode(
        10,
        0,
        msg::MORE_TO_COME,
        &[msg::Section::Body(&insert)],
    ))
    .await
    .unwrap();
    // The very next frame must answer the next request, not the w:0 write.
    let count = command(&mut conn, 11, &rawdoc! { "count": "w0", "$db": "wire" }).await;
    assert_eq!(count.get_i32("n").unwrap(), 2);
}

#[tokio::test]
async fn malformed_messages_get_error_replies_and_the_connection_survives() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let mut conn = connect(&proxy.addr.to_string()).await;
    let ping = rawdoc! { "ping": 1, "$db": "admin" };
    let good = msg::encode_body(1, 0, &ping);

    let mut unknown_kind = good.clone();
    unknown_kind[20] = 7;
    let mut unknown_flag = good.clone();
    unknown_flag[16] = 1 << 3;
    let mut bad_doc_len = good.clone();
    bad_doc_len[21..25].copy_from_slice(&1_000_000i32.to_le_bytes());
    let mut bad_opcode = good.clone();
    bad_opcode[12..16].copy_from_slice(&2010i32.to_le_bytes());
    let mut unknown_compressor = compressed::compress(&good, Compressor::Zstd).unwrap();
    unknown_compressor[24] = 9;
    let mut lying_size = compressed::compress(&good, Compressor::Snappy).unwrap();
    lying_size[20..24].copy_from_slice(&40_000_000i32.to_le_bytes());

    for (i, mut frame) in [
        unknown_kind,
        unknown_flag,
        bad_doc_len,
        bad_opcode,
        unknown_compressor,
        lying_size,
    ]
    .into_iter()
    .enumerate()
    {
        let id = 500 + i32::try_from(i).unwrap();
        frame[4..8].copy_from_slice(&id.to_le_bytes());
        conn.write_frame(&frame).await.unwrap();
        let reply = read(&mut conn).await;
        assert_eq!(Header::parse(&reply).unwrap().response_to, id, "case {i}");
        let body = body_of(&reply);
        assert_eq!(body.get_f64("ok").unwrap(), 0.0, "case {i}");
        assert!(body.get_str("errmsg").unwrap().starts_with("likewise:"));
        assert!(body.get_i32("code").is_ok());
        assert!(body.get_str("codeName").is_ok());
        assert!(ok(&command(&mut conn, id + 100, &ping).await), "case {i}");
    }
}

#[tokio::test]
async fn impossible_frame_lengths_close_only_that_connection() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let addr = proxy.addr.to_string();
    let mut victim = connect(&addr).await;
    let mut bystander = connect(&addr).await;
    let ping = rawdoc! { "ping": 1, "$db": "admin" };
    assert!(ok(&command(&mut bystander, 1, &ping).await));

    let mut header = Vec::new();
    for v in [100_000_000i32, 1, 0, 2013] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    victim.write_frame(&header).await.unwrap();
    assert!(matches!(victim.read_frame().await, Ok(None) | Err(_)));
    assert!(ok(&command(&mut bystander, 2, &ping).await));
    let mut fresh = connect(&addr).await;
    assert!(ok(&command(&mut fresh, 3, &ping).await));
}

#[tokio::test]
async fn upstream_errors_reach_the_client_unchanged() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let mut direct = connect(&format!("127.0.0.1:{}", upstream.port)).await;
    let mut proxied = connect(&proxy.addr.to_string()).await;
    for bad in [
        rawdoc! { "definitelyNotACommand": 1, "$db": "test" },
        rawdoc! { "find": 12, "$db": "test" },
        rawdoc! { "insert": "c", "documents": [{ "_id": 1 }, { "_id": 1 }], "$db": "test" },
    ] {
        let drop = rawdoc! { "drop": "c", "$db": "test" };
        command(&mut direct, 1, &drop).await;
        let want = strip_volatile(&command(&mut direct, 2, &bad).await);
        command(&mut direct, 3, &drop).await;
        let got = strip_volatile(&command(&mut proxied, 2, &bad).await);
        assert_eq!(got, want);
    }
}

fn strip_volatile(doc: &RawDocument) -> bson::Document {
    let mut doc: bson::Document = doc.try_into().unwrap();
    doc.remove("$clusterTime");
    doc.remove("operationTime");
    doc
}

#[tokio::test]
async fn a_dead_upstream_gives_a_prompt_error_not_a_hang() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    // A client waits for a server as long as the URI's
    // serverSelectionTimeoutMS (30 s by default, as mongos), then gets the
    // error with the driver's reason.
    let uri = format!("mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=500");
    let config = Config::new(UpstreamAddr::parse(&uri).unwrap());
    let proxy = Proxy::start_with(config).await;
    let mut conn = connect(&proxy.addr.to_string()).await;
    let reply = command(&mut conn, 9, &rawdoc! { "hello": 1, "$db": "admin" }).await;
    assert_eq!(reply.get_f64("ok").unwrap(), 0.0);
    assert_eq!(reply.get_str("codeName").unwrap(), "HostUnreachable");
    let why = reply.get_str("errmsg").unwrap();
    assert!(why.contains(&format!("127.0.0.1:{port}")), "{why}");
    assert!(matches!(conn.read_frame().await, Ok(None) | Err(_)));
}

#[tokio::test]
async fn streamed_hello_replies_are_all_rewritten() {
    // Drivers never get a topologyVersion from the proxy, but a client that
    // brings one (from a direct connection) and allows exhaust may be sent
    // a stream of hello replies; none may leak the replica set.
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let mut direct = connect(&format!("127.0.0.1:{}", upstream.port)).await;
    let hello = command(&mut direct, 1, &rawdoc! { "hello": 1, "$db": "admin" }).await;
    let topology_version = hello.get_document("topologyVersion").unwrap().to_owned();

    let mut conn = connect(&proxy.addr.to_string()).await;
    let awaitable = rawdoc! {
        "hello": 1,
        "topologyVersion": topology_version,
        "maxAwaitTimeMS": 50,
        "$db": "admin",
    };
    conn.write_frame(&msg::encode(
        2,
        0,
        msg::EXHAUST_ALLOWED,
        &[msg::Section::Body(&awaitable)],
    ))
    .await
    .unwrap();
    let mut streamed = 0;
    for _ in 0..3 {
        let reply = read(&mut conn).await;
        let parsed = OpMsg::parse(&reply).unwrap();
        assert_eq!(parsed.header.response_to, 2);
        let body = parsed.body();
        assert_eq!(body.get_str("msg").unwrap(), "isdbgrid");
        assert!(body.get("setName").unwrap().is_none());
        assert!(body.get("topologyVersion").unwrap().is_none());
        if !parsed.more_to_come() {
            break;
        }
        streamed += 1;
    }
    assert!(streamed >= 1, "the upstream did not stream hello replies");
}

#[tokio::test]
async fn clients_are_disconnected_promptly_when_the_upstream_dies() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let mut conn = connect(&proxy.addr.to_string()).await;
    let ping = rawdoc! { "ping": 1, "$db": "admin" };
    assert!(ok(&command(&mut conn, 1, &ping).await));
    drop(upstream);
    conn.write_frame(&msg::encode_body(2, 0, &ping))
        .await
        .unwrap();
    // Bounded only so a regression fails instead of hanging the suite.
    let bounded = std::time::Duration::from_secs(60);
    let outcome = tokio::time::timeout(bounded, conn.read_frame())
        .await
        .expect("the proxy left the client hanging");
    // The request gets the error a mongos gives when its server is gone
    // (so drivers retry it), then the connection closes.
    if let Ok(Some(reply)) = outcome {
        let parsed = OpMsg::parse(&reply).unwrap();
        assert_eq!(parsed.header.response_to, 2);
        let code = parsed.body().get_i32("code").unwrap();
        assert_eq!(
            code, 91,
            "ShutdownInProgress: drivers drop the pool and retry"
        );
        let closed = tokio::time::timeout(bounded, conn.read_frame())
            .await
            .expect("the proxy kept the connection");
        assert!(matches!(closed, Ok(None) | Err(_)));
    }
}

/// `{a: {a: … {}}}`: `levels` documents below the one returned, built as
/// bytes (a builder would copy the whole value at every level).
fn nested(levels: usize) -> RawDocumentBuf {
    let len = |k: usize| i32::try_from(5 + 8 * k).unwrap();
    let mut bytes = Vec::with_capacity(5 + 8 * levels);
    for k in (1..=levels).rev() {
        bytes.extend_from_slice(&len(k).to_le_bytes());
        bytes.extend_from_slice(b"\x03a\x00");
    }
    bytes.extend_from_slice(&len(0).to_le_bytes());
    bytes.extend(std::iter::repeat_n(0u8, levels + 1));
    RawDocumentBuf::from_bytes(bytes).unwrap()
}

/// Levels below `doc`'s top, as mongod counts them for `maxBSONDepth`.
fn depth(doc: &RawDocument) -> usize {
    (0..)
        .find(|&max| likewise::wire::check_depth(doc, max).is_ok())
        .unwrap()
}

/// One unauthenticated message nested thousands of levels deep used to
/// overflow a worker's stack and abort the proxy. Every request is now
/// held to mongod's limit (200 levels below the command) before anything
/// walks it, with mongod's error; at the limit itself, every command the
/// proxy walks (filters, `$like`, `$vectorSearch`, projections with
/// scores, explain, index definitions, models, document sequences) is
/// answered without harm.
#[tokio::test]
async fn commands_nested_past_mongods_limit_get_its_overflow_error_and_the_proxy_lives() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let addr = proxy.addr.to_string();
    let mut conn = connect(&addr).await;
    let ping = rawdoc! { "ping": 1, "$db": "admin" };

    // The attack as it was reported: 7,700 levels in a $vectorSearch filter.
    let attack = rawdoc! {
        "aggregate": "c",
        "pipeline": [{ "$vectorSearch": { "filter": nested(7_700) } }],
        "cursor": {},
        "$db": "t",
    };
    let reply = command(&mut conn, 1, &attack).await;
    assert_eq!(reply.get_i32("code"), Ok(15), "{reply:?}");
    assert_eq!(reply.get_str("codeName"), Ok("Overflow"));
    assert!(reply
        .get_str("errmsg")
        .unwrap()
        .starts_with("BSONObj exceeds maximum nested object depth"));
    assert!(ok(&command(&mut conn, 2, &ping).await));

    // A small indexed collection, so vector queries run their whole course.
    let mut docs = bson::RawArrayBuf::new();
    for i in 0..20 {
        docs.push(rawdoc! { "_id": i, "p": [f64::from(i), 1.0], "x": i % 2 });
    }
    let reply = command(
        &mut conn,
        3,
        &rawdoc! { "insert": "c", "documents": docs, "$db": "t" },
    )
    .await;
    assert!(ok(&reply), "{reply:?}");
    let create = rawdoc! {
        "createSearchIndexes": "c",
        "indexes": [{ "name": "v", "type": "vectorSearch", "definition": {
            "fields": [{ "type": "vector", "path": "p", "numDimensions": 2, "similarity": "euclidean" }]
        } }],
        "$db": "t",
    };
    assert!(ok(&command(&mut conn, 4, &create).await));
    let list = rawdoc! {
        "aggregate": "c", "pipeline": [{ "$listSearchIndexes": { "name": "v" } }], "cursor": {}, "$db": "t",
    };
    let mut ready = false;
    for id in 5..5_000 {
        let reply = command(&mut conn, id, &list).await;
        let batch = reply
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap();
        let status = batch.into_iter().next().and_then(|d| {
            d.ok()?
                .as_document()?
                .get_str("status")
                .ok()
                .map(str::to_owned)
        });
        if status.as_deref() == Some("READY") {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ready, "the index never became READY");

    let search = |filter: RawDocumentBuf| {
        rawdoc! {
            "index": "v", "path": "p", "queryVector": [1.0, 1.0], "numCandidates": 10, "limit": 3, "filter": filter,
        }
    };
    let like = rawdoc! { "_id": 3, "n": 3 };
    // Each form puts `deep` where one of the proxy's walks goes.
    type Form = Box<dyn Fn(RawDocumentBuf) -> RawDocumentBuf>;
    let forms: Vec<(&str, Form)> = vec![
        (
            "find filter",
            Box::new(|deep| rawdoc! { "find": "c", "filter": deep, "$db": "t" }),
        ),
        (
            "find with $like",
            Box::new(move |deep| {
                rawdoc! {
                    "find": "c", "filter": { "$like": like.clone(), "$nor": [deep] }, "$db": "t",
                }
            }),
        ),
        (
            "count with $like",
            Box::new(|deep| {
                rawdoc! {
                    "count": "c", "query": { "$like": { "_id": 3, "n": 3 }, "$nor": [deep] }, "$db": "t",
                }
            }),
        ),
        (
            "$vectorSearch filter",
            Box::new(move |deep| {
                rawdoc! {
                    "aggregate": "c", "pipeline": [{ "$vectorSearch": search(rawdoc! { "$nor": [deep] }) }],
                    "cursor": {}, "$db": "t",
                }
            }),
        ),
        (
            "projection with scores",
            Box::new(move |deep| {
                rawdoc! {
                    "aggregate": "c",
                    "pipeline": [
                        { "$vectorSearch": search(rawdoc! {}) },
                        { "$project": { "s": { "$meta": "vectorSearchScore" }, "d": { "$literal": deep } } },
                    ],
                    "cursor": {}, "$db": "t",
                }
            }),
        ),
        (
            "explain",
            Box::new(move |deep| {
                rawdoc! {
                    "explain": {
                        "aggregate": "c", "pipeline": [{ "$vectorSearch": search(rawdoc! { "$nor": [deep] }) }],
                        "cursor": {},
                    },
                    "$db": "t",
                }
            }),
        ),
        (
            "index definition",
            Box::new(|deep| {
                rawdoc! {
                    "createSearchIndexes": "c",
                    "indexes": [{ "name": "w", "type": "vectorSearch", "definition": { "fields": [deep] } }],
                    "$db": "t",
                }
            }),
        ),
        (
            "model definition",
            Box::new(|deep| {
                rawdoc! {
                    "createModel": "m", "kind": "vector", "dimensions": 2, "options": deep, "$db": "t",
                }
            }),
        ),
        (
            "insert",
            Box::new(|deep| {
                rawdoc! {
                    "insert": "c", "documents": [{ "_id": "deep", "p": [0.0, 0.0], "d": deep }], "$db": "t",
                }
            }),
        ),
    ];
    let mut id = 10_000;
    for (name, form) in &forms {
        let over = depth(&form(nested(1))) - 1;
        for levels in [200 - over, 201 - over] {
            let doc = form(nested(levels));
            assert_eq!(depth(&doc), levels + over, "{name}");
            id += 1;
            let reply = command(&mut conn, id, &doc).await;
            if levels + over > 200 {
                assert_eq!(reply.get_i32("code"), Ok(15), "{name}: {reply:?}");
            } else {
                assert_ne!(reply.get_i32("code"), Ok(15), "{name}: {reply:?}");
            }
            id += 1;
            assert!(ok(&command(&mut conn, id, &ping).await), "{name}");
        }
    }
    // A document sequence is held to the limit document by document.
    let deep_doc = rawdoc! { "_id": "seq", "d": nested(200) };
    let sections = [
        msg::Section::Body(&rawdoc! { "insert": "c", "$db": "t" }),
        msg::Section::Sequence(msg::DocumentSequence {
            identifier: "documents",
            documents: vec![&deep_doc],
        }),
    ];
    conn.write_frame(&msg::encode(99_999, 0, 0, &sections))
        .await
        .unwrap();
    let reply = body_of(&read(&mut conn).await);
    assert_eq!(reply.get_i32("code"), Ok(15), "{reply:?}");
    // Nothing was lost on the way: the proxy and other clients carry on.
    let mut other = connect(&addr).await;
    assert!(ok(&command(&mut other, 1, &ping).await));
}

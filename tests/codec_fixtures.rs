//! The codec against real frames captured from pymongo, the Node driver,
//! SecantusDB and the proxy itself (tests/fixtures/frames, recorded with
//! tests/fixtures/capture.py). Each frame must decode to what its client
//! meant, re-encode to the same bytes, and survive every truncation and
//! single-byte corruption without a panic.

use bytes::Bytes;
use likewise::command::Hello;
use likewise::wire::{self, compressed, msg, Compressor, Message, OpMsg, Section};
use std::path::PathBuf;

#[path = "common/decode_all.rs"]
mod decode_all;
use decode_all::decode_everything;

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

#[path = "common/structured.rs"]
mod structured;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/frames")
        .join(format!("{name}.frame"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn all_fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/frames");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "frame"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 15, "fixtures missing");
    out
}

fn op_msg(bytes: &[u8]) -> OpMsg<'_> {
    match wire::decode(bytes).unwrap() {
        Message::Msg(m) => m,
        other => panic!("expected OP_MSG, got {other:?}"),
    }
}

/// Re-encoding what was parsed gives back the captured bytes exactly.
fn assert_round_trip(bytes: &[u8]) {
    let m = op_msg(bytes);
    let again = msg::encode(
        m.header.request_id,
        m.header.response_to,
        m.flags,
        &m.sections,
    );
    assert_eq!(again, bytes);
}

#[test]
fn insert_many_uses_a_document_sequence() {
    let bytes = fixture("op_msg_insert_document_sequence");
    let m = op_msg(&bytes);
    assert_eq!(m.command_name(), Some("insert"));
    assert!(!m.more_to_come());
    let seqs: Vec<_> = m.sequences().collect();
    assert_eq!(seqs.len(), 1);
    assert_eq!(seqs[0].identifier, "documents");
    let ids: Vec<i32> = seqs[0]
        .documents
        .iter()
        .map(|d| d.get_i32("_id").unwrap())
        .collect();
    assert_eq!(ids, [0, 1, 2]);
    assert!(matches!(m.sections[0], Section::Body(_)));
    assert_round_trip(&bytes);
}

#[test]
fn unacknowledged_insert_has_more_to_come() {
    let bytes = fixture("op_msg_insert_w0_more_to_come");
    let m = op_msg(&bytes);
    assert!(m.more_to_come());
    assert_eq!(
        m.body()
            .get_document("writeConcern")
            .unwrap()
            .get_i32("w")
            .unwrap(),
        0
    );
    assert_round_trip(&bytes);
}

#[test]
fn exhaust_cursor_frames() {
    let request = fixture("op_msg_getmore_exhaust_allowed");
    let m = op_msg(&request);
    assert_eq!(m.command_name(), Some("getMore"));
    assert_eq!(m.flags & msg::EXHAUST_ALLOWED, msg::EXHAUST_ALLOWED);
    assert_round_trip(&request);
    let streamed = fixture("op_msg_getmore_reply_more_to_come");
    assert!(op_msg(&streamed).more_to_come());
    let last = fixture("op_msg_getmore_reply_last");
    let last_msg = op_msg(&last);
    assert!(!last_msg.more_to_come());
    assert_eq!(
        last_msg
            .body()
            .get_document("cursor")
            .unwrap()
            .get_i64("id")
            .unwrap(),
        0
    );
    assert_eq!(
        op_msg(&streamed).header.response_to,
        last_msg.header.response_to
    );
    for bytes in [streamed, last] {
        assert_round_trip(&bytes);
    }
}

#[test]
fn awaitable_hello_is_recognised() {
    let bytes = fixture("op_msg_hello_awaitable_exhaust_allowed");
    let m = op_msg(&bytes);
    assert!(Hello::is_hello(m.command_name().unwrap()));
    assert!(m.body().get_document("topologyVersion").is_ok());
    assert!(m.body().get("maxAwaitTimeMS").unwrap().is_some());
}

#[test]
fn upstream_replica_set_hello_is_rewritten_to_a_router() {
    let bytes = fixture("op_msg_ismaster_reply_replica_set");
    let m = op_msg(&bytes);
    assert_eq!(m.body().get_str("setName").unwrap(), "secantus");
    let out = Hello::default().handle_reply(m.body()).unwrap();
    assert_eq!(out.get_str("msg").unwrap(), "isdbgrid");
    for gone in [
        "setName",
        "hosts",
        "me",
        "primary",
        "topologyVersion",
        "electionId",
        "lastWrite",
    ] {
        assert!(out.get(gone).unwrap().is_none(), "{gone}");
    }
    for kept in [
        "ismaster",
        "maxBsonObjectSize",
        "logicalSessionTimeoutMinutes",
        "maxWireVersion",
        "$clusterTime",
    ] {
        assert!(out.get(kept).unwrap().is_some(), "{kept}");
    }
    assert_round_trip(&bytes);
}

#[test]
fn legacy_handshake_frames() {
    let bytes = fixture("op_query_ismaster_node");
    let Message::Query(q) = wire::decode(&bytes).unwrap() else {
        panic!("expected OP_QUERY");
    };
    assert_eq!(q.namespace, "admin.$cmd");
    let command = q.command();
    assert!(Hello::is_hello(msg::first_key(command).unwrap()));
    assert!(Hello::parse(command)
        .compression
        .contains(&"zlib".to_string()));

    let reply = fixture("op_reply_ismaster_upstream");
    let Message::Reply(r) = wire::decode(&reply).unwrap() else {
        panic!("expected OP_REPLY");
    };
    assert_eq!(r.header.response_to, q.header.request_id);
    assert_eq!(r.documents.len(), 1);
    assert!(r.documents[0].get_bool("ismaster").unwrap());
}

#[test]
fn driver_compressed_requests_inflate_and_recompress() {
    for (name, want) in [
        ("op_compressed_zstd_find_pymongo", Compressor::Zstd),
        ("op_compressed_snappy_find_pymongo", Compressor::Snappy),
        ("op_compressed_zlib_find_pymongo", Compressor::Zlib),
        ("op_compressed_zlib_find_node", Compressor::Zlib),
    ] {
        let bytes = fixture(name);
        let (used, inner) = wire::inflate(Bytes::from(bytes.clone())).unwrap();
        assert_eq!(used, Some(want), "{name}");
        let m = op_msg(&inner);
        assert_eq!(m.command_name(), Some("find"), "{name}");
        assert_eq!(
            m.header.request_id,
            wire::Header::parse(&bytes).unwrap().request_id
        );
        let again = compressed::compress(&inner, want).unwrap();
        assert_eq!(compressed::decompress(&again).unwrap().1, inner.to_vec());
    }
    let reply = fixture("op_compressed_zstd_reply_proxy");
    let (used, inner) = wire::inflate(Bytes::from(reply)).unwrap();
    assert_eq!(used, Some(Compressor::Zstd));
    assert!(op_msg(&inner).body().get_document("cursor").is_ok());
}

#[test]
fn find_reply_holds_its_first_batch() {
    let bytes = fixture("op_msg_find_reply");
    let m = op_msg(&bytes);
    let cursor = m.body().get_document("cursor").unwrap();
    assert_eq!(
        cursor.get_array("firstBatch").unwrap().into_iter().count(),
        2
    );
    assert_round_trip(&bytes);
}

/// What the proxy does with untrusted bytes: inflate, decode, walk the body.
#[test]
fn every_truncation_and_corruption_is_handled_without_panic() {
    for (_name, bytes) in all_fixtures() {
        for cut in 0..bytes.len() {
            let mut b = bytes[..cut].to_vec();
            if b.len() >= 4 {
                let len = i32::try_from(b.len()).unwrap();
                b[..4].copy_from_slice(&len.to_le_bytes());
            }
            decode_everything(&b);
        }
        for at in 0..bytes.len() {
            for flip in [0xff, 0x80, 0x01] {
                let mut b = bytes.clone();
                b[at] ^= flip;
                decode_everything(&b);
            }
        }
        decode_everything(&bytes);
    }
}

/// Mutations of the captured frames, in the manner of a fuzzer (byte flips,
/// boundary values, inserted, deleted and spliced ranges, forged BSON and
/// section lengths), with the frame length mostly kept consistent so the
/// bytes reach the command parsers. The libFuzzer run (`scripts/fuzz`) goes
/// further; this one runs in every test run, in the test build.
#[test]
fn seeded_mutations_of_every_frame_never_panic() {
    const MUTANTS: usize = 200_000;
    const INTERESTING: [i32; 8] = [0, 1, -1, 4, 5, 16, i32::MAX, i32::MIN];
    let frames: Vec<Vec<u8>> = all_fixtures().into_iter().map(|(_, b)| b).collect();
    let mut rng = Rng(0x6c69_6b65_7769_7365);
    let mut decoded = 0usize;
    for _ in 0..MUTANTS {
        let mut b = frames[rng.below(frames.len())].clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(b.len());
            match rng.below(6) {
                0 => b[at] ^= 1 << rng.below(8),
                1 => b[at] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.below(5)],
                2 if at + 4 <= b.len() => {
                    let v = INTERESTING[rng.below(INTERESTING.len())];
                    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
                3 => {
                    let end = (at + 1 + rng.below(16)).min(b.len());
                    b.drain(at..end);
                }
                4 => {
                    let other = &frames[rng.below(frames.len())];
                    let from = rng.below(other.len());
                    let end = (from + 1 + rng.below(64)).min(other.len());
                    b.splice(at..at, other[from..end].iter().copied());
                }
                _ => {
                    let extra: Vec<u8> = (0..=rng.below(8)).map(|_| rng.next() as u8).collect();
                    b.splice(at..at, extra);
                }
            }
            if b.is_empty() {
                break;
            }
        }
        if b.len() >= 4 && rng.below(10) != 0 {
            let len = i32::try_from(b.len()).unwrap();
            b[..4].copy_from_slice(&len.to_le_bytes());
        }
        if wire::decode(&b).is_ok() {
            decoded += 1;
        }
        decode_everything(&b);
    }
    // The mutants reach past framing: a fair share still decode.
    assert!(
        decoded > MUTANTS / 20,
        "only {decoded} of {MUTANTS} mutants decoded"
    );
}

/// Deep and wide commands of every owned form, built well-formed (random
/// bytes rarely nest two hundred levels): each is refused by the depth gate
/// or walked by every parser and rewriter without a panic, the shallow
/// ones pass the gate, those far past mongod's 200 never do.
#[test]
fn deep_and_wide_commands_of_every_form_never_panic() {
    let depth_ok = |frame: &[u8]| match wire::decode(frame).unwrap() {
        Message::Msg(m) => m.check_depth(wire::MAX_BSON_DEPTH).is_ok(),
        other => panic!("expected OP_MSG, got {other:?}"),
    };
    let mut rng = Rng(0x7374_7275_6374_7572);
    for form in 0..structured::FORMS {
        let mut passed = Vec::new();
        for depth in [
            0usize, 1, 50, 150, 190, 195, 196, 197, 198, 199, 200, 201, 259,
        ] {
            for width in [0usize, 3, 1020] {
                let recipe: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
                let value = structured::nested(depth, width, &recipe);
                let frame = wire::msg::encode_body(1, 0, &structured::command(form, value));
                if width == 0 {
                    passed.push((depth, depth_ok(&frame)));
                }
                decode_everything(&frame);
            }
        }
        assert!(
            passed.first().unwrap().1,
            "form {form}: a shallow command was refused"
        );
        assert!(
            !passed.last().unwrap().1,
            "form {form}: 259 levels passed the gate"
        );
        // Once refused, deeper is refused too.
        let first_refused = passed.iter().position(|(_, ok)| !ok).unwrap();
        assert!(
            passed[first_refused..].iter().all(|(_, ok)| !ok),
            "form {form}: {passed:?}"
        );
        assert!(
            passed[first_refused].0 >= 190,
            "form {form}: refused at {passed:?}"
        );
    }
    for _ in 0..5_000 {
        let recipe: Vec<u8> = (0..64 + rng.below(512)).map(|_| rng.next() as u8).collect();
        decode_everything(&structured::frame(&recipe));
    }
}

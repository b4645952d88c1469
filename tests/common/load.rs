//! A mixed workload over many concurrent client connections, each a raw
//! wire connection of its own: reads by `_id` (60%), writes (20%: inserts
//! and updates of indexed vectors) and `$vectorSearch` (20%). Used by the
//! `load` bench (1,000 connections for 60 s, by hand) and a small version
//! in the test suite.

use bson::{rawdoc, RawArrayBuf, RawDocument, RawDocumentBuf};
use likewise::conn::Connection;
use likewise::wire::{msg, OpMsg};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

pub const DIMS: usize = 16;
pub const SEED_DOCS: i64 = 5_000;
const DB: &str = "load";
const COLL: &str = "docs";

/// Where the workload runs: through the proxy, or straight at the
/// upstream as the baseline, where each vector query becomes the fetch
/// the proxy would forward for it (`_id $in` five documents).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Proxy,
    Upstream,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Vector,
}

/// What one connection saw.
#[derive(Default)]
pub struct Tally {
    pub latencies: Vec<(Op, Duration)>,
    /// Replies with `ok: 0`, or vector queries without `limit` results.
    pub errors: Vec<String>,
    /// Frames that did not come back, or came back malformed.
    pub protocol_errors: Vec<String>,
}

pub struct Client {
    conn: Connection,
    id: i32,
}

impl Client {
    pub async fn connect(addr: &str) -> std::io::Result<Client> {
        Ok(Client {
            conn: Connection::new(TcpStream::connect(addr).await?),
            id: 0,
        })
    }

    /// Sends one command; the reply body, or what went wrong on the wire.
    pub async fn run(&mut self, body: &RawDocument) -> Result<RawDocumentBuf, String> {
        self.id += 1;
        self.conn
            .write_frame(&msg::encode_body(self.id, 0, body))
            .await
            .map_err(|e| format!("write: {e}"))?;
        let reply = self
            .conn
            .read_frame()
            .await
            .map_err(|e| format!("read: {e}"))?
            .ok_or("connection closed")?;
        let parsed = OpMsg::parse(&reply).map_err(|e| format!("reply: {e}"))?;
        if parsed.header.response_to != self.id {
            return Err(format!(
                "reply to {} for request {}",
                parsed.header.response_to, self.id
            ));
        }
        Ok(parsed.body().to_owned())
    }
}

/// A seeded pseudo-random vector of `DIMS` values in [0, 1).
pub fn vector(seed: i64) -> RawArrayBuf {
    vector_of(seed, DIMS)
}

/// A seeded pseudo-random vector of `dims` values in [0, 1).
pub fn vector_of(seed: i64, dims: usize) -> RawArrayBuf {
    let mut state = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = RawArrayBuf::new();
    for _ in 0..dims {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push((state >> 40) as f64 / (1u64 << 24) as f64);
    }
    out
}

fn ok(body: &RawDocument) -> bool {
    matches!(body.get("ok"), Ok(Some(v)) if v.as_f64() == Some(1.0) || v.as_i32() == Some(1))
}

/// Loads `SEED_DOCS` documents and a vector index through the proxy and
/// waits until the index is READY.
pub async fn prepare(addr: &str) {
    let mut c = Client::connect(addr).await.unwrap();
    c.run(&rawdoc! { "drop": COLL, "$db": DB }).await.unwrap();
    for start in (0..SEED_DOCS).step_by(1_000) {
        let mut docs = RawArrayBuf::new();
        for i in start..(start + 1_000).min(SEED_DOCS) {
            docs.push(rawdoc! { "_id": i, "v": vector(i), "n": 0 });
        }
        let reply = c
            .run(&rawdoc! { "insert": COLL, "documents": docs, "$db": DB })
            .await
            .unwrap();
        assert!(ok(&reply), "{reply:?}");
    }
    let reply = c
        .run(&rawdoc! {
            "createSearchIndexes": COLL,
            "indexes": [{ "name": "v", "type": "vectorSearch", "definition": {
                "fields": [{ "type": "vector", "path": "v", "numDimensions": DIMS as i32, "similarity": "euclidean" }]
            } }],
            "$db": DB,
        })
        .await
        .unwrap();
    assert!(ok(&reply), "{reply:?}");
    for _ in 0..6_000 {
        let reply = c
            .run(&rawdoc! {
                "aggregate": COLL,
                "pipeline": [{ "$listSearchIndexes": { "name": "v" } }],
                "cursor": {},
                "$db": DB,
            })
            .await
            .unwrap();
        let ready = reply
            .get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .ok()
            .and_then(|b| b.into_iter().next())
            .and_then(|d| {
                d.ok()?
                    .as_document()?
                    .get_str("status")
                    .ok()
                    .map(str::to_owned)
            });
        if ready.as_deref() == Some("READY") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the load index did not become READY");
}

/// One connection's loop until `until`: connection `who` of the workload.
pub async fn worker(addr: String, who: i64, until: Instant, target: Target) -> Tally {
    let mut tally = Tally::default();
    let mut client = match Client::connect(&addr).await {
        Ok(c) => c,
        Err(e) => {
            tally.protocol_errors.push(format!("connect: {e}"));
            return tally;
        }
    };
    // The handshake a driver makes on connecting, not timed as an operation.
    match client.run(&rawdoc! { "hello": 1, "$db": "admin" }).await {
        Ok(reply) if ok(&reply) => {}
        Ok(reply) => tally.errors.push(format!("hello: {reply:?}")),
        Err(e) => {
            tally.protocol_errors.push(format!("hello: {e}"));
            return tally;
        }
    }
    let mut state = (who as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut step = 0i64;
    // At least one operation each, however late a loaded machine let the
    // connection start.
    while step == 0 || Instant::now() < until {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        step += 1;
        let pick = state % 10;
        let key = (state >> 8) as i64 % SEED_DOCS;
        let (op, body) = match pick {
            0..=5 => (
                Op::Read,
                rawdoc! { "find": COLL, "filter": { "_id": key }, "limit": 1, "singleBatch": true, "$db": DB },
            ),
            6 => (
                Op::Write,
                rawdoc! {
                    "insert": COLL,
                    "documents": [{ "_id": 1_000_000 + who * 1_000_000 + step, "v": vector(key + step), "n": 0 }],
                    "$db": DB,
                },
            ),
            7 => (
                Op::Write,
                rawdoc! {
                    "update": COLL,
                    "updates": [{ "q": { "_id": key }, "u": { "$set": { "v": vector(key * 31 + step) }, "$inc": { "n": 1 } } }],
                    "$db": DB,
                },
            ),
            _ if target == Target::Upstream => {
                let ids: RawArrayBuf = (0..5).map(|i| (key + i * 997) % SEED_DOCS).collect();
                (
                    Op::Vector,
                    rawdoc! { "find": COLL, "filter": { "_id": { "$in": ids } }, "batchSize": 6, "$db": DB },
                )
            }
            _ => (
                Op::Vector,
                rawdoc! {
                    "aggregate": COLL,
                    "pipeline": [{ "$vectorSearch": {
                        "index": "v", "path": "v", "queryVector": vector(key), "numCandidates": 50, "limit": 5,
                    } }],
                    "cursor": {},
                    "$db": DB,
                },
            ),
        };
        let started = Instant::now();
        match client.run(&body).await {
            Ok(reply) => {
                tally.latencies.push((op, started.elapsed()));
                if !ok(&reply) {
                    tally.errors.push(format!("{op:?}: {reply:?}"));
                } else if op == Op::Vector {
                    match drain(&mut client, &reply).await {
                        Ok(5) => {}
                        Ok(found) => tally.errors.push(format!("vector query returned {found}")),
                        Err(e) => {
                            tally.protocol_errors.push(e);
                            return tally;
                        }
                    }
                }
            }
            Err(e) => {
                tally.protocol_errors.push(e);
                return tally;
            }
        }
    }
    tally
}

/// How many documents a cursor reply and its `getMore`s hold: a server
/// may answer in several batches, whatever the batch size asked for.
async fn drain(client: &mut Client, reply: &RawDocument) -> Result<usize, String> {
    let mut cursor = reply
        .get_document("cursor")
        .map_err(|e| e.to_string())?
        .to_owned();
    let mut found = 0;
    loop {
        let batch = cursor
            .get_array("firstBatch")
            .or_else(|_| cursor.get_array("nextBatch"))
            .map_err(|e| e.to_string())?;
        found += batch.into_iter().count();
        let id = cursor.get_i64("id").map_err(|e| e.to_string())?;
        if id == 0 {
            return Ok(found);
        }
        let more = client
            .run(&rawdoc! { "getMore": id, "collection": COLL, "$db": DB })
            .await?;
        if !ok(&more) {
            return Err(format!("getMore: {more:?}"));
        }
        cursor = more
            .get_document("cursor")
            .map_err(|e| e.to_string())?
            .to_owned();
    }
}

/// Runs `connections` workers for `duration`; their tallies.
pub async fn run(addr: &str, connections: usize, duration: Duration, target: Target) -> Vec<Tally> {
    let until = Instant::now() + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|who| tokio::spawn(worker(addr.to_string(), who as i64, until, target)))
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// The `q` quantile of latencies of `op`, in milliseconds.
pub fn quantile(tallies: &[Tally], op: Op, q: f64) -> f64 {
    let mut all: Vec<Duration> = tallies
        .iter()
        .flat_map(|t| {
            t.latencies
                .iter()
                .filter(|(o, _)| *o == op)
                .map(|(_, d)| *d)
        })
        .collect();
    if all.is_empty() {
        return f64::NAN;
    }
    all.sort();
    let at = ((all.len() as f64 * q) as usize).min(all.len() - 1);
    all[at].as_secs_f64() * 1000.0
}

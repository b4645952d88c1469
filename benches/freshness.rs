//! What keeping indexes current costs: writes/s through the proxy to a
//! collection with a vector index vs one without (same run, interleaved
//! rounds), and the cost per insert of maintaining a neighbourhood.
//!
//!     scripts/setup && cargo bench --bench freshness
//!     LIKEWISE_BENCH_SECS=5 cargo bench --bench freshness

#[path = "../tests/common/mod.rs"]
mod common;

use bson::{rawdoc, RawArrayBuf, RawDocument, RawDocumentBuf};
use likewise::conn::Connection;
use likewise::wire::{msg, OpMsg};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const DIMS: usize = 128;
const SEED_DOCS: i64 = 5_000;
const ROUNDS: usize = 3;
const DEFAULT_SECS: f64 = 2.0;
const NEIGHBOURHOOD_N: i32 = 10;
const NEIGHBOURHOOD_INSERTS: i64 = 200;
const NEIGHBOURHOOD_DOCS: i64 = 2_000;

struct Client {
    conn: Connection,
    id: i32,
}

impl Client {
    async fn connect(addr: &str) -> Client {
        Client {
            conn: Connection::new(TcpStream::connect(addr).await.unwrap()),
            id: 0,
        }
    }

    async fn run(&mut self, body: &RawDocument) -> RawDocumentBuf {
        self.id += 1;
        self.conn
            .write_frame(&msg::encode_body(self.id, 0, body))
            .await
            .unwrap();
        let reply = self.conn.read_frame().await.unwrap().unwrap();
        let body = OpMsg::parse(&reply).unwrap().body().to_owned();
        assert_eq!(body.get_f64("ok").ok(), Some(1.0), "{body:?}");
        body
    }
}

fn vector(seed: i64) -> RawArrayBuf {
    common::load::vector_of(seed, DIMS)
}

async fn wait_until(client: &mut Client, check: impl Fn(&RawDocument) -> bool, body: &RawDocument) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let reply = client.run(body).await;
        if check(&reply) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn first_batch_field<'a>(reply: &'a RawDocument, field: &str) -> Option<&'a str> {
    reply
        .get_document("cursor")
        .ok()?
        .get_array("firstBatch")
        .ok()?
        .into_iter()
        .next()?
        .ok()?
        .as_document()?
        .get_str(field)
        .ok()
}

/// Inserts (fresh `_id`s) then vector updates for `secs`; returns ops/s of each.
async fn writes(client: &mut Client, collection: &str, secs: f64, next_id: &mut i64) -> (f64, f64) {
    let mut rates = [0.0; 2];
    for (phase, rate) in rates.iter_mut().enumerate() {
        let start = Instant::now();
        let mut ops = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            *next_id += 1;
            let body = if phase == 0 {
                rawdoc! { "insert": collection, "documents": [{ "_id": *next_id, "v": vector(*next_id) }], "$db": "bench" }
            } else {
                let target = *next_id % SEED_DOCS;
                rawdoc! { "update": collection, "updates": [{ "q": { "_id": target }, "u": { "$set": { "v": vector(*next_id) } } }], "$db": "bench" }
            };
            client.run(&body).await;
            ops += 1;
        }
        *rate = ops as f64 / start.elapsed().as_secs_f64();
    }
    (rates[0], rates[1])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let secs: f64 = std::env::var("LIKEWISE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECS);
    let upstream = common::Upstream::start_with(&["--cache-size", "4G"]);
    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let proxy = proxy_rt.block_on(common::Proxy::start(&upstream.uri()));
    let addr = proxy.addr.to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = Client::connect(&addr).await;
        for collection in ["plain", "indexed"] {
            for chunk in 0..(SEED_DOCS / 1000) {
                let mut docs = RawArrayBuf::new();
                for i in chunk * 1000..(chunk + 1) * 1000 {
                    docs.push(rawdoc! { "_id": i, "v": vector(i) });
                }
                c.run(&rawdoc! { "insert": collection, "documents": docs, "$db": "bench" }).await;
            }
        }
        c.run(&rawdoc! {
            "createSearchIndexes": "indexed",
            "indexes": [{ "name": "v", "type": "vectorSearch", "definition": { "fields": [
                { "type": "vector", "path": "v", "numDimensions": DIMS as i32, "similarity": "euclidean" } ] } }],
            "$db": "bench",
        })
        .await;
        let list = rawdoc! { "aggregate": "indexed", "pipeline": [{ "$listSearchIndexes": {} }], "cursor": {}, "$db": "bench" };
        wait_until(&mut c, |r| first_batch_field(r, "status") == Some("READY"), &list).await;

        println!("likewise freshness benchmark: {DIMS}-d vectors, {SEED_DOCS} documents per collection, one client, {ROUNDS} interleaved rounds of {secs} s, median");
        println!();
        let mut next_id = 1_000_000;
        let (mut plain_ins, mut plain_upd, mut idx_ins, mut idx_upd) = (vec![], vec![], vec![], vec![]);
        for round in 0..ROUNDS {
            for k in 0..2 {
                let indexed = (k + round) % 2 == 1;
                let (ins, upd) = writes(&mut c, if indexed { "indexed" } else { "plain" }, secs, &mut next_id).await;
                if indexed {
                    idx_ins.push(ins);
                    idx_upd.push(upd);
                } else {
                    plain_ins.push(ins);
                    plain_upd.push(upd);
                }
            }
        }
        let (pi, pu, ii, iu) = (median(plain_ins), median(plain_upd), median(idx_ins), median(idx_upd));
        println!("| write | without index (ops/s) | with index (ops/s) | ratio |");
        println!("|---|---:|---:|---:|");
        println!("| insert one {DIMS}-d document | {pi:.0} | {ii:.0} | {:.2} |", ii / pi);
        println!("| update one vector by _id | {pu:.0} | {iu:.0} | {:.2} |", iu / pu);

        // Neighbourhood maintenance on a collection of its own: inserts, then
        // the time until every list is fresh again.
        for chunk in 0..(NEIGHBOURHOOD_DOCS / 1000) {
            let mut docs = RawArrayBuf::new();
            for i in chunk * 1000..(chunk + 1) * 1000 {
                docs.push(rawdoc! { "_id": i, "v": vector(i + 7) });
            }
            c.run(&rawdoc! { "insert": "hood", "documents": docs, "$db": "bench" }).await;
        }
        c.run(&rawdoc! {
            "createSearchIndexes": "hood",
            "indexes": [{ "name": "h", "type": "vectorSearch", "definition": { "fields": [
                { "type": "vector", "path": "v", "numDimensions": DIMS as i32, "similarity": "euclidean" } ] } }],
            "$db": "bench",
        })
        .await;
        let list = rawdoc! { "aggregate": "hood", "pipeline": [{ "$listSearchIndexes": {} }], "cursor": {}, "$db": "bench" };
        wait_until(&mut c, |r| first_batch_field(r, "status") == Some("READY"), &list).await;
        c.run(&rawdoc! { "createNeighbourhood": "hood", "name": "nb", "semantic_index": "h", "n": NEIGHBOURHOOD_N, "$db": "bench" }).await;
        let hoods = rawdoc! { "listNeighbourhoods": "hood", "$db": "bench" };
        let settled = |r: &RawDocument| {
            let doc = r.get_document("cursor").ok().and_then(|c| c.get_array("firstBatch").ok()).and_then(|b| b.into_iter().next()).and_then(|d| d.ok()).and_then(|d| d.as_document());
            doc.is_some_and(|d| d.get_str("status") == Ok("READY") && d.get_i64("stale") == Ok(0))
        };
        let backfill = Instant::now();
        wait_until(&mut c, settled, &hoods).await;
        let backfill = backfill.elapsed();
        let start = Instant::now();
        for i in 0..NEIGHBOURHOOD_INSERTS {
            c.run(&rawdoc! { "insert": "hood", "documents": [{ "_id": 1_000_000 + i, "v": vector(5_000_000 + i) }], "$db": "bench" }).await;
        }
        let inserted = start.elapsed();
        wait_until(&mut c, settled, &hoods).await;
        let total = start.elapsed();
        println!();
        println!("neighbourhood (n = {NEIGHBOURHOOD_N}) over {NEIGHBOURHOOD_DOCS} documents: backfill and first check {:.1} s; {NEIGHBOURHOOD_INSERTS} inserts took {:.0} ms, all lists fresh {:.0} ms after the first insert: {:.1} ms per insert, of which {:.1} ms is the insert itself",
            backfill.as_secs_f64(), inserted.as_secs_f64() * 1e3, total.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3 / NEIGHBOURHOOD_INSERTS as f64, inserted.as_secs_f64() * 1e3 / NEIGHBOURHOOD_INSERTS as f64);
    });
    drop(proxy);
}

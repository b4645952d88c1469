//! Follows a collection's change stream so writes that bypass this proxy
//! (other applications, other likewise instances) reach its indexes.
//!
//! The stream is opened before the build scan starts, so every change made
//! during or after the scan is applied once the scan is done; applying a
//! change is idempotent (documents come as `fullDocument: "updateLookup"`,
//! their current state), so overlap with the scan or with write-through
//! does no harm. The last resume token is kept on the index for snapshots.

use crate::config::Config;
use crate::error::{Code, Error};
use crate::maintain::fresh::{self, IdSet};
use crate::registry::{id_key, later, SearchIndex};
use crate::upstream::driver_error;
use bson::{RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use futures_util::FutureExt;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::FullDocumentType;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long each `getMore` waits for new changes.
const AWAIT: Duration = Duration::from_millis(500);

/// Longest one `getMore` may take beyond its await before the stream is
/// taken as stalled (a half-open connection, a server that stopped
/// answering) and reopened: the driver has no socket timeout.
pub const STALL: Duration = Duration::from_secs(10);

/// Most events gathered into one [`Changes`] before it is applied.
const MAX_EVENTS: usize = 10_000;

/// A collection's change stream, on the driver (which resumes it itself
/// after a resumable error, on whichever server is primary then).
pub struct ChangeStream {
    inner: mongodb::change_stream::ChangeStream<RawDocumentBuf>,
}

/// What a batch of change events means for an index: the last state of
/// each document it names, in the order the events came.
#[derive(Default)]
pub struct Changes {
    slot: HashMap<Vec<u8>, usize>,
    /// Each document's id, last state and the `clusterTime` of the event
    /// that gave it.
    last: Vec<(RawBson, Option<RawDocumentBuf>, Option<bson::Timestamp>)>,
    /// The collection was dropped, renamed or the stream invalidated.
    pub invalidated: bool,
    /// The collection (or its database) was dropped.
    pub dropped: bool,
    /// Events read into this batch.
    events: usize,
    /// The `clusterTime` of the last event read, when it had one.
    cluster_time: Option<bson::Timestamp>,
}

impl Changes {
    fn set(
        &mut self,
        id: RawBsonRef<'_>,
        doc: Option<RawDocumentBuf>,
        at: Option<bson::Timestamp>,
    ) {
        let key = id_key(id);
        match self.slot.get(&key) {
            Some(&i) => {
                self.last[i].1 = doc;
                self.last[i].2 = at;
            }
            None => {
                self.slot.insert(key, self.last.len());
                self.last.push((id.to_raw_bson(), doc, at));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether these changes bring the stream past `present`: a batch
    /// whose last event happened after it (events come in oplog order, so
    /// every event up to `present` has then been read), or a batch with
    /// no events (the stream had nothing newer when it answered) whose
    /// resume `token` is not before `present`. A `mongos` can answer an
    /// empty batch while a shard lags, so an empty batch alone counts only
    /// where `present` or the token's time is unknown.
    pub fn reach(&self, present: Option<bson::Timestamp>, token: Option<&RawDocument>) -> bool {
        if self.events == 0 {
            return match (present, token.and_then(token_time)) {
                (Some(p), Some(t)) => !later(p, t),
                _ => true,
            };
        }
        match (self.cluster_time, present) {
            (Some(t), Some(p)) => later(t, p),
            _ => false,
        }
    }
}

/// The cluster time a resume token stands at, in mongod's format (since
/// 4.2: `_data` is a hex KeyString that opens with a timestamp, type byte
/// `0x82` then the time and increment as big-endian 32-bit numbers);
/// `None` for a token in another format.
pub fn token_time(token: &RawDocument) -> Option<bson::Timestamp> {
    let data = token.get_str("_data").ok()?;
    let hex = data.strip_prefix("82")?.get(..16)?;
    let bits = u64::from_str_radix(hex, 16).ok()?;
    Some(bson::Timestamp {
        time: (bits >> 32) as u32,
        increment: bits as u32,
    })
}

/// The upstream's present: the `operationTime` of a `ping` (MongoDB
/// returns it from every command on a replica set or sharded cluster), or
/// `None` where the deployment has none.
pub async fn present(config: &Config) -> Option<bson::Timestamp> {
    let client = config.deployment.stream_client(config).await.ok()?;
    let mut session = client.start_session().await.ok()?;
    let admin = client.database("admin");
    let ping = admin
        .run_command(bson::doc! { "ping": 1 })
        .session(&mut session);
    tokio::time::timeout(STALL, ping).await.ok()?.ok()?;
    session.operation_time()
}

impl ChangeStream {
    /// Opens the stream (`fullDocument: "updateLookup"`), after `resume`
    /// when given. Returns it with the token of its starting point.
    pub async fn open(
        config: &Config,
        index: &SearchIndex,
        resume: Option<RawDocumentBuf>,
    ) -> Result<(ChangeStream, Option<RawDocumentBuf>), Error> {
        let client = config.deployment.stream_client(config).await?;
        let collection = client
            .database(&index.db)
            .collection::<RawDocumentBuf>(&index.collection);
        let mut watch = collection
            .watch()
            .full_document(FullDocumentType::UpdateLookup)
            .max_await_time(AWAIT);
        if let Some(token) = resume {
            let token: ResumeToken = bson::from_slice(token.as_bytes()).map_err(|e| {
                Error::internal(format!("likewise: stored resume token unreadable: {e}"))
            })?;
            watch = watch.resume_after(token);
        }
        let opened = tokio::time::timeout(STALL, watch)
            .await
            .map_err(|_| stalled())?
            .map_err(driver_error)?
            .with_type::<RawDocumentBuf>();
        let stream = ChangeStream { inner: opened };
        let token = stream.token();
        Ok((stream, token))
    }

    /// The token to resume after everything returned so far.
    fn token(&self) -> Option<RawDocumentBuf> {
        self.inner
            .resume_token()
            .and_then(|t| bson::to_raw_document_buf(&t).ok())
    }

    /// Waits briefly for changes; returns them with the new resume token.
    /// A `getMore` that takes [`STALL`] past its await is an error
    /// (`NetworkTimeout`): the caller reopens the stream.
    pub async fn next(&mut self) -> Result<(Changes, Option<RawDocumentBuf>), Error> {
        let mut changes = Changes::default();
        if !self.inner.is_alive() {
            changes.invalidated = true;
            return Ok((changes, None));
        }
        // The first event is waited for (one request, up to its await);
        // then every event the driver already holds is taken without
        // another request (a reply carries all the events the server had),
        // so an insert and the delete that follows it collapse into the
        // document's final state, as they must: an insert event carries the
        // document as inserted, whatever happened to it since. Polling
        // once is safe: a request it starts stays with the cursor and the
        // next call continues it.
        let first = tokio::time::timeout(AWAIT + STALL, self.inner.next_if_any())
            .await
            .map_err(|_| stalled())?
            .map_err(driver_error)?;
        if let Some(event) = first {
            read_event(&event, &mut changes);
        }
        while changes.events > 0 && changes.events < MAX_EVENTS && !changes.invalidated {
            match self.inner.next_if_any().now_or_never() {
                Some(Ok(Some(event))) => read_event(&event, &mut changes),
                Some(Err(e)) => return Err(driver_error(e)),
                Some(Ok(None)) | None => break,
            }
        }
        changes.invalidated |= !self.inner.is_alive();
        Ok((changes, self.token()))
    }
}

fn stalled() -> Error {
    Error::upstream(
        Code::NETWORK_TIMEOUT,
        format!(
            "likewise: the change stream did not answer within {} ms",
            (AWAIT + STALL).as_millis()
        ),
    )
}

fn read_event(event: &RawDocument, changes: &mut Changes) {
    changes.events += 1;
    let at = event.get_timestamp("clusterTime").ok();
    if at.is_some() {
        changes.cluster_time = at;
    }
    let id = event
        .get_document("documentKey")
        .ok()
        .and_then(|k| k.get("_id").ok().flatten());
    match (event.get_str("operationType").unwrap_or(""), id) {
        ("insert" | "update" | "replace", Some(id)) => {
            let doc = match event.get("fullDocument") {
                Ok(Some(RawBsonRef::Document(doc))) => Some(doc.to_owned()),
                _ => None, // deleted before the lookup: a later event says so
            };
            changes.set(id, doc, at);
        }
        ("delete", Some(id)) => changes.set(id, None, at),
        ("drop" | "dropDatabase", _) => {
            changes.dropped = true;
            changes.invalidated = true;
        }
        ("rename" | "invalidate", _) => changes.invalidated = true,
        _ => {}
    }
}

/// Applies a batch of changes to one index (CPU work: a blocking thread),
/// but none that a write through this proxy has since replaced
/// ([`SearchIndex::written_since`]: the proxy applied a newer state, and
/// the event, an insert's document say, is older); then forgets the
/// writes the stream has passed; notes what it applied for the writes
/// through the proxy in flight ([`SearchIndex::note_streamed`]). The
/// batch's documents are read (and
/// encoded, the slow part) before the index's `apply_lock` is taken, so a
/// write through the proxy waits only for the batch to be applied.
pub fn apply(index: &Arc<SearchIndex>, changes: &Changes) {
    let documents: Vec<&RawDocumentBuf> = changes
        .last
        .iter()
        .filter_map(|(_, doc, _)| doc.as_ref())
        .collect();
    let prepared = super::apply::prepare(index, &documents, false);
    let _applying = index.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
    let current = |(id, _, at): &&(RawBson, Option<RawDocumentBuf>, Option<bson::Timestamp>)| {
        !at.is_some_and(|at| index.written_since(&id_key(id.as_raw_bson_ref()), at))
    };
    let kept: Vec<_> = changes.last.iter().filter(current).collect();
    let mut gone = IdSet::default();
    let mut found = IdSet::default();
    for (id, doc, _) in &kept {
        match doc {
            Some(_) => found.add(id.as_raw_bson_ref()),
            None => gone.add(id.as_raw_bson_ref()),
        }
    }
    fresh::apply_prepared(index, prepared, |id| found.contains(id), &gone, &found);
    // For writes through the proxy in flight: their re-read states may be
    // older than these events.
    index.note_streamed(
        kept.iter()
            .filter_map(|(id, _, at)| Some((id_key(id.as_raw_bson_ref()), (*at)?))),
    );
    if let Some(at) = changes.cluster_time {
        index.forget_written_through(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{rawdoc, RawDocument, Timestamp};

    fn at(time: u32, increment: u32) -> Timestamp {
        Timestamp { time, increment }
    }

    /// A batch of one event: `doc` inserted at `time`.
    fn inserted_at(doc: &RawDocument, time: Timestamp) -> Changes {
        let mut changes = Changes::default();
        let id = doc.get("_id").unwrap().unwrap().to_raw_bson();
        read_event(
            &rawdoc! { "operationType": "insert", "clusterTime": time,
            "documentKey": { "_id": id }, "fullDocument": doc.to_owned() },
            &mut changes,
        );
        changes
    }

    /// An index of 2-dimensional stored vectors at `v`, following a
    /// change stream (without one nothing is noted).
    fn followed_vector_index() -> Arc<SearchIndex> {
        use crate::index::hnsw::HnswParams;
        use crate::index::Similarity;
        use crate::registry::IndexSpec;
        let spec = IndexSpec::vector("v".into(), 2, Similarity::Euclidean, HnswParams::default());
        let index = Arc::new(SearchIndex::new(
            "id".into(),
            "db",
            "c",
            "idx",
            rawdoc! {},
            spec,
        ));
        index.set_resume_token(Some(rawdoc! { "_data": "00" }));
        index
    }

    /// The race a CI run met: the proxy deletes a document it inserted,
    /// then the stream's insert event for it arrives. It must not bring the
    /// document back; an event after the delete still applies.
    #[test]
    fn an_event_older_than_a_write_through_the_proxy_is_not_applied() {
        let index = followed_vector_index();
        let doc = rawdoc! { "_id": "new", "v": [1.0, 2.0] };
        let holds = |index: &SearchIndex| index.live_ids().contains(RawBsonRef::String("new"));
        // Inserted (at 10) and deleted (at 11) through the proxy.
        let mut gone = IdSet::default();
        fresh::apply(
            std::slice::from_ref(&index),
            &[&doc],
            &IdSet::default(),
            Some(at(10, 1)),
        );
        assert!(holds(&index));
        gone.add(RawBsonRef::String("new"));
        fresh::apply(
            std::slice::from_ref(&index),
            &[] as &[&RawDocument],
            &gone,
            Some(at(11, 1)),
        );
        assert!(!holds(&index));
        // The insert's event comes late, alone in its batch.
        let late = inserted_at(&doc, at(10, 1));
        apply(&index, &late);
        assert!(
            !holds(&index),
            "the late insert brought the deleted document back"
        );
        // Passed, the writes are forgotten: a later insert of the same
        // `_id` by another client applies.
        let again = inserted_at(&doc, at(12, 1));
        apply(&index, &again);
        assert!(holds(&index));
        // Two writes through the proxy applied out of order (connections
        // race to the index): a re-insert at 14 applied before a delete at
        // 13; the newer state stands.
        fresh::apply(
            std::slice::from_ref(&index),
            &[&doc],
            &IdSet::default(),
            Some(at(14, 1)),
        );
        fresh::apply(
            std::slice::from_ref(&index),
            &[] as &[&RawDocument],
            &gone,
            Some(at(13, 1)),
        );
        assert!(holds(&index), "an older write undid a newer one");
    }

    #[test]
    fn a_mongod_resume_token_tells_its_time() {
        // mongod 4.2+'s shape: 0x82, the timestamp, then the rest.
        let token = rawdoc! { "_data": "8263A1B2C3000000072B022C0100296E5A1004" };
        assert_eq!(token_time(&token), Some(at(0x63A1_B2C3, 7)));
        // Other servers' tokens say nothing.
        assert_eq!(token_time(&rawdoc! { "_data": "3b0000001073000300" }), None);
        assert_eq!(token_time(&rawdoc! { "_data": "82ab" }), None);
        assert_eq!(token_time(&rawdoc! {}), None);
    }

    #[test]
    fn a_stream_reaches_the_present_past_it_or_empty_at_it() {
        let present = Some(at(100, 5));
        let events = |last: Timestamp| Changes {
            events: 3,
            cluster_time: Some(last),
            ..Changes::default()
        };
        assert!(!events(at(100, 5)).reach(present, None));
        assert!(events(at(100, 6)).reach(present, None));
        assert!(!events(at(101, 0)).reach(None, None));
        let empty = Changes::default();
        let token = |t: &str| rawdoc! { "_data": t };
        // An empty batch whose token lags the present (a shard behind a
        // mongos) has not caught up; at or past it, it has.
        assert!(!empty.reach(present, Some(&token("820000006400000004"))));
        assert!(empty.reach(present, Some(&token("820000006400000005"))));
        // Where a time is unknown, an empty batch is all there is.
        assert!(empty.reach(present, Some(&token("3b00"))));
        assert!(empty.reach(None, None));
    }

    /// A write through the proxy reads its documents back after writing
    /// them; an outside write can land in between, and its event be
    /// applied before the proxy applies what it read. That older state
    /// must not replace the event's. With no write in flight, the
    /// stream's notes are dropped.
    #[test]
    fn a_write_in_flight_never_undoes_a_newer_event_the_stream_applied() {
        let index = followed_vector_index();
        let d = || RawBsonRef::String("d");
        let in_flight = index.write_in_flight();
        // The outside write (at 11), applied by the stream.
        apply(
            &index,
            &inserted_at(&rawdoc! { "_id": "d", "v": [5.0, 6.0] }, at(11, 1)),
        );
        // The write through the proxy (at 10) applies what it read back
        // before the outside write.
        let read_back = rawdoc! { "_id": "d", "v": [1.0, 2.0] };
        fresh::apply(
            std::slice::from_ref(&index),
            &[&read_back],
            &IdSet::default(),
            Some(at(10, 1)),
        );
        assert_eq!(index.stored_vector(d()), Some(vec![5.0, 6.0]));
        drop(in_flight);
        assert!(index.streamed_after(&id_key(d()), at(10, 1)));
        apply(
            &index,
            &inserted_at(&rawdoc! { "_id": "e", "v": [0.0, 0.0] }, at(12, 1)),
        );
        assert!(!index.streamed_after(&id_key(d()), at(10, 1)));
    }

    /// An embeddings endpoint on 127.0.0.1, OpenAI's shape (a test double
    /// for an `http` model's service, which cannot run here): it embeds
    /// each input `s` as `[len(s), 1]`, and holds a request with the input
    /// "slow" (saying so on `held`) until `release` gets a message.
    fn embeddings_endpoint(
        held: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
    ) -> u16 {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let release = Arc::new(std::sync::Mutex::new(release));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (held, release) = (held.clone(), release.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut writer = stream;
                    loop {
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let line = line.trim_end().to_ascii_lowercase();
                            if line.is_empty() {
                                break;
                            }
                            if let Some(n) = line.strip_prefix("content-length:") {
                                length = n.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let inputs: Vec<String> = request["input"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_str().unwrap().to_string())
                            .collect();
                        if inputs.iter().any(|s| s == "slow") {
                            held.send(()).unwrap();
                            let _ = release.lock().unwrap().recv_timeout(LOST);
                        }
                        let data: Vec<_> = inputs
                            .iter()
                            .enumerate()
                            .map(|(i, s)| serde_json::json!({"index": i, "embedding": [s.len() as f32, 1.0]}))
                            .collect();
                        let answer = serde_json::json!({ "data": data }).to_string();
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                            answer.len()
                        );
                        if writer.write_all(head.as_bytes()).is_err()
                            || writer.write_all(answer.as_bytes()).is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    /// How long a test waits for what must happen before calling it lost.
    const LOST: std::time::Duration = std::time::Duration::from_secs(60);

    /// An index of `text` by an `http` model on `port`, following a
    /// change stream.
    fn encoded_index(port: u16) -> Arc<SearchIndex> {
        use crate::index::hnsw::HnswParams;
        use crate::index::Similarity;
        use crate::registry::IndexSpec;
        let def = crate::models::ModelDef::parse(
            &rawdoc! { "createModel": "slowly", "kind": "http",
            "url": format!("http://127.0.0.1:{port}/v1/embeddings"), "model": "m",
            "dimensions": 2 },
            "createModel",
        )
        .unwrap();
        let access = crate::config::ModelAccess {
            hosts: vec!["127.0.0.1".into()],
            dirs: Vec::new(),
        };
        let model = crate::models::Models::default()
            .load(def, std::path::Path::new("/nonexistent"), &access)
            .unwrap();
        let spec = IndexSpec::vector(
            "text".into(),
            2,
            Similarity::Euclidean,
            HnswParams::default(),
        );
        let index = Arc::new(
            SearchIndex::new("id".into(), "db", "c", "idx", rawdoc! {}, spec)
                .with_encoders(vec![Arc::new(model)]),
        );
        index.set_resume_token(Some(rawdoc! { "_data": "00" }));
        index
    }

    /// A document read while the index held its content (so its vector
    /// is kept, not encoded again) is encoded after all when another write
    /// changed that content before it is applied: the index ends with the
    /// document's own vector.
    #[test]
    fn a_kept_vector_is_encoded_again_when_a_write_changed_it_meanwhile() {
        use crate::maintain::apply::{add_documents, prepare};
        let (held, _holding) = std::sync::mpsc::channel();
        let (_release, released) = std::sync::mpsc::channel();
        let index = encoded_index(embeddings_endpoint(held, released));
        let id = || [RawBsonRef::String("d")];
        let first = rawdoc! { "_id": "d", "text": "aa" };
        add_documents(&index, &[&first], false);
        let content = index.contents(id());
        let prepared = prepare(&index, std::slice::from_ref(&first), false);
        add_documents(&index, &[rawdoc! { "_id": "d", "text": "bbbb" }], false);
        assert_ne!(index.contents(id()), content, "the other write applied");
        prepared.commit(&index, |_| true);
        assert_eq!(index.contents(id()), content);
    }

    /// Documents encoded before training installed an adapter (adapting
    /// stored vectors too) are encoded again when applied: the index holds
    /// adapted vectors only.
    #[test]
    fn documents_encoded_before_an_adapter_came_are_encoded_again() {
        use crate::maintain::apply::prepare;
        let (held, _holding) = std::sync::mpsc::channel();
        let (_release, released) = std::sync::mpsc::channel();
        let index = encoded_index(embeddings_endpoint(held, released));
        let doc = rawdoc! { "_id": "d", "text": "aaa" };
        let prepared = prepare(&index, std::slice::from_ref(&doc), false);
        // It swaps the two dimensions.
        let adapter = crate::train::Adapter {
            dims: 2,
            w: vec![0.0, 1.0, 1.0, 0.0],
            both: true,
        };
        let adapted = adapter.apply(&[3.0, 1.0]);
        index.set_adapter(Some(Arc::new(adapter)));
        prepared.commit(&index, |_| true);
        assert_eq!(index.stored_vector(RawBsonRef::String("d")), Some(adapted));
    }

    /// A change stream's batch whose model is slow to encode it must not
    /// hold up a write through the proxy to the same index: the batch is
    /// encoded before the index's apply lock is taken.
    #[test]
    fn a_write_through_the_proxy_does_not_wait_for_a_batch_to_encode() {
        use std::sync::mpsc;
        let (held, holding) = mpsc::channel();
        let (release, released) = mpsc::channel();
        let index = encoded_index(embeddings_endpoint(held, released));
        // The stream's batch: its one document's encoding is held.
        let streaming = {
            let index = index.clone();
            let batch = inserted_at(&rawdoc! { "_id": "s", "text": "slow" }, at(10, 1));
            std::thread::spawn(move || apply(&index, &batch))
        };
        holding
            .recv_timeout(LOST)
            .expect("the batch is being encoded");
        // A write through the proxy meanwhile.
        let (wrote, written) = mpsc::channel();
        {
            let index = index.clone();
            std::thread::spawn(move || {
                let doc = rawdoc! { "_id": "w", "text": "quick" };
                fresh::apply(&[index], &[&doc], &IdSet::default(), Some(at(11, 1)));
                wrote.send(()).unwrap();
            });
        }
        let waited = written.recv_timeout(LOST);
        let stream_done = streaming.is_finished();
        release.send(()).unwrap();
        streaming.join().unwrap();
        assert!(waited.is_ok(), "the write waited for the batch's encoding");
        assert!(!stream_done, "the batch was held until now");
        let ids = index.live_ids();
        assert!(ids.contains(RawBsonRef::String("w")) && ids.contains(RawBsonRef::String("s")));
    }
}

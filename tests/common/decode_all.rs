//! Everything the proxy does with the bytes of one client frame: framing,
//! inflating OP_COMPRESSED, decoding by opcode, walking the command body,
//! classifying the command and running the parser of every command the proxy
//! owns (handshake, search-index admin, semantic indexes, models,
//! `$vectorSearch`, `$like`, `$search`, `search` definitions), the rewriters of vector commands, the
//! write-command readers of write-through, what a secondary read needs
//! rights on and a read's session fields. Shared by the libFuzzer target
//! (`fuzz/fuzz_targets/decode.rs`) and the seeded-mutation test in
//! `tests/codec_fixtures.rs`, so both exercise the same paths.

use bson::RawDocument;
use likewise::command::{search_index, vector_query, Command, Hello};
use likewise::wire::{self, Message};

/// Decodes `data` as a client would send it and parses every command the
/// proxy owns out of it, ignoring every error; only a panic (or an abort)
/// is a failure.
pub fn decode_everything(data: &[u8]) {
    let Ok(Some(len)) = wire::frame_len(data) else {
        return;
    };
    let Ok((_, message)) = wire::inflate(bytes::Bytes::copy_from_slice(&data[..len])) else {
        return;
    };
    // As the proxy does: nothing walks a command nested deeper than mongod
    // allows.
    match wire::decode(&message) {
        Ok(Message::Msg(m)) if m.check_depth(wire::MAX_BSON_DEPTH).is_ok() => {
            for element in m.body() {
                let _ = element;
            }
            parse_everything(m.body());
            read_write(&m);
        }
        Ok(Message::Query(q)) if wire::check_depth(q.command(), wire::MAX_BSON_DEPTH).is_ok() => {
            parse_everything(q.command())
        }
        _ => {}
    }
}

/// The write-command readers write-through uses (the filters a write
/// matches by, the documents it inserts, the ids a reply names; the body
/// itself standing in for a reply).
fn read_write(m: &wire::OpMsg<'_>) {
    use likewise::maintain::fresh;
    let Some(kind) = m.command_name().and_then(fresh::WriteKind::of) else {
        return;
    };
    for filter in fresh::filters(kind, m) {
        let _ = fresh::exact_id(&filter);
    }
    let _ = fresh::inserted(m, m.body());
    let mut ids = likewise::index::ids::IdSet::default();
    fresh::reply_ids(kind, m.body(), &mut ids);
}

fn parse_everything(body: &RawDocument) {
    let command = Command::classify(body);
    // What a read run as the proxy would need rights on, and the session
    // fields a read for the client would carry.
    let _ = likewise::command::reads::collections_read(body);
    let mut session = likewise::rewrite::InSession::of(body);
    let _ = likewise::rewrite::matching_ids("c", "d", body, &mut session);
    let _ = session.continuing(body);
    let _ = Hello::parse(body);
    let _ = search_index::parse_create(body);
    let _ = search_index::parse_target(body);
    let _ = search_index::parse_list_filter(body);
    let _ = search_index::parse_create_semantic(body);
    let _ = likewise::models::ModelDef::parse(body, "createModel");
    if let Ok(definition) = body.get_document("definition") {
        let _ = search_index::parse_definition(definition);
    }
    for key in ["filter", "query"] {
        if let Ok(filter) = body.get_document(key) {
            let _ = vector_query::parse_like_filter(filter);
        }
    }
    if let Ok(stages) = body.get_array("pipeline") {
        for stage in stages.into_iter().flatten() {
            if let Some(stage) = stage.as_document() {
                if let Ok(search) = stage.get_document("$vectorSearch") {
                    let _ = vector_query::parse_vector_search(search);
                }
                if let Ok(search) = stage.get_document("$search") {
                    let _ = likewise::command::text_query::parse_search(search);
                }
                if let Ok(meta) = stage.get_document("$searchMeta") {
                    let _ = likewise::command::text_query::parse_search_meta(meta);
                }
                if let Ok(matched) = stage.get_document("$match") {
                    let _ = vector_query::parse_like_filter(matched);
                }
            }
        }
    }
    let _ = vector_query::parse_vector_search(body);
    let _ = vector_query::parse_like_filter(body);
    // What the proxy rewrites a vector command into (score substitution
    // walks later stages and projections), as if two documents ranked; as
    // in the proxy, only for vector commands (an explain's inner one).
    let body = match command {
        Command::Vector(_) => body,
        Command::ExplainVector(_) => match body.get_document("explain") {
            Ok(inner) => inner,
            Err(_) => return,
        },
        _ => return,
    };
    let ranked = likewise::rewrite::Ranked {
        ids: vec![bson::RawBson::Int32(1), bson::RawBson::String("two".into())],
        scores: vec![0.9, 0.8],
        details: vec![
            bson::rawdoc! { "value": 0.9 },
            bson::rawdoc! { "value": 0.8 },
        ],
        search_meta: Some(bson::rawdoc! { "count": { "total": 2 } }),
        highlights: vec![bson::RawArrayBuf::new(), bson::RawArrayBuf::new()],
        stored_source: Some(bson::rawdoc! { "_id": 1, "a": 1 }),
    };
    let exact = body.get_document("filter").ok();
    if let Ok(stages) = body.get_array("pipeline") {
        let collection = body.get_str("aggregate").unwrap_or("c");
        if let Ok(found) = vector_query::vector_stages(collection, stages) {
            let planned: Vec<_> = found.iter().map(|_| (&ranked, exact)).collect();
            let _ = likewise::rewrite::aggregate(body, &planned);
        }
    }
    let _ = likewise::rewrite::find_as_aggregate(body, &ranked, exact);
    let _ = likewise::rewrite::count(body, &ranked, exact);
    let _ = likewise::rewrite::fetch_only(body, &ranked, exact);
    let _ = likewise::rewrite::put_in_order(body, &ranked);
}

//! The official Rust `mongodb` driver, unmodified, through the proxy with a
//! plain `mongodb://HOST:PORT/` URI, against a real SecantusDB upstream.

mod common;

use bson::{doc, Document};
use common::{Proxy, Upstream};
use futures_util::{StreamExt, TryStreamExt};
use mongodb::options::{ClientOptions, Compressor};
use mongodb::Client;

async fn client(uri: &str, compressor: Option<Compressor>) -> Client {
    let mut options = ClientOptions::parse(uri).await.unwrap();
    options.compressors = compressor.map(|c| vec![c]);
    Client::with_options(options).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_cursors_and_admin_work_through_the_proxy() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    for (round, compressor) in [
        None,
        Some(Compressor::Zstd { level: None }),
        Some(Compressor::Snappy),
        Some(Compressor::Zlib { level: None }),
    ]
    .into_iter()
    .enumerate()
    {
        let client = client(&proxy.uri(), compressor).await;
        let db = client.database(&format!("rust{round}"));
        let coll = db.collection::<Document>("items");

        let docs: Vec<Document> = (0..1000)
            .map(|i| doc! { "_id": i, "group": i % 7, "name": format!("item-{i}") })
            .collect();
        assert_eq!(
            coll.insert_many(docs).await.unwrap().inserted_ids.len(),
            1000
        );
        assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 1000);

        // A filtered, sorted, projected page that needs several getMores.
        let page: Vec<Document> = coll
            .find(doc! { "group": 3 })
            .sort(doc! { "_id": -1 })
            .projection(doc! { "name": 1, "_id": 1 })
            .skip(2)
            .limit(50)
            .batch_size(7)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let want: Vec<i32> = (0..1000)
            .rev()
            .filter(|i| i % 7 == 3)
            .skip(2)
            .take(50)
            .collect();
        let got: Vec<i32> = page.iter().map(|d| d.get_i32("_id").unwrap()).collect();
        assert_eq!(got, want);
        assert!(page.iter().all(|d| !d.contains_key("group")));

        // Abandoning a cursor early sends killCursors.
        let mut cursor = coll.find(doc! {}).batch_size(3).await.unwrap();
        assert!(cursor.next().await.is_some());
        drop(cursor);

        let grouped: Vec<Document> = coll
            .aggregate(vec![
                doc! { "$group": { "_id": "$group", "n": { "$sum": 1 } } },
                doc! { "$sort": { "_id": 1 } },
            ])
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(grouped.len(), 7);
        assert_eq!(grouped[0].get_i32("n").unwrap(), 143);
        assert_eq!(coll.distinct("group", doc! {}).await.unwrap().len(), 7);

        let updated = coll
            .update_many(doc! { "group": 0 }, doc! { "$set": { "zero": true } })
            .await
            .unwrap();
        assert_eq!(updated.modified_count, 143);
        coll.replace_one(doc! { "_id": 1 }, doc! { "replaced": 1 })
            .await
            .unwrap();
        let old = coll
            .find_one_and_update(doc! { "_id": 2 }, doc! { "$inc": { "hits": 1 } })
            .await
            .unwrap()
            .unwrap();
        assert!(!old.contains_key("hits"));
        assert_eq!(
            coll.delete_many(doc! { "group": 6 })
                .await
                .unwrap()
                .deleted_count,
            142
        );
        assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 858);

        coll.create_index(
            mongodb::IndexModel::builder()
                .keys(doc! { "name": 1 })
                .build(),
        )
        .await
        .unwrap();
        assert_eq!(coll.list_index_names().await.unwrap().len(), 2);
        assert!(db
            .list_collection_names()
            .await
            .unwrap()
            .contains(&"items".to_string()));
        db.drop().await.unwrap();
        assert!(!client
            .list_database_names()
            .await
            .unwrap()
            .contains(&format!("rust{round}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_change_streams_work_through_the_proxy() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let client = client(&proxy.uri(), None).await;
    let coll = client.database("rusttx").collection::<Document>("accounts");
    coll.insert_one(doc! { "_id": "seed" }).await.unwrap();

    let mut stream = coll.watch().await.unwrap();

    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! { "_id": "committed" })
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();

    session.start_transaction().await.unwrap();
    coll.insert_one(doc! { "_id": "aborted" })
        .session(&mut session)
        .await
        .unwrap();
    session.abort_transaction().await.unwrap();

    assert!(coll
        .find_one(doc! { "_id": "committed" })
        .await
        .unwrap()
        .is_some());
    assert!(coll
        .find_one(doc! { "_id": "aborted" })
        .await
        .unwrap()
        .is_none());

    let event = stream.next().await.unwrap().unwrap();
    let key = event.document_key.unwrap();
    assert_eq!(key.get_str("_id").unwrap(), "committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unordered_bulk_explain_and_errors_work_through_the_proxy() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&upstream.uri()).await;
    let client = client(&proxy.uri(), None).await;
    let db = client.database("rustmisc");
    let coll = db.collection::<Document>("c");

    // The Rust driver refuses w:0 itself; unacknowledged writes are covered
    // by the pymongo, Node and raw-frame suites.
    let seed: Vec<Document> = (0..25).map(|i| doc! { "_id": i }).collect();
    coll.insert_many(seed).await.unwrap();
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 25);

    let err = coll
        .insert_many(vec![
            doc! { "_id": 1 },
            doc! { "_id": 100 },
            doc! { "_id": 2 },
        ])
        .ordered(false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("E11000"), "{err}");
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 26);

    let plan = db
        .run_command(doc! { "explain": { "find": "c", "filter": { "_id": 3 } } })
        .await
        .unwrap();
    assert!(plan.contains_key("queryPlanner"));

    let err = db
        .run_command(doc! { "definitelyNotACommand": 1 })
        .await
        .unwrap_err();
    match *err.kind {
        mongodb::error::ErrorKind::Command(ref e) => assert_eq!(e.code, 59),
        ref other => panic!("expected a command error, got {other:?}"),
    }
    db.drop().await.unwrap();
}

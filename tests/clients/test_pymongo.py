"""pymongo, unmodified, through the proxy with a plain URI."""

import threading

import pytest
from bson import ObjectId
from pymongo import ASCENDING, DeleteOne, InsertOne, MongoClient, ReplaceOne, UpdateOne
from pymongo.cursor import CursorType
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure
from pymongo.read_preferences import ReadPreference
from pymongo.write_concern import WriteConcern


@pytest.fixture
def client(proxy_uri):
    c = MongoClient(proxy_uri, serverSelectionTimeoutMS=10_000)
    yield c
    c.close()


@pytest.fixture
def db(client, request):
    name = "py_" + request.node.name[:50]
    client.drop_database(name)
    yield client[name]
    client.drop_database(name)





def test_handshake_presents_a_router_and_keeps_the_pool_on_the_proxy(client, proxy):
    hello = client.admin.command("hello")
    assert hello["msg"] == "isdbgrid"
    assert hello["logicalSessionTimeoutMinutes"] > 0
    for leaked in ("setName", "hosts", "me", "primary", "topologyVersion"):
        assert leaked not in hello
    client.admin.command("ping")
    topology = client.topology_description
    assert topology.topology_type_name == "Sharded"
    servers = list(topology.server_descriptions())
    assert servers == [("127.0.0.1", proxy.port)]


def test_insert_many_100k_uses_document_sequences(db):
    docs = [{"_id": i, "v": i % 100, "s": "x" * 20} for i in range(100_000)]
    result = db.big.insert_many(docs)
    assert len(result.inserted_ids) == 100_000
    assert db.big.count_documents({}) == 100_000
    assert db.big.estimated_document_count() == 100_000
    # Every document comes back through cursors spanning many getMores.
    seen = sum(1 for _ in db.big.find({}, batch_size=1000))
    assert seen == 100_000


def test_find_filters_projection_sort_skip_limit(db):
    db.c.insert_many([{"_id": i, "a": i % 5, "b": f"n{i}", "c": [i, i + 1]} for i in range(200)])
    got = list(db.c.find({"a": {"$in": [1, 2]}, "_id": {"$gte": 50}}, {"b": 1})
               .sort([("a", -1), ("_id", ASCENDING)]).skip(3).limit(10))
    want = sorted([i for i in range(50, 200) if i % 5 in (1, 2)], key=lambda i: (-(i % 5), i))[3:13]
    assert [d["_id"] for d in got] == want
    assert all(set(d) == {"_id", "b"} for d in got)
    assert db.c.find_one({"c": 11})["_id"] in (10, 11)


def test_cursors_getmore_and_killcursors(db):
    db.c.insert_many([{"_id": i} for i in range(100)])
    cursor = db.c.find().batch_size(3)
    assert [d["_id"] for d in cursor] == list(range(100))
    open_cursor = db.c.find().batch_size(2)
    next(open_cursor)
    cursor_id = open_cursor.cursor_id
    assert cursor_id
    open_cursor.close()
    # The server no longer knows the cursor: killCursors went through.
    with pytest.raises(OperationFailure):
        db.command("getMore", cursor_id, collection="c")


def test_exhaust_cursor(db):
    db.c.insert_many([{"_id": i} for i in range(1000)])
    got = [d["_id"] for d in db.c.find(cursor_type=CursorType.EXHAUST).batch_size(10)]
    assert got == list(range(1000))


def test_aggregate_count_distinct(db):
    db.c.insert_many([{"k": i % 3, "v": i} for i in range(30)])
    out = list(db.c.aggregate([{"$group": {"_id": "$k", "t": {"$sum": "$v"}}}, {"$sort": {"_id": 1}}]))
    assert out == [{"_id": 0, "t": 135}, {"_id": 1, "t": 145}, {"_id": 2, "t": 155}]
    assert db.command("count", "c", query={"k": 1})["n"] == 10
    assert sorted(db.c.distinct("k")) == [0, 1, 2]
    out = list(db.c.aggregate([{"$match": {"k": 0}}, {"$count": "n"}], batchSize=1))
    assert out == [{"n": 10}]


def test_update_replace_delete_find_and_modify(db):
    db.c.insert_many([{"_id": i, "n": i} for i in range(10)])
    assert db.c.update_one({"_id": 1}, {"$inc": {"n": 100}}).modified_count == 1
    assert db.c.update_many({"n": {"$lt": 5}}, {"$set": {"low": True}}).modified_count == 4
    assert db.c.replace_one({"_id": 2}, {"r": 1}).modified_count == 1
    assert db.c.update_one({"_id": 99}, {"$set": {"n": 99}}, upsert=True).upserted_id == 99
    before = db.c.find_one_and_update({"_id": 3}, {"$set": {"n": -3}})
    assert before["n"] == 3
    assert db.c.find_one_and_delete({"_id": 4})["_id"] == 4
    assert db.c.find_one_and_replace({"_id": 5}, {"z": 1})["n"] == 5
    assert db.c.delete_one({"_id": 6}).deleted_count == 1
    assert db.c.delete_many({"low": True}).deleted_count == 2  # _id 0 and 3
    assert sorted(d["_id"] for d in db.c.find()) == [1, 2, 5, 7, 8, 9, 99]


def test_bulk_write_ordered_and_unordered(db):
    result = db.c.bulk_write([
        InsertOne({"_id": 1}), InsertOne({"_id": 2}), UpdateOne({"_id": 1}, {"$set": {"x": 1}}),
        ReplaceOne({"_id": 2}, {"y": 2}), DeleteOne({"_id": 1}),
    ])
    assert (result.inserted_count, result.modified_count, result.deleted_count) == (2, 2, 1)
    with pytest.raises(BulkWriteError) as err:
        db.c.bulk_write([InsertOne({"_id": 2}), InsertOne({"_id": 3})], ordered=False)
    assert err.value.details["nInserted"] == 1
    assert err.value.details["writeErrors"][0]["code"] == 11000


def test_indexes_and_namespace_admin(client, db):
    db.c.insert_one({"a": 1, "b": 2})
    name = db.c.create_index([("a", 1), ("b", -1)], unique=True)
    assert name in db.c.index_information()
    with pytest.raises(DuplicateKeyError):
        db.c.insert_one({"a": 1, "b": 2})
    db.c.drop_index(name)
    assert list(db.c.index_information()) == ["_id_"]
    db.create_collection("made")
    assert {"c", "made"} <= set(db.list_collection_names())
    db.drop_collection("made")
    assert "made" not in db.list_collection_names()
    assert db.name in client.list_database_names()


def test_sessions_and_transactions(client, db):
    db.acct.insert_many([{"_id": "a", "bal": 100}, {"_id": "b", "bal": 0}])
    with client.start_session() as session:
        with session.start_transaction():
            db.acct.update_one({"_id": "a"}, {"$inc": {"bal": -30}}, session=session)
            db.acct.update_one({"_id": "b"}, {"$inc": {"bal": 30}}, session=session)
        assert db.acct.find_one({"_id": "b"})["bal"] == 30
        session.start_transaction()
        db.acct.update_one({"_id": "a"}, {"$inc": {"bal": -1000}}, session=session)
        session.abort_transaction()
    assert db.acct.find_one({"_id": "a"})["bal"] == 70
    with client.start_session(causal_consistency=True) as session:
        db.acct.insert_one({"_id": "c"}, session=session)
        assert db.acct.find_one({"_id": "c"}, session=session) is not None


def test_change_stream(db):
    db.c.insert_one({"_id": 0})
    with db.c.watch(max_await_time_ms=500) as stream:
        db.c.insert_one({"_id": 1, "x": "new"})
        db.c.update_one({"_id": 1}, {"$set": {"x": "changed"}})
        events = []
        for _ in range(20):
            change = stream.try_next()
            if change:
                events.append(change)
            if len(events) == 2:
                break
    assert [e["operationType"] for e in events] == ["insert", "update"]
    assert events[0]["fullDocument"] == {"_id": 1, "x": "new"}


def test_explain(db):
    db.c.insert_many([{"a": i} for i in range(10)])
    plan = db.c.find({"a": 3}).explain()
    assert "queryPlanner" in plan
    assert db.command("explain", {"count": "c", "query": {"a": 3}})["ok"] == 1


def test_unacknowledged_writes(db):
    unacked = db.get_collection("c", write_concern=WriteConcern(w=0))
    for i in range(50):
        unacked.insert_one({"_id": i})
    unacked.delete_one({"_id": 0})
    # An acknowledged command on the same connection runs after the w:0 ones.
    assert db.c.count_documents({}) == 49


def test_errors_come_back_as_the_upstream_sent_them(db):
    with pytest.raises(OperationFailure) as err:
        db.command("noSuchCommand")
    assert err.value.code == 59
    with pytest.raises(OperationFailure) as err:
        list(db.c.find({"$bogus": 1}))
    assert err.value.code == 2
    db.c.insert_one({"_id": 1})
    with pytest.raises(DuplicateKeyError):
        db.c.insert_one({"_id": 1})


@pytest.mark.parametrize("compressor", ["zstd", "snappy", "zlib"])
def test_wire_compression(proxy_uri, compressor):
    with MongoClient(proxy_uri, compressors=compressor) as c:
        db = c["py_compress_" + compressor]
        db.c.drop()
        db.c.insert_many([{"_id": i, "pad": "y" * 1000} for i in range(500)])
        assert sum(len(d["pad"]) for d in db.c.find()) == 500_000
        # pymongo reports what was negotiated with the server it sees.
        conn_compressors = c.topology_description.server_descriptions()
        assert conn_compressors
        db.c.drop()


def test_read_preferences_and_retryable_writes(client, db):
    for mode in (ReadPreference.PRIMARY_PREFERRED, ReadPreference.SECONDARY_PREFERRED,
                 ReadPreference.NEAREST):
        coll = db.get_collection("c", read_preference=mode)
        coll.insert_one({"m": mode.name})
        assert coll.count_documents({"m": mode.name}) == 1
    assert db.c.insert_one({"_id": ObjectId()}).acknowledged


def test_many_concurrent_clients(proxy_uri):
    errors = []

    def work(n):
        try:
            with MongoClient(proxy_uri) as c:
                coll = c.py_concurrent[f"t{n}"]
                coll.insert_many([{"i": i} for i in range(200)])
                assert coll.count_documents({}) == 200
                coll.drop()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors


def test_a_slow_upstream_meets_the_request_timeout():
    """SecantusDB's failCommand failpoint holds a find for 5 s; with
    `--request-timeout-ms 500` the client gets NetworkTimeout instead and
    its connection goes on, the proxy serves new connections, and waits the
    client asked for
    (change stream getMore with maxAwaitTimeMS) are not cut short."""
    from conftest import start_proxy, start_upstream

    upstream = start_upstream("--enable-test-commands")
    proxy = start_proxy(f"mongodb://{upstream.address}/", "--request-timeout-ms", "500")
    try:
        direct = MongoClient(f"mongodb://{upstream.address}/", directConnection=True)
        direct.slow.docs.insert_one({"_id": 1})
        # Scoped to this client's connections (the proxy forwards its
        # handshake metadata): the proxy's own finds must not take it.
        direct.admin.command("configureFailPoint", "failCommand", mode={"times": 1}, data={
            "failCommands": ["find"], "blockConnection": True, "blockTimeMS": 5000, "appName": "slow-find"})
        with MongoClient(f"mongodb://{proxy.address}/", retryReads=False, appname="slow-find") as c:
            with pytest.raises(OperationFailure) as err:
                c.slow.docs.find_one({"_id": 1})
            assert err.value.code == 89 and "--request-timeout-ms" in str(err.value), repr(err.value)
            # The connection lives on (the held reply is dropped when it comes,
            # so the client keeps its pinned upstream connection).
            assert c.slow.docs.find_one({"_id": 1}) == {"_id": 1}
        # The failpoint fired once: new connections are served as usual.
        with MongoClient(f"mongodb://{proxy.address}/") as c:
            assert c.slow.docs.find_one({"_id": 1}) == {"_id": 1}
            with c.slow.docs.watch(max_await_time_ms=1500) as stream:
                assert stream.try_next() is None
                c.slow.docs.insert_one({"_id": 2})
                change = None
                for _ in range(10):
                    change = stream.try_next()
                    if change:
                        break
                assert change and change["documentKey"] == {"_id": 2}
        direct.close()
    finally:
        proxy.stop()
        upstream.stop()

"""Differential suite: one scenario run directly against the upstream and
then through the proxy; every command reply the driver received is compared
field by field. Only volatile fields are ignored (cluster and operation
times, cursor ids, connection ids, timings, change-stream resume tokens).
"""

import datetime

import pytest
from bson import Timestamp
from pymongo import DeleteOne, InsertOne, MongoClient, ReplaceOne, UpdateOne, monitoring
from pymongo.errors import BulkWriteError, OperationFailure
from pymongo.write_concern import WriteConcern

DB = "differential"

# Keys whose values change from run to run whatever the path.
VOLATILE = {
    "$clusterTime", "operationTime", "connectionId", "localTime", "electionId",
    "clusterTime", "wallTime", "postBatchResumeToken", "executionTimeMillis",
    "executionTimeMillisEstimate", "executionTimeMicros", "sizeOnDisk", "totalSize",
    "totalSizeMb", "_data",
}
# killCursors answers with lists of cursor ids: only how many matters.
CURSOR_ID_LISTS = {"cursorsKilled", "cursorsNotFound", "cursorsAlive", "cursorsUnknown"}


class Recorder(monitoring.CommandListener):
    """Keeps (command name, reply or failure) for every command sent."""

    def __init__(self):
        self.events = []
        self.on = False

    def started(self, event):
        pass

    def succeeded(self, event):
        if self.on:
            self.events.append((event.command_name, "ok", event.reply))

    def failed(self, event):
        if self.on:
            self.events.append((event.command_name, "failed", event.failure))


def normalise(value, key=None):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in VOLATILE:
                out[k] = "<volatile>"
            elif k in CURSOR_ID_LISTS:
                out[k] = len(v)
            elif k == "id" and key == "cursor":
                out[k] = "<cursor>" if v else 0
            else:
                out[k] = normalise(v, k)
        return out
    if isinstance(value, list):
        return [normalise(v, key) for v in value]
    if isinstance(value, (Timestamp, datetime.datetime)):
        return "<time>"
    return value


def scenario(client):
    db = client[DB]
    c = db.items
    c.insert_one({"_id": 0, "kind": "single"})
    c.insert_many([{"_id": i, "g": i % 4, "s": f"n{i}"} for i in range(1, 1001)])
    list(c.find({"g": 2}, {"s": 1}).sort("_id", -1).skip(5).limit(20))
    list(c.find({}).batch_size(50))
    cursor = c.find({}).batch_size(5)
    next(cursor)
    cursor.close()
    list(c.aggregate([{"$group": {"_id": "$g", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]))
    list(c.aggregate([{"$match": {"g": 1}}, {"$project": {"s": 1}}], batchSize=10))
    db.command("count", "items", query={"g": 3})
    c.count_documents({"g": {"$gte": 2}})
    c.estimated_document_count()
    c.distinct("g")
    c.update_one({"_id": 1}, {"$set": {"u": 1}})
    c.update_many({"g": 0}, {"$inc": {"hits": 1}})
    c.update_one({"_id": 5000}, {"$set": {"up": True}}, upsert=True)
    c.replace_one({"_id": 2}, {"replaced": True})
    c.find_one_and_update({"_id": 3}, {"$set": {"f": 1}})
    c.find_one_and_delete({"_id": 4})
    c.delete_one({"_id": 6})
    c.delete_many({"g": 3})
    c.bulk_write([InsertOne({"_id": 9001}), UpdateOne({"_id": 9001}, {"$set": {"b": 1}}),
                  ReplaceOne({"_id": 7}, {"r": 7}), DeleteOne({"_id": 8})])
    try:
        c.bulk_write([InsertOne({"_id": 9001}), InsertOne({"_id": 9002})], ordered=False)
    except BulkWriteError:
        pass
    c.create_index([("s", 1)], name="s_1")
    c.index_information()
    c.drop_index("s_1")
    db.create_collection("made")
    sorted(db.list_collection_names())
    db.drop_collection("made")
    c.find({"g": 1}).explain()
    for command in ({"definitelyNotACommand": 1}, {"find": "items", "filter": {"$bogus": 1}}):
        try:
            db.command(command)
        except OperationFailure:
            pass
    try:
        c.insert_one({"_id": 0})
    except OperationFailure:
        pass
    c.with_options(write_concern=WriteConcern(w=0)).insert_one({"_id": "unacked"})
    c.find_one({"_id": "unacked"})
    with client.start_session() as session:
        with session.start_transaction():
            c.insert_one({"_id": "tx1"}, session=session)
            c.update_one({"_id": 1}, {"$set": {"tx": True}}, session=session)
        session.start_transaction()
        c.insert_one({"_id": "tx2"}, session=session)
        session.abort_transaction()
    with c.watch(max_await_time_ms=5000) as stream:
        c.insert_one({"_id": "watched"})
        stream.next()
    client.drop_database(DB)


def record(uri, **options):
    recorder = Recorder()
    with MongoClient(uri, event_listeners=[recorder], **options) as client:
        client.drop_database(DB)
        recorder.on = True
        scenario(client)
        recorder.on = False
    return [(name, status, normalise(reply)) for name, status, reply in recorder.events]


@pytest.mark.parametrize("compressor", [None, "zstd", "snappy", "zlib"])
def test_proxy_replies_equal_direct_replies(direct_uri, proxy_uri, compressor):
    direct = record(direct_uri)
    proxied = record(proxy_uri, **({"compressors": compressor} if compressor else {}))
    assert len(direct) > 50
    diffs = []
    for i, (want, got) in enumerate(zip(direct, proxied)):
        if want != got:
            diffs.append(f"#{i} {want[0]}:\n  direct:  {want}\n  proxied: {got}")
    assert [e[0] for e in proxied] == [e[0] for e in direct], "different command sequence"
    assert not diffs, "\n".join(diffs[:10])
    print(f"differential ({compressor or 'uncompressed'}): {len(direct)} replies compared, 0 differences")


META = {"$meta": "vectorSearchScore"}

# Later stages after a vector stage, each with the same stages written for
# the upstream over plain documents that carry their score in `__s`.
LATER = [
    ([{"$project": {"v": 0, "score": META}}],
     [{"$set": {"score": "$__s"}}, {"$project": {"v": 0}}]),
    ([{"$project": {"_id": 0, "t": 1, "score": META}}],
     [{"$project": {"_id": 0, "t": 1, "score": "$__s"}}]),
    ([{"$set": {"s": META, "d": {"$multiply": ["$n", 2]}}}, {"$match": {"s": {"$gte": 0.2}}}, {"$unset": "v"}],
     [{"$set": {"s": "$__s", "d": {"$multiply": ["$n", 2]}}}, {"$match": {"s": {"$gte": 0.2}}}, {"$unset": "v"}]),
    ([{"$addFields": {"s": META}}, {"$sort": {"n": -1}}, {"$limit": 4}, {"$project": {"s": 1}}],
     [{"$addFields": {"s": "$__s"}}, {"$sort": {"n": -1}}, {"$limit": 4}, {"$project": {"s": 1}}]),
    ([{"$count": "c"}], [{"$count": "c"}]),
    ([{"$skip": 3}, {"$project": {"_id": 1}}], [{"$skip": 3}, {"$project": {"_id": 1}}]),
    ([{"$facet": {"top": [{"$limit": 2}, {"$project": {"v": 0, "score": META}}],
                  "kinds": [{"$group": {"_id": "$kind", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]}}],
     [{"$facet": {"top": [{"$limit": 2}, {"$set": {"score": "$__s"}}, {"$project": {"v": 0, "__s": 0}}],
                  "kinds": [{"$group": {"_id": "$kind", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]}}]),
    ([{"$lookup": {"from": "kinds", "localField": "kind", "foreignField": "_id", "as": "k"}},
      {"$project": {"k": 1, "score": META}}],
     [{"$lookup": {"from": "kinds", "localField": "kind", "foreignField": "_id", "as": "k"}},
      {"$project": {"k": 1, "score": "$__s"}}]),
    ([{"$group": {"_id": "$kind", "best": {"$max": META}, "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}],
     [{"$group": {"_id": "$kind", "best": {"$max": "$__s"}, "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]),
    ([{"$replaceRoot": {"newRoot": {"id": "$_id", "s": META}}}],
     [{"$replaceRoot": {"newRoot": {"id": "$_id", "s": "$__s"}}}]),
    # Equal scores (vectors repeat) are ordered by `_id`.
    ([{"$sort": {"n": 1}}, {"$sort": {"x": META, "_id": 1}}, {"$project": {"_id": 1}}],
     [{"$sort": {"__s": -1, "_id": 1}}, {"$project": {"_id": 1}}]),
]


@pytest.fixture(scope="module")
def ranked_items(direct_uri, proxy_uri):
    from pymongo.operations import SearchIndexModel
    from conftest import wait_ready
    with MongoClient(proxy_uri) as client:
        db = client.differential_vector
        db.drop_collection("items")
        db.drop_collection("kinds")
        db.items.insert_many([{"_id": i, "v": [float(i % 17), float(i % 5), 1.0], "n": (i * 7) % 31,
                               "t": f"t{i}", "kind": ["a", "b", "c"][i % 3]} for i in range(300)])
        db.kinds.insert_many([{"_id": k, "label": k.upper()} for k in "abc"])
        db.items.create_search_index(SearchIndexModel(
            {"fields": [{"type": "vector", "path": "v", "numDimensions": 3, "similarity": "euclidean"},
                        {"type": "filter", "path": "kind"}]}, name="v", type="vectorSearch"))
        wait_ready(db.items, "v")
        yield db
        db.items.drop_search_index("v")


@pytest.mark.parametrize("later, upstream_later", LATER)
def test_later_stages_equal_the_upstream_over_the_ranked_ids(ranked_items, direct_uri, later, upstream_later):
    """Each pipeline after the vector stage gives what the upstream gives
    for the same stages over exactly the ranked documents, in rank order,
    each carrying its score."""
    db = ranked_items
    stage = {"$vectorSearch": {"index": "v", "path": "v", "queryVector": [3.3, 2.0, 1.0], "limit": 12,
                               "exact": True, "filter": {"kind": {"$ne": "c"}}}}
    ranked = list(db.items.aggregate([stage, {"$project": {"s": META}}]))
    ids, scores = [d["_id"] for d in ranked], [d["s"] for d in ranked]
    assert len(ids) == 12
    with MongoClient(direct_uri, directConnection=True) as direct:
        plain = [{"$match": {"_id": {"$in": ids}}},
                 {"$addFields": {"__r": {"$indexOfArray": [ids, "$_id"]}}},
                 {"$addFields": {"__s": {"$arrayElemAt": [scores, "$__r"]}}},
                 {"$sort": {"__r": 1}}, {"$unset": "__r"}]
        want = list(direct.differential_vector.items.aggregate(plain + upstream_later + [{"$unset": "__s"}]))
    got = list(db.items.aggregate([stage] + later))
    assert got == want

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

"""Durable indexes: snapshots under --data-dir, catch-up from the stored
change-stream resume token, rebuild when a snapshot is unusable, and a
kill -9 in the middle of a write burst."""

import random
import signal
import threading

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from pymongo.operations import SearchIndexModel

from conftest import eventually, start_proxy



def definition():
    return {"fields": [{"type": "vector", "path": "p", "numDimensions": 3, "similarity": "euclidean"}]}



def info(coll):
    found = list(coll.list_search_indexes("dur"))
    return found[0] if found else None


def ready(coll):
    i = info(coll)
    return i is not None and i["status"] == "READY"


def mismatches(proxied, direct, sample=None):
    """Differences between the index and the upstream: lost, phantom and
    stale vectors. Every stored vector (or every `sample`-th) must find its
    own document first, at distance 0 (score 1), and the index must hold
    no other vectors."""
    upstream = {d["_id"]: d["p"] for d in direct.find({"p": {"$exists": True}})}
    problems = []
    indexed = info(proxied)["progress"]["vectorsIndexed"]
    if indexed != len(upstream):
        problems.append(f"index holds {indexed} vectors, upstream {len(upstream)}")
    for _id, p in list(upstream.items())[::sample or 1]:
        got = list(proxied.aggregate([
            {"$vectorSearch": {"index": "dur", "path": "p", "queryVector": p, "limit": 1, "exact": True}},
            {"$project": {"score": {"$meta": "vectorSearchScore"}}}]))
        if not got or got[0]["_id"] != _id or abs(got[0]["score"] - 1.0) > 1e-6:
            problems.append(f"{_id}: lost or stale ({got})")
    return problems


@pytest.fixture
def setup(direct_uri, tmp_path):
    direct = MongoClient(direct_uri, directConnection=True)
    # Index definitions live in the upstream: start each test without any.
    direct.likewise.search_indexes.delete_many({"db": "durable_suite"})
    coll = direct.durable_suite.points
    coll.drop()
    coll.insert_many([{"_id": i, "p": [float(i), float(i % 7), 1.0]} for i in range(300)])
    yield direct, coll, tmp_path / "state"
    direct.likewise.search_indexes.delete_many({"db": "durable_suite"})
    coll.drop()
    direct.durable_suite.command("dropDatabase")
    direct.close()


def start(direct_uri, data_dir):
    proxy = start_proxy(direct_uri, "--data-dir", str(data_dir), log_level="info")
    client = MongoClient(f"mongodb://{proxy.address}/")
    return proxy, client, client.durable_suite.points


def test_restart_loads_the_snapshot_and_catches_up(direct_uri, setup):
    """READY after a restart means caught up: every write made before it,
    through the proxy or not, is searched (and nothing deleted is). The
    stored resume token may lag what the snapshot holds (writes through
    the proxy are applied before their events arrive), so the replay
    passes through older states before it reaches the present."""
    direct, dcoll, data_dir = setup
    proxy, client, coll = start(direct_uri, data_dir)
    coll.create_search_index(SearchIndexModel(name="dur", type="vectorSearch", definition=definition()))
    eventually(lambda: ready(coll))
    coll.insert_one({"_id": "through", "p": [5000.0, 0.0, 1.0]})
    # Inserted and deleted through the proxy just before it stops: their
    # events likely come after the snapshot's token.
    coll.insert_many([{"_id": f"brief-{i}", "p": [float(i), 50.0, 1.0]} for i in range(200)])
    coll.delete_many({"_id": {"$regex": "^brief-"}})
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(timeout=30) == 0
    client.close()
    assert list((data_dir / "indexes").glob("*.snapshot"))

    # While no proxy runs, the upstream changes, by more events than
    # many replies carry, so the catch-up takes a while.
    dcoll.insert_one({"_id": "while-down", "p": [-9000.0, 0.0, 1.0]})
    dcoll.update_one({"_id": 10}, {"$set": {"p": [10.0, 99.0, 1.0]}})
    dcoll.delete_one({"_id": 11})
    dcoll.insert_many([{"_id": f"down-{i}", "p": [float(i), -50.0, 1.0]} for i in range(20_000)])
    dcoll.delete_many({"_id": {"$regex": "^down-[0-9]*[02468]$"}})

    proxy, client, coll = start(direct_uri, data_dir)
    try:
        eventually(lambda: ready(coll))
        assert info(coll)["progress"]["restoredFromSnapshot"] is True
        proxy.wait_for_line("loaded from its snapshot")
        # No waiting past READY.
        assert mismatches(coll, dcoll, sample=37) == []
    finally:
        client.close()
        proxy.stop()


def test_a_corrupt_snapshot_is_rebuilt_from_the_upstream_and_said_so(direct_uri, setup):
    direct, dcoll, data_dir = setup
    proxy, client, coll = start(direct_uri, data_dir)
    coll.create_search_index(SearchIndexModel(name="dur", type="vectorSearch", definition=definition()))
    eventually(lambda: ready(coll))
    index_id = info(coll)["id"]
    proxy.proc.send_signal(signal.SIGTERM)
    proxy.proc.wait(timeout=30)
    client.close()
    # Other suites' indexes on the shared upstream are snapshotted too.
    snapshot = data_dir / "indexes" / f"{index_id}.snapshot"
    raw = bytearray(snapshot.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    snapshot.write_bytes(bytes(raw))

    proxy, client, coll = start(direct_uri, data_dir)
    try:
        eventually(lambda: ready(coll))
        assert info(coll)["progress"]["restoredFromSnapshot"] is False
        proxy.wait_for_line("snapshot unusable: rebuilding from the upstream")
        assert not mismatches(coll, dcoll)
    finally:
        client.close()
        proxy.stop()


def test_an_index_of_two_vector_fields_restarts_from_its_snapshots(direct_uri, setup):
    direct, dcoll, data_dir = setup
    dcoll.update_many({}, [{"$set": {"q": {"$reverseArray": "$p"}}}])
    proxy, client, coll = start(direct_uri, data_dir)
    coll.create_search_index(SearchIndexModel(name="dur", type="vectorSearch", definition={"fields": [
        {"type": "vector", "path": "p", "numDimensions": 3, "similarity": "euclidean"},
        {"type": "vector", "path": "q", "numDimensions": 3, "similarity": "euclidean"}]}))
    eventually(lambda: ready(coll))
    index_id = info(coll)["id"]
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(timeout=30) == 0
    client.close()
    # One snapshot per vector field.
    assert (data_dir / "indexes" / f"{index_id}.snapshot").exists()
    assert (data_dir / "indexes" / f"{index_id}.v0.1.snapshot").exists()
    proxy, client, coll = start(direct_uri, data_dir)
    try:
        eventually(lambda: ready(coll))
        # True only when every field's part loaded its snapshot.
        assert info(coll)["progress"]["restoredFromSnapshot"] is True
        assert info(coll)["progress"]["vectorsIndexed"] == 600
        for path, vector in (("p", [7.0, 0.0, 1.0]), ("q", [1.0, 0.0, 7.0])):
            got = list(coll.aggregate([{"$vectorSearch": {
                "index": "dur", "path": path, "queryVector": vector, "limit": 1, "exact": True}}]))
            assert [d["_id"] for d in got] == [7], path
    finally:
        client.close()
        proxy.stop()


def test_kill_9_during_a_write_burst_loses_nothing(direct_uri, setup):
    direct, dcoll, data_dir = setup
    proxy, client, coll = start(direct_uri, data_dir)
    coll.create_search_index(SearchIndexModel(name="dur", type="vectorSearch", definition=definition()))
    eventually(lambda: ready(coll))

    rng = random.Random(9)
    stop = threading.Event()
    done = {"through": 0, "direct": 0}

    def burst(target, name):
        n = 0
        while not stop.is_set() and n < 400:
            n += 1
            key = rng.randrange(600)
            op = rng.random()
            try:
                if op < 0.5:
                    target.replace_one({"_id": key}, {"p": [rng.uniform(-1e4, 1e4), float(n), 2.0]},
                                       upsert=True)
                elif op < 0.8:
                    target.update_one({"_id": key}, {"$set": {"p": [float(key), rng.uniform(-1e4, 1e4), 3.0]}})
                else:
                    target.delete_one({"_id": key})
                done[name] += 1
            except PyMongoError:
                pass  # the proxy was killed under this write

    writers = [threading.Thread(target=burst, args=(coll, "through")),
               threading.Thread(target=burst, args=(dcoll, "direct"))]
    for w in writers:
        w.start()
    eventually(lambda: done["through"] >= 100 and done["direct"] >= 100, timeout=60)
    proxy.proc.send_signal(signal.SIGKILL)
    proxy.proc.wait(timeout=30)
    stop.set()
    for w in writers:
        w.join(timeout=60)
    client.close()

    proxy, client, coll = start(direct_uri, data_dir)
    try:
        eventually(lambda: ready(coll))
        lag = eventually(lambda: not mismatches(coll, dcoll))
        problems = mismatches(coll, dcoll)
        assert problems == [], problems[:5]
        print(f"after kill -9 ({done}): 0 lost, 0 phantom, 0 stale; consistent {lag * 1000:.0f} ms after READY")
    finally:
        client.close()
        proxy.stop()

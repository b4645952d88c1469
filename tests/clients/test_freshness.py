"""Read-your-writes: a write acknowledged through the proxy is reflected by
the very next vector query, on any connection."""


import pytest
from pymongo import MongoClient, ReturnDocument
from pymongo.operations import SearchIndexModel

from conftest import eventually, start_proxy, wait_ready




@pytest.fixture
def colls(proxy_uri):
    """The same collection through two independent clients."""
    writer = MongoClient(proxy_uri)
    reader = MongoClient(proxy_uri)
    w = writer.fresh_suite.points
    w.drop()
    w.insert_many([{"_id": i, "p": [float(i), 0.0]} for i in range(100)])
    w.create_search_index(SearchIndexModel(name="pts", type="vectorSearch", definition={
        "fields": [{"type": "vector", "path": "p", "numDimensions": 2, "similarity": "euclidean"}]}))
    wait_ready(w, "pts")
    yield w, reader.fresh_suite.points
    w.drop_search_index("pts")
    w.drop()
    writer.close()
    reader.close()


def nearest(coll, point, n=1, **filter_):
    return [d["_id"] for d in coll.find({"$like": {"vector": point, "n": n, "exact": False}, **filter_})]


def vector_search(coll, point, n=1):
    return [d["_id"] for d in coll.aggregate([{"$vectorSearch": {
        "index": "pts", "path": "p", "queryVector": point, "numCandidates": 50, "limit": n}}])]


def test_inserts_are_found_at_once(colls):
    w, r = colls
    w.insert_one({"_id": "new", "p": [500.0, 500.0]})
    assert nearest(r, [499.0, 499.0]) == ["new"]
    w.insert_many([{"_id": f"m{i}", "p": [1000.0 + i, 1000.0]} for i in range(1000)])
    assert vector_search(r, [1500.2, 1000.0]) == ["m500"]
    assert r.count_documents({"$like": {"vector": [1500.0, 1000.0], "n": 1000}, "_id": {"$regex": "^m"}}) == 1000


def test_updates_move_documents_and_removed_vectors_vanish(colls):
    w, r = colls
    assert nearest(r, [50.0, 0.0]) == [50]
    w.update_one({"_id": 50}, {"$set": {"p": [-300.0, 7.0]}})
    assert nearest(r, [-300.0, 7.0]) == [50]
    assert nearest(r, [50.0, 0.0]) != [50]
    w.update_many({"_id": {"$in": [10, 11]}}, {"$unset": {"p": ""}})
    assert not {10, 11} & set(nearest(r, [10.5, 0.0], n=5))
    w.replace_one({"_id": 20}, {"p": [9000.0, 9000.0]})
    assert nearest(r, [9000.0, 9001.0]) == [20]


def test_upserts_and_find_and_modify(colls):
    w, r = colls
    w.update_one({"_id": "up"}, {"$set": {"p": [-42.0, -42.0]}}, upsert=True)
    assert nearest(r, [-42.0, -41.0]) == ["up"]
    moved = w.find_one_and_update({"_id": 30}, {"$set": {"p": [77.0, 777.0]}},
                                  return_document=ReturnDocument.AFTER)
    assert moved["p"] == [77.0, 777.0]
    assert nearest(r, [77.0, 777.0]) == [30]
    w.find_one_and_update({"_id": "fam"}, {"$set": {"p": [-5000.0, 1.0]}}, upsert=True)
    assert nearest(r, [-5000.0, 1.0]) == ["fam"]
    w.find_one_and_delete({"_id": "fam"})
    assert nearest(r, [-5000.0, 1.0]) != ["fam"]


def test_deletes_are_gone_at_once(colls):
    w, r = colls
    assert nearest(r, [99.0, 0.0]) == [99]
    w.delete_one({"_id": 99})
    assert nearest(r, [99.0, 0.0]) == [98]
    w.delete_many({"_id": {"$gte": 90}})
    assert nearest(r, [99.0, 0.0]) == [89]
    assert vector_search(r, [99.0, 0.0], n=3) == [89, 88, 87]


def test_a_late_change_event_never_undoes_a_newer_write(colls):
    """The change stream delivers the proxy's own writes after the proxy
    applied them. An event older than what the index holds (an insert
    arriving after the delete that followed it) must not bring the older
    state back, even for a moment: the ghost would take one of the `k`
    places, and the fetch would return one document short."""
    w, r = colls
    short = []
    for i in range(100):
        w.insert_one({"_id": f"brief-{i}", "p": [float(i) + 0.5, 0.0]})
        w.delete_one({"_id": f"brief-{i}"})
        for _ in range(3):
            got = vector_search(r, [float(i) + 0.5, 0.0], n=5)
            if len(got) != 5 or any(str(g).startswith("brief-") for g in got):
                short.append((i, got))
    assert short == []


def test_rejected_writes_change_nothing(colls):
    w, r = colls
    with pytest.raises(Exception):
        w.insert_one({"_id": 5, "p": [123456.0, 0.0]})  # duplicate key
    assert nearest(r, [123456.0, 0.0]) != [5]
    assert nearest(r, [5.0, 0.0]) == [5]



def test_writes_that_bypass_the_proxy_arrive_through_the_change_stream(colls, direct_uri):
    _, r = colls
    with MongoClient(direct_uri, directConnection=True) as direct:
        d = direct.fresh_suite.points
        d.insert_one({"_id": "outside", "p": [-777.0, 3.0]})
        lag_insert = eventually(lambda: nearest(r, [-777.0, 3.0]) == ["outside"])
        d.update_one({"_id": "outside"}, {"$set": {"p": [888.0, -3.0]}})
        lag_update = eventually(lambda: nearest(r, [888.0, -3.0]) == ["outside"])
        d.delete_one({"_id": "outside"})
        lag_delete = eventually(lambda: "outside" not in nearest(r, [888.0, -3.0], n=3))
        # insert then delete in quick succession must not leave a phantom
        d.insert_one({"_id": "blink", "p": [4242.0, 4242.0]})
        d.delete_one({"_id": "blink"})
        d.insert_one({"_id": "marker", "p": [-4242.0, 0.0]})
        eventually(lambda: nearest(r, [-4242.0, 0.0]) == ["marker"])
        assert "blink" not in nearest(r, [4242.0, 4242.0], n=3)
    print(f"change-stream lag: insert {lag_insert * 1000:.0f} ms, update {lag_update * 1000:.0f} ms, "
          f"delete {lag_delete * 1000:.0f} ms")


def test_two_proxies_on_one_upstream_converge(colls, direct_uri):
    w, _ = colls
    other = start_proxy(direct_uri)
    try:
        with MongoClient(f"mongodb://{other.address}/") as second:
            coll = second.fresh_suite.points
            wait_ready(coll, "pts")
            w.insert_one({"_id": "via-first", "p": [31337.0, 1.0]})
            lag = eventually(lambda: nearest(coll, [31337.0, 1.0]) == ["via-first"])
            print(f"second proxy saw a write through the first after {lag * 1000:.0f} ms")
    finally:
        other.stop()


def test_a_dropped_collection_takes_its_index_with_it(colls):
    w, r = colls
    w.drop()
    # Gone for every connection before the drop is acknowledged, as on Atlas.
    assert list(r.list_search_indexes()) == []
    w.insert_one({"_id": "early", "p": [1.0, 1.0]})
    assert vector_search(r, [1.0, 1.0]) == []  # no index: nothing found, as on Atlas
    w.insert_one({"_id": "reborn", "p": [1.0, 1.0]})
    w.create_search_index(SearchIndexModel(name="pts", type="vectorSearch", definition={
        "fields": [{"type": "vector", "path": "p", "numDimensions": 2, "similarity": "euclidean"}]}))
    wait_ready(r, "pts")
    assert sorted(nearest(r, [1.0, 1.0], n=5)) == ["early", "reborn"]


def test_delete_heavy_load_keeps_the_index_compact(colls):
    w, r = colls
    for round_ in range(3):
        w.insert_many([{"_id": f"churn{round_}-{i}", "p": [float(i), 5000.0 + round_]} for i in range(1500)])
        w.delete_many({"_id": {"$regex": f"^churn{round_}-"}})
    progress = list(r.list_search_indexes("pts"))[0]["progress"]
    live = progress["vectorsIndexed"]
    assert live == 100
    # 4,500 vectors came and went; the slots held stay bounded by
    # max(live, 1024) dead ones plus the live ones.
    assert progress["slots"] <= live + 1024 + 1500, progress
    assert nearest(r, [3.0, 0.0]) == [3]
    assert not [i for i in nearest(r, [700.0, 5001.0], n=5) if str(i).startswith("churn")]

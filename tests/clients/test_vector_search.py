"""Semantic indexes through the proxy with pymongo's own helpers:
create/list/update/drop, builds with progress, $vectorSearch and $like
against an exact oracle, filters that return k, errors, and restarts."""

import math
import random
import re
import urllib.request

import pytest
from bson.binary import Binary, BinaryVectorDtype
from pymongo import MongoClient
from pymongo.errors import OperationFailure
from pymongo.operations import SearchIndexModel

from conftest import start_proxy, wait_ready

N = 10_000
DIMS = 16
K = 10


def vector_of(i):
    rng = random.Random(i)
    centre = random.Random(i % 25).random
    return [centre() * 4 + rng.gauss(0, 1) for _ in range(DIMS)]


def l2(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def definition(similarity="euclidean", path="v"):
    return {"fields": [{"type": "vector", "path": path, "numDimensions": DIMS, "similarity": similarity},
                       {"type": "filter", "path": "sel"}]}



@pytest.fixture(scope="module")
def client(proxy_uri):
    with MongoClient(proxy_uri) as c:
        yield c


@pytest.fixture(scope="module")
def docs(client):
    """A collection of N vectors plus a few bad documents, indexed twice."""
    db = client.vector_suite
    db.drop_collection("docs")
    rows = [{"_id": i, "v": vector_of(i), "sel": (i * 7919) % N, "cat": i % 10} for i in range(N)]
    db.docs.insert_many(rows)
    # A BinData float32 vector is indexed like an array (and joins the
    # oracle's rows); the other three are skipped. None matches a filter.
    packed = vector_of(N + 7)
    db.docs.insert_many([
        {"_id": "bindata", "v": Binary.from_vector(packed, BinaryVectorDtype.FLOAT32), "sel": N + 1, "cat": -1},
        {"_id": "missing", "sel": N + 2},
        {"_id": "short", "v": [1.0, 2.0], "sel": N + 3},
        {"_id": "text", "v": ["a"] * DIMS, "sel": N + 4},
    ])
    rows.append({"_id": "bindata", "v": [float(x) for x in Binary.from_vector(
        packed, BinaryVectorDtype.FLOAT32).as_vector().data], "sel": N + 1, "cat": -1})
    db.docs.create_search_index(SearchIndexModel(name="l2", type="vectorSearch", definition=definition()))
    info, statuses = wait_ready(db.docs, "l2")
    db.docs.create_search_index(SearchIndexModel(name="cos", type="vectorSearch",
                                                 definition=definition("cosine")))
    wait_ready(db.docs, "cos")
    yield db.docs, rows, info, statuses
    db.drop_collection("docs")


def exact(rows, query, k, keep=lambda r: True, metric="euclidean"):
    scored = [(l2(r["v"], query) if metric == "euclidean" else -cos(r["v"], query), r["_id"])
              for r in rows if keep(r)]
    scored.sort(key=lambda pair: pair[0])
    return [i for _, i in scored[:k]]


def test_build_reports_progress_and_skips_bad_documents(docs):
    coll, rows, info, statuses = docs
    assert statuses[-1] == "READY"
    assert info["type"] == "vectorSearch" and info["queryable"] is True
    assert info["latestDefinition"] == definition()
    progress = info["progress"]
    assert progress["documentsTotal"] == N + 4
    assert progress["documentsScanned"] == N + 4
    assert progress["vectorsIndexed"] == N + 1  # the BinData vector counts
    assert progress["documentsSkipped"] == 3
    names = sorted(i["name"] for i in coll.list_search_indexes())
    assert names == ["cos", "l2"]


def test_list_search_indexes_command_form_and_name_filter(client, docs):
    reply = client.vector_suite.command({"listSearchIndexes": "docs", "name": "cos"})
    batch = reply["cursor"]["firstBatch"]
    assert [i["name"] for i in batch] == ["cos"]
    assert reply["cursor"]["ns"] == "vector_suite.docs" and reply["cursor"]["id"] == 0
    by_id = list(docs[0].aggregate([{"$listSearchIndexes": {"id": batch[0]["id"]}}]))
    assert [i["name"] for i in by_id] == ["cos"]


def test_vector_search_matches_the_exact_oracle_with_scores(docs):
    coll, rows, _, _ = docs
    misses = 0
    for qi in range(20):
        query = vector_of(50_000 + qi)
        got = list(coll.aggregate([
            {"$vectorSearch": {"index": "l2", "path": "v", "queryVector": query,
                               "numCandidates": 200, "limit": K}},
            {"$project": {"score": {"$meta": "vectorSearchScore"}}},
        ]))
        assert len(got) == K
        want = exact(rows, query, K)
        misses += len(set(want) - {d["_id"] for d in got})
        scores = [d["score"] for d in got]
        assert scores == sorted(scores, reverse=True)
        by_id = {r["_id"]: r for r in rows}
        for d in got:
            assert d["score"] == pytest.approx(1 / (1 + l2(by_id[d["_id"]]["v"], query)), rel=1e-4)
    assert misses <= 0.05 * 20 * K, misses


def test_exact_mode_equals_the_oracle_for_cosine(docs):
    coll, rows, _, _ = docs
    query = vector_of(77_777)
    got = list(coll.aggregate([
        {"$vectorSearch": {"index": "cos", "path": "v", "queryVector": query, "limit": K, "exact": True}},
        {"$addFields": {"score": {"$meta": "vectorSearchScore"}}},
    ]))
    assert [d["_id"] for d in got] == exact(rows, query, K, metric="cosine")
    by_id = {r["_id"]: r for r in rows}
    for d in got:
        assert d["score"] == pytest.approx((1 + cos(by_id[d["_id"]]["v"], query)) / 2, rel=1e-4)


@pytest.mark.parametrize("threshold", [10, 100, 1000, 5000])  # 0.1%, 1%, 10%, 50%
def test_filters_always_return_k_with_high_recall(docs, threshold):
    coll, rows, _, _ = docs
    found = 0
    for qi in range(10):
        query = vector_of(90_000 + qi)
        got = list(coll.aggregate([
            {"$vectorSearch": {"index": "l2", "path": "v", "queryVector": query, "numCandidates": 100,
                               "limit": K, "filter": {"sel": {"$lt": threshold}}}},
            {"$project": {"sel": 1}},
        ]))
        assert len(got) == K, f"{len(got)} results at selectivity {threshold / N:.1%}"
        assert all(0 <= d["sel"] < threshold for d in got)
        want = exact(rows, query, K, keep=lambda r: r["sel"] < threshold)
        found += len(set(want) & {d["_id"] for d in got})
    assert found / (10 * K) >= 0.95, found


def test_later_stages_run_upstream(docs):
    coll, _, _, _ = docs
    out = list(coll.aggregate([
        {"$vectorSearch": {"index": "l2", "path": "v", "queryVector": vector_of(3), "numCandidates": 50,
                           "limit": 20}},
        {"$group": {"_id": "$cat", "n": {"$sum": 1}}},
        {"$sort": {"n": -1, "_id": 1}},
    ]))
    assert sum(g["n"] for g in out) == 20


def test_like_find_with_exact_filter_projection_and_small_batches(docs):
    coll, rows, _, _ = docs
    query = vector_of(123_456)
    cursor = coll.find({"$like": {"vector": query, "n": 25, "semantic_index": "l2", "exact": True},
                        "cat": {"$in": [1, 2, 3]}},
                       {"cat": 1, "score": {"$meta": "vectorSearchScore"}}).batch_size(2)
    got = list(cursor)
    # $like takes the n nearest matching the exact filter, in similarity order.
    want = exact(rows, query, 25, keep=lambda r: r["cat"] in (1, 2, 3))
    assert [d["_id"] for d in got] == want
    assert all(set(d) == {"_id", "cat", "score"} for d in got)
    scores = [d["score"] for d in got]
    assert scores == sorted(scores, reverse=True)
    # find_one and count_documents see the same result.
    first = coll.find_one({"$like": {"vector": query, "n": 25, "semantic_index": "l2", "exact": True},
                           "cat": {"$in": [1, 2, 3]}})
    assert first["_id"] == want[0]
    assert coll.count_documents({"$like": {"vector": query, "n": 25, "semantic_index": "l2"},
                                 "cat": {"$in": [1, 2, 3]}}) == 25
    assert coll.count_documents({"$like": {"vector": query, "n": 25, "semantic_index": "l2"},
                                 "cat": 99}) == 0


def test_plain_vector_queries_come_back_in_similarity_order(docs):
    """Nothing after the ranking: the upstream only fetches and the proxy
    orders the batch itself."""
    coll, rows, _, _ = docs
    for qi in range(5):
        query = vector_of(60_000 + qi)
        want = exact(rows, query, K)
        got = coll.aggregate([{"$vectorSearch": {"index": "l2", "path": "v", "queryVector": query,
                                                 "limit": K, "exact": True}}])
        assert [d["_id"] for d in got] == want
        got = list(coll.find({"$like": {"vector": query, "n": K, "semantic_index": "l2", "exact": True}},
                             {"cat": 1}))
        assert [d["_id"] for d in got] == want
        assert all(set(d) == {"_id", "cat"} for d in got)
        near_three = [r for r in rows if r["cat"] == 3]
        got = coll.find({"$like": {"vector": query, "n": K, "semantic_index": "l2", "exact": True}, "cat": 3})
        assert [d["_id"] for d in got] == exact(near_three, query, K)


def test_results_larger_than_one_batch_still_come_in_order(client):
    """12 documents of 1.5 MB exceed a 16 MB batch: the proxy cannot order
    them in one batch and lets the upstream do it, across getMores."""
    coll = client.vector_suite.big
    coll.drop()
    rows = [{"_id": i, "v": vector_of(i), "pad": "x" * 1_500_000} for i in range(12)]
    coll.insert_many(rows)
    coll.create_search_index(SearchIndexModel(name="big", type="vectorSearch", definition=definition()))
    wait_ready(coll, "big")
    query = vector_of(5)
    want = exact(rows, query, 12)
    got = coll.aggregate([{"$vectorSearch": {"index": "big", "path": "v", "queryVector": query,
                                             "limit": 12, "exact": True}}])
    assert [d["_id"] for d in got] == want
    got = coll.find({"$like": {"vector": query, "n": 12, "semantic_index": "big", "exact": True}})
    assert [d["_id"] for d in got] == want
    assert client.vector_suite.command("ping")["ok"] == 1
    coll.drop()


def test_like_by_document_id(docs):
    coll, rows, _, _ = docs
    target = rows[42]
    for spec in ({"_id": 42}, {"document": {"_id": 42}}):
        got = [d["_id"] for d in coll.find({"$like": {**spec, "n": 5, "semantic_index": "l2",
                                                      "exact": True}})]
        assert got == exact(rows, target["v"], 5)
        assert got[0] == 42


def test_semantic_index_may_be_omitted_only_when_unambiguous(client, docs):
    coll, _, _, _ = docs
    with pytest.raises(OperationFailure, match="several search indexes"):
        list(coll.find({"$like": {"vector": vector_of(1), "n": 3}}))
    single = client.vector_suite.single
    single.drop()
    single.insert_many([{"_id": i, "e": [float(i), 1.0]} for i in range(50)])
    single.create_search_index(SearchIndexModel(name="only", type="vectorSearch", definition={
        "fields": [{"type": "vector", "path": "e", "numDimensions": 2, "similarity": "euclidean"}]}))
    wait_ready(single, "only")
    assert [d["_id"] for d in single.find({"$like": {"vector": [10.2, 1.0], "n": 3}})] == [10, 11, 9]
    single.drop_search_index("only")
    single.drop()


@pytest.mark.parametrize("command,code,needle", [
    ({"aggregate": "docs", "pipeline": [{"$vectorSearch": {"index": "l2", "path": "v", "queryVector": [0.0] * 3,
                                                           "numCandidates": 10, "limit": 1}}], "cursor": {}},
     2, "dimensions"),
    ({"aggregate": "docs", "pipeline": [{"$vectorSearch": {"index": "l2", "path": "v", "queryVector": ["x"] * DIMS,
                                                           "numCandidates": 10, "limit": 1}}], "cursor": {}},
     2, "queryVector"),
    ({"aggregate": "docs", "pipeline": [{"$vectorSearch": {"index": "l2", "path": "v", "queryVector": [0.0] * DIMS,
                                                           "numCandidates": 10, "limit": 11}}], "cursor": {}},
     2, "numCandidates"),
    ({"aggregate": "docs", "pipeline": [{"$match": {}}, {"$vectorSearch": {"index": "l2"}}], "cursor": {}},
     40602, "first stage"),
    ({"aggregate": "docs", "pipeline": [{"$vectorSearch": {"index": "l2", "path": "v", "queryVector": [0.0] * DIMS,
                                                           "numCandidates": 10, "limit": 1,
                                                           "filter": {"$like": {"vector": [1]}}}}],
      "cursor": {}}, 2, "$like"),
    ({"find": "docs", "filter": {"$like": {"vector": [0.0] * DIMS, "n": 0, "semantic_index": "l2"}}}, 2, "positive"),
    ({"find": "docs", "filter": {"$like": {"vector": [0.0] * DIMS, "n": 10_001, "semantic_index": "l2"}}}, 2,
     "at most"),
    ({"find": "docs", "filter": {"$or": [{"$like": {"vector": [0.0] * DIMS}}, {"cat": 1}]}}, 2, "top level"),
    ({"find": "docs", "filter": {"$like": {"document": {"text": "hello"}, "semantic_index": "l2"}}}, 2, "model"),
])
def test_bad_vector_queries_get_mongodb_errors_and_the_connection_survives(client, docs, command, code,
                                                                           needle):
    db = client.vector_suite
    with pytest.raises(OperationFailure) as err:
        db.command(command)
    assert err.value.code == code, err.value.details
    assert needle in err.value.details["errmsg"]
    assert err.value.details["codeName"]
    assert db.command("ping")["ok"] == 1


def test_explain_shows_strategy_and_rewritten_command(client, docs):
    db = client.vector_suite
    plan = db.command("explain", {"find": "docs", "filter": {
        "$like": {"vector": vector_of(5), "n": 4, "semantic_index": "l2"}, "sel": {"$lt": 100}}})
    likewise = plan["likewise"]
    assert likewise["strategy"].startswith("exact scan of filter matches")
    assert likewise["filterMatches"] == 100
    assert likewise["candidatesExamined"] == 100
    assert likewise["results"] == 4
    assert likewise["rewrittenCommand"]["aggregate"] == "docs"
    assert "queryPlanner" in plan
    graph = db.command("explain", {"aggregate": "docs", "cursor": {}, "pipeline": [{"$vectorSearch": {
        "index": "l2", "path": "v", "queryVector": vector_of(5), "numCandidates": 50, "limit": 5}}]})
    assert graph["likewise"]["strategy"] == "graph search"
    assert 50 <= graph["likewise"]["candidatesExamined"] < N


def test_update_rebuilds_and_drop_removes(client):
    coll = client.vector_suite.lifecycle
    coll.drop()
    coll.insert_many([{"_id": i, "v": vector_of(i)} for i in range(300)])
    coll.create_search_index(SearchIndexModel(name="life", type="vectorSearch", definition=definition()))
    wait_ready(coll, "life")
    coll.update_search_index("life", definition("cosine"))
    info, _ = wait_ready(coll, "life")
    assert info["latestDefinition"]["fields"][0]["similarity"] == "cosine"
    got = list(coll.aggregate([{"$vectorSearch": {"index": "life", "path": "v", "queryVector": vector_of(7),
                                                  "limit": 3, "exact": True}}]))
    rows = [{"_id": i, "v": vector_of(i)} for i in range(300)]
    assert [d["_id"] for d in got] == exact(rows, vector_of(7), 3, metric="cosine")
    coll.drop_search_index("life")
    assert list(coll.list_search_indexes()) == []
    # Atlas: an index that does not exist finds nothing.
    assert list(coll.aggregate([{"$vectorSearch": {"index": "life", "path": "v", "queryVector": vector_of(7),
                                                   "limit": 3, "exact": True}}])) == []
    coll.drop()


def test_definitions_survive_a_restart(client, direct_uri):
    coll = client.vector_suite.durable
    coll.drop()
    coll.insert_many([{"_id": i, "v": vector_of(i)} for i in range(200)])
    coll.create_search_index(SearchIndexModel(name="kept", type="vectorSearch", definition=definition()))
    wait_ready(coll, "kept")
    second = start_proxy(direct_uri, log_level="info")
    try:
        with MongoClient(f"mongodb://{second.address}/") as other:
            try:
                info, _ = wait_ready(other.vector_suite.durable, "kept")
            except Exception as e:
                raise AssertionError("the restarted proxy's log:\n" + "".join(second.lines)) from e
            assert info["latestDefinition"] == definition()
            got = list(other.vector_suite.durable.find({"$like": {"_id": 3, "n": 2}}))
            assert got[0]["_id"] == 3
    finally:
        second.stop()
    coll.drop_search_index("kept")
    coll.drop()


def test_vector_results_are_limited_by_the_operator():
    """`--max-vector-results 5`: larger limits and `n` get BadValue on a
    connection that keeps working; 5 is served. (An upstream of its own, so
    the index definition stays out of the shared one.)"""
    from conftest import start_upstream

    upstream = start_upstream()
    proxy = start_proxy(f"mongodb://{upstream.address}/", "--max-vector-results", "5")
    try:
        with MongoClient(f"mongodb://{proxy.address}/") as c:
            coll = c.limits.docs
            coll.insert_many([{"_id": i, "v": vector_of(i)} for i in range(50)])
            coll.create_search_index(SearchIndexModel(name="l2", type="vectorSearch", definition=definition()))
            wait_ready(coll, "l2")
            stage = {"index": "l2", "path": "v", "queryVector": vector_of(1), "numCandidates": 50}
            for command in ([{"$vectorSearch": {**stage, "limit": 6}}], {"$like": {"vector": vector_of(1), "n": 6}}):
                with pytest.raises(OperationFailure) as err:
                    if isinstance(command, list):
                        list(coll.aggregate(command))
                    else:
                        list(coll.find(command))
                assert err.value.code == 2, err.value.details
                assert "at most 5" in err.value.details["errmsg"]
            assert len(list(coll.aggregate([{"$vectorSearch": {**stage, "limit": 5}}]))) == 5
            assert len(list(coll.find({"$like": {"vector": vector_of(1), "n": 5}}))) == 5
    finally:
        proxy.stop()
        upstream.stop()


def test_target_recall_chooses_the_breadth(client, proxy):
    """`targetRecall`: queries naming no `numCandidates` search as broadly
    as recall@10, measured against exact search on sampled queries, says
    the target needs; held-out queries then reach it (within 0.02), and the
    listing and metrics report what was measured. Without `targetRecall`,
    `$vectorSearch` still needs `numCandidates`, as on Atlas."""
    coll = client.vector_suite.tuned
    coll.drop()
    rng = random.Random(7)
    rows = [[rng.gauss(0, 1) for _ in range(DIMS)] for _ in range(4000)]
    coll.insert_many([{"_id": i, "v": v} for i, v in enumerate(rows)])
    coll.create_search_index(SearchIndexModel({"fields": [
        {"type": "vector", "path": "v", "numDimensions": DIMS, "similarity": "euclidean",
         "targetRecall": 0.95, "hnswOptions": {"maxEdges": 16, "numEdgeCandidates": 100}}]},
        name="tuned", type="vectorSearch"))
    coll.create_search_index(SearchIndexModel(definition(), name="plain", type="vectorSearch"))
    wait_ready(coll, "tuned")
    wait_ready(coll, "plain")

    def query(q, index="tuned", **extra):
        stage = {"index": index, "path": "v", "queryVector": q, "limit": K, **extra}
        return [d["_id"] for d in coll.aggregate([{"$vectorSearch": stage}])]

    with pytest.raises(OperationFailure) as e:
        query(rows[0], index="plain")
    assert e.value.code == 2 and "numCandidates" in str(e.value)

    def tuned():
        listed = list(coll.list_search_indexes("tuned"))[0]
        return listed.get("recall", [{}])[0]

    # The first measurement comes once 256 queries are sampled.
    samples = [[rng.gauss(0, 1) for _ in range(DIMS)] for _ in range(400)]
    for q in samples[:256]:
        query(q)
    wait = 0
    while "measured" not in tuned():
        query(samples[256 + wait % 144])
        wait += 1
        assert wait < 5000, tuned()
    report = tuned()
    assert report["target"] == 0.95 and report["measured"] >= 0.95 and report["numCandidates"] >= K
    # The metric exports the same measurement (no query ran since).
    with urllib.request.urlopen(f"http://{proxy.metrics_at}/metrics", timeout=10) as response:
        exported = response.read().decode()
    series = re.search(r'^likewise_index_recall\{[^}]*index="tuned"[^}]*\} (\S+)$', exported, re.M)
    assert series, "likewise_index_recall missing for the tuned index"
    assert float(series.group(1)) == pytest.approx(report["measured"])
    explained = client.vector_suite.command({"explain": {"aggregate": "tuned", "cursor": {}, "pipeline": [
        {"$vectorSearch": {"index": "tuned", "path": "v", "queryVector": rows[0], "limit": K}}]}})
    recall = explained["likewise"]["recall"]
    assert recall["target"] == 0.95 and recall["numCandidates"] >= K
    # (A measurement this query made due may land first: not compared.)
    assert 0.9 <= recall["measured"] <= 1.0, recall
    held_out = [[rng.gauss(0, 1) for _ in range(DIMS)] for _ in range(300)]
    found = wanted = 0
    for q in held_out:
        truth = set(query(q, exact=True))
        found += len(truth & set(query(q)))
        wanted += len(truth)
    print(f"\ntargetRecall 0.95: {report}; held-out recall@10 {found / wanted:.3f}")
    # 0.95 ± 0.02, as issue 19 asks; a little more room above, where a
    # breadth one step wider than needed lands on this steep curve.
    assert 0.93 <= found / wanted <= 0.98, (found / wanted, report)


@pytest.mark.parametrize("quantization,floor", [("scalar", 0.95), ("binary", 0.85)])
def test_quantized_indexes_rescore_with_the_full_vectors(direct_uri, tmp_path, quantization, floor):
    """Atlas's `quantization`: the graph walks int8 (scalar) or one-bit
    (binary) codes and the best `k × oversampling` candidates are rescored
    with the full vectors, so scores are exact and recall@10 against the
    exact oracle stays high; writes are searched at once, and a restart
    from the data directory's snapshot answers the same."""
    dims = 48
    rng = random.Random(5)
    centres = [[rng.gauss(0, 1) for _ in range(dims)] for _ in range(30)]
    rows = [[c + rng.gauss(0, 0.7) for c in centres[i % 30]] for i in range(3000)]
    field = {"type": "vector", "path": "v", "numDimensions": dims, "similarity": "cosine",
             "quantization": quantization}
    data_dir = tmp_path / "data"
    proxy = start_proxy(direct_uri, "--data-dir", str(data_dir))
    try:
        with MongoClient(f"mongodb://{proxy.address}/") as client:
            coll = client.vector_suite[f"quantized_{quantization}"]
            coll.drop()
            coll.insert_many([{"_id": i, "v": v} for i, v in enumerate(rows)])
            coll.create_search_index(SearchIndexModel({"fields": [field]}, name="q",
                                                      type="vectorSearch"))
            info, _ = wait_ready(coll, "q")
            assert info["latestDefinition"]["fields"][0]["quantization"] == quantization
            # Codes are what the graph holds: a byte per dimension, or a bit.
            row = dims if quantization == "scalar" else dims // 8
            assert info["progress"]["vectorBytes"] == len(rows) * row

            def search(q, exact=False):
                stage = {"index": "q", "path": "v", "queryVector": q, "limit": K,
                         **({"exact": True} if exact else {"numCandidates": 100})}
                return [(d["_id"], d["s"]) for d in coll.aggregate([
                    {"$vectorSearch": stage},
                    {"$project": {"s": {"$meta": "vectorSearchScore"}}}])]

            queries = [[c + rng.gauss(0, 0.7) for c in centres[j % 30]] for j in range(40)]
            found = 0
            for q in queries:
                truth = search(q, exact=True)
                got = search(q)
                found += len({i for i, _ in truth} & {i for i, _ in got})
                # Rescored: each score is the exact one for its document.
                for i, s in got:
                    assert s == pytest.approx((1 + cos(q, rows[i])) / 2, abs=1e-5)
            assert found / (len(queries) * K) >= floor
            # A write is searched by the next query.
            coll.insert_one({"_id": "new", "v": queries[0]})
            assert search(queries[0])[0][0] == "new"
            coll.delete_one({"_id": "new"})
            assert "new" not in [i for i, _ in search(queries[0])]
            before = [search(q) for q in queries[:5]]
    finally:
        proxy.stop()
    again = start_proxy(direct_uri, "--data-dir", str(data_dir))
    try:
        with MongoClient(f"mongodb://{again.address}/") as client:
            coll = client.vector_suite[f"quantized_{quantization}"]
            wait_ready(coll, "q")

            def ids(q):
                return [d["_id"] for d in coll.aggregate([{"$vectorSearch": {
                    "index": "q", "path": "v", "queryVector": q, "limit": K,
                    "numCandidates": 100}}])]

            assert [ids(q) for q in queries[:5]] == [[i for i, _ in b] for b in before]
            coll.drop()
    finally:
        again.stop()


def test_quantization_options_are_checked(client):
    coll = client.vector_suite.quantization_options
    coll.drop()
    coll.insert_one({"_id": 1, "v": [1.0, 2.0]})
    for field, message in (
        ({"quantization": "int4"}, "'quantization'"),
        ({"quantization": "scalar", "oversampling": 0}, "'oversampling'"),
        ({"oversampling": 3}, "needs a 'quantization'"),
    ):
        with pytest.raises(OperationFailure) as e:
            coll.create_search_index(SearchIndexModel({"fields": [
                {"type": "vector", "path": "v", "numDimensions": 2, "similarity": "cosine", **field}]},
                name="bad", type="vectorSearch"))
        assert message in str(e.value), field
    coll.drop()

"""Apps written for Atlas, unchanged: the pipeline shapes, projections,
index administration answers and listing shapes Atlas gives, through the
proxy with pymongo. Each expected answer is worked out independently: from
the ranked ids and scores of a plain `$vectorSearch`, from an exact oracle,
or by the upstream running the same later stages over plain documents."""

import math
import threading

import pytest
from bson.son import SON
from pymongo import MongoClient
from pymongo.errors import OperationFailure
from pymongo.operations import SearchIndexModel

from conftest import eventually, start_proxy, wait_ready
from embed_server import EmbedServer

DIMS = 8
N = 400
K = 10
META = {"$meta": "vectorSearchScore"}


def vector_of(i):
    return [math.sin(i * 0.7 + d) + (i % 7) * 0.1 for d in range(DIMS)]


def l2(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


QUERY = [0.3] * DIMS


@pytest.fixture(scope="module")
def client(proxy_uri):
    with MongoClient(proxy_uri) as c:
        yield c


@pytest.fixture(scope="module")
def items(client):
    db = client.atlas_shapes
    db.drop_collection("items")
    db.drop_collection("kinds")
    rows = [{"_id": i, "v": vector_of(i), "kind": ["pinned", "plain", "draft"][i % 3],
             "title": f"item {i}", "n": i} for i in range(N)]
    db.items.insert_many(rows)
    db.kinds.insert_many([{"_id": k, "label": k.upper()} for k in ("pinned", "plain", "draft")])
    db.items.create_search_index(SearchIndexModel(
        {"fields": [{"type": "vector", "path": "v", "numDimensions": DIMS, "similarity": "euclidean"},
                    {"type": "filter", "path": "kind"}]},
        name="vec", type="vectorSearch"))
    wait_ready(db.items, "vec")
    by_id = {r["_id"]: r for r in rows}
    return db, by_id


def vs(limit=K, **extra):
    return {"$vectorSearch": {"index": "vec", "path": "v", "queryVector": QUERY,
                              "limit": limit, "exact": True, **extra}}


def ranked(db, limit=K):
    """(ids, scores) of the plain query, checked against the exact oracle."""
    got = list(db.items.aggregate([vs(limit), {"$project": {"score": META}}]))
    return [d["_id"] for d in got], [d["score"] for d in got]


def test_oracle(items):
    db, by_id = items
    ids, scores = ranked(db)
    want = sorted(by_id, key=lambda i: l2(by_id[i]["v"], QUERY))[:K]
    assert ids == want
    for i, s in zip(ids, scores):
        assert s == pytest.approx(1 / (1 + l2(by_id[i]["v"], QUERY)), rel=1e-4)


def test_meta_in_an_exclusion_projection(items):
    """The most common shape in public $vectorSearch code: an exclusion
    projection with the score (mongod: $meta does not make it inclusion)."""
    db, by_id = items
    ids, scores = ranked(db)
    got = list(db.items.aggregate([vs(), {"$project": {"v": 0, "score": META}}]))
    assert [d["_id"] for d in got] == ids
    for d, s in zip(got, scores):
        assert "v" not in d
        assert d["title"] == by_id[d["_id"]]["title"] and d["kind"] == by_id[d["_id"]]["kind"]
        assert d["score"] == pytest.approx(s)
    # `_id: 0` with an exclusion: the score is still the document's own.
    got = list(db.items.aggregate([vs(), {"$project": {"_id": 0, "v": 0, "score": META}}]))
    assert [d["n"] for d in got] == ids and "_id" not in got[0]
    assert [d["score"] for d in got] == pytest.approx(scores)
    # In aggregate a projection of only `_id: 0` and the score includes
    # (mongod's computeProjectionType); in find it excludes.
    got = list(db.items.aggregate([vs(), {"$project": {"_id": 0, "score": META}}]))
    assert got == [{"score": pytest.approx(s)} for s in scores]
    like = {"$like": {"vector": QUERY, "n": K, "exact": True}}
    got = list(db.items.find(like, {"_id": 0, "score": META}))
    assert [d["n"] for d in got] == ids
    assert all("v" in d and "_id" not in d for d in got)
    assert [d["score"] for d in got] == pytest.approx(scores)
    got = list(db.items.find(like, {"v": 0, "score": META}))
    assert [d["_id"] for d in got] == ids and all("v" not in d for d in got)
    got = list(db.items.find(like, {"_id": 0, "title": 1, "score": META}))
    assert got == [{"title": f"item {i}", "score": pytest.approx(s)} for i, s in zip(ids, scores)]


def test_every_later_stage(items):
    db, by_id = items
    ids, scores = ranked(db)
    score = dict(zip(ids, scores))
    cut = scores[K // 2]
    # $set, a computed field, $match on the score, $unset.
    got = list(db.items.aggregate([
        vs(), {"$set": {"s": META, "double": {"$multiply": ["$n", 2]}}},
        {"$match": {"s": {"$gte": cut}}}, {"$unset": ["v", "title"]}]))
    assert [d["_id"] for d in got] == [i for i in ids if score[i] >= cut]
    assert all(d["double"] == 2 * d["n"] and "v" not in d and "title" not in d for d in got)
    # $match with $expr on the metadata itself.
    got = list(db.items.aggregate([vs(), {"$match": {"$expr": {"$lt": [META, cut]}}},
                                   {"$project": {"_id": 1}}]))
    assert [d["_id"] for d in got] == [i for i in ids if score[i] < cut]
    # $count.
    assert list(db.items.aggregate([vs(), {"$count": "hits"}])) == [{"hits": K}]
    # $sort by the score (highest first, as mongod sorts metadata) after a
    # sort that scrambled the rank.
    got = list(db.items.aggregate([vs(), {"$sort": {"n": 1}}, {"$sort": {"s": META}},
                                   {"$project": {"_id": 1}}]))
    assert [d["_id"] for d in got] == ids
    # $facet after the vector stage, with an exclusion projection inside.
    got = list(db.items.aggregate([vs(), {"$facet": {
        "top": [{"$limit": 3}, {"$project": {"v": 0, "score": META}}],
        "byKind": [{"$group": {"_id": "$kind", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]}}]))
    assert [d["_id"] for d in got[0]["top"]] == ids[:3]
    assert [d["score"] for d in got[0]["top"]] == pytest.approx(scores[:3])
    kinds = {}
    for i in ids:
        kinds[by_id[i]["kind"]] = kinds.get(by_id[i]["kind"], 0) + 1
    assert got[0]["byKind"] == [{"_id": k, "n": kinds[k]} for k in sorted(kinds)]
    # $lookup after it, the score passed in through `let`.
    got = list(db.items.aggregate([vs(), {"$lookup": {
        "from": "kinds", "localField": "kind", "foreignField": "_id", "as": "k",
        "let": {"s": META}, "pipeline": [{"$project": {"label": 1, "s": "$$s"}}]}},
        {"$project": {"k": 1}}]))
    assert [d["_id"] for d in got] == ids
    for d, s in zip(got, scores):
        assert d["k"] == [{"_id": by_id[d["_id"]]["kind"], "label": by_id[d["_id"]]["kind"].upper(),
                           "s": pytest.approx(s)}]
    # The same later stages run by the upstream over the plain documents in
    # rank order give the same answer.
    later = [{"$group": {"_id": "$kind", "top": {"$first": "$n"}, "c": {"$sum": 1}}},
             {"$sort": {"c": -1, "_id": 1}}]
    plain = [{"$match": {"_id": {"$in": ids}}},
             {"$addFields": {"r": {"$indexOfArray": [ids, "$_id"]}}}, {"$sort": {"r": 1}}]
    assert list(db.items.aggregate([vs(), *later])) == list(db.items.aggregate(plain + later))


def test_missing_namespaces_get_atlas_answers(client):
    db = client.atlas_shapes_missing
    db.drop_collection("never_created")
    coll = db.never_created
    coll.drop_search_index("x")  # NamespaceNotFound, which pymongo suppresses
    for command in ({"dropSearchIndex": "never_created", "name": "x"},
                    {"updateSearchIndex": "never_created", "name": "x", "definition": {"fields": []}},
                    {"createSearchIndexes": "never_created", "indexes": [{
                        "name": "x", "type": "vectorSearch", "definition": {"fields": [
                            {"type": "vector", "path": "v", "numDimensions": 2, "similarity": "cosine"}]}}]}):
        with pytest.raises(OperationFailure) as e:
            db.command(command)
        assert e.value.code == 26 and e.value.details["codeName"] == "NamespaceNotFound", command
        assert "does not exist" in e.value.details["errmsg"]
    assert list(coll.list_search_indexes()) == []
    assert "never_created" not in db.list_collection_names()
    # An existing collection without the index: IndexNotFound.
    db.drop_collection("exists")
    db.exists.insert_one({"_id": 1})
    with pytest.raises(OperationFailure) as e:
        db.command({"dropSearchIndex": "exists", "name": "x"})
    assert e.value.code == 27
    for target, message in (({}, "Must set either 'name' or 'id'."),
                            ({"name": "x", "id": "y"}, "Cannot set both 'name' and 'id'.")):
        with pytest.raises(OperationFailure) as e:
            db.command({"dropSearchIndex": "exists", **target})
        assert e.value.code == 72 and e.value.details["errmsg"] == message


def test_stages_after_list_search_indexes_run(items):
    db, _ = items
    assert list(db.items.aggregate([{"$listSearchIndexes": {}}, {"$match": {"name": "does-not-exist"}}])) == []
    assert list(db.items.aggregate([{"$listSearchIndexes": {}}, {"$match": {"queryable": True}},
                                    {"$project": {"_id": 0, "name": 1}}])) == [{"name": "vec"}]
    assert list(db.items.aggregate([{"$listSearchIndexes": {}}, {"$count": "n"}])) == [{"n": 1}]
    got = list(db.items.aggregate([{"$listSearchIndexes": {"name": "vec"}},
                                   {"$project": {"name": 1, "status": 1, "type": 1}}]))
    assert got == [{"name": "vec", "status": "READY", "type": "vectorSearch"}]
    with pytest.raises(OperationFailure) as e:
        list(db.items.aggregate([{"$listSearchIndexes": {}}, {"$nonsense": {}}]))
    assert e.value.code == 40324  # mongod's "Unrecognized pipeline stage name"


def test_listing_has_atlas_shape(items):
    db, _ = items
    [info] = db.items.list_search_indexes("vec")
    assert info["status"] == "READY" and info["queryable"] is True
    assert set(info["latestDefinitionVersion"]) == {"version", "createdAt"}
    assert info["latestDefinitionVersion"]["version"] == 0
    [host] = info["statusDetail"]
    assert host["status"] == "READY" and host["queryable"] is True
    main = host["mainIndex"]
    assert main["status"] == "READY" and main["definition"] == info["latestDefinition"]
    assert main["definitionVersion"] == info["latestDefinitionVersion"]
    assert "stagedIndex" not in host


class GatedEmbedServer(EmbedServer):
    """The test endpoint, whose answers wait while `gate` is closed."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Semaphore(0)
        handler = self.httpd.RequestHandlerClass
        original = handler.do_POST
        server = self

        def gated(request):
            if not server.gate.is_set():
                server.waiting.release()
                server.gate.wait(120)
            original(request)

        handler.do_POST = gated


def test_update_keeps_serving_the_old_definition_until_the_new_one_is_ready(direct_uri):
    """An `updateSearchIndex` stages the new definition: queries keep being
    answered by the old one, the listing shows both (Atlas's mainIndex and
    stagedIndex), and the new one takes over once built. The new build is
    held back by an embedding endpoint that waits, so the window is certain."""
    server = GatedEmbedServer()
    proxy = start_proxy(direct_uri, "--allow-model-host", server.host_port)
    client = MongoClient(f"mongodb://127.0.0.1:{proxy.port}/")
    db = client.atlas_shapes_update
    try:
        db.drop_collection("docs")
        db.docs.insert_many([{"_id": i, "v": [float(i), 1.0], "text": f"word{i} common"} for i in range(50)])
        db.docs.create_search_index(SearchIndexModel(
            {"fields": [{"type": "vector", "path": "v", "numDimensions": 2, "similarity": "euclidean"}]},
            name="u", type="vectorSearch"))
        wait_ready(db.docs, "u")
        query = [{"$vectorSearch": {"index": "u", "path": "v", "queryVector": [7.2, 1.0],
                                    "numCandidates": 50, "limit": 2}}, {"$project": {"_id": 1}}]
        assert [d["_id"] for d in db.docs.aggregate(query)] == [7, 8]
        db.command({"createModel": "gated", "kind": "http", "url": server.url, "model": "m",
                    "dimensions": 64, "timeoutMS": 120_000})
        server.gate.clear()
        db.command(SON([("updateSearchIndex", "docs"), ("name", "u"),
                        ("definition", {"models": ["gated"], "keys": ["text"]})]))
        assert server.waiting.acquire(timeout=60), "the new build never asked the endpoint"
        # The old definition still answers.
        assert [d["_id"] for d in db.docs.aggregate(query)] == [7, 8]
        [info] = db.docs.list_search_indexes("u")
        assert info["status"] == "BUILDING" and info["queryable"] is True
        assert info["latestDefinitionVersion"]["version"] == 1
        assert info["latestDefinition"] == {"models": ["gated"], "keys": ["text"]}
        [host] = info["statusDetail"]
        assert host["mainIndex"]["status"] == "READY" and host["mainIndex"]["queryable"] is True
        assert host["mainIndex"]["definitionVersion"]["version"] == 0
        assert host["stagedIndex"]["status"] in ("PENDING", "BUILDING")
        assert host["stagedIndex"]["queryable"] is False
        assert host["stagedIndex"]["definitionVersion"]["version"] == 1
        # A restart in the middle keeps both: the old definition serves
        # again, the new one builds again.
        client.close()
        proxy.stop()
        proxy = start_proxy(direct_uri, "--allow-model-host", server.host_port)
        client = MongoClient(f"mongodb://127.0.0.1:{proxy.port}/")
        db = client.atlas_shapes_update

        def old_answers():
            try:
                return [d["_id"] for d in db.docs.aggregate(query)] == [7, 8]
            except OperationFailure as e:
                assert e.code == 314, e.details  # not queryable yet
                return False

        eventually(old_answers)
        assert server.waiting.acquire(timeout=60), "the restarted build never asked the endpoint"
        [info] = db.docs.list_search_indexes("u")
        assert info["latestDefinitionVersion"]["version"] == 1 and info["queryable"] is True
        assert info["statusDetail"][0]["mainIndex"]["definitionVersion"]["version"] == 0
        assert info["statusDetail"][0]["stagedIndex"]["definitionVersion"]["version"] == 1
        server.gate.set()
        # A write made while the new definition may still be building
        # reaches it (a write waits for every index's encoding).
        db.docs.insert_one({"_id": 100, "v": [7.2, 1.0], "text": "zebra"})
        wait_ready(db.docs, "u")
        [info] = db.docs.list_search_indexes("u")
        assert "stagedIndex" not in info["statusDetail"][0]
        assert info["statusDetail"][0]["mainIndex"]["definitionVersion"]["version"] == 1
        # Now the new definition answers: a text query over the model.
        got = list(db.docs.aggregate([{"$vectorSearch": {"index": "u", "path": "text",
                                                         "query": {"text": "zebra"},
                                                         "numCandidates": 60, "limit": 1}}]))
        assert [d["_id"] for d in got] == [100]
    finally:
        server.gate.set()
        db.docs.drop_search_index("u")
        eventually(lambda: list(db.docs.list_search_indexes()) == [])
        db.command({"dropModel": "gated"})
        client.close()
        proxy.stop()
        server.close()


def test_vector_search_inside_union_with(items):
    """Hybrid search as MongoDB's and Mongoose's guides write it: plain
    matches, then a `$unionWith` whose sub-pipeline is a `$vectorSearch`
    (MongoDB 8.0+), at any depth, next to later stages of each pipeline."""
    db, by_id = items
    ids, scores = ranked(db)
    got = list(db.items.aggregate([
        {"$match": {"kind": "pinned", "n": {"$lt": 9}}}, {"$project": {"_id": 1, "kind": 1}},
        {"$unionWith": {"coll": "items", "pipeline": [vs(), {"$set": {"s": META}}, {"$project": {"s": 1}}]}}]))
    pinned = sorted(i for i in by_id if by_id[i]["kind"] == "pinned" and i < 9)
    # The outer documents are the plain match's: no score, no ranking.
    assert got[:len(pinned)] == [{"_id": i, "kind": "pinned"} for i in pinned]
    tail = got[len(pinned):]
    assert [d["_id"] for d in tail] == ids
    assert [d["s"] for d in tail] == pytest.approx(scores)
    # A vector stage at the top and one nested two unions deep, each with
    # its own filter and ranking; then a stage over the union of both.
    filtered = [i for i in sorted(by_id, key=lambda i: l2(by_id[i]["v"], QUERY)) if by_id[i]["kind"] == "draft"][:3]
    got = list(db.items.aggregate([
        vs(5), {"$project": {"_id": 1}},
        {"$unionWith": {"coll": "kinds", "pipeline": [
            {"$match": {"_id": "none"}},
            {"$unionWith": {"coll": "items", "pipeline": [
                vs(3, filter={"kind": "draft"}), {"$project": {"_id": 1}}]}}]}},
        {"$group": {"_id": None, "all": {"$push": "$_id"}}}]))
    assert got == [{"_id": None, "all": ids[:5] + filtered}]
    # A `$unionWith` alone: the outer collection in full, then the union's
    # ranking (never the union's ranking applied to the outer collection).
    got = list(db.kinds.aggregate([{"$unionWith": {"coll": "items", "pipeline": [vs(3)]}}]))
    assert [d["_id"] for d in got] == ["pinned", "plain", "draft"] + ids[:3]
    # explain reports every vector stage.
    explained = db.command({"explain": {"aggregate": "items", "cursor": {}, "pipeline": [
        vs(5), {"$unionWith": {"coll": "items", "pipeline": [vs(3, filter={"kind": "draft"})]}}]}})
    stages = explained["likewise"]["vectorStages"]
    assert [s["results"] for s in stages] == [5, 3] and all(s["index"] == "vec" for s in stages)
    assert all(s["collection"] == "items" for s in stages)


def test_bounds_on_vector_stages_and_score_references(items):
    db, _ = items
    union = {"$unionWith": {"coll": "items", "pipeline": [vs(1)]}}
    assert len(list(db.items.aggregate([vs(1)] + [union] * 63))) == 64
    with pytest.raises(OperationFailure) as e:
        list(db.items.aggregate([vs(1)] + [union] * 64))
    assert e.value.code == 2 and "at most 64 vector stages" in e.value.details["errmsg"]
    # Each score reference carries the ranked ids and scores: a command that
    # would grow past 16 MiB is refused before it is built.
    many = {f"s{i}": META for i in range(3000)}
    with pytest.raises(OperationFailure) as e:
        list(db.items.aggregate([vs(N), {"$project": many}]))
    assert e.value.code == 10334, e.value.details
    assert len(ranked(db)[0]) == K  # the connection serves on


@pytest.mark.parametrize("pipeline, code, message", [
    ([{"$match": {}}, "VS"], 40602, "$vectorSearch is only valid as the first stage in a pipeline."),
    ([{"$unionWith": {"coll": "items", "pipeline": [{"$match": {}}, "VS"]}}], 40602, "only valid as the first stage"),
    (["VS", {"$facet": {"a": ["VS"]}}], 40600, "$vectorSearch is not allowed to be used within a $facet stage"),
    ([{"$lookup": {"from": "items", "as": "x", "pipeline": ["VS"]}}], 51047,
     "$vectorSearch is not allowed within a $lookup's sub-pipeline"),
])
def test_misplaced_vector_search_gets_atlas_errors(items, pipeline, code, message):
    db, _ = items
    resolve = lambda s: vs() if s == "VS" else (
        {**s, "$facet": {k: [resolve(x) for x in v] for k, v in s["$facet"].items()}} if "$facet" in s else
        {"$lookup": {**s["$lookup"], "pipeline": [resolve(x) for x in s["$lookup"]["pipeline"]]}} if "$lookup" in s else
        {"$unionWith": {**s["$unionWith"], "pipeline": [resolve(x) for x in s["$unionWith"]["pipeline"]]}}
        if "$unionWith" in s else s)
    with pytest.raises(OperationFailure) as e:
        list(db.items.aggregate([resolve(s) for s in pipeline]))
    assert e.value.code == code and message in e.value.details["errmsg"], e.value.details
    # The connection goes on serving.
    assert len(ranked(db)[0]) == K


def test_answers_atlas_gives_for_unknown_indexes_transactions_and_search_stages(client, items):
    """An index (or collection) that does not exist finds nothing, also
    inside `$unionWith`, whose outer documents stay; `$vectorSearch` inside
    a transaction is refused (263), as Atlas refuses it; `$search` after
    the vector stage gets 40602."""
    db, by_id = items
    assert list(db.items.aggregate([vs(index="nope")])) == []
    assert list(db.never_there.aggregate([vs()])) == []
    got = list(db.kinds.aggregate([{"$unionWith": {"coll": "items", "pipeline": [vs(index="nope")]}}]))
    assert [d["_id"] for d in got] == ["pinned", "plain", "draft"]
    with client.start_session() as session:
        with pytest.raises(OperationFailure) as e:
            with session.start_transaction():
                db.items.insert_one({"_id": "in-txn", "v": QUERY}, session=session)
                list(db.items.aggregate([vs()], session=session))
        assert e.value.code == 263, e.value.details
    assert db.items.find_one({"_id": "in-txn"}) is None  # aborted
    with pytest.raises(OperationFailure) as e:
        list(db.items.aggregate([vs(), {"$search": {"text": {"query": "x", "path": "title"}}}]))
    assert e.value.code == 40602 and "$search is only valid as the first stage" in e.value.details["errmsg"]


def test_like_in_a_transaction_filters_as_the_transaction_sees(client, items):
    """The seed's `$like` is served inside a transaction: its filter is read
    in the client's session and transaction, so a document whose filter
    field the transaction changed (uncommitted) is included or excluded as
    the transaction sees it, and not outside it. A `$like` that opens the
    transaction begins it with its filter read; the statements after it
    continue the same transaction."""
    db, by_id = items
    nearest = ranked(db)[0][0]
    kind = by_id[nearest]["kind"]

    def like(filter_kind, session=None):
        query = {"$like": {"vector": QUERY, "n": 3}, "kind": filter_kind}
        return [d["_id"] for d in db.items.find(query, session=session)]

    assert nearest in like(kind)
    with client.start_session() as session:
        session.start_transaction()
        db.items.update_one({"_id": nearest}, {"$set": {"kind": "moved"}}, session=session)
        assert like("moved", session) == [nearest]
        assert nearest not in like(kind, session)
        # Outside the transaction nothing moved.
        assert like("moved") == []
        assert nearest in like(kind)
        session.abort_transaction()

        # mongod refuses `count` in a transaction; so does the proxy, before
        # any read of its own.
        session.start_transaction()
        with pytest.raises(OperationFailure) as refused:
            db.command("count", "items", query={"$like": {"vector": QUERY, "n": 3}},
                       session=session)
        assert refused.value.code == 263
        session.abort_transaction()

        # `$like` as the transaction's first statement.
        session.start_transaction()
        assert nearest in like(kind, session)
        db.items.update_one({"_id": nearest}, {"$set": {"kind": "moved"}}, session=session)
        assert like("moved", session) == [nearest]
        session.abort_transaction()
    assert db.items.find_one({"_id": nearest})["kind"] == kind


def test_dot_product_scores_stay_in_range(client):
    """Atlas's (Lucene's) dotProduct scores: (1 + a·b) / 2 never below 0
    for float vectors, and 0.5 + a·b / (dims · 2^15) for int8 vectors."""
    from bson.binary import Binary, BinaryVectorDtype
    db = client.atlas_shapes_dot
    db.drop_collection("f")
    db.drop_collection("i")
    floats = {0: [1.0, 0.0], 1: [-3.0, 0.0], 2: [0.5, 0.5]}
    db.f.insert_many([{"_id": k, "v": v} for k, v in floats.items()])
    ints = {k: [((k * 29 + d * 13) % 255) - 127 for d in range(16)] for k in range(40)}
    db.i.insert_many([{"_id": k, "v": Binary.from_vector(v, BinaryVectorDtype.INT8)} for k, v in ints.items()])
    for coll, dims in ((db.f, 2), (db.i, 16)):
        coll.create_search_index(SearchIndexModel(
            {"fields": [{"type": "vector", "path": "v", "numDimensions": dims, "similarity": "dotProduct"}]},
            name="dot", type="vectorSearch"))
    wait_ready(db.f, "dot")
    wait_ready(db.i, "dot")
    scores = lambda coll, q, n: {d["_id"]: d["s"] for d in coll.aggregate([
        {"$vectorSearch": {"index": "dot", "path": "v", "queryVector": q, "limit": n, "exact": True}},
        {"$project": {"s": META}}])}
    got = scores(db.f, [1.0, 0.0], 3)
    assert got == {0: pytest.approx(1.0), 2: pytest.approx(0.75), 1: 0.0}
    q = [100, -50, 3, 127, -128, 0, 64, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    got = scores(db.i, Binary.from_vector(q, BinaryVectorDtype.INT8), 40)
    assert len(got) == 40
    for k, s in got.items():
        assert s == pytest.approx(0.5 + sum(x * y for x, y in zip(ints[k], q)) / (16 * 2 ** 15)), k
        assert 0.0 <= s <= 1.0


def test_unknown_vector_search_fields_are_refused_not_ignored(items):
    """A misspelt `filter` must not silently widen the search."""
    db, _ = items
    stage = vs()
    stage["$vectorSearch"]["filters"] = {"kind": "draft"}
    with pytest.raises(OperationFailure) as e:
        list(db.items.aggregate([stage]))
    assert e.value.code == 40415
    assert e.value.details["errmsg"] == "BSON field '$vectorSearch.filters' is an unknown field."


def test_auto_embed_fields_use_the_proxys_text_models(client):
    """Atlas's automated embedding: an `autoEmbed` field is encoded by a
    registered model (the default text model when none is named), and
    `$vectorSearch` takes `query: {text}`."""
    db = client.atlas_shapes_auto
    db.drop_collection("docs")
    texts = {
        "browser": "a web browser for viewing websites on the internet",
        "compiler": "an optimising compiler for the C programming language",
        "game": "a chess game with a graphical board and computer opponent",
        "mail": "an email client that reads and sends mail over IMAP",
        "audio": "a music player for audio files and playlists",
    }
    db.docs.insert_many([{"_id": k, "description": v, "shelf": i % 2} for i, (k, v) in enumerate(texts.items())])
    db.docs.create_search_index(SearchIndexModel(
        {"fields": [{"type": "autoEmbed", "modality": "text", "path": "description"},
                    {"type": "filter", "path": "shelf"}]},
        name="auto", type="vectorSearch"))
    info, _ = wait_ready(db.docs, "auto", timeout=300)
    assert info["latestDefinition"]["fields"][0]["type"] == "autoEmbed"
    search = lambda text, **extra: [d["_id"] for d in db.docs.aggregate([{"$vectorSearch": {
        "index": "auto", "path": "description", "query": {"text": text}, "limit": 2, "exact": True, **extra}}])]
    assert search("surfing the internet")[0] == "browser"
    assert search("listen to songs")[0] == "audio"
    assert search("listen to songs", filter={"shelf": 1})[0] != "audio"  # audio is on shelf 0
    assert search("surfing the internet", model="default")[0] == "browser"
    # A write is encoded before it is acknowledged.
    db.docs.insert_one({"_id": "maps", "description": "a map viewer with GPS navigation and routes", "shelf": 0})
    assert search("navigate with gps")[0] == "maps"
    with pytest.raises(OperationFailure) as e:
        search("x", model="voyage-4")
    assert e.value.code == 2 and "model 'default'" in e.value.details["errmsg"]
    # A named model that is not registered: a clear error, nothing created.
    with pytest.raises(OperationFailure) as e:
        db.docs.create_search_index(SearchIndexModel(
            {"fields": [{"type": "autoEmbed", "modality": "text", "path": "description", "model": "voyage-4"}]},
            name="named", type="vectorSearch"))
    assert "unknown model 'voyage-4'" in e.value.details["errmsg"] and "createModel" in e.value.details["errmsg"]
    with pytest.raises(OperationFailure) as e:
        db.docs.create_search_index(SearchIndexModel(
            {"fields": [{"type": "autoEmbed", "modality": "image", "path": "description"}]},
            name="image", type="vectorSearch"))
    assert e.value.code == 72
    assert [i["name"] for i in db.docs.list_search_indexes()] == ["auto"]


def test_every_bson_vector_dtype(client):
    """BSON BinData vectors of all three dtypes Atlas indexes: int8 with any
    similarity, packed bits (Atlas's int1) with euclidean only, and query
    vectors of each; results against an exact oracle over the values."""
    from bson.binary import Binary, BinaryVectorDtype
    db = client.atlas_shapes_dtypes
    db.drop_collection("int8")
    db.drop_collection("bits")
    rows = {i: [((i * 37 + d * 11) % 255) - 127 for d in range(8)] for i in range(200)}
    db.int8.insert_many([{"_id": i, "v": Binary.from_vector(v, BinaryVectorDtype.INT8)} for i, v in rows.items()])
    for similarity in ("euclidean", "cosine"):
        db.int8.create_search_index(SearchIndexModel(
            {"fields": [{"type": "vector", "path": "v", "numDimensions": 8, "similarity": similarity}]},
            name=similarity, type="vectorSearch"))
    for similarity in ("euclidean", "cosine"):
        info, _ = wait_ready(db.int8, similarity)
        assert info["progress"]["vectorsIndexed"] == 200 and info["progress"]["documentsSkipped"] == 0
        # Stored as they came: one byte per dimension, not four.
        assert info["progress"]["vectorBytes"] == 200 * 8
    query = [5, -100, 33, 0, 127, -128, 1, 64]

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    want = {"euclidean": sorted(rows, key=lambda i: (l2(rows[i], query), i))[:5],
            "cosine": sorted(rows, key=lambda i: (-cos(rows[i], query), i))[:5]}
    for similarity in ("euclidean", "cosine"):
        for qv in (Binary.from_vector(query, BinaryVectorDtype.INT8), [float(x) for x in query]):
            got = list(db.int8.aggregate([{"$vectorSearch": {
                "index": similarity, "path": "v", "queryVector": qv, "limit": 5, "exact": True}},
                {"$project": {"score": META}}]))
            assert [d["_id"] for d in got] == want[similarity], similarity
        if similarity == "euclidean":
            assert got[0]["score"] == pytest.approx(1 / (1 + l2(rows[got[0]["_id"]], query)), rel=1e-4)

    def bits_of(i):
        return [(i >> b) & 1 for b in range(16)]

    def pack(bits):
        return Binary.from_vector([int("".join(map(str, bits[k:k + 8])), 2) for k in (0, 8)],
                                  BinaryVectorDtype.PACKED_BIT)

    db.bits.insert_many([{"_id": i, "b": pack(bits_of(i * 2654435761 % 65536))} for i in range(300)])
    db.bits.create_search_index(SearchIndexModel(
        {"fields": [{"type": "vector", "path": "b", "numDimensions": 16, "similarity": "euclidean"}]},
        name="hamming", type="vectorSearch"))
    db.bits.create_search_index(SearchIndexModel(
        {"fields": [{"type": "vector", "path": "b", "numDimensions": 16, "similarity": "cosine"}]},
        name="not-for-bits", type="vectorSearch"))
    info, _ = wait_ready(db.bits, "hamming")
    assert info["progress"]["vectorBytes"] == 300 * 2  # one bit per dimension
    info, _ = wait_ready(db.bits, "not-for-bits")
    assert info["progress"]["vectorsIndexed"] == 0 and info["progress"]["documentsSkipped"] == 300
    target = bits_of(12345)
    hamming = lambda i: sum(x != y for x, y in zip(bits_of(i * 2654435761 % 65536), target))
    got = list(db.bits.aggregate([{"$vectorSearch": {
        "index": "hamming", "path": "b", "queryVector": pack(target), "limit": 10, "exact": True}},
        {"$project": {"score": META}}]))
    assert [hamming(d["_id"]) for d in got] == sorted(hamming(i) for i in range(300))[:10]
    # The graph walk over the packed bits finds the same neighbours.
    walked = list(db.bits.aggregate([{"$vectorSearch": {
        "index": "hamming", "path": "b", "queryVector": pack(target), "limit": 10, "numCandidates": 300}}]))
    assert sorted(hamming(d["_id"]) for d in walked) == sorted(hamming(i) for i in range(300))[:10]
    # A float32 vector widens the index (int8 and bits stay comparable in
    # one space); nothing indexed before is lost.
    db.int8.insert_one({"_id": "float", "v": [0.5] * 8})
    info = list(db.int8.list_search_indexes("euclidean"))[0]
    assert info["progress"]["vectorsIndexed"] == 201 and info["progress"]["vectorBytes"] == 201 * 32
    got = list(db.int8.aggregate([{"$vectorSearch": {
        "index": "euclidean", "path": "v", "queryVector": Binary.from_vector(query, BinaryVectorDtype.INT8),
        "limit": 5, "exact": True}}]))
    assert [d["_id"] for d in got] == want["euclidean"]
    with pytest.raises(OperationFailure) as e:
        list(db.bits.aggregate([{"$vectorSearch": {
            "index": "not-for-bits", "path": "b", "queryVector": pack(target), "limit": 10, "exact": True}}]))
    assert e.value.code == 2 and "euclidean" in e.value.details["errmsg"]


def test_several_vector_fields_in_one_index(client):
    """Atlas allows several vector fields per index, `path` choosing one:
    each is searched against its own oracle, one listing entry covers them,
    writes reach every field, an update rebuilds them together and a drop
    removes them all."""
    db = client.atlas_shapes_multi
    db.drop_collection("docs")
    a = {i: [math.cos(i * 0.3 + d) for d in range(4)] for i in range(150)}
    b = {i: [float((i * 13 + d * 7) % 23) for d in range(6)] for i in range(150)}
    db.docs.insert_many([{"_id": i, "a": a[i], "b": b[i], "k": i % 2} for i in range(150)])
    db.docs.create_search_index(SearchIndexModel(
        {"fields": [{"type": "vector", "path": "a", "numDimensions": 4, "similarity": "cosine"},
                    {"type": "vector", "path": "b", "numDimensions": 6, "similarity": "euclidean"},
                    {"type": "filter", "path": "k"}]},
        name="multi", type="vectorSearch"))
    info, _ = wait_ready(db.docs, "multi")
    assert [i["name"] for i in db.docs.list_search_indexes()] == ["multi"]
    assert info["progress"]["vectorsIndexed"] == 300

    def cos(x, y):
        return sum(p * q for p, q in zip(x, y)) / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))

    def search(path, vector, **extra):
        return [d["_id"] for d in db.docs.aggregate([{"$vectorSearch": {
            "index": "multi", "path": path, "queryVector": vector, "limit": 5, "exact": True, **extra}}])]

    qa, qb = [0.5, -0.2, 0.1, 0.9], [3.0, 1.0, 4.0, 1.0, 5.0, 9.0]
    assert search("a", qa) == sorted(a, key=lambda i: -cos(a[i], qa))[:5]
    # `b` repeats every 23 documents: ties are compared by distance.
    dist = lambda ids, q: [round(l2(b[i], q), 5) for i in ids]
    assert dist(search("b", qb), qb) == sorted(dist(b, qb))[:5]
    assert dist(search("b", qb, filter={"k": 1}), qb) == sorted(dist([i for i in b if i % 2], qb))[:5]
    assert all(i % 2 for i in search("b", qb, filter={"k": 1}))
    with pytest.raises(OperationFailure) as e:
        search("c", qa)
    assert e.value.code == 2
    # A write reaches both fields before it is acknowledged.
    db.docs.insert_one({"_id": 999, "a": qa, "b": qb, "k": 0})
    assert search("a", qa)[0] == 999 and search("b", qb)[0] == 999
    # An update stages both new fields; then both serve.
    db.docs.update_search_index("multi", {"fields": [
        {"type": "vector", "path": "a", "numDimensions": 4, "similarity": "euclidean"},
        {"type": "vector", "path": "b", "numDimensions": 6, "similarity": "cosine"}]})
    eventually(lambda: list(db.docs.list_search_indexes("multi"))[0]["latestDefinitionVersion"]["version"] == 1
               and list(db.docs.list_search_indexes("multi"))[0]["status"] == "READY")
    a[999], b[999] = qa, qb
    sims = lambda ids: [round(cos(b[i], [1.0] * 6), 5) for i in ids]
    assert sims(search("b", [1.0] * 6)) == sorted(sims(b), reverse=True)[:5]
    assert search("a", qa) == sorted(a, key=lambda i: (l2(a[i], qa), i))[:5]  # now euclidean
    db.docs.drop_search_index("multi")
    eventually(lambda: list(db.docs.list_search_indexes()) == [])
    assert search("a", qa) == []  # Atlas: an index that does not exist finds nothing


def test_dropping_a_collection_deletes_its_search_indexes(client, direct_uri):
    """As on Atlas, a dropped collection (or database) takes its search
    indexes with it: through the proxy before the drop is acknowledged (so
    the same name can be created again at once), and by the change stream
    when the drop bypasses the proxy."""
    db = client.atlas_shapes_dropped
    client.drop_database(db.name)
    definition = {"fields": [{"type": "vector", "path": "v", "numDimensions": 2,
                              "similarity": "euclidean"}]}

    def create(coll, name="vec"):
        coll.insert_many([{"_id": i, "v": [i, 1]} for i in range(5)])
        coll.create_search_index(SearchIndexModel(definition, name=name, type="vectorSearch"))
        wait_ready(coll, name)

    def names(coll):
        return [i["name"] for i in coll.list_search_indexes()]

    create(db.a)
    create(db.keep, "kept")
    db.a.drop()
    assert names(db.a) == []
    assert names(db.keep) == ["kept"]
    # The same name again, at once, over the new collection's documents.
    db.a.insert_one({"_id": "new", "v": [9, 9]})
    db.a.create_search_index(SearchIndexModel(definition, name="vec", type="vectorSearch"))
    wait_ready(db.a, "vec")
    hits = list(db.a.aggregate([{"$vectorSearch": {"index": "vec", "path": "v", "queryVector": [9, 9],
                                                   "numCandidates": 10, "limit": 10}}]))
    assert [h["_id"] for h in hits] == ["new"]
    # Dropped without the proxy: the change stream deletes the index.
    with MongoClient(direct_uri) as direct:
        direct[db.name].drop_collection("a")
        eventually(lambda: names(db.a) == [])
        assert names(db.keep) == ["kept"]
    # A whole database through the proxy.
    create(db.b, "other")
    client.drop_database(db.name)
    assert names(db.keep) == [] and names(db.b) == []

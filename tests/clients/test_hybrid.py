"""Hybrid search through the proxy with pymongo: `$rankFusion` and
`$scoreFusion` over `$vectorSearch`, `$search` and upstream-ranked input
pipelines. Every fused ranking and score is recomputed here from the inputs'
own results (fetched through the proxy one by one) with MongoDB's documented
formulas: reciprocal rank fusion with k = 60, and score fusion's
normalisations and average."""

import math

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure
from pymongo.operations import SearchIndexModel

from conftest import wait_ready

# Three-dimensional vectors and short texts whose two rankings disagree.
DOCS = [
    {"_id": 1, "text": "red apple pie", "v": [1.0, 0.0, 0.0], "stars": 3},
    {"_id": 2, "text": "green apple", "v": [0.9, 0.1, 0.0], "stars": 5},
    {"_id": 3, "text": "apple apple tart", "v": [0.0, 1.0, 0.0], "stars": 4},
    {"_id": 4, "text": "pear tart", "v": [0.7, 0.7, 0.0], "stars": 5},
    {"_id": 5, "text": "plum jam", "v": [0.0, 0.0, 1.0], "stars": 1},
    {"_id": 6, "text": "apple jam", "v": [0.5, 0.0, 0.5], "stars": 2},
]
QUERY = [1.0, 0.05, 0.0]


def vs(limit=4):
    return {"$vectorSearch": {"index": "vec", "path": "v", "queryVector": QUERY,
                              "numCandidates": 20, "limit": limit}}


def fts(query="apple tart"):
    return {"$search": {"index": "kw", "text": {"query": query, "path": "text"}}}


@pytest.fixture(scope="module")
def coll(proxy_uri):
    with MongoClient(proxy_uri) as client:
        c = client.hybrid.food
        c.drop()
        c.insert_many([dict(d) for d in DOCS])
        c.create_search_index(SearchIndexModel(
            {"fields": [{"type": "vector", "path": "v", "numDimensions": 3,
                         "similarity": "cosine"}]}, name="vec", type="vectorSearch"))
        c.create_search_index(SearchIndexModel({"mappings": {"dynamic": True}}, name="kw"))
        wait_ready(c, "vec")
        wait_ready(c, "kw")
        yield c


def ranked(coll, stage, score_meta):
    """An input pipeline's own results: [(id, score)] in its order."""
    return [(d["_id"], d["s"]) for d in coll.aggregate(
        [stage, {"$project": {"s": {"$meta": score_meta}}}])]


def rrf(inputs, weights):
    """MongoDB's reciprocal rank fusion: sum of w / (60 + rank), rank from 1;
    ties by _id ascending."""
    fused = {}
    for name, rows in inputs.items():
        for rank, (i, _) in enumerate(rows, start=1):
            fused[i] = fused.get(i, 0.0) + weights.get(name, 1) / (60 + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


def test_rank_fusion_is_reciprocal_rank_fusion_of_its_inputs(coll):
    vec = ranked(coll, vs(), "vectorSearchScore")
    kw = ranked(coll, fts(), "searchScore")
    # The two rankings disagree, so fusion has something to do.
    assert [i for i, _ in vec][:2] != [i for i, _ in kw][:2]
    for weights in ({}, {"kw": 3}, {"vec": 0.5, "kw": 0}):
        stage = {"$rankFusion": {"input": {"pipelines": {"vec": [vs()], "kw": [fts()]}}}}
        if weights:
            stage["$rankFusion"]["combination"] = {"weights": weights}
        got = list(coll.aggregate([stage, {"$project": {"text": 1, "score": {"$meta": "score"}}}]))
        want = rrf({"vec": vec, "kw": kw}, weights)
        assert [d["_id"] for d in got] == [i for i, _ in want], weights
        for d, (_, s) in zip(got, want):
            assert d["score"] == pytest.approx(s, rel=1e-12)
        assert all("text" in d and "v" not in d for d in got)


def test_later_stages_and_score_details(coll):
    vec = ranked(coll, vs(), "vectorSearchScore")
    kw = ranked(coll, fts(), "searchScore")
    want = rrf({"vec": vec, "kw": kw}, {})
    got = list(coll.aggregate([
        {"$rankFusion": {"input": {"pipelines": {"vec": [vs()], "kw": [fts()]}},
                         "scoreDetails": True}},
        {"$limit": 3},
        {"$project": {"_id": 1, "details": {"$meta": "scoreDetails"}}},
    ]))
    assert [d["_id"] for d in got] == [i for i, _ in want][:3]
    kw_rank = {i: r for r, (i, _) in enumerate(kw, start=1)}
    for d in got:
        details = d["details"]
        assert details["value"] == pytest.approx(dict(want)[d["_id"]])
        assert details["description"].startswith("value output by reciprocal rank fusion")
        # One entry per input, in name order.
        assert [e["inputPipelineName"] for e in details["details"]] == ["kw", "vec"]
        entry = details["details"][0]
        if d["_id"] in kw_rank:
            assert entry["rank"] == kw_rank[d["_id"]] and entry["weight"] == 1
            assert entry["value"] == pytest.approx(dict(kw)[d["_id"]])
        else:
            assert entry == {"inputPipelineName": "kw", "rank": "NA"}
    with pytest.raises(OperationFailure) as e:
        list(coll.aggregate([
            {"$rankFusion": {"input": {"pipelines": {"vec": [vs()]}}}},
            {"$project": {"d": {"$meta": "scoreDetails"}}}]))
    assert e.value.code == 40218


def test_input_pipelines_filter_sort_and_run_upstream(coll):
    # A filter after the vector stage runs upstream, then ranks what is left.
    got = list(coll.aggregate([{"$rankFusion": {"input": {"pipelines": {
        "vec": [vs(6), {"$match": {"stars": {"$gte": 3}}}],
        "best": [{"$match": {"stars": {"$gte": 4}}}, {"$sort": {"stars": -1}}],
    }}}}, {"$project": {"score": {"$meta": "score"}}}]))
    vec = [(i, s) for i, s in ranked(coll, vs(6), "vectorSearchScore")
           if next(d for d in DOCS if d["_id"] == i)["stars"] >= 3]
    # `$sort`-ranked input: equal keys share a rank (mongod ranks with $rank).
    by_stars = sorted((d for d in DOCS if d["stars"] >= 4), key=lambda d: -d["stars"])
    ranks, fused = {}, {}
    for pos, d in enumerate(by_stars, start=1):
        prev = by_stars[pos - 2] if pos > 1 else None
        ranks[d["_id"]] = ranks[prev["_id"]] if prev and prev["stars"] == d["stars"] else pos
    for i, r in ranks.items():
        fused[i] = fused.get(i, 0.0) + 1 / (60 + r)
    for r, (i, _) in enumerate(vec, start=1):
        fused[i] = fused.get(i, 0.0) + 1 / (60 + r)
    want = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
    assert [d["_id"] for d in got] == [i for i, _ in want]
    for d, (_, s) in zip(got, want):
        assert d["score"] == pytest.approx(s, rel=1e-12)
    assert 1 not in ranks and set(ranks) == {2, 3, 4}


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("normalization", ["none", "sigmoid", "minMaxScaler"])
def test_score_fusion_normalises_weights_and_averages(coll, normalization):
    vec = dict(ranked(coll, vs(), "vectorSearchScore"))
    kw = dict(ranked(coll, fts(), "searchScore"))
    weights = {"vec": 2, "kw": 0.5}

    def norm(scores, w):
        if normalization == "none":
            return {i: w * s for i, s in scores.items()}
        if normalization == "sigmoid":
            return {i: w * sigmoid(s) for i, s in scores.items()}
        lo, hi = min(w * s for s in scores.values()), max(w * s for s in scores.values())
        return {i: (w * s - lo) / (hi - lo) if hi > lo else 0.0 for i, s in scores.items()}

    nv, nk = norm(vec, weights["vec"]), norm(kw, weights["kw"])
    want = {i: (nv.get(i, 0.0) + nk.get(i, 0.0)) / 2 for i in set(vec) | set(kw)}
    got = list(coll.aggregate([
        {"$scoreFusion": {"input": {"pipelines": {"vec": [vs()], "kw": [fts()]},
                                    "normalization": normalization},
                          "combination": {"weights": weights}, "scoreDetails": True}},
        {"$project": {"score": {"$meta": "score"}, "details": {"$meta": "scoreDetails"}}},
    ]))
    assert [d["_id"] for d in got] == sorted(want, key=lambda i: (-want[i], i))
    for d in got:
        assert d["score"] == pytest.approx(want[d["_id"]], rel=1e-9, abs=1e-12)
        assert d["details"]["normalization"] == normalization
        assert d["details"]["combination"] == {"method": "average"}
        kw_entry = d["details"]["details"][0]
        assert kw_entry["inputPipelineName"] == "kw"
        assert kw_entry["inputPipelineRawScore"] == pytest.approx(kw.get(d["_id"], 0.0))


def test_score_fusion_expression_is_evaluated_per_document(coll):
    vec = dict(ranked(coll, vs(), "vectorSearchScore"))
    kw = dict(ranked(coll, fts(), "searchScore"))
    stars = {d["_id"]: d["stars"] for d in DOCS}
    got = list(coll.aggregate([
        {"$scoreFusion": {
            "input": {"pipelines": {"vec": [vs()], "kw": [fts()]}, "normalization": "none"},
            "combination": {"method": "expression", "expression": {
                "$add": [{"$multiply": ["$$vec", 10]}, "$$kw", {"$divide": ["$stars", 100]}]}}}},
        {"$project": {"score": {"$meta": "score"}}},
    ]))
    want = {i: 10 * vec.get(i, 0) + kw.get(i, 0) + stars[i] / 100 for i in set(vec) | set(kw)}
    assert [d["_id"] for d in got] == sorted(want, key=lambda i: (-want[i], i))
    for d in got:
        assert d["score"] == pytest.approx(want[d["_id"]], rel=1e-9)


def test_fusion_inside_union_with_and_after_a_limit(coll, proxy_uri):
    stage = {"$rankFusion": {"input": {"pipelines": {"vec": [vs()], "kw": [fts()]}}}}
    top = [d["_id"] for d in coll.aggregate([stage, {"$limit": 2}])]
    assert len(top) == 2
    got = list(coll.database.other.aggregate([
        {"$match": {"never": True}},
        {"$unionWith": {"coll": "food", "pipeline": [stage, {"$limit": 2},
                                                     {"$project": {"_id": 1}}]}},
    ]))
    assert [d["_id"] for d in got] == top


def test_refusals_are_mongods(coll):
    def code(pipeline):
        with pytest.raises(OperationFailure) as e:
            list(coll.aggregate(pipeline))
        return e.value.code

    rank = lambda pipelines, **rest: {"$rankFusion": {"input": {"pipelines": pipelines}, **rest}}
    assert code([{"$match": {}}, rank({"a": [vs()]})]) == 10170100
    assert code([rank({"a": [{"$match": {"x": 1}}]})]) == 9191100
    assert code([rank({"a": [vs(), {"$project": {"x": 1}}]})]) == 9191103
    assert code([rank({"a": [rank({"b": [vs()]})]})]) == 10473002
    assert code([rank({"a": [vs()]}, combination={"weights": {"b": 1}})]) == 9967500
    assert code([rank({"a": [vs()]}, combination={"weights": {"a": -1}})]) == 9460300
    assert code([rank({})]) == 2
    assert code([{"$scoreFusion": {"input": {"pipelines": {"a": [vs()]}}}}]) == 40414
    assert code([{"$scoreFusion": {"input": {"pipelines": {"a": [{"$sort": {"x": 1}}]},
                                             "normalization": "none"}}}]) == 9402500
    assert code([{"$facet": {"f": [rank({"a": [vs()]})]}}]) == 40600
    # The connection is still good.
    assert coll.count_documents({}) == len(DOCS)

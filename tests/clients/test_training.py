"""Training a semantic index end to end through pymongo, on real text:
Debian package summaries are the queries, their long descriptions the
items. An adapter trained with the ranking objective must beat the untrained
index on held-out pairs by a margin; the reported metrics must match an
independent computation (exact `$like` queries through the proxy); the
trained index survives a restart; bad input is refused."""

import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from conftest import debian_long_descriptions, eventually, start_proxy

CORPUS = 2000
# The gain training must show on the 655 held-out pairs, in r@1 and in mrr.
# Measured on the pinned corpus: r@1 0.876 -> 0.890 (+0.014) and mrr
# 0.914 -> 0.925 (+0.012); with seeds 1 and 2 instead of the default, +0.015
# and +0.020 in r@1, +0.012 and +0.015 in mrr. Asserts a gain >= 0.005.
MARGIN = 0.005

DEFINITION = {
    "models": ["minilm", "minilm"], "keys": ["text", "title"], "measure": "dot",
    "loss": "ranking", "metrics": ["r@1", "r@10", "mrr"],
    "splitter": {"kind": "fields", "query": "title", "item": "text"},
    "validation": {"filter": {"_fold": "valid"}},
    "train": {"epochs": 12, "batchSize": 128, "learningRate": 0.001, "temperature": 20},
}


def fold(name):
    return "valid" if zlib.crc32(name.encode()) % 3 == 0 else "train"


def wait_trained(coll, name, timeout=900):
    seen = []

    def done():
        info = list(coll.list_search_indexes(name))[0]
        if not seen or seen[-1] != info["status"]:
            seen.append(info["status"])
        assert info["status"] in ("PENDING", "BUILDING", "TRAINING", "READY"), info
        assert "error" not in info["training"], info["training"]
        return info["status"] == "READY" and info["training"]["trained"]

    eventually(done, timeout=timeout)
    return list(coll.list_search_indexes(name))[0], seen


@pytest.fixture(scope="module")
def client(module_proxy_uri):
    with MongoClient(module_proxy_uri) as c:
        yield c


@pytest.fixture(scope="module")
def trained(client):
    db = client.training_suite
    db.drop_collection("packages")
    rows = [dict(r, _fold=fold(r["_id"])) for r in debian_long_descriptions(CORPUS)]
    db.packages.insert_many(rows)
    # As a user would: the field the validation filter names is indexed.
    db.packages.create_index("_fold")
    db.command({"createModel": "minilm", "kind": "text"})
    db.command({"createSemanticIndex": "packages", "name": "summaries", **DEFINITION})
    info, seen = wait_trained(db.packages, "summaries")
    return db, rows, info, seen


def test_training_improves_held_out_recall(trained):
    _, rows, info, seen = trained
    assert "TRAINING" in seen, seen
    valid = sum(1 for r in rows if r["_fold"] == "valid")
    assert info["training"]["pairs"] == {"train": CORPUS - valid, "validation": valid}
    assert info["training"]["epochsDone"] == 12 and len(info["training"]["history"]) == 12
    before, after = info["metrics"]["before"], info["metrics"]["after"]
    print(f"\nheld-out metrics ({valid} pairs) before {before} after {after}")
    assert after["r@1"] >= before["r@1"] + MARGIN, (before, after)
    assert after["mrr"] >= before["mrr"] + MARGIN, (before, after)
    losses = [e["loss"] for e in info["training"]["history"]]
    assert losses[-1] < losses[0], losses


def test_reported_metrics_match_queries_through_the_proxy(trained):
    """r@1 and r@10 recomputed by exact `$like` queries restricted to the
    validation documents: the path users take, not the training code's."""
    db, rows, info, _ = trained
    valid = [r for r in rows if r["_fold"] == "valid"]

    def top10(r):
        return r["_id"], [d["_id"] for d in db.packages.find(
            {"$like": {"document": {"title": r["title"]}, "n": 10, "exact": True, "semantic_index": "summaries"},
             "_fold": "valid"}, {"_id": 1})]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(top10, valid))
    hit1 = sum(got[:1] == [own] for own, got in answers)
    hit10 = sum(own in got for own, got in answers)
    after = info["metrics"]["after"]
    assert abs(hit1 / len(valid) - after["r@1"]) <= 2 / len(valid), (hit1 / len(valid), after)
    assert abs(hit10 / len(valid) - after["r@10"]) <= 2 / len(valid), (hit10 / len(valid), after)


def test_evaluate_compares_trained_and_untrained(trained):
    db, _, info, _ = trained
    reply = db.command({"evaluateSemanticIndex": "packages", "name": "summaries",
                        "filter": {"_fold": "valid"}})
    assert reply["trained"] is True
    for metric in ("r@1", "r@10", "mrr"):
        assert abs(reply["metrics"][metric] - info["metrics"]["after"][metric]) < 1e-6
        assert abs(reply["untrained"][metric] - info["metrics"]["before"][metric]) < 1e-6
    custom = db.command({"evaluateSemanticIndex": "packages", "name": "summaries",
                         "filter": {"_fold": "valid"}, "metrics": ["ndcg@5"]})
    assert set(custom["metrics"]) == {"ndcg@5"}


def test_a_restart_keeps_the_trained_index(trained, module_direct_uri, module_data_dir):
    db, rows, info, _ = trained
    # Same upstream and data directory: the index comes back from its
    # snapshot and the adapter from the metadata database, no retraining.
    second = start_proxy(module_direct_uri, "--data-dir", str(module_data_dir))
    try:
        with MongoClient(f"mongodb://127.0.0.1:{second.port}/") as c:
            coll = c.training_suite.packages
            again, seen = wait_trained(coll, "summaries", timeout=600)
            assert "TRAINING" not in seen, seen
            assert again["metrics"] == info["metrics"]
            title = next(r["title"] for r in rows if r["_fold"] == "valid")
            query = {"$like": {"document": {"title": title}, "n": 5, "exact": True, "semantic_index": "summaries"}}
            assert [d["_id"] for d in coll.find(query)] == [d["_id"] for d in db.packages.find(query)]
    finally:
        second.stop()


def test_bad_training_input(client):
    db = client.training_bad
    db.drop_collection("few")
    db.command({"createModel": "minilm", "kind": "text"})
    base = {"createSemanticIndex": "few", "name": "x", **DEFINITION}
    for change, needle in [
        ({"loss": "hinge"}, "unknown loss"),
        ({"metrics": ["r@0"]}, "unknown metric"),
        ({"metrics": ["precision"]}, "unknown metric"),
        ({"splitter": {"kind": "random"}}, "unknown splitter"),
        ({"splitter": {"kind": "fields", "query": "nope", "item": "text"}}, "not one of the index's keys"),
        ({"splitter": {"kind": "fields", "query": "title", "item": "title"}}, "must be the index's first key"),
        ({"validation": {"fraction": 2}}, "validation"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"layers": 2}}, "add 'fineTune': true"),
    ]:
        with pytest.raises(OperationFailure) as err:
            db.command({**base, **change})
        assert needle in str(err.value), (change, str(err.value))
    # Too few pairs: the index is built and stays queryable, untrained, and
    # says how many pairs it would need.
    db.few.insert_many([{"_id": i, "text": f"long text number {i}", "title": f"title {i}",
                         "_fold": "valid" if i % 4 == 0 else "train"} for i in range(20)])
    db.command(base)

    def failed():
        info = list(db.few.list_search_indexes("x"))[0]
        return info if "error" in info.get("training", {}) and info["status"] == "READY" else None

    eventually(failed, timeout=120)
    info = failed()
    assert "too few pairs" in info["training"]["error"] and "need at least" in info["training"]["error"]
    assert info["training"]["trained"] is False
    assert len(list(db.few.find({"$like": {"document": {"title": "title 3"}, "n": 3}}))) == 3


def test_dropping_an_index_cancels_its_training(client):
    db = client.training_cancel
    db.drop_collection("docs")
    db.command({"createModel": "minilm", "kind": "text"})
    db.docs.insert_many([{"_id": i, "text": f"a longer text about topic {i}", "title": f"topic {i}"}
                         for i in range(200)])
    db.command({"createSemanticIndex": "docs", "name": "long_run", **DEFINITION,
                "validation": {"fraction": 0.2},
                "train": {"epochs": 1000, "batchSize": 4, "learningRate": 0.001}})

    def training():
        info = list(db.docs.list_search_indexes("long_run"))[0]
        return info["status"] == "TRAINING" and info["training"]["epochsDone"] >= 1

    eventually(training, timeout=120)
    index_id = list(db.docs.list_search_indexes("long_run"))[0]["id"]
    db.docs.drop_search_index("long_run")
    assert list(db.docs.list_search_indexes()) == []
    assert client.likewise.search_indexes.count_documents({"_id": index_id}) == 0
    # The run stops at its next epoch and never stores an adapter.
    assert client.likewise.adapters.count_documents({"_id": index_id}) == 0

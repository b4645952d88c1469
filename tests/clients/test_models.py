"""Models through the proxy with pymongo: the built-in text model
(all-MiniLM-L6-v2) over real text (Debian package descriptions), semantic
indexes over models × keys, `$like` by document content, `$vectorSearch`
by text, outputs written back, an OpenAI-compatible HTTP model (local test
server) that fails and recovers without losing a document, restarts, and
bad input."""

import math
import os

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from conftest import debian_packages, eventually, start_proxy, wait_ready
from embed_server import DIMS as HTTP_DIMS
from embed_server import EmbedServer, embed

CORPUS = 3000


@pytest.fixture(scope="module")
def client(module_proxy_uri):
    with MongoClient(module_proxy_uri) as c:
        yield c


@pytest.fixture(scope="module")
def packages(client):
    """3000 Debian packages, a text model and a semantic index over them."""
    db = client.models_suite
    db.drop_collection("packages")
    # Every web browser is in, whatever the sample holds.
    rows = debian_packages(CORPUS, also=lambda r: "web browser" in r["description"].lower())
    db.packages.insert_many(rows)
    reply = db.command({"createModel": "minilm", "kind": "text"})
    assert reply["model"]["dimensions"] == 384
    db.command({"createSemanticIndex": "packages", "name": "pkg", "models": ["minilm"],
                "keys": ["description"], "measure": "css"})
    info, _ = wait_ready(db.packages, "pkg", timeout=600)
    assert info["progress"]["vectorsIndexed"] == len(rows) >= CORPUS
    return db, {r["_id"]: r for r in rows}


def like(coll, text, n=10, **exact):
    query = {"$like": {"document": {"description": text}, "n": n, "semantic_index": "pkg"}, **exact}
    return list(coll.find(query, {"description": 1, "section": 1, "score": {"$meta": "vectorSearchScore"}}))


def test_like_by_text_finds_sensible_neighbours(packages):
    db, _ = packages
    # No word of the query is "browser": the match is semantic. Measured on
    # the pinned corpus: 5 of 5 about the web; asserts the first and >= 3.
    hits = like(db.packages, "program for surfing the internet and viewing websites", n=5)
    assert len(hits) == 5
    about_the_web = [any(w in h["description"].lower() for w in ("brows", "web", "internet", "http")) for h in hits]
    assert about_the_web[0] and sum(about_the_web) >= 3, hits
    # 37 of the 3,047 packages are fonts or typefaces (1.2%). Measured: 9 of
    # the 10 neighbours; asserts >= 7.
    fonts = like(db.packages, "typeface for displaying text", n=10)
    assert sum(any(w in h["description"].lower() for w in ("font", "typeface")) for h in fonts) >= 7, fonts
    scores = [h["score"] for h in fonts]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1.0


def test_like_with_an_exact_filter_returns_k(packages):
    db, rows = packages
    in_section = sum(1 for r in rows.values() if r["section"] == "python")
    assert in_section == 231
    hits = like(db.packages, "library for parsing XML documents", n=20, section="python")
    assert len(hits) == 20
    assert all(h["section"] == "python" for h in hits)
    # The sample's one XML package among its 231 Python ones. Measured: it
    # comes first; asserts it is in the top 5.
    assert any("xml" in h["description"].lower() for h in hits[:5]), hits[:5]


def test_vector_search_with_query_text(packages):
    db, _ = packages
    text = "program for surfing the internet and viewing websites"
    pipeline = [{"$vectorSearch": {"index": "pkg", "path": "description", "query": {"text": text},
                                   "numCandidates": 100, "limit": 5}},
                {"$project": {"score": {"$meta": "vectorSearchScore"}}}]
    results = list(db.packages.aggregate(pipeline))
    assert [r["_id"] for r in results] == [h["_id"] for h in like(db.packages, text, n=5)]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_a_write_is_encoded_before_it_is_acknowledged(packages):
    db, _ = packages
    db.packages.insert_one({"_id": "flux", "section": "science",
                            "description": "simulator for a flux capacitor used in time travel"})
    hits = like(db.packages, "time machine flux capacitor", n=1)
    assert hits[0]["_id"] == "flux"
    db.packages.update_one({"_id": "flux"}, {"$set": {"description": "recipes for baking sourdough bread"}})
    assert like(db.packages, "bread baking recipes", n=1)[0]["_id"] == "flux"
    db.packages.delete_one({"_id": "flux"})
    assert all(h["_id"] != "flux" for h in like(db.packages, "bread baking recipes", n=10))


def test_explain_says_when_query_text_was_truncated(packages):
    db, _ = packages
    long_text = " ".join(["a very long query about fonts and typefaces"] * 60)
    plan = db.command({"explain": {"find": "packages", "filter": {
        "$like": {"document": {"description": long_text}, "n": 3, "semantic_index": "pkg"}}}})
    encoding = plan["likewise"]["queryEncoding"]
    assert encoding["model"] == "minilm" and encoding["key"] == "description"
    assert encoding["truncated"] is True and "truncated" in encoding["note"]
    short = db.command({"explain": {"find": "packages", "filter": {
        "$like": {"document": {"description": "fonts"}, "n": 3, "semantic_index": "pkg"}}}})
    assert short["likewise"]["queryEncoding"]["truncated"] is False


def test_models_are_listed_and_guarded(packages):
    db, _ = packages
    listed = {m["_id"]: m for m in db.command({"listModels": 1})["models"]}
    assert listed["minilm"]["kind"] == "text"
    assert "models_suite.packages.pkg" in listed["minilm"]["usedBy"]
    with pytest.raises(OperationFailure) as busy:
        db.command({"dropModel": "minilm"})
    assert busy.value.code == 314 and "pkg" in str(busy.value)
    # Registering the same definition again is a no-op; a different one is refused.
    assert db.command({"createModel": "minilm", "kind": "text"})["ok"] == 1
    with pytest.raises(OperationFailure) as exists:
        db.command({"createModel": "minilm", "kind": "vector", "dimensions": 3})
    assert exists.value.code == 48


def test_bad_input_gets_clear_errors(packages):
    db, _ = packages
    cases = [
        ({"createSemanticIndex": "packages", "name": "x", "models": ["nope"], "keys": ["description"]},
         "unknown model 'nope'"),
        ({"createSemanticIndex": "packages", "name": "x", "models": ["minilm"], "keys": []},
         "same length"),
        ({"createSemanticIndex": "packages", "name": "x", "models": ["minilm"], "keys": ["d"], "measure": "hamming"},
         "unknown measure"),
        ({"createModel": "m2", "kind": "sound"}, "unknown model kind"),
        # Outside the directories the operator allows (the default model's only, here).
        ({"createModel": "m2", "kind": "text", "path": "/nonexistent/model"}, "--allow-model-dir"),
        ({"createModel": "m2", "kind": "text", "path": "/etc"}, "--allow-model-dir"),
        ({"createModel": "m2", "kind": "http", "url": "http://127.0.0.1:27017/", "model": "x"},
         "--allow-model-host"),
        ({"createModel": "m2", "kind": "http", "url": "http://127.0.0.1:1/\r\nX-Injected: 1", "model": "x"},
         "not a valid URL"),
        ({"createModel": "m2", "kind": "http", "url": "http://127.0.0.1:1/", "model": "x",
          "apiKeyEnv": "LIKEWISE_UPSTREAM"}, "LIKEWISE_MODEL_KEY_"),
        ({"createModel": "m2", "kind": "vector"}, "dimensions"),
        ({"createModel": "a.b", "kind": "vector", "dimensions": 3}, "without '.'"),
        ({"dropModel": "never-registered"}, "not found"),
    ]
    for command, needle in cases:
        with pytest.raises(OperationFailure) as err:
            db.command(command)
        assert needle in str(err.value), (command, str(err.value))
    # Models of different sizes cannot share an index.
    db.command({"createModel": "raw3", "kind": "vector", "dimensions": 3})
    with pytest.raises(OperationFailure) as mixed:
        db.command({"createSemanticIndex": "packages", "name": "x", "models": ["minilm", "raw3"],
                    "keys": ["description", "v"]})
    assert "384" in str(mixed.value) and "3" in str(mixed.value)
    db.command({"dropModel": "raw3"})
    for query, needle in [
        ({"$like": {"document": {"title": "x"}, "semantic_index": "pkg"}}, "none of the keys"),
        ({"$like": {"document": {"description": 42}, "semantic_index": "pkg"}}, "encodes text, not a number"),
        ({"$like": {"document": {}, "semantic_index": "pkg"}}, "empty"),
    ]:
        with pytest.raises(OperationFailure) as err:
            list(db.packages.find(query))
        assert needle in str(err.value) and err.value.code == 2, str(err.value)


def test_vector_models_and_explicit_paths(client):
    """A `vector` model reads vectors stored in documents (what Atlas-shaped
    indexes do), and a text model given a directory loads like the default."""
    from conftest import DEFAULT_MODEL
    db = client.models_vector
    db.drop_collection("points")
    assert db.command({"createModel": "raw2", "kind": "vector", "dimensions": 2})["model"]["dimensions"] == 2
    db.points.insert_many([{"_id": i, "p": [float(i), 1.0]} for i in range(50)] + [{"_id": "short", "p": [1.0]}])
    db.command({"createSemanticIndex": "points", "name": "pts", "models": ["raw2"], "keys": ["p"], "measure": "l2"})
    info, _ = wait_ready(db.points, "pts")
    assert info["progress"]["vectorsIndexed"] == 50 and info["progress"]["documentsSkipped"] == 1
    near = [d["_id"] for d in db.points.find({"$like": {"document": {"p": [20.2, 1.0]}, "n": 3}})]
    assert near == [20, 21, 19]
    db.points.drop_search_index("pts")
    db.command({"dropModel": "raw2"})
    reply = db.command({"createModel": "minilm-by-path", "kind": "text", "path": str(DEFAULT_MODEL)})
    assert reply["model"]["dimensions"] == 384 and reply["model"]["path"] == str(DEFAULT_MODEL)
    db.command({"dropModel": "minilm-by-path"})


def test_outputs_are_written_back(client):
    db = client.models_outputs
    db.drop_collection("notes")
    db.command({"createModel": "minilm", "kind": "text"})
    db.notes.insert_many([{"_id": i, "text": f"note number {i} about gardening"} for i in range(200)])
    db.notes.insert_one({"_id": "not-text", "text": 12})
    db.command({"createSemanticIndex": "notes", "name": "notes_idx", "models": ["minilm"], "keys": ["text"],
                "measure": "css", "writeOutputs": True})
    info, _ = wait_ready(db.notes, "notes_idx")
    assert info["progress"]["documentsSkipped"] == 1
    eventually(lambda: db.notes.count_documents({"_outputs.text.minilm": {"$size": 384}}) == 200)
    out = db.notes.find_one({"_id": 7})["_outputs"]["text"]["minilm"]
    assert abs(math.sqrt(sum(x * x for x in out)) - 1.0) < 1e-4
    # A new write gets its output too, and the write-back is not taken for a
    # user write: the stored vectors stay exactly one per document.
    db.notes.insert_one({"_id": 999, "text": "tomatoes need sun"})
    eventually(lambda: db.notes.count_documents({"_outputs.text.minilm": {"$size": 384}}) == 201)
    listed = list(db.notes.list_search_indexes("notes_idx"))[0]["progress"]
    assert listed["vectorsIndexed"] == 201
    db.notes.drop_search_index("notes_idx")


@pytest.fixture(scope="module")
def http_setup(module_direct_uri, module_data_dir):
    """A local embeddings endpoint that wants an API key, and a proxy that
    has the key in its environment."""
    server = EmbedServer(api_key="test-secret")
    env = dict(os.environ, LIKEWISE_MODEL_KEY_TEST="test-secret")
    proxy = start_proxy(module_direct_uri, "--data-dir", str(module_data_dir),
                        "--allow-model-host", server.host_port, env=env)
    yield server, f"mongodb://127.0.0.1:{proxy.port}/"
    proxy.stop()
    server.close()


def test_http_model_encodes_batches_and_survives_an_outage(http_setup):
    server, uri = http_setup
    with MongoClient(uri) as c:
        db = c.models_http
        db.drop_collection("docs")
        db.command({"dropModel": "bow"}) if any(m["_id"] == "bow" for m in db.command({"listModels": 1})["models"]) else None
        reply = db.command({"createModel": "bow", "kind": "http", "url": server.url, "model": "hashed-bow",
                            "apiKeyEnv": "LIKEWISE_MODEL_KEY_TEST", "batchSize": 16, "retries": 0})
        assert reply["model"]["dimensions"] == HTTP_DIMS
        assert "test-secret" not in str(db.command({"listModels": 1}))
        words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
        rows = [{"_id": i, "text": f"{words[i % 8]} {words[(i * 3) % 8]} {words[(i * 5 + 1) % 8]} {i}"}
                for i in range(300)]
        db.docs.insert_many(rows)
        db.command({"createSemanticIndex": "docs", "name": "bow_idx", "models": ["bow"], "keys": ["text"],
                    "measure": "dot"})
        info, _ = wait_ready(db.docs, "bow_idx")
        assert info["progress"]["vectorsIndexed"] == 300
        assert max(server.batches) <= 16
        # Against the exact ranking of the same embeddings, computed here
        # (compared by score: hashed words can tie).
        target = rows[123]["text"]
        q = embed(target)
        oracle = sorted((sum(a * b for a, b in zip(q, embed(r["text"]))) for r in rows), reverse=True)[:5]
        got = list(db.docs.find({"$like": {"document": {"text": target}, "n": 5, "exact": True}},
                                {"score": {"$meta": "vectorSearchScore"}}))
        # dotProduct scores are (1 + dot) / 2, as Atlas reports them.
        assert [round(2 * d["score"] - 1, 5) for d in got] == [round(x, 5) for x in oracle]
        assert 123 in [d["_id"] for d in got]

        # The endpoint goes down: writes still succeed and wait, counted.
        server.failing = True
        db.docs.insert_many([{"_id": f"late{i}", "text": f"omega omicron late {i}"} for i in range(5)])
        pending = lambda: list(db.docs.list_search_indexes("bow_idx"))[0]["progress"]["pendingEncodes"]
        eventually(lambda: pending() == 5, timeout=120)
        with pytest.raises(OperationFailure) as down:
            list(db.docs.find({"$like": {"document": {"text": "omega"}, "n": 1}}))
        assert "could not encode" in str(down.value)
        # It comes back: the queued documents are encoded, none lost.
        server.failing = False
        eventually(lambda: pending() == 0, timeout=120)
        hit = list(db.docs.find({"$like": {"document": {"text": "omega omicron late 3"}, "n": 1}}))
        assert hit[0]["_id"] == "late3"
        assert list(db.docs.list_search_indexes("bow_idx"))[0]["progress"]["vectorsIndexed"] == 305


def test_models_and_semantic_indexes_survive_a_restart(packages, module_direct_uri, module_data_dir):
    db, _ = packages
    second = start_proxy(module_direct_uri, "--data-dir", str(module_data_dir))
    try:
        with MongoClient(f"mongodb://127.0.0.1:{second.port}/") as c:
            coll = c.models_suite.packages
            # Listing waits for start-up to load the stored definitions.
            assert len(list(coll.list_search_indexes("pkg"))) == 1
            wait_ready(coll, "pkg", timeout=600)
            listed = {m["_id"] for m in c.models_suite.command({"listModels": 1})["models"]}
            assert "minilm" in listed
            text = "program for surfing the internet and viewing websites"
            assert [h["_id"] for h in like(coll, text, n=5)] == [h["_id"] for h in like(db.packages, text, n=5)]
    finally:
        second.stop()

"""Fine-tuning a semantic index's text model end to end through pymongo
(`train: {fineTune: true}`), on real text: Debian package *names* are the
queries, their long descriptions the items — a task the frozen model has
room to learn. The run makes a model version (stored in the upstream,
listed with its parent), re-encodes the index with it while the old
generation keeps answering, and beats both the untrained model and an
adapter on held-out pairs; the reported metrics match exact `$like`
queries through the proxy; a second proxy on the same upstream serves the
version without training; dropping the index cancels a run."""

import json
import signal
import urllib.request
import zlib

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from conftest import debian_long_descriptions, debian_packages, eventually, metrics_address, start_proxy

CORPUS = 1500
# Held-out gains the small run below must show in r@1 (490 pairs).
# Measured on the pinned corpus (AMD EPYC, 2 cores): 0.7531 untrained,
# 0.7898 with an adapter, 0.8327 fine-tuned (+0.080 and +0.043). Asserted
# with margins well under those, so they hold on any machine.
OVER_UNTRAINED = 0.04
OVER_ADAPTER = 0.01

DEFINITION = {
    "models": ["minilm", "minilm"], "keys": ["text", "name"], "measure": "dot",
    "loss": "ranking", "metrics": ["r@1", "r@10", "mrr"],
    "splitter": {"kind": "fields", "query": "name", "item": "text"},
    "validation": {"filter": {"_fold": "valid"}},
    "train": {"fineTune": True, "layers": 2, "epochs": 1, "batchSize": 32,
              "learningRate": 0.0001, "maxTokens": 96},
}


def fold(name):
    return "valid" if zlib.crc32(name.encode()) % 3 == 0 else "train"


def scrape(address):
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        return r.read().decode()


def like(name, n=10, exact=True, index="names"):
    return {"$like": {"document": {"name": name}, "n": n, "exact": exact,
                      "semantic_index": index}}


@pytest.fixture(scope="module")
def proxy(module_direct_uri, module_data_dir):
    server = start_proxy(module_direct_uri, "--data-dir", str(module_data_dir),
                         "--metrics-listen", "127.0.0.1:0")
    yield server, metrics_address(server)
    server.stop()


@pytest.fixture(scope="module")
def client(proxy):
    with MongoClient(f"mongodb://127.0.0.1:{proxy[0].port}/") as c:
        yield c


@pytest.fixture(scope="module")
def tuned(client, proxy):
    db = client.fine_tuning_suite
    db.drop_collection("packages")
    rows = [{"_id": r["_id"], "name": r["_id"], "text": r["text"], "_fold": fold(r["_id"])}
            for r in debian_long_descriptions(CORPUS)]
    db.packages.insert_many(rows)
    db.packages.create_index("_fold")
    db.command({"createModel": "minilm", "kind": "text"})
    db.command({"createSemanticIndex": "packages", "name": "names", **DEFINITION})
    seen, served, scraped = [], [], []
    probe = rows[0]["name"]

    def done():
        info = list(db.packages.list_search_indexes("names"))[0]
        status = info["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        assert status in ("PENDING", "BUILDING", "TRAINING", "READY"), info
        assert "error" not in info["training"], info["training"]
        fine = info["training"].get("fineTune")
        if fine and fine["phase"] in ("measuring", "waiting"):
            # No progress figures before the first step.
            assert "loss" not in fine and "step" not in fine, fine
        if status == "TRAINING" and fine and fine.get("step", 0) >= 1:
            # The old generation answers while the new one is made.
            served.append(len(list(db.packages.find(like(probe, 5, False)))))
            if not scraped:
                scraped.append(scrape(proxy[1]))
        return status == "READY" and fine is not None and fine["phase"] == "done"

    eventually(done, timeout=1500)
    info = list(db.packages.list_search_indexes("names"))[0]
    return db, rows, info, seen, served, scraped


def test_fine_tuning_beats_the_untrained_model_and_an_adapter(tuned):
    _, rows, info, seen, served, _ = tuned
    assert "TRAINING" in seen, seen
    valid = sum(1 for r in rows if r["_fold"] == "valid")
    training = info["training"]
    assert training["pairs"] == {"train": CORPUS - valid, "validation": valid}
    assert training["trained"] is True
    steps = (CORPUS - valid) // 32
    assert training["fineTune"]["step"] == training["fineTune"]["steps"] == steps
    assert training["fineTune"]["epoch"] == 1
    assert training["epochsDone"] == 1 and len(training["history"]) == 1
    m = info["metrics"]
    print(f"\nheld out ({valid} pairs): before {m['before']} adapter {m['adapter']} "
          f"fine-tuned {m['after']}; {training['fineTune']['pairsPerSecond']:.1f} pairs/s")
    assert m["after"]["r@1"] >= m["before"]["r@1"] + OVER_UNTRAINED, m
    assert m["after"]["r@1"] >= m["adapter"]["r@1"] + OVER_ADAPTER, m
    assert m["after"]["mrr"] > m["before"]["mrr"], m
    # While it trained, the index answered with the model it had.
    assert served and all(n == 5 for n in served), served


def test_progress_shows_in_the_metrics(tuned):
    *_, scraped = tuned
    assert scraped, "no scrape happened while fine-tuning"
    labels = '{namespace="fine_tuning_suite.packages",index="names",path="text"}'
    values = {}
    for line in scraped[0].splitlines():
        if line.startswith("likewise_index_fine_tune_") and labels in line:
            name, value = line.split(labels)
            values[name] = float(value)
    assert values["likewise_index_fine_tune_steps_done"] >= 1, values
    assert values["likewise_index_fine_tune_steps"] > values["likewise_index_fine_tune_steps_done"] - 1
    assert values["likewise_index_fine_tune_pairs_per_second"] > 0, values


def test_the_version_is_a_listed_stored_model(tuned, client):
    db, _, info, *_ = tuned
    version = info["training"]["fineTune"]["modelVersion"]
    assert version == "minilm@names-v1"
    assert info["latestDefinition"]["models"] == [version, version]
    models = {m["_id"]: m for m in db.command({"listModels": 1})["models"]}
    tuned_model = models[version]
    assert tuned_model["parent"] == "minilm"
    assert tuned_model["trainedBy"] == {"indexId": info["id"],
                                        "index": "fine_tuning_suite.packages.names"}
    assert tuned_model["usedBy"] == ["fine_tuning_suite.packages.names"]
    assert models["minilm"]["usedBy"] == []
    run = tuned_model["training"]
    assert run["after"] == info["metrics"]["after"] and run["before"] == info["metrics"]["before"]
    # Settings as written, and one time for the run in both places.
    assert run["learningRate"] == 0.0001 and run["trainedAt"] == info["training"]["trainedAt"]
    assert set(tuned_model["files"]) == {"config.json", "tokenizer.json", "model.safetensors"}
    stored = {f["filename"]: f["length"]
              for f in client.likewise.model_files.files.find({"filename": {"$regex": f"^{version}/"}})}
    assert set(stored) == {f"{version}/{n}" for n in tuned_model["files"]}
    assert stored[f"{version}/model.safetensors"] > 10_000_000
    # Another run cannot be asked of a version by hand.
    with pytest.raises(OperationFailure) as err:
        db.command({"createModel": "forged", "kind": "text", "parent": "minilm"})
    assert "set by fine-tuning" in str(err.value)


def test_reported_metrics_match_queries_through_the_proxy(tuned):
    """r@1 and r@10 recomputed by exact `$like` queries restricted to the
    validation documents: the path users take, not the training code's."""
    db, rows, info, *_ = tuned
    valid = [r for r in rows if r["_fold"] == "valid"]
    hit1 = hit10 = 0
    for r in valid:
        got = [d["_id"] for d in db.packages.find({**like(r["name"]), "_fold": "valid"}, {"_id": 1})]
        hit1 += got[:1] == [r["_id"]]
        hit10 += r["_id"] in got
    after = info["metrics"]["after"]
    assert abs(hit1 / len(valid) - after["r@1"]) <= 2 / len(valid), (hit1 / len(valid), after)
    assert abs(hit10 / len(valid) - after["r@10"]) <= 2 / len(valid), (hit10 / len(valid), after)


def test_evaluate_puts_untrained_and_fine_tuned_side_by_side(tuned):
    db, _, info, *_ = tuned
    reply = db.command({"evaluateSemanticIndex": "packages", "name": "names",
                        "filter": {"_fold": "valid"}})
    assert reply["trained"] is True
    for metric in ("r@1", "r@10", "mrr"):
        assert abs(reply["untrained"][metric] - info["metrics"]["before"][metric]) < 1e-6
        assert abs(reply["fineTuned"][metric] - info["metrics"]["after"][metric]) < 1e-6
        assert reply["metrics"][metric] == reply["fineTuned"][metric]
    # The run's three-way comparison on its held-out pairs comes along.
    assert reply["fineTuning"] == info["metrics"]


def test_writes_are_searchable_in_the_new_generation(tuned):
    db, *_ = tuned
    text = "A brand new package that renders fractal flames."
    db.packages.insert_one({"_id": "zz-fresh", "name": "zz-fresh", "text": text, "_fold": "train"})
    # Its own text, encoded by the same version, is nearest to it.
    got = [d["_id"] for d in db.packages.find(
        {"$like": {"document": {"text": text}, "n": 3, "semantic_index": "names"}})]
    assert got[0] == "zz-fresh", got
    db.packages.delete_one({"_id": "zz-fresh"})
    assert "zz-fresh" not in [d["_id"] for d in db.packages.find(
        {"$like": {"document": {"text": text}, "n": 3, "semantic_index": "names"}})]


def test_a_second_proxy_serves_the_version_without_training(tuned, module_direct_uri):
    db, rows, info, *_ = tuned
    # No data directory: the version's files come from the upstream.
    second = start_proxy(module_direct_uri)
    try:
        with MongoClient(f"mongodb://127.0.0.1:{second.port}/") as c:
            coll = c.fine_tuning_suite.packages
            seen = []

            def ready():
                entry = list(coll.list_search_indexes("names"))[0]
                if not seen or seen[-1] != entry["status"]:
                    seen.append(entry["status"])
                return entry if entry["status"] == "READY" else None

            eventually(ready, timeout=600)
            again = ready()
            assert "TRAINING" not in seen, seen
            assert again["training"]["fineTune"]["phase"] == "done"
            assert again["metrics"] == info["metrics"]
            for r in rows[:20]:
                assert [d["_id"] for d in coll.find(like(r["name"], 5))] == \
                    [d["_id"] for d in db.packages.find(like(r["name"], 5))]
    finally:
        second.stop()


def test_bad_fine_tuning_input(client):
    db = client.fine_tuning_bad
    db.drop_collection("docs")
    db.command({"createModel": "minilm", "kind": "text"})
    db.command({"createModel": "vec3", "kind": "vector", "dimensions": 384})
    base = {"createSemanticIndex": "docs", "name": "x", **DEFINITION}
    for change, needle in [
        ({"train": {"fineTune": "yes"}}, "'train.fineTune' must be"),
        ({"train": {"layers": 2}}, "add 'fineTune': true"),
        ({"train": {"fineTune": True, "maxTokens": 1}}, "'train.maxTokens'"),
        ({"models": ["vec3", "minilm"]}, "needs a 'text' model; 'vec3' is a 'vector' model"),
        ({"models": ["minilm", "vec3"]}, "'train.fineTune' fine-tunes one 'text' model"),
        ({"train": {"fineTune": True, "layers": 10}}, "'train.layers' is 10 but model 'minilm' has 6"),
        # Misspelt options are refused, never silently defaults.
        ({"train": {"fineTune": True, "layer": 1}}, "unknown option 'train.layer'"),
        ({"trian": {"epochs": 1}}, "unknown option 'trian'"),
    ]:
        with pytest.raises(OperationFailure) as err:
            db.command({**base, **change})
        assert needle in str(err.value), (change, str(err.value))
    # Too few pairs: the run stops and says so; the index serves untrained.
    db.docs.insert_many([{"_id": i, "text": f"long text number {i}", "name": f"name {i}",
                          "_fold": "valid" if i % 4 == 0 else "train"} for i in range(20)])
    db.command(base)

    def failed():
        info = list(db.docs.list_search_indexes("x"))[0]
        return info if "error" in info["training"] and info["status"] == "READY" else None

    eventually(failed, timeout=300)
    info = failed()
    assert "too few pairs to fine-tune" in info["training"]["error"], info["training"]
    assert info["training"]["pairs"] == {"train": 15, "validation": 5}, info["training"]
    assert info["training"]["trained"] is False and "fineTune" not in info["training"]
    assert info["latestDefinition"]["models"] == ["minilm", "minilm"]
    assert len(list(db.docs.find(like("name 3", 3, False, "x")))) == 3


def test_dropping_an_index_cancels_its_fine_tuning(client):
    db = client.fine_tuning_cancel
    db.drop_collection("docs")
    db.command({"createModel": "minilm", "kind": "text"})
    db.docs.insert_many([{"_id": i, "text": f"a longer text about topic {i}", "name": f"topic {i}"}
                         for i in range(300)])
    db.command({"createSemanticIndex": "docs", "name": "long_run", **DEFINITION,
                "validation": {"fraction": 0.2},
                "train": {"fineTune": True, "layers": 1, "epochs": 1000, "batchSize": 4}})

    def training():
        info = list(db.docs.list_search_indexes("long_run"))[0]
        fine = info["training"].get("fineTune")
        return info["status"] == "TRAINING" and fine is not None and fine.get("step", 0) >= 1

    eventually(training, timeout=300)
    db.docs.drop_search_index("long_run")
    assert list(db.docs.list_search_indexes()) == []
    # The run stops at its next step and never makes a version.
    models = [m["_id"] for m in db.command({"listModels": 1})["models"]]
    assert not [m for m in models if m.startswith("minilm@long_run")], models
    # The proxy goes on serving.
    assert db.command({"ping": 1})["ok"] == 1


def test_a_crash_while_re_encoding_keeps_one_generation_and_the_version(module_direct_uri, tmp_path):
    """Killed while the new generation is being built: the restarted proxy
    builds the staged generation with the stored version, never fine-tunes
    again, and answers from one generation at a time."""
    data = tmp_path / "data"
    first = start_proxy(module_direct_uri, "--data-dir", str(data))
    rows = [{"_id": r["_id"], "name": r["_id"], "text": r["text"]}
            for r in debian_long_descriptions(600)]
    try:
        with MongoClient(f"mongodb://127.0.0.1:{first.port}/") as c:
            db = c.fine_tuning_crash
            db.drop_collection("docs")
            db.docs.insert_many(rows)
            db.command({"createModel": "minilm", "kind": "text"})
            db.command({"createSemanticIndex": "docs", "name": "crash", **DEFINITION,
                        "writeOutputs": True, "validation": {"fraction": 0.2},
                        "train": {"fineTune": True, "layers": 1, "epochs": 1, "batchSize": 16,
                                  "maxTokens": 32}})

            def re_encoding():
                info = list(db.docs.list_search_indexes("crash"))[0]
                assert "error" not in info["training"], info["training"]
                fine = info["training"].get("fineTune") or {}
                assert fine.get("phase") != "done", "the swap finished before the crash"
                if fine.get("phase") == "reEncoding":
                    # The old generation serves, as TRAINING, until the swap.
                    assert info["status"] == "TRAINING" and info["queryable"], info
                    return True
                return False

            eventually(re_encoding, timeout=600)
            # The old generation still answers.
            assert len(list(db.docs.find(like(rows[0]["name"], 5, False, "crash")))) == 5
    finally:
        first.stop()
    second = start_proxy(module_direct_uri, "--data-dir", str(data))
    try:
        with MongoClient(f"mongodb://127.0.0.1:{second.port}/") as c:
            db = c.fine_tuning_crash
            phases = []

            def swapped():
                info = list(db.docs.list_search_indexes("crash"))[0]
                fine = info["training"].get("fineTune") or {}
                if fine.get("phase") and (not phases or phases[-1] != fine["phase"]):
                    phases.append(fine["phase"])
                return info["status"] == "READY" and fine.get("phase") == "done"

            eventually(swapped, timeout=600)
            assert "fineTuning" not in phases, phases
            info = list(db.docs.list_search_indexes("crash"))[0]
            assert info["training"]["fineTune"]["modelVersion"] == "minilm@crash-v1"
            models = [m["_id"] for m in db.command({"listModels": 1})["models"]]
            assert "minilm@crash-v1" in models and "minilm@crash-v2" not in models, models
            assert len(list(db.docs.find(like(rows[0]["name"], 5, index="crash")))) == 5
            # Outputs go under the version's name, beside the parent's.
            field = "_outputs.text.minilm@crash-v1"
            eventually(lambda: db.docs.count_documents({field: {"$size": 384}}) == len(rows),
                       timeout=300)
            doc = db.docs.find_one({"_id": rows[0]["_id"]})
            assert len(doc["_outputs"]["text"]["minilm"]) == 384
            assert doc["_outputs"]["text"]["minilm"] != doc["_outputs"]["text"]["minilm@crash-v1"]
    finally:
        second.stop()


def test_update_search_index_can_ask_for_fine_tuning(client):
    """An index made without training is updated to fine-tune: the update's
    generation serves, fine-tunes, and is replaced by the version's."""
    db = client.fine_tuning_update
    db.drop_collection("docs")
    db.command({"createModel": "minilm", "kind": "text"})
    db.docs.insert_many([{"_id": r["_id"], "name": r["_id"], "text": r["text"]}
                         for r in debian_long_descriptions(300)])
    plain = {k: v for k, v in DEFINITION.items()
             if k not in ("loss", "metrics", "splitter", "validation", "train")}
    db.command({"createSemanticIndex": "docs", "name": "upd", **plain})
    eventually(lambda: list(db.docs.list_search_indexes("upd"))[0]["status"] == "READY", timeout=300)
    # `adapt` as well: an adapter on the fine-tuned outputs afterwards.
    definition = {**DEFINITION, "validation": {"fraction": 0.2},
                  "train": {"fineTune": True, "layers": 1, "epochs": 1, "batchSize": 16,
                            "maxTokens": 32, "adapt": "query"}}
    with pytest.raises(OperationFailure) as err:
        db.command({"updateSearchIndex": "docs", "name": "upd",
                    "definition": {**definition, "train": {**definition["train"], "epoch": 2}}})
    assert "unknown option 'train.epoch'" in str(err.value)
    db.command({"updateSearchIndex": "docs", "name": "upd", "definition": definition})

    index_id = list(db.docs.list_search_indexes("upd"))[0]["id"]

    def done():
        info = list(db.docs.list_search_indexes("upd"))[0]
        assert "error" not in info.get("training", {}), info["training"]
        fine = info.get("training", {}).get("fineTune") or {}
        adapted = client.likewise.adapters.count_documents({"_id": index_id}) == 1
        return info["status"] == "READY" and fine.get("phase") == "done" and adapted

    eventually(done, timeout=600)
    info = list(db.docs.list_search_indexes("upd"))[0]
    assert info["latestDefinition"]["models"] == ["minilm@upd-v1", "minilm@upd-v1"]
    assert info["latestDefinitionVersion"]["version"] == 2
    # The listing now shows the adapter's run (its default 10 epochs) on
    # the fine-tuned outputs; the version keeps the fine-tuning run's.
    assert info["training"]["epochsDone"] == 10 and "after" in info["metrics"], info["training"]
    version = [m for m in db.command({"listModels": 1})["models"] if m["_id"] == "minilm@upd-v1"][0]
    assert len(version["training"]["losses"]) == 1
    reply = db.command({"evaluateSemanticIndex": "docs", "name": "upd"})
    assert reply["trained"] is True and reply["metrics"] != reply["fineTuned"], reply


# A short run on short texts (package names against one-line summaries),
# for the tests below that need a run, not its quality.
SHORT = {**DEFINITION, "validation": {"fraction": 0.2},
         "train": {"fineTune": True, "layers": 1, "epochs": 3, "batchSize": 8}}


def short_rows(n=300):
    return [{"_id": r["_id"], "name": r["_id"], "text": r["description"]}
            for r in debian_packages(n)]


def test_proxies_on_one_upstream_fine_tune_an_index_once(module_direct_uri):
    """Three proxies on one upstream. The first fine-tunes, then freezes
    mid-run (SIGSTOP: it stops renewing its lease). Two more start on the
    same catalog: both wait for it (phase `waiting`, the untrained
    generation serving), one takes the run over once the lease goes
    stale, and the other waits for that one instead of fine-tuning too,
    then serves its version. One version is made, by one proxy."""
    first = start_proxy(module_direct_uri)
    others = []
    try:
        with MongoClient(f"mongodb://127.0.0.1:{first.port}/") as c:
            db = c.fine_tuning_lease
            db.drop_collection("docs")
            db.docs.insert_many(short_rows())
            db.command({"createModel": "minilm", "kind": "text"})
            db.command({"createSemanticIndex": "docs", "name": "once", **SHORT})

            def fine_tuning():
                info = list(db.docs.list_search_indexes("once"))[0]
                assert "error" not in info["training"], info["training"]
                fine = info["training"].get("fineTune") or {}
                assert fine.get("phase") not in ("reEncoding", "done"), "finished before the freeze"
                return fine.get("phase") == "fineTuning"

            eventually(fine_tuning, timeout=300)
        first.proc.send_signal(signal.SIGSTOP)
        others = [start_proxy(module_direct_uri) for _ in range(2)]
        clients = [MongoClient(f"mongodb://127.0.0.1:{p.port}/") for p in others]
        colls = [cl.fine_tuning_lease.docs for cl in clients]
        phases = [[], []]

        def look(i):
            try:
                info = list(colls[i].list_search_indexes("once"))[0]
            except OperationFailure as e:
                # Still loading the catalog (NotYetInitialized) on a busy machine.
                if e.code == 94:
                    return None, None
                raise
            assert "error" not in info["training"], info["training"]
            phase = (info["training"].get("fineTune") or {}).get("phase")
            if phase and (not phases[i] or phases[i][-1] != phase):
                phases[i].append(phase)
            return info, phase

        # Both wait while the first holds the lease, serving untrained.
        for i in range(2):
            eventually(lambda: "waiting" in phases[i] or look(i)[1] == "waiting", timeout=300)
        for i in range(2):
            info, _ = look(i)
            assert info["status"] == "TRAINING" and info["queryable"], info
            assert len(list(colls[i].find(like("bash", 3, False, "once")))) == 3

        def done(i):
            info, phase = look(i)
            return info is not None and info["status"] == "READY" and phase == "done"

        eventually(lambda: all([done(0), done(1)]), timeout=900)
        ran = [i for i in range(2) if "fineTuning" in phases[i]]
        assert len(ran) == 1, phases
        other = 1 - ran[0]
        # The one that did not run waited for the one that did, then
        # re-encoded with its version.
        after_waiting = phases[other][phases[other].index("waiting"):]
        assert "reEncoding" in after_waiting and "measuring" not in after_waiting, phases
        versions = [list(colls[i].list_search_indexes("once"))[0]["training"]["fineTune"]["modelVersion"]
                    for i in range(2)]
        assert versions == ["minilm@once-v1"] * 2, versions
        models = [m["_id"] for m in clients[0].fine_tuning_lease.command({"listModels": 1})["models"]]
        assert [m for m in models if m.startswith("minilm@once")] == ["minilm@once-v1"], models
        for name in ("bash", "python3", "vim"):
            assert [d["_id"] for d in colls[0].find(like(name, 5, index="once"))] == \
                [d["_id"] for d in colls[1].find(like(name, 5, index="once"))]
        for cl in clients:
            cl.close()
    finally:
        first.stop()
        for p in others:
            p.stop()


def test_a_diverging_run_stops_and_keeps_the_model_serving(client):
    """A learning rate far too high wrecks the weights in the first steps;
    the loss on the run's probe pairs rises over the epoch, the run stops
    and says why, no version is made, and the index serves as before."""
    db = client.fine_tuning_diverge
    db.drop_collection("docs")
    db.docs.insert_many(short_rows())
    db.command({"createModel": "minilm", "kind": "text"})
    db.command({"createSemanticIndex": "docs", "name": "wild", **SHORT,
                "train": {**SHORT["train"], "layers": 2, "epochs": 1, "learningRate": 1.0}})

    def stopped():
        info = list(db.docs.list_search_indexes("wild"))[0]
        return info if "error" in info["training"] and info["status"] == "READY" else None

    eventually(stopped, timeout=600)
    info = stopped()
    error = info["training"]["error"]
    assert "fine-tuning stopped" in error and "try a lower learningRate" in error, error
    assert "fineTune" not in info["training"] and info["training"]["trained"] is False
    assert info["latestDefinition"]["models"] == ["minilm", "minilm"]
    models = [m["_id"] for m in db.command({"listModels": 1})["models"]]
    assert not [m for m in models if m.startswith("minilm@wild")], models
    assert len(list(db.docs.find(like("bash", 5, index="wild")))) == 5

"""Through the proxy a client can do no more than it could directly, and
stored definitions, models and endpoints are the operator's (issue 14).

One SecantusDB with --auth and these identities: anonymous; read on A;
readWrite on A; dbAdmin on B (createIndex and listIndexes, no find); a
custom role on B with find, listIndexes and createIndex but not update;
another with update only; readWrite on the metadata database; root. A.docs and B.secret each have a
vector index made by root. The proxy runs as a root user of its own, with
one embeddings endpoint allowed (--allow-model-host) and a trap listener
on another port that must never be reached.
"""

import hashlib
import os
import socket
import threading

import pytest
from pymongo import MongoClient
from pymongo.errors import BulkWriteError, OperationFailure
from pymongo.write_concern import WriteConcern
from pymongo.operations import SearchIndexModel

from conftest import eventually, start_proxy, start_secured_upstream, start_upstream, wait_ready
from embed_server import EmbedServer

PROXY_USER, PROXY_PW = "likewise", "proxy:p@ss"
SECRET_ENV = "LIKEWISE_SECRET_FOR_THE_TEST"
SECRET_VALUE = "do-not-send-this-anywhere"

# identity -> (password, roles); anonymous has no entry.
USERS = {
    "reader_a": ("pw-reader", [{"role": "read", "db": "A"}]),
    "writer_a": ("pw-writer", [{"role": "readWrite", "db": "A"}]),
    "admin_b": ("pw-admin", [{"role": "dbAdmin", "db": "B"}]),
    "indexer_b": ("pw-indexer", [{"role": "indexerB", "db": "B"}]),
    "updater_b": ("pw-updater", [{"role": "updaterB", "db": "B"}]),
    "meta": ("pw-meta", [{"role": "readWrite", "db": "likewise"}]),
    "root": ("pw-root", [{"role": "root", "db": "admin"}]),
}
ALL = {"find", "update", "createIndex", "listIndexes"}
# What each identity may do directly, per database.
RIGHTS = {
    "anonymous": {},
    "reader_a": {"A": {"find", "listIndexes"}},
    "writer_a": {"A": ALL},
    "admin_b": {"B": {"createIndex", "listIndexes"}},
    "indexer_b": {"B": {"find", "listIndexes", "createIndex"}},
    "updater_b": {"B": {"update"}},
    "meta": {},
    "root": {"A": ALL, "B": ALL},
}
# Per database: the collection and the names of its index (names a refused
# client must never see in an error).
NAMESPACES = {"A": ("docs", "idx_a_hidden"), "B": ("secret", "idx_b_hidden")}
QUERY = [3.1, 1.0]


class Trap:
    """A TCP listener on 127.0.0.1 that records every byte it receives."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received = []
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.received.append(b"<connection>")
            conn.settimeout(1.0)
            try:
                self.received.append(conn.recv(65536))
            except OSError:
                pass
            conn.close()

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


def secret_doc(i):
    return {"_id": 100 + i, "v": [float(i), 1.0], "t": f"classified note number {i}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    def prepare(c):
        c.B.command("createRole", "indexerB", roles=[], privileges=[
            {"resource": {"db": "B", "collection": ""}, "actions": ["find", "listIndexes", "createIndex"]}])
        c.B.command("createRole", "updaterB", roles=[], privileges=[
            {"resource": {"db": "B", "collection": ""}, "actions": ["update"]}])
        c.admin.command("createUser", PROXY_USER, pwd=PROXY_PW, roles=["root"])
        for name, (pw, roles) in USERS.items():
            c.admin.command("createUser", name, pwd=pw, roles=roles)
        c.A.docs.insert_many([{"_id": i, "v": [float(i), 1.0], "t": f"public note {i}"} for i in range(40)])
        c.B.secret.insert_many([secret_doc(i) for i in range(40)])

    upstream = start_secured_upstream(str(tmp_path_factory.mktemp("securedb")), prepare)
    endpoint = EmbedServer()
    wide = EmbedServer(dims=9000)
    trap = Trap()
    allowed_dir = tmp_path_factory.mktemp("allowed")
    os.mkfifo(allowed_dir / "fifo.pem")
    upstream_uri = "mongodb://{}:{}@127.0.0.1:{}/?authSource=admin".format(
        PROXY_USER, "proxy%3Ap%40ss", upstream.port)
    env = dict(os.environ, **{SECRET_ENV: SECRET_VALUE, "LIKEWISE_MODEL_KEY_OK": "model-key"})
    extra = ("--allow-model-host", endpoint.host_port, "--allow-model-host", wide.host_port,
             "--allow-model-dir", str(allowed_dir))
    proxy = start_proxy(upstream_uri, *extra, log_level="info", env=env)
    world = {"upstream": upstream, "proxy": proxy, "endpoint": endpoint, "wide": wide, "trap": trap,
             "upstream_uri": upstream_uri, "extra": extra, "env": env}
    with client(world, "root") as root:
        for db, (coll, index) in NAMESPACES.items():
            root[db][coll].create_search_index(SearchIndexModel(name=index, type="vectorSearch", definition={
                "fields": [{"type": "vector", "path": "v", "numDimensions": 2, "similarity": "euclidean"}]}))
            wait_ready(root[db][coll], index)
    yield world
    proxy.stop()
    upstream.stop()
    endpoint.close()
    wide.close()
    trap.close()


def client(world, identity, proxy=None):
    address = (proxy or world["proxy"]).address
    if identity == "anonymous":
        return MongoClient(f"mongodb://{address}/")
    pw = USERS[identity][0]
    return MongoClient(f"mongodb://{identity}:{pw}@{address}/?authSource=admin")


def direct(world):
    return MongoClient(f"mongodb://root:pw-root@127.0.0.1:{world['upstream'].port}/?authSource=admin",
                       directConnection=True)


def digest(world):
    """Every document of A.docs and B.secret, hashed."""
    with direct(world) as c:
        docs = [list(c[db][coll].find({}, sort=[("_id", 1)])) for db, (coll, _) in sorted(NAMESPACES.items())]
    return hashlib.sha256(repr(docs).encode()).hexdigest()


def vector_search(index, vector=QUERY):
    return [{"$vectorSearch": {"index": index, "path": "v", "queryVector": vector, "numCandidates": 10,
                               "limit": 3}},
            {"$project": {"s": {"$meta": "vectorSearchScore"}}}]


# Each form: (name, rights it needs on the collection, run(c, db, coll, index, tag) -> result,
# check(result) for an allowed run). `tag` makes names unique per identity.
FORMS = [
    ("find $like", {"find"},
     lambda c, db, coll, index, tag: list(c[db][coll].find({"$like": {"vector": QUERY, "n": 3, "semantic_index": index}})),
     lambda r: len(r) == 3),
    ("find $like with a filter", {"find"},
     lambda c, db, coll, index, tag: list(c[db][coll].find({"$like": {"vector": QUERY, "n": 3, "semantic_index": index},
                                                            "_id": {"$gte": 0}})),
     lambda r: len(r) == 3),
    ("find $like by _id (present)", {"find"},
     lambda c, db, coll, index, tag: list(c[db][coll].find(
         {"$like": {"document": {"_id": 5 if db == "A" else 105}, "n": 2, "semantic_index": index}})),
     lambda r: len(r) == 2),
    ("find $like by _id (absent)", {"find"},
     lambda c, db, coll, index, tag: list(c[db][coll].find({"$like": {"document": {"_id": 99999}, "n": 2,
                                                                       "semantic_index": index}})),
     None),
    ("aggregate $vectorSearch with scores", {"find"},
     lambda c, db, coll, index, tag: list(c[db][coll].aggregate(vector_search(index))),
     lambda r: len(r) == 3 and all("s" in d for d in r)),
    ("$vectorSearch inside $unionWith", {"find"},
     lambda c, db, coll, index, tag: list(c[db][coll].aggregate(
         [{"$match": {"_id": -1}}, {"$unionWith": {"coll": coll, "pipeline": vector_search(index)}}])),
     lambda r: len(r) == 3 and all("s" in d for d in r)),
    ("$vectorSearch of the wrong size", {"find"},
     lambda c, db, coll, index, tag: list(c[db][coll].aggregate(vector_search(index, [1.0, 2.0, 3.0]))),
     None),
    ("$rankFusion of $vectorSearch and a sorted read", {"find"},
     lambda c, db, coll, index, tag: list(c[db][coll].aggregate([{"$rankFusion": {
         "input": {"pipelines": {"v": vector_search(index)[:1],
                                 "s": [{"$match": {"_id": {"$gte": 0}}}, {"$sort": {"_id": 1}},
                                       {"$limit": 3}]}},
         "scoreDetails": True}}, {"$project": {"d": {"$meta": "scoreDetails"}}}])),
     lambda r: len(r) >= 3 and all("d" in d for d in r)),
    ("$scoreFusion with an expression", {"find"},
     lambda c, db, coll, index, tag: list(c[db][coll].aggregate([{"$scoreFusion": {
         "input": {"pipelines": {"v": vector_search(index)[:1]}, "normalization": "none"},
         "combination": {"method": "expression", "expression": {"$multiply": ["$$v", 2]}}}}])),
     lambda r: len(r) == 3),
    ("$searchMeta (counts and facets)", {"find"},
     lambda c, db, coll, index, tag: list(c[db][coll].aggregate([{"$searchMeta": {
         "index": index, "facet": {"facets": {"f": {"type": "number", "path": "n",
                                                    "boundaries": [0, 100, 1000]}}}}}])),
     None),
    ("$search with $$SEARCH_META and highlights", {"find"},
     lambda c, db, coll, index, tag: list(c[db][coll].aggregate([
         {"$search": {"index": index, "text": {"query": "x", "path": "t"},
                      "highlight": {"path": "t"}, "count": {"type": "total"}}},
         {"$project": {"m": "$$SEARCH_META", "h": {"$meta": "searchHighlights"}}}])),
     None),
    ("count $like", {"find"},
     lambda c, db, coll, index, tag: c[db].command({"count": coll, "query": {"$like": {"vector": QUERY, "n": 3, "semantic_index": index}}}),
     lambda r: r["n"] == 3),
    ("explain $vectorSearch", {"find"},
     lambda c, db, coll, index, tag: c[db].command(
         {"explain": {"aggregate": coll, "pipeline": vector_search(index), "cursor": {}}}),
     lambda r: r["likewise"]["results"] == 3),
    ("listSearchIndexes", {"listIndexes"},
     lambda c, db, coll, index, tag: list(c[db][coll].list_search_indexes()),
     lambda r: any(i["name"].endswith("_hidden") for i in r)),
    ("listNeighbourhoods", {"listIndexes", "find"},
     lambda c, db, coll, index, tag: c[db].command({"listNeighbourhoods": coll}),
     lambda r: r["ok"] == 1),
    ("createSearchIndexes", {"createIndex", "find"},
     lambda c, db, coll, index, tag: c[db].command({"createSearchIndexes": coll, "indexes": [
         {"name": f"made_{tag}", "type": "vectorSearch", "definition": {"fields": [
             {"type": "vector", "path": "v", "numDimensions": 2, "similarity": "cosine"}]}}]}),
     lambda r: r["indexesCreated"][0]["name"].startswith("made_")),
    ("createSemanticIndex writing outputs", {"createIndex", "find", "update"},
     lambda c, db, coll, index, tag: c[db].command({"createSemanticIndex": coll, "name": f"sem_{tag}",
                                                    "models": ["raw2"], "keys": ["v"], "writeOutputs": True}),
     lambda r: r["ok"] == 1),
    ("updateSearchIndex (absent)", {"createIndex", "find"},
     lambda c, db, coll, index, tag: c[db].command({"updateSearchIndex": coll, "name": "absent", "definition": {
         "fields": [{"type": "vector", "path": "v", "numDimensions": 2, "similarity": "cosine"}]}}),
     None),
    ("dropSearchIndex (absent)", {"createIndex"},
     lambda c, db, coll, index, tag: c[db].command({"dropSearchIndex": coll, "name": "absent"}),
     None),
    ("createNeighbourhood", {"createIndex", "find", "update"},
     lambda c, db, coll, index, tag: c[db].command({"createNeighbourhood": coll, "name": f"nb_{tag}", "n": 2,
                                                    "semantic_index": index}),
     lambda r: r["ok"] == 1),
    ("dropNeighbourhood (absent)", {"createIndex", "update"},
     lambda c, db, coll, index, tag: c[db].command({"dropNeighbourhood": coll, "name": "absent"}),
     None),
    ("evaluateSemanticIndex", {"listIndexes", "find"},
     lambda c, db, coll, index, tag: c[db].command({"evaluateSemanticIndex": coll, "name": index}),
     None),
]


def cases():
    for identity in ["anonymous"] + list(USERS):
        for db in NAMESPACES:
            for form in FORMS:
                allowed = form[1] <= RIGHTS[identity].get(db, set())
                yield identity, db, form, allowed


def test_authorisation_matrix(world):
    """Every identity × every owned command and query form × a namespace it
    can or cannot use: refused exactly when the client lacks a right the
    proxy's work would use, with Unauthorized (13) and a message naming
    nothing that exists; allowed forms work. Refusals change no document."""
    with client(world, "root") as root:
        root.admin.command({"createModel": "raw2", "kind": "vector", "dimensions": 2})
    before = digest(world)
    refused = [(i, db, f) for i, db, f, ok in cases() if not ok]
    allowed = [(i, db, f) for i, db, f, ok in cases() if ok]
    assert len(refused) > 100 and len(allowed) > 30
    refusals = {}
    for identity, db, (name, needs, run, _) in refused:
        coll, index = NAMESPACES[db]
        with client(world, identity) as c:
            with pytest.raises(OperationFailure) as err:
                run(c, db, coll, index, identity)
        what = f"{identity} {name} on {db}"
        assert err.value.code == 13, (what, err.value.details)
        message = err.value.details["errmsg"]
        for leak in ("idx_a_hidden", "idx_b_hidden", "dimensions", "no indexed vector", "105", "99999"):
            assert leak not in message, (what, message)
        refusals.setdefault((identity, db, name.split(" (")[0]), set()).add(message)
    # Present and absent _ids are refused alike.
    for key, messages in refusals.items():
        assert len(messages) == 1, (key, messages)
    assert digest(world) == before

    for identity, db, (name, needs, run, check) in allowed:
        coll, index = NAMESPACES[db]
        with client(world, identity) as c:
            try:
                result = run(c, db, coll, index, identity)
            except OperationFailure as e:
                # Allowed, and answered on its merits (absent names, no models).
                assert e.code != 13 and check is None, (identity, db, name, e.details)
                continue
        if check is not None:
            assert check(result), (identity, db, name, result)
    with client(world, "root") as root:
        for db, (coll, _) in NAMESPACES.items():
            for nb in root[db].command({"listNeighbourhoods": coll})["cursor"]["firstBatch"]:
                root[db].command({"dropNeighbourhood": coll, "name": nb["name"]})
            for idx in root[db][coll].list_search_indexes():
                if idx["name"] != NAMESPACES[db][1]:
                    root[db][coll].drop_search_index(idx["name"])


def test_explain_cannot_reach_into_another_database(world):
    """The issue's probe: read on A only, explain sent to A naming B. mongod
    refuses a mismatched inner $db (InvalidNamespace, 73); so does the
    proxy, for everyone, before planning anything."""
    for identity in ("reader_a", "root"):
        with client(world, identity) as c:
            with pytest.raises(OperationFailure) as err:
                c.A.command({"explain": {"aggregate": "secret", "$db": "B", "cursor": {},
                                         "pipeline": [{"$vectorSearch": {
                                             "index": "idx_b_hidden", "path": "v", "queryVector": QUERY,
                                             "exact": True, "limit": 10000}},
                                             {"$project": {"s": {"$meta": "vectorSearchScore"}}}]}})
            assert err.value.code == 73, err.value.details
            assert "likewise" not in err.value.details and "105" not in str(err.value.details)


def test_models_reach_only_what_the_operator_allows(world):
    """apiKeyEnv names only LIKEWISE_MODEL_KEY_* variables; http models reach
    only allowed hosts, through a URL parser that refuses control
    characters; failed answers are not relayed; CA files only from allowed
    directories, never read without bound; no model outputs more than 8,192
    dimensions. The trap never hears from the proxy and no secret leaves."""
    endpoint, wide, trap = world["endpoint"], world["wide"], world["trap"]
    seen_before = len(endpoint.requests)
    with client(world, "meta") as meta:
        db = meta.likewise

        def refused(command, needle):
            with pytest.raises(OperationFailure) as err:
                db.command(command)
            assert err.value.code == 2 and needle in err.value.details["errmsg"], err.value.details
            return err.value.details["errmsg"]

        for var in ("LIKEWISE_UPSTREAM", SECRET_ENV, "HOME", "LIKEWISE_MODEL_KEY_"):
            refused({"createModel": "m", "kind": "http", "url": endpoint.url, "model": "x", "apiKeyEnv": var},
                    "LIKEWISE_MODEL_KEY_")
        trap_url = f"http://127.0.0.1:{trap.port}/v1/embeddings"
        refused({"createModel": "m", "kind": "http", "url": trap_url, "model": "x"}, "--allow-model-host")
        upstream_url = f"http://127.0.0.1:{world['upstream'].port}/"
        refused({"createModel": "m", "kind": "http", "url": upstream_url, "model": "x"}, "--allow-model-host")
        refused({"createModel": "m", "kind": "http", "model": "x",
                 "url": endpoint.url + "\r\nX-Injected: 1\r\n\r\nPOST /admin HTTP/1.1"}, "not a valid URL")
        refused({"createModel": "m", "kind": "http", "model": "x",
                 "url": f"http://127.0.0.1:{trap.port}@{endpoint.host_port}/v1/embeddings"}, "user info")
        refused({"createModel": "m", "kind": "http", "model": "x", "url": endpoint.url.replace("http:", "https:"),
                 "tlsCAFile": "/dev/zero"}, "--allow-model-dir")
        fifo = os.path.join(world["extra"][-1], "fifo.pem")
        refused({"createModel": "m", "kind": "http", "model": "x", "url": endpoint.url.replace("http:", "https:"),
                 "tlsCAFile": fifo}, "not a regular file")
        refused({"createModel": "m", "kind": "text", "path": "/etc"}, "--allow-model-dir")
        refused({"createModel": "m", "kind": "text", "path": world["extra"][-1] + "/../../etc"}, "'..'")
        refused({"createModel": "m", "kind": "http", "url": wide.url, "model": "x"}, "at most 8192")
        refused({"createModel": "m", "kind": "http", "url": wide.url, "model": "x", "dimensions": 9000},
                "from 1 to 8192")
        # An internal service's answer is never quoted back.
        endpoint.failing, endpoint.fail_body = True, {"error": "INTERNAL-TOKEN-42"}
        try:
            message = refused({"createModel": "m", "kind": "http", "url": endpoint.url, "model": "x",
                               "retries": 0}, "answered 503")
            assert "INTERNAL-TOKEN-42" not in message
        finally:
            endpoint.failing = False
        made = db.command({"createModel": "ok", "kind": "http", "url": endpoint.url, "model": "x",
                           "apiKeyEnv": "LIKEWISE_MODEL_KEY_OK"})
        assert made["model"]["dimensions"] == 64
        db.command({"dropModel": "ok"})
    assert trap.received == []
    sent = endpoint.requests[seen_before:]
    assert sent and all("x-injected" not in headers for headers, _ in sent)
    everything = repr(sent) + repr(wide.requests)
    for secret in (SECRET_VALUE, PROXY_PW, "proxy%3Ap%40ss", "classified"):
        assert secret not in everything
    assert any(h.get("authorization") == "Bearer model-key" for h, _ in sent)


def test_index_rights_do_not_read_or_write_documents(world):
    """createIndex without find cannot make the proxy read a collection
    (an index over a model posts every value to the model); without update
    it cannot make the proxy write into documents."""
    endpoint = world["endpoint"]
    with client(world, "root") as root:
        root.admin.command({"createModel": "exfil", "kind": "http", "url": endpoint.url, "model": "x"})
    seen_before = len(endpoint.requests)
    before = digest(world)
    try:
        with client(world, "admin_b") as admin_b:
            with pytest.raises(OperationFailure) as err:
                admin_b.B.command({"createSemanticIndex": "secret", "name": "exfil", "models": ["exfil"],
                                   "keys": ["t"]})
            assert err.value.code == 13
        with client(world, "indexer_b") as indexer:
            for command in ({"createNeighbourhood": "secret", "name": "nbx", "semantic_index": "idx_b_hidden"},
                            {"dropNeighbourhood": "secret", "name": "nbx"},
                            {"createSemanticIndex": "secret", "name": "outx", "models": ["exfil"], "keys": ["t"],
                             "writeOutputs": True}):
                with pytest.raises(OperationFailure) as err:
                    indexer.B.command(command)
                assert err.value.code == 13, (command, err.value.details)
        assert digest(world) == before
        assert not any(b"classified" in body for _, body in endpoint.requests[seen_before:])
    finally:
        with client(world, "root") as root:
            root.admin.command({"dropModel": "exfil"})


def test_definitions_planted_in_the_metadata_database_are_ignored(world):
    """A client that can write the metadata database copies a stored model,
    index and neighbourhood definition, points them at B.secret and an
    allowed endpoint, and waits for a restart: the new proxy loads only what
    a proxy wrote (signed with its key), warns about the rest, and never
    reads B.secret for them."""
    endpoint = world["endpoint"]
    with client(world, "root") as root:
        root.admin.command({"createModel": "honest", "kind": "http", "url": endpoint.url, "model": "x"})
        root.B.command({"createNeighbourhood": "secret", "name": "real", "n": 2, "semantic_index": "idx_b_hidden"})
    with direct(world) as c:
        meta = c.likewise
        real_model = meta.models.find_one({"_id": "honest"})
        real_index = meta.search_indexes.find_one({"name": "idx_b_hidden"})
        real_nb = meta.neighbourhoods.find_one({"name": "real"})
        assert real_model and real_index and real_nb and "_sig" in real_index
    with client(world, "meta") as planter:
        meta = planter.likewise
        # A copy of a real model under another name, keeping its signature.
        meta.models.insert_one(dict(real_model, _id="planted"))
        meta.search_indexes.insert_one({"_id": "planted-index", "db": "B", "collection": "secret",
                                        "name": "planted", "type": "vectorSearch",
                                        "definition": {"models": ["honest"], "keys": ["t"]}})
        meta.search_indexes.insert_one(dict(real_index, _id="planted-copy", name="planted_copy"))
        meta.neighbourhoods.insert_one(dict(real_nb, _id="B.secret.planted", name="planted"))
    seen_before = len(endpoint.requests)
    second = start_proxy(world["upstream_uri"], *world["extra"], log_level="info", env=world["env"])
    try:
        with client(world, "root", proxy=second) as root:
            listed = [i["name"] for i in root.B.secret.list_search_indexes()]
            assert listed == ["idx_b_hidden"], listed
            wait_ready(root.B.secret, "idx_b_hidden")
            hoods = [n["name"] for n in root.B.command({"listNeighbourhoods": "secret"})["cursor"]["firstBatch"]]
            assert hoods == ["real"], hoods
            models = [m["_id"] for m in root.admin.command({"listModels": 1})["models"]]
            assert "planted" not in models and "honest" in models
        eventually(lambda: sum("did not write" in line for line in second.lines) >= 4)
        with direct(world) as c:
            assert c.B.secret.count_documents({"_like.planted": {"$exists": True}}) == 0
        assert not any(b"classified" in body for _, body in endpoint.requests[seen_before:])
    finally:
        second.stop()
        with direct(world) as c:
            c.likewise.models.delete_one({"_id": "planted"})
            c.likewise.search_indexes.delete_many({"_id": {"$in": ["planted-index", "planted-copy"]}})
            c.likewise.neighbourhoods.delete_one({"_id": "B.secret.planted"})
        with client(world, "root") as root:
            root.B.command({"dropNeighbourhood": "secret", "name": "real"})
            root.admin.command({"dropModel": "honest"})


def test_search_indexes_are_bounded():
    """Each search index holds an upstream connection: one collection has
    at most 64 and the proxy at most --max-search-indexes, so a client that
    may create indexes cannot use up the upstream's connections. A refused
    command creates none of its indexes."""
    # An upstream of its own: a shared one holds other suites' indexes,
    # which count towards the bound.
    upstream = start_upstream()
    proxy = start_proxy(f"mongodb://127.0.0.1:{upstream.port}/", "--max-search-indexes", "70")
    field = {"fields": [{"type": "vector", "path": "v", "numDimensions": 2, "similarity": "cosine"}]}
    many = [{"name": f"i{n}", "type": "vectorSearch", "definition": field} for n in range(65)]
    try:
        with MongoClient(f"mongodb://{proxy.address}/") as c:
            db = c.bounded
            for coll in ("one", "two", "three"):
                db.drop_collection(coll)
                db.create_collection(coll)  # Atlas refuses indexes on missing collections
            with pytest.raises(OperationFailure) as err:
                db.command({"createSearchIndexes": "one", "indexes": many})
            assert err.value.code == 67 and "at most 64" in err.value.details["errmsg"]
            assert list(db.one.list_search_indexes()) == []
            db.command({"createSearchIndexes": "one", "indexes": many[:64]})
            db.command({"createSearchIndexes": "two", "indexes": many[:6]})
            assert len(list(db.one.list_search_indexes())) == 64
            with pytest.raises(OperationFailure) as err:
                db.command({"createSearchIndexes": "three", "indexes": many[:1]})
            assert err.value.code == 67 and "--max-search-indexes" in err.value.details["errmsg"]
            # Dropping one frees its place.
            db.two.drop_search_index("i0")
            db.command({"createSearchIndexes": "three", "indexes": many[:1]})
            for coll in ("one", "two", "three"):
                for index in db[coll].list_search_indexes():
                    db[coll].drop_search_index(index["name"])
    finally:
        proxy.stop()
        upstream.stop()


def test_writes_change_indexes_only_as_the_upstream_confirms(world):
    """Index maintenance after a write uses only what the upstream
    confirms: an unacknowledged write (refused upstream, no reply) changes
    no vector; an ordered insert indexes nothing after its first error; a
    client that may update but not read cannot make the proxy drop the
    documents it touched from an index."""
    nearest = lambda c, db, coll, index, v: [d["_id"] for d in c[db][coll].find(
        {"$like": {"vector": v, "n": 1, "semantic_index": index}})]
    with client(world, "root") as root:
        # B.secret holds [i, 1] for _id 100 + i: [999, 999] is nearest 139.
        assert nearest(root, "B", "secret", "idx_b_hidden", [999.0, 999.0]) == [139]
        with client(world, "anonymous") as anonymous:
            blind = anonymous.B.secret.with_options(write_concern=WriteConcern(w=0))
            blind.insert_one({"_id": 105, "v": [999.0, 999.0]})
            blind.update_one({"_id": 106}, {"$set": {"v": [998.0, 998.0]}})
            # A command after them on the same connection: they were read.
            with pytest.raises(OperationFailure):
                anonymous.B.secret.find_one()
        assert nearest(root, "B", "secret", "idx_b_hidden", [999.0, 999.0]) == [139]

        with client(world, "writer_a") as writer:
            with pytest.raises(BulkWriteError):
                writer.A.docs.insert_many([{"_id": 500, "v": [1000.0, 1.0]}, {"_id": 500, "v": [0.0, 0.0]},
                                           {"_id": 501, "v": [2000.0, 1.0]}])
            assert writer.A.docs.find_one({"_id": 501}) is None
            assert nearest(writer, "A", "docs", "idx_a_hidden", [2000.0, 1.0]) == [500]
            writer.A.docs.delete_one({"_id": 500})

        with client(world, "updater_b") as updater:
            updater.B.secret.update_one({"_id": 107}, {"$set": {"note": "touched"}})
        assert nearest(root, "B", "secret", "idx_b_hidden", [7.0, 1.0]) == [107]

"""An upstream that requires authentication: clients authenticate through
the proxy themselves (SCRAM passes through untouched), the proxy's own
connections use its credentials from the --upstream URI, and a client that
did not authenticate gets nothing, vector queries included."""

import time

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure
from pymongo.operations import SearchIndexModel

from conftest import start_proxy, start_secured_upstream

TIMEOUT_S = 60


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """SecantusDB with users, restarted with --auth (users are created
    without it, as its docs say)."""
    def prepare(c):
        c.admin.command("createUser", "likewise", pwd="proxy:p@ss", roles=["root"])
        c.admin.command("createUser", "app", pwd="app-pw", roles=["root"])
        c.admin.command("createUser", "viewer", pwd="view-pw", roles=[{"role": "read", "db": "secured"}])

    server = start_secured_upstream(str(tmp_path_factory.mktemp("authdb")), prepare)
    yield server.port
    server.stop()


def test_clients_authenticate_through_the_proxy_and_the_proxy_as_itself(secured):
    upstream = "mongodb://likewise:proxy%3Ap%40ss@127.0.0.1:{}/?authSource=admin".format(secured)
    proxy = start_proxy(upstream, log_level="info")
    try:
        assert "likewise:***@" in proxy.wait_for_line("proxying")
        assert not any("proxy:p@ss" in line or "proxy%3Ap%40ss" in line for line in proxy.lines)
        with MongoClient(f"mongodb://app:app-pw@{proxy.address}/?authSource=admin") as app:
            coll = app.secured.pts
            coll.drop()
            coll.insert_many([{"_id": i, "p": [float(i), 0.0]} for i in range(30)])
            # The build reads the collection on the proxy's own, authenticated connection.
            coll.create_search_index(SearchIndexModel(name="s", type="vectorSearch", definition={
                "fields": [{"type": "vector", "path": "p", "numDimensions": 2, "similarity": "euclidean"}]}))
            deadline = time.monotonic() + TIMEOUT_S
            while [i["status"] for i in coll.list_search_indexes()] != ["READY"]:
                assert time.monotonic() < deadline, list(coll.list_search_indexes())
                time.sleep(0.05)
            assert [d["_id"] for d in coll.find({"$like": {"vector": [7.2, 0.0], "n": 2}})] == [7, 8]

            with MongoClient(f"mongodb://{proxy.address}/") as anonymous:
                other = anonymous.secured.pts
                with pytest.raises(OperationFailure) as err:
                    other.find_one()
                assert err.value.code == 13
                for query in ({"$like": {"vector": [7.2, 0.0], "n": 2}},
                              {"$like": {"vector": [7.2, 0.0], "n": 2}, "_id": {"$gte": 0}}):
                    with pytest.raises(OperationFailure) as err:
                        list(other.find(query))
                    assert err.value.code == 13
            viewer_uri = f"mongodb://viewer:view-pw@{proxy.address}/?authSource=admin"
            with MongoClient(f"mongodb://{proxy.address}/") as anonymous, MongoClient(viewer_uri) as viewer:
                definition = {"fields": [{"type": "vector", "path": "p", "numDimensions": 2,
                                          "similarity": "euclidean"}]}
                for client_, may_list in ((anonymous, False), (viewer, True)):
                    other = client_.secured.pts
                    with pytest.raises(OperationFailure) as err:
                        other.create_search_index(SearchIndexModel(name="x", type="vectorSearch",
                                                                   definition=definition))
                    assert err.value.code == 13
                    with pytest.raises(OperationFailure) as err:
                        other.drop_search_index("s")
                    assert err.value.code == 13
                    with pytest.raises(OperationFailure) as err:
                        client_.secured.command({"createNeighbourhood": "pts", "name": "nb", "n": 3})
                    assert err.value.code == 13
                    if may_list:
                        assert [i["name"] for i in other.list_search_indexes()] == ["s"]
                    else:
                        with pytest.raises(OperationFailure) as err:
                            list(other.list_search_indexes())
                        assert err.value.code == 13
                assert [i["name"] for i in coll.list_search_indexes()] == ["s"]
            with MongoClient(f"mongodb://app:wrong@{proxy.address}/?authSource=admin",
                             serverSelectionTimeoutMS=5000) as wrong:
                with pytest.raises(OperationFailure) as err:
                    wrong.secured.pts.find_one()
                assert err.value.code == 18
            coll.drop_search_index("s")
            coll.drop()
    finally:
        proxy.stop()


def test_wrong_proxy_credentials_are_reported(secured):
    proxy = start_proxy(f"mongodb://likewise:nope@127.0.0.1:{secured}/", log_level="info")
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not any("cannot load search index definitions" in line for line in proxy.lines):
            assert time.monotonic() < deadline, "".join(proxy.lines)
            time.sleep(0.05)
        assert any("AuthenticationFailed" in line or "Authentication failed" in line
                   or "authenticating to the upstream" in line for line in proxy.lines), "".join(proxy.lines)
    finally:
        proxy.stop()

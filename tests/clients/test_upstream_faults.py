"""The upstream goes away: killed in the middle of a query, then restarted
on its port with its data. Clients get errors promptly instead of hanging,
new connections work once it is back, and indexes catch up with writes
made while the proxy was cut off and after."""

import http.client
import threading

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError
from pymongo.operations import SearchIndexModel

from conftest import eventually, metrics_address, start_proxy, start_upstream, wait_ready
from test_metrics import scrape, value


def nearest(coll, point):
    return [d["_id"] for d in coll.find({"$like": {"vector": point, "n": 1}})]


def test_upstream_killed_mid_query_then_restarted(tmp_path):
    storage = tmp_path / "db"
    upstream = start_upstream("--storage-path", str(storage), "--enable-test-commands")
    port = upstream.port
    proxy = start_proxy(f"mongodb://127.0.0.1:{port}/", "--metrics-listen", "127.0.0.1:0")
    metrics_at = metrics_address(proxy)
    in_flight = lambda: value(scrape(metrics_at)[1], "likewise_requests_in_flight")
    try:
        # Polling monitors, rarely: the only request in flight is the query.
        uri = (f"mongodb://{proxy.address}/?retryReads=false&retryWrites=false"
               "&serverMonitoringMode=poll&heartbeatFrequencyMS=60000&appName=held-query")
        with MongoClient(uri, serverSelectionTimeoutMS=5_000) as c:
            coll = c.fault_suite.points
            coll.insert_many([{"_id": i, "p": [float(i), 0.0]} for i in range(300)])
            coll.create_search_index(SearchIndexModel(name="pts", type="vectorSearch", definition={
                "fields": [{"type": "vector", "path": "p", "numDimensions": 2, "similarity": "euclidean"}]}))
            wait_ready(coll, "pts")
            assert nearest(coll, [42.2, 0.0]) == [42]

            # A query the upstream holds for a minute; the upstream dies under it.
            with MongoClient(f"mongodb://127.0.0.1:{port}/", directConnection=True) as direct:
                # Only this client's connections (the proxy's own finds
                # must not take it).
                direct.admin.command("configureFailPoint", "failCommand", mode={"times": 1}, data={
                    "failCommands": ["find"], "blockConnection": True, "blockTimeMS": 60_000,
                    "appName": "held-query"})
            outcome = {}

            def held_query():
                try:
                    outcome["result"] = coll.find_one({"_id": 7})
                except PyMongoError as e:
                    outcome["error"] = e

            query = threading.Thread(target=held_query)
            query.start()
            # The proxy has it and is waiting on the upstream.
            eventually(lambda: in_flight() >= 1, timeout=30)
            upstream.proc.kill()
            upstream.proc.wait()
            query.join(timeout=30)
            assert not query.is_alive(), "the client was left hanging"
            assert "error" in outcome, outcome

            # While it is down: errors, not hangs, and the proxy lives.
            with pytest.raises(PyMongoError):
                coll.find_one({"_id": 1})

            upstream = start_upstream("--storage-path", str(storage), "--port", str(port))

        with MongoClient(uri, serverSelectionTimeoutMS=10_000) as c:
            coll = c.fault_suite.points
            assert coll.find_one({"_id": 7}) == {"_id": 7, "p": [7.0, 0.0]}
            assert nearest(coll, [42.2, 0.0]) == [42]
            # Through the proxy: visible at once.
            coll.insert_one({"_id": 1000, "p": [1000.0, 0.0]})
            assert nearest(coll, [999.0, 0.0]) == [1000]
            # Bypassing it: the change stream is reopened and catches up.
            with MongoClient(f"mongodb://127.0.0.1:{port}/", directConnection=True) as direct:
                direct.fault_suite.points.insert_one({"_id": 2000, "p": [2000.0, 0.0]})
            eventually(lambda: nearest(coll, [1999.0, 0.0]) == [2000], timeout=60)
    finally:
        proxy.stop()
        upstream.stop()



def test_upstream_killed_mid_build_then_restarted(tmp_path):
    """The upstream dies while a build's scan waits on it: the index does
    not stay FAILED, it is built again once the upstream is back, with every
    document."""
    storage = tmp_path / "db"
    upstream = start_upstream("--storage-path", str(storage), "--enable-test-commands")
    port = upstream.port
    proxy = start_proxy(f"mongodb://127.0.0.1:{port}/")
    try:
        with MongoClient(f"mongodb://127.0.0.1:{port}/", directConnection=True) as direct:
            direct.fault_build.points.insert_many([{"_id": i, "p": [float(i), 1.0]} for i in range(5000)])
            # Every getMore waits ten minutes: the scan stops after its first batch.
            direct.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
                "failCommands": ["getMore"], "blockConnection": True, "blockTimeMS": 600_000})
        with MongoClient(f"mongodb://{proxy.address}/", retryReads=False) as c:
            coll = c.fault_build.points
            coll.create_search_index(SearchIndexModel(name="pts", type="vectorSearch", definition={
                "fields": [{"type": "vector", "path": "p", "numDimensions": 2, "similarity": "euclidean"}]}))
            progress = lambda: list(coll.list_search_indexes("pts"))[0]
            eventually(lambda: progress()["status"] == "BUILDING"
                       and progress()["progress"]["documentsScanned"] >= 1000, timeout=60)
        upstream.proc.kill()
        upstream.proc.wait()
        upstream = start_upstream("--storage-path", str(storage), "--port", str(port))
        with MongoClient(f"mongodb://{proxy.address}/") as c:
            coll = c.fault_build.points
            info, seen = wait_ready(coll, "pts", timeout=180)
            assert "FAILED" not in seen
            assert info["progress"]["vectorsIndexed"] == 5000, info
            assert nearest(coll, [4321.2, 1.0]) == [4321]
    finally:
        proxy.stop()
        upstream.stop()


def test_proxy_started_before_its_upstream(tmp_path):
    """A proxy whose upstream is not there yet reports not ready, then loads
    its catalog when the upstream appears: the stored index is served, and
    its name is not free for a second definition."""
    storage = tmp_path / "db"
    first = start_upstream("--storage-path", str(storage))
    port = first.port
    proxy = start_proxy(f"mongodb://127.0.0.1:{port}/")
    with MongoClient(f"mongodb://{proxy.address}/") as c:
        coll = c.fault_early.points
        coll.insert_many([{"_id": i, "p": [float(i), 0.0]} for i in range(200)])
        coll.create_search_index(SearchIndexModel(name="pts", type="vectorSearch", definition={
            "fields": [{"type": "vector", "path": "p", "numDimensions": 2, "similarity": "euclidean"}]}))
        wait_ready(coll, "pts")
    proxy.stop()
    first.proc.terminate()
    first.proc.wait(timeout=60)

    # Each attempt to load the catalog waits for the upstream as long as
    # the URI's serverSelectionTimeoutMS (30 s by default).
    early = start_proxy(f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=2000",
                        "--metrics-listen", "127.0.0.1:0", log_level="info")
    metrics_at = metrics_address(early)
    upstream = None
    try:
        status = lambda: scrape_status(metrics_at, "/ready")
        assert status() == 503
        # It keeps trying while the upstream is away.
        eventually(lambda: sum("cannot load search index definitions" in l for l in early.lines) >= 2,
                   timeout=60)
        assert status() == 503
        upstream = start_upstream("--storage-path", str(storage), "--port", str(port))
        eventually(lambda: status() == 200, timeout=60)
        with MongoClient(f"mongodb://{early.address}/") as c:
            coll = c.fault_early.points
            assert [i["name"] for i in coll.list_search_indexes()] == ["pts"]
            with pytest.raises(OperationFailure) as twice:
                coll.create_search_index(SearchIndexModel(name="pts", type="vectorSearch", definition={
                    "fields": [{"type": "vector", "path": "p", "numDimensions": 2, "similarity": "cosine"}]}))
            assert twice.value.code == 68
            wait_ready(coll, "pts")
            assert nearest(coll, [42.2, 0.0]) == [42]
    finally:
        early.stop()
        if upstream:
            upstream.stop()


def scrape_status(address, path):
    """The HTTP status of GET `path` on the metrics listener."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()

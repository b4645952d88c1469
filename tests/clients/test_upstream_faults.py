"""The upstream goes away: killed in the middle of a query, then restarted
on its port with its data. Clients get errors promptly instead of hanging,
new connections work once it is back, and indexes catch up with writes
made while the proxy was cut off and after."""

import threading

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from pymongo.operations import SearchIndexModel

from conftest import eventually, start_proxy, start_upstream, wait_ready
from test_metrics import scrape, value


def nearest(coll, point):
    return [d["_id"] for d in coll.find({"$like": {"vector": point, "n": 1}})]


def test_upstream_killed_mid_query_then_restarted(tmp_path):
    storage = tmp_path / "db"
    upstream = start_upstream("--storage-path", str(storage), "--enable-test-commands")
    port = upstream.port
    proxy = start_proxy(f"mongodb://127.0.0.1:{port}/", "--metrics-listen", "127.0.0.1:0")
    [line] = [l for l in proxy.lines if l.startswith("likewise metrics on ")]
    metrics_at = line.split()[-1]
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


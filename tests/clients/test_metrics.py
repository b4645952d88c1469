"""Prometheus metrics and the health check on --metrics-listen."""

import re
import signal
import time
import urllib.error
import urllib.request

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure
from pymongo.operations import SearchIndexModel

from conftest import eventually, metrics_address, start_proxy


def scrape(address, path="/metrics"):
    with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
        return response.status, response.read().decode()


def value(text, series):
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert match, f"{series} missing"
    return float(match.group(1))


def test_metrics_count_traffic_errors_latency_and_indexes(direct_uri):
    proxy = start_proxy(direct_uri, "--metrics-listen", "127.0.0.1:0")
    try:
        metrics_at = metrics_address(proxy)
        # 200 once the driver has found the upstream's primary.
        def healthy():
            try:
                return scrape(metrics_at, "/health") == (200, "ok\n")
            except urllib.error.HTTPError as e:
                assert e.code == 503
                return False
        eventually(healthy, timeout=60)
        with pytest.raises(urllib.error.HTTPError):
            scrape(metrics_at, "/nope")

        with MongoClient(f"mongodb://{proxy.address}/") as client:
            coll = client.metrics_suite.pts
            coll.drop()
            coll.insert_many([{"_id": i, "p": [float(i), 1.0]} for i in range(40)])
            list(coll.find({"_id": {"$lt": 5}}))
            coll.create_search_index(SearchIndexModel(name="m", type="vectorSearch", definition={
                "fields": [{"type": "vector", "path": "p", "numDimensions": 2, "similarity": "euclidean"}]}))
            deadline = time.monotonic() + 60
            while [i["status"] for i in coll.list_search_indexes()] != ["READY"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            list(coll.find({"$like": {"vector": [3.0, 1.0], "n": 3}}))
            with pytest.raises(OperationFailure):
                list(coll.find({"$like": {"vector": [3.0], "n": 3}}))

            status, text = scrape(metrics_at)
            assert status == 200
            assert value(text, "likewise_connections_total") >= 1
            assert value(text, "likewise_connections_open") >= 1
            assert value(text, 'likewise_commands_total{command="insert"}') >= 1
            assert value(text, 'likewise_commands_total{command="find"}') >= 3
            assert value(text, 'likewise_errors_total{side="client"}') >= 1
            assert value(text, "likewise_upstream_latency_seconds_count") > 0
            assert value(text, 'likewise_vector_queries_total{strategy="graph search"}') >= 1
            assert value(text, "likewise_vector_query_seconds_count") >= 1
            assert value(text, 'likewise_index_vectors{namespace="metrics_suite.pts",index="m",path="p"}') == 40
            assert value(text, 'likewise_index_ready{namespace="metrics_suite.pts",index="m",path="p"}') == 1
            assert re.search(r'^likewise_errors_by_code_total\{side="client",code="\w+"\} [1-9]', text, re.M), text
            assert value(text, 'likewise_index_neighbourhood_pending{namespace="metrics_suite.pts",index="m",path="p"}') == 0
            assert "# TYPE likewise_index_training_epochs gauge" in text
            coll.drop_search_index("m")
            coll.drop()
    finally:
        proxy.stop()


def test_full_text_searches_are_counted_by_the_thread_that_walked_them(direct_uri):
    """A plain `text` query of three or more terms (a disjunction MaxScore
    walks) asking for at most 100 hits, whose walk is known to be small,
    runs on the client's connection thread; more hits, or an operator
    whose cost is not known before the walk, run on the CPU pool
    (`proxy/query.rs::top`)."""
    proxy = start_proxy(direct_uri, "--metrics-listen", "127.0.0.1:0")
    try:
        metrics_at = metrics_address(proxy)
        series = {thread: f'likewise_full_text_top_k_total{{thread="{thread}"}}'
                  for thread in ("connection", "pool")}

        def walked():
            _, text = scrape(metrics_at)
            return {thread: value(text, name) for thread, name in series.items()}

        with MongoClient(f"mongodb://{proxy.address}/") as client:
            coll = client.metrics_suite.texts
            coll.drop()
            words = ["apple", "banana", "cherry", "grape", "lemon", "mango"]
            coll.insert_many([{"_id": i, "t": f"{words[i % 6]} {words[(i * 5) % 6]} pie {i}"}
                              for i in range(300)])
            coll.create_search_index(SearchIndexModel(name="s", definition={"mappings": {"dynamic": True}}))
            eventually(lambda: [i["status"] for i in coll.list_search_indexes()] == ["READY"], timeout=60)

            def search(operator, limit):
                return list(coll.aggregate([{"$search": {"index": "s", **operator}}, {"$limit": limit}]))

            before = walked()
            assert len(search({"text": {"query": "apple banana pie", "path": "t"}}, 10)) == 10
            after = walked()
            assert after == {"connection": before["connection"] + 1, "pool": before["pool"]}, (before, after)
            # More hits than the connection's thread reads back.
            assert len(search({"text": {"query": "apple banana pie", "path": "t"}}, 150)) == 150
            # No cost known before the walk: fuzzy terms, a phrase.
            assert search({"text": {"query": "aple", "path": "t", "fuzzy": {}}}, 10)
            assert search({"phrase": {"query": "apple pie", "path": "t"}}, 10)
            last = walked()
            assert last == {"connection": after["connection"], "pool": after["pool"] + 3}, (after, last)
            coll.drop_search_index("s")
            coll.drop()
    finally:
        proxy.stop()


def test_sigterm_lets_requests_in_flight_finish(direct_uri):
    proxy = start_proxy(direct_uri, "--metrics-listen", "127.0.0.1:0")
    metrics_at = metrics_address(proxy)
    try:
        with MongoClient(f"mongodb://{proxy.address}/") as client:
            coll = client.shutdown_suite.c
            coll.insert_one({"_id": 1})
            outcome = {}
            with coll.watch(max_await_time_ms=1500) as stream:
                def wait_for_change():
                    try:
                        outcome["change"] = stream.try_next()  # a getMore awaiting 1.5 s
                        outcome["ok"] = True
                    except Exception as exc:  # reported below
                        outcome["error"] = exc

                import threading
                waiter = threading.Thread(target=wait_for_change)
                waiter.start()
                deadline = time.monotonic() + 60
                while value(scrape(metrics_at)[1], "likewise_requests_in_flight") < 1:
                    assert time.monotonic() < deadline, "the getMore never went out"
                    time.sleep(0.01)
                proxy.proc.send_signal(signal.SIGTERM)
                waiter.join(timeout=30)
            assert outcome.get("ok"), outcome
            assert proxy.proc.wait(timeout=30) == 0
    finally:
        proxy.stop()

"""What drivers see of the deployment behind the proxy, and how they retry
through it: a standalone is presented as a standalone (so drivers attach no
`txnNumber`, which a standalone mongod refuses), a replica set as a router;
errors the proxy makes itself carry the labels drivers retry on."""

import pytest
from pymongo import MongoClient, monitoring

from conftest import start_proxy, start_upstream


class Recorder(monitoring.CommandListener):
    """Every command pymongo started, and every failure it saw."""

    def __init__(self):
        self.commands = []
        self.failures = []

    def started(self, event):
        self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event):
        pass

    def failed(self, event):
        self.failures.append((event.command_name, dict(event.failure)))


def writes_through(uri):
    """Runs a few retryable writes through `uri`; returns the topology type
    pymongo saw and the write commands it sent."""
    recorder = Recorder()
    with MongoClient(uri, event_listeners=[recorder]) as c:
        coll = c.topo.docs
        coll.drop()
        coll.insert_one({"_id": 1, "n": 1})
        coll.update_one({"_id": 1}, {"$inc": {"n": 1}})
        coll.insert_many([{"_id": 2}, {"_id": 3}])
        coll.delete_one({"_id": 3})
        assert coll.find_one({"_id": 1})["n"] == 2
        assert coll.count_documents({}) == 2
        topology = c.topology_description.topology_type_name
    writes = [cmd for name, cmd in recorder.commands if name in ("insert", "update", "delete")]
    assert len(writes) == 4
    return topology, writes


def test_a_standalone_is_presented_as_a_standalone():
    upstream = start_upstream("--standalone")
    proxy = start_proxy(f"mongodb://127.0.0.1:{upstream.port}/")
    try:
        topology, writes = writes_through(f"mongodb://{proxy.address}/")
        assert topology == "Single"
        assert not any("txnNumber" in w for w in writes), writes
    finally:
        proxy.stop()
        upstream.stop()


def test_a_replica_set_is_presented_as_a_router(proxy):
    topology, writes = writes_through(f"mongodb://{proxy.address}/")
    assert topology == "Sharded"
    # Retryable writes, as through a mongos.
    assert all("txnNumber" in w for w in writes), writes


@pytest.fixture(scope="module")
def slow_upstream():
    """An upstream with failpoints, and a proxy that gives up on a request
    after 1 s (and closes that client connection)."""
    upstream = start_upstream("--enable-test-commands")
    proxy = start_proxy(f"mongodb://127.0.0.1:{upstream.port}/", "--request-timeout-ms", "1000")
    yield upstream, proxy
    proxy.stop()
    upstream.stop()


def hold_once(upstream, command, app):
    """The next `command` from clients named `app` waits 4 s upstream."""
    with MongoClient(f"mongodb://127.0.0.1:{upstream.port}/", directConnection=True) as direct:
        direct.admin.command("configureFailPoint", "failCommand", mode={"times": 1}, data={
            "failCommands": [command], "blockConnection": True, "blockTimeMS": 4000, "appName": app})


def test_a_write_the_proxy_times_out_is_retried_once_and_applied_once(slow_upstream):
    upstream, proxy = slow_upstream
    recorder = Recorder()
    with MongoClient(f"mongodb://{proxy.address}/?appName=retry-write", event_listeners=[recorder]) as c:
        coll = c.topo.retried
        coll.drop()
        hold_once(upstream, "insert", "retry-write")
        coll.insert_one({"_id": "once", "v": 1})
        [(name, failure)] = recorder.failures
        assert name == "insert" and failure["code"] == 89, failure
        assert failure.get("errorLabels") == ["RetryableWriteError"], failure
        inserts = [cmd for n, cmd in recorder.commands if n == "insert"]
        assert len(inserts) == 2 and inserts[0]["txnNumber"] == inserts[1]["txnNumber"]
        # Same _id, same txnNumber: one document however the two land.
        assert coll.count_documents({}) == 1


def test_a_transaction_the_proxy_times_out_is_retried_whole(slow_upstream):
    upstream, proxy = slow_upstream
    recorder = Recorder()
    with MongoClient(f"mongodb://{proxy.address}/?appName=retry-txn", event_listeners=[recorder]) as c:
        coll = c.topo.txn
        coll.drop()
        coll.insert_one({"_id": "seed"})
        hold_once(upstream, "insert", "retry-txn")
        attempts = []

        def work(session):
            attempts.append(1)
            coll.insert_one({"_id": f"in-txn-{len(attempts)}"}, session=session)

        with c.start_session() as session:
            session.with_transaction(work)
        failures = [f for n, f in recorder.failures if n == "insert"]
        assert failures and failures[0].get("errorLabels") == ["TransientTransactionError"], failures
        assert len(attempts) == 2
        assert sorted(d["_id"] for d in coll.find()) == ["in-txn-2", "seed"]

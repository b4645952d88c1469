"""Real deployments behind likewise: replica sets (first host down, first
host a secondary, a primary stepping down under writes and inside a
transaction, a half-open primary), sharded clusters (several mongos) and
the proxy's own connection string (SCRAM-SHA-1, authSource from the path).

The server is always a real SecantusDB; only the roles come from the relay
in `relay.py` (see there why)."""

import json
import os
import socket
import struct
import subprocess
from pathlib import Path
import threading
import time
import urllib.request

import bson
import pytest
from pymongo import MongoClient
from pymongo.read_preferences import Secondary, SecondaryPreferred
from pymongo.errors import OperationFailure, PyMongoError
from pymongo.operations import SearchIndexModel

from conftest import eventually, start_proxy, start_secured_upstream, start_upstream
from relay import ReplicaSet, Routers, replica_set_uri


@pytest.fixture
def replica_set():
    upstream = start_upstream()
    group = ReplicaSet(upstream.port)
    yield upstream, group
    group.stop()
    upstream.stop()


def direct(upstream):
    return MongoClient(f"mongodb://127.0.0.1:{upstream.port}/", directConnection=True)


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(proxy):
    address = proxy.wait_for_line("likewise metrics on").split("likewise metrics on ")[1].split()[0]
    return address


def http_get(address, path):
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_uri_whose_first_host_is_a_secondary(replica_set):
    upstream, group = replica_set
    group.step_down()  # member 1 is primary; the URI lists member 0 first
    proxy = start_proxy(replica_set_uri(group))
    try:
        with MongoClient(f"mongodb://{proxy.address}/") as c:
            c.fo.docs.insert_one({"_id": 1, "x": "written"})
            assert c.fo.docs.find_one({"_id": 1})["x"] == "written"
        # Member 0 would have refused the insert: member 1 forwarded it.
        assert group.members[1].writes and not group.members[0].writes
        with direct(upstream) as d:
            assert d.fo.docs.count_documents({}) == 1
    finally:
        proxy.stop()


def test_a_uri_whose_first_host_is_down(replica_set):
    upstream, group = replica_set
    uri = f"mongodb://127.0.0.1:{closed_port()},{','.join(group.addresses())}/?replicaSet=rs0"
    proxy = start_proxy(uri)
    try:
        with MongoClient(f"mongodb://{proxy.address}/") as c:
            c.fo.docs.insert_one({"_id": 2})
            assert c.fo.docs.count_documents({"_id": 2}) == 1
        assert group.members[0].writes
    finally:
        proxy.stop()


def test_a_vector_query_on_a_primary_that_stepped_down_fails_over(replica_set):
    """A vector query's own requests (its rights probe, filter read and
    fetch) meet a primary that stepped down before monitoring noticed: the
    connection fails over as for a forwarded reply (ShutdownInProgress,
    closed), and the driver's retry finds the new primary."""
    upstream, group = replica_set
    # Monitoring slow enough that the step-down is met by a request first.
    proxy = start_proxy(replica_set_uri(group, heartbeatFrequencyMS=60_000))
    try:
        with MongoClient(f"mongodb://{proxy.address}/", maxPoolSize=1) as c:
            coll = c.fo.vectors
            coll.drop()
            coll.insert_many([{"_id": i, "p": [float(i), 1.0]} for i in range(10)])
            coll.create_search_index(SearchIndexModel(name="v", type="vectorSearch", definition={
                "fields": [{"type": "vector", "path": "p", "numDimensions": 2, "similarity": "euclidean"}]}))
            eventually(lambda: [i["status"] for i in coll.list_search_indexes()] == ["READY"])
            query = [{"$vectorSearch": {"index": "v", "path": "p", "queryVector": [3.1, 1.0], "limit": 2,
                                        "exact": True, "filter": {"_id": {"$gte": 0}}}}]
            assert [d["_id"] for d in coll.aggregate(query)] == [3, 4]
            reads_before = len(group.members[1].reads)
            group.step_down()
            assert [d["_id"] for d in coll.aggregate(query)] == [3, 4]
            assert len(group.members[1].reads) > reads_before  # served by the new primary
    finally:
        proxy.stop()


def test_an_upstream_connection_closed_while_idle_is_replaced_unseen(replica_set):
    """A server or firewall closes connections that sat idle (SecantusDB
    after 5 minutes, NAT gateways, load balancers): the next command on a
    client's connection, even one drivers never retry (`drop`), runs on a
    new upstream connection; the client sees nothing."""
    upstream, group = replica_set
    proxy = start_proxy(replica_set_uri(group))
    try:
        with MongoClient(f"mongodb://{proxy.address}/", retryWrites=False, retryReads=False) as c:
            coll = c.idle_suite.docs
            coll.insert_one({"_id": 1})
            assert group.call(group.members[0].close_connections()) >= 1
            c.idle_suite.drop_collection("docs")
            assert coll.find_one({"_id": 1}) is None
            coll.insert_one({"_id": 2})
            assert group.call(group.members[0].close_connections()) >= 1
            assert coll.find_one({"_id": 2}) == {"_id": 2}
    finally:
        proxy.stop()


def steady_writes(coll, counter, stop, tally):
    """Inserts a new document and increments a counter until `stop`,
    counting only what the driver acknowledged."""
    seq = 0
    while not stop.is_set():
        try:
            coll.insert_one({"seq": seq})
            tally["inserts"] += 1
            coll.update_one({"_id": counter}, {"$inc": {"n": 1}})
            tally["incs"] += 1
        except PyMongoError as e:  # recorded: the test asserts there are none
            tally["errors"].append(repr(e))
        seq += 1


def check_writes(upstream, group, collection, acked, stepped_at, writer):
    """Every acknowledged write is in the server once, and the writer saw
    no error; prints the figures (time to the first write the new primary
    was sent, counted from the step-down)."""
    first_on_new_primary = min(group.members[1].writes) - stepped_at
    with direct(upstream) as d:
        coll = d.fo[collection]
        inserted = coll.count_documents({"seq": {"$exists": True}})
        distinct = len(coll.distinct("seq"))
        counter = coll.find_one({"_id": "counter"})["n"]
    print(f"\n{writer}, step-down under writes: {acked['inserts']} inserts and {acked['incs']} "
          f"increments acknowledged; {inserted} documents found ({inserted - distinct} duplicates), "
          f"counter {counter}; first write on the new primary {first_on_new_primary * 1000:.0f} ms "
          f"after the step-down; errors {acked['errors']}")
    assert acked["errors"] == []
    assert inserted == acked["inserts"] and distinct == inserted
    assert counter == acked["incs"]


def test_a_step_down_under_steady_writes_loses_and_doubles_nothing(replica_set):
    """pymongo with default retryable writes, writing without pause while
    the primary steps down in the middle of a write (it runs the write and
    closes the connection before answering): every acknowledged write is
    there once."""
    upstream, group = replica_set
    proxy = start_proxy(replica_set_uri(group), "--metrics-listen", "127.0.0.1:0")
    try:
        with MongoClient(f"mongodb://{proxy.address}/") as c:
            coll = c.fo.steady
            coll.drop()
            coll.insert_one({"_id": "counter", "n": 0})
            tally = {"inserts": 0, "incs": 0, "errors": []}
            stop = threading.Event()
            writer = threading.Thread(target=steady_writes, args=(coll, "counter", stop, tally))
            writer.start()
            try:
                eventually(lambda: tally["incs"] >= 100, timeout=60)
                before = tally["incs"]
                # The primary runs the next write and steps down without
                # answering it: the driver's retry must not apply it twice.
                group.step_down_during_next_write()
                eventually(lambda: group.primary == 1, timeout=60)
                eventually(lambda: tally["incs"] >= before + 100, timeout=90)
            finally:
                stop.set()
                writer.join(60)
        check_writes(upstream, group, "steady", tally, group.stepped_at, "pymongo")
        # The old primary's failures are counted against it.
        text = http_get(metrics(proxy), "/metrics")[1]
        old = group.members[0].address
        assert f'likewise_upstream_server{{address="{group.members[1].address}",role="RSPrimary"}} 1' in text
        failures = [line for line in text.splitlines()
                    if line.startswith(f'likewise_upstream_failures_total{{address="{old}"}}')]
        assert failures and int(failures[0].split()[-1]) >= 1, text
    finally:
        proxy.stop()


NODE_DIR = Path(__file__).resolve().parent / "node"


def test_node_driver_writes_through_a_step_down(replica_set):
    """The same with the Node driver, the primary stepping down between
    writes (the next one is refused with NotWritablePrimary): every
    acknowledged write is there once, and the driver raised no error."""
    upstream, group = replica_set
    proxy = start_proxy(replica_set_uri(group))
    try:
        with direct(upstream) as d:
            d.fo.node_steady.insert_one({"_id": "counter", "n": 0})
        writer = subprocess.Popen(
            ["node", "steady_writes.js"], cwd=NODE_DIR, text=True,
            env={**os.environ, "LIKEWISE_URI": f"mongodb://{proxy.address}/"},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        acked = [0]
        lines = []

        def read():
            for line in writer.stdout:
                lines.append(line)
                if line.startswith("acked "):
                    acked[0] = int(line.split()[1])

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            eventually(lambda: acked[0] >= 100, timeout=60)
            before = acked[0]
            group.step_down()
            eventually(lambda: acked[0] >= before + 100, timeout=90)
        finally:
            writer.stdin.close()
            writer.wait(60)
            reader.join(10)
        assert writer.returncode == 0, writer.stderr.read()
        check_writes(upstream, group, "node_steady", json.loads(lines[-1]), group.stepped_at,
                     "Node driver")
    finally:
        proxy.stop()


def test_a_transaction_interrupted_by_failover_commits_once(replica_set):
    """The primary steps down between two statements of a transaction:
    pymongo's with_transaction retries it whole and it commits once."""
    upstream, group = replica_set
    proxy = start_proxy(replica_set_uri(group))
    try:
        with MongoClient(f"mongodb://{proxy.address}/") as c:
            coll = c.fo.txn
            coll.drop()
            coll.insert_one({"_id": "seed", "n": 0})
            attempts = []

            def callback(session):
                attempts.append(time.monotonic())
                coll.insert_one({"kind": "t", "attempt": len(attempts)}, session=session)
                if len(attempts) == 1:
                    group.step_down()
                coll.update_one({"_id": "seed"}, {"$inc": {"n": 1}}, session=session)

            with c.start_session() as s:
                s.with_transaction(callback)
        assert len(attempts) == 2, attempts  # the first met the failover
        with direct(upstream) as d:
            assert [t["attempt"] for t in d.fo.txn.find({"kind": "t"})] == [2]
            assert d.fo.txn.find_one({"_id": "seed"})["n"] == 1
    finally:
        proxy.stop()


def test_a_half_open_primary_makes_indexes_stale_then_they_resume(replica_set):
    """The primary keeps its sockets open and stops answering: first to
    everything but hello (monitoring sees it healthy), so the change
    stream's getMore stalls, is abandoned at its bound and the index says
    STALE; then to hello too, and /health says no primary. When it answers
    again the index follows the collection again, a write made meanwhile
    (bypassing the proxy) included."""
    upstream, group = replica_set
    uri = replica_set_uri(group, heartbeatFrequencyMS=1000, connectTimeoutMS=2000,
                          serverSelectionTimeoutMS=3000)
    proxy = start_proxy(uri, "--metrics-listen", "127.0.0.1:0", log_level="info")
    try:
        health = metrics(proxy)
        with MongoClient(f"mongodb://{proxy.address}/") as c:
            coll = c.fo.points
            coll.drop()
            coll.insert_many([{"_id": i, "p": [float(i), 0.0]} for i in range(20)])
            coll.create_search_index(SearchIndexModel(name="pts", type="vectorSearch", definition={
                "fields": [{"type": "vector", "path": "p", "numDimensions": 2,
                            "similarity": "euclidean"}]}))
            eventually(lambda: [i["status"] for i in coll.list_search_indexes()] == ["READY"])
        assert http_get(health, "/health")[0] == 200

        def stale():
            text = http_get(health, "/metrics")[1]
            return 'likewise_index_stale{namespace="fo.points",index="pts",path="p"} 1' in text

        group.members[0].data_hole = True
        with direct(upstream) as d:  # a write that bypasses the proxy
            d.fo.points.insert_one({"_id": 100, "p": [100.0, 0.0]})
        waited = eventually(stale, timeout=60)
        print(f"\nhalf-open primary: index STALE {waited:.1f} s after the primary stopped answering "
              f"(the change stream's bound: 0.5 s await + 10 s)")
        assert "change stream did not answer" in proxy.wait_for_line("change stream interrupted")
        assert http_get(health, "/health")[0] == 200  # monitoring still sees a primary

        group.black_hole(0)
        eventually(lambda: http_get(health, "/health")[0] == 503, timeout=60)
        assert stale()
        group.black_hole(0, on=False)
        group.members[0].data_hole = False
        eventually(lambda: http_get(health, "/health")[0] == 200, timeout=60)
        with MongoClient(f"mongodb://{proxy.address}/") as c:
            coll = c.fo.points
            eventually(lambda: [i["status"] for i in coll.list_search_indexes()] == ["READY"],
                       timeout=90)
            found = lambda: [d["_id"] for d in coll.find({"$like": {"vector": [99.0, 0.0], "n": 1}})]
            eventually(lambda: found() == [100], timeout=60)
    finally:
        proxy.stop()


def test_a_change_stream_whose_history_is_lost_rebuilds_the_index():
    """When the oplog no longer holds an index's resume token, the stream
    cannot resume (`ChangeStreamHistoryLost`, 286) and the changes since
    are lost to it: the index is rebuilt from the collection, then follows
    it again. The server's own failpoint (`failCommand`, scoped to the
    proxy's `appName`) makes the stream's getMore fail, then its resume
    answer 286, as a server whose oplog rolled over does."""
    upstream = start_upstream("--enable-test-commands")
    proxy = start_proxy(f"mongodb://127.0.0.1:{upstream.port}/", log_level="info")
    try:
        with MongoClient(f"mongodb://{proxy.address}/") as c, direct(upstream) as d:
            coll = c.fo.lost
            coll.insert_many([{"_id": i, "p": [float(i), 0.0]} for i in range(10)])
            coll.create_search_index(SearchIndexModel(name="lost", type="vectorSearch", definition={
                "fields": [{"type": "vector", "path": "p", "numDimensions": 2,
                            "similarity": "euclidean"}]}))
            eventually(lambda: [i["status"] for i in coll.list_search_indexes()] == ["READY"])

            def nearest(x):
                return [r["_id"] for r in coll.aggregate([{"$vectorSearch": {
                    "index": "lost", "path": "p", "queryVector": [x, 0.0], "numCandidates": 20,
                    "limit": 1}}])]

            d.admin.command("configureFailPoint", "failCommand", mode={"times": 2}, data={
                "failCommands": ["getMore", "aggregate"], "errorCode": 286,
                "appName": "likewise"})
            line = proxy.wait_for_line("rebuilding the index", timeout=60)
            assert "oplog no longer holds" in line, line
            eventually(lambda: [i["status"] for i in coll.list_search_indexes()] == ["READY"])
            assert nearest(7.1) == [7]
            # The new stream follows the collection: a write made around
            # the proxy is found.
            d.fo.lost.insert_one({"_id": "new", "p": [50.0, 0.0]})
            eventually(lambda: nearest(49.0) == ["new"], timeout=60)
            d.admin.command("configureFailPoint", "failCommand", mode="off")
    finally:
        proxy.stop()
        upstream.stop()


def test_a_like_filter_read_failing_in_a_transaction_keeps_its_labels():
    """A `$like`'s filter read runs in the client's transaction; when the
    server fails it with a transient transaction error, the client gets the
    server's `TransientTransactionError` label, so `with_transaction`
    retries the whole transaction, which then succeeds. The failure comes
    from the server's own failpoint, scoped to the client's `appName`
    (the filter read travels on the client's connection)."""
    upstream = start_upstream("--enable-test-commands")
    proxy = start_proxy(f"mongodb://127.0.0.1:{upstream.port}/")
    try:
        with MongoClient(f"mongodb://{proxy.address}/", appname="txn-app") as c, \
                direct(upstream) as d:
            coll = c.fo.txn
            coll.insert_many([{"_id": i, "p": [float(i), 0.0], "k": i % 2} for i in range(10)])
            coll.create_search_index(SearchIndexModel(name="t", type="vectorSearch", definition={
                "fields": [{"type": "vector", "path": "p", "numDimensions": 2,
                            "similarity": "euclidean"}]}))
            eventually(lambda: [i["status"] for i in coll.list_search_indexes()] == ["READY"])
            d.admin.command("configureFailPoint", "failCommand", mode={"times": 1}, data={
                "failCommands": ["find"], "errorCode": 112, "appName": "txn-app",
                "errorLabels": ["TransientTransactionError"]})
            attempts = []

            def nearest_odd(session):
                attempts.append(1)
                return [r["_id"] for r in coll.find(
                    {"$like": {"vector": [4.2, 0.0], "n": 2}, "k": 1}, session=session)]

            with c.start_session() as s:
                assert s.with_transaction(nearest_odd) == [5, 3]
            assert len(attempts) == 2
            d.admin.command("configureFailPoint", "failCommand", mode="off")
    finally:
        proxy.stop()
        upstream.stop()


def test_reads_follow_their_read_preference():
    """As a mongos routes them: primary reads to the primary; secondary
    reads (and their getMores, and a vector query's reads) to a secondary
    whose tags match; secondaryPreferred to a secondary."""
    upstream = start_upstream()
    group = ReplicaSet(upstream.port, 3, tags=[{"dc": "east"}, {"dc": "east"}, {"dc": "west"}])
    proxy = start_proxy(replica_set_uri(group), "--request-timeout-ms", "1500")
    members = group.members

    def reset():
        for m in members:
            m.reads.clear()

    try:
        with MongoClient(f"mongodb://{proxy.address}/", maxPoolSize=1, retryReads=False) as c:
            coll = c.fo.reads
            coll.drop()
            coll.insert_many([{"_id": i, "p": [float(i), 0.0]} for i in range(10)])
            reset()
            assert len(list(coll.find().batch_size(3))) == 10
            assert members[0].reads and not members[1].reads and not members[2].reads

            reset()
            west = coll.with_options(read_preference=Secondary(tag_sets=[{"dc": "west"}]))
            assert [d["_id"] for d in west.find().sort("_id", 1).batch_size(3)] == list(range(10))
            assert members[2].reads.count("getMore") >= 3, members[2].reads
            assert not members[0].reads and not members[1].reads

            reset()
            preferred = coll.with_options(read_preference=SecondaryPreferred())
            assert preferred.count_documents({}) == 10
            assert not members[0].reads and (members[1].reads or members[2].reads)

            # A staleness bound the proxy cannot check: the primary serves
            # it where the mode allows, and `secondary` is refused.
            reset()
            bounded = coll.with_options(read_preference=SecondaryPreferred(max_staleness=120))
            assert bounded.count_documents({}) == 10
            assert members[0].reads and not members[1].reads and not members[2].reads
            strict = coll.with_options(read_preference=Secondary(max_staleness=120))
            with pytest.raises(OperationFailure) as refused:
                strict.find_one()
            assert refused.value.code == 133

            coll.create_search_index(SearchIndexModel(name="r", type="vectorSearch", definition={
                "fields": [{"type": "vector", "path": "p", "numDimensions": 2,
                            "similarity": "euclidean"}]}))
            eventually(lambda: [i["status"] for i in coll.list_search_indexes()] == ["READY"])
            reset()
            got = [d["_id"] for d in west.aggregate([{"$vectorSearch": {
                "index": "r", "path": "p", "queryVector": [4.2, 0.0], "numCandidates": 10,
                "limit": 2, "filter": {"_id": {"$gte": 0}}}}])]
            assert got == [4, 5]
            # (The proxy's own change stream sends getMores to the primary.)
            assert members[2].reads and not [r for r in members[0].reads if r != "getMore"], \
                [m.reads for m in members]

            # A read cut short on the secondary by the request timeout:
            # the client's connection serves its next request (a write,
            # which only the primary takes) as before.
            members[2].data_hole = True
            with pytest.raises(PyMongoError) as cut:
                west.find_one({"_id": 1})
            members[2].data_hole = False
            assert "took longer than" in str(cut.value), cut.value
            coll.insert_one({"_id": "after", "p": [0.0, 0.0]})
            assert west.find_one({"_id": 3})["_id"] == 3
    finally:
        proxy.stop()
        group.stop()
        upstream.stop()


@pytest.fixture
def secured_replica_set(tmp_path_factory):
    """A real SecantusDB with access control behind three relayed members
    (tagged east, east, west). Users: the proxy's (`root`), `app`
    (`root`) and `reader`, who may read database `fo` only. (SecantusDB
    grants rights per database: collection-level roles are not enforced
    there, so the collections a read touches are checked by asserting
    what the proxy asks.)"""
    def prepare(c):
        c.admin.command("createUser", "likewise", pwd="proxy-pw", roles=["root"])
        c.admin.command("createUser", "app", pwd="app-pw", roles=["root"])
        c.admin.command("createUser", "reader", pwd="reader-pw", roles=[{"role": "read", "db": "fo"}])

    upstream = start_secured_upstream(str(tmp_path_factory.mktemp("securedrs")), prepare)
    group = ReplicaSet(upstream.port, 3, tags=[{"dc": "east"}, {"dc": "east"}, {"dc": "west"}])
    uri = f"mongodb://likewise:proxy-pw@{','.join(group.addresses())}/?replicaSet=rs0&authSource=admin"
    proxy = start_proxy(uri, "--request-timeout-ms", "1500")
    yield proxy, group
    proxy.stop()
    group.stop()
    upstream.stop()


def is_rights_probe(body):
    return body.get("filter") == {"_id": {"$in": []}}


def test_reads_behind_access_control_follow_their_read_preference(secured_replica_set):
    """Behind access control, as a mongos does: the client's `find` right
    on every collection a read touches is checked on its own connection
    (the primary), then the read runs on a matching secondary as the
    proxy, getMores and vector queries included. A read the client has no
    right to is refused with 13 and never reaches the secondary; a read
    needing any other right stays on the client's own connection."""
    proxy, group = secured_replica_set
    members = group.members

    def reset():
        for m in members:
            m.reads.clear()
            m.read_bodies.clear()

    west_pref = Secondary(tag_sets=[{"dc": "west"}])
    with MongoClient(f"mongodb://app:app-pw@{proxy.address}/?authSource=admin") as app:
        app.fo.open.insert_many([{"_id": i, "p": [float(i), 0.0]} for i in range(10)])
        app.vault.closed.insert_many([{"_id": i, "secret": True} for i in range(3)])
        app.fo.open.create_search_index(SearchIndexModel(name="r", type="vectorSearch", definition={
            "fields": [{"type": "vector", "path": "p", "numDimensions": 2,
                        "similarity": "euclidean"}]}))
        eventually(lambda: [i["status"] for i in app.fo.open.list_search_indexes()] == ["READY"])

    uri = f"mongodb://reader:reader-pw@{proxy.address}/?authSource=admin"
    with MongoClient(uri, maxPoolSize=1, retryReads=False) as c:
        open_, closed = c.fo.open, c.fo.closed
        reset()
        west = open_.with_options(read_preference=west_pref)
        assert [d["_id"] for d in west.find().sort("_id", 1).batch_size(3)] == list(range(10))
        # Read on the west secondary, a batch at a time, as the proxy.
        finds = [b for b in members[2].read_bodies if next(iter(b)) == "find"]
        assert len(finds) == 1 and finds[0]["find"] == "open", members[2].read_bodies
        assert sum(1 for b in members[2].read_bodies
                   if next(iter(b)) == "getMore" and b.get("batchSize") == 3) >= 3
        # On the primary: only the rights probe, on the client's connection.
        primary_finds = [b for b in members[0].read_bodies if next(iter(b)) == "find"]
        assert len(primary_finds) == 1 and is_rights_probe(primary_finds[0]), primary_finds
        assert not members[1].reads

        # The right, once found, is trusted for a while (as a mongos
        # caches a user's rights): the next read asks nothing.
        reset()
        assert west.count_documents({"_id": {"$gte": 5}}) == 5
        assert west.distinct("_id", {"_id": {"$lt": 3}}) == [0, 1, 2]
        assert not [b for b in members[0].read_bodies if next(iter(b)) != "getMore"]
        assert members[2].reads.count("aggregate") == 1 and members[2].reads.count("distinct") == 1

        # Every collection a read touches is asked about, on the primary,
        # before the secondary is.
        reset()
        joined = list(west.aggregate([
            {"$match": {"_id": 1}},
            {"$lookup": {"from": "tags", "pipeline": [{"$unionWith": {"coll": "notes"}}], "as": "j"}},
            {"$facet": {"f": [{"$unionWith": "more"}]}}]))
        assert len(joined) == 1
        probed = [b["find"] for b in members[0].read_bodies if is_rights_probe(b)]
        assert sorted(probed) == ["more", "notes", "tags"], probed
        assert members[2].reads.count("aggregate") == 1

        # What the client may not read is refused, whichever read it is,
        # and the secondary is never asked.
        reset()
        vault = c.vault.closed.with_options(read_preference=west_pref)
        refusals = [
            lambda: vault.find_one(),
            lambda: vault.count_documents({}),
            lambda: vault.distinct("_id"),
            lambda: list(vault.aggregate([{"$match": {}}])),
        ]
        for refused_read in refusals:
            with pytest.raises(OperationFailure) as refused:
                refused_read()
            assert refused.value.code == 13, refused.value.details
        assert not members[2].reads, members[2].read_bodies

        # A stage needing another right (`collStats`) is not read as the
        # proxy: the client's own connection runs it, on the primary.
        reset()
        assert list(west.aggregate([{"$collStats": {"count": {}}}]))[0]["count"] == 10
        assert not members[2].reads
        assert [b for b in members[0].read_bodies if "$collStats" in str(b.get("pipeline"))]

        # A vector query's reads follow the read preference too.
        reset()
        got = [d["_id"] for d in west.aggregate([{"$vectorSearch": {
            "index": "r", "path": "p", "queryVector": [4.2, 0.0], "numCandidates": 10,
            "limit": 2, "filter": {"_id": {"$gte": 0}}}}])]
        assert got == [4, 5]
        assert members[2].reads
        assert not [b for b in members[0].read_bodies if next(iter(b)) != "getMore"]

        # A secondary that stops answering: the read times out, and the
        # client's connection goes on (its next write is the primary's).
        members[2].data_hole = True
        with pytest.raises(PyMongoError) as cut:
            west.find_one({"_id": 1})
        members[2].data_hole = False
        assert "took longer than" in str(cut.value), cut.value
        assert west.find_one({"_id": 3})["_id"] == 3
        with pytest.raises(OperationFailure) as write:
            open_.insert_one({"_id": "w"})
        assert write.value.code == 13  # reader has no insert right: the primary said so

    # A causally consistent session: the read after a write carries the
    # write's time (`afterClusterTime`) and the session's cluster time.
    with MongoClient(f"mongodb://app:app-pw@{proxy.address}/?authSource=admin") as app:
        west = app.fo.open.with_options(read_preference=west_pref)
        with app.start_session(causal_consistency=True) as s:
            app.fo.open.insert_one({"_id": "causal", "p": [0.0, 9.0]}, session=s)
            reset()
            assert west.find_one({"_id": "causal"}, session=s)["_id"] == "causal"
            read = [b for b in members[2].read_bodies if next(iter(b)) == "find"]
            assert read and "afterClusterTime" in read[0]["readConcern"], members[2].read_bodies

    # Cursors: one the client closes is killed on the secondary; one left
    # open when the client goes is killed by the proxy.
    with MongoClient(uri, maxPoolSize=1) as c:
        west = c.fo.open.with_options(read_preference=west_pref)
        closed_early = west.find().batch_size(2)
        next(closed_early)
        closed_id = closed_early.cursor_id
        closed_early.close()
        assert [k["cursors"] for k in members[2].kills] == [[closed_id]], [m.kills for m in members]
        left_open = west.find().batch_size(2)
        next(left_open)
        left_id = left_open.cursor_id
    eventually(lambda: [left_id] in [k["cursors"] for k in members[2].kills])

    # A client that did not authenticate gets nothing from a secondary.
    with MongoClient(f"mongodb://{proxy.address}/", maxPoolSize=1, retryReads=False) as anonymous:
        reset()
        with pytest.raises(OperationFailure) as refused:
            anonymous.fo.open.with_options(read_preference=west_pref).find_one()
        assert refused.value.code == 13
        assert not members[2].reads


def ping_from(host, proxy_address):
    """A connection from source address `host` (any 127.x.y.z is this
    machine) that has sent one ping; returns the open socket."""
    ip, port = proxy_address.rsplit(":", 1)
    sock = socket.create_connection((ip, int(port)), timeout=30, source_address=(host, 0))
    body = bson.encode({"ping": 1, "$db": "admin"})
    payload = struct.pack("<I", 0) + b"\x00" + body
    sock.sendall(struct.pack("<iiii", 16 + len(payload), 1, 0, 2013) + payload)
    header = sock.recv(16, socket.MSG_WAITALL)
    (length,) = struct.unpack("<i", header[:4])
    reply = bson.decode(sock.recv(length - 16, socket.MSG_WAITALL)[5:])
    assert reply["ok"] == 1, reply
    return sock


def test_two_mongos_each_client_host_on_one_router():
    """Behind two mongos: every connection of one client host goes to one
    router (cursors and transactions live on one mongos, and drivers use
    any pooled connection for them); client hosts spread over both."""
    upstream = start_upstream()
    group = Routers(upstream.port, 2)
    proxy = start_proxy(f"mongodb://{','.join(group.addresses())}/", "--metrics-listen", "127.0.0.1:0")
    at = metrics(proxy)

    def pinned_per_router():
        text = http_get(at, "/metrics")[1]
        counts = {}
        for m in group.members:
            prefix = f'likewise_upstream_connections{{address="{m.address}"}}'
            lines = [line for line in text.splitlines() if line.startswith(prefix)]
            counts[m.address] = int(lines[0].split()[-1]) if lines else 0
        return counts

    try:
        with MongoClient(f"mongodb://{proxy.address}/") as c:
            coll = c.fo.routed
            coll.insert_many([{"_id": i} for i in range(20)])
            assert c.topology_description.topology_type_name == "Sharded"
            for m in group.members:
                m.reads.clear()
                m.read_bodies.clear()
            assert len(list(coll.find().batch_size(2))) == 20
            # The client's reads of `routed` (the proxy's own connections
            # read its catalog from any router).
            def client_reads(m):
                return [next(iter(b)) for b in m.read_bodies
                        if b.get("find") == "routed" or b.get("collection") == "routed"]
            readers = [m for m in group.members if client_reads(m)]
            assert len(readers) == 1 and client_reads(readers[0]).count("getMore") >= 9, \
                [m.read_bodies for m in group.members]
            with c.start_session() as s:
                s.with_transaction(lambda s: coll.insert_one({"_id": "txn"}, session=s))
            counts = pinned_per_router()
            assert sorted(counts.values())[0] == 0, counts  # all on one router
        text = http_get(at, "/metrics")[1]
        for m in group.members:
            assert f'likewise_upstream_server{{address="{m.address}",role="Mongos"}} 1' in text
        hosts = [ping_from(f"127.0.0.{i}", proxy.address) for i in range(2, 18)]
        try:
            counts = pinned_per_router()
            assert all(n >= 1 for n in counts.values()), counts  # spread over both
        finally:
            for sock in hosts:
                sock.close()
        with direct(upstream) as d:
            assert d.fo.routed.count_documents({}) == 21
    finally:
        proxy.stop()
        group.stop()
        upstream.stop()


@pytest.fixture(scope="module")
def sha1_upstream(tmp_path_factory):
    """SecantusDB with a SCRAM-SHA-1 user defined in `shop` (not admin)."""
    def prepare(c):
        c.shop.command("createUser", "indexer", pwd="sha1-pw", roles=["dbOwner"],
                       mechanisms=["SCRAM-SHA-1"])
        c.admin.command("createUser", "app", pwd="app-pw", roles=["root"])

    server = start_secured_upstream(str(tmp_path_factory.mktemp("sha1db")), prepare)
    yield server
    server.stop()


def test_the_proxy_authenticates_with_scram_sha1_and_the_paths_auth_source(sha1_upstream, tmp_path):
    key = tmp_path / "metadata.key"
    key.write_bytes(b"0123456789abcdef0123456789abcdef")
    uri = f"mongodb://indexer:sha1-pw@127.0.0.1:{sha1_upstream.port}/shop?authMechanism=SCRAM-SHA-1"
    proxy = start_proxy(uri, "--metadata-db", "shop", "--metadata-key-file", str(key))
    try:
        with MongoClient(f"mongodb://app:app-pw@{proxy.address}/?authSource=admin") as app:
            coll = app.shop.items
            coll.insert_many([{"_id": i, "p": [float(i), 1.0]} for i in range(10)])
            # The definition is stored, and the build scans, as `indexer`
            # of `shop`: SCRAM-SHA-1, authSource taken from the URI's path.
            coll.create_search_index(SearchIndexModel(name="items", type="vectorSearch", definition={
                "fields": [{"type": "vector", "path": "p", "numDimensions": 2,
                            "similarity": "euclidean"}]}))
            eventually(lambda: [i["status"] for i in coll.list_search_indexes()] == ["READY"])
            assert [d["_id"] for d in coll.find({"$like": {"vector": [3.1, 1.0], "n": 2}})] == [3, 4]
            assert app.shop.search_indexes.count_documents({"name": "items"}) == 1
    finally:
        proxy.stop()

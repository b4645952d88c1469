"""A test stand-in for topology, and for topology only.

No multi-node replica set or mongos can be installed on these machines, so
`ReplicaSet` puts several relays (one per "member") in front of one real
SecantusDB and presents them as the members of a replica set: each relay
rewrites `hello` replies to give its member's role, and a member that is
not primary refuses what a secondary refuses (`NotWritablePrimary`). All
data lives in the one real server, so a step-down moves the primary role
without moving data, which is exactly what a failover looks like to a
client: same documents, a different server to write to.

`Routers` presents relays as `mongos` routers of a sharded cluster.

Everything the server does (commands, data, authentication) is the real
server's; the relay only answers `hello` for roles, refuses on secondaries,
and can stop answering (`black_hole`) to play a half-open server.
"""

import asyncio
import struct
import threading
import time

import bson
from bson import ObjectId

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
MORE_TO_COME = 2
HELLO = {"hello", "ismaster", "isMaster"}
# What a secondary serves without a secondary read preference.
SECONDARY_ALLOWED = HELLO | {
    "ping", "buildInfo", "buildinfo", "saslStart", "saslContinue", "authenticate",
    "endSessions", "getParameter", "killCursors", "getMore", "connectionStatus",
}


# What a secondary serves with a secondary read preference (writes never).
SECONDARY_READS = {"find", "aggregate", "count", "distinct", "listCollections", "listIndexes"}


async def read_frame(reader):
    header = await reader.readexactly(16)
    (length,) = struct.unpack("<i", header[:4])
    return header + await reader.readexactly(length - 16)


def msg_body(frame):
    """The kind-0 body of an OP_MSG (None for other opcodes)."""
    if struct.unpack("<i", frame[12:16])[0] != OP_MSG:
        return None
    pos = 20
    while pos < len(frame):
        kind = frame[pos]
        pos += 1
        (size,) = struct.unpack("<i", frame[pos:pos + 4])
        if kind == 0:
            return bson.decode(frame[pos:pos + size])
        pos += size
    return None


def encode_msg(request_id, response_to, body, flags=0):
    payload = struct.pack("<I", flags) + b"\x00" + bson.encode(body)
    return struct.pack("<iiii", 16 + len(payload), request_id, response_to, OP_MSG) + payload


class Member:
    """One relay: a listening socket in front of the real server."""

    def __init__(self, group, index):
        self.group = group
        self.index = index
        self.server = None
        self.port = None
        self.black_hole = False
        # Only requests other than hello go unanswered (the server looks
        # healthy to monitoring, and stalls everything else).
        self.data_hole = False
        self.connections = 0
        # When each write command was forwarded to the server, and the
        # names (and bodies) of the read commands forwarded.
        self.writes = []
        self.reads = []
        self.read_bodies = []
        self.kills = []
        # Each open connection's two streams (see `close_connections`).
        self.open = set()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    async def start(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def serve(self, client_reader, client_writer):
        self.connections += 1
        upstream_reader = upstream_writer = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.group.upstream_port)
            pair = (client_writer, upstream_writer)
            self.open.add(pair)
            while True:
                request = await read_frame(client_reader)
                op_code = struct.unpack("<i", request[12:16])[0]
                flags = struct.unpack("<I", request[16:20])[0] if op_code == OP_MSG else 0
                body = msg_body(request)
                name = next(iter(body), "") if body else ""
                while self.black_hole or (self.data_hole and op_code == OP_MSG and name not in HELLO):
                    # Half-open: the request is taken and not answered
                    # while the hole lasts.
                    await asyncio.sleep(0.05)
                refusal = self.group.refuse(self, name, body) if body is not None else None
                if refusal is not None:
                    request_id = struct.unpack("<i", request[4:8])[0]
                    if not flags & MORE_TO_COME:
                        client_writer.write(encode_msg(0x7000 + request_id, request_id, refusal))
                        await client_writer.drain()
                    continue
                if name in ("insert", "update", "delete", "findAndModify"):
                    self.writes.append(time.monotonic())
                if name in ("find", "aggregate", "count", "distinct", "getMore"):
                    self.reads.append(name)
                    self.read_bodies.append(body)
                if name == "killCursors":
                    self.kills.append(body)
                upstream_writer.write(request)
                await upstream_writer.drain()
                if flags & MORE_TO_COME:
                    continue
                if self.group.lose_reply_of_write(self, name):
                    # The write ran; its reply never comes: the server
                    # stepped down and closed the connection.
                    await read_frame(upstream_reader)
                    return
                while True:
                    reply = await read_frame(upstream_reader)
                    while self.black_hole:
                        await asyncio.sleep(0.05)
                    if op_code == OP_QUERY or name in HELLO:
                        reply = self.group.rewrite_hello(self, reply)
                    client_writer.write(reply)
                    await client_writer.drain()
                    reply_op = struct.unpack("<i", reply[12:16])[0]
                    more = reply_op == OP_MSG and struct.unpack("<I", reply[16:20])[0] & MORE_TO_COME
                    if not more:
                        break
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.open.discard((client_writer, upstream_writer))
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()

    async def close_connections(self):
        """Closes every connection open now, as a server's or a firewall's
        idle timeout does; returns how many."""
        pairs = list(self.open)
        for pair in pairs:
            for writer in pair:
                writer.close()
        for client_writer, _ in pairs:
            await client_writer.wait_closed()
        return len(pairs)


class Group:
    """Relays run on one background event loop; the test thread changes
    roles through thread-safe calls."""

    def __init__(self, upstream_port, count):
        self.upstream_port = upstream_port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.members = [Member(self, i) for i in range(count)]
        for m in self.members:
            self.call(m.start())

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def addresses(self):
        return [m.address for m in self.members]

    def black_hole(self, index, on=True):
        self.members[index].black_hole = on

    def stop(self):
        async def close():
            for m in self.members:
                m.server.close()
            # Every connection's task ends here, not as garbage later.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)

    # The hello of each kind of group.
    def hello_fields(self, member):
        raise NotImplementedError

    def refuse(self, member, name, body):
        return None

    def lose_reply_of_write(self, member, name):
        return False

    def rewrite_hello(self, member, reply):
        op_code = struct.unpack("<i", reply[12:16])[0]
        if op_code == OP_MSG:
            flags = struct.unpack("<I", reply[16:20])[0]
            body = self.rewritten(member, msg_body(reply))
            request_id, response_to = struct.unpack("<ii", reply[4:12])
            return encode_msg(request_id, response_to, body, flags)
        if op_code == OP_REPLY:
            head = reply[16:36]
            doc = bson.decode(reply[36:])
            out = head + bson.encode(self.rewritten(member, doc))
            return struct.pack("<i", 16 + len(out)) + reply[4:16] + out
        return reply

    def rewritten(self, member, doc):
        if not doc.get("ok"):
            return doc
        for key in ("setName", "setVersion", "hosts", "passives", "arbiters", "primary",
                    "me", "secondary", "electionId", "topologyVersion", "msg",
                    "isWritablePrimary", "ismaster", "tags"):
            doc.pop(key, None)
        doc.update(self.hello_fields(member))
        return doc


class ReplicaSet(Group):
    """Members of replica set `rs0`; member 0 starts as primary."""

    def __init__(self, upstream_port, count=2, tags=None):
        self.primary = 0
        self.term = 1
        self.tags = tags or [{}] * count
        super().__init__(upstream_port, count)

    def step_down(self, new_primary=None):
        """The primary becomes a secondary and `new_primary` (default the
        next member) becomes primary, with a newer electionId."""
        self.primary = (self.primary + 1) % len(self.members) if new_primary is None else new_primary
        self.term += 1
        self.stepped_at = time.monotonic()

    def step_down_during_next_write(self):
        """The next write the primary is sent runs, and the primary steps
        down before answering it (the connection closes): the case that
        needs the server's retryable-write deduplication."""
        self.stepping_down = True

    def lose_reply_of_write(self, member, name):
        if not getattr(self, "stepping_down", False) or member.index != self.primary:
            return False
        if name not in ("insert", "update", "delete", "findAndModify"):
            return False
        self.stepping_down = False
        self.step_down()
        return True

    def hello_fields(self, member):
        is_primary = member.index == self.primary
        fields = {
            "setName": "rs0",
            "setVersion": 1,
            "hosts": self.addresses(),
            "me": member.address,
            "primary": self.members[self.primary].address,
            "isWritablePrimary": is_primary,
            "ismaster": is_primary,
            "secondary": not is_primary,
        }
        if self.tags[member.index]:
            fields["tags"] = self.tags[member.index]
        if is_primary:
            fields["electionId"] = ObjectId("7fffffff%016x" % self.term)
        return fields

    def refuse(self, member, name, body):
        if member.index == self.primary or name in SECONDARY_ALLOWED:
            return None
        mode = (body.get("$readPreference") or {}).get("mode", "primary")
        if mode != "primary" and name in SECONDARY_READS:
            return None
        error = {
            "ok": 0.0,
            "errmsg": "not primary",
            "code": 10107,
            "codeName": "NotWritablePrimary",
        }
        if "txnNumber" in body and body.get("autocommit") is None:
            error["errorLabels"] = ["RetryableWriteError"]
        elif body.get("autocommit") is False:
            error["errorLabels"] = ["TransientTransactionError"]
        return error


class Routers(Group):
    """`mongos` routers of a sharded cluster."""

    def hello_fields(self, member):
        return {"msg": "isdbgrid", "isWritablePrimary": True, "ismaster": True}


def replica_set_uri(group, **options):
    query = "&".join(f"{k}={v}" for k, v in {"replicaSet": "rs0", **options}.items())
    return f"mongodb://{','.join(group.addresses())}/?{query}"

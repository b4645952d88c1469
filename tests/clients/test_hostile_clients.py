"""Clients that mean harm, against the proxy binary: nothing they send costs
memory they did not send, and nothing takes the proxy down for others."""

import os
import socket
import struct

from pymongo import MongoClient

from conftest import DEFAULT_MODEL, Process, eventually, likewise_bin

STALLED = 500
# The proxy runs under this address-space limit: with room for a claimed
# frame reserved up front (as it once was), it aborted within the first 22
# connections claiming 48 MB each.
ADDRESS_SPACE = 1 << 30
# What 500 stalled connections may add to the proxy's resident memory,
# upstream connections included. Measured: about 15 MB.
RESIDENT_BUDGET_KB = 100 * 1024


def memory_kb(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_stalled_frames_claiming_48_mb_cost_only_what_arrived(direct_uri):
    proxy = Process(["prlimit", f"--as={ADDRESS_SPACE}", "--", likewise_bin(), "serve",
                     "--listen", "127.0.0.1:0", "--upstream", direct_uri, "--log-level", "warn",
                     "--default-model", str(DEFAULT_MODEL)],
                    "likewise listening on ")
    stalled = []
    try:
        uri = f"mongodb://127.0.0.1:{proxy.port}/"
        with MongoClient(uri) as c:
            assert c.admin.command("ping")["ok"] == 1
        before = memory_kb(proxy.proc.pid, "VmRSS")
        # Each one announces a 48,000,000-byte message (the largest the wire
        # protocol allows), sends a kilobyte of it and stops.
        for _ in range(STALLED):
            s = socket.create_connection(("127.0.0.1", proxy.port))
            s.sendall(struct.pack("<i", 48_000_000) + b"\0" * 1024)
            stalled.append(s)
        # Every stalled connection is accepted, with its upstream connection,
        # before memory is measured.
        open_files = lambda: len(os.listdir(f"/proc/{proxy.proc.pid}/fd"))
        eventually(lambda: open_files() > 2 * STALLED)
        with MongoClient(uri) as c:
            assert c.admin.command("ping")["ok"] == 1
        grown = memory_kb(proxy.proc.pid, "VmRSS") - before
        assert grown < RESIDENT_BUDGET_KB, f"{STALLED} stalled connections cost {grown} kB"
        assert proxy.proc.poll() is None
        print(f"\n{STALLED} stalled connections: resident memory +{grown} kB")
    finally:
        for s in stalled:
            s.close()
        proxy.stop()

"""The release proxy's anonymous memory growth (`RssAnon`) while it builds
a 40,000 × 384 cosine index of float arrays, against the raw float32
bytes (issue 19's measure). Run with the project venv:

    .venv/bin/python benches/proxy_memory.py [none|scalar|binary] [N]

Starts SecantusDB and the release proxy (`cargo build --release` first),
inserts N (default 40,000) unit vectors straight into the upstream, reads
the proxy's `RssAnon`, builds the index through the proxy, waits until it
is READY and the proxy's memory has settled (two equal readings 0.2 s
apart, at most 10 s), and prints the growth as a multiple of N × 384 × 4.
"""

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "clients"))
os.environ.setdefault("LIKEWISE_BIN", str(ROOT / "target" / "release" / "likewise"))

import numpy as np  # noqa: E402
from conftest import start_proxy, start_upstream, wait_ready  # noqa: E402
from pymongo import MongoClient  # noqa: E402
from pymongo.operations import SearchIndexModel  # noqa: E402

DIMS = 384


def rss_anon(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def settled(pid):
    last, deadline = rss_anon(pid), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = rss_anon(pid)
        if now == last:
            return now
        last = now
    return last


def main():
    quantization = sys.argv[1] if len(sys.argv) > 1 else "none"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 40_000
    upstream = start_upstream()
    proxy = start_proxy(f"mongodb://{upstream.address}/")
    try:
        rng = np.random.default_rng(1)
        vectors = rng.standard_normal((n, DIMS)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        direct = MongoClient(f"mongodb://{upstream.address}/", directConnection=True)
        direct.bench_memory.docs.drop()
        for at in range(0, n, 2000):
            direct.bench_memory.docs.insert_many(
                [{"_id": i, "v": vectors[i].tolist()} for i in range(at, min(n, at + 2000))])
        client = MongoClient(f"mongodb://{proxy.address}/", directConnection=True)
        client.admin.command("ping")
        before = settled(proxy.proc.pid)
        field = {"type": "vector", "path": "v", "numDimensions": DIMS, "similarity": "cosine"}
        if quantization != "none":
            field["quantization"] = quantization
        client.bench_memory.docs.create_search_index(
            SearchIndexModel({"fields": [field]}, name="v", type="vectorSearch"))
        wait_ready(client.bench_memory.docs, "v", timeout=1800)
        after = settled(proxy.proc.pid)
        raw = n * DIMS * 4
        print(f"quantization={quantization} n={n}: RssAnon grew {(after - before) / 1e6:.1f} MB, "
              f"{(after - before) / raw:.2f}x the raw float32 bytes ({raw / 1e6:.1f} MB)")
    finally:
        proxy.stop()
        upstream.stop()


if __name__ == "__main__":
    main()

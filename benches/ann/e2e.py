"""End to end through the proxy: vector queries against the plain fetch of
the same documents, same upstream, same run. Run by `scripts/bench ann`
with the project venv's Python (pymongo, SecantusDB):

    e2e.py N QUERIES

Starts a SecantusDB upstream and a release-built proxy, loads N documents
with 128-d clustered vectors (seeded), builds a vectorSearch index through
the proxy, then for each query vector times, interleaved:

- `$vectorSearch` (limit 10, numCandidates 100) through the proxy;
- `find({$like: {vector, n: 10}})` through the proxy;
- `find({_id: {$in: [the same 10 ids]}})` through the proxy (passed
  through untouched: the baseline the targets are stated against);
- the same `find` straight to the upstream.

Then 16 concurrent clients (threads, a client each) run the same
`$vectorSearch` queries, and then the `find({_id: {$in: ...}})` of their
results, each for a fixed number of queries: total queries/s of each.

Prints one JSON object: p50/p99 latency (ms) and QPS of each, the
ratios of the vector queries' p50 over the proxied `_id $in` find's, and
the concurrent queries/s.
"""

import json
import os
import random
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "clients"))
os.environ.setdefault("LIKEWISE_BIN", str(ROOT / "target" / "release" / "likewise"))

from conftest import start_proxy, start_upstream, wait_ready  # noqa: E402
from pymongo import MongoClient  # noqa: E402
from pymongo.operations import SearchIndexModel  # noqa: E402

DIMS = 128
K = 10
NUM_CANDIDATES = 100


def vectors(count, seed, clusters=100):
    rng = random.Random(seed)
    centres = [[rng.gauss(0, 4) for _ in range(DIMS)] for _ in range(clusters)]
    for _ in range(count):
        c = centres[rng.randrange(clusters)]
        yield [x + rng.gauss(0, 1) for x in c]


def summary(samples):
    ordered = sorted(samples)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
    return {"p50_ms": round(at(0.50), 3), "p99_ms": round(at(0.99), 3),
            "qps": round(len(samples) / sum(samples), 1)}


CLIENTS = 16


def concurrent(address, queries):
    """Queries/s of CLIENTS clients at once: `$vectorSearch`, then the
    `_id $in` find of the same results (ids gathered first, untimed)."""
    clients = [MongoClient(f"mongodb://{address}/", directConnection=True, maxPoolSize=1)
               for _ in range(CLIENTS)]
    share = [queries[i::CLIENTS] for i in range(CLIENTS)]
    stage = lambda q: {"$vectorSearch": {"index": "v", "path": "v", "queryVector": q,
                                         "numCandidates": NUM_CANDIDATES, "limit": K}}
    ids = [[[d["_id"] for d in c.bench_e2e.docs.aggregate([stage(q)])] for q in qs]
           for c, qs in zip(clients, share)]

    def run(work):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(CLIENTS)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(queries) / (time.perf_counter() - start)

    def vector(i):
        for q in share[i]:
            list(clients[i].bench_e2e.docs.aggregate([stage(q)]))

    def fetch(i):
        for found in ids[i]:
            list(clients[i].bench_e2e.docs.find({"_id": {"$in": found}}))

    vector_qps, fetch_qps = run(vector), run(fetch)
    for c in clients:
        c.close()
    return {"clients": CLIENTS, "vectorSearch_qps": round(vector_qps, 1),
            "find_id_in_qps": round(fetch_qps, 1), "ratio": round(vector_qps / fetch_qps, 2)}


def main():
    n, nq = int(sys.argv[1]), int(sys.argv[2])
    upstream = start_upstream()
    proxy = start_proxy(f"mongodb://{upstream.address}/")
    try:
        direct = MongoClient(f"mongodb://{upstream.address}/", directConnection=True)
        client = MongoClient(f"mongodb://{proxy.address}/", directConnection=True)
        coll = direct.bench_e2e.docs
        coll.drop()
        batch = []
        for i, v in enumerate(vectors(n, seed=7)):
            batch.append({"_id": i, "v": v, "tag": i % 10})
            if len(batch) == 2000:
                coll.insert_many(batch, ordered=False)
                batch = []
        if batch:
            coll.insert_many(batch, ordered=False)
        via = client.bench_e2e.docs
        started = time.perf_counter()
        via.create_search_index(SearchIndexModel(name="v", type="vectorSearch", definition={
            "fields": [{"type": "vector", "path": "v", "numDimensions": DIMS, "similarity": "euclidean"}]}))
        wait_ready(via, "v", timeout=900)
        build_s = time.perf_counter() - started
        queries = list(vectors(nq, seed=8))
        times = {"vectorSearch": [], "like": [], "find_id_in": [], "find_id_in_direct": []}
        mismatched = 0

        def timed(name, run):
            start = time.perf_counter()
            out = run()
            times[name].append(time.perf_counter() - start)
            return out

        for q in queries[:20]:  # warm-up, untimed
            list(via.aggregate([{"$vectorSearch": {"index": "v", "path": "v", "queryVector": q,
                                                   "numCandidates": NUM_CANDIDATES, "limit": K}}]))
        for q in queries:
            found = timed("vectorSearch", lambda: list(via.aggregate([{"$vectorSearch": {
                "index": "v", "path": "v", "queryVector": q, "numCandidates": NUM_CANDIDATES, "limit": K}}])))
            ids = [d["_id"] for d in found]
            liked = timed("like", lambda: list(via.find({"$like": {"vector": q, "n": K, "semantic_index": "v"}})))
            fetched = timed("find_id_in", lambda: list(via.find({"_id": {"$in": ids}})))
            timed("find_id_in_direct", lambda: list(coll.find({"_id": {"$in": ids}})))
            if sorted(d["_id"] for d in liked) != sorted(ids) or len(fetched) != len(ids):
                mismatched += 1
        result = {"n": n, "queries": nq, "index_build_s": round(build_s, 1), "mismatched": mismatched}
        result["concurrent"] = concurrent(proxy.address, queries)
        result.update({name: summary(samples) for name, samples in times.items()})
        base = result["find_id_in"]["p50_ms"]
        result["ratio_p50_vectorSearch"] = round(result["vectorSearch"]["p50_ms"] / base, 2)
        result["ratio_p50_like"] = round(result["like"]["p50_ms"] / base, 2)
        print(json.dumps(result))
    finally:
        proxy.stop()
        upstream.stop()


if __name__ == "__main__":
    main()

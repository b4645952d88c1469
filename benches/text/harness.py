"""Full-text benchmark, run by `scripts/bench text [--quick]` with the
project venv's Python (pymongo, SecantusDB, the standard library's
sqlite3):

1. The corpus: N documents (100,000; 20,000 with --quick) made from the
   pinned Debian corpus (tests/fixtures/debian, sha256-checked): document i
   is `{_id: i, title: <summary i>, body: <a long description>}`, summaries
   in name order (the 59,912 distinct ones, then again), long descriptions
   cycled. Queries: 1,000 (300 with --quick) summaries picked with a fixed
   seed, as users type them; the same for every engine.
2. The engine alone: likewise's full-text engine (`benches/text.rs`, the
   engine behind `search` indexes, lucene.standard, a `text` query over
   title and body, best 10) against SQLite FTS5 (the same documents in an
   `fts5(title, body)` table, each query's words OR-ed, `ORDER BY bm25`,
   best 10), both single-threaded, in memory, best of 3 rounds: indexing
   throughput and queries/s; and how much their top 10s overlap. Then
   likewise's engine again as the proxy runs it, helpers on free cores
   claiming documents beside the query's thread (not part of the FTS5
   ratio).
3. End to end: SecantusDB and the release proxy; the documents are loaded
   upstream, a `search` index (dynamic) is built through the proxy (its
   throughput: documents / seconds to READY), then for each query
   `$search` (limit 10) through the proxy and `find({_id: {$in: [its
   10 ids]}})` through the proxy (the baseline the target is stated
   against), in turns: the `$search` first for even queries, the find
   first for odd ones (the ids come from the engine bench, so the find
   need not wait for the `$search`; the report counts the queries whose
   `$search` returned those same documents). Whichever of the two reads
   a query's documents second finds them warm in the upstream; running
   the find always second favoured it. Then the same find straight to
   the upstream, for reference.

Writes target/bench-text/report.md and ends with
`search_p50_ratio_vs_id_in=X.XX` and `engine_qps_ratio_vs_fts5=X.XX`.
"""

import argparse
import gzip
import json
import os
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "clients"))
sys.path.insert(0, str(ROOT / "benches" / "ann"))
os.environ.setdefault("LIKEWISE_BIN", str(ROOT / "target" / "release" / "likewise"))

from conftest import debian_file, start_proxy, start_upstream, wait_ready  # noqa: E402
from e2e import summary  # noqa: E402
from pymongo import MongoClient  # noqa: E402
from pymongo.operations import SearchIndexModel  # noqa: E402

OUT = ROOT / "target" / "bench-text"
K = 10


def corpus(n, nq):
    with gzip.open(debian_file("summaries.tsv.gz"), "rt", encoding="utf-8") as f:
        summaries = [line.rstrip("\n").split("\t")[2] for line in f]
    with gzip.open(debian_file("descriptions.jsonl.gz"), "rt", encoding="utf-8") as f:
        bodies = [json.loads(line)["text"] for line in f]
    clean = lambda s: s.replace("\t", " ").replace("\n", " ")
    docs = [(i, clean(summaries[i % len(summaries)]), clean(bodies[(i * 7) % len(bodies)]))
            for i in range(n)]
    rng = random.Random(11)
    queries = [clean(summaries[rng.randrange(len(summaries))]) for _ in range(nq)]
    return docs, queries


def words(text):
    return re.findall(r"\w+", text.lower())


def run_fts5(docs, queries, rounds):
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(title, body)")
    started = time.perf_counter()
    db.executemany("INSERT INTO t(rowid, title, body) VALUES (?, ?, ?)", docs)
    db.commit()
    build_s = time.perf_counter() - started
    matches = [" OR ".join(f'"{w}"' for w in words(q)) for q in queries]
    best, top = None, []
    for round_ in range(rounds):
        latencies = []
        started = time.perf_counter()
        for i, m in enumerate(matches):
            t = time.perf_counter()
            ids = [r[0] for r in db.execute(
                "SELECT rowid FROM t WHERE t MATCH ? ORDER BY bm25(t) LIMIT ?", (m, K))]
            latencies.append(time.perf_counter() - t)
            if round_ == 0 and i < 100:
                top.append(ids)
        total = time.perf_counter() - started
        if best is None or total < best[0]:
            best = (total, latencies)
    total, latencies = best
    latencies.sort()
    at = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    return {"documents": len(docs), "build_s": build_s, "build_docs_per_s": len(docs) / build_s,
            "qps": len(matches) / total, "p50_ms": at(0.5), "p99_ms": at(0.99), "top": top,
            "version": sqlite3.sqlite_version}


def shorten(query):
    """A keyword query as users type it: the summary's first two words."""
    return " ".join(query.split()[:2])


def run_ours(docs, queries, rounds):
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "corpus.tsv").write_text("".join(f"{i}\t{t}\t{b}\n" for i, t, b in docs))
    (OUT / "queries.txt").write_text("".join(q + "\n" for q in queries))
    (OUT / "ids.txt").write_text("".join(q + "\n" for q in queries + [shorten(q) for q in queries]))
    out = subprocess.run(
        ["cargo", "bench", "--quiet", "--bench", "text", "--", str(OUT / "corpus.tsv"),
         str(OUT / "queries.txt"), str(K), str(rounds), str(OUT / "ids.txt")],
        cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def end_to_end(docs, queries, shorts, ids, scores):
    """`$search` through the proxy against the `_id $in` find of its
    documents through the proxy. `ids` (and their `scores`) are the engine
    bench's top K of `queries` then `shorts`: the find reads those, so
    that it can run first. Each query's two reads take turns, the
    `$search` first for even queries and the find first for odd ones:
    whichever reads a query's documents second finds them warm in the
    upstream (and, on two cores, in its caches), and running one always
    second would favour it. Where the proxy's top K differ from the
    engine's, the scores are checked (untimed) to be the same: documents
    of equal score, ordered by each index's own segments. The direct
    find always runs third, warmest, for reference only."""
    upstream = start_upstream()
    proxy = start_proxy(f"mongodb://{upstream.address}/")
    try:
        direct = MongoClient(f"mongodb://{upstream.address}/", directConnection=True)
        client = MongoClient(f"mongodb://{proxy.address}/", directConnection=True)
        coll = direct.bench_text.docs
        coll.drop()
        for at in range(0, len(docs), 5000):
            coll.insert_many([{"_id": i, "title": t, "body": b} for i, t, b in docs[at:at + 5000]],
                             ordered=False)
        via = client.bench_text.docs
        started = time.perf_counter()
        via.create_search_index(SearchIndexModel({"mappings": {"dynamic": True}}, name="text"))
        wait_ready(via, "text", timeout=1800)
        build_s = time.perf_counter() - started
        times = {name: [] for name in ("search", "find_id_in", "find_id_in_direct", "search_short",
                                       "find_id_in_short")}
        # Per pass: (query number, `$search` seconds, find seconds, whether
        # the `$search` returned exactly the ids the find read).
        pairs = {"search": [], "search_short": []}
        empty = 0
        differ = []

        def timed(name, read):
            t = time.perf_counter()
            out = list(read())
            times[name].append(time.perf_counter() - t)
            return out

        def search(query):
            return lambda: via.aggregate([
                {"$search": {"index": "text", "text": {"query": query, "path": ["title", "body"]}}},
                {"$limit": K}])

        # Keyword queries as users type them (a summary's first two words),
        # then whole summaries.
        for queries_, ids_, s_name, f_name in ((shorts, ids[len(queries):], "search_short",
                                                "find_id_in_short"),
                                               (queries, ids[:len(queries)], "search", "find_id_in")):
            for i, (q, want) in enumerate(zip(queries_, ids_)):
                find = lambda: via.find({"_id": {"$in": want}})
                if i % 2 == 0:
                    hits = timed(s_name, search(q))
                    got = timed(f_name, find)
                else:
                    got = timed(f_name, find)
                    hits = timed(s_name, search(q))
                assert len(got) == len(want)
                same = sorted(d["_id"] for d in hits) == sorted(want)
                pairs[s_name].append((i, times[s_name][-1], times[f_name][-1], same))
                if not same:
                    differ.append((q, i + (len(queries) if s_name == "search_short" else 0)))
                if s_name == "search":
                    empty += not hits
                    timed("find_id_in_direct", lambda: coll.find({"_id": {"$in": want}}))
        # Untimed: where the top K differ, do their scores? Two indexes
        # order documents of equal score by their own segment layouts.
        tied = 0
        for q, at in differ:
            got = [d["s"] for d in via.aggregate([
                {"$search": {"index": "text", "text": {"query": q, "path": ["title", "body"]}}},
                {"$limit": K}, {"$project": {"_id": 0, "s": {"$meta": "searchScore"}}}])]
            tied += all(abs(a - b) <= 1e-5 * max(1.0, abs(b)) for a, b in zip(got, scores[at])) \
                and len(got) == len(scores[at])

        def ratio(rows):
            """p50 of the `$search`es over p50 of the finds, of `rows`."""
            return statistics.median(r[1] for r in rows) / statistics.median(r[2] for r in rows)

        out = {name: summary(s) for name, s in times.items()}
        # The `$search` over the find of the same queries: where the
        # `$search` ran first, where the find did, and over the queries
        # whose `$search` returned exactly the ids the find read.
        out["in_turn"] = {name: {"search_first": ratio([r for r in rows if r[0] % 2 == 0]),
                                 "find_first": ratio([r for r in rows if r[0] % 2 == 1]),
                                 "same_documents": ratio([r for r in rows if r[3]])}
                          for name, rows in pairs.items()}
        out["index_build_s"] = round(build_s, 2)
        out["index_docs_per_s"] = round(len(docs) / build_s, 1)
        out["queries_without_results"] = empty
        out["queries"] = len(queries) + len(shorts)
        out["same_documents"] = out["queries"] - len(differ)
        out["tied_documents"] = tied
        return out
    finally:
        proxy.stop()
        upstream.stop()


def overlap(a, b):
    shared = [len(set(x) & set(y)) / max(1, min(len(x), len(y))) for x, y in zip(a, b) if x and y]
    return sum(shared) / max(1, len(shared))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, nq, rounds = (20_000, 300, 2) if args.quick else (100_000, 1_000, 3)
    started = time.time()
    docs, queries = corpus(n, nq)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    print("engine alone: likewise", file=sys.stderr, flush=True)
    ours = run_ours(docs, queries, rounds)
    print("engine alone: SQLite FTS5", file=sys.stderr, flush=True)
    fts5 = run_fts5(docs, queries, rounds)
    print("end to end through the proxy", file=sys.stderr, flush=True)
    e2e = end_to_end(docs, queries, [shorten(q) for q in queries], ours["ids"], ours["scores"])
    lines = [f"# Full-text benchmark ({'quick' if args.quick else 'full'}), {time.strftime('%Y-%m-%d %H:%M')}",
             f"\n{cpu}, {os.cpu_count()} cores. {n:,} documents (Debian summaries as titles, long "
             f"descriptions as bodies), {nq} summary queries, best {K}.",
             "\n### the engine alone (in memory, single-threaded unless said, best of "
             f"{rounds} rounds)\n",
             "| engine | index (documents/s) | QPS | p50 (ms) | p99 (ms) |",
             "|---|---:|---:|---:|---:|"]
    for name, r in (("likewise (tantivy 0.27)", ours), (f"SQLite FTS5 {fts5['version']}", fts5)):
        lines.append(f"| {name} | {r['build_docs_per_s']:,.0f} | {r['qps']:,.0f} | "
                     f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} |")
    lines.append(f"| likewise, helpers beside it ({os.cpu_count()} cores, as the proxy "
                 f"searches) | | {ours['beside_qps']:,.0f} | {ours['beside_p50_ms']:.3f} | "
                 f"{ours['beside_p99_ms']:.3f} |")
    engine_ratio = ours["qps"] / fts5["qps"]
    lines.append(f"\nlikewise / FTS5: queries/s **{engine_ratio:.2f}×**, indexing "
                 f"{ours['build_docs_per_s'] / fts5['build_docs_per_s']:.2f}×; top-10 overlap of the "
                 f"two (first 100 queries; both BM25, FTS5 over both columns as one): "
                 f"{overlap(ours['top'], fts5['top']):.2f}")
    base = e2e["find_id_in"]["p50_ms"]
    lines += ["\n### end to end through the proxy (SecantusDB upstream, pymongo)\n",
              "| query | p50 (ms) | p99 (ms) | QPS | p50 / `_id $in` find |", "|---|---:|---:|---:|---:|"]
    for name, label, against in (
            ("search", "`$search` (a whole summary, text over title and body), `$limit: 10`",
             "find_id_in"),
            ("find_id_in", "`find({_id: {$in: ids}})` via proxy", "find_id_in"),
            ("find_id_in_direct", "`find({_id: {$in: ids}})` direct", "find_id_in"),
            ("search_short", "`$search` (its first two words)", "find_id_in_short"),
            ("find_id_in_short", "`find({_id: {$in: ids}})` of those results", "find_id_in_short")):
        q = e2e[name]
        lines.append(f"| {label} | {q['p50_ms']:.2f} | {q['p99_ms']:.2f} | {q['qps']:,.0f} | "
                     f"{q['p50_ms'] / e2e[against]['p50_ms']:.2f} |")
    turns = e2e["in_turn"]
    in_turn = lambda s: (f"{turns[s]['search_first']:.2f}× where the `$search` ran first, "
                         f"{turns[s]['find_first']:.2f}× where the find did, "
                         f"{turns[s]['same_documents']:.2f}× over the queries whose `$search` "
                         f"returned exactly the ids the find read")
    lines.append(f"\n`$search` p50 / find p50 of the same queries: whole summaries "
                 f"{in_turn('search')}; two words {in_turn('search_short')}. Queries whose "
                 f"`$search` returned the engine bench's top {K} (the ids the finds read): "
                 f"{e2e['same_documents']} of {e2e['queries']}; of the rest, "
                 f"{e2e['tied_documents']} with the same {K} scores (documents of equal score "
                 f"ordered by each index's own segments), "
                 f"{e2e['queries'] - e2e['same_documents'] - e2e['tied_documents']} otherwise. "
                 f"The direct find always ran third, its documents warm.")
    lines.append(f"\nindex build through the proxy: {e2e['index_build_s']} s, "
                 f"**{e2e['index_docs_per_s']:,.0f} documents/s** (scan from the upstream included); "
                 f"queries without results: {e2e['queries_without_results']}")
    lines.append(f"\nfinished in {time.time() - started:.0f} s")
    (OUT / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"report: {OUT / 'report.md'}")
    print(f"search_p50_ratio_vs_id_in={e2e['search']['p50_ms'] / base:.2f}")
    short = e2e["search_short"]["p50_ms"] / e2e["find_id_in_short"]["p50_ms"]
    print(f"short_search_p50_ratio_vs_id_in={short:.2f}")
    print(f"engine_qps_ratio_vs_fts5={engine_ratio:.2f}")


if __name__ == "__main__":
    main()

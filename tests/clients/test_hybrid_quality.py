"""Retrieval quality of full-text, vector and hybrid search on real text,
through the proxy: the pinned Debian corpus's one-line summaries are the
queries and the packages' long descriptions (which do not contain the
summary) the items; each query has one relevant item, its own package.

For each mode, r@1, r@10 and MRR@10 over the queries: `$search` alone (a
dynamic `search` index, lucene.standard), `$vectorSearch` alone (an
`autoEmbed` index on the default text model, all-MiniLM-L6-v2, queried
with `query: {text}`), `$rankFusion` of the two and `$scoreFusion` of the
two (`minMaxScaler`, `avg`). Each input pipeline gives its best 20; the
fused ranking is cut to 10.

Run alone for the README's table over every described package:

    LIKEWISE_QUALITY_ITEMS=4000 .venv/bin/python -m pytest \
        tests/clients/test_hybrid_quality.py -q -s

The test's default, 1,000 packages, keeps the suite quick (about 2.5
minutes). Measured here at 1,000 (2026-12-01): MRR@10 search 0.860,
vectorSearch 0.896, rankFusion 0.902, scoreFusion 0.916; the test asserts
that each fusion beats both single modes. Retrieval here is deterministic
(a fixed corpus and model, and `numCandidates` 200 finds the exact
neighbours of 1,000 items), so the margins hold on any machine."""

import os

import pytest
from pymongo import MongoClient
from pymongo.operations import SearchIndexModel

from conftest import debian_long_descriptions, wait_ready

ITEMS = int(os.environ.get("LIKEWISE_QUALITY_ITEMS", "1000"))
DEPTH = 20  # each input pipeline's results
K = 10  # the ranking judged


def vector(title, limit=DEPTH):
    return {"$vectorSearch": {"index": "meaning", "path": "text", "query": {"text": title},
                              "numCandidates": 200, "limit": limit}}


def keywords(title):
    return {"$search": {"index": "words", "text": {"query": title, "path": "text"}}}


def pipelines(title):
    """The four modes' pipelines for one query, each ending in its top K ids."""
    inputs = {"vector": [vector(title)], "keywords": [keywords(title), {"$limit": DEPTH}]}
    ids = {"$project": {"_id": 1}}
    return {
        "search": [keywords(title), {"$limit": K}, ids],
        "vectorSearch": [vector(title, K), ids],
        "rankFusion": [{"$rankFusion": {"input": {"pipelines": inputs}}}, {"$limit": K}, ids],
        "scoreFusion": [{"$scoreFusion": {"input": {"pipelines": inputs,
                                                    "normalization": "minMaxScaler"}}},
                        {"$limit": K}, ids],
    }


@pytest.fixture(scope="module")
def corpus(module_proxy_uri):
    """The corpus indexed both ways, on an upstream of this module's own:
    proxies other modules start on the shared upstream never rebuild (and
    re-encode) these indexes."""
    rows = debian_long_descriptions(ITEMS)
    with MongoClient(module_proxy_uri) as client:
        coll = client.quality.packages
        coll.drop()
        coll.insert_many([{"_id": r["_id"], "text": r["text"]} for r in rows])
        coll.create_search_index(SearchIndexModel({"mappings": {"dynamic": True}}, name="words"))
        coll.create_search_index(SearchIndexModel(
            {"fields": [{"type": "autoEmbed", "modality": "text", "path": "text"}]},
            name="meaning", type="vectorSearch"))
        wait_ready(coll, "words")
        wait_ready(coll, "meaning", timeout=900)
        yield coll, rows


def measure(coll, rows):
    ranks = {mode: [] for mode in pipelines("x")}
    for row in rows:
        for mode, pipeline in pipelines(row["title"]).items():
            got = [d["_id"] for d in coll.aggregate(pipeline)]
            assert len(got) <= K and len(set(got)) == len(got)
            ranks[mode].append(got.index(row["_id"]) + 1 if row["_id"] in got else None)
    table = {}
    for mode, rs in ranks.items():
        n = len(rs)
        table[mode] = {
            "r@1": sum(1 for r in rs if r == 1) / n,
            "r@10": sum(1 for r in rs if r is not None) / n,
            "MRR": sum(1 / r for r in rs if r is not None) / n,
        }
    return table


def test_hybrid_search_beats_both_single_modes(corpus):
    coll, rows = corpus
    table = measure(coll, rows)
    print(f"\nquality over {len(rows)} Debian packages (summary -> long description):")
    print("| mode | r@1 | r@10 | MRR@10 |\n|---|---:|---:|---:|")
    for mode, m in table.items():
        print(f"| {mode} | {m['r@1']:.3f} | {m['r@10']:.3f} | {m['MRR']:.3f} |")
    best_single = max(table["search"]["MRR"], table["vectorSearch"]["MRR"])
    for fused in ("rankFusion", "scoreFusion"):
        gain = table[fused]["MRR"] - best_single
        print(f"{fused} MRR over the better single mode: {gain:+.3f}")
        # Hybrid beats both single modes on MRR (by 0.006 and 0.021 here).
        assert gain > 0, (fused, table)
    # Each single mode finds something on its own (neither is a stub).
    assert table["search"]["r@10"] > 0.4 and table["vectorSearch"]["r@10"] > 0.4, table

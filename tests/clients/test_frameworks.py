"""RAG frameworks through the proxy, through their public APIs only:
LangChain's `langchain-mongodb` and LlamaIndex's
`llama-index-vector-stores-mongodb` (pinned in tests/requirements.in).

Each framework creates its Atlas vector search index itself, adds documents
with metadata (real text: Debian package summaries), and searches with and
without pre-filters; results are checked against an exact cosine oracle
over the same embeddings. The embeddings come from the local
OpenAI-compatible endpoint (embed_server.py) through a small embeddings
class on each framework's own interface, so the frameworks embed
client-side and send `queryVector`. Nothing here may reach the network:
every socket connection and name lookup outside loopback is refused and
fails the test (LlamaIndex reads its bundled NLTK and tiktoken data).

Full-text and hybrid search run each framework's own `search` index
definitions and `$search` pipelines (the hybrid ones fuse `$search` and
`$vectorSearch` with `$unionWith`)."""

import asyncio
import json
import math
import sys
import urllib.request

import pytest
from pymongo import AsyncMongoClient, MongoClient

from conftest import debian_long_descriptions, debian_packages, wait_ready
from embed_server import DIMS, EmbedServer, embed

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class Offline:
    """While on, refuses every socket connection and name lookup that is
    not loopback (an audit hook, so no library can get around it) and
    records it: a library that swallows the error still fails the test."""

    on = False
    attempts = []

    @classmethod
    def audit(cls, event, args):
        if not cls.on:
            return
        if event == "socket.connect":
            address = args[1]
            if not isinstance(address, tuple) or address[0] in LOOPBACK:
                return
        elif event == "socket.getaddrinfo":
            host = args[0].decode() if isinstance(args[0], bytes) else args[0]
            if host is None or host in LOOPBACK:
                return
            address = (host, args[1])
        else:
            return
        cls.attempts.append((event, address))
        raise OSError(f"test_frameworks: network access outside loopback refused: {event} {address}")


sys.addaudithook(Offline.audit)

# The frameworks' imports run offline too.
Offline.on = True
try:
    from langchain_core.embeddings import Embeddings
    from langchain_core.globals import set_llm_cache
    from langchain_core.language_models.fake import FakeListLLM
    from langchain_core.outputs import Generation
    from langchain_mongodb import MongoDBAtlasVectorSearch as LangChainStore
    from langchain_mongodb.cache import MongoDBAtlasSemanticCache
    from langchain_mongodb.index import create_fulltext_search_index, create_vector_search_index
    from langchain_core.documents import Document as LangChainDocument
    from langchain_mongodb.retrievers import (
        MongoDBAtlasFullTextSearchRetriever,
        MongoDBAtlasHybridSearchRetriever,
        MongoDBAtlasParentDocumentRetriever,
    )
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from llama_index.core import Document as LlamaDocument
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.embeddings import BaseEmbedding
    from llama_index.core.vector_stores import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters
    from llama_index.vector_stores.mongodb import MongoDBAtlasVectorSearch as LlamaStore
finally:
    Offline.on = False
assert not Offline.attempts, Offline.attempts

K = 5


# --- embeddings over HTTP, on each framework's interface --------------------

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy from the environment


def post_embeddings(url, texts):
    """POSTs {model, input} to an OpenAI-compatible endpoint; the vectors in
    input order."""
    body = json.dumps({"model": "hashed-bag-of-words", "input": list(texts)}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with _opener.open(request, timeout=30) as reply:
        data = json.load(reply)["data"]
    return [row["embedding"] for row in sorted(data, key=lambda row: row["index"])]


class HttpEmbeddings(Embeddings):
    """LangChain embeddings from an OpenAI-compatible endpoint."""

    def __init__(self, url):
        self.url = url

    def embed_documents(self, texts):
        return post_embeddings(self.url, texts)

    def embed_query(self, text):
        return post_embeddings(self.url, [text])[0]


class HttpLlamaEmbedding(BaseEmbedding):
    """LlamaIndex embeddings from an OpenAI-compatible endpoint."""

    url: str

    def _get_query_embedding(self, query):
        return post_embeddings(self.url, [query])[0]

    async def _aget_query_embedding(self, query):
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text):
        return post_embeddings(self.url, [text])[0]

    def _get_text_embeddings(self, texts):
        return post_embeddings(self.url, texts)


# --- the exact oracle ---------------------------------------------------------

def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)) or 1.0)


def oracle(rows, query, k, keep=lambda row: True):
    """The k best rows for `query` by exact cosine: [(Atlas score, row)],
    best first; the Atlas score of cosine is (1 + cos) / 2."""
    q = embed(query)
    scored = sorted((((1 + cosine(q, embed(row["text"]))) / 2, row) for row in rows if keep(row)),
                    key=lambda pair: -pair[0])
    return scored[:k]


def check_ranking(got, rows, query, k, keep=lambda row: True, tol=1e-5):
    """`got`: [(id, score)] as a framework returned them for `query`. As
    many as the oracle's k best, scores in [0, 1] and sorted, each the
    exact score of its own document, and the same scores as the oracle's
    best (documents with equal scores may come in any order)."""
    expected = oracle(rows, query, k, keep)
    scores = [score for _, score in got]
    assert len(got) == len(expected), (got, [(s, r["_id"]) for s, r in expected])
    assert len({doc_id for doc_id, _ in got}) == len(got), got
    assert all(0.0 <= s <= 1.0 for s in scores), scores
    assert scores == sorted(scores, reverse=True), scores
    assert all(abs(s - want) < tol for s, (want, _) in zip(scores, expected)), \
        (got, [(s, r["_id"]) for s, r in expected])
    q = embed(query)
    by_id = {row["_id"]: row for row in rows}
    for doc_id, score in got:
        assert keep(by_id[doc_id]), doc_id
        assert abs((1 + cosine(q, embed(by_id[doc_id]["text"]))) / 2 - score) < tol, (doc_id, score)


def corpus():
    """Real text, the same everywhere: 300 Debian package summaries with
    their section and word count as metadata."""
    return [{"_id": r["_id"], "text": r["description"], "section": r["section"],
             "words": len(r["description"].split())} for r in debian_packages(300)]


QUERIES = ["development files for the library", "perl module to parse text",
           "documentation of the python library", "network monitor tool",
           "game of strategy"]
SECTIONS = ["perl", "libs", "python", "libdevel", "doc"]


# --- fixtures -------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def offline():
    Offline.on = True
    yield
    Offline.on = False


@pytest.fixture(autouse=True)
def nothing_left_loopback():
    yield
    attempts, Offline.attempts = Offline.attempts, []
    assert not attempts, f"a framework tried to reach the network: {attempts}"


@pytest.fixture(scope="module")
def embed_server():
    server = EmbedServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(proxy_uri):
    with MongoClient(proxy_uri) as c:
        yield c


# --- LangChain ------------------------------------------------------------------

LC_DB = "frameworks_langchain"


@pytest.fixture(scope="module")
def lc(client, embed_server):
    """A LangChain vector store over 300 documents: half added before its
    index is created (the build reads them), half after it is READY (the
    proxy indexes them as they are written)."""
    client.drop_database(LC_DB)
    coll = client[LC_DB]["docs"]
    store = LangChainStore(coll, HttpEmbeddings(embed_server.url), index_name="lc_vectors",
                           relevance_score_fn="cosine", auto_create_index=False)
    rows = corpus()
    first, rest = rows[:150], rows[150:]

    def add(batch):
        ids = store.add_texts([r["text"] for r in batch],
                              metadatas=[{"section": r["section"], "words": r["words"]} for r in batch],
                              ids=[r["_id"] for r in batch])
        assert ids == [r["_id"] for r in batch]

    add(first)
    store.create_vector_search_index(dimensions=DIMS, filters=["section", "words"])
    info, _ = wait_ready(coll, "lc_vectors")
    assert info["type"] == "vectorSearch"
    fields = info["latestDefinition"]["fields"]
    assert {"type": "vector", "path": "embedding", "numDimensions": DIMS, "similarity": "cosine"} in fields
    assert {f["path"] for f in fields if f["type"] == "filter"} == {"section", "words"}
    add(rest)
    yield store, rows
    client.drop_database(LC_DB)


def lc_ids(results):
    return [(doc.metadata["_id"], score) for doc, score in results]


def test_langchain_similarity_search_with_scores_matches_the_exact_oracle(lc):
    store, rows = lc
    for query in QUERIES:
        got = store.similarity_search_with_score(query, k=K)
        check_ranking(lc_ids(got), rows, query, K)
        by_id = {r["_id"]: r for r in rows}
        for doc, _ in got:
            row = by_id[doc.metadata["_id"]]
            assert doc.page_content == row["text"]
            assert (doc.metadata["section"], doc.metadata["words"]) == (row["section"], row["words"])
            assert "embedding" not in doc.metadata
    # similarity_search and the retriever return the same documents in order.
    query = QUERIES[0]
    expected = [doc.page_content for doc, _ in store.similarity_search_with_score(query, k=K)]
    assert [d.page_content for d in store.similarity_search(query, k=K)] == expected
    retriever = store.as_retriever(search_kwargs={"k": K})
    assert [d.page_content for d in retriever.invoke(query)] == expected


def test_langchain_pre_filters_return_k_matching_documents(lc):
    store, rows = lc
    for section in SECTIONS:
        query = f"{section} library tool"
        got = store.similarity_search_with_score(query, k=K, pre_filter={"section": {"$eq": section}})
        assert {doc.metadata["section"] for doc, _ in got} == {section}
        check_ranking(lc_ids(got), rows, query, K, lambda r: r["section"] == section)
    # $in and a range on a second filter field, under $and.
    pre_filter = {"$and": [{"section": {"$in": ["perl", "python"]}}, {"words": {"$gte": 5}}]}
    keep = lambda r: r["section"] in ("perl", "python") and r["words"] >= 5  # noqa: E731
    for query in QUERIES:
        got = store.similarity_search_with_score(query, k=K, pre_filter=pre_filter)
        check_ranking(lc_ids(got), rows, query, K, keep)
    # Through the retriever, as a chain would use it.
    retriever = store.as_retriever(search_kwargs={"k": K, "pre_filter": {"section": {"$eq": "doc"}}})
    docs = retriever.invoke(QUERIES[2])
    assert len(docs) == K and {d.metadata["section"] for d in docs} == {"doc"}
    # A filter nothing matches: no results, not an error.
    assert store.similarity_search("anything", k=K, pre_filter={"section": {"$eq": "no-such-section"}}) == []


def test_langchain_max_marginal_relevance_search_skips_duplicates(lc, client):
    store, rows = lc
    text = "sleep tracker with alarm clock and sleep statistics"
    copies = [f"mmr-copy-{i}" for i in range(3)]
    store.add_texts([text] * 3, metadatas=[{"section": "mmr", "words": 8}] * 3, ids=copies)
    try:
        query = "alarm clock with sleep statistics"
        # Plain similarity: the three identical copies come first.
        top = store.similarity_search(query, k=3)
        assert sorted(d.metadata["_id"] for d in top) == copies
        fetched = store.similarity_search(query, k=20)
        mmr = store.max_marginal_relevance_search(query, k=4, fetch_k=20, lambda_mult=0.5)
        ids = [d.metadata["_id"] for d in mmr]
        assert len(ids) == 4 and len(set(ids)) == 4, ids
        assert set(ids) <= {d.metadata["_id"] for d in fetched}
        # The best match first, then diversity: one copy only.
        assert ids[0] in copies
        assert len(set(ids) & set(copies)) == 1, ids
        # The same selection MMR makes from the exact oracle's candidates.
        candidates = oracle(rows + [{"_id": c, "text": text} for c in copies], query, 20)
        assert [d.page_content for d in mmr] == expected_mmr(query, candidates, 4, 0.5)
    finally:
        store.delete(ids=copies)


def expected_mmr(query, candidates, k, lambda_mult):
    """Maximal marginal relevance over the oracle's candidates (best first):
    the texts chosen, greedily maximising
    lambda * cos(doc, query) - (1 - lambda) * max cos(doc, chosen)."""
    q = embed(query)
    vectors = [embed(row["text"]) for _, row in candidates]
    chosen = []
    while len(chosen) < min(k, len(candidates)):
        best, best_score = None, -math.inf
        for i, v in enumerate(vectors):
            if i in chosen:
                continue
            redundancy = max((cosine(v, vectors[j]) for j in chosen), default=0.0)
            score = lambda_mult * cosine(v, q) - (1 - lambda_mult) * redundancy
            if not chosen:
                score = cosine(v, q)
            if score > best_score + 1e-9:
                best, best_score = i, score
        chosen.append(best)
    return [candidates[i][1]["text"] for i in chosen]


def test_langchain_delete_by_ids_removes_documents_from_results(lc):
    store, rows = lc
    victims = [rows[10], rows[200]]
    for row in victims:
        best = store.similarity_search_with_score(row["text"], k=1)
        assert best[0][0].metadata["_id"] == row["_id"] and best[0][1] > 0.9999
    assert store.delete(ids=[r["_id"] for r in victims])
    assert store.get_by_ids([r["_id"] for r in victims]) == []
    remaining = [r for r in rows if r not in victims]
    try:
        for row in victims:
            got = store.similarity_search_with_score(row["text"], k=K)
            assert row["_id"] not in {doc.metadata["_id"] for doc, _ in got}
            check_ranking(lc_ids(got), remaining, row["text"], K)
            filtered = store.similarity_search(row["text"], k=K, pre_filter={"section": {"$eq": row["section"]}})
            assert row["_id"] not in {d.metadata["_id"] for d in filtered}
    finally:
        store.add_texts([r["text"] for r in victims],
                        metadatas=[{"section": r["section"], "words": r["words"]} for r in victims],
                        ids=[r["_id"] for r in victims])
    assert [d.metadata["_id"] for d in store.similarity_search(victims[0]["text"], k=1)] == [victims[0]["_id"]]


def test_langchain_semantic_cache(proxy_uri, client, embed_server):
    db = "frameworks_langchain_cache"
    client.drop_database(db)
    embedding = HttpEmbeddings(embed_server.url)
    cache = MongoDBAtlasSemanticCache(connection_string=proxy_uri, embedding=embedding,
                                      database_name=db, collection_name="cache",
                                      index_name="cache_vectors", wait_until_ready=30)
    strict = MongoDBAtlasSemanticCache(connection_string=proxy_uri, embedding=embedding,
                                       database_name=db, collection_name="cache",
                                       index_name="cache_vectors", score_threshold=0.99)
    try:
        create_vector_search_index(cache.collection, "cache_vectors", path="embedding",
                                   dimensions=DIMS, similarity="cosine", filters=["llm_string"])
        wait_ready(cache.collection, "cache_vectors")
        prompt, llm = "What does the bmon package do?", "fake-llm-a"
        answer = [Generation(text="It monitors bandwidth and estimates rates.")]
        assert cache.lookup(prompt, llm) is None
        cache.update(prompt, llm, answer)  # waits (bounded) until lookup returns it
        assert cache.lookup(prompt, llm) == answer
        assert strict.lookup(prompt, llm) == answer
        # The pre-filter on the LLM string: another model's cache misses.
        assert cache.lookup(prompt, "fake-llm-b") is None
        # A different prompt: the nearest cached one without a threshold,
        # nothing above 0.99.
        other = "Which package measures network bandwidth?"
        assert cache.lookup(other, llm) == answer
        assert strict.lookup(other, llm) is None

        # As an LLM cache: the second call is answered from the cache.
        set_llm_cache(strict)
        model = FakeListLLM(responses=["first answer", "second answer"])
        assert model.invoke("Name a bandwidth monitor.") == "first answer"
        assert model.invoke("Name a bandwidth monitor.") == "first answer"
        assert model.invoke("Name a game of ancient warfare.") == "second answer"
        cache.clear()
        assert cache.lookup(prompt, llm) is None
    finally:
        set_llm_cache(None)
        cache.close()
        strict.close()
        client.drop_database(db)


def test_langchain_create_fulltext_search_index(lc):
    store, _ = lc
    create_fulltext_search_index(store.collection, "lc_text_only", field="text", wait_until_complete=60)
    assert [i["status"] for i in store.collection.list_search_indexes("lc_text_only")] == ["READY"]


def test_langchain_full_text_search_retriever(lc):
    store, rows = lc
    retriever = MongoDBAtlasFullTextSearchRetriever(collection=store.collection, search_index_name="lc_text",
                                                    search_field="text", k=K, auto_index_timeout=60)
    docs = retriever.invoke("bandwidth")
    assert "bandwidth" in docs[0].page_content.lower()
    assert all(d.metadata["score"] > 0 for d in docs)


def test_langchain_hybrid_search_retriever(lc):
    store, rows = lc
    retriever = MongoDBAtlasHybridSearchRetriever(vectorstore=store, search_index_name="lc_hybrid_text", k=K,
                                                  auto_index_timeout=60)
    docs = retriever.invoke("portable bandwidth monitor")
    assert docs[0].metadata["_id"] == "bmon"
    assert len(docs) == K


def test_langchain_parent_document_retriever(proxy_uri, client, embed_server):
    """`MongoDBAtlasParentDocumentRetriever` with its defaults: one
    collection holds the parents and their embedded chunks, the retriever
    makes its own full-text index on creation, and a query returns the
    parents of the best chunks by exact cosine, each once and whole."""
    db = "frameworks_langchain_parents"
    client.drop_database(db)
    # `text_key`: the docstore keeps parents' text under `page_content`,
    # which the retriever reads by the vector store's key (`text` unless
    # told), in Atlas's deployments as here.
    retriever = MongoDBAtlasParentDocumentRetriever.from_connection_string(
        proxy_uri, HttpEmbeddings(embed_server.url), RecursiveCharacterTextSplitter(chunk_size=200),
        db, text_key="page_content", relevance_score_fn="cosine")
    try:
        coll = retriever.vectorstore.collection
        # Made on creation, as on Atlas (and never queried).
        assert [(i["name"], i["type"], i["status"]) for i in coll.list_search_indexes("text_index")] == \
            [("text_index", "search", "READY")]
        retriever.vectorstore.create_vector_search_index(dimensions=DIMS)
        wait_ready(coll, "vector_index")
        parents = debian_long_descriptions(40)
        retriever.add_documents([LangChainDocument(page_content=p["text"], metadata={"name": p["_id"]})
                                 for p in parents])
        chunks = list(coll.find({"doc_id": {"$exists": True}}, {"page_content": 1, "doc_id": 1}))
        assert len(chunks) > 2 * len(parents)
        texts = {p["text"] for p in parents}
        longest = max(parents, key=lambda p: len(p["text"]))["text"].split()
        middle = " ".join(longest[len(longest) // 2:len(longest) // 2 + 12])
        for probe in (middle, "library for the development of network games"):
            docs = retriever.invoke(probe)
            # The oracle: the default four best chunks by exact cosine,
            # then their parents (ties at the fourth are let in).
            q = embed(probe)
            scored = sorted(((cosine(q, embed(c["page_content"])), c["doc_id"]) for c in chunks),
                            reverse=True)
            fourth = scored[3][0]
            allowed = {doc_id for score, doc_id in scored if score >= fourth - 1e-9}
            best = {doc_id for score, doc_id in scored if score >= scored[0][0] - 1e-9}
            got = [d.metadata["_id"] for d in docs]
            assert 1 <= len(got) <= 4 and len(set(got)) == len(got), got
            assert set(got) <= allowed, (got, scored[:6])
            assert len(best) > 1 or best <= set(got), (got, scored[:3])
            assert all(d.page_content in texts for d in docs), "parents come back whole"
    finally:
        retriever.close()
        client.drop_database(db)


# --- LlamaIndex -----------------------------------------------------------------

LI_DB = "frameworks_llamaindex"


@pytest.fixture(scope="module")
def li(proxy_uri, client, embed_server):
    """A LlamaIndex VectorStoreIndex over the same 300 documents, stored
    through the proxy."""
    client.drop_database(LI_DB)
    sync_client = MongoClient(proxy_uri)
    async_client = AsyncMongoClient(proxy_uri)
    store = LlamaStore(mongodb_client=sync_client, async_mongodb_client=async_client,
                       db_name=LI_DB, collection_name="nodes", vector_index_name="li_vectors",
                       fulltext_index_name="li_text")
    store.create_vector_search_index(dimensions=DIMS, path="embedding", similarity="cosine",
                                     filters=["metadata.section", "metadata.words"])
    info, _ = wait_ready(store.collection, "li_vectors")
    assert {f["path"] for f in info["latestDefinition"]["fields"]} == \
        {"embedding", "metadata.section", "metadata.words"}
    rows = corpus()
    # Metadata is kept but not embedded, so the oracle embeds the text alone.
    documents = [LlamaDocument(text=r["text"], id_=r["_id"],
                               metadata={"section": r["section"], "words": r["words"]},
                               excluded_embed_metadata_keys=["section", "words"])
                 for r in rows]
    index = VectorStoreIndex.from_documents(
        documents, storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=HttpLlamaEmbedding(url=embed_server.url))
    assert store.collection.count_documents({}) == len(rows)
    yield index, store, rows
    sync_client.close()
    client.drop_database(LI_DB)


def li_ids(nodes):
    return [(n.node.ref_doc_id, n.score) for n in nodes]


def test_llamaindex_retriever_matches_the_exact_oracle(li):
    index, _, rows = li
    by_id = {r["_id"]: r for r in rows}
    retriever = index.as_retriever(similarity_top_k=K)
    for query in QUERIES:
        nodes = retriever.retrieve(query)
        check_ranking(li_ids(nodes), rows, query, K)
        for n in nodes:
            row = by_id[n.node.ref_doc_id]
            assert n.node.get_content() == row["text"]
            assert n.node.metadata == {"section": row["section"], "words": row["words"]}


def test_llamaindex_metadata_filters(li):
    index, _, rows = li
    for section in SECTIONS:
        query = f"{section} library tool"
        filters = MetadataFilters(filters=[MetadataFilter(key="section", value=section)])
        nodes = index.as_retriever(similarity_top_k=K, filters=filters).retrieve(query)
        assert {n.node.metadata["section"] for n in nodes} == {section}
        check_ranking(li_ids(nodes), rows, query, K, lambda r: r["section"] == section)
    filters = MetadataFilters(filters=[
        MetadataFilter(key="section", operator=FilterOperator.IN, value=["perl", "python"]),
        MetadataFilter(key="words", operator=FilterOperator.GTE, value=5),
    ], condition=FilterCondition.AND)
    keep = lambda r: r["section"] in ("perl", "python") and r["words"] >= 5  # noqa: E731
    for query in QUERIES:
        nodes = index.as_retriever(similarity_top_k=K, filters=filters).retrieve(query)
        check_ranking(li_ids(nodes), rows, query, K, keep)
    either = MetadataFilters(filters=[MetadataFilter(key="section", value="doc"),
                                      MetadataFilter(key="section", value="games")],
                             condition=FilterCondition.OR)
    nodes = index.as_retriever(similarity_top_k=K, filters=either).retrieve(QUERIES[4])
    check_ranking(li_ids(nodes), rows, QUERIES[4], K, lambda r: r["section"] in ("doc", "games"))


def test_llamaindex_async_query(li):
    index, store, rows = li
    query = QUERIES[1]

    async def run():
        try:
            return await index.as_retriever(similarity_top_k=K).aretrieve(query)
        finally:
            await store.async_client.close()

    nodes = asyncio.run(run())
    check_ranking(li_ids(nodes), rows, query, K)


def test_llamaindex_delete_ref_doc_removes_it_from_results(li):
    index, store, rows = li
    victim = next(r for r in rows if r["_id"] == "bmon")
    retriever = index.as_retriever(similarity_top_k=K)
    assert retriever.retrieve(victim["text"])[0].node.ref_doc_id == "bmon"
    index.delete_ref_doc("bmon", delete_from_docstore=True)
    assert store.collection.count_documents({"metadata.ref_doc_id": "bmon"}) == 0
    remaining = [r for r in rows if r["_id"] != "bmon"]
    nodes = retriever.retrieve(victim["text"])
    assert "bmon" not in {n.node.ref_doc_id for n in nodes}
    check_ranking(li_ids(nodes), remaining, victim["text"], K)
    filters = MetadataFilters(filters=[MetadataFilter(key="section", value=victim["section"])])
    nodes = index.as_retriever(similarity_top_k=K, filters=filters).retrieve(victim["text"])
    assert "bmon" not in {n.node.ref_doc_id for n in nodes}
    # Inserted again through the index, it is the best match again.
    index.insert(LlamaDocument(text=victim["text"], id_="bmon",
                               metadata={"section": victim["section"], "words": victim["words"]},
                               excluded_embed_metadata_keys=["section", "words"]))
    assert retriever.retrieve(victim["text"])[0].node.ref_doc_id == "bmon"


def test_llamaindex_text_search_mode(li):
    index, store, _ = li
    store.create_fulltext_search_index("text", wait_until_complete=60)
    nodes = index.as_retriever(similarity_top_k=K, vector_store_query_mode="text_search").retrieve("bandwidth")
    assert nodes and "bandwidth" in nodes[0].node.get_content().lower()


def test_llamaindex_hybrid_mode(li):
    index, store, _ = li
    if not list(store.collection.list_search_indexes("li_text")):
        store.create_fulltext_search_index("text", wait_until_complete=60)
    nodes = index.as_retriever(similarity_top_k=K, vector_store_query_mode="hybrid",
                               alpha=0.5).retrieve("portable bandwidth monitor")
    assert len(nodes) == K and nodes[0].node.ref_doc_id == "bmon"

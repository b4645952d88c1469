"""Full-text `search` indexes and `$search`, through the proxy with
pymongo, as Atlas Search apps use them. Scores are checked against
Lucene's BM25 worked out here from the corpus (k1 = 1.2, b = 0.75;
documents short enough that Lucene's length encoding is exact)."""

import math
import re

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure
from pymongo.operations import SearchIndexModel

from conftest import eventually, wait_ready

DOCS = [
    {"_id": 1, "title": "The quick brown fox", "body": "jumps over the lazy dog"},
    {"_id": 2, "title": "Fox news", "body": "a fox and another fox met a dog"},
    {"_id": 3, "title": "Dogs of New York", "body": "city dogs walk in new york parks"},
    {"_id": 4, "title": "New York city guide", "body": "where to eat in york"},
    {"_id": 5, "title": "Cooking for one", "body": "simple recipes", "tags": ["food", "guide"]},
    {"_id": 6, "title": "Brown bread", "body": "baking brown bread at home",
     "meta": {"note": "a baker's favourite"}},
]


def tokens(text):
    """lucene.standard as likewise approximates UAX #29: word runs joined
    by apostrophes or dots, lower-cased."""
    return re.findall(r"\w+(?:['’.]\w+)*", text.lower())


def bm25(field, query, docs=DOCS):
    """Lucene's BM25 of every document for a `text` query on one field."""
    values = {d["_id"]: tokens(d[field]) for d in docs if field in d}
    n = len(docs)
    avgdl = sum(len(v) for v in values.values()) / n
    scores = {}
    for term in tokens(query):
        df = sum(1 for v in values.values() if term in v)
        if df == 0:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, v in values.items():
            tf = v.count(term)
            if tf:
                norm = 1.2 * (1 - 0.75 + 0.75 * len(v) / avgdl)
                scores[i] = scores.get(i, 0.0) + idf * tf / (tf + norm)
    return scores


SCORE = {"$meta": "searchScore"}


@pytest.fixture(scope="module")
def client(proxy_uri):
    with MongoClient(proxy_uri) as c:
        yield c


@pytest.fixture(scope="module")
def articles(client):
    db = client.full_text
    db.drop_collection("articles")
    db.articles.insert_many([dict(d) for d in DOCS])
    db.articles.create_search_index(SearchIndexModel({"mappings": {"dynamic": True}}))
    wait_ready(db.articles, "default")
    return db.articles


def search(coll, operator, *later, index="default"):
    return list(coll.aggregate([{"$search": {"index": index, **operator}}, *later]))


def test_text_ranks_and_scores_as_lucenes_bm25(articles):
    got = search(articles, {"text": {"query": "fox dog", "path": "body"}},
                 {"$project": {"score": SCORE}})
    want = bm25("body", "fox dog")
    assert [d["_id"] for d in got] == sorted(want, key=lambda i: -want[i])
    for d in got:
        assert d["score"] == pytest.approx(want[d["_id"]], rel=1e-5)


def test_the_listing_is_atlas_shaped(articles):
    (listed,) = articles.list_search_indexes("default")
    assert listed["type"] == "search"
    assert listed["status"] == "READY" and listed["queryable"] is True
    assert listed["latestDefinition"] == {"mappings": {"dynamic": True}}


def test_later_stages_see_the_ranking(articles):
    want = bm25("title", "york guide")
    order = sorted(want, key=lambda i: -want[i])
    assert len(order) == 2 and len(set(want.values())) == 2
    got = search(articles, {"text": {"query": "york guide", "path": "title"}},
                 {"$limit": 1}, {"$project": {"_id": 1}})
    assert [d["_id"] for d in got] == order[:1]
    matched = search(articles, {"text": {"query": "york guide", "path": "title"}},
                     {"$set": {"s": SCORE}},
                     {"$match": {"s": {"$gt": (want[order[0]] + want[order[1]]) / 2}}},
                     {"$count": "n"})
    assert matched == [{"n": len(order) - 1}]


def test_phrase_compound_and_paths(articles):
    phrase = search(articles, {"phrase": {"query": "new york", "path": "title"}})
    assert sorted(d["_id"] for d in phrase) == [3, 4]
    ordered = search(articles, {"phrase": {"query": "york city", "path": "title"}})
    assert [d["_id"] for d in ordered] == [4]
    loose = search(articles, {"phrase": {"query": "dogs york", "path": "title", "slop": 2}})
    assert [d["_id"] for d in loose] == [3]
    compound = search(articles, {"compound": {
        "must": [{"text": {"query": "fox", "path": ["title", "body"]}}],
        "mustNot": [{"text": {"query": "lazy", "path": "body"}}],
    }})
    assert [d["_id"] for d in compound] == [2]
    filtered = search(articles, {"compound": {
        "filter": [{"text": {"query": "brown", "path": "title"}}],
        "should": [{"text": {"query": "bread", "path": "body"}}],
    }}, {"$project": {"score": SCORE}})
    assert [d["_id"] for d in filtered] == [6, 1]
    assert filtered[1]["score"] == 0
    nested = search(articles, {"text": {"query": "baker's", "path": "meta.note"}})
    assert [d["_id"] for d in nested] == [6]
    everywhere = search(articles, {"text": {"query": "guide", "path": {"wildcard": "*"}}})
    assert sorted(d["_id"] for d in everywhere) == [4, 5]
    constant = search(articles, {"text": {"query": "fox", "path": "title",
                                          "score": {"constant": {"value": 5}}}},
                      {"$project": {"score": SCORE}})
    assert {d["score"] for d in constant} == {5}
    assert search(articles, {"text": {"query": "fox", "path": "title"}}, index="missing") == []


def test_query_string_is_lucene_syntax(articles):
    """`queryString`: Lucene's classic syntax over the same analyzers."""
    def ids(query, default="title"):
        got = search(articles, {"queryString": {"defaultPath": default, "query": query}})
        return sorted(d["_id"] for d in got)

    assert ids("fox") == [1, 2]
    assert ids("fox OR bread") == [1, 2, 6]
    assert ids("fox AND body:lazy") == [1]
    assert ids("fox NOT news") == [1]
    assert ids("+york -dogs") == [4]
    assert ids('"new york"') == [3, 4]
    assert ids('body:"fox met"~2') == [2]
    assert ids("gui*") == [4]
    assert ids("body:(recipes OR baking)") == [5, 6]
    assert ids("fxo~1") == [1, 2]
    boosted = search(articles, {"queryString": {"defaultPath": "title", "query": "fox bread^10"}},
                     {"$limit": 1})
    assert [d["_id"] for d in boosted] == [6]
    with pytest.raises(OperationFailure) as e:
        ids("(fox")
    assert e.value.code == 2 and "unclosed" in str(e.value)


def test_writes_are_searchable_at_once(articles, client):
    articles.insert_one({"_id": 100, "title": "zebra crossing", "body": "stripes"})
    assert [d["_id"] for d in search(articles, {"text": {"query": "zebra", "path": "title"}})] == [100]
    articles.update_one({"_id": 100}, {"$set": {"title": "pelican crossing"}})
    assert search(articles, {"text": {"query": "zebra", "path": "title"}}) == []
    assert [d["_id"] for d in search(articles, {"text": {"query": "pelican", "path": "title"}})] == [100]
    articles.delete_one({"_id": 100})
    assert search(articles, {"text": {"query": "pelican", "path": "title"}}) == []


def test_writes_that_bypass_the_proxy_arrive(articles, direct_uri):
    with MongoClient(direct_uri) as direct:
        direct.full_text.articles.insert_one({"_id": 200, "title": "okapi sighting"})
        eventually(lambda: [d["_id"] for d in search(
            articles, {"text": {"query": "okapi", "path": "title"}})] == [200])
        direct.full_text.articles.delete_one({"_id": 200})
        eventually(lambda: search(articles, {"text": {"query": "okapi", "path": "title"}}) == [])


def test_search_inside_union_with(articles):
    got = list(articles.aggregate([
        {"$match": {"_id": 5}},
        {"$unionWith": {"coll": "articles", "pipeline": [
            {"$search": {"text": {"query": "fox", "path": "title"}}},
            {"$set": {"s": SCORE}},
        ]}},
    ]))
    assert [d["_id"] for d in got][0] == 5
    assert sorted(d["_id"] for d in got[1:]) == [1, 2]
    assert all(d["s"] > 0 for d in got[1:])


def test_static_mappings_and_analyzers(client):
    coll = client.full_text.keyed
    coll.drop()
    coll.insert_many([{"_id": 1, "code": "AB-12 x", "note": "Running fast"},
                      {"_id": 2, "code": "ab-12", "note": "ran"}])
    coll.create_search_index(SearchIndexModel(
        {"analyzer": "lucene.english",
         "mappings": {"dynamic": False, "fields": {
             "code": {"type": "string", "analyzer": "lucene.keyword"},
             "note": {"type": "string", "multi": {
                 "exact": {"type": "string", "analyzer": "lucene.keyword"}}}}}},
        name="keyed", type="search"))
    wait_ready(coll, "keyed")
    exact = search(coll, {"text": {"query": "AB-12 x", "path": "code"}}, index="keyed")
    assert [d["_id"] for d in exact] == [1]
    # wildcard and regex match whole terms of keyword-analyzed fields...
    ids = lambda op: sorted(d["_id"] for d in search(coll, op, index="keyed"))
    assert ids({"wildcard": {"query": "AB-1?*", "path": "code"}}) == [1]
    assert ids({"wildcard": {"query": "*-12", "path": "code"}}) == [2]
    assert ids({"regex": {"query": "[aA][bB]-12.*", "path": "code"}}) == [1, 2]
    assert ids({"wildcard": {"query": "run*", "path": "note", "allowAnalyzedField": True}}) == [1]
    # ... and analyzed ones only when asked to (Atlas's allowAnalyzedField).
    with pytest.raises(OperationFailure) as e:
        search(coll, {"wildcard": {"query": "run*", "path": "note"}}, index="keyed")
    assert e.value.code == 2 and "allowAnalyzedField" in str(e.value)
    stemmed = search(coll, {"text": {"query": "runs", "path": "note"}}, index="keyed")
    assert [d["_id"] for d in stemmed] == [1]
    # An alternate analyzer of the same path (Atlas's multi).
    assert search(coll, {"text": {"query": "running", "path": "code"}}, index="keyed") == []
    multi = {"value": "note", "multi": "exact"}
    assert [d["_id"] for d in search(coll, {"text": {"query": "Running fast", "path": multi}},
                                     index="keyed")] == [1]
    assert search(coll, {"text": {"query": "running", "path": multi}}, index="keyed") == []
    highlighted = search(coll, {"text": {"query": "Running fast", "path": multi},
                                "highlight": {"path": multi}},
                         {"$project": {"h": {"$meta": "searchHighlights"}}}, index="keyed")
    assert highlighted[0]["h"] == [{"path": multi, "score": 1.0, "texts": [
        {"value": "Running fast", "type": "hit"}]}]


def test_custom_analyzers(client):
    """A definition's own `analyzers` (a tokenizer, then token filters),
    named by fields and by the index, at index and at query time; what is
    not served is refused by name."""
    coll = client.full_text.custom
    coll.drop()
    coll.insert_many([
        {"_id": 1, "title": "Crème Brûlée recipes", "code": "AB-1234"},
        {"_id": 2, "title": "The running of the bulls", "code": "AB-9999"},
        {"_id": 3, "title": "A runner runs", "code": "XY-1234"},
    ])
    coll.create_search_index(SearchIndexModel({
        "analyzer": "folded",
        "analyzers": [
            {"name": "folded", "tokenizer": {"type": "standard"},
             "tokenFilters": [{"type": "lowercase"}, {"type": "asciiFolding"},
                              {"type": "stopword", "tokens": ["the", "of", "a"]},
                              {"type": "snowballStemming", "stemmerName": "english"}]},
            {"name": "prefixes", "tokenizer": {"type": "edgeGram", "minGram": 2, "maxGram": 5},
             "tokenFilters": [{"type": "lowercase"}]},
        ],
        "mappings": {"dynamic": False, "fields": {
            "title": {"type": "string"},
            "code": {"type": "string", "analyzer": "prefixes", "searchAnalyzer": "lucene.keyword"},
        }},
    }, name="custom"))
    wait_ready(coll, "custom")

    def ids(operator):
        return sorted(d["_id"] for d in search(coll, operator, index="custom"))

    assert ids({"text": {"query": "creme brulee", "path": "title"}}) == [1]  # folded
    assert ids({"text": {"query": "RUN", "path": "title"}}) == [2, 3]  # stemmed, lower-cased
    assert ids({"text": {"query": "the of a", "path": "title"}}) == []  # stop words
    assert ids({"text": {"query": "ab-12", "path": "code"}}) == [1]  # the value's prefixes
    assert ids({"text": {"query": "ab", "path": "code"}}) == [1, 2]
    for analyzers, message in (
        ([{"name": "x", "tokenizer": {"type": "uaxUrlEmail"}}], "uaxUrlEmail"),
        ([{"name": "x", "tokenizer": {"type": "standard"}, "tokenFilters": [{"type": "icuFolding"}]}],
         "icuFolding"),
        ([{"name": "lucene.mine", "tokenizer": {"type": "standard"}}], "lucene.mine"),
        ([{"name": "x", "charFilters": [{"type": "rot13"}], "tokenizer": {"type": "standard"}}],
         "rot13"),
        ([{"name": "x", "tokenizer": {"type": "regexSplit", "pattern": "("}}], "pattern"),
        ([{"name": "x", "tokenizer": {"type": "regexCaptureGroup", "pattern": "(a)", "group": 2}}],
         "group"),
        ([{"name": "x", "tokenizer": {"type": "standard"},
           "tokenFilters": [{"type": "length", "min": 5, "max": 2}]}], "min"),
    ):
        with pytest.raises(OperationFailure) as e:
            coll.create_search_index(SearchIndexModel(
                {"analyzers": analyzers, "mappings": {"dynamic": True}}, name="refused"))
        assert e.value.code == 72 and message in str(e.value), analyzers
    with pytest.raises(OperationFailure) as e:
        coll.create_search_index(SearchIndexModel(
            {"analyzer": "nowhere", "mappings": {"dynamic": True}}, name="refused"))
    assert e.value.code == 72 and "nowhere" in str(e.value)


def test_char_filters_regex_tokenizers_and_token_rules(client):
    """Custom analyzers with `charFilters` (htmlStrip, mapping,
    icuNormalize, persian), the `regexSplit` and `regexCaptureGroup`
    tokenizers and the `length` (min and max), `reverse`,
    `englishPossessive` and `regex` token filters; highlights of a
    char-filtered field point into the original text."""
    coll = client.full_text.char_filtered
    coll.drop()
    coll.insert_many([
        {"_id": 1, "html": "<p>Fish&amp;chips</p><script>var hidden;</script>", "tags": "red;green",
         "phone": "call 555-1234 now", "words": "Bob's a cat's toy", "uni": "ﬁne Cafe\u0301"},
        {"_id": 2, "html": "<div>hidden <b>gem</b></div>", "tags": "blue; dark-red",
         "phone": "555-9876", "words": "x yy zzzzzzz", "uni": "plain"},
    ])
    coll.create_search_index(SearchIndexModel({
        "analyzers": [
            {"name": "html", "charFilters": [{"type": "htmlStrip"},
                                             {"type": "mapping", "mappings": {"&": " and "}}],
             "tokenizer": {"type": "standard"}, "tokenFilters": [{"type": "lowercase"}]},
            {"name": "tags", "tokenizer": {"type": "regexSplit", "pattern": ";\\s*"},
             "tokenFilters": [{"type": "reverse"}]},
            {"name": "line", "tokenizer": {"type": "regexCaptureGroup",
                                           "pattern": "(\\d{3})-(\\d{4})", "group": 2}},
            {"name": "words", "tokenizer": {"type": "whitespace"},
             "tokenFilters": [{"type": "englishPossessive"},
                              {"type": "length", "min": 2, "max": 4},
                              {"type": "regex", "pattern": "o", "replacement": "0",
                               "matches": "all"}]},
            {"name": "uni", "charFilters": [{"type": "icuNormalize"}, {"type": "persian"}],
             "tokenizer": {"type": "whitespace"}},
        ],
        "mappings": {"dynamic": False, "fields": {
            "html": {"type": "string", "analyzer": "html"},
            "tags": {"type": "string", "analyzer": "tags"},
            "phone": {"type": "string", "analyzer": "line", "searchAnalyzer": "lucene.keyword"},
            "words": {"type": "string", "analyzer": "words"},
            "uni": {"type": "string", "analyzer": "uni"},
        }},
    }, name="filtered"))
    wait_ready(coll, "filtered")

    def ids(query, path):
        return sorted(d["_id"] for d in search(
            coll, {"text": {"query": query, "path": path}}, index="filtered"))

    assert ids("fish and chips", "html") == [1]
    assert ids("amp", "html") == []  # the entity is decoded, the tag gone
    assert ids("hidden", "html") == [2]  # script content is not text
    assert ids("gem", "html") == [2]
    # regexSplit: whole pieces (reversed at index and query time alike).
    assert ids("red", "tags") == [1]
    assert ids("dark-red", "tags") == [2]
    assert ids("dark", "tags") == []
    # regexCaptureGroup: the second group of each match is the token.
    assert ids("1234", "phone") == [1]
    assert ids("555", "phone") == []
    # englishPossessive, then length 2..4, then o -> 0 (queries too).
    assert ids("Bob's", "words") == [1]
    assert ids("B0b", "words") == [1]
    assert ids("toy", "words") == [1]
    assert ids("cat", "words") == [1]
    assert ids("yy", "words") == [2]
    assert ids("x", "words") == [] and ids("zzzzzzz", "words") == []
    # icuNormalize: NFKC with case folding.
    assert ids("fine", "uni") == [1]
    assert ids("caf\u00e9", "uni") == [1]
    # Highlights are cut from the original text.
    got = search(coll, {"text": {"query": "chips", "path": "html"}, "highlight": {"path": "html"}},
                 {"$project": {"h": {"$meta": "searchHighlights"}}}, index="filtered")
    hits = [t["value"] for h in got[0]["h"] for t in h["texts"] if t["type"] == "hit"]
    assert hits == ["chips"], got


def test_synonyms_from_a_collection(client):
    """A synonym mapping read from a collection: `equivalent` words match
    each other, `explicit` inputs match their synonyms (not themselves);
    changes to the collection reach queries; misuse gets Atlas's refusals."""
    db = client.full_text
    db.drop_collection("syn_docs")
    db.drop_collection("syn_words")
    db.syn_words.insert_many([
        {"mappingType": "equivalent", "synonyms": ["car", "automobile", "motor vehicle"]},
        {"mappingType": "explicit", "input": ["beer"], "synonyms": ["ale", "lager"]},
    ])
    db.syn_docs.insert_many([
        {"_id": 1, "t": "a fast car"},
        {"_id": 2, "t": "the automobile museum"},
        {"_id": 3, "t": "motor vehicle registration"},
        {"_id": 4, "t": "cold lager"},
        {"_id": 5, "t": "beer garden"},
        {"_id": 6, "t": "vehicle parts"},
    ])
    db.syn_docs.create_search_index(SearchIndexModel({
        "mappings": {"dynamic": True},
        "synonyms": [{"name": "words", "analyzer": "lucene.standard",
                      "source": {"collection": "syn_words"}}],
    }, name="syn"))
    wait_ready(db.syn_docs, "syn")

    def ids(query, **extra):
        got = search(db.syn_docs, {"text": {"query": query, "path": "t", **extra}}, index="syn")
        return sorted(d["_id"] for d in got)

    assert ids("car", synonyms="words") == [1, 2, 3]
    assert ids("automobile", synonyms="words") == [1, 2, 3]
    assert ids("car") == [1]
    assert ids("beer", synonyms="words") == [4]  # explicit: ale or lager, not beer
    assert ids("lager", synonyms="words") == [4]
    # A phrase: each of its words may be any of its synonyms.
    phrase = search(db.syn_docs, {"phrase": {"query": "cold beer", "path": "t", "synonyms": "words"}},
                    index="syn")
    assert [d["_id"] for d in phrase] == [4]  # "cold lager"
    phrase = search(db.syn_docs, {"phrase": {"query": "fast automobile", "path": "t", "synonyms": "words"}},
                    index="syn")
    assert [d["_id"] for d in phrase] == [1]  # "a fast car"
    assert search(db.syn_docs, {"phrase": {"query": "fast automobile", "path": "t"}}, index="syn") == []
    meta = list(db.syn_docs.aggregate([{"$searchMeta": {
        "index": "syn", "text": {"query": "car", "path": "t", "synonyms": "words"},
        "count": {"type": "total"}}}]))
    assert meta == [{"count": {"total": 3}}]
    # The collection changes; the mapping follows.
    db.syn_words.insert_one({"mappingType": "equivalent", "synonyms": ["garden", "parts"]})
    eventually(lambda: ids("garden", synonyms="words") == [5, 6], timeout=30)
    for extra, message in (({"synonyms": "nope"}, "nope"),
                           ({"synonyms": "words", "fuzzy": {}}, "fuzzy")):
        with pytest.raises(OperationFailure) as e:
            ids("car", **extra)
        assert e.value.code == 2 and message in str(e.value)
    with pytest.raises(OperationFailure) as e:
        db.syn_docs.create_search_index(SearchIndexModel(
            {"mappings": {"dynamic": True}, "synonyms": [{"name": "x", "analyzer": "lucene.standard"}]},
            name="bad"))
    assert e.value.code == 72 and "source" in str(e.value)


def test_equals_in_range_and_exists_on_typed_fields(client):
    """Atlas's non-text field types and the operators that compare them,
    alone and as `compound` filters, each matching document scoring 1."""
    import datetime

    from bson import ObjectId

    coll = client.full_text.typed
    coll.drop()
    owner = ObjectId()
    day = lambda d: datetime.datetime(2026, 1, d, tzinfo=datetime.timezone.utc)
    coll.insert_many([
        {"_id": 1, "title": "red shoes", "price": 30, "sold": day(3), "stock": True,
         "owner": owner, "sku": "AB-1", "tags": ["new", "sale"]},
        {"_id": 2, "title": "red hat", "price": 12.5, "sold": day(5), "stock": False,
         "sku": "ab-2"},
        {"_id": 3, "title": "blue shoes", "price": 99, "sold": day(9), "stock": True,
         "sku": "AB-3", "extra": {"size": 42}},
    ])
    coll.create_search_index(SearchIndexModel(
        {"mappings": {"dynamic": False, "fields": {
            "title": {"type": "string"},
            "price": {"type": "number"},
            "sold": {"type": "date"},
            "stock": {"type": "boolean"},
            "owner": {"type": "objectId"},
            "sku": [{"type": "token", "normalizer": "lowercase"}, {"type": "string"}],
            "extra": {"type": "document", "fields": {"size": {"type": "number"}}}}}},
        name="typed"))
    wait_ready(coll, "typed")

    def ids(operator):
        got = search(coll, operator, {"$project": {"s": SCORE}}, index="typed")
        assert all(d["s"] == pytest.approx(1.0) for d in got), got
        return sorted(d["_id"] for d in got)

    assert ids({"equals": {"path": "price", "value": 30}}) == [1]
    assert ids({"equals": {"path": "price", "value": 30.0}}) == [1]
    assert ids({"equals": {"path": "stock", "value": False}}) == [2]
    assert ids({"equals": {"path": "owner", "value": owner}}) == [1]
    assert ids({"equals": {"path": "sold", "value": day(5)}}) == [2]
    assert ids({"equals": {"path": "sku", "value": "AB-2"}}) == [2]
    assert ids({"in": {"path": "price", "value": [12.5, 99]}}) == [2, 3]
    assert ids({"in": {"path": "sku", "value": ["ab-1", "AB-3", "zz"]}}) == [1, 3]
    assert ids({"range": {"path": "price", "gt": 12.5, "lte": 99}}) == [1, 3]
    assert ids({"range": {"path": "price", "lt": 30}}) == [2]
    assert ids({"range": {"path": "sold", "gte": day(4), "lt": day(9)}}) == [2]
    assert ids({"range": {"path": "extra.size", "gte": 40}}) == [3]
    assert ids({"exists": {"path": "owner"}}) == [1]
    assert ids({"exists": {"path": "extra"}}) == [3]
    # Unmapped paths are not indexed, so nothing exists there.
    assert ids({"exists": {"path": "tags"}}) == []
    # As filters: the text clause alone scores.
    got = search(coll, {"compound": {
        "must": [{"text": {"query": "shoes", "path": "title"}}],
        "filter": [{"equals": {"path": "stock", "value": True}},
                   {"range": {"path": "price", "lt": 50}}]}},
        {"$project": {"s": SCORE}}, index="typed")
    assert [d["_id"] for d in got] == [1]
    only_text = search(coll, {"text": {"query": "shoes", "path": "title"}},
                       {"$project": {"s": SCORE}}, index="typed")
    assert got[0]["s"] == pytest.approx(next(d["s"] for d in only_text if d["_id"] == 1))
    boosted = search(coll, {"equals": {"path": "price", "value": 30, "score": {"boost": {"value": 3}}}},
                     {"$project": {"s": SCORE}}, index="typed")
    assert boosted == [{"_id": 1, "s": pytest.approx(3.0)}]
    # Writes are compared at once.
    coll.update_one({"_id": 2}, {"$set": {"price": 31}})
    assert ids({"range": {"path": "price", "gt": 30, "lt": 32}}) == [2]


def test_embedded_documents_match_within_one_element(client, direct_uri):
    """`embeddedDocuments` fields and the `embeddedDocument` operator:
    every clause holds in one element of the array (like `$elemMatch`),
    the elements' scores combine by `score.embedded.aggregate`, and writes
    through the proxy or around it reach the elements."""
    coll = client.full_text.orders
    coll.drop()
    coll.insert_many([
        {"_id": 1, "customer": "ann", "items": [
            {"name": "red apple", "qty": 10}, {"name": "pear", "qty": 1}]},
        # An apple and a 10, but in different elements.
        {"_id": 2, "customer": "bob", "items": [
            {"name": "apple", "qty": 1}, {"name": "pear", "qty": 10}]},
        {"_id": 3, "customer": "cy", "items": [
            {"name": "apple", "qty": 7}, {"name": "green apple pie", "qty": 9}]},
        {"_id": 4, "customer": "di", "items": {"name": "apple", "qty": 20}},
        {"_id": 5, "customer": "apple", "items": []},
    ])
    coll.create_search_index(SearchIndexModel(
        {"mappings": {"dynamic": False, "fields": {
            "customer": {"type": "string"},
            "items": {"type": "embeddedDocuments", "dynamic": False, "fields": {
                "name": {"type": "string"}, "qty": {"type": "number"}}}}}},
        name="orders"))
    wait_ready(coll, "orders")

    def apples(at_least, **score):
        return {"embeddedDocument": {"path": "items", "operator": {"compound": {"must": [
            {"text": {"query": "apple", "path": "items.name"}},
            {"range": {"path": "items.qty", "gte": at_least}}]}}, **score}}

    def scored(operator, *later):
        got = search(coll, operator, {"$project": {"s": SCORE}}, *later, index="orders")
        return {d["_id"]: d["s"] for d in got}

    assert sorted(scored(apples(5))) == [1, 3, 4]
    # The elements' paths are searched only through embeddedDocument.
    assert scored({"text": {"query": "apple", "path": "items.name"}}) == {}
    assert sorted(scored({"text": {"query": "apple", "path": "customer"}})) == [5]
    best = scored(apples(5, score={"embedded": {"aggregate": "maximum"}}))
    worst = scored(apples(5, score={"embedded": {"aggregate": "minimum"}}))
    total = scored(apples(5))
    mean = scored(apples(5, score={"embedded": {"aggregate": "mean"}}))
    assert worst[3] < best[3]
    assert total[3] == pytest.approx(best[3] + worst[3], rel=1e-5)
    assert mean[3] == pytest.approx(total[3] / 2, rel=1e-5)
    # A single matching element scores the same under every aggregate.
    assert best[1] == pytest.approx(total[1], rel=1e-5) == pytest.approx(worst[1], rel=1e-5)
    boosted = scored(apples(5, score={"embedded": {"aggregate": "sum", "outerScore": {
        "boost": {"value": 2}}}}))
    assert boosted[3] == pytest.approx(2 * total[3], rel=1e-5)
    # Combined with a clause on the parent document, and counted.
    both = {"compound": {"must": [apples(5)], "filter": [
        {"text": {"query": "cy", "path": "customer"}}]}}
    assert list(scored(both)) == [3]
    meta = list(coll.aggregate([{"$searchMeta": {
        "index": "orders", **apples(1), "count": {"type": "total"}}}]))
    assert meta == [{"count": {"total": 4}}]
    # A write through the proxy is searched by the next query.
    coll.update_one({"_id": 2}, {"$set": {"items.1.name": "apple"}})
    assert sorted(scored(apples(5))) == [1, 2, 3, 4]
    coll.delete_one({"_id": 4})
    assert sorted(scored(apples(5))) == [1, 2, 3]
    # A write around the proxy arrives by the change stream.
    with MongoClient(direct_uri) as direct:
        direct.full_text.orders.update_one(
            {"_id": 5}, {"$push": {"items": {"name": "apple crumble", "qty": 50}}})
    eventually(lambda: sorted(scored(apples(5))) == [1, 2, 3, 5])
    # Refusals, MongoDB-shaped.
    with pytest.raises(OperationFailure) as e:
        search(coll, {"embeddedDocument": {"path": "customer", "operator": {
            "text": {"query": "x", "path": "customer.x"}}}}, index="orders")
    assert e.value.code == 2 and "embeddedDocuments" in str(e.value)
    with pytest.raises(OperationFailure) as e:
        search(coll, {"embeddedDocument": {"path": "items", "operator": {
            "text": {"query": "x", "path": "customer"}}}}, index="orders")
    assert e.value.code == 2 and "not under 'items'" in str(e.value)
    with pytest.raises(OperationFailure) as e:
        search(coll, apples(1, score={"embedded": {"aggregate": "median"}}), index="orders")
    assert e.value.code == 2 and "median" in str(e.value)
    with pytest.raises(OperationFailure) as e:
        coll.create_search_index(SearchIndexModel(
            {"mappings": {"fields": {"items": {"type": "embeddedDocuments", "fields": {
                "parts": {"type": "embeddedDocuments"}}}}}}, name="nested"))
    assert e.value.code == 72 and "embeddedDocuments inside" in str(e.value)


def test_sort_orders_matches_by_fields_then_score(client):
    """`$search`'s `sort`: by number, date and token fields (missing values
    lowest, arrays by their least value ascending, greatest descending),
    by score, and ties by score."""
    import datetime

    coll = client.full_text.sorted
    coll.drop()
    day = lambda d: datetime.datetime(2026, 3, d, tzinfo=datetime.timezone.utc)
    coll.insert_many([
        {"_id": 1, "t": "red apple", "price": 5, "at": day(3), "brand": "b"},
        {"_id": 2, "t": "red red cherry", "price": 2, "at": day(1), "brand": "a"},
        {"_id": 3, "t": "red plum", "price": [9, 1], "at": day(2), "brand": "c"},
        {"_id": 4, "t": "red pear", "at": day(4)},
        {"_id": 5, "t": "green fig", "price": 0, "at": day(5), "brand": "a"},
    ])
    coll.create_search_index(SearchIndexModel(
        {"mappings": {"dynamic": True, "fields": {"brand": {"type": "token"}}}}, name="sorted"))
    wait_ready(coll, "sorted")

    def order(sort, *later):
        got = search(coll, {"text": {"query": "red", "path": "t"}, "sort": sort}, *later,
                     index="sorted")
        return [d["_id"] for d in got]

    assert order({"price": 1}) == [4, 3, 2, 1]
    assert order({"price": -1}) == [3, 1, 2, 4]
    assert order({"at": -1}) == [4, 1, 3, 2]
    assert order({"brand": 1, "price": -1}) == [4, 2, 1, 3]
    # By score: "red red cherry" scores highest; equal keys fall back to score.
    by_score = order({"score": {"$meta": "searchScore"}})
    assert by_score[0] == 2
    assert order({"score": {"$meta": "searchScore", "order": 1}})[-1] == 2
    assert order({"price": 1}, {"$limit": 2}) == [4, 3]


def test_return_stored_source_returns_the_stored_fields(client):
    """`storedSource` in the definition (`include`, `exclude`, `true`,
    absent) decides which fields `returnStoredSource: true` gives back:
    `_id` always; everything else of the document only where stored."""
    coll = client.full_text.stored
    coll.drop()
    coll.insert_many([
        {"_id": 1, "title": "red apple", "price": 5, "meta": {"a": 1, "b": 2}, "secret": "x"},
        {"_id": 2, "title": "red cherry", "price": 2, "meta": {"a": 3, "b": 4}, "secret": "y"},
    ])
    definitions = {
        "incl": {"include": ["title", "meta.a"]},
        "excl": {"exclude": ["secret", "meta.b"]},
        "all": True,
        "none": None,
    }
    for name, stored in definitions.items():
        definition = {"mappings": {"dynamic": True}}
        if stored is not None:
            definition["storedSource"] = stored
        coll.create_search_index(SearchIndexModel(definition, name=name))
    for name in definitions:
        wait_ready(coll, name)

    def stored(name, *later):
        return search(coll, {"text": {"query": "red", "path": "title"}, "returnStoredSource": True,
                             "sort": {"price": 1}}, *later, index=name)

    assert stored("incl") == [{"_id": 2, "title": "red cherry", "meta": {"a": 3}},
                              {"_id": 1, "title": "red apple", "meta": {"a": 1}}]
    assert stored("excl") == [{"_id": 2, "title": "red cherry", "price": 2, "meta": {"a": 3}},
                              {"_id": 1, "title": "red apple", "price": 5, "meta": {"a": 1}}]
    assert stored("all") == list(coll.find({}, sort=[("price", 1)]))
    assert stored("none") == [{"_id": 2}, {"_id": 1}]
    # Later stages see the stored fields only; without the option, whole documents.
    assert stored("incl", {"$project": {"price": 1, "title": 1}}) == [
        {"_id": 2, "title": "red cherry"}, {"_id": 1, "title": "red apple"}]
    assert search(coll, {"text": {"query": "apple", "path": "title"}}, index="incl")[0]["secret"] == "x"
    with pytest.raises(OperationFailure) as e:
        coll.create_search_index(SearchIndexModel(
            {"mappings": {"dynamic": True}, "storedSource": {"include": ["a"], "exclude": ["b"]}},
            name="both"))
    assert e.value.code == 72 and "storedSource" in str(e.value)


def test_autocomplete_matches_word_prefixes(client):
    """`autocomplete` fields (edge grams of each word, lower-cased, folded)
    and the `autocomplete` operator: `tokenOrder` any and sequential,
    `fuzzy`, a static mapping also indexing the path as a string."""
    coll = client.full_text.titles
    coll.drop()
    coll.insert_many([
        {"_id": 1, "title": "MongoDB Manual"},
        {"_id": 2, "title": "Manual of Monsters"},
        {"_id": 3, "title": "Café Society"},
        {"_id": 4, "title": "monitoring mongo"},
    ])
    coll.create_search_index(SearchIndexModel(
        {"mappings": {"dynamic": False, "fields": {"title": [
            {"type": "autocomplete", "minGrams": 2, "maxGrams": 10},
            {"type": "string"}]}}}, name="complete"))
    wait_ready(coll, "complete")

    def ids(query, **options):
        got = search(coll, {"autocomplete": {"query": query, "path": "title", **options}},
                     index="complete")
        return sorted(d["_id"] for d in got)

    assert ids("mon") == [1, 2, 4]
    assert ids("mongo") == [1, 4]
    assert ids("MANU") == [1, 2]
    assert ids("cafe") == [3]  # diacritics folded
    assert ids("m") == []  # shorter than minGrams
    # Any word order, or the query's words in order.
    assert ids("manu mong") == [1, 2, 4]
    assert ids("mongo manu", tokenOrder="sequential") == [1]
    assert ids("mongo monit", tokenOrder="sequential") == []
    assert ids("mnual", fuzzy={"maxEdits": 1}) == [1, 2]
    # The same path as a string still works.
    assert [d["_id"] for d in search(coll, {"text": {"query": "society", "path": "title"}},
                                     index="complete")] == [3]
    with pytest.raises(OperationFailure) as e:
        search(coll, {"autocomplete": {"query": "x", "path": "other"}}, index="complete")
    assert e.value.code == 2 and "autocomplete field" in str(e.value)


def test_search_meta_counts_and_facets(client):
    """`$searchMeta`: `count` and string, number and date facets over an
    operator's matches (or every document), computed here by hand."""
    import datetime

    coll = client.full_text.shop
    coll.drop()
    when = lambda m: datetime.datetime(2026, m, 1, tzinfo=datetime.timezone.utc)
    items = [
        {"_id": 1, "title": "red shoes", "brand": "acme", "price": 30, "added": when(1)},
        {"_id": 2, "title": "red hat", "brand": "zeta", "price": 12.5, "added": when(2)},
        {"_id": 3, "title": "blue shoes", "brand": "acme", "price": 99, "added": when(6)},
        {"_id": 4, "title": "red socks", "brand": ["acme", "bolt"], "price": 5, "added": when(7)},
        {"_id": 5, "title": "green shirt", "brand": "bolt", "price": 250, "added": when(11)},
    ]
    coll.insert_many(items)
    coll.create_search_index(SearchIndexModel(
        {"mappings": {"dynamic": True, "fields": {"brand": {"type": "token"}}}}, name="shop"))
    wait_ready(coll, "shop")

    def meta(spec, *later):
        return list(coll.aggregate([{"$searchMeta": {"index": "shop", **spec}}, *later]))

    red = {"text": {"query": "red", "path": "title"}}
    assert meta(red) == [{"count": {"lowerBound": 3}}]
    assert meta({**red, "count": {"type": "total"}}) == [{"count": {"total": 3}}]
    got = meta({"facet": {"operator": red, "facets": {
        "brands": {"type": "string", "path": "brand"},
        "prices": {"type": "number", "path": "price", "boundaries": [0, 10, 50],
                   "default": "other"},
        "months": {"type": "date", "path": "added", "boundaries": [when(1), when(4), when(12)]},
    }}})
    assert got == [{"count": {"lowerBound": 3}, "facet": {
        # acme: 1 and 4; zeta: 2; bolt: 4. Most frequent first, then by value.
        "brands": {"buckets": [{"_id": "acme", "count": 2}, {"_id": "bolt", "count": 1},
                               {"_id": "zeta", "count": 1}]},
        "prices": {"buckets": [{"_id": 0, "count": 1}, {"_id": 10, "count": 2},
                               {"_id": "other", "count": 0}]},
        "months": {"buckets": [{"_id": when(1).replace(tzinfo=None), "count": 2},
                               {"_id": when(4).replace(tzinfo=None), "count": 1}]},
    }}]
    # Without an operator: every document; later stages run on the result.
    everything = meta({"facet": {"facets": {
        "brands": {"type": "string", "path": "brand", "numBuckets": 1}}}},
        {"$project": {"top": "$facet.brands.buckets", "n": "$count.lowerBound"}})
    assert everything == [{"top": [{"_id": "acme", "count": 3}], "n": 5}]
    assert list(coll.aggregate([{"$searchMeta": {"index": "missing", **red}}])) == [
        {"count": {"lowerBound": 0}}]
    with pytest.raises(OperationFailure) as e:
        meta({"facet": {"facets": {"x": {"type": "number", "path": "price",
                                         "boundaries": [10, 5]}}}})
    assert e.value.code == 2 and "ascending" in str(e.value)


def test_highlights_mark_the_searched_terms(articles):
    """`highlight` and `{$meta: "searchHighlights"}`: per highlighted path,
    passages holding the query's terms as the path's analyzer finds them,
    hits marked, in Atlas's shape."""
    got = search(articles, {"text": {"query": "fox dogs", "path": ["title", "body"]},
                            "highlight": {"path": ["title", "body"]}},
                 {"$project": {"h": {"$meta": "searchHighlights"}}})
    by_id = {d["_id"]: d["h"] for d in got}
    assert set(by_id) == {1, 2, 3}
    # "a fox and another fox met a dog": both foxes are hits ("dog" is not "dogs").
    body_2 = [h for h in by_id[2] if h["path"] == "body"]
    assert body_2 == [{"path": "body", "score": 2.0, "texts": [
        {"value": "a ", "type": "text"}, {"value": "fox", "type": "hit"},
        {"value": " and another ", "type": "text"}, {"value": "fox", "type": "hit"},
        {"value": " met a dog", "type": "text"}]}]
    title_3 = [h for h in by_id[3] if h["path"] == "title"]
    assert title_3[0]["texts"][0] == {"value": "Dogs", "type": "hit"}
    # Only the paths asked for.
    only_title = search(articles, {"text": {"query": "fox", "path": ["title", "body"]},
                                   "highlight": {"path": "title"}},
                        {"$project": {"h": {"$meta": "searchHighlights"}}})
    assert all(h["path"] == "title" for d in only_title for h in d["h"])
    with pytest.raises(OperationFailure) as e:
        search(articles, {"text": {"query": "fox", "path": "title"}},
               {"$project": {"h": {"$meta": "searchHighlights"}}})
    assert e.value.code == 40218


def test_score_details_explain_each_score(articles):
    """`scoreDetails: true` gives `{$meta: "searchScoreDetails"}`: Lucene's
    explanation tree, its top value the document's `searchScore`, a term's
    value the product of its idf and tf factors (BM25 as worked out here)."""
    got = search(articles, {"text": {"query": "fox", "path": "title"}, "scoreDetails": True},
                 {"$project": {"score": SCORE, "details": {"$meta": "searchScoreDetails"}}})
    want = bm25("title", "fox")
    assert sorted(d["_id"] for d in got) == sorted(want)

    def nodes(tree):
        yield tree
        for child in tree["details"]:
            yield from nodes(child)

    for d in got:
        details = d["details"]
        assert details["value"] == d["score"]
        assert set(details) == {"value", "description", "details"}
        terms = [n for n in nodes(details) if n["description"].startswith("TermQuery")]
        assert len(terms) == 1
        term = terms[0]
        assert term["value"] == pytest.approx(want[d["_id"]], rel=1e-5)
        factors = [n["value"] for n in term["details"]]
        assert len(factors) == 2 and factors[0] * factors[1] == pytest.approx(term["value"], rel=1e-5)
        df = sum(1 for x in DOCS if "fox" in tokens(x["title"]))
        assert factors[0] == pytest.approx(math.log(1 + (len(DOCS) - df + 0.5) / (df + 0.5)), rel=1e-5)
    # A compound sums its clauses' explanations.
    got = search(articles, {"compound": {"should": [{"text": {"query": "fox", "path": "title"}},
                                                    {"text": {"query": "dog", "path": "body"}}]},
                            "scoreDetails": True},
                 {"$project": {"score": SCORE, "details": {"$meta": "searchScoreDetails"}}})
    both = [d for d in got if len(d["details"]["details"]) == 2]
    assert both, got
    for d in both:
        assert sum(c["value"] for c in d["details"]["details"]) == pytest.approx(d["score"], rel=1e-5)
    with pytest.raises(OperationFailure) as e:
        search(articles, {"text": {"query": "fox", "path": "title"}},
               {"$project": {"details": {"$meta": "searchScoreDetails"}}})
    assert e.value.code == 40218 and "searchScoreDetails" in str(e.value)


def test_search_meta_variable_after_search(articles):
    """`$$SEARCH_META` in later stages: the count of all matches (Atlas's
    pagination shape), `total` when asked, `lowerBound` by default."""
    fox = {"text": {"query": "fox", "path": ["title", "body"]}}
    matches = len(search(articles, fox))
    assert matches >= 2
    page = search(articles, {**fox, "count": {"type": "total"}}, {"$limit": 1},
                  {"$facet": {"docs": [{"$project": {"_id": 1}}],
                              "meta": [{"$replaceWith": "$$SEARCH_META"}, {"$limit": 1}]}})
    assert page[0]["meta"] == [{"count": {"total": matches}}]
    assert len(page[0]["docs"]) == 1
    got = search(articles, fox, {"$project": {"n": "$$SEARCH_META.count.lowerBound"}})
    assert {d["n"] for d in got} == {matches}


def test_refusals_are_mongodb_shaped(articles, client):
    with pytest.raises(OperationFailure) as e:
        search(articles, {"near": {"path": "n", "origin": 1, "pivot": 1}})
    assert e.value.code == 2 and "'near'" in str(e.value)
    with pytest.raises(OperationFailure) as e:
        list(articles.aggregate([{"$match": {}}, {"$search": {"text": {"query": "a", "path": "b"}}}]))
    assert e.value.code == 40602
    with pytest.raises(OperationFailure) as e:
        client.full_text.articles.create_search_index(SearchIndexModel(
            {"mappings": {"dynamic": True}, "analyzer": "lucene.klingon"}, name="bad"))
    assert e.value.code == 72 and "lucene.klingon" in str(e.value)
    with pytest.raises(OperationFailure) as e:
        list(articles.aggregate([{"$vectorSearch": {
            "index": "default", "path": "v", "queryVector": [1.0], "limit": 1, "numCandidates": 1}}]))
    assert e.value.code == 2 and "search index" in str(e.value)
    with pytest.raises(OperationFailure) as e:
        client.full_text.command({"updateSearchIndex": "articles", "name": "default", "definition": {
            "fields": [{"type": "vector", "path": "v", "numDimensions": 2, "similarity": "cosine"}]}})
    assert e.value.code == 72 and "cannot change its type" in str(e.value)
    with pytest.raises(OperationFailure) as e:
        search(articles, {"text": {"query": " ".join(["w"] * 2000), "path": "title"}})
    assert e.value.code == 2 and "1024" in str(e.value)
    # The connection is still good.
    assert articles.count_documents({}) == len(DOCS)


def test_a_restarted_proxy_loads_the_snapshot_and_catches_up(direct_uri, tmp_path):
    """Full-text indexes are snapshotted under --data-dir like vector ones:
    a restarted proxy serves from the snapshot (no rebuild) and catches up
    from the change stream with writes made while it was down; a damaged
    snapshot is rebuilt from the upstream, and said so."""
    import signal

    from conftest import eventually, start_proxy

    def start():
        proxy = start_proxy(direct_uri, "--data-dir", str(tmp_path / "state"), log_level="info")
        client = MongoClient(f"mongodb://{proxy.address}/")
        return proxy, client, client.full_text_restart.notes

    def stop(proxy, client):
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(timeout=30) == 0
        client.close()

    def words(notes, word):
        return sorted(str(d["_id"]) for d in search(
            notes, {"text": {"query": word, "path": "t"}}, {"$limit": 100}, index="notes"))

    with MongoClient(direct_uri) as direct:
        direct.likewise.search_indexes.delete_many({"db": "full_text_restart"})
        direct.full_text_restart.notes.drop()
        direct.full_text_restart.notes.insert_many(
            [{"_id": i, "t": f"note {i}", "n": i} for i in range(50)])
        proxy, client, notes = start()
        notes.create_search_index(SearchIndexModel({"mappings": {"dynamic": True}}, name="notes"))
        wait_ready(notes, "notes")
        notes.delete_one({"_id": 7})
        stop(proxy, client)
        snapshots = list((tmp_path / "state" / "indexes").glob("*.snapshot"))
        assert snapshots
        direct.full_text_restart.notes.insert_one({"_id": "late", "t": "written while down"})
        direct.full_text_restart.notes.update_one({"_id": 8}, {"$set": {"t": "edited while down"}})
        proxy, client, notes = start()
        try:
            proxy.wait_for_line("loaded from its snapshot")
            info, _ = wait_ready(notes, "notes")
            assert info["progress"]["restoredFromSnapshot"] is True
            eventually(lambda: words(notes, "down") == ["8", "late"])
            assert len(words(notes, "note")) == 48
            got = search(notes, {"range": {"path": "n", "gte": 45}}, index="notes")
            assert sorted(d["_id"] for d in got) == [45, 46, 47, 48, 49]
        finally:
            stop(proxy, client)
        # A damaged snapshot: rebuilt from the upstream.
        for snapshot in snapshots:
            raw = bytearray(snapshot.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            snapshot.write_bytes(bytes(raw))
        proxy, client, notes = start()
        try:
            proxy.wait_for_line("snapshot unusable: rebuilding from the upstream")
            wait_ready(notes, "notes")
            assert words(notes, "down") == ["8", "late"]
            assert len(words(notes, "note")) == 48
        finally:
            client.close()
            proxy.stop()
            direct.likewise.search_indexes.delete_many({"db": "full_text_restart"})

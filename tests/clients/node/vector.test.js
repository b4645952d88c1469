// The Node driver's search-index helpers and $vectorSearch through the proxy.
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { MongoClient } = require('mongodb');

const uri = process.env.LIKEWISE_URI;
assert.ok(uri, 'LIKEWISE_URI must name the proxy');
let client;
let coll;

async function waitReady(name) {
  const deadline = Date.now() + 120000;
  for (;;) {
    const [info] = await coll.listSearchIndexes(name).toArray();
    assert.ok(info, 'index listed');
    if (info.status === 'READY') return info;
    assert.ok(Date.now() < deadline, 'index never became READY');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

before(async () => {
  client = new MongoClient(uri);
  await client.connect();
  coll = client.db('node_vector').collection('items');
  await coll.drop().catch(() => {});
  const docs = Array.from({ length: 400 }, (_, i) => ({ _id: i, v: [Math.cos(i), Math.sin(i)], band: i % 4 }));
  await coll.insertMany(docs);
});

after(async () => {
  await client.db('node_vector').dropDatabase();
  await client.close();
});

test('createSearchIndex, listSearchIndexes, $vectorSearch, dropSearchIndex', async () => {
  const name = await coll.createSearchIndex({
    name: 'circle',
    type: 'vectorSearch',
    definition: { fields: [{ type: 'vector', path: 'v', numDimensions: 2, similarity: 'cosine' }] },
  });
  assert.strictEqual(name, 'circle');
  const info = await waitReady('circle');
  assert.strictEqual(info.queryable, true);

  const out = await coll.aggregate([
    { $vectorSearch: { index: 'circle', path: 'v', queryVector: [1, 0], numCandidates: 100, limit: 5, filter: { band: 0 } } },
    { $project: { band: 1, score: { $meta: 'vectorSearchScore' } } },
  ]).toArray();
  assert.strictEqual(out.length, 5);
  assert.ok(out.every((d) => d.band === 0));
  assert.strictEqual(out[0]._id, 0); // cos(0) = 1: the query itself
  assert.ok(Math.abs(out[0].score - 1) < 1e-6);

  const like = await coll.find({ $like: { vector: [1, 0], n: 3 } }).toArray();
  assert.strictEqual(like.length, 3);

  await coll.dropSearchIndex('circle');
  assert.deepStrictEqual(await coll.listSearchIndexes().toArray(), []);
});

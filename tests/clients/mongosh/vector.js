// mongosh's own search-index helpers and $vectorSearch through the proxy.
//   mongosh --quiet mongodb://127.0.0.1:PORT/ --file vector.js
const assert = require('assert');
let checks = 0;
function check(name, fn) {
  fn();
  checks += 1;
  print(`ok ${checks} - ${name}`);
}
function same(actual, expected) {
  assert.strictEqual(JSON.stringify(actual), JSON.stringify(expected));
}
// Polls getSearchIndexes until READY (bounded), as a user would.
function waitReady(coll, name) {
  const deadline = Date.now() + 120000;
  for (;;) {
    const found = coll.getSearchIndexes(name);
    assert.strictEqual(found.length, 1);
    if (found[0].status === 'READY') return found[0];
    assert.ok(['PENDING', 'BUILDING'].includes(found[0].status), found[0].status);
    assert.ok(Date.now() < deadline, 'index never became READY');
    sleep(50);
  }
}

const t = db.getSiblingDB('mongosh_vector');
t.dropDatabase();
const docs = [];
for (let i = 0; i < 500; i++) docs.push({ _id: i, v: [i % 17, (i * 7) % 13, 1], kind: i % 2 ? 'odd' : 'even' });
t.items.insertMany(docs);

check('createSearchIndex and getSearchIndexes', () => {
  t.items.createSearchIndex('vec', 'vectorSearch', {
    fields: [
      { type: 'vector', path: 'v', numDimensions: 3, similarity: 'euclidean' },
      { type: 'filter', path: 'kind' },
    ],
  });
  const info = waitReady(t.items, 'vec');
  assert.strictEqual(info.type, 'vectorSearch');
  assert.strictEqual(info.progress.vectorsIndexed, 500);
});

check('$vectorSearch with filter and score', () => {
  const out = t.items.aggregate([
    { $vectorSearch: { index: 'vec', path: 'v', queryVector: [3, 4, 1], numCandidates: 50, limit: 3, filter: { kind: 'odd' } } },
    { $project: { kind: 1, score: { $meta: 'vectorSearchScore' } } },
  ]).toArray();
  assert.strictEqual(out.length, 3);
  out.forEach((d) => assert.strictEqual(d.kind, 'odd'));
  assert.ok(out[0].score >= out[1].score && out[1].score >= out[2].score);
});

check('find with $like and getMore across small batches', () => {
  const ids = t.items.find({ $like: { _id: 10, n: 6 }, kind: 'even' }, { _id: 1 }).batchSize(2).toArray().map((d) => d._id);
  assert.strictEqual(ids.length, 6);
  assert.strictEqual(ids[0], 10);
});

check('errors are MongoDB errors; an index that does not exist finds nothing', () => {
  let code;
  try {
    t.items.aggregate([{ $vectorSearch: { index: 'vec', path: 'v', queryVector: [1, 2], numCandidates: 5, limit: 1 } }]).toArray();
  } catch (e) {
    code = e.code;
  }
  assert.strictEqual(code, 2); // wrong dimensions
  // As Atlas answers: no documents, no error.
  same(t.items.aggregate([{ $vectorSearch: { index: 'nope', path: 'v', queryVector: [1, 2, 3], numCandidates: 5, limit: 1 } }]).toArray().length, 0);
});

check('dropSearchIndex', () => {
  t.items.dropSearchIndex('vec');
  same(t.items.getSearchIndexes().length, 0);
});

t.dropDatabase();
print(`MONGOSH VECTOR OK ${checks} checks`);

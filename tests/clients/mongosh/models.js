// From mongosh only: register the built-in text model, load real text
// (Debian package descriptions, pinned in tests/fixtures/debian), create a
// semantic index over it and ask for neighbours by meaning.
//   mongosh --quiet mongodb://127.0.0.1:PORT/ --file models.js
const assert = require('assert');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');
let checks = 0;
function check(name, fn) {
  fn();
  checks += 1;
  print(`ok ${checks} - ${name}`);
}

const t = db.getSiblingDB('mongosh_models');
t.dropDatabase();

// Every 20th package of the pinned Debian 12 corpus (tests/fixtures/debian),
// so the corpus spans the whole archive and is the same on every machine.
const fixture = path.join(__dirname, '..', '..', 'fixtures', 'debian', 'summaries.tsv.gz');
const raw = fs.readFileSync(fixture);
assert.strictEqual(crypto.createHash('sha256').update(raw).digest('hex'),
  '81b9cc1989e968d88e9aa1a7e6da1a7873e4c1788f88d6ce0b150f3cd011507c', 'not the pinned corpus');
const packages = zlib.gunzipSync(raw).toString('utf8')
  .split('\n')
  .filter((line, i) => line && i % 20 === 0)
  .map((line) => {
    const [name, section, summary] = line.split('\t');
    return { _id: name, description: summary, section };
  });
assert.ok(packages.length >= 2000, `only ${packages.length} packages`);
t.packages.insertMany(packages);

check('createModel registers the local MiniLM model', () => {
  const reply = t.runCommand({ createModel: 'minilm', kind: 'text' });
  assert.strictEqual(reply.ok, 1);
  assert.strictEqual(reply.model.dimensions, 384);
  const listed = t.runCommand({ listModels: 1 }).models.map((m) => m._id);
  assert.ok(listed.includes('minilm'), JSON.stringify(listed));
});

check('createSemanticIndex builds over the descriptions', () => {
  const reply = t.runCommand({
    createSemanticIndex: 'packages', name: 'desc', models: ['minilm'], keys: ['description'], measure: 'css',
  });
  assert.strictEqual(reply.ok, 1);
  const deadline = Date.now() + 600000;
  for (;;) {
    const [info] = t.packages.getSearchIndexes('desc');
    if (info.status === 'READY') {
      assert.strictEqual(info.progress.vectorsIndexed, packages.length);
      break;
    }
    assert.ok(['PENDING', 'BUILDING'].includes(info.status), info.status);
    assert.ok(Date.now() < deadline, 'index never became READY');
    sleep(200);
  }
});

check('find with $like by text returns neighbours by meaning', () => {
  const hits = t.packages
    .find({ $like: { document: { description: 'spreadsheet and word processor for the office' }, n: 5 } })
    .toArray();
  assert.strictEqual(hits.length, 5);
  // Measured on the pinned corpus: 5 of 5 are office suites or spreadsheets;
  // asserts at least one.
  const text = hits.map((h) => h.description.toLowerCase());
  assert.ok(text.some((d) => /office|spreadsheet|word processor|document/.test(d)), JSON.stringify(text));
});

check('$like with an exact filter keeps k and the filter', () => {
  const hits = t.packages
    .find({ $like: { document: { description: 'play chess against the computer' }, n: 5 }, section: 'games' })
    .toArray();
  // 65 of the 2,996 packages are games: k results, all of them games.
  // Measured: two chess programs come first; asserts one of
  // them in the top 5.
  assert.strictEqual(hits.length, 5);
  assert.ok(hits.every((h) => h.section === 'games'));
  assert.ok(hits.some((h) => /chess/i.test(h.description)), JSON.stringify(hits.map((h) => h.description)));
});

check('$vectorSearch with query text agrees with $like', () => {
  const text = 'compress and decompress archives';
  const viaSearch = t.packages.aggregate([
    { $vectorSearch: { index: 'desc', path: 'description', query: { text }, numCandidates: 100, limit: 3 } },
  ]).toArray().map((d) => d._id);
  const viaLike = t.packages.find({ $like: { document: { description: text }, n: 3 } }).toArray().map((d) => d._id);
  assert.strictEqual(JSON.stringify(viaSearch), JSON.stringify(viaLike));
});

check('a model in use cannot be dropped', () => {
  let refused = null;
  try {
    t.runCommand({ dropModel: 'minilm' });
  } catch (e) {
    refused = e;
  }
  assert.ok(refused && refused.code === 314, String(refused));
});

print(`MONGOSH MODELS OK ${checks} checks`);

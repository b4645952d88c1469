// From mongosh only: fine-tune the built-in text model on real text
// (package names as queries against their long descriptions, pinned in
// tests/fixtures/debian), watch the run in $listSearchIndexes, and find the
// model version it made in listModels.
//   mongosh --quiet mongodb://127.0.0.1:PORT/ --file fine_tune.js
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

const t = db.getSiblingDB('mongosh_fine_tune');
t.dropDatabase();

// Every 13th described package of the pinned corpus: 300 documents.
const fixture = path.join(__dirname, '..', '..', 'fixtures', 'debian', 'descriptions.jsonl.gz');
const raw = fs.readFileSync(fixture);
assert.strictEqual(crypto.createHash('sha256').update(raw).digest('hex'),
  '7c8bcf962465054d2003b97722c090c280d812fa52f41f22489d656cef7cfcf8', 'not the pinned corpus');
const docs = zlib.gunzipSync(raw).toString('utf8')
  .split('\n')
  .filter((line) => line)
  .map((line) => JSON.parse(line))
  .filter((row, i) => i % 13 === 0)
  .slice(0, 300)
  .map((row) => ({ _id: row._id, name: row._id, text: row.text }));
assert.strictEqual(docs.length, 300);
t.packages.insertMany(docs);
t.runCommand({ createModel: 'minilm', kind: 'text' });

check('createSemanticIndex accepts fineTune', () => {
  const reply = t.runCommand({
    createSemanticIndex: 'packages', name: 'names', models: ['minilm', 'minilm'], keys: ['text', 'name'],
    measure: 'dot', loss: 'ranking', metrics: ['r@1', 'mrr'],
    splitter: { kind: 'fields', query: 'name', item: 'text' }, validation: { fraction: 0.2 },
    train: { fineTune: true, layers: 1, epochs: 1, batchSize: 16, learningRate: 0.0001, maxTokens: 32 },
  });
  assert.strictEqual(reply.ok, 1);
});

let info = null;
check('the listing follows the run to the swap', () => {
  const phases = [];
  const deadline = Date.now() + 240000;
  for (;;) {
    [info] = t.packages.getSearchIndexes('names');
    assert.ok(!info.training || !info.training.error, JSON.stringify(info.training));
    const fine = info.training && info.training.fineTune;
    if (fine && phases[phases.length - 1] !== fine.phase) phases.push(fine.phase);
    if (info.status === 'READY' && fine && fine.phase === 'done') break;
    assert.ok(['PENDING', 'BUILDING', 'TRAINING', 'READY'].includes(info.status), info.status);
    assert.ok(Date.now() < deadline, `no swap: ${JSON.stringify(phases)}`);
    sleep(100);
  }
  assert.strictEqual(phases[phases.length - 1], 'done');
  assert.strictEqual(info.training.fineTune.step, info.training.fineTune.steps);
  assert.ok(info.metrics.before['r@1'] >= 0 && info.metrics.after['r@1'] >= 0, JSON.stringify(info.metrics));
});

check('listModels shows the version and its parent', () => {
  const version = info.training.fineTune.modelVersion;
  assert.strictEqual(version, 'minilm@names-v1');
  const [model] = t.runCommand({ listModels: 1 }).models.filter((m) => m._id === version);
  assert.strictEqual(model.parent, 'minilm');
  assert.strictEqual(model.trainedBy.index, 'mongosh_fine_tune.packages.names');
  assert.strictEqual(JSON.stringify(model.usedBy), JSON.stringify(['mongosh_fine_tune.packages.names']));
});

check('$like answers with the fine-tuned version', () => {
  const hits = t.packages.find({ $like: { document: { name: docs[0].name }, n: 5 } }).toArray();
  assert.strictEqual(hits.length, 5);
});

print(`MONGOSH FINE-TUNE OK ${checks} checks`);

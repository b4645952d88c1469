// From mongosh only: register the built-in text model, load real text
// (Debian package descriptions from `apt-cache dumpavail`), create a
// semantic index over it and ask for neighbours by meaning.
//   mongosh --quiet mongodb://127.0.0.1:PORT/ --file models.js
const assert = require('assert');
const { execFileSync } = require('child_process');
let checks = 0;
function check(name, fn) {
  fn();
  checks += 1;
  print(`ok ${checks} - ${name}`);
}

const t = db.getSiblingDB('mongosh_models');
t.dropDatabase();

// Every 20th package, so the corpus spans the whole archive.
const dump = execFileSync('apt-cache', ['dumpavail'], { maxBuffer: 1 << 30 }).toString();
const packages = [];
const seen = new Set();
dump.split('\n\n').forEach((block, i) => {
  const name = /^Package: (.*)$/m.exec(block);
  const summary = /^Description: (.*)$/m.exec(block);
  const section = /^Section: (.*)$/m.exec(block);
  if (i % 20 === 0 && name && summary && !seen.has(name[1])) {
    seen.add(name[1]);
    packages.push({ _id: name[1], description: summary[1], section: section ? section[1] : 'misc' });
  }
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
  const text = hits.map((h) => h.description.toLowerCase());
  assert.ok(text.some((d) => /office|spreadsheet|word processor|document/.test(d)), JSON.stringify(text));
});

check('$like with an exact filter keeps k and the filter', () => {
  const hits = t.packages
    .find({ $like: { document: { description: 'play chess against the computer' }, n: 5 }, section: 'games' })
    .toArray();
  assert.strictEqual(hits.length, 5);
  assert.ok(hits.every((h) => h.section === 'games'));
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

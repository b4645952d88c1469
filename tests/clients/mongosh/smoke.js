// mongosh, unmodified, through the proxy. Run as:
//   mongosh --quiet mongodb://127.0.0.1:PORT/ --file smoke.js
// Any failed assertion exits non-zero; the last line says how many checks ran.
const assert = require('assert');
let checks = 0;
// Values from the shell live in another realm: compare their JSON.
function same(actual, expected) {
  assert.strictEqual(JSON.stringify(actual), JSON.stringify(expected));
}
function check(name, fn) {
  fn();
  checks += 1;
  print(`ok ${checks} - ${name}`);
}

const t = db.getSiblingDB('mongosh_smoke');
t.dropDatabase();

check('hello presents a router', () => {
  const hello = db.hello();
  assert.strictEqual(hello.msg, 'isdbgrid');
  assert.strictEqual(hello.setName, undefined);
  assert.ok(hello.logicalSessionTimeoutMinutes > 0);
});

check('insertMany and countDocuments', () => {
  const docs = [];
  for (let i = 0; i < 5000; i++) docs.push({ _id: i, g: i % 10, s: 'v' + i });
  assert.strictEqual(Object.keys(t.c.insertMany(docs).insertedIds).length, 5000);
  assert.strictEqual(t.c.countDocuments({}), 5000);
});

check('find with filter, projection, sort, skip, limit', () => {
  const got = t.c.find({ g: 4 }, { s: 1 }).sort({ _id: -1 }).skip(1).limit(3).toArray();
  same(got.map((d) => d._id), [4984, 4974, 4964]);
  same(Object.keys(got[0]).sort(), ['_id', 's']);
});

check('cursor iteration across getMores', () => {
  let n = 0;
  t.c.find().batchSize(7).forEach(() => { n += 1; });
  assert.strictEqual(n, 5000);
});

check('aggregate and distinct', () => {
  const out = t.c.aggregate([{ $group: { _id: '$g', n: { $sum: 1 } } }, { $sort: { _id: 1 } }]).toArray();
  assert.strictEqual(out.length, 10);
  assert.strictEqual(out[0].n, 500);
  assert.strictEqual(t.c.distinct('g').length, 10);
});

check('update, replace, delete, findOneAndUpdate', () => {
  assert.strictEqual(t.c.updateMany({ g: 1 }, { $set: { one: true } }).modifiedCount, 500);
  assert.strictEqual(t.c.replaceOne({ _id: 2 }, { r: 1 }).modifiedCount, 1);
  assert.strictEqual(t.c.findOneAndUpdate({ _id: 3 }, { $inc: { k: 1 } }, { returnDocument: 'after' }).k, 1);
  assert.strictEqual(t.c.deleteMany({ g: 9 }).deletedCount, 500);
});

check('indexes', () => {
  t.c.createIndex({ s: 1 });
  assert.ok(t.c.getIndexes().some((i) => i.name === 's_1'));
  t.c.dropIndex('s_1');
  assert.strictEqual(t.c.getIndexes().length, 1);
});

check('transactions', () => {
  const session = db.getMongo().startSession();
  const coll = session.getDatabase('mongosh_smoke').tx;
  session.startTransaction();
  coll.insertOne({ _id: 'in' });
  session.commitTransaction();
  session.startTransaction();
  coll.insertOne({ _id: 'out' });
  session.abortTransaction();
  session.endSession();
  same(t.tx.find().toArray(), [{ _id: 'in' }]);
});

check('explain', () => {
  const plan = t.c.find({ g: 1 }).explain();
  assert.ok(plan.queryPlanner);
});

check('errors come back from the upstream', () => {
  let code;
  try {
    code = t.runCommand({ definitelyNotACommand: 1 }).code;
  } catch (e) {
    code = e.code;
  }
  assert.strictEqual(code, 59);
  t.c.insertOne({ _id: 'dup' });
  // mongosh does not await callbacks given to Node built-ins such as
  // assert.throws, so errors are caught here.
  let message = 'no error';
  try {
    t.c.insertOne({ _id: 'dup' });
  } catch (e) {
    message = e.message;
  }
  assert.match(message, /E11000/);
});

check('list and drop collections and databases', () => {
  assert.ok(t.getCollectionNames().includes('c'));
  t.c.drop();
  assert.ok(!t.getCollectionNames().includes('c'));
  t.dropDatabase();
  assert.ok(!db.adminCommand({ listDatabases: 1 }).databases.some((d) => d.name === 'mongosh_smoke'));
});

print(`MONGOSH OK ${checks} checks`);

// The Node `mongodb` driver, unmodified, through the proxy with a plain URI.
// Run with: LIKEWISE_URI=mongodb://127.0.0.1:PORT/ node --test
'use strict';
const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { MongoClient } = require('mongodb');

const uri = process.env.LIKEWISE_URI;
assert.ok(uri, 'LIKEWISE_URI must name the proxy');
let client;
let db;

before(async () => {
  client = new MongoClient(uri, { serverSelectionTimeoutMS: 10000, compressors: ['zlib'] });
  await client.connect();
  db = client.db('node_suite');
  await db.dropDatabase();
});

after(async () => {
  await db.dropDatabase();
  await client.close();
});

test('the driver sees one router and stays on the proxy', async () => {
  const hello = await db.admin().command({ hello: 1 });
  assert.strictEqual(hello.msg, 'isdbgrid');
  assert.strictEqual(hello.setName, undefined);
  const description = client.topology.description;
  assert.strictEqual(description.type, 'Sharded');
  assert.deepStrictEqual([...description.servers.keys()], [new URL(uri).host]);
});

test('insertMany, find with options, cursors over getMore', async () => {
  const c = db.collection('items');
  const docs = Array.from({ length: 3000 }, (_, i) => ({ _id: i, g: i % 6, s: `n${i}` }));
  assert.strictEqual((await c.insertMany(docs)).insertedCount, 3000);
  const page = await c.find({ g: 2 }, { projection: { s: 1 }, sort: { _id: -1 }, skip: 2, limit: 4 }).toArray();
  assert.deepStrictEqual(page.map((d) => d._id), [2984, 2978, 2972, 2966]);
  let n = 0;
  for await (const _ of c.find({}, { batchSize: 11 })) n += 1;
  assert.strictEqual(n, 3000);
  const cursor = c.find({}, { batchSize: 2 });
  await cursor.next();
  await cursor.close();
  assert.strictEqual(await c.countDocuments({ g: 5 }), 500);
  assert.strictEqual((await c.distinct('g')).length, 6);
  const agg = await c.aggregate([{ $match: { g: 1 } }, { $count: 'n' }]).toArray();
  assert.deepStrictEqual(agg, [{ n: 500 }]);
});

test('updates, deletes, findOneAndUpdate and bulkWrite', async () => {
  const c = db.collection('writes');
  await c.insertMany([{ _id: 1, n: 1 }, { _id: 2, n: 2 }, { _id: 3, n: 3 }]);
  assert.strictEqual((await c.updateMany({ n: { $gt: 1 } }, { $inc: { n: 10 } })).modifiedCount, 2);
  assert.strictEqual((await c.replaceOne({ _id: 1 }, { r: true })).modifiedCount, 1);
  const after = await c.findOneAndUpdate({ _id: 2 }, { $set: { x: 1 } }, { returnDocument: 'after' });
  assert.strictEqual(after.x, 1);
  const bulk = await c.bulkWrite([
    { insertOne: { document: { _id: 4 } } },
    { updateOne: { filter: { _id: 4 }, update: { $set: { y: 1 } } } },
    { deleteOne: { filter: { _id: 3 } } },
  ]);
  assert.strictEqual(bulk.insertedCount + bulk.modifiedCount + bulk.deletedCount, 3);
  assert.strictEqual((await c.deleteMany({})).deletedCount, 3);
});

test('transactions commit and abort', async () => {
  const c = db.collection('tx');
  await c.insertOne({ _id: 'seed' });
  const session = client.startSession();
  try {
    await session.withTransaction(async () => {
      await c.insertOne({ _id: 'committed' }, { session });
    });
    session.startTransaction();
    await c.insertOne({ _id: 'aborted' }, { session });
    await session.abortTransaction();
  } finally {
    await session.endSession();
  }
  const ids = (await c.find().sort({ _id: 1 }).toArray()).map((d) => d._id);
  assert.deepStrictEqual(ids, ['committed', 'seed']);
});

test('change streams deliver events', async () => {
  const c = db.collection('watched');
  await c.insertOne({ _id: 0 });
  const stream = c.watch([], { maxAwaitTimeMS: 500 });
  await stream.tryNext(); // opens the cursor before the write
  await c.insertOne({ _id: 1, v: 'x' });
  let change = null;
  for (let i = 0; i < 20 && !change; i += 1) change = await stream.tryNext();
  await stream.close();
  assert.ok(change, 'no change event arrived');
  assert.strictEqual(change.operationType, 'insert');
  assert.strictEqual(change.documentKey._id, 1);
});

test('unacknowledged writes, indexes, explain and errors', async () => {
  const c = db.collection('misc');
  for (let i = 0; i < 20; i += 1) await c.insertOne({ _id: i }, { writeConcern: { w: 0 } });
  assert.strictEqual(await c.countDocuments(), 20);
  await c.createIndex({ a: 1 }, { name: 'a_1' });
  assert.ok((await c.indexes()).some((i) => i.name === 'a_1'));
  await c.dropIndex('a_1');
  const plan = await c.find({ _id: 3 }).explain();
  assert.ok(plan.queryPlanner);
  await assert.rejects(db.command({ definitelyNotACommand: 1 }), (e) => e.code === 59);
  await assert.rejects(c.insertOne({ _id: 1 }), (e) => e.code === 11000);
  const names = (await db.listCollections().toArray()).map((x) => x.name);
  assert.ok(names.includes('misc'));
  assert.ok(await c.drop());
});

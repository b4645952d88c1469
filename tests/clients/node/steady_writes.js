// Writes without pause through LIKEWISE_URI (the Node driver, default
// retryable writes): an insert of a new document and an increment of the
// `counter` document per round, until stdin closes. Prints "acked N" as it
// goes and, at the end, one JSON line of what was acknowledged and every
// error the driver raised.
const { MongoClient } = require('mongodb');

async function main() {
  const client = new MongoClient(process.env.LIKEWISE_URI);
  const coll = client.db('fo').collection(process.env.COLLECTION || 'node_steady');
  let stop = false;
  process.stdin.on('data', () => {});
  process.stdin.on('end', () => { stop = true; });
  let inserts = 0;
  let incs = 0;
  const errors = [];
  for (let seq = 0; !stop; seq++) {
    try {
      await coll.insertOne({ seq });
      inserts++;
      await coll.updateOne({ _id: 'counter' }, { $inc: { n: 1 } });
      incs++;
    } catch (e) {
      errors.push(String(e));
    }
    if (seq % 10 === 0) console.log(`acked ${incs}`);
  }
  console.log(JSON.stringify({ inserts, incs, errors }));
  await client.close();
}

main().catch((e) => { console.error(e); process.exit(1); });

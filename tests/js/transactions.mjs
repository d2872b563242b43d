// kafkajs transactions (KIP-98) against keyflow's broker. Run by
// tests/python/test_broker_kafkajs.py:
//
//   KAFKA_BROKERS=127.0.0.1:PORT node tests/js/transactions.mjs
//
// Scenario: a transactional kafkajs producer (transactionalId, idempotent,
// maxInFlightRequests 1) commits a transaction that also commits consumer
// group offsets (txn.sendOffsets), aborts one (records and offsets), and
// commits another; a second producer with the same transactionalId fences
// the first (its send and commit reject; its open transaction is aborted) and commits
// its own. A read_committed kafkajs consumer (readUncommitted: false) reads
// exactly the committed records, in per-partition order; a read_uncommitted
// one reads the aborted ones too.
//
// Prints one JSON summary line on stdout; exits 1 with a message on stderr
// (and "ok": false in the summary) when a check fails.

import { CONSUMER_OPTS, CheckFailed, check, scenario, sleep } from './harness.mjs';
import { randomBytes } from 'node:crypto';

const { summary, step, at, waitFor, kafka, run } = scenario('transactions', 'keyflow-transactions-js', 120000);

const id = randomBytes(5).toString('hex');
const TOPIC = `js-tx-${id}`;
const INPUT = `js-tx-in-${id}`;
const TX_ID = `js-txid-${id}`;
const OFFSETS_GROUP = `js-tx-offsets-${id}`;
const PARTS = [0, 1, 2];

const admin = kafka.admin();
const txProducer = () => kafka.producer({ transactionalId: TX_ID, idempotent: true, maxInFlightRequests: 1 });
const producer = txProducer();
const open = [admin, producer];

// what each transaction wrote: tag → [{partition, value}]
const written = {};

function messages(tag, perPartition) {
  const out = [];
  for (const [p, n] of Object.entries(perPartition)) {
    for (let i = 0; i < n; i++) out.push({ key: `${tag}-k${p}-${i}`, value: `${tag}|p${p}|${i}`, partition: Number(p), headers: { tag } });
  }
  (written[tag] ||= []).push(...out.map((m) => ({ partition: m.partition, value: m.value })));
  return out;
}

async function txSend(txn, tag, perPartition) {
  const md = await txn.send({ topic: TOPIC, messages: messages(tag, perPartition) });
  for (const r of md) check(r.errorCode === 0, `transactional send error ${JSON.stringify(r)}`);
}

async function groupOffsets(groupId, topic) {
  const res = await admin.fetchOffsets({ groupId, topics: [topic] });
  const t = res.find((x) => x.topic === topic);
  return Object.fromEntries((t ? t.partitions : []).map((p) => [p.partition, Number(p.offset)]));
}

async function endOffsets(topic) {
  const offs = await admin.fetchTopicOffsets(topic);
  return Object.fromEntries(offs.map((o) => [o.partition, Number(o.high)]));
}

// Reads TOPIC from the beginning in a fresh group until `expected` records came, then 1 s more.
async function readAll(readUncommitted, expected) {
  const c = kafka.consumer({ groupId: `js-tx-read-${readUncommitted ? 'ru' : 'rc'}-${id}`, readUncommitted, ...CONSUMER_OPTS });
  open.push(c);
  const seen = [];
  await c.connect();
  await c.subscribe({ topics: [TOPIC], fromBeginning: true });
  await c.run({
    eachMessage: async ({ partition, message }) => {
      seen.push({ partition, offset: Number(message.offset), value: message.value.toString(), key: message.key && message.key.toString() });
    },
  });
  await waitFor(() => seen.length >= expected || { got: seen.length, expected }, `${expected} records (readUncommitted: ${readUncommitted})`);
  await sleep(1000);
  await c.disconnect();
  return seen;
}

function byPartition(rows) {
  const out = {};
  for (const r of rows) (out[r.partition] ||= []).push(r.value);
  return out;
}

function expectExactly(seen, tags, what) {
  const want = byPartition(tags.flatMap((t) => written[t]));
  const got = byPartition(seen);
  for (const p of PARTS) {
    const g = JSON.stringify(got[p] || []);
    const w = JSON.stringify(want[p] || []);
    check(g === w, `${what}: partition ${p} read ${g}, expected ${w}`);
  }
}

async function main() {
  await admin.connect();

  await step('createTopics', async () => {
    const created = await admin.createTopics({
      waitForLeaders: true,
      timeout: 15000,
      topics: [
        { topic: TOPIC, numPartitions: 3, replicationFactor: 1 },
        { topic: INPUT, numPartitions: 3, replicationFactor: 1 },
      ],
    });
    check(created === true, `createTopics returned ${created}`);
  });

  await step('commit a transaction with sendOffsets', async () => {
    await producer.connect();
    const txn = await producer.transaction();
    await txSend(txn, 'one', { 0: 3, 1: 2, 2: 1 });
    await txn.sendOffsets({
      consumerGroupId: OFFSETS_GROUP,
      topics: [{ topic: INPUT, partitions: [{ partition: 0, offset: '5' }, { partition: 1, offset: '3' }] }],
    });
    const pending = await groupOffsets(OFFSETS_GROUP, INPUT);
    check(PARTS.every((p) => !(pending[p] >= 0)), `offsets visible before the commit: ${JSON.stringify(pending)}`);
    await txn.commit();
    const after = await groupOffsets(OFFSETS_GROUP, INPUT);
    check(after[0] === 5 && after[1] === 3 && !(after[2] >= 0), `offsets after the commit: ${JSON.stringify(after)}`);
    return { offsets: after };
  });

  await step('abort a transaction (records and offsets)', async () => {
    const txn = await producer.transaction();
    await txSend(txn, 'aborted', { 0: 2, 1: 2, 2: 2 });
    await txn.sendOffsets({
      consumerGroupId: OFFSETS_GROUP,
      topics: [{ topic: INPUT, partitions: [{ partition: 0, offset: '9' }, { partition: 2, offset: '9' }] }],
    });
    await txn.abort();
    const after = await groupOffsets(OFFSETS_GROUP, INPUT);
    check(after[0] === 5 && after[1] === 3 && !(after[2] >= 0), `offsets after the abort: ${JSON.stringify(after)}`);
  });

  await step('commit a transaction after the aborted one', async () => {
    const txn = await producer.transaction();
    await txSend(txn, 'two', { 0: 1, 1: 1, 2: 2 });
    await txn.commit();
    const e = await endOffsets(TOPIC);
    // records + one marker per transaction and partition
    check(e[0] === 9 && e[1] === 8 && e[2] === 8, `end offsets ${JSON.stringify(e)}, expected {0: 9, 1: 8, 2: 8}`);
  });

  await step('a second producer with the same transactionalId fences the first', async () => {
    const zombieTxn = await producer.transaction();
    await txSend(zombieTxn, 'zombie', { 0: 1, 1: 1 });
    const second = txProducer();
    open.push(second);
    await second.connect();
    const txn = await second.transaction(); // InitProducerId: bumps the epoch, aborts the open transaction
    // the old producer's writes are refused from now on (the abort marker carries the new epoch)
    let sendError = null;
    try {
      await txSend(zombieTxn, 'zombie-late', { 0: 1 });
    } catch (e) {
      sendError = e;
    }
    check(sendError && !(sendError instanceof CheckFailed), `the fenced producer's send was accepted (${sendError && sendError.message})`);
    let commitError = null;
    try {
      await zombieTxn.commit();
    } catch (e) {
      commitError = e;
    }
    check(commitError, 'the fenced producer committed its transaction');
    const type = commitError.type || (commitError.cause && commitError.cause.type) || commitError.name;
    check(['INVALID_PRODUCER_EPOCH', 'PRODUCER_FENCED'].includes(type),
      `the fenced producer's commit failed with ${type} (${commitError.message}), expected INVALID_PRODUCER_EPOCH or PRODUCER_FENCED`);
    await txSend(txn, 'fresh', { 1: 1, 2: 1 });
    await txn.commit();
    await second.disconnect();
    return { fencedWith: type, sendRejectedWith: sendError.type || sendError.name };
  });

  await step('readUncommitted: false reads only the committed records', async () => {
    const committed = ['one', 'two', 'fresh'];
    const n = committed.reduce((s, t) => s + written[t].length, 0);
    const seen = await readAll(false, n);
    check(seen.length === n, `read_committed consumer read ${seen.length} records, expected ${n}: ${JSON.stringify(seen.map((r) => r.value))}`);
    expectExactly(seen, committed, 'read_committed');
    summary.counts.readCommitted = seen.length;
  });

  await step('readUncommitted: true also reads the aborted and fenced records', async () => {
    const all = ['one', 'aborted', 'two', 'zombie', 'fresh'];
    const n = all.reduce((s, t) => s + written[t].length, 0);
    const seen = await readAll(true, n);
    check(seen.length === n, `read_uncommitted consumer read ${seen.length} records, expected ${n}`);
    expectExactly(seen, all, 'read_uncommitted');
    summary.counts.readUncommitted = seen.length;
  });

  at('teardown');
  await producer.disconnect();
  await admin.disconnect();
}

run(main, open);

// kafkajs (its own protocol implementation, pure JavaScript) against
// keyflow's broker. Run by tests/python/test_broker_kafkajs.py:
//
//   KAFKA_BROKERS=127.0.0.1:PORT node tests/js/conformance.mjs
//
// Scenarios: CreateTopics (with retention.ms), idempotent produce with keys
// and headers, read back in per-partition order, a 2-member consumer group
// (no partition owned by two members at a time, every record consumed once),
// commit and resume, describeGroups/listGroups, describeConfigs,
// fetchTopicOffsets/fetchTopicOffsetsByTimestamp, deleteTopics.
//
// Prints one JSON summary line on stdout; exits 1 with a message on stderr
// (and "ok": false in the summary) when a check fails.

import kafkajs from 'kafkajs';
import { CONSUMER_OPTS, check, scenario, sleep } from './harness.mjs';
import { randomBytes } from 'node:crypto';

const { AssignerProtocol, ConfigResourceTypes, Partitioners } = kafkajs;

const { summary, step, at, waitFor, kafka, run } = scenario('conformance', 'keyflow-conformance-js', 240000);

const id = randomBytes(5).toString('hex');
const TOPIC = `js-main-${id}`;
const TS_TOPIC = `js-ts-${id}`;
const GROUP = `js-group-${id}`;
const RESUME_GROUP = `js-resume-${id}`;
const READ_GROUP = `js-read-${id}`;
const PARTS = [0, 1, 2];

const admin = kafka.admin();
const producer = kafka.producer({
  idempotent: true,
  maxInFlightRequests: 1,
  createPartitioner: Partitioners.DefaultPartitioner,
});
const open = [admin, producer];

// everything produced: value → {key, seq, headers}
const produced = new Map();

function makeMessages(n, tag) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const seq = produced.size;
    const value = JSON.stringify({ seq, tag, i });
    const key = `key-${seq % 7}`;
    const headers = { seq: String(seq), client: 'kafkajs', dup: ['1', '2'] };
    produced.set(value, { key, seq, tag });
    out.push({ key, value, headers });
  }
  return out;
}

async function produce(topic, messages) {
  const md = await producer.send({ topic, acks: -1, messages });
  for (const r of md) check(r.errorCode === 0, `produce error ${JSON.stringify(r)}`);
  return md;
}

async function endOffsets(topic) {
  const offs = await admin.fetchTopicOffsets(topic);
  return Object.fromEntries(offs.map((o) => [o.partition, Number(o.high)]));
}

async function committed(groupId, topic) {
  const res = await admin.fetchOffsets({ groupId, topics: [topic] });
  const t = res.find((x) => x.topic === topic);
  return Object.fromEntries((t ? t.partitions : []).map((p) => [p.partition, Number(p.offset)]));
}

async function committedEqualsEnd(groupId, topic) {
  const [c, e] = [await committed(groupId, topic), await endOffsets(topic)];
  const ok = PARTS.every((p) => (e[p] === 0 ? c[p] === undefined || c[p] <= 0 : c[p] === e[p]));
  return ok || { committed: c, end: e };
}

function headerValues(h) {
  // kafkajs gives a Buffer, or an array of Buffers for a repeated header name
  const out = {};
  for (const [k, v] of Object.entries(h || {})) {
    out[k] = Array.isArray(v) ? v.map((b) => b.toString()) : v.toString();
  }
  return out;
}

function checkRecord(m, partition) {
  const value = m.value.toString();
  const want = produced.get(value);
  check(want, `unknown record ${value}`);
  check(m.key && m.key.toString() === want.key, `key ${m.key} != ${want.key} for ${value}`);
  const h = headerValues(m.headers);
  check(
    h.seq === String(want.seq) && h.client === 'kafkajs' && JSON.stringify(h.dup) === '["1","2"]',
    `headers ${JSON.stringify(h)} for ${value} (partition ${partition} offset ${m.offset})`,
  );
  return want;
}

async function main() {
  await admin.connect();
  await producer.connect();

  await step('createTopics', async () => {
    const created = await admin.createTopics({
      waitForLeaders: true,
      timeout: 15000,
      topics: [
        { topic: TOPIC, numPartitions: 3, replicationFactor: 1, configEntries: [{ name: 'retention.ms', value: '3600000' }] },
        { topic: TS_TOPIC, numPartitions: 3, replicationFactor: 1 },
      ],
    });
    check(created === true, `createTopics returned ${created}`);
    const again = await admin.createTopics({ topics: [{ topic: TOPIC, numPartitions: 3 }] });
    check(again === false, `creating an existing topic returned ${again}, expected false (TOPIC_ALREADY_EXISTS)`);
    const md = await admin.fetchTopicMetadata({ topics: [TOPIC] });
    const parts = md.topics[0].partitions;
    check(parts.length === 3, `metadata shows ${parts.length} partitions`);
    check(parts.every((p) => p.leader >= 0 && p.partitionErrorCode === 0), `partitions ${JSON.stringify(parts)}`);
    const topics = await admin.listTopics();
    check(topics.includes(TOPIC) && topics.includes(TS_TOPIC), `listTopics ${topics}`);
  });

  await step('idempotent produce with keys and headers', async () => {
    for (let b = 0; b < 3; b++) await produce(TOPIC, makeMessages(30, `batch${b}`));
    const e = await endOffsets(TOPIC);
    const total = PARTS.reduce((s, p) => s + e[p], 0);
    check(total === 90, `end offsets ${JSON.stringify(e)} sum to ${total}, produced 90`);
    summary.counts.produced = 90;
    return { endOffsets: e };
  });

  await step('read back in per-partition order with headers', async () => {
    const c = kafka.consumer({ groupId: READ_GROUP, ...CONSUMER_OPTS });
    open.push(c);
    await c.connect();
    await c.subscribe({ topics: [TOPIC], fromBeginning: true });
    const seen = [];
    await c.run({ eachMessage: async ({ partition, message }) => { seen.push({ partition, message }); } });
    await waitFor(() => seen.length >= 90 || { got: seen.length }, '90 records');
    await sleep(500);
    await c.disconnect();
    check(seen.length === 90, `read ${seen.length} records, expected 90`);
    const byPart = {};
    const keyPart = {};
    for (const { partition, message } of seen) {
      const want = checkRecord(message, partition);
      (byPart[partition] ||= []).push({ offset: Number(message.offset), seq: want.seq });
      (keyPart[want.key] ||= new Set()).add(partition);
    }
    for (const [p, rows] of Object.entries(byPart)) {
      check(rows.every((r, i) => r.offset === i), `partition ${p}: offsets ${rows.map((r) => r.offset)} not 0..${rows.length - 1}`);
      check(rows.every((r, i) => i === 0 || rows[i - 1].seq < r.seq), `partition ${p}: produce order not kept`);
    }
    for (const [k, ps] of Object.entries(keyPart)) check(ps.size === 1, `key ${k} on partitions ${[...ps]}`);
  });

  await step('two-member group: no partition owned twice, each record once', async () => {
    const assigned = { a: new Set(), b: new Set() };
    const violations = [];
    const events = [];
    const consumed = [];
    const other = (who) => (who === 'a' ? 'b' : 'a');

    function member(who) {
      const c = kafka.consumer({ groupId: GROUP, ...CONSUMER_OPTS });
      open.push(c);
      c.on(c.events.REBALANCING, () => {
        events.push(`${Date.now()} ${who} rebalancing (drops ${[...assigned[who]]})`);
        assigned[who] = new Set();
      });
      c.on(c.events.GROUP_JOIN, (e) => {
        const parts = new Set((e.payload.memberAssignment || {})[TOPIC] || []);
        events.push(`${Date.now()} ${who} joined: ${[...parts]}`);
        for (const p of parts) {
          if (assigned[other(who)].has(p)) violations.push(`partition ${p} assigned to ${who} while ${other(who)} owns it`);
        }
        assigned[who] = parts;
      });
      c.on(c.events.CRASH, (e) => violations.push(`${who} crashed: ${e.payload.error}`));
      c.member = who;
      return c;
    }

    async function start(c) {
      await c.connect();
      await c.subscribe({ topics: [TOPIC], fromBeginning: true });
      await c.run({
        eachMessage: async ({ partition, message }) => {
          const who = c.member;
          if (!assigned[who].has(partition)) violations.push(`${who} consumed partition ${partition} it does not own`);
          if (assigned[other(who)].has(partition)) violations.push(`${who} consumed partition ${partition} owned by ${other(who)}`);
          checkRecord(message, partition);
          consumed.push({ who, partition, offset: Number(message.offset) });
        },
      });
    }

    const a = member('a');
    await start(a);
    await waitFor(() => consumed.length >= 90 || { consumed: consumed.length, events }, 'member a to consume the 90 records');
    await waitFor(() => committedEqualsEnd(GROUP, TOPIC), 'member a to commit everything');

    const b = member('b');
    await start(b);
    const balanced = () => assigned.a.size > 0 && assigned.b.size > 0
      && [...assigned.a].every((p) => !assigned.b.has(p)) && assigned.a.size + assigned.b.size === 3;
    await waitFor(() => balanced() || { a: [...assigned.a], b: [...assigned.b], events }, 'both members to own a disjoint share');
    await sleep(1000);
    check(balanced(), `assignment changed after settling: ${events.join('; ')}`);

    await produce(TOPIC, makeMessages(60, 'group'));
    summary.counts.produced += 60;
    await waitFor(() => consumed.length >= 150 || { consumed: consumed.length }, '150 records consumed by the group');
    await waitFor(() => committedEqualsEnd(GROUP, TOPIC), 'the group to commit everything');
    await sleep(500);

    const desc = await admin.describeGroups([GROUP]);
    const g = desc.groups[0];
    check(g.errorCode === 0 && g.state === 'Stable' && g.protocolType === 'consumer', `describeGroups ${JSON.stringify({ ...g, members: g.members.length })}`);
    check(g.members.length === 2, `describeGroups shows ${g.members.length} members`);
    const described = g.members.map((m) => AssignerProtocol.MemberAssignment.decode(m.memberAssignment).assignment[TOPIC] || []);
    const flat = described.flat().sort();
    check(JSON.stringify(flat) === '[0,1,2]', `described assignments ${JSON.stringify(described)} are not a partition of 0..2`);
    const groups = await admin.listGroups();
    const mine = groups.groups.find((x) => x.groupId === GROUP);
    check(mine && mine.protocolType === 'consumer', `listGroups ${JSON.stringify(groups.groups)}`);

    await b.disconnect();
    assigned.b = new Set();
    await waitFor(() => assigned.a.size === 3 || { a: [...assigned.a] }, 'member a to own all partitions after b left', 6000);
    await a.disconnect();

    check(violations.length === 0, `${violations.join('; ')} | events: ${events.join('; ')}`);
    const keys = consumed.map((r) => `${r.partition}/${r.offset}`);
    check(new Set(keys).size === keys.length, `records consumed twice: ${keys.length - new Set(keys).size}`);
    check(keys.length === 150, `group consumed ${keys.length} records, expected 150`);
    summary.counts.groupConsumed = { a: consumed.filter((r) => r.who === 'a').length, b: consumed.filter((r) => r.who === 'b').length };
    return { describedAssignments: described };
  });

  await step('commit, close, resume at the committed offsets', async () => {
    const run = async (expected) => {
      const c = kafka.consumer({ groupId: RESUME_GROUP, ...CONSUMER_OPTS });
      open.push(c);
      const got = [];
      await c.connect();
      await c.subscribe({ topics: [TOPIC], fromBeginning: true });
      await c.run({ eachMessage: async ({ partition, message }) => { got.push({ partition, offset: Number(message.offset) }); } });
      await waitFor(() => got.length >= expected || { got: got.length }, `${expected} records in ${RESUME_GROUP}`);
      await waitFor(() => committedEqualsEnd(RESUME_GROUP, TOPIC), 'the commit');
      await sleep(1000);
      await c.disconnect();
      return got;
    };
    const first = await run(150);
    check(first.length === 150, `first consumer read ${first.length}, expected 150`);
    const before = await endOffsets(TOPIC);
    await produce(TOPIC, makeMessages(15, 'resume'));
    summary.counts.produced += 15;
    const second = await run(15);
    check(second.length === 15, `resumed consumer read ${second.length} records, expected only the 15 new ones`);
    check(second.every((r) => r.offset >= before[r.partition]), `resumed consumer re-read old records: ${JSON.stringify(second)}`);
  });

  await step('describeConfigs', async () => {
    const res = await admin.describeConfigs({
      includeSynonyms: false,
      resources: [{ type: ConfigResourceTypes.TOPIC, name: TOPIC, configNames: ['retention.ms'] }],
    });
    const r = res.resources[0];
    check(r.errorCode === 0, `describeConfigs error ${r.errorCode} ${r.errorMessage}`);
    const entry = r.configEntries.find((e) => e.configName === 'retention.ms');
    check(entry && entry.configValue === '3600000', `retention.ms ${JSON.stringify(entry)}`);
    return { 'retention.ms': entry.configValue };
  });

  await step('fetchTopicOffsets and fetchTopicOffsetsByTimestamp', async () => {
    const base = (Math.floor(Date.now() / 1000) - 600) * 1000;
    const msgs = [];
    for (let i = 0; i < 10; i++) msgs.push({ key: 'k', value: `v${i}`, partition: 0, timestamp: String(base + i * 1000) });
    await producer.send({ topic: TS_TOPIC, acks: -1, messages: msgs });
    const offs = await admin.fetchTopicOffsets(TS_TOPIC);
    const byP = Object.fromEntries(offs.map((o) => [o.partition, o]));
    check(byP[0].low === '0' && byP[0].high === '10' && byP[0].offset === '10', `partition 0 offsets ${JSON.stringify(byP[0])}`);
    check(byP[1].low === '0' && byP[1].high === '0', `partition 1 offsets ${JSON.stringify(byP[1])}`);
    const at = async (ts) => Object.fromEntries((await admin.fetchTopicOffsetsByTimestamp(TS_TOPIC, ts)).map((o) => [o.partition, o.offset]));
    const mid = await at(base + 2500);
    check(mid[0] === '3', `offset for ts base+2500 on partition 0: ${mid[0]}, expected 3`);
    // kafkajs maps "no record at/after ts" (-1) to the high watermark
    check(mid[1] === '0' && mid[2] === '0', `empty partitions by timestamp: ${JSON.stringify(mid)}`);
    const early = await at(base - 5000);
    check(early[0] === '0', `offset before the first record: ${early[0]}`);
    const late = await at(base + 9001);
    check(late[0] === '10', `offset after the last record: ${late[0]}, expected the high watermark 10`);
    return { byTimestamp: mid };
  });

  await step('deleteTopics', async () => {
    await admin.deleteTopics({ topics: [TS_TOPIC], timeout: 15000 });
    await waitFor(async () => !(await admin.listTopics()).includes(TS_TOPIC), `${TS_TOPIC} to disappear`);
  });

  at('teardown');
  await producer.disconnect();
  await admin.disconnect();
}

run(main, open);

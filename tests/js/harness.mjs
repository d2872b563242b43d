// What the kafkajs scenarios share (conformance.mjs, transactions.mjs): the
// brokers from KAFKA_BROKERS, steps recorded in a JSON summary printed on
// stdout at the end, checks that fail the run with a message on stderr, an
// overall timeout, and a kafkajs client whose WARN+ logs go to stderr.

import kafkajs from 'kafkajs';

const { Kafka, logLevel } = kafkajs;

export class CheckFailed extends Error {}

export function check(cond, msg) {
  if (!cond) throw new CheckFailed(msg);
}

/// Consumer settings of every scenario: short sessions and fetch waits, so
/// rebalances and reads finish within the test's patience.
export const CONSUMER_OPTS = {
  sessionTimeout: 6000,
  rebalanceTimeout: 10000,
  heartbeatInterval: 500,
  maxWaitTimeInMs: 100,
  retry: { retries: 6 },
};

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// One scenario run: `name` for messages, `clientId` for the broker,
/// `overallMs` the default of CONFORMANCE_TIMEOUT_MS.
export function scenario(name, clientId, overallMs) {
  const brokers = (process.env.KAFKA_BROKERS || '').split(',').map((s) => s.trim()).filter(Boolean);
  const WAIT_MS = Number(process.env.CONFORMANCE_WAIT_MS || 30000);
  const OVERALL_MS = Number(process.env.CONFORMANCE_TIMEOUT_MS || overallMs);
  const summary = { ok: false, client: 'kafkajs', version: '2.2.4', brokers, steps: [], counts: {} };
  let current = null;

  function finish(code, err) {
    if (err) {
      summary.error = { step: current, message: err instanceof CheckFailed ? err.message : String(err && err.stack || err) };
      process.stderr.write(`kafkajs ${name} FAILED in step "${current}": ${summary.error.message}\n`);
    }
    summary.ok = code === 0;
    process.stdout.write(JSON.stringify(summary) + '\n');
    process.exit(code);
  }

  if (!brokers.length) {
    current = 'setup';
    finish(2, new CheckFailed('KAFKA_BROKERS is not set (host:port[,host:port])'));
  }
  setTimeout(() => finish(1, new CheckFailed(`did not finish within ${OVERALL_MS} ms`)), OVERALL_MS).unref();

  async function step(stepName, fn) {
    current = stepName;
    const t0 = Date.now();
    const detail = await fn();
    summary.steps.push({ name: stepName, ok: true, ms: Date.now() - t0, ...(detail ? { detail } : {}) });
  }

  async function waitFor(cond, what, ms = WAIT_MS) {
    const deadline = Date.now() + ms;
    let last;
    while (Date.now() < deadline) {
      last = await cond();
      if (last === true) return;
      await sleep(50);
    }
    throw new CheckFailed(`timed out after ${ms} ms waiting for ${what}${last && last !== false ? ` (last: ${JSON.stringify(last)})` : ''}`);
  }

  const LEVEL_NAMES = Object.fromEntries(Object.entries(logLevel).map(([k, v]) => [v, k]));
  // kafkajs logs (WARN and up) go to stderr, one line each, so a failing run shows them.
  const logCreator = () => ({ namespace, level, log }) => {
    const { message, ...extra } = log;
    delete extra.timestamp;
    delete extra.logger;
    process.stderr.write(`[kafkajs ${LEVEL_NAMES[level] ?? level}] ${namespace}: ${message} ${JSON.stringify(extra)}\n`);
  };
  const kafka = new Kafka({
    clientId,
    brokers,
    logLevel: Number(process.env.KAFKAJS_LOG_LEVEL ?? logLevel.WARN),
    logCreator,
    connectionTimeout: 5000,
    requestTimeout: 20000,
    retry: { retries: 6, initialRetryTime: 100, maxRetryTime: 2000 },
  });
  // Names what runs outside a step (teardown), for a failure's message.
  const at = (what) => {
    current = what;
  };
  // Runs the scenario: exit 0 when it passes; on a failure, disconnects the
  // clients still open (3 s each at most), then exits 1 with the error.
  const run = (main, open) =>
    main().then(
      () => finish(0),
      async (err) => {
        for (const c of open) {
          try { await Promise.race([c.disconnect(), sleep(3000)]); } catch { /* ignore */ }
        }
        finish(1, err);
      },
    );
  return { brokers, WAIT_MS, summary, finish, step, at, waitFor, kafka, run };
}

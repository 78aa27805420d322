'use strict';
// A listening AMQP 1.0 peer built on rhea, so that amqscale is tested against an implementation
// that shares no code with proton. Started by amqscale.testing.brokers.RheaPeer.
//
//   node rhea_peer.js --port N [--host 127.0.0.1] [--record N] [--summary FILE]
//                     [--tls-cert FILE --tls-key FILE]
//
// With --tls-cert and --tls-key (PEM files) the listener speaks TLS only (amqps), with that
// certificate and key; without them, plain AMQP.
// Sink: a sender attaching to any target gets every message accepted and counted per address;
//   with --record N the first N message ids and bodies of each address are kept too.
// Source: a receiver attaching to `count/N` (or with link property `count`) gets N messages
//   (body "message-I", message id I); `count/N/size/B` pads each body to B characters; any
//   other source address is endless. Sends are deferred with setImmediate: answering an attach
//   and sending at once from `sendable` can put a transfer on the wire before the attach.
// `$stats`: a receiver attaching to it gets one message whose body is the JSON counts.
// SIGTERM/SIGINT: the same JSON is written to --summary FILE (atomically), then it exits.
// Quirk kept from rhea: one session with a sender and a receiver of the same link name makes
// rhea drop the connection, so clients must name their links uniquely.
const fs = require('fs');
const rhea = require('rhea');

function parseArgs(argv) {
  const opts = {
    host: '127.0.0.1', port: 0, record: 0, summary: null, 'tls-cert': null, 'tls-key': null,
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in opts) || i + 1 >= argv.length) throw new Error('bad argument ' + argv[i]);
    opts[key] = key === 'port' || key === 'record' ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (Boolean(opts['tls-cert']) !== Boolean(opts['tls-key'])) {
    throw new Error('--tls-cert and --tls-key go together');
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const stats = { received: 0, sent: 0, addresses: {} };

// JSON has no binary type: buffers (binary, uuid) become {"binary": hex}.
function jsonable(value) {
  if (Buffer.isBuffer(value)) return { binary: value.toString('hex') };
  if (Array.isArray(value)) return value.map(jsonable);
  if (typeof value === 'bigint') return value.toString();
  if (value && typeof value === 'object') {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = jsonable(v);
    return out;
  }
  return value === undefined ? null : value;
}

function addressStats(address) {
  const key = address === undefined || address === null ? '' : String(address);
  if (!stats.addresses[key]) stats.addresses[key] = { received: 0, sent: 0, ids: [], bodies: [] };
  return stats.addresses[key];
}

function onMessage(context) {
  const target = context.receiver.remote.attach.target;
  const entry = addressStats(target && target.address);
  entry.received += 1;
  stats.received += 1;
  if (entry.ids.length < opts.record) {
    entry.ids.push(jsonable(context.message.message_id));
    entry.bodies.push(jsonable(context.message.body));
  }
}

// How many messages a source link asks for: `count/N[/size/B]` or link property `count`.
function sourcePlan(sender) {
  const source = sender.remote.attach.source || {};
  const match = /^count\/(\d+)(?:\/size\/(\d+))?$/.exec(source.address || '');
  const props = sender.remote.attach.properties || {};
  let count = match ? Number(match[1]) : Infinity;
  if (props.count !== undefined) count = Number(props.count);
  return { address: source.address, count, size: match && match[2] ? Number(match[2]) : 0 };
}

function fill(sender) {
  const plan = sender.amqscalePlan;
  const entry = addressStats(plan.address);
  while (sender.sendable() && plan.next < plan.count) {
    const body = ('message-' + plan.next).padEnd(plan.size, '.');
    sender.send({ message_id: plan.next, body });
    plan.next += 1;
    entry.sent += 1;
    stats.sent += 1;
  }
}

function onSenderOpen(context) {
  const sender = context.sender;
  sender.set_source(sender.remote.attach.source || {});
  sender.set_target(sender.remote.attach.target || {});
  const source = sender.remote.attach.source || {};
  if (source.address === '$stats') {
    sender.amqscalePlan = { stats: true, done: false };
  } else {
    sender.amqscalePlan = Object.assign(sourcePlan(sender), { next: 0 });
  }
}

function onSendable(context) {
  const sender = context.sender;
  setImmediate(() => {
    if (!sender.is_open()) return;
    const plan = sender.amqscalePlan;
    if (plan.stats) {
      if (!plan.done && sender.sendable()) {
        plan.done = true;
        sender.send({ body: JSON.stringify(stats) });
      }
    } else {
      fill(sender);
    }
  });
}

function writeSummaryAndExit() {
  if (opts.summary) {
    fs.writeFileSync(opts.summary + '.tmp', JSON.stringify(stats));
    fs.renameSync(opts.summary + '.tmp', opts.summary);
  }
  process.exit(0);
}

const container = rhea.create_container({ id: 'amqscale-rhea-peer' });
container.sasl_server_mechanisms.enable_anonymous();
container.sasl_server_mechanisms.enable_plain(() => true);
container.on('receiver_open', (context) => {
  const r = context.receiver;
  r.set_source(r.remote.attach.source || {});
  r.set_target(r.remote.attach.target || {});
});
container.on('message', onMessage);
container.on('sender_open', onSenderOpen);
container.on('sendable', onSendable);
container.on('error', (err) => console.error('error:', err && err.message));
container.on('disconnected', () => {});

const listenOptions = { host: opts.host, port: opts.port };
if (opts['tls-cert']) {
  Object.assign(listenOptions, {
    transport: 'tls',
    cert: fs.readFileSync(opts['tls-cert']),
    key: fs.readFileSync(opts['tls-key']),
  });
}
const server = container.listen(listenOptions);
server.on('listening', () => {
  console.log(JSON.stringify({ listening: server.address().port }));
});
server.on('error', (err) => {
  console.error('listen failed:', err.message);
  process.exit(2);
});
process.on('SIGTERM', writeSummaryAndExit);
process.on('SIGINT', writeSummaryAndExit);

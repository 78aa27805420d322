'use strict';
// A listening AMQP 1.0 peer built on rhea, so that amqscale is tested against an implementation
// that shares no code with proton. Started by amqscale.testing.brokers.RheaPeer.
//
//   node rhea_peer.js --port N [--host 127.0.0.1] [--record N] [--record-full N]
//                     [--outcomes PROPERTY] [--summary FILE] [--tls-cert FILE --tls-key FILE]
//
// With --tls-cert and --tls-key (PEM files) the listener speaks TLS only (amqps), with that
// certificate and key; without them, plain AMQP.
// Sink: a sender attaching to any target gets every message accepted and counted per address;
//   with --record N the first N message ids and bodies of each address are kept too, and with
//   --record-full N the first N messages of each address whole, in `messages` (see fullRecord).
// Outcomes: with --outcomes PROPERTY, a message whose application property PROPERTY is set is
//   settled as it says instead of accepted (see settle): "accept"; "reject" with the condition
//   and description of application properties `condition` and `description`; "release"; or
//   "modify" with the flags of `delivery_failed` and `undeliverable_here` and the message
//   annotations of `annotations`, a JSON map {KEY: [TYPE, VALUE]} (see typedValue).
// Source: a receiver attaching to `count/N` (or with link property `count`) gets N messages
//   (body "message-I", message id I); `count/N/size/B` pads each body to B characters; any
//   other source address is endless. Sends are deferred with setImmediate: answering an attach
//   and sending at once from `sendable` can put a transfer on the wire before the attach.
// `$stats`: a receiver attaching to it gets one message whose body is the JSON counts (with
//   --outcomes, also `outcomes`: how many messages got each chosen outcome).
// SIGTERM/SIGINT: the same JSON is written to --summary FILE (atomically), then it exits.
// Quirk kept from rhea: one session with a sender and a receiver of the same link name makes
// rhea drop the connection, so clients must name their links uniquely.
const fs = require('fs');
const rhea = require('rhea');

function parseArgs(argv) {
  const opts = {
    host: '127.0.0.1', port: 0, record: 0, 'record-full': 0, outcomes: null, summary: null,
    'tls-cert': null, 'tls-key': null,
  };
  const numeric = ['port', 'record', 'record-full'];
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in opts) || i + 1 >= argv.length) throw new Error('bad argument ' + argv[i]);
    opts[key] = numeric.includes(key) ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (Boolean(opts['tls-cert']) !== Boolean(opts['tls-key'])) {
    throw new Error('--tls-cert and --tls-key go together');
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const stats = { received: 0, sent: 0, addresses: {} };
if (opts.outcomes) stats.outcomes = {};  // how many messages got each outcome

// JSON has no binary type: buffers (binary, uuid, and the longs and ulongs beyond 2**53 that
// rhea leaves as their 8 bytes) become {"binary": hex}; a timestamp (rhea's Date) becomes
// {"timestamp": milliseconds}.
function jsonable(value) {
  if (Buffer.isBuffer(value)) return { binary: value.toString('hex') };
  if (value instanceof Date) return { timestamp: value.getTime() };
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
  if (!stats.addresses[key]) {
    stats.addresses[key] = { received: 0, sent: 0, ids: [], bodies: [] };
    if (opts['record-full']) stats.addresses[key].messages = [];
  }
  return stats.addresses[key];
}

// Every field of rhea's message object (header, delivery and message annotations, properties,
// application properties, body, footer), as jsonable gives it (absent: null); `present` names
// the fields rhea's decoder set. A data or amqp-sequence body is rhea's section object
// {typecode: 117 or 118, content, multiple}; an amqp-value body is the value itself.
const FULL_FIELDS = [
  'durable', 'priority', 'ttl', 'first_acquirer', 'delivery_count',
  'delivery_annotations', 'message_annotations',
  'message_id', 'user_id', 'to', 'subject', 'reply_to', 'correlation_id', 'content_type',
  'content_encoding', 'absolute_expiry_time', 'creation_time', 'group_id', 'group_sequence',
  'reply_to_group_id', 'application_properties', 'body', 'footer',
];

function fullRecord(message) {
  const record = { present: FULL_FIELDS.filter((f) => message[f] !== undefined) };
  for (const field of FULL_FIELDS) record[field] = jsonable(message[field]);
  return record;
}

// A typed AMQP value from its JSON description [TYPE, VALUE]: numbers as JSON numbers, except
// long and ulong (decimal strings, any size), uuid and binary (hex), char (a code point).
function typedValue([type, value]) {
  const t = rhea.types;
  const eight = (big, signed) => {
    const buffer = Buffer.alloc(8);
    if (signed) buffer.writeBigInt64BE(BigInt(big));
    else buffer.writeBigUInt64BE(BigInt(big));
    return buffer;
  };
  switch (type) {
    case 'null': return t.Null();
    case 'boolean': return t.wrap_boolean(value);
    case 'string': return t.wrap_string(value);
    case 'symbol': return t.wrap_symbol(value);
    case 'ulong': return t.wrap_ulong(eight(value, false));
    case 'long': return t.wrap_long(eight(value, true));
    case 'uint': return t.wrap_uint(value);
    case 'int': return t.wrap_int(value);
    case 'ushort': return t.wrap_ushort(value);
    case 'short': return t.wrap_short(value);
    case 'ubyte': return t.wrap_ubyte(value);
    case 'byte': return t.wrap_byte(value);
    case 'double': return t.wrap_double(value);
    case 'float': return t.wrap_float(value);
    case 'timestamp': return t.wrap_timestamp(value);
    case 'char': return t.wrap_char(value);
    case 'uuid': return t.wrap_uuid(Buffer.from(value, 'hex'));
    case 'binary': return t.wrap_binary(Buffer.from(value, 'hex'));
    default: throw new Error('unknown annotation type ' + type);
  }
}

// rhea 3.0.5 merges a delivery into the disposition range of the one before it even when
// their outcomes differ (write_dispositions in lib/session.js compares outcomes only once a
// range holds two deliveries), so deliveries settled in one tick with different outcomes
// would all get the first one's. Each chosen outcome is therefore settled in a tick of its
// own, in order: rhea writes the dispositions of a tick before the next immediate runs.
const toSettle = [];
function settleLater(delivery, props) {
  toSettle.push([delivery, props]);
  if (toSettle.length === 1) setImmediate(settleNext);
}

function settleNext() {
  const [delivery, props] = toSettle.shift();
  settle(delivery, props);
  if (toSettle.length) setImmediate(settleNext);
}

// --outcomes: settle as the message's application properties say (see the header comment).
function settle(delivery, props) {
  const outcome = props[opts.outcomes];
  if (outcome === 'reject') {
    const error = { condition: props.condition };
    if (props.description !== undefined) error.description = props.description;
    delivery.reject(error);
  } else if (outcome === 'release') {
    delivery.release();
  } else if (outcome === 'modify') {
    const params = {};
    if (props.delivery_failed !== undefined) params.delivery_failed = props.delivery_failed;
    if (props.undeliverable_here !== undefined) params.undeliverable_here = props.undeliverable_here;
    if (props.annotations !== undefined) {
      params.message_annotations = {};
      for (const [k, v] of Object.entries(JSON.parse(props.annotations))) {
        params.message_annotations[k] = typedValue(v);
      }
    }
    delivery.modified(params);
  } else if (outcome === 'accept') {
    delivery.accept();
  } else {
    throw new Error('unknown outcome ' + outcome);
  }
  stats.outcomes[outcome] = (stats.outcomes[outcome] || 0) + 1;
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
  if (entry.messages && entry.messages.length < opts['record-full']) {
    entry.messages.push(fullRecord(context.message));
  }
  const props = context.message.application_properties || {};
  if (opts.outcomes && props[opts.outcomes] !== undefined) {
    settleLater(context.delivery, props);
  } else {
    context.delivery.accept();
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

// A receiver that asks for a drain gets the credit left back once nothing remains to
// send (answered in rhea's own dispatch, so that the flow goes out with this pass).
function onSenderDraining(context) {
  const plan = context.sender.amqscalePlan;
  if (plan && !plan.stats && plan.next >= plan.count) context.sender.set_drained(true);
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
container.on('sender_draining', onSenderDraining);
container.on('error', (err) => console.error('error:', err && err.message));
container.on('disconnected', () => {});

// Each message is settled by onMessage (accepted, unless --outcomes says otherwise).
const listenOptions = { host: opts.host, port: opts.port, autoaccept: false };
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

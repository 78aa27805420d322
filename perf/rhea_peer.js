'use strict';
// One peer of a perf/compare.py case on rhea (Node.js): a sender or a receiver, written as a
// rhea user would, peer-to-peer or through a broker. Started by perf/peers.py (rhea-send,
// rhea-recv), which sets NODE_PATH to tests/peers/node_modules.
//
//   node perf/rhea_peer.js send|recv --url amqp://127.0.0.1:PORT [--address A] --count N
//        [--size B] [--presettled] [--rate R] [--listen] [--credit 1000] [--window 1000]
//        [--idle SECONDS]
//
// Other flags (peers.py's --workers, --messages, --batch, ...) are accepted and ignored.
// It does what the other roles of perf/peers.py do (see its docstring): every body is 16
// bytes, the scheduled send time in ns (the sender's CLOCK_MONOTONIC, which is Python's
// time.monotonic_ns() and Node's process.hrtime.bigint() on Linux; 0 when not paced) and the
// sequence number, both little-endian 64-bit, then 'x' filler. With --rate message i is due at
// start + i/rate and late ones go at once. The receiver (credit window --credit, each message
// accepted after it is counted; --listen: container.listen on the URL's host and port) prints
// `ready`, then one JSON line of peers.py's Report fields when it has --count messages or
// after --idle seconds without one, then waits for its stdin to close (30 s at most) before
// it closes its connections. A paced receiver's latencies (microseconds, receive time minus
// scheduled time) go in `latency_us_samples_b64`, little-endian uint32s in base64; peers.py
// turns them into the `histogram` field. The sender keeps at most --window messages
// unsettled, counts outcomes and prints its JSON line once all are settled (presettled: once
// the last transfer is written), then closes. Times are monotonic seconds; cpu_process is
// this process's CPU seconds over the run (the sender: from the first `sendable`).
// Quirks of rhea: links are named uniquely (rhea drops a connection whose session has a
// sender and a receiver of the same name); the first sends are deferred with setImmediate
// (a transfer sent from `sendable` at once can precede the attach on a listening peer).
const crypto = require('crypto');
const rhea = require('rhea');

const HEADER_SIZE = 16;
const TWO32 = 4294967296;
const CLOSE_TIMEOUT_MS = 30000;

function parseArgs(argv) {
  const opts = {
    role: argv[0], url: null, address: 'amqscale-perf', count: null, size: 100,
    presettled: false, rate: 0, listen: false, credit: 1000, window: 1000, idle: 10,
  };
  const numeric = ['count', 'size', 'rate', 'credit', 'window', 'idle'];
  const flags = ['presettled', 'listen'];
  if (opts.role !== 'send' && opts.role !== 'recv') throw new Error('first argument: send or recv');
  for (let i = 1; i < argv.length; i++) {
    const match = /^--([^=]+)(?:=(.*))?$/.exec(argv[i]);
    if (!match) throw new Error('unexpected argument ' + argv[i]);
    const key = match[1];
    let value = match[2];
    if (flags.includes(key)) {
      opts[key] = true;
      continue;
    }
    // Any other flag takes a value unless the next word is a flag (unknown ones: ignored).
    if (value === undefined && i + 1 < argv.length && !argv[i + 1].startsWith('--')) {
      value = argv[++i];
    }
    if (!(key in opts) || key === 'role') continue;
    if (value === undefined) throw new Error('--' + key + ' needs a value');
    opts[key] = numeric.includes(key) ? Number(value) : value;
    if (numeric.includes(key) && !Number.isFinite(opts[key])) throw new Error('bad --' + key);
  }
  if (!opts.url || !Number.isInteger(opts.count) || opts.count < 0) {
    throw new Error('--url and --count are required');
  }
  if (opts.size < HEADER_SIZE) throw new Error('--size must be at least ' + HEADER_SIZE);
  const url = new URL(opts.url);
  if (url.protocol !== 'amqp:') throw new Error('amqp:// only');
  opts.host = url.hostname || '127.0.0.1';
  opts.port = url.port ? Number(url.port) : 5672;
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const nowNs = () => Number(process.hrtime.bigint());  // CLOCK_MONOTONIC, < 2**53 for 104 days
const cpuSeconds = (since) => {
  const used = process.cpuUsage(since);
  return (used.user + used.system) / 1e6;
};
const linkName = (what) => `perf-rhea-${what}-${crypto.randomBytes(4).toString('hex')}`;

function newReport() {
  return {
    role: 'rhea-' + opts.role, count: 0, start: 0.0, first: 0.0, last: 0.0, cpu_process: 0.0,
    cpu_own: null, cpu_workers: [], accepted: 0, unique: 0, duplicates: 0, other_outcomes: 0,
    histogram: null, error: null,
  };
}

function emit(report) {
  process.stdout.write(JSON.stringify(report) + '\n');
}

const errorText = (error) => (error && (error.description || error.message || error.condition))
  || String(error);

// ---- sender --------------------------------------------------------------------------------

function runSender() {
  const report = newReport();
  const container = rhea.create_container();
  const body = Buffer.alloc(opts.size, 'x');  // one body, its header rewritten per message
  const message = { body: rhea.message.data_section(body) };  // rhea copies it as it encodes
  const intervalNs = opts.rate > 0 ? Math.floor(1e9 / opts.rate) : 0;
  let startNs = 0;
  let cpu0 = null;
  let sent = 0;
  let settled = 0;
  let lastDelivery = null;
  let pumping = false;  // a pump() is scheduled
  let timer = null;  // paced: waiting for the next message's due time
  let finished = false;
  let progress = 0;  // sent + settled when the watchdog last looked
  let stalls = 0;
  let watchdog = null;

  const connection = container.connect({ host: opts.host, port: opts.port, reconnect: false });
  const sender = connection.open_sender({
    name: linkName('sender'), target: { address: opts.address },
    snd_settle_mode: opts.presettled ? 1 : 2,
  });

  function schedulePump() {
    if (!pumping && !finished) {
      pumping = true;
      setImmediate(pump);
    }
  }

  function pump() {
    pumping = false;
    if (finished || timer !== null) return;
    let now = 0;
    while (sent < opts.count && (opts.presettled || sent - settled < opts.window)
           && sender.sendable()) {
      let stamp = 0;
      if (intervalNs) {
        stamp = startNs + sent * intervalNs;
        if (stamp > now) {
          now = nowNs();
          if (stamp > now) {
            timer = setTimeout(() => { timer = null; pump(); }, (stamp - now) / 1e6);
            break;
          }
        }
      }
      body.writeUInt32LE(stamp % TWO32, 0);
      body.writeUInt32LE(Math.floor(stamp / TWO32), 4);
      body.writeUInt32LE(sent % TWO32, 8);
      body.writeUInt32LE(Math.floor(sent / TWO32), 12);
      lastDelivery = sender.send(message);
      sent += 1;
    }
    if (opts.presettled && sent === opts.count) setImmediate(handedOver);
  }

  // Pre-settled: done once rhea has written the last transfer (in order, so all of them).
  function handedOver() {
    if (finished) return;
    if (lastDelivery !== null && !lastDelivery.remote_settled) {
      setTimeout(handedOver, 1);  // waiting for credit or the session window
      return;
    }
    report.count = report.accepted = sent;
    finish(null);
  }

  function outcome(accepted) {
    settled += 1;
    report.count += 1;
    if (accepted) report.accepted += 1;
    else report.other_outcomes += 1;
    if (report.count === opts.count) finish(null);
    else schedulePump();
  }

  function finish(error) {
    if (finished) return;
    finished = true;
    clearInterval(watchdog);
    if (timer !== null) clearTimeout(timer);
    report.last = nowNs() / 1e9;
    if (cpu0 !== null) report.cpu_process = cpuSeconds(cpu0);
    report.error = error;
    emit(report);
    process.exitCode = error ? 1 : 0;
    if (connection.is_open()) connection.close();
    // Exit once the peer answers the close (or the socket ends), else soon after.
    setTimeout(() => process.exit(), error ? 200 : 5000).unref();
  }

  sender.on('sendable', () => {
    if (cpu0 === null) {
      startNs = nowNs();
      report.start = report.first = startNs / 1e9;
      cpu0 = process.cpuUsage();
      if (opts.count === 0) finish(null);
    }
    schedulePump();
  });
  sender.on('accepted', () => outcome(true));
  sender.on('rejected', () => outcome(false));
  sender.on('released', () => outcome(false));  // rhea: modified is reported as released
  // rhea raises a close at once but the outcomes of the same read later (on the next tick):
  // look once they are in. A receiver that closes when it has its last message is normal.
  const closed = (why) => setImmediate(() => {
    if (opts.presettled && sent === opts.count && lastDelivery?.remote_settled) handedOver();
    if (finished) process.exit();
    finish(why());
  });
  sender.on('sender_close', (context) => closed(() => 'sender closed by the peer'
    + (context.sender.error ? ': ' + errorText(context.sender.error) : '')));
  container.on('connection_close', () => closed(() => 'connection closed by the peer'));
  container.on('disconnected', (context) => closed(() => 'disconnected: '
    + errorText(context.error)));
  container.on('error', (error) => finish('error: ' + errorText(error)));
  // No send and no outcome (nor a paced wait) for --idle seconds (to 1.5 times): give up.
  watchdog = setInterval(() => {
    stalls = sent + settled === progress && timer === null ? stalls + 1 : 0;
    progress = sent + settled;
    if (stalls >= 2) finish(`no progress for ${opts.idle} s after ${sent} sent, ${settled} settled`);
  }, opts.idle * 500);
}

// ---- receiver ------------------------------------------------------------------------------

function runReceiver() {
  const report = newReport();
  const container = rhea.create_container();
  const seen = new Uint8Array(opts.count);
  const samples = opts.rate > 0 ? Buffer.alloc(4 * opts.count) : null;  // latency, us
  let sampled = 0;
  let received = 0;
  let firstNs = 0;
  let lastNs = 0;
  let readyNs = 0;
  let cpu0 = null;
  let finished = false;
  let stdinEnded = false;
  let server = null;
  let idleCheck = null;
  const connections = new Set();
  const linkOptions = { credit_window: opts.credit, autoaccept: false };

  function ready() {
    cpu0 = process.cpuUsage();
    readyNs = nowNs();
    process.stdout.write('ready\n');
    if (opts.count === 0) finish(null);
  }

  function onMessage(context) {
    if (finished) return;
    const section = context.message.body;
    const data = Buffer.isBuffer(section) ? section : section.content;  // data section
    const now = nowNs();
    const seq = data.readUInt32LE(8) + data.readUInt32LE(12) * TWO32;
    if (seq < opts.count && !seen[seq]) {
      seen[seq] = 1;
      report.unique += 1;
    } else {
      report.duplicates += 1;
    }
    if (samples !== null) {
      const stamp = data.readUInt32LE(0) + data.readUInt32LE(4) * TWO32;
      if (stamp) {
        const us = Math.max(1, Math.min(TWO32 - 1, Math.floor((now - stamp) / 1000)));
        samples.writeUInt32LE(us, 4 * sampled);
        sampled += 1;
      }
    }
    received += 1;
    lastNs = now;
    if (received === 1) firstNs = now;
    context.delivery.accept();  // pre-settled: settles it locally, sends nothing
    if (received === opts.count) finish(null);
  }

  function finish(error) {
    if (finished) return;
    finished = true;
    clearInterval(idleCheck);
    if (cpu0 !== null) report.cpu_process = cpuSeconds(cpu0);
    report.count = received;
    report.first = firstNs / 1e9;
    report.last = lastNs / 1e9;
    report.error = error;
    if (samples !== null) {
      report.latency_us_samples_b64 = samples.subarray(0, 4 * sampled).toString('base64');
    }
    emit(report);
    if (stdinEnded) shutdown();
    else setTimeout(shutdown, CLOSE_TIMEOUT_MS);
  }

  // After the report: close what is open and let the loop end (1 s at most).
  function shutdown() {
    for (const connection of connections) {
      if (connection.is_open()) connection.close();
    }
    if (server !== null) server.close();
    process.stdin.destroy();
    setTimeout(() => process.exit(), 1000).unref();
  }

  container.on('receiver_open', (context) => {
    const receiver = context.receiver;
    if (opts.listen) {  // answer the attach with the sender's own terminus addresses
      receiver.set_source(receiver.remote.attach.source || {});
      receiver.set_target(receiver.remote.attach.target || {});
    } else if (cpu0 === null) {
      ready();
    }
  });
  container.on('message', onMessage);
  container.on('connection_open', (context) => connections.add(context.connection));
  container.on('connection_close', (context) => connections.delete(context.connection));
  container.on('disconnected', (context) => {
    connections.delete(context.connection);
    if (!opts.listen && !finished) {
      finish('disconnected after ' + received + ' messages: ' + errorText(context.error));
    }
  });
  container.on('error', (error) => console.error('rhea error:', errorText(error)));

  if (opts.listen) {
    container.sasl_server_mechanisms.enable_anonymous();
    server = container.listen(Object.assign({ host: opts.host, port: opts.port }, linkOptions));
    server.on('listening', ready);
    server.on('error', (error) => {
      console.error('listen failed:', error.message);
      process.exit(2);
    });
  } else {
    const connection = container.connect(
      Object.assign({ host: opts.host, port: opts.port, reconnect: false }, linkOptions));
    connection.open_receiver(Object.assign(
      { name: linkName('receiver'), source: { address: opts.address } }, linkOptions));
  }

  idleCheck = setInterval(() => {
    const since = received ? lastNs : readyNs;
    if (since && nowNs() - since > opts.idle * 1e9) {
      const idle = Number.isInteger(opts.idle) ? opts.idle.toFixed(1) : String(opts.idle);
      finish(`idle for ${idle} s after ${received} messages`);
    }
  }, Math.min(1000, opts.idle * 250));

  process.stdin.on('end', () => {
    stdinEnded = true;
    if (finished) shutdown();
  });
  process.stdin.on('error', () => {
    stdinEnded = true;
    if (finished) shutdown();
  });
  process.stdin.resume();  // read and drop: only the end matters
}

if (opts.role === 'send') runSender();
else runReceiver();

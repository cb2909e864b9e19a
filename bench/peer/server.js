#!/usr/bin/env node
// A fake Hubble Relay for flowpipe's benchmarks: observer.Observer/GetFlows streaming
// pre-serialized GetFlowsResponse templates (written by bench/mix.py), each patched in place
// with a unique uuid and an increasing time, as fast as the client takes them (or at --rate).
//
// Usage: node server.js --templates FILE [--flows N] [--port P] [--rate R] [--sim-rate S]
//                       [--start-ns NS] [--end] [--instance HEX8]
// Prints "PORT <n>" on stdout once listening; send statistics go to stderr.
'use strict';

const fs = require('fs');
const grpc = require('@grpc/grpc-js');

function parseArgs(argv) {
  const opts = {
    templates: null,
    flows: 1000000,
    port: 0,
    host: '127.0.0.1',
    rate: 0, // messages per second, 0 = as fast as the client takes them
    simRate: 30000, // flows per second of simulated flow time
    startNs: null, // time of the first flow (default: now - flows / simRate)
    end: false, // end the stream after the last flow (default: keep it open, like follow)
    instance: null, // 8 hex digits that make this peer's uuids distinct from another's
  };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--templates') opts.templates = next();
    else if (a === '--flows') opts.flows = Number(next());
    else if (a === '--port') opts.port = Number(next());
    else if (a === '--host') opts.host = next();
    else if (a === '--rate') opts.rate = Number(next());
    else if (a === '--sim-rate') opts.simRate = Number(next());
    else if (a === '--start-ns') opts.startNs = BigInt(next());
    else if (a === '--end') opts.end = true;
    else if (a === '--instance') opts.instance = next();
    else if (a === '-h' || a === '--help') {
      process.stdout.write(fs.readFileSync(__filename, 'utf8').split('\n').slice(1, 8).join('\n') + '\n');
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
  if (!opts.templates) throw new Error('--templates FILE is required (python bench/mix.py --templates FILE)');
  if (!(opts.flows > 0) || !(opts.simRate > 0)) throw new Error('--flows and --sim-rate must be positive');
  if (opts.instance !== null && !/^[0-9a-f]{8}$/.test(opts.instance)) throw new Error('--instance must be 8 lowercase hex digits');
  return opts;
}

// ------------------------------------------------------------------ templates

function loadTemplates(path) {
  const buf = fs.readFileSync(path);
  if (buf.toString('latin1', 0, 4) !== 'FPT1') throw new Error(`${path}: not a flowpipe template file`);
  const count = buf.readUInt32LE(4);
  const out = [];
  let off = 8;
  for (let i = 0; i < count; i++) {
    const len = buf.readUInt32LE(off);
    const t = {
      uuid: buf.readUInt32LE(off + 4),
      fsec: buf.readUInt32LE(off + 8),
      fnanos: buf.readUInt32LE(off + 12),
      rsec: buf.readUInt32LE(off + 16),
      rnanos: buf.readUInt32LE(off + 20),
      data: Buffer.from(buf.subarray(off + 24, off + 24 + len)),
    };
    off += 24 + len;
    out.push(t);
  }
  if (out.length === 0) throw new Error(`${path}: no templates`);
  return out;
}

// Five-byte varint in place: value must be in [2^28, 2^35).
function putVarint5(buf, off, v) {
  buf[off] = (v & 0x7f) | 0x80;
  buf[off + 1] = ((v >>> 7) & 0x7f) | 0x80;
  buf[off + 2] = ((v >>> 14) & 0x7f) | 0x80;
  buf[off + 3] = ((v >>> 21) & 0x7f) | 0x80;
  buf[off + 4] = Math.floor(v / 268435456) & 0x7f;
}

const HEX = Buffer.from('0123456789abcdef');
const NANOS_MIN = 268435456; // 2^28: nanos below it would need fewer varint bytes
const NANOS_SPAN = 1000000000 - NANOS_MIN;

class FlowSource {
  constructor(opts, templates) {
    this.templates = templates;
    this.n = opts.flows;
    this.perSec = Math.max(1, Math.round(opts.simRate));
    this.step = Math.floor(NANOS_SPAN / this.perSec);
    const startNs = opts.startNs !== null ? opts.startNs
      : BigInt(Date.now()) * 1000000n - BigInt(Math.ceil(this.n / this.perSec)) * 1000000000n;
    this.baseSec = Number(startNs / 1000000000n);
    const inst = opts.instance || require('crypto').randomBytes(4).toString('hex');
    // xxxxxxxx-xxxx-4xxx-8xxx-cccccccccccc: instance, version 4, variant 10, counter
    this.prefix = Buffer.from(`${inst}-0000-4000-8000-`, 'latin1');
  }

  // Time of flow i as (seconds, nanos): perSec flows per simulated second, nanos >= 2^28.
  timeOf(i) {
    return [this.baseSec + Math.floor(i / this.perSec), NANOS_MIN + (i % this.perSec) * this.step];
  }

  // Index of the first flow at or after `since` (seconds, nanos); 0 when since is unset.
  firstAtOrAfter(sinceSec, sinceNanos) {
    let lo = 0;
    let hi = this.n;
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2);
      const [s, ns] = this.timeOf(mid);
      if (s < sinceSec || (s === sinceSec && ns < sinceNanos)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  // A fresh buffer holding flow i (grpc-js may queue it, so never reuse it).
  message(i) {
    const t = this.templates[i % this.templates.length];
    const out = Buffer.allocUnsafe(t.data.length);
    t.data.copy(out);
    this.prefix.copy(out, t.uuid);
    let c = i;
    const end = t.uuid + 36;
    for (let k = 1; k <= 12; k++) {
      out[end - k] = HEX[c % 16];
      c = Math.floor(c / 16);
    }
    const [s, ns] = this.timeOf(i);
    putVarint5(out, t.fsec, s);
    putVarint5(out, t.fnanos, ns);
    putVarint5(out, t.rsec, s);
    putVarint5(out, t.rnanos, ns);
    return out;
  }
}

// ------------------------------------------------------------------ request

function readVarint(buf, pos) {
  let result = 0;
  let mul = 1;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const b = buf[pos++];
    result += (b & 0x7f) * mul;
    if (b < 0x80) return [result, pos];
    mul *= 128;
  }
}

// Just enough of GetFlowsRequest: number (1), follow (3), since (7: seconds 1, nanos 2).
function decodeRequest(buf) {
  const req = { number: 0, follow: false, sinceSec: null, sinceNanos: 0 };
  let pos = 0;
  while (pos < buf.length) {
    let tag;
    [tag, pos] = readVarint(buf, pos);
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (wire === 0) {
      let v;
      [v, pos] = readVarint(buf, pos);
      if (field === 1) req.number = v;
      else if (field === 3) req.follow = v !== 0;
    } else if (wire === 2) {
      let len;
      [len, pos] = readVarint(buf, pos);
      if (field === 7) {
        const sub = buf.subarray(pos, pos + len);
        req.sinceSec = 0;
        let p = 0;
        while (p < sub.length) {
          let t;
          let v;
          [t, p] = readVarint(sub, p);
          [v, p] = readVarint(sub, p);
          if (t === 8) req.sinceSec = v;
          else if (t === 16) req.sinceNanos = v;
        }
      }
      pos += len;
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else throw new Error(`unsupported wire type ${wire}`);
  }
  return req;
}

// ------------------------------------------------------------------ server

const stats = { calls: 0, sent: 0, firstAt: 0, lastAt: 0, reported: false };

function report(reason) {
  if (stats.reported) return;
  stats.reported = true;
  const secs = stats.firstAt ? (stats.lastAt - stats.firstAt) / 1e9 : 0;
  const rate = secs > 0 ? stats.sent / secs : 0;
  process.stderr.write(`peer: ${reason}: sent ${stats.sent} messages on ${stats.calls} call(s) in ` +
    `${secs.toFixed(2)}s = ${Math.round(rate)} msgs/s\n`);
}

function main() {
  const opts = parseArgs(process.argv);
  const source = new FlowSource(opts, loadTemplates(opts.templates));

  function getFlows(call) {
    stats.calls += 1;
    const req = call.request;
    let i = req.sinceSec !== null ? source.firstAtOrAfter(req.sinceSec, req.sinceNanos) : 0;
    const limit = req.number > 0 && !req.follow ? Math.min(source.n, i + req.number) : source.n;
    let done = false;
    const t0 = process.hrtime.bigint();
    let sentHere = 0;
    call.on('cancelled', () => { done = true; });
    call.on('error', () => { done = true; });

    const finish = () => {
      stats.lastAt = Number(process.hrtime.bigint());
      if (!stats.reported && i >= source.n) report(`all ${source.n} flows sent`);
      if (opts.end || !req.follow) call.end();
      // else: keep the stream open like Relay does in follow mode, until the client leaves
    };

    const pump = () => {
      if (done) return;
      let budget = Infinity;
      if (opts.rate > 0) {
        const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
        budget = Math.floor(elapsed * opts.rate) - sentHere;
        if (budget <= 0) {
          setTimeout(pump, 1);
          return;
        }
      }
      while (i < limit && budget > 0) {
        if (!stats.firstAt) stats.firstAt = Number(process.hrtime.bigint());
        const ok = call.write(source.message(i));
        i++;
        sentHere++;
        stats.sent++;
        budget--;
        if (!ok) {
          stats.lastAt = Number(process.hrtime.bigint());
          call.once('drain', pump); // flow control: wait until the client takes more
          return;
        }
      }
      stats.lastAt = Number(process.hrtime.bigint());
      if (i >= limit) {
        finish();
        return;
      }
      if (opts.rate > 0) setTimeout(pump, 1);
      else setImmediate(pump);
    };
    pump();
  }

  const service = {
    GetFlows: {
      path: '/observer.Observer/GetFlows',
      requestStream: false,
      responseStream: true,
      requestSerialize: (b) => b,
      requestDeserialize: decodeRequest,
      responseSerialize: (b) => b, // already a serialized GetFlowsResponse
      responseDeserialize: (b) => b,
    },
  };
  const server = new grpc.Server({
    'grpc.max_send_message_length': 64 * 1024 * 1024,
  });
  server.addService(service, { GetFlows: getFlows });
  server.bindAsync(`${opts.host}:${opts.port}`, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) {
      process.stderr.write(`peer: cannot listen: ${err.message}\n`);
      process.exit(2);
    }
    process.stdout.write(`PORT ${port}\n`);
  });
  const stop = (sig) => {
    stats.lastAt = stats.lastAt || Number(process.hrtime.bigint());
    report(`stopped by ${sig}`);
    server.forceShutdown();
    process.exit(0);
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

try {
  main();
} catch (err) {
  process.stderr.write(`peer: error: ${err.message}\n`);
  process.exit(2);
}

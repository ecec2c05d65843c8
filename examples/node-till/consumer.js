#!/usr/bin/env node
// A CRM's consumer of a partner's event feed, in Node with @grpc/grpc-js.
//
// Follows WatchEvents from the event after the last one it processed, which it keeps in a cursor
// file: after an outage of the daemon, of the network or of itself it starts again from there and
// misses nothing. An event is written out, then the cursor moved past it (so after a crash the
// last event may come once more: a CRM tells a repeat by its event_id). A cursor older than the
// daemon keeps events for is refused (FAILED_PRECONDITION / CURSOR_EXPIRED).
'use strict';

const fs = require('fs');
const path = require('path');
const { parseArgs } = require('util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.resolve(__dirname, '../../proto');

function readCursor(file) {
  try { return Number(fs.readFileSync(file, 'utf8').trim() || 0); } catch { return 0; }
}

// Atomically: a crash leaves the old cursor or the new one, never half.
function writeCursor(file, seq) {
  fs.writeFileSync(`${file}.tmp`, String(seq));
  fs.renameSync(`${file}.tmp`, file);
}

function main() {
  const { values: a } = parseArgs({
    options: {
      addr: { type: 'string' }, ca: { type: 'string' }, cert: { type: 'string' }, key: { type: 'string' },
      cursor: { type: 'string' }, out: { type: 'string' }, max: { type: 'string', default: '0' },
      idle: { type: 'string', default: '0' },
    },
  });
  for (const k of ['addr', 'ca', 'cert', 'key', 'cursor', 'out']) {
    if (!a[k]) throw new Error(`--${k} is required`);
  }
  const def = protoLoader.loadSync('coalition/v1/partner.proto', {
    includeDirs: [PROTO], keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true,
  });
  const v1 = grpc.loadPackageDefinition(def).coalition.v1;
  const creds = grpc.credentials.createSsl(
    fs.readFileSync(a.ca), fs.readFileSync(a.key), fs.readFileSync(a.cert));
  const feed = new v1.PartnerService(a.addr, creds, { 'grpc.ssl_target_name_override': 'localhost' });
  const start = readCursor(a.cursor) + 1;
  console.log(`resuming from sequence ${start}`);
  const stream = feed.WatchEvents({ fromSequence: start });
  const max = Number(a.max);
  const idle = Number(a.idle) * 1000;
  let seen = 0;
  let timer = null;
  const stop = () => { stream.cancel(); };
  const quiet = () => { if (idle) { clearTimeout(timer); timer = setTimeout(stop, idle); } };
  quiet();
  stream.on('data', (event) => {
    // Process first (here: keep it), then acknowledge it by moving the cursor.
    fs.appendFileSync(a.out, `${JSON.stringify(event)}\n`);
    writeCursor(a.cursor, event.sequence);
    seen += 1;
    quiet();
    if (max && seen >= max) stop();
  });
  stream.on('error', (e) => {
    clearTimeout(timer);
    if (e.code !== grpc.status.CANCELLED) {
      console.log(`refused: ${grpc.status[e.code]}: ${e.details}`);
      process.exitCode = 1;
    }
  });
  stream.on('close', () => {
    clearTimeout(timer);
    console.log(`processed ${seen} events, cursor at ${readCursor(a.cursor)}`);
    feed.close();
  });
}

main();

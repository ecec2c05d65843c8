#!/usr/bin/env node
// A CRM's webhook receiver: the daemon posts each of the partner's events to it, in order, signed
// as the Standard Webhooks convention signs. Every delivery is verified with the Standard Webhooks
// library (npm `standardwebhooks`) before anything else: a bad signature, or a timestamp more than
// five minutes off, is answered 400 and never processed. A delivery may come twice (after a daemon
// died mid-delivery): its `webhook-id` tells the repeat.
//
//   node webhook_receiver.js --port 8080 --secret whsec_... --out events.jsonl
'use strict';

const fs = require('fs');
const http = require('http');
const { parseArgs } = require('util');
const { Webhook } = require('standardwebhooks');

const { values: a } = parseArgs({
  options: { port: { type: 'string' }, secret: { type: 'string' }, out: { type: 'string' } },
});
for (const k of ['port', 'secret', 'out']) {
  if (!a[k]) throw new Error(`--${k} is required`);
}
// The library takes the base64 key; the daemon's secrets are "whsec_" and that key.
const webhook = new Webhook(a.secret.replace(/^whsec_/, ''));
const seen = new Set();

http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    let event;
    try {
      event = webhook.verify(body, req.headers);
    } catch {
      res.writeHead(400).end();
      return;
    }
    const id = req.headers['webhook-id'];
    if (!seen.has(id)) { // a repeat is acknowledged, not processed
      seen.add(id);
      fs.appendFileSync(a.out, `${JSON.stringify(event)}\n`);
    }
    res.writeHead(204).end();
  });
}).listen(Number(a.port), '127.0.0.1', () => console.log(`listening on 127.0.0.1:${a.port}`));

#!/usr/bin/env node
// A till's day against the coalition daemon, in Node with @grpc/grpc-js and @grpc/proto-loader.
//
// Loads the project's proto/ at run time (nothing generated is kept), connects with a partner
// certificate over mTLS, and plays a day: an earn on a purchase, a burn retried after a timeout
// with the same transaction id, a partial return, the balance and the activity list, and a
// refusal handled by its google.rpc.ErrorInfo reason (never by the message text).
'use strict';

const fs = require('fs');
const path = require('path');
const { parseArgs } = require('util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO = path.resolve(__dirname, '../../proto');

// google.rpc.Status and ErrorInfo, as the gRPC error model defines them: the daemon puts a
// Status with an ErrorInfo in the `grpc-status-details-bin` trailer of every refusal.
const rpc = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: { nested: { Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } } } },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
          },
        },
      },
    },
  },
});
const Status = rpc.lookupType('google.rpc.Status');
const ErrorInfo = rpc.lookupType('google.rpc.ErrorInfo');

/** The ErrorInfo reason of a refusal ('' if it carries none). */
function reason(err) {
  const bin = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  if (!bin) return '';
  const status = Status.decode(bin);
  for (const d of status.details) {
    if (d.type_url.endsWith('/google.rpc.ErrorInfo')) return ErrorInfo.decode(d.value).reason;
  }
  return '';
}

/** Calls `method` on `client` as a promise, with a deadline `ms` from now. */
function call(client, method, request, ms) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: new Date(Date.now() + ms) }, (err, res) =>
      err ? reject(err) : resolve(res));
  });
}

async function main() {
  const { values: a } = parseArgs({
    options: {
      addr: { type: 'string' }, ca: { type: 'string' }, cert: { type: 'string' },
      key: { type: 'string' }, member: { type: 'string' }, run: { type: 'string', default: 'node' },
    },
  });
  for (const k of ['addr', 'ca', 'cert', 'key', 'member']) {
    if (!a[k]) throw new Error(`--${k} is required`);
  }
  const def = protoLoader.loadSync('coalition/v1/partner.proto', {
    includeDirs: [PROTO], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
  });
  const v1 = grpc.loadPackageDefinition(def).coalition.v1;
  const creds = grpc.credentials.createSsl(
    fs.readFileSync(a.ca), fs.readFileSync(a.key), fs.readFileSync(a.cert));
  // The daemon's certificate names localhost.
  const till = new v1.PartnerService(a.addr, creds, { 'grpc.ssl_target_name_override': 'localhost' });
  const id = (name) => `${a.run}-${name}`;

  // 1. A sale: points on the purchase.
  const sale = (await call(till, 'Earn', {
    transaction_id: id('sale-1'), member_id: a.member, purchase: { amount: '42.50', currency: 'EUR' },
  }, 10000)).receipt;
  console.log(`sale: earned ${sale.points} points, balance ${sale.balance_after}`);

  // 2. A redemption whose first attempt times out: retry with the same transaction id. Whether
  //    or not the first attempt reached the daemon, the points are spent once.
  const redeem = { transaction_id: id('redeem-1'), member_id: a.member, points: 20 };
  try {
    await call(till, 'Burn', redeem, 0);
    console.log('redeem: first attempt answered');
  } catch (e) {
    if (e.code !== grpc.status.DEADLINE_EXCEEDED) throw e;
    console.log('redeem: first attempt timed out; retrying with the same transaction id');
  }
  const burned = (await call(till, 'Burn', redeem, 10000)).receipt;
  console.log(`redeem: spent ${burned.points} points, balance ${burned.balance_after}`);
  const again = (await call(till, 'Burn', redeem, 10000)).receipt;
  if (JSON.stringify(again) !== JSON.stringify(burned)) throw new Error('a retry changed the receipt');
  console.log('redeem: a retry answered with the first receipt');

  // 3. A partial return: take back 10 points of the sale.
  const back = (await call(till, 'ReverseEarn', {
    transaction_id: id('return-1'), original_transaction_id: id('sale-1'), points: 10,
  }, 10000)).receipt;
  console.log(`return: took back ${back.points} points, balance ${back.balance_after}`);

  // 4. The balance and the activity list.
  const balance = await call(till, 'GetBalance', { member_id: a.member }, 10000);
  const activity = await call(till, 'ListMemberActivity', { member_id: a.member, page_size: 10 }, 10000);
  const kinds = activity.transactions.map((t) => t.receipt.kind);
  console.log(`activity: ${kinds.length} transactions, newest first: ${kinds.join(', ')}`);

  // 5. A refusal, handled by its reason.
  try {
    await call(till, 'Burn', {
      transaction_id: id('too-much'), member_id: a.member, points: balance.points + 1000000,
    }, 10000);
    console.log('error: a burn beyond the balance was accepted');
    process.exitCode = 1;
    return;
  } catch (e) {
    if (reason(e) !== 'INSUFFICIENT_POINTS') throw e;
    console.log(`refused as expected: ${reason(e)} (${grpc.status[e.code]})`);
  }
  console.log(`final balance: ${balance.points}`);
  till.close();
}

main().catch((e) => {
  console.error(`till failed: ${e.code !== undefined ? grpc.status[e.code] + ' ' : ''}${e.message}`);
  process.exit(1);
});

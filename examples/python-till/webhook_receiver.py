#!/usr/bin/env python3
"""A CRM's webhook receiver: the daemon posts each of the partner's events to it, in order,
signed as the Standard Webhooks convention signs. Every delivery is verified with the Standard
Webhooks library (`pip install standardwebhooks`) before anything else: a bad signature, or a
timestamp more than five minutes off, is answered 400 and never processed. A delivery may come
twice (after a daemon died mid-delivery): its `webhook-id` tells the repeat.

    python3 webhook_receiver.py --port 8080 --secret whsec_... --out events.jsonl
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secret", required=True, help="the partner's signing secret (whsec_...)")
    ap.add_argument("--out", required=True, help="file the verified events are appended to")
    args = ap.parse_args()
    webhook = Webhook(args.secret)
    seen = set()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                event = webhook.verify(body, headers)  # the parsed JSON, once verified
            except WebhookVerificationError:
                self.send_response(400)
                self.end_headers()
                return
            if headers["webhook-id"] not in seen:  # a repeat is acknowledged, not processed
                seen.add(headers["webhook-id"])
                with open(args.out, "a") as out:
                    out.write(json.dumps(event) + "\n")
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), Receiver).serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A webhook receiver for the behaviour tests: every delivery is verified with the Standard Webhooks
library (`standardwebhooks`) against the secrets listed in a file (re-read on each delivery, so a
test can change them), recorded as one JSON line, and answered 204 — or 400 when no secret
verifies it.

    receiver.py PORT SECRETS_FILE RECORD_FILE
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

PORT, SECRETS, RECORD = int(sys.argv[1]), sys.argv[2], sys.argv[3]


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        secrets = [s.strip() for s in open(SECRETS).read().splitlines() if s.strip()]
        verified_with = None
        for i, secret in enumerate(secrets):
            try:
                Webhook(secret).verify(body, headers)
                verified_with = i
                break
            except Exception:
                pass
        event = json.loads(body)
        with open(RECORD, "a") as f:
            f.write(json.dumps({
                "id": headers.get("webhook-id"),
                "sequence": int(event.get("sequence", 0)),
                "type": event.get("type"),
                "verified_with": verified_with,
            }) + "\n")
        self.send_response(204 if verified_with is not None else 400)
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Receiver).serve_forever()

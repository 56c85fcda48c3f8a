#!/usr/bin/env python3
"""A webhook receiver for the tests, verifying with the standardwebhooks library.

    webhook_receiver.py --secret TENANT=whsec_... [--secret ...] [--hang SECONDS]

Listens on a free loopback port and prints `listening PORT` first. The
path says whose receiver it is and how it answers:

    /TENANT/ok        204
    /TENANT/failN     500 to the first N attempts of each webhook-id, then 204
    /TENANT/hang      answers nothing for --hang seconds, then 204
    /TENANT/gone      410

Every request is checked with standardwebhooks.Webhook(secret).verify() under
the tenant's secret, and printed as one JSON line: the webhook-id, whether it
verified (and why not), the status answered, the tenant and path, the job id,
status and updated_at in the body, and when it arrived and was verified
(Unix seconds).
"""

import argparse
import http.server
import json
import sys
import threading
import time

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

LOCK = threading.Lock()
ATTEMPTS = {}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--secret", action="append", default=[])
    parser.add_argument("--hang", type=float, default=30.0)
    args = parser.parse_args()
    secrets = dict(pair.split("=", 1) for pair in args.secret)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def do_POST(self):
            arrived = time.time()
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            _, tenant, mode = (self.path.split("/") + ["", ""])[:3]
            headers = {k: v for k, v in self.headers.items()}
            record = {
                "id": headers.get("webhook-id"),
                "tenant": tenant,
                "mode": mode,
                "arrived": arrived,
                "signatures": len(headers.get("webhook-signature", "").split()),
            }
            try:
                job = Webhook(secrets[tenant]).verify(body, headers)
                record.update(
                    verified=True,
                    verified_at=time.time(),
                    job_id=job.get("id"),
                    job_status=job.get("status"),
                    job_updated_at=job.get("updated_at"),
                )
            except (WebhookVerificationError, KeyError, ValueError) as e:
                record.update(verified=False, why=repr(e))
            with LOCK:
                seen = ATTEMPTS.get(record["id"], 0) + 1
                ATTEMPTS[record["id"]] = seen
            record["attempt"] = seen
            if mode.startswith("fail") and seen <= int(mode[4:] or "0"):
                status = 500
            elif mode == "gone":
                status = 410
            elif mode == "hang":
                time.sleep(args.hang)
                status = 204
            else:
                status = 204
            record["status"] = status
            with LOCK:
                print(json.dumps(record), flush=True)
            reply = b"" if status == 204 else b"not now"
            try:
                self.send_response(status)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()

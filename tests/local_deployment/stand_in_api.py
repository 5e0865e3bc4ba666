"""A stand-in for `python -m uvicorn api.main:app ... --workers N`, for the readiness tests:
it answers /healthz at once, but says "Application startup complete" only as many times
as STAND_IN_STARTED says, as when some of a server's workers are still importing."""

from __future__ import annotations

import argparse
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Healthz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("app")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--no-access-log", action="store_true")
    args = parser.parse_args()
    server = HTTPServer((args.host, args.port), Healthz)
    for _ in range(int(os.environ["STAND_IN_STARTED"])):
        print("INFO:     Application startup complete.", flush=True)
    server.serve_forever()

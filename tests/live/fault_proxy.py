"""A misbehaving server for ``kvfp query``'s tests: forwards to a real upstream over HTTP and
injects one kind of fault. Run as a script (its own process, its own loopback port):

    python tests/live/fault_proxy.py UPSTREAM PORT MODE

Modes: ``ok``; ``429`` (every other request answered 429 with Retry-After: 1); ``stall`` (the
second request waits 6 s before answering); ``badjson`` (the second request gets a 200 whose body is
not JSON); ``fewer-topk`` (every top-k list cut to 5 entries); ``short-step`` (one chat step's list
cut by one); ``auth`` (401 unless ``Authorization: Bearer kvfp-test-secret``);
``die-after-N`` (the process exits after N answered requests, as a crashed server).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

UPSTREAM, PORT, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
count = 0
lock = threading.Lock()


def _cut_topk(body: dict, keep: int | None) -> dict:
    for ch in body.get("choices", []):
        lp = ch.get("logprobs") or {}
        if isinstance(lp.get("top_logprobs"), list):
            lp["top_logprobs"] = [dict(list(r.items())[:keep]) if isinstance(r, dict) else r
                                  for r in lp["top_logprobs"]]
        if isinstance(lp.get("content"), list):
            if keep is None:  # one step short by one entry
                lp["content"][1]["top_logprobs"] = lp["content"][1]["top_logprobs"][:-1]
            else:
                for e in lp["content"]:
                    e["top_logprobs"] = e["top_logprobs"][:keep]
    return body


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status: int, payload: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def _forward(self, method: str):
        global count
        with lock:  # requests are counted from the first POST: the readiness check's GETs are not faults
            count += method == "POST"
            n = count
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
        if MODE == "auth" and method == "POST" and self.headers.get("Authorization") != "Bearer kvfp-test-secret":
            return self._send(401, b'{"error": {"message": "invalid api key"}}')
        if MODE == "429" and n % 2 == 1:
            return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"})
        if MODE == "stall" and n == 2:
            time.sleep(6)
        if MODE == "badjson" and n == 2:
            return self._send(200, b'{"choices": [')
        r = httpx.request(method, UPSTREAM + self.path, content=data,
                          headers={"Content-Type": "application/json"}, timeout=120)
        payload = r.content
        if MODE in ("fewer-topk", "short-step") and r.status_code == 200 and method == "POST":
            payload = json.dumps(_cut_topk(r.json(), 5 if MODE == "fewer-topk" else None)).encode()
        try:
            self._send(r.status_code, payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if MODE.startswith("die-after-") and method == "POST" and n >= int(MODE.rsplit("-", 1)[1]):
            self.wfile.flush()
            os._exit(0)

    def do_GET(self):
        self._forward("GET")

    def do_POST(self):
        self._forward("POST")


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()

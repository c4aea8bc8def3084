"""A stand-in for llama.cpp's `llama-server` in tests (tests/test_bench_llamacpp.py): a
real HTTP process, started with the server's command line, that speaks the part of the
OpenAI-compatible API the remote backend uses: /health (503 on the first call, as while
a model loads, then 200) and streamed /v1/chat/completions; and `--version`. It answers
a fixed reply, cut to `max_tokens` pieces, to the model name given by --alias, and
writes what it saw (its arguments, each request's body, the most requests at once) to
the file named by STAND_IN_RECORD. STAND_IN_FAIL=1: it exits at once with an error, as
the real server does on a bad argument; STAND_IN_IGNORE_TERM=1: it ignores SIGTERM.

The real binary is exercised by the benchmark run itself (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY = ["Try", " Heat", ",", " a", " heist", " film", " with", " a", " twist", "."]


def option(argv: list[str], name: str, default: str = "") -> str:
    return argv[argv.index(name) + 1] if name in argv else default


class State:
    def __init__(self, argv: list[str], record: str) -> None:
        self.lock = threading.Lock()
        self.argv = argv
        self.record = record
        self.health_calls = 0
        self.running = 0
        self.most = 0
        self.bodies: list[dict[str, Any]] = []

    def save(self) -> None:
        if not self.record:
            return
        data = {"argv": self.argv, "most_at_once": self.most, "bodies": self.bodies}
        tmp = f"{self.record}.tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(data, out)
        os.replace(tmp, self.record)


def handler(state: State, alias: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path != "/health":
                self._json(404, {"error": {"message": "not found"}})
                return
            with state.lock:
                state.health_calls += 1
                loading = state.health_calls == 1
            if loading:
                self._json(503, {"error": {"message": "Loading model"}})
            else:
                self._json(200, {"status": "ok"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path != "/v1/chat/completions" or body.get("model") != alias:
                self._json(404, {"error": {"message": f"no {self.path} for {body.get('model')}"}})
                return
            with state.lock:
                state.running += 1
                state.most = max(state.most, state.running)
                state.bodies.append(body)
                state.save()
            finished = False

            def finish() -> None:
                nonlocal finished
                if not finished:
                    finished = True
                    with state.lock:
                        state.running -= 1

            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                pieces = REPLY[: max(1, int(body.get("max_tokens", len(REPLY))))]
                for piece in pieces:
                    event = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                # The slot is free before the last event goes out, as the real server
                # frees it: a client that sent its next request on reading [DONE] must
                # not find this one still counted (seen on a busy machine: 3 of 2).
                finish()
                done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
                self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()
            finally:
                finish()
            self.close_connection = True

    return Handler


def main(argv: list[str]) -> int:
    if argv == ["--version"]:
        print("version: 0 (stand-in)", file=sys.stderr)
        return 0
    if os.environ.get("STAND_IN_FAIL") == "1":
        print("error: invalid argument: --stand-in-fails", file=sys.stderr)
        return 1
    if os.environ.get("STAND_IN_IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    state = State(argv, os.environ.get("STAND_IN_RECORD", ""))
    state.save()
    host, port = option(argv, "--host", "127.0.0.1"), int(option(argv, "--port", "8080"))
    server = ThreadingHTTPServer((host, port), handler(state, option(argv, "--alias")))
    print(f"stand-in listening on {host}:{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

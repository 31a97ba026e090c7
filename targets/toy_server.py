"""A small OpenAI-style completion server with the habits of a Python LLM wrapper.

It stands in for a real serving stack (BentoML and a compiled engine arrive
with their own issue) on machines without a GPU, and it keeps the CPU-side
behaviour Gapscope is built to explain:

* one thread per request (ThreadingHTTPServer), all contending for the GIL;
* a process-wide model lock, as naive wrappers use to serialise `generate()`;
* a simulated GPU step per token: `time.sleep` (the thread waits, the GIL is
  released, exactly like a host-side CUDA synchronize);
* Python work per token while holding the GIL (sampling, detokenising);
* JSON serialisation of every streamed chunk (SSE).

Routes: POST /v1/completions and /v1/chat/completions (streamed as SSE or
whole; `stream_options.include_usage` adds a usage chunk), GET /health.
"""

import argparse
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL_LOCK = threading.Lock()
VOCAB = [w for w in "the a of to and in is it that for on with as was by at be this from".split()]


def python_step(n: int) -> int:
    """Pure-Python per-token work that holds the GIL (sampling, bookkeeping)."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1_000_003
    return acc


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gapscope-toy/1"

    def log_message(self, fmt, *args):  # quiet: the demo prints its own report
        pass

    def _send_json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self._send_json(200, {"status": "ok"})
        else:
            self._send_json(404, {"error": f"no route {self.path}"})

    def do_POST(self):
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            self._send_json(404, {"error": f"no route {self.path}"})
            return
        chat = self.path == "/v1/chat/completions"
        try:
            length = int(self.headers.get("Content-Length", "0"))
            req = json.loads(self.rfile.read(length) or b"{}")
            max_tokens = int(req.get("max_tokens", 16))
            stream = bool(req.get("stream", False))
            include_usage = bool((req.get("stream_options") or {}).get("include_usage", False))
            prompt = req["messages"][-1]["content"] if chat else req.get("prompt", "")
        except (ValueError, TypeError, KeyError, IndexError) as e:
            self._send_json(400, {"error": f"bad request body: {e}"})
            return
        if not 1 <= max_tokens <= 4096:
            self._send_json(400, {"error": "max_tokens must be between 1 and 4096"})
            return
        rng = random.Random(hash(prompt))
        step_s = self.server.step_ms / 1000.0
        if stream:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
        words = []
        for i in range(max_tokens):
            with MODEL_LOCK:  # the naive wrapper's model lock
                time.sleep(step_s)  # the "GPU" step: host waits, GIL released
            python_step(self.server.python_work)
            word = rng.choice(VOCAB)
            words.append(word)
            if stream:
                finish = "length" if i == max_tokens - 1 else None
                if chat:
                    choice = {"index": 0, "delta": {"content": " " + word}, "finish_reason": finish}
                else:
                    choice = {"index": 0, "text": " " + word, "finish_reason": finish}
                chunk = {"id": "cmpl-toy", "object": "chat.completion.chunk" if chat else "text_completion",
                         "choices": [choice]}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
        usage = {"prompt_tokens": len(str(prompt).split()), "completion_tokens": max_tokens}
        if stream:
            if include_usage:
                chunk = {"id": "cmpl-toy", "choices": [], "usage": usage}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.close_connection = True
        elif chat:
            self._send_json(200, {"id": "cmpl-toy", "object": "chat.completion",
                                  "choices": [{"index": 0, "finish_reason": "length",
                                               "message": {"role": "assistant", "content": " ".join(words)}}],
                                  "usage": usage})
        else:
            self._send_json(200, {"id": "cmpl-toy", "object": "text_completion",
                                  "choices": [{"index": 0, "text": " ".join(words),
                                               "finish_reason": "length"}],
                                  "usage": usage})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8300)
    ap.add_argument("--step-ms", type=float, default=2.0, help="simulated GPU time per token")
    ap.add_argument("--python-work", type=int, default=20000, help="GIL-held loop iterations per token")
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.step_ms = args.step_ms
    server.python_work = args.python_work
    print(f"toy_server listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

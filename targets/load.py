"""A short, bounded load for the demo: C concurrent clients stream completions
from a local server for D seconds, then print what they got.

The real load generator (gapscope-loadgen) is its own issue; this one only
has to keep the server busy while gapscoped watches.
"""

import argparse
import http.client
import json
import threading
import time


def client(host: str, port: int, deadline: float, max_tokens: int, stats: dict, lock: threading.Lock) -> None:
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        body = json.dumps({"prompt": "why is the gpu idle", "max_tokens": max_tokens, "stream": True})
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        tokens = 0
        for line in resp:
            if line.startswith(b"data: {"):
                tokens += 1
        conn.close()
        with lock:
            stats["requests"] += 1
            stats["tokens"] += tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    stats = {"requests": 0, "tokens": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + args.duration
    threads = [threading.Thread(target=client, args=(args.host, args.port, deadline, args.max_tokens, stats, lock))
               for _ in range(args.concurrency)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    print(json.dumps({"requests": stats["requests"], "tokens": stats["tokens"],
                      "seconds": round(elapsed, 2), "tokens_per_second": round(stats["tokens"] / elapsed, 1)}))


if __name__ == "__main__":
    main()

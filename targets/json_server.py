"""A threaded HTTP server doing JSON work, for the overhead benchmark.

POST /work with a JSON body: the server parses it, does a little Python work
per item, and answers with a JSON document. HTTP/1.1 keep-alive, one thread
per connection, so the threads share (and contend for) the GIL as a
typical Python wrapper's do.
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without this, Nagle's algorithm
    # and delayed ACKs hold every response for 40 ms.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        try:
            doc = json.loads(self.rfile.read(length))
            items = doc["items"]
        except (ValueError, KeyError, TypeError) as e:
            body = json.dumps({"error": f"bad body: {e}"}).encode()
            self.send_response(400)
        else:
            scored = [{"id": it["id"], "score": sum(ord(c) for c in it["text"]) % 997} for it in items]
            body = json.dumps({"results": scored}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

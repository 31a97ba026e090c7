"""The OpenAI-compatible HTTP front of the stacks that run on a bare
PyTorch host (engine.py, wrapper.py): the standard library's threading
HTTP server, one thread per connection, nothing else to install.

A stack gives `serve()` a Backend: `encode(prompt)`, `chat(messages)`,
`tokens(input_ids, opts)` (an iterator of generated token ids, which may
block) and `text(ids)`. This module owns everything else: parsing and
validating requests (a 4xx naming the field and the fix), the
`/v1/completions` and `/v1/chat/completions` replies, whole or streamed as
SSE (chunked on HTTP/1.1, until close on HTTP/1.0), usage, `/v1/models`
and `/health`.

Invariant: a stream carries one chunk per generated token, in order, and
its last chunk's usage counts exactly the tokens streamed.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

MAX_TOKENS_LIMIT = 4096
MAX_BODY = 4 << 20


class BadRequest(Exception):
    """A request the stack cannot serve; the message says what to change."""


def parse_options(body: Any, eos: int) -> dict[str, Any]:
    """The sampling options of a request body (both APIs)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 16))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise BadRequest(f"max_tokens must be an integer from 1 to {MAX_TOKENS_LIMIT}, got {max_tokens!r}")
    temperature = body.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
        raise BadRequest(f"temperature must be a non-negative number, got {temperature!r}")
    min_tokens = body.get("min_tokens", 0)
    if not isinstance(min_tokens, int) or isinstance(min_tokens, bool) or min_tokens < 0:
        raise BadRequest(f"min_tokens must be a non-negative integer, got {min_tokens!r}")
    if body.get("ignore_eos"):
        min_tokens = max_tokens
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise BadRequest("stream_options must be an object")
    return {
        "max_tokens": max_tokens,
        "min_tokens": min(min_tokens, max_tokens),
        "temperature": float(temperature),
        "stream": bool(body.get("stream", False)),
        "continuous_usage": bool(stream_options.get("continuous_usage_stats", False)),
        "eos": eos,
    }


class Detokenizer:
    """Text deltas of a growing token list, decoding a few tokens at a time
    (not the whole reply per token): a delta ending inside a UTF-8 sequence
    is held back until the sequence completes."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.backend.text(self.ids[self.prefix:self.read])
        after = self.backend.text(self.ids[self.prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]


def serve(backend, host: str, port: int, model: str, about: dict[str, Any], counters=None) -> None:
    """Serves until the process is stopped. `about` goes into /v1/models
    and /health, so every client can see which stack answered; `counters()`,
    when given, adds the stack's own counters to /health."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "gapscope-stack"

        def log_message(self, fmt, *args):  # one line per request is noise at 50 streams
            pass

        # --- plumbing ------------------------------------------------------

        def reply(self, status: int, doc: Any) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, status: int, message: str) -> None:
            self.reply(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

        def body(self) -> Any:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise BadRequest("a body with Content-Length is needed")
            if int(length) > MAX_BODY:
                raise BadRequest(f"the body is over {MAX_BODY} bytes: send a shorter prompt")
            raw = self.rfile.read(int(length))
            try:
                return json.loads(raw)
            except ValueError as e:
                raise BadRequest(f"the body is not JSON ({e}): send a JSON object") from None

        # --- routes --------------------------------------------------------

        def do_GET(self):
            if self.path in ("/health", "/healthz", "/readyz"):
                self.reply(200, {"status": "ok", **about, **(counters() if counters else {})})
            elif self.path == "/v1/models":
                self.reply(200, {"object": "list",
                                 "data": [{"id": model, "object": "model", "owned_by": "gapscope", **about}]})
            else:
                self.error(404, f"no route {self.path}: use /v1/completions, /v1/chat/completions, /v1/models")

        def do_POST(self):
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                length = self.headers.get("Content-Length", "")
                if length.isdigit() and int(length) <= MAX_BODY:
                    self.rfile.read(int(length))  # so a kept-alive connection stays in step
                else:
                    self.close_connection = True
                self.error(404, f"no route {self.path}: use /v1/completions or /v1/chat/completions")
                return
            chat = self.path == "/v1/chat/completions"
            try:
                body = self.body()
                opts = parse_options(body, backend.eos)
                if chat:
                    messages = body.get("messages")
                    if not isinstance(messages, list) or not messages or not all(
                        isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
                    ):
                        raise BadRequest("messages must be a non-empty list of {role, content} objects")
                    input_ids = backend.chat(messages)
                else:
                    prompt = body.get("prompt")
                    if isinstance(prompt, list) and len(prompt) == 1:
                        prompt = prompt[0]
                    if not isinstance(prompt, str):
                        raise BadRequest("prompt must be a string (or a list of one string)")
                    input_ids = backend.encode(prompt)
                if len(input_ids) + opts["max_tokens"] > backend.context:
                    raise BadRequest(
                        f"the prompt ({len(input_ids)} tokens) plus max_tokens ({opts['max_tokens']}) "
                        f"exceeds the context of {backend.context} tokens: shorten one"
                    )
            except BadRequest as e:
                self.error(400, str(e))
                return
            except Exception as e:  # the stack's own failure: say so, keep serving
                self.error(500, f"the request could not be prepared: {type(e).__name__}: {e}")
                return
            self.respond(chat, input_ids, opts)

        def respond(self, chat: bool, input_ids: list[int], opts: dict[str, Any]) -> None:
            rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
            created = int(time.time())
            kind = "chat.completion" if chat else "text_completion"

            def usage(n: int) -> dict[str, int]:
                return {"prompt_tokens": len(input_ids), "completion_tokens": n,
                        "total_tokens": len(input_ids) + n}

            def finish(n: int, last: int | None) -> str:
                return "stop" if last == backend.eos and n < opts["max_tokens"] else "length"

            tokens: Iterator[int] = backend.tokens(input_ids, opts)
            text = Detokenizer(backend)
            if not opts["stream"]:
                n, last, out = 0, None, ""
                try:
                    for token in tokens:
                        n, last, out = n + 1, token, out + text.push(token)
                except Exception as e:  # the engine failed this request
                    self.error(500, f"generation failed after {n} tokens: {type(e).__name__}: {e}")
                    return
                c: dict[str, Any] = {"index": 0, "finish_reason": finish(n, last), "logprobs": None}
                if chat:
                    c["message"] = {"role": "assistant", "content": out}
                else:
                    c["text"] = out
                self.reply(200, {"id": rid, "object": kind, "created": created, "model": model,
                                 "choices": [c], "usage": usage(n), "system_fingerprint": about["stack"]})
                return

            chunked = self.request_version != "HTTP/1.0"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()

            def send(doc: Any) -> None:
                data = b"data: " + (doc if isinstance(doc, bytes) else json.dumps(doc).encode()) + b"\n\n"
                if chunked:
                    data = b"%x\r\n%s\r\n" % (len(data), data)
                self.wfile.write(data)
                self.wfile.flush()

            chunk_kind = kind + (".chunk" if chat else "")

            def choice(delta: str, reason: str | None, first: bool = False) -> dict[str, Any]:
                if chat:
                    d: dict[str, str] = {"content": delta}
                    if first:
                        d["role"] = "assistant"
                    return {"index": 0, "delta": d, "finish_reason": reason, "logprobs": None}
                return {"index": 0, "text": delta, "finish_reason": reason, "logprobs": None}

            n, last = 0, None
            try:
                for token in tokens:
                    n, last = n + 1, token
                    doc = {"id": rid, "object": chunk_kind, "created": created, "model": model,
                           "choices": [choice(text.push(token), None, first=n == 1)],
                           "system_fingerprint": about["stack"]}
                    if opts["continuous_usage"]:
                        doc["usage"] = usage(n)
                    send(doc)
                send({"id": rid, "object": chunk_kind, "created": created, "model": model,
                      "choices": [choice("", finish(n, last))], "usage": usage(n),
                      "system_fingerprint": about["stack"]})
                send(b"[DONE]")
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                # The client left: stop generating for it (the iterator's
                # close() frees its slot).
                close = getattr(tokens, "close", None)
                if close:
                    close()
                self.close_connection = True
            except Exception as e:  # the engine failed this request mid-stream
                # An error event (OpenAI's shape), then the stream's end, so
                # the client records a failure instead of waiting.
                try:
                    send({"error": {"message": f"generation failed after {n} tokens: {type(e).__name__}: {e}",
                                    "type": "server_error", "code": 500}})
                    send(b"[DONE]")
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass
                self.close_connection = True

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024

    server = Server((host, port), Handler)
    print(f"serving {model} on http://{host}:{port} ({about['stack']})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print("stopped", file=sys.stderr, flush=True)

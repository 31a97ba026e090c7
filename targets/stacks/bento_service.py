"""The Python wrapper: the tiny Llama behind BentoML, written the way a
typical BentoML user serves a Hugging Face model.

Request-level: every request runs its own `model.generate()` in a thread,
with a streamer handing tokens to an async generator; no batching across
requests, the whole prompt re-encoded and the whole reply re-decoded per
token, one JSON document per streamed chunk. These are the habits that make
a Python wrapper slower than a compiled engine on the same model, and what
gapscoped shows (GIL waits, serialization, syscalls) when it traces this
service.

OpenAI-compatible routes, mounted on the BentoML service as a FastAPI app:
POST /v1/completions and /v1/chat/completions (JSON or SSE with `stream`),
GET /v1/models. BentoML adds /readyz, /livez and /metrics.

    GAPSCOPE_MODEL_DIR=.cache/tiny-llama/hf bentoml serve bento_service:LlamaService \\
        --working-dir targets/stacks --host 127.0.0.1 --port 3000

(targets/stacks/serve.py bentoml --port 3000 does that and waits until ready.)
GAPSCOPE_MODEL_DIR may name any Llama in the Hugging Face layout; the model
goes to the GPU when torch sees one (GAPSCOPE_DEVICE overrides).
GAPSCOPE_SHAPE=llama-3-8b serves Llama-3-8B's shape with seeded random
weights made on the device instead (targets/stacks/shapes.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from typing import Any, AsyncIterator

import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

MODEL_DIR = os.environ.get("GAPSCOPE_MODEL_DIR", ".cache/tiny-llama/hf")
MODEL_NAME = os.environ.get("GAPSCOPE_MODEL_NAME", "tiny-llama")
# tiny (MODEL_DIR's weights) or llama-3-8b (shapes.py: random weights on the device).
SHAPE = os.environ.get("GAPSCOPE_SHAPE", "tiny")
MAX_TOKENS_LIMIT = 1024

openai_api = FastAPI(title="tiny-llama (BentoML)")


class BadRequest(Exception):
    """A request the service cannot serve; the message says what to change."""


def error(status: int, message: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": status}}
    return JSONResponse(body, status_code=status)


def sse(doc: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(doc)}\n\n".encode()


class TokenQueue:
    """A transformers streamer that hands each generated token id to the
    event loop (the first `put` is the prompt, skipped)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[int | None] = asyncio.Queue()
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, token)

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


def parse_common(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 16))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise BadRequest(f"max_tokens must be an integer from 1 to {MAX_TOKENS_LIMIT}, got {max_tokens!r}")
    temperature = body.get("temperature", 1.0)
    top_p = body.get("top_p", 1.0)
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise BadRequest(f"{name} must be a non-negative number, got {value!r}")
    min_tokens = body.get("min_tokens", 0)
    if body.get("ignore_eos"):
        min_tokens = max_tokens
    if not isinstance(min_tokens, int) or min_tokens < 0:
        raise BadRequest(f"min_tokens must be a non-negative integer, got {min_tokens!r}")
    return {
        "max_tokens": max_tokens,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "min_tokens": min(min_tokens, max_tokens),
        "stream": bool(body.get("stream", False)),
    }


@bentoml.service(name="llama", traffic={"timeout": 600, "concurrency": 256})
@bentoml.asgi_app(openai_api, path="/v1")
class LlamaService:
    def __init__(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import torch

        # The GPU when there is one (GAPSCOPE_DEVICE overrides), as a user
        # serving real weights would; the tiny Llama runs on CPU here.
        self.device = os.environ.get("GAPSCOPE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
        if SHAPE == "tiny":
            self.tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True).to(self.device)
        else:
            # Llama-3-8B's shape with seeded random weights made on the
            # device (shapes.py): the size of the real model, no download.
            import shapes

            self.tokenizer = AutoTokenizer.from_pretrained(str(shapes.tokenizer_dir()), local_files_only=True)
            self.model = shapes.hf_model(SHAPE, self.device)
        self.vocab = len(self.tokenizer)
        self.model.eval()
        self.context = self.model.config.max_position_embeddings

    # --- generation -------------------------------------------------------

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    async def tokens(self, input_ids: list[int], opts: dict[str, Any]) -> AsyncIterator[tuple[int, str]]:
        """Generates with transformers in a thread; yields each token with
        the text it adds (the reply re-decoded whole, as a streamer does)."""
        import torch

        streamer = TokenQueue(asyncio.get_running_loop())
        sampling = opts["temperature"] > 0
        kwargs = dict(
            input_ids=torch.tensor([input_ids], device=self.device),
            attention_mask=torch.ones(1, len(input_ids), dtype=torch.long, device=self.device),
            max_new_tokens=opts["max_tokens"],
            min_new_tokens=opts["min_tokens"] or None,
            do_sample=sampling,
            temperature=opts["temperature"] if sampling else None,
            top_p=opts["top_p"] if sampling else None,
            pad_token_id=self.tokenizer.eos_token_id,
            streamer=streamer,
        )

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            finally:
                streamer.end()

        threading.Thread(target=run, daemon=True).start()
        generated: list[int] = []
        text = ""
        while (token := await streamer.queue.get()) is not None:
            generated.append(token)
            full = self.tokenizer.decode([t % self.vocab for t in generated], skip_special_tokens=True)
            # A token that ends inside a UTF-8 sequence decodes to U+FFFD:
            # hold its text back until the sequence completes.
            delta = "" if full.endswith("\ufffd") else full[len(text):]
            text += delta
            yield token, delta

    def finish_reason(self, generated: int, last: int | None, opts: dict[str, Any]) -> str:
        return "stop" if last == self.tokenizer.eos_token_id and generated < opts["max_tokens"] else "length"

    async def respond(self, body: Any, chat: bool) -> Any:
        try:
            opts = parse_common(body)
            if chat:
                messages = body.get("messages")
                if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
                ):
                    raise BadRequest("messages must be a non-empty list of {role, content} objects")
                prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                input_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            else:
                prompt = body.get("prompt")
                if isinstance(prompt, list) and len(prompt) == 1:
                    prompt = prompt[0]
                if not isinstance(prompt, str):
                    raise BadRequest("prompt must be a string (or a list of one string)")
                input_ids = self.encode(prompt)
            if len(input_ids) + opts["max_tokens"] > self.context:
                raise BadRequest(
                    f"the prompt ({len(input_ids)} tokens) plus max_tokens ({opts['max_tokens']}) "
                    f"exceeds the model's context of {self.context} tokens: shorten one"
                )
        except BadRequest as e:
            return error(400, str(e))

        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"

        def usage(n: int) -> dict[str, int]:
            return {"prompt_tokens": len(input_ids), "completion_tokens": n, "total_tokens": len(input_ids) + n}

        def choice(text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, str] = {"content": text}
                if first:
                    delta["role"] = "assistant"
                return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

        if not opts["stream"]:
            n, last, text = 0, None, ""
            async for token, delta in self.tokens(input_ids, opts):
                n, last, text = n + 1, token, text + delta
            finish = self.finish_reason(n, last, opts)
            c: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if chat:
                c["message"] = {"role": "assistant", "content": text}
            else:
                c["text"] = text
            return JSONResponse(
                {"id": rid, "object": kind, "created": created, "model": MODEL_NAME,
                 "choices": [c], "usage": usage(n)}
            )

        async def stream() -> AsyncIterator[bytes]:
            chunk_kind = kind + (".chunk" if chat else "")
            n, last = 0, None
            async for token, delta in self.tokens(input_ids, opts):
                n, last = n + 1, token
                doc = {"id": rid, "object": chunk_kind, "created": created, "model": MODEL_NAME,
                       "choices": [choice(delta, None, first=n == 1)]}
                yield sse(doc)
            finish = self.finish_reason(n, last, opts)
            yield sse({"id": rid, "object": chunk_kind, "created": created, "model": MODEL_NAME,
                       "choices": [choice("", finish)], "usage": usage(n)})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    # --- routes -------------------------------------------------------------

    @openai_api.post("/completions")
    async def completions(self, request: Request):
        body = await self.body(request)
        return body if isinstance(body, JSONResponse) else await self.respond(body, chat=False)

    @openai_api.post("/chat/completions")
    async def chat_completions(self, request: Request):
        body = await self.body(request)
        return body if isinstance(body, JSONResponse) else await self.respond(body, chat=True)

    @openai_api.get("/models")
    async def models(self):
        return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "gapscope"}]}

    async def body(self, request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except ValueError as e:
            return error(400, f"the body is not JSON ({e}): send a JSON object")

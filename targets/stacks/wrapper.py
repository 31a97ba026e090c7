#!/usr/bin/env python3
"""The Python wrapper without BentoML: the fallback for a GPU host where
BentoML is not installed and its wheels could not travel.

    wrapper.py --port 3000 [--shape tiny|llama-3-8b]

It keeps BentoML's serving pattern as bento_service.py uses it, which is
what the experiment measures: one interpreter, a thread per request, each
calling transformers' `model.generate()` with a streamer that hands every
token back through Python; no batching across requests. The HTTP front is
openai_http.py's (the standard library's threading server) instead of
BentoML's ASGI stack, so it is the same pattern with less of BentoML's own
overhead: a wrapper figure measured with it is, if anything, flattering.
Every reply (its system_fingerprint), /v1/models and /health say
"python-wrapper-fallback", so no result can pass for BentoML's.
"""

from __future__ import annotations

import argparse
import pathlib
import queue
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import torch  # noqa: E402

import shapes  # noqa: E402
from openai_http import serve  # noqa: E402

STACK = "python-wrapper-fallback"


class Streamer:
    """A transformers streamer handing each generated token id to the
    request's thread (the first `put` is the prompt, skipped)."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.queue.put(token)

    def end(self) -> None:
        self.queue.put(None)


class Backend:
    def __init__(self, model, tokenizer, device: str) -> None:
        self.model = model
        self.tok = tokenizer
        self.vocab = len(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.device = device
        self.context = min(model.config.max_position_embeddings, 4096)

    def encode(self, prompt: str) -> list[int]:
        return self.tok(prompt)["input_ids"]

    def chat(self, messages: list[dict]) -> list[int]:
        prompt = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tok(prompt, add_special_tokens=False)["input_ids"]

    def text(self, ids: list[int]) -> str:
        return self.tok.decode([i % self.vocab for i in ids], skip_special_tokens=True)

    def tokens(self, ids: list[int], opts: dict):
        streamer = Streamer()
        sampling = opts["temperature"] > 0
        kwargs = dict(
            input_ids=torch.tensor([ids], device=self.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
            max_new_tokens=opts["max_tokens"],
            min_new_tokens=opts["min_tokens"] or None,
            do_sample=sampling,
            temperature=opts["temperature"] if sampling else None,
            top_p=None,
            pad_token_id=self.eos,
            streamer=streamer,
        )

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            finally:
                streamer.end()

        threading.Thread(target=run, daemon=True).start()
        while (token := streamer.queue.get()) is not None:
            yield token


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--shape", choices=shapes.SHAPES, default="tiny")
    ap.add_argument("--model-name", default=None)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when torch sees one)")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    t0 = time.monotonic()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(shapes.tokenizer_dir()), local_files_only=True)
    model = shapes.hf_model(args.shape, device)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    about = {"stack": STACK, "engine": "transformers generate(), a thread per request (BentoML's pattern, "
             "without BentoML: it is not installed here)", "shape": args.shape, "parameters": params,
             "device": device, "torch": torch.__version__}
    print(f"{STACK}: BentoML is not installed, so this is the fallback with its serving pattern; "
          f"{args.shape} ({params / 1e6:.1f} M parameters) on {device}, ready in {time.monotonic() - t0:.1f} s",
          flush=True)
    name = args.model_name or ("tiny-llama" if args.shape == "tiny" else args.shape)
    serve(Backend(model, tokenizer, device), args.host, args.port, name, about)
    return 0


if __name__ == "__main__":
    sys.exit(main())

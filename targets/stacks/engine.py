#!/usr/bin/env python3
"""The compiled engine, in PyTorch alone: what a bare PyTorch host can run
as the fast side of the experiment (no vLLM, no llama.cpp, no internet).

    engine.py --port 3001 [--shape tiny|llama-3-8b] [--slots 64] [--max-len 1024]

How it keeps the GPU busy, against the Python wrapper's habits:

* Continuous batching: one engine thread owns the model. Requests join a
  free slot between decode steps (their prompt is prefilled in one
  forward) and leave when done; every decode step produces one token for
  every active slot in one batched forward.
* A static KV cache: [layers, slots, kv heads, max-len, head dim], written
  in place; nothing is allocated per token.
* Fused projections (QKV in one matrix, gate and up in one) and, on CUDA,
  the whole decode step captured once as a CUDA graph and replayed: one
  launch per token step instead of hundreds (eager on CPU, where there is
  no graph to capture; `--eager` forces it on CUDA).
* Text is decoded a few tokens at a time, never the whole reply per token.

The weights: the tiny Llama's (.cache/tiny-llama/hf, the same the wrapper
serves) or, with --shape llama-3-8b, Llama-3-8B's shape with seeded random
weights made on the device (see shapes.py). OpenAI-compatible
/v1/completions and /v1/chat/completions (whole or SSE), /v1/models and
/health come from openai_http.py; /v1/models and every reply's
system_fingerprint say which stack and decode path answered.

Invariant: every active slot gets exactly one token per decode step, and a
request gets exactly max_tokens tokens unless EOS ends it after min_tokens.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import queue
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import shapes  # noqa: E402
from openai_http import serve  # noqa: E402


# ---- the model ------------------------------------------------------------------

class Llama:
    """A Llama forward pass over a static KV cache: prefill of one prompt
    into one slot, and one decode step for a batch of slots."""

    def __init__(self, cfg: dict, weights: dict[str, torch.Tensor], slots: int, max_len: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.layers = cfg["num_hidden_layers"]
        self.heads = cfg["num_attention_heads"]
        self.kv_heads = cfg["num_key_value_heads"]
        self.head_dim = cfg["hidden_size"] // self.heads
        self.eps = cfg["rms_norm_eps"]
        self.w = weights
        self.dtype = dtype
        inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim))
        angles = torch.outer(torch.arange(max_len, device=device).float(), inv)
        angles = torch.cat([angles, angles], dim=-1)
        self.cos, self.sin = angles.cos().to(dtype), angles.sin().to(dtype)
        shape = (self.layers, slots, self.kv_heads, max_len, self.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.positions = torch.arange(max_len, device=device)
        self.all_slots = torch.arange(slots, device=device)

    def norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        f = x.float()
        return (f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + self.eps)).to(self.dtype) * w

    def rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # x: [tokens, heads, head_dim]; Hugging Face's rotate-half layout.
        cos, sin = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        half = self.head_dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def qkv(self, i: int, h: torch.Tensor, pos: torch.Tensor):
        n = h.shape[0]
        qkv = h @ self.w[f"{i}.qkv"].T
        q, k, v = qkv.split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                             self.kv_heads * self.head_dim], dim=-1)
        q = self.rope(q.view(n, self.heads, self.head_dim), pos)
        k = self.rope(k.view(n, self.kv_heads, self.head_dim), pos)
        return q, k, v.view(n, self.kv_heads, self.head_dim)

    def mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = (self.norm(x, self.w[f"{i}.mlp_norm"]) @ self.w[f"{i}.gate_up"].T).chunk(2, dim=-1)
        return x + (F.silu(gate) * up) @ self.w[f"{i}.down"].T

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return (self.norm(x, self.w["norm"]) @ self.w["lm_head"].T).float()

    def prefill(self, ids: torch.Tensor, slot: int) -> torch.Tensor:
        """The prompt `ids` into `slot`'s cache; the last position's logits."""
        n = ids.shape[0]
        pos = self.positions[:n]
        x = self.w["embed"][ids]
        group = self.heads // self.kv_heads
        for i in range(self.layers):
            q, k, v = self.qkv(i, self.norm(x, self.w[f"{i}.attn_norm"]), pos)
            self.k[i, slot, :, :n] = k.transpose(0, 1)
            self.v[i, slot, :, :n] = v.transpose(0, 1)
            kk = k.transpose(0, 1).repeat_interleave(group, dim=0)
            vv = v.transpose(0, 1).repeat_interleave(group, dim=0)
            a = F.scaled_dot_product_attention(q.transpose(0, 1), kk, vv, is_causal=True)
            x = x + a.transpose(0, 1).reshape(n, -1) @ self.w[f"{i}.o"].T
            x = self.mlp(i, x)
        return self.logits(x[-1:])[0]

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor, span: int | None = None) -> torch.Tensor:
        """One token for every slot (inactive ones compute and are ignored)
        at positions `pos`; logits [slots, vocab]. Attention reads the
        first `span` positions of the cache (None: all of them, the CUDA
        graph's fixed shape; eager passes the longest active context)."""
        b = tokens.shape[0]
        x = self.w["embed"][tokens]
        group = self.heads // self.kv_heads
        t = self.positions.shape[0] if span is None else span
        hidden = (self.positions[None, :t] > pos[:, None])[:, None, None, :]  # [b, 1, 1, t]
        scale = 1.0 / math.sqrt(self.head_dim)
        for i in range(self.layers):
            q, k, v = self.qkv(i, self.norm(x, self.w[f"{i}.attn_norm"]), pos)
            self.k[i][self.all_slots, :, pos] = k
            self.v[i][self.all_slots, :, pos] = v
            keys, values = self.k[i][:, :, :t], self.v[i][:, :, :t]
            qg = q.view(b, self.kv_heads, group, self.head_dim)
            scores = (qg @ keys.transpose(-1, -2)).float() * scale
            scores = scores.masked_fill(hidden, float("-inf"))
            a = scores.softmax(-1).to(self.dtype) @ values
            x = x + a.reshape(b, -1) @ self.w[f"{i}.o"].T
            x = self.mlp(i, x)
        return self.logits(x)


def load_weights(shape: str, cfg: dict, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tiny Llama's weights from its directory, fused; or, for
    llama-3-8b, seeded random weights made on the device (N(0, 0.02),
    norms 1), never a file."""
    hidden, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    if shape == "tiny":
        from safetensors.torch import load_file

        sd = load_file(str(shapes.TINY_DIR / "model.safetensors"))

        def get(name):
            return sd[name].to(device=device, dtype=dtype)

        w = {"embed": get("model.embed_tokens.weight"), "norm": get("model.norm.weight"),
             "lm_head": get("lm_head.weight" if "lm_head.weight" in sd else "model.embed_tokens.weight")}
        for i in range(layers):
            p = f"model.layers.{i}."
            w[f"{i}.qkv"] = torch.cat([get(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
            w[f"{i}.o"] = get(p + "self_attn.o_proj.weight")
            w[f"{i}.gate_up"] = torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")])
            w[f"{i}.down"] = get(p + "mlp.down_proj.weight")
            w[f"{i}.attn_norm"] = get(p + "input_layernorm.weight")
            w[f"{i}.mlp_norm"] = get(p + "post_attention_layernorm.weight")
        return w
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg["seed"])
    head_dim = hidden // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head_dim
    inter, vocab = cfg["intermediate_size"], cfg["vocab_size"]

    def rand(*size):
        return torch.empty(size, device=device, dtype=dtype).normal_(0.0, 0.02, generator=gen)

    def ones():
        return torch.ones(hidden, device=device, dtype=dtype)

    w = {"embed": rand(vocab, hidden), "norm": ones(), "lm_head": rand(vocab, hidden)}
    for i in range(layers):
        w[f"{i}.qkv"] = rand(hidden + 2 * kv, hidden)
        w[f"{i}.o"] = rand(hidden, hidden)
        w[f"{i}.gate_up"] = rand(2 * inter, hidden)
        w[f"{i}.down"] = rand(hidden, inter)
        w[f"{i}.attn_norm"], w[f"{i}.mlp_norm"] = ones(), ones()
    return w


# ---- continuous batching ---------------------------------------------------------

class Request:
    def __init__(self, ids: list[int], opts: dict) -> None:
        self.ids = ids
        self.opts = opts
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False
        self.generated = 0
        self.length = len(ids)  # tokens in the cache once the last one is written
        self.last = 0


class Failed:
    def __init__(self, why: str) -> None:
        self.why = why


class Engine:
    """The engine thread: admits waiting requests into free slots, then runs
    one decode step for every active slot, and again."""

    def __init__(self, model: Llama, slots: int, device: torch.device, graphs: bool) -> None:
        self.model = model
        self.slots = slots
        self.device = device
        self.waiting: queue.SimpleQueue = queue.SimpleQueue()
        self.active: list[Request | None] = [None] * slots
        self.tokens = torch.zeros(slots, dtype=torch.long, device=device)
        self.pos = torch.zeros(slots, dtype=torch.long, device=device)
        self.graph = None
        self.decode_path = "eager"
        # Decode steps run and the tokens they produced: their ratio is the
        # batch the engine really ran (GET /health).
        self.steps = 0
        self.step_tokens = 0
        if graphs:
            try:
                self.capture()
                self.decode_path = "cuda-graph"
            except Exception as e:  # eager still serves; the result says why
                self.graph = None
                self.decode_path = f"eager (CUDA graph capture failed: {type(e).__name__}: {e})"
                print(f"engine: {self.decode_path}", file=sys.stderr, flush=True)
        threading.Thread(target=self.run, name="engine", daemon=True).start()

    def capture(self) -> None:
        """The whole decode step over every slot, captured once, then
        replayed against an eager step on the same input: a graph that
        does not compute what eager does is not used."""
        with torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm up: cuBLAS handles, allocator
                    self.model.decode(self.tokens, self.pos)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads of the process (the injection
            # library's, the HTTP server's) may call CUDA meanwhile.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.graph_logits = self.model.decode(self.tokens, self.pos)
            self.tokens.copy_(torch.arange(self.slots) % 1000)
            self.pos.copy_(torch.arange(self.slots) % 7)
            graph.replay()
            replayed = self.graph_logits.clone()
            eager = self.model.decode(self.tokens, self.pos)
            torch.cuda.synchronize()
            diff = (replayed - eager).abs().max().item()
            scale = eager.abs().max().item()
            if not diff <= 1e-2 * max(scale, 1e-3):
                raise RuntimeError(f"the replayed step differs from eager by {diff:.3g} (largest logit {scale:.3g})")
            self.graph = graph

    def submit(self, ids: list[int], opts: dict):
        """The request's tokens, as they come; closing the iterator (the
        client left) frees its slot at the next step."""
        req = Request(ids, opts)
        self.waiting.put(req)
        try:
            while True:
                item = req.out.get()
                if item is None:
                    return
                if isinstance(item, Failed):
                    raise RuntimeError(item.why)
                yield item
        finally:
            req.cancelled = True

    def sample(self, logits: torch.Tensor, reqs: list[Request]) -> list[int]:
        """Greedy for temperature 0, else sampled; EOS is banned for a
        request that has not reached its min_tokens."""
        ban = [r.generated < r.opts["min_tokens"] for r in reqs]
        if any(ban):
            eos = reqs[0].opts["eos"]
            logits[torch.tensor(ban, device=logits.device), eos] = float("-inf")
        temps = [r.opts["temperature"] for r in reqs]
        if not any(temps):
            return logits.argmax(-1).tolist()
        t = torch.tensor(temps, device=logits.device)
        greedy = logits.argmax(-1)
        probs = (logits / t.clamp(min=1e-5)[:, None]).softmax(-1)
        drawn = torch.multinomial(probs, 1)[:, 0]
        return torch.where(t > 0, drawn, greedy).tolist()

    def emit(self, slot: int | None, req: Request, token: int) -> bool:
        """Hands `token` to the client; True when the request is done."""
        req.generated += 1
        req.last = token
        req.out.put(token)
        o = req.opts
        done = req.generated >= o["max_tokens"] or (token == o["eos"] and req.generated >= o["min_tokens"])
        if done or req.cancelled:
            req.out.put(None)
            if slot is not None:
                self.active[slot] = None
            return True
        return False

    def admit(self) -> None:
        idle = not any(self.active)
        for slot in range(self.slots):
            if self.active[slot] is not None:
                continue
            try:
                req = self.waiting.get(block=idle)
            except queue.Empty:
                return
            idle = False
            if req.cancelled:
                continue
            try:
                ids = torch.tensor(req.ids, dtype=torch.long, device=self.device)
                logits = self.model.prefill(ids, slot)
                token = self.sample(logits[None, :], [req])[0]
            except Exception as e:  # the request fails, the engine goes on
                req.out.put(Failed(f"prefill failed: {type(e).__name__}: {e}"))
                continue
            if not self.emit(None, req, token):
                self.active[slot] = req

    def step(self) -> None:
        live = [(s, r) for s, r in enumerate(self.active) if r is not None]
        toks = [0] * self.slots
        poss = [0] * self.slots
        for s, r in live:
            toks[s], poss[s] = r.last, r.length
        self.tokens.copy_(torch.tensor(toks))
        self.pos.copy_(torch.tensor(poss))
        if self.graph is not None:
            self.graph.replay()
            logits = self.graph_logits
        else:
            logits = self.model.decode(self.tokens, self.pos, max(poss) + 1)
        logits = logits[[s for s, _ in live]]
        drawn = self.sample(logits, [r for _, r in live])
        self.steps += 1
        self.step_tokens += len(live)
        for (s, r), token in zip(live, drawn):
            r.length += 1
            self.emit(s, r, token)

    def counters(self) -> dict:
        return {"decode_steps": self.steps, "decode_tokens": self.step_tokens}

    def run(self) -> None:
        with torch.inference_mode():
            while True:
                try:
                    self.admit()
                    if any(self.active):
                        self.step()
                except Exception as e:  # every active request fails; the engine goes on
                    why = f"decode step failed: {type(e).__name__}: {e}"
                    print(f"engine: {why}", file=sys.stderr, flush=True)
                    for s, r in enumerate(self.active):
                        if r is not None:
                            r.out.put(Failed(why))
                            self.active[s] = None


# ---- the server ------------------------------------------------------------------

class Backend:
    """What openai_http needs: the tokenizer and the engine."""

    def __init__(self, engine: Engine, tokenizer, context: int) -> None:
        self.engine = engine
        self.tok = tokenizer
        self.vocab = len(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.context = context

    def encode(self, prompt: str) -> list[int]:
        return self.tok(prompt)["input_ids"]

    def chat(self, messages: list[dict]) -> list[int]:
        prompt = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tok(prompt, add_special_tokens=False)["input_ids"]

    def tokens(self, ids: list[int], opts: dict):
        return self.engine.submit(ids, opts)

    def text(self, ids: list[int]) -> str:
        return self.tok.decode([i % self.vocab for i in ids], skip_special_tokens=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--shape", choices=shapes.SHAPES, default="tiny")
    ap.add_argument("--model-name", default=None, help="the `model` clients name (default: tiny-llama or llama-3-8b)")
    ap.add_argument("--slots", type=int, default=64, help="requests decoded together (default %(default)s)")
    ap.add_argument("--max-len", type=int, default=1024, help="tokens of context per slot (default %(default)s)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when torch sees one)")
    ap.add_argument("--eager", action="store_true", help="no CUDA graph: launch every kernel of every step")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch's CPU threads (default: half the CPUs, so the HTTP threads keep a core)")
    args = ap.parse_args()
    if not 1 <= args.slots <= 1024:
        ap.error("--slots must be from 1 to 1024")
    cfg = shapes.config(args.shape)
    if not 16 <= args.max_len <= cfg["max_position_embeddings"]:
        ap.error(f"--max-len must be from 16 to the model's {cfg['max_position_embeddings']}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) // 2))
    dtype = getattr(torch, cfg["dtype"])
    if device.type == "cpu" and dtype == torch.bfloat16 and args.shape != "tiny":
        print("engine: llama-3-8b on CPU needs 16 GB of memory and is very slow; it is meant for a GPU",
              file=sys.stderr, flush=True)
    from transformers import AutoTokenizer

    t0 = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(shapes.tokenizer_dir()), local_files_only=True)
    with torch.inference_mode():
        weights = load_weights(args.shape, cfg, device, dtype)
        model = Llama(cfg, weights, args.slots, args.max_len, device, dtype)
    params = sum(t.numel() for t in weights.values())
    graphs = device.type == "cuda" and not args.eager
    engine = Engine(model, args.slots, device, graphs)
    decode = engine.decode_path
    about = {"stack": "compiled-engine", "engine": "gapscope torch engine (continuous batching, static KV cache)",
             "decode": decode, "slots": args.slots, "max_len": args.max_len, "shape": args.shape,
             "parameters": params, "device": str(device), "dtype": cfg["dtype"],
             "torch": torch.__version__}
    print(f"engine: {args.shape} ({params / 1e6:.1f} M parameters, {cfg['dtype']}) on {device}, "
          f"{args.slots} slots of {args.max_len} tokens, decode step {decode}; ready in "
          f"{time.monotonic() - t0:.1f} s", flush=True)
    name = args.model_name or ("tiny-llama" if args.shape == "tiny" else args.shape)
    serve(Backend(engine, tokenizer, args.max_len), args.host, args.port, name, about, engine.counters)
    return 0


if __name__ == "__main__":
    sys.exit(main())

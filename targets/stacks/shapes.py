"""The model shapes the stacks serve, and where their tokenizer is.

`tiny` is the tiny Llama scripts/setup.sh builds (.cache/tiny-llama/hf):
its weights come from that directory. `llama-3-8b` is Llama-3-8B's shape
(hidden 4096, 32 layers, 32 query heads over 8 KV heads, vocabulary
128,256, bf16) with seeded random weights made on the device itself, so a
GPU host without internet runs the experiment at the real size without a
16 GB download. Random weights decode random tokens: clients ask for a
fixed output length (ignore_eos / min_tokens), as the demo does.

Both shapes use the tiny Llama's tokenizer (4,096 entries). Ids the
tokenizer does not have (the 8B shape samples from 128,256) are shown as
the tokenizer's entry `id % 4096`; only the text is affected, never the
counts.
"""

from __future__ import annotations

import json
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY_DIR = REPO / ".cache/tiny-llama/hf"

LLAMA_3_8B = {
    "vocab_size": 128_256,
    "hidden_size": 4096,
    "intermediate_size": 14_336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rope_theta": 500_000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "dtype": "bfloat16",
    "seed": 20261206,
}

SHAPES = ("tiny", "llama-3-8b")


def tokenizer_dir() -> pathlib.Path:
    """Where the tokenizer files are: GAPSCOPE_TOKENIZER_DIR (a GPU host
    gets them from scripts/device-pack), else the tiny Llama's."""
    return pathlib.Path(os.environ.get("GAPSCOPE_TOKENIZER_DIR") or TINY_DIR)


def config(shape: str, model_dir: pathlib.Path | None = None) -> dict:
    """The shape's configuration (Hugging Face LlamaConfig keys)."""
    if shape == "llama-3-8b":
        return dict(LLAMA_3_8B)
    if shape != "tiny":
        raise SystemExit(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")
    path = (model_dir or TINY_DIR) / "config.json"
    try:
        c = json.loads(path.read_text())
    except OSError as e:
        raise SystemExit(f"{path}: {e.strerror}: run scripts/setup.sh (it builds the tiny Llama)") from None
    c.setdefault("rope_theta", 10_000.0)
    c.setdefault("rms_norm_eps", 1e-6)
    c["dtype"] = "float32"
    return c


def hf_model(shape: str, device: str):
    """A transformers LlamaForCausalLM of `shape` on `device`: the tiny
    Llama's saved weights, or the 8B shape's seeded random weights made
    on the device in bf16 (no file)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if shape == "tiny":
        return AutoModelForCausalLM.from_pretrained(str(TINY_DIR), local_files_only=True).to(device)
    c = config(shape)
    seed, dtype = c.pop("seed"), getattr(torch, c.pop("dtype"))
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**c))
    finally:
        torch.set_default_dtype(previous)
    # No .to(dtype): the parameters are made in it, and the rotary
    # inv_freq buffer stays fp32, as transformers loads a bf16 checkpoint.
    return model

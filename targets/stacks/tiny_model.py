#!/usr/bin/env python3
"""Builds the tiny Llama the reference stacks serve, offline and seeded.

No model hub is reachable from the machines Gapscope is tested on, so the
model is made here: a Llama-architecture network of about five million
parameters with random weights (transformers' LlamaConfig + save_pretrained),
and a real byte-fallback BPE tokenizer in the Llama-2 style, trained with the
`tokenizers` library on the Python standard library's own sources. Its
output is gibberish; its shape and costs are those of a Llama: the same
layers, the same tokenizer habits, the same per-token work on the serving
path. The Hugging Face layout goes to OUT/hf (what transformers and
BentoML load); llama.cpp's converter turns it into OUT/tiny-llama-f16.gguf
(what llama-server loads).

    tiny_model.py --out .cache/tiny-llama --converter .cache/llama.cpp/convert
    tiny_model.py --check .cache/tiny-llama   # exit 0 when built with this recipe

Deterministic: the same CPython standard library, seeds and versions give
the same files. OUT/recipe.json records what built them.
"""

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import sysconfig

# Bump when anything below changes what is built: --check then rebuilds.
RECIPE = {
    "version": 2,
    "vocab_size": 4096,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "seed": 20261128,
    "training_text_bytes": 4_000_000,
}

SPECIALS = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]

# Llama-2's chat template, shortened: llama-server recognises it by its
# [INST] markers, transformers renders it with Jinja.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}<<SYS>>\n{{ m['content'] }}\n<</SYS>>\n\n"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}"
)


def training_text(limit: int) -> str:
    """The first `limit` bytes of the standard library's .py files, in
    sorted path order (the same text on every machine with this CPython)."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if rel[0] in ("site-packages", "test", "idlelib", "lib2to3"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        size += len(text.encode())
        if size >= limit:
            break
    return "\n".join(parts)


def build_tokenizer(text: str, vocab_size: int):
    """A Llama-2-style tokenizer: spaces become '▁', a '▁' is prefixed, words
    (split before each '▁') are BPE-merged with byte fallback (ids 3..258
    are the bytes), <s> added in front of every encoding."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    def llama_shell(model):
        tok = Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        tok.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        )
        return tok

    trained = llama_shell(models.BPE(unk_token="<unk>", byte_fallback=True))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIALS) - len(BYTE_TOKENS),
        special_tokens=[],
        show_progress=False,
    )
    trained.train_from_iterator(text.splitlines(), trainer=trainer)
    learned = json.loads(trained.to_str())["model"]
    # Specials and bytes first (Llama's ids), then what training learned.
    vocab = {t: i for i, t in enumerate(SPECIALS + BYTE_TOKENS)}
    for token, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if token not in vocab and len(vocab) < vocab_size:
            vocab[token] = len(vocab)
    merges = []
    for m in learned["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append((a, b))
    tok = llama_shell(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", 1)]
    )
    return tok


# llama.cpp reads a Llama vocabulary as SentencePiece: it merges the
# adjacent pair whose result scores highest. Scoring each token by minus the
# rank of the BPE merge that made it makes llama.cpp tokenize exactly as the
# Hugging Face tokenizer does; the converter's tokenizer.json path has no
# scores of its own (all -1000), so they are supplied here.
CONVERT = """
import json, runpy, sys
hf, script, gguf_py = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path[:0] = [gguf_py, str(__import__("pathlib").Path(script).parent)]
import gguf.vocab
model = json.load(open(hf + "/tokenizer.json"))["model"]
score = {}
for rank, m in enumerate(model["merges"]):
    a, b = m.split(" ", 1) if isinstance(m, str) else m
    score.setdefault(model["vocab"][a + b], -float(rank))
gguf.vocab.LlamaHfVocab.get_token_score = lambda self, token_id: score.get(token_id, 0.0)
sys.argv = [script] + sys.argv[4:]
runpy.run_path(script, run_name="__main__")
"""


def build(out: pathlib.Path, converter: pathlib.Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizerFast

    r = RECIPE
    torch.manual_seed(r["seed"])
    hf = out / "hf"
    shutil.rmtree(out, ignore_errors=True)
    hf.mkdir(parents=True)

    print("training the tokenizer on the standard library's sources", flush=True)
    tok = build_tokenizer(training_text(r["training_text_bytes"]), r["vocab_size"])
    fast = LlamaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        legacy=False,
        model_max_length=r["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(hf)

    print("initialising the model", flush=True)
    config = LlamaConfig(
        vocab_size=r["vocab_size"],
        hidden_size=r["hidden_size"],
        intermediate_size=r["intermediate_size"],
        num_hidden_layers=r["num_hidden_layers"],
        num_attention_heads=r["num_attention_heads"],
        num_key_value_heads=r["num_key_value_heads"],
        max_position_embeddings=r["max_position_embeddings"],
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(hf, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())

    print("converting to GGUF with llama.cpp's converter", flush=True)
    gguf = out / "tiny-llama-f16.gguf"
    script = converter / "convert_hf_to_gguf.py"
    done = subprocess.run(
        [sys.executable, "-c", CONVERT, str(hf), str(script), str(converter / "gguf-py"),
         str(hf), "--outfile", str(gguf), "--outtype", "f16", "--model-name", "tiny-llama"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"llama.cpp's converter failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    (out / "recipe.json").write_text(
        json.dumps(dict(r, parameters=params, torch=torch.__version__), indent=2) + "\n"
    )
    print(f"tiny Llama: {params / 1e6:.1f} M parameters, vocabulary {r['vocab_size']}, in {out}")


def built(out: pathlib.Path) -> bool:
    try:
        recipe = json.loads((out / "recipe.json").read_text())
    except (OSError, ValueError):
        return False
    same = all(recipe.get(k) == v for k, v in RECIPE.items())
    files = ["hf/config.json", "hf/model.safetensors", "hf/tokenizer.json", "tiny-llama-f16.gguf"]
    return same and all((out / f).is_file() for f in files)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path)
    ap.add_argument("--converter", type=pathlib.Path, help="llama.cpp's convert directory")
    ap.add_argument("--check", type=pathlib.Path, metavar="OUT", help="exit 0 when OUT is built with this recipe")
    args = ap.parse_args()
    if args.check:
        return 0 if built(args.check) else 1
    if not args.out or not args.converter:
        ap.error("--out and --converter are needed to build (or --check OUT)")
    if not (args.converter / "convert_hf_to_gguf.py").is_file():
        ap.error(f"{args.converter}/convert_hf_to_gguf.py not found: run targets/stacks/setup.sh")
    build(args.out, args.converter)
    return 0


if __name__ == "__main__":
    sys.exit(main())

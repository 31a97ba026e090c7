#!/usr/bin/env python3
"""Starts one reference serving stack on loopback, waits until it is healthy,
and stops it cleanly.

    serve.py bentoml      --port 3000   # the Python wrapper (BentoML + transformers)
    serve.py llama-server --port 3001   # the compiled engine (llama.cpp, continuous batching)
    serve.py torch-engine --port 3002   # the compiled engine in PyTorch alone (engine.py; GPU hosts)
    serve.py wrapper-fallback --port 3003  # BentoML's pattern without BentoML (wrapper.py)

--shape llama-3-8b (bentoml, torch-engine, wrapper-fallback) serves
Llama-3-8B's shape with seeded random weights made on the device
(shapes.py).

Prints "ready http://127.0.0.1:PORT" once the stack answers its health check,
then stays in the foreground. SIGTERM, SIGINT or end of stdin (with
--stdin-stops) stops it: the whole process group gets SIGTERM, then SIGKILL
after --grace seconds, and serve.py exits only when no process of the stack
is left. A stack that dies or never becomes healthy: serve.py prints the end
of its log and exits 1.

Both stacks serve the tiny Llama from .cache/tiny-llama (scripts/setup.sh
builds it) as model "tiny-llama", with OpenAI-compatible /v1/completions and
/v1/chat/completions.
"""

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[2]
MODEL = REPO / ".cache/tiny-llama"
ENGINE = REPO / ".cache/llama.cpp/bin/llama-server"
HERE = pathlib.Path(__file__).resolve().parent


def bentoml_command(args) -> tuple[list[str], dict[str, str], str]:
    # BentoML of the Python running serve.py (python -m bentoml): the one
    # whose torch and transformers the service imports.
    try:
        import bentoml  # noqa: F401
    except ImportError:
        sys.exit(f"serve.py: {sys.executable} has no BentoML: run scripts/setup.sh (it installs BentoML into "
                 "targets/.venv), or use the wrapper-fallback stack")
    env = {
        "GAPSCOPE_MODEL_DIR": str(MODEL / "hf"),
        "BENTOML_DO_NOT_TRACK": "True",
        "BENTOML_HOME": str(REPO / ".cache/bentoml"),
        "GAPSCOPE_SHAPE": args.shape,
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [
        sys.executable, "-m", "bentoml", "serve", "bento_service:LlamaService",
        "--working-dir", str(HERE),
        "--host", "127.0.0.1", "--port", str(args.port),
    ]
    return cmd, env, "/readyz"


def llama_server_command(args) -> tuple[list[str], dict[str, str], str]:
    if not ENGINE.exists():
        sys.exit(f"serve.py: {ENGINE} not found: run scripts/setup.sh (it builds llama-server once per machine)")
    cmd = [
        str(ENGINE), "-m", str(MODEL / "tiny-llama-f16.gguf"),
        "--alias", "tiny-llama",
        "--host", "127.0.0.1", "--port", str(args.port),
        # Continuous batching over --parallel slots, each with 512 tokens of context.
        "--parallel", str(args.parallel), "--ctx-size", str(512 * args.parallel),
        "--cont-batching", "--no-webui", "--metrics",
        "--threads", str(args.threads or os.cpu_count() or 1),
    ]
    return cmd, {}, "/health"


def torch_engine_command(args) -> tuple[list[str], dict[str, str], str]:
    cmd = [sys.executable, str(HERE / "engine.py"), "--port", str(args.port), "--shape", args.shape,
           "--slots", str(args.parallel), "--max-len", str(args.context)]
    return cmd, {"TOKENIZERS_PARALLELISM": "false"}, "/health"


def wrapper_command(args) -> tuple[list[str], dict[str, str], str]:
    cmd = [sys.executable, str(HERE / "wrapper.py"), "--port", str(args.port), "--shape", args.shape]
    return cmd, {"TOKENIZERS_PARALLELISM": "false"}, "/health"


STACKS = {
    "bentoml": bentoml_command,
    "llama-server": llama_server_command,
    "torch-engine": torch_engine_command,
    "wrapper-fallback": wrapper_command,
}


def healthy(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every live (non-zombie) process."""
    table = {}
    for d in pathlib.Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            table[int(d.name)] = (int(fields[1]), int(fields[3]))
    return table


def stack_processes(root: int, known: set[int]) -> set[int]:
    """The stack's live processes: its session (the server leads one), the
    server's descendants (BentoML's process manager puts each worker in a
    session of its own) and any seen before that still live."""
    table = process_table()
    found = {pid for pid, (_, sid) in table.items() if sid == root}
    found |= {pid for pid in known if pid in table}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    if root in table:
        found.add(root)
    return found


def stop(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the stack (the server shuts its workers down), SIGKILL to
    whatever is left after `grace` seconds; returns when nothing is left."""
    root = proc.pid
    known = stack_processes(root, set())
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        targets = [root] if sig == signal.SIGTERM else sorted(known)
        for pid in targets:
            try:
                if pid == root:
                    os.killpg(root, sig)
                else:
                    os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            known = stack_processes(root, known)
            if not known:
                return
            time.sleep(0.05)
    if known:
        sys.exit(f"serve.py: processes {sorted(known)} of the stack survived SIGKILL")


def tail(path: pathlib.Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stack", choices=sorted(STACKS))
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--parallel", type=int, default=8,
                    help="llama-server's and torch-engine's slots (continuous batching)")
    ap.add_argument("--context", type=int, default=1024,
                    help="torch-engine's tokens of context per slot (prompt + reply; default %(default)s)")
    ap.add_argument("--shape", choices=["tiny", "llama-3-8b"], default="tiny",
                    help="the model bentoml, torch-engine and wrapper-fallback serve (llama-server: tiny only)")
    ap.add_argument("--threads", type=int, default=0, help="llama-server's CPU threads (default: all)")
    ap.add_argument("--log", type=pathlib.Path, help="the stack's output (default: a file beside the model)")
    ap.add_argument("--ready-timeout", type=float, default=180.0)
    ap.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    ap.add_argument("--stdin-stops", action="store_true", help="stop when stdin closes (for test harnesses)")
    args = ap.parse_args()
    if not 1 <= args.port <= 65535:
        ap.error(f"--port {args.port}: choose a port from 1 to 65535")
    if args.parallel < 1:
        ap.error("--parallel must be at least 1")
    if args.shape != "tiny" and args.stack == "llama-server":
        ap.error("llama-server serves the tiny Llama's GGUF only: use torch-engine for --shape llama-3-8b")
    if not (MODEL / "recipe.json").exists() and not os.environ.get("GAPSCOPE_TOKENIZER_DIR"):
        sys.exit(f"serve.py: the tiny Llama is not built ({MODEL}): run scripts/setup.sh")

    cmd, extra_env, health = STACKS[args.stack](args)
    log = args.log or REPO / f".cache/{args.stack}-{args.port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "wb")
    proc = subprocess.Popen(
        cmd, env=dict(os.environ, **extra_env), stdin=subprocess.DEVNULL,
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )

    stopping = threading.Event()

    def on_signal(signum, _frame):
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.stdin_stops:
        threading.Thread(target=lambda: (sys.stdin.read(), stopping.set()), daemon=True).start()

    deadline = time.monotonic() + args.ready_timeout
    while not healthy(args.port, health):
        if proc.poll() is not None:
            stop(proc, 1.0)
            print(f"serve.py: {args.stack} exited with {proc.returncode} before it was ready; its log ({log}):\n{tail(log)}",
                  file=sys.stderr)
            return 1
        if stopping.is_set() or time.monotonic() > deadline:
            why = "interrupted" if stopping.is_set() else f"not healthy after {args.ready_timeout:.0f} s"
            stop(proc, args.grace)
            print(f"serve.py: {args.stack} {why}; its log ({log}):\n{tail(log)}", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print(f"ready http://127.0.0.1:{args.port} pid {proc.pid}", flush=True)

    while not stopping.wait(0.2):
        if proc.poll() is not None:
            stop(proc, 1.0)
            print(f"serve.py: {args.stack} exited with {proc.returncode}; its log ({log}):\n{tail(log)}", file=sys.stderr)
            return 1
    stop(proc, args.grace)
    print(f"stopped {args.stack}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

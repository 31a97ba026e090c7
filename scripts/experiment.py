"""The seed's experiment, in the same device call as the checks
(`scripts/device-check --experiment`): the Python wrapper and the compiled
engine serve the same model on the same GPU in turn, gapscoped traces both
(eBPF, CUDA uprobes, CUPTI deep mode, NVML), gapscope-loadgen runs the
three phases against each, then the comparison table and the side-by-side
explain report.

On a GPU host the model is Llama-3-8B's shape with seeded random weights
made on the device (targets/stacks/shapes.py); with --stand-in it is the
tiny Llama on this machine's CPU, against the NVML stand-in, so CI runs
every step of it.

The wrapper is BentoML (targets/stacks/bento_service.py) when the Python
has it, or when its wheels came in the device pack (installed offline into
a venv that sees the host's own torch); otherwise wrapper.py, BentoML's
pattern without BentoML, and every output says so. The engine is
targets/stacks/engine.py (continuous batching, static KV cache, the decode
step as one CUDA graph).

Invariant: every step has its own time limit from the plan printed at the
start; a step that fails is recorded with why, and the steps after it run.
Artifacts (results, plots, the table, the reports) go to a directory
beside the result file; every figure in the result names its source.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

SHAPES = {
    "gpu": {
        "shape": "llama-3-8b", "slots": 64, "input_tokens": 128, "max_tokens": 256,
        "phases": [("warmup", "poisson:2:6s"), ("cooldown", "silence:3s"), ("stress", "closed:50:30s")],
        # BentoML's import, 16 GB of random weights on the GPU (and the
        # engine's CUDA graph capture) take well under a minute.
        "start_s": 60, "install_s": 30,
    },
    "stand-in": {
        "shape": "tiny", "slots": 8, "input_tokens": 64, "max_tokens": 32,
        "phases": [("warmup", "poisson:2:3s"), ("cooldown", "silence:1s"), ("stress", "closed:8:8s")],
        "start_s": 90, "install_s": 30,
    },
}
STACKS = ("python-wrapper", "compiled-engine")
# Seconds the last phase's requests may take to finish after it ends: then
# gapscope-loadgen gets SIGTERM, cancels what is still in flight (counted
# as `cancelled`) and writes everything measured. A wrapper at 50
# concurrent requests can take minutes per 256-token reply on a GPU; the
# figures are the phases' windows, which the cut does not change.
DRAIN_S = 10
# Seconds gapscope-loadgen has to write its results after SIGTERM.
WRITE_S = 8


def phase_seconds(plan):
    return sum(float(spec.rsplit(":", 1)[1].rstrip("s")) for _, spec in plan["phases"])


def time_plan(plan):
    """(step, limit in seconds) in the order they run."""
    load = int(phase_seconds(plan)) + DRAIN_S + WRITE_S
    return [
        ("start gapscoped (experiment)", 10),
        ("prepare the wrapper", plan["install_s"]),
        ("start python-wrapper", plan["start_s"]),
        ("load python-wrapper", load),
        ("start compiled-engine", plan["start_s"]),
        ("load compiled-engine", load),
        ("compare", 10),
        ("explain", 20),
    ]


def budget(mode):
    """The experiment's whole limit: its time plan's sum."""
    return sum(s for _, s in time_plan(SHAPES[mode]))


class Stack:
    """One server, started by targets/stacks/serve.py and stopped through
    its stdin (serve.py stops the whole process group)."""

    def __init__(self, py, kind, port, plan, env, log, timeout):
        self.port = port
        argv = [py, "targets/stacks/serve.py", kind, "--port", str(port), "--parallel", str(plan["slots"]),
                "--shape", plan["shape"], "--ready-timeout", str(timeout), "--log", log, "--stdin-stops",
                # The engine's KV cache: the prompt (and a chat template's
                # tokens) plus the reply, rounded up.
                "--context", str(-(-(plan["input_tokens"] + plan["max_tokens"] + 64) // 128) * 128)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.ready = self.proc.stdout.readline()
        self.pid = int(self.ready.split()[-1]) if self.ready.startswith("ready ") else None
        self.log = log

    def why(self):
        rest = self.proc.stdout.read() if self.proc.poll() is not None else ""
        return (self.ready + rest)[-2000:]

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def slug(stack):
    """A stack's name as check names spell it (python_wrapper)."""
    return stack.replace("-", "_")


def model_name(plan):
    return "tiny-llama" if plan["shape"] == "tiny" else plan["shape"]


def prepare_wrapper(args, py, work, limit):
    """(python, serve.py stack, note): BentoML where it can run, the
    fallback otherwise."""
    try:
        probe = subprocess.run([py, "-c", "import bentoml, fastapi"], capture_output=True, timeout=limit)
        has_bentoml = probe.returncode == 0
    except subprocess.TimeoutExpired:
        has_bentoml = False
    if has_bentoml:
        return py, "bentoml", "BentoML (installed on this host)"
    wheels = os.path.join(args.bin_dir, "wheels")
    if os.path.isdir(wheels):
        venv = os.path.join(work, "bentoml-venv")
        vpy = os.path.join(venv, "bin", "python")
        steps = [[py, "-m", "venv", "--system-site-packages", venv],
                 [vpy, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels,
                  "--disable-pip-version-check", "bentoml==1.4.40", "fastapi==0.165.0"],
                 # A venv made from a venv sees the base Python's packages,
                 # not the host's torch: then BentoML cannot serve here.
                 [vpy, "-c", "import torch, transformers, bentoml, fastapi"]]
        why = None
        deadline = time.monotonic() + limit
        for argv in steps:
            try:
                done = subprocess.run(argv, capture_output=True, text=True,
                                      timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                why = f"{' '.join(argv[:3])} ran past {limit} s"
                break
            if done.returncode != 0:
                why = f"{' '.join(argv[:3])} failed: {(done.stdout + done.stderr)[-600:]}"
                break
        if why is None:
            return vpy, "bentoml", "BentoML (installed offline from the device pack's wheels)"
        note = f"the fallback: BentoML's wheels from the device pack did not install ({why})"
    else:
        note = "the fallback: BentoML is not installed here and the device pack carries no wheels"
    return py, "wrapper-fallback", note


def load(result, args, plan, stack, port, daemon, out_dir, config_json, limit):
    """gapscope-loadgen's phases against `stack`, stopped with SIGTERM at
    `limit` (it writes its results then); (exit status, output)."""
    loadgen = os.path.join(args.bin_dir, "gapscope-loadgen")
    argv = [loadgen, "--url", f"http://127.0.0.1:{port}/v1/completions", "--model", model_name(plan),
            "--input-tokens", str(plan["input_tokens"]), "--max-tokens", str(plan["max_tokens"]),
            "--fixed-output", "--model-config", config_json,
            "--telemetry", f"gapscoped={daemon.url}", "--gapscoped", daemon.url,
            "--gapscoped-service", stack, "--quiet", "--out", out_dir]
    # The tokenizer makes prompts of exact length and counts a third way;
    # at the 8B shape the text is ids modulo the tokenizer's 4,096
    # entries, which it would re-tokenize into other counts, so there the
    # servers' usage counts alone.
    tokenizer = os.path.join(args.tokenizer_dir, "tokenizer.json")
    if plan["shape"] == "tiny" and os.path.exists(tokenizer):
        argv += ["--tokenizer", tokenizer]
    for name, spec in plan["phases"]:
        argv += ["--phase", f"{name}={spec}"]
    print(f"\n## load {stack}", flush=True)
    t = time.monotonic()
    log = os.path.join(os.path.dirname(out_dir), f"{stack}.loadgen.log")
    with open(log, "w") as f:
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
        cut = False
        try:
            rc = p.wait(timeout=max(1, limit - WRITE_S))
        except subprocess.TimeoutExpired:
            cut = True
            p.send_signal(signal.SIGTERM)
            try:
                rc = p.wait(timeout=WRITE_S)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
    with open(log) as f:
        out = f.read()
    seconds = round(time.monotonic() - t, 3)
    note = f"stopped with SIGTERM after {limit - WRITE_S} s (in-flight requests cancelled)\n" if cut else ""
    result.doc["steps"].append({"name": f"load {stack}", "rc": rc, "seconds": seconds, "timed_out": cut,
                                "output_tail": (note + out)[-4000:]})
    print("  " + (note + out[-1500:]).replace("\n", "\n  "), flush=True)
    return rc, out


def figures_of(stack, results, report):
    """Each figure with its value and where it came from."""
    figs = []

    def add(name, value, unit, source):
        figs.append({"stack": stack, "name": name, "value": value, "unit": unit, "source": source})

    stress = next((p for p in (results or {}).get("phases", []) if p["name"] == "stress"), None)
    if stress:
        src = "gapscope-loadgen results.json, phase stress"
        add("output_tokens_per_s", stress["throughput"]["output_tokens_per_s"], "tokens/s", src + ": throughput")
        add("requests_ok", stress["ok"], "requests", src + ": ok")
        add("requests_failed", stress["failed"], "requests", src + ": failed")
        add("mfu", stress.get("mfu"), "fraction", src + ": mfu (model FLOPs per token × tokens/s ÷ peak)")
        add("tokens_per_joule", stress.get("tokens_per_joule"), "tokens/J", src + ": tokens_per_joule (NVML energy)")
        for key in ("ttft", "itl_token", "e2e"):
            lat = stress.get("latency", {}).get(key)
            add(f"p99_{key}_ms", lat and lat["p99"] * 1e3, "ms", src + f": latency.{key}.p99")
    if report:
        src = "gapscoped /api/v1/explain"
        for g in report.get("gpu", []):
            busy = g.get("busy_ratio")
            add(f"gpu_idle_fraction[{g['device']}]", None if busy is None else 1 - busy, "fraction",
                f"{src}: gpu[{g['device']}].busy_ratio ({g['source']})")
            for c in g.get("idle_by_cause", [])[:6]:
                add(f"idle_{c['cause']}_s[{g['device']}]", c["seconds"], "s", f"{src}: gpu.idle_by_cause")
                # Which threads held the GIL while the launcher waited.
                for h in c.get("holders", [])[:3]:
                    add(f"idle_gil_wait_held_by_{h['thread'] or h['tid']}_s[{g['device']}]", h["seconds"], "s",
                        f"{src}: gpu.idle_by_cause[gil_wait].holders (tid {h['tid']})")
        f = report.get("fusion", {})
        add("kernels_per_token", f.get("kernels_per_token"), "kernels", src + ": fusion.kernels_per_token")
        add("launches_per_token", f.get("launches_per_token"), "launches", src + ": fusion.launches_per_token")
        add("small_kernel_share", f.get("tiny_kernel_share"), "fraction", src + ": fusion.tiny_kernel_share (< 10 µs)")
        gil = report.get("gil", {})
        add("gil_wait_s", gil.get("wait_seconds"), "s", src + ": gil.wait_seconds")
        add("serialization_s", sum(c["seconds"] for c in report.get("serialization", [])), "s",
            src + ": serialization[].seconds")
        for reason, seconds in sorted(report.get("cpu", {}).get("off_cpu_seconds", {}).items()):
            add(f"off_cpu_{reason}_s", seconds, "s", src + f": cpu.off_cpu_seconds.{reason}")
        for sc in report.get("cpu", {}).get("top_syscalls", [])[:5]:
            add(f"syscall_{sc['syscall']}_s", sc["seconds"], "s", src + ": cpu.top_syscalls")
    return figs


def run_experiment(result, args, mode, daemon_factory, work, tools):
    """The experiment's steps; `daemon_factory(services)` starts gapscoped
    watching `services` [(name, cmdline regex)] and returns it with the
    environment the servers run in (deep mode's injection library).
    `tools`: device_check's run_step, section and free_port."""
    run_step, section, free_port = tools.run_step, tools.section, tools.free_port

    plan = dict(SHAPES[mode])
    py = args.python
    out_root = os.path.join(os.path.dirname(args.out), "experiment")
    shutil.rmtree(out_root, ignore_errors=True)
    os.makedirs(out_root)
    steps = time_plan(plan)
    total = sum(s for _, s in steps)
    exp = {"mode": mode, "shape": plan["shape"], "phases": [f"{n}={s}" for n, s in plan["phases"]],
           "max_tokens": plan["max_tokens"], "input_tokens": plan["input_tokens"], "slots": plan["slots"],
           "time_plan": [{"step": n, "limit_s": s} for n, s in steps], "stacks": {}, "figures": [],
           "artifacts": os.path.relpath(out_root, os.path.dirname(args.out))}
    result.doc["experiment"] = exp
    print(f"\n## experiment: {plan['shape']}, phases {', '.join(exp['phases'])}, {plan['max_tokens']} output tokens")
    print("time plan (each step's limit; the whole at most "
          f"{total} s, {result.left(10**6)} s left of the run):", flush=True)
    for n, s in steps:
        print(f"  {s:>4} s  {n}", flush=True)
    limits = dict(steps)

    # The model's shape for MFU, as a config.json.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "targets/stacks"))
    import shapes

    cfg = shapes.config(plan["shape"]) if plan["shape"] != "tiny" else None
    config_json = os.path.join(work, "model-config.json")
    if cfg is None:
        shutil.copy(os.path.join(shapes.TINY_DIR, "config.json"), config_json)
    else:
        with open(config_json, "w") as f:
            json.dump(cfg, f)

    t0 = time.monotonic()
    daemon, env = daemon_factory([("python-wrapper", r"bento_service:LlamaService|wrapper\.py --port"),
                                  ("compiled-engine", r"engine\.py --port")])
    env = dict(env, GAPSCOPE_TOKENIZER_DIR=args.tokenizer_dir)
    result.doc["steps"].append({"name": "start gapscoped (experiment)", "rc": 0 if daemon.ready else 1,
                                "seconds": round(time.monotonic() - t0, 3), "timed_out": False,
                                "output_tail": daemon.why or ""})
    if not daemon.ready:
        result.cannot("experiment", f"gapscoped did not start for the experiment: {daemon.why}", "experiment")
        daemon.stop()
        return
    try:
        wrapper = {}
        section(result, "prepare the wrapper", limits["prepare the wrapper"],
                lambda: wrapper.update(zip(("py", "kind", "note"),
                                           prepare_wrapper(args, py, work, limits["prepare the wrapper"]))))
        if not wrapper:
            wrapper = {"py": py, "kind": "wrapper-fallback", "note": "the fallback: preparing BentoML failed"}
        stacks = {"python-wrapper": (wrapper["py"], wrapper["kind"], wrapper["note"]),
                  "compiled-engine": (py, "torch-engine", "targets/stacks/engine.py")}
        results = {}
        for name in STACKS:
            spy, kind, note = stacks[name]
            exp["stacks"][name] = {"server": kind, "note": note}
            print(f"\n### {name}: {note}", flush=True)
            t = time.monotonic()
            limit = result.left(limits[f"start {name}"])
            stack = Stack(spy, kind, free_port(), plan, env, os.path.join(out_root, f"{name}.server.log"), limit)
            if not stack.pid and kind == "bentoml":
                # BentoML installed but cannot serve here: the fallback,
                # saying why.
                why = stack.why()[-600:]
                stack.stop()
                print(f"  BentoML did not start; the fallback instead:\n  {why}", flush=True)
                spy, kind = py, "wrapper-fallback"
                note = f"the fallback: BentoML did not start ({why.strip()})"
                exp["stacks"][name] = {"server": kind, "note": note}
                stack = Stack(spy, kind, free_port(), plan, env, os.path.join(out_root, f"{name}.server.log"),
                              result.left(limits[f"start {name}"]))
            started = round(time.monotonic() - t, 3)
            result.doc["steps"].append({"name": f"start {name}", "rc": 0 if stack.pid else 1, "seconds": started,
                                        "timed_out": False, "output_tail": "" if stack.pid else stack.why()})
            if not stack.pid:
                result.cannot(f"experiment_{slug(name)}", f"{name} ({kind}) did not start: {stack.why()}", f"start {name}")
                stack.stop()
                continue
            exp["stacks"][name]["start_s"] = started
            try:
                about = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{stack.port}/v1/models",
                                                          timeout=10).read())["data"][0]
                exp["stacks"][name]["about"] = {k: v for k, v in about.items() if k not in ("object", "owned_by")}
            except (OSError, ValueError, KeyError, IndexError):
                pass
            if not daemon.wait_traced(stack.pid, timeout=15, service=name):
                result.cannot(f"experiment_{slug(name)}_traced", f"gapscoped never traced {name} (pid {stack.pid})",
                              f"start {name}")
            out_dir = os.path.join(out_root, name)
            try:
                rc, out = load(result, args, plan, name, stack.port, daemon, out_dir, config_json,
                               result.left(limits[f"load {name}"]))
            finally:
                stack.stop()
            exp["stacks"][name]["loadgen_rc"] = rc
            try:
                with open(os.path.join(out_dir, "results.json")) as f:
                    results[name] = json.load(f)
            except (OSError, ValueError) as e:
                result.cannot(f"experiment_{slug(name)}", f"gapscope-loadgen left no results ({e}): {out[-1500:]}",
                              f"load {name}")
                continue
            stress = next((p for p in results[name]["phases"] if p["name"] == "stress"), None)
            if stress is None:
                result.cannot(f"experiment_{slug(name)}", "the results have no stress phase", f"load {name}")
                continue
            phases = results[name]["phases"]
            ok = sum(p["ok"] for p in phases)
            errors = {}
            for p in phases:
                for kind, n in p["errors"].items():
                    errors[kind] = errors.get(kind, 0) + n
            broken = {k: n for k, n in errors.items() if k != "cancelled"}
            exp["stacks"][name]["errors"] = errors
            # Tokens, not whole replies: a wrapper at 50 concurrent requests
            # may finish none of its 256-token replies in the phases' time.
            tokens = sum(p["output_tokens"] for p in phases)
            exp["stacks"][name]["requests_ok"] = ok
            result.check(f"experiment_{slug(name)}_served", tokens, None,
                         "tokens streamed; no request failed but those cancelled at the step's end",
                         tokens > 0 and not broken, "tokens", step=f"load {name}",
                         why=None if rc is not None else "gapscope-loadgen did not exit")
            # The server's usage against the length asked for. (Chunks can
            # carry no text, a UTF-8 sequence held back, so counting chunks
            # with text is not a token count for these servers.)
            wrong = sum(p["tokens"]["length_not_honoured"] for p in phases)
            result.check(f"experiment_{slug(name)}_exact_tokens", wrong, 0,
                         f"every reply exactly {plan['max_tokens']} tokens (its usage)", wrong == 0,
                         "requests", step=f"load {name}")

        window = f"{int(time.monotonic() - t0) + 10}s"
        loadgen = os.path.join(args.bin_dir, "gapscope-loadgen")
        gapscoped = os.path.join(args.bin_dir, "gapscoped")
        if len(results) == 2:
            rc, out = run_step(result, "compare", [loadgen, "compare",
                                                   *(os.path.join(out_root, s, "results.json") for s in STACKS),
                                                   "--labels", ",".join(STACKS), "--phase", "stress"],
                               result.left(limits["compare"]))
            exp["compare_table"] = out
            with open(os.path.join(out_root, "compare.md"), "w") as f:
                f.write(out)
        rc, out = run_step(result, "explain", [gapscoped, "explain", "--compare", *STACKS, "--window", window,
                                               "--url", daemon.url], result.left(limits["explain"]))
        exp["explain_report"] = out[-12000:]
        with open(os.path.join(out_root, "explain.txt"), "w") as f:
            f.write(out)
        reports = {}
        for name in STACKS:
            q = urllib.parse.urlencode({"service": name, "window": window})
            try:
                reports[name] = daemon.get_json(f"/api/v1/explain?{q}")
                with open(os.path.join(out_root, f"explain-{name}.json"), "w") as f:
                    json.dump(reports[name], f, indent=1)
            except (OSError, ValueError) as e:
                result.cannot(f"experiment_explain_{slug(name)}", f"/api/v1/explain failed: {e}", "explain")
            exp["figures"] += figures_of(name, results.get(name), reports.get(name))
        named = [n for n in STACKS if n in out]
        result.check("experiment_explain", len(named), 2, "explain --compare reports both stacks",
                     len(named) == 2 and rc == 0, "stacks", step="explain")
        tput = {f["stack"]: f["value"] for f in exp["figures"] if f["name"] == "output_tokens_per_s"}
        if len(tput) == 2 and tput["python-wrapper"]:
            exp["speedup"] = {"value": tput["compiled-engine"] / tput["python-wrapper"],
                              "source": "output_tokens_per_s of the stress phase, compiled-engine ÷ python-wrapper"}
            print(f"\ncompiled-engine ÷ python-wrapper, output tokens/s: {exp['speedup']['value']:.2f}×",
                  flush=True)
    finally:
        daemon.stop()
        exp["gapscoped_log"] = daemon.log_tail(6000)

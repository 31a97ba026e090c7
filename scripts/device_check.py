"""The device check as one unattended call with one JSON result.

    scripts/device-check [--stand-in] [--experiment | --experiment-only] [--out FILE]

On a GPU host (the default) it runs gapscoped and the injection library
against PyTorch on the host's own driver (targets/device_check.py); with
--stand-in it runs the same kinds of checks on this machine against the
stand-ins the tests use: the NVML stand-in (testkit/data/fake_nvml.c),
the simulated device with fake libcuda/libcudart and the CUPTI stand-in.

Every step has its own time limit and its failure is recorded, never
fatal to the steps after it. Each check is a name, the measured value,
the truth it is compared with, the target, and pass; a check that could
not run says why and does not pass. The result (schema:
scripts/device-check.schema.json) goes to --out (default
device-check.json in the current directory); the exit status is 0 only
when every check passed.

With --experiment, the seed's experiment follows the checks
(scripts/experiment.py): the Python wrapper against the compiled engine,
both traced, loaded in turn; its figures go into the result's
`experiment` section and its files into experiment/ beside --out.

Only the standard library (and, for the experiment's servers, the host's
torch and transformers): it runs on a GPU host's Python as is.
"""

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request

import experiment

SCHEMA = "gapscope-device-check/1"
# The whole run's limits: the checks alone under 8 minutes on one GPU,
# start-up included; with the experiment (its own time plan's sum) the
# two together within 9 minutes.
BUDGET_S = {"gpu": 450, "stand-in": 300}
WITH_EXPERIMENT_S = {"gpu": 520, "stand-in": 600}
# Directories the stand-ins were built in, removed at the end.
work_dirs = []
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")


def finite(v):
    """A JSON-safe number: NaN and infinities (a reading that failed) become
    null, as JSON has no NaN."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class Result:
    """The document being built: host, steps, checks."""

    def __init__(self, mode, budget_s):
        self.doc = {
            "schema": SCHEMA,
            "mode": mode,
            "started_unix": time.time(),
            "duration_s": None,
            "host": {},
            "steps": [],
            "checks": [],
            "pass": False,
        }
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s

    def left(self, want):
        """A step's time limit: what it asks, at most what the run has left
        (the whole run has its own limit)."""
        return max(1, min(want, int(self.deadline - time.monotonic())))

    def check(self, name, value, truth, target, ok, unit="", why=None, step=None):
        value, truth = finite(value), finite(truth)
        if why is None and value is None and truth is not None:
            why = "no value was measured"
        c = {
            "name": name,
            "value": value,
            "truth": truth,
            "target": target,
            "unit": unit,
            "pass": bool(ok) if why is None else False,
            "why": why,
            "step": step,
        }
        self.doc["checks"].append(c)
        mark = "PASS" if c["pass"] else "FAIL"
        shown = "-" if value is None else f"{value:.6g}" if isinstance(value, float) else value
        truth_shown = "-" if truth is None else f"{truth:.6g}" if isinstance(truth, float) else truth
        print(f"  {mark} {name}: {shown} {unit} (truth {truth_shown}; target {target})"
              + (f" — {why}" if why else ""), flush=True)

    def cannot(self, name, why, step):
        self.check(name, None, None, "run", False, why=why, step=step)

    def finish(self, out):
        d = self.doc
        d["duration_s"] = round(time.monotonic() - self.t0, 3)
        d["pass"] = bool(d["checks"]) and all(c["pass"] for c in d["checks"])
        with open(out, "w") as f:
            json.dump(d, f, indent=1, allow_nan=False)
            f.write("\n")
        failed = [c["name"] for c in d["checks"] if not c["pass"]]
        print(f"\n{len(d['checks']) - len(failed)} of {len(d['checks'])} checks passed"
              + (f"; failed: {', '.join(failed)}" if failed else "")
              + f"; {d['duration_s']:.0f} s; written to {out}", flush=True)
        return 0 if d["pass"] else 1


def run_step(result, name, argv, timeout, env=None, stdin=None, judged=True):
    """Runs one step with its own limit; records it; returns (rc, stdout).

    CHECK lines on the step's stdout become checks. A `judged` step that
    fails or runs past its limit is a failed check of its own, so checks it
    never got to print cannot leave the run passing."""
    print(f"\n## {name}", flush=True)
    timeout = result.left(timeout)
    t = time.monotonic()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           env=env, input=stdin, cwd=ROOT)
        rc, out, err, timed_out = p.returncode, p.stdout, p.stderr, False
    except subprocess.TimeoutExpired as e:
        rc, timed_out = None, True
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    except OSError as e:
        rc, out, err, timed_out = None, "", f"cannot run {argv[0]}: {e}", False
    seconds = round(time.monotonic() - t, 3)
    for line in out.splitlines():
        if line.startswith("CHECK "):
            try:
                c = json.loads(line[6:])
                result.check(c["name"], c.get("value"), c.get("truth"), c.get("target", ""),
                             c.get("pass"), c.get("unit", ""), c.get("why"), step=name)
            except (ValueError, KeyError, TypeError) as e:
                result.cannot("check_line", f"{name}: unreadable CHECK line ({e}): {line[:200]}", name)
        else:
            print("  " + line, flush=True)
    tail = (out + "\n" + err)[-4000:]
    result.doc["steps"].append({"name": name, "rc": rc, "seconds": seconds,
                                "timed_out": timed_out, "output_tail": tail})
    slug = "step_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if timed_out:
        print(f"  step {name} ran past its {timeout} s and was stopped", flush=True)
        if judged:
            result.cannot(slug, f"ran past its {timeout} s and was stopped", name)
    elif rc != 0:
        print(f"  step {name} exited {rc}: {err.strip()[-600:]}", flush=True)
        if judged:
            result.cannot(slug, f"exited {rc}: {err.strip()[-300:]}", name)
    return rc, out


# ---- gapscoped --------------------------------------------------------------

class Daemon:
    """gapscoped with a configuration of its own, checked ready."""

    def __init__(self, binary, work, config_extra, service_cmdline, env=None, name="gapscoped"):
        """`service_cmdline`: the cmdline regex of the one service
        "device-check", or a list of (service, cmdline regex)."""
        self.port = free_port()
        self.log = os.path.join(work, f"{name}.log")
        self.socket = os.path.join(work, f"{name}.sock")
        config = os.path.join(work, f"{name}.toml")
        services = service_cmdline if isinstance(service_cmdline, list) else [("device-check", service_cmdline)]
        with open(config, "w") as f:
            f.write(f'[daemon]\nlisten = "127.0.0.1:{self.port}"\n\n{config_extra}\n'
                    f'[inject]\nsocket = "{self.socket}"\n\n')
            for service, cmdline in services:
                f.write(f"[[service]]\nname = \"{service}\"\ncmdline = '{cmdline}'\n\n")
        self.proc = subprocess.Popen([binary, "--config", config], stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "w"), env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready, self.why = False, None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.why = f"gapscoped exited {self.proc.returncode} at start: {self.log_tail()}"
                return
            try:
                if urllib.request.urlopen(self.url + "/healthz", timeout=2).read() == b"ok\n":
                    self.ready = True
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.why = f"gapscoped did not answer /healthz within 30 s: {self.log_tail()}"

    def wait_traced(self, pid, timeout=10, service="device-check"):
        """Until gapscoped says it traces `pid` (its rescan runs each
        second); False when it never does."""
        line = f"tracing pid {pid} as service {service}\n"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(self.log) as f:
                    if line in f.read():
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def log_tail(self, n=2000):
        try:
            with open(self.log) as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def scrape(self):
        text = urllib.request.urlopen(self.url + "/metrics", timeout=10).read().decode()
        out = []
        for line in text.splitlines():
            m = SAMPLE.match(line)
            if m:
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
                out.append((m.group(1), labels, float(m.group(4))))
        return out

    def get_json(self, path):
        return json.loads(urllib.request.urlopen(self.url + path, timeout=30).read())

    def post(self, path, body):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=10).read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def probe_sites(samples):
    """gapscope_cuda_probe_sites as {"api/entry": {instruction: sites}}: the
    instruction each CUDA probe sits on (kernels that emulate a probed push
    or nop do it in the trap; other instructions are single-stepped, tens
    of µs a hit on a VM)."""
    out = {}
    for n, l, v in samples:
        if n == "gapscope_cuda_probe_sites" and v:
            out.setdefault(f"{l.get('api')}/{l.get('entry')}", {})[l.get("instruction")] = int(v)
    return out


class SiteWatch:
    """Scrapes gapscoped every half second while a step runs and keeps the
    last non-empty gapscope_cuda_probe_sites: the probes are detached when
    the step's process exits."""

    def __init__(self, daemon):
        self.daemon, self.sites, self.done = daemon, {}, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.done.wait(0.5):
            try:
                sites = probe_sites(self.daemon.scrape())
            except Exception:  # a daemon dying mid-reply: keep what was seen
                continue
            if sites:
                self.sites = sites

    def stop(self):
        self.done.set()
        self.thread.join()
        return self.sites


def record_probe_sites(host, sites):
    """Keeps the sites in the host record and prints one line a kind."""
    host["cuda_probe_sites"] = sites
    by_kind = {}
    for entry, kinds in sites.items():
        for kind, n in kinds.items():
            by_kind.setdefault(kind, []).append(f"{entry} ×{n}")
    for kind, entries in sorted(by_kind.items()):
        print(f"CUDA probe sites on {kind}: {', '.join(entries)}", flush=True)
    if not sites:
        print("CUDA probe sites: none seen attached", flush=True)


def total(samples, name, **labels):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items()))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def monotonic_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def until(epoch_ns, ms):
    at = epoch_ns + ms * 1_000_000
    now = monotonic_ns()
    if at > now:
        time.sleep((at - now) / 1e9)


def sh(argv, timeout=20):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def elf_symbol_names(path):
    """The names in an ELF file's symbol tables (.symtab and .dynsym), from
    the file itself: the string "take_gil" also sits in .rodata (an error
    message names it), so only the symbol tables tell."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only
        return set()
    end = "<" if data[5] == 1 else ">"
    shoff, = struct.unpack_from(end + "Q", data, 0x28)
    shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
    sections = [struct.unpack_from(end + "IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = set()
    for sh_name, sh_type, _, _, off, size, link, _, _, entsize in sections:
        if sh_type not in (2, 11) or not entsize:  # SHT_SYMTAB, SHT_DYNSYM
            continue
        stroff, strsize = sections[link][4], sections[link][5]
        strtab = data[stroff:stroff + strsize]
        for i in range(size // entsize):
            st_name, = struct.unpack_from(end + "I", data, off + i * entsize)
            if st_name:
                names.add(strtab[st_name:strtab.index(b"\0", st_name)].decode(errors="replace"))
    return names


def python_has_gil_symbols(python):
    """Whether the Python's libpython (or executable) keeps take_gil: the GIL
    and serialization probes need symbols a stripped build lacks."""
    # The file the interpreter runs from: a libpython it maps, else itself
    # (Debian's python3 is one static executable).
    code = ("import os, sys\n"
            "maps = [l.split()[-1] for l in open('/proc/self/maps') if 'libpython' in l and '.so' in l]\n"
            "print(maps[0] if maps else os.path.realpath(sys.executable))")
    path = sh([python, "-c", code])
    if not path or not os.path.exists(path):
        return None, path
    try:
        return "take_gil" in elf_symbol_names(path), path
    except (OSError, ValueError, IndexError, struct.error) as e:
        print(f"cannot read the symbols of {path}: {e}", flush=True)
        return None, path


def median_and_spread(values):
    return statistics.median(values), (min(values), max(values))


# ---- the GPU host -------------------------------------------------------------

def gpu_mode(args, result, work):
    if not args.experiment_only:
        gpu_checks(args, result, work)
    if args.experiment or args.experiment_only:
        gpu_experiment(args, result, work)


def host_cupti(py):
    """The PyTorch wheels' libcupti, for a process that maps none yet;
    without one the agent finds the mapped library or a soname."""
    return sh([py, "-c", "import nvidia, os, glob; print(next(iter(glob.glob(os.path.join("
               "list(nvidia.__path__)[0], '*', 'lib', 'libcupti.so*'))), ''))"], timeout=60) or ""


def gpu_experiment(args, result, work):
    gapscoped = os.path.join(args.bin_dir, "gapscoped")
    inject = os.path.abspath(os.path.join(args.bin_dir, "libgapscope_inject.so"))
    for needed in [gapscoped, inject, os.path.join(args.bin_dir, "gapscope-loadgen")]:
        if not os.path.exists(needed):
            result.cannot("experiment", f"{needed} is missing: run scripts/device-pack and unpack it here",
                          "experiment")
            return
    if not os.path.exists(os.path.join(args.tokenizer_dir, "tokenizer.json")):
        result.cannot("experiment", f"no tokenizer in {args.tokenizer_dir}: run scripts/device-pack (it packs "
                      "the tiny Llama's tokenizer into target/device-pack/tokenizer/) and carry it here",
                      "experiment")
        return
    cupti = host_cupti(args.python)

    def daemon(services):
        d = Daemon(gapscoped, work, "[nvml]\ninterval_ms = 200\n", services, name="experiment")
        env = dict(os.environ, CUDA_INJECTION64_PATH=inject, GAPSCOPE_SOCKET=d.socket)
        if cupti:
            env["GAPSCOPE_CUPTI_PATH"] = cupti
        return d, env

    result.deadline = time.monotonic() + experiment.budget("gpu")
    section(result, "experiment", experiment.budget("gpu"), experiment.run_experiment,
            result, args, "gpu", daemon, work, TOOLS)


def gpu_checks(args, result, work):
    py, bins = args.python, args.bin_dir
    gapscoped = os.path.join(bins, "gapscoped")
    inject = os.path.join(bins, "libgapscope_inject.so")
    host = result.doc["host"]
    smi = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader", "-i", "0"])
    if smi:
        name, driver, memory = [s.strip() for s in smi.split(",")[:3]]
        host.update({"gpu": name, "driver": driver, "gpu_memory": memory})
    versions = sh([py, "-c", "import torch; print(torch.__version__, torch.version.cuda)"], timeout=60)
    if versions:
        host["torch"], host["cuda"] = versions.split()[:2]
    has_gil, libpython = python_has_gil_symbols(py)
    host["python_gil_symbols"] = has_gil
    host["libpython"] = libpython
    for needed in [gapscoped, inject]:
        if not os.path.exists(needed):
            result.cannot("binaries", f"{needed} is missing: run scripts/device-pack and unpack it here", "host")
            return
    if not smi:
        result.cannot("gpu", "nvidia-smi answers nothing: no NVIDIA driver or GPU on this host", "host")
        return
    if not versions:
        result.cannot("torch", f"{py} cannot import torch (PYTHON=... names another Python)", "host")
        return
    # What the host supports, for the record (the checks below judge).
    rc, out = run_step(result, "gapscoped check", [gapscoped, "check"], 30, judged=False)
    host["gapscoped_check"] = out[-2000:]
    rc, out = run_step(result, "baseline launch loop", [py, "targets/device_check.py", "baseline"], 120)
    try:
        baseline_ns = json.loads(out.strip().splitlines()[-1])["ns_per_launch"]
    except (ValueError, IndexError, KeyError):
        result.cannot("baseline", "the baseline loop printed no ns_per_launch", "baseline launch loop")
        return
    daemon = Daemon(gapscoped, work,
                    "[nvml]\ninterval_ms = 200\n\n# Count every call exactly.\n[cuda]\nlaunch_budget = 1.0\n\n"
                    "[python]\nserialization_budget = 1000000\n",
                    "device_check.py (traced|deep|explain)")
    try:
        if not daemon.ready:
            result.cannot("gapscoped", daemon.why, "start gapscoped")
            return
        if not has_gil:
            print(f"\nThis Python ({libpython}) is stripped: no GIL or serialization probes; "
                  "the explain check expects the json stall as python_cpu", flush=True)
        env = dict(os.environ, GAPSCOPE_DEVICE_CHECK_STRIPPED="0" if has_gil else "1")
        watch = SiteWatch(daemon)
        run_step(result, "CUDA calls and NVML", [py, "targets/device_check.py", "traced",
                                                 str(daemon.port), str(baseline_ns)], 180, env=env)
        record_probe_sites(host, watch.stop())
        cupti = host_cupti(py)
        deep_env = dict(env, CUDA_INJECTION64_PATH=os.path.abspath(inject), GAPSCOPE_SOCKET=daemon.socket)
        if cupti:
            deep_env["GAPSCOPE_CUPTI_PATH"] = cupti
        host["libcupti"] = cupti or None
        run_step(result, "CUPTI deep mode", [py, "targets/device_check.py", "deep", str(daemon.port)],
                 120, env=deep_env)
        overhead(result, [py, "targets/device_check.py", "decode"], deep_env, os.environ,
                 target_loss=0.03, rounds=args.rounds, timeout=60)
        run_step(result, "explain", [py, "targets/device_check.py", "explain", str(daemon.port)],
                 180, env=deep_env)
        rc, out = run_step(result, "gapscoped explain",
                           [gapscoped, "explain", "device-check", "--window", "5m", "--url", daemon.url], 60)
        result.doc["explain_report"] = out[-8000:]
    finally:
        daemon.stop()
        result.doc["gapscoped_log"] = daemon.log_tail(8000)


def steps_per_second(out):
    """From a loop's JSON line: steps_per_second, or steps over its
    CLOCK_MONOTONIC start and end."""
    for line in reversed(out.splitlines()):
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if "steps_per_second" in j:
            return j["steps_per_second"]
        if {"steps", "start_ns", "end_ns"} <= j.keys() and j["end_ns"] > j["start_ns"]:
            return j["steps"] / ((j["end_ns"] - j["start_ns"]) / 1e9)
    return None


def overhead(result, argv, with_env, without_env, target_loss, rounds, timeout, stdin=None):
    """The decode-like loop with and without the injection library,
    alternating, `rounds` each way: the median loss and its spread."""
    print(f"\n## overhead: decode loop, {rounds} runs each way, alternating", flush=True)
    timeout = max(1, timeout)
    plain, injected = [], []
    for i in range(rounds):
        pair = []
        for env, kind in ((without_env, "plain"), (with_env, "injected")):
            rc, out = run_step(result, f"decode {kind} {i + 1}", argv, timeout, env=env, stdin=stdin)
            pair.append(steps_per_second(out))
        # Only whole pairs: a lost run must not shift the pairing.
        if all(pair):
            plain.append(pair[0])
            injected.append(pair[1])
    if len(plain) < rounds:
        result.cannot("decode_overhead", f"only {len(plain)} of {rounds} pairs of runs finished", "overhead")
        return
    # Losses of paired runs, so a drifting machine shows as spread.
    losses = [1 - b / a for a, b in zip(plain, injected)]
    loss, (lo, hi) = median_and_spread(losses)
    result.doc["overhead"] = {"plain_steps_per_second": plain, "injected_steps_per_second": injected,
                              "paired_losses": losses, "median_loss": loss, "spread": [lo, hi]}
    result.check("decode_overhead", round(loss, 4), 0.0, f"median loss < {target_loss:.0%}",
                 loss < target_loss, "fraction", step="overhead")
    print(f"  losses per pair: {', '.join(f'{100 * x:.1f}%' for x in losses)}; "
          f"median {100 * loss:.1f}% (spread {100 * lo:.1f}% to {100 * hi:.1f}%)", flush=True)


# ---- this machine, on the stand-ins -------------------------------------------

def section(result, name, limit_s, fn, *args):
    """Runs one in-process step: its time is recorded, and a failure (an
    exception, or running past `limit_s`: each wait inside has its own
    bound) becomes a failed check instead of ending the run."""
    t = time.monotonic()
    rc, tail = 0, ""
    try:
        fn(*args)
    except Exception as e:  # recorded; the next step still runs
        rc, tail = 1, f"{type(e).__name__}: {e}"
        result.cannot(name.split(" (")[0].lower().replace(" ", "_"), f"{name} failed: {tail}", name)
    seconds = round(time.monotonic() - t, 3)
    if seconds > limit_s:
        result.cannot(name.split(" (")[0].lower().replace(" ", "_") + "_time",
                      f"{name} took {seconds:.0f} s, over its {limit_s} s", name)
    result.doc["steps"].append({"name": name, "rc": rc, "seconds": seconds, "timed_out": seconds > limit_s,
                                "output_tail": tail})


def build_stand_ins(args, result, work):
    """The NVML stand-in and the simulated device; None and a recorded
    check when they cannot be built."""
    rc, out = run_step(result, "build the stand-ins",
                       [os.path.join(args.bin_dir, "gapscope-sim-device"), "--nvml"], 300)
    lines = out.strip().splitlines()
    if rc != 0 or len(lines) < 2:
        return None
    fixture, cupti = lines[-2].split()
    nvml = lines[-1].strip()
    work_dirs.extend([fixture, os.path.dirname(nvml)])
    return nvml, fixture, cupti


def spawn(argv, env, daemon):
    """A fixture process that prints "ready" and waits for a line, once
    gapscoped traces it."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, env=env, cwd=ROOT)
    if p.stdout.readline().strip() != "ready":
        p.kill()
        raise RuntimeError(f"{' '.join(argv)} did not say ready")
    if not daemon.wait_traced(p.pid):
        p.kill()
        raise RuntimeError(f"gapscoped never traced {' '.join(argv)} (pid {p.pid})")
    return p


def say(p, line):
    p.stdin.write(line + "\n")
    p.stdin.flush()


def until_done(p, timeout):
    """Its lines up to "done" (at most `timeout` s: a watchdog kills it)."""
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    lines = []
    try:
        for line in p.stdout:
            if line.strip() == "done":
                break
            lines.append(line.strip())
    finally:
        timer.cancel()
    return lines


def close(p):
    try:
        p.stdin.close()
        p.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        p.kill()
        p.wait()


def stand_in_mode(args, result, work):
    if not args.experiment_only:
        stand_in_checks(args, result, work)
    if args.experiment or args.experiment_only:
        stand_in_experiment(args, result, work)


def stand_in_experiment(args, result, work):
    """The experiment at the tiny shape on this CPU; gapscoped reads the
    NVML stand-in (a steady 70 W), so energy figures exist."""
    built = build_stand_ins(args, result, work)
    if not built:
        return
    nvml = built[0]
    scenario = os.path.join(work, "experiment-scenario.json")
    with open(scenario, "w") as f:
        json.dump({"epoch_ns": monotonic_ns(), "driver_version": "575.57.08", "gpus": [{
            "uuid": "GPU-e0e0e0e0-0000-0000-0000-000000000000", "name": "NVIDIA H100 80GB HBM3",
            "memory_total": 85_520_809_984, "power_limit_w": 700,
            "idle": {"utilization": 0, "power_w": 70, "energy_w": 70, "temperature_c": 34,
                     "memory_used": 600_000_000}, "spans": []}]}, f)

    def daemon(services):
        env = dict(os.environ, GAPSCOPE_FAKE_NVML_SCENARIO=scenario)
        d = Daemon(os.path.join(args.bin_dir, "gapscoped"), work,
                   f'[nvml]\nlibrary = "{nvml}"\ninterval_ms = 200\n', services, env=env, name="experiment")
        return d, os.environ

    result.deadline = time.monotonic() + experiment.budget("stand-in")
    section(result, "experiment", experiment.budget("stand-in"), experiment.run_experiment,
            result, args, "stand-in", daemon, work, TOOLS)


def stand_in_checks(args, result, work):
    host = result.doc["host"]
    host.update({"gpu": "stand-in (NVML stand-in, simulated device)", "driver": "stand-in 575.57.08",
                 "cuda": "stand-ins of libcuda 12 and CUPTI 12.9", "torch": None})
    built = build_stand_ins(args, result, work)
    if not built:
        return
    nvml, fixture, cupti = built
    py = args.python
    inject = os.path.join(args.bin_dir, "libgapscope_inject.so")
    # Far enough ahead for gapscoped to start on a busy machine.
    epoch = monotonic_ns() + 8_000_000_000
    scenario = {
        "epoch_ns": epoch,
        "driver_version": "575.57.08",
        "gpus": [{
            "uuid": "GPU-de71ce00-0000-0000-0000-000000000000", "name": "NVIDIA H100 80GB HBM3",
            "memory_total": 85_520_809_984, "power_limit_w": 700,
            "idle": {"utilization": 0, "power_w": 70, "energy_w": 0, "temperature_c": 34,
                     "memory_used": 600_000_000},
            "spans": [{"from_ms": 0, "to_ms": 1500, "utilization": 87, "power_w": 420.5, "energy_w": 400,
                       "temperature_c": 66, "memory_used": 60_000_000_000}],
        }],
    }
    path = os.path.join(work, "scenario.json")
    with open(path, "w") as f:
        json.dump(scenario, f)
    env = dict(os.environ, GAPSCOPE_FAKE_NVML_SCENARIO=path)
    # Count every call: these checks measure exactness, not the budgets.
    # The service is the check's own processes: each names the fixture
    # directory, which no other process on the machine does.
    daemon = Daemon(os.path.join(args.bin_dir, "gapscoped"), work,
                    f'[nvml]\nlibrary = "{nvml}"\ninterval_ms = 100\n\n[cuda]\nlaunch_budget = 1.0\n\n'
                    '[python]\nserialization_budget = 1000000\n',
                    re.escape(fixture), env=env)
    try:
        if not daemon.ready:
            result.cannot("gapscoped", daemon.why, "start gapscoped")
            return
        section(result, "NVML (stand-in)", 30, nvml_checks, result, daemon, epoch)
        section(result, "CUDA uprobes (stand-in libcuda)", 90, uprobe_checks, result, daemon, fixture)
        deep_env = dict(os.environ, CUDA_INJECTION64_PATH=os.path.abspath(inject),
                        GAPSCOPE_SOCKET=daemon.socket, GAPSCOPE_CUPTI_PATH=cupti)
        section(result, "CUPTI deep mode (stand-in)", 150, deep_checks, result, daemon, py, fixture, deep_env)
        section(result, "explain (stand-in)", 180, explain_checks, result, daemon, py, fixture, deep_env)
        # The stand-in's cost is not CUPTI's: the target only catches a gross
        # regression of the agent (pairs swing ±10 % on a busy machine).
        overhead(result, [py, "targets/sim_decode.py", fixture, "--seconds", "2"],
                 deep_env, os.environ, target_loss=0.10, rounds=args.rounds, timeout=60, stdin="go\n")
        rc, out = run_step(result, "gapscoped explain",
                           [os.path.join(args.bin_dir, "gapscoped"), "explain", "device-check",
                            "--window", "5m", "--url", daemon.url], 60)
        result.doc["explain_report"] = out[-8000:]
    finally:
        daemon.stop()
        result.doc["gapscoped_log"] = daemon.log_tail(8000)


def nvml_checks(result, daemon, epoch):
    step = "NVML (stand-in)"
    print(f"\n## {step}", flush=True)
    energy = lambda m: total(m, "gapscope_gpu_energy_joules_total", gpu="0")
    deadline = time.monotonic() + 10
    while not any(n == "gapscope_gpu_energy_joules_total" for n, _, _ in daemon.scrape()):
        if time.monotonic() > deadline:
            result.cannot("nvml_up", f"no GPU reading within 10 s: {daemon.log_tail()}", step)
            return
        time.sleep(0.1)
    before = daemon.scrape()
    if monotonic_ns() >= epoch:
        result.cannot("nvml_energy", "gapscoped started too late for the scripted window", step)
        return
    until(epoch, 700)
    m = daemon.scrape()
    g0 = lambda name: total(m, name, gpu="0")
    for name, value, truth, unit in [
        ("nvml_utilization", g0("gapscope_gpu_utilization_ratio"), 0.87, "ratio"),
        ("nvml_power", g0("gapscope_gpu_power_watts"), 420.5, "W"),
        ("nvml_temperature", g0("gapscope_gpu_temperature_celsius"), 66.0, "C"),
        ("nvml_memory_used", g0("gapscope_gpu_memory_used_bytes"), 60e9, "bytes"),
        ("nvml_memory_total", g0("gapscope_gpu_memory_total_bytes"), 85_520_809_984.0, "bytes"),
    ]:
        result.check(name, value, truth, "equal", value == truth, unit, step=step)
    # The counter is still outside the span: its growth across it is the
    # span's joules exactly (400 W for 1.5 s).
    until(epoch, 1800)
    after = daemon.scrape()
    grew = energy(after) - energy(before)
    result.check("nvml_energy", grew, 600.0, "equal", grew == 600.0, "J", step=step)
    # A silent phase at idle power passes the idle check.
    daemon.post("/api/v1/annotations", {"phase": "device-check-idle", "kind": "silence", "event": "start",
                                         "run_id": "dc", "monotonic_ns": epoch + 2_000_000_000})
    until(epoch, 4000)
    check = daemon.post("/api/v1/annotations", {"phase": "device-check-idle", "kind": "silence",
                                                 "event": "end", "run_id": "dc",
                                                 "monotonic_ns": epoch + 4_000_000_000})
    gpus = (check.get("idle_check") or {}).get("gpus") or [{}]
    g = gpus[0]
    result.check("idle_check", g.get("power_mean_watts"), 70.0, "idle, at the idle power",
                 g.get("idle") is True and g.get("power_mean_watts") == 70.0, "W",
                 why=None if g else f"no idle check in the reply: {check}", step=step)


def uprobe_checks(result, daemon, fixture):
    step = "CUDA uprobes (stand-in libcuda)"
    print(f"\n## {step}", flush=True)
    launches, syncs = 20_000, 200
    p = spawn([os.path.join(fixture, "cuda_caller"), fixture, "exact", str(launches), str(syncs), "100"], None,
              daemon)
    try:
        say(p, "load")
        until_done(p, 30)
        # Loaded: wait until gapscoped probes both libraries.
        deadline = time.monotonic() + 10
        while total(daemon.scrape(), "gapscope_cuda_probed_files") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        before = daemon.scrape()
        record_probe_sites(result.doc["host"], probe_sites(before))
        say(p, "go")
        until_done(p, 60)
    finally:
        close(p)
    time.sleep(0.5)
    after = daemon.scrape()
    d = lambda name, **l: total(after, name, **l) - total(before, name, **l)
    # cuLaunchKernel and cuLaunchKernel_ptsz share a slot (and a label).
    for entry, truth in [("cuLaunchKernel", 2 * launches), ("cudaLaunchKernel", launches),
                         ("cuLaunchKernelEx", launches)]:
        got = d("gapscope_cuda_launches_total", entry=entry)
        result.check(f"launches_{entry}", got, float(truth), "equal", got == truth, "launches", step=step)
    got = d("gapscope_cuda_host_sync_wait_seconds_count", call="cudaDeviceSynchronize")
    result.check("syncs_cudaDeviceSynchronize", got, float(syncs), "equal", got == syncs, "calls", step=step)


def deep_checks(result, daemon, py, fixture, env):
    step = "CUPTI deep mode (stand-in)"
    print(f"\n## {step}", flush=True)
    steps = 2000
    p = spawn([py, "testkit/data/gpu_loop.py", fixture, "kernels", str(steps), "50", "100"], env, daemon)
    try:
        before = daemon.scrape()
        say(p, "go")
        lines = until_done(p, 120)
    finally:
        close(p)
    truth = next((l.split() for l in lines if l.startswith("device ")), None)
    time.sleep(1.5)  # flush (100 ms) and the reorder window (500 ms)
    after = daemon.scrape()
    if not truth:
        result.cannot("deep_kernels", f"gpu_loop.py reported no device totals: {lines[-5:]}", step)
        return
    kernels, busy_ns = int(truth[2]), int(truth[6])
    d = lambda name, **l: total(after, name, **l) - total(before, name, **l)
    got = d("gapscope_gpu_kernel_duration_seconds_count", service="device-check")
    result.check("deep_kernels", got, float(kernels), "equal", got == kernels, "kernels", step=step)
    busy = d("gapscope_gpu_busy_seconds_total", service="device-check")
    err = busy / (busy_ns / 1e9) - 1 if busy_ns else float("inf")
    result.check("deep_busy", busy, busy_ns / 1e9, "within 0.1 %", abs(err) < 0.001, "s", step=step)


def explain_checks(result, daemon, py, fixture, env):
    step = "explain (stand-in)"
    print(f"\n## {step}", flush=True)
    p = spawn([py, "targets/stall_probe.py", fixture, "--simulate", "--steps", "30",
               "--gapscoped", daemon.url, "--tag", "dc"], env, daemon)
    try:
        # The GIL and json probes attach on gapscoped's next scans.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            m = daemon.scrape()
            if (total(m, "gapscope_python_processes", service="device-check") >= 1
                    and total(m, "gapscope_serialization_probed_files") >= 1):
                break
            time.sleep(0.1)
        say(p, "go")
        lines = until_done(p, 120)
    finally:
        close(p)
    phases = {}
    for l in lines:
        try:
            j = json.loads(l)
            phases[j["phase"]] = j
        except (ValueError, KeyError, TypeError):
            pass
    # Deep mode's view (CUPTI's device timeline; the uprobes' "all" view
    # is there too). Gaps are attributed a quarter second after they
    # close: ask until each phase has its steps' gaps (30 s at most).
    def deep_view(ph):
        return [g for g in ph.get("gpu", []) if g.get("source") == "cupti"]

    deadline = time.monotonic() + 30
    while True:
        report = daemon.get_json("/api/v1/explain?service=device-check&window=5m")
        attributed = {ph["phase"]: dict(ph, gpu=deep_view(ph)) for ph in report.get("phases", [])}
        done = all(sum(g.get("gaps", 0) for g in attributed.get(n, {}).get("gpu", [])) >= t.get("steps", 0)
                   for n, t in phases.items())
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for name, cause in [("sleep", "syscall_sleep"), ("json", "serialization"), ("gil", "gil_wait")]:
        stall_ns = phases.get(name, {}).get("stall_ns")
        injected = stall_ns / 1e9 if stall_ns is not None else None
        ph = attributed.get(name)
        if injected is None or ph is None:
            result.cannot(f"explain_{name}", f"phase {name} missing (probe: {sorted(phases)}, "
                          f"report: {sorted(attributed)})", step)
            continue
        got = sum(c["seconds"] for g in ph["gpu"] for c in g["idle_by_cause"] if c["cause"] == cause)
        if name == "gil":
            idle = sum(g["idle_seconds"] for g in ph["gpu"])
            share = got / idle if idle else 0.0
            result.check("explain_gil", round(share, 4), None, "gil_wait > 50 % of the phase's idle time",
                         share > 0.5, "fraction", step=step)
            continue
        # A stall's wall time includes what the thread waited for a CPU
        # when another job had it: gapscoped reports that part as runqueue,
        # rightly, so the cause is checked with it.
        runq = sum(c["seconds"] for g in ph["gpu"] for c in g["idle_by_cause"] if c["cause"] == "runqueue")
        got += runq
        err = got / injected - 1 if injected else float("inf")
        result.check(f"explain_{name}", round(got, 6), round(injected, 6), f"{cause} (+ runqueue) within 10 %",
                     abs(err) <= 0.10, "s", step=step)


# What scripts/experiment.py uses of this file (passed in, not imported:
# this file runs as __main__).
TOOLS = types.SimpleNamespace(run_step=run_step, section=section, free_port=free_port)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stand-in", action="store_true",
                    help="run on this machine against the stand-ins (no GPU)")
    ap.add_argument("--out", default="device-check.json", help="the JSON result (default: %(default)s)")
    ap.add_argument("--bin-dir", default=None,
                    help="where gapscoped and libgapscope_inject.so are (default: target/device-pack when "
                         "scripts/device-pack made it, else target/release; --stand-in also needs "
                         "gapscope-sim-device, in target/release)")
    ap.add_argument("--python", default=os.environ.get("PYTHON", sys.executable),
                    help="the Python with PyTorch (GPU host) or the targets' Python (stand-in)")
    ap.add_argument("--rounds", type=int, default=5, help="overhead runs each way (>= 5)")
    ap.add_argument("--experiment", action="store_true",
                    help="after the checks, the seed's experiment: the Python wrapper against the compiled "
                         "engine (scripts/experiment.py); its files go to experiment/ beside --out")
    ap.add_argument("--experiment-only", action="store_true", help="the experiment without the checks")
    args = ap.parse_args()
    if args.rounds < 5:
        ap.error("--rounds must be at least 5: fewer cannot tell a loss from the machine's noise")
    args.out = os.path.abspath(args.out)
    os.chdir(ROOT)
    if args.bin_dir is None:
        packed = "target/device-pack"
        use_pack = not args.stand_in and os.path.exists(os.path.join(packed, "gapscoped"))
        args.bin_dir = packed if use_pack else "target/release"
    args.bin_dir = os.path.abspath(args.bin_dir)
    mode = "stand-in" if args.stand_in else "gpu"
    tokenizer = os.path.join(args.bin_dir, "tokenizer")
    args.tokenizer_dir = os.path.abspath(os.environ.get("GAPSCOPE_TOKENIZER_DIR") or (
        tokenizer if os.path.isdir(tokenizer) else os.path.join(ROOT, ".cache/tiny-llama/hf")))
    # The checks get their budget; the experiment then gets its own (each
    # step inside has its limit from the experiment's time plan).
    with_experiment = args.experiment or args.experiment_only
    checks_s = WITH_EXPERIMENT_S[mode] - experiment.budget(mode) if with_experiment else BUDGET_S[mode]
    result = Result(mode, checks_s)
    result.doc["host"].update({"kernel": platform.release(), "python": sh([args.python, "--version"]),
                               "hostname": platform.node()})
    work = tempfile.mkdtemp(prefix="gapscope-device-check-")
    try:
        (stand_in_mode if args.stand_in else gpu_mode)(args, result, work)
    except Exception as e:  # a bug here must still leave a result
        result.cannot("device_check", f"the device check itself failed: {type(e).__name__}: {e}", "device-check")
    finally:
        for d in [work, *work_dirs]:
            shutil.rmtree(d, ignore_errors=True)
    return result.finish(args.out)


if __name__ == "__main__":
    sys.exit(main())

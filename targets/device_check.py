"""The GPU half of scripts/device-check: a PyTorch workload with a known
number of kernel launches, graph launches and synchronizations, checked
against what gapscoped counted and against nvidia-smi.

    python3 targets/device_check.py baseline
        times the launch loop with nothing attached (prints ns per launch)
    python3 targets/device_check.py traced PORT BASELINE_NS
        the same loop and the known workload while gapscoped (on PORT)
        traces this process; prints the table
    python3 targets/device_check.py deep PORT
        with CUDA_INJECTION64_PATH set: kernels recorded vs launched, busy
        time vs CUDA events, CUPTI's clock against CLOCK_MONOTONIC
    python3 targets/device_check.py decode
        a decode-like loop of small kernels (steps per second), run with
        and without the injection library to measure its cost
    python3 targets/device_check.py explain PORT
        with CUDA_INJECTION64_PATH set: a small model's steps with stalls
        of known length between them (time.sleep, json.dumps of a large
        object, a competing CPU-bound thread), each its own phase; prints
        what the explain report attributed against what was injected, and
        launches per "token" (step) eager vs replayed as a CUDA graph

Only the standard library and torch: it runs on the GPU machine as is.
"""

import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.request

import torch

LOOP = 50_000  # launches in the timed loop
ADDS = 20_000  # known launches counted against gapscoped
SYNCS = 500  # torch.cuda.synchronize() calls
GRAPH_REPLAYS = 200  # replays of a captured 10-kernel graph
BURN_S = 10.0  # matrix products for the energy check
IDLE_S = 6.0  # the silent phase for the idle check

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")


def scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def total(samples, name, **labels):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items()))


def launch_loop(x, n):
    torch.cuda.synchronize()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        x.add_(1)
    t1 = time.perf_counter_ns()
    torch.cuda.synchronize()
    return (t1 - t0) / n


def post(port, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/annotations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def smi():
    fields = "utilization.gpu,power.draw,clocks.sm,clocks.mem,temperature.gpu,memory.used,memory.total"
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", "0"],
        capture_output=True,
        text=True,
    ).stdout.strip()

    def number(v):
        try:
            return float(v)
        except ValueError:  # [N/A], [Not Supported]
            return float("nan")

    values = [number(v.strip()) for v in out.split(",")]
    return values + [float("nan")] * (7 - len(values))


def check(name, value, truth, target, ok, unit="", why=None):
    """One check for scripts/device_check.py, which collects CHECK lines.
    A reading that failed (NaN) is null: JSON has no NaN."""
    def finite(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    value, truth = finite(value), finite(truth)
    ok = bool(ok) and value is not None
    print("CHECK " + json.dumps({"name": name, "value": value, "truth": truth, "target": target,
                                 "pass": ok, "unit": unit, "why": why}, allow_nan=False), flush=True)


def row(name, ours, reference, unit="", check_name=None, lo=None, hi=None):
    """A table row; with check_name, also a check that ours / reference
    lies in [lo, hi]."""
    ratio = ours / reference if reference else float("nan")
    print(f"| {name:<44} | {ours:>14.4g} | {reference:>14.4g} | {ratio:>7.3f} | {unit}")
    if check_name:
        target = f"ratio {lo:g}" if lo == hi else f"ratio {lo:g} to {hi:g}"
        check(check_name, ours, reference, target, lo <= ratio <= hi, unit.split(" (")[0])


def main():
    mode = sys.argv[1]
    x = torch.zeros(1024, device="cuda")
    for _ in range(1000):  # warm up: lazy module loading, the allocator
        x.add_(1)
    torch.cuda.synchronize()
    if mode == "baseline":
        print(json.dumps({"ns_per_launch": min(launch_loop(x, LOOP) for _ in range(3))}))
        return
    port, baseline_ns = int(sys.argv[2]), float(sys.argv[3])
    # gapscoped picks up libcuda within a second of it being mapped.
    deadline = time.time() + 10
    while total(scrape(port), "gapscope_cuda_probed_files") < 1 and time.time() < deadline:
        time.sleep(0.2)
    before = scrape(port)
    probed_ns = min(launch_loop(x, LOOP) for _ in range(3))

    # Known work, counted between two scrapes.
    start = scrape(port)
    for _ in range(ADDS):
        x.add_(1)
    for _ in range(SYNCS):
        torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        with torch.cuda.graph(g):
            for _ in range(10):
                x.add_(1)
    torch.cuda.synchronize()
    mid = scrape(port)
    for _ in range(GRAPH_REPLAYS):
        g.replay()
    torch.cuda.synchronize()
    time.sleep(1.5)  # one budget tick, so the estimate includes every second
    end = scrape(port)

    def delta(name, a=start, b=end, **labels):
        return total(b, name, **labels) - total(a, name, **labels)

    print("\n## CUDA calls: gapscoped against the workload's own count\n")
    print(f"| {'quantity':<44} | {'gapscoped':>14} | {'workload':>14} | {'ratio':>7} |")
    # The adds, and the 10 launches recorded (not run) by the graph capture.
    known = ADDS + 10
    row(
        "runtime cudaLaunchKernel",
        delta("gapscope_cuda_launches_total", start, mid, entry="cudaLaunchKernel"),
        known,
        "launches",
        "runtime_launches", 0.99, 1.01,
    )
    row(
        "driver launches, all entries",
        delta("gapscope_cuda_launches_total", start, mid, api="driver"),
        known,
        "launches (runtime launches reach the driver)",
        "driver_launches", 1.0, 1.05,
    )
    row("runtime graph launches", delta("gapscope_cuda_graph_launches_total", mid, end, api="runtime"), GRAPH_REPLAYS,
        "replays", "graph_launches", 1.0, 1.0)
    row(
        "cudaDeviceSynchronize calls",
        delta("gapscope_cuda_host_sync_wait_seconds_count", call="cudaDeviceSynchronize"),
        SYNCS + 2,
        "calls (+2: after the capture and the replays; torch.cuda.graph may add its own)",
        "device_syncs", 1.0, 1.01,
    )
    ratio = total(end, "gapscope_cuda_launch_sampling_ratio", entry="cudaLaunchKernel")
    print(f"\nlaunch sampling ratio at the end: {ratio} (1: every launch counted)")
    print(f"per launch: {baseline_ns:.0f} ns without gapscoped, {probed_ns:.0f} ns probed: "
          f"{probed_ns - baseline_ns:.0f} ns per probed launch (both entry points)")
    probed = delta("gapscope_cuda_launch_call_duration_seconds_count", before, start, service="device-check")
    print(f"launch-probe hits during the timed loops: {probed:.0f}")

    # NVML against nvidia-smi under steady load: a thread keeps the GPU
    # busy while both are read side by side every half second, and the
    # means are compared (each averages over its own sample period).
    import threading

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    stop = threading.Event()

    def burn():
        while not stop.is_set():
            for _ in range(20):
                a @ a
            torch.cuda.synchronize()

    burner = threading.Thread(target=burn)
    burner.start()
    time.sleep(1.0)  # clocks and power up
    energy0 = total(scrape(port), "gapscope_gpu_energy_joules_total", gpu="0")
    t0 = time.time()
    ours, theirs = [], []
    while time.time() - t0 < BURN_S:
        m = scrape(port)
        ours.append(m)
        theirs.append(smi())
        time.sleep(0.5)
    elapsed = time.time() - t0
    energy1 = total(scrape(port), "gapscope_gpu_energy_joules_total", gpu="0")
    stop.set()
    burner.join()
    powers = [r[1] for r in theirs]
    ref = [sum(r[i] for r in theirs) / len(theirs) for i in range(7)]
    print("\n## NVML through gapscoped against nvidia-smi (means under steady load)\n")
    print(f"| {'quantity':<44} | {'gapscoped':>14} | {'nvidia-smi':>14} | {'ratio':>7} |")
    g0 = lambda name: sum(total(m, name, gpu="0") for m in ours) / len(ours)
    # Means over the same seconds; NVML averages over its own periods.
    util = g0("gapscope_gpu_utilization_ratio") * 100
    row("utilization", util, ref[0], "%")
    check("nvml_utilization", util, ref[0], "within 10 points", abs(util - ref[0]) <= 10, "%")
    row("power", g0("gapscope_gpu_power_watts"), ref[1], "W", "nvml_power", 0.85, 1.15)
    row("SM clock", g0("gapscope_gpu_sm_clock_hertz") / 1e6, ref[2], "MHz", "nvml_sm_clock", 0.9, 1.1)
    row("memory clock", g0("gapscope_gpu_memory_clock_hertz") / 1e6, ref[3], "MHz", "nvml_memory_clock", 0.98, 1.02)
    temp = g0("gapscope_gpu_temperature_celsius")
    row("temperature", temp, ref[4], "C")
    check("nvml_temperature", temp, ref[4], "within 3 C", abs(temp - ref[4]) <= 3, "C")
    row("memory used", g0("gapscope_gpu_memory_used_bytes") / 2**20, ref[5], "MiB", "nvml_memory_used", 0.98, 1.02)
    row("memory total", g0("gapscope_gpu_memory_total_bytes") / 2**20, ref[6], "MiB", "nvml_memory_total", 0.999, 1.001)
    row("energy counter delta vs mean power x time", energy1 - energy0, sum(powers) / len(powers) * elapsed, "J",
        "nvml_energy", 0.9, 1.1)

    # The idle check: a silent phase with the model's memory still held.
    del a
    post(port, {"phase": "device-check-idle", "kind": "silence", "event": "start", "run_id": "dc"})
    time.sleep(IDLE_S)
    idle = post(port, {"phase": "device-check-idle", "kind": "silence", "event": "end", "run_id": "dc"})
    print("\n## idle check\n")
    print(json.dumps(idle.get("idle_check"), indent=1))
    # The model's tensors are freed, the process still holds its CUDA
    # context: no kernel may run; the check reads the GPU at all.
    gpus = (idle.get("idle_check") or {}).get("gpus") or []
    g = gpus[0] if gpus else {}
    util_max = g.get("utilization_max")
    why = None
    if not gpus:
        why = f"no GPU in the idle check: {idle}"
    elif not g.get("readings"):
        why = "no reading after the settling time"
    elif util_max is None:
        why = "NVML gave no utilization"
    check("idle_check_quiet", util_max, 0.0, "no kernel in the silence (utilization <= 1 %)",
          why is None and util_max <= 0.01, "ratio", why)

    busy = [l for n, l, v in end if n == "gapscope_cuda_host_sync_wait_seconds_count" and v > 0]
    print("\nhost-sync calls seen:", sorted({(l.get("api"), l.get("call")) for l in busy}))


def decode_loop(seconds=3.0):
    """A decode-like loop of small kernels: steps per second."""
    x = torch.randn(4096, device="cuda")
    w = torch.randn(64, 4096, device="cuda")
    for _ in range(200):
        torch.nn.functional.silu(w @ x)
    torch.cuda.synchronize()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            torch.nn.functional.silu(w @ x) * 0.5 + 1.0
        torch.cuda.synchronize()
        steps += 50
    return steps / (time.perf_counter() - t0)


def deep(port):
    """CUPTI deep mode: run with CUDA_INJECTION64_PATH set, gapscoped on PORT."""
    x = torch.zeros(1024, device="cuda")
    torch.cuda.synchronize()
    deadline = time.time() + 10
    while total(scrape(port), "gapscope_inject_connections") < 1 and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    before = scrape(port)
    sleeps, adds = 200, 2000
    cycles = 100_000  # a spin kernel of about 50 us at 2 GHz
    start_evt, end_evt = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.monotonic_ns()
    start_evt.record()
    for _ in range(sleeps):
        torch.cuda._sleep(cycles)
    for _ in range(adds):
        x.add_(1)
    end_evt.record()
    torch.cuda.synchronize()
    t1 = time.monotonic_ns()
    gpu_ms = start_evt.elapsed_time(end_evt)
    time.sleep(1.5)  # flush (100 ms) + reorder window (500 ms)
    after = scrape(port)

    def d(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    kernels = d("gapscope_gpu_kernel_duration_seconds_count", service="device-check")
    busy = d("gapscope_gpu_busy_seconds_total", service="device-check")
    print("\n## CUPTI deep mode\n")
    print(f"| {'quantity':<44} | {'gapscoped':>14} | {'workload':>14} | {'ratio':>7} |")
    row("kernels recorded vs launched", kernels, sleeps + adds, "kernels", "deep_kernels", 1.0, 1.0)
    # The events bracket the kernels and the gaps between them: busy time
    # is at most the window, and the spin kernels alone fill most of it.
    row("GPU busy vs CUDA events (same window)", busy * 1e3, gpu_ms, "ms", "deep_busy", 0.5, 1.01)
    # Clock alignment: one long kernel on an idle GPU, bracketed on the host.
    time.sleep(0.5)
    h0 = time.monotonic_ns()
    torch.cuda._sleep(20_000_000)
    torch.cuda.synchronize()
    h1 = time.monotonic_ns()
    time.sleep(1.5)
    body = urllib.request.urlopen(
        f"http://127.0.0.1:{port}/api/v1/intervals?service=device-check&kind=gpu_busy&since_ns={h0}", timeout=10
    ).read()
    stretches = [i for i in json.loads(body)["intervals"] if i["start_ns"] >= h0 - 50_000_000]
    if stretches:
        s0 = stretches[0]
        after_us, before_us = (s0["start_ns"] - h0) / 1e3, (h1 - s0["end_ns"]) / 1e3
        print(f"\nclock alignment: kernel started {after_us:.1f} us after the host's launch "
              f"timestamp and ended {before_us:.1f} us before the host saw it end "
              "(both must be >= 0; the first is launch latency plus clock offset)")
        check("clock_alignment", min(after_us, before_us), 0.0, "the kernel inside the host's bracket (both >= 0)",
              after_us >= 0 and before_us >= 0, "us")
    else:
        print("\nclock alignment: no gpu_busy interval found after the bracket (deep mode not recording?)")
        check("clock_alignment", None, 0.0, "the kernel inside the host's bracket", False, "us",
              "no gpu_busy interval after the bracket: deep mode recorded nothing")
    modes = {l.get("mode"): v for n, l, v in after if n == "gapscope_inject_clock_mode_connections"}
    print(f"clock mode: {modes}")
    top = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/kernels?service=device-check&limit=5", timeout=10).read())
    print("top kernels:", [(k["class"], k["count"], k["name"][:60]) for k in top["kernels"]])


STALL_S = 0.02  # each injected stall
EXPLAIN_STEPS = 60  # steps per phase


def explain(port):
    """Stalls of known length between a model's steps, attributed by gapscoped."""
    import threading

    w1 = torch.randn(1024, 1024, device="cuda")
    w2 = torch.randn(1024, 1024, device="cuda")
    x = torch.randn(64, 1024, device="cuda")

    def step(x):
        # About twenty kernels: the shape of an unfused decoder layer.
        for _ in range(4):
            h = torch.nn.functional.silu(x @ w1)
            h = torch.nn.functional.layer_norm(h, (1024,))
            x = (h @ w2) * 0.5 + x
        return x

    for _ in range(20):
        step(x)
    torch.cuda.synchronize()
    deadline = time.time() + 10
    while total(scrape(port), "gapscope_inject_connections") < 1 and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    payload = [{"id": i, "text": "token " * 8, "logprobs": [0.1, -1.5, 3.25]} for i in range(20_000)]
    t = time.perf_counter()
    json.dumps(payload)
    scale = STALL_S / max(time.perf_counter() - t, 1e-6)
    payload = payload * max(1, round(scale)) if scale >= 1 else payload[: max(1, int(len(payload) * scale))]

    graph = torch.cuda.CUDAGraph()
    static_x = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step(static_x)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(graph):
        static_out = step(static_x)
    del static_out

    tokens = 0
    injected = {}

    def phase(name, stall, run_step=None):
        nonlocal tokens
        stop = threading.Event()
        competitor = None
        if name == "gil":
            def hold():
                v = 0
                while not stop.is_set():
                    for i in range(1000):
                        v = (v * 31 + i) % 1_000_003
            competitor = threading.Thread(target=hold)
            competitor.start()
        post(port, {"source": "device-check", "run_id": "explain", "phase": name, "kind": "test",
                    "event": "start", "monotonic_ns": time.monotonic_ns(), "output_tokens": tokens})
        measured = 0
        for _ in range(EXPLAIN_STEPS):
            (run_step or (lambda: step(x)))()
            torch.cuda.synchronize()
            tokens += 1
            t0 = time.monotonic_ns()
            stall()
            measured += time.monotonic_ns() - t0
        (run_step or (lambda: step(x)))()
        torch.cuda.synchronize()
        post(port, {"source": "device-check", "run_id": "explain", "phase": name, "kind": "test",
                    "event": "end", "monotonic_ns": time.monotonic_ns(), "output_tokens": tokens})
        stop.set()
        if competitor:
            competitor.join()
        injected[name] = measured / 1e9
        time.sleep(0.3)

    phase("sleep", lambda: time.sleep(STALL_S))
    phase("json", lambda: json.dumps(payload))
    phase("gil", lambda: None)
    phase("eager", lambda: None)
    phase("graph", lambda: None, run_step=graph.replay)
    time.sleep(1.5)  # flush (100 ms), reorder window (500 ms), settle (250 ms)
    report = json.loads(urllib.request.urlopen(
        f"http://127.0.0.1:{port}/api/v1/explain?service=device-check&window=5m", timeout=30).read())
    phases = {p["phase"]: p for p in report["phases"] if p["run_id"] == "explain"}

    # Deep mode's view: CUPTI's device timeline (the uprobes' "all" view
    # of the same time is in the report too).
    def deep(p):
        return [g for g in p["gpu"] if g.get("source") == "cupti"]

    def seconds(p, cause):
        return sum(c["seconds"] for g in deep(p) for c in g["idle_by_cause"] if c["cause"] == cause)

    print("\n## Explain: injected stalls against what gapscoped attributed\n")
    print(f"| {'phase':<8} | {'cause':<14} | {'injected s':>10} | {'attributed s':>12} | {'error':>7} | within 10 % |")
    # A stripped Python (a distribution build) has no symbols for the GIL
    # and serialization probes: the json stall is then the thread's own
    # CPU time, and no GIL wait can be claimed.
    stripped = os.environ.get("GAPSCOPE_DEVICE_CHECK_STRIPPED") == "1"
    json_cause = "python_cpu" if stripped else "serialization"
    for name, cause in [("sleep", "syscall_sleep"), ("json", json_cause)]:
        p = phases.get(name)
        # With the time the thread waited for a CPU (reported as runqueue).
        got = seconds(p, cause) + seconds(p, "runqueue") if p else float("nan")
        err = got / injected[name] - 1 if injected[name] else float("nan")
        print(f"| {name:<8} | {cause:<14} | {injected[name]:>10.4f} | {got:>12.4f} | {100 * err:>6.1f}% | {abs(err) <= 0.10} |")
        check(f"explain_{name}", got, injected[name], f"{cause} (+ runqueue) within 10 %", abs(err) <= 0.10, "s",
              None if p else f"no {name} phase in the report")
    p = phases.get("gil")
    if p:
        idle = sum(g["idle_seconds"] for g in deep(p))
        got = seconds(p, "gil_wait")
        share = got / idle if idle else float("nan")
        print(f"| gil      | gil_wait       | {'(unknown)':>10} | {got:>12.4f} | {'':>7} | share of idle {share:.2f} |")
        if stripped:
            check("explain_gil", got, 0.0, "no gil_wait claimed (a stripped Python has no GIL probes)", got == 0, "s")
        else:
            check("explain_gil", share, None, "gil_wait > 50 % of the phase's idle time", share > 0.5, "fraction")
    else:
        check("explain_gil", None, None, "a gil phase", False, "s", "no gil phase in the report")
    for name in ["eager", "graph"]:
        p = phases.get(name)
        if p:
            f = p["fusion"]
            print(f"{name}: {f.get('launches_per_token')} launches/token, {f.get('kernels_per_token')} kernels/token, "
                  f"graph share {f.get('graph_launch_share')}, median kernel {f.get('median_kernel_us')} us")
    for name, p in phases.items():
        for g in p["gpu"]:
            causes = ", ".join(f"{c['cause']} {c['seconds']:.4f}" for c in g["idle_by_cause"][:4])
            print(f"  {name} device {g['device']} ({g['source']}): busy {g['busy_seconds']:.3f} s, "
                  f"idle {g['idle_seconds']:.3f} s in {g['gaps']} gaps: {causes}")
    print("data quality:", json.dumps(report["data_quality"]))


if __name__ == "__main__":
    if sys.argv[1] == "deep":
        deep(int(sys.argv[2]))
    elif sys.argv[1] == "explain":
        explain(int(sys.argv[2]))
    elif sys.argv[1] == "decode":
        print(json.dumps({"steps_per_second": decode_loop()}))
    else:
        main()

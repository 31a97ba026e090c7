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
    return [float(v) if v.strip() not in ("[N/A]", "N/A") else float("nan") for v in out.split(",")]


def row(name, ours, reference, unit=""):
    ratio = ours / reference if reference else float("nan")
    print(f"| {name:<44} | {ours:>14.4g} | {reference:>14.4g} | {ratio:>7.3f} | {unit}")


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
    )
    row(
        "driver launches, all entries",
        delta("gapscope_cuda_launches_total", start, mid, api="driver"),
        known,
        "launches (runtime launches reach the driver)",
    )
    row("runtime graph launches", delta("gapscope_cuda_graph_launches_total", mid, end, api="runtime"), GRAPH_REPLAYS, "replays")
    row(
        "cudaDeviceSynchronize calls",
        delta("gapscope_cuda_host_sync_wait_seconds_count", call="cudaDeviceSynchronize"),
        SYNCS + 2,
        "calls (+2: after the capture and the replays; torch.cuda.graph may add its own)",
    )
    ratio = total(end, "gapscope_cuda_launch_sampling_ratio", entry="cudaLaunchKernel")
    print(f"\nlaunch sampling ratio at the end: {ratio} (1: every launch counted)")
    print(f"per launch: {baseline_ns:.0f} ns without gapscoped, {probed_ns:.0f} ns probed: "
          f"{probed_ns - baseline_ns:.0f} ns per probed launch (both entry points)")
    probed = delta("gapscope_cuda_launch_call_duration_seconds_count", before, start, service="device-check")
    print(f"launch-probe hits during the timed loops: {probed:.0f}")

    # NVML against nvidia-smi, read at the same moment, under load.
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    energy0 = total(scrape(port), "gapscope_gpu_energy_joules_total", gpu="0")
    powers = []
    t0 = time.time()
    while time.time() - t0 < BURN_S:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()
        m = scrape(port)
        ref = smi()
        powers.append(ref[1])
    elapsed = time.time() - t0
    energy1 = total(scrape(port), "gapscope_gpu_energy_joules_total", gpu="0")
    print("\n## NVML through gapscoped against nvidia-smi (same moment, under load)\n")
    print(f"| {'quantity':<44} | {'gapscoped':>14} | {'nvidia-smi':>14} | {'ratio':>7} |")
    g0 = lambda name: total(m, name, gpu="0")
    row("utilization", g0("gapscope_gpu_utilization_ratio") * 100, ref[0], "%")
    row("power", g0("gapscope_gpu_power_watts"), ref[1], "W")
    row("SM clock", g0("gapscope_gpu_sm_clock_hertz") / 1e6, ref[2], "MHz")
    row("memory clock", g0("gapscope_gpu_memory_clock_hertz") / 1e6, ref[3], "MHz")
    row("temperature", g0("gapscope_gpu_temperature_celsius"), ref[4], "C")
    row("memory used", g0("gapscope_gpu_memory_used_bytes") / 2**20, ref[5], "MiB")
    row("memory total", g0("gapscope_gpu_memory_total_bytes") / 2**20, ref[6], "MiB")
    row("energy counter delta vs mean power x time", energy1 - energy0, sum(powers) / len(powers) * elapsed, "J")

    # The idle check: a silent phase with the model's memory still held.
    del a
    post(port, {"phase": "device-check-idle", "kind": "silence", "event": "start", "run_id": "dc"})
    time.sleep(IDLE_S)
    check = post(port, {"phase": "device-check-idle", "kind": "silence", "event": "end", "run_id": "dc"})
    print("\n## idle check\n")
    print(json.dumps(check.get("idle_check"), indent=1))

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
    row("kernels recorded vs launched", kernels, sleeps + adds, "kernels")
    row("GPU busy vs CUDA events (same window)", busy * 1e3, gpu_ms, "ms")
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
        print(f"\nclock alignment: kernel started {(s0['start_ns'] - h0) / 1e3:.1f} us after the host's launch "
              f"timestamp and ended {(h1 - s0['end_ns']) / 1e3:.1f} us before the host saw it end "
              "(both must be >= 0; the first is launch latency plus clock offset)")
    else:
        print("\nclock alignment: no gpu_busy interval found after the bracket (deep mode not recording?)")
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

    def seconds(p, cause):
        return sum(c["seconds"] for g in p["gpu"] for c in g["idle_by_cause"] if c["cause"] == cause)

    print("\n## Explain: injected stalls against what gapscoped attributed\n")
    print(f"| {'phase':<8} | {'cause':<14} | {'injected s':>10} | {'attributed s':>12} | {'error':>7} | within 10 % |")
    for name, cause in [("sleep", "syscall_sleep"), ("json", "serialization")]:
        p = phases.get(name)
        got = seconds(p, cause) if p else float("nan")
        err = got / injected[name] - 1 if injected[name] else float("nan")
        print(f"| {name:<8} | {cause:<14} | {injected[name]:>10.4f} | {got:>12.4f} | {100 * err:>6.1f}% | {abs(err) <= 0.10} |")
    p = phases.get("gil")
    if p:
        idle = sum(g["idle_seconds"] for g in p["gpu"])
        got = seconds(p, "gil_wait")
        print(f"| gil      | gil_wait       | {'(unknown)':>10} | {got:>12.4f} | {'':>7} | share of idle {got / idle if idle else float('nan'):.2f} |")
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

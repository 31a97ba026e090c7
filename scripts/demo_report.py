"""Prints what gapscoped measured between two scrapes of /metrics.

usage: demo_report.py BEFORE.prom AFTER.prom LOAD.json SERVICE
"""

import json
import re
import sys
from collections import defaultdict

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(path):
    samples = {}
    with open(path) as f:
        for line in f:
            m = SAMPLE.match(line.strip())
            if m:
                labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
                samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def delta(before, after, name, **want):
    out = {}
    for (metric, labels), value in after.items():
        d = dict(labels)
        if metric == name and all(d.get(k) == v for k, v in want.items()):
            out[labels] = value - before.get((metric, labels), 0.0)
    return out


def quantile(buckets, q):
    """Upper bound of the bucket holding quantile q (buckets: [(le, cumulative)])."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    for le, cum in buckets:
        if cum >= q * total:
            return le
    return float("inf")


def fmt_s(s):
    if s is None:
        return "-"
    if s == float("inf"):
        return "> 275 s"
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def main():
    before, after, load_path, service = parse(sys.argv[1]), parse(sys.argv[2]), sys.argv[3], sys.argv[4]
    results = json.load(open(load_path))  # gapscope-loadgen's results.json
    phases = results["phases"]
    wall = round(phases[-1]["end_s"] - phases[0]["start_s"], 1)
    requests = sum(p["ok"] for p in phases)
    tokens = sum(p["output_tokens"] for p in phases)
    print()
    print(f"Load (gapscope-loadgen, {len(phases)} phases): {requests} streamed requests, {tokens} tokens in {wall} s")
    procs = after.get(("gapscope_service_processes", (("service", service),)), 0)
    print(f"Service {service!r}: {int(procs)} process(es) traced")

    on = sum(delta(before, after, "gapscope_oncpu_seconds_total", service=service).values())
    off = {dict(l)["reason"]: v for l, v in delta(before, after, "gapscope_offcpu_seconds_total", service=service).items()}
    thread_seconds = on + sum(off.values())
    print()
    print(f"Where the server's threads spent {thread_seconds:.2f} thread-seconds:")
    rows = [("on CPU", on)] + sorted(((r, v) for r, v in off.items()), key=lambda x: -x[1])
    for name, v in rows:
        share = v / thread_seconds * 100 if thread_seconds else 0
        print(f"  {name:<16} {v:8.3f} s  {share:5.1f} %")

    counts = delta(before, after, "gapscope_syscall_duration_seconds_count", service=service)
    sums = delta(before, after, "gapscope_syscall_duration_seconds_sum", service=service)
    by_name = {dict(l)["syscall"]: (counts[l], sums.get(l, 0.0)) for l in counts}
    print()
    print("Top syscalls by time inside them:")
    print(f"  {'syscall':<18} {'calls':>9} {'calls/s':>9} {'total':>10} {'mean':>11}")
    for name, (n, s) in sorted(by_name.items(), key=lambda x: -x[1][1])[:10]:
        if n <= 0:
            continue
        print(f"  {name:<18} {int(n):>9} {n / wall:>9.0f} {s:>9.3f}s {fmt_s(s / n):>11}")

    gil_wait = sum(delta(before, after, "gapscope_gil_wait_seconds_sum", service=service).values())
    gil_acq = sum(delta(before, after, "gapscope_gil_wait_seconds_count", service=service).values())
    gil_held = sum(delta(before, after, "gapscope_gil_held_seconds_total", service=service).values())
    switches = sum(delta(before, after, "gapscope_gil_switches_total", service=service).values())
    versions = [dict(l).get("version") for (m, l), v in after.items()
                if m == "gapscope_python_processes" and dict(l).get("service") == service and v > 0]
    print()
    if versions:
        print(f"GIL (CPython {', '.join(versions)}): held {gil_held:.2f} s of {wall} s ({gil_held / wall * 100:.0f} %), "
              f"threads waited {gil_wait:.2f} s for it in {int(gil_acq)} contended acquisitions, "
              f"{int(switches)} hand-overs")
    else:
        print("GIL: not traced (no supported CPython found in the service)")
    calls = delta(before, after, "gapscope_serialization_duration_seconds_count", service=service)
    secs = delta(before, after, "gapscope_serialization_duration_seconds_sum", service=service)
    for labels, n in sorted(calls.items()):
        if n > 0:
            d = dict(labels)
            print(f"Serialization {d['codec']} {d['op']}: {int(n)} calls, {secs.get(labels, 0.0) * 1e3:.1f} ms in total")

    runq = defaultdict(float)
    for labels, v in delta(before, after, "gapscope_runqueue_latency_seconds_bucket", service=service).items():
        le = dict(labels)["le"]
        runq[float("inf") if le == "+Inf" else float(le)] = v
    buckets = list(runq.items())
    print()
    print(f"Run-queue wait: p50 <= {fmt_s(quantile(buckets, 0.5))}, p99 <= {fmt_s(quantile(buckets, 0.99))}")

    runs = delta(before, after, "gapscope_bpf_program_runs_total")
    run_s = delta(before, after, "gapscope_bpf_program_run_seconds_total")
    total_runs = sum(runs.values())
    # The kernel measures only while the statistics are on: the whole run
    # with bpf_stats = true, one window a period when sampled (the default).
    sampled = sum(delta(before, after, "gapscope_bpf_stats_sampled_seconds_total").values())
    if total_runs > 0 and sampled > 0:
        print(f"gapscoped's own cost: {sum(run_s.values()) / sampled * 100:.2f} % of a CPU in BPF programs "
              f"while measured ({int(total_runs)} runs in {sampled:.1f} s of statistics, "
              f"{sum(run_s.values()) / total_runs * 1e9:.0f} ns per run)")
    else:
        print("gapscoped's own cost: not measured in this stretch (BPF statistics off, or no sample fell in it)")
    dropped = sum(delta(before, after, "gapscope_events_dropped_total").values())
    print(f"Events dropped: {int(dropped)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Draws a slice of a trace `gapscoped trace` wrote as an SVG picture, for
the README: one row per track (a GPU's idle gaps by cause, its kernels, a
thread's time on and off CPU, the same thread's GIL waits, serialization
and CUDA calls), spans coloured by what they were, a time axis in ms.

usage: scripts/trace_picture.py TRACE.json START_MS LENGTH_MS OUT.svg

START_MS counts from the trace's first load-generator phase (or its first
span); only tracks with a span in the slice are drawn. Standard library
only.
"""

import html
import json
import sys
from collections import defaultdict

COLOURS = {
    "syscall_sleep": "#8da0cb", "syscall_poll": "#a6cee3", "syscall_futex": "#b2abd2",
    "syscall_file": "#cab2d6", "syscall_net": "#80b1d3", "syscall_other": "#bebada",
    "runqueue": "#fdb462", "gil_wait": "#e31a1c", "serialization": "#ff7f00",
    "python_cpu": "#33a02c", "on_cpu": "#33a02c", "unobserved": "#bdbdbd",
    "unrecorded": "#f2f2f2", "no_work": "#cfcfcf", "launch_overhead": "#6a3d9a",
    "host_sync": "#1f78b4", "blocked_other": "#999999",
}
KERNEL = "#1b9e77"
CUDA = "#1f78b4"


def colour(name, cat):
    if cat == "kernel":
        return KERNEL
    if cat == "cuda":
        return CUDA
    for key, c in COLOURS.items():
        if name.startswith(key):
            return c
    return "#999999"


def main():
    path, start_ms, length_ms, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    events = json.load(open(path))["traceEvents"]
    names = {}
    for e in events:
        if e["ph"] == "M" and e["name"] in ("process_name", "thread_name"):
            names[(e["name"], e["pid"], e["tid"] if e["name"] == "thread_name" else 0)] = e["args"]["name"]
    phases = [e for e in events if e.get("cat") == "loadgen" and e["ph"] == "X"]
    spans = [e for e in events if e["ph"] == "X" and e.get("cat") != "loadgen"]
    origin = min(e["ts"] for e in (phases or spans))
    lo = origin + start_ms * 1e3
    hi = lo + length_ms * 1e3

    rows = defaultdict(list)
    for e in spans:
        if e["ts"] + e["dur"] >= lo and e["ts"] <= hi:
            rows[(e["pid"], e["tid"], "")].append((e["ts"], e["ts"] + e["dur"], e["name"], e.get("cat", "")))
    begun = {}
    for e in events:
        if e["ph"] == "b":
            begun[(e["id"], e["cat"], e["name"])] = e
        elif e["ph"] == "e":
            b = begun.pop((e["id"], e["cat"], e["name"]), None)
            if b and e["ts"] >= lo and b["ts"] <= hi:
                rows[(b["pid"], b["tid"], "calls")].append((b["ts"], e["ts"], b["name"], b["cat"]))

    def label(key):
        pid, tid, kind = key
        thread = names.get(("thread_name", pid, tid), f"thread {tid}")
        if pid >= 0xFFFF0000:
            return f"{names.get(('process_name', pid, 0), 'GPU')} · {thread}"
        return f"{thread} ({tid})" + (" · GIL, serialization, CUDA" if kind else " · on/off CPU")

    # GPUs first, then each thread's state row followed by its calls row.
    order = sorted(rows, key=lambda k: (k[0] < 0xFFFF0000, k[0], k[1], k[2]))
    left, width, row_h, top = 330, 900, 22, 40
    height = top + row_h * len(order) + 90
    px = lambda t: left + (min(max(t, lo), hi) - lo) / (hi - lo) * width
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="13" font-weight="bold">'
           f'{html.escape(path.rsplit("/", 1)[-1])}: {length_ms:g} ms from {start_ms:g} ms</text>']
    for i, key in enumerate(order):
        y = top + i * row_h
        svg.append(f'<text x="10" y="{y + 15}">{html.escape(label(key))}</text>')
        svg.append(f'<line x1="{left}" y1="{y + row_h - 1}" x2="{left + width}" y2="{y + row_h - 1}" stroke="#eeeeee"/>')
        for a, b, name, cat in sorted(rows[key]):
            x0, x1 = px(a), px(b)
            svg.append(f'<rect x="{x0:.2f}" y="{y + 3}" width="{max(x1 - x0, 0.6):.2f}" height="{row_h - 6}" '
                       f'fill="{colour(name, cat)}"><title>{html.escape(name)} {(b - a) / 1e3:.3f} ms</title></rect>')
    axis = top + row_h * len(order) + 10
    for k in range(11):
        x = left + width * k / 10
        svg.append(f'<line x1="{x}" y1="{axis - 4}" x2="{x}" y2="{axis}" stroke="black"/>')
        svg.append(f'<text x="{x}" y="{axis + 12}" text-anchor="middle">{start_ms + length_ms * k / 10:g} ms</text>')
    legend = ["python_cpu", "unobserved", "unrecorded", "syscall_sleep", "syscall_poll", "syscall_futex",
              "runqueue", "gil_wait", "serialization", "launch_overhead", "no_work"]
    x, y = 10, axis + 24
    for name in legend + ["kernel"]:
        c = KERNEL if name == "kernel" else COLOURS[name]
        step = 14 + 7 * len(name) + 12
        if x + step > left + width:
            x, y = 10, y + 16
        svg.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{c}"/>')
        svg.append(f'<text x="{x + 14}" y="{y + 9}">{name}</text>')
        x += step
    svg.append("</svg>")
    open(out, "w").write("\n".join(svg) + "\n")
    print(f"wrote {out}: {len(order)} tracks")


if __name__ == "__main__":
    main()

"""An independent reader of a Chrome/Perfetto trace (JSON object form),
for the tests: checks it against the trace event format's schema and
what a viewer needs of it, then counts what it holds.

usage: trace_check.py TRACE.json SCHEMA.json [--thread TID] [--long-us N]
                      [START_NS:END_NS ...]

Checks: the schema (jsonschema); every async begin ("b") has one end
("e") with the same id, category and name, not before it; complete
events ("X") on one thread nest (a viewer drops spans that overlap
without nesting); every process and thread with events is named.
Prints one JSON object: "events" by phase letter, and for each
START_NS:END_NS range (CLOCK_MONOTONIC ns, as gapscoped's clock) the
counts of complete events by "cat/name" that end inside (START, END],
async slices by "cat/name" that end inside, and the idle time (µs) of
the GPU tracks' "idle" spans that end inside, by name; "gaps" is the
number of distinct idle gaps (args.gap) ending inside; "long" counts the
complete events at least N µs long (--long-us). With --thread, a host
process's events count only on that thread (the GPUs' and the load
generator's, pids from 0xFFFF0000, always). Exits 1 naming
the first problem.
"""

import json
import sys
from collections import Counter, defaultdict

import jsonschema


def fail(why):
    print(f"trace_check: {why}", file=sys.stderr)
    sys.exit(1)


def main():
    args = sys.argv[1:]
    thread, long_us = None, float("inf")
    for flag in ("--thread", "--long-us"):
        if flag in args:
            i = args.index(flag)
            value = float(args[i + 1])
            del args[i:i + 2]
            if flag == "--thread":
                thread = int(value)
            else:
                long_us = value
    trace = json.load(open(args[0]))
    schema = json.load(open(args[1]))
    try:
        jsonschema.validate(trace, schema)
    except jsonschema.ValidationError as e:
        fail(f"not a trace: {e.message} at {list(e.absolute_path)}")
    events = trace["traceEvents"]

    # Async slices: begin and end pair up.
    begun = {}
    slices = []
    for e in events:
        if e["ph"] == "b":
            key = (e["id"], e["cat"], e["name"])
            if key in begun:
                fail(f"async slice {key} begun twice")
            begun[key] = e
        elif e["ph"] == "e":
            key = (e["id"], e["cat"], e["name"])
            b = begun.pop(key, None)
            if b is None:
                fail(f"async slice {key} ends without a begin")
            if e["ts"] < b["ts"]:
                fail(f"async slice {key} ends before it begins")
            slices.append((b, e))
    if begun:
        fail(f"{len(begun)} async slices never end, e.g. {next(iter(begun))}")

    # Complete events nest on each thread.
    tracks = defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            tracks[(e["pid"], e["tid"])].append((e["ts"], -e["dur"], e))
    eps = 1e-3  # microseconds: the text's resolution
    for track, spans in tracks.items():
        spans.sort(key=lambda s: (s[0], s[1]))
        open_ends = []
        for ts, neg_dur, e in spans:
            end = ts - neg_dur
            while open_ends and open_ends[-1] <= ts + eps:
                open_ends.pop()
            if open_ends and end > open_ends[-1] + eps:
                fail(f"on track {track}, {e['name']} at {ts} overlaps an earlier span without nesting in it")
            open_ends.append(end)

    # Names for every process and thread that has events.
    named_p = {e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    named_t = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    for e in events:
        if e["ph"] in ("X", "b", "e"):
            if e["pid"] not in named_p:
                fail(f"process {e['pid']} has events and no name")
            if (e["pid"], e["tid"]) not in named_t:
                fail(f"thread {e['pid']}/{e['tid']} has events and no name")

    # Each idle gap's end: its last piece's.
    gap_end = {}
    for e in events:
        if e["ph"] == "X" and e.get("cat") == "idle" and "gap" in e.get("args", {}):
            key = (e["pid"], e["args"]["gap"])
            gap_end[key] = max(gap_end.get(key, 0), e["ts"] + e["dur"])

    out = {"events": dict(Counter(e["ph"] for e in events)), "ranges": []}
    def counted(e):
        # gapscoped's GPU and load-generator tracks have pids from
        # 0xFFFF0000, above any process's.
        return thread is None or e["pid"] >= 0xFFFF0000 or e["tid"] == thread

    for r in args[2:]:
        lo, hi = (int(x) / 1e3 for x in r.split(":"))
        # Microseconds as floats: an end at the range's end may read a
        # nanosecond later.
        hi += 1e-3
        spans = Counter()
        long = Counter()
        idle = Counter()
        for e in events:
            if e["ph"] != "X":
                continue
            end = e["ts"] + e["dur"]
            if not (lo < end <= hi) or not counted(e):
                continue
            spans[f"{e.get('cat', '')}/{e['name']}"] += 1
            if e["dur"] >= long_us:
                long[f"{e.get('cat', '')}/{e['name']}"] += 1
            if e.get("cat") == "idle":
                idle[e["name"]] += e["dur"]
        asyncs = Counter(f"{b['cat']}/{b['name']}" for b, e in slices
                         if lo < e["ts"] <= hi and counted(b))
        out["ranges"].append({"range": r, "spans": dict(spans), "long": dict(long),
                              "async": dict(asyncs),
                              "idle_us": dict(idle),
                              "gaps": sum(1 for end in gap_end.values() if lo < end <= hi)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()

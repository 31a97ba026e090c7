"""Ground truth for the serialization tests: json and pickle calls, each
made exactly N times on a known payload and timed around every call with
time.perf_counter_ns.

usage: serialization_probe.py N [--tag T]
       serialization_probe.py busy SECONDS [--tag T]
       serialization_probe.py strings N [--tag T]

Imports json and pickle, prints "ready", waits for a line on stdin, makes
the calls, prints a JSON line {codec_op: {"calls": N, "ns": total}}, then
"done", and waits for stdin to close. `busy` instead calls json.dumps on a
small document as fast as it can for SECONDS and reports the calls made;
`strings` calls json.dumps on a plain string N times (one call each of
_json's py_encode_basestring_ascii).
"""

import json
import pickle
import sys
import time


def busy(seconds: float) -> None:
    doc = {"id": 1, "text": "why is the gpu idle"}
    print("ready", flush=True)
    sys.stdin.readline()
    calls = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        json.dumps(doc)
        calls += 1
    print('{"json_encode": {"calls": %d}}' % calls, flush=True)
    print("done", flush=True)
    sys.stdin.read()


def strings(n: int) -> None:
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(n):
        json.dumps("why is the gpu idle")
    print('{"json_str_encode": {"calls": %d}}' % n, flush=True)
    print("done", flush=True)
    sys.stdin.read()


def main() -> None:
    if sys.argv[1] == "busy":
        busy(float(sys.argv[2]))
        return
    if sys.argv[1] == "strings":
        strings(int(sys.argv[2]))
        return
    n = int(sys.argv[1])
    # Big enough that each call takes a fraction of a millisecond, so the
    # microseconds a probe costs do not dominate the comparison.
    payload = {"items": [{"id": i, "name": f"item-{i}", "tags": ["a", "b", "c"], "score": i * 0.5}
                         for i in range(2000)]}
    encoded_json = json.dumps(payload)
    encoded_pickle = pickle.dumps(payload)
    print("ready", flush=True)
    sys.stdin.readline()
    measured = {}
    for name, fn, arg in [
        ("json_encode", json.dumps, payload),
        ("json_decode", json.loads, encoded_json),
        ("pickle_encode", pickle.dumps, payload),
        ("pickle_decode", pickle.loads, encoded_pickle),
    ]:
        total = 0
        for _ in range(n):
            t0 = time.perf_counter_ns()
            result = fn(arg)
            total += time.perf_counter_ns() - t0
            # Freed outside the timed window: deallocating a decoded
            # document is not part of the call.
            del result
        measured[name] = {"calls": n, "ns": total}
    # Written by hand: json.dumps here would be one more call to count.
    fields = ", ".join(f'"{k}": {{"calls": {v["calls"]}, "ns": {v["ns"]}}}' for k, v in measured.items())
    print("{" + fields + "}", flush=True)
    print("done", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()

"""A decode-shaped serving loop on the simulated device with chosen stalls,
for the what-if tests: each step launches one kernel of --kernel-ms,
waits for it, then does each stall named in --stalls for --stall-ms
before the next launch. Run once with a stall and once without it, the
loop's own step rates say what removing the stall bought; gapscoped's
explain report, from the run with it, predicts that.

usage: whatif_loop.py FIXTURE_DIR --stalls sleep,json,pickle,poll,gil|none
                      [--steps N] [--kernel-ms K] [--stall-ms S]
                      [--gapscoped URL] [--run-id ID] [--tag TAG]
                      [--sizes FILE]

Stalls: sleep (time.sleep), json (json.dumps of an object sized to take
S), pickle (pickle.dumps of one sized the same way: two serialization
functions the report must tell apart), poll (select() on a socket nothing arrives on), gil (a second Python
thread, named gil-competitor, that holds the GIL while the loop waits for
the GPU, so each return from the wait waits for the GIL; its thread id is
in the JSON line, and it lives on, idle, until stdin closes). FIXTURE_DIR holds libcuda.so.1
and libfakegpu.so; CUDA_INJECTION64_PATH and GAPSCOPE_CUPTI_PATH bring in
the agent and the CUPTI stand-in. Prints "ready", waits for a line, runs,
posts the run's start and end to gapscoped (phase "loop", the run id),
prints one JSON line (steps, CLOCK_MONOTONIC start and end, the seconds
spent in each stall by its own clock), "done", and
exits when stdin closes.
"""

import argparse
import ctypes
import json
import os
import pickle
import select
import socket
import sys
import threading
import time
import urllib.request


def annotate(url, run_id, event, at_ns):
    if not url:
        return
    body = json.dumps({"source": "whatif_loop", "run_id": run_id, "phase": "loop",
                       "kind": "test", "event": event, "monotonic_ns": at_ns}).encode()
    req = urllib.request.Request(url + "/api/v1/annotations", data=body,
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def sized_object(target_s, dumps, record, sizes, name):
    """A list of `record` whose dumps(list) takes about target_s. With a
    sizes file, the size found first is kept there and reused, so that
    runs compared with each other do the same work for a stall."""
    known = {}
    if sizes and os.path.exists(sizes):
        with open(sizes) as f:
            known = json.load(f)
    if name in known:
        return [record] * known[name]
    obj = calibrated(target_s, dumps, record, name)
    if sizes:
        known[name] = len(obj)
        with open(sizes, "w") as f:
            json.dump(known, f)
    return obj


def fastest(dumps, obj, times=5):
    """dumps(obj)'s quickest of `times` calls, in this thread's CPU time: a
    preemption (a busy machine: another job on every CPU) does not count
    in it, and a page fault only ever lengthens a call, so the minimum is
    the work itself."""
    best = float("inf")
    for _ in range(times):
        t = time.thread_time()
        dumps(obj)
        best = min(best, time.thread_time() - t)
    return best


def calibrated(target_s, dumps, record, name):
    """A list whose dumps takes target_s, within a tenth. Each size is
    timed by its fastest call (a single slow call, say the daemon probing
    the process meanwhile, once made a stall of microseconds), and the
    result is checked and rescaled until it holds."""
    n = 100
    while fastest(dumps, [record] * n) < target_s / 4 and n <= 10_000_000:
        n *= 2
    for _ in range(8):
        took = fastest(dumps, [record] * n)
        if abs(took - target_s) <= target_s / 10:
            return [record] * n
        n = max(1, int(n * target_s / max(took, 1e-9)))
    sys.exit(f"whatif_loop: could not size the {name} stall's object to take "
             f"{target_s * 1e3:.1f} ms of CPU (last try {took * 1e3:.2f} ms for {n} records): "
             "its calls' CPU time does not scale with their size here; run it again")


def name_this_thread(name):
    """Sets the calling thread's kernel name (prctl PR_SET_NAME), as
    serving frameworks name their worker threads."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, name.encode(), 0, 0, 0)


def hold_the_gil(stop, exit_now, tid):
    """Pure Python work: holds the GIL but for the interpreter's switches,
    until `stop`; then lives on idle until `exit_now`, so that a report
    made after the run still finds the thread (and its name)."""
    name_this_thread("gil-competitor")
    tid.append(threading.get_native_id())
    x = 0
    while not stop.is_set():
        for i in range(1000):
            x = (x * 31 + i) % 1_000_003
    exit_now.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fixture_dir")
    ap.add_argument("--stalls", required=True)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--kernel-ms", type=float, default=10.0)
    ap.add_argument("--stall-ms", type=float, default=2.0)
    ap.add_argument("--gapscoped", default="")
    ap.add_argument("--run-id", default="whatif")
    ap.add_argument("--tag", default="")
    ap.add_argument("--sizes", default="")
    args = ap.parse_args()
    stalls = [s for s in args.stalls.split(",") if s and s != "none"]
    for s in stalls:
        if s not in ("sleep", "json", "pickle", "poll", "gil"):
            sys.exit(f"whatif_loop: unknown stall {s!r}: use sleep, json, pickle, poll, gil or none")

    cuda = ctypes.CDLL(os.path.join(args.fixture_dir, "libcuda.so.1"))
    gpu = ctypes.CDLL(os.path.join(args.fixture_dir, "libfakegpu.so"))
    gpu.fake_gpu_next.argtypes = [ctypes.c_uint, ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_uint]
    gpu.fake_gpu_next(1, int(args.kernel_ms * 1e6), b"void decode_step_kernel<float>", 0)
    cuda.fake_cuda_driver_set_sync_us(0)
    stall_s = args.stall_ms / 1000
    record = {"id": 12345, "text": "token " * 8, "logprobs": [0.125, -1.5, 3.25], "ok": True}
    payload = sized_object(stall_s, json.dumps, record, args.sizes, "json") if "json" in stalls else None
    # Floats: pickle writes each one out (a repeated dict it would write
    # once and then refer to, which scales badly).
    pickled = sized_object(stall_s, pickle.dumps, 0.5, args.sizes, "pickle") if "pickle" in stalls else None
    quiet, peer = socket.socketpair()

    print("ready", flush=True)
    sys.stdin.readline()
    stop, exit_now = threading.Event(), threading.Event()
    competitor = None
    competitor_tid = []
    if "gil" in stalls:
        competitor = threading.Thread(target=hold_the_gil, args=(stop, exit_now, competitor_tid))
        competitor.start()
        time.sleep(0.05)
    spent = {}  # seconds in each stall, by the loop's own clock
    cuda.cuLaunchKernel()
    start = time.monotonic_ns()
    annotate(args.gapscoped, args.run_id, "start", start)
    cuda.cuStreamSynchronize()
    for _ in range(args.steps):
        for s in stalls:
            t0 = time.perf_counter()
            if s == "sleep":
                time.sleep(stall_s)
            elif s == "json":
                json.dumps(payload)
            elif s == "pickle":
                pickle.dumps(pickled)
            elif s == "poll":
                select.select([quiet], [], [], stall_s)
            spent[s] = spent.get(s, 0.0) + time.perf_counter() - t0
        cuda.cuLaunchKernel()
        cuda.cuStreamSynchronize()
    end = time.monotonic_ns()
    annotate(args.gapscoped, args.run_id, "end", end)
    stop.set()
    print(json.dumps({"steps": args.steps, "start_ns": start, "end_ns": end,
                      "stall_seconds": spent,
                      "competitor_tid": competitor_tid[0] if competitor_tid else None}),
          flush=True)
    print("done", flush=True)
    sys.stdin.read()
    exit_now.set()
    if competitor:
        competitor.join()



if __name__ == "__main__":
    main()

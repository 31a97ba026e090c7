"""Ground truth for the explain tests: a thread that launches GPU work and
then stalls in a known way before the next launch, so every GPU idle gap
has a cause of known kind and length.

usage: stall_probe.py FIXTURE_DIR [--steps N] [--stall-ms MS] [--tag T]
                      [--gapscoped URL] [--simulate]

FIXTURE_DIR holds the test stand-ins for libcuda.so.1 (gapscope's testkit
builds them: launches return at once, a synchronization sleeps for the
configured time, like a GPU finishing its work). With --simulate each
launch instead runs a 2 ms kernel on the simulated device (libfakegpu.so)
and a synchronization waits for it, so a CUPTI stand-in records real
device activity. A phase starts with a
launch and a synchronization (the "GPU" is busy for 2 ms); each step then
stalls, launches and synchronizes, so a phase of N steps has N idle gaps:

  sleep   time.sleep(stall)                        -> syscall_sleep
  json    json.dumps of an object sized to take about the stall
                                                   -> serialization
  cpu     a pure-Python loop for the stall         -> python_cpu
  poll    select() on a socket for the stall       -> syscall_poll
  idle    select() for 300 ms (waiting for work)   -> no_work
  gil     no stall of its own, but a CPU-bound thread holds the GIL, so
          returning from each synchronization waits for it -> gil_wait

Prints "ready", waits for a line on stdin, runs every phase in that order,
posting each phase's start and end to gapscoped when --gapscoped names
it, printing one JSON line per phase with its CLOCK_MONOTONIC start and end
and the stall time it measured itself (from the return of the sync to the
next launch) and its involuntary context switches during the phase, then
"done", and waits for stdin to close.
"""

import argparse
import ctypes
import json
import os
import resource
import select
import socket
import sys
import threading
import time
import urllib.request

PHASES = ["sleep", "json", "cpu", "poll", "idle", "gil"]
SYNC_US = 2000


def spin_until(deadline_ns: int) -> None:
    x = 0
    while time.monotonic_ns() < deadline_ns:
        for i in range(100):
            x = (x * 31 + i) % 1_000_003


def hold_the_gil(stop: threading.Event) -> None:
    while not stop.is_set():
        spin_until(time.monotonic_ns() + 1_000_000)


def annotate(url: str, phase: str, event: str, at_ns: int) -> None:
    """Posts a phase annotation to gapscoped, as gapscope-loadgen does."""
    if not url:
        return
    body = json.dumps({"source": "stall_probe", "run_id": "stall-probe", "phase": phase,
                       "kind": "test", "event": event, "monotonic_ns": at_ns}).encode()
    req = urllib.request.Request(url + "/api/v1/annotations", data=body,
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def sized_object(target_s: float) -> list:
    """A list of records whose json.dumps takes about target_s of CPU
    (this thread's CPU time: a preemption on a busy machine does not
    shrink the list)."""
    record = {"id": 12345, "text": "token " * 8, "logprobs": [0.125, -1.5, 3.25], "ok": True}
    n = 1000
    while True:
        obj = [record] * n
        t = time.thread_time()
        json.dumps(obj)
        took = time.thread_time() - t
        if took >= target_s / 4 or n > 10_000_000:
            return [record] * max(1, int(n * target_s / max(took, 1e-9)))
        n *= 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("fixture_dir")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--stall-ms", type=float, default=20.0)
    ap.add_argument("--tag", default="")
    ap.add_argument("--gapscoped", default="", help="base URL: post each phase's start and end")
    ap.add_argument("--simulate", action="store_true",
                    help="run each launch as a kernel on the simulated device")
    args = ap.parse_args()

    cuda = ctypes.CDLL(os.path.join(args.fixture_dir, "libcuda.so.1"))
    if args.simulate:
        gpu = ctypes.CDLL(os.path.join(args.fixture_dir, "libfakegpu.so"))
        gpu.fake_gpu_next.argtypes = [ctypes.c_uint, ctypes.c_ulonglong, ctypes.c_char_p,
                                      ctypes.c_uint]
        gpu.fake_gpu_next(1, SYNC_US * 1000, b"void decode_step_kernel<float>", 0)
        cuda.fake_cuda_driver_set_sync_us(0)
    else:
        cuda.fake_cuda_driver_set_sync_us(SYNC_US)
    stall_s = args.stall_ms / 1000
    payload = sized_object(stall_s)
    # Both ends stay open: nothing ever arrives, so select() waits.
    quiet, peer = socket.socketpair()
    print("ready", flush=True)
    sys.stdin.readline()

    for phase in PHASES:
        stop = threading.Event()
        competitor = None
        if phase == "gil":
            competitor = threading.Thread(target=hold_the_gil, args=(stop,))
            competitor.start()
            time.sleep(0.05)
        steps = args.steps if phase != "idle" else 4
        if phase == "gil":
            steps = args.steps * 3
        measured = 0
        # This thread's involuntary context switches: how often another
        # job took its CPU (ground truth for what the timeline cannot
        # record: stretches shorter than its threshold).
        preempted = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
        # The phase starts with a launch, so the pause before it is not
        # part of it, and its annotation is posted while the "GPU" is busy.
        cuda.cuLaunchKernel()
        start = time.monotonic_ns()
        annotate(args.gapscoped, phase, "start", start)
        cuda.cuStreamSynchronize()
        for _ in range(steps):
            t0 = time.monotonic_ns()
            if phase == "sleep":
                time.sleep(stall_s)
            elif phase == "json":
                json.dumps(payload)
            elif phase == "cpu":
                spin_until(t0 + int(stall_s * 1e9))
            elif phase == "poll":
                select.select([quiet], [], [], stall_s)
            elif phase == "idle":
                select.select([quiet], [], [], 0.3)
            measured += time.monotonic_ns() - t0
            cuda.cuLaunchKernel()
            cuda.cuStreamSynchronize()
        end = time.monotonic_ns()
        preempted = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw - preempted
        annotate(args.gapscoped, phase, "end", end)
        stop.set()
        if competitor:
            competitor.join()
        print(json.dumps({"phase": phase, "start_ns": start, "end_ns": end,
                          "steps": steps, "stall_ns": measured,
                          "preempted": preempted}), flush=True)
        time.sleep(0.3)
    print("done", flush=True)
    sys.stdin.read()
    peer.close()


if __name__ == "__main__":
    main()

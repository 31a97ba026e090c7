"""Ground truth for the GIL tests: threads that need the GIL in known ways.

usage: gil_probe.py MODE [--seconds S] [--tag T]

MODE:
  one_cpu      one CPU-bound thread (no one to wait for)
  two_cpu      two CPU-bound threads (each waits for the other)
  sleepers     three threads blocked in time.sleep and in socket reads
               (they release the GIL, and nobody else wants it)
  fork_two_cpu a worker process forked after "go" runs two_cpu; the
               parent waits for it

Prints "ready", waits for a line on stdin, runs for S seconds, prints a JSON
line with the wall time, the number of threads and their kernel thread ids
(the main thread's too), then "done", and waits for stdin to close.
"""

import argparse
import json
import os
import socket
import sys
import threading
import time


def spin(deadline: float) -> None:
    x = 0
    while time.monotonic() < deadline:
        for i in range(1000):
            x = (x * 31 + i) % 1_000_003


def sleeper(deadline: float) -> None:
    while time.monotonic() < deadline:
        time.sleep(0.05)


def reader(sock: socket.socket, deadline: float) -> None:
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            sock.recv(1)
        except socket.timeout:
            pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["one_cpu", "two_cpu", "sleepers", "fork_two_cpu"])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    print("ready", flush=True)
    sys.stdin.readline()

    start = time.monotonic()
    deadline = start + args.seconds
    if args.mode == "fork_two_cpu":
        pid = os.fork()
        if pid == 0:
            workers = [threading.Thread(target=spin, args=(deadline,)) for _ in range(2)]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
            os._exit(0)
        os.waitpid(pid, 0)
        report(start, 2)
        return
    threads = []
    a, b = socket.socketpair()
    if args.mode == "two_cpu":
        threads = [threading.Thread(target=spin, args=(deadline,)) for _ in range(2)]
    elif args.mode == "one_cpu":
        threads = [threading.Thread(target=spin, args=(deadline,))]
    else:
        threads += [threading.Thread(target=sleeper, args=(deadline,)) for _ in range(2)]
        threads.append(threading.Thread(target=reader, args=(a, deadline)))
    for t in threads:
        t.start()
    tids = [t.native_id for t in threads]
    for t in threads:
        t.join()
    report(start, len(threads), tids)


def report(start: float, threads: int, tids=()) -> None:
    wall = time.monotonic() - start
    print(json.dumps({"wall": wall, "threads": threads, "tids": list(tids),
                      "main_tid": threading.get_native_id()}), flush=True)
    print("done", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()

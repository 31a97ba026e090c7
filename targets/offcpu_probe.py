"""Ground truth for the off-CPU test: block in known ways and time it with
this process's own clock.

After a line on stdin: the main thread sleeps; a helper thread takes a lock
and holds it (sleeping) while the main thread waits for it. Prints JSON with
the seconds each thread spent asleep and waiting for the lock, then waits
for stdin to close.
"""

import json
import sys
import threading
import time

SLEEP_S = 0.4
HOLD_S = 0.6


def main() -> None:
    print("ready", flush=True)
    sys.stdin.readline()
    measured = {"sleep": 0.0, "lock": 0.0}

    t0 = time.monotonic()
    time.sleep(SLEEP_S)
    measured["sleep"] += time.monotonic() - t0

    lock = threading.Lock()
    held = threading.Event()
    helper_slept = [0.0]

    def holder():
        with lock:
            held.set()
            t = time.monotonic()
            time.sleep(HOLD_S)
            helper_slept[0] = time.monotonic() - t

    th = threading.Thread(target=holder)
    th.start()
    held.wait()
    t0 = time.monotonic()
    lock.acquire()
    measured["lock"] += time.monotonic() - t0
    lock.release()
    th.join()
    measured["sleep"] += helper_slept[0]

    print(json.dumps(measured), flush=True)
    print("done", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()

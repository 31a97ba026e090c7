"""A decode loop on the simulated device (gapscope's testkit: no GPU needed),
shaped like a Python serving wrapper's: each step launches one token's
kernels (four GEMMs, attention, a norm), waits for them, then does the
wrapper's host work before the next launch: the JSON of the step's output,
now and then a wait on a client socket, and all the while a second Python
thread (detokenizing, say) competes for the GIL. The device is idle exactly
while the host does that work, so `gapscoped explain` on this process shows
a GPU idle split by those causes.

usage: sim_decode.py FIXTURE_DIR [--steps N | --seconds S] [--gapscoped URL]
                     [--run-id ID] [--service NAME]

FIXTURE_DIR holds libcuda.so.1 and libfakegpu.so (gapscope_testkit builds
them); CUDA_INJECTION64_PATH and GAPSCOPE_CUPTI_PATH bring in the agent
and the CUPTI stand-in, as on a GPU host. With --gapscoped it posts the
run's start and end as gapscope-loadgen does, with the tokens made (one a
step), so the report has kernels per token. Prints "ready", waits for a
line, runs, prints one JSON line (steps, kernels, tokens, the loop's
CLOCK_MONOTONIC start and end), "done", and exits when stdin closes.
"""

import argparse
import ctypes
import json
import os
import select
import socket
import sys
import threading
import time
import urllib.request

# One token's kernels: (name, µs). The names classify as a real model's do.
STEP = [
    (b"ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_tn", 120),  # QKV projection
    (b"flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits>", 90),
    (b"ampere_bf16_s16816gemm_bf16_64x64_ldg8_f2f_tn", 80),  # output projection
    (b"void vllm::rms_norm_kernel<c10::BFloat16>", 15),
    (b"ampere_bf16_s16816gemm_bf16_256x128_ldg8_f2f_tn", 200),  # MLP up
    (b"ampere_bf16_s16816gemm_bf16_128x256_ldg8_f2f_tn", 180),  # MLP down
]


def annotate(url, run_id, service, event, tokens):
    if not url:
        return
    note = {"source": "sim_decode", "run_id": run_id, "phase": "decode", "kind": "closed_loop",
            "event": event, "monotonic_ns": time.monotonic_ns(), "output_tokens": tokens}
    if service:
        note["service"] = service
    body = json.dumps(note).encode()
    req = urllib.request.Request(url + "/api/v1/annotations", data=body,
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def detokenizer(stop):
    """A second Python thread that wants the GIL most of the time."""
    text = []
    while not stop.is_set():
        for i in range(20000):  # about a millisecond of Python
            text.append(chr(97 + i % 26))
        text.clear()
        time.sleep(0.001)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fixture_dir")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--gapscoped", default="")
    ap.add_argument("--run-id", default="sim-decode")
    ap.add_argument("--service", default="",
                    help="the gapscoped service this loop is (its tokens count for it only)")
    args = ap.parse_args()

    print("ready", flush=True)
    sys.stdin.readline()
    cuda = ctypes.CDLL(os.path.join(args.fixture_dir, "libcuda.so.1"), mode=ctypes.RTLD_GLOBAL)
    gpu = ctypes.CDLL(os.path.join(args.fixture_dir, "libfakegpu.so"))
    gpu.fake_gpu_next.argtypes = [ctypes.c_uint, ctypes.c_ulonglong, ctypes.c_char_p,
                                  ctypes.c_uint]
    cuda.fake_cuda_driver_set_sync_us(0)
    client, peer = socket.socketpair()  # a client that is slow to read
    output = {"id": "cmpl-1", "choices": [{"index": 0, "logprobs": [0.25] * 64}]}

    stop = threading.Event()
    competitor = threading.Thread(target=detokenizer, args=(stop,))
    competitor.start()
    annotate(args.gapscoped, args.run_id, args.service, "start", 0)
    start = time.monotonic_ns()
    deadline = start + int(args.seconds * 1e9)
    steps = kernels = 0
    while (steps < args.steps) if args.steps else (time.monotonic_ns() < deadline):
        for name, us in STEP:
            gpu.fake_gpu_next(1, us * 1000, name, 0)
            cuda.cuLaunchKernel()
            kernels += 1
        cuda.cuStreamSynchronize()
        steps += 1
        json.dumps(output)  # the step's chunk, serialized
        if steps % 8 == 0:
            select.select([client], [], [], 0.002)  # waiting on the client
    end = time.monotonic_ns()
    annotate(args.gapscoped, args.run_id, args.service, "end", steps)
    stop.set()
    competitor.join()
    print(json.dumps({"steps": steps, "kernels": kernels, "tokens": steps,
                      "start_ns": start, "end_ns": end}), flush=True)
    print("done", flush=True)
    sys.stdin.read()
    peer.close()


if __name__ == "__main__":
    main()

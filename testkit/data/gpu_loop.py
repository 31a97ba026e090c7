"""Test fixture: a Python process driving the simulated device through the
fake CUDA libraries (fake_cuda.c over fake_gpu.c), the way a serving loop
drives a GPU: launch, synchronize, do host work, launch again. The device
is idle exactly while the host is late, so every idle gap here is caused
by the host work the mode chose.

Talks like every workload: prints "ready", waits for a line, loads CUDA
(which loads CUDA_INJECTION64_PATH's agent, as the real libcuda does),
runs, prints what the device did ("device kernels N copies C busy_ns B
first_ns F last_ns L latency_ns T"), "done", and exits when stdin
closes.

Usage: gpu_loop.py FIXTURE_DIR MODE ARGS
  kernels N KERNEL_US GAP_US   N steps on stream 1: two kernels launched
                               back to back (the second waits for the
                               first), a stream sync, GAP_US of host sleep.
  launches N KERNEL_US         N launches as fast as the host can, then one
                               sync: a launch-bound loop. Also prints
                               "host launch_ns T vmhwm_kb M" (the loop's
                               time and the process's peak memory).
"""

import ctypes
import sys
import time


def main():
    fixture, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    print("ready", flush=True)
    sys.stdin.readline()
    cuda = ctypes.CDLL(f"{fixture}/libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    gpu = ctypes.CDLL(f"{fixture}/libfakegpu.so")
    gpu.fake_gpu_next.argtypes = [ctypes.c_uint, ctypes.c_ulonglong, ctypes.c_char_p, ctypes.c_uint]
    if mode == "kernels":
        n, kernel_us, gap_us = int(args[0]), int(args[1]), int(args[2])
        gpu.fake_gpu_next(1, kernel_us * 1000, b"ampere_bf16_s16816gemm_bf16_128x128_tn", 0)
        for _ in range(n):
            cuda.cuLaunchKernel()
            cuda.cuLaunchKernel()
            cuda.cuStreamSynchronize()
            time.sleep(gap_us / 1e6)
    elif mode == "launches":
        n, kernel_us = int(args[0]), int(args[1])
        gpu.fake_gpu_next(1, kernel_us * 1000, b"void elementwise_kernel<float>", 0)
        launch = cuda.cuLaunchKernel
        t0 = time.monotonic_ns()
        for _ in range(n):
            launch()
        took = time.monotonic_ns() - t0
        cuda.cuCtxSynchronize()
        with open("/proc/self/status") as f:
            hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
        print(f"host launch_ns {took} vmhwm_kb {hwm}", flush=True)
    else:
        sys.exit(f"gpu_loop.py: unknown mode {mode}")
    totals = [ctypes.c_ulonglong() for _ in range(6)]
    gpu.fake_gpu_totals(*[ctypes.byref(t) for t in totals])
    k, c, busy, first, last, latency = (t.value for t in totals)
    gpu.fake_gpu_idle_gaps.restype = ctypes.c_ulonglong
    gaps = gpu.fake_gpu_idle_gaps()
    print(f"device kernels {k} copies {c} busy_ns {busy} first_ns {first} last_ns {last} "
          f"latency_ns {latency} idle_gaps {gaps}", flush=True)
    print("done", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()

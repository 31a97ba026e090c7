/*
 * Test fixture, not CUDA: a stand-in for libcuda.so.1 (built with
 * -DFAKE_DRIVER) and libcudart.so.12 (-DFAKE_RUNTIME) that exports the
 * entry points gapscoped probes, with known behaviour. Launches return at
 * once; synchronizing calls sleep for fake_cuda_sync_us microseconds, so
 * a caller knows exactly how many calls it made and how long each waited.
 * Built by gapscope_testkit::fake_cuda at -O0, so no two functions are folded
 * into one address.
 */
#include <stddef.h>
#include <time.h>

static volatile unsigned long calls;
static unsigned sync_us;

static void wait_for_gpu(void) {
    struct timespec ts = {0, (long)sync_us * 1000L};
    calls++;
    nanosleep(&ts, NULL);
}

#define LAUNCH(name, n) int name(void) { calls += n; return 0; }
#define SYNC(name) int name(void) { wait_for_gpu(); return 0; }

#ifdef FAKE_DRIVER
void fake_cuda_driver_set_sync_us(unsigned us) { sync_us = us; }
LAUNCH(cuLaunchKernel, 1)
LAUNCH(cuLaunchKernel_ptsz, 2)
LAUNCH(cuLaunchKernelEx, 3)
LAUNCH(cuGraphLaunch, 4)
SYNC(cuStreamSynchronize)
SYNC(cuCtxSynchronize)
SYNC(cuEventSynchronize)
SYNC(cuMemcpyDtoH_v2)
#endif

#ifdef FAKE_RUNTIME
void fake_cuda_runtime_set_sync_us(unsigned us) { sync_us = us; }
LAUNCH(cudaLaunchKernel, 5)
LAUNCH(cudaGraphLaunch, 6)
SYNC(cudaStreamSynchronize)
SYNC(cudaDeviceSynchronize)
#endif

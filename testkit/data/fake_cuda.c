/*
 * Test fixture, not CUDA: a stand-in for libcuda.so.1 (built with
 * -DFAKE_DRIVER) and libcudart.so.12 (-DFAKE_RUNTIME) that exports the
 * entry points gapscoped probes, over the simulated device (fake_gpu.c,
 * libfakegpu.so). A launch queues the kernels the calling thread scripted
 * (fake_gpu_next; none by default) and returns at once; a synchronizing
 * call blocks until the device has drained what it waits on, and for at
 * least fake_cuda_*_set_sync_us microseconds; a device-to-host copy waits
 * for the device and its own transfer. So a caller knows exactly how many
 * calls it made, how long each waited and what the device did.
 *
 * Like the real libcuda, the first call loads the library that
 * CUDA_INJECTION64_PATH names and calls its InitializeInjection (CUPTI
 * deep mode's agent). Built by gapscope_testkit::fake_cuda at -O0, so no
 * two functions are folded into one address.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "fake_gpu.h"

static volatile unsigned long calls;
static unsigned sync_us;
static pthread_once_t injected = PTHREAD_ONCE_INIT;

/* The driver loads the injection library; the runtime leaves it to the
 * driver (in this fixture the runtime's entry points do not call into the
 * driver, so a runtime-only caller runs without the agent). */
static void inject(void) {
#ifdef FAKE_DRIVER
    const char *path = getenv("CUDA_INJECTION64_PATH");
    if (!path || !*path) return;
    void *lib = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    int (*init)(void) = lib ? (int (*)(void))dlsym(lib, "InitializeInjection") : NULL;
    if (!init) {
        fprintf(stderr, "fake libcuda: CUDA_INJECTION64_PATH=%s: %s\n", path, dlerror());
        return;
    }
    init();
#endif
}

#ifdef FAKE_DRIVER
#define DRIVER 1
#else
#define DRIVER 0
#endif

/* CUPTI's callback ids of the entry points (cupti_driver_cbid.h,
 * cupti_runtime_cbid.h). */
#define LAUNCH(name, n, cbid, graph)                                                               \
    int name(void) {                                                                           \
        pthread_once(&injected, inject);                                                       \
        calls += n;                                                                            \
        fake_gpu_launch(DRIVER, cbid, graph);                                                  \
        return 0;                                                                              \
    }
#define SYNC(name, cbid, all)                                                                      \
    int name(void) {                                                                           \
        pthread_once(&injected, inject);                                                       \
        calls++;                                                                               \
        fake_gpu_sync(DRIVER, cbid, all, (unsigned long long)sync_us * 1000ULL);               \
        return 0;                                                                              \
    }

#ifdef FAKE_DRIVER
void fake_cuda_driver_set_sync_us(unsigned us) { sync_us = us; }
LAUNCH(cuLaunchKernel, 1, 307, 0)
LAUNCH(cuLaunchKernel_ptsz, 2, 442, 0)
LAUNCH(cuLaunchKernelEx, 3, 652, 0)
LAUNCH(cuGraphLaunch, 4, 514, 1)
SYNC(cuStreamSynchronize, 126, 0)
SYNC(cuCtxSynchronize, 17, 1)
SYNC(cuEventSynchronize, 121, 0)
int cuMemcpyDtoH_v2(void) {
    pthread_once(&injected, inject);
    calls++;
    fake_gpu_copy_dtoh(DRIVER, 278, (unsigned long long)sync_us * 1000ULL);
    return 0;
}
#endif

#ifdef FAKE_RUNTIME
void fake_cuda_runtime_set_sync_us(unsigned us) { sync_us = us; }
LAUNCH(cudaLaunchKernel, 5, 211, 0)
LAUNCH(cudaGraphLaunch, 6, 311, 1)
SYNC(cudaStreamSynchronize, 131, 0)
SYNC(cudaDeviceSynchronize, 165, 1)
#endif

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
#include <string.h>

#include "fake_gpu.h"

static volatile unsigned long calls;
static unsigned sync_us;
static pthread_once_t injected = PTHREAD_ONCE_INIT;
/* Set once the first call has loaded the injection library: as cuInit,
 * after which the device queries answer. */
static volatile int initialized;

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

static void initialize(void) {
    inject();
    initialized = 1;
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
        pthread_once(&injected, initialize);                                                       \
        calls += n;                                                                            \
        fake_gpu_launch(DRIVER, cbid, graph);                                                  \
        return 0;                                                                              \
    }
#define SYNC(name, cbid, all)                                                                      \
    int name(void) {                                                                           \
        pthread_once(&injected, initialize);                                                       \
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
/* The devices: FAKE_CUDA_UUIDS, comma-separated UUIDs as NVML spells
 * them (GPU-8-4-4-4-12 hex digits), one per CUDA index, in the order
 * CUDA_VISIBLE_DEVICES would leave them; unset, one device whose UUID is
 * all zeros. Before the first call (cuInit), CUDA_ERROR_NOT_INITIALIZED. */
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CUDA_ERROR_INVALID_DEVICE 101
#define CUDA_ERROR_INVALID_VALUE 1
#define MAX_FAKE_DEVICES 16

static int device_uuids(unsigned char uuids[][16]) {
    const char *list = getenv("FAKE_CUDA_UUIDS");
    if (!list) {
        memset(uuids[0], 0, 16);
        return 1;
    }
    int n = 0;
    const char *p = list;
    while (*p && n < MAX_FAKE_DEVICES) {
        if (strncmp(p, "GPU-", 4) == 0) p += 4;
        int got = 0;
        while (*p && *p != ',' && got < 32) {
            if (*p != '-') {
                unsigned v;
                if (sscanf(p, "%1x", &v) != 1) break;
                if (got % 2 == 0) uuids[n][got / 2] = (unsigned char)(v << 4);
                else uuids[n][got / 2] |= (unsigned char)v;
                got++;
            }
            p++;
        }
        if (got == 32) n++;
        while (*p && *p != ',') p++;
        if (*p == ',') p++;
    }
    return n;
}

int cuDeviceGetCount(int *count) {
    unsigned char uuids[MAX_FAKE_DEVICES][16];
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    *count = device_uuids(uuids);
    return 0;
}

int cuDeviceGet(int *device, int ordinal) {
    unsigned char uuids[MAX_FAKE_DEVICES][16];
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!device) return CUDA_ERROR_INVALID_VALUE;
    if (ordinal < 0 || ordinal >= device_uuids(uuids)) return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return 0;
}

int cuDeviceGetUuid_v2(unsigned char *uuid, int device) {
    unsigned char uuids[MAX_FAKE_DEVICES][16];
    if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
    if (!uuid) return CUDA_ERROR_INVALID_VALUE;
    if (device < 0 || device >= device_uuids(uuids)) return CUDA_ERROR_INVALID_DEVICE;
    memcpy(uuid, uuids[device], 16);
    return 0;
}

int cuMemcpyDtoH_v2(void) {
    pthread_once(&injected, initialize);
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

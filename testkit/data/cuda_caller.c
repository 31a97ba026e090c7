/*
 * Calls the fake CUDA libraries (fake_cuda.c) a known number of times,
 * loading them only when told to, like a serving process that initialises
 * CUDA on first use. Talks to the test over stdin/stdout:
 *
 *   ready            → waits for a line
 *   (line)           dlopen()s DIR/libcuda.so.1 and DIR/libcudart.so.12
 *   loaded, done     → waits for a line
 *   (line)           runs the calls given on the command line
 *   sync_ns N        the summed time of the synchronizing calls, as timed here
 *   done
 *
 * Usage: cuda_caller DIR MODE ARGS (busy and paced take two)
 *   MODE exact LAUNCHES SYNCS SYNC_US: every entry point LAUNCHES (launches)
 *        or SYNCS (syncs) times, syncs sleeping SYNC_US each.
 *   MODE paced RATE SECONDS: cuLaunchKernel RATE times a second for
 *        SECONDS, in 10 ms steps.
 *   MODE busy SECONDS WORK_NS: cuLaunchKernel for SECONDS, spinning
 *        WORK_NS between launches (the CPU work a serving loop does per
 *        kernel): a launch-bound thread, the probes' worst case.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int (*call_fn)(void);
typedef void (*set_fn)(unsigned);

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *load(const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        exit(2);
    }
    return h;
}

static call_fn fn(void *lib, const char *name) {
    call_fn f = (call_fn)dlsym(lib, name);
    if (!f) {
        fprintf(stderr, "dlsym %s: %s\n", name, dlerror());
        exit(2);
    }
    return f;
}

static void wait_line(void) {
    char line[64];
    if (!fgets(line, sizeof line, stdin)) exit(0);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: cuda_caller DIR exact LAUNCHES SYNCS SYNC_US | DIR paced RATE SECONDS | DIR busy SECONDS WORK_NS\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    wait_line();
    void *driver = load(argv[1], "libcuda.so.1");
    void *runtime = load(argv[1], "libcudart.so.12");
    printf("loaded\ndone\n");
    wait_line();

    long long sync_ns = 0;
    if (strcmp(argv[2], "exact") == 0 && argc == 6) {
        long launches = atol(argv[3]), syncs = atol(argv[4]);
        unsigned us = (unsigned)atol(argv[5]);
        ((set_fn)dlsym(driver, "fake_cuda_driver_set_sync_us"))(us);
        ((set_fn)dlsym(runtime, "fake_cuda_runtime_set_sync_us"))(us);
        const char *launch[][2] = {{"d", "cuLaunchKernel"}, {"d", "cuLaunchKernel_ptsz"},
                                   {"d", "cuLaunchKernelEx"}, {"d", "cuGraphLaunch"},
                                   {"r", "cudaLaunchKernel"}, {"r", "cudaGraphLaunch"}};
        const char *sync[][2] = {{"d", "cuStreamSynchronize"}, {"d", "cuCtxSynchronize"},
                                 {"d", "cuEventSynchronize"}, {"d", "cuMemcpyDtoH_v2"},
                                 {"r", "cudaStreamSynchronize"}, {"r", "cudaDeviceSynchronize"}};
        for (size_t i = 0; i < sizeof launch / sizeof launch[0]; i++) {
            call_fn f = fn(launch[i][0][0] == 'd' ? driver : runtime, launch[i][1]);
            for (long n = 0; n < launches; n++) f();
        }
        for (size_t i = 0; i < sizeof sync / sizeof sync[0]; i++) {
            call_fn f = fn(sync[i][0][0] == 'd' ? driver : runtime, sync[i][1]);
            for (long n = 0; n < syncs; n++) {
                long long t0 = now_ns();
                f();
                sync_ns += now_ns() - t0;
            }
        }
    } else if (strcmp(argv[2], "paced") == 0) {
        long rate = atol(argv[3]), seconds = atol(argv[4]);
        call_fn f = fn(driver, "cuLaunchKernel");
        long per_step = rate / 100;
        struct timespec next;
        clock_gettime(CLOCK_MONOTONIC, &next);
        for (long step = 0; step < seconds * 100; step++) {
            for (long n = 0; n < per_step; n++) f();
            next.tv_nsec += 10000000L;
            if (next.tv_nsec >= 1000000000L) {
                next.tv_sec++;
                next.tv_nsec -= 1000000000L;
            }
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        }
        printf("launches %ld\n", per_step * seconds * 100);
    } else if (strcmp(argv[2], "busy") == 0) {
        call_fn f = fn(driver, "cuLaunchKernel");
        long long start = now_ns(), end = start + atoll(argv[3]) * 1000000000LL, t = start;
        long long work = argc > 4 ? atoll(argv[4]) : 0;
        long launches = 0;
        while (t < end) {
            for (int n = 0; n < 64; n++) {
                f();
                if (work > 0) {
                    long long until = now_ns() + work;
                    while (now_ns() < until) {}
                }
            }
            launches += 64;
            t = now_ns();
        }
        printf("launches %ld\n", launches);
        printf("seconds %.6f\n", (t - start) / 1e9);
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[2]);
        return 2;
    }
    printf("sync_ns %lld\n", sync_ns);
    printf("done\n");
    wait_line();
    return 0;
}

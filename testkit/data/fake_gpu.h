/*
 * Test fixture, not a GPU: the simulated device shared by the fake CUDA
 * libraries (fake_cuda.c) and the CUPTI stand-in (fake_cupti.c), one copy
 * per process (libfakegpu.so). See fake_gpu.c.
 */
#ifndef FAKE_GPU_H
#define FAKE_GPU_H

/* Kinds of device work. */
enum { FAKE_GPU_KERNEL = 1, FAKE_GPU_COPY = 2, FAKE_GPU_SYNC = 3 };

/* One piece of device work, told to the observer when it is queued (a
 * kernel or copy, with its future start and end) or when a host wait on
 * the device ends (a sync). CLOCK_MONOTONIC ns. */
struct fake_gpu_work {
    int kind;
    unsigned stream;
    unsigned correlation;
    unsigned long long start_ns, end_ns;
    unsigned long long bytes;   /* copies */
    const char *name;           /* kernels: lives as long as the process */
    unsigned graph_id;          /* kernels of a graph launch; else 0 */
    int sync_all;               /* syncs: the whole device, not a stream */
};

/* One CUDA API call, told when it returns. */
struct fake_gpu_api {
    int driver;                 /* 1: libcuda, 0: libcudart */
    unsigned cbid;              /* CUPTI's callback id of the entry point */
    unsigned correlation;
    unsigned long long start_ns, end_ns;
    unsigned pid, tid;          /* tid: gettid() */
    unsigned long long pthread; /* pthread_self() */
};

struct fake_gpu_observer {
    void (*work)(const struct fake_gpu_work *);
    void (*api)(const struct fake_gpu_api *);
};

/* What each following launch on this thread runs: `kernels` kernels of
 * `duration_ns` each on `stream` (a graph launch runs `graph_kernels`).
 * Zero kernels (the default): launches run nothing. */
void fake_gpu_next(unsigned stream, unsigned long long duration_ns, const char *name,
                   unsigned graph_kernels);
/* The copy a following synchronous device-to-host copy on this thread makes. */
void fake_gpu_next_copy(unsigned long long bytes);
void fake_gpu_observe(const struct fake_gpu_observer *);
unsigned long long fake_gpu_now(void);

/* Called by the fake entry points; each returns once the call would. */
unsigned fake_gpu_launch(int driver, unsigned cbid, int graph);
/* Blocks until the stream (this thread's, see fake_gpu_next) or the whole
 * device (`all`) has drained, and at least `min_ns`. */
void fake_gpu_sync(int driver, unsigned cbid, int all, unsigned long long min_ns);
/* Queues the copy behind every stream's work (the legacy default stream)
 * and blocks until it is done, and at least `min_ns`. */
void fake_gpu_copy_dtoh(int driver, unsigned cbid, unsigned long long min_ns);

/* The truth, for tests: device work queued so far (kernels and copies),
 * busy time (their union), the first start and last end, and the summed
 * launch latency (each launch's first kernel start less the call's start). */
void fake_gpu_totals(unsigned long long *kernels, unsigned long long *copies,
                     unsigned long long *busy_ns, unsigned long long *first_ns,
                     unsigned long long *last_ns, unsigned long long *latency_ns);

/* The truth, for tests: idle gaps so far, each a busy stretch that
 * started after the previous one ended (not at its end). */
unsigned long long fake_gpu_idle_gaps(void);

/* A device-to-host copy: fixed latency plus bytes at a fixed bandwidth. */
#define FAKE_GPU_COPY_LATENCY_NS 10000ULL
#define FAKE_GPU_COPY_BYTES_PER_S 10000000000ULL

#endif

/*
 * Test fixture, not CUPTI: a stand-in for libcupti that the injection
 * library (libgapscope_inject.so) loads through GAPSCOPE_CUPTI_PATH,
 * recording the simulated device's work (fake_gpu.c) in CUPTI's own
 * record layouts, compiled against a CUPTI release's real headers:
 *   -DKERNEL=CUpti_ActivityKernel9 -DMEMCPY=... -DSYNC=...
 *
 * It behaves like CUPTI where the agent depends on it:
 * - buffers are requested and completed through the registered callbacks
 *   on a thread of its own (the completion's context is NULL, its
 *   stream 0, as since CUDA 6);
 * - a record is written once its work has ended, so records of several
 *   streams complete out of order; cuptiActivityFlushAll(0) delivers the
 *   buffer with every ended record, FLUSH_FORCED also the records still
 *   running (with zero start and end), and returns once delivered;
 * - its timestamps are CLOCK_MONOTONIC plus an offset of its own
 *   (GAPSCOPE_FAKE_CUPTI_OFFSET_NS, default 1000 s), unless a timestamp
 *   callback was registered, whose clock they then follow;
 * - records for which no buffer was given are dropped and counted by
 *   cuptiActivityGetNumDroppedRecords (reset on read);
 *   GAPSCOPE_FAKE_CUPTI_DECLINE=N hands the first N buffers back empty,
 *   each costing the record that needed it;
 * - a graph launch's kernels carry its graph id; API records carry the
 *   caller's thread (pthread_self, or gettid after
 *   cuptiSetThreadIdType(SYSTEM)) and the correlation id its work repeats.
 * GAPSCOPE_FAKE_CUPTI_SUBSCRIBER=busy makes cuptiSubscribe fail as with
 * another profiler attached; GAPSCOPE_FAKE_CUPTI_TIMESTAMP=refuse makes
 * the timestamp callback unsupported.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cupti_activity.h>
#include <cupti_callbacks.h>
#include <cupti_result.h>
#include <cupti_version.h>

#include "fake_gpu.h"

#if !defined(KERNEL) || !defined(MEMCPY) || !defined(SYNC)
#error "define KERNEL, MEMCPY and SYNC as this release's struct names"
#endif

/* One record waiting for its work to end, in the release's layout. */
struct pending {
    unsigned long long ready_ns; /* monotonic: when it may be written */
    size_t size;
    union {
        CUpti_Activity head;
        KERNEL kernel;
        MEMCPY memcpy;
        SYNC sync;
        CUpti_ActivityAPI api;
    } r;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER, flushed = PTHREAD_COND_INITIALIZER;
static CUpti_BuffersCallbackRequestFunc request_cb;
static CUpti_BuffersCallbackCompleteFunc complete_cb;
static uint64_t (*timestamp_cb)(void);
static long long offset_ns = 1000000000000LL;
static int enabled[64];
static int thread_id_system;
static unsigned declines_left;

static struct pending *queue;
static size_t queued, queue_cap;
static size_t dropped;
static unsigned flush_requests, flushes_done;
/* The newest flush request that was forced: a forced request still to
 * be served makes the pass forced, however many plain ones follow it. */
static unsigned forced_upto;

static uint8_t *buf;
static size_t buf_size, buf_used;
static int worker_started;

static uint64_t stamp(unsigned long long monotonic_ns) {
    return (uint64_t)((long long)monotonic_ns + offset_ns);
}

CUptiResult cuptiGetVersion(uint32_t *version) {
    *version = CUPTI_API_VERSION;
    return CUPTI_SUCCESS;
}

CUptiResult cuptiGetTimestamp(uint64_t *t) {
    *t = stamp(fake_gpu_now());
    return CUPTI_SUCCESS;
}

CUptiResult cuptiGetResultString(CUptiResult r, const char **s) {
    *s = r == CUPTI_SUCCESS ? "CUPTI_SUCCESS" : "CUPTI_ERROR (fake libcupti)";
    return CUPTI_SUCCESS;
}

CUptiResult cuptiSubscribe(CUpti_SubscriberHandle *h, CUpti_CallbackFunc cb, void *data) {
    (void)cb;
    (void)data;
    const char *k = getenv("GAPSCOPE_FAKE_CUPTI_SUBSCRIBER");
    if (k && !strcmp(k, "busy")) return CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED;
    *h = (CUpti_SubscriberHandle)1;
    return CUPTI_SUCCESS;
}

CUptiResult cuptiUnsubscribe(CUpti_SubscriberHandle h) {
    (void)h;
    return CUPTI_SUCCESS;
}

CUptiResult cuptiActivityRegisterTimestampCallback(CUpti_TimestampCallbackFunc cb) {
    const char *k = getenv("GAPSCOPE_FAKE_CUPTI_TIMESTAMP");
    if (k && !strcmp(k, "refuse")) return CUPTI_ERROR_NOT_SUPPORTED;
    pthread_mutex_lock(&lock);
    if (!cb) {
        /* Unregistered: back to the stand-in's own clock. */
        const char *o = getenv("GAPSCOPE_FAKE_CUPTI_OFFSET_NS");
        timestamp_cb = NULL;
        offset_ns = o ? atoll(o) : 1000000000000LL;
        pthread_mutex_unlock(&lock);
        return CUPTI_SUCCESS;
    }
    timestamp_cb = cb;
    /* Its clock from now on: the callback's reading against ours. */
    offset_ns = (long long)cb() - (long long)fake_gpu_now();
    pthread_mutex_unlock(&lock);
    return CUPTI_SUCCESS;
}

CUptiResult cuptiSetThreadIdType(CUpti_ActivityThreadIdType type) {
    thread_id_system = type == CUPTI_ACTIVITY_THREAD_ID_TYPE_SYSTEM;
    return CUPTI_SUCCESS;
}

CUptiResult cuptiActivityEnable(CUpti_ActivityKind kind) {
    if ((unsigned)kind >= 64) return CUPTI_ERROR_INVALID_KIND;
    enabled[kind] = 1;
    return CUPTI_SUCCESS;
}

CUptiResult cuptiActivityDisable(CUpti_ActivityKind kind) {
    if ((unsigned)kind >= 64) return CUPTI_ERROR_INVALID_KIND;
    enabled[kind] = 0;
    return CUPTI_SUCCESS;
}

/* Called with the lock held. */
static void enqueue(const struct pending *p) {
    if (queued == queue_cap) {
        queue_cap = queue_cap ? queue_cap * 2 : 1024;
        queue = realloc(queue, queue_cap * sizeof *queue);
    }
    queue[queued++] = *p;
}

/* The CUDA device index all of the process's work runs on:
 * FAKE_CUDA_DEVICE (as if it had called cudaSetDevice), else 0. */
static unsigned device_id(void) {
    const char *d = getenv("FAKE_CUDA_DEVICE");
    return d ? (unsigned)atoi(d) : 0;
}

static void on_work(const struct fake_gpu_work *w) {
    struct pending p;
    memset(&p, 0, sizeof p);
    p.ready_ns = w->end_ns;
    if (w->kind == FAKE_GPU_KERNEL) {
        if (!enabled[CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL]) return;
        KERNEL *k = &p.r.kernel;
        k->kind = CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL;
        k->start = w->start_ns;
        k->end = w->end_ns;
        k->deviceId = device_id();
        k->contextId = 1;
        k->streamId = w->stream;
        k->correlationId = w->correlation;
        k->name = w->name;
        k->graphId = w->graph_id;
        p.size = sizeof(KERNEL);
    } else if (w->kind == FAKE_GPU_COPY) {
        if (!enabled[CUPTI_ACTIVITY_KIND_MEMCPY]) return;
        MEMCPY *m = &p.r.memcpy;
        m->kind = CUPTI_ACTIVITY_KIND_MEMCPY;
        m->copyKind = CUPTI_ACTIVITY_MEMCPY_KIND_DTOH;
        m->bytes = w->bytes;
        m->start = w->start_ns;
        m->end = w->end_ns;
        m->deviceId = device_id();
        m->contextId = 1;
        m->streamId = w->stream;
        m->correlationId = w->correlation;
        p.size = sizeof(MEMCPY);
    } else {
        if (!enabled[CUPTI_ACTIVITY_KIND_SYNCHRONIZATION]) return;
        SYNC *s = &p.r.sync;
        s->kind = CUPTI_ACTIVITY_KIND_SYNCHRONIZATION;
        s->type = w->sync_all ? CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_CONTEXT_SYNCHRONIZE
                              : CUPTI_ACTIVITY_SYNCHRONIZATION_TYPE_STREAM_SYNCHRONIZE;
        s->start = w->start_ns;
        s->end = w->end_ns;
        s->correlationId = w->correlation;
        s->contextId = 1;
        s->streamId = w->sync_all ? 0 : w->stream;
        p.size = sizeof(SYNC);
    }
    /* The caller holds fake_gpu's lock; ours nests inside it, never the
     * other way round. */
    pthread_mutex_lock(&lock);
    enqueue(&p);
    pthread_mutex_unlock(&lock);
}

static void on_api(const struct fake_gpu_api *a) {
    CUpti_ActivityKind kind = a->driver ? CUPTI_ACTIVITY_KIND_DRIVER : CUPTI_ACTIVITY_KIND_RUNTIME;
    if (!enabled[kind]) return;
    struct pending p;
    memset(&p, 0, sizeof p);
    p.ready_ns = a->end_ns;
    p.r.api.kind = kind;
    p.r.api.cbid = a->cbid;
    p.r.api.start = a->start_ns;
    p.r.api.end = a->end_ns;
    p.r.api.processId = a->pid;
    p.r.api.threadId = thread_id_system ? a->tid : (uint32_t)a->pthread;
    p.r.api.correlationId = a->correlation;
    p.size = sizeof(CUpti_ActivityAPI);
    pthread_mutex_lock(&lock);
    enqueue(&p);
    pthread_mutex_unlock(&lock);
}

static const struct fake_gpu_observer observer = {on_work, on_api};

/* A buffer from the client, or none (declined: what goes there is
 * dropped). Called without the lock. */
static void take_buffer(void) {
    uint8_t *b = NULL;
    size_t size = 0, max_records = 0;
    request_cb(&b, &size, &max_records);
    pthread_mutex_lock(&lock);
    if (declines_left > 0 && b) {
        /* Lost, as when CUPTI has no room: the buffer goes back to the
         * client empty, and the record that needed it is dropped. */
        declines_left--;
        pthread_mutex_unlock(&lock);
        complete_cb(NULL, 0, b, size, 0);
        pthread_mutex_lock(&lock);
        b = NULL;
    }
    buf = b;
    buf_size = b ? size : 0;
    buf_used = 0;
    pthread_mutex_unlock(&lock);
}

/* Hands the current buffer back to the client. Called without the lock. */
static void give_buffer(void) {
    pthread_mutex_lock(&lock);
    uint8_t *b = buf;
    size_t size = buf_size, used = buf_used;
    buf = NULL;
    buf_size = buf_used = 0;
    pthread_mutex_unlock(&lock);
    if (b) complete_cb(NULL, 0, b, size, used);
}

static int by_ready(const void *a, const void *b) {
    const struct pending *x = a, *y = b;
    return x->ready_ns < y->ready_ns ? -1 : x->ready_ns > y->ready_ns;
}

/* Writes the records that are ready (all of them when forced, the ones
 * still running with zero times) into buffers, oldest end first. Takes
 * every ready record in one pass, so a worker that fell behind catches up
 * in O(n log n), not O(n^2). Buffers are touched only by the worker. */
static void write_ready(int forced) {
    pthread_mutex_lock(&lock);
    unsigned long long now = fake_gpu_now();
    struct pending *ready = queued ? malloc(queued * sizeof *ready) : NULL;
    size_t n = 0, kept = 0;
    for (size_t i = 0; i < queued; i++) {
        if (ready && (queue[i].ready_ns <= now || forced)) {
            ready[n++] = queue[i];
        } else {
            queue[kept++] = queue[i];
        }
    }
    queued = kept;
    pthread_mutex_unlock(&lock);
    qsort(ready, n, sizeof *ready, by_ready);
    size_t lost = 0;
    for (size_t i = 0; i < n; i++) {
        struct pending *p = &ready[i];
        if (p->ready_ns > now) {
            /* Forced out while running (only kernels and copies are
             * queued ahead of their end): CUPTI writes it with no times. */
            if (p->r.head.kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
                p->r.memcpy.start = p->r.memcpy.end = 0;
            } else {
                p->r.kernel.start = p->r.kernel.end = 0;
            }
        }
        if (!buf || buf_used + p->size > buf_size) {
            if (buf) give_buffer();
            take_buffer();
        }
        if (!buf || buf_used + p->size > buf_size) {
            lost++;
            continue;
        }
        /* Times on CUPTI's clock. */
        switch (p->r.head.kind) {
        case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
            if (p->r.kernel.start) p->r.kernel.start = stamp(p->r.kernel.start);
            if (p->r.kernel.end) p->r.kernel.end = stamp(p->r.kernel.end);
            break;
        case CUPTI_ACTIVITY_KIND_MEMCPY:
            if (p->r.memcpy.start) p->r.memcpy.start = stamp(p->r.memcpy.start);
            if (p->r.memcpy.end) p->r.memcpy.end = stamp(p->r.memcpy.end);
            break;
        case CUPTI_ACTIVITY_KIND_SYNCHRONIZATION:
            p->r.sync.start = stamp(p->r.sync.start);
            p->r.sync.end = stamp(p->r.sync.end);
            break;
        default:
            p->r.api.start = stamp(p->r.api.start);
            p->r.api.end = stamp(p->r.api.end);
        }
        memcpy(buf + buf_used, &p->r, p->size);
        buf_used += p->size;
    }
    free(ready);
    if (lost) {
        pthread_mutex_lock(&lock);
        dropped += lost;
        pthread_mutex_unlock(&lock);
    }
}

/* How often the worker writes the records whose work has ended. */
#define WRITE_EVERY_NS 10000000ULL

static void *worker(void *arg) {
    (void)arg;
    for (;;) {
        int forced;
        unsigned want;
        pthread_mutex_lock(&lock);
        want = flush_requests;
        forced = (int)(forced_upto - flushes_done) > 0;
        pthread_mutex_unlock(&lock);
        write_ready(forced && want != flushes_done);
        pthread_mutex_lock(&lock);
        if (want != flushes_done) {
            pthread_mutex_unlock(&lock);
            give_buffer();
            pthread_mutex_lock(&lock);
            flushes_done = want;
            pthread_cond_broadcast(&flushed);
        }
        if (flush_requests == flushes_done) {
            /* Like CUPTI, records are written in passes, not as each
             * piece of work ends: every WRITE_EVERY_NS, or at once for a
             * flush (which signals). So the host pays no wake-up per
             * record. The condition variable runs on CLOCK_REALTIME. */
            struct timespec rt;
            clock_gettime(CLOCK_REALTIME, &rt);
            unsigned long long r = (unsigned long long)rt.tv_sec * 1000000000ULL +
                                   (unsigned long long)rt.tv_nsec + WRITE_EVERY_NS;
            struct timespec until = {(time_t)(r / 1000000000ULL), (long)(r % 1000000000ULL)};
            pthread_cond_timedwait(&wake, &lock, &until);
        }
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

CUptiResult cuptiActivityRegisterCallbacks(CUpti_BuffersCallbackRequestFunc request,
                                           CUpti_BuffersCallbackCompleteFunc complete) {
    if (!request || !complete) return CUPTI_ERROR_INVALID_PARAMETER;
    pthread_mutex_lock(&lock);
    request_cb = request;
    complete_cb = complete;
    const char *o = getenv("GAPSCOPE_FAKE_CUPTI_OFFSET_NS");
    if (o && !timestamp_cb) offset_ns = atoll(o);
    const char *d = getenv("GAPSCOPE_FAKE_CUPTI_DECLINE");
    if (d) declines_left = (unsigned)atoi(d);
    int start = !worker_started;
    worker_started = 1;
    pthread_mutex_unlock(&lock);
    if (start) {
        pthread_t t;
        pthread_create(&t, NULL, worker, NULL);
        pthread_detach(t);
        fake_gpu_observe(&observer);
    }
    return CUPTI_SUCCESS;
}

CUptiResult cuptiActivityFlushAll(uint32_t flag) {
    pthread_mutex_lock(&lock);
    if (!worker_started) {
        pthread_mutex_unlock(&lock);
        return CUPTI_SUCCESS;
    }
    unsigned mine = ++flush_requests;
    if (flag & CUPTI_ACTIVITY_FLAG_FLUSH_FORCED) forced_upto = mine;
    pthread_cond_signal(&wake);
    while ((int)(flushes_done - mine) < 0) pthread_cond_wait(&flushed, &lock);
    pthread_mutex_unlock(&lock);
    return CUPTI_SUCCESS;
}

CUptiResult cuptiActivityGetNumDroppedRecords(CUcontext ctx, uint32_t stream, size_t *n) {
    (void)ctx;
    (void)stream;
    pthread_mutex_lock(&lock);
    *n = dropped;
    dropped = 0;
    pthread_mutex_unlock(&lock);
    return CUPTI_SUCCESS;
}

static size_t record_size(const CUpti_Activity *r) {
    switch (r->kind) {
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
    case CUPTI_ACTIVITY_KIND_KERNEL:
        return sizeof(KERNEL);
    case CUPTI_ACTIVITY_KIND_MEMCPY:
        return sizeof(MEMCPY);
    case CUPTI_ACTIVITY_KIND_SYNCHRONIZATION:
        return sizeof(SYNC);
    case CUPTI_ACTIVITY_KIND_DRIVER:
    case CUPTI_ACTIVITY_KIND_RUNTIME:
        return sizeof(CUpti_ActivityAPI);
    default:
        return 0;
    }
}

CUptiResult cuptiActivityGetNextRecord(uint8_t *buffer, size_t valid, CUpti_Activity **record) {
    size_t at = 0;
    if (*record) {
        size_t size = record_size(*record);
        if (!size) return CUPTI_ERROR_INVALID_KIND;
        at = (size_t)((uint8_t *)*record - buffer) + size;
    }
    if (at >= valid) return CUPTI_ERROR_MAX_LIMIT_REACHED;
    CUpti_Activity *r = (CUpti_Activity *)(buffer + at);
    size_t size = record_size(r);
    if (!size || at + size > valid) return CUPTI_ERROR_INVALID_KIND;
    *record = r;
    return CUPTI_SUCCESS;
}

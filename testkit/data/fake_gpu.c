/*
 * Test fixture, not a GPU: the simulated device (see fake_gpu.h).
 *
 * Each stream runs its work back to back from the moment it is launched:
 * a kernel starts at the later of its launch and the end of the stream's
 * previous work, and lasts what the caller chose (fake_gpu_next). A
 * synchronizing call blocks until the queue it waits on has drained; a
 * device-to-host copy queues behind every stream (the legacy default
 * stream) and blocks until it is done. So
 * the device is idle exactly when the host was late to launch, and never
 * otherwise. The observer (the CUPTI stand-in) hears of every piece of
 * work and every API call.
 */
#define _GNU_SOURCE
#include "fake_gpu.h"

#include <errno.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define STREAMS 64

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long long busy_until[STREAMS];
static unsigned correlation, graphs;
static const struct fake_gpu_observer *observer;
/* The truth: work queued, and the union of its spans (work is queued in
 * start order per stream; across streams, `covered_until` merges). */
static unsigned long long n_kernels, n_copies, busy_ns, first_ns, covered_until, latency_sum,
    n_idle_gaps;

static __thread unsigned next_stream, next_graph_kernels;
static __thread unsigned long long next_duration_ns, next_copy_bytes;
static __thread const char *next_name;

unsigned long long fake_gpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

/* Blocks until `t`: asleep until shortly before, then spinning, as CUDA's
 * default synchronization spins, so the caller resumes when the device is
 * done rather than a timer wake-up later (which would show as idle time
 * caused by the sync). */
#define SPIN_NS 100000ULL
static void sleep_until(unsigned long long t) {
    if (t > SPIN_NS) {
        unsigned long long wake = t - SPIN_NS;
        struct timespec ts = {(time_t)(wake / 1000000000ULL), (long)(wake % 1000000000ULL)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
        }
    }
    while (fake_gpu_now() < t) {
    }
}

void fake_gpu_next(unsigned stream, unsigned long long duration_ns, const char *name,
                   unsigned graph_kernels) {
    next_stream = stream % STREAMS;
    next_duration_ns = duration_ns;
    next_name = name;
    next_graph_kernels = graph_kernels;
}

void fake_gpu_next_copy(unsigned long long bytes) { next_copy_bytes = bytes; }

void fake_gpu_observe(const struct fake_gpu_observer *o) {
    pthread_mutex_lock(&lock);
    __atomic_store_n(&observer, o, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&lock);
}

/* The process's and the calling thread's ids, asked of the kernel once
 * (system calls on every launch would be a cost the real driver does not
 * have); a fork's child asks again. */
static unsigned cached_pid;
static __thread unsigned cached_tid;
static void forked_child(void) {
    cached_pid = 0;
    cached_tid = 0;
}
__attribute__((constructor)) static void watch_forks(void) {
    pthread_atfork(NULL, NULL, forked_child);
}
static unsigned my_tid(void) {
    if (!cached_pid) cached_pid = (unsigned)getpid();
    if (!cached_tid) cached_tid = (unsigned)syscall(SYS_gettid);
    return cached_tid;
}

static void api_returned(int driver, unsigned cbid, unsigned corr, unsigned long long start) {
    unsigned tid = my_tid();
    struct fake_gpu_api a = {driver, cbid, corr, start, fake_gpu_now(), cached_pid, tid,
                             (unsigned long long)pthread_self()};
    pthread_mutex_lock(&lock);
    const struct fake_gpu_observer *o = observer;
    pthread_mutex_unlock(&lock);
    if (o && o->api) o->api(&a);
}

/* Adds [start, end) to the busy union. Work arrives in launch order and
 * each stream's starts are increasing; with one stream (what the tests
 * check exactly) the union is exact. Called with the lock held. */
static void cover(unsigned long long start, unsigned long long end) {
    if (!first_ns || start < first_ns) first_ns = start;
    if (end <= covered_until) return;
    if (covered_until && start > covered_until) n_idle_gaps++;
    busy_ns += end - (start > covered_until ? start : covered_until);
    covered_until = end;
}

unsigned long long fake_gpu_idle_gaps(void) {
    pthread_mutex_lock(&lock);
    unsigned long long gaps = n_idle_gaps;
    pthread_mutex_unlock(&lock);
    return gaps;
}

void fake_gpu_totals(unsigned long long *kernels, unsigned long long *copies,
                     unsigned long long *busy, unsigned long long *first,
                     unsigned long long *last, unsigned long long *latency) {
    pthread_mutex_lock(&lock);
    *kernels = n_kernels;
    *copies = n_copies;
    *busy = busy_ns;
    *first = first_ns;
    *last = covered_until;
    *latency = latency_sum;
    pthread_mutex_unlock(&lock);
}

/* Queues `n` kernels (a graph's when `graph`), each starting when the
 * stream is free; the observer hears of each. Called with the lock held. */
static void queue_kernels(unsigned long long at, unsigned corr, unsigned n, unsigned graph_id) {
    unsigned s = next_stream;
    for (unsigned k = 0; k < n; k++) {
        unsigned long long start = at > busy_until[s] ? at : busy_until[s];
        unsigned long long end = start + next_duration_ns;
        busy_until[s] = end;
        if (k == 0) latency_sum += start - at;
        n_kernels++;
        cover(start, end);
        struct fake_gpu_work w = {FAKE_GPU_KERNEL, s, corr, start, end, 0,
                                  next_name ? next_name : "fake_kernel", graph_id, 0};
        if (observer && observer->work) observer->work(&w);
    }
}

unsigned fake_gpu_launch(int driver, unsigned cbid, int graph) {
    /* Nothing scripted, nobody listening: a launch costs what it did
     * before the device existed (the probe overhead benchmark's floor). */
    if (!next_duration_ns && !__atomic_load_n(&observer, __ATOMIC_ACQUIRE)) return 0;
    unsigned long long start = fake_gpu_now();
    pthread_mutex_lock(&lock);
    unsigned corr = ++correlation;
    if (next_duration_ns > 0) {
        unsigned n = graph ? (next_graph_kernels ? next_graph_kernels : 1) : 1;
        queue_kernels(start, corr, n, graph ? ++graphs : 0);
    }
    pthread_mutex_unlock(&lock);
    api_returned(driver, cbid, corr, start);
    return corr;
}

void fake_gpu_sync(int driver, unsigned cbid, int all, unsigned long long min_ns) {
    unsigned long long start = fake_gpu_now(), until = start + min_ns;
    unsigned stream = next_stream;
    pthread_mutex_lock(&lock);
    unsigned corr = ++correlation;
    for (unsigned s = 0; s < STREAMS; s++) {
        if ((all || s == stream) && busy_until[s] > until) until = busy_until[s];
    }
    pthread_mutex_unlock(&lock);
    sleep_until(until);
    struct fake_gpu_work w = {FAKE_GPU_SYNC, all ? 0 : stream, corr, start, fake_gpu_now(), 0,
                              NULL, 0, all};
    pthread_mutex_lock(&lock);
    if (observer && observer->work) observer->work(&w);
    pthread_mutex_unlock(&lock);
    api_returned(driver, cbid, corr, start);
}

void fake_gpu_copy_dtoh(int driver, unsigned cbid, unsigned long long min_ns) {
    unsigned long long start = fake_gpu_now();
    pthread_mutex_lock(&lock);
    unsigned corr = ++correlation;
    unsigned long long from = start;
    for (unsigned s = 0; s < STREAMS; s++) from = busy_until[s] > from ? busy_until[s] : from;
    unsigned long long end = from + FAKE_GPU_COPY_LATENCY_NS +
                             next_copy_bytes * 1000000000ULL / FAKE_GPU_COPY_BYTES_PER_S;
    busy_until[0] = end;
    n_copies++;
    cover(from, end);
    struct fake_gpu_work w = {FAKE_GPU_COPY, 0, corr, from, end, next_copy_bytes, NULL, 0, 0};
    if (observer && observer->work) observer->work(&w);
    pthread_mutex_unlock(&lock);
    sleep_until(end > start + min_ns ? end : start + min_ns);
    api_returned(driver, cbid, corr, start);
}

/*
 * Checks the CUPTI stand-in against what the injection library relies on,
 * with known device work: callbacks on a thread of their own, records
 * written once their work ends (out of order across streams), flush and
 * forced flush, the clock offset, back-to-back kernels, correlation ids,
 * graph ids, drops. Prints "ok" and exits 0, else says what failed.
 * Run with GAPSCOPE_FAKE_CUPTI_DECLINE=1 it checks the drop path instead.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cupti_activity.h>
#include <cupti_version.h>

#include "fake_gpu.h"

#define MS 1000000ULL
#define CHECK(c, ...) do { if (!(c)) { printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); exit(1); } } while (0)

static pthread_t caller;
static int other_thread = 1, completions;
static KERNEL kernels[64];
static CUpti_ActivityAPI apis[64];
static int nk, na, nother;

static void CUPTIAPI request(uint8_t **b, size_t *size, size_t *max) {
    *size = 64 * 1024;
    *b = aligned_alloc(8, *size);
    *max = 0;
}

static void CUPTIAPI complete(CUcontext ctx, uint32_t stream, uint8_t *b, size_t size, size_t valid) {
    (void)size;
    completions++;
    if (pthread_equal(pthread_self(), caller)) other_thread = 0;
    CHECK(ctx == NULL && stream == 0, "completion context %p stream %u", (void *)ctx, stream);
    CUpti_Activity *r = NULL;
    CUptiResult st;
    while ((st = cuptiActivityGetNextRecord(b, valid, &r)) == CUPTI_SUCCESS) {
        if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) kernels[nk++] = *(KERNEL *)r;
        else if (r->kind == CUPTI_ACTIVITY_KIND_DRIVER) apis[na++] = *(CUpti_ActivityAPI *)r;
        else nother++;
    }
    CHECK(st == CUPTI_ERROR_MAX_LIMIT_REACHED, "buffer ends with %d", st);
    free(b);
}

int main(void) {
    caller = pthread_self();
    uint32_t v;
    cuptiGetVersion(&v);
    CHECK(v == CUPTI_API_VERSION, "version %u", v);
    CHECK(cuptiActivityRegisterCallbacks(request, complete) == CUPTI_SUCCESS, "register");
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER);
    uint64_t ts;
    cuptiGetTimestamp(&ts);
    long long offset = (long long)ts - (long long)fake_gpu_now();
    CHECK(offset > 999000 * (long long)MS && offset < 1001000 * (long long)MS, "clock offset %lld ns", offset);

    if (getenv("GAPSCOPE_FAKE_CUPTI_DECLINE")) {
        /* The first buffer is withheld: the record that asked for it is
         * dropped and counted, once; the next asks again. */
        fake_gpu_next(1, 1 * MS, "k", 0);
        for (int i = 0; i < 3; i++) fake_gpu_launch(1, 307, 0);
        usleep(5000);
        cuptiActivityFlushAll(0);
        size_t dropped = 0;
        cuptiActivityGetNumDroppedRecords(NULL, 0, &dropped);
        CHECK(dropped == 1, "dropped %zu, not the one record", dropped);
        cuptiActivityGetNumDroppedRecords(NULL, 0, &dropped);
        CHECK(dropped == 0, "the count resets on read: %zu", dropped);
        CHECK(nk + na == 5, "delivered %d + %d of the other 5 records", nk, na);
        printf("ok\n");
        return 0;
    }

    /* Three 100 ms kernels on stream 1, launched at once: back to back (long
     * enough that the flush right after surely comes before they end). */
    fake_gpu_next(1, 100 * MS, "gemm_k", 0);
    unsigned corr[3];
    for (int i = 0; i < 3; i++) corr[i] = fake_gpu_launch(1, 307, 0);
    cuptiActivityFlushAll(0);
    CHECK(na == 3 && nk == 0, "before the kernels end: %d API, %d kernel records", na, nk);
    usleep(320000);
    cuptiActivityFlushAll(0);
    CHECK(nk == 3, "after they end: %d kernel records", nk);
    CHECK(other_thread, "a buffer was completed on the caller's thread");
    for (int i = 0; i < 3; i++) {
        CHECK(kernels[i].correlationId == corr[i] && apis[i].correlationId == corr[i],
              "correlation %u: kernel %u, api %u", corr[i], kernels[i].correlationId, apis[i].correlationId);
        CHECK(kernels[i].end - kernels[i].start == 100 * MS, "kernel %d lasted %llu", i,
              (unsigned long long)(kernels[i].end - kernels[i].start));
        CHECK(apis[i].threadId == (uint32_t)pthread_self(), "api thread %u", apis[i].threadId);
    }
    CHECK(kernels[1].start == kernels[0].end && kernels[2].start == kernels[1].end, "not back to back");
    CHECK(kernels[0].start == apis[0].start,
          "on an idle stream the first kernel starts %lld ns after its launch, not at it",
          (long long)kernels[0].start - (long long)apis[0].start);

    /* A long kernel on stream 2, then a short one on stream 3: the short
     * one's record comes first. */
    nk = 0;
    fake_gpu_next(2, 20 * MS, "long_k", 0);
    fake_gpu_launch(1, 307, 0);
    fake_gpu_next(3, 2 * MS, "short_k", 0);
    fake_gpu_launch(1, 307, 0);
    for (int i = 0; i < 30 && nk < 2; i++) {
        usleep(2000);
        cuptiActivityFlushAll(0);
    }
    CHECK(nk == 2 && !strcmp(kernels[0].name, "short_k") && !strcmp(kernels[1].name, "long_k"),
          "order %s, %s", nk > 0 ? kernels[0].name : "-", nk > 1 ? kernels[1].name : "-");

    /* A stream sync waits for the stream's queue. */
    fake_gpu_next(4, 30 * MS, "k", 0);
    fake_gpu_launch(1, 307, 0);
    unsigned long long t0 = fake_gpu_now();
    fake_gpu_sync(1, 126, 0, 0);
    unsigned long long waited = fake_gpu_now() - t0;
    CHECK(waited >= 29 * MS, "sync waited %llu ns for a 30 ms kernel", waited);
    cuptiActivityFlushAll(0);

    /* A graph launch: its kernels carry one graph id, the launch's correlation. */
    nk = 0;
    fake_gpu_next(5, 1 * MS, "graph_k", 4);
    unsigned g = fake_gpu_launch(1, 514, 1);
    usleep(10000);
    cuptiActivityFlushAll(0);
    CHECK(nk == 4, "graph kernels %d", nk);
    for (int i = 0; i < 4; i++)
        CHECK(kernels[i].graphId != 0 && kernels[i].graphId == kernels[0].graphId &&
                  kernels[i].correlationId == g, "graph kernel %d: graph %u corr %u", i,
              kernels[i].graphId, kernels[i].correlationId);

    /* Forced: a kernel still running comes with no times. */
    nk = 0;
    fake_gpu_next(6, 500 * MS, "running_k", 0);
    fake_gpu_launch(1, 307, 0);
    cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    CHECK(nk == 1 && kernels[0].start == 0 && kernels[0].end == 0, "forced: %d records, start %llu",
          nk, nk ? (unsigned long long)kernels[0].start : 0ULL);
    size_t dropped = 1;
    cuptiActivityGetNumDroppedRecords(NULL, 0, &dropped);
    CHECK(dropped == 0, "dropped %zu", dropped);
    printf("ok\n");
    return 0;
}

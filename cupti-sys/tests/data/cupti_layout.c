/*
 * Prints the offset and size of every CUPTI activity-record field
 * gapscope-cupti-sys reads, compiled against a CUPTI release's own
 * headers. tests/layout.rs builds it once per release with the struct
 * names that release writes:
 *   -DKERNEL=CUpti_ActivityKernel9 -DMEMCPY=... -DMEMSET=... -DSYNC=... -DOVERHEAD=...
 * Each line: NAME.field offset size
 */
#include <stddef.h>
#include <stdio.h>

#include <cupti_activity.h>
#include <cupti_version.h>

#if !defined(KERNEL) || !defined(MEMCPY) || !defined(MEMSET) || !defined(SYNC) || !defined(OVERHEAD)
#error "define KERNEL, MEMCPY, MEMSET, SYNC and OVERHEAD as this release's struct names"
#endif
#define API CUpti_ActivityAPI

#define F(T, f) printf("%s.%s %zu %zu\n", #T, #f, offsetof(T, f), sizeof(((T *)0)->f))

int main(void) {
    printf("api_version %d\n", CUPTI_API_VERSION);
    F(KERNEL, kind); F(KERNEL, start); F(KERNEL, end); F(KERNEL, deviceId);
    F(KERNEL, contextId); F(KERNEL, streamId); F(KERNEL, correlationId); F(KERNEL, name);
    F(KERNEL, graphId);
    F(MEMCPY, kind); F(MEMCPY, copyKind); F(MEMCPY, bytes); F(MEMCPY, start); F(MEMCPY, end);
    F(MEMCPY, deviceId); F(MEMCPY, streamId); F(MEMCPY, correlationId);
    F(MEMSET, kind); F(MEMSET, bytes); F(MEMSET, start); F(MEMSET, end);
    F(MEMSET, deviceId); F(MEMSET, streamId); F(MEMSET, correlationId);
    F(API, kind); F(API, cbid); F(API, start); F(API, end);
    F(API, processId); F(API, threadId); F(API, correlationId);
    F(SYNC, kind); F(SYNC, type); F(SYNC, start); F(SYNC, end);
    F(SYNC, correlationId); F(SYNC, contextId); F(SYNC, streamId);
    F(OVERHEAD, kind); F(OVERHEAD, overheadKind); F(OVERHEAD, start); F(OVERHEAD, end);
    printf("sizes %zu %zu %zu %zu %zu %zu\n", sizeof(KERNEL), sizeof(MEMCPY), sizeof(MEMSET),
           sizeof(API), sizeof(SYNC), sizeof(OVERHEAD));
    return 0;
}

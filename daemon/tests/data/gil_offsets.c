/* Prints where the GIL sits for the CPython whose internal headers this is
 * compiled against; daemon/tests/python_offsets.rs compares the output
 * with daemon/src/python/offsets.rs. The GIL's holder: `last_holder`, and
 * where a thread state keeps its thread's id. */
#define Py_BUILD_CORE 1
#include <stddef.h>
#include <stdio.h>
#include "Python.h"
#include "internal/pycore_runtime.h"
#if PY_VERSION_HEX >= 0x030C0000
#include "internal/pycore_interp.h"
#endif
#include "internal/pycore_gil.h"

int main(void) {
#if PY_VERSION_HEX >= 0x030C0000
    printf("interpreters_main=%zu\n", offsetof(_PyRuntimeState, interpreters.main));
    printf("interp_ceval_gil=%zu\n", offsetof(PyInterpreterState, ceval.gil));
#else
    printf("runtime_ceval_gil=%zu\n", offsetof(_PyRuntimeState, ceval.gil));
#endif
    printf("gil_size=%zu\n", sizeof(struct _gil_runtime_state));
    printf("locked=%zu\n", offsetof(struct _gil_runtime_state, locked));
    printf("switch_number=%zu\n", offsetof(struct _gil_runtime_state, switch_number));
    printf("mutex=%zu\n", offsetof(struct _gil_runtime_state, mutex));
    printf("switch_mutex=%zu\n", offsetof(struct _gil_runtime_state, switch_mutex));
    printf("mutex_size=%zu\n", sizeof(pthread_mutex_t));
    printf("last_holder=%zu\n", offsetof(struct _gil_runtime_state, last_holder));
#if PY_VERSION_HEX >= 0x030B0000
    printf("tstate_native_thread_id=%zu\n", offsetof(PyThreadState, native_thread_id));
#else
    printf("tstate_thread_id=%zu\n", offsetof(PyThreadState, thread_id));
#endif
    return 0;
}

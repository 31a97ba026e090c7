/*
 * A stand-in for libnvidia-ml, not NVML: the entry points gapscoped calls
 * through nvml-wrapper, compiled against the real nvml.h (CUDA 12.9's, from
 * NVIDIA's nvidia-nvml-dev wheel), so every struct, enum and return code is
 * the driver's by construction. What each GPU reports comes from a scenario
 * file (JSON) named by $GAPSCOPE_FAKE_NVML_SCENARIO, read at nvmlInit:
 *
 *   { "epoch_ns": <CLOCK_MONOTONIC ns the spans count from>,
 *     "driver_version": "575.57.08",
 *     "gpus": [ { "uuid": "GPU-…", "name": "NVIDIA H100 80GB HBM3",
 *                 "memory_total": <bytes>, "power_limit_w": 700,
 *                 "lost_after_ms": <ms>,            (optional)
 *                 "unsupported": ["pcie", …],      (optional)
 *                 "idle": { <state> },
 *                 "spans": [ { "from_ms": 0, "to_ms": 1500, <state> }, … ] } ] }
 *
 * A state: utilization and memory_utilization (percent), power_w,
 * energy_w (the rate the energy counter grows at; power_w unless given,
 * 0 in "idle" unless given), memory_used (bytes), sm_clock_mhz,
 * memory_clock_mhz, temperature_c, pcie_tx_kbps, pcie_rx_kbps, throttle
 * (NVML's reason bits), processes ([{"pid": n, "memory": bytes}]; "pid_file":
 * PATH instead of "pid" reads the pid from that file at every query, for
 * a process started after the scenario was written; while the file is
 * missing the entry is left out). A span
 * covers [from_ms, to_ms) after the epoch and inherits what it leaves out
 * from "idle". The energy counter is the exact integral of energy_w: mJ =
 * W × ms over every span and idle stretch since the epoch.
 *
 * Every other function nvml.h declares answers NVML_ERROR_NOT_SUPPORTED
 * (stubs the testkit generates from the header).
 *
 * Like the driver: calls before nvmlInit return NVML_ERROR_UNINITIALIZED,
 * a field named in "unsupported" (utilization, memory, power, power_limit,
 * energy, clocks, temperature, pcie, throttle, processes) returns
 * NVML_ERROR_NOT_SUPPORTED, every device call (and the handle) after
 * lost_after_ms returns
 * NVML_ERROR_GPU_IS_LOST, a short buffer NVML_ERROR_INSUFFICIENT_SIZE, and
 * a struct of the wrong version NVML_ERROR_ARGUMENT_VERSION_MISMATCH.
 */
#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include <nvml.h>

#include <ctype.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- a small JSON reader (objects, arrays, numbers, strings, literals) -- */

enum kind { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct json {
    enum kind kind;
    double num;
    char *str;
    /* arrays and objects: items (and keys, for objects) */
    struct json **items;
    char **keys;
    int len;
};

struct reader {
    const char *p;
    const char *error;
};

static void skip_space(struct reader *r) {
    while (isspace((unsigned char)*r->p)) r->p++;
}

static struct json *parse_value(struct reader *r);

static char *parse_string(struct reader *r) {
    if (*r->p != '"') {
        r->error = "expected a string";
        return NULL;
    }
    r->p++;
    const char *start = r->p;
    while (*r->p && *r->p != '"') {
        if (*r->p == '\\') {
            r->error = "escapes in strings are not supported";
            return NULL;
        }
        r->p++;
    }
    if (*r->p != '"') {
        r->error = "unterminated string";
        return NULL;
    }
    char *s = strndup(start, (size_t)(r->p - start));
    r->p++;
    return s;
}

static struct json *node(enum kind kind) {
    struct json *j = calloc(1, sizeof *j);
    j->kind = kind;
    return j;
}

static void push(struct json *j, char *key, struct json *item) {
    j->items = realloc(j->items, sizeof *j->items * (size_t)(j->len + 1));
    j->keys = realloc(j->keys, sizeof *j->keys * (size_t)(j->len + 1));
    j->items[j->len] = item;
    j->keys[j->len] = key;
    j->len++;
}

static struct json *parse_container(struct reader *r, int object) {
    struct json *j = node(object ? J_OBJ : J_ARR);
    char close = object ? '}' : ']';
    r->p++;
    skip_space(r);
    if (*r->p == close) {
        r->p++;
        return j;
    }
    for (;;) {
        char *key = NULL;
        skip_space(r);
        if (object) {
            key = parse_string(r);
            if (!key) return NULL;
            skip_space(r);
            if (*r->p != ':') {
                r->error = "expected ':' after a key";
                return NULL;
            }
            r->p++;
        }
        struct json *item = parse_value(r);
        if (!item) return NULL;
        push(j, key, item);
        skip_space(r);
        if (*r->p == ',') {
            r->p++;
            continue;
        }
        if (*r->p == close) {
            r->p++;
            return j;
        }
        r->error = object ? "expected ',' or '}'" : "expected ',' or ']'";
        return NULL;
    }
}

static struct json *parse_value(struct reader *r) {
    skip_space(r);
    if (*r->p == '{') return parse_container(r, 1);
    if (*r->p == '[') return parse_container(r, 0);
    if (*r->p == '"') {
        struct json *j = node(J_STR);
        j->str = parse_string(r);
        return j->str ? j : NULL;
    }
    if (!strncmp(r->p, "null", 4)) {
        r->p += 4;
        return node(J_NULL);
    }
    if (!strncmp(r->p, "true", 4) || !strncmp(r->p, "false", 5)) {
        struct json *j = node(J_BOOL);
        j->num = *r->p == 't';
        r->p += *r->p == 't' ? 4 : 5;
        return j;
    }
    char *end;
    double v = strtod(r->p, &end);
    if (end == r->p) {
        r->error = "expected a value";
        return NULL;
    }
    r->p = end;
    struct json *j = node(J_NUM);
    j->num = v;
    return j;
}

static struct json *get(const struct json *obj, const char *key) {
    if (!obj || obj->kind != J_OBJ) return NULL;
    for (int i = 0; i < obj->len; i++)
        if (!strcmp(obj->keys[i], key)) return obj->items[i];
    return NULL;
}

/* ---- the scenario ------------------------------------------------------- */

#define MAX_GPUS 16
#define MAX_SPANS 64
#define MAX_PROCS 32

struct proc {
    unsigned int pid;
    char pid_file[256]; /* when set, the pid is read from here at each query */
    unsigned long long memory; /* NVML_VALUE_NOT_AVAILABLE when not given */
};

struct state {
    double utilization, memory_utilization, power_w, energy_w;
    double memory_used, sm_clock_mhz, memory_clock_mhz, temperature_c;
    double pcie_tx_kbps, pcie_rx_kbps, throttle;
    struct proc procs[MAX_PROCS];
    int nprocs;
};

struct span {
    double from_ms, to_ms;
    struct state s;
};

struct nvmlDevice_st {
    unsigned int index;
    char uuid[96], name[96];
    unsigned long long memory_total;
    double power_limit_w;
    double lost_after_ms; /* < 0: never */
    char unsupported[256];
    struct state idle;
    struct span spans[MAX_SPANS];
    int nspans;
};

static struct nvmlDevice_st gpus[MAX_GPUS];
static unsigned int ngpus;
static uint64_t epoch_ns;
static char driver_version[80] = "575.57.08";
static int initialized;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static double num_or(const struct json *obj, const char *key, double fallback) {
    const struct json *v = get(obj, key);
    return v && v->kind == J_NUM ? v->num : fallback;
}

/* A state from `obj`, missing fields taken from `base`. */
static struct state read_state(const struct json *obj, const struct state *base, int idle) {
    struct state s = *base;
    s.utilization = num_or(obj, "utilization", base->utilization);
    s.memory_utilization = num_or(obj, "memory_utilization", base->memory_utilization);
    s.power_w = num_or(obj, "power_w", base->power_w);
    s.energy_w = num_or(obj, "energy_w", idle ? base->energy_w : s.power_w);
    s.memory_used = num_or(obj, "memory_used", base->memory_used);
    s.sm_clock_mhz = num_or(obj, "sm_clock_mhz", base->sm_clock_mhz);
    s.memory_clock_mhz = num_or(obj, "memory_clock_mhz", base->memory_clock_mhz);
    s.temperature_c = num_or(obj, "temperature_c", base->temperature_c);
    s.pcie_tx_kbps = num_or(obj, "pcie_tx_kbps", base->pcie_tx_kbps);
    s.pcie_rx_kbps = num_or(obj, "pcie_rx_kbps", base->pcie_rx_kbps);
    s.throttle = num_or(obj, "throttle", base->throttle);
    const struct json *procs = get(obj, "processes");
    if (procs && procs->kind == J_ARR) {
        s.nprocs = 0;
        for (int i = 0; i < procs->len && i < MAX_PROCS; i++) {
            s.procs[i].pid = (unsigned int)num_or(procs->items[i], "pid", 0);
            const struct json *pf = get(procs->items[i], "pid_file");
            snprintf(s.procs[i].pid_file, sizeof s.procs[i].pid_file, "%s",
                     pf && pf->kind == J_STR ? pf->str : "");
            const struct json *m = get(procs->items[i], "memory");
            s.procs[i].memory = m && m->kind == J_NUM ? (unsigned long long)m->num
                                                      : (unsigned long long)NVML_VALUE_NOT_AVAILABLE;
            s.nprocs++;
        }
    }
    return s;
}

static int load_scenario(void) {
    const char *path = getenv("GAPSCOPE_FAKE_NVML_SCENARIO");
    if (!path) {
        fprintf(stderr, "fake NVML: GAPSCOPE_FAKE_NVML_SCENARIO names no scenario file; "
                        "this library stands in for libnvidia-ml in tests only\n");
        return 0;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "fake NVML: cannot open scenario %s\n", path);
        return 0;
    }
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    struct reader r = {text, NULL};
    struct json *root = parse_value(&r);
    if (!root || root->kind != J_OBJ) {
        fprintf(stderr, "fake NVML: scenario %s: %s near byte %ld\n", path,
                r.error ? r.error : "not a JSON object", (long)(r.p - text));
        return 0;
    }
    epoch_ns = (uint64_t)num_or(root, "epoch_ns", 0);
    const struct json *dv = get(root, "driver_version");
    if (dv && dv->kind == J_STR) snprintf(driver_version, sizeof driver_version, "%s", dv->str);
    const struct json *list = get(root, "gpus");
    ngpus = 0;
    for (int i = 0; list && list->kind == J_ARR && i < list->len && i < MAX_GPUS; i++) {
        const struct json *g = list->items[i];
        struct nvmlDevice_st *d = &gpus[ngpus];
        memset(d, 0, sizeof *d);
        d->index = ngpus;
        const struct json *v = get(g, "uuid");
        snprintf(d->uuid, sizeof d->uuid, "%s", v && v->kind == J_STR ? v->str : "GPU-unknown");
        v = get(g, "name");
        snprintf(d->name, sizeof d->name, "%s", v && v->kind == J_STR ? v->str : "NVIDIA stand-in");
        d->memory_total = (unsigned long long)num_or(g, "memory_total", 80e9);
        d->power_limit_w = num_or(g, "power_limit_w", 700);
        d->lost_after_ms = num_or(g, "lost_after_ms", -1);
        const struct json *u = get(g, "unsupported");
        for (int k = 0; u && u->kind == J_ARR && k < u->len; k++) {
            if (u->items[k]->kind != J_STR) continue;
            strncat(d->unsupported, " ", sizeof d->unsupported - strlen(d->unsupported) - 1);
            strncat(d->unsupported, u->items[k]->str,
                    sizeof d->unsupported - strlen(d->unsupported) - 1);
        }
        strncat(d->unsupported, " ", sizeof d->unsupported - strlen(d->unsupported) - 1);
        struct state zero = {0};
        d->idle = read_state(get(g, "idle"), &zero, 1);
        const struct json *spans = get(g, "spans");
        for (int k = 0; spans && spans->kind == J_ARR && k < spans->len && k < MAX_SPANS; k++) {
            const struct json *sp = spans->items[k];
            d->spans[k].from_ms = num_or(sp, "from_ms", 0);
            d->spans[k].to_ms = num_or(sp, "to_ms", 0);
            d->spans[k].s = read_state(sp, &d->idle, 0);
            d->nspans++;
        }
        ngpus++;
    }
    return 1;
}

/* ---- time --------------------------------------------------------------- */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Milliseconds since the epoch (negative before it). */
static double now_ms(void) {
    return ((double)now_ns() - (double)epoch_ns) / 1e6;
}

static const struct state *state_at(const struct nvmlDevice_st *d, double t_ms) {
    for (int i = 0; i < d->nspans; i++)
        if (t_ms >= d->spans[i].from_ms && t_ms < d->spans[i].to_ms) return &d->spans[i].s;
    return &d->idle;
}

/* mJ since the epoch: energy_w × ms, span by span, idle in between. */
static unsigned long long energy_mj(const struct nvmlDevice_st *d) {
    int64_t t_ns = (int64_t)now_ns() - (int64_t)epoch_ns;
    if (t_ns <= 0) return 0;
    double mj = d->idle.energy_w * (double)t_ns / 1e6;
    for (int i = 0; i < d->nspans; i++) {
        double from = d->spans[i].from_ms * 1e6, to = d->spans[i].to_ms * 1e6;
        if (to > (double)t_ns) to = (double)t_ns;
        if (to <= from) continue;
        mj += (d->spans[i].s.energy_w - d->idle.energy_w) * (to - from) / 1e6;
    }
    return (unsigned long long)(mj + 1e-6);
}

/* ---- entry points ------------------------------------------------------- */

nvmlReturn_t nvmlInit_v2(void) {
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = NVML_SUCCESS;
    if (initialized == 0 && !load_scenario()) rc = NVML_ERROR_DRIVER_NOT_LOADED;
    if (rc == NVML_SUCCESS) initialized++;
    pthread_mutex_unlock(&lock);
    return rc;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return nvmlInit_v2();
}

nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = initialized ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
    if (initialized) initialized--;
    pthread_mutex_unlock(&lock);
    return rc;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t copy_string(char *out, unsigned int length, const char *s) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, s, strlen(s) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    return copy_string(version, length, driver_version);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = ngpus;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (index >= ngpus || !device) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpus[index].lost_after_ms >= 0 && now_ms() >= gpus[index].lost_after_ms)
        return NVML_ERROR_GPU_IS_LOST;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

/* The common checks of a device call reading `field`; fills *s. */
static nvmlReturn_t device_state(nvmlDevice_t d, const char *field, const void *out,
                                 const struct state **s) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (!d || d < gpus || d >= gpus + ngpus || !out) return NVML_ERROR_INVALID_ARGUMENT;
    double t = now_ms();
    if (d->lost_after_ms >= 0 && t >= d->lost_after_ms) return NVML_ERROR_GPU_IS_LOST;
    char word[64];
    snprintf(word, sizeof word, " %s ", field);
    if (strstr(d->unsupported, word)) return NVML_ERROR_NOT_SUPPORTED;
    *s = state_at(d, t);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length) {
    const struct state *s;
    nvmlReturn_t rc = device_state(d, "name", name, &s);
    return rc ? rc : copy_string(name, length, d->name);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length) {
    const struct state *s;
    nvmlReturn_t rc = device_state(d, "uuid", uuid, &s);
    return rc ? rc : copy_string(uuid, length, d->uuid);
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    const struct state *s;
    nvmlReturn_t rc = device_state(d, "utilization", u, &s);
    if (rc) return rc;
    u->gpu = (unsigned int)s->utilization;
    u->memory = (unsigned int)s->memory_utilization;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m) {
    const struct state *s;
    nvmlReturn_t rc = device_state(d, "memory", m, &s);
    if (rc) return rc;
    if (m->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    m->total = d->memory_total;
    m->reserved = 0;
    m->used = (unsigned long long)s->memory_used;
    m->free = m->total > m->used ? m->total - m->used : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    const struct state *s;
    nvmlReturn_t rc = device_state(d, "memory", m, &s);
    if (rc) return rc;
    m->total = d->memory_total;
    m->used = (unsigned long long)s->memory_used;
    m->free = m->total > m->used ? m->total - m->used : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *mw) {
    const struct state *s;
    nvmlReturn_t rc = device_state(d, "power", mw, &s);
    if (rc) return rc;
    *mw = (unsigned int)(s->power_w * 1000.0 + 0.5);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t d, unsigned int *mw) {
    const struct state *s;
    nvmlReturn_t rc = device_state(d, "power_limit", mw, &s);
    if (rc) return rc;
    *mw = (unsigned int)(d->power_limit_w * 1000.0 + 0.5);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t d, unsigned long long *mj) {
    const struct state *s;
    nvmlReturn_t rc = device_state(d, "energy", mj, &s);
    if (rc) return rc;
    *mj = energy_mj(d);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, nvmlClockType_t type, unsigned int *mhz) {
    const struct state *s;
    nvmlReturn_t rc = device_state(d, "clocks", mhz, &s);
    if (rc) return rc;
    switch (type) {
    case NVML_CLOCK_SM:
    case NVML_CLOCK_GRAPHICS: *mhz = (unsigned int)s->sm_clock_mhz; return NVML_SUCCESS;
    case NVML_CLOCK_MEM: *mhz = (unsigned int)s->memory_clock_mhz; return NVML_SUCCESS;
    default: return NVML_ERROR_NOT_SUPPORTED;
    }
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, nvmlTemperatureSensors_t sensor,
                                      unsigned int *c) {
    const struct state *s;
    nvmlReturn_t rc = device_state(d, "temperature", c, &s);
    if (rc) return rc;
    if (sensor != NVML_TEMPERATURE_GPU) return NVML_ERROR_INVALID_ARGUMENT;
    *c = (unsigned int)s->temperature_c;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t d, nvmlPcieUtilCounter_t counter,
                                         unsigned int *kbps) {
    const struct state *s;
    nvmlReturn_t rc = device_state(d, "pcie", kbps, &s);
    if (rc) return rc;
    switch (counter) {
    case NVML_PCIE_UTIL_TX_BYTES: *kbps = (unsigned int)s->pcie_tx_kbps; return NVML_SUCCESS;
    case NVML_PCIE_UTIL_RX_BYTES: *kbps = (unsigned int)s->pcie_rx_kbps; return NVML_SUCCESS;
    default: return NVML_ERROR_INVALID_ARGUMENT;
    }
}

nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t d, unsigned long long *r) {
    const struct state *s;
    nvmlReturn_t rc = device_state(d, "throttle", r, &s);
    if (rc) return rc;
    *r = (unsigned long long)s->throttle;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t d, unsigned long long *r) {
    return nvmlDeviceGetCurrentClocksEventReasons(d, r);
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    const struct state *s;
    nvmlReturn_t rc = device_state(d, "processes", count, &s);
    if (rc) return rc;
    struct proc now[MAX_PROCS];
    unsigned int n = 0;
    for (int i = 0; i < s->nprocs; i++) {
        now[n] = s->procs[i];
        if (now[n].pid_file[0]) {
            FILE *f = fopen(now[n].pid_file, "r");
            unsigned int pid = 0;
            int got = f && fscanf(f, "%u", &pid) == 1;
            if (f) fclose(f);
            if (!got || pid == 0) continue;
            now[n].pid = pid;
        }
        n++;
    }
    if (*count < n || (!infos && n > 0)) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned int i = 0; i < n; i++) {
        infos[i].pid = now[i].pid;
        infos[i].usedGpuMemory = now[i].memory;
        infos[i].gpuInstanceId = 0xFFFFFFFF;
        infos[i].computeInstanceId = 0xFFFFFFFF;
    }
    *count = n;
    return NVML_SUCCESS;
}

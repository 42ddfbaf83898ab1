/*
 * A small libnvidia-ml.so.1 for the tests of the nvml receiver.
 *
 * It implements the NVML calls the receiver makes (and the ones pynvml's init path
 * makes), with NVML's ABI: the same symbol names, argument lists, struct layouts and
 * return codes as nvml.h. What the "GPUs" report comes from a state file that the tests
 * write (path in $FAKE_NVML_STATE, format below); it is re-read whenever it changes
 * (the tests replace it atomically with rename), so a test drives the devices between
 * two ticks of the receiver.
 *
 * Build variants leave symbols out, so that pynvml meets a library that lacks them as
 * it would meet an old driver: -DFAKE_NO_PROCESS_UTILIZATION, -DFAKE_NO_RUNNING_V3,
 * -DFAKE_NO_ENERGY.
 *
 * State file, one directive a line (names run to the end of the line):
 *
 *   driver 580.159.04
 *   error nvmlInitWithFlags 9              an NVML return code for a call (global)
 *   gpu                                    starts the next device (index 0, 1, ...)
 *   name NVIDIA H100 80GB HBM3
 *   uuid GPU-8d3d9ed1-...
 *   power_mw 71000
 *   energy_mj 123456789
 *   mig 1                                  MIG mode enabled (current and pending)
 *   migdev <gi> <ci> <uuid> <name>         a MIG device of this GPU (slot order)
 *   proc <pid> <used_bytes> <gi> <ci>      a compute process in the running list
 *   util <pid> <timestamp_us> <sm> <mem> <enc> <dec>   a process utilisation sample
 *   util_pad <n>                           size queries report n more samples than exist
 *   error <function> <code>                that call on this device returns code
 *
 * fake_nvml_calls(name) tells how often a function was called (tests count energy reads).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_UNKNOWN 999

#define MAX_GPUS 16
#define MAX_MIG 8
#define MAX_PROCS 64
#define MAX_UTIL 512
#define MAX_ERRORS 16
#define NAME_LEN 96

/* nvml.h: nvmlProcessInfo_v2_t, also used by the _v3 call (pynvml: c_nvmlProcessInfo_v3_t). */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

/* nvml.h: nvmlProcessUtilizationSample_t (pynvml: c_nvmlProcessUtilizationSample_t). */
typedef struct {
    unsigned int pid;
    unsigned long long timeStamp; /* CPU timestamp in microseconds */
    unsigned int smUtil;
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} nvmlProcessUtilizationSample_t;

typedef struct {
    char function[64];
    int code;
} injected_error;

struct nvmlDevice_st;
typedef struct nvmlDevice_st *nvmlDevice_t;

/* A handle points at one of these: a GPU (mig_slot -1) or one of its MIG devices. */
struct nvmlDevice_st {
    int gpu;
    int mig_slot;
};

typedef struct {
    unsigned int gi, ci;
    char uuid[NAME_LEN];
    char name[NAME_LEN];
} mig_device;

typedef struct {
    char name[NAME_LEN];
    char uuid[NAME_LEN];
    unsigned int power_mw;
    unsigned long long energy_mj;
    unsigned int mig_mode;
    int n_mig;
    mig_device mig[MAX_MIG];
    int n_procs;
    nvmlProcessInfo_t procs[MAX_PROCS];
    int n_util;
    nvmlProcessUtilizationSample_t util[MAX_UTIL];
    unsigned int util_pad;
    int n_errors;
    injected_error errors[MAX_ERRORS];
} gpu_state;

static struct {
    char driver[80];
    int n_errors;
    injected_error errors[MAX_ERRORS];
    int n_gpus;
    gpu_state gpus[MAX_GPUS];
} state;

static struct nvmlDevice_st handles[MAX_GPUS];
static struct nvmlDevice_st mig_handles[MAX_GPUS][MAX_MIG];
static int initialised; /* nvmlInit reference count */
static struct stat loaded; /* the state file as last parsed */

#define MAX_COUNTED 64
static struct {
    char name[64];
    unsigned long calls;
} counted[MAX_COUNTED];

static void count_call(const char *name) {
    for (int i = 0; i < MAX_COUNTED; i++) {
        if (counted[i].name[0] == '\0') {
            snprintf(counted[i].name, sizeof counted[i].name, "%s", name);
        }
        if (strcmp(counted[i].name, name) == 0) {
            counted[i].calls++;
            return;
        }
    }
}

unsigned long fake_nvml_calls(const char *name) {
    for (int i = 0; i < MAX_COUNTED && counted[i].name[0] != '\0'; i++) {
        if (strcmp(counted[i].name, name) == 0) {
            return counted[i].calls;
        }
    }
    return 0;
}

static void rest_of_line(char *out, size_t size, const char *text) {
    snprintf(out, size, "%s", text);
    out[strcspn(out, "\r\n")] = '\0';
}

static void add_error(injected_error *errors, int *n, const char *args) {
    if (*n < MAX_ERRORS && sscanf(args, "%63s %d", errors[*n].function, &errors[*n].code) == 2) {
        (*n)++;
    }
}

static void parse_gpu_line(gpu_state *g, const char *key, const char *args) {
    if (strcmp(key, "name") == 0) {
        rest_of_line(g->name, sizeof g->name, args);
    } else if (strcmp(key, "uuid") == 0) {
        rest_of_line(g->uuid, sizeof g->uuid, args);
    } else if (strcmp(key, "power_mw") == 0) {
        g->power_mw = (unsigned int)strtoul(args, NULL, 10);
    } else if (strcmp(key, "energy_mj") == 0) {
        g->energy_mj = strtoull(args, NULL, 10);
    } else if (strcmp(key, "mig") == 0) {
        g->mig_mode = (unsigned int)strtoul(args, NULL, 10);
    } else if (strcmp(key, "migdev") == 0 && g->n_mig < MAX_MIG) {
        mig_device *m = &g->mig[g->n_mig];
        int used = 0;
        if (sscanf(args, "%u %u %95s %n", &m->gi, &m->ci, m->uuid, &used) >= 3) {
            rest_of_line(m->name, sizeof m->name, args + used);
            g->n_mig++;
        }
    } else if (strcmp(key, "proc") == 0 && g->n_procs < MAX_PROCS) {
        nvmlProcessInfo_t *p = &g->procs[g->n_procs];
        if (sscanf(args, "%u %llu %u %u", &p->pid, &p->usedGpuMemory, &p->gpuInstanceId,
                   &p->computeInstanceId) == 4) {
            g->n_procs++;
        }
    } else if (strcmp(key, "util") == 0 && g->n_util < MAX_UTIL) {
        nvmlProcessUtilizationSample_t *s = &g->util[g->n_util];
        if (sscanf(args, "%u %llu %u %u %u %u", &s->pid, &s->timeStamp, &s->smUtil, &s->memUtil,
                   &s->encUtil, &s->decUtil) == 6) {
            g->n_util++;
        }
    } else if (strcmp(key, "util_pad") == 0) {
        g->util_pad = (unsigned int)strtoul(args, NULL, 10);
    } else if (strcmp(key, "error") == 0) {
        add_error(g->errors, &g->n_errors, args);
    }
}

/* Re-read the state file if it changed since the last parse; 0 if it cannot be read. */
static int refresh(void) {
    const char *path = getenv("FAKE_NVML_STATE");
    struct stat now;
    if (path == NULL || stat(path, &now) != 0) {
        return 0;
    }
    if (now.st_ino == loaded.st_ino && now.st_mtim.tv_sec == loaded.st_mtim.tv_sec &&
        now.st_mtim.tv_nsec == loaded.st_mtim.tv_nsec && now.st_size == loaded.st_size) {
        return 1;
    }
    FILE *file = fopen(path, "r");
    if (file == NULL) {
        return 0;
    }
    memset(&state, 0, sizeof state);
    snprintf(state.driver, sizeof state.driver, "%s", "999.99.99");
    char line[512];
    gpu_state *g = NULL;
    while (fgets(line, sizeof line, file) != NULL) {
        char key[32] = "";
        int used = 0;
        if (sscanf(line, "%31s %n", key, &used) < 1) {
            continue;
        }
        const char *args = line + used;
        if (strcmp(key, "gpu") == 0) {
            g = state.n_gpus < MAX_GPUS ? &state.gpus[state.n_gpus++] : NULL;
        } else if (g != NULL) {
            parse_gpu_line(g, key, args);
        } else if (strcmp(key, "driver") == 0) {
            rest_of_line(state.driver, sizeof state.driver, args);
        } else if (strcmp(key, "error") == 0) {
            add_error(state.errors, &state.n_errors, args);
        }
    }
    fclose(file);
    loaded = now;
    return 1;
}

static int find_error(const injected_error *errors, int n, const char *function) {
    for (int i = 0; i < n; i++) {
        if (strcmp(errors[i].function, function) == 0) {
            return errors[i].code;
        }
    }
    return NVML_SUCCESS;
}

/* Common entry of a call: count it, refresh the state, apply an injected global error. */
static nvmlReturn_t enter(const char *function) {
    count_call(function);
    if (!refresh()) {
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    return find_error(state.errors, state.n_errors, function);
}

/* Common entry of a device call: also check the handle and the device's injected errors. */
static nvmlReturn_t enter_device(const char *function, nvmlDevice_t device, gpu_state **gpu) {
    nvmlReturn_t ret = enter(function);
    if (ret != NVML_SUCCESS) {
        return ret;
    }
    if (!initialised) {
        return NVML_ERROR_UNINITIALIZED;
    }
    if (device == NULL || device->gpu < 0 || device->gpu >= state.n_gpus) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *gpu = &state.gpus[device->gpu];
    return find_error((*gpu)->errors, (*gpu)->n_errors, function);
}

static nvmlReturn_t copy_string(char *out, unsigned int length, const char *value) {
    if (out == NULL || strlen(value) + 1 > length) {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    memcpy(out, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    nvmlReturn_t ret = enter("nvmlInitWithFlags");
    if (ret == NVML_SUCCESS) {
        initialised++;
    }
    return ret;
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    count_call("nvmlShutdown");
    if (!initialised) {
        return NVML_ERROR_UNINITIALIZED;
    }
    initialised--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    nvmlReturn_t ret = enter("nvmlSystemGetDriverVersion");
    if (ret != NVML_SUCCESS) {
        return ret;
    }
    if (!initialised) {
        return NVML_ERROR_UNINITIALIZED;
    }
    return copy_string(version, length, state.driver);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    nvmlReturn_t ret = enter("nvmlDeviceGetCount_v2");
    if (ret != NVML_SUCCESS) {
        return ret;
    }
    if (!initialised) {
        return NVML_ERROR_UNINITIALIZED;
    }
    *count = (unsigned int)state.n_gpus;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    nvmlReturn_t ret = enter("nvmlDeviceGetHandleByIndex_v2");
    if (ret != NVML_SUCCESS) {
        return ret;
    }
    if (!initialised) {
        return NVML_ERROR_UNINITIALIZED;
    }
    if (index >= (unsigned int)state.n_gpus || device == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    handles[index].gpu = (int)index;
    handles[index].mig_slot = -1;
    *device = &handles[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    gpu_state *g;
    nvmlReturn_t ret = enter_device("nvmlDeviceGetName", device, &g);
    if (ret != NVML_SUCCESS) {
        return ret;
    }
    const char *value = device->mig_slot < 0 ? g->name : g->mig[device->mig_slot].name;
    return copy_string(name, length, value);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    gpu_state *g;
    nvmlReturn_t ret = enter_device("nvmlDeviceGetUUID", device, &g);
    if (ret != NVML_SUCCESS) {
        return ret;
    }
    const char *value = device->mig_slot < 0 ? g->uuid : g->mig[device->mig_slot].uuid;
    return copy_string(uuid, length, value);
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    gpu_state *g;
    nvmlReturn_t ret = enter_device("nvmlDeviceGetPowerUsage", device, &g);
    if (ret != NVML_SUCCESS) {
        return ret;
    }
    if (device->mig_slot >= 0) {
        return NVML_ERROR_NOT_SUPPORTED; /* power is per physical GPU */
    }
    *power = g->power_mw;
    return NVML_SUCCESS;
}

#ifndef FAKE_NO_ENERGY
nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device,
                                                 unsigned long long *energy) {
    gpu_state *g;
    nvmlReturn_t ret = enter_device("nvmlDeviceGetTotalEnergyConsumption", device, &g);
    if (ret != NVML_SUCCESS) {
        return ret;
    }
    if (device->mig_slot >= 0) {
        return NVML_ERROR_NOT_SUPPORTED;
    }
    *energy = g->energy_mj;
    return NVML_SUCCESS;
}
#endif

/* The running-process list, with NVML's size protocol. */
static nvmlReturn_t running_processes(const char *function, nvmlDevice_t device,
                                      unsigned int *count, nvmlProcessInfo_t *infos) {
    gpu_state *g;
    nvmlReturn_t ret = enter_device(function, device, &g);
    if (ret != NVML_SUCCESS) {
        return ret;
    }
    if (count == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    unsigned int n = 0;
    nvmlProcessInfo_t found[MAX_PROCS];
    for (int i = 0; i < g->n_procs; i++) {
        const nvmlProcessInfo_t *p = &g->procs[i];
        if (device->mig_slot < 0 || (p->gpuInstanceId == g->mig[device->mig_slot].gi &&
                                     p->computeInstanceId == g->mig[device->mig_slot].ci)) {
            found[n++] = *p;
        }
    }
    if (*count < n || (n > 0 && infos == NULL)) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (n > 0) {
        memcpy(infos, found, n * sizeof *infos);
    }
    *count = n;
    return NVML_SUCCESS;
}

#ifndef FAKE_NO_RUNNING_V3
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    return running_processes("nvmlDeviceGetComputeRunningProcesses_v3", device, count, infos);
}
#endif

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    return running_processes("nvmlDeviceGetComputeRunningProcesses_v2", device, count, infos);
}

#ifndef FAKE_NO_PROCESS_UTILIZATION
/*
 * Samples newer than lastSeenTimeStamp. With a NULL buffer: the count to allocate (plus
 * util_pad, as the real library over-reports) and INSUFFICIENT_SIZE, or NOT_FOUND when
 * there is no newer sample. With a buffer: fills it and sets the count filled.
 */
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device,
                                             nvmlProcessUtilizationSample_t *utilization,
                                             unsigned int *processSamplesCount,
                                             unsigned long long lastSeenTimeStamp) {
    gpu_state *g;
    nvmlReturn_t ret = enter_device("nvmlDeviceGetProcessUtilization", device, &g);
    if (ret != NVML_SUCCESS) {
        return ret;
    }
    if (processSamplesCount == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if (device->mig_slot >= 0 || g->mig_mode) {
        return NVML_ERROR_NOT_SUPPORTED; /* as on a GPU in MIG mode */
    }
    unsigned int n = 0;
    for (int i = 0; i < g->n_util; i++) {
        n += g->util[i].timeStamp > lastSeenTimeStamp;
    }
    if (n == 0) {
        return NVML_ERROR_NOT_FOUND;
    }
    if (utilization == NULL || *processSamplesCount < n) {
        *processSamplesCount = n + g->util_pad;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned int filled = 0;
    for (int i = 0; i < g->n_util; i++) {
        if (g->util[i].timeStamp > lastSeenTimeStamp) {
            utilization[filled++] = g->util[i];
        }
    }
    *processSamplesCount = filled;
    return NVML_SUCCESS;
}
#endif

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode,
                                  unsigned int *pendingMode) {
    gpu_state *g;
    nvmlReturn_t ret = enter_device("nvmlDeviceGetMigMode", device, &g);
    if (ret != NVML_SUCCESS) {
        return ret;
    }
    *currentMode = g->mig_mode;
    *pendingMode = g->mig_mode;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    gpu_state *g;
    nvmlReturn_t ret = enter_device("nvmlDeviceGetMaxMigDeviceCount", device, &g);
    if (ret != NVML_SUCCESS) {
        return ret;
    }
    *count = g->mig_mode ? MAX_MIG : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                 nvmlDevice_t *migDevice) {
    gpu_state *g;
    nvmlReturn_t ret = enter_device("nvmlDeviceGetMigDeviceHandleByIndex", device, &g);
    if (ret != NVML_SUCCESS) {
        return ret;
    }
    if (!g->mig_mode || device->mig_slot >= 0 || index >= MAX_MIG) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if (index >= (unsigned int)g->n_mig) {
        return NVML_ERROR_NOT_FOUND; /* an empty slot */
    }
    mig_handles[device->gpu][index].gpu = device->gpu;
    mig_handles[device->gpu][index].mig_slot = (int)index;
    *migDevice = &mig_handles[device->gpu][index];
    return NVML_SUCCESS;
}

static nvmlReturn_t mig_id(const char *function, nvmlDevice_t device, unsigned int *id,
                           int compute) {
    gpu_state *g;
    nvmlReturn_t ret = enter_device(function, device, &g);
    if (ret != NVML_SUCCESS) {
        return ret;
    }
    if (device->mig_slot < 0) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    const mig_device *m = &g->mig[device->mig_slot];
    *id = compute ? m->ci : m->gi;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id) {
    return mig_id("nvmlDeviceGetGpuInstanceId", device, id, 0);
}

nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id) {
    return mig_id("nvmlDeviceGetComputeInstanceId", device, id, 1);
}

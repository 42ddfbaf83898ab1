"""The BPF program of the ``ebpf`` receiver (C, compiled by bcc at start) and its map layouts.

What it does, per event:

- ``sched:sched_switch`` (in the context of the task leaving the CPU): this CPU's record
  takes the switch time and the arriving thread's id; then the time since the previous
  switch on this CPU, the leaving task's on-CPU time, is added to its thread group in the
  *usage* map now being written (one hash lookup, one atomic add). Where hardware
  counters are read (``HW_COUNTERS``), their deltas since the previous switch go into the
  same record. The CPU records are a memory-mapped array: the agent reads them, and
  what the running tasks used so far, without a system call.
- ``sched:sched_process_exit`` (last thread of a group: ``group_dead``, or the leader on
  kernels without that field) and ``sched:sched_process_exec``: a flag and the comm in the
  *events* map now being written.

Two usage maps and two event maps: ``control[0]`` (memory-mapped too) says which pair the
program writes. The agent flips it once a tick and drains the other pair with one batch
lookup-and-delete each (an events map that recorded nothing is skipped), so a map only
ever holds the processes that ran (or ended) during one interval, and a tick's cost does
not grow with idle processes.

It uses helpers (pid/tgid, cgroup id, clock, comm) and tracepoint fields whose layout bcc
reads from tracefs when it compiles, never a kernel struct: kernel headers older than
the running kernel (Debian's 6.1 headers on a 6.18 kernel) are enough.
"""

from __future__ import annotations

import struct

#: Program names (as ``bpftool prog`` shows them; at most 15 characters).
SWITCH_FN = "otelk_switch"
EXIT_FN = "otelk_exit"
EXEC_FN = "otelk_exec"
FUNCTIONS = (SWITCH_FN, EXIT_FN, EXEC_FN)

#: Event flags.
EXITED = 1
EXECED = 2

#: ``struct usage``: ns, cgroup_id, cycles, instructions, cache_misses.
USAGE = struct.Struct("<QQQQQ")
#: ``struct event``: cgroup_id, flags, pad, comm.
EVENT = struct.Struct("<QII16s")
#: ``struct cpu_state``: start_ns, tid (then pad, counters, spare: one cache line).
CPU_STATE = struct.Struct("<QI52x")
#: ``struct stats``: dropped_usage, dropped_events, recorded events (events0, events1).
STATS = struct.Struct("<QQQQ")
#: ``control[0]``: which pair of maps the program writes.
CONTROL = struct.Struct("<I")

_TEMPLATE = r"""
#define EXITED 1
#define EXECED 2

struct cpu_state {
    u64 start_ns;      /* when the task now on this CPU was switched in; 0: not yet seen */
    u32 tid;           /* that task's thread id (0: the idle task) */
    u32 pad;
    u64 cycles;        /* counter readings at that switch (HW_COUNTERS only) */
    u64 instructions;
    u64 cache_misses;
    u64 spare[3];      /* one cache line per CPU: no false sharing */
};

struct usage {
    u64 ns;
    u64 cgroup_id;     /* cgroup v2 id (directory inode) at the interval's first slice */
    u64 cycles;
    u64 instructions;
    u64 cache_misses;
};

struct event {
    u64 cgroup_id;
    u32 flags;
    u32 pad;
    char comm[16];
};

struct stats {
    u64 dropped_usage;   /* switches not counted: the usage map was full */
    u64 dropped_events;  /* exits or execs not recorded: the events map was full */
    u64 recorded[2];     /* events recorded in events0, events1: the agent skips a map
                            that received none since its last drain */
};

/* Memory-mapped by the agent: it reads and flips them without a system call. */
BPF_F_TABLE("array", u32, struct cpu_state, cpu_state, NUM_CPUS, BPF_F_MMAPABLE);
BPF_F_TABLE("array", u32, u32, control, 1, BPF_F_MMAPABLE);
BPF_F_TABLE("array", u32, struct stats, stats, 1, BPF_F_MMAPABLE);
BPF_HASH(usage0, u32, struct usage, MAX_PROCESSES);
BPF_HASH(usage1, u32, struct usage, MAX_PROCESSES);
BPF_HASH(events0, u32, struct event, MAX_PROCESSES);
BPF_HASH(events1, u32, struct event, MAX_PROCESSES);

#ifdef HW_COUNTERS
BPF_PERF_ARRAY(cycles_reader, NUM_CPUS);
BPF_PERF_ARRAY(instructions_reader, NUM_CPUS);
BPF_PERF_ARRAY(cache_misses_reader, NUM_CPUS);

static __always_inline u64 counter_delta(u64 now, u64 *last)
{
    u64 before = *last;
    *last = now;
    return (before && now > before) ? now - before : 0;
}
#endif

static __always_inline void count_event(int map)
{
    int zero = 0;
    struct stats *s = stats.lookup(&zero);
    if (s)
        __sync_fetch_and_add(&s->recorded[map & 1], 1);
}

static __always_inline void count_drop(int which)
{
    int zero = 0;
    struct stats *s = stats.lookup(&zero);
    if (!s)
        return;
    if (which)
        __sync_fetch_and_add(&s->dropped_events, 1);
    else
        __sync_fetch_and_add(&s->dropped_usage, 1);
}

@CHARGE@
int otelk_switch(struct tracepoint__sched__sched_switch *args)
{
    int zero = 0;
    u32 cpu_id = bpf_get_smp_processor_id();
    struct cpu_state *cpu = cpu_state.lookup(&cpu_id);
    if (!cpu)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 start = cpu->start_ns;
    u64 cyc = 0, ins = 0, mis = 0;
#ifdef HW_COUNTERS
    struct bpf_perf_event_value v = {};
    if (cycles_reader.perf_counter_value(CUR_CPU_IDENTIFIER, &v, sizeof(v)) == 0)
        cyc = counter_delta(v.counter, &cpu->cycles);
    if (instructions_reader.perf_counter_value(CUR_CPU_IDENTIFIER, &v, sizeof(v)) == 0)
        ins = counter_delta(v.counter, &cpu->instructions);
    if (cache_misses_reader.perf_counter_value(CUR_CPU_IDENTIFIER, &v, sizeof(v)) == 0)
        mis = counter_delta(v.counter, &cpu->cache_misses);
#endif
    /* This CPU's record first, the usage after: a reader that sees the new start has
       at worst not yet seen the slice (counted next tick), never both. */
    cpu->start_ns = now;
    cpu->tid = args->next_pid;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (tgid == 0 || start == 0 || now <= start)
        return 0;  /* the idle task, or the first switch seen on this CPU */
    u64 ns = now - start;
    u32 *which = control.lookup(&zero);
    if (which && *which)
        return charge_usage1(tgid, ns, cyc, ins, mis);
    return charge_usage0(tgid, ns, cyc, ins, mis);
}

@MARK@
static __always_inline int mark(u32 flag)
{
    int zero = 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u32 *which = control.lookup(&zero);
    if (which && *which)
        return mark_events1(tgid, flag);
    return mark_events0(tgid, flag);
}

int otelk_exit(struct tracepoint__sched__sched_process_exit *args)
{
#ifdef GROUP_DEAD
    if (!args->group_dead)
        return 0;  /* other threads of the group still run */
#else
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)id != (u32)(id >> 32))
        return 0;  /* a thread, not the group leader */
#endif
    return mark(EXITED);
}

int otelk_exec(struct tracepoint__sched__sched_process_exec *args)
{
    return mark(EXECED);
}
"""

_CHARGE = r"""
/* Add one slice to the tgid's record in MAP; create the record if it is the first. */
static __always_inline int charge_MAP(u32 tgid, u64 ns, u64 cyc, u64 ins, u64 mis)
{
    struct usage *u = MAP.lookup(&tgid);
    if (!u) {
        struct usage fresh = {};
        fresh.ns = ns;
        fresh.cgroup_id = bpf_get_current_cgroup_id();
        fresh.cycles = cyc;
        fresh.instructions = ins;
        fresh.cache_misses = mis;
        if (MAP.insert(&tgid, &fresh) == 0)
            return 0;
        u = MAP.lookup(&tgid);  /* another CPU created it meanwhile, or the map is full */
        if (!u) {
            count_drop(0);
            return 0;
        }
    }
    __sync_fetch_and_add(&u->ns, ns);
    if (cyc | ins | mis) {
        __sync_fetch_and_add(&u->cycles, cyc);
        __sync_fetch_and_add(&u->instructions, ins);
        __sync_fetch_and_add(&u->cache_misses, mis);
    }
    return 0;
}
"""

_MARK = r"""
/* Set FLAG on the tgid's record in MAP, with the comm it has now. */
static __always_inline int mark_MAP(u32 tgid, u32 flag)
{
    struct event *e = MAP.lookup(&tgid);
    if (!e) {
        struct event fresh = {};
        fresh.cgroup_id = bpf_get_current_cgroup_id();
        fresh.flags = flag;
        bpf_get_current_comm(&fresh.comm, sizeof(fresh.comm));
        if (MAP.insert(&tgid, &fresh) == 0) {
            count_event(INDEX);
            return 0;
        }
        e = MAP.lookup(&tgid);
        if (!e) {
            count_drop(1);
            return 0;
        }
    }
    e->flags |= flag;
    e->cgroup_id = bpf_get_current_cgroup_id();  /* where it is now: exits come last */
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    return 0;
}
"""

#: bcc refuses map calls inside C macros, so each map gets its own copy of the function.
SOURCE = _TEMPLATE.replace(
    "@CHARGE@", "".join(_CHARGE.replace("MAP", m) for m in ("usage0", "usage1"))
).replace(
    "@MARK@", "".join(_MARK.replace("MAP", f"events{i}").replace("INDEX", str(i)) for i in (0, 1))
)

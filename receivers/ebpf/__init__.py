"""ebpf receiver: per-process on-CPU time (and hardware counters) from the scheduler.

A bcc program on ``sched:sched_switch`` charges every slice of CPU time to the thread
group that ran it, with its cgroup id; exits and execs are recorded too (see
:mod:`.program`). Once a tick the agent flips the program to its spare maps and drains
the others, so the tick's cost follows the processes that ran, not those alive, and
a process that ran and ended between two ticks still brings its time (``exited``, with
its ``cpu_delta``).

It emits what the ``procfs`` receiver emits (every live process, the node usage ratio
from /proc/stat, ended processes in ``exited``), so ``attribution`` needs no change,
plus cycles, instructions and cache misses where the CPU exposes them.

Where the program cannot load (no privilege, no kernel headers, no tracefs, no bcc, a
kernel that refuses it) ``start()`` names what is missing; with ``fallback: procfs``
(the default) the receiver then reads /proc instead, as the ``procfs`` receiver.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Literal

from otel_kepler.component import Availability, ComponentError, Factory, HostSettings, Receiver
from otel_kepler.data import NO_WORKLOAD, Contribution, IoCounters, ProcessSample
from otel_kepler.receivers.procfs import ProcfsConfig, ProcfsReceiver
from otel_kepler.receivers.procfs.activity import ActivityReader
from otel_kepler.receivers.procfs.reader import ProcessReader
from otel_kepler.receivers.procfs.stat import StatError, UsageRatio, read_cpu_times, start_error
from otel_kepler.schema import ConfigError

from . import program
from .cgroups import CgroupResolver, cgroup2_mount, workload_of
from .host import ProcHost, legacy_cpu_hierarchy
from .io_probe import IoDrained, IoProbe
from .loader import TRACEPOINTS, KernelPaths, Probe, hardware_counters, prerequisites
from .tracker import Tracker
from .workloads import WorkloadSums

__all__ = ["EbpfConfig", "EbpfReceiver", "ProcHost", "doctor", "factory"]

log = logging.getLogger(__name__)

#: At most one "map full" warning per map in this many seconds.
WARN_EVERY_S = 60.0


@dataclass
class EbpfConfig:
    """On-CPU time per process from a bcc program on the scheduler's tracepoints."""

    fallback: Literal["procfs", "none"] = field(
        default="procfs",
        metadata={
            "doc": "where the BPF program cannot load (no CAP_BPF/CAP_SYS_ADMIN, no kernel "
            "headers, no bcc, a kernel that refuses it): procfs reads /proc instead, as "
            "the procfs receiver; none makes that an error"
        },
    )
    max_processes: int = field(
        default=16384,
        metadata={
            "doc": "capacity of the BPF maps: thread groups that run, and that end, within "
            "one tick; beyond it slices are not counted and a warning says so"
        },
    )
    hardware_counters: bool = field(
        default=True,
        metadata={
            "doc": "read cycles, instructions and cache misses per process where the CPU "
            "exposes them (most VMs do not: then CPU time only)"
        },
    )
    softirqs: bool = field(
        default=True,
        metadata={
            "doc": "count NET_TX, NET_RX and BLOCK softirqs per process from "
            "irq:softirq_entry, as Kepler did (who was on the CPU when they ran)"
        },
    )
    network: bool = field(
        default=True,
        metadata={
            "doc": "network bytes per cgroup from socket-buffer programs on the cgroup v2 "
            "root (ingress and egress); where they cannot attach, each pod network "
            "namespace's interface counters (procfs.activity.network)"
        },
    )
    procfs: ProcfsConfig = field(
        default_factory=ProcfsConfig,
        metadata={
            "doc": "the procfs reader's settings, used by the fallback; its activity "
            "settings (process io, cgroup block bytes) apply in eBPF mode too"
        },
    )

    def validate(self) -> None:
        if not 64 <= self.max_processes <= 4_194_304:
            raise ConfigError(
                "max_processes", f"must be between 64 and 4194304, got {self.max_processes}"
            )


class EbpfReceiver(Receiver):
    """Each tick: every process (with the CPU time of those that ran), ended processes
    with their last interval, and the node usage ratio; procfs where eBPF cannot load."""

    def __init__(
        self,
        name: str,
        config: EbpfConfig,
        host: HostSettings,
        paths: KernelPaths | None = None,
        source: str = program.SOURCE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self.procfs = host.procfs
        self.sysfs = host.sysfs
        self.paths = paths or KernelPaths()
        self.source = source
        self._clock = clock
        self.probe: Probe | None = None
        self.tracker: Tracker | None = None
        self.counters_off: str | None = None  # why hardware counters are not read
        self._ratio = UsageRatio(host.procfs)
        self._dropped = [0, 0]  # usage, events: the counts already warned about
        self._warned_at = [-WARN_EVERY_S, -WARN_EVERY_S]
        self._fallback = (
            ProcfsReceiver(
                host.procfs,
                config.procfs.keep_open,
                config.procfs.activity,
                host.sysfs,
                config.procfs.scan,
            )
            if config.fallback == "procfs"
            else None
        )
        self.using_fallback = False
        self.io: IoProbe | None = None
        self.io_off: str | None = None  # why the I/O programs are not loaded
        self.activity: ActivityReader | None = None
        self._resolver: CgroupResolver | None = None
        self._net_paths: dict[int, str] = {}  # cgroup id -> path, for the byte counters
        self._first = True
        #: one sample a workload instead of one a process, when no processor needs them
        self._sums: WorkloadSums | None = None

    def use_processes(self, needed: bool) -> None:
        self._sums = None if needed else WorkloadSums()
        if self._fallback is not None:
            self._fallback.use_processes(needed)

    def start(self) -> None:
        try:
            self._start_ebpf()
        except ComponentError as err:
            if self._fallback is None:
                raise
            log.warning("%s: %s; falling back to procfs", self.name, err)
            self._fallback.start()
            self.using_fallback = True

    def _start_ebpf(self) -> None:
        try:
            read_cpu_times(self._ratio.path)
        except StatError as err:
            raise ComponentError(start_error(err)) from None
        bcc = prerequisites(self.paths)
        counters = False
        if self.config.hardware_counters:
            self.counters_off = hardware_counters()
            counters = self.counters_off is None
            if self.counters_off is not None:
                log.info(
                    "%s: no hardware counters: %s; CPU time only", self.name, self.counters_off
                )
        self.probe = Probe(bcc, self.config.max_processes, self.paths, counters, self.source)
        try:
            self.tracker = Tracker(self._host())
            self._start_io(bcc)
            reader = ProcessReader(self.procfs, keep_open=False)
            self.tracker.seed(reader.scan(None))  # after attaching: nobody falls in between
            self._ratio.update()
        except BaseException:
            self.shutdown()
            raise
        log.info(
            "%s: BPF program attached (%s, up to %d processes a tick%s)",
            self.name,
            ", ".join(tp for tp, _ in TRACEPOINTS),
            self.config.max_processes,
            ", with hardware counters" if counters else "",
        )

    def _host(self) -> ProcHost:
        mount = cgroup2_mount(prefer=os.path.join(self.sysfs, "fs", "cgroup"))
        self._resolver = CgroupResolver(mount)
        return ProcHost(self.procfs, self._resolver, legacy_cpu_hierarchy())

    def _start_io(self, bcc: ModuleType) -> None:
        """The softirq and socket-buffer programs; where they cannot load, say why once
        and read what procfs can (network from the pod network namespaces)."""
        config = self.config
        root = self._resolver.mount if self._resolver is not None else None
        want_net = config.network and root is not None
        if config.network and root is None:
            self.io_off = "no cgroup2 hierarchy mounted: no socket-buffer programs"
        if config.softirqs or want_net:
            try:
                self.io = IoProbe(
                    bcc,
                    config.max_processes,
                    config.softirqs,
                    root if want_net else None,
                )
            except ComponentError as err:
                self.io_off = str(err)
        if self.io_off is not None:
            log.warning(
                "%s: %s; network bytes from the pod network namespaces", self.name, self.io_off
            )
        activity = dataclasses.replace(
            self.config.procfs.activity,
            network=self.config.procfs.activity.network
            and (self.io is None or not self.io.network),
            # each process's I/O is of no use when the samples are summed by workload
            process_io=self.config.procfs.activity.process_io and self._sums is None,
        )
        self.activity = ActivityReader(self.procfs, activity, self.sysfs)

    def collect(self) -> Contribution:
        if self.using_fallback and self._fallback is not None:
            fallback: Contribution = self._fallback.collect()
            return fallback
        if self.probe is None or self.tracker is None:
            raise ComponentError(f"{self.name}: collect() before start()")
        drained = self.probe.drain()
        io = self.io.read() if self.io is not None else None
        processes, exited = self.tracker.update(drained)
        container_io: dict[str, IoCounters] = {}
        pod_io: dict[str, IoCounters] = {}
        if self.activity is not None:
            container_io, pod_io = self.activity.read(processes, self._first)
        self._first = False
        if io is not None:
            exited = self._add_io(io, processes, exited, container_io)
        self._warn_full(0, drained.dropped_usage, "context switches were not counted")
        self._warn_full(1, drained.dropped_events, "exits or execs were not recorded")
        try:
            ratio = self._ratio.update()
        except StatError as err:
            raise ComponentError(str(err)) from None
        if self._sums is not None:
            processes, exited = self._sums.collapse(processes, exited)
        return Contribution(
            processes=processes,
            exited=exited,
            cpu_usage_ratio=ratio,
            container_io=container_io,
            pod_io=pod_io,
        )

    def _add_io(
        self,
        io: IoDrained,
        processes: dict[int, ProcessSample],
        exited: list[ProcessSample],
        container_io: dict[str, IoCounters],
    ) -> list[ProcessSample]:
        """Softirq counts onto this tick's samples (copies: the tracker keeps its own),
        byte counters of cgroups onto their containers."""
        if io.softirqs:
            ended = {s.pid: i for i, s in enumerate(exited)}
            for tgid, (tx, rx, block) in io.softirqs.items():
                sample = processes.get(tgid)
                if sample is not None:
                    processes[tgid] = dataclasses.replace(
                        sample, net_tx_irq=tx, net_rx_irq=rx, block_irq=block
                    )
                elif tgid in ended:
                    i = ended[tgid]
                    exited[i] = dataclasses.replace(
                        exited[i], net_tx_irq=tx, net_rx_irq=rx, block_irq=block
                    )
        mount = self._resolver.mount if self._resolver is not None else None
        if mount is None or not io.net:
            return exited
        paths = self._net_paths
        if any(cgroup_id not in paths for cgroup_id in io.net):
            paths = self._net_paths = cgroup_paths(mount)  # one walk, only for new ids
        gone = []
        for cgroup_id, (rx, tx) in io.net.items():
            path = paths.get(cgroup_id)
            if path is None:  # removed: its last bytes were reported while it lived
                gone.append(cgroup_id)
                continue
            workload = workload_of(path)
            if workload is NO_WORKLOAD:
                continue
            # per container only: a pod's are its containers' (summed as deltas by the
            # processor), so that a container ending does not look like a counter reset
            if workload.container_id:
                counters = container_io.setdefault(workload.container_id, IoCounters())
                counters.rx_bytes = max(counters.rx_bytes, 0) + rx
                counters.tx_bytes = max(counters.tx_bytes, 0) + tx
        if gone and self.io is not None:
            self.io.forget_cgroups(gone)
        return exited

    def _warn_full(self, which: int, count: int, what: str) -> None:
        new = count - self._dropped[which]
        now = self._clock()
        if new <= 0 or now - self._warned_at[which] < WARN_EVERY_S:
            return
        self._dropped[which] = count
        self._warned_at[which] = now
        log.warning(
            "%s: the BPF %s map is full (max_processes %d): %d %s since the last warning; "
            "raise receivers.%s.max_processes (logged at most once a minute)",
            self.name,
            ("usage", "events")[which],
            self.config.max_processes,
            new,
            what,
            self.name,
        )

    def shutdown(self) -> None:
        io, self.io = self.io, None
        if io is not None:
            io.close()
        probe, self.probe = self.probe, None
        if probe is not None:
            probe.close()
            log.info("%s: BPF program detached", self.name)
        if self.using_fallback and self._fallback is not None:
            self._fallback.shutdown()
        if self.activity is not None:
            self.activity.close()


def cgroup_paths(mount: str) -> dict[int, str]:
    """Every cgroup under the cgroup2 ``mount``: id (directory inode) -> path ("/a/b")."""
    found: dict[int, str] = {}
    try:
        found[os.stat(mount).st_ino] = "/"
    except OSError:
        return found
    pending = [(mount, "")]
    while pending:
        directory, relative = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue  # removed meanwhile
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                path = f"{relative}/{entry.name}"
                found[entry.inode()] = path
                pending.append((entry.path, path))
    return found


def doctor(host: HostSettings) -> Availability:
    """Whether the program loads here (it is loaded, attached and detached), and why not."""
    paths = KernelPaths()
    try:
        bcc = prerequisites(paths)
        counters_off = hardware_counters()
        probe = Probe(bcc, 1024, paths, counters_off is None)
    except ComponentError as err:
        return Availability(False, f"procfs mode (with fallback: procfs, the default): {err}")
    probe.close()
    try:
        mount = cgroup2_mount(prefer=os.path.join(host.sysfs, "fs", "cgroup"))
        IoProbe(bcc, 1024, True, mount).close()
        io = (
            f"softirqs per process; network bytes per cgroup from socket-buffer programs on {mount}"
            if mount is not None
            else "softirqs per process; no cgroup2 mount: network bytes from the pod "
            "network namespaces"
        )
    except ComponentError as err:
        io = f"no softirq or socket-buffer programs ({err}): network bytes from the pod namespaces"
    headers = paths.headers() or ""
    target = os.path.realpath(headers)
    counters = (
        "cycles, instructions and cache misses per process"
        if counters_off is None
        else f"no hardware counters: {counters_off}; CPU time only"
    )
    return Availability(
        True,
        f"eBPF mode: bcc {bcc.__version__} loaded and attached the program on kernel "
        f"{paths.release} (headers {headers}{f' -> {target}' if target != headers else ''}); "
        f"{counters}; {io}",
    )


def _create(name: str, config: EbpfConfig, host: HostSettings) -> EbpfReceiver:
    return EbpfReceiver(name, config, host)


factory: Factory[EbpfConfig, Receiver] = Factory(
    type="ebpf",
    description="Per-process on-CPU time and hardware counters from a bcc program on the "
    "scheduler's tracepoints (falls back to procfs)",
    config_class=EbpfConfig,
    create=_create,
    doctor=doctor,
)

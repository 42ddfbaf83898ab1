"""The ``attribution`` processor: split node energy over processes, containers, pods, VMs.

Per tick and per CPU zone:

* idle = min(dE, the zone's idle power x dt), active = dE - idle, with the idle power
  learned from the zone's own readings or configured (``idle: learned | fixed``, see
  :mod:`otel_kepler.receivers.power_models.idle`); ``idle: usage_ratio`` is Kepler's
  rule, active = dE x node CPU usage ratio, which is also used until an idle power
  is known. Idle stays with the node;
* a process gets active x (its CPU-time delta / the sum of all CPU-time deltas);
* a container is the sum of its processes, a pod the sum of its containers, a VM
  the sum of its hypervisor processes (:mod:`.vm`).

Invariant: per tick and zone, the processes' active joules plus idle equal the
node's measured joules. When no process used CPU time in the interval (or no
usage ratio is known yet) there is nobody to give active energy to, so the whole
interval counts as idle.

An estimator that calibrates against a platform meter gets the tick's batch here
(:mod:`otel_kepler.receivers.power_models.calibration`): this is the one step
that sees both.

Totals are monotonic joules accumulated here, never a raw counter. A workload
that ended is emitted once with ``state=terminated`` (the top ``max_terminated``
by energy) and then forgotten; the pull exporter keeps such points until one
scrape has carried them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Literal

from otel_kepler import metadata as md
from otel_kepler import metrics as m
from otel_kepler.component import Factory, HostSettings, Processor
from otel_kepler.data import (
    NO_WORKLOAD,
    RUNNING,
    TERMINATED,
    Batch,
    EnergyReading,
    GpuEnergy,
    ProcessSample,
    Workload,
    WorkloadEnergy,
    ZoneEnergy,
)
from otel_kepler.metadata import MetricSpec
from otel_kepler.processors.activity import ActivityAccounting, OtherSplit
from otel_kepler.processors.gpu import GpuSplitter
from otel_kepler.processors.vm import VirtualMachine, VmDetector
from otel_kepler.receivers.power_models.calibration import ModelReading
from otel_kepler.receivers.power_models.idle import IdleMode, IdlePower, default_state_dir
from otel_kepler.receivers.procfs.cgroup import parse_cgroup
from otel_kepler.receivers.procfs.reader import read_small
from otel_kepler.schema import ConfigError

log = logging.getLogger(__name__)

LevelName = Literal["node", "process", "container", "pod", "vm"]
DEFAULT_LEVELS: list[LevelName] = ["node", "container", "pod"]


@dataclass
class AttributionConfig:
    """Which levels are emitted and how many ended workloads are reported."""

    levels: list[LevelName] = field(
        default_factory=lambda: list(DEFAULT_LEVELS),
        metadata={"doc": "levels to emit; process level is off by default (cardinality)"},
    )
    max_terminated: int = field(
        default=500,
        metadata={"doc": "ended workloads reported per level and tick, the largest by energy"},
    )
    share_of: Literal["processes", "node"] = field(
        default="processes",
        metadata={
            "doc": "processes: a process's share is its CPU time over all processes' (Kepler); "
            "node: over the node's busy CPU time from /proc/stat, for a sidecar that sees "
            "only its own pod (the rest of the node's active energy is then not given out)"
        },
    )
    split_by: Literal["cpu_time", "hardware_counters"] = field(
        default="cpu_time",
        metadata={
            "doc": "cpu_time: Kepler's rule; hardware_counters: Kepler's older ratio model "
            "(package, core and uncore by instructions, dram by cache misses), where the "
            "usage receiver reads counters (ebpf); a tick without counters uses cpu_time"
        },
    )

    idle: IdleMode = field(
        default="learned",
        metadata={
            "doc": "learned: idle = min(dE, the zone's idle power x dt), the idle power "
            "learned per zone from its watts against the node's CPU usage and kept across "
            "restarts; fixed: the idle_watts given (zones not listed are learned); "
            "usage_ratio: Kepler's rule, active = dE x usage ratio (idle is 0 at full load)"
        },
    )
    idle_watts: dict[str, float] = field(
        default_factory=dict,
        metadata={
            "doc": "idle power per zone in watts (package: 20, dram: 2): the value with "
            "idle: fixed, the starting value with idle: learned"
        },
    )
    idle_window: int = field(
        default=720, metadata={"doc": "ticks the idle power is learned over (a sliding window)"}
    )
    idle_min_ticks: int = field(
        default=30, metadata={"doc": "ticks seen before a learned idle power is used"}
    )
    idle_min_spread: float = field(
        default=0.2,
        metadata={
            "doc": "the usage ratio must span this much in the window to learn idle as the "
            "intercept of watts against usage (else: the watts seen at usage below 5%)"
        },
    )
    persist_idle: bool = field(
        default=True, metadata={"doc": "keep learned idle power in a state file across restarts"}
    )
    state_dir: str = field(
        default="",
        metadata={
            "doc": "folder of the state file (<processor name>-idle.json); default "
            "$STATE_DIRECTORY, else /var/lib/otel-kepler as root, else "
            "$XDG_STATE_HOME/otel-kepler"
        },
    )

    # -- I/O activity (processors/activity.py): totals per workload, the other split --
    other_split: OtherSplit = field(
        default_factory=OtherSplit,
        metadata={
            "doc": "split zone other (platform less CPU, DRAM and GPUs) over workloads by "
            "CPU time, network and block bytes (enabled: false by default, as Kepler)"
        },
    )

    def validate(self) -> None:
        if self.max_terminated < 0:
            raise ConfigError("max_terminated", "must be 0 or more")
        if len(set(self.levels)) != len(self.levels):
            raise ConfigError("levels", "a level is listed twice")
        for zone, watts in self.idle_watts.items():
            if not watts >= 0:
                raise ConfigError(f"idle_watts.{zone}", f"must be 0 or more, got {watts:g}")
        if self.idle == "fixed" and not self.idle_watts:
            raise ConfigError("idle_watts", "idle: fixed needs the idle watts of each zone")
        if self.idle_window < 2:
            raise ConfigError("idle_window", f"must be 2 or more, got {self.idle_window}")
        if not 2 <= self.idle_min_ticks <= self.idle_window:
            raise ConfigError(
                "idle_min_ticks",
                f"must be between 2 and idle_window ({self.idle_window}), "
                f"got {self.idle_min_ticks}",
            )
        if not 0 < self.idle_min_spread <= 1:
            raise ConfigError(
                "idle_min_spread", f"must be above 0 and at most 1, got {self.idle_min_spread:g}"
            )


@dataclass(slots=True)
class _ProcessState:
    start_ticks: int
    energy: WorkloadEnergy
    seen: int  # the tick that last reported it
    vm: VirtualMachine | None = None


class AttributionProcessor(Processor):
    def __init__(
        self,
        config: AttributionConfig,
        node_name: str = "",
        procfs: str = "/proc",
        state_path: str | None = None,
        sysfs: str = "/sys",
    ) -> None:
        """``state_path``: the idle state file; None (the default here) persists nothing."""
        self.levels = frozenset(config.levels)
        self.max_terminated = config.max_terminated
        self.counters = config.split_by == "hardware_counters"
        self.share_of_node = config.share_of == "node"
        self.node_name = node_name
        self._zones: dict[tuple[str, ...], ZoneEnergy] = {}
        self._processes: dict[int, _ProcessState] = {}
        self._containers: dict[str, WorkloadEnergy] = {}
        self._pods: dict[str, WorkloadEnergy] = {}
        self._vms: dict[str, WorkloadEnergy] = {}
        self._tick = 0
        self._gpus = GpuSplitter(node_name)
        self.idle = IdlePower(
            config.idle,
            dict(config.idle_watts),
            window=config.idle_window,
            min_ticks=config.idle_min_ticks,
            min_spread=config.idle_min_spread,
            state_path=state_path,
            host_id={"sysfs": sysfs, "node_name": node_name},
        )
        self.activity = ActivityAccounting(config.other_split)  # I/O activity hook
        detect = "vm" in self.levels or "process" in self.levels
        self._detector = VmDetector(procfs) if detect else None
        self.uses_processes = detect  # else only sums by container and pod are emitted
        self.procfs = procfs

    def start(self) -> None:
        self.idle.load()

    def shutdown(self) -> None:
        self.idle.save()

    # -- per tick ---------------------------------------------------------------------

    def process(self, batch: Batch) -> None:
        now_ns = batch.timestamp_ns
        interval = batch.interval_s
        model_idle = _calibrate_and_model_idle(batch)
        gpus, gpu_shares = self._gpus.split(batch.gpus, interval)
        readings = batch.energy + platform_remainder(batch.energy, gpus)
        zones = self._node_zones(readings, interval)
        total_delta = sum(p.cpu_delta for p in batch.processes.values())
        total_delta += sum(p.cpu_delta for p in batch.exited)
        if self.share_of_node and batch.node_cpu_seconds is not None:
            total_delta = max(total_delta, batch.node_cpu_seconds)
        ratio = batch.cpu_usage_ratio
        attributable = ratio is not None and total_delta > 0.0
        active_by_zone: dict[str, float] = {}
        split_source: dict[str, str] = {}  # zone -> the one source workloads get it from
        for zone in sorted(zones, key=_source_rank):
            if zone.component != "cpu":
                continue  # platform and gpu energy is not split by CPU time
            idle_watts = self.idle.watts(
                zone.zone,
                zone.source,
                ratio,
                zone.watts,
                interval,
                model_idle.get((zone.component, zone.zone, zone.source)),
            )
            active = self._active(zone.interval_joules, ratio, idle_watts, interval, attributable)
            zone.active_total_joules += active
            zone.idle_total_joules += zone.interval_joules - active
            if split_source.setdefault(zone.zone, zone.source) == zone.source:
                active_by_zone[zone.zone] = active_by_zone.get(zone.zone, 0.0) + active
        if batch.has_usage or self._processes or gpu_shares:
            scale = self._scale(batch, active_by_zone, total_delta if attributable else 0.0)
            self._attribute(batch, scale, gpu_shares, now_ns)
        self.activity.process(batch, zones)  # I/O activity hook: activity, zone other split
        if "node" in self.levels:
            batch.node_zones.extend(zones)
            batch.node_gpus.extend(gpus)
        self.idle.tick_done()

    @staticmethod
    def _active(
        joules: float,
        ratio: float | None,
        idle_watts: float | None,
        interval: float,
        attributable: bool,
    ) -> float:
        """This tick's active joules of one zone: what is left above idle."""
        if not attributable or ratio is None:
            return 0.0
        if idle_watts is None:  # Kepler's rule, or no idle power known yet
            return joules * ratio
        return joules - min(joules, idle_watts * interval)

    def _node_zones(self, readings: list[EnergyReading], interval: float) -> list[ZoneEnergy]:
        """Fold this tick's readings into the node totals; returns the zones seen this tick."""
        seen: dict[tuple[str, ...], ZoneEnergy] = {}
        seconds: dict[tuple[str, ...], float] = {}  # what each zone's energy was measured over
        for r in readings:
            key = _zone_key(r)
            state = self._zones.get(key)
            if state is None:
                state = ZoneEnergy(r.component, r.zone, r.source, r.attributes, 0, 0, 0, 0, 0)
                self._zones[key] = state
            if key not in seen:
                state.interval_joules = 0.0
                state.attributes = r.attributes  # a model's label changes when it calibrates
                seen[key] = state
            state.interval_joules += r.joules
            state.total_joules += r.joules
            seconds[key] = max(seconds.get(key, 0.0), r.seconds or interval)
        for key, state in seen.items():
            over = state.seconds = seconds[key]
            state.watts = state.interval_joules / over if over > 0 else 0.0
        return list(seen.values())

    def _attribute(
        self,
        batch: Batch,
        scale: dict[str, tuple[float, str]],
        gpu_shares: dict[int, list[tuple[str, float]]],
        now_ns: int,
    ) -> None:
        interval = batch.interval_s
        inv_interval = 1.0 / interval if interval > 0 else 0.0
        for table in (self._containers, self._pods, self._vms):
            for w in table.values():
                w.state = TERMINATED  # until a live process says otherwise
                _zero(w.watts)
                _zero(w.gpu_watts)
        self._tick += 1
        want_process = "process" in self.levels
        out = batch.workloads
        terminated: list[WorkloadEnergy] = []
        for sample in batch.processes.values():
            energy = self._account(sample, scale, inv_interval, now_ns, terminated)
            if sample.workload is not NO_WORKLOAD:
                self._mark_running(sample.workload, now_ns)
            vm = self._processes[sample.pid].vm
            if vm is not None:
                self._vm(vm, now_ns).state = RUNNING
            if want_process:
                out.append(energy)
        for sample in batch.exited:  # their last interval still counts (eBPF exit hooks)
            current = self._processes.get(sample.pid)
            if current is not None and current.start_ticks != sample.start_ticks:
                continue  # pid already reused this tick: the old process was closed above
            energy = self._account(sample, scale, inv_interval, now_ns, terminated)
            self._processes.pop(sample.pid, None)
            energy.state = TERMINATED
            terminated.append(energy)
        self._attribute_gpus(batch, gpu_shares, inv_interval, now_ns)
        if batch.has_usage:
            self._sweep_unseen(terminated)
        if want_process:
            out.extend(self._largest(terminated))
        self._emit_level("container", self._containers, out)
        self._emit_level("pod", self._pods, out)
        self._emit_level("vm", self._vms, out)

    def _scale(
        self, batch: Batch, active: dict[str, float], total_delta: float
    ) -> dict[str, tuple[float, str]]:
        """Per zone: joules per unit of the process measure that splits it, and that measure.

        The measure is ``cpu_delta``, or with ``split_by: hardware_counters`` the
        counter Kepler's ratio model used for the zone, where the tick has any.
        """
        if total_delta <= 0:
            return {zone: (0.0, _CPU) for zone in active}
        totals = {_CPU: total_delta}
        if self.counters:
            for measure in (_INSTRUCTIONS, _CACHE_MISSES):
                totals[measure] = float(
                    sum(getattr(p, measure) for p in batch.processes.values())
                    + sum(getattr(p, measure) for p in batch.exited)
                )
        scale = {}
        for zone, joules in active.items():
            measure = _COUNTER_FOR_ZONE.get(zone, _CPU) if self.counters else _CPU
            if totals.get(measure, 0.0) <= 0:
                measure = _CPU
            scale[zone] = (joules / totals[measure], measure)
        return scale

    def _account(
        self,
        sample: ProcessSample,
        scale: dict[str, tuple[float, str]],
        inv_interval: float,
        now_ns: int,
        terminated: list[WorkloadEnergy],
    ) -> WorkloadEnergy:
        """Give one process its share of this tick's active energy, zone by zone."""
        state = self._processes.get(sample.pid)
        first_seen = state is None or state.start_ticks != sample.start_ticks
        if state is None or state.start_ticks != sample.start_ticks:
            if state is not None:  # the pid was reused: the old process ended
                state.energy.state = TERMINATED
                _zero(state.energy.watts)
                terminated.append(state.energy)
            vm = self._detector.detect(sample.pid, sample.comm) if self._detector else None
            energy = self._new_process(sample, now_ns, vm)
            state = _ProcessState(sample.start_ticks, energy, 0, vm)
            self._processes[sample.pid] = state
        state.seen = self._tick
        energy = state.energy
        energy.workload = sample.workload  # names may arrive later (k8sattributes)
        energy.cpu_seconds = sample.cpu_seconds
        delta = sample.cpu_delta
        in_workload = sample.workload is not NO_WORKLOAD
        vm_energy = self._vm(state.vm, now_ns) if state.vm is not None else None
        # Containers, pods and VMs count their processes' CPU time as Kepler does: a process's
        # whole CPU time when first seen, then its deltas (so it still grows when one ends).
        used = sample.cpu_seconds if first_seen else delta
        if in_workload:
            for target in (
                self._container(sample.workload, now_ns),
                self._pod(sample.workload, now_ns),
            ):
                if target is not None:
                    target.cpu_seconds += used
        if vm_energy is not None:
            vm_energy.cpu_seconds += used
        for zone, (per_unit, measure) in scale.items():
            joules = per_unit * (delta if measure is _CPU else getattr(sample, measure))
            energy.joules[zone] = energy.joules.get(zone, 0.0) + joules
            energy.watts[zone] = joules * inv_interval
            if in_workload:
                self._add_to_workload(sample.workload, zone, joules, inv_interval, now_ns)
            if vm_energy is not None:
                vm_energy.joules[zone] = vm_energy.joules.get(zone, 0.0) + joules
                vm_energy.watts[zone] = vm_energy.watts.get(zone, 0.0) + joules * inv_interval
        return energy

    def _attribute_gpus(
        self,
        batch: Batch,
        shares: dict[int, list[tuple[str, float]]],
        inv_interval: float,
        now_ns: int,
    ) -> None:
        """Give each GPU process its active joules; a pid /proc did not show still counts."""
        for known in self._processes.values():
            _zero(known.energy.gpu_watts)
        for pid, gpu_joules in shares.items():
            state = self._processes.get(pid)
            if state is None:  # not seen by the usage receivers (another pid namespace?)
                workload = NO_WORKLOAD if self.uses_processes else self._workload_of(pid)
                sample = ProcessSample(pid, 0, "", "", workload, 0.0, 0.0)
                state = _ProcessState(0, self._new_process(sample, now_ns), self._tick)
                self._processes[pid] = state
            if pid not in batch.processes and "process" in self.levels:
                batch.workloads.append(state.energy)  # the usage loop did not list it
            state.seen = self._tick
            energy = state.energy
            if not self.uses_processes:  # names as the container's samples have them now
                energy.workload = self._named(energy.workload)
            workload = energy.workload
            for uuid, joules in gpu_joules:
                energy.gpu_joules[uuid] = energy.gpu_joules.get(uuid, 0.0) + joules
                energy.gpu_watts[uuid] = joules * inv_interval
                if workload is not NO_WORKLOAD:
                    for target in (self._container(workload, now_ns), self._pod(workload, now_ns)):
                        if target is not None:
                            target.gpu_joules[uuid] = target.gpu_joules.get(uuid, 0.0) + joules
                            target.gpu_watts[uuid] = (
                                target.gpu_watts.get(uuid, 0.0) + joules * inv_interval
                            )

    def _workload_of(self, pid: int) -> Workload:
        """The workload of a GPU process from its cgroup: the usage receiver scans
        containers, not processes, when no level needs each process."""
        text = read_small(f"{self.procfs}/{pid}/cgroup")
        return parse_cgroup(text.decode("utf-8", "replace")) if text else NO_WORKLOAD

    def _named(self, w: Workload) -> Workload:
        """``w`` as the container's (or pod's) usage samples name it this tick: a GPU
        process's workload read from its cgroup lacks the names k8sattributes adds."""
        if w.container_id:
            entry = self._containers.get(w.container_id)
        elif w.pod_id:
            entry = self._pods.get(w.pod_id)
        else:
            return w
        return entry.workload if entry is not None else w

    def _sweep_unseen(self, terminated: list[WorkloadEnergy]) -> None:
        """Processes a usage receiver stopped reporting without an exit record have ended."""
        if len(self._processes) == 0:
            return
        tick = self._tick
        gone = [pid for pid, st in self._processes.items() if st.seen != tick]
        for pid in gone:
            energy = self._processes.pop(pid).energy
            energy.state = TERMINATED
            _zero(energy.watts)
            terminated.append(energy)

    # -- workloads --------------------------------------------------------------------

    def _new_process(
        self, sample: ProcessSample, now_ns: int, vm: VirtualMachine | None = None
    ) -> WorkloadEnergy:
        container_id = sample.workload.container_id
        attrs = {
            "pid": str(sample.pid),
            "comm": sample.comm,
            "exe": sample.exe,
            "container_id": container_id,
            # Kepler's order: a hypervisor inside a container is a container process
            "type": "container" if container_id else "vm" if vm is not None else "regular",
            "vm_id": vm.id if vm is not None else "",
        }
        if self.node_name:
            attrs["node_name"] = self.node_name
        return WorkloadEnergy("process", attrs, {}, {}, RUNNING, 0.0, now_ns, sample.workload)

    def _vm(self, vm: VirtualMachine, now_ns: int) -> WorkloadEnergy:
        entry = self._vms.get(vm.id)
        if entry is None:
            attrs = {"vm_id": vm.id, "vm_name": vm.name, "hypervisor": vm.hypervisor}
            if self.node_name:
                attrs["node_name"] = self.node_name
            entry = WorkloadEnergy("vm", attrs, {}, {}, RUNNING, 0.0, now_ns)
            self._vms[vm.id] = entry
        return entry

    def _container(self, w: Workload, now_ns: int) -> WorkloadEnergy | None:
        if not w.container_id:
            return None
        return self._entry(self._containers, "container", w.container_id, w, now_ns)

    def _pod(self, w: Workload, now_ns: int) -> WorkloadEnergy | None:
        if not w.pod_id:
            return None
        return self._entry(self._pods, "pod", w.pod_id, w, now_ns)

    def _entry(
        self,
        table: dict[str, WorkloadEnergy],
        level: LevelName,
        key: str,
        w: Workload,
        now_ns: int,
    ) -> WorkloadEnergy:
        """The container or pod ``key``; its labels are rebuilt when its Workload changes."""
        entry = table.get(key)
        if entry is None or entry.workload is not w:
            attrs = self._identity(level, w)
            if entry is None:
                entry = WorkloadEnergy(level, attrs, {}, {}, RUNNING, 0.0, now_ns, w)
                table[key] = entry
            else:  # names learned later (k8sattributes): same series identity by id
                entry.attributes, entry.workload = attrs, w
        return entry

    def _identity(self, level: LevelName, w: Workload) -> dict[str, str]:
        if level == "container":
            attrs = {
                "container_id": w.container_id,
                "container_name": w.container_name,
                "runtime": w.runtime,
                "pod_id": w.pod_id,
            }
        else:
            attrs = {"pod_id": w.pod_id, "pod_name": w.pod_name, "pod_namespace": w.pod_namespace}
        attrs.update(w.labels)
        if self.node_name:
            attrs["node_name"] = self.node_name
        return attrs

    def _add_to_workload(
        self, w: Workload, zone: str, joules: float, inv_interval: float, now_ns: int
    ) -> None:
        for target in (self._container(w, now_ns), self._pod(w, now_ns)):
            if target is not None:
                target.joules[zone] = target.joules.get(zone, 0.0) + joules
                target.watts[zone] = target.watts.get(zone, 0.0) + joules * inv_interval

    def _mark_running(self, w: Workload, now_ns: int) -> None:
        for target in (self._container(w, now_ns), self._pod(w, now_ns)):
            if target is not None:
                target.state = RUNNING

    def _emit_level(
        self, level: LevelName, table: dict[str, WorkloadEnergy], out: list[WorkloadEnergy]
    ) -> None:
        ended = [key for key, w in table.items() if w.state == TERMINATED]
        terminated = [table.pop(key) for key in ended]
        if level not in self.levels:
            return
        out.extend(w for w in table.values())
        out.extend(self._largest(terminated))

    def _largest(self, ended: list[WorkloadEnergy]) -> list[WorkloadEnergy]:
        if len(ended) <= self.max_terminated:
            return ended
        ended.sort(key=lambda w: sum(w.joules.values()), reverse=True)
        return ended[: self.max_terminated]


def _calibrate_and_model_idle(batch: Batch) -> dict[tuple[str, str, str], float]:
    """Feed calibrating estimators the tick; per modelled zone, the model's idle watts."""
    idle: dict[tuple[str, str, str], float] = {}
    for r in batch.energy:
        if not isinstance(r, ModelReading):
            continue
        if r.calibrator is not None:
            r.calibrator.observe(batch.energy, batch.interval_s, batch.timestamp_ns)
        if r.idle_watts is not None:
            key = (r.component, r.zone, r.source)
            idle[key] = idle.get(key, 0.0) + r.idle_watts
    return idle


def platform_remainder(readings: list[EnergyReading], gpus: list[GpuEnergy]) -> list[EnergyReading]:
    """Zone ``other`` of each platform meter: platform minus CPU package, DRAM and GPUs.

    Only where both a platform meter and component meters report; clamped at 0
    (meters disagree a little: a platform reading below its parts is not negative
    energy).
    """
    platform = [r for r in readings if r.component == "platform" and r.zone == "platform"]
    parts = sum(r.joules for r in readings if r.component == "cpu" and r.zone in _PARTS)
    parts += sum(g.interval_joules for g in gpus)
    if not platform or parts == 0.0:
        return []
    return [
        EnergyReading(
            "platform", "other", r.source, max(0.0, r.joules - parts), r.attributes, r.seconds
        )
        for r in platform
    ]


_PARTS = frozenset({"package", "dram"})

#: Labels that tell two meters of one kind apart (two chassis of a BMC, two BMCs): their
#: readings are separate node series, not one sum.
_METER_IDENTITY = ("bmc_id", "chassis_id", "source_id")


def _zone_key(r: EnergyReading) -> tuple[str, ...]:
    key: tuple[str, ...] = (r.component, r.zone, r.source)
    if r.component == "platform" and r.attributes:
        key += tuple(r.attributes.get(name, "") for name in _METER_IDENTITY)
    return key


#: When two meters report the same CPU zone (rapl and amd_energy's hwmon both give the
#: package), workloads get it from one only, the first here; the node reports both.
SOURCE_PREFERENCE = ("rapl", "hwmon", "acpi", "ipmi", "model")


def _source_rank(zone: ZoneEnergy) -> int:
    try:
        return SOURCE_PREFERENCE.index(zone.source)
    except ValueError:
        return len(SOURCE_PREFERENCE)


_CPU = "cpu_delta"
_INSTRUCTIONS = "instructions"
_CACHE_MISSES = "cache_misses"
_COUNTER_FOR_ZONE = {
    "package": _INSTRUCTIONS,
    "core": _INSTRUCTIONS,
    "uncore": _INSTRUCTIONS,
    "dram": _CACHE_MISSES,
}


def _zero(values: dict[str, float]) -> None:
    for key in values:
        values[key] = 0.0


def state_path(name: str, config: AttributionConfig) -> str | None:
    """Where the learned idle power is kept: ``<state_dir>/<name>-idle.json``."""
    if not config.persist_idle or config.idle == "usage_ratio":
        return None
    folder = config.state_dir or default_state_dir()
    return os.path.join(folder, name.replace("/", "_") + "-idle.json")


def _create(name: str, config: AttributionConfig, host: HostSettings) -> AttributionProcessor:
    return AttributionProcessor(
        config,
        node_name=host.node_name,
        procfs=host.procfs,
        state_path=state_path(name, config),
        sysfs=host.sysfs,
    )


def _declared_metrics() -> tuple[MetricSpec, ...]:
    """The node split and the workload series this processor adds (otel_kepler.metadata)."""
    gpu_node = (*md.GPU, "source", *md.NODE)
    out = [
        *md.specs(
            (m.NODE_CPU_ACTIVE, m.NODE_CPU_IDLE, m.NODE_CPU_ACTIVE_WATTS, m.NODE_CPU_IDLE_WATTS),
            md.ZONE,
        ),
        *md.specs(
            (m.NODE_GPU_ACTIVE, m.NODE_GPU_IDLE, m.NODE_GPU_ACTIVE_WATTS, m.NODE_GPU_IDLE_WATTS),
            gpu_node,
            "with the nvml receiver",
        ),
    ]
    for level, identity in md.LEVEL_LABELS.items():
        note = f"with {level} in levels"
        zone = (*identity, "zone", "state")
        out += md.specs((m.WORKLOAD_JOULES[level], m.WORKLOAD_WATTS[level]), zone, note)
        if level in m.WORKLOAD_CPU_SECONDS:
            out.append(MetricSpec(m.WORKLOAD_CPU_SECONDS[level], (*identity, "state"), note))
        gpu = (*identity, "gpu", "gpu_uuid", "gpu_name", "state")
        gpu_note = f"{note} and the nvml receiver"
        out += md.specs((m.WORKLOAD_GPU_JOULES[level], m.WORKLOAD_GPU_WATTS[level]), gpu, gpu_note)
        io = (*identity, "direction", "state")
        out += md.specs(
            (m.WORKLOAD_NETWORK_BYTES[level], m.WORKLOAD_BLOCK_BYTES[level]),
            io,
            f"{note}, where the usage receiver measures it",
        )
        out += md.specs(
            tuple(m.WORKLOAD_IRQ[(level, v)] for v in ("net_tx", "net_rx", "block")),
            (*identity, "state"),
            f"{note}, with the ebpf receiver",
        )
        out += md.specs(
            (m.WORKLOAD_PLATFORM_JOULES[level], m.WORKLOAD_PLATFORM_WATTS[level]),
            zone,
            f"{note} and other_split",
        )
    return tuple(out)


factory = Factory(
    type="attribution",
    description="Splits node energy over processes, containers, pods and VMs by CPU time",
    config_class=AttributionConfig,
    create=_create,
    metrics=_declared_metrics(),
)

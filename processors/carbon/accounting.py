"""Which joules of a tick count, without counting overlapping zones twice.

**Node.** Where a whole-node meter reports (a platform zone listed in
``platform_zones``: ``platform`` from IPMI/Redfish/ACPI power meters, ``battery``
from a discharging laptop battery), its joules are the node's: it already includes
CPUs, memory, GPUs, fans and PSU losses. Otherwise the node is its CPU zones
(:func:`cpu_joules`) plus every GPU. Where several sources report the same zone,
one is used, by :data:`SOURCE_PREFERENCE` (a model's estimate last).

**CPU zones** (:func:`cpu_joules`): RAPL's core and uncore lie inside package, and
psys is the whole SoC/platform domain (which holds package and DRAM), so the count
is package + dram; without package, psys; without either, every zone other than
core and uncore (hwmon's per-socket zones, an estimator's package).

**Workloads** get only their attributed joules, by the same zone rule, plus their
GPU joules. A tick's joules are the difference of the workload's cumulative joules
since the tick before (exact, and immune to a zone that skipped a tick), kept per
workload object while attribution keeps reporting it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from otel_kepler.data import TERMINATED, Batch, WorkloadEnergy

J_PER_KWH = 3.6e6
SECONDS_PER_YEAR = 365 * 86400.0  # the SCI specification's year
NESTED_CPU_ZONES = frozenset({"core", "uncore"})
#: Measured sources first; any other after these (alphabetically); a model last.
SOURCE_PREFERENCE = ("rapl", "ipmi", "redfish", "acpi", "hwmon", "nvml")
MODEL_SOURCE = "model"

T = TypeVar("T")


def grams_per_joule(intensity: float, pue: float) -> float:
    """gCO2e per joule: J / 3.6e6 (kWh/J) x intensity (gCO2e/kWh) x PUE."""
    return intensity * pue / J_PER_KWH


def cpu_joules(zones: Mapping[str, float]) -> float:
    """The CPU joules of one set of zones, nested zones counted once."""
    if "package" in zones:
        return zones["package"] + zones.get("dram", 0.0)
    if "psys" in zones:
        return zones["psys"]
    outer = [j for zone, j in zones.items() if zone not in NESTED_CPU_ZONES]
    return sum(outer) if outer else sum(zones.values())


def _rank(source: str) -> tuple[int, str]:
    if source in SOURCE_PREFERENCE:
        return SOURCE_PREFERENCE.index(source), ""
    return (len(SOURCE_PREFERENCE) + (source == MODEL_SOURCE), source)


def preferred(by_source: Mapping[str, T]) -> T:
    """The value of the preferred source."""
    return by_source[min(by_source, key=_rank)]


Part = tuple[str, str, str, float]  # component, zone, source, joules of the tick


def node_parts(batch: Batch) -> tuple[list[Part], float]:
    """This tick's (component, zone, source, joules) and the NVML GPUs' joules.

    From attribution's node zones; where the node level is not emitted (or no
    attribution ran) from the receivers' readings, which hold the same joules.
    """
    parts: list[Part]
    if batch.node_zones or batch.node_gpus:
        parts = [(z.component, z.zone, z.source, z.interval_joules) for z in batch.node_zones]
        return parts, float(sum(g.interval_joules for g in batch.node_gpus))
    parts = [(r.component, r.zone, r.source, r.joules) for r in batch.energy]
    return parts, float(sum(g.joules for g in batch.gpus))


def node_joules(batch: Batch, platform_zones: Sequence[str]) -> float:
    """The node's operational joules of this tick (idle included)."""
    parts, gpu = node_parts(batch)
    platform: dict[str, dict[str, float]] = {}  # zone -> source -> joules
    cpu: dict[str, dict[str, float]] = {}  # source -> zone -> joules
    for component, zone, source, joules in parts:
        if component == "platform":
            by_source = platform.setdefault(zone, {})
            by_source[source] = by_source.get(source, 0.0) + joules
        elif component == "cpu":
            zones = cpu.setdefault(source, {})
            zones[zone] = zones.get(zone, 0.0) + joules
        elif component == "gpu":
            gpu += joules
    for zone in platform_zones:
        if zone in platform:
            return preferred(platform[zone])
    return (cpu_joules(preferred(cpu)) if cpu else 0.0) + gpu


@dataclass(slots=True)
class _Mark:
    workload: WorkloadEnergy  # held, so that its id() cannot be reused while marked
    joules: dict[str, float]  # cumulative per zone at the last tick
    gpu_joules: float
    tick: int


class WorkloadMeter:
    """This tick's joules of each workload, from the difference of its cumulative joules.

    A workload is remembered until attribution reports it terminated (it is then
    forgotten there too) or after it went unreported for ``forget_after`` ticks
    (terminated workloads beyond attribution's ``max_terminated`` are never
    reported). One that comes back after being forgotten is measured for that tick
    from its watts x the interval.
    """

    def __init__(self, forget_after: int = 12) -> None:
        self.forget_after = forget_after
        self._marks: dict[int, _Mark] = {}
        self._tick = 0

    def __len__(self) -> int:
        return len(self._marks)

    def joules(self, w: WorkloadEnergy, interval: float) -> float:
        gpu = sum(w.gpu_joules.values()) if w.gpu_joules else 0.0
        mark = self._marks.get(id(w))
        if mark is None:
            self._marks[id(w)] = _Mark(w, dict(w.joules), gpu, self._tick)
            if w.co2_grams is None:  # new: all it has is since it was first reported
                return cpu_joules(w.joules) + gpu
            gpu_watts = sum(w.gpu_watts.values()) if w.gpu_watts else 0.0
            return (cpu_joules(w.watts) + gpu_watts) * interval
        deltas = {zone: j - mark.joules.get(zone, 0.0) for zone, j in w.joules.items()}
        tick_gpu = gpu - mark.gpu_joules
        mark.joules, mark.gpu_joules, mark.tick = dict(w.joules), gpu, self._tick
        return cpu_joules(deltas) + tick_gpu

    def end_tick(self, reported: Iterable[WorkloadEnergy]) -> None:
        """Forget the terminated and the long unreported; call after each tick's joules()."""
        for w in reported:
            if w.state == TERMINATED:
                self._marks.pop(id(w), None)
        oldest = self._tick - self.forget_after
        stale = [key for key, mark in self._marks.items() if mark.tick < oldest]
        for key in stale:
            del self._marks[key]
        self._tick += 1

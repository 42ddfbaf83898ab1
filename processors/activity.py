"""Network and block activity per workload, and the platform remainder split by it.

Called by the ``attribution`` processor at the end of each tick (one hook), so that it
sees the same processes and the same zones as the CPU split.

Activity totals. The usage receivers report counters as the kernel keeps them
(``/proc/PID/io``, cgroup io.stat, namespace interface counters, eBPF socket-buffer
counters) and softirqs per interval. Here they become monotonic totals per process,
container and pod, from when the agent first saw the workload: a counter that goes
backwards has restarted (a recreated cgroup or interface), and its new value is what
happened since. On the agent's first tick counters only prime; a workload first seen
later brings its whole counter (it started in between), as CPU time does. Ended
workloads keep their totals until attribution has emitted them as terminated.

- block bytes of a container: its cgroup's counters, else the sum of its processes';
  of a pod: the sum of its containers'.
- network bytes of a pod: its network namespace's counters (no privilege), else the
  sum of its containers' (eBPF, per cgroup); of a container: its cgroup's (eBPF).
- softirqs: the sum of the processes'.

The ``other`` split (``other_split``, off by default: Kepler gives zone ``other`` to
nobody). The platform meter's remainder, platform minus CPU package, DRAM and GPUs
(:func:`otel_kepler.processors.attribution.platform_remainder`), is fans, disks,
network cards and the rest of the board. With ``enabled``, a process gets, per tick::

    E_other x (w_cpu x cpu_i / sum cpu + w_net x net_i / sum net + w_block x block_i / sum block)

with the weights of the dimensions that saw no activity this tick given to the others
(normalised over those with some), so the processes' shares add up to E_other exactly;
a tick with no activity at all leaves E_other with the node. A process's network bytes
are its pod's (or container's) shared out by CPU time; its block bytes are its own
(``/proc/PID/io``), scaled to its container's cgroup counters where both exist.
Containers and pods sum their processes. Zone ``other`` comes from one kind of
platform meter (:data:`PLATFORM_PREFERENCE`), never the sum of two that measure the same
machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from otel_kepler.data import (
    NO_WORKLOAD,
    Batch,
    ProcessSample,
    ZoneEnergy,
)
from otel_kepler.schema import ConfigError

#: Names of the activity totals (WorkloadEnergy.activity keys).
RX, TX = "network_rx_bytes", "network_tx_bytes"
READ, WRITE = "block_read_bytes", "block_write_bytes"
NET_TX_IRQ, NET_RX_IRQ, BLOCK_IRQ = "net_tx_irq", "net_rx_irq", "block_irq"


@dataclass
class OtherSplit:
    """How the platform remainder (zone ``other``) is given to workloads."""

    enabled: bool = field(
        default=False,
        metadata={
            "doc": "split zone other (platform less CPU, DRAM and GPUs) over workloads by "
            "a weighted mix of CPU time, network bytes and block bytes; off: it stays "
            "with the node, as in Kepler"
        },
    )
    cpu: float = field(default=0.7, metadata={"doc": "weight of CPU time"})
    network: float = field(default=0.2, metadata={"doc": "weight of network bytes (rx + tx)"})
    block: float = field(default=0.1, metadata={"doc": "weight of block bytes (read + write)"})

    def validate(self) -> None:
        for name in ("cpu", "network", "block"):
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigError(name, f"must be 0 or more, got {value:g}")
        if self.enabled and self.cpu + self.network + self.block <= 0:
            raise ConfigError("cpu", "the weights cannot all be 0")


class _Counter:
    """One kernel counter turned into a monotonic total (a restart counts from 0)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = -1

    def delta(self, value: int, primed: bool) -> int:
        """What the counter advanced by; its first value counts only once ``primed``."""
        if value < 0:
            return 0
        last, self.last = self.last, value
        if last < 0:
            return value if primed else 0
        return value - last if value >= last else value


Deltas = dict[str, float]

#: Ticks a workload stays known after it was last seen.
FORGET_AFTER = 3


@dataclass(slots=True)
class _Process:
    start_ticks: int
    read: _Counter = field(default_factory=_Counter)
    write: _Counter = field(default_factory=_Counter)
    totals: dict[str, float] = field(default_factory=dict)
    other: float = 0.0
    seen: int = 0
    irqs: bool = False  # softirqs were counted: report 0 increments too


#: The deltas of a process whose counters did not move (shared, never written).
_NOTHING: Deltas = {}


@dataclass(slots=True)
class _Group:
    """A container or pod: its counters and totals."""

    counters: dict[str, _Counter] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)
    other: float = 0.0
    seen: int = 0

    def advance(self, name: str, value: int, primed: bool) -> float:
        counter = self.counters.get(name)
        if counter is None:
            counter = self.counters[name] = _Counter()
        return float(counter.delta(value, primed))


@dataclass(slots=True)
class _Tick:
    """One process in this tick: its deltas, and its measures for the split."""

    sample: ProcessSample
    state: _Process
    deltas: Deltas
    block: float = 0.0
    network: float = 0.0
    other: float = 0.0


class ActivityAccounting:
    """Activity totals per workload and, when enabled, the ``other`` split."""

    def __init__(self, split: OtherSplit | None = None) -> None:
        self.split = split or OtherSplit()
        self._processes: dict[int, _Process] = {}
        self._containers: dict[str, _Group] = {}
        self._pods: dict[str, _Group] = {}
        self._tick = 0
        #: joules of zone other left with the node (no activity in a tick), cumulative
        self.unattributed_joules = 0.0

    def process(self, batch: Batch, zones: Iterable[ZoneEnergy]) -> None:
        """Account this tick's activity and split its zone ``other``; fill the batch's
        workloads' ``activity`` and ``other_*`` fields."""
        self._tick += 1
        primed = self._tick > 1
        ticks = self._process_deltas(batch, primed)
        containers, pods = self._group_deltas(batch, ticks, primed)
        if self.split.enabled:
            other = other_joules(zones)
            self._measures(ticks, containers, pods)
            self._split(ticks, other)
        self._fill(batch)

    # -- activity ---------------------------------------------------------------------

    def _process_deltas(self, batch: Batch, primed: bool) -> list[_Tick]:
        ticks = []
        tick = self._tick
        for sample in (*batch.processes.values(), *batch.exited):
            state = self._processes.get(sample.pid)
            if state is None or state.start_ticks != sample.start_ticks:
                state = self._processes[sample.pid] = _Process(sample.start_ticks)
            if state.seen == tick:
                continue  # a pid reused within the tick: the live one came first
            state.seen = tick
            if (
                sample.read_bytes == state.read.last
                and sample.write_bytes == state.write.last
                and not (sample.net_tx_irq or sample.net_rx_irq or sample.block_irq)
                and not state.irqs
            ):  # nothing moved (most processes, most ticks): no work
                ticks.append(_Tick(sample, state, _NOTHING))
                continue
            deltas: Deltas = {}
            if sample.read_bytes >= 0:
                deltas[READ] = float(state.read.delta(sample.read_bytes, primed))
                deltas[WRITE] = float(state.write.delta(sample.write_bytes, primed))
            for name in (NET_TX_IRQ, NET_RX_IRQ, BLOCK_IRQ):
                count = getattr(sample, name)
                if count or name in state.totals:
                    deltas[name] = float(count)
                    state.irqs = True
            _accumulate(state.totals, deltas)
            ticks.append(_Tick(sample, state, deltas))
        return ticks

    def _group(self, table: dict[str, _Group], key: str) -> _Group:
        group = table.get(key)
        if group is None:
            group = table[key] = _Group()
        group.seen = self._tick
        return group

    def _group_deltas(
        self, batch: Batch, ticks: list[_Tick], primed: bool
    ) -> tuple[dict[str, Deltas], dict[str, Deltas]]:
        """This tick's deltas by container and by pod (also added to their totals)."""
        containers: dict[str, Deltas] = {}
        pods: dict[str, Deltas] = {}
        pod_of: dict[str, str] = {}
        for container, io in batch.container_io.items():
            group = self._group(self._containers, container)
            deltas = containers.setdefault(container, {})
            if io.rx_bytes >= 0:
                deltas[RX] = group.advance(RX, io.rx_bytes, primed)
                deltas[TX] = group.advance(TX, io.tx_bytes, primed)
            if io.read_bytes >= 0:
                deltas[READ] = group.advance(READ, io.read_bytes, primed)
                deltas[WRITE] = group.advance(WRITE, io.write_bytes, primed)
        for pod, io in batch.pod_io.items():
            group = self._group(self._pods, pod)
            if io.rx_bytes >= 0:
                deltas = pods.setdefault(pod, {})
                deltas[RX] = group.advance(RX, io.rx_bytes, primed)
                deltas[TX] = group.advance(TX, io.tx_bytes, primed)
        measured = {c for c, d in containers.items() if READ in d}  # block from the cgroup
        pod_network = {p for p, d in pods.items() if RX in d}
        for t in ticks:  # processes: block where the cgroup has none, softirqs
            w = t.sample.workload
            if w is NO_WORKLOAD:
                continue
            if w.container_id:
                self._group(self._containers, w.container_id)
                deltas = containers.setdefault(w.container_id, {})
                for name, value in t.deltas.items():
                    if name in (READ, WRITE) and w.container_id in measured:
                        continue
                    deltas[name] = deltas.get(name, 0.0) + value
                if w.pod_id:
                    pod_of[w.container_id] = w.pod_id
            if w.pod_id:
                self._group(self._pods, w.pod_id)
                deltas = pods.setdefault(w.pod_id, {})
                for name in (NET_TX_IRQ, NET_RX_IRQ, BLOCK_IRQ):
                    if name in t.deltas:
                        deltas[name] = deltas.get(name, 0.0) + t.deltas[name]
        for container, pod in pod_of.items():  # pods: block (and eBPF network) summed
            deltas = pods.setdefault(pod, {})
            for name, value in containers.get(container, {}).items():
                if name in (READ, WRITE) or (name in (RX, TX) and pod not in pod_network):
                    deltas[name] = deltas.get(name, 0.0) + value
        for table, by_key in ((self._containers, containers), (self._pods, pods)):
            for key, deltas in by_key.items():
                _accumulate(self._group(table, key).totals, deltas)
        return containers, pods

    # -- the other split ----------------------------------------------------------------

    def _measures(
        self, ticks: list[_Tick], containers: dict[str, Deltas], pods: dict[str, Deltas]
    ) -> None:
        """Each process's block and network bytes of this tick, for the split."""
        members: dict[tuple[str, str], list[_Tick]] = {}
        for t in ticks:
            t.block = t.deltas.get(READ, 0.0) + t.deltas.get(WRITE, 0.0)
            w = t.sample.workload
            if w.container_id:
                members.setdefault(("container", w.container_id), []).append(t)
            if w.pod_id:
                members.setdefault(("pod", w.pod_id), []).append(t)
        for container, deltas in containers.items():
            group = members.get(("container", container), [])
            if READ in deltas and group:  # the cgroup's bytes, shared as the processes did
                cgroup = deltas[READ] + deltas[WRITE]
                own = [t.block for t in group]
                for t, part in zip(group, _shares(own, group, cgroup), strict=True):
                    t.block = part
        for (level, key), group in members.items():
            deltas = (pods if level == "pod" else containers).get(key, {})
            pod = group[0].sample.workload.pod_id
            if level == "container" and pod and RX in pods.get(pod, {}):
                continue  # the pod's namespace counts it (below)
            if RX not in deltas:
                continue
            if level == "pod" and RX not in pods.get(key, {}):
                continue
            network = deltas[RX] + deltas[TX]
            cpu = [t.sample.cpu_delta for t in group]
            for t, part in zip(group, _shares(cpu, group, network), strict=True):
                t.network += part

    def _split(self, ticks: list[_Tick], other: float) -> None:
        """Give each process its share of ``other`` joules; conservation is exact."""
        if other <= 0.0:
            return
        split = self.split
        dims = [
            (split.cpu, [t.sample.cpu_delta for t in ticks]),
            (split.network, [t.network for t in ticks]),
            (split.block, [t.block for t in ticks]),
        ]
        live = [(w, m, sum(m)) for w, m in dims if w > 0 and sum(m) > 0]
        weights = sum(w for w, _, _ in live)
        if not live:
            self.unattributed_joules += other
            return
        for i, t in enumerate(ticks):
            share = sum(w * m[i] / total for w, m, total in live) / weights
            t.other = other * share
            t.state.other += t.other
            w = t.sample.workload
            for table, key in ((self._containers, w.container_id), (self._pods, w.pod_id)):
                if key:
                    self._group(table, key).other += t.other

    # -- output -------------------------------------------------------------------------

    def _fill(self, batch: Batch) -> None:
        inv = 1.0 / batch.interval_s if batch.interval_s > 0 else 0.0
        enabled = self.split.enabled
        for entry in batch.workloads:
            found: _Process | _Group | None
            if entry.level == "process":
                found = self._processes.get(int(entry.attributes.get("pid", "-1")))
            elif entry.level == "container":
                found = self._containers.get(entry.attributes.get("container_id", ""))
            elif entry.level == "pod":
                found = self._pods.get(entry.attributes.get("pod_id", ""))
            else:
                continue
            if found is None:
                continue
            entry.activity = found.totals
            if enabled:
                before = entry.other_joules or 0.0
                entry.other_joules = found.other
                entry.other_watts = (found.other - before) * inv
        self._forget()

    def _forget(self) -> None:
        """Drop what was not seen for a few ticks (attribution has emitted its end).

        Not at once: a namespace or cgroup missed for one tick (a process that was
        its only member exec-ing, a read racing an exit) must not restart its counter,
        or its whole value would count a second time.
        """
        oldest = self._tick - FORGET_AFTER
        for pid in [k for k, v in self._processes.items() if v.seen <= oldest]:
            del self._processes[pid]
        for table in (self._containers, self._pods):
            for key in [k for k, v in table.items() if v.seen <= oldest]:
                del table[key]


#: Where two kinds of platform meter report (a BMC and ACPI), workloads get zone other
#: from one only, the first here (the node reports both); meters of one kind that are
#: told apart (two chassis) measure different hardware and are summed.
PLATFORM_PREFERENCE = ("ipmi", "redfish", "acpi", "hwmon", "model")


def other_joules(zones: Iterable[ZoneEnergy]) -> float:
    """This tick's joules of zone ``other`` from one source (see PLATFORM_PREFERENCE)."""
    by_source: dict[str, float] = {}
    for z in zones:
        if z.component == "platform" and z.zone == "other":
            by_source[z.source] = by_source.get(z.source, 0.0) + z.interval_joules
    if not by_source:
        return 0.0
    rank = {source: i for i, source in enumerate(PLATFORM_PREFERENCE)}
    best = min(by_source, key=lambda source: (rank.get(source, len(rank)), source))
    return by_source[best]


def _accumulate(totals: dict[str, float], deltas: Deltas) -> None:
    for name, value in deltas.items():
        totals[name] = totals.get(name, 0.0) + value


def _shares(weights: list[float], group: list[_Tick], amount: float) -> list[float]:
    """``amount`` split in proportion to ``weights``, else by CPU time, else evenly."""
    total = sum(weights)
    if total <= 0:
        weights = [t.sample.cpu_delta for t in group]
        total = sum(weights)
    if total <= 0:
        return [amount / len(group)] * len(group)
    return [amount * w / total for w in weights]

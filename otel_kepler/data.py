"""The data one tick carries through a pipeline.

Receivers return a :class:`Contribution` for the tick. The graph merges the
contributions of a pipeline's receivers into one :class:`Batch`; processors
read and extend that batch (attribution fills ``node_zones`` and
``workloads``); at the end :mod:`otel_kepler.convert` turns the batch into
OpenTelemetry metric data, the one place where that conversion happens.

Energies inside a batch are joules of *this interval* unless a field says
``total``: cumulative totals are kept by the stateful processors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

Component = Literal["cpu", "platform", "gpu"]
Level = Literal["node", "process", "container", "pod", "vm"]

RUNNING = "running"
TERMINATED = "terminated"


@dataclass(slots=True)
class EnergyReading:
    """Energy a meter (or model) saw on one zone during one tick.

    ``joules`` is already corrected for counter wrap and summed over sockets.
    """

    component: Component  # which metric family: kepler.node.<component>.*
    zone: str  # package, core, uncore, dram, psys, platform, ...
    source: str  # rapl, hwmon, acpi, ipmi, nvml, model, ...
    joules: float
    attributes: dict[str, str] | None = None  # extra labels, e.g. the model name
    #: seconds the energy was measured over; None: the service sets the time since the
    #: receiver's previous collect (watts divide by it, not by the tick's start-to-start)
    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Workload:
    """Where a process runs: its container and pod as far as the cgroup tells.

    Shared (one object) by all processes of one container. Immutable: a
    processor such as ``k8sattributes`` that learns names makes a new one
    with ``dataclasses.replace``.
    """

    container_id: str = ""
    runtime: str = ""  # docker, containerd, cri-o, podman
    pod_id: str = ""
    container_name: str = ""
    pod_name: str = ""
    pod_namespace: str = ""
    #: extra labels of the container and pod (selected pod labels and annotations)
    labels: tuple[tuple[str, str], ...] = ()


NO_WORKLOAD = Workload()


@dataclass(slots=True)
class ProcessSample:
    """One process as a usage receiver (procfs, ebpf) saw it this tick."""

    pid: int
    start_ticks: int  # start time since boot in clock ticks: tells a reused pid apart
    comm: str
    exe: str
    workload: Workload
    cpu_seconds: float  # cumulative user+system CPU time
    cpu_delta: float  # CPU seconds used during this interval
    #: hardware counters during this interval, where the usage receiver reads them (eBPF)
    cycles: int = 0
    instructions: int = 0
    cache_misses: int = 0
    #: storage I/O the process caused, cumulative as /proc/PID/io says (read_bytes,
    #: write_bytes); -1 where that file is not readable (another user's process)
    read_bytes: int = -1
    write_bytes: int = -1
    #: softirqs raised while the process was on the CPU during this interval (eBPF, as
    #: Kepler counted them from irq:softirq_entry): NET_TX, NET_RX and BLOCK vectors
    net_tx_irq: int = 0
    net_rx_irq: int = 0
    block_irq: int = 0


@dataclass(slots=True)
class GpuSample:
    """One GPU during one tick, as the ``nvml`` receiver saw it.

    ``joules`` comes from the device's energy counter (the truth); ``watts`` is the
    power read at the end of the tick. ``sm_util`` holds each process's average
    streaming-multiprocessor utilisation over the interval, in percent, from the
    utilisation samples; ``running`` the pids of the compute processes seen running.
    Either may be empty (no samples is "nothing ran", not a failure).
    """

    index: int
    uuid: str
    name: str
    joules: float
    watts: float
    sm_util: dict[int, float] = field(default_factory=dict)
    running: list[int] = field(default_factory=list)
    idle_watts: float | None = None  # configured idle power; None: learn it
    attributes: dict[str, str] | None = None  # e.g. the MIG instance


@dataclass(slots=True)
class IoCounters:
    """Cumulative I/O counters of one container or pod, as the kernel reports them.

    Counters may restart (a recreated cgroup or interface): the processor that sums
    them treats a counter going backwards as a restart. -1: not measured.
    """

    rx_bytes: int = -1  # network, received
    tx_bytes: int = -1  # network, sent
    read_bytes: int = -1  # block devices
    write_bytes: int = -1


@dataclass(slots=True)
class Contribution:
    """What one receiver returns for one tick. Fields it does not fill stay empty.

    ``rejected`` counts the readings dropped this tick, by reason. The reasons are a
    fixed vocabulary (:attr:`REASONS`), the same for every receiver:

    ``unreadable``
        the file or call failed (a vanished file, an I/O error, an NVML error, no
        reading from the BMC);
    ``empty``
        the read returned nothing;
    ``not_a_number``
        the read returned text that is not a number (or a NaN);
    ``negative``
        a counter read below zero;
    ``over_range``
        a counter read above its published maximum (``max_energy_range_uj``);
    ``backwards``
        a counter read below the last good reading and not as a plausible wrap (a
        reset, a driver reload);
    ``implausible_jump``
        a counter rose by more than its ``max_watts`` over the time since the last good
        reading allows;
    ``implausible_power``
        a power reading below zero, above ``max_watts``, or the firmware's "no reading"
        value (0xFFFFFFFF mW).
    """

    REASONS: ClassVar[tuple[str, ...]] = (
        "unreadable",
        "empty",
        "not_a_number",
        "negative",
        "over_range",
        "backwards",
        "implausible_jump",
        "implausible_power",
    )

    energy: list[EnergyReading] = field(default_factory=list)
    cpu_usage_ratio: float | None = None
    node_cpu_seconds: float | None = None  # busy CPU seconds of the whole node this interval
    processes: dict[int, ProcessSample] | None = None
    exited: list[ProcessSample] = field(default_factory=list)
    gauges: list[GaugeValue] = field(default_factory=list)
    gpus: list[GpuSample] = field(default_factory=list)
    #: readings dropped this tick: reason (one of REASONS) -> count
    rejected: dict[str, int] = field(default_factory=dict)
    #: I/O counters by container id (cgroup io.stat, eBPF socket-buffer programs)
    container_io: dict[str, IoCounters] = field(default_factory=dict)
    #: network counters by pod uid, from each pod's network namespace (no privilege)
    pod_io: dict[str, IoCounters] = field(default_factory=dict)

    def reject(self, reason: str, n: int = 1) -> None:
        """Count ``n`` readings dropped for ``reason`` (one of :attr:`REASONS`)."""
        if reason not in self.REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        if n > 0:
            self.rejected[reason] = self.rejected.get(reason, 0) + n

    @property
    def rejected_total(self) -> int:
        """All readings dropped this tick, whatever the reason."""
        return sum(self.rejected.values())


@dataclass(slots=True)
class GaugeValue:
    """A free-standing gauge a receiver reports as is (temperatures, fan speeds...)."""

    name: str
    unit: str
    description: str
    value: float
    attributes: dict[str, str]


@dataclass(slots=True)
class ZoneEnergy:
    """Node energy of one zone after attribution: totals since the agent started."""

    component: Component
    zone: str
    source: str
    attributes: dict[str, str] | None
    interval_joules: float
    watts: float
    total_joules: float
    active_total_joules: float
    idle_total_joules: float
    #: seconds interval_joules was measured over (watts divide by it); 0: the tick's interval
    seconds: float = 0.0


@dataclass(slots=True)
class GpuEnergy:
    """One GPU after attribution: totals since the agent started."""

    uuid: str
    attributes: dict[str, str]  # gpu, gpu_uuid, gpu_name, source (and MIG labels)
    interval_joules: float
    watts: float
    total_joules: float
    active_total_joules: float
    idle_total_joules: float
    idle_watts: float | None  # the idle power in use: configured or learned


@dataclass(slots=True)
class WorkloadEnergy:
    """Energy of one process, container or pod, cumulative per zone."""

    level: Level
    attributes: dict[str, str]  # identity labels, without zone and state
    joules: dict[str, float]  # zone -> total joules since first seen
    watts: dict[str, float]  # zone -> watts over the last interval
    state: str = RUNNING
    cpu_seconds: float = 0.0  # cumulative CPU time (of its processes, for a workload)
    start_time_ns: int = 0  # when the agent first saw it: start of its cumulative sums
    workload: Workload = NO_WORKLOAD
    gpu_joules: dict[str, float] = field(default_factory=dict)  # GPU uuid -> total joules
    gpu_watts: dict[str, float] = field(default_factory=dict)  # GPU uuid -> last interval
    co2_grams: float | None = None  # cumulative gCO2e, once the carbon processor ran
    #: cumulative activity since first seen, only what was measured: network_rx_bytes,
    #: network_tx_bytes, block_read_bytes, block_write_bytes, net_tx_irq, net_rx_irq,
    #: block_irq (see processors/activity.py)
    activity: dict[str, float] = field(default_factory=dict)
    #: the platform remainder (zone ``other``) given to it by activity, when enabled
    other_joules: float | None = None  # cumulative
    other_watts: float = 0.0  # over the last interval


@dataclass(slots=True)
class CarbonState:
    """What the carbon processor computed for the node, cumulative since the agent started."""

    intensity: float  # gCO2e/kWh in force during this tick
    provider: str  # which provider gave it: static, region, file, electricitymaps...
    region: str  # the grid zone or region it applies to ("" if none)
    node_grams: float  # operational emissions of the node (PUE applied)
    embodied_grams: float = 0.0  # the node's embodied emissions amortised so far


@dataclass(slots=True)
class Batch:
    """One tick of one pipeline."""

    timestamp_ns: int  # wall clock at the end of the interval
    interval_s: float  # seconds since the previous tick (monotonic)
    node_name: str
    energy: list[EnergyReading] = field(default_factory=list)
    cpu_usage_ratio: float | None = None
    node_cpu_seconds: float | None = None
    processes: dict[int, ProcessSample] = field(default_factory=dict)
    exited: list[ProcessSample] = field(default_factory=list)
    gauges: list[GaugeValue] = field(default_factory=list)
    gpus: list[GpuSample] = field(default_factory=list)
    # Filled by the attribution processor:
    node_zones: list[ZoneEnergy] = field(default_factory=list)
    node_gpus: list[GpuEnergy] = field(default_factory=list)
    workloads: list[WorkloadEnergy] = field(default_factory=list)
    # Filled by the carbon processor:
    carbon: CarbonState | None = None
    has_usage: bool = False  # some receiver reported processes this tick
    container_io: dict[str, IoCounters] = field(default_factory=dict)
    pod_io: dict[str, IoCounters] = field(default_factory=dict)

    def add(self, part: Contribution) -> None:
        self.energy.extend(part.energy)
        if part.cpu_usage_ratio is not None:
            self.cpu_usage_ratio = part.cpu_usage_ratio
        if part.node_cpu_seconds is not None:
            self.node_cpu_seconds = part.node_cpu_seconds
        if part.processes is not None:
            self.has_usage = True
            self.processes.update(part.processes)
        self.exited.extend(part.exited)
        self.gauges.extend(part.gauges)
        self.gpus.extend(part.gpus)
        self.container_io.update(part.container_io)
        self.pod_io.update(part.pod_io)

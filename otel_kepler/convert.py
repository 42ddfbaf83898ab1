"""Batch -> :class:`~otel_kepler.snapshot.Snapshot`: the one place where conversion happens.

One converter per pipeline (it keeps state between ticks):

* **Node series** under the node's resource: per zone joules and watts, the CPU
  zones' active/idle joules and watts, the usage ratio, GPUs, carbon, the
  receivers' own gauges, ``kepler_node_cpu_info``, ``kepler_build_info`` and the
  agent's self-telemetry.
* **Node energy without attribution.** A pipeline without the ``attribution``
  processor still exports every receiver's node energy and power: the
  converter accumulates the readings itself (``node_totals=True``).
* **Workload series** (process, container, pod, vm) each under the workload's
  own resource (:mod:`otel_kepler.resource`), with Kepler's labels on the points.
  A workload's :class:`~otel_kepler.snapshot.Shape` is kept while its labels,
  state and zones stay the same, so exporters reuse their encodings.
* **Ended workloads are retained.** A workload that ended is carried, with its
  final totals, in every snapshot for ``terminated_retention`` seconds, so every
  scraper of an HA pair sees it and a push outage shorter than that loses none.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.resources import Resource

from otel_kepler import __version__
from otel_kepler import metrics as m
from otel_kepler.data import TERMINATED, Batch, WorkloadEnergy
from otel_kepler.metrics import MetricDesc
from otel_kepler.resource import ResourceAttributes, node_attributes, workload_attributes
from otel_kepler.snapshot import Block, Labels, Series, Shape, Snapshot

DEFAULT_TERMINATED_RETENTION = 60.0


@dataclass(slots=True)
class AgentStats:
    """The agent's own telemetry at the end of a tick."""

    tick_seconds: float = 0.0
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # exporter id -> batches
    failed: dict[str, int] = field(default_factory=dict)  # exporter id -> batches
    export_cpu: dict[str, float] = field(default_factory=dict)  # exporter id -> CPU seconds
    export_duration: dict[str, float] = field(default_factory=dict)  # exporter id -> seconds
    sent_points: dict[str, int] = field(default_factory=dict)  # exporter id -> points
    receiver_errors: dict[str, int] = field(default_factory=dict)  # receiver id -> ticks
    #: (receiver id, reason) -> readings
    rejected: dict[tuple[str, str], int] = field(default_factory=dict)


class _NodeSeries:
    """Collects the node's series of one tick and reuses the last shape when they match."""

    def __init__(self) -> None:
        self.items: list[tuple[MetricDesc, Attrs, int]] = []
        self.values: list[float] = []

    def add(self, desc: MetricDesc, attrs: Attrs, value: float, start_ns: int = 0) -> None:
        self.items.append((desc, attrs, start_ns))
        self.values.append(value)


Attrs = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class _Cached:
    workload: WorkloadEnergy
    attributes: dict[str, str]
    signature: tuple[Any, ...]
    shape: Shape


class Converter:
    """Turns one pipeline's batches into snapshots."""

    def __init__(
        self,
        resource: Resource | ResourceAttributes,
        start_ns: int,
        node_name: str = "",
        *,
        node_totals: bool = False,
        terminated_retention: float = DEFAULT_TERMINATED_RETENTION,
        procfs: str = "/proc",
        semconv: bool = False,
    ) -> None:
        if isinstance(resource, Resource):
            resource = node_attributes(resource)
        self.resource = resource
        self.start_ns = start_ns
        self.node_name = node_name
        self.node_totals = node_totals
        self.semconv = semconv
        self.retention_ns = int(max(0.0, terminated_retention) * 1e9)
        self._node: Attrs = (("node_name", node_name),) if node_name else ()
        self._labels: dict[Attrs, Labels] = {}
        self._node_shape: Shape | None = None
        self._node_signature: list[tuple[MetricDesc, Attrs, int]] = []
        self._cache: dict[int, _Cached] = {}
        self._retained: dict[tuple[str, ...], tuple[int, Block]] = {}
        self._gpu_labels: dict[str, Attrs] = {}  # GPU uuid -> gpu, gpu_uuid, gpu_name labels
        self._totals: dict[tuple[Any, ...], float] = {}  # node energy without attribution
        self._previous: dict[tuple[Any, ...], float] = {}  # active/idle totals a tick ago
        self._static = self._static_series(procfs)

    # -- the tick ---------------------------------------------------------------------

    def convert(self, batch: Batch, stats: AgentStats | None = None) -> Snapshot:
        node = _NodeSeries()
        has_energy = self._node_energy(node, batch)
        if batch.node_gpus or (self.node_totals and batch.gpus):
            self._gpus(node, batch)
        if batch.carbon is not None:
            self._carbon(node, batch)
        for g in batch.gauges:
            desc = MetricDesc(g.name, g.unit, "gauge", g.description)
            node.add(desc, _sorted_attrs(g.attributes), g.value)
        for desc, attrs in self._static:
            node.add(desc, attrs, 1.0)
        if stats is not None:
            self._agent(node, stats)
        blocks = [Block(self._node_block_shape(node), node.values)]
        self._workloads(blocks, batch.workloads, batch.timestamp_ns, batch.interval_s)
        return Snapshot(batch.timestamp_ns, blocks, has_energy)

    # -- node -------------------------------------------------------------------------

    def _node_block_shape(self, node: _NodeSeries) -> Shape:
        if self._node_shape is None or node.items != self._node_signature:
            series = [
                Series(desc, self._interned(attrs), start) for desc, attrs, start in node.items
            ]
            self._node_shape = Shape(("node",), self.resource, series)
            self._node_signature = node.items
        return self._node_shape

    def _interned(self, attrs: Attrs) -> Labels:
        labels = self._labels.get(attrs)
        if labels is None:
            if len(self._labels) > 10_000:  # node label sets churn only with hostile gauges
                self._labels.clear()
            labels = self._labels[attrs] = Labels(attrs)
        return labels

    def _node_energy(self, node: _NodeSeries, batch: Batch) -> bool:
        start = self.start_ns
        interval = batch.interval_s
        seen = False
        if batch.node_zones:
            for zone in batch.node_zones:
                attrs = self._zone_attrs(zone.zone, zone.source, zone.attributes)
                node.add(m.NODE_JOULES[zone.component], attrs, zone.total_joules, start)
                node.add(m.NODE_WATTS[zone.component], attrs, zone.watts)
                if zone.source == "redfish" and zone.zone == "platform":
                    node.add(m.PLATFORM_WATTS, attrs, zone.watts)
                if self.semconv:
                    energy, power, hw = self._hardware(zone.component, zone.zone, zone.source)
                    node.add(energy, hw, zone.total_joules, start)
                    node.add(power, hw, zone.watts)
                seen = True
                if zone.component != "cpu":
                    continue
                node.add(m.NODE_CPU_ACTIVE, attrs, zone.active_total_joules, start)
                node.add(m.NODE_CPU_IDLE, attrs, zone.idle_total_joules, start)
                key: tuple[Any, ...] = ("cpu", zone.zone, zone.source, attrs)
                # Over what the zone's watts were measured over: active + idle = watts.
                active_w, idle_w = self._split_watts(
                    key, zone.active_total_joules, zone.idle_total_joules, zone.seconds or interval
                )
                node.add(m.NODE_CPU_ACTIVE_WATTS, attrs, active_w)
                node.add(m.NODE_CPU_IDLE_WATTS, attrs, idle_w)
        elif self.node_totals:
            for reading in batch.energy:
                attrs = self._zone_attrs(reading.zone, reading.source, reading.attributes)
                key = ("energy", reading.component, attrs)
                total = self._totals.get(key, 0.0) + max(0.0, reading.joules)
                self._totals[key] = total
                over = reading.seconds or interval
                watts = reading.joules / over if over > 0 else 0.0
                node.add(m.NODE_JOULES[reading.component], attrs, total, start)
                node.add(m.NODE_WATTS[reading.component], attrs, max(0.0, watts))
                if reading.source == "redfish" and reading.zone == "platform":
                    node.add(m.PLATFORM_WATTS, attrs, max(0.0, watts))
                if self.semconv:
                    energy, power, hw = self._hardware(
                        reading.component, reading.zone, reading.source
                    )
                    node.add(energy, hw, total, start)
                    node.add(power, hw, max(0.0, watts))
                seen = True
        if batch.cpu_usage_ratio is not None and (seen or batch.node_zones):
            node.add(m.NODE_CPU_USAGE, self._node, batch.cpu_usage_ratio)
        return seen

    def _hardware(
        self, component: str, zone: str, source: str
    ) -> tuple[MetricDesc, MetricDesc, Attrs]:
        """The hw.* metrics and hw.id/hw.type of one zone, as the semantic conventions name them."""
        hw_id = ("hw.id", f"{source}/{zone}")
        if component == "platform" and zone in ("platform", "psys"):
            return m.HW_HOST_ENERGY, m.HW_HOST_POWER, (hw_id, *self._node)
        kind = "memory" if zone == "dram" else {"cpu": "cpu", "gpu": "gpu"}.get(component, "other")
        return m.HW_ENERGY, m.HW_POWER, (hw_id, ("hw.type", kind), *self._node)

    def _split_watts(
        self, key: tuple[Any, ...], active_total: float, idle_total: float, interval: float
    ) -> tuple[float, float]:
        """Active and idle watts over the last interval, from the change of their totals."""
        previous = self._previous
        last_active = previous.get(key + ("active",))
        last_idle = previous.get(key + ("idle",))
        previous[key + ("active",)] = active_total
        previous[key + ("idle",)] = idle_total
        if last_active is None or last_idle is None or interval <= 0:
            return 0.0, 0.0
        return (
            max(0.0, active_total - last_active) / interval,
            max(0.0, idle_total - last_idle) / interval,
        )

    def _zone_attrs(self, zone: str, source: str, extra: Mapping[str, str] | None) -> Attrs:
        attrs = {"zone": zone, "source": source}
        attrs.update(self._node)
        if extra:
            attrs.update(extra)
        return tuple(attrs.items())

    def _gpus(self, node: _NodeSeries, batch: Batch) -> None:
        start = self.start_ns
        interval = batch.interval_s
        if batch.node_gpus:
            for gpu in batch.node_gpus:
                attrs = _gpu_attrs(gpu.attributes, self._node)
                node.add(m.NODE_JOULES["gpu"], attrs, gpu.total_joules, start)
                node.add(m.NODE_WATTS["gpu"], attrs, gpu.watts)
                node.add(m.NODE_GPU_ACTIVE, attrs, gpu.active_total_joules, start)
                node.add(m.NODE_GPU_IDLE, attrs, gpu.idle_total_joules, start)
                active_w, idle_w = self._split_watts(
                    ("gpu", gpu.uuid), gpu.active_total_joules, gpu.idle_total_joules, interval
                )
                node.add(m.NODE_GPU_ACTIVE_WATTS, attrs, active_w)
                node.add(m.NODE_GPU_IDLE_WATTS, attrs, idle_w)
                node.add(m.NODE_GPU_INFO, _info_attrs(attrs), 1.0)
                self._gpu_labels[gpu.uuid] = tuple(
                    (k, v)
                    for k, v in gpu.attributes.items()
                    if k in ("gpu", "gpu_uuid", "gpu_name")
                )
            return
        for sample in batch.gpus:  # no attribution: the receivers' readings as they are
            base = {
                "gpu": str(sample.index),
                "gpu_uuid": sample.uuid,
                "gpu_name": sample.name,
                "source": "nvml",
                **(sample.attributes or {}),
            }
            attrs = _gpu_attrs(base, self._node)
            key = ("gpu", sample.uuid)
            total = self._totals.get(key, 0.0) + max(0.0, sample.joules)
            self._totals[key] = total
            node.add(m.NODE_JOULES["gpu"], attrs, total, start)
            node.add(m.NODE_WATTS["gpu"], attrs, sample.watts)
            node.add(m.NODE_GPU_INFO, _info_attrs(attrs), 1.0)

    def _carbon(self, node: _NodeSeries, batch: Batch) -> None:
        carbon = batch.carbon
        assert carbon is not None
        start = self.start_ns
        node.add(m.CO2["node"], self._node, carbon.node_grams, start)
        if carbon.embodied_grams:
            node.add(m.NODE_EMBODIED_CO2, self._node, carbon.embodied_grams, start)
        intensity = (*self._node, ("provider", carbon.provider), ("region", carbon.region))
        node.add(m.GRID_INTENSITY, intensity, carbon.intensity)

    def _agent(self, node: _NodeSeries, stats: AgentStats) -> None:
        start = self.start_ns
        base = self._node
        node.add(m.AGENT_TICK_DURATION, base, stats.tick_seconds)
        node.add(m.AGENT_CPU_SECONDS, base, stats.cpu_seconds, start)
        node.add(m.AGENT_RSS, base, float(stats.rss_bytes))
        for name, count in stats.dropped.items():
            node.add(m.AGENT_DROPPED, (*base, ("exporter", name)), count, start)
        for name, count in stats.failed.items():
            node.add(m.AGENT_EXPORT_FAILURES, (*base, ("exporter", name)), count, start)
        for name, seconds in stats.export_cpu.items():
            node.add(m.AGENT_EXPORT_CPU, (*base, ("exporter", name)), seconds, start)
        for name, seconds in stats.export_duration.items():
            node.add(m.AGENT_EXPORT_DURATION, (*base, ("exporter", name)), seconds)
        for name, points in stats.sent_points.items():
            node.add(m.AGENT_SENT_POINTS, (*base, ("exporter", name)), points, start)
        for name, count in stats.receiver_errors.items():
            node.add(m.AGENT_RECEIVER_ERRORS, (*base, ("receiver", name)), count, start)
        for (name, reason), count in stats.rejected.items():
            attrs = (*base, ("receiver", name), ("reason", reason))
            node.add(m.AGENT_REJECTED_READINGS, attrs, count, start)

    def _static_series(self, procfs: str) -> list[tuple[MetricDesc, Attrs]]:
        """kepler_build_info and one kepler_node_cpu_info per logical CPU, read once."""
        build = (
            ("version", __version__),
            ("arch", platform.machine()),
            ("pythonversion", platform.python_version()),
            *self._node,
        )
        out: list[tuple[MetricDesc, Attrs]] = [(m.BUILD_INFO, build)]
        for cpu in read_cpu_info(procfs):
            out.append((m.NODE_CPU_INFO, (*cpu, *self._node)))
        return out

    # -- workloads --------------------------------------------------------------------

    def _workloads(
        self,
        blocks: list[Block],
        workloads: list[WorkloadEnergy],
        now_ns: int,
        interval: float,
    ) -> None:
        cache = self._cache
        fresh: dict[int, _Cached] = {}
        emitted: set[tuple[str, ...]] | None = set() if self._retained else None
        retention = self.retention_ns
        for w in workloads:
            signature = (
                w.state,
                tuple(w.joules),
                tuple(w.gpu_joules),
                w.co2_grams is not None,
                tuple(w.activity),
                w.other_joules is not None,
            )
            entry = cache.get(id(w))
            if (
                entry is None
                or entry.workload is not w
                or entry.attributes is not w.attributes
                or entry.signature != signature
            ):
                shape = self._workload_shape(w)
                entry = _Cached(w, w.attributes, signature, shape)
            fresh[id(w)] = entry
            block = Block(entry.shape, _workload_values(w))
            blocks.append(block)
            if w.state == TERMINATED:
                if retention:
                    self._retained[entry.shape.key] = (now_ns + retention, block)
            if emitted is not None:
                emitted.add(entry.shape.key)
        self._cache = fresh
        if emitted is not None:
            expired = []
            for key, (until, block) in self._retained.items():
                if until < now_ns:
                    expired.append(key)
                elif key not in emitted:
                    blocks.append(block)
            for key in expired:
                del self._retained[key]

    def _workload_shape(self, w: WorkloadEnergy) -> Shape:
        level = w.level
        start = w.start_time_ns
        base = tuple(w.attributes.items())
        state = ("state", w.state)
        series: list[Series] = []
        joules_desc = m.WORKLOAD_JOULES[level]
        watts_desc = m.WORKLOAD_WATTS[level]
        for zone in w.joules:
            labels = Labels((*base, ("zone", zone), state))
            series.append(Series(joules_desc, labels, start))
            series.append(Series(watts_desc, labels, 0))
        seconds = m.WORKLOAD_CPU_SECONDS.get(level)
        if seconds is not None:
            series.append(Series(seconds, Labels((*base, state)), start))
        for uuid in w.gpu_joules:
            gpu = self._gpu_labels.get(uuid) or (("gpu_uuid", uuid),)
            labels = Labels((*base, *gpu, state))
            series.append(Series(m.WORKLOAD_GPU_JOULES[level], labels, start))
            series.append(Series(m.WORKLOAD_GPU_WATTS[level], labels, 0))
        if w.co2_grams is not None:
            series.append(Series(m.CO2[level], Labels((*base, state)), start))
        for name in w.activity:
            desc, extra = _activity_series(level, name)
            series.append(Series(desc, Labels((*base, *extra, state)), start))
        if w.other_joules is not None:
            labels = Labels((*base, ("zone", "other"), state))
            series.append(Series(m.WORKLOAD_PLATFORM_JOULES[level], labels, start))
            series.append(Series(m.WORKLOAD_PLATFORM_WATTS[level], labels, 0))
        key = _workload_key(w)
        resource = workload_attributes(self.resource, w)
        return Shape(key, resource, series, terminated=w.state == TERMINATED)


def _workload_values(w: WorkloadEnergy) -> list[float]:
    """This tick's values in the order of :meth:`Converter._workload_shape`'s series."""
    values: list[float] = []
    watts = w.watts
    for zone, joules in w.joules.items():
        values.append(joules)
        values.append(watts.get(zone, 0.0))
    if w.level in m.WORKLOAD_CPU_SECONDS:
        values.append(w.cpu_seconds)
    gpu_watts = w.gpu_watts
    for uuid, joules in w.gpu_joules.items():
        values.append(joules)
        values.append(gpu_watts.get(uuid, 0.0))
    if w.co2_grams is not None:
        values.append(w.co2_grams)
    values.extend(w.activity.values())
    if w.other_joules is not None:
        values.append(w.other_joules)
        values.append(w.other_watts)
    return values


#: activity key -> (metric family, the direction label it carries)
_ACTIVITY: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "network_rx_bytes": ("network", (("direction", "rx"),)),
    "network_tx_bytes": ("network", (("direction", "tx"),)),
    "block_read_bytes": ("block", (("direction", "read"),)),
    "block_write_bytes": ("block", (("direction", "write"),)),
    "net_tx_irq": ("net_tx", ()),
    "net_rx_irq": ("net_rx", ()),
    "block_irq": ("block_irq", ()),
}


def _activity_series(level: str, name: str) -> tuple[MetricDesc, tuple[tuple[str, str], ...]]:
    family, extra = _ACTIVITY[name]
    if family == "network":
        return m.WORKLOAD_NETWORK_BYTES[level], extra
    if family == "block":
        return m.WORKLOAD_BLOCK_BYTES[level], extra
    vector = "block" if family == "block_irq" else family
    return m.WORKLOAD_IRQ[(level, vector)], extra


def _workload_key(w: WorkloadEnergy) -> tuple[str, ...]:
    a = w.attributes
    if w.level == "process":
        return ("process", a.get("pid", ""), str(w.start_time_ns))
    if w.level == "container":
        return ("container", a.get("container_id", ""))
    if w.level == "pod":
        return ("pod", a.get("pod_id", ""))
    return (w.level, a.get("vm_id", "") or a.get("vm_name", ""))


def _gpu_attrs(attributes: Mapping[str, str], node: Attrs) -> Attrs:
    attrs = dict(attributes)
    attrs.setdefault("vendor", "nvidia" if attrs.get("source", "nvml") == "nvml" else "")
    attrs.update(node)
    return tuple(attrs.items())


def _info_attrs(attrs: Attrs) -> Attrs:
    keep = ("gpu", "gpu_uuid", "gpu_name", "vendor", "node_name")
    return tuple((k, v) for k, v in attrs if k in keep)


def _sorted_attrs(attributes: Mapping[str, str]) -> Attrs:
    return tuple(attributes.items())


def read_cpu_info(procfs: str = "/proc") -> list[Attrs]:
    """One label set per logical CPU from ``cpuinfo``: Kepler's kepler_node_cpu_info labels."""
    try:
        with open(os.path.join(procfs, "cpuinfo"), encoding="utf-8", errors="replace") as f:
            text = f.read(4 << 20)
    except OSError:
        return []
    out: list[Attrs] = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" not in fields:
            continue
        out.append(
            (
                ("processor", fields.get("processor", "")),
                ("vendor_id", fields.get("vendor_id", fields.get("CPU implementer", ""))),
                ("model_name", fields.get("model name", fields.get("Model", ""))),
                ("physical_id", fields.get("physical id", "0")),
                ("core_id", fields.get("core id", fields.get("processor", ""))),
            )
        )
    return out

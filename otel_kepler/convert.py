"""Batch -> OpenTelemetry metric data: the one place where that conversion happens.

The result is the SDK's own ``MetricsData``, handed unchanged to every exporter:
the OTLP exporters encode it with opentelemetry-exporter-otlp, the pull
exporter renders it with Kepler's Prometheus names. Sums are cumulative and
monotonic; each series starts when the agent first saw it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otel_kepler import __version__
from otel_kepler import metrics as m
from otel_kepler.data import Batch, WorkloadEnergy, ZoneEnergy

_SCOPE = InstrumentationScope("otel_kepler", __version__)
_CUMULATIVE = AggregationTemporality.CUMULATIVE


@dataclass(slots=True)
class AgentStats:
    """The agent's own telemetry at the end of a tick."""

    tick_seconds: float = 0.0
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # exporter id -> batches
    failed: dict[str, int] = field(default_factory=dict)  # exporter id -> batches
    receiver_errors: dict[str, int] = field(default_factory=dict)  # receiver id -> ticks
    rejected: dict[str, int] = field(default_factory=dict)  # receiver id -> readings


class _Points:
    """Collects the data points of one tick, grouped by metric."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns
        self.by_metric: dict[m.MetricDesc, list[NumberDataPoint]] = {}

    def list_for(self, desc: m.MetricDesc) -> list[NumberDataPoint]:
        points = self.by_metric.get(desc)
        if points is None:
            points = self.by_metric[desc] = []
        return points

    def add(
        self, desc: m.MetricDesc, attrs: Mapping[str, str], value: float, start_ns: int
    ) -> None:
        self.list_for(desc).append(NumberDataPoint(attrs, start_ns, self.now_ns, value))

    def metrics(self) -> list[Metric]:
        out = []
        for desc, points in self.by_metric.items():
            if not points:
                continue
            data: Sum | Gauge
            if desc.kind == "sum":
                data = Sum(points, _CUMULATIVE, True)
            else:
                data = Gauge(points)
            out.append(Metric(desc.name, desc.description, desc.unit, data))
        return out


class Converter:
    """Turns batches into ``MetricsData`` with a fixed resource."""

    def __init__(self, resource: Resource, start_ns: int, node_name: str = "") -> None:
        self.resource = resource
        self.start_ns = start_ns
        self._node_attrs = {"node_name": node_name} if node_name else {}

    def convert(self, batch: Batch, stats: AgentStats | None = None) -> MetricsData:
        points = _Points(batch.timestamp_ns)
        self._node(points, batch)
        self._workloads(points, batch.workloads)
        if batch.node_gpus:
            self._gpus(points, batch)
        if batch.carbon is not None:
            self._carbon(points, batch)
        for g in batch.gauges:
            desc = m.MetricDesc(g.name, g.unit, "gauge", g.description)
            points.add(desc, g.attributes, g.value, 0)
        if stats is not None:
            self._agent(points, stats)
        scope = ScopeMetrics(_SCOPE, points.metrics(), "")
        return MetricsData([ResourceMetrics(self.resource, [scope], "")])

    def _node(self, points: _Points, batch: Batch) -> None:
        start = self.start_ns
        for zone in batch.node_zones:
            attrs = self._zone_attrs(zone)
            points.add(m.NODE_JOULES[zone.component], attrs, zone.total_joules, start)
            points.add(m.NODE_WATTS[zone.component], attrs, zone.watts, 0)
            if zone.component == "cpu":
                points.add(m.NODE_CPU_ACTIVE, attrs, zone.active_total_joules, start)
                points.add(m.NODE_CPU_IDLE, attrs, zone.idle_total_joules, start)
        if batch.cpu_usage_ratio is not None and batch.node_zones:
            points.add(m.NODE_CPU_USAGE, self._node_attrs, batch.cpu_usage_ratio, 0)

    def _zone_attrs(self, zone: ZoneEnergy) -> dict[str, str]:
        attrs = {"zone": zone.zone, "source": zone.source, **self._node_attrs}
        if zone.attributes:
            attrs.update(zone.attributes)
        return attrs

    def _workloads(self, points: _Points, workloads: Iterable[WorkloadEnergy]) -> None:
        """The hot part of a tick at process level: kept to plain loops and list appends."""
        now = points.now_ns
        joules_of = {lvl: points.list_for(d) for lvl, d in m.WORKLOAD_JOULES.items()}
        watts_of = {lvl: points.list_for(d) for lvl, d in m.WORKLOAD_WATTS.items()}
        seconds = points.list_for(m.PROCESS_CPU_SECONDS)
        for w in workloads:
            joules_points = joules_of[w.level]
            watts_points = watts_of[w.level]
            start = w.start_time_ns
            base = w.attributes
            state = w.state
            watts = w.watts
            for zone, joules in w.joules.items():
                attrs = {**base, "zone": zone, "state": state}
                joules_points.append(NumberDataPoint(attrs, start, now, joules))
                watts_points.append(NumberDataPoint(attrs, 0, now, watts.get(zone, 0.0)))
            if w.level == "process":
                attrs = {**base, "state": state}
                seconds.append(NumberDataPoint(attrs, start, now, w.cpu_seconds))

    def _gpus(self, points: _Points, batch: Batch) -> None:
        """Node GPUs, and the GPU share of every workload that has one."""
        start = self.start_ns
        gpu_attrs: dict[str, dict[str, str]] = {}
        for gpu in batch.node_gpus:
            points.add(m.NODE_JOULES["gpu"], gpu.attributes, gpu.total_joules, start)
            points.add(m.NODE_WATTS["gpu"], gpu.attributes, gpu.watts, 0)
            gpu_attrs[gpu.uuid] = {
                k: v for k, v in gpu.attributes.items() if k in ("gpu", "gpu_uuid", "gpu_name")
            }
        for w in batch.workloads:
            if not w.gpu_joules:
                continue
            joules_desc = m.WORKLOAD_GPU_JOULES[w.level]
            watts_desc = m.WORKLOAD_GPU_WATTS[w.level]
            for uuid, joules in w.gpu_joules.items():
                attrs = {**w.attributes, **gpu_attrs.get(uuid, {"gpu_uuid": uuid})}
                attrs["state"] = w.state
                points.add(joules_desc, attrs, joules, w.start_time_ns)
                points.add(watts_desc, attrs, w.gpu_watts.get(uuid, 0.0), 0)

    def _carbon(self, points: _Points, batch: Batch) -> None:
        """gCO2e of the node and of every workload the carbon processor reached."""
        carbon = batch.carbon
        assert carbon is not None
        start = self.start_ns
        node = self._node_attrs
        points.add(m.CO2["node"], node, carbon.node_grams, start)
        if carbon.embodied_grams:
            points.add(m.NODE_EMBODIED_CO2, node, carbon.embodied_grams, start)
        intensity = {**node, "provider": carbon.provider, "region": carbon.region}
        points.add(m.GRID_INTENSITY, intensity, carbon.intensity, 0)
        for w in batch.workloads:
            if w.co2_grams is not None:
                attrs = {**w.attributes, "state": w.state}
                points.add(m.CO2[w.level], attrs, w.co2_grams, w.start_time_ns)

    def _agent(self, points: _Points, stats: AgentStats) -> None:
        start = self.start_ns
        node = self._node_attrs
        points.add(m.AGENT_TICK_DURATION, node, stats.tick_seconds, 0)
        points.add(m.AGENT_CPU_SECONDS, node, stats.cpu_seconds, start)
        points.add(m.AGENT_RSS, node, stats.rss_bytes, 0)
        for name, count in stats.dropped.items():
            points.add(m.AGENT_DROPPED, {**node, "exporter": name}, count, start)
        for name, count in stats.failed.items():
            points.add(m.AGENT_EXPORT_FAILURES, {**node, "exporter": name}, count, start)
        for name, count in stats.receiver_errors.items():
            points.add(m.AGENT_RECEIVER_ERRORS, {**node, "receiver": name}, count, start)
        for name, count in stats.rejected.items():
            points.add(m.AGENT_REJECTED_READINGS, {**node, "receiver": name}, count, start)

"""One converted tick, in the shape every exporter reads: resources, series and values.

:mod:`otel_kepler.convert` turns a pipeline's batch into a :class:`Snapshot`.
A snapshot is a list of :class:`Block` s, one per resource (the node, or one
pod, container, process or VM). A block's :class:`Shape` holds what does not
change from one tick to the next for that resource: its resource attributes and
its series (metric, point attributes, start time). The converter keeps a shape
for as long as its workload keeps the same labels, so exporters can cache
whatever they derive from it (encoded attributes, Prometheus label strings)
and look the cache up by identity; only :attr:`Block.values` is new each tick.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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
from otel_kepler.metrics import MetricDesc

Attributes = tuple[tuple[str, str], ...]

SCOPE_NAME = "otel_kepler"
SCOPE_VERSION = __version__


@dataclass(slots=True, eq=False)
class Labels:
    """The point attributes of one series, made once and shared while they hold.

    ``prometheus`` is the pull exporter's rendered ``{name="value",...}``; it is
    filled on first use and lives as long as the labels do.
    """

    items: Attributes
    prometheus: str | None = None

    def as_dict(self) -> dict[str, str]:
        return dict(self.items)

    def get(self, key: str, default: str = "") -> str:
        for k, v in self.items:
            if k == key:
                return v
        return default


@dataclass(slots=True)
class Series:
    desc: MetricDesc
    labels: Labels
    start_ns: int  # start of a cumulative sum; 0 for gauges
    #: the pull exporter's ``name{labels} `` before each value, filled on first use
    prometheus: str | None = None


@dataclass(slots=True, eq=False, weakref_slot=True)
class Shape:
    """What stays the same between ticks for one resource.

    ``key`` identifies the resource across shapes (a pod keeps its key when its
    labels change and it gets a new shape). ``terminated`` marks the last values
    of a workload that ended: they are carried until delivered or retained long
    enough (see :class:`otel_kepler.convert.Converter`).
    """

    key: tuple[str, ...]
    resource: tuple[tuple[str, str | int], ...]
    series: list[Series]
    terminated: bool = False


@dataclass(slots=True)
class Block:
    shape: Shape
    values: list[float]  # one per shape.series, in order


@dataclass(slots=True)
class Snapshot:
    """One pipeline's tick, ready to export."""

    timestamp_ns: int
    blocks: list[Block]
    #: seconds the node has had energy readings (readiness: energy is being served)
    has_energy: bool = False

    def points(self) -> Iterator[tuple[MetricDesc, Labels, int, float, Shape]]:
        for block in self.blocks:
            shape = block.shape
            for s, value in zip(shape.series, block.values, strict=True):
                yield s.desc, s.labels, s.start_ns, value, shape

    def point_count(self) -> int:
        return sum(len(b.values) for b in self.blocks)

    def find(self, name: str) -> list[tuple[dict[str, str], float]]:
        """(attributes, value) of every point of metric ``name``: for tests and the console."""
        return [
            (labels.as_dict(), value)
            for desc, labels, _, value, _ in self.points()
            if desc.name == name
        ]

    def to_metrics_data(self) -> MetricsData:
        """The same data as the OpenTelemetry SDK's ``MetricsData`` (cumulative sums)."""
        scope = InstrumentationScope(SCOPE_NAME, SCOPE_VERSION)
        out = []
        for block in self.blocks:
            shape = block.shape
            by_desc: dict[MetricDesc, list[NumberDataPoint]] = {}
            for s, value in zip(shape.series, block.values, strict=True):
                point = NumberDataPoint(s.labels.as_dict(), s.start_ns, self.timestamp_ns, value)
                by_desc.setdefault(s.desc, []).append(point)
            metrics = []
            for desc, points in by_desc.items():
                data: Sum | Gauge
                if desc.kind == "sum":
                    data = Sum(points, AggregationTemporality.CUMULATIVE, True)
                else:
                    data = Gauge(points)
                metrics.append(Metric(desc.name, desc.description, desc.unit, data))
            resource = Resource(dict(shape.resource))
            out.append(ResourceMetrics(resource, [ScopeMetrics(scope, metrics, "")], ""))
        return MetricsData(out)

"""Snapshot -> OTLP ``ExportMetricsServiceRequest`` bytes, with what does not change cached.

The encoder is opentelemetry-proto's generated classes; nothing here writes wire
bytes by hand. For every resource block (:class:`~otel_kepler.snapshot.Shape`)
the encoder keeps one request message holding that resource, its scope, its
metric descriptors and its data points with their attributes. Each tick only
the points' times and values are set in place and the message is serialized.
Protocol Buffers define the concatenation of two serialized messages as their
merge, and ``resource_metrics`` is a repeated field, so joining the blocks'
serializations gives the request with every block's ResourceMetrics.

A cached message is found by the shape's identity and lives as long as the
shape (a weak reference): a workload whose labels change gets a new shape from
the converter, hence a new encoding.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from otel_kepler.snapshot import SCOPE_NAME, SCOPE_VERSION, Labels, Shape, Snapshot

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA


def key_values(items: Sequence[tuple[str, str | int]]) -> list[KeyValue]:
    out = []
    for key, value in items:
        if isinstance(value, int):
            out.append(KeyValue(key=key, value=AnyValue(int_value=value)))
        else:
            out.append(KeyValue(key=key, value=AnyValue(string_value=value)))
    return out


@dataclass(slots=True)
class _Encoded:
    """One block's cached request message and references to its points, in series order."""

    message: ExportMetricsServiceRequest
    points: list[Any]
    sums: list[bool]  # whether each series is a sum (delta applies)


@dataclass(slots=True)
class Part:
    """One block's serialized request and what delivering it commits."""

    data: bytes
    shape: Shape
    points: int
    #: delta temporality: (series key, cumulative value, time) to remember once delivered
    delivered: list[tuple[tuple[Any, ...], float, int]] = field(default_factory=list)


class Encoder:
    """Encodes snapshots for one exporter, remembering what was delivered."""

    def __init__(self, temporality: str = "cumulative") -> None:
        self.delta = temporality == "delta"
        self._cache: weakref.WeakKeyDictionary[Shape, _Encoded] = weakref.WeakKeyDictionary()
        self._delivered_ended: weakref.WeakSet[Shape] = weakref.WeakSet()
        #: delta: series key -> (cumulative value, time) last delivered
        self._last: dict[tuple[Any, ...], tuple[float, int]] = {}

    def encode(self, snapshot: Snapshot) -> list[Part]:
        now = snapshot.timestamp_ns
        parts = []
        for block in snapshot.blocks:
            shape = block.shape
            if shape.terminated and shape in self._delivered_ended:
                continue  # an ended workload rides batches only until one is delivered
            encoded = self._cache.get(shape)
            if encoded is None:
                encoded = self._cache[shape] = self._build(shape)
            part = Part(b"", shape, len(block.values))
            if self.delta:
                self._fill_delta(encoded, shape, block.values, now, part)
            else:
                for point, value in zip(encoded.points, block.values, strict=True):
                    point.time_unix_nano = now
                    point.as_double = value
            part.data = encoded.message.SerializeToString()
            parts.append(part)
        return parts

    def delivered(self, parts: Sequence[Part]) -> None:
        """Remember what the backend accepted (ended workloads, delta baselines)."""
        for part in parts:
            if part.shape.terminated:
                self._delivered_ended.add(part.shape)
            for key, value, time_ns in part.delivered:
                self._last[key] = (value, time_ns)
            if part.shape.terminated and self.delta:
                for key in [k for k, _, _ in part.delivered]:
                    self._last.pop(key, None)

    def forget_unseen(self, snapshot: Snapshot) -> None:
        """Drop delta baselines of resources no longer in the data (bounded memory)."""
        if not self.delta or len(self._last) < 2 * max(1, snapshot.point_count()):
            return
        live = {b.shape.key for b in snapshot.blocks}
        for key in [k for k in self._last if k[0] not in live]:
            del self._last[key]

    def _fill_delta(
        self, encoded: _Encoded, shape: Shape, values: list[float], now: int, part: Part
    ) -> None:
        last = self._last
        for i, (point, value) in enumerate(zip(encoded.points, values, strict=True)):
            point.time_unix_nano = now
            if not encoded.sums[i]:
                point.as_double = value
                continue
            series = shape.series[i]
            key = (
                shape.key,
                series.desc.name,
                series.labels.get("zone"),
                series.labels.get("gpu_uuid"),
            )
            previous = last.get(key)
            if previous is None:
                point.start_time_unix_nano = series.start_ns
                point.as_double = value
            else:
                point.start_time_unix_nano = previous[1]
                point.as_double = max(0.0, value - previous[0])
            part.delivered.append((key, value, now))

    def _build(self, shape: Shape) -> _Encoded:
        request = ExportMetricsServiceRequest()
        rm = request.resource_metrics.add()
        rm.resource.attributes.extend(key_values(shape.resource))
        sm = rm.scope_metrics.add()
        sm.scope.name = SCOPE_NAME
        sm.scope.version = SCOPE_VERSION
        metrics: dict[str, Any] = {}
        points = []
        sums = []
        for series in shape.series:
            desc = series.desc
            metric = metrics.get(desc.name)
            if metric is None:
                metric = metrics[desc.name] = sm.metrics.add()
                metric.name = desc.name
                metric.unit = desc.unit
                metric.description = desc.description
                if desc.kind == "sum":
                    metric.sum.is_monotonic = True
                    metric.sum.aggregation_temporality = DELTA if self.delta else CUMULATIVE
                else:
                    metric.gauge.SetInParent()
            data = metric.sum if desc.kind == "sum" else metric.gauge
            point = data.data_points.add()
            point.attributes.extend(_label_values(series.labels))
            if series.start_ns:
                point.start_time_unix_nano = series.start_ns
            points.append(point)
            sums.append(desc.kind == "sum")
        return _Encoded(request, points, sums)


def _label_values(labels: Labels) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in labels.items]

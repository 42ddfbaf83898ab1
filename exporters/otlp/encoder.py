"""Snapshot -> OTLP ``ExportMetricsServiceRequest`` bytes, with what does not change cached.

The encoder is opentelemetry-proto's generated classes; nothing here writes wire
bytes by hand. For every resource block (:class:`~otel_kepler.snapshot.Shape`) the
encoder keeps one ``ResourceMetrics`` message holding that resource, its scope, its
metric descriptors and its data points with their attributes. Each tick only the
points' times and values are set in place and the messages are serialized.

Blocks live on *pages*: one request message holding up to :data:`PAGE_BLOCKS`
blocks. A message and everything in it share one memory arena, and an arena per
block costs about twice the memory of the same blocks on one arena (measured: 10
against 5 KiB a process block). A page whose blocks are all in the snapshot is
serialized whole; Protocol Buffers define the concatenation of two serialized
messages as their merge, and ``resource_metrics`` is a repeated field, so joining
pages' serializations gives the request with every page's blocks. A block not in
the snapshot being encoded (a workload that left, an ended one already delivered,
the other half of a batch split for size) is removed from its page, so that pages
always go out whole. A page too large for a backend's limit is cut by copying each
block into a request of its own.

A cached block is found by the shape's identity and lives as long as the shape (a
weak reference): a workload whose labels change gets a new shape from the
converter, hence a new encoding. A block whose shape is gone is removed from its
page; the memory of removed blocks stays in the page's arena until the page is
compacted (its remaining blocks moved to the page being filled) once it holds more
removed blocks than live ones.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2

from otel_kepler.snapshot import SCOPE_NAME, SCOPE_VERSION, Labels, Shape, Snapshot

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA

#: Blocks a page holds. Large enough that a page's arena is mostly data, small enough
#: that a page (about 90 KiB serialized at process level) is far below request limits.
PAGE_BLOCKS = 64

#: A page is compacted when it holds more removed blocks than live ones, and this many.
COMPACT_AFTER = 16

#: delta temporality: (series key, cumulative value, time) to remember once delivered
Delivery = tuple[tuple[Any, ...], float, int]


def add_key_values(attributes: Any, items: Sequence[tuple[str, str | int]]) -> None:
    """Append ``items`` to a repeated KeyValue field, built in place (not as new
    messages appended, each of which would bring its own memory arena)."""
    add = attributes.add
    for key, value in items:
        kv = add()
        kv.key = key
        if isinstance(value, int):
            kv.value.int_value = value
        else:
            kv.value.string_value = value


def add_labels(attributes: Any, labels: Labels) -> None:
    """Append ``labels`` to a repeated KeyValue field, leaving out empty values (which
    Prometheus-style backends treat as absent)."""
    add = attributes.add
    for key, value in labels.items:
        if value:
            kv = add()
            kv.key = key
            kv.value.string_value = value


@dataclass(slots=True, eq=False)
class _Block:
    """One block's cached ResourceMetrics on its page, and its points in series order."""

    page: _Page | None
    message: Any  # ResourceMetrics, an element of page.request.resource_metrics
    points: list[Any]
    sums: list[bool]  # whether each series is a sum (delta applies)
    shape: weakref.ref[Shape] | None = None
    key: int = 0  # id of the shape, its key in the encoder's cache
    #: the encode pass that last set this block's points, and what it delivers (delta)
    mark: int = 0
    delivered: list[Delivery] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class _Page:
    """A request message holding several blocks; ``blocks`` in ``resource_metrics`` order."""

    request: ExportMetricsServiceRequest = field(default_factory=ExportMetricsServiceRequest)
    blocks: list[_Block] = field(default_factory=list)
    removed: int = 0  # blocks removed since the page was made: their memory is still held
    #: the encode pass that last touched it, and how many of its blocks that pass set
    mark: int = 0
    present: int = 0


@dataclass(slots=True, eq=False)
class Part:
    """Serialized ResourceMetrics of one or more blocks, and what delivering them commits."""

    data: bytes
    blocks: list[_Block]
    points: int
    #: ended workloads in this part: once delivered they are not sent again
    ended: list[Shape] = field(default_factory=list)

    @property
    def delivered(self) -> list[Delivery]:
        return [d for block in self.blocks for d in block.delivered]


class Encoder:
    """Encodes snapshots for one exporter, remembering what was delivered."""

    def __init__(self, temporality: str = "cumulative") -> None:
        self.delta = temporality == "delta"
        #: id(shape) -> its block; an entry is checked against the block's weak reference
        #: (a WeakKeyDictionary lookup makes a reference each time: measurably slower)
        self._cache: dict[int, _Block] = {}
        self._delivered_ended: weakref.WeakSet[Shape] = weakref.WeakSet()
        #: delta: series key -> (cumulative value, time) last delivered
        self._last: dict[tuple[Any, ...], tuple[float, int]] = {}
        self._pages: list[_Page] = []
        self._filling: _Page | None = None
        #: blocks whose shape was collected (appended by weak-reference callbacks)
        self._gone: deque[_Block] = deque()
        self._to_compact: list[_Page] = []
        self._pass = 0

    @property
    def cached_blocks(self) -> int:
        return sum(len(page.blocks) for page in self._pages)

    def encode(self, snapshot: Snapshot) -> list[Part]:
        self._tidy()
        self._pass += 1
        mark = self._pass
        now = snapshot.timestamp_ns
        touched: list[_Page] = []
        ended: dict[int, list[Shape]] = {}  # id(page) -> ended shapes set this pass
        cache = self._cache
        for block in snapshot.blocks:
            shape = block.shape
            encoded = cache.get(id(shape))
            if encoded is None or encoded.shape is None or encoded.shape() is not shape:
                encoded = None
            if shape.terminated and shape in self._delivered_ended:
                if encoded is not None:
                    self._remove(encoded)  # an ended workload rides batches until delivered
                continue
            if encoded is None:
                encoded = self._add(shape)
            page = encoded.page
            assert page is not None
            if page.mark != mark:
                page.mark = mark
                page.present = 0
                touched.append(page)
            page.present += 1
            encoded.mark = mark
            if shape.terminated:
                ended.setdefault(id(page), []).append(shape)
            if self.delta:
                self._fill_delta(encoded, shape, block.values, now)
            else:
                for point, value in zip(encoded.points, block.values, strict=True):
                    point.time_unix_nano = now
                    point.as_double = value
        parts = []
        for page in touched:
            if page.present != len(page.blocks):
                # Blocks not in this snapshot: their workload left (its shape is collected
                # a tick later), or this is half of a batch split for size. Removed now,
                # so that the page goes out whole; one that comes back is built again.
                for absent in [b for b in page.blocks if b.mark != mark]:
                    self._remove(absent)
            points = sum(len(b.points) for b in page.blocks)
            data = page.request.SerializeToString()
            parts.append(Part(data, list(page.blocks), points, ended.get(id(page), [])))
        return parts

    def split(self, part: Part) -> list[Part]:
        """A part of several blocks as one part per block (for a backend's size limit)."""
        if len(part.blocks) < 2:
            return [part]
        return [self._alone(block) for block in part.blocks]

    def delivered(self, parts: Sequence[Part]) -> None:
        """Remember what the backend accepted (ended workloads, delta baselines)."""
        for part in parts:
            for shape in part.ended:
                self._delivered_ended.add(shape)
            if not self.delta:
                continue
            for key, value, time_ns in part.delivered:
                self._last[key] = (value, time_ns)
            if part.ended:
                gone = {shape.key for shape in part.ended}
                for key, _, _ in part.delivered:
                    if key[0] in gone:
                        self._last.pop(key, None)

    def forget_unseen(self, snapshot: Snapshot) -> None:
        """Drop delta baselines of resources no longer in the data (bounded memory)."""
        if not self.delta or len(self._last) < 2 * max(1, snapshot.point_count()):
            return
        live = {b.shape.key for b in snapshot.blocks}
        for key in [k for k in self._last if k[0] not in live]:
            del self._last[key]

    # -- pages --------------------------------------------------------------------------

    def _add(self, shape: Shape) -> _Block:
        page = self._page_with_room()
        message = page.request.resource_metrics.add()
        points, sums = self._build(message, shape)
        return self._register(_Block(page, message, points, sums), shape)

    def _move(self, old: _Block, shape: Shape) -> None:
        """Copy a block to the page being filled (protobuf's copy: a quarter of the time
        of building it again) and find its points in the copy."""
        page = self._page_with_room()
        message = page.request.resource_metrics.add()
        message.CopyFrom(old.message)
        metrics = message.scope_metrics[0].metrics
        index: dict[str, int] = {}  # metric name -> its position, in order of first series
        taken: list[int] = []  # points of each metric found so far
        points = []
        for series in shape.series:
            desc = series.desc
            at = index.get(desc.name)
            if at is None:
                at = index[desc.name] = len(taken)
                taken.append(0)
            metric = metrics[at]
            data = metric.sum if desc.kind == "sum" else metric.gauge
            points.append(data.data_points[taken[at]])
            taken[at] += 1
        self._register(_Block(page, message, points, old.sums), shape)

    def _page_with_room(self) -> _Page:
        page = self._filling
        if page is None or len(page.blocks) >= PAGE_BLOCKS:
            page = self._filling = _Page()
            self._pages.append(page)
        return page

    def _register(self, block: _Block, shape: Shape) -> _Block:
        gone = self._gone
        block.shape = weakref.ref(shape, lambda _ref: gone.append(block))
        block.key = id(shape)
        assert block.page is not None
        block.page.blocks.append(block)
        self._cache[block.key] = block
        return block

    def _remove(self, block: _Block) -> None:
        page = block.page
        if page is None:
            return
        index = page.blocks.index(block)
        del page.blocks[index]
        del page.request.resource_metrics[index]
        if self._cache.get(block.key) is block:
            del self._cache[block.key]
        block.page = block.message = block.shape = None
        block.points = []
        page.removed += 1
        if not page.blocks:
            self._pages.remove(page)
            if page is self._filling:
                self._filling = None
        elif page is not self._filling and page.removed >= max(COMPACT_AFTER, len(page.blocks)):
            self._to_compact.append(page)

    def _tidy(self) -> None:
        """Remove the blocks of collected shapes; compact pages mostly removed."""
        gone = self._gone
        while gone:
            self._remove(gone.popleft())
        pages, self._to_compact = self._to_compact, []
        for page in pages:
            if page not in self._pages:
                continue
            self._pages.remove(page)
            for block in page.blocks:
                shape = None if block.shape is None else block.shape()
                if self._cache.get(block.key) is block:
                    del self._cache[block.key]
                if shape is not None:
                    self._move(block, shape)  # values are set by the next encode
                block.page = block.message = block.shape = None
                block.points = []

    def _alone(self, block: _Block) -> Part:
        """One block in a request of its own (a copy of its message)."""
        request = ExportMetricsServiceRequest()
        request.resource_metrics.append(block.message)
        shape = None if block.shape is None else block.shape()
        ended = [shape] if shape is not None and shape.terminated else []
        return Part(request.SerializeToString(), [block], len(block.points), ended)

    # -- points -------------------------------------------------------------------------

    def _fill_delta(self, encoded: _Block, shape: Shape, values: list[float], now: int) -> None:
        last = self._last
        delivered: list[Delivery] = []
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
            delivered.append((key, value, now))
        encoded.delivered = delivered

    def _build(self, rm: Any, shape: Shape) -> tuple[list[Any], list[bool]]:
        add_key_values(rm.resource.attributes, shape.resource)
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
            add_labels(point.attributes, series.labels)
            if series.start_ns:
                point.start_time_unix_nano = series.start_ns
            points.append(point)
            sums.append(desc.kind == "sum")
        return points, sums

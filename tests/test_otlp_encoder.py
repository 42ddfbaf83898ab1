"""The OTLP encoder's cache: blocks on shared pages, removed and compacted as workloads
come and go, decoded back with opentelemetry-proto's classes."""

from __future__ import annotations

import gc
import math
import random

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from otel_kepler.exporters.otlp.encoder import PAGE_BLOCKS, Encoder, Part
from otel_kepler.metrics import MetricDesc
from otel_kepler.snapshot import Block, Labels, Series, Shape, Snapshot

JOULES = MetricDesc("kepler.process.cpu.joules", "J", "sum", "Energy of the process")
WATTS = MetricDesc("kepler.process.cpu.watts", "W", "gauge", "Power of the process")


def shape(pid: int, *, terminated: bool = False, exe: str = "") -> Shape:
    """Two zones, the series of two metrics interleaved (as the converter makes them)."""
    base = (("pid", str(pid)), ("comm", f"p{pid}"), ("exe", exe))
    package = Labels((*base, ("zone", "package")))
    dram = Labels((*base, ("zone", "dram")))
    return Shape(
        key=("process", str(pid)),
        resource=(("service.name", "otel-kepler"), ("process.pid", pid)),
        series=[
            Series(JOULES, package, 1_000),
            Series(WATTS, package, 0),
            Series(JOULES, dram, 1_000),
            Series(WATTS, dram, 0),
        ],
        terminated=terminated,
    )


def snapshot(shapes: list[Shape], tick: int) -> Snapshot:
    """Package joules tick * 1000 + pid, dram a quarter joule more; 0.5 and 0.75 W."""
    blocks = []
    for s in shapes:
        joules = float(tick * 1000 + int(s.key[1]))
        blocks.append(Block(s, [joules, 0.5, joules + 0.25, 0.75]))
    return Snapshot(timestamp_ns=tick, blocks=blocks)


def decode(parts: list[Part], cumulative: bool = True) -> dict[int, tuple[float, int]]:
    """pid -> (package joules, time) of one request made of ``parts``; each resource
    once, and each point where its series put it (the other values as ``snapshot``
    made them, when cumulative)."""
    request = ExportMetricsServiceRequest.FromString(b"".join(p.data for p in parts))
    out: dict[int, tuple[float, int]] = {}
    for rm in request.resource_metrics:
        pid = next(a.value.int_value for a in rm.resource.attributes if a.key == "process.pid")
        assert pid not in out, f"process {pid} twice in one request"
        joules, watts = rm.scope_metrics[0].metrics
        assert (joules.name, watts.name) == (JOULES.name, WATTS.name)
        package, dram = joules.sum.data_points
        zones = [
            [a.value.string_value for a in p.attributes if a.key == "zone"] for p in (package, dram)
        ]
        assert zones == [["package"], ["dram"]]
        if cumulative:
            assert dram.as_double == package.as_double + 0.25
            assert [p.as_double for p in watts.gauge.data_points] == [0.5, 0.75]
        out[pid] = (package.as_double, package.time_unix_nano)
    return out


def test_every_block_once_with_its_values_across_pages() -> None:
    encoder = Encoder()
    shapes = [shape(pid) for pid in range(1, 201)]
    for tick in (1, 2):
        parts = encoder.encode(snapshot(shapes, tick))
        assert decode(parts) == {pid: (tick * 1000.0 + pid, tick) for pid in range(1, 201)}
    # 200 blocks on pages of PAGE_BLOCKS: one part a page
    assert len(parts) == math.ceil(200 / PAGE_BLOCKS)
    assert sum(p.points for p in parts) == 800


def test_a_page_split_into_blocks_is_the_same_bytes() -> None:
    """What the exporter does with a part over a backend's size limit."""
    encoder = Encoder()
    parts = encoder.encode(snapshot([shape(pid) for pid in range(1, 11)], 1))
    assert len(parts) == 1
    pieces = encoder.split(parts[0])
    assert len(pieces) == 10 and [p.points for p in pieces] == [4] * 10
    assert b"".join(p.data for p in pieces) == parts[0].data


def test_half_a_batch_sends_only_its_blocks() -> None:
    """A batch split for size is encoded in halves: each sends only its own blocks, and
    the next whole batch all of them again."""
    encoder = Encoder()
    shapes = [shape(pid) for pid in range(1, 101)]
    encoder.encode(snapshot(shapes, 1))
    first = decode(encoder.encode(snapshot(shapes[:50], 2)))
    second = decode(encoder.encode(snapshot(shapes[50:], 2)))
    assert first == {pid: (2000.0 + pid, 2) for pid in range(1, 51)}
    assert second == {pid: (2000.0 + pid, 2) for pid in range(51, 101)}
    whole = decode(encoder.encode(snapshot(shapes, 3)))
    assert whole == {pid: (3000.0 + pid, 3) for pid in range(1, 101)}
    assert encoder.cached_blocks == 100


def test_a_workload_that_left_does_not_cut_its_page() -> None:
    """A workload gone from the data whose shape is still held somewhere (an older
    batch in the queue) leaves its page: the page still goes out whole, one part."""
    encoder = Encoder()
    shapes = [shape(pid) for pid in range(1, 41)]
    encoder.encode(snapshot(shapes, 1))
    held = shapes[::4]  # still referenced, as by a batch waiting in the queue
    for tick in range(2, 6):
        shapes = [s for s in shapes if s not in held] + [shape(100 * tick + i) for i in range(3)]
        parts = encoder.encode(snapshot(shapes, tick))
        assert len(parts) == 1 and parts[0].points == 4 * len(shapes)
        assert sorted(decode(parts)) == sorted(int(s.key[1]) for s in shapes)
        held = shapes[:2]
    assert encoder.cached_blocks == len(shapes)


def test_ended_workloads_leave_and_memory_stays_bounded_under_churn() -> None:
    """Workloads come and go for 60 ticks: the cache holds the live blocks only, and
    pages emptied by ended workloads are compacted, not kept."""
    encoder = Encoder()
    rng = random.Random(7)
    live = [shape(pid) for pid in range(1, 101)]
    next_pid = 101
    for tick in range(1, 61):
        parts = encoder.encode(snapshot(live, tick))
        pids = [int(s.key[1]) for s in live]
        assert decode(parts) == {pid: (tick * 1000.0 + pid, tick) for pid in pids}
        rng.shuffle(live)  # 20 end, any 20, and 20 start
        live = live[20:] + [shape(next_pid + i) for i in range(20)]
        next_pid += 20
        gc.collect()  # the ended shapes are gone (the converter dropped them)
    encoder.encode(snapshot(live, 61))
    assert encoder.cached_blocks == 100
    # Pages hold their blocks' memory until compacted: few pages, each mostly live.
    pages = encoder._pages
    assert len(pages) <= math.ceil(100 / PAGE_BLOCKS) + 2, [len(p.blocks) for p in pages]
    assert sum(p.removed for p in pages) <= 2 * PAGE_BLOCKS


def test_an_ended_workload_is_sent_until_delivered_then_dropped() -> None:
    encoder = Encoder()
    running = [shape(pid) for pid in range(1, 5)]
    ended = shape(9, terminated=True)
    parts = encoder.encode(snapshot([*running, ended], 1))
    assert 9 in decode(parts)
    assert 9 in decode(encoder.encode(snapshot([*running, ended], 2)))  # not yet delivered
    encoder.delivered(parts)
    parts = encoder.encode(snapshot([*running, ended], 3))
    assert sorted(decode(parts)) == [1, 2, 3, 4]
    assert encoder.cached_blocks == 4


def test_empty_label_values_are_left_out() -> None:
    encoder = Encoder()
    parts = encoder.encode(snapshot([shape(1), shape(2, exe="/usr/bin/x")], 1))
    request = ExportMetricsServiceRequest.FromString(b"".join(p.data for p in parts))
    keys = [
        [a.key for a in rm.scope_metrics[0].metrics[0].sum.data_points[0].attributes]
        for rm in request.resource_metrics
    ]
    assert keys == [["pid", "comm", "zone"], ["pid", "comm", "exe", "zone"]]


def test_delta_sends_differences_and_forgets_ended_workloads() -> None:
    encoder = Encoder("delta")
    shapes = [shape(pid) for pid in range(1, 71)]  # two pages
    first = encoder.encode(snapshot(shapes, 1))
    encoder.delivered(first)
    second = encoder.encode(snapshot(shapes, 2))
    # cumulative 2000+pid after 1000+pid: a delta of 1000 for each
    deltas = {pid: v for pid, (v, _) in decode(second, cumulative=False).items()}
    assert deltas == dict.fromkeys(range(1, 71), 1000.0)
    encoder.delivered(second)
    ended = shape(5, terminated=True)
    parts = encoder.encode(snapshot([*shapes[:4], ended, *shapes[5:]], 3))
    encoder.delivered(parts)
    assert not [key for key in encoder._last if key[0] == ("process", "5")]


def test_the_cache_holds_live_blocks_only() -> None:
    """Blocks are found by the shape's id: an entry whose shape is gone is dropped, and a
    new shape at a reused address gets its own encoding."""
    encoder = Encoder()
    for tick in range(1, 40):
        shapes = [shape(pid) for pid in range(tick * 10, tick * 10 + 10)]  # all new each tick
        assert sorted(decode(encoder.encode(snapshot(shapes, tick)))) == list(
            range(tick * 10, tick * 10 + 10)
        )
        del shapes
        gc.collect()
    encoder.encode(snapshot([], 40))
    assert encoder.cached_blocks == 0
    assert encoder._cache == {}

"""GPU energy attribution and the platform remainder, through the attribution processor."""

from __future__ import annotations

import random

import pytest

from otel_kepler import metrics as m
from otel_kepler.convert import Converter
from otel_kepler.data import NO_WORKLOAD, Batch, EnergyReading, GpuSample, ProcessSample, Workload
from otel_kepler.processors.attribution import (
    AttributionConfig,
    AttributionProcessor,
    platform_remainder,
)
from otel_kepler.resource import node_resource

UUID = "GPU-8d3d9ed1-0000-4000-8000-000000000001"
CTR = Workload("e" * 64, "containerd", "pod-gpu")
ALL = AttributionConfig(levels=["node", "process", "container", "pod"])


def gpu(
    joules: float,
    watts: float,
    util: dict[int, float] | None = None,
    running: list[int] | None = None,
    idle_watts: float | None = None,
) -> GpuSample:
    return GpuSample(
        0, UUID, "NVIDIA H100 80GB HBM3", joules, watts, util or {}, running or [], idle_watts
    )


def run(
    proc: AttributionProcessor,
    gpus: list[GpuSample],
    pids: dict[int, Workload],
    t: int = 1,
    interval: float = 1.0,
    energy: list[EnergyReading] | None = None,
) -> Batch:
    batch = Batch(t * 10**9, interval, "n1", energy or [])
    batch.gpus = gpus
    batch.has_usage = True
    for pid, workload in pids.items():
        batch.processes[pid] = ProcessSample(pid, 7, f"p{pid}", "", workload, 1.0 * t, 0.0)
    proc.process(batch)
    return batch


def gpu_joules(batch: Batch, level: str) -> dict[str, float]:
    key = {"process": "pid", "container": "container_id", "pod": "pod_id"}[level]
    return {
        w.attributes[key]: w.gpu_joules.get(UUID, 0.0)
        for w in batch.workloads
        if w.level == level and w.gpu_joules
    }


def test_active_split_by_sm_utilisation_idle_stays_with_the_gpu() -> None:
    proc = AttributionProcessor(ALL, "n1")
    batch = run(
        proc,
        [gpu(500.0, 500.0, util={1: 60.0, 2: 20.0}, idle_watts=100.0)],
        {1: CTR, 2: NO_WORKLOAD},
    )
    assert gpu_joules(batch, "process") == pytest.approx({"1": 300.0, "2": 100.0})
    assert gpu_joules(batch, "container") == pytest.approx({CTR.container_id: 300.0})
    assert gpu_joules(batch, "pod") == pytest.approx({"pod-gpu": 300.0})
    (node,) = batch.node_gpus
    assert (node.total_joules, node.idle_total_joules, node.active_total_joules) == (
        500.0,
        100.0,
        400.0,
    )
    assert node.watts == 500.0
    assert node.attributes == {
        "gpu": "0",
        "gpu_uuid": UUID,
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "source": "nvml",
        "node_name": "n1",
    }


def test_even_split_among_running_processes_without_utilisation_samples() -> None:
    proc = AttributionProcessor(ALL)
    batch = run(proc, [gpu(300.0, 300.0, running=[1, 2, 3], idle_watts=0.0)], {1: CTR})
    assert gpu_joules(batch, "process") == pytest.approx({"1": 100.0, "2": 100.0, "3": 100.0})


def test_idle_is_the_lowest_power_seen_with_nothing_running() -> None:
    proc = AttributionProcessor(ALL)
    first = run(proc, [gpu(75.0, 75.0)], {}, t=1)
    assert first.node_gpus[0].idle_total_joules == 75.0  # nothing ran: all idle
    run(proc, [gpu(71.0, 71.0)], {}, t=2)
    busy = run(proc, [gpu(700.0, 700.0, util={1: 90.0})], {1: CTR}, t=3)
    assert busy.node_gpus[0].idle_watts == 71.0
    assert gpu_joules(busy, "process") == pytest.approx({"1": 700.0 - 71.0})
    low = run(proc, [gpu(50.0, 60.0, util={1: 5.0})], {1: CTR}, t=4)  # below learned idle
    # idle is capped by what was measured: nothing more for the process
    assert gpu_joules(low, "process")["1"] == pytest.approx(700.0 - 71.0)
    assert low.node_gpus[0].idle_total_joules == 75.0 + 71.0 + 71.0 + 50.0


def test_a_gpu_pid_unknown_to_procfs_is_still_counted() -> None:
    proc = AttributionProcessor(ALL)
    batch = run(proc, [gpu(200.0, 200.0, util={4242: 50.0}, idle_watts=50.0)], {1: CTR})
    assert gpu_joules(batch, "process") == pytest.approx({"4242": 150.0})


def test_gpu_conservation_over_many_ticks() -> None:
    rng = random.Random(3)
    proc = AttributionProcessor(ALL)
    given: dict[int, tuple[object, float]] = {}  # one entry per process lifetime
    for t in range(1, 200):
        util = {pid: rng.choice([0.0, rng.uniform(1, 100)]) for pid in range(1, 8)}
        running = [pid for pid in range(1, 8) if rng.random() < 0.3]
        joules = rng.uniform(50, 700)
        batch = run(proc, [gpu(joules, joules, util, running)], {1: CTR, 2: NO_WORKLOAD}, t=t)
        for w in batch.workloads:
            if w.level == "process" and w.gpu_joules:
                given[id(w)] = (w, w.gpu_joules[UUID])
        node = batch.node_gpus[0]
        assert sum(total for _, total in given.values()) + node.idle_total_joules == pytest.approx(
            node.total_joules, rel=1e-9
        )


def test_platform_remainder_is_other() -> None:
    readings = [
        EnergyReading("platform", "platform", "ipmi", 500.0),
        EnergyReading("cpu", "package", "rapl", 200.0),
        EnergyReading("cpu", "core", "rapl", 150.0),  # inside package: not subtracted again
        EnergyReading("cpu", "dram", "rapl", 50.0),
    ]
    proc = AttributionProcessor(ALL)
    batch = run(proc, [gpu(100.0, 100.0, idle_watts=0.0)], {}, energy=readings)
    other = [z for z in batch.node_zones if z.zone == "other"]
    assert [(z.component, z.source, z.interval_joules) for z in other] == [
        ("platform", "ipmi", 150.0)
    ]
    low = [EnergyReading("platform", "platform", "acpi", 10.0), readings[1]]
    assert platform_remainder(low, [])[0].joules == 0.0
    assert platform_remainder(readings[1:], []) == []  # no platform meter: no remainder


def test_gpu_metrics_carry_gpu_labels_and_kepler_names() -> None:
    proc = AttributionProcessor(ALL, "n1")
    batch = run(proc, [gpu(400.0, 400.0, util={1: 50.0}, idle_watts=100.0)], {1: CTR})
    data = Converter(node_resource("n1"), 1, "n1").convert(batch).to_metrics_data()
    metrics = {x.name: x for rm in data.resource_metrics for x in rm.scope_metrics[0].metrics}
    node = metrics["kepler.node.gpu.joules"].data.data_points[0]
    assert node.value == 400.0 and node.attributes["gpu_uuid"] == UUID
    pod = metrics["kepler.pod.gpu.joules"].data.data_points[0]
    assert pod.value == 300.0
    assert dict(pod.attributes) == {
        "pod_id": "pod-gpu",
        "pod_name": "",
        "pod_namespace": "",
        "node_name": "n1",
        "gpu": "0",
        "gpu_uuid": UUID,
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "state": "running",
    }
    assert m.WORKLOAD_GPU_JOULES["pod"].prometheus_name == "kepler_pod_gpu_joules_total"
    assert m.NODE_WATTS["gpu"].prometheus_name == "kepler_node_gpu_watts"

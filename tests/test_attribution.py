"""The attribution processor: Kepler's rule, conservation, terminated workloads."""

from __future__ import annotations

import random

import pytest

from otel_kepler.data import (
    NO_WORKLOAD,
    Batch,
    EnergyReading,
    ProcessSample,
    Workload,
    WorkloadEnergy,
)
from otel_kepler.processors.attribution import AttributionConfig, AttributionProcessor
from otel_kepler.schema import ConfigError, decode

POD_A = "1f2e3d4c-0000-4000-8000-00000000000a"
CTR_A1 = Workload("a1" * 32, "containerd", POD_A)
CTR_A2 = Workload("a2" * 32, "containerd", POD_A)
CTR_B = Workload("b0" * 32, "docker", "")

ALL_LEVELS = AttributionConfig(levels=["node", "process", "container", "pod"])


class Sim:
    """Drives the processor tick by tick with given CPU deltas and zone energies."""

    def __init__(self, config: AttributionConfig = ALL_LEVELS) -> None:
        self.proc = AttributionProcessor(config, node_name="n1")
        self.totals: dict[int, float] = {}
        self.t = 0

    def tick(
        self,
        deltas: dict[int, tuple[float, Workload]],
        energy: dict[str, float],
        ratio: float | None,
        exited: list[int] = (),  # type: ignore[assignment]
        interval: float = 5.0,
        start_ticks: dict[int, int] | None = None,
    ) -> Batch:
        self.t += 1
        batch = Batch(self.t * 5_000_000_000, interval, "n1")
        batch.energy = [EnergyReading("cpu", z, "rapl", j) for z, j in energy.items()]
        batch.cpu_usage_ratio = ratio
        batch.has_usage = True
        for pid, (delta, workload) in deltas.items():
            self.totals[pid] = self.totals.get(pid, 0.0) + delta
            st = (start_ticks or {}).get(pid, 100)
            batch.processes[pid] = ProcessSample(
                pid, st, f"p{pid}", f"/bin/p{pid}", workload, self.totals[pid], delta
            )
        for pid in exited:
            st = (start_ticks or {}).get(pid, 100)
            batch.exited.append(
                ProcessSample(pid, st, f"p{pid}", "", NO_WORKLOAD, self.totals[pid], 0.0)
            )
        self.proc.process(batch)
        return batch


def by_level(batch: Batch, level: str) -> dict[str, WorkloadEnergy]:
    key = {"process": "pid", "container": "container_id", "pod": "pod_id"}[level]
    return {w.attributes[key]: w for w in batch.workloads if w.level == level}


def test_shares_follow_cpu_time_and_idle_stays_with_the_node() -> None:
    sim = Sim()
    sim.tick({1: (0, NO_WORKLOAD), 2: (0, NO_WORKLOAD)}, {"package": 0.0}, None)
    batch = sim.tick({1: (3.0, CTR_A1), 2: (1.0, NO_WORKLOAD)}, {"package": 100.0}, 0.4)
    procs = by_level(batch, "process")
    # active = 100 J x 0.4 = 40 J, split 3:1
    assert procs["1"].joules["package"] == pytest.approx(30.0, rel=1e-12)
    assert procs["2"].joules["package"] == pytest.approx(10.0, rel=1e-12)
    assert procs["1"].watts["package"] == pytest.approx(6.0, rel=1e-12)
    (zone,) = batch.node_zones
    assert zone.total_joules == 100.0
    assert zone.active_total_joules == pytest.approx(40.0)
    assert zone.idle_total_joules == pytest.approx(60.0)
    assert zone.watts == pytest.approx(20.0)


def test_containers_sum_processes_and_pods_sum_containers() -> None:
    sim = Sim()
    deltas = {
        1: (1.0, CTR_A1),
        2: (2.0, CTR_A1),
        3: (3.0, CTR_A2),
        4: (4.0, CTR_B),
        5: (10.0, NO_WORKLOAD),
    }
    batch = sim.tick(deltas, {"package": 200.0, "dram": 20.0}, 1.0)
    ctrs = by_level(batch, "container")
    pods = by_level(batch, "pod")
    # 20 CPU seconds in all: package 10 J per CPU second, dram 1 J per CPU second
    assert ctrs[CTR_A1.container_id].joules == pytest.approx({"package": 30.0, "dram": 3.0})
    assert ctrs[CTR_A2.container_id].joules == pytest.approx({"package": 30.0, "dram": 3.0})
    assert ctrs[CTR_B.container_id].joules == pytest.approx({"package": 40.0, "dram": 4.0})
    assert set(pods) == {POD_A}
    assert pods[POD_A].joules == pytest.approx({"package": 60.0, "dram": 6.0})
    assert pods[POD_A].watts == pytest.approx({"package": 12.0, "dram": 1.2})
    assert ctrs[CTR_B.container_id].attributes == {
        "container_id": CTR_B.container_id,
        "container_name": "",
        "runtime": "docker",
        "pod_id": "",
        "node_name": "n1",
    }


def test_conservation_over_many_random_ticks() -> None:
    """Per tick and zone: sum of process active joules + idle == measured joules."""
    rng = random.Random(7)
    sim = Sim()
    workloads = [CTR_A1, CTR_A2, CTR_B, NO_WORKLOAD]
    prev_proc: dict[str, dict[str, float]] = {}
    prev_idle: dict[str, float] = {}
    for _ in range(300):
        deltas = {
            pid: (rng.choice([0.0, rng.random() * 3]), workloads[pid % 4]) for pid in range(1, 60)
        }
        energy = {"package": rng.uniform(0, 500), "dram": rng.uniform(0, 50)}
        batch = sim.tick(deltas, energy, rng.random())
        procs = by_level(batch, "process")
        for zone in batch.node_zones:
            gained = sum(
                w.joules.get(zone.zone, 0.0) - prev_proc.get(pid, {}).get(zone.zone, 0.0)
                for pid, w in procs.items()
            )
            idle = zone.idle_total_joules - prev_idle.get(zone.zone, 0.0)
            assert gained + idle == pytest.approx(energy[zone.zone], rel=1e-9, abs=1e-9)
            assert zone.active_total_joules + zone.idle_total_joules == pytest.approx(
                zone.total_joules, rel=1e-12
            )
            prev_idle[zone.zone] = zone.idle_total_joules
        prev_proc = {pid: dict(w.joules) for pid, w in procs.items()}


def test_without_any_cpu_time_the_interval_is_idle() -> None:
    sim = Sim()
    batch = sim.tick({1: (0.0, CTR_A1)}, {"package": 50.0}, 0.3)
    (zone,) = batch.node_zones
    assert zone.active_total_joules == 0.0
    assert zone.idle_total_joules == 50.0
    assert by_level(batch, "process")["1"].joules["package"] == 0.0


def test_no_usage_ratio_yet_means_all_idle() -> None:
    batch = Sim().tick({1: (2.0, CTR_A1)}, {"package": 50.0}, None)
    assert batch.node_zones[0].idle_total_joules == 50.0


def test_exited_process_is_emitted_once_as_terminated_then_forgotten() -> None:
    sim = Sim()
    sim.tick({1: (1.0, CTR_A1), 2: (1.0, CTR_B)}, {"package": 20.0}, 1.0)
    batch = sim.tick({1: (1.0, CTR_A1)}, {"package": 10.0}, 1.0, exited=[2])
    procs = by_level(batch, "process")
    assert procs["2"].state == "terminated"
    assert procs["2"].joules["package"] == pytest.approx(10.0)
    assert procs["2"].watts["package"] == 0.0
    ctrs = by_level(batch, "container")
    assert ctrs[CTR_B.container_id].state == "terminated"
    assert ctrs[CTR_A1.container_id].state == "running"
    assert ctrs[CTR_A1.container_id].joules["package"] == pytest.approx(20.0)
    later = sim.tick({1: (1.0, CTR_A1)}, {"package": 10.0}, 1.0)
    assert set(by_level(later, "process")) == {"1"}
    assert set(by_level(later, "container")) == {CTR_A1.container_id}


def test_exited_process_keeps_its_last_interval() -> None:
    """An exit record with CPU time (eBPF exit hook) still gets its share."""
    sim = Sim()
    sim.tick({1: (1.0, NO_WORKLOAD), 2: (1.0, NO_WORKLOAD)}, {"package": 0.0}, 1.0)
    batch = Batch(99, 5.0, "n1", [EnergyReading("cpu", "package", "rapl", 40.0)], 1.0)
    batch.has_usage = True
    batch.processes[1] = ProcessSample(1, 100, "p1", "", NO_WORKLOAD, 4.0, 3.0)
    batch.exited.append(ProcessSample(2, 100, "p2", "", NO_WORKLOAD, 2.0, 1.0))
    sim.proc.process(batch)
    procs = by_level(batch, "process")
    assert procs["1"].joules["package"] == pytest.approx(30.0)
    assert procs["2"].joules["package"] == pytest.approx(10.0)
    assert procs["2"].state == "terminated"


def test_pid_reuse_starts_a_new_series() -> None:
    sim = Sim()
    sim.tick({7: (2.0, NO_WORKLOAD)}, {"package": 10.0}, 1.0, start_ticks={7: 100})
    batch = sim.tick({7: (1.0, NO_WORKLOAD)}, {"package": 10.0}, 1.0, start_ticks={7: 900})
    states = sorted((w.state, w.joules["package"]) for w in batch.workloads if w.level == "process")
    assert states == [("running", pytest.approx(10.0)), ("terminated", pytest.approx(10.0))]


def test_a_process_no_longer_reported_is_terminated() -> None:
    sim = Sim()
    sim.tick({1: (1.0, NO_WORKLOAD), 2: (1.0, NO_WORKLOAD)}, {"package": 10.0}, 1.0)
    batch = sim.tick({1: (1.0, NO_WORKLOAD)}, {"package": 10.0}, 1.0)
    assert by_level(batch, "process")["2"].state == "terminated"


def test_only_the_largest_terminated_are_reported() -> None:
    sim = Sim(AttributionConfig(levels=["process"], max_terminated=2))
    sim.tick({pid: (float(pid), NO_WORKLOAD) for pid in range(1, 6)}, {"package": 150.0}, 1.0)
    batch = sim.tick({}, {"package": 0.0}, 1.0, exited=[1, 2, 3, 4, 5])
    ended = by_level(batch, "process")
    assert sorted(ended) == ["4", "5"]
    assert all(w.state == "terminated" for w in ended.values())


def test_process_level_is_off_by_default() -> None:
    sim = Sim(AttributionConfig())
    batch = sim.tick({1: (1.0, CTR_A1)}, {"package": 10.0}, 1.0)
    assert {w.level for w in batch.workloads} == {"container", "pod"}
    assert len(batch.node_zones) == 1


def test_totals_are_monotonic() -> None:
    rng = random.Random(1)
    sim = Sim()
    last = 0.0
    for _ in range(50):
        batch = sim.tick({1: (rng.random(), CTR_A1)}, {"package": rng.uniform(0, 9)}, 0.5)
        total = by_level(batch, "container")[CTR_A1.container_id].joules["package"]
        assert total >= last
        last = total


def test_config_errors_name_the_path() -> None:
    with pytest.raises(ConfigError) as err:
        decode(AttributionConfig, {"levels": ["node", "cluster"]}, "processors.attribution")
    assert str(err.value) == (
        "processors.attribution.levels[1]: must be one of 'node', 'process', 'container', "
        "'pod', 'vm', got 'cluster'"
    )
    with pytest.raises(ConfigError) as err:
        decode(AttributionConfig, {"max_terminated": -1}, "processors.attribution")
    assert str(err.value) == "processors.attribution.max_terminated: must be 0 or more"


def counters_batch(t: int, samples: list[tuple[int, float, int, int]]) -> Batch:
    """samples: (pid, cpu_delta, instructions, cache_misses)."""
    energy = [EnergyReading("cpu", "package", "rapl", 100.0)]
    energy.append(EnergyReading("cpu", "dram", "rapl", 10.0))
    batch = Batch(t, 1.0, "n1", energy, 1.0)
    batch.has_usage = True
    for pid, delta, instructions, misses in samples:
        batch.processes[pid] = ProcessSample(
            pid, 1, "p", "", NO_WORKLOAD, delta * t, delta, 0, instructions, misses
        )
    return batch


def test_split_by_hardware_counters() -> None:
    """Package by instructions, dram by cache misses; cpu time where a tick has no counters."""
    proc = AttributionProcessor(AttributionConfig(levels=["process"], split_by="hardware_counters"))
    batch = counters_batch(1, [(1, 1.0, 3_000, 10), (2, 1.0, 1_000, 30)])
    proc.process(batch)
    procs = by_level(batch, "process")
    assert procs["1"].joules == pytest.approx({"package": 75.0, "dram": 2.5})
    assert procs["2"].joules == pytest.approx({"package": 25.0, "dram": 7.5})
    no_counters = counters_batch(2, [(1, 3.0, 0, 0), (2, 1.0, 0, 0)])
    proc.process(no_counters)
    procs = by_level(no_counters, "process")
    assert procs["1"].joules == pytest.approx({"package": 150.0, "dram": 10.0})
    default = AttributionProcessor(AttributionConfig(levels=["process"]))
    plain = counters_batch(1, [(1, 1.0, 3_000, 10), (2, 1.0, 1_000, 30)])
    default.process(plain)
    assert by_level(plain, "process")["1"].joules == pytest.approx({"package": 50.0, "dram": 5.0})


def test_one_zone_from_two_meters_is_given_to_workloads_once() -> None:
    """rapl and hwmon (amd_energy) both measure the package: the node shows both, once given."""
    proc = AttributionProcessor(AttributionConfig(levels=["node", "process"]))
    batch = Batch(1, 1.0, "n1", [], 1.0)
    batch.energy = [
        EnergyReading("cpu", "package", "hwmon", 80.0),
        EnergyReading("cpu", "package", "rapl", 100.0),
    ]
    batch.has_usage = True
    batch.processes[1] = ProcessSample(1, 1, "p", "", NO_WORKLOAD, 1.0, 1.0)
    proc.process(batch)
    assert by_level(batch, "process")["1"].joules == {"package": 100.0}
    assert sorted((z.source, z.total_joules) for z in batch.node_zones) == [
        ("hwmon", 80.0),
        ("rapl", 100.0),
    ]


def test_share_of_node_divides_by_the_node_busy_time() -> None:
    """A sidecar sees only its pod: its share is of the node's busy CPU time, not of all."""
    proc = AttributionProcessor(AttributionConfig(levels=["pod"], share_of="node"))
    batch = Batch(1, 1.0, "n1", [EnergyReading("cpu", "package", "rapl", 100.0)], 1.0)
    batch.has_usage = True
    batch.node_cpu_seconds = 4.0  # the whole node was busy 4 CPU seconds
    batch.processes[1] = ProcessSample(1, 1, "app", "", CTR_A1, 1.0, 1.0)
    proc.process(batch)
    assert by_level(batch, "pod")[POD_A].joules == pytest.approx({"package": 25.0})
    default = AttributionProcessor(AttributionConfig(levels=["pod"]))
    default.process(batch)
    assert by_level(batch, "pod")[POD_A].joules == pytest.approx({"package": 100.0})


def test_two_chassis_of_one_bmc_are_two_platform_series() -> None:
    """Platform meters told apart by their chassis stay separate node series."""
    proc = AttributionProcessor(AttributionConfig(levels=["node"]), node_name="n1")
    totals: dict[str, float] = {}
    for t in (1, 2):
        batch = Batch(t * 10**9, 1.0, "n1")
        for chassis, joules in (("1", 300.0), ("2", 200.0)):
            attrs = {"bmc_id": "bmc", "chassis_id": chassis, "source_id": "PowerControl/0"}
            batch.energy.append(EnergyReading("platform", "platform", "redfish", joules, attrs))
        proc.process(batch)
        totals = {
            (z.attributes or {})["chassis_id"]: z.total_joules
            for z in batch.node_zones
            if z.component == "platform"
        }
    assert totals == {"1": 600.0, "2": 400.0}


def test_watts_divide_by_what_the_reading_was_measured_over() -> None:
    """A receiver collected 2 s after its previous collect, in a tick 1 s after the last."""
    proc = AttributionProcessor(AttributionConfig(levels=["node"]), node_name="n1")
    batch = Batch(10**9, 1.0, "n1", [EnergyReading("cpu", "package", "rapl", 30.0, None, 2.0)])
    proc.process(batch)
    (zone,) = batch.node_zones
    assert (zone.interval_joules, zone.watts) == (30.0, 15.0)
    batch = Batch(2 * 10**9, 1.0, "n1", [EnergyReading("cpu", "package", "rapl", 30.0)])
    proc.process(batch)
    assert batch.node_zones[0].watts == 30.0  # no measured time: the tick's interval

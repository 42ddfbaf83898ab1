"""Idle power that holds at full load: learned, fixed, or Kepler's usage-ratio rule.

The end-to-end test drives a RAPL fixture tree at P = 20 W + 30 W x load, where the
load is the node's CPU usage ratio the real procfs receiver measured over the same
interval, while real burner processes rest and then keep every CPU busy.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from otel_kepler.component import HostSettings
from otel_kepler.data import NO_WORKLOAD, Batch, EnergyReading, ProcessSample, WorkloadEnergy
from otel_kepler.processors.attribution import (
    AttributionConfig,
    AttributionProcessor,
    state_path,
)
from otel_kepler.receivers.power_models.calibration import ModelReading
from otel_kepler.receivers.procfs import ProcfsReceiver
from otel_kepler.receivers.rapl import RaplConfig, RaplReceiver
from otel_kepler.schema import ConfigError, decode
from tests.children import BURN, spawn
from tests.sysfs_fixtures import RaplTree

IDLE_W = 20.0
DYNAMIC_W = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, read by the test itself (not through the receiver)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def node_idle_seconds() -> float:
    """Idle + iowait seconds of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as file:
        fields = file.readline().split()
    return (int(fields[4]) + int(fields[5])) / CLOCK_TICKS


class PoweredNode:
    """Real burners on this machine, a RAPL fixture whose power follows their load.

    The node of this test is made of the burners: the load is their CPU time over
    their CPU time plus the machine's idle time in the interval (both measured), so
    a busy machine's other processes neither draw fixture power nor take a share.
    With the burners running the load is 1 (no idle CPU left), with them stopped 0.
    """

    def __init__(self, tmp_path: Path, config: AttributionConfig) -> None:
        self.tree = RaplTree(tmp_path / "sys")
        self.tree.add_socket()
        self.rapl = RaplReceiver("rapl", RaplConfig(), HostSettings(sysfs=self.tree.sysfs))
        self.rapl.start()
        self.procfs = ProcfsReceiver("/proc")
        self.procfs.start()
        self.processor = AttributionProcessor(config, node_name="n1", sysfs=self.tree.sysfs)
        self.pids: set[int] = set()
        self.procfs.collect()
        self.rapl.collect()
        self.last = time.monotonic()
        self.idle_seconds = node_idle_seconds()
        self.idle_total = 0.0

    def tick(self, seconds: float) -> tuple[Batch, float, float, float]:
        """One interval: (batch, seconds, load, idle joules of the interval)."""
        time.sleep(seconds)
        usage = self.procfs.collect()
        idle_seconds, now = node_idle_seconds(), time.monotonic()
        dt, self.last = now - self.last, now
        free, self.idle_seconds = idle_seconds - self.idle_seconds, idle_seconds
        assert usage.processes is not None
        burners = {pid: usage.processes[pid] for pid in self.pids}
        busy = sum(p.cpu_delta for p in burners.values())
        load = busy / (busy + free) if busy + free > 0 else 0.0
        self.tree.advance_all({"package": IDLE_W + DYNAMIC_W * load}, dt)
        batch = Batch(time.time_ns(), dt, "n1", cpu_usage_ratio=load)
        batch.processes, batch.has_usage = burners, True
        batch.add(self.rapl.collect())
        self.processor.process(batch)
        (zone,) = batch.node_zones
        idle = zone.idle_total_joules - self.idle_total
        self.idle_total = zone.idle_total_joules
        return batch, dt, load, idle


def processes(batch: Batch) -> dict[int, WorkloadEnergy]:
    return {int(w.attributes["pid"]): w for w in batch.workloads if w.level == "process"}


def test_idle_holds_at_full_load_and_burners_share_the_dynamic_power(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    config = AttributionConfig(levels=["node", "process"], idle_min_ticks=6)
    node = PoweredNode(tmp_path, config)
    cpus = os.cpu_count() or 1
    burners = [spawn(BURN) for _ in range(cpus)]
    children.extend(burners)
    node.pids = {b.pid for b in burners}
    for b in burners:
        os.kill(b.pid, signal.SIGSTOP)
    usages = [node.tick(0.6)[2] for _ in range(4)]  # at rest
    for b in burners:
        os.kill(b.pid, signal.SIGCONT)
    node.tick(0.6)
    full = []  # per tick: seconds, load, idle J, measured J, joules given per pid, CPU used
    for _ in range(5):
        before = {b.pid: cpu_seconds(b.pid) for b in burners}
        batch, dt, ratio, idle = node.tick(0.8)
        used = {pid: cpu_seconds(pid) - t for pid, t in before.items()}
        given = {pid: w.watts["package"] * dt for pid, w in processes(batch).items()}
        usages.append(ratio)
        full.append((dt, ratio, idle, batch.node_zones[0].interval_joules, given, used))
    spread = max(usages) - min(usages)
    assert spread >= config.idle_min_spread, f"usage never varied: {usages}"
    learned = node.processor.idle.learned()["package/rapl"]
    assert learned == pytest.approx(IDLE_W, rel=0.05)
    shares: dict[int, list[float]] = {pid: [0.0, 0.0] for pid in node.pids}  # given, fair
    for dt, ratio, idle, measured, given, used in full[-3:]:
        assert ratio > 0.95  # no idle CPU left
        assert idle / dt == pytest.approx(IDLE_W, rel=0.05)  # Kepler's rule: under 1.5 W
        assert sum(given.values()) + idle == pytest.approx(measured, rel=1e-9)  # conservation
        active = DYNAMIC_W * ratio * dt
        assert sum(given.values()) == pytest.approx(active, rel=1e-4)  # RAPL's 61 uJ units
        all_used = sum(used.values())  # measured by the test from /proc/PID/stat
        for pid, seconds in used.items():
            shares[pid][0] += given[pid]
            shares[pid][1] += active * seconds / all_used
    # The test reads /proc a moment before and after the agent's own reads, in clock ticks
    # (10 ms): over three ticks the shares agree within that granularity on a loaded node.
    least = min(cpu for _, _, _, _, _, used in full[-3:] for cpu in used.values())
    tolerance = max(0.05, 0.03 / max(least, 0.01))
    for pid, (given_j, fair_j) in shares.items():
        assert given_j == pytest.approx(fair_j, rel=tolerance), (pid, shares, tolerance)
    for b in burners:
        os.kill(b.pid, signal.SIGSTOP)
    node.tick(0.6)
    for _ in range(2):
        _, dt, ratio, idle = node.tick(0.6)
        assert idle / dt == pytest.approx(IDLE_W, rel=0.05)  # at rest: the whole 20 W


# -- driven ticks ------------------------------------------------------------------------


class Sim:
    """Ticks of known energy and usage, one process taking all the CPU time."""

    def __init__(
        self, config: AttributionConfig, state_path: str | None = None, sysfs: str = "/sys"
    ) -> None:
        self.proc = AttributionProcessor(config, "n1", state_path=state_path, sysfs=sysfs)
        self.t = 0
        self.idle = 0.0
        self.active = 0.0

    def tick(
        self, watts: float, ratio: float, dt: float = 5.0, zone: str = "package"
    ) -> tuple[float, float]:
        """(idle, active) joules of this tick."""
        self.t += 1
        reading = EnergyReading("cpu", zone, "rapl", watts * dt)
        batch = Batch(self.t, dt, "n1", [reading], ratio)
        batch.has_usage = True
        batch.processes[1] = ProcessSample(1, 1, "p", "", NO_WORKLOAD, self.t * dt, dt * ratio)
        self.proc.process(batch)
        (z,) = batch.node_zones
        idle, active = z.idle_total_joules - self.idle, z.active_total_joules - self.active
        self.idle, self.active = z.idle_total_joules, z.active_total_joules
        assert idle + active == pytest.approx(watts * dt, rel=1e-12)
        return idle, active


def test_usage_ratio_is_keplers_rule_exactly() -> None:
    sim = Sim(AttributionConfig(idle="usage_ratio", idle_min_ticks=2))
    rng = random.Random(3)
    for _ in range(100):
        ratio = rng.random()
        watts = 20 + 30 * ratio
        idle, active = sim.tick(watts, ratio)
        assert active == pytest.approx(watts * 5.0 * ratio, rel=1e-12, abs=1e-9)
    assert sim.tick(50.0, 1.0) == (0.0, 250.0)  # at full load idle collapses to 0


def test_fixed_idle_is_capped_by_the_measured_energy() -> None:
    sim = Sim(AttributionConfig(idle="fixed", idle_watts={"package": 20.0}))
    assert sim.tick(50.0, 1.0) == pytest.approx((100.0, 150.0))
    assert sim.tick(12.0, 0.1) == (60.0, 0.0)  # below idle: everything is idle


def test_learned_idle_is_the_intercept_and_kepler_until_then() -> None:
    sim = Sim(AttributionConfig(idle_min_ticks=10))
    rng = random.Random(5)
    for n in range(30):
        ratio = rng.uniform(0.3, 1.0)
        idle, active = sim.tick(20 + 30 * ratio, ratio)
        if n < 9:  # not learned yet: Kepler's rule
            assert active == pytest.approx((20 + 30 * ratio) * 5 * ratio)
        else:
            assert idle == pytest.approx(100.0)
    assert sim.proc.idle.learned() == {"package/rapl": pytest.approx(20.0)}


def test_learned_idle_from_rest_without_spread() -> None:
    """A node that is always near rest: a low quantile of its watts at usage under 5%."""
    sim = Sim(AttributionConfig(idle_min_ticks=10))
    for n in range(20):
        sim.tick(18.0 + (n % 4) * 0.5, 0.01 * (n % 4))
    assert sim.proc.idle.learned() == {"package/rapl": 18.0}


def test_configured_starting_value_until_learned() -> None:
    sim = Sim(AttributionConfig(idle_watts={"package": 25.0}, idle_min_ticks=5))
    assert sim.tick(50.0, 1.0) == pytest.approx((125.0, 125.0))


def test_model_reading_brings_its_idle() -> None:
    """The estimator knows its idle: at full load idle stays the model's (Kepler: 0)."""
    proc = AttributionProcessor(AttributionConfig(levels=["node"]))
    reading = ModelReading("cpu", "package", "model", 21.0, {"model": "linear"}, idle_watts=1.48)
    batch = Batch(1, 3.0, "n1", [reading], 1.0)
    batch.has_usage = True
    batch.processes[1] = ProcessSample(1, 1, "p", "", NO_WORKLOAD, 6.0, 6.0)
    proc.process(batch)
    (zone,) = batch.node_zones
    assert zone.idle_total_joules == pytest.approx(1.48 * 3.0)
    assert zone.active_total_joules == pytest.approx(21.0 - 1.48 * 3.0)


def test_conservation_with_learned_idle_over_random_ticks() -> None:
    sim = Sim(AttributionConfig(idle_min_ticks=5, idle_window=20))
    rng = random.Random(11)
    for _ in range(300):  # tick() asserts idle + active == dE to 1e-12
        sim.tick(rng.uniform(0, 80), rng.random(), dt=rng.uniform(0.1, 10))


# -- the state file ----------------------------------------------------------------------


def learn(path: Path, sysfs: str = "/sys") -> Sim:
    sim = Sim(AttributionConfig(idle_min_ticks=5), state_path=str(path), sysfs=sysfs)
    sim.proc.start()
    for n in range(8):
        ratio = 0.2 + 0.1 * n
        sim.tick(20 + 30 * ratio, ratio)
    return sim


def test_learned_idle_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "attribution-idle.json"
    learn(path).proc.shutdown()
    saved = json.loads(path.read_text())
    assert saved == {
        "version": 1,
        "host": {"sysfs": "/sys", "node_name": "n1"},
        "idle_watts": {"package/rapl": pytest.approx(20.0)},
    }
    assert [p.name for p in path.parent.iterdir()] == ["attribution-idle.json"]  # no scratch
    again = Sim(AttributionConfig(), state_path=str(path))
    again.proc.start()
    assert again.tick(50.0, 1.0) == pytest.approx((100.0, 150.0))


def test_a_state_file_of_another_host_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "idle.json"
    learn(path, sysfs="/host/sys").proc.shutdown()
    caplog.set_level(logging.INFO)
    other = Sim(AttributionConfig(), state_path=str(path))
    other.proc.start()
    assert other.tick(50.0, 1.0) == (0.0, 250.0)  # Kepler's rule: nothing known
    assert f"idle state file {path} is of another host (node_name=n1, sysfs=/host/sys)" in (
        caplog.text
    )


def test_state_file_errors_are_logged_once_and_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "idle.json"
    bad.write_text("{not json")
    sim = Sim(AttributionConfig(), state_path=str(bad))
    sim.proc.start()
    sim.proc.start()
    assert sim.tick(50.0, 1.0) == (0.0, 250.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"attribution: cannot read idle state file {bad}: Expecting property name enclosed "
        "in double quotes: line 1 column 2 (char 1)"
    ]
    caplog.clear()
    blocker = tmp_path / "file"
    blocker.write_text("")
    sim = learn(blocker / "idle.json")
    sim.proc.shutdown()
    sim.proc.shutdown()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"attribution: cannot read idle state file {blocker / 'idle.json'}: Not a directory",
        f"attribution: cannot write idle state file {blocker / 'idle.json'}: {blocker} is a file",
    ]


def test_state_path_and_config_errors(tmp_path: Path) -> None:
    config = AttributionConfig(state_dir=str(tmp_path))
    assert state_path("attribution/edge", config) == str(tmp_path / "attribution_edge-idle.json")
    assert state_path("attribution", AttributionConfig(idle="usage_ratio")) is None
    assert state_path("attribution", AttributionConfig(persist_idle=False)) is None

    def error(raw: dict[str, object]) -> str:
        with pytest.raises(ConfigError) as err:
            decode(AttributionConfig, raw, "processors.attribution")
        return str(err.value)

    assert error({"idle": "fixed"}) == (
        "processors.attribution.idle_watts: idle: fixed needs the idle watts of each zone"
    )
    assert error({"idle_watts": {"package": -1}}) == (
        "processors.attribution.idle_watts.package: must be 0 or more, got -1"
    )
    assert error({"idle": 20}) == (
        "processors.attribution.idle: must be one of 'learned', 'fixed', 'usage_ratio', got 20"
    )
    assert error({"idle_min_ticks": 1}) == (
        "processors.attribution.idle_min_ticks: must be between 2 and idle_window (720), got 1"
    )

"""The estimator receiver: a linear power model over /proc/stat usage."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from otel_kepler.component import ComponentError, HostSettings
from otel_kepler.data import Contribution, EnergyReading
from otel_kepler.receivers import estimator
from otel_kepler.receivers.estimator import CurveConfig, EstimatorConfig, EstimatorReceiver
from otel_kepler.receivers.power_models.calibration import ModelReading
from otel_kepler.schema import ConfigError, decode


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class ProcStat:
    """A /proc/stat whose jiffies the test advances to a known busy ratio."""

    def __init__(self, procfs: Path, cpus: int = 4) -> None:
        procfs.mkdir(parents=True, exist_ok=True)
        self.path = procfs / "stat"
        self.cpus = cpus
        # user nice system idle iowait irq softirq steal guest guest_nice
        self.fields = [81234, 120, 20311, 912345, 4410, 0, 1203, 0, 0, 0]
        self.write()

    def run(self, ratio: float, jiffies: int = 10_000) -> None:
        """Let ``jiffies`` pass, ``ratio`` of them busy (user, system, softirq, steal)."""
        busy = round(ratio * jiffies)
        idle = jiffies - busy
        for index, share in ((0, 0.6), (2, 0.3), (6, 0.05)):
            self.fields[index] += round(busy * share)
        self.fields[7] += busy - sum(round(busy * s) for s in (0.6, 0.3, 0.05))
        self.fields[8] += round(busy * 0.1)  # guest time is inside user: not busy twice
        self.fields[3] += idle - idle // 10
        self.fields[4] += idle // 10  # iowait counts as idle
        self.write()

    def write(self) -> None:
        total = " ".join(str(v) for v in self.fields)
        share = " ".join(str(v // self.cpus) for v in self.fields)
        per_cpu = [f"cpu{n} {share}" for n in range(self.cpus)]
        lines = [f"cpu  {total}", *per_cpu, "intr 123 0 0", "ctxt 456", "btime 1700000000"]
        self.path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def stat(tmp_path: Path) -> ProcStat:
    return ProcStat(tmp_path / "proc")


POINTS = [60.0, 80.0, 95.0, 108.0, 120.0, 131.0, 142.0, 153.0, 165.0, 178.0, 190.0]


def make(
    stat: ProcStat, config: EstimatorConfig, clock: FakeClock | None = None
) -> EstimatorReceiver:
    host = HostSettings(procfs=str(stat.path.parent))
    receiver = EstimatorReceiver("estimator", config, host, clock or time.monotonic)
    receiver.start()
    return receiver


def only_reading(part: Contribution) -> EnergyReading:
    [reading] = part.energy
    assert (reading.component, reading.zone, reading.source) == ("cpu", "package", "model")
    assert reading.attributes == {"model": "linear"}
    return reading


def test_first_collect_primes(stat: ProcStat) -> None:
    receiver = make(stat, EstimatorConfig(idle_watts=10.0, max_watts=50.0), FakeClock())
    first = receiver.collect()
    assert first.energy == []
    assert first.cpu_usage_ratio is None


@pytest.mark.parametrize(
    ("ratio", "seconds"), [(0.0, 5.0), (0.25, 5.0), (0.5, 1.0), (0.9, 12.5), (1.0, 5.0)]
)
def test_joules_follow_the_linear_curve(stat: ProcStat, ratio: float, seconds: float) -> None:
    clock = FakeClock()
    receiver = make(stat, EstimatorConfig(idle_watts=10.0, max_watts=50.0), clock)
    receiver.collect()
    stat.run(ratio)
    clock.now += seconds

    part = receiver.collect()

    assert part.cpu_usage_ratio == pytest.approx(ratio, abs=1e-4)
    expected = (10.0 + 40.0 * ratio) * seconds
    assert only_reading(part).joules == pytest.approx(expected, rel=0.01)
    assert only_reading(part).joules == pytest.approx(expected, rel=1e-4)


def test_the_reading_carries_the_models_idle_power(stat: ProcStat) -> None:
    """Attribution holds the zone's idle at the model's own idle power (not 0 at full load)."""
    clock = FakeClock()
    receiver = make(stat, EstimatorConfig(idle_watts=10.0, max_watts=50.0), clock)
    receiver.collect()
    stat.run(1.0)
    clock.now += 5.0
    reading = only_reading(receiver.collect())
    assert isinstance(reading, ModelReading)
    assert (reading.idle_watts, reading.calibrator) == (10.0, None)
    curve = make(stat, EstimatorConfig(model="curve", curve=CurveConfig(points=POINTS)), clock)
    curve.collect()
    stat.run(0.5)
    clock.now += 5.0
    (curved,) = curve.collect().energy
    assert isinstance(curved, ModelReading)
    assert curved.idle_watts == POINTS[0]


def test_several_ticks_integrate_each_interval(stat: ProcStat) -> None:
    clock = FakeClock()
    receiver = make(stat, EstimatorConfig(idle_watts=20.0, max_watts=120.0), clock)
    receiver.collect()
    total = 0.0
    for ratio, seconds in [(0.1, 5.0), (0.7, 5.0), (0.4, 2.0), (0.0, 30.0)]:
        stat.run(ratio)
        clock.now += seconds
        total += only_reading(receiver.collect()).joules
    expected = 30.0 * 5 + 90.0 * 5 + 60.0 * 2 + 20.0 * 30
    assert total == pytest.approx(expected, rel=1e-4)


def test_interval_is_the_real_monotonic_time(stat: ProcStat) -> None:
    receiver = make(stat, EstimatorConfig(idle_watts=10.0, max_watts=50.0))
    before_first = time.monotonic()
    receiver.collect()
    after_first = time.monotonic()
    stat.run(0.5)
    time.sleep(0.2)
    before_second = time.monotonic()
    joules = only_reading(receiver.collect()).joules
    after_second = time.monotonic()

    # The receiver's own interval lies between these two measured bounds.
    assert 30.0 * (before_second - after_first) <= joules
    assert joules <= 30.0 * (after_second - before_first)
    assert joules == pytest.approx(30.0 * 0.2, rel=0.05)


def test_defaults_scale_with_cpu_count(monkeypatch: pytest.MonkeyPatch, stat: ProcStat) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert EstimatorConfig().resolved() == pytest.approx((2.96, 14.0))
    clock = FakeClock()
    receiver = make(stat, EstimatorConfig(), clock)
    receiver.collect()
    stat.run(0.5)
    clock.now += 5.0
    assert only_reading(receiver.collect()).joules == pytest.approx((2.96 + 11.04 * 0.5) * 5.0)

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert EstimatorConfig().resolved() == pytest.approx((47.36, 224.0))
    assert EstimatorConfig(idle_watts=30.0).resolved() == pytest.approx((30.0, 224.0))
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one CPU
    assert EstimatorConfig().resolved() == pytest.approx((0.74, 3.5))


def config_error(raw: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as err:
        decode(EstimatorConfig, raw, "receivers.estimator")
    return str(err.value)


def test_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert config_error({"idle_watts": -1, "max_watts": 10}) == (
        "receivers.estimator.idle_watts: must be 0 or more, got -1"
    )
    assert config_error({"idle_watts": 20, "max_watts": 20}) == (
        "receivers.estimator.max_watts: must be greater than idle_watts (20), got 20"
    )
    assert config_error({"max_watts": 1}) == (
        "receivers.estimator.max_watts: must be greater than idle_watts "
        "(1.48, the default for 2 CPUs), got 1"
    )
    assert config_error({"idle_watts": 100}) == (
        "receivers.estimator.idle_watts: must be less than max_watts, whose default for "
        "2 CPUs is 7 W; got 100 (set max_watts too)"
    )
    assert config_error({"idle_watts": "low"}) == (
        "receivers.estimator.idle_watts: expected a number, got 'low'"
    )
    assert config_error({"max": 3}) == (
        "receivers.estimator.max: unknown key "
        "(known keys: calibrate_from, calibration, curve, idle_watts, max_watts, model, "
        "regression)"
    )
    assert decode(EstimatorConfig, {"idle_watts": 0, "max_watts": 90}, "r") == EstimatorConfig(
        idle_watts=0.0, max_watts=90.0
    )
    assert decode(EstimatorConfig, None, "r") == EstimatorConfig(None, None)


def test_missing_proc_stat(tmp_path: Path) -> None:
    host = HostSettings(procfs=str(tmp_path))
    receiver = EstimatorReceiver("estimator", EstimatorConfig(), host)
    with pytest.raises(ComponentError) as err:
        receiver.start()
    assert str(err.value) == f"cannot read {tmp_path}/stat: No such file or directory"
    assert estimator.doctor(host).available is False
    assert estimator.doctor(host).detail == str(err.value)


def test_doctor_and_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    availability = estimator.doctor(HostSettings())
    assert availability.available is True
    assert availability.detail == (
        "linear model over /proc/stat: 5.92 W idle to 28 W at full load for 8 CPUs"
    )
    [entry] = [e for e in entry_points(group="otel_kepler.receivers") if e.name == "estimator"]
    assert entry.load() is estimator.factory
    receiver = estimator.factory.create("estimator", EstimatorConfig(), HostSettings())
    assert (receiver.idle_watts, receiver.max_watts) == pytest.approx((5.92, 28.0))


def test_real_proc_stat_rises_above_idle_while_a_core_burns() -> None:
    receiver = EstimatorReceiver(
        "estimator", EstimatorConfig(idle_watts=10.0, max_watts=50.0), HostSettings()
    )
    receiver.start()
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # let it get going
        before_first = time.monotonic()
        receiver.collect()
        after_first = time.monotonic()
        time.sleep(1.0)
        before_second = time.monotonic()
        part = receiver.collect()
        after_second = time.monotonic()
    finally:
        burner.kill()
        burner.wait()

    ratio = part.cpu_usage_ratio
    assert ratio is not None
    cpus = os.cpu_count() or 1
    assert ratio >= 0.5 / cpus  # one of the CPUs was busy the whole second
    watts = 10.0 + 40.0 * ratio
    joules = only_reading(part).joules
    assert watts * (before_second - after_first) <= joules <= watts * (after_second - before_first)
    assert joules / (after_second - before_first) > 10.0 + 40.0 * 0.4 / cpus  # above idle

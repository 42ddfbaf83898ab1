"""The estimator calibrated online against a platform meter of the same pipeline.

The end-to-end test runs real burners, started and stopped tick by tick. The node's
/proc/stat that the estimator reads is a fixture fed with what the test measures: the
burners' CPU time as busy, the machine's idle time as idle (so a busy machine's other
processes do not blur the load). An ACPI power meter fixture shows
P = 40 W + 60 W x load, one tick late and averaged over two ticks, as a BMC or a
firmware meter does. The configured model (linear, its defaults for this machine)
is far off; once calibrated, the estimate must be within 5% of the true power.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from otel_kepler.component import HostSettings
from otel_kepler.data import Batch, EnergyReading
from otel_kepler.processors.attribution import AttributionConfig, AttributionProcessor
from otel_kepler.receivers.acpi import AcpiConfig, AcpiReceiver
from otel_kepler.receivers.estimator import (
    FIT_ERROR,
    CalibrationConfig,
    EstimatorConfig,
    EstimatorReceiver,
)
from otel_kepler.receivers.power_models.calibration import Calibrator, ModelReading
from otel_kepler.receivers.power_models.fit import Line
from otel_kepler.schema import ConfigError, decode
from tests.children import BURN, spawn
from tests.hwmon_fixtures import SysfsTree

IDLE_W, DYNAMIC_W = 40.0, 60.0
MIN_TICKS = 8
#: calibrated from this tick on: min_ticks meter readings after the first
#: max_lag + max_smooth - 1 = 6 (every lag and window is judged on the same ticks)
READY = MIN_TICKS + 6
#: the burners run (1) or rest (0), tick by tick
PATTERN = [0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def jiffies_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def idle_jiffies() -> int:
    with open("/proc/stat", encoding="ascii") as file:
        fields = file.readline().split()
    return int(fields[4]) + int(fields[5])


class BurnerStat:
    """A /proc/stat fixture: busy = the burners' measured CPU time, idle = the machine's."""

    def __init__(self, procfs: Path, pids: list[int]) -> None:
        procfs.mkdir(parents=True, exist_ok=True)
        self.path = procfs / "stat"
        self.pids = pids
        self.busy, self.idle = 1000, 1000
        self._burn = sum(jiffies_of(p) for p in pids)
        self._idle = idle_jiffies()
        self.write()

    def advance(self) -> float:
        """Fold in what was measured since the last call; returns the load of the interval."""
        burn, idle = sum(jiffies_of(p) for p in self.pids), idle_jiffies()
        d_busy, d_idle = burn - self._burn, idle - self._idle
        self._burn, self._idle = burn, idle
        self.busy += d_busy
        self.idle += d_idle
        self.write()
        return d_busy / (d_busy + d_idle) if d_busy + d_idle > 0 else 0.0

    def write(self) -> None:
        line = f"cpu  {self.busy} 0 0 {self.idle} 0 0 0 0 0 0"
        self.path.write_text(f"{line}\ncpu0 {self.busy} 0 0 {self.idle} 0 0 0 0 0 0\n")


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def test_calibrated_estimate_within_5_percent_of_a_lagging_meter(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    burners = [spawn(BURN) for _ in range(os.cpu_count() or 1)]
    children.extend(burners)
    stat = BurnerStat(tmp_path / "proc", [b.pid for b in burners])
    tree = SysfsTree(tmp_path / "sys")
    meter = tree.power_meter(watts=IDLE_W)
    clock = Clock()
    host = HostSettings(procfs=str(tmp_path / "proc"), sysfs=tree.sysfs)
    config = EstimatorConfig(
        calibrate_from="acpi", calibration=CalibrationConfig(window=40, min_ticks=MIN_TICKS)
    )
    estimator = EstimatorReceiver("estimator", config, host, clock)
    acpi = AcpiReceiver("acpi", AcpiConfig(battery=False), host, clock)
    estimator.start()
    acpi.start()
    attribution = AttributionProcessor(AttributionConfig(levels=["node"]))
    estimator.collect()
    acpi.collect()
    truth: list[float] = []
    errors: list[float] = []
    for running in PATTERN:
        n = len(truth)
        for b in burners:
            os.kill(b.pid, signal.SIGCONT if running else signal.SIGSTOP)
        time.sleep(0.4)
        load = stat.advance()
        before, clock.now = clock.now, time.monotonic()
        dt = clock.now - before
        truth.append(IDLE_W + DYNAMIC_W * load)
        part = estimator.collect()
        # the meter: one tick late, averaged over two ticks
        meter.drive("power1", sum(truth[-3:-1]) / len(truth[-3:-1]) if n else IDLE_W)
        batch = Batch(time.time_ns(), dt, "n1")
        batch.add(part)
        batch.add(acpi.collect())
        attribution.process(batch)
        (reading,) = [r for r in batch.energy if r.source == "model"]
        assert isinstance(reading, ModelReading)
        gauges = [g for g in part.gauges if g.name == FIT_ERROR]
        if n < READY:  # the meter was seen n times when this tick was estimated
            assert reading.attributes == {"model": "linear"}
            assert gauges == []
            continue
        assert reading.attributes == {"model": "calibrated", "calibrated_from": "acpi"}
        (zone,) = [z for z in batch.node_zones if z.source == "model"]
        assert zone.attributes == reading.attributes  # the node series says so too
        (gauge,) = gauges
        assert gauge.attributes == {"meter": "acpi"}
        assert gauge.unit == "W"
        assert 0 <= gauge.value < 0.05 * IDLE_W
        estimate = reading.joules / dt
        errors.append(abs(estimate - truth[-1]) / truth[-1])
    loads = [(t - IDLE_W) / DYNAMIC_W for t in truth]
    assert max(loads) - min(loads) > 0.5, loads  # the burners really varied the load
    assert len(errors) == len(PATTERN) - READY
    assert max(errors) < 0.05, errors
    calibration = estimator.calibrator.calibration
    assert calibration is not None
    assert calibration.line.idle == pytest.approx(IDLE_W, rel=0.05)
    assert calibration.line.dynamic == pytest.approx(DYNAMIC_W, rel=0.05)


# -- the fit alone -----------------------------------------------------------------------


def drive(calibrator: Calibrator, usage: list[float], meter: list[float | None]) -> None:
    for t, (u, watts) in enumerate(zip(usage, meter, strict=True)):
        calibrator.record(u)
        if watts is not None:
            reading = EnergyReading("platform", "platform", "ipmi", watts * 5.0)
            calibrator.observe([reading], 5.0, t)


def test_the_fit_finds_the_meters_lag_and_averaging_window() -> None:
    rng = random.Random(9)
    usage = [rng.random() for _ in range(80)]
    power = [55.0 + 120.0 * u for u in usage]
    # the meter shows the mean of ticks t-4 .. t-2: two ticks late, over three ticks
    meter: list[float | None] = [None] * 4 + [sum(power[t - 4 : t - 1]) / 3 for t in range(4, 80)]
    calibrator = Calibrator("ipmi", Line(10.0, 20.0, 0, 0.0, 0.0), window=60, min_ticks=20)
    drive(calibrator, usage, meter)
    calibration = calibrator.calibration
    assert calibration is not None
    assert (calibration.lag, calibration.smooth, calibration.slope_fitted) == (2, 3, True)
    assert calibration.line.idle == pytest.approx(55.0, rel=1e-9)
    assert calibration.line.dynamic == pytest.approx(120.0, rel=1e-9)
    assert calibration.line.rms_error == pytest.approx(0.0, abs=1e-9)


def test_without_variation_only_idle_is_fitted() -> None:
    calibrator = Calibrator("ipmi", Line(10.0, 20.0, 0, 0.0, 0.0), window=30, min_ticks=10)
    drive(calibrator, [0.5] * 20, [70.0] * 20)
    calibration = calibrator.calibration
    assert calibration is not None
    assert calibration.slope_fitted is False
    assert calibration.line.dynamic == 20.0  # the model's slope
    assert calibration.line.idle == pytest.approx(60.0)


def test_ticks_without_the_meter_and_a_second_pipeline_do_not_count() -> None:
    calibrator = Calibrator("acpi", Line(1.0, 2.0, 0, 0.0, 0.0), window=30, min_ticks=3)
    other = EnergyReading("platform", "platform", "ipmi", 500.0)
    for t in range(5):
        calibrator.record(0.2 * t)
        calibrator.observe([other], 5.0, t)  # an ipmi reading: not the meter asked for
    assert calibrator.observed == 0
    calibrator.record(0.5)
    mine = EnergyReading("platform", "platform", "acpi", 250.0)
    calibrator.observe([mine], 5.0, 99)
    calibrator.observe([mine], 5.0, 99)  # the same tick seen by a second pipeline
    assert calibrator.observed == 1
    assert calibrator.calibration is None


def test_calibration_config_errors() -> None:
    def error(raw: dict[str, object]) -> str:
        with pytest.raises(ConfigError) as err:
            decode(EstimatorConfig, raw, "receivers.estimator")
        return str(err.value)

    assert error({"calibrate_from": "rapl"}) == (
        "receivers.estimator.calibrate_from: must be one of 'ipmi', 'redfish', 'acpi', "
        "'hwmon', got 'rapl'"
    )
    assert error({"calibration": {"min_ticks": 500}}) == (
        "receivers.estimator.calibration.min_ticks: must be between 2 and window (120), got 500"
    )
    assert error({"calibration": {"max_smooth": 0}}) == (
        "receivers.estimator.calibration.max_smooth: must be 1 or more"
    )

"""Power models of the estimator: the SPECpower curve, its shipped table, regression files."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest

from otel_kepler.component import ComponentError, HostSettings, Receiver
from otel_kepler.data import Contribution, ProcessSample, Workload
from otel_kepler.receivers.estimator import (
    EstimatorConfig,
    EstimatorReceiver,
    RegressionConfig,
)
from otel_kepler.receivers.power_models import curve, regression
from otel_kepler.receivers.power_models.features import FeatureReader
from otel_kepler.schema import ConfigError, decode
from tests.test_estimator import FakeClock, ProcStat

R740 = "power_ssj2008-20190409-00952"
R740_WATTS = (49.8, 114.0, 137.0, 159.0, 182.0, 208.0, 240.0, 277.0, 319.0, 376.0, 432.0)

CPUINFO_R740 = "".join(
    f"processor\t: {n}\nvendor_id\t: GenuineIntel\n"
    "model name\t: Intel(R) Xeon(R) Platinum 8280 CPU @ 2.70GHz\n"
    f"physical id\t: {n % 2}\nsiblings\t: 56\ncpu cores\t: 28\n\n"
    for n in range(112)
)


# -- the curve --------------------------------------------------------------------------


def test_curve_is_exact_at_the_published_points() -> None:
    for index, watts in enumerate(R740_WATTS):
        assert curve.interpolate(R740_WATTS, index / 10) == pytest.approx(watts, abs=1e-9)


def test_curve_is_linear_between_points_and_clamped() -> None:
    assert curve.interpolate(R740_WATTS, 0.05) == pytest.approx((49.8 + 114.0) / 2)
    assert curve.interpolate(R740_WATTS, 0.93) == pytest.approx(376.0 + 0.3 * (432.0 - 376.0))
    assert curve.interpolate(R740_WATTS, 0.25) == pytest.approx(148.0)
    assert curve.interpolate(R740_WATTS, -0.5) == 49.8
    assert curve.interpolate(R740_WATTS, 1.7) == 432.0


def test_curve_is_monotonic() -> None:
    values = [curve.interpolate(R740_WATTS, i / 1000) for i in range(1001)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[0] == 49.8 and values[-1] == 432.0


def test_shipped_table_loads_and_every_row_is_sourced_and_plausible() -> None:
    table = curve.load_table()
    assert len(table) == 13
    ids = [row.id for row in table]
    assert len(set(ids)) == len(ids)
    for row in table:
        assert re.fullmatch(r"power_ssj2008-\d{8}-\d{5}", row.id)
        assert re.fullmatch(
            r"https?://www\.spec\.org/power_ssj2008/results/res\d{4}q\d/" + row.id + r"\.html",
            row.source,
        )
        assert row.transcribed_from
        assert len(row.watts) == 11
        assert 0 < row.watts[0] < row.watts[-1], row.id
        assert 50 <= row.watts[-1] <= 2000, row.id
        assert all(b >= a for a, b in zip(row.watts, row.watts[1:], strict=False)), row.id
        assert row.sockets in (1, 2) and row.cores >= 2
    r740 = next(row for row in table if row.id == R740)
    assert (r740.system, r740.cpu, r740.sockets, r740.cores) == (
        "Dell PowerEdge R740",
        "Xeon Platinum 8280",
        2,
        28,
    )
    assert r740.watts == R740_WATTS


@pytest.mark.parametrize(
    ("model_name", "sockets", "expected"),
    [
        ("Intel(R) Xeon(R) Platinum 8280 CPU @ 2.70GHz", 2, R740),
        ("Intel(R) Xeon(R) Platinum 8280 CPU @ 2.70GHz", 1, None),  # socket count differs
        ("AMD EPYC 7702P 64-Core Processor", 1, "power_ssj2008-20200728-01041"),
        ("AMD EPYC 7702 64-Core Processor", 1, None),  # not the P part
        ("Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz", 2, "power_ssj2008-20120306-00434"),
        ("Intel(R) Xeon(R) CPU E5-2670 v2 @ 2.50GHz", 2, None),  # another generation
        ("Intel(R) Xeon(R) CPU           X5670  @ 2.93GHz", 2, "power_ssj2008-20100315-00239"),
        ("AMD EPYC", 1, None),
    ],
)
def test_cpuinfo_matching(model_name: str, sockets: int, expected: str | None) -> None:
    row = curve.find(curve.load_table(), model_name, sockets)
    assert (row.id if row else None) == expected


def test_table_errors_name_the_row() -> None:
    header = "id,source,system,cpu,sockets,cores,idle," + ",".join(
        f"w{n}" for n in range(10, 101, 10)
    )
    good = "x,https://www.spec.org/r.html,S,C,1,4," + ",".join(str(v) for v in R740_WATTS)
    assert len(curve.load_table(f"{header},transcribed_from\n{good},me\n")) == 1
    falling = good.replace(",432.0", ",300")
    with pytest.raises(curve.CurveError) as err:
        curve.load_table(f"{header},transcribed_from\n{good},me\n{falling},me\n")
    assert str(err.value) == (
        "specpower.csv row 2: must not decrease: 300 W at 100% is below 376 W at 90%"
    )
    unsourced = good.replace("https://www.spec.org/r.html", "my notes")
    with pytest.raises(curve.CurveError) as err:
        curve.load_table(f"{header},transcribed_from\n{unsourced},me\n")
    assert str(err.value) == "specpower.csv row 1: source is not a result URL"


def test_parse_cpuinfo() -> None:
    info = curve.parse_cpuinfo(CPUINFO_R740)
    assert info == curve.CpuInfo("Intel(R) Xeon(R) Platinum 8280 CPU @ 2.70GHz", 2, 28, 112, 56)


# -- the curve in the estimator ---------------------------------------------------------


def curve_estimator(
    tmp_path: Path, cpuinfo: str, config: dict[str, Any], sysfs: Path | None = None
) -> tuple[EstimatorReceiver, ProcStat, FakeClock]:
    stat = ProcStat(tmp_path / "proc")
    (tmp_path / "proc" / "cpuinfo").write_text(cpuinfo)
    parsed = decode(EstimatorConfig, {"model": "curve", "curve": config}, "receivers.estimator")
    host = HostSettings(procfs=str(tmp_path / "proc"), sysfs=str(sysfs or tmp_path / "sys"))
    clock = FakeClock()
    receiver = EstimatorReceiver("estimator", parsed, host, clock)
    receiver.start()
    receiver.collect()
    return receiver, stat, clock


def tick_joules(
    receiver: EstimatorReceiver, stat: ProcStat, clock: FakeClock, ratio: float
) -> float:
    stat.run(ratio)
    clock.now += 5.0
    [reading] = receiver.collect().energy
    assert reading.source == "model"
    return reading.joules


def test_estimator_curve_from_the_matched_result(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    receiver, stat, clock = curve_estimator(tmp_path, CPUINFO_R740, {})
    assert tick_joules(receiver, stat, clock, 0.5) == pytest.approx(208.0 * 5, rel=1e-4)
    assert tick_joules(receiver, stat, clock, 0.25) == pytest.approx(148.0 * 5, rel=2e-4)
    stat.run(1.0)
    clock.now += 5.0
    [reading] = receiver.collect().energy
    assert (reading.component, reading.zone) == ("cpu", "package")
    assert reading.attributes == {"model": "curve", "model_name": R740}
    assert reading.joules == pytest.approx(432.0 * 5, rel=1e-4)
    assert (
        f"estimator: curve of SPECpower_ssj2008 result {R740} (Dell PowerEdge R740, "
        "2 x Xeon Platinum 8280) for 'Intel(R) Xeon(R) Platinum 8280 CPU @ 2.70GHz': "
        "49.8 W idle, 432 W at full load"
    ) in caplog.messages


def test_estimator_curve_from_config_points_share_and_platform_zone(tmp_path: Path) -> None:
    points = [10.0, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110]
    config = {"points": points, "share": 0.5, "zone": "platform"}
    receiver, stat, clock = curve_estimator(tmp_path, CPUINFO_R740, config)
    stat.run(0.35)
    clock.now += 5.0
    [reading] = receiver.collect().energy
    assert (reading.component, reading.zone) == ("platform", "platform")
    assert reading.attributes == {"model": "curve", "model_name": "config"}
    assert reading.joules == pytest.approx(0.5 * 45.0 * 5, rel=1e-3)


def test_unmatched_host_falls_back_to_the_tdp_curve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cpuinfo = "".join(
        f"processor\t: {n}\nmodel name\t: AMD EPYC 9999 Processor\nphysical id\t: 0\n"
        "siblings\t: 8\ncpu cores\t: 4\n\n"
        for n in range(8)
    )
    receiver, stat, clock = curve_estimator(tmp_path, cpuinfo, {"tdp_watts": 120})
    shape = curve.median_shape(curve.load_table())
    assert tick_joules(receiver, stat, clock, 1.0) == pytest.approx(120.0 * 5, rel=1e-4)
    assert tick_joules(receiver, stat, clock, 0.0) == pytest.approx(120.0 * shape[0] * 5, rel=1e-3)
    assert (
        "estimator: no SPECpower_ssj2008 result in the table for 'AMD EPYC 9999 Processor' with "
        "1 socket(s); using the median curve of its 13 results scaled to 120.0 W at full load "
        "(configured TDP 120 W per 4-core socket x 4 cores here)"
    ) in caplog.messages


def test_tdp_fallback_reads_rapl_constraint(tmp_path: Path) -> None:
    from tests.sysfs_fixtures import RaplTree

    tree = RaplTree(tmp_path / "sys")
    tree.add_socket()  # constraint_0_max_power_uw 150000000: 150 W
    cpuinfo = "processor\t: 0\nmodel name\t: Some CPU\nphysical id\t: 0\ncpu cores\t: 1\n"
    receiver, stat, clock = curve_estimator(tmp_path, cpuinfo, {}, tmp_path / "sys")
    assert tick_joules(receiver, stat, clock, 1.0) == pytest.approx(150.0 * 5, rel=1e-4)


def test_curve_config_errors() -> None:
    def error(raw: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as err:
            decode(EstimatorConfig, raw, "receivers.estimator")
        return str(err.value)

    assert error({"model": "curve", "curve": {"points": [1, 2, 3]}}) == (
        "receivers.estimator.curve.points: needs 11 values (active idle, 10% ... 100%), got 3"
    )
    assert error(
        {"model": "curve", "curve": {"points": [5, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14]}}
    ) == ("receivers.estimator.curve.points: must not decrease: 4 W at 10% is below 5 W at 0%")
    assert error({"model": "curve", "curve": {"share": 0}}) == (
        "receivers.estimator.curve.share: must be above 0 and at most 1, got 0"
    )
    assert error({"model": "curve", "idle_watts": 10}) == (
        "receivers.estimator.idle_watts: is a setting of model: linear, not of model: curve"
    )
    assert error({"model": "regression"}) == (
        "receivers.estimator.regression.file: is required with model: regression"
    )
    assert error({"model": "neural"}) == (
        "receivers.estimator.model: must be one of 'linear', 'curve', 'regression', got 'neural'"
    )


def test_unknown_result_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ComponentError) as err:
        curve_estimator(tmp_path, CPUINFO_R740, {"result": "power_ssj2008-20000101-00000"})
    assert str(err.value) == 'curve.result: no shipped result "power_ssj2008-20000101-00000"'


# -- regression model files -------------------------------------------------------------


def linear_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": "otel-kepler-power-model",
        "version": 1,
        "name": "test-model",
        "output": {"zone": "package", "kind": "absolute", "unit": "W"},
        "features": ["cpu_usage_ratio", "cpu_frequency_ghz"],
        "estimator": "linear",
        "linear": {
            "terms": [["cpu_usage_ratio"], ["cpu_usage_ratio", "cpu_frequency_ghz"]],
            "scaler": {"mean": [0.5, 1.0], "scale": [0.25, 0.5]},
            "weights": [10.0, 4.0],
            "bias": 50.0,
        },
        "trained_on": {"rows": 100},
        "heldout_error": {"rows": 25, "mae_watts": 1.0, "mape_percent": 2.0},
    }
    doc.update(changes)
    return doc


def test_linear_model_predicts_its_formula() -> None:
    model = regression.from_json(linear_doc())
    # 50 + 10 * (u - 0.5) / 0.25 + 4 * (u * f - 1) / 0.5
    assert model.predict([0.75, 2.0]) == pytest.approx(50 + 10 * 1 + 4 * 1)
    assert model.predict_features({"cpu_usage_ratio": 0.5, "cpu_frequency_ghz": 2.0}) == 50.0
    assert model.predict([0.0, 0.0]) == pytest.approx(50 - 20 - 8)


def test_dynamic_model_adds_idle() -> None:
    doc = linear_doc(output={"zone": "dram", "kind": "dynamic", "idle_watts": 7.5})
    model = regression.from_json(doc)
    assert model.predict([0.75, 2.0]) == pytest.approx(7.5 + 64)
    assert model.predict([0.75, 2.0], idle_watts=3.0) == pytest.approx(3.0 + 64)
    assert model.predict([0.0, 0.0]) == pytest.approx(7.5 + 22)


def test_model_file_round_trips(tmp_path: Path) -> None:
    model = regression.from_json(linear_doc())
    path = tmp_path / "model.json"
    regression.save(model, str(path))
    again = regression.load(str(path))
    assert again == model
    assert json.loads(path.read_text()) == linear_doc()
    boosted = regression.PowerModel(
        name="trees",
        zone="platform",
        kind="absolute",
        features=("cpu_usage_ratio",),
        body=regression.Boosted(
            100.0,
            0.5,
            (
                regression.Tree(
                    (0, -2, -2), (0.5, -2.0, -2.0), (1, -1, -1), (2, -1, -1), (0.0, -10.0, 30.0)
                ),
            ),
        ),
    )
    regression.save(boosted, str(path))
    loaded = regression.load(str(path))
    assert loaded == boosted
    assert loaded.predict([0.2]) == 95.0 and loaded.predict([0.9]) == 115.0


def refused(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(regression.ModelFileError) as err:
        regression.load(str(path))
    message = str(err.value)
    assert message.startswith(f"model file {path}: ")
    return message.removeprefix(f"model file {path}: ")


def test_bad_model_files_are_refused_with_the_problem(tmp_path: Path) -> None:
    good = json.dumps(linear_doc())
    assert refused(tmp_path, good[: len(good) // 2]) == (
        "not valid JSON (truncated?): Unterminated string starting at: line 1 column 238 (char 237)"
    )
    assert refused(tmp_path, json.dumps(linear_doc(version=2))) == (
        "unsupported version 2 (this agent reads version 1)"
    )
    nan = linear_doc()
    nan["linear"]["weights"] = [10.0, math.nan]
    assert refused(tmp_path, json.dumps(nan)) == "linear.weights[1] is not a finite number: nan"
    unknown = linear_doc(features=["cpu_usage_ratio", "gpu_util"])
    assert refused(tmp_path, json.dumps(unknown)) == (
        "unknown feature 'gpu_util' (known: cpu_usage_ratio, cpu_seconds_per_s, "
        "cpu_frequency_ghz, cycles_per_s, instructions_per_s, cache_misses_per_s, "
        "network_bytes_per_s, block_bytes_per_s, softirq_net_per_s, softirq_block_per_s)"
    )
    dropped = linear_doc(features=["cpu_usage_ratio"])
    assert refused(tmp_path, json.dumps(dropped)) == (
        "linear.terms[1] uses 'cpu_frequency_ghz', which is not in features"
    )
    short = linear_doc()
    short["linear"]["weights"] = [1.0]
    assert refused(tmp_path, json.dumps(short)) == "linear.weights has 1 values, expected 2"
    assert refused(
        tmp_path, json.dumps(linear_doc(output={"zone": "gpu", "kind": "absolute"}))
    ) == ("output.zone must be one of package, dram, platform, got 'gpu'")
    assert refused(
        tmp_path, json.dumps(linear_doc(output={"zone": "dram", "kind": "dynamic"}))
    ) == ("output.idle_watts is required for a dynamic model")
    with pytest.raises(regression.ModelFileError) as err:
        regression.load(str(tmp_path / "absent.json"))
    assert (
        str(err.value)
        == f"cannot read model file {tmp_path}/absent.json: No such file or directory"
    )


# -- regression in the estimator --------------------------------------------------------


def regression_estimator(
    tmp_path: Path, doc: dict[str, Any], **settings: Any
) -> tuple[EstimatorReceiver, ProcStat, FakeClock]:
    stat = ProcStat(tmp_path / "proc")
    path = tmp_path / "model.json"
    path.write_text(json.dumps(doc))
    config = EstimatorConfig(
        model="regression", regression=RegressionConfig(file=str(path), **settings)
    )
    host = HostSettings(procfs=str(tmp_path / "proc"), sysfs=str(tmp_path / "sys"))
    clock = FakeClock()
    return EstimatorReceiver("estimator", config, host, clock), stat, clock


def cpufreq(sysfs: Path, khz: list[int]) -> None:
    for n, value in enumerate(khz):
        directory = sysfs / "devices" / "system" / "cpu" / f"cpu{n}" / "cpufreq"
        directory.mkdir(parents=True)
        (directory / "scaling_cur_freq").write_text(f"{value}\n")


def test_model_with_features_missing_here_is_refused_at_start(tmp_path: Path) -> None:
    doc = linear_doc(features=["cpu_usage_ratio", "cpu_frequency_ghz", "cycles_per_s"])
    doc["linear"]["terms"].append(["cycles_per_s"])
    doc["linear"]["scaler"] = {"mean": [0, 0, 0], "scale": [1, 1, 1]}
    doc["linear"]["weights"] = [1, 1, 1]
    receiver, _, _ = regression_estimator(tmp_path, doc)
    with pytest.raises(ComponentError) as err:
        receiver.start()
    assert str(err.value) == (
        f"model 'test-model' ({tmp_path}/model.json) needs features this host does not provide: "
        f"cpu_frequency_ghz (no scaling_cur_freq under {tmp_path}/sys/devices/system/cpu/cpu*/"
        "cpufreq); cycles_per_s (hardware counters come only from the ebpf receiver)"
    )


def test_estimator_regression_with_frequency(tmp_path: Path) -> None:
    cpufreq(tmp_path / "sys", [2_000_000, 3_000_000])
    receiver, stat, clock = regression_estimator(tmp_path, linear_doc())
    receiver.start()
    assert receiver.collect().energy == []
    stat.run(0.75)
    clock.now += 2.0
    part = receiver.collect()
    [reading] = part.energy
    assert (reading.component, reading.zone, reading.source) == ("cpu", "package", "model")
    assert reading.attributes == {"model": "regression", "model_name": "test-model"}
    # u = 0.75, f = 2.5 GHz: 50 + 10 * 1 + 4 * (1.875 - 1) / 0.5 = 67 W for 2 s
    assert reading.joules == pytest.approx(67.0 * 2, rel=1e-3)
    assert part.cpu_usage_ratio == pytest.approx(0.75, abs=1e-4)


class CountingUsage(Receiver):
    """A usage receiver that reports processes with hardware counters (as ebpf does)."""

    counters_off: str | None = None

    def __init__(self) -> None:
        self.started = False

    def start(self) -> None:
        self.started = True

    def collect(self) -> Contribution:
        sample = ProcessSample(
            1, 1, "burn", "/bin/burn", Workload(), 1.0, 0.5, 4_000_000_000, 8_000_000_000, 10**6
        )
        return Contribution(processes={1: sample}, exited=[sample], cpu_usage_ratio=0.5)

    def shutdown(self) -> None:
        self.started = False


def test_estimator_regression_with_counters_from_the_usage_receiver(tmp_path: Path) -> None:
    doc = linear_doc(
        features=["instructions_per_s"],
        linear={
            "terms": [["instructions_per_s"]],
            "scaler": {"mean": [0.0], "scale": [1e9]},
            "weights": [2.0],
            "bias": 10.0,
        },
    )
    receiver, stat, clock = regression_estimator(tmp_path, doc)
    usage = CountingUsage()
    receiver._usage = usage  # noqa: SLF001 - what counters: ebpf embeds
    receiver.start()
    receiver.collect()
    stat.run(0.5)
    clock.now += 4.0
    part = receiver.collect()
    assert part.processes is not None and 1 in part.processes
    [reading] = part.energy
    # 2 x 8e9 instructions in 4 s = 4e9/s: 10 + 2 * 4 = 18 W
    assert reading.joules == pytest.approx(18.0 * 4, rel=1e-9)
    assert part.cpu_usage_ratio == 0.5  # the usage receiver's
    receiver.shutdown()
    assert not usage.started


def test_feature_reader_rates(tmp_path: Path) -> None:
    stat = ProcStat(tmp_path / "proc", cpus=4)
    clock = FakeClock()
    reader = FeatureReader(str(tmp_path / "proc"), str(tmp_path / "sys"), clock=clock)
    assert reader.sample() is None
    stat.run(0.5, jiffies=4 * 100 * 5)  # 4 CPUs for 5 s
    clock.now += 5.0
    features = reader.sample()
    assert features is not None
    ticks = os.sysconf("SC_CLK_TCK")
    assert features["cpu_usage_ratio"] == pytest.approx(0.5)
    assert features["cpu_seconds_per_s"] == pytest.approx(1000 / ticks / 5)
    assert "cpu_frequency_ghz" not in features and "cycles_per_s" not in features

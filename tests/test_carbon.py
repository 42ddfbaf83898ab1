# SPDX-License-Identifier: Apache-2.0
"""The carbon processor: accounting, the provider chain, each provider, the region table.

HTTP providers talk to servers shaped like the real APIs on 127.0.0.1
(tests/carbon_servers.py); the region detection reads a node object through the real
kubernetes client. Timeouts and backoffs are a few tens of milliseconds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from kubernetes import client as k8s_client
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.sdk.resources import Resource

from otel_kepler import metrics as m
from otel_kepler.component import ComponentError, HostSettings
from otel_kepler.config import parse
from otel_kepler.convert import Converter
from otel_kepler.data import (
    TERMINATED,
    Batch,
    EnergyReading,
    GpuEnergy,
    GpuSample,
    ProcessSample,
    Workload,
    WorkloadEnergy,
    ZoneEnergy,
)
from otel_kepler.processors.attribution import AttributionConfig, AttributionProcessor
from otel_kepler.processors.carbon import CarbonConfig, CarbonProcessor, factory
from otel_kepler.processors.carbon.accounting import (
    SECONDS_PER_YEAR,
    WorkloadMeter,
    cpu_joules,
    node_joules,
)
from otel_kepler.processors.carbon.providers import (
    DataError,
    ElectricityMapsProvider,
    FileProvider,
    Intensity,
    Provider,
    ProviderChain,
    RegionProvider,
    StaticProvider,
    WattTimeProvider,
    build_chain,
    load_table,
    parse_series,
    shipped_table,
)
from otel_kepler.processors.carbon.providers.http import (
    FetchError,
    Poller,
    get_json,
    parse_retry_after,
)
from otel_kepler.processors.carbon.providers.kubernetes import node_region
from otel_kepler.registry import Registry, default_registry
from otel_kepler.schema import ConfigError, decode
from otel_kepler.service import Service
from tests.carbon_servers import (
    FORECAST,
    LATEST,
    ApiServer,
    ElectricityMapsServer,
    Reply,
    WattTimeServer,
    em_latest,
    node,
    wt_forecast,
)
from tests.peers import OtlpHttpSink
from tests.sysfs_fixtures import RaplTree

J_PER_KWH = 3.6e6
T0 = 1_716_300_000.0  # 2024-05-21T14:00:00Z
CARBON_LOGGERS = "otel_kepler.processors.carbon"


# -- helpers ------------------------------------------------------------------------------


class Fixed(Provider):  # type: ignore[misc, unused-ignore]  # Provider is Any to mypy
    """A provider whose value the test sets; None: no value."""

    def __init__(self, name: str, value: float | None = None, region: str = "") -> None:
        self.name = name
        self.value = value
        self.region = region
        self.asked: list[float] = []

    def intensity(self, at: float) -> Intensity | None:
        self.asked.append(at)
        return Intensity(self.value, self.region) if self.value is not None else None

    def status(self) -> str:
        return "" if self.value is not None else "switched off"


def config(**raw: Any) -> CarbonConfig:
    return decode(CarbonConfig, raw, "processors.carbon")


def carbon(*providers: Provider, **raw: Any) -> CarbonProcessor:
    return CarbonProcessor(config(**raw), ProviderChain(providers))


def tick(t: float, *readings: EnergyReading, interval: float = 5.0, **fields: Any) -> Batch:
    return Batch(
        timestamp_ns=int(t * 1e9),
        interval_s=interval,
        node_name="node-a",
        energy=list(readings),
        **fields,
    )


def rapl(zone: str, joules: float) -> EnergyReading:
    return EnergyReading("cpu", zone, "rapl", joules)


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def rewrite(path: Path, text: str) -> None:
    """Write ``path`` with a modification time clearly after the previous one."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def warnings_of(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and r.name.startswith(CARBON_LOGGERS)
        and text in r.getMessage()
    ]


def fast(**raw: Any) -> dict[str, Any]:
    """HTTP settings for tests: quick timeouts and backoffs."""
    return {
        "cache_for": 0.05,
        "max_age": 5.0,
        "timeout": 0.5,
        "backoff": 0.05,
        "max_backoff": 0.2,
        **raw,
    }


# -- accounting ---------------------------------------------------------------------------


def test_grams_are_each_ticks_joules_times_that_ticks_intensity() -> None:
    grid = Fixed("static", 100.0, "DE")
    proc = carbon(grid)
    for i, (joules, intensity) in enumerate([(100.0, 100.0), (200.0, 300.0), (300.0, 500.0)]):
        grid.value = intensity
        batch = tick(T0 + 5 * (i + 1), rapl("package", joules))
        proc.process(batch)
    assert batch.carbon is not None
    expected = (100 * 100 + 200 * 300 + 300 * 500) / J_PER_KWH  # 0.0611 g
    assert batch.carbon.node_grams == pytest.approx(expected, rel=1e-12)
    assert batch.carbon.node_grams != pytest.approx(600 * 500 / J_PER_KWH)  # not total x final
    assert (batch.carbon.intensity, batch.carbon.provider, batch.carbon.region) == (
        500.0,
        "static",
        "DE",
    )


def test_intensity_is_asked_for_the_middle_of_the_tick() -> None:
    grid = Fixed("static", 100.0)
    carbon(grid).process(tick(T0 + 10, rapl("package", 1.0), interval=4.0))
    assert grid.asked == [T0 + 8.0]


def test_file_series_over_a_run(tmp_path: Path) -> None:
    """A step series changing every 10 s: each tick converts at the value in force."""
    path = tmp_path / "forecast.csv"
    path.write_text(f"timestamp,intensity\n{T0:.0f},100\n{T0 + 10:.0f},400\n{T0 + 20:.0f},250\n")
    cfg = config(providers=["file"], file={"path": str(path), "max_gap": "1m"})
    proc = CarbonProcessor(cfg, build_chain(cfg, HostSettings()))
    proc.start()
    try:
        seen = []
        for i in range(6):  # ticks ending at T0+5 ... T0+30, 50 J each
            batch = tick(T0 + 5 * (i + 1), rapl("package", 50.0))
            proc.process(batch)
            assert batch.carbon is not None
            seen.append(batch.carbon.intensity)
    finally:
        proc.shutdown()
    assert seen == [100.0, 100.0, 400.0, 400.0, 250.0, 250.0]
    assert batch.carbon is not None
    assert batch.carbon.node_grams == pytest.approx(50 * sum(seen) / J_PER_KWH)
    assert batch.carbon.provider == "file"


@pytest.mark.parametrize(
    ("parts", "gpus", "expected"),
    [
        # a whole-node meter wins over its parts (CPU, DRAM, GPUs are inside it)
        (
            [
                rapl("package", 40),
                rapl("dram", 8),
                EnergyReading("platform", "platform", "ipmi", 300),
            ],
            [100.0],
            300.0,
        ),
        # core and uncore are inside package
        ([rapl("package", 40), rapl("core", 30), rapl("uncore", 5), rapl("dram", 8)], [], 48.0),
        # psys is the whole SoC: only without package, and DRAM is inside it
        ([rapl("psys", 20), rapl("dram", 3), rapl("core", 9)], [], 20.0),
        ([rapl("package", 40), rapl("psys", 70), rapl("dram", 8)], [], 48.0),
        # CPU + DRAM + every GPU
        ([rapl("package", 40), rapl("dram", 8)], [100.0, 50.0], 198.0),
        # per-socket hwmon zones add up; a GPU chip seen by hwmon is a GPU
        (
            [
                EnergyReading("cpu", "esocket0", "hwmon", 30),
                EnergyReading("cpu", "esocket1", "hwmon", 31),
                EnergyReading("gpu", "amdgpu_1", "hwmon", 9),
            ],
            [],
            70.0,
        ),
        # one source per zone: measured before modelled, ipmi before acpi
        ([rapl("package", 50), EnergyReading("cpu", "package", "model", 80)], [], 50.0),
        (
            [
                EnergyReading("platform", "platform", "acpi", 310),
                EnergyReading("platform", "platform", "ipmi", 300),
            ],
            [],
            300.0,
        ),
        # a discharging battery is what the machine draws; platform remainder is not a meter
        ([EnergyReading("platform", "battery", "acpi", 12), rapl("package", 7)], [], 12.0),
        ([EnergyReading("platform", "other", "ipmi", 90), rapl("package", 7)], [], 7.0),
        ([], [], 0.0),
    ],
)
def test_node_joules_count_each_zone_once(
    parts: list[EnergyReading], gpus: list[float], expected: float
) -> None:
    samples = [GpuSample(i, f"GPU-{i}", "H100", j, j / 5) for i, j in enumerate(gpus)]
    assert node_joules(tick(T0, *parts, gpus=samples), ["platform", "battery"]) == expected


def test_node_joules_from_attribution_zones_and_configured_platform_zones() -> None:
    zone = ZoneEnergy("platform", "vdd_in", "hwmon", None, 11.0, 2.2, 11.0, 0.0, 11.0)
    cpu = ZoneEnergy("cpu", "package", "rapl", None, 4.0, 0.8, 4.0, 0.0, 4.0)
    gpu = GpuEnergy("GPU-0", {}, 6.0, 1.2, 6.0, 0.0, 6.0, None)
    batch = tick(T0, rapl("package", 999.0), node_zones=[zone, cpu], node_gpus=[gpu])
    assert node_joules(batch, ["platform", "battery"]) == 10.0  # the zones, not the readings
    assert node_joules(batch, ["vdd_in"]) == 11.0


def test_cpu_joules_rule() -> None:
    assert cpu_joules({"package": 10.0, "core": 7.0, "uncore": 1.0, "dram": 2.0}) == 12.0
    assert cpu_joules({"psys": 15.0, "dram": 2.0}) == 15.0
    assert cpu_joules({"core": 7.0, "uncore": 1.0}) == 8.0  # nothing else measured


def two_processes(cpu_a: float, cpu_b: float, t: float, ratio: float = 0.5) -> Batch:
    pod = Workload("c1", "containerd", "p1", "web", "web-0", "shop")
    samples = {
        10: ProcessSample(10, 100, "nginx", "/usr/sbin/nginx", pod, 50.0, cpu_a),
        11: ProcessSample(11, 101, "php", "/usr/bin/php", pod, 20.0, cpu_b),
    }
    batch = tick(t, rapl("package", 100.0), rapl("core", 60.0), rapl("dram", 20.0))
    batch.cpu_usage_ratio = ratio
    batch.processes = samples
    batch.has_usage = True
    return batch


def test_workloads_get_their_attributed_joules_at_each_ticks_intensity() -> None:
    attribution = AttributionProcessor(
        decode(AttributionConfig, {"levels": ["node", "process", "container", "pod"]}, "a")
    )
    grid = Fixed("static", 200.0)
    proc = carbon(grid)
    # tick 1: active = 0.5 x 120 J (package + dram), 3:1 between the processes
    b1 = two_processes(3.0, 1.0, T0 + 5)
    attribution.process(b1)
    proc.process(b1)
    grid.value = 600.0
    b2 = two_processes(1.0, 1.0, T0 + 10, ratio=0.25)  # active = 30 J, 1:1
    attribution.process(b2)
    proc.process(b2)
    co2 = {(w.level, w.attributes.get("pid", "")): w.co2_grams for w in b2.workloads}
    assert co2[("process", "10")] == pytest.approx((45 * 200 + 15 * 600) / J_PER_KWH)
    assert co2[("process", "11")] == pytest.approx((15 * 200 + 15 * 600) / J_PER_KWH)
    assert co2[("container", "")] == pytest.approx((60 * 200 + 30 * 600) / J_PER_KWH)
    assert co2[("pod", "")] == pytest.approx((60 * 200 + 30 * 600) / J_PER_KWH)
    assert b2.carbon is not None  # the node has idle too: all 120 J per tick
    assert b2.carbon.node_grams == pytest.approx((120 * 200 + 120 * 600) / J_PER_KWH)


def test_workload_gpu_joules_count_and_core_does_not() -> None:
    w = WorkloadEnergy("process", {"pid": "7"}, {"package": 10.0, "core": 8.0, "dram": 2.0}, {})
    w.gpu_joules = {"GPU-0": 30.0}
    proc = carbon(Fixed("static", 360.0))
    proc.process(tick(T0, workloads=[w]))
    assert w.co2_grams == pytest.approx(42 * 360 / J_PER_KWH)
    w.joules = {"package": 15.0, "core": 12.0, "dram": 3.0}  # +6 J
    w.gpu_joules = {"GPU-0": 30.0, "GPU-1": 4.0}  # +4 J
    proc.process(tick(T0 + 5, workloads=[w]))
    assert w.co2_grams == pytest.approx(52 * 360 / J_PER_KWH)


def test_workload_meter_forgets_terminated_and_unreported() -> None:
    meter = WorkloadMeter(forget_after=2)
    ended = WorkloadEnergy("process", {"pid": "1"}, {"package": 5.0}, {})
    quiet = WorkloadEnergy("process", {"pid": "2"}, {"package": 5.0}, {"package": 1.0})
    assert meter.joules(ended, 5.0) == 5.0
    assert meter.joules(quiet, 5.0) == 5.0
    ended.state = TERMINATED
    meter.end_tick([ended, quiet])
    assert len(meter) == 1
    for _ in range(3):  # quiet is not reported for 3 ticks
        meter.end_tick([])
    assert len(meter) == 0
    quiet.co2_grams = 1.0  # converted before: its tick is measured from its watts
    quiet.joules = {"package": 9.0}
    assert meter.joules(quiet, 5.0) == 5.0  # 1 W x 5 s, not its 9 J since start


def test_pue_applies_to_node_and_workloads() -> None:
    w = WorkloadEnergy("pod", {"pod_id": "p"}, {"package": 36.0}, {})
    proc = carbon(Fixed("static", 100.0), pue=1.5)
    batch = tick(T0, rapl("package", 72.0), workloads=[w])
    proc.process(batch)
    assert batch.carbon is not None
    assert batch.carbon.node_grams == pytest.approx(72 * 100 * 1.5 / J_PER_KWH)
    assert w.co2_grams == pytest.approx(36 * 100 * 1.5 / J_PER_KWH)


def test_embodied_is_amortised_per_second_and_stays_with_the_node() -> None:
    w = WorkloadEnergy("pod", {"pod_id": "p"}, {"package": 36.0}, {})
    proc = carbon(Fixed("static", 100.0), embodied={"total_kg": 1000, "lifetime_years": 4})
    per_second = 1000 * 1000 / (4 * 365 * 86400)
    batch = tick(T0, rapl("package", 72.0), workloads=[w])
    proc.process(batch)
    proc.process(batch := tick(T0 + 5, rapl("package", 72.0), interval=7.5, workloads=[w]))
    assert batch.carbon is not None
    assert batch.carbon.embodied_grams == pytest.approx(12.5 * per_second)
    assert batch.carbon.node_grams == pytest.approx(144 * 100 / J_PER_KWH)  # operational only
    assert w.co2_grams == pytest.approx(36 * 100 / J_PER_KWH)  # no embodied share
    # the SCI specification's example: 1000 kg over 4 years, reserved one hour: about 28 g
    assert 3600 * per_second == pytest.approx(28.54, abs=0.01)
    assert SECONDS_PER_YEAR == 365 * 86400


def test_chain_first_with_a_value_wins_in_order(caplog: pytest.LogCaptureFixture) -> None:
    api, forecast, fixed = Fixed("electricitymaps"), Fixed("file"), Fixed("static", 300.0)
    proc = carbon(api, forecast, fixed)
    seen = []
    for i, (a, f) in enumerate([(None, None), (None, 250.0), (120.0, 250.0), (None, None)]):
        api.value, forecast.value = a, f
        batch = tick(T0 + 5 * i, rapl("package", 36.0))
        proc.process(batch)
        assert batch.carbon is not None
        seen.append((batch.carbon.provider, batch.carbon.intensity))
    assert seen == [
        ("static", 300.0),
        ("file", 250.0),
        ("electricitymaps", 120.0),
        ("static", 300.0),
    ]
    assert warnings_of(caplog, "carbon: intensity from static now") == [
        "carbon: intensity from static now (electricitymaps: switched off; file: switched off)"
    ]


def test_no_value_yet_counts_nothing_then_holds_the_last(caplog: pytest.LogCaptureFixture) -> None:
    grid = Fixed("electricitymaps")
    w = WorkloadEnergy("pod", {"pod_id": "p"}, {"package": 36.0}, {})
    proc = carbon(grid)
    for i in range(2):
        batch = tick(T0 + 5 * i, rapl("package", 36.0), workloads=[w])
        proc.process(batch)
        assert batch.carbon is None
        assert w.co2_grams is None
    grid.value = 100.0
    w.joules = {"package": 72.0}
    proc.process(batch := tick(T0 + 10, rapl("package", 36.0), workloads=[w]))
    assert w.co2_grams == pytest.approx(36 * 100 / J_PER_KWH)  # not the 72 J of the first ticks
    grid.value = None
    for i in range(2):
        proc.process(batch := tick(T0 + 15 + 5 * i, rapl("package", 36.0)))
    assert batch.carbon is not None
    assert (batch.carbon.provider, batch.carbon.intensity) == ("electricitymaps", 100.0)
    assert batch.carbon.node_grams == pytest.approx(3 * 36 * 100 / J_PER_KWH)
    assert warnings_of(caplog, "no provider has an intensity") == [
        "carbon: no provider has an intensity yet (electricitymaps: switched off); not counting",
        "carbon: no provider has an intensity now (electricitymaps: switched off); "
        "holding 100 gCO2e/kWh from electricitymaps",
    ]


def test_converted_series() -> None:
    proc = carbon(Fixed("static", 250.0, "FR"), embodied={"total_kg": 100})
    w = WorkloadEnergy("pod", {"pod_id": "p", "pod_name": "web-0"}, {"package": 36.0}, {})
    batch = tick(T0, rapl("package", 72.0), workloads=[w])
    proc.process(batch)
    snapshot = Converter(Resource.create({"service.name": "otel-kepler"}), 0, "node-a").convert(
        batch
    )
    data = snapshot.to_metrics_data()
    metrics = {x.name: x for rm in data.resource_metrics for x in rm.scope_metrics[0].metrics}

    def point(name: str) -> tuple[Any, dict[str, Any]]:
        (p,) = metrics[name].data.data_points
        assert isinstance(p, NumberDataPoint)
        return p.value, dict(p.attributes or {})

    assert point(m.CO2["pod"].name) == (
        pytest.approx(36 * 250 / J_PER_KWH),
        {"pod_id": "p", "pod_name": "web-0", "state": "running"},
    )
    assert point("kepler.node.co2") == (
        pytest.approx(72 * 250 / J_PER_KWH),
        {"node_name": "node-a"},
    )
    assert point("kepler.grid.carbon.intensity") == (
        250.0,
        {"node_name": "node-a", "provider": "static", "region": "FR"},
    )
    embodied = pytest.approx(100e3 * 5 / (4 * SECONDS_PER_YEAR))
    assert point("kepler.node.embodied.co2") == (embodied, {"node_name": "node-a"})


# -- config -------------------------------------------------------------------------------


def test_config_defaults_and_factory() -> None:
    cfg = config()
    assert cfg.providers == ["region"]
    assert (cfg.pue, cfg.embodied.total_kg, cfg.electricitymaps.cache_for) == (1.0, 0.0, 300.0)
    assert factory.type == "carbon"
    proc = factory.create(
        "carbon", config(providers=["static"], static={"intensity": 5}), HostSettings()
    )
    assert isinstance(proc, CarbonProcessor)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"providers": ["static"]},
            "processors.carbon.static.intensity: is required when static is a provider",
        ),
        (
            {"providers": ["static", "ember"]},
            "processors.carbon.providers[1]: must be one of 'static', 'region', 'file', "
            "'electricitymaps', 'watttime', got 'ember'",
        ),
        (
            {"providers": ["region", "region"]},
            "processors.carbon.providers: a provider is listed twice",
        ),
        ({"providers": []}, "processors.carbon.providers: name at least one provider"),
        ({"pue": 0.9}, "processors.carbon.pue: must be 1.0 or more, got 0.9"),
        (
            {"static": {"intensity": -3}},
            "processors.carbon.static.intensity: must be 0 to 2000 gCO2e/kWh, got -3",
        ),
        (
            {"region": {"region": "xx-nowhere-9"}},
            'processors.carbon.region.region: unknown region "xx-nowhere-9": not in the '
            "shipped table (docs/carbon.md lists it); use static for another grid",
        ),
        (
            {"providers": ["file"]},
            "processors.carbon.file.path: is required when file is a provider",
        ),
        (
            {"providers": ["electricitymaps"]},
            "processors.carbon.electricitymaps.zone: is required when electricitymaps is a "
            "provider",
        ),
        (
            {"electricitymaps": {"cache_for": "10m", "max_age": "5m"}},
            "processors.carbon.electricitymaps.max_age: must be at least cache_for",
        ),
        (
            {"embodied": {"total_kg": 100, "lifetime_years": 0}},
            "processors.carbon.embodied.lifetime_years: must be more than 0, got 0",
        ),
        (
            {"watttime": {"region": "CAISO_NORTH", "token": "x"}},
            "processors.carbon.watttime.token: unknown key (known keys: backoff, cache_for, "
            "max_age, max_backoff, password_env, password_file, region, signal_type, timeout, "
            "url, username, username_env)",
        ),
    ],
)
def test_config_errors_name_the_path(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(**raw)
    assert str(err.value) == message


# -- the region table ---------------------------------------------------------------------


def test_shipped_region_table_is_complete_plausible_and_sourced() -> None:
    table = shipped_table()
    kinds: dict[str, int] = {}
    for row in table.rows:
        kinds[row.kind] = kinds.get(row.kind, 0) + 1
        assert table.find(row.code) is row  # every region it claims, by its own code
        assert table.find(f"{row.kind}:{row.code}".upper()) is row
        assert 0 < row.intensity <= 1200, row
        assert len(row.source) > 20 and 2015 <= row.year <= 2025, row
        assert row.name, row
    assert kinds["country"] >= 30 and kinds["aws"] >= 20
    assert kinds["gcp"] >= 30 and kinds["azure"] >= 30
    main = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1"]
    main += ["us-central1", "europe-west1", "asia-east1", "eastus", "westeurope", "northeurope"]
    main += ["US", "DE", "FR", "GB", "IN", "CN", "JP", "BR", "AU", "SE", "PL"]
    assert [code for code in main if table.find(code) is None] == []
    assert (table.find("de").intensity, table.find("eu-west-1").intensity) == (422.0, 278.6)
    assert table.find("gcp:europe-west9").intensity == 34.0


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("country,XX,Nowhere,-5,Someone,2022", "t.csv row 1: intensity -5 is negative"),
        ("country,XX,Nowhere,lots,Someone,2022", "t.csv row 1: intensity 'lots' is not a number"),
        ("country,XX,Nowhere,300,,2022", "t.csv row 1: no source"),
        ("country,XX,Nowhere,300,Someone,recent", "t.csv row 1: year 'recent' is not a year"),
        (
            "planet,XX,Nowhere,300,Someone,2022",
            "t.csv row 1: unknown kind 'planet' (one of country, aws, gcp, azure)",
        ),
        ("country,XX,Nowhere,300,Someone", "t.csv row 1: 5 columns, expected 6"),
    ],
)
def test_region_table_rejects_bad_rows(row: str, message: str) -> None:
    with pytest.raises(DataError) as err:
        load_table(f"kind,code,name,intensity,source,year\n{row}\n", "t.csv")
    assert str(err.value) == message


def test_region_table_rejects_a_row_listed_twice() -> None:
    text = "kind,code,name,intensity,source,year\n" + "aws,x-1,X,1,S,2022\n" * 2
    with pytest.raises(DataError, match=r"^t.csv row 2: aws:x-1 is listed twice$"):
        load_table(text, "t.csv")


def test_region_provider_configured() -> None:
    provider = RegionProvider(shipped_table(), "westeurope")
    assert provider.intensity(T0) == Intensity(328.4, "westeurope")
    assert provider.status() == ""


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer() as server:
        yield server


def test_region_detected_from_the_node_label(api: ApiServer) -> None:
    api.script(
        "/api/v1/nodes/node-a",
        node(
            "node-a", {"topology.kubernetes.io/region": "europe-west3", "kubernetes.io/os": "linux"}
        ),
    )
    api.script("/api/v1/nodes/node-b", node("node-b", {"topology.kubernetes.io/region": "mars-1"}))
    api.script("/api/v1/nodes/node-c", Reply(403, {"kind": "Status", "code": 403}))
    k8s = k8s_client.Configuration()
    k8s.host = api.url
    assert node_region("node-a", k8s, 1.0) == "europe-west3"
    provider = RegionProvider(shipped_table(), detect=lambda: node_region("node-a", k8s, 1.0))
    unknown = RegionProvider(shipped_table(), detect=lambda: node_region("node-b", k8s, 1.0))
    refused = RegionProvider(shipped_table(), detect=lambda: node_region("node-c", k8s, 1.0))
    for p in (provider, unknown, refused):
        p.start()
    try:
        wait_for(lambda: provider.intensity(T0) is not None)
        assert provider.intensity(T0) == Intensity(345.0, "europe-west3")
        wait_for(lambda: "mars-1" in unknown.status())
        assert unknown.intensity(T0) is None
        assert (
            unknown.status()
            == 'node label topology.kubernetes.io/region="mars-1" is not in the table'
        )
        wait_for(lambda: refused.status() != "detecting the node's region")
        assert refused.status() == (
            "reading node node-c: HTTP 403 Forbidden (the service account needs get on nodes)"
        )
    finally:
        for p in (provider, unknown, refused):
            p.shutdown()


def test_region_detection_needs_kubernetes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    (provider,) = build_chain(config(), HostSettings(node_name="node-a")).providers
    assert provider.intensity(T0) is None
    assert provider.status() == "no region configured, and not in Kubernetes"


# -- the file provider --------------------------------------------------------------------


def series(text: str, fmt: Literal["csv", "json"] = "csv", max_gap: float = 3600.0) -> Any:
    return parse_series(text, "f.csv", fmt, max_gap)


def test_file_step_and_linear() -> None:
    s = series(
        "Timestamp,Intensity,zone\n2024-05-21T14:00:00Z,100,DE\n2024-05-21T15:00:00+00:00,400,DE\n"
    )
    assert s.times == [T0, T0 + 3600]
    assert [s.at(T0 + dt, "step", 1800) for dt in (-1, 0, 1800, 3600, 5400, 5401)] == [
        None,
        100.0,
        100.0,
        400.0,
        400.0,
        None,
    ]
    assert [s.at(T0 + dt, "linear", 1800) for dt in (-1, 0, 900, 3600, 3601)] == [
        None,
        100.0,
        175.0,
        400.0,
        None,
    ]


def test_file_json_shapes() -> None:
    export = (
        '{"zone": "DE", "forecast": ['
        '{"carbonIntensity": 300, "datetime": "2024-05-21T14:00:00.000Z"}, '
        '{"carbonIntensity": 280, "datetime": "2024-05-21T15:00:00.000Z"}]}'
    )
    assert series(export, "json").values == [300.0, 280.0]
    plain = f'[{{"timestamp": {T0}, "intensity": 12.5}}]'
    assert (series(plain, "json").times, series(plain, "json").values) == ([T0], [12.5])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "timestamp,intensity\n1716300000,100\n1716303600,-20\n",
            "f.csv row 2: intensity -20 is negative",
        ),
        ("timestamp,intensity\n1716300000,n/a\n", "f.csv row 1: intensity 'n/a' is not a number"),
        (
            "timestamp,intensity\n1716300000,nan\n",
            "f.csv row 1: intensity 'nan' is not a finite number",
        ),
        (
            "timestamp,intensity\n1716300000,100\n1716303600,90\n1716314400,80\n",
            "f.csv row 3: gap of 3h since the previous row (max_gap is 1h)",
        ),
        (
            "timestamp,intensity\n1716303600,100\n1716300000,90\n",
            "f.csv row 2: time 1716300000 is not after the previous row's",
        ),
        (
            "timestamp,intensity\n2024-05-21T14:00:00,100\n",
            "f.csv row 1: time '2024-05-21T14:00:00' has no UTC offset (add Z or +00:00)",
        ),
        (
            "timestamp,intensity\nyesterday,100\n",
            "f.csv row 1: time 'yesterday' is not ISO 8601 or Unix seconds",
        ),
        (
            "time,value\n1716300000,100\n",
            "f.csv: no intensity column in the header (one of "
            "intensity, carbon_intensity, carbonintensity, gco2e_per_kwh)",
        ),
        ("timestamp,intensity\n", "f.csv: no data rows"),
        (
            "timestamp,intensity\n1716300000,4500\n",
            "f.csv row 1: intensity 4500 is above 2000 gCO2e/kWh (wrong unit?)",
        ),
    ],
)
def test_file_rejects_bad_data_naming_the_row(text: str, message: str) -> None:
    with pytest.raises(DataError) as err:
        series(text)
    assert str(err.value) == message


def test_file_json_errors() -> None:
    with pytest.raises(DataError, match=r"^f.csv row 2: needs a time and an intensity$"):
        series(f'[{{"timestamp": {T0}, "intensity": 1}}, {{"timestamp": {T0 + 60}}}]', "json")
    with pytest.raises(DataError, match=r"^f.csv: malformed JSON: Expecting value: line 1"):
        series("[1,", "json")


def test_file_reloaded_when_it_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "now.json"
    path.write_text(f'[{{"timestamp": {T0}, "intensity": 100}}]')
    provider = FileProvider(config(file={"path": str(path), "check_every": 0.02}).file)
    provider.start()
    try:
        assert provider.intensity(T0 + 60) == Intensity(100.0, "")
        assert provider.intensity(T0 + 7260) is None  # the first version ends at T0 + 1h
        rewrite(path, f'[{{"timestamp": {T0 + 7200}, "intensity": 140}}]')
        wait_for(lambda: provider.intensity(T0 + 7260) is not None)
        assert provider.intensity(T0 + 7260) == Intensity(140.0, "")
        rewrite(path, f'[{{"timestamp": {T0 + 600}, "intensity": -1}}]')  # bad: rejected
        wait_for(lambda: provider.error)
        assert provider.error == f"{path} row 1: intensity -1 is negative"
        assert provider.intensity(T0 + 7260) == Intensity(140.0, "")  # the previous version
        time.sleep(0.1)  # checked again, same bad version: logged once
        assert warnings_of(caplog, "file rejected") == [
            f"file rejected: {path} row 1: intensity -1 is negative; keeping the previous version"
        ]
    finally:
        provider.shutdown()


def test_file_missing(tmp_path: Path) -> None:
    provider = FileProvider(config(file={"path": str(tmp_path / "none.csv")}).file)
    provider.check()
    assert provider.intensity(T0) is None
    assert provider.status() == f"{tmp_path / 'none.csv'}: No such file or directory"


# -- HTTP ---------------------------------------------------------------------------------


def test_poller_backs_off_exponentially_and_honours_retry_after() -> None:
    answers: list[Exception | float] = [
        FetchError("HTTP 503"),
        FetchError("HTTP 503"),
        FetchError("HTTP 429", 429, retry_after=9.0),
        FetchError("HTTP 503"),
        FetchError("HTTP 503"),
        7.0,
    ]

    def fetch() -> float:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    poller: Poller[float] = Poller("test", fetch, cache_for=60.0, backoff=0.5, max_backoff=3.0)
    delays = [poller.poll_once() for _ in range(6)]
    assert delays == [0.5, 1.0, 9.0, 3.0, 3.0, 60.0]
    assert poller.answer is not None and poller.answer.value == 7.0
    assert (poller.failures, poller.error) == (0, "")


def test_retry_after_header_forms() -> None:
    assert parse_retry_after("120", 0.0) == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert parse_retry_after("soon", 0.0) is None
    assert parse_retry_after(None, 0.0) is None


def test_get_json_failures(api: ApiServer) -> None:
    api.script("/slow", Reply(200, {"ok": 1}, delay=0.5))
    api.script("/bad", Reply(200, b'{"carbonIntensity": 3'))
    api.script("/busy", Reply(429, {}, {"Retry-After": "2"}))
    api.script("/moved", Reply(302, {}, {"Location": f"{api.url}/elsewhere"}))
    with pytest.raises(FetchError, match=r"^no answer within 0.1s$"):
        get_json(f"{api.url}/slow", {}, 0.1)
    with pytest.raises(FetchError) as err:
        get_json(f"{api.url}/bad", {}, 1.0)
    assert str(err.value) == (
        "malformed JSON in the answer: Expecting ',' delimiter: line 1 column 22 (char 21)"
    )
    with pytest.raises(FetchError) as err:
        get_json(f"{api.url}/busy", {}, 1.0)
    assert (str(err.value), err.value.status, err.value.retry_after) == (
        "HTTP 429 Too Many Requests (retry after 2s)",
        429,
        2.0,
    )
    with pytest.raises(FetchError, match=r"^HTTP 302 Found$"):  # credentials stay here
        get_json(f"{api.url}/moved", {"auth-token": "t"}, 1.0)
    assert api.requests_to("/elsewhere") == []
    with pytest.raises(FetchError, match=r"^cannot connect: \[Errno 111\] Connection refused$"):
        get_json("http://127.0.0.1:1/", {}, 1.0)


# -- Electricity Maps ---------------------------------------------------------------------


@pytest.fixture
def em() -> Iterator[ElectricityMapsServer]:
    with ElectricityMapsServer() as server:
        yield server


def em_provider(
    server: ElectricityMapsServer, tmp_path: Path, token: str = "", **raw: Any
) -> ElectricityMapsProvider:
    secret = tmp_path / "em-token"
    secret.write_text((token or server.token) + "\n")
    settings = fast(zone="DE", url=server.url, token_file=str(secret), **raw)
    return ElectricityMapsProvider(config(electricitymaps=settings).electricitymaps)


def test_electricitymaps_latest(em: ElectricityMapsServer, tmp_path: Path) -> None:
    em.script(LATEST, em_latest("DE", 302))
    provider = em_provider(em, tmp_path, cache_for=30.0, max_age=60.0)
    provider.start()
    try:
        wait_for(lambda: provider.intensity(T0) is not None)
        assert provider.intensity(T0) == Intensity(302.0, "DE")
        time.sleep(0.1)
        (request,) = em.requests_to(LATEST)  # cached: asked once
    finally:
        provider.shutdown()
    assert request.query == {"zone": "DE", "emissionFactorType": "lifecycle"}
    assert request.headers["auth-token"] == em.token


def test_electricitymaps_token_from_the_environment(
    em: ElectricityMapsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    em.script(LATEST, em_latest("FR", 41.5))
    monkeypatch.setenv("EM_TOKEN_TEST", em.token)
    settings = fast(zone="FR", url=em.url, token_env="EM_TOKEN_TEST")
    provider = ElectricityMapsProvider(config(electricitymaps=settings).electricitymaps)
    provider.start()
    try:
        wait_for(lambda: provider.intensity(T0) is not None)
        assert provider.intensity(T0) == Intensity(41.5, "FR")
    finally:
        provider.shutdown()


def test_electricitymaps_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ELECTRICITYMAPS_TOKEN", raising=False)
    provider = ElectricityMapsProvider(config(electricitymaps={"zone": "DE"}).electricitymaps)
    with pytest.raises(ComponentError) as err:
        provider.start()
    assert str(err.value) == (
        "electricitymaps: no API token: set token_file, or the environment variable "
        "ELECTRICITYMAPS_TOKEN"
    )


def test_electricitymaps_refused_token_is_logged_once_without_the_token(
    em: ElectricityMapsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    em.script(LATEST, em_latest("DE", 302))
    provider = em_provider(em, tmp_path, token="em-token-revoked")
    provider.start()
    try:
        wait_for(lambda: len(em.requests_to(LATEST)) >= 4)
    finally:
        provider.shutdown()
    assert provider.intensity(T0) is None
    assert provider.status() == "HTTP 401 Unauthorized: the credentials were refused"
    assert warnings_of(caplog, "electricitymaps") == [
        "electricitymaps: HTTP 401 Unauthorized: the credentials were refused; the chain falls "
        "through until it answers"
    ]
    assert "em-token-revoked" not in caplog.text


def test_electricitymaps_429_waits_for_retry_after(
    em: ElectricityMapsServer, tmp_path: Path
) -> None:
    em.script(
        LATEST, Reply(429, {"message": "rate limited"}, {"Retry-After": "1"}), em_latest("DE", 290)
    )
    provider = em_provider(em, tmp_path)
    provider.start()
    try:
        wait_for(lambda: provider.intensity(T0) is not None)
    finally:
        provider.shutdown()
    first, second = em.requests_to(LATEST)[:2]
    assert second.at - first.at >= 0.95  # not the 0.05 s backoff
    assert provider.intensity(T0) == Intensity(290.0, "DE")


def test_electricitymaps_outage_then_recovery(
    em: ElectricityMapsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    em.script(LATEST, Reply(503, {}), Reply(502, {}), Reply(500, {}), em_latest("DE", 310))
    provider = em_provider(em, tmp_path)
    provider.start()
    try:
        wait_for(lambda: provider.intensity(T0) is not None)
    finally:
        provider.shutdown()
    times = [r.at for r in em.requests_to(LATEST)[:4]]
    waits = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert waits[0] >= 0.045 and waits[1] >= 0.095 and waits[2] >= 0.19  # 0.05, 0.1, 0.2
    assert warnings_of(caplog, "electricitymaps") == [
        "electricitymaps: HTTP 503 Service Unavailable; the chain falls through until it answers"
    ]
    assert "electricitymaps: answering again after 3 failed attempts" in caplog.text


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (
            Reply(200, b"<html>maintenance</html>"),
            "malformed JSON in the answer: Expecting value: line 1 column 1 (char 0)",
        ),
        (em_latest("DE", None), "electricitymaps zone DE: carbonIntensity is missing or null"),
        (em_latest("DE", -5), "electricitymaps zone DE: intensity -5 is negative"),
        (em_latest("DE", "high"), "electricitymaps zone DE: intensity 'high' is not a number"),
        (Reply(200, [1, 2]), "electricitymaps zone DE: the answer is not a JSON object"),
        (Reply(200, {}, delay=0.5), "no answer within 0.1s"),
    ],
)
def test_electricitymaps_bad_answers_are_rejected(
    em: ElectricityMapsServer, tmp_path: Path, reply: Reply, status: str
) -> None:
    em.script(LATEST, reply)
    provider = em_provider(em, tmp_path, timeout=0.1)
    provider.poller.poll_once()
    assert provider.intensity(T0) is None
    assert provider.status() == status


def test_electricitymaps_answer_expires_after_max_age(
    em: ElectricityMapsServer, tmp_path: Path
) -> None:
    em.script(LATEST, em_latest("DE", 302), Reply(503, {}))
    provider = em_provider(em, tmp_path, cache_for=0.05, max_age=0.3)
    provider.start()
    try:
        wait_for(lambda: provider.intensity(T0) is not None)
        wait_for(lambda: provider.intensity(T0) is None)
        status = provider.status()
        assert status.startswith("last answer ")
        assert status.endswith("s old (max_age 0.3s): HTTP 503 Service Unavailable")
    finally:
        provider.shutdown()


def test_process_never_waits_for_the_network(em: ElectricityMapsServer, tmp_path: Path) -> None:
    em.script(LATEST, em_latest("DE", 302), Reply(200, {}, delay=1.0))
    api = em_provider(em, tmp_path, timeout=2.0, cache_for=0.01)
    proc = CarbonProcessor(config(), ProviderChain([api, StaticProvider(100.0)]))
    proc.start()
    try:
        wait_for(lambda: api.intensity(T0) is not None)
        wait_for(lambda: len(em.requests_to(LATEST)) >= 2)  # now a slow request is in flight
        began = time.perf_counter()
        for i in range(20):
            proc.process(batch := tick(T0 + 5 * i, rapl("package", 10.0)))
        assert time.perf_counter() - began < 0.05
        assert batch.carbon is not None and batch.carbon.provider == "electricitymaps"
    finally:
        proc.shutdown()


# -- WattTime -----------------------------------------------------------------------------


@pytest.fixture
def wt() -> Iterator[WattTimeServer]:
    with WattTimeServer() as server:
        yield server


def wt_provider(server: WattTimeServer, tmp_path: Path, password: str = "") -> WattTimeProvider:
    secret = tmp_path / "wt-password"
    secret.write_text(password or server.password)
    settings = fast(
        region="CAISO_NORTH", url=server.url, username=server.user, password_file=str(secret)
    )
    return WattTimeProvider(config(watttime=settings).watttime)


def test_watttime_login_then_signal_in_grams(wt: WattTimeServer, tmp_path: Path) -> None:
    wt.script(FORECAST, wt_forecast(1000.0))
    provider = wt_provider(wt, tmp_path)
    provider.poller.poll_once()
    found = provider.intensity(T0)
    assert found is not None and found.region == "CAISO_NORTH"
    assert found.value == pytest.approx(453.59237)  # 1000 lbs/MWh
    (login,) = wt.requests_to("/login")
    (signal,) = wt.requests_to(FORECAST)
    assert login.headers["authorization"].startswith("Basic ")
    assert signal.headers["authorization"].startswith("Bearer ")
    assert signal.query == {
        "region": "CAISO_NORTH",
        "signal_type": "co2_moer",
        "horizon_hours": "0",
    }
    provider.poller.poll_once()
    assert wt.logins == 1  # the token is reused


def test_watttime_expired_token_logs_in_again(wt: WattTimeServer, tmp_path: Path) -> None:
    wt.script(FORECAST, wt_forecast(800.0))
    provider = wt_provider(wt, tmp_path)
    provider.poller.poll_once()
    wt.expire_tokens()
    wt.script(FORECAST, wt_forecast(600.0))
    provider.poller.poll_once()
    assert wt.logins == 2
    assert provider.intensity(T0) == Intensity(pytest.approx(272.155422), "CAISO_NORTH")
    assert provider.status() == ""


def test_watttime_wrong_password_is_not_logged(
    wt: WattTimeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = wt_provider(wt, tmp_path, password="hunter2-wrong")
    for _ in range(3):
        provider.poller.poll_once()
    assert provider.status() == "login: HTTP 401 Unauthorized: the credentials were refused"
    assert len(warnings_of(caplog, "watttime")) == 1
    assert "hunter2-wrong" not in caplog.text and wt.password not in caplog.text


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (
            wt_forecast(55.0, units="percentile"),
            "watttime region CAISO_NORTH: unexpected units 'percentile' (expected lbs_co2_per_mwh)",
        ),
        (
            wt_forecast(-10.0),
            "watttime region CAISO_NORTH row 1: value -10 lbs_co2_per_mwh is negative",
        ),
        (wt_forecast("dirty"), "watttime region CAISO_NORTH row 1: value 'dirty' is not a number"),
        (
            Reply(200, {"data": [], "meta": {"units": "lbs_co2_per_mwh"}}),
            "watttime region CAISO_NORTH: the answer has no data point",
        ),
        (Reply(503, {}), "HTTP 503 Service Unavailable"),
    ],
)
def test_watttime_bad_answers(
    wt: WattTimeServer, tmp_path: Path, reply: Reply, status: str
) -> None:
    wt.script(FORECAST, reply)
    provider = wt_provider(wt, tmp_path)
    provider.poller.poll_once()
    assert provider.intensity(T0) is None
    assert provider.status() == status


def test_watttime_without_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATTTIME_PASSWORD", raising=False)
    settings = {"region": "CAISO_NORTH", "username": "kepler"}
    with pytest.raises(ComponentError) as err:
        WattTimeProvider(config(watttime=settings).watttime).start()
    assert str(err.value) == (
        "watttime: no password (password_file or the environment variable WATTTIME_PASSWORD)"
    )


# -- the whole chain against the servers --------------------------------------------------


def test_chain_falls_through_an_outage_and_comes_back(
    em: ElectricityMapsServer, tmp_path: Path
) -> None:
    forecast = tmp_path / "forecast.csv"
    forecast.write_text(f"timestamp,intensity\n{T0 - 7200:.0f},150\n{T0 - 3600:.0f},160\n")
    token = tmp_path / "token"
    token.write_text(em.token)
    em.script(LATEST, Reply(503, {}), Reply(503, {}), em_latest("DE", 330))
    cfg = config(
        providers=["electricitymaps", "file", "static"],
        electricitymaps=fast(zone="DE", url=em.url, token_file=str(token), backoff=0.2),
        file={"path": str(forecast)},
        static={"intensity": 400, "region": "DE"},
    )
    proc = CarbonProcessor(cfg, build_chain(cfg, HostSettings()))
    proc.start()
    try:
        providers = []
        for t in (T0 - 5400, T0 + 7200):  # the file covers the first, not the second
            proc.process(batch := tick(t, rapl("package", 10.0)))
            assert batch.carbon is not None
            providers.append((batch.carbon.provider, batch.carbon.intensity))
        assert providers == [("file", 150.0), ("static", 400.0)]
        wait_for(lambda: len(em.requests_to(LATEST)) >= 3)
        wait_for(lambda: proc.chain.providers[0].intensity(T0) is not None)
        proc.process(batch := tick(T0 + 7205, rapl("package", 10.0)))
        assert batch.carbon is not None
        assert (batch.carbon.provider, batch.carbon.intensity) == ("electricitymaps", 330.0)
    finally:
        proc.shutdown()


def test_chain_is_built_in_the_configured_order() -> None:
    cfg = config(providers=["static", "region"], static={"intensity": 1}, region={"region": "FR"})
    chain = build_chain(cfg, HostSettings())
    assert [type(p) for p in chain.providers] == [StaticProvider, RegionProvider]
    assert [p.name for p in chain.providers] == ["static", "region"]
    assert chain.providers[1].intensity(T0) == Intensity(98.0, "FR")


def test_end_to_end_through_the_service(tmp_path: Path, otlp_http_sink: OtlpHttpSink) -> None:
    """RAPL fixture -> attribution -> carbon -> OTLP/HTTP: the series and their values."""
    tree = RaplTree(tmp_path / "sys")
    tree.add_socket(core=True, dram=True)
    default = default_registry()
    registry = Registry(
        {
            "receivers": default.factories("receivers"),
            "processors": {**default.factories("processors"), "carbon": factory},
            "exporters": default.factories("exporters"),
        }
    )
    service = Service(
        parse(
            f"""
host: {{sysfs: {tree.sysfs}, node_name: n1}}
receivers: {{rapl: {{max_watts: 1.0e+12}}}}
processors:
  attribution: {{}}
  carbon: {{providers: [static], static: {{intensity: 360, region: FR}}, pue: 1.25,
            embodied: {{total_kg: 1000}}}}
exporters: {{otlphttp: {{metrics_endpoint: "{otlp_http_sink.metrics_url}"}}}}
service:
  interval: 1s
  pipelines:
    metrics: {{receivers: [rapl], processors: [attribution, carbon], exporters: [otlphttp]}}
""",
            registry,
        )
    )
    service.start()
    try:
        service.tick()  # primes the counters
        for _ in range(3):
            tree.advance_all({"package": 40.0, "core": 30.0, "dram": 8.0}, seconds=1.0)
            service.tick()
    finally:
        service.shutdown()
    grams = [p.value for p in otlp_http_sink.metric_points("kepler.node.co2")]
    per_tick = 48 * 360 * 1.25 / J_PER_KWH  # package + dram, not core
    assert grams[-3:] == pytest.approx([per_tick, 2 * per_tick, 3 * per_tick], rel=1e-4)
    (gauge, *_) = otlp_http_sink.metric_points("kepler.grid.carbon.intensity")
    assert (gauge.value, gauge.attributes) == (
        360.0,
        {"node_name": "n1", "provider": "static", "region": "FR"},
    )
    embodied = [p.value for p in otlp_http_sink.metric_points("kepler.node.embodied.co2")]
    assert embodied == sorted(embodied) and embodied[-1] > 0

"""The hwmon receiver against fixture hwmon trees in the real sysfs layout."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_kepler.component import ComponentError, HostSettings
from otel_kepler.data import Contribution, GaugeValue
from otel_kepler.receivers import hwmon
from otel_kepler.receivers.hwmon import HwmonConfig, HwmonReceiver, classify
from otel_kepler.receivers.hwmon import sensors as hwmon_sensors
from otel_kepler.schema import ConfigError, decode
from tests.hwmon_fixtures import FixtureChip, SysfsTree
from tests.test_rapl import FakeClock, in_unprivileged_child

ORIN = {"VDD_IN": 7.5, "VDD_CPU_GPU_CV": 2.75, "VDD_SOC": 1.6}


@pytest.fixture
def tree(tmp_path: Path) -> SysfsTree:
    return SysfsTree(tmp_path / "sys")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def started(tree: SysfsTree, clock: FakeClock, config: HwmonConfig | None = None) -> HwmonReceiver:
    receiver = HwmonReceiver(
        "hwmon", config or HwmonConfig(), HostSettings(sysfs=tree.sysfs), clock
    )
    receiver.start()
    assert receiver.collect().energy == []  # the first collect only primes
    return receiver


def tick(receiver: HwmonReceiver, clock: FakeClock, seconds: float) -> Contribution:
    clock.now += seconds
    part: Contribution = receiver.collect()
    return part


def joules(part: Contribution) -> dict[tuple[str, str], float]:
    """(component, zone) -> joules; every reading is source=hwmon."""
    assert all(r.source == "hwmon" and r.attributes is None for r in part.energy)
    return {(r.component, r.zone): r.joules for r in part.energy}


def gauge_values(part: Contribution) -> dict[str, tuple[str, str, float]]:
    """hw.id -> (metric, unit, value)."""
    return {g.attributes["hw.id"]: (g.name, g.unit, g.value) for g in part.gauges}


# -- energy ---------------------------------------------------------------------------------


def test_amd_energy_sockets_track_the_truth(tree: SysfsTree, clock: FakeClock) -> None:
    tree.k10temp()
    amd = tree.amd_energy(cores=8, sockets=2)
    receiver = started(tree, clock)
    assert receiver.zones == {"cpu": ["esocket0", "esocket1"]}
    schedule = [(1.0, 35.0, 60.0), (5.0, 120.0, 95.5), (2.5, 80.0, 70.25), (10.0, 15.0, 22.0)]
    for seconds, socket0, socket1 in schedule:
        truth = amd.run(seconds, {"Esocket0": socket0, "Esocket1": socket1})
        measured = joules(tick(receiver, clock, seconds))
        assert measured == pytest.approx(
            {("cpu", "esocket0"): truth["Esocket0"], ("cpu", "esocket1"): truth["Esocket1"]},
            rel=0.01,
        )
        assert measured[("cpu", "esocket0")] / seconds == pytest.approx(socket0, rel=1e-9)


def test_amd_energy_cores_by_rule(tree: SysfsTree, clock: FakeClock) -> None:
    amd = tree.amd_energy(cores=4)
    config = HwmonConfig(channels={"amd_energy/Ecore*": "cpu"})
    receiver = started(tree, clock, config)
    zones = ["ecore000", "ecore001", "ecore002", "ecore003", "esocket0"]
    assert receiver.zones == {"cpu": zones}
    watts = {"Ecore000": 4.0, "Ecore001": 6.5, "Ecore002": 0.5, "Ecore003": 3.0, "Esocket0": 40}
    truth = amd.run(5.0, watts)
    measured = joules(tick(receiver, clock, 5.0))
    assert measured == pytest.approx({("cpu", k.lower()): v for k, v in truth.items()}, rel=1e-9)
    assert measured[("cpu", "ecore001")] == pytest.approx(32.5, rel=1e-9)


def test_ina3221_pairs_in_and_curr(tree: SysfsTree, clock: FakeClock) -> None:
    """Jetson Orin Nano rails: bus mV x mA, whole milliamperes, within 1% of the truth."""
    ina = tree.ina3221()
    ina.run(0.0, ORIN)  # the load is on before the agent starts
    receiver = started(tree, clock)
    assert receiver.zones == {"platform": ["vdd_in", "vdd_soc"], "cpu": ["vdd_cpu_gpu_cv"]}
    for seconds in (1.0, 5.0, 2.5):
        truth = ina.run(seconds, ORIN)
        measured = joules(tick(receiver, clock, seconds))
        assert measured == pytest.approx(
            {
                ("platform", "vdd_in"): truth["VDD_IN"],
                ("cpu", "vdd_cpu_gpu_cv"): truth["VDD_CPU_GPU_CV"],
                ("platform", "vdd_soc"): truth["VDD_SOC"],
            },
            rel=0.01,
        )
    # 1476 mA x 5080 mV = 7.49808 W: what the chip's resolution allows
    assert ina.get("curr1_input") == "1476"
    assert measured[("platform", "vdd_in")] == pytest.approx(7.49808 * 2.5, rel=1e-12)


def test_ina3221_voltages_and_shunt_microvolts(tree: SysfsTree, clock: FakeClock) -> None:
    tree.ina3221()
    receiver = HwmonReceiver("hwmon", HwmonConfig(), HostSettings(sysfs=tree.sysfs), clock)
    receiver.start()
    part = receiver.collect()
    chip = "ina3221-1-0040"
    assert gauge_values(part) == {
        f"{chip}/in1": ("hw.voltage", "V", 5.08),
        f"{chip}/in2": ("hw.voltage", "V", 5.06),
        f"{chip}/in3": ("hw.voltage", "V", 5.07),
        f"{chip}/in4": ("hw.voltage", "V", 0.000985),  # 197 mA x 5 mOhm, in uV
        f"{chip}/in5": ("hw.voltage", "V", 0.000990),
        f"{chip}/in6": ("hw.voltage", "V", 0.000985),
        f"{chip}/in7": ("hw.voltage", "V", 0.0),
    }
    names = {g.attributes["hw.id"]: g.attributes["hw.name"] for g in part.gauges}
    assert names[f"{chip}/in2"] == "VDD_CPU_GPU_CV"
    assert names[f"{chip}/in7"] == "sum of shunt voltages"
    assert names[f"{chip}/in4"] == "in4"


def test_disabled_channel_is_skipped(tree: SysfsTree, clock: FakeClock) -> None:
    tree.ina3221(disabled=(3,))
    receiver = started(tree, clock)
    assert receiver.zones == {"platform": ["vdd_in"], "cpu": ["vdd_cpu_gpu_cv"]}
    ids = {g.attributes["hw.id"] for g in receiver.collect().gauges}
    assert "ina3221-1-0040/in3" not in ids and "ina3221-1-0040/in6" in ids


def test_pair_by_equal_labels_and_power_preferred(tree: SysfsTree, clock: FakeClock) -> None:
    """A chip pairs inN/currN where both carry the same label; powerN wins over a pair."""
    chip = tree.add_chip("vrm", "platform/vrm.0")
    chip.pair(1, "VDDCR_CPU", volts=1.1, watts=55.0)
    chip.pair(2, "12V rail", volts=12.0, watts=30.0)
    chip.power(2, "12V rail", 31.0, item="input")  # the chip also measures power: used
    chip.voltage(3, 3300, "3V3")
    chip.set("curr3_input", 2000)  # a current without the same label: not a pair
    receiver = started(tree, clock)
    assert receiver.zones == {"cpu": ["vddcr_cpu"], "platform": ["12v_rail"]}
    measured = joules(tick(receiver, clock, 2.0))
    # 55 W at 1100 mV: 50000 mA exactly
    assert measured == pytest.approx({("cpu", "vddcr_cpu"): 110.0, ("platform", "12v_rail"): 62.0})


def test_power_input_is_integrated_by_trapezoid(tree: SysfsTree, clock: FakeClock) -> None:
    """powerN_input is instantaneous: the mean of both ends; powerN_average is taken as is."""
    psu = tree.add_chip("pmbus", "platform/i2c-3/3-0058")
    psu.power(1, "pin", 100.0, item="input")
    psu.power(2, "pout1", 90.0, item="average")
    receiver = started(tree, clock)
    psu.run(2.0, {"pin": 140.0, "pout1": 120.0})
    measured = joules(tick(receiver, clock, 2.0))
    assert measured == pytest.approx({("platform", "pin"): 240.0, ("platform", "pout1"): 240.0})
    psu.run(3.0, {"pin": 140.0, "pout1": 120.0})
    measured = joules(tick(receiver, clock, 3.0))
    assert measured == pytest.approx({("platform", "pin"): 420.0, ("platform", "pout1"): 360.0})


def test_zones_named_from_labels_or_chip_and_index(tree: SysfsTree, clock: FakeClock) -> None:
    board = tree.add_chip("nct6798", "platform/nct6775.656")
    board.power(1, None, 60.0)
    board.power(2, "Package id 0", 45.0)
    gpu = tree.add_chip("amdgpu", "pci0000:00/0000:00:03.1/0000:0a:00.0")
    gpu.power(1, "PPT", 120.0)
    receiver = started(tree, clock)
    # Kepler's names: the label cleaned, else <device parent>_<device>_power<N>
    unlabelled = "platform_nct6775_656_power1"
    assert receiver.zones == {"platform": [unlabelled], "cpu": ["package_id_0"], "gpu": ["ppt"]}
    measured = joules(tick(receiver, clock, 5.0))
    assert measured == pytest.approx(
        {("platform", unlabelled): 300.0, ("cpu", "package_id_0"): 225.0, ("gpu", "ppt"): 600.0}
    )


def test_channels_of_one_zone_are_summed(tree: SysfsTree, clock: FakeClock) -> None:
    for socket in (0, 1):
        chip = tree.add_chip("zenpower", f"pci0000:00/0000:00:{0x18 + socket * 8:02x}.3")
        chip.power(1, "SVI2_P_Core", 60.0 + socket, item="input")
    receiver = started(tree, clock)
    assert receiver.zones == {"cpu": ["svi2_p_core"]}
    assert joules(tick(receiver, clock, 5.0)) == pytest.approx({("cpu", "svi2_p_core"): 605.0})


@pytest.mark.parametrize("legacy", [True, False])
def test_attributes_in_hwmon_or_in_its_device(
    tree: SysfsTree, clock: FakeClock, legacy: bool
) -> None:
    """Older drivers keep name and attributes on the device (hwmonN/device/); both work."""
    meter = tree.power_meter(watts=312.5, legacy=legacy)
    assert (tree.hwmon_class / "hwmon0" / "name").exists() is not legacy
    assert meter.file("power1_average").exists()
    config = HwmonConfig(channels={"power_meter/*": "platform"})
    receiver = started(tree, clock, config)
    zone = "lnxsybus:00_acpi000d:00_power1"  # Kepler's name: the device's parent and its name
    assert joules(tick(receiver, clock, 4.0)) == {("platform", zone): 1250.0}


def test_power_meter_is_left_to_the_acpi_receiver(tree: SysfsTree, clock: FakeClock) -> None:
    tree.power_meter(watts=300.0)
    tree.coretemp(cores=2)
    receiver = started(tree, clock)
    assert receiver.zones == {}
    assert receiver.describe() == (
        f"2 chips under {tree.hwmon_class}: power_meter-ACPI000D:00 (1 off by rule); "
        "coretemp-coretemp.0 (3 temperatures)"
    )


@pytest.mark.parametrize(
    ("chip", "label", "use"),
    [
        ("amd_energy", "Esocket0", "cpu"),
        ("amd_energy", "Ecore017", "off"),
        ("power_meter", "power1", "off"),
        ("ina3221", "VDD_IN", "platform"),
        ("ina3221", "VDD_CPU_GPU_CV", "cpu"),
        ("ina3221", "POM_5V_GPU", "gpu"),
        ("ina3221", "POM_5V_CPU", "cpu"),
        ("nct6798", "CPU Power", "cpu"),
        ("nct6798", "Vcore", "cpu"),
        ("nct6798", "power1", "platform"),
        ("zenpower", "SVI2_P_SoC", "cpu"),
        ("pmbus", "pin", "platform"),
        ("dell_smm", "PSU1", "platform"),
        ("amdgpu", "PPT", "gpu"),
        ("x", "corefreq", "platform"),
        ("x", "Scorecard", "platform"),
    ],
)
def test_classify(chip: str, label: str, use: str) -> None:
    assert classify(chip, label, {}) == use


def test_configured_rules_come_first(tree: SysfsTree, clock: FakeClock) -> None:
    tree.ina3221()
    tree.coretemp(cores=2)
    config = decode(
        HwmonConfig,
        {
            "channels": {
                "ina3221/VDD_SOC": "off",
                "ina3221/VDD_*": "platform",
                "coretemp/Core*": "off",
            }
        },
        "receivers.hwmon",
    )
    receiver = started(tree, clock, config)
    assert receiver.zones == {"platform": ["vdd_in", "vdd_cpu_gpu_cv"]}
    ids = [g.attributes["hw.id"] for g in receiver.collect().gauges]
    assert "coretemp-coretemp.0/temp1" in ids and "coretemp-coretemp.0/temp2" not in ids


# -- gauges ---------------------------------------------------------------------------------


def test_coretemp_gauges_follow_the_hardware_semantic_conventions(
    tree: SysfsTree, clock: FakeClock
) -> None:
    tree.coretemp(cores=2)
    board = tree.add_chip("nct6798", "platform/nct6775.656")
    board.fan(2, 1137, "CPU fan")
    board.voltage(0, 1104, "Vcore")
    board.temp(1, -3.5)
    receiver = HwmonReceiver("hwmon", HwmonConfig(), HostSettings(sysfs=tree.sysfs), clock)
    receiver.start()
    part = receiver.collect()  # gauges need no priming
    assert part.energy == []
    assert part.gauges[0] == GaugeValue(
        name="hw.temperature",
        unit="Cel",
        description="Temperature in degrees Celsius",
        value=52.0,
        attributes={
            "hw.id": "coretemp-coretemp.0/temp1",
            "hw.type": "temperature",
            "hw.name": "Package id 0",
            "hw.parent": "coretemp-coretemp.0",
        },
    )
    assert gauge_values(part) == {
        "coretemp-coretemp.0/temp1": ("hw.temperature", "Cel", 52.0),
        "coretemp-coretemp.0/temp2": ("hw.temperature", "Cel", 45.0),
        "coretemp-coretemp.0/temp3": ("hw.temperature", "Cel", 46.0),
        "nct6798-nct6775.656/temp1": ("hw.temperature", "Cel", -3.5),
        "nct6798-nct6775.656/fan2": ("hw.fan.speed", "rpm", 1137.0),
        "nct6798-nct6775.656/in0": ("hw.voltage", "V", 1.104),
    }
    fan = next(g for g in part.gauges if g.name == "hw.fan.speed")
    assert fan.attributes == {
        "hw.id": "nct6798-nct6775.656/fan2",
        "hw.type": "fan",
        "hw.name": "CPU fan",
        "hw.parent": "nct6798-nct6775.656",
    }
    assert fan.description == "Fan speed in revolutions per minute"
    unlabelled = next(
        g for g in part.gauges if g.attributes["hw.id"].endswith("/temp1") and g.value < 0
    )
    assert unlabelled.attributes["hw.name"] == "temp1"

    tree.chips[0].set("temp2_input", 71000)
    assert gauge_values(tick(receiver, clock, 5.0))["coretemp-coretemp.0/temp2"][2] == 71.0


def test_chip_without_a_device_is_named_by_its_hwmon(tree: SysfsTree, clock: FakeClock) -> None:
    acpitz = tree.add_chip("acpitz", None)
    acpitz.temp(1, 27.8)
    receiver = started(tree, clock)
    [gauge] = receiver.collect().gauges
    assert gauge.attributes["hw.id"] == "acpitz-hwmon0/temp1"
    assert gauge.value == 27.8


def test_gauges_off(tree: SysfsTree, clock: FakeClock) -> None:
    tree.coretemp()
    amd = tree.amd_energy(cores=2)
    receiver = started(tree, clock, HwmonConfig(gauges=False))
    amd.run(1.0, {"Esocket0": 10.0})
    part = tick(receiver, clock, 1.0)
    assert part.gauges == []
    assert joules(part) == {("cpu", "esocket0"): 10.0}


# -- implausible readings and broken sensors ------------------------------------------------


def test_counter_going_backwards_is_rejected_once_logged(
    tree: SysfsTree, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    amd = tree.amd_energy(cores=2, sockets=2)
    receiver = started(tree, clock)
    amd.run(5.0, {"Esocket0": 50.0, "Esocket1": 50.0})
    tick(receiver, clock, 5.0)

    amd.set_energy_uj("Esocket1", 1000)  # a driver reload: the counter restarts
    amd.add_energy("Esocket0", 250.0)
    with caplog.at_level(logging.WARNING, logger=hwmon.__name__):
        part = tick(receiver, clock, 5.0)
    assert part.rejected == {"backwards": 1}
    assert joules(part) == {("cpu", "esocket0"): 250.0}
    [record] = caplog.records
    assert record.getMessage() == (
        "hwmon: rejected a reading of amd_energy-amd_energy.0/Esocket1 (cpu zone esocket1, "
        f"backwards): {amd.file('energy4_input')} went backwards from 1237654321 to 1000 "
        "(a reset?); not exported (logged once per channel and reason)"
    )

    # it counts on from its new level: the next reading agrees with the rejected one, the
    # counter primes again there (that interval is lost, nothing is guessed)
    amd.run(5.0, {"Esocket0": 50.0, "Esocket1": 20.0})
    assert joules(tick(receiver, clock, 5.0)) == {("cpu", "esocket0"): 250.0}
    amd.run(5.0, {"Esocket0": 50.0, "Esocket1": 20.0})
    assert joules(tick(receiver, clock, 5.0)) == {
        ("cpu", "esocket0"): 250.0,
        ("cpu", "esocket1"): 100.0,
    }
    caplog.clear()
    amd.set_energy_uj("Esocket1", 0)
    with caplog.at_level(logging.WARNING, logger=hwmon.__name__):
        part = tick(receiver, clock, 5.0)
    assert part.rejected == {"backwards": 1}
    assert joules(part) == {("cpu", "esocket0"): 0.0}
    assert caplog.records == []  # logged once per channel and reason, not again


def test_energy_jump_above_max_watts(
    tree: SysfsTree, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    amd = tree.amd_energy(cores=1)
    receiver = started(tree, clock, HwmonConfig(max_watts=400.0))
    amd.run(2.0, {"Esocket0": 399.0})
    assert joules(tick(receiver, clock, 2.0)) == {("cpu", "esocket0"): 798.0}
    amd.add_energy("Esocket0", 100_000.0)  # 100 kJ in 2 s
    with caplog.at_level(logging.WARNING, logger=hwmon.__name__):
        part = tick(receiver, clock, 2.0)
    assert (part.rejected, part.energy) == ({"implausible_jump": 1}, [])
    assert (
        caplog.records[0]
        .getMessage()
        .endswith(
            f"{amd.file('energy2_input')} rose by 100000000000 (100000 J) in 2.000s "
            "(50000 W > max_watts 400); not exported (logged once per channel and reason)"
        )
    )
    # the jump never became the reference: the next reading counts from the last good one
    amd.add_energy("Esocket0", -100_000.0)
    amd.run(2.0, {"Esocket0": 100.0})
    assert joules(tick(receiver, clock, 2.0)) == {("cpu", "esocket0"): 200.0}


@pytest.mark.parametrize(
    ("microwatts", "what"),
    [
        (4294967295000, "reads 4294967295000 uW (0xFFFFFFFF mW: the firmware has no reading)"),
        (-2_000_000, "reads a negative power, -2000000 uW"),
        (5_000_000_001, "reads 5000 W > max_watts 5000"),
    ],
)
def test_impossible_power_is_rejected(
    tree: SysfsTree,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    microwatts: int,
    what: str,
) -> None:
    board = tree.add_chip("nct6798", "platform/nct6775.656")
    board.power(1, "CPU", 50.0)
    board.power(2, "System", 150.0)
    receiver = started(tree, clock)
    board.set("power1_average", microwatts)
    with caplog.at_level(logging.WARNING, logger=hwmon.__name__):
        part = tick(receiver, clock, 5.0)
    assert part.rejected == {"implausible_power": 1}
    assert joules(part) == {("platform", "system"): 750.0}
    [record] = caplog.records
    assert record.getMessage() == (
        "hwmon: rejected a reading of nct6798-nct6775.656/CPU (cpu zone cpu, implausible_power): "
        f"{board.file('power1_average')} {what}; not exported (logged once per channel and "
        "reason)"
    )
    board.set("power1_average", 50_000_000)
    assert joules(tick(receiver, clock, 5.0)) == {
        ("cpu", "cpu"): 250.0,
        ("platform", "system"): 750.0,
    }


@pytest.mark.parametrize("keep_open", [True, False])
def test_a_broken_sensor_costs_its_own_series_only(
    tree: SysfsTree, clock: FakeClock, caplog: pytest.LogCaptureFixture, keep_open: bool
) -> None:
    amd = tree.amd_energy(cores=1, sockets=2)
    core = tree.coretemp(cores=1)
    receiver = started(tree, clock, HwmonConfig(keep_open=keep_open))
    assert (receiver._reader.open_count > 0) is keep_open
    amd.break_file("energy2_input")
    core.break_file("temp2_input")
    with caplog.at_level(logging.WARNING, logger=hwmon.__name__):
        for count in range(2):
            amd.run(5.0, {"Esocket1": 60.0})
            part = tick(receiver, clock, 5.0)
            assert joules(part) == {("cpu", "esocket1"): 300.0}
            assert list(gauge_values(part)) == ["coretemp-coretemp.0/temp1"]
            # the energy channel's failed read is counted (not the temperature's): an open
            # file reads empty once, then the file is opened afresh and is not there
            assert part.rejected == {"empty" if keep_open and count == 0 else "unreadable": 1}
    energy_file = amd.file("energy2_input")
    reason = "empty read" if keep_open else "no such file or directory"
    assert [r.getMessage() for r in caplog.records] == [  # once each, not every tick
        f"hwmon: cannot read {energy_file} ({reason}); its series is left out until it reads again",
        f"hwmon: cannot read {core.file('temp2_input')} ({reason}); "
        "its series is left out until it reads again",
    ]

    amd.add_energy("Esocket0", 1000.0)  # the driver is back: it counted on meanwhile
    core.temp(2, 48.0, "Core 0")
    with caplog.at_level(logging.INFO, logger=hwmon.__name__):
        caplog.clear()
        amd.run(5.0, {"Esocket1": 60.0})
        part = tick(receiver, clock, 5.0)
    # the last good reading was kept: the gap is covered, nothing lost
    assert joules(part) == {("cpu", "esocket0"): 1000.0, ("cpu", "esocket1"): 300.0}
    assert gauge_values(part)["coretemp-coretemp.0/temp2"] == ("hw.temperature", "Cel", 48.0)
    assert f"hwmon: {energy_file} reads again" in [r.getMessage() for r in caplog.records]
    amd.run(5.0, {"Esocket0": 70.0, "Esocket1": 60.0})
    assert joules(tick(receiver, clock, 5.0)) == {
        ("cpu", "esocket0"): 350.0,
        ("cpu", "esocket1"): 300.0,
    }


def test_garbage_in_a_sensor_file(
    tree: SysfsTree, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    core = tree.coretemp(cores=1)
    receiver = started(tree, clock)
    core.set("temp2_input", "N/A")
    with caplog.at_level(logging.WARNING, logger=hwmon.__name__):
        part = tick(receiver, clock, 1.0)
    assert list(gauge_values(part)) == ["coretemp-coretemp.0/temp1"]
    assert caplog.records[0].getMessage() == (
        f"hwmon: cannot read {core.file('temp2_input')} (not a number: 'N/A'); "
        "its series is left out until it reads again"
    )


def test_files_kept_open_up_to_the_budget(
    tree: SysfsTree, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = tree.coretemp(cores=3)
    monkeypatch.setattr(hwmon_sensors, "MAX_OPEN_FILES", 2)
    receiver = started(tree, clock)
    assert (receiver._reader.budget, receiver._reader.open_count) == (2, 2)
    core.set("temp4_input", 39000)  # read through open, read and close: the same values
    assert gauge_values(tick(receiver, clock, 1.0))["coretemp-coretemp.0/temp4"][2] == 39.0
    assert receiver._reader.open_count == 2


def test_shutdown_closes_the_files(tree: SysfsTree, clock: FakeClock) -> None:
    tree.coretemp(cores=3)
    receiver = started(tree, clock)
    assert receiver._reader.open_count == 4
    before = len(os.listdir("/proc/self/fd"))
    receiver.shutdown()
    assert len(os.listdir("/proc/self/fd")) == before - 4


# -- config, doctor, factory ----------------------------------------------------------------


def test_config_errors_name_the_path() -> None:
    with pytest.raises(ConfigError) as err:
        decode(HwmonConfig, {"channels": {"Ecore*": "cpu"}}, "receivers.hwmon")
    assert str(err.value) == (
        'receivers.hwmon.channels.Ecore*: expected "chip/label" (globs allowed), '
        'e.g. "amd_energy/Ecore*"'
    )
    with pytest.raises(ConfigError) as err:
        decode(HwmonConfig, {"channels": {"amd_energy/*": "socket"}}, "receivers.hwmon")
    assert str(err.value) == (
        "receivers.hwmon.channels.amd_energy/*: must be one of 'cpu', 'platform', 'gpu', "
        "'off', got 'socket'"
    )
    with pytest.raises(ConfigError) as err:
        decode(HwmonConfig, {"max_watts": -1}, "receivers.hwmon")
    assert str(err.value) == "receivers.hwmon.max_watts: must be greater than 0, got -1"
    with pytest.raises(ConfigError) as err:
        decode(HwmonConfig, {"chips": []}, "receivers.hwmon")
    assert str(err.value) == (
        "receivers.hwmon.chips: unknown key (known keys: channels, gauges, keep_open, max_watts)"
    )
    assert decode(HwmonConfig, None, "receivers.hwmon") == HwmonConfig(
        channels={}, gauges=True, max_watts=5000.0, keep_open=True
    )


def test_real_sys_of_this_machine() -> None:
    """On this VM: no hwmon class at all. On a host with sensors: it starts."""
    class_dir = "/sys/class/hwmon"
    availability = hwmon.doctor(HostSettings())
    if os.path.isdir(class_dir) and os.listdir(class_dir):
        assert availability.detail.startswith(f"{len(os.listdir(class_dir))} chip")
        return
    receiver = HwmonReceiver("hwmon", HwmonConfig(), HostSettings())
    with pytest.raises(ComponentError) as err:
        receiver.start()
    if os.path.isdir(class_dir):
        expected = f"no hwmon chips under {class_dir}: no sensor driver is loaded (a VM?)"
    else:
        expected = (
            "/sys/class/hwmon does not exist: the kernel exposes no hwmon devices "
            "(a VM, or no sensor driver is loaded)"
        )
    assert str(err.value) == expected
    assert availability.available is False
    assert availability.detail == expected


def test_doctor(tree: SysfsTree) -> None:
    host = HostSettings(sysfs=tree.sysfs)
    tree.hwmon_class.mkdir(parents=True)
    assert hwmon.doctor(host).detail == (
        f"no hwmon chips under {tree.hwmon_class}: no sensor driver is loaded (a VM?)"
    )
    tree.power_meter(watts=200.0)
    availability = hwmon.doctor(host)
    assert availability.available is False
    assert availability.detail == (
        f"nothing to read: 1 chip under {tree.hwmon_class}: power_meter-ACPI000D:00 (1 off by rule)"
    )
    tree.coretemp(cores=2)
    tree.amd_energy(cores=4)
    tree.ina3221(disabled=(2,))
    availability = hwmon.doctor(host)
    assert availability.available is True
    assert availability.detail == (
        f"4 chips under {tree.hwmon_class}: power_meter-ACPI000D:00 (1 off by rule); "
        "coretemp-coretemp.0 (3 temperatures); "
        "amd_energy-amd_energy.0 (cpu esocket0, 4 off by rule); "
        "ina3221-1-0040 (platform vdd_in, platform vdd_soc, 6 voltages)"
    )


@pytest.fixture
def world_readable_tree() -> Iterator[SysfsTree]:
    """A tree outside pytest's 0700 tmp dirs, so that an unprivileged child can reach it."""
    directory = tempfile.mkdtemp(prefix="hwmon-perm-")
    os.chmod(directory, 0o755)
    try:
        yield SysfsTree(Path(directory) / "sys")
    finally:
        shutil.rmtree(directory)


def test_root_only_energy_files(world_readable_tree: SysfsTree) -> None:
    """amd_energy's files are owner and group only (CVE-2020-12912): as non-root, unreadable."""
    tree = world_readable_tree
    tree.amd_energy(cores=2)
    tree.coretemp(cores=1)
    host = HostSettings(sysfs=tree.sysfs)
    detail = in_unprivileged_child(lambda: hwmon.doctor(host).detail)
    assert detail == (
        f"2 chips under {tree.hwmon_class}: "
        "amd_energy-amd_energy.0 (2 off by rule, unreadable: energy3_input: permission denied); "
        "coretemp-coretemp.0 (2 temperatures)"
    )


def test_factory(tree: SysfsTree) -> None:
    chip: FixtureChip = tree.amd_energy(cores=1)
    factory = hwmon.factory
    assert (factory.type, factory.config_class, factory.doctor) == (
        "hwmon",
        HwmonConfig,
        hwmon.doctor,
    )
    receiver = factory.create("hwmon/board", HwmonConfig(), HostSettings(sysfs=tree.sysfs))
    assert isinstance(receiver, HwmonReceiver) and receiver.name == "hwmon/board"
    receiver.start()
    assert receiver.collect().energy == []
    chip.add_energy("Esocket0", 0.001)  # the real clock: 1 mJ is far under the ceiling
    [reading] = receiver.collect().energy
    assert (reading.component, reading.zone, reading.source) == ("cpu", "esocket0", "hwmon")
    assert reading.joules == pytest.approx(0.001)
    receiver.shutdown()


# -- hardware fidelity: pairs, averages, names ----------------------------------------------


def test_averaged_voltage_and_current_are_preferred(tree: SysfsTree, clock: FakeClock) -> None:
    """Where the chip averages inN and currN, those give the power, as powerN_average does;
    the instantaneous _input (3.8% high on this rail) would overcount."""
    chip = tree.add_chip("ina238", "platform/i2c-5/5-0044")
    rail = chip.rail(1, 1, 12.0, 96.0, averaged=True, input_bias=1.038)
    assert int(chip.get("curr1_input")) == round(8000 * 1.038)
    receiver = started(tree, clock)
    zone = "i2c_5_5_0044_power1"  # unlabelled: Kepler's <device parent>_<device>_power<N>
    assert receiver.zones == {"platform": [zone]}
    for seconds in (1.0, 5.0):
        truth = chip.run(seconds, {rail: 96.0})
        assert joules(tick(receiver, clock, seconds)) == pytest.approx(
            {("platform", zone): truth[rail]}, rel=1e-9
        )


def test_input_voltage_and_current_without_averages(tree: SysfsTree, clock: FakeClock) -> None:
    """Averages are used only where both the voltage and the current have one."""
    chip = tree.add_chip("ina238", "platform/i2c-5/5-0044")
    rail = chip.rail(1, 1, 12.0, 96.0)
    chip.set("in1_average", 11000)  # the current has no average: inputs for both
    receiver = started(tree, clock)
    chip.run(2.0, {rail: 96.0})
    assert joules(tick(receiver, clock, 2.0)) == pytest.approx(
        {("platform", "i2c_5_5_0044_power1"): 192.0}
    )


def test_pmbus_regulator_pairs_vout_with_iout(tree: SysfsTree, clock: FakeClock) -> None:
    """A MAX20730: in1 "vin", in2 "vout1", curr1 "iout1": the output power is in2 x curr1."""
    chip = tree.add_chip("max20730", "platform/i2c-7/7-0050")
    chip.voltage(1, 12000, "vin")
    rail = chip.rail(2, 1, 0.9, 45.0, voltage_label="vout1", current_label="iout1")
    receiver = started(tree, clock)
    assert receiver.zones == {"platform": ["vout1"]}
    truth = chip.run(4.0, {rail: 45.0})
    assert joules(tick(receiver, clock, 4.0)) == pytest.approx(
        {("platform", "vout1"): truth[rail]}, rel=1e-3
    )


def test_pmbus_labels_pair_on_any_pmbus_chip(tree: SysfsTree, clock: FakeClock) -> None:
    """Not in the table of known chips: the PMBus core's labels say which current is whose.
    A chip that measures pout itself keeps its own power channel (no double count)."""
    vr = tree.add_chip("xdpe152c4", "platform/i2c-8/8-0060")
    vr.voltage(1, 12000, "vin")
    vr.set("curr1_input", 4000)
    vr.set("curr1_label", "iin")
    rail = vr.rail(3, 2, 1.8, 36.0, voltage_label="vout1", current_label="iout1")
    psu = tree.add_chip("pmbus", "platform/i2c-3/3-0058")
    psu.voltage(1, 230000, "vin")
    psu.rail(2, 2, 12.0, 100.0, voltage_label="vout1", current_label="iout1")
    psu.power(2, "pout1", 100.0, item="average")
    receiver = started(tree, clock)
    assert receiver.zones == {"platform": ["vout1", "pout1"]}
    vr.run(2.0, {rail: 36.0})
    assert joules(tick(receiver, clock, 2.0)) == pytest.approx(
        {("platform", "vout1"): 72.0, ("platform", "pout1"): 200.0}, rel=1e-3
    )


def test_no_pairing_is_guessed_for_an_unknown_chip_without_labels(
    tree: SysfsTree, clock: FakeClock
) -> None:
    chip = tree.add_chip("mystery9000", "platform/i2c-9/9-0010")
    chip.rail(1, 1, 5.0, 10.0)  # in1 and curr1, no labels: perhaps not the same rail
    chip.temp(1, 40.0)
    receiver = started(tree, clock)
    assert receiver.zones == {}
    assert "mystery9000-9-0010 (1 temperature, 1 voltage)" in receiver.describe()


def test_a_chip_without_a_name_file_is_named_by_its_directory(
    tree: SysfsTree, clock: FakeClock
) -> None:
    chip = tree.add_chip("ignored", "platform/vendor-sensors.0")
    chip.remove("name")
    chip.power(1, None, 20.0)
    chip.temp(1, 33.0)
    receiver = started(tree, clock)  # the only chip: the agent starts
    assert receiver.zones == {"platform": ["platform_vendor_sensors_0_power1"]}
    [gauge] = tick(receiver, clock, 1.0).gauges
    assert gauge.attributes["hw.id"] == "hwmon0-vendor-sensors.0/temp1"


def test_a_chip_named_in_its_device_directory(tree: SysfsTree, clock: FakeClock) -> None:
    chip = tree.add_chip("ina226", "platform/i2c-2/2-0041")
    chip.remove("name")
    assert chip.device is not None
    (chip.device / "name").write_text("ina226\n")  # an I2C client's name
    rail = chip.rail(1, 1, 5.0, 10.0)  # known chip: in1 x curr1
    receiver = started(tree, clock)
    assert receiver.zones == {"platform": ["i2c_2_2_0041_power1"]}
    chip.run(1.0, {rail: 10.0})
    assert joules(tick(receiver, clock, 1.0)) == pytest.approx(
        {("platform", "i2c_2_2_0041_power1"): 10.0}
    )


def test_unlabelled_energy_and_power_zones_are_named_as_kepler_names_them(
    tree: SysfsTree, clock: FakeClock
) -> None:
    chip = tree.add_chip("mlxreg", "platform/mlxreg-hotplug.0")
    chip.energy(1, None, microjoules=5_000_000)
    chip.power(2, None, 40.0)
    chip.power(3, "PSU-1 In", 60.0)
    virtual = tree.add_chip("acpi_fan", None)
    virtual.power(1, None, 3.0)
    receiver = started(tree, clock)
    assert receiver.zones == {
        "platform": [
            "platform_mlxreg_hotplug_0_energy1",
            "platform_mlxreg_hotplug_0_power2",
            "psu_1_in",  # the label, cleaned as Kepler cleans it
            "acpi_fan_power1",  # no device: the chip's name
        ]
    }

"""The acpi receiver against fixture power meters and batteries in the real sysfs layout."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from otel_kepler.component import ComponentError, HostSettings
from otel_kepler.data import Contribution
from otel_kepler.receivers import acpi
from otel_kepler.receivers.acpi import AcpiConfig, AcpiReceiver
from otel_kepler.schema import ConfigError, decode
from tests.hwmon_fixtures import BatteryMethod, SysfsTree
from tests.test_rapl import FakeClock


@pytest.fixture
def tree(tmp_path: Path) -> SysfsTree:
    return SysfsTree(tmp_path / "sys")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def started(tree: SysfsTree, clock: FakeClock, config: AcpiConfig | None = None) -> AcpiReceiver:
    receiver = AcpiReceiver("acpi", config or AcpiConfig(), HostSettings(sysfs=tree.sysfs), clock)
    receiver.start()
    assert receiver.collect().energy == []  # the first collect only primes
    return receiver


def tick(receiver: AcpiReceiver, clock: FakeClock, seconds: float) -> Contribution:
    clock.now += seconds
    part: Contribution = receiver.collect()
    return part


def joules(part: Contribution) -> dict[str, float]:
    """zone -> joules; every reading is platform power with source=acpi."""
    assert all(r.component == "platform" and r.source == "acpi" for r in part.energy)
    return {r.zone: r.joules for r in part.energy}


# -- the power meter ------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [True, False])
def test_power_meter_tracks_the_truth(tree: SysfsTree, clock: FakeClock, legacy: bool) -> None:
    """Attributes on the ACPI device (older kernels) or on the hwmon device (newer)."""
    meter = tree.power_meter(watts=212.0, legacy=legacy)
    tree.coretemp()  # other chips are not the acpi receiver's
    receiver = started(tree, clock)
    assert receiver.describe() == "power meter ACPI000D:00 (power1_average over 1000 ms)"
    schedule = [(1.0, 212.0), (5.0, 348.5), (2.5, 190.25), (10.0, 407.0)]
    total_truth = total_measured = 0.0
    for seconds, watts in schedule:
        truth = meter.run(seconds, {"power1": watts})["power1"]
        measured = joules(tick(receiver, clock, seconds))
        assert measured == {"platform": pytest.approx(truth, rel=0.01)}
        assert measured["platform"] / seconds == pytest.approx(watts, rel=1e-9)
        total_truth += truth
        total_measured += measured["platform"]
    assert total_measured == pytest.approx(total_truth, rel=0.01)


def test_two_meters_are_summed(tree: SysfsTree, clock: FakeClock) -> None:
    first = tree.power_meter(watts=150.0)
    second = tree.power_meter(watts=175.0, interval_ms=5000)
    receiver = started(tree, clock)
    assert receiver.describe() == (
        "power meter ACPI000D:00 (power1_average over 1000 ms); "
        "power meter ACPI000D:01 (power1_average over 5000 ms)"
    )
    assert joules(tick(receiver, clock, 5.0)) == {"platform": 1625.0}
    second.break_file("power1_average")  # one meter unreadable: no partial platform sum
    first.run(5.0, {"power1": 150.0})
    assert joules(tick(receiver, clock, 5.0)) == {}


@pytest.mark.parametrize(
    ("microwatts", "what"),
    [
        (4294967295000, "reads 4294967295000 uW (0xFFFFFFFF mW: the firmware has no reading)"),
        (-1, "reads a negative power, -1 uW"),
        (5_000_000_001, "reads 5000 W > max_watts 5000"),
    ],
)
def test_impossible_meter_readings_are_rejected(
    tree: SysfsTree,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    microwatts: int,
    what: str,
) -> None:
    meter = tree.power_meter(watts=250.0)
    receiver = started(tree, clock)
    meter.set("power1_average", microwatts)
    with caplog.at_level(logging.WARNING, logger=acpi.__name__):
        for _ in range(3):
            part = tick(receiver, clock, 5.0)
            assert (part.rejected, part.energy) == ({"implausible_power": 1}, [])
    [record] = caplog.records  # once, not every tick
    assert record.getMessage() == (
        "acpi: dropped an implausible reading of power meter ACPI000D:00: "
        f"{meter.file('power1_average')} {what}; not exported (logged once)"
    )
    meter.set("power1_average", 250_000_000)
    part = tick(receiver, clock, 5.0)
    assert (part.rejected, joules(part)) == ({}, {"platform": 1250.0})


def test_max_watts_is_the_ceiling(tree: SysfsTree, clock: FakeClock) -> None:
    meter = tree.power_meter(watts=799.0)
    receiver = started(tree, clock, AcpiConfig(max_watts=800.0))
    assert joules(tick(receiver, clock, 2.0)) == {"platform": 1598.0}
    meter.run(2.0, {"power1": 801.0})
    assert tick(receiver, clock, 2.0).rejected == {"implausible_power": 1}


def test_unreadable_meter_is_named(tree: SysfsTree) -> None:
    meter = tree.power_meter()
    meter.set("power1_average", "")  # what some firmware returns: nothing
    receiver = AcpiReceiver("acpi", AcpiConfig(battery=False), HostSettings(sysfs=tree.sysfs))
    with pytest.raises(ComponentError) as err:
        receiver.start()
    assert str(err.value) == (
        f"no ACPI power meter (ACPI000D, driver power_meter) under {tree.hwmon_class}: "
        "this host reports no platform power through ACPI (skipped: power meter ACPI000D:00: "
        f"cannot read {meter.file('power1_average')}: empty read)"
    )


# -- batteries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "negative"),
    [("power_now", False), ("power_now", True), ("current_now", False), ("current_now", True)],
)
def test_discharging_battery(
    tree: SysfsTree, clock: FakeClock, method: BatteryMethod, negative: bool
) -> None:
    """power_now, or current_now x voltage_now; some drivers report discharge as negative."""
    battery = tree.battery(method=method, negative=negative)
    tree.mains(online=False)
    battery.run(0.0, 9.5)  # the machine already draws 9.5 W
    receiver = started(tree, clock)
    assert receiver.describe() == (
        "battery BAT0 (power_now)"
        if method == "power_now"
        else "battery BAT0 (current_now x voltage_now)"
    )
    for seconds, watts in [(5.0, 9.5), (5.0, 9.5), (1.0, 9.5), (10.0, 9.5)]:
        truth = battery.run(seconds, watts)
        assert joules(tick(receiver, clock, seconds)) == {"battery": pytest.approx(truth, rel=0.01)}


def test_battery_power_is_integrated_by_trapezoid(tree: SysfsTree, clock: FakeClock) -> None:
    battery = tree.battery()
    battery.run(0.0, 8.0)
    receiver = started(tree, clock)
    battery.run(4.0, 12.0)
    assert joules(tick(receiver, clock, 4.0)) == {"battery": pytest.approx(40.0)}


def test_battery_with_energy_now_only(tree: SysfsTree, clock: FakeClock) -> None:
    """A fuel gauge without power_now: the fall of energy_now (uWh); the first tick primes."""
    battery = tree.battery(method="energy_now")
    receiver = started(tree, clock)
    assert receiver.describe() == "battery BAT0 (energy_now)"
    for seconds, watts in [(30.0, 7.2), (60.0, 10.8), (15.0, 3.6)]:
        truth = battery.run(seconds, watts)
        assert joules(tick(receiver, clock, seconds)) == {"battery": pytest.approx(truth, rel=0.01)}
    # 45 Wh less 918 J (0.255 Wh)
    assert int(battery.path.joinpath("energy_now").read_text()) == 44_745_000


def test_energy_now_rising_while_discharging_is_rejected(
    tree: SysfsTree, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    battery = tree.battery(method="energy_now")
    receiver = started(tree, clock)
    battery.set("energy_now", 45_000_500)  # a fuel gauge recalibration
    with caplog.at_level(logging.WARNING, logger=acpi.__name__):
        part = tick(receiver, clock, 5.0)
    assert (part.rejected, part.energy) == ({"backwards": 1}, [])
    assert caplog.records[0].getMessage() == (
        "acpi: dropped an implausible reading of battery BAT0: "
        f"{battery.file('energy_now')} rose by 500 uWh while discharging; "
        "not exported (logged once)"
    )
    battery.set("energy_now", 44_995_500)  # 5 mWh in 5 s: 3.6 W
    assert joules(tick(receiver, clock, 5.0)) == {"battery": pytest.approx(18.0)}


def test_charging_or_full_reports_nothing(
    tree: SysfsTree, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    battery = tree.battery(status="Charging")
    tree.mains(online=True)
    battery.set("power_now", 25_000_000)  # what flows into the battery, not the machine's draw
    with caplog.at_level(logging.INFO, logger=acpi.__name__):
        receiver = started(tree, clock)
        assert tick(receiver, clock, 5.0).energy == []
        battery.status("Full")
        battery.set("power_now", 0)
        assert tick(receiver, clock, 5.0).energy == []
        assert tick(receiver, clock, 5.0).energy == []
        battery.status("Discharging")
        battery.run(0.0, 11.0)
        assert joules(tick(receiver, clock, 5.0)) == {"battery": 55.0}  # no priming needed
    assert [r.getMessage() for r in caplog.records] == [
        "acpi: battery BAT0 is Charging: the machine runs on external power that the battery "
        "does not measure; no battery energy until it discharges",
        "acpi: battery BAT0 is Full: the machine runs on external power that the battery "
        "does not measure; no battery energy until it discharges",
        "acpi: battery BAT0 is discharging: reported as zone battery",
    ]


def test_two_batteries_one_discharging(tree: SysfsTree, clock: FakeClock) -> None:
    """A ThinkPad with two batteries drains one at a time: the other adds nothing."""
    first = tree.battery("BAT0")
    second = tree.battery("BAT1", status="Unknown")
    first.run(0.0, 6.0)
    receiver = started(tree, clock)
    assert receiver.describe() == "battery BAT0 (power_now); battery BAT1 (power_now)"
    assert joules(tick(receiver, clock, 5.0)) == {"battery": 30.0}
    second.status("Discharging")
    second.run(0.0, 4.0)
    assert joules(tick(receiver, clock, 5.0)) == {"battery": 50.0}
    os.truncate(second.path / "status", 0)  # a status that cannot be read: no partial sum
    assert joules(tick(receiver, clock, 5.0)) == {}


def test_other_supplies_are_skipped(tree: SysfsTree, clock: FakeClock) -> None:
    tree.mains()
    mouse = tree.battery("hidpp_battery_0", scope="Device")
    mouse.run(0.0, 0.05)
    receiver = AcpiReceiver("acpi", AcpiConfig(), HostSettings(sysfs=tree.sysfs), clock)
    with pytest.raises(ComponentError) as err:
        receiver.start()
    assert str(err.value) == (
        f"no ACPI power meter (ACPI000D, driver power_meter) under {tree.hwmon_class} and "
        f"no battery under {tree.power_supply_class}: "
        "this host reports no platform power through ACPI"
    )


def test_meter_and_battery_can_be_turned_off(tree: SysfsTree, clock: FakeClock) -> None:
    tree.power_meter(watts=100.0)
    battery = tree.battery()
    battery.run(0.0, 10.0)
    receiver = started(tree, clock, AcpiConfig(power_meter=False))
    assert joules(tick(receiver, clock, 1.0)) == {"battery": 10.0}
    receiver = started(tree, clock, AcpiConfig(battery=False))
    assert joules(tick(receiver, clock, 1.0)) == {"platform": 100.0}


# -- config, doctor, factory ----------------------------------------------------------------


def test_config_errors_name_the_path() -> None:
    with pytest.raises(ConfigError) as err:
        decode(AcpiConfig, {"power_meter": False, "battery": False}, "receivers.acpi")
    assert str(err.value) == (
        "receivers.acpi: power_meter and battery are both false: nothing to read"
    )
    with pytest.raises(ConfigError) as err:
        decode(AcpiConfig, {"max_watts": 0}, "receivers.acpi")
    assert str(err.value) == "receivers.acpi.max_watts: must be greater than 0, got 0"
    with pytest.raises(ConfigError) as err:
        decode(AcpiConfig, {"batteries": True}, "receivers.acpi")
    assert str(err.value) == (
        "receivers.acpi.batteries: unknown key "
        "(known keys: battery, keep_open, max_watts, power_meter)"
    )
    assert decode(AcpiConfig, None, "receivers.acpi") == AcpiConfig(
        power_meter=True, battery=True, max_watts=5000.0, keep_open=True
    )


def test_real_sys_of_this_machine() -> None:
    """On this VM: no power meter and no battery, and doctor says so."""
    receiver = AcpiReceiver("acpi", AcpiConfig(), HostSettings())
    availability = acpi.doctor(HostSettings())
    try:
        receiver.start()
    except ComponentError as err:
        assert str(err) == (
            "no ACPI power meter (ACPI000D, driver power_meter) under /sys/class/hwmon and "
            "no battery under /sys/class/power_supply: "
            "this host reports no platform power through ACPI"
        )
        assert availability.available is False
        assert availability.detail == str(err)
        return
    finally:
        receiver.shutdown()
    assert availability.available is True  # a server with a meter, or a laptop
    assert availability.detail == receiver.describe()


def test_doctor(tree: SysfsTree) -> None:
    host = HostSettings(sysfs=tree.sysfs)
    assert acpi.doctor(host).available is False
    tree.power_meter(watts=100.0, interval_ms=250)
    tree.battery(method="current_now")
    availability = acpi.doctor(host)
    assert availability.available is True
    assert availability.detail == (
        "power meter ACPI000D:00 (power1_average over 250 ms); "
        "battery BAT0 (current_now x voltage_now)"
    )


def test_factory(tree: SysfsTree, clock: FakeClock) -> None:
    meter = tree.power_meter(watts=90.0)
    factory = acpi.factory
    assert (factory.type, factory.config_class, factory.doctor) == (
        "acpi",
        AcpiConfig,
        acpi.doctor,
    )
    receiver = factory.create("acpi/meter", AcpiConfig(), HostSettings(sysfs=tree.sysfs))
    assert isinstance(receiver, AcpiReceiver) and receiver.name == "acpi/meter"
    receiver.start()
    assert receiver.collect().energy == []
    meter.run(0.0, {"power1": 90.0})
    [reading] = receiver.collect().energy  # the real clock: a few ms at 90 W
    assert (reading.component, reading.zone, reading.source) == ("platform", "platform", "acpi")
    assert 0 < reading.joules < 90.0
    receiver.shutdown()


def test_unreadable_meter_readings_are_counted_by_reason(tree: SysfsTree, clock: FakeClock) -> None:
    meter = tree.power_meter(watts=200.0)
    receiver = started(tree, clock)
    for text, reason in (("N/A", "not_a_number"), ("", "empty")):
        meter.set("power1_average", text)
        part = tick(receiver, clock, 2.0)
        assert (part.rejected, part.energy) == ({reason: 1}, [])
    meter.set("power1_average", 200_000_000)
    part = tick(receiver, clock, 2.0)
    assert (part.rejected, joules(part)) == ({}, {"platform": 400.0})

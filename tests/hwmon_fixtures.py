"""Fixture hwmon and power_supply trees in the real sysfs layout, for tests and benchmarks.

Every chip is a device directory with a ``hwmon/hwmonN`` child and a class link, as
the kernel makes them (Documentation/hwmon/sysfs-interface.rst)::

    <sysfs>/devices/<device>/hwmon/hwmonN/   name, <type><N>_<item> files, device -> ../..,
                                              subsystem -> class/hwmon, power/, uevent
    <sysfs>/class/hwmon/hwmonN -> ../../devices/<device>/hwmon/hwmonN

A *legacy* chip keeps ``name`` and its attributes on the device itself (``hwmonN`` has
only device, subsystem, power/ and uevent), as the ACPI power meter did for years.

The layouts copied here, from real machines:

- Intel ``coretemp`` (devices/platform/coretemp.0): ``temp1`` "Package id 0", then one
  "Core N" per core, each with _input, _max, _crit, _crit_alarm, _label, in m°C.
- ACPI ``power_meter`` of a server (devices/LNXSYSTM:00/LNXSYBUS:00/ACPI000D:00, legacy
  layout): power1_average (uW), power1_average_interval (ms) with _min/_max,
  power1_accuracy, power1_is_battery, power1_model_number, power1_serial_number,
  power1_oem_info and a measures/ directory.
- AMD ``k10temp`` (devices/pci0000:00/0000:00:18.3): temp1 "Tctl", temp3.. "Tccd1"...
- AMD ``amd_energy`` (devices/platform/amd_energy.0): energy1..N_input, labels
  ``Ecore000``.. per core then ``Esocket0``.. per socket, in uJ, readable by owner and
  group only (CVE-2020-12912).
- ``ina3221`` of an NVIDIA Jetson Orin Nano (devices/platform/bus@0/c240000.i2c/i2c-1/
  1-0040): in1..3 bus voltages (mV) labelled VDD_IN, VDD_CPU_GPU_CV, VDD_SOC with
  _enable; curr1..3 (mA) with _crit, _max and alarms; shunt1..3_resistor (uOhm);
  in4..6 shunt voltages in uV; in7 "sum of shunt voltages"; curr4; samples,
  update_interval.
- A laptop battery ``BAT0`` (devices/LNXSYSTM:00/LNXSYBUS:00/PNP0A08:00/device:00/
  PNP0C09:00/PNP0C0A:00/power_supply/BAT0) and its AC adapter (ACPI0003:00/
  power_supply/AC) under class/power_supply (Documentation/ABI/testing/sysfs-class-power).

Values are written in place (same inode), so a reader that keeps a file open and
re-reads it with ``pread`` sees each new value, as it does in sysfs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ChannelKind = Literal["energy", "power", "pair"]
BatteryMethod = Literal["power_now", "current_now", "energy_now"]

ACPI_BUS = "LNXSYSTM:00/LNXSYBUS:00"
INA3221_DEVICE = "platform/bus@0/c240000.i2c/i2c-1/1-0040"
ORIN_NANO_RAILS = {"VDD_IN": 5.08, "VDD_CPU_GPU_CV": 5.06, "VDD_SOC": 5.07}


def write(path: Path, value: object, mode: int = 0o644) -> None:
    """Write a sysfs-like value in place: open readers see the new value on their next read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, f"{value}\n".encode())
    finally:
        os.close(fd)


@dataclass
class FixtureChannel:
    """How the fixture drives one power or energy channel of a chip."""

    kind: ChannelKind
    index: int  # power and energy channels: N; pairs: the voltage channel inN
    item: str = "input"  # power channels: average or input
    microjoules: int = 0  # energy counters
    current: int = 0  # pairs: the current channel currN (0: the same N as the voltage)
    averaged: bool = False  # pairs: the chip also averages (inN_average, currN_average)
    input_bias: float = 1.0  # pairs that average: the instantaneous _input reads this much


@dataclass
class FixtureChip:
    """One hwmon device of the tree."""

    name: str
    hwmon: Path  # <sysfs>/class/hwmon/hwmonN: the path a reader goes through
    attributes: Path  # the real directory that holds its attribute files
    device: Path | None
    legacy: bool
    channels: dict[str, FixtureChannel] = field(default_factory=dict)  # label -> channel

    @property
    def read_dir(self) -> Path:
        """Where a reader finds the attributes: hwmonN, or hwmonN/device for legacy chips."""
        return self.hwmon / "device" if self.legacy else self.hwmon

    def file(self, attribute: str) -> Path:
        return self.read_dir / attribute

    def set(self, attribute: str, value: object, mode: int = 0o644) -> None:
        write(self.attributes / attribute, value, mode)

    def get(self, attribute: str) -> str:
        return (self.attributes / attribute).read_text().strip()

    def break_file(self, attribute: str) -> None:
        """The sensor fails: an open file reads nothing, and the name is gone (ENOENT)."""
        path = self.attributes / attribute
        os.truncate(path, 0)
        path.unlink()

    # -- channels -------------------------------------------------------------------------

    def temp(self, index: int, celsius: float, label: str | None = None) -> None:
        self.set(f"temp{index}_input", round(celsius * 1000))
        self.set(f"temp{index}_max", 84000)
        self.set(f"temp{index}_crit", 100000)
        self.set(f"temp{index}_crit_alarm", 0)
        if label is not None:
            self.set(f"temp{index}_label", label)

    def fan(self, index: int, rpm: int, label: str | None = None) -> None:
        self.set(f"fan{index}_input", rpm)
        self.set(f"fan{index}_min", 300)
        if label is not None:
            self.set(f"fan{index}_label", label)

    def voltage(self, index: int, millivolts: int, label: str | None = None) -> None:
        self.set(f"in{index}_input", millivolts)
        if label is not None:
            self.set(f"in{index}_label", label)

    def energy(
        self, index: int, label: str | None, microjoules: int = 0, mode: int = 0o640
    ) -> None:
        """``energyN_input`` (and its label): a cumulative counter in uJ."""
        self.set(f"energy{index}_input", microjoules, mode)
        if label is not None:
            self.set(f"energy{index}_label", label)
        key = label or f"energy{index}"
        self.channels[key] = FixtureChannel("energy", index, microjoules=microjoules)

    def power(self, index: int, label: str | None, watts: float, item: str = "average") -> None:
        """``powerN_average`` or ``powerN_input`` in uW (and its label)."""
        self.set(f"power{index}_{item}", round(watts * 1e6))
        if label is not None:
            self.set(f"power{index}_label", label)
        self.channels[label or f"power{index}"] = FixtureChannel("power", index, item)

    def rail(
        self,
        voltage: int,
        current: int,
        volts: float,
        watts: float,
        *,
        voltage_label: str | None = None,
        current_label: str | None = None,
        averaged: bool = False,
        input_bias: float = 1.0,
    ) -> str:
        """A rail measured as ``in<voltage>`` (mV) x ``curr<current>`` (mA), labelled as
        given; ``averaged`` adds the chip's _average files (the truth), its _input then
        reading ``input_bias`` times the average current. Returns the key for run()."""
        millivolts = round(volts * 1000)
        self.set(f"in{voltage}_input", millivolts)
        if averaged:
            self.set(f"in{voltage}_average", millivolts)
        for kind, index, label in (
            ("in", voltage, voltage_label),
            ("curr", current, current_label),
        ):
            if label is not None:
                self.set(f"{kind}{index}_label", label)
        key = voltage_label or f"in{voltage}"
        self.channels[key] = FixtureChannel(
            "pair", voltage, current=current, averaged=averaged, input_bias=input_bias
        )
        self.drive(key, watts)
        return key

    def remove(self, attribute: str) -> None:
        (self.attributes / attribute).unlink()

    def pair(self, index: int, label: str, volts: float, watts: float) -> None:
        """``inN_input`` (mV) and ``currN_input`` (mA) of one rail, labelled on both."""
        self.voltage(index, round(volts * 1000), label)
        self.set(f"curr{index}_label", label)
        self.channels[label] = FixtureChannel("pair", index)
        self.drive(label, watts)

    # -- running --------------------------------------------------------------------------

    def drive(self, label: str, watts: float) -> None:
        """Make channel ``label`` read ``watts`` (energy counters are advanced by run())."""
        channel = self.channels[label]
        if channel.kind == "power":
            self.set(f"power{channel.index}_{channel.item}", round(watts * 1e6))
        elif channel.kind == "pair":
            current = channel.current or channel.index
            millivolts = int(self.get(f"in{channel.index}_input"))
            milliamperes = watts * 1e6 / millivolts
            if channel.averaged:
                self.set(f"curr{current}_average", round(milliamperes))
                milliamperes *= channel.input_bias
            self.set(f"curr{current}_input", round(milliamperes))

    def run(self, seconds: float, watts_by_label: dict[str, float]) -> dict[str, float]:
        """Run each channel at its power for ``seconds``; return the joules, by label."""
        truth: dict[str, float] = {}
        for label, watts in watts_by_label.items():
            channel = self.channels[label]
            if channel.kind == "energy":
                self.add_energy(label, watts * seconds)
            else:
                self.drive(label, watts)
            truth[label] = watts * seconds
        return truth

    def add_energy(self, label: str, joules: float) -> None:
        channel = self.channels[label]
        channel.microjoules += round(joules * 1e6)
        self.set(f"energy{channel.index}_input", channel.microjoules, 0o640)

    def set_energy_uj(self, label: str, microjoules: int) -> None:
        """Set a counter: a reset, or a bogus jump."""
        channel = self.channels[label]
        channel.microjoules = microjoules
        self.set(f"energy{channel.index}_input", microjoules, 0o640)


@dataclass
class FixtureBattery:
    """A battery under class/power_supply."""

    name: str
    path: Path  # the real directory
    link: Path  # <sysfs>/class/power_supply/<name>
    method: BatteryMethod
    volts: float
    microwatt_hours: int
    negative: bool = False  # the driver reports discharge as negative

    def set(self, attribute: str, value: object) -> None:
        write(self.path / attribute, value)

    def file(self, attribute: str) -> Path:
        return self.link / attribute

    def status(self, status: str) -> None:
        self.set("status", status)

    def run(self, seconds: float, watts: float) -> float:
        """Discharge at ``watts`` for ``seconds``: the readings move; returns the joules."""
        sign = -1 if self.negative else 1
        self.set("voltage_now", round(self.volts * 1e6))
        if self.method == "power_now":
            self.set("power_now", sign * round(watts * 1e6))
        elif self.method == "current_now":
            self.set("current_now", sign * round(watts / self.volts * 1e6))
        self.microwatt_hours -= round(watts * seconds / 3600 * 1e6)
        energy = "energy_now" if self.method != "current_now" else "charge_now"
        if self.method == "current_now":
            self.set(energy, round(self.microwatt_hours / self.volts))  # uAh
        else:
            self.set(energy, self.microwatt_hours)
        return watts * seconds


class SysfsTree:
    """hwmon chips and power supplies under ``sysfs`` (a fixture root standing for /sys).

    Typical use::

        tree = SysfsTree(tmp_path / "sys")
        amd = tree.amd_energy(cores=8)
        truth = amd.run(5.0, {"Esocket0": 80.0})   # {"Esocket0": 400.0}
    """

    def __init__(self, sysfs: Path | str) -> None:
        self.root = Path(sysfs)
        self.sysfs = str(self.root)
        self.hwmon_class = self.root / "class" / "hwmon"
        self.power_supply_class = self.root / "class" / "power_supply"
        self.chips: list[FixtureChip] = []
        self.batteries: dict[str, FixtureBattery] = {}

    # -- hwmon ----------------------------------------------------------------------------

    def add_chip(self, name: str, device: str | None, *, legacy: bool = False) -> FixtureChip:
        """A chip named ``name`` on ``devices/<device>`` (None: a virtual device, no link)."""
        number = len(self.chips)
        if device is None:
            device_dir = None
            hwmon_dir = self.root / "devices" / "virtual" / "hwmon" / f"hwmon{number}"
        else:
            device_dir = self.root / "devices" / device
            device_dir.mkdir(parents=True, exist_ok=True)
            (device_dir / "uevent").touch()
            hwmon_dir = device_dir / "hwmon" / f"hwmon{number}"
        hwmon_dir.mkdir(parents=True)
        (hwmon_dir / "power").mkdir()
        (hwmon_dir / "power" / "runtime_status").write_text("unsupported\n")
        (hwmon_dir / "uevent").touch()
        self.hwmon_class.mkdir(parents=True, exist_ok=True)
        (hwmon_dir / "subsystem").symlink_to(os.path.relpath(self.hwmon_class, hwmon_dir))
        if device_dir is not None:
            (hwmon_dir / "device").symlink_to(os.path.relpath(device_dir, hwmon_dir))
        link = self.hwmon_class / f"hwmon{number}"
        link.symlink_to(os.path.relpath(hwmon_dir, self.hwmon_class))
        attributes = device_dir if legacy and device_dir is not None else hwmon_dir
        chip = FixtureChip(name, link, attributes, device_dir, legacy)
        chip.set("name", name)
        self.chips.append(chip)
        return chip

    def coretemp(self, cores: int = 4, package: int = 0) -> FixtureChip:
        chip = self.add_chip("coretemp", f"platform/coretemp.{package}")
        chip.temp(1, 52.0, f"Package id {package}")
        for core in range(cores):
            chip.temp(core + 2, 45.0 + core, f"Core {core}")
        return chip

    def power_meter(
        self, watts: float = 0.0, interval_ms: int = 1000, legacy: bool = True
    ) -> FixtureChip:
        count = sum(1 for c in self.chips if c.name == "power_meter")
        chip = self.add_chip("power_meter", f"{ACPI_BUS}/ACPI000D:{count:02d}", legacy=legacy)
        chip.power(1, None, watts)
        chip.set("power1_average_interval", interval_ms)
        chip.set("power1_average_interval_min", 1000)
        chip.set("power1_average_interval_max", 300000)
        chip.set("power1_accuracy", "95.0%")
        chip.set("power1_is_battery", 0)
        chip.set("power1_model_number", "PWR METER")
        chip.set("power1_serial_number", "")
        chip.set("power1_oem_info", "")
        (chip.attributes / "measures").mkdir(exist_ok=True)
        return chip

    def k10temp(self) -> FixtureChip:
        chip = self.add_chip("k10temp", "pci0000:00/0000:00:18.3")
        chip.temp(1, 61.25, "Tctl")
        chip.temp(3, 55.5, "Tccd1")
        chip.temp(4, 57.0, "Tccd2")
        return chip

    def amd_energy(self, cores: int = 8, sockets: int = 1) -> FixtureChip:
        chip = self.add_chip("amd_energy", "platform/amd_energy.0")
        for core in range(cores):
            chip.energy(core + 1, f"Ecore{core:03d}", microjoules=1_000_000 * core)
        for socket in range(sockets):
            chip.energy(cores + socket + 1, f"Esocket{socket}", microjoules=987_654_321)
        return chip

    def ina3221(
        self,
        rails: dict[str, float] | None = None,
        device: str = INA3221_DEVICE,
        disabled: tuple[int, ...] = (),
    ) -> FixtureChip:
        """An INA3221: rails label -> bus volts, channels 1..3 (at 1 W each to start)."""
        chip = self.add_chip("ina3221", device)
        for index, (label, volts) in enumerate((rails or ORIN_NANO_RAILS).items(), start=1):
            chip.voltage(index, round(volts * 1000), label)
            chip.set(f"in{index}_enable", 0 if index in disabled else 1)
            chip.set(f"shunt{index}_resistor", 5000)
            for item, value in (("crit", 32760), ("crit_alarm", 0), ("max", 32760)):
                chip.set(f"curr{index}_{item}", value)
            chip.set(f"curr{index}_max_alarm", 0)
            chip.channels[label] = FixtureChannel("pair", index)
            chip.drive(label, 1.0)
            shunt_uv = int(chip.get(f"curr{index}_input")) * 5  # mA x 5 mOhm = uV
            chip.set(f"in{index + 3}_input", shunt_uv)
        chip.set("in7_input", 0)
        chip.set("in7_label", "sum of shunt voltages")
        chip.set("curr4_input", 0)
        chip.set("curr4_crit", 32760)
        chip.set("samples", 512)
        chip.set("update_interval", 204)
        return chip

    # -- power_supply ---------------------------------------------------------------------

    def battery(
        self,
        name: str = "BAT0",
        *,
        method: BatteryMethod = "power_now",
        status: str = "Discharging",
        volts: float = 11.4,
        watt_hours: float = 45.0,
        negative: bool = False,
        scope: str | None = None,
    ) -> FixtureBattery:
        """A battery; ``method`` picks which readings its driver offers."""
        ec = f"{ACPI_BUS}/PNP0A08:00/device:00/PNP0C09:00"
        index = len(self.batteries)
        path = self._supply(f"{ec}/PNP0C0A:{index:02d}", name)
        uwh = round(watt_hours * 1e6)
        files: dict[str, object] = {
            "type": "Battery",
            "status": status,
            "present": 1,
            "technology": "Li-ion",
            "cycle_count": 112,
            "voltage_min_design": round(volts * 1e6),
            "voltage_now": round(volts * 1e6),
            "capacity": 80,
            "capacity_level": "Normal",
            "model_name": "5B10W13930",
            "manufacturer": "SMP",
            "serial_number": "1234",
            "alarm": 0,
        }
        if scope is not None:
            files["scope"] = scope
        if method == "current_now":
            files |= {
                "current_now": 0,
                "charge_full_design": round(uwh / volts),
                "charge_full": round(uwh / volts),
                "charge_now": round(uwh / volts),
            }
        else:
            files |= {"energy_full_design": uwh, "energy_full": uwh, "energy_now": uwh}
            if method == "power_now":
                files["power_now"] = 0
        for attribute, value in files.items():
            write(path / attribute, value)
        battery = FixtureBattery(
            name, path, self.power_supply_class / name, method, volts, uwh, negative
        )
        self.batteries[name] = battery
        return battery

    def mains(self, online: bool = True) -> Path:
        path = self._supply(f"{ACPI_BUS}/ACPI0003:00", "AC")
        write(path / "type", "Mains")
        write(path / "online", int(online))
        return path

    def _supply(self, device: str, name: str) -> Path:
        device_dir = self.root / "devices" / device
        path = device_dir / "power_supply" / name
        path.mkdir(parents=True)
        (path / "uevent").touch()
        self.power_supply_class.mkdir(parents=True, exist_ok=True)
        (path / "device").symlink_to(os.path.relpath(device_dir, path))
        (path / "subsystem").symlink_to(os.path.relpath(self.power_supply_class, path))
        (self.power_supply_class / name).symlink_to(os.path.relpath(path, self.power_supply_class))
        return path

"""The ``acpi`` receiver: platform power from the ACPI power meter and from batteries.

**Power meter.** ACPI 4.0 power meters (device ``ACPI000D``, kernel driver
``power_meter``, Documentation/hwmon/acpi_power_meter.rst) are hwmon devices named
``power_meter``. Older kernels keep their attributes on the ACPI device, newer ones on
the hwmon device; both are read, as the ``hwmon`` receiver does::

    <sysfs>/class/hwmon/hwmonN -> ../../devices/LNXSYSTM:00/LNXSYBUS:00/ACPI000D:00/hwmon/hwmonN
    <sysfs>/class/hwmon/hwmonN/device/  (ACPI000D:00)
        name                        power_meter
        power1_average              uW, averaged by the firmware over ...
        power1_average_interval     ... this many ms
        power1_is_battery, power1_model_number, power1_accuracy, measures/, ...

Each tick reports ``EnergyReading(component="platform", zone="platform", source="acpi")``
of ``power1_average x`` the tick (the value is already an average, so it is not
interpolated). Several meters are summed. The ``hwmon`` receiver leaves this chip alone.

**Batteries** (power_supply class, Documentation/ABI/testing/sysfs-class-power)::

    <sysfs>/class/power_supply/BAT0 -> ../../devices/LNXSYSTM:00/.../PNP0C0A:00/power_supply/BAT0
        type        Battery (Mains, USB... are skipped; so is scope "Device": a mouse's battery)
        status      Discharging, Charging, Full, Not charging, Unknown
        power_now   uW; or current_now (uA) x voltage_now (uV); or energy_now (uWh)

While a battery discharges, what it delivers is what the machine draws: reported as
``zone="battery"`` (component platform, source acpi). ``power_now`` is preferred, else
``current_now x voltage_now``, both integrated as the mean of the readings at both ends of
the tick (the reading alone after a gap), by magnitude (some drivers report discharge as
negative); else the fall of ``energy_now`` (a coarse fuel gauge, first tick primes). In
any other state the machine runs on external power that the battery does not see: that
battery reports nothing (each change of state is logged once), and when no battery
discharges there is no battery reading at all. Several batteries are summed.

**Implausible readings** are dropped, counted by reason in ``Contribution.rejected`` and
logged once per meter or battery: 4294967295000 uW (0xFFFFFFFF mW, the "no reading" of
some firmware), a negative power, power above ``max_watts`` (``implausible_power``), an
``energy_now`` that rises while discharging (``backwards``) or falls faster than
``max_watts`` allows (``implausible_jump``). A file that cannot be read, reads empty or
not a number is counted too (``unreadable``, ``empty``, ``not_a_number``). The zone is
then left out of that tick.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from otel_kepler.component import (
    Availability,
    ComponentError,
    Factory,
    HostSettings,
    Receiver,
    doctor_by_starting,
)
from otel_kepler.data import Contribution, EnergyReading
from otel_kepler.schema import ConfigError

from .hwmon import (
    Implausible,
    Sensor,
    SensorReader,
    check_power,
    find_chips,
    listdir,
    read_text,
    reason,
)

log = logging.getLogger(__name__)

DISCHARGING = "Discharging"

#: Joules in one microwatt-hour.
JOULES_PER_UWH = 3600 / 1e6

#: Battery measuring methods, by preference: the files each reads.
METHODS: dict[str, tuple[str, ...]] = {
    "power_now": ("power_now",),
    "current_now x voltage_now": ("current_now", "voltage_now"),
    "energy_now": ("energy_now",),
}


@dataclass
class AcpiConfig:
    """Platform power from the ACPI power meter (servers) and batteries (laptops)."""

    power_meter: bool = field(
        default=True,
        metadata={"doc": "read ACPI power meters (ACPI000D, driver power_meter): zone platform"},
    )
    battery: bool = field(
        default=True,
        metadata={"doc": "read batteries under power_supply while they discharge: zone battery"},
    )
    max_watts: float = field(
        default=5000.0,
        metadata={
            "doc": "plausibility ceiling per meter and battery: a reading above it is "
            "dropped, counted and logged, never exported"
        },
    )
    keep_open: bool = field(
        default=True,
        metadata={"doc": "keep the files read every tick open between ticks (pread)"},
    )

    def validate(self) -> None:
        if not (self.power_meter or self.battery):
            raise ValueError("power_meter and battery are both false: nothing to read")
        if self.max_watts <= 0:
            raise ConfigError("max_watts", f"must be greater than 0, got {self.max_watts:g}")


@dataclass(slots=True)
class _Meter:
    """One ACPI power meter."""

    device: str  # ACPI000D:00
    sensor: Sensor  # power1_average
    interval_ms: int | None  # power1_average_interval

    def describe(self) -> str:
        if self.interval_ms is None:
            return f"power meter {self.device} (averaging interval unknown)"
        return f"power meter {self.device} (power1_average over {self.interval_ms} ms)"

    def measure(self, elapsed: float | None, max_watts: float) -> float | None:
        if self.sensor.value is None:
            return None
        watts = check_power(self.sensor.path, self.sensor.value, max_watts)
        return None if elapsed is None else watts * elapsed


@dataclass(slots=True)
class _Battery:
    """One battery and how it is measured."""

    name: str  # BAT0
    method: str  # a key of METHODS
    status: Sensor
    sensors: tuple[Sensor, ...]
    previous: float | None = None  # watts, or uWh for energy_now
    state: str = ""  # the last status seen ("" before the first)

    def describe(self) -> str:
        return f"battery {self.name} ({self.method})"

    def current_status(self) -> str | None:
        if self.status.value is None:
            return None
        return self.status.raw.decode("ascii", "replace").strip()

    def measure(self, elapsed: float | None, max_watts: float) -> float | None:
        """Joules delivered during the tick; None while priming or unreadable."""
        values = [s.value for s in self.sensors if s.value is not None]
        if len(values) < len(self.sensors):
            self.previous = None
            return None
        if self.method == "energy_now":
            return self._from_energy(values[0], elapsed, max_watts)
        if len(values) == 2:  # uA x uV = pW
            microwatts = abs(values[0] * values[1]) // 1_000_000
        else:
            microwatts = abs(values[0])
        source = " x ".join(s.path for s in self.sensors)
        watts = check_power(source, microwatts, max_watts)
        previous, self.previous = self.previous, watts
        if elapsed is None:
            return None
        if previous is None:
            return watts * elapsed
        return (previous + watts) / 2 * elapsed

    def _from_energy(self, uwh: int, elapsed: float | None, max_watts: float) -> float | None:
        previous, self.previous = self.previous, float(uwh)
        if previous is None or elapsed is None:
            return None
        path = self.sensors[0].path
        used = previous - uwh
        if used < 0:
            raise Implausible(f"{path} rose by {-used:.0f} uWh while discharging", "backwards")
        joules = used * JOULES_PER_UWH
        if joules > max_watts * elapsed:
            watts = joules / elapsed if elapsed > 0 else float("inf")
            raise Implausible(
                f"{path} fell by {used:.0f} uWh in {elapsed:.3f}s "
                f"({watts:.0f} W > max_watts {max_watts:g})",
                "implausible_jump",
            )
        return joules


class AcpiReceiver(Receiver):
    """Reads the ACPI power meters and the batteries once per tick."""

    def __init__(
        self,
        name: str,
        config: AcpiConfig,
        host: HostSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self.hwmon_dir = os.path.join(host.sysfs, "class", "hwmon")
        self.power_supply_dir = os.path.join(host.sysfs, "class", "power_supply")
        self._clock = clock
        self._reader = SensorReader("acpi", config.keep_open)
        self.meters: list[_Meter] = []
        self.batteries: list[_Battery] = []
        self.skipped: list[str] = []  # what was found but cannot be used, and why
        self._last_tick: float | None = None
        self._warned: set[str] = set()

    def describe(self) -> str:
        found = [m.describe() for m in self.meters] + [b.describe() for b in self.batteries]
        text = "; ".join(found)
        if self.skipped:
            text += f" (skipped: {'; '.join(self.skipped)})"
        return text

    def start(self) -> None:
        if self.config.power_meter:
            self.meters = [m for m in map(self._open_meter, self._meter_dirs()) if m]
        if self.config.battery:
            self.batteries = [b for b in map(self._open_battery, self._supplies()) if b]
        for note in self.skipped:
            log.warning("acpi: skipping %s", note)
        if self.meters or self.batteries:
            return
        missing = []
        if self.config.power_meter:
            missing.append(
                f"no ACPI power meter (ACPI000D, driver power_meter) under {self.hwmon_dir}"
            )
        if self.config.battery:
            missing.append(f"no battery under {self.power_supply_dir}")
        message = " and ".join(missing) + ": this host reports no platform power through ACPI"
        if self.skipped:
            message += f" (skipped: {'; '.join(self.skipped)})"
        raise ComponentError(message)

    def _meter_dirs(self) -> list[tuple[str, dict[str, str]]]:
        return [
            (c.instance, c.files) for c in find_chips(self.hwmon_dir) if c.name == "power_meter"
        ]

    def _open_meter(self, found: tuple[str, dict[str, str]]) -> _Meter | None:
        device, files = found
        path = files.get("power1_average")
        if path is None:
            self.skipped.append(f"power meter {device}: it has no power1_average")
            return None
        try:
            sensor = self._reader.add(path)
        except (OSError, ValueError) as err:
            self.skipped.append(f"power meter {device}: cannot read {path}: {reason(err)}")
            return None
        return _Meter(device, sensor, _read_int(files.get("power1_average_interval")))

    def _supplies(self) -> list[str]:
        return [os.path.join(self.power_supply_dir, e) for e in listdir(self.power_supply_dir)]

    def _open_battery(self, path: str) -> _Battery | None:
        name = os.path.basename(path)
        files = set(listdir(path))
        if _read_str(path, "type") != "Battery":
            return None
        if _read_str(path, "scope") == "Device":
            log.info("acpi: %s powers a device, not this machine: skipped", name)
            return None
        method = next((m for m, needs in METHODS.items() if files.issuperset(needs)), None)
        if method is None:
            self.skipped.append(
                f"battery {name}: it has neither power_now, current_now and voltage_now, "
                "nor energy_now"
            )
            return None
        try:
            status = self._reader.add(os.path.join(path, "status"), numeric=False)
            sensors = tuple(self._reader.add(os.path.join(path, f)) for f in METHODS[method])
        except (OSError, ValueError) as err:
            self.skipped.append(f"battery {name}: {reason(err)}")
            return None
        return _Battery(name, method, status, sensors)

    def collect(self) -> Contribution:
        now = self._clock()
        elapsed = None if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        self._reader.read_all()
        part = Contribution()
        for zone, joules in (self._meters(elapsed, part), self._batteries(elapsed, part)):
            if joules is not None:
                part.energy.append(
                    EnergyReading(component="platform", zone=zone, source="acpi", joules=joules)
                )
        return part

    def _meters(self, elapsed: float | None, part: Contribution) -> tuple[str, float | None]:
        """("platform", joules or None) of all meters together; rejections go to ``part``."""
        total: float | None = 0.0 if self.meters else None
        for meter in self.meters:
            if meter.sensor.value is None:  # logged by the reader
                part.reject(meter.sensor.error or "unreadable")
                total = None
                continue
            try:
                joules = meter.measure(elapsed, self.config.max_watts)
            except Implausible as err:
                self._reject(f"power meter {meter.device}", str(err))
                part.reject(err.reason)
                joules = None
            total = None if joules is None or total is None else total + joules
        return "platform", total

    def _batteries(self, elapsed: float | None, part: Contribution) -> tuple[str, float | None]:
        """("battery", joules or None) of the discharging batteries; rejections to ``part``."""
        total = 0.0
        complete = True
        discharging = 0
        for battery in self.batteries:
            status = battery.current_status()
            self._note_status(battery, status)
            if status != DISCHARGING:
                battery.previous = None
                complete = complete and status is not None
                continue
            discharging += 1
            failed = next((s for s in battery.sensors if s.value is None), None)
            if failed is not None:  # logged by the reader
                part.reject(failed.error or "unreadable")
            try:
                joules = battery.measure(elapsed, self.config.max_watts)
            except Implausible as err:
                self._reject(f"battery {battery.name}", str(err))
                part.reject(err.reason)
                joules = None
            if joules is None:
                complete = False
            else:
                total += joules
        return "battery", total if discharging and complete else None

    def _note_status(self, battery: _Battery, status: str | None) -> None:
        if status is None or status == battery.state:
            return
        first = not battery.state
        battery.state = status
        if status == DISCHARGING:
            if not first:
                log.info("acpi: battery %s is discharging: reported as zone battery", battery.name)
            return
        log.info(
            "acpi: battery %s is %s: the machine runs on external power that the battery "
            "does not measure; no battery energy until it discharges",
            battery.name,
            status,
        )

    def _reject(self, what: str, message: str) -> None:
        if what in self._warned:
            return
        self._warned.add(what)
        log.warning(
            "acpi: dropped an implausible reading of %s: %s; not exported (logged once)",
            what,
            message,
        )

    def shutdown(self) -> None:
        self._reader.close()


def _read_int(path: str | None) -> int | None:
    if path is None:
        return None
    try:
        return int(read_text(path))
    except (OSError, ValueError):
        return None


def _read_str(directory: str, name: str) -> str | None:
    try:
        return read_text(os.path.join(directory, name))
    except OSError:
        return None


def doctor(host: HostSettings) -> Availability:
    """Available with the meters and batteries found, or exactly what is missing."""
    receiver = AcpiReceiver("acpi", AcpiConfig(), host)
    return doctor_by_starting(receiver, receiver.describe)


def _create(name: str, config: AcpiConfig, host: HostSettings) -> AcpiReceiver:
    return AcpiReceiver(name, config, host)


factory: Factory[AcpiConfig, Receiver] = Factory(
    type="acpi",
    description="platform power from the ACPI power meter (zone platform) and from "
    "discharging batteries (zone battery), source=acpi",
    config_class=AcpiConfig,
    create=_create,
    doctor=doctor,
)

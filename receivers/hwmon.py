"""The ``hwmon`` receiver: power, energy and sensor gauges from the kernel's hwmon class.

Every sensor chip driver registers a hwmon device (Documentation/hwmon/sysfs-interface.rst)::

    <sysfs>/class/hwmon/hwmonN -> ../../devices/<device>/hwmon/hwmonN
        name                the chip: coretemp, k10temp, amd_energy, ina3221, nct6798, ...
        device              -> <device>: its base name tells chip instances apart
                            (coretemp.0, 0000:00:18.3, 0-0040, ACPI000D:00, nvme0)
        <type><N>_<item>    one value per file: temp2_input, energy3_input, in1_label, ...

Older drivers (the ACPI power meter, many I2C chips) keep ``name`` and the attributes
in ``hwmonN/device/`` instead; both places are read, ``hwmonN`` winning. A chip with no
``name`` at all is called by its directory (``hwmon3``).

**Energy.** Per chip and channel index N, the first that exists is used:

1. ``energyN_input``: a cumulative counter in uJ (amd_energy, i915, some PMBus chips);
   the delta from its last good reading is the energy, validated by the counter rule
   of :mod:`otel_kepler.receivers.counter` (no published wrap range: a counter below
   its last good reading went backwards).
2. ``powerN_average`` (uW, already averaged by the chip): watts x the tick;
   ``powerN_input`` (uW, instantaneous): the mean of the readings at both ends of
   the tick x the tick (trapezoid), or the reading alone after a gap.
3. A voltage channel ``inV`` (mV) x the current channel ``currC`` (mA) of the same rail
   = uW, where the chip has no power or energy channel for that rail. Averaged like
   power: ``inV_average`` x ``currC_average`` where the chip has both, else the _input
   files by trapezoid. Which current is whose, by the first rule that applies: a known
   chip's driver (:data:`INDEX_PAIRS`: INA3221 ``in1..3`` x ``curr1..3``, its ``in4..7``
   being shunt voltages in uV; MAX20730 ``in2`` x ``curr1``; ...); a voltage and a
   current channel with the same label; the PMBus core's labels ``voutN`` x ``ioutN``
   (unless the chip measures ``poutN`` itself). An unknown chip without such labels
   gets no pair: its indexes do not say which current flows at which voltage.

Channels whose ``<type>N_enable`` reads 0 are skipped (read at start).

**Which metric family.** Each power or energy channel feeds node energy with
``source=hwmon``, in the first component that applies:

1. the ``channels`` config: ``{"chip/label" glob: cpu | platform | gpu | off}``, in order;
2. built-in rules (:data:`DEFAULT_RULES`): amd_energy's per-core channels (``Ecore000``...)
   are off (one zone per core multiplies every workload's series; ``Esocket*`` carries the
   socket), and the ``power_meter`` chip is off because the ``acpi`` receiver reads it
   (it knows the meter's averaging interval and rejects the firmware's "no reading");
3. CPU chips (:data:`CPU_CHIPS`, e.g. amd_energy) are cpu, GPU chips (:data:`GPU_CHIPS`,
   e.g. amdgpu) are gpu;
4. a label naming the CPU (a word cpu, package, pkg, core, vcore, socket, Ecore/Esocket,
   optionally numbered: ``CPU``, ``Package id 0``, ``SVI2_P_Core``, ``VDD_CPU_GPU_CV``)
   is cpu; one naming the GPU (``gpu``, ``POM_5V_GPU``) is gpu;
5. anything else (board input, ``VDD_IN``, ``PSU1``, an unlabelled channel) is platform.

Zones are named as Kepler names them: the label in lower case with every character
other than a-z, 0-9, ``:`` and ``_`` turned into ``_`` and none at either end
(``Esocket0`` -> ``esocket0``, ``Package id 0`` -> ``package_id_0``, ``PSU-1 In`` ->
``psu_1_in``); an unlabelled channel is ``<chip>_power<N>`` or ``<chip>_energy<N>``,
``<chip>`` being the device's parent and base name cleaned the same way
(``platform_nct6775_656_power1``), else the chip's name. Channels of the same component
and zone are summed, as rapl sums sockets.

**Gauges** (unless ``gauges: false``), named and unitised as the OpenTelemetry hardware
semantic conventions: ``hw.temperature`` (Cel, from ``tempN_input`` m°C), ``hw.fan.speed``
(rpm, ``fanN_input``) and ``hw.voltage`` (V, ``inN_input`` mV). Attributes: ``hw.id``
(``<chip>-<device>/<channel>``, e.g. ``coretemp-coretemp.0/temp2``: unique on the host and
stable across boots, unlike hwmonN), ``hw.type`` (temperature, fan, voltage), ``hw.name``
(the label, or the channel name ``temp2`` when unlabelled) and ``hw.parent``
(``<chip>-<device>``, e.g. ``coretemp-coretemp.0``). The first collect reports gauges;
energy starts with the second (the first primes).

**Implausible readings** are dropped, counted by reason in ``Contribution.rejected`` and
logged once per channel and reason, never exported: a counter that went backwards or
jumped (see the counter rule), a power reading of 4294967295000 uW (0xFFFFFFFF mW: the
"no reading" of some firmware), a negative power, and power above ``max_watts``
(``implausible_power``). A power or energy file that cannot be read, reads empty or not
a number is counted too (``unreadable``, ``empty``, ``not_a_number``). Such a channel is
left out of the tick and the rest of its zone reported; an energy counter's next good
reading covers the gap. A sensor that fails to read costs its own series only, logged
once until it reads again. Sensor files are kept open and re-read with ``pread``.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

from otel_kepler.component import Availability, ComponentError, Factory, HostSettings, Receiver
from otel_kepler.data import Component, Contribution, EnergyReading, GaugeValue
from otel_kepler.schema import ConfigError

from .counter import EnergyCounter, Rejected

log = logging.getLogger(__name__)

Use = Literal["cpu", "platform", "gpu", "off"]

#: What some ACPI firmware reports when it has no reading: 0xFFFFFFFF mW, in uW.
NO_READING_UW = 0xFFFFFFFF * 1000

#: Built-in channel rules, applied after the configured ones (see the module docstring).
DEFAULT_RULES: dict[str, Use] = {"amd_energy/Ecore*": "off", "power_meter/*": "off"}

#: Chips whose power and energy channels are all the CPU's.
CPU_CHIPS = frozenset({"amd_energy", "fam15h_power", "zenpower"})
#: Chips whose power and energy channels are all a GPU's.
GPU_CHIPS = frozenset({"amdgpu", "i915", "nouveau", "radeon", "xe"})
#: Chips whose driver pairs voltage and current channels by index: inV -> currC of the
#: same rail (shunt voltages and auxiliary inputs are in none of these pairs).
INDEX_PAIRS: dict[str, dict[int, int]] = {
    "ina3221": {1: 1, 2: 2, 3: 3},  # in4..7: shunt voltages
    "ina209": {1: 1},  # in0: shunt voltage
    "ina219": {1: 1},
    "ina226": {1: 1},
    "ina233": {1: 1},
    "ina238": {1: 1},
    "ina260": {1: 1},
    "ltc2945": {1: 1},  # in2: auxiliary ADC
    "ltc2947": {0: 1},
    "ltc2992": {0: 1, 2: 2},  # in1, in3: delta-sense; in4, in5: GPIO
    "ltc4260": {1: 1},
    "ltc4261": {1: 1},
    "ltc4282": {1: 1},
    "adm1275": {1: 1},  # PMBus hot-swap controllers: VIN x the current through the switch
    "adm1276": {1: 1},
    "adm1278": {1: 1},
    "adm1293": {1: 1},
    "max20730": {2: 1},  # PMBus regulators: VOUT (in2) x IOUT (curr1)
    "max20751": {2: 1},
    "mp2975": {1: 1},  # curr2..: per-phase currents
}
#: Chips whose inN_input is in uV, not mV, for these N (INA3221 shunt voltages).
MICROVOLT_INPUTS: dict[str, range] = {"ina3221": range(4, 8)}

#: Sensor files kept open per receiver (at most a quarter of the soft open-files limit);
#: past this they are opened for each read.
MAX_OPEN_FILES = 512

_ATTRIBUTE = re.compile(r"(temp|fan|in|curr|power|energy)(\d+)_([a-z_]+)")
_CPU_LABEL = re.compile(
    r"(?<![a-z])(cpu|package|pkg|v?core|socket|e(core|socket))\d*(?![a-z])", re.I
)
_GPU_LABEL = re.compile(r"(?<![a-z])gpu\d*(?![a-z])", re.I)
_DIGITS = re.compile(r"\d+")
_NOT_NAME = re.compile(r"[^a-z0-9:_]")
_PMBUS_VOUT = re.compile(r"vout(\d*)")
_READ_SIZE = 64


@dataclass
class HwmonConfig:
    """Power, energy, temperatures, fan speeds and voltages of every hwmon chip."""

    channels: dict[str, Use] = field(
        default_factory=dict,
        metadata={
            "doc": 'per-channel rules, first match wins: "chip/label" (shell globs, the '
            "channel name such as power1 where there is no label) -> cpu, platform, gpu or "
            'off, e.g. {"nct6798/*": off, "amd_energy/Ecore*": cpu}; before the built-in '
            "rules (amd_energy Ecore* and power_meter off)"
        },
    )
    gauges: bool = field(
        default=True,
        metadata={"doc": "export temperatures, fan speeds and voltages (hw.* gauges)"},
    )
    max_watts: float = field(
        default=5000.0,
        metadata={
            "doc": "plausibility ceiling per channel: a reading above it is dropped, "
            "counted and logged, never exported"
        },
    )
    keep_open: bool = field(
        default=True,
        metadata={
            "doc": "keep sensor files open between ticks and re-read them with pread: "
            "less than half the CPU time of opening, reading and closing each file"
        },
    )

    def validate(self) -> None:
        for pattern in self.channels:
            if "/" not in pattern:
                raise ConfigError(
                    f"channels.{pattern}",
                    'expected "chip/label" (globs allowed), e.g. "amd_energy/Ecore*"',
                )
        if self.max_watts <= 0:
            raise ConfigError("max_watts", f"must be greater than 0, got {self.max_watts:g}")


# -- reading sysfs files ---------------------------------------------------------------------


class Implausible(Rejected):
    """A power reading that cannot be physical; the message says what was read."""

    def __init__(self, message: str, reason: str = "implausible_power") -> None:
        super().__init__(reason, message)


@dataclass(slots=True)
class Sensor:
    """One attribute file read every tick: where it is, its open fd, and this tick's value."""

    path: str
    numeric: bool = True  # parse as an integer; else only ``raw`` is kept
    keep: bool = False  # keep the file open between reads
    fd: int = -1
    value: int | None = None  # None: unreadable this tick (0 for a text file that read)
    raw: bytes = b""
    failing: bool = False  # the last read failed (logged once until it reads again)
    error: str = ""  # why the last read failed: unreadable, empty or not_a_number


class SensorReader:
    """Reads a receiver's sensor files once per tick, kept open and re-read with ``pread``.

    sysfs regenerates an attribute on every read at offset 0, so one ``pread`` per file
    and tick replaces open, read and close. After a failed read the file is closed and
    opened afresh on the next read (its device may have been re-created). Past
    :func:`open_budget` files, or with ``keep_open`` off, files are opened for each read.
    """

    def __init__(self, owner: str, keep_open: bool = True) -> None:
        self.owner = owner
        self.keep_open = keep_open
        self.budget = open_budget() if keep_open else 0
        self.kept = 0  # sensors allowed to stay open
        self.sensors: list[Sensor] = []
        self._by_path: dict[str, Sensor] = {}

    def add(self, path: str, numeric: bool = True) -> Sensor:
        """The sensor of ``path``, read once now: raises OSError or ValueError if unusable."""
        known = self._by_path.get(path)
        if known is not None:
            return known
        sensor = Sensor(path, numeric, keep=self.kept < self.budget)
        data = self._open_and_read(sensor)
        try:
            _parse(sensor, data)
        except ValueError:
            if sensor.fd >= 0:
                os.close(sensor.fd)
            raise
        self.kept += sensor.keep
        self.sensors.append(sensor)
        self._by_path[path] = sensor
        return sensor

    @property
    def open_count(self) -> int:
        return sum(1 for s in self.sensors if s.fd >= 0)

    def read_all(self) -> None:
        for sensor in self.sensors:
            self.read(sensor)

    def read(self, sensor: Sensor) -> None:
        try:
            if sensor.fd >= 0:
                data = os.pread(sensor.fd, _READ_SIZE, 0)
            else:
                data = self._open_and_read(sensor)
            _parse(sensor, data)
        except (OSError, ValueError) as err:
            self._failed(sensor, err)
            return
        if sensor.failing:
            sensor.failing = False
            log.info("%s: %s reads again", self.owner, sensor.path)

    def _open_and_read(self, sensor: Sensor) -> bytes:
        fd = os.open(sensor.path, os.O_RDONLY)
        try:
            data = os.read(fd, _READ_SIZE)
        except OSError:
            os.close(fd)
            raise
        if sensor.keep:
            sensor.fd = fd
        else:
            os.close(fd)
        return data

    def _failed(self, sensor: Sensor, err: Exception) -> None:
        sensor.value = None
        sensor.error = failure(err, sensor.raw)
        if sensor.fd >= 0:
            os.close(sensor.fd)
            sensor.fd = -1
        if not sensor.failing:
            sensor.failing = True
            log.warning(
                "%s: cannot read %s (%s); its series is left out until it reads again",
                self.owner,
                sensor.path,
                reason(err, sensor.raw),
            )

    def close(self) -> None:
        for sensor in self.sensors:
            if sensor.fd >= 0:
                os.close(sensor.fd)
            sensor.fd = -1
        self.sensors = []
        self._by_path = {}
        self.kept = 0


def open_budget() -> int:
    """How many sensor files one receiver may keep open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_OPEN_FILES
    return max(0, min(MAX_OPEN_FILES, soft // 4))


def _parse(sensor: Sensor, data: bytes) -> None:
    """Store what a read returned; ValueError if it is empty or not the number expected."""
    sensor.raw = data
    if not data.strip():
        raise ValueError("empty read")
    sensor.value = int(data) if sensor.numeric else 0


def _read_bytes(path: str) -> bytes:
    """Read a small sysfs file with two system calls and no buffering."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, _READ_SIZE)
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    """A short sysfs text file (name, label, status), stripped."""
    return _read_bytes(path).decode("utf-8", "replace").strip()


def failure(err: Exception, data: bytes = b"") -> str:
    """The ``Contribution.rejected`` reason of a failed read."""
    if isinstance(err, OSError):
        return "unreadable"
    return "empty" if not data.strip() else "not_a_number"


def reason(err: Exception, data: bytes = b"") -> str:
    """Why a read failed, in a few words."""
    if isinstance(err, OSError):
        return (err.strerror or type(err).__name__).lower()
    if not data.strip():
        return "empty read"
    return f"not a number: {data.strip()[:24].decode('ascii', 'replace')!r}"


def listdir(path: str) -> list[str]:
    """Entries of ``path``, sorted; none if it does not exist."""
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as err:
        raise ComponentError(f"cannot list {path}: {reason(err)}") from None


# -- chips ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chip:
    """One hwmon device: its name, instance and attribute files."""

    name: str  # the chip: coretemp
    instance: str  # base name of its device (coretemp.0), or hwmonN without one
    path: str  # <sysfs>/class/hwmon/hwmonN
    files: dict[str, str]  # attribute file name -> path (hwmonN first, then device/)
    #: what names its unlabelled zones (<chip_id>_power1), as Kepler does: the device's
    #: parent and base name (platform_nct6775_656), else the name, else hwmonN
    chip_id: str = ""

    @property
    def key(self) -> str:
        """``<chip>-<device>``: unique on the host and stable across boots."""
        return f"{self.name}-{self.instance}"

    def text(self, attribute: str) -> str | None:
        """A text attribute (a label), or None if absent or unreadable."""
        path = self.files.get(attribute)
        if path is None:
            return None
        try:
            return read_text(path)
        except OSError:
            return None


def find_chips(class_dir: str) -> list[Chip]:
    """Every hwmon device under ``class_dir``, in hwmonN order."""
    chips: list[Chip] = []
    for entry in sorted(listdir(class_dir), key=_number_order):
        chip = read_chip(os.path.join(class_dir, entry))
        if chip is not None:
            chips.append(chip)
    return chips


def read_chip(path: str) -> Chip | None:
    """The chip of ``hwmonN``: named by ``name``, else ``device/name``, else ``hwmonN``."""
    device = os.path.join(path, "device")
    files: dict[str, str] = {}
    for directory in (device, path):  # hwmonN overrides device/ (older drivers use it)
        for entry in listdir(directory):
            if entry == "name" or _ATTRIBUTE.fullmatch(entry):
                files[entry] = os.path.join(directory, entry)
    name_file = files.pop("name", None)
    name = ""
    if name_file is not None:
        try:
            name = read_text(name_file)
        except OSError as err:
            log.warning("hwmon: %s: cannot read %s: %s", path, name_file, reason(err))
    if not name:
        name = os.path.basename(path)
        log.info("hwmon: %s has no name: called %s", path, name)
    if os.path.isdir(device):
        instance = os.path.basename(os.path.realpath(device))
    else:
        instance = os.path.basename(path)
    return Chip(name, instance, path, files, chip_id(path, name))


def chip_id(path: str, name: str) -> str:
    """Kepler's chip name, for unlabelled zones: ``<device parent>_<device>``, cleaned
    (platform_nct6775_656), else the chip's name, else the hwmonN directory."""
    device = os.path.join(path, "device")
    if os.path.exists(device):
        real = os.path.realpath(device)
        base = clean(os.path.basename(real))
        parent = clean(os.path.basename(os.path.dirname(real)))
        if base:
            return f"{parent}_{base}" if parent else base
    return clean(name) or clean(os.path.basename(os.path.realpath(path)))


def _number_order(entry: str) -> tuple[int, str]:
    digits = _DIGITS.findall(entry)
    return (int(digits[-1]) if digits else -1, entry)


def clean(text: str) -> str:
    """A zone name as Kepler makes it: lower case, every character other than a-z, 0-9,
    ``:`` and ``_`` turned into ``_``, no ``_`` at either end (``Package id 0`` ->
    ``package_id_0``, ``VDD-IN`` -> ``vdd_in``)."""
    return _NOT_NAME.sub("_", text.strip().lower()).strip("_")


def normalise(label: str) -> str:
    """A zone name from a label (see :func:`clean`)."""
    return clean(label)


def classify(chip: str, label: str, rules: dict[str, Use]) -> Use:
    """Which component a channel of ``chip`` labelled ``label`` feeds (see the module doc)."""
    key = f"{chip}/{label}"
    for table in (rules, DEFAULT_RULES):
        for pattern, use in table.items():
            if fnmatchcase(key, pattern):
                return use
    if chip in CPU_CHIPS:
        return "cpu"
    if chip in GPU_CHIPS:
        return "gpu"
    if _CPU_LABEL.search(label):
        return "cpu"
    if _GPU_LABEL.search(label):
        return "gpu"
    return "platform"


# -- channels -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Gauge:
    sensor: Sensor
    name: str
    unit: str
    description: str
    divisor: float
    attributes: dict[str, str]


_GAUGES: dict[str, tuple[str, str, str, str, float]] = {
    # kind: (hw.type, metric, unit, description, divisor from the sysfs unit)
    "temp": ("temperature", "hw.temperature", "Cel", "Temperature in degrees Celsius", 1e3),
    "fan": ("fan", "hw.fan.speed", "rpm", "Fan speed in revolutions per minute", 1.0),
    "in": ("voltage", "hw.voltage", "V", "Voltage measured by the sensor", 1e3),
}


@dataclass(slots=True)
class _Energy:
    """An ``energyN_input`` counter in uJ, validated by the shared counter rule."""

    id: str  # chip/label, for logs
    component: Component
    zone: str
    sensor: Sensor
    counter: EnergyCounter

    @property
    def sensors(self) -> tuple[Sensor, ...]:
        return (self.sensor,)

    def miss(self) -> None:
        self.counter.fail()

    def measure(self, now: float, elapsed: float | None, max_watts: float) -> float | None:
        """Joules since the last good reading; None while priming; Rejected if impossible."""
        assert self.sensor.value is not None
        return self.counter.update(self.sensor.value, now)


@dataclass(slots=True)
class _Power:
    """``powerN_average``, ``powerN_input`` (one sensor, uW) or ``inN`` x ``currM`` (mV x mA)."""

    id: str
    component: Component
    zone: str
    sensors: tuple[Sensor, ...]
    averaged: bool  # the chip averages: watts x tick; else trapezoid between ticks
    previous_w: float | None = None

    @property
    def source(self) -> str:
        return " x ".join(s.path for s in self.sensors)

    def miss(self) -> None:
        self.previous_w = None

    def measure(self, now: float, elapsed: float | None, max_watts: float) -> float | None:
        microwatts = 1
        for sensor in self.sensors:
            assert sensor.value is not None
            microwatts *= sensor.value
        try:
            watts = check_power(self.source, microwatts, max_watts)
        except Implausible:
            self.previous_w = None
            raise
        previous, self.previous_w = self.previous_w, watts
        if elapsed is None:
            return None
        if self.averaged or previous is None:
            return watts * elapsed
        return (previous + watts) / 2 * elapsed


def check_power(source: str, microwatts: int, max_watts: float) -> float:
    """Watts from a uW reading, or Implausible if it cannot be physical."""
    if microwatts == NO_READING_UW:
        raise Implausible(
            f"{source} reads {microwatts} uW (0xFFFFFFFF mW: the firmware has no reading)"
        )
    if microwatts < 0:
        raise Implausible(f"{source} reads a negative power, {microwatts} uW")
    watts = microwatts / 1e6
    if watts > max_watts:
        raise Implausible(f"{source} reads {watts:g} W > max_watts {max_watts:g}")
    return watts


Channel = _Energy | _Power


@dataclass
class ChipReport:
    """What start() made of one chip: for logs and ``otel-kepler doctor``."""

    chip: str  # <chip>-<device>
    zones: list[str] = field(default_factory=list)  # "cpu esocket0"
    gauges: dict[str, int] = field(default_factory=dict)  # hw.type -> count
    off: int = 0
    unreadable: list[str] = field(default_factory=list)  # "energy1_input: permission denied"

    def describe(self) -> str:
        parts = list(self.zones)
        parts += [_plural(n, kind) for kind, n in self.gauges.items()]
        if self.off:
            parts.append(f"{self.off} off by rule")
        if self.unreadable:
            more = f" and {len(self.unreadable) - 1} more" if len(self.unreadable) > 1 else ""
            parts.append(f"unreadable: {self.unreadable[0]}{more}")
        return f"{self.chip} ({', '.join(parts) or 'nothing to read'})"

    @property
    def usable(self) -> bool:
        return bool(self.zones or self.gauges)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# -- the receiver ---------------------------------------------------------------------------


class HwmonReceiver(Receiver):
    """Reads every hwmon chip's power, energy and sensor channels once per tick."""

    def __init__(
        self,
        name: str,
        config: HwmonConfig,
        host: HostSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.class_dir = os.path.join(host.sysfs, "class", "hwmon")
        self.config = config
        self._clock = clock
        self._reader = SensorReader("hwmon", config.keep_open)
        self._channels: list[Channel] = []
        self._gauges: list[_Gauge] = []
        self.reports: list[ChipReport] = []
        self._last_tick: float | None = None
        self._warned: set[str] = set()

    @property
    def zones(self) -> dict[str, list[str]]:
        """Component -> its zones, as found by start()."""
        found: dict[str, list[str]] = {}
        for channel in self._channels:
            zones = found.setdefault(channel.component, [])
            if channel.zone not in zones:
                zones.append(channel.zone)
        return found

    def describe(self) -> str:
        found = "; ".join(r.describe() for r in self.reports)
        return f"{_plural(len(self.reports), 'chip')} under {self.class_dir}: {found}"

    def start(self) -> None:
        if not os.path.isdir(self.class_dir):
            raise ComponentError(
                f"{self.class_dir} does not exist: the kernel exposes no hwmon devices "
                "(a VM, or no sensor driver is loaded)"
            )
        chips = find_chips(self.class_dir)
        if not chips:
            raise ComponentError(
                f"no hwmon chips under {self.class_dir}: no sensor driver is loaded (a VM?)"
            )
        self.reports = [self._open_chip(chip) for chip in chips]
        if not any(r.usable for r in self.reports):
            self._reader.close()
            raise ComponentError(f"nothing to read: {self.describe()}")

    def _open_chip(self, chip: Chip) -> ChipReport:
        report = ChipReport(chip.key)
        indexes = _indexes(chip)
        measured = indexes["energy"] | indexes["power"]
        zones: set[str] = set()
        for index in sorted(measured):
            zone = self._open_power(chip, index, report)
            if zone is not None:
                zones.add(zone)
        for pair in find_pairs(chip, indexes):
            if pair.voltage in measured or pair_zone(chip, pair) in zones:
                continue  # the chip measures that power itself
            if pair.power_label and pair.power_label in zones:
                continue
            self._open_pair(chip, pair, report)
        if self.config.gauges:
            for kind in _GAUGES:
                for index in sorted(indexes[kind]):
                    self._open_gauge(chip, kind, index, report)
        if report.unreadable:
            log.warning(
                "hwmon: %s: left out, unreadable: %s", chip.key, "; ".join(report.unreadable)
            )
        return report

    def _open_power(self, chip: Chip, index: int, report: ChipReport) -> str | None:
        """Open channel N's energy or power; its zone, or None where it is not used."""
        mode, attribute = _power_file(chip, index)
        kind = "energy" if mode == "energy" else "power"
        if not _enabled(chip, kind, index):
            return None
        label = chip.text(f"{kind}{index}_label") or ""
        channel_name = label or f"{kind}{index}"
        zone = clean(label) or f"{chip.chip_id}_{kind}{index}"
        use = classify(chip.name, channel_name, self.config.channels)
        if use == "off":
            report.off += 1
            return zone
        sensors = self._sensors(chip, [attribute], report)
        if sensors is None:
            return None
        ident = f"{chip.key}/{channel_name}"
        channel: Channel
        if mode == "energy":
            counter = EnergyCounter(sensors[0].path, self.config.max_watts, 1e-6)
            channel = _Energy(ident, use, zone, sensors[0], counter)
        else:
            channel = _Power(ident, use, zone, tuple(sensors), averaged=mode == "average")
        self._channels.append(channel)
        report.zones.append(f"{use} {zone}")
        return zone

    def _open_pair(self, chip: Chip, pair: Pair, report: ChipReport) -> None:
        """Open inV x currC as one power channel (averaged where the chip averages both)."""
        if not (_enabled(chip, "in", pair.voltage) and _enabled(chip, "curr", pair.current)):
            return
        channel_name = pair.label or f"in{pair.voltage}"
        use = classify(chip.name, channel_name, self.config.channels)
        if use == "off":
            report.off += 1
            return
        averaged = all(f in chip.files for f in pair.files("average"))
        attributes = pair.files("average" if averaged else "input")
        sensors = self._sensors(chip, attributes, report)
        if sensors is None:
            return
        zone = pair_zone(chip, pair)
        ident = f"{chip.key}/{channel_name}"
        self._channels.append(_Power(ident, use, zone, tuple(sensors), averaged=averaged))
        report.zones.append(f"{use} {zone}")

    def _open_gauge(self, chip: Chip, kind: str, index: int, report: ChipReport) -> None:
        attribute = f"{kind}{index}_input"
        if attribute not in chip.files or not _enabled(chip, kind, index):
            return
        label = chip.text(f"{kind}{index}_label") or ""
        channel_name = f"{kind}{index}"
        if classify(chip.name, label or channel_name, self.config.channels) == "off":
            report.off += 1
            return
        sensors = self._sensors(chip, [attribute], report)
        if sensors is None:
            return
        hw_type, metric, unit, description, divisor = _GAUGES[kind]
        if kind == "in" and index in MICROVOLT_INPUTS.get(chip.name, ()):
            divisor = 1e6
        attributes = {
            "hw.id": f"{chip.key}/{channel_name}",
            "hw.type": hw_type,
            "hw.name": label or channel_name,
            "hw.parent": chip.key,
        }
        self._gauges.append(_Gauge(sensors[0], metric, unit, description, divisor, attributes))
        report.gauges[hw_type] = report.gauges.get(hw_type, 0) + 1

    def _sensors(self, chip: Chip, names: list[str], report: ChipReport) -> list[Sensor] | None:
        sensors: list[Sensor] = []
        for name in names:
            try:
                sensors.append(self._reader.add(chip.files[name]))
            except (OSError, ValueError) as err:
                report.unreadable.append(f"{name}: {reason(err, _peek(chip.files[name]))}")
                return None
        return sensors

    def collect(self) -> Contribution:
        now = self._clock()
        elapsed = None if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        self._reader.read_all()
        part = Contribution()
        part.gauges = [
            GaugeValue(g.name, g.unit, g.description, g.sensor.value / g.divisor, g.attributes)
            for g in self._gauges
            if g.sensor.value is not None
        ]
        part.energy = self._energy(now, elapsed, part)
        return part

    def _energy(self, now: float, elapsed: float | None, part: Contribution) -> list[EnergyReading]:
        """The joules of every zone whose channels measured this tick (summed).

        A channel that failed to read or was rejected is counted in ``part`` and left
        out; the rest of its zone is reported. An energy counter keeps its last good
        reading, so its next good one covers the gap.
        """
        joules: dict[tuple[Component, str], float] = {}
        max_watts = self.config.max_watts
        for channel in self._channels:
            failed = next((s for s in channel.sensors if s.value is None), None)
            if failed is not None:  # logged by the reader, once until it reads again
                channel.miss()
                part.reject(failed.error or "unreadable")
                continue
            try:
                value = channel.measure(now, elapsed, max_watts)
            except Rejected as err:
                channel.miss()
                part.reject(err.reason)
                self._reject(channel, err)
                continue
            if value is not None:
                key = (channel.component, channel.zone)
                joules[key] = joules.get(key, 0.0) + value
        return [
            EnergyReading(component=component, zone=zone, source="hwmon", joules=value)
            for (component, zone), value in joules.items()
        ]

    def _reject(self, channel: Channel, err: Rejected) -> None:
        key = f"{channel.id} {err.reason}"
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(
            "hwmon: rejected a reading of %s (%s zone %s, %s): %s; not exported "
            "(logged once per channel and reason)",
            channel.id,
            channel.component,
            channel.zone,
            err.reason,
            err.message,
        )

    def shutdown(self) -> None:
        self._reader.close()


def _indexes(chip: Chip) -> dict[str, set[int]]:
    """Kind -> channel indexes with an input (or average) file."""
    found: dict[str, set[int]] = {
        k: set() for k in ("temp", "fan", "in", "curr", "power", "energy")
    }
    for name in chip.files:
        match = _ATTRIBUTE.fullmatch(name)
        if match and match.group(3) in ("input", "average"):
            found[match.group(1)].add(int(match.group(2)))
    return found


@dataclass(frozen=True, slots=True)
class Pair:
    """A voltage channel ``inV`` and the current channel ``currC`` of the same rail."""

    voltage: int
    current: int
    label: str  # the voltage channel's label ("" if none)
    power_label: str = ""  # the chip's own power channel for this rail, if it has one

    def files(self, item: str) -> list[str]:
        return [f"in{self.voltage}_{item}", f"curr{self.current}_{item}"]


def find_pairs(chip: Chip, indexes: dict[str, set[int]]) -> list[Pair]:
    """The voltage x current pairs of ``chip``, by the first rule that applies:

    1. a known chip (:data:`INDEX_PAIRS`): its driver's pairing of indexes;
    2. labels: a voltage and a current channel with the same label (cleaned), or the
       PMBus core's labels ``voutN`` and ``ioutN`` of the same output N.

    An unknown chip without such labels gets no pair: its indexes do not say which
    current flows at which voltage.
    """
    volts = {i for i in indexes["in"] if f"in{i}_input" in chip.files}
    currents = {i for i in indexes["curr"] if f"curr{i}_input" in chip.files}
    if not volts or not currents:
        return []
    rule = INDEX_PAIRS.get(chip.name)
    if rule is not None:
        return [
            Pair(v, c, chip.text(f"in{v}_label") or "")
            for v, c in sorted(rule.items())
            if v in volts and c in currents
        ]
    current_labels: dict[str, int] = {}
    for index in sorted(currents):
        label = clean(chip.text(f"curr{index}_label") or "")
        if label:
            current_labels.setdefault(label, index)
    pairs: list[Pair] = []
    used: set[int] = set()
    for index in sorted(volts):
        label = chip.text(f"in{index}_label") or ""
        key = clean(label)
        if not key:
            continue
        current = current_labels.get(key)
        power_label = ""
        output = _PMBUS_VOUT.fullmatch(key)
        if current is None and output is not None:
            current = current_labels.get(f"iout{output.group(1)}")
            power_label = f"pout{output.group(1)}"
        if current is not None and current not in used:
            used.add(current)
            pairs.append(Pair(index, current, label, power_label))
    return pairs


def pair_zone(chip: Chip, pair: Pair) -> str:
    """The zone of a pair: its voltage label, else ``<chip>_power<V>`` (as Kepler names it)."""
    return clean(pair.label) or f"{chip.chip_id}_power{pair.voltage}"


def _power_file(chip: Chip, index: int) -> tuple[str, str]:
    """How channel N measures (energy, average or input) and its file, by preference."""
    if f"energy{index}_input" in chip.files:
        return "energy", f"energy{index}_input"
    if f"power{index}_average" in chip.files:
        return "average", f"power{index}_average"
    return "input", f"power{index}_input"


def _enabled(chip: Chip, kind: str, index: int) -> bool:
    """False only where ``<kind>N_enable`` reads 0."""
    return chip.text(f"{kind}{index}_enable") != "0"


def _peek(path: str) -> bytes:
    """What a file holds now, for an error message; empty if it cannot be read."""
    try:
        return _read_bytes(path)
    except OSError:
        return b""


# -- doctor and factory ---------------------------------------------------------------------


def doctor(host: HostSettings) -> Availability:
    """Available with what was found per chip, or exactly what is missing."""
    receiver = HwmonReceiver("hwmon", HwmonConfig(), host)
    try:
        receiver.start()
    except ComponentError as err:
        return Availability(False, str(err))
    finally:
        receiver.shutdown()
    return Availability(True, receiver.describe())


def _create(name: str, config: HwmonConfig, host: HostSettings) -> HwmonReceiver:
    return HwmonReceiver(name, config, host)


factory: Factory[HwmonConfig, Receiver] = Factory(
    type="hwmon",
    description="power and energy channels of hwmon chips (cpu, platform or gpu energy, "
    "source=hwmon), and their temperatures, fan speeds and voltages as hw.* gauges",
    config_class=HwmonConfig,
    create=_create,
    doctor=doctor,
)

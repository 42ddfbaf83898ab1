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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

from otel_kepler import metadata as md
from otel_kepler import metrics as m
from otel_kepler.component import (
    Availability,
    ComponentError,
    Factory,
    HostSettings,
    Receiver,
    doctor_by_starting,
)
from otel_kepler.data import Component, Contribution, EnergyReading, GaugeValue
from otel_kepler.schema import ConfigError

from ..counter import EnergyCounter, Rejected
from .channels import (
    GAUGES,
    NO_READING_UW,
    Channel,
    EnergyChannel,
    Gauge,
    Implausible,
    PowerChannel,
    check_power,
)
from .chips import (
    INDEX_PAIRS,
    Chip,
    Pair,
    channel_indexes,
    chip_id,
    clean,
    enabled,
    find_chips,
    find_pairs,
    normalise,
    pair_zone,
    power_file,
    read_chip,
)
from .sensors import (
    MAX_OPEN_FILES,
    Sensor,
    SensorReader,
    failure,
    listdir,
    open_budget,
    peek,
    read_text,
    reason,
)

__all__ = [
    "INDEX_PAIRS",
    "MAX_OPEN_FILES",
    "NO_READING_UW",
    "Chip",
    "HwmonConfig",
    "HwmonReceiver",
    "Implausible",
    "Pair",
    "Sensor",
    "SensorReader",
    "check_power",
    "chip_id",
    "classify",
    "clean",
    "doctor",
    "factory",
    "failure",
    "find_chips",
    "find_pairs",
    "listdir",
    "normalise",
    "open_budget",
    "read_chip",
    "read_text",
    "reason",
]

log = logging.getLogger(__name__)

Use = Literal["cpu", "platform", "gpu", "off"]


#: Built-in channel rules, applied after the configured ones (see the module docstring).
DEFAULT_RULES: dict[str, Use] = {"amd_energy/Ecore*": "off", "power_meter/*": "off"}

#: Chips whose power and energy channels are all the CPU's.
CPU_CHIPS = frozenset({"amd_energy", "fam15h_power", "zenpower"})
#: Chips whose power and energy channels are all a GPU's.
GPU_CHIPS = frozenset({"amdgpu", "i915", "nouveau", "radeon", "xe"})
#: Chips whose inN_input is in uV, not mV, for these N (INA3221 shunt voltages).
MICROVOLT_INPUTS: dict[str, range] = {"ina3221": range(4, 8)}


_CPU_LABEL = re.compile(
    r"(?<![a-z])(cpu|package|pkg|v?core|socket|e(core|socket))\d*(?![a-z])", re.I
)
_GPU_LABEL = re.compile(r"(?<![a-z])gpu\d*(?![a-z])", re.I)


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


# -- which metric family --------------------------------------------------------------------------


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


# -- what start() found ----------------------------------------------------------------------------


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
        self._gauges: list[Gauge] = []
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
        indexes = channel_indexes(chip)
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
            for kind in GAUGES:
                for index in sorted(indexes[kind]):
                    self._open_gauge(chip, kind, index, report)
        if report.unreadable:
            log.warning(
                "hwmon: %s: left out, unreadable: %s", chip.key, "; ".join(report.unreadable)
            )
        return report

    def _open_power(self, chip: Chip, index: int, report: ChipReport) -> str | None:
        """Open channel N's energy or power; its zone, or None where it is not used."""
        mode, attribute = power_file(chip, index)
        kind = "energy" if mode == "energy" else "power"
        if not enabled(chip, kind, index):
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
            channel = EnergyChannel(ident, use, zone, sensors[0], counter)
        else:
            channel = PowerChannel(ident, use, zone, tuple(sensors), averaged=mode == "average")
        self._channels.append(channel)
        report.zones.append(f"{use} {zone}")
        return zone

    def _open_pair(self, chip: Chip, pair: Pair, report: ChipReport) -> None:
        """Open inV x currC as one power channel (averaged where the chip averages both)."""
        if not (enabled(chip, "in", pair.voltage) and enabled(chip, "curr", pair.current)):
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
        self._channels.append(PowerChannel(ident, use, zone, tuple(sensors), averaged=averaged))
        report.zones.append(f"{use} {zone}")

    def _open_gauge(self, chip: Chip, kind: str, index: int, report: ChipReport) -> None:
        attribute = f"{kind}{index}_input"
        if attribute not in chip.files or not enabled(chip, kind, index):
            return
        label = chip.text(f"{kind}{index}_label") or ""
        channel_name = f"{kind}{index}"
        if classify(chip.name, label or channel_name, self.config.channels) == "off":
            report.off += 1
            return
        sensors = self._sensors(chip, [attribute], report)
        if sensors is None:
            return
        hw_type, metric, unit, description, divisor = GAUGES[kind]
        if kind == "in" and index in MICROVOLT_INPUTS.get(chip.name, ()):
            divisor = 1e6
        attributes = {
            "hw.id": f"{chip.key}/{channel_name}",
            "hw.type": hw_type,
            "hw.name": label or channel_name,
            "hw.parent": chip.key,
        }
        self._gauges.append(Gauge(sensors[0], metric, unit, description, divisor, attributes))
        report.gauges[hw_type] = report.gauges.get(hw_type, 0) + 1

    def _sensors(self, chip: Chip, names: list[str], report: ChipReport) -> list[Sensor] | None:
        sensors: list[Sensor] = []
        for name in names:
            try:
                sensors.append(self._reader.add(chip.files[name]))
            except (OSError, ValueError) as err:
                report.unreadable.append(f"{name}: {reason(err, peek(chip.files[name]))}")
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


# -- doctor and factory ---------------------------------------------------------------------


def doctor(host: HostSettings) -> Availability:
    """Available with what was found per chip, or exactly what is missing."""
    receiver = HwmonReceiver("hwmon", HwmonConfig(), host)
    return doctor_by_starting(receiver, receiver.describe)


def _create(name: str, config: HwmonConfig, host: HostSettings) -> HwmonReceiver:
    return HwmonReceiver(name, config, host)


factory: Factory[HwmonConfig, Receiver] = Factory(
    type="hwmon",
    description="power and energy channels of hwmon chips (cpu, platform or gpu energy, "
    "source=hwmon), and their temperatures, fan speeds and voltages as hw.* gauges",
    config_class=HwmonConfig,
    create=_create,
    doctor=doctor,
    metrics=md.specs(
        (m.HW_TEMPERATURE, m.HW_FAN_SPEED, m.HW_VOLTAGE),
        ("hw.id", "hw.type", "hw.name", "hw.parent"),
        "per sensor channel",
    ),
)

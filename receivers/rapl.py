"""The ``rapl`` receiver: CPU energy from the kernel's powercap interface (Intel/AMD RAPL).

The ``intel_rapl_msr`` driver (also on AMD CPUs) publishes one powercap zone per
socket and RAPL domain. Under ``<sysfs>/class/powercap``::

    intel-rapl          the control type itself: no energy_uj, skipped
    intel-rapl:0        package-0 (socket 0); intel-rapl:1 package-1 or psys; a
                        top-level dram on some servers. The id is hexadecimal: the
                        eleventh package is intel-rapl:a
    intel-rapl:0:0      sub-zones core, uncore, dram: also inside intel-rapl:0/
    intel-rapl-mmio:0   the package counter again, read through MMIO: used only for a
                        package that has no intel-rapl zone of its own

Each zone has a monotonically increasing ``energy_uj`` that wraps at
``max_energy_range_uj``. Per tick the receiver reads every zone file, validates it by
the counter rule of :mod:`otel_kepler.receivers.counter` (wrap-corrected delta from
the last good reading, within ``max_watts`` over the time since; a bad reading is
rejected, counted by reason in ``Contribution.rejected`` and never becomes the
reference), sums the sockets of the same zone (package, core, uncore, dram, psys) and
reports joules. A socket whose reading was rejected or unreadable is left out of the
tick; its energy is counted by its next good reading.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from otel_kepler.component import Availability, ComponentError, Factory, HostSettings, Receiver
from otel_kepler.data import Contribution, EnergyReading
from otel_kepler.schema import ConfigError

from .counter import EnergyCounter, Rejected, parse
from .estimator import EstimatorConfig, EstimatorReceiver

log = logging.getLogger(__name__)

#: Zone names as reported (``package-N`` is reported as ``package``).
ZONES = ("core", "dram", "package", "psys", "uncore")

#: Zone directories ``<control type>:<id>[:<id>]``: the ids are hexadecimal (the kernel
#: names the eleventh package zone intel-rapl:a). The control type is intel-rapl (also on
#: AMD), or another vendor's ``<vendor>-rapl``; ``-mmio`` marks the MMIO interface.
_TOP_ZONE = re.compile(r"[a-z0-9]+-rapl(-mmio)?:[0-9a-f]+")
_SUB_ZONE = re.compile(r"[a-z0-9]+-rapl(-mmio)?:[0-9a-f]+:[0-9a-f]+")
_IDS = re.compile(r":([0-9a-f]+)")

PERMISSION_FIX = (
    "energy_uj is readable only by root since Linux 5.10 (CVE-2020-8694): run the agent as "
    "root, or grant its user read access, e.g. with a udev rule "
    '\'SUBSYSTEM=="powercap", ACTION=="add", RUN+="/bin/chgrp <group> /sys%p/energy_uj", '
    'RUN+="/bin/chmod g+r /sys%p/energy_uj"\''
)


@dataclass
class RaplConfig:
    """Energy of the CPU packages, cores, uncore, DRAM and platform from RAPL counters."""

    zones: list[str] = field(
        default_factory=list,
        metadata={"doc": "zones to report (core, dram, package, psys, uncore); empty: all found"},
    )
    max_watts: float = field(
        default=5000.0,
        metadata={
            "doc": "plausibility ceiling per zone and socket: a reading above it is a counter "
            "jump, dropped and logged, never exported"
        },
    )

    fallback: Literal["none", "estimator"] = field(
        default="none",
        metadata={
            "doc": "where RAPL is absent or unreadable (VMs, non-root): estimator estimates "
            "node CPU power instead (source=model); none makes that an error"
        },
    )
    estimator: EstimatorConfig = field(
        default_factory=EstimatorConfig,
        metadata={"doc": "the estimator's settings when the fallback is used"},
    )

    def validate(self) -> None:
        for index, zone in enumerate(self.zones):
            if zone not in ZONES:
                known = ", ".join(ZONES)
                raise ConfigError(f"zones[{index}]", f'unknown zone "{zone}" (known: {known})')
        if self.max_watts <= 0:
            raise ConfigError("max_watts", f"must be greater than 0, got {self.max_watts:g}")


@dataclass(slots=True)
class _Counter:
    """One zone file of one socket: where to read it and its counter's state."""

    zone: str  # normalised name
    path: str  # its energy_uj
    counter: EnergyCounter
    failing: bool = False  # the last read failed (logged once until it reads again)

    @property
    def max_range_uj(self) -> int:
        return self.counter.max_range or 0


def read_int(path: str) -> int:
    """Read a small sysfs integer file with two system calls and no buffering."""
    return int(_read_bytes(path))


def _read_bytes(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 64)
    finally:
        os.close(fd)


def normalise(name: str) -> str | None:
    """``package-1`` -> ``package``; known names as they are; anything else None."""
    if name.startswith("package"):
        return "package"
    return name if name in ZONES else None


def zone_dirs(powercap: str) -> list[str]:
    """The RAPL zone directories under ``powercap``, each once, in socket order.

    Top-level zones are the class links ``intel-rapl:N``; sub-zones have class
    links too but live inside their parent, so both places are looked at and
    duplicates (the same real directory) removed. The control types themselves
    (``intel-rapl``) do not match. MMIO zones come after the others, so that the
    caller can keep them only where they are not a duplicate.
    """
    candidates: list[str] = []
    entries = _listdir(powercap)
    for entry in entries:
        if _TOP_ZONE.fullmatch(entry) or _SUB_ZONE.fullmatch(entry):
            candidates.append(os.path.join(powercap, entry))
    for entry in entries:
        if _TOP_ZONE.fullmatch(entry):
            top = os.path.join(powercap, entry)
            subs = [s for s in _listdir(top) if _SUB_ZONE.fullmatch(s)]
            candidates.extend(os.path.join(top, s) for s in subs)
    unique: dict[str, str] = {}
    for path in candidates:
        unique.setdefault(os.path.realpath(path), path)
    return sorted(unique.values(), key=_socket_order)


def is_mmio(directory: str) -> bool:
    return "-mmio:" in os.path.basename(directory)


def _socket_order(path: str) -> tuple[int, tuple[int, ...]]:
    name = os.path.basename(path)
    return (is_mmio(path), tuple(int(n, 16) for n in _IDS.findall(name)))


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as err:
        raise ComponentError(f"cannot list {path}: {err.strerror}") from None


def _read_name(directory: str) -> str:
    with open(os.path.join(directory, "name"), encoding="ascii") as file:
        return file.read().strip()


class RaplReceiver(Receiver):
    """Reads every selected zone's energy_uj once per tick."""

    def __init__(
        self,
        name: str,
        config: RaplConfig,
        host: HostSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.powercap = os.path.join(host.sysfs, "class", "powercap")
        self._wanted = set(config.zones)
        self._max_watts = config.max_watts
        self._clock = clock
        self._counters: list[_Counter] = []
        self._zones: list[str] = []  # reported zones, in output order
        self._labels: dict[str, dict[str, str]] = {}  # zone -> Kepler's path label
        self._fallback = (
            EstimatorReceiver(name, config.estimator, host, clock)
            if config.fallback == "estimator"
            else None
        )
        self.using_fallback = False

    @property
    def zones(self) -> dict[str, int]:
        """Zone name -> number of sockets (counters) found by start()."""
        return {z: sum(1 for c in self._counters if c.zone == z) for z in self._zones}

    @property
    def paths(self) -> list[str]:
        """The energy_uj files read, in socket order."""
        return [c.path for c in self._counters]

    def start(self) -> None:
        try:
            self._start_rapl()
        except ComponentError as err:
            if self._fallback is None:
                raise
            log.info("%s: %s; falling back to the estimator (source=model)", self.name, err)
            self._fallback.start()
            self.using_fallback = True

    def _start_rapl(self) -> None:
        counters: list[_Counter] = []
        found: set[str] = set()
        names: set[str] = set()  # raw names (package-0) of the non-MMIO zones
        for directory in zone_dirs(self.powercap):
            opened = self._open_zone(directory)
            if opened is None:
                continue
            raw, counter = opened
            if is_mmio(directory):
                if raw in names:
                    continue  # the same counter as intel-rapl's zone, read through MMIO
            else:
                names.add(raw)
            found.add(counter.zone)
            if not self._wanted or counter.zone in self._wanted:
                counters.append(counter)
        if not found:
            raise ComponentError(
                f"no RAPL zones under {self.powercap}: this host has no RAPL (a VM?); "
                "use the estimator receiver, or fallback: estimator"
            )
        if not counters:
            raise ComponentError(
                f"none of the configured zones ({', '.join(sorted(self._wanted))}) exist under "
                f"{self.powercap}; found: {', '.join(sorted(found))}"
            )
        self._counters = counters
        self._zones = sorted({c.zone for c in counters})
        # Kepler's path label: the zone's directory, or aggregated-<zone> for summed sockets.
        for zone in self._zones:
            dirs = [os.path.dirname(c.path) for c in counters if c.zone == zone]
            self._labels[zone] = {"path": dirs[0] if len(dirs) == 1 else f"aggregated-{zone}"}

    def _open_zone(self, directory: str) -> tuple[str, _Counter] | None:
        """The zone's raw name and counter; None (logged) if it is unusable."""
        try:
            raw = _read_name(directory)
            max_range = read_int(os.path.join(directory, "max_energy_range_uj"))
        except (OSError, ValueError) as err:
            log.warning("rapl: skipping zone %s: %s", directory, _reason(err))
            return None
        zone = normalise(raw)
        if zone is None:
            log.info("rapl: skipping %s: its name is none of %s", directory, ", ".join(ZONES))
            return None
        if max_range <= 0:
            log.warning(
                "rapl: skipping zone %s: its max_energy_range_uj is %d", directory, max_range
            )
            return None
        energy = os.path.join(directory, "energy_uj")
        try:
            read_int(energy)
        except PermissionError:
            raise ComponentError(
                f"cannot read {energy}: permission denied. {PERMISSION_FIX}"
            ) from None
        except (OSError, ValueError) as err:
            log.warning("rapl: skipping zone %s: cannot read %s: %s", zone, energy, _reason(err))
            return None
        counter = EnergyCounter(energy, self._max_watts, 1e-6, max_range)
        return raw, _Counter(zone=zone, path=energy, counter=counter)

    def collect(self) -> Contribution:
        if self.using_fallback and self._fallback is not None:
            return self._fallback.collect()
        now = self._clock()
        part = Contribution()
        joules: dict[str, float] = {}
        for counter in self._counters:
            delta = self._measure(counter, now, part)
            if delta is not None:
                joules[counter.zone] = joules.get(counter.zone, 0.0) + delta
        part.energy = [
            EnergyReading("cpu", zone, "rapl", joules[zone], self._labels[zone])
            for zone in self._zones
            if zone in joules
        ]
        return part

    def _measure(self, zone: _Counter, now: float, part: Contribution) -> float | None:
        """Joules of one socket's zone since its last good reading; None if none to count."""
        counter = zone.counter
        try:
            data = _read_bytes(zone.path)
        except OSError as err:
            counter.fail()
            part.reject("unreadable")
            if not zone.failing:
                zone.failing = True
                log.warning(
                    "rapl: cannot read %s (%s); zone %s is left out until it reads again "
                    "(counted as rejected: unreadable)",
                    zone.path,
                    _reason(err),
                    zone.zone,
                )
            return None
        if zone.failing:
            zone.failing = False
            log.info("rapl: %s reads again; zone %s resumes", zone.path, zone.zone)
        restarts = counter.restarts
        try:
            joules = counter.update(parse(data), now)
        except Rejected as err:
            counter.fail()
            part.reject(err.reason)
            if counter.first(err.reason):
                log.warning(
                    "rapl: rejected a reading of zone %s (%s): %s; not exported, the next "
                    "good reading counts from the last good one (logged once per zone file "
                    "and reason)",
                    zone.zone,
                    err.reason,
                    _in(zone.path, err.message),
                )
            return None
        if counter.restarts != restarts:
            log.warning(
                "rapl: %s restarted from a new level (a reset?); zone %s counts from there",
                zone.path,
                zone.zone,
            )
        return joules


def _in(path: str, message: str) -> str:
    """``message``, naming ``path`` if it does not already."""
    return message if path in message else f"{path}: {message}"


def _reason(err: Exception) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def doctor(host: HostSettings) -> Availability:
    """Available, or exactly what is missing: the powercap dir, the zones, read access."""
    receiver = RaplReceiver("rapl", RaplConfig(), host)
    if not os.path.isdir(receiver.powercap):
        return Availability(
            False,
            f"{receiver.powercap} does not exist: the kernel exposes no powercap interface "
            "(a VM, or the intel_rapl_msr module is not loaded)",
        )
    try:
        receiver.start()
    except ComponentError as err:
        return Availability(False, str(err))
    found = ", ".join(
        f"{zone} ({n} socket{'s' if n > 1 else ''})" for zone, n in receiver.zones.items()
    )
    return Availability(True, f"{found} under {receiver.powercap}")


def _create(name: str, config: RaplConfig, host: HostSettings) -> RaplReceiver:
    return RaplReceiver(name, config, host)


factory: Factory[RaplConfig, Receiver] = Factory(
    type="rapl",
    description="CPU energy (package, core, uncore, dram, psys) from RAPL powercap counters",
    config_class=RaplConfig,
    create=_create,
    doctor=doctor,
    reading_labels=("path",),
)

"""The ``rapl`` receiver: CPU energy from the kernel's powercap interface (Intel/AMD RAPL).

The ``intel_rapl_msr`` driver publishes one powercap zone per socket and RAPL
domain. Under ``<sysfs>/class/powercap``::

    intel-rapl          the control type itself: no energy_uj, skipped
    intel-rapl:0        package-0 (socket 0); intel-rapl:1 package-1 or psys; a
                        top-level dram on some servers
    intel-rapl:0:0      sub-zones core, uncore, dram: also inside intel-rapl:0/
    intel-rapl-mmio:0   the package counter again, read through MMIO: skipped

Each zone has a monotonically increasing ``energy_uj`` that wraps at
``max_energy_range_uj``. Per tick the receiver takes the wrap-corrected delta of
every zone file, sums the sockets of the same zone (package, core, uncore,
dram, psys) and reports joules. A delta above ``max_watts`` over the interval
is not energy but a counter jump (a reset, a firmware glitch): it is dropped.
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
from otel_kepler.receivers.estimator import EstimatorConfig, EstimatorReceiver
from otel_kepler.schema import ConfigError

log = logging.getLogger(__name__)

#: Zone names as reported (``package-N`` is reported as ``package``).
ZONES = ("core", "dram", "package", "psys", "uncore")

_TOP_ZONE = re.compile(r"intel-rapl:\d+")
_SUB_ZONE = re.compile(r"intel-rapl:\d+:\d+")
_NUMBERS = re.compile(r"\d+")

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
    """One zone file of one socket: where to read it and what it read last."""

    zone: str  # normalised name
    path: str  # its energy_uj
    max_range_uj: int
    previous_uj: int | None = None
    read_at: float = 0.0  # clock time of previous_uj
    failing: bool = False  # the last read failed (logged once until it reads again)


def read_int(path: str) -> int:
    """Read a small sysfs integer file with two system calls and no buffering."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 64)
    finally:
        os.close(fd)
    return int(data)


def normalise(name: str) -> str | None:
    """``package-1`` -> ``package``; known names as they are; anything else None."""
    if name.startswith("package"):
        return "package"
    return name if name in ZONES else None


def wrapped_delta(previous: int, current: int, max_range: int) -> int:
    """Energy between two reads of a counter that wraps at ``max_range``."""
    if current >= previous:
        return current - previous
    return (max_range - previous) + current


def zone_dirs(powercap: str) -> list[str]:
    """The intel-rapl zone directories under ``powercap``, each once, in socket order.

    Top-level zones are the class links ``intel-rapl:N``; sub-zones have class
    links too but live inside their parent, so both places are looked at and
    duplicates (the same real directory) removed. The control type
    ``intel-rapl`` and the ``intel-rapl-mmio`` tree do not match the patterns.
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


def _socket_order(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in _NUMBERS.findall(os.path.basename(path)))


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
        self._last_tick: float | None = None
        self._warned_bogus: set[str] = set()
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

    def start(self) -> None:
        try:
            self._start_rapl()
        except ComponentError as err:
            if self._fallback is None:
                raise
            log.warning("%s: %s; falling back to the estimator (source=model)", self.name, err)
            self._fallback.start()
            self.using_fallback = True

    def _start_rapl(self) -> None:
        counters: list[_Counter] = []
        found: set[str] = set()
        for directory in zone_dirs(self.powercap):
            counter = self._open_zone(directory)
            if counter is None:
                continue
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

    def _open_zone(self, directory: str) -> _Counter | None:
        """A counter for the zone in ``directory``; None (logged) if it is unusable."""
        try:
            zone = normalise(_read_name(directory))
            max_range = read_int(os.path.join(directory, "max_energy_range_uj"))
        except (OSError, ValueError) as err:
            log.warning("rapl: skipping zone %s: %s", directory, _reason(err))
            return None
        if zone is None:
            log.info("rapl: skipping %s: its name is none of %s", directory, ", ".join(ZONES))
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
        return _Counter(zone=zone, path=energy, max_range_uj=max_range)

    def collect(self) -> Contribution:
        if self.using_fallback and self._fallback is not None:
            return self._fallback.collect()
        now = self._clock()
        self._last_tick = now
        joules: dict[str, float] = {}
        dropped: set[str] = set()
        rejected = 0
        for counter in self._counters:
            delta_uj, span = self._delta(counter, now)
            if delta_uj is None:
                dropped.add(counter.zone)
            elif delta_uj > self._max_watts * span * 1e6:
                self._reject(counter, delta_uj, span)
                dropped.add(counter.zone)
                rejected += 1
            else:
                joules[counter.zone] = joules.get(counter.zone, 0.0) + delta_uj / 1e6
        energy = [
            EnergyReading(component="cpu", zone=zone, source="rapl", joules=joules[zone])
            for zone in self._zones
            if zone not in dropped
        ]
        return Contribution(energy=energy, rejected=rejected)

    def _delta(self, counter: _Counter, now: float) -> tuple[int | None, float]:
        """Microjoules since the previous good read, and the seconds they span.

        None while priming or when unreadable. A failed read keeps the previous value,
        so the next good read covers the gap and no energy is lost; a gap long enough
        for the counter to have wrapped more than once (at max_watts) primes again.
        """
        try:
            current = read_int(counter.path)
        except (OSError, ValueError) as err:
            if not counter.failing:
                log.warning(
                    "rapl: cannot read %s (%s); zone %s is left out until it reads again",
                    counter.path,
                    _reason(err),
                    counter.zone,
                )
            counter.failing = True
            return None, 0.0
        previous, since = counter.previous_uj, counter.read_at
        counter.previous_uj, counter.read_at = current, now
        span = now - since
        if counter.failing:
            log.info("rapl: %s reads again; zone %s resumes", counter.path, counter.zone)
            counter.failing = False
            if span > counter.max_range_uj / (self._max_watts * 1e6):
                return None, 0.0  # out long enough to have wrapped more than once
        if previous is None:
            return None, 0.0
        return wrapped_delta(previous, current, counter.max_range_uj), span

    def _reject(self, counter: _Counter, delta_uj: int, elapsed: float) -> None:
        if counter.zone in self._warned_bogus:
            return
        self._warned_bogus.add(counter.zone)
        log.warning(
            "rapl: dropped an implausible reading of zone %s: %s rose by %d uJ in %.3fs "
            "(%.0f W > max_watts %g); not exported (logged once per zone)",
            counter.zone,
            counter.path,
            delta_uj,
            elapsed,
            delta_uj / 1e6 / elapsed if elapsed > 0 else float("inf"),
            self._max_watts,
        )


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
)

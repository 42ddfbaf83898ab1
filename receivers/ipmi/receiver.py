"""The ipmi receiver: a poller thread owns the BMC; collect() only integrates what it read.

Energy from power readings: each reading holds from the moment it arrived until the
next one, but at most ``max_age`` (a zero-order hold; a reading is the power *now*, so
holding it forward needs no future reading, where a trapezoid would have to wait one
poll). A tick's joules are the integral of that step function over the tick's real
interval (the receiver's own monotonic clock between two collects). Time that no
reading covers (before the first, or a silent BMC past ``max_age``) counts no energy:
the monotonic joules total never contains a guess. A zone whose latest reading is
older than ``max_age`` at collect time is left out of the tick altogether.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence

from otel_kepler.component import ComponentError, HostSettings, Receiver
from otel_kepler.data import Component, Contribution, EnergyReading

from . import link as links
from .config import IpmiConfig, read_password
from .link import MAX_IDLE, LanLink, Link, LinkError, LocalLink
from .meter import Meter, NoPowerMeter, WattSensor, find_meter

log = logging.getLogger("otel_kepler.receivers.ipmi")

SOURCE = "ipmi"
COMPONENT: Component = "platform"
#: Readings kept per zone between two collects (a bound for a receiver nobody collects).
MAX_SAMPLES = 4096

Sample = tuple[float, float]  # (monotonic time it arrived, watts)


def held_energy(samples: Sequence[Sample], start: float, end: float, max_age: float) -> float:
    """Joules in [start, end] of readings each held until the next one, at most max_age.

    ``samples`` are in time order; those after ``end`` are ignored.
    """
    joules = 0.0
    for index, (at, watts) in enumerate(samples):
        if at >= end:
            break
        until = at + max_age
        if index + 1 < len(samples):
            until = min(until, samples[index + 1][0])
        covered = min(until, end) - max(at, start)
        if covered > 0:
            joules += watts * covered
    return joules


class Backoff:
    """Waits between failed attempts: ``first``, then doubled each time, up to ``cap``."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


def open_link(config: IpmiConfig) -> Link:
    """A logged-in link to the configured BMC; LinkError (or a subclass) if not."""
    if not config.endpoint:
        return LocalLink(links.DEVICE)
    try:
        password = read_password(config)
    except ComponentError as err:
        raise LinkError(str(err)) from None
    return LanLink.login(config.endpoint, config.port, config.username, password, config.timeout)


class IpmiReceiver(Receiver):
    """Platform power from a BMC, polled in a thread of its own; collect() never waits on it."""

    def __init__(
        self,
        name: str,
        config: IpmiConfig,
        host: HostSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: dict[str, collections.deque[Sample]] = {}
        self._rejected: dict[str, int] = {}  # reason -> readings, since the last collect
        self._stop = threading.Event()
        self._first_attempt = threading.Event()
        self._first_error: LinkError | None = None
        self._start_waits = False
        self._thread: threading.Thread | None = None
        # Owned by the poller thread:
        self._link: Link | None = None
        self.meter: Meter | None = None
        self._sdr_cache: dict[bytes, list[WattSensor]] = {}
        self._failures = 0
        self._warned_bogus: set[str] = set()
        # Owned by collect():
        self._last_collect: float | None = None
        self._stale: set[str] = set()

    def __repr__(self) -> str:
        return f"<IpmiReceiver {self.name} {self.config.where}>"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the poller; wait (bounded) for its first attempt to catch definite errors.

        A refused login or a BMC without any power reading raises ComponentError. A BMC
        that does not answer in time does not: the poller keeps trying with back-off.
        """
        config = self.config
        if not config.endpoint and not os.path.exists(links.DEVICE):
            raise ComponentError(f"{links.DEVICE} does not exist: {links.NO_DEVICE_FIX}")
        if config.endpoint:
            read_password(config)  # a missing file or variable is a config error: say so now
        self._start_waits = True
        self._thread = threading.Thread(target=self._run, name=f"{self.name} poller", daemon=True)
        self._thread.start()
        self._first_attempt.wait(3 * config.timeout + 0.5)
        with self._lock:
            self._start_waits = False
            error, self._first_error = self._first_error, None
        if isinstance(error, links.LoginRefused | NoPowerMeter):
            self.shutdown()
            raise ComponentError(str(error))
        if error is not None:
            log.warning(
                "%s: %s; platform energy is left out until it answers (retrying in the background)",
                self.name,
                error,
            )

    def shutdown(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            # A request in flight ends at its deadline (in-band: the kernel's timeout).
            thread.join(timeout=2 * self.config.timeout + 1.0)

    def latest(self) -> dict[str, Sample]:
        """The latest reading of each zone: (monotonic time it arrived, watts)."""
        with self._lock:
            return {zone: samples[-1] for zone, samples in self._samples.items() if samples}

    # -- the tick -----------------------------------------------------------------------

    def collect(self) -> Contribution:
        now = self._clock()
        with self._lock:
            rejected, self._rejected = self._rejected, {}
            series = {zone: list(samples) for zone, samples in self._samples.items()}
        start, self._last_collect = self._last_collect, now
        if start is None:  # the first collect only starts the first interval
            return Contribution(rejected=rejected)
        energy: list[EnergyReading] = []
        for zone, samples in series.items():
            arrived = [s for s in samples if s[0] <= now]
            if not self._fresh(zone, arrived, now):
                continue
            joules = held_energy(arrived, start, now, self.config.max_age)
            energy.append(EnergyReading(COMPONENT, zone, SOURCE, joules))
        self._prune(now)
        return Contribution(energy=energy, rejected=rejected)

    def _fresh(self, zone: str, samples: list[Sample], now: float) -> bool:
        """The zone's latest reading is within max_age (logs the change once, both ways)."""
        fresh = bool(samples) and now - samples[-1][0] <= self.config.max_age
        if not fresh and zone not in self._stale:
            self._stale.add(zone)
            log.warning(
                "%s: no reading of zone %s from the BMC at %s for more than %s (max_age); "
                "its energy is left out until the BMC answers again",
                self.name,
                zone,
                self.config.where,
                self.config.max_age,
            )
        elif fresh and zone in self._stale:
            self._stale.discard(zone)
            log.info("%s: zone %s has readings again", self.name, zone)
        return fresh

    def _prune(self, now: float) -> None:
        """Forget readings before the last one that arrived by ``now`` (it still holds)."""
        with self._lock:
            for samples in self._samples.values():
                while len(samples) > 1 and samples[1][0] <= now:
                    samples.popleft()

    # -- the poller thread --------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(self.config.interval, self.config.max_backoff)
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    self._poll()
                    backoff.reset()
                    delay = max(0.0, self.config.interval - (time.monotonic() - began))
                except LinkError as err:
                    delay = backoff.next()
                    self._failed(err, delay)
                except Exception as err:  # noqa: BLE001 - a bug must not end the polling
                    log.exception("%s: polling the BMC at %s failed", self.name, self.config.where)
                    delay = backoff.next()
                    self._failed(LinkError(f"{type(err).__name__}: {err}"), delay)
                self._first_attempt.set()
                self._stop.wait(delay)
        finally:
            self._drop_link()
            self._first_attempt.set()

    def _poll(self) -> None:
        link = self._link
        if isinstance(link, LanLink) and link.idle > MAX_IDLE:
            self._drop_link()  # the BMC may have closed it: log in afresh
        if self._link is None:
            self._connect()
        assert self._link is not None and self.meter is not None
        readings = self.meter.read(self._link)
        self._record(readings, self._clock())
        if self._failures:
            log.info(
                "%s: the BMC at %s answers again (after %d failed attempts)",
                self.name,
                self.config.where,
                self._failures,
            )
            self._failures = 0

    def _connect(self) -> None:
        config = self.config
        link = open_link(config)
        try:
            meter = find_meter(link, config.method, config.sensors, self._sdr_cache)
        except BaseException:
            link.close()
            raise
        if meter != self.meter:
            log.info(
                "%s: reading platform power from the BMC at %s by %s",
                self.name,
                config.where,
                meter.describe(),
            )
            with self._lock:  # zones of another meter (DCMI before, SDR now) end here
                for zone in set(self._samples) - set(meter.zones):
                    del self._samples[zone]
        self._link, self.meter = link, meter

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def _failed(self, err: LinkError, delay: float) -> None:
        self._drop_link()
        self._failures += 1
        with self._lock:
            for_start = self._start_waits and self._failures == 1
            if for_start:
                self._first_error = err  # start() reports it
        if self._failures == 1 and not for_start:
            log.warning(
                "%s: %s; retrying with back-off (up to %s)", self.name, err, self.config.max_backoff
            )
        log.debug("%s: attempt %d failed: %s; next in %gs", self.name, self._failures, err, delay)

    def _record(self, readings: dict[str, float | None], at: float) -> None:
        rejected: list[str] = []
        accepted: list[tuple[str, float]] = []
        for zone, watts in readings.items():
            if watts is None:  # the BMC has no reading of that sensor this time
                rejected.append("unreadable")
                continue
            if not math.isfinite(watts):
                rejected.append("not_a_number")
                self._reject(zone, watts)
                continue
            if watts < 0 or watts > self.config.max_watts:
                rejected.append("implausible_power")
                self._reject(zone, watts)
                continue
            accepted.append((zone, watts))
        with self._lock:
            for reason in rejected:
                self._rejected[reason] = self._rejected.get(reason, 0) + 1
            for zone, watts in accepted:
                samples = self._samples.get(zone)
                if samples is None:
                    samples = self._samples[zone] = collections.deque(maxlen=MAX_SAMPLES)
                samples.append((at, watts))

    def _reject(self, zone: str, watts: float) -> None:
        if zone in self._warned_bogus:
            return
        self._warned_bogus.add(zone)
        log.warning(
            "%s: dropped an implausible reading of zone %s from the BMC at %s: %g W "
            "(allowed: 0 to max_watts %g); not exported (logged once per zone)",
            self.name,
            zone,
            self.config.where,
            watts,
            self.config.max_watts,
        )

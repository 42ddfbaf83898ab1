"""The redfish receiver: a poller thread owns the BMC; collect() only integrates what it read.

Energy from power readings, as in the ipmi receiver: each reading holds from the moment
it arrived until the next one, at most ``max_age`` (zero-order hold), and a tick's
joules are the integral of that step function over the tick's real interval, on the
receiver's own monotonic clock. Time no reading covers counts no energy. A chassis
whose latest reading is older than ``max_age`` is left out of the tick.

Problems are logged once each, when they start (and once when they end), never once
per poll: a BMC that cannot be used (down, slow, refused credentials, TLS), a chassis
whose reading cannot be read (broken JSON, not a number: counted as rejected
``unreadable``), a chassis reading out of range (``implausible``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from otel_kepler.component import ComponentError, HostSettings, Receiver
from otel_kepler.data import Component, Contribution, EnergyReading
from otel_kepler.receivers.ipmi.receiver import Backoff, held_energy

from .config import RedfishConfig, read_password
from .link import Link, RedfishError, quiet_sushy
from .meter import PowerSource, Unreadable, discover, read

log = logging.getLogger("otel_kepler.receivers.redfish")

SOURCE = "redfish"
COMPONENT: Component = "platform"
ZONE = "platform"
#: Readings kept per chassis between two collects (a bound for a receiver nobody collects).
MAX_SAMPLES = 4096
#: Contribution.rejected reason of a reading out of range (below 0, above max_watts).
IMPLAUSIBLE = "implausible_power"

Sample = tuple[float, float]  # (monotonic time it arrived, watts)


def open_link(config: RedfishConfig) -> Link:
    """A logged-in link to the configured BMC (the password is read afresh each time)."""
    try:
        password = read_password(config)
    except ComponentError as err:
        raise RedfishError("config", str(err)) from None
    return Link(config, password)


class RedfishReceiver(Receiver):
    """Platform power of every chassis of a BMC, polled in a thread of its own."""

    def __init__(
        self,
        name: str,
        config: RedfishConfig,
        host: HostSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self.bmc_id = config.bmc_id or config.where
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: dict[str, collections.deque[Sample]] = {}
        self._attributes: dict[str, dict[str, str]] = {}
        self._rejected: dict[str, int] = {}
        self._stop = threading.Event()
        self._first_attempt = threading.Event()
        self._first_error: RedfishError | None = None
        self._thread: threading.Thread | None = None
        #: Failed polls since start, by reason (unreachable, timeout, tls, auth, ...).
        self.failures: dict[str, int] = {}
        #: Successful polls since start.
        self.polls = 0
        # Owned by the poller thread:
        self._link: Link | None = None
        self.sources: list[PowerSource] = []
        self._problem: str | None = None
        self._source_problems: dict[str, str] = {}
        self._warned_bogus: set[str] = set()
        # Owned by collect():
        self._last_collect: float | None = None
        self._stale: set[str] = set()

    def __repr__(self) -> str:
        return f"<RedfishReceiver {self.name} {self.config.base_url}>"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the poller and wait (bounded) for its first attempt.

        With ``required: true`` a failed or unfinished first attempt raises
        ComponentError; otherwise the poller keeps trying and the problem is logged once.
        """
        quiet_sushy()
        read_password(self.config)  # a missing password file is a deployment error: now
        if self.config.insecure_skip_verify:
            log.warning(
                "%s: TLS certificates of %s are not verified (insecure_skip_verify)",
                self.name,
                self.config.where,
            )
        self._thread = threading.Thread(target=self._run, name=f"{self.name} poller", daemon=True)
        self._thread.start()
        answered = self._first_attempt.wait(2 * self.config.timeout + 1.0)
        if not self.config.required:
            return
        with self._lock:
            error = self._first_error
        if error is not None or not answered:
            self.shutdown()
            raise ComponentError(
                str(error)
                if error is not None
                else f"{self.config.where}: no answer within {2 * self.config.timeout:g}s"
            )

    def shutdown(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            # A request in flight ends at its deadline; the thread logs out on its way out.
            thread.join(timeout=2 * self.config.timeout + 1.0)

    def latest(self) -> dict[str, Sample]:
        """The latest reading of each chassis: (monotonic time it arrived, watts)."""
        with self._lock:
            return {cid: samples[-1] for cid, samples in self._samples.items() if samples}

    # -- the tick -----------------------------------------------------------------------

    def collect(self) -> Contribution:
        now = self._clock()
        with self._lock:
            rejected, self._rejected = self._rejected, {}
            series = {cid: list(samples) for cid, samples in self._samples.items()}
            attributes = dict(self._attributes)
        start, self._last_collect = self._last_collect, now
        if start is None:  # the first collect only starts the first interval
            return _contribution([], rejected)
        energy: list[EnergyReading] = []
        for chassis_id, samples in series.items():
            arrived = [s for s in samples if s[0] <= now]
            if not self._fresh(chassis_id, arrived, now):
                continue
            joules = held_energy(arrived, start, now, self.config.max_age)
            energy.append(EnergyReading(COMPONENT, ZONE, SOURCE, joules, attributes[chassis_id]))
        self._prune(now)
        return _contribution(energy, rejected)

    def _fresh(self, chassis_id: str, samples: list[Sample], now: float) -> bool:
        """The chassis's latest reading is within max_age (logs the change once, both ways)."""
        fresh = bool(samples) and now - samples[-1][0] <= self.config.max_age
        if not fresh and chassis_id not in self._stale:
            self._stale.add(chassis_id)
            log.info(
                "%s: no reading of chassis %s for more than %s (max_age); its energy is left "
                "out until the BMC answers again",
                self.name,
                chassis_id,
                self.config.max_age,
            )
        elif fresh and chassis_id in self._stale:
            self._stale.discard(chassis_id)
            log.info("%s: chassis %s has readings again", self.name, chassis_id)
        return fresh

    def _prune(self, now: float) -> None:
        """Forget readings before the last one that arrived by ``now`` (it still holds)."""
        with self._lock:
            for samples in self._samples.values():
                while len(samples) > 1 and samples[1][0] <= now:
                    samples.popleft()

    # -- the poller thread --------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(self.config.poll_interval, self.config.max_backoff)
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    self._poll()
                    backoff.reset()
                    delay = max(0.0, self.config.poll_interval - (time.monotonic() - began))
                except RedfishError as err:
                    delay = backoff.next()
                    self._failed(err)
                except Exception as err:  # noqa: BLE001 - a bug must not end the polling
                    delay = backoff.next()
                    self._failed(RedfishError("bug", f"{type(err).__name__}: {err}"), trace=True)
                self._first_attempt.set()
                self._stop.wait(delay)
        finally:
            self._drop_link()
            self._first_attempt.set()

    def _poll(self) -> None:
        if self._link is None:
            self._connect()
        assert self._link is not None
        for source in self.sources:
            try:
                watts = read(self._link, source)
            except Unreadable as err:
                self._unreadable(source, err)
                continue
            if watts is not None:
                self._record(source, watts, self._clock())
            self._readable(source)
        self.polls += 1
        if self._problem is not None:
            log.info("%s: the BMC at %s answers again", self.name, self.config.where)
            self._problem = None

    def _connect(self) -> None:
        link = open_link(self.config)
        try:
            sources = discover(link, self.config.chassis, self.bmc_id)
        except BaseException:
            link.close()
            raise
        if sources != self.sources:
            log.info(
                "%s: reading platform power from the BMC at %s: %s",
                self.name,
                self.config.where,
                "; ".join(s.describe() for s in sources),
            )
            with self._lock:
                for chassis_id in set(self._samples) - {s.chassis_id for s in sources}:
                    del self._samples[chassis_id]
                self._attributes = {s.chassis_id: s.attributes for s in sources}
        self._link, self.sources = link, sources

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def _failed(self, err: RedfishError, trace: bool = False) -> None:
        self._drop_link()
        self.failures[err.reason] = self.failures.get(err.reason, 0) + 1
        with self._lock:
            if self._first_error is None and not self._first_attempt.is_set():
                self._first_error = err
        message = str(err)
        if message != self._problem:
            self._problem = message
            log.warning(
                "%s: %s; its platform energy is left out, retrying with back-off (up to %s)",
                self.name,
                message,
                self.config.max_backoff,
                exc_info=trace,
            )
        else:
            log.debug("%s: still failing: %s", self.name, message)

    def _unreadable(self, source: PowerSource, err: Unreadable) -> None:
        with self._lock:
            self._rejected[err.rejected] = self._rejected.get(err.rejected, 0) + 1
        message = str(err)
        if self._source_problems.get(source.chassis_id) != message:
            self._source_problems[source.chassis_id] = message
            log.warning(
                "%s: dropped the reading of chassis %s: %s (logged once until it reads again)",
                self.name,
                source.chassis_id,
                message,
            )

    def _readable(self, source: PowerSource) -> None:
        if self._source_problems.pop(source.chassis_id, None) is not None:
            log.info("%s: chassis %s reads again", self.name, source.chassis_id)

    def _record(self, source: PowerSource, watts: float, at: float) -> None:
        chassis_id = source.chassis_id
        if watts < 0 or watts > self.config.max_watts:
            with self._lock:
                self._rejected[IMPLAUSIBLE] = self._rejected.get(IMPLAUSIBLE, 0) + 1
            if chassis_id not in self._warned_bogus:
                self._warned_bogus.add(chassis_id)
                log.warning(
                    "%s: dropped an implausible reading of chassis %s from the BMC at %s: "
                    "%g W (allowed: 0 to max_watts %g); not exported (logged once per chassis)",
                    self.name,
                    chassis_id,
                    self.config.where,
                    watts,
                    self.config.max_watts,
                )
            return
        with self._lock:
            samples = self._samples.get(chassis_id)
            if samples is None:
                samples = self._samples[chassis_id] = collections.deque(maxlen=MAX_SAMPLES)
            samples.append((at, watts))


def _contribution(energy: list[EnergyReading], rejected: dict[str, int]) -> Contribution:
    part = Contribution(energy=energy)
    for reason, count in rejected.items():
        part.reject(reason, count)
    return part

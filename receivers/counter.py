"""One rule for every accumulating energy counter a receiver reads.

RAPL's ``energy_uj``, hwmon's ``energyN_input`` and NVML's total energy are counters:
the energy of an interval is the difference of two readings. A single bad reading
taken as the reference would turn every later interval into a wrong number (a
negative delta, or petajoules), so each counter goes through :class:`EnergyCounter`:

* A reading is parsed as an integer; an empty read, text that is not a number and a
  negative value are rejected (``empty``, ``not_a_number``, ``negative``), as is a
  value above the counter's published maximum (``over_range``).
* The delta is taken from the **last good reading** (the baseline). Where the counter
  is below the baseline it is a wrap only if the counter has a maximum, the baseline
  is within it, and the wrapped delta ``(max_range - baseline) + reading`` is
  physically plausible; otherwise it went ``backwards``.
* A delta is plausible when it is at most ``max_watts x (elapsed x MARGIN + SLACK_S)``
  joules, ``elapsed`` being the time since the baseline was read; above that it is an
  ``implausible_jump``.
* A rejected reading never becomes the baseline: the next good reading is measured
  from the last good one, covering the gap (a failed or rejected read loses no
  energy). If a read failed or was rejected since the baseline and the counter could
  have wrapped unseen in the meantime (``max_watts x elapsed`` reaches its range), the
  delta cannot be trusted: the counter primes again from that reading.
* A counter that really moved to a new level (a reset, a driver reload) would be
  rejected forever by that rule, so each rejected reading is kept as a *candidate*
  (every one since the baseline, up to :data:`CANDIDATES`): when a reading is a
  plausible step from a candidate but not from the baseline, the counter is taken to
  have restarted and primes again from that reading (the interval is lost, nothing is
  guessed). All candidates are kept, not only the last: two lies that agree look like
  a restart, and the true readings that follow are then rejected against that false
  baseline; keeping the first of them as a candidate lets the next true reading
  restart from it even when another lie came in between, so one lie never costs more
  than one true reading.

So an accepted delta is never negative and never above the physical bound, and the
totals built from them are monotonic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Relative margin on the elapsed time: the clock is read once per tick, the counter a
#: little later, and a scheduler delay lengthens the real interval.
MARGIN = 1.05
#: Absolute margin in seconds (a counter read late within one tick, a coarse counter).
SLACK_S = 0.01
#: The most rejected readings kept as candidates for a restart (the oldest are dropped).
CANDIDATES = 32


class Rejected(Exception):
    """A reading that is not used; ``reason`` is one of ``Contribution.REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse(data: bytes | str) -> int:
    """The integer a sysfs counter file holds; Rejected if it holds none."""
    text = data.strip()
    if not text:
        raise Rejected("empty", "empty read")
    try:
        value = int(text)
    except ValueError:
        shown = text[:24].decode("ascii", "replace") if isinstance(text, bytes) else text[:24]
        raise Rejected("not_a_number", f"not a number: {shown!r}") from None
    return value


@dataclass(slots=True)
class EnergyCounter:
    """The validation state of one accumulating counter (see the module docstring)."""

    source: str  # what is read: a file path, "GPU 0 (GPU-...)": for messages
    max_watts: float  # the physical ceiling of what it measures
    joules_per_unit: float  # 1e-6 for uJ counters, 1e-3 for mJ
    max_range: int | None = None  # the counter wraps to 0 after this value; None: never
    baseline: int | None = None  # the last good reading
    baseline_at: float = 0.0  # when it was read (the receiver's monotonic clock)
    missed: bool = False  # a read failed or was rejected since the baseline
    #: the readings rejected since the baseline (value, when), oldest first: any may be
    #: the first at a restarted counter's new level
    candidates: list[tuple[int, float]] = field(default_factory=list)
    restarts: int = 0  # times it was found restarted at a new level (and primed again)
    logged: set[str] = field(default_factory=set)  # reasons already logged for this counter

    def limit(self, elapsed: float) -> float:
        """The most units the counter can plausibly advance in ``elapsed`` seconds."""
        return self.max_watts * (max(elapsed, 0.0) * MARGIN + SLACK_S) / self.joules_per_unit

    def update(self, value: int, now: float) -> float | None:
        """Joules since the last good reading, None while priming; Rejected if impossible."""
        if value < 0:
            self.missed = True
            raise Rejected("negative", f"{self.source} reads a negative value, {value}")
        if self.max_range is not None and value > self.max_range:
            self.missed = True
            raise Rejected(
                "over_range",
                f"{self.source} reads {value}, above its maximum {self.max_range}",
            )
        baseline = self.baseline
        if baseline is None:
            self._prime(value, now)
            return None
        elapsed = now - self.baseline_at
        if self.missed and self._may_have_wrapped(elapsed):
            self._prime(value, now)  # out long enough to have wrapped unseen
            return None
        try:
            delta = self._delta(baseline, value, elapsed)
        except Rejected:
            if self._restarted(value, now):
                self.restarts += 1
                self._prime(value, now)
                return None
            self.candidates.append((value, now))
            del self.candidates[:-CANDIDATES]
            self.missed = True
            raise
        self.baseline, self.baseline_at = value, now
        self.missed = False
        self.candidates.clear()
        return delta * self.joules_per_unit

    def fail(self) -> None:
        """A read that returned nothing usable: the next good one covers the gap."""
        self.missed = True

    def first(self, reason: str) -> bool:
        """True the first time ``reason`` happens to this counter (to log it once)."""
        if reason in self.logged:
            return False
        self.logged.add(reason)
        return True

    def _prime(self, value: int, now: float) -> None:
        self.baseline, self.baseline_at = value, now
        self.missed = False
        self.candidates.clear()

    def _may_have_wrapped(self, elapsed: float) -> bool:
        return self.max_range is not None and self.limit(elapsed) >= self.max_range

    def _delta(self, previous: int, value: int, elapsed: float) -> int:
        """The plausible advance from ``previous`` to ``value``; Rejected if there is none."""
        limit = self.limit(elapsed)
        if value >= previous:
            delta = value - previous
            if delta > limit:
                raise Rejected("implausible_jump", self._jump(delta, elapsed))
            return delta
        if self.max_range is not None and previous <= self.max_range:
            wrapped = (self.max_range - previous) + value
            if wrapped <= limit:
                return wrapped
        raise Rejected(
            "backwards",
            f"{self.source} went backwards from {previous} to {value} (a reset?)",
        )

    def _restarted(self, value: int, now: float) -> bool:
        """Whether ``value`` is a plausible step from a reading rejected since the baseline."""
        for previous, at in reversed(self.candidates):
            try:
                self._delta(previous, value, now - at)
            except Rejected:
                continue
            return True
        return False

    def _jump(self, delta: int, elapsed: float) -> str:
        joules = delta * self.joules_per_unit
        watts = f"{joules / elapsed:.0f} W" if elapsed > 0 else "infinite power"
        return (
            f"{self.source} rose by {delta} ({joules:.6g} J) in {elapsed:.3f}s "
            f"({watts} > max_watts {self.max_watts:g})"
        )

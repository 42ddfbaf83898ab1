"""Online calibration of the estimator against a platform meter of the same pipeline.

Where a node has a platform meter (IPMI, Redfish, ACPI power meter, an hwmon power
sensor) but no per-tick CPU meter, the estimator's line
``watts = idle + dynamic x usage`` can be fitted to the meter instead of taken from
a table. The meter is slow and smoothed: a BMC averages over its statistics period
and answers with a delay, an ACPI meter averages over ``power1_average_interval``.
So the fit tries each lag of 0 to ``max_lag`` ticks and each moving average of 1 to
``max_smooth`` ticks of usage, and keeps the pair whose least-squares line leaves
the smallest error over the same ticks. The estimate then applies the fitted line to *this* tick's
usage: the calibrated estimate follows load without the meter's delay.

How the estimator sees the meter: receivers are collected independently, so the
estimator cannot read another receiver's result. Its reading is a
:class:`ModelReading` that carries the estimator's :class:`Calibrator`; the
attribution processor, which sees the whole tick's batch, hands the calibrator
the batch's readings (:meth:`Calibrator.observe`). The fitted line is used from
the next collect on. Observing twice in one tick (two pipelines) counts once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from otel_kepler.data import EnergyReading

from .fit import Line, SlidingFit

#: once calibrated, the line is refitted every this many meter readings: a fit tries
#: (max_lag + 1) x max_smooth candidates over the whole window
REFIT_EVERY = 4


@dataclass(frozen=True, slots=True)
class Calibration:
    """The line in force and how it was found."""

    line: Line
    lag: int  # ticks the meter lags the usage
    smooth: int  # ticks the meter's average covers
    slope_fitted: bool  # False: usage varied too little, the model's slope was kept


class Calibrator:
    """Pairs each tick's usage (from the estimator) with the meter's watts (from the batch)."""

    def __init__(
        self,
        meter: str,
        prior: Line,
        window: int = 120,
        min_ticks: int = 20,
        max_lag: int = 3,
        max_smooth: int = 4,
        min_spread: float = 0.1,
    ) -> None:
        self.meter = meter
        self.prior = prior
        self.window = window
        self.min_ticks = min_ticks
        self.max_lag = max_lag
        self.max_smooth = max_smooth
        self.min_spread = min_spread
        depth = window + max_lag + max_smooth
        self._usage: deque[float] = deque(maxlen=depth)
        self._meter: deque[float | None] = deque(maxlen=depth)
        self._last_ns: int | None = None
        self.calibration: Calibration | None = None
        self.observed = 0  # ticks with a meter reading

    def record(self, usage: float) -> None:
        """The estimator's usage of this tick (before the batch reaches the processors)."""
        self._usage.append(usage)
        self._meter.append(None)

    def observe(self, readings: Iterable[EnergyReading], interval_s: float, tick_ns: int) -> None:
        """The meter's energy of this tick, from the batch; refits the line."""
        if tick_ns == self._last_ns or not self._meter or interval_s <= 0:
            return
        self._last_ns = tick_ns
        joules = meter_joules(readings, self.meter)
        if joules is None:
            return
        self._meter[-1] = joules / interval_s
        self.observed += 1
        due = self.calibration is None or self.observed % REFIT_EVERY == 0
        if self.observed >= self.min_ticks and due:
            self.calibration = self._fit()

    def _fit(self) -> Calibration | None:
        """The candidate (lag, window) with the smallest error, all judged on the same ticks.

        Every candidate is fitted over the meter readings from ``max_lag + max_smooth - 1``
        ticks into the history on, so that none is judged on fewer or easier ticks than
        another; until ``min_ticks`` such readings exist there is no calibration.
        """
        first = self.max_lag + self.max_smooth - 1
        usage, meter = list(self._usage), list(self._meter)
        ticks = [t for t in range(first, len(meter)) if meter[t] is not None]
        if len(ticks) < self.min_ticks:
            return self.calibration
        best: Calibration | None = None
        for lag in range(self.max_lag + 1):
            for smooth in range(1, self.max_smooth + 1):
                candidate = self._fit_one(usage, meter, ticks, lag, smooth)
                if best is None or candidate.line.rms_error < best.line.rms_error - 1e-9:
                    best = candidate
        return best

    def _fit_one(
        self, usage: list[float], meter: list[float | None], ticks: list[int], lag: int, smooth: int
    ) -> Calibration:
        fit = SlidingFit(self.window)
        for t in ticks:
            watts = meter[t]
            assert watts is not None
            fit.add(sum(usage[t - lag - smooth + 1 : t - lag + 1]) / smooth, watts)
        line = fit.line()
        if line is not None and line.spread >= self.min_spread:
            return Calibration(line, lag, smooth, True)
        return self._offset_only(fit, lag, smooth)

    def _offset_only(self, fit: SlidingFit, lag: int, smooth: int) -> Calibration:
        """Too little variation in usage to know the slope: keep the model's, fit idle."""
        points = fit.points()
        slope = self.prior.dynamic
        idle = sum(w - slope * u for u, w in points) / len(points)
        sq = sum((w - idle - slope * u) ** 2 for u, w in points) / len(points)
        line = Line(idle, slope, len(points), sq**0.5, fit.spread())
        return Calibration(line, lag, smooth, False)


def meter_joules(readings: Iterable[EnergyReading], source: str) -> float | None:
    """The meter's platform energy this tick: zone ``platform``, else its platform zones."""
    total: float | None = None
    others: float | None = None
    for r in readings:
        if r.source != source or r.component != "platform":
            continue
        if r.zone == "platform":
            total = (total or 0.0) + r.joules
        elif r.zone != "other":
            others = (others or 0.0) + r.joules
    return total if total is not None else others


@dataclass(slots=True)
class ModelReading(EnergyReading):
    """An estimator reading: its model's idle watts and, when calibrating, its calibrator.

    Attribution holds the zone's idle at ``idle_watts`` (the model knows it exactly)
    and feeds ``calibrator`` the tick's batch.
    """

    idle_watts: float | None = None
    calibrator: Calibrator | None = None

"""Least squares of power on CPU usage over a sliding window of ticks.

Both the learned idle power of :mod:`.idle` (the line's intercept) and the
calibrated estimator of :mod:`.calibration` (intercept and slope) fit
``watts = idle + dynamic * usage`` over the most recent ticks. The sums are
recomputed from the window when asked (a window is a few hundred points), so
there is no drift from adding and removing floats over a long run.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Line:
    """``watts = idle + dynamic * usage``, fitted over ``points`` ticks."""

    idle: float
    dynamic: float
    points: int
    rms_error: float  # root mean square of the residuals, in watts
    spread: float  # max - min usage in the window: how well the slope is known

    def watts(self, usage: float) -> float:
        return self.idle + self.dynamic * usage


class SlidingFit:
    """The last ``window`` (usage, watts) points, weighted by the seconds each covers."""

    def __init__(self, window: int) -> None:
        if window < 2:
            raise ValueError(f"window must be 2 ticks or more, got {window}")
        self._points: deque[tuple[float, float, float]] = deque(maxlen=window)

    def __len__(self) -> int:
        return len(self._points)

    def add(self, usage: float, watts: float, seconds: float = 1.0) -> None:
        if seconds <= 0 or not (math.isfinite(usage) and math.isfinite(watts)):
            return
        self._points.append((usage, watts, seconds))

    def clear(self) -> None:
        self._points.clear()

    def spread(self) -> float:
        if not self._points:
            return 0.0
        usages = [u for u, _, _ in self._points]
        return max(usages) - min(usages)

    def points(self) -> list[tuple[float, float]]:
        """The (usage, watts) points in the window, oldest first."""
        return [(u, w) for u, w, _ in self._points]

    def low_watts(self, below: float, quantile: float = 0.1) -> float | None:
        """A low quantile of the watts seen at usage below ``below``; None if none."""
        watts = sorted(w for u, w, _ in self._points if u < below)
        if not watts:
            return None
        return watts[min(len(watts) - 1, int(quantile * len(watts)))]

    def line(self) -> Line | None:
        """The weighted least-squares line, or None with fewer than 2 distinct usages."""
        points = self._points
        if len(points) < 2:
            return None
        sw = sum(s for _, _, s in points)
        mu = sum(u * s for u, _, s in points) / sw
        mw = sum(w * s for _, w, s in points) / sw
        suu = sum(s * (u - mu) ** 2 for u, _, s in points)
        suw = sum(s * (u - mu) * (w - mw) for u, w, s in points)
        if suu <= 1e-12 * sw:
            return None
        slope = suw / suu
        idle = mw - slope * mu
        sse = sum(s * (w - idle - slope * u) ** 2 for u, w, s in points)
        return Line(idle, slope, len(points), math.sqrt(sse / sw), self.spread())

"""The ``file`` provider: a time series of intensities (a forecast export, a sidecar's file).

**CSV**: a header naming a time column (``timestamp``, ``datetime`` or ``time``) and an
intensity column (``intensity``, ``carbon_intensity``, ``carbonIntensity`` or
``gco2e_per_kwh``; any case); other columns are ignored. **JSON**: a list of objects
with those keys, or an object holding that list under ``data``, ``forecast`` or
``history`` (the shape of Electricity Maps' forecast and history answers).

Times are ISO 8601 with a UTC offset (``2024-05-21T14:00:00Z``) or Unix seconds;
intensities are gCO2e/kWh. Rows must be in time order with no gap over ``max_gap``.

Between points the value is a **step** (a point holds until the next; the last one for
``max_gap``) or **linear** (a straight line; nothing after the last point). Outside the
covered time there is no value and the chain falls through.

A bad file (negative or non-numeric intensity, a gap, rows out of order) is rejected with
a message naming the file and the data row (1 = the first row after the header, or the
first object); the previously loaded series, if any, stays in use. The file is checked
for changes every ``check_every`` in a background thread and reloaded when it changed.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from ..config import FileConfig
from .base import DataError, Intensity, Provider, check_intensity

log = logging.getLogger(__name__)

TIME_KEYS = ("timestamp", "datetime", "time")
VALUE_KEYS = ("intensity", "carbon_intensity", "carbonintensity", "gco2e_per_kwh")
LIST_KEYS = ("data", "forecast", "history")

Interpolation = Literal["step", "linear"]
_MISSING = (-1, -1, -1)  # the version of a file that does not exist


@dataclass(frozen=True, slots=True)
class Series:
    """Points in strictly increasing time order (Unix seconds, gCO2e/kWh)."""

    times: list[float]
    values: list[float]

    def at(self, t: float, interpolation: Interpolation, hold: float) -> float | None:
        """The value at ``t``, or None outside the covered time."""
        times = self.times
        i = bisect.bisect_right(times, t) - 1
        if i < 0:
            return None
        if i == len(times) - 1:
            if interpolation == "step" and t - times[i] <= hold:
                return self.values[i]
            return self.values[i] if t == times[i] else None
        if interpolation == "step":
            return self.values[i]
        t0, t1 = times[i], times[i + 1]
        v0, v1 = self.values[i], self.values[i + 1]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def parse_series(text: str, source: str, fmt: Literal["csv", "json"], max_gap: float) -> Series:
    """Parse and check a series; DataError names ``source`` and the row."""
    rows = _json_rows(text, source) if fmt == "json" else _csv_rows(text, source)
    times: list[float] = []
    values: list[float] = []
    for number, (stamp, value) in enumerate(rows, start=1):
        where = f"{source} row {number}"
        t = parse_time(stamp, where)
        v = check_intensity(value, where)
        if times:
            if t <= times[-1]:
                raise DataError(f"{where}: time {stamp} is not after the previous row's")
            if t - times[-1] > max_gap:
                raise DataError(
                    f"{where}: gap of {_span(t - times[-1])} since the previous row "
                    f"(max_gap is {_span(max_gap)})"
                )
        times.append(t)
        values.append(v)
    if not times:
        raise DataError(f"{source}: no data rows")
    return Series(times, values)


def _csv_rows(text: str, source: str) -> Iterator[tuple[object, object]]:
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    time_col = _column(header, TIME_KEYS, source, "time")
    value_col = _column(header, VALUE_KEYS, source, "intensity")
    for number, cells in enumerate(reader, start=1):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) <= max(time_col, value_col):
            raise DataError(f"{source} row {number}: {len(cells)} columns, expected {len(header)}")
        yield cells[time_col].strip(), cells[value_col].strip()


def _column(header: list[str], names: tuple[str, ...], source: str, what: str) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    raise DataError(f"{source}: no {what} column in the header (one of {', '.join(names)})")


def _json_rows(text: str, source: str) -> Iterator[tuple[object, object]]:
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise DataError(f"{source}: malformed JSON: {err}") from None
    if isinstance(doc, dict):
        doc = next((doc[k] for k in LIST_KEYS if isinstance(doc.get(k), list)), doc)
    if not isinstance(doc, list):
        raise DataError(f"{source}: expected a list of points, or one under {'/'.join(LIST_KEYS)}")
    for number, item in enumerate(doc, start=1):
        if not isinstance(item, dict):
            raise DataError(f"{source} row {number}: not an object")
        lowered = {str(k).lower(): v for k, v in item.items()}
        stamp = next((lowered[k] for k in TIME_KEYS if k in lowered), None)
        value = next((lowered[k] for k in VALUE_KEYS if k in lowered), None)
        if stamp is None or value is None:
            raise DataError(f"{source} row {number}: needs a time and an intensity")
        yield stamp, value


def parse_time(stamp: object, where: str) -> float:
    """Unix seconds from Unix seconds or ISO 8601 with an offset."""
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        return float(stamp)
    text = str(stamp).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(f"{where}: time {text!r} is not ISO 8601 or Unix seconds") from None
    if when.tzinfo is None:
        raise DataError(f"{where}: time {text!r} has no UTC offset (add Z or +00:00)")
    return when.timestamp()


def _span(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


class FileProvider(Provider):
    name = "file"

    def __init__(self, config: FileConfig) -> None:
        self.path = config.path
        self.format: Literal["csv", "json"] = (
            config.format
            if config.format != "auto"
            else ("json" if config.path.lower().endswith(".json") else "csv")
        )
        self.interpolation: Interpolation = config.interpolation
        self.max_gap = float(config.max_gap)
        self.check_every = float(config.check_every)
        self.region = config.region
        self.series: Series | None = None
        self.error = ""  # why the current file version was rejected or unreadable
        self._version: tuple[int, int, int] | None = None
        self._last_at = 0.0  # the last time asked for, for status()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.check()
        self._thread = threading.Thread(target=self._run, name="carbon-file", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.check_every):
            self.check()

    def check(self) -> None:
        """Reload the file if it changed since the last check (by mtime, size and inode)."""
        try:
            st = os.stat(self.path)
        except OSError as err:
            self._reject(_MISSING, f"{self.path}: {err.strerror}")
            return
        version = (st.st_mtime_ns, st.st_size, st.st_ino)
        if version == self._version:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
            series = parse_series(text, self.path, self.format, self.max_gap)
        except OSError as err:
            self._reject(version, f"{self.path}: {err.strerror}")
            return
        except (DataError, UnicodeDecodeError) as err:
            self._reject(version, str(err))
            return
        self._version, self.series, self.error = version, series, ""
        log.info(
            "file %s: %d points from %s to %s",
            self.path,
            len(series.times),
            _iso(series.times[0]),
            _iso(series.times[-1]),
        )

    def _reject(self, version: tuple[int, int, int], message: str) -> None:
        if version == self._version:
            return
        self._version = version
        self.error = message
        kept = "; keeping the previous version" if self.series is not None else ""
        log.error("file rejected: %s%s", message, kept)

    def intensity(self, at: float) -> Intensity | None:
        self._last_at = at
        series = self.series
        if series is None:
            return None
        value = series.at(at, self.interpolation, self.max_gap)
        return Intensity(value, self.region) if value is not None else None

    def status(self) -> str:
        if self.series is None:
            return self.error or "not loaded"
        return f"no point for {_iso(self._last_at)}"

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="seconds")

"""The ``curve`` model: power at the 11 load levels SPECpower_ssj2008 publishes.

A SPECpower_ssj2008 result gives a server's average power at active idle and at
10%, 20% ... 100% of its target load. The model interpolates linearly between
those points at the node's CPU usage ratio, so it is exact at the published points,
linear between them and monotonic where the published curve is.

The package ships a table of published results (``specpower.csv``, every row with
the result it comes from); a host is matched by the CPU model name and the socket
count in /proc/cpuinfo. An unmatched host gets the median shape of the table scaled
to the CPU's TDP and this host's core count.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

#: load levels of the 11 points: active idle, 10% ... 100%
LOAD_LEVELS: tuple[float, ...] = tuple(i / 10 for i in range(11))
TABLE = "specpower.csv"


class CurveError(ValueError):
    """A curve or a table row that is not a usable power curve."""


def check_points(points: Sequence[float]) -> tuple[float, ...]:
    """The 11 watts values if they make a power curve (finite, >= 0, non-decreasing)."""
    if len(points) != len(LOAD_LEVELS):
        raise CurveError(f"needs 11 values (active idle, 10% ... 100%), got {len(points)}")
    for index, value in enumerate(points):
        if not value >= 0 or value == float("inf"):
            raise CurveError(f"value {index} ({value:g}) is not a power of 0 W or more")
    for index in range(1, len(points)):
        if points[index] < points[index - 1]:
            raise CurveError(
                f"must not decrease: {points[index]:g} W at {index * 10}% is below "
                f"{points[index - 1]:g} W at {(index - 1) * 10}%"
            )
    if points[-1] <= points[0]:
        raise CurveError(f"full load ({points[-1]:g} W) must exceed idle ({points[0]:g} W)")
    return tuple(float(p) for p in points)


def interpolate(points: Sequence[float], ratio: float) -> float:
    """Watts at ``ratio`` (0 to 1, clamped) on the curve through the 11 points."""
    ratio = min(max(ratio, 0.0), 1.0)
    position = ratio * 10
    index = min(int(position), 9)
    fraction = position - index
    return points[index] + (points[index + 1] - points[index]) * fraction


@dataclass(frozen=True, slots=True)
class SpecResult:
    """One published SPECpower_ssj2008 result: a server and its 11 points."""

    id: str  # power_ssj2008-YYYYMMDD-NNNNN
    source: str  # the result page
    system: str
    cpu: str  # as matched against /proc/cpuinfo: "Xeon Platinum 8280", "EPYC 7742"
    sockets: int
    cores: int  # per socket
    watts: tuple[float, ...]
    transcribed_from: str

    def matches(self, model_name: str) -> bool:
        return cpu_matches(self.cpu, model_name)


def cpu_matches(cpu: str, model_name: str) -> bool:
    """Whether /proc/cpuinfo's ``model_name`` is the CPU ``cpu`` names.

    Trademarks, "CPU", "Processor" and the frequency are ignored; ``cpu`` must appear
    as whole words, not followed by a version ("E5-2670" is not "E5-2670 v2") or
    a suffix ("EPYC 7702" is not "EPYC 7702P").
    """
    text = normalise_model_name(model_name)
    pattern = r"(?<![\w-])" + re.escape(cpu.lower()) + r"(?![\w-])(?!\s+v\d)"
    return re.search(pattern, text) is not None


def normalise_model_name(model_name: str) -> str:
    text = re.sub(r"\((r|tm)\)", " ", model_name.lower())
    text = re.sub(r"@.*$", " ", text)
    text = re.sub(r"\b(cpu|processor|\d+-core)\b", " ", text)
    return " ".join(text.split())


def load_table(text: str | None = None) -> list[SpecResult]:
    """The shipped table (or ``text`` in its format); raises CurveError on a bad row."""
    if text is None:
        text = resources.files(__package__).joinpath(TABLE).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    rows: list[SpecResult] = []
    for number, row in enumerate(csv.DictReader(io.StringIO("\n".join(lines))), start=1):
        rows.append(_parse_row(number, row))
    return rows


def _parse_row(number: int, row: dict[str, str]) -> SpecResult:
    try:
        watts = [float(row[f"w{level}"]) for level in range(10, 101, 10)]
        result = SpecResult(
            id=row["id"],
            source=row["source"],
            system=row["system"],
            cpu=row["cpu"],
            sockets=int(row["sockets"]),
            cores=int(row["cores"]),
            watts=check_points([float(row["idle"]), *watts]),
            transcribed_from=row["transcribed_from"],
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CurveError(f"{TABLE} row {number}: {err}") from None
    if not result.source.startswith(("http://", "https://")):
        raise CurveError(f"{TABLE} row {number}: source is not a result URL")
    return result


def find(table: Sequence[SpecResult], model_name: str, sockets: int) -> SpecResult | None:
    """The first row for this CPU model and socket count, if any."""
    for row in table:
        if row.sockets == sockets and row.matches(model_name):
            return row
    return None


def median_shape(table: Sequence[SpecResult]) -> tuple[float, ...]:
    """The median of the rows' curves, each divided by its full-load power."""
    return tuple(
        statistics.median(row.watts[i] / row.watts[-1] for row in table)
        for i in range(len(LOAD_LEVELS))
    )


def scaled_curve(shape: Sequence[float], peak_watts: float) -> tuple[float, ...]:
    return tuple(value * peak_watts for value in shape)


@dataclass(frozen=True, slots=True)
class CpuInfo:
    """What /proc/cpuinfo says about the CPUs."""

    model_name: str
    sockets: int
    cores_per_socket: int  # "cpu cores" (0 where not given)
    logical_cpus: int
    siblings: int = 0  # logical CPUs per socket (0 where not given)


def read_cpuinfo(path: str) -> CpuInfo:
    """Model name, socket count (distinct physical ids), cores per socket, logical CPUs."""
    with open(path, encoding="utf-8", errors="replace") as file:
        text = file.read()
    return parse_cpuinfo(text)


def parse_cpuinfo(text: str) -> CpuInfo:
    model = ""
    physical: set[str] = set()
    cores = 0
    siblings = 0
    logical = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            logical += 1
        elif key == "model name" and not model:
            model = value
        elif key == "physical id":
            physical.add(value)
        elif key == "cpu cores" and value.isdigit():
            cores = int(value)
        elif key == "siblings" and value.isdigit():
            siblings = int(value)
    return CpuInfo(model, max(1, len(physical)), cores, logical, siblings)

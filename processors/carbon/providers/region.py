"""The ``region`` provider: annual average grid intensity from the table in the package.

``regions.csv`` has one row per country (ISO 3166-1 alpha-2 code) or cloud region
(AWS, GCP and Azure region codes as their APIs and the node label
``topology.kubernetes.io/region`` spell them): ``kind,code,name,intensity,source,year``,
intensity in gCO2e/kWh, each row with its published source and data year.

A region is named in config (``DE``, ``eu-west-1``, or ``aws:eu-west-1``; any case) or,
with none set, detected from the node's region label through the Kubernetes API in a
background thread.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import io
from collections.abc import Callable
from dataclasses import dataclass

from .base import DataError, Intensity, Provider, check_intensity
from .http import Poller
from .kubernetes import REGION_LABELS

KINDS = ("country", "aws", "gcp", "azure")
COLUMNS = ["kind", "code", "name", "intensity", "source", "year"]
TABLE_FILE = "regions.csv"


@dataclass(frozen=True, slots=True)
class RegionRow:
    kind: str  # country, aws, gcp, azure
    code: str
    name: str
    intensity: float  # gCO2e/kWh, annual average
    source: str
    year: int

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.code}"


class RegionTable:
    """The rows, found by ``code`` (where no other kind has it) or ``kind:code``, any case."""

    def __init__(self, rows: list[RegionRow]) -> None:
        self.rows = rows
        self._index: dict[str, RegionRow] = {}
        by_code: dict[str, list[RegionRow]] = {}
        for row in rows:
            self._index[row.key.lower()] = row
            by_code.setdefault(row.code.lower(), []).append(row)
        for code, found in by_code.items():
            if len(found) == 1:
                self._index.setdefault(code, found[0])

    def find(self, name: str) -> RegionRow | None:
        return self._index.get(name.strip().lower())


def load_table(text: str, source: str) -> RegionTable:
    """Parse and check a region table; DataError names ``source`` and the row."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header != COLUMNS:
        raise DataError(f"{source}: the header must be {','.join(COLUMNS)}")
    rows: list[RegionRow] = []
    seen: set[str] = set()
    for number, cells in enumerate(reader, start=1):
        if not cells or cells[0].startswith("#"):
            continue
        row = _row(cells, f"{source} row {number}")
        if row.key in seen:
            raise DataError(f"{source} row {number}: {row.key} is listed twice")
        seen.add(row.key)
        rows.append(row)
    if not rows:
        raise DataError(f"{source}: no rows")
    return RegionTable(rows)


def _row(cells: list[str], where: str) -> RegionRow:
    if len(cells) != len(COLUMNS):
        raise DataError(f"{where}: {len(cells)} columns, expected {len(COLUMNS)}")
    kind, code, name, intensity, source, year = (c.strip() for c in cells)
    if kind not in KINDS:
        raise DataError(f"{where}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
    if not code:
        raise DataError(f"{where}: no code")
    if not source:
        raise DataError(f"{where}: no source")
    if not year.isdigit() or not 1990 <= int(year) <= 2100:
        raise DataError(f"{where}: year {year!r} is not a year")
    return RegionRow(kind, code, name, check_intensity(intensity, where), source, int(year))


@functools.cache
def shipped_table() -> RegionTable:
    """The table shipped in the package (read once)."""
    package = __name__.rsplit(".", 2)[0]  # otel_kepler.processors.carbon
    text = importlib.resources.files(package).joinpath(TABLE_FILE).read_text(encoding="utf-8")
    return load_table(text, TABLE_FILE)


class RegionProvider(Provider):
    """The configured region's row; or the detected one, once the detector answered."""

    name = "region"

    def __init__(
        self,
        table: RegionTable,
        region: str = "",
        detect: Callable[[], str] | None = None,
        why_not: str = "",
    ) -> None:
        """``detect`` returns the node's region label (FetchError/DataError when it cannot);
        ``why_not`` says why there is neither a region nor a detector."""
        self.table = table
        self._row = table.find(region) if region else None
        if region and self._row is None:
            raise DataError(f'unknown region "{region}"')
        self._why_not = why_not or "no region configured"
        self._detector: Poller[str] | None = None
        if self._row is None and detect is not None:
            self._detector = Poller("region detection", detect, 86400.0, 5.0, 300.0)
        self._detected: tuple[str, RegionRow | None] | None = None

    def start(self) -> None:
        if self._detector is not None:
            self._detector.start()

    def row(self) -> RegionRow | None:
        if self._row is not None:
            return self._row
        answer = self._detector.answer if self._detector is not None else None
        if answer is None:
            return None
        if self._detected is None or self._detected[0] != answer.value:
            self._detected = (answer.value, self.table.find(answer.value))
        return self._detected[1]

    def intensity(self, at: float) -> Intensity | None:
        row = self.row()
        return Intensity(row.intensity, row.code) if row is not None else None

    def status(self) -> str:
        if self.row() is not None:
            return ""
        if self._detector is None:
            return self._why_not
        if self._detected is not None:
            return f'node label {REGION_LABELS[0]}="{self._detected[0]}" is not in the table'
        return self._detector.error or "detecting the node's region"

    def shutdown(self) -> None:
        if self._detector is not None:
            self._detector.stop()

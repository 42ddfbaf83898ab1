"""The region table shipped in the package: annual average grid intensity per region.

``regions.csv`` has one row per country (ISO 3166-1 alpha-2 code) or cloud region
(AWS, GCP and Azure region codes as their APIs and the node label
``topology.kubernetes.io/region`` spell them): ``kind,code,name,intensity,source,year``,
intensity in gCO2e/kWh, each row with its published source and data year.

The config checks a configured region against it and the ``region`` provider answers from
it; it depends on neither.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import io
from dataclasses import dataclass

from .intensity import DataError, check_intensity

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
    assert __package__  # otel_kepler.processors.carbon
    text = importlib.resources.files(__package__).joinpath(TABLE_FILE).read_text(encoding="utf-8")
    return load_table(text, TABLE_FILE)

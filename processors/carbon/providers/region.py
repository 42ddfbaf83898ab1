"""The ``region`` provider: annual average grid intensity from the table in the package.

The table (:mod:`..regions`) names countries and cloud regions. A region is named in config
(``DE``, ``eu-west-1``, or ``aws:eu-west-1``; any case) or, with none set, detected from the
node's region label through the Kubernetes API in a background thread.
"""

from __future__ import annotations

from collections.abc import Callable

from ..regions import RegionRow, RegionTable, load_table, shipped_table
from .base import DataError, Intensity, Provider
from .http import Poller
from .kubernetes import REGION_LABELS

__all__ = ["RegionProvider", "RegionRow", "RegionTable", "load_table", "shipped_table"]


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

"""The ``static`` provider: one configured number, always available."""

from __future__ import annotations

from .base import Intensity, Provider


class StaticProvider(Provider):
    name = "static"

    def __init__(self, value: float, region: str = "") -> None:
        self._intensity = Intensity(value, region)

    def intensity(self, at: float) -> Intensity | None:
        return self._intensity

"""What every intensity provider is, the chain that tries them in order, and data checks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from ..intensity import DataError, check_intensity

__all__ = [
    "DataError",
    "Intensity",
    "Provider",
    "ProviderChain",
    "check_intensity",
]


@dataclass(frozen=True, slots=True)
class Intensity:
    """A grid carbon intensity and the grid zone or region it applies to."""

    value: float  # gCO2e/kWh
    region: str


class Provider(ABC):
    """Gives the grid intensity for a moment, without blocking: no I/O in intensity()."""

    name: str

    def start(self) -> None:  # noqa: B027 - optional hook
        """Load files, start background threads. Raise ComponentError on a missing secret."""

    @abstractmethod
    def intensity(self, at: float) -> Intensity | None:
        """The intensity in force at ``at`` (Unix seconds), or None: the chain falls through."""

    def status(self) -> str:
        """Why there is no value (for the log); "" when there is one."""
        return ""

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Stop background threads."""


class ProviderChain:
    """Providers in order of preference: the first that has a value for now wins."""

    def __init__(self, providers: Sequence[Provider]) -> None:
        self.providers = list(providers)

    def start(self) -> None:
        started: list[Provider] = []
        try:
            for p in self.providers:
                p.start()
                started.append(p)
        except BaseException:
            for p in started:
                p.shutdown()
            raise

    def current(self, at: float) -> tuple[Provider, Intensity] | None:
        for p in self.providers:
            found = p.intensity(at)
            if found is not None:
                return p, found
        return None

    def statuses(self) -> str:
        """Why each provider has no value, for one log line."""
        return "; ".join(f"{p.name}: {p.status() or 'no value'}" for p in self.providers)

    def shutdown(self) -> None:
        for p in self.providers:
            p.shutdown()

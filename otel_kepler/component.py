"""Component kinds, their lifecycle and their factories.

Shaped like the OpenTelemetry Collector: every receiver, processor and exporter
has a *type* (``rapl``), a config dataclass with defaults, and a factory that
builds an instance from a validated config. An instance is started once,
used every tick, and shut down once.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from opentelemetry.sdk.metrics.export import MetricsData

from otel_kepler.data import Batch, Contribution


@dataclass(frozen=True, slots=True)
class HostSettings:
    """Where the agent reads the host: the ``host:`` section of the config."""

    procfs: str = "/proc"
    sysfs: str = "/sys"
    node_name: str = ""


@dataclass(frozen=True, slots=True)
class Availability:
    """What ``otel-kepler doctor`` prints for one component type on this host."""

    available: bool
    detail: str  # what works, or exactly what is missing (a file, a permission...)


class ComponentError(Exception):
    """A component could not start or collect; the message names what and where."""


class Receiver(ABC):
    """Reads one source once per tick."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Open files, devices or connections. Raise ComponentError with the fix."""

    @abstractmethod
    def collect(self) -> Contribution:
        """Return this tick's data. Raising costs this receiver's data, not the tick."""

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release what start() took."""


class Processor(ABC):
    """Transforms a pipeline's batch in place; may keep state between ticks."""

    def start(self) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    def process(self, batch: Batch) -> None: ...

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        pass


class Exporter(ABC):
    """Sends converted metrics somewhere. Called from its own worker thread."""

    #: Pull exporters (prometheus) only store the latest data: no queue needed.
    queued: bool = True

    def start(self) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    def export(self, data: MetricsData, pipeline: str) -> None:
        """Deliver one tick's metrics of one pipeline. May block; raise on failure."""

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        pass


C = TypeVar("C")
T = TypeVar("T")


@dataclass(frozen=True)
class Factory(Generic[C, T]):
    """Builds one component type.

    ``create(name, config, host)`` gets the component id (``otlphttp/backup``),
    its validated config and the host settings.
    """

    type: str
    description: str
    config_class: builtins.type[C]
    create: Callable[[str, C, HostSettings], T]
    doctor: Callable[[HostSettings], Availability] | None = None


ReceiverFactory = Factory[Any, Receiver]
ProcessorFactory = Factory[Any, Processor]
ExporterFactory = Factory[Any, Exporter]

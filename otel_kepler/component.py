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

from otel_kepler.data import Batch, Contribution
from otel_kepler.metadata import MetricSpec
from otel_kepler.snapshot import Snapshot


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


class ExportError(Exception):
    """An export that did not deliver, with what the backend said about trying again.

    ``retryable``: the same data may succeed later (network error, 429, 5xx,
    UNAVAILABLE...). ``retry_after``: seconds the backend asked to wait
    (Retry-After, gRPC RetryInfo). ``too_large``: the backend refused the size
    (HTTP 413, gRPC RESOURCE_EXHAUSTED without RetryInfo on a big request):
    the batch is split and sent in halves.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        too_large: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.too_large = too_large


class Receiver(ABC):
    """Reads one source once per tick."""

    def use_processes(self, needed: bool) -> None:  # noqa: B027 - optional hook
        """Told before start: whether a processor of this receiver's pipelines uses each
        process's sample (``Processor.uses_processes``), or only their sums by container.
        A usage receiver may then read less."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Open files, devices or connections. Raise ComponentError with the fix."""

    @abstractmethod
    def collect(self) -> Contribution:
        """Return this tick's data. Raising costs this receiver's data, not the tick."""

    def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release what start() took."""


def doctor_by_starting(receiver: Receiver, describe: Callable[[], str]) -> Availability:
    """A doctor that starts ``receiver`` with its defaults: available with ``describe()``
    (asked once the receiver is shut down again), or not, with the start's error."""
    try:
        receiver.start()
    except ComponentError as err:
        return Availability(False, str(err))
    finally:
        receiver.shutdown()
    return Availability(True, describe())


class Processor(ABC):
    """Transforms a pipeline's batch in place; may keep state between ticks."""

    #: whether it reads each process's own sample (pid, comm, its CPU time), not only
    #: what the samples add up to per container and pod; unknown processors do
    uses_processes: bool = True

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
    def export(self, data: Snapshot, pipeline: str, timeout: float | None = None) -> None:
        """Deliver one tick's metrics of one pipeline. May block, at most ``timeout`` s if given.

        Raise :class:`ExportError` to say whether trying again can help; any
        other exception counts as a permanent failure of that batch.
        """

    def split(self, data: Snapshot) -> list[Snapshot] | None:
        """The batch in two halves, for a backend that refused its size; None if it cannot."""
        blocks = data.blocks
        if len(blocks) < 2:
            return None
        half = len(blocks) // 2
        return [
            Snapshot(data.timestamp_ns, blocks[:half], data.has_energy),
            Snapshot(data.timestamp_ns, blocks[half:], data.has_energy),
        ]

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
    #: ``doctor --config``: try a configured instance for real (log in to a BMC, read once)
    probe: Callable[[C], Availability] | None = None
    #: the metrics the component adds and their labels (see otel_kepler.metadata)
    metrics: tuple[MetricSpec, ...] = ()
    #: labels an energy receiver adds to the node's energy series (rapl's ``path``)
    reading_labels: tuple[str, ...] = ()


ReceiverFactory = Factory[Any, Receiver]
ProcessorFactory = Factory[Any, Processor]
ExporterFactory = Factory[Any, Exporter]

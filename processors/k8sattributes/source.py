"""What the processor reads from a source: its pod index, and a refresh request.

A source keeps a :class:`~.index.PodStore` up to date; the tick only reads
:attr:`Source.index` (one attribute read: an immutable snapshot). The network sources
(:mod:`.network`) do it from their own thread; the downward API source once at start.
This module imports nothing of the kubernetes client, so sidecar mode never loads it.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

from .config import K8sAttributesConfig
from .index import PodIndex, PodStore
from .metadata import Extractor, PodMeta

log = logging.getLogger("otel_kepler.processors.k8sattributes")


@dataclass
class SourceStats:
    """Counters of one source, for tests, the benchmark and debugging."""

    requests: int = 0  # HTTP requests sent (lists, watches, polls)
    lists: int = 0
    watches: int = 0
    polls: int = 0
    unchanged_polls: int = 0  # kubelet answers equal to the previous one: not parsed
    miss_refreshes: int = 0  # kubelet polls brought forward by a cache miss
    events: int = 0  # watch events applied (bookmarks included)
    expired: int = 0  # 410 Gone answers
    failures: int = 0
    syncs: int = 0  # successful lists or changed polls


class Source(ABC):
    """Keeps the pods of one node in :attr:`store`."""

    kind = "source"

    def __init__(self, name: str, config: K8sAttributesConfig, extractor: Extractor) -> None:
        self.name = name
        self.config = config
        self.extractor = extractor
        self.store = PodStore(float(config.tombstone_ttl))
        self.stats = SourceStats()
        #: sidecar mode: every process belongs to this pod
        self.own_pod: PodMeta | None = None
        self._synced = threading.Event()

    @property
    def index(self) -> PodIndex:
        return self.store.index

    @abstractmethod
    def start(self) -> None:
        """Begin filling the store; never blocks on the network."""

    @abstractmethod
    def stop(self) -> None: ...

    def wait_synced(self, timeout: float) -> bool:
        """True once the first full pod list arrived (at most ``timeout`` seconds)."""
        return self._synced.wait(timeout)

    def request_refresh(self) -> None:  # noqa: B027 - optional hook
        """The tick met a container it cannot name. Must not block."""

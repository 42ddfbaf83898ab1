"""What the kubelet and API-server sources share: a thread, credentials, backoff, logging.

All network I/O happens in the source's daemon thread. A failure is logged once per
distinct message (repeats at debug level) and retried after a doubling wait (honouring
``Retry-After``); the recovery is logged once. Meanwhile the index keeps what it had, so
the pipeline goes on with the names it knows and container-level data for the rest.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from typing import TYPE_CHECKING

from .client import Backoff, api_configuration, describe, retry_after
from .config import K8sAttributesConfig
from .metadata import Extractor, PodMeta, PodObject
from .source import Source, log

if TYPE_CHECKING:
    from kubernetes import client


class NetworkSource(Source):
    """A source fed from the network by its own thread (``_run``)."""

    def __init__(self, name: str, config: K8sAttributesConfig, extractor: Extractor) -> None:
        super().__init__(name, config, extractor)
        self.backoff = Backoff(
            float(config.backoff.initial_interval), float(config.backoff.max_interval)
        )
        self.timeout = float(config.request_timeout)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error = ""
        self._conf: client.Configuration | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._main, name=f"{self.name}-{self.kind}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._interrupt()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 2.0)
            self._thread = None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- in the source's thread ---------------------------------------------------

    def _main(self) -> None:
        try:
            self._run()
        except Exception:  # a bug must not pass silently, nor take the agent down
            log.exception("%s: the %s source stopped on an unexpected error", self.name, self.kind)

    @abstractmethod
    def _run(self) -> None: ...

    def _interrupt(self) -> None:  # noqa: B027 - optional hook
        """Wake the thread from a wait or a long request (stop)."""

    def _configuration(self) -> client.Configuration:
        """The credentials, loaded once (retried by the caller while they are missing)."""
        if self._conf is None:
            self._conf = api_configuration(self.config)
        return self._conf

    def _succeeded(self) -> None:
        if self._last_error:
            log.info(
                "%s: %s reachable again after %d failed attempts",
                self.name,
                self.kind,
                self.backoff.failures,
            )
            self._last_error = ""
        self.backoff.reset()
        self._synced.set()

    def _failed(self, err: BaseException) -> float:
        """Count and log a failure; returns how long to wait before the next try."""
        if self.stopping:
            return 0.0  # the cut connection of our own stop(): no failure
        self.stats.failures += 1
        delay = max(self.backoff.next(), retry_after(err))
        message = describe(err)
        if message != self._last_error:
            log.warning(
                "%s: %s: %s; retrying in %.1fs (workloads keep the names known so far)",
                self.name,
                self.kind,
                message,
                delay,
            )
            self._last_error = message
        else:
            log.debug("%s: %s: %s; retrying in %.1fs", self.name, self.kind, message, delay)
        return delay

    def _sleep(self, seconds: float) -> bool:
        """Wait; False when stopping."""
        return not self._stopping.wait(seconds)

    def _metas(self, pods: list[PodObject]) -> list[PodMeta]:
        metas = (self.extractor.pod(p) for p in pods)
        return [m for m in metas if m is not None]

"""Runs each exporter off the tick's path, behind a bounded queue.

A slow or dead backend fills its own queue; when the queue is full the oldest
batch is dropped and counted. Sums are cumulative, so a dropped batch loses no
energy: the next one carries the totals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from opentelemetry.sdk.metrics.export import MetricsData

from otel_kepler.component import Exporter

log = logging.getLogger(__name__)


class ExporterWorker:
    """One exporter, its queue and its thread."""

    def __init__(self, exporter_id: str, exporter: Exporter, queue_size: int = 10) -> None:
        self.id = exporter_id
        self.exporter = exporter
        self.dropped = 0
        self.failed = 0
        self._queue: deque[tuple[MetricsData, str]] = deque()
        self._queue_size = max(1, queue_size)
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._errors_seen: set[str] = set()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.exporter.start()
        if self.exporter.queued:
            self._thread = threading.Thread(
                target=self._run, name=f"exporter {self.id}", daemon=True
            )
            self._thread.start()

    def submit(self, data: MetricsData, pipeline: str) -> None:
        """Hand over one tick's data; never blocks."""
        if not self.exporter.queued:
            self._export(data, pipeline)
            return
        with self._cond:
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    log.warning(
                        "exporter %s: queue full, dropped %d batches so far (backend slow or down)",
                        self.id,
                        self.dropped,
                    )
            self._queue.append((data, pipeline))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                data, pipeline = self._queue.popleft()
                self._busy = True
            try:
                self._export(data, pipeline)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _export(self, data: MetricsData, pipeline: str) -> None:
        try:
            self.exporter.export(data, pipeline)
        except Exception as err:
            self.failed += 1
            message = f"{type(err).__name__}: {err}"
            if message not in self._errors_seen:
                self._errors_seen.add(message)
                log.error("exporter %s: export failed: %s", self.id, message)

    def shutdown(self, deadline: float) -> None:
        """Send what is queued until ``deadline`` (time.monotonic), then stop the exporter."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, min(0.1, deadline - time.monotonic())))
            left = len(self._queue)
            self._queue.clear()
        if left:
            self.dropped += left
            log.warning("exporter %s: %d batches not sent at shutdown", self.id, left)
        try:
            self.exporter.shutdown()
        except Exception as err:
            log.warning("exporter %s: shutdown failed: %s", self.id, err)
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))

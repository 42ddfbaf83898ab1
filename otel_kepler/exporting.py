"""Runs each push exporter off the tick's path: a bounded queue, retries, honest logging.

Modelled on the OpenTelemetry Collector's exporterhelper:

* **sending_queue**: at most ``queue_size`` batches wait; when the queue is full the
  oldest is dropped (counted). Every sum is cumulative and ended workloads ride
  every batch for their retention, so the newest batch carries the latest totals:
  it is the one that survives a full queue and the first sent at shutdown.
* **retry_on_failure**: a retryable failure (network error, HTTP 408/429/5xx, gRPC
  UNAVAILABLE...) is retried with exponential backoff and jitter, from
  ``initial_interval`` up to ``max_interval``, for at most ``max_elapsed_time``;
  a Retry-After from the backend is honoured by every batch (a newer one waits
  it out too). A newer batch waiting in the queue supersedes one being retried
  (its totals are newer). A permanent failure (other
  4xx, gRPC INVALID_ARGUMENT...) drops the batch at once; HTTP 413 splits it.
* **Logging**: one line when an exporter starts failing (with the reason), one when
  it recovers (with how many batches failed in between); nothing per failure.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass

from otel_kepler.component import Exporter, ExportError
from otel_kepler.snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    enabled: bool = True
    initial_interval: float = 5.0
    max_interval: float = 30.0
    max_elapsed_time: float = 300.0  # 0: retry until superseded or shut down
    multiplier: float = 1.5
    jitter: float = 0.5  # randomization factor, as the Collector's backoff


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    enabled: bool = True
    queue_size: int = 10


@dataclass(frozen=True, slots=True)
class _Failed:
    """What a failed attempt said, without the exception (and the frames it holds)."""

    reason: str
    retryable: bool
    retry_after: float | None
    too_large: bool


class ExporterWorker:
    """One exporter, its queue and its thread."""

    def __init__(
        self,
        exporter_id: str,
        exporter: Exporter,
        queue: QueuePolicy | None = None,
        retry: RetryPolicy | None = None,
        every: float = 0.0,
    ) -> None:
        self.id = exporter_id
        self.exporter = exporter
        self.queue_policy = queue or QueuePolicy()
        self.retry = retry or RetryPolicy()
        self.every = every  # push at most once per this many seconds (0: every tick)
        self.dropped = 0
        self.failed = 0
        self.sent_points = 0
        self.cpu_seconds = 0.0
        self.last_duration = 0.0
        self._queue: deque[tuple[Snapshot, str]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._failing_since: float | None = None
        self._hold_until = 0.0  # monotonic time before which the backend asked not to be sent to
        self._failures_while_failing = 0
        self._last_submit: dict[str, int] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.exporter.start()
        if self.exporter.queued and self.queue_policy.enabled:
            self._thread = threading.Thread(
                target=self._run, name=f"exporter {self.id}", daemon=True
            )
            self._thread.start()

    # -- the tick's side: never blocks --------------------------------------------------

    def submit(self, data: Snapshot, pipeline: str) -> None:
        """Hand over one tick's data; never blocks when the exporter is queued."""
        if self.every > 0:
            last = self._last_submit.get(pipeline)
            if last is not None and data.timestamp_ns - last < self.every * 1e9 * 0.95:
                return
            self._last_submit[pipeline] = data.timestamp_ns
        if not self.exporter.queued or self._thread is None:
            self._deliver(data, pipeline, deadline=None)
            return
        with self._cond:
            if len(self._queue) >= self.queue_policy.queue_size:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    log.warning(
                        "exporter %s: queue full, dropped the oldest batch (%d so far); "
                        "the newest batches carry the latest totals",
                        self.id,
                        self.dropped,
                    )
            self._queue.append((data, pipeline))
            self._cond.notify_all()

    # -- the worker thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return  # shutdown() sends what is left, newest first
                data, pipeline = self._queue.popleft()
                self._busy = True
            try:
                self._deliver(data, pipeline, deadline=None)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, data: Snapshot, pipeline: str, deadline: float | None) -> bool:
        """Send one batch, retrying as the policy says; True when delivered."""
        started = time.monotonic()
        attempt = 0
        while True:
            hold = self._hold_until - time.monotonic()
            if hold > 0:  # the backend's Retry-After applies to every batch, not one
                if deadline is not None and time.monotonic() + hold > deadline:
                    return False
                if self._wait_or_superseded(hold, deadline):
                    self.failed += 1  # a newer batch waits out the rest
                    return False
            # The exception is not kept past its except clause: its traceback holds the
            # failed attempt's frames (the encoded request, megabytes at process level)
            # for as long as the backoff waits.
            try:
                left = None if deadline is None else max(0.05, deadline - time.monotonic())
                self._timed_export(data, pipeline, left)
                self._recovered()
                return True
            except ExportError as err:
                failed = _Failed(str(err), err.retryable, err.retry_after, err.too_large)
            except Exception as err:  # a bug or an unexpected library error
                self._failure(f"{type(err).__name__}: {err}", permanent=True)
                return False
            if failed.too_large:
                halves = self.exporter.split(data)
                if halves is not None:
                    ok = [self._deliver(half, pipeline, deadline) for half in halves]
                    return all(ok)
            if not failed.retryable or not self.retry.enabled:
                self._failure(failed.reason, permanent=True)
                return False
            self._failure(failed.reason, permanent=False)
            if failed.retry_after is not None:
                self._hold_until = time.monotonic() + failed.retry_after
            delay = self._backoff(attempt, failed.retry_after)
            attempt += 1
            limit = self.retry.max_elapsed_time
            now = time.monotonic()
            if limit and now + delay - started > limit:
                self.failed += 1
                return False
            if deadline is not None and now + delay > deadline:
                self.failed += 1
                return False
            if self._wait_or_superseded(delay, deadline):
                self.failed += 1  # a newer batch (newer totals) is waiting
                return False

    def _timed_export(self, data: Snapshot, pipeline: str, timeout: float | None) -> None:
        wall = time.monotonic()
        cpu = time.thread_time()
        try:
            self.exporter.export(data, pipeline, timeout)
            self.sent_points += data.point_count()
        finally:
            self.cpu_seconds += time.thread_time() - cpu
            self.last_duration = time.monotonic() - wall

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        policy = self.retry
        interval = min(policy.max_interval, policy.initial_interval * policy.multiplier**attempt)
        delta = policy.jitter * interval
        delay = random.uniform(interval - delta, interval + delta)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return max(0.0, delay)

    def _wait_or_superseded(self, delay: float, deadline: float | None) -> bool:
        """Sleep ``delay`` unless stopping or a newer batch arrives; True if superseded."""
        end = time.monotonic() + delay
        with self._cond:
            while True:
                if self._queue:
                    return True
                if self._stopping and deadline is None:
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=left)

    def _failure(self, reason: str, *, permanent: bool) -> None:
        if permanent:
            self.failed += 1
        self._failures_while_failing += 1
        first = self._failing_since is None
        if first:
            self._failing_since = time.monotonic()
        if first and not self._stopping:
            kind = "dropping the batch" if permanent else "retrying"
            log.error("exporter %s: export failing (%s): %s", self.id, kind, reason)
        else:  # again, or stopping (shutdown says in one line what was not sent)
            log.debug("exporter %s: export failed again: %s", self.id, reason)

    def _recovered(self) -> None:
        if self._failing_since is None:
            return
        seconds = time.monotonic() - self._failing_since
        log.warning(
            "exporter %s: export recovered after %.0f s (%d failed attempts)",
            self.id,
            seconds,
            self._failures_while_failing,
        )
        self._failing_since = None
        self._failures_while_failing = 0

    # -- shutdown -----------------------------------------------------------------------

    def shutdown(self, deadline: float) -> None:
        """Stop, then flush what waits until ``deadline``, the newest batch of each pipeline first.

        Older batches are sent (oldest first, keeping the backend's order) only while the
        backend answers and time is left; the newest one, with the latest totals, is
        always tried. Every batch not delivered, including a request still under way
        at the deadline, is counted once as dropped and said in one line.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            while self._busy and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, min(0.1, deadline - time.monotonic())))
            abandoned = self._busy  # a request still under way at the deadline is given up
            waiting = list(self._queue)
            self._queue.clear()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        by_pipeline: dict[str, list[Snapshot]] = {}
        for data, pipeline in waiting:
            by_pipeline.setdefault(pipeline, []).append(data)
        skipped = int(abandoned)
        failed = self.failed  # a batch not sent now is counted once: as dropped, not failed
        for pipeline, batches in by_pipeline.items():
            *older, newest = batches
            for data in older:
                budget = max(0.5, 2.0 * self.last_duration)
                healthy = self._failing_since is None
                if not healthy or deadline - time.monotonic() < 2.0 * budget:
                    skipped += 1
                elif not self._deliver(data, pipeline, deadline):
                    skipped += 1
            if time.monotonic() >= deadline or not self._deliver(newest, pipeline, deadline):
                skipped += 1
        self.failed = failed
        if skipped:
            self.dropped += skipped
            log.warning("exporter %s: %d batches not sent at shutdown", self.id, skipped)
        try:
            self.exporter.shutdown()
        except Exception as err:
            log.warning("exporter %s: shutdown failed: %s", self.id, err)

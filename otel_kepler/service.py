"""The graph and its clock: collect every receiver once a tick, run each pipeline, export.

Per tick, every receiver used by any pipeline is collected once. Each pipeline
merges its receivers' contributions into one batch, runs its own processor
instances in order (processors keep per-pipeline state, as in the Collector)
and converts the result once; the shared exporters get it through their
queues. A receiver that raises costs its own data for that tick: the error is
logged once per distinct message and counted.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import threading
import time
from dataclasses import dataclass
from typing import Any

from otel_kepler import memory
from otel_kepler.component import ComponentError, Processor, Receiver
from otel_kepler.config import AgentConfig, ComponentConfig
from otel_kepler.convert import AgentStats, Converter
from otel_kepler.data import Batch, Contribution
from otel_kepler.exporting import ExporterWorker, QueuePolicy, RetryPolicy
from otel_kepler.resource import node_attributes, node_resource

log = logging.getLogger(__name__)

SHUTDOWN_SECONDS = 3.0
TRIM_EVERY_TICKS = 60


@dataclass
class Pipeline:
    name: str
    receivers: list[str]
    processors: list[tuple[str, Processor]]
    exporters: list[str]
    converter: Converter | None = None


class Service:
    """Builds the components of a config, starts them, ticks, and shuts them down."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.host = config.host
        self.interval = float(config.service.interval)
        self.self_telemetry = config.service.telemetry.metrics.enabled
        self.receivers: dict[str, Receiver] = {
            cid: _create("receivers", c, config) for cid, c in config.receivers.items()
        }
        self.workers: dict[str, ExporterWorker] = {
            cid: _worker(cid, _create("exporters", c, config), c.config)
            for cid, c in config.exporters.items()
        }
        self.pipelines = [
            Pipeline(
                name,
                list(p.receivers),
                [
                    (pid, _create("processors", config.processors[pid], config))
                    for pid in p.processors
                ],
                list(p.exporters),
            )
            for name, p in config.service.pipelines.items()
        ]
        start_ns = time.time_ns()
        service = config.service
        self.resource = node_resource(self.host.node_name, getattr(service, "resource", None))
        retention = float(getattr(service, "terminated_retention", 60.0))
        for pipeline in self.pipelines:
            types = {config.processors[pid].type for pid, _ in pipeline.processors}
            pipeline.converter = Converter(
                node_attributes(self.resource),
                start_ns,
                self.host.node_name,
                node_totals="attribution" not in types,
                terminated_retention=retention,
                procfs=self.host.procfs,
                semconv=bool(getattr(service, "semconv", False)),
            )
        for cid, receiver in self.receivers.items():
            receiver.use_processes(
                any(
                    processor.uses_processes
                    for pipeline in self.pipelines
                    if cid in pipeline.receivers
                    for _, processor in pipeline.processors
                )
            )
        self.receiver_errors: dict[str, int] = {cid: 0 for cid in self.receivers}
        self.rejected_readings: dict[tuple[str, str], int] = {}
        self._errors_seen: set[tuple[str, str]] = set()
        self._last_tick: float | None = None
        self._last_collect: dict[str, float] = {}  # receiver id -> when it was last collected
        self._last_tick_seconds = 0.0
        self._stop = threading.Event()
        self._started: list[Any] = []

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start every component; on failure stop those already started and raise."""
        memory.tune()  # before the components' threads allocate
        try:
            for cid, r in self.receivers.items():
                _start(f"receivers.{cid}", r.start)
                self._started.append(r)
            for pipeline in self.pipelines:
                for pid, p in pipeline.processors:
                    _start(f"processors.{pid}", p.start)
                    self._started.append(p)
            for cid, w in self.workers.items():
                _start(f"exporters.{cid}", w.start)
        except ComponentError:
            self._shutdown_components()
            raise

    def run(self, duration: float | None = None) -> int:
        """Tick until stop() or ``duration`` seconds; returns the number of ticks."""
        begin = time.monotonic()
        ticks = 0
        next_tick = begin
        while not self._stop.is_set():
            self.tick()
            ticks += 1
            if ticks == 1:
                settle_memory()
            elif ticks % TRIM_EVERY_TICKS == 0:
                memory.trim()  # what bursts (a backend outage's queue) left in the heap
            now = time.monotonic()
            if duration is not None and now - begin >= duration:
                break
            next_tick += self.interval
            if next_tick < now:  # overran: skip the missed slots, keep the phase
                next_tick += ((now - next_tick) // self.interval + 1) * self.interval
            wait = next_tick - now
            if duration is not None:
                wait = min(wait, max(0.0, begin + duration - now))
            if self._stop.wait(timeout=wait):
                break
        return ticks

    def stop(self) -> None:
        """Ask run() to return; safe from a signal handler."""
        self._stop.set()

    def shutdown(self) -> None:
        """Flush exporters and release everything, within about 5 s."""
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        for w in self.workers.values():
            w.shutdown(deadline)
        self._shutdown_components()

    def _shutdown_components(self) -> None:
        for component in reversed(self._started):
            try:
                component.shutdown()
            except Exception as err:
                log.warning("shutdown of %s failed: %s", type(component).__name__, err)
        self._started.clear()

    # -- one tick ---------------------------------------------------------------------

    def tick(self) -> None:
        began = time.monotonic()
        interval = 0.0 if self._last_tick is None else began - self._last_tick
        self._last_tick = began
        parts = {cid: self._collect(cid, r) for cid, r in self.receivers.items()}
        timestamp = time.time_ns()
        stats = self._stats() if self.self_telemetry else None
        for pipeline in self.pipelines:
            batch = Batch(timestamp, interval, self.host.node_name)
            for cid in pipeline.receivers:
                part = parts[cid]
                if part is not None:
                    batch.add(part)
            for pid, processor in pipeline.processors:
                try:
                    processor.process(batch)
                except Exception:
                    log.exception(
                        "processor %s failed; pipeline %s skips this tick", pid, pipeline.name
                    )
                    break
            else:
                assert pipeline.converter is not None
                data = pipeline.converter.convert(batch, stats)
                for eid in pipeline.exporters:
                    self.workers[eid].submit(data, pipeline.name)
        self._last_tick_seconds = time.monotonic() - began

    def _collect(self, cid: str, receiver: Receiver) -> Contribution | None:
        began = time.monotonic()
        last = self._last_collect.get(cid)
        self._last_collect[cid] = began
        try:
            part = receiver.collect()
            for reason, count in part.rejected.items():
                key = (cid, reason)
                self.rejected_readings[key] = self.rejected_readings.get(key, 0) + count
            if last is not None:
                elapsed = began - last
                for reading in part.energy:
                    if reading.seconds is None:
                        reading.seconds = elapsed
            return part
        except Exception as err:
            self.receiver_errors[cid] += 1
            message = f"{type(err).__name__}: {err}"
            if (cid, message) not in self._errors_seen:
                self._errors_seen.add((cid, message))
                if isinstance(err, ComponentError | OSError):
                    log.error("receiver %s: %s", cid, message)
                else:
                    log.exception("receiver %s failed", cid)
            return None

    def _stats(self) -> AgentStats:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return AgentStats(
            tick_seconds=self._last_tick_seconds,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            rss_bytes=_rss_bytes(),
            dropped={cid: w.dropped for cid, w in self.workers.items()},
            failed={cid: w.failed for cid, w in self.workers.items()},
            export_cpu={
                cid: w.cpu_seconds + float(getattr(w.exporter, "cpu_seconds", 0.0))
                for cid, w in self.workers.items()
            },
            export_duration={cid: w.last_duration for cid, w in self.workers.items()},
            sent_points={cid: w.sent_points for cid, w in self.workers.items()},
            receiver_errors=dict(self.receiver_errors),
            rejected=dict(self.rejected_readings),
        )


def settle_memory() -> None:
    """Move everything alive after start-up and the first tick out of the GC's way.

    The libraries (OpenTelemetry, gRPC, protobuf) and the first tick's caches are
    tens of thousands of long-lived objects; without this, a full collection
    triggered by one tick's allocations scans them all (measured: 24 ms a tick at
    1,000 processes on a 2-core VM, more than the tick's own work).
    """
    gc.collect()
    gc.freeze()
    memory.trim()


def _create(section: str, c: ComponentConfig, config: AgentConfig) -> Any:
    try:
        return c.factory.create(c.id, c.config, config.host)
    except ComponentError as err:
        raise ComponentError(f"{section}.{c.id}: {err}") from None


def _start(path: str, start: Any) -> None:
    try:
        start()
    except ComponentError as err:
        raise ComponentError(f"{path}: {err}") from None
    except OSError as err:
        raise ComponentError(f"{path}: {err}") from None


def _worker(cid: str, exporter: Any, config: Any) -> ExporterWorker:
    """An exporter's worker with its sending_queue, retry_on_failure and interval."""
    queue = getattr(config, "sending_queue", None)
    retry = getattr(config, "retry_on_failure", None)
    every = getattr(config, "interval", None)
    return ExporterWorker(
        cid,
        exporter,
        QueuePolicy(bool(queue.enabled), int(queue.queue_size)) if queue else None,
        RetryPolicy(
            enabled=bool(retry.enabled),
            initial_interval=float(retry.initial_interval),
            max_interval=float(retry.max_interval),
            max_elapsed_time=float(retry.max_elapsed_time),
        )
        if retry
        else None,
        float(every) if every else 0.0,
    )


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0

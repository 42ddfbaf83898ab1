"""``prometheus`` exporter: serves the latest tick for scraping, with Kepler's metric names.

Names come from :func:`otel_kepler.metrics.prometheus_name`, the same
translation a backend applies to OTLP, so both paths agree. The exposition
format is written by prometheus_client. A workload that ended
(``state=terminated``) stays in the output until one scrape has carried it,
even if newer ticks no longer contain it.

Also serves ``/healthz`` (the process is up) and ``/readyz`` (a tick has been
received), for Kubernetes probes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry.sdk.metrics.export import MetricsData, Sum
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import Metric as PromMetric

from otel_kepler.component import ComponentError, Exporter, Factory, HostSettings
from otel_kepler.metrics import prometheus_name
from otel_kepler.schema import ConfigError

log = logging.getLogger(__name__)


@dataclass
class PrometheusConfig:
    """Pull endpoint for Prometheus scrapes."""

    endpoint: str = field(
        default="127.0.0.1:9102", metadata={"doc": "host:port to listen on; path /metrics"}
    )

    def validate(self) -> None:
        split_endpoint(self.endpoint)


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("endpoint", f'expected "host:port", got {endpoint!r}')
    return host.strip("[]") or "0.0.0.0", int(port)


# One rendered sample: (prometheus family name, kind, help, sample name, labels, value)
_Sample = tuple[str, str, str, str, dict[str, str], float]


class _Snapshot:
    """The samples to serve: the latest tick of each pipeline plus unscraped terminated ones."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latest: dict[str, list[_Sample]] = {}
        self.terminated: dict[tuple[str, frozenset[tuple[str, str]]], _Sample] = {}

    def update(self, pipeline: str, samples: list[_Sample]) -> None:
        with self.lock:
            self.latest[pipeline] = samples
            for s in samples:
                if s[4].get("state") == "terminated":
                    self.terminated[_key(s)] = s

    def take(self) -> list[_Sample]:
        """All samples for one scrape; terminated ones are released once served."""
        with self.lock:
            out = [s for samples in self.latest.values() for s in samples]
            current = {_key(s) for s in out if s[4].get("state") == "terminated"}
            out.extend(s for key, s in self.terminated.items() if key not in current)
            self.terminated.clear()
            return out


def _key(sample: _Sample) -> tuple[str, frozenset[tuple[str, str]]]:
    return sample[3], frozenset(sample[4].items())


_LABEL_NAMES: dict[str, str] = {}


def _label(key: str) -> str:
    """An attribute key as a Prometheus label name: ``hw.id`` -> ``hw_id``, as backends do."""
    name = _LABEL_NAMES.get(key)
    if name is None:
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in key)
        if name[:1].isdigit():
            name = "_" + name
        _LABEL_NAMES[key] = name
    return name


def render(data: MetricsData) -> list[_Sample]:
    """OpenTelemetry metrics -> Prometheus samples with translated names."""
    samples: list[_Sample] = []
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                monotonic = isinstance(metric.data, Sum) and metric.data.is_monotonic
                family = prometheus_name(metric.name, metric.unit or "", monotonic)
                kind = "counter" if monotonic else "gauge"
                sample_name = family
                if monotonic:
                    family = family.removesuffix("_total")
                help_text = metric.description or metric.name
                for p in metric.data.data_points:
                    labels = {_label(k): str(v) for k, v in (p.attributes or {}).items()}
                    value = float(p.value)  # type: ignore[union-attr]
                    samples.append((family, kind, help_text, sample_name, labels, value))
    return samples


class _Collector:
    """A prometheus_client collector over the snapshot."""

    def __init__(self, snapshot: _Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[PromMetric]:
        families: dict[str, PromMetric] = {}
        for family, kind, help_text, sample_name, labels, value in self.snapshot.take():
            metric = families.get(family)
            if metric is None:
                metric = families[family] = PromMetric(family, help_text, kind)
            metric.add_sample(sample_name, labels, value)
        yield from families.values()


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("prometheus endpoint: " + format, *args)


class PrometheusExporter(Exporter):
    queued = False  # export() only swaps a snapshot

    def __init__(self, name: str, config: PrometheusConfig) -> None:
        self.name = name
        self.host, self.port = split_endpoint(config.endpoint)
        self.snapshot = _Snapshot()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self.snapshot))
        self._metrics_app = make_wsgi_app(self.registry)
        self._ready = threading.Event()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._server = make_server(
                self.host, self.port, self._app, _ThreadingWSGIServer, handler_class=_QuietHandler
            )
        except OSError as err:
            raise ComponentError(
                f"cannot listen on {self.host}:{self.port}: {err.strerror}"
            ) from None
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"prometheus {self.name}", daemon=True
        )
        self._thread.start()
        log.info(
            "prometheus exporter %s: serving http://%s:%d/metrics", self.name, self.host, self.port
        )

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok\n")
        if path == "/readyz":
            if self._ready.is_set():
                return _text(start_response, "200 OK", "ready\n")
            return _text(start_response, "503 Service Unavailable", "no tick yet\n")
        return _text(start_response, "404 Not Found", "see /metrics\n")

    def export(self, data: MetricsData, pipeline: str) -> None:
        self.snapshot.update(pipeline, render(data))
        self._ready.set()

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _text(start_response: Any, status: str, body: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [body.encode()]


def _create(name: str, config: PrometheusConfig, host: HostSettings) -> PrometheusExporter:
    return PrometheusExporter(name, config)


factory = Factory(
    type="prometheus",
    description="Serves Kepler-named metrics for Prometheus to scrape (/metrics)",
    config_class=PrometheusConfig,
    create=_create,
)

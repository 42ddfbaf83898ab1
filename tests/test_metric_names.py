"""The metric contract: every name translates to the same Prometheus name in a real backend.

One point of every metric the agent can emit is pushed by the agent's own OTLP/HTTP
exporter into VictoriaMetrics (with -opentelemetry.usePrometheusNaming); the series
names it stores must be exactly what the pull exporter serves (metrics.prometheus_name).
"""

from __future__ import annotations

import time

from otel_kepler import metrics as m
from otel_kepler.exporters.otlp import OtlpHttpExporter
from otel_kepler.exporters.otlp.config import OtlpHttpConfig
from otel_kepler.exporters.otlp.settings import resolve_http
from otel_kepler.exporters.prometheus import render
from otel_kepler.resource import node_attributes, node_resource
from otel_kepler.snapshot import Block, Labels, Series, Shape, Snapshot
from tests.peers import VictoriaMetrics

GAUGES = (
    m.MetricDesc("hw.temperature", "Cel", "gauge", "t"),
    m.MetricDesc("hw.fan.speed", "rpm", "gauge", "f"),
    m.MetricDesc("hw.voltage", "V", "gauge", "v"),
)


def every_metric(now: int) -> Snapshot:
    labels = Labels((("zone", "package"),))
    series = [Series(desc, labels, now - 10**9) for desc in (*m.ALL, *GAUGES)]
    shape = Shape(("node",), node_attributes(node_resource("n1")), series)
    return Snapshot(now, [Block(shape, [1.0] * len(series))])


def test_backend_names_equal_the_pull_exporter_names(victoria_metrics: VictoriaMetrics) -> None:
    snapshot = every_metric(time.time_ns())
    settings = resolve_http(OtlpHttpConfig(metrics_endpoint=victoria_metrics.otlp_metrics_url))
    exporter = OtlpHttpExporter("otlphttp", settings)
    exporter.start()
    try:
        exporter.export(snapshot, "metrics")
    finally:
        exporter.shutdown()
    expected = {desc.prometheus_name for desc in (*m.ALL, *GAUGES)}
    victoria_metrics.flush()
    names = set(victoria_metrics.api("label/__name__/values"))
    assert names == expected
    served = {
        line.split("{")[0]
        for line in render([snapshot]).decode().splitlines()
        if not line.startswith("#")
    }
    assert served == expected

"""The metric contract: every name translates to the same Prometheus name in a real backend.

One point of every metric the agent can emit is pushed over OTLP/HTTP into
VictoriaMetrics (with -opentelemetry.usePrometheusNaming); the series names it
stores must be exactly what the pull exporter serves (metrics.prometheus_name).
"""

from __future__ import annotations

import time

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import (
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)

from otel_kepler import metrics as m
from otel_kepler.convert import _SCOPE, _Points
from otel_kepler.service import build_resource
from tests.peers import VictoriaMetrics

GAUGES = (
    m.MetricDesc("hw.temperature", "Cel", "gauge", "t"),
    m.MetricDesc("hw.fan.speed", "rpm", "gauge", "f"),
    m.MetricDesc("hw.voltage", "V", "gauge", "v"),
)


def test_backend_names_equal_the_pull_exporter_names(victoria_metrics: VictoriaMetrics) -> None:
    now = time.time_ns()
    points = _Points(now)
    for desc in (*m.ALL, *GAUGES):
        points.add(desc, {"zone": "package"}, 1.0, now - 10**9)
    data = MetricsData(
        [ResourceMetrics(build_resource("n1"), [ScopeMetrics(_SCOPE, points.metrics(), "")], "")]
    )
    exporter = OTLPMetricExporter(endpoint=victoria_metrics.otlp_metrics_url, timeout=10)
    assert exporter.export(data) is MetricExportResult.SUCCESS
    expected = {desc.prometheus_name for desc in (*m.ALL, *GAUGES)}
    victoria_metrics.flush()
    names = set(victoria_metrics.api("label/__name__/values"))
    assert names == expected

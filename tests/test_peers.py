# SPDX-License-Identifier: Apache-2.0
"""Self-tests of the real peers in tests/peers.py, driven by the real OpenTelemetry
exporters and prometheus_client (no agent code involved)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, Counter, start_http_server

from tests.peers import (
    MetricPoint,
    OtlpGrpcSink,
    OtlpHttpSink,
    PeerError,
    PeerNotInstalled,
    Prometheus,
    TlsCert,
    VictoriaMetrics,
    result_values,
)

pytest_plugins = ["tests.peers"]

JOULES = 123.5
RESOURCE = {"service.name": "otel-kepler", "k8s.node.name": "node-a"}
POINT_ATTRS = {"zone": "package", "source": "rapl"}


def metrics_data(
    name: str = "kepler.node.cpu.joules",
    value: float = JOULES,
    *,
    unit: str = "J",
    temporality: AggregationTemporality = AggregationTemporality.CUMULATIVE,
    gauge: bool = False,
) -> MetricsData:
    """One resource, one scope, one metric with one point, built by hand."""
    now = time.time_ns()
    point = NumberDataPoint(
        attributes=POINT_ATTRS, start_time_unix_nano=now - 10**9, time_unix_nano=now, value=value
    )
    data: Sum | Gauge = (
        Gauge(data_points=[point])
        if gauge
        else Sum(data_points=[point], aggregation_temporality=temporality, is_monotonic=True)
    )
    metric = Metric(name=name, description="CPU energy", unit=unit, data=data)
    scope = ScopeMetrics(InstrumentationScope("otel_kepler", "0.1.0"), [metric], "")
    return MetricsData([ResourceMetrics(Resource(RESOURCE), [scope], "")])


# ------------------------------------------------------------------ VictoriaMetrics


def test_victoria_metrics_otlp_http_gives_kepler_names(victoria_metrics: VictoriaMetrics) -> None:
    exporter = HttpMetricExporter(endpoint=victoria_metrics.otlp_metrics_url)
    try:
        assert exporter.export(metrics_data()) is MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()

    result = victoria_metrics.wait_for('kepler_node_cpu_joules_total{zone="package"}')
    # Resource attributes become labels like point attributes, dots turned to underscores.
    assert result_values(result) == [
        (
            {
                "__name__": "kepler_node_cpu_joules_total",
                "zone": "package",
                "source": "rapl",
                "service_name": "otel-kepler",
                "k8s_node_name": "node-a",
            },
            JOULES,
        )
    ]
    series = victoria_metrics.series('{__name__="kepler_node_cpu_joules_total"}')
    assert [s["k8s_node_name"] for s in series] == ["node-a"]


def test_victoria_metrics_base_url_from_environment(
    victoria_metrics: VictoriaMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK appends /v1/metrics to OTEL_EXPORTER_OTLP_ENDPOINT; gzip is accepted."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", victoria_metrics.otlp_http_url)
    exporter = HttpMetricExporter(compression=Compression.Gzip)
    try:
        assert exporter.export(metrics_data(value=7.25)) is MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()
    result = victoria_metrics.wait_for('kepler_node_cpu_joules_total{source="rapl"}')
    assert result_values(result)[0][1] == 7.25


def test_victoria_metrics_units_and_delta_sums(victoria_metrics: VictoriaMetrics) -> None:
    """Gauge W gets _watts; a delta sum is dropped by VictoriaMetrics (cumulative only)."""
    exporter = HttpMetricExporter(endpoint=victoria_metrics.otlp_metrics_url)
    try:
        for data in (
            metrics_data("kepler.node.cpu.power", 42.0, unit="W", gauge=True),
            metrics_data("kepler.node.cpu.delta", 5.0, temporality=AggregationTemporality.DELTA),
        ):
            assert exporter.export(data) is MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()
    result = victoria_metrics.wait_for("kepler_node_cpu_power_watts")
    assert result_values(result)[0][1] == 42.0
    dropped = victoria_metrics.self_metric(
        "vm_protoparser_rows_dropped_total",
        type="opentelemetry",
        reason="unsupported_sum_aggregation",
    )
    assert dropped == 1
    assert victoria_metrics.query('{__name__=~"kepler_node_cpu_delta.*"}') == []


def test_victoria_metrics_query_error_is_clear(victoria_metrics: VictoriaMetrics) -> None:
    with pytest.raises(PeerError, match="422|400"):
        victoria_metrics.query("sum(")


def test_missing_binary_names_the_install_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_KEPLER_VICTORIA_METRICS_BIN", str(tmp_path / "nope"))
    with pytest.raises(PeerNotInstalled, match="scripts/install-test-deps.sh"):
        VictoriaMetrics().start()


def test_failed_start_reports_log_tail_and_cleans_up() -> None:
    vm = VictoriaMetrics(extra_args=["-no.such.flag"])
    with pytest.raises(PeerError, match="no.such.flag") as info:
        vm.start()
    assert "exited with status" in str(info.value)
    assert vm.proc is None and vm.dir is None


def test_stop_kills_process_and_removes_folder() -> None:
    with VictoriaMetrics() as vm:
        proc, folder = vm.proc, vm.dir
        assert proc is not None and folder is not None and folder.is_dir()
    assert proc.poll() is not None
    assert not folder.exists()


# ------------------------------------------------------------------ OTLP/gRPC sink


def grpc_exporter(sink: OtlpGrpcSink, timeout: float = 10.0) -> GrpcMetricExporter:
    return GrpcMetricExporter(endpoint=sink.endpoint, insecure=True, timeout=timeout)


def test_grpc_sink_receives_the_export(otlp_grpc_sink: OtlpGrpcSink) -> None:
    exporter = grpc_exporter(otlp_grpc_sink)
    try:
        assert exporter.export(metrics_data()) is MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert len(otlp_grpc_sink.wait_for_requests(1)) == 1
    assert otlp_grpc_sink.metric_points("kepler.node.cpu.joules") == [
        MetricPoint(POINT_ATTRS, JOULES, RESOURCE)
    ]
    [(resource, metric)] = otlp_grpc_sink.metrics("kepler.node.cpu.joules")
    assert metric.unit == "J"
    assert metric.sum.is_monotonic
    assert (
        metric.sum.aggregation_temporality
        == metrics_pb2.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    )
    assert otlp_grpc_sink.calls[0].headers["user-agent"].startswith("OTel-OTLP-Exporter-Python")


def test_grpc_sink_unavailable_is_retried_then_fails(otlp_grpc_sink: OtlpGrpcSink) -> None:
    otlp_grpc_sink.respond_error(grpc.StatusCode.UNAVAILABLE)
    exporter = grpc_exporter(otlp_grpc_sink, timeout=2.0)
    try:
        started = time.monotonic()
        assert exporter.export(metrics_data()) is MetricExportResult.FAILURE
        assert time.monotonic() - started < 5
    finally:
        exporter.shutdown()
    calls = otlp_grpc_sink.calls
    assert len(calls) >= 2 and {c.outcome for c in calls} == {"error"}
    assert otlp_grpc_sink.requests == []

    otlp_grpc_sink.respond_ok()
    exporter = grpc_exporter(otlp_grpc_sink)
    try:
        assert exporter.export(metrics_data()) is MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert len(otlp_grpc_sink.requests) == 1


def test_grpc_sink_hang_times_out_the_exporter(otlp_grpc_sink: OtlpGrpcSink) -> None:
    otlp_grpc_sink.respond_hang(30.0)
    exporter = grpc_exporter(otlp_grpc_sink, timeout=1.0)
    try:
        started = time.monotonic()
        assert exporter.export(metrics_data()) is MetricExportResult.FAILURE
        assert time.monotonic() - started < 4
    finally:
        exporter.shutdown()
    assert otlp_grpc_sink.wait_for_calls(1)[0].request.resource_metrics
    # stop() releases the held handler at once (checked by the fixture's teardown time).


def test_grpc_sink_tls(tls_cert: TlsCert) -> None:
    with OtlpGrpcSink(tls=tls_cert) as sink:
        creds = grpc.ssl_channel_credentials(root_certificates=tls_cert.cert_pem)
        exporter = GrpcMetricExporter(endpoint=sink.endpoint, credentials=creds, timeout=5)
        try:
            assert exporter.export(metrics_data()) is MetricExportResult.SUCCESS
        finally:
            exporter.shutdown()
        assert [p.value for p in sink.metric_points("kepler.node.cpu.joules")] == [JOULES]


# ------------------------------------------------------------------ OTLP/HTTP sink


def http_exporter(
    sink: OtlpHttpSink, timeout: float = 10.0, compression: Compression | None = None
) -> HttpMetricExporter:
    return HttpMetricExporter(endpoint=sink.metrics_url, timeout=timeout, compression=compression)


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_http_sink_receives_the_export(
    otlp_http_sink: OtlpHttpSink, compression: Compression
) -> None:
    exporter = http_exporter(otlp_http_sink, compression=compression)
    try:
        assert exporter.export(metrics_data()) is MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()
    [call] = otlp_http_sink.wait_for_calls(1)
    assert call.outcome == "ok"
    assert call.headers["content-type"] == "application/x-protobuf"
    expected_encoding = "gzip" if compression is Compression.Gzip else None
    assert call.headers.get("content-encoding") == expected_encoding
    assert otlp_http_sink.metric_points("kepler.node.cpu.joules") == [
        MetricPoint(POINT_ATTRS, JOULES, RESOURCE)
    ]
    assert otlp_http_sink.metric_names() == {"kepler.node.cpu.joules"}


def test_http_sink_wrong_path_is_404(otlp_http_sink: OtlpHttpSink) -> None:
    exporter = HttpMetricExporter(endpoint=otlp_http_sink.url + "/v1/metricz", timeout=2)
    try:
        assert exporter.export(metrics_data()) is MetricExportResult.FAILURE
    finally:
        exporter.shutdown()
    assert otlp_http_sink.calls == []


def test_http_sink_503_is_retried_then_fails(otlp_http_sink: OtlpHttpSink) -> None:
    otlp_http_sink.respond_error(503)
    exporter = http_exporter(otlp_http_sink, timeout=2.0)
    try:
        started = time.monotonic()
        assert exporter.export(metrics_data()) is MetricExportResult.FAILURE
        assert time.monotonic() - started < 5
    finally:
        exporter.shutdown()
    assert len(otlp_http_sink.calls) >= 2
    assert otlp_http_sink.requests == []


def test_http_sink_hang_times_out_the_exporter(otlp_http_sink: OtlpHttpSink) -> None:
    otlp_http_sink.respond_hang(30.0)
    exporter = http_exporter(otlp_http_sink, timeout=1.0)
    try:
        started = time.monotonic()
        assert exporter.export(metrics_data()) is MetricExportResult.FAILURE
        assert time.monotonic() - started < 4
    finally:
        exporter.shutdown()
    assert otlp_http_sink.wait_for_calls(1)[0].outcome == "hang"
    assert otlp_http_sink.requests == []


def test_http_sink_slow_but_successful(otlp_http_sink: OtlpHttpSink) -> None:
    otlp_http_sink.respond_hang(0.3, then_ok=True)
    exporter = http_exporter(otlp_http_sink, timeout=5.0)
    try:
        assert exporter.export(metrics_data()) is MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert len(otlp_http_sink.requests) == 1


def test_http_sink_tls(tls_cert: TlsCert, monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override the session's `verify`, so
    # the exporter's certificate_file is ignored where they are set (psf/requests#3829).
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with OtlpHttpSink(tls=tls_cert) as sink:
        assert sink.metrics_url.startswith("https://127.0.0.1:")
        exporter = HttpMetricExporter(
            endpoint=sink.metrics_url, certificate_file=str(tls_cert.cert_file), timeout=5
        )
        try:
            assert exporter.export(metrics_data()) is MetricExportResult.SUCCESS
        finally:
            exporter.shutdown()
        assert [p.value for p in sink.metric_points("kepler.node.cpu.joules")] == [JOULES]


# ------------------------------------------------------------------ Prometheus


@pytest.fixture
def client_endpoint() -> Iterator[tuple[str, Counter]]:
    """prometheus_client serving ``kepler_node_cpu_joules`` on 127.0.0.1 (free port)."""
    registry = CollectorRegistry()
    counter = Counter("kepler_node_cpu_joules", "CPU energy", ["zone", "source"], registry=registry)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}", counter
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_prometheus_scrapes_prometheus_client(
    prometheus_factory: Callable[..., Prometheus],
    client_endpoint: tuple[str, Counter],
    otlp_http_sink: OtlpHttpSink,
) -> None:
    """One Prometheus (each start costs about 5 s: its discovery batches updates every 5 s)
    scrapes prometheus_client and, as a failing target, the OTLP/HTTP sink (GET -> 405)."""
    address, counter = client_endpoint
    failing = otlp_http_sink.url.removeprefix("http://")
    counter.labels(zone="package", source="rapl").inc(JOULES)
    prom = prometheus_factory([address, failing], scrape_interval="1s")
    result = prom.wait_for('kepler_node_cpu_joules_total{zone="package"}')
    assert result_values(result) == [
        (
            {
                "__name__": "kepler_node_cpu_joules_total",
                "zone": "package",
                "source": "rapl",
                "job": "otel-kepler",
                "instance": address,
            },
            JOULES,
        )
    ]
    targets = {t["labels"]["instance"]: t for t in prom.wait_for_scrapes()}
    assert targets[address]["health"] == "up" and targets[address]["lastError"] == ""
    assert targets[address]["scrapeUrl"] == f"http://{address}/metrics"
    assert targets[failing]["health"] == "down"
    assert "405" in targets[failing]["lastError"]

    counter.labels(zone="package", source="rapl").inc(1.0)
    prom.wait_for(
        'kepler_node_cpu_joules_total{zone="package"}',
        until=lambda r: bool(r) and result_values(r)[0][1] == JOULES + 1.0,
    )

"""The agent as an OpenTelemetry citizen: resources, OTEL_* variables, temporality, no processors.

Every OTLP request here is decoded by a real server (the grpcio and HTTP sinks of
tests/peers.py) or stored by VictoriaMetrics.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from otel_kepler.component import ComponentError, ExportError, HostSettings
from otel_kepler.config import parse
from otel_kepler.convert import Converter
from otel_kepler.data import Batch, EnergyReading, ProcessSample, Workload
from otel_kepler.exporters.otlp import OtlpGrpcExporter, OtlpHttpExporter, create_http
from otel_kepler.exporters.otlp.config import OtlpGrpcConfig, OtlpHttpConfig
from otel_kepler.exporters.otlp.settings import resolve_grpc, resolve_http
from otel_kepler.exporters.prometheus import render
from otel_kepler.processors.attribution import AttributionConfig, AttributionProcessor
from otel_kepler.registry import default_registry
from otel_kepler.resource import INSTANCE_ID_NAMESPACE, instance_id, node_resource
from otel_kepler.service import Service
from otel_kepler.snapshot import Snapshot
from tests.peers import OtlpGrpcSink, OtlpHttpSink, VictoriaMetrics
from tests.sysfs_fixtures import RaplTree

WEB = Workload("a" * 64, "containerd", "pod-web", "nginx", "web-0", "shop")
DB = Workload("b" * 64, "containerd", "pod-db", "postgres", "db-0", "shop")
OTEL_VARS = (
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)


class Pipeline:
    """attribution + conversion as the service runs them, at every level, 10 J a tick."""

    def __init__(self) -> None:
        levels: Any = ["node", "process", "container", "pod"]
        self.attribution = AttributionProcessor(
            AttributionConfig(levels=levels, idle="usage_ratio"), node_name="n1"
        )
        self.base = time.time_ns() - 60 * 10**9  # recent enough for a backend to store
        self.converter = Converter(node_resource("n1"), self.base, "n1")
        self.t = 0

    def tick(self) -> Snapshot:
        self.t += 1
        now = self.base + self.t * 10**9
        batch = Batch(now, 1.0, "n1", [EnergyReading("cpu", "package", "rapl", 10.0)])
        batch.cpu_usage_ratio = 1.0
        batch.has_usage = True
        batch.processes[11] = ProcessSample(11, 5, "nginx", "/usr/sbin/nginx", WEB, self.t, 1.0)
        batch.processes[12] = ProcessSample(12, 5, "postgres", "/usr/bin/postgres", DB, self.t, 3.0)
        self.attribution.process(batch)
        return self.converter.convert(batch)


def grpc_exporter(sink: OtlpGrpcSink, **config: Any) -> OtlpGrpcExporter:
    exporter = OtlpGrpcExporter(
        "otlp", resolve_grpc(OtlpGrpcConfig(endpoint=sink.endpoint, **config))
    )
    exporter.start()
    return exporter


# -- resources -----------------------------------------------------------------------------


def test_resource_precedence_follows_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    configured = {"team": "energy", "service.name": "from-config", "host.name": "cfg-host"}
    resource = node_resource("node-7", configured).attributes
    assert resource["service.name"] == "from-config"  # config beats the agent's default
    assert resource["team"] == "energy"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "host.name=env-host,deployment.environment=prod")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-kepler")
    resource = node_resource("node-7", configured).attributes
    assert resource["service.name"] == "my-kepler"  # OTEL_SERVICE_NAME wins over everything
    assert resource["host.name"] == "env-host"  # OTEL_RESOURCE_ATTRIBUTES wins over config
    assert resource["deployment.environment"] == "prod"
    assert resource["team"] == "energy"


def test_instance_id_is_stable_per_node() -> None:
    first = node_resource("node-7").attributes["service.instance.id"]
    again = node_resource("node-7").attributes["service.instance.id"]
    other = node_resource("node-8").attributes["service.instance.id"]
    assert first == again == instance_id("node-7") != other
    assert first == str(uuid.uuid5(INSTANCE_ID_NAMESPACE, "otel-kepler/node-7"))
    assert uuid.UUID(first).version == 5


def test_each_workload_is_found_by_its_resource(otlp_grpc_sink: OtlpGrpcSink) -> None:
    """What a Collector's k8sattributes processor does: associate by k8s.pod.uid, container.id."""
    pipeline = Pipeline()
    exporter = grpc_exporter(otlp_grpc_sink)
    try:
        for _ in range(2):
            exporter.export(pipeline.tick(), "metrics")
    finally:
        exporter.shutdown()
    (request, *_) = otlp_grpc_sink.wait_for_requests(2)[-1:]
    by_pod: dict[str, dict[str, Any]] = {}
    by_container: dict[str, dict[str, Any]] = {}
    by_pid: dict[int, dict[str, Any]] = {}
    node: list[dict[str, Any]] = []
    for rm in request.resource_metrics:
        attrs = {kv.key: kv.value for kv in rm.resource.attributes}
        names = {m.name for sm in rm.scope_metrics for m in sm.metrics}
        res = {
            k: v.WhichOneof("value") and getattr(v, v.WhichOneof("value")) for k, v in attrs.items()
        }
        res["_metrics"] = names
        if "kepler.pod.cpu.joules" in names:
            by_pod[res["k8s.pod.uid"]] = res
        elif "kepler.container.cpu.joules" in names:
            by_container[res["container.id"]] = res
        elif "kepler.process.cpu.joules" in names:
            by_pid[res["process.pid"]] = res
        else:
            node.append(res)
    assert set(by_pod) == {"pod-web", "pod-db"}
    assert by_pod["pod-web"]["k8s.pod.name"] == "web-0"
    assert by_pod["pod-web"]["k8s.namespace.name"] == "shop"
    assert set(by_container) == {"a" * 64, "b" * 64}
    db = by_container["b" * 64]
    assert (db["k8s.container.name"], db["k8s.pod.uid"], db["k8s.pod.name"]) == (
        "postgres",
        "pod-db",
        "db-0",
    )
    assert set(by_pid) == {11, 12}  # an integer, as the conventions define process.pid
    assert by_pid[12]["process.executable.name"] == "postgres"
    assert by_pid[12]["process.command"] == "/usr/bin/postgres"
    assert by_pid[12]["container.id"] == "b" * 64
    for res in (*by_pod.values(), *by_container.values(), *by_pid.values(), *node):
        assert res["service.name"] == "otel-kepler" and res["k8s.node.name"] == "n1"
    (node_res,) = node
    assert "k8s.pod.uid" not in node_res and "kepler.node.cpu.joules" in node_res["_metrics"]
    # Kepler's labels stay on the points: the pod's joules, split 1:3 by CPU time.
    points = {
        p.attributes["pod_id"]: p
        for p in otlp_grpc_sink.metric_points("kepler.pod.cpu.joules")
        if p.resource is not None
    }
    assert points["pod-db"].attributes == {
        "pod_id": "pod-db",
        "pod_name": "db-0",
        "pod_namespace": "shop",
        "node_name": "n1",
        "zone": "package",
        "state": "running",
    }
    assert points["pod-db"].value == pytest.approx(15.0)
    assert points["pod-web"].value == pytest.approx(5.0)


def test_a_label_change_gives_a_new_encoding(otlp_grpc_sink: OtlpGrpcSink) -> None:
    """Cached encodings follow the workload's labels (a pod's name learned later)."""
    attribution = AttributionProcessor(AttributionConfig(levels=["pod"]), node_name="n1")
    converter = Converter(node_resource("n1"), 1, "n1")
    exporter = grpc_exporter(otlp_grpc_sink)
    unnamed = Workload("c" * 64, "containerd", "pod-x")
    named = Workload("c" * 64, "containerd", "pod-x", "app", "x-0", "ns")
    try:
        for t, workload in ((1, unnamed), (2, unnamed), (3, named)):
            batch = Batch(t * 10**9, 1.0, "n1", [EnergyReading("cpu", "package", "rapl", 4.0)])
            batch.cpu_usage_ratio = 1.0
            batch.has_usage = True
            batch.processes[5] = ProcessSample(5, 1, "app", "/app", workload, float(t), 1.0)
            attribution.process(batch)
            exporter.export(converter.convert(batch), "metrics")
    finally:
        exporter.shutdown()
    requests = otlp_grpc_sink.wait_for_requests(3)
    names = []
    for request in requests:
        for rm in request.resource_metrics:
            res = {kv.key: kv.value.string_value for kv in rm.resource.attributes}
            if res.get("k8s.pod.uid") == "pod-x":
                names.append(res.get("k8s.pod.name", ""))
    assert names == ["", "", "x-0"]
    last = otlp_grpc_sink.metric_points("kepler.pod.cpu.joules")[-1]
    assert last.attributes["pod_name"] == "x-0" and last.value == pytest.approx(12.0)


def test_kepler_names_and_labels_through_victoriametrics(
    victoria_metrics: VictoriaMetrics,
) -> None:
    """Per-workload resources change no Kepler name or label a PromQL user relies on."""
    pipeline = Pipeline()
    exporter = OtlpHttpExporter(
        "otlphttp", resolve_http(OtlpHttpConfig(metrics_endpoint=victoria_metrics.otlp_metrics_url))
    )
    exporter.start()
    try:
        for _ in range(2):
            snapshot = pipeline.tick()
            exporter.export(snapshot, "metrics")
    finally:
        exporter.shutdown()
    victoria_metrics.flush()
    pulled: dict[str, list[dict[str, str]]] = {}
    for line in render([snapshot]).decode().splitlines():
        if line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        labels = dict(
            (k, v.strip('"'))
            for k, _, v in (p.partition("=") for p in rest.rsplit("}", 1)[0].split(",") if p)
        )
        pulled.setdefault(name, []).append(labels)
    for name in (
        "kepler_pod_cpu_joules_total",
        "kepler_container_cpu_watts",
        "kepler_node_cpu_joules_total",
    ):
        stored = [s for s in victoria_metrics.series(name)]
        assert len(stored) == len(pulled[name]), name
        for labels in pulled[name]:
            match = [s for s in stored if labels.items() <= s.items()]
            assert len(match) == 1, (name, labels)
    pod = victoria_metrics.series('kepler_pod_cpu_joules_total{pod_id="pod-db"}')
    assert pod[0]["k8s_pod_uid"] == "pod-db"


# -- temporality -------------------------------------------------------------------------


def test_delta_sums_add_up_to_the_cumulative_totals(tmp_path: Path) -> None:
    pipeline = Pipeline()
    with OtlpGrpcSink() as cumulative_sink, OtlpGrpcSink() as delta_sink:
        cumulative = grpc_exporter(cumulative_sink)
        delta = grpc_exporter(delta_sink, temporality="delta")
        try:
            for t in range(1, 7):
                snapshot = pipeline.tick()
                cumulative.export(snapshot, "metrics")
                if t == 3:  # one failed delivery: the next delta covers both intervals
                    delta_sink.respond_error()
                    with pytest.raises(ExportError):
                        delta.export(snapshot, "metrics", timeout=5)
                    delta_sink.respond_ok()
                    continue
                delta.export(snapshot, "metrics")
        finally:
            cumulative.shutdown()
            delta.shutdown()
        totals = cumulative_sink.metric_points("kepler.pod.cpu.joules")
        deltas = delta_sink.metric_points("kepler.pod.cpu.joules")
        metrics = delta_sink.metrics("kepler.pod.cpu.joules")
    assert all(metric.sum.aggregation_temporality == 1 for _, metric in metrics)  # DELTA
    for pod in ("pod-web", "pod-db"):
        last_total = [p.value for p in totals if p.attributes["pod_id"] == pod][-1]
        summed = sum(p.value for p in deltas if p.attributes["pod_id"] == pod)
        assert summed == pytest.approx(last_total, rel=1e-12)
    # Each delta point starts where the previous delivered one ended.
    windows = []
    for _, metric in metrics:
        for dp in metric.sum.data_points:
            if dict((kv.key, kv.value.string_value) for kv in dp.attributes)["pod_id"] == "pod-db":
                windows.append((dp.start_time_unix_nano, dp.time_unix_nano))
    assert len(windows) == 5
    for (_, end), (start, _) in zip(windows, windows[1:], strict=False):
        assert start == end


@pytest.mark.parametrize(
    ("preference", "expected"),
    [("delta", "delta"), ("LowMemory", "delta"), ("cumulative", "cumulative"), ("", "cumulative")],
)
def test_temporality_preference_variable(
    monkeypatch: pytest.MonkeyPatch, preference: str, expected: str
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", preference)
    assert resolve_http(OtlpHttpConfig()).temporality == expected
    assert resolve_grpc(OtlpGrpcConfig(temporality="cumulative")).temporality == "cumulative"


def test_otel_exporter_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector.example:4318/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cr%3Dt,x-team=energy")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")
    settings = resolve_http(OtlpHttpConfig(headers={"x-team": "config-wins"}))
    assert settings.url == "https://collector.example:4318/v1/metrics"
    assert settings.headers == {"api-key": "s3cr=t", "x-team": "config-wins"}
    assert settings.timeout == 2.5
    assert settings.gzip
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=line%0Abreak")
    with pytest.raises(ComponentError) as err:
        create_http("otlphttp", OtlpHttpConfig(), HostSettings())
    assert str(err.value) == (
        "OTEL_EXPORTER_OTLP_HEADERS.api-key: the value has a line feed (LF) at position 4"
    )
    assert "break" not in str(err.value)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cr%3Dt,x-team=energy")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://other:9999/custom")
    assert resolve_http(OtlpHttpConfig()).url == "http://other:9999/custom"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://other:9999")
    grpc = resolve_grpc(OtlpGrpcConfig())
    assert (grpc.target, grpc.insecure) == ("other:9999", True)
    assert grpc.metadata == (("api-key", "s3cr=t"), ("x-team", "energy"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://other:99999")
    with pytest.raises(ComponentError) as err:
        create_http("otlphttp", OtlpHttpConfig(), HostSettings())
    assert str(err.value) == (
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: port must be a number 1 to 65535, "
        "got 'http://other:99999'"
    )


# -- node power without processors -------------------------------------------------------


def test_node_energy_without_any_processor(tmp_path: Path, otlp_http_sink: OtlpHttpSink) -> None:
    tree = RaplTree(tmp_path / "sys")
    tree.add_socket(dram=True)
    config = parse(
        f"""
host: {{sysfs: {tree.sysfs}, node_name: n1}}
receivers: {{rapl: {{max_watts: 1.0e+12}}}}
exporters: {{otlphttp: {{metrics_endpoint: "{otlp_http_sink.metrics_url}"}}}}
service:
  interval: 1s
  pipelines:
    metrics: {{receivers: [rapl], exporters: [otlphttp]}}
""",
        default_registry(),
    )
    service = Service(config)
    service.start()
    try:
        service.tick()  # primes the counters
        for joules in (10.0, 20.0, 30.0):
            tree.advance_all({"package": joules, "dram": joules / 10}, 1.0)
            service.tick()
    finally:
        service.shutdown()
    points = otlp_http_sink.metric_points("kepler.node.cpu.joules")
    package = [p.value for p in points if p.attributes["zone"] == "package"]
    dram = [p.value for p in points if p.attributes["zone"] == "dram"]
    assert package == pytest.approx([10.0, 30.0, 60.0], rel=1e-4)
    assert dram == pytest.approx([1.0, 3.0, 6.0], rel=1e-4)
    watts = [p for p in otlp_http_sink.metric_points("kepler.node.cpu.watts")]
    assert watts and all(p.value >= 0 for p in watts)
    assert not otlp_http_sink.metric_points("kepler.node.cpu.active.joules")


def test_hardware_semantic_conventions_beside_kepler_names() -> None:
    converter = Converter(node_resource("n1"), 1, "n1", node_totals=True, semconv=True)
    readings = [
        EnergyReading("cpu", "package", "rapl", 30.0),
        EnergyReading("cpu", "dram", "rapl", 3.0),
        EnergyReading("platform", "platform", "acpi", 90.0),
    ]
    for t in (1, 2):
        snapshot = converter.convert(Batch(t * 10**9, 2.0, "n1", list(readings)))
    energy = {a["hw.id"]: (a.get("hw.type"), v) for a, v in snapshot.find("hw.energy")}
    assert energy == {"rapl/package": ("cpu", 60.0), "rapl/dram": ("memory", 6.0)}
    assert snapshot.find("hw.host.energy") == [
        ({"hw.id": "acpi/platform", "node_name": "n1"}, 180.0)
    ]
    assert snapshot.find("hw.host.power")[0][1] == 45.0
    assert [v for _, v in snapshot.find("kepler.node.platform.joules")] == [180.0]
    plain = Converter(node_resource("n1"), 1, "n1", node_totals=True)
    assert not plain.convert(Batch(10**9, 2.0, "n1", list(readings))).find("hw.energy")

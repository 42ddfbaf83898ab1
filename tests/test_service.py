"""The service: a failing receiver costs its own data only; self-telemetry; OTLP settings.

Ticks are driven by hand, a millisecond apart, so rapl's plausibility ceiling
(max_watts) is raised: joules added between two such ticks are not a counter jump.
"""

from __future__ import annotations

import gzip
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from otel_kepler.config import parse
from otel_kepler.registry import default_registry
from otel_kepler.service import Service
from tests.peers import OtlpGrpcSink, OtlpHttpSink, TlsCert
from tests.sysfs_fixtures import RaplTree

ROOT = Path(__file__).resolve().parent.parent
STAT = "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\n"


def fixture_procfs(root: Path) -> Path:
    """A /proc with only stat: the node usage ratio, no processes."""
    root.mkdir()
    (root / "stat").write_text(STAT)
    return root


def service_for(text: str) -> Service:
    service = Service(parse(text, default_registry()))
    service.start()
    return service


def test_a_failing_receiver_costs_its_own_data_only(
    tmp_path: Path, otlp_http_sink: OtlpHttpSink, caplog: pytest.LogCaptureFixture
) -> None:
    tree = RaplTree(tmp_path / "sys")
    tree.add_socket()
    procfs = fixture_procfs(tmp_path / "proc")
    service = service_for(
        f"""
host: {{procfs: {procfs}, sysfs: {tree.sysfs}, node_name: n1}}
receivers: {{rapl: {{max_watts: 1.0e+12}}, procfs: {{}}}}
processors: {{attribution: {{}}}}
exporters: {{otlphttp: {{metrics_endpoint: "{otlp_http_sink.metrics_url}"}}}}
service:
  interval: 1s
  pipelines:
    metrics: {{receivers: [rapl, procfs], processors: [attribution], exporters: [otlphttp]}}
"""
    )
    try:
        service.tick()
        (procfs / "stat").unlink()  # procfs now fails on every tick
        with caplog.at_level(logging.ERROR):
            for _ in range(3):
                tree.advance("intel-rapl:0", 10.0)
                service.tick()
    finally:
        service.shutdown()
    assert service.receiver_errors == {"rapl": 0, "procfs": 3}
    logged = [r.getMessage() for r in caplog.records if r.name == "otel_kepler.service"]
    assert logged == [
        f"receiver procfs: ComponentError: cannot read {procfs}/stat: No such file or directory"
    ]
    totals = [p.value for p in otlp_http_sink.metric_points("kepler.node.cpu.joules")]
    assert totals == pytest.approx([10.0, 20.0, 30.0], rel=1e-4)  # RAPL energy units
    errors = otlp_http_sink.metric_points("otel_kepler.agent.receiver.errors")
    last = {p.attributes["receiver"]: p.value for p in errors[-2:]}
    assert last == {"rapl": 0, "procfs": 3}
    rss = otlp_http_sink.metric_points("otel_kepler.agent.memory.rss")
    assert 10e6 < rss[-1].value < 1e9
    assert otlp_http_sink.metric_points("otel_kepler.agent.cpu.seconds")[-1].value > 0


def test_otlp_headers_compression_and_resource_from_config_and_environment(
    tmp_path: Path, otlp_http_sink: OtlpHttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = RaplTree(tmp_path / "sys")
    tree.add_socket()
    monkeypatch.setenv("OTLP_TOKEN", "s3cret-token")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,team=green")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-from-env=yes")
    service = service_for(
        f"""
host: {{sysfs: {tree.sysfs}, node_name: n1}}
receivers: {{rapl: {{max_watts: 1.0e+12}}}}
processors: {{attribution: {{}}}}
exporters:
  otlphttp:
    endpoint: "{otlp_http_sink.url}"
    compression: gzip
    headers:
      authorization: "Bearer ${{env:OTLP_TOKEN}}"
service:
  interval: 1s
  pipelines:
    metrics: {{receivers: [rapl], processors: [attribution], exporters: [otlphttp]}}
"""
    )
    try:
        service.tick()
        tree.advance("intel-rapl:0", 5.0)
        service.tick()
    finally:
        service.shutdown()
    call = otlp_http_sink.calls[-1]
    assert call.headers["authorization"] == "Bearer s3cret-token"
    assert call.headers["content-encoding"] == "gzip"
    assert gzip.decompress(call.raw)  # the body really is gzip
    point = otlp_http_sink.metric_points("kepler.node.cpu.joules")[-1]
    assert point.value == pytest.approx(5.0, rel=1e-4)
    assert point.resource["deployment.environment"] == "test"
    assert point.resource["team"] == "green"
    assert point.resource["service.name"] == "otel-kepler"


def test_otlp_environment_fills_what_the_config_leaves_out(
    tmp_path: Path, otlp_http_sink: OtlpHttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = RaplTree(tmp_path / "sys")
    tree.add_socket()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http_sink.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=green")
    service = service_for(
        f"""
host: {{sysfs: {tree.sysfs}}}
receivers: {{rapl: {{max_watts: 1.0e+12}}}}
processors: {{attribution: {{}}}}
exporters: {{otlphttp: {{}}}}
service:
  pipelines:
    metrics: {{receivers: [rapl], processors: [attribution], exporters: [otlphttp]}}
"""
    )
    try:
        service.tick()
    finally:
        service.shutdown()
    assert otlp_http_sink.calls[-1].headers["x-team"] == "green"


def test_secrets_are_never_logged(tmp_path: Path, otlp_http_sink: OtlpHttpSink) -> None:
    """A failing backend is logged, and the header values are not."""
    otlp_http_sink.respond_error(401)
    tree = RaplTree(tmp_path / "sys")
    tree.add_socket()
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""
host: {{sysfs: {tree.sysfs}}}
receivers: {{rapl: {{max_watts: 1.0e+12}}}}
processors: {{attribution: {{}}}}
exporters:
  otlphttp:
    metrics_endpoint: "{otlp_http_sink.metrics_url}"
    headers: {{authorization: "${{env:OTLP_TOKEN}}"}}
service:
  interval: 200ms
  telemetry: {{logs: {{level: debug}}}}
  pipelines:
    metrics: {{receivers: [rapl], processors: [attribution], exporters: [otlphttp]}}
"""
    )
    env = dict(os.environ, OTLP_TOKEN="Bearer top-secret-value")
    result = subprocess.run(
        [sys.executable, "-m", "otel_kepler.cli", "run", "--config", str(config)]
        + ["--duration", "1s"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert otlp_http_sink.calls, "the exporter never reached the sink"
    assert otlp_http_sink.calls[0].headers["authorization"] == "Bearer top-secret-value"
    assert "export failed" in result.stderr
    assert "top-secret-value" not in result.stderr + result.stdout


def test_doctor_names_what_is_missing(tmp_path: Path) -> None:
    tree = RaplTree(tmp_path / "sys")
    tree.add_socket(dram=True)
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""
host: {{sysfs: {tree.sysfs}, procfs: {tmp_path / "noproc"}}}
receivers: {{rapl: {{max_watts: 1.0e+12}}}}
exporters: {{debug: {{}}}}
service: {{pipelines: {{metrics: {{receivers: [rapl], exporters: [debug]}}}}}}
"""
    )
    result = subprocess.run(
        [sys.executable, "-m", "otel_kepler.cli", "doctor", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in result.stdout.splitlines()[1:]}
    assert rows["rapl"] == ["yes", f"dram (1 socket), package (1 socket) under {tree.powercap}"]
    assert rows["procfs"][0] == "no"
    assert f"{tmp_path / 'noproc'}/stat" in rows["procfs"][1]
    assert rows["estimator"][0] == "no"


def two_ticks_with_3_joules(tmp_path: Path, exporter: str) -> Service:
    """A rapl pipeline exporting to ``exporter`` (its YAML): prime, 3 J, shut down."""
    tree = RaplTree(tmp_path / "sys")
    tree.add_socket()
    exporter_id = exporter.split(":")[0]
    service = service_for(
        f"""
host: {{sysfs: {tree.sysfs}}}
receivers: {{rapl: {{max_watts: 1.0e+12}}}}
processors: {{attribution: {{}}}}
exporters: {{{exporter}}}
service:
  pipelines:
    metrics: {{receivers: [rapl], processors: [attribution], exporters: [{exporter_id}]}}
"""
    )
    try:
        service.tick()
        tree.advance("intel-rapl:0", 3.0)
        service.tick()
    finally:
        service.shutdown()
    return service


def test_otlphttp_over_tls_with_a_ca_file(tmp_path: Path, tls_cert: TlsCert) -> None:
    """The configured CA is used even where REQUESTS_CA_BUNDLE points elsewhere (this VM)."""
    os.environ.setdefault("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    with OtlpHttpSink(tls=tls_cert) as sink:
        exporter = f'otlphttp: {{endpoint: "{sink.url}", tls: {{ca_file: "{tls_cert.cert_file}"}}}}'
        service = two_ticks_with_3_joules(tmp_path, exporter)
        assert sink.url.startswith("https://")
        joules = sink.metric_points("kepler.node.cpu.joules")[-1].value
    assert joules == pytest.approx(3.0, rel=1e-4)
    assert service.workers["otlphttp"].failed == 0


def test_otlp_grpc_over_tls_with_a_ca_file(tmp_path: Path, tls_cert: TlsCert) -> None:
    with OtlpGrpcSink(tls=tls_cert) as sink:
        exporter = (
            f'otlp: {{endpoint: "{sink.endpoint}", tls: {{ca_file: "{tls_cert.cert_file}"}}}}'
        )
        service = two_ticks_with_3_joules(tmp_path, exporter)
        joules = sink.metric_points("kepler.node.cpu.joules")[-1].value
    assert joules == pytest.approx(3.0, rel=1e-4)
    assert service.workers["otlp"].failed == 0

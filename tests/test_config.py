"""Config loading: every error names its path and stops the agent before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from otel_kepler.config import parse
from otel_kepler.config_schema import config_schema
from otel_kepler.registry import default_registry
from otel_kepler.schema import ConfigError

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
host: {procfs: /proc, sysfs: /sys, node_name: n1}
receivers:
  procfs: {}
  estimator: {idle_watts: 10, max_watts: 50}
processors:
  attribution: {levels: [node, container]}
exporters:
  otlphttp/backup: {endpoint: "http://127.0.0.1:4318", compression: gzip, timeout: 3s}
  prometheus: {endpoint: "127.0.0.1:9999"}
service:
  interval: 500ms
  pipelines:
    metrics:
      receivers: [procfs, estimator]
      processors: [attribution]
      exporters: [otlphttp/backup, prometheus]
"""


def load(text: str) -> object:
    return parse(text, default_registry())


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(text)
    return str(err.value)


def with_(path: str, value: object, base: str = GOOD) -> str:
    """GOOD with one dotted path set to value (None deletes it)."""
    doc = yaml.safe_load(base)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return yaml.safe_dump(doc)


def test_a_good_config_loads_with_types_and_defaults() -> None:
    config = load(GOOD)
    assert config.service.interval == 0.5  # type: ignore[attr-defined]
    assert config.host.node_name == "n1"  # type: ignore[attr-defined]
    backup = config.exporters["otlphttp/backup"]  # type: ignore[attr-defined]
    assert backup.type == "otlphttp"
    assert backup.config.timeout == 3.0
    assert backup.config.sending_queue.queue_size == 10
    attribution = config.processors["attribution"].config  # type: ignore[attr-defined]
    assert attribution.levels == ["node", "container"]
    assert attribution.max_terminated == 500


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            with_("recievers", {}),
            "recievers: unknown section (known: exporters, host, processors, receivers, service)",
        ),
        (
            with_("exporters.otlphttp/backup.endpont", "x"),
            "exporters.otlphttp/backup.endpont: unknown key (known keys: compression, endpoint, "
            "headers, metrics_endpoint, sending_queue, timeout, tls)",
        ),
        (
            with_("receivers.nosuch", {}),
            'receivers.nosuch: unknown receiver type "nosuch" (known: '
            + ", ".join(sorted(default_registry().factories("receivers")))
            + ")",
        ),
        (
            with_("receivers.Rapl!", {}),
            'receivers.Rapl!: a component id is "type" or "type/name"',
        ),
        (
            with_("exporters.debug", {}),
            "exporters.debug: is defined but no pipeline uses it",
        ),
        (
            with_("service.pipelines.metrics.exporters", ["prometheus", "otlp"]),
            'service.pipelines.metrics.exporters[1]: "otlp" is not defined under exporters',
        ),
        (
            with_("service.pipelines.metrics.receivers", ["procfs", "procfs", "estimator"]),
            'service.pipelines.metrics.receivers[1]: "procfs" is listed twice',
        ),
        (
            with_("service.interval", "fast"),
            "service.interval: expected a duration like 500ms, 5s or 1m, got 'fast'",
        ),
        (with_("service.interval", "10ms"), "service.interval: must be at least 100ms, got 0.01s"),
        (with_("service", None), "service: is required (it lists the pipelines)"),
        (
            with_("service.pipelines.metrics.exporters", []),
            "service.pipelines.metrics.exporters: a pipeline needs at least one exporter",
        ),
        (
            with_("service.pipelines.traces", {"receivers": ["procfs"], "exporters": ["x"]}),
            'service.pipelines.traces: pipeline names are "metrics" or "metrics/<name>"',
        ),
        (
            with_("exporters.prometheus.endpoint", "nope"),
            "exporters.prometheus.endpoint: expected \"host:port\", got 'nope'",
        ),
        (
            with_("exporters.otlphttp/backup.endpoint", "collector:4318"),
            "exporters.otlphttp/backup.endpoint: must be an http:// or https:// URL, "
            "got 'collector:4318'",
        ),
        (
            with_("exporters.otlphttp/backup.compression", "zstd"),
            "exporters.otlphttp/backup.compression: must be one of 'gzip', 'none', got 'zstd'",
        ),
        (
            with_("exporters.otlphttp/backup.tls", {"ca_file": "/nonexistent/ca.pem"}),
            "exporters.otlphttp/backup.tls.ca_file: no such file: /nonexistent/ca.pem",
        ),
        (
            with_("processors.attribution.levels", "node"),
            "processors.attribution.levels: expected a list, got a string",
        ),
        (
            with_("exporters.otlphttp/backup.sending_queue", {"queue_size": 0}),
            "exporters.otlphttp/backup.sending_queue.queue_size: must be at least 1",
        ),
        (with_("host.procfs", ["a"]), "host.procfs: expected a string, got a list"),
        (
            with_("service.telemetry", {"logs": {"level": "loud"}}),
            "service.telemetry.logs.level: must be one of 'debug', 'info', 'warning', 'error', "
            "got 'loud'",
        ),
    ],
)
def test_each_error_names_its_path(text: str, message: str) -> None:
    assert error_of(text) == message


def test_malformed_yaml_reports_line_and_column() -> None:
    text = "service:\n  interval: 5s\n  pipelines: [a\n receivers: {}\n"
    message = error_of(text)
    assert message == "<config>:4:11: invalid YAML: expected ',' or ']', but got ':'"


def test_env_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OK_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OK_PORT", "9200")
    monkeypatch.delenv("OK_UNSET", raising=False)
    text = (
        GOOD.replace('"http://127.0.0.1:4318"', '"${env:OK_ENDPOINT}"')
        .replace("interval: 500ms", "interval: ${env:OK_UNSET:-2s}")
        .replace("node_name: n1", 'node_name: "node-$${literal}-${env:OK_PORT}"')
    )
    config = load(text)
    assert config.exporters["otlphttp/backup"].config.endpoint == "http://127.0.0.1:4318"  # type: ignore[attr-defined]
    assert config.service.interval == 2.0  # type: ignore[attr-defined]
    assert config.host.node_name == "node-${literal}-9200"  # type: ignore[attr-defined]
    typed = load(GOOD.replace("max_watts: 50", 'max_watts: "${env:OK_PORT}"'))
    assert typed.receivers["estimator"].config.max_watts == 9200.0  # type: ignore[attr-defined]


def test_missing_env_variable_names_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OK_MISSING", raising=False)
    text = GOOD.replace('"http://127.0.0.1:4318"', '"${env:OK_MISSING}"')
    assert error_of(text) == (
        "exporters.otlphttp/backup.endpoint: environment variable OK_MISSING is not set"
    )


def test_schema_validates_the_shipped_configs_and_rejects_unknown_keys() -> None:
    schema = config_schema(default_registry())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        errors = [e.message for e in validator.iter_errors(doc)]
        assert errors == [], f"{path.name}: {errors}"
    bad = yaml.safe_load(with_("exporters.otlphttp/backup.endpont", "x"))
    assert list(validator.iter_errors(bad)), "an unknown key must fail the schema"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otel_kepler.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_validate_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    result = run_cli("validate", "--config", str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{good}: valid (metrics)\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text(with_("service.interval", "fast"))
    result = run_cli("validate", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr == (
        "otel-kepler: config error: service.interval: expected a duration like 500ms, 5s or 1m, "
        "got 'fast'\n"
    )
    missing = run_cli("validate", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert "cannot read config file" in missing.stderr and "No such file" in missing.stderr


def test_components_and_schema_commands() -> None:
    result = run_cli("components")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    for ctype in ("rapl", "procfs", "estimator", "nvml", "attribution", "otlp", "prometheus"):
        assert any(line.split()[0] == ctype for line in lines if line.startswith("  ")), ctype
    assert "broken plugin" not in result.stdout
    schema = json.loads(run_cli("schema").stdout)
    assert schema["required"] == ["service"]
    assert "^rapl(/[A-Za-z0-9_.\\-]+)?$" in schema["properties"]["receivers"]["patternProperties"]

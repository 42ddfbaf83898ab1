"""Exporter settings are checked when the config is loaded: one line naming the path."""

from __future__ import annotations

import pytest

from otel_kepler.config import parse
from otel_kepler.registry import default_registry
from otel_kepler.schema import ConfigError

BASE = """
receivers: {{estimator: {{}}}}
exporters:
  {exporter}
service:
  pipelines:
    metrics: {{receivers: [estimator], exporters: [{name}]}}
"""


def load(name: str, body: str) -> None:
    parse(BASE.format(exporter=f"{name}: {body}", name=name), default_registry())


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        (
            "otlphttp",
            '{endpoint: "collector:4318"}',
            "exporters.otlphttp.endpoint: must be an http:// or https:// URL, got 'collector:4318'",
        ),
        (
            "otlphttp",
            '{endpoint: "http://collector:99999"}',
            "exporters.otlphttp.endpoint: port must be a number 1 to 65535, "
            "got 'http://collector:99999'",
        ),
        (
            "otlp",
            '{endpoint: "a/b/c"}',
            "exporters.otlp.endpoint: expected host:port",
        ),
        (
            "otlphttp",
            '{endpoint: "http://c:4318", headers: {x-key: "a\\nb"}}',
            "exporters.otlphttp.headers.x-key: the value has a line feed (LF) at position 1",
        ),
        (
            "otlp",
            '{endpoint: "c:4317", headers: {"grpc-timeout": "1"}}',
            "exporters.otlp.headers.grpc-timeout: keys starting with grpc- are reserved by gRPC",
        ),
        (
            "otlphttp",
            '{endpoint: "http://c:4318", compression: zstd}',
            "exporters.otlphttp.compression: must be one of 'gzip', 'none', got 'zstd'",
        ),
        (
            "otlphttp",
            '{endpoint: "http://c:4318", sending_queue: {queue_size: 0}}',
            "exporters.otlphttp.sending_queue.queue_size: must be at least 1",
        ),
        (
            "otlphttp",
            '{endpoint: "http://c:4318", retry_on_failure: {initial_interval: 10s, '
            "max_interval: 1s}}",
            "exporters.otlphttp.retry_on_failure.max_interval: must be at least initial_interval",
        ),
        (
            "otlphttp",
            '{endpoint: "http://c:4318", temporality: sometimes}',
            "exporters.otlphttp.temporality: must be one of 'cumulative', 'delta', got 'sometimes'",
        ),
        (
            "prometheus",
            '{endpoint: "0.0.0.0:70000"}',
            "exporters.prometheus.endpoint: port must be 1 to 65535, got 70000",
        ),
        ("prometheus", "{max_workers: 0}", "exporters.prometheus.max_workers: must be at least 1"),
    ],
)
def test_bad_exporter_settings_are_named(name: str, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(name, body)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_good_exporter_settings_load() -> None:
    load("otlp", '{endpoint: "https://[::1]:4317", headers: {x-team: a}, temporality: delta}')
    load("otlphttp", '{endpoint: "https://c.example", interval: 15s, timeout: 3s}')
    load("prometheus", '{endpoint: ":9102", request_timeout: 2s, idle_timeout: 5s}')

"""Configuration of the ``otlp`` (gRPC) and ``otlphttp`` exporters.

Settings left out of the config fall through to the standard
``OTEL_EXPORTER_OTLP_*`` environment variables as the specification defines
them (the ``_METRICS_`` variant first, then the general one). Header values are
secrets (API keys): they come from ``${env:...}``, ``${file:...}`` or
``OTEL_EXPORTER_OTLP_HEADERS`` and are never logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from otel_kepler import endpoints
from otel_kepler.schema import ConfigError, Duration

Temporality = Literal["cumulative", "delta"]


@dataclass
class TlsConfig:
    insecure: bool | None = field(
        default=None,
        metadata={"doc": "gRPC: plaintext instead of TLS (default: from the endpoint's scheme)"},
    )
    ca_file: str | None = field(default=None, metadata={"doc": "CA bundle to verify the server"})
    cert_file: str | None = field(default=None, metadata={"doc": "client certificate (mTLS)"})
    key_file: str | None = field(default=None, metadata={"doc": "client key (mTLS)"})

    def validate(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("cert_file", "cert_file and key_file go together")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ConfigError(name, f"no such file: {path}")


@dataclass
class SendingQueueConfig:
    enabled: bool = field(
        default=True, metadata={"doc": "send from a background thread behind a queue"}
    )
    queue_size: int = field(
        default=10,
        metadata={"doc": "batches held while the backend is slow or down; the oldest is dropped"},
    )

    def validate(self) -> None:
        if self.queue_size < 1:
            raise ConfigError("queue_size", "must be at least 1")


@dataclass
class RetryConfig:
    enabled: bool = field(default=True, metadata={"doc": "retry retryable failures"})
    initial_interval: Duration = field(
        default=Duration(5.0), metadata={"doc": "wait before the first retry"}
    )
    max_interval: Duration = field(
        default=Duration(30.0), metadata={"doc": "longest wait between retries"}
    )
    max_elapsed_time: Duration = field(
        default=Duration(300.0),
        metadata={"doc": "give a batch up after this long (0: until a newer batch supersedes it)"},
    )

    def validate(self) -> None:
        if self.initial_interval <= 0:
            raise ConfigError("initial_interval", "must be more than 0")
        if self.max_interval < self.initial_interval:
            raise ConfigError("max_interval", "must be at least initial_interval")


@dataclass
class _CommonConfig:
    tls: TlsConfig = field(default_factory=TlsConfig)
    headers: dict[str, str] = field(
        default_factory=dict,
        metadata={"doc": "request headers; use ${env:VAR} or ${file:path} for secrets"},
    )
    compression: Literal["gzip", "none"] | None = field(
        default=None,
        metadata={"doc": "gzip or none (default: OTEL_EXPORTER_OTLP_COMPRESSION, else gzip)"},
    )
    timeout: Duration | None = field(
        default=None,
        metadata={"doc": "deadline of one request (default: OTEL_EXPORTER_OTLP_TIMEOUT, else 10s)"},
    )
    temporality: Temporality | None = field(
        default=None,
        metadata={
            "doc": "cumulative or delta sums (default: "
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE, else cumulative)"
        },
    )
    interval: Duration | None = field(
        default=None,
        metadata={"doc": "push at most this often (default: every tick)"},
    )
    sending_queue: SendingQueueConfig = field(default_factory=SendingQueueConfig)
    retry_on_failure: RetryConfig = field(default_factory=RetryConfig)

    def _validate_common(self, grpc: bool) -> None:
        endpoints.check_headers(self.headers, field="headers", grpc=grpc)
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError("timeout", "must be more than 0")


@dataclass
class OtlpGrpcConfig(_CommonConfig):
    """OTLP over gRPC."""

    endpoint: str | None = field(
        default=None,
        metadata={"doc": "host:port or http(s)://host:port (default: OTEL_EXPORTER_OTLP_*)"},
    )

    def validate(self) -> None:
        self._validate_common(grpc=True)
        if self.endpoint is not None:
            endpoints.grpc_endpoint(self.endpoint, field="endpoint")


@dataclass
class OtlpHttpConfig(_CommonConfig):
    """OTLP over HTTP with protobuf bodies."""

    endpoint: str | None = field(
        default=None, metadata={"doc": "base URL; /v1/metrics is appended"}
    )
    metrics_endpoint: str | None = field(
        default=None, metadata={"doc": "full URL of the metrics endpoint, used as is"}
    )

    def validate(self) -> None:
        self._validate_common(grpc=False)
        for name in ("endpoint", "metrics_endpoint"):
            url = getattr(self, name)
            if url is not None:
                endpoints.http_url(url, field=name)

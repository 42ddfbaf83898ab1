"""``otlp`` (gRPC) and ``otlphttp`` exporters, through opentelemetry-exporter-otlp.

Settings left out of the config fall through to the standard
``OTEL_EXPORTER_OTLP_*`` environment variables, exactly as the SDK reads them.
Header values are secrets (API keys): they come from ``${env:...}`` or a
file and are never logged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.sdk.metrics.export import MetricExportResult, MetricsData

from otel_kepler.component import ComponentError, Exporter, Factory, HostSettings
from otel_kepler.schema import ConfigError, Duration

log = logging.getLogger(__name__)


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
    queue_size: int = field(
        default=10, metadata={"doc": "batches held while the backend is slow; oldest dropped"}
    )

    def validate(self) -> None:
        if self.queue_size < 1:
            raise ConfigError("queue_size", "must be at least 1")


@dataclass
class _CommonConfig:
    tls: TlsConfig = field(default_factory=TlsConfig)
    headers: dict[str, str] = field(
        default_factory=dict, metadata={"doc": "request headers; use ${env:VAR} for secrets"}
    )
    compression: Literal["gzip", "none"] | None = field(
        default=None, metadata={"doc": "gzip or none (default: OTEL_EXPORTER_OTLP_COMPRESSION)"}
    )
    timeout: Duration | None = field(
        default=None, metadata={"doc": "per-export deadline, retries included (default 10s)"}
    )
    sending_queue: SendingQueueConfig = field(default_factory=SendingQueueConfig)


@dataclass
class OtlpGrpcConfig(_CommonConfig):
    """OTLP over gRPC."""

    endpoint: str | None = field(
        default=None,
        metadata={"doc": "host:port or http(s)://host:port (default: OTEL_EXPORTER_OTLP_*)"},
    )


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
        for name in ("endpoint", "metrics_endpoint"):
            url = getattr(self, name)
            if url is not None and not url.startswith(("http://", "https://")):
                raise ConfigError(name, f"must be an http:// or https:// URL, got {url!r}")


class OtlpExporter(Exporter):
    """Wraps one SDK OTLP exporter; raises when a batch could not be delivered."""

    def __init__(self, name: str, sdk_exporter: Any, timeout: float | None) -> None:
        self.name = name
        self.sdk_exporter = sdk_exporter
        self.timeout_millis = (timeout or 10.0) * 1000.0

    def export(self, data: MetricsData, pipeline: str) -> None:
        result = self.sdk_exporter.export(data, timeout_millis=self.timeout_millis)
        if result is not MetricExportResult.SUCCESS:
            raise ComponentError(f"{self.name}: the backend did not accept the batch")

    def shutdown(self) -> None:
        self.sdk_exporter.shutdown(timeout_millis=1000)


def _grpc_compression(value: str | None) -> Any:
    if value is None:
        return None
    from grpc import Compression

    return Compression.Gzip if value == "gzip" else Compression.NoCompression


def create_grpc(name: str, config: OtlpGrpcConfig, host: HostSettings) -> OtlpExporter:
    credentials = None
    if config.tls.ca_file or config.tls.cert_file:
        import grpc

        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(config.tls.ca_file),
            private_key=_read(config.tls.key_file),
            certificate_chain=_read(config.tls.cert_file),
        )
    exporter = GrpcMetricExporter(
        endpoint=config.endpoint,
        insecure=config.tls.insecure,
        credentials=credentials,
        headers=config.headers or None,
        timeout=float(config.timeout) if config.timeout is not None else None,
        compression=_grpc_compression(config.compression),
    )
    return OtlpExporter(name, exporter, config.timeout)


def create_http(name: str, config: OtlpHttpConfig, host: HostSettings) -> OtlpExporter:
    endpoint = config.metrics_endpoint
    if endpoint is None and config.endpoint is not None:
        endpoint = config.endpoint.rstrip("/") + "/v1/metrics"
    compression = None
    if config.compression is not None:
        compression = (
            HttpCompression.Gzip
            if config.compression == "gzip"
            else (HttpCompression.NoCompression)
        )
    exporter = HttpMetricExporter(
        endpoint=endpoint,
        session=_session_for(endpoint) if config.tls.ca_file else None,
        certificate_file=config.tls.ca_file,
        client_certificate_file=config.tls.cert_file,
        client_key_file=config.tls.key_file,
        headers=config.headers or None,
        timeout=float(config.timeout) if config.timeout is not None else None,
        compression=compression,
    )
    return OtlpExporter(name, exporter, config.timeout)


def _session_for(endpoint: str | None) -> Any:
    """A requests session that keeps the configured CA file.

    requests lets REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE override a session's CA
    (psf/requests#3829), which would silently replace ``tls.ca_file``. This
    session does not read its TLS settings from the environment; proxies from
    the environment still apply.
    """
    import requests

    session = requests.Session()
    session.trust_env = False
    session.proxies.update(requests.utils.get_environ_proxies(endpoint or ""))
    return session


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


grpc_factory = Factory(
    type="otlp",
    description="Pushes metrics as OTLP over gRPC (opentelemetry-exporter-otlp)",
    config_class=OtlpGrpcConfig,
    create=create_grpc,
)
http_factory = Factory(
    type="otlphttp",
    description="Pushes metrics as OTLP over HTTP/protobuf (opentelemetry-exporter-otlp)",
    config_class=OtlpHttpConfig,
    create=create_http,
)

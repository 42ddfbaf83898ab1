"""The exporters' effective settings: the config first, then ``OTEL_EXPORTER_OTLP_*``.

For each setting the signal-specific variable (``OTEL_EXPORTER_OTLP_METRICS_*``)
wins over the general one, as the specification defines. Timeouts in the
variables are milliseconds. ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``
takes ``cumulative``, ``delta`` or ``lowmemory`` (every sum this agent exports is
a monotonic counter, so ``lowmemory`` means delta here).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from opentelemetry.util.re import parse_env_headers

from otel_kepler import endpoints
from otel_kepler.exporters.otlp.config import OtlpGrpcConfig, OtlpHttpConfig, _CommonConfig
from otel_kepler.schema import ConfigError

log = logging.getLogger(__name__)

PREFIX = "OTEL_EXPORTER_OTLP_"


@dataclass(frozen=True)
class _Common:
    headers: dict[str, str]
    timeout: float
    gzip: bool
    temporality: str
    ca_file: str | None
    cert_file: str | None
    key_file: str | None


@dataclass(frozen=True)
class HttpSettings(_Common):
    url: str = ""


@dataclass(frozen=True)
class GrpcSettings(_Common):
    target: str = ""
    insecure: bool = True
    metadata: tuple[tuple[str, str], ...] = field(default=())


def env(name: str) -> str | None:
    """``OTEL_EXPORTER_OTLP_METRICS_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``."""
    for var in (f"{PREFIX}METRICS_{name}", f"{PREFIX}{name}"):
        value = os.environ.get(var)
        if value is not None and value.strip() != "":
            return value.strip()
    return None


def _which(name: str) -> str:
    specific = f"{PREFIX}METRICS_{name}"
    return specific if os.environ.get(specific, "").strip() else f"{PREFIX}{name}"


def temporality_preference(configured: str | None) -> str:
    if configured is not None:
        return configured
    value = os.environ.get(f"{PREFIX}METRICS_TEMPORALITY_PREFERENCE", "").strip().lower()
    if value in ("", "cumulative"):
        return "cumulative"
    if value in ("delta", "lowmemory"):
        return "delta"
    log.warning(
        "%sMETRICS_TEMPORALITY_PREFERENCE=%r is not cumulative, delta or lowmemory; "
        "using cumulative",
        PREFIX,
        value,
    )
    return "cumulative"


def _common(config: _CommonConfig, grpc: bool) -> _Common:
    headers: dict[str, str] = {}
    raw = env("HEADERS")
    if raw:
        try:
            headers = endpoints.check_headers(
                dict(parse_env_headers(raw, liberal=True)), field=_which("HEADERS"), grpc=grpc
            )
        except ConfigError as err:
            raise ValueError(str(err)) from None
    headers.update(endpoints.check_headers(config.headers, grpc=grpc))
    timeout = 10.0
    if config.timeout is not None:
        timeout = float(config.timeout)
    elif (raw := env("TIMEOUT")) is not None:
        try:
            timeout = float(raw) / 1000.0
        except ValueError:
            raise ValueError(
                f"{_which('TIMEOUT')}: not a number of milliseconds: {raw!r}"
            ) from None
        if timeout <= 0:
            raise ValueError(f"{_which('TIMEOUT')}: must be more than 0")
    compression = config.compression or (env("COMPRESSION") or "gzip").lower()
    if compression not in ("gzip", "none"):
        raise ValueError(f"{_which('COMPRESSION')}: must be gzip or none, got {compression!r}")
    tls = config.tls
    return _Common(
        headers=headers,
        timeout=timeout,
        gzip=compression == "gzip",
        temporality=temporality_preference(config.temporality),
        ca_file=tls.ca_file or env("CERTIFICATE"),
        cert_file=tls.cert_file or env("CLIENT_CERTIFICATE"),
        key_file=tls.key_file or env("CLIENT_KEY"),
    )


def resolve_http(config: OtlpHttpConfig) -> HttpSettings:
    common = _common(config, grpc=False)
    if config.metrics_endpoint is not None:
        url = config.metrics_endpoint
    elif config.endpoint is not None:
        url = config.endpoint.rstrip("/") + "/v1/metrics"
    elif (specific := os.environ.get(f"{PREFIX}METRICS_ENDPOINT", "").strip()) != "":
        url = _checked_url(specific, f"{PREFIX}METRICS_ENDPOINT")
    elif (general := os.environ.get(f"{PREFIX}ENDPOINT", "").strip()) != "":
        url = _checked_url(general, f"{PREFIX}ENDPOINT").rstrip("/") + "/v1/metrics"
    else:
        url = "http://localhost:4318/v1/metrics"
    return HttpSettings(**common.__dict__, url=url)


def resolve_grpc(config: OtlpGrpcConfig) -> GrpcSettings:
    common = _common(config, grpc=True)
    endpoint = config.endpoint
    where = "endpoint"
    if endpoint is None:
        endpoint = env("ENDPOINT")
        where = _which("ENDPOINT")
    if endpoint is None:
        endpoint, where = "http://localhost:4317", "the default endpoint"
    try:
        checked = endpoints.grpc_endpoint(endpoint, field=where)
    except ConfigError as err:
        raise ValueError(str(err)) from None
    target = checked.hostport
    insecure = None if checked.secure is None else not checked.secure
    if config.tls.insecure is not None:
        insecure = config.tls.insecure
    elif insecure is None:
        flag = env("INSECURE")
        if flag is not None:
            insecure = flag.lower() == "true"
        else:  # no scheme: TLS when a CA or client certificate is configured
            insecure = not (common.ca_file or common.cert_file)
    metadata = tuple(common.headers.items())
    return GrpcSettings(**common.__dict__, target=target, insecure=insecure, metadata=metadata)


def _checked_url(url: str, variable: str) -> str:
    try:
        endpoints.http_url(url, field=variable)
    except ConfigError as err:
        raise ValueError(str(err)) from None
    return url

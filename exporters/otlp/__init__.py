"""``otlp`` (gRPC) and ``otlphttp`` exporters: OTLP built from opentelemetry-proto's classes.

Requests are encoded by :mod:`.encoder` (cached per resource, see there) and sent
through grpcio (the MetricsService ``Export`` method) or a requests session.
Failures are reported as :class:`~otel_kepler.component.ExportError` with what
the OTLP specification says about retrying them; the exporter worker
(:mod:`otel_kepler.exporting`) retries, splits and logs.

HTTP: 2xx is success (a partial success is logged once); 408, 429 and 5xx are
retryable, honouring Retry-After; 413 splits the batch; any other 4xx is permanent.
gRPC: CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and
DATA_LOSS are retryable, RESOURCE_EXHAUSTED when the server sends RetryInfo
(otherwise the request is split); every other status is permanent.
"""

from __future__ import annotations

import email.utils
import gzip
import logging
import os
import time
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)

from otel_kepler.component import ComponentError, Exporter, ExportError, Factory, HostSettings
from otel_kepler.exporters.otlp.config import OtlpGrpcConfig, OtlpHttpConfig
from otel_kepler.exporters.otlp.encoder import Encoder, Part
from otel_kepler.exporters.otlp.settings import (
    GrpcSettings,
    HttpSettings,
    resolve_grpc,
    resolve_http,
)
from otel_kepler.snapshot import Snapshot

log = logging.getLogger(__name__)

EXPORT_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
MAX_RECONNECT_BACKOFF_MS = 5000


#: gRPC servers refuse messages over 4 MiB unless configured otherwise (grpc-go, the
#: Collector and grpcio all default to it): requests are cut below that from the start.
GRPC_DEFAULT_MAX_BYTES = 4 * 1024 * 1024 - 64 * 1024


class _OtlpExporter(Exporter):
    """What both transports share: encoding, request size, delivery bookkeeping."""

    def __init__(self, name: str, temporality: str, max_request_bytes: int | None) -> None:
        self.name = name
        self.temporality = temporality
        #: one encoder a pipeline: each pipeline's snapshot has its own resources
        self.encoders: dict[str, Encoder] = {}
        self._partial_logged = False
        #: the largest request the backend is known to take (None: no limit known). A
        #: refusal for size lowers it, so later ticks are cut before they are sent.
        self.max_request_bytes = max_request_bytes

    def export(self, data: Snapshot, pipeline: str, timeout: float | None = None) -> None:
        encoder = self.encoders.get(pipeline)
        if encoder is None:
            encoder = self.encoders[pipeline] = Encoder(self.temporality)
        parts = encoder.encode(data)
        if not parts:
            return
        limit = self.settings.timeout if timeout is None else min(timeout, self.settings.timeout)
        for chunk in self._chunks(encoder, parts):
            body = b"".join(p.data for p in chunk)
            try:
                response = self._send(body, limit)
            except ExportError as err:
                if err.too_large and sum(len(p.blocks) for p in chunk) > 1:
                    self.max_request_bytes = max(1, len(body) // 2)
                raise
            encoder.delivered(chunk)
            self._partial(response)
        encoder.forget_unseen(data)

    def _chunks(self, encoder: Encoder, parts: list[Part]) -> list[list[Part]]:
        """The parts cut into requests under the known size limit, resources kept whole."""
        cap = self.max_request_bytes
        if cap is None:
            return [parts]
        chunks: list[list[Part]] = [[]]
        size = 0
        for whole in parts:
            # A part holds several resources; one over the limit is cut into resources.
            pieces = encoder.split(whole) if len(whole.data) > cap else [whole]
            for part in pieces:
                if chunks[-1] and size + len(part.data) > cap:
                    chunks.append([])
                    size = 0
                chunks[-1].append(part)
                size += len(part.data)
        return chunks

    settings: HttpSettings | GrpcSettings

    def _send(self, body: bytes, timeout: float) -> bytes:
        raise NotImplementedError

    def _partial(self, response: bytes) -> None:
        if not response:
            return
        try:
            parsed = ExportMetricsServiceResponse.FromString(response)
        except Exception:
            return
        rejected = parsed.partial_success.rejected_data_points
        if rejected and not self._partial_logged:
            self._partial_logged = True
            log.warning(
                "exporter %s: the backend rejected %d data points: %s",
                self.name,
                rejected,
                parsed.partial_success.error_message or "(no message)",
            )


class OtlpHttpExporter(_OtlpExporter):
    settings: HttpSettings

    def __init__(self, name: str, settings: HttpSettings) -> None:
        super().__init__(name, settings.temporality, None)
        self.settings = settings
        self._session: Any = None
        self._prepared: Any = None

    def start(self) -> None:
        import requests

        session = requests.Session()
        # requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE replace a session's CA: keep
        # the configured one; proxies from the environment still apply.
        session.trust_env = False
        session.proxies.update(requests.utils.get_environ_proxies(self.settings.url))
        session.verify = self.settings.ca_file or True
        if self.settings.cert_file and self.settings.key_file:
            session.cert = (self.settings.cert_file, self.settings.key_file)
        session.headers.update(
            {"Content-Type": "application/x-protobuf", "User-Agent": "otel-kepler"}
        )
        session.headers.update(self.settings.headers)
        if self.settings.gzip:
            session.headers["Content-Encoding"] = "gzip"
        self._session = session
        # prepared once (URL, headers, session cookies): each export only sets the body,
        # which spares requests' per-call merging of settings (a third of its cost)
        self._prepared = session.prepare_request(requests.Request("POST", self.settings.url))

    def _send(self, body: bytes, timeout: float) -> bytes:
        import requests

        if self.settings.gzip:
            body = gzip.compress(body, compresslevel=1)  # speed over size, as the Collector
        try:
            # timeout: the configured one, or less when shutdown's deadline is nearer
            request = self._prepared.copy()
            request.body = body
            request.headers["Content-Length"] = str(len(body))
            response = self._session.send(request, timeout=timeout)
        except requests.Timeout:
            raise ExportError(
                f"no answer from {self.settings.url} within {timeout:.3g} s", retryable=True
            ) from None
        except requests.RequestException as err:
            raise ExportError(f"{self.settings.url}: {_reason(err)}", retryable=True) from None
        status = response.status_code
        if 200 <= status < 300:
            return bytes(response.content)
        what = f"HTTP {status} from {self.settings.url}"
        if status == 413:
            raise ExportError(what + " (request too large)", retryable=False, too_large=True)
        if status in (408, 429) or status >= 500:
            after = retry_after(response.headers.get("Retry-After"))
            raise ExportError(what, retryable=True, retry_after=after)
        raise ExportError(what + _body_hint(response), retryable=False)

    def shutdown(self) -> None:
        if self._session is not None:
            self._session.close()


class OtlpGrpcExporter(_OtlpExporter):
    settings: GrpcSettings

    def __init__(self, name: str, settings: GrpcSettings) -> None:
        super().__init__(name, settings.temporality, GRPC_DEFAULT_MAX_BYTES)
        self.settings = settings
        self._channel: Any = None
        self._export: Any = None

    def start(self) -> None:
        # gRPC's C core writes its own lines to standard error (a backend restarting is
        # "Got goaway" at INFO); the exporter reports failures itself, once. A user's
        # GRPC_VERBOSITY still wins. Read when gRPC starts, so set before the import.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        import grpc

        s = self.settings
        options = [
            ("grpc.primary_user_agent", "otel-kepler"),
            # gRPC's reconnect backoff grows to 120 s by default: a backend back after a
            # long outage would wait that long. Every tick's batch tries anyway.
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ]
        compression = grpc.Compression.Gzip if s.gzip else grpc.Compression.NoCompression
        if s.insecure:
            self._channel = grpc.insecure_channel(s.target, options, compression)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(s.ca_file),
                private_key=_read(s.key_file),
                certificate_chain=_read(s.cert_file),
            )
            self._channel = grpc.secure_channel(s.target, credentials, options, compression)
        # The request is already serialized by the encoder: no serializer on the way out.
        self._export = self._channel.unary_unary(
            EXPORT_METHOD,
            request_serializer=None,
            response_deserializer=None,
        )

    def _send(self, body: bytes, timeout: float) -> bytes:
        import grpc

        s = self.settings
        try:
            response: bytes = self._export(body, timeout=timeout, metadata=s.metadata)
            return response
        except grpc.RpcError as err:
            raise _grpc_error(err, s.target) from None

    def shutdown(self) -> None:
        if self._channel is not None:
            self._channel.close()


_RETRYABLE_GRPC = {
    "CANCELLED",
    "DEADLINE_EXCEEDED",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNAVAILABLE",
    "DATA_LOSS",
}


def _grpc_error(err: Any, target: str) -> ExportError:
    code = err.code() if hasattr(err, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    details = err.details() if hasattr(err, "details") else ""
    message = f"gRPC {name} from {target}" + (f": {details}" if details else "")
    after = _grpc_retry_delay(err)
    if name in _RETRYABLE_GRPC:
        return ExportError(message, retryable=True, retry_after=after)
    if name == "RESOURCE_EXHAUSTED":
        if after is not None:
            return ExportError(message, retryable=True, retry_after=after)
        return ExportError(message, retryable=False, too_large=True)
    return ExportError(message, retryable=False)


def _grpc_retry_delay(err: Any) -> float | None:
    """The RetryInfo delay a server put in the status details, if any."""
    try:
        from google.rpc import error_details_pb2, status_pb2

        for key, value in err.trailing_metadata() or ():
            if key != "grpc-status-details-bin":
                continue
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    except Exception:
        return None
    return None


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), 3600.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min(when.timestamp() - time.time(), 3600.0))


def _reason(err: Exception) -> str:
    text = str(err)
    for marker in ("Connection refused", "Name or service not known", "Connection reset"):
        if marker in text:
            return marker.lower()
    if "closed connection without response" in text:  # http.client's RemoteDisconnected
        return "the connection was closed without an answer"
    return type(err).__name__


def _body_hint(response: Any) -> str:
    text = (response.text or "")[:200].strip().replace("\n", " ")
    return f": {text}" if text and text.isprintable() else ""


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def create_grpc(name: str, config: OtlpGrpcConfig, host: HostSettings) -> OtlpGrpcExporter:
    try:
        return OtlpGrpcExporter(name, resolve_grpc(config))
    except ValueError as err:
        raise ComponentError(str(err)) from None


def create_http(name: str, config: OtlpHttpConfig, host: HostSettings) -> OtlpHttpExporter:
    try:
        return OtlpHttpExporter(name, resolve_http(config))
    except ValueError as err:
        raise ComponentError(str(err)) from None


grpc_factory = Factory(
    type="otlp",
    description="Pushes metrics as OTLP over gRPC",
    config_class=OtlpGrpcConfig,
    create=create_grpc,
)
http_factory = Factory(
    type="otlphttp",
    description="Pushes metrics as OTLP over HTTP/protobuf",
    config_class=OtlpHttpConfig,
    create=create_http,
)

__all__ = ["Part", "grpc_factory", "http_factory", "retry_after"]

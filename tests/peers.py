# SPDX-License-Identifier: Apache-2.0
"""Real protocol peers for the tests, started by the tests themselves on 127.0.0.1.

- :class:`VictoriaMetrics`: OTLP/HTTP ingestion with ``-opentelemetry.usePrometheusNaming``,
  queried with PromQL.
- :class:`Prometheus`: scrapes the agent's pull endpoint, queried with PromQL.
- :class:`OtlpGrpcSink`: a grpcio server implementing opentelemetry-proto's MetricsService.
- :class:`OtlpHttpSink`: an http.server accepting OTLP/HTTP ``POST /v1/metrics``.

Each peer is a context manager (or ``start()``/``stop()``), listens on a free port of
127.0.0.1, keeps its state in a temporary folder, waits a bounded time until it is ready
and is always stopped at the end (also at interpreter exit; the binaries additionally get
SIGKILL when the test process dies, through ``setpriv --pdeathsig``).

The binaries come from ``scripts/install-test-deps.sh`` (Debian packages unpacked into
``.cache/peers/``); a missing one raises :class:`PeerNotInstalled`, never a skip.

pytest fixtures, all function-scoped (the processes start in about 0.15 s, and a fresh
store per test means a query can never see a previous test's value):
``victoria_metrics``, ``prometheus_factory``, ``otlp_grpc_sink``, ``otlp_http_sink``,
``tls_cert``. Load them with ``pytest_plugins = ["tests.peers"]`` in tests/conftest.py.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gzip
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "ExportCall",
    "MetricPoint",
    "OtlpGrpcSink",
    "OtlpHttpSink",
    "PeerError",
    "PeerNotInstalled",
    "PeerTimeout",
    "Prometheus",
    "TlsCert",
    "VictoriaMetrics",
    "Answer",
    "any_value",
    "attributes_dict",
    "make_self_signed_cert",
    "otlp_grpc_sink",
    "otlp_http_sink",
    "prometheus_factory",
    "result_values",
    "tls_cert",
    "victoria_metrics",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = "run scripts/install-test-deps.sh (as root on a fresh Debian 12 machine)"
LOOPBACK = "127.0.0.1"

ExportMetricsServiceRequest = metrics_service_pb2.ExportMetricsServiceRequest
ExportMetricsServiceResponse = metrics_service_pb2.ExportMetricsServiceResponse


class PeerError(RuntimeError):
    """A peer failed to start, died, or answered an API call with an error."""


class PeerNotInstalled(PeerError):
    """A peer's binary is missing: scripts/install-test-deps.sh has not been run."""


class PeerTimeout(AssertionError):
    """A bounded wait for a peer's state ran out (a test failure, not an error)."""


def peers_dir() -> Path:
    """Where scripts/install-test-deps.sh unpacks the peers (``$OTEL_KEPLER_PEERS_DIR``)."""
    return Path(os.environ.get("OTEL_KEPLER_PEERS_DIR", REPO_ROOT / ".cache" / "peers"))


def find_binary(peer: str, binary: str, env_var: str) -> Path:
    """The peer's binary: ``$env_var`` if set, else ``.cache/peers/<peer>/bin/<binary>``."""
    override = os.environ.get(env_var)
    path = Path(override) if override else peers_dir() / peer / "bin" / binary
    if not (path.is_file() and os.access(path, os.X_OK)):
        source = f"${env_var}" if override else "the peers folder"
        raise PeerNotInstalled(f"{binary} not found at {path} (from {source}): {INSTALL_HINT}")
    return path


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (callers retry on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# Loopback HTTP without any proxy from the environment (CI machines often set one).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET url; returns (status, body) for any HTTP status, raises OSError on no answer."""
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def result_values(result: Sequence[Mapping[str, Any]]) -> list[tuple[dict[str, str], float]]:
    """(labels, value) for each element of an instant-query vector result."""
    return [(dict(r["metric"]), float(r["value"][1])) for r in result]


# ------------------------------------------------------------------ processes

_LIVE: set[_ProcessPeer] = set()


@atexit.register
def _stop_leftovers() -> None:
    for peer in list(_LIVE):
        peer.stop()


class _ProcessPeer:
    """A server binary run as a child process with its own port, folder and log."""

    name = "peer"
    ready_path = "/"
    startup_timeout = 30.0
    _port_attempts = 3

    def __init__(self, *, extra_args: Sequence[str] = (), keep_dir: bool | None = None) -> None:
        self.extra_args = list(extra_args)
        if keep_dir is None:
            keep_dir = os.environ.get("OTEL_KEPLER_KEEP_PEER_DIRS", "") not in ("", "0")
        self.keep_dir = keep_dir
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    # subclass interface
    def binary(self) -> Path:
        raise NotImplementedError

    def args(self, port: int, data_dir: Path) -> list[str]:
        raise NotImplementedError

    def prepare(self, data_dir: Path) -> None:
        """Write config files before the first start."""

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{LOOPBACK}:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        text = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    def start(self) -> Self:
        if self.proc is not None:
            return self
        binary = self.binary()
        self.dir = Path(tempfile.mkdtemp(prefix=f"otel-kepler-{self.name}-"))
        self._log_path = self.dir / f"{self.name}.log"
        self.prepare(self.dir)
        _LIVE.add(self)
        try:
            for attempt in range(1, self._port_attempts + 1):
                self.port = free_port()
                self._spawn([str(binary), *self.args(self.port, self.dir), *self.extra_args])
                if self._wait_ready(last_attempt=attempt == self._port_attempts):
                    return self
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _spawn(self, argv: list[str]) -> None:
        assert self.dir is not None and self._log_path is not None
        setpriv = shutil.which("setpriv")
        if setpriv:  # SIGKILL the peer if this process dies without cleaning up
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        with open(self._log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _wait_ready(self, *, last_attempt: bool) -> bool:
        """True when ready; False when it lost a port race and may retry; else raises."""
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                if not last_attempt and "address already in use" in self.log_tail(20):
                    return False
                raise PeerError(
                    f"{self.name} exited with status {rc} before it was ready "
                    f"(port {self.port}); its log ends:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                status, _ = http_get(self.url + self.ready_path, timeout=1.0)
                # Still alive: the answer was not from a stranger that took the port.
                if status == 200 and self.proc.poll() is None:
                    return True
            time.sleep(0.03)
        raise PeerError(
            f"{self.name} not ready at {self.url}{self.ready_path} after "
            f"{self.startup_timeout:.0f} s; its log ends:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s) and remove its folder."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        _LIVE.discard(self)
        if self.dir is not None and not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def halt(self) -> None:
        """Stop the process (an outage) but keep its port and folder for :meth:`restart`."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def restart(self) -> None:
        """Start again after :meth:`halt`, on the same port with the same stored data."""
        assert self.proc is None and self.dir is not None and self.port, "halt() first"
        self._spawn([str(self.binary()), *self.args(self.port, self.dir), *self.extra_args])
        self._wait_ready(last_attempt=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url if self.port else '(not started)'}>"


class _PromQLApi(_ProcessPeer):
    """Prometheus-compatible query API shared by Prometheus and VictoriaMetrics."""

    def before_query(self) -> None:
        """Hook: make fresh samples visible (VictoriaMetrics flushes its buffers)."""

    def api(self, path: str, params: Mapping[str, str | Sequence[str]] | None = None) -> Any:
        """GET ``/api/v1/<path>``; returns ``data`` of a successful answer, else PeerError."""
        if not self.running:
            raise PeerError(f"{self.name} is not running; log:\n{self.log_tail()}")
        query = urllib.parse.urlencode(params or {}, doseq=True)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            status, body = http_get(url, timeout=10.0)
        except OSError as err:
            raise PeerError(f"{self.name}: GET {url} failed: {err}") from err
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if status != 200 or not isinstance(doc, dict) or doc.get("status") != "success":
            raise PeerError(f"{self.name}: GET {url} -> {status}: {body[:2000]!r}")
        return doc["data"]

    def query(self, promql: str, *, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; returns the result vector (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        self.before_query()
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", params)
        if data.get("resultType") != "vector":
            raise PeerError(f"{promql!r} gave a {data.get('resultType')}, not a vector")
        return list(data["result"])

    def series(self, match: str) -> list[dict[str, str]]:
        """Label sets of the series matching a series selector."""
        self.before_query()
        return list(self.api("series", {"match[]": [match]}))

    def wait_for(
        self,
        promql: str,
        timeout: float = 15.0,
        *,
        until: Callable[[list[dict[str, Any]]], bool] | None = None,
        interval: float = 0.1,
    ) -> list[dict[str, Any]]:
        """Poll an instant query until it is non-empty (or ``until(result)`` is true)."""
        accept = until if until is not None else bool
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while True:
            result = self.query(promql)
            if accept(result):
                return result
            if time.monotonic() >= deadline:
                raise PeerTimeout(
                    f"{self.name}: {promql!r} still {'empty' if not result else 'unaccepted'} "
                    f"after {timeout} s; last result: {result!r}\nlog tail:\n{self.log_tail(15)}"
                )
            time.sleep(interval)


# ------------------------------------------------------------------ VictoriaMetrics


class VictoriaMetrics(_PromQLApi):
    """Single-node VictoriaMetrics (Debian package >= 1.92) ingesting OTLP/HTTP.

    OTLP metric names and labels are translated Prometheus-style
    (``-opentelemetry.usePrometheusNaming``): ``kepler.node.cpu.joules`` (unit ``J``,
    monotonic cumulative sum) becomes ``kepler_node_cpu_joules_total``; resource and point
    attributes become labels with ``.`` turned into ``_``. Delta sums are dropped.
    """

    name = "victoria-metrics"
    ready_path = "/health"

    def binary(self) -> Path:
        return find_binary(
            "victoria-metrics", "victoria-metrics", "OTEL_KEPLER_VICTORIA_METRICS_BIN"
        )

    def args(self, port: int, data_dir: Path) -> list[str]:
        return [
            f"-httpListenAddr={LOOPBACK}:{port}",
            f"-storageDataPath={data_dir / 'data'}",
            "-opentelemetry.usePrometheusNaming",
            # A sample is visible at once, not 30 s later (default latency offset).
            "-search.latencyOffset=0s",
            # No rollup result cache: a repeated query sees newly ingested samples.
            "-search.disableCache",
            # Accept old timestamps too (default retention: 1 month).
            "-retentionPeriod=100y",
            "-memory.allowedBytes=256MiB",
        ]

    @property
    def otlp_http_url(self) -> str:
        """Base URL of OTLP/HTTP, for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the SDK adds /v1/metrics)."""
        return f"{self.url}/opentelemetry"

    @property
    def otlp_metrics_url(self) -> str:
        """Full OTLP/HTTP metrics URL, for ``OTLPMetricExporter(endpoint=...)``."""
        return f"{self.url}/opentelemetry/v1/metrics"

    def flush(self) -> None:
        """Make buffered samples searchable now (``/internal/force_flush``)."""
        try:
            status, body = http_get(f"{self.url}/internal/force_flush", timeout=10.0)
        except OSError as err:
            raise PeerError(f"{self.name}: force_flush failed: {err}") from err
        if status != 200:
            raise PeerError(f"{self.name}: force_flush -> {status}: {body[:500]!r}")

    def before_query(self) -> None:
        self.flush()

    def self_metric(self, name: str, **labels: str) -> float:
        """Sum of VictoriaMetrics' own metric ``name`` over samples matching ``labels``."""
        _, body = http_get(f"{self.url}/metrics", timeout=10.0)
        total = 0.0
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total


# ------------------------------------------------------------------ Prometheus


class Prometheus(_PromQLApi):
    """Prometheus (Debian's build) scraping the given ``host:port`` targets.

    Debian's builds have the OTLP receiver compiled out; this peer only scrapes. The first
    scrape comes about 5 s after start (2.42's discovery manager sends target updates every
    5 s, with no flag to change it): start it early, then ``wait_for``.
    """

    name = "prometheus"
    ready_path = "/-/ready"

    def __init__(
        self,
        targets: Sequence[str],
        *,
        metrics_path: str = "/metrics",
        scrape_interval: str = "1s",
        job_name: str = "otel-kepler",
        scheme: str = "http",
        scrape_config: Mapping[str, Any] | None = None,
        extra_args: Sequence[str] = (),
        keep_dir: bool | None = None,
    ) -> None:
        """``scrape_config`` entries are merged into the job (e.g. ``tls_config``)."""
        super().__init__(extra_args=extra_args, keep_dir=keep_dir)
        self.scrape_targets = list(targets)
        self.config: dict[str, Any] = {
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval},
            "scrape_configs": [
                {
                    "job_name": job_name,
                    "metrics_path": metrics_path,
                    "scheme": scheme,
                    "static_configs": [{"targets": self.scrape_targets}],
                    **(scrape_config or {}),
                }
            ],
        }

    def binary(self) -> Path:
        return find_binary("prometheus", "prometheus", "OTEL_KEPLER_PROMETHEUS_BIN")

    def prepare(self, data_dir: Path) -> None:
        # JSON is YAML.
        (data_dir / "prometheus.yml").write_text(json.dumps(self.config, indent=2))

    def args(self, port: int, data_dir: Path) -> list[str]:
        return [
            f"--config.file={data_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={data_dir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
        ]

    def targets(self) -> list[dict[str, Any]]:
        """Active targets from ``/api/v1/targets``: health, lastError, lastScrape, labels."""
        return list(self.api("targets", {"state": "active"})["activeTargets"])

    def wait_for_scrapes(self, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until every active target was scraped at least once; returns the targets."""
        deadline = time.monotonic() + timeout
        while True:
            targets = self.targets()
            if targets and all(t.get("health") in ("up", "down") for t in targets):
                return targets
            if time.monotonic() >= deadline:
                raise PeerTimeout(f"prometheus: targets not scraped after {timeout} s: {targets}")
            time.sleep(0.1)


# ------------------------------------------------------------------ OTLP decoding


def any_value(value: common_pb2.AnyValue) -> Any:
    """A Python value for an OTLP AnyValue."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_dict(value.kvlist_value.values)
    return getattr(value, kind)


def attributes_dict(kvs: Sequence[common_pb2.KeyValue]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


class MetricPoint(NamedTuple):
    """One data point: its attributes, its value, its resource's attributes."""

    attributes: dict[str, Any]
    value: float | int
    resource: dict[str, Any]


@dataclass(frozen=True)
class ExportCall:
    """One Export call as the sink saw it.

    ``outcome``: ``"ok"`` (answered success), ``"error"`` (answered an error status) or
    ``"hang"`` (held, then dropped). ``headers``: HTTP headers or gRPC metadata, keys lower
    case. ``raw``: the HTTP body as received (possibly compressed); empty for gRPC.
    """

    request: Any  # ExportMetricsServiceRequest
    headers: dict[str, str]
    outcome: str
    received_at: float
    raw: bytes = b""


@dataclass
class _Mode:
    kind: str = "ok"  # ok | error | hang | close | too_large
    status: Any = None
    message: str = ""
    seconds: float = 0.0
    then_ok: bool = False
    retry_after: int | None = None  # HTTP Retry-After; gRPC RetryInfo in the status details
    max_resources: int = 0  # too_large: more ResourceMetrics than this are refused
    release: threading.Event = field(default_factory=threading.Event)


class Answer:
    """One scripted answer of a sink, for ``respond_sequence``."""

    @staticmethod
    def ok() -> _Mode:
        return _Mode()

    @staticmethod
    def error(status: Any, *, retry_after: int | None = None, message: str = "test sink") -> _Mode:
        """HTTP status (int) or grpc.StatusCode, with Retry-After / RetryInfo if given."""
        return _Mode(kind="error", status=status, retry_after=retry_after, message=message)

    @staticmethod
    def hang(seconds: float, *, then_ok: bool = False) -> _Mode:
        return _Mode(kind="hang", seconds=seconds, then_ok=then_ok)

    @staticmethod
    def close() -> _Mode:
        """HTTP: read the request, then close the connection without an answer."""
        return _Mode(kind="close")

    @staticmethod
    def too_large(max_resources: int) -> _Mode:
        """Refuse (HTTP 413, gRPC RESOURCE_EXHAUSTED without RetryInfo) a request with more
        than ``max_resources`` ResourceMetrics; accept smaller ones. Not consumed by a script:
        it stays until the mode changes."""
        return _Mode(kind="too_large", max_resources=max_resources)


class _OtlpRecorder:
    """Storage and queries shared by the two OTLP sinks; thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._calls: list[ExportCall] = []
        self._mode = _Mode()
        self._script: list[_Mode] = []
        self._stopping = threading.Event()

    # --- behaviour switches
    def respond_ok(self) -> None:
        """Accept every request (the default)."""
        self._set_mode(_Mode())

    def respond_hang(self, seconds: float = 30.0, *, then_ok: bool = False) -> None:
        """Hold each request ``seconds`` (or until the mode changes or the sink stops), then
        drop it (``then_ok``: accept it, i.e. a slow but successful peer)."""
        self._set_mode(_Mode(kind="hang", seconds=seconds, then_ok=then_ok))

    def respond_sequence(self, *answers: _Mode, then: _Mode | None = None) -> None:
        """Answer the next calls with ``answers`` in order (see :class:`Answer`), then with
        ``then`` (default: accept)."""
        with self._cond:
            old, self._mode = self._mode, then or _Mode()
            self._script = list(answers)
        old.release.set()

    def _set_mode(self, mode: _Mode) -> None:
        with self._cond:
            old, self._mode = self._mode, mode
            self._script = []
        old.release.set()

    def _hold(self, mode: _Mode) -> bool:
        """Wait out a hang; True if the request is then to be accepted."""
        deadline = time.monotonic() + mode.seconds
        while not mode.release.is_set() and not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            mode.release.wait(min(left, 0.05))
        return mode.then_ok and not self._stopping.is_set()

    def _receive(
        self, request: Any, headers: dict[str, str], raw: bytes = b""
    ) -> tuple[str, _Mode]:
        """Record a call on arrival and apply the mode; returns the outcome and the mode."""
        with self._cond:
            mode = self._script.pop(0) if self._script else self._mode
            kind = mode.kind
            if kind == "too_large":
                kind = "error" if len(request.resource_metrics) > mode.max_resources else "ok"
            call = ExportCall(request, headers, kind, time.time(), raw)
            self._calls.append(call)
            self._cond.notify_all()
        if kind != "hang" or not self._hold(mode):
            return kind, mode
        with self._cond:  # the held request is accepted after all
            for i, c in enumerate(self._calls):
                if c is call:
                    self._calls[i] = dataclasses.replace(call, outcome="ok")
            self._cond.notify_all()
        return "ok", mode

    # --- what was received
    @property
    def calls(self) -> list[ExportCall]:
        """Every Export call, whatever the answer, oldest first."""
        with self._cond:
            return list(self._calls)

    @property
    def requests(self) -> list[Any]:
        """The ExportMetricsServiceRequests that were accepted, oldest first."""
        return [c.request for c in self.calls if c.outcome == "ok"]

    def clear(self) -> None:
        with self._cond:
            self._calls.clear()

    def wait_for_calls(self, n: int = 1, timeout: float = 10.0) -> list[ExportCall]:
        """Wait until at least ``n`` Export calls arrived (any outcome)."""
        return self._wait(lambda: len(self._calls) >= n, timeout, f"{n} export calls")

    def wait_for_requests(self, n: int = 1, timeout: float = 10.0) -> list[Any]:
        """Wait until at least ``n`` requests were accepted; returns the accepted requests."""
        self._wait(
            lambda: sum(c.outcome == "ok" for c in self._calls) >= n,
            timeout,
            f"{n} accepted requests",
        )
        return self.requests

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> list[ExportCall]:
        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                outcomes = [c.outcome for c in self._calls]
                raise PeerTimeout(f"{type(self).__name__}: no {what} after {timeout} s: {outcomes}")
            return list(self._calls)

    def metrics(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, Metric proto) of every accepted metric called ``name``."""
        found: list[tuple[dict[str, Any], Any]] = []
        for request in self.requests:
            for rm in request.resource_metrics:
                resource = attributes_dict(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    found.extend((resource, m) for m in sm.metrics if m.name == name)
        return found

    def metric_names(self) -> set[str]:
        return {
            m.name
            for request in self.requests
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        }

    def metric_points(self, name: str) -> list[MetricPoint]:
        """Every accepted data point of metric ``name``: (attributes, value, resource).

        The value is the number of a sum or gauge point and the ``sum`` of a histogram or
        summary point.
        """
        points: list[MetricPoint] = []
        for resource, metric in self.metrics(name):
            kind = metric.WhichOneof("data")
            if kind is None:
                continue
            for dp in getattr(metric, kind).data_points:
                if isinstance(dp, metrics_pb2.NumberDataPoint):
                    which = dp.WhichOneof("value")
                    value: float | int = getattr(dp, which) if which else 0
                else:
                    value = dp.sum
                points.append(MetricPoint(attributes_dict(dp.attributes), value, resource))
        return points


# ------------------------------------------------------------------ TLS


@dataclass(frozen=True)
class TlsCert:
    """A self-signed server certificate (its own CA) for 127.0.0.1 and localhost."""

    cert_file: Path
    key_file: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert_file.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key_file.read_bytes()


def make_self_signed_cert(directory: Path, common_name: str = LOOPBACK) -> TlsCert:
    """Create a P-256 self-signed certificate with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise PeerNotInstalled(f"openssl command not found: {INSTALL_HINT}")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", f"/CN={common_name}",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return TlsCert(cert, key)


# ------------------------------------------------------------------ OTLP/gRPC sink


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, sink: OtlpGrpcSink) -> None:
        self.sink = sink

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self.sink._export(request, context)


class OtlpGrpcSink(_OtlpRecorder):
    """An OTLP/gRPC metrics receiver on 127.0.0.1 that stores what it gets.

    ``endpoint`` is ``127.0.0.1:PORT`` for ``OTLPMetricExporter(endpoint=..., insecure=True)``;
    with ``tls`` it serves TLS (clients trust ``tls.cert_file``).
    """

    def __init__(self, *, tls: TlsCert | None = None, max_workers: int = 8, port: int = 0) -> None:
        """``port``: listen there (a backend coming back where the agent points), else any."""
        super().__init__()
        self.tls = tls
        self.max_workers = max_workers
        self.port = port
        self._server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def respond_error(
        self, status: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, message: str = "test sink"
    ) -> None:
        """Answer every Export with ``status`` (default UNAVAILABLE, which clients retry)."""
        self._set_mode(_Mode(kind="error", status=status, message=message))

    def _export(self, request: Any, context: grpc.ServicerContext) -> Any:
        headers = {k.lower(): str(v) for k, v in context.invocation_metadata()}
        outcome, mode = self._receive(request, headers)
        if outcome == "error" and mode.kind == "too_large":
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "test sink: request too large")
        if outcome == "error":
            if mode.retry_after is not None:
                info = error_details_pb2.RetryInfo()
                info.retry_delay.seconds = int(mode.retry_after)
                status = status_pb2.Status(code=mode.status.value[0], message=mode.message)
                status.details.add().Pack(info)
                context.set_trailing_metadata(
                    (("grpc-status-details-bin", status.SerializeToString()),)
                )
            context.abort(mode.status, mode.message)
        if outcome in ("hang", "close"):
            context.abort(grpc.StatusCode.UNAVAILABLE, "test sink was hanging")
        return ExportMetricsServiceResponse()

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers))
        add_servicer = metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server
        add_servicer(_MetricsServicer(self), server)  # type: ignore[no-untyped-call]
        address = f"{LOOPBACK}:{self.port}"
        if self.tls is not None:
            creds = grpc.ssl_server_credentials([(self.tls.key_pem, self.tls.cert_pem)])
            self.port = server.add_secure_port(address, creds)
        else:
            self.port = server.add_insecure_port(address)
        if not self.port:
            raise PeerError("OtlpGrpcSink: could not bind a port on 127.0.0.1")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        self._stopping.set()
        with self._cond:
            self._mode.release.set()
        if server is not None:
            server.stop(grace=None).wait(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------ OTLP/HTTP sink


class _SinkHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    sink: OtlpHttpSink


class _SinkHandler(BaseHTTPRequestHandler):
    server: _SinkHTTPServer
    protocol_version = "HTTP/1.0"  # one request per connection: nothing left open at stop

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        self.server.sink._handle(self)

    def do_GET(self) -> None:  # noqa: N802
        self._reply(405, b"POST only\n", "text/plain")


class OtlpHttpSink(_OtlpRecorder):
    """An OTLP/HTTP metrics receiver on 127.0.0.1 (``POST /v1/metrics``).

    Accepts protobuf (``application/x-protobuf``) or JSON bodies, gzip/deflate or plain
    per ``Content-Encoding``; answers 200 with an empty ExportMetricsServiceResponse,
    or the error/hang behaviour chosen with ``respond_*``. Other paths get 404.
    """

    def __init__(
        self, *, path: str = "/v1/metrics", tls: TlsCert | None = None, port: int = 0
    ) -> None:
        """``port``: listen there (a backend coming back where the agent points), else any."""
        super().__init__()
        self.path = path
        self.tls = tls
        self.port = port
        self._server: _SinkHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the SDK appends /v1/metrics)."""
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Full URL, for ``OTLPMetricExporter(endpoint=...)``."""
        return self.url + self.path

    def respond_error(self, status: int = 503, *, retry_after: int | None = None) -> None:
        """Answer every POST with HTTP ``status`` (default 503), optionally Retry-After."""
        self._set_mode(_Mode(kind="error", status=status, retry_after=retry_after))

    def _handle(self, handler: _SinkHandler) -> None:
        if urllib.parse.urlsplit(handler.path).path != self.path:
            handler._reply(404, f"not {self.path}\n".encode(), "text/plain")
            return
        headers = {k.lower(): v for k, v in handler.headers.items()}
        raw = handler._body()
        content_type = headers.get("content-type", "").split(";")[0].strip()
        try:
            request = self._decode(raw, headers.get("content-encoding", ""), content_type)
        except Exception as err:  # noqa: BLE001 - a bad request is answered, not raised
            status = status_pb2.Status(code=3, message=f"test sink: bad request: {err}")
            handler._reply(400, status.SerializeToString(), "application/x-protobuf")
            return
        outcome, mode = self._receive(request, headers, raw)
        if outcome in ("hang", "close"):
            handler.close_connection = True  # drop it without an answer
            return
        if outcome == "error" and mode.kind == "too_large":
            handler._reply(413, b"test sink: request too large\n", "text/plain")
            return
        if outcome == "error":
            extra = {"Retry_After": str(mode.retry_after)} if mode.retry_after is not None else {}
            status = status_pb2.Status(code=14, message="test sink")
            handler._reply(mode.status, status.SerializeToString(), content_type, **extra)
            return
        response = ExportMetricsServiceResponse()
        if content_type == "application/json":
            handler._reply(200, json_format.MessageToJson(response).encode(), content_type)
        else:
            handler._reply(200, response.SerializeToString(), "application/x-protobuf")

    @staticmethod
    def _decode(raw: bytes, encoding: str, content_type: str) -> Any:
        encoding = encoding.strip().lower()
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "deflate":
            raw = zlib.decompress(raw)
        elif encoding not in ("", "identity"):
            raise ValueError(f"unsupported Content-Encoding {encoding!r}")
        request = ExportMetricsServiceRequest()
        if content_type == "application/x-protobuf":
            request.ParseFromString(raw)
        elif content_type == "application/json":
            json_format.Parse(raw, request)
        else:
            raise ValueError(f"unsupported Content-Type {content_type!r}")
        return request

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _SinkHTTPServer((LOOPBACK, self.port), _SinkHandler)
        server.sink = self
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"otlp-http-sink-{self.port}",
        )  # fmt: skip
        self._thread.start()
        self._server = server
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        self._stopping.set()
        with self._cond:
            self._mode.release.set()
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------ pytest fixtures


@pytest.fixture
def victoria_metrics() -> Iterator[VictoriaMetrics]:
    """A fresh VictoriaMetrics with OTLP ingestion; ``.otlp_metrics_url``, ``.query()``."""
    with VictoriaMetrics() as vm:
        yield vm


@pytest.fixture
def prometheus_factory() -> Iterator[Callable[..., Prometheus]]:
    """``prometheus_factory(["127.0.0.1:PORT"], metrics_path=..., scrape_interval=...)``
    starts a Prometheus scraping those targets; all are stopped after the test."""
    started: list[Prometheus] = []

    def factory(targets: Sequence[str], **kwargs: Any) -> Prometheus:
        prom = Prometheus(targets, **kwargs)
        started.append(prom)
        return prom.start()

    yield factory
    errors: list[BaseException] = []
    for prom in reversed(started):
        try:
            prom.stop()
        except Exception as err:  # noqa: BLE001 - stop the others, then report
            errors.append(err)
    if errors:
        raise errors[0]


@pytest.fixture
def otlp_grpc_sink() -> Iterator[OtlpGrpcSink]:
    """An insecure OTLP/gRPC sink; ``.endpoint``, ``.wait_for_requests()``."""
    with OtlpGrpcSink() as sink:
        yield sink


@pytest.fixture
def otlp_http_sink() -> Iterator[OtlpHttpSink]:
    """A plain-HTTP OTLP/HTTP sink; ``.metrics_url``, ``.wait_for_requests()``."""
    with OtlpHttpSink() as sink:
        yield sink


@pytest.fixture
def tls_cert(tmp_path: Path) -> TlsCert:
    """A self-signed certificate for 127.0.0.1/localhost (needs the openssl command)."""
    return make_self_signed_cert(tmp_path / "tls")

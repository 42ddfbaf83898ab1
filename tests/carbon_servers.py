# SPDX-License-Identifier: Apache-2.0
"""Local HTTP servers shaped like the grid intensity APIs, for the carbon tests.

Each listens on a free port of 127.0.0.1 in a thread and answers every path from a
script of :class:`Reply` objects (the last one repeats), so a test can play an outage,
a 429 with Retry-After, a slow or malformed answer. Requests are recorded.

- :class:`ElectricityMapsServer`: ``GET /v3/carbon-intensity/latest?zone=..`` with the
  ``auth-token`` header (401 without the right one), answering
  ``{"zone", "carbonIntensity", "datetime", "updatedAt", ...}``.
- :class:`WattTimeServer`: ``GET /login`` with basic auth answering ``{"token"}``, then
  ``GET /v3/forecast?region=..&signal_type=..`` with ``Authorization: Bearer`` (401 for an
  unknown or expired token), answering ``{"data": [{"point_time", "value"}], "meta"}``.
- :class:`ApiServer` alone serves anything else, e.g. a Kubernetes node object for the
  kubernetes client (``/api/v1/nodes/<name>``, see :func:`node`).
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = [
    "ApiServer",
    "ElectricityMapsServer",
    "Reply",
    "Request",
    "WattTimeServer",
    "em_latest",
    "node",
    "wt_forecast",
]


@dataclass
class Reply:
    """One answer: a status, a body (JSON-encoded unless bytes), headers, a delay first."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float  # time.monotonic() when it arrived


class ApiServer:
    """Answers each path from its script; unknown paths get 404."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._scripts: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                parts = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parts.query))
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Request("GET", parts.path, query, headers, time.monotonic())
                with server._lock:
                    server.requests.append(request)
                reply = server.answer(request)
                if reply.delay:
                    time.sleep(reply.delay)
                body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body)
                data = body if isinstance(body, bytes) else body.encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, path: str, *replies: Reply) -> None:
        """Answer ``path`` with these replies in turn; the last one repeats."""
        with self._lock:
            self._scripts[path] = list(replies)

    def answer(self, request: Request) -> Reply:
        with self._lock:
            script = self._scripts.get(request.path)
            if not script:
                return Reply(404, {"message": "not found"})
            return script.pop(0) if len(script) > 1 else script[0]

    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


LATEST = "/v3/carbon-intensity/latest"


def em_latest(zone: str, intensity: Any, hour: str = "2024-05-21T14:00:00.000Z") -> Reply:
    """A /v3/carbon-intensity/latest answer in the documented shape."""
    return Reply(
        200,
        {
            "zone": zone,
            "carbonIntensity": intensity,
            "datetime": hour,
            "updatedAt": "2024-05-21T14:32:11.123Z",
            "createdAt": "2024-05-18T14:35:02.000Z",
            "emissionFactorType": "lifecycle",
            "isEstimated": True,
            "estimationMethod": "TIME_SLICER_AVERAGE",
        },
    )


class ElectricityMapsServer(ApiServer):
    """Electricity Maps v3: a request without the right ``auth-token`` gets 401."""

    def __init__(self, token: str = "em-token-3f9a") -> None:
        super().__init__()
        self.token = token

    def answer(self, request: Request) -> Reply:
        if request.headers.get("auth-token") != self.token:
            return Reply(401, {"status": "error", "message": "Invalid authentication token"})
        return super().answer(request)


FORECAST = "/v3/forecast"


def wt_forecast(value: Any, region: str = "CAISO_NORTH", units: str = "lbs_co2_per_mwh") -> Reply:
    """A /v3/forecast answer (horizon 0: the current point) in the documented shape."""
    return Reply(
        200,
        {
            "data": [{"point_time": "2024-05-21T14:05:00+00:00", "value": value}],
            "meta": {
                "region": region,
                "signal_type": "co2_moer",
                "model": {"date": "2024-03-01"},
                "data_point_period_seconds": 300,
                "units": units,
                "generated_at_period_seconds": 300,
                "generated_at": "2024-05-21T14:05:00+00:00",
                "warnings": [],
            },
        },
    )


class WattTimeServer(ApiServer):
    """WattTime v3: /login issues tokens for the right basic auth; the data endpoints
    want a current token (``expire_tokens()`` plays their 30-minute expiry)."""

    def __init__(self, user: str = "kepler", password: str = "pw-7c1e") -> None:
        super().__init__()
        self.user = user
        self.password = password
        self.tokens: set[str] = set()
        self.logins = 0

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    def answer(self, request: Request) -> Reply:
        if request.path == "/login":
            return self._login(request)
        auth = request.headers.get("authorization", "")
        with self._lock:
            known = auth.startswith("Bearer ") and auth[7:] in self.tokens
        if not known:
            return Reply(401, {"error": "invalid or expired token"})
        return super().answer(request)

    def _login(self, request: Request) -> Reply:
        scripted = self._scripts.get("/login")
        if scripted:
            return super().answer(request)
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return Reply(401, {"error": "invalid credentials"})
        token = secrets.token_hex(16)
        with self._lock:
            self.tokens.add(token)
            self.logins += 1
        return Reply(200, {"token": token})


def node(name: str, labels: dict[str, str]) -> Reply:
    """A Kubernetes v1 Node object as the API server returns it."""
    return Reply(
        200,
        {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "uid": "5d3c0c4e-0000-4000-8000-000000000001",
                "labels": labels,
            },
            "spec": {},
            "status": {},
        },
    )

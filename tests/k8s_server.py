# SPDX-License-Identifier: Apache-2.0
"""A Kubernetes API server and kubelet lookalike on 127.0.0.1, for the real kubernetes client.

:class:`KubeServer` serves HTTPS (a self-signed certificate from ``tests.peers``) and checks a
bearer token. It implements what the official client and the ``k8sattributes`` sources use:

- ``GET /version/`` (a complete ``VersionInfo``);
- ``GET /api/v1/pods`` and ``GET /api/v1/namespaces/NS/pods``: a ``PodList`` with the current
  ``metadata.resourceVersion``; ``fieldSelector`` (``spec.nodeName``, ``metadata.name``,
  ``metadata.namespace``, ``status.phase`` with ``=``, ``==``, ``!=``) is honoured, an unknown
  field is a 400 as on a real server;
- the same paths with ``watch=true``: chunked JSON lines (``ADDED``, ``MODIFIED``, ``DELETED``)
  from ``resourceVersion`` on, ``BOOKMARK`` every ``bookmark_interval`` when
  ``allowWatchBookmarks`` is set, an ``ERROR`` event with code 410 when the version was
  compacted away (:meth:`KubeServer.compact`), and the end of the stream after
  ``timeoutSeconds``; ``resourceVersion`` unset or ``0`` starts with synthetic ``ADDED`` events;
- ``GET /pods`` (and ``/api/v1/nodes/NODE/proxy/pods``), shaped like the kubelet's: the pods
  bound to ``kubelet_node``, without a list ``resourceVersion``;
- 401 ``Unauthorized`` without the token; any status for the next requests with
  :meth:`KubeServer.fail_next`; :meth:`drop_watches` cuts open watches mid-stream;
  :meth:`go_down` / :meth:`come_back` make the port refuse connections for a while.

Objects are complete ``v1.Pod`` JSON as the API server writes it (the client's models reject
objects that miss required fields): build them with :func:`make_pod`. Every request is
recorded in :attr:`KubeServer.requests` so tests can count them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from tests.peers import LOOPBACK, TlsCert

__all__ = [
    "KubeServer",
    "Request",
    "container_id",
    "make_pod",
    "restart_container",
]

Pod = dict[str, Any]

VERSION_INFO = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.4",
    "gitCommit": "a78aa47129b8539636eb86a9d00e31b2720fe06b",
    "gitTreeState": "clean",
    "buildDate": "2024-12-10T18:32:11Z",
    "goVersion": "go1.22.9",
    "compiler": "gc",
    "platform": "linux/amd64",
}

_SELECTABLE = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "spec.nodeName": ("spec", "nodeName"),
    "status.phase": ("status", "phase"),
}


# ------------------------------------------------------------------ pod objects


def container_id(uid: str, name: str, restarts: int = 0) -> str:
    """The 64-hex id a runtime would give container ``name`` of pod ``uid`` after ``restarts``."""
    return hashlib.sha256(f"{uid}/{name}/{restarts}".encode()).hexdigest()


def _status(name: str, uid: str, runtime: str, restarts: int, image: str) -> dict[str, Any]:
    cid = container_id(uid, name, restarts)
    status: dict[str, Any] = {
        "name": name,
        "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}},
        "lastState": {},
        "ready": True,
        "restartCount": restarts,
        "image": image,
        "imageID": f"{image}@sha256:{hashlib.sha256(image.encode()).hexdigest()}",
        "containerID": f"{runtime}://{cid}",
        "started": True,
    }
    if restarts:
        status["lastState"] = {
            "terminated": {
                "exitCode": 137,
                "reason": "OOMKilled",
                "startedAt": "2025-01-01T00:00:00Z",
                "finishedAt": "2025-01-01T00:01:00Z",
                "containerID": f"{runtime}://{container_id(uid, name, restarts - 1)}",
            }
        }
    return status


def make_pod(
    name: str,
    namespace: str = "default",
    node: str = "node-a",
    *,
    containers: Iterable[str] = ("app",),
    init_containers: Iterable[str] = (),
    ephemeral_containers: Iterable[str] = (),
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owner: tuple[str, str] | None = None,
    uid: str | None = None,
    runtime: str = "containerd",
    phase: str = "Running",
    image: str = "registry.example/app:1.0",
) -> Pod:
    """A complete ``v1.Pod`` as the API server returns it, running on ``node``.

    ``owner`` is ``(kind, name)`` of the controller (``("ReplicaSet", "web-5d9c7b")``).
    Container ids are :func:`container_id` of the uid, the name and the restart count.
    """
    uid = uid or str(uuid.uuid5(uuid.NAMESPACE_URL, f"pod/{namespace}/{name}"))
    spec_containers = [{"name": c, "image": image, "resources": {}} for c in containers]
    pod: Pod = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": "0",
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "labels": dict(labels or {}),
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "containers": spec_containers,
            "initContainers": [{"name": c, "image": image} for c in init_containers],
            "ephemeralContainers": [{"name": c, "image": image} for c in ephemeral_containers],
            "nodeName": node,
            "restartPolicy": "Always",
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
        },
        "status": {
            "phase": phase,
            "hostIP": "10.0.0.10",
            "podIP": "10.244.0.10",
            "startTime": "2025-01-01T00:00:00Z",
            "qosClass": "BestEffort",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:00Z"}
            ],
            "containerStatuses": [_status(c, uid, runtime, 0, image) for c in containers],
            "initContainerStatuses": [_status(c, uid, runtime, 0, image) for c in init_containers],
            "ephemeralContainerStatuses": [
                _status(c, uid, runtime, 0, image) for c in ephemeral_containers
            ],
        },
    }
    if owner is not None:
        kind, owner_name = owner
        api = "batch/v1" if kind == "Job" else "apps/v1"
        pod["metadata"]["ownerReferences"] = [
            {
                "apiVersion": api,
                "kind": kind,
                "name": owner_name,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}/{namespace}/{owner_name}")),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return pod


def restart_container(pod: Pod, name: str) -> str:
    """Restart container ``name`` of ``pod`` in place (new id, lastState); returns the new id."""
    uid = pod["metadata"]["uid"]
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for i, status in enumerate(pod["status"][key]):
            if status["name"] == name:
                runtime = status["containerID"].split("://", 1)[0]
                restarts = status["restartCount"] + 1
                pod["status"][key][i] = _status(name, uid, runtime, restarts, status["image"])
                return container_id(uid, name, restarts)
    raise KeyError(f"pod {pod['metadata']['name']} has no container {name}")


def pod_container_ids(pod: Pod) -> list[str]:
    """The current container ids of ``pod``, without the runtime prefix."""
    return [
        s["containerID"].split("://", 1)[1]
        for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
        for s in pod["status"][key]
    ]


# ------------------------------------------------------------------ the server


@dataclass(frozen=True)
class Request:
    """One request the server answered."""

    method: str
    path: str
    query: dict[str, str]
    status: int

    @property
    def watch(self) -> bool:
        return self.query.get("watch", "") in ("true", "1")


@dataclass
class _Event:
    rv: int
    type: str
    pod: Pod


@dataclass
class _Failure:
    status: int
    remaining: int
    retry_after: int | None = None


@dataclass
class _Watch:
    conn: socket.socket
    dropped: bool = False
    sent: list[str] = field(default_factory=list)  # event types written


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    kube: KubeServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.server.kube._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.kube._track(self.connection, False)

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ssl.SSLError):
            pass  # the client went away, or the test cut the connection

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.kube._handle(self)

    def send_json(self, status: int, body: Any, **headers: str) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(data)

    def send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """A ``v1.Status`` failure, as the API server sends with error answers."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


class KubeServer:
    """The API server and kubelet lookalike; see the module docstring.

    ``bookmark_interval``: seconds between BOOKMARK events on a watch that asked for them.
    ``kubelet_node``: the node whose pods ``GET /pods`` returns.
    """

    def __init__(
        self,
        tls: TlsCert,
        *,
        token: str = "test-token-5e1f",
        kubelet_node: str = "node-a",
        bookmark_interval: float = 0.5,
    ) -> None:
        self.tls = tls
        self.token = token
        self.kubelet_node = kubelet_node
        self.bookmark_interval = bookmark_interval
        self.port = 0
        self.requests: list[Request] = []
        self._pods: dict[tuple[str, str], Pod] = {}
        self._events: list[_Event] = []
        self._rv = 100
        self._history_start = 100  # watches from older versions get 410
        self._cond = threading.Condition()
        self._failures: list[_Failure] = []
        self._watches: list[_Watch] = []  # open ones
        self._all_watches: list[_Watch] = []
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- lifecycle ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def start(self) -> Self:
        if self._server is None:
            self._stopping = False
            self._listen(self.port)
        return self

    def stop(self) -> None:
        self._stopping = True
        self._close_listener()
        self._cut_connections()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def go_down(self) -> None:
        """Close the port and every connection: the client gets 'connection refused'."""
        self._close_listener()
        self._cut_connections()

    def come_back(self) -> None:
        """Listen on the same port again (after :meth:`go_down`)."""
        self._listen(self.port)

    def _listen(self, port: int) -> None:
        server = _Server((LOOPBACK, port), _Handler, bind_and_activate=False)
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        server.socket = ctx.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        server.kube = self
        self.port = int(server.server_address[1])
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"kube-server-{self.port}",
        )  # fmt: skip
        thread.start()
        self._server, self._thread = server, thread

    def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _cut_connections(self) -> None:
        with self._cond:
            conns = list(self._connections)
            for w in self._watches:
                w.dropped = True
            self._cond.notify_all()
        for conn in conns:
            _shutdown(conn)

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._cond:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # -- state --------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def pod(self, namespace: str, name: str) -> Pod:
        """A copy of the stored pod."""
        with self._cond:
            return copy.deepcopy(self._pods[(namespace, name)])

    def add_pods(self, pods: Iterable[Pod]) -> int:
        """Store pods (one ADDED event each); returns the resource version after them."""
        with self._cond:
            for pod in pods:
                self._record("ADDED", copy.deepcopy(pod))
            self._cond.notify_all()
            return self._rv

    def add_pod(self, pod: Pod) -> int:
        return self.add_pods([pod])

    def modify_pod(self, namespace: str, name: str, change: Callable[[Pod], object]) -> int:
        """Apply ``change`` to the stored pod (one MODIFIED event)."""
        with self._cond:
            pod = copy.deepcopy(self._pods[(namespace, name)])
            change(pod)
            rv = self._record("MODIFIED", pod)
            self._cond.notify_all()
            return rv

    def delete_pod(self, namespace: str, name: str) -> int:
        with self._cond:
            pod = copy.deepcopy(self._pods[(namespace, name)])
            rv = self._record("DELETED", pod)
            self._cond.notify_all()
            return rv

    def _record(self, kind: str, pod: Pod) -> int:
        self._rv += 1
        pod["metadata"]["resourceVersion"] = str(self._rv)
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if kind == "DELETED":
            self._pods.pop(key)
        else:
            self._pods[key] = pod
        self._events.append(_Event(self._rv, kind, pod))
        return self._rv

    def compact(self) -> None:
        """Forget the event history: a watch from any older version now gets 410 Gone."""
        with self._cond:
            self._events.clear()
            self._history_start = self._rv

    def fail_next(self, status: int, count: int = 1, *, retry_after: int | None = None) -> None:
        """Answer the next ``count`` authorised API requests with ``status``."""
        with self._cond:
            self._failures.append(_Failure(status, count, retry_after))

    def drop_watches(self) -> None:
        """Cut every open watch mid-stream (no final chunk), as a lost connection does."""
        with self._cond:
            for w in self._watches:
                w.dropped = True
            conns = [w.conn for w in self._watches]
            self._cond.notify_all()
        for conn in conns:
            _shutdown(conn)

    # -- what clients did ---------------------------------------------------------

    def count(self, *, path: str | None = None, watch: bool | None = None) -> int:
        """Requests answered, optionally only those to ``path`` or (not) watching."""
        with self._cond:
            return sum(
                1
                for r in self.requests
                if (path is None or r.path == path) and (watch is None or r.watch == watch)
            )

    def open_watches(self) -> int:
        with self._cond:
            return sum(1 for w in self._watches if not w.dropped)

    def events_sent(self) -> list[str]:
        """Event types written on every watch so far (BOOKMARKs included)."""
        with self._cond:
            return [t for w in self._all_watches for t in w.sent]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"KubeServer: condition not met within {timeout}s")
            time.sleep(0.005)

    # -- requests -----------------------------------------------------------------

    def _handle(self, h: _Handler) -> None:
        parts = urllib.parse.urlsplit(h.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
        path = parts.path
        status = self._answer(h, path, query)
        if status:  # a watch records itself when it starts streaming
            with self._cond:
                self.requests.append(Request("GET", path, query, status))

    def _answer(self, h: _Handler, path: str, query: dict[str, str]) -> int:
        if not self._authorised(h.headers.get("Authorization", "")):
            h.send_json(401, status_body(401, "Unauthorized", "Unauthorized"))
            return 401
        failure = self._take_failure()
        if failure is not None:
            code = failure.status
            extra = {"Retry_After": str(failure.retry_after)} if failure.retry_after else {}
            message = f"injected failure {code}"
            h.send_json(code, status_body(code, _REASONS.get(code, "Unknown"), message), **extra)
            return code
        if path in ("/version", "/version/"):
            h.send_json(200, VERSION_INFO)
            return 200
        if path == "/pods" or path == f"/api/v1/nodes/{self.kubelet_node}/proxy/pods":
            return self._kubelet_pods(h)
        namespace = _namespace_of(path)
        if namespace is None:
            h.send_json(404, status_body(404, "NotFound", "the server could not find it"))
            return 404
        try:
            selector = _parse_selector(query.get("fieldSelector", ""))
        except ValueError as err:
            h.send_json(400, status_body(400, "BadRequest", str(err)))
            return 400
        if namespace:
            selector.append(("metadata.namespace", "=", namespace))
        if query.get("watch", "") in ("true", "1"):
            self._watch(h, path, query, selector)
            return 0
        return self._list(h, selector)

    def _authorised(self, header: str) -> bool:
        scheme, _, credential = header.partition(" ")
        return scheme.lower() == "bearer" and credential.strip() == self.token

    def _take_failure(self) -> _Failure | None:
        with self._cond:
            while self._failures:
                failure = self._failures[0]
                if failure.remaining > 0:
                    failure.remaining -= 1
                    return failure
                self._failures.pop(0)
            return None

    def _list(self, h: _Handler, selector: list[tuple[str, str, str]]) -> int:
        with self._cond:
            items = [_list_item(p) for p in self._pods.values() if _matches(p, selector)]
            rv = self._rv
        meta = {"resourceVersion": str(rv)}
        h.send_json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items})
        return 200

    def _kubelet_pods(self, h: _Handler) -> int:
        with self._cond:
            items = [
                _list_item(p)
                for p in self._pods.values()
                if p["spec"]["nodeName"] == self.kubelet_node
            ]
        h.send_json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
        return 200

    def _watch(
        self, h: _Handler, path: str, query: dict[str, str], selector: list[tuple[str, str, str]]
    ) -> None:
        rv_text = query.get("resourceVersion", "")
        timeout = float(query.get("timeoutSeconds", "1800"))
        bookmarks = query.get("allowWatchBookmarks", "") in ("true", "1")
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        watch = _Watch(h.connection)
        with self._cond:
            self.requests.append(Request("GET", path, query, 200))
            self._watches.append(watch)
            self._all_watches.append(watch)
            if rv_text not in ("", "0") and int(rv_text) < self._history_start:
                error = status_body(
                    410, "Expired", f"too old resource version: {rv_text} ({self._history_start})"
                )
                pending = [("ERROR", error)]
                cursor = -1
            elif rv_text in ("", "0"):
                pending = [("ADDED", p) for p in self._pods.values() if _matches(p, selector)]
                cursor = self._rv
            else:
                pending, cursor = [], int(rv_text)
        try:
            self._stream(h, watch, pending, cursor, selector, timeout, bookmarks)
        except OSError:
            pass
        finally:
            with self._cond:
                self._watches.remove(watch)
            if watch.dropped:
                h.close_connection = True

    def _stream(
        self,
        h: _Handler,
        watch: _Watch,
        pending: list[tuple[str, Pod]],
        cursor: int,
        selector: list[tuple[str, str, str]],
        timeout: float,
        bookmarks: bool,
    ) -> None:
        deadline = time.monotonic() + timeout
        last_write = time.monotonic()
        while True:
            for kind, obj in pending:
                h.send_chunk(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                watch.sent.append(kind)
                last_write = time.monotonic()
                if kind == "ERROR":
                    h.send_chunk(b"")
                    return
            now = time.monotonic()
            if bookmarks and now - last_write >= self.bookmark_interval:
                with self._cond:
                    version = str(max(cursor, self._history_start))
                mark = {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": version}}
                h.send_chunk(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
                watch.sent.append("BOOKMARK")
                last_write = now
            if now >= deadline:
                h.send_chunk(b"")  # the server-side timeout: a clean end of the stream
                return
            with self._cond:
                if watch.dropped or self._stopping:
                    raise OSError("watch dropped")
                wait = min(deadline - now, 0.05)
                if not self._events or self._events[-1].rv <= cursor:
                    self._cond.wait(wait)
                if watch.dropped or self._stopping:
                    raise OSError("watch dropped")
                fresh = [e for e in self._events if e.rv > cursor]
                if fresh:
                    cursor = fresh[-1].rv
            pending = [(e.type, e.pod) for e in fresh if _matches(e.pod, selector)]


# ------------------------------------------------------------------ helpers


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _namespace_of(path: str) -> str | None:
    """Empty for /api/v1/pods, NS for /api/v1/namespaces/NS/pods, None for other paths."""
    if path == "/api/v1/pods":
        return ""
    parts = path.strip("/").split("/")
    if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
        return parts[3]
    return None


def _parse_selector(text: str) -> list[tuple[str, str, str]]:
    terms: list[tuple[str, str, str]] = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        for op in ("!=", "==", "="):
            if op in term:
                name, value = term.split(op, 1)
                break
        else:
            raise ValueError(f"invalid selector: '{text}'; can't understand '{term}'")
        if name not in _SELECTABLE:
            raise ValueError(f'"{name}" is not a known field selector: only "{_known()}"')
        terms.append((name, "!=" if op == "!=" else "=", value))
    return terms


def _known() -> str:
    return '", "'.join(_SELECTABLE)


def _matches(pod: Pod, selector: list[tuple[str, str, str]]) -> bool:
    for name, op, value in selector:
        section, key = _SELECTABLE[name]
        actual = pod.get(section, {}).get(key, "")
        if (actual == value) != (op == "="):
            return False
    return True


def _list_item(pod: Pod) -> Pod:
    """Items of a list carry no kind or apiVersion, as the API server writes them."""
    return {k: v for k, v in pod.items() if k not in ("kind", "apiVersion")}


def pods_of(pods: Iterable[Pod], node: str) -> Iterator[Pod]:
    return (p for p in pods if p["spec"]["nodeName"] == node)

"""``source: apiserver``: list, then watch, the pods bound to this node.

Through the official client (its ``ApiClient`` for TLS, the token and its refresh; its
``Watch`` for the stream, resourceVersion tracking and ERROR events), with
``fieldSelector=spec.nodeName=NODE`` on both requests (the API server's watch cache
indexes pods by node, so neither touches etcd nor the other nodes' pods). As client-go's
reflector does:

- the first list asks for ``resourceVersion=0`` (served from the watch cache);
- the watch starts at the list's version, asks for bookmarks, and is resumed from the
  last version seen (event or bookmark) when it ends or its connection drops: no relist;
- a 410 Gone on the watch (that version was compacted) relists with the last version
  (``resourceVersionMatch=NotOlderThan``); a 410 on that list relists with a consistent
  read (no version);
- 401, 403, 429, 5xx and lost connections are retried after a doubling wait, honouring
  ``Retry-After``.

In steady state the watch is the only open request: one request per ``watch_timeout``.
"""

from __future__ import annotations

import time
from typing import Any

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from .client import NETWORK_ERRORS, get
from .config import K8sAttributesConfig
from .metadata import Extractor, decode_pod, decode_pod_list
from .network import NetworkSource


class ApiServerSource(NetworkSource):
    kind = "apiserver"

    def __init__(
        self, name: str, config: K8sAttributesConfig, extractor: Extractor, node_name: str
    ) -> None:
        super().__init__(name, config, extractor)
        self.field_selector = f"spec.nodeName={node_name}"
        self.watch_timeout = max(1, round(float(config.apiserver.watch_timeout)))
        self._api: client.ApiClient | None = None
        #: where the watch resumes: the last version seen; None: list first
        self.version: str | None = None
        # return_type "object": events carry the JSON dict (decoded by decode_pod), while
        # the Watch still tracks resourceVersion and raises 410 ERROR events as ApiException
        self._watch = watch.Watch(return_type="object")  # type: ignore[no-untyped-call]

    def _interrupt(self) -> None:
        self._watch.stop()  # type: ignore[no-untyped-call]  # shuts the socket: the stream ends

    def _client(self) -> client.ApiClient:
        if self._api is None:
            self._api = client.ApiClient(self._configuration())
        return self._api

    def _pods(self, **params: Any) -> urllib3.BaseHTTPResponse:
        """``GET /api/v1/pods`` with the generated client's keyword names (for the Watch)."""
        timeout = params.pop("_request_timeout")
        params.pop("_preload_content", None)  # always a stream here
        query = [(_QUERY[k], _text(v)) for k, v in params.items() if v is not None]
        return get(self._client(), "/api/v1/pods", query, timeout)

    def _run(self) -> None:
        list_version = "0"
        while not self.stopping:
            try:
                if self.version is None:
                    self.version = self._list(list_version)
                    self._succeeded()
                self._watch_from()
            except ApiException as err:
                if err.status != 410:
                    self._sleep(self._failed(err))
                    continue
                self.stats.expired += 1
                if self.version is None:  # the list's own version is gone: read the latest
                    list_version = ""
                    self._sleep(self.backoff.next())
                else:
                    list_version, self.version = self.version, None
            except NETWORK_ERRORS as err:
                self._sleep(self._failed(err))

    def _list(self, version: str) -> str:
        """Replace the store with the node's pods; returns the list's resourceVersion."""
        params: dict[str, Any] = {"field_selector": self.field_selector}
        if version:
            params["resource_version"] = version
            if version != "0":
                params["resource_version_match"] = "NotOlderThan"
        self.stats.requests += 1
        self.stats.lists += 1
        response = self._pods(_request_timeout=(self.timeout, self.timeout), **params)
        try:
            data = response.data
        finally:
            response.release_conn()
        pods, listed = decode_pod_list(data)
        self.store.replace(self._metas(pods))
        self.stats.syncs += 1
        return listed or "0"

    def _watch_from(self) -> None:
        """Apply events until the stream ends; :attr:`version` follows every event."""
        version = self.version or "0"
        self.stats.requests += 1
        self.stats.watches += 1
        began = time.monotonic()
        events = 0
        stream = self._watch.stream(  # type: ignore[no-untyped-call]
            self._pods,
            field_selector=self.field_selector,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
            _request_timeout=(self.timeout, self.watch_timeout + self.timeout),
        )
        for event in stream:
            self._apply(event)
            self.version = self._watch.resource_version or version
            events += 1
            if events == 1:
                self._succeeded()
            if self.stopping:
                self._watch.stop()  # type: ignore[no-untyped-call]
        if events == 0 and time.monotonic() - began < min(1.0, self.watch_timeout / 2):
            self._sleep(self.backoff.next())  # a server that ends watches at once: no busy loop

    def _apply(self, event: dict[str, Any]) -> None:
        self.stats.events += 1
        kind = event["type"]
        if kind == "BOOKMARK":
            self.store.expire()
            return
        pod = decode_pod(event["object"])
        if kind == "DELETED":
            if pod.metadata.uid:
                self.store.delete(pod.metadata.uid)
            return
        meta = self.extractor.pod(pod)
        if meta is not None:
            self.store.upsert(meta)


_QUERY = {
    "field_selector": "fieldSelector",
    "resource_version": "resourceVersion",
    "resource_version_match": "resourceVersionMatch",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "timeout_seconds": "timeoutSeconds",
    "watch": "watch",
}


def _text(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)

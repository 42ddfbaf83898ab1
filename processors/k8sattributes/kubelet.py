"""``source: kubelet``: poll ``GET /pods`` of this node's kubelet.

The kubelet already holds exactly this node's pods, so the API server carries no load at
all (Kepler moved to it after an API-server overload at 2,260 pods, Kepler issue 2366).
One request per ``poll_interval``; a container the tick cannot name brings the next poll
forward, at most once per ``poll_interval`` (so never more than two requests in any
interval). An answer byte-identical to the previous one is not parsed again.

The request goes through the official client (its TLS, token and token-refresh
handling); the answer's pods, cut down to the fields used, are validated by its ``V1Pod``
model.
"""

from __future__ import annotations

import hashlib
import threading
import time

from kubernetes import client

from .client import NETWORK_ERRORS, get, kubelet_configuration
from .config import K8sAttributesConfig
from .metadata import Extractor, decode_pod_list
from .network import NetworkSource


class KubeletSource(NetworkSource):
    kind = "kubelet"

    def __init__(
        self, name: str, config: K8sAttributesConfig, extractor: Extractor, node_name: str
    ) -> None:
        super().__init__(name, config, extractor)
        self.node_name = node_name
        self.poll_interval = float(config.kubelet.poll_interval)
        self._wake = threading.Condition()
        self._miss = False
        self._last_miss_poll = float("-inf")
        self._digest = b""
        self._api: client.ApiClient | None = None

    def request_refresh(self) -> None:
        with self._wake:
            self._miss = True
            self._wake.notify()

    def _interrupt(self) -> None:
        with self._wake:
            self._wake.notify()

    def _run(self) -> None:
        while not self.stopping:
            try:
                self._poll()
            except NETWORK_ERRORS as err:
                self._wait(self._failed(err), healthy=False)
                continue
            self._succeeded()
            self._wait(self.poll_interval, healthy=True)

    def _wait(self, seconds: float, *, healthy: bool) -> None:
        """Until the next poll: ``seconds``, or sooner for a cache miss (when healthy)."""
        deadline = time.monotonic() + seconds
        with self._wake:
            while not self.stopping:
                now = time.monotonic()
                allowed_at = self._last_miss_poll + self.poll_interval
                if healthy and self._miss and now >= allowed_at:
                    self._last_miss_poll = now
                    self.stats.miss_refreshes += 1
                    return
                if now >= deadline:
                    return
                wake = min(deadline, allowed_at) if healthy and self._miss else deadline
                self._wake.wait(max(0.0, wake - now))

    def _client(self) -> client.ApiClient:
        if self._api is None:
            conf = kubelet_configuration(self._configuration(), self.config, self.node_name)
            self._api = client.ApiClient(conf)
        return self._api

    def _poll(self) -> None:
        api = self._client()
        with self._wake:
            self._miss = False  # this poll answers every miss so far
        self.stats.requests += 1
        self.stats.polls += 1
        response = get(api, "/pods", [], (self.timeout, self.timeout))
        try:
            data = response.data
        finally:
            response.release_conn()
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest == self._digest:
            self.stats.unchanged_polls += 1
            self.store.expire()
            return
        pods, _ = decode_pod_list(data)
        self.store.replace(self._metas(pods))
        self._digest = digest
        self.stats.syncs += 1

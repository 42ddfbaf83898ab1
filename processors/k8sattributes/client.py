"""Credentials, error messages and retry waits shared by the network sources.

Credentials come from the official client's loaders: the in-cluster service account
(token and CA under ``service_account_dir``, the API server from
``KUBERNETES_SERVICE_HOST``/``PORT``; the token file is re-read every minute, so projected
tokens rotate) or a kubeconfig. They live in the client's ``Configuration`` only: no
message of this package contains a token, a header or a request body.
"""

from __future__ import annotations

import copy
import json
import os
import random
from collections.abc import Callable

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config import kube_config
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import InClusterConfigLoader

from .config import K8sAttributesConfig

#: Errors a source survives: it logs them, waits and tries again.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    ApiException,
    urllib3.exceptions.HTTPError,
    OSError,
    ConfigException,
    ValueError,  # a response the client's models reject
)


def api_configuration(config: K8sAttributesConfig) -> client.Configuration:
    """The client configuration for ``auth_type``; raises ConfigException with the reason."""
    conf = client.Configuration()
    if config.auth_type == "serviceAccount":
        folder = config.service_account_dir
        loader = InClusterConfigLoader(  # type: ignore[no-untyped-call]
            token_filename=os.path.join(folder, "token"),
            cert_filename=os.path.join(folder, "ca.crt"),
            try_refresh_token=True,
            environ=os.environ,
        )
        loader.load_and_set(conf)  # type: ignore[no-untyped-call]
    else:
        kube_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=config.kubeconfig or None,
            context=config.context or None,
            client_configuration=conf,
            persist_config=False,
        )
    conf.retries = False  # the source's own backoff retries
    return conf


def get(
    api: client.ApiClient, path: str, query: list[tuple[str, str]], timeout: tuple[float, float]
) -> urllib3.BaseHTTPResponse:
    """GET ``path`` through the client (its TLS, bearer token and token refresh).

    Returns the unread urllib3 response (a watch stays a stream); raises ApiException
    for a non-2xx answer. This is what the generated ``CoreV1Api`` methods do, without
    importing that 40,000-line module (about 21 MiB of memory).
    """
    method, url, headers, _, _ = api.param_serialize(
        method="GET",
        resource_path=path,
        query_params=query,
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, _request_timeout=timeout)
    if not 200 <= response.status <= 299:
        body = response.read().decode("utf-8", errors="replace")  # type: ignore[no-untyped-call]
        raise ApiException.from_response(http_resp=response, body=body, data=None)
    raw: urllib3.BaseHTTPResponse = response.response
    return raw


def kubelet_configuration(
    base: client.Configuration, config: K8sAttributesConfig, node_name: str
) -> client.Configuration:
    """``base`` pointed at this node's kubelet (or the API server's proxy to it)."""
    conf = copy.deepcopy(base)
    hook = base.refresh_api_key_hook
    if hook is not None:  # the loaders' hook resets host and CA too: refresh only the token

        def refresh(target: client.Configuration) -> None:
            hook(base)
            target.api_key = dict(base.api_key)

        conf.refresh_api_key_hook = refresh
    kubelet = config.kubelet
    if kubelet.endpoint:
        conf.host = kubelet.endpoint.rstrip("/")
    elif config.auth_type == "serviceAccount":
        conf.host = f"https://{node_name}:10250"
    else:
        conf.host = f"{base.host.rstrip('/')}/api/v1/nodes/{node_name}/proxy"
    if kubelet.ca_file:
        conf.ssl_ca_cert = kubelet.ca_file
    if kubelet.insecure_skip_verify:
        conf.verify_ssl = False
    return conf


def describe(err: BaseException) -> str:
    """One line for the log: the status and the server's own message; never credentials."""
    if isinstance(err, ApiException):
        text = f"HTTP {err.status} {err.reason or ''}".rstrip()
        message = _status_message(err.body)
        hint = _HINTS.get(int(err.status or 0), "")
        return "; ".join(part for part in (text, message, hint) if part)
    if isinstance(err, urllib3.exceptions.MaxRetryError) and err.reason is not None:
        return describe(err.reason)
    if isinstance(err, urllib3.exceptions.NewConnectionError):
        return f"cannot connect: {_after_colon(str(err))}"
    if isinstance(err, urllib3.exceptions.ProtocolError):
        return f"connection lost: {err.args[0] if err.args else err}"
    if isinstance(err, ConfigException):
        return f"no credentials: {err}"
    return f"{type(err).__name__}: {err}"


_HINTS = {
    401: "the token was refused",
    403: "the service account needs get, list and watch on pods (apiserver) "
    "or get on nodes/proxy (kubelet)",
}


def _status_message(body: object) -> str:
    if not isinstance(body, str | bytes) or not body:
        return ""
    try:
        status = json.loads(body)
    except ValueError:
        return ""
    message = status.get("message", "") if isinstance(status, dict) else ""
    return str(message)[:300]


def _after_colon(text: str) -> str:
    # urllib3: "<HTTPSConnection(host='127.0.0.1', port=1)>: Failed to establish ...: [Errno 111]"
    return text.split(">: ", 1)[-1]


def retry_after(err: BaseException) -> float:
    """Seconds a 429 or 503 answer asks to wait (Retry-After), else 0."""
    if isinstance(err, ApiException) and err.headers is not None:
        value = err.headers.get("Retry-After", "")
        try:
            return max(0.0, float(value))
        except ValueError:
            return 0.0
    return 0.0


class Backoff:
    """Doubling waits from ``initial`` up to ``maximum``, each within +-20% (jitter)."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.rand = rand
        self.failures = 0

    def next(self) -> float:
        base = min(self.maximum, self.initial * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return base * (1.0 + self.jitter * (2.0 * self.rand() - 1.0))

    def reset(self) -> None:
        self.failures = 0

"""The node's region label, read from the Kubernetes API with the kubernetes client.

Needs RBAC ``get`` on ``nodes`` for the agent's service account. Called from a
background thread only.
"""

from __future__ import annotations

import os
from typing import Any

from .base import DataError
from .http import FetchError

REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")


def in_cluster() -> bool:
    """Whether Kubernetes metadata can be had: the agent runs in a pod."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def node_region(node_name: str, configuration: Any = None, timeout: float = 10.0) -> str:
    """The value of the node's region label; FetchError or DataError when there is none.

    ``configuration`` is a ``kubernetes.client.Configuration``; None: the in-cluster one
    (the service account's token and CA).
    """
    try:
        from kubernetes import client, config
    except ImportError:
        raise FetchError("the kubernetes package is not installed") from None
    if configuration is None:
        configuration = client.Configuration()
        try:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except config.ConfigException as err:
            raise FetchError(f"no in-cluster Kubernetes config: {err}") from None
    with client.ApiClient(configuration) as api:
        try:
            node = client.CoreV1Api(api).read_node(node_name, _request_timeout=timeout)
        except client.ApiException as err:
            hint = " (the service account needs get on nodes)" if err.status == 403 else ""
            message = f"reading node {node_name}: HTTP {err.status} {err.reason}{hint}"
            raise FetchError(message) from None
        except Exception as err:  # urllib3's connection and timeout errors
            message = (
                f"reading node {node_name}: cannot reach the API server ({type(err).__name__})"
            )
            raise FetchError(message) from None
    labels = (node.metadata.labels if node.metadata is not None else None) or {}
    for key in REGION_LABELS:
        value = labels.get(key)
        if value:
            return str(value)
    raise DataError(f"node {node_name} has no {REGION_LABELS[0]} label")

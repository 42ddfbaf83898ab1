"""The ``k8sattributes`` processor: container and pod names from Kubernetes.

Use it before attribution: ``processors: [k8sattributes, attribution]``.

- ``config``: :class:`K8sAttributesConfig` (source, credentials, what to extract);
- ``metadata``: what is kept of a pod (:class:`PodMeta`) and how (:class:`Extractor`);
- ``index``: the pod cache with tombstones, published as immutable snapshots;
- ``kubelet``, ``apiserver``, ``downward``: the sources, each in its own thread;
- ``processor``: the per-tick lookups.

See docs/kubernetes.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from otel_kepler.component import Factory, HostSettings

from .config import K8sAttributesConfig

if TYPE_CHECKING:
    from .processor import K8sAttributesProcessor

#: Loaded on first use: the kubernetes client costs about 0.9 s and 35 MiB to import, which
#: no agent without this processor configured should pay (the registry loads every
#: factory to list and validate components).
_LAZY = {
    "ContainerMeta": "metadata",
    "Extractor": "metadata",
    "PodMeta": "metadata",
    "PodIndex": "index",
    "PodStore": "index",
    "K8sAttributesProcessor": "processor",
    "Source": "source",
    "SourceStats": "source",
}

__all__ = ["K8sAttributesConfig", "factory", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def _create(name: str, config: K8sAttributesConfig, host: HostSettings) -> K8sAttributesProcessor:
    from .processor import K8sAttributesProcessor

    return K8sAttributesProcessor(config, node_name=host.node_name, name=name)


factory = Factory(
    type="k8sattributes",
    description="Names containers and pods from the kubelet, the API server or the downward API "
    "(place before attribution)",
    config_class=K8sAttributesConfig,
    create=_create,
)

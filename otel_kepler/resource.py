"""Resources: the node's, and one per workload, as the semantic conventions name them.

Precedence for the node's resource follows the OpenTelemetry SDK: the agent's
detected defaults, then the config's ``service.resource`` attributes, then
``OTEL_RESOURCE_ATTRIBUTES``, then ``OTEL_SERVICE_NAME`` (each later one wins).

``service.instance.id`` is stable for a node across restarts: a UUID v5 of the
node name in the namespace the semantic conventions give for derived instance
ids, so a backend that maps it to ``instance`` keeps its series after a restart.

A workload's resource is the node's plus the workload's own identity:
``k8s.pod.uid``/``k8s.pod.name``/``k8s.namespace.name`` for a pod,
``container.id``/``k8s.container.name`` (and its pod's) for a container,
``process.pid``/``process.executable.name``/``process.command`` for a process and
``host.id``/``host.name`` for a virtual machine (a guest is a host to the
conventions). A downstream Collector's k8sattributes processor associates by
these keys.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping

from opentelemetry.sdk.resources import OTELResourceDetector, Resource

from otel_kepler import __version__
from otel_kepler.data import WorkloadEnergy

#: The namespace the semantic conventions give for a derived service.instance.id.
INSTANCE_ID_NAMESPACE = uuid.UUID("4d63009a-8d0f-11ee-aad7-4c796ed8e320")

ResourceAttributes = tuple[tuple[str, str | int], ...]


def instance_id(node_name: str) -> str:
    """The stable ``service.instance.id`` of the agent on ``node_name``."""
    return str(uuid.uuid5(INSTANCE_ID_NAMESPACE, f"otel-kepler/{node_name}"))


def node_resource(node_name: str, configured: Mapping[str, str] | None = None) -> Resource:
    """The node's resource: defaults < config ``service.resource`` < OTEL_* variables."""
    host = socket.gethostname()
    defaults: dict[str, str] = {
        "service.name": "otel-kepler",
        "service.version": __version__,
        "service.instance.id": instance_id(node_name or host),
        "host.name": host,
    }
    in_kubernetes = os.environ.get("NODE_NAME") or os.environ.get("KUBERNETES_SERVICE_HOST")
    if node_name and (in_kubernetes or node_name != host):
        defaults["k8s.node.name"] = node_name
    resource = Resource(defaults)
    if configured:
        resource = resource.merge(Resource(dict(configured)))
    return resource.merge(OTELResourceDetector().detect())


def node_attributes(resource: Resource) -> ResourceAttributes:
    out: list[tuple[str, str | int]] = []
    for key, value in resource.attributes.items():
        if isinstance(value, bool) or not isinstance(value, str | int):
            value = str(value)
        out.append((key, value))
    return tuple(out)


def workload_attributes(node: ResourceAttributes, w: WorkloadEnergy) -> ResourceAttributes:
    """The resource of workload ``w``: the node's attributes plus its identity."""
    a = w.attributes
    own: dict[str, str | int] = {}
    if w.level == "pod":
        own["k8s.pod.uid"] = a.get("pod_id", "")
        _put(own, "k8s.pod.name", a.get("pod_name"))
        _put(own, "k8s.namespace.name", a.get("pod_namespace"))
    elif w.level == "container":
        own["container.id"] = a.get("container_id", "")
        _put(own, "k8s.container.name", a.get("container_name"))
        _put(own, "container.runtime", a.get("runtime"))
        _pod_of(own, w)
    elif w.level == "process":
        pid = a.get("pid", "")
        own["process.pid"] = int(pid) if pid.isdigit() else pid
        _put(own, "process.executable.name", a.get("comm"))
        _put(own, "process.executable.path", a.get("exe"))
        _put(own, "process.command", a.get("exe") or a.get("comm"))
        _put(own, "container.id", a.get("container_id"))
        _pod_of(own, w)
    elif w.level == "vm":
        _put(own, "host.id", a.get("vm_id"))
        _put(own, "host.name", a.get("vm_name"))
        _put(own, "host.type", a.get("hypervisor"))
    # the node's pairs are shared by every workload's resource, not copied into each
    return (*(pair for pair in node if pair[0] not in own), *own.items())


def _pod_of(own: dict[str, str | int], w: WorkloadEnergy) -> None:
    wl = w.workload
    _put(own, "k8s.pod.uid", wl.pod_id)
    _put(own, "k8s.pod.name", wl.pod_name)
    _put(own, "k8s.namespace.name", wl.pod_namespace)


def _put(own: dict[str, str | int], key: str, value: str | None) -> None:
    if value:
        own[key] = value

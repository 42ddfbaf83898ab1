"""What the processor keeps of a pod: a small frozen :class:`PodMeta` per pod.

Both network sources get pods as JSON through the official client, whose models validate
the parts read here (:func:`decode_pod`); the :class:`Extractor` keeps only what the series
need: the uid, name and namespace, the
selected labels and annotations under their series names, and every container id of the
pod (``containerStatuses``, ``initContainerStatuses``, ``ephemeralContainerStatuses``,
and the previous container of a restarted one, from ``lastState.terminated``, whose
exited processes may still be reported) with the runtime prefix (``containerd://``,
``cri-o://``, ``docker://``) stripped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client is imported only where pods are decoded (not in sidecar mode)
    from kubernetes.client import V1ContainerStatus, V1ObjectMeta

from .config import RESERVED_LABELS, ExtractConfig, FieldExtract, default_tag

#: containerID prefix -> the runtime name the cgroup parser uses
RUNTIMES = {"containerd": "containerd", "cri-o": "cri-o", "docker": "docker"}
#: A static pod's mirror in the API server names the kubelet's own uid (the config hash).
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ContainerMeta:
    id: str  # without the runtime prefix
    name: str
    runtime: str  # containerd, cri-o, docker, or the prefix as written


@dataclass(frozen=True, slots=True)
class PodMeta:
    uid: str
    name: str
    namespace: str
    labels: Labels  # selected labels, annotations and owner names, as series labels
    containers: tuple[ContainerMeta, ...]
    aliases: tuple[str, ...] = ()  # other uids naming this pod (a static pod's config hash)


_METADATA_USED = ("name", "namespace", "uid", "labels", "annotations", "ownerReferences")
_STATUS_USED = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")


@dataclass(frozen=True, slots=True)
class PodObject:
    """The parts of a pod the extractor reads, each validated by the client's model."""

    metadata: V1ObjectMeta
    statuses: list[V1ContainerStatus]  # containers, init containers, ephemeral containers


def decode_pod(raw: Any) -> PodObject:
    """A pod object (a JSON dict) as :class:`PodObject`; ValueError where the models object.

    Only ``metadata`` (without managedFields) and the container statuses are validated,
    by ``V1ObjectMeta`` and ``V1ContainerStatus``: validating a whole ``V1Pod`` makes the
    client build validators for the entire pod model (about 10 MiB more memory) and
    spends most of its time on the spec, which nothing here reads.
    """
    from kubernetes.client import V1ContainerStatus, V1ObjectMeta

    if not isinstance(raw, dict):
        raise ValueError("a pod is not a JSON object")
    meta = raw.get("metadata") or {}
    status = raw.get("status") or {}
    metadata = V1ObjectMeta.from_dict({k: meta[k] for k in _METADATA_USED if k in meta})
    statuses = [
        V1ContainerStatus.from_dict(s) for key in _STATUS_USED for s in status.get(key) or ()
    ]
    return PodObject(metadata or V1ObjectMeta(), [s for s in statuses if s is not None])


def decode_pod_list(data: bytes) -> tuple[list[PodObject], str]:
    """The pods of a ``PodList`` answer and its resourceVersion (ValueError if malformed)."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list | None):
        raise ValueError("the answer is not a PodList")
    pods = [decode_pod(item) for item in doc.get("items") or ()]
    meta = doc.get("metadata") or {}
    return pods, str(meta.get("resourceVersion") or "")


def split_container_id(raw: str) -> tuple[str, str]:
    """``("containerd", "abc...")`` from ``containerd://abc...``; ``("", raw)`` without prefix."""
    prefix, sep, cid = raw.partition("://")
    if not sep:
        return "", raw
    return RUNTIMES.get(prefix, prefix), cid


class _Rule:
    """One compiled ``extract.labels`` or ``extract.annotations`` entry."""

    def __init__(self, kind: str, config: FieldExtract) -> None:
        self.kind = kind
        self.key = config.key
        self.regex = re.compile(config.key_regex) if config.key_regex else None
        # $1 (the Collector's spelling) -> \1 (Python's) for Match.expand
        self.template = re.sub(r"\$(\d+)", r"\\\1", config.tag_name)

    def apply(self, values: dict[str, str], out: dict[str, str]) -> None:
        if self.regex is None:
            value = values.get(self.key)
            if value is not None:
                out[self.template or default_tag(self.kind, self.key)] = value
            return
        for key in sorted(values):
            match = self.regex.fullmatch(key)
            if match is not None:
                name = match.expand(self.template) if self.template else None
                name = name or default_tag(self.kind, key)
                if name not in RESERVED_LABELS:  # a label otel-kepler sets itself
                    out[name] = values[key]


class Extractor:
    """Turns a ``V1Pod`` into a :class:`PodMeta` as ``extract`` asks."""

    def __init__(self, config: ExtractConfig) -> None:
        self.label_rules = [_Rule("labels", c) for c in config.labels]
        self.annotation_rules = [_Rule("annotations", c) for c in config.annotations]
        wanted = set(config.metadata)
        self.owner_names = [
            name
            for name in (
                "k8s.deployment.name",
                "k8s.replicaset.name",
                "k8s.statefulset.name",
                "k8s.daemonset.name",
                "k8s.job.name",
            )
            if name in wanted
        ]

    def pod(self, pod: PodObject) -> PodMeta | None:
        """The metadata of ``pod``; None for an object without a uid (never a real pod)."""
        meta = pod.metadata
        if not meta.uid:
            return None
        labels = meta.labels or {}
        annotations = meta.annotations or {}
        out = self._selected(labels, annotations)
        if self.owner_names:
            self._owners(meta, labels, out)
        mirror = annotations.get(MIRROR_ANNOTATION)
        return PodMeta(
            uid=meta.uid,
            name=meta.name or "",
            namespace=meta.namespace or "",
            labels=tuple(sorted(out.items())),
            containers=tuple(_containers(pod)),
            aliases=(mirror,) if mirror and mirror != meta.uid else (),
        )

    def selected(self, labels: dict[str, str], annotations: dict[str, str]) -> Labels:
        """The series labels ``extract.labels`` and ``extract.annotations`` pick."""
        return tuple(sorted(self._selected(labels, annotations).items()))

    def _selected(self, labels: dict[str, str], annotations: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for rule in self.label_rules:
            rule.apply(labels, out)
        for rule in self.annotation_rules:
            rule.apply(annotations, out)
        return out

    def _owners(self, meta: V1ObjectMeta, labels: dict[str, str], out: dict[str, str]) -> None:
        found: dict[str, str] = {}
        for ref in meta.owner_references or ():
            if ref.controller is False:
                continue
            kind = ref.kind.lower()
            found[f"k8s.{kind}.name"] = ref.name
            if kind == "replicaset":
                deployment = _deployment_of(ref.name, labels.get("pod-template-hash", ""))
                if deployment:
                    found["k8s.deployment.name"] = deployment
        for name in self.owner_names:
            if name in found:
                out[name] = found[name]


def _deployment_of(replicaset: str, template_hash: str) -> str:
    """A Deployment names its ReplicaSets ``<deployment>-<pod-template-hash>``."""
    suffix = f"-{template_hash}"
    if template_hash and replicaset.endswith(suffix):
        return replicaset[: -len(suffix)]
    return ""


def _containers(pod: PodObject) -> Iterable[ContainerMeta]:
    for cs in pod.statuses:
        if cs.container_id:
            runtime, cid = split_container_id(cs.container_id)
            yield ContainerMeta(cid, cs.name, runtime)
        ended = cs.last_state.terminated if cs.last_state is not None else None
        if ended is not None and ended.container_id:
            runtime, cid = split_container_id(ended.container_id)
            yield ContainerMeta(cid, cs.name, runtime)

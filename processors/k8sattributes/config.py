"""Config of the ``k8sattributes`` processor: where pod metadata comes from and what is kept."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Literal

from otel_kepler.schema import ConfigError, Duration

SourceName = Literal["kubelet", "apiserver", "downward_api"]
AuthType = Literal["serviceAccount", "kubeConfig"]
MetadataName = Literal[
    "k8s.pod.name",
    "k8s.namespace.name",
    "k8s.pod.uid",
    "k8s.container.name",
    "k8s.deployment.name",
    "k8s.replicaset.name",
    "k8s.statefulset.name",
    "k8s.daemonset.name",
    "k8s.job.name",
]

DEFAULT_METADATA: list[MetadataName] = [
    "k8s.pod.name",
    "k8s.namespace.name",
    "k8s.pod.uid",
    "k8s.container.name",
]
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

#: Labels the metric contract already uses: a tag_name must not overwrite them.
RESERVED_LABELS = frozenset(
    {
        "container_id",
        "container_name",
        "runtime",
        "pod_id",
        "pod_name",
        "pod_namespace",
        "node_name",
        "zone",
        "state",
        "pid",
        "comm",
        "exe",
        "source",
    }
)


@dataclass
class FieldExtract:
    """One pod label or annotation to copy onto the container and pod series."""

    key: str = field(default="", metadata={"doc": "the label or annotation key"})
    key_regex: str = field(
        default="",
        metadata={"doc": "instead of key: every key this regular expression fully matches"},
    )
    tag_name: str = field(
        default="",
        metadata={
            "doc": "the series label; default k8s.pod.label.<key> or k8s.pod.annotation.<key>; "
            "with key_regex, $1... name its groups"
        },
    )

    def validate(self) -> None:
        if bool(self.key) == bool(self.key_regex):
            raise ValueError("set exactly one of key and key_regex")
        if self.key_regex:
            try:
                re.compile(self.key_regex)
            except re.error as err:
                raise ConfigError("key_regex", f"invalid regular expression: {err}") from None
        if self.tag_name in RESERVED_LABELS:
            raise ConfigError("tag_name", f'"{self.tag_name}" is a label otel-kepler sets itself')


@dataclass
class ExtractConfig:
    """What is copied from a pod onto its containers' and its own series."""

    metadata: list[MetadataName] = field(
        default_factory=lambda: list(DEFAULT_METADATA),
        metadata={
            "doc": "k8s.pod.name, k8s.namespace.name and k8s.container.name fill pod_name, "
            "pod_namespace and container_name; k8s.pod.uid fills pod_id where the cgroup path "
            "does not name the pod; the owner names (k8s.deployment.name...) become labels"
        },
    )
    labels: list[FieldExtract] = field(
        default_factory=list, metadata={"doc": "pod labels to copy (none by default)"}
    )
    annotations: list[FieldExtract] = field(
        default_factory=list, metadata={"doc": "pod annotations to copy (none by default)"}
    )

    def validate(self) -> None:
        if len(set(self.metadata)) != len(self.metadata):
            raise ConfigError("metadata", "a name is listed twice")
        seen: dict[str, str] = {}
        for kind in ("labels", "annotations"):
            rules: list[FieldExtract] = getattr(self, kind)
            for i, rule in enumerate(rules):
                name = rule.tag_name or (rule.key and default_tag(kind, rule.key))
                if not name or "$" in name:
                    continue  # named per matched key: checked when pods arrive
                where = f"{kind}[{i}]"
                if name in seen:
                    raise ConfigError(f"{where}.tag_name", f'"{name}" is also set by {seen[name]}')
                seen[name] = where


def default_tag(kind: str, key: str) -> str:
    """``k8s.pod.label.<key>`` or ``k8s.pod.annotation.<key>``, the Collector's names."""
    return f"k8s.pod.{'label' if kind == 'labels' else 'annotation'}.{key}"


@dataclass
class KubeletConfig:
    """``source: kubelet``: GET /pods of this node's kubelet."""

    endpoint: str = field(
        default="",
        metadata={
            "doc": "default https://<node_name>:10250 (serviceAccount), or the API server's "
            "node proxy <server>/api/v1/nodes/<node_name>/proxy (kubeConfig)"
        },
    )
    poll_interval: Duration = field(
        default=Duration(10.0),
        metadata={"doc": "time between two GET /pods; a cache miss refreshes at most this often"},
    )
    ca_file: str = field(
        default="", metadata={"doc": "CA of the kubelet's serving certificate; default the auth's"}
    )
    insecure_skip_verify: bool = field(
        default=False,
        metadata={"doc": "do not verify the kubelet's certificate (self-signed serving certs)"},
    )

    def validate(self) -> None:
        if self.poll_interval < 0.1:
            raise ConfigError("poll_interval", f"must be at least 100ms, got {self.poll_interval}")
        if self.endpoint and not self.endpoint.startswith(("https://", "http://")):
            raise ConfigError("endpoint", f"must be an https:// URL, got {self.endpoint!r}")
        _check_file("ca_file", self.ca_file)


@dataclass
class ApiServerConfig:
    """``source: apiserver``: list then watch the pods bound to this node."""

    watch_timeout: Duration = field(
        default=Duration(300.0),
        metadata={"doc": "the server ends each watch after this long; it resumes at once"},
    )

    def validate(self) -> None:
        if self.watch_timeout < 1.0:
            raise ConfigError("watch_timeout", f"must be at least 1s, got {self.watch_timeout}")


@dataclass
class DownwardApiConfig:
    """``source: downward_api`` (sidecar mode): every process belongs to this one pod."""

    pod_name: str = field(default="", metadata={"doc": "default $POD_NAME"})
    pod_namespace: str = field(default="", metadata={"doc": "default $POD_NAMESPACE"})
    pod_uid: str = field(default="", metadata={"doc": "default $POD_UID"})
    labels_file: str = field(
        default="", metadata={"doc": "a downwardAPI volume file of metadata.labels"}
    )
    annotations_file: str = field(
        default="", metadata={"doc": "a downwardAPI volume file of metadata.annotations"}
    )


@dataclass
class BackoffConfig:
    """Waits between failed requests: doubling from initial_interval up to max_interval."""

    initial_interval: Duration = field(default=Duration(1.0))
    max_interval: Duration = field(default=Duration(30.0))

    def validate(self) -> None:
        if self.initial_interval <= 0:
            raise ConfigError("initial_interval", "must be more than 0")
        if self.max_interval < self.initial_interval:
            raise ConfigError(
                "max_interval",
                f"must be at least initial_interval ({self.initial_interval}), "
                f"got {self.max_interval}",
            )


@dataclass
class K8sAttributesConfig:
    """Names the containers and pods of a node's workloads from Kubernetes pod metadata.

    Runs before attribution in the pipeline: processors: [k8sattributes, attribution].
    """

    source: SourceName = field(
        default="kubelet",
        metadata={
            "doc": "kubelet (poll this node's kubelet), apiserver (list and watch this node's "
            "pods), downward_api (sidecar: the pod's own identity from its environment)"
        },
    )
    auth_type: AuthType = field(
        default="serviceAccount",
        metadata={"doc": "serviceAccount (in-cluster token and CA) or kubeConfig (a kubeconfig)"},
    )
    kubeconfig: str = field(
        default="", metadata={"doc": "kubeConfig: the file; default $KUBECONFIG, ~/.kube/config"}
    )
    context: str = field(
        default="", metadata={"doc": "kubeConfig: the context; default the current one"}
    )
    service_account_dir: str = field(
        default=SERVICE_ACCOUNT_DIR,
        metadata={"doc": "serviceAccount: the folder holding token and ca.crt"},
    )
    request_timeout: Duration = field(
        default=Duration(10.0), metadata={"doc": "connect and read timeout of one request"}
    )
    initial_sync_timeout: Duration = field(
        default=Duration(5.0),
        metadata={"doc": "how long start() waits for the first pod list (0: do not wait)"},
    )
    tombstone_ttl: Duration = field(
        default=Duration(60.0),
        metadata={"doc": "a deleted pod still names its workloads this long"},
    )
    kubelet: KubeletConfig = field(default_factory=KubeletConfig)
    apiserver: ApiServerConfig = field(default_factory=ApiServerConfig)
    downward_api: DownwardApiConfig = field(default_factory=DownwardApiConfig)
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)

    def validate(self) -> None:
        if self.request_timeout <= 0:
            raise ConfigError("request_timeout", "must be more than 0")
        if self.initial_sync_timeout < 0:
            raise ConfigError("initial_sync_timeout", "must be 0 or more")
        if self.tombstone_ttl < 0:
            raise ConfigError("tombstone_ttl", "must be 0 or more")
        if self.auth_type == "kubeConfig":
            _check_file("kubeconfig", self.kubeconfig)


def _check_file(path: str, value: str) -> None:
    if value and not os.path.isfile(value):
        raise ConfigError(path, f"no such file: {value}")

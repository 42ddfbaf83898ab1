"""``source: downward_api``: sidecar mode, where every process seen is the pod's own.

The agent runs in a container of the application's pod with ``shareProcessNamespace:
true``: /proc shows only that pod's processes. Its identity comes from the downward API,
no request at all: ``POD_NAME``, ``POD_NAMESPACE`` and ``POD_UID`` in the environment
(or ``downward_api.pod_name``...), and optionally the pod's labels and annotations from
downwardAPI volume files (lines ``key="value"``).
"""

from __future__ import annotations

import json
import os

from otel_kepler.component import ComponentError

from .config import DownwardApiConfig
from .metadata import Extractor, PodMeta
from .source import Source

_ENV = {"pod_name": "POD_NAME", "pod_namespace": "POD_NAMESPACE", "pod_uid": "POD_UID"}


class DownwardApiSource(Source):
    kind = "downward_api"

    def start(self) -> None:
        """Reads the identity now; a missing pod uid is a ComponentError that names the fix."""
        pod = own_pod(self.config.downward_api, self.extractor)
        self.own_pod = pod
        self.store.replace([pod])
        self._synced.set()

    def stop(self) -> None:
        pass  # no thread: nothing changes while the pod lives


def own_pod(config: DownwardApiConfig, extractor: Extractor) -> PodMeta:
    values = {
        field: getattr(config, field) or os.environ.get(env, "") for field, env in _ENV.items()
    }
    if not values["pod_uid"]:
        raise ComponentError(
            "source downward_api needs the pod's uid: set the environment variable POD_UID "
            "from the downward API (fieldRef metadata.uid), or downward_api.pod_uid"
        )
    labels = read_downward_file(config.labels_file)
    annotations = read_downward_file(config.annotations_file)
    return PodMeta(
        uid=values["pod_uid"],
        name=values["pod_name"],
        namespace=values["pod_namespace"],
        labels=extractor.selected(labels, annotations),
        containers=(),
    )


def read_downward_file(path: str) -> dict[str, str]:
    """``key="value"`` lines of a downwardAPI volume file (values quoted as Go's %q)."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ComponentError(f"cannot read downward API file {path}: {err.strerror}") from None
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, quoted = line.partition("=")
        if not sep or not key:
            continue
        try:
            value = json.loads(quoted)
        except ValueError:
            value = quoted.strip('"')
        out[key.strip()] = str(value)
    return out

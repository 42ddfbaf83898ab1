"""The ``k8sattributes`` processor: give workloads their container and pod names.

Place it BEFORE ``attribution`` in a pipeline (``processors: [k8sattributes,
attribution]``): it replaces the ``workload`` of every process of the batch (and of
``batch.exited``) with an enriched :class:`~otel_kepler.data.Workload` that keeps the
cgroup's container_id, pod_id and runtime and adds container_name, pod_name,
pod_namespace and the selected labels, so that attribution builds named container and
pod series. After attribution it would change nothing that is emitted; a processor
cannot see the pipeline, so this order is documented, not checked.

Per tick it only reads the source's current index snapshot: dict lookups, no lock, no
I/O. The result per container is memoised: all processes of a container get one shared
Workload object, the same object tick after tick while the pod's metadata stays the same
(attribution rebuilds a series' labels only when that object changes).

- A container the index does not know keeps its workload as it came (container labels,
  no names, the pod from the cgroup if any); it asks the source for a refresh once (the
  kubelet source polls early, at most once per interval).
- Host processes (no container, no pod) are left alone, except in sidecar mode
  (``source: downward_api``), where every process belongs to the pod.
"""

from __future__ import annotations

import threading
from typing import Any

from otel_kepler.component import Processor
from otel_kepler.data import NO_WORKLOAD, Batch, ProcessSample, Workload

from .config import K8sAttributesConfig
from .downward import DownwardApiSource
from .index import EMPTY_INDEX, PodIndex
from .metadata import Extractor, PodMeta
from .source import Source, log

#: Memoised results are rebuilt from scratch this often (ticks), so that containers gone
#: long ago do not stay in memory while the index does not change.
MEMO_RESET_TICKS = 64

_Memo = dict[str, tuple[Workload, Workload]]  # key -> (workload in, workload out)


class K8sAttributesProcessor(Processor):
    def __init__(
        self, config: K8sAttributesConfig, node_name: str, name: str = "k8sattributes"
    ) -> None:
        self.config = config
        self.node_name = node_name
        self.name = name
        # a sidecar gives every process it sees to its pod, so it needs to see processes
        # (a container scan's rest of the node is not the pod's); else it names the
        # workload of each sample, whatever the sample sums
        self.uses_processes = config.source == "downward_api"
        wanted = set(config.extract.metadata)
        self._pod_name = "k8s.pod.name" in wanted
        self._namespace = "k8s.namespace.name" in wanted
        self._pod_uid = "k8s.pod.uid" in wanted
        self._container_name = "k8s.container.name" in wanted
        self.source: Source | None = None
        self._index: PodIndex = EMPTY_INDEX
        self._memo: _Memo = {}
        self._previous: _Memo = {}  # results before the index changed: reused when equal
        self._asked: set[str] = set()  # keys a refresh was requested for, since the change
        self._ticks = 0

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        self.source = _acquire(self)
        timeout = float(self.config.initial_sync_timeout)
        if timeout > 0 and not self.source.wait_synced(timeout):
            log.warning(
                "%s: no pod list from the %s after %gs; going on without names until it comes",
                self.name,
                self.source.kind,
                timeout,
            )

    def shutdown(self) -> None:
        if self.source is not None:
            _release(self.source)
            self.source = None

    # -- per tick -----------------------------------------------------------------

    def process(self, batch: Batch) -> None:
        source = self.source
        if source is None:
            return
        self._sync(source.index)
        whole_pod = source.own_pod
        for sample in batch.processes.values():
            self._enrich(sample, whole_pod)
        for sample in batch.exited:
            self._enrich(sample, whole_pod)
        self._previous = {}

    def _sync(self, index: PodIndex) -> None:
        self._ticks += 1
        if index is not self._index or self._ticks % MEMO_RESET_TICKS == 0:
            if index is not self._index:
                self._asked.clear()
            self._index = index
            self._previous = self._memo
            self._memo = {}

    def _enrich(self, sample: ProcessSample, whole_pod: PodMeta | None) -> None:
        w = sample.workload
        if w is NO_WORKLOAD and whole_pod is None:
            return  # a host process
        key = w.container_id or w.pod_id
        hit = self._memo.get(key)
        if hit is None or hit[0] is not w:
            hit = (w, self._resolve(w, key, whole_pod))
            self._memo[key] = hit
        sample.workload = hit[1]

    def _resolve(self, w: Workload, key: str, whole_pod: PodMeta | None) -> Workload:
        """The enriched workload of ``w``, the previous equal object where there is one."""
        index = self._index
        container = index.containers.get(w.container_id) if w.container_id else None
        if whole_pod is not None:
            pod, name, runtime = whole_pod, "", w.runtime
        elif container is not None:
            pod, meta = container
            name, runtime = meta.name, w.runtime or meta.runtime
        else:
            found = index.pods.get(w.pod_id) if w.pod_id else None
            if found is None or w.container_id:
                self._missed(key)  # a container the kubelet may not have reported yet
            if found is None:
                return w  # unknown: container labels only, until the index knows it
            pod, name, runtime = found, "", w.runtime
        enriched = Workload(
            container_id=w.container_id,
            runtime=runtime,
            pod_id=w.pod_id or (pod.uid if self._pod_uid else ""),
            container_name=name if self._container_name else "",
            pod_name=pod.name if self._pod_name else "",
            pod_namespace=pod.namespace if self._namespace else "",
            labels=pod.labels,
        )
        before = self._previous.get(key)
        if before is not None and before[1] == enriched:
            return before[1]
        return enriched

    def _missed(self, key: str) -> None:
        if key in self._asked or self.source is None:
            return
        self._asked.add(key)
        self.source.request_refresh()


# -- one source per configured component, shared by the pipelines that use it ----------

_lock = threading.Lock()
_shared: dict[tuple[str, int, str], tuple[Source, int, Any]] = {}


def make_source(name: str, config: K8sAttributesConfig, node_name: str) -> Source:
    """The configured source; the network ones (and the kubernetes client) load only here."""
    extractor = Extractor(config.extract)
    if config.source == "kubelet":
        from .kubelet import KubeletSource

        return KubeletSource(name, config, extractor, node_name)
    if config.source == "apiserver":
        from .apiserver import ApiServerSource

        return ApiServerSource(name, config, extractor, node_name)
    return DownwardApiSource(name, config, extractor)


def _acquire(processor: K8sAttributesProcessor) -> Source:
    """The component's source; pipelines sharing one configured component share it.

    Keyed by the component id and the identity of its config object (the service
    gives every pipeline the same object), so the watch or the poll runs once.
    """
    key = (processor.name, id(processor.config), processor.node_name)
    with _lock:
        entry = _shared.get(key)
        if entry is None:
            source = make_source(processor.name, processor.config, processor.node_name)
            source.start()
            entry = (source, 0, processor.config)  # holding the config keeps its id unique
        _shared[key] = (entry[0], entry[1] + 1, entry[2])
        return entry[0]


def _release(source: Source) -> None:
    with _lock:
        for key, (shared, users, config) in list(_shared.items()):
            if shared is source:
                if users > 1:
                    _shared[key] = (shared, users - 1, config)
                    return
                del _shared[key]
                break
    source.stop()

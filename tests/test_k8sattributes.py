"""The k8sattributes processor against the real kubernetes client and an HTTPS API server.

The server (tests/k8s_server.py) runs on 127.0.0.1 with a self-signed certificate and a
bearer token; the sources reach it through the official client, with a kubeconfig or
the in-cluster service-account loader. Waits are bounded polls, never fixed sleeps
whose length a result depends on.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config import kube_config

from otel_kepler.component import ComponentError, HostSettings
from otel_kepler.config import load_file
from otel_kepler.data import (
    NO_WORKLOAD,
    TERMINATED,
    Batch,
    EnergyReading,
    ProcessSample,
    Workload,
    WorkloadEnergy,
)
from otel_kepler.processors.attribution import AttributionConfig, AttributionProcessor
from otel_kepler.processors.k8sattributes import (
    ContainerMeta,
    Extractor,
    K8sAttributesConfig,
    K8sAttributesProcessor,
    PodMeta,
    PodStore,
    Source,
    factory,
)
from otel_kepler.processors.k8sattributes.config import ExtractConfig
from otel_kepler.processors.k8sattributes.metadata import decode_pod
from otel_kepler.processors.k8sattributes.network import NetworkSource
from otel_kepler.registry import default_registry
from otel_kepler.schema import ConfigError, decode
from tests.k8s_server import (
    KubeServer,
    container_id,
    make_pod,
    pod_container_ids,
    restart_container,
)
from tests.peers import TlsCert, make_self_signed_cert

ROOT = Path(__file__).resolve().parent.parent
NODE = "node-a"
PATH = "processors.k8sattributes"
LOGGER = "otel_kepler.processors.k8sattributes"
FAST = {
    "backoff": {"initial_interval": "20ms", "max_interval": "100ms"},
    "request_timeout": "3s",
    "initial_sync_timeout": "5s",
}


# ------------------------------------------------------------------ helpers


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.005)


def config(raw: dict[str, Any]) -> K8sAttributesConfig:
    return decode(K8sAttributesConfig, raw, PATH)


def uid_of(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["uid"])


def cgroup_workload(pod: dict[str, Any], container: str = "app", restarts: int = 0) -> Workload:
    """The workload the cgroup parser gives a process of that container."""
    return Workload(container_id(uid_of(pod), container, restarts), "containerd", uid_of(pod))


def tick(processor: K8sAttributesProcessor, workloads: list[Workload]) -> list[Workload]:
    """One batch with one process per workload; returns the workloads after the processor."""
    batch = Batch(0, 5.0, NODE)
    for pid, w in enumerate(workloads, start=1):
        batch.processes[pid] = ProcessSample(pid, 1, "p", "/bin/p", w, 1.0, 0.1)
    processor.process(batch)
    return [batch.processes[pid].workload for pid in range(1, len(workloads) + 1)]


def names(w: Workload) -> tuple[str, str, str]:
    return (w.pod_namespace, w.pod_name, w.container_name)


@pytest.fixture
def kube(tls_cert: TlsCert) -> Iterator[KubeServer]:
    with KubeServer(tls_cert, kubelet_node=NODE, bookmark_interval=0.2) as server:
        yield server


def write_kubeconfig(path: Path, server: KubeServer, token: str) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "clusters": [
            {
                "name": "test",
                "cluster": {
                    "server": server.url,
                    "certificate-authority": str(server.tls.cert_file),
                },
            }
        ],
        "users": [{"name": "agent", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "agent"}}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def kubeconfig(tmp_path: Path, kube: KubeServer) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", kube, kube.token)


@pytest.fixture
def started() -> Iterator[Callable[[K8sAttributesConfig], K8sAttributesProcessor]]:
    """Builds and starts processors; shuts them all down after the test."""
    made: list[K8sAttributesProcessor] = []

    def start(cfg: K8sAttributesConfig) -> K8sAttributesProcessor:
        processor = K8sAttributesProcessor(cfg, NODE)
        made.append(processor)
        processor.start()
        return processor

    yield start
    for processor in made:
        processor.shutdown()


def apiserver_config(kubeconfig: Path, **extra: Any) -> K8sAttributesConfig:
    raw = {"source": "apiserver", "auth_type": "kubeConfig", "kubeconfig": str(kubeconfig)}
    return config({**raw, **FAST, **extra})


def kubelet_config(kubeconfig: Path, **extra: Any) -> K8sAttributesConfig:
    raw = {"source": "kubelet", "auth_type": "kubeConfig", "kubeconfig": str(kubeconfig)}
    return config({**raw, **FAST, **extra})


def stats_of(processor: K8sAttributesProcessor) -> Any:
    assert processor.source is not None
    return processor.source.stats


def source_of(processor: K8sAttributesProcessor) -> Source:
    assert processor.source is not None
    return processor.source


# ------------------------------------------------------------------ config


def test_defaults() -> None:
    cfg = config({})
    assert cfg.source == "kubelet"
    assert cfg.auth_type == "serviceAccount"
    assert cfg.service_account_dir == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert cfg.kubelet.poll_interval == 10.0
    assert cfg.apiserver.watch_timeout == 300.0
    assert cfg.tombstone_ttl == 60.0
    assert cfg.initial_sync_timeout == 5.0
    assert (cfg.backoff.initial_interval, cfg.backoff.max_interval) == (1.0, 30.0)
    assert cfg.extract.metadata == [
        "k8s.pod.name",
        "k8s.namespace.name",
        "k8s.pod.uid",
        "k8s.container.name",
    ]
    assert cfg.extract.labels == [] and cfg.extract.annotations == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"source": "etcd"},
            "source: must be one of 'kubelet', 'apiserver', 'downward_api', got 'etcd'",
        ),
        (
            {"auth_type": "token"},
            "auth_type: must be one of 'serviceAccount', 'kubeConfig', got 'token'",
        ),
        (
            {"kubelet": {"poll_interval": "50ms"}},
            "kubelet.poll_interval: must be at least 100ms, got 0.05s",
        ),
        (
            {"kubelet": {"endpoint": "node-a:10250"}},
            "kubelet.endpoint: must be an https:// URL, got 'node-a:10250'",
        ),
        (
            {"apiserver": {"watch_timeout": "500ms"}},
            "apiserver.watch_timeout: must be at least 1s, got 0.5s",
        ),
        (
            {"backoff": {"initial_interval": "2s", "max_interval": "1s"}},
            "backoff.max_interval: must be at least initial_interval (2s), got 1s",
        ),
        (
            {"auth_type": "kubeConfig", "kubeconfig": "/nonexistent/kubeconfig"},
            "kubeconfig: no such file: /nonexistent/kubeconfig",
        ),
        (
            {"extract": {"labels": [{"key": "app", "key_regex": "a.*"}]}},
            "extract.labels[0]: set exactly one of key and key_regex",
        ),
        (
            {"extract": {"labels": [{"key_regex": "(app"}]}},
            "extract.labels[0].key_regex: invalid regular expression: "
            "missing ), unterminated subpattern at position 0",
        ),
        (
            {"extract": {"labels": [{"key": "app", "tag_name": "pod_name"}]}},
            'extract.labels[0].tag_name: "pod_name" is a label otel-kepler sets itself',
        ),
        (
            {
                "extract": {
                    "labels": [{"key": "app"}],
                    "annotations": [{"key": "team", "tag_name": "k8s.pod.label.app"}],
                }
            },
            'extract.annotations[0].tag_name: "k8s.pod.label.app" is also set by labels[0]',
        ),
        (
            {"extract": {"metadata": ["k8s.pod.name", "k8s.pod.name"]}},
            "extract.metadata: a name is listed twice",
        ),
        (
            {"extract": {"labels": [{"key": "app", "from": "namespace"}]}},
            "extract.labels[0].from: unknown key (known keys: key, key_regex, tag_name)",
        ),
    ],
)
def test_config_errors_name_their_path(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(raw)
    assert str(err.value) == f"{PATH}.{message}"


def test_sidecar_config_is_valid() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "otel_kepler.cli", "validate", "--config", "configs/sidecar.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "configs/sidecar.yaml: valid (metrics)\n"


# ------------------------------------------------------------------ the test server itself


def test_the_server_answers_the_real_client(kube: KubeServer, kubeconfig: Path) -> None:
    kube.add_pods([make_pod("a", node=NODE), make_pod("b", node="node-b")])
    conf = client.Configuration()
    kube_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=conf, persist_config=False
    )
    api = client.ApiClient(conf)
    assert client.VersionApi(api).get_code().git_version == "v1.31.4"
    core = client.CoreV1Api(api)
    pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE}")
    assert [p.metadata.name for p in pods.items] == ["a"]  # type: ignore[union-attr]
    assert pods.metadata is not None and pods.metadata.resource_version == "102"
    everything = core.list_namespaced_pod("default")
    assert sorted(str(p.metadata.name) for p in everything.items if p.metadata) == ["a", "b"]
    with pytest.raises(ApiException) as err:
        core.list_pod_for_all_namespaces(field_selector="spec.host=x")
    assert err.value.status == 400
    anonymous = client.Configuration(host=kube.url)
    anonymous.ssl_ca_cert = str(kube.tls.cert_file)
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(client.ApiClient(anonymous)).list_pod_for_all_namespaces()
    assert err.value.status == 401


# ------------------------------------------------------------------ metadata and the store


def test_the_extractor_keeps_names_selected_labels_and_every_container_id() -> None:
    pod = make_pod(
        "web-5d9c7b-x2x",
        "shop",
        containers=("app", "proxy"),
        init_containers=("migrate",),
        ephemeral_containers=("debugger",),
        labels={"app": "web", "pod-template-hash": "5d9c7b", "team.example/owner": "ada"},
        annotations={"energy/budget": "40W", "kubernetes.io/config.mirror": "f" * 32},
        owner=("ReplicaSet", "web-5d9c7b"),
        runtime="cri-o",
    )
    restart_container(pod, "app")
    raw = {
        "metadata": ["k8s.pod.name", "k8s.deployment.name", "k8s.replicaset.name"],
        "labels": [{"key": "app"}, {"key_regex": r"team\.example/(.*)", "tag_name": "team.$1"}],
        "annotations": [{"key": "energy/budget"}],
    }
    extract = decode(ExtractConfig, raw, "extract")
    meta = Extractor(extract).pod(decode_pod(pod))
    assert meta is not None
    uid = uid_of(pod)
    assert (meta.uid, meta.name, meta.namespace) == (uid, "web-5d9c7b-x2x", "shop")
    assert meta.labels == (
        ("k8s.deployment.name", "web"),
        ("k8s.pod.annotation.energy/budget", "40W"),
        ("k8s.pod.label.app", "web"),
        ("k8s.replicaset.name", "web-5d9c7b"),
        ("team.owner", "ada"),
    )
    assert [(c.name, c.runtime) for c in meta.containers] == [
        ("app", "cri-o"),  # restarted: the running one...
        ("app", "cri-o"),  # ...and the one before, from lastState.terminated
        ("proxy", "cri-o"),
        ("migrate", "cri-o"),
        ("debugger", "cri-o"),
    ]
    assert [c.id for c in meta.containers] == [
        container_id(uid, "app", 1),
        container_id(uid, "app", 0),
        container_id(uid, "proxy"),
        container_id(uid, "migrate"),
        container_id(uid, "debugger"),
    ]
    assert meta.aliases == ("f" * 32,)


def test_pods_the_client_models_reject_are_errors() -> None:
    pod = make_pod("web")
    del pod["status"]["containerStatuses"][0]["imageID"]  # required by V1ContainerStatus
    with pytest.raises(ValueError) as err:
        decode_pod(pod)
    assert "imageID" in str(err.value) or "image_id" in str(err.value)
    with pytest.raises(ValueError) as err:
        decode_pod(["not", "a", "pod"])
    assert str(err.value) == "a pod is not a JSON object"


def meta(name: str, uid: str, *containers: str) -> PodMeta:
    return PodMeta(uid, name, "default", (), tuple(ContainerMeta(c, "app", "") for c in containers))


def test_the_store_keeps_deleted_pods_as_tombstones_until_their_time() -> None:
    now = [100.0]
    store = PodStore(tombstone_ttl=30.0, clock=lambda: now[0])
    a, b = meta("a", "uid-a", "c-a"), meta("b", "uid-b", "c-b")
    assert store.replace([a, b])
    first = store.index
    assert not store.upsert(a)  # nothing changed: the same snapshot
    assert store.index is first
    assert store.replace([b])  # a is gone from a list or a poll
    assert (store.index.live, store.index.tombstones) == (1, 1)
    assert store.index.containers["c-a"][0] is a  # still names its containers
    now[0] += 29.9
    assert not store.expire()
    now[0] += 0.1
    assert store.expire()
    assert "c-a" not in store.index.containers and store.index.tombstones == 0
    assert store.delete("uid-b")
    assert store.index.pods["uid-b"] is b and store.index.live == 0


# ------------------------------------------------------------------ the processor, per tick


class StaticSource(Source):  # type: ignore[misc]
    """A source with fixed pods: the processor's lookups without any network."""

    kind = "static"

    def __init__(self, pods: list[PodMeta], cfg: K8sAttributesConfig | None = None) -> None:
        cfg = cfg or config({})
        super().__init__("k8sattributes", cfg, Extractor(cfg.extract))
        self.store.replace(pods)
        self.refreshes = 0

    def start(self) -> None:
        self._synced.set()

    def stop(self) -> None:
        pass

    def request_refresh(self) -> None:
        self.refreshes += 1


def offline(pods: list[PodMeta], cfg: K8sAttributesConfig | None = None) -> K8sAttributesProcessor:
    processor = K8sAttributesProcessor(cfg or config({}), NODE)
    processor.source = StaticSource(pods, cfg)
    return processor


def test_one_shared_workload_per_container_kept_while_its_pod_is_unchanged() -> None:
    labels = (("k8s.pod.label.app", "web"),)
    pod = PodMeta("uid-a", "web", "shop", labels, (ContainerMeta("c1", "app", ""),))
    processor = offline([pod])
    cgroup = Workload("c1", "", "uid-a")
    first, second = tick(processor, [cgroup, cgroup])
    assert first is second
    assert first == Workload(
        "c1", "", "uid-a", "app", "web", "shop", (("k8s.pod.label.app", "web"),)
    )
    (again,) = tick(processor, [cgroup])
    assert again is first
    source = source_of(processor)
    other = PodMeta("uid-b", "db", "shop", (), (ContainerMeta("c2", "db", "containerd"),))
    source.store.upsert(other)  # another pod changed: this container keeps its object
    (after, db) = tick(processor, [cgroup, Workload("c2", "", "uid-b")])
    assert after is first
    assert db.runtime == "containerd"  # from the containerID prefix where the cgroup has none
    relabelled = PodMeta("uid-a", "web", "shop", (("k8s.pod.label.app", "api"),), pod.containers)
    source.store.upsert(relabelled)
    (changed,) = tick(processor, [cgroup])
    assert changed is not first and changed.labels == (("k8s.pod.label.app", "api"),)


def test_unknown_containers_and_host_processes_keep_their_workload() -> None:
    pod = PodMeta("uid-a", "web", "shop", (), (ContainerMeta("c1", "app", "containerd"),))
    processor = offline([pod])
    docker = Workload("d" * 64, "docker", "")  # a container outside Kubernetes
    conmon = Workload("", "", "uid-a")  # in the pod's cgroup, in no container
    new = Workload("c9", "containerd", "uid-a")  # started before the kubelet reported it
    out = tick(processor, [NO_WORKLOAD, docker, conmon, new, docker])
    assert out[0] is NO_WORKLOAD
    assert out[1] is docker and out[4] is docker
    assert names(out[2]) == ("shop", "web", "") and out[2].container_id == ""
    assert names(out[3]) == ("shop", "web", "") and out[3].container_id == "c9"
    source = source_of(processor)
    assert isinstance(source, StaticSource)
    assert source.refreshes == 2  # docker once (not per process), c9 once
    tick(processor, [docker, new])
    assert source.refreshes == 2  # asked already: no new request until the index changes


def test_exited_processes_are_named_too_and_metadata_can_be_left_out() -> None:
    pod = PodMeta("uid-a", "web", "shop", (), (ContainerMeta("c1", "app", ""),))
    cfg = config({"extract": {"metadata": ["k8s.pod.name"]}})
    processor = offline([pod], cfg)
    batch = Batch(0, 5.0, NODE)
    batch.exited.append(ProcessSample(7, 1, "p", "", Workload("c1", "", ""), 2.0, 0.5))
    processor.process(batch)
    assert batch.exited[0].workload == Workload("c1", "", "", "", "web", "", ())


# ------------------------------------------------------------------ apiserver source


def test_apiserver_lists_then_watches_this_nodes_pods(
    kube: KubeServer, kubeconfig: Path, started: Any
) -> None:
    pods = [make_pod(f"web-{i}", "shop", labels={"app": "web"}) for i in range(3)]
    kube.add_pods([*pods, make_pod("far", node="node-b")])
    extract = {"labels": [{"key": "app"}]}
    processor = started(apiserver_config(kubeconfig, extract=extract))
    source = source_of(processor)
    assert source.index.live == 3
    first = kube.requests[0]
    assert (first.path, first.query) == (
        "/api/v1/pods",
        {"fieldSelector": "spec.nodeName=node-a", "resourceVersion": "0"},
    )
    kube.wait_for(lambda: kube.open_watches() == 1)
    watch = kube.requests[1]
    assert watch.query == {
        "allowWatchBookmarks": "true",
        "fieldSelector": "spec.nodeName=node-a",
        "resourceVersion": "104",
        "timeoutSeconds": "300",
        "watch": "true",
    }
    (w,) = tick(processor, [cgroup_workload(pods[0])])
    assert names(w) == ("shop", "web-0", "app") and w.labels == (("k8s.pod.label.app", "web"),)

    added = make_pod("web-3", "shop", labels={"app": "web"})
    kube.add_pod(added)
    kube.add_pod(make_pod("far-2", node="node-b"))  # not this node's: never sent
    wait_until(lambda: source.index.live == 4, what="ADDED")
    kube.modify_pod("shop", "web-1", lambda p: p["metadata"]["labels"].update(app="api"))
    wait_until(lambda: tick(processor, [cgroup_workload(pods[1])])[0].labels[0][1] == "api")
    kube.delete_pod("shop", "web-2")
    wait_until(lambda: source.index.live == 3, what="DELETED")
    (gone,) = tick(processor, [cgroup_workload(pods[2])])
    assert names(gone) == ("shop", "web-2", "app")  # a tombstone: still named
    assert source.index.tombstones == 1
    assert [t for t in kube.events_sent() if t != "BOOKMARK"] == ["ADDED", "MODIFIED", "DELETED"]
    assert (kube.count(watch=False), kube.count(watch=True)) == (1, 1)
    assert stats_of(processor).failures == 0


def test_a_dropped_watch_resumes_from_the_last_version_without_a_list(
    kube: KubeServer, kubeconfig: Path, started: Any
) -> None:
    pod = make_pod("web", "shop")
    kube.add_pod(pod)
    processor = started(apiserver_config(kubeconfig, extract={"labels": [{"key": "v"}]}))
    kube.wait_for(lambda: kube.open_watches() == 1)
    last = kube.modify_pod("shop", "web", lambda p: p["metadata"]["labels"].update(v="1"))
    wait_until(lambda: tick(processor, [cgroup_workload(pod)])[0].labels != (), what="MODIFIED")
    kube.drop_watches()
    kube.wait_for(lambda: kube.count(watch=True) == 2)
    resumed = [r for r in kube.requests if r.watch][-1]
    assert int(resumed.query["resourceVersion"]) >= last  # the event's, or a later bookmark's
    added = make_pod("api", "shop")
    kube.add_pod(added)
    wait_until(lambda: source_of(processor).index.live == 2, what="ADDED after the resume")
    assert kube.count(watch=False) == 1


def test_410_gone_relists_and_keeps_pods_deleted_in_the_gap_as_tombstones(
    kube: KubeServer, kubeconfig: Path, started: Any
) -> None:
    pods = [make_pod(f"web-{i}", "shop") for i in range(2)]
    kube.add_pods(pods)
    processor = started(apiserver_config(kubeconfig, apiserver={"watch_timeout": "1s"}))
    kube.wait_for(lambda: kube.open_watches() == 1)
    kube.go_down()  # the watch is cut; meanwhile the history moves on and is compacted
    kube.delete_pod("shop", "web-0")
    newcomer = make_pod("web-9", "shop")
    kube.add_pod(newcomer)
    kube.compact()
    kube.come_back()
    wait_until(lambda: kube.count(watch=False) == 2, what="a relist")
    relist = [r for r in kube.requests if not r.watch][-1]
    assert relist.query == {
        "fieldSelector": "spec.nodeName=node-a",
        "resourceVersion": "102",
        "resourceVersionMatch": "NotOlderThan",
    }
    assert "ERROR" in kube.events_sent()
    source = source_of(processor)
    wait_until(lambda: uid_of(newcomer) in source.index.pods, what="the relisted pods")
    assert (source.index.live, source.index.tombstones) == (2, 1)
    deleted, new = tick(processor, [cgroup_workload(pods[0]), cgroup_workload(newcomer)])
    assert names(deleted) == ("shop", "web-0", "app")
    assert names(new) == ("shop", "web-9", "app")
    assert stats_of(processor).expired == 1


def test_unreachable_for_several_retry_periods_then_back(
    kube: KubeServer, kubeconfig: Path, started: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    pod = make_pod("web", "shop")
    kube.add_pod(pod)
    processor = started(apiserver_config(kubeconfig))
    kube.wait_for(lambda: kube.open_watches() == 1)
    kube.go_down()
    wait_until(lambda: stats_of(processor).failures >= 5, what="five failed attempts")
    (w,) = tick(processor, [cgroup_workload(pod)])  # ticks go on, with the names known
    assert names(w) == ("shop", "web", "app")
    kube.add_pod(make_pod("api", "shop"))
    kube.come_back()
    wait_until(lambda: source_of(processor).index.live == 2, what="the change made while down")
    assert kube.count(watch=False) == 1  # resumed the watch: no relist
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # once per distinct problem, not once per retry: the cut watch, then the refused port
    assert len(warnings) == 2, warnings
    tail = r"; retrying in \d+\.\ds \(workloads keep the names known so far\)"
    assert re.fullmatch(r"k8sattributes: apiserver: connection lost: .*" + tail, warnings[0])
    assert re.fullmatch(
        r"k8sattributes: apiserver: cannot connect: .*Connection refused" + tail, warnings[1]
    )
    recovered = lambda: any(r.levelno == logging.INFO for r in caplog.records)  # noqa: E731
    wait_until(recovered, what="the recovery is logged")
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1
    assert re.fullmatch(
        r"k8sattributes: apiserver reachable again after \d+ failed attempts", infos[0]
    )


def test_refused_credentials_back_off_and_the_token_is_never_logged(
    kube: KubeServer, tmp_path: Path, started: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "not-the-token-8c1d"
    bad = write_kubeconfig(tmp_path / "bad", kube, secret)
    kube.add_pod(make_pod("web", "shop"))
    cfg = apiserver_config(bad, initial_sync_timeout="0s")
    processor = started(cfg)
    wait_until(lambda: stats_of(processor).failures >= 4, what="four refusals")
    time.sleep(0.3)
    processor.shutdown()
    refused = [r for r in kube.requests if r.status == 401]
    # waits of 20, 40, 80, 100, 100... ms (+-20%): far fewer requests than a busy loop
    assert 4 <= len(refused) <= 20
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "k8sattributes: apiserver: HTTP 401 Unauthorized; Unauthorized; the token was refused; "
        "retrying in "
    )
    assert all(secret not in r.getMessage() for r in caplog.records)
    assert all(kube.token not in r.getMessage() for r in caplog.records)


def test_forbidden_and_server_errors_are_retried_until_they_pass(
    kube: KubeServer, kubeconfig: Path, started: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    kube.add_pod(make_pod("web", "shop"))
    kube.fail_next(403, 2)
    kube.fail_next(500, 1)
    processor = started(apiserver_config(kubeconfig))
    assert source_of(processor).index.live == 1
    kube.wait_for(lambda: len(kube.requests) >= 4)  # the server records after answering
    assert [r.status for r in kube.requests[:4]] == [403, 403, 500, 200]
    assert stats_of(processor).failures == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split("; retrying")[0] for w in warnings] == [
        "k8sattributes: apiserver: HTTP 403 Forbidden; injected failure 403; the service account "
        "needs get, list and watch on pods (apiserver) or get on nodes/proxy (kubelet)",
        "k8sattributes: apiserver: HTTP 500 Internal Server Error; injected failure 500",
    ]


def test_a_cluster_of_3000_pods_with_110_here_and_containers_restarting(
    kube: KubeServer, kubeconfig: Path, started: Any
) -> None:
    nodes = [NODE] + [f"node-{i:02d}" for i in range(1, 27)]
    pods = [
        make_pod(f"pod-{i:04d}", f"ns-{i % 7}", NODE if i < 110 else nodes[1 + i % 26],
                 containers=("app", "sidecar"))
        for i in range(3000)
    ]  # fmt: skip
    kube.add_pods(pods)
    processor = started(apiserver_config(kubeconfig))
    source = source_of(processor)
    assert (source.index.live, len(source.index.containers)) == (110, 220)
    kube.wait_for(lambda: kube.open_watches() == 1)
    mine, theirs = pods[:20], pods[110:160]
    new_ids: dict[str, str] = {}
    for pod in mine + theirs:
        meta_ = pod["metadata"]
        kube.modify_pod(
            meta_["namespace"],
            meta_["name"],
            lambda p: new_ids.__setitem__(p["metadata"]["name"], restart_container(p, "app")),
        )
    wait_until(lambda: stats_of(processor).events - _bookmarks(kube) >= 20, what="20 restarts")
    sent = [t for t in kube.events_sent() if t != "BOOKMARK"]
    assert sent == ["MODIFIED"] * 20  # other nodes' restarts never reach this node
    restarted = [Workload(new_ids[p["metadata"]["name"]], "containerd", uid_of(p)) for p in mine]
    before = [cgroup_workload(p) for p in mine]  # the previous containers' last processes
    out = tick(processor, restarted + before)
    assert {names(w)[2] for w in out} == {"app"}
    assert [w.pod_name for w in out] == [p["metadata"]["name"] for p in mine] * 2
    assert len(source.index.containers) == 240  # 220 + the 20 previous ids
    assert (kube.count(watch=False), kube.count(watch=True)) == (1, 1)
    assert pod_container_ids(pods[0])[1] in source.index.containers


def _bookmarks(kube: KubeServer) -> int:
    return kube.events_sent().count("BOOKMARK")


# ------------------------------------------------------------------ kubelet source


def test_kubelet_polls_once_per_interval_and_early_once_for_a_miss(
    kube: KubeServer, kubeconfig: Path, started: Any
) -> None:
    pod = make_pod("web", "shop")
    kube.add_pod(pod)
    kube.add_pod(make_pod("far", node="node-b"))
    processor = started(kubelet_config(kubeconfig, kubelet={"poll_interval": "400ms"}))
    source = source_of(processor)
    assert source.index.live == 1
    assert kube.requests[0].path == "/api/v1/nodes/node-a/proxy/pods"  # kubeConfig: the proxy
    began, polls = time.monotonic(), kube.count()
    time.sleep(1.0)
    steady = kube.count() - polls
    assert 1 <= steady <= 1.0 / 0.4 + 1  # once per interval, never more
    assert stats_of(processor).unchanged_polls >= 1  # identical answers are not parsed

    newcomer = make_pod("api", "shop")
    kube.add_pod(newcomer)
    before = kube.count()
    (w,) = tick(processor, [cgroup_workload(newcomer)])
    assert w.pod_name == ""  # not known yet: container labels only
    wait_until(lambda: stats_of(processor).miss_refreshes == 1, what="an early poll")
    wait_until(lambda: source.index.live == 2, what="the new pod")
    (w,) = tick(processor, [cgroup_workload(newcomer)])
    assert names(w) == ("shop", "api", "app")
    outsider = Workload("e" * 64, "docker", "")  # never in any pod: asks once
    for _ in range(5):
        tick(processor, [outsider])
    time.sleep(0.2)
    assert stats_of(processor).miss_refreshes <= 2
    elapsed = time.monotonic() - began
    assert kube.count() - before <= 2 * (elapsed / 0.4 + 1)
    assert stats_of(processor).failures == 0


def test_kubelet_keeps_a_deleted_pod_for_the_tombstone_time_only(
    kube: KubeServer, kubeconfig: Path, started: Any
) -> None:
    pod = make_pod("web", "shop")
    kube.add_pod(pod)
    cfg = kubelet_config(kubeconfig, kubelet={"poll_interval": "100ms"}, tombstone_ttl="300ms")
    processor = started(cfg)
    source = source_of(processor)
    kube.delete_pod("shop", "web")
    wait_until(lambda: source.index.live == 0, what="the poll without the pod")
    (w,) = tick(processor, [cgroup_workload(pod)])
    assert names(w) == ("shop", "web", "app")
    wait_until(lambda: source.index.tombstones == 0, what="the tombstone's end")
    (w,) = tick(processor, [cgroup_workload(pod)])
    assert names(w) == ("", "", "")


def test_service_account_credentials_in_cluster(
    kube: KubeServer, tmp_path: Path, tls_cert: TlsCert, started: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(kube.token)
    (account / "ca.crt").write_bytes(Path(tls_cert.cert_file).read_bytes())
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kube.port))
    pod = make_pod("web", "shop")
    kube.add_pod(pod)
    for source in ("apiserver", "kubelet"):
        raw = {"source": source, "service_account_dir": str(account), **FAST}
        raw["kubelet"] = {"endpoint": kube.url}  # the kubelet's own port, in a cluster
        processor = started(config(raw))
        (w,) = tick(processor, [cgroup_workload(pod)])
        assert names(w) == ("shop", "web", "app"), source
    assert [r.path for r in kube.requests if not r.watch] == ["/api/v1/pods", "/pods"]
    assert all(r.status == 200 for r in kube.requests)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_kubelet_certificate_from_its_own_ca_or_not_verified(
    kube: KubeServer, tmp_path: Path, tls_cert: TlsCert, started: Any,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.WARNING, logger=LOGGER)
    other = make_self_signed_cert(tmp_path / "cluster-ca")  # the service account's CA
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(kube.token)
    (account / "ca.crt").write_bytes(Path(other.cert_file).read_bytes())
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kube.port))
    pod = make_pod("web", "shop")
    kube.add_pod(pod)
    raw = {"service_account_dir": str(account), **FAST, "initial_sync_timeout": "0s"}
    untrusted = started(config({**raw, "kubelet": {"endpoint": kube.url}}))
    wait_until(lambda: stats_of(untrusted).failures >= 1, what="a TLS failure")
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.records[0].getMessage()
    assert kube.count() == 0  # refused before any request reached the server
    for kubelet in (
        {"endpoint": kube.url, "ca_file": str(tls_cert.cert_file)},
        {"endpoint": kube.url, "insecure_skip_verify": True},
    ):
        processor = started(config({**raw, "initial_sync_timeout": "5s", "kubelet": kubelet}))
        (w,) = tick(processor, [cgroup_workload(pod)])
        assert names(w) == ("shop", "web", "app"), kubelet


def test_no_api_at_all_still_starts_and_leaves_workloads_alone(
    tmp_path: Path, tls_cert: TlsCert, started: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    server = KubeServer(tls_cert).start()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server, server.token)
    server.stop()  # nothing listens on that port any more
    cfg = kubelet_config(kubeconfig, initial_sync_timeout="200ms")
    began = time.monotonic()
    processor = started(cfg)
    assert time.monotonic() - began < 3.0
    w = Workload("a" * 64, "containerd", "1f2e3d4c-0000-4000-8000-00000000000a")
    assert tick(processor, [w]) == [w]
    messages = [r.getMessage() for r in caplog.records]
    assert (
        "k8sattributes: no pod list from the kubelet after 0.2s; going on without names "
        "until it comes" in messages
    )
    assert any(m.startswith("k8sattributes: kubelet: cannot connect: ") for m in messages)


def test_missing_credentials_are_logged_and_retried(
    tmp_path: Path, started: Any, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    caplog.set_level(logging.WARNING, logger=LOGGER)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    raw = {"service_account_dir": str(tmp_path), **FAST, "initial_sync_timeout": "0s"}
    processor = started(config(raw))
    wait_until(lambda: stats_of(processor).failures >= 2, what="retries")
    assert (
        caplog.records[0]
        .getMessage()
        .startswith(
            "k8sattributes: kubelet: no credentials: Service host/port is not set.; retrying in "
        )
    )


# ------------------------------------------------------------------ with attribution


def test_named_series_through_attribution_and_a_deleted_pod_ends_once(
    kube: KubeServer, kubeconfig: Path, started: Any
) -> None:
    web = make_pod("web", "shop", labels={"app": "energy"}, containers=("app", "proxy"))
    kube.add_pods([web, make_pod("db", "shop")])
    extract = {"labels": [{"key": "app"}]}
    k8s = started(apiserver_config(kubeconfig, extract=extract))
    attribution = AttributionProcessor(AttributionConfig(), node_name=NODE)
    app, proxy = cgroup_workload(web, "app"), cgroup_workload(web, "proxy")
    pids = {1: app, 2: app, 3: proxy}

    def run(exited: dict[int, Workload] | None = None) -> list[WorkloadEnergy]:
        batch = Batch(time.time_ns(), 5.0, NODE)
        batch.energy = [EnergyReading("cpu", "package", "rapl", 100.0)]
        batch.cpu_usage_ratio = 0.5
        batch.has_usage = True
        for pid, w in pids.items():
            batch.processes[pid] = ProcessSample(pid, 1, "p", "/bin/p", w, 10.0, 1.0)
        for pid, w in (exited or {}).items():
            batch.exited.append(ProcessSample(pid, 1, "p", "/bin/p", w, 10.0, 1.0))
        k8s.process(batch)
        attribution.process(batch)
        return batch.workloads

    run()
    series = run()
    (pod,) = [s for s in series if s.level == "pod"]
    assert pod.attributes == {
        "pod_id": uid_of(web),
        "pod_name": "web",
        "pod_namespace": "shop",
        "k8s.pod.label.app": "energy",
        "node_name": NODE,
    }
    containers = {s.attributes["container_name"]: s for s in series if s.level == "container"}
    assert sorted(containers) == ["app", "proxy"]
    assert containers["app"].attributes["k8s.pod.label.app"] == "energy"
    assert containers["app"].joules["package"] == pytest.approx(50.0 * 2 / 3 * 2)

    kube.delete_pod("shop", "web")
    wait_until(lambda: source_of(k8s).index.live == 1, what="DELETED")
    ended = dict(pids)
    pids.clear()  # the processes ended with the pod: reported once in batch.exited
    series = run(exited=ended)
    (pod,) = [s for s in series if s.level == "pod"]
    assert (pod.state, pod.attributes["pod_name"]) == (TERMINATED, "web")
    assert {s.attributes["container_name"] for s in series if s.level == "container"} == {
        "app",
        "proxy",
    }
    assert [s for s in run() if s.level in ("pod", "container")] == []  # emitted once


# ------------------------------------------------------------------ sidecar mode


def test_sidecar_mode_gives_every_process_the_pods_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_NAME", "shop-7f9c-x1")
    monkeypatch.setenv("POD_NAMESPACE", "shop")
    monkeypatch.setenv("POD_UID", "0f1e2d3c-4b5a-4697-8887-766554433221")
    monkeypatch.setenv("NODE_NAME", NODE)
    labels = tmp_path / "labels"
    labels.write_text('app="shop"\npod-template-hash="7f9c"\nquote="say \\"hi\\""\n')
    agent = load_file(str(ROOT / "configs" / "sidecar.yaml"), default_registry())
    assert agent.processors["k8sattributes"].config.source == "downward_api"
    cfg = agent.processors["k8sattributes"].config
    cfg.downward_api.labels_file = str(labels)
    cfg.extract = decode(ExtractConfig, {"labels": [{"key": "app"}, {"key": "quote"}]}, "x")
    processor = factory.create("k8sattributes", cfg, agent.host)
    processor.start()
    try:
        own = NO_WORKLOAD  # our own container: cgroup namespace root, "0::/"
        sibling = Workload("b" * 64, "containerd", "")  # "0::/../cri-containerd-<id>.scope"
        out = tick(processor, [own, sibling, own])
        assert out[0] is out[2]
        assert out[0] == Workload(
            "",
            "",
            "0f1e2d3c-4b5a-4697-8887-766554433221",
            "",
            "shop-7f9c-x1",
            "shop",
            (("k8s.pod.label.app", "shop"), ("k8s.pod.label.quote", 'say "hi"')),
        )
        assert (out[1].container_id, out[1].pod_name) == ("b" * 64, "shop-7f9c-x1")
    finally:
        processor.shutdown()


def test_neither_the_factory_nor_sidecar_mode_imports_the_kubernetes_client() -> None:
    code = (
        "import sys\n"
        "from otel_kepler.component import HostSettings\n"
        "from otel_kepler.registry import default_registry\n"
        "from otel_kepler.schema import decode\n"
        "f = default_registry().factories('processors')['k8sattributes']\n"
        "cfg = decode(f.config_class, {'source': 'downward_api'}, 'x')\n"
        "p = f.create('k8sattributes', cfg, HostSettings(node_name='n'))\n"
        "p.start()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'))\n"
    )
    env = {**os.environ, "POD_UID": "0f1e2d3c-4b5a-4697-8887-766554433221"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


def test_sidecar_mode_without_the_pod_uid_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_UID", raising=False)
    processor = K8sAttributesProcessor(config({"source": "downward_api"}), NODE)
    with pytest.raises(ComponentError) as err:
        processor.start()
    assert str(err.value) == (
        "source downward_api needs the pod's uid: set the environment variable POD_UID from "
        "the downward API (fieldRef metadata.uid), or downward_api.pod_uid"
    )


# ------------------------------------------------------------------ pipelines share a source


def test_pipelines_using_one_component_share_its_watch(kube: KubeServer, kubeconfig: Path) -> None:
    kube.add_pod(make_pod("web", "shop"))
    cfg = apiserver_config(kubeconfig)
    host = HostSettings(node_name=NODE)
    one, two = (factory.create("k8sattributes", cfg, host) for _ in range(2))
    one.start()
    two.start()
    try:
        assert one.source is two.source
        kube.wait_for(lambda: kube.open_watches() == 1)
        assert (kube.count(watch=False), kube.count(watch=True)) == (1, 1)
    finally:
        one.shutdown()
        assert isinstance(two.source, NetworkSource) and not two.source.stopping
        two.shutdown()
    kube.wait_for(lambda: kube.open_watches() == 0)


def test_no_source_thread_is_left_behind() -> None:
    leftovers = [t.name for t in threading.enumerate() if t.name.startswith("k8sattributes-")]
    assert leftovers == []

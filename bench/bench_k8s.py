"""Cost of the k8sattributes processor: 110 pods on this node, 3,000 in the cluster.

    .venv/bin/python bench/bench_k8s.py [--seconds S]

Against tests/k8s_server.py (HTTPS on 127.0.0.1, the real kubernetes client), with 3,000
pods of two containers over 27 nodes, 110 of them on this node:

- memory of the pod cache (tracemalloc of what the store keeps for 110 pods), and the
  resident memory the whole source adds (client, models, cache);
- CPU of one tick's lookups at 1,100 processes (10 per pod), with the index unchanged
  (memoised) and with a new index every tick (every container looked up again);
- CPU of the network side: the first list, one watch event, one kubelet poll whose answer
  changed and one whose answer did not (it is hashed, not parsed);
- requests sent in steady state, over ``--seconds`` with containers restarting on every
  node: the apiserver source (the watch must be the only open request) and the kubelet
  source (at most one poll per interval), given per minute at the default settings.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from otel_kepler.data import Batch, ProcessSample, Workload  # noqa: E402
from otel_kepler.processors.k8sattributes import (  # noqa: E402
    Extractor,
    K8sAttributesConfig,
    K8sAttributesProcessor,
    PodStore,
)
from otel_kepler.processors.k8sattributes.apiserver import ApiServerSource  # noqa: E402
from otel_kepler.processors.k8sattributes.kubelet import KubeletSource  # noqa: E402
from otel_kepler.processors.k8sattributes.metadata import decode_pod  # noqa: E402
from otel_kepler.schema import decode  # noqa: E402
from tests.k8s_server import KubeServer, container_id, make_pod, restart_container  # noqa: E402
from tests.peers import make_self_signed_cert  # noqa: E402

NODE = "node-a"
PODS, HERE, NODES, PROCESSES_PER_POD = 3000, 110, 27, 10
EXTRACT = {"labels": [{"key": "app"}], "annotations": [{"key": "team"}]}


def cluster() -> list[dict[str, Any]]:
    nodes = [NODE] + [f"node-{i:02d}" for i in range(1, NODES)]
    return [
        make_pod(
            f"pod-{i:04d}",
            f"ns-{i % 7}",
            NODE if i < HERE else nodes[1 + i % (NODES - 1)],
            containers=("app", "sidecar"),
            labels={"app": f"app-{i % 40}", "pod-template-hash": "5d9c7b"},
            annotations={"team": "energy", "kubectl.kubernetes.io/last-applied": "x" * 300},
            owner=("ReplicaSet", f"app-{i % 40}-5d9c7b"),
        )
        for i in range(PODS)
    ]


def write_kubeconfig(path: Path, server: KubeServer) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "b",
        "clusters": [
            {
                "name": "b",
                "cluster": {
                    "server": server.url,
                    "certificate-authority": str(server.tls.cert_file),
                },
            }
        ],
        "users": [{"name": "b", "user": {"token": server.token}}],
        "contexts": [{"name": "b", "context": {"cluster": "b", "user": "b"}}],
    }
    path.write_text(json.dumps(doc))
    return path


def config(kubeconfig: Path, source: str, **extra: Any) -> K8sAttributesConfig:
    raw = {"source": source, "auth_type": "kubeConfig", "kubeconfig": str(kubeconfig)}
    return decode(K8sAttributesConfig, {**raw, "extract": EXTRACT, **extra}, "k8sattributes")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * 4096 / 2**20


def cpu_ms(fn: Callable[[], object], repeat: int = 9) -> float:
    """Median CPU ms of ``fn`` in this thread only (the test server's threads are not ours)."""
    times = []
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        times.append((time.thread_time() - t0) * 1000)
    return statistics.median(times)


# ------------------------------------------------------------------ memory


def cache_memory(pods: list[dict[str, Any]]) -> tuple[float, int]:
    """Bytes the store keeps for this node's pods (tracemalloc), and the container count."""
    mine = [decode_pod(p) for p in pods[:HERE]]
    cfg = decode(K8sAttributesConfig, {"extract": EXTRACT}, "k8sattributes")
    extractor = Extractor(cfg.extract)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    store = PodStore(60.0)
    store.replace([m for m in (extractor.pod(p) for p in mine) if m is not None])
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    kept = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return kept / 1024, len(store.index.containers)


# ------------------------------------------------------------------ per tick


def tick_cpu(processor: K8sAttributesProcessor, pods: list[dict[str, Any]]) -> tuple[float, float]:
    """Median CPU ms of process() at 1,100 processes: index unchanged / changed every tick."""
    workloads = [
        Workload(container_id(p["metadata"]["uid"], c), "containerd", p["metadata"]["uid"])
        for p in pods[:HERE]
        for c in ("app", "sidecar")
    ]
    batch = Batch(0, 5.0, NODE)
    for pid in range(HERE * PROCESSES_PER_POD):
        w = workloads[pid % len(workloads)]
        batch.processes[pid] = ProcessSample(pid, 1, "p", "/bin/p", w, 1.0, 0.1)
    originals = {pid: s.workload for pid, s in batch.processes.items()}

    def run() -> None:
        for pid, s in batch.processes.items():
            s.workload = originals[pid]
        processor.process(batch)

    run()
    assert batch.processes[0].workload.pod_name == "pod-0000", batch.processes[0].workload
    steady = cpu_ms(run, 21)
    source = processor.source
    assert source is not None

    def run_changed() -> None:
        source.store._publish()  # a new snapshot object: every container is looked up again
        run()

    changed = cpu_ms(run_changed, 21)
    return steady, changed


# ------------------------------------------------------------------ network side


def network_cpu(server: KubeServer, kubeconfig: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    cfg = config(kubeconfig, "apiserver")
    api_source = ApiServerSource("bench", cfg, Extractor(cfg.extract), NODE)
    out["list (110 of 3,000 pods)"] = cpu_ms(lambda: api_source._list("0"), 5)
    pod_json = json.dumps(server.pod("ns-0", "pod-0000"))

    def one_event() -> None:
        api_source._apply({"type": "MODIFIED", "object": json.loads(pod_json)})

    def hundred_events() -> None:
        for _ in range(100):
            one_event()

    out["watch event (JSON, validate, apply)"] = cpu_ms(hundred_events) / 100
    kcfg = config(kubeconfig, "kubelet")
    kubelet = KubeletSource("bench", kcfg, Extractor(kcfg.extract), NODE)
    kubelet._poll()
    out["kubelet poll, answer unchanged"] = cpu_ms(kubelet._poll)

    def changed_poll() -> None:
        server.modify_pod("ns-0", "pod-0000", lambda p: p["metadata"]["labels"].update(x="1"))
        kubelet._poll()

    out["kubelet poll, answer changed"] = cpu_ms(changed_poll)
    return out


# ------------------------------------------------------------------ steady state


def churn(server: KubeServer, pods: list[dict[str, Any]], seconds: float) -> int:
    """Restart a container somewhere in the cluster every 50 ms; returns how many."""
    deadline, n = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        pod = pods[(n * 37) % len(pods)]["metadata"]
        server.modify_pod(pod["namespace"], pod["name"], lambda p: restart_container(p, "app"))
        n += 1
        time.sleep(0.05)
    return n


def steady_requests(
    server: KubeServer, kubeconfig: Path, pods: list[dict[str, Any]], seconds: float
) -> list[tuple[str, str]]:
    rows = []
    processor = K8sAttributesProcessor(config(kubeconfig, "apiserver"), NODE)
    processor.start()
    before = len(server.requests)
    restarts = churn(server, pods, seconds)
    open_watches = server.open_watches()
    sent = len(server.requests) - before
    stats = processor.source.stats if processor.source else None
    processor.shutdown()
    events = stats.events if stats else 0
    rows.append(
        (
            "apiserver",
            f"{sent} requests in {seconds:.0f}s after the list ({open_watches} open watch); "
            f"{restarts} restarts in the cluster, {events} events reached this node; "
            "default watch_timeout 5m: 0.2 requests/minute",
        )
    )
    interval = 1.0
    cfg = config(kubeconfig, "kubelet", kubelet={"poll_interval": f"{interval}s"})
    processor = K8sAttributesProcessor(cfg, NODE)
    processor.start()
    before = len(server.requests)
    churn(server, pods, seconds)
    sent = len(server.requests) - before
    kstats = processor.source.stats if processor.source else None
    processor.shutdown()
    unchanged = kstats.unchanged_polls if kstats else 0
    rows.append(
        (
            "kubelet",
            f"{sent} polls in {seconds:.0f}s at poll_interval {interval:g}s "
            f"({sent / seconds * interval:.2f} per interval, {unchanged} answers unchanged); "
            "default poll_interval 10s: 6 requests/minute",
        )
    )
    return rows


CHILD = """
import gc, json, sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
import otel_kepler.processors.attribution
from otel_kepler.processors.k8sattributes import K8sAttributesConfig, K8sAttributesProcessor
from otel_kepler.schema import decode
gc.collect(); r0 = rss()
kubeconfig, source, extract, node, expected = sys.argv[1:]
raw = {"source": source, "auth_type": "kubeConfig", "kubeconfig": kubeconfig,
       "extract": json.loads(extract)}
processor = K8sAttributesProcessor(decode(K8sAttributesConfig, raw, "x"), node)
import kubernetes.client
gc.collect(); r1 = rss()
processor.start()
assert processor.source.index.live == int(expected), processor.source.index.live
gc.collect(); r2 = rss()
processor.shutdown()
print(f"{r0:.1f} MiB before, +{r1 - r0:.1f} MiB importing the kubernetes client, "
      f"+{r2 - r1:.1f} MiB started and synced")
"""


def child_rss(kubeconfig: Path, source: str) -> str:
    """Resident memory of a fresh agent process around the source (not this one's server)."""
    argv = [sys.executable, "-c", CHILD, str(kubeconfig), source, json.dumps(EXTRACT), NODE]
    result = subprocess.run(
        [*argv, str(HERE)], capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    pods = cluster()
    kib, containers = cache_memory(pods)
    print(f"pod cache: {HERE} pods, {containers} container ids: {kib:.0f} KiB "
          f"({kib * 1024 / HERE:.0f} bytes a pod)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tls = make_self_signed_cert(Path(tmp) / "tls")
        with KubeServer(tls, kubelet_node=NODE, bookmark_interval=5.0) as server:
            server.add_pods(pods)
            kubeconfig = write_kubeconfig(Path(tmp) / "kubeconfig", server)
            for source in ("apiserver", "kubelet"):
                print(f"RSS of an agent process, {source} source: {child_rss(kubeconfig, source)}")
            processor = K8sAttributesProcessor(config(kubeconfig, "apiserver"), NODE)
            processor.start()
            steady, changed = tick_cpu(processor, pods)
            processor.shutdown()
            n = HERE * PROCESSES_PER_POD
            print(f"process() at {n} processes: {steady:.3f} ms (index unchanged), "
                  f"{changed:.3f} ms (new index)")  # fmt: skip
            for what, ms in network_cpu(server, kubeconfig).items():
                print(f"CPU of {what}: {ms:.2f} ms")
            for source, text in steady_requests(server, kubeconfig, pods, args.seconds):
                print(f"steady state, {source}: {text}")


if __name__ == "__main__":
    main()

"""Kepler's metric contract: every family Kepler (0.10 and later) serves, with its labels.

:data:`KEPLER` is the table of Kepler's families as its Prometheus collectors define them
(name, type, labels, the level that emits it). Ours must serve each one with at least those
labels; the labels we add (``source`` on node energy, the GPU's labels on a workload's GPU
energy, ...) and the few of Kepler's that do not apply here (Go's build labels) are listed
in the table too, so that any change on either side fails here.

Both paths are checked on the same agent run (tests/kepler_host.py: RAPL fixture, a burner in
a kubepods-style cgroup named by a Kubernetes API lookalike, a QEMU guest, a fake NVML GPU, a
Redfish BMC, every level on):

* the pull endpoint, as rendered for a real tick (exact label names: the text format keeps
  empty values, e.g. ``container_id=""`` of a process outside any container);
* OTLP/HTTP into VictoriaMetrics with Prometheus naming: the same names and, for every series,
  the same non-empty labels with the same values, plus the resource attributes that
  VictoriaMetrics turns into labels.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from otel_kepler.component import HostSettings
from otel_kepler.receivers.rapl import RaplConfig, RaplReceiver
from tests.conftest import need_root
from tests.kepler_host import (
    CONTAINER,
    DRAM_W,
    GPU_IDLE_W,
    GPU_W,
    NAMESPACE,
    NODE,
    PACKAGE_W,
    PLATFORM_W,
    POD,
    POWER_JITTER,
    VM_NAME,
    VM_UUID,
    KeplerHost,
)
from tests.peers import VictoriaMetrics
from tests.sysfs_fixtures import RaplTree

COUNTER, GAUGE = "counter", "gauge"


@dataclass(frozen=True)
class Family:
    """One of Kepler's metric families and how ours differs from it."""

    kind: str
    level: str  # the metrics level that emits it in Kepler (and here)
    labels: frozenset[str]  # Kepler's, node_name included where Kepler has it
    ours: frozenset[str] = frozenset()  # labels we add
    absent: frozenset[str] = frozenset()  # Kepler's labels that do not apply here

    @property
    def expected(self) -> frozenset[str]:
        return (self.labels - self.absent) | self.ours


def family(
    kind: str,
    level: str,
    labels: tuple[str, ...],
    ours: tuple[str, ...] = (),
    absent: tuple[str, ...] = (),
) -> Family:
    return Family(kind, level, frozenset(labels), frozenset(ours), frozenset(absent))


NODE_ZONE = ("zone", "path", "node_name")
NODE_GPU = ("gpu", "gpu_uuid", "gpu_name", "vendor", "node_name")
PROCESS = ("pid", "comm", "exe", "type", "container_id", "vm_id", "node_name")
CONTAINER_LABELS = ("container_id", "container_name", "runtime", "state", "pod_id", "node_name")
POD_LABELS = ("pod_id", "pod_name", "pod_namespace", "state", "node_name")
VM_LABELS = ("vm_id", "vm_name", "hypervisor", "state", "node_name")
#: A workload's GPU energy is per GPU here (Kepler sums its GPUs into one series).
PER_GPU = ("gpu", "gpu_uuid", "gpu_name")
ZONE, STATE = ("zone",), ("state",)

KEPLER: dict[str, Family] = {
    # node (internal/exporter/prometheus/collector/power_collector.go)
    "kepler_node_cpu_joules_total": family(COUNTER, "node", NODE_ZONE, ("source",)),
    "kepler_node_cpu_watts": family(GAUGE, "node", NODE_ZONE, ("source",)),
    "kepler_node_cpu_active_joules_total": family(COUNTER, "node", NODE_ZONE, ("source",)),
    "kepler_node_cpu_idle_joules_total": family(COUNTER, "node", NODE_ZONE, ("source",)),
    "kepler_node_cpu_active_watts": family(GAUGE, "node", NODE_ZONE, ("source",)),
    "kepler_node_cpu_idle_watts": family(GAUGE, "node", NODE_ZONE, ("source",)),
    "kepler_node_cpu_usage_ratio": family(GAUGE, "node", ("node_name",)),
    "kepler_node_gpu_joules_total": family(COUNTER, "node", NODE_GPU, ("source",)),
    "kepler_node_gpu_watts": family(GAUGE, "node", NODE_GPU, ("source",)),
    "kepler_node_gpu_active_joules_total": family(COUNTER, "node", NODE_GPU, ("source",)),
    "kepler_node_gpu_idle_joules_total": family(COUNTER, "node", NODE_GPU, ("source",)),
    "kepler_node_gpu_active_watts": family(GAUGE, "node", NODE_GPU, ("source",)),
    "kepler_node_gpu_idle_watts": family(GAUGE, "node", NODE_GPU, ("source",)),
    # cpuinfo.go, gpuinfo.go, build_info.go (Kepler's cpu and build info have no node_name)
    "kepler_node_cpu_info": family(
        GAUGE,
        "node",
        ("processor", "vendor_id", "model_name", "physical_id", "core_id"),
        ("node_name",),
    ),
    "kepler_node_gpu_info": family(GAUGE, "node", NODE_GPU),
    "kepler_build_info": family(
        GAUGE,
        "node",
        ("arch", "branch", "revision", "version", "goversion"),
        ours=("pythonversion", "node_name"),
        absent=("branch", "revision", "goversion"),
    ),
    # platform_collector.go (experimental Redfish)
    "kepler_platform_watts": family(
        GAUGE,
        "node",
        ("source", "node_name", "bmc_id", "chassis_id", "source_id", "source_name", "source_type"),
        ("zone",),
    ),
    # process
    "kepler_process_cpu_joules_total": family(COUNTER, "process", PROCESS + STATE + ZONE),
    "kepler_process_cpu_watts": family(GAUGE, "process", PROCESS + STATE + ZONE),
    "kepler_process_cpu_seconds_total": family(COUNTER, "process", PROCESS, STATE),
    "kepler_process_gpu_joules_total": family(COUNTER, "process", PROCESS + STATE, PER_GPU),
    "kepler_process_gpu_watts": family(GAUGE, "process", PROCESS + STATE, PER_GPU),
    # container
    "kepler_container_cpu_joules_total": family(COUNTER, "container", CONTAINER_LABELS + ZONE),
    "kepler_container_cpu_watts": family(GAUGE, "container", CONTAINER_LABELS + ZONE),
    "kepler_container_cpu_seconds_total": family(COUNTER, "container", CONTAINER_LABELS),
    "kepler_container_gpu_joules_total": family(COUNTER, "container", CONTAINER_LABELS, PER_GPU),
    "kepler_container_gpu_watts": family(GAUGE, "container", CONTAINER_LABELS, PER_GPU),
    # vm
    "kepler_vm_cpu_joules_total": family(COUNTER, "vm", VM_LABELS + ZONE),
    "kepler_vm_cpu_watts": family(GAUGE, "vm", VM_LABELS + ZONE),
    # pod
    "kepler_pod_cpu_joules_total": family(COUNTER, "pod", POD_LABELS + ZONE),
    "kepler_pod_cpu_watts": family(GAUGE, "pod", POD_LABELS + ZONE),
    "kepler_pod_gpu_joules_total": family(COUNTER, "pod", POD_LABELS, PER_GPU),
    "kepler_pod_gpu_watts": family(GAUGE, "pod", POD_LABELS, PER_GPU),
}
LEVELS = ["node", "process", "container", "pod", "vm"]
#: Resource attributes that VictoriaMetrics adds as labels to OTLP series (translated keys).
RESOURCE_PREFIXES = ("service_", "host_", "k8s_", "process_", "container_", "os_", "telemetry_")

Sample = tuple[str, dict[str, str], float]


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> (labels, value) of every Kepler sample; checks each family's type."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if not s.name.startswith("kepler_"):
                continue
            known = KEPLER.get(s.name)
            if known is not None:
                assert fam.type == known.kind, f"{s.name}: {fam.type}, Kepler's is {known.kind}"
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def ours(host: KeplerHost, name: str, labels: dict[str, str]) -> bool:
    """A series of this test's workloads (the host's other processes, containers, pods and
    VMs, other tests' included, come and go)."""
    level = name.split("_")[1]
    if level == "process":
        return labels.get("pid") in (str(host.burner_pid), str(host.qemu_pid))
    if level == "container":
        return labels.get("container_id") == host.container_id
    if level == "pod":
        return labels.get("pod_id") == host.pod_uid
    if level == "vm":
        return labels.get("vm_id") == VM_UUID
    return True


@pytest.fixture(scope="module")
def run() -> Iterator[tuple[KeplerHost, VictoriaMetrics, str]]:
    """The agent on the Kepler host, every level on, pushing into VictoriaMetrics too.

    Yields the host, VictoriaMetrics and the pull endpoint's text of one tick that VictoriaMetrics
    has received as well (the last push before the scrape is awaited below).
    """
    need_root()
    with VictoriaMetrics() as vm, KeplerHost(LEVELS, vm.otlp_metrics_url) as host:
        host.wait_for(
            f'pod_name="{POD}"',
            "kepler_vm_cpu_watts{",
            "kepler_pod_gpu_watts{",
            "kepler_platform_watts{",
            f'pid="{host.qemu_pid}"',
            timeout=90,
        )
        time.sleep(3)  # a few more ticks: every level has had a full interval
        yield host, vm, host.scrape()


def test_every_kepler_family_is_served_with_keplers_labels(
    run: tuple[KeplerHost, VictoriaMetrics, str],
) -> None:
    host, _, text = run
    served = samples(text)
    missing = sorted(set(KEPLER) - set(served))
    assert not missing, f"Kepler families not served: {missing}"
    for name, fam in KEPLER.items():
        for labels, _ in served[name]:
            assert set(labels) == fam.expected, (
                f"{name}: labels {sorted(labels)}, expected {sorted(fam.expected)}"
            )
    # Every series carries this node's name, as Kepler's constant label.
    for name in KEPLER:
        assert {labels["node_name"] for labels, _ in served[name]} == {NODE}, name


def one(served: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> float:
    found = [v for labels, v in served[name] if match.items() <= labels.items()]
    assert len(found) == 1, f"{name}{match}: {found}"
    return found[0]


def test_the_values_behind_the_labels(run: tuple[KeplerHost, VictoriaMetrics, str]) -> None:
    host, _, text = run
    served = samples(text)
    powercap = os.path.join(host.sysfs, "class", "powercap")
    # Kepler's path label: the powercap zone's directory (one socket: not aggregated).
    paths = {labels["zone"]: labels["path"] for labels, _ in served["kepler_node_cpu_watts"]}
    assert paths == {
        "package": os.path.join(powercap, "intel-rapl:0"),
        "dram": os.path.join(powercap, "intel-rapl:0:0"),
    }
    assert one(served, "kepler_node_cpu_watts", zone="package") == pytest.approx(
        PACKAGE_W, rel=POWER_JITTER
    )
    assert one(served, "kepler_node_cpu_watts", zone="dram") == pytest.approx(
        DRAM_W, rel=POWER_JITTER
    )
    assert one(served, "kepler_node_gpu_idle_watts") == GPU_IDLE_W
    assert one(served, "kepler_node_gpu_watts") == pytest.approx(GPU_W, rel=POWER_JITTER)
    assert one(served, "kepler_platform_watts", source="redfish") == pytest.approx(
        PLATFORM_W, rel=POWER_JITTER
    )
    burner = str(host.burner_pid)
    process = {
        labels["zone"]: labels
        for labels, _ in served["kepler_process_cpu_joules_total"]
        if labels["pid"] == burner
    }
    assert process["package"]["type"] == "container"
    assert process["package"]["container_id"] == host.container_id
    qemu = [
        labels
        for labels, _ in served["kepler_process_cpu_joules_total"]
        if labels["pid"] == str(host.qemu_pid)
    ]
    assert {(q["type"], q["vm_id"], q["comm"]) for q in qemu} == {
        ("vm", VM_UUID, "qemu-system-x86")
    }
    container = one(
        served, "kepler_container_cpu_joules_total", container_id=host.container_id, zone="package"
    )
    pod = one(served, "kepler_pod_cpu_joules_total", pod_name=POD, zone="package")
    own = one(served, "kepler_process_cpu_joules_total", pid=burner, zone="package")
    assert container == pytest.approx(own, rel=1e-9)
    assert pod == pytest.approx(own, rel=1e-9)
    (ctr_labels,) = [
        labels
        for labels, _ in served["kepler_container_cpu_seconds_total"]
        if labels["container_id"] == host.container_id
    ]
    assert ctr_labels["container_name"] == CONTAINER
    assert ctr_labels["pod_id"] == host.pod_uid
    assert {
        labels["pod_namespace"]
        for labels, _ in served["kepler_pod_cpu_watts"]
        if labels["pod_id"] == host.pod_uid
    } == {NAMESPACE}
    # A container's CPU time is its processes' (Kepler's rule): here its one process's.
    seconds = one(served, "kepler_container_cpu_seconds_total", container_id=host.container_id)
    assert seconds == pytest.approx(
        one(served, "kepler_process_cpu_seconds_total", pid=burner), abs=1e-6
    )
    assert seconds > 1.0
    vm_seconds = one(served, "kepler_vm_cpu_seconds_total", vm_name=VM_NAME)
    assert vm_seconds == pytest.approx(
        one(served, "kepler_process_cpu_seconds_total", pid=str(host.qemu_pid)), abs=1e-6
    )
    vm_package = one(served, "kepler_vm_cpu_joules_total", vm_id=VM_UUID, zone="package")
    assert vm_package == pytest.approx(
        one(served, "kepler_process_cpu_joules_total", pid=str(host.qemu_pid), zone="package"),
        rel=1e-9,
    )
    # The burner is the GPU's one compute process: its GPU energy is the GPU's active energy.
    gpu_active = one(served, "kepler_node_gpu_active_joules_total")
    for name in ("kepler_process_gpu_joules_total", "kepler_container_gpu_joules_total"):
        (value,) = [v for labels, v in served[name] if ours(host, name, labels)]
        assert value == pytest.approx(gpu_active, rel=1e-9), name
    assert one(served, "kepler_pod_gpu_joules_total", pod_name=POD) == pytest.approx(
        gpu_active, rel=1e-9
    )


def test_otlp_through_victoriametrics_gives_the_same_series(
    run: tuple[KeplerHost, VictoriaMetrics, str],
) -> None:
    host, vm, text = run
    served = samples(text)
    vm.flush()
    for name, fam in KEPLER.items():
        pulled = {
            frozenset((k, v) for k, v in labels.items() if v)  # a TSDB keeps no empty label
            for labels, _ in served[name]
            if ours(host, name, labels)
        }
        pushed = set()
        for series in vm.series(f'{{__name__="{name}",node_name="{NODE}"}}'):
            labels = {k: v for k, v in series.items() if k != "__name__"}
            if not ours(host, name, labels):
                continue
            extra = sorted(k for k in labels if k not in fam.expected)
            assert all(k.startswith(RESOURCE_PREFIXES) for k in extra), (
                f"{name}: labels that are neither the pull endpoint's nor a resource's: {extra}"
            )
            pushed.add(frozenset((k, v) for k, v in labels.items() if k in fam.expected))
        assert pushed == pulled, name


def test_sockets_summed_into_one_zone_have_keplers_aggregated_path(tmp_path: Path) -> None:
    """Kepler reports a zone summed over sockets with path ``aggregated-<zone>``."""
    tree = RaplTree(tmp_path / "sys")
    tree.add_socket(dram=True)
    tree.add_socket(dram=True)
    receiver = RaplReceiver("rapl", RaplConfig(), HostSettings(sysfs=tree.sysfs))
    receiver.start()
    try:
        receiver.collect()
        tree.advance_all({"package": 10.0, "dram": 1.0}, 1.0)
        readings = {r.zone: r for r in receiver.collect().energy}
    finally:
        receiver.shutdown()
    assert {z: (r.attributes or {}).get("path") for z, r in readings.items()} == {
        "package": "aggregated-package",
        "dram": "aggregated-dram",
    }
    assert readings["package"].joules == pytest.approx(20.0, abs=1e-3)


def test_ended_workloads_keep_keplers_labels_with_state_terminated(
    run: tuple[KeplerHost, VictoriaMetrics, str],
) -> None:
    """A process and its container that end are served with state="terminated", their
    final totals and the same labels (Kepler serves ended workloads too)."""
    host, _, _ = run
    child, cid = host.run_in_container(2.0)
    assert child.wait(timeout=30) == 0
    pid = str(child.pid)
    deadline = time.monotonic() + 30
    while True:
        served = samples(host.scrape())
        ended = [
            labels
            for labels, _ in served["kepler_container_cpu_joules_total"]
            if labels["container_id"] == cid and labels["state"] == "terminated"
        ]
        if ended or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert ended, f"container {cid} not served as terminated"
    for name in (
        "kepler_process_cpu_joules_total",
        "kepler_process_cpu_watts",
        "kepler_process_cpu_seconds_total",
    ):
        found = [labels for labels, _ in served[name] if labels["pid"] == pid]
        assert found, name
        for labels in found:
            assert labels["state"] == "terminated", name
            assert labels["container_id"] == cid and labels["type"] == "container", name
            assert set(labels) == KEPLER[name].expected, name
    for name in (
        "kepler_container_cpu_joules_total",
        "kepler_container_cpu_watts",
        "kepler_container_cpu_seconds_total",
    ):
        found = [labels for labels, _ in served[name] if labels["container_id"] == cid]
        assert found and all(labels["state"] == "terminated" for labels in found), name
        assert all(set(labels) == KEPLER[name].expected for labels in found), name
    # Its final totals: the container's CPU time is its one process's (2 s of burning).
    seconds = one(served, "kepler_container_cpu_seconds_total", container_id=cid)
    assert seconds == pytest.approx(
        one(served, "kepler_process_cpu_seconds_total", pid=pid), abs=1e-6
    )
    assert 0 < seconds <= 2.5
    package = one(served, "kepler_container_cpu_joules_total", container_id=cid, zone="package")
    assert package == pytest.approx(
        one(served, "kepler_process_cpu_joules_total", pid=pid, zone="package"), rel=1e-9
    )
    assert package > 0
    # The pod keeps running: its other container's process still does.
    assert one(served, "kepler_pod_cpu_watts", pod_id=host.pod_uid, zone="package") >= 0
    assert {
        labels["state"]
        for labels, _ in served["kepler_pod_cpu_watts"]
        if labels["pod_id"] == host.pod_uid
    } == {"running"}

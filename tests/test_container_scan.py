"""The procfs receiver's container scan: each container's CPU time from its real cgroup."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_kepler.component import ComponentError
from otel_kepler.config import parse
from otel_kepler.data import NO_WORKLOAD, Batch, EnergyReading, ProcessSample
from otel_kepler.processors.attribution import AttributionConfig, AttributionProcessor
from otel_kepler.receivers.procfs import ProcfsReceiver
from otel_kepler.registry import default_registry
from otel_kepler.service import Service
from tests.cgroups import cgroup_mount, remove_cgroups
from tests.children import BURN, reap, spawn

HZ = os.sysconf("SC_CLK_TCK")
ID_V1 = "c1" * 32
ID_V2 = "c2" * 32
ID_INNER = "c3" * 32
HALF = """
import time
print('ready', flush=True)
while True:
    began = time.perf_counter()
    while time.perf_counter() - began < 0.02:
        pass
    time.sleep(0.02)
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from its stat file."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / HZ


class Containers:
    """Test cgroups named like docker containers, in the v1 cpuacct and the v2 hierarchy."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            pytest.fail("the container scan tests need root to make cgroups")
        self.tops: list[Path] = []
        self.children: list[subprocess.Popen[str]] = []

    def top(self, fstype: str, controller: str) -> Path:
        mount = cgroup_mount(fstype, controller)
        if mount is None:
            pytest.fail(f"no {fstype} {controller} hierarchy mounted")
        top = mount / f"otel-kepler-scan-{os.getpid()}"
        top.mkdir()
        self.tops.append(top)
        return top

    def run(self, code: str, leaf: Path) -> subprocess.Popen[str]:
        child = spawn(code)
        self.children.append(child)
        leaf.mkdir(parents=True, exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(child.pid))
        return child

    def close(self) -> None:
        reap(self.children)  # before the cgroups: one with live processes stays
        for top in self.tops:
            remove_cgroups(top)


@pytest.fixture
def containers() -> Iterator[Containers]:
    made = Containers()
    yield made
    made.close()
    assert not any(top.exists() for top in made.tops)


@pytest.fixture
def receiver() -> Iterator[ProcfsReceiver]:
    made = ProcfsReceiver(scan="containers")
    made.use_processes(False)
    made.start()
    yield made
    made.shutdown()


def by_container(samples: dict[int, ProcessSample]) -> dict[str, ProcessSample]:
    return {s.workload.container_id: s for s in samples.values() if s.workload.container_id}


def test_each_containers_cpu_time_is_its_cgroups(
    containers: Containers, receiver: ProcfsReceiver
) -> None:
    v1 = containers.top("cgroup", "cpuacct")
    v2 = containers.top("cgroup2", "")
    burner = containers.run(BURN, v1 / "docker" / ID_V1)
    half = containers.run(HALF, v2 / "system.slice" / f"docker-{ID_V2}.scope")
    receiver.collect()  # primes
    first = {c.pid: cpu_seconds(c.pid) for c in (burner, half)}
    deltas = {ID_V1: 0.0, ID_V2: 0.0}
    for _ in range(3):
        time.sleep(0.5)
        seen = by_container(receiver.collect().processes or {})
        for cid in deltas:
            deltas[cid] += seen[cid].cpu_delta
    used = {c.pid: cpu_seconds(c.pid) - first[c.pid] for c in (burner, half)}
    assert receiver.containers is not None
    # the cgroup counts in nanoseconds, stat in clock ticks; one read each side of a tick
    assert deltas[ID_V1] == pytest.approx(used[burner.pid], abs=3 / HZ + 0.02)
    assert deltas[ID_V2] == pytest.approx(used[half.pid], abs=3 / HZ + 0.02)
    assert deltas[ID_V1] > 0.3 and deltas[ID_V2] > 0.1
    assert seen[ID_V1].workload.runtime == "docker"
    assert seen[ID_V2].workload.runtime == "docker"
    assert seen[ID_V1].pid < 0 and seen[ID_V2].pid < 0


def test_the_rest_of_the_node_is_one_sample_and_the_sum_is_the_nodes_task_time(
    containers: Containers, receiver: ProcfsReceiver
) -> None:
    v1 = containers.top("cgroup", "cpuacct")
    containers.run(BURN, v1 / "docker" / ID_V1)
    host = spawn(HALF)  # outside any container
    containers.children.append(host)
    receiver.collect()
    time.sleep(1.0)
    contribution = receiver.collect()
    samples = contribution.processes or {}
    rest = samples[0]
    assert rest.workload is NO_WORKLOAD and receiver.containers is not None
    tasks = receiver._ratio.task_seconds
    assert tasks is not None
    total = sum(s.cpu_delta for s in samples.values())
    assert total == pytest.approx(tasks, abs=2 / HZ + 0.02)
    assert rest.cpu_delta > 0.2  # the half-busy host process at least
    assert set(samples) == {0} | {s.pid for s in samples.values() if s.workload.container_id}


def test_a_container_nested_in_another_counts_only_its_own(
    containers: Containers, receiver: ProcfsReceiver
) -> None:
    outer = containers.top("cgroup", "cpuacct") / "docker" / ID_V1
    inner = outer / "docker" / ID_INNER
    half = containers.run(HALF, outer)
    burner = containers.run(BURN, inner)
    receiver.collect()
    first = {c.pid: cpu_seconds(c.pid) for c in (half, burner)}
    time.sleep(1.0)
    seen = by_container(receiver.collect().processes or {})
    used = {c.pid: cpu_seconds(c.pid) - first[c.pid] for c in (half, burner)}
    assert receiver.containers is not None and seen[ID_INNER].pid < 0
    assert seen[ID_INNER].cpu_delta == pytest.approx(used[burner.pid], abs=3 / HZ + 0.02)
    assert seen[ID_V1].cpu_delta == pytest.approx(used[half.pid], abs=3 / HZ + 0.02)


def test_an_ended_container_is_reported_once_and_a_new_one_counts_from_its_start(
    containers: Containers, receiver: ProcfsReceiver
) -> None:
    v1 = containers.top("cgroup", "cpuacct")
    first = containers.run(BURN, v1 / "docker" / ID_V1)
    receiver.collect()
    time.sleep(0.3)
    before = by_container(receiver.collect().processes or {})[ID_V1]
    first.kill()
    first.wait()
    (v1 / "docker" / ID_V1).rmdir()
    second = containers.run(BURN, v1 / "docker" / ID_V2)
    time.sleep(0.5)
    used = cpu_seconds(second.pid)
    contribution = receiver.collect()
    now = by_container(contribution.processes or {})
    assert receiver.containers is not None and before.pid < 0
    assert ID_V1 not in now
    assert [s.pid for s in contribution.exited] == [before.pid]
    assert now[ID_V2].cpu_delta == pytest.approx(used, abs=3 / HZ + 0.02)
    assert receiver.collect().exited == []


def test_a_cgroup_that_cannot_be_read_turns_the_receiver_to_processes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    procfs = tmp_path / "proc"
    for pid, cgroup in ((1, "0::/init.scope\n"), (7, f"0::/docker/{ID_V1}\n")):
        (procfs / str(pid)).mkdir(parents=True)
        (procfs / str(pid) / "cgroup").write_text(cgroup)
        tail = " ".join(["0"] * 50)
        (procfs / str(pid) / "stat").write_text(f"{pid} (worker) S {tail}\n")
    (procfs / "stat").write_text(Path("/proc/stat").read_text())
    receiver = ProcfsReceiver(str(procfs), scan="containers")
    receiver.use_processes(False)
    receiver.start()
    try:
        with caplog.at_level(logging.WARNING):
            samples = receiver.collect().processes or {}
            again = receiver.collect().processes or {}
    finally:
        receiver.shutdown()
    mount = cgroup_mount("cgroup2", "")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"cannot read {mount}/docker/{ID_V1}/cpu.stat (the cgroup of pid 7): "
        "No such file or directory: reading each process from now on"
    ]
    assert sorted(samples) == [1, 7] and sorted(again) == [1, 7]
    assert receiver.containers is None
    assert receiver.activity.config.process_io  # each process's io is read again


def test_scan_containers_is_refused_where_a_processor_needs_each_process() -> None:
    receiver = ProcfsReceiver(scan="containers")
    receiver.use_processes(True)
    with pytest.raises(ComponentError) as err:
        receiver.start()
    assert str(err.value) == (
        "scan: containers reads no process, and a processor of this receiver's pipelines "
        "needs each one (attribution with level process or vm, k8sattributes with source "
        "downward_api): use scan: auto or processes"
    )


CONFIG = """
receivers:
  procfs: {{}}
processors:
  attribution:
    levels: {levels}
{extra}
exporters:
  debug: {{}}
service:
  pipelines:
    metrics:
      receivers: [procfs]
      processors: [{processors}]
      exporters: [debug]
"""

SIDECAR = """
  k8sattributes:
    source: downward_api
    downward_api:
      pod_name: p
      pod_namespace: n
      pod_uid: 1f2e3d4c-0000-4000-8000-00000000000a
"""


@pytest.mark.parametrize(
    ("levels", "extra", "processors", "scans_containers"),
    [
        ("[node, container, pod]", "", "attribution", True),
        ("[node, container, pod, process]", "", "attribution", False),
        ("[node, vm]", "", "attribution", False),
        ("[node, container, pod]", SIDECAR, "k8sattributes, attribution", False),
    ],
    ids=["default-levels", "process-level", "vm-level", "sidecar"],
)
def test_auto_scans_containers_only_where_no_processor_needs_each_process(
    levels: str, extra: str, processors: str, scans_containers: bool
) -> None:
    text = CONFIG.format(levels=levels, extra=extra, processors=processors)
    service = Service(parse(text, default_registry()))
    receiver = service.receivers["procfs"]
    assert isinstance(receiver, ProcfsReceiver)
    receiver.start()
    try:
        assert (receiver.containers is not None) is scans_containers
    finally:
        receiver.shutdown()


def test_container_energy_is_the_same_from_either_scan(containers: Containers) -> None:
    """The attribution processor gives a container the same share of the active energy
    whether its CPU time comes from its processes or from its cgroup."""
    v1 = containers.top("cgroup", "cpuacct")
    containers.run(BURN, v1 / "docker" / ID_V1)
    containers.run(HALF, v1 / "docker" / ID_V2)
    scans = {"processes": ProcfsReceiver(scan="processes"), "containers": ProcfsReceiver()}
    scans["containers"].use_processes(False)
    config = AttributionConfig(idle="usage_ratio")
    attribution = {name: AttributionProcessor(config) for name in scans}
    active = dict.fromkeys(scans, 0.0)  # joules given out: 100 J a tick times the ratio
    joules: dict[str, dict[str, float]] = {}
    try:
        for receiver in scans.values():
            receiver.start()
        assert scans["containers"].containers is not None
        for tick in range(5):
            for name, receiver in scans.items():
                batch = Batch(tick * 1_000_000_000, 1.0, "")
                batch.add(receiver.collect())
                batch.energy = [EnergyReading("cpu", "package", "rapl", 100.0)]
                attribution[name].process(batch)
                active[name] += 100.0 * (batch.cpu_usage_ratio or 0.0)
                joules[name] = {
                    w.attributes["container_id"]: w.joules.get("package", 0.0)
                    for w in batch.workloads
                    if w.level == "container"
                }
            time.sleep(0.4)
    finally:
        for receiver in scans.values():
            receiver.shutdown()
    share = {name: {c: j / active[name] for c, j in joules[name].items()} for name in scans}
    # between the two containers the split is the same; beside the rest of the node it
    # may differ on a busy node: processes that start and end between two ticks count in
    # the node's task time (the container scan's rest), and no process scan sees them
    ratio = {name: share[name][ID_V1] / share[name][ID_V2] for name in scans}
    assert ratio["containers"] == pytest.approx(ratio["processes"], rel=0.15)
    assert ratio["containers"] > 1.3  # a busy loop beside a half-busy one
    for cid in (ID_V1, ID_V2):
        assert 0.05 < share["containers"][cid] < share["processes"][cid] * 1.1


NAMESPACED = """
import sys, time
from otel_kepler.receivers.procfs import ProcfsReceiver
receiver = ProcfsReceiver(sysfs=sys.argv[1], scan="containers")
receiver.use_processes(False)
receiver.start()
receiver.collect()
print("ready", flush=True)
sys.stdin.readline()
samples = receiver.collect().processes
for s in samples.values():
    if s.workload.container_id:
        print(s.workload.container_id, s.cpu_delta)
print("scan", "containers" if receiver.containers else "processes")
print("end", flush=True)
receiver.shutdown()
"""


def test_an_agent_in_a_cgroup_namespace_of_its_own_finds_the_containers(
    containers: Containers, tmp_path: Path
) -> None:
    """As in a pod: /proc/PID/cgroup paths start from the agent's own cgroup
    (``/../docker-ID.scope``), the host's hierarchy is under host.sysfs."""
    top = containers.top("cgroup2", "")
    mount = cgroup_mount("cgroup2", "")
    (top / "agent").mkdir()
    burner = containers.run(BURN, top / f"docker-{ID_V2}.scope")
    host_sys = tmp_path / "sys"
    (host_sys / "fs" / "cgroup").mkdir(parents=True)
    inner = (
        f"mount --bind {mount} {host_sys}/fs/cgroup && "
        "mount -t cgroup2 none /sys/fs/cgroup && "
        f'exec "$0" -c "$1" {host_sys}'
    )
    agent = subprocess.Popen(
        [
            "sh",
            "-c",
            f"echo $$ > {top}/agent/cgroup.procs && exec unshare --cgroup --mount "
            f'--propagation private sh -c \'{inner}\' "$0" "$1"',
            sys.executable,
            NAMESPACED,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    containers.children.append(agent)
    assert agent.stdout is not None and agent.stdin is not None
    assert agent.stdout.readline() == "ready\n"
    before = cpu_seconds(burner.pid)
    time.sleep(1.0)
    agent.stdin.write("\n")
    agent.stdin.flush()
    seen = dict(line.split() for line in iter(agent.stdout.readline, "end\n"))
    used = cpu_seconds(burner.pid) - before
    assert seen["scan"] == "containers"
    assert float(seen[ID_V2]) == pytest.approx(used, abs=3 / HZ + 0.05)
    assert agent.wait(10) == 0


def test_a_process_moved_into_a_container_is_found_the_next_tick_or_at_the_refresh(
    containers: Containers, receiver: ProcfsReceiver
) -> None:
    """A runtime moves a container's first process into its cgroup after starting it; a
    process moved later is found when every pid's cgroup is read again."""
    assert receiver.containers is not None
    receiver.containers.refresh_ticks = 4
    top = containers.top("cgroup", "cpuacct")
    (top / "docker" / ID_V1).mkdir(parents=True)
    (top / "docker" / ID_V2).mkdir(parents=True)
    early = spawn(BURN)
    containers.children.append(early)
    receiver.collect()  # tick 1: the first sight of it, outside any container
    (top / "docker" / ID_V1 / "cgroup.procs").write_text(str(early.pid))
    assert ID_V1 in by_container(receiver.collect().processes or {})  # tick 2
    late = spawn(BURN)
    containers.children.append(late)
    receiver.collect()  # tick 3: first seen
    receiver.collect()  # tick 4: seen again, still outside
    (top / "docker" / ID_V2 / "cgroup.procs").write_text(str(late.pid))
    assert ID_V2 not in by_container(receiver.collect().processes or {})  # tick 5
    for _ in range(2):
        receiver.collect()  # ticks 6 and 7
    time.sleep(0.3)
    assert ID_V2 in by_container(receiver.collect().processes or {})  # tick 8: refreshed


def test_a_removed_cgroup_drops_out_even_when_no_process_started(
    containers: Containers, receiver: ProcfsReceiver
) -> None:
    """Nothing new started on the node (the listing of pids may be skipped): a container
    whose processes ended and whose cgroup was removed still ends at the next tick."""
    leaf = containers.top("cgroup", "cpuacct") / "docker" / ID_V1
    child = containers.run(BURN, leaf)
    receiver.collect()
    before = by_container(receiver.collect().processes or {})[ID_V1]
    child.kill()
    child.wait()
    leaf.rmdir()
    contribution = receiver.collect()
    assert ID_V1 not in by_container(contribution.processes or {})
    assert [s.pid for s in contribution.exited] == [before.pid]
    assert receiver.containers is not None
    assert ID_V1 not in by_container(receiver.collect().processes or {})

"""/proc/PID/cgroup contents of every runtime and driver, v1 and v2, to container and pod ids."""

from __future__ import annotations

import pytest

from otel_kepler.data import NO_WORKLOAD
from otel_kepler.receivers.procfs.cgroup import parse_cgroup

ID = "3f1c8e0a9b7d6c5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e"
OTHER = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d"
NODE = "c0ffee5ba11ad0b3e5e7e6f3b2a1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3"
UID = "a5bd3c91-2f0e-4c8a-9d6b-7e1f20c3b4d5"
SYSTEMD_UID = UID.replace("-", "_")
STATIC_UID = "6d1c2e7b9a0f4c3e8b5a7d9f1e2c3b4a"  # mirror pods: a 32-hex hash, no dashes


def v1(path: str, systemd: str | None = None) -> str:
    """A cgroup v1 file with the usual dozen hierarchies, all in ``path``."""
    lines = [
        f"12:hugetlb:{path}",
        f"11:perf_event:{path}",
        f"10:freezer:{path}",
        f"9:cpuset:{path}",
        f"8:net_cls,net_prio:{path}",
        f"7:devices:{path}",
        f"6:blkio:{path}",
        f"5:pids:{path}",
        f"4:memory:{path}",
        f"3:cpu,cpuacct:{path}",
        "2:rdma:/",
        f"1:name=systemd:{systemd if systemd is not None else path}",
    ]
    return "\n".join(lines) + "\n"


def hybrid(v1_path: str, v2_path: str) -> str:
    """systemd's hybrid layout: v1 controllers plus the unified ``0::`` line."""
    return v1(v1_path) + f"0::{v2_path}\n"


KUBEPODS_SYSTEMD = "/kubepods.slice/kubepods-besteffort.slice"
POD_SLICE = f"{KUBEPODS_SYSTEMD}/kubepods-besteffort-pod{SYSTEMD_UID}.slice"
BURSTABLE_SLICE = (
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SYSTEMD_UID}.slice"
)
KIND_POD_SLICE = (
    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
    f"kubelet-kubepods-besteffort-pod{SYSTEMD_UID}.slice"
)
ROOTLESS = "/user.slice/user-1000.slice/user@1000.service/user.slice"

CONTAINERS = [
    # docker
    ("docker v2 systemd", f"0::/system.slice/docker-{ID}.scope\n", ID, "docker", ""),
    ("docker v2 cgroupfs", f"0::/docker/{ID}\n", ID, "docker", ""),
    ("docker v1 cgroupfs", v1(f"/docker/{ID}"), ID, "docker", ""),
    ("docker v1 systemd", v1(f"/system.slice/docker-{ID}.scope"), ID, "docker", ""),
    (
        "docker hybrid systemd",
        hybrid(f"/system.slice/docker-{ID}.scope", f"/system.slice/docker-{ID}.scope"),
        ID,
        "docker",
        "",
    ),
    # kubernetes + containerd
    (
        "k8s containerd v2 systemd besteffort",
        f"0::{POD_SLICE}/cri-containerd-{ID}.scope\n",
        ID,
        "containerd",
        UID,
    ),
    (
        "k8s containerd v2 systemd guaranteed",
        f"0::/kubepods.slice/kubepods-pod{SYSTEMD_UID}.slice/cri-containerd-{ID}.scope\n",
        ID,
        "containerd",
        UID,
    ),
    (
        "k8s containerd v1 systemd burstable",
        v1(f"{BURSTABLE_SLICE}/cri-containerd-{ID}.scope"),
        ID,
        "containerd",
        UID,
    ),
    ("k8s v1 cgroupfs burstable", v1(f"/kubepods/burstable/pod{UID}/{ID}"), ID, "", UID),
    ("k8s v2 cgroupfs guaranteed", f"0::/kubepods/pod{UID}/{ID}\n", ID, "", UID),
    (
        "k8s pause container",
        f"0::{BURSTABLE_SLICE}/cri-containerd-{OTHER}.scope\n",
        OTHER,
        "containerd",
        UID,
    ),
    (
        "k8s static pod (32-hex uid)",
        f"0::{KUBEPODS_SYSTEMD}/kubepods-besteffort-pod{STATIC_UID}.slice/"
        f"cri-containerd-{ID}.scope\n",
        ID,
        "containerd",
        STATIC_UID,
    ),
    ("k8s process in the pod cgroup itself", f"0::/kubepods/burstable/pod{UID}\n", "", "", UID),
    ("nerdctl systemd", f"0::/system.slice/nerdctl-{ID}.scope\n", ID, "containerd", ""),
    # kubernetes + cri-o
    ("k8s cri-o v2 systemd", f"0::{BURSTABLE_SLICE}/crio-{ID}.scope\n", ID, "cri-o", UID),
    ("k8s cri-o v1 cgroupfs", v1(f"/kubepods/besteffort/pod{UID}/crio-{ID}"), ID, "cri-o", UID),
    ("k8s cri-o conmon: the pod's", f"0::{BURSTABLE_SLICE}/crio-conmon-{ID}.scope\n", "", "", UID),
    # kubernetes + dockershim / cri-dockerd
    ("k8s docker v1 systemd", v1(f"{BURSTABLE_SLICE}/docker-{ID}.scope"), ID, "docker", UID),
    # podman
    ("podman v2 rootful", f"0::/machine.slice/libpod-{ID}.scope\n", ID, "podman", ""),
    (
        "podman v2 rootful, container sub-cgroup",
        f"0::/machine.slice/libpod-{ID}.scope/container\n",
        ID,
        "podman",
        "",
    ),
    ("podman v2 rootless", f"0::{ROOTLESS}/libpod-{ID}.scope\n", ID, "podman", ""),
    ("podman v1 cgroupfs", v1(f"/libpod_parent/libpod-{ID}"), ID, "podman", ""),
    (
        "podman pod (no k8s pod id)",
        f"0::/machine.slice/machine-libpod_pod_{OTHER}.slice/libpod-{ID}.scope\n",
        ID,
        "podman",
        "",
    ),
    # kind and other nesting: the innermost container wins
    (
        "kind, inside the node",
        f"0::{KIND_POD_SLICE}/cri-containerd-{ID}.scope\n",
        ID,
        "containerd",
        UID,
    ),
    (
        "kind v2, seen from the host",
        f"0::/system.slice/docker-{NODE}.scope{KIND_POD_SLICE}/cri-containerd-{ID}.scope\n",
        ID,
        "containerd",
        UID,
    ),
    (
        "kind v1, seen from the host",
        v1(f"/docker/{NODE}/kubepods/besteffort/pod{UID}/{ID}"),
        ID,
        "",
        UID,
    ),
    (
        "kind node's own containerd",
        f"0::/system.slice/docker-{NODE}.scope/system.slice/containerd.service\n",
        NODE,
        "docker",
        "",
    ),
    (
        "systemd inside a container",
        f"0::/system.slice/docker-{ID}.scope/system.slice/nginx.service\n",
        ID,
        "docker",
        "",
    ),
    # which line of a multi-hierarchy file
    (
        "hybrid: v2 line is root, cpu line names the container",
        v1(f"/kubepods/besteffort/pod{UID}/{ID}", systemd="/") + "0::/\n",
        ID,
        "",
        UID,
    ),
    (
        "v2 line preferred over disagreeing v1 lines",
        v1(f"/docker/{OTHER}") + f"0::/system.slice/docker-{ID}.scope\n",
        ID,
        "docker",
        "",
    ),
    (
        "cpu,cpuacct line preferred over an earlier memory line",
        f"4:memory:/docker/{OTHER}\n3:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/\n",
        ID,
        "docker",
        "",
    ),
    (
        "only one v1 hierarchy names the container",
        "4:memory:/process_api/a1fce27adb3e12f149f863dbc4b8e38a\n3:cpuset:/\n"
        f"2:devices:/docker/{ID}\n1:cpu:/\n0::/\n",
        ID,
        "docker",
        "",
    ),
]


@pytest.mark.parametrize(
    ("text", "container_id", "runtime", "pod_id"),
    [pytest.param(*case[1:], id=case[0]) for case in CONTAINERS],
)
def test_container_and_pod(text: str, container_id: str, runtime: str, pod_id: str) -> None:
    workload = parse_cgroup(text)
    assert (workload.container_id, workload.runtime, workload.pod_id) == (
        container_id,
        runtime,
        pod_id,
    )
    assert workload is not NO_WORKLOAD


HOST = [
    ("init", "0::/init.scope\n"),
    ("login session", "0::/user.slice/user-1000.slice/session-3.scope\n"),
    ("system service", "0::/system.slice/sshd.service\n"),
    ("dockerd itself", "0::/system.slice/docker.service\n"),
    ("containerd itself", "0::/system.slice/containerd.service\n"),
    ("kubelet", "0::/system.slice/kubelet.service\n"),
    ("root cgroup", "0::/\n"),
    ("user manager", "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n"),
    ("rootless podman conmon", f"0::{ROOTLESS}/libpod-conmon-{ID}.scope\n"),
    ("qos slice, no pod", f"0::{KUBEPODS_SYSTEMD}\n"),
    ("v1 host process", v1("/user.slice/user-0.slice/session-1.scope")),
    ("v1 root", v1("/")),
    (
        "32-hex ids are not containers",
        "4:memory:/process_api/a1fce27adb3e12f149f863dbc4b8e38a\n1:cpu:/\n0::/\n",
    ),
    ("short hex", "0::/system.slice/docker-3f1c8e0a9b7d.scope\n"),
    ("empty file", ""),
    ("garbage", "not a cgroup file\n"),
]


@pytest.mark.parametrize("text", [pytest.param(text, id=name) for name, text in HOST])
def test_host_processes_share_no_workload(text: str) -> None:
    assert parse_cgroup(text) is NO_WORKLOAD


def test_processes_of_one_container_share_one_object() -> None:
    scope = parse_cgroup(f"0::/machine.slice/libpod-{ID}.scope\n")
    sub = parse_cgroup(f"0::/machine.slice/libpod-{ID}.scope/container\n")
    again = parse_cgroup(f"0::/machine.slice/libpod-{ID}.scope\n")
    assert scope is sub is again
    assert scope.container_id == ID
    other = parse_cgroup(f"0::/machine.slice/libpod-{OTHER}.scope\n")
    assert other is not scope
    assert other.container_id == OTHER


def test_systemd_and_cgroupfs_give_the_same_pod_id() -> None:
    systemd = parse_cgroup(f"0::{POD_SLICE}/cri-containerd-{ID}.scope\n")
    cgroupfs = parse_cgroup(f"0::/kubepods/besteffort/pod{UID}/{ID}\n")
    assert systemd.pod_id == cgroupfs.pod_id == UID
    assert "_" not in systemd.pod_id


def test_paths_relative_to_the_agents_own_cgroup_namespace() -> None:
    """A DaemonSet in a private cgroup namespace reads host pids' paths as /../../..."""
    container = "ab" * 32
    text = (
        "0::/../../kubepods-besteffort-pod1f2e3d4c_0000_4000_8000_00000000000a.slice/"
        f"cri-containerd-{container}.scope\n"
    )
    workload = parse_cgroup(text)
    assert (workload.container_id, workload.runtime, workload.pod_id) == (
        container,
        "containerd",
        "1f2e3d4c-0000-4000-8000-00000000000a",
    )

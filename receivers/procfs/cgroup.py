"""Container and pod of a process, from the content of /proc/PID/cgroup.

A line of that file is ``hierarchy-id:controllers:path``: ``0::/path`` for cgroup
v2, ``4:cpu,cpuacct:/path`` and friends for the v1 hierarchies. Runtimes name the
cgroup of a container after its id, in one of two styles:

- cgroupfs driver: ``/docker/<id>``, ``/kubepods/burstable/pod<uid>/<id>``,
  ``/kubepods/besteffort/pod<uid>/crio-<id>``;
- systemd driver: ``/system.slice/docker-<id>.scope``, ``/machine.slice/libpod-<id>.scope``,
  ``/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/
  cri-containerd-<id>.scope``, where the pod uid is written with ``_`` for ``-``.

The path is read one segment at a time, outermost first, so nested setups (a kind
node that is itself a docker container, a rootless podman under ``user@1000.service``,
a kubelet whose cgroup root is ``/kubelet.slice``) resolve to the innermost
container. A pod segment starts a new level: a container seen above it (the kind
node) is not the pod's container.

Decisions:

- conmon (``crio-conmon-<id>.scope``, ``libpod-conmon-<id>.scope``) monitors a
  container but does not run in its cgroup, so the kernel does not charge it to the
  container. It is reported the way the cgroup tree accounts it: part of the pod
  (``pod_id`` set, no ``container_id``), or a host process outside any pod.
- A process directly in a pod's cgroup (no container segment) gets the pod only.
- The pause (sandbox) container of a pod is a container like the others: its cgroup
  cannot be told apart from an application container's; the pod metadata can.
- A bare 64-hex segment is a container whose runtime the path does not tell
  (``runtime=""``), except under ``/docker/`` (docker's cgroupfs parent).
"""

from __future__ import annotations

import re

from otel_kepler.data import NO_WORKLOAD, Workload

_ID = r"[0-9a-f]{64}"

#: A container segment: optional runtime prefix, the id, optional ``.scope``.
_CONTAINER = re.compile(
    rf"^(?:(?P<prefix>docker|cri-containerd|crio|libpod|nerdctl)-)?(?P<id>{_ID})(?:\.scope)?$"
)
#: conmon's own cgroup, next to the container it monitors.
_CONMON = re.compile(rf"^(?:crio|libpod)-conmon-{_ID}(?:\.scope)?$")

#: Pod uids are UUIDs, except static (mirror) pods whose uid is a 32-hex hash.
_UID = (
    r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
    r"|[0-9a-f]{32}"
)
#: ``pod<uid>`` (cgroupfs) or ``[kubelet-]kubepods[-qos]-pod<uid_underscored>.slice`` (systemd).
_POD = re.compile(rf"^(?:pod|(?:[a-z]+-)*kubepods(?:-[a-z]+)?-pod)(?P<uid>{_UID})(?:\.slice)?$")

_RUNTIMES = {
    "docker": "docker",
    "cri-containerd": "containerd",
    "nerdctl": "containerd",
    "crio": "cri-o",
    "libpod": "podman",
}

#: Caches; both are cleared when they reach this many entries (a node runs far fewer
#: containers), after which a container may get a second, equal, Workload object.
_CACHE_LIMIT = 8192
_by_text: dict[str, Workload] = {}
_interned: dict[Workload, Workload] = {}


def parse_cgroup(text: str) -> Workload:
    """The workload of a process given its /proc/PID/cgroup content.

    Returns :data:`NO_WORKLOAD` for host processes. Equal results are the same
    object, so every process of one container shares one Workload.
    """
    cached = _by_text.get(text)
    if cached is not None:
        return cached
    workload = _intern(_parse(text))
    if len(_by_text) >= _CACHE_LIMIT:
        _by_text.clear()
    _by_text[text] = workload
    return workload


def parse_path(path: str) -> Workload:
    """The workload named by one cgroup path (not interned)."""
    container_id = runtime = pod_id = ""
    parent = ""
    for segment in path.split("/"):
        if not segment:
            continue
        pod = _POD.match(segment)
        if pod is not None:
            pod_id = pod.group("uid").replace("_", "-")
            container_id = runtime = ""
        elif _CONMON.match(segment) is not None:
            container_id = runtime = ""
        else:
            match = _CONTAINER.match(segment)
            if match is not None:
                container_id = match.group("id")
                runtime = _runtime(match.group("prefix"), parent)
        parent = segment
    if not container_id and not pod_id:
        return NO_WORKLOAD
    return Workload(container_id=container_id, runtime=runtime, pod_id=pod_id)


def _runtime(prefix: str | None, parent: str) -> str:
    if prefix is not None:
        return _RUNTIMES[prefix]
    return "docker" if parent == "docker" else ""


def _parse(text: str) -> Workload:
    for _, path in _candidate_lines(text):
        workload = parse_path(path)
        if workload is not NO_WORKLOAD:
            return workload
    return NO_WORKLOAD


def workload_cgroup(text: str) -> tuple[str, str, Workload]:
    """(controllers, path, workload) of the line of a /proc/PID/cgroup content that
    :func:`parse_cgroup` takes the workload from; ``("", "", NO_WORKLOAD)`` for a host
    process. ``controllers`` is ``""`` for the v2 line."""
    for controllers, path in _candidate_lines(text):
        workload = parse_path(path)
        if workload is not NO_WORKLOAD:
            return controllers, path, _intern(workload)
    return "", "", NO_WORKLOAD


def _candidate_lines(text: str) -> list[tuple[str, str]]:
    """The cgroup paths of ``text``, most telling first.

    The v2 line (``0::``) first, then the v1 line holding the cpu or cpuacct
    controller (the one CPU time is accounted in), then systemd's named hierarchy,
    then the other v1 hierarchies in file order.
    """
    ranked: list[tuple[int, int, str, str]] = []
    for index, line in enumerate(text.splitlines()):
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        ranked.append((_rank(controllers), index, controllers, path))
    ranked.sort()
    return [(controllers, path) for _, _, controllers, path in ranked]


def _rank(controllers: str) -> int:
    if not controllers:
        return 0
    names = controllers.split(",")
    if "cpu" in names or "cpuacct" in names:
        return 1
    if "name=systemd" in names:
        return 2
    return 3


def _intern(workload: Workload) -> Workload:
    if workload == NO_WORKLOAD:
        return NO_WORKLOAD
    shared = _interned.get(workload)
    if shared is not None:
        return shared
    if len(_interned) >= _CACHE_LIMIT:
        _interned.clear()
    _interned[workload] = workload
    return workload

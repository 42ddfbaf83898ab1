"""What the tracker reads from the machine: procfs files and cgroup directories."""

from __future__ import annotations

import os

from otel_kepler.data import NO_WORKLOAD, Workload
from otel_kepler.receivers.procfs.reader import PF_KTHREAD, read_exe, read_small, read_workload

from .cgroups import CgroupResolver, workload_of
from .tracker import Identity

# Fields after "comm)" in /proc/PID/stat: field N of proc(5) is at N - 3.
_STATE = 3 - 3
_FLAGS = 9 - 3
_STARTTIME = 22 - 3


class ProcHost:
    """What the tracker reads from the machine: procfs files and cgroup directories."""

    def __init__(self, procfs: str, resolver: CgroupResolver, legacy: bool) -> None:
        self.procfs = procfs
        self.resolver = resolver
        self.legacy = legacy  # v1 cpu hierarchy mounted: containers may be found there

    def identify(self, pid: int) -> Identity | None:
        base = f"{self.procfs}/{pid}"
        stat = read_small(base + "/stat")
        end = stat.rfind(b")")
        if end < 0:
            return None
        fields = stat[end + 2 :].split(b" ", _STARTTIME + 1)
        if len(fields) <= _STARTTIME or fields[_STATE] in (b"Z", b"X"):
            return None  # unreadable, or it has ended (a zombie: its exit is recorded)
        cgroup = read_small(base + "/cgroup")
        kernel = bool(int(fields[_FLAGS]) & PF_KTHREAD)
        return Identity(
            start_ticks=int(fields[_STARTTIME]),
            comm=stat[stat.find(b"(") + 1 : end].decode("utf-8", "replace"),
            exe="" if kernel else read_exe(base + "/exe"),
            workload=read_workload(cgroup) if cgroup else NO_WORKLOAD,
        )

    def tgid_of(self, tid: int) -> int | None:
        status = read_small(f"{self.procfs}/{tid}/status")
        at = status.find(b"\nTgid:")
        if at < 0:
            return None
        return int(status[at + 6 : status.index(b"\n", at + 1)])

    def workload(self, cgroup_id: int, pid: int | None, fallback: Workload) -> Workload:
        hint = None if pid is None else lambda: self._v2_path(pid)
        path = self.resolver.path(cgroup_id, hint)
        if path is None:
            return fallback  # gone before it was seen, or no cgroup2 mount
        found = workload_of(path)
        if found is NO_WORKLOAD and self.legacy:
            return fallback  # hybrid host: the container may be in a v1 hierarchy
        return found

    def next_tick(self) -> None:
        self.resolver.next_tick()

    def _v2_path(self, pid: int) -> str:
        content: bytes = read_small(f"{self.procfs}/{pid}/cgroup")
        for line in content.splitlines():
            if line.startswith(b"0::"):
                return line[3:].decode("utf-8", "replace")
        return ""

    def pids(self) -> set[int]:
        return {int(name) for name in os.listdir(self.procfs) if name.isdigit()}


def legacy_cpu_hierarchy(mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether a cgroup v1 hierarchy holds the cpu or cpuacct controller."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as file:
            for line in file:
                _, _, right = line.partition(" - ")
                parts = right.split()
                if len(parts) >= 3 and parts[0] == "cgroup":
                    options = parts[2].split(",")
                    if "cpu" in options or "cpuacct" in options:
                        return True
    except OSError:
        pass
    return False

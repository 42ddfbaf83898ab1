"""CPU time per container from its cgroup, for pipelines that need no process's own numbers.

At the levels node, container and pod a tick needs each container's CPU time and
the node's, not each process's. The kernel keeps the first in the container's cgroup
(cgroup v2 ``cpu.stat`` ``usage_usec``, v1 ``cpuacct.usage``), so one small file a
container replaces one stat file a process: on a node with thousands of processes
in a hundred containers, a tick reads a hundred files.

- Which cgroups to read is learned from the processes: the pids are listed every
  tick, and a pid seen for the first time has its ``/proc/PID/cgroup`` read, and once
  more the tick after (runtimes start a container's first process outside the
  container's cgroup and move it in), and every pid again every ``refresh_ticks`` (a
  process can be moved later). The cgroup is the one
  the workload is named after (see :mod:`.cgroup`), read in the hierarchy that
  accounts CPU time: the v2 one, or v1 ``cpuacct``.
- Where the procfs is of the agent's own pid namespace and no pid was handed out since
  the last listing (the last field of ``/proc/loadavg``), no process is new: the listing
  is skipped and the same cgroups are read.
- Each container's file is kept open and re-read with ``pread``; a removed cgroup
  fails the read and is dropped with its processes.
- A container cgroup inside another one read too (a container running its own
  cgroups) counts only what its children do not.
- Everything outside containers (host processes, kernel threads) is one sample, pid
  0, whose CPU time is the node's task time (user, nice and system of /proc/stat,
  which is also what all processes' utime and stime add up to) less the containers'.

Each container cgroup becomes a :class:`ProcessSample` with a negative pid of its own
and the inode of its accounting file as its start time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from otel_kepler.data import NO_WORKLOAD, ProcessSample, Workload

from .activity import cgroup_mounts, namespace_root
from .cgroup import workload_cgroup
from .reader import read_small

#: Every pid's cgroup is read again this often (in ticks).
REFRESH_TICKS = 120

_V2_FILE, _V1_FILE = "cpu.stat", "cpuacct.usage"


class ContainerScanError(Exception):
    """A container's cgroup cannot be read: the reader cannot account for it."""


@dataclass(slots=True)
class _Group:
    """One container cgroup being read."""

    directory: str
    workload: Workload
    fd: int
    inode: int
    v2: bool
    pid: int  # its sample's pid: negative, one a group
    usage: float  # cumulative CPU seconds at the last read; -1: not read yet
    delta: float = 0.0  # this tick's CPU seconds, its inner groups' included
    inner: float = 0.0  # this tick's CPU seconds of the groups nested inside it
    inner_usage: float = 0.0  # their cumulative CPU seconds
    outer: _Group | None = None  # the nearest group enclosing this one


class ContainerReader:
    """Reads each container's CPU time from its cgroup; see the module's docstring."""

    def __init__(self, procfs: str = "/proc", sysfs: str = "/sys") -> None:
        self.procfs = procfs
        self.v2_mount, self.cpuacct_mount = cgroup_mounts(prefer=sysfs, v1="cpuacct")
        self.refresh_ticks = REFRESH_TICKS
        self._where: dict[str, str] = {}  # pid -> directory of its container cgroup, or ""
        self._confirm: set[str] = set()  # pids first seen in the last scan
        self._texts: dict[bytes, str] = {}  # /proc/PID/cgroup content -> directory
        self._kinds: dict[str, tuple[Workload, bool]] = {}  # directory -> workload, v2
        self._groups: dict[str, _Group] = {}  # directory -> group
        self._left: dict[str, tuple[int, float]] = {}  # directory -> inode, last usage
        self._next_pid = -1  # the pid of the next group's samples
        self._nesting_of: frozenset[str] = frozenset()  # the directories nesting was set for
        self._root = ""  # where this agent's own cgroup namespace starts in the hierarchy
        self._ticks = 0
        self._rest = 0.0  # cumulative CPU seconds outside containers
        self._live: dict[str, int] = {}  # the last scan's container cgroups, one pid each
        self._loadavg = f"{procfs}/loadavg"
        self._last_pid = b""  # the last pid handed out, at the last listing
        try:
            self._own_namespace = os.readlink(f"{procfs}/self") == str(os.getpid())
        except OSError:
            self._own_namespace = False
        #: one live process of each container cgroup, from the last scan (pid -> sample)
        self.members: dict[int, ProcessSample] = {}

    def unusable(self) -> str | None:
        """Why this host's cgroups cannot be read this way (None: they can)."""
        if self.v2_mount is None and self.cpuacct_mount is None:
            return "no cgroup2 or cgroup v1 cpuacct hierarchy is mounted"
        text = read_small(f"{self.procfs}/1/cgroup")
        if not text:
            return f"cannot read {self.procfs}/1/cgroup"
        if b"/.." in text:  # paths relative to this agent's own cgroup namespace
            self._root = namespace_root(self.v2_mount) or ""
            if not self._root:  # (the host's root itself would not show "..")
                return (
                    f"{self.procfs}/1/cgroup shows paths relative to this agent's cgroup "
                    f"namespace, whose cgroup was not found under {self.v2_mount}"
                )
        return None

    def close(self) -> None:
        for group in self._groups.values():
            os.close(group.fd)
        self._groups = {}

    def scan(
        self, previous: dict[int, ProcessSample] | None, task_seconds: float | None
    ) -> dict[int, ProcessSample]:
        """One sample per container cgroup with live processes, and pid 0 for the rest.

        ``task_seconds``: the node's task CPU time of the interval (None on the first
        tick). Deltas follow the process scan's rules: 0 when ``previous`` is None, the
        whole usage for a container cgroup first seen later.

        Raises :class:`ContainerScanError` when a container's cgroup cannot be read.
        """
        self._ticks += 1
        live = self._live_directories()
        groups = self._groups
        for directory in [d for d in groups if d not in live]:
            gone = groups.pop(directory)  # no process left in it (or they moved)
            os.close(gone.fd)
            if len(self._left) >= 4096:
                self._left.clear()
            self._left[directory] = (gone.inode, gone.usage)
        members: dict[int, ProcessSample] = {}
        for directory, pid in live.items():
            group = groups.get(directory)
            if group is None:
                group = groups[directory] = self._open(directory, pid)
            members[pid] = ProcessSample(pid, group.inode, "", "", group.workload, 0.0, 0.0)
        self.members = members
        if frozenset(groups) != self._nesting_of:
            self._nest()
        priming = previous is None
        removed = [g for g in groups.values() if not self._read(g, priming)]
        if removed:  # its processes are gone too: forget them with it
            self._forget(removed)
        for group in groups.values():
            if group.outer is not None:
                group.outer.inner += group.delta
                group.outer.inner_usage += group.usage
        samples: dict[int, ProcessSample] = {}
        contained = 0.0
        for group in groups.values():
            own = max(group.delta - group.inner, 0.0)
            contained += own
            cpu = max(group.usage - group.inner_usage, 0.0)
            samples[group.pid] = ProcessSample(
                group.pid, group.inode, "", "", group.workload, cpu, own
            )
        rest = 0.0 if priming or task_seconds is None else max(task_seconds - contained, 0.0)
        self._rest += rest
        samples[0] = ProcessSample(0, 0, "", "", NO_WORKLOAD, self._rest, rest)
        return samples

    # -- which cgroups ----------------------------------------------------------------

    def _live_directories(self) -> dict[str, int]:
        """Each container cgroup directory with live processes, and one of its pids."""
        refresh = self._ticks % self.refresh_ticks == 0
        if refresh:
            self._texts = {}  # read every pid again; what is left over is forgotten
            self._where = {}
        elif not self._confirm and self._nothing_started():
            return self._live  # no pid is new: the same cgroups (removed ones drop out)
        where = self._where  # set operations, not a loop: most pids are known
        names = set(os.listdir(self.procfs))
        for name in where.keys() - names:
            del where[name]
        for name in self._confirm & names:  # read again once, the tick after the first
            directory = self._directory_of(name)
            if directory is None:
                where.pop(name, None)
            else:
                where[name] = directory
        fresh = [name for name in names - where.keys() if name.isdigit()]
        for name in fresh:
            directory = self._directory_of(name)
            if directory is not None:  # else gone since it was listed
                where[name] = directory
        self._confirm = set(fresh)
        live = {directory: int(name) for name, directory in where.items()}
        live.pop("", None)
        if len(self._kinds) > 2 * len(live) + 64:  # forget cgroups long gone
            self._kinds = {d: kind for d, kind in self._kinds.items() if d in live}
            self._texts = {}  # what a text leads to is found again, with its kind
        self._live = live
        return live

    def _nothing_started(self) -> bool:
        """Whether no process or thread was created since the last look, so that listing
        the pids would find none new: the last pid handed out (/proc/loadavg) is the same.
        That pid is of the reader's pid namespace, so this holds only where the procfs
        read is of this agent's own namespace (hostPID, or the agent on the host)."""
        if not self._own_namespace:
            return False
        data = read_small(self._loadavg)
        last = data.rsplit(b" ", 1)[-1]
        same = bool(last) and last == self._last_pid
        self._last_pid = last
        return same

    def _directory_of(self, name: str) -> str | None:
        """The container cgroup directory of pid ``name``: "" outside containers, None
        if the process is gone."""
        text = read_small(f"{self.procfs}/{name}/cgroup")
        if not text:
            return None
        directory = self._texts.get(text)
        if directory is not None:
            return directory
        controllers, path, workload = workload_cgroup(text.decode("utf-8", "replace"))
        directory, v2 = "", True
        if workload is not NO_WORKLOAD:
            if not controllers and self.v2_mount is not None:
                inside = os.path.normpath(self._root + path) if self._root else path
                directory = os.path.join(self.v2_mount, inside.lstrip("/"))
            elif "cpuacct" in controllers.split(",") and self.cpuacct_mount is not None:
                directory, v2 = os.path.join(self.cpuacct_mount, path.lstrip("/")), False
            else:
                hierarchy = controllers or "cgroup2"
                raise ContainerScanError(
                    f"{self.procfs}/{name}/cgroup puts the process in a container's cgroup "
                    f"only in a hierarchy that does not account CPU time ({hierarchy}:{path})"
                )
            self._kinds[directory] = (workload, v2)
        self._texts[text] = directory
        return directory

    def _open(self, directory: str, pid: int) -> _Group:
        workload, v2 = self._kinds[directory]
        path = os.path.join(directory, _V2_FILE if v2 else _V1_FILE)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise ContainerScanError(
                f"cannot read {path} (the cgroup of pid {pid}): {err.strerror}"
            ) from None
        inode = os.fstat(fd).st_ino
        left = self._left.pop(directory, None)  # its usage when last read, if the same cgroup
        usage = left[1] if left is not None and left[0] == inode else -1.0
        self._next_pid -= 1
        return _Group(directory, workload, fd, inode, v2, self._next_pid + 1, usage)

    def _nest(self) -> None:
        """Find, for each group, the nearest group whose cgroup encloses it."""
        groups = self._groups
        for directory, group in groups.items():
            group.outer = None
            child, parent = directory, os.path.dirname(directory)
            while parent != child:
                outer = groups.get(parent)
                if outer is not None:
                    group.outer = outer
                    break
                child, parent = parent, os.path.dirname(parent)
        self._nesting_of = frozenset(groups)

    # -- reading ----------------------------------------------------------------------

    def _forget(self, removed: list[_Group]) -> None:
        gone = {group.directory for group in removed}
        for group in removed:
            del self._groups[group.directory]
            os.close(group.fd)
        self._where = {pid: d for pid, d in self._where.items() if d not in gone}
        self._live = {d: pid for d, pid in self._live.items() if d not in gone}
        self._nesting_of = frozenset()  # found again next tick

    def _read(self, group: _Group, priming: bool) -> bool:
        """Read one group's usage; False if its cgroup is gone."""
        group.inner = group.inner_usage = 0.0
        try:
            data = os.pread(group.fd, 256, 0)
        except OSError:  # ENODEV: removed since its processes were listed
            data = b""
        if not data:
            return False
        usage = _parse_usage(data, group.v2)
        if usage is None:
            group.delta = 0.0
            return True
        if priming:
            group.delta = 0.0
        elif group.usage < 0:
            group.delta = usage  # a container that started during the interval
        else:
            group.delta = max(usage - group.usage, 0.0)
        group.usage = usage
        return True


def _parse_usage(data: bytes, v2: bool) -> float | None:
    """CPU seconds from a cpu.stat (v2) or cpuacct.usage (v1) content; None if unreadable."""
    try:
        if v2:
            key, _, rest = data.partition(b" ")
            if key != b"usage_usec":
                return None
            return int(rest.split(b"\n", 1)[0]) / 1e6
        return int(data) / 1e9
    except ValueError:
        return None

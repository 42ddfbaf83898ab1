"""From a cgroup v2 id (what ``bpf_get_current_cgroup_id`` returns) to a Workload.

A cgroup's id is the inode number of its directory in the cgroup2 file system, so the
id names a directory under the cgroup2 mount, and that directory's path names the
container and pod as the ``procfs`` receiver reads them (the same parser). Ids are never
reused while the machine runs, so what an id resolved to is cached for good.

A miss is resolved cheaply where a live process of that cgroup is known: its
``/proc/PID/cgroup`` line ``0::/path`` is checked against the id with one ``stat``.
Otherwise (the process is gone) the cgroup2 tree is walked, at most once per tick; an id
not found by a walk belongs to a cgroup removed since, and stays unknown.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from otel_kepler.data import Workload
from otel_kepler.receivers.procfs.cgroup import parse_cgroup

#: Cached ids are dropped all at once past this many (a node has far fewer cgroups).
CACHE_LIMIT = 65536


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo", prefer: str = "") -> str | None:
    """Where the cgroup2 hierarchy is mounted; one under ``prefer`` first, if any."""
    found: list[str] = []
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as file:
            for line in file:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    found.append(_unescape(left.split()[4]))
    except OSError:
        return None
    for mount in found:
        if prefer and mount.startswith(prefer.rstrip("/") + "/"):
            return mount
    return found[0] if found else None


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


class CgroupResolver:
    """Cgroup id -> path (relative to the cgroup2 root) -> Workload, cached."""

    def __init__(self, mount: str | None) -> None:
        self.mount = mount
        self._paths: dict[int, str | None] = {}  # id -> path; None: gone before seen
        self._may_walk = True  # no walk yet this tick
        self.walks = 0

    def next_tick(self) -> None:
        self._may_walk = True

    def path(self, cgroup_id: int, hint: Callable[[], str] | None = None) -> str | None:
        """The path of cgroup ``cgroup_id``; ``hint()`` a path it may have. None: unknown."""
        if cgroup_id in self._paths:
            return self._paths[cgroup_id]
        if self.mount is None or cgroup_id == 0:
            return None
        guess = hint() if hint is not None else ""
        if guess and self._inode(guess) == cgroup_id:
            self._remember(cgroup_id, guess)
            return guess
        if self._may_walk:
            self._may_walk = False
            self._walk()
            if cgroup_id in self._paths:
                return self._paths[cgroup_id]
        self._remember(cgroup_id, None)
        return None

    def _inode(self, path: str) -> int:
        try:
            return os.stat(self._join(path)).st_ino
        except OSError:
            return -1

    def _join(self, path: str) -> str:
        assert self.mount is not None
        return self.mount.rstrip("/") + path if path != "/" else self.mount

    def _walk(self) -> None:
        """Record the id of every cgroup directory under the mount."""
        assert self.mount is not None
        self.walks += 1
        try:
            self._remember(os.stat(self.mount).st_ino, "/")
        except OSError:
            return
        pending = [(self.mount, "")]
        while pending:
            directory, relative = pending.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue  # removed meanwhile
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    path = f"{relative}/{entry.name}"
                    self._remember(entry.inode(), path)
                    pending.append((entry.path, path))

    def _remember(self, cgroup_id: int, path: str | None) -> None:
        if len(self._paths) >= CACHE_LIMIT:
            self._paths.clear()
        self._paths[cgroup_id] = path


def workload_of(path: str) -> Workload:
    """The workload a cgroup v2 path names (shared objects, as procfs gives)."""
    workload: Workload = parse_cgroup("0::" + path)
    return workload

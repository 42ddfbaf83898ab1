"""Fast scan of every process under a procfs tree.

A scan lists the numeric entries of procfs and reads ``PID/stat`` of each. Three
things keep it cheap (measured on a 2-core VM: reading stat files is most of the
cost, and Python work per process is the rest):

- Each stat file is kept open between scans and re-read with ``pread`` at offset 0
  (the kernel regenerates it): one syscall a process instead of open, read and
  close, about half the CPU time. An fd stays bound to the process it was opened
  for: once that process is gone (even if its pid is reused) the read fails with
  ESRCH and the file is closed. The cost is one fd and about 4 KiB of kernel memory
  per process; ``keep_open=False`` turns it off, and past the fd budget (the soft
  RLIMIT_NOFILE less a reserve) files are opened and closed every scan.
- What does not change while a process lives (exe, cgroup) is read once per
  process, identified by ``(pid, starttime)``, and shared by its samples.
  ``comm`` is compared each scan without a copy: ``exec`` changes it, and the exe,
  and sometimes the cgroup, without a new starttime, so the identity is re-read.
- A stat file that reads exactly as in the last scan (most processes did not run
  since) gives the last sample again with a delta of 0, without parsing it.
- A process that vanishes while it is read is normal and skipped without a word.
"""

from __future__ import annotations

import errno
import os
import resource
from dataclasses import dataclass

from otel_kepler.data import ProcessSample, Workload

from .cgroup import parse_cgroup

#: task flag of kernel threads (include/linux/sched.h): no exe, never exec.
PF_KTHREAD = 0x00200000

#: /proc/PID/stat is at most about 1 KiB (52 numeric fields and a 64-byte comm).
_STAT_SIZE = 4096

#: File descriptors left to the rest of the agent when stat files are kept open.
FD_RESERVE = 512

#: The soft RLIMIT_NOFILE ``raise_fd_limit`` asks for (a node has fewer processes).
FD_WANTED = 65536

# Indexes into the fields after ``comm)``: field N of proc(5) is at N - 3.
_FLAGS = 9 - 3
_UTIME = 14 - 3
_STIME = 15 - 3
_STARTTIME = 22 - 3


@dataclass(slots=True)
class Identity:
    """What a process is, read once for its (pid, starttime)."""

    start_ticks: int
    head: bytes  # b"PID (comm)" as in its stat file: a new comm means an exec
    comm: str
    exe: str
    workload: Workload
    kernel: bool  # kernel thread: its comm may change (kworker), its identity never


class StatFiles:
    """The stat file of every process, kept open from one scan to the next when allowed.

    Call :meth:`begin` before a scan and :meth:`end` after it: files of the
    processes not read in between are closed.
    """

    def __init__(self, procfs: str, keep_open: bool = True) -> None:
        self.prefix = procfs + "/"
        self.keep_open = keep_open
        self._open: dict[int, int] = {}  # pid -> fd read in this scan
        self._stale: dict[int, int] = {}  # pid -> fd of the last scan, not read yet
        self._budget = 0

    def begin(self) -> None:
        self._stale, self._open = self._open, {}
        self._budget = fd_budget() if self.keep_open else 0

    def end(self) -> None:
        for fd in self._stale.values():
            os.close(fd)
        self._stale = {}

    def close(self) -> None:
        self.end()
        self._stale, self._open = self._open, {}
        self.end()

    def give_back_one(self) -> bool:
        """Out of descriptors (other parts of the agent hold more than the reserve):
        close one kept file and keep no more open this scan, so that the scan can go
        on; False if none is kept. A scan never misses a process for an open file."""
        table = self._open or self._stale
        if not table:
            return False
        _, spare = table.popitem()
        os.close(spare)
        self._budget = len(self._open)
        return True

    @property
    def open_count(self) -> int:
        return len(self._open) + len(self._stale)

    def read(self, pid: int, name: str) -> bytes:
        """The stat file of ``pid`` (``name`` is its decimal text); ``b""`` if gone."""
        fd = self._stale.pop(pid, -1)
        if fd >= 0:
            try:
                data = os.pread(fd, _STAT_SIZE, 0)
            except OSError:  # ESRCH: the process of this fd is gone
                data = b""
            if data:
                self._open[pid] = fd
                return data
            os.close(fd)  # its pid may belong to a new process now: open it afresh
        try:
            fd = os.open(self.prefix + name + "/stat", os.O_RDONLY)
        except OSError as err:
            if err.errno != errno.EMFILE or not self.give_back_one():
                return b""
            try:
                fd = os.open(self.prefix + name + "/stat", os.O_RDONLY)
            except OSError:
                return b""
        try:
            data = os.read(fd, _STAT_SIZE)
        except OSError:
            data = b""
        if data and len(self._open) < self._budget:
            self._open[pid] = fd
        else:
            os.close(fd)
        return data


class ProcessReader:
    """Reads processes under ``procfs``; remembers each one's identity between scans."""

    def __init__(self, procfs: str = "/proc", keep_open: bool = True) -> None:
        self.procfs = procfs
        self.clock_ticks = os.sysconf("SC_CLK_TCK")
        self.files = StatFiles(procfs, keep_open)
        self._identities: dict[int, Identity] = {}
        self._last: dict[int, bytes] = {}  # each stat file as the last scan read it

    def close(self) -> None:
        """Close the stat files kept open."""
        self.files.close()

    def scan(self, previous: dict[int, ProcessSample] | None) -> dict[int, ProcessSample]:
        """Every process alive now, by pid.

        ``cpu_delta`` is the CPU time since ``previous`` (the last scan's result): all
        of a process's time if it is new since then (it started in between), and 0 for
        every process when ``previous`` is None (the first scan only primes).
        """
        self.files.begin()
        try:
            return self._scan(previous)
        finally:
            self.files.end()

    def _scan(self, previous: dict[int, ProcessSample] | None) -> dict[int, ProcessSample]:
        # One flat loop on purpose: it runs for every process every tick, and a
        # function call per step would cost more than the step.
        known = self._identities
        seen: dict[int, Identity] = {}
        samples: dict[int, ProcessSample] = {}
        last = self._last if previous is not None else {}
        texts: dict[int, bytes] = {}
        read = self.files.read
        hz = float(self.clock_ticks)
        for name in os.listdir(self.procfs):
            if not name.isdigit():
                continue
            pid = int(name)
            data = read(pid, name)
            if data == last.get(pid):  # not one field moved: it did not run (most do not)
                before = previous[pid]  # type: ignore[index]
                same = seen[pid] = known[pid]
                samples[pid] = ProcessSample(
                    pid,
                    before.start_ticks,
                    same.comm,
                    same.exe,
                    same.workload,
                    before.cpu_seconds,
                    0.0,
                )
                texts[pid] = data
                continue
            end = data.rfind(b")")
            if end < 0:
                continue  # vanished (empty read) or not a stat file
            fields = data[end + 2 :].split(b" ", _STARTTIME + 1)
            if len(fields) <= _STARTTIME:
                continue
            start_ticks = int(fields[_STARTTIME])
            identity = known.get(pid)
            if (
                identity is None
                or identity.start_ticks != start_ticks
                or not (  # same pid and comm, compared without a copy
                    identity.kernel
                    or (len(identity.head) == end + 1 and data.startswith(identity.head))
                )
            ):
                identity = self._identify(name, data, end, start_ticks, fields)
                if identity is None:
                    continue
            seen[pid] = identity
            cpu = (int(fields[_UTIME]) + int(fields[_STIME])) / hz
            if previous is None:
                delta = 0.0
            else:
                before = previous.get(pid)
                if before is None or before.start_ticks != start_ticks:
                    delta = cpu  # started during the interval
                else:
                    delta = cpu - before.cpu_seconds
                    if delta < 0.0:
                        delta = 0.0
            samples[pid] = ProcessSample(
                pid, start_ticks, identity.comm, identity.exe, identity.workload, cpu, delta
            )
            texts[pid] = data
        self._identities = seen
        self._last = texts
        return samples

    def _identify(
        self, name: str, data: bytes, end: int, start_ticks: int, fields: list[bytes]
    ) -> Identity | None:
        """Read exe and cgroup of a process seen for the first time (or after an exec)."""
        base = f"{self.procfs}/{name}"
        try:
            cgroup = read_small(base + "/cgroup", strict=True)
        except OSError:  # out of descriptors: one kept stat file makes room
            cgroup = read_small(base + "/cgroup") if self.files.give_back_one() else b""
        if not cgroup:
            return None  # gone since its stat was read
        kernel = bool(int(fields[_FLAGS]) & PF_KTHREAD)
        return Identity(
            start_ticks=start_ticks,
            head=data[: end + 1],
            comm=data[data.find(b"(") + 1 : end].decode("utf-8", "replace"),
            exe="" if kernel else read_exe(base + "/exe"),
            workload=read_workload(cgroup),
            kernel=kernel,
        )


def read_workload(cgroup: bytes) -> Workload:
    """The workload of a process from the bytes of its cgroup file."""
    return parse_cgroup(cgroup.decode("utf-8", "replace"))


def read_small(path: str, strict: bool = False) -> bytes:
    """The whole content of a small procfs file; ``b""`` when it cannot be read.

    Unreadable means gone (ENOENT, ESRCH), not permitted, or a race with the exit
    of the process; every case means the same to a scan: skip it. With ``strict``,
    running out of descriptors (EMFILE) raises instead: the caller can make room.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        if strict and err.errno == errno.EMFILE:
            raise
        return b""
    try:
        chunks = [os.read(fd, _STAT_SIZE)]
        while len(chunks[-1]) == _STAT_SIZE:  # a v1 cgroup file with long paths
            chunks.append(os.read(fd, _STAT_SIZE))
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


def read_exe(path: str) -> str:
    """Target of an ``exe`` link; ``""`` for kernel threads, zombies and, unless root or
    CAP_SYS_PTRACE, other users' processes."""
    try:
        return os.readlink(path)
    except OSError:
        return ""


def fd_budget() -> int:
    """How many stat files may stay open: the soft RLIMIT_NOFILE less a reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return FD_WANTED
    return max(soft - FD_RESERVE, 0)


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE towards FD_WANTED, as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FD_WANTED if hard == resource.RLIM_INFINITY else min(FD_WANTED, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

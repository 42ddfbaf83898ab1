"""Node CPU usage from /proc/stat, the ratio Kepler splits active and idle energy with.

ratio = (total - idle - iowait) / total over the deltas of the aggregate ``cpu``
line between two reads. guest and guest_nice are already counted in user and
nice, so they are left out of the total.
"""

from __future__ import annotations

import errno
import os
import resource


class StatError(Exception):
    """/proc/stat is missing, unreadable or not in the expected format.

    ``out_of_descriptors`` tells an agent that ran out of file descriptors (EMFILE,
    ENFILE) apart from a procfs that is not where it should be.
    """

    def __init__(self, message: str, out_of_descriptors: bool = False) -> None:
        super().__init__(message)
        self.out_of_descriptors = out_of_descriptors


def start_error(err: StatError) -> str:
    """The one-line reason a receiver gives when /proc/stat fails at start."""
    if err.out_of_descriptors:
        return str(err)
    return f"{err} (host.procfs must be where procfs is mounted)"


def _descriptors_detail() -> str:
    """What ran out: this process's soft RLIMIT_NOFILE (counting the open ones would
    itself need a descriptor)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (
        f"this process has all {soft} file descriptors of its soft RLIMIT_NOFILE open "
        "(raise the limit, or set keep_open: false on the procfs reader)"
    )


def read_cpu_times(path: str) -> tuple[int, int]:
    """Return (busy, total) jiffies of the aggregate ``cpu`` line of ``path``."""
    return _busy_total(read_cpu_line(path))


def _busy_total(values: list[int]) -> tuple[int, int]:
    """(busy, total) of the fields of a ``cpu`` line: busy is all but idle and iowait."""
    total = sum(values)
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return total - idle, total


def read_cpu_line(path: str) -> list[int]:
    """The first eight fields of the aggregate ``cpu`` line of ``path`` (user, nice,
    system, idle, iowait, irq, softirq, steal), in clock ticks."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            head = os.read(fd, 512)
        finally:
            os.close(fd)
    except OSError as err:
        if err.errno in (errno.EMFILE, errno.ENFILE):
            detail = (
                _descriptors_detail()
                if err.errno == errno.EMFILE
                else "the system's file table is full (fs.file-max)"
            )
            raise StatError(f"cannot read {path}: {err.strerror}: {detail}", True) from None
        raise StatError(f"cannot read {path}: {err.strerror}") from None
    line = head.split(b"\n", 1)[0]
    fields = line.split()
    if len(fields) < 5 or fields[0] != b"cpu":
        raise StatError(f"{path}: first line is not the aggregate 'cpu' line: {line[:80]!r}")
    try:
        return [int(v) for v in fields[1:9]]
    except ValueError:
        raise StatError(f"{path}: non-numeric field in {line[:80]!r}") from None


class UsageRatio:
    """Tracks /proc/stat between calls; ``update()`` gives the ratio of the last interval."""

    def __init__(self, procfs: str) -> None:
        self.path = os.path.join(procfs, "stat")
        self._prev: tuple[int, int, int] | None = None
        self._tick = os.sysconf("SC_CLK_TCK")
        #: busy CPU seconds of the whole node in the last interval (None before two reads)
        self.busy_seconds: float | None = None
        #: CPU seconds the node's tasks ran in the last interval (user, nice and system:
        #: what the processes' utime and stime add up to, without interrupts and steal)
        self.task_seconds: float | None = None

    def update(self) -> float | None:
        """The busy ratio since the previous call, in [0, 1]; None on the first call."""
        values = read_cpu_line(self.path)
        busy, total = _busy_total(values)
        tasks = values[0] + values[1] + values[2]
        prev, self._prev = self._prev, (busy, total, tasks)
        if prev is None:
            return None
        d_total = total - prev[1]
        d_busy = busy - prev[0]
        self.busy_seconds = max(d_busy, 0) / self._tick
        self.task_seconds = max(tasks - prev[2], 0) / self._tick
        if d_total <= 0:
            return 0.0
        return min(max(d_busy / d_total, 0.0), 1.0)

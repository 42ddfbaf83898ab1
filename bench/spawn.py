"""Spawn N real, sleeping processes cheaply, and reap them all afterwards.

    with SleepingProcesses(5000) as pids:
        ...  # 5,000 live processes under /proc

A small helper interpreter (``python -S``: no site packages) forks the children;
each child only waits in ``pause()``, so it shares nearly all its memory with the
helper (copy-on-write): 5,000 of them take about a few hundred MiB, mostly page
tables. The helper waits for its stdin to close, then kills and reaps its
children. Every child also asks the kernel to kill it when the helper dies
(PR_SET_PDEATHSIG), so nothing is left behind even if this process is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import TracebackType

from otel_kepler.receivers.procfs.activity import cgroup_mounts

#: The helper's program. Kept minimal: every byte it imports is in every child.
_HELPER = r"""
import ctypes, os, signal, sys
prctl = ctypes.CDLL(None, use_errno=True).prctl
PR_SET_PDEATHSIG = 1
helper = os.getpid()
children = []
try:
    for _ in range(int(sys.argv[1])):
        pid = os.fork()
        if pid == 0:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != helper:
                os._exit(0)
            while True:
                signal.pause()
        children.append(pid)
    sys.stdout.write(" ".join(map(str, children)) + "\n")
    sys.stdout.flush()
    sys.stdin.read()
finally:
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    for pid in children:
        os.waitpid(pid, 0)
"""


class SleepingProcesses:
    """Context manager giving the pids of ``count`` live, sleeping processes."""

    def __init__(self, count: int, timeout: float = 120.0) -> None:
        self.count = count
        self.timeout = timeout
        self.pids: list[int] = []
        self._helper: subprocess.Popen[str] | None = None

    def __enter__(self) -> list[int]:
        helper = subprocess.Popen(
            [sys.executable, "-S", "-c", _HELPER, str(self.count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: one killpg reaches all
        )
        self._helper = helper
        assert helper.stdout is not None
        line = helper.stdout.readline()
        self.pids = [int(pid) for pid in line.split()]
        if len(self.pids) != self.count:
            self.close()
            raise RuntimeError(f"spawned {len(self.pids)} of {self.count} processes")
        return self.pids

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Kill and reap every child (the helper does it when its stdin closes)."""
        helper, self._helper = self._helper, None
        if helper is None:
            return
        assert helper.stdin is not None
        helper.stdin.close()
        try:
            helper.wait(self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(helper.pid, signal.SIGKILL)
            helper.wait()
        if helper.stdout is not None:
            helper.stdout.close()


class InContainers:
    """Move ``pids`` into ``count`` cgroups named like docker containers (as root), as
    the processes of a node are spread over its containers; moved back and removed on
    exit. The v1 cpuacct hierarchy where there is one (it accounts CPU time there), else
    the v2 one. Without root or a hierarchy it does nothing (``self.count`` is 0)."""

    def __init__(self, pids: list[int], count: int) -> None:
        self.pids = pids
        self.count = count if os.geteuid() == 0 else 0
        v2, cpuacct = cgroup_mounts(v1="cpuacct")
        self.mount = (cpuacct or v2) if self.count else None
        if self.mount is None:
            self.count = 0
        self.top = (self.mount or "") + f"/otel-kepler-bench-{os.getpid()}"

    def __enter__(self) -> InContainers:
        if not self.count:
            return self
        os.mkdir(self.top)
        os.mkdir(self.top + "/docker")
        for index in range(self.count):
            os.mkdir(f"{self.top}/docker/{index:064x}")
        for index, pid in enumerate(self.pids):
            _move(pid, f"{self.top}/docker/{index % self.count:064x}")
        return self

    def __exit__(self, *_: object) -> None:
        if not self.count:
            return
        for pid in self.pids:
            _move(pid, self.mount or "")
        for index in range(self.count):
            os.rmdir(f"{self.top}/docker/{index:064x}")
        os.rmdir(self.top + "/docker")
        os.rmdir(self.top)


def _move(pid: int, cgroup: str) -> None:
    try:
        with open(cgroup + "/cgroup.procs", "w") as procs:
            procs.write(str(pid))
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    import time

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    began = time.perf_counter()
    with SleepingProcesses(n) as spawned:
        took = time.perf_counter() - began
        print(f"{len(spawned)} processes in {took:.2f} s")
    print(f"reaped in {time.perf_counter() - began - took:.2f} s")

"""procfs receiver: per-process CPU time and container ids from /proc."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Literal

from otel_kepler.component import (
    Availability,
    ComponentError,
    Factory,
    HostSettings,
    Receiver,
)
from otel_kepler.data import Contribution, ProcessSample

from .activity import ActivityConfig, ActivityReader, activity_doctor
from .containers import ContainerReader, ContainerScanError
from .reader import ProcessReader, raise_fd_limit, read_exe, read_small
from .stat import StatError, UsageRatio, read_cpu_times, start_error

__all__ = ["ActivityConfig", "ProcfsConfig", "ProcfsReceiver", "doctor", "factory"]

log = logging.getLogger(__name__)

Scan = Literal["auto", "processes", "containers"]


@dataclass
class ProcfsConfig:
    """Reads every process under host.procfs, kernel threads included.

    Kernel threads are included: their CPU time is part of the node's busy time, and
    leaving them out would hand their share of active energy to user processes.
    """

    scan: Scan = field(
        default="auto",
        metadata={
            "doc": "processes: read every process's stat file each tick; containers: "
            "read each container's CPU time from its cgroup instead (one file a container, "
            "not one a process), which serves the node, container and pod levels but not "
            "process or vm; auto: containers when no processor of this receiver's "
            "pipelines needs each process and the host's cgroups can be read, else processes"
        },
    )
    keep_open: bool = field(
        default=True,
        metadata={
            "doc": "keep each process's stat file open between ticks: about half the CPU "
            "time of a tick, for one file descriptor and about 4 KiB of kernel memory a "
            "process (the soft open-files limit is raised towards 65536 at start)"
        },
    )
    activity: ActivityConfig = field(
        default_factory=ActivityConfig,
        metadata={"doc": "storage and network activity per process, container and pod"},
    )


class ProcfsReceiver(Receiver):
    """Each tick: every process's CPU time since the last tick, and the node usage ratio.

    The first tick primes (every ``cpu_delta`` is 0, no usage ratio). A process first
    seen later started during the interval, so its whole CPU time is its delta. A pid
    whose starttime changed is a new process; the old one is reported in ``exited``,
    as are processes gone since the last tick, once, with their last sample and
    ``cpu_delta`` 0.
    """

    def __init__(
        self,
        procfs: str = "/proc",
        keep_open: bool = True,
        activity: ActivityConfig | None = None,
        sysfs: str = "/sys",
        scan: Scan = "auto",
    ) -> None:
        self.procfs = procfs
        self.scan = scan
        self._reader = ProcessReader(procfs, keep_open)
        self._activity_config = activity or ActivityConfig()
        self.activity = ActivityReader(procfs, self._activity_config, sysfs)
        self._sysfs = sysfs
        self._ratio = UsageRatio(procfs)
        self._previous: dict[int, ProcessSample] | None = None
        self._processes_needed = True
        #: reads container cgroups instead of processes (chosen at start)
        self.containers: ContainerReader | None = None

    def use_processes(self, needed: bool) -> None:
        self._processes_needed = needed

    def start(self) -> None:
        try:
            read_cpu_times(self._ratio.path)
        except StatError as err:
            raise ComponentError(start_error(err)) from None
        self.containers = self._container_reader()
        if self.containers is not None:
            # per-process io is of no use without processes; the containers' cgroups
            # and pods' namespaces are read through one process of each container
            self.activity.config = dataclasses.replace(self._activity_config, process_io=False)
        elif self._reader.files.keep_open:
            raise_fd_limit()

    def _container_reader(self) -> ContainerReader | None:
        """The container cgroup reader, where the config and the host allow it."""
        if self.scan == "processes" or (self.scan == "auto" and self._processes_needed):
            return None
        if self._processes_needed:
            raise ComponentError(
                "scan: containers reads no process, and a processor of this receiver's "
                "pipelines needs each one (attribution with level process or vm, "
                "k8sattributes with source downward_api): use scan: auto or processes"
            )
        reader = ContainerReader(self.procfs, self._sysfs)
        why = reader.unusable()
        if why is None:
            log.info(
                "reading each container's CPU time from its cgroup (under %s), not every "
                "process: no processor of this receiver's pipelines needs each process",
                " and ".join(m for m in (reader.v2_mount, reader.cpuacct_mount) if m),
            )
            return reader
        if self.scan == "containers":
            raise ComponentError(f"scan: containers: {why}")
        log.info("reading each process: %s", why)
        return None

    def collect(self) -> Contribution:
        previous = self._previous
        try:
            ratio = self._ratio.update()
        except StatError as err:
            raise ComponentError(str(err)) from None
        if self.containers is not None:
            try:
                processes = self.containers.scan(previous, self._ratio.task_seconds)
                members = self.containers.members
            except ContainerScanError as err:
                log.warning("%s: reading each process from now on", err)
                self.containers.close()
                self.containers = None
                previous = None  # the process scan starts afresh: this tick primes it
                self.activity.config = self._activity_config  # each process's io again
                if self._reader.files.keep_open:
                    raise_fd_limit()
        if self.containers is None:
            processes = members = self._reader.scan(previous)
        self._previous = processes
        container_io, pod_io = self.activity.read(members, previous is None)
        return Contribution(
            processes=processes,
            exited=_exited(previous, processes),
            cpu_usage_ratio=ratio,
            node_cpu_seconds=self._ratio.busy_seconds,
            container_io=container_io,
            pod_io=pod_io,
        )

    def shutdown(self) -> None:
        self._reader.close()
        self.activity.close()
        if self.containers is not None:
            self.containers.close()


def _exited(
    previous: dict[int, ProcessSample] | None, current: dict[int, ProcessSample]
) -> list[ProcessSample]:
    """Last samples of the processes of ``previous`` not alive in ``current``, delta 0."""
    if previous is None:
        return []
    gone = []
    for pid, before in previous.items():
        now = current.get(pid)
        if now is None or now.start_ticks != before.start_ticks:
            gone.append(dataclasses.replace(before, cpu_delta=0.0))
    return gone


CAP_SYS_PTRACE = 19


@dataclass
class _Survey:
    """What the doctor found readable among the processes of other users."""

    others: int = 0
    stat_denied: list[int] = field(default_factory=list)
    user_processes: int = 0
    exe_denied: list[int] = field(default_factory=list)


def doctor(host: HostSettings) -> Availability:
    """Whether /proc/stat, other users' stat files and exe links can be read."""
    procfs = host.procfs
    try:
        read_cpu_times(os.path.join(procfs, "stat"))
    except StatError as err:
        return Availability(False, f"{err}: no node CPU usage ratio")
    survey = _survey(procfs)
    if survey.others == 0:
        return Availability(
            False,
            f"no process of another user is visible under {procfs} (procfs mounted with "
            "hidepid=, or not the host's procfs): their CPU time would be missed",
        )
    if survey.stat_denied:
        return Availability(
            False,
            f"cannot read {procfs}/PID/stat of {len(survey.stat_denied)} processes of other "
            f"users (first: {procfs}/{survey.stat_denied[0]}/stat): procfs hidepid=?",
        )
    privileged = os.geteuid() == 0 or _has_capability(procfs, CAP_SYS_PTRACE)
    activity = activity_doctor(privileged, host.sysfs)
    if survey.exe_denied:
        return Availability(True, f"{_exe_detail(procfs, survey)}; {activity}")
    return Availability(
        True, f"{procfs}/stat, every process's stat and exe link readable; {activity}"
    )


def _survey(procfs: str) -> _Survey:
    """Read stat and exe of every process owned by another user (all of them as root)."""
    me = os.geteuid()
    survey = _Survey()
    try:
        names = os.listdir(procfs)
    except OSError:
        return survey
    for name in names:
        if not name.isdigit():
            continue
        base = f"{procfs}/{name}"
        try:
            if os.stat(base).st_uid == me and me != 0:
                continue
        except OSError:
            continue
        survey.others += 1
        if not read_small(base + "/stat"):
            survey.stat_denied.append(int(name))
        elif read_small(base + "/cmdline"):  # kernel threads have none, and no exe
            survey.user_processes += 1
            if not read_exe(base + "/exe"):
                survey.exe_denied.append(int(name))
    survey.stat_denied.sort()
    survey.exe_denied.sort()
    return survey


def _exe_detail(procfs: str, survey: _Survey) -> str:
    denied = len(survey.exe_denied)
    why = (
        "non-dumpable processes, or a security module, refuse it even with CAP_SYS_PTRACE"
        if _has_capability(procfs, CAP_SYS_PTRACE)
        else "needs root or CAP_SYS_PTRACE"
    )
    return (
        f"{procfs}/stat and every process's stat readable; the exe link of {denied} of "
        f"{survey.user_processes} user-space processes is not (first: "
        f"{procfs}/{survey.exe_denied[0]}/exe): {why}; their exe label stays empty"
    )


def _has_capability(procfs: str, bit: int) -> bool:
    """Whether this agent has capability ``bit`` in its effective set."""
    for line in read_small(f"{procfs}/self/status").splitlines():
        if line.startswith(b"CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def _create(name: str, config: ProcfsConfig, host: HostSettings) -> ProcfsReceiver:
    return ProcfsReceiver(host.procfs, config.keep_open, config.activity, host.sysfs, config.scan)


factory: Factory[ProcfsConfig, ProcfsReceiver] = Factory(
    type="procfs",
    description="Per-process CPU time, container and pod ids, and node CPU usage from /proc",
    config_class=ProcfsConfig,
    create=_create,
    doctor=doctor,
)

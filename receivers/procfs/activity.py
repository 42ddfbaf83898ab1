"""Storage and network activity per process, container and pod, without privilege.

Three sources, each read only where it can change the answer:

- ``/proc/PID/io`` (``read_bytes``, ``write_bytes``: what the process made the block
  layer read and write) of the processes that used CPU time in the interval (a process
  that did not run submitted no I/O), and of every process once every
  ``io_refresh_ticks``: /proc's CPU time moves in whole clock ticks, so a process can
  do a direct write of megabytes without its CPU time moving; the counters are
  cumulative, so such bytes are late, never lost (unless the process ends first). Reading
  every process every tick would double the cost of a tick. The file is readable for
  one's own processes, and for all with root or CAP_SYS_PTRACE; one found unreadable is
  not tried again for that process, which keeps -1 (not measured).
- block bytes per container from its cgroup: cgroup v2 ``io.stat`` (``rbytes``,
  ``wbytes``, summed over devices), or on hosts where the io controller lives in a v1
  ``blkio`` hierarchy, ``blkio.throttle.io_service_bytes`` (Read, Write). One small
  file per container a tick; where the file is is found once per container. The
  kernel charges buffered writes to whoever writes the page back (the v1 flusher is
  in the root cgroup), direct I/O to the container that issued it.
- network bytes per pod from its network namespace: the interface counters of
  ``/proc/PID/net/dev`` of one of its processes, summed over interfaces other than
  ``lo``. Namespaces are told apart by the inode of ``/proc/PID/ns/net`` (read once
  per process), so one file is read per pod network namespace; the host's namespace
  (that of pid 1) is not a pod's and is skipped. A container outside Kubernetes with
  a namespace of its own gets the counters at container level.

All values are counters as the kernel keeps them: the processor that sums them
(``processors/activity.py``) treats a counter that goes backwards as restarted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from otel_kepler.data import NO_WORKLOAD, IoCounters, ProcessSample
from otel_kepler.schema import ConfigError

from .reader import read_small

#: Where the block counters of a container are: (file, format) or None (none found).
_V2, _V1 = "io.stat", "blkio.throttle.io_service_bytes"


@dataclass
class ActivityConfig:
    """Which I/O activity the procfs reader measures (each costs a few reads a tick)."""

    process_io: bool = field(
        default=True,
        metadata={
            "doc": "read_bytes and write_bytes of each process that ran in the interval, "
            "from /proc/PID/io (other users' processes need root or CAP_SYS_PTRACE)"
        },
    )
    io_refresh_ticks: int = field(
        default=12,
        metadata={
            "doc": "every this many ticks, /proc/PID/io of every process is read, also "
            "of those whose CPU time did not move (a process can do I/O within one "
            "clock tick of CPU time)"
        },
    )
    block: bool = field(
        default=True,
        metadata={"doc": "block bytes per container from its cgroup (io.stat, or v1 blkio)"},
    )
    network: bool = field(
        default=True,
        metadata={
            "doc": "network bytes per pod from its network namespace's interfaces "
            "(/proc/PID/net/dev of one process per namespace, lo excluded)"
        },
    )

    def validate(self) -> None:
        if self.io_refresh_ticks < 1:
            raise ConfigError("io_refresh_ticks", f"must be 1 or more, got {self.io_refresh_ticks}")


def cgroup_mounts(
    mountinfo: str = "/proc/self/mountinfo", prefer: str = "", v1: str = "blkio"
) -> tuple[str | None, str | None]:
    """(cgroup2 mount, mount of the v1 hierarchy holding controller ``v1``) as this
    process sees them; those under ``prefer`` (host.sysfs) first: in a container,
    /sys/fs/cgroup is its own subtree."""
    v2: str | None = None
    found: str | None = None
    under = prefer.rstrip("/") + "/" if prefer else None
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as file:
            for line in file:
                left, _, right = line.partition(" - ")
                parts = right.split()
                if len(parts) < 3:
                    continue
                mount = left.split()[4].replace("\\040", " ")
                preferred = under is not None and mount.startswith(under)
                if parts[0] == "cgroup2" and (v2 is None or preferred):
                    v2 = mount
                elif parts[0] == "cgroup" and v1 in parts[2].split(","):
                    if found is None or preferred:
                        found = mount
    except OSError:
        pass
    return v2, found


def namespace_root(v2_mount: str | None) -> str | None:
    """Where the root of this agent's cgroup namespace is in the host's cgroup2
    hierarchy mounted at ``v2_mount`` ("/kubepods.slice/.../cri-containerd-ID.scope").

    In a container with a cgroup namespace of its own, /proc/PID/cgroup paths start from
    the container's cgroup (``/../../kubepods.slice/...``), and /sys/fs/cgroup is that
    cgroup; the host's hierarchy (under host.sysfs) has the same directory, with the
    same inode. Found by walking the host's hierarchy; None where it is not there.
    """
    if v2_mount is None:
        return None
    try:
        own = os.stat("/sys/fs/cgroup").st_ino
    except OSError:
        return None
    pending = [v2_mount]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.inode() == own:
                            return entry.path[len(v2_mount) :]
                        pending.append(entry.path)
        except OSError:
            continue
    return None


def parse_io_stat(data: bytes) -> tuple[int, int]:
    """(rbytes, wbytes) summed over the devices of a cgroup v2 io.stat."""
    read = write = 0
    for token in data.split():
        if token.startswith(b"rbytes="):
            read += int(token[7:])
        elif token.startswith(b"wbytes="):
            write += int(token[7:])
    return read, write


def parse_blkio(data: bytes) -> tuple[int, int]:
    """(Read, Write) bytes summed over the devices of blkio.throttle.io_service_bytes."""
    read = write = 0
    for line in data.splitlines():
        parts = line.split()
        if len(parts) == 3:
            if parts[1] == b"Read":
                read += int(parts[2])
            elif parts[1] == b"Write":
                write += int(parts[2])
    return read, write


def parse_net_dev(data: bytes) -> tuple[int, int]:
    """(received, sent) bytes summed over the interfaces of a net/dev file, lo excluded."""
    rx = tx = 0
    for line in data.splitlines()[2:]:
        name, _, values = line.partition(b":")
        if name.strip() == b"lo":
            continue
        fields = values.split()
        if len(fields) >= 16:
            rx += int(fields[0])
            tx += int(fields[8])
    return rx, tx


def parse_proc_io(data: bytes) -> tuple[int, int]:
    """(read_bytes, write_bytes) of a /proc/PID/io file; (-1, -1) if they are missing."""
    read = write = -1
    for line in data.splitlines():
        if line.startswith(b"read_bytes:"):
            read = int(line[11:])
        elif line.startswith(b"write_bytes:"):
            write = int(line[12:])
    return read, write


def _cgroup_paths(text: bytes) -> tuple[str | None, str | None]:
    """(v2 path, v1 blkio path) from the content of /proc/PID/cgroup."""
    v2: str | None = None
    blkio: str | None = None
    for line in text.decode("utf-8", "replace").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "blkio" in parts[1].split(","):
            blkio = parts[2]
    return v2, blkio


class ActivityReader:
    """Reads the activity of one tick's processes, caching what does not change."""

    def __init__(
        self,
        procfs: str = "/proc",
        config: ActivityConfig | None = None,
        sysfs: str = "/sys",
    ) -> None:
        self.procfs = procfs
        self.config = config or ActivityConfig()
        self.v2_mount, self.blkio_mount = cgroup_mounts(prefer=sysfs)
        self._io: dict[int, tuple[int, int, int]] = {}  # pid -> start_ticks, read, write
        self._ticks = 0
        self._block_files: dict[str, tuple[str, str] | None] = {}  # container -> file
        self._block_fds: dict[str, int] = {}  # container -> its file, open
        self._root: str | None = None  # where this agent's cgroup namespace starts, if asked
        self._netns: dict[int, tuple[int, str]] = {}  # pid -> start_ticks, netns
        self._host_netns: str | None = None

    def read(
        self, processes: dict[int, ProcessSample], first: bool
    ) -> tuple[dict[str, IoCounters], dict[str, IoCounters]]:
        """Fill each sample's read/write bytes; return (container I/O, pod I/O).

        ``first``: the first scan (every delta is 0): every process's io file is read.
        """
        if self.config.process_io:
            self._process_io(processes, first)
        containers: dict[str, IoCounters] = {}
        pods: dict[str, IoCounters] = {}
        if not (self.config.block or self.config.network):
            return containers, pods
        # one process per container is enough for both cgroup and namespace
        members: dict[str, int] = {}
        for pid, sample in processes.items():
            workload = sample.workload
            if workload is NO_WORKLOAD or not workload.container_id:
                continue
            members.setdefault(workload.container_id, pid)
        if self.config.block:
            self._block(members, containers)
        if self.config.network:
            self._network(processes, containers, pods)
        return containers, pods

    # -- per process --------------------------------------------------------------

    def _process_io(self, processes: dict[int, ProcessSample], first: bool) -> None:
        self._ticks += 1
        everyone = first or self._ticks % self.config.io_refresh_ticks == 0
        cache = self._io  # pid -> (start_ticks, read, write); -1: unreadable, not retried
        fresh: dict[int, tuple[int, int, int]] = {}
        prefix = self.procfs + "/"
        for pid, sample in processes.items():
            known = cache.get(pid)
            if known is not None and known[0] == sample.start_ticks:
                if known[1] < 0 or (sample.cpu_delta <= 0.0 and not everyone):
                    fresh[pid] = known
                    sample.read_bytes, sample.write_bytes = known[1], known[2]
                    continue
            read, write = parse_proc_io(read_small(f"{prefix}{pid}/io"))
            fresh[pid] = (sample.start_ticks, read, write)
            sample.read_bytes, sample.write_bytes = read, write
        self._io = fresh

    # -- per container ------------------------------------------------------------

    def _block_file(self, container: str, pid: int) -> tuple[str, str] | None:
        if container in self._block_files:
            return self._block_files[container]
        v2, blkio = _cgroup_paths(read_small(f"{self.procfs}/{pid}/cgroup"))
        found: tuple[str, str] | None = None
        if v2 is not None and self.v2_mount is not None:
            if v2.startswith("/.."):  # relative to this agent's own cgroup namespace
                if self._root is None:
                    self._root = namespace_root(self.v2_mount) or ""
                v2 = os.path.normpath(self._root + v2)
            path = os.path.join(self.v2_mount, v2.lstrip("/"), _V2)
            if os.path.exists(path):
                found = (path, _V2)
        if found is None and blkio is not None and self.blkio_mount is not None:
            path = os.path.join(self.blkio_mount, blkio.lstrip("/"), _V1)
            if os.path.exists(path):
                found = (path, _V1)
        if len(self._block_files) > 65536:
            self._block_files.clear()
        self._block_files[container] = found
        return found

    def _block(self, members: dict[str, int], out: dict[str, IoCounters]) -> None:
        fds = self._block_fds
        for container in fds.keys() - members.keys():
            os.close(fds.pop(container))
        for container, pid in members.items():
            where = self._block_file(container, pid)
            if where is None:
                continue
            data = self._read_block(container, where[0])
            if not data and not os.path.exists(where[0]):
                self._block_files.pop(container, None)  # the cgroup is gone: find it again
                continue
            read, write = parse_io_stat(data) if where[1] == _V2 else parse_blkio(data)
            counters = out.setdefault(container, IoCounters())
            counters.read_bytes, counters.write_bytes = read, write

    def _read_block(self, container: str, path: str) -> bytes:
        """The block counters file of a container, kept open between ticks."""
        fd = self._block_fds.get(container)
        if fd is not None:
            try:
                data = os.pread(fd, 65536, 0)
            except OSError:
                data = b""
            if data:
                return data
            os.close(self._block_fds.pop(container))  # removed: open it afresh, if there
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return b""
        try:
            data = os.pread(fd, 65536, 0)
        except OSError:
            data = b""
        if data:
            self._block_fds[container] = fd
        else:
            os.close(fd)
        return data

    def close(self) -> None:
        """Close the block counters files kept open."""
        for fd in self._block_fds.values():
            os.close(fd)
        self._block_fds = {}

    # -- per pod network namespace ------------------------------------------------

    def _netns_of(self, pid: int, start_ticks: int) -> str:
        known = self._netns.get(pid)
        if known is not None and known[0] == start_ticks:
            return known[1]
        try:
            netns = os.readlink(f"{self.procfs}/{pid}/ns/net")
        except OSError:
            netns = ""
        self._netns[pid] = (start_ticks, netns)
        return netns

    def _host(self) -> str:
        if self._host_netns is None:
            try:
                self._host_netns = os.readlink(f"{self.procfs}/1/ns/net")
            except OSError:
                try:
                    self._host_netns = os.readlink("/proc/self/ns/net")
                except OSError:
                    self._host_netns = ""
        return self._host_netns

    def _network(
        self,
        processes: dict[int, ProcessSample],
        containers: dict[str, IoCounters],
        pods: dict[str, IoCounters],
    ) -> None:
        host = self._host()
        # namespace -> (pid to read it through, pod uid or "", container ids)
        spaces: dict[str, tuple[int, set[str], set[str]]] = {}
        alive = self._netns
        for pid, sample in processes.items():
            workload = sample.workload
            if workload is NO_WORKLOAD:
                continue
            netns = self._netns_of(pid, sample.start_ticks)
            if not netns or netns == host:
                continue
            entry = spaces.get(netns)
            if entry is None:
                entry = (pid, set(), set())
                spaces[netns] = entry
            if workload.pod_id:
                entry[1].add(workload.pod_id)
            if workload.container_id:
                entry[2].add(workload.container_id)
        if len(alive) > 2 * len(processes) + 1024:  # forget pids long gone
            self._netns = {pid: alive[pid] for pid in processes if pid in alive}
        for pid, pod_ids, container_ids in spaces.values():
            data = read_small(f"{self.procfs}/{pid}/net/dev")
            if not data:
                continue
            rx, tx = parse_net_dev(data)
            if len(pod_ids) == 1:  # a pod's namespace: shared by all its containers
                counters = pods.setdefault(next(iter(pod_ids)), IoCounters())
            elif not pod_ids and len(container_ids) == 1:  # a container of its own
                counters = containers.setdefault(next(iter(container_ids)), IoCounters())
            else:
                continue  # shared by several pods (cannot be split) or none
            counters.rx_bytes, counters.tx_bytes = rx, tx


def activity_doctor(privileged: bool, sysfs: str = "/sys") -> str:
    """What I/O activity the procfs reader can measure here, and why not the rest.

    ``privileged``: root or CAP_SYS_PTRACE, which other users' io files and network
    namespace links need.
    """
    said = []
    why = "" if privileged else " (other users' need root or CAP_SYS_PTRACE)"
    said.append(f"process I/O from /proc/PID/io{why}")
    v2, blkio = cgroup_mounts(prefer=sysfs)
    controllers = read_small(f"{v2}/cgroup.controllers").split() if v2 else []
    if b"io" in controllers:
        said.append(f"block bytes per container from io.stat under {v2}")
    elif blkio is not None:
        said.append(
            f"block bytes per container from {blkio} (cgroup v1 blkio counts only on "
            "disks with a throttle rule; elsewhere the processes' bytes are summed)"
        )
    else:
        said.append("no io controller: block bytes per container summed from the processes")
    said.append(f"network bytes per pod from the pod network namespaces{why}")
    return "activity: " + ", ".join(said)

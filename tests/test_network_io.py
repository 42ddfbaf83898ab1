"""Network and block I/O per workload, with real traffic and real disk writes.

Network: two network namespaces joined by a veth pair (10.200.0.1 and 10.200.0.2, both
inside the namespaces: nothing leaves the machine), a sender and a receiver process in
kubepods-style cgroups of two pods, a known number of UDP bytes between them. Block: a
writer in a container cgroup doing direct I/O to a file. Both are measured by the
procfs receiver (no privilege: namespace counters, cgroup io.stat or blkio, /proc/PID/io)
and by the ebpf receiver (socket-buffer programs per cgroup, softirqs per process).

Then the ``other`` split of :mod:`otel_kepler.processors.activity`, on batches whose
truth is known.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from otel_kepler.component import HostSettings
from otel_kepler.data import (
    NO_WORKLOAD,
    Batch,
    Contribution,
    EnergyReading,
    IoCounters,
    ProcessSample,
    Workload,
    WorkloadEnergy,
    ZoneEnergy,
)
from otel_kepler.processors.activity import ActivityAccounting, OtherSplit, other_joules
from otel_kepler.processors.attribution import AttributionConfig, AttributionProcessor
from otel_kepler.receivers.ebpf import EbpfConfig, EbpfReceiver
from otel_kepler.receivers.ebpf import doctor as ebpf_doctor
from otel_kepler.receivers.procfs import ProcfsReceiver, doctor
from otel_kepler.receivers.procfs.activity import (
    ActivityConfig,
    cgroup_mounts,
    parse_blkio,
    parse_io_stat,
    parse_net_dev,
    parse_proc_io,
)
from otel_kepler.schema import ConfigError, decode
from tests.cgroups import cgroup_mount, remove_cgroups
from tests.conftest import need_root

#: bytes a UDP datagram adds to its payload: on the veth (Ethernet 14 + IPv4 20 + UDP 8)
#: and as a socket-buffer program sees it (IPv4 20 + UDP 8, no link header)
ON_WIRE = 42
AT_SOCKET = 28
PAYLOAD = 1200
DATAGRAMS = 3000  # 3.6 MB

# --------------------------------------------------------------------------- real parts


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Namespaces:
    sender: str
    receiver: str


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    """Two namespaces and a veth pair between them, deleted after the test."""
    need_root()
    tag = uuid.uuid4().hex[:6]
    pair = Namespaces(f"otelk-a-{tag}", f"otelk-b-{tag}")
    made: list[str] = []
    try:
        for name in (pair.sender, pair.receiver):
            ip("netns", "add", name)
            made.append(name)
            ip("netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            ip("-n", name, "link", "set", "lo", "up")
        ip("link", "add", f"otka{tag}", "type", "veth", "peer", "name", f"otkb{tag}")
        ip("link", "set", f"otka{tag}", "netns", pair.sender)
        ip("link", "set", f"otkb{tag}", "netns", pair.receiver)
        for name, address, dev in (
            (pair.sender, "10.200.0.1/24", f"otka{tag}"),
            (pair.receiver, "10.200.0.2/24", f"otkb{tag}"),
        ):
            ip("-n", name, "addr", "add", address, "dev", dev)
            ip("-n", name, "link", "set", dev, "up")
        yield pair
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    for name in made:
        assert not Path(f"/run/netns/{name}").exists()


@dataclass
class Pod:
    uid: str
    container: str
    leaves: list[Path]  # the container's cgroup in each hierarchy used


@pytest.fixture
def pods() -> Iterator[Callable[..., Pod]]:
    """Kubepods cgroups of new pods (v2, and v1 blkio where the io controller lives
    there), removed after the test. ``make(block)``: block also needs the io controller."""
    need_root()
    v2 = cgroup_mount("cgroup2", "")
    if v2 is None:
        pytest.fail("no cgroup2 hierarchy mounted (see /proc/self/mountinfo)")
    tag = uuid.uuid4().hex[:12]
    tops = [v2 / f"otel-kepler-io-test-{tag}"]
    blkio = cgroup_mount("cgroup", "blkio")
    if blkio is not None:
        tops.append(blkio / tops[0].name)
    v2_io = "io" in (v2 / "cgroup.controllers").read_text().split()

    def make(block: bool, disk_of: Path | None = None) -> Pod:
        uid = str(uuid.uuid4())
        container = uuid.uuid4().hex + uuid.uuid4().hex
        path = (
            "kubepods.slice/kubepods-besteffort.slice/"
            f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice/"
            f"cri-containerd-{container}.scope"
        )
        leaves = []
        for top in tops:
            leaf = top / path
            leaf.mkdir(parents=True)
            leaves.append(leaf)
        if block and v2_io:  # enable io from the root down to the container's parent
            parent = tops[0] / path
            chain = [v2, *reversed(list(parent.parents)[: len(parent.parents)])]
            for directory in [d for d in chain if d == v2 or v2 in d.parents and d != parent]:
                control = directory / "cgroup.subtree_control"
                if "io" not in control.read_text().split():
                    control.write_text("+io")
        if block and not v2_io and blkio is None:
            pytest.fail("no io controller: neither cgroup2 io nor a v1 blkio hierarchy")
        if block and not v2_io and disk_of is not None:
            # v1 blkio counts bytes only on disks with a throttle rule (recent kernels
            # skip the throttle layer otherwise): a rule no writer can reach
            for kind in ("read", "write"):
                (leaves[-1] / f"blkio.throttle.{kind}_bps_device").write_text(
                    f"{disk(disk_of)} {1 << 50}"
                )
        return Pod(uid, container, leaves)

    yield make
    for top in tops:
        remove_cgroups(top)
        assert not top.exists(), f"{top} left behind"


def disk(path: Path) -> str:
    """major:minor of the whole disk that holds ``path``."""
    dev = os.stat(path).st_dev
    node = Path(os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"))
    if (node / "partition").exists():
        node = node.parent
    return (node / "dev").read_text().strip()


@dataclass
class Child:
    process: subprocess.Popen[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def say(self, line: str) -> str:
        """Send a line, return the child's answer."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()


@pytest.fixture
def started() -> Iterator[Callable[[list[str], str, Pod], Child]]:
    """Start a python child (optionally in a namespace), move it into a pod's container
    cgroup, then let it go on; killed and reaped after the test."""
    children: list[subprocess.Popen[str]] = []

    def start(prefix: list[str], code: str, pod: Pod) -> Child:
        process = subprocess.Popen(
            [*prefix, sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(process)
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        for leaf in pod.leaves:
            (leaf / "cgroup.procs").write_text(str(process.pid))
        return Child(process)

    yield start
    for process in children:
        if process.poll() is None:
            process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture(params=["procfs", "ebpf"])
def receiver(request: pytest.FixtureRequest) -> Iterator[ProcfsReceiver | EbpfReceiver]:
    """The no-privilege path (procfs) and the eBPF path, started and shut down."""
    need_root()
    made: ProcfsReceiver | EbpfReceiver
    if request.param == "procfs":
        made = ProcfsReceiver()
    else:
        made = EbpfReceiver("ebpf", EbpfConfig(fallback="none"), HostSettings())
    made.start()
    try:
        if isinstance(made, EbpfReceiver):
            assert made.io is not None and made.io.network, made.io_off
        yield made
    finally:
        made.shutdown()


# The receiver binds, then waits: counts what arrives until "END", answers with the count.
SERVER = """
import socket, sys
print("ready", flush=True)
sys.stdin.readline()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("10.200.0.2", 9000))
print("bound", flush=True)
count = size = 0
while True:
    data = s.recv(65536)
    if data == b"END":
        break
    count += 1
    size += len(data)
print(count, size, flush=True)
sys.stdin.readline()
"""

# The sender: DATAGRAMS datagrams of PAYLOAD bytes, paced, then "END"; says what it sent.
SENDER = f"""
import socket, sys, time
print("ready", flush=True)
sys.stdin.readline()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("bound", flush=True)
sys.stdin.readline()
payload = b"x" * {PAYLOAD}
for n in range({DATAGRAMS}):
    s.sendto(payload, ("10.200.0.2", 9000))
    if n % 50 == 49:
        time.sleep(0.001)
s.sendto(b"END", ("10.200.0.2", 9000))
print({DATAGRAMS}, {DATAGRAMS * PAYLOAD}, flush=True)
sys.stdin.readline()
"""


def network_of(part: Contribution, pod: Pod, ebpf: bool) -> IoCounters:
    """The pod's network counters: its namespace's (procfs), its container's cgroup's
    (eBPF: a cgroup that has not sent or received yet has none: 0)."""
    if ebpf:
        assert pod.uid not in part.pod_io  # pods sum their containers' deltas
        return part.container_io.get(pod.container, IoCounters(0, 0))
    counters = part.pod_io.get(pod.uid)
    assert counters is not None, f"no network counters for pod {pod.uid}: {part.pod_io}"
    return counters


def test_network_bytes_per_pod_within_2_percent(
    namespaces: Namespaces,
    pods: Callable[..., Pod],
    started: Callable[[list[str], str, Pod], Child],
    receiver: ProcfsReceiver | EbpfReceiver,
) -> None:
    ebpf = isinstance(receiver, EbpfReceiver)
    sender_pod, receiver_pod = pods(False), pods(False)
    server = started(["ip", "netns", "exec", namespaces.receiver], SERVER, receiver_pod)
    sender = started(["ip", "netns", "exec", namespaces.sender], SENDER, sender_pod)
    assert server.say("go") == "bound"  # sockets made in their cgroups
    assert sender.say("go") == "bound"
    receiver.collect()
    before = receiver.collect()
    sent_count, sent_bytes = map(int, sender.say("send").split())
    got_count, got_bytes = map(int, server.process.stdout.readline().split())  # type: ignore[union-attr]
    after = receiver.collect()

    per_datagram = AT_SOCKET if ebpf else ON_WIRE
    sent = sent_bytes + sent_count * per_datagram + len(b"END") + per_datagram
    got = got_bytes + got_count * per_datagram
    assert got_count >= 0.98 * sent_count, "the receiver lost datagrams: nothing to compare"
    tx = (
        network_of(after, sender_pod, ebpf).tx_bytes - network_of(before, sender_pod, ebpf).tx_bytes
    )
    rx = (
        network_of(after, receiver_pod, ebpf).rx_bytes
        - network_of(before, receiver_pod, ebpf).rx_bytes
    )
    assert tx == pytest.approx(sent, rel=0.02)
    assert rx == pytest.approx(got, rel=0.02)
    back = (
        network_of(after, receiver_pod, ebpf).tx_bytes
        - network_of(before, receiver_pod, ebpf).tx_bytes
    )
    assert 0 <= back < 0.01 * sent  # the receiver answered nothing but ARP

    if ebpf:  # softirqs were counted for the processes on the CPU when they ran
        samples = after.processes or {}
        irqs = {
            pid: (samples[pid].net_tx_irq, samples[pid].net_rx_irq)
            for pid in (sender.pid, server.pid)
        }
        assert irqs[sender.pid][1] > 0, irqs  # veth delivery: NET_RX in the sender's context
        assert sum(tx + rx for tx, rx in irqs.values()) >= irqs[sender.pid][1]
    server.say("bye")
    sender.say("bye")


# The writer: direct I/O (O_DIRECT) of BLOCKS aligned MiB, then reads them back the same
# way; buffered writes and fsync where the file system refuses O_DIRECT.
MIB = 1 << 20
BLOCKS = 16
WRITER = f"""
import mmap, os, sys
print("ready", flush=True)
path = sys.stdin.readline().strip()
buf = mmap.mmap(-1, {MIB})
buf.write(b"k" * {MIB})
try:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600)
    direct = True
except OSError:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    direct = False
for _ in range({BLOCKS}):
    os.write(fd, buf)
os.fsync(fd)
os.close(fd)
if direct:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    while os.readv(fd, [buf]) > 0:
        pass
    os.close(fd)
print("direct" if direct else "buffered", flush=True)
sys.stdin.readline()
"""


def test_block_bytes_per_container_within_5_percent(
    tmp_path: Path,
    pods: Callable[..., Pod],
    started: Callable[[list[str], str, Pod], Child],
    receiver: ProcfsReceiver | EbpfReceiver,
) -> None:
    pod = pods(True, tmp_path)
    writer = started([], WRITER, pod)
    receiver.collect()
    before = receiver.collect()
    mode = writer.say(str(tmp_path / "data"))
    after = receiver.collect()
    size = BLOCKS * MIB

    then, now = before.container_io[pod.container], after.container_io[pod.container]
    assert now.write_bytes - then.write_bytes == pytest.approx(size, rel=0.05)
    if mode == "direct":
        assert now.read_bytes - then.read_bytes == pytest.approx(size, rel=0.05)
    # /proc/PID/io is read for processes whose CPU time moved, and for all every
    # io_refresh_ticks: the writer's bytes may come a few ticks late, never lost
    for _ in range(ActivityConfig().io_refresh_ticks):
        after = receiver.collect()
    process_then = (before.processes or {})[writer.pid]
    process_now = (after.processes or {})[writer.pid]
    assert process_now.write_bytes - process_then.write_bytes == pytest.approx(size, rel=0.05)
    if mode == "direct":
        assert process_now.read_bytes - process_then.read_bytes == pytest.approx(size, rel=0.05)
    writer.say("bye")


def test_doctor_says_which_activity_is_measured() -> None:
    found = doctor(HostSettings())
    assert found.available, found.detail
    activity = found.detail.split("; activity: ", 1)[1]
    v2 = cgroup_mount("cgroup2", "")
    assert v2 is not None
    if "io" in (v2 / "cgroup.controllers").read_text().split():
        assert f"block bytes per container from io.stat under {v2}" in activity
    else:
        assert "cgroup v1 blkio counts only on disks with a throttle rule" in activity
    assert activity.startswith("process I/O from /proc/PID/io, ")  # root: everyone's
    assert activity.endswith("network bytes per pod from the pod network namespaces")
    ebpf_found = ebpf_doctor(HostSettings())
    assert ebpf_found.available, ebpf_found.detail
    assert ebpf_found.detail.endswith(
        f"; softirqs per process; network bytes per cgroup from socket-buffer programs on {v2}"
    )


# --------------------------------------------------------------------------- parsers


def test_parsers_read_the_kernel_formats() -> None:
    assert parse_io_stat(
        b"8:0 rbytes=4096 wbytes=16777216 rios=1 wios=16 dbytes=0 dios=0\n"
        b"253:0 rbytes=100 wbytes=1 rios=1 wios=1 dbytes=0 dios=0\n"
    ) == (4196, 16777217)
    assert parse_blkio(
        b"8:0 Read 4096\n8:0 Write 16777216\n8:0 Sync 1\n8:0 Async 2\n8:0 Discard 0\n"
        b"8:0 Total 16781312\nTotal 16781312\n"
    ) == (4096, 16777216)
    net_dev = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets "
        "errs drop fifo colls carrier compressed\n"
        "    lo:  999999      10    0    0    0     0          0         0   999999      10 "
        "   0    0    0     0       0          0\n"
        "  eth0: 1000      5    0    0    0     0          0         0     2000      7 "
        "   0    0    0     0       0          0\n"
        "  eth1: 10      1    0    0    0     0          0         0     20      1 "
        "   0    0    0     0       0          0\n"
    )
    assert parse_net_dev(net_dev.encode()) == (1010, 2020)
    io = b"rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 512\nwrite_bytes: 1024\n"
    assert parse_proc_io(io + b"cancelled_write_bytes: 0\n") == (512, 1024)
    assert parse_proc_io(b"") == (-1, -1)


# --------------------------------------------------------------------------- accounting


def _sample(
    pid: int,
    cpu: float,
    workload: Workload = NO_WORKLOAD,
    read: int = -1,
    write: int = -1,
    net_rx_irq: int = 0,
) -> ProcessSample:
    return ProcessSample(
        pid,
        100,
        f"p{pid}",
        "",
        workload,
        0.0,
        cpu,
        read_bytes=read,
        write_bytes=write,
        net_rx_irq=net_rx_irq,
    )


def _entries(batch: Batch) -> dict[tuple[str, str], WorkloadEnergy]:
    """What attribution would emit: one entry per process, container and pod."""
    out: dict[tuple[str, str], WorkloadEnergy] = {}
    for s in (*batch.processes.values(), *batch.exited):
        out[("process", str(s.pid))] = WorkloadEnergy("process", {"pid": str(s.pid)}, {}, {})
        w = s.workload
        if w.container_id:
            attrs = {"container_id": w.container_id}
            out[("container", w.container_id)] = WorkloadEnergy("container", attrs, {}, {})
        if w.pod_id:
            out[("pod", w.pod_id)] = WorkloadEnergy("pod", {"pod_id": w.pod_id}, {}, {})
    return out


def _tick(
    accounting: ActivityAccounting,
    processes: list[ProcessSample],
    other: float = 0.0,
    container_io: dict[str, IoCounters] | None = None,
    pod_io: dict[str, IoCounters] | None = None,
    kept: dict[tuple[str, str], WorkloadEnergy] | None = None,
) -> dict[tuple[str, str], WorkloadEnergy]:
    batch = Batch(0, 5.0, "n1", processes={s.pid: s for s in processes})
    batch.container_io = container_io or {}
    batch.pod_io = pod_io or {}
    entries = _entries(batch)
    if kept is not None:  # attribution keeps its entries from tick to tick
        for key, entry in entries.items():
            entries[key] = kept.setdefault(key, entry)
    batch.workloads = list(entries.values())
    zone = ZoneEnergy("platform", "other", "ipmi", None, other, other / 5.0, 0, 0, 0)
    accounting.process(batch, [zone])
    return entries


A = Workload(container_id="a" * 64, pod_id="pod-a")
B = Workload(container_id="b" * 64, pod_id="pod-b")


def test_counters_become_monotonic_totals_across_restarts() -> None:
    accounting = ActivityAccounting()
    kept: dict[tuple[str, str], WorkloadEnergy] = {}
    for rx, read in ((100, 1000), (300, 1500), (50, 200), (80, 300)):  # restarts: 50, 200
        io = {A.container_id: IoCounters(rx, rx * 2, read, read * 3)}
        out = _tick(accounting, [_sample(1, 0.1, A)], container_io=io, kept=kept)
    container = out[("container", A.container_id)].activity
    assert container["network_rx_bytes"] == 200 + 50 + 30  # the first reading primes
    assert container["network_tx_bytes"] == 2 * (200 + 50 + 30)
    assert container["block_read_bytes"] == 500 + 200 + 100
    assert container["block_write_bytes"] == 3 * (500 + 200 + 100)
    pod = out[("pod", "pod-a")].activity  # a pod sums its containers
    assert (pod["network_rx_bytes"], pod["block_read_bytes"]) == (280, 800)


def test_process_io_and_softirqs_add_up_to_containers_and_pods() -> None:
    accounting = ActivityAccounting()
    _tick(accounting, [_sample(1, 0.1, A, 0, 0), _sample(2, 0.1, A, 10, 10)])
    out = _tick(
        accounting,
        [_sample(1, 0.1, A, 4096, 8192, net_rx_irq=3), _sample(2, 0.1, A, 10, 10, 5)],
    )
    assert out[("process", "1")].activity == {
        "block_read_bytes": 4096,
        "block_write_bytes": 8192,
        "net_rx_irq": 3,
    }
    container = out[("container", A.container_id)].activity
    assert container == {"block_read_bytes": 4096, "block_write_bytes": 8192, "net_rx_irq": 8}
    assert out[("pod", "pod-a")].activity["net_rx_irq"] == 8
    # a process first seen after the first tick brings its whole counter
    later = _tick(accounting, [_sample(1, 0.1, A, 4096, 8192), _sample(3, 0.1, B, 7, 9)])
    assert later[("process", "3")].activity["block_write_bytes"] == 9


def test_other_is_split_by_the_weighted_mix_and_conserved() -> None:
    split = OtherSplit(enabled=True, cpu=0.7, network=0.2, block=0.1)
    accounting = ActivityAccounting(split)
    kept: dict[tuple[str, str], WorkloadEnergy] = {}
    procs = [_sample(1, 1.0, A, 0, 0), _sample(2, 0.0, B, 0, 0), _sample(3, 1.0)]
    pods = {"pod-a": IoCounters(0, 0), "pod-b": IoCounters(0, 0)}
    _tick(accounting, procs, 100.0, pod_io=pods, kept=kept)
    # pid 1: half the CPU; pid 2 (pod b): all the network; pid 3: the other CPU half
    # and all block bytes
    procs = [_sample(1, 1.0, A, 0, 0), _sample(2, 0.0, B, 0, 0), _sample(3, 1.0, read=0)]
    procs[2].read_bytes, procs[2].write_bytes = 1000, 1000
    pods = {"pod-a": IoCounters(0, 0), "pod-b": IoCounters(5000, 5000)}
    out = _tick(accounting, procs, 100.0, pod_io=pods, kept=kept)
    got = {pid: out[("process", str(pid))].other_joules for pid in (1, 2, 3)}
    # tick 1: no network nor block bytes: all 100 J by CPU time, 50 J to pids 1 and 3;
    # tick 2: CPU 70 J (35 each), network 20 J (pod b), block 10 J (pid 3's first bytes)
    assert got[1] == pytest.approx(50.0 + 35.0)
    assert got[2] == pytest.approx(20.0)
    assert got[3] == pytest.approx(50.0 + 35.0 + 10.0)
    assert sum(v or 0.0 for v in got.values()) == pytest.approx(200.0, abs=1e-9)
    assert out[("pod", "pod-b")].other_joules == pytest.approx(20.0)
    assert out[("process", "2")].other_watts == pytest.approx(20.0 / 5.0)


def test_other_is_conserved_over_random_ticks() -> None:
    rng = random.Random(7)
    accounting = ActivityAccounting(OtherSplit(enabled=True, cpu=0.5, network=0.3, block=0.2))
    kept: dict[tuple[str, str], WorkloadEnergy] = {}
    io = {w: [0, 0, 0, 0] for w in ("a", "b", "c")}
    pio = {w: [0, 0] for w in ("p0", "p1")}
    given = total = 0.0
    for _ in range(200):
        procs = []
        for pid in range(1, 9):  # the same processes throughout
            w = Workload(container_id=rng.choice("abc") * 64, pod_id=rng.choice(["p0", "p1"]))
            procs.append(_sample(pid, rng.choice([0.0, rng.random()]), w, rng.randint(0, 9), 0))
        for counters in io.values():
            for i in range(4):
                counters[i] = (
                    rng.randint(0, 100) if rng.random() < 0.05 else counters[i] + rng.randint(0, 50)
                )
        for counters in pio.values():
            counters[0] += rng.randint(0, 1000)
            counters[1] += rng.randint(0, 1000)
        other = rng.random() * 50
        before = {k: e.other_joules or 0.0 for k, e in kept.items()}
        unattributed = accounting.unattributed_joules
        _tick(
            accounting,
            procs,
            other,
            container_io={k * 64: IoCounters(-1, -1, *v[2:]) for k, v in io.items()},
            pod_io={k: IoCounters(*v) for k, v in pio.items()},
            kept=kept,
        )
        gained = {
            level: sum(
                (e.other_joules or 0.0) - before.get(k, 0.0)
                for k, e in kept.items()
                if k[0] == level
            )
            for level in ("process", "container", "pod")
        }
        left = accounting.unattributed_joules - unattributed
        # per tick: the processes' shares plus what nobody could take are the remainder
        assert gained["process"] + left == pytest.approx(other, abs=1e-9)
        assert gained["container"] == pytest.approx(gained["process"], abs=1e-9)
        assert gained["pod"] == pytest.approx(gained["process"], abs=1e-9)
        total += other
        given += gained["process"]
    assert given + accounting.unattributed_joules == pytest.approx(total, abs=1e-6)


def test_other_split_is_off_by_default_and_validated() -> None:
    accounting = ActivityAccounting()
    out = _tick(accounting, [_sample(1, 1.0)], 100.0)
    assert out[("process", "1")].other_joules is None
    with pytest.raises(ConfigError, match="must be 0 or more, got -1"):
        decode(OtherSplit, {"cpu": -1}, "processors.attribution.other_split")
    with pytest.raises(ConfigError, match="the weights cannot all be 0"):
        decode(
            OtherSplit,
            {"enabled": True, "cpu": 0, "network": 0, "block": 0},
            "processors.attribution.other_split",
        )


def test_activity_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"activity.io_refresh_ticks: must be 1 or more, got 0"):
        decode(ActivityConfig, {"io_refresh_ticks": 0}, "receivers.procfs.activity")


def test_cgroup_mounts_prefer_the_hosts(tmp_path: Path) -> None:
    """In a container, /sys/fs/cgroup is its own subtree; host.sysfs holds the host's."""
    info = tmp_path / "mountinfo"
    info.write_text(
        "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
        "31 25 0:27 / /sys/fs/cgroup/blkio rw - cgroup cgroup rw,blkio\n"
        "40 25 0:26 / /host/sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
        "41 25 0:27 / /host/sys/fs/cgroup/blkio rw - cgroup cgroup rw,blkio\n"
    )
    assert cgroup_mounts(str(info), prefer="/host/sys") == (
        "/host/sys/fs/cgroup",
        "/host/sys/fs/cgroup/blkio",
    )
    assert cgroup_mounts(str(info)) == ("/sys/fs/cgroup", "/sys/fs/cgroup/blkio")
    assert cgroup_mounts(str(tmp_path / "none")) == (None, None)


def test_other_comes_from_one_kind_of_platform_meter() -> None:
    def zone(source: str, joules: float, chassis: str = "") -> ZoneEnergy:
        attrs = {"chassis_id": chassis} if chassis else None
        return ZoneEnergy("platform", "other", source, attrs, joules, 0.0, 0, 0, 0)

    assert other_joules([zone("acpi", 40.0), zone("ipmi", 30.0)]) == 30.0  # not both
    assert other_joules([zone("ipmi", 30.0, "1"), zone("ipmi", 20.0, "2")]) == 50.0
    assert (
        other_joules(
            [zone("acpi", 40.0), ZoneEnergy("cpu", "package", "rapl", None, 9.0, 0, 0, 0, 0)]
        )
        == 40.0
    )
    assert other_joules([]) == 0.0


def test_attribution_splits_other_by_activity_and_conserves_it() -> None:
    """Through the attribution processor: RAPL package and an IPMI platform meter; zone
    other (platform less package) goes to the processes by the weighted mix, exactly."""
    config = decode(
        AttributionConfig,
        {
            "levels": ["node", "process", "container", "pod"],
            "idle": "usage_ratio",
            "persist_idle": False,
            "other_split": {"enabled": True, "cpu": 0.6, "network": 0.3, "block": 0.1},
        },
        "processors.attribution",
    )
    processor = AttributionProcessor(config, node_name="n1")
    rng = random.Random(3)
    net = {"pod-a": 0, "pod-b": 0}
    given_before = 0.0
    other_total = 0.0
    for n in range(40):
        procs = {
            pid: _sample(pid, rng.random() * 0.5, (A, B, NO_WORKLOAD)[pid % 3], n * pid, 0)
            for pid in range(1, 10)
        }
        for pod in net:
            net[pod] += rng.randint(0, 10_000)
        if n == 0:
            first = dict(net)  # the first tick primes the counters
        batch = Batch(time.time_ns(), 1.0, "n1", cpu_usage_ratio=0.5, processes=procs)
        batch.has_usage = True
        batch.pod_io = {pod: IoCounters(v, v // 2) for pod, v in net.items()}
        package, platform = 30.0 + rng.random() * 10, 80.0 + rng.random() * 20
        batch.energy = [
            EnergyReading("cpu", "package", "rapl", package),
            EnergyReading("platform", "platform", "ipmi", platform),
        ]
        processor.process(batch)
        other_total += platform - package
        by_level: dict[str, float] = {}
        for entry in batch.workloads:
            by_level[entry.level] = by_level.get(entry.level, 0.0) + (entry.other_joules or 0.0)
        (zone,) = [z for z in batch.node_zones if z.zone == "other"]
        assert zone.total_joules == pytest.approx(other_total, rel=1e-12)
        given = by_level["process"] + processor.activity.unattributed_joules
        assert given == pytest.approx(other_total, rel=1e-9)  # conserved, every tick
        assert given > given_before
        given_before = given
        # containers and pods sum their processes (a third of them are host processes)
        in_pods = sum(
            e.other_joules or 0.0
            for e in batch.workloads
            if e.level == "process" and e.workload.pod_id
        )
        assert by_level["container"] == pytest.approx(in_pods, rel=1e-9)
        assert by_level["pod"] == pytest.approx(in_pods, rel=1e-9)
    pod_a = next(
        e for e in batch.workloads if e.level == "pod" and e.attributes["pod_id"] == "pod-a"
    )
    assert pod_a.activity["network_rx_bytes"] == net["pod-a"] - first["pod-a"]
    assert pod_a.activity["network_tx_bytes"] == net["pod-a"] // 2 - first["pod-a"] // 2

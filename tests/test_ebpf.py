"""The ebpf receiver: its bookkeeping, then the real program on the running kernel.

Tests of the real program need root and a kernel where the program loads (bcc, kernel
headers, tracefs: scripts/setup-ebpf.sh prepares them). Where it cannot load they fail
with the reason instead of skipping; the fallback tests run everywhere.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from otel_kepler.component import ComponentError, HostSettings
from otel_kepler.data import NO_WORKLOAD, Contribution, ProcessSample, Workload
from otel_kepler.receivers import ebpf
from otel_kepler.receivers.ebpf import EbpfConfig, EbpfReceiver, doctor, factory, io_program, loader
from otel_kepler.receivers.ebpf.cgroups import CgroupResolver, cgroup2_mount
from otel_kepler.receivers.ebpf.host import ProcHost
from otel_kepler.receivers.ebpf.loader import Drained, KernelPaths
from otel_kepler.receivers.ebpf.program import EXECED, EXITED
from otel_kepler.receivers.ebpf.tracker import Identity, Tracker
from otel_kepler.receivers.ebpf.workloads import WorkloadSums
from otel_kepler.schema import ConfigError, decode
from tests.cgroups import cgroup_mount, remove_cgroups
from tests.children import BURN, spawn
from tests.conftest import need_root

HZ = os.sysconf("SC_CLK_TCK")
ID = "9e2b4c1d0a3f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5"
UID = str(uuid.uuid4())
MS = 1_000_000  # ns

# =========================================================================== bookkeeping


class FakeHost:
    """A machine for the tracker: processes and threads by id, cgroup ids by path."""

    def __init__(self) -> None:
        self.procs: dict[int, Identity] = {}
        self.threads: dict[int, int] = {}  # tid -> tgid
        self.cgroups: dict[int, Workload] = {}
        self.identified: list[int] = []

    def identify(self, pid: int) -> Identity | None:
        self.identified.append(pid)
        return self.procs.get(pid)

    def tgid_of(self, tid: int) -> int | None:
        return self.threads.get(tid, tid if tid in self.procs else None)

    def workload(self, cgroup_id: int, pid: int | None, fallback: Workload) -> Workload:
        return self.cgroups.get(cgroup_id, fallback)

    def pids(self) -> set[int]:
        return set(self.procs)

    def next_tick(self) -> None:
        pass


def drained(
    now: int,
    usage: dict[int, int] | None = None,
    running: list[tuple[int, int]] | None = None,
    events: dict[int, tuple[int, str]] | None = None,
    cgroup: int = 0,
    dropped_events: int = 0,
) -> Drained:
    """One tick's drain: usage as tgid -> ns, events as tgid -> (flags, comm)."""
    return Drained(
        now_ns=now,
        running=running or [(0, 0)],
        usage=[(t, (ns, cgroup, 0, 0, 0)) for t, ns in (usage or {}).items()],
        events=[(t, (cgroup, f, 0, c.encode())) for t, (f, c) in (events or {}).items()],
        dropped_usage=0,
        dropped_events=dropped_events,
    )


def ident(comm: str, start: int = 100) -> Identity:
    return Identity(start, comm, f"/usr/bin/{comm}", NO_WORKLOAD)


@pytest.fixture
def host() -> FakeHost:
    fake = FakeHost()
    fake.procs = {10: ident("idle"), 20: ident("busy")}
    return fake


@pytest.fixture
def tracker(host: FakeHost) -> Tracker:
    t = Tracker(host)
    t.seed(
        {
            10: ProcessSample(10, 100, "idle", "/usr/bin/idle", NO_WORKLOAD, 1.0, 0.0),
            20: ProcessSample(20, 100, "busy", "/usr/bin/busy", NO_WORKLOAD, 2.0, 0.0),
        }
    )
    return t


def test_only_processes_that_ran_get_new_samples(tracker: Tracker) -> None:
    first, _ = tracker.update(drained(1000 * MS, {20: 300 * MS}))
    second, _ = tracker.update(drained(2000 * MS))
    third, _ = tracker.update(drained(3000 * MS))
    assert set(first) == set(second) == {10, 20}
    assert (first[20].cpu_delta, first[20].cpu_seconds) == (0.3, 2.3)
    assert (second[20].cpu_delta, second[20].cpu_seconds) == (0.0, 2.3)
    assert first[10] is second[10] is third[10]  # idle: the same sample object every tick
    assert second[20] is third[20]
    assert first[10].cpu_seconds == 1.0


def test_running_task_is_credited_then_taken_back_exactly(tracker: Tracker) -> None:
    """A task on a CPU since 500 ms: credited at each tick, then charged in full."""
    ticks = [
        tracker.update(drained(1000 * MS, running=[(500 * MS, 20)]))[0],
        tracker.update(drained(2000 * MS, running=[(500 * MS, 20)]))[0],
        # it left the CPU at 2500 ms: the program charged 2000 ms in one slice
        tracker.update(drained(3000 * MS, {20: 2000 * MS}, running=[(2500 * MS, 0)]))[0],
    ]
    assert [t[20].cpu_delta for t in ticks] == [0.5, 1.0, 0.5]
    assert ticks[-1][20].cpu_seconds == pytest.approx(4.0)


def test_take_back_before_the_charge_is_carried_not_lost(tracker: Tracker) -> None:
    """The slice ended just after the flip: its charge comes one tick after the take-back."""
    a = tracker.update(drained(1000 * MS, running=[(500 * MS, 20)]))[0]
    b = tracker.update(drained(2000 * MS, running=[(1999 * MS, 10)]))[0]
    c = tracker.update(drained(3000 * MS, {20: 1499 * MS, 10: 1001 * MS}))[0]
    assert a[20].cpu_delta == 0.5
    assert b[20].cpu_delta == 0.0  # 500 ms taken back, nothing charged yet: no negative
    assert b[10].cpu_delta == pytest.approx(0.001)
    assert c[20].cpu_delta == pytest.approx(0.999)  # 1499 less the 500 carried
    assert c[10].cpu_delta == pytest.approx(1.0)  # 1001 less the 1 credited
    assert c[20].cpu_seconds == pytest.approx(2.0 + 1.499)
    assert c[10].cpu_seconds == pytest.approx(1.0 + 1.001)


def test_thread_on_a_cpu_is_credited_to_its_group(tracker: Tracker, host: FakeHost) -> None:
    host.threads[25] = 20
    processes, _ = tracker.update(drained(1000 * MS, running=[(800 * MS, 25), (900 * MS, 0)]))
    assert processes[20].cpu_delta == pytest.approx(0.2)
    assert 25 not in processes


def test_exited_process_brings_its_last_interval_once(tracker: Tracker) -> None:
    processes, exited = tracker.update(
        drained(1000 * MS, {20: 40 * MS}, events={20: (EXITED, "busy")})
    )
    assert 20 not in processes
    assert [(s.pid, s.comm, s.cpu_delta, s.cpu_seconds) for s in exited] == [
        (20, "busy", 0.04, 2.04)
    ]
    later, gone = tracker.update(drained(2000 * MS, {20: 1 * MS}))  # the exit path's tail
    assert gone == [] and 20 not in later


def test_process_born_and_gone_between_ticks(tracker: Tracker, host: FakeHost) -> None:
    pod = Workload(container_id=ID, runtime="containerd", pod_id=UID)
    host.cgroups[77] = pod
    _, exited = tracker.update(
        drained(1000 * MS, {30: 50 * MS}, events={30: (EXITED, "make")}, cgroup=77)
    )
    assert exited == [ProcessSample(30, 0, "make", "", pod, 0.05, 0.05)]
    assert 30 not in tracker.alive


def test_new_process_is_read_once(tracker: Tracker, host: FakeHost) -> None:
    host.procs[40] = ident("nginx", start=900)
    for second in range(1, 5):
        processes, _ = tracker.update(drained(second * 1000 * MS, {40: 10 * MS}))
    assert host.identified == [40]
    assert processes[40].cpu_seconds == pytest.approx(0.04)  # its time since it was born
    assert (processes[40].comm, processes[40].start_ticks) == ("nginx", 900)


def test_slice_of_a_gone_process_waits_for_its_exit_record(tracker: Tracker) -> None:
    first, exited = tracker.update(drained(1000 * MS, {50: 30 * MS}))
    assert 50 not in first and exited == []
    _, exited = tracker.update(drained(2000 * MS, {50: 5 * MS}, events={50: (EXITED, "cc1")}))
    assert [(s.pid, s.comm, s.cpu_delta) for s in exited] == [(50, "cc1", pytest.approx(0.035))]


def test_slice_whose_exit_record_was_lost_is_reported_after_two_ticks(tracker: Tracker) -> None:
    tracker.update(drained(1000 * MS, {60: 30 * MS}))
    _, none_yet = tracker.update(drained(2000 * MS))
    _, exited = tracker.update(drained(3000 * MS))
    assert none_yet == []
    assert [(s.pid, s.comm, s.cpu_delta) for s in exited] == [(60, "", 0.03)]


def test_exec_reads_the_process_again(tracker: Tracker, host: FakeHost) -> None:
    host.procs[20] = ident("python3")
    processes, _ = tracker.update(drained(1000 * MS, {20: MS}, events={20: (EXECED, "python3")}))
    assert (processes[20].comm, processes[20].exe) == ("python3", "/usr/bin/python3")
    assert processes[20].cpu_seconds == pytest.approx(2.001)


def test_lost_exit_records_resync_with_procfs(tracker: Tracker, host: FakeHost) -> None:
    del host.procs[10]
    processes, exited = tracker.update(drained(1000 * MS, dropped_events=3))
    assert [(s.pid, s.cpu_delta) for s in exited] == [(10, 0.0)]
    assert set(processes) == {20}
    assert tracker.dropped_exits == 3


def test_cgroup_move_changes_the_workload(tracker: Tracker, host: FakeHost) -> None:
    pod = Workload(container_id=ID, runtime="cri-o", pod_id=UID)
    host.cgroups[5] = pod
    processes, _ = tracker.update(drained(1000 * MS, {20: MS}, cgroup=5))
    assert processes[20].workload is pod
    assert processes[10].workload is NO_WORKLOAD


# --------------------------------------------------------------------------- cgroup ids


def test_resolver_finds_ids_by_hint_then_by_one_walk_per_tick(tmp_path: Path) -> None:
    leaf = tmp_path / "kubepods.slice" / f"cri-containerd-{ID}.scope"
    leaf.mkdir(parents=True)
    other = tmp_path / "system.slice"
    other.mkdir()
    resolver = CgroupResolver(str(tmp_path))
    path = f"/kubepods.slice/cri-containerd-{ID}.scope"
    assert resolver.path(leaf.stat().st_ino, lambda: path) == path
    assert resolver.walks == 0  # the hint was right: one stat, no walk
    assert resolver.path(other.stat().st_ino, lambda: "/wrong") == "/system.slice"
    assert resolver.path(123456789) is None  # gone before seen: no second walk this tick
    assert resolver.walks == 1
    resolver.next_tick()
    assert resolver.path(123456789) is None  # cached as gone
    assert resolver.walks == 1
    assert resolver.path(tmp_path.stat().st_ino) == "/"


def test_cgroup2_mount_is_read_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "25 30 0:22 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n"
        "26 30 0:23 / /host/sys/fs/cgroup rw,relatime shared:10 - cgroup2 cgroup2 rw\n"
        "27 30 0:24 / /sys/fs/cgroup/my\\040unified rw - cgroup2 cgroup2 rw\n"
    )
    assert cgroup2_mount(str(info)) == "/host/sys/fs/cgroup"
    assert cgroup2_mount(str(info), prefer="/sys") == "/sys/fs/cgroup/my unified"
    assert cgroup2_mount(str(tmp_path / "none")) is None


def test_proc_host_reads_the_real_procfs(children: list[subprocess.Popen[str]]) -> None:
    host = ProcHost("/proc", CgroupResolver(None), legacy=False)
    me = host.identify(os.getpid())
    stat = Path("/proc/self/stat").read_text()
    assert me is not None
    assert me.start_ticks == int(stat[stat.rfind(")") + 2 :].split()[19])
    assert (me.comm, me.exe) == (
        Path("/proc/self/comm").read_text().strip(),
        os.readlink("/proc/self/exe"),
    )
    release, thread_ids = threading.Event(), []

    def wait() -> None:
        thread_ids.append(threading.get_native_id())
        release.wait()

    worker = threading.Thread(target=wait)
    worker.start()
    while not thread_ids:
        time.sleep(0.001)
    assert host.tgid_of(thread_ids[0]) == os.getpid()  # a thread: its group is this process
    release.set()
    worker.join()
    zombie = subprocess.Popen(["true"], text=True)
    children.append(zombie)
    for _ in range(500):  # exited, not reaped yet
        if Path(f"/proc/{zombie.pid}/stat").read_text().split(") ")[1].startswith("Z"):
            break
        time.sleep(0.002)
    assert host.identify(zombie.pid) is None  # its exit is recorded: not a new process
    assert host.tgid_of(thread_ids[0]) is None  # that thread has ended
    assert host.pids() >= {1, os.getpid()}
    assert host.workload(12345, os.getpid(), NO_WORKLOAD) is NO_WORKLOAD  # no cgroup2 here


# --------------------------------------------------------------------------- config


def test_config_defaults_and_errors() -> None:
    config = decode(EbpfConfig, {}, "receivers.ebpf")
    assert (config.fallback, config.max_processes, config.hardware_counters) == (
        "procfs",
        16384,
        True,
    )
    assert config.procfs.keep_open is True
    with pytest.raises(ConfigError) as small:
        decode(EbpfConfig, {"max_processes": 10}, "receivers.ebpf")
    assert str(small.value) == (
        "receivers.ebpf.max_processes: must be between 64 and 4194304, got 10"
    )
    with pytest.raises(ConfigError) as bad:
        decode(EbpfConfig, {"fallback": "estimator"}, "receivers.ebpf")
    assert str(bad.value) == (
        "receivers.ebpf.fallback: must be one of 'procfs', 'none', got 'estimator'"
    )
    with pytest.raises(ConfigError, match=r"^receivers\.ebpf\.procfs\.interval: unknown key"):
        decode(EbpfConfig, {"procfs": {"interval": 1}}, "receivers.ebpf")
    assert factory.type == "ebpf" and factory.config_class is EbpfConfig
    assert factory.doctor is doctor


# --------------------------------------------------------------------------- preflight


def status_file(tmp_path: Path, caps: int) -> str:
    path = tmp_path / "status"
    path.write_text(f"Name:\tagent\nCapEff:\t{caps:016x}\n")
    return str(path)


def test_missing_names_privilege_tracefs_and_headers(tmp_path: Path) -> None:
    none = KernelPaths(
        release="6.18.1-test",
        modules=str(tmp_path / "modules"),
        kheaders=str(tmp_path / "kheaders.tar.xz"),
        tracefs=(str(tmp_path / "tracing"),),
        status=status_file(tmp_path, 0),
    )
    uid = os.geteuid()
    modules = tmp_path / "modules" / "6.18.1-test"
    assert loader.missing(none) == [
        "no privilege: loading BPF needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN "
        f"(this process, uid {uid}, has none of them in its effective set)",
        f"no kernel headers for 6.18.1-test: none of {modules}/build, {modules}/source, "
        f"{tmp_path}/kheaders.tar.xz exist; install the headers of this kernel "
        "(linux-headers-6.18.1-test), load the kheaders module, or link older headers "
        "there (scripts/setup-ebpf.sh)",
    ]
    bpf_caps = dataclasses.replace(none, status=status_file(tmp_path, 1 << 39 | 1 << 38))
    assert loader.missing(bpf_caps)[0] == (
        f"tracefs is not mounted (no events/sched/sched_switch/format under {tmp_path}/tracing)"
        ": mount -t tracefs tracefs /sys/kernel/tracing"
    )
    (modules / "build").mkdir(parents=True)
    fmt = tmp_path / "tracing" / "events" / "sched" / "sched_switch"
    fmt.mkdir(parents=True)
    (fmt / "format").write_text("name: sched_switch\n")
    admin = dataclasses.replace(bpf_caps, status=status_file(tmp_path, 1 << 21))
    assert loader.missing(admin) == []
    assert admin.headers() == f"{modules}/build"


def test_bcc_not_found_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ComponentError) as err:
        loader.find_bcc((str(tmp_path / "a"), str(tmp_path / "b")))
    assert str(err.value) == (
        f"bcc (its Python package) is not importable: not in this Python environment nor in "
        f"{tmp_path}/a, {tmp_path}/b; install python3-bpfcc (Debian, Ubuntu) or python3-bcc "
        "(Fedora), or run scripts/setup-ebpf.sh"
    )


# =========================================================================== fallback


def no_headers(tmp_path: Path) -> KernelPaths:
    return KernelPaths(modules=str(tmp_path), kheaders=str(tmp_path / "kheaders.tar.xz"))


def test_without_headers_the_receiver_falls_back_to_procfs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = no_headers(tmp_path)
    receiver = EbpfReceiver("ebpf", EbpfConfig(), HostSettings(), paths=paths)
    with caplog.at_level(logging.WARNING):
        receiver.start()
    try:
        assert receiver.using_fallback
        assert receiver.probe is None
        warning = caplog.records[-1].getMessage()
        assert warning.startswith("ebpf: eBPF is not available: ")
        assert f"no kernel headers for {paths.release}: none of {tmp_path}/" in warning
        assert warning.endswith("(scripts/setup-ebpf.sh); falling back to procfs")
        receiver.collect()
        processes = receiver.collect().processes
        assert processes is not None and os.getpid() in processes
    finally:
        receiver.shutdown()


def test_fallback_none_makes_it_an_error(tmp_path: Path) -> None:
    paths = no_headers(tmp_path)
    receiver = EbpfReceiver("ebpf", EbpfConfig(fallback="none"), HostSettings(), paths=paths)
    with pytest.raises(ComponentError, match="^eBPF is not available: .*no kernel headers for"):
        receiver.start()


def run_as_nobody(code: str) -> str:
    """Run ``code`` (defining ``report``: str) in a forked child that dropped root."""
    for codec in ("ascii", "utf-8", "latin-1"):  # nobody cannot import them later (the
        codecs.lookup(codec)  # interpreter's own files may be root's only)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            scope: dict[str, object] = {}
            exec(code, scope)
            os.write(write_end, str(scope["report"]).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    return report


UNPRIVILEGED = (
    "no privilege: loading BPF needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN "
    "(this process, uid 65534, has none of them in its effective set)"
)


def test_without_privilege_the_receiver_falls_back_and_doctor_says_why() -> None:
    need_root()  # to become nobody
    report = run_as_nobody(
        textwrap.dedent(
            """
            import logging, os
            from otel_kepler.component import HostSettings
            from otel_kepler.receivers.ebpf import EbpfConfig, EbpfReceiver, doctor
            seen = []
            class Keep(logging.Handler):
                def emit(self, record):
                    seen.append(record.getMessage())
            logging.getLogger("otel_kepler.receivers.ebpf").addHandler(Keep())
            receiver = EbpfReceiver("ebpf", EbpfConfig(), HostSettings())
            receiver.start()
            receiver.collect()
            processes = receiver.collect().processes
            found = doctor(HostSettings())
            report = "\\n".join([
                str(receiver.using_fallback), str(os.getpid() in processes),
                seen[-1], str(found.available), found.detail,
            ])
            """
        )
    )
    fallback, has_self, warning, available, detail = report.split("\n")
    assert (fallback, has_self, available) == ("True", "True", "False")
    assert UNPRIVILEGED in warning
    assert warning.startswith("ebpf: eBPF is not available: ")
    assert warning.endswith("; falling back to procfs")
    assert detail.startswith("procfs mode (with fallback: procfs, the default): ")
    assert UNPRIVILEGED in detail


# =========================================================================== real kernel


@cache
def ebpf_problem() -> str | None:
    """Why the program cannot load here (None: it loads), asked once per test run."""
    found = doctor(HostSettings())
    return None if found.available else found.detail


def require_ebpf() -> None:
    """Fail (never skip) where the program cannot load: eBPF is what these tests test."""
    need_root()
    problem = ebpf_problem()
    if problem is not None:
        pytest.fail(f"eBPF cannot load on this machine: {problem}", pytrace=False)


@pytest.fixture
def receiver() -> Iterator[EbpfReceiver]:
    require_ebpf()
    started = EbpfReceiver("ebpf", EbpfConfig(fallback="none"), HostSettings())
    started.start()
    yield started
    started.shutdown()


DUTY = """
import time
print('ready', flush=True)
while True:
    began = time.perf_counter()
    while time.perf_counter() - began < 0.02:
        pass
    time.sleep(0.05)
"""

BURN_30MS = "import time\ne = time.perf_counter() + 0.03\nwhile time.perf_counter() < e: pass"


@pytest.fixture
def cgroup_top(children: list[subprocess.Popen[str]]) -> Iterator[Path]:
    """A test's own directory in the cgroup2 hierarchy, removed after its children ended."""
    mount = cgroup_mount("cgroup2", "")
    if mount is None:
        pytest.fail("no cgroup2 hierarchy mounted (see /proc/self/mountinfo)")
    top = mount / f"otel-kepler-ebpf-test-{uuid.uuid4().hex[:12]}"
    top.mkdir()
    yield top
    for child in children:  # a cgroup with live processes cannot be removed
        child.kill()
        child.wait()
    remove_cgroups(top)
    assert not top.exists(), f"{top} left behind"


def move(pid: int, cgroup: Path) -> None:
    cgroup.mkdir(parents=True, exist_ok=True)
    (cgroup / "cgroup.procs").write_text(str(pid))


def stat_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def schedstat_seconds(pid: int) -> float:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def stolen_seconds() -> float:
    """Steal, irq and softirq time of all CPUs so far (/proc/stat), in seconds.

    The scheduler's runtime (schedstat, rusage) leaves out what a hypervisor stole
    from the vCPU (paravirt steal time) and, with IRQ time accounting, interrupts;
    the BPF program measures slices by the clock between two switches, which includes
    them. On a busy host the difference is real and bounded by this.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    irq, softirq, steal = (int(fields[i]) for i in (6, 7, 8))
    return (irq + softirq + steal) / HZ


def wait_stopped(pid: int) -> None:
    for _ in range(500):
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        if stat[stat.rfind(b")") + 2 :].startswith(b"T"):
            return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} did not stop")


def test_burners_in_their_own_cgroups_get_their_cpu_time(
    receiver: EbpfReceiver, children: list[subprocess.Popen[str]], cgroup_top: Path
) -> None:
    children += [spawn(BURN), spawn(BURN), spawn(DUTY)]
    for index, child in enumerate(children):
        move(child.pid, cgroup_top / f"burner-{index}")
    stolen = stolen_seconds()
    # the first tick's drain happens somewhere inside collect(): read before and after
    earliest = {child.pid: schedstat_seconds(child.pid) for child in children}
    ticks = [receiver.collect()]
    latest = {child.pid: schedstat_seconds(child.pid) for child in children}
    for _ in range(5):
        time.sleep(0.5)
        ticks.append(receiver.collect())
    for child in children:
        os.kill(child.pid, signal.SIGSTOP)
    for child in children:
        wait_stopped(child.pid)
    ticks.append(receiver.collect())
    stolen = stolen_seconds() - stolen + 1 / HZ
    for child in children:
        measured = sum(t.processes[child.pid].cpu_delta for t in ticks[1:] if t.processes)
        # schedstat is the scheduler's own nanosecond count, less steal and irq time
        # (see stolen_seconds); the slices measured here include what was stolen while
        # the child was on its CPU, at most all of it. stat counts whole clock ticks
        # (utime and stime each rounded down) scaled to the same runtime.
        end = schedstat_seconds(child.pid)
        low, high = end - latest[child.pid], end - earliest[child.pid]
        assert low * 0.99 - 0.002 <= measured <= high * 1.01 + 0.002 + stolen
        whole = sum(t.processes[child.pid].cpu_delta for t in ticks if t.processes)
        assert whole == pytest.approx(stat_seconds(child.pid), rel=0.02, abs=3 / HZ + stolen)
        last = ticks[-1].processes
        assert last is not None and last[child.pid].cpu_seconds == pytest.approx(whole)
    assert all(t.cpu_usage_ratio is None or 0 <= t.cpu_usage_ratio <= 1 for t in ticks)


BURST = r"""
import ctypes, os, sys, time
prctl = ctypes.CDLL(None).prctl
count = int(sys.argv[1])
for _ in range(count):
    if os.fork() == 0:
        prctl(15, b"otelk-burst", 0, 0, 0)  # PR_SET_NAME
        end = time.perf_counter() + 0.01
        while time.perf_counter() < end:
            pass
        time.sleep(0.04)
        os._exit(0)
for _ in range(count):
    pid, _, usage = os.wait4(-1, 0)
    print(pid, usage.ru_utime + usage.ru_stime)
"""


def burst(count: int) -> dict[int, float]:
    """``count`` processes living about 50 ms each; their pid -> CPU seconds (rusage)."""
    out = subprocess.run(
        [sys.executable, "-S", "-c", BURST, str(count)], capture_output=True, text=True, check=True
    ).stdout
    return {int(pid): float(cpu) for pid, cpu in (line.split() for line in out.splitlines())}


def test_burst_of_short_processes_all_arrive_in_that_ticks_totals(
    receiver: EbpfReceiver,
) -> None:
    receiver.collect()
    stolen = stolen_seconds()
    truth = burst(200)
    tick = receiver.collect()
    stolen = stolen_seconds() - stolen + 1 / HZ
    assert tick.processes is not None
    ended = {s.pid: s for s in tick.exited if s.pid in truth}
    alive = {pid: tick.processes[pid] for pid in truth if pid in tick.processes}
    assert len(truth) == 200
    assert set(ended) | set(alive) == set(truth)
    samples = {**alive, **ended}
    assert {s.comm for s in ended.values()} <= {"otelk-burst"}
    total = sum(s.cpu_delta for s in samples.values())
    # rusage is the scheduler's runtime, without steal and irq time; the slices measured
    # here include what was stolen while a burst process ran (on a busy host, up to 7%
    # more was seen), at most all of it (see stolen_seconds).
    exact = sum(truth.values())
    assert exact * 0.99 - 0.002 <= total <= exact * 1.01 + 0.002 + stolen
    assert all(s.cpu_delta > 0 for s in samples.values())
    later = receiver.collect()
    assert not any(s.pid in truth for s in later.exited)  # reported once


#: Hybrid hosts (v1 controllers beside the cgroup2 tree) also get the v1 case.
VERSIONS = ["v2", "v1"] if cgroup_mount("cgroup", "cpu") is not None else ["v2"]


@pytest.mark.parametrize("version", VERSIONS)
def test_container_id_from_a_real_kubepods_cgroup(
    receiver: EbpfReceiver,
    children: list[subprocess.Popen[str]],
    cgroup_top: Path,
    version: str,
) -> None:
    if version == "v2":
        path = (
            "kubepods.slice/kubepods-besteffort.slice/"
            f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice/cri-containerd-{ID}.scope"
        )
        top, runtime = cgroup_top, "containerd"
    else:
        v1 = cgroup_mount("cgroup", "cpu")
        assert v1 is not None
        top, path, runtime = v1 / cgroup_top.name, f"kubepods/burstable/pod{UID}/crio-{ID}", "cri-o"
    leaf = top / path
    duty = spawn(DUTY)
    children.append(duty)
    try:
        move(duty.pid, leaf)
        receiver.collect()
        time.sleep(0.3)
        tick = receiver.collect()
        procs = leaf / "cgroup.procs"
        script = f"echo $$; echo $$ > {procs} && exec {sys.executable} -c '{BURN_30MS}'"
        brief = subprocess.run(  # born, moved, burning and gone between two ticks
            ["sh", "-c", script], capture_output=True, text=True, check=True
        )
        ended = {s.pid: s for s in receiver.collect().exited}
    finally:
        duty.kill()
        duty.wait()
        if top is not cgroup_top:
            remove_cgroups(top)
    expected = Workload(container_id=ID, runtime=runtime, pod_id=UID)
    assert tick.processes is not None
    assert tick.processes[duty.pid].workload == expected
    assert tick.processes[os.getpid()].workload is NO_WORKLOAD
    if version == "v2":  # only the cgroup id can tell where a gone process ran
        gone = ended[int(brief.stdout)]
        assert gone.workload == expected
        assert gone.cpu_delta > 0


def bpf_programs() -> dict[int, str]:
    """Loaded BPF programs of this receiver (``otelk_*``), by id, from bpftool."""
    tool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    out = subprocess.run([tool, "-j", "prog", "show"], capture_output=True, check=True).stdout
    return {p["id"]: p["name"] for p in json.loads(out) if p.get("name", "").startswith("otelk_")}


def held_programs(pid: int) -> dict[int, str]:
    """The ``otelk_*`` programs a descriptor of process ``pid`` holds (its program and
    link descriptors, as /proc/PID/fdinfo says): programs of another process, such as a
    test run beside this one on the same machine, are not counted."""
    ids: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return {}
    for fd in fds:
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return {i: n for i, n in bpf_programs().items() if i in ids}


def wait_gone(ids: set[int]) -> set[int]:
    """The ids still loaded after the kernel's deferred free had its chance (up to 10 s)."""
    for _ in range(200):
        left = ids & set(bpf_programs())
        if not left:
            return left
        time.sleep(0.05)
    return left


def test_shutdown_detaches_and_unloads_the_program() -> None:
    require_ebpf()
    receiver = EbpfReceiver("ebpf", EbpfConfig(fallback="none"), HostSettings())
    try:
        receiver.start()
        mine = held_programs(os.getpid())
    finally:
        receiver.shutdown()
    assert sorted(mine.values()) == [
        "otelk_exec",
        "otelk_exit",
        "otelk_skb_in",
        "otelk_skb_out",
        "otelk_softirq",
        "otelk_switch",
    ]
    assert wait_gone(set(mine)) == set()


AGENT = """
import sys
from otel_kepler import cli
from otel_kepler.registry import default_registry
from otel_kepler.receivers.ebpf import factory
default_registry().factories("receivers").setdefault("ebpf", factory)
sys.exit(cli.main(["run", "--config", sys.argv[1]]))
"""

CONFIG = """
receivers:
  ebpf:
    fallback: none
processors:
  attribution: {}
exporters:
  debug: {}
service:
  interval: 1s
  pipelines:
    metrics:
      receivers: [ebpf]
      processors: [attribution]
      exporters: [debug]
"""


#: scheduler (switch, exit, exec), softirq, socket-buffer ingress and egress
PROGRAMS = 6


@pytest.mark.parametrize("how", ["agent", "bare"])
def test_sigterm_detaches_the_program(tmp_path: Path, how: str) -> None:
    """The agent shuts down on SIGTERM; a bare process's programs go with its fds."""
    require_ebpf()
    config = tmp_path / "agent.yaml"
    config.write_text(CONFIG)
    bare = "from otel_kepler.receivers.ebpf import *; import time\n" + (
        "EbpfReceiver('ebpf', EbpfConfig(fallback='none'), HostSettings()).start()\n"
        "time.sleep(600)\n"
    )
    code = AGENT if how == "agent" else "from otel_kepler.component import HostSettings\n" + bare
    log = (tmp_path / "log").open("w+")
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        mine: set[int] = set()
        for _ in range(600):
            mine = set(held_programs(child.pid))
            if len(mine) == PROGRAMS or child.poll() is not None:
                break
            time.sleep(0.05)
        assert len(mine) == PROGRAMS, Path(log.name).read_text()
        if how == "agent":  # its SIGTERM handler is set once every component started
            for _ in range(600):
                if " pipelines, every " in Path(log.name).read_text() or child.poll() is not None:
                    break
                time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        code_or_signal = child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        log.close()
    output = Path(log.name).read_text()
    assert wait_gone(mine) == set()
    if how == "agent":
        assert code_or_signal == 0, output
        assert "ebpf: BPF program detached" in output
    else:
        assert code_or_signal == -signal.SIGTERM


EBPF_LOGGER = "otel_kepler.receivers.ebpf"


def warnings_of_this_receiver(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The receiver's WARNING and worse messages so far in the test.

    Taken within ``caplog.at_level(WARNING, logger=EBPF_LOGGER)`` around everything the
    receiver does, and filtered by level: whether its INFO lines (attached, detached)
    are captured too depends on the level an earlier test left on the root logger (an
    agent run in-process sets it), not on this test.
    """
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == EBPF_LOGGER and r.levelno >= logging.WARNING
    ]


def test_full_maps_warn_and_lost_exits_resync(caplog: pytest.LogCaptureFixture) -> None:
    require_ebpf()
    small = EbpfReceiver("ebpf", EbpfConfig(fallback="none", max_processes=64), HostSettings())
    # the whole life of the receiver: on a busy node the maps may already be full at the
    # first collect, and each warning is said at most once a minute
    with caplog.at_level(logging.WARNING, logger=EBPF_LOGGER):
        small.start()
        try:
            small.collect()
            truth = burst(150)
            tick = small.collect()
        finally:
            small.shutdown()
        warned = warnings_of_this_receiver(caplog)
    usage, events = small._dropped
    assert usage > 0 and events > 0
    assert warned == [
        f"ebpf: the BPF usage map is full (max_processes 64): {usage} context switches were "
        "not counted since the last warning; raise receivers.ebpf.max_processes (logged at "
        "most once a minute)",
        f"ebpf: the BPF events map is full (max_processes 64): {events} exits or execs were "
        "not recorded since the last warning; raise receivers.ebpf.max_processes (logged "
        "at most once a minute)",
    ]
    assert tick.processes is not None
    assert not set(truth) & set(tick.processes)  # gone: none is left for alive


def test_exec_changes_comm_and_exe(
    receiver: EbpfReceiver, children: list[subprocess.Popen[str]]
) -> None:
    child = subprocess.Popen(
        ["sh", "-c", f'read line; exec {sys.executable} -c "{BURN}"'],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    children.append(child)
    time.sleep(0.1)
    receiver.collect()
    first = receiver.collect().processes
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("go\n")
    child.stdin.close()
    assert child.stdout.readline() == "ready\n"
    after = receiver.collect().processes
    assert first is not None and after is not None
    assert (first[child.pid].comm, first[child.pid].exe) == ("sh", os.path.realpath("/bin/sh"))
    assert after[child.pid].exe == os.path.realpath(sys.executable)
    assert after[child.pid].start_ticks == first[child.pid].start_ticks


def test_program_the_kernel_refuses_falls_back_with_the_verifiers_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    require_ebpf()
    head = "int otelk_switch(struct tracepoint__sched__sched_switch *args)\n{\n"
    unchecked = "    u32 k = 1;\n    struct usage *u = usage0.lookup(&k);\n    u->ns = 1;\n"
    broken = ebpf.program.SOURCE.replace(head, head + unchecked)  # no NULL check: refused
    assert broken != ebpf.program.SOURCE
    receiver = EbpfReceiver("ebpf", EbpfConfig(), HostSettings(), source=broken)
    with caplog.at_level(logging.WARNING):
        receiver.start()
    try:
        assert receiver.using_fallback
        warning = caplog.records[-1].getMessage()
        release = os.uname().release
        assert warning.startswith(
            f"ebpf: the BPF program failed to load on kernel {release}: "
            "Failed to load BPF program b'otelk_switch': Permission denied; bcc said: "
        )
        assert "invalid mem access 'map_value_or_null'" in warning  # the verifier's words
        assert warning.endswith("; falling back to procfs")
        processes = receiver.collect().processes
        assert processes is not None and os.getpid() in processes
    finally:
        receiver.shutdown()
    assert not held_programs(os.getpid())


def test_doctor_says_ebpf_mode_and_why() -> None:
    require_ebpf()
    found = doctor(HostSettings())
    assert found.available
    release = os.uname().release
    assert found.detail.startswith("eBPF mode: bcc ")
    assert f"loaded and attached the program on kernel {release} (headers " in found.detail
    counters = loader.hardware_counters()
    detail, io = found.detail.split("; softirqs per process; ", 1)
    if counters is None:
        assert detail.endswith("; cycles, instructions and cache misses per process")
    else:
        assert detail.endswith(f"; no hardware counters: {counters}; CPU time only")
    assert io.startswith("network bytes per cgroup from socket-buffer programs on ")


def test_contribution_type(receiver: EbpfReceiver) -> None:
    tick = receiver.collect()
    assert isinstance(tick, Contribution)
    assert tick.processes is not None
    assert all(isinstance(s, ProcessSample) and s.pid == p for p, s in tick.processes.items())
    assert 1 in tick.processes and tick.processes[1].start_ticks > 0
    assert ebpf.__doc__ is not None


def test_counter_variant_passes_the_verifier() -> None:
    """The program with hardware counters loads here too (their reads fail without a PMU)."""
    require_ebpf()
    bcc = loader.import_bcc()
    cflags = ["-DMAX_PROCESSES=64", "-DNUM_CPUS=1024", "-DHW_COUNTERS"]
    bpf = bcc.BPF(text=ebpf.program.SOURCE.encode(), cflags=cflags)
    try:
        for function in ebpf.program.FUNCTIONS:
            bpf.load_func(function.encode(), bcc.BPF.TRACEPOINT)
    finally:
        bpf.cleanup()


def test_missing_counters_are_said_once(caplog: pytest.LogCaptureFixture) -> None:
    require_ebpf()
    why = loader.hardware_counters()
    receiver = EbpfReceiver("ebpf", EbpfConfig(fallback="none"), HostSettings())
    try:
        with caplog.at_level(logging.INFO, logger="otel_kepler.receivers.ebpf"):
            receiver.start()
            for _ in range(3):
                receiver.collect()
    finally:
        receiver.shutdown()
    said = [r.getMessage() for r in caplog.records if "hardware counters" in r.getMessage()]
    assert receiver.counters_off == why
    if why is None:
        assert said == [
            "ebpf: BPF program attached (sched:sched_switch, "
            "sched:sched_process_exit, sched:sched_process_exec, up to 16384 "
            "processes a tick, with hardware counters)"
        ]
    else:
        assert said == [f"ebpf: no hardware counters: {why}; CPU time only"]


def test_io_programs_that_fail_leave_network_to_the_namespaces(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The scheduler program still runs; network bytes come from the pod namespaces."""
    require_ebpf()
    broken = io_program.SOURCE.replace("return 1;\n}", "return *(u64 *)0;\n}", 1)
    assert broken != io_program.SOURCE
    monkeypatch.setattr(io_program, "SOURCE", broken)
    receiver = EbpfReceiver("ebpf", EbpfConfig(fallback="none"), HostSettings())
    with caplog.at_level(logging.WARNING, logger=EBPF_LOGGER):
        try:
            receiver.start()
            mine = sorted(held_programs(os.getpid()).values())
            assert receiver.probe is not None and receiver.io is None
            assert receiver.activity is not None and receiver.activity.config.network
            assert receiver.collect().processes
        finally:
            receiver.shutdown()
        warned = warnings_of_this_receiver(caplog)
    assert mine == ["otelk_exec", "otelk_exit", "otelk_switch"]
    (warning,) = warned
    assert warning.startswith("ebpf: the BPF I/O programs failed to load: ")
    assert warning.endswith("; network bytes from the pod network namespaces")


def test_io_programs_can_be_turned_off() -> None:
    require_ebpf()
    config = EbpfConfig(fallback="none", softirqs=False, network=False)
    receiver = EbpfReceiver("ebpf", config, HostSettings())
    try:
        receiver.start()
        mine = sorted(held_programs(os.getpid()).values())
        tick = receiver.collect()
    finally:
        receiver.shutdown()
    assert mine == ["otelk_exec", "otelk_exit", "otelk_switch"]
    assert receiver.io_off is None  # nothing asked for, nothing missing
    assert tick.processes is not None
    assert all(s.net_rx_irq == 0 for s in tick.processes.values())


# --------------------------------------------------------------------------- workload sums

CTR_A = Workload("a1" * 32, "docker", "")
CTR_B = Workload("b1" * 32, "docker", "")


def sample(
    pid: int, workload: Workload, total: float, delta: float, **counts: int
) -> ProcessSample:
    return ProcessSample(pid, 100, f"p{pid}", "", workload, total, delta, **counts)


def test_workload_sums_add_up_processes_and_report_an_ended_workload_once() -> None:
    sums = WorkloadSums()
    live, gone = sums.collapse(
        {
            1: sample(1, CTR_A, 5.0, 0.5, cycles=10),
            2: sample(2, CTR_A, 3.0, 0.25, cycles=5),
            3: sample(3, NO_WORKLOAD, 9.0, 1.0),
            4: sample(4, CTR_B, 2.0, 0.125, net_rx_irq=3),
        },
        [],
    )
    by = {s.workload: s for s in live.values()}
    # first seen: its processes' whole CPU time so far; this interval's deltas summed
    assert (by[CTR_A].cpu_seconds, by[CTR_A].cpu_delta, by[CTR_A].cycles) == (8.0, 0.75, 15)
    assert (by[NO_WORKLOAD].pid, by[NO_WORKLOAD].cpu_seconds) == (0, 9.0)
    assert by[CTR_B].net_rx_irq == 3 and by[CTR_A].pid < 0 and by[CTR_B].pid < 0
    assert by[CTR_A].read_bytes == -1 and gone == []
    pid_a, pid_b = by[CTR_A].pid, by[CTR_B].pid
    # process 2 ended with its last interval, process 4 (B's last) too
    live, gone = sums.collapse(
        {1: sample(1, CTR_A, 5.5, 0.5), 3: sample(3, NO_WORKLOAD, 9.5, 0.5)},
        [sample(2, CTR_A, 3.125, 0.125), sample(4, CTR_B, 2.0625, 0.0625)],
    )
    by = {s.workload: s for s in live.values()}
    assert (by[CTR_A].pid, by[CTR_A].cpu_seconds, by[CTR_A].cpu_delta) == (pid_a, 8.625, 0.625)
    assert [(s.pid, s.cpu_seconds, s.cpu_delta) for s in gone] == [(pid_b, 2.0625, 0.0625)]
    live, gone = sums.collapse({3: sample(3, NO_WORKLOAD, 9.5, 0.0)}, [])
    assert list(live) == [0] and gone == []  # A went without an exit record: swept later
    live, _ = sums.collapse({5: sample(5, CTR_A, 1.0, 1.0)}, [])
    assert [s.pid for s in live.values()] == [pid_b - 1]  # a new workload, a new pid


def test_without_a_processor_needing_processes_the_samples_are_sums_by_container(
    children: list[subprocess.Popen[str]], cgroup_top: Path
) -> None:
    require_ebpf()
    receiver = EbpfReceiver("ebpf", EbpfConfig(fallback="none"), HostSettings())
    receiver.use_processes(False)
    receiver.start()
    try:
        children += [spawn(BURN), spawn(DUTY), spawn(DUTY)]
        move(children[0].pid, cgroup_top / f"docker-{'c1' * 32}.scope")
        for child in children[1:]:
            move(child.pid, cgroup_top / f"docker-{'c2' * 32}.scope")
        receiver.collect()
        before = {child.pid: schedstat_seconds(child.pid) for child in children}
        time.sleep(1.0)
        contribution = receiver.collect()
        used = {child.pid: schedstat_seconds(child.pid) - before[child.pid] for child in children}
    finally:
        receiver.shutdown()
    samples = contribution.processes or {}
    by = {s.workload.container_id: s for s in samples.values()}
    assert len(by) == len(samples)  # one sample a workload
    assert set(by) >= {"c1" * 32, "c2" * 32, ""}
    assert by["c1" * 32].cpu_delta == pytest.approx(used[children[0].pid], abs=0.1)
    both = used[children[1].pid] + used[children[2].pid]
    assert by["c2" * 32].cpu_delta == pytest.approx(both, abs=0.1)
    assert by[""].pid == 0

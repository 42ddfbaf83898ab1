"""The procfs receiver against real processes on this machine, and against fixture trees."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from otel_kepler.component import ComponentError, HostSettings
from otel_kepler.data import NO_WORKLOAD, Contribution, ProcessSample
from otel_kepler.receivers import procfs
from otel_kepler.receivers.procfs import ProcfsConfig, ProcfsReceiver, doctor, factory
from otel_kepler.receivers.procfs import reader as reader_module
from otel_kepler.schema import ConfigError, decode
from tests.cgroups import cgroup_mount, remove_cgroups
from tests.children import BURN, spawn

HZ = os.sysconf("SC_CLK_TCK")
ID = "3f1c8e0a9b7d6c5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e"

# --------------------------------------------------------------------------- real processes

DUTY_25 = """
import time
print('ready', flush=True)
while True:
    began = time.perf_counter()
    while time.perf_counter() - began < 0.025:
        pass
    time.sleep(0.075)
"""
SLEEP = "import time\nprint('ready', flush=True)\ntime.sleep(600)\n"


Make = Callable[..., ProcfsReceiver]


@pytest.fixture
def receivers() -> Iterator[Make]:
    """Builds receivers (``ProcfsReceiver``'s arguments) and shuts each one down after the
    test: a receiver keeps one stat file open per process of the host."""
    made: list[ProcfsReceiver] = []

    def make(procfs: str = "/proc", keep_open: bool = True) -> ProcfsReceiver:
        receiver = ProcfsReceiver(procfs, keep_open)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.shutdown()


def tick(receiver: ProcfsReceiver) -> dict[int, ProcessSample]:
    """The processes of one collect()."""
    processes: dict[int, ProcessSample] | None = receiver.collect().processes
    assert processes is not None
    return processes


def wait_stopped(pid: int) -> None:
    """Wait until ``pid`` is in state T after a SIGSTOP."""
    for _ in range(500):
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        if stat[stat.rfind(b")") + 2 :].startswith(b"T"):
            return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} did not stop")


def schedstat_seconds(pid: int) -> float:
    """CPU time the scheduler accounted to ``pid`` (ns precision; not from the stat file)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def bracketed(receiver: ProcfsReceiver, pids: list[int]) -> tuple[Contribution, Bracket]:
    """One collect(), with each pid's schedstat CPU time read just before and just after:
    the receiver read the process's stat file somewhere in between (a collect() takes a
    while on a node with thousands of processes, and the children run meanwhile)."""
    before = {pid: schedstat_seconds(pid) for pid in pids}
    part = receiver.collect()
    after = {pid: schedstat_seconds(pid) for pid in pids}
    return part, {pid: (before[pid], after[pid]) for pid in pids}


Bracket = dict[int, tuple[float, float]]


def within(delta: float, start: tuple[float, float], end: tuple[float, float]) -> bool:
    """Whether a CPU-time delta between two bracketed reads fits what schedstat allows:
    utime+stime count whole clock ticks (2 ticks of rounding, 2% of scaling)."""
    low, high = end[0] - start[1], end[1] - start[0]
    slack = 2.5 / HZ
    return low * 0.98 - slack <= delta <= high * 1.02 + slack


@pytest.mark.skipif(not Path("/proc/self/schedstat").exists(), reason="no schedstat")
def test_cpu_deltas_follow_real_cpu_time(
    children: list[subprocess.Popen[str]], receivers: Make
) -> None:
    """Each tick's delta is the CPU time the scheduler gave the process in that interval.

    The truth is each child's own schedstat, read around every tick: how much CPU the
    children get depends on what else runs here (a busy node gives a burner far less than
    a core), so only the comparison with that truth is asserted, never a share of a core.
    """
    burn, duty, sleep = (spawn(code) for code in (BURN, DUTY_25, SLEEP))
    children += [burn, duty, sleep]
    pids = [burn.pid, duty.pid, sleep.pid]
    receiver = receivers()
    receiver.start()
    first, bracket = bracketed(receiver, pids)
    brackets = [bracket]
    assert first.processes is not None
    assert [first.processes[pid].cpu_delta for pid in pids] == [0.0, 0.0, 0.0]
    ticks = []
    for _ in range(4):
        time.sleep(0.6)
        part, bracket = bracketed(receiver, pids)
        ticks.append(part)
        brackets.append(bracket)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        wait_stopped(pid)
    part, bracket = bracketed(receiver, pids)  # the children use no CPU from here on
    ticks.append(part)
    brackets.append(bracket)
    last = ticks[-1].processes
    assert last is not None

    for pid in pids:
        deltas = [t.processes[pid].cpu_delta for t in ticks if t.processes is not None]
        assert sum(deltas) == pytest.approx(
            last[pid].cpu_seconds - first.processes[pid].cpu_seconds
        )
        for index, delta in enumerate(deltas):
            start, end = brackets[index][pid], brackets[index + 1][pid]
            assert within(delta, start, end), (pid, index, delta, start, end)
        stopped = brackets[-1][pid][1]  # stopped: before and after are the same
        assert last[pid].cpu_seconds == pytest.approx(stopped, rel=0.01, abs=2.5 / HZ)
        assert last[pid].start_ticks == first.processes[pid].start_ticks
    burned = brackets[-1][burn.pid][1] - brackets[0][burn.pid][1]
    assert burned > 5 / HZ, "the burner never ran: the measurement says nothing"
    assert last[sleep.pid].cpu_seconds - first.processes[sleep.pid].cpu_seconds <= 2 / HZ
    assert all(0.0 <= t.cpu_usage_ratio <= 1.0 for t in ticks if t.cpu_usage_ratio is not None)


def test_first_tick_primes_and_identity_is_real(
    children: list[subprocess.Popen[str]], receivers: Make
) -> None:
    child = spawn(SLEEP)
    children.append(child)
    receiver = receivers()
    first = receiver.collect()
    assert first.cpu_usage_ratio is None
    assert first.exited == []
    assert first.processes is not None
    assert all(sample.cpu_delta == 0.0 for sample in first.processes.values())
    assert os.getpid() in first.processes
    sample = first.processes[child.pid]
    exe = os.path.realpath(sys.executable)
    assert sample.exe == exe
    assert sample.comm == os.path.basename(sys.executable)[:15]  # the name it was exec-ed by
    stat = Path(f"/proc/{child.pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    assert sample.start_ticks == int(fields[19])
    # the interpreter's start-up (it sleeps since): under 10 ms of it reads as 0 ticks
    assert sample.cpu_seconds == (int(fields[11]) + int(fields[12])) / HZ


def test_usage_ratio_is_a_ratio_and_rises_when_burning(
    children: list[subprocess.Popen[str]], receivers: Make
) -> None:
    """The ratio is the node's busy share of the interval: at least what burners
    measurably used of all CPUs (other load only adds to it), at most 1.

    A quiet reading is not assumed: on a busy node the ratio is high before the burners.
    """
    cpus = os.cpu_count() or 1
    receiver = receivers()
    receiver.collect()
    quiet = []
    for _ in range(3):
        time.sleep(0.3)
        quiet.append(receiver.collect().cpu_usage_ratio)
    burners = [spawn(BURN) for _ in range(cpus)]
    children += burners
    pids = [child.pid for child in burners]
    began = time.monotonic()  # the ratio's interval lies within began..ended,
    receiver.collect()
    began_cpu = sum(schedstat_seconds(pid) for pid in pids)  # the CPU time counted
    time.sleep(1.0)  # here within it: a lower bound of the busy time
    used = sum(schedstat_seconds(pid) for pid in pids) - began_cpu
    burning = receiver.collect().cpu_usage_ratio
    wall = time.monotonic() - began
    assert all(q is not None and 0.0 <= q <= 1.0 for q in quiet)
    assert burning is not None and 0.0 <= burning <= 1.0
    # /proc/stat counts clock ticks: allow two ticks per CPU of rounding
    floor = (used - 2.0 * cpus / HZ) / (wall * cpus)
    assert used > 0.05 * wall, "the burners never ran: the measurement says nothing"
    assert burning >= floor - 0.02, (burning, used, wall)


def test_exited_process_is_reported_exactly_once(
    children: list[subprocess.Popen[str]], receivers: Make
) -> None:
    child = spawn(SLEEP)
    children.append(child)
    receiver = receivers()
    receiver.collect()
    seen = receiver.collect().processes
    assert seen is not None and child.pid in seen
    child.kill()
    child.wait()
    brief = subprocess.Popen([sys.executable, "-c", "pass"])  # born and gone between ticks
    brief.wait()
    gone = receiver.collect()
    assert gone.processes is not None and child.pid not in gone.processes
    exited = [s for s in gone.exited if s.pid == child.pid]
    assert len(exited) == 1
    assert exited[0].cpu_delta == 0.0
    assert exited[0].cpu_seconds == seen[child.pid].cpu_seconds
    assert exited[0].start_ticks == seen[child.pid].start_ticks
    assert all(s.pid != brief.pid for s in gone.exited)
    later = receiver.collect()
    assert all(s.pid != child.pid for s in later.exited)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def stat_fds() -> int:
    """Descriptors of this process open on a /proc/PID/stat file (other parts of the
    test process may open and close files meanwhile: they are not counted)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/proc/") and target.endswith("/stat"):
            count += 1
    return count


def test_stat_files_stay_open_until_their_process_is_gone(
    children: list[subprocess.Popen[str]], receivers: Make
) -> None:
    child = spawn(SLEEP)
    children.append(child)
    before = stat_fds()
    receiver = receivers()
    first = receiver.collect().processes
    assert first is not None and child.pid in first
    # one stat file per process, up to the budget the host's limit leaves (computed
    # after ``before`` was counted, so it matches what the scan saw)
    assert stat_fds() - before == min(len(first), reader_module.fd_budget())
    child.kill()
    child.wait()
    second = receiver.collect().processes
    assert second is not None and child.pid not in second
    assert stat_fds() - before == min(len(second), reader_module.fd_budget())
    receiver.shutdown()
    assert stat_fds() == before


def test_stat_files_past_the_fd_budget_are_reopened(
    children: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch, receivers: Make
) -> None:
    children += [spawn(SLEEP), spawn(BURN)]
    monkeypatch.setattr(reader_module, "fd_budget", lambda: 5)
    before = stat_fds()
    receiver = receivers()
    pid = children[1].pid
    _, start = bracketed(receiver, [pid])
    assert stat_fds() - before == 5
    time.sleep(0.3)
    part, end = bracketed(receiver, [pid])
    ticked = part.processes
    assert ticked is not None
    assert stat_fds() - before == 5
    burn = ticked[pid]  # its stat file was reopened: still a true delta
    assert burn.cpu_delta > 0
    assert within(burn.cpu_delta, start[pid], end[pid]), (burn.cpu_delta, start, end)
    receiver.shutdown()
    assert stat_fds() == before


def test_start_raises_the_open_files_limit(receivers: Make) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # a low limit that still leaves this test process room for what it has open now
    low = min(max(1024, open_fds() + 64), hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        receivers().start()
        raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        receivers(keep_open=False).start()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert raised == min(reader_module.FD_WANTED, hard)


def test_out_of_descriptors_is_said_so_not_blamed_on_procfs(receivers: Make) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = os.dup(0)  # the lowest free descriptor: a limit there lets nothing more open
    os.close(held)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (held, hard))
        with pytest.raises(ComponentError) as raised:
            receivers().start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert str(raised.value) == (
        f"cannot read /proc/stat: Too many open files: this process has all {held} file "
        "descriptors of its soft RLIMIT_NOFILE open (raise the limit, or set keep_open: "
        "false on the procfs reader)"
    )


def test_a_reader_out_of_descriptors_still_sees_every_process(
    children: list[subprocess.Popen[str]], receivers: Make
) -> None:
    """Other parts of the agent hold more descriptors than the reserve: the reader hits
    the limit with files still to open, gives kept files back, and misses no process."""
    child = spawn(SLEEP)
    children.append(child)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    free = os.dup(0)
    os.close(free)
    alive = sum(name.isdigit() for name in os.listdir("/proc"))
    limit = min(free + reader_module.FD_RESERVE + alive, hard)  # the budget keeps them all
    room = max(min(alive // 2, (limit - free) // 4), 4)  # but this is what is left
    held: list[int] = []
    receiver = receivers()
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        held = [os.open("/dev/null", os.O_RDONLY) for _ in range(limit - free - room)]
        before = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        seen = tick(receiver)
        kept = receiver._reader.files.open_count
        for fd in held:
            os.close(fd)
        held = []
        now = {int(name) for name in os.listdir("/proc") if name.isdigit()}
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert {os.getpid(), child.pid} <= set(seen)
    assert before & now <= set(seen)  # every process alive throughout the scan
    assert kept < room


def spawn_with_pid(pid: int) -> subprocess.Popen[str] | None:
    """A sleeping child given ``pid`` through ns_last_pid, or None if another fork took it."""
    Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
    child = spawn(SLEEP)
    if child.pid == pid:
        return child
    child.kill()
    child.wait()
    return None


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK),
    reason="needs root to choose the next pid",
)
def test_real_pid_reuse_is_a_new_process(
    children: list[subprocess.Popen[str]], receivers: Make
) -> None:
    old = spawn(SLEEP)
    children.append(old)
    receiver = receivers()
    receiver.collect()
    seen = receiver.collect().processes
    assert seen is not None
    old_sample = seen[old.pid]
    old.kill()
    old.wait()
    time.sleep(0.05)  # a later starttime, in clock ticks
    new = None
    for _ in range(10):
        new = spawn_with_pid(old.pid)
        if new is not None:
            break
    if new is None:
        pytest.skip("other processes kept taking the pid")
    children.append(new)
    tick = receiver.collect()
    assert tick.processes is not None
    reused = tick.processes[old.pid]
    assert reused.start_ticks > old_sample.start_ticks
    assert reused.cpu_delta == reused.cpu_seconds > 0.0  # all of it in this interval
    gone = [s for s in tick.exited if s.pid == old.pid]
    assert [(s.start_ticks, s.cpu_delta) for s in gone] == [(old_sample.start_ticks, 0.0)]


# --------------------------------------------------------------------------- real cgroups


UID = str(uuid.uuid4())
CGROUP_CASES = [
    pytest.param(
        "cgroup2",
        "",
        f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
        f"{UID.replace('-', '_')}.slice/cri-containerd-{ID}.scope",
        "containerd",
        id="v2-systemd-containerd",
    ),
    pytest.param(
        "cgroup", "cpu", f"kubepods/burstable/pod{UID}/crio-{ID}", "cri-o", id="v1-cgroupfs-crio"
    ),
]


@pytest.mark.parametrize(("fstype", "controller", "path", "runtime"), CGROUP_CASES)
def test_process_in_a_real_kubepods_cgroup(
    children: list[subprocess.Popen[str]],
    receivers: Make,
    fstype: str,
    controller: str,
    path: str,
    runtime: str,
) -> None:
    mount = cgroup_mount(fstype, controller)
    if mount is None or os.geteuid() != 0:
        pytest.skip(f"needs root and a {fstype} {controller} hierarchy")
    top = mount / f"otel-kepler-test-{os.getpid()}"
    leaf = top / path
    child = spawn(SLEEP)
    children.append(child)
    try:
        leaf.mkdir(parents=True)
        (leaf / "cgroup.procs").write_text(str(child.pid))
        sample = tick(receivers(keep_open=False))[child.pid]
        host = tick(receivers(keep_open=False))[os.getpid()]
    finally:
        child.kill()
        child.wait()
        remove_cgroups(top)
    assert sample.workload.container_id == ID
    assert sample.workload.runtime == runtime
    assert sample.workload.pod_id == UID
    assert host.workload is NO_WORKLOAD
    assert not top.exists()


# --------------------------------------------------------------------------- fixture trees


def _real_stat_tail() -> list[str]:
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    return stat[stat.rfind(")") + 2 :].split()


REAL_TAIL = _real_stat_tail()  # the fields after "comm)", in the real format


class FakeProc:
    """A procfs tree under tmp_path, with stat files in the real format."""

    def __init__(self, root: Path, keep_open: bool, receivers: Make) -> None:
        self.root = root
        self.keep_open = keep_open
        self.receivers = receivers
        root.mkdir()
        shutil.copyfile("/proc/stat", root / "stat")

    def add(
        self,
        pid: int,
        comm: str = "worker",
        utime: int = 0,
        stime: int = 0,
        start: int = 1000,
        cgroup: str = "0::/system.slice/worker.service\n",
        exe: str | None = "/usr/bin/worker",
        flags: int = 0x400000,
    ) -> None:
        fields = list(REAL_TAIL)
        fields[9 - 3] = str(flags)
        fields[14 - 3] = str(utime)
        fields[15 - 3] = str(stime)
        fields[22 - 3] = str(start)
        d = self.root / str(pid)
        d.mkdir(exist_ok=True)
        (d / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
        (d / "cgroup").write_text(cgroup)
        (d / "cmdline").write_bytes(b"" if flags & reader_module.PF_KTHREAD else b"worker\0")
        link = d / "exe"
        if link.is_symlink():
            link.unlink()
        if exe is not None:
            link.symlink_to(exe)

    def receiver(self) -> ProcfsReceiver:
        return self.receivers(str(self.root), self.keep_open)

    def remove(self, pid: int) -> None:
        shutil.rmtree(self.root / str(pid))


@pytest.fixture(params=[True, False], ids=["keep-open", "reopen"])
def fake(tmp_path: Path, request: pytest.FixtureRequest, receivers: Make) -> FakeProc:
    """A fixture tree, read with stat files kept open between ticks, and without."""
    return FakeProc(tmp_path / "proc", request.param, receivers)


@pytest.mark.parametrize(
    "comm",
    ["bash", "tmux: server", "(sd-pam)", "a) (b", ") )", "x)", "kworker/u8:1-events", "we ird"],
)
def test_comm_with_spaces_and_parentheses(fake: FakeProc, comm: str) -> None:
    fake.add(4242, comm=comm, utime=123, stime=45, start=98765)
    sample = tick(fake.receiver())[4242]
    assert sample.comm == comm
    assert sample.cpu_seconds == pytest.approx((123 + 45) / HZ)
    assert sample.start_ticks == 98765
    assert sample.exe == "/usr/bin/worker"


def test_clock_tick_comes_from_sysconf(fake: FakeProc, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda n: 250 if n == "SC_CLK_TCK" else real(n))
    fake.add(7, utime=400, stime=100)
    sample = tick(fake.receiver())[7]
    assert sample.cpu_seconds == pytest.approx(2.0)


def test_deltas_new_processes_and_pid_reuse(fake: FakeProc) -> None:
    fake.add(10, utime=100, stime=50, start=500)
    fake.add(11, utime=30, start=600)
    receiver = fake.receiver()
    first = receiver.collect().processes
    assert first is not None and {s.cpu_delta for s in first.values()} == {0.0}

    fake.add(10, utime=130, stime=60, start=500)  # +40 ticks
    fake.add(11, comm="reused", utime=7, start=900, cgroup=f"0::/docker/{ID}\n")  # new process
    fake.add(12, utime=20, stime=5, start=950)  # started during the interval
    second = receiver.collect()
    assert second.processes is not None
    assert second.processes[10].cpu_delta == pytest.approx(40 / HZ)
    assert second.processes[11].cpu_delta == pytest.approx(7 / HZ)
    assert second.processes[11].comm == "reused"
    assert second.processes[11].workload.container_id == ID
    assert second.processes[12].cpu_delta == pytest.approx(25 / HZ)
    assert [(s.pid, s.start_ticks, s.cpu_delta) for s in second.exited] == [(11, 600, 0.0)]
    assert second.exited[0].cpu_seconds == pytest.approx(30 / HZ)
    assert second.exited[0].workload is NO_WORKLOAD

    fake.remove(12)
    third = receiver.collect()
    assert third.processes is not None and set(third.processes) == {10, 11}
    assert third.processes[10].cpu_delta == 0.0
    assert [(s.pid, s.cpu_seconds, s.cpu_delta) for s in third.exited] == [
        (12, pytest.approx(25 / HZ), 0.0)
    ]
    assert second.processes[12].cpu_delta == pytest.approx(25 / HZ)  # last tick's data kept
    assert receiver.collect().exited == []


def test_an_unchanged_stat_file_gives_the_last_sample_with_no_delta(fake: FakeProc) -> None:
    """A stat file that reads as in the last scan is not parsed again: the same values
    come out with delta 0; a changed one (one field) is parsed; an unreadable one, twice
    in a row, is skipped both times."""
    fake.add(10, utime=100, stime=50, start=500)
    fake.add(11, utime=30, start=600)
    receiver = fake.receiver()
    tick(receiver)
    fake.add(10, utime=130, stime=50, start=500)
    second = tick(receiver)
    assert second[10].cpu_delta == pytest.approx(30 / HZ)
    third = tick(receiver)  # nothing changed
    (fake.root / "11" / "stat").write_text("")  # unreadable from now on
    fourth = tick(receiver)
    fifth = tick(receiver)
    assert (third[10].cpu_seconds, third[10].cpu_delta) == (180 / HZ, 0.0)
    assert (third[11].cpu_seconds, third[11].cpu_delta) == (30 / HZ, 0.0)
    assert (third[10].comm, third[10].exe, third[10].start_ticks) == (
        "worker",
        "/usr/bin/worker",
        500,
    )
    assert 11 not in fourth and 11 not in fifth
    assert fifth[10].cpu_delta == 0.0 and fifth[10].cpu_seconds == 180 / HZ


def test_cpu_time_never_goes_backwards(fake: FakeProc) -> None:
    fake.add(10, utime=100)
    receiver = fake.receiver()
    receiver.collect()
    fake.add(10, utime=99)
    assert tick(receiver)[10].cpu_delta == 0.0


def test_cgroup_is_read_once_per_process(fake: FakeProc, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[bytes] = []
    real = reader_module.read_workload

    def counting(cgroup: bytes) -> object:
        reads.append(cgroup)
        return real(cgroup)

    monkeypatch.setattr(reader_module, "read_workload", counting)
    container = f"0::/system.slice/docker-{ID}.scope\n"
    fake.add(20, comm="nginx", cgroup=container)
    fake.add(2, comm="kworker/0:1-events", flags=0x04208040, exe=None, cgroup="0::/\n")
    receiver = fake.receiver()
    for utime in range(5):
        fake.add(20, comm="nginx", utime=utime, cgroup=container)
        receiver.collect()
    assert len(reads) == 2

    fake.add(20, comm="nginx", utime=9, cgroup="0::/system.slice/moved.service\n")
    assert tick(receiver)[20].workload.container_id == ID
    assert len(reads) == 2

    fake.add(20, comm="sh", utime=9, cgroup="0::/system.slice/moved.service\n")  # exec
    after_exec = tick(receiver)[20]
    assert (after_exec.comm, after_exec.workload) == ("sh", NO_WORKLOAD)
    assert len(reads) == 3

    # a kworker's comm changes with its work item: no re-read, stable label
    fake.add(2, comm="kworker/0:1-mm_percpu_wq", flags=0x04208040, exe=None, cgroup="0::/\n")
    assert tick(receiver)[2].comm == "kworker/0:1-events"
    assert len(reads) == 3


def test_vanished_and_unreadable_processes(fake: FakeProc) -> None:
    fake.add(30, utime=5)
    fake.add(31)
    (fake.root / "31" / "stat").write_text("")  # empty read: exited while read
    fake.add(32)
    (fake.root / "32" / "cgroup").unlink()  # gone between its stat and its cgroup
    fake.add(33, exe=None)  # kernel thread, zombie or another user's process
    fake.add(34)
    (fake.root / "34" / "stat").write_text("34 (trunc) S 1 34")  # cut short
    (fake.root / "35").mkdir()  # a directory with nothing readable
    (fake.root / "self").symlink_to("30")
    (fake.root / "sys").mkdir()
    processes = fake.receiver().collect().processes
    assert processes is not None
    assert sorted(processes) == [30, 33]
    assert processes[30].cpu_seconds == pytest.approx(5 / HZ)
    assert processes[33].exe == ""


def test_processes_of_one_container_share_the_workload(fake: FakeProc) -> None:
    for pid in (40, 41, 42):
        fake.add(pid, cgroup=f"0::/kubepods/besteffort/pod{UID}/{ID}\n")
    processes = fake.receiver().collect().processes
    assert processes is not None
    assert processes[40].workload is processes[41].workload is processes[42].workload
    assert processes[40].workload.pod_id == UID


def test_start_names_the_missing_stat_file(tmp_path: Path, receivers: Make) -> None:
    receiver = receivers(str(tmp_path))
    with pytest.raises(ComponentError) as raised:
        receiver.start()
    assert str(raised.value) == (
        f"cannot read {tmp_path}/stat: No such file or directory "
        "(host.procfs must be where procfs is mounted)"
    )


def test_start_rejects_a_file_that_is_not_proc_stat(fake: FakeProc) -> None:
    (fake.root / "stat").write_text("intr 1 2 3\n")
    with pytest.raises(ComponentError, match="aggregate 'cpu' line"):
        fake.receiver().start()


# --------------------------------------------------------------------------- factory, doctor


def test_factory_builds_a_receiver_reading_host_procfs(fake: FakeProc) -> None:
    fake.add(50, utime=3)
    config = decode(ProcfsConfig, {}, "receivers.procfs")
    receiver = factory.create("procfs", config, HostSettings(procfs=str(fake.root)))
    assert isinstance(receiver, ProcfsReceiver)
    try:
        receiver.start()
        assert set(receiver.collect().processes or {}) == {50}
    finally:
        receiver.shutdown()
    assert factory.type == "procfs"
    assert factory.config_class is ProcfsConfig
    assert factory.doctor is doctor
    with pytest.raises(ConfigError, match="receivers.procfs.interval: unknown key"):
        decode(ProcfsConfig, {"interval": "5s"}, "receivers.procfs")


def test_doctor_on_fixture_trees(fake: FakeProc, tmp_path: Path) -> None:
    missing = doctor(HostSettings(procfs=str(tmp_path / "nowhere")))
    assert not missing.available
    assert str(tmp_path / "nowhere" / "stat") in missing.detail

    fake.add(1, comm="systemd", exe="/usr/lib/systemd/systemd")
    fake.add(2, comm="kthreadd", exe=None, flags=0x00208040)
    fine = doctor(HostSettings(procfs=str(fake.root)))
    assert fine.available, fine.detail
    assert "exe link readable" in fine.detail

    fake.add(3, comm="sshd", exe=None)
    no_exe = doctor(HostSettings(procfs=str(fake.root)))
    assert no_exe.available
    assert f"{fake.root}/3/exe" in no_exe.detail
    assert "1 of 2 user-space processes" in no_exe.detail

    (fake.root / "1" / "stat").write_text("")
    hidden = doctor(HostSettings(procfs=str(fake.root)))
    assert not hidden.available
    assert f"{fake.root}/1/stat" in hidden.detail


def test_doctor_as_an_unprivileged_user() -> None:
    """As nobody, the real /proc: stat files readable, exe links of root's processes not."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops root for good, runs the doctor, reports through the pipe
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            found = doctor(HostSettings())
            os.write(write_end, f"{found.available}\n{found.detail}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    available, detail = report.split("\n", 1)
    assert available == "True", detail
    assert "needs root or CAP_SYS_PTRACE" in detail
    assert "/proc/1/exe" in detail


def test_sample_type(receivers: Make) -> None:
    receiver = receivers()
    processes = receiver.collect().processes
    assert processes is not None
    assert all(isinstance(s, ProcessSample) and s.pid == pid for pid, s in processes.items())
    assert procfs.__doc__ is not None


def test_node_busy_cpu_seconds_from_proc_stat(tmp_path: Path) -> None:
    from otel_kepler.receivers.procfs.stat import UsageRatio

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    usage = UsageRatio(str(tmp_path))
    assert usage.update() is None and usage.busy_seconds is None
    stat.write_text(f"cpu  {100 + 3 * HZ} 0 {100 + HZ} {800 + 4 * HZ} 0 0 0 0 0 0\n")
    assert usage.update() == pytest.approx(0.5)
    assert usage.busy_seconds == pytest.approx(4.0)

"""``make accuracy``: error against a known truth, scenario by scenario.

Every scenario runs real processes on this machine and the real receivers and
processors, over fixture sysfs trees (the layouts of tests/sysfs_fixtures.py and
tests/hwmon_fixtures.py) whose counters the script advances with a known power:

    P = IDLE + DYNAMIC x load

The node of a scenario is made of its burner processes: the load is their CPU time
over their CPU time plus the machine's idle time in the interval, both measured,
so that a busy machine's other processes neither draw fixture power nor take a
share. The truth of a burner is its share of ``DYNAMIC x load x dt`` by the CPU
time the script measured itself from /proc/PID/stat; the truth of idle is
``IDLE x dt``. The table printed at the end is the one in docs/accuracy.md.

Run: ``make accuracy`` (or ``.venv/bin/python scripts/accuracy.py``). About a minute.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otel_kepler.component import ComponentError, HostSettings, Receiver  # noqa: E402
from otel_kepler.data import Batch, Contribution, ProcessSample  # noqa: E402
from otel_kepler.processors.attribution import (  # noqa: E402
    AttributionConfig,
    AttributionProcessor,
)
from otel_kepler.receivers.acpi import AcpiConfig, AcpiReceiver  # noqa: E402
from otel_kepler.receivers.ebpf import EbpfConfig, EbpfReceiver  # noqa: E402
from otel_kepler.receivers.estimator import (  # noqa: E402
    CalibrationConfig,
    EstimatorConfig,
    EstimatorReceiver,
)
from otel_kepler.receivers.hwmon import HwmonConfig, HwmonReceiver  # noqa: E402
from otel_kepler.receivers.procfs import ProcfsReceiver  # noqa: E402
from otel_kepler.receivers.rapl import RaplConfig, RaplReceiver  # noqa: E402
from tests.hwmon_fixtures import SysfsTree  # noqa: E402
from tests.sysfs_fixtures import RaplTree  # noqa: E402

IDLE_W = 20.0
DYNAMIC_W = 30.0
TICK_S = 0.7
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BURNER = """
import sys, time
duty = float(sys.argv[1])
print("ready", flush=True)
while True:
    start = time.perf_counter()
    while time.perf_counter() - start < 0.01 * duty:
        pass
    if duty < 1:
        time.sleep(0.01 * (1 - duty))
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def idle_seconds() -> float:
    with open("/proc/stat", encoding="ascii") as file:
        fields = file.readline().split()
    return (int(fields[4]) + int(fields[5])) / CLOCK_TICKS


def relative(value: float, truth: float) -> float:
    return abs(value - truth) / truth if truth else float("inf")


@dataclass
class Row:
    scenario: str
    truth: str
    result: str
    error: float
    note: str = ""


@dataclass
class Burners:
    """Burner processes at the given duty cycles; stopped and reaped by close()."""

    duties: list[float]
    children: list[subprocess.Popen[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for duty in self.duties:
            child = subprocess.Popen(
                [sys.executable, "-c", BURNER, str(duty)], stdout=subprocess.PIPE, text=True
            )
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            self.children.append(child)

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    def pause(self, paused: bool) -> None:
        for child in self.children:
            os.kill(child.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def close(self) -> None:
        for child in self.children:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()


@dataclass
class Tick:
    seconds: float
    load: float
    used: dict[int, float]  # CPU seconds of each burner, measured here
    given: list[dict[int, float]]  # per processor: joules given to each burner this tick
    idle: list[float]  # per processor: idle joules of this tick
    measured: float  # the node's joules of this tick, as the receiver reported them


class BurnerNode:
    """The burners as a node: a meter fixture at IDLE + DYNAMIC x their load."""

    def __init__(
        self,
        burners: Burners,
        meter: Receiver,
        drive: Callable[[float, float], object],
        configs: list[AttributionConfig],
    ) -> None:
        self.burners = burners
        self.meter = meter
        self.drive = drive  # (watts, seconds) -> advance the fixture
        self.procfs = ProcfsReceiver("/proc")
        self.procfs.start()
        meter.start()
        self.processors = [AttributionProcessor(c, node_name="accuracy") for c in configs]
        self.procfs.collect()
        meter.collect()
        self.last = time.monotonic()
        self.idle = idle_seconds()
        self.cpu = {pid: cpu_seconds(pid) for pid in burners.pids}

    def tick(self, seconds: float = TICK_S) -> Tick:
        time.sleep(seconds)
        usage = self.procfs.collect()
        cpu = {pid: cpu_seconds(pid) for pid in self.burners.pids}
        idle, now = idle_seconds(), time.monotonic()
        dt, self.last = now - self.last, now
        free, self.idle = idle - self.idle, idle
        used = {pid: cpu[pid] - self.cpu[pid] for pid in cpu}
        self.cpu = cpu
        assert usage.processes is not None
        mine = {pid: usage.processes[pid] for pid in self.burners.pids}
        busy = sum(p.cpu_delta for p in mine.values())
        load = busy / (busy + free) if busy + free > 0 else 0.0
        self.drive(IDLE_W + DYNAMIC_W * load, dt)
        energy = self.meter.collect()
        batches = [self._batch(dt, load, mine, energy, p) for p in self.processors]
        given = [
            {
                int(w.attributes["pid"]): sum(w.watts.values()) * dt
                for w in b.workloads
                if w.level == "process"
            }
            for b in batches
        ]  # the processors' entries live on: keep this tick's values
        measured = batches[0].node_zones[0].interval_joules
        return Tick(dt, load, used, given, [tick_idle(b) for b in batches], measured)

    @staticmethod
    def _batch(
        dt: float,
        load: float,
        processes: dict[int, ProcessSample],
        energy: Contribution,
        processor: AttributionProcessor,
    ) -> Batch:
        batch = Batch(time.time_ns(), dt, "accuracy", cpu_usage_ratio=load)
        batch.processes, batch.has_usage = dict(processes), True
        batch.add(energy)
        processor.process(batch)
        return batch


def tick_idle(batch: Batch) -> float:
    (zone,) = batch.node_zones
    return max(
        0.0,
        zone.interval_joules
        - sum(
            w.watts.get(zone.zone, 0.0) * batch.interval_s
            for w in batch.workloads
            if w.level == "process"
        ),
    )


def burner_errors(ticks: list[Tick], which: int, pids: list[int]) -> tuple[float, float, float]:
    """(largest relative error of a burner's total, its truth J, its result J).

    The two differ by when the CPU time is read: the receiver reads each process in
    its scan of /proc, this script reads the burners right after the scan.
    """
    worst = (0.0, 0.0, 0.0)
    for pid in pids:
        truth = result = 0.0
        for t in ticks:
            all_used = sum(t.used.values())
            if all_used > 0:
                truth += DYNAMIC_W * t.load * t.seconds * t.used[pid] / all_used
            result += t.given[which].get(pid, 0.0)
        error = relative(result, truth)
        if error >= worst[0]:
            worst = (error, truth, result)
    return worst


FIXED = AttributionConfig(levels=["node", "process"], idle="fixed", idle_watts={})


def with_idle(zone: str) -> AttributionConfig:
    return AttributionConfig(levels=["node", "process"], idle="fixed", idle_watts={zone: IDLE_W})


def rapl_shares(tmp: Path) -> Row:
    burners = Burners([1.0, 0.5, 0.25])
    try:
        tree = RaplTree(tmp / "rapl-shares")
        tree.add_socket()
        rapl = RaplReceiver("rapl", RaplConfig(), HostSettings(sysfs=tree.sysfs))
        drive = lambda w, s: tree.advance_all({"package": w}, s)  # noqa: E731
        node = BurnerNode(burners, rapl, drive, [with_idle("package")])
        ticks = [node.tick() for _ in range(6)]
    finally:
        burners.close()
    error, truth, result = burner_errors(ticks, 0, burners.pids)
    return Row(
        "rapl: 3 burners at 100/50/25% duty",
        f"{truth:.2f} J",
        f"{result:.2f} J",
        error,
        "worst burner; shares by CPU time",
    )


def hwmon_shares(tmp: Path) -> Row:
    burners = Burners([1.0, 0.3])
    try:
        tree = SysfsTree(tmp / "hwmon-shares")
        chip = tree.amd_energy(cores=2)
        hwmon = HwmonReceiver("hwmon", HwmonConfig(), HostSettings(sysfs=tree.sysfs))
        drive = lambda w, s: chip.run(s, {"Esocket0": w})  # noqa: E731
        node = BurnerNode(burners, hwmon, drive, [with_idle("esocket0")])
        ticks = [node.tick() for _ in range(6)]
    finally:
        burners.close()
    error, truth, result = burner_errors(ticks, 0, burners.pids)
    return Row(
        "hwmon (amd_energy): 2 burners at 100/30%",
        f"{truth:.2f} J",
        f"{result:.2f} J",
        error,
        "worst burner",
    )


def rapl_wraps(tmp: Path) -> Row:
    burners = Burners([1.0])
    try:
        tree = RaplTree(tmp / "rapl-wrap")
        tree.add_socket(max_energy_range_uj=50_000_000)  # 50 J: wraps every tick or two
        rapl = RaplReceiver("rapl", RaplConfig(), HostSettings(sysfs=tree.sysfs))
        truth = 0.0

        def drive(watts: float, seconds: float) -> None:
            nonlocal truth
            truth += tree.advance_all({"package": watts}, seconds)["package"]

        node = BurnerNode(burners, rapl, drive, [with_idle("package")])
        ticks = [node.tick() for _ in range(6)]
    finally:
        burners.close()
    result = sum(t.measured for t in ticks)
    return Row(
        "rapl: counter wraps every tick",
        f"{truth:.2f} J",
        f"{result:.2f} J",
        relative(result, truth),
        "node total (50 J range)",
    )


def idle_at_full_load(tmp: Path) -> list[Row]:
    burners = Burners([1.0] * (os.cpu_count() or 1))
    try:
        tree = RaplTree(tmp / "rapl-idle")
        tree.add_socket()
        rapl = RaplReceiver("rapl", RaplConfig(), HostSettings(sysfs=tree.sysfs))
        drive = lambda w, s: tree.advance_all({"package": w}, s)  # noqa: E731
        learned = AttributionConfig(levels=["node", "process"], idle_min_ticks=6)
        kepler = AttributionConfig(levels=["node", "process"], idle="usage_ratio")
        node = BurnerNode(burners, rapl, drive, [learned, kepler])
        burners.pause(True)
        for _ in range(4):
            node.tick()
        burners.pause(False)
        node.tick()
        ticks = [node.tick() for _ in range(4)]
    finally:
        burners.close()
    seconds = sum(t.seconds for t in ticks)
    load = sum(t.load * t.seconds for t in ticks) / seconds
    rows = []
    for which, name in ((0, "learned (default)"), (1, "usage_ratio (Kepler)")):
        idle = sum(t.idle[which] for t in ticks) / seconds
        rows.append(
            Row(
                f"idle at full load, idle: {name}",
                f"{IDLE_W:.2f} W",
                f"{idle:.2f} W",
                relative(idle, IDLE_W),
                f"load {load:.2f}; learned from 4 ticks at rest" if which == 0 else "",
            )
        )
    return rows


def calibrated_estimator(tmp: Path) -> list[Row]:
    """The estimator against an ACPI meter one tick late and averaged over two ticks."""
    burners = Burners([1.0] * (os.cpu_count() or 1))
    procfs = tmp / "cal-proc"
    procfs.mkdir()
    busy = idle = 1000

    def write_stat() -> None:
        line = f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0"
        (procfs / "stat").write_text(f"{line}\ncpu0 {busy} 0 0 {idle} 0 0 0 0 0 0\n")

    write_stat()
    tree = SysfsTree(tmp / "cal-sys")
    meter = tree.power_meter(watts=IDLE_W)
    now = [time.monotonic()]
    host = HostSettings(procfs=str(procfs), sysfs=tree.sysfs)
    min_ticks = 8
    ready = min_ticks + 6  # the first max_lag + max_smooth - 1 readings only feed the lags
    pattern = [0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1, 0]
    config = EstimatorConfig(
        calibrate_from="acpi", calibration=CalibrationConfig(window=40, min_ticks=min_ticks)
    )
    estimator = EstimatorReceiver("estimator", config, host, lambda: now[0])
    acpi = AcpiReceiver("acpi", AcpiConfig(battery=False), host, lambda: now[0])
    estimator.start()
    acpi.start()
    attribution = AttributionProcessor(AttributionConfig(levels=["node"]))
    estimator.collect()
    acpi.collect()
    burn = sum(cpu_seconds(p) for p in burners.pids)
    free = idle_seconds()
    truth: list[float] = []
    calibrated: list[float] = []
    linear: list[float] = []
    try:
        for n, running in enumerate(pattern):
            burners.pause(not running)
            time.sleep(0.4)
            b, f = sum(cpu_seconds(p) for p in burners.pids), idle_seconds()
            d_busy, d_idle = b - burn, f - free
            burn, free = b, f
            busy += round(d_busy * CLOCK_TICKS)
            idle += round(d_idle * CLOCK_TICKS)
            write_stat()
            before, now[0] = now[0], time.monotonic()
            dt = now[0] - before
            load = d_busy / (d_busy + d_idle) if d_busy + d_idle > 0 else 0.0
            truth.append(IDLE_W + DYNAMIC_W * load)
            part = estimator.collect()
            meter.drive("power1", sum(truth[-3:-1]) / len(truth[-3:-1]) if n else IDLE_W)
            batch = Batch(time.time_ns(), dt, "accuracy")
            batch.add(part)
            batch.add(acpi.collect())
            attribution.process(batch)
            (reading,) = [r for r in batch.energy if r.source == "model"]
            watts = reading.joules / dt
            if n >= ready:
                calibrated.append(relative(watts, truth[-1]))
            else:
                linear.append(relative(watts, truth[-1]))
    finally:
        burners.close()
    return [
        Row(
            "estimator, linear defaults (before calibration)",
            "20 + 30 x load W",
            f"{len(linear)} ticks",
            max(linear),
            "worst tick; defaults for this CPU count",
        ),
        Row(
            "estimator calibrated against a lagging ACPI meter",
            "20 + 30 x load W",
            f"{len(calibrated)} ticks after {ready}",
            max(calibrated),
            "worst tick; meter 1 tick late, 2-tick average",
        ),
    ]


SHORT = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.1:\n    pass\n"


class ShortLived:
    """Starts processes of about 0.1 s of CPU one after the other; their rusage is the truth."""

    def __init__(self) -> None:
        self._pids: set[int] = set()
        self._lock = threading.Lock()
        self.done: list[tuple[float, float]] = []  # (monotonic end, CPU seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            child = subprocess.Popen([sys.executable, "-c", SHORT])
            with self._lock:
                self._pids.add(child.pid)
            _, _, usage = os.wait4(child.pid, 0)
            child.returncode = 0  # reaped here
            self.done.append((time.monotonic(), usage.ru_utime + usage.ru_stime))

    @property
    def pids(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._pids)

    def cpu_between(self, start: float, end: float) -> float:
        return sum(cpu for t, cpu in self.done if start < t <= end)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def short_lived(tmp: Path) -> list[Row]:
    rows = [short_lived_with(tmp / "procfs", "procfs", ProcfsReceiver("/proc"))]
    if os.geteuid() != 0:
        return [*rows, Row("ebpf: the same", "", "not run", float("nan"), "needs root")]
    ebpf = EbpfReceiver("ebpf", EbpfConfig(), HostSettings())
    try:
        ebpf.start()
    except ComponentError as err:
        return [*rows, Row("ebpf: the same", "", "not run", float("nan"), str(err))]
    if ebpf.using_fallback:
        ebpf.shutdown()
        return [*rows, Row("ebpf: the same", "", "not run", float("nan"), "bcc did not load")]
    return [*rows, short_lived_with(tmp / "ebpf", "ebpf", ebpf)]


def short_lived_with(tmp: Path, name: str, usage_receiver: Receiver) -> Row:
    """procfs sees a process only while it lives at a scan: one that starts and ends
    between two ticks is never seen, and its energy goes to the others. The ebpf
    receiver's exit hook reports such a process with the CPU time of its last interval."""
    burners = Burners([1.0])
    tree = RaplTree(tmp)
    tree.add_socket()
    rapl = RaplReceiver("rapl", RaplConfig(), HostSettings(sysfs=tree.sysfs))
    procfs = usage_receiver
    procfs.start()
    rapl.start()
    attribution = AttributionProcessor(with_idle("package"), node_name="accuracy")
    procfs.collect()
    rapl.collect()
    short = ShortLived()
    truth = result = 0.0
    try:
        last, idle, burn = time.monotonic(), idle_seconds(), cpu_seconds(burners.pids[0])
        for _ in range(6):
            time.sleep(TICK_S)
            usage = procfs.collect()
            now, free, b = time.monotonic(), idle_seconds(), cpu_seconds(burners.pids[0])
            dt, d_free, d_burn = now - last, free - idle, b - burn
            d_short = short.cpu_between(last, now)
            last, idle, burn = now, free, b
            busy = d_burn + d_short
            load = busy / (busy + d_free) if busy + d_free > 0 else 0.0
            tree.advance_all({"package": IDLE_W + DYNAMIC_W * load}, dt)
            assert usage.processes is not None
            wanted = {burners.pids[0], *short.pids}
            batch = Batch(time.time_ns(), dt, "accuracy", cpu_usage_ratio=load)
            batch.processes = {p: s for p, s in usage.processes.items() if p in wanted}
            batch.exited = [s for s in usage.exited if s.pid in wanted]
            batch.has_usage = True
            batch.add(rapl.collect())
            attribution.process(batch)
            if busy > 0:
                truth += DYNAMIC_W * load * dt * d_short / busy
            result += sum(
                sum(w.watts.values()) * dt
                for w in batch.workloads
                if w.level == "process"
                and int(w.attributes["pid"]) in wanted
                and int(w.attributes["pid"]) != burners.pids[0]
            )
    finally:
        short.close()
        burners.close()
        procfs.shutdown()
    return Row(
        f"{name}: processes of 0.1 s CPU, one after the other",
        f"{truth:.2f} J",
        f"{result:.2f} J",
        relative(result, truth),
        f"{len(short.done)} processes",
    )


def nvml_split(tmp: Path) -> Row:
    """A fake libnvidia-ml (tests/fake_nvml): idle learned while nothing runs, then two
    compute processes at 75% and 25% SM utilisation share the rest."""
    from tests.fake_nvml import FakeNvml, NvmlProcess, build

    fake = FakeNvml(tmp / "nvml-state")
    gpu = fake.add_gpu(power_mw=60_000)
    fake.write()
    child = NvmlProcess(build("full"), fake.path)
    attribution = AttributionProcessor(AttributionConfig(levels=["node", "process"]))
    idle_w, busy_w, shares, dt = 60.0, 300.0, {101: 75, 202: 25}, 5.0
    truth = dict.fromkeys(shares, 0.0)
    result = dict.fromkeys(shares, 0.0)
    try:
        child.request("create", None).ok()
        child.request("start").ok()
        child.request("collect", 0.0).ok()
        for n in range(8):
            busy = n >= 3
            watts = busy_w if busy else idle_w
            gpu.power_mw, gpu.energy_mj = (
                round(watts * 1000),
                gpu.energy_mj + round(watts * dt * 1000),
            )
            gpu.processes = [(pid, 1 << 30, 0, 0) for pid in shares] if busy else []
            if busy:
                for k in range(5):
                    for pid, sm in shares.items():
                        gpu.sample(pid, (n * 5 + k + 1) * 1_000_000, sm)
            fake.write()
            part = child.request("collect", dt).ok()
            batch = Batch(n + 1, dt, "accuracy")
            batch.add(part)
            attribution.process(batch)
            for w in batch.workloads:
                pid = int(w.attributes["pid"])
                if w.level == "process" and pid in shares:
                    result[pid] += sum(w.gpu_watts.values()) * dt
            if busy:
                for pid, sm in shares.items():
                    truth[pid] += (busy_w - idle_w) * dt * sm / sum(shares.values())
    finally:
        child.close()
    errors = {pid: relative(result[pid], truth[pid]) for pid in shares}
    worst = max(errors, key=lambda pid: errors[pid])
    return Row(
        "nvml (fake library): 2 processes at 75/25% SM",
        f"{truth[worst]:.2f} J",
        f"{result[worst]:.2f} J",
        errors[worst],
        "worst process; idle 60 W learned at rest",
    )


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    rapl = "with" if os.path.isdir("/sys/class/powercap/intel-rapl:0") else "without"
    return (
        f"{os.cpu_count()} CPUs ({model or platform.machine()}), Linux {platform.release()}, "
        f"{rapl} RAPL, load average {os.getloadavg()[0]:.2f} at the start"
    )


def main() -> int:
    print(f"machine: {machine()}", flush=True)
    rows: list[Row] = []
    scenarios: list[Callable[[Path], Row | list[Row]]] = [
        rapl_shares,
        hwmon_shares,
        rapl_wraps,
        idle_at_full_load,
        calibrated_estimator,
        short_lived,
        nvml_split,
    ]
    with TemporaryDirectory(prefix="otel-kepler-accuracy-") as tmp:
        for scenario in scenarios:
            started = time.monotonic()
            result = scenario(Path(tmp))
            done = result if isinstance(result, list) else [result]
            rows.extend(done)
            print(f"  {scenario.__name__}: {time.monotonic() - started:.1f} s", flush=True)
    print()
    print("| scenario | truth | result | error | note |")
    print("|---|---|---|---|---|")
    for r in rows:
        error = "-" if r.error != r.error else f"{r.error:.2%}"  # NaN: not run
        print(f"| {r.scenario} | {r.truth} | {r.result} | {error} | {r.note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

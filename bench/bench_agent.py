"""The whole agent's cost, run as users run it, beside a psutil scan and node-exporter.

    .venv/bin/python bench/bench_agent.py [--sizes 100,1000,3000] [--modes procfs,ebpf]
        [--window 60] [--warmup 10] [--soak-minutes 10] [--only cpu|soak|profile]

BENCH_QUICK=1 shortens it (20 s windows, 1,000 processes only, a 2-minute soak).

CPU. For each size N, N real sleeping processes are spawned (bench/spawn.py) and, as
root, spread over ``--containers`` (50) cgroups named like docker containers. The agent
is started as ``otel-kepler run --config <generated yaml>``: receivers ``estimator`` and
``procfs`` (or ``ebpf``, with no fallback), ``attribution`` with the levels under test,
``otlphttp`` to a local sink (gzip, as by default) and the ``prometheus`` pull endpoint,
a tick every second. After the warm-up, for the window, /metrics is fetched every 5 s
like a Prometheus server would; the agent's CPU is utime + stime of all its threads from
/proc/PID/stat over the window, divided by the ticks (window / 1 s). Each scrape's own
cost is the agent's schedstat run time across the request (median of the window's
scrapes). Bytes per export come from the sink; microseconds per OTLP data point from the
agent's own counters (exporter CPU / points sent) read from its /metrics.

Beside it, on the same processes, right after each window: a psutil
``process_iter(['cpu_times', 'name'])`` pass in this process (``time.process_time``,
median of 9 after a first pass), and Debian's prometheus-node-exporter with only the
processes collector, its CPU per scrape over 20 scrapes (`make bench-deps` unpacks it;
without it that column says n/a).

Soak. 1,000 sleeping processes plus 20 process starts and 20 ends a second (each lives
2 s); two agents at process level, side by side: (a) OTLP to a live sink and nobody
scraping, (b) OTLP to a closed port. VmRSS every 5 s; start is taken after one minute.

Profile (``--only profile``, root): py-spy records the agent at 1,000 processes (the first
of ``--modes``, ``--levels process`` or ``default``) and prints the share of its busy
samples by function (own and with callees).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import psutil
from agent_peers import (
    Churner,
    OtlpSink,
    cpu_seconds,
    http_get,
    memory,
    node_exporter_binary,
    process_count,
    run_seconds,
    start_child,
    stop_child,
)
from spawn import InContainers, SleepingProcesses

REPO = Path(__file__).resolve().parent.parent
AGENT = Path(sys.executable).parent / "otel-kepler"
PROCESS_LEVELS = "[node, process, container, pod]"
DEFAULT_LEVELS = "[node, container, pod]"
SCRAPE_EVERY_S = 5.0
INTERVAL_S = 1.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_config(receiver: str, levels: str, otlp_port: int, prom_port: int) -> str:
    usage = "ebpf:\n    fallback: none" if receiver == "ebpf" else "procfs: {}"
    return f"""receivers:
  estimator: {{}}
  {usage}
processors:
  attribution:
    levels: {levels}
exporters:
  otlphttp:
    endpoint: http://127.0.0.1:{otlp_port}
  prometheus:
    endpoint: 127.0.0.1:{prom_port}
service:
  interval: {INTERVAL_S:g}s
  pipelines:
    metrics:
      receivers: [estimator, {receiver}]
      processors: [attribution]
      exporters: [otlphttp, prometheus]
"""


class Agent:
    """``otel-kepler run --config FILE`` as a subprocess, with its log in the work folder."""

    def __init__(self, work: Path, name: str, config: str, prom_port: int) -> None:
        self.config = work / f"{name}.yaml"
        self.config.write_text(config)
        self.log_path = work / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.url = f"http://127.0.0.1:{prom_port}/metrics"
        self.child = start_child([str(AGENT), "run", "--config", str(self.config)], self.log)
        self.pid = self.child.pid

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until /metrics answers with the agent's own series (its first tick is done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.child.poll() is not None:
                break
            try:
                if b"otel_kepler_agent_cpu_seconds_total" in http_get(self.url, 5.0):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"agent did not come up ({self.config}):\n{tail}")

    def stop(self) -> None:
        stop_child(self.child)
        self.log.close()


def agent_counter(text: str, name: str, exporter: str) -> float:
    match = re.search(
        rf'^{name}{{[^}}]*exporter="{exporter}"[^}}]*}} (\S+)$', text, flags=re.MULTILINE
    )
    return float(match.group(1)) if match else float("nan")


def agent_points(text: str) -> int:
    """Series in the Prometheus exposition (lines that are not comments)."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


# --------------------------------------------------------------------------- peers


def psutil_ms(rounds: int = 9) -> float:
    """Median CPU ms of a psutil pass after a first (cold) one."""

    def one() -> float:
        began = time.process_time()
        for _ in psutil.process_iter(["cpu_times", "name"]):
            pass
        return (time.process_time() - began) * 1e3

    one()
    return statistics.median(one() for _ in range(rounds))


def node_exporter_ms(binary: str | None, work: Path, scrapes: int = 20) -> float | None:
    """node-exporter's CPU ms per scrape of the processes collector alone."""
    if binary is None:
        return None
    port = free_port()
    with open(work / "node-exporter.log", "wb") as log:
        child = start_child(
            [
                binary,
                "--collector.disable-defaults",
                "--collector.processes",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            log,
        )
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            deadline = time.monotonic() + 30
            while True:
                try:
                    http_get(url)
                    break
                except OSError:
                    if time.monotonic() > deadline or child.poll() is not None:
                        raise RuntimeError("node-exporter did not start") from None
                    time.sleep(0.2)
            for _ in range(3):
                http_get(url)
            began = cpu_seconds(child.pid)
            for _ in range(scrapes):
                http_get(url)
            return (cpu_seconds(child.pid) - began) * 1e3 / scrapes
        finally:
            stop_child(child)


# --------------------------------------------------------------------------- cpu runs


@dataclass
class Run:
    mode: str
    levels: str
    spawned: int
    in_proc: int = 0  # processes in /proc at the window's start
    in_proc_end: int = 0
    ticks: float = 0.0
    tick_ms: float = 0.0  # all agent CPU in the window, per tick
    tick_ms_no_scrape: float = 0.0
    scrape_ms: list[float] = field(default_factory=list)
    exports: int = 0
    wire_per_export: float = 0.0
    raw_per_export: float = 0.0
    points_per_export: float = 0.0
    us_per_point: float = 0.0
    series: int = 0
    mem: dict[str, float] = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)
    psutil_ms: float = float("nan")
    node_exporter_ms: float | None = None

    @property
    def scrape_median(self) -> float:
        return statistics.median(self.scrape_ms) if self.scrape_ms else float("nan")


def measure_agent(
    work: Path, mode: str, levels: str, spawned: int, warmup: float, window: float
) -> Run:
    run = Run(mode, "process" if "process" in levels else "default", spawned)
    sink = OtlpSink()
    prom_port = free_port()
    name = f"{mode}-{run.levels}-{spawned}"
    agent = Agent(work, name, agent_config(mode, levels, sink.port, prom_port), prom_port)
    try:
        agent.wait_ready()
        time.sleep(warmup)
        load0 = os.getloadavg()[0]
        run.in_proc = process_count()
        posts0, wire0, raw0 = sink.counts()
        cpu0 = cpu_seconds(agent.pid)
        began = time.monotonic()
        first = last = ""
        scrapes = 0
        while True:
            before = run_seconds(agent.pid)
            text = http_get(agent.url).decode()
            run.scrape_ms.append((run_seconds(agent.pid) - before) * 1e3)
            scrapes += 1
            first = first or text
            last = text
            due = began + scrapes * SCRAPE_EVERY_S
            if due > began + window:
                break
            time.sleep(max(0.0, due - time.monotonic()))
        cpu1 = cpu_seconds(agent.pid)
        elapsed = time.monotonic() - began
        posts1, wire1, raw1 = sink.counts()
        run.mem = memory(agent.pid)
        run.in_proc_end = process_count()
        run.load = (load0, os.getloadavg()[0])
        run.ticks = elapsed / INTERVAL_S
        total_ms = (cpu1 - cpu0) * 1e3
        run.tick_ms = total_ms / run.ticks
        run.tick_ms_no_scrape = (total_ms - sum(run.scrape_ms)) / run.ticks
        run.exports = posts1 - posts0
        if run.exports:
            run.wire_per_export = (wire1 - wire0) / run.exports
            run.raw_per_export = (raw1 - raw0) / run.exports
        cpu_name, points_name = (
            "otel_kepler_agent_exporter_cpu_seconds_total",
            "otel_kepler_agent_exporter_sent_points_total",
        )
        points = agent_counter(last, points_name, "otlphttp") - agent_counter(
            first, points_name, "otlphttp"
        )
        export_cpu = agent_counter(last, cpu_name, "otlphttp") - agent_counter(
            first, cpu_name, "otlphttp"
        )
        if points > 0:
            run.points_per_export = points / max(1, run.exports)
            run.us_per_point = export_cpu * 1e6 / points
        run.series = agent_points(last)
        return run
    finally:
        agent.stop()
        sink.close()


def print_runs(runs: list[Run]) -> None:
    head = (
        "| mode | levels | spawned | in /proc | agent ms/tick | w/o scrapes | us/process "
        "| psutil ms | x psutil | node-exporter ms | x node-exp. | scrape ms | VmRSS | VmHWM "
        "| RssAnon | bytes/export wire / raw | points/export | us/point | load 1m |"
    )
    print(head)
    print("|---|---|" + "---:|" * 17)
    for r in runs:
        ps, ne = r.psutil_ms, r.node_exporter_ms
        ne_text = f"{ne:.1f}" if ne is not None else "n/a"
        ne_ratio = f"{r.tick_ms_no_scrape / ne:.2f}" if ne else "n/a"
        print(
            f"| {r.mode} | {r.levels} | {r.spawned:,} | {r.in_proc:,}-{r.in_proc_end:,} "
            f"| {r.tick_ms:.1f} "
            f"| {r.tick_ms_no_scrape:.1f} "
            f"| {r.tick_ms_no_scrape * 2e3 / (r.in_proc + r.in_proc_end):.1f} "
            f"| {ps:.1f} | {r.tick_ms_no_scrape / ps:.2f} | {ne_text} | {ne_ratio} "
            f"| {r.scrape_median:.1f} | {r.mem.get('VmRSS', 0):.1f} | {r.mem.get('VmHWM', 0):.1f} "
            f"| {r.mem.get('RssAnon', 0):.1f} | {r.wire_per_export / 1024:,.1f} / "
            f"{r.raw_per_export / 1024:,.1f} KiB | {r.points_per_export:,.0f} "
            f"| {r.us_per_point:.2f} | {r.load[0]:.1f}-{r.load[1]:.1f} |",
            flush=True,
        )


def cpu_runs(args: argparse.Namespace, work: Path) -> None:
    binary = node_exporter_binary(REPO)
    if binary is None:
        print("prometheus-node-exporter not found: `make bench-deps` unpacks it", flush=True)
    runs: list[Run] = []
    for n in args.sizes:
        with SleepingProcesses(n) as pids, InContainers(pids, args.containers) as spread:
            time.sleep(2)
            print(
                f"# {n:,} spawned in {spread.count} containers, {process_count():,} in /proc",
                flush=True,
            )
            plans = [(mode, PROCESS_LEVELS) for mode in args.modes]
            if n == 1000:
                plans += [(mode, DEFAULT_LEVELS) for mode in args.modes]
            if args.cpu_levels != "both":
                want = DEFAULT_LEVELS if args.cpu_levels == "default" else PROCESS_LEVELS
                plans = [(mode, levels) for mode, levels in plans if levels == want]
            for mode, levels in plans:
                run = measure_agent(work, mode, levels, n, args.warmup, args.window)
                # The peers right after the window, on the same processes (other users of
                # the machine may have started or ended some since the last window).
                run.psutil_ms = psutil_ms()
                run.node_exporter_ms = node_exporter_ms(binary, work)
                runs.append(run)
                ne = run.node_exporter_ms
                print(
                    f"#   {mode} {run.levels}: {run.tick_ms_no_scrape:.1f} ms/tick, psutil "
                    f"{run.psutil_ms:.1f} ms ({run.tick_ms_no_scrape / run.psutil_ms:.2f}x), "
                    f"node-exporter {f'{ne:.1f} ms' if ne is not None else 'n/a'}, scrape "
                    f"{run.scrape_median:.1f} ms, RssAnon {run.mem.get('RssAnon', 0):.1f} MiB, "
                    f"{run.in_proc:,}-{run.in_proc_end:,} in /proc, "
                    f"load {run.load[0]:.1f}-{run.load[1]:.1f}",
                    flush=True,
                )
    print()
    print_runs(runs)


# --------------------------------------------------------------------------- soak


def soak(args: argparse.Namespace, work: Path) -> None:
    minutes = args.soak_minutes
    print(
        f"# soak: {minutes:g} min, 1,000 sleeping + 20 starts/ends a second, process level",
        flush=True,
    )
    live_sink = OtlpSink()
    dead = OtlpSink()
    dead_port = dead.port
    dead.close()  # the backend is gone: connection refused from the first tick on
    agents: dict[str, Agent] = {}
    samples: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}
    with SleepingProcesses(1000):
        churner = Churner(rate=20.0, life=2.0)
        try:
            for key, port in (("a", live_sink.port), ("b", dead_port)):
                prom = free_port()
                config = agent_config("procfs", PROCESS_LEVELS, port, prom)
                agents[key] = Agent(work, f"soak-{key}", config, prom)
            began = time.monotonic()
            for agent in agents.values():
                agent.wait_ready()
            end = began + minutes * 60
            while time.monotonic() < end:
                now = time.monotonic() - began
                for key, agent in agents.items():
                    if agent.child.poll() is not None:
                        raise RuntimeError(f"soak agent {key} ended: see {agent.log_path}")
                    samples[key].append((now, memory(agent.pid)["VmRSS"]))
                time.sleep(5)
            posts = live_sink.counts()[0]
        finally:
            for agent in agents.values():
                agent.stop()
            churner.close()
            live_sink.close()
    print("| soak | RSS at 1 min | at end | max | end - start | max - start |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, label in (("a", "(a) OTLP sink live, no scrapes"), ("b", "(b) OTLP backend dead")):
        series = samples[key]
        start = next((rss for t, rss in series if t >= 60), series[0][1])
        end_rss = series[-1][1]
        top = max(rss for _, rss in series)
        print(
            f"| {label} | {start:.1f} MiB | {end_rss:.1f} MiB | {top:.1f} MiB "
            f"| {end_rss - start:+.1f} MiB | {top - start:+.1f} MiB |"
        )
    print(f"# (a) exports received: {posts:,}; load {os.getloadavg()[0]:.1f}", flush=True)
    for key in ("a", "b"):
        per_minute = [f"{rss:.0f}" for t, rss in samples[key][::12]]
        print(f"# ({key}) VmRSS MiB each minute: {' '.join(per_minute)}")


# --------------------------------------------------------------------------- profile


def profile(args: argparse.Namespace, work: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy (it needs root)")
    seconds = int(args.window)
    with SleepingProcesses(1000) as pids, InContainers(pids, args.containers):
        sink = OtlpSink()
        prom = free_port()
        levels = DEFAULT_LEVELS if args.levels == "default" else PROCESS_LEVELS
        config = agent_config(args.modes[0], levels, sink.port, prom)
        agent = Agent(work, "profile", config, prom)
        try:
            agent.wait_ready()
            time.sleep(args.warmup)
            out = work / "profile.txt"
            subprocess.run(
                [spy, "record", "--pid", str(agent.pid), "--duration", str(seconds),
                 "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            agent.stop()
            sink.close()
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        # Idle threads (waiting in a select, a lock or a sleep) are not agent work.
        if not frames or re.search(r"^(wait|select|_wait_for_tstate_lock|sleep|accept)\b",
                                   frames[-1]):  # fmt: skip
            continue
        functions = [re.sub(r":\d+\)$", ")", frame) for frame in frames]  # lines merged
        lines[frames[-1]] += count
        samples += count
        own[functions[-1]] += count
        for function in set(functions):
            total[function] += count
    print(
        f"# py-spy: {args.modes[0]}, {args.levels} levels, 1,000 processes: {samples:,} busy "
        f"samples at 200 Hz over {seconds} s"
    )
    print("| function (file) | own % | with callees % |")
    print("|---|---:|---:|")
    for frame, count in own.most_common(25):
        print(f"| {frame} | {100 * count / samples:.1f} | {100 * total[frame] / samples:.1f} |")
    print()
    print("| line (own time) | % |")
    print("|---|---:|")
    for frame, count in lines.most_common(15):
        print(f"| {frame} | {100 * count / samples:.1f} |")
    print()
    print("| function, by time with callees | % |")
    print("|---|---:|")
    for frame, count in total.most_common(25):
        print(f"| {frame} | {100 * count / samples:.1f} |")


# --------------------------------------------------------------------------- main


def main() -> None:
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000" if quick else "100,1000,3000")
    parser.add_argument("--modes", default="procfs,ebpf")
    parser.add_argument(
        "--containers",
        type=int,
        default=50,
        help="cgroups named like docker containers the processes are spread over (root)",
    )
    parser.add_argument(
        "--cpu-levels", choices=["process", "default", "both"], default="both", help="cpu only"
    )
    parser.add_argument("--window", type=float, default=20.0 if quick else 60.0)
    parser.add_argument("--warmup", type=float, default=5.0 if quick else 10.0)
    parser.add_argument("--soak-minutes", type=float, default=2.0 if quick else 10.0)
    parser.add_argument("--only", choices=["cpu", "soak", "profile"], default=None)
    parser.add_argument(
        "--levels", choices=["process", "default"], default="process", help="profile only"
    )
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.modes = args.modes.split(",")
    if "ebpf" in args.modes and os.geteuid() != 0:
        print("ebpf mode needs root: measuring procfs only", flush=True)
        args.modes = [m for m in args.modes if m != "ebpf"]

    # Ctrl-C and SIGTERM unwind through the finally blocks: agents stopped, children reaped.
    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with open("/proc/cpuinfo", encoding="ascii") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {os.cpu_count()} CPUs "
        f"({model}), {psutil.virtual_memory().total / 2**30:.0f} GiB, Linux {os.uname().release}, "
        f"Python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as folder:
        work = Path(folder)
        try:
            if args.only in (None, "cpu"):
                cpu_runs(args, work)
            if args.only in (None, "soak"):
                soak(args, work)
            if args.only == "profile":
                profile(args, work)
        except KeyboardInterrupt:
            print("interrupted: agents stopped, processes reaped", file=sys.stderr)
            raise SystemExit(130) from None


if __name__ == "__main__":
    main()

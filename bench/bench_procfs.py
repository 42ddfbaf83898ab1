"""CPU cost of one procfs receiver tick against psutil, at 100, 1,000 and 5,000 processes.

    .venv/bin/python bench/bench_procfs.py [SIZES...]

For each size, spawns that many real sleeping processes (bench/spawn.py), then
measures the CPU time (time.process_time) of:

- the receiver's first collect() (reads exe and cgroup of every process),
- the median of several later collect() ticks, with the stat files kept open
  between ticks (the default) and with keep_open=False,
- what the I/O activity (``activity``: /proc/PID/io of every process, cgroup block
  counters and pod network namespaces) adds to a tick: the default tick less one
  with all three off,
- the median of several psutil.process_iter(['cpu_times', 'name']) passes,
  psutil's own cache warmed by one pass first, reading the same fields;

and the resident memory of this process afterwards.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import psutil
from spawn import SleepingProcesses

from otel_kepler.receivers.procfs import ActivityConfig, ProcfsReceiver

TICKS = 9


def cpu_ms(action: Callable[[], object]) -> float:
    """CPU time of one call, in milliseconds."""
    began = time.process_time()
    action()
    return (time.process_time() - began) * 1000


def median_ms(action: Callable[[], object], times: int = TICKS) -> float:
    return statistics.median(cpu_ms(action) for _ in range(times))


def psutil_pass() -> int:
    seen = 0
    for proc in psutil.process_iter(["cpu_times", "name"]):
        if proc.info["cpu_times"] is not None:
            seen += 1
    return seen


def rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def steady_tick(receiver: ProcfsReceiver) -> float:
    """Median CPU ms of a collect() after the first."""
    receiver.collect()
    return median_ms(receiver.collect)


def measure(size: int) -> dict[str, float]:
    with SleepingProcesses(size):
        receiver = ProcfsReceiver()
        receiver.start()
        first = cpu_ms(receiver.collect)
        seen = len(receiver.collect().processes or {})
        tick = steady_tick(receiver)
        receiver.shutdown()
        quiet = ProcfsReceiver(activity=ActivityConfig(False, False, False))
        no_activity = steady_tick(quiet)
        quiet.shutdown()
        closed = ProcfsReceiver(keep_open=False)
        reopen = steady_tick(closed)
        psutil_pass()  # fills psutil's per-pid cache, as a long-running agent would have
        baseline = median_ms(psutil_pass)
        return {
            "spawned": size,
            "seen": seen,
            "first": first,
            "tick": tick,
            "activity": tick - no_activity,
            "reopen": reopen,
            "psutil": baseline,
            "speedup": baseline / tick,
            "us_per_proc": tick * 1000 / seen,
            "rss": rss_mib(),
        }


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [100, 1000, 5000]
    version = sys.version.split()[0]
    print(f"CPU time per tick (time.process_time, median of {TICKS}); python {version}")
    print(
        f"{'spawned':>8} {'in /proc':>8} {'1st tick':>9} {'tick':>8} {'per proc':>9} "
        f"{'activity':>9} {'no-keep':>8} {'psutil':>8} {'speedup':>8} {'RSS':>7}"
    )
    for size in sizes:
        r = measure(size)
        print(
            f"{r['spawned']:>8.0f} {r['seen']:>8.0f} {r['first']:>7.1f}ms {r['tick']:>6.2f}ms "
            f"{r['us_per_proc']:>7.1f}us {r['activity']:>7.2f}ms {r['reopen']:>6.2f}ms "
            f"{r['psutil']:>6.1f}ms "
            f"{r['speedup']:>7.1f}x {r['rss']:>4.0f}MiB",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])

"""CPU and memory of one whole agent tick at 100, 1,000 and 5,000 live processes.

    .venv/bin/python bench/bench_tick.py [SIZES...]

For each size, spawns that many real sleeping processes (bench/spawn.py) and
measures, with time.process_time, the median CPU time of a tick as the agent
runs it with process level on: the ``procfs`` receiver's collect(), the
``attribution`` processor, the conversion to a snapshot (what every exporter
receives), the OTLP encoding (with gzip) and the Prometheus rendering, each part
on its own and together. Beside it,
in the same run, a psutil.process_iter(['cpu_times', 'name']) pass reading the
same fields, and the resident memory of this process (which holds what the
agent holds: the receiver's cache, the processor's totals, one tick's data).

The whole agent as a process, beside its peers, is measured by bench_agent.py.
"""

from __future__ import annotations

import gc
import gzip
import statistics
import sys
import time

from bench_procfs import psutil_pass, rss_mib
from spawn import SleepingProcesses

from otel_kepler.convert import AgentStats, Converter
from otel_kepler.data import Batch, EnergyReading
from otel_kepler.exporters.otlp.encoder import Encoder
from otel_kepler.exporters.prometheus import render
from otel_kepler.processors.attribution import AttributionConfig, AttributionProcessor
from otel_kepler.receivers.procfs import ProcfsReceiver
from otel_kepler.resource import node_resource
from otel_kepler.service import settle_memory

TICKS = 9
INTERVAL = 5.0


class Tick:
    """procfs -> attribution -> conversion, as the service runs one pipeline."""

    def __init__(self) -> None:
        self.receiver = ProcfsReceiver()
        self.receiver.start()
        levels = AttributionConfig(levels=["node", "process", "container", "pod"])
        self.attribution = AttributionProcessor(levels, node_name="bench")
        self.converter = Converter(node_resource("bench"), time.time_ns(), "bench")
        self.encoder = Encoder()
        self.parts = {"collect": 0.0, "attribute": 0.0, "convert": 0.0, "encode": 0.0}
        self.render_seconds = 0.0
        self.points = 0
        self.bytes = 0

    def run(self) -> None:
        t0 = time.process_time()
        part = self.receiver.collect()
        t1 = time.process_time()
        batch = Batch(time.time_ns(), INTERVAL, "bench")
        batch.add(part)
        batch.energy.append(EnergyReading("cpu", "package", "rapl", 50.0 * INTERVAL))
        batch.energy.append(EnergyReading("cpu", "dram", "rapl", 5.0 * INTERVAL))
        self.attribution.process(batch)
        t2 = time.process_time()
        data = self.converter.convert(batch, AgentStats())
        t3 = time.process_time()
        body = gzip.compress(b"".join(p.data for p in self.encoder.encode(data)), 1)
        t4 = time.process_time()
        render([data])
        t5 = time.process_time()
        self.parts = {
            "collect": t1 - t0,
            "attribute": t2 - t1,
            "convert": t3 - t2,
            "encode": t4 - t3,
        }
        self.render_seconds = t5 - t4
        self.points = data.point_count()
        self.bytes = len(body)


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def measure(size: int) -> dict[str, float]:
    with SleepingProcesses(size):
        tick = Tick()
        tick.run()  # the first tick reads every exe and cgroup once
        settle_memory()  # as the service does after its first tick
        tick.run()
        parts: dict[str, list[float]] = {name: [] for name in tick.parts}
        renders = []
        totals = []
        for _ in range(TICKS):
            tick.run()
            for name, seconds in tick.parts.items():
                parts[name].append(seconds)
            renders.append(tick.render_seconds)
            totals.append(sum(tick.parts.values()))
        gc.collect()
        rss = rss_mib()
        psutil_pass()  # warm psutil's per-pid cache, as a long-running agent would have
        baseline = []
        for _ in range(TICKS):
            t0 = time.process_time()
            psutil_pass()
            baseline.append(time.process_time() - t0)
        seen = len(tick.attribution._processes)
        return {
            "spawned": size,
            "seen": seen,
            "points": tick.points,
            "collect": median_ms(parts["collect"]),
            "attribute": median_ms(parts["attribute"]),
            "convert": median_ms(parts["convert"]),
            "encode": median_ms(parts["encode"]),
            "render": median_ms(renders),
            "bytes": tick.bytes,
            "tick": median_ms(totals),
            "psutil": median_ms(baseline),
            "rss": rss,
        }


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [100, 1000, 5000]
    print(f"CPU ms per tick (time.process_time, median of {TICKS}), process level on;")
    print(f"python {sys.version.split()[0]}")
    header = (
        f"{'spawned':>8} {'in /proc':>8} {'points':>7} {'collect':>8} {'attrib':>8} "
        f"{'convert':>8} {'encode':>8} {'us/pt':>6} {'gz KB':>6} {'render':>8} {'tick':>8} "
        f"{'psutil':>8} {'x psutil':>8} {'RSS':>7}"
    )
    print(header)
    for size in sizes:
        r = measure(size)
        print(
            f"{r['spawned']:>8.0f} {r['seen']:>8.0f} {r['points']:>7.0f} {r['collect']:>8.2f} "
            f"{r['attribute']:>8.2f} {r['convert']:>8.2f} {r['encode']:>8.2f} "
            f"{r['encode'] * 1000 / max(1, r['points']):>6.2f} {r['bytes'] / 1024:>6.0f} "
            f"{r['render']:>8.2f} {r['tick']:>8.2f} {r['psutil']:>8.2f} "
            f"{r['tick'] / r['psutil']:>7.2f}x {r['rss']:>4.0f}MiB",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])

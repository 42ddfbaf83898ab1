"""Check GPU attribution on a real NVIDIA GPU: ``make gpu-check``.

    .venv/bin/python scripts/gpu_check.py [--load-seconds 20] [--interval 1]

Runs the agent's pipeline in this process (receivers ``nvml`` and ``procfs``, the
``attribution`` processor at process level, the ``debug`` exporter) while a GPU load
runs in a child process: PyTorch bf16 matrix products on ``cuda:0``. Then it compares

* the GPU energy attributed to the load's pid (``kepler.process.gpu.joules``), with
* the NVML energy counter's delta over the same ticks minus the idle power (the lowest
  power seen in the ticks before the load started) times their duration,

and prints both and their ratio. Exit status: 0 when the ratio is within 10 % of 1,
1 when it is not (or the load got no GPU energy), 2 when the check cannot run here (no
PyTorch with CUDA, no NVML or GPU).

Where the attributed energy is read from: each tick's batch (after the processors)
is captured by a processor appended to the pipeline. The load's process entry is the
``batch.workloads`` item of level ``process`` whose ``pid`` attribute is the child's
pid. Its GPU joules are its ``gpu_joules`` (GPU uuid -> total joules), or, if the
attribution reports GPU energy as zones instead, the sum of its ``joules`` entries
whose key starts with ``gpu``. Both are totals since the process was first seen.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from otel_kepler.component import HostSettings, Processor
from otel_kepler.config import parse
from otel_kepler.data import Batch, WorkloadEnergy
from otel_kepler.receivers import nvml
from otel_kepler.registry import Registry, default_registry
from otel_kepler.service import Service

CONFIG = """
receivers:
  nvml: {}
  procfs: {}
processors:
  attribution:
    levels: [node, process]
exporters:
  debug:
    verbosity: basic
service:
  interval: %gs
  pipelines:
    metrics:
      receivers: [nvml, procfs]
      processors: [attribution]
      exporters: [debug]
"""

LOAD = textwrap.dedent(
    """
    import sys, time
    import torch
    if not torch.cuda.is_available():
        sys.exit("torch sees no CUDA device")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    print("load running", flush=True)
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        for _ in range(50):
            c = a @ b
        torch.cuda.synchronize()
    """
)

IDLE_TICKS = 4
TOLERANCE = 0.10


@dataclass
class Tick:
    phase: str  # idle, load, after
    batch: Batch
    idle_totals: dict[str, float]  # GPU uuid -> the attribution's idle joules so far


@dataclass
class Capture(Processor):
    """Keeps every batch the pipeline produced, with the phase it was produced in."""

    phase: str = "idle"
    ticks: list[Tick] = field(default_factory=list)

    def process(self, batch: Batch) -> None:
        # The attribution's GPU entries are its running state: copy the totals now.
        idle = {g.uuid: g.idle_total_joules for g in getattr(batch, "node_gpus", [])}
        self.ticks.append(Tick(self.phase, batch, idle))


def registry() -> Registry:
    """The installed components, plus nvml if its entry point is not declared yet."""
    base = default_registry()
    kinds = ("receivers", "processors", "exporters")
    factories = {kind: dict(base.factories(kind)) for kind in kinds}
    factories["receivers"].setdefault("nvml", nvml.factory)
    return Registry(factories)


def gpu_joules(workload: WorkloadEnergy) -> float:
    """The workload's GPU joules so far, wherever the attribution puts them."""
    per_gpu: dict[str, float] = getattr(workload, "gpu_joules", None) or {}
    if per_gpu:
        return sum(per_gpu.values())
    return sum(j for zone, j in workload.joules.items() if zone.startswith("gpu"))


def load_process(batch: Batch, pid: int) -> WorkloadEnergy | None:
    for w in batch.workloads:
        if w.level == "process" and w.attributes.get("pid") == str(pid):
            return w
    return None


def tick_until(service: Service, interval: float, done: Callable[[], bool], limit: float) -> int:
    """Tick every ``interval`` s until ``done()`` or ``limit`` seconds; returns the ticks."""
    began = next_tick = time.monotonic()
    ticks = 0
    while not done() and time.monotonic() - began < limit:
        service.tick()
        ticks += 1
        next_tick += interval
        time.sleep(max(0.0, next_tick - time.monotonic()))
    return ticks


def report(capture: Capture, pid: int) -> int:
    idle_watts: dict[str, float] = {}
    for t in capture.ticks:
        if t.phase == "idle":
            for g in t.batch.gpus:
                idle_watts[g.uuid] = min(idle_watts.get(g.uuid, g.watts), g.watts)
    window = [t for t in capture.ticks if t.phase != "idle"]
    used = {g.uuid for t in window for g in t.batch.gpus if pid in g.sm_util or pid in g.running}
    if not used:
        print(f"NVML never showed pid {pid} on a GPU (utilisation samples or running list)")
        used = {g.uuid for t in window for g in t.batch.gpus}
    seconds = sum(t.batch.interval_s for t in window)
    # A tick where NVML rejected a GPU's reading has no joules for it: no idle either.
    readings = [(t.batch.interval_s, g) for t in window for g in t.batch.gpus if g.uuid in used]
    counter = sum(g.joules for _, g in readings)
    idle = sum(idle_watts.get(g.uuid, 0.0) * interval for interval, g in readings)
    active = counter - idle
    entries = [w for t in window if (w := load_process(t.batch, pid)) is not None]
    attributed = max((gpu_joules(w) for w in entries), default=0.0)
    names = {g.uuid: f"GPU {g.index} {g.name}" for t in window for g in t.batch.gpus}
    for uuid in sorted(used):
        print(f"{names.get(uuid, uuid)} ({uuid}): idle {idle_watts.get(uuid, 0.0):.1f} W")
    print(f"load pid {pid}: {len(window)} ticks, {seconds:.1f} s")
    print(f"NVML energy counter delta: {counter:,.1f} J")
    print(f"minus idle power x time:   {idle:,.1f} J")
    print(f"= active:                  {active:,.1f} J")
    attribution_idle = _attribution_idle(capture, used)
    if attribution_idle is not None:
        print(f"(the attribution's own idle over the window: {attribution_idle:,.1f} J)")
    print(f"attributed to pid {pid}:     {attributed:,.1f} J")
    if not entries or attributed == 0.0:
        print("FAIL: the attribution gave the load no GPU energy (no process entry with GPU")
        print("joules: does the attribution processor handle batch.gpus yet?)")
        return 1
    ratio = attributed / active if active > 0 else float("inf")
    verdict = "PASS" if abs(ratio - 1.0) <= TOLERANCE else "FAIL"
    print(f"ratio attributed / active: {ratio:.3f}  {verdict} (tolerance {TOLERANCE:.0%})")
    return 0 if verdict == "PASS" else 1


def _attribution_idle(capture: Capture, used: set[str]) -> float | None:
    """Idle joules the attribution kept with the GPUs over the window, if it reports them."""
    start: dict[str, float] = {}
    end: dict[str, float] = {}
    for t in capture.ticks:
        (start if t.phase == "idle" else end).update(t.idle_totals)
    if not end:
        return None
    return sum(end[uuid] - start.get(uuid, 0.0) for uuid in used if uuid in end)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--load-seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    if importlib.util.find_spec("torch") is None:
        print("PyTorch is not installed: no GPU load to run (pip install torch); not checked")
        return 2
    available = nvml.doctor(HostSettings())
    if not available.available:
        print(f"nvml is not available here: {available.detail}; not checked")
        return 2
    print(f"nvml: {available.detail}")
    service = Service(parse(CONFIG % args.interval, registry(), "gpu_check"))
    capture = Capture()
    for pipeline in service.pipelines:
        pipeline.processors.append(("capture", capture))
    service.start()
    try:
        for _ in range(IDLE_TICKS):
            service.tick()
            time.sleep(args.interval)
        capture.phase = "load"
        load = subprocess.Popen([sys.executable, "-c", LOAD, str(args.load_seconds)])
        limit = args.load_seconds + 120.0  # PyTorch's import and CUDA start-up included
        tick_until(service, args.interval, lambda: load.poll() is not None, limit)
        if load.poll() is None:
            load.kill()
        if load.wait() != 0:
            print(f"the GPU load failed (exit status {load.returncode}); not checked")
            return 2
        capture.phase = "after"
        time.sleep(args.interval)
        service.tick()  # the tick that covers the load's last moments
    finally:
        service.shutdown()
    return report(capture, load.pid)


if __name__ == "__main__":
    sys.exit(main())

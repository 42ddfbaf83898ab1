"""Cost of one ``nvml`` receiver tick per GPU, on the fake libnvidia-ml.so.1 of the tests.

    .venv/bin/python bench/bench_nvml.py [GPU_COUNTS...]     (default: 1 8)

Builds the fake library (tests/fake_nvml, gcc) and re-runs itself with LD_LIBRARY_PATH
pointing at it, so pynvml loads it as it loads the driver's. For each GPU count it
measures the wall time of ``collect()`` (median of many ticks) in two cases:

- *quiet*: no new utilisation sample (NVML answers NotFound), 2 running processes;
- *busy*: 4 processes, each with 5 new utilisation samples a tick (the state file is
  rewritten and re-read by the fake before the timed call, outside the timing);

and the cost of the bare pynvml calls a tick makes, to tell the receiver's own Python
from the library's. The target is under 5 ms per GPU and tick. On real hardware add
the driver's time: nvmlDeviceGetTotalEnergyConsumption takes about 4 ms on an H100,
the other calls microseconds.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fake_nvml import FakeNvml, build  # noqa: E402

TICKS = 200
T0 = 1_700_000_000_000_000
TARGET_MS = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def median_ms(action: Callable[[], object], before: Callable[[], object], times: int) -> float:
    samples = []
    for _ in range(times):
        before()
        began = time.perf_counter()
        action()
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


def bench(count: int, state: Path) -> None:
    import pynvml

    from otel_kepler.receivers.nvml import NvmlConfig, NvmlReceiver

    fake = FakeNvml(state)
    gpus = [fake.add_gpu() for _ in range(count)]
    for gpu in gpus:
        gpu.run(100)
        gpu.run(101)
    fake.write()
    clock = Clock()
    receiver = NvmlReceiver("nvml", NvmlConfig(), None, clock)
    receiver.start()
    receiver.collect()
    stamp = T0

    def advance() -> None:
        clock.now += 1.0
        for gpu in gpus:
            gpu.energy_mj += 300_000

    def quiet() -> None:
        advance()
        fake.write()
        pynvml.nvmlDeviceGetCount()  # the fake re-reads its state here, not in the timing

    def busy() -> None:
        nonlocal stamp
        advance()
        for gpu in gpus:
            gpu.processes = [(pid, 1 << 30, 0, 0) for pid in range(100, 104)]
            gpu.samples = []
            for _ in range(5):
                stamp += 200_000
                for pid in range(100, 104):
                    gpu.sample(pid, stamp + pid, 20)
        fake.write()
        pynvml.nvmlDeviceGetCount()

    quiet_ms = median_ms(receiver.collect, quiet, TICKS)
    busy_ms = median_ms(receiver.collect, busy, TICKS)
    part = receiver.collect()
    assert len(part.gpus) == count and not part.rejected

    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    calls: dict[str, Callable[[], object]] = {
        "energy": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle),
        "power": lambda: pynvml.nvmlDeviceGetPowerUsage(handle),
        "running v3": lambda: pynvml.nvmlDeviceGetComputeRunningProcesses_v3(handle),
        "utilisation": lambda: pynvml.nvmlDeviceGetProcessUtilization(handle, 0),
    }
    raw = {name: median_ms(call, lambda: None, 2000) * 1000 for name, call in calls.items()}
    receiver.shutdown()

    print(f"{count} GPU{'s' if count > 1 else ''}:")
    for case, ms in (("quiet", quiet_ms), ("busy", busy_ms)):
        per_gpu = ms / count
        verdict = "ok" if per_gpu < TARGET_MS else "OVER TARGET"
        print(f"  collect, {case:5}: {ms:8.3f} ms a tick, {per_gpu:.3f} ms per GPU ({verdict})")
    print(
        "  bare pynvml calls on the fake (us): " + ", ".join(f"{k} {v:.1f}" for k, v in raw.items())
    )


def main() -> None:
    counts = [int(a) for a in sys.argv[1:]] or [1, 8]
    library = build("full")
    if os.environ.get("LD_LIBRARY_PATH") != str(library):
        env = {**os.environ, "LD_LIBRARY_PATH": str(library)}
        os.execve(sys.executable, [sys.executable, __file__, *map(str, counts)], env)
    with tempfile.TemporaryDirectory(prefix="bench-nvml-") as directory:
        state = Path(directory) / "state"
        os.environ["FAKE_NVML_STATE"] = str(state)
        print(f"python {sys.version.split()[0]}, fake NVML {library}, {TICKS} ticks a case")
        for count in counts:
            bench(count, state)


if __name__ == "__main__":
    main()

"""CPU cost of one ``hwmon`` receiver tick on a fixture tree of 20 chips (target: under 2 ms).

    .venv/bin/python bench/bench_hwmon.py [TICKS]

The tree (tests/hwmon_fixtures.py, real layouts) is a two-socket AMD server's: k10temp x2,
amd_energy (64 cores, 2 sockets), an nct6798 board chip (15 voltages, 7 fans, 6
temperatures), the ACPI power meter, 8 NVMe drives (3 temperatures each), 2 INA3221
(3 rails each), acpitz, 3 drivetemp disks and a NIC. Each tick changes every energy
counter, so the work is the steady state's.

Measured with time.process_time (median and 90th percentile of TICKS collect() calls,
after one warm-up), for: the default config (amd_energy's per-core channels off), all
channels on (64 more energy counters), and keep_open: false (open, read and close each
file every tick). This is the receiver's own CPU; a real sysfs read also runs the
driver's show() in the kernel (most chips cache their registers for update_interval,
an uncached I2C read can take far longer).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otel_kepler.component import HostSettings  # noqa: E402
from otel_kepler.receivers.hwmon import HwmonConfig, HwmonReceiver  # noqa: E402
from tests.hwmon_fixtures import FixtureChip, SysfsTree  # noqa: E402

TICKS = 500
TARGET_MS = 2.0


def server_tree(root: Path) -> tuple[SysfsTree, FixtureChip]:
    """20 chips; returns the tree and its amd_energy chip (to move its counters)."""
    tree = SysfsTree(root / "sys")
    for socket in range(2):
        chip = tree.add_chip("k10temp", f"pci0000:00/0000:00:{0x18 + socket * 8:02x}.3")
        for index, label in ((1, "Tctl"), (3, "Tccd1"), (4, "Tccd2")):
            chip.temp(index, 55.0, label)
    amd = tree.amd_energy(cores=64, sockets=2)
    board = tree.add_chip("nct6798", "platform/nct6775.656")
    for index in range(15):
        board.voltage(index, 1000 + index * 100)
    for index in range(1, 8):
        board.fan(index, 900 + index * 50)
    for index in range(1, 7):
        board.temp(index, 30.0 + index)
    tree.power_meter(watts=420.0)
    for drive in range(8):
        nvme = tree.add_chip(
            "nvme", f"pci0000:40/0000:40:01.{drive}/0000:4{drive}:00.0/nvme/nvme{drive}"
        )
        for index, label in ((1, "Composite"), (2, "Sensor 1"), (3, "Sensor 2")):
            nvme.temp(index, 38.0 + index, label)
    for address in ("1-0040", "1-0041"):
        rails = {
            f"P12V_{address[-1]}A": 12.1,
            f"P5V_{address[-1]}": 5.05,
            f"P3V3_{address[-1]}": 3.31,
        }
        tree.ina3221(rails, device=f"platform/i2c-1/{address}")
    tree.add_chip("acpitz", None).temp(1, 27.8)
    for disk in range(3):
        tree.add_chip(
            "drivetemp",
            f"pci0000:00/0000:00:17.0/ata{disk + 1}/host{disk}/target{disk}:0:0/{disk}:0:0:0",
        ).temp(1, 33.0)
    tree.add_chip("bnxt_en", "pci0000:20/0000:20:03.1/0000:21:00.0").temp(1, 51.0)
    return tree, amd


def cpu_ms(action: Callable[[], object]) -> float:
    began = time.process_time()
    action()
    return (time.process_time() - began) * 1000


def measure(tree: SysfsTree, amd: FixtureChip, config: HwmonConfig, ticks: int) -> dict[str, float]:
    receiver = HwmonReceiver("hwmon", config, HostSettings(sysfs=tree.sysfs))
    start_ms = cpu_ms(receiver.start)
    receiver.collect()  # primes
    labels = list(amd.channels)
    samples: list[float] = []
    part = None
    for _ in range(ticks):
        for label in labels:
            amd.add_energy(label, 0.001)  # outside the timed part
        began = time.process_time()
        part = receiver.collect()
        samples.append((time.process_time() - began) * 1000)
    files = len(receiver._reader.sensors)
    receiver.shutdown()
    samples.sort()
    assert part is not None
    return {
        "chips": len(receiver.reports),
        "files": files,
        "zones": len(part.energy),
        "gauges": len(part.gauges),
        "start": start_ms,
        "median": statistics.median(samples),
        "p90": samples[int(len(samples) * 0.9)],
    }


def main() -> None:
    ticks = int(sys.argv[1]) if len(sys.argv) > 1 else TICKS
    runs = {
        "default": HwmonConfig(),
        "all channels": HwmonConfig(channels={"amd_energy/*": "cpu"}),
        "keep_open: false": HwmonConfig(keep_open=False),
    }
    print(f"hwmon receiver, {ticks} ticks each, CPU ms per tick (target < {TARGET_MS} ms)")
    print(
        f"{'config':<18} {'chips':>5} {'files':>5} {'zones':>5} {'gauges':>6} "
        f"{'start':>7} {'median':>7} {'p90':>7}  target"
    )
    with tempfile.TemporaryDirectory(prefix="bench-hwmon-") as directory:
        tree, amd = server_tree(Path(directory))
        for name, config in runs.items():
            r = measure(tree, amd, config, ticks)
            verdict = "met" if r["median"] < TARGET_MS else "NOT MET"
            print(
                f"{name:<18} {r['chips']:>5.0f} {r['files']:>5.0f} {r['zones']:>5.0f} "
                f"{r['gauges']:>6.0f} {r['start']:>7.2f} {r['median']:>7.3f} {r['p90']:>7.3f}  "
                f"{verdict}"
            )


if __name__ == "__main__":
    main()

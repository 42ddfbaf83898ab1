"""Per-tick features of a node, the same for recording, training and prediction.

Every feature is a rate over the tick, so that a model does not depend on the tick length:

=====================  =======  ======================================================
name                   unit     where it comes from
=====================  =======  ======================================================
cpu_usage_ratio        1        busy share of all CPUs (/proc/stat, as attribution)
cpu_seconds_per_s      s/s      busy CPU seconds per second: busy CPUs (/proc/stat)
cpu_frequency_ghz      GHz      mean scaling_cur_freq of the CPUs (/sys cpufreq)
cycles_per_s           1/s      CPU cycles of all processes (the ebpf receiver)
instructions_per_s     1/s      instructions retired by all processes (ebpf)
cache_misses_per_s     1/s      last-level cache misses of all processes (ebpf)
network_bytes_per_s    B/s      bytes received + sent by every interface (/proc/net/dev)
block_bytes_per_s      B/s      bytes read + written by the whole disks (/proc/diskstats)
softirq_net_per_s      1/s      NET_TX + NET_RX softirqs of all CPUs (/proc/softirqs)
softirq_block_per_s    1/s      BLOCK softirqs of all CPUs (/proc/softirqs)
=====================  =======  ======================================================

The four activity features are node-wide and readable without privilege. The network
bytes count every interface of the agent's network namespace, loopback and virtual
ones included: each is work of the network stack on this node's CPUs (a byte that a pod
sends out through its veth and the uplink counts on both). The block bytes count whole
disks only (no partitions, device-mapper or md devices on top of other disks, loop,
ram or zram devices), so a byte is counted once, at the disk that moved it. A counter
that went backwards (a device or interface that came back) counts from zero.

Targets (what a meter measured, in recordings) are ``package_watts``, ``dram_watts``
and ``platform_watts``. The unit is part of every name.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from otel_kepler.data import ProcessSample
from otel_kepler.receivers.procfs.stat import read_cpu_times

#: feature name -> what it is, with its unit
FEATURES: dict[str, str] = {
    "cpu_usage_ratio": "busy share of all CPUs over the tick, 0 to 1 (/proc/stat)",
    "cpu_seconds_per_s": "busy CPU seconds per second of the tick, s/s (/proc/stat)",
    "cpu_frequency_ghz": "mean current frequency of the CPUs, GHz (cpufreq in /sys)",
    "cycles_per_s": "CPU cycles of all processes per second, 1/s (ebpf receiver)",
    "instructions_per_s": "instructions of all processes per second, 1/s (ebpf receiver)",
    "cache_misses_per_s": "cache misses of all processes per second, 1/s (ebpf receiver)",
    "network_bytes_per_s": "bytes received + sent by all interfaces, B/s (/proc/net/dev)",
    "block_bytes_per_s": "bytes read + written by the whole disks, B/s (/proc/diskstats)",
    "softirq_net_per_s": "NET_TX + NET_RX softirqs of all CPUs, 1/s (/proc/softirqs)",
    "softirq_block_per_s": "BLOCK softirqs of all CPUs, 1/s (/proc/softirqs)",
}
#: node activity features (network, block I/O and their softirqs), from /proc
ACTIVITY_FEATURES: tuple[str, ...] = (
    "network_bytes_per_s",
    "block_bytes_per_s",
    "softirq_net_per_s",
    "softirq_block_per_s",
)
#: features that only the ebpf receiver's hardware counters provide, and the sample field
COUNTER_FEATURES: dict[str, str] = {
    "cycles_per_s": "cycles",
    "instructions_per_s": "instructions",
    "cache_misses_per_s": "cache_misses",
}
#: zone -> the column of its measured power in a recording
TARGETS: dict[str, str] = {
    "package": "package_watts",
    "dram": "dram_watts",
    "platform": "platform_watts",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpufreq_files(sysfs: str) -> list[str]:
    """The scaling_cur_freq file of every CPU that has one (none in most VMs)."""
    pattern = os.path.join(sysfs, "devices", "system", "cpu", "cpu[0-9]*", "cpufreq")
    return sorted(glob.glob(os.path.join(pattern, "scaling_cur_freq")))


def read_frequency_ghz(files: Iterable[str]) -> float | None:
    """Mean of the readable scaling_cur_freq values (kHz) in GHz; None if none reads."""
    values: list[int] = []
    for path in files:
        try:
            with open(path, "rb") as file:
                values.append(int(file.read()))
        except (OSError, ValueError):
            continue
    if not values:
        return None
    return sum(values) / len(values) / 1e6


def counter_totals(samples: Iterable[ProcessSample]) -> dict[str, float]:
    """Sum of each hardware counter over the samples of one tick."""
    totals = dict.fromkeys(COUNTER_FEATURES, 0.0)
    for sample in samples:
        totals["cycles_per_s"] += sample.cycles
        totals["instructions_per_s"] += sample.instructions
        totals["cache_misses_per_s"] += sample.cache_misses
    return totals


SECTOR_BYTES = 512  # /proc/diskstats counts 512-byte sectors whatever the device's own
NOT_DISKS = ("loop", "ram", "zram")


def whole_disks(sysfs: str) -> frozenset[str]:
    """Block devices that are disks of their own: not partitions, stacked or in memory."""
    root = os.path.join(sysfs, "block")  # partitions live below their disk, not here
    try:
        names = os.listdir(root)
    except OSError:
        return frozenset()
    disks: set[str] = set()
    for name in names:
        if name.startswith(NOT_DISKS):
            continue
        try:
            stacked = bool(os.listdir(os.path.join(root, name, "slaves")))
        except OSError:
            stacked = False
        if not stacked:
            disks.add(name)
    return frozenset(disks)


def read_network_bytes(path: str) -> dict[str, int]:
    """Received + sent bytes of each interface in /proc/net/dev."""
    out: dict[str, int] = {}
    with open(path, encoding="ascii") as file:
        for line in file.readlines()[2:]:
            name, _, numbers = line.partition(":")
            fields = numbers.split()
            if len(fields) >= 9:
                out[name.strip()] = int(fields[0]) + int(fields[8])
    return out


def read_disk_bytes(path: str, disks: frozenset[str]) -> dict[str, int]:
    """Read + written bytes of each of ``disks`` in /proc/diskstats."""
    out: dict[str, int] = {}
    with open(path, encoding="ascii") as file:
        for line in file:
            fields = line.split()
            if len(fields) >= 10 and fields[2] in disks:
                out[fields[2]] = (int(fields[5]) + int(fields[9])) * SECTOR_BYTES
    return out


def read_softirqs(path: str) -> dict[str, int]:
    """Softirq counts of all CPUs together: NET (NET_TX + NET_RX) and BLOCK."""
    out = {"net": 0, "block": 0}
    with open(path, encoding="ascii") as file:
        for line in file:
            name, _, numbers = line.partition(":")
            name = name.strip()
            if name in ("NET_TX", "NET_RX"):
                out["net"] += sum(int(v) for v in numbers.split())
            elif name == "BLOCK":
                out["block"] += sum(int(v) for v in numbers.split())
    return out


def counter_delta(now: dict[str, int], before: dict[str, int]) -> int:
    """Sum of the increases of named counters; one that went backwards restarted at 0."""
    total = 0
    for key, value in now.items():
        previous = before.get(key, value)  # a new device or interface starts here
        total += value - previous if value >= previous else value
    return total


class ActivityReader:
    """The node's network, block and softirq counters, as rates between two reads.

    A file that cannot be read leaves its features out (the caller reports them as
    missing) instead of failing the tick.
    """

    def __init__(self, procfs: str, sysfs: str) -> None:
        self.net_path = os.path.join(procfs, "net", "dev")
        self.disk_path = os.path.join(procfs, "diskstats")
        self.softirq_path = os.path.join(procfs, "softirqs")
        self.block_root = os.path.join(sysfs, "block")
        self.disks = whole_disks(sysfs)
        self._previous: dict[str, dict[str, int]] | None = None

    def unreadable(self) -> dict[str, str]:
        """Activity feature -> why this host cannot provide it."""
        out: dict[str, str] = {}
        if not os.access(self.net_path, os.R_OK):
            out["network_bytes_per_s"] = f"cannot read {self.net_path}"
        if not self.disks:
            out["block_bytes_per_s"] = f"no disk under {self.block_root}"
        elif not os.access(self.disk_path, os.R_OK):
            out["block_bytes_per_s"] = f"cannot read {self.disk_path}"
        if not os.access(self.softirq_path, os.R_OK):
            why = f"cannot read {self.softirq_path}"
            out["softirq_net_per_s"] = out["softirq_block_per_s"] = why
        return out

    def _read(self) -> dict[str, dict[str, int]]:
        counters: dict[str, dict[str, int]] = {}
        try:
            counters["network_bytes_per_s"] = read_network_bytes(self.net_path)
        except (OSError, ValueError):
            pass
        try:
            counters["block_bytes_per_s"] = read_disk_bytes(self.disk_path, self.disks)
        except (OSError, ValueError):
            pass
        try:
            counters["softirqs"] = read_softirqs(self.softirq_path)
        except (OSError, ValueError):
            pass
        return counters

    def sample(self, elapsed: float) -> dict[str, float]:
        """Rates since the last call (nothing on the first)."""
        now = self._read()
        previous, self._previous = self._previous, now
        if previous is None or elapsed <= 0:
            return {}
        out: dict[str, float] = {}
        for key in ("network_bytes_per_s", "block_bytes_per_s"):
            if key in now and key in previous and (key != "block_bytes_per_s" or self.disks):
                out[key] = counter_delta(now[key], previous[key]) / elapsed
        if "softirqs" in now and "softirqs" in previous:
            delta = {
                row: counter_delta({row: now["softirqs"][row]}, previous["softirqs"])
                for row in ("net", "block")
            }
            out["softirq_net_per_s"] = delta["net"] / elapsed
            out["softirq_block_per_s"] = delta["block"] / elapsed
        return out


@dataclass(frozen=True, slots=True)
class Missing:
    """A feature this host cannot provide, and why."""

    feature: str
    reason: str

    def __str__(self) -> str:
        return f"{self.feature} ({self.reason})"


class FeatureReader:
    """Reads the node features once per tick; the first call primes and returns None.

    ``counters`` says whether hardware counters reach the caller (an ebpf receiver
    that reads them); if not, ``counters_off`` is why, for the error that lists
    what a model misses.
    """

    def __init__(
        self,
        procfs: str,
        sysfs: str,
        counters_off: str | None = "hardware counters come only from the ebpf receiver",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stat_path = os.path.join(procfs, "stat")
        self.sysfs = sysfs
        self.freq_files = cpufreq_files(sysfs)
        self.counters_off = counters_off
        self.read_frequency = True  # off where the model does not use the frequency
        self.read_activity = True  # off where the model uses no activity feature
        self.activity = ActivityReader(procfs, sysfs)
        self._clock = clock
        self._previous: tuple[float, int, int] | None = None
        self.elapsed = 0.0  # seconds of the last sampled tick

    def missing(self, wanted: Iterable[str]) -> list[Missing]:
        """Which of ``wanted`` this host does not provide, in the given order."""
        out: list[Missing] = []
        for name in wanted:
            if name == "cpu_frequency_ghz" and not self.freq_files:
                where = os.path.join(self.sysfs, "devices/system/cpu/cpu*/cpufreq")
                out.append(Missing(name, f"no scaling_cur_freq under {where}"))
            elif name in COUNTER_FEATURES and self.counters_off is not None:
                out.append(Missing(name, self.counters_off))
            elif name in ACTIVITY_FEATURES and name in self.activity.unreadable():
                out.append(Missing(name, self.activity.unreadable()[name]))
            elif name not in FEATURES:
                out.append(Missing(name, "not a feature this agent knows"))
        return out

    def sample(self, processes: Iterable[ProcessSample] = ()) -> dict[str, float] | None:
        """This tick's features (counters from ``processes``, where counters are on)."""
        busy, total = read_cpu_times(self.stat_path)
        now = self._clock()
        previous, self._previous = self._previous, (now, busy, total)
        elapsed = now - previous[0] if previous is not None else 0.0
        activity = self.activity.sample(elapsed) if self.read_activity else {}
        if previous is None:
            return None
        d_busy = max(0, busy - previous[1])
        d_total = total - previous[2]
        self.elapsed = elapsed
        ratio = min(max(d_busy / d_total, 0.0), 1.0) if d_total > 0 else 0.0
        rate = 1.0 / elapsed if elapsed > 0 else 0.0
        features = {
            "cpu_usage_ratio": ratio,
            "cpu_seconds_per_s": d_busy / CLOCK_TICKS * rate,
        }
        if self.read_frequency:
            frequency = read_frequency_ghz(self.freq_files)
            if frequency is not None:
                features["cpu_frequency_ghz"] = frequency
        if self.counters_off is None:
            for name, count in counter_totals(processes).items():
                features[name] = count * rate
        features.update(activity)
        return features

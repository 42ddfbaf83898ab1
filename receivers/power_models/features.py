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
=====================  =======  ======================================================

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
}
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
            elif name not in FEATURES:
                out.append(Missing(name, "not a feature this agent knows"))
        return out

    def sample(self, processes: Iterable[ProcessSample] = ()) -> dict[str, float] | None:
        """This tick's features (counters from ``processes``, where counters are on)."""
        busy, total = read_cpu_times(self.stat_path)
        now = self._clock()
        previous, self._previous = self._previous, (now, busy, total)
        if previous is None:
            return None
        elapsed = now - previous[0]
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
        return features

"""One sample a container (or pod, or the rest of the node) instead of one a process.

When no processor of the receiver's pipelines uses each process (the node, container
and pod levels), the attribution processor only needs what the processes add up to per
workload; handing it one sample per workload instead of one per process saves its
per-process work, which at those levels is most of a tick. The sums keep the rules of
process samples: this interval's CPU time and counters are summed (an ended process's
last interval included), the cumulative CPU time of a workload first seen is what its
processes had used (Kepler's rule), and a workload whose last process ended is reported
in ``exited`` once.
"""

from __future__ import annotations

from dataclasses import dataclass

from otel_kepler.data import NO_WORKLOAD, ProcessSample, Workload


@dataclass(slots=True)
class _Sum:
    pid: int  # the sample's pid: 0 for the rest of the node, negative for a workload
    cpu_seconds: float  # cumulative
    new: bool  # first seen this tick: its processes' whole CPU time counts


class WorkloadSums:
    """Sums process samples by workload, tick after tick."""

    def __init__(self) -> None:
        self._sums: dict[Workload, _Sum] = {}
        self._next_pid = -1

    def collapse(
        self, processes: dict[int, ProcessSample], exited: list[ProcessSample]
    ) -> tuple[dict[int, ProcessSample], list[ProcessSample]]:
        """(one sample per workload with live processes, one per workload that ended)."""
        live: dict[Workload, ProcessSample] = {}
        for sample in processes.values():
            self._add(live, sample)
        ended: dict[Workload, ProcessSample] = {}
        for sample in exited:
            self._add(live if sample.workload in live else ended, sample)
        for key in self._sums.keys() - live.keys():  # ended, or gone without a record
            del self._sums[key]
        for known in self._sums.values():
            known.new = False
        return {s.pid: s for s in live.values()}, list(ended.values())

    def _add(self, table: dict[Workload, ProcessSample], sample: ProcessSample) -> None:
        key = sample.workload
        known = self._sums.get(key)
        if known is None:
            pid = 0
            if key != NO_WORKLOAD:
                pid, self._next_pid = self._next_pid, self._next_pid - 1
            known = self._sums[key] = _Sum(pid, 0.0, True)
        known.cpu_seconds += sample.cpu_seconds if known.new else sample.cpu_delta
        total = table.get(key)
        if total is None:
            total = table[key] = ProcessSample(
                known.pid, 0, "", "", key, 0.0, 0.0, read_bytes=-1, write_bytes=-1
            )
        total.cpu_seconds = known.cpu_seconds
        total.cpu_delta += sample.cpu_delta
        total.cycles += sample.cycles
        total.instructions += sample.instructions
        total.cache_misses += sample.cache_misses
        total.net_tx_irq += sample.net_tx_irq
        total.net_rx_irq += sample.net_rx_irq
        total.block_irq += sample.block_irq

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
    workload: Workload  # held: its id is the key
    cpu_seconds: float  # cumulative
    new: bool  # first seen this tick: its processes' whole CPU time counts


class WorkloadSums:
    """Sums process samples by workload, tick after tick.

    Keyed by the workload object's identity (one object per container, as the cgroup
    parser hands them out): hashing the frozen dataclass for each process each tick cost
    more than the sum. Two equal objects only make two samples of one container, which
    the processor adds up.
    """

    def __init__(self) -> None:
        self._sums: dict[int, _Sum] = {}
        self._next_pid = -1

    def collapse(
        self, processes: dict[int, ProcessSample], exited: list[ProcessSample]
    ) -> tuple[dict[int, ProcessSample], list[ProcessSample]]:
        """(one sample per workload with live processes, one per workload that ended)."""
        live: dict[int, ProcessSample] = {}
        sums = self._sums
        for sample in processes.values():
            key = id(sample.workload)
            if (
                key in live
                and not sample.cpu_delta
                and not sums[key].new
                and not (sample.cycles or sample.instructions or sample.cache_misses)
                and not (sample.net_tx_irq or sample.net_rx_irq or sample.block_irq)
            ):
                continue  # it did not run: it adds nothing (most processes, most ticks)
            self._add(live, sample)
        ended: dict[int, ProcessSample] = {}
        for sample in exited:
            self._add(live if id(sample.workload) in live else ended, sample)
        for key in sums.keys() - live.keys():  # ended, or gone without a record
            del sums[key]
        for known in sums.values():
            known.new = False
        return {s.pid: s for s in live.values()}, list(ended.values())

    def _add(self, table: dict[int, ProcessSample], sample: ProcessSample) -> None:
        workload = sample.workload
        key = id(workload)
        known = self._sums.get(key)
        if known is None:
            pid = 0
            if workload is not NO_WORKLOAD:
                pid, self._next_pid = self._next_pid, self._next_pid - 1
            known = self._sums[key] = _Sum(pid, workload, 0.0, True)
        known.cpu_seconds += sample.cpu_seconds if known.new else sample.cpu_delta
        total = table.get(key)
        if total is None:
            total = table[key] = ProcessSample(
                known.pid, 0, "", "", workload, 0.0, 0.0, read_bytes=-1, write_bytes=-1
            )
        total.cpu_seconds = known.cpu_seconds
        total.cpu_delta += sample.cpu_delta
        total.cycles += sample.cycles
        total.instructions += sample.instructions
        total.cache_misses += sample.cache_misses
        total.net_tx_irq += sample.net_tx_irq
        total.net_rx_irq += sample.net_rx_irq
        total.block_irq += sample.block_irq

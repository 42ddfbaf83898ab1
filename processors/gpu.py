"""GPU energy split: idle stays with the GPU, active goes to the processes that used it.

Per GPU and tick (Kepler's rule, made to conserve energy):

* idle power is the configured ``idle_watts``, else the lowest power seen while no
  compute process ran, else (nothing idle seen yet) the lowest power seen at all;
* idle joules = min(idle power x interval, measured joules); active = the rest;
* active is split by each process's share of the SM utilisation in the interval,
  or evenly among the running compute processes when no utilisation samples exist;
  with no process at all the whole interval is idle.

So per tick and GPU, the processes' joules plus idle equal the counter's joules.
"""

from __future__ import annotations

from otel_kepler.data import GpuEnergy, GpuSample


class GpuSplitter:
    """Keeps each GPU's totals and learned idle power between ticks."""

    def __init__(self, node_name: str = "") -> None:
        self.node_name = node_name
        self._gpus: dict[str, GpuEnergy] = {}
        self._lowest_idle: dict[str, float] = {}  # uuid -> lowest W with nothing running
        self._lowest_any: dict[str, float] = {}  # uuid -> lowest W seen at all

    def split(
        self, samples: list[GpuSample], interval: float
    ) -> tuple[list[GpuEnergy], dict[int, list[tuple[str, float]]]]:
        """This tick's GPUs, and per pid the (GPU uuid, active joules) it gets."""
        gpus: list[GpuEnergy] = []
        shares: dict[int, list[tuple[str, float]]] = {}
        for sample in samples:
            gpu = self._state(sample)
            idle_watts = self._idle_watts(sample)
            gpu.idle_watts = idle_watts
            gpu.interval_joules = sample.joules
            gpu.watts = sample.joules / interval if interval > 0 else sample.watts
            idle = min(idle_watts * interval, sample.joules) if idle_watts is not None else 0.0
            weights = _weights(sample)
            if not weights:
                idle = sample.joules
            active = sample.joules - idle
            gpu.total_joules += sample.joules
            gpu.idle_total_joules += idle
            gpu.active_total_joules += active
            total_weight = sum(weights.values())
            for pid, weight in weights.items():
                shares.setdefault(pid, []).append((sample.uuid, active * weight / total_weight))
            gpus.append(gpu)
        return gpus, shares

    def _state(self, sample: GpuSample) -> GpuEnergy:
        gpu = self._gpus.get(sample.uuid)
        if gpu is None:
            attrs = {
                "gpu": str(sample.index),
                "gpu_uuid": sample.uuid,
                "gpu_name": sample.name,
                "source": "nvml",
            }
            if sample.attributes:
                attrs.update(sample.attributes)
            if self.node_name:
                attrs["node_name"] = self.node_name
            gpu = GpuEnergy(sample.uuid, attrs, 0.0, 0.0, 0.0, 0.0, 0.0, None)
            self._gpus[sample.uuid] = gpu
        return gpu

    def _idle_watts(self, sample: GpuSample) -> float | None:
        """Configured idle power, else the lowest power seen idle, else the lowest seen."""
        uuid, watts = sample.uuid, sample.watts
        if watts > 0:
            self._lowest_any[uuid] = min(self._lowest_any.get(uuid, watts), watts)
            if not sample.running and not sample.sm_util:
                self._lowest_idle[uuid] = min(self._lowest_idle.get(uuid, watts), watts)
        if sample.idle_watts is not None:
            return sample.idle_watts
        return self._lowest_idle.get(uuid, self._lowest_any.get(uuid))


def _weights(sample: GpuSample) -> dict[int, float]:
    """pid -> weight of its share: SM utilisation, else an even split of the running."""
    busy = {pid: util for pid, util in sample.sm_util.items() if util > 0}
    if busy:
        return busy
    return {pid: 1.0 for pid in sample.running}

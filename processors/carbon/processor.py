"""The ``carbon`` processor: grams of CO2e per tick, node and workloads, from a provider chain.

Per tick, with I the grid intensity in force during the tick (gCO2e/kWh, asked for at
the middle of the interval) and E a tick's joules (see :mod:`.accounting`)::

    grams += E / 3.6e6 x I x PUE

so a run's total is sum(E_i x I_i), never the total energy x today's intensity.

* ``CarbonState.node_grams``: the node's operational emissions, idle included;
* ``WorkloadEnergy.co2_grams``: each process, container and pod, from its
  attributed joules only (idle stays with the node, as in attribution);
* ``CarbonState.embodied_grams``: total_kg x 1000 / (lifetime in seconds) per second
  of run time; it stays with the node, like idle energy (SCI's M, time-share;
  docs/carbon.md shows how to take a workload's resource share);
* the intensity itself, with the provider that gave it and its region.

Providers are asked in order; the first with a value for now wins. When none has one,
the last intensity in force is held (logged once); before any has had one, emissions
are not counted (logged once) and nothing carbon is reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from otel_kepler.component import Processor
from otel_kepler.data import Batch, CarbonState

from .accounting import SECONDS_PER_YEAR, WorkloadMeter, grams_per_joule, node_joules
from .config import CarbonConfig
from .providers import ProviderChain

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InForce:
    """The intensity used for a tick and where it came from."""

    value: float
    provider: str
    region: str


class CarbonProcessor(Processor):
    uses_processes = False  # works on what attribution made of the samples

    def __init__(self, config: CarbonConfig, chain: ProviderChain) -> None:
        self.chain = chain
        self.pue = config.pue
        self.platform_zones = tuple(config.platform_zones)
        lifetime_s = config.embodied.lifetime_years * SECONDS_PER_YEAR
        self.embodied_per_second = config.embodied.total_kg * 1000.0 / lifetime_s
        self.node_grams = 0.0
        self.embodied_grams = 0.0
        self.meter = WorkloadMeter()
        self.in_force: InForce | None = None  # the last intensity used
        self._holding = False  # no provider has a value: logged once

    def start(self) -> None:
        self.chain.start()

    def shutdown(self) -> None:
        self.chain.shutdown()

    def process(self, batch: Batch) -> None:
        interval = batch.interval_s
        in_force = self.select(batch.timestamp_ns / 1e9 - interval / 2)
        self.embodied_grams += self.embodied_per_second * interval
        per_joule = grams_per_joule(in_force.value, self.pue) if in_force is not None else None
        if per_joule is not None:
            self.node_grams += node_joules(batch, self.platform_zones) * per_joule
        meter = self.meter
        for w in batch.workloads:
            joules = meter.joules(w, interval)
            if per_joule is not None:
                w.co2_grams = (w.co2_grams or 0.0) + joules * per_joule
        meter.end_tick(batch.workloads)
        if in_force is not None:
            batch.carbon = CarbonState(
                in_force.value,
                in_force.provider,
                in_force.region,
                self.node_grams,
                self.embodied_grams,
            )

    def select(self, at: float) -> InForce | None:
        """The intensity in force at ``at``: the chain's first value, else the last one."""
        hit = self.chain.current(at)
        if hit is None:
            if not self._holding:
                self._holding = True
                self._log_none()
            return self.in_force
        provider, found = hit
        previous = self.in_force
        self.in_force = InForce(found.value, provider.name, found.region)
        if self._holding or previous is None or previous.provider != provider.name:
            self._log_switch(previous, provider.name)
        self._holding = False
        return self.in_force

    def _log_none(self) -> None:
        why = self.chain.statuses()
        held = self.in_force
        if held is None:
            log.warning("carbon: no provider has an intensity yet (%s); not counting", why)
        else:
            log.warning(
                "carbon: no provider has an intensity now (%s); holding %g gCO2e/kWh from %s",
                why,
                held.value,
                held.provider,
            )

    def _log_switch(self, previous: InForce | None, name: str) -> None:
        order = [p.name for p in self.chain.providers]
        if previous is None or order.index(name) <= order.index(previous.provider):
            log.info("carbon: intensity from %s", name)
            return
        skipped = self.chain.providers[: order.index(name)]
        why = "; ".join(f"{p.name}: {p.status() or 'no value'}" for p in skipped)
        log.warning("carbon: intensity from %s now (%s)", name, why)

"""The ``carbon`` processor: joules to grams of CO2-equivalent, per tick.

Runs after ``attribution`` (and ``k8sattributes``). Per tick it asks a chain of grid
intensity providers (``static``, ``region``, ``file``, ``electricitymaps``,
``watttime``) for the intensity in force, and accumulates
``joules / 3.6e6 x gCO2e/kWh x PUE`` for the node (idle included) and for every
process, container and pod reported (their attributed joules only). The node's
embodied emissions, amortised per second over its lifetime, accumulate as a separate
series that stays with the node, like idle energy.

Decisions (docs/carbon.md has the long form):

* Node joules: a whole-node meter (platform zone ``platform`` or ``battery``) where one
  reports, else package + dram (psys where there is no package; core and uncore never,
  they are inside package) + GPUs. One source per zone (rapl, ipmi, ... a model last).
* Workload joules: the same zone rule over the difference of its cumulative joules
  since the previous tick (exact, and robust to a zone missing for a tick), plus GPUs.
* The intensity is asked for at the middle of the tick's interval; HTTP providers
  answer from their last response (polled in a background thread, cached
  ``cache_for``, valid ``max_age``); no network I/O ever runs in ``process()``.
* When no provider has a value, the last intensity in force is held; before the
  first value, nothing is counted. Both are logged once.

Outputs (converted by :mod:`otel_kepler.convert`): ``kepler.{node,process,container,pod}.co2``
(g, monotonic), ``kepler.node.embodied.co2`` (g) and ``kepler.grid.carbon.intensity``
(g/kWh, with ``provider`` and ``region``).
"""

from __future__ import annotations

from otel_kepler import metadata as md
from otel_kepler import metrics as m
from otel_kepler.component import Factory, HostSettings

from .config import CarbonConfig
from .processor import CarbonProcessor
from .providers import build_chain

__all__ = ["CarbonConfig", "CarbonProcessor", "factory"]


def _create(name: str, config: CarbonConfig, host: HostSettings) -> CarbonProcessor:
    return CarbonProcessor(config, build_chain(config, host))


factory = Factory(
    type="carbon",
    description="Grams of CO2e of node and workload energy, from a chain of grid intensity "
    "providers",
    config_class=CarbonConfig,
    create=_create,
    metrics=(
        md.MetricSpec(m.CO2["node"], md.NODE),
        md.MetricSpec(m.NODE_EMBODIED_CO2, md.NODE, "with embodied emissions configured"),
        md.MetricSpec(m.GRID_INTENSITY, ("provider", "region", *md.NODE)),
        *(
            md.MetricSpec(m.CO2[level], (*labels, "state"), f"with {level} in levels")
            for level, labels in md.LEVEL_LABELS.items()
        ),
    ),
)

"""The ``estimator`` receiver: modelled CPU energy for hosts without a meter (VMs).

Where RAPL is absent, Kepler reports nothing. This receiver reports an
estimate instead, from the node's CPU usage ratio (``/proc/stat``, the same
ratio attribution uses) and a linear power curve::

    P = idle_watts + (max_watts - idle_watts) * ratio
    E = P * (seconds between two collects, time.monotonic)

The readings carry ``source="model"`` and ``model="linear"`` so that nobody
mistakes them for a measurement.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from otel_kepler.component import Availability, ComponentError, Factory, HostSettings, Receiver
from otel_kepler.data import Contribution, EnergyReading
from otel_kepler.receivers.procfs.stat import StatError, UsageRatio, read_cpu_times
from otel_kepler.schema import ConfigError

#: Default power per logical CPU (vCPU) at 0% and 100% usage, in watts.
IDLE_WATTS_PER_CPU = 0.74
MAX_WATTS_PER_CPU = 3.5


def cpu_count() -> int:
    return os.cpu_count() or 1


def default_idle_watts() -> float:
    return IDLE_WATTS_PER_CPU * cpu_count()


def default_max_watts() -> float:
    return MAX_WATTS_PER_CPU * cpu_count()


@dataclass
class EstimatorConfig:
    """Modelled CPU power from /proc/stat usage: idle + (max - idle) * usage ratio.

    Left unset, idle_watts = 0.74 W and max_watts = 3.5 W per logical CPU
    (``os.cpu_count()``). These are the average per-vCPU figures of the
    Cloud Carbon Footprint methodology for AWS, taken from SPECpower_ssj2008
    results of the server CPUs clouds run: the power of a VM's share of a
    server at 0% and 100% load. They are consistent with server TDPs: 3.5 W
    per hyperthread is 7 W per core, e.g. a 40-core 270 W Xeon or a 64-core
    280 W EPYC is 4.4 to 7 W per core at full load. Being whole-server
    figures they slightly overstate the package alone; set both values when
    the hardware is known (e.g. idle from the vendor's power data, max from TDP
    divided by the cores this host gets).
    """

    idle_watts: float | None = field(
        default=None,
        metadata={"doc": "power at 0% CPU usage; default 0.74 W per logical CPU"},
    )
    max_watts: float | None = field(
        default=None,
        metadata={"doc": "power at 100% CPU usage; default 3.5 W per logical CPU"},
    )

    def resolved(self) -> tuple[float, float]:
        """(idle, max) in watts, with the defaults for this host's CPU count filled in."""
        idle = default_idle_watts() if self.idle_watts is None else self.idle_watts
        peak = default_max_watts() if self.max_watts is None else self.max_watts
        return idle, peak

    def validate(self) -> None:
        idle, peak = self.resolved()
        if idle < 0:
            raise ConfigError("idle_watts", f"must be 0 or more, got {idle:g}")
        if peak > idle:
            return
        if self.max_watts is None:
            raise ConfigError(
                "idle_watts",
                f"must be less than max_watts, whose default for {cpu_count()} CPUs is "
                f"{peak:g} W; got {idle:g} (set max_watts too)",
            )
        default = "" if self.idle_watts is not None else f", the default for {cpu_count()} CPUs"
        raise ConfigError(
            "max_watts", f"must be greater than idle_watts ({idle:g}{default}), got {peak:g}"
        )


class EstimatorReceiver(Receiver):
    """Integrates the linear power model over the real interval between collects."""

    def __init__(
        self,
        name: str,
        config: EstimatorConfig,
        host: HostSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.idle_watts, self.max_watts = config.resolved()
        self._usage = UsageRatio(host.procfs)
        self.stat_path = self._usage.path
        self._clock = clock
        self._last_read: float | None = None

    def start(self) -> None:
        try:
            read_cpu_times(self.stat_path)
        except StatError as err:
            raise ComponentError(str(err)) from None

    def watts(self, ratio: float) -> float:
        return self.idle_watts + (self.max_watts - self.idle_watts) * ratio

    def collect(self) -> Contribution:
        try:
            ratio = self._usage.update()
        except StatError as err:
            raise ComponentError(str(err)) from None
        now = self._clock()  # taken with the read, so both describe the same interval
        previous, self._last_read = self._last_read, now
        if ratio is None or previous is None:
            return Contribution()  # the first collect primes
        reading = EnergyReading(
            component="cpu",
            zone="package",
            source="model",
            joules=self.watts(ratio) * (now - previous),
            attributes={"model": "linear"},
        )
        return Contribution(energy=[reading], cpu_usage_ratio=ratio)


def doctor(host: HostSettings) -> Availability:
    """Available wherever /proc/stat is readable, which is everywhere Linux runs."""
    receiver = EstimatorReceiver("estimator", EstimatorConfig(), host)
    try:
        receiver.start()
    except ComponentError as err:
        return Availability(False, str(err))
    return Availability(
        True,
        f"linear model over {receiver.stat_path}: {receiver.idle_watts:g} W idle to "
        f"{receiver.max_watts:g} W at full load for {cpu_count()} CPUs",
    )


def _create(name: str, config: EstimatorConfig, host: HostSettings) -> EstimatorReceiver:
    return EstimatorReceiver(name, config, host)


factory: Factory[EstimatorConfig, Receiver] = Factory(
    type="estimator",
    description="modelled CPU energy from /proc/stat usage, for hosts without RAPL (VMs)",
    config_class=EstimatorConfig,
    create=_create,
    doctor=doctor,
)

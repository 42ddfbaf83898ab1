"""The ``estimator`` receiver: modelled energy for hosts without a meter (VMs, non-root).

Where RAPL is absent, Kepler reports nothing. This receiver reports an estimate
instead, from per-tick features of the node, with one of three models:

``linear`` (the default)
    ``P = idle_watts + (max_watts - idle_watts) * ratio`` over the node's CPU usage
    ratio (``/proc/stat``, the same ratio attribution uses).
``curve``
    SPECpower_ssj2008's 11 published points (active idle, 10% ... 100%), interpolated
    at the usage ratio: a shipped result matched to this host's CPU, the user's own
    points, or the table's median curve scaled to the CPU's TDP (see
    :mod:`otel_kepler.receivers.power_models.curve`).
``regression``
    A model file trained with ``otel-kepler train`` on a node with a real meter
    (see :mod:`otel_kepler.receivers.power_models.regression`).

Energy is the modelled power times the seconds between two collects
(time.monotonic). The readings carry ``source="model"`` and a ``model`` attribute
(``linear``, ``curve``, ``regression``; curve and regression add ``model_name``)
so that nobody mistakes them for a measurement.

With ``calibrate_from`` naming a platform meter of the same pipeline (ipmi,
redfish, acpi, hwmon), the line ``idle + dynamic x usage`` is fitted online to that
meter (see :mod:`otel_kepler.receivers.power_models.calibration`); once enough
ticks exist the readings say ``model="calibrated"`` and the fit's error is reported
as the gauge ``kepler.node.estimator.fit.error``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from otel_kepler import metadata as md
from otel_kepler import metrics as m
from otel_kepler.component import Availability, ComponentError, Factory, HostSettings, Receiver
from otel_kepler.data import Component, Contribution, GaugeValue, ProcessSample
from otel_kepler.receivers.ebpf import EbpfConfig, EbpfReceiver
from otel_kepler.receivers.power_models import curve, regression
from otel_kepler.receivers.power_models.calibration import Calibrator, ModelReading
from otel_kepler.receivers.power_models.features import (
    ACTIVITY_FEATURES,
    COUNTER_FEATURES,
    FeatureReader,
)
from otel_kepler.receivers.power_models.fit import Line
from otel_kepler.receivers.procfs.stat import StatError, read_cpu_times
from otel_kepler.schema import ConfigError

log = logging.getLogger(__name__)

#: Default power per logical CPU (vCPU) at 0% and 100% usage, in watts.
IDLE_WATTS_PER_CPU = 0.74
MAX_WATTS_PER_CPU = 3.5

#: where each output zone is reported: (component, zone)
OUTPUT: dict[str, tuple[Component, str]] = {
    "package": ("cpu", "package"),
    "dram": ("cpu", "dram"),
    "platform": ("platform", "platform"),
}


def cpu_count() -> int:
    return os.cpu_count() or 1


def default_idle_watts() -> float:
    return IDLE_WATTS_PER_CPU * cpu_count()


def default_max_watts() -> float:
    return MAX_WATTS_PER_CPU * cpu_count()


@dataclass
class CurveConfig:
    """SPECpower_ssj2008 curve: watts at active idle and 10% ... 100% load."""

    points: list[float] = field(
        default_factory=list,
        metadata={
            "doc": "your own 11 watts values (active idle, 10% ... 100%); empty: the "
            "shipped result matching this host's CPU model and sockets"
        },
    )
    result: str = field(
        default="",
        metadata={"doc": "use this shipped result (power_ssj2008-YYYYMMDD-NNNNN) whatever the CPU"},
    )
    tdp_watts: float | None = field(
        default=None,
        metadata={
            "doc": "TDP per socket for an unmatched host; default: RAPL's package constraint "
            "where /sys shows it, else 3.5 W per logical CPU at full load"
        },
    )
    share: float = field(
        default=1.0,
        metadata={"doc": "the part of the server this host is (a VM: its share of the cores)"},
    )
    zone: Literal["package", "platform"] = field(
        default="package",
        metadata={
            "doc": "report as the CPU package (split over workloads by attribution) or as "
            "node platform power (SPECpower measures the whole server at the wall)"
        },
    )

    def validate(self) -> None:
        if self.points:
            try:
                curve.check_points(self.points)
            except curve.CurveError as err:
                raise ConfigError("points", str(err)) from None
            if self.result:
                raise ConfigError("result", "give points or result, not both")
        if not 0 < self.share <= 1:
            raise ConfigError("share", f"must be above 0 and at most 1, got {self.share:g}")
        if self.tdp_watts is not None and self.tdp_watts <= 0:
            raise ConfigError("tdp_watts", f"must be greater than 0, got {self.tdp_watts:g}")


@dataclass
class RegressionConfig:
    """A model file from ``otel-kepler train``."""

    file: str = field(default="", metadata={"doc": "the model file (JSON)"})
    idle_watts: float | None = field(
        default=None,
        metadata={
            "doc": "dynamic models: the idle power to add, instead of the one measured when "
            "the model was trained"
        },
    )
    counters: Literal["none", "ebpf"] = field(
        default="none",
        metadata={
            "doc": "ebpf: read cycles, instructions and cache misses through an embedded ebpf "
            "receiver (which then also reports the processes: list no other usage receiver)"
        },
    )
    ebpf: EbpfConfig = field(
        default_factory=EbpfConfig,
        metadata={"doc": "the embedded ebpf receiver's settings, with counters: ebpf"},
    )

    def validate(self) -> None:
        if self.idle_watts is not None and self.idle_watts < 0:
            raise ConfigError("idle_watts", f"must be 0 or more, got {self.idle_watts:g}")


@dataclass
class CalibrationConfig:
    """How the line is fitted to the meter named by ``calibrate_from``."""

    window: int = field(default=120, metadata={"doc": "ticks the least-squares fit covers"})
    min_ticks: int = field(
        default=20,
        metadata={
            "doc": "meter readings the fit needs, after the first max_lag + max_smooth - 1 "
            "(which only feed the lagged and averaged usage), before it is used"
        },
    )
    max_lag: int = field(
        default=3, metadata={"doc": "largest delay of the meter behind usage tried, in ticks"}
    )
    max_smooth: int = field(
        default=4,
        metadata={"doc": "longest meter averaging window tried, in ticks (a moving average)"},
    )
    min_spread: float = field(
        default=0.1,
        metadata={
            "doc": "usage must span this much over the window for the slope to be fitted; "
            "below it only idle is fitted and the configured model's slope is kept"
        },
    )

    def validate(self) -> None:
        if self.window < 2:
            raise ConfigError("window", f"must be 2 or more, got {self.window}")
        if not 2 <= self.min_ticks <= self.window:
            raise ConfigError(
                "min_ticks", f"must be between 2 and window ({self.window}), got {self.min_ticks}"
            )
        for key in ("max_lag", "max_smooth"):
            if getattr(self, key) < (0 if key == "max_lag" else 1):
                raise ConfigError(key, f"must be {0 if key == 'max_lag' else 1} or more")
        if not 0 <= self.min_spread < 1:
            raise ConfigError("min_spread", f"must be in [0, 1), got {self.min_spread:g}")


@dataclass
class EstimatorConfig:
    """Modelled power from node features: linear (the default), curve or regression.

    linear: idle + (max - idle) * usage ratio. Left unset, idle_watts = 0.74 W and
    max_watts = 3.5 W per logical CPU (``os.cpu_count()``). These are the average
    per-vCPU figures of the Cloud Carbon Footprint methodology for AWS, taken from
    SPECpower_ssj2008 results of the server CPUs clouds run: the power of a VM's
    share of a server at 0% and 100% load. They are consistent with server TDPs:
    3.5 W per hyperthread is 7 W per core, e.g. a 40-core 270 W Xeon or a 64-core
    280 W EPYC is 4.4 to 7 W per core at full load. Being whole-server figures they
    slightly overstate the package alone; set both values when the hardware is known.
    """

    idle_watts: float | None = field(
        default=None,
        metadata={"doc": "linear: power at 0% CPU usage; default 0.74 W per logical CPU"},
    )
    max_watts: float | None = field(
        default=None,
        metadata={"doc": "linear: power at 100% CPU usage; default 3.5 W per logical CPU"},
    )
    model: Literal["linear", "curve", "regression"] = field(
        default="linear", metadata={"doc": "which model estimates the power"}
    )
    curve: CurveConfig = field(
        default_factory=CurveConfig, metadata={"doc": "the curve model's settings"}
    )
    regression: RegressionConfig = field(
        default_factory=RegressionConfig, metadata={"doc": "the regression model's settings"}
    )
    calibrate_from: Literal["ipmi", "redfish", "acpi", "hwmon"] | None = field(
        default=None,
        metadata={
            "doc": "fit idle and dynamic watts online to this platform meter of the same "
            "pipeline (needs the attribution processor in it); the configured model is used "
            "until calibration.min_ticks ticks exist"
        },
    )
    calibration: CalibrationConfig = field(
        default_factory=CalibrationConfig, metadata={"doc": "the calibration's settings"}
    )

    def resolved(self) -> tuple[float, float]:
        """(idle, max) in watts, with the defaults for this host's CPU count filled in."""
        idle = default_idle_watts() if self.idle_watts is None else self.idle_watts
        peak = default_max_watts() if self.max_watts is None else self.max_watts
        return idle, peak

    def validate(self) -> None:
        if self.model != "linear":
            for key in ("idle_watts", "max_watts"):
                if getattr(self, key) is not None:
                    raise ConfigError(
                        key, f"is a setting of model: linear, not of model: {self.model}"
                    )
            if self.model == "regression" and not self.regression.file:
                raise ConfigError("regression.file", "is required with model: regression")
            return
        self._validate_linear()

    def _validate_linear(self) -> None:
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


# -- the models -------------------------------------------------------------------------


class PowerModel(Protocol):
    """What the receiver needs of a model: its inputs, its output zone, and watts."""

    @property
    def features(self) -> tuple[str, ...]: ...

    @property
    def output(self) -> str:
        """package, dram or platform"""
        ...

    @property
    def attributes(self) -> dict[str, str]: ...

    def watts(self, features: Mapping[str, float]) -> float: ...


@dataclass
class LinearModel:
    idle_watts: float
    max_watts: float
    features: tuple[str, ...] = ("cpu_usage_ratio",)
    output: str = "package"
    attributes: dict[str, str] = field(default_factory=lambda: {"model": "linear"})

    def watts(self, features: Mapping[str, float]) -> float:
        ratio = features["cpu_usage_ratio"]
        return self.idle_watts + (self.max_watts - self.idle_watts) * ratio


@dataclass
class CurveModel:
    points: tuple[float, ...]
    name: str  # the result id, "config" or "tdp"
    output: str = "package"
    features: tuple[str, ...] = ("cpu_usage_ratio",)

    @property
    def attributes(self) -> dict[str, str]:
        return {"model": "curve", "model_name": self.name}

    def watts(self, features: Mapping[str, float]) -> float:
        return curve.interpolate(self.points, features["cpu_usage_ratio"])


@dataclass
class RegressionModel:
    model: regression.PowerModel
    idle_watts: float | None = None  # configured idle for dynamic models

    @property
    def features(self) -> tuple[str, ...]:
        return self.model.features

    @property
    def output(self) -> str:
        return self.model.zone

    @property
    def attributes(self) -> dict[str, str]:
        return {"model": "regression", "model_name": self.model.name}

    def watts(self, features: Mapping[str, float]) -> float:
        return self.model.predict_features(features, self.idle_watts)


# -- building the curve ---------------------------------------------------------------


def build_curve(config: CurveConfig, host: HostSettings) -> CurveModel:
    """The curve for this host: configured points, a matched result, or the TDP fallback."""
    if config.points:
        return _scaled(tuple(config.points), "config", config)
    table = curve.load_table()
    if config.result:
        for result in table:
            if result.id == config.result:
                return _scaled(result.watts, result.id, config)
        raise ComponentError(f'curve.result: no shipped result "{config.result}"')
    info = curve.read_cpuinfo(os.path.join(host.procfs, "cpuinfo"))
    row = curve.find(table, info.model_name, info.sockets)
    if row is not None:
        log.info(
            "estimator: curve of SPECpower_ssj2008 result %s (%s, %d x %s) for %r: "
            "%g W idle, %g W at full load",
            row.id, row.system, row.sockets, row.cpu, info.model_name, row.watts[0], row.watts[-1],
        )  # fmt: skip
        return _scaled(row.watts, row.id, config)
    peak, how = fallback_peak(config, host, info)
    shape = curve.median_shape(table)
    log.warning(
        "estimator: no SPECpower_ssj2008 result in the table for %r with %d socket(s); using "
        "the median curve of its %d results scaled to %.1f W at full load (%s)",
        info.model_name, info.sockets, len(table), peak, how,
    )  # fmt: skip
    return _scaled(curve.scaled_curve(shape, peak), "tdp", config)


def _scaled(points: tuple[float, ...], name: str, config: CurveConfig) -> CurveModel:
    return CurveModel(tuple(p * config.share for p in points), name, config.zone)


def fallback_peak(
    config: CurveConfig, host: HostSettings, info: curve.CpuInfo
) -> tuple[float, str]:
    """Full-load watts of an unmatched host: TDP for this host's cores, and how it was found."""
    tdp, where = config.tdp_watts, "configured"
    if tdp is None:
        tdp = rapl_tdp_watts(host.sysfs)
        where = "RAPL package constraint"
    logical = info.logical_cpus or cpu_count()
    if tdp is None:
        return MAX_WATTS_PER_CPU * logical, f"no TDP known: {MAX_WATTS_PER_CPU} W x {logical} CPUs"
    if info.cores_per_socket <= 0:
        peak = tdp * info.sockets
        return peak, f"{where} TDP {tdp:g} W x {info.sockets} socket(s)"
    threads = max(1, info.siblings // info.cores_per_socket) if info.siblings else 1
    cores = logical / threads
    peak = tdp * cores / info.cores_per_socket
    return peak, (
        f"{where} TDP {tdp:g} W per {info.cores_per_socket}-core socket x {cores:g} cores here"
    )


def rapl_tdp_watts(sysfs: str) -> float | None:
    """Package-0's long-term power limit (the TDP) from powercap, readable without root."""
    zone = os.path.join(sysfs, "class", "powercap", "intel-rapl:0")
    for name in ("constraint_0_max_power_uw", "constraint_0_power_limit_uw"):
        try:
            with open(os.path.join(zone, name), encoding="ascii") as file:
                value = int(file.read())
        except (OSError, ValueError):
            continue
        if value > 0:
            return value / 1e6
    return None


# -- the receiver ---------------------------------------------------------------------


class EstimatorReceiver(Receiver):
    """Integrates the configured model over the real interval between collects."""

    def __init__(
        self,
        name: str,
        config: EstimatorConfig,
        host: HostSettings,
        clock: Callable[[], float] = time.monotonic,
        usage: Receiver | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.host = host
        self.idle_watts, self.max_watts = config.resolved()
        needs_counters = config.model == "regression" and config.regression.counters == "ebpf"
        if usage is None and needs_counters:
            usage = EbpfReceiver(f"{name}/ebpf", config.regression.ebpf, host)
        self._usage = usage
        self._reader = FeatureReader(host.procfs, host.sysfs, clock=clock)
        self.stat_path = self._reader.stat_path
        self.model: PowerModel = LinearModel(self.idle_watts, self.max_watts)
        self.calibrator: Calibrator | None = None
        self._model_idle: float | None = None
        self._gauge_attrs: dict[str, str] = {}
        self._calibrated_attrs: dict[str, str] = {}

    def start(self) -> None:
        try:
            read_cpu_times(self.stat_path)
        except StatError as err:
            raise ComponentError(str(err)) from None
        if self.config.model == "curve":
            self.model = build_curve(self.config.curve, self.host)
        elif self.config.model == "regression":
            self.model = self._start_regression()
        self._reader.read_frequency = "cpu_frequency_ghz" in self.model.features
        self._reader.read_activity = any(f in ACTIVITY_FEATURES for f in self.model.features)
        prior = model_line(self.model)
        self._model_idle = prior.idle if prior is not None else None
        if self.config.calibrate_from is not None:
            self._start_calibration(self.config.calibrate_from, prior)

    def _start_calibration(self, meter: str, prior: Line | None) -> None:
        settings = self.config.calibration
        if prior is None:  # a model of more than usage: start from the linear defaults
            prior = Line(self.idle_watts, self.max_watts - self.idle_watts, 0, 0.0, 0.0)
        self.calibrator = Calibrator(
            meter,
            prior,
            window=settings.window,
            min_ticks=settings.min_ticks,
            max_lag=settings.max_lag,
            max_smooth=settings.max_smooth,
            min_spread=settings.min_spread,
        )
        self._calibrated_attrs = {"model": "calibrated", "calibrated_from": meter}
        self._gauge_attrs = {"meter": meter}
        if self.host.node_name:
            self._gauge_attrs["node_name"] = self.host.node_name
        log.info(
            "%s: calibrating against the %s meter after %d ticks; %s model until then",
            self.name, meter, settings.min_ticks, self.config.model,
        )  # fmt: skip

    def _start_regression(self) -> RegressionModel:
        settings = self.config.regression
        try:
            loaded = regression.load(settings.file)
        except regression.ModelFileError as err:
            raise ComponentError(str(err)) from None
        if self._usage is not None:
            self._usage.start()
            self._reader.counters_off = counters_off(self._usage)
        missing = self._reader.missing(loaded.features)
        if missing:
            if self._usage is not None:
                self._usage.shutdown()
            raise ComponentError(
                f"model {loaded.name!r} ({settings.file}) needs features this host does not "
                f"provide: {'; '.join(str(m) for m in missing)}"
            )
        log.info(
            "%s: regression model %r: %s power (%s) of %s",
            self.name, loaded.name, loaded.zone, loaded.kind, ", ".join(loaded.features),
        )  # fmt: skip
        return RegressionModel(loaded, settings.idle_watts)

    def watts(self, ratio: float) -> float:
        """The model's power at this usage ratio (the other features as last seen: none)."""
        return self.model.watts({"cpu_usage_ratio": ratio})

    def collect(self) -> Contribution:
        part = self._usage.collect() if self._usage is not None else Contribution()
        samples: Iterable[ProcessSample] = ()
        if part.processes is not None:
            samples = [*part.processes.values(), *part.exited]
        try:
            features = self._reader.sample(samples)
        except StatError as err:
            raise ComponentError(str(err)) from None
        if features is None:
            return part  # the first collect primes
        component, zone = OUTPUT[self.model.output]
        watts, idle, attributes = (
            self.model.watts(features),
            self._model_idle,
            self.model.attributes,
        )
        usage = features["cpu_usage_ratio"]
        calibrator = self.calibrator
        if calibrator is not None:
            calibrator.record(usage)
            calibration = calibrator.calibration
            if calibration is not None:
                line = calibration.line
                watts, idle = max(0.0, line.watts(usage)), max(0.0, line.idle)
                attributes = self._calibrated_attrs
                part.gauges.append(
                    GaugeValue(FIT_ERROR, "W", FIT_ERROR_DOC, line.rms_error, self._gauge_attrs)
                )
        part.energy.append(
            ModelReading(
                component=component,
                zone=zone,
                source="model",
                joules=watts * self._reader.elapsed,
                attributes=attributes,
                idle_watts=idle,
                calibrator=calibrator,
            )
        )
        if part.cpu_usage_ratio is None:
            part.cpu_usage_ratio = usage
        return part

    def shutdown(self) -> None:
        if self._usage is not None:
            self._usage.shutdown()


FIT_ERROR = "kepler.node.estimator.fit.error"
FIT_ERROR_DOC = (
    "Root mean square error of the calibrated estimator's fit against its meter, in watts"
)


def model_line(model: PowerModel) -> Line | None:
    """The model as ``idle + dynamic x usage`` where usage is its only input, else None."""
    if tuple(model.features) != ("cpu_usage_ratio",):
        return None
    idle = model.watts({"cpu_usage_ratio": 0.0})
    return Line(idle, model.watts({"cpu_usage_ratio": 1.0}) - idle, 0, 0.0, 0.0)


def counters_off(usage: Receiver) -> str | None:
    """Why the embedded usage receiver reads no hardware counters; None if it does."""
    if not isinstance(usage, EbpfReceiver):
        return getattr(usage, "counters_off", None)
    if usage.using_fallback:
        return "the ebpf receiver could not load and reads /proc instead"
    if not usage.config.hardware_counters:
        return "hardware_counters is off in regression.ebpf"
    return usage.counters_off


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
    description="modelled energy (linear, SPECpower curve or a trained regression model) "
    "for hosts without RAPL (VMs)",
    config_class=EstimatorConfig,
    create=_create,
    doctor=doctor,
    metrics=(md.MetricSpec(m.ESTIMATOR_FIT_ERROR, ("meter", *md.NODE), "with calibrate_from"),),
    reading_labels=("model", "model_name", "calibrated_from"),
)

__all__ = [
    "COUNTER_FEATURES",
    "CalibrationConfig",
    "CurveConfig",
    "EstimatorConfig",
    "EstimatorReceiver",
    "RegressionConfig",
    "doctor",
    "factory",
]

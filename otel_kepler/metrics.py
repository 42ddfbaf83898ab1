"""The metric contract: every metric the agent emits, in one table.

OTLP names use dots and a unit; :func:`prometheus_name` applies the standard
OTLP-to-Prometheus translation (dots to underscores, the unit's word appended
when the name does not already end with it, ``_total`` on monotonic sums), so
the pull exporter and a backend such as VictoriaMetrics with
``-opentelemetry.usePrometheusNaming`` both give Kepler's names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["sum", "gauge"]


@dataclass(frozen=True, slots=True)
class MetricDesc:
    name: str
    unit: str
    kind: Kind
    description: str

    @property
    def prometheus_name(self) -> str:
        return prometheus_name(self.name, self.unit, self.kind == "sum")


# Prometheus unit words for UCUM units, as the OpenTelemetry translation spells them.
_UNIT_WORDS = {
    "J": "joules",
    "W": "watts",
    "s": "seconds",
    "g": "grams",
    "By": "bytes",
    "Cel": "celsius",
    "V": "volts",
    "A": "amperes",
    "Hz": "hertz",
    "1": "",
}


# Words for the unit after "/" (``g/kWh`` -> ``grams_per_kWh``), as the translation spells them.
_PER_WORDS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "kWh": "kWh"}


def _unit_word(unit: str, monotonic: bool) -> str:
    if unit == "1" and not monotonic:
        return "ratio"
    if "/" in unit:
        main, per = unit.split("/", 1)
        return f"{_UNIT_WORDS.get(main, main)}_per_{_PER_WORDS.get(per, per)}"
    if unit.startswith("{") or not unit:  # an annotation such as {batch}: no suffix
        return ""
    return _UNIT_WORDS.get(unit, "".join(c if c.isalnum() else "_" for c in unit))


def prometheus_name(name: str, unit: str, monotonic: bool) -> str:
    """``kepler.node.cpu.joules`` (J, monotonic) -> ``kepler_node_cpu_joules_total``."""
    base = name.replace(".", "_").replace("-", "_")
    word = _unit_word(unit, monotonic)
    if word and not base.endswith("_" + word):
        base = f"{base}_{word}"
    if monotonic and not base.endswith("_total"):
        base += "_total"
    return base


def _sum(name: str, unit: str, description: str) -> MetricDesc:
    return MetricDesc(name, unit, "sum", description)


def _gauge(name: str, unit: str, description: str) -> MetricDesc:
    return MetricDesc(name, unit, "gauge", description)


NODE_JOULES = {
    "cpu": _sum("kepler.node.cpu.joules", "J", "Energy of the node's CPU zones"),
    "platform": _sum("kepler.node.platform.joules", "J", "Energy of the whole platform"),
    "gpu": _sum("kepler.node.gpu.joules", "J", "Energy of the node's GPUs"),
}
NODE_WATTS = {
    "cpu": _gauge("kepler.node.cpu.watts", "W", "Power of the node's CPU zones"),
    "platform": _gauge("kepler.node.platform.watts", "W", "Power of the whole platform"),
    "gpu": _gauge("kepler.node.gpu.watts", "W", "Power of the node's GPUs"),
}
NODE_CPU_ACTIVE = _sum(
    "kepler.node.cpu.active.joules", "J", "CPU energy attributed to running work"
)
NODE_CPU_IDLE = _sum("kepler.node.cpu.idle.joules", "J", "CPU energy not attributed to work")
NODE_CPU_USAGE = _gauge("kepler.node.cpu.usage.ratio", "1", "Busy share of the node's CPU time")
NODE_CPU_ACTIVE_WATTS = _gauge(
    "kepler.node.cpu.active.watts", "W", "CPU power attributed to running work"
)
NODE_CPU_IDLE_WATTS = _gauge("kepler.node.cpu.idle.watts", "W", "CPU power not attributed to work")
NODE_CPU_INFO = _gauge(
    "kepler.node.cpu.info", "", "One series per logical CPU with its processor labels"
)
NODE_GPU_ACTIVE = _sum("kepler.node.gpu.active.joules", "J", "GPU energy attributed to work")
NODE_GPU_IDLE = _sum("kepler.node.gpu.idle.joules", "J", "GPU energy not attributed to work")
NODE_GPU_ACTIVE_WATTS = _gauge("kepler.node.gpu.active.watts", "W", "GPU power attributed to work")
NODE_GPU_IDLE_WATTS = _gauge("kepler.node.gpu.idle.watts", "W", "GPU power not attributed to work")
NODE_GPU_INFO = _gauge("kepler.node.gpu.info", "", "One series per GPU with its labels")
BUILD_INFO = _gauge("kepler.build.info", "", "The agent's version and build")
#: Kepler's name for a BMC's (Redfish) platform power, with the chassis and sensor labels.
PLATFORM_WATTS = _gauge(
    "kepler.platform.watts", "W", "Power of the platform as its BMC reports it (Redfish)"
)

WORKLOAD_LEVELS = ("process", "container", "pod", "vm")

# Gauges receivers report as they read them.
HW_TEMPERATURE = _gauge("hw.temperature", "Cel", "Temperature in degrees Celsius")
HW_FAN_SPEED = _gauge("hw.fan.speed", "rpm", "Fan speed in revolutions per minute")
HW_VOLTAGE = _gauge("hw.voltage", "V", "Voltage measured by the sensor")
ESTIMATOR_FIT_ERROR = _gauge(
    "kepler.node.estimator.fit.error", "W", "RMS error of the estimator's calibration fit"
)

# The hardware semantic conventions' names for the same node energy (``service.semconv``).
HW_ENERGY = _sum("hw.energy", "J", "Energy consumed by the component")
HW_POWER = _gauge("hw.power", "W", "Instantaneous power consumed by the component")
HW_HOST_ENERGY = _sum("hw.host.energy", "J", "Energy consumed by the entire physical host")
HW_HOST_POWER = _gauge("hw.host.power", "W", "Instantaneous power consumed by the entire host")

WORKLOAD_JOULES = {
    level: _sum(f"kepler.{level}.cpu.joules", "J", f"CPU energy attributed to the {level}")
    for level in WORKLOAD_LEVELS
}
WORKLOAD_WATTS = {
    level: _gauge(f"kepler.{level}.cpu.watts", "W", f"CPU power attributed to the {level}")
    for level in WORKLOAD_LEVELS
}
WORKLOAD_GPU_JOULES = {
    level: _sum(f"kepler.{level}.gpu.joules", "J", f"GPU energy attributed to the {level}")
    for level in WORKLOAD_LEVELS
}
WORKLOAD_GPU_WATTS = {
    level: _gauge(f"kepler.{level}.gpu.watts", "W", f"GPU power attributed to the {level}")
    for level in WORKLOAD_LEVELS
}
CO2 = {
    level: _sum(f"kepler.{level}.co2", "g", f"Emissions (gCO2e) of the {level}'s energy")
    for level in ("node", *WORKLOAD_LEVELS)
}
NODE_EMBODIED_CO2 = _sum(
    "kepler.node.embodied.co2", "g", "Embodied emissions (gCO2e) of the node, amortised"
)
GRID_INTENSITY = _gauge(
    "kepler.grid.carbon.intensity", "g/kWh", "Grid carbon intensity in use (gCO2e/kWh)"
)
PROCESS_CPU_SECONDS = _sum("kepler.process.cpu.seconds", "s", "CPU time of the process")
# Activity per workload (network, block I/O, softirqs) and the platform remainder it gets.
WORKLOAD_NETWORK_BYTES = {
    level: _sum(f"kepler.{level}.network.bytes", "By", f"Network bytes of the {level}")
    for level in WORKLOAD_LEVELS
}
WORKLOAD_BLOCK_BYTES = {
    level: _sum(f"kepler.{level}.block.bytes", "By", f"Block device bytes of the {level}")
    for level in WORKLOAD_LEVELS
}
WORKLOAD_IRQ = {
    (level, vector): _sum(
        f"kepler.{level}.bpf.{vector}.irq",
        "1",
        f"{vector.upper()} softirqs raised while the {level} ran (eBPF)",
    )
    for level in WORKLOAD_LEVELS
    for vector in ("net_tx", "net_rx", "block")
}
WORKLOAD_PLATFORM_JOULES = {
    level: _sum(
        f"kepler.{level}.platform.joules", "J", f"Platform energy (zone other) given to the {level}"
    )
    for level in WORKLOAD_LEVELS
}
WORKLOAD_PLATFORM_WATTS = {
    level: _gauge(
        f"kepler.{level}.platform.watts", "W", f"Platform power (zone other) given to the {level}"
    )
    for level in WORKLOAD_LEVELS
}

WORKLOAD_CPU_SECONDS = {
    "process": PROCESS_CPU_SECONDS,
    "container": _sum("kepler.container.cpu.seconds", "s", "CPU time of the container"),
    "vm": _sum("kepler.vm.cpu.seconds", "s", "CPU time of the virtual machine"),
}

AGENT_TICK_DURATION = _gauge("otel_kepler.agent.tick.duration", "s", "Wall time the last tick took")
AGENT_CPU_SECONDS = _sum("otel_kepler.agent.cpu.seconds", "s", "CPU time used by the agent")
AGENT_RSS = _gauge("otel_kepler.agent.memory.rss", "By", "Resident memory of the agent")
AGENT_DROPPED = _sum(
    "otel_kepler.agent.exporter.dropped.batches", "1", "Batches an exporter queue dropped"
)
AGENT_EXPORT_FAILURES = _sum(
    "otel_kepler.agent.exporter.failed.batches", "1", "Batches an exporter failed to send"
)
AGENT_RECEIVER_ERRORS = _sum(
    "otel_kepler.agent.receiver.errors", "1", "Ticks on which a receiver failed to collect"
)
AGENT_REJECTED_READINGS = _sum(
    "otel_kepler.agent.receiver.rejected.readings",
    "1",
    "Sensor readings rejected (unreadable, not a number, out of range, backwards, impossible)",
)
AGENT_EXPORT_CPU = _sum(
    "otel_kepler.agent.exporter.cpu.seconds", "s", "CPU time an exporter spent encoding and sending"
)
AGENT_EXPORT_DURATION = _gauge(
    "otel_kepler.agent.exporter.duration", "s", "Wall time of an exporter's last export"
)
AGENT_SENT_POINTS = _sum(
    "otel_kepler.agent.exporter.sent.points", "1", "Data points an exporter delivered"
)

ALL: tuple[MetricDesc, ...] = (
    *NODE_JOULES.values(),
    *NODE_WATTS.values(),
    NODE_CPU_ACTIVE,
    NODE_CPU_IDLE,
    NODE_CPU_USAGE,
    NODE_CPU_ACTIVE_WATTS,
    NODE_CPU_IDLE_WATTS,
    NODE_CPU_INFO,
    NODE_GPU_ACTIVE,
    NODE_GPU_IDLE,
    NODE_GPU_ACTIVE_WATTS,
    NODE_GPU_IDLE_WATTS,
    NODE_GPU_INFO,
    BUILD_INFO,
    PLATFORM_WATTS,
    HW_TEMPERATURE,
    HW_FAN_SPEED,
    HW_VOLTAGE,
    ESTIMATOR_FIT_ERROR,
    HW_ENERGY,
    HW_POWER,
    HW_HOST_ENERGY,
    HW_HOST_POWER,
    *WORKLOAD_JOULES.values(),
    *WORKLOAD_WATTS.values(),
    *WORKLOAD_GPU_JOULES.values(),
    *WORKLOAD_GPU_WATTS.values(),
    *CO2.values(),
    NODE_EMBODIED_CO2,
    GRID_INTENSITY,
    *WORKLOAD_CPU_SECONDS.values(),
    *WORKLOAD_NETWORK_BYTES.values(),
    *WORKLOAD_BLOCK_BYTES.values(),
    *WORKLOAD_IRQ.values(),
    *WORKLOAD_PLATFORM_JOULES.values(),
    *WORKLOAD_PLATFORM_WATTS.values(),
    AGENT_TICK_DURATION,
    AGENT_CPU_SECONDS,
    AGENT_RSS,
    AGENT_DROPPED,
    AGENT_EXPORT_FAILURES,
    AGENT_RECEIVER_ERRORS,
    AGENT_REJECTED_READINGS,
    AGENT_EXPORT_CPU,
    AGENT_EXPORT_DURATION,
    AGENT_SENT_POINTS,
)

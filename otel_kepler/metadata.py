"""What each component emits, declared beside its code, and the reference made from it.

Every factory lists the metrics its component adds (``Factory.metrics``) with the labels
their points carry, as a Collector component's metadata.yaml does; an energy receiver
also lists the labels it adds to the node's energy series (``Factory.reading_labels``,
such as rapl's ``path``). The agent itself declares :data:`CORE`: the node energy series
every energy receiver leads to, and its own telemetry.

``otel-kepler metrics`` prints docs/metrics.md from these declarations; a
test keeps that file, the metric contract (:data:`otel_kepler.metrics.ALL`) and what a
real tick exports in agreement with them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from otel_kepler import metrics as m
from otel_kepler.metrics import MetricDesc


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric a component emits and the labels its points carry."""

    metric: MetricDesc
    labels: tuple[str, ...]
    note: str = ""  # when it is emitted, if not always


NODE = ("node_name",)
ZONE = ("zone", "source", *NODE)
PROCESS = ("pid", "comm", "exe", "container_id", "type", "vm_id", *NODE)
CONTAINER = ("container_id", "container_name", "runtime", "pod_id", *NODE)
POD = ("pod_id", "pod_name", "pod_namespace", *NODE)
VM = ("vm_id", "vm_name", "hypervisor", *NODE)
GPU = ("gpu", "gpu_uuid", "gpu_name", "vendor")
#: A workload level's identity labels (k8sattributes adds selected pod labels to
#: containers and pods).
LEVEL_LABELS = {"process": PROCESS, "container": CONTAINER, "pod": POD, "vm": VM}


def specs(
    metrics: Iterable[MetricDesc], labels: tuple[str, ...], note: str = ""
) -> tuple[MetricSpec, ...]:
    return tuple(MetricSpec(metric, labels, note) for metric in metrics)


#: What the agent emits whatever the pipeline: node energy from any energy receiver (with
#: or without attribution), the build and CPU info, and its own telemetry.
CORE: tuple[MetricSpec, ...] = (
    *specs(m.NODE_JOULES.values(), ZONE, "per zone of every energy receiver"),
    *specs(m.NODE_WATTS.values(), ZONE, "per zone of every energy receiver"),
    MetricSpec(m.NODE_CPU_USAGE, NODE, "with a usage receiver and an energy source"),
    MetricSpec(
        m.NODE_CPU_INFO, ("processor", "vendor_id", "model_name", "physical_id", "core_id", *NODE)
    ),
    MetricSpec(m.BUILD_INFO, ("version", "arch", "pythonversion", *NODE)),
    MetricSpec(m.NODE_GPU_INFO, (*GPU, *NODE), "with the nvml receiver"),
    MetricSpec(m.PLATFORM_WATTS, ZONE, "a BMC's platform power (redfish)"),
    *specs((m.HW_HOST_ENERGY, m.HW_HOST_POWER), ("hw.id", *NODE), "with service.semconv: true"),
    *specs((m.HW_ENERGY, m.HW_POWER), ("hw.id", "hw.type", *NODE), "with service.semconv: true"),
    MetricSpec(m.AGENT_TICK_DURATION, NODE),
    MetricSpec(m.AGENT_CPU_SECONDS, NODE),
    MetricSpec(m.AGENT_RSS, NODE),
    *specs(
        (
            m.AGENT_DROPPED,
            m.AGENT_EXPORT_FAILURES,
            m.AGENT_EXPORT_CPU,
            m.AGENT_EXPORT_DURATION,
            m.AGENT_SENT_POINTS,
        ),
        ("exporter", *NODE),
    ),
    MetricSpec(m.AGENT_RECEIVER_ERRORS, ("receiver", *NODE)),
    MetricSpec(m.AGENT_REJECTED_READINGS, ("receiver", "reason", *NODE)),
)


@dataclass(frozen=True, slots=True)
class Declared:
    """One metric as the reference lists it: who emits it and every label it can carry."""

    metric: MetricDesc
    labels: tuple[str, ...]
    emitted_by: tuple[str, ...]
    notes: tuple[str, ...]


def declared(factories: dict[str, dict[str, object]]) -> list[Declared]:
    """Every declared metric, merged over the components that emit it, in contract order.

    ``factories`` is ``{kind: {type: factory}}`` as the registry holds them.
    """
    labels: dict[str, list[str]] = {}
    emitters: dict[str, list[str]] = {}
    notes: dict[str, list[str]] = {}
    descs: dict[str, MetricDesc] = {}

    def add(spec: MetricSpec, who: str) -> None:
        name = spec.metric.name
        descs.setdefault(name, spec.metric)
        merged = labels.setdefault(name, [])
        merged.extend(label for label in spec.labels if label not in merged)
        if who not in emitters.setdefault(name, []):
            emitters[name].append(who)
        if spec.note and spec.note not in notes.setdefault(name, []):
            notes[name].append(spec.note)

    for spec in CORE:
        add(spec, "agent")
    for kind in ("receivers", "processors", "exporters"):
        for ctype, factory in sorted(factories.get(kind, {}).items()):
            for spec in getattr(factory, "metrics", ()):
                add(spec, ctype)
    order = {desc.name: i for i, desc in enumerate(m.ALL)}
    names = sorted(descs, key=lambda name: (order.get(name, len(order)), name))
    return [
        Declared(descs[n], tuple(labels[n]), tuple(emitters[n]), tuple(notes.get(n, ())))
        for n in names
    ]


#: The node series an energy receiver's readings become: each receiver's own labels join them.
NODE_ENERGY = frozenset(
    d.name
    for d in (
        *m.NODE_JOULES.values(),
        *m.NODE_WATTS.values(),
        m.PLATFORM_WATTS,
        m.NODE_CPU_ACTIVE,
        m.NODE_CPU_IDLE,
        m.NODE_CPU_ACTIVE_WATTS,
        m.NODE_CPU_IDLE_WATTS,
    )
)


def reading_labels(factories: dict[str, dict[str, object]]) -> dict[str, tuple[str, ...]]:
    """receiver type -> the labels it adds to the node's energy series."""
    out = {}
    for ctype, factory in sorted(factories.get("receivers", {}).items()):
        extra = tuple(getattr(factory, "reading_labels", ()))
        if extra:
            out[ctype] = extra
    return out


def markdown(factories: dict[str, dict[str, object]]) -> str:
    """docs/metrics.md: every metric, its Prometheus name, labels and who emits it."""
    lines = [
        "# Metrics reference",
        "",
        "Every metric the agent can emit, made from what each component declares beside its",
        "code (`otel-kepler metrics > docs/metrics.md`). OTLP names carry dots and",
        "a unit; the Prometheus name is what the pull endpoint serves and what a backend's",
        "standard OTLP-to-Prometheus translation gives. Labels are the points' attributes",
        "(dots become underscores in Prometheus); each workload's series also sit under its",
        "own resource (see [collector.md](collector.md)).",
        "",
        "| OTLP name | unit | kind | Prometheus name | labels | emitted by |",
        "|---|---|---|---|---|---|",
    ]
    for d in declared(factories):
        kind = "monotonic sum" if d.metric.kind == "sum" else "gauge"
        who = ", ".join(f"`{w}`" for w in d.emitted_by)
        if d.notes:
            who += " (" + "; ".join(d.notes) + ")"
        unit = d.metric.unit or "-"
        lines.append(
            f"| {d.metric.name} | {unit} | {kind} | {d.metric.prometheus_name} | "
            f"{', '.join(d.labels)} | {who} |"
        )
    lines += [
        "",
        "## Labels an energy receiver adds",
        "",
        "The node's energy series (`kepler_node_{cpu,platform,gpu}_{joules_total,watts}`,",
        "the CPU's active and idle series, `kepler_platform_watts`) also carry the labels of",
        "the receiver that read them:",
        "",
        "| receiver | labels |",
        "|---|---|",
    ]
    for ctype, extra in reading_labels(factories).items():
        lines.append(f"| `{ctype}` | {', '.join(extra)} |")
    return "\n".join(lines) + "\n"

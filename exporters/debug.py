"""``debug`` exporter: a short console table per tick (node power, top workloads by watts).

``verbosity: detailed`` prints every data point instead, as the Collector's
debug exporter does.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Literal, TextIO

from opentelemetry.sdk.metrics.export import MetricsData, NumberDataPoint

from otel_kepler.component import Exporter, Factory, HostSettings
from otel_kepler.schema import ConfigError
from otel_kepler.snapshot import Snapshot

log = logging.getLogger(__name__)


@dataclass
class DebugConfig:
    """Prints each tick to standard output."""

    verbosity: Literal["basic", "normal", "detailed"] = field(
        default="normal",
        metadata={"doc": "basic: node line only; normal: + top workloads; detailed: every point"},
    )
    top: int = field(default=10, metadata={"doc": "workloads listed per tick"})

    def validate(self) -> None:
        if self.top < 0:
            raise ConfigError("top", "must be 0 or more")


_WORKLOAD_WATTS = ("kepler.pod.cpu.watts", "kepler.container.cpu.watts", "kepler.process.cpu.watts")


def _points(data: MetricsData) -> dict[str, list[NumberDataPoint]]:
    out: dict[str, list[NumberDataPoint]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)  # type: ignore[arg-type]
    return out


def _label(name: str, attrs: dict[str, str]) -> str:
    level = name.split(".")[1]
    if level == "process":
        container = attrs.get("container_id", "")[:12]
        where = f" in {container}" if container else ""
        return f"process  {attrs.get('comm', '?')} (pid {attrs.get('pid')}){where}"
    if level == "container":
        shown = attrs.get("container_name") or attrs.get("container_id", "")[:12]
        return f"container {shown} {attrs.get('runtime', '')}".rstrip()
    shown = attrs.get("pod_name") or attrs.get("pod_id", "")
    ns = attrs.get("pod_namespace")
    return f"pod      {ns + '/' if ns else ''}{shown}"


def _silence(stream: TextIO) -> None:
    """Point a closed standard output at /dev/null, so that exit does not fail flushing it."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class DebugExporter(Exporter):
    def __init__(self, config: DebugConfig, stream: TextIO | None = None) -> None:
        self.config = config
        self.stream = stream or sys.stdout
        self.closed = False  # the reader went away (``otel-kepler run | head``)

    def export(self, snapshot: Snapshot, pipeline: str, timeout: float | None = None) -> None:
        if self.closed:
            return
        data = snapshot.to_metrics_data()
        text = data.to_json(indent=None) + "\n" if self.config.verbosity == "detailed" else ""
        try:
            self.stream.write(text or self.table(data))
            self.stream.flush()
        except BrokenPipeError:
            self.closed = True
            log.info("debug exporter: standard output was closed; it prints no more")
            _silence(self.stream)

    def table(self, data: MetricsData) -> str:
        points = _points(data)
        stamp = time.strftime("%H:%M:%S")
        node = []
        for component in ("cpu", "platform", "gpu"):
            for p in points.get(f"kepler.node.{component}.watts", []):
                a = p.attributes or {}
                what = a.get("zone") or f"{a.get('gpu')} {a.get('gpu_name', '')}".rstrip()
                node.append(f"{component}/{what} {p.value:.1f} W ({a.get('source')})")
        usage = points.get("kepler.node.cpu.usage.ratio")
        usage_text = f"  usage {usage[0].value:.0%}" if usage else ""
        lines = [f"{stamp} node: {', '.join(node) or 'no energy yet'}{usage_text}\n"]
        if self.config.verbosity == "normal" and self.config.top:
            lines.extend(self._top(points))
        return "".join(lines)

    def _top(self, points: dict[str, list[NumberDataPoint]]) -> list[str]:
        rows: dict[str, float] = {}
        for name in _WORKLOAD_WATTS:
            for p in points.get(name, []):
                attrs = {k: str(v) for k, v in (p.attributes or {}).items() if k != "zone"}
                if attrs.get("state") == "terminated":
                    continue
                label = _label(name, attrs)
                rows[label] = rows.get(label, 0.0) + float(p.value)
        busy = [(label, watts) for label, watts in rows.items() if watts > 0.0]
        best = sorted(busy, key=lambda kv: kv[1], reverse=True)[: self.config.top]
        return [f"  {watts:8.3f} W  {label}\n" for label, watts in best]


def _create(name: str, config: DebugConfig, host: HostSettings) -> DebugExporter:
    return DebugExporter(config)


factory = Factory(
    type="debug",
    description="Prints node power and the top workloads by watts to the console each tick",
    config_class=DebugConfig,
    create=_create,
)

"""The agent's YAML config, shaped like the OpenTelemetry Collector's.

::

    host: {procfs: /proc, sysfs: /sys, node_name: ""}
    receivers:  {rapl: {}, procfs: {}}
    processors: {attribution: {levels: [node, container, pod]}}
    exporters:  {otlphttp: {endpoint: "http://collector:4318"}}
    service:
      interval: 5s
      pipelines:
        metrics: {receivers: [rapl, procfs], processors: [attribution], exporters: [otlphttp]}

Component ids are ``type`` or ``type/name``. ``${env:VAR}`` and
``${env:VAR:-default}`` are substituted in string values (``$$`` is a literal
``$``). Every problem is a :class:`ConfigError` that names its path, raised
before anything starts.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from otel_kepler.component import Factory, HostSettings
from otel_kepler.registry import Registry
from otel_kepler.schema import ConfigError, Duration, decode, join

KINDS = ("receivers", "processors", "exporters")
_ID = re.compile(r"^([a-z][a-z0-9_]*)(?:/([A-Za-z0-9_.\-]+))?$")
_ENV = re.compile(r"\$\$|\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class HostConfig:
    """Where the host's trees are: /host/proc and /host/sys in a DaemonSet."""

    procfs: str = field(default="/proc", metadata={"doc": "the host's /proc"})
    sysfs: str = field(default="/sys", metadata={"doc": "the host's /sys"})
    node_name: str = field(
        default="", metadata={"doc": "node name; default: $NODE_NAME, else the host name"}
    )


@dataclass
class PipelineConfig:
    receivers: list[str]
    exporters: list[str]
    processors: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not self.receivers:
            raise ConfigError("receivers", "a pipeline needs at least one receiver")
        if not self.exporters:
            raise ConfigError("exporters", "a pipeline needs at least one exporter")


@dataclass
class MetricsTelemetryConfig:
    enabled: bool = field(
        default=True, metadata={"doc": "export the agent's own otel_kepler.agent.* metrics"}
    )


@dataclass
class LogsTelemetryConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass
class TelemetryConfig:
    metrics: MetricsTelemetryConfig = field(default_factory=MetricsTelemetryConfig)
    logs: LogsTelemetryConfig = field(default_factory=LogsTelemetryConfig)


@dataclass
class ServiceConfig:
    pipelines: dict[str, PipelineConfig]
    interval: Duration = field(
        default=Duration(5.0), metadata={"doc": "how often every receiver is collected"}
    )
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)

    def validate(self) -> None:
        if self.interval < 0.1:
            raise ConfigError("interval", f"must be at least 100ms, got {self.interval}")
        if not self.pipelines:
            raise ConfigError("pipelines", "at least one pipeline is needed")
        for name in self.pipelines:
            if not re.match(r"^metrics(/[A-Za-z0-9_.\-]+)?$", name):
                raise ConfigError(
                    f"pipelines.{name}", 'pipeline names are "metrics" or "metrics/<name>"'
                )


@dataclass
class ComponentConfig:
    """One configured component: its id, type, validated config and factory."""

    id: str
    type: str
    config: Any
    factory: Factory[Any, Any]


@dataclass
class AgentConfig:
    host: HostSettings
    receivers: dict[str, ComponentConfig]
    processors: dict[str, ComponentConfig]
    exporters: dict[str, ComponentConfig]
    service: ServiceConfig
    source: str = ""  # the file it came from


def load_file(path: str, registry: Registry) -> AgentConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ConfigError("", f"cannot read config file {path}: {err.strerror}") from None
    config = parse(text, registry, filename=path)
    config.source = path
    return config


def parse(text: str, registry: Registry, filename: str = "<config>") -> AgentConfig:
    raw = _load_yaml(text, filename)
    raw = substitute_env(raw, "")
    if not isinstance(raw, dict):
        raise ConfigError("", f"{filename}: the config must be a mapping of sections")
    allowed = {"host", *KINDS, "service"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(str(key), f"unknown section (known: {', '.join(sorted(allowed))})")
    if "service" not in raw:
        raise ConfigError("service", "is required (it lists the pipelines)")
    host = _host(decode(HostConfig, raw.get("host"), "host"))
    components = {kind: _components(kind, raw.get(kind), registry) for kind in KINDS}
    service = decode(ServiceConfig, raw["service"], "service")
    _check_references(service, components)
    return AgentConfig(
        host, components["receivers"], components["processors"], components["exporters"], service
    )


def _load_yaml(text: str, filename: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        problem = err.problem or err.context or "invalid YAML"
        raise ConfigError("", f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError("", f"{filename}: invalid YAML: {err}") from None


def substitute_env(value: Any, path: str) -> Any:
    """Replace ``${env:VAR}`` and ``${env:VAR:-default}`` in every string value.

    A string that is one whole reference is re-read as YAML, as the Collector
    does, so ``port: ${env:PORT}`` gives an integer.
    """
    if isinstance(value, dict):
        return {k: substitute_env(v, join(path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, join(path, i)) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value
    whole = _ENV.fullmatch(value)
    result = _ENV.sub(lambda match: _env_value(match, path), value)
    if whole and whole.group(0) != "$$":
        try:
            return yaml.safe_load(result) if result.strip() else result
        except yaml.YAMLError:
            return result
    return result


def _env_value(match: re.Match[str], path: str) -> str:
    if match.group(0) == "$$":
        return "$"
    name, default = match.group(1), match.group(2)
    value = os.environ.get(name)
    if value is None or (value == "" and default is not None):
        if default is None:
            raise ConfigError(path, f"environment variable {name} is not set")
        return default
    return value


def _host(cfg: HostConfig) -> HostSettings:
    node = cfg.node_name or os.environ.get("NODE_NAME", "") or socket.gethostname()
    return HostSettings(procfs=cfg.procfs, sysfs=cfg.sysfs, node_name=node)


def _components(kind: str, raw: Any, registry: Registry) -> dict[str, ComponentConfig]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(kind, "expected a mapping of component ids to their config")
    out = {}
    for cid, body in raw.items():
        path = join(kind, str(cid))
        match = _ID.match(str(cid))
        if not match:
            raise ConfigError(path, 'a component id is "type" or "type/name"')
        ctype = match.group(1)
        factory = registry.factories(kind).get(ctype)
        if factory is None:
            known = ", ".join(sorted(registry.factories(kind))) or "none"
            singular = kind[:-1]
            raise ConfigError(path, f'unknown {singular} type "{ctype}" (known: {known})')
        config = decode(factory.config_class, body, path)
        out[str(cid)] = ComponentConfig(str(cid), ctype, config, factory)
    return out


def _check_references(service: ServiceConfig, components: dict[str, dict[str, Any]]) -> None:
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for name, pipeline in service.pipelines.items():
        for kind in KINDS:
            ids: list[str] = getattr(pipeline, kind)
            for i, cid in enumerate(ids):
                path = f"service.pipelines.{name}.{kind}[{i}]"
                if cid not in components[kind]:
                    raise ConfigError(path, f'"{cid}" is not defined under {kind}')
                if ids.index(cid) != i:
                    raise ConfigError(path, f'"{cid}" is listed twice')
                used[kind].add(cid)
    for kind in KINDS:
        for cid in components[kind]:
            if cid not in used[kind]:
                raise ConfigError(join(kind, cid), "is defined but no pipeline uses it")

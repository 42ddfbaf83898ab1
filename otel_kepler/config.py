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

Component ids are ``type`` or ``type/name``. ``${env:VAR}``, ``${env:VAR:-default}`` and
``${file:path}`` are substituted in string values (``$$`` is a literal
``$``). Every problem is a :class:`ConfigError` that names its path, raised
before anything starts.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Literal

from otel_kepler.component import Factory, HostSettings
from otel_kepler.registry import Registry
from otel_kepler.schema import ConfigError, Duration, Substituted, decode, join, kind_of
from otel_kepler.yaml_loader import MAX_FILE_BYTES, load_document, read_file

KINDS = ("receivers", "processors", "exporters")
_ID = re.compile(r"^([a-z][a-z0-9_]*)(?:/([A-Za-z0-9_.\-]+))?$")


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


MetricsLevel = Literal["none", "basic", "normal", "detailed"]


@dataclass
class MetricsTelemetryConfig:
    """The agent's own metrics (``otel_kepler.agent.*``), set as in the Collector.

    ``level: none`` turns them off; ``basic``, ``normal`` and ``detailed`` keep them on
    (the agent has one set). ``enabled`` is the older switch and still works; giving
    both so that they disagree is an error. After loading, ``enabled`` is the answer.
    """

    level: MetricsLevel | None = field(
        default=None,
        metadata={"doc": "none: off; basic, normal (default), detailed: on"},
    )
    enabled: bool | None = field(
        default=None,
        metadata={"doc": "export the agent's own otel_kepler.agent.* metrics (default: true)"},
    )

    def __post_init__(self) -> None:
        if self.enabled is None:
            self.enabled = self.level != "none" if self.level is not None else True

    def validate(self) -> None:
        if self.level is not None and self.enabled != (self.level != "none"):
            raise ConfigError(
                "enabled", f"is {str(self.enabled).lower()} but level is {self.level}"
            )


LogLevel = Literal["debug", "info", "warn", "warning", "error"]


@dataclass
class LogsTelemetryConfig:
    """The agent's own logs, set as in the Collector."""

    level: LogLevel = field(
        default="info", metadata={"doc": "debug, info, warn (or warning), error"}
    )
    encoding: Literal["console", "json"] = field(
        default="console", metadata={"doc": "console: one text line per record; json: one object"}
    )


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
    resource: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "doc": "attributes of the node's resource (OTEL_RESOURCE_ATTRIBUTES and "
            "OTEL_SERVICE_NAME still win)"
        },
    )
    semconv: bool = field(
        default=False,
        metadata={
            "doc": "also emit node energy under the hardware semantic conventions' names "
            "(hw.host.energy/power, hw.energy/power with hw.id and hw.type)"
        },
    )
    terminated_retention: Duration = field(
        default=Duration(60.0),
        metadata={
            "doc": "how long an ended workload's final totals stay in every export "
            "(at least two scrape intervals for HA scrapers)"
        },
    )

    def validate(self) -> None:
        if self.terminated_retention < 0:
            raise ConfigError("terminated_retention", "must be 0 or more")
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
    #: What is legal but probably not meant ("receivers.hwmon: is defined but no pipeline
    #: uses it"); ``validate`` prints them, ``--strict`` makes them errors.
    warnings: list[str] = field(default_factory=list)


# What the built-in component types give a pipeline, for the checks that warn about a
# pipeline that cannot produce what its author expects. A type missing here (a third-party
# plugin) is not judged.
#: Receivers of workload usage (CPU time per process): without energy they attribute nothing.
USAGE_RECEIVERS = frozenset({"procfs", "ebpf"})
#: Receivers of node or device energy (measured, or estimated by a model).
ENERGY_RECEIVERS = frozenset({"rapl", "hwmon", "acpi", "ipmi", "redfish", "estimator", "nvml"})
#: Processor type -> processor types that read what it adds to the batch, so must run after
#: it: k8sattributes names the containers and pods that attribution and carbon report, and
#: carbon converts the workload joules that attribution computes.
MUST_PRECEDE: dict[str, tuple[str, ...]] = {
    "k8sattributes": ("attribution", "carbon"),
    "attribution": ("carbon",),
}


def load_file(path: str, registry: Registry) -> AgentConfig:
    """Read, check and decode a config file; every problem is a one-line ConfigError.

    An error under a config path also names the file and line it is at, where known.
    """
    text = read_file(path)
    document = load_document(text, path)
    try:
        config = _build(document.data, registry, path)
    except ConfigError as err:
        line = document.line_of(err.path) if err.path and not err.location else None
        if line is None:
            raise
        raise ConfigError(err.path, err.message, f"{path}:{line}") from None
    config.source = path
    return config


def parse(text: str, registry: Registry, filename: str = "<config>") -> AgentConfig:
    """Check and decode a config given as text (``filename`` only names it in messages)."""
    return _build(load_document(text, filename).data, registry, filename)


def _build(raw: Any, registry: Registry, filename: str) -> AgentConfig:
    raw = substitute(raw, "")
    if not isinstance(raw, dict):
        raise ConfigError(
            "", f"{filename}: the config must be a mapping of sections, got {kind_of(raw)}"
        )
    allowed = {"host", *KINDS, "service"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(str(key), f"unknown section (known: {', '.join(sorted(allowed))})")
    if "service" not in raw:
        raise ConfigError("service", "is required (it lists the pipelines)")
    host = _host(decode(HostConfig, raw.get("host"), "host"))
    components = {kind: _components(kind, raw.get(kind), registry) for kind in KINDS}
    service = decode(ServiceConfig, raw["service"], "service")
    used = _check_references(service, components)
    warnings = [
        f"{join(kind, cid)}: is defined but no pipeline uses it (it is not started)"
        for kind in KINDS
        for cid in components[kind]
        if cid not in used[kind]
    ]
    warnings += _check_pipelines(service, components)
    # As in the Collector, an unused component is checked but never built.
    kept = {
        kind: {cid: c for cid, c in components[kind].items() if cid in used[kind]} for kind in KINDS
    }
    return AgentConfig(
        host,
        kept["receivers"],
        kept["processors"],
        kept["exporters"],
        service,
        warnings=warnings,
    )


# ${env:VAR}, ${env:VAR:-default}, ${file:path}, ${VAR} (env, as the Collector reads it),
# and $$ for a literal $.
_REFERENCE = re.compile(r"\$\$|\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_REF = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


def substitute(value: Any, path: str) -> Any:
    """Replace ``${env:VAR}``, ``${env:VAR:-default}`` and ``${file:path}`` in string values.

    ``${VAR}`` is ``${env:VAR}``, and ``$$`` is a literal ``$``, as in the Collector. A
    string that is one whole reference is re-read as YAML (``port: ${env:PORT}`` gives
    an integer; ``${file:pipelines.yaml}`` may give a mapping); a field that takes text
    still gets the text as it was. A ``${file:...}`` path is relative to the working
    directory; its content loses one trailing newline. Mapping keys are not substituted.
    """
    if isinstance(value, dict):
        return {k: substitute(v, join(path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, join(path, i)) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value
    found = False

    def replace(match: re.Match[str]) -> str:
        nonlocal found
        if match.group(0) == "$$":
            return "$"
        found = True
        return _resolve(match.group(1), path)

    result = _REFERENCE.sub(replace, value)
    if not found:
        return result
    typed: Any = result
    whole = _REFERENCE.fullmatch(value)
    if whole and whole.group(0) != "$$" and result.strip():
        try:
            typed = load_document(result, f"the value of {value}").data
        except ConfigError:
            typed = result  # not YAML: the text itself
    if isinstance(typed, dict | list):
        return typed
    return Substituted(result, typed, value)


def _resolve(reference: str, path: str) -> str:
    env = _ENV_REF.match(reference)
    if env:
        return _env_value(env.group(1), env.group(2), path)
    if _ENV_NAME.match(reference):
        return _env_value(reference, None, path)
    scheme, sep, rest = reference.partition(":")
    if sep and scheme == "file":
        return _file_value(rest, path)
    if sep and re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*$", scheme):
        raise ConfigError(
            path,
            f'unsupported reference "${{{scheme}:...}}" (supported: ${{env:...}}, ${{file:...}})',
        )
    raise ConfigError(
        path,
        "invalid reference ${...}: expected ${env:VAR}, ${env:VAR:-default} or ${file:path} "
        "(write $$ for a literal $)",
    )


def _env_value(name: str, default: str | None, path: str) -> str:
    value = os.environ.get(name)
    if value is None or (value == "" and default is not None):
        if default is None:
            raise ConfigError(path, f"environment variable {name} is not set")
        return default
    return value


def _file_value(name: str, path: str) -> str:
    if not name:
        raise ConfigError(path, "${file:} needs a path")
    try:
        with open(name, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise ConfigError(path, f"cannot read ${{file:{name}}}: {why}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(path, f"${{file:{name}}} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            path, f"${{file:{name}}} is not UTF-8 text (bad byte at offset {err.start})"
        ) from None
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def _host(cfg: HostConfig) -> HostSettings:
    node = cfg.node_name or os.environ.get("NODE_NAME", "") or socket.gethostname()
    return HostSettings(procfs=cfg.procfs, sysfs=cfg.sysfs, node_name=node)


def _components(kind: str, raw: Any, registry: Registry) -> dict[str, ComponentConfig]:
    if isinstance(raw, Substituted):
        raw = raw.typed
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(kind, "expected a mapping of component ids to their config")
    out = {}
    for cid, body in raw.items():
        path = join(kind, str(cid))
        match = _ID.match(str(cid))
        if not isinstance(cid, str) or not match:
            raise ConfigError(path, 'a component id is "type" or "type/name"')
        ctype = match.group(1)
        factory = registry.factories(kind).get(ctype)
        if factory is None:
            known = ", ".join(sorted(registry.factories(kind))) or "none"
            singular = kind[:-1]
            raise ConfigError(path, f'unknown {singular} type "{ctype}" (known: {known})')
        config = decode(factory.config_class, body, path)
        out[cid] = ComponentConfig(cid, ctype, config, factory)
    return out


def _check_references(
    service: ServiceConfig, components: dict[str, dict[str, ComponentConfig]]
) -> dict[str, set[str]]:
    """Every id a pipeline lists is defined, once; returns the ids in use, by kind."""
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
    return used


def _check_pipelines(
    service: ServiceConfig, components: dict[str, dict[str, ComponentConfig]]
) -> list[str]:
    """Processor order (an error) and what each pipeline can produce (warnings)."""
    warnings = []
    for name, pipeline in service.pipelines.items():
        path = f"service.pipelines.{name}"
        types = [components["processors"][pid].type for pid in pipeline.processors]
        for i, ptype in enumerate(types):
            for before in MUST_PRECEDE.get(ptype, ()):
                if before in types[:i]:
                    j = types.index(before)
                    raise ConfigError(
                        f"{path}.processors[{i}]",
                        f'"{pipeline.processors[i]}" must come before "{pipeline.processors[j]}" '
                        f"(processors[{j}]), which uses what it adds",
                    )
        rtypes = {components["receivers"][rid].type for rid in pipeline.receivers}
        usage = sorted(rtypes & USAGE_RECEIVERS)
        known = USAGE_RECEIVERS | ENERGY_RECEIVERS
        if usage and rtypes <= known and not rtypes & ENERGY_RECEIVERS:
            warnings.append(
                f"{path}.receivers: has workload usage ({', '.join(usage)}) but no energy "
                f"source ({', '.join(sorted(ENERGY_RECEIVERS))}): no energy to attribute"
            )
    return warnings

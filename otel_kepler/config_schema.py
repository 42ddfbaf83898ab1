"""The whole config file as JSON Schema, built from the registered components' config classes.

Editors (VS Code's YAML extension, for one) validate the pipeline file with it:
``otel-kepler schema > otel-kepler.schema.json``.
"""

from __future__ import annotations

from typing import Any

from otel_kepler.config import KINDS, HostConfig, ServiceConfig
from otel_kepler.registry import Registry, summary
from otel_kepler.schema import json_schema


def config_schema(registry: Registry) -> dict[str, Any]:
    props: dict[str, Any] = {"host": json_schema(HostConfig)}
    for kind in KINDS:
        patterns = {
            f"^{ctype}(/[A-Za-z0-9_.\\-]+)?$": {
                "description": summary(factory),
                **_nullable(json_schema(factory.config_class)),
            }
            for ctype, factory in sorted(registry.factories(kind).items())
        }
        props[kind] = {
            "type": ["object", "null"],
            "patternProperties": patterns,
            "additionalProperties": False,
        }
    props["service"] = json_schema(ServiceConfig)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "otel-kepler configuration",
        "type": "object",
        "properties": props,
        "required": ["service"],
        "additionalProperties": False,
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``rapl:`` with nothing after it means all defaults."""
    out = dict(schema)
    out["type"] = ["object", "null"]
    return out

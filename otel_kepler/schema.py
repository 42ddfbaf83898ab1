"""Typed config sections: decode YAML mappings into dataclasses, and describe them as JSON Schema.

A component's config is a plain dataclass whose fields have defaults. Supported
field types: ``str``, ``int``, ``float``, ``bool``, :class:`Duration`,
``Literal[...]``, ``list[X]``, ``dict[str, X]``, ``X | None`` and nested
dataclasses. A field's ``metadata={"doc": "..."}`` becomes its schema
description. A dataclass may define ``validate(self)`` raising ``ValueError``
for checks across fields; the message is reported under the section's path.

Every error is a :class:`ConfigError` naming the config path
(``receivers.rapl.zones[1]: ...``).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


class ConfigError(Exception):
    """A config problem; ``path`` is where it is (``exporters.otlp.endpoint``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class Duration(float):
    """Seconds, written in YAML as ``500ms``, ``5s``, ``1m``, ``1h`` or a bare number of seconds."""

    _PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
    _SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

    @classmethod
    def parse(cls, text: str | int | float) -> Duration:
        if isinstance(text, bool):
            raise ValueError(f"expected a duration like 5s, got {text!r}")
        if isinstance(text, int | float):
            return cls(float(text))
        match = cls._PATTERN.match(text)
        if not match:
            raise ValueError(f"expected a duration like 500ms, 5s or 1m, got {text!r}")
        return cls(float(match.group(1)) * cls._SCALE[match.group(2)])

    def __str__(self) -> str:
        return f"{float(self):g}s"


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def decode(cls: type[T], raw: Any, path: str) -> T:
    """Build ``cls`` (a dataclass) from ``raw`` (a mapping or None), or raise ConfigError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, f"expected a mapping, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise ConfigError(join(path, str(key)), f"unknown key (known keys: {known})")
        values[key] = _decode_value(hints[key], value, join(path, key))
    for name, f in fields.items():
        if (
            name not in values
            and f.default is dataclasses.MISSING
            and (f.default_factory is dataclasses.MISSING)
        ):
            raise ConfigError(join(path, name), "is required")
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as err:
            raise ConfigError(join(path, err.path), err.message) from None
        except ValueError as err:
            raise ConfigError(path, str(err)) from None
    return obj


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _decode_value(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _decode_value(args[0], value, path)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ConfigError(path, f"must be one of {allowed}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {_kind(value)}")
        (item,) = get_args(tp)
        return [_decode_value(item, v, join(path, i)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {_kind(value)}")
        _, item = get_args(tp)
        return {str(k): _decode_value(item, v, join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return decode(tp, value, path)  # type: ignore[arg-type]
    return _decode_scalar(tp, value, path)


def _decode_scalar(tp: Any, value: Any, path: str) -> Any:
    if tp is Duration:
        try:
            return Duration.parse(value)
        except (ValueError, TypeError) as err:
            raise ConfigError(path, str(err)) from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(path, f"expected a string, got {_kind(value)}")
        return str(value)
    if tp is Any:
        return value
    raise TypeError(f"{path}: unsupported config field type {tp!r}")


def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema of a config dataclass (draft 2020-12 vocabulary)."""
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        prop = _schema_of(hints[f.name])
        doc = f.metadata.get("doc")
        if doc:
            prop["description"] = doc
        default = _default_of(f)
        if default is not dataclasses.MISSING:
            prop["default"] = default
        elif f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        props[f.name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    if required:
        schema["required"] = required
    return schema


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return dataclasses.MISSING
    if dataclasses.is_dataclass(value):
        return dataclasses.MISSING
    if isinstance(value, Duration):
        return str(value)
    return value


def _schema_of(tp: Any) -> dict[str, Any]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return {"anyOf": [_schema_of(args[0]), {"type": "null"}]}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin is list:
        return {"type": "array", "items": _schema_of(get_args(tp)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema_of(get_args(tp)[1])}
    if dataclasses.is_dataclass(tp):
        return json_schema(tp)  # type: ignore[arg-type]
    if tp is Duration:
        return {
            "type": ["string", "number"],
            "pattern": r"^\d+(\.\d+)?(ms|s|m|h)?$",
            "description": "a duration: 500ms, 5s, 1m, or seconds",
        }
    return {
        bool: {"type": "boolean"},
        int: {"type": "integer"},
        float: {"type": "number"},
        str: {"type": "string"},
    }.get(tp, {})

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
import math
import re
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


class ConfigError(Exception):
    """A config problem; ``path`` is where it is (``exporters.otlp.endpoint``)."""

    def __init__(self, path: str, message: str, location: str = "") -> None:
        text = f"{path}: {message}" if path else message
        super().__init__(f"{location}: {text}" if location else text)
        self.path = path
        self.message = message
        self.location = location  # "file:line" where the loader knows it, else ""


class Duration(float):
    """Seconds, written as the Collector (Go) writes them: ``250ms``, ``5s``, ``1m30s``, ``1h``.

    Units: ``ns``, ``us`` (or ``µs``), ``ms``, ``s``, ``m``, ``h``; several may follow each
    other (``1h15m``). A bare number (YAML ``5`` or ``"5"``) is seconds. Spaces, signs,
    infinities and NaN are refused: ``5 s`` or ``-5s`` is a mistake, not a value. Zero is
    a valid duration; a field where zero means nothing says so in its own ``validate``.
    """

    _PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
    _NUMBER = re.compile(r"\d+(?:\.\d+)?")
    _SCALE = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    #: Longer than any sensible interval or timeout (and what Go's int64 nanoseconds hold).
    MAX_SECONDS = 9_223_372_036.0

    @classmethod
    def parse(cls, text: object) -> Duration:
        """A Duration from a YAML value; ValueError with a readable message otherwise."""
        if isinstance(text, bool) or not isinstance(text, int | float | str):
            raise ValueError(f"expected a duration like 500ms, 5s or 1m, got {kind_of(text)}")
        try:
            value = float(text) if isinstance(text, int | float) else cls._parse_text(text)
        except OverflowError:
            raise ValueError(f"is too long ({len(str(text))} digits)") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite duration, got {shown(text)}")
        if value < 0:
            raise ValueError(f"must not be negative, got {shown(text)}")
        if value > cls.MAX_SECONDS:
            raise ValueError(f"is too long (at most {cls.MAX_SECONDS:g}s), got {shown(text)}")
        return cls(value)

    @classmethod
    def _parse_text(cls, text: str) -> float:
        if cls._NUMBER.fullmatch(text):
            return float(text)
        body = text[1:] if text[:1] == "-" else text
        total = 0.0
        pos = 0
        while pos < len(body):
            match = cls._PART.match(body, pos)
            if match is None:
                break
            total += float(match.group(1)) * cls._SCALE[match.group(2)]
            pos = match.end()
        if not body or pos != len(body):
            hint = " (no spaces)" if any(c.isspace() for c in text) else ""
            raise ValueError(f"expected a duration like 500ms, 5s or 1m{hint}, got {shown(text)}")
        return -total if body is not text else total

    def __str__(self) -> str:
        return f"{float(self):g}s"


#: The JSON Schema pattern of a duration written as a string.
DURATION_PATTERN = r"^(\d+(\.\d+)?|((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+)$"


class Substituted(str):
    """A string value that came (wholly or partly) from ``${env:...}`` or ``${file:...}``.

    ``typed`` is what a whole reference reads as in YAML (``"9200"`` -> ``9200``), as the
    Collector does; a field that takes text gets the text unchanged (a password
    ``0123`` stays ``0123``). ``reference`` is the value as written, shown in messages
    instead of what it expanded to, which may be a secret.
    """

    typed: Any
    reference: str

    def __new__(cls, text: str, typed: Any, reference: str) -> Substituted:
        obj = super().__new__(cls, text)
        obj.typed = typed
        obj.reference = reference
        return obj


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def decode(cls: type[T], raw: Any, path: str) -> T:
    """Build ``cls`` (a dataclass) from ``raw`` (a mapping or None), or raise ConfigError."""
    if isinstance(raw, Substituted):
        raw = raw.typed
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, f"expected a mapping, got {kind_of(raw)}")
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


def _takes_text(tp: Any) -> bool:
    """Whether a field of type ``tp`` wants a substituted value as the text it was."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_takes_text(a) for a in get_args(tp) if a is not type(None))
    if origin is Literal:
        return all(isinstance(c, str) for c in get_args(tp))
    return tp is str


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        bytes: "binary data",
        set: "a set",
    }
    return names.get(type(value), f"a {type(value).__name__}")


def _decode_value(tp: Any, value: Any, path: str) -> Any:
    if isinstance(value, Substituted):
        inner = str(value) if _takes_text(tp) else value.typed
        try:
            return _decode_value(tp, inner, path)
        except ConfigError as err:
            # Never echo what a reference expanded to: name the reference instead.
            message = err.message.replace(repr(inner), value.reference)
            message = message.replace(shown(inner), value.reference)
            raise ConfigError(err.path, message) from None
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
            raise ConfigError(path, f"expected a list, got {kind_of(value)}")
        (item,) = get_args(tp)
        return [_decode_value(item, v, join(path, i)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {kind_of(value)}")
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
        try:
            number = float(value)
        except OverflowError:
            raise ConfigError(path, f"is too large ({len(str(value))} digits)") from None
        if not math.isfinite(number):
            # .nan passes every comparison a validate() makes; .inf is no physical value.
            raise ConfigError(path, f"expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(path, f"expected a string, got {kind_of(value)}")
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
            "pattern": DURATION_PATTERN,
            "minimum": 0,
            "description": "a duration: 250ms, 5s, 1m30s, 1h, or a number of seconds",
        }
    return {
        bool: {"type": "boolean"},
        int: {"type": "integer"},
        float: {"type": "number"},
        str: {"type": "string"},
    }.get(tp, {})

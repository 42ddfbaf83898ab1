"""Finds component factories through Python entry points.

Groups ``otel_kepler.receivers``, ``otel_kepler.processors`` and
``otel_kepler.exporters``: a separate package adds a component by declaring an
entry point whose value is its :class:`~otel_kepler.component.Factory`.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

from otel_kepler.component import Factory

log = logging.getLogger(__name__)

GROUPS = {
    "receivers": "otel_kepler.receivers",
    "processors": "otel_kepler.processors",
    "exporters": "otel_kepler.exporters",
}


class Registry:
    """Factories by kind and type; loaded lazily from entry points, or given directly."""

    def __init__(self, factories: dict[str, dict[str, Factory[Any, Any]]] | None = None) -> None:
        self._factories = factories
        self.broken: dict[str, str] = {}  # "receivers/foo" -> why its entry point failed

    def factories(self, kind: str) -> dict[str, Factory[Any, Any]]:
        if self._factories is None:
            self._factories = {k: self._load(k, group) for k, group in GROUPS.items()}
        return self._factories[kind]

    def _load(self, kind: str, group: str) -> dict[str, Factory[Any, Any]]:
        found: dict[str, Factory[Any, Any]] = {}
        for ep in entry_points(group=group):
            try:
                factory = ep.load()
            except Exception as err:  # a broken plugin must not take the agent down
                self.broken[f"{kind}/{ep.name}"] = f"{ep.value}: {type(err).__name__}: {err}"
                log.warning("cannot load %s %s from %s: %s", kind[:-1], ep.name, ep.value, err)
                continue
            if not isinstance(factory, Factory) or factory.type != ep.name:
                self.broken[f"{kind}/{ep.name}"] = f"{ep.value} is not a Factory of type {ep.name}"
                continue
            found[ep.name] = factory
        return found


def summary(factory: Factory[Any, Any]) -> str:
    """A factory's description as lists show them all: one line, capitalised, no final period.

    Descriptions come from many packages, written in different hands; listing them
    consistently should not depend on each one following a style.
    """
    text = " ".join(factory.description.split()).rstrip(".")
    return text[:1].upper() + text[1:]


_default: Registry | None = None


def default_registry() -> Registry:
    global _default
    if _default is None:
        _default = Registry()
    return _default

"""The ``regression`` model: zone power from per-tick features, read from a JSON model file.

A model file (version 1)::

    {
      "format": "otel-kepler-power-model",
      "version": 1,
      "name": "r740-package",
      "output": {"zone": "package", "kind": "dynamic", "idle_watts": 48.2, "unit": "W"},
      "features": ["cpu_usage_ratio", "cpu_frequency_ghz"],
      "estimator": "linear",
      "linear": {
        "terms": [["cpu_usage_ratio"], ["cpu_usage_ratio", "cpu_usage_ratio"], ...],
        "scaler": {"mean": [...], "scale": [...]},
        "weights": [...],
        "bias": 71.3
      },
      "trained_on": {"host": "...", "cpu": "...", "rows": 69120, "files": [...], ...},
      "heldout_error": {"rows": 17280, "mae_watts": 1.2, "mape_percent": 1.9,
                        "max_error_watts": 7.5}
    }

``linear`` is a least-squares fit over *terms*, products of features (a term of one
feature is the feature; two give the quadratic and interaction terms), each
standardised with the scaler before the weights apply. ``"estimator": "gbm"``
replaces the ``linear`` section by ``gbm``: ``{"init": w, "learning_rate": r,
"trees": [{"feature": [...], "threshold": [...], "left": [...], "right": [...],
"value": [...]}]}``, regression trees over the raw features (a negative feature
marks a leaf), so prediction needs neither numpy nor scikit-learn.

``kind: absolute`` predicts the zone's power; ``dynamic`` predicts power above
idle, added to ``idle_watts`` (measured when the model was trained, or configured).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from .features import FEATURES

FORMAT = "otel-kepler-power-model"
VERSION = 1
ZONES = ("package", "dram", "platform")
KINDS = ("absolute", "dynamic")

Zone = Literal["package", "dram", "platform"]
Kind = Literal["absolute", "dynamic"]


class ModelFileError(ValueError):
    """A model file this agent cannot use; the message names the problem."""


@dataclass(frozen=True, slots=True)
class Tree:
    """One regression tree as flat arrays (scikit-learn's layout); a negative feature: a leaf."""

    feature: tuple[int, ...]
    threshold: tuple[float, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    value: tuple[float, ...]

    def predict(self, x: Sequence[float]) -> float:
        node = 0
        feature, threshold = self.feature, self.threshold
        while feature[node] >= 0:
            node = self.left[node] if x[feature[node]] <= threshold[node] else self.right[node]
        return self.value[node]


@dataclass(frozen=True, slots=True)
class Linear:
    """Weights over standardised terms (products of features, by feature index)."""

    terms: tuple[tuple[int, ...], ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float

    def predict(self, x: Sequence[float]) -> float:
        total = self.bias
        for term, mean, scale, weight in zip(
            self.terms, self.mean, self.scale, self.weights, strict=True
        ):
            value = 1.0
            for index in term:
                value *= x[index]
            total += weight * (value - mean) / scale
        return total


@dataclass(frozen=True, slots=True)
class Boosted:
    """A gradient-boosted sum of trees."""

    init: float
    learning_rate: float
    trees: tuple[Tree, ...]

    def predict(self, x: Sequence[float]) -> float:
        return self.init + self.learning_rate * sum(tree.predict(x) for tree in self.trees)


@dataclass(frozen=True)
class PowerModel:
    """A loaded, validated model file."""

    name: str
    zone: Zone
    kind: Kind
    features: tuple[str, ...]
    body: Linear | Boosted
    idle_watts: float | None = None  # dynamic models: idle measured at training
    trained_on: dict[str, Any] = field(default_factory=dict)
    heldout_error: dict[str, float] = field(default_factory=dict)

    @property
    def estimator(self) -> str:
        return "linear" if isinstance(self.body, Linear) else "gbm"

    def predict(self, x: Sequence[float], idle_watts: float | None = None) -> float:
        """Watts for the feature vector ``x`` (in ``features`` order), never below 0.

        ``idle_watts`` (dynamic models) overrides the idle measured at training.
        """
        watts = self.body.predict(x)
        if self.kind == "dynamic":
            idle = self.idle_watts if idle_watts is None else idle_watts
            watts = (idle or 0.0) + max(watts, 0.0)
        return max(watts, 0.0)

    def predict_features(
        self, features: Mapping[str, float], idle_watts: float | None = None
    ) -> float:
        return self.predict([features[name] for name in self.features], idle_watts)

    def to_json(self) -> dict[str, Any]:
        output: dict[str, Any] = {"zone": self.zone, "kind": self.kind, "unit": "W"}
        if self.idle_watts is not None:
            output["idle_watts"] = self.idle_watts
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "output": output,
            "features": list(self.features),
            "estimator": self.estimator,
        }
        body = self.body
        if isinstance(body, Linear):
            doc["linear"] = {
                "terms": [[self.features[i] for i in term] for term in body.terms],
                "scaler": {"mean": list(body.mean), "scale": list(body.scale)},
                "weights": list(body.weights),
                "bias": body.bias,
            }
        else:
            doc["gbm"] = {
                "init": body.init,
                "learning_rate": body.learning_rate,
                "trees": [
                    {
                        "feature": list(t.feature),
                        "threshold": list(t.threshold),
                        "left": list(t.left),
                        "right": list(t.right),
                        "value": list(t.value),
                    }
                    for t in body.trees
                ],
            }
        doc["trained_on"] = self.trained_on
        doc["heldout_error"] = self.heldout_error
        return doc


def save(model: PowerModel, path: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(model.to_json(), file, indent=1)
        file.write("\n")


def load(path: str) -> PowerModel:
    """Read and validate a model file; ModelFileError names the file and the problem."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as err:
        raise ModelFileError(f"cannot read model file {path}: {err.strerror}") from None
    try:
        return parse(text)
    except ModelFileError as err:
        raise ModelFileError(f"model file {path}: {err}") from None


def parse(text: str) -> PowerModel:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelFileError(f"not valid JSON (truncated?): {err}") from None
    return from_json(doc)


def from_json(doc: Any) -> PowerModel:
    if not isinstance(doc, dict):
        raise ModelFileError("expected a JSON object")
    if doc.get("format") != FORMAT:
        raise ModelFileError(f'format is {doc.get("format")!r}, expected "{FORMAT}"')
    if doc.get("version") != VERSION:
        raise ModelFileError(
            f"unsupported version {doc.get('version')!r} (this agent reads version {VERSION})"
        )
    output = _mapping(doc, "output")
    zone = output.get("zone")
    if zone not in ZONES:
        raise ModelFileError(f"output.zone must be one of {', '.join(ZONES)}, got {zone!r}")
    kind = output.get("kind")
    if kind not in KINDS:
        raise ModelFileError(f"output.kind must be absolute or dynamic, got {kind!r}")
    idle = output.get("idle_watts")
    if idle is not None:
        idle = _number(idle, "output.idle_watts")
    if kind == "dynamic" and idle is None:
        raise ModelFileError("output.idle_watts is required for a dynamic model")
    features = _features(doc.get("features"))
    estimator = doc.get("estimator")
    body: Linear | Boosted
    if estimator == "linear":
        body = _linear(_mapping(doc, "linear"), features)
    elif estimator == "gbm":
        body = _boosted(_mapping(doc, "gbm"), len(features))
    else:
        raise ModelFileError(f"estimator must be linear or gbm, got {estimator!r}")
    heldout = doc.get("heldout_error") or {}
    trained = doc.get("trained_on") or {}
    if not isinstance(heldout, dict) or not isinstance(trained, dict):
        raise ModelFileError("trained_on and heldout_error must be objects")
    return PowerModel(
        name=str(doc.get("name") or "unnamed"),
        zone=cast(Zone, zone),
        kind=cast(Kind, kind),
        features=features,
        body=body,
        idle_watts=idle,
        trained_on=trained,
        heldout_error=heldout,
    )


def _mapping(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ModelFileError(f"{key} is missing or not an object")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelFileError(f"{where} is not a finite number: {value!r}")
    return float(value)


def _numbers(value: Any, where: str, length: int | None = None) -> tuple[float, ...]:
    if not isinstance(value, list):
        raise ModelFileError(f"{where} is not a list")
    if length is not None and len(value) != length:
        raise ModelFileError(f"{where} has {len(value)} values, expected {length}")
    return tuple(_number(v, f"{where}[{i}]") for i, v in enumerate(value))


def _features(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ModelFileError("features must be a non-empty list of feature names")
    for name in value:
        if name not in FEATURES:
            known = ", ".join(FEATURES)
            raise ModelFileError(f"unknown feature {name!r} (known: {known})")
    if len(set(value)) != len(value):
        raise ModelFileError("a feature is listed twice")
    return tuple(value)


def _linear(section: dict[str, Any], features: tuple[str, ...]) -> Linear:
    raw_terms = section.get("terms")
    if not isinstance(raw_terms, list) or not raw_terms:
        raise ModelFileError("linear.terms must be a non-empty list")
    terms: list[tuple[int, ...]] = []
    for i, term in enumerate(raw_terms):
        if not isinstance(term, list) or not term:
            raise ModelFileError(f"linear.terms[{i}] must be a non-empty list of features")
        for name in term:
            if name not in features:
                raise ModelFileError(f"linear.terms[{i}] uses {name!r}, which is not in features")
        terms.append(tuple(features.index(name) for name in term))
    n = len(terms)
    scaler = section.get("scaler")
    if not isinstance(scaler, dict):
        raise ModelFileError("linear.scaler is missing or not an object")
    mean = _numbers(scaler.get("mean"), "linear.scaler.mean", n)
    scale = _numbers(scaler.get("scale"), "linear.scaler.scale", n)
    for i, s in enumerate(scale):
        if s <= 0:
            raise ModelFileError(f"linear.scaler.scale[{i}] must be greater than 0, got {s:g}")
    weights = _numbers(section.get("weights"), "linear.weights", n)
    bias = _number(section.get("bias"), "linear.bias")
    return Linear(tuple(terms), mean, scale, weights, bias)


def _boosted(section: dict[str, Any], n_features: int) -> Boosted:
    init = _number(section.get("init"), "gbm.init")
    rate = _number(section.get("learning_rate"), "gbm.learning_rate")
    raw = section.get("trees")
    if not isinstance(raw, list) or not raw:
        raise ModelFileError("gbm.trees must be a non-empty list")
    trees = tuple(_tree(t, f"gbm.trees[{i}]", n_features) for i, t in enumerate(raw))
    return Boosted(init, rate, trees)


def _tree(raw: Any, where: str, n_features: int) -> Tree:
    if not isinstance(raw, dict):
        raise ModelFileError(f"{where} is not an object")
    value = _numbers(raw.get("value"), f"{where}.value")
    n = len(value)
    threshold = _numbers(raw.get("threshold"), f"{where}.threshold", n)
    ints: dict[str, tuple[int, ...]] = {}
    for key in ("feature", "left", "right"):
        items = raw.get(key)
        if not isinstance(items, list) or len(items) != n:
            raise ModelFileError(f"{where}.{key} must be a list of {n} integers")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise ModelFileError(f"{where}.{key} must be a list of {n} integers")
        ints[key] = tuple(items)
    for node in range(n):
        f = ints["feature"][node]
        if f >= n_features or f < -2:
            raise ModelFileError(f"{where}.feature[{node}] = {f} is not a feature index")
        if f >= 0 and not (node < ints["left"][node] < n and node < ints["right"][node] < n):
            raise ModelFileError(f"{where}: node {node} has children outside the tree")
    return Tree(ints["feature"], threshold, ints["left"], ints["right"], value)

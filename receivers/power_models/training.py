"""Record features and measured power on a metered node; train a regression model from them.

``otel-kepler record`` runs the configured pipeline (with RAPL, hwmon, IPMI... as
meters) and writes one row per tick: the features of
:mod:`otel_kepler.receivers.power_models.features` and the measured power of the
package, dram and platform zones. The unit is in every column name (``_watts``,
``_ghz``, ``_per_s``, ``_s``); ``timestamp`` is Unix seconds. A ``.csv`` file gets
a header and empty cells for what this host lacks; any other name gets JSON lines
with ``null`` instead.

``otel-kepler train`` reads such files, orders the rows by time, holds out the last
20% and fits on the rest: least squares over the features and their products
(degree 2 by default, optionally with non-negative weights), or a small
gradient-boosted model where scikit-learn is installed. The held-out MAE, MAPE and
max error are printed and written into the model file. Where the model uses node
activity features (network, block I/O, softirqs), the same fit without them is
scored on the same held-out rows and printed too, so that their worth is measured.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import os
import platform
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TextIO

import numpy as np
import numpy.typing as npt

from otel_kepler.component import Receiver
from otel_kepler.config import AgentConfig
from otel_kepler.data import Contribution, ProcessSample
from otel_kepler.receivers.ebpf import EbpfReceiver
from otel_kepler.receivers.estimator import counters_off
from otel_kepler.receivers.power_models import curve, regression
from otel_kepler.receivers.power_models.features import (
    ACTIVITY_FEATURES,
    COUNTER_FEATURES,
    FEATURES,
    TARGETS,
    FeatureReader,
    counter_totals,
)

log = logging.getLogger(__name__)

Array = npt.NDArray[np.float64]
COLUMNS: tuple[str, ...] = ("timestamp", "interval_s", *FEATURES, *TARGETS.values())
HOLDOUT = 0.2


class TrainingError(Exception):
    """Data that cannot train a model; the message says what is wrong."""


# -- recording ------------------------------------------------------------------------


class _Tap(Receiver):
    """Passes a receiver through and keeps what it returned this tick."""

    def __init__(self, inner: Receiver, after_collect: Callable[[], None]) -> None:
        self.inner = inner
        self.after_collect = after_collect
        self.last: Contribution | None = None

    def start(self) -> None:
        self.inner.start()

    def collect(self) -> Contribution:
        self.last = None
        try:
            part = self.inner.collect()
        finally:
            self.after_collect()
        self.last = part
        return part

    def shutdown(self) -> None:
        self.inner.shutdown()


def target_of(component: str, zone: str) -> str | None:
    """The recording column a measured reading belongs to (psys is platform power)."""
    if component == "cpu" and zone in ("package", "dram"):
        return str(TARGETS[zone])
    if (component, zone) in (("platform", "platform"), ("cpu", "psys")):
        return str(TARGETS["platform"])
    return None


def measured_watts(parts: Iterable[Contribution], seconds: float) -> dict[str, float]:
    """Watts per target column from the meters' readings (never a model's) of one tick.

    Where two sources measure the same target, the first receiver's is used.
    """
    joules: dict[str, float] = {}
    source_of: dict[str, str] = {}
    for part in parts:
        for reading in part.energy:
            column = target_of(reading.component, reading.zone)
            if column is None or reading.source == "model":
                continue
            if source_of.setdefault(column, reading.source) != reading.source:
                continue
            joules[column] = joules.get(column, 0.0) + reading.joules
    return {k: v / seconds for k, v in joules.items()} if seconds > 0 else {}


class RowWriter:
    """Writes rows as CSV (``.csv``) or JSON lines, flushed every row."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.csv = path.endswith(".csv")
        self._file: TextIO = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._writer: Any = None
        if self.csv:
            self._writer = csv.writer(self._file)
            self._writer.writerow(COLUMNS)

    def write(self, row: dict[str, float | None]) -> None:
        if self.csv:
            self._writer.writerow(["" if row.get(c) is None else repr(row[c]) for c in COLUMNS])
        else:
            self._file.write(json.dumps({c: row.get(c) for c in COLUMNS}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class Recorder:
    """Runs a Service and turns each tick into a row of features and measured watts."""

    def __init__(self, config: AgentConfig) -> None:
        from otel_kepler.service import Service

        self.service = Service(config)
        self.reader = FeatureReader(config.host.procfs, config.host.sysfs)
        self._sampled = False
        self._features: dict[str, float] | None = None
        self.taps = {cid: _Tap(r, self._sample) for cid, r in self.service.receivers.items()}
        self.service.receivers.update(self.taps)
        self.counters = False

    def _sample(self) -> None:
        """Node features, read right after the first receiver of the tick (the meters')."""
        if not self._sampled:
            self._sampled = True
            self._features = self.reader.sample()

    def start(self) -> None:
        self.service.start()
        off = [counters_off(t.inner) for t in self.taps.values() if _is_ebpf(t.inner)]
        self.counters = any(reason is None for reason in off)
        log.info(
            "record: hardware counters %s",
            "from the ebpf receiver"
            if self.counters
            else "not recorded (no ebpf receiver reading them)",
        )

    def tick(self) -> dict[str, float | None] | None:
        """One tick of the pipeline; its row, or None while priming."""
        self._sampled = False
        self._features = None
        self.service.tick()
        features, seconds = self._features, self.reader.elapsed
        if features is None or seconds <= 0:
            return None
        parts = [t.last for t in self.taps.values() if t.last is not None]
        row: dict[str, float | None] = {"timestamp": time.time(), "interval_s": seconds}
        row.update(features)
        if self.counters:
            samples = _samples(parts)
            row.update({k: v / seconds for k, v in counter_totals(samples).items()})
        row.update(measured_watts(parts, seconds))
        return row

    def shutdown(self) -> None:
        self.service.shutdown()


def _is_ebpf(receiver: Receiver) -> bool:
    return isinstance(receiver, EbpfReceiver)


def _samples(parts: Iterable[Contribution]) -> list[ProcessSample]:
    samples: dict[int, ProcessSample] = {}
    exited: list[ProcessSample] = []
    for part in parts:
        if part.processes:
            samples.update(part.processes)
        exited.extend(part.exited)
    return [*samples.values(), *exited]


def record(
    config: AgentConfig,
    out: str,
    duration: float | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Record until ``duration`` seconds or ``stop``; returns the number of rows written."""
    stop = stop or threading.Event()
    recorder = Recorder(config)
    recorder.start()
    interval = float(config.service.interval)
    rows = 0
    begin = time.monotonic()
    try:
        with RowWriter(out) as writer:
            next_tick = begin
            while not stop.is_set():
                row = recorder.tick()
                if row is not None:
                    writer.write(row)
                    rows += 1
                now = time.monotonic()
                if duration is not None and now - begin >= duration:
                    break
                next_tick = max(next_tick + interval, now)
                if stop.wait(timeout=next_tick - now):
                    break
    finally:
        recorder.shutdown()
    return rows


# -- datasets -------------------------------------------------------------------------


@dataclass
class Dataset:
    """Recorded rows as columns (NaN where a value is missing), ordered by time."""

    columns: dict[str, Array]
    files: list[str]

    @property
    def rows(self) -> int:
        return len(self.columns["timestamp"])

    def complete(self, name: str) -> bool:
        column = self.columns.get(name)
        return column is not None and bool(np.isfinite(column).all())


def _value(text: Any, where: str) -> float:
    if text is None or text == "":
        return math.nan
    try:
        return float(text)
    except (TypeError, ValueError):
        raise TrainingError(f"{where}: not a number: {text!r}") from None


def read_rows(path: str) -> list[dict[str, float]]:
    """The rows of one recording (CSV or JSON lines), missing values as NaN."""
    try:
        with open(path, encoding="utf-8", newline="") as file:
            if path.endswith(".csv"):
                raw: list[dict[str, Any]] = list(csv.DictReader(file))
            else:
                raw = [_json_line(line, path, n) for n, line in enumerate(file, 1) if line.strip()]
    except OSError as err:
        raise TrainingError(f"cannot read {path}: {err.strerror}") from None
    rows: list[dict[str, float]] = []
    for number, item in enumerate(raw, start=1):
        where = f"{path} row {number}"
        rows.append({c: _value(item.get(c), f"{where}, {c}") for c in COLUMNS})
    return rows


def _json_line(line: str, path: str, number: int) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as err:
        raise TrainingError(f"{path} line {number}: not JSON: {err}") from None
    if not isinstance(item, dict):
        raise TrainingError(f"{path} line {number}: not a JSON object")
    return item


def load_dataset(paths: Sequence[str]) -> Dataset:
    rows = [row for path in paths for row in read_rows(path)]
    if not rows:
        raise TrainingError(f"no rows in {', '.join(paths)}")
    rows.sort(key=lambda r: r["timestamp"])
    columns = {c: np.array([r[c] for r in rows], dtype=np.float64) for c in COLUMNS}
    return Dataset(columns, list(paths))


# -- fitting --------------------------------------------------------------------------


@dataclass(frozen=True)
class Errors:
    rows: int
    mae_watts: float
    mape_percent: float
    max_error_watts: float

    def as_dict(self) -> dict[str, float]:
        return {
            "rows": self.rows,
            "mae_watts": round(self.mae_watts, 6),
            "mape_percent": round(self.mape_percent, 6),
            "max_error_watts": round(self.max_error_watts, 6),
        }


def errors(predicted: Array, measured: Array) -> Errors:
    error = np.abs(predicted - measured)
    nonzero = measured != 0
    mape = float(np.mean(error[nonzero] / np.abs(measured[nonzero])) * 100) if nonzero.any() else 0
    return Errors(len(measured), float(error.mean()), mape, float(error.max()))


def expand_terms(n_features: int, degree: int) -> list[tuple[int, ...]]:
    """Products of up to ``degree`` features, by index: (0,), (1,), (0, 0), (0, 1), ..."""
    return [
        term
        for d in range(1, degree + 1)
        for term in itertools.combinations_with_replacement(range(n_features), d)
    ]


def term_matrix(x: Array, terms: Sequence[tuple[int, ...]]) -> Array:
    out = np.ones((x.shape[0], len(terms)), dtype=np.float64)
    for j, term in enumerate(terms):
        for index in term:
            out[:, j] *= x[:, index]
    return out


def nnls(gram: Array, target: Array, sweeps: int = 20_000, tol: float = 1e-12) -> Array:
    """Non-negative least squares by coordinate descent on the normal equations."""
    w = np.zeros(len(target))
    diagonal = np.diag(gram).copy()
    diagonal[diagonal <= 0] = 1.0
    for _ in range(sweeps):
        change = 0.0
        for j in range(len(w)):
            new = max(0.0, w[j] - (gram[j] @ w - target[j]) / diagonal[j])
            change = max(change, abs(new - w[j]))
            w[j] = new
        if change < tol * (1.0 + float(np.abs(w).max())):
            break
    return w


def fit_linear(x: Array, y: Array, degree: int, non_negative: bool) -> regression.Linear:
    """Least squares over standardised terms; constant terms are left out."""
    all_terms = expand_terms(x.shape[1], degree)
    z = term_matrix(x, all_terms)
    mean, scale = z.mean(axis=0), z.std(axis=0)
    keep = scale > 1e-12 * np.maximum(1.0, np.abs(mean))
    if not keep.any():
        raise TrainingError("every feature is constant in the training rows: nothing to fit")
    terms = [t for t, k in zip(all_terms, keep, strict=True) if k]
    mean, scale = mean[keep], scale[keep]
    zs = (z[:, keep] - mean) / scale
    bias = float(y.mean())
    centred = y - bias
    if non_negative:
        weights = nnls(zs.T @ zs, zs.T @ centred)
    else:
        weights = np.linalg.lstsq(zs, centred, rcond=None)[0]
    return regression.Linear(
        tuple(terms),
        tuple(float(v) for v in mean),
        tuple(float(v) for v in scale),
        tuple(float(v) for v in weights),
        bias,
    )


def fit_gbm(x: Array, y: Array, trees: int = 100, depth: int = 3) -> regression.Boosted:
    """A small gradient-boosted model (scikit-learn), exported as plain trees.

    Each tree sees half of the rows (stochastic gradient boosting): half the time, and
    on a day of 1 s ticks no measurable loss.
    """
    try:
        from sklearn.ensemble import GradientBoostingRegressor
    except ImportError:
        raise TrainingError(
            "--method gbm needs scikit-learn: pip install 'otel-kepler[models]'"
        ) from None
    model = GradientBoostingRegressor(
        n_estimators=trees, max_depth=depth, learning_rate=0.15, subsample=0.5, random_state=0
    )
    model.fit(x, y)
    exported = tuple(_tree(estimator.tree_) for estimator in model.estimators_[:, 0])
    init = float(np.asarray(model.init_.predict(x[:1])).ravel()[0])
    return regression.Boosted(init, float(model.learning_rate), exported)


def _tree(tree: Any) -> regression.Tree:
    return regression.Tree(
        feature=tuple(int(v) for v in tree.feature),
        threshold=tuple(float(v) for v in tree.threshold),
        left=tuple(int(v) for v in tree.children_left),
        right=tuple(int(v) for v in tree.children_right),
        value=tuple(float(v) for v in np.asarray(tree.value).reshape(tree.node_count, -1)[:, 0]),
    )


# -- training -------------------------------------------------------------------------


@dataclass
class TrainOptions:
    target: Literal["package", "dram", "platform"] = "package"
    method: Literal["linear", "gbm"] = "linear"
    non_negative: bool = False
    degree: int = 2
    features: list[str] | None = None  # None: every feature recorded on every row
    kind: Literal["absolute", "dynamic"] = "absolute"
    idle_watts: float | None = None  # dynamic: configured idle; None: measured
    name: str = ""
    holdout: float = HOLDOUT


@dataclass
class TrainResult:
    model: regression.PowerModel
    heldout: Errors
    train_rows: int
    notes: list[str] = field(default_factory=list)
    #: the same fit on the same held-out rows, with the usable activity features added
    #: (where the model has none) or taken away (where it has some); None: no such fit
    compared: Errors | None = None
    compared_features: tuple[str, ...] = ()


def choose_features(
    data: Dataset, wanted: list[str] | None, train: slice, default: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """The features to fit on, and notes on the ones left out.

    Without ``wanted``, the ``default`` ones, or the features other than the activity
    ones: on a short recording their noise costs more than they explain, so they are
    used when asked for (and always scored beside the model, see :func:`train`).
    """
    notes: list[str] = []
    if wanted is not None:
        names = list(wanted)
    elif default:
        names = list(default)
    else:
        names = [n for n in FEATURES if n not in ACTIVITY_FEATURES]
    chosen: list[str] = []
    for name in names:
        if name not in FEATURES:
            raise TrainingError(f"unknown feature {name!r} (known: {', '.join(FEATURES)})")
        if not data.complete(name):
            if wanted is not None:
                raise TrainingError(f"feature {name} is missing in some rows of the data")
            notes.append(f"{name}: not recorded on this host")
            continue
        column = data.columns[name][train]
        if float(column.std()) <= 1e-12 * max(1.0, abs(float(column.mean()))):
            notes.append(f"{name}: constant in the training rows, left out")
            continue
        chosen.append(name)
    if not chosen:
        raise TrainingError("no usable feature in the data")
    return chosen, notes


def measured_idle(data: Dataset, target: Array) -> float:
    """Median power of the 5% of rows with the lowest CPU usage (at least 3 rows)."""
    ratio = data.columns["cpu_usage_ratio"]
    count = max(3, len(ratio) // 20)
    lowest = np.argsort(ratio, kind="stable")[:count]
    return float(np.median(target[lowest]))


def train(paths: Sequence[str], options: TrainOptions) -> TrainResult:
    data = load_dataset(paths)
    column = TARGETS[options.target]
    y_all = data.columns[column]
    present = np.isfinite(y_all)
    if not present.any():
        raise TrainingError(
            f"no {column} in the data: this recording has no {options.target} meter"
        )
    if not present.all():
        data = Dataset({c: v[present] for c, v in data.columns.items()}, data.files)
        y_all = data.columns[column]
    if data.rows < 10:
        raise TrainingError(f"{data.rows} rows with {column}: at least 10 are needed")
    split = data.rows - max(1, round(data.rows * options.holdout))
    names, notes = choose_features(data, options.features, slice(0, split))
    model, heldout = _fit(data, names, y_all, split, options)
    trained_on = _provenance(data, split, options)
    other = _other_features(data, names, split)
    compared: Errors | None = None
    if other:
        compared = _fit(data, other, y_all, split, options)[1]
        key = "with" if len(other) > len(names) else "without"
        trained_on[f"heldout_error_{key}_activity"] = {"features": other, **compared.as_dict()}
    model = regression.PowerModel(
        name=model.name,
        zone=model.zone,
        kind=model.kind,
        features=model.features,
        body=model.body,
        idle_watts=model.idle_watts,
        trained_on=trained_on,
        heldout_error=heldout.as_dict(),
    )
    return TrainResult(model, heldout, split, notes, compared, tuple(other))


def _other_features(data: Dataset, names: list[str], split: int) -> list[str]:
    """The features of the comparison: ``names`` without the activity features if they
    have some (and something else), else with the usable recorded ones added; [] if none.
    """
    if any(n in ACTIVITY_FEATURES for n in names):
        others = [n for n in names if n not in ACTIVITY_FEATURES]
        return others if others else []
    try:
        extra, _ = choose_features(data, None, slice(0, split), ACTIVITY_FEATURES)
    except TrainingError:  # none recorded, or all constant
        return []
    return [*names, *extra]


def _fit(
    data: Dataset, names: list[str], y_all: Array, split: int, options: TrainOptions
) -> tuple[regression.PowerModel, Errors]:
    """A model of ``names`` fitted on the rows before ``split``; its error on the rest."""
    train_rows, test_rows = slice(0, split), slice(split, None)
    x_all = np.column_stack([data.columns[n] for n in names])
    idle = None
    y_fit = y_all[train_rows]
    if options.kind == "dynamic":
        idle = options.idle_watts
        if idle is None:
            idle = measured_idle(
                Dataset({c: v[train_rows] for c, v in data.columns.items()}, data.files), y_fit
            )
        y_fit = y_fit - idle
    body: regression.Linear | regression.Boosted
    if options.method == "gbm":
        body = fit_gbm(x_all[train_rows], y_fit)
    else:
        body = fit_linear(x_all[train_rows], y_fit, options.degree, options.non_negative)
    model = regression.PowerModel(
        name=options.name or f"{options.target}-{options.method}",
        zone=options.target,
        kind=options.kind,
        features=tuple(names),
        body=body,
        idle_watts=idle,
    )
    predicted = np.array([model.predict(row) for row in x_all[test_rows].tolist()])
    return model, errors(predicted, y_all[test_rows])


def _provenance(data: Dataset, split: int, options: TrainOptions) -> dict[str, Any]:
    stamps = data.columns["timestamp"]
    info: dict[str, Any] = {
        "files": [os.path.basename(p) for p in data.files],
        "rows": split,
        "heldout_rows": data.rows - split,
        "from": _iso(float(stamps[0])),
        "to": _iso(float(stamps[-1])),
        "target": TARGETS[options.target],
        "method": options.method,
        "trained_by": socket.gethostname(),
        "machine": platform.machine(),
    }
    if options.method == "linear":
        info["degree"] = options.degree
        info["non_negative"] = options.non_negative
    try:
        info["cpu"] = curve.read_cpuinfo("/proc/cpuinfo").model_name
    except OSError:
        pass
    return info


def _scores(e: Errors) -> str:
    return (
        f"MAE {e.mae_watts:.3f} W, MAPE {e.mape_percent:.2f}%, max error {e.max_error_watts:.3f} W"
    )


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def report(result: TrainResult) -> str:
    """What ``otel-kepler train`` prints."""
    e = result.heldout
    model = result.model
    lines = [
        f"model {model.name}: {model.kind} {model.zone} power from {', '.join(model.features)} "
        f"({model.estimator}, {result.train_rows} training rows)",
        *(f"  left out {note}" for note in result.notes),
        f"held-out {e.rows} rows (the last {HOLDOUT:.0%} by time): {_scores(e)}",
    ]
    if result.compared is not None:
        compared_has_more = len(result.compared_features) > len(model.features)
        richer = result.compared_features if compared_has_more else model.features
        with_e, without_e = (result.compared, e) if compared_has_more else (e, result.compared)
        added = ", ".join(n for n in richer if n in ACTIVITY_FEATURES)
        lines.append(f"  with the activity features ({added}): {_scores(with_e)}")
        lines.append(f"  without the activity features: {_scores(without_e)}")
    if model.idle_watts is not None:
        lines.insert(1, f"  idle {model.idle_watts:.3f} W")
    return "\n".join(lines)


__all__ = [
    "ACTIVITY_FEATURES",
    "COLUMNS",
    "COUNTER_FEATURES",
    "Dataset",
    "Errors",
    "Recorder",
    "RowWriter",
    "TrainOptions",
    "TrainResult",
    "TrainingError",
    "load_dataset",
    "record",
    "report",
    "train",
]

"""Power models: prediction per tick (target under 0.5 ms) and training on a day (under 30 s).

    .venv/bin/python bench/bench_models.py [ROWS]

Prediction: CPU time (time.process_time) per call, median of 9 batches of 2,000 calls,
of the curve, a degree-2 linear model over three features (9 terms), a 100-tree
gradient-boosted model, and a whole estimator ``collect()`` with the regression model
(reading the real /proc/stat and computing the features).

Training: a day of 1 s ticks (ROWS, default 86,400) of synthetic data following a known
non-linear function plus noise, written as CSV, then ``train()`` end to end (reading the
CSV, the 80/20 split by time, the fit, the held-out errors): least squares, non-negative
least squares, and gradient boosting where scikit-learn is installed. Wall seconds.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otel_kepler.component import HostSettings  # noqa: E402
from otel_kepler.receivers.estimator import (  # noqa: E402
    EstimatorConfig,
    EstimatorReceiver,
    RegressionConfig,
)
from otel_kepler.receivers.power_models import curve, regression  # noqa: E402
from otel_kepler.receivers.power_models.training import RowWriter, TrainOptions, train  # noqa: E402

PREDICT_TARGET_MS = 0.5
TRAIN_TARGET_S = 30.0
CALLS = 2000


def per_call_us(function: Callable[[], object]) -> float:
    batches = []
    for _ in range(9):
        begin = time.process_time()
        for _ in range(CALLS):
            function()
        batches.append((time.process_time() - begin) / CALLS * 1e6)
    return statistics.median(batches)


def write_day(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    u = np.clip(0.5 + 0.45 * np.sin(np.arange(rows) / 3600) + rng.normal(0, 0.1, rows), 0, 1)
    f = rng.uniform(1.2, 3.5, rows)
    instructions = u * f * rng.uniform(2e9, 6e9, rows)
    watts = 30 + 80 * u + 40 * u**2 + 12 * u * f + 1.5e-9 * instructions
    watts += rng.normal(0, 0.8, rows)
    with RowWriter(str(path)) as writer:
        for i in range(rows):
            writer.write(
                {
                    "timestamp": 1.7e9 + i,
                    "interval_s": 1.0,
                    "cpu_usage_ratio": float(u[i]),
                    "cpu_frequency_ghz": float(f[i]),
                    "instructions_per_s": float(instructions[i]),
                    "package_watts": float(watts[i]),
                }
            )


def timed(label: str, run: Callable[[], object]) -> tuple[float, object]:
    begin = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - begin
    return seconds, result


def main() -> int:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 86_400
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "day.csv"
        write_day(data, rows)
        print(f"training on {rows} rows ({data.stat().st_size / 1e6:.1f} MB CSV), wall seconds:")
        results: dict[str, regression.PowerModel] = {}
        methods: list[tuple[str, TrainOptions]] = [
            ("least squares", TrainOptions()),
            ("non-negative", TrainOptions(non_negative=True)),
        ]
        try:
            import sklearn  # noqa: F401

            methods.append(("gbm (sklearn)", TrainOptions(method="gbm")))
        except ImportError:
            print("  gbm: scikit-learn not installed, skipped")
        worst = 0.0
        for label, options in methods:
            seconds, result = timed(label, lambda o=options: train([str(data)], o))  # type: ignore[misc]
            assert hasattr(result, "heldout") and hasattr(result, "model")
            worst = max(worst, seconds)
            e = result.heldout
            print(
                f"  {label:<14} {seconds:6.2f} s   held-out MAE {e.mae_watts:.3f} W, "
                f"MAPE {e.mape_percent:.2f}%, max {e.max_error_watts:.2f} W"
            )
            results[label] = result.model
        print(f"  slowest {worst:.2f} s (target under {TRAIN_TARGET_S:g} s)")

        print("prediction, CPU us per call (median of 9 x 2,000):")
        x = [0.6, 2.4, 8e9]
        points = curve.load_table()[0].watts
        slowest = 0.0
        cases: list[tuple[str, Callable[[], object]]] = [
            ("curve", lambda: curve.interpolate(points, 0.63)),
            ("linear (9 terms)", lambda: results["least squares"].predict(x)),
        ]
        if "gbm (sklearn)" in results:
            gbm = results["gbm (sklearn)"]
            cases.append(("gbm (100 trees)", lambda: gbm.predict(x)))
        model_path = Path(tmp) / "model.json"
        usage_only = train([str(data)], TrainOptions(features=["cpu_usage_ratio"])).model
        regression.save(usage_only, str(model_path))
        config = EstimatorConfig(
            model="regression", regression=RegressionConfig(file=str(model_path))
        )
        receiver = EstimatorReceiver("estimator", config, HostSettings())
        receiver.start()
        receiver.collect()
        cases.append(("estimator collect()", receiver.collect))
        for label, function in cases:
            us = per_call_us(function)
            slowest = max(slowest, us)
            print(f"  {label:<20} {us:8.1f} us")
        print(f"  slowest {slowest / 1000:.3f} ms (target under {PREDICT_TARGET_MS} ms)")
    return 0 if worst < TRAIN_TARGET_S and slowest / 1000 < PREDICT_TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())

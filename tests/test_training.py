"""Record and train: recovering a known power function, the CLI, and a real recorded run."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from otel_kepler import cli
from otel_kepler.component import HostSettings
from otel_kepler.data import Contribution
from otel_kepler.receivers.estimator import EstimatorConfig, EstimatorReceiver, RegressionConfig
from otel_kepler.receivers.power_models import regression
from otel_kepler.receivers.power_models.features import FeatureReader
from otel_kepler.receivers.power_models.training import (
    ACTIVITY_FEATURES,
    COLUMNS,
    RowWriter,
    TrainOptions,
    load_dataset,
    train,
)
from otel_kepler.receivers.procfs.stat import read_cpu_times
from otel_kepler.receivers.rapl import RaplConfig, RaplReceiver
from tests.sysfs_fixtures import RaplTree


def true_watts(u: np.ndarray, f: np.ndarray, instructions: np.ndarray) -> np.ndarray:
    """The known function the synthetic data follows: not linear in any one feature."""
    watts: np.ndarray = 30 + 80 * u + 40 * u**2 + 12 * u * f + 1.5e-9 * instructions
    return watts


def synthetic(path: Path, rows: int, seed: int, start: float = 1.7e9) -> None:
    rng = np.random.default_rng(seed)
    u = rng.uniform(0, 1, rows)
    f = rng.uniform(1.2, 3.5, rows)
    instructions = u * f * rng.uniform(2e9, 6e9, rows)
    watts = true_watts(u, f, instructions) + rng.normal(0, 0.8, rows)
    with RowWriter(str(path)) as writer:
        for i in range(rows):
            writer.write(
                {
                    "timestamp": start + i,
                    "interval_s": 1.0,
                    "cpu_usage_ratio": float(u[i]),
                    "cpu_frequency_ghz": float(f[i]),
                    "instructions_per_s": float(instructions[i]),
                    "package_watts": float(watts[i]),
                }
            )


def test_training_recovers_a_known_function(tmp_path: Path) -> None:
    synthetic(tmp_path / "a.csv", 3000, seed=1)
    synthetic(tmp_path / "b.jsonl", 1000, seed=2, start=1.7e9 + 3000)
    result = train([str(tmp_path / "a.csv"), str(tmp_path / "b.jsonl")], TrainOptions())
    model = result.model
    assert model.features == ("cpu_usage_ratio", "cpu_frequency_ghz", "instructions_per_s")
    assert result.notes == [
        "cpu_seconds_per_s: not recorded on this host",
        "cycles_per_s: not recorded on this host",
        "cache_misses_per_s: not recorded on this host",
    ]
    assert result.compared is None  # no activity features recorded
    assert (result.train_rows, result.heldout.rows) == (3200, 800)
    assert result.heldout.mape_percent < 5
    assert result.heldout.mae_watts < 1.0  # the noise: 0.8 W standard deviation
    for u, f, i in [(0.0, 1.2, 0.0), (0.5, 2.0, 5e9), (0.9, 3.4, 1.5e10), (1.0, 3.5, 2e10)]:
        expected = float(true_watts(np.array(u), np.array(f), np.array(i)))
        assert model.predict([u, f, i]) == pytest.approx(expected, rel=0.02, abs=0.3)
    # the numbers are written into the model file
    assert model.heldout_error == result.heldout.as_dict()
    assert model.trained_on["rows"] == 3200 and model.trained_on["heldout_rows"] == 800
    assert model.trained_on["files"] == ["a.csv", "b.jsonl"]


def test_non_negative_and_dynamic(tmp_path: Path) -> None:
    synthetic(tmp_path / "a.csv", 2000, seed=3)
    options = TrainOptions(non_negative=True, kind="dynamic", target="package")
    result = train([str(tmp_path / "a.csv")], options)
    body = result.model.body
    assert isinstance(body, regression.Linear)
    assert min(body.weights) >= 0
    assert result.heldout.mape_percent < 5
    # measured idle: the median power of the 5% lowest-usage training rows (u < 0.05)
    data = load_dataset([str(tmp_path / "a.csv")])
    lowest = np.argsort(data.columns["cpu_usage_ratio"][:1600], kind="stable")[:80]
    idle = float(np.median(data.columns["package_watts"][:1600][lowest]))
    assert result.model.idle_watts == idle
    assert idle == pytest.approx(33.0, abs=1.0)
    assert result.model.predict([0.0, 2.0, 0.0]) == idle  # never below the idle
    assert result.model.predict([0.5, 2.0, 5e9]) == pytest.approx(99.5, rel=0.03)


def test_gradient_boosting_exports_plain_trees(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    synthetic(tmp_path / "a.csv", 4000, seed=4)
    result = train([str(tmp_path / "a.csv")], TrainOptions(method="gbm"))
    assert result.model.estimator == "gbm"
    assert result.heldout.mape_percent < 5
    path = tmp_path / "gbm.json"
    regression.save(result.model, str(path))
    assert regression.load(str(path)) == result.model


def test_train_cli_prints_and_writes_the_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    synthetic(tmp_path / "a.jsonl", 500, seed=5)
    out = tmp_path / "model.json"
    code = cli.main(
        ["train", "--data", str(tmp_path / "a.jsonl"), "--out", str(out), "--name", "synthetic"]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    error = doc["heldout_error"]
    assert (doc["name"], doc["output"], doc["estimator"]) == (
        "synthetic",
        {"zone": "package", "kind": "absolute", "unit": "W"},
        "linear",
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (
        "model synthetic: absolute package power from cpu_usage_ratio, cpu_frequency_ghz, "
        "instructions_per_s (linear, 400 training rows)"
    )
    assert printed[-2] == (
        f"held-out 100 rows (the last 20% by time): MAE {error['mae_watts']:.3f} W, "
        f"MAPE {error['mape_percent']:.2f}%, max error {error['max_error_watts']:.3f} W"
    )
    assert printed[-1] == f"wrote {out}"
    assert (
        cli.main(
            ["train", "--data", str(tmp_path / "a.jsonl"), "--out", str(out), "--target", "dram"]
        )
        == 1
    )
    assert capsys.readouterr().err == (
        "otel-kepler: train: no dram_watts in the data: this recording has no dram meter\n"
    )


def test_dataset_columns_and_missing_values(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    with RowWriter(str(path)) as writer:
        writer.write({"timestamp": 2.0, "cpu_usage_ratio": 0.5, "package_watts": 10.0})
        writer.write({"timestamp": 1.0, "cpu_usage_ratio": 0.25})
    header = path.read_text().splitlines()[0]
    assert header == ",".join(COLUMNS)
    assert header == (
        "timestamp,interval_s,cpu_usage_ratio,cpu_seconds_per_s,cpu_frequency_ghz,cycles_per_s,"
        "instructions_per_s,cache_misses_per_s,network_bytes_per_s,block_bytes_per_s,"
        "softirq_net_per_s,softirq_block_per_s,package_watts,dram_watts,platform_watts"
    )
    data = load_dataset([str(path)])
    assert data.columns["timestamp"].tolist() == [1.0, 2.0]  # ordered by time
    assert data.columns["cpu_usage_ratio"].tolist() == [0.25, 0.5]
    assert np.isnan(data.columns["package_watts"][0])
    assert data.complete("cpu_usage_ratio") and not data.complete("package_watts")


# -- end to end: a recorded run on the fixture RAPL tree, with real CPU load -------------

IDLE_W, PER_USAGE_W, STEP_S = 20.0, 60.0, 0.01
BURNER = """
import sys, time
duty = float(sys.argv[1])
while True:
    begin = time.perf_counter()
    while time.perf_counter() - begin < 0.02 * duty:
        pass
    time.sleep(0.02 * (1 - duty))
"""


class FixtureMeter(threading.Thread):
    """Advances the fixture's package counter at a power that follows the real CPU load.

    The fixture has no meter: every 10 ms this thread reads the machine's real
    /proc/stat and lets P = 20 + 60 u watts flow into the package zone, u being the
    CPU usage of those 10 ms (linear, so that the energy of any interval is
    20 W x seconds + 60 W x the busy share of it). The agent sees only the counter.
    """

    def __init__(self, tree: RaplTree) -> None:
        super().__init__(daemon=True)
        self.tree = tree
        self.key = tree.keys("package")[0]
        self.halt = threading.Event()

    def run(self) -> None:
        busy, total = read_cpu_times("/proc/stat")
        last = time.monotonic()
        while not self.halt.wait(STEP_S):
            now_busy, now_total = read_cpu_times("/proc/stat")
            now = time.monotonic()
            d_total = now_total - total
            u = (now_busy - busy) / d_total if d_total > 0 else 0.0
            watts = IDLE_W + PER_USAGE_W * u
            self.tree.advance(self.key, watts * (now - last))
            busy, total, last = now_busy, now_total, now


class Burners:
    """One duty-cycled busy loop per CPU: the real load is about ``duty``."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def set(self, duty: float) -> None:
        self.stop()
        if duty > 0:
            cpus = os.cpu_count() or 1
            self.procs = [
                subprocess.Popen([sys.executable, "-c", BURNER, str(duty)]) for _ in range(cpus)
            ]

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()
        self.procs = []


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[tuple[RaplTree, Burners]]:
    tree = RaplTree(tmp_path / "sys")
    tree.add_socket()
    thread = FixtureMeter(tree)
    burners = Burners()
    thread.start()
    try:
        yield tree, burners
    finally:
        burners.stop()
        thread.halt.set()
        thread.join()


def test_recorded_run_trains_a_model_that_tracks_held_out_loads(
    tmp_path: Path, meter: tuple[RaplTree, Burners], capsys: pytest.CaptureFixture[str]
) -> None:
    tree, burners = meter
    config = tmp_path / "record.yaml"
    config.write_text(
        f"host: {{sysfs: {tree.sysfs}}}\n"
        "receivers: {rapl: {}}\n"
        "exporters: {debug: {verbosity: basic}}\n"
        "service:\n"
        "  interval: 500ms\n"
        "  telemetry: {metrics: {enabled: false}}\n"
        "  pipelines: {metrics: {receivers: [rapl], exporters: [debug]}}\n"
    )
    data = tmp_path / "run.csv"
    levels = [0.0, 0.3, 1.0, 0.7, 0.5]  # the last fifth, 50%, is held out
    step = 2.5

    def switch() -> None:
        for level in levels:
            burners.set(level)
            time.sleep(step)

    switcher = threading.Thread(target=switch)
    switcher.start()
    code = cli.main(
        ["record", "--config", str(config), "--out", str(data), "--duration", f"{step * 5}s"]
    )
    switcher.join()
    burners.stop()
    assert code == 0
    rows = load_dataset([str(data)])
    assert rows.rows >= 20
    assert rows.complete("package_watts") and rows.complete("cpu_usage_ratio")
    capsys.readouterr()

    model_path = tmp_path / "model.json"
    # the truth is linear in the load: degree 1, which does not blow up where a busy
    # node's other tenants kept the usage near 1 for most of the recording
    args = ["train", "--data", str(data), "--out", str(model_path), "--degree", "1"]
    assert cli.main(args) == 0
    model = regression.load(str(model_path))
    assert model.heldout_error["mape_percent"] < 10

    # the same host with RAPL hidden: rapl falls back to the estimator and the model
    hidden = tmp_path / "no-rapl"
    (hidden / "class" / "powercap").mkdir(parents=True)
    estimator = EstimatorConfig(model="regression", regression=RegressionConfig(str(model_path)))
    agent = RaplReceiver(
        "rapl",
        RaplConfig(fallback="estimator", estimator=estimator),
        HostSettings(sysfs=str(hidden)),
    )
    truth = RaplReceiver("truth", RaplConfig(), HostSettings(sysfs=tree.sysfs))
    agent.start()
    truth.start()
    assert agent.using_fallback
    compared = 0
    for level in (0.5, 0.4):
        burners.set(level)
        time.sleep(0.5)
        agent.collect()
        truth.collect()
        for _ in range(3):
            time.sleep(1.0)
            estimated = package_joules(agent.collect(), "model")
            measured = package_joules(truth.collect(), "rapl")
            assert estimated == pytest.approx(measured, rel=0.10), (level, estimated, measured)
            compared += 1
    burners.stop()
    assert compared == 6


def package_joules(part: Contribution, source: str) -> float:
    [reading] = [r for r in part.energy if r.zone == "package"]
    assert reading.source == source
    return reading.joules


# -- activity features: real loopback traffic and real block I/O, recorded ------------

PHASE_S = 1.5
CHUNK = 1 << 20


class Phases:
    """Quiet, loopback traffic, quiet, block writes, quiet; when each ran, what it moved."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.windows: dict[str, tuple[float, float]] = {}
        self.sent = 0  # bytes through a loopback TCP connection, all received
        self.synced = 0  # bytes written and fsynced

    def run(self) -> None:
        time.sleep(PHASE_S)
        self.windows["net"] = self._timed(self._network)
        time.sleep(PHASE_S)
        self.windows["block"] = self._timed(self._block)
        time.sleep(PHASE_S)

    def _timed(self, work: Callable[[float], None]) -> tuple[float, float]:
        begin = time.time()
        work(begin + PHASE_S)
        return begin, time.time()

    def _network(self, until: float) -> None:
        with socket.create_server(("127.0.0.1", 0)) as server:
            received = [0]

            def drain() -> None:
                conn, _ = server.accept()
                with conn:
                    while data := conn.recv(1 << 16):
                        received[0] += len(data)

            reader = threading.Thread(target=drain)
            reader.start()
            payload = b"x" * (1 << 16)
            with socket.create_connection(server.getsockname()) as client:
                while time.time() < until:
                    client.sendall(payload)
                    self.sent += len(payload)
            reader.join()
            assert received[0] == self.sent

    def _block(self, until: float) -> None:
        payload = os.urandom(CHUNK)
        path = self.folder / "written.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while time.time() < until:
                os.write(fd, payload)
                os.fsync(fd)
                self.synced += CHUNK
        finally:
            os.close(fd)
            path.unlink()


def test_activity_features_follow_real_traffic_and_are_compared(
    tmp_path: Path, meter: tuple[RaplTree, Burners], capsys: pytest.CaptureFixture[str]
) -> None:
    tree, _ = meter
    config = tmp_path / "record.yaml"
    config.write_text(
        f"host: {{sysfs: {tree.sysfs}}}\n"
        "receivers: {rapl: {}}\n"
        "exporters: {debug: {verbosity: basic}}\n"
        "service:\n"
        "  interval: 200ms\n"
        "  telemetry: {metrics: {enabled: false}}\n"
        "  pipelines: {metrics: {receivers: [rapl], exporters: [debug]}}\n"
    )
    # the disks are the machine's (/sys/block), the RAPL tree the fixture's
    (Path(tree.sysfs) / "block").symlink_to("/sys/block")
    data = tmp_path / "run.csv"
    phases = Phases(tmp_path)
    driver = threading.Thread(target=phases.run)
    driver.start()
    seconds = PHASE_S * 5 + 0.5
    code = cli.main(
        ["record", "--config", str(config), "--out", str(data), "--duration", f"{seconds}s"]
    )
    driver.join()
    assert code == 0
    rows = load_dataset([str(data)])
    for name in ACTIVITY_FEATURES:
        assert rows.complete(name), name
    c = rows.columns
    end, start = c["timestamp"], c["timestamp"] - c["interval_s"]
    slack = 0.05  # the features are read a little before the row's timestamp

    def overlapping(window: tuple[float, float]) -> np.ndarray:
        ticks: np.ndarray = (end + slack > window[0]) & (start - slack < window[1])
        return ticks

    def inside(window: tuple[float, float]) -> np.ndarray:
        ticks: np.ndarray = (start - slack >= window[0]) & (end + slack <= window[1])
        return ticks

    quiet = ~overlapping(phases.windows["net"]) & ~overlapping(phases.windows["block"])
    moved = {n: c[n] * c["interval_s"] for n in ACTIVITY_FEATURES}
    net, block = inside(phases.windows["net"]), inside(phases.windows["block"])
    assert quiet.sum() >= 5 and net.sum() >= 3 and block.sum() >= 3, (quiet, net, block)
    # every byte over loopback is counted twice (sent and received on lo), none lost;
    # every fsynced byte reached the disk (more may: the journal, the neighbours)
    assert moved["network_bytes_per_s"][overlapping(phases.windows["net"])].sum() >= (
        2 * phases.sent
    )
    assert moved["block_bytes_per_s"][overlapping(phases.windows["block"])].sum() >= (phases.synced)
    # busy while the traffic runs, about nothing without it: the quiet ticks' median
    # (other tenants' traffic) is measured here, the traffic's at least 10x that and >0
    for name, phase in (
        ("network_bytes_per_s", net),
        ("softirq_net_per_s", net),
        ("block_bytes_per_s", block),
    ):
        assert c[name][phase].min() > 0, name
        assert np.median(c[name][phase]) > 10 * np.median(c[name][quiet]), name
    # BLOCK softirqs complete requests on another CPU: fewer, and some at rest
    assert np.median(c["softirq_block_per_s"][block]) > 2 * np.median(
        c["softirq_block_per_s"][quiet]
    )
    capsys.readouterr()

    # train: the default model leaves the activity features out and scores them beside
    for features in (None, f"cpu_seconds_per_s,{','.join(ACTIVITY_FEATURES)}"):
        model_path = tmp_path / "model.json"
        args = ["train", "--data", str(data), "--out", str(model_path), "--degree", "1"]
        assert cli.main(args + (["--features", features] if features else [])) == 0
        printed = capsys.readouterr().out
        scores = {
            key: (float(mae), float(mape))
            for key, mae, mape in re.findall(
                r"^  (with|without) the activity features.*: MAE ([0-9.]+) W, MAPE ([0-9.]+)%",
                printed,
                re.MULTILINE,
            )
        }
        assert set(scores) == {"with", "without"}, printed
        model = regression.load(str(model_path))
        own, other = ("with", "without") if features else ("without", "with")
        assert scores[own][0] == pytest.approx(model.heldout_error["mae_watts"], abs=6e-4)
        stored = model.trained_on[f"heldout_error_{other}_activity"]
        assert scores[other][0] == pytest.approx(stored["mae_watts"], abs=6e-4)
        assert all(math.isfinite(v) for pair in scores.values() for v in pair)

    # the estimator reads the same features on this host and predicts from them
    estimator = EstimatorReceiver(
        "estimator",
        EstimatorConfig(model="regression", regression=RegressionConfig(str(model_path))),
        HostSettings(sysfs=tree.sysfs),
    )
    estimator.start()
    try:
        estimator.collect()
        time.sleep(0.3)
        [reading] = estimator.collect().energy
    finally:
        estimator.shutdown()
    assert reading.source == "model" and math.isfinite(reading.joules) and reading.joules > 0


def test_activity_counters_whole_disks_and_restarts(tmp_path: Path) -> None:
    """Partitions, stacked, loop and zram devices are not counted; a restart counts from 0."""
    proc, sys_ = tmp_path / "proc", tmp_path / "sys"
    (proc / "net").mkdir(parents=True)
    for name in ("sda", "dm-0", "loop0", "zram0", "nvme0n1"):
        (sys_ / "block" / name / "slaves").mkdir(parents=True)
    (sys_ / "block" / "dm-0" / "slaves" / "sda2").mkdir()
    (proc / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")

    def write(sda: int, nvme: int, lo: int, eth: int, net_rx: int, block: int) -> None:
        disks = [("sda", sda), ("sda1", 7000), ("dm-0", 9000), ("loop0", 5000)]
        disks += [("zram0", 3000), ("nvme0n1", nvme)]
        (proc / "diskstats").write_text(
            "".join(f"   8  0 {n} 1 0 {s} 0 1 0 {s} 0 0 0 0\n" for n, s in disks)
        )
        (proc / "net" / "dev").write_text(
            "Inter-|   Receive\n face |bytes packets\n"
            f"    lo: {lo} 1 0 0 0 0 0 0 {lo} 1 0 0 0 0 0 0\n"
            f"  eth0: {eth} 1 0 0 0 0 0 0 {2 * eth} 1 0 0 0 0 0 0\n"
        )
        (proc / "softirqs").write_text(
            "      CPU0 CPU1\n  NET_TX: 1 2\n"
            f"  NET_RX: {net_rx} 10\n   BLOCK: {block} 0\n   TIMER: 999 999\n"
        )

    now = [0.0]
    reader = FeatureReader(str(proc), str(sys_), clock=lambda: now[0])
    assert reader.activity.disks == frozenset({"sda", "nvme0n1"})
    write(sda=100, nvme=50, lo=1000, eth=10, net_rx=20, block=5)
    assert reader.missing(ACTIVITY_FEATURES) == []
    assert reader.sample() is None
    now[0] = 2.0
    write(sda=300, nvme=50, lo=1500, eth=20, net_rx=60, block=9)
    features = reader.sample()
    assert features is not None
    assert features["block_bytes_per_s"] == 200 * 2 * 512 / 2  # read + written sectors
    assert features["network_bytes_per_s"] == (2 * 500 + 30) / 2
    assert features["softirq_net_per_s"] == 40 / 2 and features["softirq_block_per_s"] == 4 / 2
    now[0] = 3.0  # sda and eth0 restarted at 0: what they counted since
    write(sda=10, nvme=60, lo=1600, eth=5, net_rx=70, block=9)
    features = reader.sample()
    assert features is not None
    assert features["block_bytes_per_s"] == (10 + 10) * 2 * 512
    assert features["network_bytes_per_s"] == 2 * 100 + 15
    assert features["softirq_net_per_s"] == 10 and features["softirq_block_per_s"] == 0
    (proc / "softirqs").unlink()
    assert [str(m) for m in reader.missing(["softirq_net_per_s"])] == [
        f"softirq_net_per_s (cannot read {proc / 'softirqs'})"
    ]

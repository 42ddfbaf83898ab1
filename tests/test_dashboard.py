"""The Grafana dashboard (dashboards/otel-kepler.json) against the metrics a real agent emits.

One agent run (``otel-kepler run`` in a child process, 500 ms ticks) feeds both backends the
dashboard is meant for: VictoriaMetrics through OTLP/HTTP (Prometheus naming) and Prometheus
scraping the pull endpoint with the chart's ServiceMonitor relabeling. The host is made of
fixtures: a RAPL tree at a known power and an ACPI power meter (tests/sysfs_fixtures.py,
tests/hwmon_fixtures.py), the fake libnvidia-ml.so.1 of tests/fake_nvml loaded through
LD_LIBRARY_PATH (one GPU at a known power and idle power, whose one compute process is a child
of this test), the
carbon processor at a static intensity, and k8sattributes' downward API source, which names
every process as one pod (as in a sidecar). Every query of every panel and variable must return
data from both, with the same label sets, and the values the fixtures set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_nvml import FakeNvml, build
from tests.hwmon_fixtures import SysfsTree
from tests.peers import Prometheus, VictoriaMetrics, free_port
from tests.sysfs_fixtures import RaplTree

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "otel-kepler.json"
NODE, POD, NAMESPACE = "dash-node", "web-0", "shop"
PACKAGE_W, DRAM_W, PLATFORM_W, GPU_W, GPU_IDLE_W, INTENSITY = 40.0, 4.0, 180.0, 250.0, 50.0, 400.0
JITTER = 0.3
#: What Grafana substitutes: one node and one namespace chosen, a range, a rate interval.
VARIABLES = {"$node": NODE, "$namespace": NAMESPACE, "$__range": "1m", "$__rate_interval": "4s"}


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    return out


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title and refId, PromQL) of every target."""
    return [
        (f"{p['title']} [{t['refId']}]", t["expr"]) for p in panels(dashboard) for t in p["targets"]
    ]


def substitute(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, expr
    return expr


def test_dashboard_shape() -> None:
    dashboard = load()
    assert dashboard["uid"] == "otel-kepler"
    ids = [p["id"] for p in dashboard["panels"]] + [
        p["id"] for p in dashboard["panels"] for p in p.get("panels", [])
    ]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in panels(dashboard)]
    assert titles == [
        "CPU power",
        "GPU power",
        "Platform power",
        "Energy over the range",
        "CO2 over the range",
        "Grid intensity",
        "Node power by zone and source",
        "Top pods by power",
        "Top namespaces by power",
        "Energy per namespace over the range",
        "CO2 per namespace over the range",
        "GPU power",
        "GPU power by pod",
        "Agent CPU",
        "Agent memory",
        "Tick duration",
        "Dropped batches and receiver errors",
    ]
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels(dashboard):
        assert panel["datasource"] == datasource, panel["title"]
        assert all(t["datasource"] == datasource for t in panel["targets"]), panel["title"]
        assert panel["description"], panel["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["node"]["allValue"] == variables["namespace"]["allValue"] == ".*"
    # Every query uses the variables it should, and only Kepler's and the agent's metrics.
    for where, expr in queries(dashboard):
        assert "$node" in expr, where
        names = set(re.findall(r"\b((?:kepler|otel_kepler)_[a-zA-Z_]+)", expr))
        assert names, where


@pytest.fixture(scope="module")
def fed() -> Iterator[dict[str, Any]]:
    """One agent run feeding VictoriaMetrics (OTLP) and Prometheus (scrape); both kept open."""
    import tempfile

    from tests.test_helm import render

    tmp = Path(tempfile.mkdtemp(prefix="otel-kepler-dashboard-"))
    sysfs = tmp / "sys"
    rapl = RaplTree(sysfs)
    rapl.add_socket(dram=True)
    SysfsTree(sysfs).power_meter(watts=PLATFORM_W)
    fake = FakeNvml(tmp / "nvml-state")
    gpu = fake.add_gpu(power_mw=int(GPU_W * 1000))
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    gpu.run(worker.pid)
    fake.write()
    stop = threading.Event()

    def drive() -> None:  # the hardware: counters advance at the fixtures' power
        last = time.monotonic()
        while not stop.wait(0.05):
            now = time.monotonic()
            rapl.advance_all({"package": PACKAGE_W, "dram": DRAM_W}, now - last)
            gpu.energy_mj += round(GPU_W * (now - last) * 1000)
            gpu.samples = [*gpu.samples[-19:], (worker.pid, int(time.time() * 1e6), 80, 10, 0, 0)]
            fake.write()
            last = now

    # The chart's ServiceMonitor relabeling, as Prometheus applies it to a pod target.
    relabel = [
        {"source_labels": r["sourceLabels"], "target_label": r["targetLabel"]}
        for r in next(
            o
            for o in render({"serviceMonitor": {"enabled": True}})
            if o["kind"] == "ServiceMonitor"
        )["spec"]["endpoints"][0]["relabelings"]
    ]
    port = free_port()
    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    agent: subprocess.Popen[str] | None = None
    with VictoriaMetrics() as vm:
        config = tmp / "agent.yaml"
        config.write_text(
            f"""
host: {{sysfs: {sysfs}, node_name: {NODE}}}
receivers:
  rapl: {{}}
  procfs: {{}}
  acpi: {{}}
  nvml: {{required: true, idle_watts: {GPU_IDLE_W}}}
processors:
  k8sattributes: {{source: downward_api}}
  attribution: {{levels: [node, container, pod]}}
  carbon: {{providers: [static], static: {{intensity: {INTENSITY}, region: test}}}}
exporters:
  otlphttp: {{metrics_endpoint: {vm.otlp_metrics_url}}}
  prometheus: {{endpoint: 127.0.0.1:{port}}}
service:
  interval: 500ms
  pipelines:
    metrics:
      receivers: [rapl, procfs, acpi, nvml]
      processors: [k8sattributes, attribution, carbon]
      exporters: [otlphttp, prometheus]
"""
        )
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": str(build("full")),
            "FAKE_NVML_STATE": str(fake.path),
            "POD_NAME": POD,
            "POD_NAMESPACE": NAMESPACE,
            "POD_UID": str(uuid.uuid4()),
        }
        agent = subprocess.Popen(
            [sys.executable, "-m", "otel_kepler.cli", "run", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        target = {
            "targets": [f"127.0.0.1:{port}"],
            "labels": {"__meta_kubernetes_pod_node_name": NODE},
        }
        scrape = {"static_configs": [target], "relabel_configs": relabel}
        try:
            with Prometheus([], scrape_interval="1s", scrape_config=scrape) as prom:
                # Enough samples for rate() and increase() on both sides.
                enough = lambda r: bool(r) and float(r[0]["value"][1]) >= 4  # noqa: E731
                query = f'count_over_time(kepler_node_cpu_watts{{node_name="{NODE}"}}[1m])'
                prom.wait_for(query, timeout=30, until=enough)
                vm.wait_for(query, timeout=30, until=enough)
                yield {"victoria-metrics": vm, "prometheus": prom}
        finally:
            stop.set()
            worker.kill()
            worker.wait()
            agent.terminate()
            _, err = agent.communicate(timeout=30)
            assert agent.returncode == 0, err[-3000:]


def answers(fed: dict[str, Any], expr: str) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """Backend -> {label set: value} of an instant query, identical label sets required."""
    out: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for backend, peer in fed.items():
        result = peer.query(substitute(expr))
        out[backend] = {frozenset(r["metric"].items()): float(r["value"][1]) for r in result}
    return out


def test_every_query_returns_data_from_both_backends(fed: dict[str, Any]) -> None:
    dashboard = load()
    values: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for where, expr in queries(dashboard):
        got = answers(fed, expr)
        for backend, series in got.items():
            assert series, f"{where}: no data from {backend}: {substitute(expr)}"
        assert set(got["prometheus"]) == set(got["victoria-metrics"]), where
        values[where] = got["victoria-metrics"]
    for variable in dashboard["templating"]["list"][1:]:
        match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
        assert match, variable["definition"]
        metric, label = match.groups()
        for peer in fed.values():
            found = peer.api(f"label/{label}/values", {"match[]": [metric]})
            assert found == [{"node": NODE, "namespace": NAMESPACE}[variable["name"]]]

    def single(where: str) -> float:
        (value,) = values[where].values()
        return value

    def labelled(where: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {tuple(sorted(k)): v for k, v in values[where].items()}

    # Instant power is one tick's energy over the tick's interval: 500 ms ticks on a loaded
    # test machine move it by up to 30 % (JITTER); the structure is asserted exactly.
    assert single("CPU power [A]") == pytest.approx(PACKAGE_W + DRAM_W, rel=JITTER)
    assert single("GPU power [A]") == pytest.approx(GPU_W, rel=JITTER)
    assert single("Platform power [A]") == pytest.approx(PLATFORM_W, rel=JITTER)
    assert single("Grid intensity [A]") == INTENSITY
    assert single("Energy over the range [A]") > 0
    assert single("CO2 over the range [A]") > 0
    power = labelled("Node power by zone and source [A]")
    assert sorted(power) == [
        (("node_name", NODE), ("source", "rapl"), ("zone", "dram")),
        (("node_name", NODE), ("source", "rapl"), ("zone", "package")),
    ]
    package = power[(("node_name", NODE), ("source", "rapl"), ("zone", "package"))]
    assert package == pytest.approx(PACKAGE_W, rel=JITTER)
    assert sorted(labelled("Node power by zone and source [B]")) == [
        (("node_name", NODE), ("source", "acpi"), ("zone", "other")),
        (("node_name", NODE), ("source", "acpi"), ("zone", "platform")),
    ]
    assert list(labelled("Node power by zone and source [C]")) == [
        (("gpu", "0"), ("node_name", NODE), ("source", "nvml"))
    ]
    pod = (("pod_name", POD), ("pod_namespace", NAMESPACE))
    assert list(labelled("Top pods by power [A]")) == [pod]
    # The pod: its GPU's active power plus its share of the CPU's active power.
    pod_watts = labelled("Top pods by power [A]")[pod]
    low, high = (
        (1 - JITTER) * (GPU_W - GPU_IDLE_W),
        (1 + JITTER) * (GPU_W - GPU_IDLE_W + PACKAGE_W + DRAM_W),
    )
    assert low < pod_watts < high
    assert list(labelled("Top namespaces by power [A]")) == [(("pod_namespace", NAMESPACE),)]
    assert list(labelled("Energy per namespace over the range [A]")) == [
        (("pod_namespace", NAMESPACE),)
    ]
    assert single("CO2 per namespace over the range [A]") > 0
    # CO2 = energy x intensity: grams = Wh / 1000 x gCO2e/kWh, for the same pods and range.
    energy_wh = single("Energy per namespace over the range [A]")
    assert single("CO2 per namespace over the range [A]") == pytest.approx(
        energy_wh / 1000 * INTENSITY, rel=0.2
    )
    assert list(labelled("GPU power [A]")) == [
        (("gpu", "0"), ("gpu_name", "NVIDIA H100 80GB HBM3"), ("node_name", NODE))
    ]
    assert list(labelled("GPU power by pod [A]")) == [(("gpu", "0"), *pod)]
    # One compute process: the pod gets the GPU's active power (power - idle_watts).
    assert single("GPU power by pod [A]") == pytest.approx(GPU_W - GPU_IDLE_W, rel=JITTER)
    assert 0 < single("Agent CPU [A]") < 2.0
    assert single("Agent memory [A]") > 20e6
    assert 0 < single("Tick duration [A]") < 0.5
    for ref in "ABC":
        zeros = values[f"Dropped batches and receiver errors [{ref}]"]
        assert zeros and set(zeros.values()) == {0.0}, ref

"""The Grafana dashboard (dashboards/otel-kepler.json) against the metrics a real agent emits.

One agent run (``otel-kepler run`` in a child process, 1 s ticks, every level on) feeds both
backends the dashboard is meant for: VictoriaMetrics through OTLP/HTTP (Prometheus naming) and
Prometheus scraping the pull endpoint with the chart's ServiceMonitor relabeling. The host is
tests/kepler_host.py's: a RAPL tree at a known power, an ACPI power meter, the fake
libnvidia-ml.so.1 of tests/fake_nvml (one GPU at a known power and idle power, whose one
compute process is a CPU burner in a kubepods-style cgroup of a pod that a Kubernetes API
lookalike names), a QEMU guest, and the carbon processor at a static intensity. Every query of
every panel and variable must return data from both, with the same label sets (label names
only for per-process queries: the host's other processes come and go between the two
backends' samples), and the values the fixtures set.

The dashboard also covers every panel of Kepler's own dashboard (tests/test_kepler_dashboard.py
lists them): :data:`COVERS` names the query of ours that shows what each of Kepler's shows.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need_root
from tests.kepler_host import (
    CONTAINER,
    DRAM_W,
    GPU_IDLE_W,
    GPU_W,
    NAMESPACE,
    NODE,
    PACKAGE_W,
    POD,
    VM_NAME,
    KeplerHost,
    settled_time,
)
from tests.peers import Prometheus, VictoriaMetrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "otel-kepler.json"
PLATFORM_W, INTENSITY = 180.0, 400.0
LEVELS = ["node", "process", "container", "pod", "vm"]
BACKENDS = ("victoria-metrics", "prometheus")
ENERGY = 'kepler_node_cpu_joules_total{{node_name="' + NODE + '",zone="{zone}"}}'
SPAN = 60  # seconds of energy samples measured_watts() reads (at least MIN_SPAN of them)
MIN_SPAN = 10
#: Instant power is one tick's energy over the tick's interval: on a loaded 2-core test machine
#: a late tick moved it by up to 57 % (measured); energy is checked closer by measured_watts().
JITTER = 0.75
#: What Grafana substitutes: one node and one namespace chosen, a range, a rate interval.
VARIABLES = {"$node": NODE, "$namespace": NAMESPACE, "$__range": "1m", "$__rate_interval": "30s"}
#: Each panel of Kepler's dashboard (by id) -> the query of ours that shows the same.
COVERS = {
    200: "Power by zone [A]",
    201: "Power by zone [B]",
    202: "Power by zone [C]",
    203: "CPUs and RAPL zones [A]",
    212: "CPUs and RAPL zones [B]",
    204: "Power by zone [A]",
    205: "Node power by zone and source [A]",
    206: "Active and idle power by node and zone [A]",
    207: "Active and idle power by node and zone [B]",
    208: "Top processes by power [A]",
    215: "Process power by zone [A]",
    210: "Process power by zone [B]",
    214: "Top containers by power [A]",
    219: "Container power by zone [A]",
    216: "Top containers by power [A]",
    218: "Pod power by zone [C]",
    209: "Pod power by zone [A]",
    220: "Pod power by zone [B]",
    222: "VM power by zone [B]",
    223: "VM power by zone [A]",
    224: "VM power by zone [B]",
}


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
        "Power by zone",
        "Active and idle power by node and zone",
        "CPUs and RAPL zones",
        "Top processes by power",
        "Process power by zone",
        "Top containers by power",
        "Container power by zone",
        "Pod power by zone",
        "VM power by zone",
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
    from tests.test_helm import render

    need_root()
    # The chart's ServiceMonitor relabeling, as Prometheus applies it to a pod target.
    relabel = [
        {"source_labels": r["sourceLabels"], "target_label": r["targetLabel"]}
        for r in next(
            o
            for o in render({"serviceMonitor": {"enabled": True}})
            if o["kind"] == "ServiceMonitor"
        )["spec"]["endpoints"][0]["relabelings"]
    ]
    with (
        VictoriaMetrics() as vm,
        # Every 3 s: a push of every process of a busy 2-core host into a backend on the same
        # host took 1 to 2.3 s (measured), so pushing each 1 s tick overflowed the queue (10)
        # and dropped batches, which the dashboard's drops panel (asserted zero) would show.
        KeplerHost(
            LEVELS,
            vm.otlp_metrics_url,
            acpi_watts=PLATFORM_W,
            carbon_intensity=INTENSITY,
            otlp_interval="3s",
        ) as host,
    ):
        target = {
            "targets": [f"127.0.0.1:{host.port}"],
            "labels": {"__meta_kubernetes_pod_node_name": NODE},
        }
        scrape = {"static_configs": [target], "relabel_configs": relabel}
        # 2 s: a scrape of every process of a busy host may take more than a second.
        with Prometheus([], scrape_interval="2s", scrape_config=scrape) as prom:
            host.wait_for("kepler_vm_cpu_watts{", f'pod_name="{POD}"', timeout=90)
            # Enough samples for rate() and increase() on both sides.
            enough = lambda r: bool(r) and float(r[0]["value"][1]) >= 4  # noqa: E731
            for metric in ("kepler_node_cpu_watts", "kepler_vm_cpu_watts", "kepler_pod_cpu_watts"):
                query = f'count_over_time({metric}{{node_name="{NODE}",zone="package"}}[1m])'
                prom.wait_for(query, timeout=60, until=enough)
                vm.wait_for(query, timeout=60, until=enough)
            # And energy samples spanning MIN_SPAN for measured_watts() (a loaded machine
            # pushes every 1 to 3 s, Prometheus scrapes every 2 s).
            samples = f"count_over_time({ENERGY.format(zone='package')}[{SPAN}s])"
            for peer in (prom, vm):
                peer.wait_for(samples, timeout=60, until=at_least(10))
            yield {"victoria-metrics": vm, "prometheus": prom, "host": host}


def at_least(count: float) -> Callable[[list[dict[str, Any]]], bool]:
    """An ``until`` for wait_for: the query's one value is at least ``count``."""
    return lambda result: bool(result) and float(result[0]["value"][1]) >= count


def measured_watts(peer: Any, zone: str) -> float:
    """The zone's power from its energy counter's samples over the last SPAN seconds.

    Energy is exact tick by tick; over many ticks the error of where each sample's tick fell
    shrinks to a few percent, unlike one tick's instant watts on a loaded machine.
    """
    data = peer.api("query", {"query": f"{ENERGY.format(zone=zone)}[{SPAN}s]"})
    (series,) = data["result"]
    (t0, v0), (t1, v1) = series["values"][0], series["values"][-1]
    assert float(t1) - float(t0) >= MIN_SPAN, series["values"]
    return (float(v1) - float(v0)) / (float(t1) - float(t0))


def answers(
    fed: dict[str, Any], expr: str, at: dict[str, float]
) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """Backend -> {label set: value} of an instant query at the backend's time ``at``."""
    out: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for backend in BACKENDS:
        result = fed[backend].query(substitute(expr), at=at[backend])
        out[backend] = {frozenset(r["metric"].items()): float(r["value"][1]) for r in result}
    return out


def test_every_query_returns_data_from_both_backends(fed: dict[str, Any]) -> None:
    dashboard = load()
    values: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    # Each backend's queries at one tick's samples: totals and their parts agree exactly.
    at = {b: settled_time(fed[b], ENERGY.format(zone="package")) for b in BACKENDS}
    for where, expr in queries(dashboard):
        got = answers(fed, expr, at)
        for backend, series in got.items():
            assert series, f"{where}: no data from {backend}: {substitute(expr)}"
        if re.search(r"kepler_(process|container|vm)_", expr) and "$namespace" not in expr:
            # Processes (other tests' containers and VMs too) come and go between the two
            # backends' samples: the same label names, and ours among the series (below).
            names = {b: {k for s in got[b] for k, _ in s} for b in BACKENDS}
            assert names["prometheus"] == names["victoria-metrics"], where
        else:
            assert set(got["prometheus"]) == set(got["victoria-metrics"]), where
        values[where] = got["victoria-metrics"]
    for variable in dashboard["templating"]["list"][1:]:
        match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
        assert match, variable["definition"]
        metric, label = match.groups()
        for backend in BACKENDS:
            found = fed[backend].api(f"label/{label}/values", {"match[]": [metric]})
            assert found == [{"node": NODE, "namespace": NAMESPACE}[variable["name"]]]

    def single(where: str) -> float:
        (value,) = values[where].values()
        return value

    def labelled(where: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {tuple(sorted(k)): v for k, v in values[where].items()}

    # Instant power is one tick's energy over the tick's interval: 1 s ticks on a loaded
    # test machine move it by up to 30 % (JITTER); the structure is asserted exactly.
    for backend in BACKENDS:
        # Prometheus stamps a sample when it scrapes, up to a tick after the energy was
        # read: one tick at each end over MIN_SPAN or more is within 20 %.
        assert measured_watts(fed[backend], "package") == pytest.approx(PACKAGE_W, rel=0.2)
        assert measured_watts(fed[backend], "dram") == pytest.approx(DRAM_W, rel=0.2)
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
    assert 0 < single("Tick duration [A]") < 5.0  # seconds (speed is measured in bench/)
    for ref in "ABC":
        zeros = values[f"Dropped batches and receiver errors [{ref}]"]
        assert zeros and set(zeros.values()) == {0.0}, ref
    # Kepler's panels: zones, CPUs, processes, containers, pods and VMs.
    total = {dict(k)["zone"]: v for k, v in values["Power by zone [A]"].items()}
    active = {dict(k)["zone"]: v for k, v in values["Power by zone [B]"].items()}
    idle = {dict(k)["zone"]: v for k, v in values["Power by zone [C]"].items()}
    assert total["package"] == pytest.approx(PACKAGE_W, rel=JITTER)
    assert total["dram"] == pytest.approx(DRAM_W, rel=JITTER)
    for zone in ("package", "dram"):
        assert active[zone] + idle[zone] == pytest.approx(total[zone], rel=1e-6)
    (cpus,) = values["CPUs and RAPL zones [A]"].values()
    assert cpus == os.cpu_count()
    sysfs = os.path.join(fed["host"].sysfs, "class", "powercap")
    assert {dict(k)["path"] for k in values["CPUs and RAPL zones [B]"]} == {
        os.path.join(sysfs, "intel-rapl:0"),
        os.path.join(sysfs, "intel-rapl:0:0"),
    }
    top = [dict(k) for k in values["Top processes by power [A]"]]
    assert 0 < len(top) <= 10 and all(t["comm"] and t["zone"] for t in top), top
    # Other tests on this machine may run containers and VMs too: ours are among them.
    containers = {dict(k).get("container_name") for k in values["Top containers by power [A]"]}
    assert CONTAINER in containers
    assert {dict(k)["pod_name"] for k in values["Pod power by zone [B]"]} == {POD}
    assert {dict(k)["pod_namespace"] for k in values["Pod power by zone [C]"]} == {NAMESPACE}
    assert VM_NAME in {dict(k).get("vm_name") for k in values["VM power by zone [B]"]}
    # Each level's total by zone is part of all processes' total.
    processes = {dict(k)["zone"]: v for k, v in values["Process power by zone [A]"].items()}
    for where in ("Container power by zone [A]", "Pod power by zone [A]", "VM power by zone [A]"):
        for labels, watts in values[where].items():
            assert 0 < watts <= processes[dict(labels)["zone"]] * (1 + 1e-9), where


def test_every_panel_of_keplers_dashboard_is_covered() -> None:
    """Each of Kepler's panels has a query here that reads the same family."""
    from tests.test_kepler_dashboard import PANELS

    ours = dict(queries(load()))
    assert set(COVERS) == {p.id for p in PANELS}
    for panel in PANELS:
        where = COVERS[panel.id]
        (family,) = set(re.findall(r"\bkepler_\w+", panel.expr))
        assert family in ours[where], (panel.title, where)

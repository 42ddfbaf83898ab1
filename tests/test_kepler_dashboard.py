"""Kepler's own Grafana dashboard works unchanged on otel-kepler's metrics.

The queries below are those of every panel and template variable of the dashboard Kepler
ships with its compose setup (``compose/default/grafana/dashboards/latest/dashboard.json`` in
Kepler's repository, 0.10 and later), with Grafana's variables written as ``$name``: the
test resolves the variables the way Grafana does (``label_values`` through the series API,
``query_result`` with the variable's regex), then runs every panel's query with them.

One agent (tests/kepler_host.py: a RAPL fixture, a CPU burner in a kubepods-style cgroup of
a pod named by a Kubernetes API lookalike, a QEMU guest, a fake NVML GPU) runs two pipelines,
each with its own pull endpoint that a real Prometheus scrapes as its own job:

* ``chart``: the Helm chart's default levels (helm/otel-kepler/values.yaml);
* ``kepler``: Kepler's default levels (every level: Kepler's ``metricsLevel`` default is all).

With Kepler's levels every panel has data. With the chart's, the panels of the node,
container and pod levels have data and those of the process and vm levels have none, as
documented in docs/kepler.md (they need ``levels`` with process and vm).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import need_root
from tests.kepler_host import (
    CONTAINER,
    DRAM_W,
    NAMESPACE,
    PACKAGE_W,
    POD,
    POWER_JITTER,
    VM_NAME,
    KeplerHost,
    settled_time,
)
from tests.peers import Prometheus

ROOT = Path(__file__).resolve().parent.parent
KEPLER_LEVELS = ["node", "process", "container", "pod", "vm"]


def chart_levels() -> list[str]:
    values = yaml.safe_load((ROOT / "helm" / "otel-kepler" / "values.yaml").read_text())
    return list(values["levels"])


@dataclass(frozen=True)
class Variable:
    name: str
    query: str  # label_values(<series>, <label>) or query_result(<expr>)
    level: str
    all_value: str | None = None  # "All" selected: Grafana's allValue (None: no All option)
    regex: str = ""


@dataclass(frozen=True)
class Panel:
    id: int
    title: str
    expr: str
    level: str  # the metrics level whose series it reads


#: The dashboard's template variables, in its order of dependence.
VARIABLES = [
    Variable("job", "label_values(kepler_node_cpu_watts,job)", "node"),
    Variable("node", 'label_values(kepler_node_cpu_info{job="$job"}, instance)', "node"),
    Variable("zone", 'label_values(kepler_node_cpu_watts{job="$job"}, zone)', "node", ".*"),
    Variable(
        "namespace", 'label_values(kepler_pod_cpu_watts{job="$job"}, pod_namespace)', "pod", ".*"
    ),
    Variable(
        "pod",
        'label_values(kepler_pod_cpu_watts{job="$job", pod_namespace=~"$namespace"},pod_name)',
        "pod",
        ".*",
    ),
    Variable(
        "process",
        'query_result(label_join( count by (pid, comm) (kepler_process_cpu_watts{job="$job"}), '
        '"process", " | ", "comm", "pid" ))',
        "process",
        regex=r'pid="(?P<value>[^"]+)',
    ),
    Variable("container", "label_values(kepler_container_cpu_watts,container_name)", "container"),
    Variable("vm", 'label_values(kepler_vm_cpu_watts{job="$job"}, vm_name)', "vm", ".*"),
]

#: Every panel with a query (the overview text panel and the rows have none).
PANELS = [
    Panel(200, "Current Power Consumption By Zone",
          'sum by (zone) (kepler_node_cpu_watts{job="$job", zone=~"$zone"})', "node"),
    Panel(201, "Current Active Power Consumption By Zone",
          'sum by (zone) (kepler_node_cpu_active_watts{job="$job", zone=~"$zone"})', "node"),
    Panel(202, "Current Idle Power Consumption By Zone",
          'sum by (zone) (kepler_node_cpu_idle_watts{job="$job", zone=~"$zone"})', "node"),
    Panel(203, "CPU Info",
          'count by (instance, model_name)(kepler_node_cpu_info{job="$job"})', "node"),
    Panel(212, "RAPL Info", 'group by (node_name,zone)(kepler_node_cpu_watts{job="$job"})', "node"),
    Panel(204, "Total Power Consumption (W) per Zone",
          'sum by (zone) (kepler_node_cpu_watts{job="$job", zone=~"$zone"})', "node"),
    Panel(205, "Node Power Consumption (W) By Zone",
          'kepler_node_cpu_watts{job="$job", instance=~"$node", zone=~"$zone"}', "node"),
    Panel(206, "Node Active Power Consumption (W) By Zone",
          'kepler_node_cpu_active_watts{job="$job", instance=~"$node", zone=~"$zone"}', "node"),
    Panel(207, "Node Idle Power Consumption (W) By Zone",
          'kepler_node_cpu_idle_watts{job="$job", instance=~"$node", zone=~"$zone"}', "node"),
    Panel(208, "Top 10 Power Consuming Processes (W) per Zone",
          'topk(10,sum by (comm,zone)(kepler_process_cpu_watts{job="$job", zone=~"$zone"}))',
          "process"),
    Panel(215, "Total Power Consumption of Processes (W) per Zone",
          'sum by (zone) (kepler_process_cpu_watts{job="$job", zone=~"$zone"})', "process"),
    Panel(210, "Process Power Consumption (W) By Zone",
          'kepler_process_cpu_watts{job="$job", zone=~"$zone",pid="$process"}', "process"),
    Panel(214, "Top 10 Power Consuming Containers (W) per Zone",
          'topk(10,sum by (container_name,zone)'
          '(kepler_container_cpu_watts{job="$job", zone=~"$zone"}))', "container"),
    Panel(219, "Total Power Consumption of Containers (W) per Zone",
          'sum by (zone) (kepler_container_cpu_watts{job="$job", zone=~"$zone"})', "container"),
    Panel(216, "Container Power Consumption (W) By Zone",
          'kepler_container_cpu_watts{job="$job", zone=~"$zone",container_name=~"$container"}',
          "container"),
    Panel(218, "Top 10 Power Consuming Namespaces (W) per Zone",
          'topk(10,sum by (pod_namespace,zone)(kepler_pod_cpu_watts{job="$job", zone=~"$zone"}))',
          "pod"),
    Panel(209, "Total Power Consumption of Pods in Namespace (W) per Zone",
          'sum by (zone) (kepler_pod_cpu_watts{job="$job", zone=~"$zone", '
          'pod_namespace=~"$namespace"})', "pod"),
    Panel(220, "Pod Power Consumption (W) By Zone",
          'kepler_pod_cpu_watts{job="$job",pod_namespace=~"$namespace", zone=~"$zone",'
          'pod_name=~"$pod"}', "pod"),
    Panel(222, "Top 10 Power Consuming VMs (W) per Zone",
          'topk(10,sum by (vm_name,zone)(kepler_vm_cpu_watts{job="$job", zone=~"$zone"}))', "vm"),
    Panel(223, "Total Power Consumption of VMs (W) per Zone",
          'sum by (zone) (kepler_vm_cpu_watts{job="$job", zone=~"$zone"})', "vm"),
    Panel(224, "VM Power Consumption (W) By Zone",
          'kepler_vm_cpu_watts{job="$job", zone=~"$zone",vm_name=~"$vm"}', "vm"),
]  # fmt: skip


def substitute(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${name}", values[name])
    assert "$" not in expr, expr
    return expr


def resolve(prom: Prometheus, variable: Variable, values: dict[str, str]) -> list[str]:
    """The variable's options, as Grafana's Prometheus data source computes them."""
    query = substitute(variable.query, values)
    label_values = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    if label_values:
        series, label = label_values.groups()
        found = prom.api(f"label/{label}/values", {"match[]": [series]})
        return sorted(str(v) for v in found)
    result = re.fullmatch(r"query_result\((.+)\)", query, re.S)
    assert result, query
    options = []
    for row in prom.query(result.group(1)):
        metric = row["metric"]
        text = "{" + ", ".join(f'{k}="{v}"' for k, v in metric.items()) + "}"
        match = re.search(variable.regex, text)
        if match:
            options.append(match.group("value"))
    return sorted(options)


@pytest.fixture(scope="module")
def scraped() -> Iterator[tuple[KeplerHost, Prometheus]]:
    """The agent's two pipelines, scraped by Prometheus as jobs ``chart`` and ``kepler``."""
    need_root()
    pipelines = {"chart": chart_levels(), "kepler": KEPLER_LEVELS}
    with KeplerHost(pipelines) as host:
        static = [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"job": name}}
            for name, port in host.ports.items()
        ]
        prom = Prometheus([], scrape_interval="2s", scrape_config={"static_configs": static})
        with prom:
            host.wait_for("kepler_vm_cpu_watts{", f'pod_name="{POD}"', pipeline="kepler")
            enough = lambda r: bool(r) and float(r[0]["value"][1]) >= 3  # noqa: E731
            for job in pipelines:
                prom.wait_for(
                    f'count_over_time(kepler_pod_cpu_watts{{job="{job}",pod_name="{POD}"}}[1m])',
                    timeout=60,
                    until=enough,
                )
            prom.wait_for(
                f'count_over_time(kepler_vm_cpu_watts{{job="kepler",vm_name="{VM_NAME}"}}[1m])',
                timeout=60,
                until=enough,
            )
            yield host, prom


def variables(
    prom: Prometheus, job: str, levels: list[str], host: KeplerHost
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Each variable's value as a user would pick it, and every variable's options."""
    values: dict[str, str] = {}
    options: dict[str, list[str]] = {}
    for variable in VARIABLES:
        found = resolve(prom, variable, values)
        options[variable.name] = found
        if variable.name == "job":
            values["job"] = job
        elif variable.name == "process":
            values["process"] = str(host.burner_pid)
        elif variable.all_value is not None:
            values[variable.name] = variable.all_value
        elif found:
            values[variable.name] = found[0]
        else:
            values[variable.name] = ""
    return values, options


def test_keplers_levels_fill_every_panel_and_variable(
    scraped: tuple[KeplerHost, Prometheus],
) -> None:
    host, prom = scraped
    values, options = variables(prom, "kepler", KEPLER_LEVELS, host)
    assert {"chart", "kepler"} <= set(options["job"])
    assert options["node"] == [f"127.0.0.1:{host.ports['kepler']}"]
    assert options["zone"] == ["dram", "package"]
    # Other tests on this machine may run containers and VMs too: ours are among them.
    assert options["namespace"] == [NAMESPACE]
    assert options["pod"] == [POD]
    assert CONTAINER in options["container"]
    assert VM_NAME in options["vm"]
    assert str(host.burner_pid) in options["process"]
    assert str(host.qemu_pid) in options["process"]
    answers: dict[int, list[dict[str, Any]]] = {}
    # Every panel at one scrape's time: totals and their parts come from the same samples.
    at = settled_time(prom, 'kepler_node_cpu_joules_total{job="kepler",zone="package"}')
    for panel in PANELS:
        result = prom.query(substitute(panel.expr, values), at=at)
        assert result, (
            f"panel {panel.id} {panel.title!r}: no data: {substitute(panel.expr, values)}"
        )
        answers[panel.id] = result

    def by_zone(panel: int) -> dict[str, float]:
        return {r["metric"]["zone"]: float(r["value"][1]) for r in answers[panel]}

    total = by_zone(200)
    assert total["package"] == pytest.approx(PACKAGE_W, rel=POWER_JITTER)
    assert total["dram"] == pytest.approx(DRAM_W, rel=POWER_JITTER)
    # Active and idle power add up to the zone's power.
    for zone in ("package", "dram"):
        assert by_zone(201)[zone] + by_zone(202)[zone] == pytest.approx(total[zone], rel=1e-6)
    (cpu_info,) = answers[203]
    assert float(cpu_info["value"][1]) == os.cpu_count()
    assert {r["metric"]["zone"] for r in answers[212]} == {"package", "dram"}
    # The one pod, container and VM, each under the processes' total.
    processes = by_zone(215)["package"]
    for level_total in (219, 209, 223):
        assert 0 < by_zone(level_total)["package"] <= processes * (1 + 1e-9), level_total
    assert CONTAINER in {r["metric"].get("container_name") for r in answers[214]}
    assert NAMESPACE in {r["metric"].get("pod_namespace") for r in answers[218]}
    assert VM_NAME in {r["metric"].get("vm_name") for r in answers[222]}
    assert {r["metric"]["pid"] for r in answers[210]} == {str(host.burner_pid)}


def test_the_charts_levels_fill_the_node_container_and_pod_panels(
    scraped: tuple[KeplerHost, Prometheus],
) -> None:
    host, prom = scraped
    levels = chart_levels()
    assert levels == ["node", "container", "pod"]
    values, options = variables(prom, "chart", levels, host)
    assert options["namespace"] == [NAMESPACE]
    assert options["pod"] == [POD]
    for panel in PANELS:
        result = prom.query(substitute(panel.expr, values))
        if panel.level in levels:
            assert result, f"panel {panel.id} {panel.title!r}: no data"
        else:  # process and vm panels: off by default here (docs/kepler.md)
            assert result == [], f"panel {panel.id} {panel.title!r}: {result}"


def test_every_panel_and_variable_reads_a_kepler_family() -> None:
    """The queries above only read families of Kepler's contract (tests/test_kepler_contract)."""
    from tests.test_kepler_contract import KEPLER

    for query in [v.query for v in VARIABLES] + [p.expr for p in PANELS]:
        names = set(re.findall(r"\bkepler_\w+", query))
        assert names and names <= set(KEPLER), query
    for panel in PANELS:
        (name,) = set(re.findall(r"\bkepler_\w+", panel.expr))
        assert KEPLER[name].level == panel.level, panel.title

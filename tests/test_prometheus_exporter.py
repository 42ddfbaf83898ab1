"""The pull exporter: Kepler names, ended workloads kept for their retention, probes."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from otel_kepler.convert import AgentStats, Converter
from otel_kepler.data import Batch, EnergyReading, GaugeValue, ProcessSample, Workload
from otel_kepler.exporters.prometheus import PrometheusConfig, PrometheusExporter
from otel_kepler.metrics import ALL, prometheus_name
from otel_kepler.processors.attribution import AttributionConfig, AttributionProcessor
from otel_kepler.resource import node_resource

CTR = Workload("c" * 64, "containerd", "pod-uid-1")


@pytest.fixture
def exporter() -> Iterator[PrometheusExporter]:
    exp = PrometheusExporter("prometheus", PrometheusConfig(endpoint="127.0.0.1:0"))
    exp.start()
    yield exp
    exp.shutdown()


def get(exp: PrometheusExporter, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{exp.port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(exp: PrometheusExporter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = get(exp, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def names(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> set[str]:
    return {name for name, _ in samples}


class Agent:
    """attribution + conversion, as the service runs them, feeding the exporter."""

    def __init__(self, exp: PrometheusExporter) -> None:
        self.exp = exp
        self.proc = AttributionProcessor(
            AttributionConfig(levels=["node", "process", "container", "pod"]), node_name="n1"
        )
        self.conv = Converter(node_resource("n1"), 1, "n1", terminated_retention=2.0)
        self.t = 0

    def tick(self, procs: dict[int, float], exited: tuple[int, ...] = ()) -> None:
        self.t += 1
        batch = Batch(self.t * 10**9, 1.0, "n1", [EnergyReading("cpu", "package", "rapl", 10.0)])
        batch.cpu_usage_ratio = 1.0
        batch.has_usage = True
        for pid, secs in procs.items():
            batch.processes[pid] = ProcessSample(pid, 1, f"w{pid}", "/bin/w", CTR, secs, 1.0)
        for pid in exited:
            batch.exited.append(ProcessSample(pid, 1, f"w{pid}", "/bin/w", CTR, 0.0, 0.0))
        self.proc.process(batch)
        self.exp.export(self.conv.convert(batch, AgentStats(tick_seconds=0.01)), "metrics")


def test_probes_and_kepler_names(exporter: PrometheusExporter) -> None:
    assert get(exporter, "/healthz") == (200, "ok\n")
    assert get(exporter, "/readyz") == (503, "no node energy exported yet\n")
    assert get(exporter, "/nope")[0] == 404
    agent = Agent(exporter)
    agent.tick({1: 1.0, 2: 1.0})
    assert get(exporter, "/readyz") == (200, "ready\n")
    samples = scrape(exporter)
    node = frozenset({"zone": "package", "source": "rapl", "node_name": "n1"}.items())
    assert samples[("kepler_node_cpu_joules_total", node)] == 10.0
    assert samples[("kepler_node_cpu_watts", node)] == 10.0
    assert samples[("kepler_node_cpu_active_joules_total", node)] == 10.0
    assert samples[("kepler_node_cpu_idle_joules_total", node)] == 0.0
    assert {
        "kepler_node_cpu_usage_ratio",
        "kepler_process_cpu_joules_total",
        "kepler_process_cpu_watts",
        "kepler_process_cpu_seconds_total",
        "kepler_container_cpu_joules_total",
        "kepler_container_cpu_watts",
        "kepler_pod_cpu_joules_total",
        "kepler_pod_cpu_watts",
        "otel_kepler_agent_tick_duration_seconds",
        "otel_kepler_agent_cpu_seconds_total",
        "otel_kepler_agent_memory_rss_bytes",
    } <= names(samples)
    pod = frozenset(
        {
            "pod_id": "pod-uid-1",
            "pod_name": "",
            "pod_namespace": "",
            "node_name": "n1",
            "zone": "package",
            "state": "running",
        }.items()
    )
    assert samples[("kepler_pod_cpu_joules_total", pod)] == 10.0


def test_an_ended_workload_is_served_to_every_scraper_for_its_retention(
    exporter: PrometheusExporter,
) -> None:
    agent = Agent(exporter)
    agent.tick({1: 1.0, 2: 1.0})
    agent.tick({1: 2.0}, exited=(2,))  # pid 2 ended at t=2 s: emitted as terminated
    agent.tick({1: 3.0})  # a newer tick without it

    def terminated(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> list[str]:
        return sorted(
            dict(labels)["pid"]
            for name, labels in samples
            if name == "kepler_process_cpu_joules_total" and dict(labels)["state"] == "terminated"
        )

    # Two scrapers (an HA pair) both get it, as often as they scrape within the retention.
    assert terminated(scrape(exporter)) == ["2"]
    assert terminated(scrape(exporter)) == ["2"]
    agent.tick({1: 4.0})  # t=4 s: still within 2 s of its end
    assert terminated(scrape(exporter)) == ["2"]
    agent.tick({1: 5.0})  # t=5 s: retention over
    assert terminated(scrape(exporter)) == []


def test_rendered_once_per_tick_however_many_scrape(exporter: PrometheusExporter) -> None:
    agent = Agent(exporter)
    agent.tick({1: 1.0, 2: 1.0})
    bodies = {get(exporter, "/metrics")[1] for _ in range(5)}
    assert len(bodies) == 1 and exporter.renders == 1
    agent.tick({1: 2.0, 2: 2.0})
    get(exporter, "/metrics")
    get(exporter, "/metrics")
    assert exporter.renders == 2


def test_every_contract_name_translates_to_kepler_names() -> None:
    translated = {d.name: d.prometheus_name for d in ALL}
    assert translated["kepler.node.cpu.joules"] == "kepler_node_cpu_joules_total"
    assert translated["kepler.node.cpu.watts"] == "kepler_node_cpu_watts"
    assert translated["kepler.node.cpu.usage.ratio"] == "kepler_node_cpu_usage_ratio"
    assert translated["kepler.node.cpu.idle.joules"] == "kepler_node_cpu_idle_joules_total"
    assert translated["kepler.pod.cpu.joules"] == "kepler_pod_cpu_joules_total"
    assert translated["kepler.process.cpu.seconds"] == "kepler_process_cpu_seconds_total"
    assert translated["kepler.node.platform.watts"] == "kepler_node_platform_watts"
    assert prometheus_name("kepler.pod.co2", "g", True) == "kepler_pod_co2_grams_total"


def test_listen_error_names_the_endpoint(exporter: PrometheusExporter) -> None:
    taken = PrometheusExporter("prometheus/b", PrometheusConfig(f"127.0.0.1:{exporter.port}"))
    with pytest.raises(Exception) as err:
        taken.start()
    assert str(err.value) == (f"cannot listen on 127.0.0.1:{exporter.port}: Address already in use")


def test_attribute_keys_become_valid_label_names(exporter: PrometheusExporter) -> None:
    batch = Batch(10**9, 1.0, "n1")
    batch.gauges.append(
        GaugeValue("hw.temperature", "Cel", "t", 41.0, {"hw.id": "coretemp-0/temp1"})
    )
    exporter.export(Converter(node_resource("n1"), 1, "n1").convert(batch), "metrics")
    samples = scrape(exporter)
    key = ("hw_temperature_celsius", frozenset({"hw_id": "coretemp-0/temp1"}.items()))
    assert samples[key] == 41.0

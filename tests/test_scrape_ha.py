"""An HA pair of real Prometheus servers scraping one agent: neither misses an ended workload.

Short-lived processes run and end while both scrape every second. An ended
workload stays in the pull endpoint's output, with its final totals, for
``service.terminated_retention``, so each Prometheus scrapes it however its
scrapes fall against the ticks and against the other's.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import test_end_to_end as e2e
from tests.peers import Prometheus, free_port

SHORT_LIVED = (
    "import time\n"
    "end = time.monotonic() + 1.5\n"
    "while time.monotonic() < end:\n"
    "    for _ in range(20000): pass\n"
    "    time.sleep(0.01)\n"
)
WORKLOADS = 20


@pytest.fixture
def short_lived() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def terminated(prom: Prometheus, pids: set[str]) -> dict[str, float]:
    """pid -> final package joules, of the ended processes among ``pids``."""
    query = 'kepler_process_cpu_joules_total{state="terminated",zone="package"}'
    return {
        r["metric"]["pid"]: float(r["value"][1])
        for r in prom.query(query)
        if r["metric"]["pid"] in pids
    }


def test_both_of_an_ha_pair_hold_every_ended_workload(
    tmp_path: Path,
    prometheus_factory: Callable[..., Prometheus],
    short_lived: list[subprocess.Popen[bytes]],
) -> None:
    port = free_port()
    target = [f"127.0.0.1:{port}"]
    pair = [prometheus_factory(target, scrape_interval="1s") for _ in range(2)]
    agent = e2e.Agent(
        e2e.write_config(
            tmp_path,
            f"""
host: {{sysfs: {tmp_path / "sys"}, node_name: ha-node}}
receivers: {{rapl: {{}}, procfs: {{}}}}
processors: {{attribution: {{levels: [node, process], state_dir: "{tmp_path}"}}}}
exporters: {{prometheus: {{endpoint: "127.0.0.1:{port}"}}}}
service:
  interval: 500ms
  terminated_retention: 60s
  pipelines:
    metrics: {{receivers: [rapl, procfs], processors: [attribution], exporters: [prometheus]}}
""",
        )
    ).start()
    try:
        with e2e.PoweredTree(tmp_path / "sys"):
            for prom in pair:
                prom.wait_for('kepler_node_cpu_joules_total{zone="package"}', timeout=60)
            for _ in range(WORKLOADS // 4):  # four at a time, staggered against the ticks
                for _ in range(4):
                    short_lived.append(subprocess.Popen([sys.executable, "-c", SHORT_LIVED]))
                time.sleep(0.7)
            for proc in short_lived:
                assert proc.wait(timeout=60) == 0
            pids = {str(p.pid) for p in short_lived}
            deadline = time.monotonic() + 30
            while True:
                held = [terminated(prom, pids) for prom in pair]
                if all(set(h) == pids for h in held) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            running = [
                {
                    r["metric"]["pid"]: float(r["value"][1])
                    for r in prom.query(
                        'max_over_time(kepler_process_cpu_joules_total{state="running",'
                        'zone="package"}[5m])'
                    )
                    if r["metric"]["pid"] in pids
                }
                for prom in pair
            ]
        seconds, code, _, err = agent.stop()
    finally:
        agent.kill()
    assert code == 0, err
    first, second = held
    assert set(first) == pids, f"first Prometheus misses {sorted(pids - set(first))}"
    assert set(second) == pids, f"second Prometheus misses {sorted(pids - set(second))}"
    for pid in pids:
        # Both hold the same final total, which no running sample of it exceeds.
        assert first[pid] == pytest.approx(second[pid], rel=1e-9)
        for seen in running:
            if pid in seen:
                assert first[pid] >= seen[pid] * (1 - 1e-9)
    assert sum(first.values()) > 0  # the processes burnt CPU at 40 W of package power

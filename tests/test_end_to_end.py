"""The agent as a user runs it: a real process, real peers, a fixture RAPL tree at known power.

The agent (``otel-kepler run``) reads a RAPL fixture tree that a thread advances at
a known power, and this machine's real /proc with CPU burners in a kubepods-like
cgroup; it pushes OTLP/HTTP into VictoriaMetrics and OTLP/gRPC into a grpcio sink,
and Prometheus scrapes its pull endpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cgroups import cgroup_mount, remove_cgroups
from tests.conftest import need_root
from tests.peers import OtlpGrpcSink, OtlpHttpSink, Prometheus, VictoriaMetrics, free_port
from tests.sysfs_fixtures import RaplTree

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_WATTS = 40.0
DRAM_WATTS = 4.0
NODE_JOULES = "kepler.node.cpu.joules"
BURN = "import time\nwhile True:\n    pass\n"
HALF_BURN = (
    "import time\n"
    "while True:\n"
    "    t = time.monotonic()\n"
    "    while time.monotonic() - t < 0.02: pass\n"
    "    time.sleep(0.06)\n"
)


class PoweredTree:
    """A RAPL fixture tree whose counters a thread advances at a fixed power."""

    def __init__(self, sysfs: Path) -> None:
        self.tree = RaplTree(sysfs)
        self.tree.add_socket(dram=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        #: The longest the counters went without advancing (s): how far behind the truth a
        #: reader may find them on a busy machine.
        self.max_gap = 0.0

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.01):
            now = time.monotonic()
            self.tree.advance_all({"package": PACKAGE_WATTS, "dram": DRAM_WATTS}, now - last)
            self.max_gap = max(self.max_gap, time.monotonic() - last)
            last = now

    def __enter__(self) -> PoweredTree:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Agent:
    """``otel-kepler run`` in a subprocess; its output is read as it comes."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self._lines: dict[str, list[str]] = {"out": [], "err": []}
        self._readers: list[threading.Thread] = []
        self._cond = threading.Condition()

    def start(self) -> Agent:
        cmd = [sys.executable, "-m", "otel_kepler.cli", "run", "--config", str(self.config)]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            reader = threading.Thread(target=self._read, args=(name, stream), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    def _read(self, name: str, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            with self._cond:
                self._lines[name].append(line)
                self._cond.notify_all()

    def wait_for_lines(self, needle: str, count: int, timeout: float = 60.0) -> list[str]:
        """Wait until ``count`` lines of stdout contain ``needle`` (the agent still running)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self._lines["out"] if needle in line]
                if len(found) >= count:
                    return found
                if self.proc.poll() is not None or time.monotonic() >= deadline:
                    raise AssertionError(
                        f"{len(found)} of {count} lines with {needle!r} after {timeout} s "
                        f"(exit code {self.proc.returncode}): {''.join(self._lines['err'])[-3000:]}"
                    )
                self._cond.wait(timeout=0.1)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[float, int, str, str]:
        """Signal it; return (seconds to exit, exit code, stdout, stderr)."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        seconds = time.monotonic() - began
        for reader in self._readers:
            reader.join(timeout=10)
        with self._cond:
            out, err = "".join(self._lines["out"]), "".join(self._lines["err"])
        return seconds, self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=10)


@pytest.fixture
def burners() -> Iterator[dict[str, object]]:
    """A full-core burner in a kubepods-like cgroup v2 directory, and a 25% burner outside."""
    need_root()
    mount = cgroup_mount("cgroup2", "")
    assert mount is not None, "no cgroup v2 hierarchy mounted"
    pod = str(uuid.uuid4())
    container = uuid.uuid4().hex + uuid.uuid4().hex
    top = mount / f"otel-kepler-e2e-{os.getpid()}"
    ctr_dir = (
        top
        / "kubepods.slice/kubepods-besteffort.slice"
        / f"kubepods-besteffort-pod{pod.replace('-', '_')}.slice"
        / f"cri-containerd-{container}.scope"
    )
    ctr_dir.mkdir(parents=True)
    full = subprocess.Popen([sys.executable, "-c", BURN])
    part = subprocess.Popen([sys.executable, "-c", HALF_BURN])
    (ctr_dir / "cgroup.procs").write_text(str(full.pid))
    try:
        yield {"full": full, "part": part, "pod": pod, "container": container}
    finally:
        for p in (full, part):
            p.kill()
            p.wait()
        remove_cgroups(top)


def next_tick(url: str, after: float | None, timeout: float = 60.0) -> tuple[float, float, float]:
    """Poll the pull endpoint until the package energy is served and differs from ``after``.

    Returns (joules, earliest, latest): the tick that read that energy published it between
    the start of the poll before and the end of this one (monotonic seconds), and read the
    counters at most the tick's duration (served beside it) before publishing.
    """
    deadline = time.monotonic() + timeout
    previous = time.monotonic()
    seen: float | None = None
    while time.monotonic() < deadline:
        began = time.monotonic()
        try:
            body = urllib.request.urlopen(url, timeout=5).read()
        except OSError:  # not listening yet: a busy machine starts the agent slowly
            time.sleep(0.05)
            continue
        ended = time.monotonic()
        joules = samples(body, "kepler_node_cpu_joules_total", zone="package")
        if joules and (after is None or joules[0] != after) and seen is not None:
            duration = sample(body, "otel_kepler_agent_tick_duration_seconds")
            return joules[0], previous - duration, ended
        if joules:
            seen = joules[0]
            after = after if after is not None else seen
        previous = began
        time.sleep(0.05)
    raise AssertionError(f"no new package energy at {url} after {timeout} s (last {seen})")


def samples(body: bytes, name: str, **labels: str) -> list[float]:
    """The values of the samples called ``name`` whose labels include ``labels``."""
    return [
        float(s.value)
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]


def sample(body: bytes, name: str, **labels: str) -> float:
    """The value of the one sample called ``name`` whose labels include ``labels``."""
    found = [
        s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return float(found[0])


def timed_points(sink: OtlpGrpcSink, name: str, **labels: str) -> list[tuple[int, float]]:
    """(time in nanoseconds, value) of every delivered number point of ``name`` with ``labels``,
    in time order."""
    points: list[tuple[int, float]] = []
    for _, metric in sink.metrics(name):
        kind = metric.WhichOneof("data")
        for dp in getattr(metric, kind).data_points:
            attributes = {a.key: a.value.string_value for a in dp.attributes}
            if labels.items() <= attributes.items():
                value = dp.as_double if dp.WhichOneof("value") == "as_double" else dp.as_int
                points.append((dp.time_unix_nano, float(value)))
    return sorted(points)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_push_and_pull_end_to_end(
    tmp_path: Path,
    burners: dict[str, object],
    victoria_metrics: VictoriaMetrics,
    otlp_grpc_sink: OtlpGrpcSink,
    prometheus_factory: object,
) -> None:
    port = free_port()
    config = write_config(
        tmp_path,
        f"""
host:
  sysfs: {tmp_path / "sys"}
  node_name: e2e-node
receivers:
  rapl: {{}}
  procfs: {{}}
processors:
  attribution:
    levels: [node, process, container, pod]
exporters:
  otlphttp:
    metrics_endpoint: {victoria_metrics.otlp_metrics_url}
  otlp:
    endpoint: {otlp_grpc_sink.endpoint}
    tls: {{insecure: true}}
  prometheus:
    endpoint: 127.0.0.1:{port}
service:
  interval: 1s
  pipelines:
    metrics:
      receivers: [rapl, procfs]
      processors: [attribution]
      exporters: [otlphttp, otlp, prometheus]
""",
    )
    full = burners["full"].pid  # type: ignore[attr-defined]
    part = burners["part"].pid  # type: ignore[attr-defined]
    with PoweredTree(tmp_path / "sys") as tree:
        agent = Agent(config).start()
        try:
            prom: Prometheus = prometheus_factory([f"127.0.0.1:{port}"], scrape_interval="1s")  # type: ignore[operator]
            # Prometheus scraped the pull endpoint (its first scrape comes ~5 s after start).
            scraped = prom.wait_for('kepler_node_cpu_joules_total{zone="package"}', timeout=60)
            assert float(scraped[0]["value"][1]) > 0
            assert prom.wait_for(f'kepler_process_cpu_joules_total{{pid="{full}"}}', timeout=30)
            # At least 6 ticks pushed (a loaded machine starts the agent slowly; a busy
            # node's tick may take more than one request, so ticks are counted by their
            # node series: package and dram, one point each a tick).
            deadline = time.monotonic() + 60
            while len(otlp_grpc_sink.metric_points("kepler.node.cpu.joules")) < 12:
                assert time.monotonic() < deadline, "6 ticks not pushed within 60 s"
                time.sleep(0.2)
            seconds, code, out, err = agent.stop()
        finally:
            agent.kill()
    assert code == 0, err

    # gRPC: the real request, decoded; its last totals are what the agent sent last.
    names = otlp_grpc_sink.metric_names()
    assert {"kepler.node.cpu.joules", "otel_kepler.agent.tick.duration"} <= names
    points = otlp_grpc_sink.metric_points("kepler.node.cpu.joules")
    assert points[-1].resource["service.name"] == "otel-kepler"
    assert points[-1].resource["k8s.node.name"] == "e2e-node"
    last = {p.attributes["zone"]: p.value for p in points[-2:]}
    assert set(last) == {"package", "dram"}
    # The energy between the first and the last delivered tick is the known power over the
    # time between them. A busy node skips tick slots and its exporter drops batches, so
    # ticks are not counted: each point's time is taken after its tick read the counters,
    # at most that tick's duration (the longest one reported) after; the fixture's
    # counters are at most ``gap`` behind.
    longest = max(v for _, v in timed_points(otlp_grpc_sink, "otel_kepler.agent.tick.duration"))
    slack = longest + tree.max_gap
    # Stopped by the signal, in one pass (how fast a busy machine tears down is not asserted;
    # that a hung backend cannot hold shutdown is, below).
    assert err.count("received SIGTERM, stopping") == 1, err[-3000:]
    assert seconds < 30.0, err[-3000:]
    for zone, watts in (("package", PACKAGE_WATTS), ("dram", DRAM_WATTS)):
        series = timed_points(otlp_grpc_sink, NODE_JOULES, zone=zone)
        (n0, e0), (n1, e1) = series[0], series[-1]
        assert e1 == last[zone]
        t0, t1 = n0 / 1e9, n1 / 1e9
        assert t1 - t0 >= 4.0, series  # several ticks delivered
        low, high = watts * (t1 - t0 - slack), watts * (t1 - t0 + slack)
        assert low <= e1 - e0 <= high, (zone, low, e1 - e0, high)

    # VictoriaMetrics: Kepler names from OTLP, the same totals.
    def vm_value(promql: str, expected: float | None = None) -> tuple[dict[str, str], float]:
        accept = None
        if expected is not None:
            accept = lambda r: bool(r) and float(r[0]["value"][1]) == pytest.approx(expected)  # noqa: E731
        result = victoria_metrics.wait_for(promql, until=accept)
        return result[0]["metric"], float(result[0]["value"][1])

    def same_tick(zone: str) -> None:
        """VictoriaMetrics holds the totals gRPC got, tick for tick: the newest tick both
        exporters delivered (each drops or cuts at shutdown on its own) has one value."""
        victoria_metrics.before_query()
        data = victoria_metrics.api(
            "query", {"query": f'kepler_node_cpu_joules_total{{zone="{zone}"}}[10m]'}
        )
        (series,) = data["result"]
        vm = {round(float(t) * 1000): float(v) for t, v in series["values"]}
        grpc = {n // 1_000_000: v for n, v in timed_points(otlp_grpc_sink, NODE_JOULES, zone=zone)}
        common = sorted(set(vm) & set(grpc))
        assert common, (vm, grpc)
        assert vm[common[-1]] == pytest.approx(grpc[common[-1]], rel=1e-9), zone

    same_tick("package")
    same_tick("dram")
    labels, total = vm_value('kepler_node_cpu_joules_total{zone="package"}')
    assert labels["source"] == "rapl"
    assert labels["node_name"] == "e2e-node"
    assert labels["service_name"] == "otel-kepler"
    # Each tick's watts are its interval's joules over its own elapsed time; on a busy node
    # the fixture's counters lag by up to max_gap at either end of a ~1 s interval, so one
    # tick may be off by more than 10% (45 W seen for 40): the ticks' median is not.
    victoria_metrics.before_query()
    data = victoria_metrics.api(
        "query", {"query": 'kepler_node_cpu_watts{zone="package",source="rapl"}[10m]'}
    )
    (series,) = data["result"]
    watts = sorted(float(v) for _, v in series["values"])
    assert len(watts) >= 4, watts
    assert watts[len(watts) // 2] == pytest.approx(PACKAGE_WATTS, rel=0.1), watts
    _, active = vm_value('kepler_node_cpu_active_joules_total{zone="package"}')
    _, idle = vm_value('kepler_node_cpu_idle_joules_total{zone="package"}')
    assert active + idle == pytest.approx(total, rel=1e-9)
    assert active > 0.4 * total  # the full burner keeps one of two cores busy

    def process_joules(pid: int) -> float:
        query = f'kepler_process_cpu_joules_total{{pid="{pid}",zone="package",state="running"}}'
        return vm_value(query)[1]

    full_j, part_j = process_joules(full), process_joules(part)
    assert full_j > 2.5 * part_j > 0  # 100% of a core against about 25%
    container = burners["container"]
    labels, ctr_j = vm_value(
        f'kepler_container_cpu_joules_total{{container_id="{container}",zone="package"}}'
    )
    assert labels["runtime"] == "containerd"
    assert labels["pod_id"] == burners["pod"]
    assert ctr_j == pytest.approx(full_j, rel=1e-9)
    _, pod_j = vm_value(f'kepler_pod_cpu_joules_total{{pod_id="{burners["pod"]}",zone="package"}}')
    assert pod_j == pytest.approx(full_j, rel=1e-9)
    _, cpu_seconds = vm_value(f'kepler_process_cpu_seconds_total{{pid="{full}"}}')
    assert cpu_seconds > 2.0


def test_a_dead_backend_never_delays_measurement(
    tmp_path: Path, otlp_http_sink: OtlpHttpSink
) -> None:
    """The OTLP backend hangs; ticks go on, the queue drops and counts, SIGTERM still stops."""
    otlp_http_sink.respond_hang(60.0)
    port = free_port()
    config = write_config(
        tmp_path,
        f"""
host: {{sysfs: {tmp_path / "sys"}}}
receivers: {{rapl: {{}}}}
processors: {{attribution: {{}}}}
exporters:
  otlphttp:
    metrics_endpoint: {otlp_http_sink.metrics_url}
    timeout: 30s
    sending_queue: {{queue_size: 2}}
  prometheus: {{endpoint: "127.0.0.1:{port}"}}
service:
  interval: 200ms
  pipelines:
    metrics: {{receivers: [rapl], processors: [attribution], exporters: [otlphttp, prometheus]}}
""",
    )
    url = f"http://127.0.0.1:{port}/metrics"
    with PoweredTree(tmp_path / "sys") as tree:
        agent = Agent(config).start()
        try:
            # Ticks seen, not slept for: a busy machine starts the agent slowly.
            before, first_lo, first_hi = next_tick(url, None)
            time.sleep(1.0)
            joules, last_lo, last_hi = next_tick(url, before)
            # Hung exporter: holds one batch, queues two, drops the rest (at least 5 ticks).
            deadline = time.monotonic() + 60
            while (dropped := dropped_batches(url)) < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
            seconds, code, out, err = agent.stop()
        finally:
            agent.kill()
        gap = tree.max_gap
    # Ticks go on at 200 ms: the energy between the two ticks is the known power over the
    # time between their reads (bracketed by the polls), the counters up to ``gap`` late.
    low = PACKAGE_WATTS * (last_lo - first_hi - gap)
    high = PACKAGE_WATTS * (last_hi - first_lo + gap)
    assert low <= joules - before <= high, (low, joules - before, high)
    assert dropped >= 5
    assert code == 0, err
    # The backend hangs 60 s and the request's timeout is 30 s: shutdown waits for neither
    # (it gives the exporters a few seconds, then reports what was not sent).
    assert seconds < 30.0, err[-3000:]
    assert "batches not sent at shutdown" in err, err[-3000:]


def dropped_batches(url: str) -> float:
    body = urllib.request.urlopen(url, timeout=5).read()
    return sample(body, "otel_kepler_agent_exporter_dropped_batches_total", exporter="otlphttp")


def test_make_run_config_shows_model_power_on_a_host_without_rapl(tmp_path: Path) -> None:
    """configs/local.yaml on this VM (no RAPL): the estimator stands in, marked source=model."""
    if os.path.isdir("/sys/class/powercap/intel-rapl:0"):
        pytest.fail("this test expects a host without RAPL, as CI's VM is")
    port = free_port()
    local = (ROOT / "configs" / "local.yaml").read_text()
    config = write_config(
        tmp_path,
        local.replace("interval: 5s", "interval: 500ms").replace(
            "127.0.0.1:9102", f"127.0.0.1:{port}"
        ),
    )
    agent = Agent(config).start()
    try:
        # Three console lines seen, not slept for: a busy machine starts the agent slowly.
        agent.wait_for_lines(" node: ", 3)
        seconds, code, out, err = agent.stop(signal.SIGINT)
    finally:
        agent.kill()
    assert code == 0, err
    assert "falling back to the estimator" in err
    lines = [line for line in out.splitlines() if " node: " in line]
    assert len(lines) >= 3
    assert "cpu/package" in lines[-1] and "W (model)" in lines[-1]
    assert "(pid " in out  # process level is on in local.yaml: the top workloads are listed

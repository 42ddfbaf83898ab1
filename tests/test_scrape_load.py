"""The pull endpoint under load: many scrapers and idle connections do not slow measuring.

The agent runs as a process (RAPL fixture tree, this machine's /proc, process
level on) with its pull endpoint and an OTLP/gRPC sink; each tick's timestamp
arrives at the sink on the tick's data points. The tick schedule is measured
without load, then while 50 threads scrape /metrics in a loop and 200
connections sit open without sending a byte, then without load again. The
allowance for the schedule under load is derived from the two baselines, since
the machine may be busy anyway. The scrapers run at the lowest CPU priority: in
production they run on other machines, so what is measured is what serving
costs the agent, not what the load generator takes from the node.
"""

from __future__ import annotations

import http.client
import os
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from otel_kepler.exporters.prometheus import PrometheusConfig, PrometheusExporter
from otel_kepler.schema import Duration
from tests import test_end_to_end as e2e
from tests.peers import OtlpGrpcSink, free_port

INTERVAL = 0.25
IDLE_TIMEOUT = 22.0
SCRAPERS = 50
IDLE = 200
LOAD_SECONDS = 10.0


@dataclass
class Scrapes:
    ok: int = 0
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def scrape_loop(port: int, until: float, out: Scrapes, parse: bool) -> None:
    # Scrapers run on other machines in production: here they take only the CPU the node
    # leaves over (nice 19 for this thread), so what is measured is the agent's own share.
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    while time.monotonic() < until:
        problem = None
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            body = resp.read()
            length = int(resp.getheader("Content-Length") or -1)
            conn.close()
            if resp.status != 200:
                problem = f"status {resp.status}"
            elif len(body) != length or not body.endswith(b"\n"):
                problem = f"incomplete body: {len(body)} of {length} bytes"
            elif b"kepler_node_cpu_joules_total{" not in body:
                problem = "no node energy in the body"
            elif parse:  # one scraper parses every body it gets, as Prometheus would
                names = {f.name for f in text_string_to_metric_families(body.decode())}
                if "kepler_process_cpu_joules" not in names:
                    problem = f"no process energy among {sorted(names)[:5]}..."
        except (OSError, http.client.HTTPException) as err:
            problem = f"{type(err).__name__}: {err}"
        with out.lock:
            if problem is None:
                out.ok += 1
            else:
                out.problems.append(problem)


def tick_times(sink: OtlpGrpcSink) -> list[float]:
    """Each tick's timestamp (seconds), from the first data point of each request."""
    times = []
    for request in sink.requests:
        metric = request.resource_metrics[0].scope_metrics[0].metrics[0]
        points = getattr(metric, metric.WhichOneof("data")).data_points
        times.append(points[0].time_unix_nano / 1e9)
    return sorted(times)


def missed_slots(times: list[float]) -> tuple[int, int]:
    """(slots the schedule had, slots without a tick) between the first and last tick."""
    slots = round((times[-1] - times[0]) / INTERVAL)
    return slots, slots - (len(times) - 1)


def gaps_of(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def is_closed(sock: socket.socket) -> bool:
    """Whether the agent closed this connection (EOF or reset), without blocking."""
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""  # non-blocking sockets
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_scrapers_and_idle_connections_do_not_disturb_the_ticks(
    tmp_path: Path, otlp_grpc_sink: OtlpGrpcSink
) -> None:
    port = free_port()
    agent = e2e.Agent(
        e2e.write_config(
            tmp_path,
            f"""
host: {{sysfs: {tmp_path / "sys"}, node_name: load-node}}
receivers: {{rapl: {{}}, procfs: {{}}}}
processors:
  attribution: {{levels: [node, process], state_dir: "{tmp_path}"}}
  attribution/node: {{levels: [node], state_dir: "{tmp_path}"}}
exporters:
  prometheus:
    endpoint: "127.0.0.1:{port}"
    idle_timeout: {IDLE_TIMEOUT}s
    request_timeout: 5s
  otlp: {{endpoint: "{otlp_grpc_sink.endpoint}", tls: {{insecure: true}}}}
service:
  interval: {INTERVAL}s
  pipelines:
    metrics: {{receivers: [rapl, procfs], processors: [attribution], exporters: [prometheus]}}
    metrics/ticks: {{receivers: [rapl], processors: [attribution/node], exporters: [otlp]}}
""",
        )
    ).start()
    idle: list[socket.socket] = []
    try:
        with e2e.PoweredTree(tmp_path / "sys"):
            otlp_grpc_sink.wait_for_requests(4, timeout=60)
            # Baseline: the schedule on this machine as it is, without scrapers.
            begin = time.time()
            time.sleep(5.0)
            baseline = [t for t in tick_times(otlp_grpc_sink) if t >= begin]

            for _ in range(IDLE):
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                conn.setblocking(False)
                idle.append(conn)
            opened = time.monotonic()
            scrapes = Scrapes()
            until = time.monotonic() + LOAD_SECONDS
            load_begin = time.time()
            threads = [
                threading.Thread(target=scrape_loop, args=(port, until, scrapes, i == 0))
                for i in range(SCRAPERS)
            ]
            for t in threads:
                t.start()
            time.sleep(max(0.0, until - time.monotonic()))
            load_end = time.time()
            held = sum(not is_closed(s) for s in idle)  # all open until the load's end
            held_for = time.monotonic() - opened
            for t in threads:
                t.join(timeout=30)
            loaded = [t for t in tick_times(otlp_grpc_sink) if load_begin <= t <= load_end]
            resumed = time.time()
            time.sleep(5.0)  # a second baseline: the machine's load drifts
            after = [t for t in tick_times(otlp_grpc_sink) if t >= resumed]

            # The idle connections are closed by the agent once idle_timeout has passed.
            deadline = opened + IDLE_TIMEOUT + 5.0
            while time.monotonic() < deadline and not all(is_closed(s) for s in idle):
                time.sleep(0.2)
            closed_at = time.monotonic() - opened
            closed = sum(is_closed(s) for s in idle)
        seconds, code, _, err = agent.stop()
    finally:
        agent.kill()
        for s in idle:
            s.close()
    assert code == 0, err

    # Every scrape answered 200 with a complete body, while the idle connections were open.
    assert not any(t.is_alive() for t in threads)
    assert scrapes.problems == [], scrapes.problems[:5]
    assert scrapes.ok >= SCRAPERS  # each scraper got at least one answer
    assert held_for < IDLE_TIMEOUT
    assert held == IDLE  # none was closed before idle_timeout

    # The tick schedule held: no more slots missed, and no slower a pace, under load than
    # the same machine shows without scrapers, before and after.
    baselines = [missed_slots(baseline), missed_slots(after)]
    load_slots, load_missed = missed_slots(loaded)
    assert min(slots for slots, _ in baselines) >= 10
    assert load_slots >= 0.8 * LOAD_SECONDS / INTERVAL
    base_rate = max(missed / slots for slots, missed in baselines)
    allowed = max(2.0, load_slots * (2 * base_rate + 0.1))
    assert load_missed <= allowed, (load_missed, load_slots, baselines)
    pace = max(statistics.median(gaps_of(baseline)), statistics.median(gaps_of(after)))
    assert statistics.median(gaps_of(loaded)) <= max(pace, INTERVAL) + 0.25 * INTERVAL

    assert closed == IDLE, f"{IDLE - closed} idle connections still open after {closed_at:.1f} s"
    assert closed_at >= IDLE_TIMEOUT - 0.5


def test_clients_that_stall_mid_request_hold_no_worker() -> None:
    """Twice max_workers connections send half a request line and stall; scrapes are still
    answered (each within a 10 s client timeout, far below request_timeout's 60 s: a stalled
    client holding a worker would make them wait that long), and the stalled ones are
    closed after idle_timeout. Split request heads still work."""
    config = PrometheusConfig(
        endpoint="127.0.0.1:0",
        max_workers=2,
        request_timeout=Duration(60.0),
        idle_timeout=Duration(2.0),
    )
    exporter = PrometheusExporter("prometheus", config)
    exporter.start()
    stalled: list[socket.socket] = []
    try:
        for _ in range(2 * config.max_workers):
            conn = socket.create_connection(("127.0.0.1", exporter.port), timeout=5)
            conn.sendall(b"GET /metr")
            stalled.append(conn)
        opened = time.monotonic()
        answers = []
        for _ in range(10):
            client = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=10)
            client.request("GET", "/healthz")
            resp = client.getresponse()
            answers.append((resp.status, resp.read()))
            client.close()
        # A head that arrives in pieces is answered once whole.
        with socket.create_connection(("127.0.0.1", exporter.port), timeout=10) as piecemeal:
            for piece in (b"GET /hea", b"lthz HTTP/1.0\r\n", b"Host: x\r\n", b"\r\n"):
                piecemeal.sendall(piece)
                time.sleep(0.05)
            reply = b""
            while chunk := piecemeal.recv(4096):
                reply += chunk
        for conn in stalled:
            conn.setblocking(False)
        deadline = opened + 2.0 + 5.0
        while time.monotonic() < deadline and not all(is_closed(s) for s in stalled):
            time.sleep(0.1)
        closed = sum(is_closed(s) for s in stalled)
    finally:
        for conn in stalled:
            conn.close()
        exporter.shutdown()
    assert answers == [(200, b"ok\n")] * 10
    assert reply.startswith(b"HTTP/1.0 200 OK\r\n") and reply.endswith(b"\r\n\r\nok\n")
    assert closed == len(stalled)

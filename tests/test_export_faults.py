"""Push exporters against backends that fail on purpose, answer by answer.

The service runs in this process with its real parts (a RAPL fixture tree, this
machine's /proc where workloads are needed, attribution, conversion, the exporter
worker and the OTLP/HTTP or OTLP/gRPC exporter); ticks are driven by hand. The
backend is a real OTLP server (tests/peers.py) told what to answer to each call:
a permanent refusal, a throttle with Retry-After or RetryInfo, server errors, a
size limit, a hang, a closed connection. Each test asserts what arrived, how
many calls were made, the gaps between them, the failed-batches counter and the
exact lines logged.

The second half runs the agent as a process (``otel-kepler run``) against
VictoriaMetrics stopped or frozen while a real pod process ends, backends that
hang through SIGTERM, refuse connections for 40 ticks or restart, and a hung
backend whose queue is counted tick by tick.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from otel_kepler.config import parse
from otel_kepler.exporting import ExporterWorker
from otel_kepler.registry import default_registry
from otel_kepler.service import Service
from tests import test_end_to_end as e2e
from tests.cgroups import cgroup_mount, remove_cgroups
from tests.conftest import need_root
from tests.peers import (
    Answer,
    ExportCall,
    OtlpGrpcSink,
    OtlpHttpSink,
    VictoriaMetrics,
    attributes_dict,
    free_port,
    http_get,
)
from tests.sysfs_fixtures import RaplTree

EXPORTING = "otel_kepler.exporting"
JOULES = "kepler.node.cpu.joules"
FAILED = "otel_kepler.agent.exporter.failed.batches"
INITIAL = 0.1  # retry_on_failure.initial_interval in these tests
RECOVERED = re.compile(r"export recovered after \d+ s \((\d+) failed attempts\)$")

Sink = OtlpHttpSink | OtlpGrpcSink


@dataclass
class Agent:
    """A started service, the tree whose energy it reads, and its one push exporter."""

    service: Service
    tree: RaplTree
    sink: Sink
    exporter: str  # otlphttp or otlp

    @property
    def worker(self) -> ExporterWorker:
        return self.service.workers[self.exporter]

    def tick(self, joules: float = 10.0) -> None:
        self.tree.advance("intel-rapl:0", joules)
        self.service.tick()

    @property
    def where(self) -> str:
        """How the exporter's log lines name the backend."""
        if isinstance(self.sink, OtlpHttpSink):
            return self.sink.metrics_url
        return self.sink.endpoint


def exporter_config(sink: Sink, timeout: str = "2s") -> tuple[str, str]:
    retry = f"retry_on_failure: {{initial_interval: {INITIAL}s, max_interval: 2s}}"
    if isinstance(sink, OtlpHttpSink):
        return "otlphttp", (
            f"otlphttp: {{metrics_endpoint: '{sink.metrics_url}', timeout: {timeout}, {retry}}}"
        )
    return "otlp", (
        f"otlp: {{endpoint: '{sink.endpoint}', tls: {{insecure: true}}, timeout: {timeout}, "
        f"{retry}}}"
    )


def start_agent(
    tmp_path: Path, sink: Sink, *, processes: bool = False, timeout: str = "2s"
) -> Agent:
    tree = RaplTree(tmp_path / "sys")
    tree.add_socket()
    name, exporter = exporter_config(sink, timeout)
    receivers = "[rapl, procfs]" if processes else "[rapl]"
    levels = "[node, process]" if processes else "[node]"
    text = f"""
host: {{sysfs: {tree.sysfs}, node_name: n1}}
receivers: {{rapl: {{max_watts: 1.0e+12}}, procfs: {{}}}}
processors: {{attribution: {{levels: {levels}, state_dir: "{tmp_path}"}}}}
exporters:
  {exporter}
service:
  interval: 1s
  pipelines:
    metrics: {{receivers: {receivers}, processors: [attribution], exporters: [{name}]}}
"""
    service = Service(parse(text, default_registry()))
    service.start()
    return Agent(service, tree, sink, name)


@pytest.fixture(params=["http", "grpc"])
def sink(request: pytest.FixtureRequest) -> Iterator[Sink]:
    with OtlpHttpSink() if request.param == "http" else OtlpGrpcSink() as peer:
        yield peer


@pytest.fixture
def agent(tmp_path: Path, sink: Sink) -> Iterator[Agent]:
    started = start_agent(tmp_path, sink)
    try:
        started.service.tick()  # primes the energy counters; delivered at once
        sink.wait_for_requests(1)
        yield started
    finally:
        started.service.shutdown()


def exporting_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the exporter logged at the agent's default level (info)."""
    return [
        r.getMessage() for r in caplog.records if r.name == EXPORTING and r.levelno >= logging.INFO
    ]


def wait_until(ready: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def wait_recovered(caplog: pytest.LogCaptureFixture) -> None:
    """The worker logs its recovery just after the backend recorded the accepted call."""
    wait_until(lambda: any(RECOVERED.search(line) for line in exporting_lines(caplog)))


def last_value(sink: Sink, name: str, **attributes: str) -> float:
    points = [p for p in sink.metric_points(name) if attributes.items() <= p.attributes.items()]
    assert points, f"no {name}{attributes} arrived"
    return float(points[-1].value)


def gaps(calls: list[ExportCall]) -> list[float]:
    return [b.received_at - a.received_at for a, b in zip(calls, calls[1:], strict=False)]


# -- permanent refusals ------------------------------------------------------------------


PERMANENT: dict[str, tuple[Any, str]] = {
    "http": (401, "HTTP 401 from {where}"),
    "grpc": (grpc.StatusCode.INVALID_ARGUMENT, "gRPC INVALID_ARGUMENT from {where}: bad data"),
}


def test_a_permanent_refusal_drops_the_batch_once_counted_and_logged(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    """401 / INVALID_ARGUMENT: no retry, one failed batch, one line; the next batch's
    cumulative totals carry the energy of the dropped one."""
    kind = "http" if isinstance(agent.sink, OtlpHttpSink) else "grpc"
    status, text = PERMANENT[kind]
    agent.sink.respond_sequence(Answer.error(status, message="bad data"))
    with caplog.at_level(logging.DEBUG, logger=EXPORTING):
        agent.tick(10.0)
        wait_until(lambda: agent.worker.failed == 1)
        time.sleep(4 * INITIAL * 1.5)  # a retry, if there were one, would come in this time
        agent.tick(10.0)
        agent.sink.wait_for_requests(2)
        wait_recovered(caplog)
    outcomes = [c.outcome for c in agent.sink.calls]
    assert outcomes == ["ok", "error", "ok"]  # the refused batch was sent exactly once
    assert agent.worker.failed == 1
    assert last_value(agent.sink, FAILED, exporter=agent.exporter) == 1
    assert last_value(agent.sink, JOULES, zone="package") == pytest.approx(20.0, rel=1e-4)
    lines = exporting_lines(caplog)
    assert lines[0] == (
        f"exporter {agent.exporter}: export failing (dropping the batch): "
        + text.format(where=agent.where)
    )
    assert len(lines) == 2 and RECOVERED.search(lines[1]), lines
    assert RECOVERED.search(lines[1]).group(1) == "1"  # type: ignore[union-attr]


# -- retryable failures ------------------------------------------------------------------


RETRYABLE = {
    "http": [Answer.error(500), Answer.error(503), Answer.error(500)],
    "grpc": [Answer.error(grpc.StatusCode.UNAVAILABLE)] * 3,
}
FIRST_REASON = {"http": "HTTP 500 from {where}", "grpc": "gRPC UNAVAILABLE from {where}: m"}


def test_server_errors_are_retried_with_backoff_then_delivered(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    """500/503 and UNAVAILABLE: retried with growing waits; the batch then arrives; one
    line when failing starts, one when it recovers; a batch that got through is not failed."""
    kind = "http" if isinstance(agent.sink, OtlpHttpSink) else "grpc"
    answers = [Answer.error(a.status, message="m") for a in RETRYABLE[kind]]
    agent.sink.respond_sequence(*answers)
    with caplog.at_level(logging.DEBUG, logger=EXPORTING):
        agent.tick(10.0)
        agent.sink.wait_for_requests(2, timeout=20)
        agent.tick(10.0)
        agent.sink.wait_for_requests(3)
        wait_recovered(caplog)
    calls = agent.sink.calls
    assert [c.outcome for c in calls] == ["ok", "error", "error", "error", "ok", "ok"]
    # Exponential backoff with 50% jitter: attempt n waits at least 0.5 * 0.1 * 1.5**n.
    waits = gaps(calls[1:5])
    for n, wait in enumerate(waits):
        assert wait >= 0.5 * INITIAL * 1.5**n, waits
    assert calls[4].request == calls[1].request  # the same batch, retried
    totals = [
        p.value for p in agent.sink.metric_points(JOULES) if p.attributes["zone"] == "package"
    ]
    assert totals == pytest.approx([10.0, 20.0], rel=1e-4)
    assert last_value(agent.sink, FAILED, exporter=agent.exporter) == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"exporter {agent.exporter}: export failing (retrying): "
        + FIRST_REASON[kind].format(where=agent.where)
    ]
    recovered = [line for line in exporting_lines(caplog) if RECOVERED.search(line)]
    assert len(recovered) == 1
    assert RECOVERED.search(recovered[0]).group(1) == "3"  # type: ignore[union-attr]


def test_a_throttle_is_waited_out_as_long_as_the_backend_asks(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    """HTTP 429 with Retry-After: 2 and gRPC RESOURCE_EXHAUSTED with RetryInfo 2 s, while
    the service ticks every 0.2 s: the next request of any batch comes no sooner (the
    backoff alone would retry after 0.1 s, and each tick brings a newer batch); then the
    newest totals arrive."""
    if isinstance(agent.sink, OtlpHttpSink):
        throttle = Answer.error(429, retry_after=2)
        reason = f"HTTP 429 from {agent.where}"
    else:
        throttle = Answer.error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=2, message="slow")
        reason = f"gRPC RESOURCE_EXHAUSTED from {agent.where}: slow"
    agent.sink.respond_sequence(throttle)
    ticks = 0
    with caplog.at_level(logging.DEBUG, logger=EXPORTING):
        began = time.monotonic()
        while time.monotonic() - began < 3.0:
            agent.tick(10.0)
            ticks += 1
            time.sleep(0.2)
        wait_until(lambda: last_value(agent.sink, JOULES, zone="package") >= 10.0 * ticks - 1e-3)
        wait_recovered(caplog)
    calls = agent.sink.calls
    assert [c.outcome for c in calls[:3]] == ["ok", "error", "ok"]
    assert calls[2].received_at - calls[1].received_at >= 2.0
    assert last_value(agent.sink, JOULES, zone="package") == pytest.approx(10.0 * ticks, rel=1e-4)
    lines = exporting_lines(caplog)
    assert lines[0] == f"exporter {agent.exporter}: export failing (retrying): {reason}"
    assert len(lines) == 2 and RECOVERED.search(lines[1]), lines


def attempt_frames() -> list[str]:
    """Frames of the exporters' export calls still held by a traceback somewhere."""
    names = {"export", "_send", "_timed_export"}
    held = []
    for obj in gc.get_objects():
        if isinstance(obj, types.TracebackType):
            tb: types.TracebackType | None = obj
            while tb is not None:
                if tb.tb_frame.f_code.co_name in names:
                    held.append(tb.tb_frame.f_code.co_name)
                tb = tb.tb_next
    return held


def test_a_failed_attempt_is_not_held_while_the_worker_waits(agent: Agent) -> None:
    """While the worker waits out a throttle (3 s), nothing of the failed attempt is kept:
    its exception's traceback held the export's frames, with the encoded request
    (megabytes at process level), for the whole wait; with a dead backend the agent's
    resident memory swung by up to 90 MiB with it."""
    if isinstance(agent.sink, OtlpHttpSink):
        throttle = Answer.error(429, retry_after=3)
    else:
        throttle = Answer.error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=3, message="slow")
    agent.sink.respond_sequence(throttle)
    agent.tick(10.0)
    wait_until(lambda: len(agent.sink.calls) == 2)  # refused
    time.sleep(0.5)  # the worker waits out the throttle, 2.5 s more
    waiting = agent.worker._busy and len(agent.sink.calls) == 2
    held = attempt_frames()
    agent.sink.wait_for_requests(2)  # accepted: the first and the retried one
    assert waiting
    assert held == []
    assert [c.outcome for c in agent.sink.calls] == ["ok", "error", "ok"]


def test_a_hung_backend_times_out_and_is_retried_while_ticks_go_on(
    tmp_path: Path, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """The first answer never comes: the request times out after the exporter's timeout
    (1 s) and is retried; meanwhile the service keeps ticking, each tick taking far less
    than the hang (its own tick-duration gauge), and the newest totals arrive."""
    agent = start_agent(tmp_path, sink, timeout="1s")
    try:
        agent.service.tick()
        sink.wait_for_requests(1)
        sink.respond_sequence(Answer.hang(30.0))
        with caplog.at_level(logging.DEBUG, logger=EXPORTING):
            began = time.monotonic()
            ticks = 0
            while time.monotonic() - began < 2.0:  # ticks while the first request hangs
                agent.tick(10.0)
                ticks += 1
                time.sleep(0.1)
            sink.wait_for_requests(2, timeout=20)
            wait_recovered(caplog)
    finally:
        agent.service.shutdown()
    calls = sink.calls
    assert calls[1].outcome == "hang"
    # Waited for the 1 s timeout. The times are the sink's receipts: the hung request's was
    # taken when its handler ran, which a busy node may delay by a scheduling slice after
    # the client sent it, so allow one 100 ms slice.
    assert calls[2].received_at - calls[1].received_at >= 0.9
    # The newest batch superseded the hung one: the last totals are all the energy.
    assert last_value(sink, JOULES, zone="package") == pytest.approx(10.0 * ticks, rel=1e-4)
    durations = [p.value for p in sink.metric_points("otel_kepler.agent.tick.duration")]
    assert max(durations) < 1.0  # no tick waited for the hung request
    assert ticks >= 5
    expected = (
        f"no answer from {agent.where} within 1 s"
        if isinstance(sink, OtlpHttpSink)
        else f"gRPC DEADLINE_EXCEEDED from {agent.where}: Deadline Exceeded"
    )
    lines = exporting_lines(caplog)
    assert lines[0] == f"exporter {agent.exporter}: export failing (retrying): {expected}"
    assert sum(bool(RECOVERED.search(line)) for line in lines) == 1


def test_a_connection_closed_without_an_answer_is_retried(
    tmp_path: Path, otlp_http_sink: OtlpHttpSink, caplog: pytest.LogCaptureFixture
) -> None:
    """The backend reads the request and closes the connection: retried, then delivered."""
    agent = start_agent(tmp_path, otlp_http_sink)
    try:
        agent.service.tick()
        otlp_http_sink.wait_for_requests(1)
        otlp_http_sink.respond_sequence(Answer.close(), Answer.close())
        with caplog.at_level(logging.DEBUG, logger=EXPORTING):
            agent.tick(10.0)
            otlp_http_sink.wait_for_requests(2)
            wait_recovered(caplog)
    finally:
        agent.service.shutdown()
    assert [c.outcome for c in otlp_http_sink.calls] == ["ok", "close", "close", "ok"]
    assert last_value(otlp_http_sink, JOULES, zone="package") == pytest.approx(10.0, rel=1e-4)
    lines = exporting_lines(caplog)
    assert lines[0] == (
        "exporter otlphttp: export failing (retrying): "
        f"{agent.where}: the connection was closed without an answer"
    )
    assert len(lines) == 2 and RECOVERED.search(lines[1]).group(1) == "2"  # type: ignore[union-attr]


# -- size limits -------------------------------------------------------------------------


def resource_key(rm: object) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(attributes_dict(rm.resource.attributes).items()))  # type: ignore[attr-defined]


def tick_time(request: object) -> int:
    """The time of a request's data points (one batch, one tick, one time)."""
    metric = request.resource_metrics[0].scope_metrics[0].metrics[0]  # type: ignore[attr-defined]
    return int(getattr(metric, metric.WhichOneof("data")).data_points[0].time_unix_nano)


def test_a_batch_too_large_is_split_and_every_resource_arrives_once(
    tmp_path: Path, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """HTTP 413 / gRPC RESOURCE_EXHAUSTED without RetryInfo, for any request of more than
    a quarter of this machine's processes: the batch is halved until each part fits; the
    accepted parts hold every resource of the refused batch exactly once, byte for byte."""
    # A timeout far above what a request takes: a request timed out after the backend
    # took it would be sent again (at-least-once), which is not what this test counts.
    agent = start_agent(tmp_path, sink, processes=True, timeout="60s")
    try:
        agent.service.tick()
        agent.tick(10.0)
        sink.wait_for_requests(2, timeout=60)
        # A busy node's tick may go out in several requests (gRPC's 4 MiB limit): let the
        # last one arrive before the sink forgets, so the next call is the next tick's.
        wait_until(lambda: not agent.worker._queue and not agent.worker._busy, timeout=60)
        time.sleep(0.3)
        first = sink.requests[-1]
        limit = max(2, len(first.resource_metrics) // 4)
        sink.clear()
        sink.respond_sequence(then=Answer.too_large(limit))
        with caplog.at_level(logging.DEBUG, logger=EXPORTING):
            agent.tick(10.0)
            tick = tick_time(sink.wait_for_calls(1)[0].request)

            def this_tick(outcome: str) -> list[Any]:
                """This tick's resources in calls with that outcome (an earlier tick's
                requests may still be arriving)."""
                return [
                    rm
                    for c in sink.calls
                    if c.outcome == outcome and tick_time(c.request) == tick
                    for rm in c.request.resource_metrics
                ]

            def complete() -> bool:
                refused = {resource_key(rm) for rm in this_tick("error")}
                return refused <= {resource_key(rm) for rm in this_tick("ok")}

            wait_until(complete, timeout=60)
            time.sleep(0.5)  # nothing more comes
    finally:
        agent.service.shutdown()
    calls = [c for c in sink.calls if tick_time(c.request) == tick]
    # What was refused (the whole batch, or with gRPC on a node whose batch exceeds the
    # transport's own 4 MiB limit, both its halves) is every resource of the tick.
    sent = {resource_key(rm): rm.SerializeToString() for rm in this_tick("error")}
    arrived = this_tick("ok")
    keys = [resource_key(rm) for rm in arrived]
    assert len(sent) > 8
    assert len(keys) == len(set(keys))  # each exactly once
    # Every refused resource arrived, byte for byte. (A tick bigger than gRPC's 4 MiB goes
    # out in several requests; those after a refused one were never tried before the
    # split, so more may arrive than were refused.)
    delivered = {resource_key(rm): rm.SerializeToString() for rm in arrived}
    assert {key: delivered.get(key) for key in sent} == sent
    accepted = [len(c.request.resource_metrics) for c in calls if c.outcome == "ok"]
    assert max(accepted) <= limit
    # Halving: each refused request became two (a half of only ended workloads already
    # delivered sends nothing), each accepted one is a leaf.
    assert 1 <= sum(c.outcome == "error" for c in calls) < len(accepted)
    assert len(accepted) >= 4
    assert agent.worker.failed == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_after_a_size_refusal_later_ticks_are_cut_before_they_are_sent(
    tmp_path: Path, sink: Sink
) -> None:
    """Once the backend refused a size, the exporter cuts later requests below it: a later
    tick arrives whole, in several requests, with none refused."""
    agent = start_agent(tmp_path, sink, processes=True, timeout="60s")
    try:
        agent.service.tick()
        agent.tick(10.0)
        sink.wait_for_requests(2, timeout=60)
        limit = max(2, len(sink.requests[-1].resource_metrics) // 4)
        sink.respond_sequence(then=Answer.too_large(limit))
        agent.tick(10.0)
        wait_until(lambda: any(c.outcome == "error" for c in sink.calls), timeout=60)
        idle = lambda: not agent.worker._queue and not agent.worker._busy  # noqa: E731
        wait_until(lambda: agent.worker.sent_points > 0 and idle(), timeout=60)
        # The backend counts resources, the exporter bytes: a refusal or two more may come
        # while the learned size settles; after that a tick goes out cut, none refused.
        for _ in range(4):
            sink.clear()
            agent.tick(10.0)
            sink.wait_for_calls(1, timeout=60)
            wait_until(idle, timeout=60)
            time.sleep(0.5)
            # The newest tick's calls: a part of the tick before may still have been on its
            # way when the sink was cleared.
            tick = max(tick_time(c.request) for c in sink.calls)
            if all(c.outcome == "ok" for c in sink.calls):
                break
    finally:
        agent.service.shutdown()
    calls = [c for c in sink.calls if tick_time(c.request) == tick]
    assert calls and all(c.outcome == "ok" for c in calls), [c.outcome for c in calls]
    assert len(calls) >= 2
    assert max(len(c.request.resource_metrics) for c in calls) <= limit


# -- shutdown ----------------------------------------------------------------------------


def test_shutdown_keeps_its_deadline_with_a_hung_backend(
    tmp_path: Path, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    """The backend hangs with a 2 s exporter timeout; shutdown gets a 3 s deadline: the
    batch left in the queue is tried with what remains of the deadline, not a full timeout,
    and counted as not sent."""
    agent = start_agent(tmp_path, sink, timeout="2s")
    worker = agent.worker
    try:
        agent.service.tick()
        sink.wait_for_requests(1)
        sink.respond_hang(60.0)
        agent.tick(10.0)
        sink.wait_for_calls(2)
        time.sleep(0.2)
        agent.tick(10.0)  # waits in the queue behind the hung request
        with caplog.at_level(logging.DEBUG, logger=EXPORTING):
            began = time.monotonic()
            deadline = began + 3.0
            worker.shutdown(deadline)
            ended = time.monotonic()
    finally:
        agent.service.shutdown()
    assert ended < deadline + 0.5, f"shutdown took {ended - began:.2f} s of a 3 s deadline"
    assert worker.dropped == 1
    assert worker.failed == 1  # the hung request, timed out
    assert f"exporter {agent.exporter}: 1 batches not sent at shutdown" in exporting_lines(caplog)


def test_a_stopping_service_does_not_wait_for_a_throttle(
    tmp_path: Path, otlp_http_sink: OtlpHttpSink
) -> None:
    """Retry-After: 600 while the service stops: shutdown ends within its deadline."""
    agent = start_agent(tmp_path, otlp_http_sink)
    try:
        agent.service.tick()
        otlp_http_sink.wait_for_requests(1)
        otlp_http_sink.respond_error(429, retry_after=600)
        agent.tick(10.0)
        otlp_http_sink.wait_for_calls(2)
        time.sleep(0.2)
    finally:
        began = time.monotonic()
        stopper = threading.Thread(target=agent.service.shutdown)
        stopper.start()
        stopper.join(timeout=10)
    assert not stopper.is_alive()
    assert time.monotonic() - began < 5.0
    assert agent.worker.failed == 1


# -- the agent as a process: outages, SIGTERM, logging, the queue's bound ----------------

WORKLOAD = (
    "import select, sys\n"
    "print('ready', flush=True)\n"
    "while not select.select([sys.stdin], [], [], 0)[0]:\n"
    "    for _ in range(20000): pass\n"
)
LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"(otel_kepler[\w.]*): (.*)$"
)


@dataclass
class Pod:
    """A real process in a kubepods-style cgroup v2 directory; ends when told."""

    proc: subprocess.Popen[str]
    pod: str
    container: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def end(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def pod() -> Iterator[Pod]:
    need_root()
    mount = cgroup_mount("cgroup2", "")
    assert mount is not None, "no cgroup v2 hierarchy mounted"
    pod_uid = str(uuid.uuid4())
    container = uuid.uuid4().hex + uuid.uuid4().hex
    top = mount / f"otel-kepler-faults-{os.getpid()}"
    ctr_dir = (
        top
        / "kubepods.slice/kubepods-burstable.slice"
        / f"kubepods-burstable-pod{pod_uid.replace('-', '_')}.slice"
        / f"cri-containerd-{container}.scope"
    )
    ctr_dir.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKLOAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        (ctr_dir / "cgroup.procs").write_text(str(proc.pid))
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield Pod(proc, pod_uid, container)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        remove_cgroups(top)


@pytest.fixture
def agent_process() -> Iterator[list[e2e.Agent]]:
    """Agents a test starts; killed if the test did not stop them."""
    started: list[e2e.Agent] = []
    yield started
    for agent in started:
        agent.kill()


def run_agent(started: list[e2e.Agent], tmp_path: Path, config: str) -> e2e.Agent:
    agent = e2e.Agent(e2e.write_config(tmp_path, config)).start()
    started.append(agent)
    return agent


def log_lines(stderr: str) -> list[tuple[str, str, str]]:
    """(level, logger, message) of every line; a line in another format fails the test."""
    out = []
    for line in stderr.splitlines():
        match = LOG_LINE.match(line)
        assert match, f"a line not from the agent's logging: {line!r}"
        out.append((match.group(1), match.group(2), match.group(3)))
    return out


def points_of(sink: Sink, name: str, **attributes: str) -> list[float]:
    return [
        float(p.value)
        for p in sink.metric_points(name)
        if attributes.items() <= {k: str(v) for k, v in p.attributes.items()}.items()
    ]


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
def test_an_ended_workload_reaches_victoria_metrics_after_an_outage(
    outage: str,
    tmp_path: Path,
    pod: Pod,
    victoria_metrics: VictoriaMetrics,
    otlp_grpc_sink: OtlpGrpcSink,
    agent_process: list[e2e.Agent],
) -> None:
    """VictoriaMetrics is down for 10 s (stopped: connections refused; or frozen: requests
    time out), and a pod's only process ends meanwhile: once it is back, the ended
    process's and container's terminated series hold their final totals (a gRPC sink, up
    all along, is the truth: the last running total, carried on)."""
    vm = victoria_metrics
    agent = run_agent(
        agent_process,
        tmp_path,
        f"""
host: {{sysfs: {tmp_path / "sys"}, node_name: outage-node}}
receivers: {{rapl: {{}}, procfs: {{}}}}
processors: {{attribution: {{levels: [node, process, container, pod], state_dir: "{tmp_path}"}}}}
exporters:
  otlphttp:
    metrics_endpoint: {vm.otlp_metrics_url}
    timeout: 1s
    retry_on_failure: {{initial_interval: 200ms, max_interval: 1s}}
  otlp: {{endpoint: "{otlp_grpc_sink.endpoint}", tls: {{insecure: true}}}}
service:
  interval: 500ms
  pipelines:
    metrics: {{receivers: [rapl, procfs], processors: [attribution], exporters: [otlphttp, otlp]}}
""",
    )
    running = f'pid="{pod.pid}",zone="package",state="running"'
    with e2e.PoweredTree(tmp_path / "sys"):
        vm.wait_for(f"kepler_process_cpu_joules_total{{{running}}} > 0", timeout=60)
        began = time.monotonic()
        if outage == "stopped":  # connections refused
            vm.halt()
        else:  # connections accepted by the kernel, never answered: requests time out
            assert vm.proc is not None
            vm.proc.send_signal(signal.SIGSTOP)
        time.sleep(2.0)
        pod.end()
        time.sleep(max(0.0, began + 10.0 - time.monotonic()))
        if outage == "stopped":
            vm.restart()
        else:
            assert vm.proc is not None
            vm.proc.send_signal(signal.SIGCONT)
        ended = f'pid="{pod.pid}",zone="package",state="terminated"'
        found = vm.wait_for(f"kepler_process_cpu_joules_total{{{ended}}}", timeout=30)
        ctr = f'container_id="{pod.container}",zone="package",state="terminated"'
        found_ctr = vm.wait_for(f"kepler_container_cpu_joules_total{{{ctr}}}", timeout=30)
        seconds, code, _, err = agent.stop()
    assert code == 0, err
    pid = str(pod.pid)
    last_running = points_of(
        otlp_grpc_sink, "kepler.process.cpu.joules", pid=pid, zone="package", state="running"
    )[-1]
    final = points_of(
        otlp_grpc_sink, "kepler.process.cpu.joules", pid=pid, zone="package", state="terminated"
    )
    assert last_running > 0.5  # it burnt a core for seconds at 40 W
    assert final and final[0] == pytest.approx(last_running, rel=1e-9)
    assert float(found[0]["value"][1]) == pytest.approx(last_running, rel=1e-6)
    ctr_running = points_of(
        otlp_grpc_sink,
        "kepler.container.cpu.joules",
        container_id=pod.container,
        zone="package",
        state="running",
    )[-1]
    assert float(found_ctr[0]["value"][1]) == pytest.approx(ctr_running, rel=1e-6)
    assert found_ctr[0]["metric"]["pod_id"] == pod.pod
    assert "export recovered" in err


def test_sigterm_while_the_backend_hangs_sends_the_newest_totals_when_it_recovers(
    tmp_path: Path, otlp_http_sink: OtlpHttpSink, agent_process: list[e2e.Agent]
) -> None:
    """SIGTERM while every request hangs; the backend answers again 0.5 s later: the agent
    exits within 5 s and its newest batch, with the latest totals, arrived."""
    otlp_http_sink.respond_hang(60.0)
    agent = run_agent(agent_process, tmp_path, hung_config(tmp_path, otlp_http_sink))
    with e2e.PoweredTree(tmp_path / "sys"):
        otlp_http_sink.wait_for_calls(1, timeout=60)
        time.sleep(2.0)
        threading.Timer(0.5, otlp_http_sink.respond_ok).start()
        signalled = time.time()
        seconds, code, _, err = agent.stop()
    assert code == 0, err
    assert seconds < 5.0
    first = otlp_http_sink.calls[0].request  # hung, but recorded: the first tick's time
    metric = first.resource_metrics[0].scope_metrics[0].metrics[0]
    t0 = getattr(metric, metric.WhichOneof("data")).data_points[0].time_unix_nano
    accepted = otlp_http_sink.requests
    assert accepted, [c.outcome for c in otlp_http_sink.calls]
    newest = accepted[-1]
    package = [p for p in otlp_http_sink.metric_points(JOULES) if p.attributes["zone"] == "package"]
    points = [
        dp
        for rm in newest.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == JOULES
        for dp in m.sum.data_points
        if attributes_dict(dp.attributes)["zone"] == "package"
    ]
    t_last = points[0].time_unix_nano
    assert t_last / 1e9 > signalled - 1.0  # a tick of the last interval (200 ms) or so
    span = (t_last - t0) / 1e9
    assert points[0].as_double == pytest.approx(e2e.PACKAGE_WATTS * span, rel=0.1)
    assert package[-1].value == points[0].as_double
    lines = log_lines(err)
    assert ("WARNING", EXPORTING, "exporter otlphttp: 1 batches not sent at shutdown") in lines


def hung_config(tmp_path: Path, sink: Sink, port: int = 0) -> str:
    pull = f'prometheus: {{endpoint: "127.0.0.1:{port}"}}' if port else ""
    if isinstance(sink, OtlpHttpSink):
        name, where = "otlphttp", f"metrics_endpoint: {sink.metrics_url}"
    else:
        name, where = "otlp", f'endpoint: "{sink.endpoint}", tls: {{insecure: true}}'
    return f"""
host: {{sysfs: {tmp_path / "sys"}}}
receivers: {{rapl: {{}}}}
processors: {{attribution: {{state_dir: "{tmp_path}"}}}}
exporters:
  {name}: {{{where}, timeout: 30s, sending_queue: {{queue_size: 2}}}}
  {pull}
service:
  interval: 200ms
  pipelines:
    metrics:
      receivers: [rapl]
      processors: [attribution]
      exporters: [{name}{", prometheus" if port else ""}]
"""


def test_sigterm_while_the_backend_hangs_for_good_counts_what_was_not_sent(
    tmp_path: Path, sink: Sink, agent_process: list[e2e.Agent]
) -> None:
    """The backend never answers: the agent still exits within 5 s, and says how many
    batches it could not send (the hung one and the full queue of 2), beside the counter
    of dropped ones."""
    sink.respond_hang(60.0)
    name = "otlphttp" if isinstance(sink, OtlpHttpSink) else "otlp"
    port = free_port()
    agent = run_agent(agent_process, tmp_path, hung_config(tmp_path, sink, port))
    with e2e.PoweredTree(tmp_path / "sys"):
        sink.wait_for_calls(1, timeout=60)
        time.sleep(2.0)
        _, body = http_get(f"http://127.0.0.1:{port}/metrics")
        seconds, code, _, err = agent.stop()
    assert code == 0, err
    assert seconds < 5.0
    dropped = e2e.sample(body, "otel_kepler_agent_exporter_dropped_batches_total", exporter=name)
    assert dropped >= 5  # 2 s of 200 ms ticks behind one hung request and a queue of 2
    assert len(sink.calls) == 1  # one request, held to the end
    lines = log_lines(err)
    assert ("WARNING", EXPORTING, f"exporter {name}: 3 batches not sent at shutdown") in lines
    assert not [line for line in lines if line[0] == "ERROR"]  # nothing failed: it hung


def test_a_dead_backend_is_logged_once_and_its_recovery_once(
    tmp_path: Path, agent_process: list[e2e.Agent]
) -> None:
    """Both OTLP backends refuse connections for 40 ticks of 200 ms, then come up where
    the agent points: per exporter one ERROR line when failing starts and one line when it
    recovers; nothing else, and nothing from the OpenTelemetry SDK, gRPC or urllib3."""
    http_port, grpc_port = free_port(), free_port()
    agent = run_agent(
        agent_process,
        tmp_path,
        f"""
host: {{sysfs: {tmp_path / "sys"}}}
receivers: {{rapl: {{}}}}
processors: {{attribution: {{state_dir: "{tmp_path}"}}}}
exporters:
  otlphttp: {{metrics_endpoint: "http://127.0.0.1:{http_port}/v1/metrics", timeout: 1s}}
  otlp: {{endpoint: "127.0.0.1:{grpc_port}", tls: {{insecure: true}}, timeout: 1s}}
service:
  interval: 200ms
  pipelines:
    metrics: {{receivers: [rapl], processors: [attribution], exporters: [otlphttp, otlp]}}
""",
    )
    with e2e.PoweredTree(tmp_path / "sys"):
        time.sleep(40 * 0.2)
        with OtlpHttpSink(port=http_port) as http_sink, OtlpGrpcSink(port=grpc_port) as grpc_sink:
            http_sink.wait_for_requests(3, timeout=30)
            grpc_sink.wait_for_requests(3, timeout=60)
            seconds, code, _, err = agent.stop()
    assert code == 0, err
    lines = log_lines(err)
    # log_lines() took only the agent's own loggers (otel_kepler.*): none from gRPC, urllib3
    # or the OpenTelemetry SDK; and no line from the exporters but these:
    errors = [message for level, _, message in lines if level == "ERROR"]
    assert len(errors) == 2, errors
    assert (
        f"exporter otlphttp: export failing (retrying): "
        f"http://127.0.0.1:{http_port}/v1/metrics: connection refused"
    ) in errors
    grpc_error = next(e for e in errors if e.startswith("exporter otlp:"))
    assert grpc_error.startswith(
        f"exporter otlp: export failing (retrying): gRPC UNAVAILABLE from 127.0.0.1:{grpc_port}"
    )
    exporting = [(level, message) for level, logger, message in lines if logger == EXPORTING]
    assert len(exporting) == 4, exporting  # failing and recovered, per exporter
    for name in ("otlphttp", "otlp"):
        recovered = [m for _, m in exporting if m.startswith(f"exporter {name}: export recovered")]
        assert len(recovered) == 1 and RECOVERED.search(recovered[0]), exporting
        # every tick's batch was tried once and superseded by the next: about 40 attempts
        assert int(RECOVERED.search(recovered[0]).group(1)) >= 20  # type: ignore[union-attr]


def test_the_queue_never_holds_more_than_queue_size_batches(
    tmp_path: Path,
    otlp_http_sink: OtlpHttpSink,
    otlp_grpc_sink: OtlpGrpcSink,
    agent_process: list[e2e.Agent],
) -> None:
    """Process level on, one backend hung with a queue of 3: the batch in flight, 3 waiting,
    and every other batch dropped: at tick k the dropped counter is exactly k - 2 - 3.

    A second pipeline sends each tick's node series (with the same agent counters) to a
    healthy backend, small enough never to fall behind, so the ticks can be counted."""
    otlp_http_sink.respond_hang(60.0)
    agent = run_agent(
        agent_process,
        tmp_path,
        f"""
host: {{sysfs: {tmp_path / "sys"}}}
receivers: {{rapl: {{}}, procfs: {{}}}}
processors:
  attribution: {{levels: [node, process, container, pod], state_dir: "{tmp_path}"}}
  attribution/node: {{state_dir: "{tmp_path}"}}
exporters:
  otlphttp:
    metrics_endpoint: {otlp_http_sink.metrics_url}
    timeout: 60s
    sending_queue: {{queue_size: 3}}
  otlp: {{endpoint: "{otlp_grpc_sink.endpoint}", tls: {{insecure: true}}}}
service:
  interval: 300ms
  pipelines:
    metrics: {{receivers: [rapl, procfs], processors: [attribution], exporters: [otlphttp]}}
    metrics/count: {{receivers: [rapl], processors: [attribution/node], exporters: [otlp]}}
""",
    )
    name = "otel_kepler.agent.exporter.dropped.batches"
    with e2e.PoweredTree(tmp_path / "sys"):
        wait_until(lambda: len(points_of(otlp_grpc_sink, name, exporter="otlphttp")) >= 12, 60)
        seconds, code, _, err = agent.stop()
    assert code == 0, err
    dropped = points_of(otlp_grpc_sink, name, exporter="otlphttp")
    failed = points_of(
        otlp_grpc_sink, "otel_kepler.agent.exporter.failed.batches", exporter="otlphttp"
    )
    assert len(dropped) == len(failed) == len(otlp_grpc_sink.requests) >= 12
    assert set(failed) == {0.0}
    for k, d in enumerate(dropped, start=1):
        # The stats of tick k count the k - 1 batches submitted before it.
        assert d == max(0, (k - 1) - 1 - 3), (k, dropped)
    assert len(otlp_http_sink.calls) == 1


def test_a_restarting_grpc_backend_leaves_only_the_agents_lines_in_the_log(
    tmp_path: Path, agent_process: list[e2e.Agent]
) -> None:
    """The gRPC backend restarts three times (each time closing its connections with a
    GOAWAY): data arrives after each restart, every failing period is one ERROR line
    closed by one recovery line, and gRPC's own core writes nothing to the log."""
    port = free_port()
    sink = OtlpGrpcSink(port=port).start()
    try:
        agent = run_agent(
            agent_process,
            tmp_path,
            f"""
host: {{sysfs: {tmp_path / "sys"}}}
receivers: {{rapl: {{}}}}
processors: {{attribution: {{state_dir: "{tmp_path}"}}}}
exporters:
  otlp: {{endpoint: "127.0.0.1:{port}", tls: {{insecure: true}}, timeout: 1s}}
service:
  interval: 200ms
  pipelines:
    metrics: {{receivers: [rapl], processors: [attribution], exporters: [otlp]}}
""",
        )
        with e2e.PoweredTree(tmp_path / "sys"):
            sink.wait_for_requests(3, timeout=60)
            for _ in range(3):
                sink.stop()
                time.sleep(0.5)
                sink = OtlpGrpcSink(port=port).start()
                sink.wait_for_requests(3, timeout=30)
            seconds, code, _, err = agent.stop()
    finally:
        sink.stop()
    assert code == 0, err
    lines = log_lines(err)  # fails on any line not written by the agent's logging
    failing = [m for level, _, m in lines if level == "ERROR"]
    recovered = [m for _, _, m in lines if RECOVERED.search(m)]
    assert 1 <= len(failing) == len(recovered) <= 3, lines
    assert all(m.startswith("exporter otlp: export failing (retrying): gRPC ") for m in failing)

"""The parts bench_agent.py runs beside the agent: a sink, a churner, CPU and memory readers.

- ``OtlpSink``: a small HTTP server on 127.0.0.1 that accepts ``POST /v1/metrics``, counts
  requests and bytes as sent (gzip) and as decoded, and answers an empty 200.
- ``Churner``: a helper interpreter that starts and ends processes at a fixed rate.
- ``cpu_seconds`` (``/proc/PID/stat`` utime + stime: every thread, ended ones included, in
  clock ticks) and ``run_seconds`` (the sum of ``/proc/PID/task/*/schedstat``: live threads
  only, in nanoseconds) for short intervals such as one scrape.
- ``memory``: VmRSS, VmHWM and RssAnon from ``/proc/PID/status``.
- ``start_child``: a subprocess that the kernel ends when this process dies.
"""

from __future__ import annotations

import ctypes
import gzip
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGTERM when the bench ends, however."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_child(argv: list[str], log: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session; it gets SIGTERM if this process dies."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
        start_new_session=True,
    )


def stop_child(child: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL to the process group after ``timeout``."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid``, ended threads included (1/CLK_TCK s)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run_seconds(pid: int) -> float:
    """Time on CPU of the live threads of ``pid`` (schedstat, nanoseconds)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


def memory(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM and RssAnon of ``pid`` in MiB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                out[key] = int(value.split()[0]) / 1024
    return out


def process_count() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def http_get(url: str, timeout: float = 30.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        body: bytes = answer.read()
        return body


class OtlpSink:
    """OTLP/HTTP receiver that keeps counts only: requests, wire bytes, decoded bytes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.posts = 0
        self.wire_bytes = 0
        self.raw_bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                gzipped = self.headers.get("Content-Encoding", "") == "gzip"
                raw = gzip.decompress(body) if gzipped else body
                with sink.lock:
                    sink.posts += 1
                    sink.wire_bytes += len(body)
                    sink.raw_bytes += len(raw)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def counts(self) -> tuple[int, int, int]:
        with self.lock:
            return self.posts, self.wire_bytes, self.raw_bytes

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


#: The churner's program: a child every 1/rate s, each ended ``life`` s later.
_CHURNER = r"""
import ctypes, os, signal, sys, time
prctl = ctypes.CDLL(None, use_errno=True).prctl
prctl(1, signal.SIGKILL)
rate, life = float(sys.argv[1]), float(sys.argv[2])
me = os.getpid()
live = []
started = 0
begin = time.monotonic()
try:
    while True:
        now = time.monotonic()
        while live and live[0][1] <= now:
            pid, _ = live.pop(0)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        due = begin + started / rate
        if now >= due:
            pid = os.fork()
            if pid == 0:
                prctl(1, signal.SIGKILL)
                if os.getppid() != me:
                    os._exit(0)
                while True:
                    signal.pause()
            live.append((pid, now + life))
            started += 1
            continue
        wake = min(due, live[0][1]) if live else due
        time.sleep(max(0.0, wake - time.monotonic()))
finally:
    for pid, _ in live:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
"""


class Churner:
    """``rate`` process starts and as many ends per second, each process living ``life`` s."""

    def __init__(self, rate: float, life: float) -> None:
        self.child = start_child([sys.executable, "-S", "-c", _CHURNER, str(rate), str(life)])

    def close(self) -> None:
        if self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.child.pid, signal.SIGKILL)
                self.child.wait()


def node_exporter_binary(repo: Path) -> str | None:
    """Debian's prometheus-node-exporter: unpacked by `make bench-deps`, else on PATH."""
    unpacked = repo / ".cache/peers/node-exporter/usr/bin/prometheus-node-exporter"
    if unpacked.exists():
        return str(unpacked)
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "prometheus-node-exporter"
        if candidate.exists():
            return str(candidate)
    return None

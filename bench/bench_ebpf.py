"""Cost of the ebpf receiver: per context switch in the kernel, and per tick in the agent.

    .venv/bin/python bench/bench_ebpf.py [--switches N] [--packets N] [SIZES...]   (root; see
    scripts/setup-ebpf.sh)

1. Per sched_switch. Two processes pinned to one CPU ping-pong a byte over two pipes:
   every round trip is two context switches, counted exactly from both processes'
   ``/proc/PID/status`` (voluntary + involuntary switches). The wall time per switch is
   measured without the program and with it attached, alternately, several times; the
   difference of the medians is what the program adds to a switch (tracepoint dispatch
   included). The kernel's own BPF statistics (``kernel.bpf_stats_enabled``, turned on
   only for that run) give the program's run time alone, per call.
2. Per packet. One process sends and receives UDP datagrams over loopback, without the
   receiver and with it (socket-buffer programs on the cgroup v2 root, softirq counter),
   alternately; the difference of the medians is what the I/O programs add to a
   datagram, and the BPF statistics give each program's own run time per call (one
   egress and one ingress call per datagram; softirqs as the kernel raises them).
3. Per tick. SIZES processes alive (bench/spawn.py sleepers, default 100, 1,000 and
   5,000), of which 50 run every tick (each works 1 ms every 100 ms): the CPU time
   (``time.process_time``) of the median ``collect()`` of the ebpf receiver and of the
   procfs receiver, on the same processes, after the service's ``settle_memory()``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from spawn import SleepingProcesses

from otel_kepler.component import HostSettings, Receiver
from otel_kepler.receivers.ebpf import EbpfConfig, EbpfReceiver
from otel_kepler.receivers.procfs import ProcfsReceiver
from otel_kepler.service import settle_memory

RUNNING = 50
TICKS = 15
TICK_INTERVAL_S = 0.2
ROUNDS = 9

# --------------------------------------------------------------------------- per switch


def switches(pid: int) -> int:
    """Context switches of ``pid`` so far (voluntary and involuntary)."""
    total = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def ping_pong(round_trips: int, cpu: int) -> tuple[float, int]:
    """Wall seconds and context switches of ``round_trips`` pipe round trips on ``cpu``."""
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    child = os.fork()
    if child == 0:
        try:
            os.close(to_child_w)
            os.close(to_parent_r)
            while os.read(to_child_r, 1):
                os.write(to_parent_w, b"x")
        finally:
            os._exit(0)
    os.close(to_child_r)
    os.close(to_parent_w)
    try:
        os.write(to_child_w, b"x")  # warm up: both sides have run once
        os.read(to_parent_r, 1)
        me = os.getpid()
        before = switches(me) + switches(child)
        began = time.perf_counter()
        for _ in range(round_trips):
            os.write(to_child_w, b"x")
            os.read(to_parent_r, 1)
        elapsed = time.perf_counter() - began
        counted = switches(me) + switches(child) - before
    finally:
        os.close(to_child_w)
        os.waitpid(child, 0)
        os.close(to_parent_r)
        os.sched_setaffinity(0, previous)
    return elapsed, counted


@contextmanager
def attached() -> Iterator[EbpfReceiver]:
    receiver = EbpfReceiver("ebpf", EbpfConfig(fallback="none"), HostSettings())
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()


def per_switch(round_trips: int) -> dict[str, float]:
    """ns per switch without and with the program, and the program's own ns per call."""
    cpu = min(os.sched_getaffinity(0))
    without: list[float] = []
    with_program: list[float] = []
    counted = 0
    ping_pong(round_trips // 10, cpu)  # warm caches and the CPU frequency
    for _ in range(ROUNDS):
        elapsed, n = ping_pong(round_trips, cpu)
        without.append(elapsed / n * 1e9)
        with attached():
            elapsed, n = ping_pong(round_trips, cpu)
        with_program.append(elapsed / n * 1e9)
        counted += n
    return {
        "switches": counted,
        "without": statistics.median(without),
        "with": statistics.median(with_program),
        "added": statistics.median(with_program) - statistics.median(without),
        "program": program_ns_per_call(round_trips, cpu),
    }


def program_ns_per_call(round_trips: int, cpu: int) -> float:
    """The switch program's average run time per call from the kernel's BPF statistics."""
    tool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    knob = "/proc/sys/kernel/bpf_stats_enabled"
    with open(knob, encoding="ascii") as file:
        was = file.read().strip()
    try:
        with open(knob, "w", encoding="ascii") as file:
            file.write("1")
        with attached():
            ping_pong(round_trips, cpu)
            shown = subprocess.run([tool, "-j", "prog", "show"], capture_output=True, check=True)
    finally:
        with open(knob, "w", encoding="ascii") as file:
            file.write(was)
    for prog in json.loads(shown.stdout):
        if prog.get("name") == "otelk_switch" and prog.get("run_cnt"):
            return float(prog["run_time_ns"]) / float(prog["run_cnt"])
    return float("nan")


# --------------------------------------------------------------------------- per packet

PACKET = 1000  # UDP payload bytes


def udp_loop(count: int) -> float:
    """Seconds per datagram sent and received over loopback by this process."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        address = receiver.getsockname()
        payload = b"x" * PACKET
        began = time.perf_counter()
        for _ in range(count):
            sender.sendto(payload, address)
            receiver.recv(2048)
        return (time.perf_counter() - began) / count
    finally:
        sender.close()
        receiver.close()


def io_programs_ns_per_call(count: int) -> dict[str, float]:
    """Run time per call of the softirq and socket-buffer programs (bpf_stats)."""
    tool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    knob = "/proc/sys/kernel/bpf_stats_enabled"
    with open(knob, encoding="ascii") as file:
        was = file.read().strip()
    try:
        with open(knob, "w", encoding="ascii") as file:
            file.write("1")
        with attached():
            udp_loop(count)
            shown = subprocess.run([tool, "-j", "prog", "show"], capture_output=True, check=True)
    finally:
        with open(knob, "w", encoding="ascii") as file:
            file.write(was)
    found = {}
    for prog in json.loads(shown.stdout):
        name = prog.get("name", "")
        if name in ("otelk_skb_in", "otelk_skb_out", "otelk_softirq") and prog.get("run_cnt"):
            found[name] = float(prog["run_time_ns"]) / float(prog["run_cnt"])
    return found


def per_packet(count: int) -> dict[str, float]:
    """ns per loopback datagram (send and receive) without and with the receiver."""
    without: list[float] = []
    with_programs: list[float] = []
    udp_loop(count // 10)
    for _ in range(ROUNDS):
        without.append(udp_loop(count) * 1e9)
        with attached():
            with_programs.append(udp_loop(count) * 1e9)
    result = {
        "without": statistics.median(without),
        "with": statistics.median(with_programs),
    }
    result["added"] = result["with"] - result["without"]
    result.update(io_programs_ns_per_call(count))
    return result


# --------------------------------------------------------------------------- per tick

#: 50 processes that each work 1 ms every 100 ms: all of them run in every tick.
_RUNNERS = r"""
import ctypes, os, signal, sys, time
prctl = ctypes.CDLL(None).prctl
children = []
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        while True:
            end = time.perf_counter() + 0.001
            while time.perf_counter() < end:
                pass
            time.sleep(0.099)
    children.append(pid)
print("ready", flush=True)
sys.stdin.read()
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)
"""


@contextmanager
def runners(count: int) -> Iterator[None]:
    helper = subprocess.Popen(
        [sys.executable, "-S", "-c", _RUNNERS, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert helper.stdout is not None and helper.stdin is not None
    assert helper.stdout.readline() == "ready\n"
    try:
        yield
    finally:
        helper.stdin.close()
        helper.wait()
        helper.stdout.close()


def tick_ms(receiver: Receiver) -> float:
    """Median CPU ms of a collect(), ticking every TICK_INTERVAL_S."""
    receiver.collect()
    costs = []
    for _ in range(TICKS):
        time.sleep(TICK_INTERVAL_S)
        began = time.process_time()
        receiver.collect()
        costs.append((time.process_time() - began) * 1000)
    return statistics.median(costs)


def measure(receiver_factory: Callable[[], Receiver]) -> float:
    receiver = receiver_factory()
    receiver.start()
    receiver.collect()
    settle_memory()  # as the service does after its first tick: no full GC scans a tick
    try:
        return tick_ms(receiver)
    finally:
        receiver.shutdown()
        gc.unfreeze()


def per_tick(size: int) -> dict[str, float]:
    with SleepingProcesses(size), runners(RUNNING):
        alive = sum(1 for name in os.listdir("/proc") if name.isdigit())
        ebpf = measure(lambda: EbpfReceiver("ebpf", EbpfConfig(fallback="none"), HostSettings()))
        procfs = measure(ProcfsReceiver)
    return {"alive": alive, "ebpf": ebpf, "procfs": procfs}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--switches", type=int, default=200_000, help="round trips per run")
    parser.add_argument("--packets", type=int, default=100_000, help="datagrams per run")
    parser.add_argument("sizes", nargs="*", type=int, default=[100, 1000, 5000])
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, kernel {os.uname().release}, {os.cpu_count()} CPUs")
    s = per_switch(args.switches)
    print(
        f"\nper context switch ({ROUNDS} alternating runs of {args.switches} pipe round trips "
        f"on one CPU, {s['switches']:.0f} switches with the program):"
    )
    print(f"  without program {s['without']:8.0f} ns/switch (median)")
    print(f"  with program    {s['with']:8.0f} ns/switch (median)")
    print(f"  added           {s['added']:8.0f} ns/switch")
    print(f"  program alone   {s['program']:8.0f} ns/call (kernel.bpf_stats_enabled)")
    p = per_packet(args.packets)
    print(
        f"\nper packet ({ROUNDS} alternating runs of {args.packets} UDP datagrams of "
        f"{PACKET} bytes over loopback, sent and received by one process):"
    )
    print(f"  without receiver {p['without']:8.0f} ns/datagram (median)")
    print(f"  with receiver    {p['with']:8.0f} ns/datagram (median)")
    print(f"  added            {p['added']:8.0f} ns/datagram")
    for name in ("otelk_skb_out", "otelk_skb_in", "otelk_softirq"):
        print(f"  {name:<16} {p.get(name, float('nan')):8.0f} ns/call (kernel.bpf_stats_enabled)")
    print(
        f"\nper tick: CPU ms of collect() (median of {TICKS}, every {TICK_INTERVAL_S}s), "
        f"{RUNNING} processes running:"
    )
    print(f"  {'spawned':>8} {'alive':>7} {'ebpf':>9} {'procfs':>9}")
    for size in args.sizes:
        r = per_tick(size)
        print(
            f"  {size:>8} {r['alive']:>7.0f} {r['ebpf']:>7.2f}ms {r['procfs']:>7.2f}ms",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])

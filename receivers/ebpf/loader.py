"""Finding bcc, checking what the BPF program needs, loading it, and reading its maps.

bcc's Python bindings are not on PyPI: distributions ship them (Debian: python3-bpfcc)
in the system's dist-packages, which a virtual environment does not see. The package is
pure Python over ``libbcc.so.0`` (ctypes), so :func:`import_bcc` loads just that one
package from the system directory without putting the whole directory on ``sys.path``
(that would let the system's older copies of other packages shadow the environment's).
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import mmap
import os
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

from otel_kepler import memory
from otel_kepler.component import ComponentError

from . import program

#: Where distributions put bcc's Python package (searched in this order).
SYSTEM_DIRS = (
    "/usr/lib/python3/dist-packages",  # Debian, Ubuntu
    f"/usr/lib/python3.{sys.version_info.minor}/site-packages",  # Fedora, Arch
    f"/usr/lib64/python3.{sys.version_info.minor}/site-packages",
    "/usr/local/lib/python3/dist-packages",
)

INSTALL_HINT = "install python3-bpfcc (Debian, Ubuntu) or python3-bcc (Fedora), or run " + (
    "scripts/setup-ebpf.sh"
)

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

#: Tracepoints the program attaches to, and its function for each.
TRACEPOINTS = (
    ("sched:sched_switch", program.SWITCH_FN),
    ("sched:sched_process_exit", program.EXIT_FN),
    ("sched:sched_process_exec", program.EXEC_FN),
)

#: perf hardware events (PERF_TYPE_HARDWARE = 0) read per task: map name -> config.
HW_EVENTS = {
    "cycles_reader": 0,  # PERF_COUNT_HW_CPU_CYCLES
    "instructions_reader": 1,  # PERF_COUNT_HW_INSTRUCTIONS
    "cache_misses_reader": 3,  # PERF_COUNT_HW_CACHE_MISSES
}

#: perf_event_open(2) by machine; elsewhere counters are not probed (time only).
_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241, "ppc64le": 319, "s390x": 331}

_bcc: ModuleType | None = None


def import_bcc() -> ModuleType:
    """The ``bcc`` module: the environment's own if it has one, else the system's."""
    global _bcc
    if _bcc is None:
        spec = importlib.util.find_spec("bcc")
        if spec is None or spec.loader is None:
            spec = find_bcc()
        _bcc = load_bcc(spec)
    return _bcc


def find_bcc(dirs: tuple[str, ...] = SYSTEM_DIRS) -> ModuleSpec:
    """The spec of bcc's package in the first system directory that has it."""
    for directory in dirs:
        init = os.path.join(directory, "bcc", "__init__.py")
        if os.path.isfile(init):
            spec = importlib.util.spec_from_file_location(
                "bcc", init, submodule_search_locations=[os.path.dirname(init)]
            )
            if spec is not None and spec.loader is not None:
                return spec
    raise ComponentError(
        "bcc (its Python package) is not importable: not in this Python environment "
        f"nor in {', '.join(dirs)}; {INSTALL_HINT}"
    )


def load_bcc(spec: ModuleSpec) -> ModuleType:
    """Execute bcc's package from ``spec`` as module ``bcc``."""
    module = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = module
    try:
        assert spec.loader is not None
        spec.loader.exec_module(module)
    except Exception as err:  # libbcc.so.0 missing, or an incompatible bcc
        del sys.modules["bcc"]
        raise ComponentError(
            f"bcc at {spec.origin} cannot be loaded: {err} ({INSTALL_HINT})"
        ) from None
    return module


# --------------------------------------------------------------------------- preflight


@dataclass(frozen=True, slots=True)
class KernelPaths:
    """Where bcc looks for what it needs (tests point these elsewhere)."""

    release: str = field(default_factory=lambda: os.uname().release)
    modules: str = "/lib/modules"
    kheaders: str = "/sys/kernel/kheaders.tar.xz"
    tracefs: tuple[str, ...] = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
    status: str = "/proc/self/status"

    def header_candidates(self) -> list[str]:
        found = [os.environ["BCC_KERNEL_SOURCE"]] if os.environ.get("BCC_KERNEL_SOURCE") else []
        base = os.path.join(self.modules, self.release)
        return [*found, os.path.join(base, "build"), os.path.join(base, "source"), self.kheaders]

    def headers(self) -> str | None:
        """The header tree bcc will use, or None."""
        for path in self.header_candidates():
            if os.path.exists(path):
                return path
        return None

    def tracepoint_format(self, event: str) -> str | None:
        """The format file of ``sched:<event>``, or None when tracefs is not mounted."""
        for root in self.tracefs:
            path = os.path.join(root, "events", "sched", event, "format")
            if os.path.exists(path):
                return path
        return None


def effective_capabilities(status: str = "/proc/self/status") -> int:
    try:
        with open(status, encoding="ascii") as file:
            for line in file:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def prerequisites(paths: KernelPaths) -> ModuleType:
    """bcc, once everything the program needs is here; else ComponentError naming all that
    is missing."""
    problems: list[str] = []
    bcc = None
    try:
        bcc = import_bcc()
    except ComponentError as err:
        problems.append(str(err))
    problems += missing(paths)
    if problems or bcc is None:
        raise ComponentError("eBPF is not available: " + "; ".join(problems))
    return bcc


def missing(paths: KernelPaths) -> list[str]:
    """What keeps the program from loading here, each named with its fix; [] if nothing."""
    problems: list[str] = []
    caps = effective_capabilities(paths.status)
    bpf = caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1
    if not (bpf or caps >> CAP_SYS_ADMIN & 1):
        problems.append(
            "no privilege: loading BPF needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN "
            f"(this process, uid {os.geteuid()}, has none of them in its effective set)"
        )
    elif paths.tracepoint_format("sched_switch") is None:
        problems.append(
            "tracefs is not mounted (no events/sched/sched_switch/format under "
            f"{' or '.join(paths.tracefs)}): mount -t tracefs tracefs /sys/kernel/tracing"
        )
    if paths.headers() is None:
        where = ", ".join(paths.header_candidates())
        problems.append(
            f"no kernel headers for {paths.release}: none of {where} exist; install the "
            f"headers of this kernel (linux-headers-{paths.release}), load the kheaders "
            "module, or link older headers there (scripts/setup-ebpf.sh)"
        )
    return problems


def has_group_dead(paths: KernelPaths) -> bool:
    """Whether sched_process_exit has ``group_dead`` (Linux 6.13+): the last thread ends."""
    path = paths.tracepoint_format("sched_process_exit")
    if path is None:
        return False
    try:
        with open(path, encoding="utf-8") as file:
            return " group_dead;" in file.read()
    except OSError:
        return False


def hardware_counters() -> str | None:
    """None if cycles, instructions and cache misses can be counted; else why not."""
    number = _PERF_EVENT_OPEN.get(os.uname().machine)
    if number is None:
        return f"not probed on {os.uname().machine}"
    libc = ctypes.CDLL(None, use_errno=True)
    for name, config in HW_EVENTS.items():
        attr = (ctypes.c_uint64 * 16)()  # perf_event_attr, zeroed: type 0 = hardware
        struct.pack_into("<IIQ", attr, 0, 0, 128, config)  # type, size, config
        fd = libc.syscall(number, attr, -1, 0, -1, 8)  # pid -1, cpu 0, PERF_FLAG_FD_CLOEXEC
        if fd < 0:
            code = ctypes.get_errno()
            event = name.removesuffix("_reader").replace("_", " ")
            return f"the CPU exposes no {event} counter (perf_event_open: {os.strerror(code)})"
        os.close(fd)
    return None


# --------------------------------------------------------------------------- the probe


@dataclass(slots=True)
class Drained:
    """What one flip and drain returned."""

    now_ns: int  # CLOCK_MONOTONIC (bpf_ktime_get_ns' clock) when the CPUs were read
    running: list[tuple[int, int]]  # per possible CPU: (switch-in ns, tid); tid 0 idle
    usage: list[tuple[int, tuple[int, int, int, int, int]]]  # tgid, USAGE fields
    events: list[tuple[int, tuple[int, int, int, bytes]]]  # tgid, EVENT fields
    dropped_usage: int  # cumulative counts since load
    dropped_events: int


class Probe:
    """The loaded, attached program. ``drain()`` once a tick; ``close()`` detaches it."""

    def __init__(
        self,
        bcc: ModuleType,
        max_processes: int,
        paths: KernelPaths,
        counters: bool,
        source: str = program.SOURCE,
    ) -> None:
        self.counters = counters
        self.max_processes = max_processes
        self._lib = bcc.libbcc.lib
        cpus = bcc.utils.get_possible_cpus()
        cflags = [f"-DMAX_PROCESSES={max_processes}", f"-DNUM_CPUS={max(cpus) + 1}"]
        if has_group_dead(paths):
            cflags.append("-DGROUP_DEAD")
        if counters:
            cflags.append("-DHW_COUNTERS")
        self.bpf: Any = None
        self._mappings: list[mmap.mmap] = []
        failure: Exception | None = None
        with captured_stderr() as said:
            try:
                self.bpf = bcc.BPF(text=source.encode(), cflags=cflags)
                for tracepoint, function in TRACEPOINTS:
                    self.bpf.attach_tracepoint(tp=tracepoint.encode(), fn_name=function.encode())
                if counters:
                    for name, config in HW_EVENTS.items():
                        self.bpf[name.encode()].open_perf_event(0, config)
            except Exception as err:  # bcc raises plain Exception for every failure
                failure = err
        if failure is not None:
            self.close()
            raise ComponentError(_load_failure(paths, failure, said[0]))
        if said[0]:
            sys.stderr.write(said[0])  # compiler warnings: passed on
        memory.trim()  # the compiler's working memory, freed now that the program is loaded
        self.cpus = max(cpus) + 1
        self._active = 0  # the pair of maps the program writes
        self._batch = True  # batch lookup-and-delete works (Linux 5.6+)
        self._recorded = [0, 0]  # events recorded in each events map at its last drain
        try:
            self._usage = (self.bpf[b"usage0"], self.bpf[b"usage1"])
            self._events = (self.bpf[b"events0"], self.bpf[b"events1"])
            self._check_layout()
            self._cpu_state = self._map(b"cpu_state", self.cpus * program.CPU_STATE.size)
            self._control = self._map(b"control", program.CONTROL.size)
            self._stats = self._map(b"stats", program.STATS.size)
            tables = (*self._usage, *self._events)
            self._buffers = {id(t): _Buffers(t, max_processes) for t in tables}
            self._prime()
        except BaseException:
            self.close()
            raise

    def _map(self, name: bytes, size: int) -> mmap.mmap:
        """The values of a BPF_F_MMAPABLE array map, shared with the program."""
        length = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        fd = self.bpf[name].map_fd
        mapped = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._mappings.append(mapped)
        return mapped

    def _check_layout(self) -> None:
        layouts = (
            (b"usage0", program.USAGE),
            (b"events0", program.EVENT),
            (b"cpu_state", program.CPU_STATE),
            (b"stats", program.STATS),
            (b"control", program.CONTROL),
        )
        for name, layout in layouts:
            size = ctypes.sizeof(self.bpf[name].Leaf)
            if size != layout.size:
                raise ComponentError(
                    f"map {name.decode()} holds values of {size} bytes, its reader expects "
                    f"{layout.size}: the program and its reader disagree"
                )

    def _prime(self) -> None:
        """Give every CPU a start time now, then visit each to learn who runs there.

        Without a start time the first switch on a CPU could not be charged; without the
        visit a CPU that runs one task without switching would not say which.
        """
        now = time.monotonic_ns()
        for cpu in range(self.cpus):
            struct.pack_into("<Q", self._cpu_state, cpu * program.CPU_STATE.size, now)
        allowed = os.sched_getaffinity(0)
        try:
            for cpu in sorted(allowed):
                with suppress(OSError):  # went offline meanwhile: its first switch will tell
                    os.sched_setaffinity(0, {cpu})
        finally:
            os.sched_setaffinity(0, allowed)

    def drain(self) -> Drained:
        """Switch the program to the other maps, then read and empty the ones it left."""
        drained = self._active
        self._active ^= 1
        program.CONTROL.pack_into(self._control, 0, self._active)
        now = time.monotonic_ns()
        states = memoryview(self._cpu_state)[: self.cpus * program.CPU_STATE.size]
        running = list(program.CPU_STATE.iter_unpack(states))
        dropped_usage, dropped_events, *recorded = program.STATS.unpack_from(self._stats)
        events = []
        if recorded[drained] != self._recorded[drained]:  # else it is empty: skip the walk
            self._recorded[drained] = recorded[drained]
            events = [
                (key, program.EVENT.unpack_from(value))
                for key, value in self._take(self._events[drained])
            ]
        usage = [
            (key, program.USAGE.unpack_from(value))
            for key, value in self._take(self._usage[drained])
        ]
        return Drained(now, running, usage, events, dropped_usage, dropped_events)

    def _take(self, table: Any) -> Iterator[tuple[int, memoryview]]:
        """Every (key, raw value) of ``table``, deleting them: one syscall where batched."""
        if self._batch:
            try:
                yield from self._buffers[id(table)].take(self._lib, table.map_fd)
                return
            except OSError as err:
                if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                self._batch = False  # a kernel before 5.6: no batch operations
        for key, value in list(table.items()):
            del table[key]
            yield key.value, memoryview(bytes(value))

    def close(self) -> None:
        """Detach the tracepoints and free the program and its maps (idempotent)."""
        while self._mappings:
            self._mappings.pop().close()  # a mapping keeps its map alive
        bpf, self.bpf = self.bpf, None
        if bpf is not None:
            bpf.cleanup()


class _Buffers:
    """Keys and values arrays for batch lookup-and-delete of one map, allocated once."""

    def __init__(self, table: Any, capacity: int) -> None:
        self.key_size = ctypes.sizeof(table.Key)
        self.value_size = ctypes.sizeof(table.Leaf)
        self.capacity = capacity
        self.keys = (ctypes.c_uint8 * (self.key_size * capacity))()
        self.values = (ctypes.c_uint8 * (self.value_size * capacity))()

    def take(self, lib: Any, fd: int) -> Iterator[tuple[int, memoryview]]:
        token = ctypes.c_uint32(0)
        count = ctypes.c_uint32(0)
        total = 0
        first = True
        while total < self.capacity:
            count.value = self.capacity - total
            result = lib.bpf_lookup_and_delete_batch(
                fd,
                None if first else ctypes.byref(token),
                ctypes.byref(token),
                ctypes.byref(self.keys, self.key_size * total),
                ctypes.byref(self.values, self.value_size * total),
                ctypes.byref(count),
            )
            code = ctypes.get_errno()
            first = False
            total += count.value
            if result != 0:
                if code == errno.ENOENT or result == -errno.ENOENT:
                    break
                raise OSError(code or -result, os.strerror(code or -result))
        keys = memoryview(self.keys).cast("B")[: total * self.key_size].cast("I")
        values = memoryview(self.values).cast("B")
        size = self.value_size
        for index in range(total):
            yield keys[index], values[index * size : (index + 1) * size]


def _load_failure(paths: KernelPaths, err: Exception, said: str) -> str:
    message = f"the BPF program failed to load on kernel {paths.release}: {err}"
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    if lines:
        message += "; bcc said: " + " | ".join(lines[-6:])
    if "Operation not permitted" in str(err):
        message += " (needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)"
    return message


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what C code (LLVM, libbcc, the verifier) writes to fd 2 during the block.

    The list holds that text once the block has ended.
    """
    said: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.append(sink.read().decode("utf-8", "replace"))

"""A fake libnvidia-ml.so.1 for the nvml receiver's tests, and what drives it.

* :func:`build` compiles ``fake_nvml.c`` with gcc into ``.cache/fake_nvml/`` (once per
  source and variant) and returns the directory holding ``libnvidia-ml.so.1``.
* :class:`FakeNvml` holds the fake's devices and writes its state file atomically; the
  library re-reads it when it changes, so a test moves the GPUs between two ticks.
* :class:`NvmlProcess` runs the receiver in a child Python process started with
  ``LD_LIBRARY_PATH`` pointing at the built library, so that pynvml's own loader
  (``CDLL("libnvidia-ml.so.1")``) finds the fake exactly as it finds the real one. The
  pytest process itself never loads an NVML library.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).with_name("fake_nvml.c")
CACHE = ROOT / ".cache" / "fake_nvml"
LIBRARY = "libnvidia-ml.so.1"

#: Build variants: which NVML symbols the library leaves out (an older driver's NVML).
VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no-utilization": ["-DFAKE_NO_PROCESS_UTILIZATION"],
    "legacy": ["-DFAKE_NO_PROCESS_UTILIZATION", "-DFAKE_NO_RUNNING_V3", "-DFAKE_NO_ENERGY"],
}

H100 = "NVIDIA H100 80GB HBM3"


class BuildError(RuntimeError):
    """gcc is missing or failed."""


def build(variant: str = "full", cache: Path = CACHE) -> Path:
    """The directory of a ``libnvidia-ml.so.1`` built from ``fake_nvml.c`` for ``variant``.

    Cached under a hash of the source and the flags; built into a temporary name and
    renamed, so concurrent test processes never load a half-written library.
    """
    flags = VARIANTS[variant]
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(flags).encode()).hexdigest()[:16]
    directory = cache / f"{variant}-{digest}"
    library = directory / LIBRARY
    if library.exists():
        return directory
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BuildError("gcc is not installed: it builds the fake libnvidia-ml.so.1")
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{LIBRARY}.{os.getpid()}"
    command = [
        gcc,
        "-shared",
        "-fPIC",
        "-O2",
        "-std=c11",
        "-D_POSIX_C_SOURCE=200809L",
        "-Wall",
        "-Wextra",
        "-Werror",
        f"-Wl,-soname,{LIBRARY}",
        *flags,
        "-o",
        str(partial),
        str(SOURCE),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BuildError(f"{' '.join(command)} failed:\n{result.stderr}")
    os.replace(partial, library)
    return directory


@dataclass
class FakeMig:
    gpu_instance: int
    compute_instance: int
    uuid: str
    name: str


@dataclass
class FakeGpu:
    """One fake GPU; change its fields, then :meth:`FakeNvml.write`."""

    uuid: str
    name: str = H100
    power_mw: int = 71_000
    energy_mj: int = 5_000_000
    mig: bool = False
    mig_devices: list[FakeMig] = field(default_factory=list)
    processes: list[tuple[int, int, int, int]] = field(default_factory=list)  # pid, B, gi, ci
    samples: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)
    util_pad: int = 0  # size queries over-report by this many samples (as NVML does)
    errors: dict[str, int] = field(default_factory=dict)  # NVML call -> return code

    def run(self, pid: int, used_bytes: int = 1 << 30, gi: int = 0, ci: int = 0) -> None:
        """List ``pid`` among the compute processes running on this GPU."""
        self.processes.append((pid, used_bytes, gi, ci))

    def sample(self, pid: int, timestamp_us: int, sm: int, mem: int = 0) -> None:
        """Add a process utilisation sample (CPU timestamp in microseconds)."""
        self.samples.append((pid, timestamp_us, sm, mem, 0, 0))

    def lines(self) -> list[str]:
        out = [
            "gpu",
            f"name {self.name}",
            f"uuid {self.uuid}",
            f"power_mw {self.power_mw}",
            f"energy_mj {self.energy_mj}",
            f"mig {int(self.mig)}",
            f"util_pad {self.util_pad}",
        ]
        out += [
            f"migdev {m.gpu_instance} {m.compute_instance} {m.uuid} {m.name}"
            for m in self.mig_devices
        ]
        out += ["proc " + " ".join(map(str, p)) for p in self.processes]
        out += ["util " + " ".join(map(str, s)) for s in self.samples]
        out += [f"error {call} {code}" for call, code in self.errors.items()]
        return out


class FakeNvml:
    """The fake's whole state: driver version, injected global errors, GPUs."""

    def __init__(self, path: Path, driver: str = "580.159.04") -> None:
        self.path = path
        self.driver = driver
        self.errors: dict[str, int] = {}  # NVML call -> return code, for every device
        self.gpus: list[FakeGpu] = []
        self._writes = 0

    def add_gpu(self, **fields: Any) -> FakeGpu:
        index = len(self.gpus)
        fields.setdefault("uuid", f"GPU-8d3d9ed1-0000-4000-8000-{index:012d}")
        gpu = FakeGpu(**fields)
        self.gpus.append(gpu)
        return gpu

    def write(self) -> None:
        """Replace the state file atomically (the library sees a new inode and re-reads)."""
        lines = [f"driver {self.driver}"]
        lines += [f"error {call} {code}" for call, code in self.errors.items()]
        for gpu in self.gpus:
            lines += gpu.lines()
        self._writes += 1
        partial = self.path.with_name(f".{self.path.name}.{self._writes}")
        partial.write_text("\n".join(lines) + "\n", encoding="ascii")
        os.replace(partial, self.path)


@dataclass
class Reply:
    """What the child answered: a value or an error, and the log records it emitted."""

    value: Any
    error: tuple[str, str] | None  # (exception class name, message)
    logs: list[tuple[str, str]]  # (level name, message)

    def ok(self) -> Any:
        if self.error is not None:
            raise AssertionError(f"the child raised {self.error[0]}: {self.error[1]}")
        return self.value


class NvmlProcess:
    """A child Python process whose ``libnvidia-ml.so.1`` is the fake (or none at all).

    ``library`` is the directory put in ``LD_LIBRARY_PATH`` before the child starts;
    None starts it with no ``LD_LIBRARY_PATH``, so the dynamic loader searches only the
    system's own paths, as for the agent on a host without the NVIDIA driver.
    """

    def __init__(self, library: Path | None, state: Path | None) -> None:
        env = dict(os.environ)
        env.pop("LD_LIBRARY_PATH", None)
        env.pop("FAKE_NVML_STATE", None)
        if library is not None:
            env["LD_LIBRARY_PATH"] = str(library)
        if state is not None:
            env["FAKE_NVML_STATE"] = str(state)
        env["PYTHONPATH"] = str(ROOT)
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self._child = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_nvml.worker", str(to_child_r), str(from_child_w)],
            cwd=ROOT,
            env=env,
            pass_fds=(to_child_r, from_child_w),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)

    def request(self, operation: str, *args: Any) -> Reply:
        self._send.send((operation, args))
        if not self._recv.poll(60):
            raise TimeoutError(f"the NVML child did not answer {operation} within 60 s")
        value, error, logs = self._recv.recv()
        return Reply(value, error, logs)

    def close(self) -> None:
        try:
            self._send.send(("exit", ()))
        except OSError:
            pass
        self._send.close()
        self._recv.close()
        try:
            self._child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()

    def __enter__(self) -> NvmlProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The ``nvml`` receiver: energy, power and per-process use of NVIDIA GPUs through NVML.

NVML (``libnvidia-ml.so.1``, shipped with the NVIDIA driver) is reached through pynvml
(the nvidia-ml-py package). Per tick and GPU the receiver reads:

* the energy counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the
  driver loaded) once: it takes about 4 ms a call on an H100, and its delta over the
  tick is the GPU's energy, the truth. A GPU without the counter (older than Volta) has
  its energy integrated from two power readings instead, an estimate;
* the power (``nvmlDeviceGetPowerUsage``, milliwatts), about 1 us a call;
* the compute processes running on it (``nvmlDeviceGetComputeRunningProcesses``, the
  newest version this NVML has: _v3, else _v2);
* the per-process utilisation samples newer than the last one seen
  (``nvmlDeviceGetProcessUtilization``): each process's SM utilisation averaged over the
  sampling periods of the tick. NotFound there means "no samples", not a failure.

The running list alone is not trusted: on an H100 it came back empty while the
utilisation samples showed the process, so both are reported and the attribution uses
whichever has the process.

The first collect only primes the counters. The energy counter goes through the
counter rule of :mod:`otel_kepler.receivers.counter`: a reading that goes backwards (a
driver reload) or rises by more than ``max_watts`` over the time since the last good
reading is dropped, counted by reason in ``Contribution.rejected`` and logged once per
GPU and reason; it never becomes the reference, so the next good reading counts from the
last good one (a counter that really restarted primes again once two readings agree).
A GPU whose reads fail costs only itself for that tick (counted as ``unreadable``,
logged once per distinct error); its next good reading covers the gap. A GPU without
an energy counter integrates its power and primes again after a failure. MIG
instances are enumerated where MIG is enabled; energy and power exist only per
physical GPU, so they are reported there, with the MIG mode and instance count as
attributes.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pynvml

from otel_kepler import metadata as md
from otel_kepler.component import Availability, ComponentError, Factory, HostSettings, Receiver
from otel_kepler.data import Contribution, GpuSample
from otel_kepler.schema import ConfigError

from .counter import EnergyCounter, Rejected

log = logging.getLogger(__name__)

LIBRARY = "libnvidia-ml.so.1"
INSTALL_FIX = (
    "install the NVIDIA driver (it ships libnvidia-ml.so.1); in a container, run with the "
    "NVIDIA container toolkit so that the driver's libraries are mounted"
)
RUNNING_CALLS = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
)
ENERGY_CALL = "nvmlDeviceGetTotalEnergyConsumption"
POWER_CALL = "nvmlDeviceGetPowerUsage"
UTIL_CALL = "nvmlDeviceGetProcessUtilization"

_INIT_HINTS: dict[type[Exception], str] = {
    pynvml.NVMLError_DriverNotLoaded: (
        "the NVIDIA kernel driver is not loaded (no NVIDIA GPU on this host, or the driver "
        "is not installed for this kernel)"
    ),
    pynvml.NVMLError_NoPermission: (
        "the agent may not open the GPU devices (/dev/nvidia*): give it access to them "
        "(in Kubernetes, the NVIDIA device plugin or a privileged pod)"
    ),
    pynvml.NVMLError_LibRmVersionMismatch: (
        "libnvidia-ml.so.1 and the loaded kernel driver are different versions: reload the "
        "nvidia kernel module or reboot after a driver upgrade"
    ),
}


@dataclass
class NvmlConfig:
    """Energy, power and per-process use of every NVIDIA GPU, from NVML."""

    devices: list[str] = field(
        default_factory=list,
        metadata={"doc": "GPUs to report, by index (0) or UUID (GPU-...); empty: all"},
    )
    idle_watts: float | None = field(
        default=None,
        metadata={
            "doc": "idle power of every GPU in W; unset: the attribution learns it (the lowest "
            "power seen with no compute process)"
        },
    )
    device_idle_watts: dict[str, float] = field(
        default_factory=dict,
        metadata={"doc": "idle power per GPU in W, keyed by index or UUID; overrides idle_watts"},
    )
    max_watts: float = field(
        default=3000.0,
        metadata={
            "doc": "plausibility ceiling per GPU: energy or power above it is a counter jump "
            "or a bogus reading, dropped and logged, never exported"
        },
    )
    required: bool = field(
        default=False,
        metadata={
            "doc": "false: no NVML library or no GPU logs why and the receiver reports "
            "nothing (one config for GPU and CPU nodes); true: the agent refuses to start"
        },
    )

    def validate(self) -> None:
        if self.max_watts <= 0:
            raise ConfigError("max_watts", f"must be greater than 0, got {self.max_watts:g}")
        for index, ref in enumerate(self.devices):
            _check_device_ref(f"devices[{index}]", ref)
        if self.idle_watts is not None:
            self._check_idle("idle_watts", self.idle_watts)
        for ref, watts in self.device_idle_watts.items():
            _check_device_ref(f"device_idle_watts.{ref}", ref)
            self._check_idle(f"device_idle_watts.{ref}", watts)

    def _check_idle(self, path: str, watts: float) -> None:
        if not 0 <= watts < self.max_watts:
            raise ConfigError(
                path, f"must be 0 or more and below max_watts ({self.max_watts:g}), got {watts:g}"
            )


def _check_device_ref(path: str, ref: str) -> None:
    if not (ref.isdigit() or ref.startswith("GPU-")):
        raise ConfigError(path, f'"{ref}" is neither a GPU index (0, 1, ...) nor a UUID (GPU-...)')


@dataclass(frozen=True, slots=True)
class MigInstance:
    """One MIG device of a GPU in MIG mode."""

    uuid: str
    name: str
    gpu_instance: int
    compute_instance: int


@dataclass(slots=True)
class _Gpu:
    """One GPU: what start() learned about it and what the last tick read."""

    index: int
    handle: Any
    uuid: str
    name: str
    idle_watts: float | None
    mig: list[MigInstance]
    energy_counter: bool = True  # False: integrate power (no counter before Volta)
    process_utilization: bool = True  # False once NVML said it cannot on this GPU
    counter: EnergyCounter | None = None  # the energy counter's state, where it has one
    previous_mw: int | None = None
    previous_at: float | None = None
    last_seen_us: int = 0  # newest utilisation sample seen
    failing: str | None = None  # the error that keeps it out, logged once until it reads

    @property
    def label(self) -> str:
        return f"GPU {self.index} ({self.uuid})"

    @property
    def attributes(self) -> dict[str, str] | None:
        if not self.mig:
            return None
        return {"mig_mode": "enabled", "mig_instances": str(len(self.mig))}

    def reprime(self) -> None:
        """Integrate the power from the next reading on (a GPU without a counter)."""
        self.previous_mw = None
        self.previous_at = None


@dataclass(slots=True)
class _Reading:
    """What one tick read from one GPU."""

    energy_mj: int | None  # None: no counter on this GPU
    power_mw: int | None  # None: the power read failed
    at: float
    running: list[int]
    sm_util: dict[int, float]


def average_sm_util(samples: Iterable[Any], last_seen_us: int) -> tuple[dict[int, float], int]:
    """Per pid, the mean SM % over the sampling periods newer than ``last_seen_us``.

    NVML gives one sample per process and sampling period in which it used the GPU. A
    period where a process is absent counts as 0 % for it, so the denominator is the
    number of periods of the interval, taken as the most samples any one process has.
    Entries with pid 0 or an older timestamp (buffer padding) are skipped. Returns the
    averages and the newest timestamp seen (the next call's ``lastSeenTimeStamp``).
    """
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    seen: set[tuple[int, int]] = set()
    newest = last_seen_us
    for sample in samples:
        pid, stamp = int(sample.pid), int(sample.timeStamp)
        if pid == 0 or stamp <= last_seen_us or (pid, stamp) in seen:
            continue
        seen.add((pid, stamp))
        sums[pid] = sums.get(pid, 0.0) + float(sample.smUtil)
        counts[pid] = counts.get(pid, 0) + 1
        newest = max(newest, stamp)
    periods = max(counts.values(), default=0)
    return {pid: total / periods for pid, total in sums.items()}, newest


def load_error() -> str:
    """Why the dynamic loader cannot open libnvidia-ml.so.1 (pynvml drops the reason)."""
    try:
        ctypes.CDLL(LIBRARY)
    except OSError as err:
        return str(err)
    return "pynvml could not load it"


def _nvml_call(name: str) -> Callable[..., Any]:
    function: Callable[..., Any] = getattr(pynvml, name)
    return function


class NvmlReceiver(Receiver):
    """Reads every selected GPU once per tick."""

    def __init__(
        self,
        name: str,
        config: NvmlConfig,
        host: HostSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._gpus: list[_Gpu] = []
        self._initialised = False
        self.driver_version = ""
        self._running_calls = list(RUNNING_CALLS)  # those this NVML has, newest first
        self._utilization = True  # False: this NVML lacks nvmlDeviceGetProcessUtilization
        self._logged: set[tuple[str, str]] = set()  # (GPU uuid, message) logged once

    @property
    def devices(self) -> list[tuple[int, str, str]]:
        """(index, UUID, name) of each GPU reported, as start() found them."""
        return [(g.index, g.uuid, g.name) for g in self._gpus]

    def mig_instances(self, index: int) -> list[MigInstance]:
        """The MIG devices of GPU ``index`` (empty where MIG is off)."""
        return next((list(g.mig) for g in self._gpus if g.index == index), [])

    def energy_counter(self, index: int) -> bool:
        """Whether GPU ``index`` has an energy counter (else its power is integrated)."""
        return next((g.energy_counter for g in self._gpus if g.index == index), False)

    # -- start and shutdown -----------------------------------------------------------

    def start(self) -> None:
        """Open NVML and the GPUs; without them, log why and stay empty unless required."""
        try:
            self._start()
        except ComponentError as err:
            if self.config.required:
                raise
            log.warning("%s: %s; no GPU data from this receiver", self.name, err)
            self._gpus = []

    def _start(self) -> None:
        self._init()
        try:
            self.driver_version = _text(pynvml.nvmlSystemGetDriverVersion())
            count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as err:
            self.shutdown()
            raise ComponentError(f"NVML failed while listing the GPUs: {err}") from None
        found = [gpu for gpu in map(self._open, range(count)) if gpu is not None]
        try:
            self._gpus = self._select(count, found)
        except ComponentError:
            self.shutdown()
            raise
        for gpu in self._gpus:
            self._describe(gpu)

    def _init(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound:
            raise ComponentError(
                f"cannot load the NVML library {LIBRARY}: {load_error()}; {INSTALL_FIX}"
            ) from None
        except pynvml.NVMLError as err:
            hint = _INIT_HINTS.get(type(err), "see the NVIDIA driver's installation")
            raise ComponentError(f"nvmlInit failed: {err}: {hint}") from None
        self._initialised = True

    def _open(self, index: int) -> _Gpu | None:
        """GPU ``index`` as NVML describes it; None (logged) if NVML cannot tell."""
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            name = _text(pynvml.nvmlDeviceGetName(handle))
        except pynvml.NVMLError as err:
            log.warning("%s: GPU %d left out: NVML cannot describe it: %s", self.name, index, err)
            return None
        gpu = _Gpu(
            index=index,
            handle=handle,
            uuid=uuid,
            name=name,
            idle_watts=self._idle_watts(index, uuid),
            mig=self._mig_instances(index, handle),
            energy_counter=_has_energy_counter(handle),
        )
        if gpu.energy_counter:
            gpu.counter = EnergyCounter(
                f"the energy counter of {gpu.label}", self.config.max_watts, 1e-3
            )
        return gpu

    def _mig_instances(self, index: int, handle: Any) -> list[MigInstance]:
        try:
            return list_mig_devices(handle)
        except pynvml.NVMLError as err:
            log.warning("%s: GPU %d: cannot list its MIG devices: %s", self.name, index, err)
            return []

    def _idle_watts(self, index: int, uuid: str) -> float | None:
        per_device = self.config.device_idle_watts
        for ref in (uuid, str(index)):
            if ref in per_device:
                return per_device[ref]
        return self.config.idle_watts

    def _select(self, count: int, found: list[_Gpu]) -> list[_Gpu]:
        if count == 0:
            raise ComponentError(f"NVML (driver {self.driver_version}) found no GPU on this host")
        if not found:
            raise ComponentError(
                f"NVML (driver {self.driver_version}) lists {count} GPU"
                f"{'s' if count > 1 else ''} but cannot describe any (see the warnings above)"
            )
        known = {str(g.index) for g in found} | {g.uuid for g in found}
        for ref in [*self.config.devices, *self.config.device_idle_watts]:
            if ref not in known:
                log.warning("%s: configured GPU %s is not on this host; ignored", self.name, ref)
        wanted = set(self.config.devices)
        if not wanted:
            return found
        selected = [g for g in found if str(g.index) in wanted or g.uuid in wanted]
        if not selected:
            listed = ", ".join(f"{g.index} ({g.uuid})" for g in found)
            raise ComponentError(
                f"none of the configured devices ({', '.join(self.config.devices)}) is a GPU "
                f"on this host; found: {listed}"
            )
        return selected

    def _describe(self, gpu: _Gpu) -> None:
        log.info("%s: %s %s", self.name, gpu.label, gpu.name)
        if not gpu.energy_counter:
            log.warning(
                "%s: %s has no energy counter (older than Volta?): its energy is integrated "
                "from the power read once a tick, an estimate",
                self.name,
                gpu.label,
            )
        for mig in gpu.mig:
            log.info(
                "%s: %s MIG device %s %s (GPU instance %d, compute instance %d)",
                self.name,
                gpu.label,
                mig.uuid,
                mig.name,
                mig.gpu_instance,
                mig.compute_instance,
            )

    def shutdown(self) -> None:
        if not self._initialised:
            return
        self._initialised = False
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as err:
            log.warning("%s: nvmlShutdown failed: %s", self.name, err)

    # -- one tick ---------------------------------------------------------------------

    def collect(self) -> Contribution:
        part = Contribution()
        for gpu in self._gpus:
            reading = self._read(gpu, part)
            if reading is None:
                continue
            sample = self._sample(gpu, reading, part)
            if sample is not None:
                part.gpus.append(sample)
        return part

    def _read(self, gpu: _Gpu, part: Contribution) -> _Reading | None:
        """This tick's reads of one GPU; None (counted, logged once) when its energy fails."""
        try:
            energy = self._energy(gpu)
        except pynvml.NVMLError as err:
            self._fail(gpu, f"{ENERGY_CALL} failed: {err}", part)
            return None
        at = self._clock()
        try:
            power: int | None = int(pynvml.nvmlDeviceGetPowerUsage(gpu.handle))
        except pynvml.NVMLError as err:
            if not gpu.energy_counter:  # the power is its energy: nothing to report
                self._fail(gpu, f"{POWER_CALL} failed: {err}", part)
                return None
            self._log_once(
                gpu,
                f"{POWER_CALL} failed: {err}; the energy counter's average power stands in",
            )
            power = None
        if gpu.failing is not None:
            log.info("%s: %s reads again", self.name, gpu.label)
            gpu.failing = None
        return _Reading(energy, power, at, self._running(gpu), self._sm_util(gpu))

    def _energy(self, gpu: _Gpu) -> int | None:
        if not gpu.energy_counter:
            return None
        return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle))

    def _fail(self, gpu: _Gpu, message: str, part: Contribution) -> None:
        """Leave the GPU out of this tick, counted as unreadable; logged once per error.

        A GPU with an energy counter keeps its last good reading (the next one covers the
        gap); one without integrates its power afresh from the next reading.
        """
        part.reject("unreadable")
        if gpu.counter is not None:
            gpu.counter.fail()
        gpu.reprime()
        if gpu.failing != message:
            gpu.failing = message
            self._log_once(gpu, f"{message}; the GPU is left out until it reads again")

    def _sample(self, gpu: _Gpu, reading: _Reading, part: Contribution) -> GpuSample | None:
        """The GPU's sample; None while priming or when its energy was rejected."""
        previous_mw, previous_at = gpu.previous_mw, gpu.previous_at
        gpu.previous_mw, gpu.previous_at = reading.power_mw, reading.at
        if reading.energy_mj is not None and gpu.counter is not None:
            counted = self._counter_joules(gpu, gpu.counter, reading, part)
            if counted is None:
                return None
            joules, elapsed = counted
        else:
            if previous_at is None:
                return None
            elapsed = reading.at - previous_at
            integrated = self._integrated_joules(gpu, previous_mw, reading.power_mw, elapsed)
            if integrated is None:
                part.reject("implausible_power")
                return None
            joules = integrated
        watts = self._watts(gpu, reading.power_mw, joules, elapsed, part)
        return GpuSample(
            index=gpu.index,
            uuid=gpu.uuid,
            name=gpu.name,
            joules=joules,
            watts=watts,
            sm_util=reading.sm_util,
            running=reading.running,
            idle_watts=gpu.idle_watts,
            attributes=gpu.attributes,
        )

    def _counter_joules(
        self, gpu: _Gpu, counter: EnergyCounter, reading: _Reading, part: Contribution
    ) -> tuple[float, float] | None:
        """(joules, seconds) since the last good reading; None while priming or rejected."""
        assert reading.energy_mj is not None
        since = counter.baseline_at if counter.baseline is not None else None
        restarts = counter.restarts
        try:
            joules = counter.update(reading.energy_mj, reading.at)
        except Rejected as err:
            part.reject(err.reason)
            self._log_once(
                gpu,
                f"dropped a reading ({err.reason}): {err.message}; not exported, the next "
                "good reading counts from the last good one",
                kind=err.reason,
            )
            return None
        if counter.restarts != restarts:
            self._log_once(
                gpu,
                "the energy counter restarted from a new level (a driver reload?); counting "
                "resumes from there",
                kind="restart",
            )
        if joules is None or since is None:
            return None
        return joules, reading.at - since

    def _integrated_joules(
        self, gpu: _Gpu, previous_mw: int | None, current_mw: int | None, elapsed: float
    ) -> float | None:
        """Trapezoid of two power readings, for a GPU without an energy counter."""
        if previous_mw is None or current_mw is None:  # not reached: failed reads re-prime
            return None
        bogus = max(previous_mw, current_mw)
        if bogus / 1000.0 > self.config.max_watts:
            self._log_once(
                gpu,
                f"dropped an implausible power reading of {bogus / 1000.0:.0f} W (> "
                f"max_watts {self.config.max_watts:g}); not exported",
                kind="power",
            )
            if current_mw == bogus:
                gpu.reprime()  # integrate from the next sound reading on
            return None
        return (previous_mw + current_mw) / 2000.0 * max(elapsed, 0.0)

    def _watts(
        self,
        gpu: _Gpu,
        power_mw: int | None,
        joules: float,
        elapsed: float,
        part: Contribution,
    ) -> float:
        """The power now; the interval's average if it was not read or is implausible."""
        average = joules / elapsed if elapsed > 0 else 0.0
        if power_mw is None:
            return average
        watts = power_mw / 1000.0
        if watts <= self.config.max_watts:
            return watts
        part.reject("implausible_power")
        self._log_once(
            gpu,
            f"dropped an implausible power reading of {watts:.0f} W (> max_watts "
            f"{self.config.max_watts:g}); the energy counter's average power stands in",
            kind="power",
        )
        return average

    def _running(self, gpu: _Gpu) -> list[int]:
        """Pids of the compute processes NVML lists on this GPU; [] if it cannot tell."""
        while self._running_calls:
            call = self._running_calls[0]
            try:
                processes = _nvml_call(call)(gpu.handle)
            except pynvml.NVMLError_FunctionNotFound:
                self._running_calls.pop(0)
                log.info("%s: this NVML has no %s", self.name, call)
                continue
            except pynvml.NVMLError as err:
                self._log_once(gpu, f"{call} failed: {err}; no running-process list this tick")
                return []
            return [int(p.pid) for p in processes]
        self._log_once(gpu, "this NVML has no nvmlDeviceGetComputeRunningProcesses (_v3, _v2)")
        return []

    def _sm_util(self, gpu: _Gpu) -> dict[int, float]:
        """Per pid, the mean SM % since the last sample seen; {} when there is none."""
        if not (self._utilization and gpu.process_utilization):
            return {}
        try:
            samples = pynvml.nvmlDeviceGetProcessUtilization(gpu.handle, gpu.last_seen_us)
        except pynvml.NVMLError_NotFound:
            return {}  # no sample newer than the last: nothing ran
        except pynvml.NVMLError_FunctionNotFound:
            self._utilization = False
            log.warning(
                "%s: this NVML has no %s: GPU energy is split over the running compute "
                "processes instead of by their SM use",
                self.name,
                UTIL_CALL,
            )
            return {}
        except pynvml.NVMLError_NotSupported:
            gpu.process_utilization = False
            self._log_once(
                gpu,
                f"{UTIL_CALL} is not supported here (MIG mode, vGPU?): its energy is split "
                "over the running compute processes",
            )
            return {}
        except pynvml.NVMLError as err:
            self._log_once(gpu, f"{UTIL_CALL} failed: {err}; no utilisation this tick")
            return {}
        averages, gpu.last_seen_us = average_sm_util(samples, gpu.last_seen_us)
        return averages

    def _log_once(self, gpu: _Gpu, message: str, kind: str | None = None) -> None:
        """Warn about ``gpu`` once per kind of problem (by default, per distinct message)."""
        key = (gpu.uuid, kind or message)
        if key in self._logged:
            return
        self._logged.add(key)
        log.warning("%s: %s: %s (logged once)", self.name, gpu.label, message)


def _has_energy_counter(handle: Any) -> bool:
    """False where NVML has no energy counter for this GPU (or no such call at all)."""
    try:
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound):
        return False
    except pynvml.NVMLError:
        return True  # another failure: the ticks will tell
    return True


def list_mig_devices(handle: Any) -> list[MigInstance]:
    """The MIG devices of a GPU whose MIG mode is enabled; [] otherwise."""
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound):
        return []
    if current != pynvml.NVML_DEVICE_MIG_ENABLE:
        return []
    instances: list[MigInstance] = []
    for slot in range(int(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except pynvml.NVMLError_NotFound:
            continue  # an empty slot
        instances.append(
            MigInstance(
                uuid=_text(pynvml.nvmlDeviceGetUUID(mig)),
                name=_text(pynvml.nvmlDeviceGetName(mig)),
                gpu_instance=int(pynvml.nvmlDeviceGetGpuInstanceId(mig)),
                compute_instance=int(pynvml.nvmlDeviceGetComputeInstanceId(mig)),
            )
        )
    return instances


def _power(joules: float, elapsed: float) -> str:
    return f"{joules / elapsed:.0f} W" if elapsed > 0 else "infinite power"


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def doctor(host: HostSettings) -> Availability:
    """Available with the GPUs found, or exactly why not: library, driver, no GPU."""
    receiver = NvmlReceiver("nvml", NvmlConfig(required=True), host)
    try:
        receiver.start()
    except ComponentError as err:
        return Availability(False, str(err))
    try:
        gpus = "; ".join(_doctor_line(receiver, *device) for device in receiver.devices)
        count = len(receiver.devices)
        return Availability(
            True,
            f"{count} GPU{'s' if count > 1 else ''} (driver {receiver.driver_version}): {gpus}",
        )
    finally:
        receiver.shutdown()


def _doctor_line(receiver: NvmlReceiver, index: int, uuid: str, name: str) -> str:
    notes = []
    if not receiver.energy_counter(index):
        notes.append("no energy counter: power integrated")
    migs = receiver.mig_instances(index)
    if migs:
        notes.append(f"MIG: {len(migs)} instance{'s' if len(migs) > 1 else ''}")
    extra = f" [{', '.join(notes)}]" if notes else ""
    return f"{index} {name} {uuid}{extra}"


def _create(name: str, config: NvmlConfig, host: HostSettings) -> NvmlReceiver:
    return NvmlReceiver(name, config, host)


factory: Factory[NvmlConfig, Receiver] = Factory(
    type="nvml",
    description="NVIDIA GPU energy, power and per-process SM use from NVML (pynvml)",
    config_class=NvmlConfig,
    create=_create,
    doctor=doctor,
    reading_labels=(*md.GPU, "mig_mode", "mig_instances"),
)

"""The nvml receiver through the real pynvml, against a fake libnvidia-ml.so.1 built by gcc.

The receiver runs in a child process started with LD_LIBRARY_PATH pointing at the
built library (tests/fake_nvml), so pynvml's own loader opens it as it would open the
driver's. The test writes the fake's state (devices, counters, processes, samples,
injected NVML errors) between ticks and moves the child's clock by exact intervals.
"""

from __future__ import annotations

import ctypes.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from otel_kepler.component import HostSettings
from otel_kepler.data import Batch, Contribution, GpuSample
from otel_kepler.processors.attribution import AttributionConfig, AttributionProcessor
from otel_kepler.receivers import nvml
from otel_kepler.receivers.nvml import INSTALL_FIX, NvmlConfig, average_sm_util
from otel_kepler.schema import ConfigError, decode
from tests.fake_nvml import H100, FakeMig, FakeNvml, NvmlProcess, Reply, build

T0 = 1_700_000_000_000_000  # a CPU timestamp in microseconds, as NVML's samples carry
GPU_IS_LOST = 15  # NVML_ERROR_GPU_IS_LOST
DRIVER_NOT_LOADED = 9
NOT_SUPPORTED = 3
ENERGY = "nvmlDeviceGetTotalEnergyConsumption"

Opener = Callable[..., NvmlProcess]


@pytest.fixture(scope="session")
def libraries() -> dict[str, Path]:
    return {variant: build(variant) for variant in ("full", "no-utilization", "legacy")}


@pytest.fixture
def fake(tmp_path: Path) -> FakeNvml:
    return FakeNvml(tmp_path / "nvml-state")


@pytest.fixture
def open_nvml(libraries: dict[str, Path], fake: FakeNvml) -> Iterator[Opener]:
    """Start a child on the fake (the state written first), with a receiver created."""
    children: list[NvmlProcess] = []

    def open_child(variant: str = "full", config: dict[str, Any] | None = None) -> NvmlProcess:
        fake.write()
        child = NvmlProcess(libraries[variant], fake.path)
        children.append(child)
        child.request("create", config).ok()
        return child

    yield open_child
    for child in children:
        child.close()


def started(open_nvml: Opener, variant: str = "full", **config: Any) -> NvmlProcess:
    """A started receiver whose first (priming) collect is done."""
    child = open_nvml(variant, config or None)
    child.request("start").ok()
    primed = child.request("collect", 0.0).ok()
    assert primed == Contribution()  # the first collect only primes
    return child


def tick(child: NvmlProcess, fake: FakeNvml, seconds: float) -> Contribution:
    """Publish the fake's state, move the clock by ``seconds`` and collect."""
    fake.write()
    part = child.request("collect", seconds).ok()
    assert isinstance(part, Contribution)
    return part


def by_uuid(part: Contribution) -> dict[str, GpuSample]:
    return {gpu.uuid: gpu for gpu in part.gpus}


def warnings(reply: Reply) -> list[str]:
    return [message for level, message in reply.logs if level == "WARNING"]


# -- energy and power --------------------------------------------------------------------


def test_energy_is_the_counter_delta_exactly(fake: FakeNvml, open_nvml: Opener) -> None:
    a = fake.add_gpu(energy_mj=123_456_789, power_mw=71_250)
    b = fake.add_gpu(name="NVIDIA A100-SXM4-80GB", energy_mj=9_000, power_mw=60_000)
    child = started(open_nvml)
    schedule = [(1.0, 700_123, 76_003), (5.0, 3_500_000, 350_000), (0.5, 38_001, 1)]
    for seconds, delta_a, delta_b in schedule:
        a.energy_mj += delta_a
        b.energy_mj += delta_b
        a.power_mw = 700_000
        part = tick(child, fake, seconds)
        gpus = by_uuid(part)
        assert list(gpus) == [a.uuid, b.uuid]
        assert gpus[a.uuid].joules == delta_a / 1000
        assert gpus[b.uuid].joules == delta_b / 1000
        assert (gpus[a.uuid].watts, gpus[b.uuid].watts) == (700.0, 60.0)
        assert part.rejected == {}
    first = part.gpus[0]
    assert (first.index, first.name, first.idle_watts, first.attributes) == (0, H100, None, None)
    assert part.gpus[1].name == "NVIDIA A100-SXM4-80GB"


def test_the_energy_counter_is_read_once_per_gpu_and_tick(
    fake: FakeNvml, open_nvml: Opener
) -> None:
    fake.add_gpu()
    fake.add_gpu()
    child = started(open_nvml)
    before = child.request("calls", ENERGY).ok()
    for _ in range(3):
        tick(child, fake, 1.0)
    assert child.request("calls", ENERGY).ok() - before == 3 * 2


def test_counter_going_backwards_or_jumping_is_dropped_and_logged_once(
    fake: FakeNvml, open_nvml: Opener
) -> None:
    a = fake.add_gpu(energy_mj=50_000_000)
    b = fake.add_gpu()
    child = started(open_nvml)

    a.energy_mj -= 1_000_000  # a driver reload restarts the counter lower
    b.energy_mj += 100_000
    fake.write()
    reply = child.request("collect", 1.0)
    part = reply.ok()
    assert [g.uuid for g in part.gpus] == [b.uuid]  # the other GPU is unharmed
    assert part.rejected == {"backwards": 1}
    assert warnings(reply) == [
        f"nvml: GPU 0 ({a.uuid}): dropped a reading (backwards): the energy counter of GPU 0 "
        f"({a.uuid}) went backwards from 50000000 to 49000000 (a reset?); not exported, the "
        "next good reading counts from the last good one (logged once)"
    ]

    # the next reading agrees with the rejected one: the counter restarted, it primes there
    a.energy_mj += 300_000
    fake.write()
    reply = child.request("collect", 1.0)
    assert a.uuid not in by_uuid(reply.ok()) and reply.ok().rejected == {}
    assert warnings(reply) == [
        f"nvml: GPU 0 ({a.uuid}): the energy counter restarted from a new level (a driver "
        "reload?); counting resumes from there (logged once)"
    ]
    a.energy_mj += 300_000  # normal again
    assert by_uuid(tick(child, fake, 1.0))[a.uuid].joules == 300.0

    a.energy_mj += 20_000_000  # 20 kJ in 2 s: 10 kW
    fake.write()
    reply = child.request("collect", 2.0)
    assert reply.ok().rejected == {"implausible_jump": 1} and a.uuid not in by_uuid(reply.ok())
    assert warnings(reply) == [
        f"nvml: GPU 0 ({a.uuid}): dropped a reading (implausible_jump): the energy counter of "
        f"GPU 0 ({a.uuid}) rose by 20000000 (20000 J) in 2.000s (10000 W > max_watts 3000); "
        "not exported, the next good reading counts from the last good one (logged once)"
    ]

    # the jump never became the reference: back to normal, the next reading counts the gap
    a.energy_mj -= 20_000_000 - 400_000
    fake.write()
    reply = child.request("collect", 1.0)
    assert reply.ok().rejected == {}
    assert by_uuid(reply.ok())[a.uuid].joules == 400.0
    assert by_uuid(reply.ok())[a.uuid].watts == 71.0  # the power reading, not the average

    a.energy_mj -= 5  # backwards again: dropped and counted, not logged again
    fake.write()
    reply = child.request("collect", 1.0)
    assert reply.ok().rejected == {"backwards": 1}
    assert warnings(reply) == []


def test_max_watts_is_the_ceiling_for_energy_and_power(fake: FakeNvml, open_nvml: Opener) -> None:
    gpu = fake.add_gpu()
    child = started(open_nvml, max_watts=800.0)
    gpu.energy_mj += 1_599_000  # 799.5 W over 2 s: kept
    assert by_uuid(tick(child, fake, 2.0))[gpu.uuid].joules == 1599.0

    gpu.energy_mj += 1_000_000  # 500 W over 2 s, but the power reads 4294967 W
    gpu.power_mw = 4_294_967_295
    fake.write()
    reply = child.request("collect", 2.0)
    part = reply.ok()
    assert part.rejected == {"implausible_power": 1}
    assert by_uuid(part)[gpu.uuid].joules == 1000.0
    assert by_uuid(part)[gpu.uuid].watts == 500.0  # the counter's average stands in
    assert warnings(reply) == [
        f"nvml: GPU 0 ({gpu.uuid}): dropped an implausible power reading of 4294967 W "
        "(> max_watts 800); the energy counter's average power stands in (logged once)"
    ]


def test_a_failing_gpu_costs_only_itself_and_its_next_reading_covers_the_gap(
    fake: FakeNvml, open_nvml: Opener
) -> None:
    a = fake.add_gpu()
    b = fake.add_gpu()
    child = started(open_nvml)
    b.errors[ENERGY] = GPU_IS_LOST
    logged: list[str] = []
    for _ in range(3):
        a.energy_mj += 100_000
        b.energy_mj += 100_000
        fake.write()
        reply = child.request("collect", 1.0)
        assert [g.uuid for g in reply.ok().gpus] == [a.uuid]
        assert reply.ok().rejected == {"unreadable": 1}
        logged += warnings(reply)
    assert logged == [
        f"nvml: GPU 1 ({b.uuid}): nvmlDeviceGetTotalEnergyConsumption failed: GPU is lost; "
        "the GPU is left out until it reads again (logged once)"
    ]

    del b.errors[ENERGY]
    b.energy_mj += 100_000
    fake.write()
    reply = child.request("collect", 1.0)
    # the last good reading was kept: b's next reading covers the four seconds
    assert by_uuid(reply.ok())[b.uuid].joules == 400.0
    assert ("INFO", f"nvml: GPU 1 ({b.uuid}) reads again") in reply.logs
    b.energy_mj += 250_000
    assert by_uuid(tick(child, fake, 1.0))[b.uuid].joules == 250.0


def test_power_read_failing_leaves_the_energy(fake: FakeNvml, open_nvml: Opener) -> None:
    gpu = fake.add_gpu()
    gpu.errors["nvmlDeviceGetPowerUsage"] = NOT_SUPPORTED
    child = open_nvml()
    child.request("start").ok()
    assert warnings(child.request("collect", 0.0)) == [
        f"nvml: GPU 0 ({gpu.uuid}): nvmlDeviceGetPowerUsage failed: Not Supported; the energy "
        "counter's average power stands in (logged once)"
    ]
    gpu.energy_mj += 400_000
    fake.write()
    reply = child.request("collect", 2.0)
    [sample] = reply.ok().gpus
    assert (sample.joules, sample.watts) == (400.0, 200.0)
    assert reply.logs == []


# -- per-process use -----------------------------------------------------------------------


def test_sm_utilisation_averaged_over_the_samples_newer_than_the_last_tick(
    fake: FakeNvml, open_nvml: Opener
) -> None:
    gpu = fake.add_gpu()
    gpu.sample(111, T0, 99)  # before the receiver started: not part of any interval
    gpu.run(111)
    gpu.run(222)
    child = started(open_nvml)

    for n in range(1, 5):  # 4 sampling periods: 111 in all, 222 in the last 2
        gpu.sample(111, T0 + n * 100_000, 90 if n % 2 else 70)
        if n > 2:
            gpu.sample(222, T0 + n * 100_000 + 7, 40)
    gpu.util_pad = 3  # the size query over-reports: zeroed entries come back too
    gpu.energy_mj += 500_000
    [sample] = tick(child, fake, 1.0).gpus
    assert sample.sm_util == {111: 80.0, 222: 20.0}
    assert sample.running == [111, 222]

    gpu.sample(222, T0 + 900_000, 60)
    gpu.processes = []
    [sample] = tick(child, fake, 1.0).gpus
    assert (sample.sm_util, sample.running) == ({222: 60.0}, [])


def test_not_found_means_no_samples_not_a_failure(fake: FakeNvml, open_nvml: Opener) -> None:
    gpu = fake.add_gpu()
    child = open_nvml()
    assert child.request("pynvml", "nvmlDeviceGetProcessUtilization", 0).ok()[0] == (
        "NVMLError_NotFound"
    )
    child.request("start").ok()
    child.request("collect", 0.0).ok()
    gpu.energy_mj += 70_000
    fake.write()
    reply = child.request("collect", 1.0)
    [sample] = reply.ok().gpus
    assert (sample.joules, sample.sm_util, sample.running) == (70.0, {}, [])
    assert reply.logs == []


def test_a_process_seen_in_utilisation_but_not_running_is_attributed(
    fake: FakeNvml, open_nvml: Opener
) -> None:
    """As measured on an H100: the running list was empty while the samples showed the pid."""
    gpu = fake.add_gpu(power_mw=700_000)
    child = started(open_nvml, idle_watts=70.0)
    gpu.sample(4242, T0 + 1, 90)
    gpu.energy_mj += 700_000
    part = tick(child, fake, 1.0)
    [sample] = part.gpus
    assert (sample.running, sample.sm_util, sample.idle_watts) == ([], {4242: 90.0}, 70.0)

    processor = AttributionProcessor(AttributionConfig(levels=["node", "process"]))
    batch = Batch(10**9, 1.0, "node")
    batch.add(part)
    processor.process(batch)
    [process] = [w for w in batch.workloads if w.level == "process"]
    assert process.attributes["pid"] == "4242"
    assert process.gpu_joules == {gpu.uuid: pytest.approx(700.0 - 70.0)}


def test_without_process_utilisation_in_nvml(fake: FakeNvml, open_nvml: Opener) -> None:
    """A library lacking the symbol: pynvml raises its real NVMLError_FunctionNotFound."""
    gpu = fake.add_gpu()
    gpu.run(31)
    gpu.sample(31, T0 + 1, 50)
    child = open_nvml("no-utilization")
    assert child.request("pynvml", "nvmlDeviceGetProcessUtilization", 0).ok() == (
        "NVMLError_FunctionNotFound",
        "pynvml",
        True,
    )
    child.request("start").ok()
    reply = child.request("collect", 0.0)
    assert warnings(reply) == [
        "nvml: this NVML has no nvmlDeviceGetProcessUtilization: GPU energy is split over "
        "the running compute processes instead of by their SM use"
    ]
    gpu.energy_mj += 100_000
    [sample] = tick(child, fake, 1.0).gpus
    assert (sample.joules, sample.sm_util, sample.running) == (100.0, {}, [31])


def test_legacy_nvml_without_energy_counter_nor_v3(fake: FakeNvml, open_nvml: Opener) -> None:
    """An old driver: no energy counter (power integrated), running list through _v2."""
    gpu = fake.add_gpu(name="Tesla P100-PCIE-16GB", power_mw=30_000)
    gpu.run(77)
    child = open_nvml("legacy")
    assert child.request("pynvml", ENERGY).ok()[0] == "NVMLError_FunctionNotFound"
    child.request("start").ok()
    assert child.request("info", 0).ok() == ([], False)
    assert child.request("collect", 0.0).ok() == Contribution()
    gpu.power_mw = 50_000
    [sample] = tick(child, fake, 2.0).gpus
    assert (sample.joules, sample.watts, sample.running) == (80.0, 50.0, [77])
    gpu.power_mw = 4_294_967_295  # bogus: dropped, counted, and the next reading primes
    part = tick(child, fake, 1.0)
    assert (part.gpus, part.rejected) == ([], {"implausible_power": 1})
    gpu.power_mw = 40_000
    assert tick(child, fake, 1.0) == Contribution()
    assert tick(child, fake, 0.5).gpus[0].joules == 20.0
    assert child.request("doctor").ok() == nvml.Availability(
        True,
        "1 GPU (driver 580.159.04): 0 Tesla P100-PCIE-16GB GPU-8d3d9ed1-0000-4000-8000-"
        "000000000000 [no energy counter: power integrated]",
    )


def test_running_list_failure_costs_only_the_list(fake: FakeNvml, open_nvml: Opener) -> None:
    gpu = fake.add_gpu()
    gpu.run(5)
    gpu.errors["nvmlDeviceGetComputeRunningProcesses_v3"] = 999
    child = open_nvml()
    child.request("start").ok()
    reply = child.request("collect", 0.0)
    assert warnings(reply) == [
        f"nvml: GPU 0 ({gpu.uuid}): nvmlDeviceGetComputeRunningProcesses_v3 failed: Unknown "
        "Error; no running-process list this tick (logged once)"
    ]
    gpu.energy_mj += 1000
    [sample] = tick(child, fake, 1.0).gpus
    assert (sample.joules, sample.running) == (1.0, [])
    del gpu.errors["nvmlDeviceGetComputeRunningProcesses_v3"]
    assert tick(child, fake, 1.0).gpus[0].running == [5]


def test_mig_instances_are_enumerated(fake: FakeNvml, open_nvml: Opener) -> None:
    gpu = fake.add_gpu(mig=True)
    gpu.mig_devices = [
        FakeMig(1, 0, "MIG-aaaaaaaa-0000-5000-8000-000000000001", "H100 80GB HBM3 MIG 3g.40gb"),
        FakeMig(2, 0, "MIG-aaaaaaaa-0000-5000-8000-000000000002", "H100 80GB HBM3 MIG 4g.40gb"),
    ]
    gpu.run(11, gi=1)
    gpu.run(12, gi=2)
    plain = fake.add_gpu()
    child = open_nvml()
    reply = child.request("start")
    reply.ok()
    assert (
        "INFO",
        f"nvml: GPU 0 ({gpu.uuid}) MIG device {gpu.mig_devices[1].uuid} "
        "H100 80GB HBM3 MIG 4g.40gb (GPU instance 2, compute instance 0)",
    ) in reply.logs
    instances, has_counter = child.request("info", 0).ok()
    assert has_counter
    assert instances == [
        nvml.MigInstance(m.uuid, m.name, m.gpu_instance, m.compute_instance)
        for m in gpu.mig_devices
    ]
    assert child.request("info", 1).ok() == ([], True)
    reply = child.request("collect", 0.0)
    assert warnings(reply) == [
        f"nvml: GPU 0 ({gpu.uuid}): nvmlDeviceGetProcessUtilization is not supported here "
        "(MIG mode, vGPU?): its energy is split over the running compute processes (logged once)"
    ]
    gpu.energy_mj += 200_000
    plain.energy_mj += 100_000
    mig_sample, plain_sample = tick(child, fake, 1.0).gpus
    assert mig_sample.attributes == {"mig_mode": "enabled", "mig_instances": "2"}
    assert (mig_sample.joules, mig_sample.running) == (200.0, [11, 12])
    assert plain_sample.attributes is None
    assert "[MIG: 2 instances]" in child.request("doctor").ok().detail


# -- configuration and selection -------------------------------------------------------------


def test_devices_filter_and_idle_power(fake: FakeNvml, open_nvml: Opener) -> None:
    gpus = [fake.add_gpu() for _ in range(3)]
    config = {
        "devices": [gpus[2].uuid, 0],
        "idle_watts": 70,
        "device_idle_watts": {"2": 55.5, gpus[1].uuid: 60},
    }
    child = open_nvml("full", config)
    assert [index for index, _, _ in child.request("start").ok()] == [0, 2]
    child.request("collect", 0.0).ok()
    samples = tick(child, fake, 1.0).gpus
    assert [(s.index, s.idle_watts) for s in samples] == [(0, 70.0), (2, 55.5)]


def test_devices_filter_matching_nothing(fake: FakeNvml, open_nvml: Opener) -> None:
    gpu = fake.add_gpu()
    child = open_nvml("full", {"devices": ["3", "GPU-nope"], "required": True})
    reply = child.request("start")
    assert reply.error == (
        "ComponentError",
        "none of the configured devices (3, GPU-nope) is a GPU on this host; "
        f"found: 0 ({gpu.uuid})",
    )
    assert warnings(reply) == [
        "nvml: configured GPU 3 is not on this host; ignored",
        "nvml: configured GPU GPU-nope is not on this host; ignored",
    ]
    assert child.request("calls", "nvmlShutdown").ok() == 1  # what start took is released


def test_config_errors_name_the_path() -> None:
    def error(raw: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as err:
            decode(NvmlConfig, raw, "receivers.nvml")
        return str(err.value)

    assert error({"max_watts": 0}) == "receivers.nvml.max_watts: must be greater than 0, got 0"
    assert error({"devices": [0, "gpu0"]}) == (
        'receivers.nvml.devices[1]: "gpu0" is neither a GPU index (0, 1, ...) nor a UUID (GPU-...)'
    )
    assert error({"idle_watts": -1}) == (
        "receivers.nvml.idle_watts: must be 0 or more and below max_watts (3000), got -1"
    )
    assert error({"max_watts": 500, "device_idle_watts": {"1": 600}}) == (
        "receivers.nvml.device_idle_watts.1: must be 0 or more and below max_watts (500), got 600"
    )
    assert error({"device_idle_watts": {"first": 60}}) == (
        'receivers.nvml.device_idle_watts.first: "first" is neither a GPU index (0, 1, ...) '
        "nor a UUID (GPU-...)"
    )
    assert error({"idle": 60}) == (
        "receivers.nvml.idle: unknown key (known keys: device_idle_watts, devices, idle_watts, "
        "max_watts, required)"
    )
    assert decode(NvmlConfig, None, "receivers.nvml") == NvmlConfig()
    assert decode(NvmlConfig, {"devices": [1]}, "receivers.nvml").devices == ["1"]


# -- start-up failures: a clear message, never a crash --------------------------------------


def test_no_library_on_this_host() -> None:
    """For real: the child starts without LD_LIBRARY_PATH, so only the system's paths count."""
    with NvmlProcess(None, None) as child:
        child.request("create", {"required": True}).ok()
        start = child.request("start")
        doctor = child.request("doctor").ok()
    with NvmlProcess(None, None) as child:  # not required: a warning, no GPU, no crash
        child.request("create", None).ok()
        optional = child.request("start")
        empty = child.request("collect", 0.0).ok()
    if ctypes.util.find_library("nvidia-ml") is not None:  # a host with the NVIDIA driver
        assert start.error is None or start.error[0] == "ComponentError"
        assert doctor.available or doctor.detail == start.error[1]  # type: ignore[index]
        return
    message = (
        "cannot load the NVML library libnvidia-ml.so.1: libnvidia-ml.so.1: cannot open "
        f"shared object file: No such file or directory; {INSTALL_FIX}"
    )
    assert start.error == ("ComponentError", message)
    assert doctor == nvml.Availability(False, message)
    assert "install the NVIDIA driver" in message
    assert optional.error is None
    assert warnings(optional) == [f"nvml: {message}; no GPU data from this receiver"]
    assert empty.gpus == []


def test_driver_not_loaded(fake: FakeNvml, open_nvml: Opener) -> None:
    fake.errors["nvmlInitWithFlags"] = DRIVER_NOT_LOADED
    child = open_nvml("full", {"required": True})
    message = (
        "nvmlInit failed: Driver Not Loaded: the NVIDIA kernel driver is not loaded (no NVIDIA "
        "GPU on this host, or the driver is not installed for this kernel)"
    )
    assert child.request("start").error == ("ComponentError", message)
    assert child.request("doctor").ok() == nvml.Availability(False, message)


def test_no_gpu(fake: FakeNvml, open_nvml: Opener) -> None:
    child = open_nvml("full", {"required": True})
    message = "NVML (driver 580.159.04) found no GPU on this host"
    assert child.request("start").error == ("ComponentError", message)
    assert child.request("doctor").ok() == nvml.Availability(False, message)
    assert child.request("calls", "nvmlShutdown").ok() == 2  # start and doctor both released


def test_a_gpu_nvml_cannot_describe_is_left_out(fake: FakeNvml, open_nvml: Opener) -> None:
    fake.add_gpu().errors["nvmlDeviceGetUUID"] = GPU_IS_LOST
    good = fake.add_gpu()
    child = open_nvml()
    reply = child.request("start")
    assert reply.ok() == [(1, good.uuid, H100)]
    assert warnings(reply) == ["nvml: GPU 0 left out: NVML cannot describe it: GPU is lost"]


def test_doctor_and_shutdown(fake: FakeNvml, open_nvml: Opener) -> None:
    first, second = fake.add_gpu(), fake.add_gpu(name="NVIDIA L4")
    child = open_nvml()
    assert child.request("doctor").ok() == nvml.Availability(
        True,
        f"2 GPUs (driver 580.159.04): 0 {H100} {first.uuid}; 1 NVIDIA L4 {second.uuid}",
    )
    child.request("start").ok()
    child.request("shutdown").ok()
    child.request("shutdown").ok()  # twice is harmless: NVML is released once
    assert child.request("calls", "nvmlShutdown").ok() == 2  # doctor's and the receiver's
    assert child.request("calls", "nvmlInitWithFlags").ok() == 2


def test_factory() -> None:
    factory = nvml.factory
    assert (factory.type, factory.config_class, factory.doctor) == (
        "nvml",
        NvmlConfig,
        nvml.doctor,
    )
    receiver = factory.create("nvml/gpus", NvmlConfig(), HostSettings())
    assert isinstance(receiver, nvml.NvmlReceiver) and receiver.name == "nvml/gpus"


# -- the averaging rule alone ------------------------------------------------------------------


def sample(pid: int, stamp: int, sm: int) -> SimpleNamespace:
    return SimpleNamespace(pid=pid, timeStamp=stamp, smUtil=sm)


def test_average_sm_util() -> None:
    samples = [
        sample(1, 10, 100),
        sample(1, 20, 50),
        sample(1, 20, 50),  # a duplicate: counted once
        sample(2, 21, 30),
        sample(0, 0, 0),  # padding
        sample(3, 5, 100),  # older than the last seen
    ]
    assert average_sm_util(samples, 5) == ({1: 75.0, 2: 15.0}, 21)
    assert average_sm_util([], 7) == ({}, 7)
    assert average_sm_util([sample(0, 0, 0)], 0) == ({}, 0)


def test_the_fake_speaks_pynvml_structs(fake: FakeNvml, open_nvml: Opener) -> None:
    """Every field of the fake's C structs arrives in pynvml's ctypes structs intact."""
    gpu = fake.add_gpu()
    gpu.processes = [(4_000_000_001, (1 << 40) + 3, 7, 5), (12, 0, 1, 2)]
    gpu.samples = [(99, T0 + 1, 91, 31, 2, 3), (98, T0 + 2, 11, 12, 13, 14)]
    gpu.util_pad = 2
    child = open_nvml()
    result, _, _ = child.request("pynvml", "nvmlDeviceGetComputeRunningProcesses_v3").ok()
    info = ("pid", "usedGpuMemory", "gpuInstanceId", "computeInstanceId")
    assert result == [dict(zip(info, p, strict=True)) for p in gpu.processes]
    result, _, _ = child.request("pynvml", "nvmlDeviceGetProcessUtilization", T0).ok()
    util = ("pid", "timeStamp", "smUtil", "memUtil", "encUtil", "decUtil")
    assert result == [dict(zip(util, s, strict=True)) for s in gpu.samples]
    result, _, _ = child.request("pynvml", "nvmlDeviceGetProcessUtilization", T0 + 1).ok()
    assert [s["pid"] for s in result] == [98]
    assert child.request("pynvml", "nvmlDeviceGetTotalEnergyConsumption").ok()[0] == 5_000_000
    assert os.path.exists(build("full") / "libnvidia-ml.so.1")

"""The vm level: hypervisor processes recognised from their command lines, as Kepler does.

The end-to-end test starts a real QEMU guest (Debian's qemu-system-x86, TCG, so no
/dev/kvm is needed) whose boot sector is a jump to itself: the vCPU spins, and QEMU
uses CPU time like any guest under load.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_kepler.component import HostSettings
from otel_kepler.data import Batch, WorkloadEnergy
from otel_kepler.processors.attribution import AttributionConfig, AttributionProcessor
from otel_kepler.processors.vm import VirtualMachine, VmDetector, from_cmdline, may_be_hypervisor
from otel_kepler.receivers.procfs import ProcfsReceiver
from otel_kepler.receivers.rapl import RaplConfig, RaplReceiver
from tests.sysfs_fixtures import RaplTree

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
QEMU = "qemu-system-x86_64"
GUEST_UUID = str(uuid.UUID("6f1c2b1e-93a4-4c35-9a8e-0d2f64b1c7aa"))
PACKAGE_W = 50.0
IDLE_W = 10.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A QEMU guest spinning in its boot sector; stopped (and reaped) after the test."""
    binary = shutil.which(QEMU)
    if binary is None:
        pytest.fail(f"{QEMU} not found: run scripts/install-test-deps.sh (qemu-system-x86)")
    sector = bytearray(512)
    sector[0:2] = b"\xeb\xfe"  # jmp $
    sector[510:512] = b"\x55\xaa"  # boot signature
    image = tmp_path / "spin.img"
    image.write_bytes(bytes(sector))
    args = [
        binary, "-accel", "tcg", "-nographic", "-nodefaults", "-m", "64",
        "-name", "guest=testvm,debug-threads=on", "-uuid", GUEST_UUID,
        "-drive", f"file={image},format=raw,if=ide",
    ]  # fmt: skip
    child = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while cpu_seconds(child.pid) < 0.3:  # firmware done, the guest spins
            if child.poll() is not None:
                assert child.stderr is not None
                pytest.fail(f"{QEMU} exited {child.returncode}: {child.stderr.read()!r}")
            if time.monotonic() > deadline:
                pytest.fail(f"{QEMU} used no CPU time in 30 s")
            time.sleep(0.1)
        yield child
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if child.stderr is not None:
            child.stderr.close()


def by_level(batch: Batch, level: str) -> list[WorkloadEnergy]:
    return [w for w in batch.workloads if w.level == level]


def our_vm(batch: Batch) -> list[WorkloadEnergy]:
    """The test's guest (the machine may run other guests)."""
    return [w for w in by_level(batch, "vm") if w.attributes["vm_id"] == GUEST_UUID]


def test_a_qemu_guest_is_a_vm_whose_energy_follows_its_cpu_time(
    tmp_path: Path, qemu: subprocess.Popen[bytes]
) -> None:
    tree = RaplTree(tmp_path / "sys")
    tree.add_socket()
    rapl = RaplReceiver("rapl", RaplConfig(), HostSettings(sysfs=tree.sysfs))
    procfs = ProcfsReceiver("/proc")
    rapl.start()
    procfs.start()
    config = AttributionConfig(
        levels=["node", "process", "vm"], idle="fixed", idle_watts={"package": IDLE_W}
    )
    attribution = AttributionProcessor(config, node_name="n1", procfs="/proc")
    last = time.monotonic()
    qemu_cpu = [cpu_seconds(qemu.pid)]  # read right after each collect: the same interval

    def tick(seconds: float) -> tuple[Batch, float]:
        nonlocal last
        time.sleep(seconds)
        usage = procfs.collect()
        if qemu.poll() is None:
            qemu_cpu.append(cpu_seconds(qemu.pid))
        now = time.monotonic()
        dt, last = now - last, now
        tree.advance_all({"package": PACKAGE_W}, dt)
        batch = Batch(time.time_ns(), dt, "n1")
        batch.add(usage)
        batch.add(rapl.collect())
        attribution.process(batch)
        return batch, dt

    tick(0.0)
    seen = 0.0  # QEMU's CPU seconds as the receiver saw them
    for _ in range(4):
        batch, dt = tick(0.8)
        (vm,) = our_vm(batch)
        assert vm.attributes == {
            "vm_id": GUEST_UUID,
            "vm_name": "testvm",
            "hypervisor": "kvm",
            "node_name": "n1",
        }
        assert vm.state == "running"
        active = batch.node_zones[0].interval_joules - IDLE_W * dt  # RAPL's 61 uJ steps
        sample = batch.processes[qemu.pid]
        all_used = sum(p.cpu_delta for p in batch.processes.values())
        assert sample.cpu_delta > 0
        # exactly its share of the active energy by the CPU time the receiver saw...
        tick_joules = vm.watts["package"] * dt
        assert tick_joules == pytest.approx(active * sample.cpu_delta / all_used, rel=1e-9)
        seen += sample.cpu_delta
        (process,) = [w for w in by_level(batch, "process") if w.attributes["pid"] == str(qemu.pid)]
        assert process.attributes["type"] == "vm"
        assert process.attributes["vm_id"] == GUEST_UUID
        assert process.attributes["comm"] == "qemu-system-x86"
        assert process.joules == pytest.approx(vm.joules, rel=1e-12)
        for other in by_level(batch, "process"):  # whatever else runs on this machine
            attrs = other.attributes
            if attrs["container_id"]:
                assert attrs["type"] == "container"
            elif attrs["type"] != "regular":  # only hypervisors are vm processes
                assert (attrs["type"], attrs["comm"][:12]) == ("vm", "qemu-system-")
    # ...which is the CPU time the test measured itself. The test reads it after the
    # receiver's scan of every process, whose length varies on a busy machine: allow 10%
    # and two clock ticks at each end of the four intervals.
    measured = qemu_cpu[-1] - qemu_cpu[-5]
    assert seen == pytest.approx(measured, rel=0.10, abs=4 / CLOCK_TICKS)
    qemu.terminate()
    qemu.wait(timeout=10)
    batch, _ = tick(0.2)
    (vm,) = our_vm(batch)
    assert vm.state == "terminated"
    batch, _ = tick(0.2)
    assert our_vm(batch) == []


# -- Kepler's rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (
            "/usr/bin/qemu-system-x86_64 -name guest=web-1,debug-threads=on -uuid "
            "df12672f-fedb-4f6f-9d51-0166868835fb -m 4096",
            VirtualMachine("df12672f-fedb-4f6f-9d51-0166868835fb", "web-1", "kvm"),
        ),
        ("/usr/libexec/qemu-kvm -name db -m 1024", VirtualMachine("db", "db", "kvm")),
        ("/usr/bin/kvm -name=legacy", VirtualMachine("legacy", "legacy", "kvm")),
        ("qemu-system-aarch64 -name guest=arm", VirtualMachine("arm", "arm", "kvm")),
        (
            "/usr/bin/qemu-system-x86_64 -m 512",
            VirtualMachine("2f7573722f62696e", "kvm-2f757372", "kvm"),
        ),
        (
            "/usr/lib/xen/bin/qemu-system-i386 -xen-domid 7 -name guest=dom7",
            VirtualMachine("7", "dom7", "xen"),
        ),
        (
            "/usr/lib/virtualbox/VBoxHeadless --comment ci-box --startvm "
            "0c2b6a5e-1111-4222-8333-944455556666 --vrde config",
            VirtualMachine("0c2b6a5e-1111-4222-8333-944455556666", "ci-box", "virtualbox"),
        ),
        (
            "/usr/lib/vmware/bin/vmware-vmx -s x=y /vmfs/volumes/ds1/app/app.vmx",
            VirtualMachine("app", "app", "vmware"),
        ),
        ("/usr/bin/python3 qemu-system-x86_64.py", None),
        ("/usr/bin/qemu-img convert a b", None),
    ],
)
def test_command_lines(cmdline: str, expected: VirtualMachine | None) -> None:
    assert from_cmdline(cmdline.split()) == expected


def test_only_hypervisor_comms_have_their_cmdline_read(tmp_path: Path) -> None:
    assert may_be_hypervisor("qemu-system-x86")
    assert may_be_hypervisor("kvm")
    assert may_be_hypervisor("VBoxHeadless")
    assert not may_be_hypervisor("python3")
    assert not may_be_hypervisor("kvm-pit/1234")  # a kernel thread
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "cmdline").write_bytes(b"/usr/bin/qemu-system-x86_64\0-name\0vm42\0")
    detector = VmDetector(str(proc))
    assert detector.detect(42, "qemu-system-x86") == VirtualMachine("vm42", "vm42", "kvm")
    assert detector.detect(42, "bash") is None  # not read at all
    assert detector.detect(43, "qemu-system-x86") is None  # ended meanwhile

"""Virtual machines on this node: which processes are hypervisors, and which guest each runs.

Recognised as Kepler recognises them, from the process's command line:

* QEMU/KVM (hypervisor ``kvm``): ``qemu-system-<arch>``, ``qemu-kvm`` or ``kvm``.
  vm_id is the value of ``-uuid``, else the guest's name; vm_name is the ``guest=``
  part of ``-name guest=NAME,...``, else the whole ``-name`` value (``-name=NAME``
  too). A QEMU that carries ``-xen-domid`` is a Xen device model (hypervisor
  ``xen``), whose vm_id is that domain id, else the name.
* VirtualBox (``virtualbox``): ``VBoxHeadless``, ``VBoxSDL``, ``VirtualBoxVM``; vm_id
  from ``--startvm``, vm_name from ``--comment``.
* VMware (``vmware``): ``vmware-vmx``; vm_id and vm_name are the ``.vmx`` file's name.

Without an id, the id is the first 16 hex digits of the command line's bytes;
without a name, ``<hypervisor>-<first 8 characters of the id>``.

Unlike Kepler, a bare program name in argv[0] (QEMU started through $PATH) is
recognised too. Only processes whose ``comm`` names one of these programs have
their ``/proc/PID/cmdline`` read, once per process (the attribution processor asks
once per pid and start time).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

KVM = "kvm"
XEN = "xen"
VIRTUALBOX = "virtualbox"
VMWARE = "vmware"

#: comm is the program name cut to 15 characters: qemu-system-x86_64 is "qemu-system-x86"
_COMM = re.compile(r"^(qemu-system-.*|qemu-kvm|kvm|VBoxHeadless|VBoxSDL|VirtualBoxVM|vmware-vmx)$")
_PROGRAMS = (
    (re.compile(r"(bin/qemu-system-\w+|libexec/qemu-kvm|bin/kvm)"), KVM),
    (re.compile(r"virtualbox/(VBoxHeadless|VBoxSDL|VirtualBoxVM)"), VIRTUALBOX),
    (re.compile(r"bin/vmware-vmx"), VMWARE),
)
_BARE = (
    (re.compile(r"^(qemu-system-\w+|qemu-kvm|kvm)$"), KVM),
    (re.compile(r"^(VBoxHeadless|VBoxSDL|VirtualBoxVM)$"), VIRTUALBOX),
    (re.compile(r"^vmware-vmx$"), VMWARE),
)


@dataclass(frozen=True, slots=True)
class VirtualMachine:
    id: str
    name: str
    hypervisor: str


def may_be_hypervisor(comm: str) -> bool:
    """Whether a process of this comm is worth reading the command line of."""
    return _COMM.match(comm) is not None


def from_cmdline(args: list[str]) -> VirtualMachine | None:
    """The guest a hypervisor's command line runs; None when it is no hypervisor."""
    if not args:
        return None
    hypervisor = _hypervisor(args)
    if hypervisor is None:
        return None
    if hypervisor == KVM and "-xen-domid" in args:
        hypervisor = XEN
    vm_id = _vm_id(args, hypervisor) or " ".join(args).encode().hex()[:16]
    name = _vm_name(args, hypervisor) or f"{hypervisor}-{vm_id[:8]}"
    return VirtualMachine(vm_id, name, hypervisor)


def _hypervisor(args: list[str]) -> str | None:
    full = " ".join(args)
    program = os.path.basename(args[0])
    for pattern, hypervisor in _PROGRAMS:
        if pattern.search(program) or pattern.search(full):
            return hypervisor
    for pattern, hypervisor in _BARE:
        if pattern.match(program):
            return hypervisor
    return None


def _vm_id(args: list[str], hypervisor: str) -> str:
    if hypervisor == KVM:
        return _value_after(args, "-uuid") or _qemu_name(args)
    if hypervisor == XEN:
        return _value_after(args, "-xen-domid") or _qemu_name(args)
    if hypervisor == VIRTUALBOX:
        return _option(args, "startvm") or _option(args, "comment")
    return _vmx_name(args)


def _vm_name(args: list[str], hypervisor: str) -> str:
    if hypervisor in (KVM, XEN):
        return _qemu_name(args)
    if hypervisor == VIRTUALBOX:
        return _option(args, "comment")
    return _vmx_name(args)


def _value_after(args: list[str], flag: str) -> str:
    for i, arg in enumerate(args[:-1]):
        if arg == flag:
            return args[i + 1]
    return ""


def _option(args: list[str], name: str) -> str:
    """VirtualBox options: ``--startvm X``, ``-startvm X``."""
    for i, arg in enumerate(args[:-1]):
        if arg.lstrip("-") == name:
            return args[i + 1]
    return ""


def _qemu_name(args: list[str]) -> str:
    for i, arg in enumerate(args):
        if arg == "-name" and i + 1 < len(args):
            value = args[i + 1]
            for part in value.split(","):
                if part.startswith("guest="):
                    return part[len("guest=") :]
            return value
        if arg.startswith("-name="):
            return arg[len("-name=") :]
    return ""


def _vmx_name(args: list[str]) -> str:
    for arg in args:
        if arg.endswith(".vmx"):
            return os.path.basename(arg)[: -len(".vmx")]
    return ""


class VmDetector:
    """Reads the command line of processes whose comm names a hypervisor."""

    def __init__(self, procfs: str = "/proc") -> None:
        self.procfs = procfs
        self._warned = False

    def detect(self, pid: int, comm: str) -> VirtualMachine | None:
        if not may_be_hypervisor(comm):
            return None
        path = f"{self.procfs}/{pid}/cmdline"
        try:
            with open(path, "rb") as file:
                raw = file.read()
        except FileNotFoundError:
            return None  # it ended meanwhile
        except OSError as err:
            if not self._warned:
                self._warned = True
                log.warning(
                    "attribution: cannot read %s (%s): hypervisor processes are not "
                    "recognised as VMs",
                    path, err.strerror or err,
                )  # fmt: skip
            return None
        args = [a.decode("utf-8", "replace") for a in raw.split(b"\0")]
        while args and not args[-1]:
            args.pop()
        return from_cmdline(args)

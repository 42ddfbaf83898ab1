"""Loading, reading and closing the I/O programs of :mod:`.io_program`.

The socket-buffer programs are attached to the cgroup through BPF links
(``bpf_link_create``), not the older ``BPF_PROG_ATTACH``: a link lives as long as
its file descriptor, so the programs leave the cgroup when the agent closes them or
dies, and never stay attached to a machine nobody reads them on.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from otel_kepler import memory
from otel_kepler.component import ComponentError

from . import io_program
from .loader import captured_stderr

log = logging.getLogger(__name__)

#: enum bpf_attach_type
BPF_CGROUP_INET_INGRESS = 0
BPF_CGROUP_INET_EGRESS = 1


@dataclass(slots=True)
class IoDrained:
    """One tick's read of the I/O maps."""

    softirqs: dict[int, tuple[int, int, int]]  # tgid -> net_tx, net_rx, block (interval)
    net: dict[int, tuple[int, int]]  # cgroup id -> rx_bytes, tx_bytes (cumulative)


class IoProbe:
    """The softirq counter, and (with ``cgroup_root``) the socket-buffer byte counters."""

    def __init__(
        self,
        bcc: ModuleType,
        max_processes: int,
        softirqs: bool,
        cgroup_root: str | None,
        max_cgroups: int = 16384,
    ) -> None:
        self.bpf: Any = None
        self._links: list[int] = []
        self.softirqs = softirqs
        self.network = cgroup_root is not None
        self._lib = bcc.libbcc.lib
        self._lib.bpf_link_create.restype = ctypes.c_int
        self._lib.bpf_link_create.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        cflags = [f"-DMAX_PROCESSES={max_processes}", f"-DMAX_CGROUPS={max_cgroups}"]
        failure: Exception | None = None
        with captured_stderr() as said:
            try:
                self.bpf = bcc.BPF(text=io_program.SOURCE.encode(), cflags=cflags)
                if softirqs:
                    self.bpf.attach_tracepoint(
                        tp=b"irq:softirq_entry", fn_name=io_program.SOFTIRQ_FN.encode()
                    )
                if cgroup_root is not None:
                    self._attach_cgroup(bcc, cgroup_root)
            except Exception as err:  # bcc raises plain Exception for every failure
                failure = err
        if failure is not None:
            self.close()
            lines = [line.strip() for line in said[0].splitlines() if line.strip()]
            extra = f"; bcc said: {' | '.join(lines[-4:])}" if lines else ""
            raise ComponentError(f"the BPF I/O programs failed to load: {failure}{extra}")
        memory.trim()  # the compiler's working memory, freed now that the programs are loaded
        self._softirq_map = self.bpf[b"softirqs"]
        self._net_map = self.bpf[b"net_bytes"]
        self._batch = True

    def _attach_cgroup(self, bcc: ModuleType, root: str) -> None:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, kind in (
                (io_program.INGRESS_FN, BPF_CGROUP_INET_INGRESS),
                (io_program.EGRESS_FN, BPF_CGROUP_INET_EGRESS),
            ):
                function = self.bpf.load_func(name.encode(), bcc.BPF.CGROUP_SKB)
                link = self._lib.bpf_link_create(function.fd, fd, kind, None)
                if link < 0:
                    code = ctypes.get_errno() or -link
                    raise ComponentError(
                        f"cannot attach {name} to the cgroup {root}: {os.strerror(code)}"
                    )
                self._links.append(link)
        finally:
            os.close(fd)

    def read(self) -> IoDrained:
        """The softirqs since the last read (the map is emptied) and the byte counters."""
        softirqs: dict[int, tuple[int, int, int]] = {}
        if self.softirqs:
            for key, value in self._take(self._softirq_map):
                softirqs[key] = io_program.IRQS.unpack(value)
        net: dict[int, tuple[int, int]] = {}
        if self.network:
            for key, value in self._net_map.items():
                net[_int(key)] = (value.rx_bytes, value.tx_bytes)
        return IoDrained(softirqs, net)

    def forget_cgroups(self, ids: list[int]) -> None:
        """Drop the counters of cgroups that are gone (the map must not fill up)."""
        for cgroup_id in ids:
            try:
                del self._net_map[self._net_map.Key(cgroup_id)]
            except KeyError:
                pass

    def _take(self, table: Any) -> list[tuple[int, bytes]]:
        if self._batch:
            try:
                return [(_int(k), bytes(v)) for k, v in table.items_lookup_and_delete_batch()]
            except Exception as err:  # bcc raises plain Exception
                if "Invalid argument" not in str(err) and errno.EINVAL != getattr(err, "errno", 0):
                    raise
                self._batch = False  # a kernel before 5.6
        taken = []
        for key, value in list(table.items()):
            del table[key]
            taken.append((_int(key), bytes(value)))
        return taken

    def close(self) -> None:
        """Detach everything (links first) and free the programs and maps; idempotent."""
        while self._links:
            os.close(self._links.pop())
        bpf, self.bpf = self.bpf, None
        if bpf is not None:
            bpf.cleanup()


def _int(key: Any) -> int:
    """A map key as an int (bcc gives ctypes values, its batch calls plain ints)."""
    return key if isinstance(key, int) else int(key.value)

"""The child side of :class:`tests.fake_nvml.NvmlProcess`: runs the receiver on request.

    python -m tests.fake_nvml.worker READ_FD WRITE_FD

Each request is ``(operation, args)``; each reply ``(value, error, logs)`` where error
is ``(class name, message)`` of what the operation raised and logs the records the
receiver's logger emitted meanwhile. The receiver's clock is a number the ``collect``
request moves, so intervals are exact.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import pynvml

from otel_kepler.component import HostSettings
from otel_kepler.receivers import nvml
from otel_kepler.schema import decode


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelname, record.getMessage()))


class Worker:
    def __init__(self) -> None:
        self.now = 1000.0
        self.receiver: nvml.NvmlReceiver | None = None

    def clock(self) -> float:
        return self.now

    def create(self, raw: dict[str, Any] | None = None) -> None:
        config = decode(nvml.NvmlConfig, raw, "receivers.nvml")
        self.receiver = nvml.NvmlReceiver("nvml", config, HostSettings(), self.clock)

    def start(self) -> list[tuple[int, str, str]]:
        assert self.receiver is not None
        self.receiver.start()
        devices: list[tuple[int, str, str]] = self.receiver.devices
        return devices

    def collect(self, advance: float = 0.0) -> Any:
        assert self.receiver is not None
        self.now += advance
        return self.receiver.collect()

    def shutdown(self) -> None:
        assert self.receiver is not None
        self.receiver.shutdown()

    def info(self, index: int) -> tuple[list[nvml.MigInstance], bool]:
        assert self.receiver is not None
        return self.receiver.mig_instances(index), self.receiver.energy_counter(index)

    def doctor(self) -> nvml.Availability:
        return nvml.doctor(HostSettings())

    def calls(self, name: str) -> int:
        """How often the fake library saw ``name`` called."""
        library = ctypes.CDLL(nvml.LIBRARY)  # the one already loaded: same soname
        library.fake_nvml_calls.restype = ctypes.c_ulong
        return int(library.fake_nvml_calls(name.encode()))

    def pynvml(self, function: str, *args: Any) -> tuple[Any, str, bool]:
        """Call a pynvml function on GPU 0 directly: (result, "", False), structs as dicts
        of their fields, or (error class name, its module, is NVMLError_FunctionNotFound)."""
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            result = getattr(pynvml, function)(handle, *args)
            return plain(result), "", False
        except Exception as err:
            found = isinstance(err, pynvml.NVMLError_FunctionNotFound)
            return type(err).__name__, type(err).__module__, found
        finally:
            pynvml.nvmlShutdown()


def plain(value: Any) -> Any:
    """pynvml results made picklable: structs (and friendly objects) become dicts."""
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, ctypes.Structure):
        return {name: getattr(value, name) for name, *_ in value._fields_}
    if isinstance(value, pynvml.nvmlFriendlyObject):
        return dict(vars(value))
    return value


def main(read_fd: int, write_fd: int) -> None:
    requests = Connection(read_fd, writable=False)
    replies = Connection(write_fd, readable=False)
    records = Records()
    logger = logging.getLogger(nvml.__name__)
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    worker = Worker()
    while True:
        operation, args = requests.recv()
        if operation == "exit":
            return
        method: Callable[..., Any] = getattr(worker, operation)
        records.records = []
        try:
            replies.send((method(*args), None, records.records))
        except Exception as err:
            replies.send((None, (type(err).__name__, str(err)), records.records))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))

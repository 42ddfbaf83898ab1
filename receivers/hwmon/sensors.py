"""Reading hwmon attribute files: once per tick, kept open and re-read with ``pread``."""

from __future__ import annotations

import logging
import os
import resource
from dataclasses import dataclass

from otel_kepler.component import ComponentError

log = logging.getLogger("otel_kepler.receivers.hwmon")


#: Sensor files kept open per receiver (at most a quarter of the soft open-files limit);
#: past this they are opened for each read.
MAX_OPEN_FILES = 512


_READ_SIZE = 64


@dataclass(slots=True)
class Sensor:
    """One attribute file read every tick: where it is, its open fd, and this tick's value."""

    path: str
    numeric: bool = True  # parse as an integer; else only ``raw`` is kept
    keep: bool = False  # keep the file open between reads
    fd: int = -1
    value: int | None = None  # None: unreadable this tick (0 for a text file that read)
    raw: bytes = b""
    failing: bool = False  # the last read failed (logged once until it reads again)
    error: str = ""  # why the last read failed: unreadable, empty or not_a_number


class SensorReader:
    """Reads a receiver's sensor files once per tick, kept open and re-read with ``pread``.

    sysfs regenerates an attribute on every read at offset 0, so one ``pread`` per file
    and tick replaces open, read and close. After a failed read the file is closed and
    opened afresh on the next read (its device may have been re-created). Past
    :func:`open_budget` files, or with ``keep_open`` off, files are opened for each read.
    """

    def __init__(self, owner: str, keep_open: bool = True) -> None:
        self.owner = owner
        self.keep_open = keep_open
        self.budget = open_budget() if keep_open else 0
        self.kept = 0  # sensors allowed to stay open
        self.sensors: list[Sensor] = []
        self._by_path: dict[str, Sensor] = {}

    def add(self, path: str, numeric: bool = True) -> Sensor:
        """The sensor of ``path``, read once now: raises OSError or ValueError if unusable."""
        known = self._by_path.get(path)
        if known is not None:
            return known
        sensor = Sensor(path, numeric, keep=self.kept < self.budget)
        data = self._open_and_read(sensor)
        try:
            _parse(sensor, data)
        except ValueError:
            if sensor.fd >= 0:
                os.close(sensor.fd)
            raise
        self.kept += sensor.keep
        self.sensors.append(sensor)
        self._by_path[path] = sensor
        return sensor

    @property
    def open_count(self) -> int:
        return sum(1 for s in self.sensors if s.fd >= 0)

    def read_all(self) -> None:
        for sensor in self.sensors:
            self.read(sensor)

    def read(self, sensor: Sensor) -> None:
        try:
            if sensor.fd >= 0:
                data = os.pread(sensor.fd, _READ_SIZE, 0)
            else:
                data = self._open_and_read(sensor)
            _parse(sensor, data)
        except (OSError, ValueError) as err:
            self._failed(sensor, err)
            return
        if sensor.failing:
            sensor.failing = False
            log.info("%s: %s reads again", self.owner, sensor.path)

    def _open_and_read(self, sensor: Sensor) -> bytes:
        fd = os.open(sensor.path, os.O_RDONLY)
        try:
            data = os.read(fd, _READ_SIZE)
        except OSError:
            os.close(fd)
            raise
        if sensor.keep:
            sensor.fd = fd
        else:
            os.close(fd)
        return data

    def _failed(self, sensor: Sensor, err: Exception) -> None:
        sensor.value = None
        sensor.error = failure(err, sensor.raw)
        if sensor.fd >= 0:
            os.close(sensor.fd)
            sensor.fd = -1
        if not sensor.failing:
            sensor.failing = True
            log.warning(
                "%s: cannot read %s (%s); its series is left out until it reads again",
                self.owner,
                sensor.path,
                reason(err, sensor.raw),
            )

    def close(self) -> None:
        for sensor in self.sensors:
            if sensor.fd >= 0:
                os.close(sensor.fd)
            sensor.fd = -1
        self.sensors = []
        self._by_path = {}
        self.kept = 0


def open_budget() -> int:
    """How many sensor files one receiver may keep open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_OPEN_FILES
    return max(0, min(MAX_OPEN_FILES, soft // 4))


def _parse(sensor: Sensor, data: bytes) -> None:
    """Store what a read returned; ValueError if it is empty or not the number expected."""
    sensor.raw = data
    if not data.strip():
        raise ValueError("empty read")
    sensor.value = int(data) if sensor.numeric else 0


def _read_bytes(path: str) -> bytes:
    """Read a small sysfs file with two system calls and no buffering."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, _READ_SIZE)
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    """A short sysfs text file (name, label, status), stripped."""
    return _read_bytes(path).decode("utf-8", "replace").strip()


def failure(err: Exception, data: bytes = b"") -> str:
    """The ``Contribution.rejected`` reason of a failed read."""
    if isinstance(err, OSError):
        return "unreadable"
    return "empty" if not data.strip() else "not_a_number"


def reason(err: Exception, data: bytes = b"") -> str:
    """Why a read failed, in a few words."""
    if isinstance(err, OSError):
        return (err.strerror or type(err).__name__).lower()
    if not data.strip():
        return "empty read"
    return f"not a number: {data.strip()[:24].decode('ascii', 'replace')!r}"


def listdir(path: str) -> list[str]:
    """Entries of ``path``, sorted; none if it does not exist."""
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as err:
        raise ComponentError(f"cannot list {path}: {reason(err)}") from None


def peek(path: str) -> bytes:
    """What a file holds now, for an error message; empty if it cannot be read."""
    try:
        return _read_bytes(path)
    except OSError:
        return b""

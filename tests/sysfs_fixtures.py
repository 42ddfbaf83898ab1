"""Fixture sysfs trees in the real kernel layout, for tests and benchmarks.

:class:`RaplTree` builds the powercap tree the ``intel_rapl_msr`` driver creates::

    <sysfs>/devices/virtual/powercap/intel-rapl/                  control type (no energy_uj)
    <sysfs>/devices/virtual/powercap/intel-rapl/intel-rapl:0/     zone: name "package-0"
    <sysfs>/devices/virtual/powercap/intel-rapl/intel-rapl:0/intel-rapl:0:0/   sub-zone
    <sysfs>/devices/virtual/powercap/intel-rapl-mmio/intel-rapl-mmio:0/  MMIO duplicate
    <sysfs>/class/powercap/intel-rapl     -> ../../devices/virtual/powercap/intel-rapl
    <sysfs>/class/powercap/intel-rapl:0   -> ../../devices/.../intel-rapl/intel-rapl:0
    <sysfs>/class/powercap/intel-rapl:0:0 -> ../../devices/.../intel-rapl:0/intel-rapl:0:0
    <sysfs>/class/powercap/intel-rapl-mmio:0 (and intel-rapl-mmio) likewise

Every zone directory has ``name``, ``energy_uj`` (root-only since Linux 5.10;
here 0600 so that the fixture can advance it), ``max_energy_range_uj``,
``enabled``, ``constraint_*`` and a ``subsystem`` link back to the class
directory (a cycle, as in the real tree).

Zone ids are hexadecimal, as the kernel names them (``"%s:%x"``): the eleventh package
is ``intel-rapl:a``, its first sub-zone ``intel-rapl:a:0``.

The counter behaves like the hardware: the MSR is a 32-bit count of energy
units, and the kernel reports ``count * unit`` in microjoules, truncated, with
``max_energy_range_uj = 0xFFFFFFFF * unit``. So the reported value wraps from
about ``max_energy_range_uj`` back to about 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

#: max_energy_range_uj of package zones on most Intel machines (2^32 units of 61 uJ).
PACKAGE_MAX_ENERGY_RANGE_UJ = 262143328850
#: max_energy_range_uj of the dram zone on many Xeon servers (15.3 uJ units).
DRAM_MAX_ENERGY_RANGE_UJ = 65712999613

_COUNTER_MODULUS = 1 << 32
_DEVICES = Path("devices", "virtual", "powercap")
_CLASS = Path("class", "powercap")


@dataclass
class FixtureZone:
    """One zone directory and the hardware counter behind it."""

    key: str  # directory name: intel-rapl:0, intel-rapl:0:1, intel-rapl-mmio:0
    name: str  # content of the name file: package-0, core, dram, psys
    path: Path  # the real directory under devices/
    max_energy_range_uj: int
    units: int = 0  # the 32-bit hardware counter, in energy units
    duplicates: list[FixtureZone] = field(default_factory=list)  # MMIO twins

    @property
    def unit_uj(self) -> float:
        return self.max_energy_range_uj / (_COUNTER_MODULUS - 1)

    @property
    def zone(self) -> str:
        """The normalised zone name the receiver reports: package, core, dram..."""
        return "package" if self.name.startswith("package") else self.name

    @property
    def energy_uj(self) -> int:
        return int(self.units * self.unit_uj)

    def write(self) -> None:
        """Replace energy_uj atomically: a reader never sees a half-written file, as in sysfs."""
        target = self.path / "energy_uj"
        scratch = self.path / ".energy_uj.new"
        scratch.write_text(f"{self.energy_uj}\n")
        if target.exists():
            os.chmod(scratch, target.stat().st_mode & 0o7777)
        os.replace(scratch, target)


class RaplTree:
    """A powercap tree under ``sysfs`` (a fixture root standing for /sys).

    Typical use::

        tree = RaplTree(tmp_path / "sys")
        tree.add_socket(dram=True)
        tree.add_socket(dram=True)
        truth = tree.advance_all({"package": 40.0, "dram": 6.0}, seconds=5.0)
        # truth == {"package": 400.0, "dram": 60.0}: both sockets, summed
    """

    def __init__(self, sysfs: Path | str) -> None:
        self.root = Path(sysfs)
        self.sysfs = str(self.root)
        self.powercap = self.root / _CLASS
        self.zones: dict[str, FixtureZone] = {}
        self._sockets = 0

    # -- building -----------------------------------------------------------

    def add_socket(
        self,
        *,
        core: bool = False,
        uncore: bool = False,
        dram: bool = False,
        max_energy_range_uj: int = PACKAGE_MAX_ENERGY_RANGE_UJ,
        energy_uj: int = 0,
    ) -> str:
        """Add ``package-N`` for the next socket N, with the sub-zones asked for.

        Sub-zones are numbered in the order core, uncore, dram, as the driver
        does. Returns the package key (``intel-rapl:N``).
        """
        socket = self._sockets
        self._sockets += 1
        key = self.add_zone(
            f"package-{socket}", max_energy_range_uj=max_energy_range_uj, energy_uj=energy_uj
        )
        for wanted, name in ((core, "core"), (uncore, "uncore"), (dram, "dram")):
            if wanted:
                limit = DRAM_MAX_ENERGY_RANGE_UJ if name == "dram" else max_energy_range_uj
                self.add_zone(name, parent=key, max_energy_range_uj=limit)
        return key

    def add_psys(self, *, max_energy_range_uj: int = PACKAGE_MAX_ENERGY_RANGE_UJ) -> str:
        """Add the top-level ``psys`` (platform) zone of client machines."""
        return self.add_zone("psys", max_energy_range_uj=max_energy_range_uj)

    def add_mmio_duplicate(self, package_key: str = "intel-rapl:0") -> str:
        """Add ``intel-rapl-mmio:N``: the same package counter read through MMIO."""
        package = self.zones[package_key]
        index = sum(1 for k in self.zones if k.startswith("intel-rapl-mmio:"))
        key = f"intel-rapl-mmio:{index:x}"
        control = self._control_type("intel-rapl-mmio")
        zone = self._make_zone(control / key, key, package.name, package.max_energy_range_uj)
        zone.units = package.units
        zone.write()
        package.duplicates.append(zone)
        return key

    def add_zone(
        self,
        name: str,
        *,
        parent: str | None = None,
        max_energy_range_uj: int = PACKAGE_MAX_ENERGY_RANGE_UJ,
        energy_uj: int = 0,
    ) -> str:
        """Add a zone named ``name``: top-level, or a sub-zone of ``parent``."""
        if parent is None:
            index = sum(1 for k in self.zones if k.count(":") == 1 and "mmio" not in k)
            key = f"intel-rapl:{index:x}"
            directory = self._control_type("intel-rapl") / key
        else:
            index = sum(1 for k in self.zones if k.startswith(parent + ":"))
            key = f"{parent}:{index:x}"
            directory = self.zones[parent].path / key
        self._make_zone(directory, key, name, max_energy_range_uj)
        self.set_energy_uj(key, energy_uj)
        return key

    # -- running ------------------------------------------------------------

    def advance(self, key: str, joules: float) -> None:
        """Let ``joules`` flow through zone ``key``: the counter wraps as hardware does."""
        zone = self.zones[key]
        for target in (zone, *zone.duplicates):
            units = round(joules * 1e6 / target.unit_uj)
            target.units = (target.units + units) % _COUNTER_MODULUS
            target.write()

    def advance_all(self, watts_by_zone: dict[str, float], seconds: float) -> dict[str, float]:
        """Run at a known power for ``seconds``; return the joules added per zone name.

        A key is a zone key (``intel-rapl:1``), or a zone name (``package``,
        ``dram``) meaning that power on *every* socket's zone of that name.
        The result sums sockets, as the receiver does: it is the truth to
        compare the receiver's readings with.
        """
        truth: dict[str, float] = {}
        for wanted, watts in watts_by_zone.items():
            for zone in self._select(wanted):
                self.advance(zone.key, watts * seconds)
                truth[zone.zone] = truth.get(zone.zone, 0.0) + watts * seconds
        return truth

    def set_energy_uj(self, key: str, value: int) -> None:
        """Set the counter to ``value`` microjoules: a reset, or a bogus jump."""
        zone = self.zones[key]
        zone.units = round(value / zone.unit_uj) % _COUNTER_MODULUS
        zone.write()

    def write_energy_text(self, key: str, text: str) -> None:
        """Make energy_uj read ``text`` (garbage, empty, a value out of range) until the
        next :meth:`advance` or :meth:`restore`; the hardware counter is unchanged."""
        zone = self.zones[key]
        target = zone.path / "energy_uj"
        scratch = zone.path / ".energy_uj.new"
        scratch.write_text(text)
        os.chmod(scratch, 0o600)
        os.replace(scratch, target)

    def remove_energy_file(self, key: str) -> None:
        """energy_uj vanishes (until the next :meth:`advance` or :meth:`restore`)."""
        (self.zones[key].path / "energy_uj").unlink(missing_ok=True)

    def restore(self, key: str) -> None:
        """energy_uj reads the hardware counter again."""
        zone = self.zones[key]
        zone.write()
        os.chmod(zone.path / "energy_uj", 0o600)

    def energy_uj(self, key: str) -> int:
        return self.zones[key].energy_uj

    def zone_dir(self, key: str) -> Path:
        """The zone's path as a reader sees it, through the class directory."""
        return self.powercap / key

    def energy_file(self, key: str) -> Path:
        return self.zone_dir(key) / "energy_uj"

    def keys(self, zone: str) -> list[str]:
        """Keys of the (non-MMIO) zones reported as ``zone`` (package, dram...)."""
        return [z.key for z in self._select(zone)]

    # -- helpers ------------------------------------------------------------

    def _select(self, wanted: str) -> list[FixtureZone]:
        if wanted in self.zones:
            return [self.zones[wanted]]
        return [z for z in self.zones.values() if z.zone == wanted and "mmio" not in z.key]

    def _control_type(self, name: str) -> Path:
        """The control-type directory (intel-rapl, intel-rapl-mmio), made on first use."""
        directory = self.root / _DEVICES / name
        if not directory.exists():
            directory.mkdir(parents=True)
            (directory / "enabled").write_text("1\n")
            (directory / "uevent").write_text("")
            self._link_subsystem(directory)
            self._link_class(name, directory)
        return directory

    def _make_zone(self, directory: Path, key: str, name: str, max_uj: int) -> FixtureZone:
        directory.mkdir()
        files = {
            "name": name,
            "max_energy_range_uj": str(max_uj),
            "enabled": "1",
            "uevent": "",
            "constraint_0_name": "long_term",
            "constraint_0_power_limit_uw": "150000000",
            "constraint_0_time_window_us": "999424",
            "constraint_0_max_power_uw": "150000000",
        }
        if name.startswith("package"):
            files |= {
                "constraint_1_name": "short_term",
                "constraint_1_power_limit_uw": "180000000",
                "constraint_1_time_window_us": "2440",
                "constraint_1_max_power_uw": "0",
            }
        for file, text in files.items():
            (directory / file).write_text(f"{text}\n" if text else "")
        zone = FixtureZone(key=key, name=name, path=directory, max_energy_range_uj=max_uj)
        zone.write()
        # The kernel makes it 0400 root:root; 0600 keeps it writable by a non-root test run.
        os.chmod(directory / "energy_uj", 0o600)
        self.zones[key] = zone
        self._link_subsystem(directory)
        self._link_class(key, directory)
        return zone

    def _link_class(self, key: str, directory: Path) -> None:
        self.powercap.mkdir(parents=True, exist_ok=True)
        (self.powercap / key).symlink_to(os.path.relpath(directory, self.powercap))

    def _link_subsystem(self, directory: Path) -> None:
        self.powercap.mkdir(parents=True, exist_ok=True)
        (directory / "subsystem").symlink_to(os.path.relpath(self.powercap, directory))

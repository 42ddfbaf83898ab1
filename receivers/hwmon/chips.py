"""hwmon chips: what they are called, which channels they have, which pairs make power."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from .sensors import listdir, read_text, reason

log = logging.getLogger("otel_kepler.receivers.hwmon")


_ATTRIBUTE = re.compile(r"(temp|fan|in|curr|power|energy)(\d+)_([a-z_]+)")


_DIGITS = re.compile(r"\d+")


_NOT_NAME = re.compile(r"[^a-z0-9:_]")


_PMBUS_VOUT = re.compile(r"vout(\d*)")


#: Chips whose driver pairs voltage and current channels by index: inV -> currC of the
#: same rail (shunt voltages and auxiliary inputs are in none of these pairs).
INDEX_PAIRS: dict[str, dict[int, int]] = {
    "ina3221": {1: 1, 2: 2, 3: 3},  # in4..7: shunt voltages
    "ina209": {1: 1},  # in0: shunt voltage
    "ina219": {1: 1},
    "ina226": {1: 1},
    "ina233": {1: 1},
    "ina238": {1: 1},
    "ina260": {1: 1},
    "ltc2945": {1: 1},  # in2: auxiliary ADC
    "ltc2947": {0: 1},
    "ltc2992": {0: 1, 2: 2},  # in1, in3: delta-sense; in4, in5: GPIO
    "ltc4260": {1: 1},
    "ltc4261": {1: 1},
    "ltc4282": {1: 1},
    "adm1275": {1: 1},  # PMBus hot-swap controllers: VIN x the current through the switch
    "adm1276": {1: 1},
    "adm1278": {1: 1},
    "adm1293": {1: 1},
    "max20730": {2: 1},  # PMBus regulators: VOUT (in2) x IOUT (curr1)
    "max20751": {2: 1},
    "mp2975": {1: 1},  # curr2..: per-phase currents
}


@dataclass(frozen=True, slots=True)
class Chip:
    """One hwmon device: its name, instance and attribute files."""

    name: str  # the chip: coretemp
    instance: str  # base name of its device (coretemp.0), or hwmonN without one
    path: str  # <sysfs>/class/hwmon/hwmonN
    files: dict[str, str]  # attribute file name -> path (hwmonN first, then device/)
    #: what names its unlabelled zones (<chip_id>_power1), as Kepler does: the device's
    #: parent and base name (platform_nct6775_656), else the name, else hwmonN
    chip_id: str = ""

    @property
    def key(self) -> str:
        """``<chip>-<device>``: unique on the host and stable across boots."""
        return f"{self.name}-{self.instance}"

    def text(self, attribute: str) -> str | None:
        """A text attribute (a label), or None if absent or unreadable."""
        path = self.files.get(attribute)
        if path is None:
            return None
        try:
            return read_text(path)
        except OSError:
            return None


def find_chips(class_dir: str) -> list[Chip]:
    """Every hwmon device under ``class_dir``, in hwmonN order."""
    chips: list[Chip] = []
    for entry in sorted(listdir(class_dir), key=_number_order):
        chip = read_chip(os.path.join(class_dir, entry))
        if chip is not None:
            chips.append(chip)
    return chips


def read_chip(path: str) -> Chip | None:
    """The chip of ``hwmonN``: named by ``name``, else ``device/name``, else ``hwmonN``."""
    device = os.path.join(path, "device")
    files: dict[str, str] = {}
    for directory in (device, path):  # hwmonN overrides device/ (older drivers use it)
        for entry in listdir(directory):
            if entry == "name" or _ATTRIBUTE.fullmatch(entry):
                files[entry] = os.path.join(directory, entry)
    name_file = files.pop("name", None)
    name = ""
    if name_file is not None:
        try:
            name = read_text(name_file)
        except OSError as err:
            log.warning("hwmon: %s: cannot read %s: %s", path, name_file, reason(err))
    if not name:
        name = os.path.basename(path)
        log.info("hwmon: %s has no name: called %s", path, name)
    if os.path.isdir(device):
        instance = os.path.basename(os.path.realpath(device))
    else:
        instance = os.path.basename(path)
    return Chip(name, instance, path, files, chip_id(path, name))


def chip_id(path: str, name: str) -> str:
    """Kepler's chip name, for unlabelled zones: ``<device parent>_<device>``, cleaned
    (platform_nct6775_656), else the chip's name, else the hwmonN directory."""
    device = os.path.join(path, "device")
    if os.path.exists(device):
        real = os.path.realpath(device)
        base = clean(os.path.basename(real))
        parent = clean(os.path.basename(os.path.dirname(real)))
        if base:
            return f"{parent}_{base}" if parent else base
    return clean(name) or clean(os.path.basename(os.path.realpath(path)))


def _number_order(entry: str) -> tuple[int, str]:
    digits = _DIGITS.findall(entry)
    return (int(digits[-1]) if digits else -1, entry)


def clean(text: str) -> str:
    """A zone name as Kepler makes it: lower case, every character other than a-z, 0-9,
    ``:`` and ``_`` turned into ``_``, no ``_`` at either end (``Package id 0`` ->
    ``package_id_0``, ``VDD-IN`` -> ``vdd_in``)."""
    return _NOT_NAME.sub("_", text.strip().lower()).strip("_")


def normalise(label: str) -> str:
    """A zone name from a label (see :func:`clean`)."""
    return clean(label)


def channel_indexes(chip: Chip) -> dict[str, set[int]]:
    """Kind -> channel indexes with an input (or average) file."""
    found: dict[str, set[int]] = {
        k: set() for k in ("temp", "fan", "in", "curr", "power", "energy")
    }
    for name in chip.files:
        match = _ATTRIBUTE.fullmatch(name)
        if match and match.group(3) in ("input", "average"):
            found[match.group(1)].add(int(match.group(2)))
    return found


@dataclass(frozen=True, slots=True)
class Pair:
    """A voltage channel ``inV`` and the current channel ``currC`` of the same rail."""

    voltage: int
    current: int
    label: str  # the voltage channel's label ("" if none)
    power_label: str = ""  # the chip's own power channel for this rail, if it has one

    def files(self, item: str) -> list[str]:
        return [f"in{self.voltage}_{item}", f"curr{self.current}_{item}"]


def find_pairs(chip: Chip, indexes: dict[str, set[int]]) -> list[Pair]:
    """The voltage x current pairs of ``chip``, by the first rule that applies:

    1. a known chip (:data:`INDEX_PAIRS`): its driver's pairing of indexes;
    2. labels: a voltage and a current channel with the same label (cleaned), or the
       PMBus core's labels ``voutN`` and ``ioutN`` of the same output N.

    An unknown chip without such labels gets no pair: its indexes do not say which
    current flows at which voltage.
    """
    volts = {i for i in indexes["in"] if f"in{i}_input" in chip.files}
    currents = {i for i in indexes["curr"] if f"curr{i}_input" in chip.files}
    if not volts or not currents:
        return []
    rule = INDEX_PAIRS.get(chip.name)
    if rule is not None:
        return [
            Pair(v, c, chip.text(f"in{v}_label") or "")
            for v, c in sorted(rule.items())
            if v in volts and c in currents
        ]
    current_labels: dict[str, int] = {}
    for index in sorted(currents):
        label = clean(chip.text(f"curr{index}_label") or "")
        if label:
            current_labels.setdefault(label, index)
    pairs: list[Pair] = []
    used: set[int] = set()
    for index in sorted(volts):
        label = chip.text(f"in{index}_label") or ""
        key = clean(label)
        if not key:
            continue
        current = current_labels.get(key)
        power_label = ""
        output = _PMBUS_VOUT.fullmatch(key)
        if current is None and output is not None:
            current = current_labels.get(f"iout{output.group(1)}")
            power_label = f"pout{output.group(1)}"
        if current is not None and current not in used:
            used.add(current)
            pairs.append(Pair(index, current, label, power_label))
    return pairs


def pair_zone(chip: Chip, pair: Pair) -> str:
    """The zone of a pair: its voltage label, else ``<chip>_power<V>`` (as Kepler names it)."""
    return clean(pair.label) or f"{chip.chip_id}_power{pair.voltage}"


def power_file(chip: Chip, index: int) -> tuple[str, str]:
    """How channel N measures (energy, average or input) and its file, by preference."""
    if f"energy{index}_input" in chip.files:
        return "energy", f"energy{index}_input"
    if f"power{index}_average" in chip.files:
        return "average", f"power{index}_average"
    return "input", f"power{index}_input"


def enabled(chip: Chip, kind: str, index: int) -> bool:
    """False only where ``<kind>N_enable`` reads 0."""
    return chip.text(f"{kind}{index}_enable") != "0"

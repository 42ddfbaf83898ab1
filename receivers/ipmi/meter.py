"""What the receiver reads from a BMC: DCMI Get Power Reading, or SDR sensors in watts.

DCMI (DCMI 1.5 spec, Get Power Reading): netfn 0x2c, command 0x02, request
``dc 01 00 00`` (group extension, mode 1 "system power statistics"); answer: group
extension, current / minimum / maximum / average power (16-bit, watts), timestamp,
statistics period, and a state byte whose bit 6 says the measurement is active.

SDR (IPMI 2.0, chapters 33 and 43): the repository is read record by record (Get SDR,
netfn 0x0a command 0x23, 16-byte pieces under a reservation); pyghmi's ``SDREntry``
decodes each record. A sensor counts as a power meter when its full record (type 01h)
says: base unit watts, no modifier or rate unit, not a percentage, numeric, a linear
or linearisable formula (no per-reading factors), owned by the BMC (0x20). Its
reading (Get Sensor Reading, netfn 0x04 command 0x2d) goes through that formula.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

from .link import Link, LinkError, Response

log = logging.getLogger(__name__)

#: The zone of the DCMI reading (SDR sensors are zones of their own names).
DCMI_ZONE = "platform"

DCMI_GROUP = 0xDC
NETFN_DCMI = 0x2C
CMD_POWER_READING = 0x02
POWER_READING_REQUEST = bytes([DCMI_GROUP, 0x01, 0x00, 0x00])
_MEASUREMENT_ACTIVE = 0x40

NETFN_STORAGE = 0x0A
CMD_SDR_REPOSITORY_INFO = 0x20
CMD_RESERVE_SDR_REPOSITORY = 0x22
CMD_GET_SDR = 0x23
NETFN_SENSOR = 0x04
CMD_GET_SENSOR_READING = 0x2D

CC_RESERVATION_CANCELLED = 0xC5
BMC_ADDRESS = 0x20
SDR_VERSION = 0x51
FULL_SENSOR_RECORD = 0x01
_LAST_RECORD = 0xFFFF
_HEADER = 5
_PIECE = 16  # bytes per Get SDR: small enough for every BMC's message size
_MAX_RECORDS = 4096  # a repository that never ends is a broken one
_RESERVATION_TRIES = 3


class NoPowerMeter(LinkError):
    """The BMC answers, but offers no power reading this receiver may use."""


class DcmiUnavailable(Exception):
    """The BMC has no usable DCMI power reading; the message says what it answered."""


def completion(code: int) -> str:
    """``0xc1 (Invalid command)``: a completion code with pyghmi's name for it."""
    from pyghmi.ipmi.private import constants

    name = constants.ipmi_completion_codes.get(code)
    return f"{code:#04x} ({name})" if name else f"{code:#04x}"


def parse_power_reading(answer: Response) -> float:
    """Current power in watts from a DCMI Get Power Reading answer; DcmiUnavailable else."""
    if answer.code != 0:
        raise DcmiUnavailable(f"answers DCMI Get Power Reading with {completion(answer.code)}")
    data = answer.data
    if len(data) < 18 or data[0] != DCMI_GROUP:
        raise DcmiUnavailable(
            f"gives a malformed DCMI Get Power Reading answer ({len(data)} bytes: "
            f"{data[:18].hex(' ')})"
        )
    if not data[17] & _MEASUREMENT_ACTIVE:
        raise DcmiUnavailable("reports its DCMI power measurement as not active")
    (watts,) = struct.unpack_from("<H", data, 1)
    return float(watts)


@dataclass(frozen=True, slots=True)
class WattSensor:
    """An SDR sensor in watts: its zone (its name), number, LUN and pyghmi's decoder."""

    zone: str
    number: int
    lun: int
    entry: Any = field(compare=False, repr=False)  # pyghmi.ipmi.sdr.SDREntry


@dataclass(frozen=True, slots=True)
class Meter:
    """How power is read from one BMC: by DCMI, or from these SDR sensors."""

    method: Literal["dcmi", "sdr"]
    sensors: tuple[WattSensor, ...] = ()
    why: str = ""  # for sdr: what the BMC answered to DCMI

    @property
    def zones(self) -> list[str]:
        return [DCMI_ZONE] if self.method == "dcmi" else [s.zone for s in self.sensors]

    def describe(self) -> str:
        if self.method == "dcmi":
            return "DCMI Get Power Reading"
        names = ", ".join(s.zone for s in self.sensors)
        reason = f"; the BMC {self.why}" if self.why else ""
        return f"SDR sensors in watts ({names}){reason}"

    def read(self, link: Link) -> dict[str, float | None]:
        """Watts per zone now; None for a sensor without a reading this time.

        DcmiUnavailable from a DCMI answer with an error is raised as a LinkError.
        """
        if self.method == "dcmi":
            try:
                return {DCMI_ZONE: read_dcmi(link)}
            except DcmiUnavailable as err:
                raise LinkError(f"the BMC at {link.where} {err}") from None
        return {s.zone: read_sensor(link, s) for s in self.sensors}


def read_dcmi(link: Link) -> float:
    return parse_power_reading(link.request(NETFN_DCMI, CMD_POWER_READING, POWER_READING_REQUEST))


def find_meter(
    link: Link,
    method: Literal["auto", "dcmi", "sdr"],
    wanted: list[str],
    cache: dict[bytes, list[WattSensor]],
) -> Meter:
    """DCMI if the BMC answers it (and ``method`` allows), else its SDR sensors in watts.

    ``cache`` keeps decoded repositories by their "last changed" stamps across logins.
    """
    why = ""
    if method in ("auto", "dcmi"):
        try:
            read_dcmi(link)
            return Meter("dcmi")
        except DcmiUnavailable as err:
            if method == "dcmi":
                raise NoPowerMeter(
                    f"the BMC at {link.where} {err} (method: dcmi, no SDR fallback)"
                ) from None
            why = str(err)
    found = watt_sensors(link, cache)
    return Meter("sdr", tuple(_select(link.where, found, wanted, why)), why)


def _select(where: str, found: list[WattSensor], wanted: list[str], why: str) -> list[WattSensor]:
    dcmi = f"{why} and " if why else ""
    if not found:
        raise NoPowerMeter(f"the BMC at {where} {dcmi}has no SDR sensor in watts")
    if not wanted:
        return found
    chosen = [s for s in found if s.zone in wanted]
    names = ", ".join(s.zone for s in found)
    if not chosen:
        raise NoPowerMeter(
            f"the BMC at {where} {dcmi}has none of the configured sensors "
            f"({', '.join(wanted)}); its sensors in watts: {names}"
        )
    missing = [w for w in wanted if w not in {s.zone for s in chosen}]
    if missing:
        log.warning(
            "the BMC at %s has no sensor in watts named %s; its sensors in watts: %s",
            where,
            ", ".join(missing),
            names,
        )
    return chosen


def read_sensor(link: Link, sensor: WattSensor) -> float | None:
    """The sensor's watts now; None when the BMC has no reading for it this time."""
    answer = link.request(NETFN_SENSOR, CMD_GET_SENSOR_READING, bytes([sensor.number]), sensor.lun)
    if answer.code != 0 or len(answer.data) < 2:
        log.debug("sensor %s: Get Sensor Reading answered %s", sensor.zone, completion(answer.code))
        return None
    data = bytearray(answer.data.ljust(3, b"\0"))
    try:
        reading = sensor.entry.decode_sensor_reading(None, data)
    except (ArithmeticError, IndexError, ValueError) as err:
        log.debug("sensor %s: cannot decode %s: %s", sensor.zone, data.hex(" "), err)
        return None
    if reading.unavailable or reading.value is None:
        return None
    return float(reading.value)


# ------------------------------------------------------------------ SDR repository


def watt_sensors(link: Link, cache: dict[bytes, list[WattSensor]]) -> list[WattSensor]:
    """The BMC's sensors in watts, from its SDR repository (or the cache, if unchanged)."""
    info = _checked(link, "Get SDR Repository Info", NETFN_STORAGE, CMD_SDR_REPOSITORY_INFO)
    if len(info) < 13 or info[0] != SDR_VERSION:
        raise NoPowerMeter(
            f"the BMC at {link.where} gives an SDR repository of an unknown version "
            f"({info[:1].hex()})"
        )
    key = link.where.encode() + info[1:3] + info[5:13]  # record count, last add and erase
    if key not in cache:
        cache[key] = _decode(read_repository(link), link.where)
    return cache[key]


def read_repository(link: Link) -> list[bytes]:
    """Every record of the SDR repository, in order."""
    records: list[bytes] = []
    record_id = 0
    while record_id != _LAST_RECORD:
        if len(records) >= _MAX_RECORDS:
            raise NoPowerMeter(f"the SDR repository of the BMC at {link.where} never ends")
        next_id, record = _read_record(link, record_id)
        records.append(record)
        if next_id == record_id:
            raise NoPowerMeter(
                f"the SDR repository of the BMC at {link.where} loops on record {record_id}"
            )
        record_id = next_id
    return records


def _read_record(link: Link, record_id: int) -> tuple[int, bytes]:
    for _ in range(_RESERVATION_TRIES):
        reserved = _checked(
            link, "Reserve SDR Repository", NETFN_STORAGE, CMD_RESERVE_SDR_REPOSITORY
        )
        reservation = int.from_bytes(reserved[:2], "little")
        try:
            next_id, record = _get_sdr(link, reservation, record_id, 0, _HEADER)
            size = _HEADER + record[4]
            while len(record) < size:
                piece = min(_PIECE, size - len(record))
                _, more = _get_sdr(link, reservation, record_id, len(record), piece)
                if not more:
                    raise NoPowerMeter(
                        f"the BMC at {link.where} returns an empty piece of SDR record {record_id}"
                    )
                record += more
            return next_id, bytes(record[:size])
        except _ReservationCancelled:
            continue  # the repository changed under us: reserve again, read the record again
    raise NoPowerMeter(
        f"the BMC at {link.where} cancels every SDR reservation (record {record_id})"
    )


class _ReservationCancelled(Exception):
    pass


def _get_sdr(
    link: Link, reservation: int, record_id: int, offset: int, size: int
) -> tuple[int, bytearray]:
    request = struct.pack("<HHBB", reservation, record_id, offset, size)
    answer = link.request(NETFN_STORAGE, CMD_GET_SDR, request)
    if answer.code == CC_RESERVATION_CANCELLED:
        raise _ReservationCancelled
    if answer.code != 0 or len(answer.data) < 2:
        raise NoPowerMeter(
            f"the BMC at {link.where} answers Get SDR (record {record_id}) with "
            f"{completion(answer.code)}"
        )
    return int.from_bytes(answer.data[:2], "little"), bytearray(answer.data[2:])


def _checked(link: Link, what: str, netfn: int, command: int) -> bytes:
    answer = link.request(netfn, command)
    if answer.code != 0:
        raise NoPowerMeter(f"the BMC at {link.where} answers {what} with {completion(answer.code)}")
    return bytes(answer.data)


def _decode(records: list[bytes], where: str) -> list[WattSensor]:
    from pyghmi.ipmi import sdr
    from pyghmi.ipmi.private import constants

    sensors: list[WattSensor] = []
    names: set[str] = set()
    for record in records:
        if len(record) < _HEADER or record[3] != FULL_SENSOR_RECORD:
            continue
        try:
            entry = sdr.SDREntry(bytearray(record), constants, False, 0, 0)
        except Exception as err:  # noqa: BLE001 - pyghmi's decoder on a foreign record
            log.debug("SDR record of %s skipped: %s: %s", where, type(err).__name__, err)
            continue
        if not _is_watt_meter(entry):
            continue
        if entry.sensor_owner != BMC_ADDRESS:
            log.info(
                "SDR sensor %r of %s is owned by controller %#04x, not the BMC: left out",
                entry.sensor_name,
                where,
                entry.sensor_owner,
            )
            continue
        zone = entry.sensor_name
        if zone in names:  # two sensors of one name: the number tells them apart
            zone = f"{zone} #{entry.sensor_number}"
        names.add(zone)
        sensors.append(WattSensor(zone, entry.sensor_number, entry.sensor_lun, entry))
    return sensors


def _is_watt_meter(entry: Any) -> bool:
    return bool(
        entry.readable
        and entry.baseunit == "W"
        and entry.unit_mod == ""
        and entry.percent == ""
        and entry.sensor_rate == ""
        and entry.numeric_format != 3
        # pyghmi gives an unsigned reading a value only for threshold sensors
        and (entry.numeric_format != 0 or entry.has_thresholds or entry.reading_type == 1)
        and entry.linearization is not None
        and entry.linearization <= 11
    )

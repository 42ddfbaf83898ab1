# SPDX-License-Identifier: Apache-2.0
"""A BMC simulator built on pyghmi's own ``pyghmi.ipmi.bmc.Bmc``, run as a separate process.

It listens for IPMI 2.0 (RMCP+) on a UDP port of 127.0.0.1 and answers:

- DCMI Get Power Reading (netfn 0x2c, cmd 0x02, group extension 0xdc) with the
  platform power of its state file, or with a completion code (``"dcmi": 193`` makes
  it answer 0xC1 like a BMC without DCMI);
- the SDR repository (Get SDR Repository Info, Reserve SDR Repository, Get SDR, with
  partial reads) holding one full sensor record per sensor of ``--sensor``, and Get
  Sensor Reading for each;
- Get Device ID (pyghmi's own answer).

Its state is a JSON file the test replaces (write, then rename) while it runs; it is
read again whenever it changes::

    {"dcmi": 0, "watts": 250, "sensors": {"PSU1 Power": 120, "Inlet Temp": 24}}

``dcmi``: the completion code of DCMI answers (0, or e.g. 193 = 0xC1 for a BMC without
DCMI); ``watts``: the platform power; ``active``: false reports the measurement as not
active; ``sensors``: SDR sensor values in their units (``null``: reading unavailable);
``delay``: seconds to wait before answering any request (a slow BMC).

pyghmi's server answers every RMCP+ Open Session Request with the algorithms of cipher
suite 3 (HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128), whatever the client proposed.
pyghmi's client proposes suite 17 (SHA-256) first, so it would then fail the RAKP
exchange. Like a real BMC that only offers suite 3, this simulator refuses any other
proposal with RMCP+ status 0x11 (no cipher suite match), which makes the client retry
with suite 3.

Run ``python tests/bmc_sim.py --help``. This file is also imported by the tests for
:func:`full_sensor_record` (the SDR encoding shared with the ``ipmi_sim`` emulation
file) and :class:`Sensor`; that part imports nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

UNIT_WATTS = 6
UNIT_DEGREES_C = 1
SENSOR_TYPE_TEMPERATURE = 0x01
SENSOR_TYPE_OTHER_UNITS = 0x0B  # "Other Units-based Sensor": what BMCs use for power meters
READING_TYPE_THRESHOLD = 0x01

DCMI_GROUP = 0xDC
NETFN_APP = 0x06
NETFN_SENSOR = 0x04
NETFN_STORAGE = 0x0A
NETFN_DCMI = 0x2C
CMD_GET_SENSOR_READING = 0x2D
CMD_SDR_REPOSITORY_INFO = 0x20
CMD_RESERVE_SDR_REPOSITORY = 0x22
CMD_GET_SDR = 0x23
CMD_DCMI_POWER_READING = 0x02

CC_OK = 0x00
CC_INVALID_COMMAND = 0xC1
CC_NOT_PRESENT = 0xCB
CC_INVALID_FIELD = 0xCC

RMCP_NO_CIPHER_SUITE_MATCH = 0x11
# Authentication, integrity and confidentiality algorithm of cipher suite 3.
SUITE_3 = (1, 1, 1)


@dataclass(frozen=True)
class Sensor:
    """One threshold sensor: ``value = raw * m`` in its unit (``m`` a positive integer)."""

    number: int
    name: str
    unit: int = UNIT_WATTS
    sensor_type: int = SENSOR_TYPE_OTHER_UNITS
    m: int = 2

    def raw(self, value: float) -> int:
        """The reading byte for ``value`` (clamped to what one unsigned byte holds)."""
        return max(0, min(255, round(value / self.m)))


def full_sensor_record(record_id: int, sensor: Sensor, owner: int = 0x20) -> bytes:
    """An IPMI 2.0 Full Sensor Record (SDR type 01h, table 43-1) for ``sensor``.

    Unsigned analog readings, linear, ``y = M * x`` (B = 0, exponents 0), thresholds
    readable, 8-bit ASCII name.
    """
    name = sensor.name.encode("ascii")
    if not 0 < len(name) <= 16:
        raise ValueError(f"sensor name must be 1 to 16 characters: {sensor.name!r}")
    if not 0 < sensor.m < 256:
        raise ValueError(f"m must be 1..255, got {sensor.m}")
    body = bytes(
        [
            owner,  # 5: sensor owner id
            0x00,  # 6: owner LUN 0, channel 0
            sensor.number,  # 7: sensor number
            0x07,  # 8: entity: system board
            0x01,  # 9: entity instance
            0x7F,  # 10: initialisation: scanning and events enabled, defaults
            0x68,  # 11: capabilities: thresholds readable (bits 3:2 = 10b)
            sensor.sensor_type,  # 12
            READING_TYPE_THRESHOLD,  # 13: event/reading type
            0x00,
            0x00,  # 14-15: assertion mask
            0x00,
            0x00,  # 16-17: deassertion mask
            0x00,
            0x00,  # 18-19: readable/settable threshold mask
            0x00,  # 20: units 1: unsigned, no rate, no modifier, not a percentage
            sensor.unit,  # 21: base unit
            0x00,  # 22: modifier unit
            0x00,  # 23: linearisation: linear
            sensor.m,  # 24: M, low 8 bits
            0x00,  # 25: M high bits, tolerance
            0x00,  # 26: B, low 8 bits
            0x00,  # 27: B high bits, accuracy
            0x00,  # 28: accuracy, direction
            0x00,  # 29: R exponent, B exponent
            0x00,  # 30: analog characteristics
            0x00,  # 31: nominal reading
            0xFF,  # 32: normal maximum
            0x00,  # 33: normal minimum
            0xFF,  # 34: sensor maximum reading
            0x00,  # 35: sensor minimum reading
            0xFF,
            0xFF,
            0xFF,  # 36-38: upper thresholds
            0x00,
            0x00,
            0x00,  # 39-41: lower thresholds
            0x00,
            0x00,  # 42-43: hysteresis
            0x00,
            0x00,  # 44-45: reserved
            0x00,  # 46: OEM
            0xC0 | len(name),  # 47: id string type (8-bit ASCII) and length
        ]
    )
    body += name
    header = struct.pack("<HBBB", record_id, 0x51, 0x01, len(body))
    return header + body


def parse_sensor(text: str, number: int) -> Sensor:
    """``NAME`` (watts) or ``NAME:UNIT`` with UNIT ``W`` or ``C`` (a temperature)."""
    name, _, unit = text.partition(":")
    if unit in ("", "W"):
        return Sensor(number, name)
    if unit == "C":
        return Sensor(number, name, UNIT_DEGREES_C, SENSOR_TYPE_TEMPERATURE, m=1)
    raise argparse.ArgumentTypeError(f"unknown unit {unit!r} in {text!r} (W or C)")


class _State:
    """The JSON state file, read again when it changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._version: tuple[int, int] = (-1, -1)
        self.data: dict[str, Any] = {}

    def current(self) -> dict[str, Any]:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return self.data
        version = (stat.st_ino, stat.st_mtime_ns)  # a rename gives a new inode
        if version != self._version:
            with open(self.path, encoding="utf-8") as file:
                self.data = json.load(file)
            self._version = version
        return self.data


def _serve(args: argparse.Namespace) -> None:  # pragma: no cover - runs in the child
    import pyghmi.ipmi.bmc as bmc
    import pyghmi.ipmi.private.serversession as serversession
    import pyghmi.ipmi.private.session as ipmisession

    with open(args.password_file, encoding="utf-8") as file:
        password = file.read().rstrip("\r\n")
    sensors = [parse_sensor(text, number) for number, text in enumerate(args.sensor, start=1)]
    state = _State(args.state)
    # "Most recent addition": unique per start, so that a client's SDR cache keyed by it
    # never mixes up two simulators of one test run.
    added = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    repository = Repository(sensors, state, added)

    class Suite3Session(serversession.ServerSession):  # type: ignore[misc]
        """Completes cipher suite 3 only; refuses other proposals with status 0x11."""

        def create_open_session_response(self, request: bytearray) -> bytearray:
            proposed = (request[12], request[20], request[28])
            if proposed != SUITE_3:
                # Table 13-10, with an error status: tag, status, reserved, console id.
                return bytearray([request[0], RMCP_NO_CIPHER_SUITE_MATCH, 0, 0]) + request[4:8]
            response: bytearray = super().create_open_session_response(request)
            return response

        def sessionless_data(self, data: bytes, sockaddr: Any) -> None:
            # pyghmi hands a session the packets queued for its client address; when one
            # of them is a new login from the same client port (a client relogging), it
            # unregisters the session and the rest of the queue comes here, which
            # pyghmi's ServerSession lacks. Hand them to the BMC, as the first one was.
            self.bmc.sessionless_data(data, sockaddr)

    class PowerBmc(bmc.Bmc):  # type: ignore[misc]
        def sessionless_data(self, data: bytes, sockaddr: Any) -> None:
            packet = bytearray(data)
            if len(packet) >= 22 and packet[4] == 6 and packet[5] == 0x10:
                Suite3Session(
                    self.authdata,
                    self.kg,
                    sockaddr,
                    self.serversocket,
                    packet[16:],
                    self.uuid,
                    bmc=self,
                )
                return
            super().sessionless_data(data, sockaddr)

        def handle_raw_request(self, request: dict[str, Any], session: Any) -> None:
            current = state.current()
            if current.get("delay"):  # a slow BMC: nothing else is served meanwhile
                time.sleep(float(current["delay"]))
            answer = repository.answer(request["netfn"], request["command"], bytes(request["data"]))
            if answer is None:
                super().handle_raw_request(request, session)  # Get Device ID and the rest
            else:
                session.send_ipmi_response(code=answer[0], data=list(answer[1]))

    server = PowerBmc({args.user: password}, port=args.port, address=args.address)
    server.mfgid = 0x1291  # not a known OEM: pyghmi uses its generic handler
    server.prodid = 0x0F02
    server.additionaldevices = 0x03  # SDR repository device, sensor device
    print(f"bmc_sim: listening on {args.address}:{args.port} udp", flush=True)
    while True:  # pyghmi's Bmc.listen, but one bad packet must not end the simulator
        try:
            ipmisession.Session.wait_for_rsp(5)
        except Exception:  # noqa: BLE001 - log it and serve the next packet
            traceback.print_exc()


class Repository:
    """The answers of the simulated BMC beyond pyghmi's own: DCMI power, SDR, sensors."""

    def __init__(self, sensors: list[Sensor], state: _State, added: int) -> None:
        self.sensors = {s.number: s for s in sensors}
        self.records = [full_sensor_record(i, s) for i, s in enumerate(sensors)]
        self.state = state
        self.added = added

    def answer(self, netfn: int, command: int, data: bytes) -> tuple[int, bytes] | None:
        """(completion code, data) for the requests simulated here; None for the others."""
        if netfn == NETFN_DCMI and command == CMD_DCMI_POWER_READING:
            return self.power_reading(data)
        if netfn == NETFN_STORAGE and command == CMD_SDR_REPOSITORY_INFO:
            # version 51h, record count, free space, last addition, last erase, operations
            count = len(self.records)
            return CC_OK, struct.pack("<BHHIIB", 0x51, count, 0xFFFF, self.added, 0, 0x02)
        if netfn == NETFN_STORAGE and command == CMD_RESERVE_SDR_REPOSITORY:
            return CC_OK, b"\x01\x00"
        if netfn == NETFN_STORAGE and command == CMD_GET_SDR:
            return self.get_sdr(data)
        if netfn == NETFN_SENSOR and command == CMD_GET_SENSOR_READING:
            return self.sensor_reading(data)
        return None

    def power_reading(self, data: bytes) -> tuple[int, bytes]:
        if not data or data[0] != DCMI_GROUP:
            return CC_INVALID_FIELD, b""
        state = self.state.current()
        code = int(state.get("dcmi", CC_OK))
        if code != CC_OK:
            return code, b""
        watts = int(state.get("watts", 0)) & 0xFFFF
        active = 0x40 if state.get("active", True) else 0x00
        now = int(time.time())
        return CC_OK, struct.pack(
            "<BHHHHIIB", DCMI_GROUP, watts, watts, watts, watts, now, 1000, active
        )

    def get_sdr(self, data: bytes) -> tuple[int, bytes]:
        if len(data) < 6:
            return CC_INVALID_FIELD, b""
        _, record_id, offset, size = struct.unpack_from("<HHBB", data)
        if record_id >= len(self.records):
            return CC_NOT_PRESENT, b""
        record = self.records[record_id]
        piece = record[offset:] if size == 0xFF else record[offset : offset + size]
        following = record_id + 1 if record_id + 1 < len(self.records) else 0xFFFF
        return CC_OK, struct.pack("<H", following) + piece

    def sensor_reading(self, data: bytes) -> tuple[int, bytes]:
        sensor = self.sensors.get(data[0]) if data else None
        if sensor is None:
            return CC_NOT_PRESENT, b""
        value = self.state.current().get("sensors", {}).get(sensor.name)
        if value is None:  # scanning enabled, reading unavailable
            return CC_OK, bytes([0, 0x60, 0])
        return CC_OK, bytes([sensor.raw(float(value)), 0xC0, 0x00])


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - runs in the child
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--state", required=True, help="JSON state file (see the docstring)")
    parser.add_argument(
        "--sensor",
        action="append",
        default=[],
        help="an SDR sensor, NAME (watts) or NAME:C (a temperature); repeatable",
    )
    args = parser.parse_args(argv)
    try:
        _serve(args)
    except OSError as err:  # lower case: the peers' port-clash check looks for it so
        reason = (err.strerror or str(err)).lower()
        print(f"bmc_sim: cannot listen on {args.address}:{args.port}: {reason}", flush=True)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

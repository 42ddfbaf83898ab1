# SPDX-License-Identifier: Apache-2.0
"""The ipmi receiver against real BMCs on 127.0.0.1, started by the tests themselves.

Peers (each test starts its own, on a free port):

- :class:`PyghmiBmc`: ``tests/bmc_sim.py``, pyghmi's ``Bmc`` answering DCMI Get Power
  Reading and an SDR with power sensors, in a separate process. Its state file sets the
  watts while it runs; SIGSTOP/SIGCONT make it a BMC that stops answering and comes back.
- :class:`IpmiSim`: OpenIPMI's ``ipmi_sim`` (Debian package ``openipmi``) with its own
  lan.conf and emulation file: it answers DCMI with 0xC1, so the receiver falls back to
  its SDR sensors in watts.
- a UDP socket that never answers: a dead BMC.

Debian's ``ipmitool`` is the second client: its readings must equal the receiver's.
``scripts/install-test-deps.sh`` installs ipmitool and openipmi; a missing one fails.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from otel_kepler.component import Availability, ComponentError, HostSettings
from otel_kepler.config import parse
from otel_kepler.data import Contribution
from otel_kepler.receivers import ipmi
from otel_kepler.receivers.ipmi import IpmiConfig, IpmiReceiver, doctor, probe
from otel_kepler.receivers.ipmi import link as links
from otel_kepler.receivers.ipmi.config import Secret, read_password
from otel_kepler.receivers.ipmi.link import Response
from otel_kepler.receivers.ipmi.meter import DcmiUnavailable, parse_power_reading
from otel_kepler.receivers.ipmi.receiver import Backoff, held_energy
from otel_kepler.registry import Registry, default_registry
from otel_kepler.schema import ConfigError, decode
from otel_kepler.service import Service
from tests.bmc_sim import SENSOR_TYPE_TEMPERATURE, UNIT_DEGREES_C, Sensor, full_sensor_record
from tests.peers import (
    INSTALL_HINT,
    LOOPBACK,
    OtlpHttpSink,
    PeerError,
    PeerNotInstalled,
    _ProcessPeer,
)

LOGGER = "otel_kepler.receivers.ipmi"
USER = "admin"
PASSWORD = "pw-9f3kq.Zx"  # unique enough to be searched for in every log line (no blank:
# ipmi_sim's lan.conf takes none)
BMC_SIM = Path(__file__).with_name("bmc_sim.py")

# Fast polling for the tests: every 0.1 s, 0.3 s deadline, readings valid 0.6 s.
FAST = {"interval": "100ms", "timeout": "300ms", "max_age": "600ms", "max_backoff": "400ms"}


# ------------------------------------------------------------------ peers


def system_binary(name: str, env_var: str) -> str:
    """A binary of a Debian package installed into the system (``$env_var`` overrides)."""
    path = os.environ.get(env_var) or shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise PeerNotInstalled(f"{name} not found (${env_var} or PATH): {INSTALL_HINT}")
    return path


def channel_auth_request() -> bytes:
    """Get Channel Authentication Capabilities, IPMI 1.5 framing, outside any session."""
    message = bytes([0x20, 0x06 << 2])  # rsAddr BMC, netFn application
    body = bytes([0x81, 0x00, 0x38, 0x8E, 0x04])  # rqAddr, seq, cmd, IPMI 2.0 + channel, admin
    rmcp = bytes([0x06, 0x00, 0xFF, 0x07])
    session = bytes([0x00]) + bytes(8)  # auth type none, sequence 0, session 0
    payload = message + bytes([_checksum(message)]) + body + bytes([_checksum(body)])
    return rmcp + session + bytes([len(payload)]) + payload


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def answers_ipmi(port: int, timeout: float) -> bool:
    """Whether something on udp 127.0.0.1:port answers Get Channel Auth Capabilities."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(channel_auth_request(), (LOOPBACK, port))
            data, _ = sock.recvfrom(512)
        except OSError:
            return False
    return data[:4] == b"\x06\x00\xff\x07"


class BmcPeer(_ProcessPeer):
    """A BMC process: ready when it answers IPMI on its UDP port."""

    startup_timeout = 15.0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} udp {self.address if self.port else '(not started)'}>"

    def _wait_ready(self, *, last_attempt: bool) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                if not last_attempt and "address already in use" in self.log_tail(20).lower():
                    return False
                raise PeerError(
                    f"{self.name} exited with status {rc} before it was ready "
                    f"(udp port {self.port}); its log ends:\n{self.log_tail()}"
                )
            if answers_ipmi(self.port, 0.2) and self.proc.poll() is None:
                return True
        raise PeerError(
            f"{self.name} did not answer IPMI on udp {self.address} after "
            f"{self.startup_timeout:.0f} s; its log ends:\n{self.log_tail()}"
        )

    @property
    def password_file(self) -> Path:
        assert self.dir is not None
        return self.dir / "password"

    def prepare(self, data_dir: Path) -> None:
        (data_dir / "password").write_text(PASSWORD + "\n")

    def config(self, **settings: Any) -> IpmiConfig:
        """The receiver's config for this BMC, decoded as from YAML."""
        raw = {
            "endpoint": LOOPBACK,
            "port": self.port,
            "username": USER,
            "password_file": str(self.password_file),
            **FAST,
            **settings,
        }
        return decode(IpmiConfig, raw, "receivers.ipmi")

    def ipmitool(self, *args: str, cipher_suite: str | None = None) -> str:
        """Run Debian's ipmitool against this BMC (the password from the file)."""
        suite = ["-C", cipher_suite] if cipher_suite else []
        argv = [
            system_binary("ipmitool", "OTEL_KEPLER_IPMITOOL_BIN"),
            "-I",
            "lanplus",
            *suite,
            "-H",
            LOOPBACK,
            "-p",
            str(self.port),
            "-U",
            USER,
            "-f",
            str(self.password_file),
            *args,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()
            raise PeerError(f"ipmitool {' '.join(args)} exited with {done.returncode}: {output}")
        return done.stdout


class PyghmiBmc(BmcPeer):
    """tests/bmc_sim.py: DCMI power and an SDR with two PSU power sensors and a temperature."""

    name = "bmc-sim"
    SENSORS = ("PSU1 Power", "PSU2 Power", "Inlet Temp:C")

    def __init__(self, **state: Any) -> None:
        super().__init__()
        self.state: dict[str, Any] = {
            "watts": 250,
            "sensors": {"PSU1 Power": 120, "PSU2 Power": 130, "Inlet Temp": 24},
            **state,
        }

    def binary(self) -> Path:
        return Path(sys.executable)

    def prepare(self, data_dir: Path) -> None:
        super().prepare(data_dir)
        self._write_state(data_dir)

    def args(self, port: int, data_dir: Path) -> list[str]:
        sensors = [arg for name in self.SENSORS for arg in ("--sensor", name)]
        return [
            str(BMC_SIM),
            f"--port={port}",
            f"--user={USER}",
            f"--password-file={data_dir / 'password'}",
            f"--state={data_dir / 'state.json'}",
            *sensors,
        ]

    def set(self, **state: Any) -> None:
        """Change what the simulator answers from now on."""
        self.state.update(state)
        assert self.dir is not None
        self._write_state(self.dir)

    def _write_state(self, data_dir: Path) -> None:
        tmp = data_dir / "state.json.tmp"
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, data_dir / "state.json")

    def pause(self) -> None:
        """The BMC stops answering (SIGSTOP): packets queue up unanswered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


class IpmiSim(BmcPeer):
    """OpenIPMI's ipmi_sim: no DCMI (0xC1), power sensors in its SDR."""

    name = "ipmi-sim"
    SENSORS = (
        Sensor(1, "PSU1 Power"),
        Sensor(2, "PSU2 Power"),
        Sensor(3, "Inlet Temp", UNIT_DEGREES_C, SENSOR_TYPE_TEMPERATURE, m=1),
    )
    VALUES = {1: 150.0, 2: 170.0, 3: 25.0}

    def binary(self) -> Path:
        return Path(system_binary("ipmi_sim", "OTEL_KEPLER_IPMI_SIM_BIN"))

    def prepare(self, data_dir: Path) -> None:
        super().prepare(data_dir)
        (data_dir / "state").mkdir()
        (data_dir / "sim.emu").write_text(self.emulation())

    def args(self, port: int, data_dir: Path) -> list[str]:
        (data_dir / "lan.conf").write_text(self.lan_conf(port))
        return [
            "-c",
            str(data_dir / "lan.conf"),
            "-f",
            str(data_dir / "sim.emu"),
            "-s",
            str(data_dir / "state"),
            "-n",
        ]

    @staticmethod
    def lan_conf(port: int) -> str:
        """One LAN channel on 127.0.0.1:port and one admin user (ipmi_lan(5))."""
        return "\n".join(
            [
                'name "otelkepler"',
                "set_working_mc 0x20",
                "  startlan 1",
                f"    addr {LOOPBACK} {port}",
                "    priv_limit admin",
                "    allowed_auths_callback none md2 md5 straight",
                "    allowed_auths_user none md2 md5 straight",
                "    allowed_auths_operator none md2 md5 straight",
                "    allowed_auths_admin none md2 md5 straight",
                "    guid a123456789abcdefa123456789abcdef",
                "  endlan",
                f'  user 2 true "{USER}" "{PASSWORD}" admin 10 none md2 md5 straight',
                "",
            ]
        )

    def emulation(self) -> str:
        """The BMC at 0x20 with its sensors and their full SDR records (ipmi_sim_cmd(5))."""
        lines = [
            "mc_setbmc 0x20",
            "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02",
        ]
        for record_id, sensor in enumerate(self.SENSORS):
            n = sensor.number
            record = " ".join(f"{b:#04x}" for b in full_sensor_record(record_id, sensor))
            lines += [
                f"sensor_add 0x20 0 {n} {sensor.sensor_type:#04x} 0x01",
                f"sensor_set_value 0x20 0 {n} {sensor.raw(self.VALUES[n])} 0",
                f"sensor_set_event_support 0x20 0 {n} enable scanning per-state "
                + " ".join(["000000000000000"] * 4),
                f"main_sdr_add 0x20 {record}",
            ]
        lines.append("mc_enable 0x20")
        return "\n".join(lines) + "\n"


@pytest.fixture
def bmc() -> Iterator[PyghmiBmc]:
    with PyghmiBmc() as peer:
        yield peer


@pytest.fixture
def ipmi_sim() -> Iterator[IpmiSim]:
    with IpmiSim() as peer:
        yield peer


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A UDP port of 127.0.0.1 where a socket receives everything and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        yield int(sock.getsockname()[1])


@dataclass
class RecordingClock:
    """time.monotonic, remembering what it last told the receiver."""

    last: float = 0.0

    def __call__(self) -> float:
        self.last = time.monotonic()
        return self.last


@dataclass
class Receivers:
    """Builds receivers for a test and always shuts them down."""

    made: list[IpmiReceiver] = field(default_factory=list)

    def __call__(
        self, config: IpmiConfig, name: str = "ipmi"
    ) -> tuple[IpmiReceiver, RecordingClock]:
        clock = RecordingClock()
        receiver = IpmiReceiver(name, config, HostSettings(), clock)
        self.made.append(receiver)
        return receiver, clock


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    made = Receivers()
    yield made
    for receiver in made.made:
        receiver.shutdown()


def wait_until(what: str, check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def wait_for_watts(receiver: IpmiReceiver, expected: dict[str, float]) -> None:
    """Wait until every zone's latest reading has the expected watts."""

    def arrived() -> bool:
        latest = receiver.latest()
        return all(zone in latest and latest[zone][1] == w for zone, w in expected.items())

    wait_until(f"readings {expected}", arrived)


def by_zone(part: Contribution) -> dict[str, float]:
    assert all(r.component == "platform" and r.source == "ipmi" for r in part.energy)
    return {r.zone: r.joules for r in part.energy}


def full_window(
    receiver: IpmiReceiver, clock: RecordingClock, seconds: float
) -> tuple[float, dict[str, float]]:
    """Collect, wait, collect: (the interval the receiver measured, joules by zone)."""
    receiver.collect()
    begin = clock.last
    time.sleep(seconds)
    part = receiver.collect()
    assert part.rejected == {}
    return clock.last - begin, by_zone(part)


# ------------------------------------------------------------------ real peers


def test_dcmi_power_is_integrated_and_matches_ipmitool(
    bmc: PyghmiBmc, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    receiver, clock = receivers(bmc.config())
    with caplog.at_level(logging.INFO, logger=LOGGER):
        receiver.start()
    assert receiver.meter is not None and receiver.meter.method == "dcmi"
    assert (
        f"ipmi: reading platform power from the BMC at {bmc.address} by DCMI Get Power Reading"
        in caplog.messages
    )
    assert receiver.collect().energy == []  # the first collect starts the first interval

    wait_for_watts(receiver, {"platform": 250.0})
    seconds, joules = full_window(receiver, clock, 0.4)
    assert joules == {"platform": pytest.approx(250.0 * seconds, rel=1e-9)}

    end = clock.last
    bmc.set(watts=400)
    wait_for_watts(receiver, {"platform": 400.0})
    mixed = by_zone(receiver.collect())["platform"]  # the interval of the change
    assert 250.0 * (clock.last - end) < mixed < 400.0 * (clock.last - end)
    seconds, joules = full_window(receiver, clock, 0.3)
    assert joules == {"platform": pytest.approx(400.0 * seconds, rel=1e-9)}

    # The second client reads what the receiver read, from the same simulator.
    text = bmc.ipmitool("dcmi", "power", "reading")
    match = re.search(r"Instantaneous power reading:\s+(\d+) Watts", text)
    assert match, text
    assert float(match.group(1)) == receiver.latest()["platform"][1] == 400.0


def test_platform_metrics_through_the_service(bmc: PyghmiBmc, otlp_http_sink: OtlpHttpSink) -> None:
    """pyghmi BMC -> ipmi -> attribution -> OTLP/HTTP: kepler.node.platform.* (source ipmi)."""
    default = default_registry()
    registry = Registry(
        {
            "receivers": {"ipmi": ipmi.factory},
            "processors": default.factories("processors"),
            "exporters": default.factories("exporters"),
        }
    )
    settings = ", ".join(f"{key}: {value}" for key, value in FAST.items())
    service = Service(
        parse(
            f"""
host: {{node_name: n1}}
receivers:
  ipmi: {{endpoint: {LOOPBACK}, port: {bmc.port}, username: {USER},
          password_file: "{bmc.password_file}", {settings}}}
processors: {{attribution: {{}}}}
exporters: {{otlphttp: {{metrics_endpoint: "{otlp_http_sink.metrics_url}"}}}}
service:
  interval: 1s
  pipelines:
    metrics: {{receivers: [ipmi], processors: [attribution], exporters: [otlphttp]}}
""",
            registry,
        )
    )
    service.start()
    try:
        began = time.monotonic()
        service.tick()  # starts the first interval
        for _ in range(3):
            time.sleep(0.2)
            service.tick()
        elapsed = time.monotonic() - began
    finally:
        service.shutdown()
    joules = otlp_http_sink.metric_points("kepler.node.platform.joules")
    watts = otlp_http_sink.metric_points("kepler.node.platform.watts")
    labels = {"zone": "platform", "source": "ipmi", "node_name": "n1"}
    assert [p.attributes for p in joules] == [labels] * 3
    totals = [p.value for p in joules]
    assert totals == sorted(totals) and totals[-1] == pytest.approx(250.0 * elapsed, rel=0.1)
    assert [p.value for p in watts] == pytest.approx([250.0] * 3, rel=0.05)


def test_sdr_fallback_on_openipmi_matches_ipmitool(
    ipmi_sim: IpmiSim, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    receiver, clock = receivers(ipmi_sim.config())
    with caplog.at_level(logging.INFO, logger=LOGGER):
        receiver.start()
    assert (
        f"ipmi: reading platform power from the BMC at {ipmi_sim.address} by SDR sensors in "
        "watts (PSU1 Power, PSU2 Power); the BMC answers DCMI Get Power Reading with 0xc1 "
        "(Invalid command)" in caplog.messages
    )
    wait_for_watts(receiver, {"PSU1 Power": 150.0, "PSU2 Power": 170.0})
    assert set(receiver.latest()) == {"PSU1 Power", "PSU2 Power"}  # not the temperature

    seconds, joules = full_window(receiver, clock, 0.3)
    assert joules == pytest.approx({"PSU1 Power": 150.0 * seconds, "PSU2 Power": 170.0 * seconds})

    # ipmitool: the BMC has no DCMI, and its SDR says what the receiver read. ipmi_sim
    # does not answer Get Channel Cipher Suites, so ipmitool is told suite 3.
    with pytest.raises(PeerError, match=r"Invalid command \(c1\)"):
        ipmi_sim.ipmitool("dcmi", "power", "reading", cipher_suite="3")
    listed = ipmi_sim.ipmitool("sdr", "list", cipher_suite="3")
    watts = dict(re.findall(r"^(PSU\d Power)\s+\|\s+(\d+) Watts", listed, re.MULTILINE))
    latest = receiver.latest()
    assert {name: float(w) for name, w in watts.items()} == {
        name: value for name, (_, value) in latest.items()
    }


def test_sdr_fallback_on_the_pyghmi_bmc_with_a_sensor_filter(
    receivers: Receivers,
) -> None:
    with PyghmiBmc(dcmi=0xC1) as bmc:
        receiver, clock = receivers(bmc.config(sensors=["PSU2 Power"]))
        receiver.start()
        assert receiver.meter is not None and receiver.meter.zones == ["PSU2 Power"]
        wait_for_watts(receiver, {"PSU2 Power": 130.0})
        seconds, joules = full_window(receiver, clock, 0.2)
        assert joules == {"PSU2 Power": pytest.approx(130.0 * seconds, rel=1e-9)}

        # A sensor without a reading this time: no new sample, the old one holds; each
        # such poll is counted as an unreadable reading.
        before = receiver.latest()["PSU2 Power"]
        receiver.collect()
        bmc.set(sensors={"PSU2 Power": None})
        time.sleep(0.3)
        assert receiver.latest()["PSU2 Power"] == before
        part = receiver.collect()
        assert set(part.rejected) == {"unreadable"} and part.rejected["unreadable"] >= 1


def test_configured_sensors_that_do_not_exist(ipmi_sim: IpmiSim, receivers: Receivers) -> None:
    receiver, _ = receivers(ipmi_sim.config(sensors=["CPU Power", "Inlet Temp"]))
    with pytest.raises(ComponentError) as err:
        receiver.start()
    assert str(err.value) == (
        f"the BMC at {ipmi_sim.address} answers DCMI Get Power Reading with 0xc1 (Invalid "
        "command) and has none of the configured sensors (CPU Power, Inlet Temp); its "
        "sensors in watts: PSU1 Power, PSU2 Power"
    )


def test_method_dcmi_has_no_fallback(ipmi_sim: IpmiSim, receivers: Receivers) -> None:
    receiver, _ = receivers(ipmi_sim.config(method="dcmi"))
    with pytest.raises(ComponentError) as err:
        receiver.start()
    assert str(err.value) == (
        f"the BMC at {ipmi_sim.address} answers DCMI Get Power Reading with 0xc1 (Invalid "
        "command) (method: dcmi, no SDR fallback)"
    )


def test_wrong_password_is_a_clear_error_without_the_password(
    bmc: PyghmiBmc, receivers: Receivers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-" + PASSWORD)
    receiver, _ = receivers(bmc.config(password_file=str(wrong)))
    began = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(ComponentError) as err:
        receiver.start()
    assert time.monotonic() - began < 2.0
    assert str(err.value) == (
        f"the BMC at {bmc.address} refused the login of user 'admin': Incorrect password "
        f"provided (password from password_file {wrong})"
    )
    assert PASSWORD not in caplog.text and PASSWORD not in str(err.value)


def test_an_unknown_user_is_refused(ipmi_sim: IpmiSim, receivers: Receivers) -> None:
    receiver, _ = receivers(ipmi_sim.config(username="nobody"))
    with pytest.raises(ComponentError) as err:
        receiver.start()
    assert str(err.value) == (
        f"the BMC at {ipmi_sim.address} refused the login of user 'nobody': Unauthorized name "
        f"in RAKP2 (password from password_file {ipmi_sim.password_file})"
    )


def test_the_password_never_shows(
    bmc: PyghmiBmc, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    config = bmc.config(password_file="", password=PASSWORD)
    with caplog.at_level(logging.DEBUG):
        receiver = ipmi.factory.create("ipmi/bmc", config, HostSettings())
        assert isinstance(receiver, IpmiReceiver)
        receivers.made.append(receiver)
        receiver.start()
        wait_for_watts(receiver, {"platform": 250.0})
        receiver.shutdown()
    assert (
        "receivers.ipmi/bmc.password: the BMC password is written in the config; prefer "
        "password_file or password_env"
    ) in caplog.messages
    shown = [caplog.text, repr(config), str(config), repr(receiver), repr(read_password(config))]
    assert not [text for text in shown if PASSWORD in text]
    assert repr(read_password(config)) == "Secret(<hidden>, from the config file)"
    assert probe(config).available


def test_implausible_readings_are_dropped_counted_and_logged_once(
    bmc: PyghmiBmc, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    receiver, clock = receivers(bmc.config(max_watts=1000))
    receiver.start()
    wait_for_watts(receiver, {"platform": 250.0})
    receiver.collect()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        bmc.set(watts=5000)
        time.sleep(0.35)  # three polls or so, all above max_watts
        part = receiver.collect()
    assert set(part.rejected) == {"implausible_power"}
    assert part.rejected["implausible_power"] >= 2
    assert receiver.latest()["platform"][1] == 250.0  # never stored
    bogus = [m for m in caplog.messages if "implausible" in m]
    assert bogus == [
        f"ipmi: dropped an implausible reading of zone platform from the BMC at "
        f"{bmc.address}: 5000 W (allowed: 0 to max_watts 1000); not exported (logged once "
        "per zone)"
    ]

    bmc.set(watts=300)
    wait_for_watts(receiver, {"platform": 300.0})
    seconds, joules = full_window(receiver, clock, 0.2)
    assert joules == {"platform": pytest.approx(300.0 * seconds, rel=1e-9)}


def test_a_bmc_that_stops_answering_ages_out_and_is_reconnected_with_backoff(
    bmc: PyghmiBmc, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    receiver, clock = receivers(bmc.config())
    receiver.start()
    wait_for_watts(receiver, {"platform": 250.0})
    receiver.collect()
    # (now, seconds collect took, zone reported, time of the latest reading)
    ticks: list[tuple[float, float, bool, float]] = []

    def tick() -> None:
        began = time.monotonic()
        part = receiver.collect()
        took = time.monotonic() - began
        ticks.append((clock.last, took, bool(part.energy), receiver.latest()["platform"][0]))
        time.sleep(0.05)

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        bmc.pause()
        stopped = time.monotonic()
        while time.monotonic() - stopped < 1.6:
            tick()
        bmc.resume()
        resumed = time.monotonic()
        while not ticks[-1][2]:
            assert time.monotonic() - resumed < 3.0, "no reading after the BMC came back"
            tick()

    # Ticks ran on time: no collect waited for the BMC (its deadline alone is 0.3 s).
    assert max(seconds for _, seconds, _, _ in ticks) < 0.1
    # While the BMC was silent, a zone was reported exactly while its latest reading was
    # at most max_age old...
    for now, _, reported, latest in ticks:
        if now < resumed:
            assert reported == (now - latest <= 0.6)
    # ...so it aged out during the outage, and came back after it.
    outage = [t for t in ticks if not t[2]]
    assert outage and outage[0][0] - stopped <= 0.6 + 0.2
    assert ticks[-1][2]
    assert any("zone platform has readings again" in m for m in caplog.messages)
    # Reconnects backed off: 0.1 s, doubled each failure, at most 0.4 s.
    delays = [float(d) for d in re.findall(r"failed: .*; next in ([\d.]+)s", caplog.text)]
    assert delays[:3] == [0.1, 0.2, 0.4] and set(delays[3:]) <= {0.4}
    assert f"ipmi: no answer from the BMC at {bmc.address} within 0.3s" in caplog.text
    assert any(
        m.startswith(f"ipmi: the BMC at {bmc.address} answers again") for m in caplog.messages
    )


def test_a_late_answer_counts_as_none(
    bmc: PyghmiBmc, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    receiver, _ = receivers(bmc.config())
    receiver.start()
    wait_for_watts(receiver, {"platform": 250.0})
    receiver.collect()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        bmc.set(delay=0.5)  # every answer comes after the 0.3 s deadline
        wait_until(
            "a request past its deadline",
            lambda: (
                f"no answer from the BMC at {bmc.address} within 0.3s (netfn 0x2c" in caplog.text
            ),
        )
        began = time.monotonic()
        receiver.collect()
        assert time.monotonic() - began < 0.1
        # The late answers reach a session that was given up; the next one reads anew.
        bmc.set(delay=0, watts=333)
        wait_for_watts(receiver, {"platform": 333.0})


def test_a_bmc_that_never_answers(
    silent_port: int, receivers: Receivers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "password").write_text(PASSWORD)
    raw = {
        "endpoint": LOOPBACK,
        "port": silent_port,
        "username": USER,
        "password_file": str(tmp_path / "password"),
        **FAST,
    }
    config = decode(IpmiConfig, raw, "receivers.ipmi")
    receiver, _ = receivers(config)
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        receiver.start()
    assert time.monotonic() - began < 3 * 0.3 + 0.5 + 0.5  # bounded, not hung
    where = f"{LOOPBACK}:{silent_port}"
    assert [r.getMessage() for r in caplog.records if r.name.startswith(LOGGER)] == [
        f"ipmi: no answer from the BMC at {where} within 0.3s (login); platform energy is "
        "left out until it answers (retrying in the background)"
    ]
    assert receiver.collect() == Contribution()
    time.sleep(0.3)
    assert receiver.collect() == Contribution()  # no platform energy, no error

    assert doctor(HostSettings(), config) == Availability(
        False, f"no answer from the BMC at {where} within 0.3s (login)"
    )


def test_doctor_with_a_working_bmc(bmc: PyghmiBmc) -> None:
    assert doctor(HostSettings(), bmc.config()) == Availability(
        True, f"{bmc.address}: platform 250 W, by DCMI Get Power Reading"
    )


#: A child that first holds this many more files than FD_SETSIZE (1024), as an agent on a
#: node with thousands of processes can, so that pyghmi's socket gets a number above it.
HIGH_FD_PROBE = """
import os, resource, sys
from otel_kepler.schema import decode
from otel_kepler.receivers.ipmi import IpmiConfig, probe
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
assert max(held) >= 1024, max(held)
raw = dict(endpoint="127.0.0.1", port=int(sys.argv[1]), username=sys.argv[2],
           password_file=sys.argv[3], timeout="2s")
result = probe(decode(IpmiConfig, raw, "receivers.ipmi"))
print(result.available, result.detail, sep="\\n")
"""


def test_a_process_holding_more_than_1024_files_still_reads_the_bmc(bmc: PyghmiBmc) -> None:
    """pyghmi's select() fails at descriptor 1024: the link must not depend on it."""
    argv = [sys.executable, "-c", HIGH_FD_PROBE, str(bmc.port), USER, str(bmc.password_file)]
    # Bounded: without the fix the child blocks forever in pyghmi.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "True",
        f"{bmc.address}: platform 250 W, by DCMI Get Power Reading",
    ], done.stderr


def test_a_dead_pyghmi_io_thread_is_an_error_not_a_hang(
    bmc: PyghmiBmc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyghmi waits without a timeout on its IO thread: a dead one must be refused."""
    from pyghmi.ipmi.private import session

    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join()
    monkeypatch.setattr(session, "iothread", ended)
    with pytest.raises(links.LinkError, match=r"^pyghmi's IPMI network thread has ended"):
        links.LanLink.login(LOOPBACK, bmc.port, USER, read_password(bmc.config()), 2.0)


# ------------------------------------------------------------------ in-band


def test_in_band_without_a_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, receivers: Receivers
) -> None:
    device = str(tmp_path / "ipmi0")
    monkeypatch.setattr(links, "DEVICE", device)
    fix = (
        "no in-band IPMI on this host (on a server with a BMC, load the ipmi_si and "
        "ipmi_devintf kernel modules); or set endpoint to reach the BMC over the network"
    )
    receiver, _ = receivers(IpmiConfig())
    with pytest.raises(ComponentError) as err:
        receiver.start()
    assert str(err.value) == f"{device} does not exist: {fix}"
    assert doctor(HostSettings()) == Availability(
        False,
        f"{device} does not exist: {fix} (doctor checks an endpoint when given the config)",
    )


def test_the_factory() -> None:
    assert ipmi.factory.type == "ipmi"
    assert ipmi.factory.config_class is IpmiConfig
    assert ipmi.factory.doctor is doctor
    receiver = ipmi.factory.create("ipmi", IpmiConfig(), HostSettings())
    assert isinstance(receiver, IpmiReceiver) and repr(receiver) == (
        "<IpmiReceiver ipmi /dev/ipmi0>"
    )


# ------------------------------------------------------------------ config and password


def config_error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        decode(IpmiConfig, raw, "receivers.ipmi")
    return str(err.value)


def test_config_defaults_and_decoding() -> None:
    default = decode(IpmiConfig, None, "receivers.ipmi")
    assert default == IpmiConfig()
    assert (default.endpoint, default.port, default.method) == ("", 623, "auto")
    assert (default.interval, default.timeout, default.max_age) == (5.0, 2.0, 15.0)
    assert (default.max_backoff, default.max_watts) == (60.0, 20000.0)
    config = decode(
        IpmiConfig,
        {"endpoint": "bmc-7.example", "username": "u", "password_env": "BMC_PW", "timeout": "1s"},
        "receivers.ipmi",
    )
    assert config.where == "bmc-7.example:623" and config.timeout == 1.0
    assert decode(IpmiConfig, {"endpoint": "fd00::7", "port": 6230}, "r").where == "[fd00::7]:6230"
    assert "hunter2" not in repr(IpmiConfig(endpoint="h", password="hunter2"))


def test_config_errors_name_the_path() -> None:
    p = "receivers.ipmi"
    assert config_error({"username": "admin"}) == (
        f"{p}.username: is used only with an endpoint: in-band access through /dev/ipmi0 "
        "needs no login"
    )
    assert config_error({"endpoint": "https://bmc"}) == (
        f"{p}.endpoint: expected a host name or IP address (the port goes in port), got "
        "'https://bmc'"
    )
    assert config_error({"endpoint": "bmc", "port": 0}) == f"{p}.port: must be 1 to 65535, got 0"
    assert config_error({"endpoint": "bmc", "password": "x", "password_file": "/f"}) == (
        f"{p}.password_file: set only one of password, password_file and password_env"
    )
    assert config_error({"timeout": "0s"}) == f"{p}.timeout: must be greater than 0, got 0s"
    assert config_error({"interval": "20s"}) == (
        f"{p}.max_age: must be at least interval (20s), or every reading expires before the "
        "next poll"
    )
    assert config_error({"max_backoff": "1s"}) == f"{p}.max_backoff: must be at least interval (5s)"
    assert config_error({"max_watts": -1}) == f"{p}.max_watts: must be greater than 0, got -1"
    assert config_error({"sensors": ["A", ""]}) == f"{p}.sensors[1]: must not be empty"
    assert config_error({"sensors": ["A", "A"]}) == f'{p}.sensors[1]: "A" is listed twice'
    assert config_error({"method": "dcmi", "sensors": ["A"]}) == (
        f"{p}.sensors: selects SDR sensors: not used with method: dcmi"
    )
    assert config_error({"method": "redfish"}) == (
        f"{p}.method: must be one of 'auto', 'dcmi', 'sdr', got 'redfish'"
    )


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t \n")  # the newline of `echo` is not part of it; the blank is
    config = IpmiConfig(endpoint="bmc", password_file=str(secret))
    assert read_password(config).reveal() == b"s3cr3t "
    assert read_password(config).origin == f"password_file {secret}"

    missing = IpmiConfig(endpoint="bmc", password_file=str(tmp_path / "none"))
    with pytest.raises(ComponentError) as err:
        read_password(missing)
    assert (
        str(err.value)
        == f"cannot read password_file {tmp_path / 'none'}: No such file or directory"
    )

    monkeypatch.delenv("OTEL_KEPLER_TEST_BMC_PW", raising=False)
    from_env = IpmiConfig(endpoint="bmc", password_env="OTEL_KEPLER_TEST_BMC_PW")
    with pytest.raises(ComponentError) as err:
        read_password(from_env)
    assert str(err.value) == (
        "password_env: the environment variable OTEL_KEPLER_TEST_BMC_PW is not set"
    )
    monkeypatch.setenv("OTEL_KEPLER_TEST_BMC_PW", "from-env")
    assert read_password(from_env).reveal() == b"from-env"
    assert read_password(IpmiConfig(endpoint="bmc")).reveal() == b""
    assert str(Secret("x", "here")) == "Secret(<hidden>, from here)"


# ------------------------------------------------------------------ pure parts


def test_held_energy() -> None:
    samples = [(10.0, 100.0), (11.0, 200.0), (12.0, 300.0)]
    # Each reading holds until the next: 100 W for 1 s, 200 W for 1 s, 300 W from 12 on.
    assert held_energy(samples, 10.0, 13.0, max_age=5.0) == 100 + 200 + 300
    assert held_energy(samples, 10.5, 11.5, max_age=5.0) == 50 + 100
    # Before the first reading nothing is known: no energy.
    assert held_energy(samples, 9.0, 11.0, max_age=5.0) == 100
    # A reading holds at most max_age.
    assert held_energy([(0.0, 100.0)], 0.0, 10.0, max_age=2.0) == 200
    assert held_energy([(0.0, 100.0), (5.0, 10.0)], 0.0, 6.0, max_age=2.0) == 200 + 10
    # Readings after the end do not count.
    assert held_energy(samples, 10.0, 11.0, max_age=5.0) == 100
    assert held_energy([], 0.0, 1.0, max_age=1.0) == 0.0


def test_backoff() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def power_answer(watts: int, state: int = 0x40, code: int = 0) -> Response:
    data = bytes([0xDC]) + watts.to_bytes(2, "little") * 4 + bytes(8) + bytes([state])
    return Response(code, data)


def test_parse_power_reading() -> None:
    assert parse_power_reading(power_answer(523)) == 523.0
    cases = {
        Response(0xC1, b""): "answers DCMI Get Power Reading with 0xc1 (Invalid command)",
        Response(0x80, b""): "answers DCMI Get Power Reading with 0x80",
        power_answer(523, state=0): "reports its DCMI power measurement as not active",
        Response(0, b"\xdc\x01"): (
            "gives a malformed DCMI Get Power Reading answer (2 bytes: dc 01)"
        ),
    }
    for answer, message in cases.items():
        with pytest.raises(DcmiUnavailable) as err:
            parse_power_reading(answer)
        assert str(err.value) == message

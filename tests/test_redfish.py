"""The redfish receiver against real Redfish servers on 127.0.0.1.

Peers (see tests/redfish_server.py): sushy-tools' ``sushy-static`` over HTTPS serving
mockup trees of an older BMC (Power resource) and a newer one (EnvironmentMetrics,
PowerSubsystem); sushy-static's handler with a session service and basic
authentication added (sessions, basic, 401, a slow BMC); sushy-tools'
``sushy-emulator`` with an htpasswd file (basic authentication as sushy-tools does it).
Readings change between polls by rewriting mockup files, so joules are checked against
the integral of known watts over the receiver's own clock.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from otel_kepler.component import ComponentError, HostSettings
from otel_kepler.config import parse
from otel_kepler.data import Contribution
from otel_kepler.receivers import redfish
from otel_kepler.receivers.redfish import RedfishConfig, RedfishReceiver, doctor
from otel_kepler.registry import Registry, default_registry
from otel_kepler.schema import ConfigError, decode
from otel_kepler.service import Service
from tests import redfish_server as rs
from tests.peers import OtlpHttpSink

LOGGER = "otel_kepler.receivers.redfish"
PASSWORD = "Tr0ub4dor&3-redfish"
USER = "otel"
FAST = {"poll_interval": "100ms", "max_age": "2s", "max_backoff": "200ms", "timeout": "2s"}


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> rs.Certs:
    return rs.make_certs(tmp_path_factory.mktemp("certs"))


@dataclass
class Bmc:
    """A running Redfish server and the mockup tree it serves."""

    server: rs.Server
    tree: Path

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def where(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture
def servers() -> Iterator[list[rs.Server]]:
    started: list[rs.Server] = []
    yield started
    for server in started:
        server.stop()


def _run(servers: list[rs.Server], server: rs.Server) -> rs.Server:
    servers.append(server)
    server.start()
    return server


@pytest.fixture
def legacy(tmp_path: Path, certs: rs.Certs, servers: list[rs.Server]) -> Bmc:
    """sushy-static over HTTPS: an older BMC, chassis 1 with a Power resource at 300 W."""
    tree = tmp_path / "legacy"
    rs.write_legacy_bmc(tree, 300.0)
    return Bmc(_run(servers, rs.static_bmc(tree, tmp_path / "legacy.log", certs)), tree)


@pytest.fixture
def modern(tmp_path: Path, certs: rs.Certs, servers: list[rs.Server]) -> Bmc:
    """sushy-static over HTTPS: a newer BMC, chassis 1U (EnvironmentMetrics, 250 W) and
    GPUTray (PowerSubsystem, two supplies: 100 W + 110.5 W)."""
    tree = tmp_path / "modern"
    rs.write_modern_bmc(tree, 250.0, {"PSU0": 100.0, "PSU1": 110.5})
    return Bmc(_run(servers, rs.static_bmc(tree, tmp_path / "modern.log", certs)), tree)


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "bmc-password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.fixture
def auth(tmp_path: Path, password_file: Path, servers: list[rs.Server]) -> Bmc:
    """An older BMC behind sessions and basic authentication (user otel)."""
    tree = tmp_path / "auth"
    rs.write_legacy_bmc(tree, 180.0)
    server = rs.auth_bmc(tree, tmp_path / "auth.log", USER, password_file)
    return Bmc(_run(servers, server), tree)


class RecordingClock:
    """The monotonic clock, remembering the last time it was read (the receiver's now)."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self) -> float:
        self.last = time.monotonic()
        return self.last


@dataclass
class Receivers:
    """Builds receivers for a test and always shuts them down."""

    made: list[RedfishReceiver] = field(default_factory=list)

    def __call__(self, **raw: Any) -> tuple[RedfishReceiver, RecordingClock]:
        config = decode(RedfishConfig, {**FAST, **raw}, "receivers.redfish")
        clock = RecordingClock()
        receiver = RedfishReceiver("redfish", config, HostSettings(), clock)
        self.made.append(receiver)
        return receiver, clock


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    made = Receivers()
    yield made
    for receiver in made.made:
        receiver.shutdown()


def wait_until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def wait_for_watts(receiver: RedfishReceiver, expected: dict[str, float]) -> None:
    def arrived() -> bool:
        latest = receiver.latest()
        return all(c in latest and latest[c][1] == w for c, w in expected.items())

    wait_until(f"readings {expected}", arrived)


def by_chassis(part: Contribution) -> dict[str, float]:
    assert all(
        (r.component, r.zone, r.source) == ("platform", "platform", "redfish") for r in part.energy
    )
    return {(r.attributes or {})["chassis_id"]: r.joules for r in part.energy}


def full_window(
    receiver: RedfishReceiver, clock: RecordingClock, seconds: float
) -> tuple[float, dict[str, float]]:
    """Collect, wait, collect: (the interval the receiver measured, joules by chassis)."""
    receiver.collect()
    begin = clock.last
    time.sleep(seconds)
    part = receiver.collect()
    assert part.rejected == {}
    return clock.last - begin, by_chassis(part)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(LOGGER) and r.levelno >= logging.WARNING
    ]


# ------------------------------------------------------------------ readings and energy


def test_older_bmc_power_resource_over_https_is_integrated(
    legacy: Bmc, certs: rs.Certs, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    receiver, clock = receivers(endpoint=f"127.0.0.1:{legacy.server.port}", ca_file=str(certs.ca))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        receiver.start()
    path = "/redfish/v1/Chassis/1/Power"
    assert (
        f"redfish: reading platform power from the BMC at {legacy.where}: chassis 1: "
        f"PowerControl at {path}" in caplog.messages
    )
    assert receiver.collect().energy == []  # the first collect starts the first interval
    wait_for_watts(receiver, {"1": 300.0})
    seconds, joules = full_window(receiver, clock, 0.5)
    assert joules == {"1": pytest.approx(300.0 * seconds, rel=1e-9)}

    part = receiver.collect()
    (reading,) = part.energy
    assert reading.attributes == {
        "bmc_id": legacy.where,
        "chassis_id": "1",
        "source_id": "0",
        "source_name": "System Power Control",
        "source_type": "PowerControl",
    }
    # A step from 300 W to 450 W inside one interval: 300 W until the new reading arrived.
    begin = clock.last
    rs.write_power(legacy.tree, "1", 450)
    wait_for_watts(receiver, {"1": 450.0})
    changed = receiver.latest()["1"][0]
    time.sleep(0.2)
    (step,) = by_chassis(receiver.collect()).values()
    expected = 300.0 * (changed - begin) + 450.0 * (clock.last - changed)
    assert step == pytest.approx(expected, rel=1e-9)
    assert warnings_of(caplog) == []


def test_newer_bmc_environment_metrics_first_and_power_supplies_summed(
    modern: Bmc, certs: rs.Certs, receivers: Receivers
) -> None:
    receiver, clock = receivers(endpoint=modern.endpoint, ca_file=str(certs.ca), bmc_id="rack7-n3")
    receiver.start()
    # 1U also has PowerSubsystem (1 + 2 W) and Power (3 W): EnvironmentMetrics wins.
    wait_for_watts(receiver, {"1U": 250.0, "GPUTray": 210.5})
    seconds, joules = full_window(receiver, clock, 0.5)
    assert joules == {
        "1U": pytest.approx(250.0 * seconds, rel=1e-9),
        "GPUTray": pytest.approx(210.5 * seconds, rel=1e-9),
    }
    labels = {s.chassis_id: s.attributes for s in receiver.sources}
    assert labels == {
        "1U": {
            "bmc_id": "rack7-n3",
            "chassis_id": "1U",
            "source_id": "EnvironmentMetrics",
            "source_name": "Chassis Environment Metrics",
            "source_type": "EnvironmentMetrics",
        },
        "GPUTray": {
            "bmc_id": "rack7-n3",
            "chassis_id": "GPUTray",
            "source_id": "PowerSubsystem",
            "source_name": "Power Subsystem",
            "source_type": "PowerSubsystem",
        },
    }
    rs.write_supply_metrics(modern.tree, "GPUTray", "PSU1", 300)
    rs.write_environment_metrics(modern.tree, "1U", 610.25)
    wait_for_watts(receiver, {"1U": 610.25, "GPUTray": 400.0})
    seconds, joules = full_window(receiver, clock, 0.4)
    assert joules == {
        "1U": pytest.approx(610.25 * seconds, rel=1e-9),
        "GPUTray": pytest.approx(400.0 * seconds, rel=1e-9),
    }


def test_chassis_filter(modern: Bmc, certs: rs.Certs, receivers: Receivers) -> None:
    receiver, _ = receivers(endpoint=modern.endpoint, ca_file=str(certs.ca), chassis=["GPUTray"])
    receiver.start()
    wait_for_watts(receiver, {"GPUTray": 210.5})
    assert [s.chassis_id for s in receiver.sources] == ["GPUTray"]
    missing = RedfishConfig(endpoint=modern.endpoint, ca_file=str(certs.ca), chassis=["2U"])
    assert redfish.probe(missing).detail == (
        f"{modern.where}: no chassis '2U' (found: 1U, GPUTray)"
    )


def test_implausible_readings_are_dropped_counted_and_logged_once(
    legacy: Bmc, certs: rs.Certs, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    receiver, clock = receivers(endpoint=legacy.endpoint, ca_file=str(certs.ca), max_watts=5000)
    receiver.start()
    wait_for_watts(receiver, {"1": 300.0})
    receiver.collect()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        rs.write_power(legacy.tree, "1", -40)
        polls = receiver.polls  # the poll under way may still read 300 W
        wait_until("4 polls", lambda: receiver.polls >= polls + 4)
        rs.write_power(legacy.tree, "1", 1e6)
        polls = receiver.polls
        wait_until("3 polls", lambda: receiver.polls >= polls + 3)
        part = receiver.collect()
    dropped = part.rejected["implausible_power"]
    assert dropped >= 6 and part.rejected == {"implausible_power": dropped}
    assert receiver.latest()["1"][1] == 300.0  # the last good reading still holds
    assert warnings_of(caplog) == [
        f"redfish: dropped an implausible reading of chassis 1 from the BMC at {legacy.where}: "
        "-40 W (allowed: 0 to max_watts 5000); not exported (logged once per chassis)"
    ]


def test_malformed_json_costs_only_that_chassis_counted_and_logged_once(
    modern: Bmc, certs: rs.Certs, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    receiver, clock = receivers(endpoint=modern.endpoint, ca_file=str(certs.ca))
    receiver.start()
    wait_for_watts(receiver, {"1U": 250.0, "GPUTray": 210.5})
    receiver.collect()
    path = "/redfish/v1/Chassis/1U/EnvironmentMetrics"
    with caplog.at_level(logging.INFO, logger=LOGGER):
        rs.write_raw(modern.tree, path, '{"PowerWatts": {"Reading": 25')
        polls = receiver.polls  # the poll under way may still read the good file
        wait_until("5 polls", lambda: receiver.polls >= polls + 5)
        began = time.monotonic()
        part = receiver.collect()
        took = time.monotonic() - began
        unreadable = part.rejected["unreadable"]
        rs.write_raw(modern.tree, path, '{"PowerWatts": {"Reading": "N/A"}}')
        polls = receiver.polls  # the poll under way may still read the broken file
        wait_until("4 polls", lambda: receiver.polls >= polls + 4)
        nan = receiver.collect().rejected.get("not_a_number", 0)
        rs.write_environment_metrics(modern.tree, "1U", 260)
        wait_for_watts(receiver, {"1U": 260.0})
    assert unreadable >= 4 and part.rejected == {"unreadable": unreadable}
    assert nan >= 3
    assert took < 2.0  # collect never waits for the BMC (2 s: the request timeout)
    assert "GPUTray" in by_chassis(part)  # the other chassis is still counted
    assert warnings_of(caplog) == [
        f"redfish: dropped the reading of chassis 1U: {modern.where}: {path} is not valid "
        "Redfish JSON (logged once until it reads again)",
        "redfish: dropped the reading of chassis 1U: chassis 1U: PowerWatts.Reading is 'N/A', "
        "not a number of watts (logged once until it reads again)",
    ]
    assert "redfish: chassis 1U reads again" in caplog.messages


# ------------------------------------------------------------------ TLS


def test_tls_verification(
    legacy: Bmc, certs: rs.Certs, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    untrusted = (
        f"{legacy.where}: TLS: certificate not trusted: unable to get local issuer certificate "
        "(set ca_file to its CA)"
    )
    for extra in ({}, {"ca_file": str(certs.other_ca)}):  # system CAs; a CA that did not sign
        receiver, _ = receivers(endpoint=legacy.endpoint, required=True, **extra)
        with pytest.raises(ComponentError) as err:
            receiver.start()
        assert str(err.value) == untrusted
        assert receiver.failures == {"tls": 1}
    caplog.clear()
    receiver, _ = receivers(endpoint=legacy.endpoint, insecure_skip_verify=True)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        receiver.start()
    wait_for_watts(receiver, {"1": 300.0})
    assert warnings_of(caplog) == [
        f"redfish: TLS certificates of {legacy.where} are not verified (insecure_skip_verify)"
    ]
    plain = RedfishConfig(endpoint=f"http://{legacy.where}")
    assert redfish.probe(plain).detail.startswith(f"{legacy.where}: cannot connect: ")


def test_plain_https_endpoint_against_an_http_server(
    tmp_path: Path, servers: list[rs.Server], receivers: Receivers
) -> None:
    rs.write_legacy_bmc(tmp_path / "t", 100.0)
    server = _run(servers, rs.static_bmc(tmp_path / "t", tmp_path / "s.log"))
    assert server.endpoint.startswith("http://")
    detail = redfish.probe(RedfishConfig(endpoint=f"127.0.0.1:{server.port}")).detail
    assert detail == f"127.0.0.1:{server.port}: TLS: WRONG_VERSION_NUMBER (is the endpoint https?)"
    receiver, _ = receivers(endpoint=server.endpoint)
    receiver.start()
    wait_for_watts(receiver, {"1": 100.0})


# ------------------------------------------------------------------ authentication


def requests_seen(bmc: Bmc) -> list[str]:
    return [line for line in bmc.server.output().splitlines() if not line.startswith("TOKEN ")]


def tokens_issued(bmc: Bmc) -> list[str]:
    lines = bmc.server.output().splitlines()
    return [line.split()[1] for line in lines if line.startswith("TOKEN ")]


def test_session_login_is_used_and_closed(
    auth: Bmc, password_file: Path, receivers: Receivers
) -> None:
    receiver, _ = receivers(
        endpoint=auth.endpoint, username=USER, password_file=str(password_file), auth="session"
    )
    receiver.start()
    wait_for_watts(receiver, {"1": 180.0})
    polls = receiver.polls
    wait_until("2 more polls", lambda: receiver.polls >= polls + 2)
    receiver.shutdown()
    seen = requests_seen(auth)
    assert seen[:3] == [
        "GET /redfish/v1/ none",
        "POST /redfish/v1/SessionService/Sessions login-ok",
        "GET /redfish/v1/Chassis session",
    ]
    assert seen.count("POST /redfish/v1/SessionService/Sessions login-ok") == 1  # one login
    reads = [line for line in seen if line.startswith("GET /redfish/v1/Chassis/1/Power")]
    assert len(reads) >= polls + 2 and set(reads) == {"GET /redfish/v1/Chassis/1/Power session"}
    assert seen[-1] == "DELETE /redfish/v1/SessionService/Sessions/1 logout"


def test_basic_auth(auth: Bmc, receivers: Receivers) -> None:
    receiver, _ = receivers(endpoint=auth.endpoint, username=USER, password=PASSWORD, auth="basic")
    receiver.start()
    wait_for_watts(receiver, {"1": 180.0})
    receiver.shutdown()
    seen = requests_seen(auth)
    assert not [line for line in seen if "Sessions" in line]
    assert {line.rsplit(" ", 1)[1] for line in seen[1:]} == {"basic"}


def test_auto_falls_back_to_basic_where_there_are_no_sessions(
    tmp_path: Path, password_file: Path, servers: list[rs.Server], receivers: Receivers
) -> None:
    rs.write_legacy_bmc(tmp_path / "t", 90.0)
    server = rs.auth_bmc(tmp_path / "t", tmp_path / "a.log", USER, password_file, sessions=False)
    bmc = Bmc(_run(servers, server), tmp_path / "t")
    receiver, _ = receivers(endpoint=bmc.endpoint, username=USER, password_file=str(password_file))
    receiver.start()
    wait_for_watts(receiver, {"1": 90.0})
    seen = requests_seen(bmc)
    assert seen[1:3] == [
        "POST /redfish/v1/SessionService/Sessions post",  # refused: HTTP 405
        "GET /redfish/v1/Chassis basic",
    ]
    strict = RedfishConfig(
        endpoint=bmc.endpoint, username=USER, password_file=str(password_file), auth="session"
    )
    assert redfish.probe(strict).detail == f"{bmc.where}: HTTP 405 on the login"


def test_wrong_password_is_one_log_line_and_the_password_never_shows(
    auth: Bmc, tmp_path: Path, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-Tr0ub4dor-password\n")
    receiver, clock = receivers(endpoint=auth.endpoint, username=USER, password_file=str(wrong))
    with caplog.at_level(logging.DEBUG):  # every logger, sushy's and urllib3's too
        logging.getLogger("sushy").setLevel(logging.DEBUG)
        try:
            receiver.start()
            wait_until("4 refused logins", lambda: receiver.failures.get("auth", 0) >= 4)
            receiver.collect()
            time.sleep(0.1)
            part = receiver.collect()
            # Then the right password (the file is read at every login): sessions at DEBUG.
            wrong.write_text(PASSWORD)
            wait_for_watts(receiver, {"1": 180.0})
            receiver.shutdown()  # logs out: the DELETE carries the token
        finally:
            logging.getLogger("sushy").setLevel(logging.NOTSET)
    assert part.energy == [] and part.rejected == {}
    refused = (
        f"redfish: {auth.where}: HTTP 401 on the Chassis collection: the BMC refused the "
        "credentials; its platform energy is left out, retrying with back-off (up to 0.2s)"
    )
    assert warnings_of(caplog) == [refused]
    assert f"redfish: the BMC at {auth.where} answers again" in caplog.messages
    everything = caplog.text + "\n".join(f"{r.args!r} {r.exc_text}" for r in caplog.records)
    assert sum(1 for r in caplog.records if r.name.startswith("sushy")) > 0  # they did log
    (token,) = tokens_issued(auth)  # the session opened with the right password
    assert token not in everything
    for secret in (PASSWORD, "not-the-Tr0ub4dor-password"):
        assert secret not in everything
        assert secret not in repr(receiver.config) and secret not in repr(receiver)


def test_password_from_the_environment(
    auth: Bmc, receivers: Receivers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """${env:REDFISH_PASSWORD}, as the Helm chart writes it, through the config loader."""
    monkeypatch.setenv("REDFISH_PASSWORD", PASSWORD)
    text = f"""
receivers:
  redfish:
    endpoint: {auth.endpoint}
    username: {USER}
    password: ${{env:REDFISH_PASSWORD}}
exporters:
  debug: {{}}
service:
  pipelines:
    metrics:
      receivers: [redfish]
      exporters: [debug]
"""
    config = parse(text, default_registry())
    section = config.receivers["redfish"].config
    assert isinstance(section, RedfishConfig) and section.password == PASSWORD
    assert redfish.probe(section).detail == f"{auth.where}: chassis 1 180 W (PowerControl)"


def test_sushy_emulator_basic_auth(
    tmp_path: Path, servers: list[rs.Server], receivers: Receivers
) -> None:
    """sushy-emulator: htpasswd basic auth; its chassis has no power resource at all."""
    emulator = _run(servers, rs.emulator_bmc(tmp_path, USER, PASSWORD))
    where = f"127.0.0.1:{emulator.port}"
    good = RedfishConfig(endpoint=emulator.endpoint, username=USER, password=PASSWORD)
    detail = redfish.probe(good).detail
    assert detail.startswith(f"{where}: no chassis reports power (chassis: ")
    bad = RedfishConfig(endpoint=emulator.endpoint, username=USER, password="guess")
    assert redfish.probe(bad).detail == (
        f"{where}: HTTP 401 on the Chassis collection: the BMC refused the credentials"
    )
    receiver, _ = receivers(endpoint=emulator.endpoint, username=USER, password="guess",
                            required=True)  # fmt: skip
    with pytest.raises(ComponentError, match=r"HTTP 401 on the Chassis collection"):
        receiver.start()


# ------------------------------------------------------------------ a BMC that is down or slow


def test_down_bmc_never_blocks_the_tick(
    receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    port = rs.free_port()  # nothing listens there
    receiver, _ = receivers(endpoint=f"http://127.0.0.1:{port}")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        receiver.start()
        slowest = 0.0
        for _ in range(5):
            began = time.monotonic()
            part = receiver.collect()
            slowest = max(slowest, time.monotonic() - began)
            assert part.energy == [] and part.rejected == {}
            time.sleep(0.1)
        wait_until("4 failed polls", lambda: receiver.failures.get("unreachable", 0) >= 4)
    assert slowest < 2.0  # below one request's timeout: collect never waits for the BMC
    assert warnings_of(caplog) == [
        f"redfish: 127.0.0.1:{port}: cannot connect: Connection refused; its platform energy "
        "is left out, retrying with back-off (up to 0.2s)"
    ]
    required, _ = receivers(endpoint=f"http://127.0.0.1:{port}", required=True)
    with pytest.raises(ComponentError) as err:
        required.start()
    assert str(err.value) == f"127.0.0.1:{port}: cannot connect: Connection refused"


def test_slow_bmc_is_cut_at_the_timeout_and_never_blocks_the_tick(
    tmp_path: Path,
    password_file: Path,
    servers: list[rs.Server],
    receivers: Receivers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rs.write_legacy_bmc(tmp_path / "t", 90.0)
    server = rs.auth_bmc(tmp_path / "t", tmp_path / "a.log", USER, password_file, delay=3.0)
    bmc = Bmc(_run(servers, server), tmp_path / "t")
    receiver, _ = receivers(
        endpoint=bmc.endpoint, username=USER, password_file=str(password_file), timeout="1s"
    )
    with caplog.at_level(logging.INFO, logger=LOGGER):
        began = time.monotonic()
        receiver.start()
        started = time.monotonic() - began
        slowest = 0.0
        for _ in range(5):
            began = time.monotonic()
            part = receiver.collect()
            slowest = max(slowest, time.monotonic() - began)
            assert part.energy == []
            time.sleep(0.1)
        wait_until("3 timeouts", lambda: receiver.failures.get("timeout", 0) >= 3)
    assert started < 3.0  # the first attempt ends at its 1 s timeout, not the 3 s answer
    assert slowest < 1.0  # below the timeout: collect never waits for the BMC
    assert warnings_of(caplog) == [
        f"redfish: {bmc.where}: no answer within the timeout (the login); its platform energy "
        "is left out, retrying with back-off (up to 0.2s)"
    ]


# ------------------------------------------------------------------ doctor, factory, config


def test_doctor(legacy: Bmc, certs: rs.Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDFISH_PASSWORD", "x")
    result = doctor(HostSettings())
    assert result.available
    assert result.detail.startswith("sushy ") and result.detail.endswith(
        "installed; the BMC is checked when given a config with an endpoint "
        "(REDFISH_PASSWORD is set)"
    )
    monkeypatch.delenv("REDFISH_PASSWORD")
    assert doctor(HostSettings()).detail.endswith("(REDFISH_PASSWORD is not set)")
    config = RedfishConfig(endpoint=legacy.endpoint, ca_file=str(certs.ca))
    assert doctor(HostSettings(), config).detail == (
        f"{legacy.where}: chassis 1 300 W (PowerControl)"
    )


def test_the_factory_is_registered() -> None:
    factory = default_registry().factories("receivers")["redfish"]
    assert factory is redfish.factory
    assert factory.config_class is RedfishConfig and factory.doctor is doctor
    receiver = factory.create(
        "redfish/rack", RedfishConfig(endpoint="bmc-7.example"), HostSettings()
    )
    assert isinstance(receiver, RedfishReceiver)
    assert repr(receiver) == "<RedfishReceiver redfish/rack https://bmc-7.example>"


def config_error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        decode(RedfishConfig, raw, "receivers.redfish")
    return str(err.value)


def test_config_defaults_and_endpoints() -> None:
    config = decode(RedfishConfig, {"endpoint": "bmc-7.example"}, "receivers.redfish")
    assert (config.base_url, config.where, config.auth) == (
        "https://bmc-7.example",
        "bmc-7.example",
        "auto",
    )
    assert (config.timeout, config.poll_interval, config.max_age) == (5.0, 10.0, 30.0)
    assert (config.max_backoff, config.max_watts, config.required) == (120.0, 20000.0, False)
    assert (config.insecure_skip_verify, config.ca_file, config.chassis) == (False, "", [])
    for endpoint, url in [
        ("10.0.0.7:8443", "https://10.0.0.7:8443"),
        ("http://10.0.0.7", "http://10.0.0.7"),
        ("https://[fd00::7]:443/", "https://[fd00::7]:443"),
    ]:
        assert decode(RedfishConfig, {"endpoint": endpoint}, "r").base_url == url
    assert "hunter2" not in repr(RedfishConfig(endpoint="h", username="u", password="hunter2"))


def test_config_errors_name_the_path() -> None:
    p = "receivers.redfish"
    e = {"endpoint": "bmc"}
    assert config_error({}) == f"{p}.endpoint: is required: the BMC's https://host[:port]"
    assert config_error({"endpoint": "ftp://bmc"}) == (
        f"{p}.endpoint: expected an https:// or http:// URL or host:port, got 'ftp://bmc'"
    )
    assert config_error({"endpoint": "https://bmc/redfish/v1"}) == (
        f"{p}.endpoint: expected the BMC's address without a path (/redfish/v1 is added), got "
        "'https://bmc/redfish/v1'"
    )
    assert config_error({"endpoint": "https://root:pw@bmc"}) == (
        f"{p}.endpoint: must not hold credentials: use username and password_file"
    )
    assert config_error({"endpoint": "bmc:99999"}) == (
        f"{p}.endpoint: has an invalid port, got 'bmc:99999'"
    )
    assert config_error({**e, "username": "root"}) == (
        f"{p}.password: a username needs a password: set password (e.g. "
        "${env:REDFISH_PASSWORD}) or password_file"
    )
    assert config_error({**e, "username": "root", "password": "x", "password_file": "/f"}) == (
        f"{p}.password_file: set only one of password and password_file"
    )
    assert config_error({**e, "password_file": "/f"}) == (
        f"{p}.password_file: is used only with a username"
    )
    assert config_error({**e, "auth": "session"}) == f"{p}.auth: session needs a username"
    assert config_error({**e, "auth": "digest"}) == (
        f"{p}.auth: must be one of 'auto', 'session', 'basic', got 'digest'"
    )
    assert config_error({**e, "ca_file": "/ca.pem", "insecure_skip_verify": True}) == (
        f"{p}.ca_file: is not used with insecure_skip_verify: true (nothing is verified)"
    )
    assert config_error({"endpoint": "http://bmc", "ca_file": "/ca.pem"}) == (
        f"{p}.ca_file: applies to https endpoints only"
    )
    assert config_error({**e, "timeout": "0s"}) == f"{p}.timeout: must be greater than 0, got 0s"
    assert config_error({**e, "poll_interval": "1m"}) == (
        f"{p}.max_age: must be at least poll_interval (60s), or every reading expires before "
        "the next poll"
    )
    assert config_error({**e, "chassis": ["1U", "1U"]}) == (f'{p}.chassis[1]: "1U" is listed twice')
    assert config_error({**e, "max_watts": 0}) == f"{p}.max_watts: must be greater than 0, got 0"
    assert config_error({**e, "interval": "5s"}).startswith(f"{p}.interval: unknown key")


def test_password_file_problems(tmp_path: Path, receivers: Receivers) -> None:
    missing = tmp_path / "nope"
    receiver, _ = receivers(endpoint="127.0.0.1:1", username="u", password_file=str(missing))
    with pytest.raises(ComponentError) as err:
        receiver.start()
    assert str(err.value) == f"cannot read password_file {missing}: No such file or directory"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    config = RedfishConfig(endpoint="127.0.0.1:1", username="u", password_file=str(empty))
    assert redfish.probe(config).detail == f"password_file {empty} is empty"


# ------------------------------------------------------------------ recovery and the service


def test_a_restarted_bmc_gets_a_new_session_and_readings_resume(
    auth: Bmc, password_file: Path, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    """The BMC restarts (its sessions are gone, it is down for a while): one line each way."""
    receiver, clock = receivers(
        endpoint=auth.endpoint, username=USER, password_file=str(password_file)
    )
    receiver.start()
    wait_for_watts(receiver, {"1": 180.0})
    with caplog.at_level(logging.INFO, logger=LOGGER):
        auth.server.stop()
        wait_until("2 failed polls", lambda: receiver.failures.get("unreachable", 0) >= 2)
        rs.write_power(auth.tree, "1", 240)
        auth.server.start()
        wait_for_watts(receiver, {"1": 240.0})
    assert warnings_of(caplog) == [
        f"redfish: {auth.where}: cannot connect: Connection refused; its platform energy is "
        "left out, retrying with back-off (up to 0.2s)"
    ]
    assert f"redfish: the BMC at {auth.where} answers again" in caplog.messages
    seen = requests_seen(auth)  # the log of the restarted server
    assert "POST /redfish/v1/SessionService/Sessions login-ok" in seen
    assert "GET /redfish/v1/Chassis/1/Power session" in seen
    seconds, joules = full_window(receiver, clock, 0.3)
    assert joules == {"1": pytest.approx(240.0 * seconds, rel=1e-9)}


def test_platform_metrics_through_the_service_with_a_down_bmc_beside(
    modern: Bmc, certs: rs.Certs, otlp_http_sink: OtlpHttpSink
) -> None:
    """sushy-static -> redfish -> attribution -> OTLP/HTTP, next to a BMC that is down."""
    default = default_registry()
    registry = Registry(
        {
            "receivers": {"redfish": redfish.factory},
            "processors": default.factories("processors"),
            "exporters": default.factories("exporters"),
        }
    )
    settings = ", ".join(f"{key}: {value}" for key, value in FAST.items())
    down = rs.free_port()
    service = Service(
        parse(
            f"""
host: {{node_name: n1}}
receivers:
  redfish: {{endpoint: "{modern.endpoint}", ca_file: "{certs.ca}", chassis: [1U], {settings}}}
  redfish/down: {{endpoint: "http://127.0.0.1:{down}", {settings}}}
processors: {{attribution: {{}}}}
exporters: {{otlphttp: {{metrics_endpoint: "{otlp_http_sink.metrics_url}"}}}}
service:
  interval: 1s
  pipelines:
    metrics: {{receivers: [redfish, redfish/down], processors: [attribution],
               exporters: [otlphttp]}}
""",
            registry,
        )
    )
    service.start()
    try:
        receiver = service.receivers["redfish"]
        assert isinstance(receiver, RedfishReceiver)
        wait_for_watts(receiver, {"1U": 250.0})
        ticks: list[tuple[float, float]] = []  # (start, end) of each tick
        for tick in range(4):
            if tick:
                time.sleep(0.2)
            started = time.monotonic()
            service.tick()  # the first one starts the first interval
            ticks.append((started, time.monotonic()))
    finally:
        service.shutdown()  # flushes the exporter's queue
    slowest = max(end - start for start, end in ticks)
    assert slowest < 2.0  # below one request's timeout: no tick waits for either BMC
    joules = otlp_http_sink.metric_points("kepler.node.platform.joules")
    watts = otlp_http_sink.metric_points("kepler.node.platform.watts")
    labels = {
        "zone": "platform",
        "source": "redfish",
        "node_name": "n1",
        "bmc_id": modern.where,
        "chassis_id": "1U",
        "source_id": "EnvironmentMetrics",
        "source_name": "Chassis Environment Metrics",
        "source_type": "EnvironmentMetrics",
    }
    assert [p.attributes for p in joules] == [labels] * 3
    # The receiver collects somewhere inside each tick: its intervals, hence the joules,
    # lie between these bounds (tick n's start minus tick m's end, and the other way).
    totals = [p.value for p in joules]
    for n, total in enumerate(totals, start=1):
        low, high = ticks[n][0] - ticks[0][1], ticks[n][1] - ticks[0][0]
        assert 250.0 * low <= total <= 250.0 * high, (n, total, low, high)
    for n, point in enumerate(watts, start=1):  # joules of the interval / the tick's interval
        interval = ticks[n][0] - ticks[n - 1][0]
        low, high = ticks[n][0] - ticks[n - 1][1], ticks[n][1] - ticks[n - 1][0]
        assert 250.0 * low / interval <= point.value <= 250.0 * high / interval


def test_null_readings_count_no_energy_and_are_not_errors(
    modern: Bmc, certs: rs.Certs, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    """A BMC answering null (no figure yet): nothing recorded, nothing rejected, no warning."""
    rs.write_environment_metrics(modern.tree, "1U", None)
    rs.write_supply_metrics(modern.tree, "GPUTray", "PSU1", None)  # half a sum is no sum
    receiver, clock = receivers(endpoint=modern.endpoint, ca_file=str(certs.ca))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        receiver.start()
        wait_until("3 polls", lambda: receiver.polls >= 3)
        receiver.collect()
        time.sleep(0.2)
        part = receiver.collect()
        assert part.energy == [] and part.rejected == {} and receiver.latest() == {}
        rs.write_supply_metrics(modern.tree, "GPUTray", "PSU1", 55)
        wait_for_watts(receiver, {"GPUTray": 155.0})
        seconds, joules = full_window(receiver, clock, 0.3)
    assert joules == {"GPUTray": pytest.approx(155.0 * seconds, rel=1e-9)}
    assert warnings_of(caplog) == []


def test_doctor_with_a_config_tries_the_configured_bmc(
    tmp_path: Path, auth: Bmc, password_file: Path
) -> None:
    """``otel-kepler doctor --config`` logs in to the BMC and reads it once; a wrong password
    is said as such, and neither password appears."""
    agent = Path(sys.executable).with_name("otel-kepler")

    def doctor(password_path: Path) -> str:
        config = tmp_path / "agent.yaml"
        config.write_text(
            f"""
receivers:
  redfish:
    endpoint: "{auth.endpoint}"
    username: {USER}
    password_file: {password_path}
  estimator: {{}}
exporters: {{debug: {{}}}}
service:
  pipelines: {{metrics: {{receivers: [redfish, estimator], exporters: [debug]}}}}
"""
        )
        result = subprocess.run(
            [str(agent), "doctor", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert PASSWORD not in result.stdout + result.stderr
        lines = result.stdout.splitlines()
        configured = lines[lines.index("configured:") + 1 :]
        assert len(configured) == 1 and configured[0].split()[0] == "redfish"
        return configured[0]

    good = doctor(password_file)
    assert good.split()[1] == "yes" and "180" in good, good
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    bad = doctor(wrong)
    assert bad.split()[1] == "no", bad

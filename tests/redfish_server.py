"""Redfish peers for the redfish receiver's tests: mockup trees, sushy-tools servers, certificates.

- Mockup trees (``write_legacy_bmc``, ``write_modern_bmc``) in the layout sushy-tools'
  ``sushy-static`` serves (``<dir>/<path under /redfish/v1>/index.json``), shaped like
  two real BMCs: an older one whose chassis has only the ``Power`` resource, and a newer
  one whose chassis has ``EnvironmentMetrics`` and ``PowerSubsystem`` (and, as such BMCs
  keep for old clients, ``Power`` with a different figure, to tell which one is read).
  Readings change by rewriting a file (atomically): ``sushy-static`` reads the file at
  every GET.
- ``StaticBmc``: the real ``sushy-static`` (HTTP or HTTPS), no authentication.
- ``AuthBmc``: ``python -m tests.redfish_server``, sushy-static's request handler with a
  Redfish session service and HTTP basic authentication added (sushy-tools serves no
  sessions), and an optional delay before each answer (a slow BMC). It reports each
  request's method, path and kind of credentials (never their value) on stdout.
- ``EmulatorBmc``: the real ``sushy-emulator`` (fake driver) with an htpasswd file: HTTP
  basic authentication as sushy-tools implements it.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import http.server
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent
ROOT = "/redfish/v1"
SESSIONS = f"{ROOT}/SessionService/Sessions"


# ------------------------------------------------------------------ mockup trees


def _write(base: Path, path: str, doc: dict[str, Any] | str) -> None:
    """Write the resource at ``path`` (under /redfish/v1) atomically."""
    rel = path[len(ROOT) :].strip("/")
    target = base / rel / "index.json" if rel else base / "index.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    text = doc if isinstance(doc, str) else json.dumps(doc, indent=1)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


def _ref(path: str) -> dict[str, str]:
    return {"@odata.id": path}


def _service_root(base: Path, name: str, chassis: list[str]) -> None:
    _write(
        base,
        ROOT,
        {
            "@odata.id": f"{ROOT}/",
            "@odata.type": "#ServiceRoot.v1_15_0.ServiceRoot",
            "Id": "RootService",
            "Name": name,
            "RedfishVersion": "1.15.0",
            "UUID": "92384634-2938-2342-8820-489239905423",
            "Chassis": _ref(f"{ROOT}/Chassis"),
            "Systems": _ref(f"{ROOT}/Systems"),
            "SessionService": _ref(f"{ROOT}/SessionService"),
            "Links": {"Sessions": _ref(SESSIONS)},
        },
    )
    _write(
        base,
        f"{ROOT}/SessionService",
        {
            "@odata.id": f"{ROOT}/SessionService",
            "@odata.type": "#SessionService.v1_1_8.SessionService",
            "Id": "SessionService",
            "Name": "Session Service",
            "ServiceEnabled": True,
            "SessionTimeout": 600,
            "Sessions": _ref(SESSIONS),
        },
    )
    _write(
        base,
        SESSIONS,
        {
            "@odata.id": SESSIONS,
            "@odata.type": "#SessionCollection.SessionCollection",
            "Name": "Session Collection",
            "Members": [],
            "Members@odata.count": 0,
        },
    )
    _write(
        base,
        f"{ROOT}/Chassis",
        {
            "@odata.id": f"{ROOT}/Chassis",
            "@odata.type": "#ChassisCollection.ChassisCollection",
            "Name": "Chassis Collection",
            "Members": [_ref(f"{ROOT}/Chassis/{c}") for c in chassis],
            "Members@odata.count": len(chassis),
        },
    )


def _chassis(base: Path, ident: str, name: str, links: dict[str, Any]) -> None:
    _write(
        base,
        f"{ROOT}/Chassis/{ident}",
        {
            "@odata.id": f"{ROOT}/Chassis/{ident}",
            "@odata.type": "#Chassis.v1_21_0.Chassis",
            "Id": ident,
            "Name": name,
            "ChassisType": "RackMount",
            "Manufacturer": "Contoso",
            "PowerState": "On",
            "Status": {"State": "Enabled", "Health": "OK"},
            **links,
        },
    )


def write_power(base: Path, chassis: str, watts: Any) -> None:
    """The older ``Power`` resource, its PowerControl[0] consuming ``watts``."""
    path = f"{ROOT}/Chassis/{chassis}/Power"
    _write(
        base,
        path,
        {
            "@odata.id": path,
            "@odata.type": "#Power.v1_7_1.Power",
            "Id": "Power",
            "Name": "Power",
            "PowerControl": [
                {
                    "@odata.id": f"{path}#/PowerControl/0",
                    "MemberId": "0",
                    "Name": "System Power Control",
                    "PowerConsumedWatts": watts,
                    "PowerCapacityWatts": 1600,
                    "PowerMetrics": {"IntervalInMin": 1, "AverageConsumedWatts": 250},
                }
            ],
            "PowerSupplies": [
                {"MemberId": "0", "Name": "PSU 1", "PowerCapacityWatts": 800},
                {"MemberId": "1", "Name": "PSU 2", "PowerCapacityWatts": 800},
            ],
        },
    )


def write_environment_metrics(base: Path, chassis: str, watts: Any) -> None:
    """The newer ``EnvironmentMetrics`` resource with ``PowerWatts.Reading`` = ``watts``."""
    path = f"{ROOT}/Chassis/{chassis}/EnvironmentMetrics"
    _write(
        base,
        path,
        {
            "@odata.id": path,
            "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
            "Id": "EnvironmentMetrics",
            "Name": "Chassis Environment Metrics",
            "TemperatureCelsius": {"Reading": 31.5},
            "PowerWatts": {
                "DataSourceUri": f"{ROOT}/Chassis/{chassis}/Sensors/TotalPower",
                "Reading": watts,
            },
        },
    )


def write_supply_metrics(base: Path, chassis: str, supply: str, watts: Any) -> None:
    """One power supply's ``Metrics`` with ``InputPowerWatts.Reading`` = ``watts``."""
    path = f"{ROOT}/Chassis/{chassis}/PowerSubsystem/PowerSupplies/{supply}/Metrics"
    _write(
        base,
        path,
        {
            "@odata.id": path,
            "@odata.type": "#PowerSupplyMetrics.v1_1_0.PowerSupplyMetrics",
            "Id": "Metrics",
            "Name": f"Metrics of power supply {supply}",
            "InputVoltage": {"Reading": 230.2},
            "InputPowerWatts": {"Reading": watts},
        },
    )


def _power_subsystem(base: Path, chassis: str, supplies: dict[str, float]) -> None:
    path = f"{ROOT}/Chassis/{chassis}/PowerSubsystem"
    _write(
        base,
        path,
        {
            "@odata.id": path,
            "@odata.type": "#PowerSubsystem.v1_1_0.PowerSubsystem",
            "Id": "PowerSubsystem",
            "Name": "Power Subsystem",
            "CapacityWatts": 2000,
            "PowerSupplies": _ref(f"{path}/PowerSupplies"),
        },
    )
    _write(
        base,
        f"{path}/PowerSupplies",
        {
            "@odata.id": f"{path}/PowerSupplies",
            "@odata.type": "#PowerSupplyCollection.PowerSupplyCollection",
            "Name": "Power Supply Collection",
            "Members": [_ref(f"{path}/PowerSupplies/{s}") for s in supplies],
            "Members@odata.count": len(supplies),
        },
    )
    for supply, watts in supplies.items():
        _write(
            base,
            f"{path}/PowerSupplies/{supply}",
            {
                "@odata.id": f"{path}/PowerSupplies/{supply}",
                "@odata.type": "#PowerSupply.v1_5_0.PowerSupply",
                "Id": supply,
                "Name": f"Power Supply {supply}",
                "PowerCapacityWatts": 1000,
                "Metrics": _ref(f"{path}/PowerSupplies/{supply}/Metrics"),
            },
        )
        write_supply_metrics(base, chassis, supply, watts)


def write_legacy_bmc(base: Path, watts: float) -> None:
    """An older BMC: one chassis ``1`` with only the ``Power`` resource."""
    _service_root(base, "Legacy BMC", ["1"])
    _chassis(base, "1", "Computer System Chassis", {"Power": _ref(f"{ROOT}/Chassis/1/Power")})
    write_power(base, "1", watts)


def write_modern_bmc(base: Path, watts: float, supplies: dict[str, float]) -> None:
    """A newer BMC with two chassis.

    ``1U``: EnvironmentMetrics (``watts``), PowerSubsystem and Power (both with other
    figures, to show that EnvironmentMetrics wins). ``GPUTray``: only a PowerSubsystem,
    whose power supplies draw ``supplies`` watts.
    """
    _service_root(base, "Modern BMC", ["1U", "GPUTray"])
    _chassis(
        base,
        "1U",
        "1U Rack Server",
        {
            "EnvironmentMetrics": _ref(f"{ROOT}/Chassis/1U/EnvironmentMetrics"),
            "PowerSubsystem": _ref(f"{ROOT}/Chassis/1U/PowerSubsystem"),
            "Power": _ref(f"{ROOT}/Chassis/1U/Power"),
        },
    )
    write_environment_metrics(base, "1U", watts)
    _power_subsystem(base, "1U", {"PSU0": 1.0, "PSU1": 2.0})
    write_power(base, "1U", 3.0)
    _chassis(
        base,
        "GPUTray",
        "GPU Tray",
        {"PowerSubsystem": _ref(f"{ROOT}/Chassis/GPUTray/PowerSubsystem")},
    )
    _power_subsystem(base, "GPUTray", supplies)


def write_raw(base: Path, path: str, text: str) -> None:
    """Replace the resource at ``path`` with ``text`` as is (e.g. broken JSON)."""
    _write(base, path, text)


# ------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA that signed the server certificate
    cert: Path
    key: Path
    other_ca: Path  # a CA that did not


def make_certs(directory: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1 and localhost signed by it, another CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def ca(text: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(text))
            .issuer_name(name(text))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        return key, cert

    ca_key, ca_cert = ca("test BMC CA")
    _, other_cert = ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("bmc.test"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    out = Certs(
        directory / "ca.pem", directory / "bmc.pem", directory / "bmc.key", directory / "other.pem"
    )
    out.ca.write_bytes(ca_cert.public_bytes(pem))
    out.other_ca.write_bytes(other_cert.public_bytes(pem))
    out.cert.write_bytes(cert.public_bytes(pem))
    out.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return out


# ------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[str], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                tail = log.read_text()[-2000:]
                raise RuntimeError(f"server not listening on {port}: {tail}") from None
            time.sleep(0.05)


@dataclass
class Server:
    """A server process on 127.0.0.1; ``stop()`` ends it (the fixtures call it)."""

    argv: list[str]
    port: int
    log: Path
    scheme: str = "http"
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> None:
        out = self.log.open("w")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **self.env},
            cwd=Path(__file__).resolve().parent.parent,
        )
        out.close()
        _wait_listening(self.port, self.proc, self.log, timeout)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text()


def static_bmc(mockup: Path, log: Path, certs: Certs | None = None) -> Server:
    """The real ``sushy-static`` serving ``mockup`` (HTTPS with ``certs``)."""
    port = free_port()
    argv = [str(VENV_BIN / "sushy-static"), "-i", "127.0.0.1", "-p", str(port), "-m", str(mockup)]
    if certs is not None:
        argv += ["-c", str(certs.cert), "-k", str(certs.key)]
    return Server(argv, port, log, "https" if certs else "http", {"PYTHONUNBUFFERED": "1"})


def auth_bmc(
    mockup: Path,
    log: Path,
    username: str,
    password_file: Path,
    delay: float = 0.0,
    sessions: bool = True,
) -> Server:
    """``python -m tests.redfish_server``: sushy-static's handler with authentication."""
    port = free_port()
    argv = [
        sys.executable, "-m", "tests.redfish_server", "--port", str(port),
        "--mockup", str(mockup), "--username", username,
        "--password-file", str(password_file), "--delay", str(delay),
    ]  # fmt: skip
    if not sessions:
        argv.append("--no-sessions")
    return Server(argv, port, log, "http", {"PYTHONUNBUFFERED": "1"})


def emulator_bmc(directory: Path, username: str, password: str) -> Server:
    """The real ``sushy-emulator`` (fake systems driver) with HTTP basic authentication."""
    import bcrypt

    htpasswd = directory / "htpasswd"
    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{username}:{digest}\n")
    config = directory / "emulator.conf"
    config.write_text(f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}\n")
    port = free_port()
    argv = [
        str(VENV_BIN / "sushy-emulator"), "--fake", "-i", "127.0.0.1", "-p", str(port),
        "--config", str(config),
    ]  # fmt: skip
    return Server(argv, port, directory / "emulator.log", "http", {"PYTHONUNBUFFERED": "1"})


# ------------------------------------------------------------------ the auth server


def _handler(username: str, password: str, delay: float, sessions: bool) -> type:
    """sushy-static's RequestHandler with basic and session authentication added."""
    from sushy_tools.static import main as static

    tokens: dict[str, str] = {}  # token -> session path

    class AuthHandler(static.RequestHandler):  # type: ignore[misc]
        def _log_request(self, method: str) -> None:  # sushy-static prints headers: not here
            pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _report(self, kind: str) -> None:
            print(f"{self.command} {self.path} {kind}", flush=True)

        def _credentials(self) -> str:
            """``session``, ``basic``, or why not (``none``, ``bad-basic``, ``bad-token``)."""
            token = self.headers.get("X-Auth-Token")
            if token is not None:
                return "session" if token in tokens else "bad-token"
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                try:
                    user, _, given = base64.b64decode(header[6:]).decode().partition(":")
                except ValueError:
                    return "bad-basic"
                ok = user == username and secrets.compare_digest(given, password)
                return "basic" if ok else "bad-basic"
            return "none"

        def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _unauthorized(self) -> None:
            error = {"error": {"code": "Base.1.8.GeneralError", "message": "Unauthorized"}}
            self._reply(401, error, {"WWW-Authenticate": 'Basic realm="BMC"'})

        def do_GET(self) -> None:
            if delay:
                time.sleep(delay)
            kind = self._credentials()
            self._report(kind)
            public = self.path.rstrip("/") == ROOT
            if not public and kind not in ("session", "basic"):
                self._unauthorized()
                return
            super().do_GET()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length) if length else b""
            if self.path.rstrip("/") != SESSIONS or not sessions:
                self._report("post")
                self._reply(405, {"error": {"message": "not allowed"}}, {})
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            ok = body.get("UserName") == username and secrets.compare_digest(
                str(body.get("Password", "")), password
            )
            self._report("login-ok" if ok else "login-refused")
            if not ok:
                self._unauthorized()
                return
            token = secrets.token_hex(16)
            location = f"{SESSIONS}/{len(tokens) + 1}"
            tokens[token] = location
            print(f"TOKEN {token}", flush=True)  # for tests that look for it in logs
            self._reply(
                201,
                {"@odata.id": location, "Id": location.rsplit("/", 1)[-1], "UserName": username},
                {"X-Auth-Token": token, "Location": location},
            )

        def do_DELETE(self) -> None:
            token = self.headers.get("X-Auth-Token", "")
            known = tokens.get(token) == self.path.rstrip("/")
            self._report("logout" if known else "logout-unknown")
            if known:
                del tokens[token]
            self._reply(204 if known else 401, {}, {})

    return AuthHandler


def main() -> int:
    from sushy_tools.static import main as static

    parser = argparse.ArgumentParser("redfish_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mockup", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--no-sessions", action="store_true")
    args = parser.parse_args()
    static.REDFISH_MOCKUP_FILES = os.path.realpath(args.mockup)
    password = Path(args.password_file).read_text().rstrip("\n")
    handler = _handler(args.username, password, args.delay, not args.no_sessions)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

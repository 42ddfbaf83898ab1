"""The ``ipmi`` receiver's config section and the BMC password it points to."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from otel_kepler.component import ComponentError
from otel_kepler.endpoints import host_port
from otel_kepler.schema import ConfigError, Duration

MAX_PORT = 65535
DEFAULT_PORT = 623  # RMCP
#: The kernel's IPMI device (ipmi_devintf) that in-band access uses.
IN_BAND_DEVICE = "/dev/ipmi0"


@dataclass
class IpmiConfig:
    """Platform power from the BMC over IPMI (pyghmi): DCMI Get Power Reading, or, where the
    BMC answers DCMI with an error, its SDR sensors in watts. Polled in a thread of its own."""

    endpoint: str = field(
        default="",
        metadata={
            "doc": "the BMC (IPMI over LAN, RMCP+): host, address, host:port or [v6]:port; "
            "empty: the local BMC through /dev/ipmi0 (in-band, root)"
        },
    )
    port: int = field(
        default=DEFAULT_PORT,
        metadata={"doc": "UDP port of the BMC; endpoint may carry it instead (host:port)"},
    )
    username: str = field(default="", metadata={"doc": "BMC user (endpoint only)"})
    password_file: str = field(
        default="",
        metadata={
            "doc": "file holding the BMC password, read at every login (e.g. a mounted "
            "Secret); a trailing newline is not part of it"
        },
    )
    password_env: str = field(
        default="", metadata={"doc": "name of an environment variable holding the password"}
    )
    password: str = field(
        default="",
        repr=False,
        metadata={
            "doc": "the password itself: works, but warns; prefer password_file or password_env"
        },
    )
    method: Literal["auto", "dcmi", "sdr"] = field(
        default="auto",
        metadata={
            "doc": "auto: DCMI Get Power Reading, else (the BMC answers it with an error) the "
            "SDR sensors in watts; dcmi or sdr: only that"
        },
    )
    sensors: list[str] = field(
        default_factory=list,
        metadata={"doc": "SDR sensors to report, by name; empty: every sensor in watts"},
    )
    interval: Duration = field(
        default=Duration(5.0), metadata={"doc": "how often the BMC is polled"}
    )
    timeout: Duration = field(
        default=Duration(2.0),
        metadata={"doc": "deadline of one login or request; a later answer counts as none"},
    )
    max_age: Duration = field(
        default=Duration(15.0),
        metadata={
            "doc": "a reading holds this long; when the latest is older, the platform energy "
            "is left out until the BMC answers again"
        },
    )
    max_backoff: Duration = field(
        default=Duration(60.0),
        metadata={
            "doc": "after failures the BMC is retried after interval, then twice as long each "
            "time, up to this"
        },
    )
    max_watts: float = field(
        default=20000.0,
        metadata={
            "doc": "plausibility ceiling of one reading: a negative reading or one above it is "
            "dropped and logged, never exported"
        },
    )

    @property
    def where(self) -> str:
        """The BMC as messages name it: ``host:port``, or the in-band device."""
        return address(self.endpoint, self.port) if self.endpoint else IN_BAND_DEVICE

    def validate(self) -> None:
        self._validate_endpoint()
        sources = [n for n in ("password", "password_file", "password_env") if getattr(self, n)]
        if len(sources) > 1:
            raise ConfigError(
                sources[1], "set only one of password, password_file and password_env"
            )
        for name in ("interval", "timeout", "max_age", "max_backoff"):
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(name, f"must be greater than 0, got {value}")
        if self.max_age < self.interval:
            raise ConfigError(
                "max_age",
                f"must be at least interval ({self.interval}), or every reading expires "
                "before the next poll",
            )
        if self.max_backoff < self.interval:
            raise ConfigError("max_backoff", f"must be at least interval ({self.interval})")
        if self.max_watts <= 0:
            raise ConfigError("max_watts", f"must be greater than 0, got {self.max_watts:g}")
        seen: set[str] = set()
        for index, name in enumerate(self.sensors):
            if not name.strip():
                raise ConfigError(f"sensors[{index}]", "must not be empty")
            if name in seen:
                raise ConfigError(f"sensors[{index}]", f'"{name}" is listed twice')
            seen.add(name)
        if self.sensors and self.method == "dcmi":
            raise ConfigError("sensors", "selects SDR sensors: not used with method: dcmi")

    def _validate_endpoint(self) -> None:
        if not self.endpoint:
            for name in ("username", "password", "password_file", "password_env"):
                if getattr(self, name):
                    raise ConfigError(
                        name,
                        "is used only with an endpoint: in-band access through /dev/ipmi0 "
                        "needs no login",
                    )
            return
        if "://" in self.endpoint or "/" in self.endpoint or self.endpoint != self.endpoint.strip():
            raise ConfigError(
                "endpoint",
                f"expected a host name or IP address (the port goes in port), got "
                f"{self.endpoint!r}",
            )
        if not 0 < self.port <= MAX_PORT:
            raise ConfigError("port", f"must be 1 to {MAX_PORT}, got {self.port}")
        # host:port, [v6]:port, a bare host or a bare IPv6 address; port 0: none written.
        parsed = host_port(self.endpoint, 0, field="endpoint")
        if parsed.port:
            if self.port not in (DEFAULT_PORT, parsed.port):
                raise ConfigError(
                    "port",
                    f"is {self.port} but endpoint {self.endpoint!r} says {parsed.port}; "
                    "give the port once",
                )
            self.port = parsed.port
        self.endpoint = parsed.host


def address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Secret:
    """A password that never shows: its repr and str are masked."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str) -> None:
        self._value = value
        self.origin = origin  # where it came from, for messages: "password_file /run/x"

    def reveal(self) -> bytes:
        return self._value.encode("utf-8")

    def __repr__(self) -> str:
        return f"Secret(<hidden>, from {self.origin})"

    __str__ = __repr__


def read_password(config: IpmiConfig) -> Secret:
    """The password from wherever the config says; "" (no password) when it says nothing.

    Raises ComponentError naming the file or variable (never a value) when it cannot.
    """
    if config.password_file:
        path = config.password_file
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except OSError as err:
            raise ComponentError(
                f"cannot read password_file {path}: {err.strerror or type(err).__name__}"
            ) from None
        except UnicodeDecodeError:
            raise ComponentError(f"password_file {path} is not UTF-8 text") from None
        return Secret(text.rstrip("\r\n"), f"password_file {path}")
    if config.password_env:
        value = os.environ.get(config.password_env)
        if value is None:
            raise ComponentError(
                f"password_env: the environment variable {config.password_env} is not set"
            )
        return Secret(value, f"environment variable {config.password_env}")
    if config.password:
        return Secret(config.password, "the config file")
    return Secret("", "no password configured")

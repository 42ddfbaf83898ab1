"""The ``redfish`` receiver's config section, the BMC address and the password it points to."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from otel_kepler.component import ComponentError
from otel_kepler.schema import ConfigError, Duration

MAX_PORT = 65535


@dataclass
class RedfishConfig:
    """Platform power from the BMC over Redfish (sushy): every chassis's
    EnvironmentMetrics, PowerSubsystem or Power resource. Polled in a thread of its own."""

    endpoint: str = field(
        default="",
        metadata={
            "doc": "the BMC: https://host[:port] or http://host[:port]; a bare host[:port] "
            "means https"
        },
    )
    username: str = field(
        default="", metadata={"doc": "BMC user; empty: no login (a BMC open to anyone)"}
    )
    password: str = field(
        default="",
        repr=False,
        metadata={
            "doc": "the password, normally ${env:REDFISH_PASSWORD} (set from a Secret); "
            "exactly one of password and password_file with a username"
        },
    )
    password_file: str = field(
        default="",
        metadata={
            "doc": "file holding the password (e.g. a mounted Secret), read at every login; "
            "a trailing newline is not part of it"
        },
    )
    auth: Literal["auto", "session", "basic"] = field(
        default="auto",
        metadata={
            "doc": "auto: a Redfish session, else HTTP basic where the BMC offers no "
            "sessions; session or basic: only that"
        },
    )
    ca_file: str = field(
        default="",
        metadata={
            "doc": "PEM file of the CA(s) that signed the BMC's certificate; empty: "
            "the system's trusted CAs"
        },
    )
    insecure_skip_verify: bool = field(
        default=False,
        metadata={"doc": "accept any certificate (no TLS verification): test benches only"},
    )
    timeout: Duration = field(
        default=Duration(5.0),
        metadata={"doc": "deadline of one request (to connect, and between bytes of the answer)"},
    )
    poll_interval: Duration = field(
        default=Duration(10.0), metadata={"doc": "how often the BMC is read"}
    )
    max_age: Duration = field(
        default=Duration(30.0),
        metadata={
            "doc": "a reading holds this long; when the latest is older, the chassis's "
            "energy is left out until the BMC answers again"
        },
    )
    max_backoff: Duration = field(
        default=Duration(120.0),
        metadata={
            "doc": "after failures the BMC is retried after poll_interval, then twice as long "
            "each time, up to this"
        },
    )
    max_watts: float = field(
        default=20000.0,
        metadata={
            "doc": "plausibility ceiling of one chassis reading: a negative reading or one "
            "above it is dropped, counted and logged, never exported"
        },
    )
    chassis: list[str] = field(
        default_factory=list,
        metadata={
            "doc": "chassis to read, by Id; empty: every chassis that reports power (list "
            "them to avoid counting an enclosure and the servers inside it twice)"
        },
    )
    bmc_id: str = field(
        default="",
        metadata={"doc": "value of the bmc_id label; empty: the endpoint's host[:port]"},
    )
    required: bool = field(
        default=False,
        metadata={
            "doc": "true: the agent does not start when the first poll fails; false: it "
            "starts, logs the problem and keeps retrying in the background"
        },
    )

    @property
    def base_url(self) -> str:
        """The endpoint as a URL: ``scheme://host[:port]``, https when none is written."""
        return base_url(self.endpoint)

    @property
    def where(self) -> str:
        """The BMC as messages and the bmc_id label name it: ``host[:port]``."""
        return urlsplit(self.base_url).netloc

    def validate(self) -> None:
        self._validate_endpoint()
        if self.username:
            given = [n for n in ("password", "password_file") if getattr(self, n)]
            if not given:
                raise ConfigError(
                    "password",
                    "a username needs a password: set password (e.g. ${env:REDFISH_PASSWORD}) "
                    "or password_file",
                )
            if len(given) > 1:
                raise ConfigError("password_file", "set only one of password and password_file")
        else:
            for name in ("password", "password_file"):
                if getattr(self, name):
                    raise ConfigError(name, "is used only with a username")
            if self.auth != "auto":
                raise ConfigError("auth", f"{self.auth} needs a username")
        if self.ca_file and self.insecure_skip_verify:
            raise ConfigError(
                "ca_file", "is not used with insecure_skip_verify: true (nothing is verified)"
            )
        if (self.ca_file or self.insecure_skip_verify) and self.base_url.startswith("http:"):
            name = "ca_file" if self.ca_file else "insecure_skip_verify"
            raise ConfigError(name, "applies to https endpoints only")
        for name in ("timeout", "poll_interval", "max_age", "max_backoff"):
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(name, f"must be greater than 0, got {value}")
        if self.max_age < self.poll_interval:
            raise ConfigError(
                "max_age",
                f"must be at least poll_interval ({self.poll_interval}), or every reading "
                "expires before the next poll",
            )
        if self.max_backoff < self.poll_interval:
            raise ConfigError(
                "max_backoff", f"must be at least poll_interval ({self.poll_interval})"
            )
        if self.max_watts <= 0:
            raise ConfigError("max_watts", f"must be greater than 0, got {self.max_watts:g}")
        seen: set[str] = set()
        for index, name in enumerate(self.chassis):
            if not name.strip():
                raise ConfigError(f"chassis[{index}]", "must not be empty")
            if name in seen:
                raise ConfigError(f"chassis[{index}]", f'"{name}" is listed twice')
            seen.add(name)

    def _validate_endpoint(self) -> None:
        if not self.endpoint:
            raise ConfigError("endpoint", "is required: the BMC's https://host[:port]")
        text = self.endpoint
        if text != text.strip() or any(c.isspace() for c in text):
            raise ConfigError("endpoint", f"must not contain spaces, got {text!r}")
        scheme = text.split("://", 1)[0].lower() if "://" in text else "https"
        if scheme not in ("http", "https"):
            raise ConfigError(
                "endpoint", f"expected an https:// or http:// URL or host:port, got {text!r}"
            )
        parts = urlsplit(base_url(text))
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(
                "endpoint",
                f"expected the BMC's address without a path (/redfish/v1 is added), got {text!r}",
            )
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                "endpoint", "must not hold credentials: use username and password_file"
            )
        if not parts.hostname:
            raise ConfigError("endpoint", f"has no host name, got {text!r}")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError("endpoint", f"has an invalid port, got {text!r}") from None
        if port is not None and not 0 < port <= MAX_PORT:
            raise ConfigError("endpoint", f"port must be 1 to {MAX_PORT}, got {port}")


def base_url(endpoint: str) -> str:
    """``scheme://host[:port]`` of an endpoint as written (``host:port`` means https)."""
    text = endpoint.strip()
    if "://" not in text:
        text = f"https://{text}"
    return text.rstrip("/")


class Secret:
    """A password that never shows: its repr and str are masked."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str) -> None:
        self._value = value
        self.origin = origin  # where it came from, for messages: "password_file /run/x"

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<hidden>, from {self.origin})"

    __str__ = __repr__


def read_password(config: RedfishConfig) -> Secret:
    """The password from wherever the config says; "" when no username is configured.

    Raises ComponentError naming the file (never a value) when it cannot be read.
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
        text = text.rstrip("\r\n")
        if not text:
            raise ComponentError(f"password_file {path} is empty")
        return Secret(text, f"password_file {path}")
    if config.password:
        return Secret(config.password, "the config")
    return Secret("", "no password configured")


def env_hint() -> str:
    """Whether the password variable the docs suggest is set (never its value)."""
    return (
        "REDFISH_PASSWORD is set"
        if os.environ.get("REDFISH_PASSWORD")
        else ("REDFISH_PASSWORD is not set")
    )

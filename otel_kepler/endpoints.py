"""Validators for the network addresses and headers a config names, shared by every component.

Each raises :class:`~otel_kepler.schema.ConfigError` whose path is the config key
given as ``field`` (``"endpoint"``, ``"headers"``): called from a config
dataclass's ``validate()``, the loader prefixes the section's path, so the user
reads ``exporters.otlp.endpoint: ...``. Messages never repeat a header value or
the password part of a URL: those are where secrets live.

- :func:`grpc_endpoint`: ``host:port`` or ``http(s)://host:port`` (OTLP/gRPC).
- :func:`http_url`: an ``http(s)://`` URL with a host (OTLP/HTTP, HTTP APIs).
- :func:`host_port`: ``host:port``, ``[v6]:port``, a bare host or a URL (a BMC,
  a listen address).
- :func:`check_header` / :func:`check_headers`: what ``http.client`` and gRPC
  metadata can carry.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from otel_kepler.schema import ConfigError, join

MAX_PORT = 65535
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?)*\.?$"
)
# RFC 7230 token: the characters a header name may have.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# gRPC metadata keys: lowercase letters, digits, "-", "_" and "."; upper case is lowered.
_GRPC_KEY = re.compile(r"^[0-9A-Za-z_.\-]+$")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A checked address. ``scheme`` is ``""`` where the value was written ``host:port``."""

    host: str  # without brackets: "::1", "collector.example", "" (all interfaces)
    port: int
    scheme: str = ""
    path: str = ""  # URLs only: "/v1/metrics", or ""

    @property
    def hostport(self) -> str:
        """``host:port`` with an IPv6 address in brackets: what a socket or gRPC target takes."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def secure(self) -> bool | None:
        """True for https, False for http, None where no scheme was written."""
        return {"https": True, "http": False}.get(self.scheme)


def grpc_endpoint(value: str, *, field: str = "endpoint") -> Endpoint:
    """An OTLP/gRPC endpoint: ``host:port``, ``[v6]:port`` or ``http(s)://host:port``.

    The port is required (gRPC has no default port); a URL may end in ``/`` but carry no
    other path, query or fragment.
    """
    text = _text(value, field)
    if "://" in text:
        endpoint = _url(text, field, require_port=True)
        if endpoint.path not in ("", "/"):
            raise ConfigError(
                field, f"a gRPC endpoint has no path, got {_safe(text)!r} (path {endpoint.path!r})"
            )
        return Endpoint(endpoint.host, endpoint.port, endpoint.scheme)
    return _host_port(text, None, field, allow_empty_host=False, what="host:port")


def http_url(value: str, *, field: str = "endpoint") -> Endpoint:
    """An ``http://`` or ``https://`` URL with a host; the port, if written, is 1 to 65535.

    Without a port, the scheme's (80 or 443) is returned. Credentials in the URL
    (``user:pass@``) and fragments are refused: headers carry credentials.
    """
    text = _text(value, field)
    if "://" not in text:
        raise ConfigError(field, f"must be an http:// or https:// URL, got {_safe(text)!r}")
    return _url(text, field, require_port=False)


def host_port(
    value: str,
    default_port: int | None,
    *,
    field: str = "endpoint",
    allow_empty_host: bool = False,
) -> Endpoint:
    """``host:port``, ``[v6]:port``, a bare host (or IPv6 address), or ``scheme://host[:port]``.

    ``default_port`` is used where none is written; None makes the port required.
    ``allow_empty_host`` accepts ``:9102`` (all interfaces), for listen addresses.
    """
    text = _text(value, field)
    if "://" in text:
        endpoint = _url(text, field, require_port=False, schemes=None, default_port=default_port)
        if endpoint.path not in ("", "/"):
            raise ConfigError(field, f"expected host:port, got {_safe(text)!r}")
        return endpoint
    return _host_port(
        text, default_port, field, allow_empty_host=allow_empty_host, what="host:port or host"
    )


def check_header(name: str, value: str, *, field: str = "headers", grpc: bool = False) -> str:
    """Check one header (or gRPC metadata entry); return its name as it will be sent.

    Names are RFC 7230 tokens; for gRPC only ``0-9 a-z _ - .`` (upper case is lowered)
    and not ``grpc-*`` (reserved). Values are one line: no CR, LF, NUL or other control
    character (tab is allowed for HTTP); HTTP values are Latin-1, gRPC values printable
    ASCII unless the key ends in ``-bin``. The value is never shown in a message.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(field, "a header name must be a non-empty string")
    where = join(field, name)
    if grpc:
        if not _GRPC_KEY.match(name):
            raise ConfigError(
                where,
                "a gRPC metadata key may have only letters, digits, '-', '_' and '.' "
                f"(bad character {_first_bad(name, _GRPC_KEY)!r})",
            )
        if name.lower().startswith("grpc-"):
            raise ConfigError(where, "keys starting with grpc- are reserved by gRPC")
    elif not _TOKEN.match(name):
        raise ConfigError(
            where,
            f"is not a valid header name (bad character {_first_bad(name, _TOKEN)!r})",
        )
    if not isinstance(value, str):
        raise ConfigError(where, "the value must be a string")
    binary = grpc and name.lower().endswith("-bin")
    for index, char in enumerate(value):
        code = ord(char)
        if binary:
            ok = code <= 0xFF
        elif grpc:
            ok = 0x20 <= code <= 0x7E
        else:
            ok = code == 0x09 or 0x20 <= code <= 0x7E or 0x80 <= code <= 0xFF
        if not ok:
            raise ConfigError(where, f"the value has {_describe(char)} at position {index}")
    return name.lower() if grpc else name


def check_headers(
    headers: dict[str, str], *, field: str = "headers", grpc: bool = False
) -> dict[str, str]:
    """Check every header; names differing only in case are one header and refused twice."""
    seen: dict[str, str] = {}
    out: dict[str, str] = {}
    for name, value in headers.items():
        sent = check_header(name, value, field=field, grpc=grpc)
        folded = sent.lower()
        if folded in seen:
            raise ConfigError(
                join(field, name), f"is the same header as {seen[folded]!r} (names ignore case)"
            )
        seen[folded] = name
        out[sent] = value
    return out


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(field, "must not be empty")
    if value != value.strip() or any(c.isspace() or ord(c) < 0x20 for c in value):
        raise ConfigError(field, f"must not contain spaces or control characters, got {value!r}")
    return value


def _url(
    text: str,
    field: str,
    *,
    require_port: bool,
    schemes: tuple[str, ...] | None = ("http", "https"),
    default_port: int | None = None,
) -> Endpoint:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(
            field, f"port must be a number 1 to {MAX_PORT}, got {_safe(text)!r}"
        ) from None
    scheme = parts.scheme.lower()
    if schemes is not None and scheme not in schemes:
        raise ConfigError(field, f"must be an http:// or https:// URL, got {_safe(text)!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(field, "must not carry credentials (user:password@); put them in headers")
    if parts.fragment:
        raise ConfigError(field, f"must not have a #fragment, got {_safe(text)!r}")
    host = parts.hostname or ""
    if not host:
        raise ConfigError(field, f"has no host, got {_safe(text)!r}")
    _check_host(host, field, text)
    if port is None and parts.netloc.endswith(":"):
        raise ConfigError(field, f"has an empty port in {_safe(text)!r}")
    if port == 0:
        raise ConfigError(field, f"port must be 1 to {MAX_PORT}, got 0")
    if port is None:
        if require_port:
            raise ConfigError(field, f"needs a port (host:port), got {_safe(text)!r}")
        port = {"http": 80, "https": 443}.get(scheme, default_port or 0)
        if not port:
            raise ConfigError(field, f"needs a port, got {_safe(text)!r}")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return Endpoint(host, port, scheme, path)


def _host_port(
    text: str, default_port: int | None, field: str, *, allow_empty_host: bool, what: str
) -> Endpoint:
    if "/" in text or "?" in text or "#" in text or "@" in text:
        raise ConfigError(field, f"expected {what}, got {text!r}")
    port_text: str | None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ConfigError(field, f"has an unclosed '[' in {text!r}")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(field, f"expected [address]:port, got {text!r}")
        port_text = rest[1:] if rest else None
        _check_ipv6(host, field, text)
    elif text.count(":") > 1:
        host, port_text = text, None  # a bare IPv6 address
        _check_ipv6(host, field, text)
    else:
        host, sep, port = text.partition(":")
        port_text = port if sep else None
        if host or not allow_empty_host:
            if not host:
                raise ConfigError(field, f"has no host, got {text!r}")
            _check_host(host, field, text)
    if port_text is None:
        if default_port is None:
            raise ConfigError(field, f"needs a port (host:port), got {text!r}")
        return Endpoint(host, default_port)
    return Endpoint(host, _port(port_text, field, text))


def _port(text: str, field: str, whole: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ConfigError(field, f"port must be a number 1 to {MAX_PORT}, got {whole!r}")
    port = int(text)
    if not 0 < port <= MAX_PORT:
        raise ConfigError(field, f"port must be 1 to {MAX_PORT}, got {port}")
    return port


def _check_host(host: str, field: str, whole: str) -> None:
    if ":" in host:
        _check_ipv6(host, field, whole)
    elif not _HOSTNAME.match(host):
        raise ConfigError(field, f"has an invalid host name {host!r} in {_safe(whole)!r}")


def _check_ipv6(host: str, field: str, whole: str) -> None:
    address = host.split("%", 1)[0]  # a zone: fe80::1%eth0
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        raise ConfigError(field, f"has an invalid IPv6 address in {_safe(whole)!r}") from None


def _safe(url: str) -> str:
    """The URL with any password replaced, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{sep}{authority}{slash}{tail}"


def _first_bad(text: str, pattern: re.Pattern[str]) -> str:
    return next((c for c in text if not pattern.match(c)), "")


def _describe(char: str) -> str:
    names = {"\r": "a carriage return (CR)", "\n": "a line feed (LF)", "\0": "a NUL"}
    if char in names:
        return names[char]
    code = ord(char)
    if code < 0x20 or code == 0x7F:
        return f"a control character (0x{code:02x})"
    return f"a character that cannot be sent (U+{code:04X})"

"""One logged-in connection to a BMC's Redfish service, through sushy.

sushy does the transport: TLS (``verify`` is True, a CA file, or False), the
Redfish session (``POST`` to the service root's ``Links.Sessions``, the
``X-Auth-Token`` on every request after, ``DELETE`` of the session at close), HTTP
basic authentication, and the fallback from one to the other. This module only
chooses sushy's options and turns its errors into :class:`RedfishError`, whose
``reason`` says what kind of problem it is and whose message names the BMC, never
a credential.

sushy facts this relies on (5.x):

- ``Connector(server_side_retries=1)`` makes one attempt per request on connection
  errors and timeouts (``0`` means sushy's default of 3 attempts 2 s apart) and one
  retry of a GET answered with 5xx (after ``server_side_retries_delay``, here 0).
- ``connect_timeout`` and ``default_request_timeout`` become requests' (connect, read)
  timeout pair.
- sushy logs failures itself at WARNING and ERROR on every attempt; the receiver says
  the same once per distinct problem, so sushy's own logger is kept at CRITICAL
  unless the user configured its level.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import requests
import sushy
from sushy import auth as sushy_auth
from sushy import connector as sushy_connector
from sushy import exceptions as sushy_exc

from .config import RedfishConfig, Secret

log = logging.getLogger(__name__)

#: The Redfish service root under the endpoint.
ROOT = "/redfish/v1/"

Reason = str  # "unreachable", "timeout", "tls", "auth", "http", "malformed", "no power"


class RedfishError(Exception):
    """The BMC cannot be reached or used; ``reason`` is the kind, the message says what."""

    def __init__(self, reason: Reason, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status  # the HTTP status, where the BMC answered with one


class _NoAuth(sushy_auth.AuthBase):  # type: ignore[misc]
    """No login: for a BMC (or a test bench) that serves Redfish to anyone."""

    def _do_authenticate(self) -> None:
        pass

    def can_refresh_session(self) -> bool:
        return False


def quiet_sushy() -> None:
    """Keep sushy's per-attempt log lines out, unless its level was set on purpose."""
    logger = logging.getLogger("sushy")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.CRITICAL)


def _auth(config: RedfishConfig, password: Secret) -> Any:
    if not config.username:
        return _NoAuth()
    cls = {
        "auto": sushy_auth.SessionOrBasicAuth,
        "session": sushy_auth.SessionAuth,
        "basic": sushy_auth.BasicAuth,
    }[config.auth]
    return cls(username=config.username, password=password.reveal())


def _verify(config: RedfishConfig) -> bool | str:
    if config.insecure_skip_verify:
        return False
    return config.ca_file or True


class Link:
    """A connection to the BMC's Redfish service, logged in as the config says."""

    def __init__(self, config: RedfishConfig, password: Secret) -> None:
        self.where = config.where
        self._conn = sushy_connector.Connector(
            config.base_url,
            verify=_verify(config),
            server_side_retries=1,
            server_side_retries_delay=0,
            default_request_timeout=float(config.timeout),
            connect_timeout=float(config.timeout),
        )
        self._auth = _auth(config, password)
        try:
            with translated(self.where, "the login", config.auth):
                self.root = sushy.Sushy(
                    config.base_url, root_prefix=ROOT, auth=self._auth, connector=self._conn
                )
        except BaseException:
            self._conn.close()
            raise

    def get(self, path: str) -> dict[str, Any]:
        """The JSON object at ``path`` (RedfishError if none)."""
        with translated(self.where, path):
            doc = self._conn.get(path).json()
        if not isinstance(doc, dict):
            raise RedfishError("malformed", f"{self.where}{path}: expected a JSON object")
        return doc

    def chassis_paths(self) -> list[str]:
        """The members of the service's Chassis collection."""
        with translated(self.where, "the Chassis collection"):
            return sorted(self.root.get_chassis_collection().members_identities)

    def close(self) -> None:
        """Log out (a session is deleted on the BMC), then close the HTTP session."""
        try:
            self._auth.close()
        except Exception as err:  # noqa: BLE001 - closing must not fail the caller
            log.debug("%s: logging out failed: %s", self.where, type(err).__name__)
        self._conn.close()


@contextlib.contextmanager
def translated(where: str, what: str, auth: str = "") -> Iterator[None]:
    """sushy's and requests' exceptions inside as RedfishError naming ``what``."""
    try:
        yield
    except RedfishError:
        raise
    except Exception as err:
        raise _translate(err, where, what, auth) from None


def _translate(err: Exception, where: str, what: str, auth: str) -> RedfishError:
    if isinstance(err, sushy_exc.ConnectionError):
        cause = err.__context__
        if isinstance(cause, requests.exceptions.SSLError):
            return RedfishError("tls", f"{where}: TLS: {_ssl_reason(cause)}")
        if isinstance(cause, requests.exceptions.Timeout):
            return RedfishError("timeout", f"{where}: no answer within the timeout ({what})")
        return RedfishError("unreachable", f"{where}: cannot connect: {_short(cause)}")
    if isinstance(err, sushy_exc.MissingXAuthToken):
        return RedfishError("auth", f"{where}: the BMC gave no session token (try auth: basic)")
    if isinstance(err, sushy_exc.AccessError):
        return RedfishError(
            "auth",
            f"{where}: HTTP {err.status_code} on {what}: the BMC refused the credentials",
            err.status_code,
        )
    if isinstance(err, sushy_exc.HTTPError):
        return RedfishError("http", f"{where}: HTTP {err.status_code} on {what}", err.status_code)
    if isinstance(err, sushy_exc.MissingAttributeError):
        hint = " (auth: session needs the BMC's session service)" if auth == "session" else ""
        return RedfishError("malformed", f"{where}: {err.message}{hint}")
    if isinstance(err, ValueError | sushy_exc.SushyError):
        # requests' JSONDecodeError is a ValueError; sushy's parse errors are SushyErrors
        return RedfishError("malformed", f"{where}: {what} is not valid Redfish JSON")
    if isinstance(err, requests.exceptions.RequestException):
        return RedfishError("unreachable", f"{where}: {_short(err)}")
    return RedfishError("http", f"{where}: {type(err).__name__} on {what}")


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    """``err`` and what it wraps: requests wraps urllib3, which wraps ssl and socket errors."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        item = todo.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo.append(getattr(item, "reason", None) if isinstance(item, Exception) else None)
        todo.extend(a for a in item.args if isinstance(a, BaseException))
        todo += [item.__cause__, item.__context__]


def _ssl_reason(err: BaseException) -> str:
    for item in _chain(err):
        if isinstance(item, ssl.SSLCertVerificationError):
            return f"certificate not trusted: {item.verify_message} (set ca_file to its CA)"
        if isinstance(item, ssl.SSLError) and item.reason:
            return (
                f"{item.reason} (is the endpoint https?)"
                if item.reason == ("WRONG_VERSION_NUMBER")
                else str(item.reason)
            )
    return type(err).__name__


def _short(err: BaseException | None) -> str:
    """The innermost reason of a requests/urllib3 error, without the URL noise."""
    for item in _chain(err):
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
    return type(err).__name__ if err is not None else "unknown error"

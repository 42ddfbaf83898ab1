"""Requests to a BMC through pyghmi, each with a deadline.

Two kinds of link:

- :class:`LanLink`: IPMI 2.0 over LAN (RMCP+) with pyghmi's client session. pyghmi's
  synchronous calls wait as long as its own retry rules say: 28 s measured for a
  request to a BMC that stopped answering, and no end at all for a login that a BMC
  silently ignores (its re-login loop never gives up). So the link uses pyghmi's
  asynchronous form instead (``onlogon=`` and ``raw_command(callback=)``) and drives
  pyghmi's event loop (``Command.wait_for_rsp``) itself until the answer or the
  deadline. Past the deadline the session is logged out (which sends nothing and
  waits for nothing when the BMC is silent), so it cannot be picked up again.
- :class:`LocalLink`: the local BMC through the kernel's IPMI device (in-band); the
  kernel driver bounds each request with its own timeout and retries.

pyghmi facts this relies on (1.6.19):

- The user name and password are passed as bytes: pyghmi keeps them as bytes and keys
  its table of sessions being set up by the values given. With str, the entry of a
  session that broke is never removed, and every later login to the same BMC with the
  same credentials in this process gets that dead session back.
- A caller of ``raw_command(callback=)`` must clear the session's ``incommand`` and wake
  its ``evq`` waiters itself (pyghmi's own comment says so); the next request waits on
  ``incommand`` otherwise.
- pyghmi's event loop is shared by all sessions of the process: whichever thread drives
  it runs the callbacks of any session. Callbacks here only set an Event.
- pyghmi waits for its sockets in one IO thread per process with ``select.select``,
  which raises ValueError for a descriptor at or above FD_SETSIZE (1024). An agent on a
  node with thousands of processes can hold that many files, and then pyghmi's socket
  gets such a number: the IO thread dies and every later pyghmi wait blocks forever (it
  waits on an Event only that thread sets, without a timeout). So the link gives pyghmi
  a ``select`` built on ``poll`` (no such limit) before its first session, and refuses
  to wait on an IO thread that has ended.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from .config import IN_BAND_DEVICE, Secret, address

log = logging.getLogger(__name__)

#: The kernel's IPMI device (ipmi_devintf); in-band access needs root. Tests replace it.
DEVICE = IN_BAND_DEVICE

#: How long one turn of pyghmi's event loop may sleep while an answer is awaited.
_STEP = 0.05

#: A session idle longer than this is logged in afresh before the next request: the BMC
#: may have closed it (IPMI's default inactivity timeout is 60 s), and pyghmi keeps a
#: session alive only while someone drives its event loop.
MAX_IDLE = 25.0

#: pyghmi's code for "no answer after its retries" (not an IPMI completion code).
_PYGHMI_TIMEOUT = 0xFFFF


class LinkError(Exception):
    """The BMC cannot be reached or used; the message names it, never the password."""


class NoAnswer(LinkError):
    """The BMC did not answer before the deadline."""


class LoginRefused(LinkError):
    """The BMC answered the login with a refusal (wrong password, unknown user...)."""


@dataclass(frozen=True, slots=True)
class Response:
    """A BMC's answer: completion code and data (after the code)."""

    code: int
    data: bytes


class Link(Protocol):
    """One open connection to a BMC."""

    where: str  # the BMC, as messages name it

    def request(self, netfn: int, command: int, data: bytes = b"", lun: int = 0) -> Response:
        """Send one request and return the answer; NoAnswer past the deadline."""
        ...

    def close(self) -> None: ...


class _PollSelect:
    """The part of the ``select`` module pyghmi uses, with ``select.select`` done by poll."""

    error = OSError

    @staticmethod
    def select(
        rlist: list[Any], wlist: list[Any], xlist: list[Any], timeout: float | None = None
    ) -> tuple[list[Any], list[Any], list[Any]]:
        by_fd: dict[int, Any] = {}
        masks: dict[int, int] = {}
        for mask, objects in (
            (select.POLLIN, rlist),
            (select.POLLOUT, wlist),
            (select.POLLPRI, xlist),
        ):
            for obj in objects:
                fd = obj if isinstance(obj, int) else obj.fileno()
                by_fd[fd] = obj
                masks[fd] = masks.get(fd, 0) | mask
        poller = select.poll()
        for fd, mask in masks.items():
            poller.register(fd, mask)
        events = poller.poll(None if timeout is None else max(0.0, timeout) * 1000.0)
        ended = select.POLLIN | select.POLLERR | select.POLLHUP
        readable = [by_fd[fd] for fd, ev in events if ev & ended and masks[fd] & select.POLLIN]
        writable = [by_fd[fd] for fd, ev in events if ev & select.POLLOUT]
        special = [by_fd[fd] for fd, ev in events if ev & select.POLLPRI]
        return readable, writable, special


_poll_installed = threading.Lock()


def _pyghmi_session() -> Any:
    """pyghmi's session module, its IO thread waiting by poll, and that thread alive.

    LinkError when the IO thread has ended: pyghmi would then wait forever.
    """
    from pyghmi.ipmi.private import session

    with _poll_installed:
        if not isinstance(session.select, _PollSelect):
            session.select = _PollSelect()
    thread = session.iothread
    if thread is not None and not thread.is_alive():
        raise LinkError("pyghmi's IPMI network thread has ended (see the log); restart the agent")
    return session


def _drive(done: threading.Event, deadline: float) -> bool:
    """Run pyghmi's event loop until ``done`` is set (True) or the deadline passes (False)."""
    from pyghmi.ipmi import command

    while not done.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return done.is_set()
        try:
            command.Command.wait_for_rsp(min(remaining, _STEP))
        except Exception as err:  # noqa: BLE001 - another session's callback; not ours
            log.debug("pyghmi's event loop raised %s: %s", type(err).__name__, err)
    return True


class LanLink:
    """A logged-in RMCP+ session with a BMC over the network."""

    def __init__(self, command: Any, where: str, timeout: float) -> None:
        self._command = command
        self._session = command.ipmi_session
        self.where = where
        self.timeout = timeout
        self.last_used = time.monotonic()
        self.closed = False

    @classmethod
    def login(
        cls, host: str, port: int, username: str, password: Secret, timeout: float
    ) -> LanLink:
        """Log in within ``timeout`` seconds, or raise (the session is then abandoned)."""
        from pyghmi import exceptions
        from pyghmi.ipmi import command

        where = address(host, port)
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def logged_on(response: dict[str, Any], _command: Any) -> None:
            outcome.update(response)
            done.set()

        _pyghmi_session()
        deadline = time.monotonic() + timeout
        try:
            cmd = command.Command(
                bmc=host,
                userid=username.encode("utf-8"),
                password=password.reveal(),
                port=port,
                onlogon=logged_on,
            )
        except exceptions.IpmiException as err:
            raise LinkError(f"cannot log in to the BMC at {where}: {_text(err)}") from None
        except OSError as err:  # name resolution, sockets
            raise LinkError(
                f"cannot reach the BMC at {where}: {err.strerror or type(err).__name__}"
            ) from None
        if not _drive(done, deadline):
            _abandon(cmd.ipmi_session)
            raise NoAnswer(f"no answer from the BMC at {where} within {timeout:g}s (login)")
        if "error" in outcome:
            _abandon(cmd.ipmi_session)
            raise LoginRefused(
                f"the BMC at {where} refused the login of user {username!r}: "
                f"{outcome['error']} (password from {password.origin})"
            )
        return cls(cmd, where, timeout)

    @property
    def idle(self) -> float:
        return time.monotonic() - self.last_used

    def request(self, netfn: int, command: int, data: bytes = b"", lun: int = 0) -> Response:
        from pyghmi import exceptions

        if self.closed:
            raise LinkError(f"the session with the BMC at {self.where} is closed")
        session = self._session
        _pyghmi_session()
        if session.broken or not session.logged:
            self.close()
            raise LinkError(f"the BMC at {self.where} ended the session")
        done = threading.Event()
        answer: dict[str, Any] = {}

        def answered(response: dict[str, Any]) -> None:
            answer.update(response)
            done.set()

        deadline = time.monotonic() + self.timeout
        try:
            session.raw_command(
                netfn=netfn, command=command, data=tuple(data), rslun=lun, callback=answered
            )
            finished = _drive(done, deadline)
        except exceptions.IpmiException as err:
            self.close()
            raise LinkError(f"the BMC at {self.where} dropped the session: {_text(err)}") from None
        finally:
            session.incommand = False
            while session.evq:
                session.evq.popleft().set()
        self.last_used = time.monotonic()
        if not finished or answer.get("code") == _PYGHMI_TIMEOUT:
            self.close()
            raise NoAnswer(
                f"no answer from the BMC at {self.where} within {self.timeout:g}s "
                f"(netfn {netfn:#04x} command {command:#04x})"
            )
        return Response(int(answer.get("code", 0)), bytes(answer.get("data", b"")))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _abandon(self._session)


def _abandon(session: Any) -> None:
    """Log out without waiting: pyghmi then forgets the session (also a half-open one)."""
    try:
        session.incommand = False
        session.logout()
    except Exception as err:  # noqa: BLE001 - nothing more to do for a dead session
        log.debug("logout from a BMC failed: %s: %s", type(err).__name__, err)


def _text(err: Exception) -> str:
    return str(err) if err.args and err.args[0] is not None else type(err).__name__


class LocalLink:
    """The local BMC through the kernel's IPMI device (``ipmi_devintf``)."""

    def __init__(self, device: str) -> None:
        from pyghmi.ipmi.private import localsession

        self.where = device
        try:
            self._session = localsession.Session(device)
        except FileNotFoundError:
            raise LinkError(f"{device} does not exist: {NO_DEVICE_FIX}") from None
        except PermissionError:
            raise LinkError(f"cannot open {device}: permission denied (run as root)") from None
        except OSError as err:
            raise LinkError(f"cannot open {device}: {err.strerror or type(err).__name__}") from None

    def request(self, netfn: int, command: int, data: bytes = b"", lun: int = 0) -> Response:
        try:
            answer = self._session.raw_command(netfn=netfn, command=command, data=data, rslun=lun)
        except OSError as err:
            raise LinkError(
                f"{self.where}: request failed: {err.strerror or type(err).__name__}"
            ) from None
        return Response(int(answer["code"]), bytes(answer["data"]))

    def close(self) -> None:
        try:
            self._session.ipmidev.close()
        except OSError:
            pass


NO_DEVICE_FIX = (
    "no in-band IPMI on this host (on a server with a BMC, load the ipmi_si and "
    "ipmi_devintf kernel modules); or set endpoint to reach the BMC over the network"
)

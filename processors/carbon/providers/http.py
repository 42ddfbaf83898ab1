"""HTTP for the API providers: one JSON GET, and a poller that keeps the latest answer.

All network I/O happens in the poller's daemon thread; the tick only reads the
answer it keeps. Error messages carry the status and reason, never a header, a
URL with credentials or a body, so tokens and passwords never reach the log.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from otel_kepler import __version__

from ..config import HttpConfig
from .base import DataError, Intensity, Provider

log = logging.getLogger(__name__)

T = TypeVar("T")

#: An intensity answer is a few hundred bytes; more is not the API we expect.
MAX_BODY = 1 << 20


class FetchError(Exception):
    """A request failed; ``retry_after`` is the server's Retry-After in seconds, if any."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: urllib would send the credential headers to the new host."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def get_json(url: str, headers: Mapping[str, str], timeout: float) -> object:
    """GET ``url`` and decode its JSON body; FetchError on any failure (a redirect too)."""
    request = urllib.request.Request(
        url,
        headers={"Accept": "application/json", "User-Agent": f"otel-kepler/{__version__}"}
        | dict(headers),
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            body = response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as err:
        retry_after = parse_retry_after(err.headers.get("Retry-After"), time.time())
        err.close()
        message = _status_message(err.code, err.reason, retry_after)
        raise FetchError(message, err.code, retry_after) from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise FetchError(f"no answer within {timeout:g}s") from None
        raise FetchError(f"cannot connect: {err.reason}") from None
    except TimeoutError:
        raise FetchError(f"no answer within {timeout:g}s") from None
    except OSError as err:
        raise FetchError(f"connection failed: {err}") from None
    if len(body) > MAX_BODY:
        raise FetchError(f"answer larger than {MAX_BODY} bytes")
    try:
        return json.loads(body)
    except ValueError as err:
        raise FetchError(f"malformed JSON in the answer: {err}") from None


def _status_message(status: int, reason: str, retry_after: float | None) -> str:
    message = f"HTTP {status} {reason}".rstrip()
    if status in (401, 403):
        message += ": the credentials were refused"
    if retry_after is not None:
        message += f" (retry after {retry_after:g}s)"
    return message


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class Answer(Generic[T]):
    value: T
    fetched_at: float  # time.monotonic() of the answer


class Poller(Generic[T]):
    """Calls ``fetch`` in a daemon thread: again ``cache_for`` after an answer, and after a
    failure with exponential backoff (``backoff`` doubling up to ``max_backoff``), or later
    when the server's Retry-After says so.

    An outage is logged once, when it starts, and once more when the API answers again.
    """

    def __init__(
        self,
        name: str,
        fetch: Callable[[], T],
        cache_for: float,
        backoff: float,
        max_backoff: float,
    ) -> None:
        self.name = name
        self._fetch = fetch
        self.cache_for = cache_for
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._answer: Answer[T] | None = None
        self.error: str = ""  # the last failure, "" after an answer
        self.failures = 0  # consecutive failed attempts
        self.attempts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def answer(self) -> Answer[T] | None:
        return self._answer

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"carbon-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, wait: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(wait)

    def _run(self) -> None:
        while not self._stop.is_set():
            delay = self.poll_once()
            if self._stop.wait(delay):
                return

    def poll_once(self) -> float:
        """One attempt; returns the seconds to wait before the next."""
        self.attempts += 1
        try:
            value = self._fetch()
        except (FetchError, DataError) as err:
            return self._failed(str(err), getattr(err, "retry_after", None))
        except Exception as err:  # a bug in a parser must not kill the thread
            log.exception("%s: unexpected error", self.name)
            return self._failed(f"unexpected error: {err}", None)
        if self.failures:
            log.info("%s: answering again after %d failed attempts", self.name, self.failures)
        self._answer = Answer(value, time.monotonic())
        self.failures = 0
        self.error = ""
        return self.cache_for

    def _failed(self, message: str, retry_after: float | None) -> float:
        self.failures += 1
        self.error = message
        if self.failures == 1:
            log.warning("%s: %s; the chain falls through until it answers", self.name, message)
        else:
            log.debug("%s: still failing (%d): %s", self.name, self.failures, message)
        delay = min(self.max_backoff, self.backoff * 2.0 ** (self.failures - 1))
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay


class HttpProvider(Provider):
    """A provider whose value comes from an API, polled in the background."""

    def __init__(self, name: str, settings: HttpConfig) -> None:
        self.name = name
        self.max_age = float(settings.max_age)
        self.timeout = float(settings.timeout)
        self.poller: Poller[Intensity] = Poller(
            name, self.fetch, settings.cache_for, settings.backoff, settings.max_backoff
        )

    def start(self) -> None:
        self.check_credentials()
        self.poller.start()

    def check_credentials(self) -> None:
        """Raise ComponentError when a secret the API needs is missing."""

    @abstractmethod
    def fetch(self) -> Intensity:
        """Ask the API (in the poller's thread); FetchError or DataError on failure."""

    def intensity(self, at: float) -> Intensity | None:
        answer = self.poller.answer
        if answer is None or time.monotonic() - answer.fetched_at > self.max_age:
            return None
        return answer.value

    def status(self) -> str:
        answer = self.poller.answer
        if answer is not None:
            age = time.monotonic() - answer.fetched_at
            if age <= self.max_age:
                return ""
            stale = f"last answer {age:.0f}s old (max_age {self.max_age:g}s)"
            return f"{stale}: {self.poller.error}" if self.poller.error else stale
        return self.poller.error or "no answer yet"

    def shutdown(self) -> None:
        self.poller.stop()


def read_secret(path: str, env: str) -> str:
    """A secret from a file (read each time: it may be rotated), else an environment
    variable; "" when neither holds one. The value is never logged."""
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as err:
            raise FetchError(f"cannot read the secret file {path}: {err.strerror}") from None
    return os.environ.get(env, "").strip() if env else ""

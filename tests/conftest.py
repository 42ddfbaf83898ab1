"""Shared test setup.

In CI (``CI`` set to a true value) a skipped test is reported as a failure: a
skip there hides a missing part. On a laptop, tests that need root may skip
with their reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator
from typing import Any

import pytest

pytest_plugins = ["tests.peers", "tests.children"]  # shared fixtures

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None]:
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"


def need_root() -> None:
    """Skip on a developer machine without root; in CI the skip becomes a failure."""
    if os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture(autouse=True, scope="session")
def private_state_directory(tmp_path_factory: pytest.TempPathFactory) -> Generator[None]:
    """Agents the tests start keep their learned state (idle power) in a test folder.

    The attribution processor writes to $STATE_DIRECTORY, else /var/lib/otel-kepler as
    root: tests must not leave files on the machine, nor read a previous run's.
    """
    previous = os.environ.get("STATE_DIRECTORY")
    os.environ["STATE_DIRECTORY"] = str(tmp_path_factory.mktemp("state"))
    yield
    if previous is None:
        os.environ.pop("STATE_DIRECTORY", None)
    else:
        os.environ["STATE_DIRECTORY"] = previous


@pytest.fixture(autouse=True)
def restore_root_logging() -> Generator[None]:
    """A test that runs the agent in this process (cli.main) sets up logging as the agent
    does; later tests must not inherit its level, handlers or formatters."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    formatters = [h.formatter for h in handlers]
    yield
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler, formatter in zip(handlers, formatters, strict=True):
        if handler not in root.handlers:
            root.addHandler(handler)
        handler.setFormatter(formatter)

"""Real child processes for tests: start one, and kill and reap them all after the test."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

#: A child that says it is ready and then keeps one CPU busy.
BURN = "print('ready', flush=True)\nwhile True:\n    pass\n"


def spawn(code: str) -> subprocess.Popen[str]:
    """A python child running ``code``, returned once it printed 'ready'."""
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    return child


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Spawned children, killed and reaped after the test."""
    started: list[subprocess.Popen[str]] = []
    yield started
    reap(started)


def reap(started: list[subprocess.Popen[str]]) -> None:
    """Kill and wait for each child (if still running) and close its pipe."""
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()

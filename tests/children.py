"""Real child processes for tests: start one, and kill and reap them all after the test."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest


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
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()

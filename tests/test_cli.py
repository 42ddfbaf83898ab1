"""The installed ``otel-kepler`` command, run as users run it: exit codes and exact stderr.

Every case runs the real console-script entry point of the virtual environment as a
subprocess, with its output on pipes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from otel_kepler.cli import _parser

ROOT = Path(__file__).resolve().parent.parent
AGENT = str(Path(sys.executable).with_name("otel-kepler"))

GOOD = """\
receivers:
  procfs: {}
  estimator: {idle_watts: 10, max_watts: 50}
processors:
  attribution: {}
exporters:
  debug: {}
service:
  pipelines:
    metrics: {receivers: [procfs, estimator], processors: [attribution], exporters: [debug]}
"""


def agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "OTEL_KEPLER_LOG_LEVEL"}
    return subprocess.run(
        [AGENT, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**environ, **(env or {})},
    )


def closed_stdout(*args: str) -> tuple[int, str]:
    """Run with stdout a pipe whose reading end is already closed: every write fails."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [AGENT, *args], stdout=write, stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT
        )
    finally:
        os.close(write)
    return proc.returncode, proc.stderr


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    return path


def test_the_entry_point_is_the_installed_one() -> None:
    assert Path(AGENT).is_file(), f"{AGENT}: install the project (make .venv/.installed)"
    result = agent("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, "otel-kepler 0.1.0\n", "")


@pytest.mark.parametrize(
    "args",
    [["schema"], ["components"], ["doctor"], ["validate", "--config", "configs/local.yaml"]],
)
def test_every_command_survives_a_closed_pipe(args: list[str]) -> None:
    code, stderr = closed_stdout(*args)
    assert (code, stderr) == (141, "")


@pytest.mark.parametrize("command", ["schema", "components", "doctor"])
def test_every_command_works_in_a_shell_pipe(command: str) -> None:
    shell = f'{AGENT} {command} | head -1; echo "status ${{PIPESTATUS[0]}}"'
    result = subprocess.run(
        ["bash", "-c", shell], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    first, status = result.stdout.splitlines()
    assert first.strip() and status in ("status 0", "status 141")
    assert result.stderr == ""


def test_validate_good_and_bad(good: Path, tmp_path: Path) -> None:
    result = agent("validate", "--config", str(good))
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"{good}: valid (metrics)\n",
        "",
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "  interval: 5 s\n")
    result = agent("validate", "--config", str(bad))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"otel-kepler: config error: {bad}:11: service.interval: expected a duration like 500ms, "
        "5s or 1m (no spaces), got '5 s'\n"
    )
    missing = agent("validate", "--config", str(tmp_path / "nope.yaml"))
    assert (missing.returncode, missing.stderr) == (
        2,
        f"otel-kepler: config error: cannot read config file {tmp_path / 'nope.yaml'}: "
        "No such file or directory\n",
    )


def test_hostile_configs_are_one_line_errors(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 8)]
    bomb.write_text("\n".join(lines) + "\n" + GOOD)
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(GOOD.encode() + b"# caf\xe9\n")
    dup = tmp_path / "dup.yaml"
    dup.write_text(GOOD + "receivers: {}\n")
    expected = {
        bomb: f"{bomb}:6:10: more than 100000 values once its aliases are expanded; refused "
        "(an alias counts as all it repeats)",
        deep: f"{deep}:1:1003: invalid YAML: exceeded maximum nesting depth (while increasing "
        "flow level)",
        latin: f"{latin}:11:6: not UTF-8 text (byte 0xe9 at offset 242)",
        dup: f"{dup}:11:1: duplicate key 'receivers' (first at {dup}:1); each key may appear "
        "once in a mapping",
    }
    for path, message in expected.items():
        result = agent("validate", "--config", str(path))
        assert (result.returncode, result.stdout) == (2, ""), path.name
        assert result.stderr == f"otel-kepler: config error: {message}\n"


def test_warnings_and_strict(tmp_path: Path) -> None:
    path = tmp_path / "unused.yaml"
    path.write_text(GOOD.replace("  debug: {}\n", "  debug: {}\n  debug/spare: {}\n"))
    warning = "exporters.debug/spare: is defined but no pipeline uses it (it is not started)"
    result = agent("validate", "--config", str(path))
    assert (result.returncode, result.stdout) == (0, f"{path}: valid (metrics)\n")
    assert result.stderr == f"otel-kepler: warning: {warning}\n"
    strict = agent("validate", "--strict", "--config", str(path))
    assert (strict.returncode, strict.stdout) == (2, "")
    assert strict.stderr == f"otel-kepler: config error: {warning}\n"
    run = agent("run", "--strict", "--config", str(path), "--duration", "1s")
    assert (run.returncode, run.stderr) == (2, f"otel-kepler: config error: {warning} (--strict)\n")


def test_bad_arguments_are_one_line_with_status_2(good: Path) -> None:
    cases = {
        ("run", "--config", str(good), "--duration", "-5s"): "otel-kepler run: argument "
        "--duration: must not be negative, got '-5s' (see otel-kepler run --help)",
        ("run", "--config", str(good), "--duration=-5s"): "otel-kepler run: argument "
        "--duration: must not be negative, got '-5s' (see otel-kepler run --help)",
        ("run", "--config", str(good), "--duration", "0s"): "otel-kepler run: argument "
        "--duration: must be greater than 0, got '0s' (see otel-kepler run --help)",
        ("run", "--config", str(good), "--duration", "5 s"): "otel-kepler run: argument "
        "--duration: expected a duration like 500ms, 5s or 1m (no spaces), got '5 s' "
        "(see otel-kepler run --help)",
        ("validate",): "otel-kepler validate: the following arguments are required: --config "
        "(see otel-kepler validate --help)",
        ("--log-level", "loud", "components"): "otel-kepler: argument --log-level: must be one "
        "of debug, info, warn, warning, error, got 'loud' (see otel-kepler --help)",
    }
    for args, message in cases.items():
        result = agent(*args)
        assert (result.returncode, result.stdout, result.stderr) == (2, "", message + "\n"), args
    unknown = agent("frobnicate")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    first, *rest = unknown.stderr.splitlines()
    assert first.startswith("otel-kepler: argument COMMAND: invalid choice: 'frobnicate' (")
    assert first.endswith(") (see otel-kepler --help)") and rest == []
    env = agent("components", env={"OTEL_KEPLER_LOG_LEVEL": "loud"})
    assert (env.returncode, env.stderr) == (
        2,
        "otel-kepler: OTEL_KEPLER_LOG_LEVEL: must be one of debug, info, warn, warning, error, "
        "got 'loud'\n",
    )


def test_every_option_has_help() -> None:
    parser = _parser()
    missing = []
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in [("", parser), *subparsers.choices.items()]:
        for action in sub._actions:
            if action.option_strings and not action.help:
                missing.append(f"{name} {action.option_strings[0]}".strip())
    assert missing == []
    result = agent("validate", "--help")
    assert result.returncode == 0
    assert "--config CONFIG  pipeline YAML file to check" in result.stdout


def test_components_are_listed_as_sentences() -> None:
    result = agent("components")
    assert (result.returncode, result.stderr) == (0, "")
    rows = [line.split(None, 1) for line in result.stdout.splitlines() if line.startswith("  ")]
    assert len(rows) >= 14
    for ctype, text in rows:
        assert text[0].isupper() and not text.endswith("."), (ctype, text)


def test_log_level_warn_and_json_logs(tmp_path: Path) -> None:
    path = tmp_path / "json.yaml"
    telemetry = "  telemetry:\n    logs: {level: warn, encoding: json}\n  pipelines:"
    path.write_text(
        GOOD.replace("  pipelines:", telemetry).replace("debug: {}", "debug: {}\n  debug/spare: {}")
    )
    result = agent("doctor", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("host: procfs=/proc sysfs=/sys")
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(r["level"], r["logger"], r["msg"]) for r in records] == [
        (
            "warning",
            "otel_kepler",
            "exporters.debug/spare: is defined but no pipeline uses it (it is not started)",
        )
    ]


def test_run_with_a_closed_pipe_stops_printing_and_keeps_measuring(good: Path) -> None:
    """``otel-kepler run | head``: the console table stops, one line says so, no traceback."""
    code, stderr = closed_stdout("run", "--config", str(good), "--duration", "1500ms")
    assert code == 0, stderr
    assert "Traceback" not in stderr
    closed = [line for line in stderr.splitlines() if "standard output was closed" in line]
    assert len(closed) == 1, stderr

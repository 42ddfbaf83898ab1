"""Mutated configs through the real ``otel-kepler validate``: a one-line error or a valid config,
never a traceback or a hang.

A fixed-seed mutator (deterministic in CI) takes the shipped configs/*.yaml and damages them
the ways files get damaged or attacked: bytes deleted, inserted or not UTF-8, lines duplicated
or swapped or re-indented, values replaced by hostile tokens (aliases, tags, references,
ports, durations), alias bombs and deep nesting spliced in. Most cases run through the CLI's
``main`` in-process; a handful through the installed command as a subprocess.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from otel_kepler import cli

ROOT = Path(__file__).resolve().parent.parent
AGENT = str(Path(sys.executable).with_name("otel-kepler"))
SEED = 20261206
CASES = 300
#: Far above what a case takes (milliseconds): only a hang or a blow-up reaches it.
CASE_LIMIT_S = 2.0

TOKENS = [
    "5 s", "-5s", "0s", "1m30s", "1e400", ".inf", ".nan", "~", "null", "[]", "{}", "[[[[",
    "&a x", "*a", "*nope", "<<: *a", "${env:NOPE_NOT_SET}", "${env:NOPE_NOT_SET:-3s}",
    "${file:/nonexistent/secret}", "${file:/etc/hostname}", "${vault:x}", "${}", "$$", "${env:",
    '"\\x00"', "!!binary aGk=", "!!python/object/apply:os.system [id]", "!!set {a}",
    "!!timestamp 2026-12-06", "0x1F", "0o17", "99999", "-1", "host:99999", "http://h:99999",
    "http://u:p@h:1", "a/b/c", "[::1]:623", "'", '"', "\t", ": :", "- -", "? x", "|", ">",
    "%YAML 1.2", "---", "...", "#", "\u202e", "é", "true", "yes", "on", "9" * 400,
    "9" * 5000, '!!int "0x"', "!!bool maybe", "!!timestamp 2026-13-45", "!!float abc",
    "!!map [1]", "? [a]", "!foo x", "<<: 5",
]  # fmt: skip


def alias_bomb(depth: int) -> bytes:
    lines = ["b0: &b0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9)}]" for i in range(1, depth + 1)]
    return ("\n".join(lines) + "\n").encode()


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _delete(rng: random.Random, data: bytes) -> bytes:
    start = rng.randrange(len(data) or 1)
    return data[:start] + data[start + rng.randint(1, 20) :]


def _insert_token(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.choice(TOKENS).encode() + data[at:]


def _replace_value(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    candidates = [
        i for i, line in enumerate(lines) if b": " in line and not line.lstrip().startswith(b"#")
    ]
    if not candidates:
        return data
    i = rng.choice(candidates)
    key = lines[i].split(b": ", 1)[0]
    lines[i] = key + b": " + rng.choice(TOKENS).encode()
    return b"\n".join(lines)


def _duplicate_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    lines.insert(rng.randrange(len(lines) + 1), lines[i])
    return b"\n".join(lines)


def _swap_lines(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def _reindent(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    shift = rng.choice([-4, -2, -1, 1, 2, 4])
    lines[i] = b" " * shift + lines[i] if shift > 0 else lines[i][-shift:]
    return b"\n".join(lines)


def _random_byte(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + bytes([rng.randrange(256)]) + data[at:]


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def _splice_bomb(rng: random.Random, data: bytes) -> bytes:
    return alias_bomb(rng.randint(3, 40)) + data


def _splice_nesting(rng: random.Random, data: bytes) -> bytes:
    depth = rng.choice([10, 63, 65, 500, 5000])
    if rng.random() < 0.5:
        return data + b"\nx: " + b"[" * depth + b"]" * depth + b"\n"
    return data + b"\n" + b"".join(b"  " * i + b"k%d:\n" % i for i in range(min(depth, 400)))


MUTATIONS: list[Callable[[random.Random, bytes], bytes]] = [
    _delete, _insert_token, _replace_value, _replace_value, _replace_value, _duplicate_line,
    _swap_lines, _reindent, _random_byte, _truncate, _splice_bomb, _splice_nesting,
]  # fmt: skip


def cases() -> list[tuple[str, bytes]]:
    rng = random.Random(SEED)
    bases = sorted((ROOT / "configs").glob("*.yaml"))
    out = []
    for n in range(CASES):
        base = rng.choice(bases)
        data = base.read_bytes()
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            data = rng.choice(MUTATIONS)(rng, data)
        out.append((f"case {n} from {base.name}", data))
    return out


def test_mutated_configs_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    monkeypatch.delenv("OTEL_KEPLER_LOG_LEVEL", raising=False)
    outcomes = {0: 0, 2: 0}
    for name, data in cases():
        path = tmp_path / "case.yaml"
        path.write_bytes(data)
        started = time.monotonic()
        code = cli.main(["validate", "--config", str(path)])
        took = time.monotonic() - started
        out, err = capsys.readouterr()
        where = f"{name}: {data[:300]!r}"
        assert took < CASE_LIMIT_S, f"{where} took {took:.1f}s"
        assert "Traceback" not in err, where
        assert code in (0, 2), f"{where}: exit {code}\n{err}"
        if code == 2:
            assert out == "", where
            assert err.startswith("otel-kepler: config error: ") and err.count("\n") == 1, (
                f"{where}\n{err}"
            )
        else:
            assert out == f"{path}: valid (metrics)\n", where
            assert all(line.startswith("otel-kepler: warning: ") for line in err.splitlines()), err
        outcomes[code] += 1
    # The mutator must produce both: damage the loader refuses, and damage it tolerates.
    assert outcomes[2] > CASES // 4 and outcomes[0] > 10, outcomes


def test_mutated_configs_through_the_installed_command(tmp_path: Path) -> None:
    picked = cases()[:: CASES // 6][:6]
    picked.append(("bomb", alias_bomb(12) + (ROOT / "configs" / "local.yaml").read_bytes()))
    for name, data in picked:
        path = tmp_path / "case.yaml"
        path.write_bytes(data)
        result = subprocess.run(
            [AGENT, "validate", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        where = f"{name}: {data[:300]!r}"
        assert "Traceback" not in result.stderr, where
        assert result.returncode in (0, 2), where
        if result.returncode == 2:
            assert result.stderr.startswith("otel-kepler: config error: "), where
            assert result.stderr.count("\n") == 1, (where, result.stderr)

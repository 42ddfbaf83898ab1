"""mypy over every package of otel-kepler, laid out as it is installed (``make typecheck``).

pyproject.toml maps the directories ``receivers/``, ``processors/`` and ``exporters/`` to the
packages ``otel_kepler.receivers``, ``otel_kepler.processors`` and ``otel_kepler.exporters``
(``[tool.setuptools.package-dir]``). mypy finds modules on the file system only: it cannot
follow that mapping, nor the import hook of the editable install. So this script lays the
installed package out as symbolic links under ``.cache/typecheck/`` (the mapped directories
linked whole, the files of ``otel_kepler/`` one by one; rebuilt on every run, so new modules
are seen), runs mypy on the package ``otel_kepler`` there with the project's configuration,
and prints mypy's report with the paths of the source tree.

Usage: python scripts/typecheck.py [MYPY_OPTIONS...]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".cache" / "typecheck"
PACKAGE = "otel_kepler"


def package_dirs() -> dict[str, str]:
    """pyproject.toml's package-dir mapping: package name -> directory in the repository."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        mapping: dict[str, str] = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return mapping


def lay_out(mapping: dict[str, str]) -> dict[str, str]:
    """Build the link tree; return its path prefixes (relative to TREE) -> source prefixes."""
    shutil.rmtree(TREE, ignore_errors=True)
    top = TREE / PACKAGE
    top.mkdir(parents=True)
    for entry in sorted((ROOT / mapping.get(PACKAGE, PACKAGE)).iterdir()):
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    prefixes = {f"{PACKAGE}/": f"{mapping.get(PACKAGE, PACKAGE)}/"}
    for package, directory in mapping.items():
        if package == PACKAGE:
            continue
        if not package.startswith(PACKAGE + "."):
            sys.exit(f"typecheck: package-dir {package!r} is outside {PACKAGE}")
        inside = package.split(".")[1:]
        link = top.joinpath(*inside)
        if link.exists() or link.is_symlink():
            sys.exit(f"typecheck: {package} is mapped to {directory}/ and also in {PACKAGE}/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(ROOT / directory, target_is_directory=True)
        prefixes["/".join([PACKAGE, *inside]) + "/"] = directory.rstrip("/") + "/"
    return prefixes


def to_source(line: str, prefixes: dict[str, str]) -> str:
    """A line of mypy's report with the link tree's path replaced by the source path."""
    for inside in sorted(prefixes, key=len, reverse=True):
        if line.startswith(inside):
            return prefixes[inside] + line[len(inside) :]
    return line


def main() -> int:
    prefixes = lay_out(package_dirs())
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    # Run inside the link tree, so nothing can be found in the source tree instead.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            *sys.argv[1:],
            "-p",
            PACKAGE,
        ],
        cwd=TREE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    for line in result.stdout.splitlines():
        print(to_source(line, prefixes))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())

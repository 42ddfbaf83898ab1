"""Real cgroup directories for tests: find a hierarchy, clean a test's tree away."""

from __future__ import annotations

import time
from pathlib import Path


def cgroup_mount(fstype: str, option: str) -> Path | None:
    """Where a cgroup hierarchy is mounted (v2: option ""; v1: its controller name)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        kind, _, options = right.split()
        if kind == fstype and (not option or option in options.split(",")):
            return Path(left.split()[4])
    return None


def remove_cgroups(top: Path) -> None:
    """rmdir a test's cgroup tree bottom-up (cgroup dirs refuse rm -r)."""
    for _ in range(50):
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        try:
            for d in [*dirs, top]:
                d.rmdir()
            return
        except OSError:
            time.sleep(0.05)

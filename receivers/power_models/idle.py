"""The idle power of each CPU zone: configured, or learned from the zone's own readings.

Kepler takes idle as the residual ``dE x (1 - usage ratio)``, which falls to 0 at
full load: a fully busy node then gives its idle power to its workloads. The
attribution processor instead holds idle at the zone's idle power
(``idle = min(dE, idle watts x dt)``). That power is, per zone:

``fixed``
    the configured ``idle_watts`` of the zone;
``learned``
    the intercept at zero usage of a least-squares line of the zone's watts on the
    node's CPU usage ratio over a sliding window of ticks, once the window holds
    ``min_ticks`` ticks whose usage spans at least ``min_spread`` (else a low
    quantile of the watts seen at usage below ``LOW_USAGE``), bounded by the lowest
    watts in the window; until then the value learned before a restart (the state
    file), else the configured ``idle_watts`` as a starting value, else nothing:
    Kepler's rule applies until a value exists.

A modelled zone (the estimator) brings its model's own idle power with each
reading; that is used as is.

The learned values are saved to a small JSON state file (written atomically, every
``SAVE_EVERY`` ticks with a change and at shutdown) so that a restart on a busy node
does not fall back to Kepler's rule. The file records the host's sysfs root and node
name, and is ignored when they differ (a copied file, a fixture tree). Any error
reading or writing it is logged once and costs only the persistence.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Literal

from .fit import SlidingFit

log = logging.getLogger(__name__)

IdleMode = Literal["learned", "fixed", "usage_ratio"]

#: usage below which a tick counts as "at rest" for the quantile fallback
LOW_USAGE = 0.05
#: once learned, the line is refitted every this many ticks (a fit reads the whole window)
REFIT_EVERY = 6
#: ticks between two saves of the state file (when a value changed)
SAVE_EVERY = 60
STATE_VERSION = 1


def default_state_dir() -> str:
    """systemd's $STATE_DIRECTORY, else /var/lib/otel-kepler as root, else the XDG state home."""
    systemd = os.environ.get("STATE_DIRECTORY", "")
    if systemd:
        return systemd.split(":")[0]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/var/lib/otel-kepler"
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(xdg, "otel-kepler")


@dataclass
class _Zone:
    fit: SlidingFit
    learned: float | None = None
    ticks: int = 0


class IdlePower:
    """Per zone (``zone/source``) idle watts in force, learned tick by tick."""

    def __init__(
        self,
        mode: IdleMode = "learned",
        configured: dict[str, float] | None = None,
        window: int = 720,
        min_ticks: int = 30,
        min_spread: float = 0.2,
        state_path: str | None = None,
        host_id: dict[str, str] | None = None,
    ) -> None:
        """``configured``: zone name -> watts; ``state_path`` None persists nothing;
        ``host_id`` (sysfs root, node name) must match the state file's."""
        self.mode = mode
        self.configured = dict(configured or {})
        self.window = window
        self.min_ticks = min_ticks
        self.min_spread = min_spread
        self.state_path = state_path
        self.host_id = dict(host_id or {})
        self._zones: dict[str, _Zone] = {}
        self._saved: dict[str, float] = {}  # loaded from the state file
        self._ticks_since_save = 0
        self._dirty = False
        self._errors: set[str] = set()

    # -- per tick -----------------------------------------------------------------

    def watts(
        self,
        zone: str,
        source: str,
        usage: float | None,
        watts: float,
        seconds: float,
        model_idle: float | None = None,
    ) -> float | None:
        """Observe this tick of one zone; the idle watts in force, None for Kepler's rule."""
        if self.mode == "usage_ratio":
            return None
        if self.mode == "fixed" and zone in self.configured:
            return self.configured[zone]
        if model_idle is not None:
            return model_idle
        key = f"{zone}/{source}"
        state = self._zones.get(key)
        if state is None:
            state = self._zones[key] = _Zone(SlidingFit(self.window))
        if usage is not None:
            state.fit.add(usage, watts, seconds)
            state.ticks += 1
            due = state.learned is None or state.ticks % REFIT_EVERY == 0
            learned = self._learn(state) if due else None
            if learned is not None and learned != state.learned:
                state.learned = learned
                self._dirty = True
        if state.learned is not None:
            return state.learned
        if key in self._saved:
            return self._saved[key]
        return self.configured.get(zone)

    def _learn(self, state: _Zone) -> float | None:
        fit = state.fit
        if len(fit) < self.min_ticks:
            return None
        line = fit.line()
        if line is not None and line.spread >= self.min_spread:
            lowest = min(w for _, w in fit.points())
            return max(0.0, min(line.idle, lowest))
        return fit.low_watts(LOW_USAGE)

    def tick_done(self) -> None:
        """Save now and then (not every tick: the file changes slowly)."""
        self._ticks_since_save += 1
        if self._dirty and self._ticks_since_save >= SAVE_EVERY:
            self.save()

    def learned(self) -> dict[str, float]:
        """zone/source -> learned watts (for tests, docs and the accuracy report)."""
        return {k: z.learned for k, z in self._zones.items() if z.learned is not None}

    # -- the state file ---------------------------------------------------------

    def load(self) -> None:
        path = self.state_path
        if path is None or self.mode == "usage_ratio":
            return
        try:
            with open(path, encoding="utf-8") as file:
                raw = json.load(file)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            self._error(f"attribution: cannot read idle state file {path}: {_why(err)}")
            return
        saved = _parse_state(raw)
        if saved is None:
            self._error(f"attribution: idle state file {path} is not an idle state: ignored")
            return
        host, values = saved
        if host != self.host_id:
            log.info(
                "attribution: idle state file %s is of another host (%s): starting afresh",
                path, ", ".join(f"{k}={v}" for k, v in sorted(host.items())),
            )  # fmt: skip
            return
        self._saved = values
        log.info("attribution: idle power from %s: %s", path, _describe(values))

    def save(self) -> None:
        self._ticks_since_save = 0
        path = self.state_path
        values = {**self._saved, **self.learned()}
        if path is None or not values:
            return
        body = {"version": STATE_VERSION, "host": self.host_id, "idle_watts": values}
        folder = os.path.dirname(path) or "."
        if os.path.exists(folder) and not os.path.isdir(folder):
            self._error(f"attribution: cannot write idle state file {path}: {folder} is a file")
            return
        try:
            os.makedirs(folder, exist_ok=True)
            fd, scratch = tempfile.mkstemp(prefix=".idle-", dir=folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as file:
                    json.dump(body, file, indent=1, sort_keys=True)
                    file.write("\n")
                os.replace(scratch, path)
            except BaseException:
                os.unlink(scratch)
                raise
        except OSError as err:
            self._error(f"attribution: cannot write idle state file {path}: {_why(err)}")
            return
        self._dirty = False

    def _error(self, message: str) -> None:
        if message not in self._errors:
            self._errors.add(message)
            log.warning("%s", message)


def _parse_state(raw: object) -> tuple[dict[str, str], dict[str, float]] | None:
    if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
        return None
    host, values = raw.get("host"), raw.get("idle_watts")
    if not isinstance(host, dict) or not isinstance(values, dict):
        return None
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            return None
        out[str(key)] = float(value)
    return {str(k): str(v) for k, v in host.items()}, out


def _describe(values: dict[str, float]) -> str:
    return ", ".join(f"{key} {watts:.3g} W" for key, watts in sorted(values.items()))


def _why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)

"""Turns what the BPF program counted into the process samples the ``procfs`` receiver emits.

Every tick the probe hands over (:class:`~.loader.Drained`): the on-CPU nanoseconds (and
counters) per thread group that *ended a slice* during the interval, the exits and execs,
and per CPU the thread that is on it now and since when. From that the tracker keeps
every live process, as ``procfs`` does, but touches only those that ran:

- *Running now*: a task that has not left its CPU since the last tick has no slice in the
  maps yet. Its time so far is credited from the CPU's record (``now - start``), and when
  its slice is later charged in full, what was credited is taken back. A tick can see the
  take-back before the charge (the charge landed in the maps written next): the shortfall
  is carried to the process's next tick, so its time is never counted twice nor lost.
- *New*: a thread group never seen before is read once from procfs (comm, exe, start
  time, cgroup): those do not change while it lives, except by exec, which the program
  reports.
- *Exited*: reported once in ``exited`` with the time of its last interval as
  ``cpu_delta``, then forgotten. A process that started and ended between two ticks is
  reported too: its comm comes from the exit record, its container from its cgroup id;
  procfs never showed it, so its exe is "" and its ``start_ticks`` 0. Slices of an
  exited process that arrive after its exit was reported (the exit path itself,
  microseconds) are dropped; a slice of a gone process whose exit record has not come
  yet is held one tick for it.
- Once a minute, and whenever exit records were lost (a full map), the live processes
  are checked against procfs' list of pids: that ends processes no exit record tells of
  (zombies at start, a full map).

Processes that did not run keep the very same sample object from tick to tick (its
``cpu_delta`` is 0), so a tick costs the processes that ran, not the processes alive,
but for one copy of the dict of samples.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

from otel_kepler.data import NO_WORKLOAD, ProcessSample, Workload

from .loader import Drained
from .program import EXECED, EXITED

NS = 1_000_000_000

#: A gone process's slice waits this many ticks for its exit record.
PENDING_TICKS = 2
#: Slices of a process reported exited are dropped for this many ticks after.
TOMBSTONE_TICKS = 2
#: Compare the live processes with procfs this often (ns), and whenever exit records were
#: lost: it ends processes whose exit no record tells (zombies at start, a full map).
RESYNC_NS = 60 * NS


@dataclass(frozen=True, slots=True)
class Identity:
    """What a process is, read once from procfs."""

    start_ticks: int
    comm: str
    exe: str
    workload: Workload  # from /proc/PID/cgroup, as procfs reads it


class Host(Protocol):
    """What the tracker reads from the machine (procfs, cgroupfs)."""

    def identify(self, pid: int) -> Identity | None:
        """The identity of a live process; None if it is gone."""

    def tgid_of(self, tid: int) -> int | None:
        """The thread group of a live thread; None if it is gone."""

    def workload(self, cgroup_id: int, pid: int | None, fallback: Workload) -> Workload:
        """The workload of a cgroup id (0: unknown); ``fallback`` where the id says less."""

    def pids(self) -> set[int]:
        """Every live process id (for a resync after lost exit records)."""

    def next_tick(self) -> None:
        """A new tick begins (caches may do their once-a-tick work again)."""


@dataclass(slots=True)
class _Process:
    identity: Identity
    cpu_seconds: float
    cgroup_id: int = 0
    workload: Workload = NO_WORKLOAD


@dataclass(slots=True)
class _Stretch:
    """A task found on a CPU at a tick: its time up to ``upto`` is already credited."""

    start: int
    tgid: int
    upto: int


@dataclass(slots=True)
class _Interval:
    """What one thread group used during this tick (or while pending)."""

    ns: int = 0
    cgroup_id: int = 0
    cycles: int = 0
    instructions: int = 0
    cache_misses: int = 0
    since: int = 0  # pending: the tick it was first held

    def add(self, other: _Interval) -> None:
        self.ns += other.ns
        self.cgroup_id = other.cgroup_id or self.cgroup_id
        self.cycles += other.cycles
        self.instructions += other.instructions
        self.cache_misses += other.cache_misses


_IDLE = _Interval()


@dataclass(slots=True)
class _Event:
    flags: int
    cgroup_id: int
    comm: str


@dataclass
class Tracker:
    """The live processes and what the last tick reported for each."""

    host: Host
    tick: int = 0
    alive: dict[int, _Process] = field(default_factory=dict)
    samples: dict[int, ProcessSample] = field(default_factory=dict)
    dropped_exits: int = 0  # the probe's count at the last resync
    _moved: set[int] = field(default_factory=set)  # last tick's samples with a delta
    _stretches: list[_Stretch | None] = field(default_factory=list)
    _carry: dict[int, int] = field(default_factory=dict)  # ns taken back too early
    _pending: dict[int, _Interval] = field(default_factory=dict)
    _tombstones: dict[int, tuple[int, int]] = field(default_factory=dict)  # tick, start
    _resynced_ns: int = 0

    def seed(self, samples: dict[int, ProcessSample]) -> None:
        """Start from a procfs scan: every process alive, with its CPU time so far."""
        for pid, s in samples.items():
            identity = Identity(s.start_ticks, s.comm, s.exe, s.workload)
            self.alive[pid] = _Process(identity, s.cpu_seconds, 0, s.workload)
            self.samples[pid] = dataclasses.replace(s, cpu_delta=0.0)

    def update(self, drained: Drained) -> tuple[dict[int, ProcessSample], list[ProcessSample]]:
        """This tick's live processes (all of them) and the processes that ended."""
        self.tick += 1
        self.host.next_tick()
        used = _intervals(drained)
        self._credit_running(drained, used)
        events = _events(drained)
        exited: list[ProcessSample] = []
        for pid, event in events.items():
            if event.flags & EXITED:
                sample = self._exit(pid, used.pop(pid, None), event)
                if sample is not None:
                    exited.append(sample)
            elif event.flags & EXECED:
                self._reidentify(pid)
        moved: set[int] = set()
        for pid, interval in used.items():
            if self._account(pid, interval):
                moved.add(pid)
        exited.extend(self._expire())
        self._settle(moved)
        if not self._resynced_ns:
            self._resynced_ns = drained.now_ns  # the seed scan was the first
        lost = drained.dropped_events > self.dropped_exits
        if lost or drained.now_ns - self._resynced_ns >= RESYNC_NS:
            self.dropped_exits = drained.dropped_events
            self._resynced_ns = drained.now_ns
            exited.extend(self._resync())
        return dict(self.samples), exited

    # -- running tasks -------------------------------------------------------------------

    def _credit_running(self, drained: Drained, used: dict[int, _Interval]) -> None:
        """Credit the time of tasks on a CPU now; take back credit of slices now charged."""
        now = drained.now_ns
        stretches = self._stretches
        if len(stretches) < len(drained.running):
            stretches.extend([None] * (len(drained.running) - len(stretches)))
        for cpu, (start, tid) in enumerate(drained.running):
            old = stretches[cpu]
            if old is not None and old.start != start:
                _interval(used, old.tgid).ns -= old.upto - old.start  # charged in full now
                old = None
            if tid == 0 or start == 0 or start >= now:
                stretches[cpu] = None
            elif old is not None:
                _interval(used, old.tgid).ns += now - old.upto
                old.upto = now
            else:  # a thread group leader's tid is its pid: most tasks need no read
                tgid = tid if tid in self.alive else self.host.tgid_of(tid)
                if tgid is None:
                    stretches[cpu] = None
                    continue
                _interval(used, tgid).ns += now - start
                stretches[cpu] = _Stretch(start, tgid, now)

    def _net(self, pid: int, ns: int) -> int:
        """``ns`` less what was taken back early; a shortfall is carried to the next tick."""
        ns += self._carry.pop(pid, 0)
        if ns < 0:
            self._carry[pid] = ns
            return 0
        return ns

    # -- processes -----------------------------------------------------------------------

    def _account(self, pid: int, interval: _Interval) -> bool:
        """Add one interval to a live (or newly seen) process; True if it moved."""
        process = self.alive.get(pid)
        if process is None:
            process = self._discover(pid, interval)
            if process is None:
                return False
        ns = self._net(pid, interval.ns)
        if ns == 0 and not (interval.cycles or interval.instructions or interval.cache_misses):
            return False
        if interval.cgroup_id and interval.cgroup_id != process.cgroup_id:
            process.cgroup_id = interval.cgroup_id
            process.workload = self.host.workload(
                interval.cgroup_id, pid, process.identity.workload
            )
        delta = ns / NS
        process.cpu_seconds += delta
        self.samples[pid] = _sample(pid, process, delta, interval)
        return True

    def _discover(self, pid: int, interval: _Interval) -> _Process | None:
        """A thread group not seen before: read it, or hold its time for its exit record."""
        if interval.ns <= 0 and not interval.cycles:
            return None  # only a take-back: nothing to give
        identity = self.host.identify(pid)
        ended = self._tombstones.get(pid)
        if ended is not None and (identity is None or identity.start_ticks == ended[1]):
            return None  # the tail of an exit already reported
        if identity is None:
            held = self._pending.setdefault(pid, _Interval(since=self.tick))
            held.add(interval)
            return None
        process = _Process(identity, 0.0, 0, identity.workload)
        self.alive[pid] = process
        return process

    def _reidentify(self, pid: int) -> None:
        process = self.alive.get(pid)
        identity = self.host.identify(pid)
        if process is None or identity is None:
            return
        process.identity = identity
        process.workload = (
            self.host.workload(process.cgroup_id, pid, identity.workload)
            if process.cgroup_id
            else identity.workload
        )
        self.samples[pid] = _sample(pid, process, 0.0, _Interval())

    def _exit(self, pid: int, interval: _Interval | None, event: _Event) -> ProcessSample | None:
        """The last sample of a process that ended, with its last interval's time."""
        used = self._pending.pop(pid, None) or _Interval()
        if interval is not None:
            used.add(interval)
        ns = max(used.ns + self._carry.pop(pid, 0), 0)
        process = self.alive.pop(pid, None)
        self.samples.pop(pid, None)
        self._moved.discard(pid)
        self._tombstones[pid] = (self.tick, process.identity.start_ticks if process else 0)
        cgroup_id = event.cgroup_id or used.cgroup_id  # where it ended, else where it ran
        if process is None:
            if ns == 0:
                return None  # never seen and nothing left to report
            workload = self.host.workload(cgroup_id, None, NO_WORKLOAD)
            process = _Process(Identity(0, event.comm, "", workload), 0.0, cgroup_id, workload)
        elif cgroup_id and cgroup_id != process.cgroup_id:
            process.workload = self.host.workload(cgroup_id, None, process.workload)
        delta = ns / NS
        process.cpu_seconds += delta
        return _sample(pid, process, delta, used)

    def _expire(self) -> list[ProcessSample]:
        """Held slices whose exit record never came (lost): report them as exited."""
        exited = []
        for pid in [
            p for p, held in self._pending.items() if self.tick - held.since >= PENDING_TICKS
        ]:
            held = self._pending[pid]
            sample = self._exit(pid, None, _Event(EXITED, held.cgroup_id, ""))
            if sample is not None:
                exited.append(sample)
        for pid in [p for p, t in self._tombstones.items() if self.tick - t[0] >= TOMBSTONE_TICKS]:
            del self._tombstones[pid]
        return exited

    def _settle(self, moved: set[int]) -> None:
        """Samples that had a delta last tick and none now get a zero-delta copy."""
        for pid in self._moved - moved:
            process = self.alive.get(pid)
            if process is not None:
                self.samples[pid] = _sample(pid, process, 0.0, _IDLE)
        self._moved = moved

    def _resync(self) -> list[ProcessSample]:
        """Processes gone from procfs without an exit record have ended."""
        live = self.host.pids()
        exited = []
        for pid in [p for p in self.alive if p not in live]:
            sample = self._exit(pid, None, _Event(EXITED, 0, ""))
            if sample is not None:
                exited.append(sample)
        return exited


def _sample(pid: int, p: _Process, delta: float, used: _Interval) -> ProcessSample:
    i = p.identity
    return ProcessSample(
        pid,
        i.start_ticks,
        i.comm,
        i.exe,
        p.workload,
        p.cpu_seconds,
        delta,
        used.cycles,
        used.instructions,
        used.cache_misses,
    )


def _interval(used: dict[int, _Interval], tgid: int) -> _Interval:
    interval = used.get(tgid)
    if interval is None:
        interval = used[tgid] = _Interval()
    return interval


def _intervals(drained: Drained) -> dict[int, _Interval]:
    used: dict[int, _Interval] = {}
    for tgid, (ns, cgroup_id, cycles, instructions, misses) in drained.usage:
        used[tgid] = _Interval(ns, cgroup_id, cycles, instructions, misses)
    return used


def _events(drained: Drained) -> dict[int, _Event]:
    return {
        tgid: _Event(flags, cgroup_id, comm.split(b"\0", 1)[0].decode("utf-8", "replace"))
        for tgid, (cgroup_id, flags, _, comm) in drained.events
    }

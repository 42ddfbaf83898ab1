"""Random reading sequences through the real receivers: no sequence gives a wrong number.

Each example runs a counter (RAPL's energy_uj on a fixture powercap tree, an amd_energy
``energyN_input`` on a fixture hwmon tree, the fake NVML library's total energy) at a
known power, tick after tick, and makes some of the readings bad: a spike, a step
backwards, a value above ``max_energy_range_uj``, text that is not a number, an empty
read, a negative value, a file that vanished, an NVML call that fails. The properties,
for every sequence:

* every reported interval is at least 0 and at most ``max_watts`` over the time since
  the last report (with the counter rule's margin): the totals are monotonic, never
  negative, never above what the hardware could deliver;
* readings that are bad whatever came before (not a number, empty, negative, over the
  range, unreadable) are each rejected, once, with their reason;
* where no reading was a plausible-looking lie (no spikes or steps backwards), the total
  is the truth, except for the intervals the counter rule documents as lost: the first
  (priming) and a gap long enough for the counter to have wrapped unseen.

Hypothesis runs derandomized with a fixed number of examples: the same sequences every
run, on every machine.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from otel_kepler.component import HostSettings
from otel_kepler.data import Contribution
from otel_kepler.receivers.counter import MARGIN, SLACK_S
from otel_kepler.receivers.hwmon import HwmonConfig, HwmonReceiver
from otel_kepler.receivers.rapl import RaplConfig, RaplReceiver
from tests.fake_nvml import FakeGpu, FakeNvml, NvmlProcess, build
from tests.hwmon_fixtures import FixtureChip, SysfsTree
from tests.sysfs_fixtures import RaplTree

MAX_WATTS = 100.0
MAX_RANGE_UJ = 2_000_000_000  # 2000 J: a wrap every 20 s at full power, often in a sequence
GPU_IS_LOST = 15

#: Bad readings that are bad whatever came before: injection -> the reason counted.
ALWAYS_REJECTED = {
    "garbage": "not_a_number",
    "empty": "empty",
    "negative": "negative",
    "over_max": "over_range",
    "vanish": "unreadable",
}
#: Bad readings that may look plausible (a small step back after a long gap is a wrap).
LIES = ("spike", "backwards")

PROPERTY = settings(
    derandomize=True,
    database=None,
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@dataclass(frozen=True)
class Step:
    """One tick: the counter runs at ``watts`` for ``seconds``, then its read is ``kind``."""

    kind: str  # "good", or an injection
    seconds: float
    watts: float


def steps(injections: tuple[str, ...]) -> st.SearchStrategy[list[Step]]:
    kinds = st.sampled_from(("good",) * 3 + injections)
    step = st.builds(
        Step,
        kind=kinds,
        seconds=st.floats(min_value=0.05, max_value=6.0),
        watts=st.floats(min_value=0.0, max_value=0.9 * MAX_WATTS),
    )
    return st.lists(step, min_size=1, max_size=30)


class Target(Protocol):
    """A counter behind a real receiver."""

    def advance(self, joules: float) -> None: ...
    def inject(self, kind: str) -> None: ...
    def collect(self, seconds: float) -> tuple[float | None, dict[str, int]]: ...


@dataclass
class Outcome:
    """What the receiver reported over a sequence, checked as it goes."""

    total: float = 0.0
    rejected: dict[str, int] = field(default_factory=dict)
    expected: float = 0.0  # the truth less the intervals the rule documents as lost
    exact: bool = True  # no lie was injected: total must equal expected


def run(target: Target, sequence: list[Step], wraps: bool) -> Outcome:
    """Drive ``sequence`` through ``target``, asserting the per-tick properties."""
    out = Outcome()
    target.collect(0.0)  # primes
    since_report = 0.0  # seconds since the receiver last reported (or primed)
    since_good = 0.0  # seconds since the last reading the test knows to be good
    pending = 0.0  # true joules since the last good reading
    missed = False  # a reading since the last good one was bad
    for step in sequence:
        joules = step.watts * step.seconds
        target.advance(joules)
        if step.kind != "good":
            target.inject(step.kind)
        reported, rejected = target.collect(step.seconds)
        since_report += step.seconds
        since_good += step.seconds
        pending += joules
        for reason, count in rejected.items():
            out.rejected[reason] = out.rejected.get(reason, 0) + count
        if reported is not None:
            assert reported >= 0.0
            assert reported <= MAX_WATTS * (since_report * MARGIN + SLACK_S) + 1e-9
            out.total += reported
            since_report = 0.0
        if step.kind in LIES:
            out.exact = False
        if step.kind == "good":
            window = MAX_RANGE_UJ / 1e6 / (MAX_WATTS * MARGIN) - SLACK_S / MARGIN
            if not (missed and wraps and since_good >= window):
                out.expected += pending  # counted from the last good reading
            pending, since_good, missed = 0.0, 0.0, False
        else:
            missed = True
    return out


def check(
    out: Outcome,
    sequence: list[Step],
    reasons: dict[str, str],
    same: dict[str, str] | None = None,
    resolution: float = 1e-6,
) -> None:
    """The per-sequence properties: counts by reason, and the truth where determinable.

    ``same`` maps a reason counted to the one it stands for here (where either may be
    right, depending on what came before). ``resolution`` is the counter's unit in
    joules: the fixture rounds each step's energy to it.
    """
    rejected: dict[str, int] = {}
    for counted, count in out.rejected.items():
        reason = (same or {}).get(counted, counted)
        rejected[reason] = rejected.get(reason, 0) + count
    injected: dict[str, int] = {}
    for step in sequence:
        if step.kind in reasons:
            reason = reasons[step.kind]
            injected[reason] = injected.get(reason, 0) + 1
    lies = sum(1 for step in sequence if step.kind in LIES)
    for reason in set(injected) | set(rejected):
        if reason in injected:
            assert rejected.get(reason, 0) == injected[reason], reason
        else:  # only a lie can be rejected for another reason
            assert reason in ("backwards", "implausible_jump"), reason
    assert rejected.get("backwards", 0) + rejected.get("implausible_jump", 0) <= lies
    assert out.total >= 0.0
    if out.exact:
        slack = len(sequence) * resolution + 1e-6
        assert out.total == pytest.approx(out.expected, rel=1e-9, abs=slack)


# -- RAPL -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RaplTarget:
    def __init__(self, root: Path, start_uj: int) -> None:
        self.tree = RaplTree(root / "sys")
        self.key = self.tree.add_socket(max_energy_range_uj=MAX_RANGE_UJ, energy_uj=start_uj)
        self.clock = Clock()
        config = RaplConfig(max_watts=MAX_WATTS)
        self.receiver = RaplReceiver(
            "rapl", config, HostSettings(sysfs=self.tree.sysfs), self.clock
        )
        self.receiver.start()

    def advance(self, joules: float) -> None:
        self.tree.advance(self.key, joules)  # also restores a file the last step broke

    def inject(self, kind: str) -> None:
        real = self.tree.energy_uj(self.key)
        text = {
            "garbage": "0x1f4\n",
            "empty": "",
            "negative": "-4096\n",
            "over_max": f"{MAX_RANGE_UJ + 1 + real}\n",
            "spike": f"{min(MAX_RANGE_UJ, real + MAX_RANGE_UJ // 2)}\n",
            "backwards": f"{real // 3}\n",
        }
        if kind == "vanish":
            self.tree.remove_energy_file(self.key)
        else:
            self.tree.write_energy_text(self.key, text[kind])

    def collect(self, seconds: float) -> tuple[float | None, dict[str, int]]:
        self.clock.now += seconds
        part = self.receiver.collect()
        return _package(part, "cpu", "package"), dict(part.rejected)


def _package(part: Contribution, component: str, zone: str) -> float | None:
    found = [r.joules for r in part.energy if (r.component, r.zone) == (component, zone)]
    assert len(found) <= 1
    return found[0] if found else None


@PROPERTY
@given(
    sequence=steps(tuple(ALWAYS_REJECTED) + LIES),
    start_uj=st.integers(min_value=0, max_value=MAX_RANGE_UJ),
)
def test_rapl_totals_are_monotonic_bounded_and_true(sequence: list[Step], start_uj: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        out = run(RaplTarget(Path(root), start_uj), sequence, wraps=True)
    check(out, sequence, ALWAYS_REJECTED)


@PROPERTY
@given(
    sequence=steps(("garbage", "empty", "vanish")),
    start_uj=st.integers(min_value=0, max_value=MAX_RANGE_UJ),
)
def test_rapl_all_good_or_unreadable_sequences_count_the_truth(
    sequence: list[Step], start_uj: int
) -> None:
    with tempfile.TemporaryDirectory() as root:
        out = run(RaplTarget(Path(root), start_uj), sequence, wraps=True)
    assert out.exact
    check(out, sequence, ALWAYS_REJECTED)


# -- hwmon ----------------------------------------------------------------------------------


class HwmonTarget:
    """amd_energy's socket counter (uJ, no published range: it never wraps)."""

    def __init__(self, root: Path, start_uj: int) -> None:
        self.tree = SysfsTree(root / "sys")
        self.chip: FixtureChip = self.tree.amd_energy(cores=0)
        self.chip.set_energy_uj("Esocket0", start_uj)
        self.clock = Clock()
        config = HwmonConfig(max_watts=MAX_WATTS, gauges=False)
        self.receiver = HwmonReceiver(
            "hwmon", config, HostSettings(sysfs=self.tree.sysfs), self.clock
        )
        self.receiver.start()

    def advance(self, joules: float) -> None:
        self.chip.add_energy("Esocket0", joules)  # also restores a file the last step broke

    def inject(self, kind: str) -> None:
        real = self.chip.channels["Esocket0"].microjoules
        if kind == "vanish":
            self.chip.break_file("energy1_input")
            return
        text = {
            "garbage": "N/A",
            "empty": "",
            "negative": "-4096",
            "spike": str(real + 10**15),
            "backwards": str(real // 3),
        }[kind]
        self.chip.set("energy1_input", text, 0o640)

    def collect(self, seconds: float) -> tuple[float | None, dict[str, int]]:
        self.clock.now += seconds
        part = self.receiver.collect()
        return _package(part, "cpu", "esocket0"), dict(part.rejected)

    def close(self) -> None:
        self.receiver.shutdown()


#: No range: a value above the others is a spike. A vanished file reads empty where the
#: reader kept it open (the fixture truncates it before unlinking it), and is not there
#: where the last read failed (the reader opens it afresh): empty and unreadable are one.
HWMON_REJECTED = {k: v for k, v in ALWAYS_REJECTED.items() if k != "over_max"}
HWMON_REJECTED["empty"] = HWMON_REJECTED["vanish"] = "unreadable"
HWMON_SAME = {"empty": "unreadable"}


#: Two agreeing lies (a false restart), then a spike between two true readings: the
#: spike must not cost the second true reading too (each lie costs at most one).
FALSE_RESTART = [
    Step("backwards", 1.0, 0.0),
    Step("backwards", 1.0, 0.0),
    Step("good", 1.0, 0.0),
    Step("spike", 1.0, 0.0),
    Step("good", 1.0, 0.0),
]


@PROPERTY
@given(
    sequence=steps(tuple(HWMON_REJECTED) + LIES),
    start_uj=st.integers(min_value=0, max_value=10**13),
)
@example(sequence=FALSE_RESTART, start_uj=474_000_001)
@example(sequence=[Step(s.kind, 1.0, 40.0) for s in FALSE_RESTART], start_uj=10**12)
def test_hwmon_energy_totals_are_monotonic_bounded_and_true(
    sequence: list[Step], start_uj: int
) -> None:
    with tempfile.TemporaryDirectory() as root:
        target = HwmonTarget(Path(root), start_uj)
        try:
            out = run(target, sequence, wraps=False)
        finally:
            target.close()
    check(out, sequence, HWMON_REJECTED, HWMON_SAME)


# -- NVML -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nvml_child() -> Iterator[tuple[NvmlProcess, FakeNvml]]:
    """One child on the fake library for the whole module; each example makes a receiver."""
    library = build("full")
    with tempfile.TemporaryDirectory() as root:
        fake = FakeNvml(Path(root) / "nvml-state")
        fake.add_gpu()
        fake.write()
        with NvmlProcess(library, fake.path) as child:
            yield child, fake


class NvmlTarget:
    """The fake GPU's total energy counter (mJ since the driver loaded; never wraps)."""

    def __init__(self, child: NvmlProcess, fake: FakeNvml, start_mj: int) -> None:
        self.child, self.fake = child, fake
        self.gpu: FakeGpu = fake.gpus[0]
        self.gpu.energy_mj, self.gpu.power_mw = start_mj, 50_000
        self.gpu.errors.clear()
        self.real = start_mj
        fake.write()
        child.request("create", {"max_watts": MAX_WATTS}).ok()
        child.request("start").ok()

    def advance(self, joules: float) -> None:
        self.real += round(joules * 1000)
        self.gpu.energy_mj = self.real
        self.gpu.errors.clear()

    def inject(self, kind: str) -> None:
        if kind == "vanish":
            self.gpu.errors["nvmlDeviceGetTotalEnergyConsumption"] = GPU_IS_LOST
        elif kind == "spike":
            self.gpu.energy_mj = self.real + 10**12
        elif kind == "backwards":
            self.gpu.energy_mj = self.real // 3

    def collect(self, seconds: float) -> tuple[float | None, dict[str, int]]:
        self.fake.write()
        part = self.child.request("collect", seconds).ok()
        assert isinstance(part, Contribution)
        joules = [g.joules for g in part.gpus]
        return (joules[0] if joules else None), dict(part.rejected)

    def close(self) -> None:
        self.child.request("shutdown").ok()


NVML_REJECTED = {"vanish": "unreadable"}


@PROPERTY
@given(
    sequence=steps(("vanish", *LIES)),
    start_mj=st.integers(min_value=0, max_value=10**12),
)
def test_nvml_energy_totals_are_monotonic_bounded_and_true(
    nvml_child: tuple[NvmlProcess, FakeNvml], sequence: list[Step], start_mj: int
) -> None:
    target = NvmlTarget(*nvml_child, start_mj)
    try:
        out = run(target, sequence, wraps=False)
    finally:
        target.close()
    check(out, sequence, NVML_REJECTED, resolution=1e-3)

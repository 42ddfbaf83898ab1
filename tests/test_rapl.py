"""The rapl receiver against fixture powercap trees in the real sysfs layout."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from otel_kepler.component import ComponentError, HostSettings
from otel_kepler.data import Contribution
from otel_kepler.receivers import rapl
from otel_kepler.receivers.rapl import PERMISSION_FIX, RaplConfig, RaplReceiver
from otel_kepler.schema import ConfigError, decode
from tests.sysfs_fixtures import DRAM_MAX_ENERGY_RANGE_UJ, PACKAGE_MAX_ENERGY_RANGE_UJ, RaplTree

NOBODY = 65534


class FakeClock:
    """A monotonic clock the test moves by hand, so intervals are exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tree(tmp_path: Path) -> RaplTree:
    return RaplTree(tmp_path / "sys")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def started(tree: RaplTree, clock: FakeClock, config: RaplConfig | None = None) -> RaplReceiver:
    receiver = RaplReceiver("rapl", config or RaplConfig(), HostSettings(sysfs=tree.sysfs), clock)
    receiver.start()
    assert receiver.collect().energy == []  # the first collect only primes
    return receiver


def tick(
    receiver: RaplReceiver,
    tree: RaplTree,
    clock: FakeClock,
    watts: dict[str, float],
    seconds: float,
) -> tuple[dict[str, float], dict[str, float]]:
    """Run the fixture at ``watts`` for ``seconds``; return (truth, measured) joules by zone."""
    truth = tree.advance_all(watts, seconds)
    clock.now += seconds
    return truth, joules_by_zone(receiver.collect())


def joules_by_zone(part: Contribution) -> dict[str, float]:
    assert all(r.component == "cpu" and r.source == "rapl" for r in part.energy)
    return {r.zone: r.joules for r in part.energy}


def test_one_socket(tree: RaplTree, clock: FakeClock) -> None:
    tree.add_socket(energy_uj=123_456_789)
    receiver = started(tree, clock)
    assert receiver.zones == {"package": 1}

    truth, measured = tick(receiver, tree, clock, {"package": 50.0}, 5.0)

    assert truth == {"package": 250.0}
    assert measured == {"package": pytest.approx(250.0, rel=1e-6)}


def test_two_sockets_with_dram_and_psys_are_summed(tree: RaplTree, clock: FakeClock) -> None:
    tree.add_socket(dram=True)
    tree.add_socket(dram=True)
    tree.add_psys()
    receiver = started(tree, clock)
    assert receiver.zones == {"dram": 2, "package": 2, "psys": 1}

    watts = {"intel-rapl:0": 40.0, "intel-rapl:1": 70.0, "dram": 8.0, "psys": 150.0}
    truth, measured = tick(receiver, tree, clock, watts, 5.0)

    assert truth == {"package": 550.0, "dram": 80.0, "psys": 750.0}
    assert measured == pytest.approx(truth, rel=1e-6)


def test_sub_zones_core_and_uncore(tree: RaplTree, clock: FakeClock) -> None:
    tree.add_socket(core=True, uncore=True)
    receiver = started(tree, clock)
    truth, measured = tick(
        receiver, tree, clock, {"package": 20.0, "core": 12.0, "uncore": 3.0}, 2.0
    )
    # rel 1e-4: the fixture, like the kernel, reports whole 61 uJ energy units.
    assert measured == pytest.approx({"package": 40.0, "core": 24.0, "uncore": 6.0}, rel=1e-4)
    assert measured == pytest.approx(truth, rel=1e-4)


def test_mmio_duplicate_is_ignored(tree: RaplTree, clock: FakeClock) -> None:
    tree.add_socket()
    tree.add_mmio_duplicate("intel-rapl:0")
    assert (tree.powercap / "intel-rapl-mmio:0" / "energy_uj").exists()
    receiver = started(tree, clock)
    assert receiver.zones == {"package": 1}

    truth, measured = tick(receiver, tree, clock, {"package": 30.0}, 5.0)

    assert measured == {"package": pytest.approx(150.0, rel=1e-6)}  # not 300: no double count
    assert tree.energy_uj("intel-rapl-mmio:0") == tree.energy_uj("intel-rapl:0")


def test_wrap_in_the_middle_of_a_run(tree: RaplTree, clock: FakeClock) -> None:
    # A 300 J counter starting at 200 J, fed 250 J per tick: it wraps on most ticks.
    tree.add_socket(max_energy_range_uj=300_000_000, energy_uj=200_000_000)
    receiver = started(tree, clock)
    wraps = 0
    for _ in range(6):
        before = tree.energy_uj("intel-rapl:0")
        _, measured = tick(receiver, tree, clock, {"package": 50.0}, 5.0)
        wraps += tree.energy_uj("intel-rapl:0") < before
        assert measured == {"package": pytest.approx(250.0, rel=1e-6)}
    assert wraps >= 4


def test_joules_and_watts_track_the_truth_over_several_ticks(
    tree: RaplTree, clock: FakeClock
) -> None:
    tree.add_socket(dram=True)
    tree.add_socket(dram=True)
    receiver = started(tree, clock)
    schedule = [(1.0, 35.0, 4.0), (5.0, 120.0, 11.0), (2.5, 80.0, 9.5), (10.0, 15.0, 2.0)]
    total_truth = total_measured = 0.0
    for seconds, package_w, dram_w in schedule:
        truth, measured = tick(
            receiver, tree, clock, {"package": package_w, "dram": dram_w}, seconds
        )
        for zone, per_socket in (("package", package_w), ("dram", dram_w)):
            assert measured[zone] == pytest.approx(truth[zone], rel=0.01)
            assert measured[zone] / seconds == pytest.approx(2 * per_socket, rel=0.01)
        total_truth += truth["package"]
        total_measured += measured["package"]
    assert total_measured == pytest.approx(total_truth, rel=0.01)


def test_bogus_jump_is_dropped_and_other_zones_still_reported(
    tree: RaplTree, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    tree.add_socket(dram=True)
    tree.add_socket(dram=True)
    receiver = started(tree, clock)
    tick(receiver, tree, clock, {"package": 50.0, "dram": 5.0}, 5.0)

    jumped = tree.energy_uj("intel-rapl:1") + 100_000_000_000  # +100 kJ in 5 s: 20 kW
    tree.set_energy_uj("intel-rapl:1", jumped)
    with caplog.at_level(logging.WARNING, logger=rapl.__name__):
        truth, measured = tick(receiver, tree, clock, {"intel-rapl:0": 50.0, "dram": 5.0}, 5.0)
    # socket 1's package is left out; socket 0's is counted
    assert measured == pytest.approx({"package": 250.0, "dram": 50.0}, rel=1e-6)
    [record] = caplog.records
    assert str(tree.energy_file("intel-rapl:1")) in record.getMessage()
    assert "zone package (implausible_jump)" in record.getMessage()
    assert "(20000 W > max_watts 5000)" in record.getMessage()

    # The counter stays at its new level: two readings agree, it primes again from there
    # (that socket's interval is lost, nothing is guessed), then counts normally.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=rapl.__name__):
        _, measured = tick(receiver, tree, clock, {"package": 50.0, "dram": 5.0}, 5.0)
    assert measured == pytest.approx({"package": 250.0, "dram": 50.0}, rel=1e-6)
    [record] = caplog.records
    assert "restarted from a new level" in record.getMessage()
    _, measured = tick(receiver, tree, clock, {"package": 50.0, "dram": 5.0}, 5.0)
    assert measured == pytest.approx({"package": 500.0, "dram": 50.0}, rel=1e-6)

    # A counter reset reads as a wrap of almost the whole range: rejected as backwards.
    caplog.clear()
    tree.set_energy_uj("intel-rapl:0", 0)
    with caplog.at_level(logging.WARNING, logger=rapl.__name__):
        _, measured = tick(receiver, tree, clock, {"intel-rapl:1": 50.0, "dram": 5.0}, 5.0)
    assert measured == pytest.approx({"package": 250.0, "dram": 50.0}, rel=1e-6)
    [record] = caplog.records
    assert "(backwards)" in record.getMessage()
    assert "went backwards from" in record.getMessage()


def test_max_watts_is_the_ceiling(tree: RaplTree, clock: FakeClock) -> None:
    tree.add_socket()
    receiver = started(tree, clock, RaplConfig(max_watts=100.0))
    _, measured = tick(receiver, tree, clock, {"package": 99.0}, 2.0)
    assert measured == {"package": pytest.approx(198.0, rel=1e-6)}
    # the ceiling has a margin of 5% of the interval and 10 ms: 110 W over 2 s is above it
    _, measured = tick(receiver, tree, clock, {"package": 110.0}, 2.0)
    assert measured == {}


def test_a_vanished_zone_costs_that_zone_only(
    tree: RaplTree, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    tree.add_socket(dram=True)
    receiver = started(tree, clock)
    dram = tree.energy_file("intel-rapl:0:0")
    dram.unlink()
    with caplog.at_level(logging.WARNING, logger=rapl.__name__):
        _, first = tick(receiver, tree, clock, {"package": 50.0}, 2.0)
        _, second = tick(receiver, tree, clock, {"package": 50.0}, 2.0)
    assert first == second == {"package": pytest.approx(100.0, rel=1e-6)}
    [record] = caplog.records  # logged once, not every tick
    assert str(dram) in record.getMessage()

    tree.advance("intel-rapl:0:0", 12.0)  # the file is back, 12 J on while it was unreadable
    _, back = tick(receiver, tree, clock, {"package": 50.0, "dram": 5.0}, 2.0)
    # the gap's energy is not lost: the next good read covers it
    assert back == pytest.approx({"package": 100.0, "dram": 12.0 + 10.0}, rel=1e-6)
    _, later = tick(receiver, tree, clock, {"package": 50.0, "dram": 5.0}, 2.0)
    assert later == pytest.approx({"package": 100.0, "dram": 10.0}, rel=1e-6)


def test_a_zone_out_long_enough_to_wrap_twice_primes_again(
    tree: RaplTree, clock: FakeClock
) -> None:
    """Out longer than its range lasts at max_watts, the counter may have wrapped twice."""
    tree.add_socket(dram=True)
    receiver = started(tree, clock, RaplConfig(max_watts=100.0))
    dram = tree.energy_file("intel-rapl:0:0")
    dram.unlink()
    seconds = DRAM_MAX_ENERGY_RANGE_UJ / 1e6 / 100.0 + 1.0  # longer than one wrap at 100 W
    tick(receiver, tree, clock, {"package": 50.0}, seconds)
    tree.advance("intel-rapl:0:0", 1.0)
    _, back = tick(receiver, tree, clock, {"package": 50.0, "dram": 5.0}, 2.0)
    assert back == {"package": pytest.approx(100.0, rel=1e-6)}  # dram primes again
    _, later = tick(receiver, tree, clock, {"package": 50.0, "dram": 5.0}, 2.0)
    assert later == pytest.approx({"package": 100.0, "dram": 10.0}, rel=1e-6)


def test_zone_filter(tree: RaplTree, clock: FakeClock) -> None:
    tree.add_socket(core=True, dram=True)
    tree.add_socket(core=True, dram=True)
    receiver = started(tree, clock, RaplConfig(zones=["dram", "core"]))
    assert receiver.zones == {"core": 2, "dram": 2}
    _, measured = tick(receiver, tree, clock, {"package": 50.0, "core": 30.0, "dram": 6.0}, 1.0)
    assert measured == pytest.approx({"core": 60.0, "dram": 12.0}, rel=1e-6)


def test_zone_filter_matching_nothing(tree: RaplTree) -> None:
    tree.add_socket(dram=True)
    receiver = RaplReceiver("rapl", RaplConfig(zones=["psys"]), HostSettings(sysfs=tree.sysfs))
    with pytest.raises(ComponentError) as err:
        receiver.start()
    assert str(err.value) == (
        f"none of the configured zones (psys) exist under {tree.powercap}; found: dram, package"
    )


def test_config_errors_name_the_path() -> None:
    with pytest.raises(ConfigError) as err:
        decode(RaplConfig, {"zones": ["package", "pkg"]}, "receivers.rapl")
    assert str(err.value) == (
        'receivers.rapl.zones[1]: unknown zone "pkg" (known: core, dram, package, psys, uncore)'
    )
    with pytest.raises(ConfigError) as err:
        decode(RaplConfig, {"max_watts": 0}, "receivers.rapl")
    assert str(err.value) == "receivers.rapl.max_watts: must be greater than 0, got 0"
    with pytest.raises(ConfigError) as err:
        decode(RaplConfig, {"zone": ["dram"]}, "receivers.rapl")
    assert str(err.value) == (
        "receivers.rapl.zone: unknown key (known keys: estimator, fallback, max_watts, zones)"
    )

    config = decode(RaplConfig, {"zones": ["psys"], "max_watts": 800}, "receivers.rapl")
    assert config == RaplConfig(zones=["psys"], max_watts=800.0)
    assert decode(RaplConfig, None, "receivers.rapl") == RaplConfig(zones=[], max_watts=5000.0)


@pytest.fixture
def world_readable_tree() -> Iterator[RaplTree]:
    """A tree outside pytest's 0700 tmp dirs, so that an unprivileged child can reach it."""
    directory = tempfile.mkdtemp(prefix="rapl-perm-")
    os.chmod(directory, 0o755)
    try:
        yield RaplTree(Path(directory) / "sys")
    finally:
        shutil.rmtree(directory)


def in_unprivileged_child(run: Callable[[], str]) -> str:
    """Run ``run`` in a forked child that is not root, and return what it returned.

    As root, chmod cannot deny a read, so the child drops to uid/gid ``nobody``:
    the kernel then refuses the read for real (EACCES), as it does for an agent
    started without privileges. Forking (not exec) keeps the already imported
    modules, which ``nobody`` could not read from this virtualenv.
    """
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(reader)
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            result = run()
        except BaseException as err:  # report anything, never return into pytest
            result = f"child failed: {err!r}"
        os.write(writer, result.encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        output = pipe.read().decode()
    os.waitpid(pid, 0)
    return output


def test_unreadable_energy_uj_names_the_file_and_the_fix(world_readable_tree: RaplTree) -> None:
    tree = world_readable_tree
    tree.add_socket(dram=True)
    os.chmod(tree.energy_file("intel-rapl:0"), 0o000)  # the mode is 0400 root:root on 5.10+
    host = HostSettings(sysfs=tree.sysfs)

    def start_and_doctor() -> str:
        try:
            RaplReceiver("rapl", RaplConfig(), host).start()
            started = "started"
        except ComponentError as err:
            started = str(err)
        return f"{started}\n{rapl.doctor(host).detail}"

    start_error, doctor_detail = in_unprivileged_child(start_and_doctor).split("\n")
    expected = (
        f"cannot read {tree.energy_file('intel-rapl:0')}: permission denied. {PERMISSION_FIX}"
    )
    assert start_error == expected
    assert doctor_detail == expected
    assert "CVE-2020-8694" in expected and "root" in expected


def test_real_sys_of_this_machine() -> None:
    """On this VM: the no-RAPL message. On a RAPL host: it starts, or names energy_uj."""
    powercap = "/sys/class/powercap"
    has_rapl = os.path.isdir(powercap) and any(
        rapl.normalise(Path(d, "name").read_text().strip()) for d in rapl.zone_dirs(powercap)
    )
    receiver = RaplReceiver("rapl", RaplConfig(), HostSettings())
    availability = rapl.doctor(HostSettings())
    if has_rapl:
        assert availability.available or "energy_uj: permission denied" in availability.detail
        return
    with pytest.raises(ComponentError) as err:
        receiver.start()
    assert str(err.value) == (
        "no RAPL zones under /sys/class/powercap: this host has no RAPL (a VM?); "
        "use the estimator receiver, or fallback: estimator"
    )
    assert availability.available is False
    if os.path.isdir(powercap):
        assert availability.detail == str(err.value)
    else:
        assert availability.detail == (
            "/sys/class/powercap does not exist: the kernel exposes no powercap interface "
            "(a VM, or the intel_rapl_msr module is not loaded)"
        )


def test_doctor(tree: RaplTree) -> None:
    host = HostSettings(sysfs=tree.sysfs)
    tree.add_socket()
    tree.add_mmio_duplicate()
    (tree.powercap / "intel-rapl:0").unlink()  # only the control types and mmio are left
    shutil.rmtree(tree.zones["intel-rapl:0"].path)
    # the MMIO zone is the package counter too: used where intel-rapl has no such zone
    assert rapl.doctor(host).detail == f"package (1 socket) under {tree.powercap}"
    (tree.powercap / "intel-rapl-mmio:0").unlink()
    shutil.rmtree(tree.zones["intel-rapl-mmio:0"].path)
    assert rapl.doctor(host).detail == (
        f"no RAPL zones under {tree.powercap}: this host has no RAPL (a VM?); "
        "use the estimator receiver, or fallback: estimator"
    )

    other = RaplTree(Path(tree.sysfs).parent / "sys2")
    other.add_socket(dram=True)
    other.add_socket(dram=True)
    availability = rapl.doctor(HostSettings(sysfs=other.sysfs))
    assert availability.available is True
    assert availability.detail == f"dram (2 sockets), package (2 sockets) under {other.powercap}"


def test_factory_and_entry_point(tree: RaplTree) -> None:
    tree.add_socket()
    [entry] = [e for e in entry_points(group="otel_kepler.receivers") if e.name == "rapl"]
    factory = entry.load()
    assert factory is rapl.factory
    assert (factory.type, factory.config_class) == ("rapl", RaplConfig)
    receiver = factory.create("rapl/host", RaplConfig(), HostSettings(sysfs=tree.sysfs))
    receiver.start()
    assert receiver.collect().energy == []
    time.sleep(0.05)  # the real clock: 1 J in 50 ms is 20 W, under the 5000 W ceiling
    tree.advance("intel-rapl:0", 1.0)
    assert joules_by_zone(receiver.collect()) == {"package": pytest.approx(1.0, rel=1e-4)}


def test_fallback_to_the_estimator_where_there_is_no_rapl(tmp_path: Path) -> None:
    """fallback: estimator turns the no-RAPL error into model energy from /proc/stat."""
    procfs = tmp_path / "proc"
    procfs.mkdir()
    stat = procfs / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    empty_sysfs = tmp_path / "sys"
    (empty_sysfs / "class" / "powercap").mkdir(parents=True)
    clock = FakeClock()
    config = decode(
        RaplConfig,
        {"fallback": "estimator", "estimator": {"idle_watts": 10, "max_watts": 110}},
        "receivers.rapl",
    )
    host = HostSettings(procfs=str(procfs), sysfs=str(empty_sysfs))
    receiver = RaplReceiver("rapl", config, host, clock)
    receiver.start()
    assert receiver.using_fallback
    assert receiver.collect().energy == []  # primes
    stat.write_text("cpu  130 0 130 840 0 0 0 0 0 0\n")  # 60 busy of 100 jiffies
    clock.now += 5.0
    part = receiver.collect()
    [reading] = part.energy
    assert (reading.component, reading.zone, reading.source) == ("cpu", "package", "model")
    assert reading.joules == pytest.approx((10 + 100 * 0.6) * 5.0, rel=1e-9)
    assert part.cpu_usage_ratio == pytest.approx(0.6)
    no_fallback = RaplReceiver("rapl", RaplConfig(), host, clock)
    with pytest.raises(ComponentError):
        no_fallback.start()


def test_rejected_readings_are_counted(tree: RaplTree, clock: FakeClock) -> None:
    tree.add_socket(dram=True)
    receiver = started(tree, clock)
    tree.advance("intel-rapl:0", 200_000.0)  # 200 kJ in 1 s: a counter jump, not power
    tree.advance(tree.keys("dram")[0], 1.0)
    clock.now += 1.0
    part = receiver.collect()
    assert part.rejected == {"implausible_jump": 1}
    assert joules_by_zone(part) == {"dram": pytest.approx(1.0, rel=1e-4)}


def test_hexadecimal_zone_ids(tree: RaplTree, clock: FakeClock) -> None:
    """The kernel names the eleventh package zone intel-rapl:a: it counts like the others."""
    for _ in range(12):
        tree.add_socket(dram=True)
    assert (tree.powercap / "intel-rapl:a").is_dir()
    assert (tree.powercap / "intel-rapl:b:0").is_dir()
    receiver = started(tree, clock)
    assert receiver.zones == {"dram": 12, "package": 12}
    # socket order: 9 before a
    packages = [p for p in receiver.paths if p.endswith(":9/energy_uj") or ":a/" in p]
    assert [os.path.basename(os.path.dirname(p)) for p in packages] == [
        "intel-rapl:9",
        "intel-rapl:a",
    ]
    truth, measured = tick(receiver, tree, clock, {"package": 10.0, "dram": 1.0}, 5.0)
    assert truth == {"package": 600.0, "dram": 60.0}
    assert measured == pytest.approx(truth, rel=1e-5)


def test_mmio_zone_without_an_intel_rapl_twin_is_used(tree: RaplTree, clock: FakeClock) -> None:
    tree.add_socket()
    tree.add_socket()
    tree.add_mmio_duplicate("intel-rapl:1")
    (tree.powercap / "intel-rapl:1").unlink()  # socket 1 only through MMIO
    receiver = started(tree, clock)
    assert receiver.zones == {"package": 2}
    assert any("intel-rapl-mmio:0" in p for p in receiver.paths)
    truth, measured = tick(receiver, tree, clock, {"package": 20.0}, 5.0)
    assert measured == pytest.approx({"package": 200.0}, rel=1e-6)


def test_a_reading_above_max_energy_range_never_becomes_the_baseline(
    tree: RaplTree, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Seen: one read above max_energy_range_uj was taken as the baseline; the next (normal)
    read then gave a negative wrap delta and the node total went to -3.7e4 J."""
    key = tree.add_socket(energy_uj=PACKAGE_MAX_ENERGY_RANGE_UJ - 50_000_000)
    receiver = started(tree, clock)
    tree.advance(key, 10.0)
    tree.write_energy_text(key, f"{PACKAGE_MAX_ENERGY_RANGE_UJ + 37_000_000_000}\n")
    clock.now += 1.0
    with caplog.at_level(logging.WARNING, logger=rapl.__name__):
        part = receiver.collect()
    assert (part.energy, part.rejected) == ([], {"over_range": 1})
    [record] = caplog.records
    assert f"above its maximum {PACKAGE_MAX_ENERGY_RANGE_UJ}" in record.getMessage()

    # back to normal, across the wrap: the delta counts from the last good reading
    truth, measured = tick(receiver, tree, clock, {"package": 60.0}, 1.0)
    assert tree.energy_uj(key) < 50_000_000  # it wrapped
    assert measured == pytest.approx({"package": 10.0 + 60.0}, rel=1e-5)
    _, measured = tick(receiver, tree, clock, {"package": 60.0}, 1.0)
    assert measured == pytest.approx({"package": 60.0}, rel=1e-5)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not-a-number\n", "not_a_number"),
        ("", "empty"),
        (None, "unreadable"),
        ("-5\n", "negative"),
        ("1e24\n", "not_a_number"),
    ],
)
def test_bad_readings_are_counted_by_reason_and_lose_no_energy(
    tree: RaplTree, clock: FakeClock, text: str | None, reason: str
) -> None:
    key = tree.add_socket(dram=True)
    receiver = started(tree, clock)
    for _ in range(3):  # three bad reads in a row, 7 J each
        tree.advance(key, 7.0)
        tree.advance_all({"dram": 2.0}, 1.0)
        if text is None:
            tree.remove_energy_file(key)
        else:
            tree.write_energy_text(key, text)
        clock.now += 1.0
        part = receiver.collect()
        assert part.rejected == {reason: 1}
        assert joules_by_zone(part) == pytest.approx({"dram": 2.0}, rel=1e-5)
    truth, measured = tick(receiver, tree, clock, {"package": 7.0, "dram": 2.0}, 1.0)
    assert measured == pytest.approx({"package": 4 * 7.0, "dram": 2.0}, rel=1e-5)


def test_a_counter_reset_is_rejected_then_counts_from_its_new_level(
    tree: RaplTree, clock: FakeClock
) -> None:
    key = tree.add_socket(energy_uj=100_000_000_000)
    receiver = started(tree, clock)
    tree.set_energy_uj(key, 0)  # a reset: backwards, and no plausible wrap
    clock.now += 1.0
    part = receiver.collect()
    assert (part.energy, part.rejected) == ([], {"backwards": 1})
    _, measured = tick(receiver, tree, clock, {"package": 40.0}, 1.0)
    assert measured == {}  # agrees with the rejected reading: primes from here
    _, measured = tick(receiver, tree, clock, {"package": 40.0}, 1.0)
    assert measured == pytest.approx({"package": 40.0}, rel=1e-5)


def test_a_zone_without_a_usable_range_is_skipped(
    tree: RaplTree, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A max_energy_range_uj of 0 would make every wrap a negative delta: not read at all."""
    tree.add_socket()
    broken = tree.add_socket()
    (tree.zone_dir(broken) / "max_energy_range_uj").write_text("0\n")
    with caplog.at_level(logging.WARNING, logger=rapl.__name__):
        receiver = started(tree, clock)
    assert receiver.zones == {"package": 1}
    assert [r.getMessage() for r in caplog.records] == [
        f"rapl: skipping zone {tree.zone_dir(broken)}: its max_energy_range_uj is 0"
    ]
    _, measured = tick(receiver, tree, clock, {"intel-rapl:0": 20.0}, 1.0)
    assert measured == pytest.approx({"package": 20.0}, rel=1e-5)

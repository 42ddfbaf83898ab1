"""What components declare they emit is what the agent emits, and what the reference says."""

from __future__ import annotations

from pathlib import Path

from otel_kepler import metadata
from otel_kepler.config import parse
from otel_kepler.metrics import ALL
from otel_kepler.registry import default_registry
from otel_kepler.service import Service
from otel_kepler.snapshot import Snapshot
from tests.children import spawn
from tests.sysfs_fixtures import RaplTree

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("receivers", "processors", "exporters")


def factories() -> dict[str, dict[str, object]]:
    registry = default_registry()
    return {kind: dict(registry.factories(kind)) for kind in KINDS}


def test_the_reference_is_made_from_the_declarations() -> None:
    written = (ROOT / "docs" / "metrics.md").read_text()
    assert written == metadata.markdown(factories()), (
        "docs/metrics.md is stale: otel-kepler metrics > docs/metrics.md"
    )


def test_every_contract_metric_is_declared_by_one_component_or_the_agent() -> None:
    declared = {d.metric.name: d for d in metadata.declared(factories())}
    assert set(declared) == {desc.name for desc in ALL}
    for desc in ALL:
        assert declared[desc.name].metric == desc
        assert declared[desc.name].labels, desc.name


def test_a_real_tick_emits_only_what_is_declared(tmp_path: Path) -> None:
    tree = RaplTree(tmp_path / "sys")
    tree.add_socket(dram=True)
    config = parse(
        f"""
host: {{sysfs: {tree.sysfs}, node_name: n1}}
receivers: {{rapl: {{max_watts: 1.0e+12}}, procfs: {{}}}}
processors:
  attribution: {{levels: [node, process, container, pod, vm], state_dir: {tmp_path}}}
  carbon: {{providers: [static], static: {{intensity: 200}}, embodied: {{total_kg: 1000}}}}
exporters: {{prometheus: {{endpoint: "127.0.0.1:0"}}}}
service:
  interval: 1s
  semconv: true
  pipelines:
    metrics:
      receivers: [rapl, procfs]
      processors: [attribution, carbon]
      exporters: [prometheus]
""",
        default_registry(),
    )
    service = Service(config)
    service.start()
    burner = spawn("print('ready', flush=True)\nwhile True: pass")
    try:
        for _ in range(3):
            tree.advance_all({"package": 20.0, "dram": 2.0}, 1.0)
            service.tick()
        exporter = service.workers["prometheus"].exporter
        snapshots: list[Snapshot] = list(exporter._latest.values())  # type: ignore[attr-defined]
    finally:
        burner.kill()
        burner.wait()
        service.shutdown()
    found = factories()
    declared = {d.metric.name: set(d.labels) for d in metadata.declared(found)}
    reading = {label for labels in metadata.reading_labels(found).values() for label in labels}
    seen = set()
    for snapshot in snapshots:
        for desc, labels, _, _, _ in snapshot.points():
            seen.add(desc.name)
            allowed = declared[desc.name]
            if desc.name in metadata.NODE_ENERGY:
                allowed = allowed | reading
            extra = {key for key, _ in labels.items} - allowed
            assert not extra, (desc.name, extra)
    # The tick reached every level this pipeline has: the check above covered them.
    assert {
        "kepler.node.cpu.joules",
        "kepler.node.cpu.active.watts",
        "kepler.process.cpu.joules",
        "kepler.process.cpu.seconds",
        "kepler.process.co2",
        "kepler.node.co2",
        "hw.energy",
        "kepler.process.block.bytes",
        "otel_kepler.agent.tick.duration",
    } <= seen, sorted(seen)

"""The ``otel-kepler`` command: run, validate, components, schema, doctor, record, train."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any

from otel_kepler import __version__
from otel_kepler.component import ComponentError, HostSettings
from otel_kepler.config import AgentConfig, load_file
from otel_kepler.registry import Registry, default_registry
from otel_kepler.schema import ConfigError, Duration

log = logging.getLogger("otel_kepler")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    registry = default_registry()
    try:
        return int(args.func(args, registry))
    except ConfigError as err:
        print(f"otel-kepler: config error: {err}", file=sys.stderr)
        return 2
    except ComponentError as err:
        print(f"otel-kepler: {err}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="otel-kepler", description="Per-node energy agent")
    p.add_argument("--version", action="version", version=f"otel-kepler {__version__}")
    p.add_argument(
        "--log-level",
        default=os.environ.get("OTEL_KEPLER_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    sub = p.add_subparsers(required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", required=True, help="pipeline YAML file")
    run.add_argument("--duration", type=_duration, help="stop after this long (e.g. 30s)")
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="check a config file and exit")
    val.add_argument("--config", required=True)
    val.set_defaults(func=cmd_validate)
    comp = sub.add_parser("components", help="list receiver, processor and exporter types")
    comp.set_defaults(func=cmd_components)
    sch = sub.add_parser("schema", help="print the config's JSON Schema")
    sch.set_defaults(func=cmd_schema)
    doc = sub.add_parser("doctor", help="which receivers work on this host, and what is missing")
    doc.add_argument("--config", help="read host paths (procfs, sysfs) from this config")
    doc.set_defaults(func=cmd_doctor)
    _add_model_commands(sub)
    return p


def _add_model_commands(sub: Any) -> None:
    rec = sub.add_parser(
        "record", help="run the pipeline on a metered node; write features and measured power"
    )
    rec.add_argument("--config", required=True, help="pipeline YAML file (with real meters)")
    rec.add_argument("--out", required=True, help="data file: .csv, else JSON lines")
    rec.add_argument("--duration", type=_duration, help="stop after this long (e.g. 1h)")
    rec.set_defaults(func=cmd_record)
    tr = sub.add_parser("train", help="fit a regression power model on recorded data")
    tr.add_argument("--data", required=True, nargs="+", help="files written by record")
    tr.add_argument("--out", required=True, help="the model file to write (JSON)")
    tr.add_argument("--target", default="package", choices=["package", "dram", "platform"])
    tr.add_argument(
        "--method",
        default="linear",
        choices=["linear", "gbm"],
        help="linear: numpy least squares; gbm: gradient boosting (needs scikit-learn)",
    )
    tr.add_argument("--non-negative", action="store_true", help="linear: weights >= 0")
    tr.add_argument("--degree", type=int, default=2, help="linear: products of up to N features")
    tr.add_argument("--features", help="comma-separated features (default: all recorded)")
    tr.add_argument(
        "--dynamic",
        action="store_true",
        help="predict power above idle (idle measured from the data, or --idle-watts)",
    )
    tr.add_argument("--idle-watts", type=float, help="with --dynamic: the idle power")
    tr.add_argument("--name", default="", help="the model's name (default: TARGET-METHOD)")
    tr.set_defaults(func=cmd_train)


def _duration(text: str) -> float:
    try:
        return float(Duration.parse(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def cmd_run(args: argparse.Namespace, registry: Registry) -> int:
    from otel_kepler.service import Service

    config = load_file(args.config, registry)
    _apply_log_level(config, args)
    service = Service(config)
    service.start()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        service.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    log.info(
        "otel-kepler %s: %d receivers, %d pipelines, every %ss",
        __version__,
        len(service.receivers),
        len(service.pipelines),
        service.interval,
    )
    try:
        service.run(args.duration)
    finally:
        service.shutdown()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def _apply_log_level(config: AgentConfig, args: argparse.Namespace) -> None:
    if "--log-level" not in sys.argv:
        level = config.service.telemetry.logs.level
        logging.getLogger().setLevel(getattr(logging, level.upper()))


def cmd_validate(args: argparse.Namespace, registry: Registry) -> int:
    config = load_file(args.config, registry)
    pipelines = ", ".join(config.service.pipelines)
    print(f"{args.config}: valid ({pipelines})")
    return 0


def cmd_components(args: argparse.Namespace, registry: Registry) -> int:
    for kind in ("receivers", "processors", "exporters"):
        print(f"{kind}:")
        for ctype, factory in sorted(registry.factories(kind).items()):
            print(f"  {ctype:<14} {factory.description}")
    for where, why in sorted(registry.broken.items()):
        print(f"broken plugin {where}: {why}")
    return 0


def cmd_schema(args: argparse.Namespace, registry: Registry) -> int:
    from otel_kepler.config_schema import config_schema

    print(json.dumps(config_schema(registry), indent=2))
    return 0


def cmd_doctor(args: argparse.Namespace, registry: Registry) -> int:
    host = HostSettings()
    if args.config:
        host = load_file(args.config, registry).host
    print(f"host: procfs={host.procfs} sysfs={host.sysfs} uid={os.geteuid()}")
    for ctype, factory in sorted(registry.factories("receivers").items()):
        if factory.doctor is None:
            print(f"  {ctype:<12} ?    no check available")
            continue
        try:
            result = factory.doctor(host)
        except Exception as err:
            print(f"  {ctype:<12} no   check failed: {type(err).__name__}: {err}")
            continue
        mark = "yes" if result.available else "no"
        print(f"  {ctype:<12} {mark:<4} {result.detail}")
    return 0


def cmd_record(args: argparse.Namespace, registry: Registry) -> int:
    import threading

    from otel_kepler.training import record

    config = load_file(args.config, registry)
    _apply_log_level(config, args)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rows = record(config, args.out, args.duration, stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"{args.out}: {rows} rows")
    return 0


def cmd_train(args: argparse.Namespace, registry: Registry) -> int:
    from otel_kepler.receivers.power_models.regression import save
    from otel_kepler.training import TrainingError, TrainOptions, report, train

    options = TrainOptions(
        target=args.target,
        method=args.method,
        non_negative=args.non_negative,
        degree=args.degree,
        features=args.features.split(",") if args.features else None,
        kind="dynamic" if args.dynamic else "absolute",
        idle_watts=args.idle_watts,
        name=args.name,
    )
    try:
        result = train(args.data, options)
    except TrainingError as err:
        print(f"otel-kepler: train: {err}", file=sys.stderr)
        return 1
    save(result.model, args.out)
    print(report(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

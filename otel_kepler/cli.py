"""The ``otel-kepler`` command: run, validate, components, schema, doctor, record, train."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any, NoReturn

from otel_kepler import __version__
from otel_kepler.component import ComponentError, HostSettings
from otel_kepler.config import AgentConfig, load_file
from otel_kepler.registry import Registry, default_registry, summary
from otel_kepler.schema import ConfigError, Duration

log = logging.getLogger("otel_kepler")


#: Exit status when stdout is closed early (``otel-kepler schema | head -1``): the
#: status a shell reports for a tool killed by SIGPIPE (128 + 13), as ``seq`` or ``cat``
#: give, without the BrokenPipeError traceback Python would print.
EXIT_BROKEN_PIPE = 141
EXIT_USAGE = 2  # bad arguments or a bad config
LOG_LEVELS = ("debug", "info", "warn", "warning", "error")
#: Options whose value may start with "-" (``--duration -5s``): joined to their value
#: before argparse, which would otherwise take it for an option, so that the value's
#: own check gives the message.
_SIGNED_OPTIONS = ("--duration",)


def main(argv: list[str] | None = None) -> int:
    """The console entry point: exit status 0 ok, 1 failed, 2 bad arguments or config."""
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return 130
    return code


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(_join_signed_values(argv))
    level = args.log_level or os.environ.get("OTEL_KEPLER_LOG_LEVEL", "info")
    if level.lower() not in LOG_LEVELS:
        print(
            f"otel-kepler: OTEL_KEPLER_LOG_LEVEL: must be one of {', '.join(LOG_LEVELS)}, "
            f"got {level!r}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    _setup_logging(level.lower(), "console")
    registry = default_registry()
    try:
        return int(args.func(args, registry))
    except ConfigError as err:
        print(f"otel-kepler: config error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ComponentError as err:
        print(f"otel-kepler: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        print(f"otel-kepler:{where}: {err.strerror or err}", file=sys.stderr)
        return 1


def _drop_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def _join_signed_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if arg in _SIGNED_OPTIONS and nxt[:1] == "-" and nxt[1:2] not in ("", "-"):
            out.append(f"{arg}={nxt}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


class _Parser(argparse.ArgumentParser):
    """Reports bad arguments in one line, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="otel-kepler", description="Per-node energy agent")
    p.add_argument("--version", action="version", version=f"otel-kepler {__version__}")
    p.add_argument(
        "--log-level",
        type=_log_level,
        metavar="{debug,info,warn,error}",
        help="log level (default: $OTEL_KEPLER_LOG_LEVEL, else the config's "
        "service.telemetry.logs.level, else info)",
    )
    sub = p.add_subparsers(required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the agent", description="Run the pipelines.")
    run.add_argument("--config", required=True, help="pipeline YAML file")
    run.add_argument("--duration", type=_duration, help="stop after this long (e.g. 30s, 1m30s)")
    run.add_argument(
        "--strict", action="store_true", help="refuse a config that validate warns about"
    )
    run.set_defaults(func=cmd_run)
    val = sub.add_parser(
        "validate",
        help="check a config file and exit",
        description="Check a config file: exit 0 if valid (warnings on stderr), 2 if not.",
    )
    val.add_argument("--config", required=True, help="pipeline YAML file to check")
    val.add_argument(
        "--strict", action="store_true", help="treat warnings (unused components...) as errors"
    )
    val.set_defaults(func=cmd_validate)
    comp = sub.add_parser("components", help="list receiver, processor and exporter types")
    comp.set_defaults(func=cmd_components)
    sch = sub.add_parser("schema", help="print the config's JSON Schema")
    sch.set_defaults(func=cmd_schema)
    met = sub.add_parser(
        "metrics", help="print every metric, its labels and the component emitting it (Markdown)"
    )
    met.set_defaults(func=cmd_metrics)
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
    tr.add_argument(
        "--target",
        default="package",
        choices=["package", "dram", "platform"],
        help="the measured power to predict (default: package)",
    )
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


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return text.lower()


def _duration(text: str) -> float:
    try:
        value = float(Duration.parse(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def cmd_run(args: argparse.Namespace, registry: Registry) -> int:
    from otel_kepler.service import Service

    config = _load(args.config, registry, args, strict=args.strict)
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


def _load(path: str, registry: Registry, args: argparse.Namespace, *, strict: bool) -> AgentConfig:
    """Load a config and set logging as it says; its warnings are logged, or, when strict,
    the first is the error."""
    config = load_file(path, registry)
    if strict and config.warnings:
        for warning in config.warnings[1:]:
            print(f"otel-kepler: config error: {warning}", file=sys.stderr)
        raise ConfigError("", f"{config.warnings[0]} (--strict)")
    # The config's log level and encoding, unless --log-level or the environment said.
    logs = config.service.telemetry.logs
    level = args.log_level or os.environ.get("OTEL_KEPLER_LOG_LEVEL") or logs.level
    _setup_logging(level.lower(), logs.encoding)
    for warning in config.warnings:
        log.warning("%s", warning)
    return config


def _setup_logging(level: str, encoding: str) -> None:
    root = logging.getLogger()
    handler = root.handlers[0] if root.handlers else logging.StreamHandler()
    if not root.handlers:
        root.addHandler(handler)
    handler.setFormatter(
        _JsonFormatter()
        if encoding == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.setLevel(logging.WARNING if level in ("warn", "warning") else level.upper())


class _JsonFormatter(logging.Formatter):
    """One JSON object per record, the fields the Collector's json encoding has."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def cmd_validate(args: argparse.Namespace, registry: Registry) -> int:
    config = load_file(args.config, registry)
    label = "config error" if args.strict else "warning"
    for warning in config.warnings:
        print(f"otel-kepler: {label}: {warning}", file=sys.stderr)
    if args.strict and config.warnings:
        return EXIT_USAGE
    pipelines = ", ".join(config.service.pipelines)
    print(f"{args.config}: valid ({pipelines})")
    return 0


def cmd_components(args: argparse.Namespace, registry: Registry) -> int:
    for kind in ("receivers", "processors", "exporters"):
        print(f"{kind}:")
        for ctype, factory in sorted(registry.factories(kind).items()):
            print(f"  {ctype:<14} {summary(factory)}")
    for where, why in sorted(registry.broken.items()):
        print(f"broken plugin {where}: {why}")
    return 0


def cmd_metrics(args: argparse.Namespace, registry: Registry) -> int:
    from otel_kepler.metadata import markdown

    kinds = ("receivers", "processors", "exporters")
    sys.stdout.write(markdown({kind: dict(registry.factories(kind)) for kind in kinds}))
    return 0


def cmd_schema(args: argparse.Namespace, registry: Registry) -> int:
    from otel_kepler.config_schema import config_schema

    print(json.dumps(config_schema(registry), indent=2))
    return 0


def cmd_doctor(args: argparse.Namespace, registry: Registry) -> int:
    host = HostSettings()
    if args.config:
        config = _load(args.config, registry, args, strict=False)
        host = config.host
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
    if args.config:
        _probe_configured(config)
    return 0


def _probe_configured(config: Any) -> None:
    """Try each configured receiver that can be tried for real (a BMC: log in, read once)."""
    probed = [(cid, c) for cid, c in sorted(config.receivers.items()) if c.factory.probe]
    if not probed:
        return
    print("configured:")
    for cid, component in probed:
        try:
            result = component.factory.probe(component.config)
        except Exception as err:
            print(f"  {cid:<12} no   check failed: {type(err).__name__}: {err}")
            continue
        mark = "yes" if result.available else "no"
        print(f"  {cid:<12} {mark:<4} {result.detail}")


def cmd_record(args: argparse.Namespace, registry: Registry) -> int:
    import threading

    from otel_kepler.receivers.power_models.training import record

    config = _load(args.config, registry, args, strict=False)
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
    from otel_kepler.receivers.power_models.training import (
        TrainingError,
        TrainOptions,
        report,
        train,
    )

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

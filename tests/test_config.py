"""Config loading: every error is one line naming its path or file:line, raised before anything
starts; hostile files (alias bombs, deep nesting, bad bytes, duplicate keys) are refused while
they are read, not after they have expanded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from otel_kepler.config import AgentConfig, load_file, parse
from otel_kepler.config_schema import config_schema
from otel_kepler.endpoints import (
    Endpoint,
    check_header,
    check_headers,
    grpc_endpoint,
    host_port,
    http_url,
)
from otel_kepler.receivers.ipmi.config import IpmiConfig
from otel_kepler.registry import default_registry
from otel_kepler.schema import ConfigError, Duration, decode
from otel_kepler.yaml_loader import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
host: {procfs: /proc, sysfs: /sys, node_name: n1}
receivers:
  procfs: {}
  estimator: {idle_watts: 10, max_watts: 50}
processors:
  attribution: {levels: [node, container]}
exporters:
  debug: {top: 3}
  debug/quiet: {verbosity: basic}
service:
  interval: 500ms
  pipelines:
    metrics:
      receivers: [procfs, estimator]
      processors: [attribution]
      exporters: [debug, debug/quiet]
"""


def load(text: str) -> AgentConfig:
    return parse(text, default_registry())


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(text)
    return str(err.value)


def file_error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_file(str(path), default_registry())
    return str(err.value)


def with_(path: str, value: object, base: str = GOOD) -> str:
    """GOOD with one dotted path set to value (None deletes it)."""
    doc = yaml.safe_load(base)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return yaml.safe_dump(doc)


def alias_bomb(depth: int) -> str:
    """Each level a list of nine aliases of the one before: 9**depth strings once expanded."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, depth + 1):
        items = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{items}]")
    return "\n".join(lines) + "\nservice: {pipelines: {}}\n"


def test_a_good_config_loads_with_types_and_defaults() -> None:
    config = load(GOOD)
    assert config.service.interval == 0.5
    assert config.host.node_name == "n1"
    quiet = config.exporters["debug/quiet"]
    assert (quiet.type, quiet.config.verbosity, quiet.config.top) == ("debug", "basic", 10)
    attribution = config.processors["attribution"].config
    assert attribution.levels == ["node", "container"]
    assert attribution.max_terminated == 500
    assert config.warnings == []
    telemetry = config.service.telemetry
    assert (telemetry.metrics.enabled, telemetry.logs.level, telemetry.logs.encoding) == (
        True,
        "info",
        "console",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            with_("recievers", {}),
            "recievers: unknown section (known: exporters, host, processors, receivers, service)",
        ),
        (
            with_("exporters.debug.topp", 3),
            "exporters.debug.topp: unknown key (known keys: top, verbosity)",
        ),
        (
            with_("receivers.nosuch", {}),
            'receivers.nosuch: unknown receiver type "nosuch" (known: '
            + ", ".join(sorted(default_registry().factories("receivers")))
            + ")",
        ),
        (
            with_("receivers.Rapl!", {}),
            'receivers.Rapl!: a component id is "type" or "type/name"',
        ),
        (
            with_("service.pipelines.metrics.exporters", ["debug", "otlp"]),
            'service.pipelines.metrics.exporters[1]: "otlp" is not defined under exporters',
        ),
        (
            with_("service.pipelines.metrics.receivers", ["procfs", "procfs", "estimator"]),
            'service.pipelines.metrics.receivers[1]: "procfs" is listed twice',
        ),
        (
            with_("service.interval", "fast"),
            "service.interval: expected a duration like 500ms, 5s or 1m, got 'fast'",
        ),
        (
            with_("service.interval", "5 s"),
            "service.interval: expected a duration like 500ms, 5s or 1m (no spaces), got '5 s'",
        ),
        (with_("service.interval", "-5s"), "service.interval: must not be negative, got '-5s'"),
        (with_("service.interval", "10ms"), "service.interval: must be at least 100ms, got 0.01s"),
        (with_("service.interval", "0s"), "service.interval: must be at least 100ms, got 0s"),
        (with_("service", None), "service: is required (it lists the pipelines)"),
        (
            with_("service.pipelines.metrics.exporters", []),
            "service.pipelines.metrics.exporters: a pipeline needs at least one exporter",
        ),
        (
            with_("service.pipelines.traces", {"receivers": ["procfs"], "exporters": ["x"]}),
            'service.pipelines.traces: pipeline names are "metrics" or "metrics/<name>"',
        ),
        (
            with_("processors.attribution.levels", "node"),
            "processors.attribution.levels: expected a list, got a string",
        ),
        (with_("host.procfs", ["a"]), "host.procfs: expected a string, got a list"),
        (
            with_("service.telemetry", {"logs": {"level": "loud"}}),
            "service.telemetry.logs.level: must be one of 'debug', 'info', 'warn', 'warning', "
            "'error', got 'loud'",
        ),
        (
            with_("service.telemetry", {"logs": {"encoding": "xml"}}),
            "service.telemetry.logs.encoding: must be one of 'console', 'json', got 'xml'",
        ),
        (
            with_("service.telemetry", {"metrics": {"level": "full"}}),
            "service.telemetry.metrics.level: must be one of 'none', 'basic', 'normal', "
            "'detailed', got 'full'",
        ),
        (
            with_("service.telemetry", {"metrics": {"level": "none", "enabled": True}}),
            "service.telemetry.metrics.enabled: is true but level is none",
        ),
        (
            with_("service.telemetry", {"metrics": {"address": ":8888"}}),
            "service.telemetry.metrics.address: unknown key (known keys: enabled, level)",
        ),
        (
            with_(
                "service.pipelines.metrics.processors",
                ["attribution", "k8sattributes"],
                base=(with_("processors.k8sattributes", {"source": "downward_api"})),
            ),
            'service.pipelines.metrics.processors[1]: "k8sattributes" must come before '
            '"attribution" (processors[0]), which uses what it adds',
        ),
        (
            with_(
                "service.pipelines.metrics.processors",
                ["carbon/grid", "attribution"],
                base=(
                    with_(
                        "processors.carbon/grid",
                        {"providers": ["static"], "static": {"intensity": 380}},
                    )
                ),
            ),
            'service.pipelines.metrics.processors[1]: "attribution" must come before '
            '"carbon/grid" (processors[0]), which uses what it adds',
        ),
    ],
)
def test_each_error_names_its_path(text: str, message: str) -> None:
    assert error_of(text) == message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5s", 5.0),
        ("1m30s", 90.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("2", 2.0),
        (3, 3.0),
        ("100us", 0.0001),
        ("1h2m3s4ms", 3723.004),
        ("0", 0.0),
    ],
)
def test_durations_are_written_as_in_the_collector(text: str | int, seconds: float) -> None:
    assert Duration.parse(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5 s", "expected a duration like 500ms, 5s or 1m (no spaces), got '5 s'"),
        ("1m 30s", "expected a duration like 500ms, 5s or 1m (no spaces), got '1m 30s'"),
        ("-1m", "must not be negative, got '-1m'"),
        (-2, "must not be negative, got -2"),
        ("5sec", "expected a duration like 500ms, 5s or 1m, got '5sec'"),
        ("s", "expected a duration like 500ms, 5s or 1m, got 's'"),
        ("", "expected a duration like 500ms, 5s or 1m, got ''"),
        (float("inf"), "expected a finite duration, got inf"),
        (True, "expected a duration like 500ms, 5s or 1m, got a boolean"),
        ([5], "expected a duration like 500ms, 5s or 1m, got a list"),
    ],
)
def test_bad_durations(value: Any, message: str) -> None:
    with pytest.raises(ValueError) as err:
        Duration.parse(value)
    assert str(err.value) == message


def test_malformed_yaml_reports_line_and_column() -> None:
    text = "service:\n  interval: 5s\n  pipelines: [a\n receivers: {}\n"
    assert error_of(text) == (
        "<config>:4:11: invalid YAML: did not find expected ',' or ']' "
        "(while parsing a flow sequence)"
    )


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    # 9**7 = 4.8 million strings from 400 bytes: refused from the event stream, never built.
    assert error_of(alias_bomb(7)) == (
        f"<config>:6:10: more than {MAX_NODES} values once its aliases are expanded; refused "
        "(an alias counts as all it repeats)"
    )
    # A hundred levels would never finish expanding: refused at the same point.
    assert error_of(alias_bomb(100)).startswith("<config>:6:10: more than 100000 values")


def test_aliases_within_the_budget_still_work() -> None:
    text = GOOD.replace(
        "attribution: {levels: [node, container]}", "attribution: &a {levels: [node]}"
    )
    text += "\nx-unused: *a\n"
    assert error_of(text).startswith("x-unused: unknown section")
    merged = (
        "processors:\n  attribution: &base {levels: [node], max_terminated: 5}\n"
        "  attribution/b:\n    <<: *base\n    max_terminated: 7\n"
    )
    text = GOOD.replace("processors:\n  attribution: {levels: [node, container]}\n", merged)
    text = text.replace("processors: [attribution]", "processors: [attribution, attribution/b]")
    config = load(text)
    b = config.processors["attribution/b"].config
    assert (b.levels, b.max_terminated) == (["node"], 7)


def test_an_alias_to_its_own_node_is_refused() -> None:
    assert error_of("a: &x [1, *x]\nservice: {}\n") == (
        "<config>:1:11: alias *x refers to the node that contains it (a loop)"
    )


def test_deep_nesting_is_refused_without_a_traceback() -> None:
    flow = "a: " + "[" * 5000 + "]" * 5000 + "\n"
    assert (
        error_of(flow)
        == "<config>:1:1003: invalid YAML: exceeded maximum nesting depth (while increasing "
        "flow level)"
    )
    block = "".join("  " * i + f"k{i}:\n" for i in range(200))
    assert (
        error_of(block)
        == f"<config>:{MAX_DEPTH + 1}:{2 * MAX_DEPTH + 1}: nested deeper than {MAX_DEPTH} levels"
    )


def test_duplicate_keys_name_both_lines(tmp_path: Path) -> None:
    # The second receivers section used to replace the first silently.
    text = GOOD + "receivers:\n  rapl: {}\n"
    assert error_of(text) == (
        "<config>:18:1: duplicate key 'receivers' (first at <config>:3); each key may appear "
        "once in a mapping"
    )
    path = tmp_path / "dup.yaml"
    path.write_text(GOOD.replace("  debug: {top: 3}\n", "  debug: {top: 3, top: 4}\n"))
    assert file_error_of(path) == (
        f"{path}:9:19: duplicate key 'top' (first at {path}:9); each key may appear once in a "
        "mapping"
    )


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("node_name: n1", "node_name: caf\xe9").encode("latin-1"))
    assert file_error_of(path) == f"{path}:2:50: not UTF-8 text (byte 0xe9 at offset 50)"


def test_control_characters_and_second_documents_are_refused() -> None:
    assert error_of(GOOD.replace("node_name: n1", "node_name: n\x001")) == (
        "<config>:2:48: invalid YAML: character #x0000 is not allowed (control characters "
        "other than tab and newline)"
    )
    assert error_of(GOOD + "---\nservice: {}\n") == (
        "<config>:18:1: invalid YAML: but found another document (expected a single document "
        "in the stream)"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('!!int "0x"', "<config>:2:16: invalid YAML: !!int cannot hold '0x'"),
        ("!!bool maybe", "<config>:2:16: invalid YAML: !!bool cannot hold 'maybe'"),
        (
            "!!timestamp 2026-13-45",
            "<config>:2:16: invalid YAML: !!timestamp cannot hold '2026-13-45'",
        ),
        ("9" * 5000, "<config>:2:16: invalid YAML: !!int cannot hold '" + "9" * 40 + "...'"),
        (
            "!!python/name:os.system",
            "<config>:2:16: invalid YAML: could not determine a "
            "constructor for the tag 'tag:yaml.org,2002:python/name:os.system'",
        ),
    ],
)
def test_explicit_tags_that_cannot_hold_their_value(value: str, message: str) -> None:
    text = GOOD.replace("host: {procfs: /proc,", f"host: {{procfs: {value},")
    assert error_of(text) == message


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(GOOD + "#" * MAX_FILE_BYTES)
    assert file_error_of(path) == f"{path}: larger than 4 MiB; not a config file"


def test_errors_from_a_file_name_its_line(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(GOOD.replace("interval: 500ms", "interval: 5 s"))
    assert file_error_of(path) == (
        f"{path}:12: service.interval: expected a duration like 500ms, 5s or 1m (no spaces), "
        "got '5 s'"
    )
    path.write_text(GOOD.replace("levels: [node, container]", "levels: [node, pods]"))
    assert file_error_of(path) == (
        f"{path}:7: processors.attribution.levels[1]: must be one of 'node', 'process', "
        "'container', 'pod', 'vm', got 'pods'"
    )
    missing = tmp_path / "nope.yaml"
    assert file_error_of(missing) == (
        f"cannot read config file {missing}: No such file or directory"
    )


def test_env_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OK_TOP", "4")
    monkeypatch.setenv("OK_NODE", "node-9")
    monkeypatch.delenv("OK_UNSET", raising=False)
    text = (
        GOOD.replace("top: 3", 'top: "${env:OK_TOP}"')
        .replace("interval: 500ms", 'interval: "${env:OK_UNSET:-2s}"')
        .replace("node_name: n1", 'node_name: "n-$${literal}-${OK_NODE}"')
    )
    config = load(text)
    assert config.exporters["debug"].config.top == 4
    assert config.service.interval == 2.0
    assert config.host.node_name == "n-${literal}-node-9"


def test_missing_env_variable_names_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OK_MISSING", raising=False)
    text = GOOD.replace("node_name: n1", 'node_name: "${env:OK_MISSING}"')
    assert error_of(text) == "host.node_name: environment variable OK_MISSING is not set"
    assert error_of(GOOD.replace("node_name: n1", 'node_name: "${vault:x}"')) == (
        'host.node_name: unsupported reference "${vault:...}" (supported: ${env:...}, ${file:...})'
    )


def test_file_substitution(tmp_path: Path) -> None:
    secret = tmp_path / "node"
    secret.write_text("0123\n")  # YAML would read 0123 as the octal 83: text fields keep text
    top = tmp_path / "top"
    top.write_text("6\n")
    text = GOOD.replace("node_name: n1", f'node_name: "${{file:{secret}}}"').replace(
        "top: 3", f'top: "${{file:{top}}}"'
    )
    config = load(text)
    assert config.host.node_name == "0123"
    assert config.exporters["debug"].config.top == 6
    missing = tmp_path / "absent"
    assert error_of(GOOD.replace("node_name: n1", f'node_name: "${{file:{missing}}}"')) == (
        f"host.node_name: cannot read ${{file:{missing}}}: No such file or directory"
    )


def test_a_substituted_value_is_never_echoed_in_an_error(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("hunter2\n")
    message = error_of(GOOD.replace("top: 3", f'top: "${{file:{secret}}}"'))
    assert message == f"exporters.debug.top: expected an integer, got ${{file:{secret}}}"
    assert "hunter2" not in message


def test_log_levels_and_telemetry_as_the_collector_writes_them() -> None:
    for level in ("debug", "info", "warn", "warning", "error"):
        config = load(with_("service.telemetry", {"logs": {"level": level, "encoding": "json"}}))
        assert config.service.telemetry.logs.level == level
    cases = [
        ({"level": "none"}, False),
        ({"level": "basic"}, True),
        ({"level": "detailed"}, True),
        ({"enabled": False}, False),
        ({"enabled": True, "level": "normal"}, True),
        ({}, True),
    ]
    for metrics, enabled in cases:
        config = load(with_("service.telemetry", {"metrics": metrics}))
        assert config.service.telemetry.metrics.enabled is enabled, metrics


def test_an_unused_component_is_a_warning_and_is_not_built() -> None:
    config = load(with_("exporters.debug/extra", {}, base=with_("receivers.rapl", {})))
    assert config.warnings == [
        "receivers.rapl: is defined but no pipeline uses it (it is not started)",
        "exporters.debug/extra: is defined but no pipeline uses it (it is not started)",
    ]
    assert "rapl" not in config.receivers and "debug/extra" not in config.exporters


def test_a_pipeline_with_usage_but_no_energy_warns() -> None:
    text = with_("service.pipelines.metrics.receivers", ["procfs"])
    config = load(with_("receivers.estimator", None, base=text))
    assert config.warnings == [
        "service.pipelines.metrics.receivers: has workload usage (procfs) but no energy source "
        "(acpi, estimator, hwmon, ipmi, nvml, rapl, redfish): no energy to attribute"
    ]


def test_schema_validates_the_shipped_configs_and_rejects_unknown_keys() -> None:
    schema = config_schema(default_registry())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        errors = [e.message for e in validator.iter_errors(doc)]
        assert errors == [], f"{path.name}: {errors}"
    bad = yaml.safe_load(with_("exporters.debug.topp", 3))
    assert list(validator.iter_errors(bad)), "an unknown key must fail the schema"
    interval = schema["properties"]["service"]["properties"]["interval"]
    assert [
        v
        for v in ("5s", "1m30s", "250ms", 5)
        if list(validator.evolve(schema=interval).iter_errors(v))
    ] == []
    assert all(
        list(validator.evolve(schema=interval).iter_errors(v)) for v in ("5 s", "-5s", -1, "5x")
    )


def test_the_shipped_configs_load_without_warnings() -> None:
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        config = load_file(str(path), default_registry())
        assert config.warnings == [], path.name


# Endpoint and header validators (otel_kepler.endpoints), used by exporters and receivers.


def endpoint_error(call: Callable[[], object]) -> str:
    with pytest.raises(ConfigError) as err:
        call()
    return str(err.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("collector:4317", Endpoint("collector", 4317)),
        ("10.0.0.5:4317", Endpoint("10.0.0.5", 4317)),
        ("[::1]:4317", Endpoint("::1", 4317)),
        ("http://collector:4317", Endpoint("collector", 4317, "http")),
        ("https://otel.example.com:443/", Endpoint("otel.example.com", 443, "https")),
    ],
)
def test_grpc_endpoints(value: str, expected: Endpoint) -> None:
    assert grpc_endpoint(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a/b/c", "endpoint: expected host:port, got 'a/b/c'"),
        ("collector", "endpoint: needs a port (host:port), got 'collector'"),
        ("collector:99999", "endpoint: port must be 1 to 65535, got 99999"),
        ("collector:0", "endpoint: port must be 1 to 65535, got 0"),
        ("collector:43x7", "endpoint: port must be a number 1 to 65535, got 'collector:43x7'"),
        (
            "https://c:4317/v1",
            "endpoint: a gRPC endpoint has no path, got 'https://c:4317/v1' (path '/v1')",
        ),
        ("https://c", "endpoint: needs a port (host:port), got 'https://c'"),
        ("ftp://c:21", "endpoint: must be an http:// or https:// URL, got 'ftp://c:21'"),
        ("", "endpoint: must not be empty"),
        (" c:1", "endpoint: must not contain spaces or control characters, got ' c:1'"),
        ("[::1:4317", "endpoint: has an unclosed '[' in '[::1:4317'"),
        ("bad_host!:1", "endpoint: has an invalid host name 'bad_host!' in 'bad_host!:1'"),
    ],
)
def test_bad_grpc_endpoints(value: str, message: str) -> None:
    assert endpoint_error(lambda: grpc_endpoint(value)) == message


def test_http_urls() -> None:
    assert http_url("http://c:4318/v1/metrics") == Endpoint("c", 4318, "http", "/v1/metrics")
    assert http_url("https://c") == Endpoint("c", 443, "https")
    assert http_url("http://[fd00::1]:8080") == Endpoint("fd00::1", 8080, "http")
    assert http_url("https://c").secure is True and http_url("http://c").secure is False
    cases = {
        "http://c:99999": "url: port must be a number 1 to 65535, got 'http://c:99999'",
        "c:4318": "url: must be an http:// or https:// URL, got 'c:4318'",
        "http://:4318": "url: has no host, got 'http://:4318'",
        "http://c:": "url: has an empty port in 'http://c:'",
        "http://c/#x": "url: must not have a #fragment, got 'http://c/#x'",
        "http://user:hunter2@c": "url: must not carry credentials (user:password@); put them in "
        "headers",
    }
    for value, message in cases.items():
        assert endpoint_error(lambda v=value: http_url(v, field="url")) == message  # type: ignore[misc]


def test_host_port_for_network_receivers() -> None:
    assert host_port("bmc", 623) == Endpoint("bmc", 623)
    assert host_port("bmc:624", 623) == Endpoint("bmc", 624)
    assert host_port("[fd00::7]:6230", 623).hostport == "[fd00::7]:6230"
    assert host_port("fd00::7", 623) == Endpoint("fd00::7", 623)
    assert host_port("http://bmc:8000", 623) == Endpoint("bmc", 8000, "http")
    assert host_port(":9102", None, allow_empty_host=True) == Endpoint("", 9102)
    assert endpoint_error(lambda: host_port(":9102", None)) == "endpoint: has no host, got ':9102'"
    assert endpoint_error(lambda: host_port("bmc", None)) == (
        "endpoint: needs a port (host:port), got 'bmc'"
    )
    assert endpoint_error(lambda: host_port("fd00::zz", 623)) == (
        "endpoint: has an invalid IPv6 address in 'fd00::zz'"
    )


def test_headers() -> None:
    assert check_header("Authorization", "Bearer abc\tdef") == "Authorization"
    assert check_header("X-Scope-OrgID", "tenant", grpc=True) == "x-scope-orgid"
    assert check_headers({"a": "1", "B": "2"}, grpc=True) == {"a": "1", "b": "2"}
    cases: list[tuple[Callable[[], object], str]] = [
        (
            lambda: check_header("Bad Name", "x"),
            "headers.Bad Name: is not a valid header name (bad character ' ')",
        ),
        (
            lambda: check_header("X-Token", "s3cret\r\nX-Evil: 1"),
            "headers.X-Token: the value has a carriage return (CR) at position 6",
        ),
        (
            lambda: check_header("X-Token", "a\nb"),
            "headers.X-Token: the value has a line feed (LF) at position 1",
        ),
        (
            lambda: check_header("X-Token", "a\0"),
            "headers.X-Token: the value has a NUL at position 1",
        ),
        (
            lambda: check_header("X-Token", "a\x1b"),
            "headers.X-Token: the value has a control character (0x1b) at position 1",
        ),
        (
            lambda: check_header("X-Token", "\u20ac"),
            "headers.X-Token: the value has a character that cannot be sent (U+20AC) at position 0",
        ),
        (
            lambda: check_header("x-token", "caf\xe9", grpc=True),
            "headers.x-token: the value has a character that cannot be sent (U+00E9) at position 3",
        ),
        (
            lambda: check_header("grpc-timeout", "1", grpc=True),
            "headers.grpc-timeout: keys starting with grpc- are reserved by gRPC",
        ),
        (
            lambda: check_header("x:y", "1", grpc=True),
            "headers.x:y: a gRPC metadata key may have "
            "only letters, digits, '-', '_' and '.' (bad character ':')",
        ),
        (
            lambda: check_headers({"Auth": "1", "auth": "2"}),
            "headers.auth: is the same header as 'Auth' (names ignore case)",
        ),
        (lambda: check_header("", "1"), "headers: a header name must be a non-empty string"),
    ]
    for call, message in cases:
        assert endpoint_error(call) == message
    assert "s3cret" not in endpoint_error(cases[1][0])


def test_ipmi_endpoint_takes_host_port() -> None:
    def decode_ipmi(body: dict[str, object]) -> Any:
        return decode(IpmiConfig, body, "receivers.ipmi")

    config = decode_ipmi({"endpoint": "10.0.0.5:624"})
    assert (config.endpoint, config.port, config.where) == ("10.0.0.5", 624, "10.0.0.5:624")
    config = decode_ipmi({"endpoint": "[fd00::7]:6230"})
    assert (config.endpoint, config.port) == ("fd00::7", 6230)
    config = decode_ipmi({"endpoint": "bmc", "port": 6230})
    assert (config.endpoint, config.port) == ("bmc", 6230)
    config = decode_ipmi({"endpoint": "bmc:6230", "port": 6230})
    assert (config.endpoint, config.port) == ("bmc", 6230)
    with pytest.raises(ConfigError) as err:
        decode_ipmi({"endpoint": "bmc:624", "port": 625})
    assert str(err.value) == (
        "receivers.ipmi.port: is 625 but endpoint 'bmc:624' says 624; give the port once"
    )
    with pytest.raises(ConfigError) as err:
        decode_ipmi({"endpoint": "bmc:99999"})
    assert str(err.value) == "receivers.ipmi.endpoint: port must be 1 to 65535, got 99999"
    # Through the whole loader, as a user's file: the unused receiver only warns.
    config = load(with_("receivers.ipmi", {"endpoint": "10.0.0.5:623"}))
    assert config.warnings == [
        "receivers.ipmi: is defined but no pipeline uses it (it is not started)"
    ]


def test_long_or_non_finite_values_are_refused_in_one_readable_line(tmp_path: Path) -> None:
    assert error_of(GOOD.replace("max_watts: 50", "max_watts: .nan")) == (
        "receivers.estimator.max_watts: expected a finite number, got nan"
    )
    assert error_of(GOOD.replace("max_watts: 50", "max_watts: -.inf")) == (
        "receivers.estimator.max_watts: expected a finite number, got -inf"
    )
    long = "9" * 100 + "h"
    assert error_of(GOOD.replace("interval: 500ms", f"interval: {long}")) == (
        f"service.interval: is too long (at most 9.22337e+09s), got '{'9' * 55}...'"
    )
    secret = tmp_path / "secret"
    secret.write_text("s3cret" * 20 + "\n")
    message = error_of(GOOD.replace("interval: 500ms", f'interval: "${{file:{secret}}}"'))
    assert message == (
        f"service.interval: expected a duration like 500ms, 5s or 1m, got ${{file:{secret}}}"
    )

"""The Helm chart (helm/otel-kepler), rendered and linted by Helm's own Go code.

helm-python-sdk binds the Helm v4 SDK (no helm binary is installable here): ``Chart.render``
is ``helm template`` (values.schema.json included), ``lint`` is ``helm lint``. Every rendered
object is validated by kubernetes-validate in strict mode (unknown fields are errors) against
the Kubernetes 1.30 and 1.33 schemas; the Prometheus Operator's ServiceMonitor and PodMonitor
are CRDs it has no schema for, so they are skipped there by name and their fields asserted
here. The rendered ConfigMap goes through ``otel-kepler validate`` inside an emulation of the
pod's filesystem and environment (the volumes and variables the rendered pod spec declares).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.peers import make_self_signed_cert

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "otel-kepler"
K8S_VERSIONS = ("1.30", "1.33")
CRD_KINDS = {"ServiceMonitor", "PodMonitor"}  # no schema in kubernetes-validate: asserted here
RELEASE, NAMESPACE = "ok", "monitoring"
FULLNAME = "ok-otel-kepler"
SELECTOR = {"app.kubernetes.io/name": "otel-kepler", "app.kubernetes.io/instance": RELEASE}
HIGH_CAPABILITIES = ["BPF", "SYS_ADMIN", "NET_ADMIN"]  # the seed's CAP_BPF, CAP_SYS_ADMIN...

helm.disable_logging()

OTLP_GRPC_TLS: dict[str, Any] = {
    "enabled": True,
    "protocol": "grpc",
    "endpoint": "otel-collector.monitoring:4317",
    "headers": {
        "authorization": {"secretName": "otlp-auth", "key": "token"},
        "X-Scope-OrgID": {"secretName": "otlp-auth", "key": "tenant"},
    },
    "tls": {
        "secretName": "otlp-tls",
        "caFile": "ca.crt",
        "certFile": "tls.crt",
        "keyFile": "tls.key",
    },
}
IPMI_LAN: dict[str, Any] = {
    "enabled": True,
    "endpoint": "${env:NODE_NAME}-bmc.example.net",
    "username": "admin",
    "passwordSecret": {"secretName": "bmc", "key": "password"},
}

#: Value sets: the modes, and every Secret, file and optional object wired at once.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "high": {},
    "low": {"privilege": "low"},
    "sidecar": {"mode": "sidecar", "sidecar": {"example": {"enabled": True}}},
    "low-otlp-carbon-gpu-monitoring": {
        "privilege": "low",
        "otlp": OTLP_GRPC_TLS,
        "carbon": {
            "settings": {
                "providers": ["electricitymaps", "region"],
                "electricitymaps": {"zone": "DE"},
            },
            "electricityMapsToken": {"secretName": "carbon-apis", "key": "em-token"},
        },
        "gpu": {"enabled": True, "runtimeClassName": "nvidia"},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "podMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "networkPolicy": {
            "enabled": True,
            "from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
        },
    },
    "low-ipmi-lan": {
        "privilege": "low",
        "ipmi": IPMI_LAN,
        "k8sattributes": {"source": "apiserver"},
    },
    "high-ipmi-in-band-otlp-http": {
        "ipmi": {"enabled": True},
        "otlp": {"enabled": True, "endpoint": "https://collector.example:4318"},
        "carbon": {
            "wattTimePassword": {"secretName": "wt", "key": "password"},
            "settings": {
                "providers": ["watttime", "region"],
                "watttime": {"region": "CAISO_NORTH", "username": "me"},
            },
        },
    },
}

#: Kepler's documented installs, verbatim, with this chart in place of kepler/kepler.
KEPLER_COMMANDS = {
    "high": "helm install kepler <chart> --namespace monitoring"
    " --set serviceMonitor.enabled=true --set serviceMonitor.labels.release=prometheus"
    " --set securityContext.runAsUser=0 --set securityContext.runAsGroup=0"
    " --set securityContext.fsGroup=0 --set securityContext.capabilities.add[0]=CAP_BPF"
    " --set securityContext.capabilities.add[1]=CAP_NET_ADMIN"
    " --set securityContext.capabilities.add[2]=CAP_SYS_ADMIN",
    "low": "helm install kepler <chart> --namespace monitoring"
    " --set serviceMonitor.enabled=true --set serviceMonitor.labels.release=prometheus"
    " --set securityContext.runAsUser=1000 --set securityContext.runAsGroup=1000"
    " --set securityContext.fsGroup=1000 --set securityContext.capabilities.drop[0]=ALL",
}


def helm_install(command: str) -> tuple[str, str, dict[str, Any]]:
    """(release, namespace, values) of a ``helm install`` line, as Helm's CLI reads it.

    The CLI parses each --set in turn into one map with strvals.ParseInto; a comma-joined
    expression is parsed by the same function the same way (each pair in turn), so the values
    here are exactly Helm's for that line.
    """
    words = shlex.split(command)
    assert words[:2] == ["helm", "install"] and words[3] == "<chart>", words
    release, namespace, sets = words[2], "default", []
    flags = iter(words[4:])
    for flag in flags:
        if flag in ("--namespace", "-n"):
            namespace = next(flags)
        else:
            assert flag == "--set", f"unexpected flag {flag}"
            expression = next(flags)
            assert "," not in expression, expression
            sets.append(expression)
    return release, namespace, helm.parse_set_string(",".join(sets))


def kepler_install(mode: str) -> list[dict[str, Any]]:
    """The objects Kepler's documented ``helm install`` line gives with this chart."""
    release, namespace, values = helm_install(KEPLER_COMMANDS[mode])
    files = _chart().render(values, name=release, namespace=namespace)
    return [
        doc
        for path, text in sorted(files.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


VALUE_SETS["kepler-high"] = helm_install(KEPLER_COMMANDS["high"])[2]
VALUE_SETS["kepler-low"] = helm_install(KEPLER_COMMANDS["low"])[2]
VALUE_SETS["low-redfish-password"] = {
    "securityContext": {"runAsUser": 1000, "capabilities": {"drop": ["ALL"]}},
    "redfish": {
        "enabled": True,
        "endpoint": "https://${env:NODE_NAME}-bmc.example.net",
        "username": "monitor",
        "password": "hunter2",
        "caFile": "ca.crt",
        "caSecretName": "bmc-ca",
    },
}
VALUE_SETS["low-config-merged"] = {
    "privilege": "low",
    "config": {
        "service": {"interval": "10s", "telemetry": {"logs": {"level": "debug"}}},
        "receivers": {"estimator": {"idle_watts": 60, "max_watts": 280}},
        "processors": {"attribution": {"split_by": "hardware_counters"}},
    },
}
VALUE_SETS["high-redfish-secret"] = {
    "redfish": {
        "enabled": True,
        "endpoint": "bmc.example.net:8443",
        "username": "monitor",
        "passwordSecret": {"secretName": "bmc", "key": "redfish-password"},
        "insecureSkipVerify": True,
        "auth": "session",
        "pollInterval": "30s",
    },
}

#: The kinds each value set renders (besides the CRDs, asserted separately).
DAEMONSET_KINDS = {
    "ConfigMap", "DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service"
}  # fmt: skip
KINDS = {
    "high": DAEMONSET_KINDS,
    "low": DAEMONSET_KINDS,
    "sidecar": {"ConfigMap", "Deployment"},
    "low-otlp-carbon-gpu-monitoring": DAEMONSET_KINDS | {"NetworkPolicy"},
    "low-ipmi-lan": DAEMONSET_KINDS,
    "high-ipmi-in-band-otlp-http": DAEMONSET_KINDS,
    "kepler-high": DAEMONSET_KINDS,
    "kepler-low": DAEMONSET_KINDS,
    "low-redfish-password": DAEMONSET_KINDS | {"Secret"},
    "high-redfish-secret": DAEMONSET_KINDS,
    "low-config-merged": DAEMONSET_KINDS,
}

#: Value sets whose pipeline uses a component type that is not registered yet.
NEEDS = {
    "high": {"ebpf"},
    "low-ipmi-lan": {"ipmi"},
    "high-ipmi-in-band-otlp-http": {"ebpf", "ipmi"},
    "kepler-high": {"ebpf"},
    "low-redfish-password": {"redfish"},
    "high-redfish-secret": {"ebpf", "redfish"},
}


@functools.cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART)


@functools.cache
def _render(values_json: str) -> dict[str, str]:
    return _chart().render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE)


def render_files(values: dict[str, Any]) -> dict[str, str]:
    """``helm template ok helm/otel-kepler -n monitoring`` with ``values``: path -> text."""
    return _render(json.dumps(values, sort_keys=True))


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The rendered Kubernetes objects."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_files(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return copy.deepcopy(objects)


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {[o['metadata']['name'] for o in found]}"
    return found[0]


def agent_config(objects: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The agent's config.yaml from the rendered ConfigMap: (text, parsed)."""
    return agent_config_of(objects, FULLNAME)


def agent_config_of(objects: list[dict[str, Any]], name: str) -> tuple[str, dict[str, Any]]:
    text = one(objects, "ConfigMap", name)["data"]["config.yaml"]
    return text, yaml.safe_load(text)


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    workloads = [o for o in objects if o["kind"] in ("DaemonSet", "Deployment")]
    assert len(workloads) == 1
    return dict(workloads[0]["spec"]["template"]["spec"])


def agent_container(spec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in spec["containers"] if c["name"] == "otel-kepler")


def env_value(container: dict[str, Any], name: str) -> str:
    values = [e["value"] for e in container["env"] if e["name"] == name]
    assert len(values) == 1, f"{name}: {values}"
    return str(values[0])


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def host_paths(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """mountPath -> (host path, read-only) of every hostPath volume the container mounts."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    return {
        m["mountPath"]: (volumes[m["name"]]["hostPath"]["path"], bool(m.get("readOnly")))
        for m in container["volumeMounts"]
        if "hostPath" in volumes[m["name"]]
    }


# -- metadata, lint, Kubernetes schemas ---------------------------------------------------


def test_chart_version_is_the_package_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert (chart["version"], chart["appVersion"], values["image"]["tag"]) == (version,) * 3
    assert _chart().name == "otel-kepler"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_is_clean(name: str, version: str) -> None:
    report = helm.lint(
        CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version=f"v{version}.0"
    )
    assert report["errors"] == []
    # Only the informational "icon is recommended": no warning, no error.
    assert [(m["severity"], m["error"]) for m in report["messages"]] == [(1, "icon is recommended")]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_object_is_valid_kubernetes(name: str, version: str) -> None:
    validated = set()
    for obj in render(VALUE_SETS[name]):
        if obj["kind"] in CRD_KINDS:
            continue  # CRDs: no schema here; test_service_and_monitors checks their fields
        assert kubernetes_validate.validate(obj, version, strict=True) == version
        validated.add(obj["kind"])
    assert validated == KINDS[name]


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The validation has teeth: a misspelt container field fails it."""
    daemonset = one(render({}), "DaemonSet")
    agent_container(daemonset["spec"]["template"]["spec"])["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(daemonset, "1.33", strict=True)
    # and Kepler's fsGroup in a container's securityContext, which the chart never puts there.
    daemonset = one(kepler_install("low"), "DaemonSet")
    agent_container(daemonset["spec"]["template"]["spec"])["securityContext"]["fsGroup"] = 1000
    with pytest.raises(kubernetes_validate.ValidationError, match="fsGroup"):
        kubernetes_validate.validate(daemonset, "1.30", strict=True)


# -- the DaemonSet and its two privilege modes --------------------------------------------


def test_high_privilege_runs_ebpf_and_rapl_as_root_with_the_seeds_capabilities() -> None:
    objects = render({"privilege": "high"})
    default = render({})  # high is the default; only the reason given for it differs
    assert agent_config(default)[1] == agent_config(objects)[1]
    for rendered in (default, objects):
        agent_container(pod_spec(rendered))["env"].pop(-1)  # the note, last of the env
    assert pod_spec(default) == pod_spec(objects)
    daemonset = one(objects, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    container = agent_container(spec)
    assert spec["hostPID"] is True
    assert spec["securityContext"] == {"runAsUser": 0, "runAsGroup": 0, "fsGroup": 0}
    # The identity is the pod's; the container has what only a container has.
    assert container["securityContext"] == {
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": HIGH_CAPABILITIES},
    }
    # Kubernetes refuses allowPrivilegeEscalation: false together with CAP_SYS_ADMIN.
    assert "allowPrivilegeEscalation" not in container["securityContext"]
    assert host_paths(spec, container) == {
        "/host/proc": ("/proc", True),
        "/host/sys": ("/sys", True),
        "/sys/kernel/debug": ("/sys/kernel/debug", True),
        "/lib/modules": ("/lib/modules", True),
        "/usr/src": ("/usr/src", True),
        "/var/lib/otel-kepler": ("/var/lib/otel-kepler", False),  # the learned idle power
    }
    _, config = agent_config(objects)
    assert config["receivers"] == {
        "rapl": {"fallback": "estimator"},
        "ebpf": {"fallback": "procfs"},
    }
    assert config["service"]["pipelines"]["metrics"]["receivers"] == ["rapl", "ebpf"]
    assert daemonset["metadata"]["labels"]["otel-kepler.io/privilege"] == "high"
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "200Mi"},
        "limits": {"cpu": "1", "memory": "640Mi"},
    }


def test_low_privilege_runs_procfs_and_the_estimator_without_any_capability() -> None:
    objects = render({"privilege": "low"})
    spec = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    container = agent_container(spec)
    assert spec["hostPID"] is False
    assert spec["securityContext"] == {
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"] == {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert host_paths(spec, container) == {
        "/host/proc": ("/proc", True),
        "/host/sys": ("/sys", True),
    }
    _, config = agent_config(objects)
    assert config["receivers"] == {"estimator": {}, "procfs": {}}
    assert config["service"]["pipelines"]["metrics"]["receivers"] == ["estimator", "procfs"]
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "96Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }


@pytest.mark.parametrize("privilege", ["high", "low"])
def test_daemonset_runs_everywhere_and_probes_what_the_agent_serves(privilege: str) -> None:
    objects = render({"privilege": privilege})
    daemonset = one(objects, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    container = agent_container(spec)
    text, config = agent_config(objects)
    # The host's trees, read-only, where host.procfs and host.sysfs point.
    assert config["host"] == {
        "procfs": "/host/proc",
        "sysfs": "/host/sys",
        "node_name": "${env:NODE_NAME:-}",
    }
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["NODE_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert container["args"] == ["run", "--config", "/etc/otel-kepler/config.yaml"]
    # The probes hit the prometheus exporter's endpoint, on the port the config listens on.
    assert config["exporters"]["prometheus"] == {"endpoint": "0.0.0.0:9102"}
    assert container["ports"] == [
        {"name": "kepler-metrics", "containerPort": 9102, "protocol": "TCP"}
    ]
    probes = {
        k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {
        "startupProbe": {"path": "/healthz", "port": "kepler-metrics"},
        "livenessProbe": {"path": "/healthz", "port": "kepler-metrics"},
        "readinessProbe": {"path": "/readyz", "port": "kepler-metrics"},
    }
    # A new config rolls the pods.
    checksum = daemonset["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum == hashlib.sha256(text.rstrip("\n").encode()).hexdigest()
    assert mounts(container)["/etc/otel-kepler"]["readOnly"] is True
    assert {"name": "otel-kepler-tmp", "emptyDir": {"sizeLimit": "64Mi"}} in spec["volumes"]
    assert config["processors"]["k8sattributes"] == {
        "source": "kubelet",
        "kubelet": {
            "endpoint": "https://${env:NODE_IP}:10250",
            "insecure_skip_verify": True,
            "poll_interval": "10s",
        },
    }
    assert config["service"] == {
        "interval": "5s",
        "pipelines": {
            "metrics": {
                "receivers": config["service"]["pipelines"]["metrics"]["receivers"],
                "processors": ["k8sattributes", "attribution", "carbon"],
                "exporters": ["prometheus"],
            }
        },
    }


def test_host_pid_and_resources_can_be_set() -> None:
    values = {
        "privilege": "low",
        "hostPID": True,
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}},
    }
    spec = one(render(values), "DaemonSet")["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    assert agent_container(spec)["resources"] == values["resources"]
    note = env_value(agent_container(spec), "OTEL_KEPLER_PRIVILEGE_NOTE")
    assert "(the host's /proc mounted at /host/proc, with hostPID)" in note


# -- Kepler's documented installs, verbatim ----------------------------------------------


def test_kepler_commands_are_parsed_by_helm() -> None:
    """What Helm makes of the two lines: Kepler's one securityContext, CAP_ spelling included."""
    release, namespace, high = helm_install(KEPLER_COMMANDS["high"])
    assert (release, namespace) == ("kepler", "monitoring")
    monitor = {"enabled": True, "labels": {"release": "prometheus"}}
    assert high == {
        "serviceMonitor": monitor,
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "fsGroup": 0,
            "capabilities": {"add": ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"]},
        },
    }
    assert helm_install(KEPLER_COMMANDS["low"])[2] == {
        "serviceMonitor": monitor,
        "securityContext": {
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def test_kepler_high_command_gives_a_root_ebpf_pod() -> None:
    objects = kepler_install("high")
    daemonset = one(objects, "DaemonSet", "kepler-otel-kepler")
    spec = daemonset["spec"]["template"]["spec"]
    container = agent_container(spec)
    assert daemonset["metadata"]["labels"]["otel-kepler.io/privilege"] == "high"
    assert spec["hostPID"] is True
    assert spec["securityContext"] == {"runAsUser": 0, "runAsGroup": 0, "fsGroup": 0}
    # The runtime prefixes CAP_ itself: the names go without it, in the user's order.
    assert container["securityContext"] == {
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["BPF", "NET_ADMIN", "SYS_ADMIN"]},
    }
    assert "/sys/kernel/debug" in host_paths(spec, container)
    monitor = one(objects, "ServiceMonitor", "kepler-otel-kepler")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "kepler"
    _, config = agent_config_of(objects, "kepler-otel-kepler")
    assert config["receivers"] == {
        "rapl": {"fallback": "estimator"},
        "ebpf": {"fallback": "procfs"},
    }
    assert config["service"]["pipelines"]["metrics"]["receivers"] == ["rapl", "ebpf"]
    assert env_value(container, "OTEL_KEPLER_PRIVILEGE_NOTE").startswith(
        "otel-kepler: privilege high (securityContext.runAsUser=0, "
        "securityContext.capabilities.add=[BPF,NET_ADMIN,SYS_ADMIN]): "
        "root with capabilities BPF, NET_ADMIN, SYS_ADMIN; receivers rapl"
    )


def test_kepler_low_command_gives_an_unprivileged_pod() -> None:
    objects = kepler_install("low")
    daemonset = one(objects, "DaemonSet", "kepler-otel-kepler")
    spec = daemonset["spec"]["template"]["spec"]
    container = agent_container(spec)
    assert daemonset["metadata"]["labels"]["otel-kepler.io/privilege"] == "low"
    # Without hostPID: the host's procfs mounted at /host/proc shows every host process.
    assert spec["hostPID"] is False
    assert spec["securityContext"] == {
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"] == {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert host_paths(spec, container) == {
        "/host/proc": ("/proc", True),
        "/host/sys": ("/sys", True),
    }
    monitor = one(objects, "ServiceMonitor", "kepler-otel-kepler")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    text, config = agent_config_of(objects, "kepler-otel-kepler")
    assert config["receivers"] == {"estimator": {}, "procfs": {}}
    assert config["service"]["pipelines"]["metrics"]["receivers"] == ["estimator", "procfs"]
    assert config["host"]["procfs"] == "/host/proc"
    note = env_value(container, "OTEL_KEPLER_PRIVILEGE_NOTE")
    assert note == (
        "otel-kepler: privilege low (securityContext.runAsUser=1000, "
        "securityContext.capabilities.drop=[ALL] without add): receivers procfs (the host's "
        "/proc mounted at /host/proc, no hostPID) and estimator (modelled power, "
        "source=model); rapl is off because energy_uj is readable by root only, ebpf because "
        "loading BPF needs root with CAP_BPF and CAP_SYS_ADMIN. otel-kepler doctor tells what "
        "each source lacks on this node."
    )
    assert text.splitlines()[0] == f"# {note}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("mode", sorted(KEPLER_COMMANDS))
def test_kepler_commands_give_valid_kubernetes(mode: str, version: str) -> None:
    kinds = set()
    for obj in kepler_install(mode):
        kinds.add(obj["kind"])
        if obj["kind"] not in CRD_KINDS:
            assert kubernetes_validate.validate(obj, version, strict=True) == version
    assert kinds == DAEMONSET_KINDS | {"ServiceMonitor"}


@pytest.mark.parametrize(
    "source", [f"helm install ({m})" for m in sorted(KEPLER_COMMANDS)] + sorted(VALUE_SETS)
)
def test_fs_group_is_only_ever_the_pods(source: str) -> None:
    if source.startswith("helm install"):
        objects = kepler_install(source.removeprefix("helm install (").removesuffix(")"))
    else:
        objects = render(VALUE_SETS[source])
    spec = pod_spec(objects)
    for container in spec["containers"]:
        context = container.get("securityContext", {})
        assert "fsGroup" not in context, container["name"]
        assert not [c for c in context.get("capabilities", {}).get("add", []) if "CAP_" in c]
    if "securityContext" in spec:
        assert "fsGroup" in spec["securityContext"]


@pytest.mark.parametrize("mode", sorted(KEPLER_COMMANDS))
def test_kepler_command_pod_logs_why_and_runs_a_valid_pipeline(mode: str, tmp_path: Path) -> None:
    """The rendered command, run by a real shell with the rendered env: its first log line is
    the privilege note, then the agent loads the rendered config (``validate`` for ``run``)."""
    objects = kepler_install(mode)
    pod = PodView(objects, tmp_path)
    localized = tmp_path / "config.yaml"
    localized.write_text(pod.localize(pod.config_path.read_text()))
    container = agent_container(pod_spec(objects))
    command = container["command"]
    assert command[:2] == ["/bin/sh", "-c"] and container["args"][0] == "run"
    env = {**pod.env, "PATH": f"{Path(sys.executable).parent}:{pod.env['PATH']}"}
    args = ["validate", "--config", str(localized)]
    result = subprocess.run(
        [*command, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == env["OTEL_KEPLER_PRIVILEGE_NOTE"]
    assert result.stdout.strip() == f"{localized}: valid (metrics)"


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """Outside pytest's 0700 tmp dirs, so that the pod's non-root user can read it."""
    directory = tempfile.mkdtemp(prefix="helm-pod-")
    os.chmod(directory, 0o755)
    try:
        yield Path(directory)
    finally:
        shutil.rmtree(directory)


def cli_as(identity: dict[str, Any], env: dict[str, str], argv: list[str]) -> tuple[int, str]:
    """``otel-kepler ARGV`` in a forked child that became the pod's uid, gid and fsGroup (a
    non-root uid holds no capability): (exit status, stdout). The same command runs here first
    so that every module it needs is imported: the child keeps them, and that user could not
    read them from this virtualenv's interpreter."""
    from otel_kepler import cli

    assert os.geteuid() == 0, "becoming the pod's user needs root"
    with mock.patch.dict(os.environ, env, clear=True), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(argv) == 0
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            os.close(reader)
            sys.stdout = os.fdopen(writer, "w")
            os.environ.clear()
            os.environ.update(env)
            os.setgroups([identity["fsGroup"]])
            os.setgid(identity["runAsGroup"])
            os.setuid(identity["runAsUser"])
            code = cli.main(argv)
            sys.stdout.flush()
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        output = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


def test_kepler_low_command_doctor_says_why_ebpf_and_rapl_are_off(
    world_readable_dir: Path,
) -> None:
    """``otel-kepler doctor`` as the pod's user (from the rendered pod's securityContext), on
    this host's /proc and /sys where the pod mounts them."""
    objects = kepler_install("low")
    pod = PodView(objects, world_readable_dir / "pod")
    config = world_readable_dir / "config.yaml"
    config.write_text(pod.localize(pod.config_path.read_text()))
    config.chmod(0o644)
    identity = pod_spec(objects)["securityContext"]
    code, output = cli_as(identity, pod.env, ["doctor", "--config", str(config)])
    assert code == 0, output
    first, *rest = output.splitlines()
    assert first == "host: procfs=/proc sysfs=/sys uid=1000"
    lines = {line.split()[0]: line.split(None, 2)[1:] for line in rest}
    assert lines["ebpf"][0] == "no" and "no privilege" in lines["ebpf"][1], lines["ebpf"]
    # energy_uj is root-only since Linux 5.10 (0400): "no" unless this host has it readable.
    readable = any(
        path.stat().st_mode & 0o004 for path in Path("/sys/class/powercap").glob("*/energy_uj")
    )
    assert lines["rapl"][0] == ("yes" if readable else "no"), lines["rapl"]
    assert lines["procfs"][0] == "yes" and lines["estimator"][0] == "yes", output


# -- sidecar mode -------------------------------------------------------------------------


def test_sidecar_mode_renders_the_config_and_an_unprivileged_example() -> None:
    assert {o["kind"] for o in render({"mode": "sidecar"})} == {"ConfigMap"}
    objects = render(VALUE_SETS["sidecar"])
    deployment = one(objects, "Deployment", f"{FULLNAME}-example")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["shareProcessNamespace"] is True
    assert "hostPID" not in spec and "securityContext" not in spec
    assert [c["name"] for c in spec["containers"]] == ["app", "otel-kepler"]
    container = agent_container(spec)
    assert host_paths(spec, container) == {}
    assert all("hostPath" not in v for v in spec["volumes"])
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"][:5]}
    assert env == {
        "NODE_NAME": "spec.nodeName",
        "NODE_IP": "status.hostIP",
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_UID": "metadata.uid",
    }
    # The same pipeline as configs/sidecar.yaml, with the pull endpoint for the probes.
    _, config = agent_config(objects)
    reference = yaml.safe_load((ROOT / "configs" / "sidecar.yaml").read_text())
    assert config["host"] == reference["host"]
    assert config["receivers"] == reference["receivers"]
    assert config["processors"]["k8sattributes"] == reference["processors"]["k8sattributes"]
    assert config["processors"]["attribution"] == {
        **reference["processors"]["attribution"],
        "levels": ["node", "container", "pod"],
    }
    assert config["service"]["pipelines"]["metrics"]["processors"] == [
        *reference["service"]["pipelines"]["metrics"]["processors"],
        "carbon",
    ]
    assert config["exporters"] == {"prometheus": {"endpoint": "0.0.0.0:9102"}}


def test_another_chart_adds_the_agent_with_the_named_templates(tmp_path: Path) -> None:
    """A chart depending on otel-kepler (mode: sidecar) includes the container and volumes."""
    parent = tmp_path / "shop"
    (parent / "templates").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "otel-kepler")  # follows the dashboard link
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: shop\nversion: 1.0.0\n"
        "dependencies:\n  - {name: otel-kepler, version: 0.1.0}\n"
    )
    (parent / "values.yaml").write_text(
        "otel-kepler:\n  mode: sidecar\n  dashboard: {enabled: false}\n"
        "  otlp: {enabled: true, endpoint: 'http://otel-collector.monitoring:4318'}\n"
    )
    (parent / "templates" / "deployment.yaml").write_text(
        """\
{{- $kepler := dict "Release" .Release "Values" (index .Values "otel-kepler") }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  selector:
    matchLabels: {app: shop}
  template:
    metadata:
      labels: {app: shop}
      annotations:
        checksum/otel-kepler: {{ include "otel-kepler.configChecksum" $kepler }}
    spec:
      shareProcessNamespace: true
      containers:
        - name: shop
          image: registry.example/shop:1.0
        {{- include "otel-kepler.sidecar.container" $kepler | nindent 8 }}
      volumes:
        {{- include "otel-kepler.sidecar.volumes" $kepler | nindent 8 }}
"""
    )
    with helm.Chart.load(parent) as chart:
        files = chart.render({}, name="shop", namespace="shop")
    objects = [
        doc
        for path, text in files.items()
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    assert sorted(o["kind"] for o in objects) == ["ConfigMap", "Deployment"]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.33", strict=True)
    configmap = one(objects, "ConfigMap")
    assert configmap["metadata"]["name"] == "shop-otel-kepler"
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["shop", "otel-kepler"]
    assert {"name": "otel-kepler-config", "configMap": {"name": "shop-otel-kepler"}} in spec[
        "volumes"
    ]
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    assert config["processors"]["k8sattributes"] == {"source": "downward_api"}
    assert config["exporters"]["otlphttp"]["endpoint"] == "http://otel-collector.monitoring:4318"
    checksum = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    text = configmap["data"]["config.yaml"].rstrip("\n")
    assert checksum == {"checksum/otel-kepler": hashlib.sha256(text.encode()).hexdigest()}


# -- the config: valid for the agent, secrets only by reference ---------------------------


class PodView:
    """The agent's view of the rendered pod: its files (volumes) and its environment."""

    FIELDS = {
        "spec.nodeName": "node-1",
        "status.hostIP": "10.0.0.11",
        "metadata.name": "otel-kepler-x2x9k",
        "metadata.namespace": NAMESPACE,
        "metadata.uid": "0f2f6a52-3c56-4a4e-9d0c-0d3c1d1b7e21",
    }

    def __init__(self, objects: list[dict[str, Any]], root: Path) -> None:
        spec = pod_spec(objects)
        container = agent_container(spec)
        volumes = {v["name"]: v for v in spec["volumes"]}
        configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
        cert = make_self_signed_cert(root / "pki")
        self.paths: dict[str, str] = {}  # mountPath -> where it is in this emulation
        self.secret_files: list[str] = []
        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            where = root / mount["mountPath"].lstrip("/")
            if "hostPath" in volume:
                self.paths[mount["mountPath"]] = volume["hostPath"]["path"]
                continue
            where.mkdir(parents=True)
            self.paths[mount["mountPath"]] = str(where)
            if "configMap" in volume:
                for key, text in configmaps[volume["configMap"]["name"]]["data"].items():
                    (where / key).write_text(text)
            elif "secret" in volume:  # a Secret holding exactly the keys the pod asks for
                for item in volume["secret"]["items"]:
                    pem = cert.key_pem if item["key"].endswith(".key") else cert.cert_pem
                    content = pem if item["key"].endswith((".crt", ".key")) else b"s3cret\n"
                    (where / item["path"]).write_bytes(content)
                    self.secret_files.append(f"{mount['mountPath']}/{item['path']}")
            else:  # /tmp, and the idle state where no host path keeps it
                size = "1Mi" if mount["mountPath"] == "/var/lib/otel-kepler" else "64Mi"
                assert volume == {"name": mount["name"], "emptyDir": {"sizeLimit": size}}
        self.env = {"PATH": os.environ["PATH"]}
        for var in container["env"]:
            if "value" in var:
                self.env[var["name"]] = var["value"]
            elif "fieldRef" in var["valueFrom"]:
                self.env[var["name"]] = self.FIELDS[var["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                self.env[var["name"]] = f"value of {ref['name']}/{ref['key']}"
        self.config_path = Path(self.paths["/etc/otel-kepler"]) / "config.yaml"

    def localize(self, text: str) -> str:
        """Paths in the pod -> paths in this emulation (the longest mount path that matches)."""
        longest_first = sorted(self.paths, key=len, reverse=True)
        pattern = "|".join(re.escape(path) + r"(?=[/\s'\"]|$)" for path in longest_first)
        return re.sub(pattern, lambda m: self.paths[m[0]].rstrip("/") or "/", text, flags=re.M)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_config_is_valid_for_the_agent(name: str, tmp_path: Path) -> None:
    """``otel-kepler validate`` on the rendered ConfigMap, as the rendered pod would run it.

    Value sets in ``NEEDS`` use receivers (ebpf, ipmi) that must be registered for this to pass.
    """
    pod = PodView(render(VALUE_SETS[name]), tmp_path)
    config = pod.config_path.read_text()
    localized = tmp_path / "config.yaml"
    localized.write_text(pod.localize(config))
    result = subprocess.run(
        [sys.executable, "-m", "otel_kepler.cli", "validate", "--config", str(localized)],
        cwd=ROOT,
        env=pod.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"needs {NEEDS.get(name, 'nothing new')}: {result.stderr}"
    assert result.stdout.strip() == f"{localized}: valid (metrics)"
    # Every secret file the pod mounts is referenced by the config, and every file the config
    # names under /etc/otel-kepler is mounted.
    referenced = {
        word.strip("'\"")
        for word in config.split()
        if word.strip("'\"").startswith("/etc/otel-kepler/")
    }
    assert referenced == set(pod.secret_files)


def test_secrets_never_reach_the_configmap() -> None:
    values = copy.deepcopy(VALUE_SETS["low-otlp-carbon-gpu-monitoring"])
    values["ipmi"] = IPMI_LAN
    objects = render(values)
    _, config = agent_config(objects)
    otlp = config["exporters"]["otlp"]
    # gRPC metadata keys are lowercase.
    assert otlp["headers"] == {
        "authorization": "${env:OTLP_HEADER_AUTHORIZATION}",
        "x-scope-orgid": "${env:OTLP_HEADER_X_SCOPE_ORGID}",
    }
    assert otlp["tls"] == {
        "ca_file": "/etc/otel-kepler/tls/otlp/ca.crt",
        "cert_file": "/etc/otel-kepler/tls/otlp/tls.crt",
        "key_file": "/etc/otel-kepler/tls/otlp/tls.key",
    }
    assert (otlp["endpoint"], otlp["compression"]) == ("otel-collector.monitoring:4317", "gzip")
    assert config["receivers"]["ipmi"] == {
        "endpoint": "${env:NODE_NAME}-bmc.example.net",
        "port": 623,
        "username": "admin",
        "password_file": "/etc/otel-kepler/secrets/ipmi/password",
    }
    assert config["processors"]["carbon"] == {
        "providers": ["electricitymaps", "region"],
        "electricitymaps": {
            "zone": "DE",
            "token_file": "/etc/otel-kepler/secrets/electricitymaps/em-token",
        },
    }
    spec = pod_spec(objects)
    container = agent_container(spec)
    secret_env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert secret_env == {
        "OTLP_HEADER_AUTHORIZATION": {"name": "otlp-auth", "key": "token"},
        "OTLP_HEADER_X_SCOPE_ORGID": {"name": "otlp-auth", "key": "tenant"},
    }
    secrets = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
    assert secrets == {
        "otel-kepler-otlp-tls": {
            "secretName": "otlp-tls",
            "items": [{"key": k, "path": k} for k in ("ca.crt", "tls.crt", "tls.key")],
            "defaultMode": 0o440,
        },
        "otel-kepler-ipmi": {
            "secretName": "bmc",
            "items": [{"key": "password", "path": "password"}],
            "defaultMode": 0o440,
        },
        "otel-kepler-electricitymaps": {
            "secretName": "carbon-apis",
            "items": [{"key": "em-token", "path": "em-token"}],
            "defaultMode": 0o440,
        },
    }
    assert {m["mountPath"] for m in container["volumeMounts"] if m["name"] in secrets} == {
        "/etc/otel-kepler/tls/otlp",
        "/etc/otel-kepler/secrets/ipmi",
        "/etc/otel-kepler/secrets/electricitymaps",
    }
    # The GPU: the NVIDIA runtime exposes the driver's NVML to the container.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["NVIDIA_VISIBLE_DEVICES"], env["NVIDIA_DRIVER_CAPABILITIES"]) == ("all", "utility")
    assert spec["runtimeClassName"] == "nvidia"
    assert config["receivers"]["nvml"] == {"required": False}


def test_tls_files_may_be_paths_in_the_image() -> None:
    tls = {"secretName": "otlp-tls", "caFile": "/etc/ssl/certs/ca-certificates.crt"}
    otlp = {"enabled": True, "endpoint": "https://collector.example:4318", "tls": tls}
    objects = render({"otlp": otlp})
    _, config = agent_config(objects)
    assert config["exporters"]["otlphttp"]["tls"] == {"ca_file": tls["caFile"]}
    spec = pod_spec(objects)
    assert not [v for v in spec["volumes"] if "secret" in v]  # nothing to mount
    assert "/etc/otel-kepler/tls/otlp" not in mounts(agent_container(spec))


def test_in_band_ipmi_is_a_privileged_high_daemonset() -> None:
    objects = render(VALUE_SETS["high-ipmi-in-band-otlp-http"])
    spec = pod_spec(objects)
    container = agent_container(spec)
    assert container["securityContext"]["privileged"] is True
    assert host_paths(spec, container)["/dev/ipmi0"] == ("/dev/ipmi0", False)
    assert {"name": "host-ipmi", "hostPath": {"path": "/dev/ipmi0", "type": "CharDevice"}} in spec[
        "volumes"
    ]
    _, config = agent_config(objects)
    assert config["receivers"]["ipmi"] == {"port": 623}
    assert config["exporters"]["otlphttp"] == {
        "endpoint": "https://collector.example:4318",
        "compression": "gzip",
        "timeout": "10s",
    }
    assert config["processors"]["carbon"]["watttime"] == {
        "region": "CAISO_NORTH",
        "username": "me",
        "password_file": "/etc/otel-kepler/secrets/watttime/password",
    }


def test_config_text_is_rendered_verbatim() -> None:
    text = (ROOT / "configs" / "node.yaml").read_text()
    objects = render({"config": text})
    assert one(objects, "ConfigMap", FULLNAME)["data"]["config.yaml"] == text
    assert agent_config(objects)[1] == yaml.safe_load(text)


def test_config_deep_merges_into_the_default_pipeline() -> None:
    """--set config.X changes X only: the pipeline the values build stays."""
    _, default = agent_config(render({"privilege": "low"}))
    values = helm.parse_set_string(
        "privilege=low,config.service.interval=10s,"
        "config.processors.attribution.split_by=hardware_counters,"
        "config.receivers.estimator.idle_watts=60,config.receivers.estimator.max_watts=280,"
        "config.service.telemetry.logs.level=debug"
    )
    _, merged = agent_config(render(values))
    expected = copy.deepcopy(default)
    expected["service"]["interval"] = "10s"
    expected["service"]["telemetry"] = {"logs": {"level": "debug"}}
    expected["processors"]["attribution"]["split_by"] = "hardware_counters"
    expected["receivers"]["estimator"] = {"idle_watts": 60, "max_watts": 280}
    assert merged == expected
    assert merged["processors"]["attribution"] == {
        "levels": ["node", "container", "pod"],
        "split_by": "hardware_counters",
    }
    # Lists replace: the pipeline's receivers are the user's when given.
    pipeline = {"receivers": ["procfs", "estimator"]}
    _, replaced = agent_config(
        render({"privilege": "low", "config": {"service": {"pipelines": {"metrics": pipeline}}}})
    )
    metrics = replaced["service"]["pipelines"]["metrics"]
    assert metrics["receivers"] == ["procfs", "estimator"]
    assert metrics["exporters"] == ["prometheus"]
    extra = {
        "extraReceivers": {"acpi": {}, "hwmon": {"gauges": False}},
        "extraExporters": {"debug": None},
    }
    _, more = agent_config(render({"privilege": "low", **extra}))
    assert more["receivers"]["hwmon"] == {"gauges": False}
    assert more["exporters"]["debug"] == {}
    pipeline = more["service"]["pipelines"]["metrics"]
    assert (pipeline["receivers"], pipeline["exporters"]) == (
        ["estimator", "procfs", "acpi", "hwmon"],
        ["prometheus", "debug"],
    )


# -- RBAC, Service, Prometheus Operator, NetworkPolicy, dashboard, notes ------------------


def test_rbac_grants_what_k8sattributes_and_carbon_read() -> None:
    objects = render({})
    role = one(objects, "ClusterRole", FULLNAME)
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]},
    ]
    binding = one(objects, "ClusterRoleBinding", FULLNAME)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": FULLNAME,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]
    assert one(objects, "ServiceAccount")["metadata"]["name"] == FULLNAME
    assert pod_spec(objects)["serviceAccountName"] == FULLNAME
    kinds = {o["kind"] for o in render({"rbac": {"create": False}})}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


def test_service_and_monitors() -> None:
    objects = render(VALUE_SETS["low-otlp-carbon-gpu-monitoring"])
    service = one(objects, "Service", FULLNAME)
    pod_labels = one(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == SELECTOR
    assert SELECTOR.items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "kepler-metrics", "port": 9102, "targetPort": "kepler-metrics", "protocol": "TCP"}
    ]
    node_label = {
        "sourceLabels": ["__meta_kubernetes_pod_node_name"],
        "targetLabel": "k8s_node_name",
    }
    monitor = one(objects, "ServiceMonitor", FULLNAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"] == {"matchLabels": SELECTOR}
    assert SELECTOR.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "kepler-metrics",
            "path": "/metrics",
            "scheme": "http",
            "interval": "30s",
            "scrapeTimeout": "10s",
            "relabelings": [node_label],
        }
    ]
    podmonitor = one(objects, "PodMonitor", FULLNAME)
    assert podmonitor["metadata"]["labels"]["release"] == "prometheus"
    assert podmonitor["spec"]["selector"] == {"matchLabels": SELECTOR}
    assert podmonitor["spec"]["podMetricsEndpoints"][0]["port"] == "kepler-metrics"
    assert podmonitor["spec"]["podMetricsEndpoints"][0]["relabelings"] == [node_label]
    # A sidecar's PodMonitor selects the application's pods.
    sidecar = render(
        {"mode": "sidecar", "podMonitor": {"enabled": True, "selector": {"app": "shop"}}}
    )
    assert one(sidecar, "PodMonitor")["spec"]["selector"] == {"matchLabels": {"app": "shop"}}
    assert not {"ServiceMonitor", "PodMonitor"} & {o["kind"] for o in render({})}


def test_network_policy_opens_only_the_metrics_port() -> None:
    values = VALUE_SETS["low-otlp-carbon-gpu-monitoring"]
    policy = one(render(values), "NetworkPolicy", FULLNAME)
    assert policy["spec"] == {
        "podSelector": {"matchLabels": SELECTOR},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "ports": [{"port": "kepler-metrics", "protocol": "TCP"}],
                "from": values["networkPolicy"]["from"],
            }
        ],
    }
    egress = [{"ports": [{"port": 53, "protocol": "UDP"}]}]
    policy = one(render({"networkPolicy": {"enabled": True, "egress": egress}}), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["egress"] == egress


def test_the_dashboard_ships_as_a_configmap_for_grafanas_sidecar() -> None:
    dashboard = one(render({}), "ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = dashboard["data"]["otel-kepler.json"]
    assert shipped == (ROOT / "dashboards" / "otel-kepler.json").read_text().rstrip("\n")
    assert json.loads(shipped)["uid"] == "otel-kepler"
    custom = render(
        {
            "dashboard": {
                "namespace": "grafana",
                "labels": {"dash": "yes"},
                "annotations": {"grafana_folder": "Energy"},
            }
        }
    )
    metadata = one(custom, "ConfigMap", f"{FULLNAME}-dashboard")["metadata"]
    assert (metadata["namespace"], metadata["labels"]["dash"]) == ("grafana", "yes")
    assert metadata["annotations"] == {"grafana_folder": "Energy"}
    assert metadata["labels"]["grafana_dashboard"] == "1"  # Helm merges maps: null removes
    relabelled = render({"dashboard": {"labels": {"grafana_dashboard": None, "dash": "yes"}}})
    labels = one(relabelled, "ConfigMap", f"{FULLNAME}-dashboard")["metadata"]["labels"]
    assert "grafana_dashboard" not in labels and labels["dash"] == "yes"
    names = {o["metadata"]["name"] for o in render({"dashboard": {"enabled": False}})}
    assert names == {FULLNAME}


def test_notes_tell_how_to_see_the_metrics() -> None:
    notes = render_files(VALUE_SETS["low-otlp-carbon-gpu-monitoring"])[
        "otel-kepler/templates/NOTES.txt"
    ]
    assert f"kubectl -n {NAMESPACE} port-forward daemonset/{FULLNAME} 9102:9102" in notes
    assert "curl -s http://127.0.0.1:9102/metrics" in notes
    assert "privilege low" in notes
    assert 'labels {"release":"prometheus"}' in notes
    assert "OTLP (grpc) is pushed to otel-collector.monitoring:4317" in notes
    sidecar = render_files(VALUE_SETS["sidecar"])["otel-kepler/templates/NOTES.txt"]
    assert 'include "otel-kepler.sidecar.container"' in sidecar
    assert f"port-forward deployment/{FULLNAME}-example 9102:9102" in sidecar


# -- values.schema.json refuses wrong values at install -----------------------------------

BAD_VALUES = [
    ({"privilege": "medium"}, "at '/privilege': value must be one of 'auto', 'high', 'low'"),
    ({"mode": "deployment"}, "at '/mode': value must be one of 'daemonset', 'sidecar'"),
    ({"port": "9102"}, "at '/port': got string, want integer"),
    ({"port": 70000}, "at '/port': maximum"),
    ({"interval": "5 seconds"}, "at '/interval'"),
    ({"levels": ["node", "vm"]}, "at '/levels/1'"),
    ({"serviceMonitor": {"enabled": True, "label": {"release": "prometheus"}}},
     "additional properties 'label' not allowed"),
    ({"otlp": {"enabled": True}}, "at '/otlp/endpoint': minLength: got 0, want 1"),
    ({"otlp": {"headers": {"authorization": "Bearer abc"}}},
     "at '/otlp/headers/authorization': got string, want object"),
    ({"otlp": {"tls": {"caFile": "ca.crt"}}}, "at '/otlp/tls/caFile'"),
    ({"ipmi": {"enabled": True, "endpoint": "bmc.example.net"}},
     "at '/ipmi/passwordSecret/secretName': minLength: got 0, want 1"),
    ({"ipmi": {"password": "hunter2"}}, "additional properties 'password' not allowed"),
    ({"privilege": "low", "ipmi": {"enabled": True}},
     "at '/privilege': value must be one of 'auto', 'high'"),
    ({"resources": {"limits": {"memory": "lots"}}}, "at '/resources'"),
    ({"hostPID": "yes"}, "at '/hostPID'"),
    ({"config": {"foo": {}}}, "at '/config': additional properties 'foo' not allowed"),
    ({"config": {"service": {"intervall": "5s"}}},
     "at '/config/service': additional properties 'intervall' not allowed"),
    ({"securityContext": {"runAsUsr": 0}},
     "at '/securityContext': additional properties 'runAsUsr' not allowed"),
    ({"podSecurityContext": {"capabilities": {"add": ["BPF"]}}},
     "at '/podSecurityContext': additional properties 'capabilities' not allowed"),
    ({"serviceMonitor": {"path": "/stats"}}, "at '/serviceMonitor/path': value must be '/metrics'"),
    ({"image": {"repository": "r", "tag": "t", "digest": "sha1:abc"}}, "at '/image/digest'"),
    ({"redfish": {"auth": "ntlm"}},
     "at '/redfish/auth': value must be one of 'auto', 'session', 'basic'"),
    ({"service": {"port": 0}}, "at '/service/port': minimum"),
]  # fmt: skip


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_a_wrong_value_is_refused_by_the_schema(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match="values don't meet the specifications") as err:
        _chart().render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(err.value)
    with pytest.raises(helm.HelmValuesError):
        _chart().validate_schema(values)
    report = helm.lint(CHART, values, namespace=NAMESPACE)
    assert any(message in error for error in report["errors"]) or any(
        message in m["error"] for m in report["messages"] if m["severity"] == 3
    )


# -- Kepler's keys that mean nothing here: refused with the key to use --------------------

REFUSED = [
    ({"config": {"kube": {"enabled": True}}},
     "config.kube is Kepler's: pod and container names come from the k8sattributes processor, "
     "use k8sattributes.enabled (on by default) and k8sattributes.source (kubelet or apiserver)"),
    ({"config": {"log": {"level": "debug"}}},
     "config.log is Kepler's: use config.service.telemetry.logs.level"),
    ({"config": {"rapl": {"zones": ["package"]}}},
     "config.rapl is Kepler's: use config.receivers.rapl"),
    ({"config": {"experimental": {"platform": {"redfish": {"enabled": True}}}}},
     "config.experimental is Kepler's: for Redfish use redfish.enabled, redfish.endpoint"),
    ({"daemonset": {"hostPID": True}},
     "daemonset.hostPID is a key of Kepler's chart: this chart has the DaemonSet's settings at "
     "the top level, use hostPID"),
    ({"daemonset": {"securityContext": {"privileged": True}}},
     "daemonset.securityContext is a key of Kepler's chart: this chart has the DaemonSet's "
     "settings at the top level, use securityContext"),
    ({"namespace": {"create": True, "name": "kepler"}},
     "use helm install --namespace NAME --create-namespace"),
    ({"canMount": {"usrSrc": False}}, "canMount.usrSrc is a key of Kepler's chart: use "
     "hostPaths.usrSrc (empty: the host's /usr/src is not mounted"),
    ({"service": {"targetPort": "http"}}, "service.targetPort is a key of Kepler's chart: the "
     "Service always targets the agent's port (named kepler-metrics); use service.port"),
    ({"redfish": {"enabled": True, "fileContent": "node1,admin,pw,https://bmc1"}},
     "redfish.fileContent (Kepler's node,username,password,URL lines) is not used: set "
     "redfish.endpoint"),
    ({"configOverrides": {"service": {"interval": "10s"}}},
     "configOverrides is no longer a key: use config, which deep-merges"),
    ({"redfish": {"enabled": True}}, "redfish.enabled needs redfish.endpoint"),
    # Privilege: the user's securityContext against itself and against privilege.
    ({"securityContext": {"runAsUser": 1000, "capabilities": {"add": ["CAP_BPF"]}}},
     "securityContext asks for both privileges: securityContext.runAsUser=1000 (privilege low: "
     "a non-root agent without capabilities) and securityContext.capabilities.add=[BPF] "
     "(privilege high: root with BPF, SYS_ADMIN and NET_ADMIN); keep the keys of one of them"),
    ({"privilege": "high", "securityContext": {"runAsUser": 1000}},
     "privilege=high, but securityContext.runAsUser=1000 asks for privilege low: remove it, "
     "or set privilege=low"),
    ({"privilege": "low", "securityContext": {"capabilities": {"add": ["BPF", "PERFMON"]}}},
     "privilege=low, but securityContext.capabilities.add=[BPF,PERFMON] asks for privilege "
     "high: remove it, or set privilege=high"),
    ({"ipmi": {"enabled": True}, "podSecurityContext": {"runAsUser": 1000}},
     "ipmi.enabled without ipmi.endpoint reads the node's BMC through /dev/ipmi0, which needs "
     "privilege high, but podSecurityContext.runAsUser=1000 asks for low"),
]  # fmt: skip


@pytest.mark.parametrize(("values", "message"), REFUSED, ids=[m[:60] for _, m in REFUSED])
def test_a_kepler_key_is_refused_with_the_key_to_use(values: dict[str, Any], message: str) -> None:
    _chart().validate_schema(values)  # the schema admits them: the message is the template's
    with pytest.raises(helm.HelmRenderError, match="execution error at") as err:
        _chart().render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(err.value)


def test_privilege_follows_the_users_security_context() -> None:
    cases: dict[str, list[dict[str, Any]]] = {
        "low": [
            {"securityContext": {"runAsUser": 65534}},
            {"podSecurityContext": {"runAsNonRoot": True}},
            {"securityContext": {"capabilities": {"drop": ["ALL"]}}},
            {"privilege": "low", "securityContext": {"runAsUser": 1000}},
        ],
        "high": [
            {},
            {"securityContext": {"runAsUser": 0}},
            {"securityContext": {"capabilities": {"add": ["cap_bpf"], "drop": ["ALL"]}}},
            {"securityContext": {"privileged": True}},  # Kepler's chart default
        ],
    }
    for privilege, value_sets in cases.items():
        for values in value_sets:
            objects = render(values)
            labels = one(objects, "DaemonSet")["metadata"]["labels"]
            assert labels["otel-kepler.io/privilege"] == privilege, values
            receivers = agent_config(objects)[1]["service"]["pipelines"]["metrics"]["receivers"]
            assert (
                receivers == {"high": ["rapl", "ebpf"], "low": ["estimator", "procfs"]}[privilege]
            )
    # The user's uid wins over the privilege's, on the pod; Kepler's privileged: true stays.
    spec = pod_spec(render({"securityContext": {"runAsUser": 65534}}))
    assert spec["securityContext"]["runAsUser"] == 65534
    assert spec["securityContext"]["fsGroup"] == 1000
    container = agent_container(pod_spec(render({"securityContext": {"privileged": True}})))
    assert container["securityContext"]["privileged"] is True
    assert container["securityContext"]["capabilities"]["add"] == HIGH_CAPABILITIES


def test_the_kepler_chart_keys_that_mean_something_here() -> None:
    digest = "sha256:" + "ab" * 32
    values = {
        "image": {"repository": "registry.example/otel-kepler", "tag": "0.1.0", "digest": digest},
        "extraEnvVars": {"KEPLER_LOG_LEVEL": "1", "ENABLE_GPU": True, "WORKERS": 4},
        "service": {"port": 28282},
        "serviceMonitor": {
            "enabled": True,
            "attachMetadata": {"node": True},
            "annotations": {"team": "energy"},
        },
        "annotations": {"owner": "platform"},
        "labels": {"cost-center": "42"},
        "hostPaths": {"usrSrc": ""},
    }
    objects = render(values)
    daemonset = one(objects, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    container = agent_container(spec)
    assert container["image"] == f"registry.example/otel-kepler@{digest}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["KEPLER_LOG_LEVEL"], env["ENABLE_GPU"], env["WORKERS"]) == ("1", "true", "4")
    # service.port moves the agent's listener, the container port and the Service together.
    assert container["ports"][0]["containerPort"] == 28282
    assert agent_config(objects)[1]["exporters"]["prometheus"] == {"endpoint": "0.0.0.0:28282"}
    assert one(objects, "Service")["spec"]["ports"][0]["port"] == 28282
    monitor = one(objects, "ServiceMonitor")
    assert monitor["spec"]["attachMetadata"] == {"node": True}
    assert monitor["metadata"]["annotations"] == {"team": "energy"}
    assert daemonset["metadata"]["annotations"] == {"owner": "platform"}
    assert all(o["metadata"]["labels"]["cost-center"] == "42" for o in objects)
    # No /usr/src from the host (GKE has none): bcc then uses the kernel's kheaders.
    assert "/usr/src" not in host_paths(spec, container)
    assert "/lib/modules" in host_paths(spec, container)
    for obj in objects:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, "1.33", strict=True)


def test_redfish_password_becomes_a_secret_mounted_as_a_file() -> None:
    objects = render(VALUE_SETS["low-redfish-password"])
    secret = one(objects, "Secret", f"{FULLNAME}-redfish")
    assert secret["type"] == "Opaque"
    assert secret["data"] == {"password": base64.b64encode(b"hunter2").decode()}
    text, config = agent_config(objects)
    assert "hunter2" not in text and "aHVudGVyMg" not in text
    assert config["receivers"]["redfish"] == {
        "endpoint": "https://${env:NODE_NAME}-bmc.example.net",
        "username": "monitor",
        "password_file": "/etc/otel-kepler/secrets/redfish/password",
        "ca_file": "/etc/otel-kepler/tls/redfish/ca.crt",
        "insecure_skip_verify": False,
        "auth": "auto",
        "timeout": "5s",
        "poll_interval": "10s",
    }
    assert config["service"]["pipelines"]["metrics"]["receivers"] == [
        "estimator",
        "procfs",
        "redfish",
    ]
    spec = pod_spec(objects)
    secrets = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
    assert secrets == {
        "otel-kepler-redfish": {
            "secretName": f"{FULLNAME}-redfish",
            "items": [{"key": "password", "path": "password"}],
            "defaultMode": 0o440,
        },
        "otel-kepler-redfish-tls": {
            "secretName": "bmc-ca",
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
            "defaultMode": 0o440,
        },
    }
    assert {
        m["mountPath"] for m in agent_container(spec)["volumeMounts"] if m["name"] in secrets
    } == {
        "/etc/otel-kepler/secrets/redfish",
        "/etc/otel-kepler/tls/redfish",
    }
    # The pod's fsGroup owns the mounted files (0440): the non-root agent reads them.
    assert spec["securityContext"]["fsGroup"] == 1000
    # A Secret of the user's: nothing created, its key mounted; the chart's name and labels.
    objects = render(VALUE_SETS["high-redfish-secret"])
    assert not [o for o in objects if o["kind"] == "Secret"]
    redfish = agent_config(objects)[1]["receivers"]["redfish"]
    assert redfish["password_file"] == "/etc/otel-kepler/secrets/redfish/redfish-password"
    assert (redfish["auth"], redfish["poll_interval"], redfish["insecure_skip_verify"]) == (
        "session",
        "30s",
        True,
    )
    assert "ca_file" not in redfish
    named: dict[str, Any] = {**VALUE_SETS["low-redfish-password"]["redfish"], "name": "bmc-login"}
    named["labels"] = {"backup": "no"}
    secret = one(render({"redfish": named}), "Secret")
    assert (secret["metadata"]["name"], secret["metadata"]["labels"]["backup"]) == (
        "bmc-login",
        "no",
    )

"""A host on which every Kepler metric family has data, for the Kepler drop-in tests.

:class:`KeplerHost` runs ``otel-kepler run`` (a child process, 1 s ticks) on a host made of
real parts and fixtures:

* a RAPL fixture tree (one socket: package and dram) that a thread advances at a known power;
* this machine's real /proc, with a CPU burner in a kubepods-style cgroup v2 directory
  (``cri-containerd-<id>.scope`` of a BestEffort pod), named by a Kubernetes API server
  lookalike (tests/k8s_server.py) that the ``k8sattributes`` processor lists and watches;
* a QEMU guest (Debian's qemu-system-x86 under TCG, a boot sector that jumps to itself): a
  hypervisor process the attribution recognises as a VM by its command line;
* the fake libnvidia-ml.so.1 of tests/fake_nvml (one GPU at a known power) whose compute
  process is the burner, so the process, its container and its pod all get GPU energy;
* a BMC: the real ``sushy-static`` serving a Redfish mockup whose chassis reports a known
  platform power (tests/redfish_server.py); or instead an ACPI power meter (hwmon fixture);
* optionally the carbon processor at a static grid intensity.

It serves the pull endpoint and, when given an OTLP/HTTP URL, pushes there too.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from tests.cgroups import cgroup_mount, remove_cgroups
from tests.fake_nvml import FakeNvml, build
from tests.hwmon_fixtures import SysfsTree
from tests.k8s_server import KubeServer, container_id, make_pod
from tests.peers import free_port, http_get, make_self_signed_cert
from tests.redfish_server import Server, static_bmc, write_legacy_bmc
from tests.sysfs_fixtures import RaplTree

ROOT = Path(__file__).resolve().parent.parent
NODE = "kepler-node"
POD, NAMESPACE, CONTAINER = "web-0", "shop", "app"
VM_NAME = "kepler-guest"
VM_UUID = "3b8f6f0e-5a51-4c1e-9c62-7d0c3f1e2a44"
PACKAGE_W, DRAM_W, GPU_W, GPU_IDLE_W, PLATFORM_W = 40.0, 4.0, 250.0, 50.0, 300.0
#: Instant power is one tick's energy over the tick's interval: on a loaded 2-core test machine
#: a late tick moved it by up to 57 % (measured); energy over many ticks is checked closer.
POWER_JITTER = 0.75
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BURN = "while True:\n    pass\n"


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of ``pid`` from /proc (what procfs reads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def start_qemu(directory: Path) -> subprocess.Popen[bytes]:
    """A QEMU guest spinning in its boot sector, once it uses CPU time."""
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        raise AssertionError(
            "qemu-system-x86_64 not found: run scripts/install-test-deps.sh (qemu-system-x86)"
        )
    sector = bytearray(512)
    sector[0:2] = b"\xeb\xfe"  # jmp $
    sector[510:512] = b"\x55\xaa"
    image = directory / "spin.img"
    image.write_bytes(bytes(sector))
    args = [
        binary, "-accel", "tcg", "-nographic", "-nodefaults", "-m", "64",
        "-name", f"guest={VM_NAME},debug-threads=on", "-uuid", VM_UUID,
        "-drive", f"file={image},format=raw,if=ide",
    ]  # fmt: skip
    child = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while cpu_seconds(child.pid) < 0.3:
        if child.poll() is not None or time.monotonic() > deadline:
            stop(child)
            raise AssertionError(f"QEMU did not start spinning (exit code {child.returncode})")
        time.sleep(0.1)
    return child


def settled_time(peer: Any, selector: str, span: int = 60) -> float:
    """The time of the next-to-newest sample of ``selector`` (one series) in a backend.

    The backend has stored a later scrape or push since, so every series of that one is
    queryable: queries evaluated there (``time=``) all read the samples of one tick, whatever
    arrives while they run, unlike queries at "now" that may straddle a new scrape.
    """
    data = peer.api("query", {"query": f"{selector}[{span}s]", "time": f"{time.time():.3f}"})
    (series,) = data["result"]
    values = series["values"]
    assert len(values) >= 2, f"{selector}: {values}"
    return float(values[-2][0])


def stop(child: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class KeplerHost:
    """The host and the agent; a context manager that releases all it started."""

    def __init__(
        self,
        levels: list[str] | dict[str, list[str]],
        otlp_url: str = "",
        *,
        acpi_watts: float | None = None,
        carbon_intensity: float | None = None,
        otlp_interval: str | None = None,
    ) -> None:
        """``levels``: the attribution's levels; or pipeline name -> levels, for several
        pipelines (``metrics/<name>``), each with its attribution and pull endpoint.
        ``acpi_watts``: an ACPI power meter at that power instead of the Redfish BMC;
        ``carbon_intensity``: the carbon processor with that static intensity (gCO2e/kWh);
        ``otlp_interval``: push at most this often (the OTLP exporter's ``interval``)."""
        self.pipelines = levels if isinstance(levels, dict) else {"": levels}
        self.otlp_url = otlp_url
        self.acpi_watts = acpi_watts
        self.carbon_intensity = carbon_intensity
        self.otlp_interval = otlp_interval
        self.ports = {name: free_port() for name in self.pipelines}
        self.port = next(iter(self.ports.values()))
        self.pod_uid = str(uuid.uuid4())
        self.container_id = container_id(self.pod_uid, CONTAINER)
        self.tmp = Path(tempfile.mkdtemp(prefix="otel-kepler-kepler-"))
        self.sysfs = self.tmp / "sys"
        self.rapl = RaplTree(self.sysfs)
        self.rapl.add_socket(dram=True)
        self.nvml = FakeNvml(self.tmp / "nvml-state")
        self.gpu = self.nvml.add_gpu(power_mw=int(GPU_W * 1000))
        # The hardware runs in a child process: the test's own work (parsing large query
        # answers) must not hold back the counters it checks against.
        forked = multiprocessing.get_context("fork")
        self._stop = forked.Event()
        self._driver = forked.Process(target=self._drive, daemon=True)
        self._children: list[subprocess.Popen[bytes]] = []
        self._cgroups: Path | None = None
        self._pod_slice: Path | None = None
        self._kube: KubeServer | None = None
        self._bmc: Server | None = None
        self.agent: subprocess.Popen[str] | None = None
        self.burner_pid = self.qemu_pid = 0

    def scrape(self, pipeline: str = "") -> str:
        port = self.ports[pipeline] if pipeline else self.port
        status, body = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200, status
        return body.decode()

    # -- setup -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self) -> None:
        mount = cgroup_mount("cgroup2", "")
        assert mount is not None, "no cgroup v2 hierarchy mounted"
        self._cgroups = mount / f"otel-kepler-kepler-{os.getpid()}"
        self._pod_slice = (
            self._cgroups
            / "kubepods.slice/kubepods-besteffort.slice"
            / f"kubepods-besteffort-pod{self.pod_uid.replace('-', '_')}.slice"
        )
        scope = self._pod_slice / f"cri-containerd-{self.container_id}.scope"
        scope.mkdir(parents=True)
        burner = subprocess.Popen([sys.executable, "-c", BURN])
        self._children.append(burner)
        self.burner_pid = burner.pid
        (scope / "cgroup.procs").write_text(str(burner.pid))
        qemu = start_qemu(self.tmp)
        self._children.append(qemu)
        self.qemu_pid = qemu.pid
        self.gpu.run(burner.pid)
        self.nvml.write()
        self._kube = KubeServer(make_self_signed_cert(self.tmp / "tls"), kubelet_node=NODE)
        self._kube.start()
        pod = make_pod(POD, NAMESPACE, NODE, containers=(CONTAINER,), uid=self.pod_uid)
        self._kube.add_pod(pod)
        if self.acpi_watts is None:
            write_legacy_bmc(self.tmp / "bmc", PLATFORM_W)
            self._bmc = static_bmc(self.tmp / "bmc", self.tmp / "bmc.log")
            self._bmc.start()
        else:
            SysfsTree(self.sysfs).power_meter(watts=self.acpi_watts)
        self._driver.start()
        config = self.tmp / "agent.yaml"
        config.write_text(yaml.safe_dump(self._config()))
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": str(build("full")),
            "FAKE_NVML_STATE": str(self.nvml.path),
        }
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "otel_kepler.cli", "run", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _config(self) -> dict[str, object]:
        assert self._kube is not None
        receivers: dict[str, object] = {
            "rapl": {},
            "procfs": {},
            "nvml": {"required": True, "idle_watts": GPU_IDLE_W},
        }
        if self._bmc is not None:
            receivers["redfish"] = {"endpoint": self._bmc.endpoint, "poll_interval": "200ms"}
        else:
            receivers["acpi"] = {}
        kubeconfig = self.tmp / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "test",
                    "clusters": [
                        {
                            "name": "test",
                            "cluster": {
                                "server": self._kube.url,
                                "certificate-authority": str(self._kube.tls.cert_file),
                            },
                        }
                    ],
                    "users": [{"name": "agent", "user": {"token": self._kube.token}}],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "agent"}}],
                }
            )
        )
        processors: dict[str, object] = {
            "k8sattributes": {
                "source": "apiserver",
                "auth_type": "kubeConfig",
                "kubeconfig": str(kubeconfig),
            }
        }
        exporters: dict[str, object] = {}
        pipelines: dict[str, dict[str, list[str]]] = {}
        carbon = []
        if self.carbon_intensity is not None:
            static = {"intensity": self.carbon_intensity, "region": "test"}
            processors["carbon"] = {"providers": ["static"], "static": static}
            carbon = ["carbon"]
        for name, levels in self.pipelines.items():
            suffix = f"/{name}" if name else ""
            processors[f"attribution{suffix}"] = {"levels": levels}
            exporters[f"prometheus{suffix}"] = {"endpoint": f"127.0.0.1:{self.ports[name]}"}
            pipelines[f"metrics{suffix}"] = {
                "receivers": list(receivers),
                "processors": ["k8sattributes", f"attribution{suffix}", *carbon],
                "exporters": [f"prometheus{suffix}"],
            }
        if self.otlp_url:
            otlp = {"metrics_endpoint": self.otlp_url}
            if self.otlp_interval is not None:
                otlp["interval"] = self.otlp_interval
            exporters["otlphttp"] = otlp
            next(iter(pipelines.values()))["exporters"].append("otlphttp")
        return {
            "host": {"sysfs": str(self.sysfs), "node_name": NODE},
            "receivers": receivers,
            "processors": processors,
            "exporters": exporters,
            "service": {"interval": "1s", "pipelines": pipelines},
        }

    def _drive(self) -> None:
        """The hardware: counters advance at the fixtures' power; the GPU samples its process."""
        last = time.monotonic()
        while not self._stop.wait(0.05):
            now = time.monotonic()
            self.rapl.advance_all({"package": PACKAGE_W, "dram": DRAM_W}, now - last)
            self.gpu.energy_mj += round(GPU_W * (now - last) * 1000)
            sample = (self.burner_pid, int(time.time() * 1e6), 80, 10, 0, 0)
            self.gpu.samples = [*self.gpu.samples[-19:], sample]
            self.nvml.write()
            last = now

    def run_in_container(self, seconds: float) -> tuple[subprocess.Popen[bytes], str]:
        """A process in a new container of the pod that burns CPU for ``seconds`` and ends;
        returns it and the container's id."""
        assert self._pod_slice is not None
        cid = uuid.uuid4().hex + uuid.uuid4().hex
        scope = self._pod_slice / f"cri-containerd-{cid}.scope"
        scope.mkdir()
        # The shell moves itself into the container's cgroup, then becomes the burner (same
        # pid): the process is in its container from its first instruction of Python on.
        burn = (
            f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
        )
        script = 'echo $$ > "$1" && exec "$2" -c "$3"'
        child = subprocess.Popen(
            ["sh", "-c", script, "sh", str(scope / "cgroup.procs"), sys.executable, burn]
        )
        self._children.append(child)
        return child, cid

    def wait_for(self, *needles: str, timeout: float = 60.0, pipeline: str = "") -> str:
        """The pull endpoint's text once every needle is in it (the agent still running)."""
        deadline = time.monotonic() + timeout
        body = ""
        while time.monotonic() < deadline:
            assert self.agent is not None
            if self.agent.poll() is not None:
                _, err = self.agent.communicate()
                raise AssertionError(f"the agent exited {self.agent.returncode}: {err[-3000:]}")
            try:
                body = self.scrape(pipeline)
            except OSError:
                body = ""
            if all(n in body for n in needles):
                return body
            time.sleep(0.5)
        missing = [n for n in needles if n not in body]
        raise AssertionError(f"not served after {timeout} s: {missing}")

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the agent (it must exit 0), the children, the API server and the driver."""
        error = ""
        if self.agent is not None:
            self.agent.terminate()
            try:
                _, err = self.agent.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                _, err = self.agent.communicate()
            if self.agent.returncode != 0:
                error = f"the agent exited {self.agent.returncode}: {err[-3000:]}"
            self.agent = None
        self._stop.set()
        if self._driver.pid is not None:
            self._driver.join(timeout=10)
            if self._driver.is_alive():
                self._driver.kill()
                self._driver.join()
        for child in self._children:
            stop(child)
        self._children = []
        if self._kube is not None:
            self._kube.stop()
            self._kube = None
        if self._bmc is not None:
            self._bmc.stop()
            self._bmc = None
        if self._cgroups is not None and self._cgroups.exists():
            remove_cgroups(self._cgroups)
        shutil.rmtree(self.tmp, ignore_errors=True)
        assert not error, error

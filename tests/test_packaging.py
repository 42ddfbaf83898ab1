"""The package as users get it: the wheel, its build requirements, the pins, the image steps.

The wheel is built with the lowest setuptools that pyproject.toml declares (fetched from
PyPI into a virtual environment of its own, without build isolation, so that exactly that
version builds it), installed with its dependencies at the pinned versions into another
clean virtual environment, and run from there.
"""

from __future__ import annotations

import ast
import email.parser
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGE_DIRS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
#: What the wheel is built from (the Dockerfile and scripts/check-wheel.sh copy the same).
BUILD_SOURCES = ["pyproject.toml", "README.md", "LICENSE", *sorted(set(PACKAGE_DIRS.values()))]
PIP_QUIET = ["--quiet", "--quiet", "--disable-pip-version-check", "--no-input"]


def run(*args: str | Path, cwd: Path | None = None, timeout: float = 240) -> str:
    """Run a command; its output, or a failure that shows it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def lowest_setuptools() -> str:
    """The lower bound of the setuptools build requirement (the only bound it may have)."""
    (req,) = (
        Requirement(r)
        for r in PYPROJECT["build-system"]["requires"]
        if canonicalize_name(Requirement(r).name) == "setuptools"
    )
    (spec,) = req.specifier
    assert spec.operator == ">=", f"setuptools needs one lower bound, got {req}"
    return spec.version


def source_modules(tree: Path) -> set[str]:
    """Every module and data file of a source tree, as a path inside the wheel."""
    found: set[str] = set()
    for package, directory in PACKAGE_DIRS.items():
        inside = package.replace(".", "/")
        for path in (tree / directory).rglob("*"):
            rel = path.relative_to(tree / directory)
            if "__pycache__" in rel.parts or not path.is_file():
                continue
            # A subdirectory mapped on its own (otel_kepler.receivers) is not otel_kepler's.
            nested = f"{package}.{rel.parts[0]}" if len(rel.parts) > 1 else ""
            if nested in PACKAGE_DIRS and PACKAGE_DIRS[nested] != directory:
                continue
            if path.suffix in (".py", ".csv"):
                found.add(f"{inside}/{rel.as_posix()}")
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel, built from a copy of the sources (in ``src`` beside the wheel's folder)
    with the lowest declared setuptools."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in BUILD_SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, src / name)
    version = lowest_setuptools()
    run(sys.executable, "-m", "venv", work / "build")
    build_py = work / "build" / "bin" / "python"
    run(build_py, "-m", "pip", "install", *PIP_QUIET, f"setuptools=={version}")
    used = run(build_py, "-c", "import setuptools; print(setuptools.__version__)").strip()
    assert Version(used) == Version(version)
    run(
        build_py, "-m", "pip", "wheel", *PIP_QUIET, "--no-deps", "--no-build-isolation",
        "--wheel-dir", work / "dist", src,
    )  # fmt: skip
    (built,) = (work / "dist").glob("otel_kepler-*.whl")
    yield built
    shutil.rmtree(work, ignore_errors=True)


def test_the_build_requirement_is_the_setuptools_that_knows_license_expressions() -> None:
    # An SPDX expression in project.license (PEP 639) is refused before setuptools 77.0.
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert Version(lowest_setuptools()) >= Version("77.0")


def test_wheel_holds_every_module_the_license_and_the_metadata(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = f"otel_kepler-{PYPROJECT['project']['version']}.dist-info"
        metadata = email.parser.Parser().parsestr(
            archive.read(f"{dist_info}/METADATA").decode("utf-8")
        )
        license_text = archive.read(f"{dist_info}/licenses/LICENSE").decode("utf-8")
    missing = sorted(source_modules(wheel.parent.parent / "src") - names)
    assert not missing, f"in the source tree but not in the wheel: {missing}"
    assert metadata["License-Expression"] == "Apache-2.0"
    assert license_text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    declared = {str(Requirement(r)) for r in PYPROJECT["project"]["dependencies"]}
    requires = {r for r in metadata.get_all("Requires-Dist") or [] if "extra ==" not in r}
    assert requires == declared
    assert set(metadata.get_all("Classifier") or []) == set(PYPROJECT["project"]["classifiers"])


def test_wheel_installs_in_a_clean_venv_and_lists_every_component(
    wheel: Path, tmp_path: Path
) -> None:
    run(sys.executable, "-m", "venv", tmp_path / "venv")
    py = tmp_path / "venv" / "bin" / "python"
    run(
        py, "-m", "pip", "install", *PIP_QUIET, "--no-compile", "--constraint", CONSTRAINTS,
        wheel, timeout=280,
    )  # fmt: skip
    where = run(py, "-c", "import otel_kepler; print(otel_kepler.__file__)", cwd=tmp_path)
    assert where.startswith(str(tmp_path / "venv")), f"otel_kepler came from {where}"
    done = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "otel-kepler"), "components"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "cannot load" not in done.stderr and "broken plugin" not in done.stdout, done.stderr
    listed: dict[str, set[str]] = {}
    kind = ""
    for line in done.stdout.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            kind = line[:-1]
        elif line.strip():
            listed.setdefault(kind, set()).add(line.split()[0])
    declared = {
        group.rsplit(".", 1)[1]: set(entries)
        for group, entries in PYPROJECT["project"]["entry-points"].items()
    }
    assert listed == declared


def test_constraints_pin_every_runtime_dependency_within_its_declared_range() -> None:
    pins: dict[str, Version] = {}
    for number, line in enumerate(CONSTRAINTS.read_text(encoding="utf-8").splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"{CONSTRAINTS.name} line {number}: not name==version: {line!r}"
        pins[canonicalize_name(match[1])] = Version(match[2])
    for dependency in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dependency)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in {CONSTRAINTS.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{CONSTRAINTS.name} pins {req.name}=={pins[name]}, outside {req.specifier}"
        )


def _imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import, lazy ones inside functions included, except under TYPE_CHECKING."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        todo.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the project it imports (its own parent packages left out)."""
    modules: dict[str, tuple[Path, bool]] = {}
    for package, directory in PACKAGE_DIRS.items():
        for path in (ROOT / directory).rglob("*.py"):
            parts = list(path.relative_to(ROOT / directory).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join([package, *(parts[:-1] if is_package else parts)])
            modules.setdefault(name, (path, is_package))
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                up = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {
            t for t in targets if t in modules and t != name and not name.startswith(t + ".")
        }
    return graph


def test_no_module_imports_itself_back_through_others() -> None:
    graph = import_graph()
    assert "otel_kepler.processors.carbon.config" in graph
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_image_copies_what_the_wheel_is_built_from_and_installs_the_pins() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    kept = {
        line[1:].strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    copied: list[str] = []
    for line in dockerfile.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            copied.extend(w.rstrip("/") for w in words[1:-1])
    for source in copied:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
        assert source.split("/")[0] in kept, f"Dockerfile copies {source}: .dockerignore drops it"
    assert set(BUILD_SOURCES) <= set(copied), set(BUILD_SOURCES) - set(copied)
    assert "requirements/constraints.txt" in copied
    commands = dockerfile.replace("\\\n", " ")  # continuation lines joined
    assert re.search(r"pip install [^&]*--constraint \S*constraints\.txt", commands)


def test_typecheck_follows_the_package_dir_mapping(tmp_path: Path) -> None:
    """mypy sees a mapped directory as the package it is installed as, in both directions,
    and the report names the source files."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "typecheck.py", tmp_path / "scripts")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools.package-dir]\n"otel_kepler" = "otel_kepler"\n'
        '"otel_kepler.plugins" = "plugins"\n\n'
        "[tool.mypy]\nstrict = true\nignore_missing_imports = true\n"
    )
    for directory in ("otel_kepler", "plugins"):
        (tmp_path / directory).mkdir()
        (tmp_path / directory / "__init__.py").write_text("")
    (tmp_path / "otel_kepler" / "core.py").write_text(
        "def double(x: int) -> int:\n    return 2 * x\n"
    )
    (tmp_path / "plugins" / "use.py").write_text(
        "from otel_kepler.core import double\n\nVALUE: str = double(2)\n"
    )
    (tmp_path / "otel_kepler" / "wire.py").write_text(
        "from otel_kepler.plugins.use import VALUE\n\nN: int = VALUE\n"
    )
    done = subprocess.run(
        [sys.executable, str(tmp_path / "scripts" / "typecheck.py"), "--no-incremental"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout
    assert done.stdout.splitlines() == [
        "plugins/use.py:3: error: Incompatible types in assignment (expression has type "
        '"int", variable has type "str")  [assignment]',
        "otel_kepler/wire.py:3: error: Incompatible types in assignment (expression has type "
        '"str", variable has type "int")  [assignment]',
        "Found 2 errors in 2 files (checked 5 source files)",
    ]


def test_readme_lists_every_component_type() -> None:
    """The README's component table names every type the entry points declare, no other."""
    listed: dict[str, set[str]] = {}
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] in ("receiver", "processor", "exporter"):
            listed.setdefault(cells[0] + "s", set()).update(re.findall(r"`([a-z0-9_]+)`", cells[1]))
    declared = {
        group.rsplit(".", 1)[1]: set(entries)
        for group, entries in PYPROJECT["project"]["entry-points"].items()
    }
    assert listed == declared


#: Imported by the agent but installed with the operating system, not from PyPI.
SYSTEM_MODULES = {"bcc"}


def _third_party_imports() -> dict[str, set[str]]:
    """Module imported -> the files that import it, for every import outside the project."""
    found: dict[str, set[str]] = {}
    for directory in set(PACKAGE_DIRS.values()):
        for path in (ROOT / directory).rglob("*.py"):
            for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom):
                    names = [node.module] if node.module and not node.level else []
                else:
                    names = [alias.name for alias in node.names]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("otel_kepler",):
                        found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_package_the_agent_imports_is_a_declared_dependency() -> None:
    owners: dict[str, str] = {}  # a file's normalised path -> its distribution
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or []:
            if file.suffix in (".py", ".so"):
                owners[os.path.normpath(str(dist.locate_file(file)))] = name
    project = PYPROJECT["project"]
    allowed = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    optional = {
        canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["models"]
    }
    undeclared: list[str] = []
    for module, files in sorted(_third_party_imports().items()):
        if module.split(".")[0] in SYSTEM_MODULES:
            continue
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"{module} (imported by {sorted(files)}) is not installed"
        if spec.origin:
            owner = owners.get(os.path.normpath(spec.origin), "?")
        else:  # a namespace package (google.rpc): whoever installed the files in it
            where = {os.path.normpath(p) for p in spec.submodule_search_locations or []}
            owner = next((o for f, o in owners.items() if os.path.dirname(f) in where), "?")
        if owner not in allowed | optional:
            undeclared.append(f"{module} from {owner}, imported by {', '.join(sorted(files))}")
    assert not undeclared, "imported but not declared in project.dependencies:\n" + "\n".join(
        undeclared
    )

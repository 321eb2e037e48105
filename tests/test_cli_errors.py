"""Every failure the `shepherd` command can reach: its documented exit code and ONE `error:` line on stderr.

Each test runs the real CLI in a subprocess, in a temporary folder with a clean environment, so no
shepherd.yaml, SHEPHERD_* variable or state directory of the developer's is picked up. Branches
tested elsewhere through the CLI: 2/42/40 (missing checkpoint) in test_build_cli.py, 21 for a
missing SQLite history in test_history_cli.py, 12/13/15 against a real server in test_local_triton.py.
The probe errors (50-54) of `shepherd tick` belong with the reconciler's tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from builders.errors import InvalidModelName, SourceError
from builders.repository import ModelRepository
from control_plane.errors import (
    ConfigError,
    InvalidTransition,
    PortInUse,
    RepositoryMissing,
    StoreError,
    TritonBinaryMissing,
    TritonNotRunning,
    TritonStartFailed,
    TritonUnreachable,
)
from control_plane.local_triton import LocalTriton, find_installation, free_ports
from shepherd_errors import ShepherdError
from tests.conftest import publish_scale

ROOT = Path(__file__).resolve().parent.parent

# `main` with a bug planted in `shepherd status`: what an unexpected exception looks like.
BUGGY = """
import sys
from control_plane.cli import history_cmd, main
def open_store(db, config=None):
    raise RuntimeError("planted bug")
history_cmd.open_store = open_store
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    folder = tmp_path / "cwd"
    folder.mkdir()
    return folder


def shepherd(
    cwd: Path, *args: str, runner: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHEPHERD_")}
    clean.update(HOME=str(cwd), SHEPHERD_STATE_DIR=str(cwd / "state"), PYTHONPATH=str(ROOT))
    clean.update(env or {})
    command = [sys.executable, "-c", runner] if runner else [sys.executable, "-m", "control_plane.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=clean)


def fails_with(run: subprocess.CompletedProcess[str], error: type[ShepherdError] | int, *words: str) -> str:
    """Assert the exit code, one `error:` line on stderr, no traceback; return that line."""
    code = error if isinstance(error, int) else error.exit_code
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def closed_port() -> int:
    return free_ports(1)[0]


def test_usage_errors_exit_2(cwd: Path) -> None:
    fails_with(shepherd(cwd, "status", "--bogus"), 2, "--bogus", "--help")
    fails_with(shepherd(cwd, "pin", "m"), 2, "--clear")  # typer.BadParameter raised by the command
    fails_with(shepherd(cwd, "triton", "stop", "--http-port", "70000"), 2, "--http-port")
    bare = shepherd(cwd)  # no command: the help on stdout, still a usage error
    assert bare.returncode == 2 and "Usage" in bare.stdout and bare.stderr == ""


def test_tritonserver_missing_exits_11(cwd: Path) -> None:
    fake = cwd / "fake" / "pytriton"  # a pytriton package without the server inside
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    run = shepherd(
        cwd,
        *("triton", "start", "--repo", str(cwd), "--http-port", str(closed_port())),
        env={"PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT)])},
    )
    fails_with(run, TritonBinaryMissing, "is missing")


def test_port_in_use_exits_12(cwd: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        run = shepherd(cwd, "triton", "start", "--repo", str(cwd), "--http-port", str(busy))
    fails_with(run, PortInUse, str(busy))


def test_repository_missing_exits_13(cwd: Path) -> None:
    fails_with(shepherd(cwd, "triton", "start", "--repo", str(cwd / "absent")), RepositoryMissing, "not found")


def test_start_failure_is_one_line_exits_14(cwd: Path) -> None:
    try:
        find_installation()
    except TritonBinaryMissing:
        pytest.skip("nvidia-pytriton is not installed")
    http, grpc, metrics = free_ports(3)
    ports = ("--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics))
    run = shepherd(cwd, "triton", "start", "--repo", str(cwd), *ports, "--timeout", "0")
    fails_with(run, TritonStartFailed, "not ready after 0 s", "tritonserver.log")  # the log's tail stays out


def test_no_server_exits_15(cwd: Path) -> None:
    port = str(closed_port())
    fails_with(shepherd(cwd, "triton", "stop", "--http-port", port), TritonNotRunning, "no tritonserver recorded")
    fails_with(shepherd(cwd, "triton", "status", "--http-port", port), TritonNotRunning, "no Triton answers")


def test_unreachable_triton_exits_16(cwd: Path, not_triton: int, repo: ModelRepository, tmp_path: Path) -> None:
    run = shepherd(cwd, "triton", "status", "--http-port", str(not_triton))
    fails_with(run, TritonUnreachable, "not with Triton's repository index")
    publish_scale(repo, tmp_path, "scale", 2.0)
    where = ("--repo", str(repo.root), "--db", f"sqlite:///{cwd / 'history.db'}")
    closed = ("--triton-grpc", f"127.0.0.1:{closed_port()}")
    fails_with(shepherd(cwd, "promote", "scale", "1", *where, *closed), TritonUnreachable, "127.0.0.1")


def test_bad_settings_exit_20(cwd: Path) -> None:
    files = {
        "malformed.yaml": "defaults: [1\n",  # a multi-line YAML error, still one line
        "unknown.yaml": "max_error_rte: 0.5\n",
        "policy.yaml": "defaults:\n  max_error_rate: -1\n",
        "binary.yaml": b"\xff\xfe\x00",
    }
    for name, text in files.items():
        path = cwd / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    fails_with(shepherd(cwd, "tick", "--config", "malformed.yaml"), ConfigError, "not valid YAML")
    fails_with(shepherd(cwd, "tick", "--config", "unknown.yaml"), ConfigError, "max_error_rte", "unknown key")
    fails_with(shepherd(cwd, "tick", "--config", "policy.yaml"), ConfigError, "defaults.max_error_rate")
    fails_with(shepherd(cwd, "tick", "--config", "binary.yaml"), ConfigError, "not UTF-8")
    fails_with(shepherd(cwd, "tick", "--config", "absent.yaml"), ConfigError, "not found")
    fails_with(shepherd(cwd, "tick", "--triton-grpc", "no-port-here"), ConfigError, "HOST:PORT")


def test_database_errors_exit_21(cwd: Path) -> None:
    closed = f"postgresql+psycopg://nobody@127.0.0.1:{closed_port()}/x"
    fails_with(shepherd(cwd, "status", "--db", closed), StoreError, "127.0.0.1")
    fails_with(shepherd(cwd, "status", "--db", "not a url"), StoreError)
    missing_dir = f"sqlite:///{cwd / 'absent' / 'history.db'}"  # tick creates a history, not a folder
    fails_with(shepherd(cwd, "tick", "--db", missing_dir, "--repo", str(cwd)), StoreError, "history.db")


@pytest.mark.triton
def test_invalid_transition_exits_22(cwd: Path, repo: ModelRepository, tmp_path: Path, triton: LocalTriton) -> None:
    publish_scale(repo, tmp_path, "scale", 2.0)  # discovered on first sight (through Triton's index): not promotable
    where = ("--repo", str(repo.root), "--db", f"sqlite:///{cwd / 'history.db'}")
    server = ("--triton-grpc", triton.state.grpc_url, "--triton-metrics", triton.state.metrics_url)
    fails_with(shepherd(cwd, "promote", "scale", "1", *where, *server), InvalidTransition, "discovered")


def test_bad_model_name_exits_31(cwd: Path) -> None:
    build = ("build", "ranker", "--factory", "builders.ranker:example_ranker", "--weights", "unused.pt")
    run = shepherd(cwd, *build, "--repo", str(cwd / "repo"), "--name", "../escape")
    fails_with(run, InvalidModelName, "../escape")
    with_json = shepherd(cwd, *build, "--repo", str(cwd / "repo"), "--name", ".hidden", "--json")
    fails_with(with_json, InvalidModelName, "hidden")  # stdout holds the JSON, stderr still the one line
    assert '"error_type": "InvalidModelName"' in with_json.stdout


def test_unreadable_checkpoint_exits_40(cwd: Path) -> None:
    checkpoint = cwd / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{")
    run = shepherd(cwd, "build", "intent", "--checkpoint", str(checkpoint), "--repo", str(cwd / "repo"), "--json")
    fails_with(run, SourceError, "config.json does not parse")


def test_a_bug_is_one_line_unless_debugging(cwd: Path) -> None:
    fails_with(shepherd(cwd, "status", runner=BUGGY), 1, "RuntimeError: planted bug", "bug", "SHEPHERD_DEBUG=1")
    debugging = shepherd(cwd, "status", runner=BUGGY, env={"SHEPHERD_DEBUG": "1"})
    assert debugging.returncode == 1 and "Traceback" in debugging.stderr
    assert debugging.stderr.splitlines()[-1].startswith("error: unexpected RuntimeError")

"""Starting and stopping the local fleet's processes, and knowing which ones are ours.

Why each part runs in its own session (process group): a Triton forks one Python stub per loaded
model, and stopping the group ends the stubs with it; a SIGKILL of the group is how a test kills a
replica the hard way. Why a "marker": pids are reused, so before a signal goes out, the process's
command line must still name a path of this fleet's state directory (its config file, its backend
directory). A recycled pid never gets our signal.

Every part starts with an environment built from nothing (as `local_triton` does for Triton):
HAProxy and Prometheus need no variable of shepherd's, so none of its secrets reach them; a
replica's readiness check gets the repository API key alone (it reads the index).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from control_plane.errors import FleetStartFailed, FleetToolMissing
from control_plane.local_triton import SYSTEM_PATH, group_processes

INSTALL_HINT = "install them with `apt-get install -y haproxy prometheus` (or `make system-deps`)"
_PASSED = ("LANG", "LC_ALL", "TZ", "TMPDIR")
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def find_tools(names: Sequence[str]) -> dict[str, Path]:
    """The absolute path of each tool on PATH; FleetToolMissing naming every missing one."""
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        # Debian puts haproxy in /usr/sbin, which a normal user's PATH often lacks: say so rather than
        # reach past PATH (PATH decides which binary runs, here as everywhere else).
        hidden = [path for path in (_in_sbin(name) for name in missing) if path]
        where = f"; installed as {', '.join(hidden)}, which is not on PATH" if hidden else ""
        raise FleetToolMissing(
            f"{' and '.join(missing)} not found on PATH (the local fleet runs HAProxy and Prometheus): "
            f"{INSTALL_HINT}{where}"
        )
    return {name: Path(path) for name, path in found.items() if path is not None}


def _in_sbin(name: str) -> str | None:
    return next((str(Path(d) / name) for d in _SBIN if (Path(d) / name).is_file()), None)


def clean_env() -> dict[str, str]:
    """The system PATH and a few harmless locale variables, nothing else."""
    env = {name: os.environ[name] for name in _PASSED if os.environ.get(name)}
    env["PATH"] = os.pathsep.join(SYSTEM_PATH)
    return env


def spawn(
    command: Sequence[str], log_file: Path, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `command` in its own session, its stdout and stderr in `log_file` (begun anew: an error
    quoted from its tail is this start's, not an earlier fleet's). `env`: variables added to the clean
    environment (only what that part needs, e.g. the readiness check's key)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "wb") as log:
        try:
            return subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**clean_env(), **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise FleetStartFailed(f"cannot run {command[0]}: {exc}") from exc


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


def start_failed(what: str, log_file: Path) -> FleetStartFailed:
    """One line that quotes the log's last error-looking line and names the log; the tail below it."""
    tail = log_tail(log_file)
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    errors = [line for line in lines if any(word in line.lower() for word in ("error", "alert", "fatal", "err="))]
    last = (errors or lines or ["(empty log)"])[-1]
    return FleetStartFailed(
        f"{what}: {last} (log: {log_file})" + (f"\nlast lines of the log:\n{tail}" if lines else "")
    )


def wait_until(
    ready: Callable[[], bool], *, process: subprocess.Popen[bytes], what: str, log_file: Path, timeout: float
) -> None:
    """Poll `ready` until it holds; FleetStartFailed (with the log) if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise start_failed(f"{what} exited with code {process.returncode} during start", log_file)
        if ready():
            return
        time.sleep(0.1)
    raise start_failed(f"{what} not ready after {timeout:.0f} s", log_file)


def owned(pid: int, marker: str) -> bool:
    """True when `pid` is alive (not a zombie) and its command line contains `marker` (a path of ours)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline and stat.rsplit(")", 1)[1].split()[0] != "Z"


def reap(pid: int) -> None:
    """Collect the exit status when the process is our own child, so it leaves no zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_groups_gone(pgids: Iterable[int], timeout: float) -> list[int]:
    """Wait until no process of these groups is left; the groups that still have one."""
    groups = list(pgids)
    pending = groups
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        for pgid in pending:
            reap(pgid)
        pending = [pgid for pgid in pending if group_processes(pgid)]
    for pgid in groups:  # a leader that turned zombie between the reap and the look
        reap(pgid)
    return pending


def stop_groups(pgids: Sequence[int], *, timeout: float = 20.0) -> list[int]:
    """SIGTERM every group at once (Triton unloads gracefully), SIGKILL what is left after `timeout`.

    Returns the groups that still had a process after the SIGKILL (none, unless the kernel is stuck).
    """
    for pgid in pgids:
        signal_group(pgid, signal.SIGTERM)
    left = wait_groups_gone(pgids, timeout)
    for pgid in left:
        signal_group(pgid, signal.SIGKILL)
    return wait_groups_gone(left, 5.0)

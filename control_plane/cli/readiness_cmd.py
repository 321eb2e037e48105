"""`shepherd readiness`: the readiness check of one Triton replica, over HTTP, for a load balancer or the kubelet.

    shepherd readiness --repo /models --triton-grpc 127.0.0.1:8001 --listen 0.0.0.0:8003

`GET /ready` answers 200 only while the replica serves every model of the serving manifest that
shepherd writes into the repository (fail-open: without a usable manifest, ready when Triton is);
`GET /live` 200 while this process runs. The rules: control_plane/readiness.py, docs/fleet.md
"Readiness". Triton's repository-API key and gRPC TLS come from the same settings as the rest of
shepherd (SHEPHERD_TRITON_API_KEY or `triton_api_key_env`, `triton_tls` / SHEPHERD_TRITON_TLS_*;
`--config` or SHEPHERD_CONFIG or ./shepherd.yaml), or the key from `--admin-key-file`.
Exit codes: 13 the repository does not exist, 12 the listen address is taken, 20 a bad option or
setting (an unreadable key file included); it runs until SIGTERM or SIGINT (exit 0).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from control_plane.cli.rollout_cmd import Config
from control_plane.errors import ConfigError, RepositoryMissing
from control_plane.fleet import join_host_port, split_host_port
from control_plane.settings import load_settings

MAX_KEY_BYTES = 4096


def readiness(
    repo: Annotated[
        Path, typer.Option("--repo", help="The model repository the replica serves (the serving manifest is in it).")
    ],
    triton_grpc: Annotated[
        str, typer.Option("--triton-grpc", metavar="HOST:PORT", help="The replica's own Triton gRPC address.")
    ] = "127.0.0.1:8001",
    listen: Annotated[
        str,
        typer.Option("--listen", metavar="HOST:PORT", help="Where to answer /ready and /live (0.0.0.0:8003 in a pod)."),
    ] = "127.0.0.1:8003",
    admin_key_file: Annotated[
        Path | None,
        typer.Option(
            "--admin-key-file",
            help="File holding the key of Triton's repository API (default: the settings' key, SHEPHERD_TRITON_API_KEY).",
        ),
    ] = None,
    config: Config = None,
    pid_file: Annotated[
        Path | None, typer.Option("--pid-file", help="Write this process' pid here once it listens (removed on exit).")
    ] = None,
) -> None:
    """Answer GET /ready (200 or 503, JSON: ready, reason, missing) for one Triton replica, and GET /live.

    Ready: the replica serves every model of the serving manifest shepherd writes into the repository;
    without a usable manifest, or when Triton refuses its index, ready when Triton is (fail-open).
    Exit codes: 12 the listen address is taken, 13 no repository, 20 a bad option or setting.
    """
    from control_plane import readiness as check  # tritonclient's gRPC loads only for this command

    if not repo.is_dir():
        raise RepositoryMissing(f"--repo: model repository not found: {repo}")
    host, port = split_host_port(listen)
    split_host_port(triton_grpc)  # a ConfigError now rather than an unready replica later
    settings = load_settings(config)
    key = _read_key(admin_key_file) if admin_key_file is not None else settings.triton_api_key
    checker = check.ReadinessChecker(repo.resolve(), triton_grpc, api_key=key, tls=settings.triton_tls)
    server = check.serve(checker, host, port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            stop.set()
            threading.Thread(target=server.shutdown, daemon=True).start()  # shutdown() waits for serve_forever

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if pid_file is not None:
            _write_pid(pid_file)
        print(
            f"shepherd readiness: http://{join_host_port(host, port)}/ready for Triton {triton_grpc} (repository "
            f"{repo.resolve()}, key {'set' if key else 'none'}, tls {'on' if settings.triton_tls else 'off'})",
            file=sys.stderr,
            flush=True,
        )
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        checker.close()
        if pid_file is not None:
            with contextlib.suppress(OSError):
                pid_file.unlink()


def _read_key(path: Path) -> str:
    """The key in `path`, surrounding whitespace removed; ConfigError naming the file (never its content)."""
    try:
        raw = path.read_bytes()[: MAX_KEY_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"--admin-key-file: cannot read {path}: {exc.strerror or exc}") from exc
    key = raw.decode("utf-8", errors="replace").strip()
    if not key or len(raw) > MAX_KEY_BYTES or any(c.isspace() for c in key):
        raise ConfigError(f"--admin-key-file: {path} holds no key (one word of at most {MAX_KEY_BYTES} bytes)")
    return key


def _write_pid(path: Path) -> None:
    try:
        temporary = path.with_name(f"{path.name}.tmp")
        temporary.write_text(f"{os.getpid()}\n")
        os.replace(temporary, path)
    except OSError as exc:
        raise ConfigError(f"--pid-file: cannot write {path}: {exc.strerror or exc}") from exc

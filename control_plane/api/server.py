"""Running the API: uvicorn on a socket bound first, in a thread, beside the scheduler when asked.

Why the socket is bound here: a taken port or a bad address is then a clear ConfigError before
anything starts, and `--listen 127.0.0.1:0` gets a free port that is known (and printed) at once.
Why uvicorn runs in a thread: the main thread keeps the signals, for the scheduler's own
SIGINT/SIGTERM handling (`scheduler.run_forever`, with its leader election) or, with the API
alone, for a plain wait; either way the API stops once the main thread is done.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from control_plane.errors import ConfigError

log = logging.getLogger("shepherd.api")
START_TIMEOUT_S = 15.0


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:8080` for IPv6) into its parts; a ConfigError for anything else."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8080 or 0.0.0.0:8080")
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


@contextmanager
def serving(app: FastAPI, listen: str) -> Iterator[str]:
    """Serve `app` on `listen` in a thread while the block runs; yields the URL it answers at."""
    host, port = parse_listen(listen)
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        host=host,
        port=bound_port,
        log_config=None,  # our handlers (logs.configure_logging) format uvicorn's lines too
        loop="asyncio",
        http="h11",
        ws="none",
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="shepherd-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        sock.close()
        raise ConfigError(f"the API did not start on {host}:{bound_port} (see the log above)")
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound_port}"
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def wait_for_signal(max_seconds: float | None) -> None:
    """Block until SIGINT/SIGTERM (or `max_seconds`)."""
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait(timeout=max_seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(app: FastAPI, listen: str, *, main: Callable[[], None], announce: Callable[[str], None]) -> None:
    """Serve `app` on `listen` while `main` runs in this thread (the scheduler, or a wait for a signal)."""
    with serving(app, listen) as url:
        announce(url)
        main()

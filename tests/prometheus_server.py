"""A real Prometheus for tests: Debian's `prometheus` binary scraping given targets every second.

    from tests.prometheus_server import prometheus_binary, running_prometheus

    if prometheus_binary() is None:
        pytest.skip(MISSING)                        # says how to install it
    with running_prometheus(["127.0.0.1:18102", "127.0.0.1:18112"]) as url:   # "http://127.0.0.1:<port>"
        ...                                         # job "triton", scraped every 1 s

Why a real one: what a figure from Prometheus means (staleness, `increase()` extrapolation,
counter resets, the `up` series of a dead target) is Prometheus' own behaviour; a fake would only
repeat our assumptions. The block starts once Prometheus has scraped every target at least once
(Prometheus 2.x hands new targets to its scrapers after up to 5 s, its discovery update period), so
`up` exists for each target, 1 or 0. It binds 127.0.0.1 on a free port, keeps its TSDB and log in a temporary
folder (removed afterwards) and is stopped (SIGTERM, then SIGKILL) when the block ends, so no
process is left behind. A failed start raises RuntimeError with the tail of its log.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import requests

from control_plane.local_triton import free_ports

MISSING = (
    "Debian's `prometheus` binary is not installed "
    "(apt-get install -y --no-install-recommends prometheus, or `make system-deps`)"
)


def prometheus_binary() -> str | None:
    """The path of the `prometheus` binary, or None when it is not installed."""
    return shutil.which("prometheus")


def _config(targets: Sequence[str], job: str, interval: str) -> str:
    """The scrape configuration (JSON is YAML, and json.dumps quotes every target safely)."""
    scrape = {
        "job_name": job,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "static_configs": [{"targets": list(targets)}],
    }
    return json.dumps({"global": {"scrape_interval": interval}, "scrape_configs": [scrape]})


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _scraped(url: str, targets: Sequence[str]) -> bool:
    """True once Prometheus holds an `up` sample (0 or 1) for every target."""
    try:
        answer = requests.get(f"{url}/api/v1/query", params={"query": "up"}, timeout=1).json()
        seen = {item["metric"].get("instance") for item in answer["data"]["result"]}
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return False
    return set(targets) <= seen


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_prometheus(
    targets: Sequence[str], *, job: str = "triton", interval: str = "1s", timeout: float = 30.0
) -> Iterator[str]:
    """Run Prometheus scraping `targets` (host:port) as `job` every `interval`; yields its base URL."""
    binary = prometheus_binary()
    if binary is None:
        raise RuntimeError(MISSING)
    with tempfile.TemporaryDirectory(prefix="shepherd-prometheus-") as tmp:
        folder = Path(tmp)
        (folder / "prometheus.yml").write_text(_config(targets, job, interval))
        port = free_ports(1)[0]
        url = f"http://127.0.0.1:{port}"
        log_path = folder / "prometheus.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + timeout
            while not (_ready(url) and _scraped(url, targets)):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                    raise RuntimeError(
                        f"prometheus on 127.0.0.1:{port} never scraped {list(targets)}: {' | '.join(tail)}"
                    )
                time.sleep(0.1)
            yield url
        finally:
            _stop(process)

"""Prometheus over the replicas: its configuration, its command, whether it sees every replica.

Each replica's metrics port is a static target scraped every second, so a window of a few seconds
already has points. The target is written exactly as the fleet file's `metrics` address
(`127.0.0.1:PORT`), so Prometheus's `instance` label equals `Replica.metrics_instance` and a PromQL
query per instance and version maps straight back to a replica; each target also carries a
`replica` label with its name, for people reading the graphs. The storage is wiped at every `fleet
up`: old instances on other ports would only confuse per-instance queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import requests
import yaml

from control_plane.local_fleet.state import HOST
from control_plane.local_triton import Ports

JOB = "triton"


def config_text(replicas: Sequence[Ports]) -> str:
    """Replica i (named r<i>) at `127.0.0.1:<its metrics port>`."""
    data = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "static_configs": [
                    {"targets": [f"{HOST}:{ports.metrics}"], "labels": {"replica": f"r{i}"}}
                    for i, ports in enumerate(replicas)
                ],
            }
        ],
    }
    return "# Written by `shepherd fleet up`; rewritten at every start.\n" + yaml.safe_dump(data, sort_keys=False)


def command(binary: Path, config: Path, data_dir: Path, port: int) -> list[str]:
    return [
        str(binary),
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        "--storage.tsdb.retention.time=1d",
        f"--web.listen-address={HOST}:{port}",
        "--log.level=warn",
    ]


def is_ready(url: str, timeout: float = 1.0) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=timeout).ok
    except requests.RequestException:
        return False


def targets_up(url: str, timeout: float = 1.0) -> dict[str, bool] | None:
    """Each scraped instance and whether its last scrape worked; None if Prometheus does not answer."""
    try:
        response = requests.get(f"{url}/api/v1/targets", params={"state": "active"}, timeout=timeout)
        response.raise_for_status()
        targets = response.json()["data"]["activeTargets"]
        return {t["labels"]["instance"]: t["health"] == "up" for t in targets if t["labels"].get("job") == JOB}
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return None

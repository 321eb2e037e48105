"""Shared pieces of the benchmarks: timing statistics, the machine description, markdown tables.

Why one module: every benchmark reports the same way (median of a few repeats, with the spread),
so the figures in docs/benchmarks.md can be compared, and every section names the command that
produced it. Benchmarks print figures; they are not tests.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ first on the path, not the project root
    sys.path.insert(0, str(ROOT))

TOOLS = ROOT / "bench" / "tools"
PERF_ANALYZER = TOOLS / "perf_analyzer"
CUDART_LIB = TOOLS / "cudart" / "nvidia" / "cuda_runtime" / "lib"


@dataclass(frozen=True)
class Spread:
    """Median of repeated measurements with min and max, because one figure on a shared 2-core box lies."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no measurements")
        return cls(float(statistics.median(values)), float(min(values)), float(max(values)), len(values))

    def fmt(self, digits: int = 1) -> str:
        if self.n == 1:
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"

    def as_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


def percentile(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples, dtype=float), q)) if len(samples) else float("nan")


@dataclass(frozen=True)
class TimedRun:
    latencies_ms: tuple[float, ...]
    seconds: float
    rows: int

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def time_calls(call: Callable[[], Any], *, rows_per_call: int, seconds: float, warmup: int = 3) -> TimedRun:
    """Call `call` back to back for about `seconds` (at least 20 calls) after a warm-up."""
    for _ in range(warmup):
        call()
    latencies: list[float] = []
    began = time.perf_counter()
    while True:
        start = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - start) * 1000.0)
        if time.perf_counter() - began >= seconds and len(latencies) >= 20:
            break
    total = time.perf_counter() - began
    return TimedRun(tuple(latencies), total, rows_per_call * len(latencies))


def machine() -> dict[str, Any]:
    """What the figures were measured on (they mean nothing without it)."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = subprocess.run(["free", "-g"], capture_output=True, text=True, check=False).stdout.strip()

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "free_g": memory,
        "python": platform.python_version(),
        "torch": version("torch"),
        "onnxruntime": version("onnxruntime"),
        "nvidia-pytriton": version("nvidia-pytriton"),
        "tritonclient": version("tritonclient"),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(out: Path | None, name: str, data: dict[str, Any], markdown: str) -> None:
    """Print the section and, with --out, keep JSON and markdown for run_all.py."""
    print(markdown, flush=True)
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    (out / f"{name}.md").write_text(markdown)


def met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"

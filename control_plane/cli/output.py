"""Shared output helpers: tables for people, JSON for scripts, a spinner on stderr while a long wait runs."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

# `shepherd --help` ends with these (README "Exit codes" has the table with every detail).
EXIT_CODES = """Exit codes: 0 ok · 1 a bug · 2 usage (an unknown option, a bad value)

11-19 Triton: 11 tritonserver missing, 12 port in use, 13 repository missing, 14 server died or never ready,
15 no server running, 16 unreachable, 17 refused a load, 18 refused an unload, 19 its repository API wants a key

20-27: 20 bad settings, 21 database error, 22 a move the lifecycle forbids, 23 another process leads this history,
25 impossible evidence, 26 a malformed alert, 27 an unreadable golden set

30-34 repository (bad name, broken config.pbtxt or manifest.json, version exists) · 40-44 build (source,
verification, TensorRT unavailable, export, build step) · 50-54 probes (50 other, 51 metrics unreachable,
52 bad arguments, 53 malformed metrics, 54 impossible window) · 60-65 fleet (60 other, 61 DNS name resolved to
nothing, 62 HAProxy or Prometheus missing, 63 a part died during `fleet up`, 64 no local fleet, 65 the serving
manifest cannot be written) · 70 the API gave no answer (--server) · 71 the API refused the token"""

# Piped output (CI logs, `| less`) gets a wide console instead of rich's 80-column fallback.
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "160"))
console = Console(width=_WIDTH)
error_console = Console(stderr=True, width=None if sys.stderr.isatty() else _WIDTH)


def print_json(data: Any) -> None:
    """JSON on stdout, nothing else, so `--json` output pipes into jq."""
    print(json.dumps(data, indent=2, default=str))


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*["" if cell is None else str(cell) for cell in row])
    console.print(table)


def print_error(message: str, *, label: str = "error:", style: str = "bold red") -> None:
    """`error: <message>` as ONE line on stderr: no markup read from the message, no wrapping.

    A message of several lines (a server log's tail) shows its first line; the rest only with
    SHEPHERD_DEBUG=1, so scripts reading stderr always get one line per error.
    """
    first, *more = (message.strip() or "(no message)").splitlines()
    if more and not debug():
        first += f" (+{len(more)} more lines with SHEPHERD_DEBUG=1)"
    error_console.print(Text.assemble((label, style), " ", first), soft_wrap=True, highlight=False)
    if more and debug():
        error_console.print(Text("\n".join(more)), soft_wrap=True, highlight=False)


def debug() -> bool:
    """SHEPHERD_DEBUG=1: tracebacks for bugs and the full text of multi-line errors."""
    return os.environ.get("SHEPHERD_DEBUG", "") not in ("", "0")


@contextmanager
def waiting(description: str, *, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A spinner with the time elapsed on stderr while the block waits (a server start, a load, a rollout).

        with waiting("starting tritonserver") as say:
            ...
            say("loading the models")            # change the line's text

    Transient (the line goes when the block ends) and silent when stderr is not a terminal or
    `enabled` is False (`--json`), so logs and scripts see only the results.
    """
    if not enabled or not error_console.is_terminal:
        yield lambda _text: None
        return
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=error_console, transient=True
    )
    task = progress.add_task(description, total=None)
    with progress:
        yield lambda text: progress.update(task, description=text)

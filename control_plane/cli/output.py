"""Shared output helpers: tables for people, JSON for scripts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

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

"""Shared output helpers: tables for people, JSON for scripts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

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

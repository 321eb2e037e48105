"""`shepherd demo`: the main job on embedded defaults (see control_plane/demo.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Where the demo's repository, history and logs go (wiped first).")
    ] = Path(".shepherd/demo"),
    config: Annotated[Path | None, typer.Option("--config", help="shepherd.yaml with the policies.")] = None,
) -> None:
    """Build the examples, serve them on the local Triton, and roll out a good, a slow and a worse version."""
    from control_plane.demo import run_demo  # imports torch; keep `shepherd --help` fast

    if not run_demo(workdir, config=config):
        raise typer.Exit(1)

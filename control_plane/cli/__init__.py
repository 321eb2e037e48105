"""The `shepherd` command. Each sub-command group lives in its own module of this package.

Exit codes: 0 success, 1 an unexpected error, 2 a usage error (typer), and otherwise the
`exit_code` of the shepherd error raised (see control_plane.errors and builders.errors).
"""

from __future__ import annotations

import sys

import typer

from control_plane.cli import build_cmd, demo_cmd, history_cmd, rollout_cmd, triton_cmd
from control_plane.cli.output import error_console
from shepherd_errors import ShepherdError

app = typer.Typer(
    name="shepherd",
    help="Ship search and recommendation models to NVIDIA Triton without breaking production.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(triton_cmd.app, name="triton")
app.add_typer(build_cmd.app, name="build")
app.command("run")(rollout_cmd.run)
app.command("tick")(rollout_cmd.tick)
app.command("status")(history_cmd.status)
app.command("history")(history_cmd.history)
app.command("promote")(rollout_cmd.promote)
app.command("rollback")(rollout_cmd.rollback)
app.command("pin")(rollout_cmd.pin)
app.command("demo")(demo_cmd.demo)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; shepherd errors become a one-line message and their exit code."""
    try:
        code = app(args=argv, standalone_mode=False)  # a typer.Exit(N) comes back as N here
    except ShepherdError as exc:
        error_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        error_console.print("aborted")
        return 130
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The `shepherd` command. Each sub-command group lives in its own module of this package.

Exit codes: 0 success, 2 a usage error (click/typer), otherwise the `exit_code` of the shepherd
error raised (see shepherd_errors and README "Exit codes"); 1 is a bug or a pass that reported errors.
Every failure is ONE line on stderr, `error: ...`; a bug's traceback shows only with SHEPHERD_DEBUG=1.
"""

from __future__ import annotations

import sys
import traceback
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated

import typer

try:  # typer 0.2x vendors click: its usage errors are typer._click's classes, not the installed click's
    from typer._click import exceptions as click_errors
except ImportError:  # an older typer runs on click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

from control_plane.cli import (
    backtest_cmd,
    build_cmd,
    demo_cmd,
    fleet_cmd,
    history_cmd,
    readiness_cmd,
    report_cmd,
    rollout_cmd,
    serve_cmd,
    token_cmd,
    triton_cmd,
)
from control_plane.cli.output import EXIT_CODES, debug, print_error
from shepherd_errors import ShepherdError

app = typer.Typer(
    name="shepherd",
    help="Ship search and recommendation models to NVIDIA Triton without breaking production.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    epilog=EXIT_CODES,
)


def _print_version(value: bool) -> None:
    if value:
        try:
            installed = package_version("triton-shepherd")
        except PackageNotFoundError:  # run from a source tree that was never installed
            installed = "unknown (not installed)"
        typer.echo(f"shepherd {installed}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Ship search and recommendation models to NVIDIA Triton without breaking production."""


app.add_typer(triton_cmd.app, name="triton")
app.add_typer(fleet_cmd.app, name="fleet")
app.add_typer(build_cmd.app, name="build")
app.command("run")(rollout_cmd.run)
app.command("tick")(rollout_cmd.tick)
app.command("status")(history_cmd.status)
app.command("history")(history_cmd.history)
app.command("backtest")(backtest_cmd.backtest)
app.command("report")(report_cmd.report)
app.command("promote")(rollout_cmd.promote)
app.command("rollback")(rollout_cmd.rollback)
app.command("pin")(rollout_cmd.pin)
app.command("demo")(demo_cmd.demo)
app.command("serve")(serve_cmd.serve)
app.command("readiness")(readiness_cmd.readiness)
app.add_typer(token_cmd.app, name="token")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every failure becomes one `error:` line on stderr and its exit code."""
    try:
        code = app(args=argv, standalone_mode=False)  # a typer.Exit(N) comes back as N here
    except ShepherdError as exc:
        print_error(str(exc))
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print_error("aborted")
        return 130
    except getattr(click_errors, "NoArgsIsHelpError", ()) as exc:  # `shepherd` or `shepherd triton` alone
        typer.echo(exc.format_message())  # the help, on stdout
        return int(exc.exit_code)
    except click_errors.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        print_error(f"{exc.format_message()}{where}")
        return exc.exit_code
    except click_errors.ClickException as exc:
        print_error(exc.format_message())
        return exc.exit_code
    except Exception as exc:  # a bug: say so in one line; the traceback is for SHEPHERD_DEBUG=1
        if debug():
            traceback.print_exc()
        print_error(
            f"unexpected {type(exc).__name__}: {exc} - this is a bug in shepherd; "
            "SHEPHERD_DEBUG=1 shows the traceback to report"
        )
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())

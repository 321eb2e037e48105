"""A plan: steps that declare what they need and what they make, run in order, each ending with a status.

Why declarations: a step gets exactly the values it names in `needs`, passed as keyword
arguments, and hands back exactly the values it names in `makes`; nothing reaches into another
step's state. Reading a plan therefore shows the whole data flow of a build, and a plan put
together wrongly fails on the step that lacks an input, naming it, instead of somewhere later.

A failure is a status, not an exception that unwinds everything: `run_step` never raises (except
KeyboardInterrupt and SystemExit), the first FAIL stops the plan and the remaining steps are
reported SKIPPED. A step the plan decided not to run (its `skip` reason is set when the plan is
built from the options) is reported SKIPPED with that reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from builders.errors import BuilderError, BuildFailed

EARLIER_FAILURE = "an earlier step failed"


class Status(StrEnum):
    OK = "OK"
    FAIL = "FAIL"
    SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class StepResult:
    name: str
    status: Status
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": str(self.status),
            "seconds": round(self.seconds, 3),
            "figures": self.figures,
            "message": self.message,
        }


@dataclass(frozen=True)
class Done:
    """What a step hands back: the figures a person reads, and the values it declared in `makes`."""

    figures: dict[str, Any]
    made: dict[str, Any] = field(default_factory=dict)


# Called as function(context, **needs): the build's fixed inputs, then each declared input by name.
StepFunction = Callable[..., Done]


@dataclass(frozen=True)
class Step:
    """One stage of a plan: its name, its function, the values it needs and the values it makes."""

    name: str
    function: StepFunction
    needs: tuple[str, ...] = ()
    makes: tuple[str, ...] = ()
    skip: str = ""  # set when the plan is built: this step does not run, for this reason

    def skipped(self, reason: str) -> Step:
        """The same step, reported SKIPPED for `reason` instead of run."""
        return Step(self.name, self.function, self.needs, self.makes, skip=reason)


# Called with (step name, None) when a step starts and (step name, result) when it ends.
Progress = Callable[[str, StepResult | None], None]


@dataclass(frozen=True)
class PlanRun:
    """Every step's result, the values the steps made, and the error of the step that failed."""

    results: tuple[StepResult, ...]
    values: Mapping[str, Any]
    error: BuilderError | None


def run_step(
    step: Step, context: Any, values: Mapping[str, Any]
) -> tuple[StepResult, dict[str, Any], BuilderError | None]:
    """Run one step on the values made so far and never raise: every outcome becomes its status.

    A missing declared input, or a step that does not make what it declares, is a FAIL naming
    the value. A foreign error (a bug in a factory, a library failing in a way no step
    translated) is wrapped in BuildFailed, with the original as its cause, so the CLI still names
    the step and exits non-zero.
    """
    started = time.perf_counter()

    def failed(error: BuilderError) -> tuple[StepResult, dict[str, Any], BuilderError]:
        return StepResult(step.name, Status.FAIL, time.perf_counter() - started, message=str(error)), {}, error

    missing = [name for name in step.needs if name not in values]
    if missing:
        return failed(BuildFailed(f"step {step.name} needs {missing}, which no earlier step made"))
    try:
        done = step.function(context, **{name: values[name] for name in step.needs})
    except BuilderError as exc:
        return failed(exc)
    except Exception as exc:
        error = BuildFailed(f"step {step.name} failed: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return failed(error)
    if set(done.made) != set(step.makes):
        return failed(
            BuildFailed(f"step {step.name} declares it makes {list(step.makes)} but made {sorted(done.made)}")
        )
    return StepResult(step.name, Status.OK, time.perf_counter() - started, figures=done.figures), done.made, None


def run_plan(
    steps: Sequence[Step], context: Any, *, progress: Progress | None = None, given: Mapping[str, Any] | None = None
) -> PlanRun:
    """Run `steps` in order on `context`; `given` are values available before the first step."""
    values: dict[str, Any] = dict(given or {})
    results: list[StepResult] = []
    error: BuilderError | None = None
    for step in steps:
        if error is not None:
            result = StepResult(step.name, Status.SKIPPED, message=EARLIER_FAILURE)
        else:
            _notify(progress, step.name, None)
            if step.skip:
                result = StepResult(step.name, Status.SKIPPED, message=step.skip)
            else:
                result, made, error = run_step(step, context, values)
                values.update(made)
        results.append(result)
        _notify(progress, step.name, result)
    return PlanRun(tuple(results), values, error)


def _notify(progress: Progress | None, name: str, result: StepResult | None) -> None:
    if progress is not None:
        progress(name, result)

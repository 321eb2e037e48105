"""What one pass (or one manual action) did: the actions taken and the errors met, for the CLI and the tests.

Why errors are kept as shepherd errors and not strings: `shepherd tick` returns the exit code of
the first one (a probe that could not reach the metrics endpoint is 51, an unreachable Triton 16),
so a cron job or a CronJob can tell causes apart without parsing text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shepherd_errors import ShepherdError


@dataclass
class TickReport:
    actions: list[dict[str, Any]] = field(default_factory=list)
    errors: list[ShepherdError] = field(default_factory=list)

    def add(self, action: str, model: str, version: int | None = None, **details: Any) -> None:
        self.actions.append({"action": action, "model": model, "version": version, **details})

    def fail(self, error: ShepherdError) -> None:
        """Keep `error`, once: the steps of one tick meeting the same dead endpoint report it one time."""
        if not any(type(e) is type(error) and str(e) == str(error) for e in self.errors):
            self.errors.append(error)

    @property
    def exit_code(self) -> int:
        """0 when nothing went wrong, else the exit code of the first error met."""
        return self.errors[0].exit_code if self.errors else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "actions": self.actions,
            "errors": [
                {"message": str(error), "type": type(error).__name__, "exit_code": error.exit_code}
                for error in self.errors
            ],
        }

"""The API's bodies, as pydantic models: the OpenAPI schema (docs/openapi.json) is built from these.

Times are timezone-aware UTC, ISO 8601. Every error answers `ErrorBody`: the message, the shepherd
error's type and the exit code the same command returns when run locally, so `--server` keeps
the exit codes of the CLI.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from control_plane.api.tokens import NAME
from control_plane.store.models import State

Role = Literal["viewer", "operator", "admin"]
Reason = Annotated[str, Field(min_length=1, max_length=2000, description="Why; kept in the audit trail.")]


class Body(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorBody(Body):
    detail: str
    error: str = Field(description="The shepherd error's type, e.g. InvalidTransition.")
    exit_code: int = Field(description="The exit code the same command returns when run locally.")


class Health(Body):
    status: Literal["ok"]


class Ready(Body):
    status: Literal["ready"]
    schema_revision: str


class Whoami(Body):
    token_id: int
    name: str
    role: Role


class ModelStatus(Body):
    model: str
    kind: str
    stable: int | None
    candidate: int | None = Field(description="The version in preflight or canary, if any.")
    phase: str | None
    phase_since: datetime | None
    rollout_id: int | None
    pinned: int | None
    automation_paused: bool


class LastDecision(Body):
    outcome: str
    reason: str | None
    at: datetime


class VersionHistory(Body):
    model: str
    version: int
    state: State
    is_stable: bool
    quality_metric: str | None
    quality_value: float | None
    discovered_at: datetime
    state_changed_at: datetime
    retired_at: datetime | None
    reason: str | None
    time_in_canary_s: float | None
    last_decision: LastDecision | None


class Transition(Body):
    id: int
    model: str
    version: int
    from_state: str | None
    to_state: str
    at: datetime
    reason: str | None
    actor: str = Field(description="`shepherd` for the control plane, else the person (an API token's name).")
    evidence: dict[str, Any] | None


class DecisionOut(Body):
    id: int
    model: str
    version: int
    rollout_id: int | None
    at: datetime
    outcome: str
    reason: str | None
    checks: Any = Field(description="Every check of the judge with its figures.")
    policy: dict[str, Any] = Field(description="The thresholds the judge applied.")


class RolloutOut(Body):
    id: int
    model: str
    candidate: int
    stable: int | None
    phase: str
    started_at: datetime
    ended_at: datetime | None
    outcome: str | None


class RolloutStep(Body):
    step: int
    strategy: str
    started_at: datetime
    share: float = Field(description="The fleet's share of client traffic the candidate takes in this step.")
    roles: dict[str, str] = Field(description="Replica name -> canary | baseline | stable | bluegreen.")
    reason: str | None


class RolloutDetail(RolloutOut):
    steps: list[RolloutStep]


class ProbeWindow(Body):
    id: int
    model: str
    version: int
    role: str
    rollout_id: int | None
    step: int | None
    started_at: datetime
    ended_at: datetime
    requests: int | None
    errors: int | None
    failure_by_reason: dict[str, Any] | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    avg_queue_ms: float | None
    avg_compute_ms: float | None
    client_p50_ms: float | None
    client_p95_ms: float | None
    quality: float | None
    agreement: float | None
    triton_cpu_memory_bytes: int | None
    gpu_memory_bytes: int | None
    samples: list[float]
    raw: dict[str, Any]


class Replica(Body):
    name: str
    grpc: str
    metrics: str
    reachable: bool
    changed_at: datetime
    last_error: str | None


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is refused, not ignored


class ActionIn(Input):
    reason: Reason


class PinIn(Input):
    version: int = Field(ge=1, le=2**31 - 1)
    reason: Reason


class ActionError(Body):
    message: str
    type: str
    exit_code: int


class ActionResult(Body):
    """What the action did (as `shepherd promote --json` prints): actions taken and errors met."""

    actions: list[dict[str, Any]]
    errors: list[ActionError]


class TokenIn(Input):
    name: str = Field(
        pattern=f"^{NAME.pattern}$", description="The owner: the actor of every action made with it (not `shepherd`)."
    )
    role: Role


class TokenOut(Body):
    id: int
    name: str
    role: Role
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The token itself: shown this once, stored nowhere.")

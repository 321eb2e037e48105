"""The initial schema of the SQL history.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here on purpose (not imported from models.py): a later change to a closed set needs its own
# migration of the CHECK constraint, and this revision must keep creating exactly what it created.
STATES = ("discovered", "preflight", "canary", "promoted", "rolled_back", "failed", "rejected")
ROLES = ("candidate", "stable", "preflight")
DECISION_OUTCOMES = ("promote", "rollback", "reject", "wait", "fail")
ALERT_EVENTS = ("rollback", "failure", "promotion", "rejection")
ALERT_STATUSES = ("pending", "sent", "failed")
MANUAL_ACTIONS = ("promote", "rollback", "pin", "unpin")


def utc_datetime() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _one_of(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.Column("pinned_version", sa.Integer(), nullable=True),
        sa.Column("automation_paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.UniqueConstraint("name", name="uq_models_name"),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("is_stable", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("source_sha256", sa.String(64), nullable=True),
        sa.Column("quality_metric", sa.String(60), nullable=True),
        sa.Column("quality_value", sa.Float(), nullable=True),
        sa.Column("discovered_at", utc_datetime(), nullable=False),
        sa.Column("state_changed_at", utc_datetime(), nullable=False),
        sa.Column("stable_since", utc_datetime(), nullable=True),
        sa.Column("retired_at", utc_datetime(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_versions"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_versions_model_id_models", ondelete="CASCADE"),
        sa.UniqueConstraint("model_id", "version", name="uq_versions_model_id_version"),
        sa.CheckConstraint(_one_of("state", STATES), name="ck_versions_state"),
    )
    op.create_index(
        "uq_versions_one_stable",
        "versions",
        ["model_id"],
        unique=True,
        sqlite_where=sa.text("is_stable"),
        postgresql_where=sa.text("is_stable"),
    )
    op.create_index("ix_versions_state", "versions", ["state"])
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("candidate_version_id", sa.Integer(), nullable=False),
        sa.Column("stable_version_id", sa.Integer(), nullable=True),
        sa.Column("phase", sa.String(20), nullable=False),
        sa.Column("started_at", utc_datetime(), nullable=False),
        sa.Column("ended_at", utc_datetime(), nullable=True),
        sa.Column("outcome", sa.String(40), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rollouts"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_rollouts_model_id_models", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["candidate_version_id"],
            ["versions.id"],
            name="fk_rollouts_candidate_version_id_versions",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["stable_version_id"], ["versions.id"], name="fk_rollouts_stable_version_id_versions", ondelete="SET NULL"
        ),
    )
    op.create_index("ix_rollouts_model_id", "rollouts", ["model_id"])
    op.create_index(
        "uq_rollouts_one_open",
        "rollouts",
        ["candidate_version_id"],
        unique=True,
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.create_table(
        "transitions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("from_state", sa.String(20), nullable=True),
        sa.Column("to_state", sa.String(20), nullable=False),
        sa.Column("at", utc_datetime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_transitions"),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name="fk_transitions_version_id_versions", ondelete="CASCADE"
        ),
        sa.CheckConstraint(_one_of("to_state", STATES), name="ck_transitions_to_state"),
    )
    op.create_index("ix_transitions_version_id_at", "transitions", ["version_id", "at"])
    op.create_index("ix_transitions_to_state_at", "transitions", ["to_state", "at"])
    op.create_table(
        "probe_windows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("started_at", utc_datetime(), nullable=False),
        sa.Column("ended_at", utc_datetime(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=True),
        sa.Column("errors", sa.Integer(), nullable=True),
        sa.Column("failure_by_reason", sa.JSON(), nullable=True),
        sa.Column("p50_ms", sa.Float(), nullable=True),
        sa.Column("p95_ms", sa.Float(), nullable=True),
        sa.Column("p99_ms", sa.Float(), nullable=True),
        sa.Column("avg_queue_ms", sa.Float(), nullable=True),
        sa.Column("avg_compute_ms", sa.Float(), nullable=True),
        sa.Column("client_p50_ms", sa.Float(), nullable=True),
        sa.Column("client_p95_ms", sa.Float(), nullable=True),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("agreement", sa.Float(), nullable=True),
        sa.Column("triton_cpu_memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("gpu_memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("samples", sa.JSON(), nullable=True),
        sa.Column("raw", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_probe_windows"),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name="fk_probe_windows_version_id_versions", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name="fk_probe_windows_rollout_id_rollouts", ondelete="SET NULL"
        ),
        sa.CheckConstraint(_one_of("role", ROLES), name="ck_probe_windows_role"),
    )
    op.create_index("ix_probe_windows_version_id_started_at", "probe_windows", ["version_id", "started_at"])
    op.create_index("ix_probe_windows_rollout_id", "probe_windows", ["rollout_id"])
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=True),
        sa.Column("at", utc_datetime(), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_decisions"),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name="fk_decisions_version_id_versions", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name="fk_decisions_rollout_id_rollouts", ondelete="SET NULL"
        ),
        sa.CheckConstraint(_one_of("outcome", DECISION_OUTCOMES), name="ck_decisions_outcome"),
    )
    op.create_index("ix_decisions_version_id_at", "decisions", ["version_id", "at"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", utc_datetime(), nullable=False),
        sa.Column("event", sa.String(20), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(20), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
        sa.CheckConstraint(_one_of("event", ALERT_EVENTS), name="ck_alerts_event"),
        sa.CheckConstraint(_one_of("status", ALERT_STATUSES), name="ck_alerts_status"),
    )
    op.create_index("ix_alerts_status_at", "alerts", ["status", "at"])
    op.create_table(
        "manual_actions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", utc_datetime(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_manual_actions"),
        sa.CheckConstraint(_one_of("action", MANUAL_ACTIONS), name="ck_manual_actions_action"),
    )
    op.create_index("ix_manual_actions_model_at", "manual_actions", ["model", "at"])


def downgrade() -> None:
    for index, table in (
        ("ix_manual_actions_model_at", "manual_actions"),
        ("ix_alerts_status_at", "alerts"),
        ("ix_decisions_version_id_at", "decisions"),
        ("ix_probe_windows_rollout_id", "probe_windows"),
        ("ix_probe_windows_version_id_started_at", "probe_windows"),
        ("ix_transitions_to_state_at", "transitions"),
        ("ix_transitions_version_id_at", "transitions"),
        ("uq_rollouts_one_open", "rollouts"),
        ("ix_rollouts_model_id", "rollouts"),
        ("ix_versions_state", "versions"),
        ("uq_versions_one_stable", "versions"),
    ):
        op.drop_index(index, table_name=table)
    for table in (
        "manual_actions",
        "alerts",
        "decisions",
        "probe_windows",
        "transitions",
        "rollouts",
        "versions",
        "models",
    ):
        op.drop_table(table)

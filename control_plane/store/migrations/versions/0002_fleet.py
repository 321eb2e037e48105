"""The fleet: rollout steps with each replica's role, replica health, stored metric marks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def utc_datetime() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rollout_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("strategy", sa.String(20), nullable=False),
        sa.Column("started_at", utc_datetime(), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rollout_steps"),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name="fk_rollout_steps_rollout_id_rollouts", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("rollout_id", "step", name="uq_rollout_steps_rollout_id"),
        sa.CheckConstraint("strategy IN ('canary', 'bluegreen')", name="ck_rollout_steps_strategy"),
    )
    op.create_table(
        "replicas",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("grpc", sa.String(300), nullable=False),
        sa.Column("metrics", sa.String(300), nullable=False),
        sa.Column("reachable", sa.Boolean(), nullable=False),
        sa.Column("changed_at", utc_datetime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_replicas"),
    )
    op.create_table(
        "metric_marks",
        sa.Column("replica", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("taken_at", utc_datetime(), nullable=False),
        sa.Column("counters", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("replica", "model", name="pk_metric_marks"),
    )
    with op.batch_alter_table("probe_windows") as batch:
        batch.add_column(sa.Column("step", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("probe_windows") as batch:
        batch.drop_column("step")
    op.drop_table("metric_marks")
    op.drop_table("replicas")
    op.drop_table("rollout_steps")

"""Finding the rows a write or a read starts from, inside the caller's session.

Why shared: the lifecycle, the evidence log and the reads all begin with "the version `model` v`n`"
or "the open rollout of this candidate"; one query each, and one wording for "unknown".
"""

from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, aliased

from control_plane.errors import StoreError
from control_plane.store.models import ModelRow, RolloutRow, VersionRow
from control_plane.store.records import RolloutRecord


def model_row(session: Session, name: str) -> ModelRow | None:
    return session.scalars(select(ModelRow).where(ModelRow.name == name)).one_or_none()


def need_model(session: Session, name: str, *, url: str) -> ModelRow:
    row = model_row(session, name)
    if row is None:
        raise StoreError(f"unknown model {name!r} in {url}")
    return row


def version_row(session: Session, model: str, version: int) -> VersionRow | None:
    query = (
        select(VersionRow)
        .join(ModelRow, ModelRow.id == VersionRow.model_id)
        .where(ModelRow.name == model, VersionRow.version == version)
    )
    return session.scalars(query).one_or_none()


def need_version(session: Session, model: str, version: int, *, url: str) -> VersionRow:
    row = version_row(session, model, version)
    if row is None:
        raise StoreError(f"unknown version {model} v{version} in {url}")
    return row


def rollout_query() -> Select:
    """Rollouts with their model's name and the candidate's and stable's version numbers."""
    candidate, stable = aliased(VersionRow), aliased(VersionRow)
    return (
        select(RolloutRow, ModelRow.name, candidate.version, stable.version)
        .join(ModelRow, ModelRow.id == RolloutRow.model_id)
        .join(candidate, candidate.id == RolloutRow.candidate_version_id)
        .outerjoin(stable, stable.id == RolloutRow.stable_version_id)
    )


def open_rollout(session: Session, model: str, candidate: int) -> RolloutRecord | None:
    cand = aliased(VersionRow)
    query = (
        rollout_query()
        .where(ModelRow.name == model, RolloutRow.ended_at.is_(None))
        .where(RolloutRow.candidate_version_id.in_(select(cand.id).where(cand.version == candidate)))
    )
    found = session.execute(query).first()
    if found is None:
        return None
    row, name, cand_version, stable_version = found
    return RolloutRecord.from_row(row, model=name, candidate=cand_version, stable=stable_version)

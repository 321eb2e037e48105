"""The control plane's SQL history: schema (models.py), migrations, and the narrow Store API."""

from control_plane.store.models import State
from control_plane.store.records import AlertRecord, DecisionRecord, ProbeWindowRecord, RolloutRecord, VersionRecord
from control_plane.store.store import Store

__all__ = ["AlertRecord", "DecisionRecord", "ProbeWindowRecord", "RolloutRecord", "State", "Store", "VersionRecord"]

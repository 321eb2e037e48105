"""The control plane's SQL history: schema (models.py), migrations, and the narrow Store API."""

from control_plane.store.database import Database
from control_plane.store.evidence import EvidenceLog
from control_plane.store.lifecycle import Lifecycle
from control_plane.store.models import State
from control_plane.store.reads import Reads
from control_plane.store.records import (
    AlertRecord,
    Decision,
    DecisionRecord,
    ModelRecord,
    ProbeWindowRecord,
    RolloutRecord,
    StoreSnapshot,
    VersionRecord,
)
from control_plane.store.store import Store

__all__ = [
    "AlertRecord",
    "Database",
    "Decision",
    "DecisionRecord",
    "EvidenceLog",
    "Lifecycle",
    "ModelRecord",
    "ProbeWindowRecord",
    "Reads",
    "RolloutRecord",
    "State",
    "Store",
    "StoreSnapshot",
    "VersionRecord",
]

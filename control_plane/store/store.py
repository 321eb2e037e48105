"""The narrow API through which the control plane reads and writes its SQL history.

Why five parts behind one object: writes that move versions (`lifecycle`), evidence that is only
ever added (`evidence`), reads (`read`) and the fleet's steps, health and metric marks (`fleet`) change for different reasons, but share one database,
one clock and one way to report a failure (StoreError naming the URL, password masked).

    store = Store.open("sqlite:///shepherd.db")          # or postgresql+psycopg://user@host/db
    store.lifecycle.record_version("intent", 3, manifest=manifest, kind="intent")
    store.lifecycle.transition("intent", 3, State.preflight, reason="next candidate")
    picture = store.read.snapshot()
"""

from __future__ import annotations

from control_plane.clock import Clock, utc_now
from control_plane.store.database import DEFAULT_URL, Database, check_schema, make_engine
from control_plane.store.database import migrate as migrate_schema
from control_plane.store.evidence import EvidenceLog
from control_plane.store.fleet_log import FleetLog
from control_plane.store.lifecycle import Lifecycle
from control_plane.store.reads import Reads


class Store:
    """The SQL history. Open it with `Store.open(url)`; every method of its parts is one short transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.lifecycle = Lifecycle(db)
        self.evidence = EvidenceLog(db)
        self.read = Reads(db)
        self.fleet = FleetLog(db)

    @classmethod
    def open(cls, url: str = DEFAULT_URL, *, migrate: bool = True, clock: Clock = utc_now) -> Store:
        """Connect (pool_pre_ping), bring the schema to the newest revision, and return the store.

        With `migrate=False` nothing is written: the schema must already be at the newest revision
        (readers of a read-only database or replica use this).

        `clock` is injectable so a runtime driven by a fake clock writes the times it reads.
        A dead or unreachable database raises StoreError naming the URL (password masked).
        """
        engine = make_engine(url)
        try:
            if migrate:
                migrate_schema(engine)
            else:
                check_schema(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(Database(engine, clock=clock))

    @property
    def safe_url(self) -> str:
        """The database URL with its password masked, for logs and messages."""
        return self.db.safe_url

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

"""The serving manifest: what every replica of the fleet must serve before it takes client traffic.

Why: a Triton in explicit model-control mode that restarts serves nothing until shepherd's next
pass loads its models, yet answers `/v2/health/ready` at once, so a load balancer puts it back in
rotation and its clients get NOT_FOUND (85 to 597 failed requests per restart in docs/benchmarks.md).
The readiness check beside each replica (control_plane/readiness.py) needs to know which models
the fleet serves; this file tells it, written by the control plane at the end of each reconcile
pass, read by every replica's check from the shared model repository:

    <repository>/.shepherd-serving.json
    {"format": 1, "written_at": "2026-11-27T10:00:00+00:00", "models": {"clf": {"stable": 3}}}

A model is listed when it has a stable (or pinned) version AND at least one reachable replica
serves it (any version READY): "every model the fleet serves". A stable version that loads nowhere
is therefore not demanded of anyone; demanding it would make every replica unready and take every
other model out of service with it. The version numbers are for people; the check asks for a READY
version of each listed model, whichever (a canary replica may serve the candidate beside stable).

Where: a hidden top-level FILE of the repository. Triton's repository index lists every
top-level folder, hidden ones too (a `.hidden` folder showed as a model in 2.51, see
tests/test_readiness.py), but no file; `ModelRepository.models()` lists only folders holding a
config.pbtxt. The repository's own lock file `.shepherd.lock` lives beside it for the same reason.

Written atomically (a new temporary file, then `os.replace`), readable by everyone (0644: the
Triton pods read the repository as another user), and only when the listed models or versions
changed: an idle pass costs one `stat` (the file is as this process last wrote it) or, the first
time or after another writer, one read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from control_plane.errors import ServingManifestError
from control_plane.report import TickReport
from control_plane.world import World

MANIFEST_NAME = ".shepherd-serving.json"
FORMAT = 1
MAX_BYTES = 1 << 20  # a real manifest is a few hundred bytes per model; a larger file is not ours
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Required:
    """One model every replica must serve: its stable version and, when pinned, the pinned one (information)."""

    stable: int | None = None
    pinned: int | None = None

    def for_storage(self) -> dict[str, int]:
        return {k: v for k, v in (("stable", self.stable), ("pinned", self.pinned)) if v is not None}


@dataclass(frozen=True)
class ServingManifest:
    """The models every replica must serve (by name), with their versions for information."""

    models: Mapping[str, Required] = field(default_factory=dict)
    written_at: str | None = None

    def for_storage(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "written_at": self.written_at,
            "models": {name: self.models[name].for_storage() for name in sorted(self.models)},
        }

    @classmethod
    def from_storage(cls, data: Any, *, source: str) -> ServingManifest:
        """The manifest in `data`; ServingManifestError naming `source` and what is wrong (never quoting it)."""
        if not isinstance(data, dict):
            raise ServingManifestError(f"{source}: not a JSON object")
        if data.get("format") != FORMAT:
            raise ServingManifestError(f"{source}: format {data.get('format')!r} is not {FORMAT} (a newer shepherd?)")
        models = data.get("models")
        if not isinstance(models, dict):
            raise ServingManifestError(f"{source}: `models` is not a mapping")
        read: dict[str, Required] = {}
        for name, entry in models.items():
            if not isinstance(entry, dict) or not all(
                k in ("stable", "pinned") and (v is None or (isinstance(v, int) and not isinstance(v, bool)))
                for k, v in entry.items()
            ):
                raise ServingManifestError(f"{source}: the entry of model {name!r} is not {{stable, pinned}} numbers")
            read[str(name)] = Required(stable=entry.get("stable"), pinned=entry.get("pinned"))
        written = data.get("written_at")
        return cls(models=read, written_at=written if isinstance(written, str) else None)


def manifest_path(repository: Path) -> Path:
    return Path(repository) / MANIFEST_NAME


def required(world: World) -> dict[str, Required]:
    """What the fleet serves, from one pass's world: models with a stable or pinned version that at
    least one reachable replica serves (any version READY)."""
    wanted: dict[str, Required] = {}
    for model in sorted(world.store.models):
        stable = world.store.stable(model)
        pinned = world.store.pinned(model)
        if (stable is None and pinned is None) or not world.ready_anywhere(model):
            continue
        wanted[model] = Required(stable=stable.version if stable is not None else None, pinned=pinned)
    return wanted


def read_manifest(path: Path) -> ServingManifest | None:
    """The manifest at `path`; None when there is none; ServingManifestError when it cannot be read or is not one."""
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ServingManifestError(f"cannot read the serving manifest {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_BYTES:
        raise ServingManifestError(f"{path}: larger than {MAX_BYTES} bytes, not a serving manifest")
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError's msg says what was expected, not the text
        detail = f": {exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ServingManifestError(f"{path}: not JSON{detail}") from None
    return ServingManifest.from_storage(data, source=str(path))


def write_manifest(path: Path, manifest: ServingManifest) -> None:
    """Write `path` atomically: a new temporary file beside it (never through a symlink), then a rename."""
    data = (json.dumps(manifest.for_storage(), indent=2) + "\n").encode()
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(handle, "wb") as stream:
            os.fchmod(stream.fileno(), 0o644)  # whatever the umask: the Triton pods read it as another user
            stream.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        raise ServingManifestError(f"cannot write the serving manifest {path}: {exc.strerror or exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)


# What this process last wrote or read at each path: (the file's stat signature, its models).
_seen: dict[Path, tuple[tuple[int, int, int], dict[str, Required]]] = {}
_seen_lock = threading.Lock()


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ServingManifestError(f"cannot stat the serving manifest {path}: {exc.strerror or exc}") from exc
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def publish(repository: Path, models: Mapping[str, Required], *, now: datetime | None = None) -> bool:
    """Make the manifest in `repository` list exactly `models`; True when it was (re)written.

    The file is compared, not rewritten: when it is as this process last saw it (same inode, size and
    modification time) one `stat` decides; otherwise it is read once and rewritten only if it differs
    (another leader may have written the same content, or something else). An unreadable or foreign
    file is replaced.
    """
    path = manifest_path(repository)
    wanted = dict(models)
    with _seen_lock:
        signature = _signature(path)
        seen = _seen.get(path)
        if signature is not None and seen is not None and seen[0] == signature and seen[1] == wanted:
            return False
        if signature is not None and (seen is None or seen[0] != signature):
            try:
                current = read_manifest(path)
            except ServingManifestError:
                current = None
            if current is not None and dict(current.models) == wanted:
                _seen[path] = (signature, wanted)
                return False
        stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds")
        write_manifest(path, ServingManifest(models=wanted, written_at=stamp))
        written = _signature(path)
        if written is not None:
            _seen[path] = (written, wanted)
    log.info("serving manifest %s now lists %s", path, ", ".join(sorted(wanted)) or "no model")
    return True


def record(repository: Path, report: TickReport, world: World) -> None:
    """The reconciler's last step: publish what the fleet serves; a failure is reported, never raised."""
    try:
        publish(repository, required(world))
    except ServingManifestError as exc:
        report.fail(exc)

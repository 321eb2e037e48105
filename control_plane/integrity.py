"""Are a version's files still the ones that were built and verified?

Why: the manifest records a sha256 per file, written when the export was verified against its
source. A file replaced or truncated afterwards (a bad copy, a disk error, someone's hand) would
otherwise be loaded and judged as if it were the verified build. The check runs before a version's
first load (its preflight), against the manifest recorded when the version was discovered.
"""

from __future__ import annotations

from builders.manifest import sha256_file
from builders.repository import ModelRepository
from control_plane.store.records import VersionRecord


def changed_files(repo: ModelRepository, record: VersionRecord) -> list[str]:
    """Files of the version missing or with another sha256 than its recorded manifest says, sorted."""
    files = record.manifest.get("files")
    if not isinstance(files, dict):
        return []
    folder = repo.version_dir(record.model, record.version)
    changed = []
    for name, expected in sorted(files.items()):
        path = folder / str(name)
        if path.parent != folder or not path.is_file() or path.is_symlink() or sha256_file(path) != expected:
            changed.append(str(name))
    return changed

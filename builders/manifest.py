"""The manifest written beside each version's model file (`<model>/<version>/manifest.json`).

Why: the control plane must know, without loading anything, where a version came from, that its
files are the ones that were verified (hashes), how it was built, and how good it was on its
golden set, so a candidate can be judged against a floor and against the stable version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from builders.errors import BrokenManifest

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def builder_version() -> str:
    """The installed shepherd version: what the manifest records as "builder_version".

    A source checkout that was never installed has no distribution metadata; "0+unknown" says so.
    """
    try:
        return metadata.version("triton-shepherd")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Manifest:
    """What a version is, how it was built and how good it measured.

    `quality` holds the golden-set figures, e.g. {"metric": "accuracy", "value": 0.93,
    "macro_f1": 0.91, "rows": 300}; `verification` the export-vs-source figures per output.
    """

    model: str
    version: int
    kind: str  # intent | embedder | ranker | tokenizer | custom
    format: str  # onnx | tensorrt | python
    builder_version: str
    source: dict[str, Any] = field(default_factory=dict)  # {"path": ..., "sha256": ...}
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    settings: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=utc_now)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {name for name in cls.__dataclass_fields__}
        unknown = {k: v for k, v in data.items() if k not in known}
        values = {k: v for k, v in data.items() if k in known}
        if unknown:
            values["extra"] = {**values.get("extra", {}), **unknown}
        return cls(**values)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
            return cls.from_dict(data)
        except FileNotFoundError as exc:
            raise BrokenManifest(f"manifest missing: {path}") from exc
        except OSError as exc:
            raise BrokenManifest(f"manifest cannot be read: {path}: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise BrokenManifest(f"manifest does not parse: {path}: {exc}") from exc

    def check_files(self, folder: Path) -> list[str]:
        """Names of files whose hash differs from the manifest (or that are missing)."""
        bad = []
        for name, expected in self.files.items():
            path = folder / name
            if not path.is_file() or sha256_file(path) != expected:
                bad.append(name)
        return bad

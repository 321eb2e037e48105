"""The one owner of the Triton model repository layout on disk.

    <root>/<model>/config.pbtxt
    <root>/<model>/<version>/<model file>      model.onnx | model.plan | model.py
    <root>/<model>/<version>/manifest.json

Why one owner: the builders write versions, the control plane reads them and Triton serves them;
if each of them knew the layout, a change would break one silently. Everything else goes through
`ModelRepository`.

Versions are published atomically: files are written into a hidden staging folder inside the
repository (same file system), then renamed into place, so Triton never sees half a version. A
lock file serialises publishers so two builds never take the same version number.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import ModelConfig

from builders.errors import BrokenConfig, InvalidModelName, RepositoryError, VersionExists
from builders.manifest import MANIFEST_NAME, Manifest, sha256_file

CONFIG_NAME = "config.pbtxt"
LOCK_NAME = ".shepherd.lock"
STAGING_PREFIX = ".staging-"
# A preflight alias `<model>__preflight` points at one version's files so the control plane can load
# a candidate where it takes no client traffic. The suffix is reserved: no real model may use it.
PREFLIGHT_SUFFIX = "__preflight"

# Letters, digits, '_', '-' and '.', starting with a letter or digit: what Triton users name models.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def validate_model_name(name: str) -> str:
    """Return `name` if it is a safe Triton model name, else raise InvalidModelName."""
    if not isinstance(name, str) or not name:
        raise InvalidModelName("model name is empty")
    if "/" in name or "\\" in name or os.sep in name:
        raise InvalidModelName(f"model name {name!r} contains a path separator")
    if ".." in name:
        raise InvalidModelName(f"model name {name!r} contains '..'")
    if name.startswith("."):
        raise InvalidModelName(f"model name {name!r} is hidden (starts with '.')")
    if name.endswith(PREFLIGHT_SUFFIX):
        raise InvalidModelName(f"model name {name!r} ends with the reserved suffix {PREFLIGHT_SUFFIX!r}")
    if not _NAME.match(name):
        raise InvalidModelName(
            f"model name {name!r} is not allowed: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit, at most 128 characters"
        )
    return name


def parse_config(text: str, *, source: str = "config.pbtxt") -> ModelConfig:
    """Parse pbtxt text into a ModelConfig; a syntax error names `source`."""
    try:
        return text_format.Parse(text, ModelConfig())
    except text_format.ParseError as exc:
        raise BrokenConfig(f"{source} does not parse: {exc}") from exc


def format_config(config: ModelConfig) -> str:
    return text_format.MessageToString(config)


@dataclass(frozen=True)
class PublishedVersion:
    model: str
    version: int
    path: Path
    manifest: Manifest


class ModelRepository:
    """A Triton model repository folder. Example:

    repo = ModelRepository(Path("model_repository"))
    published = repo.publish_version("intent", files={"model.onnx": onnx_path}, manifest=m, config=cfg)
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reading ---------------------------------------------------------------------------
    def model_dir(self, name: str) -> Path:
        return self.root / validate_model_name(name)

    def version_dir(self, name: str, version: int) -> Path:
        if int(version) < 1:
            raise RepositoryError(f"version must be a positive integer, got {version}")
        return self.model_dir(name) / str(int(version))

    def models(self) -> list[str]:
        """Model folders that hold a config.pbtxt (hidden and staging folders are skipped)."""
        if not self.root.is_dir():
            raise RepositoryError(f"model repository not found: {self.root}")
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir()
            and _NAME.match(entry.name)
            and not entry.name.endswith(PREFLIGHT_SUFFIX)
            and (entry / CONFIG_NAME).is_file()
        )

    def versions(self, name: str) -> list[int]:
        folder = self.model_dir(name)
        if not folder.is_dir():
            return []
        return sorted(int(entry.name) for entry in folder.iterdir() if entry.is_dir() and entry.name.isdigit())

    def config_path(self, name: str) -> Path:
        return self.model_dir(name) / CONFIG_NAME

    def read_config(self, name: str) -> ModelConfig:
        path = self.config_path(name)
        try:
            text = path.read_text()
        except FileNotFoundError as exc:
            raise BrokenConfig(f"{path} is missing") from exc
        except UnicodeDecodeError as exc:
            raise BrokenConfig(f"{path} is not text: {exc}") from exc
        except OSError as exc:
            raise BrokenConfig(f"{path} cannot be read: {exc}") from exc
        return parse_config(text, source=str(path))

    def write_config(self, name: str, config: ModelConfig) -> Path:
        """Write config.pbtxt atomically (temporary file, then rename)."""
        folder = self.model_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / CONFIG_NAME
        temporary = folder / f".{CONFIG_NAME}.{uuid.uuid4().hex}"
        try:
            temporary.write_text(format_config(config))
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return path

    def manifest_path(self, name: str, version: int) -> Path:
        return self.version_dir(name, version) / MANIFEST_NAME

    def read_manifest(self, name: str, version: int) -> Manifest:
        return Manifest.read(self.manifest_path(name, version))

    def next_version(self, name: str) -> int:
        versions = self.versions(name)
        return (versions[-1] + 1) if versions else 1

    # -- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_NAME, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def publish_version(
        self,
        name: str,
        *,
        files: Mapping[str, Path | bytes],
        manifest: Manifest,
        config: ModelConfig | None = None,
        version: int | None = None,
    ) -> PublishedVersion:
        """Publish a new version atomically and return it.

        `files` maps names inside the version folder to source paths (copied) or bytes. The
        manifest gets the version number and every file's sha256. `config`, when given, replaces
        config.pbtxt in the same step. On any failure the repository is left as it was.
        """
        validate_model_name(name)
        for filename in files:
            if "/" in filename or filename.startswith(".") or filename == MANIFEST_NAME:
                raise RepositoryError(f"bad file name for a version folder: {filename!r}")
        with self._locked():
            number = int(version) if version is not None else self.next_version(name)
            target = self.version_dir(name, number)
            if target.exists():
                raise VersionExists(f"{target} already exists")
            staging = self.root / f"{STAGING_PREFIX}{name}-{uuid.uuid4().hex}"
            model_dir = self.model_dir(name)
            created_model_dir = not model_dir.exists()
            old_config = self.config_path(name).read_bytes() if self.config_path(name).is_file() else None
            try:
                staging.mkdir(parents=True)
                for filename, source in files.items():
                    if isinstance(source, bytes):
                        (staging / filename).write_bytes(source)
                    else:
                        shutil.copy2(source, staging / filename)
                hashes = {filename: sha256_file(staging / filename) for filename in files}
                final = replace(manifest, model=name, version=number, files=hashes)
                (staging / MANIFEST_NAME).write_text(final.to_json())
                if config is not None:
                    self.write_config(name, config)
                elif old_config is None:
                    raise RepositoryError(f"{name} has no {CONFIG_NAME}; pass a config with its first version")
                os.rename(staging, target)
            except BaseException as exc:
                shutil.rmtree(staging, ignore_errors=True)
                if created_model_dir:
                    shutil.rmtree(model_dir, ignore_errors=True)
                elif old_config is not None and config is not None:
                    (model_dir / CONFIG_NAME).write_bytes(old_config)
                if isinstance(exc, OSError):
                    raise RepositoryError(f"could not publish {name} version {number}: {exc}") from exc
                raise
        return PublishedVersion(model=name, version=number, path=target, manifest=final)

    def remove_leftover_staging(self) -> list[Path]:
        """Delete staging folders a crashed publisher left behind (Triton never loads them)."""
        removed = []
        with self._locked():
            for entry in self.root.glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        return removed

    # -- preflight aliases -------------------------------------------------------------------
    def preflight_name(self, name: str) -> str:
        return validate_model_name(name) + PREFLIGHT_SUFFIX

    def link_preflight(self, name: str, version: int) -> str:
        """Make `<name>__preflight` serve exactly `version` of `name` from the same files (a symlink).

        Returns the alias name. Its config is the model's own with the name changed, so the
        candidate runs with the settings it will have in production.
        """
        source = self.version_dir(name, version)
        if not source.is_dir():
            raise RepositoryError(f"{source} does not exist")
        alias = self.preflight_name(name)
        folder = self.root / alias
        with self._locked():
            folder.mkdir(exist_ok=True)
            for entry in folder.iterdir():
                if entry.is_symlink() and entry.name != str(version):
                    entry.unlink()
            link = folder / str(version)
            if not link.is_symlink():
                link.symlink_to(Path("..") / name / str(version), target_is_directory=True)
            config = self.preflight_config(name)
            temporary = folder / f".{CONFIG_NAME}.{uuid.uuid4().hex}"
            temporary.write_text(format_config(config))
            os.replace(temporary, folder / CONFIG_NAME)
        return alias

    def preflight_config(self, name: str) -> ModelConfig:
        """The model's own config under its preflight alias name."""
        config = self.read_config(name)
        config.name = self.preflight_name(name)
        return config

    def unlink_preflight(self, name: str) -> None:
        """Remove the preflight alias (the version's own files are untouched)."""
        folder = self.root / self.preflight_name(name)
        with self._locked():
            if folder.is_dir():
                for entry in folder.iterdir():
                    if entry.is_symlink() or entry.is_file():
                        entry.unlink()
                shutil.rmtree(folder, ignore_errors=True)

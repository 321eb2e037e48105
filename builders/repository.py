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
`publish_versions` publishes several models' versions as one unit (a text model, its tokenizer
and its ensemble): all or none become visible.

The repository never follows a symlink out of itself for anything it writes or deletes: a write
target that resolves outside the root is refused (RepositoryError naming the path), a symlink it
deletes (a preflight alias, a leftover staging folder) is removed as a link and never traversed,
and the lock file is opened without following a link. Reads are bounded: a manifest or config
over its size limit, or a manifest nested too deeply, is refused without echoing its content.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import ModelConfig

from builders.errors import BrokenConfig, BrokenManifest, InvalidModelName, RepositoryError, VersionExists
from builders.manifest import MANIFEST_NAME, Manifest, sha256_file

CONFIG_NAME = "config.pbtxt"
LOCK_NAME = ".shepherd.lock"
STAGING_PREFIX = ".staging-"
# A preflight alias `<model>__preflight` points at one version's files so the control plane can load
# a candidate where it takes no client traffic. The suffix is reserved: no real model may use it.
PREFLIGHT_SUFFIX = "__preflight"

MAX_MANIFEST_BYTES = 1 << 20
"""The largest manifest.json read (1 MiB). Real manifests are a few KB; the control plane stores what
it reads in its history database, so a runaway manifest (one of 60 MB grew the database 120 MB) is
refused as BrokenManifest instead of being read whole."""
MAX_MANIFEST_DEPTH = 32
"""The deepest JSON nesting of a manifest (objects and arrays). Real manifests nest about 6 deep; a
deeper one is refused before parsing, so it cannot exhaust the parser's recursion."""
MAX_CONFIG_BYTES = 1 << 20
"""The largest config.pbtxt read (1 MiB); real configs, ensembles included, are a few KB."""
_STAGED_CONFIG = ".config.pbtxt"  # config.pbtxt staged inside a staging folder (hidden: no version file clashes)

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


_UNKNOWN_FIELD = re.compile(r'has no field named "([A-Za-z_][A-Za-z0-9_]{0,63})"')


def parse_config(text: str, *, source: str = "config.pbtxt") -> ModelConfig:
    """Parse pbtxt text into a ModelConfig; an error names `source` and where, never the text itself.

    Why not protobuf's message: it quotes the offending line, which may hold a secret (a parameter
    value) or be huge. Only an unknown field's name, a schema identifier, is named.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise BrokenConfig(f"{source} is over the {MAX_CONFIG_BYTES}-byte config limit (MAX_CONFIG_BYTES)")
    try:
        return text_format.Parse(text, ModelConfig())
    except text_format.ParseError as exc:
        unknown = _UNKNOWN_FIELD.search(str(exc))
        reason = f"unknown field {unknown.group(1)!r}" if unknown else "not valid ModelConfig text"
        raise BrokenConfig(
            f"{source} does not parse at line {exc.GetLine()}, column {exc.GetColumn()}: {reason}"
        ) from None


def format_config(config: ModelConfig) -> str:
    return text_format.MessageToString(config)


@dataclass(frozen=True)
class PublishedVersion:
    model: str
    version: int
    path: Path
    manifest: Manifest


@dataclass(frozen=True)
class NewVersion:
    """One version to publish (see `ModelRepository.publish_versions`).

    `files` maps names inside the version folder to source paths (copied) or bytes; `config`, when
    given, replaces the model's config.pbtxt in the same step; `version` None takes the next number.
    """

    model: str
    manifest: Manifest
    files: Mapping[str, Path | bytes] = field(default_factory=dict)
    config: ModelConfig | None = None
    version: int | None = None


@dataclass
class _Staged:
    """A version written into its staging folder, and what committing it changed (to undo it)."""

    entry: NewVersion
    number: int
    target: Path
    staging: Path
    manifest: Manifest
    created_model_dir: bool = False
    old_config: bytes | None = None
    config_replaced: bool = False
    moved: bool = False


def _check_file_names(files: Mapping[str, Path | bytes]) -> None:
    for filename in files:
        if "/" in filename or filename.startswith(".") or filename == MANIFEST_NAME or not filename:
            raise RepositoryError(f"bad file name for a version folder: {filename!r}")


def _read_bounded(path: Path, limit: int, error: type[RepositoryError], what: str) -> str:
    """The text of `path`, read only up to `limit` bytes; errors name the file, never its content."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError as exc:
        raise error(f"{what} missing: {path}") from exc
    except OSError as exc:
        raise error(f"{what} cannot be read: {path}: {exc.strerror or type(exc).__name__}") from exc
    if len(data) > limit:
        raise error(f"{what} {path} is over the {limit}-byte limit; it was not read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (bad byte at offset {exc.start})") from None


_JSON_SPECIAL = re.compile(r'["\[\]{}]')
_JSON_STRING_END = re.compile(r'["\\]')


def _json_depth(text: str, limit: int) -> int:
    """The deepest nesting of objects and arrays in JSON `text`, counted up to `limit + 1`.

    A linear scan that skips strings (brackets inside them are text): it never recurses, so it is
    safe on input that would exhaust the JSON parser's recursion.
    """
    depth = deepest = 0
    position = 0
    while match := _JSON_SPECIAL.search(text, position):
        char, position = match.group(), match.end()
        if char == '"':
            while end := _JSON_STRING_END.search(text, position):
                position = end.end() + (1 if end.group() == "\\" else 0)
                if end.group() == '"':
                    break
            else:
                return deepest  # an unterminated string: the parser reports it
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
        else:
            depth -= 1
    return deepest


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
        """The model's config.pbtxt; BrokenConfig (naming the file, never quoting it) if it is missing,
        over MAX_CONFIG_BYTES or does not parse."""
        path = self.config_path(name)
        return parse_config(_read_bounded(path, MAX_CONFIG_BYTES, BrokenConfig, "config"), source=str(path))

    def write_config(self, name: str, config: ModelConfig) -> Path:
        """Write config.pbtxt atomically (temporary file, then rename)."""
        folder = self._inside(self.model_dir(name))
        folder.mkdir(parents=True, exist_ok=True)
        return self._write_atomic(folder, CONFIG_NAME, format_config(config).encode())

    def manifest_path(self, name: str, version: int) -> Path:
        return self.version_dir(name, version) / MANIFEST_NAME

    def read_manifest(self, name: str, version: int) -> Manifest:
        """The version's manifest; BrokenManifest (naming the file and the limit, never quoting the
        content) if it is missing, over MAX_MANIFEST_BYTES, nested deeper than MAX_MANIFEST_DEPTH or
        not a manifest."""
        path = self.manifest_path(name, version)
        text = _read_bounded(path, MAX_MANIFEST_BYTES, BrokenManifest, "manifest")
        if _json_depth(text, MAX_MANIFEST_DEPTH) > MAX_MANIFEST_DEPTH:
            raise BrokenManifest(f"manifest {path} nests deeper than the limit of {MAX_MANIFEST_DEPTH} levels")
        try:
            data = json.loads(text)
        except ValueError as exc:  # JSONDecodeError's msg names what was expected, not the text
            detail = (
                f"{exc.msg} at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            )
            raise BrokenManifest(f"manifest does not parse: {path}: {detail}") from None
        if not isinstance(data, dict):
            raise BrokenManifest(f"manifest {path} is not a JSON object")
        try:
            return Manifest.from_dict(data)
        except TypeError as exc:  # a missing field: the message names the field only
            raise BrokenManifest(f"manifest {path} is not a shepherd manifest: {exc}") from None

    def next_version(self, name: str) -> int:
        versions = self.versions(name)
        return (versions[-1] + 1) if versions else 1

    # -- staying inside the repository -------------------------------------------------------
    def _inside(self, path: Path) -> Path:
        """`path`, if it resolves inside the repository (symlinks followed); else RepositoryError naming it."""
        root = self.root.resolve()
        resolved = path.resolve()
        if resolved != root and not resolved.is_relative_to(root):
            raise RepositoryError(
                f"{path} resolves to {resolved}, outside the repository {root}: shepherd never writes or "
                "deletes through a symlink that leaves the repository"
            )
        return path

    def _remove(self, path: Path) -> None:
        """Delete `path` (a file or folder in a folder of the repository); a symlink is removed as a
        link, never followed, and a folder's own symlinks are unlinked, not traversed (shutil.rmtree)."""
        self._inside(path.parent)
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink(missing_ok=True)
        elif path.is_dir():
            shutil.rmtree(path)

    def _write_atomic(self, folder: Path, filename: str, data: bytes) -> Path:
        """Write `folder/filename` through a new temporary file and a rename: an existing symlink of
        that name is replaced, never written through."""
        self._inside(folder)
        temporary = folder / f".{filename}.{uuid.uuid4().hex}"
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            os.replace(temporary, folder / filename)
        finally:
            temporary.unlink(missing_ok=True)
        return folder / filename

    # -- writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_NAME
        try:  # O_NOFOLLOW: a lock file that is a symlink is refused, never created or opened elsewhere
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            reason = "is a symlink" if exc.errno == errno.ELOOP else f"cannot be opened: {exc.strerror}"
            raise RepositoryError(f"the repository's lock file {path} {reason}") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)  # closing releases the lock

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
        (published,) = self.publish_versions([NewVersion(name, manifest, files, config, version)])
        return published

    def publish_versions(self, entries: Sequence[NewVersion]) -> tuple[PublishedVersion, ...]:
        """Publish one version of each of several models as ONE unit: all become visible, or none.

        Why: a text model's version, tokenizer and ensemble are served together; a model version
        without its tokenizer must never be left for the control plane to roll out. Every name is
        validated and every version folder (files, manifest, config) staged before anything is
        renamed into place; if a later rename or config write fails, the versions already moved
        are removed and the configs restored, so the repository is left as it was.
        """
        names = [validate_model_name(entry.model) for entry in entries]
        if len(set(names)) != len(names):
            raise RepositoryError(f"a model appears twice in one publish: {names}")
        for entry in entries:
            _check_file_names(entry.files)
        staged: list[_Staged] = []
        current: tuple[str, int | None] = (names[0] if names else "", None)
        with self._locked():
            try:
                for entry in entries:
                    current = (entry.model, entry.version)
                    staged.append(self._stage(entry))
                for item in staged:
                    current = (item.entry.model, item.number)
                    self._commit(item)
            except BaseException as exc:
                for item in reversed(staged):
                    self._undo(item)
                if isinstance(exc, OSError):
                    model, number = current
                    which = f"version {number}" if number is not None else "its next version"
                    raise RepositoryError(f"could not publish {model} {which}: {exc}") from exc
                raise
        return tuple(
            PublishedVersion(model=item.entry.model, version=item.number, path=item.target, manifest=item.manifest)
            for item in staged
        )

    def _stage(self, entry: NewVersion) -> _Staged:
        """Write `entry` into a hidden staging folder of the repository (nothing visible yet)."""
        name = entry.model
        model_dir = self._inside(self.model_dir(name))
        number = int(entry.version) if entry.version is not None else self.next_version(name)
        target = self.version_dir(name, number)
        if target.exists() or target.is_symlink():
            raise VersionExists(f"{target} already exists")
        if entry.config is None and not (model_dir / CONFIG_NAME).is_file():
            raise RepositoryError(f"{name} has no {CONFIG_NAME}; pass a config with its first version")
        staging = self.root / f"{STAGING_PREFIX}{name}-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            for filename, source in entry.files.items():
                if isinstance(source, bytes):
                    (staging / filename).write_bytes(source)
                else:
                    shutil.copy2(source, staging / filename)
            hashes = {filename: sha256_file(staging / filename) for filename in entry.files}
            manifest = replace(entry.manifest, model=name, version=number, files=hashes)
            (staging / MANIFEST_NAME).write_text(manifest.to_json())
            if entry.config is not None:
                (staging / _STAGED_CONFIG).write_text(format_config(entry.config))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # a fresh folder of ours, inside the repository
            raise
        return _Staged(entry, number, target, staging, manifest)

    def _commit(self, item: _Staged) -> None:
        """Make a staged version visible: its config first, then the version folder (one rename)."""
        model_dir = self._inside(self.model_dir(item.entry.model))
        if not model_dir.exists():
            model_dir.mkdir()
            item.created_model_dir = True
        config = model_dir / CONFIG_NAME
        if item.entry.config is not None:
            item.old_config = config.read_bytes() if config.is_file() else None
            os.replace(item.staging / _STAGED_CONFIG, config)
            item.config_replaced = True
        os.rename(item.staging, item.target)
        item.moved = True

    def _undo(self, item: _Staged) -> None:
        """Take back what committing `item` changed (best effort: every step is tried)."""
        model_dir = self.model_dir(item.entry.model)
        with contextlib.suppress(OSError, RepositoryError):
            if item.moved:
                self._remove(item.target)
        with contextlib.suppress(OSError, RepositoryError):
            if item.config_replaced and item.old_config is not None:
                self._write_atomic(model_dir, CONFIG_NAME, item.old_config)
            elif item.config_replaced:
                (model_dir / CONFIG_NAME).unlink(missing_ok=True)
        with contextlib.suppress(OSError, RepositoryError):
            if item.created_model_dir:
                self._remove(model_dir)
        with contextlib.suppress(OSError, RepositoryError):
            self._remove(item.staging)

    def remove_leftover_staging(self) -> list[Path]:
        """Delete staging folders a crashed publisher left behind (Triton never loads them).

        A staging entry that is a symlink is unlinked, never followed.
        """
        removed = []
        with self._locked():
            for entry in self.root.glob(f"{STAGING_PREFIX}*"):
                try:
                    self._remove(entry)
                except (OSError, RepositoryError):
                    continue
                removed.append(entry)
        return removed

    # -- preflight aliases -------------------------------------------------------------------
    def preflight_name(self, name: str) -> str:
        return validate_model_name(name) + PREFLIGHT_SUFFIX

    def link_preflight(self, name: str, version: int) -> str:
        """Make `<name>__preflight` serve exactly `version` of `name` from the same files (a symlink).

        Returns the alias name. Its config is the model's own with the name changed, so the
        candidate runs with the settings it will have in production. The alias folder is the
        repository's own: one that is a symlink is unlinked and made a real folder, and every entry
        but the relative link `<version> -> ../<name>/<version>` and the config is removed.
        """
        source = self.version_dir(name, version)
        if not source.is_dir():
            raise RepositoryError(f"{source} does not exist")
        alias = self.preflight_name(name)
        folder = self.root / alias
        wanted = os.path.join("..", name, str(int(version)))
        config = format_config(self.preflight_config(name)).encode()  # a broken config: nothing is made
        with self._locked():
            try:
                if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                    self._remove(folder)
                folder.mkdir(exist_ok=True)
                self._inside(folder)
                for entry in folder.iterdir():
                    keep = entry.name == CONFIG_NAME and not entry.is_symlink()
                    if entry.name == str(int(version)) and entry.is_symlink():
                        keep = os.readlink(entry) == wanted
                    if not keep:
                        self._remove(entry)
                link = folder / str(int(version))
                if not link.is_symlink():
                    link.symlink_to(wanted, target_is_directory=True)
                self._write_atomic(folder, CONFIG_NAME, config)
            except OSError as exc:
                raise RepositoryError(f"could not link {alias} to {name} version {version}: {exc}") from exc
        return alias

    def preflight_config(self, name: str) -> ModelConfig:
        """The model's own config under its preflight alias name."""
        config = self.read_config(name)
        config.name = self.preflight_name(name)
        return config

    def unlink_preflight(self, name: str) -> None:
        """Remove the preflight alias (the version's own files are untouched).

        A symlinked alias folder is unlinked as a link, never traversed; a real one is removed with
        its entries, whose symlinks (the version link) are unlinked, not followed.
        """
        folder = self.root / self.preflight_name(name)
        with self._locked():
            try:
                self._remove(folder)
            except OSError as exc:
                raise RepositoryError(f"could not remove the preflight alias {folder}: {exc}") from exc

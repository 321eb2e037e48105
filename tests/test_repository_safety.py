"""The repository never writes or deletes through a symlink that leaves it; reads of manifests and configs are bounded."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from builders.errors import BrokenConfig, BrokenManifest, InvalidModelName, RepositoryError
from builders.manifest import Manifest
from builders.repository import ModelRepository, parse_config
from tests.conftest import SCALE_CONFIG, publish_scale, scale_model


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A folder outside the repository that must never change."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.txt").write_text("keep me too")
    (folder / "a_link").symlink_to(folder / "precious.txt")
    return folder


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): (
            f"-> {os.readlink(p)}" if p.is_symlink() else p.read_text() if p.is_file() else "/"
        )
        for p in sorted(folder.rglob("*"))
    }


# -- symlinks out of the repository -------------------------------------------------------------
def test_unlink_preflight_removes_a_symlinked_alias_as_a_link(
    repo: ModelRepository, tmp_path: Path, victim: Path
) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    before = tree(victim)
    alias = repo.root / "scale__preflight"
    alias.symlink_to(victim, target_is_directory=True)
    repo.unlink_preflight("scale")
    assert tree(victim) == before
    assert not alias.is_symlink() and not alias.exists()
    assert repo.versions("scale") == [1]


def test_link_preflight_never_writes_through_a_symlinked_alias(
    repo: ModelRepository, tmp_path: Path, victim: Path
) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    before = tree(victim)
    alias = repo.root / "scale__preflight"
    alias.symlink_to(victim, target_is_directory=True)
    assert repo.link_preflight("scale", 1) == "scale__preflight"
    assert tree(victim) == before
    # The alias is now a real folder of the repository, holding the relative link to the version.
    assert alias.is_dir() and not alias.is_symlink()
    assert os.readlink(alias / "1") == os.path.join("..", "scale", "1")
    assert (alias / "1" / "model.onnx").resolve() == (repo.version_dir("scale", 1) / "model.onnx").resolve()
    assert parse_config((alias / "config.pbtxt").read_text()).name == "scale__preflight"
    repo.unlink_preflight("scale")
    assert not alias.exists() and (repo.version_dir("scale", 1) / "model.onnx").is_file()


def test_link_preflight_replaces_a_version_link_that_points_out(
    repo: ModelRepository, tmp_path: Path, victim: Path
) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    alias = repo.root / "scale__preflight"
    alias.mkdir()
    (alias / "1").symlink_to(victim, target_is_directory=True)
    (alias / "config.pbtxt").symlink_to(victim / "precious.txt")
    before = tree(victim)
    repo.link_preflight("scale", 1)
    assert os.readlink(alias / "1") == os.path.join("..", "scale", "1")
    assert not (alias / "config.pbtxt").is_symlink()
    assert tree(victim) == before


def test_publish_into_a_model_folder_that_links_out_is_refused(
    repo: ModelRepository, tmp_path: Path, victim: Path
) -> None:
    before = tree(victim)
    (repo.root / "evil").symlink_to(victim, target_is_directory=True)
    with pytest.raises(RepositoryError, match="evil") as raised:
        repo.publish_version(
            "evil",
            files={"model.onnx": scale_model(tmp_path / "m.onnx", 1.0)},
            manifest=Manifest(model="evil", version=0, kind="custom", format="onnx", builder_version="t"),
            config=parse_config(SCALE_CONFIG.format(name="evil")),
        )
    assert raised.value.exit_code == 30
    with pytest.raises(RepositoryError, match="outside"):
        repo.write_config("evil", parse_config(SCALE_CONFIG.format(name="evil")))
    assert tree(victim) == before
    assert not list(repo.root.glob(".staging-*"))


def test_remove_leftover_staging_unlinks_a_symlink_without_following_it(repo: ModelRepository, victim: Path) -> None:
    before = tree(victim)
    (repo.root / ".staging-x-123").symlink_to(victim, target_is_directory=True)
    (repo.root / ".staging-y-456").mkdir()
    (repo.root / ".staging-y-456" / "out").symlink_to(victim, target_is_directory=True)
    removed = repo.remove_leftover_staging()
    assert sorted(p.name for p in removed) == [".staging-x-123", ".staging-y-456"]
    assert not list(repo.root.glob(".staging-*"))
    assert tree(victim) == before


def test_a_lock_file_that_links_out_is_refused(repo: ModelRepository, tmp_path: Path) -> None:
    outside = tmp_path / "outside.lock"
    (repo.root / ".shepherd.lock").symlink_to(outside)
    with pytest.raises(RepositoryError, match=r"\.shepherd\.lock"):
        publish_scale(repo, tmp_path, "scale", 1.0)
    assert not outside.exists()
    assert repo.versions("scale") == []


# -- a text model's entries as one unit ----------------------------------------------------------
def test_publish_versions_is_one_unit_when_a_later_rename_fails(
    repo: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from builders.repository import NewVersion

    publish_scale(repo, tmp_path, "other", 1.0)
    publish_scale(repo, tmp_path, "other", 2.0)
    config_before = repo.config_path("other").read_bytes()

    def entry(name: str) -> NewVersion:
        changed = SCALE_CONFIG.format(name=name).replace("max_batch_size: 8", "max_batch_size: 4")
        return NewVersion(
            name,
            files={"model.onnx": scale_model(tmp_path / f"{name}.onnx", 3.0)},
            manifest=Manifest(model=name, version=0, kind="custom", format="onnx", builder_version="t"),
            config=parse_config(changed),
        )

    real_rename = os.rename

    def full_disk(source: object, target: object) -> None:
        if Path(str(target)).parent.name == "other":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_rename(source, target)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", full_disk)
    with pytest.raises(RepositoryError, match="No space left"):
        repo.publish_versions([entry("fresh"), entry("other")])
    monkeypatch.undo()
    assert not (repo.root / "fresh").exists()
    assert repo.versions("other") == [1, 2] and repo.config_path("other").read_bytes() == config_before
    assert not list(repo.root.glob(".staging-*"))
    published = repo.publish_versions([entry("fresh"), entry("other")])
    assert [(p.model, p.version) for p in published] == [("fresh", 1), ("other", 3)]


def test_publish_versions_validates_every_name_before_writing(repo: ModelRepository, tmp_path: Path) -> None:
    from builders.repository import NewVersion

    manifest = Manifest(model="", version=0, kind="custom", format="onnx", builder_version="t")
    good = NewVersion("good", files={"model.onnx": b"x"}, manifest=manifest, config=parse_config('name: "good"'))
    long = NewVersion("x" * 129, files={}, manifest=manifest, config=parse_config('name: "x"'))
    with pytest.raises(InvalidModelName):
        repo.publish_versions([good, long])
    assert list(repo.root.iterdir()) == []


# -- bounded reads ----------------------------------------------------------------------------
def test_oversized_manifest_is_refused_without_echoing_it(repo: ModelRepository, tmp_path: Path) -> None:
    from builders.repository import MAX_MANIFEST_BYTES

    publish_scale(repo, tmp_path, "scale", 1.0)
    path = repo.manifest_path("scale", 1)
    data = json.loads(path.read_text())
    data["extra"] = {"blob": "SECRET" * (MAX_MANIFEST_BYTES // 6 + 1)}
    path.write_text(json.dumps(data))
    with pytest.raises(BrokenManifest) as raised:
        repo.read_manifest("scale", 1)
    message = str(raised.value)
    assert str(path) in message and str(MAX_MANIFEST_BYTES) in message and "SECRET" not in message
    assert raised.value.exit_code == 33
    assert len(message) < 500


def test_deeply_nested_manifest_is_refused(repo: ModelRepository, tmp_path: Path) -> None:
    from builders.repository import MAX_MANIFEST_DEPTH

    publish_scale(repo, tmp_path, "scale", 1.0)
    path = repo.manifest_path("scale", 1)
    path.write_text('{"extra": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(BrokenManifest, match=f"{MAX_MANIFEST_DEPTH}") as raised:
        repo.read_manifest("scale", 1)
    assert str(path) in str(raised.value) and "[[" not in str(raised.value)
    # Brackets inside strings are text, not nesting.
    fine = Manifest(
        model="scale", version=1, kind="custom", format="onnx", builder_version="t", extra={"s": "[[[[" * 50}
    )
    path.write_text(fine.to_json())
    assert repo.read_manifest("scale", 1).extra == {"s": "[[[[" * 50}


def test_broken_manifest_does_not_echo_its_content(repo: ModelRepository, tmp_path: Path) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    path = repo.manifest_path("scale", 1)
    for text in ('{"password": "SECRET", oops}', '["SECRET"]', "\xff SECRET"):
        path.write_bytes(text.encode("latin-1"))
        with pytest.raises(BrokenManifest) as raised:
            repo.read_manifest("scale", 1)
        assert str(path) in str(raised.value) and "SECRET" not in str(raised.value)


def test_broken_config_names_the_file_without_echoing_it(repo: ModelRepository, tmp_path: Path) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    path = repo.config_path("scale")
    for text in (
        'name: "scale"\nparameters { key: "pw" value: { string_value: "SECRET } }\n',
        'name: "scale"\nmax_batch_size: "SECRET"\n',
        'name: "scale"\ninput [{ name: "SECRET" data_type: NOT_A_TYPE }]\n',
    ):
        path.write_text(text)
        with pytest.raises(BrokenConfig) as raised:
            repo.read_config("scale")
        assert str(path) in str(raised.value) and "line 2" in str(raised.value)
        assert "SECRET" not in str(raised.value), str(raised.value)


def test_oversized_config_is_refused(repo: ModelRepository, tmp_path: Path) -> None:
    from builders.repository import MAX_CONFIG_BYTES

    publish_scale(repo, tmp_path, "scale", 1.0)
    path = repo.config_path("scale")
    path.write_text(path.read_text() + "\n" + "# SECRET padding\n" * (MAX_CONFIG_BYTES // 16))
    with pytest.raises(BrokenConfig) as raised:
        repo.read_config("scale")
    assert str(path) in str(raised.value) and str(MAX_CONFIG_BYTES) in str(raised.value)
    assert "SECRET" not in str(raised.value)
    with pytest.raises(BrokenConfig, match=str(MAX_CONFIG_BYTES)):
        parse_config("# x\n" * MAX_CONFIG_BYTES, source="big.pbtxt")


def test_link_preflight_with_a_broken_config_makes_no_alias(repo: ModelRepository, tmp_path: Path) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    repo.config_path("scale").write_text("name: 'scale' this is { not a config\n")
    with pytest.raises(BrokenConfig):
        repo.link_preflight("scale", 1)
    assert not (repo.root / "scale__preflight").exists()

"""The repository layout owner: names, configs, manifests, atomic publishing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builders.errors import BrokenConfig, BrokenManifest, InvalidModelName, RepositoryError, VersionExists
from builders.manifest import Manifest, sha256_file
from builders.repository import ModelRepository, parse_config, validate_model_name
from tests.conftest import SCALE_CONFIG, publish_scale, scale_model


@pytest.mark.parametrize("name", ["", "..", "a/b", "a\\b", "../etc", ".hidden", "a..b", "sp ace", "x" * 200, "-lead"])
def test_bad_model_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidModelName):
        validate_model_name(name)


@pytest.mark.parametrize("name", ["intent", "product_embedder", "ctr-ranker.v2", "A1"])
def test_good_model_names_pass(name: str) -> None:
    assert validate_model_name(name) == name


def test_repository_rejects_bad_name_before_touching_disk(repo: ModelRepository, tmp_path: Path) -> None:
    with pytest.raises(InvalidModelName):
        repo.publish_version(
            "../escape",
            files={"model.onnx": b"x"},
            manifest=Manifest(model="", version=0, kind="custom", format="onnx", builder_version="t"),
            config=parse_config(SCALE_CONFIG.format(name="x")),
        )
    assert list(repo.root.iterdir()) == []
    assert not (tmp_path / "escape").exists()


def test_publish_allocates_versions_and_hashes_files(repo: ModelRepository, tmp_path: Path) -> None:
    assert publish_scale(repo, tmp_path, "scale", 1.0) == 1
    assert publish_scale(repo, tmp_path, "scale", 2.0) == 2
    assert repo.models() == ["scale"]
    assert repo.versions("scale") == [1, 2]
    assert repo.next_version("scale") == 3
    manifest = repo.read_manifest("scale", 2)
    assert manifest.version == 2 and manifest.model == "scale"
    assert manifest.files["model.onnx"] == sha256_file(repo.version_dir("scale", 2) / "model.onnx")
    assert manifest.check_files(repo.version_dir("scale", 2)) == []
    config = repo.read_config("scale")
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    assert [i.name for i in config.input] == ["x"]
    assert not [p for p in repo.root.iterdir() if p.name.startswith(".staging")]


def test_manifest_detects_changed_file(repo: ModelRepository, tmp_path: Path) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    folder = repo.version_dir("scale", 1)
    scale_model(folder / "model.onnx", 5.0)
    assert repo.read_manifest("scale", 1).check_files(folder) == ["model.onnx"]


def test_failed_publish_leaves_repository_unchanged(repo: ModelRepository, tmp_path: Path) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    before = sorted(str(p.relative_to(repo.root)) for p in repo.root.rglob("*"))
    config_before = repo.config_path("scale").read_text()
    changed = parse_config(SCALE_CONFIG.format(name="scale").replace("max_batch_size: 8", "max_batch_size: 4"))
    with pytest.raises(RepositoryError, match="could not publish"):
        repo.publish_version(
            "scale",
            files={"model.onnx": tmp_path / "does-not-exist.onnx"},
            manifest=Manifest(model="scale", version=0, kind="custom", format="onnx", builder_version="t"),
            config=changed,
        )
    after = sorted(str(p.relative_to(repo.root)) for p in repo.root.rglob("*"))
    assert after == before
    assert repo.config_path("scale").read_text() == config_before


def test_failed_first_publish_removes_new_model_folder(repo: ModelRepository, tmp_path: Path) -> None:
    with pytest.raises(RepositoryError):
        repo.publish_version(
            "fresh",
            files={"model.onnx": tmp_path / "missing.onnx"},
            manifest=Manifest(model="fresh", version=0, kind="custom", format="onnx", builder_version="t"),
            config=parse_config(SCALE_CONFIG.format(name="fresh")),
        )
    assert not (repo.root / "fresh").exists()


def test_existing_version_is_never_overwritten(repo: ModelRepository, tmp_path: Path) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    digest = sha256_file(repo.version_dir("scale", 1) / "model.onnx")
    with pytest.raises(VersionExists):
        repo.publish_version(
            "scale",
            files={"model.onnx": scale_model(tmp_path / "other.onnx", 9.0)},
            manifest=Manifest(model="scale", version=0, kind="custom", format="onnx", builder_version="t"),
            version=1,
        )
    assert sha256_file(repo.version_dir("scale", 1) / "model.onnx") == digest


def test_broken_config_names_the_file(repo: ModelRepository, tmp_path: Path) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    path = repo.config_path("scale")
    path.write_text('name: "scale"\nplatform: "onnxruntime_onnx"\ninput [{ name: "x" data_type: NOT_A_TYPE }]\n')
    with pytest.raises(BrokenConfig, match=str(path)):
        repo.read_config("scale")
    path.write_text("max_batch_size: 8\nthis is not pbtxt {")
    with pytest.raises(BrokenConfig, match="config.pbtxt"):
        repo.read_config("scale")


def test_unknown_config_field_is_an_error(repo: ModelRepository, tmp_path: Path) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    repo.config_path("scale").write_text('name: "scale"\nmax_batch_sizes: 8\n')
    with pytest.raises(BrokenConfig, match="max_batch_sizes"):
        repo.read_config("scale")


def test_broken_manifest_is_reported(repo: ModelRepository, tmp_path: Path) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    repo.manifest_path("scale", 1).write_text("{not json")
    with pytest.raises(BrokenManifest, match="manifest.json"):
        repo.read_manifest("scale", 1)
    repo.manifest_path("scale", 1).unlink()
    with pytest.raises(BrokenManifest, match="missing"):
        repo.read_manifest("scale", 1)


def test_models_skips_hidden_and_staging_folders(repo: ModelRepository, tmp_path: Path) -> None:
    publish_scale(repo, tmp_path, "scale", 1.0)
    (repo.root / ".staging-scale-abc").mkdir()
    (repo.root / "no_config").mkdir()
    assert repo.models() == ["scale"]
    assert [p.name for p in repo.remove_leftover_staging()] == [".staging-scale-abc"]


def test_manifest_round_trip_keeps_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    data = json.loads(Manifest(model="m", version=3, kind="intent", format="onnx", builder_version="1").to_json())
    data["future_field"] = {"x": 1}
    path.write_text(json.dumps(data))
    manifest = Manifest.read(path)
    assert manifest.version == 3 and manifest.extra["future_field"] == {"x": 1}

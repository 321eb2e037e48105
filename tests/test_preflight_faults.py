"""Versions that cannot be trusted or probed, and models that are broken, against the real Triton.

A version whose files differ from its manifest, or whose golden set is garbage, is rejected at its
preflight without ever taking traffic; a model whose config.pbtxt is broken is reported and skipped,
leaving no preflight alias behind, while the other models go on in the same pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from builders.manifest import Manifest
from builders.repository import ModelRepository, parse_config
from control_plane import reconciler
from control_plane.local_triton import LocalTriton
from control_plane.store.models import State
from tests.classifier_models import CONFIG, classifier_onnx, publish, true_weights
from tests.test_control_plane import (
    establish_stable,
    make_runtime,
    ready,
    state_of,
    tick_until,
)

pytestmark = pytest.mark.triton


def test_version_whose_files_changed_after_the_build_is_rejected_unloaded(
    repo: ModelRepository, triton: LocalTriton, tmp_path: Path
) -> None:
    rt = make_runtime(repo, triton, tmp_path)
    try:
        stable = establish_stable(rt, repo, tmp_path)
        candidate = publish(repo, tmp_path / "build", "clf", "same")
        slow = tmp_path / "slow.onnx"
        classifier_onnx(slow, true_weights(), heavy=256)
        (repo.version_dir("clf", candidate) / "model.onnx").write_bytes(slow.read_bytes())  # swapped by hand
        tick_until(rt, lambda: state_of(rt, "clf", candidate) == State.rejected)
        record = rt.store.read.get_version("clf", candidate)
        assert record is not None and "differ from its manifest" in (record.reason or "")
        assert "model.onnx" in (record.reason or "")
        assert ready(rt, "clf") == {stable}
        assert not rt.store.read.probe_windows("clf", candidate)  # never loaded, never probed
    finally:
        rt.close()


def test_version_with_a_garbage_golden_set_is_rejected(
    repo: ModelRepository, triton: LocalTriton, tmp_path: Path
) -> None:
    rt = make_runtime(repo, triton, tmp_path)
    try:
        stable = establish_stable(rt, repo, tmp_path)
        model = tmp_path / "model.onnx"
        classifier_onnx(model, true_weights())
        manifest = Manifest(
            model="clf", version=0, kind="classifier", format="onnx", builder_version="test",
            extra={"golden_task": "classifier"},
        )  # fmt: skip
        garbage = repo.publish_version(
            "clf",
            files={"model.onnx": model, "golden.npz": b"PK\x03\x04 not a zip at all"},
            manifest=manifest,
            config=parse_config(CONFIG.format(name="clf")),
        ).version
        tick_until(rt, lambda: state_of(rt, "clf", garbage) == State.rejected)
        record = rt.store.read.get_version("clf", garbage)
        assert record is not None and "not a readable golden set" in (record.reason or "")
        assert ready(rt, "clf") == {stable}
    finally:
        rt.close()


def test_a_broken_model_is_skipped_and_the_others_go_on(
    repo: ModelRepository, triton: LocalTriton, tmp_path: Path
) -> None:
    rt = make_runtime(repo, triton, tmp_path)
    try:
        publish(repo, tmp_path / "build", "aaa", "good")  # sorted first: its failure comes before clf's turn
        (repo.model_dir("aaa") / "config.pbtxt").write_text("name: 'aaa' this is { not a config\n")
        report = reconciler.tick(rt)
        assert any("aaa" in str(error) for error in report.errors), report.errors
        version = publish(repo, tmp_path / "build", "clf", "good")
        tick_until(rt, lambda: state_of(rt, "clf", version) == State.promoted)  # clf moves on, aaa stays broken
        assert state_of(rt, "aaa", 1) == State.preflight  # its config is model-wide: retried once it is fixed
        assert not (repo.root / "aaa__preflight").exists()  # no alias folder left behind
        assert "aaa__preflight" not in {e.model for e in rt.admin.index() if e.state == "READY"}
        assert np.array_equal(sorted(ready(rt, "clf")), [version])
    finally:
        rt.close()

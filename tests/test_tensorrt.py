"""TensorRT: the pure parts (profiles, config) and the error path, which is the real path on this machine.

No machine of this project has TensorRT and a GPU, so the engine build itself is not exercised.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from builders import tensorrt
from builders.errors import BadOption, EngineUnavailable
from builders.onnx_export import ExportSpec, TensorSpec
from builders.pipeline import BuildOptions, Status, build_model
from builders.repository import ModelRepository
from builders.tensorrt import EngineOptions, profiles_for, tensorrt_config
from builders.triton_config import BatchingOptions
from tests.conftest import scale_model

TEXT = ExportSpec(
    inputs=(TensorSpec("input_ids", "INT64", (-1,)), TensorSpec("attention_mask", "INT64", (-1,))),
    outputs=(TensorSpec("logits", "FP32", (8,)),),
)
RANKER = ExportSpec(
    inputs=(TensorSpec("categorical", "INT64", (6,)), TensorSpec("dense", "FP32", (4,))),
    outputs=(TensorSpec("click_probability", "FP32", (1,)),),
)

needs_no_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None and tensorrt._gpu_present(),
    reason="TensorRT and a GPU are present: the error path is not the real one here",
)


def test_profiles_cover_batch_and_sequence() -> None:
    ids, mask = profiles_for(TEXT, EngineOptions(min_batch=1, max_batch=64, min_seq=4, opt_seq=32, max_seq=256))
    assert ids.name == "input_ids" and mask.name == "attention_mask"
    assert (ids.min, ids.opt, ids.max) == ((1, 4), (32, 32), (64, 256))
    assert mask.max == (64, 256)


def test_fixed_dims_stay_fixed() -> None:
    categorical, dense = profiles_for(RANKER, EngineOptions(max_batch=16, opt_batch=8))
    assert (categorical.min, categorical.opt, categorical.max) == ((1, 6), (8, 6), (16, 6))
    assert dense.max == (16, 4)


def test_bad_profiles_and_bytes_inputs_are_refused() -> None:
    with pytest.raises(BadOption, match="batch profile"):
        EngineOptions(min_batch=8, max_batch=4)
    with pytest.raises(BadOption, match="sequence profile"):
        EngineOptions(min_seq=16, opt_seq=8, max_seq=64)
    text_in = ExportSpec(inputs=(TensorSpec("text", "BYTES", (1,)),), outputs=TEXT.outputs)
    with pytest.raises(BadOption, match="BYTES"):
        profiles_for(text_in, EngineOptions())


def test_engine_config_is_a_gpu_tensorrt_plan() -> None:
    config = tensorrt_config("intent_trt", TEXT, batching=BatchingOptions(max_batch_size=64))
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 64
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert EngineOptions(fp16=True, max_batch=64).as_dict()["batch"] == [1, 32, 64]


@needs_no_tensorrt
def test_engine_build_raises_before_writing_anything(tmp_path: Path) -> None:
    onnx_path = scale_model(tmp_path / "scale.onnx", 2.0)
    spec = ExportSpec(inputs=(TensorSpec("x", "FP32", (4,)),), outputs=(TensorSpec("y", "FP32", (4,)),))
    before = sorted(tmp_path.iterdir())
    with pytest.raises(EngineUnavailable, match="Nothing was published"):
        tensorrt.build_engine(onnx_path, spec, EngineOptions(fp16=True), tmp_path / "model.plan")
    assert sorted(tmp_path.iterdir()) == before


def test_no_gpu_is_its_own_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the tensorrt module importable (an empty module stands in for it), a missing GPU is named."""
    if tensorrt._gpu_present():
        pytest.skip("this machine has a GPU")
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(EngineUnavailable, match="no NVIDIA GPU"):
        tensorrt.check_available()


def test_int8_without_calibration_is_refused(tmp_path: Path) -> None:
    onnx_path = scale_model(tmp_path / "scale.onnx", 2.0)
    spec = ExportSpec(inputs=(TensorSpec("x", "FP32", (4,)),), outputs=(TensorSpec("y", "FP32", (4,)),))
    with pytest.raises(BadOption, match="calibration"):
        tensorrt.build_engine(onnx_path, spec, EngineOptions(int8=True), tmp_path / "model.plan")


@needs_no_tensorrt
def test_a_tensorrt_build_fails_first_and_publishes_nothing(repo: ModelRepository) -> None:
    loaded = []

    def load() -> None:
        loaded.append(True)
        raise AssertionError("the build must stop before loading the source")

    result = build_model(repo, load, BuildOptions(name="ranker", formats=("onnx", "tensorrt")))  # type: ignore[arg-type]
    assert not result.ok and isinstance(result.error, EngineUnavailable)
    assert result.exit_code == EngineUnavailable.exit_code == 42
    assert result.steps[0].name == "preflight" and result.steps[0].status is Status.FAIL
    assert all(step.status is Status.SKIPPED for step in result.steps[1:])
    assert not loaded and not result.published
    assert [p.name for p in repo.root.iterdir() if p.name != ".shepherd.lock"] == []

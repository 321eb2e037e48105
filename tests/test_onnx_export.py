"""ONNX export and verification against PyTorch (real exporter, real onnxruntime), and the quality metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from builders.errors import BadOption, ExportFailed, VerificationFailed
from builders.onnx_export import (
    ExportSpec,
    TensorSpec,
    Tolerance,
    export_onnx,
    onnx_session,
    optimize_onnx,
    require_verified,
    verify_onnx,
)
from builders.quality import agreement, embedder_quality, intent_quality, ranker_quality


class Pooler(nn.Module):
    """Token ids -> a pooled, classified vector: a dynamic batch AND a dynamic sequence axis."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(50, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embed(ids) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(pooled), pooled


SPEC = ExportSpec(
    inputs=(TensorSpec("ids", "INT64", (-1,)), TensorSpec("mask", "INT64", (-1,))),
    outputs=(TensorSpec("logits", "FP32", (5,)), TensorSpec("pooled", "FP32", (16,))),
)


def batches(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for rows, length in ((1, 3), (4, 9), (7, 17)):  # batch and sequence sizes the example never had
        mask = (rng.random((rows, length)) < 0.8).astype(np.int64)
        mask[:, 0] = 1
        out.append({"ids": rng.integers(0, 50, (rows, length)), "mask": mask})
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pooler, Path]:
    module = Pooler(seed=1)
    example = {"ids": torch.randint(0, 50, (2, 5)), "mask": torch.ones(2, 5, dtype=torch.int64)}
    path = export_onnx(module, SPEC, example, tmp_path_factory.mktemp("export") / "model.onnx")
    return module, path


def test_export_has_dynamic_batch_and_sequence_axes(exported: tuple[Pooler, Path]) -> None:
    _, path = exported
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["ids", "mask"]
    assert [o.name for o in graph.output] == ["logits", "pooled"]
    for value in (*graph.input, *graph.output):
        first = value.type.tensor_type.shape.dim[0]
        assert first.dim_param and not first.dim_value, f"{value.name}: batch axis is not dynamic"
    for value in graph.input:
        assert value.type.tensor_type.shape.dim[1].dim_param, f"{value.name}: sequence axis is not dynamic"
    assert not list(path.parent.glob("*.data")), "weights must live inside model.onnx (no external data)"


def test_foreign_failures_come_back_as_builders_errors(exported: tuple[Pooler, Path], tmp_path: Path) -> None:
    """A file onnxruntime cannot load, or a module that raises, is named as a builders error with its cause."""
    _, path = exported
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx graph")
    with pytest.raises(ExportFailed, match="onnxruntime cannot load") as refused:
        onnx_session(garbage)
    assert refused.value.__cause__ is not None

    class Raises(nn.Module):
        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(VerificationFailed, match="PyTorch raised on batch 1 of random: RuntimeError: boom"):
        verify_onnx(Raises(), path, batches(), SPEC, Tolerance(), label="random")


def test_verification_passes_on_random_sizes(exported: tuple[Pooler, Path]) -> None:
    module, path = exported
    report = verify_onnx(module, path, batches(), SPEC, Tolerance(min_cosine=0.9999, argmax=True), label="random")
    assert report.passed and report.batches == 3 and report.rows == 12
    logits = next(c for c in report.checks if c.name == "logits")
    assert (
        logits.max_abs_error < 1e-4
        and logits.argmax_agreement == 1.0
        and logits.min_cosine is not None
        and logits.min_cosine > 0.9999
    )
    require_verified(report)  # does not raise
    assert report.as_dict()["outputs"]["pooled"]["passed"] is True


def test_verification_fails_against_other_weights(exported: tuple[Pooler, Path]) -> None:
    _, path = exported
    other = Pooler(seed=2)  # same architecture, different weights: the export is wrong for it
    report = verify_onnx(other, path, batches(), SPEC, Tolerance(min_cosine=0.99, argmax=True), label="golden")
    assert not report.passed
    assert {c.name for c in report.failures()} == {"logits", "pooled"}
    with pytest.raises(VerificationFailed) as raised:
        require_verified(report)
    message = str(raised.value)
    assert "on golden inputs" in message and "logits" in message and "pooled" in message and "max abs" in message


def test_cosine_and_argmax_criteria_fail_on_their_own(exported: tuple[Pooler, Path]) -> None:
    module, path = exported

    class Flipped(nn.Module):
        """The same numbers except the logits' sign: small absolute error allowed, arg-max must still disagree."""

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, pooled = module(ids=ids, mask=mask)
            return -logits, pooled

    loose = Tolerance(atol=100.0, rtol=0.0, min_cosine=0.5, argmax=True)
    report = verify_onnx(Flipped(), path, batches(), SPEC, loose)
    logits = next(c for c in report.checks if c.name == "logits")
    assert not logits.passed and "arg-max" in logits.reason and "cosine" in logits.reason
    assert logits.min_cosine is not None and logits.min_cosine < 0
    assert next(c for c in report.checks if c.name == "pooled").passed


def test_fp16_optimisation_is_verified_the_same_way(exported: tuple[Pooler, Path], tmp_path: Path) -> None:
    module, path = exported
    half = optimize_onnx(path, tmp_path / "half.onnx", fp16=True)
    session = onnx_session(half)
    assert [i.type for i in session.get_inputs()] == ["tensor(int64)", "tensor(int64)"]
    assert session.get_outputs()[0].type == "tensor(float)"  # I/O stays FP32: the Triton config is unchanged
    assert verify_onnx(module, half, batches(), SPEC, Tolerance(atol=2e-2, rtol=2e-2)).passed
    strict = verify_onnx(module, half, batches(), SPEC, Tolerance(atol=1e-7, rtol=0.0))
    assert not strict.passed  # FP16 really changed the numbers
    plain = optimize_onnx(path, tmp_path / "opt.onnx")
    assert verify_onnx(module, plain, batches(), SPEC, Tolerance()).passed


def test_export_errors_name_their_cause(tmp_path: Path) -> None:
    with pytest.raises(ExportFailed, match="mask"):
        export_onnx(Pooler(1), SPEC, {"ids": torch.zeros(2, 3, dtype=torch.int64)}, tmp_path / "m.onnx")
    with pytest.raises(ExportFailed, match="optimising"):
        optimize_onnx(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    with pytest.raises(BadOption, match="dtype"):
        TensorSpec("x", "FLOAT", (3,))
    with pytest.raises(BadOption, match="dims"):
        TensorSpec("x", "FP32", (0,))


def test_verification_with_no_batches_is_refused(exported: tuple[Pooler, Path]) -> None:
    module, path = exported
    with pytest.raises(VerificationFailed, match="no batches"):
        verify_onnx(module, path, [], SPEC, Tolerance())


# -- quality metrics ---------------------------------------------------------------------------------------------


def test_intent_quality_counts_arg_max_hits() -> None:
    logits = np.array([[2.0, 0.1, 0.0], [0.0, 3.0, 1.0], [0.0, 0.2, 0.1], [1.0, 0.0, 5.0]])
    labels = np.array([0, 1, 2, 2])  # the third row predicts 1, not 2
    result = intent_quality(logits, labels)
    assert result["metric"] == "accuracy" and result["value"] == pytest.approx(0.75) and result["rows"] == 4
    # per class F1: class 0 = 1, class 1 = 2/3 (one false positive), class 2 = 2/3 (one miss)
    assert result["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_embedder_recall_at_k() -> None:
    products = np.eye(4)
    queries = np.array([[1.0, 0.1, 0.0, 0.0], [0.0, 0.0, 0.2, 1.0]])
    result = embedder_quality(queries, products, [[0], [2]], k=1)
    assert result["metric"] == "recall@1" and result["value"] == pytest.approx(0.5)
    assert embedder_quality(queries, products, [[0], [2]], k=2)["value"] == pytest.approx(1.0)


def test_ranker_auc_and_agreement() -> None:
    result = ranker_quality(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))
    assert result["metric"] == "auc" and result["value"] == pytest.approx(0.75)
    with pytest.raises(BadOption, match="one class"):
        ranker_quality(np.array([0.1, 0.2]), np.array([1, 1]))
    assert agreement("ranker", np.array([0.1, 0.5, 0.9]), np.array([0.12, 0.6, 0.9])) == pytest.approx(2 / 3)
    assert agreement("intent", np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.6, 0.4], [0.6, 0.4]])) == 0.5
    assert agreement("embedder", np.array([[1.0, 0.0]]), np.array([[2.0, 0.0]])) == pytest.approx(1.0)
    with pytest.raises(BadOption, match="unknown task"):
        agreement("vision", np.zeros(2), np.zeros(2))

"""INT8 / FP16 versions behind a quality gate: each method on a tiny classifier made here, the gate
refusing a quantization that breaks quality (nothing published), and int8-dynamic on the real MiniLM."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from builders import build_steps
from builders.build_inputs import Runner
from builders.errors import BadOption, BuilderError, VerificationFailed
from builders.manifest import sha256_file
from builders.pipeline import BuildOptions, ModelSource, Status, plan, run_build
from builders.quality import intent_quality
from builders.quantize import QuantizeOptions, gate
from builders.repository import ModelRepository
from builders.specs import ExportSpec, TensorSpec, Tolerance
from control_plane.cli.build_cmd import make_options

FEATURES, HIDDEN, CLASSES = 16, 64, 4
SPEC = ExportSpec(inputs=(TensorSpec("x", "FP32", (FEATURES,)),), outputs=(TensorSpec("logits", "FP32", (CLASSES,)),))


class TinyClassifier(nn.Module):
    """Explicit matmuls, so the graph has MatMul nodes (what INT8 quantizes) whichever exporter runs."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.w1 = nn.Parameter(torch.randn(FEATURES, HIDDEN, generator=generator) / FEATURES**0.5)
        self.w2 = nn.Parameter(torch.randn(HIDDEN, CLASSES, generator=generator) / HIDDEN**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w1) @ self.w2


def tiny_source(*, sensitive: bool = False) -> ModelSource:
    """A classifier scored on 256 golden rows with a clear winner, labelled by its own float
    predictions (accuracy 1.0 in float). `sensitive`: the metric is 1 - 100 x the mean distance to the float logits, which any
    INT8 rounding breaks: a quantization that really loses quality, for the gate to refuse."""
    module = TinyClassifier().eval()
    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(1024, FEATURES)).astype(np.float32)
    with torch.no_grad():
        scores = np.sort(module(torch.from_numpy(candidates)).numpy(), axis=1)
    golden_x = candidates[scores[:, -1] - scores[:, -2] > 0.3][:256]  # clear winners: a golden set, not coin flips
    assert len(golden_x) == 256
    with torch.no_grad():
        reference = module(torch.from_numpy(golden_x)).numpy()
    labels = reference.argmax(axis=1)
    golden_batches = [{"x": golden_x[i : i + 64]} for i in range(0, 256, 64)]

    def random_batches(count: int, seed: int) -> list[dict[str, np.ndarray]]:
        r = np.random.default_rng(seed)
        return [{"x": r.normal(size=(n, FEATURES)).astype(np.float32)} for n in [1, 7, 32, 3][:count]]

    def quality(run: Runner) -> dict[str, Any]:
        logits = np.concatenate([run(batch)[0] for batch in golden_batches])
        if sensitive:
            value = 1.0 - 100.0 * float(np.mean(np.abs(logits - reference)))
            return {"metric": "closeness", "value": value, "rows": 256}
        return intent_quality(logits, labels)

    return ModelSource(
        kind="custom",
        module=module,
        spec=SPEC,
        example={"x": torch.from_numpy(golden_x[:4])},
        random_batches=random_batches,
        golden_batches=golden_batches,
        quality=quality,
        tolerance=Tolerance(atol=1e-5, rtol=1e-4, argmax=True),
    )


def build(repo: ModelRepository, quantize: QuantizeOptions, *, sensitive: bool = False) -> Any:
    options = BuildOptions("tiny_classifier", quantize=quantize)
    steps = plan(
        options,
        build_steps.load_step(lambda: tiny_source(sensitive=sensitive)),
        export=build_steps.export_step(dynamo=False),  # the TorchScript exporter: faster for a test
    )
    return run_build(repo, options, steps)


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize(
    ("method", "expected_ops"),
    [
        ("int8-dynamic", {"DynamicQuantizeLinear", "MatMulInteger"}),
        ("int8-static", {"QuantizeLinear", "DequantizeLinear"}),
        ("fp16", {"Cast"}),
    ],
)
def test_each_method_publishes_a_gated_version_with_its_figures(
    repo: ModelRepository, method: str, expected_ops: set[str]
) -> None:
    result = build(repo, QuantizeOptions(method, calibration_rows=100))
    assert result.ok, result.error
    steps = {step.name: step for step in result.steps}
    assert steps["quantize"].status is Status.OK and steps["quality_gate"].status is Status.OK
    published = result.published[0]
    served = published.path / "model.onnx"
    assert expected_ops <= op_types(served)
    manifest = published.manifest
    record = manifest.extra["quantization"]
    assert record["method"] == method and len(record["float_sha256"]) == 64
    assert record["float_sha256"] != sha256_file(served)  # the float source is not what is served
    assert record["gate"]["passed"] and record["gate"]["metric"] == "accuracy"
    assert record["gate"]["drop"] <= 0.01 and record["float_quality"]["value"] == 1.0
    assert manifest.quality["value"] == record["gate"]["quantized"]
    golden = manifest.verification["quantized_golden"]["outputs"]["logits"]
    assert golden["argmax_agreement"] >= 0.9 and golden["max_abs_error"] > 0
    assert {"random", "golden", "quantized_random", "quantized_golden"} <= set(manifest.verification)
    if method == "int8-static":
        assert record["settings"]["calibration_rows"] == 100
        assert manifest.verification["quantized_random"]["enforced"] is False
    assert manifest.settings["quantize"]["method"] == method


def test_a_quantization_that_breaks_quality_is_refused_and_publishes_nothing(repo: ModelRepository) -> None:
    result = build(repo, QuantizeOptions("int8-dynamic", max_quality_drop=0.0), sensitive=True)
    assert not result.ok and result.exit_code == 41 and isinstance(result.error, VerificationFailed)
    message = str(result.error)
    assert "quality gate: closeness of the int8-dynamic graph" in message and "over the allowed 0" in message
    statuses = {step.name: step.status for step in result.steps}
    assert statuses["quality_gate"] is Status.FAIL and statuses["publish"] is Status.SKIPPED
    assert repo.versions("tiny_classifier") == []


def test_a_graph_over_the_numerical_tolerance_is_refused_naming_the_check(repo: ModelRepository) -> None:
    strict = QuantizeOptions("int8-dynamic", tolerance=Tolerance(atol=0.0, rtol=0.0, argmax=True))
    result = build(repo, strict)
    assert result.exit_code == 41
    assert "the int8-dynamic graph differs from its float source on quantized_random inputs" in str(result.error)
    assert "logits: max abs error" in str(result.error)
    assert repo.versions("tiny_classifier") == []


def test_the_gate_names_the_metric_and_the_drop() -> None:
    passed = gate({"metric": "auc", "value": 0.80}, {"metric": "auc", "value": 0.795}, 0.01, "int8-static")
    assert passed["passed"] and abs(passed["drop"] - 0.005) < 1e-9
    with pytest.raises(VerificationFailed, match=r"auc of the fp16 graph is 0\.7700 against 0\.8000.*drop of 0\.0300"):
        gate({"metric": "auc", "value": 0.80}, {"metric": "auc", "value": 0.77}, 0.01, "fp16")
    assert gate({"skipped": "no labels"}, {"skipped": "no labels"}, 0.01, "fp16")["scored"] is False


def test_options_are_checked_and_steps_skipped_when_not_asked(repo: ModelRepository) -> None:
    with pytest.raises(BadOption, match="use one of"):
        QuantizeOptions("int4")
    with pytest.raises(BadOption, match="calibration-rows"):
        QuantizeOptions("int8-static", calibration_rows=0)
    with pytest.raises(BadOption, match="--quantize fp16 alone"):
        BuildOptions("m", fp16=True, quantize=QuantizeOptions("fp16"))
    options = make_options("m", quantize="INT8-static", calibration_rows=64, max_quality_drop=0.005, keep_float="Gemm")
    assert options.quantize == QuantizeOptions(
        "int8-static", calibration_rows=64, max_quality_drop=0.005, keep_float=("Gemm",)
    )
    steps = {s.name: s for s in plan(BuildOptions("m"), build_steps.load_step(tiny_source))}
    assert steps["quantize"].skip and steps["quality_gate"].skip
    assert "quantization" not in steps["publish"].needs


def test_fp16_without_its_converter_names_the_missing_module(
    repo: ModelRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime.transformers.float16", None)
    result = build(repo, QuantizeOptions("fp16"))
    assert isinstance(result.error, BuilderError)
    assert "onnxruntime.transformers.float16" in str(result.error)
    assert repo.versions("tiny_classifier") == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "expected_op", "min_cosine"),
    [("int8-dynamic", "MatMulInteger", 0.95), ("int8-static", "QuantizeLinear", 0.90), ("fp16", "Cast", 0.999)],
)
def test_each_method_on_the_real_minilm_keeps_recall(
    repo: ModelRepository, method: str, expected_op: str, min_cosine: float
) -> None:
    from builders.text_models import build_embedder, minilm_dir

    result = build_embedder(repo, minilm_dir(), BuildOptions("product_embedder", quantize=QuantizeOptions(method)))
    assert result.ok, result.error
    record = result.published[0].manifest.extra["quantization"]
    assert record["method"] == method
    assert record["gate"]["metric"] == "recall@10" and record["gate"]["drop"] <= 0.01
    assert record["bytes"] < record["float_bytes"] * 0.75  # INT8: the word-embedding Gather stays float; FP16: half
    golden = result.published[0].manifest.verification["quantized_golden"]["outputs"]["embedding"]
    assert golden["min_cosine"] >= min_cosine
    assert expected_op in op_types(result.published[0].path / "model.onnx")


@pytest.mark.triton
def test_the_quantized_version_served_by_triton_answers_what_the_build_verified(
    repo: ModelRepository, triton: Any
) -> None:
    """Triton serves the INT8 graph the gate passed: its answers are onnxruntime's answers on that same file."""
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient

    from tests.conftest import load_versions

    result = build(repo, QuantizeOptions("int8-dynamic"))
    assert result.ok, result.error
    published = result.published[0]
    client = grpcclient.InferenceServerClient(triton.state.grpc_url)
    load_versions(client, repo, published.model, [published.version])
    x = tiny_source().golden_batches[0]["x"][:8]
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    served = client.infer(published.model, [tensor], model_version=str(published.version)).as_numpy("logits")
    session = ort.InferenceSession(str(published.path / "model.onnx"), providers=["CPUExecutionProvider"])
    verified = session.run(["logits"], {"x": x})[0]
    np.testing.assert_allclose(served, verified, rtol=1e-5, atol=1e-5)
    float_logits = tiny_source().module(torch.from_numpy(x)).detach().numpy()
    assert not np.allclose(served, float_logits, atol=1e-6)  # it really is the quantized graph
    assert np.array_equal(served.argmax(axis=1), float_logits.argmax(axis=1))

"""Small ONNX classifiers with honest differences, for control-plane tests against the real Triton.

- `good`: logits = x @ W, the labels of the golden set come from W (accuracy 1.0).
- `same`: the same weights again (an A/A rollout).
- `slow`: the same answers from a larger graph (an extra 16x2048 and four 2048x2048 matmuls per row whose
  result is scaled to nothing): more compute per request, never a sleep.
- `worse`: weights with heavy noise, so accuracy on the golden set drops.
- `failing`: the right answers, but a lookup table too small for one golden row's feature value
  (as an embedding table exported before new category ids appeared): requests holding that row
  fail inside onnxruntime, about one request in twelve.
- `broken`: a file that is not ONNX at all; Triton cannot load it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from builders.manifest import Manifest
from builders.repository import ModelRepository, parse_config

FEATURES, CLASSES, ROWS = 16, 4, 96
CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [{{ name: "x" data_type: TYPE_FP32 dims: [16] }}]
output [{{ name: "logits" data_type: TYPE_FP32 dims: [4] }}]
dynamic_batching {{ max_queue_delay_microseconds: 500 }}
instance_group [{{ count: 1 kind: KIND_CPU }}]
"""


def true_weights() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(FEATURES, CLASSES)).astype(np.float32)


def golden_set() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(11).normal(size=(ROWS, FEATURES)).astype(np.float32)
    return x, np.argmax(x @ true_weights(), axis=1).astype(np.int64)


def _save(path: Path, name: str, nodes: list, inits: list) -> Path:
    """A checked opset-17 model with input x [batch, 16] and output logits [batch, 4]."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def failing_onnx(path: Path, weights: np.ndarray, threshold: float) -> Path:
    """logits = x @ W, plus a Gather whose index is out of range where x[:, 0] > threshold."""
    inits = [
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(np.zeros((10, 1), np.float32), "table"),
        numpy_helper.from_array(np.array([threshold], np.float32), "thr"),
        numpy_helper.from_array(np.array([1000], np.int64), "far"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["base"]),
        helper.make_node("Slice", ["x", "zero", "one", "one"], ["first"]),
        helper.make_node("Greater", ["first", "thr"], ["over"]),
        helper.make_node("Cast", ["over"], ["flag"], to=TensorProto.INT64),
        helper.make_node("Mul", ["flag", "far"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["looked"]),
        helper.make_node("Flatten", ["looked"], ["flat"], axis=1),
        helper.make_node("Add", ["base", "flat"], ["logits"]),
    ]
    return _save(path, "failing_classifier", nodes, inits)


def classifier_onnx(path: Path, weights: np.ndarray, *, heavy: int = 0) -> Path:
    nodes = [helper.make_node("MatMul", ["x", "W"], ["base"])]
    inits = [numpy_helper.from_array(weights, "W")]
    if heavy:
        rng = np.random.default_rng(3)
        inits += [
            numpy_helper.from_array(rng.normal(size=(FEATURES, heavy)).astype(np.float32), "A"),
            numpy_helper.from_array(rng.normal(size=(heavy, heavy)).astype(np.float32) / heavy, "B"),
            numpy_helper.from_array(np.array([1e-30], np.float32), "tiny"),
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
        ]
        nodes += [
            helper.make_node("MatMul", ["x", "A"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["r1"]),
            *[helper.make_node("MatMul", [f"r{i}", "B"], [f"r{i + 1}"]) for i in range(1, 5)],
            helper.make_node("ReduceSum", ["r5", "axis"], ["s"], keepdims=1),
            helper.make_node("Mul", ["s", "tiny"], ["z"]),
            helper.make_node("Add", ["base", "z"], ["logits"]),
        ]
    else:
        nodes[0] = helper.make_node("MatMul", ["x", "W"], ["logits"])
    return _save(path, "classifier", nodes, inits)


def publish(
    repo: ModelRepository,
    scratch: Path,
    name: str,
    variant: str,
    *,
    heavy: int | None = None,
    failing_threshold: float | None = None,
) -> int:
    """Publish one variant as the next version of `name`, with its golden set; returns the version.

    Optional knobs for the benchmarks (the defaults keep every variant as the tests know it):
    `heavy` sets the hidden size of `slow` (default 2048), so its latency can be tuned to a ratio;
    `failing_threshold` moves the lookup of `failing` so only rows with x[:, 0] above it fail (above
    every golden row, the golden probes pass and only live traffic with such rows fails).
    """
    scratch.mkdir(parents=True, exist_ok=True)
    x, labels = golden_set()
    golden = scratch / f"{name}-golden.npz"
    np.savez(golden, input__x=x, labels=labels)
    weights = true_weights()
    model = scratch / f"{name}-{variant}.onnx"
    if variant == "worse":
        weights = weights + np.random.default_rng(5).normal(scale=2.5, size=weights.shape).astype(np.float32)
    if variant == "broken":
        model.write_bytes(b"this is not an ONNX file")
    elif variant == "failing":
        top = np.sort(x[:, 0])
        default = float((top[-1] + top[-2]) / 2)  # exactly one golden row fails
        failing_onnx(model, weights, threshold=default if failing_threshold is None else failing_threshold)
    else:
        size = (2048 if heavy is None else heavy) if variant == "slow" else 0
        classifier_onnx(model, weights, heavy=size)
    accuracy = float(np.mean(np.argmax(x @ weights, axis=1) == labels))
    manifest = Manifest(
        model=name,
        version=0,
        kind="classifier",
        format="onnx",
        builder_version="test",
        quality={"metric": "accuracy", "value": accuracy},
        extra={"golden_task": "classifier", "variant": variant},
    )
    published = repo.publish_version(
        name,
        files={"model.onnx": model, "golden.npz": golden},
        manifest=manifest,
        config=parse_config(CONFIG.format(name=name)),
    )
    return published.version

"""Triton configs built as ModelConfig protobufs: what the CLI asks for is what config.pbtxt says."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from builders.errors import BadOption
from builders.onnx_export import ExportSpec, TensorSpec
from builders.repository import format_config, parse_config
from builders.triton_config import (
    BatchingOptions,
    EnsembleStep,
    InstanceOptions,
    ensemble_config,
    model_config,
    python_model_config,
)

SPEC = ExportSpec(
    inputs=(TensorSpec("input_ids", "INT64", (-1,)), TensorSpec("attention_mask", "INT64", (-1,))),
    outputs=(TensorSpec("embedding", "FP32", (384,)),),
)


def test_model_config_round_trips_with_batching_and_instances() -> None:
    config = model_config(
        "product_embedder",
        SPEC,
        batching=BatchingOptions(max_batch_size=64, preferred_batch_sizes=(16, 32), max_queue_delay_us=2500),
        instances=InstanceOptions(count=3, kind="KIND_GPU", gpus=(0,)),
    )
    text = format_config(config)
    parsed = parse_config(text)
    assert parsed == config and text_format.MessageToString(parsed) == text
    assert parsed.platform == "onnxruntime_onnx" and parsed.max_batch_size == 64
    assert parsed.HasField("dynamic_batching")
    assert list(parsed.dynamic_batching.preferred_batch_size) == [16, 32]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 2500
    (group,) = parsed.instance_group
    assert group.count == 3 and group.kind == mc.ModelInstanceGroup.KIND_GPU and list(group.gpus) == [0]
    assert [(i.name, i.data_type, list(i.dims)) for i in parsed.input] == [
        ("input_ids", mc.TYPE_INT64, [-1]),
        ("attention_mask", mc.TYPE_INT64, [-1]),
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in parsed.output] == [("embedding", mc.TYPE_FP32, [384])]


def test_dynamic_batching_off_and_no_batching() -> None:
    off = model_config("m", SPEC, batching=BatchingOptions(max_batch_size=8, dynamic_batching=False))
    assert off.max_batch_size == 8 and not off.HasField("dynamic_batching")
    assert "dynamic_batching" not in format_config(off)
    unbatched = model_config("m", SPEC, batching=BatchingOptions(max_batch_size=0))
    assert not unbatched.HasField("dynamic_batching")
    assert list(unbatched.input[0].dims) == [-1, -1]  # the batch axis becomes an explicit dim
    assert list(unbatched.output[0].dims) == [-1, 384]


def test_python_and_tensorrt_platforms() -> None:
    tokenizer = python_model_config(
        "intent_tokenizer",
        ExportSpec(inputs=(TensorSpec("text", "BYTES", (1,)),), outputs=SPEC.inputs),
        instances=InstanceOptions(count=2),
    )
    assert tokenizer.backend == "python" and not tokenizer.platform
    assert tokenizer.input[0].data_type == mc.TYPE_STRING
    assert tokenizer.instance_group[0].count == 2 and tokenizer.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    plan = model_config("m", SPEC, platform="tensorrt_plan")
    assert parse_config(format_config(plan)).platform == "tensorrt_plan"


def test_ensemble_steps_name_no_version() -> None:
    config = ensemble_config(
        "intent_text",
        inputs=(TensorSpec("text", "BYTES", (1,)),),
        outputs=(TensorSpec("logits", "FP32", (8,)),),
        steps=[
            EnsembleStep("intent_tokenizer", {"text": "text"}, {"input_ids": "ids", "attention_mask": "mask"}),
            EnsembleStep("intent", {"input_ids": "ids", "attention_mask": "mask"}, {"logits": "logits"}),
        ],
        max_batch_size=16,
    )
    parsed = parse_config(format_config(config))
    assert parsed.platform == "ensemble" and parsed.max_batch_size == 16
    first, second = parsed.ensemble_scheduling.step
    assert (first.model_name, first.model_version) == ("intent_tokenizer", -1)
    assert dict(first.output_map) == {"input_ids": "ids", "attention_mask": "mask"}
    assert dict(second.input_map) == {"input_ids": "ids", "attention_mask": "mask"}
    assert not parsed.instance_group  # an ensemble has no instances of its own


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: BatchingOptions(max_batch_size=-1), "max_batch_size"),
        (lambda: BatchingOptions(max_batch_size=8, preferred_batch_sizes=(16,)), "preferred"),
        (lambda: BatchingOptions(max_queue_delay_us=-5), "queue"),
        (lambda: InstanceOptions(count=0), "count"),
        (lambda: InstanceOptions(kind="KIND_TPU"), "KIND_TPU"),
        (lambda: ensemble_config("e", inputs=(), outputs=(), steps=[], max_batch_size=1), "at least one step"),
    ],
)
def test_bad_options_are_refused(make: object, match: str) -> None:
    with pytest.raises(BadOption, match=match):
        make()  # type: ignore[operator]

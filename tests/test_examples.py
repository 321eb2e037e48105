"""`build_examples` and `build_variant`: the three example models, their honest variants, served by the real Triton."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import json_format

from builders.errors import BadOption
from builders.examples import build_examples, build_variant, checkpoint_cache
from builders.golden_inputs import golden_inputs, score
from builders.pipeline import BuildResult, StepResult
from builders.repository import ModelRepository
from builders.text_models import minilm_dir
from control_plane.local_triton import LocalTriton

pytestmark = [pytest.mark.triton, pytest.mark.slow]

ENTRIES = {
    "product_embedder",
    "product_embedder_tokenizer",
    "product_embedder_text",
    "query_intent",
    "query_intent_tokenizer",
    "query_intent_text",
    "ctr_ranker",
}


@dataclass(frozen=True)
class Examples:
    repo: ModelRepository
    results: list[BuildResult]
    steps: list[tuple[str, StepResult]]


def require_ok(result: BuildResult) -> BuildResult:
    assert result.ok, json.dumps(result.as_dict(), indent=1)
    return result


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Examples:
    repo = ModelRepository(tmp_path_factory.mktemp("examples") / "model_repository")
    steps: list[tuple[str, StepResult]] = []

    def progress(name: str, result: StepResult | None) -> None:
        if result is not None:
            steps.append((name, result))

    results = [require_ok(r) for r in build_examples(repo, progress=progress)]
    return Examples(repo, results, steps)


def onnx_latency(path: Path, batch: dict[str, np.ndarray], runs: int = 40) -> float:
    """Median seconds per call of one ONNX file on one batch (single-threaded, after a warm-up)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    for _ in range(5):
        session.run(None, batch)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, batch)
        timings.append(time.perf_counter() - started)
    return float(np.median(timings))


def test_build_examples_publishes_the_three_models(examples: Examples) -> None:
    repo = examples.repo
    assert [r.model for r in examples.results] == ["product_embedder", "query_intent", "ctr_ranker"]
    assert [r.kind for r in examples.results] == ["embedder", "intent", "ranker"]
    assert set(repo.models()) >= ENTRIES
    for name in ("product_embedder", "query_intent", "ctr_ranker"):
        assert repo.versions(name) == [1]
        manifest = repo.read_manifest(name, 1)
        assert manifest.quality.get("value") is not None, (name, manifest.quality)
        assert manifest.check_files(repo.version_dir(name, 1)) == []
    assert repo.read_manifest("query_intent", 1).quality["value"] > 0.85  # the trained classifier has learnt
    assert repo.read_manifest("product_embedder", 1).quality["metric"] == "recall@10"
    assert repo.read_manifest("product_embedder", 1).source["path"] == str(minilm_dir())
    assert ("train", "OK") in {(name, str(result.status)) for name, result in examples.steps}
    # Checkpoints go to the cache beside the repository; version folders hold only what Triton serves.
    cache = checkpoint_cache(repo)
    assert cache == repo.root.resolve().parent / ".shepherd" / "checkpoints"
    assert (cache / "query_intent-base-seed0" / "model.safetensors").is_file()
    assert list(cache.glob("ctr_ranker-good-*.pt"))
    served = {p.name for p in repo.root.rglob("*") if p.is_file()}
    assert not {name for name in served if name.endswith((".safetensors", ".pt", ".bin"))}


def load_version(client: grpcclient.InferenceServerClient, repo: ModelRepository, name: str, version: int) -> None:
    config = repo.read_config(name)
    config.version_policy.specific.versions[:] = [version]
    client.load_model(name, config=json.dumps(json_format.MessageToDict(config)))


@pytest.fixture(scope="module")
def client(examples: Examples) -> Iterator[grpcclient.InferenceServerClient]:
    with LocalTriton(examples.repo.root, state_dir=examples.repo.root.parent / "triton-state") as server:
        triton = grpcclient.InferenceServerClient(server.state.grpc_url)
        load_version(triton, examples.repo, "query_intent", 1)
        for name in ("product_embedder_text", "query_intent_text", "ctr_ranker"):
            triton.load_model(name)
        yield triton


def text_input(texts: list[str]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    return tensor


def test_examples_serve_raw_text_in_triton(examples: Examples, client: grpcclient.InferenceServerClient) -> None:
    from sentence_transformers import SentenceTransformer

    for name in ENTRIES:
        assert client.is_model_ready(name), name
    queries = ["waterproof hiking boots for women", "where is my order 552211", "reset my password"]
    served = client.infer("product_embedder_text", [text_input(queries)]).as_numpy("embedding")
    reference = SentenceTransformer(str(minilm_dir()), device="cpu").encode(queries)
    cosines = np.sum(served * reference, axis=1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosines.min() >= 0.999
    logits = client.infer("query_intent_text", [text_input(queries[1:])]).as_numpy("logits")
    labels = examples.repo.read_manifest("query_intent", 1).source["labels"]
    assert [labels[i] for i in logits.argmax(axis=1)] == ["order_status", "account_help"]


def test_golden_inputs_of_each_example_score_like_the_build(
    examples: Examples, client: grpcclient.InferenceServerClient
) -> None:
    repo = examples.repo
    for name, output in (("query_intent", "logits"), ("product_embedder", "embedding"), ("ctr_ranker", None)):
        golden = golden_inputs(repo, name, 1)
        session = ort.InferenceSession(
            str(repo.version_dir(name, 1) / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        names = [output] if output else None
        outputs = np.concatenate([session.run(names, batch)[0] for batch in golden.batches(32)])
        key = output or repo.read_config(name).output[0].name
        expected = repo.read_manifest(name, 1).quality["value"]
        assert score(golden, {key: outputs})["value"] == pytest.approx(expected, abs=1e-6), name
    ranker = golden_inputs(repo, "ctr_ranker", 1, limit=8)
    tensors = []
    for key, value in ranker.inputs.items():
        tensor = grpcclient.InferInput(key, list(value.shape), "INT64" if value.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    result = client.infer("ctr_ranker", tensors, model_version="1")
    local = ort.InferenceSession(
        str(repo.version_dir("ctr_ranker", 1) / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(
        result.as_numpy(repo.read_config("ctr_ranker").output[0].name), local.run(None, ranker.inputs)[0], atol=1e-5
    )


def test_intent_variants_are_honest(examples: Examples) -> None:
    repo = examples.repo
    base = repo.read_manifest("query_intent", 1)
    built = {v: require_ok(build_variant(repo, "query_intent", v)) for v in ("retrained", "slow", "damaged")}
    assert {v: r.version for v, r in built.items()} == {"retrained": 2, "slow": 3, "damaged": 4}
    assert repo.versions("query_intent_tokenizer") == [1]  # every variant shares the tokenizer
    quality = {v: repo.read_manifest("query_intent", r.version or 0).quality for v, r in built.items()}
    assert quality["retrained"]["value"] > 0.85 and abs(quality["retrained"]["value"] - base.quality["value"]) < 0.1
    assert quality["damaged"]["value"] < base.quality["value"] - 0.2  # half the labels shifted: clearly worse
    assert quality["damaged"]["macro_f1"] < base.quality["macro_f1"] - 0.2
    assert quality["slow"]["value"] > 0.85  # as good, only slower
    golden = golden_inputs(repo, "query_intent", 1)
    one = {name: value[:1] for name, value in golden.inputs.items()}
    fast = onnx_latency(repo.version_dir("query_intent", 1) / "model.onnx", one)
    slow = onnx_latency(repo.version_dir("query_intent", 3) / "model.onnx", one)
    assert slow > 2.0 * fast, (slow, fast)  # measured per request in onnxruntime, not a sleep


def test_ranker_variants_and_bad_variant_names(examples: Examples) -> None:
    repo = examples.repo
    damaged = require_ok(build_variant(repo, "ctr_ranker", "damaged"))
    assert damaged.version == 2
    good_auc = repo.read_manifest("ctr_ranker", 1).quality["value"]
    assert repo.read_manifest("ctr_ranker", 2).quality["value"] < good_auc - 0.1
    with pytest.raises(BadOption, match="unknown intent variant"):
        build_variant(repo, "query_intent", "sleepy")
    with pytest.raises(BadOption, match="has no variants"):
        build_variant(repo, "product_embedder", "slow")
    assert repo.versions("query_intent")[-1] == 4 and repo.versions("ctr_ranker") == [1, 2]

"""Hugging Face text models through the builders into the real local Triton: raw text in, checked against PyTorch.

One repository is built once for the module (a tiny intent classifier, a tiny sentence-transformers
embedder with its transformer in a subfolder, and the real all-MiniLM-L6-v2), then served by one
real tritonserver; the broken-checkpoint tests use their own repositories.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

from builders.build_steps import load_step
from builders.errors import InvalidModelName, RepositoryError, SourceError
from builders.golden_data import INTENTS, intent_queries, read_intents
from builders.golden_inputs import golden_inputs, score
from builders.intent_example import make_wordpiece_tokenizer
from builders.pipeline import BuildOptions, BuildResult, Status, plan
from builders.ranker import ranker_source
from builders.repository import ModelRepository
from builders.text_models import build_embedder, build_intent, inspect_checkpoint, minilm_dir, text_plan
from control_plane.local_triton import LocalTriton

pytestmark = [pytest.mark.triton, pytest.mark.slow]

TEXTS = [
    "where is my order 123456",
    "red running shoes for women",
    "reset my password",
    "how much is delivery to oslo",
    "Volta kids' premium running shoes, black",
    "",
    "a much longer query about a waterproof rain jacket by northpeak that i want to return for a refund",
]


def tiny_tokenizer(vocab_size: int = 300) -> Any:
    return make_wordpiece_tokenizer([q for q, _ in intent_queries(20, seed=3)], vocab_size=vocab_size)


def tiny_bert_config(vocab: int, **extra: Any) -> BertConfig:
    return BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **extra,
    )


def tiny_intent_checkpoint(folder: Path, *, seed: int = 0, vocab_size: int = 300) -> Path:
    """An untrained tiny BertForSequenceClassification with the example intents as labels."""
    tokenizer = tiny_tokenizer(vocab_size)
    config = tiny_bert_config(
        len(tokenizer),
        num_labels=len(INTENTS),
        id2label=dict(enumerate(INTENTS)),
        label2id={n: i for i, n in enumerate(INTENTS)},
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_sentence_transformer(root: Path) -> Path:
    """The classic sentence-transformers layout: transformer in 0_Transformer/, mean pooling, Normalize."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(1)
    BertModel(tiny_bert_config(len(tokenizer)), add_pooling_layer=False).save_pretrained(root / "0_Transformer")
    tokenizer.save_pretrained(root / "0_Transformer")
    (root / "0_Transformer" / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    modules = [
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (root / "modules.json").write_text(json.dumps(modules))
    return root


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def text_input(texts: list[str]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    return tensor


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".shepherd.lock"
    }


def require_ok(result: BuildResult) -> BuildResult:
    assert result.ok, json.dumps(result.as_dict(), indent=1)
    return result


@dataclass(frozen=True)
class Built:
    base: Path
    repo: ModelRepository
    intent_dir: Path
    st_dir: Path
    results: dict[str, BuildResult]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    base = tmp_path_factory.mktemp("text")
    repo = ModelRepository(base / "model_repository")
    repo.root.mkdir()
    found = Built(base, repo, tiny_intent_checkpoint(base / "intent"), tiny_sentence_transformer(base / "st"), {})
    found.results["intent"] = require_ok(build_intent(repo, found.intent_dir, BuildOptions("intent")))
    found.results["tiny_embedder"] = require_ok(build_embedder(repo, found.st_dir, BuildOptions("tiny_embedder")))
    found.results["minilm"] = require_ok(build_embedder(repo, minilm_dir(), BuildOptions("minilm")))
    return found


@pytest.fixture(scope="module")
def client(built: Built) -> Iterator[grpcclient.InferenceServerClient]:
    with LocalTriton(built.repo.root, state_dir=built.base / "triton-state") as server:
        triton = grpcclient.InferenceServerClient(server.state.grpc_url)
        for name in ("intent", "tiny_embedder", "minilm"):
            triton.load_model(f"{name}_text")  # explicit mode loads the ensemble's steps with it
            for model in (name, f"{name}_tokenizer", f"{name}_text"):
                assert triton.is_model_ready(model), model
        yield triton


def test_published_entries_and_manifests(built: Built) -> None:
    repo = built.repo
    for name in ("intent", "tiny_embedder", "minilm"):
        assert repo.versions(name) == [1]
        assert repo.versions(f"{name}_tokenizer") == [1] and repo.versions(f"{name}_text") == [1]
        folder = repo.version_dir(name, 1)
        assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx", "tokenizer.json"]
        manifest = repo.read_manifest(name, 1)
        assert manifest.check_files(folder) == []
        assert manifest.verification["random"]["passed"] and manifest.verification["golden"]["passed"]
        assert manifest.source["sha256"] and manifest.source["tokenizer_sha256"]
        tokenizer_folder = repo.version_dir(f"{name}_tokenizer", 1)
        assert sorted(p.name for p in tokenizer_folder.iterdir()) == ["manifest.json", "model.py", "tokenizer.json"]
        assert (tokenizer_folder / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
        ensemble = repo.read_config(f"{name}_text")
        assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [f"{name}_tokenizer", name]
        assert all(s.model_version == -1 for s in ensemble.ensemble_scheduling.step)
    intent = repo.read_manifest("intent", 1)
    assert intent.kind == "intent" and intent.source["labels"] == list(INTENTS)
    assert intent.quality["metric"] == "accuracy" and 0.0 <= intent.quality["value"] <= 1.0
    assert "macro_f1" in intent.quality and intent.quality["rows"] == len(read_intents())
    assert intent.verification["golden"]["outputs"]["logits"]["argmax_agreement"] == 1.0
    minilm = repo.read_manifest("minilm", 1)
    assert minilm.source["layout"] == "sentence-transformers" and minilm.source["max_length"] == 256
    assert minilm.quality["metric"] == "recall@10" and minilm.quality["value"] > 0.8  # the real model finds products
    assert minilm.verification["golden"]["outputs"]["embedding"]["min_cosine"] > 0.9999
    tiny = repo.read_manifest("tiny_embedder", 1)
    assert tiny.source["model_dir"].endswith("0_Transformer") and tiny.source["max_length"] == 48
    assert tiny.quality["value"] < minilm.quality["value"]  # random weights rank worse than MiniLM


def test_minilm_ensemble_matches_sentence_transformers(client: grpcclient.InferenceServerClient) -> None:
    from sentence_transformers import SentenceTransformer

    served = client.infer("minilm_text", [text_input(TEXTS)]).as_numpy("embedding")
    reference = SentenceTransformer(str(minilm_dir()), device="cpu").encode(TEXTS)
    assert served.shape == (len(TEXTS), 384)
    assert cosine(served, reference).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_tiny_sentence_transformer_subfolder_layout(built: Built, client: grpcclient.InferenceServerClient) -> None:
    from sentence_transformers import SentenceTransformer

    served = client.infer("tiny_embedder_text", [text_input(TEXTS)]).as_numpy("embedding")
    reference = SentenceTransformer(str(built.st_dir), device="cpu").encode(TEXTS)
    assert served.shape == (len(TEXTS), 32)
    assert cosine(served, reference).min() >= 0.9999


def test_intent_ensemble_matches_pytorch(built: Built, client: grpcclient.InferenceServerClient) -> None:
    folder = built.intent_dir
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy()
    served = client.infer("intent_text", [text_input(TEXTS)]).as_numpy("logits")
    np.testing.assert_allclose(served, expected, atol=1e-4, rtol=1e-3)
    # The tokenizer model alone gives what the Hugging Face tokenizer gives.
    result = client.infer("intent_tokenizer", [text_input(TEXTS)])
    np.testing.assert_array_equal(result.as_numpy("input_ids"), batch["input_ids"].numpy())
    np.testing.assert_array_equal(result.as_numpy("attention_mask"), batch["attention_mask"].numpy())


def test_concurrent_requests_of_different_lengths(built: Built, client: grpcclient.InferenceServerClient) -> None:
    """Dynamic batching joins requests; each must still get its own row's answer."""
    folder = built.intent_dir
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    results: dict[int, np.ndarray] = {}

    def done(index: int):
        def callback(result: grpcclient.InferResult | None, error: Exception | None) -> None:
            assert error is None, error
            assert result is not None
            results[index] = result.as_numpy("logits")

        return callback

    texts = [[text] for text in TEXTS] * 3
    for index, rows in enumerate(texts):
        client.async_infer("intent_text", [text_input(rows)], callback=done(index))
    deadline = time.monotonic() + 60
    while len(results) < len(texts) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(results) == len(texts)
    for index, rows in enumerate(texts):
        encoded = tokenizer(rows, truncation=True, return_tensors="pt")
        with torch.no_grad():
            expected = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits.numpy()
        np.testing.assert_allclose(results[index], expected, atol=1e-4, rtol=1e-3)


def test_golden_inputs_score_like_the_build(built: Built, client: grpcclient.InferenceServerClient) -> None:
    """A live probe of a specific version sends golden_inputs to it directly and scores what the build scored."""
    repo = built.repo
    for name, output in (("intent", "logits"), ("minilm", "embedding")):
        golden = golden_inputs(repo, name, 1)
        assert golden.task == repo.read_manifest(name, 1).kind
        session = ort.InferenceSession(
            str(repo.version_dir(name, 1) / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        outputs = np.concatenate([session.run([output], batch)[0] for batch in golden.batches(64)])
        assert score(golden, {output: outputs})["value"] == pytest.approx(
            repo.read_manifest(name, 1).quality["value"], abs=1e-6
        )
        tensors = []
        for key, value in golden.inputs.items():
            tensor = grpcclient.InferInput(key, list(value[:16].shape), "INT64")
            tensor.set_data_from_numpy(value[:16])
            tensors.append(tensor)
        served = client.infer(name, tensors, model_version="1").as_numpy(output)
        np.testing.assert_allclose(served, outputs[:16], atol=1e-4)
    small = golden_inputs(repo, "minilm", 1, limit=20)
    full = golden_inputs(repo, "minilm", 1)
    assert small.meta["n_queries"] == 20 and 40 <= small.rows < full.rows  # 20 queries, >= 20 products
    kept_ids = small.meta["product_ids"]
    for index, relevant in enumerate(small.meta["relevant"]):  # every relevant product of a kept query is kept
        assert [kept_ids[i] for i in relevant] == [full.meta["product_ids"][i] for i in full.meta["relevant"][index]]
    labels = golden_inputs(repo, "intent", 1, limit=10).labels
    assert labels is not None and labels.shape == (10,)


def test_rebuild_publishes_tokenizer_and_ensemble_only_when_changed(built: Built, tmp_path: Path) -> None:
    repo = built.repo
    again = require_ok(build_intent(repo, built.intent_dir, BuildOptions("intent")))
    assert again.version == 2 and [p.model for p in again.published] == ["intent"]
    assert repo.versions("intent_tokenizer") == [1] and repo.versions("intent_text") == [1]
    other = tiny_intent_checkpoint(tmp_path / "other-vocab", vocab_size=200)  # another vocabulary
    changed = require_ok(build_intent(repo, other, BuildOptions("intent")))
    assert [p.model for p in changed.published] == ["intent", "intent_tokenizer"]
    assert repo.versions("intent_tokenizer") == [1, 2] and repo.versions("intent_text") == [1]


def test_text_plans_bring_their_exporter_and_entries_and_a_ranker_plan_does_not(tmp_path: Path) -> None:
    """Built from the options and the kind alone: no checkpoint is read until the plan runs."""
    options = BuildOptions("m")
    intent = {step.name: step for step in text_plan(options, tmp_path / "nowhere", "intent")}
    embedder = {step.name: step for step in text_plan(options, tmp_path / "nowhere", "embedder")}
    ranker = plan(options, load_step(lambda: ranker_source("pkg.mod:make", tmp_path / "w.pt")))
    assert list(intent)[-2:] == ["text_entries", "publish"] and not intent["text_entries"].skip
    assert {"checkpoint", "spec"} <= set(intent["text_entries"].needs) and "entries" in intent["publish"].needs
    assert "checkpoint" in intent["load"].makes and "checkpoint" not in ranker[1].makes
    assert "text_entries" not in [step.name for step in ranker] and ranker[-1].name == "publish"
    assert intent.keys() == embedder.keys()
    engine_only = {s.name: s for s in text_plan(BuildOptions("m", formats=("tensorrt",)), tmp_path, "intent")}
    assert engine_only["text_entries"].skip == "no ONNX model published"
    assert "entries" not in engine_only["publish"].needs and "entries" not in ranker[-1].needs


def test_embedders_export_with_torchscript_and_classifiers_with_dynamo(built: Built) -> None:
    exporters = {
        name: next(step.figures["exporter"] for step in result.steps if step.name == "export")
        for name, result in built.results.items()
    }
    assert exporters == {"intent": "dynamo", "tiny_embedder": "torchscript", "minilm": "torchscript"}
    entries = [step for step in built.results["intent"].steps if step.name == "text_entries"]
    assert [step.status for step in entries] == [Status.OK]


def broken_cases(base: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (checkpoint, kind, text the SourceError must contain)."""
    cases: dict[str, tuple[Path, str, str]] = {}
    corrupt = tiny_intent_checkpoint(base / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 10)
    cases["corrupt weights"] = (corrupt, "intent", "cannot load the weights")
    no_config = tiny_intent_checkpoint(base / "no-config")
    (no_config / "config.json").unlink()
    cases["missing config.json"] = (no_config, "intent", "config.json is missing")
    mismatch = base / "mismatch"
    tokenizer = tiny_tokenizer(300)
    BertModel(tiny_bert_config(50)).save_pretrained(mismatch)  # 50 embedding rows, 300 tokens
    tokenizer.save_pretrained(mismatch)
    cases["tokenizer vocab mismatch"] = (mismatch, "embedder", "does not match the model")
    no_tokenizer = tiny_intent_checkpoint(base / "no-tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    cases["missing tokenizer.json"] = (no_tokenizer, "intent", "no tokenizer.json")
    cases["missing directory"] = (base / "nowhere", "intent", "not found")
    st_broken = tiny_sentence_transformer(base / "st-broken")
    (st_broken / "1_Pooling" / "config.json").write_text("{not json")
    cases["broken pooling config"] = (st_broken, "embedder", "pooling config does not parse")
    st_modules = tiny_sentence_transformer(base / "st-modules")
    (st_modules / "modules.json").write_text('{"0": "not a list"}')
    cases["modules.json not a list"] = (st_modules, "embedder", "is not a list of modules")
    return cases


def test_broken_checkpoints_are_refused_and_publish_nothing(built: Built, tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "model_repository")
    require_ok(build_intent(repo, built.intent_dir, BuildOptions("intent")))
    before = snapshot(repo.root)
    for case, (folder, kind, message) in broken_cases(tmp_path).items():
        build = build_intent if kind == "intent" else build_embedder
        result = build(repo, folder, BuildOptions("intent" if kind == "intent" else "embedder"))
        assert isinstance(result.error, SourceError), (case, result.error)
        assert message in str(result.error), (case, str(result.error))
        assert result.published == ()
        load = next(step for step in result.steps if step.name == "load")
        assert load.status == Status.FAIL and message in load.message, case
        assert snapshot(repo.root) == before, case
    assert not list(repo.root.glob(".staging-*"))


def test_inspect_reads_pooling_and_rejects_unknown_pooling(built: Built, tmp_path: Path) -> None:
    found = inspect_checkpoint(minilm_dir(), "embedder")
    assert (found.pooling, found.normalize, found.layout, found.max_length) == (
        "mean",
        True,
        "sentence-transformers",
        256,
    )
    assert found.vocab_size == 30522 and found.tokenizer_size <= found.vocab_size
    max_pooled = shutil.copytree(built.st_dir, tmp_path / "max")
    config = json.loads((max_pooled / "1_Pooling" / "config.json").read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
    (max_pooled / "1_Pooling" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SourceError, match="pooling"):
        inspect_checkpoint(max_pooled, "embedder")
    plain = tmp_path / "plain"  # a transformers encoder without sentence-transformers files: mean + L2
    BertModel(tiny_bert_config(len(tiny_tokenizer()))).save_pretrained(plain)
    tiny_tokenizer().save_pretrained(plain)
    found = inspect_checkpoint(plain, "embedder")
    assert (found.layout, found.pooling, found.normalize) == ("transformers", "mean", True)
    with pytest.raises(SourceError, match="not a sequence-classification checkpoint"):  # an encoder is no classifier
        inspect_checkpoint(plain, "intent")


def test_a_name_too_long_for_the_tokenizer_publishes_nothing(tmp_path: Path) -> None:
    """`<name>` fits the 128-character limit but `<name>_tokenizer` does not: refused before any work."""
    repo = ModelRepository(tmp_path / "model_repository")
    repo.root.mkdir()
    name = "n" * 120
    result = build_intent(repo, tiny_intent_checkpoint(tmp_path / "intent"), BuildOptions(name))
    assert isinstance(result.error, InvalidModelName) and result.exit_code == 31
    assert f"{name}_tokenizer" in str(result.error)
    assert result.published == () and result.version is None
    assert {s.name: s.status for s in result.steps}["publish"] == Status.SKIPPED
    assert [p for p in repo.root.iterdir() if p.name != ".shepherd.lock"] == []


def test_a_failed_tokenizer_publish_leaves_no_model_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills while the tokenizer is published: the model version is not left for the control plane."""
    repo = ModelRepository(tmp_path / "model_repository")
    repo.root.mkdir()
    real_rename = os.rename

    def full_disk(source: Any, target: Any) -> None:
        if Path(target).parent.name == "intent_tokenizer":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", full_disk)
    result = build_intent(repo, tiny_intent_checkpoint(tmp_path / "intent"), BuildOptions("intent"))
    monkeypatch.undo()
    assert isinstance(result.error, RepositoryError) and "No space left" in str(result.error)
    assert result.published == ()
    assert repo.versions("intent") == [] and repo.versions("intent_tokenizer") == []
    assert repo.versions("intent_text") == []
    assert [p for p in repo.root.iterdir() if p.name != ".shepherd.lock"] == []

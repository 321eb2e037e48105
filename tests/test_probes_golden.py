"""probes.golden: real gRPC probes to explicit versions of a real Triton (y = x * version's factor)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from builders.repository import ModelRepository
from control_plane.local_triton import LocalTriton, free_ports
from probes.errors import ProbeFailed
from probes.golden import ProbeRun, send_paired_probes, send_probe, triton_datatype
from tests.conftest import load_versions, publish_scale

ROWS = 20  # 3 requests of up to 8 rows
GOLDEN = {"x": np.arange(ROWS * 4, dtype=np.float32).reshape(ROWS, 4)}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    """A real server with "scale" versions 1 (y = x) and 2 (y = 2x) loaded and version 3 published only."""
    tmp = tmp_path_factory.mktemp("probes-golden")
    repo = ModelRepository(tmp / "model_repository")
    repo.root.mkdir()
    for factor in (1.0, 2.0, 3.0):
        publish_scale(repo, tmp, "scale", factor)
    with LocalTriton(repo.root, state_dir=tmp / "triton-state") as server:
        load_versions(grpcclient.InferenceServerClient(server.state.grpc_url), repo, "scale", [1, 2])
        yield server


def assert_clean(run: ProbeRun, requests: int) -> None:
    assert run.errors == 0, run.error_messages
    assert run.requests == requests and len(run.latencies_ms) == requests and len(run.sent_at) == requests
    assert all(latency > 0 for latency in run.latencies_ms)


# -- no server needed ---------------------------------------------------------------------------


def test_datatypes_from_numpy() -> None:
    cases = {
        np.float32: "FP32",
        np.int64: "INT64",
        np.int32: "INT32",
        np.float16: "FP16",
        np.bool_: "BOOL",
        object: "BYTES",
    }
    for dtype, expected in cases.items():
        assert triton_datatype("t", np.zeros((2, 3), dtype=dtype))[0] == expected
    datatype, converted = triton_datatype("q", np.array(["red shoes", "café"]))
    assert datatype == "BYTES" and converted[1] == "café".encode()
    assert triton_datatype("b", np.array([b"a", b"bc"]))[0] == "BYTES"
    with pytest.raises(ProbeFailed, match="complex64"):
        triton_datatype("z", np.zeros(2, np.complex64))


def test_bad_arguments_raise() -> None:
    url = "127.0.0.1:1"  # never contacted: arguments are checked first
    with pytest.raises(ProbeFailed, match="no inputs"):
        send_probe(url, "scale", 1, {})
    with pytest.raises(ProbeFailed, match="different row counts"):
        send_probe(url, "scale", 1, {"a": np.zeros((3, 2)), "b": np.zeros((4, 2))})
    with pytest.raises(ProbeFailed, match="zero rows"):
        send_probe(url, "scale", 1, {"x": np.zeros((0, 4), np.float32)})
    with pytest.raises(ProbeFailed, match="scalar"):
        send_probe(url, "scale", 1, {"x": np.array(1.0, np.float32)})
    for version in ("", "latest", 0, -1):
        with pytest.raises(ProbeFailed, match="explicit positive"):
            send_probe(url, "scale", version, GOLDEN)
    with pytest.raises(ProbeFailed, match="batch_size"):
        send_probe(url, "scale", 1, GOLDEN, batch_size=0)
    with pytest.raises(ProbeFailed, match="repeat"):
        send_paired_probes(url, "scale", [1, "1"], GOLDEN)
    with pytest.raises(ProbeFailed, match="rounds"):
        send_paired_probes(url, "scale", [1, 2], GOLDEN, rounds=0)


def test_server_down_counts_every_request_as_error() -> None:
    (port,) = free_ports(1)
    run = send_probe(f"127.0.0.1:{port}", "scale", 1, GOLDEN, timeout_s=2)
    assert run.requests == 3 and run.errors == 3 and run.outputs is None and run.latencies_ms == ()
    assert run.error_rate == 1.0
    assert any("UNAVAILABLE" in message for message in run.error_messages)
    assert len(run.error_messages) == 1  # the same message is kept once


# -- the real server ----------------------------------------------------------------------------


@pytest.mark.triton
def test_each_version_answers_with_its_own_outputs(live: LocalTriton) -> None:
    one = send_probe(live.state.grpc_url, "scale", 1, GOLDEN)
    two = send_probe(live.state.grpc_url, "scale", "2", GOLDEN, output_names=["y"])
    assert_clean(one, 3)
    assert_clean(two, 3)
    assert (one.version, two.version, one.model) == ("1", "2", "scale")
    assert one.outputs is not None and two.outputs is not None
    np.testing.assert_allclose(one.outputs["y"], GOLDEN["x"])  # every row, in input order
    np.testing.assert_allclose(two.outputs["y"], 2 * GOLDEN["x"])
    summary = two.as_dict()
    assert summary["output_names"] == ["y"] and summary["errors"] == 0 and len(summary["latencies_ms"]) == 3


@pytest.mark.triton
def test_limit_rows_and_batch_size(live: LocalTriton) -> None:
    run = send_probe(live.state.grpc_url, "scale", 2, GOLDEN, batch_size=2, limit_rows=5)
    assert_clean(run, 3)  # rows 0-1, 2-3, 4
    assert run.outputs is not None
    np.testing.assert_allclose(run.outputs["y"], 2 * GOLDEN["x"][:5])


@pytest.mark.triton
def test_version_not_loaded_counts_errors(live: LocalTriton) -> None:
    run = send_probe(live.state.grpc_url, "scale", 3, GOLDEN)  # published, never loaded
    assert run.requests == 3 and run.errors == 3 and run.outputs is None
    assert any("version 3" in message and "not found" in message for message in run.error_messages)


@pytest.mark.triton
def test_unknown_output_counts_errors(live: LocalTriton) -> None:
    run = send_probe(live.state.grpc_url, "scale", 1, GOLDEN, output_names=["nope"])
    assert run.errors == run.requests == 3 and run.outputs is None
    assert "nope" in run.error_messages[0]


@pytest.mark.triton
def test_paired_probes_interleave(live: LocalTriton) -> None:
    runs = send_paired_probes(live.state.grpc_url, "scale", [1, 2], GOLDEN, rounds=2)
    assert set(runs) == {"1", "2"}
    for run in runs.values():
        assert_clean(run, 6)  # 3 requests per round
    assert runs["1"].outputs is not None and runs["2"].outputs is not None
    np.testing.assert_allclose(runs["1"].outputs["y"], GOLDEN["x"])  # outputs of the first round
    np.testing.assert_allclose(runs["2"].outputs["y"], 2 * GOLDEN["x"])
    timeline = sorted((t, version) for version, run in runs.items() for t in run.sent_at)
    versions = [version for _, version in timeline]
    pairs = [set(versions[i : i + 2]) for i in range(0, len(versions), 2)]
    assert pairs == [{"1", "2"}] * 6, versions  # every batch goes to both versions before the next one
    assert versions[0] != versions[2], "the order rotates so neither version always goes first"


@pytest.mark.triton
def test_paired_probe_with_one_version_missing(live: LocalTriton) -> None:
    runs = send_paired_probes(live.state.grpc_url, "scale", [2, 3], GOLDEN, limit_rows=8)
    assert_clean(runs["2"], 1)
    assert runs["3"].errors == 1 and runs["3"].outputs is None

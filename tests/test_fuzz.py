"""Property-based fuzzing of everything shepherd reads from outside: names, config.pbtxt, manifests,
metrics text and golden sets.

The property is the same for each: whatever the input, the reader returns a value or raises its
own documented shepherd error; never another exception (a traceback for the user, a crashed pass
for the control plane), never a non-finite figure, never a write outside the repository. The
examples are seeded (derandomized) so CI is reproducible; `bench/reliability.py` runs the long cases.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders.errors import BrokenConfig, BrokenManifest, InvalidModelName
from builders.repository import ModelRepository, parse_config, validate_model_name
from control_plane.errors import BrokenGoldenSet
from control_plane.golden import _from_npz
from probes.errors import MetricsMalformed
from probes.metrics import parse_metrics, window

FUZZ = settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONFIG_WORDS = st.sampled_from(
    ['name: "m"', "max_batch_size: 8", 'platform: "onnxruntime_onnx"', "input [", "]", "{", "}", "dims: [ -1 ]",
     'data_type: TYPE_FP32', "instance_group [ { count: 1 kind: KIND_CPU } ]", "version_policy: { all {} }", "\n",
     '"', "#", "\\", "\x00", "é"]
)  # fmt: skip


@FUZZ
@given(st.text(max_size=300))
def test_a_model_name_is_accepted_safe_or_refused(name: str) -> None:
    try:
        accepted = validate_model_name(name)
    except InvalidModelName:
        return
    assert accepted == name
    assert "/" not in name and "\\" not in name and name not in (".", "..") and "\x00" not in name
    assert not name.startswith(".")  # nothing hidden, nothing that climbs out of the repository


@FUZZ
@given(st.one_of(st.text(max_size=400), st.lists(CONFIG_WORDS, max_size=40).map(" ".join)))
def test_config_text_parses_or_is_a_broken_config(text: str) -> None:
    try:
        parse_config(text, source="fuzz/config.pbtxt")
    except BrokenConfig as exc:
        assert "fuzz/config.pbtxt" in str(exc)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
MANIFEST_KEYS = ("model", "version", "kind", "format", "builder_version", "files", "quality", "extra", "source")


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=300),
        st.dictionaries(st.sampled_from(MANIFEST_KEYS), JSON_VALUES, max_size=9).map(
            lambda d: json.dumps(d).encode()
        ),
        st.integers(min_value=1, max_value=5000).map(lambda depth: ("[" * depth + "]" * depth).encode()),
    )
)
def test_manifest_reads_or_is_a_broken_manifest(tmp_path_factory, content: bytes) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("repo")
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "1" / "manifest.json").write_bytes(content)
    try:
        ModelRepository(root).read_manifest("m", 1)
    except BrokenManifest as exc:
        assert len(str(exc)) < 500  # names the file and the cause, never echoes the content


METRIC_NAMES = st.sampled_from(
    ["nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
     "nv_inference_request_duration_us", "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
     "nv_inference_request_summary_us", "nv_cpu_memory_used_bytes", "nv_gpu_memory_used_bytes"]
)  # fmt: skip
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["NaN", "+Inf", "-Inf", "1e308", "-1", "0", "abc", ""]),
)
LABELS = st.sampled_from(
    ['{model="m",version="1"}', '{model="m",version="2"}', '{model="m",version="1",quantile="0.95"}',
     '{model="m",version="1",reason="REJECTED"}', "", "{", '{model="m"']
)  # fmt: skip
METRIC_LINES = st.lists(st.tuples(METRIC_NAMES, LABELS, VALUES).map(lambda t: f"{t[0]}{t[1]} {t[2]}"), max_size=12)


def _finite(value: object) -> bool:
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


@FUZZ
@given(METRIC_LINES, METRIC_LINES)
def test_metrics_text_parses_or_is_malformed_and_windows_are_finite(first: list[str], second: list[str]) -> None:
    try:
        start = parse_metrics("\n".join(first) + "\n", taken_at=1.0)
        end = parse_metrics("\n".join(second) + "\n", taken_at=2.0)
    except MetricsMalformed:
        return
    for stats in window(start, end).values():
        assert _finite(stats.as_dict()), stats.as_dict()


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        st.dictionaries(
            st.sampled_from(["input__x", "input__y", "labels", "other"]),
            st.integers(min_value=0, max_value=3).flatmap(
                lambda ndim: st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim).map(
                    lambda shape: np.zeros(shape, dtype=np.float32)
                )
            ),
            max_size=3,
        ),
    )
)
def test_a_golden_set_reads_or_is_broken(tmp_path_factory, content: bytes | dict) -> None:  # type: ignore[no-untyped-def]
    path: Path = tmp_path_factory.mktemp("golden") / "golden.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.savez(path, **content)
    try:
        golden = _from_npz(path, "classifier")
    except BrokenGoldenSet:
        return
    assert golden.rows >= 1 and all(array.shape[0] == golden.rows for array in golden.inputs.values())

"""From stored windows to the judge's evidence: per-row quality, per-window samples, missing streaks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from control_plane import golden as golden_sets
from control_plane.judging import paired_windows
from control_plane.observe import bluegreen_stable, evidence_from_windows
from control_plane.policy import Policy
from control_plane.store.records import ProbeWindowRecord

AT = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def window(
    i: int, *, samples: tuple[float, ...] = (1.0, 2.0, 3.0), start: int | None = None, **raw: Any
) -> ProbeWindowRecord:
    begin = AT + timedelta(seconds=2 * (i if start is None else start))
    return ProbeWindowRecord(
        id=i, model="m", version=2, role="candidate", rollout_id=1,
        started_at=begin, ended_at=AT + timedelta(seconds=2 * i + 2),
        requests=16, errors=0, failure_by_reason=None, p50_ms=None, p95_ms=None, p99_ms=None,
        avg_queue_ms=None, avg_compute_ms=None, client_p50_ms=None, client_p95_ms=None,
        quality=None, agreement=None, triton_cpu_memory_bytes=None, gpu_memory_bytes=None,
        samples=samples, raw={"live_missing": [], "live_deferred": False} | raw, step=0,
    )  # fmt: skip


def test_per_row_quality_of_a_classifier_and_a_ranker() -> None:
    labels = np.array([0, 1, 2, 1])
    clf = golden_sets.Golden(task="classifier", inputs={"x": np.zeros((4, 2))}, labels=labels)
    logits = np.eye(3)[[0, 1, 1, 1]]  # the third row is wrong
    assert golden_sets.per_row(clf, {"logits": logits}) == {"metric": "accuracy", "values": [1.0, 1.0, 0.0, 1.0]}
    ranker = golden_sets.Golden(task="ranker", inputs={"x": np.zeros((3, 2))}, labels=np.array([1, 0, 0]))
    rows = golden_sets.per_row(ranker, {"p": np.array([[0.9], [0.2], [0.4]])})
    assert rows == {"metric": "auc", "values": [0.9, 0.2, 0.4], "labels": [1, 0, 0]}
    assert golden_sets.per_row(clf, {"logits": np.ones((2, 3))}) is None  # rows that do not fit: not comparable


def test_stored_windows_keep_their_samples_rows_and_pairing_key() -> None:
    rows = {"metric": "accuracy", "values": [1.0, 0.0]}
    evidence = evidence_from_windows(2, [window(0, quality_rows=rows), window(1, samples=(4.0, 5.0, 6.0))])
    assert [w.samples for w in evidence.windows] == [(1.0, 2.0, 3.0), (4.0, 5.0, 6.0)]
    assert evidence.quality_rows is not None and evidence.quality_rows.values == (1.0, 0.0)
    broken = evidence_from_windows(2, [window(0, quality_rows={"metric": "accuracy", "values": ["x"]})])
    assert broken.quality_rows is None  # a malformed stored figure is "not measured", never an error


def test_windows_after_an_incomplete_one_pair_by_their_end() -> None:
    """After a deferred window the next one starts at the same moment: the pairing key is the end."""
    cand = evidence_from_windows(2, [window(0), window(1, start=0), window(2, start=0)])
    stable = evidence_from_windows(1, [window(0), window(1, start=0), window(2, start=0)])
    assert len({w.at for w in cand.windows}) == 3
    assert len(paired_windows(cand, stable, Policy(warmup_windows=0))) == 3


def test_missing_streak_counts_the_latest_windows_in_a_row() -> None:
    windows = [
        window(0),
        window(1, live_missing=["r0"]),
        window(2),
        window(3, live_missing=["r0"]),
        window(4, live_missing=["r0"]),
    ]
    evidence = evidence_from_windows(2, windows)
    assert evidence.missing_streak == 2 and evidence.missing == ("r0",)
    assert evidence_from_windows(2, windows[:3]).missing_streak == 0


def test_bluegreen_stable_counts_from_before_the_cut_over_and_latency_from_the_same_probes() -> None:
    before = [window(0, samples=(9.0, 9.0, 9.0), quality_rows={"metric": "accuracy", "values": [1.0]})]
    same = [window(5), window(6)]
    evidence = bluegreen_stable(1, before, same)
    assert evidence.requests == 16 and evidence.quality_rows is not None
    assert [w.samples for w in evidence.windows] == [(1.0, 2.0, 3.0), (1.0, 2.0, 3.0)]
    assert 9.0 not in evidence.latencies_ms  # the pooled figures a decision reports: the same seconds too

"""Golden-set quality figures, one function per model kind, and agreement between two versions.

Why one module for builders and control plane alike: the number a build writes into the manifest
and the number a live probe measures on the served version must be computed the same way, or a
candidate would be judged against a floor measured differently. Every result is a plain dict
with "metric" and "value" (what a judge compares) plus the detail figures.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from builders.errors import BadOption

TASKS = ("intent", "embedder", "ranker")
RANKER_AGREEMENT_DELTA = 0.05


def _rows(name: str, array: np.ndarray, ndim: int) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != ndim or array.shape[0] == 0:
        raise BadOption(f"{name} must be a non-empty {ndim}-d array, got shape {array.shape}")
    return array


def intent_quality(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy (the headline) and macro F1 of arg-max predictions over the golden queries."""
    logits = _rows("logits", logits, 2)
    labels = _rows("labels", labels, 1).astype(np.int64)
    if logits.shape[0] != labels.shape[0]:
        raise BadOption(f"{logits.shape[0]} rows of logits but {labels.shape[0]} labels")
    predicted = np.argmax(logits, axis=1)
    accuracy = float(accuracy_score(labels, predicted))
    return {
        "metric": "accuracy",
        "value": accuracy,
        "accuracy": accuracy,
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "rows": int(labels.shape[0]),
    }


def _normalise(matrix: np.ndarray) -> np.ndarray:
    matrix = matrix.astype(np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def embedder_quality(
    query_emb: np.ndarray, product_emb: np.ndarray, relevant: list[list[int]], k: int = 10
) -> dict[str, Any]:
    """Recall@k: the share of each query's relevant products found among its k nearest (cosine), averaged."""
    queries = _rows("query embeddings", query_emb, 2)
    products = _rows("product embeddings", product_emb, 2)
    if queries.shape[1] != products.shape[1]:
        raise BadOption(f"query dim {queries.shape[1]} differs from product dim {products.shape[1]}")
    if len(relevant) != queries.shape[0]:
        raise BadOption(f"{queries.shape[0]} queries but {len(relevant)} relevance lists")
    if k < 1:
        raise BadOption(f"k must be >= 1, got {k}")
    scores = _normalise(queries) @ _normalise(products).T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    recalls = []
    for row, wanted in enumerate(relevant):
        if not wanted:
            continue
        recalls.append(len(set(top[row].tolist()) & set(wanted)) / len(set(wanted)))
    if not recalls:
        raise BadOption("no query has a relevant product; recall is undefined")
    value = float(np.mean(recalls))
    return {"metric": f"recall@{k}", "value": value, f"recall@{k}": value, "k": k, "rows": len(recalls)}


def ranker_quality(scores: np.ndarray, clicks: np.ndarray) -> dict[str, Any]:
    """ROC AUC of the click probabilities against the observed clicks."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    clicks = np.asarray(clicks).reshape(-1).astype(np.int64)
    if scores.shape[0] == 0 or scores.shape[0] != clicks.shape[0]:
        raise BadOption(f"{scores.shape[0]} scores but {clicks.shape[0]} clicks")
    if len(np.unique(clicks)) < 2:
        raise BadOption("AUC needs both clicked and unclicked rows; the clicks hold one class only")
    auc = float(roc_auc_score(clicks, scores))
    return {
        "metric": "auc",
        "value": auc,
        "auc": auc,
        "click_rate": float(clicks.mean()),
        "mean_score": float(scores.mean()),
        "rows": int(scores.shape[0]),
    }


def agreement(task: str, a: np.ndarray, b: np.ndarray) -> float:
    """How alike two versions' outputs on the same inputs are, in [0, 1] (cosine may go below 0).

    intent: share of rows whose arg-max agrees; embedder: mean per-row cosine; ranker: share of
    rows whose probabilities differ by less than 0.05 (RANKER_AGREEMENT_DELTA).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.size == 0:
        raise BadOption(f"agreement needs two non-empty arrays of one shape, got {a.shape} and {b.shape}")
    if task == "intent":
        return float(np.mean(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))
    if task == "embedder":
        flat_a, flat_b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        return float(np.mean(np.sum(_normalise(flat_a) * _normalise(flat_b), axis=1)))
    if task == "ranker":
        return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64)) < RANKER_AGREEMENT_DELTA))
    raise BadOption(f"unknown task {task!r}; use one of {TASKS}")

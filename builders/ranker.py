"""The CTR ranker: a DLRM-style PyTorch module given as `package.module:factory` plus a state dict.

    categorical INT64 [n_cat] ─ embedding tables ─┐
                                                  ├─ pairwise dot interaction ─ top MLP ─ sigmoid ─ click_probability FP32 [1]
    dense FP32 [n_dense] ───── bottom MLP ────────┘

Why the example lives here: the demo and the tests need a ranker that trains in seconds on CPU,
whose AUC means something (clicks come from a hidden logistic model, not from noise), and whose
regressed variants are honest: `slow` is really 8-16x wider, `damaged` really learned from corrupted
labels. Nothing sleeps.

Any user factory works the same way: `load_ranker_module("mypkg.models:make_ranker", Path("ranker.pt"))`
imports the module, calls the factory with no arguments, loads the state dict with
`torch.load(weights_only=True)` and checks the module's shape against the spec.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import itertools
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from builders.errors import BadOption, BuildFailed, SourceError
from builders.manifest import sha256_file
from builders.onnx_export import ExportSpec, TensorSpec, Tolerance
from builders.pipeline import BuildOptions, BuildResult, ModelSource, Progress, Runner, build_model
from builders.quality import ranker_quality
from builders.repository import ModelRepository

# The example's features: what an e-commerce impression log typically holds.
CATEGORICAL = ("user_segment", "item_category", "brand", "device", "hour", "position")
CARDINALITIES = (50, 200, 120, 4, 24, 10)
DENSE = ("price_log", "rating", "past_ctr", "days_since_view")
GOLDEN_CSV = Path(__file__).parent / "golden" / "ranker.csv"
GOLDEN_SEED = 20261124  # the golden set; training uses other seeds, so it is never trained on
WORLD_SEED = 7  # the hidden click model shared by training data and the golden set
EXAMPLE_FACTORY = "builders.ranker:example_ranker"
SLOW_FACTORY = "builders.ranker:slow_ranker"
VARIANTS = ("good", "retrained", "slow", "damaged")


def ranker_spec(n_categorical: int = len(CATEGORICAL), n_dense: int = len(DENSE), opset: int = 17) -> ExportSpec:
    return ExportSpec(
        inputs=(TensorSpec("categorical", "INT64", (n_categorical,)), TensorSpec("dense", "FP32", (n_dense,))),
        outputs=(TensorSpec("click_probability", "FP32", (1,)),),
        opset=opset,
    )


# -- the model ------------------------------------------------------------------------------------------------


def _mlp(sizes: tuple[int, ...], *, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(width_in, width_out))
        if last_activation or index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """Embedding tables + bottom MLP + pairwise dot interaction + top MLP, with a sigmoid on top.

    Ids outside a table wrap around (`id mod cardinality`, the hashing trick of production
    recommenders), so an unseen id degrades one feature instead of failing the request.
    """

    def __init__(
        self,
        cardinalities: tuple[int, ...] = CARDINALITIES,
        n_dense: int = len(DENSE),
        embedding_dim: int = 8,
        bottom: tuple[int, ...] = (32,),
        top: tuple[int, ...] = (32, 16),
    ) -> None:
        super().__init__()
        self.n_dense = n_dense
        self.sizes: torch.Tensor
        self.pair_rows: torch.Tensor
        self.pair_cols: torch.Tensor
        self.embeddings = nn.ModuleList(nn.Embedding(size, embedding_dim) for size in cardinalities)
        self.register_buffer("sizes", torch.tensor(cardinalities, dtype=torch.int64), persistent=False)
        self.bottom = _mlp((n_dense, *bottom, embedding_dim), last_activation=True)
        features = len(cardinalities) + 1
        rows, cols = torch.triu_indices(features, features, offset=1)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)
        self.top = _mlp((embedding_dim + rows.numel(), *top, 1), last_activation=False)

    @property
    def n_categorical(self) -> int:
        return len(self.embeddings)

    def forward(self, categorical: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ids = torch.remainder(categorical, self.sizes)
        bottom = self.bottom(dense)
        vectors = [bottom, *(table(ids[:, i]) for i, table in enumerate(self.embeddings))]
        stacked = torch.stack(vectors, dim=1)  # (batch, features, dim)
        dots = torch.bmm(stacked, stacked.transpose(1, 2))[:, self.pair_rows, self.pair_cols]
        return torch.sigmoid(self.top(torch.cat([bottom, dots], dim=1)))


def example_ranker() -> DLRM:
    """The example factory (`builders.ranker:example_ranker`)."""
    return DLRM()


def slow_ranker() -> DLRM:
    """The `slow` variant's factory: the same recipe, MLPs 8-16x wider and one layer deeper each.

    Measured on the 2-core machine: about 6x the example's onnxruntime time per batch of 32
    (0.2 ms against 0.03 ms), trained in about 5 s.
    """
    return DLRM(bottom=(256, 128), top=(512, 512, 256))


# -- synthetic data --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankerData:
    categorical: np.ndarray  # int64 (rows, n_cat)
    dense: np.ndarray  # float32 (rows, n_dense)
    clicks: np.ndarray  # int64 (rows,)

    def __len__(self) -> int:
        return int(self.clicks.shape[0])

    def inputs(self) -> dict[str, np.ndarray]:
        return {"categorical": self.categorical, "dense": self.dense}


def _hidden_model() -> tuple[list[np.ndarray], np.ndarray, np.ndarray, float]:
    """The world's click model: per-id effects, dense weights, a category x device interaction, a bias."""
    world = np.random.default_rng(WORLD_SEED)
    effects = [world.normal(0.0, 0.8, size) for size in CARDINALITIES]
    effects[CATEGORICAL.index("position")] = -0.25 * np.arange(CARDINALITIES[-1])  # lower slots get fewer clicks
    dense_weights = np.array([-0.6, 0.7, 1.2, -0.5])
    cross = world.normal(0.0, 0.8, (CARDINALITIES[1], CARDINALITIES[3]))
    return effects, dense_weights, cross, -1.3


def generate_ranker_data(rows: int, seed: int) -> RankerData:
    """Impressions with clicks drawn from the hidden logistic model (deterministic for a seed)."""
    if rows < 1:
        raise BadOption(f"rows must be >= 1, got {rows}")
    rng = np.random.default_rng(seed)
    effects, dense_weights, cross, bias = _hidden_model()
    # Zipf-like popularity: a few categories and brands get most impressions, as in real logs.
    categorical = np.stack(
        [
            np.minimum(rng.zipf(1.3, rows) - 1, size - 1) if size > 24 else rng.integers(0, size, rows)
            for size in CARDINALITIES
        ],
        axis=1,
    ).astype(np.int64)
    dense = np.stack(
        [
            rng.normal(3.0, 1.0, rows),  # log price
            rng.uniform(1.0, 5.0, rows),  # rating
            rng.beta(2.0, 20.0, rows) * 10,  # past CTR of the item, scaled
            rng.exponential(10.0, rows) / 10,  # days since last view, scaled
        ],
        axis=1,
    )
    dense_centred = dense - np.array([3.0, 3.0, 0.9, 1.0])
    logit = bias + dense_centred @ dense_weights
    for column, effect in enumerate(effects):
        logit = logit + effect[categorical[:, column]]
    logit = logit + cross[categorical[:, 1], categorical[:, 3]]
    clicks = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return RankerData(categorical=categorical, dense=dense.astype(np.float32), clicks=clicks)


def damage_labels(data: RankerData, share: float, seed: int) -> RankerData:
    """Flip `share` of the clicks at random: above one half the learned ranking inverts, as a broken log join would."""
    if not 0.0 <= share <= 1.0:
        raise BadOption(f"share must lie in [0, 1], got {share}")
    rng = np.random.default_rng(seed)
    flip = rng.random(len(data)) < share
    return RankerData(data.categorical, data.dense, np.where(flip, 1 - data.clicks, data.clicks))


def write_golden_csv(path: Path = GOLDEN_CSV, rows: int = 400, seed: int = GOLDEN_SEED) -> Path:
    """Write the shipped golden set (run once; the file is checked in)."""
    data = generate_ranker_data(rows, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*CATEGORICAL, *DENSE, "click"])
        for cat, dense, click in zip(data.categorical, data.dense, data.clicks, strict=True):
            writer.writerow([*cat.tolist(), *(f"{value:.6g}" for value in dense.tolist()), int(click)])
    return path


def read_golden_csv(path: Path = GOLDEN_CSV) -> RankerData:
    """Read a ranker golden set: integer id columns first, then float columns, then `click` (0/1).

    The header decides: every column before the first float one in the example header order is
    categorical. For a user's own CSV the columns are `cat_*`/`dense_*` or the example names.
    """
    try:
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            table = [row for row in reader if row]
    except FileNotFoundError as exc:
        raise SourceError(f"ranker golden set not found: {path}") from exc
    except (OSError, StopIteration, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"ranker golden set {path} cannot be read: {exc}") from exc
    if not header or header[-1] != "click":
        raise SourceError(f"ranker golden set {path}: the last column must be 'click', header is {header}")
    cat_columns = [i for i, name in enumerate(header) if name in CATEGORICAL or name.startswith("cat")]
    dense_columns = [i for i, name in enumerate(header) if name in DENSE or name.startswith("dense")]
    if not cat_columns or not dense_columns or len(cat_columns) + len(dense_columns) != len(header) - 1:
        raise SourceError(
            f"ranker golden set {path}: columns must be categorical ({CATEGORICAL} or cat_*), "
            f"dense ({DENSE} or dense_*) and click; header is {header}"
        )
    if not table:
        raise SourceError(f"ranker golden set {path} has no rows")
    try:
        categorical = np.array([[int(row[i]) for i in cat_columns] for row in table], dtype=np.int64)
        dense = np.array([[float(row[i]) for i in dense_columns] for row in table], dtype=np.float32)
        clicks = np.array([int(row[-1]) for row in table], dtype=np.int64)
    except (ValueError, IndexError) as exc:
        raise SourceError(f"ranker golden set {path}: a row does not parse: {exc}") from exc
    if not set(np.unique(clicks).tolist()) <= {0, 1}:
        raise SourceError(f"ranker golden set {path}: click must be 0 or 1")
    return RankerData(categorical, dense, clicks)


# -- training --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingReport:
    rows: int
    epochs: int
    seconds: float
    final_loss: float


def train_ranker(
    model: nn.Module, data: RankerData, *, epochs: int = 3, batch_size: int = 256, lr: float = 3e-3, seed: int = 0
) -> TrainingReport:
    """Plain Adam on binary cross-entropy; a few epochs over ~20k rows take seconds on one CPU core."""
    torch.manual_seed(seed)
    categorical = torch.from_numpy(data.categorical)
    dense = torch.from_numpy(data.dense)
    clicks = torch.from_numpy(data.clicks.astype(np.float32)).unsqueeze(1)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCELoss()
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    loss = torch.tensor(math.nan)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), batch_size):
            index = order[start : start + batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(categorical=categorical[index], dense=dense[index]), clicks[index])
            loss.backward()
            optimiser.step()
    model.eval()
    return TrainingReport(len(data), epochs, time.perf_counter() - started, float(loss.detach()))


def train_example(variant: str = "good", *, rows: int = 20000, seed: int = 1, epochs: int = 3) -> tuple[DLRM, str]:
    """Train the example ranker or one of its variants; returns the model and its factory path.

    good / retrained: the example recipe (retrained: another seed); slow: 8-16x wider MLPs, same
    data and epochs; damaged: the example architecture trained on 60% flipped clicks.
    """
    if variant not in VARIANTS:
        raise BadOption(f"unknown ranker variant {variant!r}; use one of {VARIANTS}")
    if variant == "retrained":
        seed += 100
    torch.manual_seed(seed)
    data = generate_ranker_data(rows, seed)
    if variant == "damaged":
        data = damage_labels(data, share=0.6, seed=seed)
    model, factory = (slow_ranker(), SLOW_FACTORY) if variant == "slow" else (example_ranker(), EXAMPLE_FACTORY)
    train_ranker(model, data, epochs=epochs, seed=seed)
    return model, factory


# -- loading a user's source -----------------------------------------------------------------------------------


def import_factory(path: str) -> Callable[[], Any]:
    """Resolve `package.module:factory` (dots after the colon walk attributes)."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise SourceError(f"factory {path!r} must look like 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module itself raising while importing
        raise SourceError(
            f"cannot import module {module_name!r} of factory {path!r}: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise SourceError(f"module {module_name!r} has no attribute {attribute!r} (factory {path!r})") from exc
    if not callable(target):
        raise SourceError(f"factory {path!r} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def _factory_file(factory: str) -> Path | None:
    module = sys.modules.get(factory.partition(":")[0])
    try:
        return Path(inspect.getfile(module)) if module is not None else None
    except (TypeError, OSError):  # a built-in or generated module has no source file: the manifest says None
        return None


def load_ranker_module(factory: str, weights: Path) -> nn.Module:
    """Build the module from its factory and load the state dict strictly; every failure is a SourceError."""
    weights = Path(weights)
    if not weights.is_file():
        raise SourceError(f"ranker weights file not found: {weights}")
    make = import_factory(factory)
    try:
        module = make()
    except Exception as exc:
        raise SourceError(f"factory {factory!r} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise SourceError(f"factory {factory!r} returned a {type(module).__name__}, not a torch.nn.Module")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SourceError(f"cannot read state dict {weights}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict):
        raise SourceError(f"{weights} holds a {type(state).__name__}, not a state dict")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()
        raise SourceError(
            f"state dict {weights} does not match the module of {factory!r}: {' '.join(first_line[:4])}"
        ) from exc
    return module.eval()


def _shape_of(module: nn.Module, data: RankerData) -> None:
    """Run two golden rows once: a factory whose inputs do not fit the golden set fails here, clearly."""
    try:
        with torch.no_grad():
            out = module(categorical=torch.from_numpy(data.categorical[:2]), dense=torch.from_numpy(data.dense[:2]))
    except Exception as exc:
        raise SourceError(
            f"the ranker does not accept the golden set's inputs (categorical {data.categorical.shape[1]} ids, "
            f"dense {data.dense.shape[1]} floats): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 1):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SourceError(f"the ranker must return click probabilities of shape (batch, 1), got {shape}")


def ranker_source(
    factory: str, weights: Path, *, golden: Path = GOLDEN_CSV, batch_size: int = 64, tolerance: Tolerance | None = None
) -> ModelSource:
    """Load a ranker and everything the pipeline needs to export, verify and score it."""
    module = load_ranker_module(factory, weights)
    data = read_golden_csv(golden)
    _shape_of(module, data)
    spec = ranker_spec(data.categorical.shape[1], data.dense.shape[1])
    high = int(data.categorical.max()) + 1

    def random_batches(count: int, seed: int) -> list[dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        sizes = [1, 7, batch_size, 3][:count] + [batch_size] * max(0, count - 4)  # odd sizes catch batch bugs
        return [
            {
                "categorical": rng.integers(0, 2 * high, (n, spec.inputs[0].dims[0])).astype(np.int64),
                "dense": rng.normal(0.0, 2.0, (n, spec.inputs[1].dims[0])).astype(np.float32),
            }
            for n in sizes
        ]

    golden_batches = [
        {"categorical": data.categorical[i : i + batch_size], "dense": data.dense[i : i + batch_size]}
        for i in range(0, len(data), batch_size)
    ]

    def quality(run: Runner) -> dict[str, Any]:
        scores = np.concatenate([run(batch)[0].reshape(-1) for batch in golden_batches])
        return ranker_quality(scores, data.clicks)

    factory_file = _factory_file(factory)
    return ModelSource(
        kind="ranker",
        module=module,
        spec=spec,
        example={name: torch.from_numpy(value[:4]) for name, value in data.inputs().items()},
        random_batches=random_batches,
        golden_batches=golden_batches,
        quality=quality,
        tolerance=tolerance or Tolerance(atol=1e-5, rtol=1e-3),
        info={
            "path": str(Path(weights).resolve()),
            "sha256": sha256_file(weights),
            "factory": factory,
            "factory_file": str(factory_file) if factory_file else None,
            "factory_sha256": sha256_file(factory_file) if factory_file and factory_file.is_file() else None,
            "golden": str(Path(golden).resolve()),
            "golden_sha256": sha256_file(golden),
        },
    )


def build_ranker(
    repo: ModelRepository,
    *,
    factory: str,
    weights: Path,
    options: BuildOptions,
    golden: Path = GOLDEN_CSV,
    progress: Progress | None = None,
) -> BuildResult:
    """Build a ranker from `factory` + `weights` into a new version of `options.name`; see builders.pipeline."""
    return build_model(repo, lambda: ranker_source(factory, weights, golden=golden), options, progress=progress)


def build_ranker_example(
    repo: ModelRepository,
    *,
    variant: str = "good",
    options: BuildOptions | None = None,
    checkpoints: Path | None = None,
    progress: Progress | None = None,
    seed: int = 1,
) -> BuildResult:
    """Train the example ranker (or a variant: retrained, slow, damaged) and build it as a new version.

    The state dict is written to `checkpoints` (a cache folder outside the repository, default a
    temporary one) so the manifest's source names a real file with its checksum.
    """
    options = options or BuildOptions(name="ctr_ranker")
    model, factory = train_example(variant, seed=seed)
    with tempfile.TemporaryDirectory(prefix="shepherd-ranker-") as scratch:
        folder = Path(checkpoints) if checkpoints else Path(scratch)
        weights = folder / f"{options.name}-{variant}-seed{seed}.pt"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), weights)
        except OSError as exc:
            raise BuildFailed(f"cannot write the example ranker's state dict {weights}: {exc}") from exc
        return build_ranker(repo, factory=factory, weights=weights, options=options, progress=progress)

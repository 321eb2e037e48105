"""What a model takes and returns, as Triton sees it, and how close an export must stay to its source.

Why a module of its own: the Triton config writer, the TensorRT builder and the CLI need these
plain descriptions without importing PyTorch (which takes seconds to import); the export itself
(`builders.onnx_export`) is the only part that needs torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from builders.errors import BadOption

# Triton dtype names -> numpy; BYTES has no tensor form in an ONNX graph we export.
NUMPY_DTYPES: dict[str, Any] = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
    "BYTES": np.object_,
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as Triton sees it: `dims` WITHOUT the batch axis, -1 for a dynamic dim."""

    name: str
    dtype: str  # FP32 | FP16 | INT64 | INT32 | BOOL | BYTES ...
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in NUMPY_DTYPES:
            raise BadOption(f"tensor {self.name!r}: unknown dtype {self.dtype!r}; use one of {sorted(NUMPY_DTYPES)}")
        if any(d == 0 or d < -1 for d in self.dims):
            raise BadOption(f"tensor {self.name!r}: dims must be positive or -1, got {self.dims}")


@dataclass(frozen=True)
class ExportSpec:
    """What the exported graph takes and returns; the batch axis 0 is always dynamic."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int = 17

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def as_dict(self) -> dict[str, Any]:
        return {
            "opset": self.opset,
            "inputs": [asdict(t) | {"dims": list(t.dims)} for t in self.inputs],
            "outputs": [asdict(t) | {"dims": list(t.dims)} for t in self.outputs],
        }


@dataclass(frozen=True)
class Tolerance:
    """How far the export may be from PyTorch: |onnx - torch| <= atol + rtol * |torch| element-wise.

    `min_cosine` (embeddings) checks the per-row cosine; `argmax` (classifiers) checks that the
    arg-max over the last axis agrees on at least `min_argmax_agreement` of the rows.
    """

    atol: float = 1e-4
    rtol: float = 1e-3
    min_cosine: float | None = None
    argmax: bool = False
    min_argmax_agreement: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

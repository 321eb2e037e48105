"""Triton Python-backend model: raw query text -> token ids, with the model's own fast tokenizer.

Why in Triton and not in the client: search front-ends send text; if each client tokenised, every
client would need the exact vocabulary of the version being served. This model sits in front of
the ONNX model in an ensemble (`<name>_text`) and reads `tokenizer.json` from its own version
folder (truncation and padding are already set in that file by the builder).

Input `text` BYTES, one string per row (dims [1]); outputs are the INT64 tensors named in
config.pbtxt (`input_ids`, `attention_mask`, and `token_type_ids` when the model takes them),
shape [rows, tokens]. All requests of one `execute` call are padded to the same length, so the
ONNX model behind it can run them as one batch.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "tokenizer.json")
        if not os.path.exists(path):
            raise pb_utils.TritonModelException(f"tokenizer.json not found: {path}")
        self.tokenizer = Tokenizer.from_file(path)
        if self.tokenizer.padding is None:  # pad to the longest row, never to a fixed length
            self.tokenizer.enable_padding()
        self.outputs = [o["name"] for o in config["output"]]
        unknown = [name for name in self.outputs if name not in _FIELDS]
        if unknown:
            raise pb_utils.TritonModelException(f"tokenizer model cannot produce outputs {unknown}")

    @staticmethod
    def _texts(request: Any) -> list[str]:
        tensor = pb_utils.get_input_tensor_by_name(request, "text")
        if tensor is None:
            raise pb_utils.TritonModelException("missing input 'text'")
        values = tensor.as_numpy().reshape(-1)
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        texts: list[str] = []
        spans: list[tuple[int, int, int]] = []  # (request index, first row, row count)
        for index, request in enumerate(requests):
            try:
                rows = self._texts(request)
            except Exception as exc:  # one bad request must not fail the others
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            spans.append((index, len(texts), len(rows)))
            texts.extend(rows)
        if spans:
            try:
                encodings = self.tokenizer.encode_batch(texts)
                arrays = {
                    name: np.asarray([getattr(e, _FIELDS[name]) for e in encodings], dtype=np.int64)
                    for name in self.outputs
                }
                for index, first, count in spans:
                    tensors = [pb_utils.Tensor(name, arrays[name][first : first + count]) for name in self.outputs]
                    responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            except Exception as exc:
                for index, _, _ in spans:
                    responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        return responses

    def finalize(self) -> None:
        del self.tokenizer

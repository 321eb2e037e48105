"""A Python-based Triton backend that serves `platform: "onnxruntime_onnx"` models with onnxruntime.

Why it exists: the `nvidia-pytriton` wheel ships `tritonserver` without the native onnxruntime
backend. Triton resolves a backend named `onnxruntime` to `<backends>/onnxruntime/`, and a folder
holding only `model.py` is loaded as a Python-based backend. The same repository therefore serves
unchanged here and in NVIDIA's container, where the native `libtriton_onnxruntime.so` in that
folder wins by Triton's own lookup order.

Requests that arrive together (dynamic batching) are concatenated along the batch axis and run as
one session call, as the native backend does, then split back per request; a failing call fails
the batch and is counted by Triton as failed requests, as natively.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _numpy_dtype(config_dtype: str) -> Any:
    return pb_utils.triton_string_to_numpy(config_dtype)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        version = args["model_version"]
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], version, filename)
        if not os.path.exists(path):
            raise pb_utils.TritonModelException(f"ONNX file not found: {path}")
        options = ort.SessionOptions()
        threads = int(os.environ.get("SHEPHERD_ORT_INTRA_OP_THREADS", "0"))
        if threads:
            options.intra_op_num_threads = threads
        # No busy-waiting between runs: with several versions loaded on a few CPU cores (a canary
        # beside stable), spinning worker threads of one session steal the cores of the other, and
        # the version loaded second looks slower than it is.
        if os.environ.get("SHEPHERD_ORT_ALLOW_SPINNING", "0") != "1":
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [(i["name"], _numpy_dtype(i["data_type"])) for i in config["input"]]
        self.outputs = [(o["name"], _numpy_dtype(o["data_type"])) for o in config["output"]]
        graph_inputs = {i.name for i in self.session.get_inputs()}
        missing = [name for name, _ in self.inputs if name not in graph_inputs]
        if missing:
            raise pb_utils.TritonModelException(
                f"config.pbtxt names inputs {missing} that {path} does not have; graph has {sorted(graph_inputs)}"
            )

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run([name for name, _ in self.outputs], feeds)

    def _feeds(self, request: Any) -> dict[str, np.ndarray]:
        feeds = {}
        for name, dtype in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise pb_utils.TritonModelException(f"missing input {name}")
            feeds[name] = tensor.as_numpy().astype(dtype, copy=False)
        return feeds

    def _response(self, outputs: list[np.ndarray]) -> Any:
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(value.astype(dtype, copy=False)))
            for (name, dtype), value in zip(self.outputs, outputs, strict=True)
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run the requests Triton batched together; a failure fails the batch, as natively.

        The native onnxruntime backend fails every request of a batch whose session call fails,
        and Triton counts them in `nv_inference_request_failure`. A Python model that returned
        error responses instead would have them counted as successes, hiding a failing version
        from the metrics the control plane judges; so a failure is raised.
        """
        responses: list[Any] = [None] * len(requests)
        parsed = [(index, self._feeds(request)) for index, request in enumerate(requests)]
        for group in self._groups(parsed):
            if len(group) == 1:
                index, feeds = group[0]
                responses[index] = self._response(self._run(feeds))
                continue
            merged = {name: np.concatenate([f[name] for _, f in group]) for name, _ in self.inputs}
            outputs = self._run(merged)
            offset = 0
            for index, feeds in group:
                size = feeds[self.inputs[0][0]].shape[0]
                responses[index] = self._response([o[offset : offset + size] for o in outputs])
                offset += size
        return responses

    def _groups(self, parsed: list[tuple[int, dict[str, np.ndarray]]]) -> list[list[tuple[int, dict]]]:
        """Requests whose non-batch shapes match can share one session call."""
        if not self.batched:
            return [[item] for item in parsed]
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for item in parsed:
            key = tuple(item[1][name].shape[1:] for name, _ in self.inputs)
            groups.setdefault(key, []).append(item)
        return list(groups.values())

    def finalize(self) -> None:
        self.session = None

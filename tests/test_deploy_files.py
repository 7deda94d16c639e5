"""The deployment files agree with the code and with each other: compose.yaml,
deploy/kserve/inferenceservice.yaml and deploy/mlserver/*.json name files that exist, the
runtime class MLServer imports, one model name, one MLServer image and version, and the
ports the servers listen on. (test_mlserver.py runs deploy/mlserver on a real MLServer.)"""

from __future__ import annotations

import ast
import importlib.util
import json
import posixpath
import re
from dataclasses import fields
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from ml_stub.detector import DetectorOptions
from ml_stub.oip import INPUT, MODEL_NAME, MODEL_VERSION, OUTPUT

from .mlserver_env import DEPLOY, MLSERVER_VERSION, REPO, REQUIREMENTS

MODEL_PATH = f"/v2/models/{MODEL_NAME}"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
    return loaded


@pytest.fixture(scope="module")
def kserve() -> dict[str, dict[str, Any]]:
    text = (REPO / "deploy" / "kserve" / "inferenceservice.yaml").read_text()
    return {doc["kind"]: doc for doc in yaml.safe_load_all(text)}


@pytest.fixture(scope="module")
def server_settings() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEPLOY / "settings.json").read_text())
    return loaded


@pytest.fixture(scope="module")
def model_settings() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEPLOY / "model-settings.json").read_text())
    return loaded


def dockerfile_lines(text: str, instruction: str) -> list[str]:
    return [line.split(None, 1)[1] for line in text.splitlines()
            if line.strip().upper().startswith(instruction + " ")]


def test_model_settings_name_a_runtime_class_that_exists(model_settings: dict[str, Any]
                                                         ) -> None:
    assert model_settings["name"] == MODEL_NAME
    assert model_settings["parameters"]["version"] == MODEL_VERSION
    # PNGs both ways: MLServer's REST has no binary tensors (mlserver_runtime.py says why).
    assert [(t["name"], t["datatype"]) for t in model_settings["inputs"]] == [(INPUT, "BYTES")]
    assert [(t["name"], t["datatype"]) for t in model_settings["outputs"]] == [
        (OUTPUT, "BYTES")]
    assert set(model_settings["parameters"]["extra"]) <= {f.name for f in fields(DetectorOptions)}
    module, _, name = model_settings["implementation"].rpartition(".")
    # Found, not imported: mlserver lives in its own environment (tests/mlserver_env.py).
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    with open(spec.origin) as source:
        tree = ast.parse(source.read())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    assert name in classes, f"{module} defines no class {name}"
    assert [ast.unparse(base) for base in classes[name].bases] == ["MLModel"]


def test_settings_serve_rest_on_8080(server_settings: dict[str, Any]) -> None:
    assert server_settings["http_port"] == 8080
    assert server_settings["host"] == "0.0.0.0"  # in a container: reachable from others
    assert len({server_settings[k] for k in ("http_port", "grpc_port", "metrics_port")}) == 3


def test_compose_builds_mlserver_as_the_tests_install_it(
        compose: dict[str, Any], model_settings: dict[str, Any],
        server_settings: dict[str, Any]) -> None:
    replicas = [compose["services"][f"mlserver-{i}"] for i in (1, 2)]
    assert replicas[0] == replicas[1]
    service = replicas[0]
    assert service["image"].endswith(f":{MLSERVER_VERSION}")
    assert service["build"]["context"] == "."
    dockerfile = service["build"]["dockerfile_inline"]
    for requirement in REQUIREMENTS:
        assert f'"{requirement}"' in dockerfile, requirement
    (workdir,) = dockerfile_lines(dockerfile, "WORKDIR")
    copied = {}
    for line in dockerfile_lines(dockerfile, "COPY"):
        source, target = line.split()
        assert (REPO / source).exists(), source
        copied[posixpath.normpath(posixpath.join(workdir, target))] = source
    command = json.loads(dockerfile_lines(dockerfile, "CMD")[0])
    assert command[:2] == ["mlserver", "start"] and copied[command[2]] == "deploy/mlserver"
    # MLServer imports the runtime by its dotted path: its package is on PYTHONPATH.
    pythonpath = re.search(r"PYTHONPATH=(\S+)", dockerfile)
    assert pythonpath is not None
    package = model_settings["implementation"].split(".")[0]
    assert copied[posixpath.join(pythonpath[1], package)] == package
    ready = urlsplit(re.findall(r"http://[^']+", " ".join(service["healthcheck"]["test"]))[0])
    assert (ready.port, ready.path) == (server_settings["http_port"], f"{MODEL_PATH}/ready")


def test_compose_points_oilspill_at_both_replicas(
        compose: dict[str, Any], server_settings: dict[str, Any]) -> None:
    oilspill = compose["services"]["oilspill"]
    assert oilspill["build"] == "." and (REPO / "Dockerfile").is_file()
    dockerfile = (REPO / "Dockerfile").read_text()
    port = re.search(r"OILSPILL_PORT=(\d+)", dockerfile)
    assert port is not None
    assert [p.split(":")[1] for p in oilspill["ports"]] == [port[1]]
    urls = [urlsplit(u) for u in oilspill["environment"]["ML_SERVICE_URL"].split(",")]
    assert [u.hostname for u in urls] == ["mlserver-1", "mlserver-2"]
    assert {(u.scheme, u.port, u.path) for u in urls} == {
        ("http", server_settings["http_port"], MODEL_PATH)}
    assert oilspill["depends_on"] == {name: {"condition": "service_healthy"}
                                      for name in ("mlserver-1", "mlserver-2")}


def test_kserve_serves_the_model_with_its_runtime_on_v2(
        kserve: dict[str, dict[str, Any]], compose: dict[str, Any],
        server_settings: dict[str, Any]) -> None:
    runtime, service = kserve["ServingRuntime"], kserve["InferenceService"]
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    # The InferenceService's name is the model's: its URL path is the one MLServer serves.
    assert service["metadata"]["name"] == MODEL_NAME
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "v2" and "v2" in runtime["spec"]["protocolVersions"]
    assert {k: model["modelFormat"][k] for k in ("name", "version")} in [
        {k: f[k] for k in ("name", "version")} for f in runtime["spec"]["supportedModelFormats"]]
    (container,) = runtime["spec"]["containers"]
    assert container["image"] == compose["services"]["mlserver-1"]["image"]
    # KServe mounts storageUri at /mnt/models: MLServer starts on that folder.
    assert container["args"] == ["mlserver", "start", "/mnt/models"]
    assert model["storageUri"].startswith("pvc://")
    assert [p["containerPort"] for p in container["ports"]] == [server_settings["http_port"]]
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["port"], probe["path"]) == (server_settings["http_port"], f"{MODEL_PATH}/ready")

"""Deployment files (serving/deploy/, the systemd GPU drop-in, the GPU lock): they cannot be applied here (no GPU,
no docker daemon, no cluster), so each is checked with the schema its consumer enforces -- the compose-spec schema
(shipped by check-jsonschema), Kubernetes' own schemas (kubernetes-validate, strict: unknown keys fail as with
`kubectl apply --validate=strict`), KServe's InferenceService CRD (vendored, see serving/deploy/kserve/schema/) and
systemd-analyze -- and for what the pieces must agree on (model name, base path, ports, addresses)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from odal.daemon import config as odal_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "serving" / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.33"
TFS_VERSION = "2.19.0"
KUBECTL = shutil.which("kubectl")
ANALYZE = shutil.which("systemd-analyze")


def load_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def model_config() -> tuple[str, str]:
    """(name, base_path) of the single model in serving/deploy/models.config."""
    text = (DEPLOY / "models.config").read_text()
    return re.search(r'name: "([^"]+)"', text).group(1), re.search(r'base_path: "([^"]+)"', text).group(1)


def odal_toml() -> dict:
    return tomllib.loads((DEPLOY / "odal.toml").read_text())


# -- docker compose ---------------------------------------------------------------------------------------------------

COMPOSE_SCHEMA = json.loads(
    resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())


def validate_compose(doc: dict) -> None:
    jsonschema.validators.validator_for(COMPOSE_SCHEMA)(COMPOSE_SCHEMA).validate(doc)


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.gpu.yml"])
def test_compose_files_match_the_compose_spec(name):
    """Both compose files validate against the compose-spec schema."""
    (doc,) = load_yaml(DEPLOY / name)
    validate_compose(doc)


@pytest.mark.parametrize("breakage, error", [
    ("unknown service key", "'volumes_' was unexpected"), ("port not a string or mapping", r"\[8500\] is not valid"),
    ("bad restart", r"\['always'\] is not of type 'string'"),
])
def test_compose_check_rejects_a_broken_file(breakage, error):
    """The schema check is not vacuous: a misspelt key, a malformed port or an unknown restart policy fails it."""
    (doc,) = load_yaml(DEPLOY / "docker-compose.yml")
    broken = copy.deepcopy(doc)
    tfs = broken["services"]["tfserving"]
    if breakage == "unknown service key":
        tfs["volumes_"] = tfs.pop("volumes")
    elif breakage == "port not a string or mapping":
        tfs["ports"] = [[8500]]
    else:
        broken["services"]["odal-daemon"]["restart"] = ["always"]
    with pytest.raises(jsonschema.ValidationError, match=error):
        validate_compose(broken)


def test_compose_shares_the_model_base_path_and_the_serving_address():
    """TF Serving mounts the daemon's workspace models/ read-only, serves models.config's model from it, listens on
    the gRPC port odal.toml names, and publishes its ports on loopback only."""
    (doc,) = load_yaml(DEPLOY / "docker-compose.yml")
    tfs, daemon = doc["services"]["tfserving"], doc["services"]["odal-daemon"]
    (workspace,) = [v for v in daemon["volumes"] if v["target"] == "/var/lib/odal"]
    mounts = {v["target"]: v for v in tfs["volumes"]}
    assert mounts["/models"]["source"] == workspace["source"] + "/models" and mounts["/models"]["read_only"]
    config_flag = next(a for a in tfs["command"] if a.startswith("--model_config_file="))
    assert mounts[config_flag.split("=", 1)[1]]["source"] == "./models.config"
    settings = odal_toml()
    name, base_path = model_config()
    assert name == settings["model"]["name"]
    assert base_path == "/models/" + Path(settings["model"]["base_path"]).relative_to("models").as_posix()
    host, port = settings["serving"]["address"].rsplit(":", 1)
    assert host == "tfserving" and f"--port={port}" in tfs["command"]
    assert all(p.startswith("127.0.0.1:") for p in tfs["ports"])
    assert tfs["image"] == f"tensorflow/serving:{TFS_VERSION}"
    (gpu,) = load_yaml(DEPLOY / "docker-compose.gpu.yml")
    assert gpu["services"]["tfserving"]["image"] == f"tensorflow/serving:{TFS_VERSION}-gpu"
    assert gpu["services"]["odal-daemon"]["build"]["args"]["TF"] == "gpu"


def test_container_odal_toml_is_a_valid_odal_config(tmp_path):
    """odal.toml for the containers loads with odal's own config loader, next to the files it names."""
    workspace = tmp_path / "odal"
    for folder in ("images", "exports"):
        (workspace / folder).mkdir(parents=True)
    for name in ("pipeline.config", "label_map.pbtxt"):
        (workspace / name).write_text("")
    shutil.copy(DEPLOY / "odal.toml", workspace / "odal.toml")
    loaded = odal_config.load(workspace / "odal.toml")
    assert loaded.model_name == "detector" and loaded.base_path == workspace / "models" / "detector"
    assert loaded.serving_address == "tfserving:8500"


# -- Kubernetes ---------------------------------------------------------------------------------------------------------

def k8s_resources(folder: Path) -> list[dict]:
    """Every resource in a kustomization's listed files, plus the ConfigMap it generates from models.config."""
    (kustomization,) = load_yaml(folder / "kustomization.yaml")
    found = [doc for name in kustomization["resources"] for doc in load_yaml(folder / name)]
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for item in generator["files"]:
            key, _, source = item.partition("=")
            data[key] = (folder / (source or key)).read_text()
        found.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    return found


def validate_k8s(resource: dict) -> None:
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def by_kind(found: list[dict], kind: str, name: str) -> dict:
    (resource,) = [r for r in found if r["kind"] == kind and r["metadata"]["name"] == name]
    return resource


def test_kubernetes_manifests_match_the_kubernetes_schemas():
    """Each manifest validates against Kubernetes' own JSON schemas (strict: no unknown keys)."""
    found = k8s_resources(K8S / "base")
    assert {r["kind"] for r in found} == {"PersistentVolumeClaim", "Deployment", "Service", "ConfigMap"}
    for resource in found:
        validate_k8s(resource)


@pytest.mark.parametrize("breakage, error", [
    ("misspelt probe key", "'httpget' was unexpected"), ("port as text", "'grpc' is not of type 'integer'"),
    ("missing selector", "'selector' is a required property"),
])
def test_kubernetes_check_rejects_a_broken_manifest(breakage, error):
    """The Kubernetes check is not vacuous: a misspelt key, a wrong type or a missing required field fails it."""
    deployment = copy.deepcopy(by_kind(k8s_resources(K8S / "base"), "Deployment", "tfserving"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    if breakage == "misspelt probe key":
        container["readinessProbe"]["httpget"] = container["readinessProbe"].pop("httpGet")
    elif breakage == "port as text":
        container["ports"][0]["containerPort"] = "grpc"
    else:
        del deployment["spec"]["selector"]
    with pytest.raises(kubernetes_validate.ValidationError, match=error):
        validate_k8s(deployment)


def test_kubernetes_tfserving_reads_the_shared_base_path_and_is_ready_on_the_model_status_api():
    """TF Serving mounts the workspace claim's models/ read-only, its readiness probe asks the REST model status API
    for models.config's model, and the Service routes the ports odal.toml and clients use to its pods."""
    found = k8s_resources(K8S / "base")
    name, base_path = model_config()
    assert (K8S / "base" / "models.config").read_text() == (DEPLOY / "models.config").read_text()
    tfs = by_kind(found, "Deployment", "tfserving")
    pod = tfs["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    claim = by_kind(found, "PersistentVolumeClaim", "odal-workspace")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (models_mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    assert models_mount["subPath"] == "models" and models_mount["readOnly"]
    assert volumes[models_mount["name"]]["persistentVolumeClaim"]["claimName"] == "odal-workspace"
    assert base_path.startswith("/models/")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert f"--rest_api_port={ports['http']}" in container["args"] and f"--port={ports['grpc']}" in container["args"]
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == f"/v1/models/{name}" and probe["port"] == "http"
    service = by_kind(found, "Service", "tfserving")
    assert service["spec"]["selector"].items() <= tfs["spec"]["template"]["metadata"]["labels"].items()
    host, port = odal_toml()["serving"]["address"].rsplit(":", 1)
    assert host == service["metadata"]["name"]
    assert {"port": int(port), "targetPort": "grpc"}.items() <= next(
        p for p in service["spec"]["ports"] if p["name"] == "grpc").items()
    daemon = by_kind(found, "Deployment", "odal-daemon")
    assert daemon["spec"]["replicas"] == 1 and daemon["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_kustomize_builds_and_the_output_validates(overlay):
    """`kubectl kustomize` (what `kubectl apply -k` runs) builds each folder; the GPU overlay swaps in the -gpu TF
    Serving image and asks for a GPU; every built resource validates."""
    proc = subprocess.run([KUBECTL, "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    built = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    for resource in built:
        validate_k8s(resource)
    container = by_kind(built, "Deployment", "tfserving")["spec"]["template"]["spec"]["containers"][0]
    suffix = "-gpu" if overlay == "gpu" else ""
    assert container["image"] == f"tensorflow/serving:{TFS_VERSION}{suffix}"
    assert ("nvidia.com/gpu" in container["resources"]["limits"]) == (overlay == "gpu")


# -- KServe ----------------------------------------------------------------------------------------------------------

KSERVE_SCHEMA = json.loads((DEPLOY / "kserve" / "schema" / "inferenceservice-v1beta1.schema.json").read_text())


def validate_kserve(doc: dict) -> None:
    jsonschema.validators.validator_for(KSERVE_SCHEMA)(KSERVE_SCHEMA).validate(doc)


@pytest.mark.parametrize("name", ["inferenceservice.yaml", "inferenceservice-gpu.yaml"])
def test_inference_services_match_kserves_crd_and_serve_the_shared_base_path(name):
    """Each InferenceService validates against KServe's CRD schema, uses the TF predictor on the workspace claim's
    base path, and is named as the model (KServe's TF runtime serves it under that name)."""
    (doc,) = load_yaml(DEPLOY / "kserve" / name)
    validate_kserve(doc)
    model, base_path = model_config()
    predictor = doc["spec"]["predictor"]["tensorflow"]
    assert doc["metadata"]["name"] == model
    assert predictor["storageUri"] == "pvc://odal-workspace/models/" + base_path.removeprefix("/models/")
    gpu = name.endswith("-gpu.yaml")
    assert predictor["runtimeVersion"] == TFS_VERSION + ("-gpu" if gpu else "")
    assert ("nvidia.com/gpu" in predictor["resources"]["limits"]) == gpu


@pytest.mark.parametrize("breakage, error", [
    ("misspelt storageUri", "'storageUrl' was unexpected"), ("replicas as text", "'one' is not of type 'integer'"),
    ("no predictor", "'predictor' is a required property"),
])
def test_kserve_check_rejects_a_broken_inference_service(breakage, error):
    """The KServe check is not vacuous: a misspelt field, a wrong type or a missing predictor fails it."""
    (doc,) = load_yaml(DEPLOY / "kserve" / "inferenceservice.yaml")
    broken = copy.deepcopy(doc)
    predictor = broken["spec"]["predictor"]
    if breakage == "misspelt storageUri":
        predictor["tensorflow"]["storageUrl"] = predictor["tensorflow"].pop("storageUri")
    elif breakage == "replicas as text":
        predictor["minReplicas"] = "one"
    else:
        del broken["spec"]["predictor"]
    with pytest.raises(jsonschema.ValidationError, match=error):
        validate_kserve(broken)

"""deploy/kubernetes, checked without a cluster: every manifest against the Kubernetes
schemas (kubernetes-validate, strict) and KEDA's objects against the fields of KEDA's
CRDs that we use; the KEDA query counts what it should on a real migrated database; and
every name a manifest uses (images' commands, settings, Secrets, the scale target) exists."""

from __future__ import annotations

import importlib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy import create_engine, text, update

from store.db import session_scope
from store.models import Experiment
from store.settings import Settings
from tests.conftest import ROOT
from tests.factories import new_experiment

KUBERNETES = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
KUBERNETES_VERSION = "1.33.0"


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


MANIFESTS = {path.name: documents(path) for path in sorted(KUBERNETES.glob("*.yaml"))}
RESOURCES = [doc for name in KUSTOMIZATION["resources"] for doc in MANIFESTS[name]]


def find(kind: str, name: str | None = None) -> dict:
    (found,) = [r for r in RESOURCES if r["kind"] == kind
                and (name is None or r["metadata"]["name"] == name)]  # fmt: skip
    return found


# KEDA's CRDs (keda.sh/v1alpha1) are not in kubernetes-validate. This schema holds the
# fields of ScaledObject and TriggerAuthentication that we use, as KEDA's CRDs define them,
# and rejects any other, so a misspelt field fails here rather than on a cluster.
_INT = {"type": "integer", "minimum": 0}
_OBJECT_META = {"type": "object", "required": ["name"],
                "properties": {"name": {"type": "string"}}}  # fmt: skip
KEDA_SCHEMAS = {
    "ScaledObject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "ScaledObject"},
            "metadata": _OBJECT_META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {
                            k: {"type": "string"}
                            for k in ("apiVersion", "kind", "name", "envSourceContainerName")
                        },
                    },  # fmt: skip
                    "minReplicaCount": _INT,
                    "maxReplicaCount": _INT,
                    "idleReplicaCount": _INT,
                    "pollingInterval": _INT,
                    "cooldownPeriod": _INT,
                    "advanced": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "restoreToOriginalReplicaCount": {"type": "boolean"},
                            "horizontalPodAutoscalerConfig": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "behavior": {"type": "object"},
                                },
                            },
                        },
                    },  # fmt: skip
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"type": "string"},
                                "name": {"type": "string"},
                                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                                "metadata": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                                "authenticationRef": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["name"],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "kind": {
                                            "enum": [
                                                "TriggerAuthentication",
                                                "ClusterTriggerAuthentication",
                                            ]
                                        },
                                    },
                                },
                            },
                        },
                    },  # fmt: skip
                },
            },
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "TriggerAuthentication"},
            "metadata": _OBJECT_META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["parameter", "name", "key"],
                            "properties": {
                                k: {"type": "string"} for k in ("parameter", "name", "key")
                            },
                        },
                    },
                },
            },  # fmt: skip
        },
    },
}
# The postgresql scaler's metadata keys and authentication parameters (keda.sh/docs).
POSTGRESQL_METADATA = {"query", "targetQueryValue", "activationTargetQueryValue",
                       "connectionFromEnv", "host", "port", "userName", "dbName", "sslmode",
                       "passwordFromEnv"}  # fmt: skip
POSTGRESQL_AUTH = {"connection", "password", "host", "port", "userName", "dbName", "sslmode"}


def test_the_kustomization_lists_every_manifest_and_nothing_missing():
    assert set(KUSTOMIZATION["resources"]) == set(MANIFESTS) - {"kustomization.yaml"}
    names = [(r["kind"], r["metadata"]["name"]) for r in RESOURCES]
    assert len(names) == len(set(names))
    images = {image["name"] for image in KUSTOMIZATION["images"]}
    used = {c["image"] for r in RESOURCES if "template" in r.get("spec", {})
            for c in r["spec"]["template"]["spec"]["containers"]}  # fmt: skip
    assert used == images == {"moe-lab-api", "moe-lab-worker"}


@pytest.mark.parametrize(
    "resource", [r for r in RESOURCES if not r["apiVersion"].startswith("keda.sh/")],
    ids=lambda r: f"{r['kind']}/{r['metadata']['name']}",
)  # fmt: skip
def test_every_manifest_matches_the_kubernetes_schema(resource):
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("kind", sorted(KEDA_SCHEMAS))
def test_keda_objects_match_kedas_crds(kind):
    jsonschema.validate(find(kind), KEDA_SCHEMAS[kind])


def test_a_misspelt_field_fails_validation():
    """The checks above can fail: strict Kubernetes schemas and our KEDA schema both
    reject what they do not know."""
    worker = yaml.safe_load(yaml.safe_dump(find("Deployment", "moe-lab-worker")))
    worker["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES_VERSION, strict=True)
    scaled = yaml.safe_load(yaml.safe_dump(find("ScaledObject")))
    scaled["spec"]["minReplicas"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMAS["ScaledObject"])


def test_keda_scales_the_worker_deployment_from_zero_on_a_postgres_query():
    scaled = find("ScaledObject")
    worker = find("Deployment", "moe-lab-worker")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", worker["metadata"]["name"])
    assert "replicas" not in worker["spec"]  # KEDA's to set
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["maxReplicaCount"] >= 1
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql" and set(trigger["metadata"]) <= POSTGRESQL_METADATA
    assert float(trigger["metadata"]["targetQueryValue"]) == 1  # a worker per run
    auth = find("TriggerAuthentication", trigger["authenticationRef"]["name"])
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] in POSTGRESQL_AUTH
        secret = find("Secret", ref["name"])
        assert ref["key"] in secret["stringData"]
        assert secret["stringData"][ref["key"]].startswith("postgresql://")  # libpq, not +psycopg


@pytest.mark.services
def test_the_keda_query_counts_queued_and_running_runs(empty_postgres):
    from store.migrate import upgrade_database

    url = empty_postgres()
    upgrade_database(url)
    statuses = ["queued", "queued", "running", "succeeded", "failed", "cancelled", "running"]
    for status in statuses:
        experiment_id = new_experiment(url)
        with session_scope(url) as session:
            session.execute(update(Experiment).where(Experiment.id == experiment_id)
                            .values(status=status))  # fmt: skip
            session.commit()
    query = find("ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text(query)).scalar() == 4
    finally:
        engine.dispose()


def containers() -> list[tuple[str, dict]]:
    return [(r["metadata"]["name"], c) for r in RESOURCES if "template" in r.get("spec", {})
            for c in r["spec"]["template"]["spec"]["containers"]]  # fmt: skip


def test_every_setting_named_is_a_setting_and_every_secret_exists():
    fields = {f"MOE_{name.upper()}" for name in Settings.model_fields}
    config = find("ConfigMap", "moe-lab-settings")["data"]
    app_secret = find("Secret", "moe-lab")["stringData"]
    assert set(config) <= fields and set(app_secret) <= fields
    for owner, container in containers():
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                find("Secret", source["secretRef"]["name"])
            if "configMapRef" in source:
                find("ConfigMap", source["configMapRef"]["name"])
        for variable in container.get("env", []):
            assert variable["name"] in fields, (owner, variable["name"])
    claims = {v["persistentVolumeClaim"]["claimName"]
              for r in RESOURCES if "template" in r.get("spec", {})
              for v in r["spec"]["template"]["spec"].get("volumes", [])
              if "persistentVolumeClaim" in v}  # fmt: skip
    for claim in claims:
        assert find("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]


def test_every_command_names_code_that_exists_and_the_worker_is_the_images():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for owner, container in containers():
        command = container["command"]
        if command[0] == "celery":
            assert command[1:4] == ["-A", "worker.celery_app", "worker"]
            assert hasattr(importlib.import_module("worker.celery_app"), "app")
            assert command[command.index("--concurrency") + 1] == "1"
            assert command[command.index("--prefetch-multiplier") + 1] == "1"
            # the image's own default command is the same
            assert "CMD " + str(command).replace("'", '"') in dockerfile, owner
        elif command[0] == "uvicorn":
            module, attribute = command[1].split(":")
            assert getattr(importlib.import_module(module), attribute).title
        else:
            assert command == ["alembic", "upgrade", "head"], owner
            assert (ROOT / "alembic.ini").is_file()


def test_workers_get_a_gpu_each_a_grace_for_the_handback_and_shared_artifacts():
    spec = find("Deployment", "moe-lab-worker")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["terminationGracePeriodSeconds"] >= 30
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert Settings(home=Path("/var/lib/moe-lab")).artifact_dir.as_posix() in mounts
    api = find("Deployment", "moe-lab-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"

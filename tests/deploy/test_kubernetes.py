"""deploy/kubernetes, checked without a cluster: every manifest against the Kubernetes
schemas (kubernetes-validate, strict) and KEDA's objects against the fields of KEDA's CRDs
(tests/deploy/keda_schema.yaml); the KEDA query sums the GPUs runs ask for on a real
migrated database; the GPUs of a worker are one setting that kustomize copies where it is
needed; and every name a manifest uses (commands, settings, Secrets, the scale target,
files) exists. The multi-node manifests (deploy/kubernetes/multinode) are
tests/deploy/test_multinode.py's."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy import create_engine, text, update

from store.db import session_scope
from store.models import Experiment
from store.settings import Settings
from tests.deploy.schemas import LATEST, documents, strict_registry
from tests.environment import ROOT
from tests.factories import new_experiment

KUBERNETES = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
# The newest Kubernetes kubernetes-validate ships, and one a year older, as clusters lag.
KUBERNETES_VERSIONS = ["1.33.0", LATEST]

MANIFESTS = {path.name: documents(path) for path in sorted(KUBERNETES.glob("*.yaml"))}
RESOURCES = [doc for name in KUSTOMIZATION["resources"] for doc in MANIFESTS[name]]


def find(kind: str, name: str | None = None) -> dict:
    (found,) = [r for r in RESOURCES if r["kind"] == kind
                and (name is None or r["metadata"]["name"] == name)]  # fmt: skip
    return found


def kinds_and_names(resources: list[dict]) -> list[tuple[str, str]]:
    return sorted((r["kind"], r["metadata"]["name"]) for r in resources)


def containers() -> list[tuple[str, dict]]:
    return [(r["metadata"]["name"], c) for r in RESOURCES if "template" in r.get("spec", {})
            for c in r["spec"]["template"]["spec"]["containers"]]  # fmt: skip


# KEDA's objects against KEDA's CRD fields (keda_schema.yaml says how that schema was made);
# the HPA behavior inside a ScaledObject against Kubernetes' own strict schema.
KEDA_SCHEMA = yaml.safe_load((Path(__file__).parent / "keda_schema.yaml").read_text())
KEDA_REGISTRY = strict_registry("horizontalpodautoscalerbehavior-autoscaling-v2")


def validate_keda(resource: dict) -> None:
    schema = {**KEDA_SCHEMA, "$ref": f"#/$defs/{resource['kind']}"}
    jsonschema.Draft202012Validator(schema, registry=KEDA_REGISTRY).validate(resource)


# The postgresql scaler's trigger metadata and authentication parameters (KEDA's
# pkg/scalers/postgresql_scaler.go: triggerMetadata, authParams, resolvedEnv).
POSTGRESQL_METADATA = {"query", "targetQueryValue", "activationTargetQueryValue",
                       "connectionFromEnv", "host", "port", "userName", "dbName", "sslmode",
                       "passwordFromEnv"}  # fmt: skip
POSTGRESQL_AUTH = {"connection", "password", "host", "port", "userName", "dbName", "sslmode"}
# The fields of kustomize's Kustomization that we use, and of its `images` entries.
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "images",
                        "secretGenerator", "configMapGenerator", "patches",
                        "replacements"}  # fmt: skip
KUSTOMIZE_IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}


def test_the_kustomization_lists_every_file_and_nothing_missing():
    assert KUSTOMIZATION["kind"] == "Kustomization"
    assert set(KUSTOMIZATION) <= KUSTOMIZATION_FIELDS
    # multinode/ is applied on its own (a cluster with the Kubeflow Trainer)
    files = {path.name for path in KUBERNETES.iterdir() if path.is_file()}
    assert sorted(KUSTOMIZATION["resources"]) == sorted(files - {"kustomization.yaml"})
    assert {path.name for path in KUBERNETES.iterdir() if path.is_dir()} == {"multinode"}
    names = kinds_and_names(RESOURCES)
    assert len(names) == len(set(names))
    for image in KUSTOMIZATION["images"]:
        assert set(image) <= KUSTOMIZE_IMAGE_FIELDS
    images = {image["name"] for image in KUSTOMIZATION["images"]}
    used = {container["image"] for _owner, container in containers()}
    assert used == images == {"moe-lab-api", "moe-lab-worker"}


def kustomize(directory: Path) -> list[dict]:
    """What `kubectl apply -k directory` would apply."""
    rendered = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True,
                              text=True, timeout=60, check=True).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None,
                                   reason="needs kubectl (its kustomize)")  # fmt: skip


@needs_kubectl
def test_kustomize_renders_what_we_check():
    """`kubectl apply -k` applies what kustomize renders: the same objects, each in the
    namespace, with the images' tags, and still valid (labels added)."""
    objects = kustomize(KUBERNETES)
    assert kinds_and_names(objects) == kinds_and_names(RESOURCES)
    namespace = KUSTOMIZATION["namespace"]
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]["name"]
        if not obj["apiVersion"].startswith("keda.sh/"):
            kubernetes_validate.validate(obj, LATEST, strict=True)
        else:
            validate_keda(obj)
    tags = {image["name"]: image["newTag"] for image in KUSTOMIZATION["images"]}
    images = {c["image"] for o in objects if "template" in o.get("spec", {})
              for c in o["spec"]["template"]["spec"]["containers"]}  # fmt: skip
    assert images == {f"{name}:{tag}" for name, tag in tags.items()}


def worker_gpus(resources: list[dict]) -> tuple[str, str]:
    """(the worker's nvidia.com/gpu limit, KEDA's GPUs per worker) among `resources`."""
    (worker,) = [r for r in resources if r["kind"] == "Deployment"
                 and r["metadata"]["name"] == "moe-lab-worker"]  # fmt: skip
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    (scaled,) = [r for r in resources if r["kind"] == "ScaledObject"]
    (trigger,) = scaled["spec"]["triggers"]
    return str(container["resources"]["limits"]["nvidia.com/gpu"]), trigger["metadata"][
        "targetQueryValue"
    ]


def test_a_workers_gpus_are_one_setting_written_alike_everywhere():
    """`kubectl apply -f` of the files themselves gets what kustomize would write too."""
    settings = find("ConfigMap", "moe-lab-settings")["data"]
    gpus = settings["MOE_GPUS_PER_WORKER"]
    assert worker_gpus(RESOURCES) == (gpus, gpus)
    # no run may ask for more than one worker has: it would wait in the queue for good
    assert 1 <= int(settings["MOE_MAX_GPUS_PER_RUN"]) <= int(gpus)


@needs_kubectl
def test_kustomize_copies_the_gpus_per_worker_into_the_limit_and_kedas_target(tmp_path):
    """An operator with 8-GPU workers edits settings.yaml alone."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy)
    settings = copy / "settings.yaml"
    text_before = settings.read_text()
    assert 'MOE_GPUS_PER_WORKER: "1"' in text_before
    settings.write_text(text_before.replace('MOE_GPUS_PER_WORKER: "1"', 'MOE_GPUS_PER_WORKER: "8"'))
    objects = kustomize(copy)
    assert worker_gpus(objects) == ("8", "8")
    (worker,) = [o for o in objects if o["kind"] == "Deployment"
                 and o["metadata"]["name"] == "moe-lab-worker"]  # fmt: skip
    kubernetes_validate.validate(worker, LATEST, strict=True)  # still a quantity


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "resource", [r for r in RESOURCES if not r["apiVersion"].startswith("keda.sh/")],
    ids=lambda r: f"{r['kind']}/{r['metadata']['name']}",
)  # fmt: skip
def test_every_manifest_matches_the_kubernetes_schema(resource, version):
    kubernetes_validate.validate(resource, version, strict=True)


@pytest.mark.parametrize("kind", ["ScaledObject", "TriggerAuthentication"])
def test_keda_objects_match_kedas_crds(kind):
    validate_keda(find(kind))


def copy_of(resource: dict) -> dict:
    return yaml.safe_load(yaml.safe_dump(resource))


def test_a_misspelt_field_fails_validation():
    """The checks above can fail: the strict Kubernetes schemas, the KEDA schema and the
    HPA behavior inside it all reject what they do not know."""
    worker = copy_of(find("Deployment", "moe-lab-worker"))
    worker["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, LATEST, strict=True)

    scaled = copy_of(find("ScaledObject"))
    scaled["spec"]["minReplicas"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate_keda(scaled)
    scaled = copy_of(find("ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["targetQueryValue"] = 1  # KEDA wants a string
    with pytest.raises(jsonschema.ValidationError):
        validate_keda(scaled)
    scaled = copy_of(find("ScaledObject"))
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    behavior["scaleDown"]["stabilizationWindow"] = 60
    with pytest.raises(jsonschema.ValidationError):
        validate_keda(scaled)

    auth = copy_of(find("TriggerAuthentication"))
    auth["spec"]["secretTargetRef"][0]["secret"] = auth["spec"]["secretTargetRef"][0].pop("name")
    with pytest.raises(jsonschema.ValidationError):
        validate_keda(auth)


def test_keda_scales_the_worker_deployment_from_zero_on_a_postgres_query():
    scaled = find("ScaledObject")
    worker = find("Deployment", "moe-lab-worker")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", worker["metadata"]["name"])
    assert "replicas" not in worker["spec"]  # KEDA's to set
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["maxReplicaCount"] >= 1
    assert 0 < scaled["spec"]["pollingInterval"] <= 60 and scaled["spec"]["cooldownPeriod"] > 0
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql" and set(trigger["metadata"]) <= POSTGRESQL_METADATA
    # a worker per MOE_GPUS_PER_WORKER GPUs asked for: the GPUs each one has
    settings = find("ConfigMap", "moe-lab-settings")["data"]
    assert float(trigger["metadata"]["targetQueryValue"]) == int(settings["MOE_GPUS_PER_WORKER"])
    auth = find("TriggerAuthentication", trigger["authenticationRef"]["name"])
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] in POSTGRESQL_AUTH
        secret = find("Secret", ref["name"])
        assert ref["key"] in secret["stringData"]
        assert secret["stringData"][ref["key"]].startswith("postgresql://")  # libpq, not +psycopg


@pytest.mark.services
def test_the_keda_query_sums_the_gpus_of_queued_and_running_runs(empty_postgres):
    from store.migrate import upgrade_database

    url = empty_postgres()
    upgrade_database(url)
    query = text(find("ScaledObject")["spec"]["triggers"][0]["metadata"]["query"])
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.execute(query).scalar() == 0  # nothing to do: zero workers
        # (status, GPUs the run asks for): only queued and running runs count
        runs = [("queued", 1), ("queued", 2), ("running", 1), ("running", 4), ("succeeded", 2),
                ("failed", 1), ("cancelled", 2), ("queued", 1)]  # fmt: skip
        for status, gpus in runs:
            experiment_id = new_experiment(url, gpus=gpus)  # store.catalogue.create_experiment
            with session_scope(url) as session:
                session.execute(update(Experiment).where(Experiment.id == experiment_id)
                                .values(status=status))  # fmt: skip
                session.commit()
        with engine.connect() as connection:
            assert connection.execute(query).scalar() == 1 + 2 + 1 + 4 + 1
        # a run stored before bases had `gpus` (the last, a queued one) asks for one GPU
        with engine.begin() as connection:
            connection.execute(text("UPDATE experiments SET base = base - 'gpus' "
                                    "WHERE id = (SELECT max(id) FROM experiments)"))  # fmt: skip
            assert connection.execute(text("SELECT count(*) FROM experiments "
                                           "WHERE base ? 'gpus'")).scalar() == len(runs) - 1  # fmt: skip
            assert connection.execute(query).scalar() == 1 + 2 + 1 + 4 + 1  # not 0, not NULL
    finally:
        engine.dispose()


def test_every_setting_named_is_a_setting_and_every_reference_exists():
    fields = {f"MOE_{name.upper()}" for name in Settings.model_fields}
    # any MOE_ name anywhere in the manifests, comments too: Secret and ConfigMap keys, env
    text_of_all = "".join(path.read_text() for path in KUBERNETES.rglob("*") if path.is_file())
    named = set(re.findall(r"\bMOE_[A-Z0-9_]+", text_of_all))
    assert named and named <= fields, named - fields
    config = find("ConfigMap", "moe-lab-settings")["data"]
    app_secret = find("Secret", "moe-lab")["stringData"]
    assert {"MOE_DATABASE_URL", "MOE_BROKER_URL", "MOE_API_TOKEN"} <= set(app_secret)
    assert set(config) <= fields and set(app_secret) <= fields
    for _owner, container in containers():
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                find("Secret", source["secretRef"]["name"])
            if "configMapRef" in source:
                find("ConfigMap", source["configMapRef"]["name"])
    claims = {v["persistentVolumeClaim"]["claimName"]
              for r in RESOURCES if "template" in r.get("spec", {})
              for v in r["spec"]["template"]["spec"].get("volumes", [])
              if "persistentVolumeClaim" in v}  # fmt: skip
    for claim in claims:
        assert find("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]


def test_no_credentials_but_placeholders():
    for secret in (r for r in RESOURCES if r["kind"] == "Secret"):
        assert "data" not in secret  # stringData only: a reader sees what goes there
        for key, value in secret["stringData"].items():
            assert "CHANGE-ME" in value or not re.search(r"://[^/@]*:[^/@]*@", value), key
            if key == "MOE_API_TOKEN":
                assert value == "CHANGE-ME"


def test_every_command_names_code_that_exists_and_the_worker_is_everywhere_the_same():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    for owner, container in containers():
        command = container["command"]
        program = command[0]
        assert shutil.which(program) or (Path(sys.executable).parent / program).exists(), owner
        if program == "celery":
            assert command[1:4] == ["-A", "worker.celery_app", "worker"]
            assert hasattr(importlib.import_module("worker.celery_app"), "app")
            # the pool's size is MOE_RUNS_PER_GPU, not a flag that would override it
            assert "--concurrency" not in command
            assert command[command.index("--prefetch-multiplier") + 1] == "1"
            # the image's default command, and compose's after its GPU launcher
            assert "CMD " + str(command).replace("'", '"') in dockerfile, owner
            assert compose["worker"]["command"][4:] == command
        elif command[:3] == ["python", "-m", "api.serve"]:  # uvicorn, its socket fixed
            module, attribute = command[3].split(":")
            assert getattr(importlib.import_module(module), attribute).title
            assert compose["api"]["command"] == command
        else:
            assert command == ["alembic", "upgrade", "head"] == compose["migrate"]["command"]
            assert (ROOT / "alembic.ini").is_file() and (ROOT / "migrations/env.py").is_file()


def test_workers_get_a_gpu_each_a_grace_for_the_handback_and_shared_artifacts():
    spec = find("Deployment", "moe-lab-worker")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    gpus = find("ConfigMap", "moe-lab-settings")["data"]["MOE_GPUS_PER_WORKER"]
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == gpus
    assert spec["terminationGracePeriodSeconds"] >= 30
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert Settings(home=Path("/var/lib/moe-lab")).artifact_dir.as_posix() in mounts
    api = find("Deployment", "moe-lab-api")
    assert api["spec"]["replicas"] == 2
    (probed,) = api["spec"]["template"]["spec"]["containers"]
    assert probed["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probed["livenessProbe"]["httpGet"]["path"] == "/healthz"

"""deploy/kubernetes/multinode: a run larger than one node, as a Kubeflow Trainer TrainJob on
the runtime in runtime.yaml, checked without a cluster: the TrainJob and TrainingRuntime
against the fields of the Trainer's CRDs (tests/deploy/trainer_schema.yaml), every name
they use (the runtime, the settings, the volume, each variable of the command, every module
and flag of torchrun and of `python -m moe_core train`) exists, the example run is one the
engine accepts on the GPUs the TrainJob asks for; and the runtime's own command, given
what the Trainer gives each pod, trains one run on two "nodes" of this machine that is the
single-process run."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from local_deployment.servers import free_port, stop_session
from moe_core.__main__ import _parse_assignments
from moe_core.__main__ import main as moe_core_main
from moe_core.config import EXPERIMENT_PRESETS, base_config, check, get_experiment_configs
from tests.deploy.schemas import LATEST, documents, strict_registry
from tests.environment import ROOT
from tests.moe_core.test_parallel import assert_exact

KUBERNETES = ROOT / "deploy" / "kubernetes"
MULTINODE = KUBERNETES / "multinode"

EVERY_DOCUMENT = {f"{path.relative_to(KUBERNETES)}#{i}": doc
                  for path in sorted(KUBERNETES.rglob("*.yaml"))
                  for i, doc in enumerate(documents(path))}  # fmt: skip
KUSTOMIZATION = yaml.safe_load((MULTINODE / "kustomization.yaml").read_text())
(RUNTIME,) = documents(MULTINODE / "runtime.yaml")
(TRAINJOB,) = documents(MULTINODE / "trainjob.yaml")
(SETTINGS,) = documents(KUBERNETES / "settings.yaml")
(ARTIFACTS_CLAIM,) = documents(KUBERNETES / "artifacts-pvc.yaml")

# What the Trainer's torch plugin puts into the `node` container of the Job labelled as
# the trainer (pkg/constants: TorchEnv*; pkg/runtime/framework/plugins/torch/torch.go).
TRAINER_ANCESTOR = ("trainer.kubeflow.org/trainjob-ancestor-step", "trainer")
TRAINER_ENV = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR",
               "PET_MASTER_PORT"}  # fmt: skip

# The Trainer's objects against the fields of its CRDs, with the Kubernetes types they
# embed resolved to kubernetes-validate's strict schemas.
TRAINER_SCHEMA = yaml.safe_load((Path(__file__).parent / "trainer_schema.yaml").read_text())
TRAINER_REGISTRY = strict_registry(
    "jobtemplatespec-batch-v1", "envvar-v1", "resourcerequirements-v1"
)
# Where each kind of document is checked: the Trainer's here, the rest in test_kubernetes.py.
CHECKED_ELSEWHERE = {"keda.sh/v1alpha1"}


def validate_trainer(resource: dict) -> None:
    kind = "TrainingRuntime" if resource["kind"].endswith("TrainingRuntime") else "TrainJob"
    schema = {**TRAINER_SCHEMA, "$ref": f"#/$defs/{kind}"}
    jsonschema.Draft202012Validator(schema, registry=TRAINER_REGISTRY).validate(resource)


def node_job(runtime: dict) -> dict:
    """The replicated Job the Trainer treats as the trainer (the one it scales to numNodes)."""
    label, value = TRAINER_ANCESTOR
    (job,) = [job for job in runtime["spec"]["template"]["spec"]["replicatedJobs"]
              if job["template"]["metadata"]["labels"].get(label) == value]  # fmt: skip
    return job


def node_container(runtime: dict) -> dict:
    pod = node_job(runtime)["template"]["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "node"]
    return container


def split_command(command: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(torchrun's options, the engine's subcommand and its flags) of `torchrun ... -m
    moe_core train ...`."""
    assert command[0] == "torchrun"
    module = command.index("-m")
    return command[1:module], command[module + 1 : module + 3], command[module + 3 :]


def flags(words: list[str]) -> set[str]:
    return {word.split("=")[0] for word in words if word.startswith("-")}


@cache
def help_text(*command: str) -> str:
    done = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip
    return done.stdout


@pytest.mark.parametrize("name", sorted(EVERY_DOCUMENT))
def test_every_document_under_deploy_kubernetes_is_a_checked_kind(name):
    """A manifest of a kind no test knows would go unchecked: each is a Kustomization, a
    Kubernetes object (strict schema), KEDA's (test_kubernetes.py) or the Trainer's."""
    doc = EVERY_DOCUMENT[name]
    assert {"apiVersion", "kind"} <= set(doc), name
    if doc["kind"] == "Kustomization":
        assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    elif doc["apiVersion"].startswith("trainer.kubeflow.org/"):
        validate_trainer(doc)
    elif doc["apiVersion"] not in CHECKED_ELSEWHERE:
        kubernetes_validate.validate(doc, LATEST, strict=True)
    if doc["kind"] != "Kustomization":
        assert doc["metadata"]["name"], name


def test_a_misspelt_field_fails_validation():
    job = yaml.safe_load(yaml.safe_dump(TRAINJOB))
    job["spec"]["trainer"]["numProcsPerNode"] = job["spec"]["trainer"].pop("numProcPerNode")
    with pytest.raises(jsonschema.ValidationError):
        validate_trainer(job)
    runtime = yaml.safe_load(yaml.safe_dump(RUNTIME))
    node_job(runtime)["template"]["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(jsonschema.ValidationError):  # inside the embedded Kubernetes types
        validate_trainer(runtime)
    runtime = yaml.safe_load(yaml.safe_dump(RUNTIME))
    runtime["spec"]["mlPolicy"]["mpi"] = {}  # one policy only
    with pytest.raises(jsonschema.ValidationError):
        validate_trainer(runtime)


def test_the_kustomization_applies_the_runtime_and_leaves_runs_to_trainjobs():
    assert KUSTOMIZATION["kind"] == "Kustomization"
    files = {path.name for path in MULTINODE.iterdir()}
    # trainjob.yaml is a run, created when wanted (`kubectl create -f`)
    assert sorted(KUSTOMIZATION["resources"]) == sorted(
        files - {"kustomization.yaml", "trainjob.yaml"}
    )
    main = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert KUSTOMIZATION["namespace"] == main["namespace"] == TRAINJOB["metadata"]["namespace"]
    assert {image["name"] for image in KUSTOMIZATION["images"]} == {
        node_container(RUNTIME)["image"]
    }
    assert KUSTOMIZATION["images"] == [i for i in main["images"] if i["name"] == "moe-lab-worker"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (its kustomize)")
def test_kustomize_renders_the_runtime_in_the_namespace_with_the_worker_image():
    rendered = subprocess.run(["kubectl", "kustomize", str(MULTINODE)], capture_output=True,
                              text=True, timeout=60, check=True).stdout  # fmt: skip
    (runtime,) = [doc for doc in yaml.safe_load_all(rendered) if doc]
    validate_trainer(runtime)
    assert runtime["metadata"]["namespace"] == KUSTOMIZATION["namespace"]
    (image,) = KUSTOMIZATION["images"]
    assert node_container(runtime)["image"] == f"{image['name']}:{image['newTag']}"


def test_the_trainjob_names_the_runtime_and_the_runtime_what_exists():
    ref = TRAINJOB["spec"]["runtimeRef"]
    assert (ref.get("apiGroup", "trainer.kubeflow.org"), ref["kind"], ref["name"]) == (
        "trainer.kubeflow.org", RUNTIME["kind"], RUNTIME["metadata"]["name"])  # fmt: skip
    # a torch runtime: the Trainer sets torchrun's PET_ variables in the `node` container
    assert "torch" in RUNTIME["spec"]["mlPolicy"]
    assert RUNTIME["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    container = node_container(RUNTIME)
    pod = node_job(RUNTIME)["template"]["spec"]["template"]["spec"]
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == SETTINGS["metadata"]["name"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
    assert claims == {"artifacts": ARTIFACTS_CLAIM["metadata"]["name"]}
    assert ARTIFACTS_CLAIM["spec"]["accessModes"] == ["ReadWriteMany"]  # every node writes
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["artifacts"] == SETTINGS["data"]["MOE_ARTIFACT_DIR"]
    assert mounts["cache"] == SETTINGS["data"]["MOE_CACHE_DIR"]
    # a stop checkpoints first; the gang restarts as one (no pod alone)
    assert pod["terminationGracePeriodSeconds"] >= 30 and pod["restartPolicy"] == "Never"
    assert node_job(RUNTIME)["template"]["spec"]["backoffLimit"] == 0
    assert RUNTIME["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] >= 1


def test_the_command_is_torchrun_on_c10d_and_every_variable_it_names_is_set():
    container = node_container(RUNTIME)
    command = container["command"]
    launcher, engine, _ = split_command(command)
    assert launcher[launcher.index("--rdzv-backend") + 1] == "c10d"
    assert (
        launcher[launcher.index("--rdzv-endpoint") + 1] == "$(PET_MASTER_ADDR):$(PET_MASTER_PORT)"
    )
    assert "--rdzv-id" in launcher
    assert engine == ["moe_core", "train"]
    # the kubelet expands $(NAME) from the container's variables: the Trainer's, its own
    # env and the settings ConfigMap's (envFrom)
    named = set(re.findall(r"\$\((\w+)\)", " ".join(command + TRAINJOB["spec"]["trainer"]["args"])))
    own = {variable["name"] for variable in container["env"]}
    assert named and named <= TRAINER_ENV | own | set(SETTINGS["data"]), named
    # nothing of its own that torchrun would take for its options (PET_*)
    assert not {name for name in own if name.startswith("PET_")}


def test_every_module_and_flag_the_manifests_name_exists():
    launcher, engine, engine_flags = split_command(node_container(RUNTIME)["command"])
    assert importlib.util.find_spec(f"{engine[0]}.__main__") is not None  # `-m moe_core`
    torchrun = help_text("-m", "torch.distributed.run")
    for flag in flags(launcher):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", torchrun), flag
    train = help_text("-m", *engine)
    for flag in flags(engine_flags + TRAINJOB["spec"]["trainer"]["args"]):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", train), flag


def run_flags(args: list[str]) -> argparse.Namespace:
    """The run-defining flags of `moe_core train` among `args` (the --help test holds the
    rest to flags that exist)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="tiny")
    parser.add_argument("--preset", default="baseline", choices=sorted(EXPERIMENT_PRESETS))
    parser.add_argument("--base-set", action="append", default=[])
    parser.add_argument("--set", action="append", default=[])
    return parser.parse_known_args(args)[0]


def test_the_example_run_is_one_the_engine_takes_on_the_gpus_the_trainjob_asks_for():
    trainer = TRAINJOB["spec"]["trainer"]
    parsed = run_flags(trainer["args"])
    base = base_config(parsed.base, **_parse_assignments(parsed.base_set, "--base-set"))
    config = get_experiment_configs(base)[parsed.preset]
    config = config.model_copy(update=_parse_assignments(parsed.set, "--set"))
    assert check(config, base) == []
    # torchrun's world is the run's gpus: one rank per GPU of every node
    assert base.gpus == trainer["numNodes"] * trainer["numProcPerNode"]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == trainer["numProcPerNode"]
    assert trainer["numNodes"] >= 2  # a run one node can hold is a worker's, not a TrainJob
    # an expert group's ranks are consecutive, so one node's (its all-to-all on NVLink)
    assert trainer["numProcPerNode"] % base.expert_parallel == 0


def expand(words: list[str], variables: dict[str, str]) -> list[str]:
    """$(NAME) in a container's command, as the kubelet expands it."""
    return [re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], word) for word in words]


TWO_NODES_TIMEOUT = 300


def test_two_nodes_on_this_machine_train_the_single_process_run(tmp_path, corpus_dir, cache_dir):
    """The runtime's command as each of two pods would run it (the variables the Trainer
    and the settings give a pod; a cache of each node's own), over c10d on 127.0.0.1: both
    exit 0, and rank 0's result is the single-process run's (test_parallel's EXACT: the
    dropless preset, no dropout)."""
    run = ["--base", "micro", "--preset", "dropless", "--set", "dropout=0.0", "--epochs", "2",
           "--base-set", "max_train_tokens=4096", "--base-set", "max_val_tokens=1024",
           "--quiet"]  # fmt: skip
    whole = tmp_path / "whole"
    assert moe_core_main(["train", *run, "--data-dir", str(corpus_dir), "--cache-dir",
                          str(cache_dir), "--out", str(whole)]) == 0  # fmt: skip

    job, port, artifacts = "two-nodes", free_port(), tmp_path / "artifacts"
    outside = {k: v for k, v in os.environ.items() if not k.startswith(("MOE_", "PET_"))}
    launchers, logs = [], []
    try:
        for node in range(2):
            variables = {
                **outside, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
                # the Trainer's (PET_NODE_RANK: c10d hands the ranks out, torchrun ignores it)
                "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": str(node),
                "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port),
                "TRAIN_JOB_NAME": job,
                # the settings ConfigMap's; each pod's cache is an emptyDir of its own
                "MOE_ARTIFACT_DIR": str(artifacts), "MOE_DATA_DIR": str(corpus_dir),
                "MOE_CACHE_DIR": str(tmp_path / f"cache-{node}"),
            }  # fmt: skip
            command = expand(node_container(RUNTIME)["command"], variables)
            command = [sys.executable, "-m", "torch.distributed.run", *command[1:]]  # torchrun
            logs.append(tmp_path / f"node{node}.log")
            with logs[-1].open("w") as log:
                launchers.append(subprocess.Popen(
                    [*command, *run, "--base-set", "gpus=2"], cwd=ROOT, env=variables,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                ))  # fmt: skip
        deadline = time.monotonic() + TWO_NODES_TIMEOUT
        for launcher, log in zip(launchers, logs, strict=True):
            try:
                code = launcher.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"not done in {TWO_NODES_TIMEOUT}s: {log.read_text()[-3000:]}")
            assert code == 0, log.read_text()[-4000:]
    finally:
        for launcher in launchers:
            stop_session(launcher)

    out = artifacts / "trainjobs" / job
    result = json.loads((out / "result.json").read_text())
    assert result["parallel"] == {"gpus": 2, "expert_parallel": 1}
    assert_exact(result, json.loads((whole / "result.json").read_text()))
    # rank 0's files, and every rank's part of the checkpoint, on the shared volume
    assert (out / "model.pt").is_file() and (out / "checkpoint.dcp" / ".metadata").is_file()

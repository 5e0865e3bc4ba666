"""What the deploy tests check manifests with: the YAML documents of a file, and Kubernetes'
own strict schemas (kubernetes-validate) for the hand-written schemas of custom resources
(keda_schema.yaml, trainer_schema.yaml) to refer to where a CRD embeds a Kubernetes type."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate.utils
import yaml
from referencing import Registry, Resource

# The newest Kubernetes kubernetes-validate ships.
LATEST = kubernetes_validate.utils.latest_version()


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def strict_registry(*names: str) -> Registry:
    """kubernetes-validate's strict schemas of these types (`envvar-v1`, ...) and the
    definitions they use, by their ids (https://kubernetes.io/api/envvar/v1)."""
    resources = (
        Resource.from_contents(kubernetes_validate.utils.schema_contents(
            f"kubernetes-json-schema/v{LATEST}-local-strict/{name}.json", LATEST))
        for name in (*names, "_definitions")
    )  # fmt: skip
    return Registry().with_resources((resource.id(), resource) for resource in resources)

"""Request bodies from the command line: a YAML or JSON file, `--set a.b=value` on top,
checked before anything is sent (a non-finite number, an empty file)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from moe_lab.app import UsageProblem


def parse_value(text: str) -> Any:
    """A --set value: JSON when it parses (2, 0.1, true, null, [2, 4], {"a": 1}), else the
    text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_sets(body: dict[str, Any], assignments: list[str], roots: tuple[str, ...]) -> None:
    """`config.top_k=2`, `base.num_epochs=2`: each into its section of the body."""
    for item in assignments:
        key, sep, raw = item.partition("=")
        path = key.strip().split(".")
        if not sep or len(path) < 2 or path[0] not in roots or not all(path):
            wanted = " or ".join(f"{root}.FIELD=VALUE" for root in roots)
            raise UsageProblem(f"--set takes {wanted}, not {item!r}")
        node = body
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UsageProblem(f"--set {item!r}: {part} is not an object in the request")
            node = child
        node[path[-1]] = parse_value(raw)


def load_body(file: Path) -> dict[str, Any]:
    """A request body from a JSON or YAML file (the same fields the API takes)."""
    try:
        text = file.read_text()
        body = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise UsageProblem(f"cannot read {file}: {' '.join(str(exc).split())}") from exc
    if body is None:  # nothing but whitespace or comments: not a request anyone meant
        raise UsageProblem(f"{file} is empty; it must hold the request body (an object)")
    if not isinstance(body, dict):
        raise UsageProblem(
            f"{file} must hold an object (the request body), not {type(body).__name__}"
        )
    return body


def check_finite(value: Any, where: str = "") -> None:
    """Every number in the body finite: JSON has no NaN or Infinity (`--set x=NaN`, `1e309`,
    YAML's `.inf` all parse as such), so the request could not even be sent."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageProblem(f"{where}: {value} is not a finite number (JSON has none)")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_finite(item, f"{where}[{index}]")


def split_list(values: list[str]) -> list[str]:
    """`-e baseline -e top2` and `-e baseline,top2` alike."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]

"""Request bodies from the command line: a YAML or JSON file, `--set a.b=value` on top,
checked before anything is sent (an empty file, a value JSON has not: a non-finite number,
a YAML date, bytes or set)."""

from __future__ import annotations

import json
import math
from datetime import date, datetime
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
    try:
        check_json(body)
    except UsageProblem as exc:
        raise UsageProblem(f"{file}: {exc}") from None
    return body


def check_json(value: Any, where: str = "") -> None:
    """Every value in the body one that JSON has, so that the request can be sent at all:
    every number finite (`--set x=NaN`, `1e309`, YAML's `.inf` parse as NaN or Infinity,
    which JSON has not), and nothing else YAML makes (a date, `!!binary` bytes, a `!!set`,
    a key that is not text); UsageProblem names the first one's place."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageProblem(f"{where}: {value} is not a finite number (JSON has none)")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UsageProblem(
                    f"{where + ': ' if where else ''}the key {key} is not text (JSON's keys are)"
                    "; quote it"
                )
            check_json(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json(item, f"{where}[{index}]")
    elif not isinstance(value, str | int | float | None):  # bool is an int
        raise UsageProblem(f"{where}: {_not_json(value)}")


def _not_json(value: Any) -> str:
    # YAML's own types, worded as the YAML that made them reads
    if isinstance(value, datetime):
        return f"{value} is a date and time, which JSON has not; quote it to send text"
    if isinstance(value, date):
        return f"{value} is a date, which JSON has not; quote it to send text"
    if isinstance(value, bytes):
        return "binary data (!!binary), which JSON has not"
    if isinstance(value, set | frozenset):
        return "a set (!!set), which JSON has not; write a list"
    return f"a {type(value).__name__}, which JSON has not"


def split_list(values: list[str]) -> list[str]:
    """`-e baseline -e top2` and `-e baseline,top2` alike."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]

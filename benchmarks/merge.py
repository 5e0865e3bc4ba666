"""`python -m benchmarks.merge OUT IN.json...`: one results file from several runs of the
suite (benchmarks/gpu_device.sh runs each GPU part in a process of its own): each
section's rows, parts and part times joined in the order given, the targets checked again
over all of them, and every input's environment kept under `runs`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .report import check_targets, format_table, write_json


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    if not results:
        raise ValueError("nothing to merge")
    sections: dict[str, dict[str, Any]] = {}
    for result in results:
        for name, body in result["sections"].items():
            into = sections.setdefault(name, {"rows": [], "parts": [], "part_seconds": {},
                                              "seconds": 0.0})  # fmt: skip
            if "error" in body:
                into.setdefault("errors", []).append(body["error"])
            into["rows"] += body.get("rows", [])
            into["parts"] += body.get("parts", [])
            into["part_seconds"] |= body.get("part_seconds", {})
            into["seconds"] += body.get("seconds", 0.0)
    merged = {
        "environment": results[0]["environment"],
        "settings": results[0]["settings"],
        "sections": sections,
        "seconds": sum(r["seconds"] for r in results),
        "runs": [r["environment"] for r in results],
    }
    merged["targets"] = check_targets(merged)
    return merged


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, inputs = Path(argv[0]), [Path(p) for p in argv[1:]]
    merged = merge([json.loads(p.read_text()) for p in inputs])
    write_json(merged, out)
    print(format_table(merged))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

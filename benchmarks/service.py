"""Part 5: the service against real Postgres and Redis (placeholder until measured)."""

from __future__ import annotations

from typing import Any

from .context import Context


def run(ctx: Context) -> dict[str, Any]:
    return {"skipped": "not yet implemented"}

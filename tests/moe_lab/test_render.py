"""What the CLI draws from runs alone: the compare table's Δ vs dense is taken only against a
dense run whose cross-entropy compares (moe_core.comparable)."""

from __future__ import annotations

from moe_core.config import base_config
from moe_lab.compare_render import compare_rows


def run(run_id: int, ce: float, base: str, **fields) -> dict:
    return {"id": run_id, "name": f"r{run_id}", "status": "succeeded", "dense": False,
            "best_val_ce_loss": ce, "base": base_config(base).model_dump(), **fields}  # fmt: skip


def test_delta_vs_dense_only_against_a_comparable_dense_run():
    dense = run(1, 6.0, "micro", dense=True)
    same, other = run(2, 5.5, "micro"), run(3, 5.0, "tiny")
    named = run(4, 5.0, "tiny", baseline_id=1)  # a pair stored before the API refused it
    rows = {r["id"]: r for r in compare_rows([dense, same, other, named], {}, {1: dense})}
    assert rows[2]["delta_vs_dense"] == -0.5 and rows[2]["dense_id"] == 1
    for incomparable in (3, 4):
        assert rows[incomparable]["delta_vs_dense"] is None
        assert rows[incomparable]["dense_comparable"] is False

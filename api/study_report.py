"""A study's aggregate status and verdict tables, derived from its member runs: one row per
MoE run (against the dense run of its seed), and one per preset over all the seeds."""

from __future__ import annotations

from typing import Any

from api.verdicts import NoVerdict, seeds_verdict, verdict
from moe_core.verdict_records import ServedVerdict
from store.models import FINISHED, Experiment, Status, Study
from store.results import stored_result


def study_status(members: list[Experiment]) -> Status:
    """running while any member is queued or running (queued if none started yet);
    then succeeded if all did, else failed if any did, else cancelled."""
    statuses = {Status(member.status) for member in members}
    if not statuses <= FINISHED:
        return Status.queued if statuses == {Status.queued} else Status.running
    if statuses == {Status.succeeded}:
        return Status.succeeded
    return Status.failed if Status.failed in statuses else Status.cancelled


def study_summary(study: Study) -> dict[str, Any]:
    dense_ids = [member.id for member in _by_seed(study.members) if member.dense]
    return {
        "id": study.id,
        "name": study.name,
        "owner": study.owner,
        "status": study_status(study.members),
        "seeds": study.seeds,
        "precision": study.precision,
        "dense_id": dense_ids[0],
        "dense_ids": dense_ids,
        "member_ids": [member.id for member in study.members],
        "created_at": study.created_at,
    }


def study_read(study: Study) -> dict[str, Any]:
    # keyed by id; a member's baseline_id is None for a dense run (no baseline)
    by_id: dict[int | None, Experiment] = {member.id: member for member in study.members}
    moe = [member for member in _by_seed(study.members) if not member.dense]
    return {
        **study_summary(study),
        "base_preset": study.base_preset,
        "base": study.base,
        "experiments": study.experiment_presets,
        "members": [_member(member) for member in study.members],
        "verdicts": [_member_verdict(member, by_id.get(member.baseline_id)) for member in moe],
        "preset_verdicts": [
            _preset_verdict(preset, [m for m in moe if m.preset == preset], by_id)
            for preset in study.experiment_presets
        ],
    }


def study_results(study: Study) -> dict[str, Any]:
    """The study as the spec's main() writes experiment_results.json (same keys: `base`,
    `seeds`, `dense`, `experiments`, `runs`, `verdicts`), from the store of record: each
    finished run's stored result, null for one that has not succeeded."""
    members = _by_seed(study.members)

    def result(member: Experiment) -> dict[str, Any] | None:
        return stored_result(member) if member.status == Status.succeeded else None

    dense = [result(member) for member in members if member.dense]
    runs = {preset: [result(m) for m in members if m.preset == preset]
            for preset in study.experiment_presets}  # fmt: skip
    read = study_read(study)
    return {
        "study_id": study.id,
        "name": study.name,
        "status": read["status"],
        "base": study.base,
        "precision": study.precision,
        "seeds": sorted({_seed(member) for member in members}),
        # The spec's keys hold the first seed's runs; `runs` holds every seed's, in order.
        "dense": dense[0] if dense else None,
        "experiments": {
            preset: results[0] if results else None for preset, results in runs.items()
        },  # fmt: skip
        "runs": {"dense": dense, **runs},
        "verdicts": {row["preset"]: row["verdict"] for row in read["preset_verdicts"]},
    }


def _member(member: Experiment) -> dict[str, Any]:
    return {
        "id": member.id,
        "name": member.name,
        "preset": member.preset,
        "dense": member.dense,
        "seed": _seed(member),
        "baseline_id": member.baseline_id,
        "status": member.status,
        "current_epoch": member.current_epoch,
        "num_epochs": member.num_epochs,
        "best_val_loss": member.best_val_loss,
        "best_val_ce_loss": member.best_val_ce_loss,
        "error": member.error,
    }


def _member_verdict(member: Experiment, baseline: Experiment | None) -> dict[str, Any]:
    try:
        judged: ServedVerdict | None = verdict(member, baseline)
        detail = None
    except NoVerdict as exc:
        judged, detail = None, str(exc)
    return {
        "experiment_id": member.id,
        "name": member.name,
        "preset": member.preset,
        "seed": _seed(member),
        "baseline_id": member.baseline_id,
        "status": member.status,
        "passed": judged["passed"] if judged else None,
        "primary_passed": judged["primary"]["passed"] if judged else None,
        "tertiary_passed": judged["tertiary"]["passed"] if judged else None,
        "verdict": judged,
        "detail": detail,
    }


def _preset_verdict(
    preset: str, members: list[Experiment], by_id: dict[int | None, Experiment]
) -> dict[str, Any]:
    """judge_seeds over the preset's runs, each paired with the dense run of its seed."""
    pairs = [(member, by_id.get(member.baseline_id)) for member in members]
    row: dict[str, Any] = {
        "preset": preset,
        "seeds": [_seed(member) for member in members],
        "experiment_ids": [member.id for member in members],
        "passed": None,
        "primary_passed": None,
        "tertiary_passed": None,
        "significant": None,
        "significance_of": None,
        "significance_note": None,
        "val_loss_delta": None,
        "gap_delta": None,
        "per_seed": [],
        "verdict": None,
        "lines": [],
        "detail": None,
    }
    try:
        judged = seeds_verdict(pairs)
    except NoVerdict as exc:
        return {**row, "detail": f"judged once every seed's pair has succeeded: {exc}"}
    primary = judged["primary"]
    return {
        **row,
        "passed": judged["passed"],
        "primary_passed": primary["passed"],
        "tertiary_passed": judged["tertiary"]["passed"],
        "significant": judged["significant"],
        "significance_of": primary["significance_of"],
        "significance_note": judged.get("significance_note"),
        "val_loss_delta": primary["val_loss_delta"],
        "gap_delta": primary["gap_delta"],
        "per_seed": [
            {
                "seed": _seed(member),
                "experiment_id": member.id,
                "baseline_id": member.baseline_id,
                "passed": single["passed"],
                "primary_passed": single["primary"]["passed"],
                "tertiary_passed": single["tertiary"]["passed"],
                "val_loss_delta": single["primary"].get("val_loss_delta"),
            }
            for member, single in zip(members, judged["per_seed"], strict=True)
        ],
        "verdict": judged,
        "lines": judged["lines"],
    }


def _seed(member: Experiment) -> int:
    return member.base["seed"]


def _by_seed(members: list[Experiment]) -> list[Experiment]:
    """Members in seed order (ids order them within a seed)."""
    return sorted(members, key=lambda member: (_seed(member), member.id))

"""A run's system metrics: its training process's CPU and memory, and its GPU's
utilisation, memory and power, every few seconds (worker.system_metrics reads them,
store.system_points keeps them)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SessionDep
from api.errors import error_responses
from api.params import ExperimentId
from api.routes.experiments import _get_or_404
from api.schemas import SystemRead
from store import system_points

# The same prefix and tag as the experiments' own routes (as api.routes.run_files).
router = APIRouter(prefix="/experiments", tags=["experiments"])


@router.get("/{experiment_id}/system", response_model=SystemRead,
            responses=error_responses(404, 422))  # fmt: skip
def read_experiment_system(*, experiment_id: ExperimentId, session: SessionDep) -> dict:
    """The run's readings in time order, at most MOE_SYSTEM_POINTS_MAX of them."""
    _get_or_404(session, experiment_id)
    points = system_points.system_points(session=session, experiment_id=experiment_id)
    return {"experiment_id": experiment_id, "points": points}

"""What operators and autoscalers read: Prometheus metrics and the live workers."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import SessionDep, SettingsDep
from api.prometheus import exposition
from api.schemas import WorkerList
from store import workers

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def read_prometheus_metrics(*, settings: SettingsDep) -> Response:
    """Runs by status, the queue's depth and age, live and busy workers, epochs and their
    duration, takeovers, handbacks and restarts, in Prometheus' text format."""
    return Response(exposition(settings), media_type=CONTENT_TYPE_LATEST)


@router.get("/workers", response_model=WorkerList)
def list_workers(*, session: SessionDep, settings: SettingsDep) -> dict:
    """Live workers (heartbeat within MOE_HEARTBEAT_TIMEOUT), with the run each one trains."""
    items = workers.live_workers(session=session, heartbeat_timeout=settings.heartbeat_timeout)
    return {"items": items, "total": len(items)}

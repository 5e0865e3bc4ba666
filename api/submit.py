"""Store new runs, then queue their tasks: a task must never find its row missing, and a
POST that fails leaves nothing behind. Submissions are idempotent under a client's
Idempotency-Key, enforced by a unique column, so that concurrent retries store one run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TypeVar

from fastapi import HTTPException, status
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store import catalogue
from store.models import Experiment, Study, Sweep
from store.queue import TrainingQueue

# Seconds a client should wait before retrying a submission the broker refused.
BROKER_RETRY_AFTER = 5

Stored = TypeVar("Stored", Experiment, Study, Sweep)


def request_hash(body: BaseModel) -> str:
    """The body as validated (defaults filled, key order fixed): the same request spelt
    differently hashes the same."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def original_of(
    *, session: Session, model: type[Stored], idempotency_key: str, digest: str, owner: str
) -> Stored | None:
    """What an earlier POST of `owner` with this key stored, or None; 409 when it came with
    another body (a key names one request, not a slot to overwrite), or from another user
    (whose submission a key must neither return nor reveal)."""
    original = catalogue.find_submission(
        session=session, model=model, idempotency_key=idempotency_key
    )
    unpublished = original is not None and not catalogue.submission_published(
        session=session, submission=original
    )
    # End the read: the connection goes back to the pool now, not when the response is out
    # (the row stays loaded: sessions do not expire on commit).
    session.commit()
    if original is not None and original.owner != owner:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"Idempotency-Key {idempotency_key!r} was used by another user; use a new key",
        )
    if original is not None and original.request_hash != digest:
        what = {Experiment: "experiment", Study: "study", Sweep: "sweep"}[model]
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"Idempotency-Key {idempotency_key!r} was used for {what} {original.id} with "
            "another body; use a new key for a new request",
        )
    if unpublished:
        # The first request is still handing its run to the broker, or its broker failed
        # and the run is being taken back: its answer is not known yet.
        raise _in_progress(idempotency_key)
    return original


def _in_progress(idempotency_key: str) -> HTTPException:
    return HTTPException(
        status.HTTP_409_CONFLICT,
        f"a request with Idempotency-Key {idempotency_key!r} is in progress; retry",
        headers={"Retry-After": "1"},
    )


def store_once(
    *,
    session: Session,
    model: type[Stored],
    idempotency_key: str | None,
    digest: str,
    add: Callable[[], Stored],
    owner: str,
) -> tuple[Stored, bool]:
    """`add()` the rows (flushed, not committed) unless this key stored them already:
    (the row, True) for a new one, (the original, False) for a replay."""
    if idempotency_key is not None:
        original = original_of(
            session=session, model=model, idempotency_key=idempotency_key, digest=digest,
            owner=owner,
        )  # fmt: skip
        if original is not None:
            return original, False
    try:
        return add(), True
    except IntegrityError:
        # A concurrent request with the same key inserted first: the unique key decided.
        if idempotency_key is None:
            raise
        original = original_of(
            session=session, model=model, idempotency_key=idempotency_key, digest=digest,
            owner=owner,
        )  # fmt: skip
        if original is None:  # it rolled back (its broker failed): nothing to replay
            raise _in_progress(idempotency_key) from None
        return original, False


def submit(
    *,
    session: Session,
    queue: TrainingQueue,
    experiments: list[Experiment],
    study: Study | None = None,
    sweep: Sweep | None = None,
) -> None:
    """Commit the session, then enqueue one task per experiment.

    The connection goes back to the pool at the commit: nothing holds one while the broker
    is waited on. A broker that refuses the tasks gets the rows deleted again (a run no
    task will ever pick up must not linger as if queued) and a 503 with Retry-After.
    """
    session.commit()
    ids = [experiment.id for experiment in experiments]
    try:
        queue.enqueue(ids)
    except Exception as exc:  # kombu raises transport-specific errors
        try:
            catalogue.withdraw(session=session, experiment_ids=ids,
                               study_id=study.id if study else None,
                               sweep_id=sweep.id if sweep else None)  # fmt: skip
            outcome = "nothing was stored"
        except Exception:  # the database too: the sweep publishes them once all is back
            outcome = "the run is stored and will be queued once the broker is back"
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the task broker is unreachable, {outcome}: {exc}",
            headers={"Retry-After": str(BROKER_RETRY_AFTER)},
        ) from exc
    catalogue.mark_published(session=session, experiment_ids=ids)

"""A lab's people (admins manage them) and their API tokens (each user manages their own).
Every change goes into the audit trail with the change (store.audit)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import AdminDep, Caller, CallerDep, forbidden
from api.deps import SessionDep
from api.errors import error_responses
from api.limits import MAX_ID
from api.params import Offset
from api.people import (
    AuditList,
    TokenCreate,
    TokenCreated,
    TokenList,
    UserCreate,
    UserList,
    UserRead,
    UserUpdate,
)
from store import audit, users
from store.models import Role, User, utcnow

router = APIRouter(prefix="/users", tags=["users"])
audit_router = APIRouter(prefix="/audit", tags=["users"])
NamePath = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


def user_read(session: Session, user: User) -> dict[str, Any]:
    now = users.usage(session=session, owner=user.name)
    return {"name": user.name, "role": user.role, "disabled": user.disabled,
            "max_queued_runs": user.max_queued_runs, "max_gpus": user.max_gpus,
            "queued_runs": now.queued_runs, "gpus_in_use": now.gpus_in_use,
            "created_at": user.created_at}  # fmt: skip


def _user_or_404(session: Session, name: str) -> User:
    user = users.get_user(session=session, name=name)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {name!r}")
    return user


def _self_or_admin(caller: Caller, name: str) -> None:
    if not (caller.admin or caller.name == name):
        raise forbidden(f"{caller.name} may manage their own tokens only, not {name}'s")


@router.post("", response_model=UserRead, status_code=status.HTTP_201_CREATED,
             responses=error_responses(400, 403, 409, 413, 422))  # fmt: skip
def create_user(*, body: UserCreate, caller: AdminDep, session: SessionDep) -> dict[str, Any]:
    """Add a user (admins only). They sign in with a token made for them
    (POST /users/{name}/tokens), which an admin or they themselves create."""
    try:
        user = users.create_user(session=session, name=body.name, role=Role(body.role),
                                 max_queued_runs=body.max_queued_runs, max_gpus=body.max_gpus)  # fmt: skip
    except IntegrityError:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, f"user {body.name!r} exists") from None
    audit.record(session=session, actor=caller.name, action="user.create",
                 target=f"user {user.name}", detail=body.model_dump(mode="json"))  # fmt: skip
    session.commit()
    return user_read(session, user)


@router.get("", response_model=UserList, responses=error_responses(403, 422))
def list_users(*, caller: AdminDep, session: SessionDep) -> dict[str, Any]:
    """Every user, with their quotas and what they hold now (admins only)."""
    rows = users.list_users(session=session)
    return {"items": [user_read(session, u) for u in rows], "total": len(rows)}


@router.get("/me", response_model=UserRead, responses=error_responses(422))
def who_am_i(*, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    """The caller: who a token says they are (the CLI's `login` asks this)."""
    return user_read(session, _user_or_404(session, caller.name))


@router.get("/{name}", response_model=UserRead, responses=error_responses(403, 404, 422))
def get_user(*, name: NamePath, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    """A user (admins, or the user themselves)."""
    _self_or_admin(caller, name)
    return user_read(session, _user_or_404(session, name))


@router.patch(
    "/{name}", response_model=UserRead, responses=error_responses(400, 403, 404, 413, 422)
)
def update_user(
    *, name: NamePath, body: UserUpdate, caller: AdminDep, session: SessionDep
) -> dict[str, Any]:
    """Change a user's role, disable them (their tokens are refused from the next request;
    their runs stay theirs), or set their quotas (null: the deployment's)."""
    user = _user_or_404(session, name)
    changes = body.model_dump(exclude_unset=True, mode="json")
    for field, value in changes.items():
        if field in ("role", "disabled") and value is None:
            continue  # a role and a state are never null
        setattr(user, field, value)
    audit.record(session=session, actor=caller.name, action="user.update",
                 target=f"user {name}", detail=changes)  # fmt: skip
    session.commit()
    return user_read(session, user)


@router.post("/{name}/tokens", response_model=TokenCreated, status_code=status.HTTP_201_CREATED,
             responses=error_responses(400, 403, 404, 413, 422))  # fmt: skip
def create_token(
    *, name: NamePath, body: TokenCreate, caller: CallerDep, session: SessionDep
) -> dict[str, Any]:
    """A new API token of the user (admins, or the user themselves): the answer carries its
    secret, this once. Keep it in the CLI with `moe-lab login`."""
    _self_or_admin(caller, name)
    user = _user_or_404(session, name)
    expires = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    token, secret = users.create_token(session=session, user=user, name=body.name,
                                       expires_at=expires)  # fmt: skip
    audit.record(session=session, actor=caller.name, action="token.create",
                 target=f"user {name}", detail={"token_id": token.id, "name": body.name,
                                                "expires_at": expires and expires.isoformat()})  # fmt: skip
    session.commit()
    return {**_token_read(token), "token": secret}


@router.get("/{name}/tokens", response_model=TokenList, responses=error_responses(403, 404, 422))
def list_tokens(*, name: NamePath, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    """The user's tokens, revoked ones included (never their secrets)."""
    _self_or_admin(caller, name)
    user = _user_or_404(session, name)
    return {"items": [_token_read(t) for t in users.list_tokens(session=session, user=user)]}


@router.delete("/{name}/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT,
               response_class=Response, responses=error_responses(403, 404, 422))  # fmt: skip
def revoke_token(
    *, name: NamePath, token_id: Annotated[int, Path(ge=1, le=MAX_ID)], caller: CallerDep,
    session: SessionDep,
) -> Response:  # fmt: skip
    """Revoke a token: refused from its next request on. Revoking it again changes nothing."""
    _self_or_admin(caller, name)
    user = _user_or_404(session, name)
    token = users.revoke_token(session=session, user=user, token_id=token_id)
    if token is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{name} has no token {token_id}")
    audit.record(session=session, actor=caller.name, action="token.revoke",
                 target=f"user {name}", detail={"token_id": token_id, "name": token.name})  # fmt: skip
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _token_read(token: Any) -> dict[str, Any]:
    return {"id": token.id, "name": token.name, "created_at": token.created_at,
            "expires_at": token.expires_at, "last_used_at": token.last_used_at,
            "revoked_at": token.revoked_at}  # fmt: skip


@audit_router.get("", response_model=AuditList, responses=error_responses(403, 422))
def list_audit(
    *, caller: AdminDep, session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Offset = 0,
) -> dict[str, Any]:  # fmt: skip
    """Every change, newest first: who, when, what (admins only)."""
    rows, total = audit.events(session=session, limit=limit, offset=offset)
    return {"items": rows, "total": total}

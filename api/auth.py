"""Who is asking, and what they may do (store.models.users).

A request names its caller with `Authorization: Bearer <token>`: MOE_API_TOKEN is the
bootstrap admin's (so a deployment of before users keeps working unchanged), any other
token a user's, looked up by its hash (store.users). Without MOE_API_TOKEN the deployment
is open, as the embedded default is: a request without a token acts as the bootstrap
admin, and one with a user's token as that user.

The caller is identified once, before routing (api.security.Authentication), so that
without a valid token nothing about what lies under a path is told; routes read it with
`CallerDep`. Roles: an admin does everything; a member submits and changes or deletes
their own runs, studies and sweeps; a viewer reads. Every read is open to every role.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from store import users
from store.db import session_scope
from store.models import BOOTSTRAP_ADMIN, Role
from store.settings import Settings


@dataclass(frozen=True)
class Caller:
    name: str
    role: Role

    @property
    def admin(self) -> bool:
        return self.role == Role.admin


BOOTSTRAP = Caller(BOOTSTRAP_ADMIN, Role.admin)


class Unauthorized(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def unauthorized(reason: str = "missing or wrong bearer token") -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=reason,
        headers={"WWW-Authenticate": "Bearer"},
    )


def identify(settings: Settings, authorization: str | None) -> Caller:
    """The caller of a request with this Authorization header; Unauthorized when its token
    is not accepted. Reads the database for a user's token (call it off the event loop)."""
    scheme, token = get_authorization_scheme_param(authorization)
    if not token or scheme.lower() != "bearer":
        if settings.api_token is None:
            return BOOTSTRAP  # an open deployment
        raise Unauthorized("missing or wrong bearer token")
    if settings.api_token is not None and secrets.compare_digest(
        token.encode(), settings.api_token.get_secret_value().encode()
    ):
        return BOOTSTRAP
    with session_scope(settings.database_url) as session:
        found = users.authenticate(session=session, secret=token)
    if isinstance(found, users.Refusal):
        # which refusal (revoked, expired, disabled) helps its owner; it tells a guesser
        # nothing, as only a real token gets past "unknown"
        raise Unauthorized(f"{found}: missing or wrong bearer token")
    return Caller(found.name, Role(found.role))


# auto_error off: a missing header is our 401 (with the scheme), not FastAPI's 403. The
# scheme is declared so that /openapi.json says how to authenticate.
_bearer = HTTPBearer(auto_error=False)


def current_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller the middleware identified (every guarded path goes through it)."""
    caller = getattr(request.state, "caller", None)
    if caller is None:  # a route outside the middleware's prefixes: nothing to trust
        raise unauthorized()
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]


def forbidden(detail: str) -> HTTPException:
    return HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail=detail)


def require_member(caller: CallerDep) -> Caller:
    """A submission: members and admins."""
    if caller.role == Role.viewer:
        raise forbidden(f"{caller.name} is a viewer: viewers read, members submit (an admin "
                        "can change a user's role)")  # fmt: skip
    return caller


def require_admin(caller: CallerDep) -> Caller:
    if not caller.admin:
        raise forbidden(f"{caller.name} is a {caller.role}: only an admin may do this")
    return caller


MemberDep = Annotated[Caller, Depends(require_member)]
AdminDep = Annotated[Caller, Depends(require_admin)]


def authorize_change(caller: Caller, owner: str, what: str, action: str) -> None:
    """Only the owner or an admin changes or deletes `what`: a 403 that says whose it is."""
    if caller.admin or caller.name == owner:
        return
    raise forbidden(f"{what} is {owner}'s: only {owner} or an admin may {action} it")

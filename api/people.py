"""The bodies and answers of /users and /audit: a lab's people, their tokens, the trail."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from api.overrides import BODY, NO_NUL, Whole


def _not_me(name: str) -> str:
    if name == "me":
        raise PydanticCustomError("name_reserved", "`me` names whoever asks (/users/me, ?owner=me)")
    return name


UserName = Annotated[
    str,
    Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
          description="lower case letters, digits and _.- (at most 64), starting with a "
          "letter or digit; not `me`, which /users/me and ?owner=me mean (`name_reserved`)",
          examples=["ada"]),
    AfterValidator(_not_me),
]  # fmt: skip
RoleName = Literal["admin", "member", "viewer"]  # store.models.Role's values
Quota = Whole[Annotated[int, Field(ge=0, le=100_000)]]
# A token's name says where it is used (a laptop, CI); nothing secret.
TokenName = Annotated[str, Field(min_length=1, max_length=100, pattern=NO_NUL)]
MAX_TOKEN_DAYS = 3650


class UserCreate(BaseModel):
    """A new user (admins only). Quotas left out are the deployment's
    (MOE_MAX_QUEUED_RUNS_PER_USER, MOE_MAX_GPUS_PER_USER)."""

    model_config = ConfigDict(**BODY, json_schema_extra={
        "examples": [{"name": "ada", "role": "member", "max_gpus": 4}]})  # fmt: skip

    name: UserName
    role: RoleName = Field(description="admin: everything; member: submits, changes their own "
                       "work, reads all; viewer: reads")  # fmt: skip
    max_queued_runs: Quota | None = Field(None, description="runs they may have queued")
    max_gpus: Quota | None = Field(None, description="GPUs their running runs may hold")


class UserUpdate(BaseModel):
    """An admin's change to a user: role, disabled (their tokens stop working at once,
    their runs stay theirs), quotas (null: the deployment's)."""

    model_config = ConfigDict(**BODY, json_schema_extra={
        "minProperties": 1, "examples": [{"max_gpus": 8}, {"disabled": True}]})  # fmt: skip

    role: RoleName | None = None
    disabled: bool | None = None
    max_queued_runs: Quota | None = None
    max_gpus: Quota | None = None


class UserRead(BaseModel):
    name: str
    role: RoleName
    disabled: bool
    max_queued_runs: int | None = Field(description="their quota; null: the deployment's")
    max_gpus: int | None = Field(description="their quota; null: the deployment's")
    queued_runs: int = Field(description="their runs waiting in the queue now")
    gpus_in_use: int = Field(description="GPUs their running runs hold now")
    created_at: datetime


class UserList(BaseModel):
    items: list[UserRead]
    total: int


class TokenCreate(BaseModel):
    model_config = ConfigDict(**BODY, json_schema_extra={
        "examples": [{"name": "laptop", "expires_in_days": 90}]})  # fmt: skip

    name: TokenName
    expires_in_days: Whole[Annotated[int, Field(ge=1, le=MAX_TOKEN_DAYS)]] | None = Field(
        None, description="it stops working after this many days; null: until revoked"
    )


class TokenRead(BaseModel):
    id: int
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="to the minute")
    revoked_at: datetime | None


class TokenCreated(TokenRead):
    token: str = Field(description="the secret, shown this once: only its hash is kept")


class TokenList(BaseModel):
    items: list[TokenRead]


class AuditEventRead(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="the user who made the change")
    action: str = Field(description="e.g. experiment.cancel, token.create, user.update")
    target: str = Field(description="what it changed, e.g. experiment 12, user ada")
    detail: dict[str, Any] | None = Field(description="the change's own fields (never a secret)")


class AuditList(BaseModel):
    items: list[AuditEventRead]
    total: int

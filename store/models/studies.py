"""A study: the spec's main() as one submission, its members the runs."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from store.models.base import Base, JSONType, UTCDateTime, utcnow

if TYPE_CHECKING:
    from store.models.experiments import Experiment


class Study(Base):
    """The spec's main(): a dense baseline plus experiments judged against it."""

    __tablename__ = "studies"
    # SQLite: ids are never reused after a delete (Postgres sequences never reuse one).
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    base_preset: Mapped[str | None] = mapped_column(String(50))
    base: Mapped[dict[str, Any]] = mapped_column(JSONType)
    experiment_presets: Mapped[list[str]] = mapped_column(JSONType)
    # Each preset and the dense baseline run once per seed: base.seed, base.seed + 1, ...
    seeds: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # bf16 or fp32 for every member: the base's, or (precision auto) what the first member
    # to start resolved on its device, so that verdicts compare like with like.
    precision: Mapped[str | None] = mapped_column(String(10))
    # The client's Idempotency-Key and the hash of the body it came with (see Experiment).
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Who submitted it (store.models.users): only they or an admin change or delete it.
    owner: Mapped[str] = mapped_column(String(64), ForeignKey("users.name"), index=True)

    members: Mapped[list[Experiment]] = relationship(
        back_populates="study", order_by="Experiment.id", lazy="selectin"
    )

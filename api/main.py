"""The FastAPI application: `uvicorn api.main:app`.

The API process never imports torch (only moe_core.config and moe_core.criteria, which are
torch-free): its image ships without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError

from api.deps import require_token
from api.migrate import auto_migrate
from api.routes import experiments, health, presets, studies
from api.settings import get_settings
from api.specs import SpecError


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Embedded SQLite is migrated here; a server database by `alembic upgrade head`.
    auto_migrate(app.dependency_overrides.get(get_settings, get_settings)())
    yield


async def _spec_error(request: Request, exc: Exception) -> Response:
    # A config the engine rejects is a 422 like any other body error, located in the body.
    assert isinstance(exc, SpecError)
    return await request_validation_exception_handler(request, RequestValidationError(exc.errors))


def create_app() -> FastAPI:
    app = FastAPI(
        title="MoE lab",
        summary="Train and compare Mixture-of-Experts transformer experiments",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_exception_handler(SpecError, _spec_error)
    app.include_router(health.router)
    guarded = [Depends(require_token)]
    for module in (experiments, studies, presets):
        app.include_router(module.router, dependencies=guarded)
    return app


app = create_app()

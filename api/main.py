"""The FastAPI application: `uvicorn api.main:app`.

The API process never imports torch: its image ships without it. Of the engine it loads
only torch-free modules: `moe_core.comparable`, `config`, `criteria`, `measures`,
`presets`, `proposals`, `records`, `search`, `sizing`, `statistics`, `verdict_records` and
`verdict_words`, its own imports and the store's (tests/test_layers.py holds this list to
what the process loads).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.types import Scope

from api.auth import current_caller
from api.body_limit import BodySizeLimit
from api.dashboard import add_dashboard
from api.docs import add_docs
from api.errors import (
    DATABASE_AWAY,
    database_unreachable_response,
    error_responses,
    method_not_allowed,
    validation_error,
)
from api.params import known_query_only
from api.resolve import ConfigRefused
from api.routes import (
    experiments,
    health,
    operations,
    presets,
    run_files,
    studies,
    sweeps,
    system_metrics,
    users,
)
from api.security import Authentication, SecurityHeaders
from store.migrate import auto_migrate
from store.settings import Settings, get_settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = app.dependency_overrides.get(get_settings, get_settings)()
    # Embedded SQLite is migrated here; a server database by `alembic upgrade head`.
    auto_migrate(settings)
    # As many request threads as the pool has connections (store.db): a request that holds
    # a thread always gets a connection; the rest wait on the event loop, costing nothing.
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
    yield


async def _config_refused(request: Request, exc: Exception) -> Response:
    # A config the engine rejects is a 422 like any other body error, located in the body.
    assert isinstance(exc, ConfigRefused)
    return await validation_error(request, RequestValidationError(exc.errors))


async def _database_unreachable(request: Request, exc: Exception) -> Response:
    # A restart or failover of the database is a moment to wait out, not a server error.
    return database_unreachable_response(request.method, request.url.path, exc)


def _operation_id(route: APIRoute) -> str:
    return route.name


def _first_segment(path: str) -> str:
    return "/" + path.strip("/").split("/")[0]


def _settings_of(scope: Scope) -> Settings:
    # the settings the routes get (a test's dependency override included)
    app = scope["app"]
    return app.dependency_overrides.get(get_settings, get_settings)()


def create_app() -> FastAPI:
    app = FastAPI(
        title="MoE lab",
        summary="Train and compare Mixture-of-Experts transformer experiments",
        version="0.1.0",
        lifespan=lifespan,
        # Operation ids are the handlers' names (create_experiment), not FastAPI's
        # create_experiment_experiments_post: generated clients get readable methods.
        generate_unique_id_function=_operation_id,
        docs_url=None,  # served by add_docs, from installed files rather than a CDN
        redoc_url=None,
    )
    add_docs(app)
    app.add_middleware(BodySizeLimit)
    routed = (presets, experiments, run_files, system_metrics, studies, sweeps, operations, users)
    guarded_routers = [module.router for module in routed]
    guarded_routers.append(users.audit_router)
    app.add_middleware(
        Authentication,
        prefixes={_first_segment(route.path) for router in guarded_routers
                  for route in router.routes},
        settings=_settings_of,
    )  # fmt: skip
    app.add_middleware(SecurityHeaders)  # outermost: on every answer, a 401 or 413 too
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ConfigRefused, _config_refused)
    app.add_exception_handler(405, method_not_allowed)
    for error in DATABASE_AWAY:
        app.add_exception_handler(error, _database_unreachable)
    # Every route: a query parameter it does not take is a 422 (api.params).
    app.router.dependencies.append(Depends(known_query_only))
    app.include_router(health.router)
    add_dashboard(app)
    guarded = [Depends(current_caller)]
    app.include_router(presets.router, dependencies=guarded, responses=error_responses(401))
    for router in guarded_routers[1:]:  # these read the database (a user's token too)
        app.include_router(router, dependencies=guarded,
                           responses=error_responses(401, 403, 503))  # fmt: skip
    return app


app = create_app()

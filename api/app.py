"""The app factory: `uvicorn api.app:create_app --factory` (what `patternalarm api` runs)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from api.database import Database, DatabaseUnavailable
from api.deps import Resources, require_api_key
from api.routes import dashboard, incidents, ops, predict, quality
from api.schemas import MAX_BATCH, body_schemas
from api.scoring import ModelProvider, NoChampion
from api.telemetry import MetricsMiddleware, Telemetry
from patternalarm import secrets
from patternalarm import settings as settings_mod
from patternalarm.settings import Settings

MAX_ERRORS = 100  # field errors in one 422: enough to fix a request, bounded for a flood
DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"

DESCRIPTION = """Scores events and feature vectors with each domain's champion model, serves
the incidents the stream raised, and the live dashboard at `/`.

Every endpoint but `/health` needs the API key (`api_key` in `<var_dir>/secrets.json`) in the
`X-API-Key` header."""


def create_app(settings: Settings | None = None, models: ModelProvider | None = None) -> FastAPI:
    settings = settings or settings_mod.get()
    telemetry = Telemetry()
    resources = Resources(settings=settings, api_key=secrets.load(settings)["api_key"],
                          database=Database(settings),
                          models=models or ModelProvider(settings), telemetry=telemetry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        resources.models.close()
        resources.database.close()

    # FastAPI's limit counts the bytes as they arrive, so a chunked body without a
    # Content-Length is cut off too, before anything decodes it.
    app = FastAPI(title="PatternAlarm", version="0.1.0", description=DESCRIPTION,
                  lifespan=lifespan, max_body_size=settings.api_max_body_bytes)
    app.state.resources = resources
    app.add_middleware(MetricsMiddleware, telemetry=telemetry)

    keyed = [Depends(require_api_key)]
    app.include_router(ops.router)
    app.include_router(ops.metrics_router, dependencies=keyed)
    app.include_router(predict.router, dependencies=keyed)
    app.include_router(incidents.router, dependencies=keyed)
    app.include_router(dashboard.router, dependencies=keyed)
    app.include_router(quality.router, dependencies=keyed)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The batch length is checked before its items are validated (cheap for huge bodies);
        # too many is a size problem (413), not a malformed item (422).
        if any(e["type"] == "too_long" and tuple(e["loc"]) == ("body", "items")
               for e in exc.errors()):
            return JSONResponse({"detail": f"a batch holds at most {MAX_BATCH} items; split it"},
                                status_code=413)
        # Without the input: it may hold what JSON cannot carry (1e400 decodes to inf) and
        # echoing a hostile body back would multiply it. The loc names the field.
        errors = [{k: v for k, v in e.items() if k != "input"}
                  for e in exc.errors()[:MAX_ERRORS]]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(DatabaseUnavailable)
    async def database_unavailable(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503,
                            headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(NoChampion)
    async def no_champion(request: Request, exc: NoChampion) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    def openapi() -> dict[str, Any]:
        schema = FastAPI.openapi(app)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(body_schemas())
        return schema

    app.openapi = openapi

    # The page and its scripts hold no data, so they need no key (see routes/dashboard.py).
    app.mount("/static", StaticFiles(directory=DASHBOARD_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(DASHBOARD_DIR / "index.html")

    return app

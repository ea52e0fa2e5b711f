"""Health (no key) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import Res
from api.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, summary="Liveness and the database's reachability",
            responses={503: {"model": Health, "description": "the database is unreachable"}})
def health(res: Res, response: Response) -> Health:
    database = res.database.ping()
    # Without Postgres nothing but /predict works: report it, so `up` and probes see it.
    if not database:
        response.status_code = 503
    return Health(status="ok" if database else "degraded", database=database,
                  models=res.models.versions())


metrics_router = APIRouter(tags=["operations"])


@metrics_router.get("/metrics", summary="Prometheus text exposition",
                    response_class=Response,
                    responses={200: {"content": {"text/plain": {}}}})
def metrics(res: Res) -> Response:
    res.telemetry.set_models(res.models.loaded())
    return Response(res.telemetry.exposition(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")

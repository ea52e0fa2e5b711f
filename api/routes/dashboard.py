"""The dashboard's data: one JSON document per poll, and the charts of load runs.

The page itself (`/`) is public and holds no data; everything it shows comes from here, behind
the same API key as the rest (the page sends it in the X-API-Key header).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from api import queries
from api.deps import Res
from api.schemas import NO_NUL
from api.scoring import ModelProvider
from patternalarm.db import STREAM_WINDOW
from patternalarm.services import Stack
from patternalarm.settings import PROJECT_ROOT

router = APIRouter(prefix="/dashboard", tags=["dashboard"])
log = logging.getLogger(__name__)
CHART_SUFFIXES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}


_loading = threading.Lock()


def _api_versions(models: ModelProvider) -> dict[str, str | None]:
    """The champions the API serves; those not loaded yet are loaded in the background, so the
    dashboard shows them without waiting for a first /predict (the poll itself never waits)."""
    versions = models.versions()
    missing = [domain for domain, version in versions.items() if version is None]
    if missing and _loading.acquire(blocking=False):
        def load() -> None:
            try:
                for domain in missing:
                    try:
                        models.champion(domain)
                    # No champion yet, or MLflow away: the next poll asks again.
                    except Exception as exc:
                        log.debug("champion of %s not loaded: %s", domain, exc)
            finally:
                _loading.release()

        threading.Thread(target=load, name="load-champions", daemon=True).start()
    return versions


def _epoch(t: datetime) -> float:
    return t.timestamp()


def _pivot(rows: list[dict]) -> dict[str, Any]:
    """(t, key, n) rows -> uPlot's columnar form: shared x, one zero-filled array per key."""
    times = sorted({row["t"] for row in rows})
    index = {t: i for i, t in enumerate(times)}
    series: dict[str, list[int]] = {}
    for row in rows:
        series.setdefault(row["key"], [0] * len(times))[index[row["t"]]] = row["n"]
    return {"t": [_epoch(t) for t in times], "series": dict(sorted(series.items()))}


@router.get("/data", summary="Everything the dashboard shows, in one document")
def data(res: Res, minutes: Annotated[int, Query(ge=1, le=24 * 60)] = 15) -> dict[str, Any]:
    window = timedelta(minutes=minutes)
    # ~90 points per stream chart and ~30 bars per incident chart, whatever the window.
    stream_step = max(timedelta(seconds=5), window / 90)
    incident_step = max(timedelta(seconds=30), window / 30)
    with res.database.cursor() as cur:
        cur.execute(*queries.stream_now(STREAM_WINDOW))
        now = cur.fetchone()
        cur.execute(*queries.stream_series(window, stream_step))
        stream = cur.fetchall()
        cur.execute(*queries.incidents_over_time("domain", window, incident_step))
        by_domain = cur.fetchall()
        cur.execute(*queries.incidents_over_time("detector", window, incident_step))
        by_detector = cur.fetchall()
        cur.execute(*queries.list_incidents(queries.IncidentFilter(), 25, 0))
        feed = cur.fetchall()
        cur.execute(*queries.recent_load_runs(5))
        load_runs = cur.fetchall()
        cur.execute(*queries.recent_chaos_runs(10))
        chaos_runs = cur.fetchall()
    step_s = stream_step.total_seconds()
    return {
        "generated_at": datetime.now(UTC),
        "window_minutes": minutes,
        "now": {
            "events_per_s": now["rows"] / STREAM_WINDOW.total_seconds(),
            "latency_p50_ms": now["p50_ms"],
            "latency_p99_ms": now["p99_ms"],
            "lag": now["lag"],
            "last_batch_at": now["last_batch_at"],
            # Queries whose source cannot read the broker's end offsets: they plan no batch.
            "end_offsets_unavailable": now["blind"] or [],
            "warnings": Stack(res.settings).warnings(),
        },
        "stream": {
            "t": [_epoch(r["t"]) for r in stream],
            "events_per_s": [r["rows"] / step_s for r in stream],
            "latency_p50_ms": [r["p50_ms"] for r in stream],
            "latency_p99_ms": [r["p99_ms"] for r in stream],
            "lag": [r["lag"] for r in stream],
        },
        "incidents_by_domain": _pivot(by_domain),
        "incidents_by_detector": _pivot(by_detector),
        "incidents": feed,
        "models": {"stream": now["model_versions"] or {}, "api": _api_versions(res.models)},
        "load_runs": load_runs,
        "chaos_runs": chaos_runs,
    }


@router.get("/load-runs/{run_id}/chart", summary="The chart a load run saved",
            response_class=FileResponse)
def load_run_chart(res: Res,
                   run_id: Annotated[str, PathParam(pattern=NO_NUL)]) -> FileResponse:
    with res.database.cursor() as cur:
        cur.execute(*queries.load_run_chart(run_id))
        row = cur.fetchone()
    if row is None or row["chart_path"] is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"load run {run_id!r} has no chart")
    path = Path(row["chart_path"]).resolve()
    # The path comes from a table, not from the caller; still, serve only images of this
    # install, never an arbitrary file a bad row could name.
    roots = (res.settings.var_dir, PROJECT_ROOT)
    if path.suffix not in CHART_SUFFIXES or not any(path.is_relative_to(r) for r in roots):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"load run {run_id!r} has no servable chart")
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"chart of {run_id!r} is gone: {path.name}")
    return FileResponse(path, media_type=CHART_SUFFIXES[path.suffix])

"""Incidents: list with filters and pages, one with its evidence, acknowledge or resolve."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status

from api import queries
from api.deps import Res
from api.schemas import NO_NUL, Domain, IncidentDetail, IncidentPage, IncidentUpdate, Status

router = APIRouter(prefix="/incidents", tags=["incidents"])

MAX_PAGE = 500
MAX_OFFSET = 2**63 - 1  # PostgreSQL's OFFSET is a bigint: larger would be a database error
Text = Annotated[str | None, Query(pattern=NO_NUL)]
Key = Annotated[str, Path(pattern=NO_NUL)]


@router.get("", response_model=IncidentPage, summary="Incidents, newest first")
def list_incidents(
    res: Res,
    domain: Domain | None = None,
    detector: Text = None,
    status_: Annotated[Status | None, Query(alias="status")] = None,
    entity_id: Text = None,
    since: Annotated[datetime | None, Query(description="detected at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="detected before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> IncidentPage:
    filters = queries.IncidentFilter(domain, detector, status_, entity_id, since, until)
    with res.database.cursor() as cur:
        cur.execute(*queries.count_incidents(filters))
        total = cur.fetchone()["total"]
        cur.execute(*queries.list_incidents(filters, limit, offset))
        rows = cur.fetchall()
    more = offset + len(rows) < total
    return IncidentPage(items=rows, total=total, limit=limit, offset=offset,
                        next_offset=offset + len(rows) if more else None)


@router.get("/{key}", response_model=IncidentDetail, summary="One incident with its evidence")
def get_incident(res: Res, key: Key) -> dict:
    with res.database.cursor() as cur:
        cur.execute(*queries.get_incident(key))
        row = cur.fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no incident {key!r}")
    return row


@router.patch("/{key}", response_model=IncidentDetail,
              summary="Acknowledge or resolve an incident",
              responses={404: {"description": "no such incident"},
                         409: {"description": "the incident is already resolved"}})
def update_incident(res: Res, key: Key, body: IncidentUpdate) -> dict:
    with res.database.cursor() as cur:
        cur.execute(*queries.set_status(key, body.status))
        row = cur.fetchone()
        if row is None:
            cur.execute(*queries.get_incident(key))
            current = cur.fetchone()
    if row is not None:
        return row
    if current is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no incident {key!r}")
    raise HTTPException(status.HTTP_409_CONFLICT,
                        f"incident {key!r} is {current['status']}; it cannot become {body.status}")

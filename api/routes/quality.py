"""Detection quality as the user sees it: precision and recall per detector over a recent
window, against the ground truth of generated traffic (``patternalarm.quality``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import Res
from patternalarm.quality import by_detector, quality_query
from patternalarm.settings import DOMAINS

router = APIRouter(tags=["quality"])


@router.get("/quality", summary="Precision and recall per domain and detector over a window")
def quality(res: Res, minutes: Annotated[int, Query(ge=1, le=24 * 60)] = 15) -> dict[str, Any]:
    """Incidents of the last ``minutes`` matched to the episodes the generator injected (same
    entity, overlapping in time): precision over the window's incidents, recall over its
    complete episodes. Only generated traffic has ground truth: incidents on other traffic in
    the window count as false, and with no episodes recall is null."""
    until = datetime.now(UTC)
    since = until - timedelta(minutes=minutes)
    with res.database.cursor() as cur:
        cur.execute(*quality_query(None, list(DOMAINS), since, until))
        found = by_detector(cur.fetchall(), list(DOMAINS))
    return {"since": since, "until": until, "window_minutes": minutes,
            "domains": {d: {name: q.as_dict() for name, q in sorted(per.items())}
                        for d, per in found.items()}}

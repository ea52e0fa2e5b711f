"""Detection quality against ground truth: recall and precision per domain, from Postgres.

An incident matches an episode of the same domain and entity when its event span overlaps the
episode's span widened by `before_s` / `after_s` (a windowed feature can still hold an
episode's events a little after it ends). Scored episodes are the complete ones (not cut by
the end of their run) that start after the warm-up, when entities have enough history for
per-entity baselines; incidents in the same time range that match no episode at all are the
false positives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime

from psycopg2.extensions import connection

# How far around an episode an incident still counts as its detection.
BEFORE_S = 60.0
AFTER_S = 120.0

_SCORE = """
WITH episodes AS (
    SELECT episode_id, domain, entity_id, start_time, end_time, truncated,
           start_time >= %(since)s AND start_time <= %(until)s AND NOT truncated AS scored
    FROM ground_truth
    WHERE (%(runs)s::text[] IS NULL OR run_id = ANY(%(runs)s::text[]))
      -- Only episodes an incident in range can still reach (incident spans stay well
      -- under an hour: windows are 15 minutes).
      AND end_time >= %(since)s - make_interval(secs => %(after_s)s + 3600)
), incs AS (
    SELECT incident_key, domain, detector, entity_id, first_event_time, last_event_time
    FROM incidents
    WHERE domain = ANY(%(domains)s) AND last_event_time >= %(since)s
      AND first_event_time <= %(until)s
), matches AS (
    SELECT i.incident_key, e.episode_id, e.scored, i.domain, i.detector
    FROM incs i JOIN episodes e
      ON e.domain = i.domain AND e.entity_id = i.entity_id
     AND i.last_event_time >= e.start_time - make_interval(secs => %(before_s)s)
     AND i.first_event_time <= e.end_time + make_interval(secs => %(after_s)s)
), detectors AS (
    SELECT DISTINCT domain, detector FROM incs
    UNION ALL
    SELECT d, 'all' FROM unnest(%(domains)s::text[]) AS d
)
SELECT t.domain,
       (SELECT count(*) FROM episodes e WHERE e.domain = t.domain AND e.scored) AS episodes,
       (SELECT count(DISTINCT episode_id) FROM matches m
        WHERE m.domain = t.domain AND m.scored AND t.detector IN ('all', m.detector))
           AS detected,
       (SELECT count(*) FROM incs i
        WHERE i.domain = t.domain AND t.detector IN ('all', i.detector)) AS incidents,
       (SELECT count(DISTINCT incident_key) FROM matches m
        WHERE m.domain = t.domain AND t.detector IN ('all', m.detector)) AS true_incidents,
       t.detector
FROM detectors t
"""


@dataclass(frozen=True)
class Quality:
    domain: str
    episodes: int
    detected: int
    incidents: int
    true_incidents: int
    detector: str = "all"

    @property
    def recall(self) -> float | None:
        return self.detected / self.episodes if self.episodes else None

    @property
    def precision(self) -> float | None:
        return self.true_incidents / self.incidents if self.incidents else None

    def as_dict(self) -> dict:
        return {**asdict(self), "recall": self.recall, "precision": self.precision}


def quality_query(run_ids: list[str] | None, domains: list[str], since: datetime,
                  until: datetime, before_s: float = BEFORE_S, after_s: float = AFTER_S
                  ) -> tuple[str, dict]:
    """(SQL, parameters) of the per-detector scores; ``run_ids`` None: every generator run
    with episodes in the range (the live view: meaningful while the traffic is generated)."""
    return _SCORE, {"runs": run_ids, "domains": domains, "since": since, "until": until,
                    "before_s": before_s, "after_s": after_s}


def by_detector(rows, domains: list[str]) -> dict[str, dict[str, Quality]]:
    """{domain: {detector: Quality}} from the query's rows (tuples or dicts); every detector
    of the domain together is ``all``, and a detector's recall is the share of the domain's
    episodes it found."""
    out: dict[str, dict[str, Quality]] = {d: {} for d in domains}
    for row in rows:
        quality = Quality(**row) if isinstance(row, Mapping) else Quality(*row)
        out[quality.domain][quality.detector] = quality
    return out


def quality_by_detector(conn: connection, run_ids: list[str] | None, domains: list[str],
                        since: datetime, until: datetime, before_s: float = BEFORE_S,
                        after_s: float = AFTER_S) -> dict[str, dict[str, Quality]]:
    with conn, conn.cursor() as cur:
        cur.execute(*quality_query(run_ids, domains, since, until, before_s, after_s))
        return by_detector(cur.fetchall(), domains)


def detection_quality(conn: connection, run_ids: list[str], domains: list[str],
                      since: datetime, until: datetime, before_s: float = BEFORE_S,
                      after_s: float = AFTER_S) -> dict[str, Quality]:
    """Per domain, all detectors together."""
    return {d: q["all"] for d, q in quality_by_detector(
        conn, run_ids, domains, since, until, before_s, after_s).items()}

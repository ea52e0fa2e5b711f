"""Detection quality against ground truth: recall and precision per domain, from Postgres.

An incident matches an episode of the same domain and entity when its event span overlaps the
episode's span widened by `before_s` / `after_s` (a windowed feature can still hold an
episode's events a little after it ends). Scored episodes are the complete ones (not cut by
the end of their run) that start after the warm-up, when entities have enough history for
per-entity baselines; incidents in the same time range that match no episode at all are the
false positives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from psycopg2.extensions import connection

_SCORE = """
WITH episodes AS (
    SELECT episode_id, domain, entity_id, start_time, end_time, truncated,
           start_time >= %(since)s AND NOT truncated AS scored
    FROM ground_truth WHERE run_id = ANY(%(runs)s)
), incs AS (
    SELECT incident_key, domain, entity_id, first_event_time, last_event_time
    FROM incidents
    WHERE domain = ANY(%(domains)s) AND last_event_time >= %(since)s
      AND first_event_time <= %(until)s
), matches AS (
    SELECT i.incident_key, e.episode_id, e.scored, i.domain
    FROM incs i JOIN episodes e
      ON e.domain = i.domain AND e.entity_id = i.entity_id
     AND i.last_event_time >= e.start_time - make_interval(secs => %(before_s)s)
     AND i.first_event_time <= e.end_time + make_interval(secs => %(after_s)s)
)
SELECT d.domain,
       (SELECT count(*) FROM episodes e WHERE e.domain = d.domain AND e.scored),
       (SELECT count(DISTINCT episode_id) FROM matches m WHERE m.domain = d.domain AND m.scored),
       (SELECT count(*) FROM incs i WHERE i.domain = d.domain),
       (SELECT count(DISTINCT incident_key) FROM matches m WHERE m.domain = d.domain)
FROM unnest(%(domains)s::text[]) AS d(domain)
"""


@dataclass(frozen=True)
class Quality:
    domain: str
    episodes: int
    detected: int
    incidents: int
    true_incidents: int

    @property
    def recall(self) -> float | None:
        return self.detected / self.episodes if self.episodes else None

    @property
    def precision(self) -> float | None:
        return self.true_incidents / self.incidents if self.incidents else None

    def as_dict(self) -> dict:
        return {**asdict(self), "recall": self.recall, "precision": self.precision}


def detection_quality(conn: connection, run_ids: list[str], domains: list[str],
                      since: datetime, until: datetime, before_s: float = 60.0,
                      after_s: float = 120.0) -> dict[str, Quality]:
    with conn, conn.cursor() as cur:
        cur.execute(_SCORE, {"runs": run_ids, "domains": domains, "since": since,
                             "until": until, "before_s": before_s, "after_s": after_s})
        return {row[0]: Quality(*row) for row in cur.fetchall()}

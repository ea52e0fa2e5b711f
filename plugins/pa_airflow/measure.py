"""What a run did, read back from Postgres: the stream's per-batch metrics after a point in time.

A run's traffic is everything the query processed after the baseline (`since`), when the stream
had caught up and gone quiet (StreamJob.wait_idle). Other producers writing to the same topics
during the run would be counted as the run's: load and chaos runs want the stream to
themselves, and say so in their docs.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import datetime

from patternalarm import db
from patternalarm.settings import Settings


@dataclass(frozen=True)
class Processed:
    rows: int            # events and dead letters the sink committed (each batch once)
    late: int            # events the watermark dropped (counted, not processed)
    dead_lettered: int
    batches: int
    last_lag: int | None      # lag after the latest batch (None: none yet, or not measured)
    last_at: datetime | None  # when the latest batch committed
    # When the batch before the latest committed: Spark plans a batch only after the one
    # before it committed, so the latest batch read the log as it stood after this time.
    previous_at: datetime | None = None
    slowest_ms: float | None = None  # the longest batch so far

    @property
    def accounted(self) -> int:
        """Messages the stream accounted for, one way or another."""
        return self.rows + self.late


def processed_since(cfg: Settings, query: str, since: datetime) -> Processed:
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        # sum() of bigint is numeric in Postgres: cast back so the figures stay ints.
        cur.execute("""SELECT coalesce(sum(input_rows), 0)::bigint,
                              coalesce(sum(late_events), 0)::bigint,
                              coalesce(sum(dead_lettered), 0)::bigint, count(*),
                              (array_agg(lag_total ORDER BY batch_id DESC))[1], max(recorded_at),
                              (array_agg(recorded_at ORDER BY batch_id DESC))[2],
                              max(processing_ms)
                       FROM stream_metrics WHERE query_name = %s AND recorded_at > %s""",
                    (query, since))
        return Processed(*cur.fetchone())


def wait_drained(cfg: Settings, query: str, since: datetime, expected: int,
                 traffic_end: datetime, timeout_s: float, quiet_s: float = 15.0) -> Processed:
    """Until the stream accounted for `expected` messages with no lag left; or, when some never
    arrive (lost), until a batch planned after `traffic_end` left no lag; failing that (no
    batch runs once the log is idle), until one that committed after it left no lag and nothing
    changed for `quiet_s` or twice the slowest batch, whichever is longer (a batch planned
    before the end may still be running); or until the timeout.

    A stream that is down or restarting writes no batches: its silence is not a drained log.
    """
    deadline = time.monotonic() + timeout_s
    seen, since_change = None, time.monotonic()
    while True:
        now = processed_since(cfg, query, since)
        if now.accounted >= expected and not now.last_lag:
            return now
        if now.last_lag == 0 and now.previous_at is not None and now.previous_at > traffic_end:
            return now
        caught_up = now.last_lag == 0 and now.last_at is not None and now.last_at > traffic_end
        quiet = max(quiet_s, 2 * (now.slowest_ms or 0.0) / 1000.0)
        # Batches without input (event-time timers) are not progress.
        if (now.rows, now.late) != seen:
            seen, since_change = (now.rows, now.late), time.monotonic()
        elif caught_up and time.monotonic() - since_change >= quiet:
            return now
        if time.monotonic() > deadline:
            return now
        time.sleep(1.0)


def first_batch_after(cfg: Settings, query: str, after: datetime,
                      max_lag: int | None = None) -> datetime | None:
    """When the first batch with rows (and, given max_lag, lag at most that) committed."""
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute("""SELECT min(recorded_at) FROM stream_metrics
                       WHERE query_name = %s AND recorded_at > %s AND input_rows > 0
                         AND (%s::bigint IS NULL OR lag_total <= %s::bigint)""",
                    (query, after, max_lag, max_lag))
        return cur.fetchone()[0]


def batches_since(cfg: Settings, query: str, since: datetime) -> list[tuple]:
    """(recorded_at, input_rows, lag_total, latency p50 ms, latency p99 ms) per batch."""
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute("""SELECT recorded_at, input_rows, lag_total, event_latency_p50_ms,
                              event_latency_p99_ms
                       FROM stream_metrics WHERE query_name = %s AND recorded_at > %s
                       ORDER BY batch_id""", (query, since))
        return cur.fetchall()


def incident_latency_ms(cfg: Settings, domains: list[str], since: datetime
                        ) -> tuple[float | None, float | None, int]:
    """p50, p99 of event-to-incident latency and the incident count since `since`.

    A new incident row is written by the batch that detected it: detected_at minus the time of
    its triggering event is the latency. Rows that only merged into older incidents do not
    count (their detected_at is the first detection's).
    """
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute("""SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                              percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), count(*)
                       FROM (SELECT extract(epoch FROM detected_at - first_event_time)::float8
                                    * 1000 AS ms
                             FROM incidents WHERE domain = ANY(%s) AND detected_at > %s) x""",
                    (domains, since))
        return cur.fetchone()


def batches_after(cfg: Settings, query: str, since: datetime) -> list[tuple]:
    """(batch_id, input_rows, lag_total, model_versions) of each batch committed after `since`."""
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute("""SELECT batch_id, input_rows, lag_total, model_versions
                       FROM stream_metrics WHERE query_name = %s AND recorded_at > %s
                       ORDER BY batch_id""", (query, since))
        return cur.fetchall()


def incidents_of(cfg: Settings, entities: dict[str, list[str]]) -> dict[str, tuple]:
    """incident key -> (detector, event_count, trigger_count) of these entities' incidents."""
    found = {}
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        for domain, ids in entities.items():
            cur.execute("""SELECT incident_key, detector, event_count, trigger_count
                           FROM incidents WHERE domain = %s AND entity_id = ANY(%s)""",
                        (domain, ids))
            found.update((k, tuple(rest)) for k, *rest in cur.fetchall())
    return found

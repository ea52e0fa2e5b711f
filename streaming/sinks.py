"""Exactly-once incident sink: one Postgres transaction per micro-batch.

The batch id goes into the stream_batches ledger in the same transaction as the batch's
incidents and metrics. Spark replays a batch whose commit it did not record (a crash between
our commit and its own); the ledger row makes that replay a no-op. Incident keys are
deterministic in (domain, entity, detector, window), so retriggers and alert storms merge into
one row with counts and a last-seen time instead of new rows.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
from psycopg2.extensions import connection
from psycopg2.extras import Json, execute_values
from pyspark.sql import Row
from pyspark.sql.streaming import StreamingQueryListener

from models.incidents import SEVERITIES, Incident, merge_same_key, model_incident

log = logging.getLogger("patternalarm.stream")


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


_SEVERITY_ORDER = "ARRAY[" + ",".join(f"'{s}'" for s in SEVERITIES) + "]"
_UPSERT = f"""
INSERT INTO incidents (incident_key, domain, entity_id, detector, detector_kind, window_start,
                       severity, score, model_name, model_version, first_event_time,
                       last_event_time, event_count, evidence)
VALUES %s
ON CONFLICT (incident_key) DO UPDATE SET
    event_count     = incidents.event_count + EXCLUDED.event_count,
    trigger_count   = incidents.trigger_count + 1,
    first_event_time = LEAST(incidents.first_event_time, EXCLUDED.first_event_time),
    last_event_time = GREATEST(incidents.last_event_time, EXCLUDED.last_event_time),
    last_seen_at    = now(),
    severity        = CASE WHEN array_position({_SEVERITY_ORDER}, EXCLUDED.severity)
                                > array_position({_SEVERITY_ORDER}, incidents.severity)
                           THEN EXCLUDED.severity ELSE incidents.severity END,
    score           = GREATEST(incidents.score, EXCLUDED.score),
    model_name      = COALESCE(EXCLUDED.model_name, incidents.model_name),
    model_version   = COALESCE(EXCLUDED.model_version, incidents.model_version),
    evidence        = incidents.evidence || EXCLUDED.evidence
"""

@dataclass(frozen=True)
class BatchMetrics:
    """What one micro-batch did; one row of stream_metrics and one log line."""

    input_rows: int
    processing_ms: float
    event_latency_p50_ms: float | None = None
    event_latency_p99_ms: float | None = None
    broker_latency_p50_ms: float | None = None
    broker_latency_p99_ms: float | None = None
    lag_total: int | None = None
    lag_by_partition: Mapping[str, int] = field(default_factory=dict)
    late_events: int = 0
    dead_lettered: int = 0
    model_versions: Mapping[str, str] = field(default_factory=dict)


_METRIC_COLUMNS = tuple(BatchMetrics.__dataclass_fields__)


def commit_batch(conn: connection, query_name: str, batch_id: int,
                 incidents: Sequence[Incident], metrics: BatchMetrics) -> bool:
    """Write a micro-batch's incidents and metrics exactly once; False if already committed."""
    merged = merge_same_key(incidents)
    with conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO stream_batches (query_name, batch_id, input_rows, incidents)
               VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING batch_id""",
            (query_name, batch_id, metrics.input_rows, len(merged)))
        if cur.fetchone() is None:
            return False
        if merged:
            rows = [(i.key, i.domain, i.entity_id, i.detector, i.detector_kind,
                     _ts(i.window_start_ms), i.severity, i.score, i.model_name, i.model_version,
                     _ts(i.first_event_ms), _ts(i.last_event_ms), i.event_count,
                     Json(dict(i.evidence))) for i in merged]
            execute_values(cur, _UPSERT, rows)
        values = asdict(metrics)
        for column in ("lag_by_partition", "model_versions"):
            values[column] = Json(values[column])
        cur.execute(
            f"""INSERT INTO stream_metrics (query_name, batch_id, incidents,
                    {", ".join(_METRIC_COLUMNS)})
                VALUES (%s, %s, %s, {", ".join(["%s"] * len(_METRIC_COLUMNS))})""",
            (query_name, batch_id, len(merged), *values.values()))
    return True


def log_line(query_name: str, batch_id: int, metrics: BatchMetrics) -> str:
    """The one structured log line per micro-batch."""
    return json.dumps({"event": "micro_batch", "query": query_name, "batch_id": batch_id,
                       **asdict(metrics)}, default=str)


class BatchSink:
    """foreachBatch: lake, model scoring, dead letters, then one exactly-once commit."""

    def __init__(self, spark, cfg, query_name: str, domains: list[str]):
        from streaming.scoring import ModelWatch

        self.spark, self.cfg, self.query_name = spark, cfg, query_name
        self.watch = ModelWatch(cfg.tracking_uri, domains, cfg.model_refresh_s)
        self.cap_file = cap_path(cfg, query_name)
        self.status_file = source_status_path(cfg, query_name)
        self.cap = cfg.stream_max_offsets_per_trigger
        self.recent_durations: list[float] = []
        self._conn: connection | None = None
        self._producer = None
        self._spark_models: dict[tuple[str, str], object] = {}
        # Only a restart's first batch can be one the ledger already holds (a failed batch
        # fails the query): the ledger is asked once, not on every batch.
        self._ledger_checked = False

    # --- the batch -------------------------------------------------------------------------

    def __call__(self, batch, batch_id: int) -> None:
        started = time.monotonic()
        replayed = not self._ledger_checked and self._with_postgres(
            batch_id, already_committed, self.query_name, batch_id)
        self._ledger_checked = True
        if replayed:
            # Our side effects are in Postgres already; the stateful step must still run, or
            # its state store would lack this batch's version and the next batch would fail.
            batch.write.format("noop").mode("overwrite").save()
            log.info(json.dumps({"event": "batch_replayed_skipped", "batch_id": batch_id}))
            return
        # One Spark job per micro-batch. The stateful step's output is small (a row per event
        # and its features), so it comes to the driver once, as Arrow, and the lake file, the
        # scores, the incidents and the offsets are all taken from that. Each further action
        # on `batch` would be another Spark job: on local[2] ~0.2 s for a small collect and
        # ~1.4 s for a Parquet write.
        rows = batch.toArrow()
        try:
            features = rows.filter(pc.equal(rows["kind"], "features"))
            n = features.num_rows
            if n:
                self._write_lake(features, batch_id)
            champions = self.watch.champions()
            rare = [Row(**r) for r in rows.filter(pc.not_equal(rows["kind"], "features"))
                    .drop_columns(["features"]).to_pylist()]
            incidents = [self._rule_incident(r) for r in rare if r.kind == "incident"]
            dead = [r for r in rare if r.kind == "dlq"]
            if n and champions:
                incidents += self._model_incidents(features, champions)
            self._dead_letters(dead, batch_id)
            lag = source_lag(read_source_status(self.status_file))
            now_ms = time.time() * 1000.0
            ev, br = ([float(q) for q in np.percentile(features[c].to_numpy(), [50, 1])]
                      if n else None for c in ("event_time", "broker_time"))
            metrics = BatchMetrics(
                input_rows=n + len(dead),
                processing_ms=(time.monotonic() - started) * 1000.0,
                event_latency_p50_ms=now_ms - ev[0] if n else None,
                event_latency_p99_ms=now_ms - ev[1] if n else None,
                broker_latency_p50_ms=now_ms - br[0] if n else None,
                broker_latency_p99_ms=now_ms - br[1] if n else None,
                lag_total=sum(lag.values()) if lag is not None else None,
                lag_by_partition=lag or {},
                dead_lettered=len(dead),
                model_versions={d: c.version for d, c in champions.items()})
            self._with_postgres(batch_id, commit_batch, self.query_name, batch_id, incidents,
                                metrics)
            self._adapt_cap(n + len(dead), time.monotonic() - started, sum((lag or {}).values()))
            log.info(log_line(self.query_name, batch_id, metrics))
        except Exception:
            self._drop_connection()
            raise

    def _rule_incident(self, row) -> Incident:
        return Incident(row.domain, row.entity_id, row.detector, "rule", row.window_start,
                        row.severity, row.event_time, row.event_time,
                        evidence={**json.loads(row.evidence), "event_id": row.event_id})

    def _model_incidents(self, features: pa.Table, champions) -> list[Incident]:
        from patternalarm.settings import model_name
        from streaming.scoring import score_features

        if self.cfg.stream_scorer == "spark":
            hits = self._spark_scores(self.spark.createDataFrame(features), champions)
        else:
            hits = score_features(features.to_pandas(), champions).itertuples(index=False)
        return [model_incident(h.domain, h.entity_id, h.event_id, int(h.event_time),
                               float(h.score), model_name(h.domain),
                               champions[h.domain].version)
                for h in hits]

    def _spark_scores(self, features, champions) -> list:
        """The same champion versions applied as Spark PipelineModels (stream_scorer=spark)."""
        import mlflow.spark
        from pyspark.ml.functions import vector_to_array
        from pyspark.sql import functions as F

        from models.features import FEATURES

        hits = []
        for domain, champion in champions.items():
            key = (champion.name, champion.version)
            if key not in self._spark_models:
                self._spark_models[key] = mlflow.spark.load_model(
                    f"models:/{champion.name}/{champion.version}")
            rows = features.where(F.col("domain") == domain).select(
                "domain", "entity_id", "event_id", "event_time",
                *[F.col("features")[i].alias(n) for i, n in enumerate(FEATURES[domain])])
            scored = self._spark_models[key].transform(rows).withColumn(
                "score", vector_to_array("probability")[1])
            hits += scored.where("prediction = 1.0").select(
                "domain", "entity_id", "event_id", "event_time", "score").collect()
        return hits

    def _write_lake(self, features: pa.Table, batch_id: int) -> None:
        """One directory per batch id, replaced whole: a replayed batch rewrites, never adds.
        Written aside, then renamed in (Spark's readers skip names starting with a dot)."""
        import pyarrow.parquet as pq

        target = self.cfg.lake_dir / "features" / f"batch_id={batch_id}"
        staging = target.with_name(f".{target.name}.writing")
        shutil.rmtree(staging, ignore_errors=True)
        pq.write_to_dataset(features.select(
            ["domain", "entity_id", "event_id", "event_time", "features"]), staging,
            partition_cols=["domain"])
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)

    def _dead_letters(self, dead: list, batch_id: int) -> None:
        """Every dead letter acknowledged by the broker before the batch commits: retried
        like the Postgres write while the topic is unreachable, then the query fails, and the
        replayed batch sends them again (keyed by source position, so a consumer can drop the
        copy)."""
        if not dead:
            return
        letters = [(f"{row.topic}:{row.partition}:{row.offset}", json.dumps(
            dead_letter(row, self.query_name, batch_id)).encode()) for row in dead]
        self._retrying(batch_id, "dead_letters_unacknowledged", (DeadLetterUndelivered,),
                       self._deliver, letters)

    def _deliver(self, letters: list[tuple[str, bytes]]) -> None:
        from patternalarm import kafka

        if self._producer is None:
            self._producer = kafka.producer(self.cfg, **{"enable.idempotence": True,
                                                         "linger.ms": 5})
        failures: list = []
        for key, value in letters:
            self._producer.produce(self.cfg.dlq_topic, key=key, value=value,
                                   on_delivery=lambda err, msg: err and failures.append(err))
        if self._producer.flush(30) or failures:
            # A producer that gave up on a record may be fenced or stuck: start a new one.
            self._producer = None
            raise DeadLetterUndelivered(
                f"{self.cfg.dlq_topic} did not acknowledge {len(failures) or 'all'} of "
                f"{len(letters)} dead letters: {failures[:3]}")

    # --- the adaptive cap -------------------------------------------------------------------

    def _adapt_cap(self, rows: int, duration_s: float, lag: int) -> None:
        self.recent_durations = [*self.recent_durations[-19:], duration_s]
        self.cap = next_cap(self.cap, rows, duration_s, lag,
                            target_s=max(self.cfg.stream_trigger_s, 1.0),
                            fixed_s=min(self.recent_durations), floor=1_000,
                            ceiling=self.cfg.stream_max_offsets_per_trigger)
        self.cap_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cap_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"max_rows": self.cap}))
        tmp.replace(self.cap_file)

    # --- connections and listener ----------------------------------------------------------

    def _connection(self) -> connection:
        if self._conn is None or self._conn.closed:
            from patternalarm import db

            self._conn = db.connect(self.cfg)
        return self._conn

    def _with_postgres(self, batch_id: int, work, *args):
        """work(connection, *args), on a new connection after each failure. The batch ledger
        makes a retried commit exactly once."""
        def attempt():
            try:
                return work(self._connection(), *args)
            except (ConnectionError, psycopg2.OperationalError, psycopg2.InterfaceError):
                self._drop_connection()
                raise
        return self._retrying(batch_id, "postgres_unavailable",
                              (ConnectionError, psycopg2.OperationalError,
                               psycopg2.InterfaceError), attempt)

    def _retrying(self, batch_id: int, event: str, transient: tuple, work, *args):
        """work(*args), retried while it raises `transient`, up to stream_postgres_retry_s:
        an outage of a sink stalls the stream instead of failing it; past the deadline the
        query fails with the reason, and the batch replays from its offsets."""
        deadline = time.monotonic() + self.cfg.stream_postgres_retry_s
        while True:
            try:
                return work(*args)
            except transient as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning(json.dumps({"event": event, "batch_id": batch_id,
                                        "error": str(exc).strip()[:200]}))
                time.sleep(1.0)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        self._drop_connection()
        if self._producer is not None:
            self._producer.flush(10)

    def progress_listener(self):
        return _AfterBatch(self.cfg, self.query_name, self.status_file)


class _AfterBatch(StreamingQueryListener):
    """What Spark tells only after a batch or while idle. Rows the watermark dropped and the
    state's size go into the batch's metrics row (late rows are never lost silently); whether
    the source can read end offsets goes to stream_health, so an outage with no batches is
    still seen."""

    def __init__(self, cfg, query_name: str, status_file):
        self.cfg, self.query_name, self.status_file = cfg, query_name, status_file
        self.reported: str | None = None
        self._conn: connection | None = None  # the listener's own: it runs on its own thread

    def onQueryStarted(self, event) -> None:
        pass

    def onQueryIdle(self, event) -> None:
        self._report_source()

    def onQueryTerminated(self, event) -> None:
        pass

    def onQueryProgress(self, event) -> None:
        progress = event.progress
        if progress.name != self.query_name:
            return
        operators = progress.stateOperators
        late = sum(op.numRowsDroppedByWatermark for op in operators)
        state_bytes = sum(int(op.customMetrics.get("rocksdbSstFileSize", op.memoryUsedBytes))
                          for op in operators)
        self._execute("""UPDATE stream_metrics SET late_events = late_events + %s,
                                state_rows = %s, state_bytes = %s
                         WHERE query_name = %s AND batch_id = %s""",
                      (late, sum(op.numRowsTotal for op in operators), state_bytes,
                       self.query_name, progress.batchId))
        self._report_source()

    def _report_source(self) -> None:
        status = read_source_status(self.status_file)
        if status is None or status.get("end_offsets") == self.reported:
            return
        detail = {k: v for k, v in status.items() if k not in ("ends", "planned")}
        self._execute("""INSERT INTO stream_health (query_name, end_offsets, detail)
                         VALUES (%s, %s, %s) ON CONFLICT (query_name) DO UPDATE SET
                         end_offsets = EXCLUDED.end_offsets, detail = EXCLUDED.detail,
                         since = now()""",
                      (self.query_name, status["end_offsets"], Json(detail)))
        self.reported = status["end_offsets"]

    def _execute(self, sql: str, args: tuple) -> None:
        from patternalarm import db

        try:
            if self._conn is None or self._conn.closed:
                self._conn = db.connect(self.cfg)
            with self._conn, self._conn.cursor() as cur:
                cur.execute(sql, args)
        except (ConnectionError, psycopg2.Error) as exc:  # a report: the next event retries
            self.reported = None
            if self._conn is not None:
                with contextlib.suppress(psycopg2.Error):
                    self._conn.close()
            self._conn = None
            log.warning(json.dumps({"event": "listener_write_failed", "error": str(exc)[:200]}))


class DeadLetterUndelivered(RuntimeError):
    pass


def dead_letter(row, query_name: str, batch_id: int) -> dict:
    """The dead-letter record: why, where it came from, and the original bytes (cut to
    streaming.parse.DLQ_RAW_BYTES, with the whole message's length and SHA-256)."""
    raw = row.raw or b""
    return {"reason": row.reason, "query": query_name, "batch_id": batch_id,
            "source": {"topic": row.topic, "partition": row.partition, "offset": row.offset,
                       "broker_time": row.broker_time},
            "raw_length": row.raw_length, "raw_sha256": row.raw_sha256,
            "raw_truncated": (row.raw_length or 0) > len(raw),
            "raw_base64": base64.b64encode(raw).decode()}


def already_committed(conn: connection, query_name: str, batch_id: int) -> bool:
    with conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM stream_batches WHERE query_name = %s AND batch_id = %s",
                    (query_name, batch_id))
        return cur.fetchone() is not None


def consumer_group(query_name: str) -> str:
    """The group the source commits the query's progress to (for lag tools and restarts)."""
    return f"patternalarm-{query_name}"


def source_status_path(cfg, query_name: str):
    """Where the source's planner leaves its end offsets and whether it could read them."""
    return cfg.checkpoint_dir / query_name / "source_status.json"


def read_source_status(path) -> dict | None:
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def source_lag(status: dict | None) -> dict[str, int] | None:
    """Each partition's records that this batch, when it was planned, left for a later one —
    from the planner's own end offsets, no probe of the broker per batch. 0 everywhere means
    the batch took all there was (what "drained" means to the load and chaos runs); while the
    adaptive cap keeps up with the trigger a backlog shows here. None while the planner cannot
    read end offsets. A log end below the plan is a recreated log, all of it unread."""
    if not status or status.get("end_offsets") != "ok":
        return None
    from streaming.kafka_source import read_from

    planned = status["planned"]
    return {f"{topic}-{p}": end - read_from(planned.get(topic, {}).get(p, 0), end)
            for topic, parts in status["ends"].items() for p, end in parts.items()}


def cap_path(cfg, query_name: str):
    """Where the sink leaves the adaptive cap that the source reads before each batch."""
    return cfg.checkpoint_dir / query_name / "cap.json"


def next_cap(previous: int, rows: int, duration_s: float, lag: int, target_s: float,
             fixed_s: float, floor: int, ceiling: int) -> int:
    """Records the next micro-batch may take.

    `fixed_s` is what a batch costs whatever its size (planning, task launch, commits): the
    shortest batch seen recently. The target is at least twice the fixed cost: a target just
    above the fixed cost leaves almost nothing per record, and the cap fell to its floor while
    the backlog grew (live CRISIS, fixed cost ~0.9 s against the 1 s trigger). A batch slower
    than the target shrinks the next one to what the rest of the target buys at the per-record
    rate just measured; while a backlog remains and batches are fast, the cap doubles. A burst
    is absorbed in batches as large as the latency bound allows, the backlog drains at the job's
    own throughput, and memory stays bounded by the ceiling.
    """
    target_s = max(target_s, 2 * fixed_s)
    budget = target_s - fixed_s
    if rows > 0 and duration_s > target_s and budget > 0:
        cap = rows * budget / (duration_s - fixed_s)
    elif lag > 0:
        cap = previous * 2
    else:
        cap = previous
    return int(min(max(cap, floor), ceiling))

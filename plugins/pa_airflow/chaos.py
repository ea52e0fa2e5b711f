"""Chaos scenarios: baseline → inject under traffic → recover → verify, one chaos_runs row each.

Verdict figures, all from what was really sent and what the stream committed:
- events_lost = sent (acknowledged by the broker) − accounted (rows the sink committed + rows
  the watermark dropped as late), when positive.
- duplicated events = accounted − sent, when positive: a message went through the sink twice.
  Incident keys are deterministic, so a duplicate cannot add an incident row; it inflates the
  counts of the incidents it touched. `incidents_duplicated` is therefore 0 when no event was
  duplicated, and otherwise every incident touched during the scenario (all are suspect: the
  tables do not say which event raised which count). A replay that lost and duplicated the
  same number of events would cancel out; the exactly-once ledger is what rules that out.
- dead_lettered vs the malformed messages the generator reports having sent.
- recovery_s: from the end of the fault to the first committed batch whose lag is back under
  ~3 s of traffic.
The in-memory broker keeps no data across a restart: there the loss is measured and reported,
not an invariant (with PATTERNALARM_BROKER_STORAGE=s3 or a real Kafka, nothing may be lost).
"""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime
from typing import Any

from psycopg2.extras import Json

from pa_airflow import measure
from pa_airflow.faults import FaultInjector
from pa_airflow.generate import generate
from pa_airflow.stream import StreamJob
from patternalarm import db
from patternalarm.settings import Settings

QUERY = "detector"


def verdict(scenario: str, sent: int, accounted: int, malformed: int, dead_lettered: int,
            recovery_s: float | None, bound_s: float, durable: bool,
            touched_incidents: int) -> dict[str, Any]:
    """The figures and the pass/fail of one scenario (pure: the rules in one place)."""
    lost, duplicated = max(sent - accounted, 0), max(accounted - sent, 0)
    failures, notes = [], []
    if duplicated:
        failures.append(f"{duplicated} events processed twice")
    if lost:
        if scenario == "broker_restart" and not durable:
            notes.append(f"{lost} events lost: the in-memory broker dropped what was not yet "
                         "consumed when it stopped, and what producers sent until its topics "
                         "were recreated (PATTERNALARM_BROKER_STORAGE=s3 or a real Kafka keeps "
                         "it)")
        else:
            failures.append(f"{lost} of {sent} events lost")
    if not lost and dead_lettered != malformed:
        failures.append(f"{dead_lettered} dead-lettered, but {malformed} malformed were sent")
    if recovery_s is None:
        failures.append("the stream did not catch up after the fault")
    elif recovery_s > bound_s:
        failures.append(f"recovery took {recovery_s:.0f}s, over the {bound_s:g}s bound")
    return {"events_sent": sent, "events_lost": lost, "duplicated_events": duplicated,
            "incidents_duplicated": touched_incidents if duplicated else 0,
            "dead_lettered": dead_lettered, "malformed_sent": malformed,
            "recovery_s": recovery_s, "verdict": "fail" if failures else "pass",
            "failures": failures, "notes": notes}


def run_scenario(cfg: Settings, run_id: str, scenario: str, p: dict[str, Any]) -> dict[str, Any]:
    from patternalarm.generator import STARTUP_LEAD_S, RunPlan, Spike

    stream = StreamJob(cfg, QUERY)
    faults = FaultInjector(cfg, stream)
    stream.ensure()
    stream.wait_idle()
    since = datetime.now(UTC)
    third = p["duration_s"] / 3
    plan = RunPlan(domains=tuple(p["domains"]), per_min=p["rate_per_min"], mode="CUSTOM",
                   duration_s=p["duration_s"], ground_truth=False,
                   spike=Spike("burst", third, at_s=third) if scenario == "spike" else None)
    summaries: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def traffic(the_plan: RunPlan) -> None:
        try:
            summaries.append(generate(cfg, the_plan))
        except BaseException as exc:  # re-raised below, after the fault is undone
            errors.append(exc)

    sender = threading.Thread(target=traffic, args=(plan,), name="chaos-traffic")
    sender.start()
    time.sleep(STARTUP_LEAD_S + third)
    injected: dict[str, Any] = {"scenario": scenario, "at": datetime.now(UTC).isoformat()}
    if scenario == "kill_driver":
        fault_end = time.time()
        injected.update(faults.kill_driver())
    elif scenario == "broker_restart":
        injected.update(faults.restart_broker())
        fault_end = time.time()
    elif scenario == "postgres_outage":
        injected.update(faults.postgres_outage(p["outage_s"]))
        fault_end = time.time()
    elif scenario == "poison_flood":
        traffic(RunPlan(domains=plan.domains[:1], per_min=p["poison_count"] * 12.0,
                        mode="CUSTOM", count=p["poison_count"], malformed_fraction=1.0,
                        anomaly_rate=0.0, ground_truth=False))
        fault_end = time.time()
        flood = summaries[-1] if summaries else {}
        injected.update(poison_run=flood.get("run_id"), malformed_sent=sum(
            d["malformed"] for d in flood.get("per_domain", {}).values()))
    else:  # spike: the burst is in the traffic's own schedule
        time.sleep(third)
        fault_end = time.time()
        injected.update(factor=plan.spike.factor, burst_s=third,
                        peak_rate_per_min=plan.per_min * plan.spike.factor)
    sender.join()
    traffic_end = datetime.now(UTC)
    if errors:
        raise errors[0]
    # Recover: a stream the fault killed (e.g. Postgres down past the sink's retries) restarts.
    restarted = stream.ensure()
    sent = sum(s["sent"] for s in summaries)
    done = measure.wait_drained(cfg, QUERY, since, sent, traffic_end, p["drain_timeout_s"])
    ended = datetime.fromtimestamp(fault_end, UTC)
    lag_ok = int(p["rate_per_min"] / 60 * len(plan.domains) * 3) + 1
    caught_up = measure.first_batch_after(cfg, QUERY, ended, max_lag=lag_ok)
    first = measure.first_batch_after(cfg, QUERY, ended)
    result = verdict(scenario, sent, done.accounted,
                     sum(d["malformed"] for s in summaries for d in s["per_domain"].values()),
                     done.dead_lettered,
                     (caught_up - ended).total_seconds() if caught_up else None,
                     p["recovery_bound_s"],
                     cfg.broker_storage == "s3" or not cfg.embedded_kafka,
                     measure.incidents_touched(cfg, since))
    result.update(late_events=done.late, processed_rows=done.rows, batches=done.batches,
                  first_batch_s=(first - ended).total_seconds() if first else None,
                  stream_restarted_by_recovery=restarted, broker_storage=cfg.broker_storage,
                  generator_runs=[s["run_id"] for s in summaries])
    _record(cfg, run_id, scenario, since, injected, result)
    return result


def _record(cfg: Settings, run_id: str, scenario: str, started: datetime,
            injected: dict[str, Any], r: dict[str, Any]) -> None:
    details = {k: v for k, v in r.items() if k not in (
        "events_sent", "events_lost", "incidents_duplicated", "late_events", "dead_lettered",
        "recovery_s", "verdict")}
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        # A retried task replaces its scenario's row.
        cur.execute("""
            INSERT INTO chaos_runs (run_id, scenario, started_at, finished_at, injected,
                events_sent, events_lost, incidents_duplicated, late_events, dead_lettered,
                recovery_s, verdict, details)
            VALUES (%s, %s, %s, now(), %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (run_id, scenario) DO UPDATE SET
                started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
                injected = EXCLUDED.injected, events_sent = EXCLUDED.events_sent,
                events_lost = EXCLUDED.events_lost,
                incidents_duplicated = EXCLUDED.incidents_duplicated,
                late_events = EXCLUDED.late_events, dead_lettered = EXCLUDED.dead_lettered,
                recovery_s = EXCLUDED.recovery_s, verdict = EXCLUDED.verdict,
                details = EXCLUDED.details""",
            (run_id, scenario, started, Json(injected), r["events_sent"], r["events_lost"],
             r["incidents_duplicated"], r["late_events"], r["dead_lettered"], r["recovery_s"],
             r["verdict"], Json(details)))


def failed_scenarios(cfg: Settings, run_id: str, expected: list[str]) -> list[str]:
    """One line per scenario that failed or left no verdict."""
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute("""SELECT scenario, verdict, details->'failures' FROM chaos_runs
                       WHERE run_id = %s""", (run_id,))
        rows = {s: (v, f) for s, v, f in cur.fetchall()}
    lines = [f"{s}: {'; '.join(rows[s][1] or [])}" for s in expected
             if s in rows and rows[s][0] != "pass"]
    return lines + [f"{s}: no verdict recorded" for s in expected if s not in rows]

"""Chaos scenarios: baseline → traffic → inject once the stream has committed the scenario's
own events → recover → verify against an offline reference; one chaos_runs row each.

The pass/fail rules are `patternalarm.chaos_verdict` (pure, unit-tested, its docstring names
every reason). This module gathers the facts it judges:
- Sent: the generator runs' summaries (messages the broker acknowledged). The traffic names
  entities the stream has never seen (`RunPlan.first_entity`, from the scenario's start
  second), so the stream's state for them starts empty, as the offline detector's does.
- Processed, lost, committed twice, and the reference incidents: `models.reference`, in a
  process of its own (this task stays on the layers below models), rebuilds the runs' events
  from their plans, reads which of them the lake shows in the batches committed since the
  baseline, and replays them through the stream's features, rules and champion version.
- Late-dropped and dead-lettered: the stream's per-batch metrics since the baseline.
- Incidents: the Postgres rows of the scenario's entities against the reference. `silence`
  (IoT) is compared apart and reported, not judged: the stream raises it from watermark timers,
  so whether and when it fires depends on batch boundaries and on traffic after the scenario,
  which the offline detector approximates (models/offline.py).
- Injection: after the first committed batch that holds the scenario's own events (read from
  the lake), and no earlier than a third of the way into the traffic; the batch ids, lag and
  log end offsets just before and after the fault are recorded, so what was in flight shows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg2.extras import Json

from pa_airflow import measure
from pa_airflow.faults import FaultInjector
from pa_airflow.generate import generate
from pa_airflow.stream import StreamJob
from patternalarm import db, kafka, lake
from patternalarm.chaos_verdict import Counts, Facts, IncidentDiff, reference_counts, verdict
from patternalarm.settings import Settings

QUERY = "detector"
# Entity numbers per start second: more than a run ever names (validation caps `entities` and
# default_entities caps at 100K), so scenarios started in different seconds share no entity.
ENTITY_BLOCK = 100_000
# Compared apart, not judged (see above).
TIMER_DETECTORS = ("silence",)


def run_scenario(cfg: Settings, run_id: str, scenario: str, p: dict[str, Any]) -> dict[str, Any]:
    from patternalarm.generator import STARTUP_LEAD_S, RunPlan, Spike

    stream = StreamJob(cfg, QUERY)
    faults = FaultInjector(cfg, stream)
    stream.ensure()
    stream.wait_idle()
    since = datetime.now(UTC)
    third = p["duration_s"] / 3
    start_s = time.time() + STARTUP_LEAD_S
    start_ms = int(start_s * 1000)
    plan = RunPlan(domains=tuple(p["domains"]), per_min=p["rate_per_min"], mode="CUSTOM",
                   duration_s=p["duration_s"], start_ms=start_ms, entities=p["entities"],
                   anomaly_rate=p["anomaly_rate"], first_entity=int(start_s) * ENTITY_BLOCK,
                   ground_truth=False,
                   spike=Spike("burst", third, at_s=third) if scenario == "spike" else None)
    runs: list[tuple[Any, dict[str, Any]]] = []
    errors: list[BaseException] = []

    def traffic(the_plan: RunPlan) -> None:
        try:
            runs.append((the_plan, generate(cfg, the_plan)))
        except BaseException as exc:  # re-raised below, after the fault is undone
            errors.append(exc)

    sender = threading.Thread(target=traffic, args=(plan,), name="chaos-traffic")
    sender.start()
    # On a busy machine the first batch may commit only after the traffic ended: the fault
    # then hits the backlog in flight, which is still the scenario's own traffic.
    live = _wait_for_own_batch(cfg, since, f"{plan.run_id(start_ms)}-",
                               until_s=start_s + p["duration_s"] + p["drain_timeout_s"])
    # A third of the way in at the earliest: the fault lands amid traffic, not at its edge.
    time.sleep(max(0.0, start_s + third - time.time()))
    injected: dict[str, Any] = {"scenario": scenario, "at": datetime.now(UTC).isoformat(),
                                "own_batch_before": live,
                                "traffic_over": time.time() > start_s + p["duration_s"],
                                "before": _position(cfg, plan.domains, since)}
    restarted_at = None
    if scenario == "kill_driver":
        fault_end = time.time()
        injected.update(faults.kill_driver())
        # The dying driver may still commit the batch it was writing: recovery is the new
        # driver's first batch, measured from the kill.
        restarted_at = time.time()
    elif scenario == "broker_restart":
        injected.update(faults.restart_broker())
        fault_end = time.time()
    elif scenario == "postgres_outage":
        injected.update(faults.postgres_outage(p["outage_s"]))
        fault_end = time.time()
    elif scenario == "poison_flood":
        poison = RunPlan(domains=plan.domains[:1], per_min=p["poison_count"] * 12.0,
                         mode="CUSTOM", count=p["poison_count"], malformed_fraction=1.0,
                         anomaly_rate=0.0, ground_truth=False)
        traffic(poison)
        fault_end = time.time()
        flood = next((s for sent_plan, s in runs if sent_plan is poison), {})
        injected.update(poison_run=flood.get("run_id"), malformed_sent=sum(
            d["malformed"] for d in flood.get("per_domain", {}).values()))
    else:  # spike: the burst is in the traffic's own schedule
        time.sleep(third)
        fault_end = time.time()
        injected.update(factor=plan.spike.factor, burst_s=third,
                        peak_rate_per_min=plan.per_min * plan.spike.factor)
    injected["after"] = _position(cfg, plan.domains, since)
    sender.join()
    traffic_end = datetime.now(UTC)
    if errors:
        raise errors[0]
    # Recover: a stream the fault killed (e.g. Postgres down past the sink's retries) restarts.
    restarted = stream.ensure()
    sent = sum(s["sent"] for _, s in runs)
    done = measure.wait_drained(cfg, QUERY, since, sent, traffic_end, p["drain_timeout_s"])
    ended = datetime.fromtimestamp(fault_end, UTC)
    after = datetime.fromtimestamp(restarted_at or fault_end, UTC)
    lag_ok = int(p["rate_per_min"] / 60 * len(plan.domains) * 3) + 1
    caught_up = measure.first_batch_after(cfg, QUERY, after, max_lag=lag_ok)
    first = measure.first_batch_after(cfg, QUERY, after)
    batches = measure.batches_after(cfg, QUERY, since)
    versions = {d: [v[d] for *_, v in batches if d in (v or {})] for d in plan.domains}
    ref = _reference(runs, [b[0] for b in batches],
                     {d: v[-1] for d, v in versions.items() if v})
    if ref["sent"] + ref["malformed"] != sent:
        raise RuntimeError(f"the runs' events rebuilt offline ({ref['sent']} valid, "
                           f"{ref['malformed']} malformed) are not the {sent} the generator "
                           "reports: no reference to judge against")
    observed = measure.incidents_of(cfg, ref["entities"])
    judged_ref, timer_ref = _split(ref["reference"])
    judged_obs, timer_obs = _split({k: {"detector": d, "event_count": e, "trigger_count": t}
                                    for k, (d, e, t) in observed.items()})
    processed_ref = ref["reference_processed"]
    result = verdict(Facts(
        scenario=scenario, sent=ref["sent"], malformed_sent=ref["malformed"],
        late_sent=ref["late"], processed=ref["processed"],
        processed_twice=ref["processed_twice"], late_dropped=done.late,
        dead_lettered=done.dead_lettered,
        incidents=IncidentDiff.compare(_counts(judged_ref), _counts(judged_obs)),
        recovery_s=(caught_up - ended).total_seconds() if caught_up else None,
        bound_s=p["recovery_bound_s"],
        durable_broker=cfg.broker_storage == "s3" or not cfg.embedded_kafka,
        injected_live=live is not None, model_versions=versions,
        lost_events=ref["missing_events"],
        incidents_processed=IncidentDiff.compare(_counts(_split(processed_ref)[0]),
                                                 _counts(judged_obs))
        if processed_ref is not None else None))
    timer = IncidentDiff.compare(_counts(timer_ref), _counts(timer_obs))
    result.update(
        incidents_reference=len(judged_ref), incidents_observed=len(judged_obs),
        timer_incidents={"detectors": list(TIMER_DETECTORS), "reference": len(timer_ref),
                         "observed": len(timer_obs), "only_offline": len(timer.missing),
                         "only_stream": len(timer.extra),
                         "why": "raised by watermark timers in the stream, approximated "
                                "offline: reported, not judged"},
        unknown_committed=ref["unknown_committed"], processed_rows=done.rows,
        batches=done.batches, first_batch_s=(first - ended).total_seconds() if first else None,
        stream_restarted_by_recovery=restarted, broker_storage=cfg.broker_storage,
        generator_runs=[s["run_id"] for _, s in runs])
    _record(cfg, run_id, scenario, since, injected, result)
    return result


def _wait_for_own_batch(cfg: Settings, since: datetime, prefix: str, until_s: float
                        ) -> int | None:
    """Id of the first batch committed after `since` whose lake rows include the run's own
    events (ids starting with `prefix`); None if none did before `until_s` (epoch seconds)."""
    checked: set[int] = set()
    while time.time() < until_s:
        for batch_id, rows, *_ in measure.batches_after(cfg, QUERY, since):
            if rows and batch_id not in checked:
                checked.add(batch_id)
                if lake.event_ids(cfg, [batch_id], (prefix,)):
                    return batch_id
        time.sleep(0.5)
    return None


def _position(cfg: Settings, domains: tuple[str, ...], since: datetime) -> dict[str, Any]:
    """Where the stream and the log stood: the latest committed batch, its lag, and the log end
    offset of each partition of the scenario's topics (their difference was in flight)."""
    batches = measure.batches_after(cfg, QUERY, since)
    ends = kafka.end_offsets(cfg, [cfg.events_topic(d) for d in domains])
    return {"at": datetime.now(UTC).isoformat(),
            "latest_batch_id": batches[-1][0] if batches else None,
            "lag": batches[-1][2] if batches else None,
            "end_offsets": {f"{t}:{n}": o for (t, n), o in sorted(ends.items())}}


def _reference(runs: list[tuple[Any, dict[str, Any]]], batch_ids: list[int],
               versions: dict[str, str]) -> dict[str, Any]:
    spec = {"runs": [{"plan": dataclasses.asdict(plan), "run_id": s["run_id"],
                      "start_ms": s["start_ms"]} for plan, s in runs],
            "batches": batch_ids, "model_versions": versions}
    with tempfile.TemporaryDirectory(prefix="pa-chaos-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "reference.json"
        spec_path.write_text(json.dumps(spec))
        done = subprocess.run([sys.executable, "-m", "models.reference", str(spec_path),
                               str(out_path)], capture_output=True, text=True, timeout=900)
        if done.returncode:
            raise RuntimeError(f"models.reference failed:\n{done.stderr[-3000:]}")
        return json.loads(out_path.read_text())


def _split(incidents: dict[str, dict[str, Any]]) -> tuple[dict, dict]:
    """(judged, timer-raised) incidents."""
    timer = {k: v for k, v in incidents.items() if v["detector"] in TIMER_DETECTORS}
    return {k: v for k, v in incidents.items() if k not in timer}, timer


def _counts(incidents: dict[str, dict[str, Any]]) -> dict[str, Counts]:
    return {k: Counts(v["event_count"], v["trigger_count"]) if "trigger_count" in v
            else reference_counts(v["event_count"]) for k, v in incidents.items()}


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

"""Load run report: throughput, latency, lag, drain and detection quality of one generator run,
as a load_runs row plus a PNG chart under <var_dir>/reports (shown by the dashboard).

A run passes when the stream accounted for every event sent and drained its lag within the
drain timeout.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from psycopg2.extras import Json

from pa_airflow import measure
from patternalarm import db
from patternalarm.quality import quality_by_detector
from patternalarm.settings import Settings


def report(cfg: Settings, run_id: str, p: dict[str, Any], summary: dict[str, Any],
           query: str, since: datetime) -> dict[str, Any]:
    start = datetime.fromtimestamp(summary["start_ms"] / 1000, UTC)
    end = start + timedelta(seconds=p["duration_s"])
    done = measure.wait_drained(cfg, query, since, summary["sent"], end, p["drain_timeout_s"])
    batches = measure.batches_since(cfg, query, since)
    data = [b for b in batches if b[1]]
    # Sustained rate: rows after the first data batch over the time they took to commit.
    span_s = (data[-1][0] - data[0][0]).total_seconds() if len(data) > 1 else 0.0
    throughput = sum(b[1] for b in data[1:]) / span_s * 60 if span_s else None
    drained_at = measure.first_batch_after(cfg, query, end, max_lag=0)
    p50, p99, incidents = measure.incident_latency_ms(cfg, p["domains"], since)
    with contextlib.closing(db.connect(cfg)) as conn:
        per_detector = quality_by_detector(conn, [summary["run_id"]], p["domains"], start,
                                           end)
    quality = {d: q["all"] for d, q in per_detector.items()}
    found = sum(q.detected for q in quality.values())
    episodes = sum(q.episodes for q in quality.values())
    true_incidents = sum(q.true_incidents for q in quality.values())
    all_incidents = sum(q.incidents for q in quality.values())
    lost = max(summary["sent"] - done.accounted, 0)
    failures = [f"{lost} of {summary['sent']} events not processed"] if lost else []
    if drained_at is None:
        failures.append(f"lag not back to 0 within {p['drain_timeout_s']:g}s of the end")
    r = {"run_id": run_id, "generator_run": summary["run_id"], "events_sent": summary["sent"],
         "processed": done.rows, "late_events": done.late, "dead_lettered": done.dead_lettered,
         "throughput_per_min": throughput, "latency_p50_ms": p50, "latency_p99_ms": p99,
         "incidents": incidents,
         "max_lag": max((b[2] for b in batches if b[2] is not None), default=None),
         "drain_s": (drained_at - end).total_seconds() if drained_at else None,
         "recall": found / episodes if episodes else None,
         "precision": true_incidents / all_incidents if all_incidents else None,
         "quality": {d: q.as_dict() for d, q in quality.items()},
         # What each detector adds and how often it is right: a model detector's precision
         # is hidden in the domain's total while the rules are precise.
         "quality_by_detector": {d: {name: q.as_dict() for name, q in sorted(per.items())}
                                 for d, per in per_detector.items()},
         "status": "failed" if failures else "passed", "failures": failures}
    r["chart_path"] = str(chart(cfg, run_id, batches, end))
    _record(cfg, run_id, p, summary, since, r)
    return r


def chart(cfg: Settings, run_id: str, batches: list[tuple], end: datetime) -> Path:
    """Rows per batch, lag and latency over the run, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    safe = "".join(c if c.isalnum() else "_" for c in run_id)
    path = cfg.var_dir / "reports" / f"load-{safe}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = batches[0][0] if batches else end
    secs = [(b[0] - t0).total_seconds() for b in batches]
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    axes[0].bar(secs, [b[1] for b in batches], width=0.8)
    axes[0].set_ylabel("rows / batch")
    axes[1].plot(secs, [b[2] or 0 for b in batches])
    axes[1].set_ylabel("lag (messages)")
    axes[2].plot(secs, [(b[3] or 0) / 1000 for b in batches], label="p50")
    axes[2].plot(secs, [(b[4] or 0) / 1000 for b in batches], label="p99")
    axes[2].set_ylabel("event latency (s)")
    axes[2].legend()
    for ax in axes:
        ax.axvline((end - t0).total_seconds(), color="grey", linestyle="--")
    axes[2].set_xlabel("seconds (dashed: end of the generator's schedule)")
    fig.suptitle(f"load run {run_id}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _record(cfg: Settings, run_id: str, p: dict[str, Any], summary: dict[str, Any],
            since: datetime, r: dict[str, Any]) -> None:
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        # A retried task replaces its run's row.
        cur.execute("""
            INSERT INTO load_runs (run_id, started_at, finished_at, status, mode, rate_per_min,
                domains, duration_s, spike_profile, events_sent, throughput_per_min,
                latency_p50_ms, latency_p99_ms, max_lag, drain_s, recall, precision,
                chart_path, report)
            VALUES (%s, %s, now(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (run_id) DO UPDATE SET
                started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
                status = EXCLUDED.status, events_sent = EXCLUDED.events_sent,
                throughput_per_min = EXCLUDED.throughput_per_min,
                latency_p50_ms = EXCLUDED.latency_p50_ms,
                latency_p99_ms = EXCLUDED.latency_p99_ms, max_lag = EXCLUDED.max_lag,
                drain_s = EXCLUDED.drain_s, recall = EXCLUDED.recall,
                precision = EXCLUDED.precision, chart_path = EXCLUDED.chart_path,
                report = EXCLUDED.report""",
            (run_id, since, r["status"], p["mode"], p["rate_per_min"], p["domains"],
             p["duration_s"], p["spike"], summary["sent"], r["throughput_per_min"],
             r["latency_p50_ms"], r["latency_p99_ms"], r["max_lag"], r["drain_s"], r["recall"],
             r["precision"], r["chart_path"], Json(r)))

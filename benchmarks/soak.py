"""Soak: the streaming job under steady live traffic for an hour on the embedded default stack,
measured per slice, to show whether anything degrades with time (end offsets on growing
partitions, broker memory, state size, latency).

    .venv/bin/patternalarm up
    .venv/bin/python benchmarks/soak.py [--rate 100000] [--seconds 3600] [--slice 300]

`--rate` is events/min over all three domains (CRISIS: 100000). Per slice it prints batch
duration (mean, p99), event-to-commit p50/p99 (the batches' p99 weighted by rows), max lag,
the broker's RSS and CPU, the state store's size and the job's RSS (driver JVM and its Python
workers), then the verdict against the goals: the last slice's p99 and batch duration within
1.5x of the second slice's, lag bounded (the last slice's max no more than the second's plus
one minute of traffic), and no `end_offsets_unavailable` in the job's log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stream import _rows, _wait_first_batch, own_topics  # noqa: E402
from patternalarm import settings as settings_mod  # noqa: E402
from patternalarm.services import Stack  # noqa: E402
from patternalarm.settings import DOMAINS  # noqa: E402

BIN = Path(sys.executable).parent


def tree_rss_mb(proc: psutil.Process) -> float:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


def slice_figures(cfg, query: str, since: float, until: float) -> dict:
    rows = _rows(cfg, """SELECT input_rows, processing_ms, event_latency_p50_ms,
                                event_latency_p99_ms, lag_total, state_bytes
                         FROM stream_metrics WHERE query_name = %s AND input_rows > 0
                           AND recorded_at >= to_timestamp(%s) AND recorded_at < to_timestamp(%s)
                         ORDER BY batch_id""", query, since, until)
    if not rows:
        return {"batches": 0}
    total = sum(r[0] for r in rows)

    def weighted(col: int, q: float) -> float:
        seen = 0
        for r in sorted(rows, key=lambda r: r[col]):
            seen += r[0]
            if seen >= q * total:
                return float(r[col])
        return float(rows[-1][col])

    durations = sorted(r[1] for r in rows)
    return {"batches": len(rows), "events_per_min": round(total / (until - since) * 60),
            "batch_ms_mean": round(sum(durations) / len(durations)),
            "batch_ms_p99": round(durations[min(len(durations) - 1, int(0.99 * len(durations)))]),
            "p50_ms": round(weighted(2, 0.5)), "p99_ms": round(weighted(3, 0.99)),
            "max_lag": max(r[4] or 0 for r in rows),
            "state_mb": round(max(r[5] or 0 for r in rows) / 2**20, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=100_000, help="events/min, all domains")
    parser.add_argument("--seconds", type=float, default=3600)
    parser.add_argument("--slice", type=float, default=300, dest="slice_s")
    args = parser.parse_args()
    cfg = settings_mod.get()
    broker = Stack(cfg).supervisor.process("broker")
    if broker is None:
        raise SystemExit("the embedded broker is not running: `patternalarm up` first")
    soak_cfg, env = own_topics("soak")
    query = f"soak-{soak_cfg.topic_prefix}"
    log_path = cfg.var_dir / "log" / f"{query}.log"
    with open(log_path, "wb") as log:
        job = subprocess.Popen(
            [str(BIN / "spark-submit"), "--master", "local[2]", str(ROOT / "streaming/job.py"),
             "--query-name", query, "--starting-offsets", "latest"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    per_domain = args.rate / len(DOMAINS)
    generator = None
    try:
        _wait_first_batch(cfg, query)
        generator = subprocess.Popen(
            [str(BIN / "patternalarm"), "generate", "--domain", ",".join(DOMAINS),
             "--rate", str(per_domain), "--duration", str(args.seconds), "--no-db", "--json",
             "--entities", str(int(min(per_domain, 100_000)))],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True)
        driver = psutil.Process(job.pid)
        broker.cpu_percent()
        slices = []
        began = time.time()
        for index in range(int(args.seconds // args.slice_s)):
            end = began + (index + 1) * args.slice_s
            time.sleep(max(0.0, end - time.time()))  # a benchmark's clock, not a test's sync
            figures = {"slice": index + 1, "minutes": f"{index * args.slice_s / 60:.0f}-"
                       f"{(index + 1) * args.slice_s / 60:.0f}",
                       **slice_figures(cfg, query, end - args.slice_s, end),
                       "broker_rss_mb": round(broker.memory_info().rss / 2**20),
                       "broker_cpu_pct": round(broker.cpu_percent()),
                       "job_rss_mb": round(tree_rss_mb(driver))}
            slices.append(figures)
            print(json.dumps(figures), flush=True)
        summary = json.loads(generator.communicate(timeout=600)[0])
    finally:
        for proc in (generator, job):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(120)
    unavailable = log_path.read_text(errors="replace").count("end_offsets_unavailable")
    second, last = slices[1], slices[-1]
    verdict = {
        "events_sent": summary["sent"],
        "p99_last_over_second": round(last["p99_ms"] / second["p99_ms"], 2),
        "batch_last_over_second": round(last["batch_ms_mean"] / second["batch_ms_mean"], 2),
        "lag_bounded": last["max_lag"] <= second["max_lag"] + args.rate,
        "end_offsets_unavailable": unavailable,
    }
    verdict["pass"] = (verdict["p99_last_over_second"] <= 1.5
                       and verdict["batch_last_over_second"] <= 1.5
                       and verdict["lag_bounded"] and unavailable == 0)
    print(json.dumps({"rate_per_min": args.rate, "slices": slices, "verdict": verdict},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`patternalarm` command line. Heavy layers run as processes; this module stays light."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from patternalarm import settings as settings_mod

EXIT_USAGE = 2


def _stack(cfg: settings_mod.Settings):
    from patternalarm.services import Stack

    return Stack(cfg)


def cmd_up(cfg: settings_mod.Settings, args: argparse.Namespace) -> int:
    started = time.monotonic()
    _stack(cfg).up()
    print(f"all services healthy in {time.monotonic() - started:.1f}s")
    return cmd_status(cfg, args)


def cmd_down(cfg: settings_mod.Settings, args: argparse.Namespace) -> int:
    stopped = _stack(cfg).down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_status(cfg: settings_mod.Settings, args: argparse.Namespace) -> int:
    from patternalarm import secrets

    rows = _stack(cfg).status()
    if getattr(args, "json", False):
        print(json.dumps([row.__dict__ for row in rows]))
    else:
        print(f"{'service':<20} {'state':<10} {'pid':>8} {'rss MB':>8} {'restarts':>8}  url")
        for row in rows:
            state = "healthy" if row.healthy else ("starting" if row.running else "stopped")
            pid = row.pid or "-"
            print(f"{row.name:<20} {state:<10} {pid:>8} {row.rss_mb:>8.0f} {row.restarts:>8}"
                  f"  {row.url}")
        for row in rows:
            if row.restarts:
                print(f"{row.name}: restarted {row.restarts}x, last exit: {row.last_exit}")
        # The password itself stays in the file: status output ends up in terminals' scrollback,
        # CI logs and bug reports.
        print(f"\nAirflow UI login: {cfg.airflow_admin_user}, password "
              f"`airflow_admin_password` in {secrets.path(cfg)}")
        print(f"logs: {cfg.var_dir / 'log'}")
    return 0 if all(row.healthy for row in rows) else 1


def cmd_config(cfg: settings_mod.Settings, args: argparse.Namespace) -> int:
    values = settings_mod.masked(cfg)
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        width = max(map(len, values))
        for key, value in values.items():
            print(f"{key:<{width}}  {value}")
    return 0


def cmd_migrate(cfg: settings_mod.Settings, args: argparse.Namespace) -> int:
    import contextlib

    from patternalarm import db

    with contextlib.closing(db.connect(cfg)) as conn:
        applied = db.migrate(conn)
    print("applied: " + (", ".join(applied) if applied else "nothing, schema is up to date"))
    return 0


def cmd_api(cfg: settings_mod.Settings, args: argparse.Namespace) -> int:
    """Serve the API in the foreground (`up` runs the same process in the background)."""
    import os

    from patternalarm.services import api_spec

    spec = api_spec(cfg)
    print(f"API and dashboard on {spec.url} (docs: {spec.url}/docs); "
          f"the API key is `api_key` in {cfg.var_dir / 'secrets.json'}", flush=True)
    # exec, not a child: Ctrl-C and SIGTERM reach uvicorn itself, and nothing is left behind.
    os.execve(spec.argv[0], spec.argv, {**os.environ, **spec.env})


def cmd_generate(cfg: settings_mod.Settings, args: argparse.Namespace) -> int:
    from patternalarm import generate_cli

    return generate_cli.run(cfg, args)


def cmd_train(cfg: settings_mod.Settings, args: argparse.Namespace) -> int:
    """Run spark_jobs/train_model.py under spark-submit; its arguments pass through."""
    import os
    import subprocess

    from patternalarm.services import spark_submit

    argv, env = spark_submit(cfg, "spark_jobs/train_model.py", *args.job_args)
    return subprocess.run(argv, env={**os.environ, **env}).returncode


def cmd_stream(cfg: settings_mod.Settings, args: argparse.Namespace) -> int:
    """Start, stop or inspect the streaming job (spark-submit streaming/job.py)."""
    from patternalarm.services import stream_spec
    from patternalarm.supervisor import Supervisor

    supervisor = Supervisor(cfg.var_dir)
    if args.action == "stop":
        stopped = supervisor.stop(stream_spec(cfg), timeout_s=60)
        print("stream stopped" if stopped else "stream was not running")
        return 0
    if args.action == "reset":
        return _stream_reset(cfg, supervisor, args.query_name)
    if args.action == "start":
        spec = stream_spec(cfg, "--domains", args.domains, "--query-name", args.query_name)
        started = supervisor.start(spec)
        print(("stream started" if started else "stream already running")
              + f": pid {supervisor.process('stream').pid}, log {supervisor.log_path('stream')},"
              f" {spec.url}")
        return 0
    return _stream_status(cfg, supervisor, args.query_name)


def _stream_reset(cfg: settings_mod.Settings, supervisor, query_name: str) -> int:
    """Forget a query: its checkpoint, batch ledger and metrics (incidents stay)."""
    import contextlib
    import shutil

    from patternalarm import db

    if supervisor.process("stream"):
        print("stop the stream first: patternalarm stream stop", file=sys.stderr)
        return 1
    shutil.rmtree(cfg.checkpoint_dir / query_name, ignore_errors=True)
    with contextlib.closing(db.connect(cfg)) as conn, conn, conn.cursor() as cur:
        cur.execute("DELETE FROM stream_batches WHERE query_name = %s", (query_name,))
        cur.execute("DELETE FROM stream_metrics WHERE query_name = %s", (query_name,))
    print(f"query {query_name!r} reset: it will start from --starting-offsets again")
    return 0


def _stream_status(cfg: settings_mod.Settings, supervisor, query_name: str) -> int:
    import contextlib

    from patternalarm import db

    proc = supervisor.process("stream")
    print(f"stream: {'running, pid ' + str(proc.pid) if proc else 'not running'}")
    with contextlib.closing(db.connect(cfg)) as conn, conn.cursor() as cur:
        cur.execute("""SELECT batch_id, recorded_at, input_rows, processing_ms,
                              event_latency_p50_ms, event_latency_p99_ms, lag_total,
                              dead_lettered, model_versions
                       FROM stream_metrics WHERE query_name = %s
                       ORDER BY batch_id DESC LIMIT 1""", (query_name,))
        last = cur.fetchone()
    if last:
        names = ("batch", "at", "rows", "processing_ms", "latency_p50_ms", "latency_p99_ms",
                 "lag", "dead_lettered", "models")
        print("last batch: " + ", ".join(f"{n}={v}" for n, v in zip(names, last, strict=True)))
    return 0 if proc else 1


def cmd_demo(cfg: settings_mod.Settings, args: argparse.Namespace) -> int:
    """The whole pipeline on the embedded services: models, stream, traffic; then where to look."""
    import os
    import subprocess

    from patternalarm.services import (
        VENV_BIN,
        ProcessSpec,
        Stack,
        has_champion,
        stream_spec,
    )
    from patternalarm.supervisor import Supervisor

    Stack(cfg).up()
    for domain in settings_mod.DOMAINS:
        if has_champion(cfg, domain):
            print(f"{domain}: champion model already registered")
            continue
        print(f"{domain}: training the bootstrap model (Spark MLlib, ~1 min)...", flush=True)
        code = cmd_train(cfg, argparse.Namespace(job_args=[
            "--source", "bootstrap", "--domain", domain, "--promote"]))
        if code != 0:
            print(f"training {domain} failed (exit {code}); the stream runs rules only",
                  file=sys.stderr)
    supervisor = Supervisor(cfg.var_dir)
    supervisor.start(stream_spec(cfg))
    traffic = ProcessSpec(
        name="generator", env={**os.environ},
        argv=[str(VENV_BIN / "patternalarm"), "generate", "--domain",
              ",".join(settings_mod.DOMAINS), "--mode", "NORMAL", "--duration",
              str(args.minutes * 60), "--json"])
    supervisor.stop(traffic)
    supervisor.start(traffic)
    subprocess.run([str(VENV_BIN / "patternalarm"), "status"])
    print(f"""
Pipeline running: generator at NORMAL (10K events/min per domain) for {args.minutes} min,
streaming job, champion models.
  dashboard     http://{cfg.bind_host}:{cfg.api_port}/
  Airflow       http://{cfg.bind_host}:{cfg.airflow_port}/   (login above)
  MLflow        {cfg.tracking_uri}/#/models
  Spark UI      http://127.0.0.1:4040/  (streaming job)
  incidents     GET http://{cfg.bind_host}:{cfg.api_port}/incidents with header X-API-Key
                (the api_key in {cfg.var_dir / 'secrets.json'})
  stream        patternalarm stream status   (logs: {supervisor.log_path('stream')})
Stop with `make down`.""")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from patternalarm import generate_cli

    parser = argparse.ArgumentParser(
        prog="patternalarm",
        description="Streaming fraud and anomaly detection on embedded or external services.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("up", help="start the embedded services (idempotent) and wait until healthy")
    sub.add_parser("down", help="stop every embedded service and its children")
    status = sub.add_parser("status", help="health, pid, memory and URL of each service")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    config = sub.add_parser("config", help="print the effective settings, secrets masked")
    config.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("migrate", help="apply pending sql/ migrations to the app database")
    sub.add_parser("api", help="serve the scoring API and dashboard in the foreground")
    # Its own prefix chars make every option a positional here: all of them reach the job,
    # whose --help lists them.
    train = sub.add_parser("train", help="train, register and optionally promote a model "
                           "(spark-submit; `train --help` for its options)",
                           add_help=False, prefix_chars="+")
    train.add_argument("job_args", nargs=argparse.REMAINDER)
    demo = sub.add_parser("demo", help="up, bootstrap models, stream, NORMAL traffic")
    demo.add_argument("--minutes", type=int, default=15,
                      help="minutes of traffic (the in-memory broker keeps every event)")
    stream = sub.add_parser("stream", help="start | stop | status | reset of the streaming job")
    stream.add_argument("action", choices=("start", "stop", "status", "reset"))
    stream.add_argument("--domains", default=",".join(settings_mod.DOMAINS),
                        help="comma-separated domains (start)")
    stream.add_argument("--query-name", default="detector",
                        help="checkpoint and ledger name (default: detector)")
    generate_cli.add_parser(sub)
    return parser


COMMANDS = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "config": cmd_config,
            "migrate": cmd_migrate, "api": cmd_api, "generate": cmd_generate,
            "train": cmd_train, "stream": cmd_stream, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = settings_mod.get()
    except settings_mod.SettingsError as exc:
        print(f"patternalarm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from patternalarm.java import JavaError
    from patternalarm.supervisor import ServiceError

    try:
        return COMMANDS[args.command](cfg, args)
    except (ServiceError, JavaError, ConnectionError) as exc:
        print(f"patternalarm {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

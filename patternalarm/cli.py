"""`patternalarm` command line. Heavy layers run as processes; this module stays light."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

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
    from patternalarm.progress import generators
    from patternalarm.services import stream_report

    stack = _stack(cfg)
    rows = stack.status()
    warnings = stack.warnings()
    stream = stream_report(cfg)
    traffic = [report for report, _ in generators(cfg.var_dir)]
    if getattr(args, "json", False):
        print(json.dumps({"services": [row.__dict__ for row in rows], "stream": stream,
                          "generators": traffic, "warnings": warnings}))
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
        for warning in warnings:
            print(f"WARNING: {warning}")
        print()
        print("\n".join(_stream_lines(stream)))
        for report in traffic or [None]:
            print(_generator_line(report))
        # The password itself stays in the file: status output ends up in terminals' scrollback,
        # CI logs and bug reports.
        print(f"\nAirflow UI login: {cfg.airflow_admin_user}, password "
              f"`airflow_admin_password` in {secrets.path(cfg)}")
        print(f"logs: {cfg.var_dir / 'log'}")
    return 0 if all(row.healthy for row in rows) else 1


def _figure(value: float | None, unit: str = "", digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}{unit}"


def _stream_lines(stream: dict) -> list[str]:
    state = stream["state"]
    if stream.get("pid"):
        state += f", pid {stream['pid']}"
    if stream["state"] == "failed":
        state += f" ({stream['last_exit']}; log {stream['log']})"
    if "metrics_error" in stream:
        return [f"{'stream':<11} {state}; no figures: {stream['metrics_error']}"]
    if stream["last_batch_at"] is None:
        return [f"{'stream':<11} {state}; no micro-batch recorded yet"]
    models = ", ".join(f"{d} v{v}" for d, v in sorted(stream["model_versions"].items()))
    lines = [
        f"{'stream':<11} {state} · last batch {stream['last_batch_at'][11:19]} UTC "
        f"({_figure(stream['last_batch_age_s'])} s ago) · "
        f"{_figure(stream['events_per_s'], ' events/s', 1)} (last min) · "
        f"p50 {_figure(stream['latency_p50_ms'], ' ms')} · "
        f"p99 {_figure(stream['latency_p99_ms'], ' ms')} · lag {_figure(stream['lag'])} · "
        f"dead letters {_figure(stream['dead_letters_last_min'])} (last min)",
        f"{'':<11} models: {models or 'none (rules only)'}"]
    lines += [f"{'':<11} query {b['query']} cannot read the broker's end offsets since "
              f"{b['since'][11:19]} UTC: {b['detail'].get('error', '')}"
              for b in stream["end_offsets_unavailable"]]
    return lines


def _generator_line(report: dict | None) -> str:
    if report is None:
        return f"{'generator':<11} none running"
    target = report["target"]
    done = f" ({report['sent'] / target:.0%})" if target else ""
    return (f"{'generator':<11} {report['state']}, pid {report['pid']} · {report['mode']} "
            f"{'/'.join(report['domains'])} · sent {report['sent']:,} of "
            f"{_figure(target)}{done} · {report['rate_per_min']:,.0f}/min of "
            f"{report['target_rate_per_min']:,.0f}/min · errors {report['errors']:,} · "
            f"episodes {report['episodes']:,}")


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
    from patternalarm.shipping import submit_dir

    argv, env = spark_submit(cfg, "spark_jobs/train_model.py", *args.job_args)
    return subprocess.run(argv, env={**os.environ, **env},
                          cwd=submit_dir(cfg, cfg.spark_master)).returncode


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
    return _stream_status(cfg)


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


def _stream_status(cfg: settings_mod.Settings) -> int:
    from patternalarm.services import stream_report

    stream = stream_report(cfg)
    print("\n".join(_stream_lines(stream)))
    return 0 if stream["pid"] else 1


def cmd_cluster(cfg: settings_mod.Settings, args: argparse.Namespace) -> int:
    """A Spark standalone master and workers on this machine, or what jobs ship to one."""
    from patternalarm import shipping
    from patternalarm.cluster import Cluster

    cluster = Cluster(cfg)
    if args.action == "pack":
        print(f"code: {shipping.build_code(cfg)}\nexecutors' environment: "
              f"{shipping.build_env(cfg)}")
        return 0
    if args.action == "down":
        stopped = cluster.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if args.action == "up":
        started = time.monotonic()
        url = cluster.up()
        print(f"cluster healthy in {time.monotonic() - started:.1f}s; submit to it with "
              f"{settings_mod.env_key('spark_master')}={url}")
    rows = cluster.status()
    print(f"{'process':<16} {'state':<10} {'pid':>8} {'rss MB':>8} {'restarts':>8}  url")
    for row in rows:
        state = "healthy" if row.healthy else ("starting" if row.running else "stopped")
        print(f"{row.name:<16} {state:<10} {row.pid or '-':>8} {row.rss_mb:>8.0f} "
              f"{row.restarts:>8}  {row.url}")
    return 0 if all(row.healthy for row in rows) else 1


def cmd_airflow(cfg: settings_mod.Settings, args: argparse.Namespace) -> int:
    """The Airflow CLI with the environment `up` gives Airflow (metadata DB, DAGs, Spark)."""
    import os

    from patternalarm.services import VENV_BIN, airflow_env

    argv = [str(VENV_BIN / "airflow"), *args.airflow_args]
    # exec: Airflow's own exit code, output and signals, nothing in between.
    os.execve(argv[0], argv, {**os.environ, **airflow_env(cfg)})


# How `demo` trains the domains without a champion, all in one job (--domain a,b,c;
# tests/integration/test_demo_quality.py runs the same): each promoted only if its incident
# precision on a replay at the live anomaly rate reaches the target, else the domain runs on
# rules only.
DEMO_TRAINING = ("--source", "bootstrap", "--promote", "--json")


def cmd_demo(cfg: settings_mod.Settings, args: argparse.Namespace) -> int:
    """The whole pipeline on the embedded services, one line per stage; output in var/log/."""
    from patternalarm.progress import Stages
    from patternalarm.services import Stack, stream_spec, traffic_spec
    from patternalarm.supervisor import Supervisor

    stages = Stages()
    supervisor = Supervisor(cfg.var_dir)
    began = time.monotonic()
    stages.say(f"PatternAlarm demo (output of every step: {supervisor.log_dir}/)")
    stack = Stack(cfg)
    with stages.stage("services") as stage:
        stack.up()
        stage.note(", ".join(spec.name for spec in stack.specs()) + ": healthy")
    _demo_models(cfg, supervisor, stages)
    traffic = traffic_spec(cfg, args.minutes)
    with stages.stage("traffic") as stage:
        supervisor.stop(traffic)
        supervisor.start(traffic)
        stage.note(f"generator at NORMAL, 10K events/min per domain for {args.minutes} min")
        _wait_for(lambda: _sent(cfg, supervisor), supervisor, "generator", 120)
    with stages.stage("stream") as stage:
        started = datetime.now(UTC)
        if not supervisor.start(stream_spec(cfg)):
            stage.note("already running; ")
        stage.note(stage.detail + "waiting for the first micro-batch (Spark start-up)")
        batch = _wait_for(lambda: _first_batch(cfg, started), supervisor, "stream", 600)
        stage.note(f"first micro-batch: {batch['input_rows']:,} events, "
                   f"p99 {batch['event_latency_p99_ms'] or 0:,.0f} ms")
    stages.say(f"""
Pipeline running ({time.monotonic() - began:.0f}s to here):
  dashboard   http://{cfg.bind_host}:{cfg.api_port}/   (API key: `api_key` in \
{cfg.var_dir / 'secrets.json'})
  Airflow     http://{cfg.bind_host}:{cfg.airflow_port}/   (login: `patternalarm status`)
  MLflow      {cfg.tracking_uri}/#/models
  Spark UI    http://127.0.0.1:4040/   (streaming job; if 4040 was taken, its `started` line
              in {supervisor.log_path('stream')} names the port)
  how it runs patternalarm status      stop everything: make down""")
    return 0


def _demo_models(cfg, supervisor, stages) -> None:
    """Train and promote the bootstrap model of every domain without a champion, quietly: one
    Spark job for all of them (one JVM start-up, not three), a stage per domain that ends when
    the job prints that domain's result."""
    from patternalarm.services import has_champion

    untrained = [d for d in settings_mod.DOMAINS if not has_champion(cfg, d)]
    job = _start_training(cfg, supervisor, untrained) if untrained else None
    try:
        for domain in settings_mod.DOMAINS:
            with stages.stage(f"model {domain}") as stage:
                if domain not in untrained:
                    stage.note("champion already registered")
                    continue
                stage.note("training the bootstrap model (Spark MLlib; log "
                           f"{supervisor.log_path('train-bootstrap')})")
                result = _model_result(job, supervisor.log_path("train-bootstrap"), domain)
                _model_note(stage, domain, result, supervisor)
    except BaseException:
        if job:
            job.terminate()
        raise
    finally:
        if job:
            job.wait()


def _start_training(cfg, supervisor, domains: list[str]):
    import os
    import subprocess

    from patternalarm import shipping
    from patternalarm.services import spark_submit

    argv, env = spark_submit(cfg, "spark_jobs/train_model.py", *DEMO_TRAINING,
                             "--domain", ",".join(domains))
    log = supervisor.log_path("train-bootstrap")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.Popen(argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                cwd=shipping.submit_dir(cfg, cfg.spark_master))


def _model_result(job, log, domain: str) -> dict:
    """The job's JSON line for `domain`, once printed; a failure line if the job ended first."""
    import contextlib

    while True:
        ended = job.poll() is not None
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    result = json.loads(line)
                    if result.get("domain") == domain:
                        return result
        if ended:
            return {"error": f"exit {job.returncode} before its result"}
        time.sleep(0.5)


def _model_note(stage, domain: str, summary: dict, supervisor) -> None:
    if "error" in summary:
        stage.fail(f"training failed ({summary['error'][:200]}); the stream runs rules only "
                   f"for {domain}", f"last lines of {supervisor.log_path('train-bootstrap')}:\n"
                   f"{supervisor.tail('train-bootstrap')}")
        return
    replay = summary.get("replay_model_precision")
    stage.note(f"v{summary['version']} {summary.get('alias') or 'registered'}, "
               f"PR-AUC {summary['pr_auc']:.3f}"
               + (f", incident precision {replay:.3f} at the live rate" if replay else "")
               + ("" if summary.get("alias") == "champion" else
                  f"; not promoted ({summary.get('promotion_reason')}): rules only"))


def _wait_for(probe, supervisor, name: str, timeout_s: float):
    """Poll `probe` until it returns something; fail with the job's log if the job ends."""
    from patternalarm.supervisor import ServiceError

    deadline = time.monotonic() + timeout_s
    while (found := probe()) is None:
        if supervisor.process(name) is None:
            raise ServiceError(f"{name} ended; last lines of {supervisor.log_path(name)}:\n"
                               f"{supervisor.tail(name)}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{name}: nothing after {timeout_s:.0f}s; last lines of "
                               f"{supervisor.log_path(name)}:\n{supervisor.tail(name)}")
        time.sleep(0.5)
    return found


def _sent(cfg: settings_mod.Settings, supervisor) -> int | None:
    from patternalarm.progress import generators

    proc = supervisor.process("generator")
    for report, _ in generators(cfg.var_dir):
        if proc is not None and report["pid"] == proc.pid and report["sent"] > 0:
            return report["sent"]
    return None


def _first_batch(cfg: settings_mod.Settings, since: datetime) -> dict | None:
    import contextlib

    import psycopg2.extras

    from patternalarm import db

    with contextlib.closing(db.connect(cfg)) as conn, \
            conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute("""SELECT input_rows, event_latency_p99_ms FROM stream_metrics
                       WHERE query_name = 'detector' AND recorded_at >= %s AND input_rows > 0
                       ORDER BY batch_id LIMIT 1""", (since,))
        return cur.fetchone()


def build_parser() -> argparse.ArgumentParser:
    from patternalarm import generate_cli

    parser = argparse.ArgumentParser(
        prog="patternalarm",
        description="Streaming fraud and anomaly detection on embedded or external services.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("up", help="start the embedded services (idempotent) and wait until healthy")
    sub.add_parser("down", help="stop the stream, generators and every embedded service, "
                   "with their children")
    status = sub.add_parser("status", help="services (health, pid, memory, URL), the stream "
                            "and the generators")
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
    airflow = sub.add_parser("airflow", help="the Airflow CLI with the stack's environment "
                             "(`airflow --help` for its commands)",
                             add_help=False, prefix_chars="+")
    airflow.add_argument("airflow_args", nargs=argparse.REMAINDER)
    demo = sub.add_parser("demo", help="up, bootstrap models, NORMAL traffic, stream; one line "
                          "per stage, output in var/log/")
    demo.add_argument("--minutes", type=int, default=15,
                      help="minutes of traffic (the in-memory broker keeps every event)")
    stream = sub.add_parser("stream", help="start | stop | status | reset of the streaming job")
    stream.add_argument("action", choices=("start", "stop", "status", "reset"))
    stream.add_argument("--domains", default=",".join(settings_mod.DOMAINS),
                        help="comma-separated domains (start)")
    stream.add_argument("--query-name", default="detector",
                        help="checkpoint and ledger name (default: detector)")
    cluster = sub.add_parser("cluster", help="up | down | status of a Spark standalone "
                             "cluster on this machine; pack: build what jobs ship to a cluster")
    cluster.add_argument("action", choices=("up", "down", "status", "pack"))
    generate_cli.add_parser(sub)
    return parser


COMMANDS = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "config": cmd_config,
            "migrate": cmd_migrate, "api": cmd_api, "generate": cmd_generate,
            "train": cmd_train, "stream": cmd_stream, "demo": cmd_demo,
            "airflow": cmd_airflow, "cluster": cmd_cluster}


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

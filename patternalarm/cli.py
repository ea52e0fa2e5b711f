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
        print(f"{'service':<20} {'state':<10} {'pid':>8} {'rss MB':>8}  url")
        for row in rows:
            state = "healthy" if row.healthy else ("starting" if row.running else "stopped")
            pid = row.pid or "-"
            print(f"{row.name:<20} {state:<10} {pid:>8} {row.rss_mb:>8.0f}  {row.url}")
        keys = secrets.path(cfg)
        if keys.exists():
            password = secrets.load(cfg)["airflow_admin_password"]
            print(f"\nAirflow UI login: {cfg.airflow_admin_user} / {password}  (from {keys})")
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

    from patternalarm import java
    from patternalarm.services import VENV_BIN

    argv = [str(VENV_BIN / "spark-submit"), "--master", cfg.spark_master,
            "--conf", "spark.ui.showConsoleProgress=false",
            str(settings_mod.PROJECT_ROOT / "spark_jobs" / "train_model.py"), *args.job_args]
    # Workers must run this interpreter, and Spark binds where the hostname resolves unless
    # told; the settings themselves reach the job through the inherited environment.
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": cfg.bind_host,
           "JAVA_HOME": str(java.find(cfg)), "GX_ANALYTICS_ENABLED": "false"}
    return subprocess.run(argv, env=env).returncode


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
    generate_cli.add_parser(sub)
    return parser


COMMANDS = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "config": cmd_config,
            "migrate": cmd_migrate, "api": cmd_api, "generate": cmd_generate,
            "train": cmd_train}


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

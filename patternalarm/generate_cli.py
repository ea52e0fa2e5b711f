"""`patternalarm generate`: synthetic events at a rate, or the replay of a labelled file."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from patternalarm.progress import GeneratorReport, combine
from patternalarm.settings import DOMAINS, Settings

EXIT_USAGE = 2
_BAR = 24


class UsageError(ValueError):
    pass


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from patternalarm.generator import MODES

    p = subparsers.add_parser(
        "generate", help="send synthetic labelled events (or replay a labelled file)",
        description="Rates are per domain. Ground truth goes to Postgres (ground_truth) and "
                    "each label to the labels topic label-delay seconds after its episode.")
    p.add_argument("--domain", default="payments",
                   help=f"comma-separated, of {','.join(DOMAINS)} (default payments)")
    p.add_argument("--mode",
                   help=", ".join(f"{k} {v:g}/min" for k, v in MODES.items())
                   + ", CUSTOM (with --rate); default NORMAL, or CUSTOM when --rate is given")
    p.add_argument("--rate", type=float, help="events per minute per domain (mode CUSTOM)")
    span = p.add_mutually_exclusive_group()
    span.add_argument("--duration", type=float, help="seconds of schedule (default 60)")
    span.add_argument("--count", type=int, help="events per domain instead of a duration")
    p.add_argument("--spike", help="ramp:SECONDS or burst:START_S:SECONDS[:FACTOR] "
                                   "(factor 10 by default)")
    p.add_argument("--seed", type=int, default=42, help="same seed + start time = same events")
    p.add_argument("--start-time", type=int, dest="start_ms",
                   help="event time of the first event, epoch ms (default now)")
    p.add_argument("--entities", type=int, help="entities per domain (default ~rate per minute)")
    p.add_argument("--anomaly-rate", type=float, default=0.001,
                   help="episodes started per event (default 0.001)")
    p.add_argument("--late-fraction", type=float, default=0.0,
                   help="fraction of events sent with an event time in the past")
    p.add_argument("--late-max", type=float, default=120.0, dest="late_max_s",
                   help="how far in the past a late event can be, seconds (default 120)")
    p.add_argument("--malformed-fraction", type=float, default=0.0,
                   help="fraction of messages that break the contract (dead-letter tests)")
    p.add_argument("--label-delay", type=float, default=10.0, dest="label_delay_s",
                   help="seconds between an episode's end and its label (default 10)")
    p.add_argument("--no-db", action="store_true",
                   help="do not write ground truth to Postgres (labels still go to Kafka)")
    p.add_argument("--delivery-timeout", type=float, default=30.0, dest="delivery_timeout_s",
                   help="seconds the producer retries a message before counting it undelivered")
    p.add_argument("--connect-attempts", type=int, default=5,
                   help="broker connection attempts, with backoff, before giving up")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    replay = p.add_argument_group("replay of a labelled CSV/Parquet file")
    replay.add_argument("--from-file", type=Path, help="file to replay (one --domain)")
    replay.add_argument("--entity-col", help="column with the entity id (Kafka key)")
    replay.add_argument("--time-col", help="column with the event time (seconds or timestamps)")
    replay.add_argument("--label-col", help="column whose positive rows become ground truth")
    replay.add_argument("--speedup", type=float, default=1.0,
                        help="replay this many times faster than the file's own time")
    # Checks that argparse cannot make (see plan_from_args) print the same usage as its own.
    p.set_defaults(generate_usage=p.format_usage())
    return p


def plan_from_args(args: argparse.Namespace) -> Any:
    """Check the arguments; raises UsageError naming the bad one."""
    from patternalarm.generator import MODES, RunPlan, Spike

    picked = tuple(d.strip() for d in args.domain.split(",") if d.strip())
    unknown = [d for d in picked if d not in DOMAINS]
    if unknown or not picked:
        raise UsageError(f"--domain: unknown domain {', '.join(unknown) or '(none)'} "
                         f"(choose from {', '.join(DOMAINS)})")
    if len(set(picked)) != len(picked):
        raise UsageError("--domain: a domain is listed twice")
    mode = (args.mode or ("CUSTOM" if args.rate is not None else "NORMAL")).upper()
    if mode == "CUSTOM":
        if args.rate is None:
            raise UsageError("--mode CUSTOM needs --rate (events per minute)")
        per_min = args.rate
    elif mode not in MODES:
        raise UsageError(f"--mode: unknown mode {args.mode!r} "
                         f"(choose from {', '.join(MODES)}, CUSTOM)")
    elif args.rate is not None:
        raise UsageError(f"--rate goes with --mode CUSTOM, not {args.mode}")
    else:
        per_min = MODES[mode]
    checks = [("--rate", per_min > 0 and per_min < float("inf"), per_min),
              ("--duration", args.duration is None or args.duration > 0, args.duration),
              ("--count", args.count is None or args.count > 0, args.count),
              ("--entities", args.entities is None or args.entities > 0, args.entities),
              ("--anomaly-rate", 0 <= args.anomaly_rate <= 0.1, args.anomaly_rate),
              ("--late-fraction", 0 <= args.late_fraction <= 0.5, args.late_fraction),
              ("--late-max", args.late_max_s >= 1, args.late_max_s),
              ("--malformed-fraction", 0 <= args.malformed_fraction <= 0.5,
               args.malformed_fraction),
              ("--label-delay", args.label_delay_s >= 0, args.label_delay_s),
              ("--delivery-timeout", args.delivery_timeout_s > 0, args.delivery_timeout_s),
              ("--connect-attempts", args.connect_attempts >= 1, args.connect_attempts),
              ("--speedup", args.speedup > 0, args.speedup)]
    for name, ok, value in checks:
        if not ok:
            raise UsageError(f"{name}: invalid value {value!r}")
    try:
        spike = Spike.parse(args.spike) if args.spike else None
    except ValueError as exc:
        raise UsageError(f"--spike: {exc}") from None
    if args.from_file is not None:
        if len(picked) != 1:
            raise UsageError("--from-file replays into exactly one --domain")
        missing = [f"--{n}" for n in ("entity-col", "time-col")
                   if getattr(args, n.replace("-", "_")) is None]
        if missing:
            raise UsageError(f"--from-file needs {' and '.join(missing)}")
        mode = "REPLAY"
    elif any(getattr(args, n) is not None for n in ("entity_col", "time_col", "label_col")):
        raise UsageError("--entity-col/--time-col/--label-col go with --from-file")
    return RunPlan(
        domains=picked, per_min=per_min, mode=mode,
        duration_s=None if args.count is not None else (args.duration or 60.0),
        count=args.count, spike=spike, seed=args.seed, start_ms=args.start_ms,
        entities=args.entities, anomaly_rate=args.anomaly_rate,
        late_fraction=args.late_fraction, late_max_s=args.late_max_s,
        malformed_fraction=args.malformed_fraction, label_delay_s=args.label_delay_s,
        ground_truth=not args.no_db, delivery_timeout_s=args.delivery_timeout_s,
        connect_attempts=args.connect_attempts)


def _progress_bar(plan: Any) -> Any:
    def show(state: dict[str, Any]) -> None:
        stats = state["stats"]
        sent = sum(s.get("sent", 0) for s in stats.values())
        errors = sum(s.get("errors", 0) for s in stats.values())
        target = sum(state["targets"].values())
        elapsed = state["elapsed_s"]
        done = sent / target if target else 1.0
        filled = int(done * _BAR)
        rate = sent / elapsed * 60 if elapsed > 0 else 0.0
        line = (f"\r{plan.mode:<7}[{'#' * filled}{'.' * (_BAR - filled)}] {done:4.0%}  "
                f"sent {sent:,}/{target:,}  {_k(rate)}/min of "
                f"{_k(plan.per_min * len(plan.domains))}/min  errors {errors:,}  "
                f"episodes {state['episodes']:,}  {elapsed:5.1f}s ")
        sys.stdout.write(line)
        sys.stdout.flush()
    return show


def _k(value: float) -> str:
    return f"{value / 1000:.1f}K" if value >= 1000 else f"{value:.0f}"


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"run {summary['run_id']}  mode {summary['mode']}  {summary['elapsed_s']:.1f}s  "
          f"{summary['events_per_s']:,.0f} events/s")
    print(f"{'domain':<10} {'target':>10} {'sent':>10} {'malformed':>9} {'late':>8} "
          f"{'episodes':>8} {'undelivered':>11} {'events/s':>10}")
    for domain, d in summary["per_domain"].items():
        print(f"{domain:<10} {d['target']:>10,} {d['sent']:>10,} {d['malformed']:>9,} "
              f"{d['late']:>8,} {d['episodes']:>8,} {d['undelivered']:>11,} "
              f"{d['events_per_s']:>10,.0f}")
        if "failure" in d:
            print(f"  {domain}: {d['failure'].strip()}")
    print(f"labels published {summary['labels_published']:,}"
          + ("" if summary["ground_truth_written"] else "  (ground truth not written: --no-db)"))


def _stop(signum: int, _frame: object) -> None:
    # `down` stops a generator with SIGTERM: raised as SystemExit it unwinds like Ctrl-C, and
    # multiprocessing's exit handler then terminates the per-domain worker processes.
    raise SystemExit(128 + signum)


def run(cfg: Settings, args: argparse.Namespace) -> int:
    from patternalarm import generator, replay

    try:
        plan = plan_from_args(args)
    except UsageError as exc:
        print(f"{args.generate_usage}patternalarm generate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    bar = _progress_bar(plan) if sys.stdout.isatty() and not args.json else None
    # `status` shows this file; `down` finds this process through it.
    report = GeneratorReport(cfg.var_dir, plan)
    signal.signal(signal.SIGTERM, _stop)
    try:
        progress = combine(bar, report.progress)
        if args.from_file is not None:
            options = replay.ReplayOptions(args.from_file, plan.domains[0], args.entity_col,
                                           args.time_col, args.label_col, args.speedup)
            summary = replay.run(cfg, plan, options, progress)
        else:
            summary = generator.run(cfg, plan, progress)
    except replay.ReplayError as exc:
        report.finish("failed")
        print(f"patternalarm generate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BaseException:
        report.finish("stopped")
        raise
    if bar:
        print()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    failed = [d for d, v in summary["per_domain"].items() if "failure" in v]
    broken = bool(summary["undelivered"] or failed or summary["label_errors"])
    report.finish("failed" if broken else "finished")
    if broken:
        reasons = [summary["per_domain"][d]["failure"].strip().splitlines()[-1] for d in failed]
        print(f"patternalarm generate: {summary['undelivered']:,} of "
              f"{summary['undelivered'] + summary['sent']:,} events undelivered"
              + "".join(f"; {r}" for r in dict.fromkeys(reasons)), file=sys.stderr)
        return 1
    return 0

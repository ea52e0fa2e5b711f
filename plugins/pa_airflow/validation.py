"""Checks of a DAG run's params, run by its first task before anything is generated or injected.

The Param schemas in the DAG files give the UI form its types, choices and minimums, and
Airflow already refuses a trigger that breaks them. These checks repeat what matters (a run
can carry conf the schema never saw, e.g. from an older DAG version) and add what a JSON
schema cannot say: a rate that goes with CUSTOM only, the spike syntax, an outage that fits in
the traffic window. Each returns the normalised values the later tasks use.
"""

from __future__ import annotations

from typing import Any

from patternalarm.settings import DOMAINS

MODES = ("MINI", "NORMAL", "PEAK", "CRISIS", "CUSTOM")
SCENARIOS = ("kill_driver", "broker_restart", "postgres_outage", "poison_flood", "spike")
SOURCES = ("lake", "bootstrap")


class ParamsError(ValueError):
    """Invalid params; the message names every bad one."""


def _number(problems: list[str], params: dict[str, Any], name: str, minimum: float,
            integer: bool = False) -> float:
    value = params.get(name)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
        problems.append(f"{name}: {value!r} is not a{'n integer' if integer else ' number'} "
                        f">= {minimum:g}")
        return minimum
    return value


def _domains(problems: list[str], params: dict[str, Any]) -> list[str]:
    picked = params.get("domains")
    if not isinstance(picked, list) or not picked:
        problems.append(f"domains: {picked!r} is not a non-empty list of {', '.join(DOMAINS)}")
        return []
    unknown = [d for d in picked if d not in DOMAINS]
    if unknown:
        problems.append(f"domains: unknown {unknown} (choose from {', '.join(DOMAINS)})")
    return list(dict.fromkeys(picked))


def _rate(problems: list[str], params: dict[str, Any]) -> float:
    from patternalarm.generator import MODES as RATES

    mode, rate = params.get("mode"), params.get("rate_per_min")
    if mode not in MODES:
        problems.append(f"mode: unknown mode {mode!r} (choose from {', '.join(MODES)})")
        return 1.0
    if mode != "CUSTOM":
        if rate is not None:
            problems.append(f"rate_per_min goes with mode CUSTOM, not {mode} (leave it empty)")
        return RATES[mode]
    if rate is None:
        problems.append("mode CUSTOM needs rate_per_min (events per minute per domain)")
        return 1.0
    return _number(problems, params, "rate_per_min", 1)


def _raise(problems: list[str]) -> None:
    if problems:
        raise ParamsError("invalid params:\n  " + "\n  ".join(problems))


def check_load(params: dict[str, Any]) -> dict[str, Any]:
    from patternalarm.generator import Spike

    problems: list[str] = []
    checked = {"mode": params.get("mode"), "rate_per_min": _rate(problems, params),
               "domains": _domains(problems, params),
               "duration_s": _number(problems, params, "duration_s", 1),
               "drain_timeout_s": _number(problems, params, "drain_timeout_s", 1),
               "spike": (params.get("spike") or "").strip() or None}
    if checked["spike"]:
        try:
            Spike.parse(checked["spike"])
        except ValueError as exc:
            problems.append(f"spike: {exc}")
    _raise(problems)
    return checked


def check_chaos(params: dict[str, Any]) -> dict[str, Any]:
    problems: list[str] = []
    scenarios = params.get("scenarios")
    if not isinstance(scenarios, list) or not scenarios:
        problems.append(f"scenarios: {scenarios!r} is not a non-empty list of "
                        f"{', '.join(SCENARIOS)}")
        scenarios = []
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        problems.append(f"scenarios: unknown scenario {unknown} "
                        f"(choose from {', '.join(SCENARIOS)})")
    checked = {"scenarios": list(dict.fromkeys(scenarios)),
               "domains": _domains(problems, params),
               "rate_per_min": _number(problems, params, "rate_per_min", 1),
               "duration_s": _number(problems, params, "duration_s", 6),
               "outage_s": _number(problems, params, "outage_s", 1),
               "poison_count": _number(problems, params, "poison_count", 1, integer=True),
               "recovery_bound_s": _number(problems, params, "recovery_bound_s", 1),
               "drain_timeout_s": _number(problems, params, "drain_timeout_s", 1),
               "anomaly_rate": _number(problems, params, "anomaly_rate", 0),
               "entities": params.get("entities")}
    if checked["entities"] is not None and _number(problems, params, "entities", 1,
                                                   integer=True) > 100_000:
        problems.append(f"entities: {checked['entities']} is above 100000")
    if checked["anomaly_rate"] > 0.5:
        problems.append(f"anomaly_rate: {checked['anomaly_rate']:g} is above 0.5 (episodes "
                        "started per event)")
    if "postgres_outage" in checked["scenarios"] and \
            checked["outage_s"] >= checked["duration_s"] * 2 / 3:
        problems.append(f"outage_s {checked['outage_s']:g} must end inside the traffic window: "
                        f"below 2/3 of duration_s ({checked['duration_s']:g})")
    _raise(problems)
    return checked


def check_retrain(params: dict[str, Any]) -> dict[str, Any]:
    problems: list[str] = []
    domain, source, promote = params.get("domain"), params.get("source"), params.get("promote")
    if domain not in DOMAINS:
        problems.append(f"domain: unknown domain {domain!r} (choose from {', '.join(DOMAINS)})")
    if source not in SOURCES:
        problems.append(f"source: unknown source {source!r} (choose from {', '.join(SOURCES)})")
    if not isinstance(promote, bool):
        problems.append(f"promote: {promote!r} is not true or false")
    _raise(problems)
    # The training job's arguments, rendered into SparkSubmitOperator's application_args.
    train_args = ["--source", source, "--domain", domain, "--json"]
    return {"domain": domain, "source": source, "promote": promote,
            "train_args": train_args + (["--promote"] if promote else [])}

"""Run the generator (patternalarm.generator) from a task: the same plans and summary as the CLI."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from typing import Any

from patternalarm.settings import Settings


@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """Airflow's LocalExecutor runs a task in a fork of a daemonic worker, and multiprocessing
    refuses children to daemons; the generator joins its workers before it returns, which is
    what the rule protects."""
    config = multiprocessing.current_process()._config
    daemon = config.get("daemon", False)
    config["daemon"] = False
    try:
        yield
    finally:
        config["daemon"] = daemon


def generate(cfg: Settings, plan: Any) -> dict[str, Any]:
    """generator.run(cfg, plan); raises when an event was not delivered."""
    from patternalarm import generator

    with _children_allowed():
        summary = generator.run(cfg, plan)
    failures = {d: v["failure"] for d, v in summary["per_domain"].items() if "failure" in v}
    if failures or summary["undelivered"]:
        raise RuntimeError(f"generator run {summary['run_id']}: {summary['undelivered']} "
                           f"events undelivered; {failures}")
    return summary

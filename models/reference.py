"""What a chaos scenario's stream should have committed: the events its generator runs sent,
replayed offline through the stream's feature engine, rules and champion version
(models.offline), next to what the stream's lake shows it did process.

A process of its own (``python -m models.reference SPEC OUT``, JSON in and out): the chaos
task that calls it stays on the layers below models (dags → plugins → patternalarm).

- Sent events are rebuilt from each run's plan, seed and start time: the generator is
  deterministic (same plan, same bytes) and its task fails on any unacknowledged event, so
  these are exactly the messages the broker acknowledged. Malformed ones are expected as dead
  letters, not events.
- Processed events are the run's event ids in the lake directories of the batches committed
  since the baseline; an id in two directories was committed twice.
- The reference is computed over every valid event sent, and, when some never reached the
  sink, once more over those that did: the difference is what the loss explains.

The stream's entities must have no history before the run (the chaos runs name theirs with
``RunPlan.first_entity``): the offline detector starts from empty state, as the stream then
does.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from models.offline import replay_incidents
from patternalarm import lake
from patternalarm import settings as settings_mod
from patternalarm.generator import DomainStream, RunPlan, Spike


def plan_from_json(data: dict[str, Any]) -> RunPlan:
    known = {f.name for f in fields(RunPlan)}
    values = {k: v for k, v in data.items() if k in known}
    values["domains"] = tuple(values["domains"])
    if values.get("spike"):
        values["spike"] = Spike(**values["spike"])
    return RunPlan(**values)


def sent_events(plan: RunPlan, run_id: str, start_ms: int
                ) -> tuple[dict[str, pd.DataFrame], int, int]:
    """(valid events per domain, malformed sent, made late) of one generator run."""
    frames, malformed, late = {}, 0, 0
    timeline = plan.timeline()
    for domain in plan.domains:
        stream = DomainStream(plan.stream_spec(domain, run_id, start_ms), timeline)
        rows = []
        for _ in range(timeline.total):
            _, value, _, flag = next(stream)
            if flag == "malformed":
                malformed += 1
                continue
            late += flag == "late"
            event = json.loads(value)
            rows.append({**event.pop("payload"), **event})
        if rows:
            frames[domain] = pd.DataFrame(rows)
    return frames, malformed, late


def incident_table(events: dict[str, pd.DataFrame], scorers: dict[str, tuple[Any, str]]
                   ) -> dict[str, dict[str, Any]]:
    """incident key -> detector, entity and event_count, as the sink would have merged them."""
    out = {}
    for domain, frame in events.items():
        scorer, version = scorers.get(domain, (None, None))
        for i in replay_incidents(domain, frame, scorer, version).incidents:
            out[i.key] = {"detector": i.detector, "entity_id": i.entity_id,
                          "event_count": i.event_count}
    return out


def champions(cfg, versions: dict[str, str]) -> dict[str, tuple[Any, str]]:
    """The versions the stream scored with, compiled into the same local scorer."""
    if not versions:
        return {}
    from models.registry import client_for, compile_version
    from patternalarm.settings import model_name

    client = client_for(cfg.tracking_uri)
    return {d: (compile_version(client, client.get_model_version(model_name(d), v)), v)
            for d, v in versions.items()}


def compute(spec: dict[str, Any]) -> dict[str, Any]:
    cfg = settings_mod.get()
    events: dict[str, list[pd.DataFrame]] = {}
    malformed = late = 0
    for run in spec["runs"]:
        frames, bad, made_late = sent_events(plan_from_json(run["plan"]), run["run_id"],
                                             run["start_ms"])
        malformed, late = malformed + bad, late + made_late
        for domain, frame in frames.items():
            events.setdefault(domain, []).append(frame)
    sent = {d: pd.concat(f, ignore_index=True) for d, f in events.items()}
    committed = lake.event_ids(cfg, spec["batches"],
                               tuple(f"{r['run_id']}-" for r in spec["runs"]))
    ids = pd.concat([f["event_id"] for f in sent.values()]) if sent else pd.Series([], dtype=str)
    missing = ids[~ids.isin(committed.keys())].tolist()
    scorers = champions(cfg, spec["model_versions"])
    result = {
        "sent": len(ids), "malformed": malformed, "late": late,
        "processed": int(ids.isin(committed.keys()).sum()),
        "processed_twice": sum(n - 1 for n in committed.values()),
        # The run's ids in the lake that the rebuild lacks: 0 unless the rebuild is wrong.
        "unknown_committed": len(committed.keys() - set(ids)),
        "missing_events": missing,
        "entities": {d: sorted(f["entity_id"].unique()) for d, f in sent.items()},
        "reference": incident_table(sent, scorers),
        "reference_processed": None,
    }
    if missing:
        result["reference_processed"] = incident_table(
            {d: f[~f["event_id"].isin(missing)] for d, f in sent.items()}, scorers)
    return result


def main(argv: list[str] | None = None) -> int:
    spec_path, out_path = argv if argv is not None else sys.argv[1:]
    result = compute(json.loads(Path(spec_path).read_text()))
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

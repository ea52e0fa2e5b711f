"""The pass/fail of one chaos scenario, from what was sent, what the stream committed and what
an offline reference says it should have committed. Pure: no I/O, no Airflow, so every
invariant has a unit test with a failing case.

Each failure names its reason (the first word of its line in ``failures``, also listed in
``reasons``):

- ``events_lost``: a valid event sent (acknowledged by the broker) that the sink never
  committed and the watermark did not drop.
- ``events_duplicated``: a sent event the sink committed in more than one batch.
- ``late_unexpected``: the watermark dropped more events than the generator made late on
  purpose.
- ``dead_letters_short`` / ``dead_letters_extra``: dead letters differ from the malformed
  messages sent. Checked whatever else happened.
- ``incidents_missing`` / ``incidents_extra`` / ``incidents_duplicated``: the incidents differ
  from the reference (same feature engine, rules and champion version over the events sent,
  offline): a reference key absent from Postgres; a key Postgres has and the reference has
  not; a key whose event_count or trigger_count exceeds the reference's.
- ``incidents_short``: a key with fewer events than the reference's: detections lost inside an
  incident that still exists.
- ``no_recovery`` / ``recovery_slow``: the stream did not catch up after the fault, or not
  within the bound.
- ``fault_missed_traffic``: the fault was not injected while the scenario's own events were
  flowing, so passing would prove nothing.
- ``champion_changed``: the stream scored the scenario with more than one model version, so
  no single reference exists.

The one tolerated loss is the documented one: the in-memory broker keeps nothing across a
restart. There, lost events are named, and the incidents are judged against the reference
over the events the stream did process; the incidents only the full reference has are named
as explained by the loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Lists of keys and event ids in a verdict are cut to this many: the counts are exact.
SHOWN = 20


@dataclass(frozen=True)
class Counts:
    event_count: int
    trigger_count: int


def reference_counts(event_count: int) -> Counts:
    """A reference incident's bounds. Each sink commit that touches a key adds one trigger and
    at least one event, so without duplicates trigger_count never exceeds the event_count a
    clean run gives it."""
    return Counts(event_count, event_count)


@dataclass(frozen=True)
class IncidentDiff:
    missing: tuple[str, ...]
    extra: tuple[str, ...]
    duplicated: tuple[str, ...]
    short: tuple[str, ...] = ()

    @classmethod
    def compare(cls, reference: Mapping[str, Counts], observed: Mapping[str, Counts]
                ) -> IncidentDiff:
        both = sorted(reference.keys() & observed.keys())
        return cls(
            tuple(sorted(reference.keys() - observed.keys())),
            tuple(sorted(observed.keys() - reference.keys())),
            tuple(k for k in both if observed[k].event_count > reference[k].event_count
                  or observed[k].trigger_count > reference[k].trigger_count),
            tuple(k for k in both if observed[k].event_count < reference[k].event_count))

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.duplicated or self.short)


@dataclass(frozen=True)
class Facts:
    scenario: str
    sent: int                 # valid events the broker acknowledged
    malformed_sent: int
    late_sent: int            # events the generator made late on purpose
    processed: int            # distinct sent events the sink committed
    processed_twice: int      # further commits of those events (0 when exactly once)
    late_dropped: int
    dead_lettered: int
    # Against the reference over every event sent.
    incidents: IncidentDiff
    recovery_s: float | None
    bound_s: float
    durable_broker: bool      # keeps its data across a restart (S3 engine, a real Kafka)
    injected_live: bool       # a batch with the scenario's own events committed before the fault
    # domain -> the model versions the stream scored the scenario's batches with
    model_versions: Mapping[str, Sequence[str]] = field(default_factory=dict)
    lost_events: Sequence[str] = ()   # ids of the valid events neither committed nor dropped
    # Against the reference over the events processed: set when events were lost.
    incidents_processed: IncidentDiff | None = None


def verdict(f: Facts) -> dict[str, Any]:
    failures: list[str] = []
    notes: list[str] = []

    def fail(reason: str, detail: str) -> None:
        failures.append(f"{reason}: {detail}")

    lost = max(f.sent - f.processed - f.late_dropped, 0)
    # Without the reference over what was processed, a loss explains nothing.
    documented_loss = (bool(lost) and f.scenario == "broker_restart" and not f.durable_broker
                       and f.incidents_processed is not None)
    if f.processed_twice:
        fail("events_duplicated", f"{f.processed_twice} commits of events already committed")
    if f.late_dropped > f.late_sent:
        fail("late_unexpected", f"the watermark dropped {f.late_dropped} events, the "
                                f"generator made {f.late_sent} late")
    if lost and not documented_loss:
        fail("events_lost", f"{lost} of {f.sent} events neither processed nor dropped as late"
                            f"{_named(f.lost_events)}")
    if f.dead_lettered < f.malformed_sent:
        fail("dead_letters_short", f"{f.dead_lettered} dead-lettered, {f.malformed_sent} "
                                   "malformed sent")
    elif f.dead_lettered > f.malformed_sent:
        fail("dead_letters_extra", f"{f.dead_lettered} dead-lettered, only {f.malformed_sent} "
                                   "malformed sent")

    judged = f.incidents
    explained: tuple[str, ...] = ()
    if documented_loss:
        judged = f.incidents_processed
        explained = tuple(k for k in f.incidents.missing if k not in judged.missing)
        notes.append(
            f"{lost} events lost{_named(f.lost_events)}: the in-memory broker keeps nothing "
            "across a restart (what was not yet consumed, and what producers sent until its "
            "topics were recreated); PATTERNALARM_BROKER_STORAGE=s3 or a real Kafka keeps it. "
            f"The loss explains {len(explained)} missing incidents{_named(explained)}")
    for reason, keys in (("incidents_missing", judged.missing),
                         ("incidents_extra", judged.extra),
                         ("incidents_duplicated", judged.duplicated),
                         ("incidents_short", judged.short)):
        if keys:
            fail(reason, f"{len(keys)}{_named(keys)}")

    versions = {d: sorted(set(v)) for d, v in f.model_versions.items()}
    changed = {d: v for d, v in versions.items() if len(v) > 1}
    if changed:
        fail("champion_changed", f"the stream scored with {changed}: no single reference")
    if not f.injected_live:
        fail("fault_missed_traffic", "no batch of the scenario's events had committed when "
                                     "the fault was injected")
    if f.recovery_s is None:
        fail("no_recovery", "the stream did not catch up after the fault")
    elif f.recovery_s > f.bound_s:
        fail("recovery_slow", f"recovery took {f.recovery_s:.0f}s, over the {f.bound_s:g}s "
                              "bound")
    return {
        "events_sent": f.sent, "events_processed": f.processed, "events_lost": lost,
        "duplicated_events": f.processed_twice, "late_events": f.late_dropped,
        "late_sent": f.late_sent, "dead_lettered": f.dead_lettered,
        "malformed_sent": f.malformed_sent,
        "incidents_missing": len(f.incidents.missing),
        "incidents_extra": len(f.incidents.extra),
        "incidents_duplicated": len(f.incidents.duplicated),
        "incidents_short": len(f.incidents.short),
        "incidents_explained_by_loss": len(explained),
        "missing_keys": list(f.incidents.missing[:SHOWN]),
        "extra_keys": list(f.incidents.extra[:SHOWN]),
        "duplicated_keys": list(f.incidents.duplicated[:SHOWN]),
        "lost_event_ids": list(f.lost_events[:SHOWN]),
        "model_versions": versions, "recovery_s": f.recovery_s,
        "verdict": "fail" if failures else "pass",
        "reasons": [line.split(":", 1)[0] for line in failures],
        "failures": failures, "notes": notes,
    }


def _named(items: Sequence[str]) -> str:
    if not items:
        return ""
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return f" ({', '.join(items[:SHOWN])}{more})"

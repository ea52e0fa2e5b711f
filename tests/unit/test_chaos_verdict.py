"""The chaos verdict fails, with the named reason, whenever one of its invariants breaks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from patternalarm.chaos_verdict import Counts, Facts, IncidentDiff, reference_counts, verdict

REFERENCE = {"k1": reference_counts(1), "k2": reference_counts(3), "k3": reference_counts(2)}
CLEAN = IncidentDiff.compare(REFERENCE, REFERENCE)
GOOD = Facts(scenario="kill_driver", sent=1000, malformed_sent=0, late_sent=0, processed=1000,
             processed_twice=0, late_dropped=0, dead_lettered=0, incidents=CLEAN,
             recovery_s=20.0, bound_s=120.0, durable_broker=False, injected_live=True,
             model_versions={"payments": ["3", "3"]})


def observed(**changes: Counts | None) -> dict[str, Counts]:
    out = {**REFERENCE, **changes}
    return {k: v for k, v in out.items() if v is not None}


def test_a_clean_run_passes():
    result = verdict(GOOD)
    assert (result["verdict"], result["failures"], result["reasons"]) == ("pass", [], [])
    assert (result["events_lost"], result["incidents_missing"], result["incidents_extra"],
            result["incidents_duplicated"]) == (0, 0, 0, 0)


def test_poison_passes_when_every_malformed_message_is_a_dead_letter():
    assert verdict(replace(GOOD, scenario="poison_flood", malformed_sent=500,
                           dead_lettered=500))["verdict"] == "pass"


def test_late_events_pass_up_to_the_number_made_late():
    result = verdict(replace(GOOD, late_sent=40, late_dropped=40, processed=960))
    assert (result["verdict"], result["events_lost"]) == ("pass", 0)


def test_compare_finds_missing_extra_and_duplicated_keys():
    diff = IncidentDiff.compare(REFERENCE, observed(
        k1=None, k2=Counts(3, 4), k3=Counts(3, 2), k9=Counts(1, 1)))
    assert diff == IncidentDiff(("k1",), ("k9",), ("k2", "k3"))
    assert IncidentDiff.compare(REFERENCE, observed(k2=Counts(2, 2))).short == ("k2",)
    # Fewer triggers than events is the normal case: several events in one batch.
    assert IncidentDiff.compare(REFERENCE, observed(k2=Counts(3, 1))).clean


FAILING = {
    "events_lost": replace(GOOD, processed=990, lost_events=[f"e{i}" for i in range(10)]),
    "events_duplicated": replace(GOOD, processed_twice=7),
    "late_unexpected": replace(GOOD, late_sent=5, late_dropped=6, processed=994),
    "dead_letters_short": replace(GOOD, malformed_sent=500, dead_lettered=499),
    "dead_letters_extra": replace(GOOD, malformed_sent=500, dead_lettered=501),
    "incidents_missing": replace(GOOD, incidents=IncidentDiff.compare(
        REFERENCE, observed(k1=None))),
    "incidents_extra": replace(GOOD, incidents=IncidentDiff.compare(
        REFERENCE, observed(k9=Counts(1, 1)))),
    "incidents_duplicated": replace(GOOD, incidents=IncidentDiff.compare(
        REFERENCE, observed(k2=Counts(4, 2)))),
    "incidents_short": replace(GOOD, incidents=IncidentDiff.compare(
        REFERENCE, observed(k3=Counts(1, 1)))),
    "no_recovery": replace(GOOD, recovery_s=None),
    "recovery_slow": replace(GOOD, recovery_s=121.0),
    "fault_missed_traffic": replace(GOOD, injected_live=False),
    "champion_changed": replace(GOOD, model_versions={"payments": ["3", "4"]}),
}


@pytest.mark.parametrize("reason", FAILING)
def test_each_broken_invariant_fails_with_its_reason(reason):
    result = verdict(FAILING[reason])
    assert result["verdict"] == "fail"
    assert result["reasons"] == [reason]
    assert result["failures"][0].startswith(f"{reason}: ")


def test_lost_events_are_counted_and_named():
    result = verdict(FAILING["events_lost"])
    assert result["events_lost"] == 10
    assert "e0, e1" in result["failures"][0] and result["lost_event_ids"][0] == "e0"


def test_the_dead_letter_check_runs_even_when_events_were_lost():
    result = verdict(replace(FAILING["events_lost"], malformed_sent=3, dead_lettered=0))
    assert result["reasons"] == ["events_lost", "dead_letters_short"]


def test_a_late_event_beyond_those_injected_is_not_accounted_for():
    # 5 made late, 6 dropped: the sixth is an on-time event the stream threw away.
    result = verdict(FAILING["late_unexpected"])
    assert "dropped 6 events, the generator made 5 late" in result["failures"][0]


def test_duplicated_by_trigger_count_alone():
    diff = IncidentDiff.compare(REFERENCE, observed(k1=Counts(1, 2)))
    assert verdict(replace(GOOD, incidents=diff))["reasons"] == ["incidents_duplicated"]


# The memory broker's documented loss: k1 came only from the lost events.
LOSS = replace(GOOD, scenario="broker_restart", processed=900,
               lost_events=[f"e{i}" for i in range(100)],
               incidents=IncidentDiff.compare(REFERENCE, observed(k1=None)),
               incidents_processed=IncidentDiff.compare(observed(k1=None), observed(k1=None)))


def test_the_memory_broker_loss_passes_naming_what_it_explains():
    result = verdict(LOSS)
    assert result["verdict"] == "pass", result["failures"]
    assert (result["events_lost"], result["incidents_missing"],
            result["incidents_explained_by_loss"]) == (100, 1, 1)
    assert "100 events lost (e0, e1" in result["notes"][0]
    assert "explains 1 missing incidents (k1)" in result["notes"][0]


def test_the_memory_broker_loss_does_not_excuse_an_incident_it_does_not_explain():
    # k2 is in the reference over the processed events too, yet Postgres lacks it.
    unexplained = replace(LOSS, incidents=IncidentDiff.compare(
        REFERENCE, observed(k1=None, k2=None)), incidents_processed=IncidentDiff.compare(
        observed(k1=None), observed(k1=None, k2=None)))
    result = verdict(unexplained)
    assert (result["verdict"], result["reasons"]) == ("fail", ["incidents_missing"])
    assert "k2" in result["failures"][0] and result["incidents_explained_by_loss"] == 1


@pytest.mark.parametrize("change", [{"durable_broker": True}, {"scenario": "kill_driver"},
                                    {"incidents_processed": None}])
def test_a_loss_is_excused_only_on_a_memory_broker_restart_with_its_reference(change):
    assert "events_lost" in verdict(replace(LOSS, **change))["reasons"]
